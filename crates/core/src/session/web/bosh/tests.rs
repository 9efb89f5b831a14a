use std::sync::Arc;
use std::time::{Duration, Instant};

use super::body::{parse_body, BodyError};
use super::http::{HttpEvent, HttpReader};
use super::leg::{LegDecoder, Record};
use super::*;
use crate::session::web::http::HostMetaLink;
use crate::session::{
    BackendTls, C2sSession, CloseReason, Effect, PolicyBinding, SessionConfig, StreamMachine, Timeouts,
};
use crate::xml::XmlLimits;

const SID: &str = "s3cr3tsid";
const NS: &str = "xmlns='http://jabber.org/protocol/httpbind'";
const BACKEND_HEADER: &str = "<?xml version='1.0'?><stream:stream from='example.test' id='b1' version='1.0' \
    xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
const FEATURES: &str = "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>";
const WAIT: u64 = 30;

fn limits() -> XmlLimits {
    XmlLimits { stanza_bytes: 65536, depth: 16, attributes: 32 }
}

fn preauth() -> XmlLimits {
    XmlLimits { stanza_bytes: 4096, ..limits() }
}

fn t0() -> Instant {
    thread_local!(static T0: Instant = Instant::now());
    T0.with(|t| *t)
}

fn bosh_config() -> BoshConfig {
    BoshConfig {
        domains: vec!["example.test".into()],
        max_request_bytes: 65536 + BODY_OVERHEAD,
        ..BoshConfig::default()
    }
}

fn session_with(rules: &str) -> BoshSession {
    let text = format!(
        "[[tls.certificate]]\ndomains = [\"example.test\"]\ncert = \"c\"\nkey = \"k\"\n\
         [[listener]]\nname = \"c2s\"\nkind = \"c2s\"\nbind = \"127.0.0.1:5222\"\nbackend = \"127.0.0.1:1\"\n{rules}"
    );
    let c = crate::config::Config::parse(&text, std::path::Path::new("/x.toml")).unwrap();
    let binding = PolicyBinding {
        policy: Arc::new(crate::policy::Policy::compile(&c.policy).unwrap()),
        rates: Arc::new(crate::policy::RateTable::new()),
        source_ip: "127.0.0.1".parse().unwrap(),
    };
    let cfg = SessionConfig {
        direct_tls: true,
        preauth_limits: preauth(),
        limits: limits(),
        backend_limits: limits(),
        backend_tls: BackendTls::Off,
        stream_id: "gw1".to_owned(),
        timeouts: Timeouts::default(),
    };
    BoshSession::new(
        Arc::new(bosh_config()),
        C2sSession::new(cfg, binding, t0()),
        SID.into(),
        preauth(),
        limits(),
        t0(),
    )
}

fn request(s: &mut BoshSession, handle: u64, body: &str, now: Instant) {
    s.client_bytes(&Record::Request { handle, body: body.as_bytes().to_vec() }.to_bytes(), now);
}

/// A request of this session with `rid` and `payload` inside.
fn req(rid: u64, payload: &str) -> String {
    format!("<body {NS} rid='{rid}' sid='{SID}'>{payload}</body>")
}

/// The answers written so far, by handle.
fn answers(s: &mut BoshSession) -> Vec<(u64, String)> {
    let mut d = LegDecoder::new(1 << 20);
    d.feed(&s.take_to_client());
    let mut out = Vec::new();
    for _ in 0..100 {
        match d.next_record().unwrap() {
            Some(Record::Response { handle, body }) => out.push((handle, String::from_utf8(body).unwrap())),
            Some(other) => panic!("{other:?}"),
            None => break,
        }
    }
    out
}

fn effects(s: &mut BoshSession) -> Vec<Effect> {
    std::iter::from_fn(|| s.poll_effect()).collect()
}

fn backend(s: &mut BoshSession) -> String {
    String::from_utf8(s.take_to_backend()).unwrap()
}

