"""Anti-spam (issue 12) end to end: a private Prosody (with mod_blocklist, XEP-0191), real
slixmpp clients, one stanzawall with anti-spam rules, its audit log and /metrics.

What is shown, each through the gateway's normal stanza path:

* strangers: bob's roster is learned from the roster result and pushes his session relays (a
  client's versioned roster request is answered in full while the gateway lacks the roster); a
  stranger's message to bob is bounced while a contact's arrives, also while bob is offline,
  and a roster change (bob subscribes to carol) takes effect at once;
* fan-out: a sender writing to 25 distinct recipients is cut at the 21st;
* a wave: three accounts send variants of one text (names, numbers, URL paths, spacing, a
  look-alike letter) — the third copy and every later one are dropped, the audit log has the
  wave with a sample, the metrics count it, `stanzawall explain` names it;
* a XEP-0377 report sent with slixmpp's plugin is recorded, counted, and the threshold rule
  applies to the reported account.

The rules are scoped (`to = bob`, `from = dave`, …) so the tests do not meet each other's
rules; they run in file order (the report test last: it makes carol a reported account).
Every "nothing arrives" assertion uses a sentinel on the same ordered path.

Ports: Prosody 25539, gateway 25530, its admin endpoint 25531.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.client import Client, run
from harness.defaults import HOST
from harness.gateway import Gateway, Listener, binary
from harness.prosody import ProsodyInstance, start_prosody

GATEWAY_PORT = 25530
ADMIN_PORT = 25531
PROSODY_PORT = 25539

NS_CLIENT = "jabber:client"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"

POLICY = f"""
[audit]
path = "audit.jsonl"

[admin]
bind = "{HOST}:{ADMIN_PORT}"

[[rule]]
name   = "reported-senders"
chain  = "c2s-in"
when   = {{ kind = "message", reported = {{ reporters = 2, window = "1h" }} }}
action = "drop"

[[rule]]
name   = "spam-waves"
chain  = ["c2s-in", "s2s-in"]
when   = {{ kind = "message", wave = {{ senders = 3, window = "30m" }} }}
action = "drop"

[[rule]]
name   = "fan-out"
chain  = "c2s-in"
when   = {{ kind = "message", from = "dave@example.test", fanout = {{ recipients = 20, window = "10m" }} }}
action = "bounce"
text   = "Too many recipients"

