"""The gateway's privileged component (issue 12, `[contacts] component`) end to end: a private
Prosody with Debian's mod_privilege and mod_pubsub, a private ejabberd with its built-in
mod_privilege, real slixmpp clients, one stanzawall per server.

What is shown:

* rosters through XEP-0356: bob has NEVER logged in through the gateway (he is online straight
  at the server); the gateway fetches his roster through its component when carol's first
  message to him is judged, so that message is bounced as a stranger's while alice's (bob asked
  her for a subscription) arrives — with Prosody (`urn:xmpp:privilege:2`) and with ejabberd
  (`urn:xmpp:privilege:1`); a roster change bob makes through the gateway takes effect at once;
* RTBLs over XEP-0060: two lists follow two nodes of Prosody's pubsub service in the
  xmppbl.org format (domains, and hex SHA-256 of bare JIDs): the initial items block, a
  published item blocks, a retraction unblocks, and a gateway restarted with no way to reach
  the server keeps the list from its state file;
* spam reports (XEP-0377) are forwarded to `[contacts] report_to` as a message the admin,
  logged in with slixmpp, receives;
* metrics and audit records of the component;
* a quarantined message whose sender has logged out is released through the component, sent
  on the sender's behalf (XEP-0356 §5, message `outgoing`): the recipient gets it once, a
  second release is 409.

Ports (25580-25589): gateway c2s 25580, its admin endpoint 25581, Prosody c2s 25582, Prosody
component port 25583, gateway c2s for ejabberd 25584, ejabberd c2s 25585, ejabberd
distribution 25586, ejabberd component port 25587; 25589 is never listened on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import subprocess
import urllib.error

from harness.client import Client, run
from harness.defaults import HOST, USERS
from harness.ejabberd import EjabberdInstance
from harness.gateway import Gateway, Listener, binary
from harness.prosody import ProsodyInstance

GATEWAY_PORT = 25580
ADMIN_PORT = 25581
PROSODY_PORT = 25582
PROSODY_COMPONENT_PORT = 25583
GATEWAY_EJ_PORT = 25584
EJABBERD_PORT = 25585
EJABBERD_DIST = 25586
EJABBERD_COMPONENT_PORT = 25587
NOWHERE_PORT = 25589

COMPONENT = "stanzawall.example.test"
PUBSUB = "pubsub.example.test"
SECRET = "component-secret-4711"
NS_CLIENT = "jabber:client"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"

EVE_SHA256 = hashlib.sha256(b"eve@example.test").hexdigest()


def contacts(backend_port: int) -> str:
    return f"""
[audit]
path = "audit.jsonl"

[contacts]
component   = "{COMPONENT}"
backend     = "{HOST}:{backend_port}"
secret_file = "component.secret"
report_to   = ["admin@example.test"]
"""


RTBL = f"""
[list.rtbl_domains]
rtbl = {{ service = "{PUBSUB}", node = "spam_source_domains" }}
[list.rtbl_jids]
rtbl = {{ service = "{PUBSUB}", node = "spam_source_jids_sha256" }}