/// Created (rid 100 on handle 1) and answered with the features; rid 101 is next.
fn created_with(rules: &str) -> BoshSession {
    let mut s = session_with(rules);
    let now = t0();
    request(
        &mut s,
        1,
        &format!(
            "<body {NS} rid='100' to='example.test' xml:lang='en' wait='{WAIT}' hold='1' ver='1.6' \
             xmpp:version='1.0' xmlns:xmpp='urn:xmpp:xbosh'/>"
        ),
        now,
    );
    assert!(matches!(effects(&mut s).as_slice(), [Effect::ConnectBackend { domain }] if domain == "example.test"));
    assert!(answers(&mut s).is_empty(), "held until the stream has something to say");
    s.backend_connected();
    assert!(backend(&mut s).contains("to='example.test'"));
    s.backend_bytes(BACKEND_HEADER.as_bytes(), now);
    assert!(answers(&mut s).is_empty(), "the header alone is no payload");
    s.backend_bytes(FEATURES.as_bytes(), now);
    let a = answers(&mut s);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0].0, 1);
    let body = &a[0].1;
    for attr in [
        "sid='s3cr3tsid'",
        "wait='30'",
        "hold='1'",
        "requests='2'",
        "xmpp:version='1.0'",
        "xmpp:restartlogic='true'",
        "from='example.test'",
        "authid='gw1'",
    ] {
        assert!(body.contains(attr), "{attr} in {body}");
    }
    assert!(body.contains("<stream:features xmlns:stream='http://etherx.jabber.org/streams'><mechanisms"), "{body}");
    s
}

/// Logged in and bound as alice@example.test/web; rid 104 is next, nothing held.
fn bound_with(rules: &str) -> BoshSession {
    let mut s = created_with(rules);
    let now = t0();
    request(
        &mut s,
        2,
        &req(101, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>"),
        now,
    );
    assert_eq!(
        backend(&mut s),
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>"
    );
    s.backend_bytes(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>", now);
    let a = answers(&mut s);
    assert_eq!(a.len(), 1);
    assert!(a[0].1.contains("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"), "{a:?}");
    assert!(effects(&mut s).contains(&Effect::Authenticated));
    assert!(backend(&mut s).contains("<stream:stream"), "the backend leg restarts");
    s.backend_bytes(BACKEND_HEADER.as_bytes(), now);
    s.backend_bytes(b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>", now);
    assert!(answers(&mut s).is_empty(), "nothing is held: the client restarts first");
    // XEP-0206 §5: the restart request.
    request(
        &mut s,
        3,
        &format!(
            "<body {NS} rid='102' sid='{SID}' to='example.test' xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh'/>"
        ),
        now,
    );
    let a = answers(&mut s);
    assert_eq!(a.len(), 1, "{a:?}");
    assert!(a[0].1.contains("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"), "{a:?}");
    request(&mut s, 4, &req(103, "<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>web</resource></bind></iq>"), now);
    assert!(backend(&mut s).starts_with("<iq type='set' id='b1'>"));
    s.backend_bytes(b"<iq type='result' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@example.test/web</jid></bind></iq>", now);
    let a = answers(&mut s);
    assert!(a.len() == 1 && a[0].1.contains("<jid>alice@example.test/web</jid>"), "{a:?}");
    assert!(effects(&mut s).iter().any(|e| matches!(e, Effect::Bound(_))));
    s
}

#[test]
fn a_bosh_client_crosses_the_same_checks_and_policy_as_tcp() {
    let rules = "[[rule]]\nname = \"links\"\nwhen = { kind = \"message\", url_in = \"bad\" }\naction = \"bounce\"\n\
                 text = \"Link blocked by policy\"\n[list.bad]\nentries = [\"evil.example\"]\n";
    let mut s = bound_with(rules);
    let now = t0();
    // Stamped with the bound JID; the payload inherited <body/>'s namespace and is read as
    // jabber:client (XEP-0206 §6).
    request(&mut s, 5, &req(104, "<message to='bob@example.test'><body>hi</body></message>"), now);
    assert_eq!(
        backend(&mut s),
        "<message to='bob@example.test' from='alice@example.test/web'><body>hi</body></message>"
    );
    request(&mut s, 6, &req(105, "<message xmlns='jabber:client' to='bob@example.test' id='m2'><body>see https://evil.example/x</body></message>"), now);
    assert_eq!(backend(&mut s), "", "a blocked link never reaches the server");
    let a = answers(&mut s);
    // hold = 1: the request that pushed the count over is answered first (with the bounce).
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0].0, 5);
    assert!(a[0].1.contains("type='error' id='m2'") && a[0].1.contains("Link blocked by policy"), "{a:?}");
    // A dropped stanza's request is answered anyway: empty, at `wait`.
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(WAIT)));
    s.handle_timeout(now + Duration::from_secs(WAIT));
    assert_eq!(
        answers(&mut s),
        vec![(6, format!("<body {NS} xmlns:xmpp='urn:xmpp:xbosh' xmlns:stream='http://etherx.jabber.org/streams'/>"))]
    );
}

