"""The text the policy reads (issue 18, findings 2 and 4) end to end: every text a client shows
is seen by ``body_contains``, ``body_regex``, ``url_in`` and ``mask``, in whatever form the server
delivers it, and Unicode spellings do not evade keywords.

The servers are part of the problem, so each test runs against both, through a gateway with
the same policy:

- Prosody 0.12 relays a ``<body xmlns='jabber:server'>`` (and subject) to the recipient as it is,
  and keeps elements nested in a body;
- ejabberd 23.01 turns a ``jabber:server`` body or subject into a plain ``jabber:client`` one
  (what every client shows), and drops elements nested in a body but keeps their siblings' text.

Both were checked with raw clients, directly and through a pass-all gateway, before these
assertions were written. Before the fix, the gateway read only ``jabber:client`` bodies,
subjects and status, direct text only, and XHTML-IM links but not its text: every stanza of
``HIDDEN`` below reached bob.

Fixtures and helpers are test_policy.py's (imported, not copied); "never arrived" assertions
use its sentinel pattern: an innocent message sent after the stanzas under test travels the
same ordered path, so once it is seen, any earlier one would have been seen first.
"""

from __future__ import annotations

import pytest

from harness.client import Client, run
from harness.defaults import GATEWAY_TEXT_EJABBERD_PORT, GATEWAY_TEXT_PORT, HOST
from harness.gateway import Gateway, Listener
from test_policy import audit_records, client, explain, send, wait_audit, wait_inbound

XHTML_IM = "http://jabber.org/protocol/xhtml-im"
XHTML = "http://www.w3.org/1999/xhtml"

POLICY = """
[audit]
path = "audit.jsonl"

[list.bad_urls]
entries = ["evil.example"]

[[rule]]
name   = "sender-words"
chain  = "c2s-in"
when   = { body_contains = ["spamword", "casino"] }
action = "drop"

[[rule]]
name   = "sender-links"
chain  = "c2s-in"
when   = { url_in = "bad_urls" }
action = "drop"

[[rule]]
name   = "mask-span"
when   = { body_regex = 'cheap\\s+pills' }
action = "mask"

[[rule]]
name   = "mask-words"
when   = { body_contains = ["heck"] }
action = "mask"
"""

# id -> the message's payload (inside <message to=bob type=chat>). Each one is shown to bob by
# a mainstream client as text containing a keyword or a listed link.
HIDDEN = {
    "srv-body": "<body xmlns='jabber:server'>buy spamword now</body>",
    "srv-subject": "<subject xmlns='jabber:server'>casino</subject><body>hi</body>",
    "nested": "<body>cheap <x xmlns='urn:example:x'>ca</x>sino tonight</body>",
    "xhtml": (f"<body>see formatted</body><html xmlns='{XHTML_IM}'><body xmlns='{XHTML}'>"
              "<p>spam<b>word</b></p></body></html>"),
    "invite-reason": "<x xmlns='jabber:x:conference' jid='room@conference.example.test' reason='casino night'/>",
    "sfs-source": ("<file-sharing xmlns='urn:xmpp:sfs:0'><file xmlns='urn:xmpp:file:metadata:0'>"
                   "<name>invoice.pdf</name></file><sources><url-data xmlns='http://jabber.org/protocol/url-data'"
                   " target='https://evil.example/invoice.pdf'/></sources></file-sharing>"),
    "fullwidth": "<body>ＳＰＡＭＷＯＲＤ</body>",
    "math-bold": "<body>\U0001D41C\U0001D41A\U0001D42C\U0001D422\U0001D427\U0001D428</body>",
    "tags": "<body>spam\U000E0020wo\U000E007Frd</body>",
    "fillers": "<body>ca\u3164si\uFFA0no\uFE0F</body>",
}


@pytest.fixture(scope="module", params=["prosody", "ejabberd"])
def setup(request, tmp, pki):
    """(gateway, server) for each backend, the same policy in front of both."""
    if request.param == "prosody":
        srv = request.getfixturevalue("prosody")
        port, backend = GATEWAY_TEXT_PORT, srv.port
    else:
        srv = request.getfixturevalue("ejabberd")
        port, backend = GATEWAY_TEXT_EJABBERD_PORT, srv.plain_port
    g = Gateway(tmp / f"gw-text-{request.param}", pki.cert, pki.key,
                [Listener("c2s", "c2s", port, backend)], extra_toml=POLICY)
    g.write_config()
    g.start()
    yield g, srv
    assert g.terminate() == 0, f"stanzawall did not exit cleanly; log {g.log_path}"