[[rule]]
name   = "rtbl"
chain  = "c2s-in"
when   = {{ kind = "message", any = [ {{ to_domain_in = "rtbl_domains" }}, {{ from_sha256_in = "rtbl_jids" }} ] }}
action = "bounce"
text   = "Listed in a real-time block list"
"""

STRANGERS = """
[[rule]]
name   = "strangers"
chain  = "c2s-in"
when   = { kind = "message", type = ["chat", "normal"], to = "bob@example.test", stranger = true }
action = "bounce"
text   = "You are not in this user's contacts"
"""


HOLD = """
[[rule]]
name   = "hold-for-dave"
chain  = "c2s-in"
when   = { kind = "message", to = "dave@example.test", body_contains = "hold-me" }
action = "quarantine"
"""


def rules(backend_port: int) -> str:
    return (contacts(backend_port) + f'\n[admin]\nbind = "{HOST}:{ADMIN_PORT}"\ntokens = "admin-tokens"\n'
            + RTBL + STRANGERS + HOLD)


class PrivilegedProsody(ProsodyInstance):
    """The harness's Prosody plus a component port, mod_privilege (Debian's prosody-modules)
    granting the gateway's component roster and message access, and a pubsub service whose
    nodes the publisher account owns (as an admin)."""

    def write_config(self) -> None:
        super().write_config()
        text = self.config_path.read_text()
        text = text.replace("component_ports = { }",
                            f'component_ports = {{ {PROSODY_COMPONENT_PORT} }}\n'
                            f'component_interfaces = {{ "{HOST}" }}')
        head, vhost = text.split("\nVirtualHost ", 1)
        head += (f'\nadmins = {{ "publisher@{self.domain}" }}\n'
                 f'privileged_entities = {{ ["{COMPONENT}"] = {{ roster = "both", message = "outgoing" }} }}\n')
        text = (head + "\nVirtualHost " + vhost
                + f'\nComponent "{COMPONENT}"\n    component_secret = "{SECRET}"\n'
                + '    modules_enabled = { "privilege" }\n'
                + f'\nComponent "{PUBSUB}" "pubsub"\n')
        self.config_path.write_text(text)


class PrivilegedEjabberd(EjabberdInstance):
    """The harness's ejabberd plus an ejabberd_service listener for the gateway's component and
    the built-in mod_privilege granting it roster and message access."""

    def _listen_yaml(self) -> str:
        return super()._listen_yaml() + (
            f"\n  -\n    port: {EJABBERD_COMPONENT_PORT}\n    ip: \"{self.host}\"\n"
            f"    module: ejabberd_service\n    hosts:\n      \"{COMPONENT}\":\n        password: \"{SECRET}\"")

    def write_config(self) -> None:
        super().write_config()
        text = self.config_path.read_text()
        text += "  mod_privilege:\n    roster:\n      both: all\n    message:\n      outgoing: all\n"
        self.config_path.write_text(text)


USERS_HERE = dict(USERS, eve="eve-secret-5", admin="admin-secret-6", publisher="publisher-secret-7")


def direct(srv, user: str, port: int) -> Client:
    """A client straight at the server, never through the gateway."""
    c = Client(f"{user}@example.test", srv.users[user], HOST, port, starttls=False)
    c.inbound = []
    c.xmpp.add_filter("in", lambda st: (c.inbound.append(str(st)), st)[1])
    return c


def through(gw: Gateway, srv, user: str, pki, listener: str = "c2s") -> Client:
    c = Client(f"{user}@example.test", srv.users[user], HOST, gw.port(listener), ca_file=pki.ca_cert)
    c.inbound = []
    c.xmpp.add_filter("in", lambda st: (c.inbound.append(str(st)), st)[1])
    return c


def send(c: Client, to: str, body: str, mid: str) -> None:
    m = c.xmpp.make_message(mto=to, mbody=body, mtype="chat")
    m["id"] = mid
    m.send()


async def wait_inbound(c: Client, pred, timeout: float = 8.0) -> str:
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


def error_text(xml: str) -> str | None:
    el = ET.fromstring(xml)
    err = el.find(f"{{{NS_CLIENT}}}error")
    if err is None:
        err = el.find("error")
    t = err.find(f"{{{NS_STANZAS}}}text") if err is not None else None
    return t.text if t is not None else None


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


def audit_records(gw: Gateway) -> list[dict]:
    p = gw.dir / "audit.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def wait_until(pred, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.05)


def start_gateway(workdir: Path, pki, listener: Listener, backend_port: int) -> Gateway:
    g = Gateway(workdir, pki.cert, pki.key, [listener], extra_toml=rules(backend_port))
    (g.dir / "component.secret").write_text(SECRET + "\n")
    if not (g.dir / "admin-tokens").exists():
        out = subprocess.run([str(binary()), "admin-token", "--tokens", str(g.dir / "admin-tokens"), "--role",
                              "admin", "--name", "ops"], capture_output=True, text=True, timeout=30, check=True)
        g.admin_token = out.stdout.strip()
    return g.start()


def api(g: Gateway, method: str, path: str) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://{HOST}:{ADMIN_PORT}{path}", method=method,
                                 headers={"Authorization": f"Bearer {g.admin_token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


# -- Prosody ------------------------------------------------------------------------------

async def publish(pub: Client, node: str, item_id: str) -> None:
    payload = ET.Element("{urn:xmpp:reporting:1}report", {"reason": "urn:xmpp:reporting:spam"})
    await pub.xmpp["xep_0060"].publish(PUBSUB, node, id=item_id, payload=payload, timeout=10)


async def retract(pub: Client, node: str, item_id: str) -> None:
    await pub.xmpp["xep_0060"].retract(PUBSUB, node, item_id, notify=True, timeout=10)


def publisher(srv: ProsodyInstance) -> Client:
    c = direct(srv, "publisher", srv.port)
    c.xmpp.register_plugin("xep_0060")
    return c


@pytest.fixture(scope="module")
def prosody_priv(tmp: Path) -> PrivilegedProsody:
    inst = PrivilegedProsody(dir=tmp / "prosody-component", port=PROSODY_PORT, users=dict(USERS_HERE),
                             extra_modules=["privilege", "blocklist"])
    inst.start()
    # The publisher makes the two RTBL nodes with their initial items before the gateway
    # starts: what it fetches first.
    async def setup():
        async with publisher(inst) as pub:
            for node in ("spam_source_domains", "spam_source_jids_sha256"):
                await pub.xmpp["xep_0060"].create_node(PUBSUB, node, timeout=10)
            await publish(pub, "spam_source_domains", "spam.example")
            await publish(pub, "spam_source_jids_sha256", EVE_SHA256)
    run(setup())
    yield inst
    inst.stop()


@pytest.fixture(scope="module")
def gw(tmp: Path, pki, prosody_priv) -> Gateway:
    g = start_gateway(tmp / "gw-component", pki, Listener("c2s", "c2s", GATEWAY_PORT, prosody_priv.port),
                      PROSODY_COMPONENT_PORT)
    g.wait_log("component privileges granted")
    yield g
    assert g.terminate() == 0, f"stanzawall did not exit cleanly; log {g.log_path}"


def test_a_never_seen_users_roster_comes_through_the_component(gw, prosody_priv, pki):
    before = metric("stanzawall_component_roster_fetches_total", result="ok")

    async def go():
        # Bob is online straight at Prosody, never through the gateway; he asks alice for a
        # subscription (pending-out makes her a contact, RFC 6121 §3.1.2).
        async with direct(prosody_priv, "bob", prosody_priv.port) as bob, \
                through(gw, prosody_priv, "alice", pki) as alice, \
                through(gw, prosody_priv, "carol", pki) as carol:
            await bob.get_roster()
            bob.xmpp.send_presence_subscription(pto="alice@example.test")
            await asyncio.sleep(0.3)
            send(carol, "bob@example.test", "hi bob, buy now", "s1")
            err = await wait_inbound(carol, is_error("s1"))
            assert error_text(err) == "You are not in this user's contacts", err
            send(alice, "bob@example.test", "hi from alice", "c1")
            await wait_inbound(bob, has_id("c1"))
            assert not [x for x in bob.inbound if 'id="s1"' in x]
            # Bob now logs in through the gateway and subscribes to carol: the roster push the
            # gateway relays changes the roster it fetched; carol's next message arrives.
            async with through(gw, prosody_priv, "bob", pki) as bob2:
                await bob2.get_roster()
                bob2.xmpp.send_presence_subscription(pto="carol@example.test")
                await wait_inbound(bob2, lambda x: "jabber:iq:roster" in x and "carol@example.test" in x)
                send(carol, "bob@example.test", "now we are contacts", "s2")
                await wait_inbound(bob, has_id("s2"))
                assert not [x for x in carol.inbound if 'id="s2"' in x and 'type="error"' in x]
    run(go())
    assert metric("stanzawall_component_roster_fetches_total", result="ok") >= before + 1
    assert metric("stanzawall_component_connected") == 1
    recs = [r for r in audit_records(gw) if r.get("rule") == "strangers"]
    assert [r.get("id") for r in recs] == ["s1"], recs
    assert [r for r in audit_records(gw) if r.get("event") == "component-connected"]


def test_rtbl_initial_items_published_items_and_retractions(gw, prosody_priv, pki):
    rtbl_text = "Listed in a real-time block list"

    async def go():
        async with through(gw, prosody_priv, "alice", pki) as alice, \
                through(gw, prosody_priv, "eve", pki) as eve, \
                publisher(prosody_priv) as pub:
            # Initial items: a listed domain, and eve by the SHA-256 of her bare JID.
            send(alice, "x@spam.example", "hello", "r1")
            assert error_text(await wait_inbound(alice, is_error("r1"))) == rtbl_text
            send(eve, "alice@example.test", "hello", "r2")
            assert error_text(await wait_inbound(eve, is_error("r2"))) == rtbl_text
            # An unlisted domain goes on to the server (which has no s2s: its own error).
            send(alice, "x@fine.example", "hello", "r3")
            assert error_text(await wait_inbound(alice, is_error("r3"))) != rtbl_text
            # A published item blocks as soon as the notification is applied.
            t0 = time.monotonic()
            await publish(pub, "spam_source_domains", "fresh.example")
            for i in range(100):
                send(alice, "y@fresh.example", "hello", f"p{i}")
                err = await wait_inbound(alice, is_error(f"p{i}"))
                if error_text(err) == rtbl_text:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the published item never blocked")
            print(f"published item blocked after {time.monotonic() - t0:.2f}s")
            # A retraction unblocks.
            await retract(pub, "spam_source_domains", "spam.example")
            for i in range(100):
                send(alice, "x@spam.example", "hello", f"u{i}")
                err = await wait_inbound(alice, is_error(f"u{i}"))
                if error_text(err) != rtbl_text:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the retraction never unblocked")
    run(go())
    state = gw.dir / "state" / "rtbl"
    domains = (state / "rtbl_domains.list").read_text().split()
    assert "fresh.example" in domains and "spam.example" not in domains, domains
    assert EVE_SHA256 in (state / "rtbl_jids.list").read_text()
    assert metric("stanzawall_rtbl_entries", list="rtbl_domains") == 1
    assert metric("stanzawall_rtbl_entries", list="rtbl_jids") == 1
    assert metric("stanzawall_rtbl_updates_total", list="rtbl_domains") >= 3


def test_a_spam_report_reaches_the_admin(gw, prosody_priv, pki):
    async def go():
        async with through(gw, prosody_priv, "admin", pki) as admin, \
                through(gw, prosody_priv, "alice", pki) as alice:
            alice.xmpp.register_plugin("xep_0030")
            alice.xmpp.register_plugin("xep_0191")
            alice.xmpp.register_plugin("xep_0377")
            iq = alice.xmpp.make_iq_set()
            iq["block"]["items"] = ["dave@example.test"]
            iq["block"]["report"]["spam"] = True
            iq["block"]["report"]["text"] = "sells fake watches"
            await iq.send(timeout=5)
            m = await wait_inbound(admin, lambda x: f'from="{COMPONENT}"' in x and "Spam report" in x)
            assert ("alice@example.test reported dave@example.test (spam): sells fake watches" in m), m
    run(go())
    assert metric("stanzawall_component_reports_forwarded_total", result="sent") == 1


async def until(pred, timeout: float = 10.0, what: str = "condition"):
    """`wait_until` for inside a client's event loop (which must keep running meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.05)


