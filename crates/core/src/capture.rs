//! Passive inspection: TCP segments from a capture in, XMPP observations out, with the same
//! restricted-XML reader, gateway checks and policy as the inline gateway.
//!
//! It owns the flow table (bounded: [`CaptureLimits::max_flows`] with least-recently-seen
//! eviction, idle expiry in capture time, caps on out-of-order bytes per flow and in total),
//! TCP reassembly per direction ([`reassembly`]) and XMPP tracking per flow ([`xmpp`]):
//! detection by content on any port, c2s/s2s from the stream header's namespace, direction from
//! the SYN or the header, STARTTLS `<proceed/>` or a TLS record → encrypted (metadata only),
//! SASL success and resource binding → the user's JID. SASL payloads are never kept or reported.
//!
//! Stanzas of plaintext c2s streams go through `session::decide` (the session's own checks,
//! then `Policy::evaluate_stanza`) and are reported through `session::policy_effects` — the
//! inline session's functions — so a capture of the same traffic audits the same way.
//! Stanzas of plaintext s2s streams from the initiating server (RFC 6120 §4.1: an s2s stream
//! carries stanzas one way) go through the s2s sessions' own check and the `s2s-in` chain
//! when the receiving domain is one of ours ([`Inspector::set_local_domains`]), else
//! `s2s-out`; without local domains every initiating direction is `s2s-in`.
//!
//! Sans-IO like the rest of the core: the caller decodes packets, passes each TCP segment with
//! its capture timestamp, and polls [`CaptureEvent`]s; nothing here reads a clock or a file.
//! Policy time is `base + (timestamp − first timestamp)`, `base` given by the caller.

pub mod reassembly;
#[cfg(test)]
mod tests;
mod xmpp;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Limits;
use crate::jid::FullJid;
use crate::policy::{Chain, Policy, RateTable};
use crate::session::Effect;
use crate::stanza::StanzaCondition;
use crate::stream::Condition;
use crate::transfer::ibb::IbbEnded;
use crate::transfer::InspectPolicy;
use crate::xml::XmlError;

use reassembly::{HalfStream, Piece};

/// TCP header flags that matter to reassembly.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TcpFlags {
    /// SYN.
    pub syn: bool,
    /// ACK (the acknowledgment number is valid).
    pub ack: bool,
    /// FIN.
    pub fin: bool,
    /// RST.
    pub rst: bool,
}

/// One TCP segment as decoded from a packet.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (meaningful with `flags.ack`).
    pub ack: u32,
    /// Flags.
    pub flags: TcpFlags,
    /// The payload.
    pub payload: &'a [u8],
}

/// Memory and time bounds of the inspector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureLimits {
    /// Flows tracked at once; the least recently seen is evicted for a new one.
    pub max_flows: usize,
    /// Out-of-order bytes waiting per direction; past it the hole is declared a gap.
    pub max_pending_per_flow: usize,
    /// Out-of-order bytes waiting in all flows together.
    pub max_pending_total: usize,
    /// Delivered bytes kept per direction to verify retransmissions against.
    pub verify_window: usize,
    /// A flow without a segment for this long (capture time) is ended.
    pub idle_timeout: Duration,
    /// Bytes looked at before a flow that shows no XMPP is left alone.
    pub probe_bytes: usize,
}

impl Default for CaptureLimits {
    fn default() -> Self {
        CaptureLimits {
            max_flows: 65_536,
            max_pending_per_flow: 256 * 1024,
            max_pending_total: 64 * 1024 * 1024,
            verify_window: 2048,
            idle_timeout: Duration::from_secs(600),
            probe_bytes: 1024,
        }
    }
}

/// The two ends of a flow, initiator first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowAddrs {
    /// The side that opened the connection (or, picked up mid-stream, the one that looks like it).
    pub client: SocketAddr,
    /// The other side.
    pub server: SocketAddr,
}

/// What kind of XMPP stream a flow carries (RFC 6120 §4.8.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `jabber:client`.
    C2s,
    /// `jabber:server`.
    S2s,
    /// Another content namespace (a component, XEP-0114): metadata only.
    Other,
}

impl StreamKind {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::C2s => "c2s",
            StreamKind::S2s => "s2s",
            StreamKind::Other => "other",
        }
    }
}

