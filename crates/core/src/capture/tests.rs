//! Reassembly and XMPP tracking over hand-built segments: order, duplicates, conflicts, gaps,
//! mid-stream pickup, FIN/RST, the memory caps, and the session's decisions on stanzas.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::reassembly::{HalfStream, Piece};
use super::*;
use crate::config::Config;
use crate::session::Effect;
use crate::stanza::StanzaCondition;
use crate::transfer::ibb::IbbEnded;
use crate::transfer::Detector;

const BASE: &str = "[[tls.certificate]]\ndomains = [\"example.test\"]\ncert = \"c\"\nkey = \"k\"\n\
    [[listener]]\nname = \"c2s\"\nkind = \"c2s\"\nbind = \"127.0.0.1:5222\"\nbackend = \"127.0.0.1:1\"\n";

const RULES: &str = "[[rule]]\nname = \"no-secrets\"\nwhen = { body_contains = \"secret\" }\naction = \"drop\"\n\
    [[rule]]\nname = \"no-spam-in\"\nchain = \"c2s-out\"\nwhen = { body_contains = \"spam\" }\naction = \"drop\"\n";

fn inspector(limits: CaptureLimits) -> Inspector {
    let config = Config::parse(&format!("{BASE}{RULES}"), std::path::Path::new("/x.toml")).unwrap();
    let policy = Arc::new(Policy::compile(&config.policy).unwrap());
    Inspector::new(policy, config.limits, limits, Instant::now())
}

fn client() -> SocketAddr {
    "192.0.2.10:40000".parse().unwrap()
}
fn server() -> SocketAddr {
    "192.0.2.1:5222".parse().unwrap()
}

/// Builds the segments of one TCP connection with correct sequence numbers.
struct Conn {
    seq: [u32; 2],
    ts: u64,
    /// Initiator, responder.
    addrs: (SocketAddr, SocketAddr),
}

impl Conn {
    fn new() -> Self {
        Conn::between(client(), server())
    }

    fn between(initiator: SocketAddr, responder: SocketAddr) -> Self {
        Conn { seq: [1000, u32::MAX - 20], ts: 1_700_000_000_000, addrs: (initiator, responder) }
    }

    fn ends(&self, dir: usize) -> (SocketAddr, SocketAddr) {
        if dir == 0 {
            self.addrs
        } else {
            (self.addrs.1, self.addrs.0)
        }
    }

    fn ts(&mut self) -> Duration {
        self.ts += 1;
        Duration::from_millis(self.ts)
    }

    fn handshake(&mut self, insp: &mut Inspector) {
        let (c, s) = self.addrs;
        let syn = TcpFlags { syn: true, ..TcpFlags::default() };
        let ts = self.ts();
        insp.segment(&Segment { src: c, dst: s, seq: self.seq[0], ack: 0, flags: syn, payload: b"" }, ts);
        let synack = TcpFlags { syn: true, ack: true, ..TcpFlags::default() };
        let ts = self.ts();
        let ack = self.seq[0].wrapping_add(1);
        insp.segment(&Segment { src: s, dst: c, seq: self.seq[1], ack, flags: synack, payload: b"" }, ts);
        self.seq = [self.seq[0].wrapping_add(1), self.seq[1].wrapping_add(1)];
    }

    /// The segment carrying `data` from `dir`, advancing the sequence number.
    fn seg(&mut self, dir: usize, data: &[u8]) -> (u32, Vec<u8>) {
        let seq = self.seq[dir];
        self.seq[dir] = seq.wrapping_add(data.len() as u32);
        (seq, data.to_vec())
    }

    fn send_at(&mut self, insp: &mut Inspector, dir: usize, seq: u32, data: &[u8]) {
        let (src, dst) = self.ends(dir);
        let ts = self.ts();
        let flags = TcpFlags { ack: true, ..TcpFlags::default() };
        // Acknowledge only what the other side has sent in order so far (no hole is implied).
        let ack = self.seq[1 - dir];
        insp.segment(&Segment { src, dst, seq, ack, flags, payload: data }, ts);
    }

    fn send(&mut self, insp: &mut Inspector, dir: usize, data: &[u8]) {
        let (seq, d) = self.seg(dir, data);
        self.send_at(insp, dir, seq, &d);
    }

    fn close(&mut self, insp: &mut Inspector, rst: bool) {
        for dir in 0..2 {
            let (src, dst) = self.ends(dir);
            let flags = TcpFlags { ack: true, fin: !rst, rst, ..TcpFlags::default() };
            let ts = self.ts();
            insp.segment(&Segment { src, dst, seq: self.seq[dir], ack: self.seq[1 - dir], flags, payload: b"" }, ts);
            if rst {
                break;
            }
        }
    }
}

fn events(insp: &mut Inspector) -> Vec<CaptureEvent> {
    std::iter::from_fn(|| insp.poll_event()).collect()
}

