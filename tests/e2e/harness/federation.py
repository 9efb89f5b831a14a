"""Gateways in front of federation sites, and a raw s2s peer for refusal tests.

Owns: writing an s2s gateway config (inbound ``s2s`` listener in front of a site's plaintext
s2s port, ``s2s-out`` listener for the site's outbound, ``[s2s]`` with routes or a DNS
resolver), starting and stopping the real ``stanzawall`` binary by PID, reading its audit log;
and :class:`RawS2s`, a raw server-to-server peer (STARTTLS with an optional client
certificate, dialback and SASL EXTERNAL by hand) for the cases no real server would produce.

Topology (harness/sites.py has the sites)::

    Prosody a.example (127.0.1.1:25501) <- gw A s2s (127.0.1.2:25501) <- gw B s2s-out ...
    Prosody a.example outbound -> its DNS -> gw A s2s-out (127.0.1.2:25510) -> gw B s2s (127.0.2.2:25501)
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import time
from pathlib import Path

from .gateway import PERMISSIVE_NETWORK, binary, toml_value
from .proc import Spawned, require_free_ports, tail, wait_for_port
from .defaults import START_TIMEOUT, STOP_TIMEOUT
from .raw import RawStream, RawStreamError

__all__ = ["S2sGateway", "RawS2s", "S2S_IN_PORT", "S2S_OUT_PORT"]

S2S_IN_PORT = 25501
S2S_OUT_PORT = 25510

NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


class S2sGateway:
    """One stanzawall serving federation for ``domain`` on ``host``.

    ``backend``: the site's plaintext s2s (host, port). ``routes``: remote domain ->
    (host, port) of the other gateway's inbound listener. ``s2s_extra``: TOML lines added to
    ``[s2s]``; ``extra_toml``: tables appended (rules, lists, ...)."""

    def __init__(self, dir: Path, *, domain: str, host: str, cert: Path, key: Path, ca_cert: Path,
                 backend: tuple[str, int], routes: dict[str, tuple[str, int]] | None = None,
                 in_port: int = S2S_IN_PORT, out_port: int = S2S_OUT_PORT, s2s_extra: str = "",
                 extra_toml: str = "", direct_tls_port: int | None = None,
                 extra_certs: list[tuple[list[str], Path, Path]] | None = None,
                 extra_domains: list[str] | None = None, extra_listeners: str = "",
                 admin_port: int | None = None):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.domain, self.host = domain, host
        self.in_port, self.out_port, self.direct_tls_port = in_port, out_port, direct_tls_port
        self.cert, self.key, self.ca_cert = cert, key, ca_cert
        self.backend = backend
        self.routes = dict(routes or {})
        self.s2s_extra = s2s_extra
        self.extra_toml = extra_toml
        self.extra_certs = list(extra_certs or [])
        self.extra_domains = list(extra_domains or [])
        #: ``[[listener]]`` tables added verbatim (their ports are not waited for).
        self.extra_listeners = extra_listeners
        #: ``[admin] bind`` on ``host`` (GET /metrics is public by default).
        self.admin_port = admin_port
        self.config_path = self.dir / "stanzawall.toml"
        self.log_path = self.dir / "stanzawall.log"
        self.audit_path = self.dir / "audit.jsonl"
        self.proc: Spawned | None = None
        self.write_config()

    def config_text(self) -> str:
        lines = [
            "[[tls.certificate]]", f"domains = [{toml_value(self.domain)}]",
            f"cert = {toml_value(str(self.cert))}", f"key = {toml_value(str(self.key))}", "",
        ]
        for domains, cert, key in self.extra_certs:
            lines += ["[[tls.certificate]]", f"domains = {toml_value(domains)}",
                      f"cert = {toml_value(str(cert))}", f"key = {toml_value(str(key))}", ""]
        lines += [
            "[[listener]]", 'name = "s2s-in"', 'kind = "s2s"', f'bind = "{self.host}:{self.in_port}"',
            f'backend = "{self.backend[0]}:{self.backend[1]}"', "",
            "[[listener]]", 'name = "s2s-out"', 'kind = "s2s-out"', f'bind = "{self.host}:{self.out_port}"', "",
        ]
        if self.direct_tls_port:
            lines += ["[[listener]]", 'name = "s2s-tls"', 'kind = "s2s-tls"',
                      f'bind = "{self.host}:{self.direct_tls_port}"',
                      f'backend = "{self.backend[0]}:{self.backend[1]}"', ""]
        if self.extra_listeners:
            lines += [self.extra_listeners, ""]
        lines.append("[network]")
        lines += [f"{k} = {toml_value(v)}" for k, v in PERMISSIVE_NETWORK.items() if not isinstance(v, dict)]
        for name, table in PERMISSIVE_NETWORK.items():
            if isinstance(table, dict):
                lines.append(f"[network.{name}]")
                lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        lines += ["", "[audit]", f"path = {toml_value(str(self.audit_path))}", "",
                  "[s2s]", f"domains = {toml_value([self.domain] + self.extra_domains)}",
                  f"trust_roots = {toml_value(str(self.ca_cert))}",
                  f"dialback_secret_file = {toml_value(str(self.dir / 'dialback.key'))}"]
        if self.s2s_extra:
            lines.append(self.s2s_extra)
        for domain, (h, p) in self.routes.items():
            lines += ["[[s2s.route]]", f"domain = {toml_value(domain)}", f'connect = "{h}:{p}"']
        if self.admin_port:
            lines += ["", "[admin]", f'bind = "{self.host}:{self.admin_port}"']
        if self.extra_toml:
            lines += ["", self.extra_toml]
        return "\n".join(lines) + "\n"

    def write_config(self) -> None:
        self.config_path.write_text(self.config_text())

    def start(self) -> "S2sGateway":
        ports = [self.in_port, self.out_port] + ([self.direct_tls_port] if self.direct_tls_port else [])
        require_free_ports(self.host, ports, "stanzawall")
        env = dict(os.environ, STANZAWALL_LOG=os.environ.get("STANZAWALL_LOG", "info"))
        self.proc = Spawned([str(binary()), "run", "--config", str(self.config_path)],
                            log=self.log_path, who=f"stanzawall {self.domain}", env=env)
        for p in ports:
            wait_for_port(self.host, p, START_TIMEOUT, proc=self.proc, log=self.log_path,
                          who=f"stanzawall {self.domain}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(STOP_TIMEOUT)
            self.proc = None

    def reload(self) -> None:
        assert self.proc is not None and self.proc.running()
        os.kill(self.proc.pid, signal.SIGHUP)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self) -> str:
        return tail(self.log_path)

    def wait_log(self, needle: str, timeout: float = 10.0, after: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()[after:]
            if needle in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in the log of gateway {self.domain} within {timeout}s:\n"
                             f"{self.log_tail()}")

    def metrics(self) -> str:
        import urllib.request
        with urllib.request.urlopen(f"http://{self.host}:{self.admin_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def audit(self) -> list[dict]:
        if not self.audit_path.exists():
            return []
        return [json.loads(l) for l in self.audit_path.read_text().splitlines() if l.strip()]

    def wait_audit(self, pred, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rec in self.audit():
                if pred(rec):
                    return rec
            time.sleep(0.05)
        raise AssertionError(f"no matching audit record at gateway {self.domain}:\n"
                             + "\n".join(json.dumps(r) for r in self.audit()[-20:]))


def s2s_header(frm: str | None, to: str) -> str:
    f = f" from='{frm}'" if frm else ""
    return (f"<?xml version='1.0'?><stream:stream{f} to='{to}' version='1.0' xmlns='jabber:server' "
            "xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams'>")


class RawS2s(RawStream):
    """A raw s2s peer claiming ``frm`` toward ``to``. TLS verifies the gateway with
    ``ca_file`` and presents ``client_cert`` (cert, key) when given."""

    def __init__(self, sock: socket.socket, *, frm: str | None, to: str, ca_file, client_cert=None,
                 timeout: float = 10.0):
        super().__init__(sock, server_name=to, ca_file=ca_file, timeout=timeout)
        self.frm, self.to, self.client_cert = frm, to, client_cert

    @classmethod
    def dial(cls, host: str, port: int, *, frm: str | None, to: str, ca_file, client_cert=None,
             timeout: float = 10.0) -> "RawS2s":
        sock = socket.create_connection((host, port), timeout=timeout)
        return cls(sock, frm=frm, to=to, ca_file=ca_file, client_cert=client_cert, timeout=timeout)

    @classmethod
    def dial_direct_tls(cls, host: str, port: int, **kw) -> "RawS2s":
        """Direct TLS (XEP-0368): the handshake first, then the stream."""
        s = cls.dial(host, port, **kw)
        s._wrap_tls()
        return s

    def start_stream(self, to: str | None = None) -> str:
        self.send(s2s_header(self.frm, to or self.to))
        self.expect(r"<stream:stream\b[^>]*>")
        self.features = self.expect(r"<stream:features\b.*?(?:/>|</stream:features>)").group(0)
        return self.features

    def _wrap_tls(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.set_alpn_protocols(["xmpp-server"])   # XEP-0368 (ignored on STARTTLS)
        if self.client_cert:
            ctx.load_cert_chain(str(self.client_cert[0]), str(self.client_cert[1]))
        self.sock = ctx.wrap_socket(self.sock, server_hostname=self.server_name)
        self.tls_version = self.sock.version()

    def sasl_external(self, authzid: str | None = None) -> str:
        """SASL EXTERNAL (XEP-0178); returns the answer element's text."""
        data = base64.b64encode(authzid.encode()).decode() if authzid else "="
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>{data}</auth>")
        return self.expect(r"<(success|failure)\b.*?(?:/>|</failure>)").group(0)

    def db_result(self, key: str, frm: str | None = None) -> None:
        self.send(f"<db:result from='{frm or self.frm}' to='{self.to}'>{key}</db:result>")


def raw_error(e: RawStreamError) -> str:
    return str(e)