/// How a flow became unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    /// STARTTLS: the server's `<proceed/>` (RFC 6120 §5.4.2.3).
    StartTls,
    /// The flow starts with a TLS record (XEP-0368 direct TLS).
    DirectTls,
}

impl Encryption {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Encryption::StartTls => "starttls",
            Encryption::DirectTls => "direct-tls",
        }
    }
}

/// Why a flow left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowEnd {
    /// Both sides sent FIN.
    Fin,
    /// A RST.
    Rst,
    /// No segment for [`CaptureLimits::idle_timeout`].
    Idle,
    /// Evicted to make room ([`CaptureLimits::max_flows`]).
    Evicted,
    /// The capture ended with it open.
    EndOfCapture,
}

impl FlowEnd {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowEnd::Fin => "fin",
            FlowEnd::Rst => "rst",
            FlowEnd::Idle => "idle",
            FlowEnd::Evicted => "evicted",
            FlowEnd::EndOfCapture => "end-of-capture",
        }
    }
}

/// Per-direction counts of a flow, `[client → server, server → client]`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlowTotals {
    /// Payload bytes reassembled.
    pub bytes: [u64; 2],
    /// Stanzas read.
    pub stanzas: [u64; 2],
}

/// One observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// An XMPP stream was recognised.
    Stream {
        /// c2s, s2s or other.
        kind: StreamKind,
        /// The domain the initiator addressed (`to` of its header), if seen.
        to: Option<String>,
        /// The initiator's own domain (`from` of its header), if given.
        from: Option<String>,
        /// Picked up without its stream header.
        midstream: bool,
    },
    /// Nothing after this is readable.
    Encrypted(Encryption),
    /// SASL succeeded (the mechanism only: payloads are never kept).
    Authenticated {
        /// The mechanism the client chose.
        mechanism: Option<String>,
    },
    /// SASL failed.
    AuthFailed,
    /// The server bound this full JID.
    Bound(FullJid),
    /// A decision about a stanza of `chain`, as the inline session reports it
    /// (`Effect::Policy`, `Effect::Bounced`, `Effect::Dropped`).
    Decision(Chain, Effect),
    /// The inline gateway would close the stream here.
    WouldClose {
        /// The chain of the stanza.
        chain: Chain,
        /// The stream error.
        condition: Condition,
        /// Why.
        reason: String,
    },
    /// The restricted-XML reader refused the stream (it resyncs at the next stanza).
    ParseError {
        /// Which direction.
        from_client: bool,
        /// What was wrong.
        error: XmlError,
    },
    /// Bytes never seen (capture loss); the stream resyncs at the next stanza boundary.
    Gap {
        /// Which direction.
        from_client: bool,
        /// How many.
        bytes: u64,
    },
    /// A retransmission disagreed with the bytes seen first (evasion attempt).
    Conflict {
        /// Which direction.
        from_client: bool,
        /// Stream offset of the retransmitted segment.
        offset: u64,
    },
    /// An in-band bytestream (XEP-0047) ended, judged by the `file` chain and the
    /// `[file_transfer]` checks as the inline session judges it (`refusal`: would block).
    FileTransfer {
        /// The chain of the stanzas that carried it.
        chain: Chain,
        /// How it ended.
        ended: Box<IbbEnded>,
        /// Capture time of its `<open/>`, if seen.
        opened: Option<Duration>,
    },
    /// The inline gateway would refuse this in-band bytestream stanza without a transfer to
    /// report (an open with a bad block-size, data that is not base64, data in a message).
    FileTransferError {
        /// The chain of the stanza.
        chain: Chain,
        /// The stanza error the sender would get.
        condition: StanzaCondition,
        /// Why.
        reason: String,
    },
    /// The flow left the table.
    Ended {
        /// Why.
        how: FlowEnd,
        /// It carried XMPP.
        xmpp: bool,
        /// Its totals.
        totals: FlowTotals,
    },
}

/// One observation about one flow at one capture time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureEvent {
    /// The flow.
    pub flow: FlowAddrs,
    /// Capture timestamp (since the Unix epoch).
    pub ts: Duration,
    /// What was seen.
    pub what: Observed,
}

