"""A minimal XMPP c2s *server* that records every byte it receives.

Used as the gateway's backend where a test must prove that "not one byte"
of a hostile stanza was forwarded: the test puts a unique marker into the
hostile payload and asserts that the marker never appears in
:meth:`RecordingBackend.received`.  It is a test peer, not a server: it
accepts any SASL PLAIN, answers only what a login needs, and echoes
nothing else.

Dialogue per connection (plaintext, the gateway's ``backend_tls = "off"``)::

    gateway: <?xml?><stream:stream to='example.test' ...>
    backend: <stream:stream from='example.test' id='rbN' ...>
             <stream:features><mechanisms>PLAIN</mechanisms></stream:features>
    gateway: <auth mechanism='PLAIN'>base64(authzid\\0user\\0password)</auth>
    backend: <success/>          (any mechanism, any password; user from the blob)
    gateway: <?xml?><stream:stream ...>                       (restart)
    backend: header + <stream:features><bind/></stream:features>
    gateway: <iq type='set' id='X'><bind><resource>R</resource></bind></iq>
    backend: <iq type='result' id='X'><bind><jid>user@example.test/R</jid></bind></iq>
    gateway: <iq type='get' id='Y'><query xmlns='jabber:iq:roster'/></iq>
    backend: <iq type='result' id='Y'><query xmlns='jabber:iq:roster'/></iq>
    gateway: </stream:stream>
    backend: </stream:stream>, close

Everything else (messages, presences, other iqs) is recorded and not
answered.  Parsing uses the stdlib's ``xml.etree.ElementTree.XMLPullParser``
on the received bytes (a new parser per stream restart); if the gateway
ever forwarded something expat rejects, the connection keeps recording but
stops answering.

Bounds: at most ``max_connections`` handler threads at a time (further
connections are closed at once); each recording keeps the first
``record_cap`` bytes (``total`` counts all of them); idle sockets time out
after ``idle_timeout`` seconds.

Use::

    backend = RecordingBackend().start()      # free port on 127.0.0.1
    ... gateway with backend = 127.0.0.1:backend.port ...
    assert backend.wait_for(b"control-marker", timeout=5)
    assert b"hostile-marker" not in backend.received()
    backend.stop()
"""

from __future__ import annotations

import base64
import socket
import threading
import time
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

from .defaults import DOMAIN, HOST

__all__ = ["RecordingBackend", "Connection"]

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_CLIENT = "jabber:client"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_ROSTER = "jabber:iq:roster"


def _as_bytes(s: bytes | str) -> bytes:
    return s.encode() if isinstance(s, str) else s


class Connection:
    """One accepted backend connection: its recorded bytes and state."""

    def __init__(self, index: int, record_cap: int):
        self.index = index
        self.record_cap = record_cap
        self._lock = threading.Lock()
        self._data = bytearray()
        self.total = 0                    # bytes received, including beyond the cap
        self.user: str | None = None      # SASL PLAIN authcid
        self.jid: str | None = None       # bound full JID
        self.parse_error: str | None = None
        self.closed = threading.Event()

    def _record(self, chunk: bytes) -> None:
        with self._lock:
            room = self.record_cap - len(self._data)
            if room > 0:
                self._data += chunk[:room]
            self.total += len(chunk)

    @property
    def data(self) -> bytes:
        """Snapshot of the recorded bytes."""
        with self._lock:
            return bytes(self._data)

    def wait_closed(self, timeout: float) -> bool:
        return self.closed.wait(timeout)


