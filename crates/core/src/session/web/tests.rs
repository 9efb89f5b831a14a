use std::sync::Arc;
use std::time::{Duration, Instant};

use super::frame::{FrameDecoder, FrameError, Incoming};
use super::framing::{parse_message, standalone, ClientFrame, FramingError, Reframer, ServerFrame};
use super::http::{answer, Answer};
use super::*;
use crate::session::{
    BackendTls, C2sSession, CloseReason, Effect, PolicyBinding, SessionConfig, StreamMachine, Timeouts,
};
use crate::stream::Condition;
use crate::xml::{Element, XmlLimits};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn limits() -> XmlLimits {
    XmlLimits { stanza_bytes: 65536, depth: 16, attributes: 32 }
}

/// A client frame as a browser sends it: masked, FIN as given.
fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn text(payload: &str) -> Vec<u8> {
    client_frame(1, true, payload.as_bytes())
}

/// Server frames (unmasked) back to (opcode, payload).
fn server_frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        assert_eq!(b[0] & 0x80, 0x80, "FIN set on every server frame");
        assert_eq!(b[1] & 0x80, 0, "server frames are never masked");
        let (len, at) = match b[1] & 0x7f {
            126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        out.push((b[0] & 0x0f, b[at..at + len].to_vec()));
        b = &b[at + len..];
    }
    out
}

fn decode_all(d: &mut FrameDecoder) -> Vec<Result<Incoming, FrameError>> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        match d.next_incoming() {
            Ok(None) => break,
            Ok(Some(i)) => out.push(Ok(i)),
            Err(e) => {
                out.push(Err(e));
                break;
            }
        }
    }
    out
}

#[test]
fn frames_are_unmasked_and_fragments_reassembled_at_any_split() {
    let mut wire = text("<open/>");
    wire.extend(client_frame(1, false, b"<message>h"));
    wire.extend(client_frame(9, true, b"ping!"));
    wire.extend(client_frame(0, false, "é".as_bytes()));
    wire.extend(client_frame(0, true, b"</message>"));
    wire.extend(client_frame(8, true, &1000u16.to_be_bytes()));
    let want = vec![
        Ok(Incoming::Text("<open/>".into())),
        Ok(Incoming::Ping(b"ping!".to_vec())),
        Ok(Incoming::Text("<message>hé</message>".into())),
        Ok(Incoming::Close(Some(1000))),
    ];
    for split in 0..wire.len() {
        let mut d = FrameDecoder::new(1024, 1024);
        d.feed(&wire[..split]);
        let mut got = decode_all(&mut d);
        d.feed(&wire[split..]);
        got.extend(decode_all(&mut d));
        assert_eq!(got, want, "split at {split}");
    }
    // 16-bit lengths.
    let long = "x".repeat(300);
    let mut d = FrameDecoder::new(1024, 1024);
    d.feed(&text(&long));
    assert_eq!(decode_all(&mut d), vec![Ok(Incoming::Text(long))]);
}

#[test]
fn bad_frames_get_their_close_codes() {
    let cases: Vec<(Vec<u8>, u16)> = vec![
        // Unmasked.
        (vec![0x81, 0x02, b'h', b'i'], 1002),
        // RSV1 (compression was never negotiated).
        (
            {
                let mut f = text("x");
                f[0] |= 0x40;
                f
            },
            1002,
        ),
        (client_frame(2, true, b"<x/>"), 1003),
        (client_frame(1, true, b"\xff\xfe"), 1007),
        // Invalid UTF-8 split over fragments is caught at the end of the message.
        (
            {
                let mut f = client_frame(1, false, b"\xe2\x82");
                f.extend(client_frame(0, true, b"x"));
                f
            },
            1007,
        ),
        (client_frame(0, true, b"x"), 1002),
        (
            {
                let mut f = client_frame(1, false, b"a");
                f.extend(text("b"));
                f
            },
            1002,
        ),
        (client_frame(9, false, b""), 1002),
        (client_frame(9, true, &[0; 126]), 1002),
        (client_frame(3, true, b""), 1002),
        (client_frame(8, true, &[3]), 1002),
        (client_frame(8, true, &1005u16.to_be_bytes()), 1002),
    ];
    for (wire, code) in cases {
        let mut d = FrameDecoder::new(1024, 1024);
        d.feed(&wire);
        let got = decode_all(&mut d);
        match got.last() {
            Some(Err(e)) => assert_eq!(e.close_code(), code, "{wire:x?}: {e}"),
            other => panic!("{wire:x?}: expected an error, got {other:?}"),
        }
    }
}

