//! The s2s kinds driven byte by byte, as the daemon drives them.

use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::config::Config;
use crate::policy::{Policy, RateTable};
use crate::session::{CloseReason, Effect, PolicyBinding, StreamMachine};
use crate::stream::Condition;

const LOCAL: &str = "a.example";
const REMOTE: &str = "b.example";
const SECRET: &[u8] = b"test secret";

fn policy(extra: &str) -> Arc<Policy> {
    let text = format!(
        "[[tls.certificate]]\ndomains = [\"a.example\"]\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
         [[listener]]\nname = \"s2s\"\nkind = \"s2s\"\nbind = \"127.0.0.1:5269\"\nbackend = \"127.0.0.1:15269\"\n\
         [s2s]\ndomains = [\"a.example\"]\n{extra}"
    );
    let c = Config::parse(&text, std::path::Path::new("/etc/sw.toml")).expect("config");
    Arc::new(Policy::compile(&c.policy).expect("policy"))
}

fn settings(direct_tls: bool) -> S2sSettings {
    S2sSettings {
        local_domains: vec![LOCAL.to_owned()].into(),
        cert_domains: vec![LOCAL.to_owned()].into(),
        require_tls: true,
        direct_tls,
        limits: crate::xml::XmlLimits::default(),
        backend_limits: crate::xml::XmlLimits::default(),
        stream_id: "gwid".to_owned(),
        timeouts: crate::session::Timeouts::default(),
        dialback: Arc::new(DialbackSecret::new(SECRET)),
    }
}

fn binding(policy: Arc<Policy>) -> PolicyBinding {
    PolicyBinding { policy, rates: Arc::new(RateTable::new()), source_ip: "192.0.2.7".parse().unwrap() }
}

fn now() -> Instant {
    thread_local!(static T0: Instant = Instant::now());
    T0.with(|t| *t)
}

fn front(s: &mut impl StreamMachine) -> String {
    String::from_utf8(s.take_to_client()).unwrap()
}

fn back(s: &mut impl StreamMachine) -> String {
    String::from_utf8(s.take_to_backend()).unwrap()
}

fn effects(s: &mut impl StreamMachine) -> Vec<Effect> {
    std::iter::from_fn(|| s.poll_effect()).collect()
}

fn header(from: &str, to: &str, id: Option<&str>) -> String {
    let id = id.map(|i| format!(" id='{i}'")).unwrap_or_default();
    format!(
        "<?xml version='1.0'?><stream:stream from='{from}' to='{to}'{id} version='1.0' xmlns='jabber:server' \
         xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams'>"
    )
}

const BACK_FEATURES: &str =
    "<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>";

/// An inbound stream over direct TLS whose certificate check answered `cert`.
fn inbound_open(cert: PeerCert, extra_policy: &str) -> S2sInbound {
    let mut s = S2sInbound::new(settings(true), binding(policy(extra_policy)), now());
    s.client_bytes(header(REMOTE, LOCAL, None).as_bytes(), now());
    let out = front(&mut s);
    assert!(out.contains("from='a.example'") && out.contains("id='gwid'"), "{out}");
    assert_eq!(effects(&mut s), vec![Effect::CheckPeerCertificate { domain: REMOTE.into() }]);
    s.peer_certificate(REMOTE, cert);
    s
}

/// Present the pair to our server and have it accept.
fn backend_accepts(s: &mut S2sInbound) {
    s.backend_connected();
    let hdr = back(s);
    assert!(hdr.contains("from='b.example'") && hdr.contains("to='a.example'"), "{hdr}");
    assert!(hdr.contains("xmlns:db='jabber:server:dialback'"), "{hdr}");
    s.backend_bytes(header(LOCAL, REMOTE, Some("srv1")).as_bytes(), now());
    s.backend_bytes(BACK_FEATURES.as_bytes(), now());
    let key = DialbackSecret::new(SECRET).key(LOCAL, REMOTE, "srv1");
    assert_eq!(
        back(s),
        format!("<db:result from='b.example' to='a.example'>{key}</db:result>"),
        "the gateway presents the pair with a key it minted"
    );
    s.backend_bytes(b"<db:result type='valid' from='a.example' to='b.example'/>", now());
}

