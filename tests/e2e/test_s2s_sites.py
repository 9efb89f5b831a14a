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
from contextlib import ExitStack
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.client import run
from harness.sites import SITE_A, SITE_B, RecordingRelay, Site, log_tails, running_sites

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
        """Both relays' recordings, on one clock, into the module's tmp dir."""
        t0 = min((c.chunks[0][1] for r in (self.relay_a, self.relay_b)
                  for c in r.connections() if c.chunks), default=None)
        (self.dir / "relay-a-to-b.txt").write_text(self.relay_a.transcript(t0))
        (self.dir / "relay-b-to-a.txt").write_text(self.relay_b.transcript(t0))


@pytest.fixture(scope="module", params=["prosody", "ejabberd"])
def pair(request, tmp, pki) -> Pair:
    """Prosody a.example and a ``request.param`` b.example; each site's outbound s2s goes to
    a relay in front of the other site's s2s port."""
    d = tmp / f"sites-{request.param}"
    with ExitStack() as stack:
        relay_a = RecordingRelay(*SITE_A.outbound, upstream=SITE_B.s2s)
        stack.callback(relay_a.stop)
        relay_b = RecordingRelay(*SITE_B.outbound, upstream=SITE_A.s2s)
        stack.callback(relay_b.stop)
        a, b = stack.enter_context(running_sites(
            d, (SITE_A, {}), (SITE_B, {"kind": request.param, "pki": pki})))
        p = Pair(a, b, relay_a, relay_b, d)
        yield p
        p.save_transcripts()


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


def _exchange(pair: Pair, text: str) -> None:
    """alice@A -> bob@B and back, each delivered (so both s2s directions exist)."""
    a, b = pair.a, pair.b

    async def scenario():
        async with a.client("alice") as alice, b.client("bob") as bob:
            alice.send_message(b.jid("bob"), f"{text} a->b")
            assert (await bob.next_message(20)).body == f"{text} a->b"
            bob.send_message(a.jid("alice"), f"{text} b->a")
            assert (await alice.next_message(20)).body == f"{text} b->a"

    try:
        run(scenario(), 60)
    except BaseException as e:
        raise AssertionError(f"{e!r}\n{pair.logs()}") from e


def _all(relay: RecordingRelay) -> tuple[bytes, bytes]:
    conns = relay.connections()
    return b"".join(c.sent() for c in conns), b"".join(c.received() for c in conns)


def test_dialback_in_plaintext_on_the_wire(pair):
    """Each direction authenticated with dialback (XEP-0220), no TLS: the originating server
    sent ``db:result`` with key K on its outbound stream (through its relay) and got
    ``valid``; the receiving server checked K with ``db:verify`` on a connection of its own,
    which went out through ITS DNS route (the other relay) and was answered ``valid``."""
    _exchange(pair, "dialback")
    for relay, other, origin, receiver in ((pair.relay_a, pair.relay_b, pair.a, pair.b),
                                           (pair.relay_b, pair.relay_a, pair.b, pair.a)):
        sent, received = _all(relay)
        other_sent, other_received = _all(other)
        for data in (sent, received, other_sent, other_received):
            assert b"<starttls" not in data and b"<proceed" not in data, relay.transcript()
        results = re.findall(rb"<db:result (?=[^>]*from=['\"]" + re.escape(origin.domain.encode())
                             + rb"['\"])(?=[^>]*to=['\"]" + re.escape(receiver.domain.encode())
                             + rb"['\"])[^>]*>([0-9a-f]+)</db:result>", sent)
        assert results, relay.transcript()
        assert re.search(rb"<db:result [^>]*type=['\"]valid['\"]", received), \
            relay.transcript()
        for key in results:
            assert re.search(rb"<db:verify [^>]*>" + key + rb"</db:verify>", other_sent), \
                other.transcript()
        assert re.search(rb"<db:verify [^>]*type=['\"]valid['\"]", other_received), \
            other.transcript()


def test_any_remote_domain_is_routed_to_the_chosen_address(pair):
    """The wildcard SRV sends EVERY remote domain to the route (what a gateway's s2s-out
    needs: it learns the target from the stream header's ``to``).  The peer behind the relay
    does not serve ``elsewhere.example`` and says so; alice gets an error back."""
    a = pair.a

    async def scenario():
        async with a.client("alice") as alice:
            alice.send_message("nobody@elsewhere.example", "to nowhere")
            m = await alice.next_message(20, with_body=False)
            assert m.type == "error" and m.from_ == "nobody@elsewhere.example", m.xml

    run(scenario(), 60)
    assert pair.relay_a.wait_for(b"to='elsewhere.example'", 5) or \
        pair.relay_a.wait_for(b'to="elsewhere.example"', 1), pair.relay_a.transcript()
    # Prosody (no s2s certificate) asked for the SRV record, never for XEP-0368's
    # _xmpps-server, which the wildcard would also send to the route.
    log = a.log_path.read_text(errors="replace")
    assert "Resolve _xmpp-server._tcp.elsewhere.example IN SRV" in log
    assert "_xmpps-server" not in log


def test_route_outbound_moves_new_connections(pair):
    """``Site.route_outbound`` re-points the site's DNS: a new remote domain now goes to a
    closed port (alice gets an error, the relay sees no connection for it); once routed back,
    the next new domain reaches the relay again."""
    a = pair.a
    dead = (SITE_A.outbound_host, SITE_A.outbound_port + 1)
    before = len(pair.relay_a.connections())

    async def scenario():
        async with a.client("alice") as alice:
            alice.send_message("nobody@moved.example", "to a closed port")
            m = await alice.next_message(20, with_body=False)
            assert m.type == "error" and "remote-server-not-found" in m.xml, m.xml

    a.route_outbound(*dead)
    try:
        run(scenario(), 60)
    finally:
        a.route_outbound(*SITE_A.outbound)
    assert len(pair.relay_a.connections()) == before, pair.relay_a.transcript()
    assert not pair.relay_a.wait_for(b"moved.example", 0.5)

    async def back():
        async with a.client("alice") as alice:
            alice.send_message("nobody@back.example", "routed again")
            m = await alice.next_message(20, with_body=False)
            assert m.type == "error", m.xml

    run(back(), 60)
    assert pair.relay_a.wait_for(b"back.example", 5), pair.relay_a.transcript()
