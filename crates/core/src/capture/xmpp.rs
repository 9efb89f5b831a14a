//! XMPP on one observed flow: detection by content, the stream's phases as both sides saw
//! them, and the inline session's decisions on each stanza.
//!
//! Detection (any port): a stream header in the stream namespace (RFC 6120 §4.2) → XMPP, its
//! content namespace → c2s or s2s; a TLS handshake record first → encrypted, XMPP when its
//! ClientHello offers the XEP-0368 ALPN ids (`xmpp-client`, `xmpp-server`) or it runs on 5223 /
//! 5270; a direction picked up without its start (no SYN, or after a gap) → XMPP when a stanza
//! start tag is found, and the reader resyncs there. Only the restricted-XML reader turns bytes
//! into elements; the boundary scan only chooses where a fresh reader starts.
//!
//! Direction: the SYN's sender is the client; without a SYN, the side whose header has no `id`
//! (RFC 6120 §4.7.3: only the receiving entity sets it), else the well-known or lower port is
//! the server's.
//!
//! Phases: `<proceed/>` from the server ends readability (TLS follows); SASL `<success/>`
//! restarts both streams (RFC 6120 §6.4.6) and the bind result names the user (RFC 6120 §7.6.1).
//! The mechanism is reported, the SASL payload never.
//!
//! s2s: stanzas flow from the initiating server only (RFC 6120 §4.1; dialback, XEP-0220, is
//! not a stanza and is not evaluated). Each goes through `session::decide` in `s2s-in` when the
//! receiving domain (the initiator's header `to`, else the stanza's `to`) is one of ours, else
//! in `s2s-out` — the s2s sessions' check (both addresses present and valid) and then the
//! policy, under the limits the inline s2s session puts on its remote side.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{CaptureEvent, CaptureStats, Encryption, FlowAddrs, FlowEnd, FlowTotals, Observed, StreamKind};
use crate::config::Limits;
use crate::jid::{self, FullJid};
use crate::policy::{Chain, Context, Policy, RateTable};
use crate::session::c2s::header_problem as c2s_header_problem;
use crate::session::s2s::header_problem as s2s_header_problem;
use crate::session::sm::NS_SM;
use crate::session::{
    decide, policy_effects, skipped_reason, Check, Decision, Effect, StanzaSummary, NS_BIND, NS_CSI, NS_SASL, NS_TLS,
};
use crate::stanza::{self, Kind, StanzaCondition};
use crate::stream::{Condition, NS_CLIENT, NS_SERVER};
use crate::transfer::ibb::{IbbEvent, IbbInspector, IbbVerdict, Original, NS_IBB};
use crate::transfer::ScanVerdict;
use crate::xml::{Element, StreamReader, XmlError, XmlEvent, XmlLimits, NS_STREAMS};

/// What the tracker needs from the inspector for one call.
pub(super) struct Ctx<'a> {
    pub policy: &'a Policy,
    pub rates: &'a RateTable,
    pub xml: &'a Limits,
    pub probe_bytes: usize,
    /// The domains we serve; `None`: every s2s stream is inbound.
    pub local_domains: Option<&'a [String]>,
    pub files: Option<&'a super::FileInspection>,
    pub now: Instant,
    pub ts: Duration,
    pub events: &'a mut VecDeque<CaptureEvent>,
    pub stats: &'a mut CaptureStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not decided yet.
    Probing,
    /// Plaintext XMPP: readers run.
    Xmpp,
    /// XMPP under TLS: counted only.
    Encrypted,
    /// Not XMPP: counted only.
    Other,
}

/// Stanza start tags a fresh reader may begin at after a gap or a mid-stream pickup.
const BOUNDARIES: [&[u8]; 3] = [b"<message", b"<presence", b"<iq"];
/// Bytes kept from a boundary search (a start tag may straddle two segments).
const BOUNDARY_TAIL: usize = 16;
/// Ports whose flows are XMPP over direct TLS (XEP-0368) even without ALPN.
const DIRECT_TLS_PORTS: [(u16, StreamKind); 2] = [(5223, StreamKind::C2s), (5270, StreamKind::S2s)];
/// Well-known XMPP server ports, for the server side of a flow picked up without its start.
const SERVER_PORTS: [u16; 4] = [5222, 5223, 5269, 5270];

