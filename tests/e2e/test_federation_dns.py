"""Federation resolved through DNSSEC (issue 11): SRV, DANE, mismatches, bogus answers.

Gateway A resolves remote domains itself, through a real DNSSEC-signed zone (knotd serving a
signed root, harness/dnszone.py) with the zone's key as the trust anchor; gateway B uses a
static route back. Gateway B's certificate for b.example comes from a CA gateway A does NOT
trust, so only DANE (a DNSSEC-secure TLSA 3 1 1 record) can authenticate it:

- b.example: ``_xmpp-server._tcp`` SRV → gw.b.example:25501 (gateway B), TLSA matching →
  delivered, audited as ``certificate = dane``, ``dnssec = secure``; required by
  ``require_authenticated = { "b.example" = "dane" }``;
- c.example: SRV → the same gateway, which serves c.example with a certificate valid by PKIX,
  but the TLSA is random bytes → refused at the TLS handshake (DANE overrides PKIX);
- bogus.test: signatures that do not verify → refused, never connected;
- unsigned.test: a delegation without DS (insecure) → no DANE, PKIX decides: gateway B also
  serves unsigned.test on 127.0.0.1:5269 with a certificate from the trusted CA.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from harness.ca import make_pki
from harness.client import run
from harness.dnszone import DnsZone
from harness.federation import S2S_IN_PORT, RawS2s, S2sGateway
from harness.sites import SITE_A, SITE_B, Site, log_tails, running_sites

DIRECT_TLS_PORT = 25506


@dataclass
class World:
    a: Site
    b: Site
    gw_a: S2sGateway
    gw_b: S2sGateway
    zone: DnsZone

    def logs(self) -> str:
        return (log_tails(self.a, self.b) + "\n--- gateway A ---\n" + self.gw_a.log_tail()
                + "\n--- gateway B ---\n" + self.gw_b.log_tail())


@pytest.fixture(scope="module")
def world(tmp, pki):
    d = tmp / "federation-dns"
    other = make_pki(d / "untrusted-ca")           # gateway A does not trust this CA
    cert_a, key_a = pki.issue("gw-dns-a", ["a.example"])
    cert_b, key_b = other.issue("gw-dns-b", ["b.example"])
    cert_u, key_u = pki.issue("gw-dns-unsigned", ["unsigned.test"])
    # c.example's certificate is valid by PKIX (trusted CA): only the TLSA mismatch refuses it.
    cert_c, key_c = pki.issue("gw-dns-c", ["c.example"])
    # tls.example: only _xmpps-server (direct TLS, XEP-0368) to gateway B's s2s-tls listener,
    # an untrusted certificate matched by TLSA.
    cert_t, key_t = other.issue("gw-dns-tls", ["tls.example"])
    zone = DnsZone(d / "zone")
    gw_b_host = SITE_B.outbound_host
    for line in (f"_xmpp-server._tcp.b.example. 300 IN SRV 0 0 {S2S_IN_PORT} gw.b.example.",
                 f"gw.b.example. 300 IN A {gw_b_host}",
                 f"_xmpp-server._tcp.c.example. 300 IN SRV 0 0 {S2S_IN_PORT} gw.c.example.",
                 f"gw.c.example. 300 IN A {gw_b_host}",
                 f"_{S2S_IN_PORT}._tcp.gw.c.example. 300 IN TLSA 3 1 1 {'5a' * 32}",
                 f"_xmpps-server._tcp.tls.example. 300 IN SRV 0 0 {DIRECT_TLS_PORT} gw.b.example."):
        zone.add_record(line)
    zone.add_tlsa(f"_{S2S_IN_PORT}._tcp.gw.b.example", cert_b.read_text())
    zone.add_tlsa(f"_{DIRECT_TLS_PORT}._tcp.gw.b.example", cert_t.read_text())
    gw_a = S2sGateway(
        d / "gw-a", domain="a.example", host=SITE_A.outbound_host, cert=cert_a, key=key_a, ca_cert=pki.ca_cert,
        backend=SITE_A.s2s,
        s2s_extra=(f'dnssec = "validate"\nresolver = "{zone.resolver}"\n'
                   f'trust_anchor = "{zone.trust_anchor}"\nrequire_authenticated = {{ "b.example" = "dane" }}'))
    gw_b = S2sGateway(
        d / "gw-b", domain="b.example", host=gw_b_host, cert=cert_b, key=key_b, ca_cert=pki.ca_cert,
        backend=SITE_B.s2s, routes={"a.example": (SITE_A.outbound_host, S2S_IN_PORT)},
        extra_certs=[(["unsigned.test"], cert_u, key_u), (["c.example"], cert_c, key_c),
                     (["tls.example"], cert_t, key_t)],
        extra_domains=["unsigned.test", "c.example", "tls.example"], direct_tls_port=DIRECT_TLS_PORT,
        extra_listeners=('[[listener]]\nname = "s2s-unsigned"\nkind = "s2s"\nbind = "127.0.0.1:5269"\n'
                         f'backend = "{SITE_B.s2s[0]}:{SITE_B.s2s[1]}"'))
    zone.start()
    try:
        with running_sites(d, (SITE_A, {}), (SITE_B, {})) as (a, b):
            gw_a.start()
            gw_b.start()
            try:
                yield World(a, b, gw_a, gw_b, zone)
            finally:
                gw_b.stop()
                gw_a.stop()
    finally:
        zone.stop()


def out_auth(w: World, remote: str) -> dict:
    return w.gw_a.wait_audit(lambda r: r.get("event") == "s2s-authenticated" and r.get("direction") == "out"
                             and r.get("remote") == remote, timeout=20)


def out_refusal(w: World, remote: str) -> dict:
    return w.gw_a.wait_audit(lambda r: r.get("event") == "s2s-refused" and r.get("direction") == "out"
                             and r.get("remote") == remote, timeout=20)


def bounce(w: World, to: str) -> None:
    async def scenario():
        async with w.a.client("alice") as alice:
            alice.send_message(to, "does this domain exist?")
            m = await alice.next_message(40, with_body=False)
            assert m.type == "error" and m.from_ == to, m.xml

    try:
        run(scenario(), 90)
    except BaseException as e:
        raise AssertionError(f"{e!r}\n{w.logs()}") from e


def test_srv_and_dane_ee_authenticate_an_untrusted_certificate(world):
    a, b = world.a, world.b

    async def scenario():
        async with a.client("alice") as alice, b.client("bob") as bob:
            alice.send_message(b.jid("bob"), "found you through DNSSEC")
            m = await bob.next_message(40)
            assert m.body == "found you through DNSSEC"

    try:
        run(scenario(), 90)
    except BaseException as e:
        raise AssertionError(f"{e!r}\n{world.logs()}") from e
    rec = out_auth(world, "b.example")
    assert (rec["certificate"], rec["dnssec"]) == ("dane", "secure"), rec
    assert "gw.b.example" in world.gw_a.log(), "the SRV target was used"


def test_tlsa_mismatch_is_refused(world):
    bounce(world, "nobody@c.example")
    rec = out_refusal(world, "c.example")
    assert "TLSA" in rec["reason"] or "DANE" in rec["reason"], rec
    assert not any(r.get("event") == "s2s-authenticated" and r.get("remote") == "c.example" for r in world.gw_a.audit())


def our_server(w: World, remote: str) -> RawS2s:
    """A raw stream on gateway A's s2s-out listener, as our server opens one. (The sites'
    Prosody cannot ask for *.test names: its resolver, unbound, answers NXDOMAIN for the
    special-use ``test.`` itself, RFC 6761.)"""
    s = RawS2s.dial(w.gw_a.host, w.gw_a.out_port, frm="a.example", to=remote, ca_file=w.gw_a.ca_cert)
    features = s.start_stream()
    assert "urn:xmpp:features:dialback" in features and "starttls" not in features, features
    return s


def test_bogus_signatures_are_refused(world):
    with our_server(world, "bogus.test") as s:
        s.db_result("ef" * 32)
        s.expect(r"<db:result [^>]*type='error'.*?remote-connection-failed", timeout=30)
        s.read_until_closed(15)
    assert "<remote-connection-failed xmlns='urn:ietf:params:xml:ns:xmpp-streams'" in s.received, s.received
    rec = out_refusal(world, "bogus.test")
    assert "bogus" in rec["reason"].lower(), rec
    assert not any(r.get("event") == "s2s-authenticated" and r.get("remote") == "bogus.test" for r in world.gw_a.audit())


def test_unsigned_zone_falls_back_to_pkix(world):
    """No DNSSEC for unsigned.test (a delegation without DS): its TLSA must not be used; the
    certificate from the trusted CA authenticates gateway B's second domain by PKIX, and our
    server's dialback is answered valid."""
    with our_server(world, "unsigned.test") as s:
        s.db_result("01" * 32)
        s.expect(r"<db:result [^>]*type='valid'", timeout=30)
    rec = out_auth(world, "unsigned.test")
    assert (rec["certificate"], rec["dnssec"], rec["method"]) == ("pkix", "insecure", "sasl-external"), rec


def test_xmpps_server_srv_goes_direct_tls(world):
    """tls.example publishes only ``_xmpps-server._tcp`` (XEP-0368): gateway A connects with
    TLS first (ALPN xmpp-server, SNI tls.example) to gateway B's s2s-tls listener; the
    certificate is authenticated by DANE on that port's TLSA."""
    with our_server(world, "tls.example") as s:
        s.db_result("02" * 32)
        s.expect(r"<db:result [^>]*type='valid'", timeout=30)
    rec = out_auth(world, "tls.example")
    assert (rec["certificate"], rec["dnssec"], rec["method"]) == ("dane", "secure", "sasl-external"), rec
    assert f"addr={world.gw_b.host}:{DIRECT_TLS_PORT}" in world.gw_a.log()
