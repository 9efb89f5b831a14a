use std::time::{Duration, Instant};

use super::*;
use crate::stanza::StanzaCondition;
use crate::stream::Condition;
use crate::xml::XmlLimits;

const CLIENT_HEADER: &str = "<?xml version='1.0'?><stream:stream to='example.test' version='1.0' \
    xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' xml:lang='en'>";
const BACKEND_HEADER: &str = "<?xml version='1.0'?><stream:stream from='example.test' id='b1' version='1.0' \
    xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
const BACKEND_SASL_FEATURES: &str = "<stream:features>\
    <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\
    <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1-PLUS</mechanism>\
    <mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>\
    <sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/></sasl-channel-binding>\
    <compression xmlns='http://jabber.org/features/compress'><method>zlib</method></compression>\
    <register xmlns='http://jabber.org/features/iq-register'/></stream:features>";
const BACKEND_BIND_FEATURES: &str = "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>\
    <sm xmlns='urn:xmpp:sm:3'/><csi xmlns='urn:xmpp:csi:0'/></stream:features>";

fn config(direct_tls: bool, backend_tls: BackendTls) -> SessionConfig {
    let limits = XmlLimits { stanza_bytes: 65536, depth: 16, attributes: 32 };
    SessionConfig {
        direct_tls,
        preauth_limits: XmlLimits { stanza_bytes: 4096, ..limits },
        limits,
        backend_limits: limits,
        backend_tls,
        stream_id: "gw1".to_owned(),
        timeouts: Timeouts::default(),
    }
}

/// A session accepted at a fixed time, with an empty policy (an empty policy is a policy).
fn new_session(cfg: SessionConfig) -> C2sSession {
    let binding = PolicyBinding {
        policy: std::sync::Arc::new(crate::policy::Policy::compile(&Default::default()).unwrap()),
        rates: std::sync::Arc::new(crate::policy::RateTable::new()),
        source_ip: "127.0.0.1".parse().unwrap(),
    };
    C2sSession::new(cfg, binding, t0())
}

/// The accept time of every test session.
fn t0() -> Instant {
    thread_local!(static T0: Instant = Instant::now());
    T0.with(|t| *t)
}

/// Feeding bytes at the session's current time (tests that are about time pass `now`).
trait Feed {
    fn feed_client(&mut self, data: &[u8]);
    fn feed_backend(&mut self, data: &[u8]);
}

impl Feed for C2sSession {
    fn feed_client(&mut self, data: &[u8]) {
        let now = self.now;
        self.client_bytes(data, now);
    }

    fn feed_backend(&mut self, data: &[u8]) {
        let now = self.now;
        self.backend_bytes(data, now);
    }
}

fn client_out(s: &mut C2sSession) -> String {
    String::from_utf8(s.take_to_client()).unwrap()
}

fn backend_out(s: &mut C2sSession) -> String {
    String::from_utf8(s.take_to_backend()).unwrap()
}

fn effects(s: &mut C2sSession) -> Vec<Effect> {
    std::iter::from_fn(|| s.poll_effect()).collect()
}