#[derive(Debug, Default)]
struct Dir {
    reader: Option<StreamReader>,
    /// Bytes seen before the flow was classified.
    probe: Vec<u8>,
    /// Searching for a stanza start (after a gap, a parse error, or a mid-stream pickup).
    resync: Option<Vec<u8>>,
    /// The reader was started by a resync and has not read a stanza yet.
    fresh: bool,
    /// The reader's first `StreamOpen` is the synthetic header of a resync.
    synthetic_open: bool,
    /// The start of this direction was not seen.
    lost_start: bool,
    syn: bool,
}

/// XMPP state of one flow.
#[derive(Debug)]
pub(super) struct Tracker {
    /// Direction 0 is `ends[0] → ends[1]`.
    ends: [SocketAddr; 2],
    state: State,
    kind: Option<StreamKind>,
    client: Option<usize>,
    announced: bool,
    midstream: bool,
    dirs: [Dir; 2],
    authenticated: bool,
    user: Option<FullJid>,
    bind_id: Option<String>,
    mechanism: Option<String>,
    /// The domain the initiator's stream header addressed (s2s: the receiving server).
    stream_to: Option<String>,
    totals: FlowTotals,
    /// The in-band bytestreams the initiator sends, once one is seen.
    ibb: Option<IbbInspector>,
    /// Capture time of each open stream's `<open/>`, by the inspector's id.
    ibb_opened: Vec<(u64, Duration)>,
}

impl Tracker {
    pub(super) fn new(ends: [SocketAddr; 2]) -> Self {
        Tracker {
            ends,
            state: State::Probing,
            kind: None,
            client: None,
            announced: false,
            midstream: false,
            dirs: [Dir::default(), Dir::default()],
            authenticated: false,
            user: None,
            bind_id: None,
            mechanism: None,
            stream_to: None,
            totals: FlowTotals::default(),
            ibb: None,
            ibb_opened: Vec::new(),
        }
    }

    /// A SYN from `dir` (`ack`: a SYN-ACK, sent by the server).
    pub(super) fn syn(&mut self, dir: usize, ack: bool) {
        self.dirs[dir].syn = true;
        if self.client.is_none() {
            self.client = Some(if ack { 1 - dir } else { dir });
        }
    }

    /// The client's direction, deciding it by ports if nothing better is known.
    fn client_dir(&mut self) -> usize {
        *self.client.get_or_insert_with(|| {
            let (p0, p1) = (self.ends[0].port(), self.ends[1].port());
            // The side on a well-known XMPP port, else the lower port, is the server.
            let server = match (SERVER_PORTS.contains(&p0), SERVER_PORTS.contains(&p1)) {
                (true, false) => 0,
                (false, true) => 1,
                _ if p0 < p1 => 0,
                _ => 1,
            };
            1 - server
        })
    }

    fn addrs(&mut self) -> FlowAddrs {
        let c = self.client_dir();
        FlowAddrs { client: self.ends[c], server: self.ends[1 - c] }
    }

    fn emit(&mut self, ctx: &mut Ctx<'_>, what: Observed) {
        let flow = self.addrs();
        ctx.events.push_back(CaptureEvent { flow, ts: ctx.ts, what });
    }

    fn is_client_dir(&mut self, dir: usize) -> bool {
        self.client_dir() == dir
    }

    fn limits(&self, from_client: bool, ctx: &Ctx<'_>) -> XmlLimits {
        // The inline s2s session reads its remote side with the full limits (dialback
        // authenticates without SASL) and its own server's side with the backend's.
        let s2s = self.kind == Some(StreamKind::S2s);
        match (from_client, self.authenticated || s2s) {
            (false, _) => ctx.xml.xml_backend(),
            (true, true) => ctx.xml.xml(),
            (true, false) => ctx.xml.xml_preauth(),
        }
    }

    /// A retransmission of `dir` disagreed with the first copy.
    pub(super) fn conflict(&mut self, dir: usize, offset: u64, ctx: &mut Ctx<'_>) {
        if self.state != State::Other {
            let from_client = self.is_client_dir(dir);
            self.emit(ctx, Observed::Conflict { from_client, offset });
        }
    }