def test_a_release_whose_sender_is_gone_goes_through_the_component_once(gw, prosody_priv, pki):
    """Carol's message to dave is held; carol logs out (no session of hers is left on the
    gateway); the release is sent by the component on carol's behalf: dave receives exactly one
    copy from carol, and a second release is refused with 409. (Before the restart test below,
    which stops this module's gateway; not alice, who blocked dave in the report test, so the
    server would rightly drop her message.)"""
    before = metric("stanzawall_quarantine_events_total", event="released")

    async def go():
        async with direct(prosody_priv, "dave", prosody_priv.port) as dave:
            async with through(gw, prosody_priv, "carol", pki) as carol:
                send(carol, "dave@example.test", "hold-me until an operator looks", "q1")
                await until(lambda: [r for r in audit_records(gw) if r.get("event") == "quarantine"
                                    and r.get("outcome") == "held"], what="the hold")
            entries = await until(lambda: [e for e in api(gw, "GET", "/api/v1/quarantine")[1].get("entries", [])
                                          if e.get("to") == "dave@example.test"], what="the entry")
            assert len(entries) == 1, entries
            qid = entries[0]["id"]
            # Carol's session is gone (its end is seen by the gateway shortly after she leaves).
            await until(lambda: "carol@example.test" not in json.dumps(api(gw, "GET", "/api/v1/sessions")[1]),
                       what="carol's session gone")
            assert not [x for x in dave.inbound if 'id="q1"' in x], dave.inbound
            status, body = api(gw, "POST", f"/api/v1/quarantine/{qid}/release")
            assert status == 200, body
            assert "component" in json.dumps(body), body
            got = await wait_inbound(dave, has_id("q1"))
            assert ET.fromstring(got).get("from", "").startswith("carol@example.test"), got
            assert "hold-me until an operator looks" in got
            again, body2 = api(gw, "POST", f"/api/v1/quarantine/{qid}/release")
            assert again == 409, (again, body2)
            await asyncio.sleep(1.0)
            assert len([x for x in dave.inbound if 'id="q1"' in x]) == 1, dave.inbound
    run(go())
    assert metric("stanzawall_quarantine_events_total", event="released") == before + 1


