"""Policy engine (issue 3) end to end: real Prosody (with mod_smacks), real slixmpp clients,
one stanzawall running the issue's example policy (plus a log, a close, a strip, a mask and
a drop rule) with an audit log and the admin endpoint; the list files are real files, so
editing them is the hot-reload test. Tests that change the config or a list file put it back.

Every "nothing arrives" assertion uses a sentinel instead of a sleep: the stanza under test
and then an innocent one travel the same ordered path (client → gateway → Prosody →
gateway → client), so once the sentinel is seen, the earlier stanza would have been seen
first had it been delivered.

Accounts: alice sends, bob receives; carol is the flooder (the rate rule only counts her, so
the other tests never run into the limiter); dave receives carol's burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import subprocess
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.client import Client, ReceivedMessage, run
from harness.defaults import GATEWAY_POLICY_ADMIN, GATEWAY_POLICY_PORT, HOST, PROSODY_SM_PORT
from harness.gateway import Gateway, Listener, binary
from harness.prosody import ProsodyInstance, start_prosody
from harness.raw import RawStream, parse_stream_error

NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_CLIENT = "jabber:client"
NS_SI = "http://jabber.org/protocol/si"
NS_JMI = "urn:xmpp:jingle-message:0"
NS_OOB = "jabber:x:oob"

SPAM_DOMAINS = "# domains whose servers we do not talk to\nspam.example\n"
BAD_URLS = "# links doing the rounds\nevil.example/payload\nphish.example\n"

FAN_OUT_QUOTA = 20

POLICY = f"""
[audit]
path = "audit.jsonl"

[admin]
bind = "{HOST}:{GATEWAY_POLICY_ADMIN}"

[list.spam_domains]
file = "lists/spam-domains.txt"

[list.bad_urls]
file = "lists/bad-urls.txt"

[rate.per_sender]
rate  = "30/minute"
burst = 10
key   = "from.bare"

[[rule]]
name   = "blocked-servers"
chain  = "c2s-out"
when   = {{ from_domain_in = "spam_domains" }}
action = "drop"

[[rule]]
name   = "malicious-links"
when   = {{ kind = "message", url_in = "bad_urls" }}
action = "bounce"
error  = "policy-violation"
text   = "Link blocked by policy"

[[rule]]
name   = "no-file-offers"
when   = {{ payload = ["http://jabber.org/protocol/bytestreams", "http://jabber.org/protocol/si", "jabber:x:oob"] }}
action = "bounce"

# As in the issue, no chain (both), but only for carol so the other tests never meet the limiter.
[[rule]]
name   = "flood"
when   = {{ kind = "message", from = "carol@example.test", rate = "per_sender" }}
action = "bounce"
error  = "resource-constraint"

# Issue 18, finding 5: one bucket per recipient, at most 20 made by one user; only messages
# with the marker are counted, so the other tests never meet it.
[rate.fan_out]
rate  = "1/minute"
burst = 1
key   = "to.bare"
max_keys_per_source = {FAN_OUT_QUOTA}

[[rule]]
name   = "fan-out"
chain  = "c2s-in"
when   = {{ kind = "message", body_contains = "fan-out-probe", rate = "fan_out" }}
action = "drop"

[[rule]]
name     = "watch-keywords"
when     = {{ body_contains = ["confidential", "password:"] }}
action   = "drop"
log_only = true

[[rule]]
name   = "note-auditor"
when   = {{ body_contains = "hello auditor" }}
action = "log"

[[rule]]
name   = "strip-call-offers"
when   = {{ kind = "message", payload = "{NS_JMI}" }}
action = "strip"

[[rule]]
name   = "mask-swears"
when   = {{ body_contains = ["heck", "darn"] }}
action = "mask"

[[rule]]
name   = "close-on-exploit"
chain  = "c2s-in"
when   = {{ body_contains = "exploit-trigger-42" }}
action = "close"
text   = "Exploit attempt"

[[rule]]
name   = "drop-spamword"
chain  = "c2s-in"
when   = {{ body_contains = "spamword" }}
action = "drop"
"""
RULE_COUNT = POLICY.count("[[rule]]")

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prosody_sm(tmp: Path) -> ProsodyInstance:
    inst = start_prosody(tmp / "prosody-sm", port=PROSODY_SM_PORT, extra_modules=["smacks"])
    yield inst
    inst.stop()


@pytest.fixture(scope="module")
def gw(tmp: Path, pki, prosody_sm) -> Gateway:
    g = Gateway(tmp / "gw-policy", pki.cert, pki.key,
                [Listener("c2s", "c2s", GATEWAY_POLICY_PORT, prosody_sm.port)], extra_toml=POLICY)
    lists = g.dir / "lists"
    lists.mkdir(exist_ok=True)
    (lists / "spam-domains.txt").write_text(SPAM_DOMAINS)
    (lists / "bad-urls.txt").write_text(BAD_URLS)
    g.write_config()
    g.start()
    yield g
    assert g.terminate() == 0, f"stanzawall did not exit cleanly; log {g.log_path}"


# -- helpers ------------------------------------------------------------------------------------

def client(gw: Gateway, srv: ProsodyInstance, user: str, pki, *, sm: bool = False) -> Client:
    c = Client(srv.jid(user), srv.users[user], HOST, gw.port("c2s"), ca_file=pki.ca_cert)
    c.inbound: list[str] = []  # every stanza received, serialized, for "never arrived" checks
    c.xmpp.add_filter("in", lambda st: (c.inbound.append(str(st)), st)[1])
    if sm:
        c.xmpp.register_plugin("xep_0198")
        c.sm = c.xmpp.plugin["xep_0198"]
        c.sm_enabled = asyncio.get_running_loop().create_future()
        c.xmpp.add_event_handler(
            "sm_enabled", lambda st: c.sm_enabled.done() or c.sm_enabled.set_result(str(st)))
    return c


def send(c: Client, to: str, body: str | None, mid: str, *, mtype: str = "chat",
         extra: list[str] = ()) -> None:
    m = c.xmpp.make_message(mto=to, mbody=body, mtype=mtype)
    m["id"] = mid
    for x in extra:
        m.xml.append(ET.fromstring(x))
    m.send()


async def next_error(c: Client, timeout: float = 5.0) -> ReceivedMessage:
    async def _next():
        while True:
            m = await c.next_message(timeout=timeout, with_body=False)
            if m.type == "error":
                return m
    return await asyncio.wait_for(_next(), timeout)


async def next_body(c: Client, timeout: float = 5.0) -> ReceivedMessage:
    """Next non-error message with a body."""
    async def _next():
        while True:
            m = await c.next_message(timeout=timeout)
            if m.type != "error":
                return m
    return await asyncio.wait_for(_next(), timeout)


async def wait_inbound(c: Client, pred, timeout: float = 5.0) -> str:
    """First stanza ``c`` received (serialized) that satisfies ``pred``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for x in c.inbound:
            if pred(x):
                return x
        await asyncio.sleep(0.02)
    raise AssertionError(f"no such stanza within {timeout}s; received: {c.inbound}")


