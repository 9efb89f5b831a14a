//! Entry points for the fuzz targets in `fuzz/` and for replaying their corpora as unit tests.
//!
//! Each function takes arbitrary bytes and panics only when an invariant is broken — a panic
//! here is a finding. They are public so that a fuzz target is one line, and so that the corpus
//! replay test (`tests/fuzz_corpus.rs`) runs exactly the same code on every `cargo test`.

use crate::config::Config;
use crate::session::{BackendTls, Session, SessionConfig, StreamMachine};
use crate::stream::NS_CLIENT;
use crate::xml::{Element, StreamReader, XmlEvent, XmlLimits};

/// The stream header prepended by [`xml_stanzas`].
pub const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream to='example.test' version='1.0' \
    xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

fn limits() -> XmlLimits {
    XmlLimits { stanza_bytes: 16 * 1024, depth: 16, attributes: 16 }
}

/// Parse `input` fed in chunks of `chunk` bytes; the stanzas until the first error.
fn parse(input: &[u8], chunk: usize) -> (Vec<Element>, bool) {
    parse_with(input, chunk, limits())
}

fn parse_with(input: &[u8], chunk: usize, limits: XmlLimits) -> (Vec<Element>, bool) {
    let mut r = StreamReader::new(limits);
    let mut out = Vec::new();
    for part in input.chunks(chunk.max(1)) {
        r.feed(part);
        loop {
            match r.next_event() {
                Ok(Some(XmlEvent::Stanza(el))) => out.push(el),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return (out, false),
            }
        }
    }
    (out, true)
}

/// Stanza-level XML: a fixed header, then the fuzz input (its first byte picks the read size).
/// Invariants: chunking does not change the result; what was accepted re-serializes to bytes
/// that parse back to the same tree, and the canonical form is a fixed point.
pub fn xml_stanzas(data: &[u8]) {
    let Some((&first, body)) = data.split_first() else { return };
    let mut input = HEADER.to_vec();
    input.extend_from_slice(body);
    check_stream(&input, usize::from(first % 32) + 1);
}

/// A whole stream from its first byte (header, XML declaration, BOM …); same invariants.
pub fn xml_stream(data: &[u8]) {
    let Some((&first, body)) = data.split_first() else { return };
    check_stream(body, usize::from(first % 32) + 1);
}

fn check_stream(input: &[u8], chunk: usize) {
    let (whole, ok_whole) = parse(input, input.len());
    let (split, ok_split) = parse(input, chunk);
    assert_eq!(whole, split, "chunking changed the parse");
    assert_eq!(ok_whole, ok_split, "chunking changed acceptance");
    if whole.is_empty() {
        return;
    }
    let mut again = HEADER.to_vec();
    for el in &whole {
        el.write_to(&mut again, NS_CLIENT);
    }
    // Escaping can make the canonical form longer than the input (`'` in text is kept, but
    // `"` in an attribute becomes `&quot;`), so size caps are lifted for the re-parse: the
    // invariant is about the tree.
    let roomy = XmlLimits { stanza_bytes: 16 * limits().stanza_bytes, ..limits() };
    let (reparsed, ok) = parse_with(&again, again.len(), roomy);
    assert!(ok, "canonical output was refused: {}", String::from_utf8_lossy(&again));
    assert_eq!(reparsed, whole, "parse . serialize . parse is not the identity");
    let mut third = HEADER.to_vec();
    for el in &reparsed {
        el.write_to(&mut third, NS_CLIENT);
    }
    assert_eq!(third, again, "canonical form is not a fixed point");
}

/// JIDs: whatever parses re-parses from its string form to the same JID.
pub fn jid(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Some(j) = crate::jid::parse(s) {
        let again = crate::jid::parse(&j.to_string());
        assert_eq!(again.as_ref(), Some(&j), "JID does not round-trip: {s:?}");
    }
}

