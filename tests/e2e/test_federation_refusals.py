"""Federation refusals (issue 11): each with the right stream error and nothing delivered.

Two Prosody sites behind two gateways (as in test_federation.py). Gateway A's backend leg
runs through a recording relay, so the tests can tell what Prosody A was ever shown. A raw
s2s peer (harness/federation.py RawS2s) plays the remote servers no real server would be:
one that skips TLS, one that forges a domain, one that cannot prove its dialback key, one
with an expired or wrong-name certificate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.client import run
from harness.federation import S2S_IN_PORT, RawS2s, S2sGateway
from harness.raw import RawStreamError
from harness.sites import SITE_A, SITE_B, RecordingRelay, Site, log_tails, running_sites

RELAY = ("127.0.1.3", 25501)
GW_A = (SITE_A.outbound_host, S2S_IN_PORT)
DIRECT_TLS_PORT = 25506


@dataclass
class World:
    a: Site
    b: Site
    gw_a: S2sGateway
    gw_b: S2sGateway
    relay: RecordingRelay
    pki: object
    blocked: Path

    def logs(self) -> str:
        return (log_tails(self.a, self.b) + "\n--- gateway A ---\n" + self.gw_a.log_tail()
                + "\n--- gateway B ---\n" + self.gw_b.log_tail())

    def backend_bytes(self) -> bytes:
        """Everything gateway A ever sent to Prosody A."""
        return b"".join(c.sent() for c in self.relay.connections())

    def peer(self, frm: str | None, client_cert=None) -> RawS2s:
        return RawS2s.dial(*GW_A, frm=frm, to="a.example", ca_file=self.pki.ca_cert, client_cert=client_cert)


@pytest.fixture(scope="module")
def world(tmp, pki):
    d = tmp / "federation-refusals"
    d.mkdir(parents=True, exist_ok=True)
    blocked = d / "blocked-domains.txt"
    blocked.write_text("# domains we never federate with\ndenied.example\n")
    cert_a, key_a = pki.issue("gw-refusals-a", ["a.example"])
    cert_b, key_b = pki.issue("gw-refusals-b", ["b.example"])
    gw_a = S2sGateway(
        d / "gw-a", domain="a.example", host=SITE_A.outbound_host, cert=cert_a, key=key_a, ca_cert=pki.ca_cert,
        backend=RELAY, routes={"b.example": (SITE_B.outbound_host, S2S_IN_PORT)}, direct_tls_port=DIRECT_TLS_PORT,
        s2s_extra='deny = ["list:blocked"]\nrequire_authenticated = { "strict.example" = "pkix" }',
        extra_toml=f'[list.blocked]\nfile = "{blocked}"\n')
    gw_b = S2sGateway(
        d / "gw-b", domain="b.example", host=SITE_B.outbound_host, cert=cert_b, key=key_b, ca_cert=pki.ca_cert,
        backend=SITE_B.s2s, routes={"a.example": GW_A})
    relay = RecordingRelay(*RELAY, upstream=SITE_A.s2s)
    try:
        with running_sites(d, (SITE_A, {}), (SITE_B, {})) as (a, b):
            gw_a.start()
            gw_b.start()
            yield World(a, b, gw_a, gw_b, relay, pki, blocked)
    finally:
        gw_b.stop()
        gw_a.stop()
        relay.stop()


def refused(s: RawS2s, condition: str) -> str:
    """Read until the gateway closes; the text must carry the stream error ``condition``."""
    try:
        text = s.read_until_closed(15)
    except RawStreamError as e:
        raise AssertionError(f"the gateway kept the stream open: {e}") from e
    assert f"<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'" in s.received, s.received
    return text


def refusal(gw: S2sGateway, remote: str, direction: str = "in", reason: str = "") -> dict:
    """The audit record of a refusal of ``remote`` whose reason matches regex ``reason``."""
    return gw.wait_audit(lambda r: r.get("event") == "s2s-refused" and r.get("remote") == remote
                         and r.get("direction") == direction
                         and re.search(reason, r.get("reason", ""), re.I) is not None)


def test_denied_domain_inbound_is_refused_at_its_header(world):
    with world.peer("denied.example") as s:
        s.send("<?xml version='1.0'?><stream:stream from='denied.example' to='a.example' version='1.0' "
               "xmlns='jabber:server' xmlns:db='jabber:server:dialback' "
               "xmlns:stream='http://etherx.jabber.org/streams'>")
        refused(s, "policy-violation")
    refusal(world.gw_a, "denied.example", reason="s2s.deny")
    assert b"denied.example" not in world.backend_bytes()


def test_denied_domain_outbound_is_refused_and_bounced(world):
    a = world.a

    async def scenario():
        async with a.client("alice") as alice:
            alice.send_message("someone@denied.example", "may I?")
            m = await alice.next_message(20, with_body=False)
            assert m.type == "error" and m.from_ == "someone@denied.example", m.xml

    try:
        run(scenario(), 60)
    except BaseException as e:
        raise AssertionError(f"{e!r}\n{world.logs()}") from e
    refusal(world.gw_a, "denied.example", "out", reason="s2s.deny")


def test_plaintext_refused_when_tls_is_required(world):
    with world.peer("b.example") as s:
        features = s.start_stream()
        assert "<required/>" in features, features
        s.db_result("00" * 32)
        refused(s, "policy-violation")
    assert "TLS is required" in s.received
    refusal(world.gw_a, "b.example", reason="TLS is required")


def test_dialback_the_peer_cannot_prove_never_reaches_the_backend(world):
    """A peer claiming b.example without its key: gateway A asks b.example's authoritative
    server (gateway B, which minted no such key), gets ``invalid``, refuses; Prosody A is never
    shown the pair."""
    before = world.backend_bytes()
    with world.peer("b.example") as s:
        s.start_stream()
        s.starttls()
        s.db_result("ab" * 32)
        s.expect(r"<db:result [^>]*type='invalid'", timeout=25)
        refused(s, "not-authorized")
    after = world.backend_bytes()[len(before):]
    assert b"from='b.example'" not in after and b"b.example" not in after, after
    refusal(world.gw_a, "b.example", reason="dialback key is invalid")
    # gateway B was asked (the dialback verify stream) and said no.
    assert "dialback verified" in world.gw_a.log()


def test_forged_from_on_an_authenticated_stream(world):
    """b.example proves itself with its certificate (SASL EXTERNAL); a stanza from another
    domain on that stream closes it with invalid-from; the genuine one before it is delivered."""
    a = world.a
    cert = world.pki.issue("peer-b-valid", ["b.example"])

    async def scenario():
        async with a.client("alice") as alice:
            with world.peer("b.example", client_cert=cert) as s:
                s.start_stream()
                features = s.starttls()
                assert "EXTERNAL" in features, features
                assert "<success" in s.sasl_external()
                s.start_stream()
                s.send("<message from='eve@b.example/x' to='alice@a.example' type='chat'><body>genuine</body></message>")
                m = await alice.next_message(30)
                assert m.body == "genuine", m.xml
                s.send("<message from='mallory@c.example/x' to='alice@a.example' type='chat'><body>forged</body></message>")
                refused(s, "invalid-from")
            try:
                m = await alice.next_message(3)
            except Exception:
                return
            raise AssertionError(f"the forged stanza arrived: {m.xml}")

    try:
        run(scenario(), 90)
    except BaseException as e:
        raise AssertionError(f"{e!r}\n{world.logs()}") from e
    assert b"c.example" not in world.backend_bytes()


@pytest.mark.parametrize("case", ["expired", "wrong-name"])
def test_require_pkix_refuses_a_bad_certificate(world, case):
    import datetime as dt
    if case == "expired":
        past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
        cert = world.pki.issue("peer-strict-expired", ["strict.example"], not_before=past, days=1)
    else:
        cert = world.pki.issue("peer-strict-wrongname", ["other.example"])
    before = world.backend_bytes()
    # strict.example must prove itself with a certificate (require_authenticated = "pkix"):
    # dialback is not asked at all.
    with world.peer("strict.example", client_cert=cert) as s:
        s.start_stream()
        features = s.starttls()
        assert "EXTERNAL" not in features, features
        s.db_result("cd" * 32)
        s.expect(r"<db:result [^>]*type='invalid'")
        refused(s, "not-authorized")
    assert "require_authenticated" in s.received and "pkix" in s.received, s.received
    refusal(world.gw_a, "strict.example", reason="pkix.*" + ("expired" if case == "expired" else "name|not valid for"))
    assert world.backend_bytes()[len(before):] == b""


def test_direct_tls_inbound_with_sasl_external(world):
    """XEP-0368: TLS (ALPN xmpp-server) before the stream; the certificate proves b.example, SASL
    EXTERNAL succeeds, and a stanza is delivered; a forged one on the same stream is not."""
    a = world.a
    cert = world.pki.issue("peer-b-direct", ["b.example"])

    async def scenario():
        async with a.client("alice") as alice:
            with RawS2s.dial_direct_tls(SITE_A.outbound_host, DIRECT_TLS_PORT, frm="b.example", to="a.example",
                                        ca_file=world.pki.ca_cert, client_cert=cert) as s:
                assert s.sock.selected_alpn_protocol() == "xmpp-server"
                features = s.start_stream()
                assert "EXTERNAL" in features and "starttls" not in features, features
                assert "<success" in s.sasl_external()
                s.start_stream()
                s.send("<message from='eve@b.example/x' to='alice@a.example' type='chat'><body>direct</body></message>")
                m = await alice.next_message(30)
                assert m.body == "direct", m.xml

    try:
        run(scenario(), 90)
    except BaseException as e:
        raise AssertionError(f"{e!r}\n{world.logs()}") from e


def test_deny_on_reload_cuts_live_sessions(world):
    a, b = world.a, world.b

    async def exchange(expect_delivery: bool):
        async with a.client("alice") as alice, b.client("bob") as bob:
            alice.send_message(b.jid("bob"), "before the cut" if expect_delivery else "after the cut")
            if expect_delivery:
                assert (await bob.next_message(30)).body == "before the cut"
                return
            m = await alice.next_message(30, with_body=False)
            assert m.type == "error", m.xml
            try:
                got = await bob.next_message(3)
            except Exception:
                return
            raise AssertionError(f"delivered after the deny: {got.xml}")

    try:
        run(exchange(True), 90)
    except BaseException as e:
        raise AssertionError(f"{e!r}\n{world.logs()}") from e
    mark = len(world.gw_a.log())
    world.blocked.write_text("denied.example\nb.example\n")
    world.gw_a.reload()
    text = world.gw_a.wait_log("s2s remote refused", after=mark, timeout=15)
    assert "b.example" in text
    try:
        run(exchange(False), 90)
    except BaseException as e:
        raise AssertionError(f"{e!r}\n{world.logs()}") from e
    recs = [r for r in world.gw_a.audit() if r.get("event") == "s2s-refused" and r.get("remote") == "b.example"
            and "deny" in r.get("reason", "")]
    assert recs, world.gw_a.audit()[-10:]