/// Rules that decided, per chain, in order.
fn decisions(evs: &[CaptureEvent]) -> Vec<(String, String, Option<String>)> {
    evs.iter()
        .filter_map(|e| match &e.what {
            Observed::Decision(_, Effect::Policy(p)) => Some((
                p.chain.as_str().to_owned(),
                p.hits.last().map(|h| h.rule.to_string()).unwrap_or_else(|| "default".into()),
                p.stanza.from.clone(),
            )),
            Observed::Decision(_, Effect::Dropped { reason, .. }) => Some(("gateway".into(), reason.to_string(), None)),
            _ => None,
        })
        .collect()
}

const CLIENT_OPEN: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>";
const SERVER_OPEN: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' from='example.test' id='s1' version='1.0'>";
const FEATURES: &[u8] = b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
    <mechanism>PLAIN</mechanism></mechanisms></stream:features>";
/// `\0alice\0hunter2`
const AUTH: &[u8] = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAGh1bnRlcjI=</auth>";
const SUCCESS: &[u8] = b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>";
const BIND: &[u8] =
    b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>";
const BOUND: &[u8] = b"<iq type='result' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
    <jid>alice@example.test/r</jid></bind></iq>";
const SECRET: &[u8] = b"<message to='bob@example.test' id='m1'><body>a secret</body></message>";
const HELLO: &[u8] = b"<message to='bob@example.test' id='m2'><body>hello</body></message>";
const SPAM: &[u8] = b"<message from='eve@evil.test/x' to='alice@example.test/r' id='m3'><body>spam!</body></message>";