[[rule]]
name   = "strangers"
chain  = ["c2s-in", "s2s-in"]
when   = {{ kind = "message", type = ["chat", "normal"], to = "bob@example.test", stranger = true }}
action = "bounce"
text   = "You are not in this user's contacts"
"""


@pytest.fixture(scope="module")
def prosody_as(tmp: Path) -> ProsodyInstance:
    inst = start_prosody(tmp / "prosody-antispam", port=PROSODY_PORT, extra_modules=["blocklist"])
    yield inst
    inst.stop()


@pytest.fixture(scope="module")
def gw(tmp: Path, pki, prosody_as) -> Gateway:
    g = Gateway(tmp / "gw-antispam", pki.cert, pki.key,
                [Listener("c2s", "c2s", GATEWAY_PORT, prosody_as.port)], extra_toml=POLICY).start()
    yield g
    assert g.terminate() == 0, f"stanzawall did not exit cleanly; log {g.log_path}"


def client(gw: Gateway, srv: ProsodyInstance, user: str, pki) -> Client:
    c = Client(srv.jid(user), srv.users[user], HOST, gw.port("c2s"), ca_file=pki.ca_cert)
    c.inbound: list[str] = []
    c.xmpp.add_filter("in", lambda st: (c.inbound.append(str(st)), st)[1])
    return c


def send(c: Client, to: str, body: str, mid: str) -> None:
    m = c.xmpp.make_message(mto=to, mbody=body, mtype="chat")
    m["id"] = mid
    m.send()


def error_of(xml: str) -> tuple[str | None, str | None]:
    """(condition, text) of the <error/> in a serialized stanza."""
    el = ET.fromstring(xml)
    err = el.find(f"{{{NS_CLIENT}}}error")
    if err is None:
        err = el.find("error")
    assert err is not None, xml
    cond = next((c.tag.split("}")[1] for c in err
                 if c.tag.startswith(f"{{{NS_STANZAS}}}") and not c.tag.endswith("}text")), None)
    text = err.find(f"{{{NS_STANZAS}}}text")
    return cond, (text.text if text is not None else None)


async def wait_inbound(c: Client, pred, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for x in c.inbound:
            if pred(x):
                return x
        await asyncio.sleep(0.02)
    raise AssertionError(f"no such stanza within {timeout}s; received: {c.inbound}")


def has_id(mid: str):
    return lambda x: f'id="{mid}"' in x


def is_error(mid: str):
    return lambda x: f'id="{mid}"' in x and 'type="error"' in x


def audit_records(gw: Gateway) -> list[dict]:
    p = gw.dir / "audit.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def wait_audit(gw: Gateway, pred, timeout: float = 3.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in audit_records(gw) if pred(r)]
        if found or time.monotonic() >= deadline:
            assert found, f"no such audit record; all: {audit_records(gw)}"
            return found
        time.sleep(0.05)


def metric(name: str, **labels) -> float:
    with urllib.request.urlopen(f"http://{HOST}:{ADMIN_PORT}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        ls = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(ls.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def test_a_strangers_message_is_bounced_and_a_contacts_arrives(gw, prosody_as, pki):
    async def go():
        async with client(gw, prosody_as, "bob", pki) as bob, \
                client(gw, prosody_as, "alice", pki) as alice, \
                client(gw, prosody_as, "carol", pki) as carol:
            # Bob's client fetches its roster, as every client does at login: the gateway
            # learns it from the result it relays.
            assert await bob.get_roster() == {}
            # Alice becomes bob's contact (bob's client approves; the server pushes the item).
            # Only interested resources, those that fetched the roster, get subscription
            # traffic (RFC 6121 §2.1.6), so every client fetches it, as real clients do.
            await alice.get_roster()
            await carol.get_roster()
            await alice.subscribe(bob.jid.split("/")[0])
            await wait_inbound(bob, lambda x: "jabber:iq:roster" in x and "alice@example.test" in x)
            send(carol, "bob@example.test", "hi bob", "s1")
            err = await wait_inbound(carol, is_error("s1"))
            assert error_of(err) == ("policy-violation", "You are not in this user's contacts"), err
            send(alice, "bob@example.test", "hi from alice", "c1")
            await wait_inbound(bob, has_id("c1"))
            assert not [x for x in bob.inbound if 'id="s1"' in x]
            # Bob goes offline: his roster is still known, carol is still a stranger.
            await bob.disconnect()
            send(carol, "bob@example.test", "still there?", "s2")
            err = await wait_inbound(carol, is_error("s2"))
            assert error_of(err)[0] == "policy-violation", err
        # Bob comes back and subscribes to carol: his roster changes, her next message arrives.
        async with client(gw, prosody_as, "bob", pki) as bob, client(gw, prosody_as, "carol", pki) as carol:
            await bob.get_roster()
            await carol.get_roster()
            await bob.subscribe("carol@example.test")
            send(carol, "bob@example.test", "now we are contacts", "s3")
            await wait_inbound(bob, has_id("s3"))
            assert not [x for x in carol.inbound if 'id="s3"' in x and 'type="error"' in x]
    run(go())
    recs = wait_audit(gw, lambda r: r.get("rule") == "strangers" and r.get("id") == "s1")
    assert recs[0]["action"] == "bounce" and recs[0]["from"].startswith("carol@example.test")
    assert not [r for r in audit_records(gw) if r.get("id") in {"c1", "s3"}]
    assert metric("stanzawall_policy_verdicts_total", rule="strangers", action="bounce") == 2


def test_a_versioned_roster_request_is_answered_with_the_whole_roster(gw, prosody_as, pki):
    """A client with a cached roster (XEP-0237) would get an empty "unchanged" result the gateway
    learns nothing from: while it does not know the roster, the gateway asks for all of it."""
    async def roster_get(c: Client, ver: str):
        iq = c.xmpp.Iq()
        iq["type"] = "get"
        iq.enable("roster")
        iq["roster"]["ver"] = ver
        resp = await iq.send(timeout=5)
        return resp.xml.find("{jabber:iq:roster}query")

    async def go():
        # Straight to the server (no gateway): dave's current roster version, and the proof
        # that the server answers "unchanged" to it.
        direct = Client(prosody_as.jid("dave"), prosody_as.users["dave"], HOST, prosody_as.port,
                        starttls=False)
        async with direct:
            ver = (await roster_get(direct, "")).get("ver")
            assert ver is not None
            assert await roster_get(direct, ver) is None, "the server answers unchanged"
        async with client(gw, prosody_as, "dave", pki) as dave:
            full = await roster_get(dave, ver)
            assert full is not None, "through the gateway the whole roster comes back"
            # Now the gateway knows it: the client's versioning works as it asked.
            assert await roster_get(dave, ver) is None
    run(go())


def test_fanout_cuts_the_twenty_first_recipient(gw, prosody_as, pki):
    async def go():
        async with client(gw, prosody_as, "dave", pki) as dave:
            for i in range(25):
                send(dave, f"nobody{i}@example.test", "a short note", f"f{i}")
            send(dave, "alice@example.test", "a short note", "fsentinel")
            await wait_inbound(dave, is_error("fsentinel"))
            refused = []
            for x in dave.inbound:
                if 'type="error"' in x and error_of(x) == ("policy-violation", "Too many recipients"):
                    refused.append(ET.fromstring(x).get("id"))
            assert refused == [f"f{i}" for i in range(20, 25)] + ["fsentinel"], refused
    run(go())
    assert metric("stanzawall_policy_verdicts_total", rule="fan-out", action="bounce") == 6


WAVE = [
    ("alice", "dave", "Hello Dave! Your parcel #4471 is waiting at the depot. Pay the customs fee at "
                      "https://parcel-depot.example/pay/4471 today"),
    ("bob", "dave", "Hello  Marta!  Your parcel #88 is waiting at the depot.  Pay the customs fee at "
                    "https://parcel-depot.example/pay/x88 today"),
    ("carol", "dave", "Hello Sven! Your parcel #31337 is w\u0430iting at the depot. Pay the customs fee at "
                      "http://www.parcel-depot.example/pay/31337?src=sms today"),
    ("alice", "bob", "Hello Bob! Your parcel #5 is waiting at the depot. Pay the customs fee at "
                     "https://parcel-depot.example/pay/5 today"),
]


def test_a_wave_across_senders_is_cut_after_the_threshold(gw, prosody_as, pki):
    before = metric("stanzawall_antispam_events_total", event="wave")

    async def go():
        async with client(gw, prosody_as, "alice", pki) as alice, \
                client(gw, prosody_as, "bob", pki) as bob, \
                client(gw, prosody_as, "carol", pki) as carol, \
                client(gw, prosody_as, "dave", pki) as dave:
            users = {"alice": alice, "bob": bob, "carol": carol, "dave": dave}
            for i, (frm, to, body) in enumerate(WAVE):
                send(users[frm], f"{to}@example.test", body, f"w{i}")
                await asyncio.sleep(0.05)
            # Sentinels: short texts, not part of any wave.
            send(alice, "dave@example.test", "ok", "wsent1")
            send(alice, "bob@example.test", "ok", "wsent2")
            await wait_inbound(dave, has_id("wsent1"))
            await wait_inbound(bob, has_id("wsent2"))
            got = {i for i in range(len(WAVE)) for x in dave.inbound + bob.inbound if f'id="w{i}"' in x}
            assert got == {0, 1}, (got, dave.inbound, bob.inbound)
    run(go())
    waves = wait_audit(gw, lambda r: r.get("event") == "spam-wave")
    assert waves[0]["rule"] == "spam-waves" and waves[0]["senders"] == 3
    assert "your parcel is waiting at the depot" in waves[0]["sample"], waves[0]
    drops = wait_audit(gw, lambda r: r.get("rule") == "spam-waves" and r.get("id") in {"w2", "w3"})
    assert len(drops) == 2 and all(r["action"] == "drop" and r["note"].startswith("wave ") for r in drops)
    assert metric("stanzawall_antispam_events_total", event="wave") == before + 1
    # `stanzawall explain` runs the same conditions: copies from three senders make the wave,
    # and it names it.
    stanzas = "".join(
        f"<message from='u{i}@example.test/x' to='v@example.test' type='chat'><body>{b}</body></message>"
        for i, (_, _, b) in enumerate(WAVE[:3]))
    out = subprocess.run([str(binary()), "explain", "--config", str(gw.config_path), "--chain", "c2s-in"],
                         input=stanzas, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    third = out.stdout.split("stanza 3:")[1]
    assert "rule: spam-waves" in third and "anti-spam (spam-waves): wave " in third, out.stdout


def test_a_spam_report_is_recorded_counted_and_the_threshold_applies(gw, prosody_as, pki):
    before = metric("stanzawall_antispam_events_total", event="report", reason="spam")

    async def report(c: Client, jid: str, text: str) -> None:
        c.xmpp.register_plugin("xep_0030")
        c.xmpp.register_plugin("xep_0191")
        c.xmpp.register_plugin("xep_0377")
        iq = c.xmpp.make_iq_set()
        iq["block"]["items"] = [jid]
        iq["block"]["report"]["spam"] = True
        iq["block"]["report"]["text"] = text
        await iq.send(timeout=5)  # the server (mod_blocklist) blocks; the gateway records

    async def go():
        async with client(gw, prosody_as, "alice", pki) as alice, \
                client(gw, prosody_as, "carol", pki) as carol, \
                client(gw, prosody_as, "dave", pki) as dave, \
                client(gw, prosody_as, "bob", pki) as bob:
            # carol is bob's contact (the first test), so only the report rule can stop her;
            # dave already met the fan-out rule, so he only reports.
            await report(alice, "carol@example.test", "unsolicited ads")
            send(carol, "bob@example.test", "one report is not enough", "r1")
            await wait_inbound(bob, has_id("r1"))
            await report(dave, "carol@example.test", "same ads here")
            send(carol, "bob@example.test", "two reports are", "r2")
            send(alice, "bob@example.test", "sentinel", "rsent")
            await wait_inbound(bob, has_id("rsent"))
            assert not [x for x in bob.inbound if 'id="r2"' in x]
    run(go())
    recs = wait_audit(gw, lambda r: r.get("event") == "spam-report")
    assert [(r["reporter"], r["reported"], r["reason"], r["reporters"]) for r in recs] == [
        ("alice@example.test", "carol@example.test", "spam", 1),
        ("dave@example.test", "carol@example.test", "spam", 2),
    ], recs
    assert recs[0]["text"] == "unsolicited ads"
    assert metric("stanzawall_antispam_events_total", event="report", reason="spam") == before + 2
    wait_audit(gw, lambda r: r.get("rule") == "reported-senders" and r.get("id") == "r2")