    /// `n` bytes of `dir` were never seen.
    pub(super) fn gap(&mut self, dir: usize, n: u64, ctx: &mut Ctx<'_>) {
        self.totals.bytes[self.client_dir_index(dir)] += n;
        match self.state {
            State::Other | State::Encrypted => {}
            State::Probing => {
                let from_client = self.is_client_dir(dir);
                self.emit(ctx, Observed::Gap { from_client, bytes: n });
                let d = &mut self.dirs[dir];
                d.probe.clear();
                d.lost_start = true;
            }
            State::Xmpp => {
                let from_client = self.is_client_dir(dir);
                self.emit(ctx, Observed::Gap { from_client, bytes: n });
                // The stanza in progress is lost: start over at the next stanza boundary.
                let d = &mut self.dirs[dir];
                d.reader = None;
                d.resync = Some(Vec::new());
            }
        }
    }

    fn client_dir_index(&mut self, dir: usize) -> usize {
        usize::from(!self.is_client_dir(dir))
    }

    /// Reassembled bytes of `dir`.
    pub(super) fn data(&mut self, dir: usize, bytes: &[u8], ctx: &mut Ctx<'_>) {
        let i = self.client_dir_index(dir);
        self.totals.bytes[i] += bytes.len() as u64;
        match self.state {
            State::Other | State::Encrypted => {}
            State::Probing => self.probe(dir, bytes, ctx),
            State::Xmpp => self.feed(dir, bytes, ctx),
        }
    }

    /// The flow left the table.
    pub(super) fn ended(&mut self, how: FlowEnd, ctx: &mut Ctx<'_>) {
        let xmpp = matches!(self.state, State::Xmpp | State::Encrypted);
        let totals = self.totals;
        self.emit(ctx, Observed::Ended { how, xmpp, totals });
    }

    fn probe(&mut self, dir: usize, bytes: &[u8], ctx: &mut Ctx<'_>) {
        let d = &mut self.dirs[dir];
        let room = ctx.probe_bytes.saturating_sub(d.probe.len());
        d.probe.extend_from_slice(&bytes[..bytes.len().min(room)]);
        let full = d.probe.len() >= ctx.probe_bytes;
        let lost_start = d.lost_start || !d.syn;
        let probe = std::mem::take(&mut d.probe);
        let start = probe.iter().position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n')).unwrap_or(probe.len());
        let head = &probe[start..];
        if head.is_empty() && !full {
            self.dirs[dir].probe = probe;
            return;
        }
        if head.starts_with(&[0x16, 0x03]) {
            return self.tls_start(dir, head, ctx);
        }
        let utf16 = head.starts_with(b"\xFE\xFF") || head.starts_with(b"\xFF\xFE");
        if head.starts_with(b"<?xml") || head.starts_with(b"\xEF\xBB\xBF") || utf16 || looks_like_stream_tag(head) {
            let mut reader = StreamReader::new(self.limits(true, ctx));
            reader.feed(&probe);
            match reader.next_event() {
                // A `stream` element in a content namespace but not the stream namespace is
                // still an XMPP stream open, which the gateway would refuse (invalid-namespace).
                Ok(Some(XmlEvent::StreamOpen { header, default_ns }))
                    if header.is(NS_STREAMS, "stream")
                        || (header.name == "stream"
                            && matches!(default_ns.as_deref(), Some(NS_CLIENT | NS_SERVER))) =>
                {
                    self.state = State::Xmpp;
                    self.dirs[dir].reader = Some(reader);
                    self.on_open(dir, &header, default_ns.as_deref(), ctx);
                    let from_client = self.is_client_dir(dir);
                    let limits = self.limits(from_client, ctx);
                    if let Some(r) = &mut self.dirs[dir].reader {
                        r.set_limits(limits);
                        r.skip_over_limits(!from_client);
                    }
                    self.pump(dir, ctx);
                    return self.flush_other_probe(dir, ctx);
                }
                Ok(None) if !full => {
                    self.dirs[dir].probe = probe;
                    return;
                }
                // A stream open the reader refuses (XML 1.1, UTF-16, ...): an XMPP stream the
                // gateway would have answered with that error, when it names the stream
                // namespace (in UTF-16 too: RFC 6120 §11.6 allows UTF-8 only).
                Err(error) if names_stream_ns(&probe) => return self.refused_open(dir, error, probe, ctx),
                _ => {}
            }
            self.state = State::Other;
            return;
        }
        if lost_start && find_boundary(&probe).is_some() {
            self.state = State::Xmpp;
            self.midstream = true;
            self.kind.get_or_insert(if SERVER_PORTS[2..].iter().any(|p| self.ends.iter().any(|e| e.port() == *p)) {
                StreamKind::S2s
            } else {
                StreamKind::C2s
            });
            self.announce(None, None, ctx);
            self.dirs[dir].resync = Some(Vec::new());
            self.feed(dir, &probe, ctx);
            return self.flush_other_probe(dir, ctx);
        }
        if full || (!lost_start && head.first() != Some(&b'<')) {
            self.state = State::Other;
            return;
        }
        self.dirs[dir].probe = probe;
    }

