"""The attack catalogue: one named test per hostile input, each run twice.

``test_catalogue[<entry>-whole]`` writes the hostile bytes in one ``sendall``;
``test_catalogue[<entry>-bytewise]`` writes them one byte per TLS record (TCP_NODELAY,
one ``sendall`` per byte; before TLS one byte per TCP segment).  The two huge entries
(``stanza_100mb``, ``attributes_100k``) run only "whole", streamed in chunks.

Every entry checks three things:

(a) what the attacker gets back: the exact stream error condition (``parse_stream_error``),
    or the exact stanza error, SASL ``<failure/>``, or (for inputs that must be accepted)
    the normal answer;
(b) that nothing of the hostile input got through: with the recording backend
    (``harness/recording_backend.py``) a unique marker inside the payload never appears in
    the bytes the backend received — and a control stanza sent before or after it does, so
    the recording is known to work; with real Prosody, the recipient never gets the marker
    while a control message sent after it arrives;
(c) that the gateway still serves a normal client afterwards (fresh login + roster get).

(b) does not apply where the input is relayed to the server by design — an unoffered or
malformed SASL exchange, wrong passwords: there (a) is Prosody's answer arriving intact and
the session surviving it.  Inputs that must be *accepted* (CDATA, a UTF-8 BOM, a fullwidth
JID) invert (b): what the backend receives must be the canonical form.

``jid_bidi_override`` expects jid-malformed: U+202E is prohibited by Nodeprep (RFC 3920
App. A.5, table C.8) and by PRECIS (Default_Ignorable), so it has no canonical form.

Backends: ``recording`` (module fixture below) is a stanzawall with listeners "c2s" on
25440 (STARTTLS) and "c2s-direct" on 25441 (direct TLS) in front of a RecordingBackend,
which accepts any PLAIN login and answers nothing it does not have to — so any stanza
error the client receives there came from the gateway.  SASL relaying and
server-to-client checks use the session ``gateway`` fixture in front of real Prosody.

Run::

    STANZAWALL_BIN=$PWD/target/release/stanzawall /usr/bin/python3 -m pytest \\
        -p no:cacheprovider -q tests/e2e/test_attack_catalogue.py
"""

from __future__ import annotations

import asyncio
import base64
import re
import select
import socket
import ssl
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable

import pytest

from harness.client import Client, run
from harness.defaults import HOST
from harness.gateway import Gateway, Listener
from harness.raw import (NS_CLIENT, NS_SASL, NS_STREAMS, RawStream, RawStreamError,
                         parse_stream_error, stream_header)
from harness.recording_backend import RecordingBackend

CATALOGUE_C2S_PORT = 25440
CATALOGUE_DIRECT_PORT = 25441

NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"

#: The recording gateway's policy, for the "hidden text" entries: a keyword and a link that
#: no other entry uses, dropped on c2s-in wherever a client would show them.
FORBIDDEN = "quuxspam"
FORBIDDEN_HOST = "quux-evil.example"
CATALOGUE_POLICY = f"""
[list.catalogue_urls]
entries = ["{FORBIDDEN_HOST}"]

[[rule]]
name   = "catalogue-keyword"
chain  = "c2s-in"
when   = {{ body_contains = "{FORBIDDEN}" }}
action = "drop"

[[rule]]
name   = "catalogue-link"
chain  = "c2s-in"
when   = {{ url_in = "catalogue_urls" }}
action = "drop"
"""
STANZA_TOO_BIG = "<stanza-too-big xmlns='urn:xmpp:errors'/>"
Q = "['\"]"  # either attribute quote

#: Bounds on every wait (seconds).
WAIT = 10.0
#: Wall-clock budget for writing one hostile payload.
SEND_BUDGET = 30.0


# ---------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------

@dataclass
class Recording:
    backend: RecordingBackend
    gw: Gateway


@pytest.fixture(scope="module")
def recording(tmp, pki) -> Recording:
    backend = RecordingBackend().start()
    gw = Gateway(tmp / "gw-catalogue", pki.cert, pki.key, [
        Listener("c2s", "c2s", CATALOGUE_C2S_PORT, backend.port),
        Listener("c2s-direct", "c2s-tls", CATALOGUE_DIRECT_PORT, backend.port),
    ], extra_toml=CATALOGUE_POLICY)
    try:
        gw.start()
        yield Recording(backend, gw)
    finally:
        code = gw.terminate()
        backend.stop()
    assert code == 0, f"stanzawall did not exit cleanly; log {gw.log_path}"


class Ctx:
    """What a catalogue entry runs with; servers are started only when an entry needs them."""

    def __init__(self, request: pytest.FixtureRequest, pki):
        self.request, self.pki = request, pki

    @property
    def rec(self) -> Recording:
        return self.request.getfixturevalue("recording")

    @property
    def gw(self) -> Gateway:          # stanzawall in front of real Prosody
        return self.request.getfixturevalue("gateway")

    @property
    def prosody(self):
        return self.request.getfixturevalue("prosody")


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------

def marker() -> str:
    return f"MARK{uuid.uuid4().hex}"


def b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _nodelay(rs: RawStream) -> None:
    rs.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _peer_answered(rs: RawStream, start: int, wait: float) -> bool:
    """Pick up whatever the peer sent; True once it closed or sent a stream error."""
    pending = isinstance(rs.sock, ssl.SSLSocket) and rs.sock.pending() > 0
    if pending or select.select([rs.sock], [], [], wait)[0]:
        rs.read_for(0.02)
        rs.sock.settimeout(WAIT)
    new = rs.received[start:]
    return rs.closed or "<stream:error" in new or parse_stream_error(new) is not None


