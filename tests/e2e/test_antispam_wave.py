"""A spam wave from six accounts, held in the quarantine (issue 12, "Tests": "6 accounts send
variants of one text (different names, numbers, URL paths, whitespace, Unicode confusables) —
the wave is detected and later copies are held").

A private Prosody with seven accounts, real slixmpp clients, one stanzawall whose `wave` rule
(`senders = 5`) has `action = "quarantine"`. Six senders write variants of one parcel scam to
grace: the first four are delivered (no wave yet), the fifth sender's copy makes the wave and is
held, and so are the sixth's and a later copy from the first sender; an ordinary message from
the same senders still arrives. The held copies are listed by the admin API with the rule, the
audit log has the wave with its sample and sender count, the metrics count it.

Subscription-request floods (issue 12 item 7) meet the same conditions: dave asks five users for
their presence; the fan-out rule on `<presence type='subscribe'>` lets the first three requests
through and drops the fourth and fifth.

The helpers (API, audit, clients) are test_quarantine.py's. Ports: gateway 25690, its admin
endpoint 25691, Prosody 25692.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from harness.client import run
from harness.defaults import HOST, USERS
from harness.gateway import Gateway, Listener
from harness.prosody import ProsodyInstance, start_prosody
from test_quarantine import api, client, copies, metric, send, wait_audit, wait_inbound, with_tokens

GW, ADMIN, PROSODY_PORT = 25690, 25691, 25692
SENDERS = ["alice", "bob", "carol", "dave", "erin", "frank"]

POLICY = f"""
[audit]
path = "audit.jsonl"

[admin]
bind = "{HOST}:{ADMIN}"
tokens = "admin-tokens"

[quarantine]
max_entries = 100
retention = "1d"

[[rule]]
name   = "spam-waves"
chain  = "c2s-in"
when   = {{ kind = "message", wave = {{ senders = 5, window = "30m" }} }}
action = "quarantine"

[[rule]]
name   = "subscription-fan-out"
chain  = "c2s-in"
when   = {{ kind = "presence", type = "subscribe", fanout = {{ recipients = 3, window = "10m" }} }}
action = "drop"
"""

# One scam, six ways: another name, number and URL path each, doubled spaces, upper case, a
# Cyrillic "а" for "a", "http://www." for "https://", a tracking query.
VARIANTS = [
    "Hello Grace! Your parcel #4471 is waiting at the depot. Pay the customs fee at "
    "https://parcel-depot.example/pay/4471 today",
    "Hello  Marta!  Your parcel #88 is waiting at the depot.  Pay the customs fee at "
    "https://parcel-depot.example/pay/x88 today",
    "Hello Sven! Your parcel #31337 is w\u0430iting at the depot. Pay the customs fee at "
    "http://www.parcel-depot.example/pay/31337?src=sms today",
    "HELLO JOHN! Your parcel #5 is waiting at the depot. Pay the customs fee at "
    "https://parcel-depot.example/pay/5 today",
    "Hello Ana! Your parcel #20931 is waiting at the depot. Pay the customs fee at "
    "https://parcel-depot.example/p/20931/confirm today",
    "Hello   Li!   Your parcel #7 is waiting at the  depot. Pay the customs fee at "
    "https://parcel-depot.example/pay/7?utm=x today",
]


@pytest.fixture(scope="module")
def srv(tmp: Path) -> ProsodyInstance:
    users = dict(USERS) | {"erin": "erin-secret-5", "frank": "frank-secret-6", "grace": "grace-secret-7"}
    inst = start_prosody(tmp / "prosody-wave", port=PROSODY_PORT, users=users)
    yield inst
    inst.stop()


@pytest.fixture(scope="module")
def gw(tmp: Path, pki, srv) -> Gateway:
    g = with_tokens(Gateway(tmp / "gw-wave", pki.cert, pki.key,
                            [Listener("c2s", "c2s", GW, srv.port)], extra_toml=POLICY), ADMIN)
    g.start()
    yield g
    assert g.terminate() == 0, f"stanzawall did not exit cleanly; log {g.log_path}"


def test_six_accounts_make_a_wave_and_its_later_copies_are_held(gw, srv, pki):
    waves_before = metric(ADMIN, "stanzawall_antispam_events_total", event="wave")

    async def go():
        clients = [client(gw, srv, u, pki) for u in SENDERS + ["grace"]]
        for c in clients:
            await c.__aenter__()
        try:
            users = dict(zip(SENDERS + ["grace"], clients))
            grace = users["grace"]
            for i, (sender, text) in enumerate(zip(SENDERS, VARIANTS)):
                send(users[sender], "grace@example.test", text, f"v{i}")
                await asyncio.sleep(0.1)
            # A later copy from the first sender: still the wave.
            send(users["alice"], "grace@example.test", VARIANTS[3].replace("JOHN", "MIA"), "v6")
            # Sentinels on the same paths: ordinary text from a held sender arrives.
            send(users["frank"], "grace@example.test", "are we still on for lunch tomorrow at noon?", "ok1")
            send(users["alice"], "grace@example.test", "see you at the station", "ok2")
            await wait_inbound(grace, "ok1")
            await wait_inbound(grace, "ok2")
            got = {i for i in range(7) if copies(grace, f"v{i}")}
            assert got == {0, 1, 2, 3}, (got, grace.inbound)
        finally:
            for c in clients:
                await c.__aexit__(None, None, None)

    run(go())
    wave = wait_audit(gw, lambda r: r.get("event") == "spam-wave")[0]
    assert wave["senders"] == 5 and "parcel" in wave["sample"], wave
    held = wait_audit(gw, lambda r: r.get("event") == "quarantine" and r.get("outcome") == "held")
    assert len(held) == 3, held
    status, body = api(ADMIN, "GET", "/api/v1/quarantine", gw.tokens["read"])
    assert status == 200
    entries = body["entries"]
    assert sorted(e["from"].split("/")[0] for e in entries) == \
        ["alice@example.test", "erin@example.test", "frank@example.test"], entries
    assert all(e["rule"] == "spam-waves" and e["to"] == "grace@example.test" for e in entries), entries
    assert metric(ADMIN, "stanzawall_antispam_events_total", event="wave") == waves_before + 1


def test_a_subscription_request_flood_meets_the_same_fan_out_condition(gw, srv, pki):
    targets = ["alice", "bob", "carol", "erin", "frank"]

    async def go():
        clients = {u: client(gw, srv, u, pki) for u in targets + ["dave"]}
        for c in clients.values():
            await c.__aenter__()
        try:
            dave = clients["dave"]
            for t in targets:
                dave.xmpp.send_presence(pto=f"{t}@example.test", ptype="subscribe")
                await asyncio.sleep(0.1)
            # Sentinels on the same path (dave's stream, then the server to each target).
            for t in targets:
                send(dave, f"{t}@example.test", "hello there, it is dave", f"hi-{t}")
            for t in targets:
                await wait_inbound(clients[t], f"hi-{t}")
            asked = {t for t in targets
                     if any(x.startswith("<presence") and 'type="subscribe"' in x and "dave@example.test" in x
                            for x in clients[t].inbound)}
            assert asked == {"alice", "bob", "carol"}, asked
        finally:
            for c in clients.values():
                await c.__aexit__(None, None, None)

    run(go())
    dropped = wait_audit(gw, lambda r: r.get("rule") == "subscription-fan-out")
    assert sorted(r["to"] for r in dropped) == ["erin@example.test", "frank@example.test"], dropped
    assert all(r["kind"] == "presence" and r["action"] == "drop" for r in dropped), dropped
