"""Low-level, byte-exact XMPP over a plain socket, for hostile-input tests.

Owns: the XMPP namespace constants, a PROXY-protocol-v2 header builder,
and :class:`RawStream` — a blocking
TCP connection that can open a stream, do STARTTLS (or start with direct
TLS) using Python ``ssl`` with CA verification and SNI, authenticate with
SASL PLAIN, restart the stream, bind a resource, and then write arbitrary
bytes and read whatever comes back, until the peer closes.  Every read is
bounded by a deadline.  No XML library parses the server's output here:
tests assert on the text (``parse_stream_error`` extracts the condition).

Typical use::

    with RawStream.open(host, port, ca_file=pki.ca_cert) as rs:  # STARTTLS
        rs.login("alice", "alice-secret-1")       # PLAIN + restart + bind
        rs.send(b"<message to='bob@example.test'><body>&xxe;</body></message>")
        text = rs.read_until_closed(timeout=5)
        assert parse_stream_error(text) == "restricted-xml"   # for example
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
import struct
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

from .defaults import DOMAIN

__all__ = [
    "NS_STREAMS", "NS_CLIENT", "NS_TLS", "NS_SASL", "NS_BIND", "NS_STREAM_ERRORS",
    "FEATURES_TAG", "RawStream", "RawStreamError", "stream_header",
    "parse_stream_error", "parse_mechanisms", "make_client_context",
    "proxy_v2_header",
]

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_CLIENT = "jabber:client"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
FEATURES_TAG = f"{{{NS_STREAMS}}}features"

DEFAULT_TIMEOUT = 10.0


class RawStreamError(AssertionError):
    """The peer did not answer as expected; carries everything received."""


def make_client_context(ca_file: Path | str) -> ssl.SSLContext:
    """TLS client context trusting ONLY ``ca_file``; hostname check and
    CERT_REQUIRED on (the defaults of PROTOCOL_TLS_CLIENT)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca_file))
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    return ctx


def stream_header(to: str = DOMAIN, *, version: str = "1.0", xml_decl: bool = True,
                  extra: str = "") -> bytes:
    decl = "<?xml version='1.0'?>" if xml_decl else ""
    return (f"{decl}<stream:stream to={quoteattr(to)} version={quoteattr(version)}"
            f" xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAMS}'{extra}>").encode()


_ERR_RE = re.compile(
    r"<(?:stream:)?error\b.*?<([A-Za-z-]+)\s[^>]*xmlns=['\"]" + re.escape(NS_STREAM_ERRORS),
    re.S)
_MECH_RE = re.compile(r"<mechanism>\s*([^<\s]+)\s*</mechanism>")


def parse_stream_error(text: str) -> str | None:
    """Defined condition of the first stream error in ``text`` (e.g.
    ``"system-shutdown"``), or None."""
    m = _ERR_RE.search(text)
    return m.group(1) if m else None


def parse_mechanisms(text: str) -> list[str]:
    """SASL mechanism names in a received features text."""
    return _MECH_RE.findall(text)


def proxy_v2_header(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """A PROXY protocol v2 header (PROXY command, TCP over IPv4) announcing
    a connection from ``src`` to ``dst``; send it before anything else."""
    addrs = (socket.inet_aton(src[0]) + socket.inet_aton(dst[0])
             + struct.pack("!HH", src[1], dst[1]))
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11])
            + struct.pack("!H", len(addrs)) + addrs)