#[test]
fn a_retransmitted_rid_gets_the_identical_answer_and_nothing_twice() {
    let mut s = bound_with("");
    let now = t0();
    request(
        &mut s,
        5,
        &req(104, "<message xmlns='jabber:client' to='bob@example.test'><body>once</body></message>"),
        now,
    );
    assert!(backend(&mut s).contains("once"));
    s.backend_bytes(
        b"<message from='bob@example.test/x' to='alice@example.test/web'><body>reply</body></message>",
        now,
    );
    let first = answers(&mut s);
    assert!(first.len() == 1 && first[0].0 == 5 && first[0].1.contains("reply"), "{first:?}");
    // The client lost that answer and sends rid 104 again on another connection.
    request(
        &mut s,
        9,
        &req(104, "<message xmlns='jabber:client' to='bob@example.test'><body>once</body></message>"),
        now,
    );
    assert_eq!(answers(&mut s), vec![(9, first[0].1.clone())], "the identical response (XEP-0124 §14.3)");
    assert_eq!(backend(&mut s), "", "nothing reaches the server twice");
    // A retransmission of a request still held moves it to the new connection.
    request(&mut s, 10, &req(105, ""), now);
    request(&mut s, 11, &req(105, ""), now);
    assert!(answers(&mut s).is_empty());
    s.backend_bytes(b"<message from='bob@example.test/x' to='alice@example.test/web'><body>two</body></message>", now);
    let a = answers(&mut s);
    assert!(a.len() == 1 && a[0].0 == 11 && a[0].1.contains("two"), "{a:?}");
}

#[test]
fn early_requests_wait_and_are_processed_in_rid_order() {
    let mut s = bound_with("");
    let now = t0();
    let msg =
        |n: u32| format!("<message xmlns='jabber:client' to='bob@example.test' id='m{n}'><body>{n}</body></message>");
    // 105 comes before 104: held back, nothing reaches the server.
    request(&mut s, 6, &req(105, &msg(2)), now);
    assert_eq!(backend(&mut s), "");
    assert!(answers(&mut s).is_empty());
    request(&mut s, 5, &req(104, &msg(1)), now);
    let out = backend(&mut s);
    let (one, two) = (out.find("id='m1'").unwrap(), out.find("id='m2'").unwrap());
    assert!(one < two, "in rid order: {out}");
    // Two held with hold = 1: the older (104) is answered, empty.
    let a = answers(&mut s);
    assert_eq!(a.iter().map(|(h, _)| *h).collect::<Vec<_>>(), vec![5], "{a:?}");
    // Beyond the window (requests = 2): the session ends with item-not-found.
    request(&mut s, 7, &req(110, ""), now);
    let a = answers(&mut s);
    assert!(a.iter().any(|(h, b)| *h == 7 && b.contains("condition='item-not-found'")), "{a:?}");
    assert!(s.is_closed());
}

#[test]
fn a_dropped_connection_loses_nothing() {
    let mut s = bound_with("");
    let now = t0();
    request(&mut s, 5, &req(104, ""), now);
    // Its connection breaks; the server's message meanwhile goes to the cache, not the void.
    s.client_bytes(&Record::Gone { handle: 5 }.to_bytes(), now);
    s.backend_bytes(b"<message from='bob@example.test/x' to='alice@example.test/web'><body>kept</body></message>", now);
    assert!(answers(&mut s).is_empty(), "no live connection to write to");
    request(&mut s, 8, &req(104, ""), now);
    let a = answers(&mut s);
    assert!(a.len() == 1 && a[0].0 == 8 && a[0].1.contains("kept"), "{a:?}");
    assert_eq!(a[0].1.matches("kept").count(), 1);
}