#[test]
fn dialback_keys_follow_xep_0185_and_verify() {
    let s = DialbackSecret::new(SECRET);
    let k = s.key("a.example", "b.example", "id1");
    assert_eq!(k.len(), 64);
    assert!(s.verify("a.example", "b.example", "id1", &k));
    assert!(s.verify("A.example", "b.example", "id1", &k), "domains compare case-insensitively");
    assert!(!s.verify("b.example", "a.example", "id1", &k), "direction matters");
    assert!(!s.verify("a.example", "b.example", "id2", &k), "bound to the stream id");
    assert!(!DialbackSecret::new(b"other").verify("a.example", "b.example", "id1", &k));
    assert!(!s.verify("a.example", "b.example", "id1", "zz"));
}

#[test]
fn inbound_requires_starttls_before_dialback() {
    let mut s = S2sInbound::new(settings(false), binding(policy("")), now());
    s.client_bytes(header(REMOTE, LOCAL, None).as_bytes(), now());
    let out = front(&mut s);
    assert!(out.contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"), "{out}");
    s.client_bytes(b"<db:result from='b.example' to='a.example'>k</db:result>", now());
    assert!(front(&mut s).contains("<policy-violation"));
    let e = effects(&mut s);
    assert!(e.iter().any(|e| matches!(e, Effect::S2sRefused { .. })), "{e:?}");
    assert!(!e.iter().any(|e| matches!(e, Effect::ConnectBackend { .. })), "nothing reaches the backend");
}

#[test]
fn inbound_dialback_verified_then_presented_then_relayed() {
    let mut s = inbound_open(PeerCert::Invalid("self-signed".into()), "");
    let out = front(&mut s);
    assert!(!out.contains("EXTERNAL"), "no SASL EXTERNAL without a valid certificate: {out}");
    assert!(out.contains("urn:xmpp:features:dialback"));
    s.client_bytes(b"<db:result from='b.example' to='a.example'>peerkey</db:result>", now());
    assert_eq!(
        effects(&mut s),
        vec![Effect::VerifyDialback {
            remote: REMOTE.into(),
            local: LOCAL.into(),
            id: "gwid".into(),
            key: "peerkey".into()
        }]
    );
    // Pipelined stanza waits until the pair is usable.
    s.client_bytes(b"<message from='eve@b.example' to='bob@a.example'><body>hi</body></message>", now());
    assert_eq!(back(&mut s), "");
    s.dialback_result(REMOTE, LOCAL, Ok(true));
    let e = effects(&mut s);
    assert!(matches!(&e[0], Effect::S2sAuthenticated(a) if a.method == AuthMethod::Dialback), "{e:?}");
    assert_eq!(e[1], Effect::ConnectBackend { domain: LOCAL.into() });
    assert_eq!(front(&mut s), "", "the peer learns nothing before our server accepted");
    backend_accepts(&mut s);
    assert_eq!(front(&mut s), "<db:result from='a.example' to='b.example' type='valid'/>");
    assert_eq!(back(&mut s), "<message from='eve@b.example' to='bob@a.example'><body>hi</body></message>");
    // A forged domain on the authenticated stream.
    s.client_bytes(b"<message from='mallory@c.example' to='bob@a.example'><body>x</body></message>", now());
    assert!(front(&mut s).contains("<invalid-from"));
    assert_eq!(back(&mut s), "</stream:stream>");
    assert!(s.is_closed());
}

#[test]
fn inbound_failed_dialback_never_reaches_the_backend() {
    let mut s = inbound_open(PeerCert::None, "");
    front(&mut s);
    s.client_bytes(b"<db:result from='b.example' to='a.example'>forged</db:result>", now());
    effects(&mut s);
    s.dialback_result(REMOTE, LOCAL, Ok(false));
    let out = front(&mut s);
    assert!(out.contains("type='invalid'") && out.contains("<not-authorized"), "{out}");
    let e = effects(&mut s);
    assert!(!e.iter().any(|e| matches!(e, Effect::ConnectBackend { .. })), "{e:?}");
    assert!(e.iter().any(
        |e| matches!(e, Effect::Close(CloseReason::ClientError(err)) if err.condition == Condition::NotAuthorized)
    ));
    assert_eq!(back(&mut s), "");
}

#[test]
fn inbound_sasl_external_with_a_valid_certificate() {
    let mut s = inbound_open(PeerCert::Pkix, "");
    assert!(front(&mut s).contains("<mechanism>EXTERNAL</mechanism>"));
    s.client_bytes(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>Yi5leGFtcGxl</auth>", now());
    assert_eq!(front(&mut s), "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    let e = effects(&mut s);
    assert!(
        matches!(&e[0], Effect::S2sAuthenticated(a) if a.method == AuthMethod::SaslExternal && a.cert == PeerCert::Pkix)
    );
    backend_accepts(&mut s);
    s.client_bytes(header(REMOTE, LOCAL, None).as_bytes(), now());
    let out = front(&mut s);
    assert!(!out.contains("EXTERNAL") && out.contains("features"), "{out}");
    s.client_bytes(b"<iq type='get' id='1' from='b.example' to='a.example'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", now());
    assert!(back(&mut s).starts_with("<iq type='get' id='1'"));
}

#[test]
fn inbound_sasl_external_refuses_a_foreign_authzid() {
    let mut s = inbound_open(PeerCert::Pkix, "");
    front(&mut s);
    // base64("c.example")
    s.client_bytes(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>Yy5leGFtcGxl</auth>", now());
    assert!(front(&mut s).contains("<not-authorized"));
    assert!(effects(&mut s).is_empty());
}

#[test]
fn inbound_require_pkix_refuses_dialback_with_an_invalid_certificate() {
    let mut s = inbound_open(
        PeerCert::Invalid("certificate expired".into()),
        "require_authenticated = { \"b.example\" = \"pkix\" }",
    );
    front(&mut s);
    s.client_bytes(b"<db:result from='b.example' to='a.example'>k</db:result>", now());
    let out = front(&mut s);
    assert!(out.contains("type='invalid'") && out.contains("<not-authorized") && out.contains("expired"), "{out}");
    assert!(!effects(&mut s).iter().any(|e| matches!(e, Effect::VerifyDialback { .. })));
}

#[test]
fn inbound_valid_certificate_answers_dialback_at_once() {
    let mut s = inbound_open(PeerCert::Dane, "");
    front(&mut s);
    s.client_bytes(b"<db:result from='b.example' to='a.example'>k</db:result>", now());
    let e = effects(&mut s);
    assert!(
        matches!(&e[0], Effect::S2sAuthenticated(a) if a.method == AuthMethod::DialbackCertificate && a.cert == PeerCert::Dane),
        "{e:?}"
    );
}

#[test]
fn inbound_denied_domain_and_reload() {
    let mut s = S2sInbound::new(settings(true), binding(policy("deny = [\"b.example\"]")), now());
    s.client_bytes(header(REMOTE, LOCAL, None).as_bytes(), now());
    assert!(front(&mut s).contains("<policy-violation"));
    // Allowed at first, denied by a reload while open.
    let mut s = inbound_open(PeerCert::Pkix, "");
    front(&mut s);
    s.client_bytes(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>", now());
    effects(&mut s);
    backend_accepts(&mut s);
    back(&mut s);
    s.set_policy(policy("deny = [\"*.example\", \"b.example\"]"));
    assert!(front(&mut s).contains("<policy-violation"));
    assert_eq!(back(&mut s), "</stream:stream>");
    assert!(s.is_closed());
}

#[test]
fn inbound_answers_db_verify_for_keys_the_outbound_side_minted() {
    let mut s = inbound_open(PeerCert::None, "");
    front(&mut s);
    let key = DialbackSecret::new(SECRET).key(REMOTE, LOCAL, "their-id");
    s.client_bytes(
        format!("<db:verify from='b.example' to='a.example' id='their-id'>{key}</db:verify>").as_bytes(),
        now(),
    );
    assert_eq!(front(&mut s), "<db:verify from='a.example' to='b.example' id='their-id' type='valid'/>");
    s.client_bytes(b"<db:verify from='b.example' to='a.example' id='their-id'>0000</db:verify>", now());
    assert!(front(&mut s).contains("type='invalid'"));
}

#[test]
fn inbound_refuses_a_to_we_do_not_serve() {
    let mut s = S2sInbound::new(settings(true), binding(policy("")), now());
    s.client_bytes(header(REMOTE, "elsewhere.example", None).as_bytes(), now());
    assert!(front(&mut s).contains("<host-unknown"));
}

/// An outbound stream from our server, remote connected and under TLS with `cert`.
fn outbound_ready(cert: PeerCert, extra_policy: &str, remote_features: &str) -> S2sOutbound {
    let mut s = S2sOutbound::new(settings(false), binding(policy(extra_policy)), now());
    s.client_bytes(header(LOCAL, REMOTE, None).as_bytes(), now());
    let out = front(&mut s);
    assert!(out.contains("urn:xmpp:features:dialback") && !out.contains("starttls"), "{out}");
    s.client_bytes(b"<db:result from='a.example' to='b.example'>prosodykey</db:result>", now());
    assert_eq!(effects(&mut s), vec![Effect::ConnectBackend { domain: REMOTE.into() }]);
    s.backend_connected();
    assert!(back(&mut s).contains("from='a.example' to='b.example'"));
    s.backend_bytes(header(REMOTE, LOCAL, Some("r1")).as_bytes(), now());
    s.backend_bytes(b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>", now());
    assert_eq!(back(&mut s), "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    s.backend_bytes(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>", now());
    assert_eq!(effects(&mut s), vec![Effect::StartBackendTls]);
    s.remote_certificate(cert, Dnssec::Secure);
    s.backend_tls_established();
    assert!(back(&mut s).contains("<stream:stream from='a.example' to='b.example'"));
    s.backend_bytes(header(REMOTE, LOCAL, Some("r2")).as_bytes(), now());
    s.backend_bytes(remote_features.as_bytes(), now());
    s
}

const EXTERNAL_FEATURES: &str = "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms></stream:features>";

#[test]
fn outbound_sasl_external_then_relay() {
    let mut s = outbound_ready(PeerCert::Dane, "", EXTERNAL_FEATURES);
    assert_eq!(back(&mut s), "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>YS5leGFtcGxl</auth>");
    s.backend_bytes(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>", now());
    assert_eq!(front(&mut s), "<db:result from='b.example' to='a.example' type='valid'/>");
    let e = effects(&mut s);
    assert!(
        matches!(&e[0], Effect::S2sAuthenticated(a) if a.direction == "out" && a.dnssec == Dnssec::Secure && a.cert == PeerCert::Dane),
        "{e:?}"
    );
    assert!(back(&mut s).contains("<stream:stream"), "restart after SASL");
    s.client_bytes(b"<message from='alice@a.example' to='bob@b.example'><body>hi</body></message>", now());
    assert_eq!(back(&mut s), "<message from='alice@a.example' to='bob@b.example'><body>hi</body></message>");
    s.client_bytes(b"<message from='alice@c.example' to='bob@b.example'><body>x</body></message>", now());
    assert!(front(&mut s).contains("<invalid-from"));
}

#[test]
fn outbound_dialback_when_no_external() {
    let mut s = outbound_ready(PeerCert::Invalid("unknown issuer".into()), "", BACK_FEATURES);
    let key = DialbackSecret::new(SECRET).key(REMOTE, LOCAL, "r2");
    assert_eq!(back(&mut s), format!("<db:result from='a.example' to='b.example'>{key}</db:result>"));
    s.backend_bytes(b"<db:result type='invalid' from='b.example' to='a.example'/>", now());
    let out = front(&mut s);
    assert!(out.contains("type='invalid'") && out.contains("remote-connection-failed"), "{out}");
    assert!(s.is_closed());
}

#[test]
fn outbound_require_pkix_refuses_an_invalid_certificate() {
    let mut s =
        outbound_ready(PeerCert::Invalid("wrong name".into()), "require_authenticated = \"pkix\"", BACK_FEATURES);
    let out = front(&mut s);
    assert!(
        out.contains("remote-connection-failed") && out.contains("<policy-violation") && out.contains("wrong name"),
        "{out}"
    );
    assert!(!back(&mut s).contains("<result"), "no dialback sent");
}

#[test]
fn outbound_refuses_plaintext_when_tls_is_required() {
    let mut s = S2sOutbound::new(settings(false), binding(policy("")), now());
    s.client_bytes(header(LOCAL, REMOTE, None).as_bytes(), now());
    s.client_bytes(b"<db:result from='a.example' to='b.example'>k</db:result>", now());
    effects(&mut s);
    s.backend_connected();
    s.backend_bytes(header(REMOTE, LOCAL, Some("r1")).as_bytes(), now());
    s.backend_bytes(BACK_FEATURES.as_bytes(), now());
    let out = front(&mut s);
    assert!(out.contains("remote-connection-failed") && out.contains("does not offer TLS"), "{out}");
    assert!(!back(&mut s).contains("<result"));
}

#[test]
fn outbound_denied_domain_never_connects() {
    let mut s = S2sOutbound::new(settings(false), binding(policy("deny = [\"b.example\"]")), now());
    s.client_bytes(header(LOCAL, REMOTE, None).as_bytes(), now());
    assert!(front(&mut s).contains("<policy-violation"));
    assert!(!effects(&mut s).iter().any(|e| matches!(e, Effect::ConnectBackend { .. })));
}

#[test]
fn outbound_answers_our_servers_db_verify_locally() {
    let mut s = S2sOutbound::new(settings(false), binding(policy("")), now());
    s.client_bytes(header(LOCAL, REMOTE, None).as_bytes(), now());
    front(&mut s);
    let key = DialbackSecret::new(SECRET).key(LOCAL, REMOTE, "srv1");
    s.client_bytes(format!("<db:verify from='a.example' to='b.example' id='srv1'>{key}</db:verify>").as_bytes(), now());
    assert!(front(&mut s).contains("type='valid'"));
    s.client_bytes(b"<db:verify from='a.example' to='b.example' id='srv1'>bad</db:verify>", now());
    assert!(front(&mut s).contains("type='invalid'"));
    assert!(effects(&mut s).is_empty(), "never sent out");
    assert_eq!(back(&mut s), "");
}

#[test]
fn verify_stream_asks_and_reads_the_answer() {
    let mut v = DialbackVerify::new(LOCAL, REMOTE, "gwid", "k1", true, false);
    assert!(String::from_utf8(v.take_output()).unwrap().contains("to='b.example'"));
    assert_eq!(v.feed(header(REMOTE, LOCAL, Some("x")).as_bytes()), VerifyStep::Continue);
    assert_eq!(
        v.feed(b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>"),
        VerifyStep::Continue
    );
    assert_eq!(v.take_output(), b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    assert_eq!(v.feed(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"), VerifyStep::StartTls);
    v.tls_established();
    v.take_output();
    v.feed(header(REMOTE, LOCAL, Some("y")).as_bytes());
    v.feed(BACK_FEATURES.as_bytes());
    assert_eq!(
        String::from_utf8(v.take_output()).unwrap(),
        "<db:verify from='a.example' to='b.example' id='gwid'>k1</db:verify>"
    );
    assert_eq!(
        v.feed(b"<db:verify from='b.example' to='a.example' id='gwid' type='valid'/>"),
        VerifyStep::Done(Ok(true))
    );
    let mut plain = DialbackVerify::new(LOCAL, REMOTE, "gwid", "k1", true, false);
    plain.feed(header(REMOTE, LOCAL, Some("x")).as_bytes());
    assert!(matches!(plain.feed(BACK_FEATURES.as_bytes()), VerifyStep::Done(Err(e)) if e.contains("TLS")));
}

#[test]
fn dialback_elements_keep_their_prefix_and_parse_back() {
    let mut out = Vec::new();
    db("result", "a.example", "b.example").with_text("k&1").write_s2s(&mut out);
    db_error("result", "a.example", "b.example", "item-not-found").write_s2s(&mut out);
    db("verify", "a.example", "b.example").with_attr("id", "i").with_attr("type", "valid").write_s2s(&mut out);
    let text = String::from_utf8(out.clone()).unwrap();
    assert_eq!(
        text,
        "<db:result from='a.example' to='b.example'>k&amp;1</db:result>\
         <db:result from='a.example' to='b.example' type='error'><error xmlns='jabber:server' type='cancel'>\
         <item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>\
         <db:verify from='a.example' to='b.example' id='i' type='valid'/>"
    );
    // What we write parses back to the same elements under an s2s header.
    let mut bytes = Vec::new();
    crate::stream::Header::default().write_s2s(&mut bytes);
    bytes.extend_from_slice(&out);
    let mut r = crate::xml::StreamReader::new(crate::xml::XmlLimits::default());
    r.feed(&bytes);
    assert!(matches!(r.next_event(), Ok(Some(crate::xml::XmlEvent::StreamOpen { .. }))));
    let Ok(Some(crate::xml::XmlEvent::Stanza(first))) = r.next_event() else { panic!("no element") };
    assert!(first.is(NS_DIALBACK, "result") && first.text() == "k&1");
    let Ok(Some(crate::xml::XmlEvent::Stanza(second))) = r.next_event() else { panic!("no element") };
    assert!(second.child(crate::xml::NS_SERVER, "error").is_some());
}

#[test]
fn per_domain_stanza_rate_bounces_the_excess() {
    // "1/minute" with a burst of 10: the eleventh stanza of b.example in the minute is bounced
    // back to its sender on the same stream; the stream stays up.
    let mut s = inbound_open(PeerCert::Pkix, "stanza_rate_per_domain = \"1/minute\"");
    front(&mut s);
    s.client_bytes(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>", now());
    effects(&mut s);
    backend_accepts(&mut s);
    s.client_bytes(header(REMOTE, LOCAL, None).as_bytes(), now());
    front(&mut s);
    back(&mut s);
    for i in 0..11 {
        s.client_bytes(
            format!("<message id='m{i}' from='eve@b.example' to='bob@a.example'><body>{i}</body></message>").as_bytes(),
            now(),
        );
    }
    let relayed = back(&mut s);
    assert_eq!(relayed.matches("<message").count(), 10, "{relayed}");
    let out = front(&mut s);
    assert!(out.contains("id='m10'") && out.contains("type='error'") && out.contains("policy-violation"), "{out}");
    assert!(!s.is_closed());
}

#[test]
fn per_domain_connection_rate_refuses_new_streams() {
    let p = policy("connection_rate_per_domain = \"1/hour\"");
    let rates = Arc::new(RateTable::new());
    let mut refused = 0;
    for _ in 0..12 {
        let b = PolicyBinding { policy: p.clone(), rates: rates.clone(), source_ip: "192.0.2.7".parse().unwrap() };
        let mut s = S2sInbound::new(settings(true), b, now());
        s.client_bytes(header(REMOTE, LOCAL, None).as_bytes(), now());
        s.peer_certificate(REMOTE, PeerCert::None);
        s.client_bytes(b"<db:result from='b.example' to='a.example'>k</db:result>", now());
        if front(&mut s).contains("too many streams") {
            refused += 1;
        }
    }
    assert_eq!(refused, 2, "a burst of 10, then refused");
}

/// An inbound stream after SASL EXTERNAL, its pair accepted: stanzas flow.
fn inbound_ready(extra_policy: &str) -> S2sInbound {
    let mut s = inbound_open(PeerCert::Pkix, extra_policy);
    s.client_bytes(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>Yi5leGFtcGxl</auth>", now());
    backend_accepts(&mut s);
    s.client_bytes(header(REMOTE, LOCAL, None).as_bytes(), now());
    front(&mut s);
    effects(&mut s);
    back(&mut s);
    s
}

#[test]
fn inbound_stanza_to_an_unknown_roster_waits_for_the_fetch_then_is_judged() {
    let strangers = "[[rule]]\nname = \"strangers\"\nchain = \"s2s-in\"\n\
        when = { kind = \"message\", stranger = true }\naction = \"drop\"\n";
    let mut s = inbound_ready(strangers);
    let a = s.core.filter.rates.clone();
    let bob = crate::jid::parse("bob@a.example").unwrap().to_bare();
    let msg =
        |b: &str| format!("<message from='eve@b.example/x' to='bob@a.example' type='chat'><body>{b}</body></message>");
    // No component: nothing waits, the unknown roster fails open (as before).
    s.client_bytes(msg("one").as_bytes(), now());
    assert!(back(&mut s).contains("<body>one</body>"));
    // The component is up and a.example granted roster access: the next message waits, and
    // what follows it waits behind it.
    a.antispam().fetch.set_domains([LOCAL.to_owned()]);
    s.client_bytes(msg("two").as_bytes(), now());
    s.client_bytes(b"<presence from='eve@b.example/x' to='carol@a.example'/>", now());
    assert_eq!(back(&mut s), "", "held, and the presence behind it too");
    assert_eq!(s.paused(), (true, false));
    assert_eq!(s.poll_timeout(), Some(now() + crate::session::c2s::ROSTER_HOLD));
    assert_eq!(a.antispam().fetch.take_requests(), vec![bob.clone()]);
    s.wake(now());
    assert_eq!(back(&mut s), "", "nothing changed: still held");
    // The roster arrives without eve: a stranger, dropped; the presence goes on.
    let carol = crate::antispam::contacts::RosterItem {
        jid: crate::jid::parse("carol@a.example").unwrap(),
        present: true,
        contact: true,
    };
    a.antispam().contacts.replace(&bob, &[carol]);
    a.antispam().fetch.done(&bob, true, now());
    s.wake(now());
    assert_eq!(s.paused(), (false, false));
    let out = back(&mut s);
    assert!(!out.contains("<body>two</body>") && out.contains("<presence"), "{out}");
    // A fetch that never answers: decided at the 2 s with what is known (fail open).
    let dave = "<message from='eve@b.example/x' to='dave@a.example' type='chat'><body>three</body></message>";
    s.client_bytes(dave.as_bytes(), now());
    assert_eq!(back(&mut s), "");
    s.handle_timeout(now() + crate::session::c2s::ROSTER_HOLD - std::time::Duration::from_millis(1));
    assert_eq!(back(&mut s), "");
    s.handle_timeout(now() + crate::session::c2s::ROSTER_HOLD);
    assert!(back(&mut s).contains("<body>three</body>"), "unknown roster: fail open");
    assert!(!s.core.closed);
}