class _Handler:
    """Serves one connection (runs in its own thread)."""

    def __init__(self, sock: socket.socket, conn: Connection, domain: str):
        self.sock, self.conn, self.domain = sock, conn, domain
        self.authenticated = False
        self._new_parser()

    def _new_parser(self) -> None:
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.root: ET.Element | None = None

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def header(self) -> str:
        return (f"<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}'"
                f" xmlns:stream='{NS_STREAMS}' id='rb{self.conn.index}'"
                f" from='{escape(self.domain)}' version='1.0'>")

    def run(self) -> None:
        try:
            while True:
                try:
                    chunk = self.sock.recv(65536)
                except (socket.timeout, OSError):
                    return
                if not chunk:
                    return
                self.conn._record(chunk)
                if self.conn.parse_error is None and not self.feed(chunk):
                    return
        finally:
            try:
                self.sock.close()
            finally:
                self.conn.closed.set()

    def feed(self, chunk: bytes) -> bool:
        """Parse ``chunk``; answer what needs answering.  False: close."""
        try:
            self.parser.feed(chunk)
            for event, el in self.parser.read_events():
                if event == "start":
                    self.depth += 1
                    if self.depth == 1:
                        self.root = el
                        self.on_stream_open()
                    continue
                self.depth -= 1
                if self.depth == 0:             # </stream:stream>
                    self.send("</stream:stream>")
                    return False
                if self.depth == 1:             # a complete top-level element
                    if self.on_element(el):     # restart: a new document follows
                        self._new_parser()
                        return True
                    if self.root is not None:
                        self.root.remove(el)    # keep memory flat on long streams
        except ET.ParseError as e:
            self.conn.parse_error = str(e)
        except OSError:
            return False
        return True

    def on_stream_open(self) -> None:
        if self.authenticated:
            features = f"<bind xmlns='{NS_BIND}'/>"
        else:
            features = f"<mechanisms xmlns='{NS_SASL}'><mechanism>PLAIN</mechanism></mechanisms>"
        self.send(self.header() + f"<stream:features>{features}</stream:features>")

    def on_element(self, el: ET.Element) -> bool:
        """Answer one top-level element; True if the stream restarts."""
        if el.tag == f"{{{NS_SASL}}}auth" and not self.authenticated:
            try:
                blob = base64.b64decode((el.text or "").strip(), validate=True)
                self.conn.user = blob.split(b"\0")[1].decode() or "user"
            except (ValueError, IndexError, UnicodeDecodeError):
                self.conn.user = "user"
            self.authenticated = True
            self.send(f"<success xmlns='{NS_SASL}'/>")
            return True
        if el.tag != f"{{{NS_CLIENT}}}iq":
            return False
        iq_id, iq_type = el.get("id", ""), el.get("type")
        bind = el.find(f"{{{NS_BIND}}}bind")
        if iq_type == "set" and bind is not None and self.authenticated:
            res = (bind.findtext(f"{{{NS_BIND}}}resource") or "").strip() or "res"
            self.conn.jid = f"{self.conn.user or 'user'}@{self.domain}/{res}"
            self.send(f"<iq type='result' id='{escape(iq_id, {chr(39): '&apos;'})}'>"
                      f"<bind xmlns='{NS_BIND}'><jid>{escape(self.conn.jid)}</jid></bind></iq>")
        elif iq_type == "get" and el.find(f"{{{NS_ROSTER}}}query") is not None:
            to = f" to='{escape(self.conn.jid)}'" if self.conn.jid else ""
            self.send(f"<iq type='result' id='{escape(iq_id, {chr(39): '&apos;'})}'{to}>"
                      f"<query xmlns='{NS_ROSTER}'/></iq>")
        return False


class RecordingBackend:
    """Listening socket + one bounded thread per connection (module docs)."""

    def __init__(self, host: str = HOST, port: int = 0, *, domain: str = DOMAIN,
                 max_connections: int = 64, record_cap: int = 32 << 20,
                 idle_timeout: float = 60.0):
        self.host, self.domain = host, domain
        self.record_cap, self.idle_timeout = record_cap, idle_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._conns: list[Connection] = []
        self._stopping = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self.port = self._listener.getsockname()[1]
        self._thread: threading.Thread | None = None

    def start(self) -> "RecordingBackend":
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept_loop, name="recording-backend",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                sock.close()                    # over the bound: refuse
                continue
            sock.settimeout(self.idle_timeout)
            with self._lock:
                conn = Connection(len(self._conns), self.record_cap)
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(sock, conn), daemon=True,
                             name=f"recording-backend-{conn.index}").start()

    def _serve(self, sock: socket.socket, conn: Connection) -> None:
        try:
            _Handler(sock, conn, self.domain).run()
        finally:
            self._slots.release()

    # -- what tests look at ----------------------------------------------------
    def connections(self) -> list[Connection]:
        with self._lock:
            return list(self._conns)

    def received(self) -> bytes:
        """Everything every connection received so far, concatenated."""
        return b"\n".join(c.data for c in self.connections())

    def saw(self, needle: bytes | str) -> bool:
        return _as_bytes(needle) in self.received()

    def wait_for(self, needle: bytes | str, timeout: float = 5.0) -> Connection | None:
        """The connection that received ``needle``, waiting up to ``timeout`` s."""
        needle = _as_bytes(needle)
        deadline = time.monotonic() + timeout
        while True:
            for c in self.connections():
                if needle in c.data:
                    return c
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)