/// The config parser never panics, and errors always name a line within the file.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = Config::parse(&text, std::path::Path::new("fuzz.toml")) {
        let lines = text.lines().count().max(1);
        assert!(e.origin.line >= 1 && e.origin.line <= lines + 1, "line {} outside 1..={lines}", e.origin.line);
    }
}

/// The session fed an arbitrary sequence of I/O events. Each op is one byte; byte ops take a
/// length byte and that many bytes. Invariants: no panic; once closed the session writes
/// nothing more; the client never sees bytes before the session answered its header.
///
/// `start` is the accept time (the caller reads the clock: the core never does); the session's
/// clock then moves one second per op.
pub fn session(data: &[u8], start: std::time::Instant) {
    let cfg = SessionConfig {
        direct_tls: data.first().is_some_and(|b| b & 1 == 1),
        preauth_limits: limits(),
        limits: limits(),
        backend_limits: limits(),
        backend_tls: match data.first().map(|b| (b >> 1) % 3) {
            Some(1) => BackendTls::StartTls,
            Some(2) => BackendTls::Direct,
            _ => BackendTls::Off,
        },
        stream_id: "fuzz".to_owned(),
        timeouts: crate::session::Timeouts::default(),
    };
    let Ok(policy) = crate::policy::Policy::compile(&Default::default()) else { return };
    let binding = crate::session::PolicyBinding {
        policy: std::sync::Arc::new(policy),
        rates: std::sync::Arc::new(crate::policy::RateTable::new()),
        source_ip: std::net::IpAddr::from([127, 0, 0, 1]),
    };
    let mut s = Session::new(cfg, binding, start);
    // Time moves one second per op: deadlines pass within long inputs.
    let mut now = start;
    let mut rest = data.get(1..).unwrap_or_default();
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let was_closed = s.is_closed();
        now += std::time::Duration::from_secs(1);
        match op % 10 {
            0 | 1 => {
                let n = rest.first().map_or(0, |&n| usize::from(n)).min(rest.len().saturating_sub(1));
                let bytes = rest.get(1..1 + n).unwrap_or_default();
                rest = rest.get(1 + n..).unwrap_or_default();
                if op % 10 == 0 {
                    s.client_bytes(bytes, now)
                } else {
                    s.backend_bytes(bytes, now)
                }
            }
            2 => s.client_tls_established(),
            3 => s.backend_connected(),
            4 => s.backend_tls_established(),
            5 => s.shutdown(),
            6 => s.backend_failed("fuzz"),
            7 => s.client_disconnected(),
            8 => s.handle_timeout(now + std::time::Duration::from_secs(u64::from(op) * 60)),
            _ => {
                let _ = s.take_client_buffered();
                let _ = s.take_backend_buffered();
            }
        }
        let to_client = s.take_to_client();
        let to_backend = s.take_to_backend();
        while s.poll_effect().is_some() {}
        if was_closed {
            assert!(to_client.is_empty() && to_backend.is_empty(), "wrote after close");
        }
    }
}

/// The upgrade request [`websocket`] sends first.
pub const WS_UPGRADE: &[u8] = b"GET /xmpp-websocket HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Protocol: xmpp\r\n\r\n";

