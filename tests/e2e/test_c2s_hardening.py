"""End-to-end tests for the hardening of the c2s door (issue 18): what real servers emit and
real clients do, through a real ``stanzawall run``.

- a stanza a remote sender can make the server re-serialize unacceptably (Prosody writes an
  unknown ``xml:foo`` attribute with a prefix bound to the XML namespace) is dropped and bounced,
  never fatal to the recipient's session — also when it comes back from the archive;
- wrapped stanzas (carbons, archive results) are policed as what they are: a sender whose
  messages are dropped cannot reach the user through a carbon or an archive query;
- elements pipelined behind a stream header (tsung sends ``<auth/>`` with its header) wait
  for the stream features instead of closing the stream;
- a client that stops reading is cut after the write timeout, logged and counted as such.

Both servers: a private Prosody with mod_carbons and mod_mam, and the session's ejabberd (its
harness enables mod_carbons and mod_mam), each behind its own listener of one gateway.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from harness.defaults import HOST
from harness.gateway import Gateway, Listener
from harness.prosody import ProsodyInstance, start_prosody
from harness.raw import NS_BIND, NS_SASL, RawStream, stream_header

PROSODY_PORT = 15240
GW_PROSODY = 25480
GW_EJABBERD = 25481
GW_DIRECT = 25482
GW_ADMIN = 25483

POLICY = f"""
[[rule]]
name   = "blocked-carol"
chain  = "c2s-out"
when   = {{ from = "carol@example.test" }}
action = "drop"

[audit]
path = "audit.jsonl"

[admin]
bind = "127.0.0.1:{GW_ADMIN}"
"""

PROSODY_XML_ATTR = "<x xmlns='urn:x:y' xml:foo='1'/>"


@pytest.fixture(scope="module")
def prosody_h(tmp: Path) -> ProsodyInstance:
    inst = start_prosody(tmp / "prosody-hardening", port=PROSODY_PORT, extra_modules=["carbons", "mam"])
    yield inst
    inst.stop()


@pytest.fixture(scope="module")
def gw(tmp: Path, pki, prosody_h, ejabberd) -> Gateway:
    g = Gateway(tmp / "gw-hardening", pki.cert, pki.key, [
        Listener("prosody", "c2s", GW_PROSODY, prosody_h.port),
        Listener("prosody-direct", "c2s-tls", GW_DIRECT, prosody_h.port),
        Listener("ejabberd", "c2s", GW_EJABBERD, ejabberd.plain_port),
    ], extra_toml=POLICY).start()
    yield g
    assert g.terminate() == 0, f"stanzawall did not exit cleanly; log {g.log_path}"


@pytest.fixture(params=["prosody", "ejabberd"])
def server(request, prosody_h, ejabberd):
    """(listener name, server instance) for each backend."""
    return request.param, (prosody_h if request.param == "prosody" else ejabberd)


def login(gw: Gateway, pki, listener: str, srv, user: str, resource: str) -> RawStream:
    rs = RawStream.open(HOST, gw.port(listener), ca_file=pki.ca_cert)
    rs.login(user, srv.users[user], resource)
    return rs


def iq(rs: RawStream, payload: str, qid: str, timeout: float = 10.0) -> str:
    """Send an iq set/get and return the result (RawStreamError on error or silence)."""
    rs.send(payload)
    m = rs.expect(rf"<iq\b[^>]*\bid='{qid}'[^>]*(?:/>|>.*?</iq>)", timeout)
    assert "type='result'" in m.group(0), m.group(0)
    return m.group(0)


def ping(rs: RawStream, qid: str) -> None:
    iq(rs, f"<iq type='get' id='{qid}' to='example.test'><ping xmlns='urn:xmpp:ping'/></iq>", qid)


def audit(gw: Gateway) -> list[dict]:
    path = gw.dir / "audit.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def metric(name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{GW_ADMIN}/metrics", timeout=5).read().decode()
    want = {f'{k}="{v}"' for k, v in labels.items()}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if m and want <= set(m.group(1).split(",")):
            return float(m.group(2))
    raise AssertionError(f"{name}{labels} not in /metrics:\n{text}")


def archive(rs: RawStream, qid: str) -> str:
    """All of this account's archive (XEP-0313), as received until the final iq result."""
    rs.send(f"<iq type='set' id='{qid}'><query xmlns='urn:xmpp:mam:2' queryid='{qid}'/></iq>")
    m = rs.expect(rf"(.*?)<iq\b[^>]*\bid='{qid}'[^>]*>.*?</iq>", 15)
    assert "type='result'" in m.group(0) and "<fin" in m.group(0), m.group(0)
    return m.group(1)


# -- 1. what a remote sender makes the server emit never ends the recipient's session ---------

def test_unacceptable_reserialization_is_dropped_never_fatal(gw, pki, server):
    listener, srv = server
    tag = f"xmlattr-{listener}-{time.monotonic_ns()}"
    with login(gw, pki, listener, srv, "bob", "b1") as bob, login(gw, pki, listener, srv, "alice", "a1") as alice:
        alice.send(f"<message to='bob@example.test/b1' id='{tag}' type='chat'><body>hi {tag}</body>"
                   f"{PROSODY_XML_ATTR}</message>")
        alice.send(f"<message to='bob@example.test/b1' type='chat'><body>after {tag}</body></message>")
        bob.expect(f"after {tag}")
        got_it = f"hi {tag}" in bob.received
        if listener == "prosody":
            # Prosody writes xmlns:ns1='http://www.w3.org/XML/1998/namespace' ns1:foo='1', which
            # XML Namespaces §3 forbids: the gateway drops it and tells the sender.
            assert not got_it, bob.received
            err = alice.expect(rf"<message\b[^>]*\bid='{tag}'[^>]*>.*?</message>", 10).group(0)
            assert "type='error'" in err and "policy-violation" in err and "from='bob@example.test/b1'" in err, err
            records = [r for r in audit(gw) if r.get("id") == tag]
            assert any(r["rule"] == "gateway: stanza from backend not namespace-well-formed" for r in records), records
        else:
            # ejabberd writes xml:foo itself, which is legal: delivered.
            assert got_it, bob.received
        assert "<stream:error" not in bob.received and not bob.closed
        ping(bob, "p1")
        # The message sits in bob's archive: syncing it must not end the session either.
        history = archive(bob, "mam1")
        assert f"after {tag}" in history
        assert "<stream:error" not in bob.received and not bob.closed
        ping(bob, "p2")


