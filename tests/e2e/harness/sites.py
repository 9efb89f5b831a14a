"""Two-site federation testbed: private XMPP servers with s2s, each with its own DNS.

Owns: a *site* = one private XMPP server (Prosody 0.12 or ejabberd 23.01) serving one domain,
with plaintext c2s and plaintext s2s (dialback) on a dedicated loopback address, plus a private
DNS server (knotd) that is the site's ONLY resolver and answers every outbound s2s lookup with
the address we choose.  That is how a site's outbound s2s is routed -- to the peer site directly
(testbed checks), to a :class:`RecordingRelay`, or to a gateway's ``s2s-out`` listener -- without
touching the servers' code and without /etc/hosts or any other machine-wide setting.

Routing mechanism (verified in test_s2s_sites.py; the files are contrib/dns/*,
contrib/prosody/*, contrib/ejabberd/*, read with harness/contrib.py and given each site's
addresses, see contrib/README-s2s.md):

* knotd serves a root zone with wildcards, so every name answers::

      *  SRV 0 0 <port> <ip>.      ; _xmpp-server._tcp.<any domain> -> ip:port
      *  A   <ip>                  ; the SRV target "<ip>." itself (Prosody looks it up)

  The SRV target is the IP address written as a name: ejabberd resolves SRV targets with
  libc ``getaddrinfo`` (system-wide resolver), which parses it as a numeric address and asks
  nobody; Prosody resolves it through the same DNS server and gets the wildcard A record.
  ``_xmpps-server._tcp`` (XEP-0368) answers the same way; neither server asks for it here
  (Prosody only with a TLS context for s2s, ejabberd only with ``s2s_use_starttls`` enabled).
* Prosody: ``unbound = { resolvconf = false, hoststxt = false, forward = "IP@PORT" }``
  (lua-unbound; the default adns backend of Prosody 0.12 when lua-unbound is installed).
* ejabberd: the node's inetrc (``ERL_INETRC``) has ``{resolv_conf, ""}.`` and
  ``{nameserver, {IP}, PORT}.``; ``inet_res`` (SRV lookups in xmpp_stream_out) then asks only
  that server.

Addresses (defaults; everything is a parameter):

=====================  ===================  ===========================================
site A (a.example)     127.0.1.1            c2s :25500, s2s :25501, DNS :25502
A's outbound target    127.0.1.2:25510      where A's DNS sends every s2s (relay/gateway)
site B (b.example)     127.0.2.1            c2s :25500, s2s :25501, DNS :25502
B's outbound target    127.0.2.2:25510
ejabberd site dist     127.0.0.1:25503      Erlang distribution of an ejabberd site
=====================  ===================  ===========================================

The suggested gateway placement: gateway A ``s2s-out`` on 127.0.1.2:25510 (A's outbound
target) and ``s2s`` (inbound) on 127.0.1.2:25501 with ``backend = 127.0.1.1:25501``; likewise
127.0.2.2 for B; each gateway routes the other domain to the other gateway's inbound listener.

Use (module scope keeps the servers for all tests of a module)::

    a = start_site(tmp / "a", SITE_A, outbound=(SITE_B.host, SITE_B.s2s_port))
    b = start_site(tmp / "b", SITE_B, outbound=(SITE_A.host, SITE_A.s2s_port))
    async with a.client("alice") as c: ...
    b.route_outbound("127.0.2.2", 25510)   # later connections go there
    a.stop(); b.stop()
"""

from __future__ import annotations

import select
import shutil
import signal
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from .client import Client
from .contrib import contrib_text
from .defaults import (SITE_C2S_PORT, SITE_DNS_PORT, SITE_EJABBERD_DIST_PORT, SITE_OUTBOUND_PORT,
                       SITE_S2S_PORT, START_TIMEOUT, STOP_TIMEOUT, USERS)
from .ejabberd import EjabberdInstance
from .proc import ServerStartError, Spawned, require_free_ports, run_checked, tail, wait_for_port
from .prosody import ProsodyInstance

__all__ = [
    "SiteSpec", "SITE_A", "SITE_B", "Site", "start_site", "running_sites", "S2sDns",
    "RecordingRelay", "RelayConnection", "log_tails",
]


@dataclass(frozen=True)
class SiteSpec:
    """Where one site lives.  ``outbound_host``/``SITE_OUTBOUND_PORT`` is the address kept
    free for whatever receives the site's outbound s2s (a relay or a gateway's s2s-out)."""

    domain: str
    host: str
    outbound_host: str
    c2s_port: int = SITE_C2S_PORT
    s2s_port: int = SITE_S2S_PORT
    dns_port: int = SITE_DNS_PORT
    outbound_port: int = SITE_OUTBOUND_PORT

    @property
    def s2s(self) -> tuple[str, int]:
        return (self.host, self.s2s_port)

    @property
    def outbound(self) -> tuple[str, int]:
        return (self.outbound_host, self.outbound_port)