#[test]
fn wait_and_inactivity_follow_the_fake_clock() {
    // Logged in (the handshake timeout is behind us).
    let mut s = bound_with("");
    let now = t0();
    request(&mut s, 5, &req(104, ""), now);
    assert!(answers(&mut s).is_empty());
    let due = now + Duration::from_secs(WAIT);
    assert_eq!(s.poll_timeout(), Some(due));
    s.handle_timeout(due - Duration::from_millis(1));
    assert!(answers(&mut s).is_empty(), "not before wait");
    s.handle_timeout(due);
    assert_eq!(answers(&mut s).len(), 1);
    // Nothing held: the client has `inactivity` to send its next request.
    let idle = due + Duration::from_secs(60);
    assert_eq!(s.poll_timeout(), Some(idle));
    s.handle_timeout(idle - Duration::from_millis(1));
    assert!(!s.is_closed());
    s.handle_timeout(idle);
    assert!(s.is_closed(), "a client gone for `inactivity` ends the session");
    assert_eq!(backend(&mut s), "</stream:stream>");
}

#[test]
fn terminate_from_either_side() {
    // The client's terminate: its payloads, then the stream's end; answered type='terminate'.
    let mut s = bound_with("");
    let now = t0();
    request(
        &mut s,
        5,
        &format!("<body {NS} rid='104' sid='{SID}' type='terminate'><presence xmlns='jabber:client' type='unavailable'/></body>"),
        now,
    );
    assert_eq!(backend(&mut s), "<presence type='unavailable' from='alice@example.test/web'/></stream:stream>");
    let a = answers(&mut s);
    assert!(a.len() == 1 && a[0].0 == 5 && a[0].1.contains("type='terminate'"), "{a:?}");
    s.backend_bytes(b"</stream:stream>", now);
    assert_eq!(effects(&mut s), vec![Effect::Close(CloseReason::ClientClosed)]);

    // The server's stream error: a terminal body with it, then the close.
    let mut s = bound_with("");
    request(&mut s, 5, &req(104, ""), now);
    s.backend_bytes(
        b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>",
        now,
    );
    let a = answers(&mut s);
    assert_eq!(a.len(), 1, "{a:?}");
    assert!(a[0].1.contains("type='terminate'") && a[0].1.contains("condition='remote-stream-error'"), "{a:?}");
    assert!(a[0].1.contains("<conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"), "{a:?}");
    assert!(matches!(effects(&mut s).as_slice(), [Effect::Close(CloseReason::BackendError(_))]));

    // With no request held, the close waits (LINGER) for one to carry the terminal body.
    let mut s = bound_with("");
    s.backend_bytes(
        b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>",
        now,
    );
    assert!(effects(&mut s).is_empty(), "held until delivered");
    request(&mut s, 5, &req(104, ""), now);
    assert!(answers(&mut s)[0].1.contains("remote-stream-error"));
    assert_eq!(effects(&mut s).len(), 1);
}

#[test]
fn oversize_and_unreadable_bodies_end_the_session() {
    // Before SASL success a request is capped like a TCP client's stanza (plus the wrapper).
    let mut s = created_with("");
    let big = format!("<message xmlns='jabber:client'><body>{}</body></message>", "x".repeat(4096 + BODY_OVERHEAD));
    request(&mut s, 2, &req(101, &big), t0());
    let a = answers(&mut s);
    assert!(a.iter().any(|(h, b)| *h == 2 && b.contains("condition='policy-violation'")), "{a:?}");
    assert!(s.is_closed());
    assert_eq!(backend(&mut s), "</stream:stream>", "nothing of it reaches the server");

    for bad in [
        format!("<body {NS} rid='101' sid='{SID}'><message xmlns='jabber:client'>"),
        format!("<body {NS} rid='101' sid='{SID}'><!-- c --></body>"),
        format!("<body {NS} rid='101' sid='{SID}'>text</body>"),
        format!("<body {NS} rid='x' sid='{SID}'/>"),
        format!("<body rid='101' sid='{SID}'/>"),
        format!("<body {NS} rid='101' sid='{SID}'/><body {NS} rid='102' sid='{SID}'/>"),
    ] {
        let mut s = created_with("");
        request(&mut s, 2, &bad, t0());
        let a = answers(&mut s);
        assert!(a.iter().any(|(h, b)| *h == 2 && b.contains("condition='bad-request'")), "{bad}: {a:?}");
        assert!(s.is_closed(), "{bad}");
        assert_eq!(backend(&mut s), "</stream:stream>", "{bad}");
    }
}

