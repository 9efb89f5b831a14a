//! Unit tests of the pure parts: SRV ordering, DANE/PKIX verdicts (certificates made here with
//! rcgen), SPKI extraction, trust anchor parsing, route parsing. The resolver against a real
//! signed zone is tested end to end in tests/e2e/test_dns.py.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData,
};
use ring::digest;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::RootCertStore;

use super::dane::{subject_public_key_info, tlsa_matches, verify_peer, verify_peer_names, DaneUsage, PeerCert};
use super::srv::{merge, Candidate, SrvRecord};
use super::{anchor, cli, DnsError, Tlsa};

struct Ca {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = p.self_signed(&key).unwrap().der().clone();
    Ca { cert, issuer: Issuer::new(p, key) }
}

/// A leaf for `names` issued by `ca` (serverAuth), with its SPKI.
fn leaf(ca: &Ca, names: &[&str]) -> (CertificateDer<'static>, Vec<u8>) {
    leaf_with(ca, names, |_| {})
}

fn leaf_with(ca: &Ca, names: &[&str], f: impl FnOnce(&mut CertificateParams)) -> (CertificateDer<'static>, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    f(&mut p);
    let cert = p.signed_by(&key, &ca.issuer).unwrap().der().clone();
    (cert, key.subject_public_key_info())
}

fn roots(cas: &[&Ca]) -> RootCertStore {
    let mut r = RootCertStore::empty();
    for c in cas {
        r.add(c.cert.clone()).unwrap();
    }
    r
}

fn now() -> UnixTime {
    UnixTime::now()
}

fn tlsa(usage: u8, selector: u8, matching: u8, selected: &[u8]) -> Tlsa {
    let data = match matching {
        0 => selected.to_vec(),
        1 => digest::digest(&digest::SHA256, selected).as_ref().to_vec(),
        _ => digest::digest(&digest::SHA512, selected).as_ref().to_vec(),
    };
    Tlsa { usage, selector, matching, data }
}

// --- SPKI extraction -------------------------------------------------------

#[test]
fn spki_of_a_certificate_is_the_keys_spki() {
    let ca = ca("CA");
    let (cert, spki) = leaf(&ca, &["a.example"]);
    assert_eq!(subject_public_key_info(cert.as_ref()), Some(spki.as_slice()));
}