/// A WebSocket connection (the web door around a c2s session): the first byte says whether
/// [`WS_UPGRADE`] is sent first; then ops as in [`session`], where op 0 sends raw client bytes
/// (frames or HTTP) and op 9 sends its bytes as one masked text frame (a message the framing
/// layer parses). Invariants: nothing is written after the close; once upgraded, everything
/// written to the client is whole server frames (unmasked, FIN set), text frames are UTF-8.
pub fn websocket(data: &[u8], start: std::time::Instant) {
    use crate::session::web::{WebConfig, WebSocketSession};
    let cfg = SessionConfig {
        direct_tls: true,
        preauth_limits: limits(),
        limits: limits(),
        backend_limits: limits(),
        backend_tls: BackendTls::Off,
        stream_id: "fuzz".to_owned(),
        timeouts: crate::session::Timeouts::default(),
    };
    let Ok(policy) = crate::policy::Policy::compile(&Default::default()) else { return };
    let binding = crate::session::PolicyBinding {
        policy: std::sync::Arc::new(policy),
        rates: std::sync::Arc::new(crate::policy::RateTable::new()),
        source_ip: std::net::IpAddr::from([127, 0, 0, 1]),
    };
    let web = WebConfig {
        max_frame_bytes: 4096,
        max_message_bytes: 8192,
        domains: vec!["example.test".to_owned()],
        ..WebConfig::default()
    };
    let preauth = XmlLimits { stanza_bytes: 2048, ..limits() };
    let mut s = WebSocketSession::new(std::sync::Arc::new(web), Session::new(cfg, binding, start), preauth, limits());
    let mut upgraded = false;
    if data.first().is_some_and(|b| b & 1 == 1) {
        s.client_bytes(WS_UPGRADE, start);
        upgraded = s.take_to_client().starts_with(b"HTTP/1.1 101 ");
        assert!(upgraded, "the fixed upgrade request is accepted");
    }
    let mut now = start;
    let mut rest = data.get(1..).unwrap_or_default();
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let was_closed = s.is_closed();
        now += std::time::Duration::from_secs(1);
        match op % 10 {
            0 | 1 | 9 => {
                let n = rest.first().map_or(0, |&n| usize::from(n)).min(rest.len().saturating_sub(1));
                let bytes = rest.get(1..1 + n).unwrap_or_default();
                rest = rest.get(1 + n..).unwrap_or_default();
                match op % 10 {
                    0 => s.client_bytes(bytes, now),
                    1 => s.backend_bytes(bytes, now),
                    _ => {
                        let mut frame = vec![0x81, 0x80 | bytes.len().min(125) as u8, 1, 2, 3, 4];
                        let payload = &bytes[..bytes.len().min(125)];
                        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]));
                        s.client_bytes(&frame, now);
                    }
                }
            }
            2 => s.client_tls_established(),
            3 => s.backend_connected(),
            4 => s.backend_tls_established(),
            5 => s.shutdown(),
            6 => s.backend_failed("fuzz"),
            7 => s.client_disconnected(),
            _ => s.handle_timeout(now + std::time::Duration::from_secs(u64::from(op) * 60)),
        }
        let to_client = s.take_to_client();
        let _ = s.take_to_backend();
        while s.poll_effect().is_some() {}
        if was_closed {
            assert!(to_client.is_empty(), "wrote after close");
        }
        if upgraded {
            check_server_frames(&to_client);
        }
    }
}

/// Whole, unmasked, final server frames; text frames in UTF-8.
fn check_server_frames(mut b: &[u8]) {
    while !b.is_empty() {
        assert!(b.len() >= 2 && b[0] & 0x80 != 0 && b[1] & 0x80 == 0, "a whole unmasked final frame");
        let (len, at) = match b[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 => {
                (usize::try_from(u64::from_be_bytes(b[2..10].try_into().unwrap_or_default())).unwrap_or(usize::MAX), 10)
            }
            n => (usize::from(n), 2),
        };
        let at: usize = at;
        assert!(b.len() >= at.saturating_add(len), "a frame cut short");
        if b[0] & 0x0f == 1 {
            assert!(std::str::from_utf8(&b[at..at + len]).is_ok(), "text frames are UTF-8");
        }
        b = &b[at + len..];
    }
}