#[test]
fn session_creation_is_checked() {
    for (body, why) in [
        (format!("<body {NS} rid='1' xmpp:version='1.0' xmlns:xmpp='urn:xmpp:xbosh'/>"), "no to"),
        (format!("<body {NS} rid='1' to='example.test'/>"), "no xmpp:version"),
        (
            format!("<body {NS} rid='1' to='example.test' ver='1.5' xmpp:version='1.0' xmlns:xmpp='urn:xmpp:xbosh'/>"),
            "old ver",
        ),
    ] {
        let mut s = session_with("");
        request(&mut s, 1, &body, t0());
        let a = answers(&mut s);
        assert!(a.len() == 1 && a[0].1.contains("condition='bad-request'"), "{why}: {a:?}");
        assert!(matches!(effects(&mut s).as_slice(), [Effect::Close(CloseReason::ClientFailed(_))]), "{why}");
        assert!(s.is_closed());
    }
}

#[test]
fn bodies_are_read_strictly() {
    let r = parse_body(
        format!("<?xml version='1.0'?><body {NS} rid='9007199254740991' sid='ab1'>\n<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq></body>").as_bytes(),
        limits(),
    )
    .unwrap();
    assert_eq!((r.rid, r.sid.as_deref()), (9_007_199_254_740_991, Some("ab1")));
    assert_eq!(&*r.payloads[0].ns, "jabber:client");
    assert_eq!(&*r.payloads[0].elements().next().unwrap().ns, "jabber:iq:roster");
    assert!(matches!(
        parse_body(format!("<body {NS} rid='9007199254740992'/>").as_bytes(), limits()),
        Err(BodyError::Attribute(_))
    ));
    let e = parse_body(
        format!("<body {NS} rid='1'>{}</body>", "<a/>".repeat(100)).as_bytes(),
        XmlLimits { stanza_bytes: 200, ..limits() },
    )
    .unwrap_err();
    assert_eq!(e.condition(), "policy-violation");
    assert_eq!(parse_body(b"<body rid='1' xmlns='jabber:client'/>", limits()).unwrap_err(), BodyError::NotBody);
}

fn http_events(r: &mut HttpReader, cfg: &BoshConfig) -> Vec<HttpEvent> {
    std::iter::from_fn(|| r.next_event(cfg)).take(10).collect()
}

fn status(e: &HttpEvent) -> u16 {
    match e {
        HttpEvent::Respond { status, .. } => *status,
        HttpEvent::Post { .. } => 0,
    }
}

