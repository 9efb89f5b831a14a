//! TCP reassembly of one direction of one flow: segments in, the byte stream out, in order.
//!
//! What it decides (RFC 9293 §3.4 sequence space, read by an observer rather than a receiver):
//! - out-of-order segments wait in a bounded map until the hole before them is filled;
//! - a retransmission overlapping bytes already seen is trimmed; when its bytes *differ* from
//!   the first copy the overlap is a conflict (an IDS-evasion technique: the receiver keeps one
//!   copy, the observer may keep the other). The first copy wins, consistently, and the caller
//!   reports the conflict. Delivered bytes are compared within a bounded window (`verify`);
//!   older retransmissions are trimmed unverified;
//! - a hole that cannot be filled (the receiver acknowledged past it, the waiting data hit its
//!   cap, or the flow ended) is a gap: skipped, reported with its size, never guessed;
//! - a direction first seen without its SYN starts at its first segment (mid-stream pickup).
//!
//! Offsets are absolute (`u64` from the first byte observed), so sequence wrap-around at 2^32 is
//! handled once, in [`HalfStream::offset_of`]. Nothing here allocates past its caps.

use std::collections::{BTreeMap, VecDeque};

/// What became of one segment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Bytes of the payload (from its start) already delivered or waiting: skip them.
    pub skip: usize,
    /// The payload continues the stream right after `skip`: deliver `payload[skip..]`, then
    /// [`HalfStream::drain`] what it unblocked.
    pub in_order: bool,
    /// Some overlapping byte differed from the copy seen first.
    pub conflict: bool,
    /// Nothing new in it (a pure retransmission or a keepalive probe).
    pub duplicate: bool,
}

/// One piece of the reassembled stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes, in order.
    Data(Vec<u8>),
    /// This many bytes were never seen.
    Gap(u64),
}

/// One direction of a TCP connection, as observed.
#[derive(Debug, Default)]
pub struct HalfStream {
    /// Sequence number of the byte at `offset` (`None` before the first segment).
    next_seq: Option<u32>,
    /// Absolute offset of the next byte to deliver.
    offset: u64,
    /// Out-of-order data by absolute offset; never overlapping, all beyond `offset`.
    pending: BTreeMap<u64, Vec<u8>>,
    pending_bytes: usize,
    /// The last bytes delivered (up to the verify window), to compare retransmissions with.
    recent: VecDeque<u8>,
    /// The SYN of this direction was seen (so its first byte is known).
    pub syn_seen: bool,
    /// Absolute offset of the FIN, once seen.
    fin_at: Option<u64>,
}

impl HalfStream {
    /// Bytes waiting behind a hole.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Absolute offset of the next byte to deliver (bytes delivered and skipped so far).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// True once every byte up to the FIN was delivered.
    pub fn finished(&self) -> bool {
        self.fin_at.is_some_and(|f| self.offset >= f)
    }

    /// A SYN with initial sequence number `isn`: the first data byte is `isn + 1`.
    pub fn syn(&mut self, isn: u32) {
        if self.next_seq.is_none() {
            self.next_seq = Some(isn.wrapping_add(1));
            self.syn_seen = true;
        }
    }

    /// The absolute offset of sequence number `seq` (negative: before the first byte seen).
    fn offset_of(&self, seq: u32) -> i64 {
        let base = self.next_seq.unwrap_or(seq);
        // Within ±2 GiB of the current position, as RFC 9293 §3.4 windows always are.
        self.offset as i64 + i64::from(seq.wrapping_sub(base) as i32)
    }

    /// A FIN at sequence number `seq` (after `len` payload bytes of its segment).
    pub fn fin(&mut self, seq: u32, len: usize) {
        if self.next_seq.is_none() {
            self.next_seq = Some(seq);
        }
        let at = self.offset_of(seq) + len as i64;
        if at >= 0 && self.fin_at.is_none() {
            self.fin_at = Some(at as u64);
        }
    }

    /// Take in a segment's `payload` at `seq`. In-order data is not copied: the caller delivers
    /// `payload[skip..]` itself ([`Accepted::in_order`]) and then calls [`HalfStream::delivered`].
    /// Out-of-order data is kept unless it would take the waiting bytes past `cap`; then the
    /// hole before the waiting data is declared a gap first (see [`HalfStream::skip_hole`]),
    /// which the caller learns from [`HalfStream::drain`].
    pub fn accept(&mut self, seq: u32, payload: &[u8]) -> Accepted {
        if self.next_seq.is_none() {
            // Mid-stream pickup: the first byte observed is offset 0.
            self.next_seq = Some(seq);
        }
        let mut out = Accepted::default();
        if payload.is_empty() {
            out.duplicate = true;
            return out;
        }
        let start = self.offset_of(seq);
        let end = start + payload.len() as i64;
        if end <= self.offset as i64 {
            out.conflict = self.differs_from_recent(start, payload);
            out.duplicate = true;
            out.skip = payload.len();
            return out;
        }
        if start <= self.offset as i64 {
            let skip = (self.offset as i64 - start) as usize;
            out.conflict = self.differs_from_recent(start, &payload[..skip]);
            out.skip = skip;
            // Bytes of it that are already waiting must agree with the waiting copy.
            out.conflict |= self.differs_from_pending(self.offset, &payload[skip..]);
            out.in_order = true;
            return out;
        }
        // Out of order: keep what is new, compare what overlaps.
        let start = start as u64;
        out.conflict = self.differs_from_pending(start, payload);
        let added = self.insert_pending(start, payload);
        out.duplicate = added == 0;
        out
    }