    /// `dir` opened an XMPP stream the reader refused: reported as the gateway's stream error,
    /// and the direction resyncs at the next stanza as after any parse error.
    fn refused_open(&mut self, dir: usize, error: XmlError, probe: Vec<u8>, ctx: &mut Ctx<'_>) {
        self.state = State::Xmpp;
        if self.client.is_none() {
            self.client = Some(dir);
        }
        self.kind = Some(if contains(&probe, NS_SERVER.as_bytes()) { StreamKind::S2s } else { StreamKind::C2s });
        self.announce(None, None, ctx);
        let from_client = self.is_client_dir(dir);
        self.emit(ctx, Observed::ParseError { from_client, error });
        self.dirs[dir].resync = Some(probe.get(1..).unwrap_or_default().to_vec());
        self.resync(dir, ctx);
        self.flush_other_probe(dir, ctx);
    }

    /// The flow was classified from `dir`: what the other direction sent meanwhile is read now.
    fn flush_other_probe(&mut self, dir: usize, ctx: &mut Ctx<'_>) {
        let probe = std::mem::take(&mut self.dirs[1 - dir].probe);
        if !probe.is_empty() && self.state == State::Xmpp {
            self.feed(1 - dir, &probe, ctx);
        }
    }

    fn tls_start(&mut self, dir: usize, head: &[u8], ctx: &mut Ctx<'_>) {
        let alpn = if contains(head, b"xmpp-client") {
            Some(StreamKind::C2s)
        } else if contains(head, b"xmpp-server") {
            Some(StreamKind::S2s)
        } else {
            None
        };
        let by_port = DIRECT_TLS_PORTS.iter().find(|(p, _)| self.ends.iter().any(|e| e.port() == *p)).map(|(_, k)| *k);
        let Some(kind) = alpn.or(by_port) else {
            self.state = State::Other;
            return;
        };
        // The ClientHello's sender is the client.
        if self.client.is_none() && head.get(5) == Some(&1) {
            self.client = Some(dir);
        }
        self.kind = Some(kind);
        self.state = State::Encrypted;
        self.announce(None, None, ctx);
        self.emit(ctx, Observed::Encrypted(Encryption::DirectTls));
    }

    fn announce(&mut self, to: Option<String>, from: Option<String>, ctx: &mut Ctx<'_>) {
        if !self.announced {
            self.announced = true;
            let (kind, midstream) = (self.kind.unwrap_or(StreamKind::Other), self.midstream);
            self.emit(ctx, Observed::Stream { kind, to, from, midstream });
        }
    }