#[test]
fn http_requests_are_capped_checked_and_kept_alive() {
    let cfg = BoshConfig { origins: Origins::List(vec!["https://chat.example.test".into()]), ..bosh_config() };
    // Two requests on one connection, the second split anywhere.
    let post = |body: &str| {
        format!(
            "POST /http-bind HTTP/1.1\r\nHost: example.test:5280\r\nOrigin: https://chat.example.test\r\n\
             Content-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let wire = format!("{}{}", post("<body/>"), post("<body rid='2'/>"));
    for split in 0..wire.len() {
        let mut r = HttpReader::new();
        r.feed(&wire.as_bytes()[..split]);
        let mut got = http_events(&mut r, &cfg);
        r.feed(&wire.as_bytes()[split..]);
        got.extend(http_events(&mut r, &cfg));
        let bodies: Vec<_> = got
            .iter()
            .map(|e| match e {
                HttpEvent::Post { body, cors, keep_alive } => {
                    assert_eq!((cors.as_deref(), *keep_alive), (Some("https://chat.example.test"), true));
                    String::from_utf8(body.clone()).unwrap()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(bodies, ["<body/>", "<body rid='2'/>"], "split at {split}");
    }
    let ok = String::from_utf8(http::ok(b"<body/>", Some("https://chat.example.test"), true)).unwrap();
    assert!(
        ok.contains("Access-Control-Allow-Origin: https://chat.example.test\r\n") && ok.ends_with("\r\n\r\n<body/>")
    );

    for (req, want) in [
        ("POST /http-bind HTTP/1.1\r\nHost: example.test\r\nOrigin: https://evil.example\r\nContent-Length: 2\r\n\r\nab", 403),
        ("POST /http-bind HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        ("POST /http-bind HTTP/1.1\r\nHost: example.test\r\n\r\n", 411),
        ("POST /http-bind HTTP/1.1\r\nHost: example.test\r\nContent-Length: 99999999\r\n\r\n", 413),
        ("POST /http-bind HTTP/1.1\r\nHost: example.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        ("GET /http-bind HTTP/1.1\r\nHost: example.test\r\n\r\n", 405),
        ("POST /other HTTP/1.1\r\nHost: example.test\r\nContent-Length: 0\r\n\r\n", 404),
        ("POST /http-bind HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 400),
    ] {
        let mut r = HttpReader::new();
        r.feed(req.as_bytes());
        let got = http_events(&mut r, &cfg);
        assert_eq!(got.iter().map(status).collect::<Vec<_>>(), vec![want], "{req}");
        assert!(matches!(got[0], HttpEvent::Respond { close: true, .. }));
        r.feed(b"POST /http-bind HTTP/1.1\r\n\r\n");
        assert!(http_events(&mut r, &cfg).is_empty(), "nothing is read after a refusal");
    }
    let mut r = HttpReader::new();
    r.feed(&vec![b'a'; crate::session::web::http::MAX_HEAD + 1]);
    assert_eq!(http_events(&mut r, &cfg).iter().map(status).collect::<Vec<_>>(), vec![431]);

    // The CORS preflight, for allowed origins only.
    let mut r = HttpReader::new();
    r.feed(b"OPTIONS /http-bind HTTP/1.1\r\nHost: example.test\r\nOrigin: https://chat.example.test\r\nAccess-Control-Request-Method: POST\r\n\r\n");
    match &http_events(&mut r, &cfg)[..] {
        [HttpEvent::Respond { response, status: 204, close: false, .. }] => {
            let text = String::from_utf8_lossy(response);
            assert!(text.contains("Access-Control-Allow-Origin: https://chat.example.test\r\n"), "{text}");
            assert!(text.contains("Access-Control-Allow-Methods: POST, OPTIONS\r\n"), "{text}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn host_meta_lists_bosh_and_websocket() {
    let cfg = BoshConfig {
        links: vec![HostMetaLink {
            rel: crate::session::web::http::REL_WEBSOCKET,
            scheme: "wss",
            port: Some(5443),
            path: "/xmpp-websocket".into(),
            public_url: None,
        }],
        ..bosh_config()
    };
    let mut r = HttpReader::new();
    r.feed(b"GET /.well-known/host-meta.json HTTP/1.1\r\nHost: Example.test:5280\r\n\r\n");
    match &http_events(&mut r, &cfg)[..] {
        [HttpEvent::Respond { response, status: 200, .. }] => {
            let text = String::from_utf8_lossy(response);
            assert!(text.ends_with(
                "{\"links\":[{\"rel\":\"urn:xmpp:alt-connections:xbosh\",\"href\":\"https://example.test:5280/http-bind\"},\
                 {\"rel\":\"urn:xmpp:alt-connections:websocket\",\"href\":\"wss://example.test:5443/xmpp-websocket\"}]}"
            ), "{text}");
        }
        other => panic!("{other:?}"),
    }
    let mut r = HttpReader::new();
    r.feed(b"GET /.well-known/host-meta HTTP/1.1\r\nHost: other.test\r\n\r\n");
    assert_eq!(http_events(&mut r, &cfg).iter().map(status).collect::<Vec<_>>(), vec![404]);
}