# -- 3. wrapped stanzas -------------------------------------------------------------------------

def test_blocked_sender_reaches_no_one_as_carbon_or_archive_result(gw, pki, server):
    listener, srv = server
    tag = f"{listener}-{time.monotonic_ns()}"
    one = login(gw, pki, listener, srv, "alice", "one")
    two = login(gw, pki, listener, srv, "alice", "two")
    try:
        for rs, qid in ((one, "c1"), (two, "c2")):
            iq(rs, f"<iq type='set' id='{qid}'><enable xmlns='urn:xmpp:carbons:2'/></iq>", qid)
            rs.send("<presence/>")
        with login(gw, pki, listener, srv, "carol", "c") as carol, login(gw, pki, listener, srv, "bob", "b") as bob:
            carol.send(f"<message to='alice@example.test/one' type='chat'><body>carol {tag}</body></message>")
            bob.send(f"<message to='alice@example.test/one' type='chat'><body>bob {tag}</body></message>")
            # Control: bob's message arrives directly and as a carbon; then carol's has had the
            # same time (it was sent first).
            one.expect(f"bob {tag}")
            carbon = two.expect(rf"<message\b(?:(?!</message>).)*<received xmlns='urn:xmpp:carbons:2'>.*?bob {tag}.*?</message>")
            assert "from='alice@example.test'" in carbon.group(0)
            time.sleep(1)
            one.read_for(0.2), two.read_for(0.2)
            assert f"carol {tag}" not in one.received and f"carol {tag}" not in two.received
        history = archive(two, f"mam-{tag}")
        assert f"bob {tag}" in history, history
        assert f"carol {tag}" not in history, history
        assert not two.closed and "<stream:error" not in two.received
    finally:
        one.close()
        two.close()
    # The audit writer is a task of its own: the archive result's record may still be on its way.
    deadline = time.monotonic() + 10
    while True:
        records = [r for r in audit(gw) if r.get("rule") == "blocked-carol" and r.get("wrapped")]
        wrappers = {r["wrapped"] for r in records if r["from"].startswith("carol@")}
        if {"carbon", "archive-result"} <= wrappers or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {"carbon", "archive-result"} <= wrappers, records


# -- 9. pipelining ------------------------------------------------------------------------------

@pytest.mark.parametrize("listener", ["prosody", "prosody-direct", "ejabberd"])
def test_elements_pipelined_behind_the_header_wait_for_the_features(gw, pki, prosody_h, ejabberd, listener):
    srv = ejabberd if listener == "ejabberd" else prosody_h
    direct = listener == "prosody-direct"
    rs = RawStream.connect(HOST, gw.port(listener), direct_tls=direct, ca_file=pki.ca_cert)
    with rs:
        if not direct:
            rs.start_stream()
            rs.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            rs.expect(r"<proceed\b[^>]*/>")
            rs._wrap_tls()
        blob = base64.b64encode(f"\0alice\0{srv.users['alice']}".encode()).decode()
        # The header and <auth/> in one write, as tsung sends them.
        rs.send(stream_header("example.test").decode() + f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{blob}</auth>")
        rs.expect(r"<stream:features\b.*?</stream:features>")
        rs.expect(r"<success\b")
        # After SASL success: the restarted header and the bind request in one write.
        rs.send(stream_header("example.test").decode() +
                f"<iq type='set' id='b1'><bind xmlns='{NS_BIND}'><resource>pipe</resource></bind></iq>")
        m = rs.expect(r"<jid>([^<]+)</jid>")
        assert m.group(1) == "alice@example.test/pipe"
        ping(rs, "p1")
        assert "<stream:error" not in rs.received


# -- 8. a client that stops reading -------------------------------------------------------------

def test_a_client_that_stops_reading_is_cut_and_counted_as_such(gw, pki, prosody_h):
    before = metric("stanzawall_sessions_closed_total", reason="client-not-reading")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A tiny receive window, set before connect so that it is what the gateway sees.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((HOST, GW_PROSODY))
    bob = RawStream(sock, ca_file=pki.ca_cert)
    offset = len(gw.log())
    with bob, login(gw, pki, "prosody", prosody_h, "alice", "flood") as alice:
        bob.start_stream()
        bob.starttls()
        bob.login("bob", prosody_h.users["bob"], "stalled")
        # bob now reads nothing; alice sends him far more than the socket buffers hold.
        body = "x" * 100_000
        for i in range(150):
            alice.send(f"<message to='bob@example.test/stalled' type='chat'><body>{i} {body}</body></message>")
        gw.wait_log("client stopped reading", timeout=60, after=offset)
        closes = [l for l in gw.log()[offset:].splitlines() if "session closed" in l and "bob@" in l]
        assert len(closes) == 1 and "reason=client stopped reading" in closes[0], closes
        ping(alice, "p1")  # the sender's session is unaffected
    assert metric("stanzawall_sessions_closed_total", reason="client-not-reading") == before + 1