/// Counters of the whole capture.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CaptureStats {
    /// TCP segments given.
    pub segments: u64,
    /// TCP payload bytes given.
    pub payload_bytes: u64,
    /// Flows created.
    pub flows: u64,
    /// Flows evicted for room.
    pub flows_evicted: u64,
    /// Flows ended idle.
    pub flows_idle: u64,
    /// Most flows in the table at once.
    pub flows_high_water: u64,
    /// Out-of-order bytes given up under the total cap.
    pub pending_dropped: u64,
    /// Most out-of-order bytes waiting at once.
    pub pending_high_water: u64,
    /// Gaps, and the bytes in them.
    pub gaps: u64,
    /// Bytes never seen.
    pub gap_bytes: u64,
    /// Conflicting retransmissions.
    pub conflicts: u64,
    /// Retransmitted or duplicate segments.
    pub duplicates: u64,
    /// Resync attempts that failed again before a stanza was read.
    pub resync_failures: u64,
    /// Stanzas read (both directions, every stream), as they are read: a live capture's
    /// running count, where [`FlowTotals`] arrive only when a flow ends.
    pub stanzas: u64,
}

/// Endpoints in a canonical order: direction 0 is `lo → hi`.
type FlowKey = (SocketAddr, SocketAddr);

#[derive(Debug)]
struct Flow {
    halves: [HalfStream; 2],
    xmpp: xmpp::Tracker,
    last_ts: Duration,
    tick: u64,
    fin: [bool; 2],
}

/// The passive inspector: segments in, [`CaptureEvent`]s out.
#[derive(Debug)]
pub struct Inspector {
    policy: Arc<Policy>,
    rates: RateTable,
    xml: Limits,
    limits: CaptureLimits,
    base: Instant,
    first_ts: Option<Duration>,
    flows: HashMap<FlowKey, Flow>,
    /// Flows by last activity (least recent first).
    lru: BTreeMap<u64, FlowKey>,
    tick: u64,
    pending_total: usize,
    events: VecDeque<CaptureEvent>,
    stats: CaptureStats,
    pieces: Vec<Piece>,
    /// The domains we serve (`[s2s] domains`), lowercase; `None`: not configured.
    local_domains: Option<Vec<String>>,
    /// In-band bytestreams are inspected (`[file_transfer]`).
    files: Option<FileInspection>,
}

/// How in-band bytestreams (XEP-0047) of plaintext flows are judged.
#[derive(Debug, Clone)]
pub struct FileInspection {
    /// The `file` chain and the `[file_transfer]` checks.
    pub policy: Arc<InspectPolicy>,
    /// An antivirus is configured inline. Nothing is scanned from a capture (the inspector
    /// is sans-IO, and a verdict per file would stall the reader): every stream ends with the
    /// scanner failure [`NOT_SCANNED`], which `on_scanner_error` turns into block or pass, as
    /// the gateway does when clamd cannot answer.
    pub scanner: bool,
}

/// The scanner failure of every in-band stream when an antivirus is configured.
pub const NOT_SCANNED: &str = "not scanned in passive mode";

impl Inspector {
    /// An inspector evaluating `policy` with the parser limits `xml`; policy time starts at
    /// `base` for the first segment.
    pub fn new(policy: Arc<Policy>, xml: Limits, limits: CaptureLimits, base: Instant) -> Self {
        Inspector {
            policy,
            rates: RateTable::new(),
            xml,
            limits,
            base,
            first_ts: None,
            flows: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            pending_total: 0,
            events: VecDeque::new(),
            stats: CaptureStats::default(),
            pieces: Vec::new(),
            local_domains: None,
            files: None,
        }
    }

    /// Inspect in-band bytestreams (XEP-0047) of plaintext c2s and s2s flows with the inline
    /// pipeline ([`crate::transfer::ibb::IbbInspector`], one per flow, at most 16 streams each).
    pub fn set_file_inspection(&mut self, files: Option<FileInspection>) {
        self.files = files;
    }

    /// The domains we serve (`[s2s] domains`): an s2s stream addressed to one of them is
    /// inbound (`s2s-in`), any other is our server's outbound (`s2s-out`). Without them every
    /// s2s stream is taken as inbound.
    pub fn set_local_domains(&mut self, domains: Option<Vec<String>>) {
        self.local_domains = domains.map(|d| d.into_iter().map(|d| d.to_ascii_lowercase()).collect());
    }