    fn on_open(&mut self, dir: usize, header: &Element, default_ns: Option<&str>, ctx: &mut Ctx<'_>) {
        if std::mem::take(&mut self.dirs[dir].synthetic_open) {
            return;
        }
        if self.client.is_none() {
            // RFC 6120 §4.7.3: the receiving entity's header carries the stream id.
            self.client = Some(if header.attr("id").is_some() { 1 - dir } else { dir });
        }
        let kind = match default_ns {
            Some(NS_CLIENT) => StreamKind::C2s,
            Some(NS_SERVER) => StreamKind::S2s,
            _ => StreamKind::Other,
        };
        if self.kind.is_none() || self.midstream {
            self.kind = Some(kind);
        }
        let from_client = self.is_client_dir(dir);
        let (to, from) = if from_client {
            self.stream_to = header.attr("to").map(str::to_ascii_lowercase);
            (header.attr("to").map(str::to_owned), header.attr("from").map(str::to_owned))
        } else {
            (header.attr("from").map(str::to_owned), None)
        };
        self.announce(to, from, ctx);
        if from_client {
            // The gateway's own checks of the initiator's header (and of every restart).
            let problem = match self.kind {
                Some(StreamKind::C2s) => c2s_header_problem(header, default_ns).map(|p| (Chain::C2sIn, p)),
                Some(StreamKind::S2s) => {
                    let inbound = match (ctx.local_domains, &self.stream_to) {
                        (Some(ours), Some(to)) => ours.contains(to),
                        (Some(_), None) | (None, _) => true,
                    };
                    let chain = if inbound { Chain::S2sIn } else { Chain::S2sOut };
                    s2s_header_problem(header, default_ns).map(|p| (chain, p))
                }
                _ => None,
            };
            if let Some((chain, (condition, reason))) = problem {
                self.emit(ctx, Observed::WouldClose { chain, condition, reason: reason.to_owned() });
            }
        }
    }

    fn feed(&mut self, dir: usize, bytes: &[u8], ctx: &mut Ctx<'_>) {
        if let Some(buf) = &mut self.dirs[dir].resync {
            buf.extend_from_slice(bytes);
            return self.resync(dir, ctx);
        }
        match &mut self.dirs[dir].reader {
            Some(r) => r.feed(bytes),
            None => {
                // The other direction started this flow's XMPP; this one starts now, at its
                // header, or (its start unseen) at the next stanza.
                let d = &self.dirs[dir];
                let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
                let head = &bytes[start..];
                let at_header = head.starts_with(b"<?xml") || looks_like_stream_tag(head);
                if (d.lost_start || !d.syn) && !at_header {
                    self.dirs[dir].resync = Some(bytes.to_vec());
                    return self.resync(dir, ctx);
                }
                let from_client = self.is_client_dir(dir);
                let mut r = StreamReader::new(self.limits(from_client, ctx));
                r.skip_over_limits(!from_client);
                r.feed(bytes);
                self.dirs[dir].reader = Some(r);
            }
        }
        self.pump(dir, ctx);
    }

    /// Look for a stanza start in the resync buffer; start a fresh reader there.
    fn resync(&mut self, dir: usize, ctx: &mut Ctx<'_>) {
        let Some(mut buf) = self.dirs[dir].resync.take() else { return };
        if buf.starts_with(&[0x16, 0x03]) && self.dirs[dir].reader.is_none() && self.midstream {
            // TLS records where a stream was expected: the flow went encrypted unseen.
            self.state = State::Encrypted;
            return self.emit(ctx, Observed::Encrypted(Encryption::StartTls));
        }
        let Some(at) = find_boundary(&buf) else {
            let keep = buf.len().min(BOUNDARY_TAIL);
            buf.drain(..buf.len() - keep);
            self.dirs[dir].resync = Some(buf);
            return;
        };
        let from_client = self.is_client_dir(dir);
        let mut r = StreamReader::new(self.limits(from_client, ctx));
        r.skip_over_limits(!from_client);
        let ns = if self.kind == Some(StreamKind::S2s) { NS_SERVER } else { NS_CLIENT };
        r.feed(format!("<stream:stream xmlns='{ns}' xmlns:stream='{NS_STREAMS}'>").as_bytes());
        r.feed(&buf[at..]);
        let d = &mut self.dirs[dir];
        d.reader = Some(r);
        d.fresh = true;
        d.synthetic_open = true;
        self.pump(dir, ctx);
    }