    /// `data` (the in-order part of an accepted segment) was delivered.
    pub fn delivered(&mut self, data: &[u8], verify: usize) {
        self.advance(data, verify);
    }

    fn advance(&mut self, data: &[u8], verify: usize) {
        self.offset += data.len() as u64;
        self.next_seq = self.next_seq.map(|s| s.wrapping_add(data.len() as u32));
        if verify > 0 {
            let keep = data.len().min(verify);
            self.recent.extend(&data[data.len() - keep..]);
            let excess = self.recent.len().saturating_sub(verify);
            self.recent.drain(..excess);
        }
        // Waiting data now (partly) behind the position: trim it.
        while let Some((&at, _)) = self.pending.first_key_value() {
            if at >= self.offset {
                break;
            }
            let Some((at, bytes)) = self.pending.pop_first() else { break };
            self.pending_bytes -= bytes.len();
            let behind = (self.offset - at) as usize;
            if behind < bytes.len() {
                let rest = bytes[behind..].to_vec();
                self.pending_bytes += rest.len();
                self.pending.insert(self.offset, rest);
            }
        }
    }

    /// Move waiting data that now continues the stream into `out`.
    pub fn drain(&mut self, out: &mut Vec<Piece>, verify: usize) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.offset {
                break;
            }
            let bytes = entry.remove();
            self.pending_bytes -= bytes.len();
            self.advance(&bytes, verify);
            out.push(Piece::Data(bytes));
        }
    }

    /// The hole at the current position will never be filled: skip to the next waiting data
    /// (or to `upto`, whichever is first) and push a gap, then what continues after it.
    pub fn skip_hole(&mut self, upto: Option<u64>, out: &mut Vec<Piece>, verify: usize) {
        let next = self.pending.first_key_value().map(|(&at, _)| at);
        let target = match (next, upto) {
            (Some(n), Some(u)) => n.min(u),
            (Some(n), None) => n,
            (None, Some(u)) => u,
            (None, None) => return,
        };
        if target <= self.offset {
            return;
        }
        let gap = target - self.offset;
        self.offset = target;
        self.next_seq = self.next_seq.map(|s| s.wrapping_add(gap as u32));
        self.recent.clear();
        out.push(Piece::Gap(gap));
        self.drain(out, verify);
    }

    /// The other direction acknowledged up to `ack`: the receiver has every byte before it, so
    /// a hole before `ack` with data waiting beyond it was lost by the capture, not the network.
    pub fn acknowledged(&mut self, ack: u32, out: &mut Vec<Piece>, verify: usize) {
        if self.next_seq.is_none() || self.pending.is_empty() {
            return;
        }
        let at = self.offset_of(ack);
        if at > self.offset as i64 {
            self.skip_hole(Some(at as u64), out, verify);
        }
    }

    /// The flow ended (FIN, RST, eviction, end of capture): deliver what waits, gaps included.
    pub fn flush(&mut self, out: &mut Vec<Piece>, verify: usize) {
        let mut rounds = 0;
        while !self.pending.is_empty() && rounds < 1_000_000 {
            self.skip_hole(None, out, verify);
            rounds += 1;
        }
    }

    /// Forget everything waiting (memory pressure), returning how many bytes were dropped.
    pub fn drop_pending(&mut self) -> usize {
        let n = self.pending_bytes;
        self.pending.clear();
        self.pending_bytes = 0;
        n
    }

    fn differs_from_recent(&self, start: i64, bytes: &[u8]) -> bool {
        // `recent` ends at `offset`.
        let recent_start = self.offset as i64 - self.recent.len() as i64;
        bytes.iter().enumerate().any(|(i, b)| {
            let at = start + i as i64;
            at >= recent_start && at < self.offset as i64 && self.recent[(at - recent_start) as usize] != *b
        })
    }

    fn differs_from_pending(&self, start: u64, bytes: &[u8]) -> bool {
        let end = start + bytes.len() as u64;
        // Waiting pieces that overlap [start, end).
        let first = self.pending.range(..start).next_back().map(|(&k, _)| k).unwrap_or(start);
        self.pending.range(first..end).any(|(&at, piece)| {
            let (lo, hi) = (at.max(start), (at + piece.len() as u64).min(end));
            lo < hi
                && piece[(lo - at) as usize..(hi - at) as usize] != bytes[(lo - start) as usize..(hi - start) as usize]
        })
    }

    /// Keep the parts of `bytes` at `start` not already waiting; returns how many were new.
    fn insert_pending(&mut self, start: u64, bytes: &[u8]) -> usize {
        let end = start + bytes.len() as u64;
        let mut cursor = start;
        let mut added = 0;
        let overlapping: Vec<(u64, u64)> = {
            let first = self.pending.range(..start).next_back().map(|(&k, _)| k).unwrap_or(start);
            self.pending.range(first..end).map(|(&k, v)| (k, k + v.len() as u64)).collect()
        };
        let mut new_pieces = Vec::new();
        for (lo, hi) in overlapping {
            if hi <= cursor {
                continue;
            }
            if lo > cursor {
                new_pieces.push((cursor, lo.min(end)));
            }
            cursor = cursor.max(hi);
            if cursor >= end {
                break;
            }
        }
        if cursor < end {
            new_pieces.push((cursor, end));
        }
        for (lo, hi) in new_pieces {
            let piece = bytes[(lo - start) as usize..(hi - start) as usize].to_vec();
            added += piece.len();
            self.pending_bytes += piece.len();
            self.pending.insert(lo, piece);
        }
        added
    }
}