class RawStream:
    """A raw XMPP client connection.  Attributes: ``received`` (all text
    received so far, across TLS), ``features`` (text of the most recent
    ``<stream:features>``), ``tls_version``, ``peer_cert_der`` (DER of the
    server certificate once TLS is up), ``bound_jid``, ``closed``."""

    def __init__(self, sock: socket.socket, *, server_name: str = DOMAIN,
                 ca_file: Path | str | None = None, timeout: float = DEFAULT_TIMEOUT):
        self.sock = sock
        self.server_name = server_name
        self.ca_file = ca_file
        self.timeout = timeout
        self.received = ""
        self._buf = ""          # received but not yet consumed by expect()
        self.features = ""
        self.tls_version: str | None = None
        self.peer_cert_der: bytes | None = None
        self.bound_jid: str | None = None
        self.closed = False

    # -- construction ---------------------------------------------------------
    @classmethod
    def connect(cls, host: str, port: int, *, direct_tls: bool = False,
                ca_file: Path | str | None = None, server_name: str = DOMAIN,
                timeout: float = DEFAULT_TIMEOUT) -> "RawStream":
        """TCP connect (and TLS handshake if ``direct_tls``); no bytes sent."""
        sock = socket.create_connection((host, port), timeout=timeout)
        rs = cls(sock, server_name=server_name, ca_file=ca_file, timeout=timeout)
        if direct_tls:
            rs._wrap_tls()
        return rs

    @classmethod
    def open(cls, host: str, port: int, *, direct_tls: bool = False,
             starttls: bool = True, ca_file: Path | str | None = None,
             server_name: str = DOMAIN, timeout: float = DEFAULT_TIMEOUT) -> "RawStream":
        """Connect, open the stream and, unless ``direct_tls`` or
        ``starttls=False``, negotiate STARTTLS; ends with fresh features."""
        rs = cls.connect(host, port, direct_tls=direct_tls, ca_file=ca_file,
                         server_name=server_name, timeout=timeout)
        try:
            rs.start_stream()
            if starttls and not direct_tls:
                rs.starttls()
        except BaseException:
            rs.close()
            raise
        return rs

    def __enter__(self) -> "RawStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- I/O --------------------------------------------------------------------
    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        # _recv_some leaves whatever read timeout was left (possibly milliseconds).
        self.sock.settimeout(self.timeout)
        self.sock.sendall(data)

    def _recv_some(self, deadline: float) -> bool:
        """Read one chunk before ``deadline``; False on timeout or EOF."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.closed:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return False
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            self.closed = True
            return False
        if not chunk:
            self.closed = True
            return False
        text = chunk.decode("utf-8", errors="replace")
        self.received += text
        self._buf += text
        return True

    def expect(self, pattern: str, timeout: float | None = None) -> re.Match:
        """Read until regex ``pattern`` matches the unconsumed input; consume
        through the match.  Raises RawStreamError (with the text) if not seen
        in time or the stream closes."""
        deadline = time.monotonic() + (timeout or self.timeout)
        rx = re.compile(pattern, re.S)
        while True:
            m = rx.search(self._buf)
            if m:
                self._buf = self._buf[m.end():]
                return m
            if not self._recv_some(deadline):
                raise RawStreamError(
                    f"expected /{pattern}/ but {'stream closed' if self.closed else 'timed out'};"
                    f" received:\n{self.received}")

    def read_for(self, seconds: float) -> str:
        """Read whatever arrives in ``seconds`` (or until close); return it."""
        deadline = time.monotonic() + seconds
        start = len(self.received)
        while self._recv_some(deadline):
            pass
        return self.received[start:]

    def read_until_closed(self, timeout: float | None = None) -> str:
        """Read until the peer closes the connection (bounded by ``timeout``;
        RawStreamError if still open).  Returns the text received since the
        last ``expect`` / ``read_*`` consumed it."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.closed:
            if not self._recv_some(deadline) and not self.closed:
                raise RawStreamError(
                    f"stream still open after {timeout or self.timeout}s; received:\n"
                    f"{self.received}")
        out, self._buf = self._buf, ""
        return out

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            self.closed = True

    # -- protocol steps --------------------------------------------------------
    def start_stream(self, to: str | None = None) -> str:
        """Send a stream header, wait for the server's features; return them."""
        self.send(stream_header(to or self.server_name))
        self.expect(r"<stream:stream\b[^>]*>")
        self.features = self.expect(r"<stream:features\b.*?(?:/>|</stream:features>)").group(0)
        return self.features

    @property
    def mechanisms(self) -> list[str]:
        return parse_mechanisms(self.features)

    def _wrap_tls(self) -> None:
        if self.ca_file is None:
            raise ValueError("TLS needs ca_file (the test CA)")
        ctx = make_client_context(self.ca_file)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=self.server_name)
        self.tls_version = self.sock.version()
        self.peer_cert_der = self.sock.getpeercert(binary_form=True)

    def starttls(self) -> str:
        """<starttls/>, <proceed/>, TLS handshake (verified), stream restart."""
        if "<starttls" not in self.features:
            raise RawStreamError(f"STARTTLS not offered; features: {self.features}")
        self.send(f"<starttls xmlns='{NS_TLS}'/>")
        self.expect(r"<proceed\b[^>]*/>")
        if self._buf:
            raise RawStreamError(f"data after <proceed/> before TLS: {self._buf!r}")
        self._wrap_tls()
        return self.start_stream()

    def auth_plain(self, user: str, password: str, authzid: str = "") -> None:
        """SASL PLAIN; raises RawStreamError on <failure/>."""
        blob = base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{blob}</auth>")
        m = self.expect(r"<(success|failure)\b.*?(?:/>|</\1>)")
        if m.group(1) == "failure":
            raise RawStreamError(f"SASL PLAIN failed: {m.group(0)}")

    def bind(self, resource: str = "raw") -> str:
        """Resource binding; returns and stores the bound full JID."""
        self.send(f"<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'>"
                  f"<resource>{resource}</resource></bind></iq>")
        m = self.expect(r"<iq\b[^>]*>.*?</iq>|<iq\b[^>]*/>")
        jid = re.search(r"<jid>([^<]+)</jid>", m.group(0))
        if not jid:
            raise RawStreamError(f"bind failed: {m.group(0)}")
        self.bound_jid = jid.group(1)
        return self.bound_jid

    def login(self, user: str, password: str, resource: str = "raw") -> str:
        """PLAIN auth, stream restart, bind; returns the bound JID."""
        self.auth_plain(user, password)
        self.start_stream()
        return self.bind(resource)