SITE_A = SiteSpec("a.example", "127.0.1.1", "127.0.1.2")
SITE_B = SiteSpec("b.example", "127.0.2.1", "127.0.2.2")


def _ipv4(addr: str) -> str:
    try:
        socket.inet_pton(socket.AF_INET, addr)
    except OSError:
        raise ValueError(f"not an IPv4 address: {addr!r}") from None
    return addr


# --- DNS: a private knotd per site ------------------------------------------------------------

class S2sDns:
    """A private ``knotd`` on ``host:port`` (UDP and TCP) serving a wildcard root zone that
    sends every ``_xmpp-server._tcp`` SRV lookup to ``target`` (module docs).  Runs as the
    invoking user, control socket and zone in ``dir``; no other zone, no recursion."""

    def __init__(self, dir: Path, host: str, port: int, target: tuple[str, int]):
        self.dir = Path(dir).resolve()
        self.host, self.port = _ipv4(host), port
        self.target = (_ipv4(target[0]), int(target[1]))
        self.conf_path = self.dir / "knot.conf"
        self.zone_path = self.dir / "s2s-route.zone"
        self.log_path = self.dir / "knot.log"
        self.serial = 1
        self._proc: Spawned | None = None

    @property
    def forward(self) -> str:
        """The server as lua-unbound's ``forward`` wants it: ``IP@PORT``."""
        return f"{self.host}@{self.port}"

    def _write_zone(self) -> None:
        ip, port = self.target
        self.zone_path.write_text(contrib_text(
            "dns/s2s-route.zone", ("SRV 0 0 15270 127.0.0.1.", f"SRV 0 0 {port} {ip}."),
            ("A 127.0.0.1", f"A {ip}"),
            ("hostmaster.invalid. 1 ", f"hostmaster.invalid. {self.serial} ")))

    def start(self, timeout: float = START_TIMEOUT) -> "S2sDns":
        if shutil.which("knotd") is None:
            raise ServerStartError("knotd not found: install Debian's knot package")
        require_free_ports(self.host, [self.port], "knotd")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_zone()
        self.conf_path.write_text(contrib_text(
            "dns/knot-s2s-route.conf", ('"/run/knot-stanzawall"', f'"{self.dir}"'),
            ("127.0.0.1@5300", f"{self.host}@{self.port}"),
            ('"/var/lib/knot-stanzawall"', f'"{self.dir / "db"}"'),
            ('"/etc/knot-stanzawall"', f'"{self.dir}"')))
        self._proc = Spawned(["knotd", "-c", str(self.conf_path)], log=self.log_path,
                             who="knotd", cwd=self.dir)
        try:
            wait_for_port(self.host, self.port, timeout, proc=self._proc, log=self.log_path,
                          who="knotd")
        except Exception:
            self.stop()
            raise
        return self

    def retarget(self, host: str, port: int) -> None:
        """Send later SRV lookups to ``host:port`` (zone rewritten, ``knotc zone-reload``)."""
        self.target = (_ipv4(host), int(port))
        self.serial += 1
        self._write_zone()
        run_checked(["knotc", "-c", str(self.conf_path), "-b", "zone-reload", "."],
                    timeout=15, who="knotc zone-reload")

    def running(self) -> bool:
        return self._proc is not None and self._proc.running()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self._proc is not None:
            self._proc.stop(timeout, sig=signal.SIGTERM)
            self._proc = None


# --- a recording TCP relay --------------------------------------------------------------------

class RelayConnection:
    """One relayed TCP connection: every chunk in order, tagged with its direction:
    ``">"`` client -> upstream, ``"<"`` upstream -> client."""

    def __init__(self, index: int, peer: tuple[str, int]):
        self.index, self.peer = index, peer
        self._lock = threading.Lock()
        self._chunks: list[tuple[str, float, bytes]] = []
        self.closed = threading.Event()

    def _add(self, direction: str, data: bytes) -> None:
        with self._lock:
            self._chunks.append((direction, time.monotonic(), data))

    @property
    def chunks(self) -> list[tuple[str, float, bytes]]:
        with self._lock:
            return list(self._chunks)

    def sent(self) -> bytes:
        """Everything the connecting side sent."""
        return b"".join(d for k, _, d in self.chunks if k == ">")

    def received(self) -> bytes:
        """Everything the upstream side sent back."""
        return b"".join(d for k, _, d in self.chunks if k == "<")

    def transcript(self, t0: float | None = None) -> str:
        """Human-readable: one line per chunk: milliseconds since ``t0`` (default: this
        connection's first chunk), ``>`` or ``<``, the bytes as text."""
        chunks = self.chunks
        if t0 is None:
            t0 = chunks[0][1] if chunks else 0.0
        return "\n".join(f"{(t - t0) * 1000:8.1f} {k} {d.decode('utf-8', 'replace')}"
                         for k, t, d in chunks)