    /// Read every complete event of `dir`.
    fn pump(&mut self, dir: usize, ctx: &mut Ctx<'_>) {
        loop {
            if self.state != State::Xmpp {
                return;
            }
            let Some(reader) = &mut self.dirs[dir].reader else { return };
            match reader.next_event() {
                Ok(None) => return,
                Ok(Some(XmlEvent::StreamOpen { header, default_ns })) => {
                    self.on_open(dir, &header, default_ns.as_deref(), ctx)
                }
                Ok(Some(XmlEvent::Stanza(el))) => {
                    self.dirs[dir].fresh = false;
                    self.on_element(dir, el, ctx);
                }
                Ok(Some(XmlEvent::Skipped { reason, root })) => {
                    self.dirs[dir].fresh = false;
                    self.on_skipped(dir, reason, root, ctx);
                }
                Ok(Some(XmlEvent::StreamClose | XmlEvent::Whitespace)) => {}
                Err(error) => {
                    let rest = reader.take_buffered();
                    let fresh = std::mem::take(&mut self.dirs[dir].fresh);
                    if fresh {
                        ctx.stats.resync_failures += 1;
                    } else {
                        let from_client = self.is_client_dir(dir);
                        self.emit(ctx, Observed::ParseError { from_client, error });
                    }
                    let d = &mut self.dirs[dir];
                    d.reader = None;
                    // Step past the byte that failed so the same start tag is not retried.
                    d.resync = Some(rest.get(1..).unwrap_or_default().to_vec());
                    return self.resync(dir, ctx);
                }
            }
        }
    }

    fn on_skipped(&mut self, dir: usize, reason: XmlError, root: Option<Element>, ctx: &mut Ctx<'_>) {
        if self.is_client_dir(dir) || self.kind != Some(StreamKind::C2s) {
            return;
        }
        let i = self.client_dir_index(dir);
        self.totals.stanzas[i] += 1;
        ctx.stats.stanzas += 1;
        let stanza = root.as_ref().and_then(|r| StanzaSummary::of(r, self.user.as_ref()));
        let effect = Effect::Dropped { from_backend: true, stanza, reason: skipped_reason(&reason) };
        self.emit(ctx, Observed::Decision(Chain::C2sOut, effect));
    }

    fn on_element(&mut self, dir: usize, mut el: Element, ctx: &mut Ctx<'_>) {
        let from_client = self.is_client_dir(dir);
        if Kind::of(&el).is_some() {
            self.totals.stanzas[usize::from(!from_client)] += 1;
            ctx.stats.stanzas += 1;
        }
        if el.is(NS_TLS, "proceed") && !from_client {
            // RFC 6120 §5.4.3.3: TLS negotiation starts right after `<proceed/>`.
            self.state = State::Encrypted;
            self.dirs = [Dir::default(), Dir::default()];
            return self.emit(ctx, Observed::Encrypted(Encryption::StartTls));
        }
        if &*el.ns == NS_SASL {
            return self.on_sasl(from_client, &el, ctx);
        }
        if Kind::of(&el).is_none() {
            // As the inline session: the client may send only stanzas, SASL, STARTTLS, stream
            // management (XEP-0198) and CSI (XEP-0352) at the top level.
            let allowed = [NS_SASL, NS_TLS, NS_SM, NS_CSI].contains(&&*el.ns);
            if from_client && self.kind == Some(StreamKind::C2s) && !allowed {
                let (chain, condition) = (Chain::C2sIn, Condition::UnsupportedStanzaType);
                let reason = "unsupported top-level element".to_owned();
                self.emit(ctx, Observed::WouldClose { chain, condition, reason });
            }
            return;
        }
        let chain = match self.kind {
            Some(StreamKind::C2s) if from_client => Chain::C2sIn,
            Some(StreamKind::C2s) => Chain::C2sOut,
            Some(StreamKind::S2s) if from_client => self.s2s_chain(&el, ctx),
            _ => return,
        };
        if chain == Chain::C2sIn && (!self.authenticated || self.user.is_none()) {
            let is_bind = el.name == "iq" && el.attr("type") == Some("set") && el.child(NS_BIND, "bind").is_some();
            // As the session (RFC 6120 §7.1): nothing but one bind request until it is answered.
            if self.authenticated && (!is_bind || self.bind_id.is_some()) {
                let reason = "stanza before resource binding completed".to_owned();
                return self.emit(ctx, Observed::WouldClose { chain, condition: Condition::NotAuthorized, reason });
            }
            if is_bind {
                self.bind_id = el.attr("id").map(str::to_owned);
            }
        }
        let source_ip = self.addrs().client.ip();
        let context = Context { chain, user: self.user.as_ref(), source_ip };
        match decide(&mut el, &context, ctx.policy, ctx.rates, ctx.now) {
            Decision::Gateway(Check::Pass) => self.on_ibb(chain, &el, ctx),
            Decision::Gateway(check) => self.on_check(from_client, chain, &el, check, ctx),
            Decision::Policy(mut eval) => {
                let include_body = ctx.policy.audit().include_body;
                for effect in policy_effects(chain, &el, &mut eval, self.user.as_ref(), include_body) {
                    self.emit(ctx, Observed::Decision(chain, effect));
                }
                match &eval.outcome {
                    crate::policy::Outcome::Close { condition, text } => {
                        let reason = text.clone().unwrap_or_else(|| "policy".to_owned());
                        self.emit(ctx, Observed::WouldClose { chain, condition: *condition, reason });
                    }
                    // As inline: only what the policy forwards reaches the IBB inspection.
                    crate::policy::Outcome::Pass => self.on_ibb(chain, &el, ctx),
                    crate::policy::Outcome::Rewrite(rewritten) => {
                        let rewritten = rewritten.clone();
                        self.on_ibb(chain, &rewritten, ctx);
                    }
                    _ => {}
                }
            }
        }
        if !from_client && self.bind_id.is_some() && el.name == "iq" && el.attr("id") == self.bind_id.as_deref() {
            self.bind_id = None;
            let jid = el.child(NS_BIND, "bind").and_then(|b| b.child(NS_BIND, "jid")).map(Element::text);
            if let Some(full) = jid.as_deref().and_then(jid::parse_full) {
                self.user = Some(full.clone());
                self.emit(ctx, Observed::Bound(full));
            }
        }
    }