def stanza_error(xml: str) -> tuple[str | None, str | None, str | None]:
    """(type, condition, text) of the <error/> in a serialized stanza."""
    el = ET.fromstring(xml)
    err = el.find(f"{{{NS_CLIENT}}}error")
    if err is None:
        err = el.find("error")
    assert err is not None, xml
    cond = next((c.tag.split("}")[1] for c in err if c.tag.startswith(f"{{{NS_STANZAS}}}")
                 and not c.tag.endswith("}text")), None)
    text = err.find(f"{{{NS_STANZAS}}}text")
    return err.get("type"), cond, (text.text if text is not None else None)


def audit_path(gw: Gateway) -> Path:
    return gw.dir / "audit.jsonl"


def audit_records(gw: Gateway) -> list[dict]:
    p = audit_path(gw)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))  # every line must be one JSON object
    return out


def wait_audit(gw: Gateway, pred, count: int = 1, timeout: float = 3.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in audit_records(gw) if pred(r)]
        if len(found) >= count or time.monotonic() >= deadline:
            assert len(found) >= count, (f"{count} audit record(s) expected, found {found};"
                                         f" all:\n{audit_path(gw).read_text() if audit_path(gw).exists() else '(no file)'}")
            return found
        time.sleep(0.05)


def metrics() -> tuple[str, dict[tuple[str, frozenset], float]]:
    with urllib.request.urlopen(f"http://{HOST}:{GATEWAY_POLICY_ADMIN}/metrics", timeout=5) as r:
        assert r.status == 200
        ctype = r.headers.get("Content-Type", "")
        text = r.read().decode()
    # Prometheus text (text/plain; version=0.0.4) or OpenMetrics text: Prometheus scrapes both.
    assert ctype.startswith(("text/plain", "application/openmetrics-text")), ctype
    samples: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$", line)
        assert m, f"not Prometheus text format: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return text, samples


def sample(samples, name: str, **labels) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (other labels, such as a
    listener, are summed over)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def explain(gw: Gateway, stanza: str, chain: str = "c2s-in", *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary()), "explain", "--config", str(gw.config_path), "--chain", chain,
                           *extra], input=stanza, capture_output=True, text=True, timeout=30)


# -- rules of the example -----------------------------------------------------------------------

def test_innocent_messages_arrive_unchanged(gw, prosody_sm, pki):
    bodies = [
        "plain hello",
        "escapes <&> 'single' \"double\" caf\u00e9 \U0001F600 \u202e rtl",
        "  leading and trailing spaces, \ttab and\nnewline  ",
        "links that are fine: https://good.example/evil.example-payload and http://phish.example.org/x",
        "password without the colon, and a long one: " + "x" * 2000,
    ]

    async def go():
        async with client(gw, prosody_sm, "alice", pki) as alice, client(gw, prosody_sm, "bob", pki) as bob:
            for i, b in enumerate(bodies):
                send(alice, bob.jid, b, f"inn{i}")
            got = [await next_body(bob) for _ in bodies]
            assert [m.body for m in got] == bodies
            assert [m.id for m in got] == [f"inn{i}" for i in range(len(bodies))]
            assert not [x for x in alice.inbound if "type=\"error\"" in x or "type='error'" in x]
    run(go())
    ids = {f"inn{i}" for i in range(len(bodies))}
    # The chains' default is pass: no audit record for them.
    assert not [r for r in audit_records(gw) if r.get("id") in ids]


def test_malicious_link_is_bounced_with_the_rule_text(gw, prosody_sm, pki):
    async def go():
        async with client(gw, prosody_sm, "alice", pki) as alice, client(gw, prosody_sm, "bob", pki) as bob:
            send(alice, bob.jid, "look at https://EVIL.example/payload/stage2?x=1", "bad1")
            err = await next_error(alice)
            assert err.id == "bad1"
            assert stanza_error(err.xml) in {("modify", "policy-violation", "Link blocked by policy"),
                                             ("wait", "policy-violation", "Link blocked by policy")}, err.xml
            # A bare host from the list, in an OOB element, is a link too.
            send(alice, bob.jid, "see attachment", "bad2",
                 extra=[f"<x xmlns='{NS_OOB}'><url>http://phish.example/login</url></x>"])
            err = await next_error(alice)
            assert err.id == "bad2" and stanza_error(err.xml)[1:] == ("policy-violation", "Link blocked by policy")
            send(alice, bob.jid, "sentinel after links", "sent1")
            assert (await next_body(bob)).body == "sentinel after links"
            assert not [x for x in bob.inbound if "evil.example" in x.lower() or "phish.example" in x]
    run(go())
    (rec,) = wait_audit(gw, lambda r: r.get("id") == "bad1")
    assert rec["rule"] == "malicious-links" and rec["action"] == "bounce"
    assert rec["chain"] == "c2s-in" and rec["listener"] == "c2s"
    assert rec["log_only"] is False and rec["condition"] == "policy-violation"
    assert rec["user"] == "alice@example.test"
    assert rec["client.ip"] == "127.0.0.1"
    assert str(rec["from"]).startswith("alice@example.test")
    assert str(rec["to"]).startswith("bob@example.test/")
    assert rec["kind"] == "message" and rec["type"] == "chat"
    assert RFC3339_UTC.match(rec["time"]), rec["time"]
    assert "body" not in rec, "include_body defaults to false"
    expected = {"time", "listener", "chain", "client.ip", "user", "from", "to", "kind", "type", "id",
                "rule", "action", "log_only", "condition"}
    assert expected <= set(rec), rec