/// A whole authenticated session up to (not including) the stanzas.
fn login(insp: &mut Inspector, conn: &mut Conn) {
    conn.handshake(insp);
    conn.send(insp, 0, CLIENT_OPEN);
    conn.send(insp, 1, SERVER_OPEN);
    conn.send(insp, 1, FEATURES);
    conn.send(insp, 0, AUTH);
    conn.send(insp, 1, SUCCESS);
    conn.send(insp, 0, CLIENT_OPEN);
    conn.send(insp, 1, SERVER_OPEN);
    conn.send(insp, 1, b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>");
    conn.send(insp, 0, BIND);
    conn.send(insp, 1, BOUND);
}

#[test]
fn a_plaintext_session_is_tracked_and_decided_like_inline() {
    let mut insp = inspector(CaptureLimits::default());
    let mut conn = Conn::new();
    login(&mut insp, &mut conn);
    conn.send(&mut insp, 0, SECRET);
    conn.send(&mut insp, 0, HELLO);
    conn.send(&mut insp, 1, SPAM);
    conn.close(&mut insp, false);
    let evs = events(&mut insp);
    assert!(evs.iter().all(|e| e.flow == FlowAddrs { client: client(), server: server() }));
    let stream = evs.iter().find_map(|e| match &e.what {
        Observed::Stream { kind, to, midstream, .. } => Some((*kind, to.clone(), *midstream)),
        _ => None,
    });
    assert_eq!(stream, Some((StreamKind::C2s, Some("example.test".to_owned()), false)));
    assert!(evs.iter().any(|e| e.what == Observed::Authenticated { mechanism: Some("PLAIN".to_owned()) }));
    assert!(evs.iter().any(|e| matches!(&e.what, Observed::Bound(j) if j.to_string() == "alice@example.test/r")));
    assert_eq!(
        decisions(&evs),
        [
            ("c2s-in".into(), "no-secrets".into(), Some("alice@example.test/r".into())),
            ("c2s-out".into(), "no-spam-in".into(), Some("eve@evil.test/x".into()))
        ]
    );
    // PLAIN credentials appear nowhere in what is reported.
    let all = format!("{evs:?}");
    assert!(!all.contains("AGFsaWNl") && !all.contains("hunter2"), "{all}");
    let ended = evs.last().unwrap();
    match &ended.what {
        Observed::Ended { how, xmpp, totals } => {
            assert_eq!((*how, *xmpp), (FlowEnd::Fin, true));
            // bind, secret, hello from the client; bind result and spam from the server.
            assert_eq!(totals.stanzas, [3, 2]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(insp.flow_count(), 0);
}

#[test]
fn out_of_order_and_duplicated_segments_reassemble_to_the_same_decisions() {
    let mut insp = inspector(CaptureLimits::default());
    let mut conn = Conn::new();
    login(&mut insp, &mut conn);
    let (a, da) = conn.seg(0, &SECRET[..20]);
    let (b, db) = conn.seg(0, &SECRET[20..]);
    let (c, dc) = conn.seg(0, HELLO);
    // c, b, a, then every one again.
    for (seq, d) in [(c, &dc), (b, &db), (a, &da), (a, &da), (b, &db), (c, &dc)] {
        conn.send_at(&mut insp, 0, seq, d);
    }
    conn.close(&mut insp, false);
    let evs = events(&mut insp);
    assert_eq!(decisions(&evs), [("c2s-in".into(), "no-secrets".into(), Some("alice@example.test/r".into()))]);
    assert!(!evs.iter().any(|e| matches!(e.what, Observed::Conflict { .. } | Observed::Gap { .. })));
    assert!(insp.stats().duplicates >= 3, "{:?}", insp.stats());
}

#[test]
fn a_conflicting_overlap_is_flagged_and_the_first_copy_wins() {
    let mut insp = inspector(CaptureLimits::default());
    let mut conn = Conn::new();
    login(&mut insp, &mut conn);
    let (seq, data) = conn.seg(0, HELLO);
    conn.send_at(&mut insp, 0, seq, &data);
    // The same bytes again, but the body says "secret": the receiver may have kept either.
    let forged = b"<message to='bob@example.test' id='m2'><body>secre</body></message>";
    assert_eq!(forged.len(), HELLO.len());
    conn.send_at(&mut insp, 0, seq, forged);
    // And an out-of-order pair that disagrees with itself.
    let (s2, d2) = conn.seg(0, SECRET);
    conn.send_at(&mut insp, 0, s2.wrapping_add(5), &d2[5..]);
    let forged2 = b"<message to='bob@example.test' id='m1'><body>a sacret</body></message>";
    assert_eq!(forged2.len(), SECRET.len());
    conn.send_at(&mut insp, 0, s2.wrapping_add(5), &forged2[5..]);
    conn.send_at(&mut insp, 0, s2, &d2[..5]);
    conn.close(&mut insp, false);
    let evs = events(&mut insp);
    let conflicts: Vec<_> =
        evs.iter().filter(|e| matches!(e.what, Observed::Conflict { from_client: true, .. })).collect();
    assert_eq!(conflicts.len(), 2, "{evs:?}");
    // First copies won: HELLO passes, SECRET is dropped.
    assert_eq!(decisions(&evs), [("c2s-in".into(), "no-secrets".into(), Some("alice@example.test/r".into()))]);
    assert_eq!(insp.stats().conflicts, 2);
}

#[test]
fn a_lost_segment_is_a_gap_and_the_reader_resyncs_at_the_next_stanza() {
    let mut insp = inspector(CaptureLimits::default());
    let mut conn = Conn::new();
    login(&mut insp, &mut conn);
    let (_, _lost) = conn.seg(0, &HELLO[..30]);
    conn.send(&mut insp, 0, &HELLO[30..]);
    conn.send(&mut insp, 0, SECRET);
    // The server acknowledges everything: the hole is capture loss.
    let (src, dst) = conn.ends(1);
    let ts = conn.ts();
    let flags = TcpFlags { ack: true, ..TcpFlags::default() };
    insp.segment(&Segment { src, dst, seq: conn.seq[1], ack: conn.seq[0], flags, payload: b"" }, ts);
    let evs = events(&mut insp);
    assert!(evs.iter().any(|e| e.what == Observed::Gap { from_client: true, bytes: 30 }), "{evs:?}");
    assert!(!evs.iter().any(|e| matches!(e.what, Observed::ParseError { .. })), "{evs:?}");
    assert_eq!(decisions(&evs), [("c2s-in".into(), "no-secrets".into(), Some("alice@example.test/r".into()))]);
    // Later stanzas still parse.
    conn.send(&mut insp, 0, SECRET);
    assert_eq!(decisions(&events(&mut insp)).len(), 1);
    assert_eq!(insp.stats().gap_bytes, 30);
}

#[test]
fn a_flow_picked_up_mid_stream_is_recognised_at_the_next_stanza() {
    let mut insp = inspector(CaptureLimits::default());
    let mut conn = Conn::new();
    // No SYN, no header: the capture starts inside a stanza.
    conn.send(&mut insp, 0, b"dy>tail of something</body></message>");
    conn.send(&mut insp, 0, SECRET);
    conn.send(&mut insp, 1, SPAM);
    conn.close(&mut insp, true);
    let evs = events(&mut insp);
    assert!(
        evs.iter().any(|e| matches!(e.what, Observed::Stream { kind: StreamKind::C2s, midstream: true, .. })),
        "{evs:?}"
    );
    // The client side is the one away from port 5222; nobody is bound, so nothing is stamped.
    assert!(evs.iter().all(|e| e.flow.server == server()));
    assert_eq!(
        decisions(&evs),
        [
            ("c2s-in".into(), "no-secrets".into(), None),
            ("c2s-out".into(), "no-spam-in".into(), Some("eve@evil.test/x".into()))
        ]
    );
    assert!(matches!(evs.last().unwrap().what, Observed::Ended { how: FlowEnd::Rst, xmpp: true, .. }));
}

#[test]
fn starttls_proceed_makes_the_flow_encrypted_and_nothing_after_it_is_parsed() {
    let mut insp = inspector(CaptureLimits::default());
    let mut conn = Conn::new();
    conn.handshake(&mut insp);
    conn.send(&mut insp, 0, CLIENT_OPEN);
    conn.send(&mut insp, 1, SERVER_OPEN);
    conn.send(&mut insp, 0, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    conn.send(&mut insp, 1, b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    conn.send(&mut insp, 0, b"\x16\x03\x01\x00\x05hello");
    // Even plaintext-looking bytes after <proceed/> are TLS as far as anyone knows.
    conn.send(&mut insp, 0, SECRET);
    conn.close(&mut insp, false);
    let evs = events(&mut insp);
    assert!(evs.iter().any(|e| e.what == Observed::Encrypted(Encryption::StartTls)));
    assert!(decisions(&evs).is_empty());
    assert!(matches!(evs.last().unwrap().what, Observed::Ended { xmpp: true, .. }));
}

#[test]
fn direct_tls_with_xmpp_alpn_is_reported_encrypted_and_other_tls_is_not_xmpp() {
    let mut insp = inspector(CaptureLimits::default());
    let mut conn = Conn::new();
    conn.handshake(&mut insp);
    conn.send(&mut insp, 0, b"\x16\x03\x01\x00\x40\x01\x00\x00\x3c....\x00\x10\x00\x0e\x00\x0cxmpp-client");
    conn.close(&mut insp, false);
    let evs = events(&mut insp);
    assert!(evs.iter().any(|e| e.what == Observed::Encrypted(Encryption::DirectTls)), "{evs:?}");
    let mut insp = inspector(CaptureLimits::default());
    let mut conn = Conn::new();
    conn.handshake(&mut insp);
    conn.send(&mut insp, 0, b"GET / HTTP/1.1\r\n\r\n");
    conn.close(&mut insp, false);
    let evs = events(&mut insp);
    assert_eq!(evs.len(), 1);
    assert!(matches!(evs[0].what, Observed::Ended { xmpp: false, .. }));
}

#[test]
fn flows_beyond_the_cap_evict_the_least_recently_seen() {
    let limits = CaptureLimits { max_flows: 100, ..CaptureLimits::default() };
    let mut insp = inspector(limits);
    for i in 0..10_000u32 {
        let src: SocketAddr =
            format!("10.{}.{}.{}:{}", i >> 16, (i >> 8) & 255, i & 255, 1024 + (i % 60_000)).parse().unwrap();
        let flags = TcpFlags { syn: true, ..TcpFlags::default() };
        insp.segment(&Segment { src, dst: server(), seq: i, ack: 0, flags, payload: b"" }, Duration::from_secs(1));
        assert!(insp.flow_count() <= 100);
    }
    let s = insp.stats();
    assert_eq!((s.flows, s.flows_evicted, s.flows_high_water), (10_000, 9_900, 100));
    let evicted =
        events(&mut insp).iter().filter(|e| matches!(e.what, Observed::Ended { how: FlowEnd::Evicted, .. })).count();
    assert_eq!(evicted, 9_900);
}

#[test]
fn idle_flows_expire_in_capture_time() {
    let limits = CaptureLimits { idle_timeout: Duration::from_secs(10), ..CaptureLimits::default() };
    let mut insp = inspector(limits);
    let syn = TcpFlags { syn: true, ..TcpFlags::default() };
    insp.segment(
        &Segment { src: client(), dst: server(), seq: 1, ack: 0, flags: syn, payload: b"" },
        Duration::from_secs(1),
    );
    let other: SocketAddr = "192.0.2.99:1234".parse().unwrap();
    insp.segment(
        &Segment { src: other, dst: server(), seq: 1, ack: 0, flags: syn, payload: b"" },
        Duration::from_secs(30),
    );
    assert_eq!(insp.flow_count(), 1);
    assert_eq!(insp.stats().flows_idle, 1);
}

#[test]
fn out_of_order_bytes_are_capped_per_flow_and_in_total() {
    let limits = CaptureLimits { max_pending_per_flow: 1000, max_pending_total: 1500, ..CaptureLimits::default() };
    let mut insp = inspector(limits);
    let mut conn = Conn::new();
    login(&mut insp, &mut conn);
    let _hole = conn.seg(0, b"x");
    for _ in 0..20 {
        let (seq, d) = conn.seg(0, &[b'a'; 100]);
        conn.send_at(&mut insp, 0, seq, &d);
        assert!(insp.pending_bytes() <= 1000, "{}", insp.pending_bytes());
    }
    let evs = events(&mut insp);
    assert!(evs.iter().any(|e| matches!(e.what, Observed::Gap { from_client: true, bytes: 1 })), "{evs:?}");
    // Two SYN-less flows, each with 900 bytes behind a hole: together past the total cap, the
    // one growing loses its waiting bytes.
    let flags = TcpFlags { ack: true, ..TcpFlags::default() };
    for port in [40001u16, 40002] {
        let src: SocketAddr = format!("192.0.2.11:{port}").parse().unwrap();
        insp.segment(&Segment { src, dst: server(), seq: 0, ack: 0, flags, payload: b"<" }, Duration::from_secs(2));
        for i in 0..9u32 {
            let seq = 2 + i * 100;
            insp.segment(
                &Segment { src, dst: server(), seq, ack: 0, flags, payload: &[b'b'; 100] },
                Duration::from_secs(2),
            );
            assert!(insp.pending_bytes() <= 1500, "{}", insp.pending_bytes());
        }
    }
    // The second flow's 7th segment took the total to 1600: its 700 waiting bytes went.
    assert_eq!(insp.stats().pending_dropped, 700);
    assert_eq!(insp.pending_bytes(), 900 + 200);
}

#[test]
fn half_stream_handles_wraparound_flush_and_ack_gaps() {
    let mut h = HalfStream::default();
    let mut out = Vec::new();
    h.syn(u32::MAX - 2);
    // Data starts at u32::MAX - 1 and wraps.
    let a = h.accept(u32::MAX - 1, b"abcd");
    assert!(a.in_order && a.skip == 0);
    h.delivered(b"abcd", 64);
    // A retransmission of "cd" (after the wrap) agrees.
    let r = h.accept(0, b"cd");
    assert!(r.duplicate && !r.conflict);
    let r = h.accept(0, b"xd");
    assert!(r.conflict);
    // Out of order beyond a hole of 3 bytes, then the flow ends.
    assert!(!h.accept(5, b"zz").in_order);
    h.flush(&mut out, 64);
    assert_eq!(out, [Piece::Gap(3), Piece::Data(b"zz".to_vec())]);
    assert_eq!(h.offset(), 9);
    // An ack past a hole with data beyond it declares the gap.
    out.clear();
    // Offset 9 is sequence number 7 (the stream wrapped at offset 2).
    assert!(!h.accept(7 + 2, b"qq").in_order);
    h.acknowledged(7 + 4, &mut out, 64);
    assert_eq!(out, [Piece::Gap(2), Piece::Data(b"qq".to_vec())]);
}

const S2S_RULES: &str = "[s2s]\ndomains = [\"example.test\"]\n\
    [[rule]]\nname = \"no-secrets-in\"\nchain = \"s2s-in\"\nwhen = { body_contains = \"secret\" }\naction = \"drop\"\n\
    [[rule]]\nname = \"no-secrets-out\"\nchain = \"s2s-out\"\nwhen = { body_contains = \"secret\" }\naction = \"bounce\"\n";

/// An inspector with s2s rules; `ours`: pass `[s2s] domains` on.
fn s2s_inspector(ours: bool) -> Inspector {
    let config = Config::parse(&format!("{BASE}{S2S_RULES}"), std::path::Path::new("/x.toml")).unwrap();
    let policy = Arc::new(Policy::compile(&config.policy).unwrap());
    let mut insp = Inspector::new(policy, config.limits, CaptureLimits::default(), Instant::now());
    if ours {
        insp.set_local_domains(config.s2s.map(|s| s.local_domains));
    }
    insp
}

/// One plaintext dialback s2s stream from `from` to `to` (XEP-0220 §2.1), then `stanzas` from
/// the initiator and one message the other way (a one-way stream: never evaluated).
fn s2s_flow(insp: &mut Inspector, initiator: &str, responder: &str, from: &str, to: &str, stanzas: &[&str]) {
    let mut conn = Conn::between(initiator.parse().unwrap(), responder.parse().unwrap());
    conn.handshake(insp);
    let open = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' \
         xmlns:stream='http://etherx.jabber.org/streams' from='{from}' to='{to}' version='1.0'>"
    );
    conn.send(insp, 0, open.as_bytes());
    let reply = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' \
         xmlns:stream='http://etherx.jabber.org/streams' from='{to}' to='{from}' id='s2' version='1.0'>\
         <stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>"
    );
    conn.send(insp, 1, reply.as_bytes());
    conn.send(insp, 0, format!("<db:result from='{from}' to='{to}'>b4835385f37fe2895af6c196b59097b16862406db80559900d96bf6fa7d23df3</db:result>").as_bytes());
    conn.send(insp, 1, format!("<db:result from='{to}' to='{from}' type='valid'/>").as_bytes());
    for s in stanzas {
        conn.send(insp, 0, s.as_bytes());
    }
    let back = format!("<message from='x@{to}' to='y@{from}' id='r1'><body>a secret back</body></message>");
    conn.send(insp, 1, back.as_bytes());
    conn.close(insp, false);
}

#[test]
fn s2s_stanzas_from_the_initiator_go_through_s2s_in_or_s2s_out_by_the_receiving_domain() {
    let mut insp = s2s_inspector(true);
    // Inbound: remote.test → example.test (ours).
    s2s_flow(
        &mut insp,
        "198.51.100.7:40001",
        "192.0.2.1:5269",
        "remote.test",
        "example.test",
        &[
            "<message from='eve@remote.test/x' to='alice@example.test' id='i1'><body>a secret</body></message>",
            "<message from='eve@remote.test/x' to='alice@example.test' id='i2'><body>hello</body></message>",
            // RFC 6120 §8.1.2.2: a stanza on an s2s stream needs a 'from'.
            "<message to='alice@example.test' id='i3'><body>no from</body></message>",
        ],
    );
    // Outbound: our server (example.test) → remote.test.
    s2s_flow(
        &mut insp,
        "192.0.2.1:40002",
        "198.51.100.7:5269",
        "example.test",
        "remote.test",
        &["<message from='alice@example.test/r' to='eve@remote.test' id='o1'><body>a secret</body></message>"],
    );
    let evs = events(&mut insp);
    let kinds: Vec<_> = evs
        .iter()
        .filter_map(|e| matches!(e.what, Observed::Stream { kind: StreamKind::S2s, .. }).then_some(e.flow))
        .collect();
    assert_eq!(kinds.len(), 2, "{evs:#?}");
    let decided: Vec<_> = evs
        .iter()
        .filter_map(|e| match &e.what {
            Observed::Decision(chain, Effect::Policy(p)) => Some((
                chain.as_str(),
                p.chain.as_str(),
                p.hits.last().map(|h| h.rule.to_string()).unwrap_or_default(),
                p.outcome.as_str(),
                p.stanza.id.clone(),
            )),
            Observed::Decision(..) => panic!("unexpected {e:?}"),
            _ => None,
        })
        .collect();
    assert_eq!(
        decided,
        vec![
            ("s2s-in", "s2s-in", "no-secrets-in".to_owned(), "drop", Some("i1".to_owned())),
            ("s2s-out", "s2s-out", "no-secrets-out".to_owned(), "bounce", Some("o1".to_owned())),
        ]
    );
    let closes: Vec<_> = evs
        .iter()
        .filter_map(|e| match &e.what {
            Observed::WouldClose { chain, condition, .. } => Some((chain.as_str(), condition.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(closes, vec![("s2s-in", "improper-addressing")]);
    // The flows are reported from the initiator's side, and stanzas were counted both ways.
    let ended: Vec<_> = evs
        .iter()
        .filter_map(|e| match &e.what {
            Observed::Ended { xmpp: true, totals, .. } => Some((e.flow.client.port(), totals.stanzas)),
            _ => None,
        })
        .collect();
    assert_eq!(ended, vec![(40001, [3, 1]), (40002, [1, 1])]);
}

#[test]
fn without_local_domains_every_s2s_stream_is_taken_as_inbound() {
    let mut insp = s2s_inspector(false);
    s2s_flow(
        &mut insp,
        "192.0.2.1:40002",
        "198.51.100.7:5269",
        "example.test",
        "remote.test",
        &["<message from='alice@example.test/r' to='eve@remote.test' id='o1'><body>a secret</body></message>"],
    );
    let rules: Vec<_> = events(&mut insp)
        .into_iter()
        .filter_map(|e| match e.what {
            Observed::Decision(chain, Effect::Policy(p)) => {
                Some((chain.as_str(), p.hits.last().map(|h| h.rule.to_string()).unwrap_or_default()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(rules, vec![("s2s-in", "no-secrets-in".to_owned())]);
}

#[test]
fn an_unsupported_top_level_element_from_the_client_would_close_the_stream() {
    let mut insp = inspector(CaptureLimits::default());
    let mut conn = Conn::new();
    login(&mut insp, &mut conn);
    conn.send(&mut insp, 0, b"<r xmlns='urn:xmpp:sm:3'/><active xmlns='urn:xmpp:csi:0'/>");
    conn.send(&mut insp, 0, b"<foo xmlns='urn:foo'><bar/></foo>");
    conn.send(&mut insp, 1, b"<foo xmlns='urn:foo'/>");
    let closes: Vec<_> = events(&mut insp)
        .into_iter()
        .filter_map(|e| match e.what {
            Observed::WouldClose { chain, condition, .. } => Some((chain, condition)),
            _ => None,
        })
        .collect();
    assert_eq!(closes, vec![(Chain::C2sIn, Condition::UnsupportedStanzaType)]);
}

/// The first stream error the gateway would answer, from would-close or XML-refused events.
fn first_refusal(evs: &[CaptureEvent]) -> Option<Condition> {
    evs.iter().find_map(|e| match &e.what {
        Observed::WouldClose { condition, .. } => Some(*condition),
        Observed::ParseError { error, .. } => Some(Condition::from(error)),
        _ => None,
    })
}

#[test]
fn a_client_header_the_gateway_would_refuse_is_reported_with_its_condition() {
    let ns = "xmlns:stream='http://etherx.jabber.org/streams'";
    let cases: [(String, Option<Condition>); 6] = [
        (format!("<stream:stream xmlns='jabber:client' {ns} to='example.test' version='1.0'>"), None),
        (format!("<stream:stream xmlns='jabber:client' {ns} to='example.test'>"), Some(Condition::UnsupportedVersion)),
        (
            format!("<stream:stream xmlns='jabber:client' {ns} to='example.test' version='2.0'>"),
            Some(Condition::UnsupportedVersion),
        ),
        (format!("<stream:stream xmlns='jabber:client' {ns} version='1.0'>"), Some(Condition::HostUnknown)),
        (
            "<stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong' to='example.test' version='1.0'>".to_owned(),
            Some(Condition::InvalidNamespace),
        ),
        (
            format!("<?xml version='1.1'?><stream:stream xmlns='jabber:client' {ns} to='example.test' version='1.0'>"),
            Some(Condition::NotWellFormed),
        ),
    ];
    for (header, expected) in cases {
        let mut insp = inspector(CaptureLimits::default());
        let mut conn = Conn::new();
        conn.handshake(&mut insp);
        conn.send(&mut insp, 0, header.as_bytes());
        conn.send(&mut insp, 0, SECRET);
        conn.close(&mut insp, false);
        let evs = events(&mut insp);
        assert_eq!(first_refusal(&evs), expected, "{header}: {evs:?}");
        assert!(evs.iter().any(|e| matches!(e.what, Observed::Stream { kind: StreamKind::C2s, .. })), "{header}");
    }
    // UTF-16 (RFC 6120 §11.6: UTF-8 only), and a UTF-16 text that is not XMPP is left alone.
    for (text, expected) in [
        (
            format!("<stream:stream xmlns='jabber:client' {ns} to='example.test' version='1.0'>"),
            Some(Condition::UnsupportedEncoding),
        ),
        ("<html><body>hello</body></html>".to_owned(), None),
    ] {
        let mut bytes = vec![0xFE, 0xFF];
        bytes.extend(text.encode_utf16().flat_map(u16::to_be_bytes));
        let mut insp = inspector(CaptureLimits::default());
        let mut conn = Conn::new();
        conn.handshake(&mut insp);
        conn.send(&mut insp, 0, &bytes);
        conn.close(&mut insp, false);
        let evs = events(&mut insp);
        assert_eq!(first_refusal(&evs), expected, "{text}: {evs:?}");
    }
}

const FILES: &str = "[[listener]]\nname = \"relay\"\nkind = \"socks5\"\nbind = \"192.0.2.10:7777\"\n\
    [file_transfer]\nproxy_jid = \"proxy.example.test\"\ndlp_keywords = [\"CONFIDENTIAL\"]\n\
    deny_types = [\"application/pdf\"]\n\
    [[rule]]\nname = \"nothing-to-carol\"\nchain = \"file\"\nwhen = { to = \"carol@example.test\" }\naction = \"block\"\n";

/// An inspector judging in-band bytestreams with `[file_transfer]` (`scanner`: clamd named).
fn file_inspector(scanner: bool) -> Inspector {
    let config = Config::parse(&format!("{BASE}{FILES}"), std::path::Path::new("/x.toml")).unwrap();
    let policy = Arc::new(Policy::compile(&config.policy).unwrap());
    let ft = config.file_transfer.as_ref().unwrap();
    let inspect = Arc::new(ft.inspect_policy(policy.file_rules().clone()).unwrap());
    let mut insp = Inspector::new(policy, config.limits, CaptureLimits::default(), Instant::now());
    insp.set_file_inspection(Some(FileInspection { policy: inspect, scanner }));
    insp
}

fn b64(d: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(d)
}

/// One XEP-0047 session from alice to `to`: open, `chunks` as data iqs with seq from 0, close.
fn ibb_session(to: &str, sid: &str, block: usize, chunks: &[String]) -> Vec<String> {
    let mut out = vec![format!(
        "<iq type='set' id='{sid}-o' to='{to}'><open xmlns='http://jabber.org/protocol/ibb' sid='{sid}' \
         block-size='{block}' stanza='iq'/></iq>"
    )];
    for (seq, c) in chunks.iter().enumerate() {
        out.push(format!(
            "<iq type='set' id='{sid}-{seq}' to='{to}'><data xmlns='http://jabber.org/protocol/ibb' sid='{sid}' \
             seq='{seq}'>{c}</data></iq>"
        ));
    }
    out.push(format!(
        "<iq type='set' id='{sid}-c' to='{to}'><close xmlns='http://jabber.org/protocol/ibb' sid='{sid}'/></iq>"
    ));
    out
}

/// Run `stanzas` from the client of a logged-in flow; the in-band transfers and refusals seen.
fn ibb_flow(insp: &mut Inspector, stanzas: &[String]) -> (Vec<IbbEnded>, Vec<(StanzaCondition, String)>) {
    let mut conn = Conn::new();
    login(insp, &mut conn);
    for s in stanzas {
        conn.send(insp, 0, s.as_bytes());
    }
    conn.close(insp, false);
    let evs = events(insp);
    let mut ended = Vec::new();
    let mut errors = Vec::new();
    for e in evs {
        match e.what {
            Observed::FileTransfer { chain, ended: x, opened } => {
                assert_eq!(chain, Chain::C2sIn);
                // The open's capture time, unless the open itself was refused.
                assert!(opened.is_none_or(|o| o < e.ts), "{opened:?} {:?}", e.ts);
                assert_eq!(opened.is_some(), x.sid != "carol", "{x:?}");
                ended.push(*x);
            }
            Observed::FileTransferError { condition, reason, .. } => errors.push((condition, reason)),
            _ => {}
        }
    }
    (ended, errors)
}

/// The text of a chunked file, base64 per block.
fn chunks(data: &[u8], block: usize) -> Vec<String> {
    data.chunks(block).map(b64).collect()
}

#[test]
fn in_band_transfers_are_judged_by_the_file_chain_and_checks() {
    let mut insp = file_inspector(false);
    let text = b"quarterly numbers, all fine\n".repeat(40);
    let mut dlp = text.clone();
    dlp.extend_from_slice(b"this is CONFIDENTIAL\n");
    let pdf = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\n".repeat(10);
    let mut stanzas = ibb_session("bob@example.test/b", "clean", 256, &chunks(&text, 256));
    stanzas.extend(ibb_session("bob@example.test/b", "leak", 256, &chunks(&dlp, 256)));
    stanzas.extend(ibb_session("bob@example.test/b", "pdf", 128, &chunks(&pdf, 128)));
    stanzas.extend(ibb_session("carol@example.test/c", "carol", 256, &chunks(b"hi", 256)));
    let (ended, errors) = ibb_flow(&mut insp, &stanzas);
    // The carol stream is refused at its open: its data is then unknown, never waved through.
    assert_eq!(errors, [(StanzaCondition::NotAcceptable, "unknown in-band bytestream".to_owned())]);
    let got: Vec<_> = ended
        .iter()
        .map(|e| (e.sid.as_str(), e.sender.as_str(), e.facts.bytes, e.refusal.as_ref().map(|r| r.detector.as_str())))
        .collect();
    // The carol stream is refused at its open (the file chain's `to`), before any byte.
    assert_eq!(
        got,
        [
            ("clean", "alice@example.test/r", text.len() as u64, None),
            ("leak", "alice@example.test/r", dlp.len() as u64, Some("dlp")),
            ("pdf", "alice@example.test/r", pdf.len() as u64, Some("type")),
            ("carol", "alice@example.test/r", 0, Some("rule")),
        ]
    );
    assert_eq!(ended[3].refusal.as_ref().unwrap().rule.as_deref(), Some("nothing-to-carol"));
    // The clean file's hash is the whole file's.
    let sha = ended[0].facts.sha256.clone().unwrap();
    assert_eq!(sha.len(), 64);
}

#[test]
fn with_clamd_named_in_band_files_are_reported_not_scanned() {
    let mut insp = file_inspector(true);
    let stanzas = ibb_session("bob@example.test/b", "s", 256, &chunks(b"plain text", 256));
    let (ended, _) = ibb_flow(&mut insp, &stanzas);
    let r = ended[0].refusal.as_ref().expect("on_scanner_error = block by default");
    assert_eq!((r.detector.as_str(), r.detail.contains(NOT_SCANNED)), ("scanner-error", true), "{r}");
}

#[test]
fn hostile_in_band_streams_give_errors_not_panics() {
    let mut insp = file_inspector(false);
    let to = "bob@example.test/b";
    let data = |sid: &str, seq: &str, text: &str| {
        format!(
            "<iq type='set' id='d' to='{to}'><data xmlns='http://jabber.org/protocol/ibb' sid='{sid}' \
             seq='{seq}'>{text}</data></iq>"
        )
    };
    let open = |sid: &str, block: &str| {
        format!(
            "<iq type='set' id='o' to='{to}'><open xmlns='http://jabber.org/protocol/ibb' sid='{sid}' \
             block-size='{block}'/></iq>"
        )
    };
    let stanzas = vec![
        // A block size over XEP-0047's 65535, and none at all.
        open("huge", "4294967296"),
        open("none", "").replace(" block-size=''", ""),
        // Not base64.
        open("b64", "64"),
        data("b64", "0", "!!!not base64***"),
        // A seq gap: 0 then 2.
        open("gap", "64"),
        data("gap", "0", &b64(b"abc")),
        data("gap", "2", &b64(b"def")),
        // A chunk over the block size.
        open("big", "4"),
        data("big", "0", &b64(b"0123456789")),
        // Data for a stream never opened, and data in a message.
        data("ghost", "0", &b64(b"x")),
        format!(
            "<message to='{to}'><data xmlns='http://jabber.org/protocol/ibb' sid='m' seq='0'>{}</data></message>",
            b64(b"x")
        ),
    ];
    let (ended, errors) = ibb_flow(&mut insp, &stanzas);
    let conditions: Vec<_> = errors.iter().map(|(c, r)| (c.as_str(), r.as_str())).collect();
    assert_eq!(
        conditions,
        [
            ("resource-constraint", "block-size must be 1 to 65535"),
            ("bad-request", "open without block-size"),
            ("bad-request", "data is not base64"),
            ("not-acceptable", "unknown in-band bytestream"),
            ("not-acceptable", "in-band data in messages is not accepted; use iq"),
        ]
    );
    let cut: Vec<_> =
        ended.iter().map(|e| (e.sid.as_str(), e.refusal.as_ref().map(|r| r.to_string()), e.facts.bytes)).collect();
    assert_eq!(
        cut,
        [
            ("gap", Some("protocol: data seq 2 where 1 was due".to_owned()), 3),
            ("big", Some("protocol: data of 10 bytes over the block-size 4".to_owned()), 0),
        ]
    );
}

#[test]
fn in_band_transfers_from_an_s2s_initiator_are_judged_too() {
    let mut insp = file_inspector(false);
    let mut dlp = b"minutes of the meeting\n".repeat(10);
    dlp.extend_from_slice(b"CONFIDENTIAL\n");
    let stanzas: Vec<String> = ibb_session("bob@example.test/b", "fed", 128, &chunks(&dlp, 128))
        .into_iter()
        .map(|s| s.replacen("<iq ", "<iq from='mallory@remote.test/m' ", 1))
        .collect();
    let refs: Vec<&str> = stanzas.iter().map(String::as_str).collect();
    s2s_flow(&mut insp, "192.0.2.20:40001", "192.0.2.1:5269", "remote.test", "example.test", &refs);
    let got: Vec<_> = events(&mut insp)
        .into_iter()
        .filter_map(|e| match e.what {
            Observed::FileTransfer { chain, ended, .. } => {
                Some((chain, ended.sender, ended.facts.bytes, ended.refusal.map(|r| r.detector)))
            }
            _ => None,
        })
        .collect();
    assert_eq!(got, [(Chain::S2sIn, "mallory@remote.test/m".to_owned(), dlp.len() as u64, Some(Detector::Dlp))]);
}