#[test]
fn spki_of_garbage_or_truncated_der_is_none() {
    let ca = ca("CA");
    let (cert, _) = leaf(&ca, &["a.example"]);
    for cut in [0, 1, 2, 10, cert.as_ref().len() / 2] {
        assert_eq!(subject_public_key_info(&cert.as_ref()[..cut]), None, "cut at {cut}");
    }
    assert_eq!(subject_public_key_info(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    assert_eq!(subject_public_key_info(b"not der at all"), None);
}

// --- DANE ------------------------------------------------------------------

#[test]
fn dane_ee_matches_every_selector_and_matching_type() {
    let ca = ca("CA");
    let (cert, spki) = leaf(&ca, &["xmpp.a.example"]);
    let empty = RootCertStore::empty();
    for (selector, selected) in [(0u8, cert.as_ref().to_vec()), (1, spki.clone())] {
        for matching in 0..=2u8 {
            let t = [tlsa(3, selector, matching, &selected)];
            assert!(tlsa_matches(&t[0], &cert), "3 {selector} {matching}");
            // DANE-EE ignores names (RFC 7671 §5.1) and roots: the domain is not in the cert.
            assert_eq!(
                verify_peer(std::slice::from_ref(&cert), "other.example", Some(&t), &empty, now()),
                PeerCert::Dane(DaneUsage::Ee),
                "3 {selector} {matching}"
            );
        }
    }
}

#[test]
fn dane_ee_ignores_expiry() {
    let ca = ca("CA");
    let (cert, spki) = leaf_with(&ca, &["a.example"], |p| {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    });
    let t = [tlsa(3, 1, 1, &spki)];
    assert_eq!(
        verify_peer(&[cert], "a.example", Some(&t), &RootCertStore::empty(), now()),
        PeerCert::Dane(DaneUsage::Ee)
    );
}

#[test]
fn dane_mismatch_when_no_record_matches_even_if_pkix_would_pass() {
    let ca = ca("CA");
    let (cert, _) = leaf(&ca, &["a.example"]);
    let (_, other_spki) = leaf(&ca, &["a.example"]);
    let r = roots(&[&ca]);
    // PKIX alone accepts it …
    assert_eq!(verify_peer(std::slice::from_ref(&cert), "a.example", None, &r, now()), PeerCert::Pkix);
    // … but secure TLSA records that name another key forbid it (RFC 7671 §5).
    for t in [tlsa(3, 1, 1, &other_spki), tlsa(3, 1, 2, &other_spki), tlsa(2, 1, 1, &other_spki)] {
        assert_eq!(
            verify_peer(std::slice::from_ref(&cert), "a.example", Some(&[t]), &r, now()),
            PeerCert::DaneMismatch
        );
    }
    // One wrong byte in the right digest is a mismatch too.
    let (_, spki) = (cert.clone(), subject_public_key_info(cert.as_ref()).unwrap().to_vec());
    let mut t = tlsa(3, 1, 1, &spki);
    t.data[0] ^= 1;
    assert_eq!(verify_peer(&[cert], "a.example", Some(&[t]), &r, now()), PeerCert::DaneMismatch);
}

#[test]
fn unusable_tlsa_records_mean_pkix() {
    let ca = ca("CA");
    let (cert, spki) = leaf(&ca, &["a.example"]);
    let r = roots(&[&ca]);
    // PKIX-TA/PKIX-EE usages, unknown selector / matching: not usable, so PKIX decides.
    let records =
        [tlsa(1, 1, 1, &spki), tlsa(0, 1, 1, &spki), Tlsa { usage: 3, selector: 7, matching: 1, data: vec![1] }];
    assert_eq!(verify_peer(std::slice::from_ref(&cert), "a.example", Some(&records), &r, now()), PeerCert::Pkix);
    assert!(matches!(verify_peer(&[cert], "b.example", Some(&records), &r, now()), PeerCert::Invalid(_)));
}

#[test]
fn dane_ta_anchors_the_chain_and_checks_the_name() {
    let root = ca("Root");
    // An intermediate published as DANE-TA, not in any root store.
    let ikey = KeyPair::generate().unwrap();
    let mut ip = CertificateParams::new(Vec::<String>::new()).unwrap();
    ip.distinguished_name.push(DnType::CommonName, "Intermediate");
    ip.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ip.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let icert = ip.signed_by(&ikey, &root.issuer).unwrap().der().clone();
    let inter = Ca { cert: icert.clone(), issuer: Issuer::new(ip, ikey) };
    let (cert, _) = leaf(&inter, &["a.example"]);
    let chain = [cert.clone(), icert.clone()];
    let empty = RootCertStore::empty();
    let ta_spki = subject_public_key_info(icert.as_ref()).unwrap().to_vec();
    for t in [tlsa(2, 0, 1, icert.as_ref()), tlsa(2, 1, 1, &ta_spki), tlsa(2, 1, 0, &ta_spki)] {
        let ts = [t];
        assert_eq!(verify_peer(&chain, "a.example", Some(&ts), &empty, now()), PeerCert::Dane(DaneUsage::Ta));
        // DANE-TA still checks the name (RFC 7671 §5.2).
        assert_eq!(verify_peer(&chain, "b.example", Some(&ts), &empty, now()), PeerCert::DaneMismatch);
        // … and the SRV target is acceptable when offered as a reference identifier.
        assert_eq!(
            verify_peer_names(&chain, &["b.example", "a.example"], Some(&ts), &empty, now()),
            PeerCert::Dane(DaneUsage::Ta)
        );
        // Without the TA in the chain there is nothing to anchor at.
        assert_eq!(
            verify_peer(std::slice::from_ref(&cert), "a.example", Some(&ts), &empty, now()),
            PeerCert::DaneMismatch
        );
    }
    // A DANE-TA record naming the end entity itself is no anchor.
    let ee_spki = subject_public_key_info(cert.as_ref()).unwrap().to_vec();
    assert_eq!(
        verify_peer(&chain, "a.example", Some(&[tlsa(2, 1, 1, &ee_spki)]), &empty, now()),
        PeerCert::DaneMismatch
    );
}

// --- PKIX (RFC 9525 DNS-ID) -------------------------------------------------

#[test]
fn pkix_accepts_a_valid_chain_for_the_domain() {
    let ca = ca("CA");
    let (cert, _) = leaf(&ca, &["a.example", "conference.a.example"]);
    let r = roots(&[&ca]);
    assert_eq!(verify_peer(std::slice::from_ref(&cert), "a.example", None, &r, now()), PeerCert::Pkix);
    assert_eq!(verify_peer(std::slice::from_ref(&cert), "A.Example", None, &r, now()), PeerCert::Pkix);
    assert_eq!(verify_peer(&[cert], "conference.a.example", Some(&[]), &r, now()), PeerCert::Pkix);
}

#[test]
fn pkix_rejects_wrong_name_unknown_root_expired_and_empty_chain() {
    let ca = ca("CA");
    let stranger = ca_named("Other");
    let (cert, _) = leaf(&ca, &["a.example"]);
    let r = roots(&[&ca]);
    assert!(
        matches!(verify_peer(std::slice::from_ref(&cert), "b.example", None, &r, now()), PeerCert::Invalid(m) if m.contains("not valid for b.example"))
    );
    assert!(matches!(
        verify_peer(std::slice::from_ref(&cert), "a.example", None, &roots(&[&stranger]), now()),
        PeerCert::Invalid(_)
    ));
    let (old, _) = leaf_with(&ca, &["a.example"], |p| {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    });
    assert!(matches!(verify_peer(&[old], "a.example", None, &r, now()), PeerCert::Invalid(_)));
    assert!(matches!(verify_peer(&[], "a.example", None, &r, now()), PeerCert::Invalid(_)));
    // The SRV target host is never a PKIX identity (only the XMPP domain is).
    assert!(matches!(verify_peer_names(&[cert], &["b.example", "a.example"], None, &r, now()), PeerCert::Invalid(_)));
}

fn ca_named(n: &str) -> Ca {
    ca(n)
}

#[test]
fn pkix_wildcard_is_one_leftmost_label() {
    let ca = ca("CA");
    let (cert, _) = leaf(&ca, &["*.a.example"]);
    let r = roots(&[&ca]);
    let v = |d: &str| verify_peer(std::slice::from_ref(&cert), d, None, &r, now());
    assert_eq!(v("muc.a.example"), PeerCert::Pkix);
    assert!(matches!(v("a.example"), PeerCert::Invalid(_)), "wildcard must not match the parent");
    assert!(matches!(v("x.muc.a.example"), PeerCert::Invalid(_)), "wildcard must match one label only");
    let (partial, _) = leaf(&ca, &["m*.a.example"]);
    assert!(matches!(verify_peer(&[partial], "muc.a.example", None, &r, now()), PeerCert::Invalid(_)));
}

#[test]
fn pkix_ignores_the_common_name() {
    let ca = ca("CA");
    let (cert, _) = leaf_with(&ca, &["other.example"], |p| p.distinguished_name.push(DnType::CommonName, "a.example"));
    assert!(matches!(verify_peer(&[cert], "a.example", None, &roots(&[&ca]), now()), PeerCert::Invalid(_)));
}

// --- verifiers -------------------------------------------------------------

#[test]
fn server_verifier_fails_only_on_dane_mismatch_and_records_the_verdict() {
    use rustls::client::danger::ServerCertVerifier;
    let ca = ca("CA");
    let (cert, spki) = leaf(&ca, &["a.example"]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let name = rustls::pki_types::ServerName::try_from("a.example").unwrap();
    let r = Arc::new(RootCertStore::empty());
    // PKIX fails (no roots) but the handshake goes on; the verdict says Invalid.
    let v = super::dane::S2sServerVerifier::new(vec!["a.example".into()], None, r.clone(), provider.clone());
    assert!(v.verify_server_cert(&cert, &[], &name, &[], now()).is_ok());
    assert!(matches!(super::dane::read_outcome(&v.outcome()), Some(PeerCert::Invalid(_))));
    // DANE-EE match.
    let v = super::dane::S2sServerVerifier::new(
        vec!["a.example".into()],
        Some(vec![tlsa(3, 1, 1, &spki)]),
        r.clone(),
        provider.clone(),
    );
    assert!(v.verify_server_cert(&cert, &[], &name, &[], now()).is_ok());
    assert_eq!(super::dane::read_outcome(&v.outcome()), Some(PeerCert::Dane(DaneUsage::Ee)));
    // Mismatch: handshake refused.
    let v = super::dane::S2sServerVerifier::new(vec!["a.example".into()], Some(vec![tlsa(3, 1, 1, b"x")]), r, provider);
    assert!(v.verify_server_cert(&cert, &[], &name, &[], now()).is_err());
    assert_eq!(super::dane::read_outcome(&v.outcome()), Some(PeerCert::DaneMismatch));
}

#[test]
fn client_cert_verifier_requests_but_does_not_require() {
    use rustls::server::danger::ClientCertVerifier;
    let v = super::dane::S2sClientCertVerifier::new(Arc::new(rustls::crypto::ring::default_provider()));
    assert!(v.offer_client_auth());
    assert!(!v.client_auth_mandatory());
    assert!(!v.supported_verify_schemes().is_empty());
}

// --- SRV order -------------------------------------------------------------

fn rec(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
    SrvRecord { priority, weight, port, target: target.into() }
}

fn hosts(c: &[Candidate]) -> Vec<(&str, u16, bool)> {
    c.iter().map(|c| (c.host.as_str(), c.port, c.direct_tls)).collect()
}

#[test]
fn srv_merges_both_services_by_priority() {
    let mut rng = |_| 0;
    let out = merge(
        "a.example",
        vec![rec(20, 0, 5270, "tls2.a.example"), rec(5, 0, 5270, "tls1.a.example")],
        vec![rec(10, 0, 5269, "plain.a.example"), rec(5, 0, 5269, "plain0.a.example")],
        &mut rng,
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        hosts(&out),
        vec![
            ("tls1.a.example", 5270, true),
            ("plain0.a.example", 5269, false),
            ("plain.a.example", 5269, false),
            ("tls2.a.example", 5270, true),
        ]
    );
}

#[test]
fn srv_weights_pick_by_running_sum() {
    // Weights 10 and 90: a draw of 0..=10 picks the first, 11..=100 the second (RFC 2782).
    let recs = || vec![rec(1, 10, 1, "light"), rec(1, 90, 2, "heavy")];
    let first = |draw: u32| {
        let mut rng = move |_| draw;
        merge("d", vec![], recs(), &mut rng).unwrap().unwrap()[0].host.clone()
    };
    assert_eq!(first(0), "light");
    assert_eq!(first(10), "light");
    assert_eq!(first(11), "heavy");
    assert_eq!(first(100), "heavy");
    // Zero-weight records come first in the list, so only a draw of 0 picks them first.
    let mut rng = |_| 50;
    let out = merge("d", vec![], vec![rec(1, 50, 1, "w"), rec(1, 0, 2, "zero")], &mut rng).unwrap().unwrap();
    assert_eq!(out[0].host, "w");
    let mut rng = |_| 0;
    let out = merge("d", vec![], vec![rec(1, 50, 1, "w"), rec(1, 0, 2, "zero")], &mut rng).unwrap().unwrap();
    assert_eq!(out[0].host, "zero");
}

#[test]
fn srv_dot_target_and_empty() {
    let mut rng = |_| 0;
    assert!(merge("d", vec![], vec![], &mut rng).unwrap().is_none(), "no SRV: fallback");
    assert!(matches!(
        merge("d", vec![rec(0, 0, 0, "")], vec![rec(0, 0, 0, "")], &mut rng),
        Err(DnsError::NoService { .. })
    ));
    assert!(matches!(merge("d", vec![], vec![rec(0, 0, 0, "")], &mut rng), Err(DnsError::NoService { .. })));
    // "." for direct TLS only: STARTTLS targets are still used.
    let out = merge("d", vec![rec(0, 0, 0, "")], vec![rec(1, 0, 5269, "x")], &mut rng).unwrap().unwrap();
    assert_eq!(hosts(&out), vec![("x", 5269, false)]);
}

// --- trust anchor, routes, names -------------------------------------------

#[test]
fn anchor_accepts_dnskey_lines_and_refuses_ds() {
    let key = ". IN DNSKEY 257 3 13 PV/zXwOd3M4/KteZyIVaS22Qdg9+NGko4phBc/nSQS/C4Lmx/mibBcjjYNxPQGu6IEFTVzqf3rDWVqUNE2AARQ== ;{id = 36743 (ksk), size = 256b}\n";
    assert!(anchor::parse(key).is_ok());
    let unbound =
        format!("; autotrust trust anchor file\n;;id: . 1\n{} ;;state=2 [  VALID  ] ;;count=0\n", key.trim_end());
    assert!(anchor::parse(&unbound).is_ok());
    let tld = "test. 3600 IN DNSKEY 257 3 13 PV/zXwOd3M4/KteZyIVaS22Qdg9+NGko4phBc/nSQS/C4Lmx/mibBcjjYNxPQGu6IEFTVzqf3rDWVqUNE2AARQ==\n";
    assert!(anchor::parse(tld).is_ok());
    let err = |t: &str| anchor::parse(t).err().unwrap();
    let e = err(". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D\n");
    assert!(e.contains("DS record"), "{e}");
    assert!(err("; nothing\n").contains("no DNSKEY"));
    assert!(err(". IN A 1.2.3.4\n").contains("not a DNSKEY"));
    assert!(anchor::parse(". IN DNSKEY 257 3 13 !!!notbase64\n").is_err());
}

#[test]
fn route_parsing() {
    let r = cli::parse_route("b.example=10.1.2.3:5269").unwrap();
    assert_eq!((r.domain.as_str(), r.connect.as_str(), r.direct_tls), ("b.example", "10.1.2.3:5269", false));
    assert!(cli::parse_route("B.Example.=[::1]:5270,direct").unwrap().direct_tls);
    assert_eq!(cli::parse_route("b.example=h.example:5269,starttls").unwrap().connect, "h.example:5269");
    for bad in ["b.example", "b.example=host", "b.example=host:0", "b.example=h:1,tls", "=h:1", "b example=h:1"] {
        assert!(cli::parse_route(bad).is_err(), "{bad}");
    }
}

#[test]
fn domain_normalization() {
    assert_eq!(super::normalize_domain("A.Example.").unwrap(), "a.example");
    for bad in ["", ".", "a..b", "a b", &"x".repeat(64), "ünï.example"] {
        assert!(super::normalize_domain(bad).is_err(), "{bad:?}");
    }
}