class RecordingRelay:
    """Listens on ``host:port``; each accepted connection is joined to a new connection to
    ``upstream`` and both directions are copied and recorded.  Bounded: at most
    ``max_connections`` at a time, idle connections closed after ``idle_timeout`` s.  A relay
    that cannot reach upstream closes the accepted socket (recorded as an empty connection)."""

    def __init__(self, host: str, port: int, upstream: tuple[str, int], *,
                 max_connections: int = 32, idle_timeout: float = 120.0):
        self.host, self.port, self.upstream = host, port, upstream
        self.idle_timeout = idle_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._conns: list[RelayConnection] = []
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        require_free_ports(host, [port], "recording relay")
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(32)
        self._listener.settimeout(0.2)
        t = threading.Thread(target=self._accept_loop, name=f"relay-{port}", daemon=True)
        t.start()
        self._threads.append(t)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, peer = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                sock.close()
                continue
            with self._lock:
                conn = RelayConnection(len(self._conns), peer)
                self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(sock, conn), daemon=True,
                                 name=f"relay-{self.port}-{conn.index}")
            t.start()
            with self._lock:
                self._threads.append(t)

    def _serve(self, down: socket.socket, conn: RelayConnection) -> None:
        up = None
        try:
            up = socket.create_connection(self.upstream, timeout=5.0)
            socks = {down: (up, ">"), up: (down, "<")}
            for s in socks:
                s.setblocking(False)
            last = time.monotonic()
            while not self._stopping.is_set():
                readable, _, _ = select.select(list(socks), [], [], min(self.idle_timeout, 0.5))
                if not readable:
                    if time.monotonic() - last > self.idle_timeout:
                        return
                    continue
                last = time.monotonic()
                for s in readable:
                    other, direction = socks[s]
                    try:
                        data = s.recv(65536)
                    except BlockingIOError:
                        continue
                    if not data:
                        return
                    conn._add(direction, data)
                    other.setblocking(True)
                    other.settimeout(5.0)
                    other.sendall(data)
                    other.setblocking(False)
        except OSError:
            return
        finally:
            for s in (down, up):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass
            conn.closed.set()
            self._slots.release()

    def connections(self) -> list[RelayConnection]:
        with self._lock:
            return list(self._conns)

    def wait_for(self, needle: bytes | str, timeout: float = 10.0) -> RelayConnection | None:
        """The connection whose bytes (either direction) contain ``needle``, waiting up to
        ``timeout`` s."""
        needle = needle.encode() if isinstance(needle, str) else needle
        deadline = time.monotonic() + timeout
        while True:
            for c in self.connections():
                if needle in c.sent() or needle in c.received():
                    return c
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def transcript(self, t0: float | None = None) -> str:
        """All connections' transcripts; times relative to ``t0`` (a ``time.monotonic()``
        value; default: the first chunk seen by this relay)."""
        conns = self.connections()
        if t0 is None:
            t0 = min((c.chunks[0][1] for c in conns if c.chunks), default=0.0)
        return "\n".join(f"=== connection {c.index} from {c.peer}\n{c.transcript(t0)}"
                          for c in conns)

    def stop(self) -> None:
        """Stop accepting, close every relayed connection (within ~0.5 s), free the port."""
        self._stopping.set()
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(5)
        self._listener.close()


# --- sites ------------------------------------------------------------------------------------

@dataclass
class Site:
    """A running site.  ``domain``, ``host``, ``c2s`` / ``s2s`` ((host, port) of the server's
    plaintext c2s and s2s listeners), ``users`` (user -> password), ``kind`` ("prosody" or
    "ejabberd"), ``server`` (the ProsodyInstance / EjabberdInstance), ``dns`` (S2sDns),
    ``outbound`` ((host, port) where the site's outbound s2s currently goes)."""

    kind: Literal["prosody", "ejabberd"]
    domain: str
    host: str
    c2s: tuple[str, int]
    s2s: tuple[str, int]
    server: ProsodyInstance | EjabberdInstance
    dns: S2sDns
    users: dict[str, str] = field(default_factory=dict)

    @property
    def outbound(self) -> tuple[str, int]:
        return self.dns.target

    @property
    def log_path(self) -> Path:
        return self.server.log_path

    def jid(self, user: str) -> str:
        return f"{user}@{self.domain}"

    def client(self, user: str, **kw) -> Client:
        """A slixmpp :class:`Client` for ``user`` straight to the site's plaintext c2s
        (``async with site.client("alice") as c:``)."""
        kw.setdefault("starttls", False)
        kw.setdefault("allow_plain_unencrypted", True)
        return Client(self.jid(user), self.users[user], self.c2s[0], self.c2s[1],
                      server_name=self.domain, **kw)

    def route_outbound(self, host: str, port: int) -> None:
        """Send the site's *new* outbound s2s connections to ``host:port`` (open s2s
        sessions are not touched)."""
        self.dns.retarget(host, port)

    def stop(self) -> None:
        try:
            if isinstance(self.server, EjabberdInstance):
                self.server.cleanup()
            else:
                self.server.stop()
        finally:
            self.dns.stop()