def test_file_offers_are_bounced(gw, prosody_sm, pki):
    async def go():
        async with client(gw, prosody_sm, "alice", pki) as alice, client(gw, prosody_sm, "bob", pki) as bob:
            alice.send_raw(
                f"<iq type='set' to='{bob.jid}' id='si1'>"
                f"<si xmlns='{NS_SI}' id='s1' profile='http://jabber.org/protocol/si/profile/file-transfer'>"
                "<file xmlns='http://jabber.org/protocol/si/profile/file-transfer' name='a.txt' size='3'/>"
                "</si></iq>")
            reply = await wait_inbound(alice, lambda x: x.startswith("<iq") and 'id="si1"' in x)
            # Had the offer reached bob, his slixmpp would have answered service-unavailable.
            assert 'type="error"' in reply, reply
            assert stanza_error(reply)[1] == "policy-violation", reply
            assert f'from="{bob.jid}"' in reply, f"the error should come from the offer's recipient: {reply}"
            # An OOB file offer in a message with an innocent URL: no-file-offers, not malicious-links.
            send(alice, bob.jid, "here is the file", "oob1",
                 extra=[f"<x xmlns='{NS_OOB}'><url>https://files.example/report.pdf</url></x>"])
            err = await next_error(alice)
            assert err.id == "oob1" and stanza_error(err.xml)[1] == "policy-violation", err.xml
            send(alice, bob.jid, "sentinel after offers", "sent2")
            assert (await next_body(bob)).body == "sentinel after offers"
            assert not [x for x in bob.inbound if NS_SI in x or NS_OOB in x or "files.example" in x]
    run(go())
    recs = wait_audit(gw, lambda r: r.get("id") in ("si1", "oob1"), count=2)
    assert {(r["id"], r["rule"], r["action"], r["kind"]) for r in recs} == {
        ("si1", "no-file-offers", "bounce", "iq"), ("oob1", "no-file-offers", "bounce", "message")}


def test_stripped_call_offer_arrives_without_the_stripped_child(gw, prosody_sm, pki):
    async def go():
        async with client(gw, prosody_sm, "alice", pki) as alice, client(gw, prosody_sm, "bob", pki) as bob:
            send(alice, bob.jid, "calling you", "jmi1", extra=[
                f"<propose xmlns='{NS_JMI}' id='call1'>"
                "<description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/></propose>",
                "<keep xmlns='urn:example:keep'>stays</keep>"])
            got = await next_body(bob)
            assert got.id == "jmi1" and got.body == "calling you"
            assert NS_JMI not in got.xml and "propose" not in got.xml, got.xml
            assert "urn:example:keep" in got.xml and "stays" in got.xml, got.xml
            assert not [x for x in alice.inbound if "jmi1" in x], "no error to the sender of a strip"
    run(go())
    recs = wait_audit(gw, lambda r: r.get("id") == "jmi1")
    assert recs[0]["rule"] == "strip-call-offers" and recs[0]["action"] == "strip"
    assert recs[0]["condition"] is None


def test_masked_words_arrive_masked(gw, prosody_sm, pki):
    async def go():
        async with client(gw, prosody_sm, "alice", pki) as alice, client(gw, prosody_sm, "bob", pki) as bob:
            send(alice, bob.jid, "What the HECK, darn it! Clean words stay.", "mask1")
            got = await next_body(bob)
            assert got.id == "mask1"
            assert got.body == "What the ****, **** it! Clean words stay.", got.body
    run(go())
    recs = wait_audit(gw, lambda r: r.get("id") == "mask1")
    assert recs[0]["rule"] == "mask-swears" and recs[0]["action"] == "mask"


def test_strip_and_mask_apply_on_c2s_out_too(gw, prosody_sm, pki):
    """dave talks to Prosody directly: only alice's c2s-out chain sees what he sends her."""
    async def go():
        dave = Client(prosody_sm.jid("dave"), prosody_sm.users["dave"], HOST, prosody_sm.port,
                      starttls=False, allow_plain_unencrypted=True)
        async with client(gw, prosody_sm, "alice", pki) as alice, dave:
            send(dave, alice.jid, "ring ring", "out-jmi", extra=[f"<propose xmlns='{NS_JMI}' id='c2'/>"])
            send(dave, alice.jid, "oh darn", "out-mask")
            got = [await next_body(alice) for _ in range(2)]
            assert [(m.id, m.body) for m in got] == [("out-jmi", "ring ring"), ("out-mask", "oh ****")], got
            assert NS_JMI not in got[0].xml, got[0].xml
    run(go())
    recs = wait_audit(gw, lambda r: r.get("id") in ("out-jmi", "out-mask"), count=2)
    assert {(r["id"], r["chain"], r["rule"]) for r in recs} == {
        ("out-jmi", "c2s-out", "strip-call-offers"), ("out-mask", "c2s-out", "mask-swears")}


def test_blocked_server_stanzas_never_reach_the_client(gw, prosody_sm, pki):
    """s2s is off in the test Prosody: a message to another domain comes back as an error
    *from that domain* (c2s-out). From spam.example it is dropped; from other.example it
    arrives."""
    async def go():
        async with client(gw, prosody_sm, "alice", pki) as alice:
            send(alice, "someone@spam.example", "hi spammer", "spam1")
            send(alice, "someone@other.example", "hi other", "other1")
            err = await next_error(alice)
            assert err.id == "other1" and err.from_.endswith("other.example"), err.xml
            assert not [x for x in alice.inbound if "spam.example" in x], alice.inbound
    run(go())
    recs = wait_audit(gw, lambda r: r.get("rule") == "blocked-servers" and r.get("id") == "spam1")
    r = recs[0]
    assert r["chain"] == "c2s-out" and r["action"] == "drop" and r["condition"] is None
    assert r["user"] == "alice@example.test" and str(r["from"]).endswith("spam.example")


