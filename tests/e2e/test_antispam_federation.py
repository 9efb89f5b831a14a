"""Anti-spam over federation (issue 12): a stranger's message arriving by s2s is stopped at the
recipient's gateway, a contact's arrives, for both servers behind it (Prosody and ejabberd).

The rule's action is `bounce`, and it is audited as one; the error does not reach the sender
today: the s2s session writes it on the inbound stream (`session/s2s/common.rs`), which the
sending server does not read replies from (RFC 6120 §8.1: a stream carries stanzas one way).
So the test checks only that the stranger's message is withheld.

Two sites as in test_federation.py, each behind its own stanzawall (a.example's Prosody, then
b.example's Prosody or ejabberd). Gateway B also carries b.example's client connections (an
extra ``c2s`` listener in front of the site's c2s), so it learns bob's roster from the roster
result and pushes his session relays, and its ``s2s-in`` rule judges what a.example sends him.

Ports: gateway B's c2s listener is 127.0.2.2:25532 (the rest as in test_federation.py).
"""

from __future__ import annotations

import pytest

from harness.client import Client, run
from harness.federation import S2S_IN_PORT, S2sGateway
from harness.sites import SITE_A, SITE_B, log_tails, running_sites

C2S_PORT = 25532

POLICY = """
[[rule]]
name   = "strangers"
chain  = "s2s-in"
when   = { kind = "message", type = ["chat", "normal"], stranger = true }
action = "bounce"
text   = "You are not in this user's contacts"
"""


def gateway_for(d, pki, site_spec, other_spec, **kw) -> S2sGateway:
    cert, key = pki.issue(f"gw-{site_spec.domain}", [site_spec.domain])
    return S2sGateway(d / f"gw-{site_spec.domain}", domain=site_spec.domain, host=site_spec.outbound_host,
                      cert=cert, key=key, ca_cert=pki.ca_cert, backend=site_spec.s2s,
                      routes={other_spec.domain: (other_spec.outbound_host, S2S_IN_PORT)}, **kw)


@pytest.fixture(scope="module", params=["prosody", "ejabberd"])
def fed(request, tmp, pki):
    kind_b = request.param
    d = tmp / f"antispam-federation-{kind_b}"
    with running_sites(d, (SITE_A, {}), (SITE_B, {"kind": kind_b, "pki": pki})) as (a, b):
        listener = "\n".join([
            "[[listener]]", 'name = "c2s"', 'kind = "c2s"', f'bind = "{SITE_B.outbound_host}:{C2S_PORT}"',
            f'backend = "{b.c2s[0]}:{b.c2s[1]}"'])
        gw_a = gateway_for(d, pki, SITE_A, SITE_B)
        gw_b = gateway_for(d, pki, SITE_B, SITE_A, extra_listeners=listener, extra_toml=POLICY)
        gw_a.start()
        try:
            gw_b.start()
            yield a, b, gw_a, gw_b
        finally:
            gw_b.stop()
            gw_a.stop()


def test_a_federated_strangers_message_is_bounced_and_a_contacts_arrives(fed, pki):
    a, b, gw_a, gw_b = fed

    def bob_via_gateway() -> Client:
        c = Client(b.jid("bob"), b.users["bob"], SITE_B.outbound_host, C2S_PORT, ca_file=pki.ca_cert,
                   server_name=b.domain)
        c.inbound = []
        c.xmpp.add_filter("in", lambda st: (c.inbound.append(str(st)), st)[1])
        return c

    async def scenario():
        async with bob_via_gateway() as bob, a.client("alice") as alice, a.client("carol") as carol:
            await bob.get_roster()
            await alice.get_roster()
            await carol.get_roster()
            # bob asks alice for her presence: alice is a contact of his from here on.
            await bob.subscribe(a.jid("alice"), timeout=30)
            m = carol.xmpp.make_message(mto=b.jid("bob"), mbody="hi bob, remember me?", mtype="chat")
            m["id"] = "fs1"
            m.send()
            # The contact's message, sent after the stranger's over the same s2s stream, is the
            # sentinel: once it is in, the stranger's would have been in before it.
            alice.send_message(b.jid("bob"), "hello from a contact")
            got = await bob.next_message(30)
            assert got.body == "hello from a contact", got
            assert not [x for x in bob.inbound if "remember me" in x]

    try:
        run(scenario(), 90)
    except BaseException as e:
        raise AssertionError(f"{e!r}\n{log_tails(a, b)}\n--- gateway B ---\n{gw_b.log_tail()}") from e
    rec = gw_b.wait_audit(lambda r: r.get("rule") == "strangers")
    assert (rec["chain"], rec["action"], rec["from"].split("/")[0]) == ("s2s-in", "bounce", a.jid("carol")), rec