def write(rs: RawStream, data: bytes | Iterable[bytes], split: str, *,
          pause: float = 0.0) -> tuple[int, int]:
    """Write a hostile payload: whole (one sendall per chunk) or one byte per write.

    Stops early, like a real client would, once the peer closed or sent a stream error
    (so the test observes the gateway stopping at its cap); a failing write
    (BrokenPipe/ConnectionReset/TLS EOF/timeout) also just ends the writing.  ``pause``:
    seconds to wait for an answer after each chunk.  Returns (bytes written, offset into
    ``rs.received`` where the answer starts)."""
    _nodelay(rs)
    start = len(rs.received)
    chunks = [data] if isinstance(data, (bytes, bytearray)) else data
    sent = 0
    deadline = time.monotonic() + SEND_BUDGET
    for chunk in chunks:
        pieces = (chunk[i:i + 1] for i in range(len(chunk))) if split == "bytewise" else (chunk,)
        for piece in pieces:
            try:
                rs.sock.settimeout(WAIT)        # RawStream leaves the last read's deadline
                rs.sock.sendall(piece)
            except OSError:
                return sent, start
            sent += len(piece)
            if _peer_answered(rs, start, pause) or time.monotonic() > deadline:
                return sent, start
    return sent, start


def read_closed(rs: RawStream, start: int) -> tuple[str, bool]:
    """Everything received since ``start``, after waiting (bounded) for the close."""
    try:
        rs.read_until_closed(WAIT)
        closed = True
    except RawStreamError:
        closed = False
    return rs.received[start:], closed


def expect_stream_error(text: str, closed: bool, condition: str, app: str | None = None) -> None:
    got = parse_stream_error(text)
    assert got == condition, (f"expected stream error <{condition}/>, got "
                              f"{'<' + got + '/>' if got else 'none'}; received: {text[-1500:]!r}")
    if app:
        assert app in text, f"stream error lacks {app}: {text[-1500:]!r}"
    assert closed, f"stream not closed within {WAIT}s after <{condition}/>"


def find_stanza(text: str, kind: str, stanza_id: str) -> str | None:
    """The first top-level-looking <kind> element in ``text`` with this id."""
    rx = re.compile(rf"<{kind}\b[^>]*?(?:/>|>.*?</{kind}>)", re.S)
    for m in rx.finditer(text):
        start_tag = m.group(0).split(">", 1)[0]
        if re.search(rf"\bid={Q}{re.escape(stanza_id)}{Q}", start_tag):
            return m.group(0)
    return None


def expect_stanza_error(rs: RawStream, kind: str, stanza_id: str, condition: str) -> str:
    """Wait for a <kind type='error' id=stanza_id> carrying <condition xmlns=stanzas/>."""
    deadline = time.monotonic() + WAIT
    while True:
        found = find_stanza(rs.received, kind, stanza_id)
        if found is not None or rs.closed or time.monotonic() >= deadline:
            break
        rs.read_for(0.1)
    assert found is not None, (f"no <{kind} id='{stanza_id[:12]}…'> came back "
                               f"({'stream closed' if rs.closed else 'timeout'}); received: "
                               f"{rs.received[-1500:]!r}; stream error: {parse_stream_error(rs.received)}")
    start_tag = found.split(">", 1)[0]
    assert re.search(rf"\btype={Q}error{Q}", start_tag), f"not an error reply: {found[:600]!r}"
    assert re.search(rf"<{condition}\s+xmlns={Q}{NS_STANZAS}{Q}", found), \
        f"expected <{condition}/>: {found[:600]!r}"
    return found


def sasl_outcome(rs: RawStream) -> str:
    """The next <success/> or <failure>…</failure> (whole element text)."""
    return rs.expect(r"<(success|failure)\b[^>]*?(?:/>|>.*?</\1>)", WAIT).group(0)


ROSTER_GET = "<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>"


def roster_get(rs: RawStream) -> None:
    rid = f"roster-{uuid.uuid4().hex[:8]}"
    rs.send(ROSTER_GET.format(id=rid))
    rs.expect(rf"<iq\b(?=[^>]*\bid={Q}{rid}{Q})(?=[^>]*\btype={Q}result{Q})[^>]*>", WAIT)


# -- recording backend ---------------------------------------------------------------

def rec_open(ctx: Ctx, *, starttls: bool = True) -> RawStream:
    return RawStream.open(HOST, ctx.rec.gw.port("c2s"), starttls=starttls, ca_file=ctx.pki.ca_cert,
                          timeout=WAIT)


def rec_login(ctx: Ctx, user: str = "alice") -> RawStream:
    rs = rec_open(ctx)
    try:
        rs.login(user, "any-password", resource=f"r{uuid.uuid4().hex[:6]}")
    except BaseException:
        rs.close()
        raise
    return rs


def control(rs: RawStream, to: str = "bob@example.test") -> str:
    c = marker()
    rs.send(f"<message to='{to}' id='{c}'><body>{c}</body></message>")
    return c


def rec_assert_not_forwarded(ctx: Ctx, needle: str, ctrl: str, *, closed_leg: bool) -> None:
    """(b): the control stanza reached the backend, the hostile ``needle`` never did.
    ``closed_leg``: the gateway must also have closed that backend leg (stream error)."""
    conn = ctx.rec.backend.wait_for(ctrl, 5)
    assert conn is not None, "the control stanza never reached the recording backend"
    if closed_leg:
        assert conn.wait_closed(5), "gateway left the backend leg open after the stream error"
    assert needle.encode() not in ctx.rec.backend.received(), \
        "the hostile payload's marker reached the backend"


def rec_serves(ctx: Ctx) -> None:
    """(c) on the recording gateway: direct-TLS login, roster get, a message arrives."""
    with RawStream.open(HOST, ctx.rec.gw.port("c2s-direct"), direct_tls=True, ca_file=ctx.pki.ca_cert,
                        timeout=WAIT) as rs:
        rs.login("dave", "any-password", resource=f"ok{uuid.uuid4().hex[:6]}")
        roster_get(rs)
        c = control(rs)
        assert ctx.rec.backend.wait_for(c, 5), "a normal message did not reach the backend"


# -- real Prosody --------------------------------------------------------------------

def pro_open(ctx: Ctx) -> RawStream:
    return RawStream.open(HOST, ctx.gw.port("c2s"), ca_file=ctx.pki.ca_cert, timeout=WAIT)