def test_every_shown_text_is_read(setup, pki):
    gw, srv = setup

    async def go():
        async with client(gw, srv, "alice", pki) as alice, client(gw, srv, "bob", pki) as bob:
            for mid, payload in HIDDEN.items():
                alice.xmpp.send_raw(f"<message to='{bob.jid}' id='{mid}' type='chat'>{payload}</message>")
            send(alice, bob.jid, "sentinel after hidden text", "text-sentinel")
            await wait_inbound(bob, lambda x: 'id="text-sentinel"' in x)
            arrived = [mid for mid in HIDDEN for x in bob.inbound if f'id="{mid}"' in x]
            assert not arrived, f"reached bob: {arrived}"
    run(go())
    recs = wait_audit(gw, lambda r: r.get("id") in HIDDEN, count=len(HIDDEN))
    rules = {r["id"]: r["rule"] for r in recs}
    assert rules == {mid: ("sender-links" if mid == "sfs-source" else "sender-words") for mid in HIDDEN}, rules
    assert all(r["chain"] == "c2s-in" and r["action"] == "drop" for r in recs), recs


def test_a_mask_across_subject_and_body_masks_both(setup, pki):
    gw, srv = setup

    async def go():
        async with client(gw, srv, "alice", pki) as alice, client(gw, srv, "bob", pki) as bob:
            alice.xmpp.send_raw(f"<message to='{bob.jid}' id='span1' type='chat'>"
                                "<subject>Cheap</subject><body>pills, no prescription</body></message>")
            alice.xmpp.send_raw(f"<message to='{bob.jid}' id='srvmask' type='chat'>"
                                "<body xmlns='jabber:server'>oh HECK</body></message>")
            got = await wait_inbound(bob, lambda x: 'id="span1"' in x)
            assert "<subject>*****</subject>" in got and "<body>*****, no prescription</body>" in got, got
            assert "Cheap" not in got and "pills" not in got, got
            got = await wait_inbound(bob, lambda x: 'id="srvmask"' in x)
            assert "oh ****" in got and "HECK" not in got, got
    run(go())
    recs = {r["id"]: r for r in audit_records(gw) if r.get("id") in ("span1", "srvmask")}
    assert recs["span1"]["rule"] == "mask-span" and recs["srvmask"]["rule"] == "mask-words", recs


def test_c2s_out_masks_what_the_server_delivers(setup, pki):
    """dave talks to the server directly: only alice's c2s-out chain sees what he sends her.
    Prosody delivers his jabber:server body as it is; ejabberd as a jabber:client body."""
    gw, srv = setup

    async def go():
        port = getattr(srv, "plain_port", srv.port)  # ejabberd's port without STARTTLS
        dave = Client(srv.jid("dave"), srv.users["dave"], HOST, port, starttls=False,
                      allow_plain_unencrypted=True)
        async with client(gw, srv, "alice", pki) as alice, dave:
            dave.xmpp.send_raw(f"<message to='{alice.jid}' id='out-srv' type='chat'>"
                               "<body xmlns='jabber:server'>what the heck</body>"
                               f"<html xmlns='{XHTML_IM}'><body xmlns='{XHTML}'><p>what the <b>heck</b></p></body></html>"
                               "</message>")
            got = await wait_inbound(alice, lambda x: 'id="out-srv"' in x)
            assert "what the ****" in got and "heck" not in got.lower(), got
            assert XHTML_IM not in got, "the formatted copy is removed"
    run(go())
    (rec,) = wait_audit(gw, lambda r: r.get("id") == "out-srv")
    assert rec["chain"] == "c2s-out" and rec["rule"] == "mask-words"


EXPLAIN_TABLE = [
    ("<message to='bob@example.test'><body>hello</body></message>", None),
    ("<message to='bob@example.test'><body xmlns='jabber:server'>spamword</body></message>", "sender-words"),
    ("<message to='bob@example.test' type='error'><error type='cancel'><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>"
     "casino</text></error></message>", "sender-words"),
    ("<message to='room@conference.example.test'><x xmlns='http://jabber.org/protocol/muc#user'><invite to='bob@example.test'>"
     "<reason>visit evil.example</reason></invite></x></message>", "sender-links"),
    ("<message to='bob@example.test'><body>ｃａｓｉｎｏ</body></message>", "sender-words"),
    ("<message to='bob@example.test'><body>spam\u200bword</body></message>", "sender-words"),
]


@pytest.mark.parametrize("stanza,rule", EXPLAIN_TABLE)
def test_explain_decides_the_text_classes(setup, stanza, rule):
    gw, _ = setup
    out = explain(gw, stanza, "c2s-in", "--user", "alice@example.test")
    assert out.returncode == 0, out.stderr
    if rule is None:
        assert "rule: none matched" in out.stdout and "action: pass" in out.stdout, out.stdout
    else:
        assert f"rule: {rule} (" in out.stdout and "action: drop" in out.stdout, out.stdout