#[test]
fn size_caps_are_checked_from_the_header_before_the_payload() {
    // A frame announcing 2^40 bytes is refused from its header alone.
    let mut d = FrameDecoder::new(1024, 4096);
    d.feed(&[0x81, 0xff, 0, 0, 0x01, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
    assert_eq!(decode_all(&mut d), vec![Err(FrameError::TooBig { what: "frame", limit: 1024 })]);
    // Fragments each under the frame cap, together over the message cap.
    let mut d = FrameDecoder::new(1024, 2000);
    d.feed(&client_frame(1, false, &[b'a'; 1000]));
    d.feed(&client_frame(0, false, &[b'a'; 1000]));
    d.feed(&client_frame(0, true, &[b'a'; 10])[..4]);
    assert_eq!(decode_all(&mut d), vec![Err(FrameError::TooBig { what: "message", limit: 2000 })]);
    assert!(d.buffered() < 2100);
}

fn request(lines: &[&str]) -> Vec<u8> {
    let mut r = String::new();
    for l in lines {
        r.push_str(l);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

fn upgrade_request(extra: &[&str]) -> Vec<u8> {
    let mut lines = vec![
        "GET /xmpp-websocket HTTP/1.1",
        "Host: chat.example.test:5443",
        "Upgrade: websocket",
        "Connection: keep-alive, Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];
    lines.extend_from_slice(extra);
    request(&lines)
}

fn web_config() -> WebConfig {
    WebConfig { domains: vec!["example.test".into(), "*.example.test".into()], ..WebConfig::default() }
}

fn status(a: &Answer) -> (u16, String) {
    match a {
        Answer::Upgrade { response } => (101, String::from_utf8(response.clone()).unwrap()),
        Answer::Respond { response, status, .. } => (*status, String::from_utf8(response.clone()).unwrap()),
    }
}

#[test]
fn the_handshake_needs_the_xmpp_subprotocol_and_an_allowed_origin() {
    let cfg = web_config();
    let (code, resp) = status(&answer(&upgrade_request(&["Sec-WebSocket-Protocol: chat, xmpp"]), &cfg));
    assert_eq!(code, 101, "{resp}");
    // RFC 6455 §1.3's worked example.
    assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{resp}");
    assert!(resp.contains("Sec-WebSocket-Protocol: xmpp\r\n"));
    let (code, resp) = status(&answer(&upgrade_request(&[]), &cfg));
    assert_eq!(code, 400);
    assert!(resp.contains("subprotocol 'xmpp' is required"), "{resp}");
    assert_eq!(status(&answer(&upgrade_request(&["Sec-WebSocket-Protocol: XMPP"]), &cfg)).0, 400);
    // Origins: by default pages over https from the same host name (any port).
    for (origin, want) in [
        ("https://chat.example.test", 101),
        ("HTTPS://Chat.Example.Test:443", 101),
        ("http://chat.example.test", 403),
        ("https://evil.example", 403),
        ("https://chat.example.test.evil.example", 403),
        ("null", 403),
    ] {
        let origin = format!("Origin: {origin}");
        let got = status(&answer(&upgrade_request(&["Sec-WebSocket-Protocol: xmpp", &origin]), &cfg)).0;
        assert_eq!(got, want, "{origin}");
    }
    let listed = WebConfig { origins: Origins::List(vec!["http://127.0.0.1:8080".into()]), ..web_config() };
    let req = |o: &str| upgrade_request(&["Sec-WebSocket-Protocol: xmpp", o]);
    assert_eq!(status(&answer(&req("Origin: http://127.0.0.1:8080"), &listed)).0, 101);
    assert_eq!(status(&answer(&req("Origin: https://chat.example.test"), &listed)).0, 403);
    let any = WebConfig { origins: Origins::Any, ..web_config() };
    assert_eq!(status(&answer(&req("Origin: https://evil.example"), &any)).0, 101);
    // Other refusals.
    let bad_key = upgrade_request(&["Sec-WebSocket-Protocol: xmpp"]).windows(1).map(|w| w[0]).collect::<Vec<u8>>();
    let bad_key = String::from_utf8(bad_key).unwrap().replace(KEY, "c2hvcnQ=");
    assert_eq!(status(&answer(bad_key.as_bytes(), &cfg)).0, 400);
    let v8 = String::from_utf8(upgrade_request(&["Sec-WebSocket-Protocol: xmpp"]))
        .unwrap()
        .replace("Version: 13", "Version: 8");
    assert_eq!(status(&answer(v8.as_bytes(), &cfg)).0, 426);
    assert_eq!(status(&answer(&request(&["GET /xmpp-websocket HTTP/1.1", "Host: a"]), &cfg)).0, 426);
    assert_eq!(status(&answer(&request(&["GET /other HTTP/1.1", "Host: a"]), &cfg)).0, 404);
    assert_eq!(status(&answer(&request(&["POST /xmpp-websocket HTTP/1.1", "Host: a"]), &cfg)).0, 405);
    assert_eq!(status(&answer(&request(&["GET /xmpp-websocket HTTP/1.1"]), &cfg)).0, 400);
    assert_eq!(status(&answer(b"\x16\x03\x01garbage\r\n\r\n", &cfg)).0, 400);
}

#[test]
fn host_meta_points_at_the_websocket_for_served_domains_only() {
    let cfg = web_config();
    let (code, xrd) =
        status(&answer(&request(&["GET /.well-known/host-meta HTTP/1.1", "Host: example.test:5443"]), &cfg));
    assert_eq!(code, 200);
    assert!(xrd.contains("Content-Type: application/xrd+xml"), "{xrd}");
    assert!(xrd.contains("Access-Control-Allow-Origin: *"));
    assert!(
        xrd.contains("<Link rel='urn:xmpp:alt-connections:websocket' href='wss://example.test:5443/xmpp-websocket'/>"),
        "{xrd}"
    );
    let (code, json) =
        status(&answer(&request(&["GET /.well-known/host-meta.json HTTP/1.1", "Host: Chat.Example.Test"]), &cfg));
    assert_eq!(code, 200);
    let body = json.split("\r\n\r\n").nth(1).unwrap();
    assert_eq!(
        body,
        "{\"links\":[{\"rel\":\"urn:xmpp:alt-connections:websocket\",\"href\":\"wss://chat.example.test/xmpp-websocket\"}]}"
    );
    for host in ["evil.example", "a.b.example.test", "[::1]:5443", "example.test:5443'><x"] {
        let req = request(&["GET /.well-known/host-meta HTTP/1.1", &format!("Host: {host}")]);
        assert_eq!(status(&answer(&req, &cfg)).0, 404, "{host}");
    }
    let fixed = WebConfig { public_url: Some("wss://xmpp.example.test/ws".into()), ..web_config() };
    let (_, xrd) = status(&answer(&request(&["GET /.well-known/host-meta HTTP/1.1", "Host: example.test"]), &fixed));
    assert!(xrd.contains("href='wss://xmpp.example.test/ws'"), "{xrd}");
}

#[test]
fn each_message_is_exactly_one_element_parsed_strictly() {
    let open = "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.test' version='1.0' xml:lang='en'/>";
    let ClientFrame::Open(header) = parse_message(open, limits()).unwrap() else { panic!() };
    assert_eq!(
        String::from_utf8(header).unwrap(),
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.test' \
         version='1.0' xml:lang='en'>"
    );
    let with_decl = format!("<?xml version='1.0'?>{open}");
    assert!(matches!(parse_message(&with_decl, limits()), Ok(ClientFrame::Open(_))));
    assert_eq!(parse_message("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>", limits()), Ok(ClientFrame::Close));
    assert_eq!(parse_message(" \r\n", limits()), Ok(ClientFrame::Keepalive));
    let ClientFrame::Element(el) =
        parse_message("\n<message xmlns='jabber:client' to='a@b'><body>x &amp; y</body></message>\n", limits())
            .unwrap()
    else {
        panic!()
    };
    assert_eq!(el.to_bytes(crate::stream::NS_CLIENT), b"<message to='a@b'><body>x &amp; y</body></message>");
    // No namespace declared: in no namespace (the c2s machine refuses it as a top-level element).
    let ClientFrame::Element(el) = parse_message("<message to='a@b'/>", limits()).unwrap() else { panic!() };
    assert_eq!(&*el.ns, "");
    let errors: Vec<(&str, Condition)> = vec![
        ("<message xmlns='jabber:client'/><message xmlns='jabber:client'/>", Condition::NotWellFormed),
        ("<presence xmlns='jabber:client'/>trailing", Condition::BadFormat),
        ("leading<presence xmlns='jabber:client'/>", Condition::BadFormat),
        ("<message xmlns='jabber:client'><body>", Condition::NotWellFormed),
        ("<message xmlns='jabber:client'></presence>", Condition::NotWellFormed),
        ("<!-- c --><message xmlns='jabber:client'/>", Condition::RestrictedXml),
        ("<!DOCTYPE x><x/>", Condition::RestrictedXml),
        ("<message xmlns='jabber:client'>&ent;</message>", Condition::RestrictedXml),
        ("<x:message/>", Condition::NotWellFormed),
        (
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='e'>",
            Condition::InvalidNamespace,
        ),
        ("</stream:stream>", Condition::InvalidNamespace),
        ("<foo xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>", Condition::UnsupportedStanzaType),
        ("<?xml version='1.1'?><x/>", Condition::NotWellFormed),
    ];
    for (msg, condition) in errors {
        match parse_message(msg, limits()) {
            Err(e) => assert_eq!(e.stream_error().condition, condition, "{msg}: {e}"),
            Ok(f) => panic!("{msg}: accepted as {f:?}"),
        }
    }
    assert_eq!(
        parse_message("<a xmlns='x'/><b xmlns='x'/>", limits()),
        Err(FramingError::TwoElements),
        "two elements in one message"
    );
    let big = format!("<message xmlns='jabber:client'><body>{}</body></message>", "x".repeat(70_000));
    assert_eq!(parse_message(&big, limits()).unwrap_err().stream_error().condition, Condition::PolicyViolation);
}

#[test]
fn the_gateway_stream_becomes_standalone_messages() {
    let mut r = Reframer::new();
    let header = b"<?xml version='1.0'?><stream:stream from='example.test' id='gw1' xml:lang='en' version='1.0' \
        xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
    let mut out = r.convert(&header[..20]).unwrap();
    out.extend(r.convert(&header[20..]).unwrap());
    out.extend(r.convert(b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features> <success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>").unwrap());
    // After SASL success the stream restarts with a new header.
    out.extend(r.convert(header).unwrap());
    out.extend(r.convert(b"<message from='a@example.test'><body>hi</body></message></stream:stream>").unwrap());
    let text: Vec<String> = out
        .iter()
        .map(|f| match f {
            ServerFrame::Message(m) => String::from_utf8(m.clone()).unwrap(),
            ServerFrame::Close => "CLOSE".to_owned(),
        })
        .collect();
    let open =
        "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' from='example.test' id='gw1' version='1.0' xml:lang='en'/>";
    assert_eq!(
        text,
        vec![
            open.to_owned(),
            "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>".to_owned(),
            "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".to_owned(),
            open.to_owned(),
            "<message xmlns='jabber:client' from='a@example.test'><body>hi</body></message>".to_owned(),
            "CLOSE".to_owned(),
        ]
    );
    // Every message parses on its own as the client's would.
    for m in &text[..5] {
        assert!(parse_message(m, limits()).is_ok(), "{m}");
    }
    let err = Element::new(crate::xml::NS_STREAMS, "error")
        .with_child(Element::new(crate::stream::NS_STREAM_ERRORS, "not-well-formed"));
    assert_eq!(
        String::from_utf8(standalone(&err)).unwrap(),
        "<stream:error xmlns:stream='http://etherx.jabber.org/streams'><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
    );
}

// --- the whole session: WebSocket in front, the c2s machine behind ---

const BACKEND_HEADER: &str = "<?xml version='1.0'?><stream:stream from='example.test' id='b1' version='1.0' \
    xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
const OPEN: &str = "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.test' version='1.0'/>";

fn t0() -> Instant {
    thread_local!(static T0: Instant = Instant::now());
    T0.with(|t| *t)
}

fn session_with(rules: &str) -> WebSocketSession {
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
        preauth_limits: XmlLimits { stanza_bytes: 4096, ..limits() },
        limits: limits(),
        backend_limits: limits(),
        backend_tls: BackendTls::Off,
        stream_id: "gw1".to_owned(),
        timeouts: Timeouts::default(),
    };
    let web = WebConfig { max_frame_bytes: 8192, max_message_bytes: 16384, ..web_config() };
    WebSocketSession::new(
        Arc::new(web),
        C2sSession::new(cfg, binding, t0()),
        XmlLimits { stanza_bytes: 4096, ..limits() },
        limits(),
    )
}

fn messages(s: &mut WebSocketSession) -> Vec<String> {
    server_frames(&s.take_to_client())
        .into_iter()
        .map(|(op, p)| match op {
            1 => String::from_utf8(p).unwrap(),
            8 => format!("CLOSE {}", u16::from_be_bytes([p[0], p[1]])),
            op => format!("OP {op}"),
        })
        .collect()
}

fn effects(s: &mut WebSocketSession) -> Vec<Effect> {
    std::iter::from_fn(|| s.poll_effect()).collect()
}

fn backend(s: &mut WebSocketSession) -> String {
    String::from_utf8(s.take_to_backend()).unwrap()
}

/// Upgraded, authenticated and bound as alice@example.test/web.
fn bound_with(rules: &str) -> WebSocketSession {
    let mut s = session_with(rules);
    let now = t0();
    s.client_bytes(&upgrade_request(&["Sec-WebSocket-Protocol: xmpp", "Origin: https://chat.example.test"]), now);
    let head = String::from_utf8(s.take_to_client()).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    s.client_bytes(&text(OPEN), now);
    assert!(matches!(effects(&mut s).as_slice(), [Effect::ConnectBackend { domain }] if domain == "example.test"));
    s.backend_connected();
    assert!(backend(&mut s).contains("to='example.test'"));
    s.backend_bytes(BACKEND_HEADER.as_bytes(), now);
    s.backend_bytes(b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>", now);
    let m = messages(&mut s);
    assert!(
        m[0].starts_with("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' from='example.test' id='gw1'"),
        "{m:?}"
    );
    assert!(m[1].starts_with("<stream:features xmlns:stream='http://etherx.jabber.org/streams'><mechanisms"), "{m:?}");
    s.client_bytes(
        &text("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>"),
        now,
    );
    assert_eq!(
        backend(&mut s),
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>"
    );
    s.backend_bytes(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>", now);
    assert_eq!(messages(&mut s), vec!["<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"]);
    assert!(backend(&mut s).contains("<stream:stream"), "the backend leg restarts");
    s.backend_bytes(BACKEND_HEADER.as_bytes(), now);
    s.backend_bytes(b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>", now);
    s.client_bytes(&text(OPEN), now);
    let m = messages(&mut s);
    assert_eq!(m.len(), 2, "{m:?}");
    assert!(m[1].contains("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"), "{m:?}");
    s.client_bytes(&text("<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>web</resource></bind></iq>"), now);
    assert!(backend(&mut s).starts_with("<iq type='set' id='b1'>"));
    s.backend_bytes(b"<iq type='result' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@example.test/web</jid></bind></iq>", now);
    assert_eq!(messages(&mut s).len(), 1);
    let fx = effects(&mut s);
    assert!(fx.contains(&Effect::Authenticated) && fx.iter().any(|e| matches!(e, Effect::Bound(_))), "{fx:?}");
    s
}

#[test]
fn a_websocket_client_crosses_the_same_checks_and_policy_as_tcp() {
    let rules = "[[rule]]\nname = \"links\"\nwhen = { kind = \"message\", url_in = \"bad\" }\naction = \"bounce\"\n\
                 text = \"Link blocked by policy\"\n[list.bad]\nentries = [\"evil.example\"]\n";
    let mut s = bound_with(rules);
    let now = t0();
    // `from` is stamped with the bound JID.
    s.client_bytes(&text("<message xmlns='jabber:client' to='bob@example.test'><body>hi</body></message>"), now);
    assert_eq!(
        backend(&mut s),
        "<message to='bob@example.test' from='alice@example.test/web'><body>hi</body></message>"
    );
    s.client_bytes(&text("<message xmlns='jabber:client' to='bob@example.test' id='m2'><body>see https://evil.example/x</body></message>"), now);
    assert_eq!(backend(&mut s), "", "a blocked link never reaches the server");
    let m = messages(&mut s);
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(m[0].starts_with("<message xmlns='jabber:client' type='error' id='m2'"), "{m:?}");
    assert!(m[0].contains("Link blocked by policy"), "{m:?}");
    assert!(effects(&mut s).iter().any(|e| matches!(e, Effect::Policy(p) if &*p.hits[0].rule == "links")));
    // c2s-out: what the server sends is relayed as one message each.
    s.backend_bytes(b"<message from='bob@example.test/x' to='alice@example.test/web'><body>yo</body></message>", now);
    assert_eq!(messages(&mut s), vec!["<message xmlns='jabber:client' from='bob@example.test/x' to='alice@example.test/web'><body>yo</body></message>"]);
    // A stanza in no namespace is not a stanza.
    s.client_bytes(&text("<message to='bob@example.test'><body>x</body></message>"), now);
    let m = messages(&mut s);
    assert!(m.iter().any(|x| x.contains("<unsupported-stanza-type")), "{m:?}");
    assert_eq!(m[m.len() - 2], "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>");
    assert_eq!(m[m.len() - 1], "CLOSE 1000");
    assert!(s.is_closed());
}

#[test]
fn a_closing_client_gets_close_both_ways() {
    let mut s = bound_with("");
    s.client_bytes(&text("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"), t0());
    assert_eq!(backend(&mut s), "</stream:stream>");
    assert!(!s.is_closed(), "waits for the server's close (RFC 6120 §4.4)");
    s.backend_bytes(b"</stream:stream>", t0());
    assert_eq!(messages(&mut s), vec!["<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>", "CLOSE 1000"]);
    assert_eq!(effects(&mut s), vec![Effect::Close(CloseReason::ClientClosed)]);
}

#[test]
fn framing_errors_close_the_stream_with_an_error_then_the_websocket() {
    type Case = (Vec<u8>, &'static str, &'static str);
    let cases: Vec<Case> = vec![
        (text("<presence xmlns='jabber:client'/><presence xmlns='jabber:client'/>"), "<not-well-formed", "CLOSE 1000"),
        (
            client_frame(1, true, b"<presence xmlns='jabber:client'>\xff</presence>"),
            "<unsupported-encoding",
            "CLOSE 1007",
        ),
        (client_frame(2, true, b"<presence xmlns='jabber:client'/>"), "<unsupported-encoding", "CLOSE 1003"),
        (client_frame(1, true, &[b' '; 9000]), "<policy-violation", "CLOSE 1009"),
        (vec![0x81, 0x01, b' '], "<bad-format", "CLOSE 1002"),
        (
            text("<stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='example.test'>"),
            "<invalid-namespace",
            "CLOSE 1000",
        ),
    ];
    for (wire, condition, close) in cases {
        let mut s = bound_with("");
        s.client_bytes(&wire, t0());
        let m = messages(&mut s);
        assert_eq!(backend(&mut s), "</stream:stream>", "nothing of it reaches the server");
        assert!(m[0].starts_with("<stream:error xmlns:stream='http://etherx.jabber.org/streams'>"), "{m:?}");
        assert!(m[0].contains(condition), "{m:?}");
        assert_eq!(m[1..], ["<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>".to_owned(), close.to_owned()]);
        assert!(matches!(effects(&mut s).as_slice(), [Effect::Close(CloseReason::ClientError(_))]));
    }
}

#[test]
fn before_the_upgrade_nothing_reaches_the_c2s_machine() {
    // A refused handshake: the HTTP answer, then the end; no backend.
    let mut s = session_with("");
    s.client_bytes(&upgrade_request(&["Origin: https://chat.example.test"]), t0());
    let out = String::from_utf8(s.take_to_client()).unwrap();
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(matches!(effects(&mut s).as_slice(), [Effect::Close(CloseReason::ClientFailed(w))] if w.contains("xmpp")));
    assert!(s.is_closed() && s.poll_timeout().is_none());
    // A head that never ends is cut at the cap.
    let mut s = session_with("");
    s.client_bytes(b"GET / HTTP/1.1\r\n", t0());
    s.client_bytes(&vec![b'a'; http::MAX_HEAD], t0());
    assert!(String::from_utf8(s.take_to_client()).unwrap().starts_with("HTTP/1.1 431 "));
    // One that never completes times out at the handshake deadline.
    let mut s = session_with("");
    s.client_bytes(b"GET /xmpp-websocket HTTP/1.1\r\n", t0());
    let due = s.poll_timeout().unwrap();
    assert_eq!(due, t0() + Duration::from_secs(30));
    s.handle_timeout(due - Duration::from_millis(1));
    assert!(!s.is_closed());
    s.handle_timeout(due);
    assert!(matches!(effects(&mut s).as_slice(), [Effect::Close(CloseReason::ClientFailed(_))]));
    // Pings are answered; the first message must be <open/>.
    let mut s = session_with("");
    s.client_bytes(&upgrade_request(&["Sec-WebSocket-Protocol: xmpp"]), t0());
    s.take_to_client();
    s.client_bytes(&client_frame(9, true, b"p"), t0());
    assert_eq!(server_frames(&s.take_to_client()), vec![(0xA, b"p".to_vec())]);
    s.client_bytes(&text("<message xmlns='jabber:client'/>"), t0());
    let m = messages(&mut s);
    assert!(m[0].starts_with("<open "), "the error comes after a header (RFC 6120 §4.9.1.2): {m:?}");
    assert!(m[1].contains("<stream:error"), "{m:?}");
}

#[test]
fn pings_keep_a_session_alive_and_shutdown_says_going_away() {
    let mut s = bound_with("");
    let idle = Timeouts::default().idle;
    let later = t0() + idle - Duration::from_secs(1);
    s.client_bytes(&client_frame(9, true, b"k"), later);
    assert_eq!(server_frames(&s.take_to_client()), vec![(0xA, b"k".to_vec())]);
    assert_eq!(s.poll_timeout(), Some(later + idle), "the ping counted as traffic");
    s.shutdown();
    let m = messages(&mut s);
    assert!(m[0].contains("<system-shutdown"), "{m:?}");
    assert_eq!(m[1..], ["<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>".to_owned(), "CLOSE 1001".to_owned()]);
    assert_eq!(backend(&mut s), "</stream:stream>");
    assert_eq!(effects(&mut s), vec![Effect::Close(CloseReason::Shutdown)]);
}

#[test]
fn before_authentication_messages_are_capped_like_a_tcp_stanza() {
    // The pre-authentication cap (4096 here) applies to frames before SASL success ...
    let mut s = session_with("");
    s.client_bytes(&upgrade_request(&["Sec-WebSocket-Protocol: xmpp"]), t0());
    s.take_to_client();
    s.client_bytes(&text(OPEN), t0());
    let big = format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>", "A".repeat(5000));
    s.client_bytes(&text(&big), t0());
    let m = messages(&mut s);
    assert!(m.iter().any(|x| x.contains("<policy-violation")), "{m:?}");
    assert_eq!(m.last().map(String::as_str), Some("CLOSE 1009"));
    // ... and the listener's caps (8192 per frame) after it.
    let mut s = bound_with("");
    let body = "x".repeat(6000);
    s.client_bytes(
        &text(&format!("<message xmlns='jabber:client' to='bob@example.test'><body>{body}</body></message>")),
        t0(),
    );
    assert!(backend(&mut s).contains(&body));
    assert!(!s.is_closed());
}