def start_site(dir: Path, spec: SiteSpec | None = None, *,
               kind: Literal["prosody", "ejabberd"] = "prosody",
               domain: str | None = None, host: str | None = None,
               c2s_port: int | None = None, s2s_port: int | None = None,
               dns_port: int | None = None, outbound: tuple[str, int] | None = None,
               users: dict[str, str] | None = None, pki=None,
               dist_port: int = SITE_EJABBERD_DIST_PORT) -> Site:
    """Start one site's DNS and server.

    ``spec`` gives defaults (SITE_A / SITE_B); keywords override them.  ``outbound``: where
    every outbound s2s connection goes (default: ``spec.outbound``).  ``users`` default to
    harness USERS.  ``kind="ejabberd"`` needs ``pki`` (harness.ca.Pki: ejabberd insists on a
    certificate file; it serves no TLS here) and uses ``dist_port`` on 127.0.0.1 and a /tmp
    instance dir of its own.  Stop with ``.stop()``."""
    if spec is None and (domain is None or host is None):
        raise ValueError("start_site: give a spec or both domain and host")
    domain = domain or spec.domain
    host = _ipv4(host or spec.host)
    c2s_port = c2s_port or (spec.c2s_port if spec else SITE_C2S_PORT)
    s2s_port = s2s_port or (spec.s2s_port if spec else SITE_S2S_PORT)
    dns_port = dns_port or (spec.dns_port if spec else SITE_DNS_PORT)
    if outbound is None:
        if spec is None:
            raise ValueError("start_site: give outbound=(host, port)")
        outbound = spec.outbound
    users = dict(USERS if users is None else users)
    dir = Path(dir).resolve()
    dir.mkdir(parents=True, exist_ok=True)
    dns = S2sDns(dir / "dns", host, dns_port, outbound).start()
    try:
        if kind == "prosody":
            server: ProsodyInstance | EjabberdInstance = ProsodyInstance(
                dir=dir / "prosody", host=host, domain=domain, port=c2s_port,
                s2s_port=s2s_port, dns_forward=dns.forward, users=users)
        elif kind == "ejabberd":
            if pki is None:
                raise ValueError("start_site(kind='ejabberd') needs pki")
            server = EjabberdInstance(
                cert=pki.server_cert, key=pki.server_key, ca_cert=pki.ca_cert,
                host=host, domain=domain, tls_port=None, plain_port=c2s_port,
                proxy_port=None, s2s_port=s2s_port, dns=(dns.host, dns.port),
                dist_port=dist_port, node=f"ejabberd-{domain.replace('.', '-')}@localhost",
                users=users)
        else:
            raise ValueError(f"unknown site kind {kind!r}")
        server.start()
    except BaseException:
        dns.stop()
        raise
    return Site(kind=kind, domain=domain, host=host, c2s=(host, c2s_port),
                s2s=(host, s2s_port), server=server, dns=dns, users=users)


def log_tails(*sites: Site, lines: int = 30) -> str:
    """Server and DNS log tails of ``sites``, for assertion messages."""
    out = []
    for s in sites:
        out.append(f"--- {s.kind} {s.domain} ({s.log_path}):\n{tail(s.log_path, lines)}")
        out.append(f"--- knotd {s.domain}:\n{tail(s.dns.log_path, 5)}")
    return "\n".join(out)


@contextmanager
def running_sites(dir: Path, *specs: tuple[SiteSpec, dict[str, Any]]) -> Iterator[list[Site]]:
    """Start one site per ``(spec, start_site keywords)`` in ``dir/<domain>-<n>``, yield
    them as a list, stop them all (in reverse) on exit, also when a later one fails to
    start.  For module-scoped fixtures::

        @pytest.fixture(scope="module")
        def sites(tmp, pki):
            with running_sites(tmp / "s2s", (SITE_A, {}),
                               (SITE_B, {"kind": "ejabberd", "pki": pki})) as (a, b):
                yield a, b
    """
    started: list[Site] = []
    try:
        for n, (spec, kw) in enumerate(specs):
            started.append(start_site(Path(dir) / f"{spec.domain}-{n}", spec, **kw))
        yield started
    finally:
        errors = []
        for site in reversed(started):
            try:
                site.stop()
            except Exception as e:  # stop the others anyway, then report
                errors.append(e)
        if errors:
            raise errors[0]