def pro_login(ctx: Ctx, user: str, resource: str | None = None) -> RawStream:
    rs = pro_open(ctx)
    try:
        rs.login(user, ctx.prosody.users[user], resource=resource or f"r{uuid.uuid4().hex[:6]}")
    except BaseException:
        rs.close()
        raise
    return rs


def pro_serves(ctx: Ctx) -> None:
    """(c) on the Prosody gateway: a fresh login and a roster get."""
    with pro_login(ctx, "dave") as rs:
        roster_get(rs)


def slix(ctx: Ctx, user: str) -> Client:
    return Client(ctx.prosody.jid(user), ctx.prosody.users[user], HOST, ctx.gw.port("c2s"),
                  ca_file=ctx.pki.ca_cert)


# ---------------------------------------------------------------------------------------
# runners (one per kind of entry)
# ---------------------------------------------------------------------------------------

Payload = Callable[[str], "tuple[bytes | Iterable[bytes], str]"]


@dataclass
class Entry:
    id: str
    runner: Callable[["Ctx", "Entry", str], None]
    payload: Payload | str | bytes | None = None
    expect: str | None = None            # stream error / stanza error condition
    app: str | None = None               # extra text the error must carry
    whole_only: bool = False
    opts: dict = field(default_factory=dict)

    def build(self, m: str) -> tuple[bytes | Iterable[bytes], str]:
        """(bytes to write, needle that must never reach the backend)."""
        p = self.payload
        if callable(p):
            return p(m)
        if isinstance(p, str):
            return p.replace("{m}", m).encode(), m
        return p.replace(b"{m}", m.encode()), m


def after_login(ctx: Ctx, e: Entry, split: str) -> None:
    """Bound session on the recording gateway; control message; hostile payload →
    stream error; the backend got the control but not the marker."""
    m = marker()
    data, needle = e.build(m)
    with rec_login(ctx) as rs:
        ctrl = control(rs)
        sent, start = write(rs, data, split, pause=e.opts.get("pause", 0.0))
        text, closed = read_closed(rs, start)
    expect_stream_error(text, closed, e.expect, e.app)
    if "max_sent" in e.opts:
        print(f"{e.id}: the client wrote {sent} bytes before the gateway stopped it")
        assert sent < e.opts["max_sent"], \
            f"the gateway let the client write {sent} bytes before stopping it"
    rec_assert_not_forwarded(ctx, needle, ctrl, closed_leg=True)
    rec_serves(ctx)


def refused_unforwarded(ctx: Ctx, e: Entry, text: str, closed: bool, needle: str) -> None:
    """The expected stream error came back, the marker never reached the backend, and the
    gateway still serves a normal client."""
    expect_stream_error(text, closed, e.expect)
    time.sleep(0.2)
    assert needle.encode() not in ctx.rec.backend.received()
    rec_serves(ctx)


def header_level(ctx: Ctx, e: Entry, split: str) -> None:
    """Raw TCP to the STARTTLS listener; the first bytes are the hostile header."""
    m = marker()
    data, needle = e.build(m)
    with RawStream.connect(HOST, ctx.rec.gw.port("c2s"), ca_file=ctx.pki.ca_cert, timeout=WAIT) as rs:
        _, start = write(rs, data, split)
        text, closed = read_closed(rs, start)
    refused_unforwarded(ctx, e, text, closed, needle)


def header_accepted(ctx: Ctx, e: Entry, split: str) -> None:
    """A header that must be accepted: normal features, STARTTLS, login, delivery."""
    data, _ = e.build("")
    with RawStream.connect(HOST, ctx.rec.gw.port("c2s"), ca_file=ctx.pki.ca_cert, timeout=WAIT) as rs:
        _, start = write(rs, data, split)
        try:
            rs.expect(r"<stream:stream\b[^>]*>", WAIT)
            rs.features = rs.expect(r"<stream:features\b.*?(?:/>|</stream:features>)", WAIT).group(0)
        except RawStreamError:
            pytest.fail(f"header refused; received: {rs.received[start:]!r}, "
                        f"stream error: {parse_stream_error(rs.received)}")
        assert "<starttls" in rs.features, rs.features
        rs.starttls()
        rs.login("alice", "any-password", resource=f"bom{uuid.uuid4().hex[:6]}")
        c = control(rs)
        assert ctx.rec.backend.wait_for(c, 5), "message after the accepted header not delivered"
    rec_serves(ctx)


def pre_tls(ctx: Ctx, e: Entry, split: str) -> None:
    """Plaintext stream open (features offer STARTTLS); hostile element instead of it."""
    m = marker()
    data, needle = e.build(m)
    with rec_open(ctx, starttls=False) as rs:
        assert "<starttls" in rs.features
        _, start = write(rs, data, split)
        text, closed = read_closed(rs, start)
    refused_unforwarded(ctx, e, text, closed, needle)


def starttls_injection(ctx: Ctx, e: Entry, split: str) -> None:
    """`<starttls/>` followed, in the same write, by a plaintext stream header, an `<auth>`
    and a stanza (a STARTTLS command injection): those bytes belong to the TLS handshake, so
    TLS must not come up (or, if it does, the stream must close without serving it), and
    nothing of the injected bytes may ever reach the backend."""
    m = marker()
    blob = b64(f"\0alice\0{m}")
    data = (f"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>" + stream_header().decode()
            + f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{blob}</auth>"
            + f"<message to='bob@example.test'><body>{m}</body></message>").encode()
    outcome = ""
    with rec_open(ctx, starttls=False) as rs:
        _, start = write(rs, data, split)
        try:
            rs.expect(r"<proceed\b[^>]*/>", WAIT)
        except RawStreamError:
            outcome = f"no <proceed/>: {rs.received[start:]!r}"
        if not outcome:
            try:
                rs.sock.settimeout(WAIT)
                rs._wrap_tls()
            except (ssl.SSLError, OSError) as err:
                outcome = f"TLS handshake failed: {err}"
        if not outcome:
            # TLS came up, so the gateway skipped the injected bytes.  They must not act as
            # the start of the encrypted stream (no features for a header we never sent
            # inside TLS), and the stream must not serve.
            after = len(rs.received)
            early = rs.read_for(2.0)
            assert "<stream:features" not in early, \
                f"injected plaintext header was answered inside TLS: {early!r}"
            if not rs.closed:
                rs.send(stream_header())
            text, closed = read_closed(rs, after)
            assert closed and "<stream:features" not in text, \
                f"TLS came up after injected plaintext and the stream serves: {text!r}"
            outcome = "closed after TLS"
    time.sleep(0.3)
    got = ctx.rec.backend.received()
    assert m.encode() not in got and blob.encode() not in got, "injected plaintext reached the backend"
    rec_serves(ctx)