/// A session through STARTTLS, backend connected, SASL features relayed.
fn at_sasl() -> C2sSession {
    let mut s = new_session(config(false, BackendTls::Off));
    s.feed_client(CLIENT_HEADER.as_bytes());
    let out = client_out(&mut s);
    assert!(out.contains("<stream:stream from='example.test' id='gw1'"), "{out}");
    assert!(out.ends_with(
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>"
    ));
    s.feed_client(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    assert_eq!(client_out(&mut s), "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    assert_eq!(effects(&mut s), vec![Effect::StartClientTls { domain: "example.test".into() }]);
    s.client_tls_established();
    s.feed_client(CLIENT_HEADER.as_bytes());
    assert!(client_out(&mut s).starts_with("<?xml version='1.0'?><stream:stream from='example.test'"));
    assert_eq!(effects(&mut s), vec![Effect::ConnectBackend { domain: "example.test".into() }]);
    s.backend_connected();
    let hdr = backend_out(&mut s);
    assert!(hdr.contains("to='example.test'") && hdr.contains("xml:lang='en'"), "{hdr}");
    s.feed_backend(BACKEND_HEADER.as_bytes());
    s.feed_backend(BACKEND_SASL_FEATURES.as_bytes());
    s
}

/// Continue to a bound session as alice@example.test/phone.
fn bound() -> C2sSession {
    let mut s = at_sasl();
    client_out(&mut s);
    s.feed_client(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>");
    assert_eq!(
        backend_out(&mut s),
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>"
    );
    s.feed_backend(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    assert_eq!(client_out(&mut s), "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    assert_eq!(effects(&mut s), vec![Effect::Authenticated]);
    // The backend stream restarts at once; the client's restart is answered when it comes.
    assert!(backend_out(&mut s).starts_with("<?xml version='1.0'?><stream:stream to='example.test'"));
    s.feed_backend(BACKEND_HEADER.as_bytes());
    s.feed_backend(BACKEND_BIND_FEATURES.as_bytes());
    assert_eq!(client_out(&mut s), "", "features wait for the client's new header");
    s.feed_client(CLIENT_HEADER.as_bytes());
    let out = client_out(&mut s);
    assert!(out.starts_with("<?xml version='1.0'?><stream:stream"));
    assert!(out.ends_with(
        "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><sm xmlns='urn:xmpp:sm:3'/><csi xmlns='urn:xmpp:csi:0'/></stream:features>"
    ), "stream management v3 is relayed (its counters are rewritten): {out}");
    s.feed_client(b"<iq type='set' id='bind1' from='mallory@evil.test'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>phone</resource></bind></iq>");
    assert_eq!(
        backend_out(&mut s),
        "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>phone</resource></bind></iq>",
        "an unbound client's 'from' is removed"
    );
    s.feed_backend(b"<iq type='result' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@example.test/phone</jid></bind></iq>");
    let full = crate::jid::parse_full("alice@example.test/phone").unwrap();
    assert_eq!(effects(&mut s), vec![Effect::Bound(full)]);
    assert!(client_out(&mut s).contains("<jid>alice@example.test/phone</jid>"));
    s
}

#[test]
fn features_lose_what_cannot_cross_the_gateway() {
    let mut s = at_sasl();
    let out = client_out(&mut s);
    assert_eq!(
        out,
        "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
         <mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>\
         <register xmlns='http://jabber.org/features/iq-register'/></stream:features>"
    );
}

#[test]
fn bytes_after_starttls_never_reach_the_parser() {
    let mut s = new_session(config(false, BackendTls::Off));
    s.feed_client(CLIENT_HEADER.as_bytes());
    // STARTTLS command injection: plaintext smuggled behind <starttls/> must not be parsed.
    s.feed_client(
        b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><message to='x@y'><body>smuggled</body></message>",
    );
    client_out(&mut s);
    assert_eq!(effects(&mut s).len(), 1);
    assert_eq!(s.take_client_buffered(), b"<message to='x@y'><body>smuggled</body></message>");
    s.feed_client(b"<presence/>");
    assert_eq!(backend_out(&mut s), "");
    assert_eq!(client_out(&mut s), "");
}

#[test]
fn anything_but_starttls_before_tls_is_refused() {
    let mut s = new_session(config(false, BackendTls::Off));
    s.feed_client(CLIENT_HEADER.as_bytes());
    client_out(&mut s);
    s.feed_client(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>");
    let out = client_out(&mut s);
    assert!(out.contains("<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"), "{out}");
    assert!(out.ends_with("</stream:stream>"));
    assert!(
        matches!(effects(&mut s).as_slice(), [Effect::Close(CloseReason::ClientError(e))] if e.condition == Condition::PolicyViolation)
    );
    assert!(s.is_closed());
}

#[test]
fn bad_stream_headers_get_their_stream_errors() {
    for (header, cond) in [
        ("<stream:stream to='example.test' version='1.0' xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>", Condition::InvalidNamespace),
        ("<stream:stream to='example.test' version='1.0' xmlns='jabber:client' xmlns:stream='urn:wrong'>", Condition::InvalidNamespace),
        ("<stream:stream to='example.test' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>", Condition::UnsupportedVersion),
        ("<stream:stream to='example.test' version='2.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>", Condition::UnsupportedVersion),
        ("<stream:stream version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>", Condition::HostUnknown),
        ("<stream:stream to='a@b' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>", Condition::HostUnknown),
    ] {
        let mut s = new_session(config(false, BackendTls::Off));
        s.feed_client(header.as_bytes());
        let out = client_out(&mut s);
        // Our header first, then the error (RFC 6120 §4.9.1.2).
        assert!(out.starts_with("<?xml version='1.0'?><stream:stream"), "{out}");
        assert!(out.contains(&format!("<{} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", cond.as_str())), "{header}: {out}");
        assert!(s.is_closed());
    }
}

#[test]
fn channel_binding_auth_is_refused_locally() {
    let mut s = at_sasl();
    client_out(&mut s);
    s.feed_client(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1-PLUS'>cD10bHMtdW5pcXVlLCxuPWEscj1i</auth>");
    assert_eq!(client_out(&mut s), "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><invalid-mechanism/></failure>");
    assert_eq!(backend_out(&mut s), "");
    assert!(!s.is_closed());
}

#[test]
fn from_is_stamped_and_enforced() {
    let mut s = bound();
    s.feed_client(b"<message to='bob@example.test' type='chat'><body>hi</body></message>");
    assert_eq!(
        backend_out(&mut s),
        "<message to='bob@example.test' type='chat' from='alice@example.test/phone'><body>hi</body></message>"
    );
    s.feed_client(b"<presence from='Alice@Example.Test'/>");
    assert_eq!(backend_out(&mut s), "<presence from='alice@example.test/phone'/>");
    s.feed_client(b"<message from='bob@example.test/x' to='carol@example.test'><body>spoof</body></message>");
    assert_eq!(backend_out(&mut s), "</stream:stream>", "the spoofed stanza is not forwarded");
    let out = client_out(&mut s);
    assert!(out.contains("<invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"), "{out}");
    assert!(s.is_closed());
}

#[test]
fn malformed_stanza_never_reaches_the_backend() {
    for (payload, cond) in [
        ("<message><body>&xxe;</body></message>", Condition::RestrictedXml),
        ("<!DOCTYPE x [<!ENTITY xxe 'boom'>]><message/>", Condition::RestrictedXml),
        ("<message><body>unclosed</message>", Condition::NotWellFormed),
        ("<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>", Condition::InvalidXml),
        ("<evil xmlns='urn:x'/>", Condition::UnsupportedStanzaType),
    ] {
        let mut s = bound();
        backend_out(&mut s);
        s.feed_client(payload.as_bytes());
        assert_eq!(backend_out(&mut s), "</stream:stream>", "{payload}");
        let out = client_out(&mut s);
        assert!(
            out.contains(&format!("<{} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", cond.as_str())),
            "{payload}: {out}"
        );
        assert!(out.ends_with("</stream:stream>"));
    }
}

#[test]
fn oversized_preauth_stanza_is_refused() {
    let mut s = at_sasl();
    client_out(&mut s);
    let big = format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}", "A".repeat(5000));
    s.feed_client(big.as_bytes());
    let out = client_out(&mut s);
    assert!(out.contains("<policy-violation"), "{out}");
    assert!(out.contains("<stanza-too-big xmlns='urn:xmpp:errors'/>"), "{out}");
    assert_eq!(backend_out(&mut s), "</stream:stream>");
}

#[test]
fn backend_errors_and_closes_reach_the_client() {
    let mut s = bound();
    client_out(&mut s);
    s.feed_backend(b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>");
    assert_eq!(
        client_out(&mut s),
        "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
    );
    assert!(
        matches!(effects(&mut s).as_slice(), [Effect::Close(CloseReason::BackendError(e))] if e.condition == Condition::Conflict)
    );

    let mut s = bound();
    client_out(&mut s);
    s.feed_backend(b"</stream:stream>");
    assert_eq!(client_out(&mut s), "</stream:stream>");
    assert_eq!(effects(&mut s), vec![Effect::Close(CloseReason::BackendClosed)]);

    let mut s = bound();
    client_out(&mut s);
    s.backend_failed("connection reset");
    assert!(client_out(&mut s).contains("<internal-server-error"));
}

#[test]
fn client_close_and_shutdown_close_both_legs() {
    let mut s = bound();
    backend_out(&mut s);
    client_out(&mut s);
    s.feed_client(b"</stream:stream><message to='x@example.test'/>");
    assert_eq!(backend_out(&mut s), "</stream:stream>", "nothing after the client's close is read");
    assert!((s.client_phase == ClientPhase::Closing) && !s.is_closed());
    // RFC 6120 §4.4: what the backend sent before it saw the close still reaches the client.
    s.feed_backend(b"<message from='bob@example.test/x'><body>in flight</body></message></stream:stream>");
    assert_eq!(
        client_out(&mut s),
        "<message from='bob@example.test/x'><body>in flight</body></message></stream:stream>"
    );
    assert_eq!(effects(&mut s), vec![Effect::Close(CloseReason::ClientClosed)]);
    assert_eq!(backend_out(&mut s), "");

    // A backend that never answers the close is cut by the daemon's timer.
    let mut s = bound();
    backend_out(&mut s);
    client_out(&mut s);
    s.feed_client(b"</stream:stream>");
    s.handle_timeout(s.poll_timeout().unwrap());
    assert_eq!(client_out(&mut s), "</stream:stream>");
    assert_eq!(effects(&mut s), vec![Effect::Close(CloseReason::ClientClosed)]);

    let mut s = bound();
    backend_out(&mut s);
    client_out(&mut s);
    s.shutdown();
    assert_eq!(
        client_out(&mut s),
        "<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
    );
    assert_eq!(backend_out(&mut s), "</stream:stream>");
    assert_eq!(effects(&mut s), vec![Effect::Close(CloseReason::Shutdown)]);
}

#[test]
fn backend_starttls_is_negotiated_before_features_are_relayed() {
    let mut s = new_session(config(true, BackendTls::StartTls));
    s.feed_client(CLIENT_HEADER.as_bytes());
    client_out(&mut s);
    assert_eq!(effects(&mut s).len(), 1);
    s.backend_connected();
    backend_out(&mut s);
    s.feed_backend(BACKEND_HEADER.as_bytes());
    s.feed_backend(BACKEND_SASL_FEATURES.as_bytes());
    assert_eq!(backend_out(&mut s), "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    assert_eq!(client_out(&mut s), "");
    s.feed_backend(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    assert_eq!(effects(&mut s), vec![Effect::StartBackendTls]);
    s.backend_tls_established();
    assert!(backend_out(&mut s).contains("to='example.test'"));
    s.feed_backend(BACKEND_HEADER.as_bytes());
    s.feed_backend(BACKEND_SASL_FEATURES.as_bytes());
    let out = client_out(&mut s);
    assert!(
        out.contains("<mechanism>SCRAM-SHA-1</mechanism>") && !out.contains("PLUS") && !out.contains("starttls"),
        "{out}"
    );
}

#[test]
fn backend_requiring_tls_without_backend_tls_fails_clearly() {
    let mut s = new_session(config(true, BackendTls::Off));
    s.feed_client(CLIENT_HEADER.as_bytes());
    s.backend_connected();
    s.feed_backend(BACKEND_HEADER.as_bytes());
    s.feed_backend(
        b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>",
    );
    assert!(client_out(&mut s).contains("<internal-server-error"));
    assert!(
        matches!(effects(&mut s).last(), Some(Effect::Close(CloseReason::BackendFailed(BackendFailure::Config(why)))) if why.contains("backend_tls"))
    );
}

#[test]
fn elements_pipelined_before_features_wait_for_them() {
    // tsung writes its header and `<auth/>` at once; Prosody and ejabberd accept that.
    let mut s = new_session(config(true, BackendTls::Off));
    s.feed_client(
        format!("{CLIENT_HEADER}<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AA==</auth>")
            .as_bytes(),
    );
    assert!(!s.is_closed());
    assert!(!client_out(&mut s).contains("features"), "no features before the backend's");
    assert_eq!(effects(&mut s), vec![Effect::ConnectBackend { domain: "example.test".into() }]);
    assert_eq!(backend_out(&mut s), "", "nothing is written to a backend never connected");
    s.backend_connected();
    backend_out(&mut s);
    s.feed_backend(BACKEND_HEADER.as_bytes());
    assert_eq!(backend_out(&mut s), "", "still held until the features are out");
    s.feed_backend(BACKEND_SASL_FEATURES.as_bytes());
    assert!(client_out(&mut s).starts_with("<stream:features><mechanisms"));
    assert_eq!(backend_out(&mut s), "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AA==</auth>");
    // After SASL success the same: the restarted header and the bind request in one write.
    s.feed_backend(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    client_out(&mut s);
    backend_out(&mut s);
    s.feed_client(
        format!("{CLIENT_HEADER}<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
            .as_bytes(),
    );
    assert_eq!(backend_out(&mut s), "");
    s.feed_backend(BACKEND_HEADER.as_bytes());
    s.feed_backend(BACKEND_BIND_FEATURES.as_bytes());
    assert!(!s.is_closed());
    assert_eq!(backend_out(&mut s), "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>");
    let mut s = new_session(config(true, BackendTls::Off));
    s.feed_client(CLIENT_HEADER.as_bytes());
    // Held bytes are bounded by the pre-authentication stanza cap.
    s.feed_client(&[b' '; 5000]);
    assert!(s.is_closed());
    assert!(client_out(&mut s).contains("<policy-violation"));
}

#[test]
fn every_split_of_a_session_gives_the_same_output() {
    // The same client bytes fed whole or one byte at a time produce identical backend bytes.
    let script = "<message to='bob@example.test'><body>caf\u{e9} &amp; \u{1F600}</body></message>\
                  <iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq><presence/>";
    let mut whole = bound();
    backend_out(&mut whole);
    whole.feed_client(script.as_bytes());
    let expected = backend_out(&mut whole);
    let mut trickle = bound();
    backend_out(&mut trickle);
    for b in script.as_bytes() {
        trickle.feed_client(std::slice::from_ref(b));
    }
    assert_eq!(backend_out(&mut trickle), expected);
    assert_eq!(trickle.counters().stanzas_from_client, whole.counters().stanzas_from_client);
}

#[test]
fn to_is_prepared_or_bounced_as_jid_malformed() {
    let mut s = bound();
    backend_out(&mut s);
    s.feed_client("<message to='\u{ff42}ob@EXAMPLE.test' id='m1'><body>x</body></message>".as_bytes());
    assert_eq!(
        backend_out(&mut s),
        "<message to='bob@example.test' id='m1' from='alice@example.test/phone'><body>x</body></message>"
    );
    let long_local = "a".repeat(3072);
    for bad in [
        format!("{long_local}@example.test"),
        "@example.test".into(),
        "bo\"b@example.test".into(),
        "bob@exa mple.test".into(),
    ] {
        s.feed_client(format!("<message to='{bad}' id='m2'><body>x</body></message>").as_bytes());
        assert_eq!(backend_out(&mut s), "", "{bad} forwarded");
        let out = client_out(&mut s);
        assert!(out.starts_with("<message type='error' id='m2'"), "{out}");
        assert!(out.contains("<jid-malformed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"), "{out}");
        assert!(out.contains("to='alice@example.test/phone'"), "{out}");
        assert!(matches!(
            effects(&mut s).as_slice(),
            [Effect::Bounced { condition: StanzaCondition::JidMalformed, .. }]
        ));
    }
    // An error stanza is never answered with an error: dropped instead.
    s.feed_client(b"<message to='@bad' type='error' id='e1'/>");
    assert_eq!(client_out(&mut s), "");
    assert_eq!(backend_out(&mut s), "");
    assert!(matches!(effects(&mut s).as_slice(), [Effect::Dropped { from_backend: false, .. }]));
}

#[test]
fn iq_structure_is_enforced() {
    let mut s = bound();
    backend_out(&mut s);
    s.feed_client(b"<iq type='get' id='q1'><query xmlns='jabber:iq:roster'/><query xmlns='jabber:iq:version'/></iq>");
    assert_eq!(backend_out(&mut s), "");
    let out = client_out(&mut s);
    assert!(out.starts_with("<iq type='error' id='q1'") && out.contains("<bad-request"), "{out}");
    assert!(!s.is_closed());
    s.feed_client(b"<iq type='result' id='r1'/>");
    assert_eq!(backend_out(&mut s), "<iq type='result' id='r1' from='alice@example.test/phone'/>");
    s.feed_client(b"<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>");
    assert!(client_out(&mut s).contains("<invalid-xml"));
    assert!(s.is_closed());
}

#[test]
fn forged_carbons_and_roster_pushes_never_reach_the_client() {
    let mut s = bound();
    client_out(&mut s);
    let forged = "<message from='carol@example.test/x' to='alice@example.test/phone'>\
        <received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>\
        <message from='bob@example.test/y' to='alice@example.test'><body>forged</body></message>\
        </forwarded></received></message>";
    s.feed_backend(forged.as_bytes());
    assert_eq!(client_out(&mut s), "");
    assert!(matches!(effects(&mut s).as_slice(), [Effect::Dropped { from_backend: true, .. }]));
    let genuine = forged.replace("from='carol@example.test/x'", "from='alice@example.test'");
    s.feed_backend(genuine.as_bytes());
    assert!(client_out(&mut s).contains("forged"), "a carbon from the own account is delivered");

    s.feed_backend(b"<iq type='set' id='p1' from='carol@example.test/x' to='alice@example.test/phone'><query xmlns='jabber:iq:roster'><item jid='evil@example.test'/></query></iq>");
    assert_eq!(client_out(&mut s), "");
    let answer = backend_out(&mut s);
    assert!(
        answer.starts_with("<iq type='error' id='p1' from='alice@example.test/phone' to='carol@example.test/x'>"),
        "{answer}"
    );
    s.feed_backend(
        b"<iq type='set' id='p2'><query xmlns='jabber:iq:roster'><item jid='bob@example.test'/></query></iq>",
    );
    assert!(client_out(&mut s).contains("id='p2'"), "a roster push from the server is delivered");
}

#[test]
fn xml_1_1_is_refused() {
    let mut s = new_session(config(false, BackendTls::Off));
    s.feed_client(b"<?xml version='1.1'?><stream:stream to='example.test' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>");
    assert!(client_out(&mut s).contains("<not-well-formed"));
}

#[test]
fn whitespace_keepalives_cross_in_both_directions() {
    let mut s = bound();
    backend_out(&mut s);
    client_out(&mut s);
    s.feed_client(b" \n\t ");
    assert_eq!(backend_out(&mut s), " ", "one space per run");
    s.feed_backend(b"  ");
    assert_eq!(client_out(&mut s), " ");
}

#[test]
fn an_oversized_backend_stanza_is_skipped_not_fatal() {
    let mut s = bound();
    client_out(&mut s);
    backend_out(&mut s);
    // Deeper than the backend's depth cap (16 + 16 here), then a normal stanza.
    let deep = format!(
        "<message from='mallory@evil.test/x' to='alice@example.test/phone' id='d1'>{}{}</message>",
        "<x>".repeat(40),
        "</x>".repeat(40)
    );
    s.feed_backend(deep.as_bytes());
    s.feed_backend(b"<message from='bob@example.test/y'><body>next</body></message>");
    assert!(!s.is_closed());
    assert_eq!(client_out(&mut s), "<message from='bob@example.test/y'><body>next</body></message>");
    let bounce = backend_out(&mut s);
    assert!(
        bounce.starts_with("<message type='error' id='d1' from='alice@example.test/phone' to='mallory@evil.test/x'>"),
        "{bounce}"
    );
    assert!(bounce.contains("<policy-violation"), "{bounce}");
    assert!(matches!(effects(&mut s).as_slice(), [Effect::Dropped { from_backend: true, .. }]));
    // A body bigger than the backend cap, trickled: skipped too, nothing buffered for it.
    let mut s = bound();
    client_out(&mut s);
    s.feed_backend(b"<message from='bob@example.test/y' type='error'><body>");
    for _ in 0..100 {
        s.feed_backend(&[b'A'; 1000]);
    }
    s.feed_backend(b"</body></message><presence from='bob@example.test/y'/>");
    assert!(!s.is_closed());
    assert_eq!(client_out(&mut s), "<presence from='bob@example.test/y'/>");
    assert_eq!(backend_out(&mut s), "", "an error stanza is never answered");
}

#[test]
fn a_backend_stanza_that_is_not_namespace_well_formed_is_skipped_not_fatal() {
    // Prosody re-serializes a remote sender's `xml:foo` attribute with a prefix bound to the XML
    // namespace, which XML Namespaces §3 forbids: that stanza is dropped and bounced, the
    // recipient's session goes on.
    let mut s = bound();
    client_out(&mut s);
    backend_out(&mut s);
    s.feed_backend(
        b"<message from='mallory@evil.test/x' to='alice@example.test/phone' id='x1'><body>hi</body>\
        <x xmlns='urn:x:y' xmlns:ns1='http://www.w3.org/XML/1998/namespace' ns1:foo='1'/></message>",
    );
    s.feed_backend(b"<message from='bob@example.test/y'><body>next</body></message>");
    assert!(!s.is_closed());
    assert_eq!(client_out(&mut s), "<message from='bob@example.test/y'><body>next</body></message>");
    let bounce = backend_out(&mut s);
    assert!(
        bounce.starts_with("<message type='error' id='x1' from='alice@example.test/phone' to='mallory@evil.test/x'>"),
        "{bounce}"
    );
    assert!(bounce.contains("<policy-violation") && bounce.contains("not acceptable XML"), "{bounce}");
    assert_eq!(
        effects(&mut s),
        vec![Effect::Dropped {
            from_backend: true,
            stanza: StanzaSummary::of(
                &Element::new(NS_CLIENT, "message")
                    .with_attr("from", "mallory@evil.test/x")
                    .with_attr("to", "alice@example.test/phone")
                    .with_attr("id", "x1"),
                s.bound.as_ref()
            ),
            reason: "stanza from backend not namespace-well-formed",
        }]
    );
    // The same wrapped in an archive result from the user's own account: dropped, no error to
    // oneself.
    s.feed_backend(b"<message to='alice@example.test/phone' from='alice@example.test'><result xmlns='urn:xmpp:mam:2' id='r1'>\
        <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='mallory@evil.test/x'><body>hi</body>\
        <x xmlns='urn:x:y' xmlns:ns1='http://www.w3.org/XML/1998/namespace' ns1:foo='1'/></message></forwarded></result></message>");
    assert!(!s.is_closed());
    assert_eq!(client_out(&mut s), "");
    assert_eq!(backend_out(&mut s), "");
    // Framing corruption from the backend is still fatal.
    s.feed_backend(b"<message from='bob@example.test/y'><body>x</message>");
    assert!(s.is_closed());
}

#[test]
fn legacy_auth_is_neither_offered_nor_relayed() {
    let mut s = new_session(config(true, BackendTls::Off));
    s.feed_client(CLIENT_HEADER.as_bytes());
    s.backend_connected();
    s.feed_backend(BACKEND_HEADER.as_bytes());
    s.feed_backend(b"<stream:features><auth xmlns='http://jabber.org/features/iq-auth'/><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>");
    let out = client_out(&mut s);
    assert!(!out.contains("iq-auth") && out.contains("PLAIN"), "{out}");
    backend_out(&mut s);
    s.feed_client(b"<iq type='set' id='a1'><query xmlns='jabber:iq:auth'><username>alice</username><password>pw</password><resource>r</resource></query></iq>");
    assert_eq!(backend_out(&mut s), "");
    assert!(client_out(&mut s).contains("<service-unavailable"));
}

#[test]
fn milestones_after_close_write_nothing() {
    // Found by the session fuzz target: header + garbage in one read queues ConnectBackend and
    // then Close; a backend that connects afterwards must get nothing. (What follows the header
    // now waits for the features, unparsed, up to the pre-authentication cap: past it, the close.)
    let mut s = new_session(config(true, BackendTls::Off));
    s.feed_client(format!("{CLIENT_HEADER}{}", "junk".repeat(2000)).as_bytes());
    assert!(s.is_closed());
    client_out(&mut s);
    s.backend_connected();
    s.backend_tls_established();
    s.client_tls_established();
    assert_eq!(backend_out(&mut s), "");
    assert_eq!(client_out(&mut s), "");
}

#[test]
fn sasl_failures_are_reported_for_bans() {
    let mut s = at_sasl();
    client_out(&mut s);
    s.feed_client(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHdyb25n</auth>");
    s.feed_backend(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>");
    assert!(client_out(&mut s).contains("<not-authorized/>"));
    assert_eq!(effects(&mut s), vec![Effect::AuthFailed]);
    s.refuse(Condition::PolicyViolation, "too many authentication failures");
    assert!(client_out(&mut s).contains("<policy-violation"));
    assert!(s.is_closed());
}

fn with_policy(s: &mut C2sSession, rules: &str) -> Instant {
    use std::sync::Arc;
    let text = format!(
        "[[tls.certificate]]\ndomains = [\"example.test\"]\ncert = \"c\"\nkey = \"k\"\n\
         [[listener]]\nname = \"c2s\"\nkind = \"c2s\"\nbind = \"127.0.0.1:5222\"\nbackend = \"127.0.0.1:1\"\n{rules}"
    );
    let c = crate::config::Config::parse(&text, std::path::Path::new("/x.toml")).unwrap();
    let policy = crate::policy::Policy::compile(&c.policy).unwrap();
    s.filter = PolicyBinding {
        policy: Arc::new(policy),
        rates: Arc::new(crate::policy::RateTable::new()),
        source_ip: "127.0.0.1".parse().unwrap(),
    };
    s.now
}

const DROP_SPAM: &str = "[[rule]]\nname = \"spam\"\nwhen = { body_contains = \"spam\" }\naction = \"drop\"\n\
    [[rule]]\nname = \"bad\"\nwhen = { body_contains = \"bad\" }\naction = \"bounce\"\ntext = \"no\"\n";

fn msg(body: &str) -> String {
    format!("<message to='bob@example.test' type='chat'><body>{body}</body></message>")
}

#[test]
fn policy_verdicts_are_carried_out_and_reported() {
    let mut s = bound();
    with_policy(&mut s, DROP_SPAM);
    s.feed_client(msg("hello").as_bytes());
    assert!(backend_out(&mut s).contains("<body>hello</body>"));
    assert_eq!(effects(&mut s), vec![]);
    s.feed_client(msg("buy spam").as_bytes());
    assert_eq!(backend_out(&mut s), "");
    assert_eq!(client_out(&mut s), "");
    let fx = effects(&mut s);
    assert!(
        matches!(fx.as_slice(), [Effect::Policy(e)] if e.outcome == crate::policy::Disposition::Drop && &*e.hits[0].rule == "spam" && e.stanza.from.as_deref() == Some("alice@example.test/phone")),
        "{fx:?}"
    );
    s.feed_client(msg("bad").as_bytes());
    assert_eq!(backend_out(&mut s), "");
    let reply = client_out(&mut s);
    assert!(
        reply.starts_with("<message type='error' from='bob@example.test' to='alice@example.test/phone'>"),
        "{reply}"
    );
    assert!(reply.contains("<policy-violation") && reply.contains(">no</text>"), "{reply}");
    // Server → client: a bounce goes back to the remote sender through the backend.
    effects(&mut s);
    s.feed_backend(
        b"<message from='mallory@evil.test/x' to='alice@example.test/phone' id='m9'><body>bad</body></message>",
    );
    assert_eq!(client_out(&mut s), "");
    let back = backend_out(&mut s);
    assert!(
        back.starts_with("<message type='error' id='m9' from='alice@example.test/phone' to='mallory@evil.test/x'>"),
        "{back}"
    );
}

#[test]
fn stream_management_counters_hide_what_the_gateway_withheld_and_injected() {
    let mut s = bound();
    with_policy(&mut s, DROP_SPAM);
    s.feed_client(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>");
    assert_eq!(backend_out(&mut s), "<enable xmlns='urn:xmpp:sm:3'/>", "no resumption through the gateway");
    s.feed_backend(b"<enabled xmlns='urn:xmpp:sm:3' id='x' resume='true' location='10.0.0.5:5222'/>");
    assert_eq!(client_out(&mut s), "<enabled xmlns='urn:xmpp:sm:3'/>");
    // Client sends 4 stanzas: 2 forwarded, 1 dropped, 1 bounced (the bounce is injected toward
    // the client).
    for b in ["one", "spam", "two", "bad"] {
        s.feed_client(msg(b).as_bytes());
    }
    backend_out(&mut s);
    client_out(&mut s);
    s.feed_client(b"<r xmlns='urn:xmpp:sm:3'/>");
    assert_eq!(backend_out(&mut s), "<r xmlns='urn:xmpp:sm:3'/>");
    // The server handled the 2 it received; the client sent 4, all handled.
    s.feed_backend(b"<a xmlns='urn:xmpp:sm:3' h='2'/>");
    assert_eq!(client_out(&mut s), "<a xmlns='urn:xmpp:sm:3' h='4'/>");
    // The server sent 3 stanzas, one dropped by policy; the client received 2 plus the bounce.
    s.feed_backend(msg("three").as_bytes());
    s.feed_backend(msg("spam").as_bytes());
    s.feed_backend(msg("four").as_bytes());
    client_out(&mut s);
    s.feed_client(b"<a xmlns='urn:xmpp:sm:3' h='3'/>");
    assert_eq!(backend_out(&mut s), "<a xmlns='urn:xmpp:sm:3' h='3'/>", "bounce + 2 received = the server's 3");
    // An ack for more than the client was sent is a stream error, not a silent pass.
    s.feed_client(b"<a xmlns='urn:xmpp:sm:3' h='9'/>");
    assert!(client_out(&mut s).contains("undefined-condition"));
    assert!(s.is_closed());
}

#[test]
fn sm_resume_is_refused_by_the_gateway() {
    let mut s = bound();
    s.feed_client(b"<resume xmlns='urn:xmpp:sm:3' h='3' previd='abc'/>");
    assert_eq!(backend_out(&mut s), "");
    assert_eq!(
        client_out(&mut s),
        "<failed xmlns='urn:xmpp:sm:3'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    );
}

/// SASL done, stream restarted, features shown: the client may now bind.
fn authenticated() -> C2sSession {
    let mut s = at_sasl();
    client_out(&mut s);
    s.feed_client(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>");
    backend_out(&mut s);
    s.feed_backend(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    client_out(&mut s);
    backend_out(&mut s);
    s.feed_backend(BACKEND_HEADER.as_bytes());
    s.feed_backend(BACKEND_BIND_FEATURES.as_bytes());
    s.feed_client(CLIENT_HEADER.as_bytes());
    client_out(&mut s);
    effects(&mut s);
    s
}

const BIND: &str = "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>";

#[test]
fn nothing_but_one_bind_request_before_binding_completes() {
    // A second bind request would leave the gateway without the bound JID (policy off).
    let mut s = authenticated();
    s.feed_client(format!("{BIND}{}", BIND.replace("b1", "b2")).as_bytes());
    assert_eq!(backend_out(&mut s), format!("{BIND}</stream:stream>"));
    assert!(client_out(&mut s).contains("<not-authorized"));
    assert!(s.is_closed());
    // A stanza pipelined behind the request would be delivered unevaluated.
    let mut s = authenticated();
    s.feed_client(format!("{BIND}<message to='bob@example.test'><body>spam</body></message>").as_bytes());
    assert!(!backend_out(&mut s).contains("spam"));
    assert!(client_out(&mut s).contains("<not-authorized"));
    // Before the request too.
    let mut s = authenticated();
    s.feed_client(b"<presence/>");
    assert_eq!(backend_out(&mut s), "</stream:stream>");
    assert!(s.is_closed());
}

#[test]
fn resume_before_bind_fails_softly_and_enable_twice_keeps_the_counters() {
    let mut s = authenticated();
    s.feed_client(b"<resume xmlns='urn:xmpp:sm:3' h='3' previd='old'/>");
    assert!(client_out(&mut s).starts_with("<failed xmlns='urn:xmpp:sm:3'>"));
    assert!(!s.is_closed(), "the client may bind afresh");
    let mut s = bound();
    with_policy(&mut s, DROP_SPAM);
    s.feed_client(b"<enable xmlns='urn:xmpp:sm:3'/>");
    backend_out(&mut s);
    s.feed_backend(b"<enabled xmlns='urn:xmpp:sm:3'/>");
    client_out(&mut s);
    s.feed_client(format!("{}{}", msg("one"), msg("spam")).as_bytes());
    backend_out(&mut s);
    s.feed_client(b"<enable xmlns='urn:xmpp:sm:3'/>");
    assert_eq!(backend_out(&mut s), "", "a second enable is answered by the gateway");
    assert!(client_out(&mut s).contains("<unexpected-request"));
    s.feed_backend(b"<a xmlns='urn:xmpp:sm:3' h='1'/>");
    assert_eq!(client_out(&mut s), "<a xmlns='urn:xmpp:sm:3' h='2'/>", "counting went on");
}

#[test]
fn a_client_that_stops_reading_is_closed_as_such() {
    let mut s = bound();
    client_out(&mut s);
    backend_out(&mut s);
    s.feed_backend(b"<message from='bob@example.test/y'><body>unread</body></message>");
    s.client_not_reading();
    assert!(s.is_closed());
    assert_eq!(client_out(&mut s), "", "nothing more is queued for a client that does not read");
    assert_eq!(backend_out(&mut s), "</stream:stream>");
    let closes: Vec<_> = effects(&mut s).into_iter().filter(|e| matches!(e, Effect::Close(_))).collect();
    assert_eq!(closes, vec![Effect::Close(CloseReason::ClientNotReading)]);
    assert_eq!(CloseReason::ClientNotReading.to_string(), "client stopped reading");
    for reason in [CloseReason::ClientNotReading, CloseReason::ClientClosed, CloseReason::Shutdown] {
        assert!(CloseReason::KINDS.contains(&(reason.side(), reason.kind())), "{reason:?}");
    }
}

// -- timers: the core owns time (a fake clock, no sleeps) ------------------------------------

fn timeouts() -> Timeouts {
    Timeouts::default()
}

#[test]
fn slowloris_never_extends_the_handshake_deadline() {
    let mut s = new_session(config(true, BackendTls::Off));
    let deadline = t0() + timeouts().handshake;
    assert_eq!(s.poll_timeout(), Some(deadline));
    // A byte every 5 s: the header trickles in, the deadline does not move.
    for (i, b) in CLIENT_HEADER.bytes().take(5).enumerate() {
        let now = t0() + Duration::from_secs(5 * i as u64 + 1);
        s.client_bytes(&[b], now);
        s.handle_timeout(now);
        assert_eq!(s.poll_timeout(), Some(deadline), "byte {i}");
    }
    assert!(!s.is_closed());
    s.handle_timeout(deadline - Duration::from_millis(1));
    assert!(!s.is_closed(), "nothing is due before the deadline");
    s.handle_timeout(deadline);
    assert!(s.is_closed());
    let out = client_out(&mut s);
    assert!(out.contains("<connection-timeout"), "{out}");
    assert!(effects(&mut s)
        .contains(&Effect::Close(CloseReason::ClientError(StreamError::new(Condition::ConnectionTimeout, None)))));
    assert_eq!(s.poll_timeout(), None, "a closed session has no timer");
}

#[test]
fn idle_expiry_with_and_without_keepalives() {
    let idle = timeouts().idle;
    // Authenticated at t0: the idle deadline replaces the handshake deadline.
    let mut quiet = bound();
    assert_eq!(quiet.poll_timeout(), Some(t0() + idle));
    quiet.handle_timeout(t0() + idle - Duration::from_secs(1));
    assert!(!quiet.is_closed());
    quiet.handle_timeout(t0() + idle);
    assert!(quiet.is_closed());
    assert!(client_out(&mut quiet).contains("<connection-timeout"));

    // Whitespace keepalives from the client, then from the server, keep it alive.
    let mut alive = bound();
    client_out(&mut alive);
    let mut now = t0();
    for i in 0..6 {
        now += idle - Duration::from_secs(60);
        if i % 2 == 0 {
            alive.client_bytes(b" ", now);
        } else {
            alive.backend_bytes(b" ", now);
        }
        alive.handle_timeout(now);
        assert!(!alive.is_closed(), "keepalive {i}");
        assert_eq!(alive.poll_timeout(), Some(now + idle));
    }
    alive.handle_timeout(now + idle);
    assert!(alive.is_closed());
}

#[test]
fn the_close_handshake_waits_for_the_backend_then_ends() {
    let mut s = bound();
    client_out(&mut s);
    backend_out(&mut s);
    let closed_at = t0() + Duration::from_secs(7);
    s.client_bytes(b"</stream:stream>", closed_at);
    assert_eq!(backend_out(&mut s), "</stream:stream>");
    assert_eq!(s.poll_timeout(), Some(closed_at + timeouts().close));
    // What the backend still sends is relayed meanwhile.
    s.backend_bytes(b"<message from='bob@example.test/y'><body>late</body></message>", closed_at);
    assert!(client_out(&mut s).contains("late"));
    s.handle_timeout(closed_at + timeouts().close);
    assert!(s.is_closed());
    assert_eq!(client_out(&mut s), "</stream:stream>");
    assert!(effects(&mut s).contains(&Effect::Close(CloseReason::ClientClosed)));
}

#[test]
fn every_stanza_is_evaluated_even_before_binding() {
    // Fail closed (invariant 5): no stanza is forwarded unevaluated — the bind request
    // included, which has no bound JID yet.
    let mut s = at_sasl();
    with_policy(
        &mut s,
        "[[rule]]\nname = \"no-iq\"\nchain = \"c2s-in\"\nwhen = { kind = \"iq\" }\naction = \"close\"\n",
    );
    client_out(&mut s);
    s.feed_client(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>");
    assert!(backend_out(&mut s).starts_with("<auth"), "SASL is not a stanza: relayed");
    s.feed_backend(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    backend_out(&mut s);
    s.feed_backend(BACKEND_HEADER.as_bytes());
    s.feed_backend(BACKEND_BIND_FEATURES.as_bytes());
    s.feed_client(CLIENT_HEADER.as_bytes());
    client_out(&mut s);
    s.feed_client(b"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>");
    assert_eq!(backend_out(&mut s), "</stream:stream>", "the bind request was evaluated and refused");
    assert!(client_out(&mut s).contains("<policy-violation"));
}

/// What happened to one stanza, as the session did it or as `decide` (explain) says it.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    Forwarded,
    Bounced(String),
    Closed(String),
    Dropped,
}

fn session_fate(xml: &str, chain: crate::policy::Chain, rules: &str) -> Fate {
    let mut s = bound();
    with_policy(&mut s, rules);
    client_out(&mut s);
    backend_out(&mut s);
    effects(&mut s);
    match chain {
        crate::policy::Chain::C2sOut => s.feed_backend(xml.as_bytes()),
        _ => s.feed_client(xml.as_bytes()),
    }
    let (to_client, to_backend) = (client_out(&mut s), backend_out(&mut s));
    let (toward, back) = match chain {
        crate::policy::Chain::C2sOut => (&to_client, &to_backend),
        _ => (&to_backend, &to_client),
    };
    let condition = |text: &str| {
        let el = crate::xml::parse_stanzas(text.trim_end_matches("</stream:stream>"), XmlLimits::default())
            .ok()
            .and_then(|mut v| v.pop());
        el.and_then(|e| {
            e.elements()
                .find(|c| c.name == "error")
                .and_then(|err| err.elements().next().map(|c| c.name.clone()))
                .or_else(|| e.elements().next().map(|c| c.name.clone()))
        })
        .unwrap_or_default()
    };
    if s.is_closed() {
        Fate::Closed(condition(&to_client))
    } else if back.contains("type='error'") {
        Fate::Bounced(condition(back))
    } else if !toward.is_empty() {
        Fate::Forwarded
    } else {
        Fate::Dropped
    }
}

fn decided_fate(xml: &str, chain: crate::policy::Chain, rules: &str) -> Fate {
    let mut s = new_session(config(false, BackendTls::Off));
    with_policy(&mut s, rules);
    let user = crate::jid::parse_full("alice@example.test/phone").unwrap();
    let ctx = crate::policy::Context { chain, user: Some(&user), source_ip: "127.0.0.1".parse().unwrap() };
    let mut el = crate::xml::parse_stanzas(xml, XmlLimits::default()).unwrap().remove(0);
    match decide(&mut el, &ctx, &s.filter.policy, &*s.filter.rates, t0()) {
        Decision::Gateway(Check::Pass) => Fate::Forwarded,
        Decision::Gateway(Check::Close(c, _)) => Fate::Closed(c.as_str().to_owned()),
        Decision::Gateway(Check::Bounce(c, _)) if crate::stanza::may_bounce(&el) => {
            Fate::Bounced(c.as_str().to_owned())
        }
        Decision::Gateway(Check::Bounce(..) | Check::Drop(_)) => Fate::Dropped,
        Decision::Policy(eval) => match eval.outcome {
            crate::policy::Outcome::Pass | crate::policy::Outcome::Rewrite(_) => Fate::Forwarded,
            crate::policy::Outcome::Drop | crate::policy::Outcome::Quarantine => Fate::Dropped,
            crate::policy::Outcome::Bounce { condition, .. } if crate::stanza::may_bounce(&el) => {
                Fate::Bounced(condition.as_str().to_owned())
            }
            crate::policy::Outcome::Bounce { .. } => Fate::Dropped,
            crate::policy::Outcome::Close { condition, .. } => Fate::Closed(condition.as_str().to_owned()),
        },
    }
}

#[test]
fn explain_and_the_session_decide_alike() {
    use crate::policy::Chain::{C2sIn, C2sOut};
    let rules = "[[rule]]\nname = \"spam\"\nwhen = { body_contains = \"spam\" }\naction = \"drop\"\n\
        [[rule]]\nname = \"bad\"\nwhen = { body_contains = \"bad\" }\naction = \"bounce\"\n\
        [[rule]]\nname = \"boom\"\nwhen = { body_contains = \"boom\" }\naction = \"close\"\n\
        [[rule]]\nname = \"mallory\"\nchain = \"c2s-out\"\nwhen = { from = \"mallory@evil.test\" }\naction = \"drop\"\n";
    // The attack catalogue's stanza-level entries and the policy's outcomes, both directions.
    let table: &[(&str, crate::policy::Chain)] = &[
        ("<message to='bob@example.test' id='1'><body>hello</body></message>", C2sIn),
        ("<message to='bob@example.test' from='bob@example.test/x' id='2'><body>x</body></message>", C2sIn),
        ("<message to='bob@example.test' from='example.test' id='3'><body>x</body></message>", C2sIn),
        ("<message to='bob@example.test' from='alice@example.test' id='4'><body>x</body></message>", C2sIn),
        ("<message to='b@d@example.test' id='5'><body>x</body></message>", C2sIn),
        ("<iq type='get' to='example.test'><ping xmlns='urn:xmpp:ping'/></iq>", C2sIn),
        ("<iq type='get' id='6' to='example.test'><a xmlns='urn:a'/><b xmlns='urn:b'/></iq>", C2sIn),
        ("<iq type='set' id='7'><query xmlns='jabber:iq:auth'><username>a</username></query></iq>", C2sIn),
        ("<iq type='bogus' id='8'/>", C2sIn),
        ("<message to='bob@example.test' id='9'><body>spam</body></message>", C2sIn),
        ("<message to='bob@example.test' id='10'><body>bad</body></message>", C2sIn),
        ("<message to='bob@example.test' id='11' type='error'><body>bad</body></message>", C2sIn),
        ("<message to='bob@example.test' id='12'><body>boom</body></message>", C2sIn),
        (
            "<message to='bob@example.test' id='13'><forwarded xmlns='urn:xmpp:forward:0'>\
          <message xmlns='jabber:client'><body>bad</body></message></forwarded></message>",
            C2sIn,
        ),
        ("<message from='bob@example.test/y' id='20'><body>hello</body></message>", C2sOut),
        ("<message from='mallory@evil.test/x' id='21'><body>hello</body></message>", C2sOut),
        (
            "<message from='mallory@evil.test/x' id='22'><received xmlns='urn:xmpp:carbons:2'>\
          <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='bob@example.test/y'>\
          <body>x</body></message></forwarded></received></message>",
            C2sOut,
        ),
        ("<iq type='set' id='23' from='mallory@evil.test'><query xmlns='jabber:iq:roster'/></iq>", C2sOut),
        (
            "<message from='alice@example.test' id='24'><received xmlns='urn:xmpp:carbons:2'>\
          <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='mallory@evil.test/x'>\
          <body>x</body></message></forwarded></received></message>",
            C2sOut,
        ),
        ("<message from='bob@example.test/y' id='25'><body>bad</body></message>", C2sOut),
    ];
    let mut seen = Vec::new();
    for (xml, chain) in table {
        let (session, explain) = (session_fate(xml, *chain, rules), decided_fate(xml, *chain, rules));
        assert_eq!(session, explain, "{xml} ({chain:?})");
        seen.push(session);
    }
    // The table exercises every fate, with the conditions the catalogue expects.
    for fate in [
        Fate::Forwarded,
        Fate::Dropped,
        Fate::Closed("invalid-from".into()),
        Fate::Closed("invalid-xml".into()),
        Fate::Closed("policy-violation".into()),
        Fate::Bounced("jid-malformed".into()),
        Fate::Bounced("bad-request".into()),
        Fate::Bounced("service-unavailable".into()),
        Fate::Bounced("policy-violation".into()),
    ] {
        assert!(seen.contains(&fate), "{fate:?} not in {seen:?}");
    }
}

/// Records activations (the relay's registry in the daemon).
#[derive(Debug, Default)]
struct Activations(std::sync::Mutex<Vec<String>>);

impl crate::transfer::Activator for Activations {
    fn activate(&self, hash: &str, _requester: &str, _target: &str) -> Result<(), String> {
        self.0.lock().unwrap().push(hash.to_owned());
        Ok(())
    }
}

#[test]
fn the_proxy_jid_is_answered_by_the_gateway_and_offers_are_mediated() {
    let activations = std::sync::Arc::new(Activations::default());
    let settings = crate::transfer::ProxySettings {
        jid: "proxy.example.test".into(),
        host: "192.0.2.7".into(),
        port: 7777,
        mediate: true,
        upload_url: None,
    };
    let mut s = bound().with_file_transfer(settings, activations.clone());
    s.feed_client(
        b"<iq type='get' id='q1' to='proxy.example.test'><query xmlns='http://jabber.org/protocol/bytestreams'/></iq>",
    );
    assert_eq!(backend_out(&mut s), "", "the server never sees iqs to the gateway's proxy");
    let out = client_out(&mut s);
    assert!(out.contains("host='192.0.2.7'") && out.contains("port='7777'"), "{out}");
    s.feed_client(b"<iq type='set' id='a1' to='proxy.example.test'><query xmlns='http://jabber.org/protocol/bytestreams' sid='s1'><activate>bob@example.test/b</activate></query></iq>");
    assert_eq!(backend_out(&mut s), "");
    assert!(client_out(&mut s).contains("type='result'"));
    let hash = crate::transfer::socks5::stream_hash("s1", "alice@example.test/phone", "bob@example.test/b");
    assert_eq!(*activations.0.lock().unwrap(), vec![hash], "the hash names the bound user as requester");
    // An offer with a direct streamhost leaves with the gateway's proxy only.
    s.feed_client(b"<iq type='set' id='o1' to='bob@example.test/b'><query xmlns='http://jabber.org/protocol/bytestreams' sid='s2'><streamhost jid='alice@example.test/phone' host='10.1.1.1' port='6000'/></query></iq>");
    let out = backend_out(&mut s);
    assert!(out.contains("jid='proxy.example.test'") && !out.contains("10.1.1.1"), "{out}");
    // And one arriving from the server too; the server's disco#items lists the proxy.
    s.feed_backend(b"<iq type='set' id='o2' from='bob@example.test/b' to='alice@example.test/phone'><query xmlns='http://jabber.org/protocol/bytestreams' sid='s3'><streamhost jid='proxy.other.test' host='198.51.100.1' port='7777'/></query></iq>");
    let out = client_out(&mut s);
    assert!(out.contains("jid='proxy.example.test'") && !out.contains("proxy.other.test"), "{out}");
    s.feed_backend(b"<iq type='result' id='d1' from='example.test' to='alice@example.test/phone'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>");
    assert!(client_out(&mut s).contains("<item jid='proxy.example.test'/>"));
}

#[test]
fn in_band_bytestreams_are_inspected_with_the_last_block_held_until_close() {
    use base64::Engine;
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let eicar: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
    let digest = ring::digest::digest(&ring::digest::SHA256, eicar);
    let mut hashes = std::collections::HashSet::new();
    hashes.insert(<[u8; 32]>::try_from(digest.as_ref()).unwrap());
    let policy = std::sync::Arc::new(crate::transfer::InspectPolicy {
        hash_deny: hashes,
        dlp: Some(crate::transfer::Dlp::new(&["CONFIDENTIAL".into()], &[], false).unwrap()),
        ..Default::default()
    });
    let settings = crate::transfer::ProxySettings {
        jid: "proxy.example.test".into(),
        host: "192.0.2.7".into(),
        port: 7777,
        mediate: true,
        upload_url: None,
    };
    let new = || {
        bound()
            .with_file_transfer(settings.clone(), std::sync::Arc::new(Activations::default()))
            .with_ibb_inspection(policy.clone())
    };
    let open = "<iq type='set' id='o' to='bob@example.test/b'><open xmlns='http://jabber.org/protocol/ibb' sid='i1' block-size='4096'/></iq>";
    let data = |id: &str, seq: u16, d: &[u8]| {
        format!("<iq type='set' id='{id}' to='bob@example.test/b'><data xmlns='http://jabber.org/protocol/ibb' sid='i1' seq='{seq}'>{}</data></iq>", b64(d))
    };
    let close =
        "<iq type='set' id='c' to='bob@example.test/b'><close xmlns='http://jabber.org/protocol/ibb' sid='i1'/></iq>";

    // A clean file: each block is held until the next, acknowledged by the gateway; the
    // receiver's results for released blocks are swallowed.
    let mut s = new();
    s.feed_client(open.as_bytes());
    assert!(backend_out(&mut s).contains("<open"));
    s.feed_client(data("d0", 0, b"hello ").as_bytes());
    assert_eq!(backend_out(&mut s), "", "the latest block is held");
    assert!(client_out(&mut s).contains("id='d0'"), "and acknowledged by the gateway");
    s.feed_client(data("d1", 1, b"world").as_bytes());
    let out = backend_out(&mut s);
    assert!(out.contains("id='d0'") && !out.contains("id='d1'"), "{out}");
    s.feed_backend(b"<iq type='result' id='d0' from='bob@example.test/b' to='alice@example.test/phone'/>");
    assert_eq!(client_out(&mut s).matches("id='d0'").count(), 0, "the receiver's result is swallowed");
    s.feed_client(close.as_bytes());
    let out = backend_out(&mut s);
    let (d1, c) = (out.find("id='d1'").unwrap(), out.find("<close").unwrap());
    assert!(d1 < c, "the held block goes before the close: {out}");

    // EICAR by its hash: refused at close; the receiver never gets the tail, the sender an error.
    let mut s = new();
    s.feed_client(open.as_bytes());
    backend_out(&mut s);
    s.feed_client(data("e0", 0, &eicar[..40]).as_bytes());
    s.feed_client(data("e1", 1, &eicar[40..]).as_bytes());
    client_out(&mut s);
    assert!(backend_out(&mut s).contains("id='e0'"));
    s.feed_client(close.as_bytes());
    let out = backend_out(&mut s);
    assert!(!out.contains("id='e1'") && out.contains("<close") && !out.contains("id='c'"), "{out}");
    let err = client_out(&mut s);
    assert!(err.contains("id='c'") && err.contains("not-acceptable") && err.contains("hash"), "{err}");

    // DLP (small files are scanned whole at the close); after a refusal the stream is gone.
    let mut s = new();
    s.feed_client(open.as_bytes());
    backend_out(&mut s);
    s.feed_client(data("k0", 0, b"this is CONFIDENTIAL").as_bytes());
    client_out(&mut s);
    s.feed_client(close.as_bytes());
    assert!(client_out(&mut s).contains("keyword"));
    assert!(!backend_out(&mut s).contains("id='k0'"));
    s.feed_client(data("k1", 1, b"more").as_bytes());
    assert!(client_out(&mut s).contains("unknown in-band bytestream"));
    // Past the sniffing window DLP cuts mid-stream.
    let mut s = new();
    s.feed_client(open.as_bytes());
    backend_out(&mut s);
    let mut big = vec![b'a'; 9000];
    big.extend_from_slice(b" CONFIDENTIAL ");
    s.feed_client(data("m0", 0, &big).as_bytes());
    assert!(client_out(&mut s).contains("not-acceptable"));
    assert!(!backend_out(&mut s).contains("id='m0'"));
}

const STRANGERS: &str = "[[rule]]\nname = \"strangers\"\nchain = \"c2s-in\"\n\
    when = { kind = \"message\", stranger = true }\naction = \"bounce\"\ntext = \"stranger\"\n";

fn roster(jids: &[&str]) -> Vec<crate::antispam::contacts::RosterItem> {
    jids.iter()
        .map(|j| crate::antispam::contacts::RosterItem {
            jid: crate::jid::parse(j).unwrap(),
            present: true,
            contact: true,
        })
        .collect()
}

#[test]
fn a_stanza_to_an_unknown_roster_waits_for_the_fetch_and_what_follows_waits_behind_it() {
    let mut s = bound();
    let now = with_policy(&mut s, STRANGERS);
    let a = s.filter.rates.clone();
    let bob = crate::jid::parse("bob@example.test").unwrap().to_bare();
    // No component: nothing waits, the unknown roster fails open.
    s.feed_client(msg("one").as_bytes());
    assert!(backend_out(&mut s).contains("<body>one</body>"));
    // The component is up and example.test granted roster access: the next message waits.
    a.antispam().fetch.set_domains(["example.test".to_owned()]);
    s.feed_client(msg("two").as_bytes());
    s.feed_client(b"<presence/>");
    assert_eq!(backend_out(&mut s), "", "held, and the presence behind it too");
    assert_eq!(s.paused(), (true, false));
    assert_eq!(s.poll_timeout(), Some(now + ROSTER_HOLD));
    assert_eq!(a.antispam().fetch.take_requests(), vec![bob.clone()]);
    // Nothing changed: a wake-up leaves it held.
    s.wake(now);
    assert_eq!(backend_out(&mut s), "");
    // The roster arrives without alice in it: she is a stranger, then the presence goes on.
    a.antispam().contacts.replace(&bob, &roster(&["carol@example.test"]));
    a.antispam().fetch.done(&bob, true, now);
    s.wake(now);
    assert_eq!(s.paused(), (false, false));
    assert!(client_out(&mut s).contains(">stranger</text>"));
    assert_eq!(backend_out(&mut s), "<presence from='alice@example.test/phone'/>");
    // Known now: no wait.
    s.feed_client(msg("three").as_bytes());
    assert!(client_out(&mut s).contains(">stranger</text>"));
}

#[test]
fn a_held_stanza_is_decided_with_what_is_known_when_the_time_is_up() {
    let mut s = bound();
    let now = with_policy(&mut s, STRANGERS);
    let a = s.filter.rates.clone();
    a.antispam().fetch.set_domains(["example.test".to_owned()]);
    s.feed_client(msg("two").as_bytes());
    assert_eq!(backend_out(&mut s), "");
    s.handle_timeout(now + ROSTER_HOLD - std::time::Duration::from_millis(1));
    assert_eq!(backend_out(&mut s), "");
    s.handle_timeout(now + ROSTER_HOLD);
    assert!(backend_out(&mut s).contains("<body>two</body>"), "unknown roster: fail open");
    assert!(!s.is_closed());
    // A failed fetch releases at once, and the next stanza does not wait for a minute.
    let carol = crate::jid::parse("carol@example.test").unwrap().to_bare();
    s.feed_client(b"<message to='carol@example.test' type='chat'><body>x</body></message>");
    assert_eq!(backend_out(&mut s), "");
    a.antispam().fetch.take_requests();
    a.antispam().fetch.done(&carol, false, now);
    s.wake(now);
    assert!(backend_out(&mut s).contains("<body>x</body>"));
    s.feed_client(b"<message to='carol@example.test' type='chat'><body>y</body></message>");
    assert!(backend_out(&mut s).contains("<body>y</body>"));
}

#[test]
fn quarantined_stanzas_are_held_silently_and_released_into_the_session() {
    use crate::policy::Chain;
    let mut s = bound();
    with_policy(&mut s, "[[rule]]\nname = \"hold\"\nwhen = { body_contains = \"hold\" }\naction = \"quarantine\"\n");
    s.feed_client(msg("please hold").as_bytes());
    assert_eq!(backend_out(&mut s), "", "nothing reaches the server");
    assert_eq!(client_out(&mut s), "", "the sender is not told");
    let fx = effects(&mut s);
    let held = match fx.as_slice() {
        [Effect::Policy(e), Effect::Quarantine(h)] => {
            assert_eq!(e.outcome, crate::policy::Disposition::Quarantine);
            h.clone()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!((held.chain, held.rule.as_deref()), (Chain::C2sIn, Some("hold")));
    assert_eq!(held.summary.from.as_deref(), Some("alice@example.test/phone"));
    let stored = held.canonical();
    assert_eq!(
        stored,
        "<message xmlns='jabber:client' to='bob@example.test' type='chat' from='alice@example.test/phone'><body>please hold</body></message>"
    );
    // From the server toward the client: held the same way.
    s.feed_backend(b"<message from='mallory@evil.test/x' to='alice@example.test/phone'><body>hold me</body></message>");
    assert_eq!(client_out(&mut s), "");
    let fx = effects(&mut s);
    assert!(matches!(fx.as_slice(), [Effect::Policy(_), Effect::Quarantine(h)] if h.chain == Chain::C2sOut), "{fx:?}");
    // Released: parsed back from the stored text and written toward where it was going, once,
    // with the session's JID as sender on c2s-in.
    let el = crate::xml::parse_stanzas(&stored, XmlLimits::default()).unwrap().remove(0);
    s.deliver_released(Chain::C2sIn, el).unwrap();
    assert_eq!(
        backend_out(&mut s),
        "<message to='bob@example.test' type='chat' from='alice@example.test/phone'><body>please hold</body></message>"
    );
    let el = crate::xml::parse_stanzas(
        "<message from='mallory@evil.test/x' to='alice@example.test/phone'><body>hold me</body></message>",
        XmlLimits::default(),
    )
    .unwrap()
    .remove(0);
    s.deliver_released(Chain::C2sOut, el.clone()).unwrap();
    assert!(client_out(&mut s).contains("<body>hold me</body>"));
    assert_eq!(s.deliver_released(Chain::S2sIn, el.clone()), Err(crate::session::DeliverRefused::WrongStream));
    s.refuse(Condition::PolicyViolation, "bye");
    assert_eq!(s.deliver_released(Chain::C2sOut, el), Err(crate::session::DeliverRefused::Closed));
}

/// A bound session with Stream Management enabled both ways.
fn bound_with_sm() -> C2sSession {
    let mut s = bound();
    s.feed_client(b"<enable xmlns='urn:xmpp:sm:3'/>");
    backend_out(&mut s);
    s.feed_backend(b"<enabled xmlns='urn:xmpp:sm:3'/>");
    client_out(&mut s);
    effects(&mut s);
    s
}

#[test]
fn drain_without_stream_management_forwards_what_was_read_then_names_the_peer() {
    let mut s = bound();
    s.feed_client(msg("last").as_bytes());
    s.drain(StreamError::see_other_host("gw-b.example.test:5222", None), s.now);
    let back = backend_out(&mut s);
    assert!(back.contains("<body>last</body>") && back.ends_with("</stream:stream>"), "{back}");
    let out = client_out(&mut s);
    assert!(
        out.contains(
            "<see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>gw-b.example.test:5222</see-other-host>"
        ),
        "{out}"
    );
    assert!(s.is_closed());
    assert_eq!(effects(&mut s), vec![Effect::Close(CloseReason::Shutdown)]);
}

#[test]
fn drain_with_stream_management_settles_both_acknowledgements_first() {
    let mut s = bound_with_sm();
    // Two stanzas from the server delivered, three from the client forwarded.
    s.feed_backend(msg("in1").as_bytes());
    s.feed_backend(msg("in2").as_bytes());
    client_out(&mut s);
    for b in ["out1", "out2", "out3"] {
        s.feed_client(msg(b).as_bytes());
    }
    backend_out(&mut s);
    s.drain(StreamError::new(Condition::SystemShutdown, None), s.now);
    assert_eq!(client_out(&mut s), "<r xmlns='urn:xmpp:sm:3'/>");
    assert!(!s.is_closed());
    // A stanza from the server now is withheld: the server keeps it unacknowledged.
    s.feed_backend(msg("in3").as_bytes());
    assert_eq!(client_out(&mut s), "");
    // The client still sends (accepted and forwarded), then acknowledges all it was sent.
    s.feed_client(msg("out4").as_bytes());
    s.feed_client(format!("<a xmlns='urn:xmpp:sm:3' h='2'/>{}", msg("after-ack")).as_bytes());
    let back = backend_out(&mut s);
    assert!(back.contains("out4"), "{back}");
    assert!(back.contains("<a xmlns='urn:xmpp:sm:3' h='2'/><r xmlns='urn:xmpp:sm:3'/>"), "{back}");
    assert!(!back.contains("after-ack"), "what follows the client's ack is not accepted: {back}");
    s.feed_client(msg("later").as_bytes());
    assert_eq!(backend_out(&mut s), "");
    // A partial ack from the server does not end it; the covering one does.
    s.feed_backend(b"<a xmlns='urn:xmpp:sm:3' h='3'/>");
    assert!(!s.is_closed());
    s.feed_backend(b"<a xmlns='urn:xmpp:sm:3' h='4'/>");
    let out = client_out(&mut s);
    assert!(out.starts_with("<a xmlns='urn:xmpp:sm:3' h='3'/><a xmlns='urn:xmpp:sm:3' h='4'/>"), "{out}");
    assert!(out.contains("<system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"), "{out}");
    assert!(backend_out(&mut s).ends_with("</stream:stream>"));
    assert!(s.is_closed());
}

#[test]
fn drain_ends_at_its_deadline_without_an_answer() {
    let mut s = bound_with_sm();
    s.feed_backend(msg("in1").as_bytes());
    client_out(&mut s);
    let start = s.now;
    s.drain(StreamError::new(Condition::SystemShutdown, None), start);
    assert_eq!(client_out(&mut s), "<r xmlns='urn:xmpp:sm:3'/>");
    let due = s.poll_timeout().unwrap();
    assert!(due <= start + drain::DRAIN_ACK_TIMEOUT);
    s.handle_timeout(due - Duration::from_millis(1));
    assert!(!s.is_closed());
    s.handle_timeout(due);
    assert!(client_out(&mut s).contains("system-shutdown"));
    assert!(s.is_closed());
}

#[test]
fn drain_with_everything_acknowledged_ends_at_once() {
    let mut s = bound_with_sm();
    s.drain(StreamError::see_other_host("[2001:db8::1]:5222", None), s.now);
    assert!(client_out(&mut s).contains(">[2001:db8::1]:5222</see-other-host>"));
    assert!(s.is_closed());
}
