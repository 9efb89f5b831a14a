"""TESTBED CHECKS for federation (issue 11): two real sites talking s2s WITHOUT a gateway.

These tests check the testbed itself (harness/sites.py), not stanzawall: each site's outbound
s2s is routed by its private DNS (knotd wildcard SRV, module docs of harness/sites.py) to a
:class:`RecordingRelay` that forwards to the other site's plaintext s2s port.  Because every
s2s byte crosses a relay, a delivered stanza proves the routing mechanism works per instance,
and the recordings show what the servers put on the wire (plaintext dialback, XEP-0220).

Pairs (module-scoped, one pair alive at a time): Prosody a.example <-> Prosody b.example, then
Prosody a.example <-> ejabberd b.example.  Per pair: a message each way, a presence
subscription each way, a disco#info iq to the remote server each way, and dialback on the
wire in both directions.  Through-gateway tests go in other modules, with the same fixtures:
point each site's outbound at the gateway's ``s2s-out`` (``spec.outbound`` is kept free for
it) and each gateway's routes at the other gateway's inbound listener.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.client import run
from harness.sites import SITE_A, SITE_B, RecordingRelay, Site, log_tails, start_site

NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DB = "jabber:server:dialback"


@dataclass
class Pair:
    a: Site
    b: Site
    relay_a: RecordingRelay  # A's outbound -> B's s2s
    relay_b: RecordingRelay  # B's outbound -> A's s2s
    dir: Path

    def logs(self) -> str:
        return log_tails(self.a, self.b)

    def save_transcripts(self) -> None:
        (self.dir / "relay-a-to-b.txt").write_text(self.relay_a.transcript())
        (self.dir / "relay-b-to-a.txt").write_text(self.relay_b.transcript())


@pytest.fixture(scope="module", params=["prosody", "ejabberd"])
def pair(request, tmp, pki) -> Pair:
    kind_b = request.param
    d = tmp / f"sites-{kind_b}"
    relay_a = RecordingRelay(*SITE_A.outbound, upstream=SITE_B.s2s)
    relay_b = RecordingRelay(*SITE_B.outbound, upstream=SITE_A.s2s)
    started: list[Site] = []
    try:
        started.append(start_site(d / "a", SITE_A))
        started.append(start_site(d / "b", SITE_B, kind=kind_b, pki=pki))
        p = Pair(started[0], started[1], relay_a, relay_b, d)
        yield p
        p.save_transcripts()
    finally:
        for s in reversed(started):
            s.stop()
        relay_a.stop()
        relay_b.stop()


def _disco_info(client, to: str, timeout: float = 15.0):
    iq = client.xmpp.Iq()
    iq["type"] = "get"
    iq["to"] = to
    iq.xml.append(ET.Element(f"{{{NS_DISCO_INFO}}}query"))
    return iq.send(timeout=timeout)


def test_message_both_ways(pair):
    a, b = pair.a, pair.b

    async def scenario():
        async with a.client("alice") as alice, b.client("bob") as bob:
            alice.send_message(b.jid("bob"), "hello from a.example")
            m = await bob.next_message(20)
            assert (m.body, m.from_.split("/")[0]) == ("hello from a.example", a.jid("alice"))
            bob.send_message(a.jid("alice"), "hello back from b.example")
            m = await alice.next_message(20)
            assert (m.body, m.from_.split("/")[0]) == ("hello back from b.example",
                                                       b.jid("bob"))

    try:
        run(scenario(), 60)
    except BaseException as e:
        raise AssertionError(f"{e!r}\n{pair.logs()}") from e
    # Both bodies crossed the relays: the per-instance routing is what carried them.
    assert pair.relay_a.wait_for("hello from a.example", 1), pair.relay_a.transcript()
    assert pair.relay_b.wait_for("hello back from b.example", 1), pair.relay_b.transcript()


def test_presence_subscription_both_ways(pair):
    a, b = pair.a, pair.b

    async def scenario():
        async with a.client("carol") as carol, b.client("dave") as dave:
            # A roster fetch makes the session "interested" (RFC 6121 §2.2): only such
            # sessions get subscription approvals pushed.
            await carol.get_roster()
            await dave.get_roster()
            got = await carol.subscribe(b.jid("dave"), timeout=20)
            assert got.from_.split("/")[0] == b.jid("dave")
            got = await dave.subscribe(a.jid("carol"), timeout=20)
            assert got.from_.split("/")[0] == a.jid("carol")
            ra, rb = await carol.get_roster(), await dave.get_roster()
            assert ra[b.jid("dave")]["subscription"] == "both", ra
            assert rb[a.jid("carol")]["subscription"] == "both", rb

    try:
        run(scenario(), 60)
    except BaseException as e:
        raise AssertionError(f"{e!r}\n{pair.logs()}") from e


def test_iq_disco_info_to_remote_server_both_ways(pair):
    a, b = pair.a, pair.b

    async def scenario():
        async with a.client("alice") as alice, b.client("bob") as bob:
            for client, remote in ((alice, b.domain), (bob, a.domain)):
                res = await _disco_info(client, remote)
                assert res["type"] == "result" and str(res["from"]) == remote, str(res)
                q = res.xml.find(f"{{{NS_DISCO_INFO}}}query")
                cats = {i.get("category") for i in q.findall(f"{{{NS_DISCO_INFO}}}identity")}
                assert "server" in cats, str(res)

    try:
        run(scenario(), 60)
    except BaseException as e:
        raise AssertionError(f"{e!r}\n{pair.logs()}") from e


def test_dialback_in_plaintext_on_the_wire(pair):
    """Each direction authenticated with dialback, no TLS: the originating server sent
    ``db:result`` on its outbound stream, the receiving server checked it with ``db:verify``
    on a connection of its own (which also went through its DNS route), got ``valid``."""
    for relay, origin, receiver in ((pair.relay_a, pair.a, pair.b),
                                    (pair.relay_b, pair.b, pair.a)):
        conns = relay.connections()
        sent = b"".join(c.sent() for c in conns)
        received = b"".join(c.received() for c in conns)
        both = sent + received
        assert b"starttls" not in both.lower().replace(b"xmpp-tls'", b"") or \
            b"<proceed" not in both, relay.transcript()
        # db:result from origin to receiver (on origin's outbound, i.e. through this relay)
        assert re.search(rb"<db:result[^>]*from=['\"]" + origin.domain.encode() +
                         rb"['\"]", sent) or \
            re.search(rb"<db:result[^>]*to=['\"]" + receiver.domain.encode(), sent), \
            relay.transcript()
        assert re.search(rb"<db:result[^>]*type=['\"]valid['\"]", received), relay.transcript()
        # The receiver's verification connection to the origin went out through ITS route,
        # i.e. through the other relay: a db:verify answered valid there.
        other = pair.relay_b if relay is pair.relay_a else pair.relay_a
        other_sent = b"".join(c.sent() for c in other.connections())
        other_recv = b"".join(c.received() for c in other.connections())
        assert b"<db:verify" in other_sent, other.transcript()
        assert re.search(rb"<db:verify[^>]*type=['\"]valid['\"]", other_recv), \
            other.transcript()