def test_a_restarted_gateway_keeps_the_rtbl_without_the_server(gw, prosody_priv, pki, tmp):
    """Last in this module: it stops the module's gateway. The new one cannot reach the
    component port, so what it blocks comes from its state file."""
    assert gw.terminate() == 0
    g = Gateway(gw.dir, pki.cert, pki.key, [Listener("c2s", "c2s", GATEWAY_PORT, prosody_priv.port)],
                extra_toml=rules(NOWHERE_PORT))
    g.start()
    gw.proc = g.proc  # the module fixture's teardown stops this one

    async def go():
        async with through(g, prosody_priv, "alice", pki) as alice:
            send(alice, "y@fresh.example", "hello", "k1")
            err = await wait_inbound(alice, is_error("k1"))
            assert error_text(err) == "Listed in a real-time block list", err
    run(go())
    g.wait_log("component connection failed")
    assert metric("stanzawall_component_connected") == 0


# -- ejabberd -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ejabberd_priv(pki) -> PrivilegedEjabberd:
    inst = PrivilegedEjabberd(cert=pki.cert, key=pki.key, ca_cert=pki.ca_cert, tls_port=None,
                              plain_port=EJABBERD_PORT, proxy_port=None, dist_port=EJABBERD_DIST,
                              users=dict(USERS))
    inst.start()
    yield inst
    inst.cleanup()