    /// A forwarded stanza of the initiator through the inline IBB inspection (the c2s
    /// session's `transfer_ibb`): every stream that ends is reported with its verdict.
    fn on_ibb(&mut self, chain: Chain, el: &Element, ctx: &mut Ctx<'_>) {
        let Some(files) = ctx.files else { return };
        if !matches!(chain, Chain::C2sIn | Chain::S2sIn | Chain::S2sOut) {
            return;
        }
        if el.name == "message" && el.child(NS_IBB, "data").is_some() {
            // As inline: a message cannot be held back and acknowledged like an iq.
            let reason = "in-band data in messages is not accepted; use iq".to_owned();
            let condition = StanzaCondition::NotAcceptable;
            return self.emit(ctx, Observed::FileTransferError { chain, condition, reason });
        }
        if el.name != "iq" || !el.elements().any(|c| &*c.ns == NS_IBB) {
            return;
        }
        let ibb = self.ibb.get_or_insert_with(|| {
            let ibb = IbbInspector::new(files.policy.clone());
            if files.scanner {
                ibb.with_scanner()
            } else {
                ibb
            }
        });
        let step = ibb.client_stanza(el);
        let mut ended = Vec::new();
        for event in step.events {
            match event {
                IbbEvent::Ended(e) => ended.push(e),
                IbbEvent::AwaitVerdict { id } => {
                    let verdict = ScanVerdict::Failed(super::NOT_SCANNED.to_owned());
                    if let Some(IbbVerdict { ended: IbbEvent::Ended(e), .. }) = ibb.scanned(id, verdict) {
                        ended.push(e);
                    }
                }
                IbbEvent::Opened { id } => {
                    // The inspector tracks at most 16 streams; opens it forgot never end.
                    if self.ibb_opened.len() >= 64 {
                        self.ibb_opened.remove(0);
                    }
                    self.ibb_opened.push((id, ctx.ts));
                }
                IbbEvent::Data { .. } => {}
            }
        }
        if let (true, Original::Bounce(condition, reason)) = (ended.is_empty(), step.original) {
            self.emit(ctx, Observed::FileTransferError { chain, condition, reason });
        }
        for e in ended {
            let at = self.ibb_opened.iter().position(|(id, _)| *id == e.id);
            let opened = at.map(|i| self.ibb_opened.remove(i).1);
            self.emit(ctx, Observed::FileTransfer { chain, ended: e, opened });
        }
    }