def test_eleventh_message_of_a_burst_gets_resource_constraint(gw, prosody_sm, pki):
    """The rule has no chain, so it is evaluated when carol sends (c2s-in, her session) and when
    dave receives (c2s-out, his session); a message is still one message of carol's burst:
    the first 10 reach dave, the 11th and 12th are bounced to carol."""
    async def go():
        async with client(gw, prosody_sm, "carol", pki) as carol, client(gw, prosody_sm, "dave", pki) as dave:
            for i in range(12):
                send(carol, dave.jid, f"burst {i}", f"burst{i}")
            delivered, errors = [], []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and (len(delivered) < 10 or len(errors) < 2):
                await asyncio.sleep(0.05)
                while not dave.messages.empty():
                    delivered.append(dave.messages.get_nowait())
                while not carol.messages.empty():
                    errors.append(carol.messages.get_nowait())
            await asyncio.sleep(0.3)  # nothing more may come
            delivered += [dave.messages.get_nowait() for _ in range(dave.messages.qsize())]
            errors += [carol.messages.get_nowait() for _ in range(carol.messages.qsize())]
            summary = (f"dave got {[m.body for m in delivered]}; carol got errors for"
                       f" {[(e.id, stanza_error(e.xml)[1]) for e in errors]}")
            assert [m.body for m in delivered] == [f"burst {i}" for i in range(10)], summary
            assert [e.id for e in errors] == ["burst10", "burst11"], summary
            for e in errors:
                assert stanza_error(e.xml)[:2] == ("wait", "resource-constraint"), e.xml
    run(go())
    recs = wait_audit(gw, lambda r: r.get("rule") == "flood", count=2)
    assert {r["id"] for r in recs} == {"burst10", "burst11"}
    assert all(r["condition"] == "resource-constraint" and r["action"] == "bounce" for r in recs)


def test_one_users_fan_out_buckets_do_not_crowd_out_another_user(gw, prosody_sm, pki):
    """Issue 18, finding 5: dave writes to 5,000 distinct (nonexistent) recipients under a
    `to.bare` limiter; each recipient is a new bucket charged to dave. Past his quota of 20
    busy buckets his messages to new recipients are over the limit (dropped), and the table
    holds no more of his; alice's messages to new recipients, after his flood, still pass."""
    n = 5000

    async def go():
        async with client(gw, prosody_sm, "dave", pki) as dave, client(gw, prosody_sm, "alice", pki) as alice, \
                client(gw, prosody_sm, "bob", pki) as bob:
            for i in range(n):
                send(dave, f"fan{i}@example.test", "fan-out-probe", f"fan{i}")
            # Ordered path: once dave's sentinel reaches bob, all his probes were decided.
            send(dave, bob.jid, "fan-out sentinel dave", "fan-sent-dave")
            assert (await next_body(bob, timeout=60)).body == "fan-out sentinel dave"
            for i in range(10):
                send(alice, f"friend{i}@example.test", "fan-out-probe", f"afan{i}")
            send(alice, bob.jid, "fan-out sentinel alice", "fan-sent-alice")
            assert (await next_body(bob)).body == "fan-out sentinel alice"
            # They reached the server, which answers for accounts it does not have.
            errors = [await next_error(alice) for _ in range(10)]
            assert sorted(e.id for e in errors) == sorted(f"afan{i}" for i in range(10))
            assert {stanza_error(e.xml)[1] for e in errors} == {"service-unavailable"}, errors[0].xml
    run(go())
    recs = wait_audit(gw, lambda r: r.get("rule") == "fan-out", count=n - FAN_OUT_QUOTA, timeout=20)
    dropped = {r["id"] for r in recs}
    assert all(r["action"] == "drop" and r["user"] == "dave@example.test" for r in recs), recs[:3]
    # Buckets stay busy for a minute: exactly his first 20 recipients were admitted.
    assert dropped == {f"fan{i}" for i in range(FAN_OUT_QUOTA, n)}, sorted(dropped - {f"fan{i}" for i in range(n)})[:5]


def test_log_only_and_log_rules_pass_traffic_and_write_audit_lines(gw, prosody_sm, pki):
    async def go():
        async with client(gw, prosody_sm, "alice", pki) as alice, client(gw, prosody_sm, "bob", pki) as bob:
            send(alice, bob.jid, "the password: hunter2 is CONFIDENTIAL", "watch1")
            send(alice, bob.jid, "hello auditor, nothing to see", "log1")
            got = [await next_body(bob) for _ in range(2)]
            assert [m.body for m in got] == ["the password: hunter2 is CONFIDENTIAL", "hello auditor, nothing to see"]
            assert not [x for x in alice.inbound if "type=\"error\"" in x]
    run(go())
    # No chain on the rule: it sees the stanza leaving alice (c2s-in) and reaching bob (c2s-out).
    recs = wait_audit(gw, lambda r: r.get("id") == "watch1", count=2)
    by_chain = {r["chain"]: r for r in recs}
    assert set(by_chain) == {"c2s-in", "c2s-out"}, recs
    assert len(recs) == 2, recs
    for r in recs:
        assert r["rule"] == "watch-keywords" and r["action"] == "drop" and r["log_only"] is True, r
        assert r["condition"] is None and "body" not in r
    assert by_chain["c2s-in"]["user"] == "alice@example.test"
    assert by_chain["c2s-out"]["user"] == "bob@example.test"
    recs = wait_audit(gw, lambda r: r.get("id") == "log1", count=2)
    assert all(r["rule"] == "note-auditor" and r["action"] == "log" and r["log_only"] is False for r in recs)