def test_ejabberd_grants_rosters_through_its_built_in_mod_privilege(tmp, pki, ejabberd_priv):
    listener = Listener("c2s", "c2s", GATEWAY_EJ_PORT, EJABBERD_PORT)
    g = Gateway(tmp / "gw-component-ej", pki.cert, pki.key, [listener],
                extra_toml=contacts(EJABBERD_COMPONENT_PORT) + STRANGERS)
    (g.dir / "component.secret").write_text(SECRET)
    g.start()
    try:
        g.wait_log("component privileges granted")

        async def go():
            async with direct(ejabberd_priv, "bob", EJABBERD_PORT) as bob, \
                    through(g, ejabberd_priv, "alice", pki) as alice, \
                    through(g, ejabberd_priv, "carol", pki) as carol:
                await bob.get_roster()
                bob.xmpp.send_presence_subscription(pto="alice@example.test")
                await asyncio.sleep(0.3)
                send(carol, "bob@example.test", "hi bob, buy now", "e1")
                err = await wait_inbound(carol, is_error("e1"))
                assert error_text(err) == "You are not in this user's contacts", err
                send(alice, "bob@example.test", "hi from alice", "e2")
                await wait_inbound(bob, has_id("e2"))
                assert not [x for x in bob.inbound if 'id="e1"' in x]
        run(go())
    finally:
        assert g.terminate() == 0, f"stanzawall did not exit cleanly; log {g.log_path}"
