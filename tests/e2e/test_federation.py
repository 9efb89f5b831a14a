"""Federation through two gateways (issue 11): every s2s byte crosses both.

Site A (Prosody, a.example) and site B (Prosody, then ejabberd, b.example) each sit behind
their own stanzawall. A site's outbound s2s reaches its gateway's ``s2s-out`` listener (its
private DNS routes every remote domain there, harness/sites.py); the gateway authenticates
a.example to the other gateway with its certificate (SASL EXTERNAL, XEP-0178), and the other
gateway presents the domain to its own server by dialback with a key it minted, which that
server checks through ITS gateway's ``s2s-out`` (answered there, never sent out). The
servers' s2s ports are plaintext on loopback and are reached only by their gateway.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pytest

from harness.client import run
from harness.federation import S2S_IN_PORT, S2sGateway
from harness.sites import SITE_A, SITE_B, Site, log_tails, running_sites

NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"


@dataclass
class Fed:
    a: Site
    b: Site
    gw_a: S2sGateway
    gw_b: S2sGateway

    def logs(self) -> str:
        return (log_tails(self.a, self.b) + "\n--- gateway A ---\n" + self.gw_a.log_tail()
                + "\n--- gateway B ---\n" + self.gw_b.log_tail())

    def run(self, scenario, timeout: float = 60) -> None:
        try:
            run(scenario, timeout)
        except BaseException as e:
            raise AssertionError(f"{e!r}\n{self.logs()}") from e


def gateway_for(d, pki, site_spec, other_spec, **kw) -> S2sGateway:
    cert, key = pki.issue(f"gw-{site_spec.domain}", [site_spec.domain])
    return S2sGateway(d / f"gw-{site_spec.domain}", domain=site_spec.domain, host=site_spec.outbound_host,
                      cert=cert, key=key, ca_cert=pki.ca_cert, backend=site_spec.s2s,
                      routes={other_spec.domain: (other_spec.outbound_host, S2S_IN_PORT)}, **kw)


@pytest.fixture(scope="module", params=["prosody", "ejabberd"])
def fed(request, tmp, pki):
    kind_b = request.param
    d = tmp / f"federation-{kind_b}"
    gw_a = gateway_for(d, pki, SITE_A, SITE_B, admin_port=25505)
    gw_b = gateway_for(d, pki, SITE_B, SITE_A, admin_port=25505)
    with running_sites(d, (SITE_A, {}), (SITE_B, {"kind": kind_b, "pki": pki})) as (a, b):
        gw_a.start()
        try:
            gw_b.start()
            yield Fed(a, b, gw_a, gw_b)
        finally:
            gw_b.stop()
            gw_a.stop()


def _authenticated(gw: S2sGateway, direction: str, remote: str) -> dict:
    return gw.wait_audit(lambda r: r.get("event") == "s2s-authenticated" and r.get("direction") == direction
                         and r.get("remote") == remote)


def test_messages_cross_both_gateways(fed):
    a, b = fed.a, fed.b

    async def scenario():
        async with a.client("alice") as alice, b.client("bob") as bob:
            alice.send_message(b.jid("bob"), "hello through two firewalls")
            m = await bob.next_message(30)
            assert (m.body, m.from_.split("/")[0]) == ("hello through two firewalls", a.jid("alice"))
            bob.send_message(a.jid("alice"), "and back again")
            m = await alice.next_message(30)
            assert (m.body, m.from_.split("/")[0]) == ("and back again", b.jid("bob"))

    fed.run(scenario())
    # Both directions of both gateways authenticated the pair, with certificates (the other
    # gateway's, from the test CA) and SASL EXTERNAL between the gateways.
    out_a = _authenticated(fed.gw_a, "out", "b.example")
    in_b = _authenticated(fed.gw_b, "in", "a.example")
    assert (out_a["method"], out_a["certificate"], out_a["dnssec"]) == ("sasl-external", "pkix", "static-route"), out_a
    assert (in_b["method"], in_b["certificate"]) == ("sasl-external", "pkix"), in_b
    _authenticated(fed.gw_b, "out", "a.example")
    _authenticated(fed.gw_a, "in", "b.example")
    # Metrics: the pairs and the stanzas per chain.
    m = fed.gw_a.metrics()
    assert 'stanzawall_s2s_authenticated_total{direction="out",method="sasl-external",certificate="pkix",dnssec="static-route"} ' in m, m
    assert 'stanzawall_stanzas_total{chain="s2s-out"} 0' not in m and 'stanzawall_stanzas_total{chain="s2s-out"}' in m
    # The servers only ever talked to their own gateway: their logs name no other peer.
    assert "127.0.2.1" not in a.server.log_path.read_text(errors="replace")


def test_presence_subscription_both_ways(fed):
    a, b = fed.a, fed.b

    async def scenario():
        async with a.client("carol") as carol, b.client("dave") as dave:
            await carol.get_roster()
            await dave.get_roster()
            got = await carol.subscribe(b.jid("dave"), timeout=30)
            assert got.from_.split("/")[0] == b.jid("dave")
            got = await dave.subscribe(a.jid("carol"), timeout=30)
            assert got.from_.split("/")[0] == a.jid("carol")
            ra, rb = await carol.get_roster(), await dave.get_roster()
            assert ra[b.jid("dave")]["subscription"] == "both", ra
            assert rb[a.jid("carol")]["subscription"] == "both", rb

    fed.run(scenario())


def test_iq_to_the_remote_server_both_ways(fed):
    a, b = fed.a, fed.b

    async def scenario():
        async with a.client("alice") as alice, b.client("bob") as bob:
            for client, remote in ((alice, b.domain), (bob, a.domain)):
                iq = client.xmpp.Iq()
                iq["type"], iq["to"] = "get", remote
                iq.xml.append(ET.Element(f"{{{NS_DISCO_INFO}}}query"))
                res = await iq.send(timeout=30)
                assert res["type"] == "result" and str(res["from"]) == remote, str(res)

    fed.run(scenario())


def test_s2s_policy_rule_applies_to_federated_stanzas(fed):
    """A rule in chain s2s-in at gateway B drops what a.example sends with a keyword; the same
    text on c2s is not this gateway's business. The audit names the chain."""
    a, b = fed.a, fed.b
    # The rule is loaded by a reload: the sessions already open keep running and see it at the
    # next stanza.
    fed.gw_b.extra_toml = (
        '[[rule]]\nname = "no-casino-from-federation"\nchain = "s2s-in"\n'
        'when = { body_contains = ["casino"] }\naction = "drop"\n'
    )
    fed.gw_b.write_config()
    mark = len(fed.gw_b.log())
    fed.gw_b.reload()
    fed.gw_b.wait_log("configuration reloaded", after=mark)

    async def scenario():
        async with a.client("alice") as alice, b.client("bob") as bob:
            alice.send_message(b.jid("bob"), "free casino chips")
            alice.send_message(b.jid("bob"), "an honest message")
            m = await bob.next_message(30)
            assert m.body == "an honest message", m.body

    fed.run(scenario())
    rec = fed.gw_b.wait_audit(lambda r: r.get("rule") == "no-casino-from-federation")
    assert (rec["chain"], rec["action"], rec["from"].split("/")[0]) == ("s2s-in", "drop", a.jid("alice")), rec