def test_close_rule_ends_the_stream_with_a_stream_error(gw, prosody_sm, pki):
    async def go():
        async with client(gw, prosody_sm, "bob", pki) as bob:
            s = await asyncio.to_thread(RawStream.open, HOST, gw.port("c2s"), ca_file=pki.ca_cert)
            await asyncio.to_thread(s.login, "alice", prosody_sm.users["alice"])
            s.send(f"<message to='{bob.jid}' id='close0'><body>before the exploit</body></message>"
                   f"<message to='{bob.jid}' id='close1'><body>EXPLOIT-TRIGGER-42</body></message>")
            text = await asyncio.to_thread(s.read_until_closed, 10)
            assert parse_stream_error(text) == "policy-violation", text
            assert "Exploit attempt" in text, text
            assert (await next_body(bob)).body == "before the exploit"
            # bob's own traffic still flows; the exploit never reached him.
            await bob.get_roster()
            assert not [x for x in bob.inbound if "TRIGGER-42" in x.upper()]
    run(go())
    (rec,) = wait_audit(gw, lambda r: r.get("id") == "close1")
    assert rec["rule"] == "close-on-exploit" and rec["action"] == "close"
    assert rec["condition"] == "policy-violation"


def test_no_bounce_in_reply_to_an_error_or_an_iq_result(gw, prosody_sm, pki):
    """RFC 6120 §8.3.1: never an error for an error (or for an iq result) — they are dropped."""
    async def go():
        async with client(gw, prosody_sm, "alice", pki) as alice, client(gw, prosody_sm, "bob", pki) as bob:
            alice.send_raw(f"<message type='error' to='{bob.jid}' id='errbad'><body>http://evil.example/payload"
                           "</body><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                           "</error></message>")
            alice.send_raw(f"<iq type='result' to='{bob.jid}' id='resbad'><si xmlns='{NS_SI}' id='x'/></iq>")
            send(alice, bob.jid, "sentinel after errors", "sent3")
            assert (await next_body(bob)).body == "sentinel after errors"
            await alice.get_roster()  # a round trip: anything the gateway sent alice is in by now
            assert not [x for x in alice.inbound if "errbad" in x or "resbad" in x], alice.inbound
            assert not [x for x in bob.inbound if "errbad" in x or "resbad" in x], bob.inbound
    run(go())


def test_include_body_puts_bodies_in_the_audit_log(gw, prosody_sm, pki):
    good = gw.config_text()
    mark = len(gw.log())
    gw.write_config(good.replace('[audit]\npath = "audit.jsonl"', '[audit]\npath = "audit.jsonl"\ninclude_body = true'))
    try:
        gw.reload()
        gw.wait_log("configuration reloaded", after=mark)

        async def go():
            async with client(gw, prosody_sm, "alice", pki) as alice, client(gw, prosody_sm, "bob", pki) as bob:
                send(alice, bob.jid, "confidential: with body", "body1")
                assert (await next_body(bob)).body == "confidential: with body"
        run(go())
        recs = wait_audit(gw, lambda r: r.get("id") == "body1", count=2)
        assert all(r.get("body") == "confidential: with body" for r in recs), recs
    finally:
        mark = len(gw.log())
        gw.write_config(good)
        gw.reload()
        gw.wait_log("configuration reloaded", after=mark)


# -- hot reload ---------------------------------------------------------------------------------

async def _blocked_within(alice: Client, bob: Client, url: str, tag: str, edit) -> float:
    """Send ``url`` until it is bounced, after calling ``edit()``; seconds from the edit to the
    first message that was bounced (sent, not answered)."""
    send(alice, bob.jid, f"before: {url}", f"{tag}0")
    assert (await next_body(bob)).body == f"before: {url}"
    edited = time.monotonic()
    edit()
    i = 0
    while time.monotonic() - edited < 4.0:
        i += 1
        sent = time.monotonic()
        send(alice, bob.jid, f"try {i}: {url}", f"{tag}{i}")
        done, pending = await asyncio.wait(
            [asyncio.create_task(next_error(alice, 2)), asyncio.create_task(next_body(bob, 2))],
            return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        m = done.pop().result()
        if m.type == "error":
            assert m.id == f"{tag}{i}"
            assert stanza_error(m.xml)[1:] == ("policy-violation", "Link blocked by policy")
            return sent - edited
        await asyncio.sleep(0.1)
    raise AssertionError(f"the new list entry for {url} never took effect")


def test_list_file_edit_blocks_a_new_url_within_two_seconds(gw, prosody_sm, pki):
    lists = gw.dir / "lists" / "bad-urls.txt"

    def append():
        with lists.open("a") as f:
            f.write("fresh-malware.example\n")

    def replace():  # how sed -i, editors and config management write: a new file renamed over
        tmp = lists.with_suffix(".tmp")
        tmp.write_text(lists.read_text() + "second-wave.example/x\n")
        os.replace(tmp, lists)

    async def go():
        async with client(gw, prosody_sm, "alice", pki) as alice, client(gw, prosody_sm, "bob", pki) as bob:
            took = await _blocked_within(alice, bob, "https://fresh-malware.example/dropper.exe", "fresh", append)
            assert took <= 2.0, f"appending took {took:.2f}s"
            took = await _blocked_within(alice, bob, "http://second-wave.example/x/y", "wave", replace)
            assert took <= 2.0, f"replacing the file took {took:.2f}s"
            # Same sessions, no reconnect.
            assert alice.connected and bob.connected and not alice.stream_errors
    run(go())


def test_sighup_with_an_invalid_rule_keeps_the_old_policy(gw, prosody_sm, pki):
    good = gw.config_text()
    bad = good + '\n[[rule]]\nname = "broken"\nwhen = { body_regex = "(unclosed" }\naction = "drop"\n'

    async def go():
        async with client(gw, prosody_sm, "alice", pki) as alice, client(gw, prosody_sm, "bob", pki) as bob:
            mark = len(gw.log())
            gw.write_config(bad)
            try:
                gw.reload()
                gw.wait_log("reload failed", after=mark)
            finally:
                gw.write_config(good)
            assert "bad regex" in gw.log()[mark:], gw.log()[mark:]
            send(alice, bob.jid, "still blocked: http://evil.example/payload", "hup1")
            err = await next_error(alice)
            assert err.id == "hup1" and stanza_error(err.xml)[1:] == ("policy-violation", "Link blocked by policy")
            send(alice, bob.jid, "still masked: heck", "hup2")
            assert (await next_body(bob)).body == "still masked: ****"
    run(go())


def test_invalid_list_file_edit_keeps_the_old_list(gw, prosody_sm, pki):
    lists = gw.dir / "lists" / "spam-domains.txt"

    async def go():
        async with client(gw, prosody_sm, "alice", pki) as alice:
            mark = len(gw.log())
            lists.write_text(SPAM_DOMAINS + "not a domain!\n")
            try:
                gw.wait_log("reload failed", after=mark, timeout=5)
                assert "spam-domains.txt:3" in gw.log()[mark:], gw.log()[mark:]
                # Old list still in force, in the same session.
                send(alice, "someone@spam.example", "still blocked?", "inv1")
                send(alice, "someone@other.example", "sentinel", "inv2")
                err = await next_error(alice)
                assert err.id == "inv2", err.xml
            finally:
                mark = len(gw.log())
                lists.write_text(SPAM_DOMAINS + "spam2.example\n")
            gw.wait_log("configuration reloaded", after=mark, timeout=5)
            # The corrected file is picked up.
            send(alice, "someone@spam2.example", "now blocked", "inv3")
            send(alice, "someone@other.example", "sentinel", "inv4")
            err = await next_error(alice)
            assert err.id == "inv4", err.xml
            assert not [x for x in alice.inbound if "inv1" in x or "inv3" in x]
    run(go())


def test_sighup_with_a_new_rule_applies_to_open_sessions(gw, prosody_sm, pki):
    good = gw.config_text()
    extra = '\n[[rule]]\nname = "newly-banned"\nchain = "c2s-in"\nwhen = { body_contains = "zebra" }\naction = "drop"\n'

    async def go():
        async with client(gw, prosody_sm, "alice", pki) as alice, client(gw, prosody_sm, "bob", pki) as bob:
            send(alice, bob.jid, "zebra before", "zeb0")
            assert (await next_body(bob)).body == "zebra before"
            mark = len(gw.log())
            gw.write_config(good + extra)
            try:
                gw.reload()
                gw.wait_log("configuration reloaded", after=mark)
                send(alice, bob.jid, "zebra after", "zeb1")
                send(alice, bob.jid, "sentinel after the new rule", "zeb2")
                assert (await next_body(bob)).body == "sentinel after the new rule"
                assert not [x for x in bob.inbound if "zebra after" in x]
            finally:
                mark = len(gw.log())
                gw.write_config(good)
                gw.reload()
                gw.wait_log("configuration reloaded", after=mark)
    run(go())
    (rec,) = wait_audit(gw, lambda r: r.get("id") == "zeb1")
    assert rec["rule"] == "newly-banned"


# -- explain and check ----------------------------------------------------------------------------

def test_explain_names_rule_action_and_rewrite(gw):
    user = ("--user", "alice@example.test/explain", "--source-ip", "192.0.2.7")
    r = explain(gw, "<message to='bob@example.test' type='chat' id='e1'>"
                    "<body>get it at http://evil.example/payload</body></message>", "c2s-in", *user)
    assert r.returncode == 0, r.stderr
    assert "malicious-links" in r.stdout and "bounce" in r.stdout, r.stdout

    r = explain(gw, "<message to='bob@example.test' type='chat' id='e2'>"
                    "<body>What the HECK, darn it</body></message>", "c2s-in", *user)
    assert r.returncode == 0, r.stderr
    assert "mask-swears" in r.stdout and "mask" in r.stdout, r.stdout
    assert "What the ****, **** it" in r.stdout, r.stdout
    assert "<message" in r.stdout

    r = explain(gw, f"<message to='bob@example.test' type='chat' id='e3'><body>ring</body>"
                    f"<propose xmlns='{NS_JMI}' id='c'/></message>", "c2s-in", *user)
    assert r.returncode == 0, r.stderr
    assert "strip-call-offers" in r.stdout and "strip" in r.stdout, r.stdout
    # The rewritten stanza is printed after the stanza as given.
    rewritten = r.stdout[r.stdout.rindex("<message"):]
    assert "ring" in rewritten and "propose" not in rewritten, r.stdout

    r = explain(gw, "<message from='x@spam.example' to='alice@example.test/explain' type='chat'>"
                    "<body>buy</body></message>", "c2s-out", *user)
    assert r.returncode == 0, r.stderr
    assert "blocked-servers" in r.stdout and "drop" in r.stdout, r.stdout

    r = explain(gw, "<message to='bob@example.test' type='chat' id='e5'><body>top confidential</body></message>",
                "c2s-in", *user)
    assert r.returncode == 0, r.stderr
    assert "watch-keywords" in r.stdout and "drop" in r.stdout, r.stdout

    r = explain(gw, "<message to='bob@example.test' type='chat' id='e4'><body>hi bob</body></message>",
                "c2s-in", *user)
    assert r.returncode == 0, r.stderr
    assert "default" in r.stdout.lower() and "pass" in r.stdout, r.stdout
    for name in ("malicious-links", "mask-swears", "no-file-offers", "flood"):
        assert name not in r.stdout, r.stdout


@pytest.mark.parametrize("when, key, message", [
    ('{ body_regex = "(unclosed" }', "body_regex", "bad regex '(unclosed'"),
    ('{ url_in = "no_such_list" }', "url_in", "unknown list 'no_such_list'"),
    ('{ from = "bob*@example.test" }', "from", ""),
])
def test_check_reports_file_line_key(gw, when, key, message):
    text = gw.config_text() + f'\n[[rule]]\nname = "bad"\nwhen = {when}\naction = "drop"\n'
    path = gw.dir / f"check-{key}.toml"  # beside the real config: certificates and lists resolve
    path.write_text(text)
    line = text.splitlines().index(f"when = {when}") + 1
    r = subprocess.run([str(binary()), "check", "--config", str(path)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1, (r.stdout, r.stderr)
    prefix = f"{path}:{line}: rule[{RULE_COUNT}].when.{key}: "
    assert r.stderr.startswith(prefix), f"expected {prefix!r}...; got {r.stderr!r}"
    assert message in r.stderr, r.stderr
    # The real config is fine.
    ok = subprocess.run([str(binary()), "check", "--config", str(gw.config_path)], capture_output=True,
                        text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr


# -- metrics ---------------------------------------------------------------------------------------

def test_metrics_count_sessions_stanzas_and_verdicts(gw, prosody_sm, pki):
    _, before = metrics()

    async def go():
        async with client(gw, prosody_sm, "alice", pki) as alice, client(gw, prosody_sm, "bob", pki) as bob:
            send(alice, bob.jid, "spamword one", "met1")
            send(alice, bob.jid, "spamword two", "met2")
            send(alice, bob.jid, "metrics sentinel", "met3")
            assert (await next_body(bob)).body == "metrics sentinel"
            text, during = metrics()
            assert sample(during, "stanzawall_sessions") >= 2, text
            return text, during
    text, during = run(go())
    assert "# TYPE stanzawall_sessions gauge" in text, text
    for name in ("stanzawall_stanzas_total", "stanzawall_policy_verdicts_total", "stanzawall_bytes_total",
                 "stanzawall_connections_refused_total"):
        # OpenMetrics names the counter family without the _total suffix of its samples.
        base = name.removesuffix("_total")
        assert re.search(rf"^# TYPE {base}(_total)? counter$", text, re.M), f"{name} missing:\n{text}"
    drop = dict(rule="drop-spamword", action="drop", log_only="false")
    assert sample(during, "stanzawall_policy_verdicts_total", **drop) \
        - sample(before, "stanzawall_policy_verdicts_total", **drop) == 2, text
    for chain, least in (("c2s-in", 3), ("c2s-out", 1)):
        delta = (sample(during, "stanzawall_stanzas_total", chain=chain)
                 - sample(before, "stanzawall_stanzas_total", chain=chain))
        assert delta >= least, (chain, delta, text)
    assert any(n == "stanzawall_bytes_total" and v > 0 for (n, _), v in during.items()), text
    assert any(n == "stanzawall_bytes_total" and dict(ls).get("direction") for (n, ls) in during), text
    assert any(n == "stanzawall_connections_refused_total" and dict(ls).get("reason") for (n, ls) in during), text
    # log_only verdicts are counted apart from enforced ones.
    shadow = [k for k in during if k[0] == "stanzawall_policy_verdicts_total"
              and ("rule", "watch-keywords") in k[1]]
    assert all(("log_only", "true") in k[1] for k in shadow), shadow


# -- XEP-0198 ----------------------------------------------------------------------------------

class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(record.getMessage())


def _prosody_complaints(prosody_sm: ProsodyInstance, mark: int) -> list[str]:
    text = prosody_sm.log_path.read_text(errors="replace")[mark:]
    words = re.compile(r"handled|unacked|smacks|resum|h too high|\back\b|sequence", re.I)
    return [l for l in text.splitlines()
            if re.search(r"\t(warn|error)\t", l) and words.search(l)]

@contextlib.contextmanager
def sm_quiet(prosody_sm: ProsodyInstance, pmark: int):
    """Around a stream-management scenario: afterwards neither slixmpp's SM plugin (warnings such
    as 'h too high' or resends) nor Prosody's log since `pmark` may have complained."""
    sm_log = _Records()
    logger = logging.getLogger("slixmpp.plugins.xep_0198.stream_management")
    logger.addHandler(sm_log)
    try:
        yield
    finally:
        logger.removeHandler(sm_log)
    assert not sm_log.records, sm_log.records
    assert not _prosody_complaints(prosody_sm, pmark)



async def _settle_acks(*clients: Client, timeout: float = 5.0) -> None:
    """Ask the server for an ack on each client until it has acknowledged everything sent."""
    deadline = time.monotonic() + timeout
    for c in clients:
        c.sm.request_ack()
    while time.monotonic() < deadline:
        if all(c.sm.last_ack == c.sm.seq and not c.sm.unacked_queue for c in clients):
            return
        await asyncio.sleep(0.1)
        for c in clients:
            if c.sm.last_ack != c.sm.seq:
                c.sm.request_ack()
    raise AssertionError("acks do not match: " + ", ".join(
        f"{c.requested_jid}: seq={c.sm.seq} last_ack={c.sm.last_ack} unacked={len(c.sm.unacked_queue)}"
        for c in clients))


def _session_queue_state(prosody_sm: ProsodyInstance, mark: int, user: str) -> str | None:
    """The last '#queue = N' Prosody logged for ``user``'s session(s) after ``mark``."""
    text = prosody_sm.log_path.read_text(errors="replace")[mark:]
    ids = set(re.findall(rf"(c2s\w+)\s+\w+\s+.*{re.escape(user)}", text))
    last = None
    for line in text.splitlines():
        m = re.search(r"(c2s\w+)\s+debug\s+#queue = (\d+)", line)
        if m and m.group(1) in ids:
            last = m.group(2)
    return last


def test_sm_five_of_twenty_dropped_acks_stay_consistent(gw, prosody_sm, pki):
    pmark = len(prosody_sm.log_path.read_text(errors="replace"))
    gmark = len(gw.log())

    async def go():
        alice = client(gw, prosody_sm, "alice", pki, sm=True)
        bob = client(gw, prosody_sm, "bob", pki, sm=True)
        async with alice, bob:
            for c in (alice, bob):
                enabled = await asyncio.wait_for(c.sm_enabled, 5)
                assert "resume" not in enabled, f"resumption must be off through the gateway: {enabled}"
            bodies = [f"sm {i} " + ("spamword" if i % 4 == 1 else "innocent") for i in range(20)]
            for i, b in enumerate(bodies):
                send(alice, bob.jid, b, f"sm{i}")
            innocent = [b for b in bodies if "spamword" not in b]
            assert len(innocent) == 15
            got = [await next_body(bob, 10) for _ in innocent]
            assert [m.body for m in got] == innocent
            assert alice.sm.seq >= 20
            await _settle_acks(alice, bob)
            # bob acknowledges what he handled; the server must accept it (no 'h too high').
            bob.sm.send_ack()
            alice.sm.send_ack()
            await asyncio.sleep(0.5)
            # Still up, both ways, and nothing was sent twice.
            await alice.get_roster()
            await bob.get_roster()
            send(alice, bob.jid, "sm sentinel", "smend")
            assert (await next_body(bob)).body == "sm sentinel"
            await _settle_acks(alice, bob)
            with pytest.raises(asyncio.TimeoutError):
                await next_body(bob, 0.5)
            assert not alice.stream_errors and not bob.stream_errors
            assert alice.connected and bob.connected
            assert sum("sm " in x and "spamword" in x for x in bob.inbound) == 0
            # Prosody's own view: nothing it sent is left unacknowledged.
            assert _session_queue_state(prosody_sm, pmark, "alice@example.test") == "0"
            assert _session_queue_state(prosody_sm, pmark, "bob@example.test") == "0"
    with sm_quiet(prosody_sm, pmark):
        run(go())
    bad = [l for l in gw.log()[gmark:].splitlines() if "stream error" in l or "failed" in l]
    assert not bad, bad
    drops = wait_audit(gw, lambda r: r.get("rule") == "drop-spamword" and str(r.get("id")).startswith("sm"),
                       count=5)
    assert sorted(r["id"] for r in drops) == sorted(f"sm{i}" for i in range(20) if i % 4 == 1)


def test_sm_bounce_and_server_side_drop_keep_acks_consistent(gw, prosody_sm, pki):
    """The gateway injects an error toward alice (bounce) and drops one stanza the server sent
    her (blocked-servers, c2s-out): her <a h='…'/> toward the server and the server's toward
    her must both be rewritten."""
    pmark = len(prosody_sm.log_path.read_text(errors="replace"))

    async def go():
        alice = client(gw, prosody_sm, "alice", pki, sm=True)
        bob = client(gw, prosody_sm, "bob", pki, sm=True)
        async with alice, bob:
            await asyncio.wait_for(alice.sm_enabled, 5)
            await asyncio.wait_for(bob.sm_enabled, 5)
            for round_ in range(3):
                send(alice, bob.jid, f"r{round_} http://evil.example/payload", f"smb{round_}")   # bounced
                send(alice, f"x{round_}@spam.example", "to a blocked server", f"sms{round_}")    # error dropped
                send(alice, bob.jid, f"r{round_} spamword", f"smd{round_}")                      # dropped
                send(alice, f"y{round_}@other.example", "to another server", f"smo{round_}")    # error arrives
                send(alice, bob.jid, f"r{round_} fine", f"smf{round_}")
                err = await next_error(alice)
                assert err.id == f"smb{round_}", err.xml
                err = await next_error(alice)
                assert err.id == f"smo{round_}", err.xml
                assert (await next_body(bob)).body == f"r{round_} fine"
                # alice tells the server what she handled, including the injected error and
                # excluding the dropped one.
                alice.sm.send_ack()
                await _settle_acks(alice, bob)
            await asyncio.sleep(0.5)
            await alice.get_roster()
            assert not alice.stream_errors and alice.connected, alice.stream_errors
            assert not [x for x in alice.inbound if "spam.example" in x]
            assert _session_queue_state(prosody_sm, pmark, "alice@example.test") == "0", \
                "the server still waits for acks of stanzas the gateway dropped"
    with sm_quiet(prosody_sm, pmark):
        run(go())


def test_sm_bounce_of_a_server_stanza_keeps_acks_consistent(gw, prosody_sm, pki):
    """c2s-out bounce: a message *to* alice carrying a listed link is answered by the gateway
    with an error toward the server, inside alice's stream. The server counts a stanza alice
    never sent, and alice never sees the one it sent her: both acks must be rewritten."""
    pmark = len(prosody_sm.log_path.read_text(errors="replace"))

    async def go():
        alice = client(gw, prosody_sm, "alice", pki, sm=True)
        # dave talks to Prosody directly, so only alice's c2s-out chain sees his messages.
        dave = Client(prosody_sm.jid("dave"), prosody_sm.users["dave"], HOST, prosody_sm.port,
                      starttls=False, allow_plain_unencrypted=True)
        async with alice, dave:
            await asyncio.wait_for(alice.sm_enabled, 5)
            for i in range(3):
                send(dave, alice.jid, f"d{i} https://phish.example/login", f"out-bad{i}")
                send(dave, alice.jid, f"d{i} fine", f"out-ok{i}")
                err = await next_error(dave)
                assert err.id == f"out-bad{i}", err.xml
                assert stanza_error(err.xml)[1:] == ("policy-violation", "Link blocked by policy"), err.xml
                assert (await next_body(alice)).body == f"d{i} fine"
                alice.sm.send_ack()
                await _settle_acks(alice)
            await asyncio.sleep(0.5)
            await alice.get_roster()
            assert not alice.stream_errors and alice.connected, alice.stream_errors
            assert not [x for x in alice.inbound if "phish.example" in x]
            assert _session_queue_state(prosody_sm, pmark, "alice@example.test") == "0", \
                "the server still waits for acks of stanzas the gateway bounced"
    with sm_quiet(prosody_sm, pmark):
        run(go())
    recs = wait_audit(gw, lambda r: str(r.get("id")).startswith("out-bad"), count=3)
    assert all(r["chain"] == "c2s-out" and r["rule"] == "malicious-links" and r["user"] == "alice@example.test"
               for r in recs), recs


def test_sm_resume_is_answered_with_failed(gw, prosody_sm, pki):
    """Resumption is off through the gateway, so a client's <resume/> (XEP-0198 §5: after
    authentication, before binding) must get <failed/>, after which the client binds a new
    session (§5: 'the client can then bind a resource') — not a stream error."""
    def go():
        s = RawStream.open(HOST, gw.port("c2s"), ca_file=pki.ca_cert)
        try:
            s.auth_plain("alice", prosody_sm.users["alice"])
            s.start_stream()
            s.send("<resume xmlns='urn:xmpp:sm:3' previd='stale-from-before-the-gateway' h='3'/>")
            reply = s.expect(r"<failed\b[^>]*urn:xmpp:sm:3.*?(?:/>|</failed>)|<stream:error>.*?</stream:error>")
            assert reply.group(0).startswith("<failed"), reply.group(0)
            assert s.bind().startswith("alice@example.test/")
            s.send("<enable xmlns='urn:xmpp:sm:3'/>")
            s.expect(r"<enabled\b")
        finally:
            s.close()
    go()
