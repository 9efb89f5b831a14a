"""`stanzawall resolve` against a real DNSSEC-signed zone (harness/dnszone.py):
SRV order over both services, secure / insecure / bogus status, TLSA only for
secure targets, A fallback, "." service refusal, static routes, --dnssec off,
and a wrong trust anchor.

Run: STANZAWALL_BIN=target/release/stanzawall /usr/bin/python3 -m pytest -q tests/e2e/test_dns.py
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from harness.ca import issue_leaf
from harness.dnszone import DnsZone, tlsa_rdata

BIN = os.environ.get("STANZAWALL_BIN", "target/release/stanzawall")


@pytest.fixture(scope="module")
def dns_cert(pki) -> Path:
    cert, _key = pki.issue("xmpp.secure.test", ["secure.test", "xmpp.secure.test"])
    return cert


@pytest.fixture(scope="module")
def zone(tmp: Path, dns_cert: Path):
    z = DnsZone(tmp / "dnszone")
    z.add_tlsa("_5269._tcp.xmpp.secure.test", dns_cert.read_text())
    z.start()
    yield z
    z.stop()


def resolve(zone: DnsZone, domain: str, *extra: str, anchor: Path | None = None):
    argv = [BIN, "resolve", domain, "--resolver", zone.resolver,
            "--trust-anchor", str(anchor or zone.trust_anchor), *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def ok(zone: DnsZone, domain: str, *extra: str) -> dict:
    r = resolve(zone, domain, *extra)
    assert r.returncode == 0, f"resolve {domain} failed: {r.stderr}"
    return json.loads(r.stdout)


def test_secure_srv_both_services_in_priority_order_with_tlsa(zone, dns_cert):
    res = ok(zone, "secure.test")
    assert res["srv_dnssec"] == "secure"
    hosts = [(t["host"], t["port"], t["direct_tls"]) for t in res["targets"]]
    # _xmpps-server prio 5 before _xmpp-server prio 10 (RFC 2782 order over both).
    assert hosts == [("xmpps.secure.test", 5270, True), ("xmpp.secure.test", 5269, False)]
    assert all(t["dnssec"] == "secure" and t["source"] == "srv" for t in res["targets"])
    assert all(t["addrs"] == ["127.0.0.1"] for t in res["targets"])
    # TLSA exactly as published for the cert, at _5269._tcp.xmpp.secure.test only.
    want = tlsa_rdata(dns_cert.read_text()).split()
    assert res["targets"][1]["tlsa"] == [{"usage": int(want[0]), "selector": int(want[1]),
                                          "matching": int(want[2]), "data": want[3]}]
    assert res["targets"][0]["tlsa"] is None


def test_mismatching_tlsa_is_returned_for_the_secure_target(zone, dns_cert):
    res = ok(zone, "mismatch.test")
    [t] = res["targets"]
    assert t["dnssec"] == "secure"
    assert t["tlsa"] and t["tlsa"][0]["data"] != tlsa_rdata(dns_cert.read_text()).split()[3]


def test_unsigned_zone_is_insecure_and_its_tlsa_is_not_used(zone):
    # The unsigned child publishes a TLSA at _5269._tcp.xmpp.unsigned.test; without a DS
    # chain it must not be returned (RFC 7673 §3).
    assert "TLSA" in zone.dig("_5269._tcp.xmpp.unsigned.test", "TLSA")
    res = ok(zone, "unsigned.test")
    assert res["srv_dnssec"] == "insecure"
    [t] = res["targets"]
    assert (t["host"], t["port"], t["dnssec"], t["tlsa"]) == ("xmpp.unsigned.test", 5269, "insecure", None)


def test_bogus_signature_is_refused_not_fallen_back_from(zone):
    r = resolve(zone, "bogus.test")
    assert r.returncode != 0
    assert r.stdout == ""
    assert "DNSSEC validation failed (bogus)" in r.stderr and "bogus.test" in r.stderr, r.stderr


def test_dnssec_off_takes_the_tampered_answer_and_reports_off(zone):
    # The same bogus data is used when validation is off: the tampered port shows through.
    res = ok(zone, "bogus.test", "--dnssec", "off")
    [t] = res["targets"]
    assert (t["port"], t["dnssec"], t["tlsa"]) == (5299, "off", None)
    res = ok(zone, "secure.test", "--dnssec", "off")
    assert all(t["dnssec"] == "off" and t["tlsa"] is None for t in res["targets"])


def test_a_fallback_when_no_srv(zone):
    res = ok(zone, "fallback.test")
    [t] = res["targets"]
    assert (t["host"], t["port"], t["direct_tls"], t["source"], t["dnssec"]) == \
        ("fallback.test", 5269, False, "fallback", "secure")


def test_dot_target_means_no_service(zone):
    r = resolve(zone, "noservice.test")
    assert r.returncode != 0
    assert "offers no XMPP server-to-server service" in r.stderr, r.stderr


def test_static_route_wins_over_dns(zone):
    res = ok(zone, "bogus.test", "--route", "bogus.test=127.0.0.9:15999,direct")
    [t] = res["targets"]
    assert (t["host"], t["port"], t["addrs"], t["direct_tls"], t["source"], t["dnssec"]) == \
        ("127.0.0.9", 15999, ["127.0.0.9"], True, "static", "off")
    # A route naming a host resolves it through the validating resolver.
    res = ok(zone, "other.example", "--route", "other.example=xmpp.secure.test:5999")
    [t] = res["targets"]
    assert (t["host"], t["port"], t["addrs"], t["direct_tls"], t["dnssec"]) == \
        ("xmpp.secure.test", 5999, ["127.0.0.1"], False, "secure")


def test_wrong_trust_anchor_makes_everything_bogus(zone, tmp: Path):
    other = DnsZone(tmp / "dnszone-other-keys")   # keys only: never started
    r = resolve(zone, "secure.test", anchor=other.trust_anchor)
    assert r.returncode != 0
    assert "bogus" in r.stderr, r.stderr


def test_ds_trust_anchor_is_refused_with_a_clear_error(zone, tmp: Path):
    ds = tmp / "root.ds"
    ds.write_text(". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D\n")
    r = resolve(zone, "secure.test", anchor=ds)
    assert r.returncode != 0
    assert "trust anchor" in r.stderr and "DS record" in r.stderr, r.stderr


def test_invalid_domain_is_refused(zone):
    r = resolve(zone, "bad domain!")
    assert r.returncode != 0 and "invalid domain" in r.stderr, r.stderr