    /// Counters so far.
    pub fn stats(&self) -> CaptureStats {
        self.stats
    }

    /// Flows in the table now.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Out-of-order bytes waiting now, in all flows.
    pub fn pending_bytes(&self) -> usize {
        self.pending_total
    }

    /// Next observation.
    pub fn poll_event(&mut self) -> Option<CaptureEvent> {
        self.events.pop_front()
    }

    /// One TCP segment captured at `ts`.
    pub fn segment(&mut self, seg: &Segment<'_>, ts: Duration) {
        self.stats.segments += 1;
        self.stats.payload_bytes += seg.payload.len() as u64;
        let first = *self.first_ts.get_or_insert(ts);
        let now = self.base + ts.saturating_sub(first);
        self.expire_idle(ts, now);
        let (key, dir) = if seg.src <= seg.dst { ((seg.src, seg.dst), 0) } else { ((seg.dst, seg.src), 1) };
        if !self.flows.contains_key(&key) {
            // A flow starts with a SYN or with data; a stray ACK or RST of an unknown flow
            // carries nothing to inspect.
            if seg.flags.rst || (!seg.flags.syn && seg.payload.is_empty()) {
                return;
            }
            while self.flows.len() >= self.limits.max_flows.max(1) {
                let Some((_, oldest)) = self.lru.pop_first() else { break };
                self.stats.flows_evicted += 1;
                self.end_flow(oldest, FlowEnd::Evicted, ts, now);
            }
            let flow = Flow {
                halves: [HalfStream::default(), HalfStream::default()],
                xmpp: xmpp::Tracker::new([key.0, key.1]),
                last_ts: ts,
                tick: 0,
                fin: [false; 2],
            };
            self.flows.insert(key, flow);
            self.stats.flows += 1;
            self.stats.flows_high_water = self.stats.flows_high_water.max(self.flows.len() as u64);
        }
        self.tick += 1;
        let tick = self.tick;
        let Some(flow) = self.flows.get_mut(&key) else { return };
        self.lru.remove(&flow.tick);
        flow.tick = tick;
        flow.last_ts = ts;
        self.lru.insert(tick, key);

        let verify = self.limits.verify_window;
        let before = flow.halves[0].pending_bytes() + flow.halves[1].pending_bytes();
        if seg.flags.syn {
            flow.halves[dir].syn(seg.seq);
            flow.xmpp.syn(dir, seg.flags.ack);
        }
        let mut ctx = xmpp::Ctx {
            policy: &self.policy,
            rates: &self.rates,
            xml: &self.xml,
            probe_bytes: self.limits.probe_bytes,
            local_domains: self.local_domains.as_deref(),
            files: self.files.as_ref(),
            now,
            ts,
            events: &mut self.events,
            stats: &mut self.stats,
        };
        let mut pieces = std::mem::take(&mut self.pieces);
        if !seg.payload.is_empty() {
            let data_seq = if seg.flags.syn { seg.seq.wrapping_add(1) } else { seg.seq };
            let accepted = flow.halves[dir].accept(data_seq, seg.payload);
            if accepted.conflict {
                ctx.stats.conflicts += 1;
                let offset = flow.halves[dir].offset();
                flow.xmpp.conflict(dir, offset, &mut ctx);
            }
            if accepted.duplicate {
                ctx.stats.duplicates += 1;
            }
            if accepted.in_order {
                let data = &seg.payload[accepted.skip..];
                flow.halves[dir].delivered(data, verify);
                flow.xmpp.data(dir, data, &mut ctx);
                flow.halves[dir].drain(&mut pieces, verify);
                deliver(&mut flow.xmpp, dir, &mut pieces, &mut ctx);
            } else if flow.halves[dir].pending_bytes() > self.limits.max_pending_per_flow {
                let mut rounds = 0;
                while flow.halves[dir].pending_bytes() > self.limits.max_pending_per_flow && rounds < 1024 {
                    flow.halves[dir].skip_hole(None, &mut pieces, verify);
                    deliver(&mut flow.xmpp, dir, &mut pieces, &mut ctx);
                    rounds += 1;
                }
            }
        }
        if seg.flags.ack {
            // This side acknowledged the other's bytes: a hole before the ack is capture loss.
            flow.halves[1 - dir].acknowledged(seg.ack, &mut pieces, verify);
            deliver(&mut flow.xmpp, 1 - dir, &mut pieces, &mut ctx);
        }
        if seg.flags.fin {
            flow.halves[dir].fin(if seg.flags.syn { seg.seq.wrapping_add(1) } else { seg.seq }, seg.payload.len());
            flow.fin[dir] = true;
        }
        let after = flow.halves[0].pending_bytes() + flow.halves[1].pending_bytes();
        self.pending_total = (self.pending_total + after).saturating_sub(before);
        self.pieces = pieces;
        if self.pending_total > self.limits.max_pending_total {
            // Memory pressure: this flow's waiting bytes go first (it is the one growing).
            if let Some(flow) = self.flows.get_mut(&key) {
                let dropped = flow.halves[0].drop_pending() + flow.halves[1].drop_pending();
                self.stats.pending_dropped += dropped as u64;
                self.pending_total = self.pending_total.saturating_sub(dropped);
            }
        }
        self.stats.pending_high_water = self.stats.pending_high_water.max(self.pending_total as u64);
        let done = self.flows.get(&key).is_some_and(|f| f.fin[0] && f.fin[1]);
        if seg.flags.rst {
            self.forget(key);
            self.end_flow(key, FlowEnd::Rst, ts, now);
        } else if done {
            self.forget(key);
            self.end_flow(key, FlowEnd::Fin, ts, now);
        }
    }