/// An s2s session (federation) fed arbitrary I/O events and daemon answers. The first byte
/// picks the kind (inbound, inbound over direct TLS, outbound) and the deny list; then ops as
/// in [`session`], plus the daemon's answers to the s2s effects (certificate verdicts,
/// dialback results, the remote's certificate). Invariants: no panic; nothing is written after
/// the close; no stanza reaches the back leg of an inbound session before some pair was
/// authenticated (an authentication effect precedes it).
pub fn s2s(data: &[u8], start: std::time::Instant) {
    use crate::session::s2s::{DialbackSecret, Dnssec, PeerCert, S2sInbound, S2sOutbound, S2sSettings};
    let first = data.first().copied().unwrap_or(0);
    let settings = S2sSettings {
        local_domains: vec!["a.example".to_owned()].into(),
        cert_domains: vec!["a.example".to_owned()].into(),
        require_tls: first & 8 == 0,
        direct_tls: first & 1 == 1,
        limits: limits(),
        backend_limits: limits(),
        stream_id: "fuzz".to_owned(),
        timeouts: crate::session::Timeouts::default(),
        dialback: std::sync::Arc::new(DialbackSecret::new(b"fuzz")),
    };
    let mut spec = crate::policy::PolicyConfig::default();
    if first & 16 != 0 {
        let origin = crate::origin::Origin { file: "fuzz".into(), line: 1, key: "s2s.deny".into() };
        spec.s2s.deny.push(crate::origin::Located { value: "b.example".to_owned(), origin });
    }
    let Ok(policy) = crate::policy::Policy::compile(&spec) else { return };
    let binding = crate::session::PolicyBinding {
        policy: std::sync::Arc::new(policy),
        rates: std::sync::Arc::new(crate::policy::RateTable::new()),
        source_ip: std::net::IpAddr::from([127, 0, 0, 1]),
    };
    let mut s: Box<dyn StreamMachine> = if first & 2 != 0 {
        Box::new(S2sOutbound::new(settings, binding, start))
    } else {
        Box::new(S2sInbound::new(settings, binding, start))
    };
    let inbound = first & 2 == 0;
    let mut authenticated = false;
    let mut now = start;
    let mut rest = data.get(1..).unwrap_or_default();
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let was_closed = s.is_closed();
        now += std::time::Duration::from_secs(1);
        let cert = || match op / 16 % 4 {
            0 => PeerCert::None,
            1 => PeerCert::Invalid("fuzz".into()),
            2 => PeerCert::Pkix,
            _ => PeerCert::Dane,
        };
        match op % 16 {
            0 | 1 => {
                let n = rest.first().map_or(0, |&n| usize::from(n)).min(rest.len().saturating_sub(1));
                let bytes = rest.get(1..1 + n).unwrap_or_default();
                rest = rest.get(1 + n..).unwrap_or_default();
                if op % 16 == 0 {
                    s.client_bytes(bytes, now)
                } else {
                    s.backend_bytes(bytes, now)
                }
            }
            2 => s.client_tls_established(),
            3 => s.backend_connected(),
            4 => s.backend_tls_established(),
            5 => s.shutdown(),
            6 => s.backend_failed("fuzz"),
            7 => s.client_disconnected(),
            8 => s.handle_timeout(now + std::time::Duration::from_secs(u64::from(op) * 60)),
            9 => s.peer_certificate("b.example", cert()),
            10 => s.dialback_result("b.example", "a.example", Ok(op & 32 != 0)),
            11 => s.dialback_result("b.example", "a.example", Err("fuzz".into())),
            12 => s.remote_certificate(cert(), Dnssec::Secure),
            13 => s.refuse(crate::stream::Condition::PolicyViolation, "fuzz"),
            _ => {
                let _ = s.take_client_buffered();
                let _ = s.take_backend_buffered();
            }
        }
        let to_client = s.take_to_client();
        let to_backend = s.take_to_backend();
        while let Some(effect) = s.poll_effect() {
            if matches!(effect, crate::session::Effect::S2sAuthenticated(_)) {
                authenticated = true;
            }
        }
        if was_closed {
            assert!(to_client.is_empty() && to_backend.is_empty(), "wrote after close");
        }
        if inbound && !authenticated {
            let text = String::from_utf8_lossy(&to_backend);
            assert!(
                !text.contains("<message") && !text.contains("<iq") && !text.contains("<presence"),
                "stanza before authentication"
            );
        }
    }
}