def after_tls(ctx: Ctx, e: Entry, split: str) -> None:
    """Secure stream open (backend leg connected), not authenticated; hostile payload →
    stream error; the backend leg is closed and never saw the marker."""
    m = marker()
    data, needle = e.build(m)
    before = len(ctx.rec.backend.connections())
    with rec_open(ctx) as rs:
        assert "<mechanisms" in rs.features, rs.features
        _, start = write(rs, data, split)
        text, closed = read_closed(rs, start)
    expect_stream_error(text, closed, e.expect)
    legs = ctx.rec.backend.connections()[before:]
    assert legs, "the gateway never opened the backend leg"
    for leg in legs:
        assert leg.wait_closed(5), "gateway left the backend leg open after the stream error"
    assert needle.encode() not in ctx.rec.backend.received()
    rec_serves(ctx)


def stanza_error(ctx: Ctx, e: Entry, split: str) -> None:
    """Bound session on the recording gateway; the gateway answers the hostile stanza with a
    stanza error (the backend answers nothing, so the error can only be the gateway's);
    the session stays open; nothing reaches the backend."""
    m = marker()
    data, needle = e.build(m)
    kind = e.opts.get("kind", "message")
    with rec_login(ctx) as rs:
        write(rs, data, split)
        expect_stanza_error(rs, kind, m, e.expect)
        assert parse_stream_error(rs.received) is None, rs.received[-800:]
        ctrl = control(rs)                       # processed after the hostile stanza
        rec_assert_not_forwarded(ctx, needle, ctrl, closed_leg=False)
        roster_get(rs)                           # the session is still usable
    rec_serves(ctx)


def jid_canonical(ctx: Ctx, e: Entry, split: str) -> None:
    """A `to` in a compatibility form: the backend gets the prepared JID (recording), and
    bob on real Prosody receives the message."""
    m = marker()
    data, _ = e.build(m)
    with rec_login(ctx) as rs:
        write(rs, data, split)
        conn = ctx.rec.backend.wait_for(m, 5)
        assert conn is not None, (f"message not forwarded; received: {rs.received[-800:]!r}, "
                                  f"stream error: {parse_stream_error(rs.received)}")
        fwd = find_stanza(conn.data.decode("utf-8", "replace"), "message", m)
        assert fwd is not None
        start_tag = fwd.split(">", 1)[0]
        assert re.search(rf"\bto={Q}bob@example\.test{Q}", start_tag), \
            f"'to' not rewritten to the prepared JID: {start_tag!r}"

    async def go():
        async with slix(ctx, "bob") as bob:
            alice = await asyncio.to_thread(pro_login, ctx, "alice")
            try:
                m2 = marker()
                data2, _ = e.build(m2)
                await asyncio.to_thread(write, alice, data2, split)
                msg = await bob.next_message(timeout=WAIT)
                assert msg.body == m2 and msg.id == m2, msg
            finally:
                alice.close()
    run(go())
    rec_serves(ctx)


def cdata(ctx: Ctx, e: Entry, split: str) -> None:
    """CDATA is accepted: bob (real Prosody) gets the text; the backend gets escaped text."""
    m = marker()
    data, _ = e.build(m)
    with rec_login(ctx) as rs:
        write(rs, data, split)
        conn = ctx.rec.backend.wait_for(m, 5)
        assert conn is not None, (f"CDATA message not forwarded; received: {rs.received[-800:]!r},"
                                  f" stream error: {parse_stream_error(rs.received)}")
        fwd = find_stanza(conn.data.decode("utf-8", "replace"), "message", m)
        assert fwd is not None
        assert "&lt;b&gt;&amp;x&lt;/b&gt;" in fwd, fwd
        assert b"CDATA" not in conn.data, fwd

    async def go():
        async with slix(ctx, "bob") as bob:
            alice = await asyncio.to_thread(pro_login, ctx, "alice")
            try:
                m2 = marker()
                data2, _ = e.build(m2)
                await asyncio.to_thread(write, alice, data2.replace(b"bob@example.test",
                                                                    bob.jid.encode()), split)
                msg = await bob.next_message(timeout=WAIT)
                assert msg.id == m2 and msg.body == "<b>&x</b>", msg
            finally:
                alice.close()
    run(go())
    rec_serves(ctx)


def hidden_text(ctx: Ctx, e: Entry, split: str) -> None:
    """A stanza whose shown text carries the forbidden keyword or link where a reader of
    bodies alone would miss it (another namespace, nested, XHTML, an invitation reason, an
    error text, Unicode spellings, a forwarded message): the policy reads it, so it is
    dropped and never forwarded; the session goes on (a control message after it arrives)."""
    m = marker()
    data, needle = e.build(m)
    with rec_login(ctx) as rs:
        write(rs, data, split)
        ctrl = control(rs)
        rec_assert_not_forwarded(ctx, needle, ctrl, closed_leg=False)
        assert parse_stream_error(rs.received) is None, rs.received[-800:]
    rec_serves(ctx)