    /// The gateway's own refusal, reported as the session reports it.
    fn on_check(&mut self, from_client: bool, chain: Chain, el: &Element, check: Check, ctx: &mut Ctx<'_>) {
        let stanza = StanzaSummary::of(el, self.user.as_ref());
        let effect = match (check, from_client) {
            (Check::Pass, _) => return,
            (Check::Close(condition, why), _) => {
                let reason = why.to_owned();
                return self.emit(ctx, Observed::WouldClose { chain, condition, reason });
            }
            (Check::Bounce(condition, reason), true) => {
                // As `C2sSession::bounce`: an error reply where one may be sent, else a drop.
                let answerable = stanza::error_reply(el, condition, Some(reason), "").is_some();
                match stanza {
                    Some(stanza) if answerable => Effect::Bounced { stanza, condition, reason },
                    stanza => Effect::Dropped { from_backend: false, stanza, reason },
                }
            }
            (Check::Drop(reason), true) => Effect::Dropped { from_backend: false, stanza, reason },
            (Check::Bounce(_, reason) | Check::Drop(reason), false) => {
                Effect::Dropped { from_backend: true, stanza, reason }
            }
        };
        self.emit(ctx, Observed::Decision(chain, effect));
    }

    /// The chain of a stanza from the initiating server: inbound when it is addressed to one
    /// of our domains (or we were not told which are ours), else our server's outbound.
    fn s2s_chain(&self, el: &Element, ctx: &Ctx<'_>) -> Chain {
        let Some(ours) = ctx.local_domains else { return Chain::S2sIn };
        let to = self.stream_to.clone().or_else(|| {
            let j = el.attr("to").and_then(jid::parse)?;
            Some(j.domain().as_str().to_ascii_lowercase())
        });
        match to {
            Some(to) if ours.contains(&to) => Chain::S2sIn,
            _ => Chain::S2sOut,
        }
    }

    fn on_sasl(&mut self, from_client: bool, el: &Element, ctx: &mut Ctx<'_>) {
        match (from_client, el.name.as_str()) {
            // Only the mechanism name: the payload holds credentials (PLAIN) or their proofs.
            (true, "auth") => self.mechanism = el.attr("mechanism").map(str::to_owned),
            (false, "success") if !self.authenticated => {
                self.authenticated = true;
                let mechanism = self.mechanism.clone();
                self.emit(ctx, Observed::Authenticated { mechanism });
                // RFC 6120 §6.4.6: both sides restart their streams after success.
                let client = self.client_dir();
                for (i, d) in self.dirs.iter_mut().enumerate() {
                    if let Some(r) = &mut d.reader {
                        r.restart();
                        if i == client {
                            r.set_limits(ctx.xml.xml());
                        }
                    }
                }
            }
            (false, "failure") if !self.authenticated => self.emit(ctx, Observed::AuthFailed),
            _ => {}
        }
    }
}

/// `<stream:stream`, `<stream `, or `<PREFIX:stream` at the start.
fn looks_like_stream_tag(head: &[u8]) -> bool {
    let Some(rest) = head.strip_prefix(b"<") else { return false };
    let name_end =
        rest.iter().position(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'>' | b'/')).unwrap_or(rest.len());
    let name = &rest[..name_end];
    name == b"stream" || name.ends_with(b":stream") || (name_end == rest.len() && b"stream:stream".starts_with(rest))
}

/// Where the first stanza start tag in `buf` begins.
fn find_boundary(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'<', &buf[from..]) {
        let at = from + i;
        let rest = &buf[at..];
        for b in BOUNDARIES {
            if rest.len() > b.len()
                && rest.starts_with(b)
                && matches!(rest[b.len()], b' ' | b'\t' | b'\r' | b'\n' | b'>' | b'/')
            {
                return Some(at);
            }
        }
        from = at + 1;
    }
    None
}

/// Does `probe` name the stream namespace, in UTF-8 or (with a byte order mark) UTF-16?
fn names_stream_ns(probe: &[u8]) -> bool {
    if contains(probe, NS_STREAMS.as_bytes()) {
        return true;
    }
    let big_endian = match probe {
        [0xFE, 0xFF, ..] => true,
        [0xFF, 0xFE, ..] => false,
        _ => return false,
    };
    let units = probe[2..].chunks_exact(2).map(|c| if big_endian { [c[0], c[1]] } else { [c[1], c[0]] });
    let ascii: Vec<u8> = units.map(|[hi, lo]| if hi == 0 { lo } else { 0 }).collect();
    contains(&ascii, NS_STREAMS.as_bytes())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}