    /// The capture ended: every open flow is flushed and ended.
    pub fn finish(&mut self) {
        let last = self.flows.values().map(|f| f.last_ts).max().unwrap_or_default();
        let now = self.base + last.saturating_sub(self.first_ts.unwrap_or(last));
        while let Some((_, key)) = self.lru.pop_first() {
            self.end_flow(key, FlowEnd::EndOfCapture, last, now);
        }
    }

    fn forget(&mut self, key: FlowKey) {
        if let Some(f) = self.flows.get(&key) {
            self.lru.remove(&f.tick);
        }
    }

    fn expire_idle(&mut self, ts: Duration, now: Instant) {
        let mut rounds = 0;
        while let Some((&tick, &key)) = self.lru.first_key_value() {
            let idle = self.flows.get(&key).is_none_or(|f| f.last_ts + self.limits.idle_timeout < ts);
            if !idle || rounds >= 1024 {
                break;
            }
            self.lru.remove(&tick);
            self.stats.flows_idle += 1;
            self.end_flow(key, FlowEnd::Idle, ts, now);
            rounds += 1;
        }
    }

    /// Flush `key`'s waiting bytes (gaps included) into its tracker and report its end. The
    /// caller has removed it from the LRU index.
    fn end_flow(&mut self, key: FlowKey, how: FlowEnd, ts: Duration, now: Instant) {
        let Some(mut flow) = self.flows.remove(&key) else { return };
        let verify = self.limits.verify_window;
        let pending = flow.halves[0].pending_bytes() + flow.halves[1].pending_bytes();
        self.pending_total = self.pending_total.saturating_sub(pending);
        let mut ctx = xmpp::Ctx {
            policy: &self.policy,
            rates: &self.rates,
            xml: &self.xml,
            probe_bytes: self.limits.probe_bytes,
            local_domains: self.local_domains.as_deref(),
            files: self.files.as_ref(),
            now,
            ts,
            events: &mut self.events,
            stats: &mut self.stats,
        };
        let mut pieces = Vec::new();
        for dir in 0..2 {
            flow.halves[dir].flush(&mut pieces, verify);
            deliver(&mut flow.xmpp, dir, &mut pieces, &mut ctx);
        }
        flow.xmpp.ended(how, &mut ctx);
    }
}

/// Hand reassembled pieces of direction `dir` to the tracker.
fn deliver(tracker: &mut xmpp::Tracker, dir: usize, pieces: &mut Vec<Piece>, ctx: &mut xmpp::Ctx<'_>) {
    for piece in pieces.drain(..) {
        match piece {
            Piece::Data(bytes) => tracker.data(dir, &bytes, ctx),
            Piece::Gap(n) => {
                ctx.stats.gaps += 1;
                ctx.stats.gap_bytes += n;
                tracker.gap(dir, n, ctx);
            }
        }
    }
}