def pipelined(ctx: Ctx, e: Entry, split: str) -> None:
    """A client that writes its stream header and the next element in one go (tsung does;
    Prosody and ejabberd accept it) is served: the element waits for the features."""
    with RawStream.connect(HOST, ctx.rec.gw.port("c2s-direct"), direct_tls=True, ca_file=ctx.pki.ca_cert,
                           timeout=WAIT) as rs:
        blob = b64("\0alice\0any-password")
        write(rs, stream_header() + f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{blob}</auth>".encode(), split)
        rs.expect(r"<success\b", WAIT)
        resource = f"pipe{uuid.uuid4().hex[:6]}"
        write(rs, stream_header() + f"<iq type='set' id='b1'><bind xmlns='{NS_BIND}'><resource>{resource}"
              f"</resource></bind></iq>".encode(), split)
        rs.expect(rf"<jid>alice@example.test/{resource}</jid>", WAIT)
        assert parse_stream_error(rs.received) is None, rs.received[-800:]
        c = control(rs)
        assert ctx.rec.backend.wait_for(c, 5), "a message after the pipelined login did not reach the backend"
    rec_serves(ctx)


def to_client(ctx: Ctx, e: Entry, split: str) -> None:
    """carol (a foreign user) sends bob's full JID something only his own server may send;
    the gateway must not hand it to bob's client.  A control message sent after it does
    arrive, and bob's stream stays open."""
    m = marker()
    with pro_login(ctx, "bob") as bob, pro_login(ctx, "carol") as carol:
        data, _ = e.build(m)
        data = data.replace(b"{bob}", bob.bound_jid.encode())
        write(carol, data, split)
        ctrl = marker()
        carol.send(f"<message to='{bob.bound_jid}' id='{ctrl}' type='chat'><body>{ctrl}</body></message>")
        try:
            bob.expect(re.escape(ctrl), WAIT)
        except RawStreamError:
            pytest.fail(f"control message from carol never reached bob; bob got: {bob.received[-800:]!r}")
        bob.read_for(2.0)
        assert parse_stream_error(bob.received) is None, bob.received[-800:]
        assert m not in bob.received, f"bob's client received the forged stanza: {bob.received[-1500:]!r}"
    pro_serves(ctx)


# -- SASL -------------------------------------------------------------------------------

def sasl_unoffered(ctx: Ctx, e: Entry, split: str) -> None:
    """Mechanism not offered: Prosody's <failure><invalid-mechanism/>; the session stays
    usable (PLAIN login on the same stream works)."""
    m = marker()
    with pro_open(ctx) as rs:
        assert "X-FOO" not in rs.mechanisms
        write(rs, f"<auth xmlns='{NS_SASL}' mechanism='X-FOO'>{b64(m)}</auth>".encode(), split)
        out = sasl_outcome(rs)
        assert out.startswith("<failure") and "invalid-mechanism" in out, out
        rs.login("alice", ctx.prosody.users["alice"])
        roster_get(rs)
    pro_serves(ctx)


def sasl_plus(ctx: Ctx, e: Entry, split: str) -> None:
    """A -PLUS mechanism is refused by the gateway itself (the backend never sees it)."""
    m = marker()
    blob = b64(f"p=tls-exporter,,n=alice,r={m}")
    with rec_open(ctx) as rs:
        write(rs, f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-1-PLUS'>{blob}</auth>".encode(), split)
        out = sasl_outcome(rs)
        assert re.fullmatch(rf"<failure xmlns={Q}{NS_SASL}{Q}>\s*<invalid-mechanism/>\s*</failure>", out), out
        rs.login("alice", "any-password")          # same stream, now with PLAIN
        ctrl = control(rs)
        rec_assert_not_forwarded(ctx, blob, ctrl, closed_leg=False)
        assert "SCRAM-SHA-1-PLUS" not in ctx.rec.backend.received().decode("utf-8", "replace")
    rec_serves(ctx)


def sasl_bad_base64(ctx: Ctx, e: Entry, split: str) -> None:
    with pro_open(ctx) as rs:
        write(rs, f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>!!!{marker()}===*</auth>".encode(), split)
        out = sasl_outcome(rs)
        assert out.startswith("<failure") and re.search(r"<(incorrect-encoding|malformed-request)\b", out), out
    pro_serves(ctx)


def sasl_huge_auth(ctx: Ctx, e: Entry, split: str) -> None:
    """A 1 MB <auth> (pre-auth cap 10000 bytes) → policy-violation; nothing forwarded."""
    m = marker()
    head = f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{m}".encode()
    chunks = [head] + [b"A" * 65536] * 16 + [b"</auth>"]
    with rec_open(ctx) as rs:
        sent, start = write(rs, chunks, split, pause=0.002)
        text, closed = read_closed(rs, start)
    expect_stream_error(text, closed, "policy-violation")
    assert sent < (1 << 20), f"the whole 1 MB was accepted before the gateway stopped ({sent} bytes)"
    time.sleep(0.2)
    assert m.encode() not in ctx.rec.backend.received()
    rec_serves(ctx)


def sasl_authzid(ctx: Ctx, e: Entry, split: str) -> None:
    """PLAIN as alice with authzid bob: must fail (no login as bob)."""
    blob = b64(f"bob@example.test\0alice\0{ctx.prosody.users['alice']}")
    with pro_open(ctx) as rs:
        write(rs, f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{blob}</auth>".encode(), split)
        out = sasl_outcome(rs)
        if out.startswith("<success"):
            rs.start_stream()
            jid = rs.bind()
            pytest.fail(f"PLAIN with authzid bob succeeded; bound {jid}")
        # Answered by the gateway itself (RFC 6120 §6.5.6), whatever the server would do.
        assert out.startswith("<failure") and "<invalid-authzid" in out, out
    pro_serves(ctx)


def sasl_bruteforce(ctx: Ctx, e: Entry, split: str) -> None:
    """20 wrong passwords (one connection or 20): each gets <failure>; the gateway stays up."""
    def attempt(rs: RawStream, i: int) -> None:
        blob = b64(f"\0alice\0wrong-{i}")
        write(rs, f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{blob}</auth>".encode(), split)
        out = sasl_outcome(rs)
        assert out.startswith("<failure") and "not-authorized" in out, f"attempt {i}: {out}"

    if e.opts["conns"] == 1:
        with pro_open(ctx) as rs:
            for i in range(20):
                attempt(rs, i)
    else:
        for i in range(20):
            with pro_open(ctx) as rs:
                attempt(rs, i)
    assert ctx.gw.running()
    pro_serves(ctx)


# ---------------------------------------------------------------------------------------
# the catalogue
# ---------------------------------------------------------------------------------------

TO = "bob@example.test"


def msg(inner: str, attrs: str = "") -> str:
    return f"<message to='{TO}'{attrs}>{inner}</message>"


def bad_bytes(raw: bytes) -> bytes:
    return f"<message to='{TO}'><body>{{m}}".encode() + raw + b"</body></message>"


def billion_laughs(m: str) -> tuple[bytes, str]:
    ents = [f"<!ENTITY lol '{m}'>"]
    prev = "lol"
    for i in range(1, 10):
        ents.append(f"<!ENTITY lol{i} '{('&' + prev + ';') * 10}'>")
        prev = f"lol{i}"
    return (f"<!DOCTYPE lolz [{''.join(ents)}]>" + msg(f"<body>&{prev};</body>")).encode(), m


def stanza_100mb(m: str) -> tuple[Iterable[bytes], str]:
    chunk = b"A" * 65536
    return [f"<message to='{TO}'><body>{m}".encode()] + [chunk] * 1600 + [b"</body></message>"], m


def attributes_100k(m: str) -> tuple[Iterable[bytes], str]:
    def gen():
        yield f"<message to='{TO}' id='{m}'".encode()
        for base in range(0, 100_000, 1000):
            yield "".join(f" a{i}='x'" for i in range(base, base + 1000)).encode()
        yield b"/>"
    return gen(), m


def deep_nesting(m: str) -> tuple[bytes, str]:
    return (f"<message to='{TO}'><body>{m}</body>" + "<a>" * 10_000 + "</a>" * 10_000
            + "</message>").encode(), m


def many_xmlns(m: str) -> tuple[bytes, str]:
    decls = "".join(f" xmlns:p{i}='urn:{i}'" for i in range(5000))
    return f"<message to='{TO}' id='{m}'><x xmlns='urn:x'{decls}/></message>".encode(), m


def auth_before_tls(m: str) -> tuple[bytes, str]:
    blob = b64(f"\0alice\0{m}")
    return f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{blob}</auth>".encode(), blob


def header(*, to: str | None = "example.test", version: str | None = "1.0",
           ns: str = NS_CLIENT, stream_ns: str = NS_STREAMS, decl: str = "<?xml version='1.0'?>") -> str:
    attrs = (f" to='{to}'" if to is not None else "") + \
            (f" version='{version}'" if version is not None else "")
    return f"{decl}<stream:stream{attrs} xmlns='{ns}' xmlns:stream='{stream_ns}'>"


AFTER_HEADER = f"<message to='{TO}'><body>{{m}}</body></message>"


def utf16_header(m: str) -> tuple[bytes, str]:
    return b"\xfe\xff" + (header(decl="") + AFTER_HEADER.replace("{m}", m)).encode("utf-16-be"), m


def jid_msg(to: str) -> str:
    return f"<message to='{to}' id='{{m}}' type='chat'><body>{{m}}</body></message>"


RESTART = header(decl="")

CATALOGUE: list[Entry] = [
    # -- restricted XML after login ------------------------------------------------------
    Entry("doctype", after_login,
          "<!DOCTYPE message [<!ELEMENT message ANY><!ATTLIST message x CDATA '{m}'>]>" + msg("<body>x</body>"),
          "restricted-xml"),
    Entry("billion_laughs", after_login, billion_laughs, "restricted-xml"),
    Entry("external_entity", after_login,
          "<!DOCTYPE message [<!ENTITY xxe SYSTEM 'file:///etc/hostname'>]>" + msg("<body>{m}&xxe;</body>"),
          "restricted-xml"),
    Entry("entity_undefined_text", after_login, msg("<body>{m}&xxe;</body>"), "restricted-xml"),
    Entry("entity_undefined_attr", after_login, msg("<body>x</body>", " id='{m}&xxe;'"), "restricted-xml"),
    Entry("comment", after_login, msg("<body>{m}</body><!-- c -->"), "restricted-xml"),
    Entry("processing_instruction", after_login, msg("<body>{m}</body><?pi x?>"), "restricted-xml"),
    Entry("xml_decl_midstream", after_login, "<?xml version='1.0'?>" + msg("<body>{m}</body>"),
          "restricted-xml"),
    # -- encoding ----------------------------------------------------------------------
    Entry("utf8_overlong", after_login, bad_bytes(b"\xc0\xaf"), "unsupported-encoding"),
    Entry("utf8_stray_continuation", after_login, bad_bytes(b"\x80"), "unsupported-encoding"),
    Entry("utf8_lead_then_lt", after_login, bad_bytes(b"\xc3"), "unsupported-encoding"),
    Entry("utf8_surrogate", after_login, bad_bytes(b"\xed\xa0\x80"), "unsupported-encoding"),
    # -- characters --------------------------------------------------------------------
    Entry("char_fffe_raw", after_login, bad_bytes("\ufffe".encode()), "not-well-formed"),
    Entry("char_nul_raw", after_login, bad_bytes(b"\x00"), "not-well-formed"),
    Entry("char_ctrl_raw", after_login, bad_bytes(b"\x01"), "not-well-formed"),
    Entry("charref_0", after_login, bad_bytes(b"&#0;"), "not-well-formed"),
    Entry("charref_1", after_login, bad_bytes(b"&#1;"), "not-well-formed"),
    Entry("charref_fffe", after_login, bad_bytes(b"&#xFFFE;"), "not-well-formed"),
    Entry("charref_d800", after_login, bad_bytes(b"&#xD800;"), "not-well-formed"),
    Entry("cdata", cdata, f"<message to='{TO}' id='{{m}}' type='chat'><body><![CDATA[<b>&x</b>]]></body></message>"),
    # -- limits ------------------------------------------------------------------------
    Entry("stanza_100mb", after_login, stanza_100mb, "policy-violation", app=STANZA_TOO_BIG,
          whole_only=True, opts={"pause": 0.002, "max_sent": 5 << 20}),
    Entry("nesting_10000", after_login, deep_nesting, "policy-violation"),
    Entry("attributes_100k", after_login, attributes_100k, "policy-violation", whole_only=True,
          opts={"pause": 0.02, "max_sent": 64_000}),  # refused at the 65th attribute value, not the byte cap
    Entry("xmlns_5000", after_login, many_xmlns, "policy-violation"),
    # -- namespaces and attributes -----------------------------------------------------
    Entry("duplicate_attribute", after_login, msg("<body>x</body>", " id='{m}' a='1' a='2'"), "not-well-formed"),
    Entry("duplicate_attribute_prefixes", after_login,
          msg("<body>{m}</body><x xmlns='urn:x' xmlns:p='urn:a' xmlns:q='urn:a' p:a='1' q:a='2'/>"),
          "not-well-formed"),
    Entry("undeclared_prefix", after_login, msg("<body>{m}</body><x:y/>"), "not-well-formed"),
    Entry("rebind_xml_prefix", after_login, msg("<body>{m}</body><x xmlns='urn:x' xmlns:xml='urn:other'/>"),
          "not-well-formed"),
    Entry("rebind_xmlns_prefix", after_login, msg("<body>{m}</body><x xmlns='urn:x' xmlns:xmlns='urn:x'/>"),
          "not-well-formed"),
    # -- stream level after login --------------------------------------------------------
    Entry("unknown_top_level", after_login, "<foo xmlns='urn:foo'><bar>{m}</bar></foo>", "unsupported-stanza-type"),
    Entry("nested_stream", after_login,
          f"<stream:stream xmlns:stream='{NS_STREAMS}'>" + msg("<body>{m}</body>"), "invalid-xml"),
    Entry("compress", after_login,
          "<compress xmlns='http://jabber.org/protocol/compress' id='{m}'><method>zlib</method></compress>",
          "unsupported-stanza-type"),
    Entry("restart_out_of_order", after_login, RESTART + msg("<body>{m}</body>"), "invalid-xml"),
    Entry("restart_before_sasl", after_tls, RESTART + "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'"
          " mechanism='PLAIN'>{m}</auth>", "invalid-xml"),
    Entry("restart_before_sasl_xml_decl", after_tls, "<?xml version='1.0'?>" + RESTART
          + "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{m}</auth>", "restricted-xml"),
    Entry("restart_out_of_order_xml_decl", after_login, "<?xml version='1.0'?>" + RESTART + msg("<body>{m}</body>"),
          "restricted-xml"),
    # -- stream header (before TLS) ------------------------------------------------------
    Entry("header_wrong_stream_ns", header_level, header(stream_ns="urn:wrong") + AFTER_HEADER, "invalid-namespace"),
    Entry("header_jabber_server", header_level, header(ns="jabber:server") + AFTER_HEADER, "invalid-namespace"),
    Entry("header_version_missing", header_level, header(version=None) + AFTER_HEADER, "unsupported-version"),
    Entry("header_version_2", header_level, header(version="2.0") + AFTER_HEADER, "unsupported-version"),
    Entry("header_to_missing", header_level, header(to=None) + AFTER_HEADER, "host-unknown"),
    Entry("header_xml_1_1", header_level, header(decl="<?xml version='1.1'?>") + AFTER_HEADER, "not-well-formed"),
    Entry("header_utf16_bom", header_level, utf16_header, "unsupported-encoding"),
    Entry("header_utf8_bom", header_accepted, b"\xef\xbb\xbf" + header().encode()),
    # -- before TLS ----------------------------------------------------------------------
    Entry("stanza_before_starttls", pre_tls, AFTER_HEADER, "policy-violation"),
    Entry("auth_before_starttls", pre_tls, auth_before_tls, "policy-violation"),
    Entry("plaintext_after_starttls", starttls_injection),
    # -- SASL ----------------------------------------------------------------------------
    Entry("sasl_unoffered_mechanism", sasl_unoffered),
    Entry("sasl_scram_plus", sasl_plus),
    Entry("sasl_bad_base64", sasl_bad_base64),
    Entry("sasl_auth_1mb", sasl_huge_auth),
    Entry("sasl_authzid_other_user", sasl_authzid),
    Entry("sasl_bruteforce_one_connection", sasl_bruteforce, opts={"conns": 1}),
    Entry("sasl_bruteforce_20_connections", sasl_bruteforce, opts={"conns": 20}),
    # -- JIDs in 'to' --------------------------------------------------------------------
    Entry("jid_localpart_3072", stanza_error, jid_msg("a" * 3072 + "@example.test"), "jid-malformed"),
    Entry("jid_resource_1024", stanza_error, jid_msg("bob@example.test/" + "r" * 1024), "jid-malformed"),
    Entry("jid_empty_localpart", stanza_error, jid_msg("@example.test"), "jid-malformed"),
    Entry("jid_empty_resource", stanza_error, jid_msg("bob@example.test/"), "jid-malformed"),
    Entry("jid_quote_in_localpart", stanza_error, jid_msg('bo"b@example.test'), "jid-malformed"),
    Entry("jid_space_in_domain", stanza_error, jid_msg("bob@exa mple.test"), "jid-malformed"),
    # U+202E is prohibited by Nodeprep (RFC 3920 App. A.5, table C.8) and PRECIS (RFC 8264
    # Default_Ignorable): no canonical form exists, so it is jid-malformed.
    Entry("jid_bidi_override", stanza_error, jid_msg("bob\u202e@example.test"), "jid-malformed"),
    Entry("jid_fullwidth", jid_canonical, jid_msg("\uff42\uff4f\uff42@example.test")),
    # -- addresses -----------------------------------------------------------------------
    Entry("from_other_user", after_login, msg("<body>{m}</body>", " from='bob@example.test/x'"), "invalid-from"),
    Entry("from_server", after_login, msg("<body>{m}</body>", " from='example.test'"), "invalid-from"),
    # -- toward the client ---------------------------------------------------------------
    Entry("to_client_forged_carbon", to_client,
          "<message to='{bob}' id='{m}'><received xmlns='urn:xmpp:carbons:2'>"
          "<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'"
          " from='alice@example.test/x' to='bob@example.test' type='chat'><body>forged {m}</body>"
          "</message></forwarded></received></message>"),
    Entry("to_client_foreign_roster_push", to_client,
          "<iq type='set' id='{m}' to='{bob}'><query xmlns='jabber:iq:roster'>"
          "<item jid='{m}@evil.test' name='{m}'/></query></iq>"),
    # -- iq ------------------------------------------------------------------------------
    Entry("iq_without_id", after_login,
          "<iq type='get' to='example.test'><query xmlns='jabber:iq:version' m='{m}'/></iq>", "invalid-xml"),
    Entry("iq_two_children", stanza_error,
          "<iq type='get' id='{m}' to='example.test'><query xmlns='jabber:iq:version'/>"
          "<ping xmlns='urn:xmpp:ping'/></iq>", "bad-request", opts={"kind": "iq"}),
    # -- what the server re-serializes: must not end the recipient's session --------------
    # Prosody writes an unknown xml:* attribute with a prefix bound to the XML namespace
    # (illegal, XML Namespaces §3): the gateway drops that stanza for bob, never his session.
    Entry("to_client_xml_attribute_reserialized", to_client,
          "<message to='{bob}' id='{m}' type='chat'><body>{m}</body><x xmlns='urn:x:y' xml:foo='1'/></message>"),
    # -- pipelining -----------------------------------------------------------------------
    Entry("pipelined_header_and_auth", pipelined),
    # -- shown text the policy must read (the recording gateway drops FORBIDDEN) ----------
    Entry("text_jabber_server_body", hidden_text,
          msg(f"<body xmlns='jabber:server'>{FORBIDDEN} {{m}}</body>")),
    Entry("text_nested_in_extension", hidden_text,
          msg(f"<body>{{m}}</body><x xmlns='urn:example:card'><line><em>{FORBIDDEN}</em></line></x>")),
    Entry("text_xhtml_split_by_markup", hidden_text,
          msg("<body>{m}</body><html xmlns='http://jabber.org/protocol/xhtml-im'>"
              "<body xmlns='http://www.w3.org/1999/xhtml'><p>quux<b>spam</b></p></body></html>")),
    Entry("text_subject", hidden_text, msg(f"<subject>{FORBIDDEN}</subject><body>{{m}}</body>")),
    Entry("text_error_text", hidden_text,
          msg(f"<error type='cancel'><undefined-condition xmlns='{NS_STANZAS}'/>"
              f"<text xmlns='{NS_STANZAS}'>{FORBIDDEN}</text></error>", " type='error' id='{m}'")),
    Entry("text_muc_invitation_reason", hidden_text,
          "<message to='room@conference.example.test' id='{m}'><x xmlns='http://jabber.org/protocol/muc#user'>"
          f"<invite to='{TO}'><reason>{FORBIDDEN}</reason></invite></x></message>"),
    Entry("text_direct_invitation_reason", hidden_text,
          msg(f"<x xmlns='jabber:x:conference' jid='room@conference.example.test' reason='{FORBIDDEN}'/>",
              " id='{m}'")),
    Entry("text_presence_status", hidden_text, f"<presence id='{{m}}'><status>{FORBIDDEN}</status></presence>"),
    Entry("text_file_sharing_source", hidden_text,
          msg("<body>{m}</body><file-sharing xmlns='urn:xmpp:sfs:0'><file xmlns='urn:xmpp:file:metadata:0'>"
              "<name>a.txt</name></file><sources><url-data xmlns='http://jabber.org/protocol/url-data'"
              f" target='https://{FORBIDDEN_HOST}/a.txt'/></sources></file-sharing>")),
    Entry("text_forwarded_message", hidden_text,
          msg("<body>{m}</body><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'"
              f" from='carol@example.test/c'><body>{FORBIDDEN}</body></message></forwarded>")),
    # -- Unicode spellings of the keyword (NFKC, case folding, default-ignorables) ---------
    Entry("unicode_zero_width_space", hidden_text, msg("<body>quux\u200bspam {m}</body>")),
    Entry("unicode_soft_hyphen_and_word_joiner", hidden_text, msg("<body>qu\u00adux\u2060spam {m}</body>")),
    Entry("unicode_tag_characters", hidden_text, msg("<body>quux\U000e0020\U000e0041spam {m}</body>")),
    Entry("unicode_variation_selector", hidden_text, msg("<body>qu\ufe0fuxspam {m}</body>")),
    Entry("unicode_hangul_filler", hidden_text, msg("<body>quux\u3164spam {m}</body>")),
    Entry("unicode_fullwidth", hidden_text, msg("<body>\uff51\uff55\uff55\uff58\uff53\uff50\uff41\uff4d {m}</body>")),
    Entry("unicode_mathematical_bold", hidden_text,
          msg("<body>\U0001d42a\U0001d42e\U0001d42e\U0001d431\U0001d42c\U0001d429\U0001d41a\U0001d426 {m}</body>")),
    Entry("unicode_uppercase", hidden_text, msg("<body>QUUXSPAM {m}</body>")),
    Entry("unicode_link_with_zero_width", hidden_text,
          msg("<body>see https://quux-evil\u200b.example/x {m}</body>")),
]


def _params():
    seen = set()
    for e in CATALOGUE:
        assert e.id not in seen, e.id
        seen.add(e.id)
        for split in ("whole", "bytewise"):
            if split == "bytewise" and e.whole_only:
                continue
            yield pytest.param(e, split, id=f"{e.id}-{split}")


@pytest.mark.parametrize("entry, split", list(_params()))
def test_catalogue(request, pki, entry: Entry, split: str):
    entry.runner(Ctx(request, pki), entry, split)
