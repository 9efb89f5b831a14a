//! Stream Management (XEP-0198) counter translation across the gateway.
//!
//! Both ends of a stream count the stanzas they handle (`<message/>`, `<presence/>`, `<iq/>`;
//! never nonzas such as `<r/>`, `<a/>` or `<enable/>`, XEP-0198 §4) and acknowledge them with
//! `<a h='…'/>`, and with `h` on `<resume/>`/`<resumed/>` (§5). The gateway is not transparent:
//! it drops stanzas, bounces them (answers an error itself) and injects its own error replies, so
//! the sender's count and the receiver's count drift apart. A [`Direction`] keeps, for one way
//! through the gateway, which receiver positions are the sender's stanzas and rewrites every `h`
//! from the receiver into the sender's count, so that neither end sees an ack for more than it
//! sent (§6 `<handled-count-too-high/>`) nor keeps resending what was handled.
//!
//! A stanza the gateway withheld (dropped or bounced) counts as handled for its sender as soon as
//! every stanza the sender sent before it that was forwarded has been acknowledged; a stanza the
//! gateway injected takes a place in the receiver's count and stands for nothing of the sender's.
//! Counts are kept in `u64` and reduced mod 2^32 only on the wire (§4: `h` wraps at 2^32); a wire
//! value is read as the smallest count not below the previous acknowledgement.
//!
//! What this module owns: the counting and the translation, nothing else. It never parses or
//! writes XML, never decides what is dropped, never reads a clock, and never grows without bound:
//! the points where the two counts diverge and that await an acknowledgement are capped
//! ([`DEFAULT_MAX_GAPS`]); past the cap the caller must close the stream with
//! `<resource-constraint/>` ([`TooManyUnacked`]) rather than lose count.

use std::collections::VecDeque;

use crate::stream::{Condition, StreamError};

/// Stream Management namespace (XEP-0198 §3, version 3).
pub const NS_SM: &str = "urn:xmpp:sm:3";

/// Default cap on the unacknowledged points where a [`Direction`]'s counts diverge, and the cap
/// every session uses. A point is one run of withheld and injected stanzas between two forwarded
/// ones, so a burst of drops costs one point; a point is 24 bytes, so 1024 points are 24 KiB per
/// direction (invariant 6, bounded memory per connection, docs/DESIGN.md). 1024 is the value
/// sessions have always run with; the 4096 this once said was never in force. A peer reaches it
/// only by leaving more than 1024 separate drops or injections unacknowledged.
pub const DEFAULT_MAX_GAPS: usize = 1024;

/// An `h` from the receiver that no correct peer sends; the caller closes the receiver's stream
/// with [`AckError::stream_error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// XEP-0198 §6: the receiver acknowledged more stanzas than the gateway sent it.
    #[error("h='{h}' acknowledges more than the {send_count} stanzas sent")]
    TooHigh {
        /// The receiver's `h`.
        h: u32,
        /// What the gateway sent the receiver, mod 2^32 (the `send-count` of the error).
        send_count: u32,
    },
    /// The receiver's `h` is below one it already sent: handled stanzas cannot become unhandled.
    #[error("h='{h}' is below the previous acknowledgement h='{previous}'")]
    Backwards {
        /// The receiver's `h`.
        h: u32,
        /// The previous `h` from the receiver.
        previous: u32,
    },
    /// An acknowledgement in a direction where Stream Management is not enabled.
    #[error("acknowledgement without Stream Management enabled")]
    NotEnabled,
}

impl AckError {
    /// The stream error for the receiver: `<undefined-condition/>` with XEP-0198 §6's
    /// `<handled-count-too-high/>` for a too-high `h`, `<unsupported-stanza-type/>` for an ack
    /// where Stream Management is off.
    pub fn stream_error(&self) -> StreamError {
        match self {
            AckError::TooHigh { .. } => StreamError::new(Condition::UndefinedCondition, Some(self.to_string()))
                .with_app(NS_SM, "handled-count-too-high"),
            AckError::Backwards { .. } => StreamError::new(Condition::UndefinedCondition, Some(self.to_string())),
            AckError::NotEnabled => StreamError::new(Condition::UnsupportedStanzaType, Some(self.to_string())),
        }
    }
}

/// The bookkeeping of withheld and injected stanzas awaiting an acknowledgement is full (the
/// receiver stopped acknowledging while the gateway kept dropping or injecting). The stanza was
/// *not* counted, so the [`Direction`] no longer matches the stream: the caller must close it
/// with [`TooManyUnacked::stream_error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more than {max} points of withheld or injected stanzas await an acknowledgement")]
pub struct TooManyUnacked {
    /// The cap that was reached.
    pub max: usize,
}

impl TooManyUnacked {
    /// `<resource-constraint/>` (RFC 6120 §4.9.3.17).
    pub fn stream_error(&self) -> StreamError {
        StreamError::new(Condition::ResourceConstraint, Some(self.to_string()))
    }
}

/// A place in one direction's history: `forwarded` stanzas passed through, the receiver's count
/// `to_receiver` and the sender's count `from_sender` (all unreduced).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Point {
    forwarded: u64,
    to_receiver: u64,
    from_sender: u64,
}

/// Stanzas withheld and injected right after the `after`-th forwarded stanza and before the next
/// one. Their order inside the run does not matter: every withheld one is handled once the
/// forwarded stanzas up to `after` are, and every injected one only shifts the receiver's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gap {
    after: u64,
    withheld: u64,
    injected: u64,
}

/// One direction: stanzas from a sender S, through the gateway, to a receiver R.
///
/// Call the three counting methods in the order the stanzas are written to R (and, for
/// withheld ones, in the order S sent them); an injected stanza is counted when its bytes are
/// queued for R, not when the stanza it answers arrived.
#[derive(Debug, Clone)]
pub struct Direction {
    enabled: bool,
    max_gaps: usize,
    /// Everything counted so far.
    sent: Point,
    /// Where R's last acknowledgement puts us; `acked.to_receiver` is R's last `h`.
    acked: Point,
    /// Divergences after `acked`, in order, `after` strictly increasing and `>= acked.forwarded`.
    gaps: VecDeque<Gap>,
}

impl Default for Direction {
    fn default() -> Self {
        Direction::new(DEFAULT_MAX_GAPS)
    }
}

impl Direction {
    /// A direction where Stream Management is not enabled yet, capped at `max_gaps` (at least 1).
    pub fn new(max_gaps: usize) -> Self {
        Direction {
            enabled: false,
            max_gaps: max_gaps.max(1),
            sent: Point::default(),
            acked: Point::default(),
            gaps: VecDeque::new(),
        }
    }

    /// Start counting from zero (XEP-0198 §4): stanzas counted from now on are the ones both
    /// ends count.
    pub fn enable(&mut self) {
        *self = Direction { enabled: true, ..Direction::new(self.max_gaps) };
    }

    /// Stop counting and forget everything (`<failed/>` answered `<enable/>`).
    pub fn disable(&mut self) {
        *self = Direction::new(self.max_gaps);
    }

    /// True while counting.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// A stanza from S was forwarded to R.
    pub fn forwarded(&mut self) {
        if !self.enabled {
            return;
        }
        // u64 counts do not overflow: 2^64 stanzas at a billion a second take 584 years.
        self.sent.forwarded += 1;
        self.sent.to_receiver += 1;
        self.sent.from_sender += 1;
    }

    /// A stanza from S was dropped or bounced: R never sees it, S counts it as handled once R has
    /// acknowledged every forwarded stanza S sent before it.
    pub fn withheld(&mut self) -> Result<(), TooManyUnacked> {
        if !self.enabled {
            return Ok(());
        }
        self.gap()?.withheld += 1;
        self.sent.from_sender += 1;
        Ok(())
    }

    /// The gateway itself sent R a stanza (an error reply): R counts it, S never sent it.
    pub fn injected(&mut self) -> Result<(), TooManyUnacked> {
        if !self.enabled {
            return Ok(());
        }
        self.gap()?.injected += 1;
        self.sent.to_receiver += 1;
        Ok(())
    }

    /// R acknowledged `h` stanzas (`<a h/>`, R's count mod 2^32): the `h` to tell S (S's count
    /// mod 2^32). Never decreases and never exceeds what S sent; once R acknowledges all it was
    /// sent, it is all S sent. An `h` above what R was sent, or below R's previous one, is an
    /// error and changes nothing.
    pub fn translate_ack(&mut self, h: u32) -> Result<u32, AckError> {
        if !self.enabled {
            return Err(AckError::NotEnabled);
        }
        let h = self.unwrap_receiver_count(h)?;
        self.advance(h);
        Ok(wire(self.acked.from_sender))
    }

    /// The stream is resumed (XEP-0198 §5) and R says it handled `h`: translate as
    /// [`Direction::translate_ack`], then forget everything after that point, because S
    /// retransmits its unacknowledged stanzas (which the gateway filters again) and R's count
    /// continues from `h`. Injected stanzas R had not handled are not sent again.
    pub fn resume(&mut self, h: u32) -> Result<u32, AckError> {
        let handled = self.translate_ack(h)?;
        self.sent = self.acked;
        self.gaps.clear();
        Ok(handled)
    }

    /// The `h` S was last told, mod 2^32 (a withheld stanza since then shows in the next one).
    pub fn acked_for_sender(&self) -> u32 {
        wire(self.acked.from_sender)
    }

    /// Stanzas S sent (counted), mod 2^32.
    pub fn sent_by_sender(&self) -> u32 {
        wire(self.sent.from_sender)
    }

    /// Stanzas R was sent (forwarded and injected), mod 2^32: the `send-count` of §6's error.
    pub fn sent_to_receiver(&self) -> u32 {
        wire(self.sent.to_receiver)
    }

    /// True when R has acknowledged everything it was sent (forwarded and injected).
    pub fn all_acknowledged(&self) -> bool {
        self.acked.to_receiver == self.sent.to_receiver
    }

    /// Divergence points awaiting an acknowledgement (bounded by the cap).
    pub fn unacked_gaps(&self) -> usize {
        self.gaps.len()
    }

    /// The run of withheld/injected stanzas after the latest forwarded one, opened if needed.
    fn gap(&mut self) -> Result<&mut Gap, TooManyUnacked> {
        let after = self.sent.forwarded;
        if self.gaps.back().is_none_or(|g| g.after != after) {
            if self.gaps.len() >= self.max_gaps {
                return Err(TooManyUnacked { max: self.max_gaps });
            }
            self.gaps.push_back(Gap { after, withheld: 0, injected: 0 });
        }
        // Never the error: a gap was there or has just been pushed.
        self.gaps.back_mut().ok_or(TooManyUnacked { max: self.max_gaps })
    }

    /// R's wire `h` as a full count: the smallest one congruent mod 2^32 that is not below R's
    /// previous `h` (with more than 2^32 stanzas unacknowledged the wire value is ambiguous and
    /// this is the conservative reading).
    fn unwrap_receiver_count(&self, h: u32) -> Result<u64, AckError> {
        let previous = self.acked.to_receiver;
        let outstanding = self.sent.to_receiver - previous;
        let ahead = u64::from(h.wrapping_sub(wire(previous)));
        if ahead <= outstanding {
            return Ok(previous + ahead);
        }
        // Not reachable going forward: a small step back from the previous `h` is a peer
        // un-acknowledging, anything else a count it was never sent.
        let behind = u64::from(wire(previous).wrapping_sub(h));
        if behind <= previous && behind < 1 << 31 {
            Err(AckError::Backwards { h, previous: wire(previous) })
        } else {
            Err(AckError::TooHigh { h, send_count: wire(self.sent.to_receiver) })
        }
    }

    /// Move `acked` as far as R's count `h` reaches, pruning the gaps passed. Requires
    /// `acked.to_receiver <= h <= sent.to_receiver`.
    fn advance(&mut self, h: u64) {
        loop {
            if let Some(gap) = self.gaps.front_mut() {
                if gap.after == self.acked.forwarded {
                    // Every forwarded stanza before this run is acknowledged: the withheld ones
                    // are handled; the injected ones as far as `h` reaches.
                    self.acked.from_sender += gap.withheld;
                    gap.withheld = 0;
                    let injected = gap.injected.min(h - self.acked.to_receiver);
                    self.acked.to_receiver += injected;
                    gap.injected -= injected;
                    if gap.injected > 0 {
                        return;
                    }
                    self.gaps.pop_front();
                }
            }
            let run_end = self.gaps.front().map_or(self.sent.forwarded, |g| g.after);
            let run = run_end - self.acked.forwarded;
            let step = run.min(h - self.acked.to_receiver);
            self.acked.forwarded += step;
            self.acked.to_receiver += step;
            self.acked.from_sender += step;
            if step == 0 || step < run {
                return;
            }
        }
    }

    /// Test hook: a direction enabled long ago, with the counts at `to_receiver`/`from_sender`
    /// and everything acknowledged (to cross 2^32 without sending 2^32 stanzas).
    #[cfg(test)]
    fn enabled_at(to_receiver: u64, from_sender: u64, max_gaps: usize) -> Self {
        let at = Point { forwarded: 0, to_receiver, from_sender };
        Direction { enabled: true, sent: at, acked: at, ..Direction::new(max_gaps) }
    }
}

/// Both directions of one c2s session.
#[derive(Debug, Clone, Default)]
pub struct StreamManagement {
    /// Client stanzas toward the server: S = client, R = server. Enabled when the client's
    /// `<enable/>` is forwarded; the server's `<a/>` and `<resumed h/>` are translated here.
    pub to_server: Direction,
    /// Server stanzas toward the client: S = server, R = client. Enabled when the server's
    /// `<enabled/>` is forwarded; the client's `<a/>` and `<resume h/>` are translated here.
    pub to_client: Direction,
}

impl StreamManagement {
    /// Both directions disabled, each capped at `max_gaps`.
    pub fn new(max_gaps: usize) -> Self {
        StreamManagement { to_server: Direction::new(max_gaps), to_client: Direction::new(max_gaps) }
    }

    /// A client stanza was refused and answered with an error by the gateway.
    pub fn client_stanza_bounced(&mut self) -> Result<(), TooManyUnacked> {
        self.to_server.withheld()?;
        self.to_client.injected()
    }

    /// A server stanza was refused and answered with an error by the gateway.
    pub fn server_stanza_bounced(&mut self) -> Result<(), TooManyUnacked> {
        self.to_client.withheld()?;
        self.to_server.injected()
    }
}

/// A count as it goes on the wire: mod 2^32 (XEP-0198 §4).
fn wire(count: u64) -> u32 {
    (count & u64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const WRAP: u64 = 1 << 32;

    fn enabled() -> Direction {
        let mut d = Direction::default();
        d.enable();
        d
    }

    #[test]
    fn forwarded_stanzas_are_acked_one_to_one() {
        let mut d = enabled();
        for _ in 0..5 {
            d.forwarded();
        }
        assert_eq!(d.translate_ack(0), Ok(0));
        assert_eq!(d.translate_ack(3), Ok(3));
        assert_eq!(d.translate_ack(3), Ok(3), "a repeated h is fine");
        assert_eq!(d.translate_ack(5), Ok(5));
        assert_eq!((d.sent_by_sender(), d.sent_to_receiver(), d.unacked_gaps()), (5, 5, 0));
    }

    #[test]
    fn withheld_stanza_is_acked_once_the_forwarded_ones_before_it_are() {
        let mut d = enabled();
        d.forwarded(); // S1 → R1
        d.withheld().unwrap(); // S2
        d.withheld().unwrap(); // S3
        d.forwarded(); // S4 → R2
        assert_eq!(d.unacked_gaps(), 1, "consecutive withheld stanzas share one point");
        assert_eq!(d.translate_ack(0), Ok(0));
        assert_eq!(d.translate_ack(1), Ok(3), "S2 and S3 ride on the ack of S1");
        assert_eq!(d.translate_ack(2), Ok(4));
        assert_eq!(d.unacked_gaps(), 0);
    }

    #[test]
    fn withheld_at_the_tail_is_acked_with_the_next_ack() {
        let mut d = enabled();
        d.forwarded();
        d.forwarded();
        assert_eq!(d.translate_ack(2), Ok(2));
        d.withheld().unwrap();
        d.withheld().unwrap();
        // R has nothing new, but S's <r/> still gets an answer covering the drops.
        assert_eq!(d.translate_ack(2), Ok(4));
        assert_eq!(d.unacked_gaps(), 0);
    }

    #[test]
    fn withheld_first_stanza_is_acked_by_h_zero() {
        let mut d = enabled();
        d.withheld().unwrap();
        d.forwarded();
        assert_eq!(d.translate_ack(0), Ok(1));
        assert_eq!(d.translate_ack(1), Ok(2));
    }

    #[test]
    fn injected_stanzas_take_receiver_places_only() {
        let mut d = enabled();
        d.forwarded(); // S1 → R1
        d.injected().unwrap(); // R2
        d.injected().unwrap(); // R3
        d.forwarded(); // S2 → R4
        assert_eq!(d.sent_to_receiver(), 4);
        assert_eq!(d.sent_by_sender(), 2);
        assert_eq!(d.translate_ack(1), Ok(1));
        assert_eq!(d.translate_ack(2), Ok(1));
        assert_eq!(d.translate_ack(3), Ok(1));
        assert_eq!(d.translate_ack(4), Ok(2));
        assert_eq!(d.unacked_gaps(), 0);
    }

    #[test]
    fn withheld_after_an_unacked_injection_needs_only_the_forwarded_ones() {
        let mut d = enabled();
        d.forwarded(); // S1 → R1
        d.injected().unwrap(); // R2
        d.withheld().unwrap(); // S2
        d.forwarded(); // S3 → R3
        assert_eq!(d.translate_ack(1), Ok(2));
        assert_eq!(d.unacked_gaps(), 1, "the injected stanza is still outstanding");
        assert_eq!(d.translate_ack(2), Ok(2));
        assert_eq!(d.translate_ack(3), Ok(3));
        assert_eq!(d.unacked_gaps(), 0);
    }

    #[test]
    fn bounces_count_in_both_directions() {
        let mut sm = StreamManagement::default();
        sm.to_server.enable();
        sm.to_client.enable();
        sm.to_server.forwarded(); // client stanza 1 → server 1
        sm.client_stanza_bounced().unwrap(); // client stanza 2, error reply to the client
        sm.to_client.forwarded(); // server stanza 1 → client 2
        sm.server_stanza_bounced().unwrap(); // server stanza 2, error reply to the server
        assert_eq!(sm.to_client.translate_ack(2), Ok(2), "the client's h=2 is the server's 2");
        assert_eq!(sm.to_server.translate_ack(1), Ok(2), "the server's h=1 covers the bounced stanza");
        assert_eq!(sm.to_server.translate_ack(2), Ok(2));
        assert_eq!(sm.to_server.translate_ack(3), Err(AckError::TooHigh { h: 3, send_count: 2 }));
    }

    #[test]
    fn counting_is_off_until_enabled() {
        let mut d = Direction::default();
        d.forwarded();
        d.withheld().unwrap();
        d.injected().unwrap();
        assert!(!d.is_enabled());
        assert_eq!(d.translate_ack(0), Err(AckError::NotEnabled));
        d.enable();
        assert_eq!((d.sent_by_sender(), d.sent_to_receiver()), (0, 0));
        d.forwarded();
        d.withheld().unwrap();
        d.disable();
        assert_eq!((d.sent_by_sender(), d.unacked_gaps()), (0, 0));
        assert_eq!(d.translate_ack(0), Err(AckError::NotEnabled));
    }

    #[test]
    fn h_above_what_was_sent_is_an_error_and_changes_nothing() {
        let mut d = enabled();
        d.forwarded();
        d.injected().unwrap();
        d.withheld().unwrap();
        assert_eq!(d.translate_ack(3), Err(AckError::TooHigh { h: 3, send_count: 2 }));
        assert_eq!(d.translate_ack(u32::MAX), Err(AckError::TooHigh { h: u32::MAX, send_count: 2 }));
        assert_eq!(d.acked_for_sender(), 0);
        assert_eq!(d.translate_ack(2), Ok(2));
    }

    #[test]
    fn h_going_backwards_is_an_error() {
        let mut d = enabled();
        for _ in 0..10 {
            d.forwarded();
        }
        assert_eq!(d.translate_ack(7), Ok(7));
        assert_eq!(d.translate_ack(6), Err(AckError::Backwards { h: 6, previous: 7 }));
        assert_eq!(d.translate_ack(0), Err(AckError::Backwards { h: 0, previous: 7 }));
        assert_eq!(d.translate_ack(7), Ok(7));
    }

    #[test]
    fn stream_errors_name_the_conditions() {
        let high = AckError::TooHigh { h: 10, send_count: 8 }.stream_error();
        assert_eq!(high.condition, Condition::UndefinedCondition);
        assert_eq!(high.app, Some((NS_SM, "handled-count-too-high")));
        assert_eq!(high.text.as_deref(), Some("h='10' acknowledges more than the 8 stanzas sent"));
        assert_eq!(AckError::Backwards { h: 1, previous: 2 }.stream_error().condition, Condition::UndefinedCondition);
        assert_eq!(AckError::NotEnabled.stream_error().condition, Condition::UnsupportedStanzaType);
        assert_eq!(TooManyUnacked { max: 4 }.stream_error().condition, Condition::ResourceConstraint);
    }

    #[test]
    fn counts_wrap_at_two_to_the_32() {
        // R's count and S's count sit on different sides of 2^32.
        let mut d = Direction::enabled_at(WRAP - 2, WRAP - 5, DEFAULT_MAX_GAPS);
        assert_eq!(d.translate_ack(u32::MAX - 1), Ok(u32::MAX - 4));
        d.forwarded(); // R 2^32-1, S 2^32-4
        d.injected().unwrap(); // R 2^32 (wire 0)
        d.withheld().unwrap(); // S 2^32-3
        for _ in 0..4 {
            d.forwarded(); // R 2^32+4 (wire 4), S 2^32+1 (wire 1)
        }
        assert_eq!(d.sent_to_receiver(), 4);
        assert_eq!(d.sent_by_sender(), 1);
        assert_eq!(d.translate_ack(u32::MAX), Ok(u32::MAX - 2), "S 2^32-4 acked, so the withheld one too");
        assert_eq!(d.translate_ack(0), Ok(u32::MAX - 2), "the injected one maps to nothing");
        assert_eq!(d.translate_ack(2), Ok(u32::MAX));
        assert_eq!(d.translate_ack(3), Ok(0));
        assert_eq!(d.translate_ack(4), Ok(1));
        assert_eq!(d.translate_ack(5), Err(AckError::TooHigh { h: 5, send_count: 4 }));
        assert_eq!(d.translate_ack(u32::MAX), Err(AckError::Backwards { h: u32::MAX, previous: 4 }));
    }

    #[test]
    fn a_long_unacknowledged_run_across_the_wrap_is_read_forward() {
        let mut d = Direction::enabled_at(WRAP - 3, WRAP - 3, DEFAULT_MAX_GAPS);
        for _ in 0..6 {
            d.forwarded();
        }
        // Wire 1 is 2^32+1, not 1 (which would be 2^32 stanzas backwards).
        assert_eq!(d.translate_ack(1), Ok(1));
        assert_eq!(d.translate_ack(3), Ok(3));
    }

    #[test]
    fn the_cap_is_reported_and_lifted_by_acks() {
        let mut d = Direction::new(3);
        d.enable();
        for _ in 0..3 {
            d.forwarded();
            d.withheld().unwrap();
            d.injected().unwrap(); // same point as the withheld one
        }
        assert_eq!(d.unacked_gaps(), 3);
        d.withheld().unwrap(); // still the third point
        d.forwarded();
        assert_eq!(d.withheld(), Err(TooManyUnacked { max: 3 }));
        assert_eq!(d.injected(), Err(TooManyUnacked { max: 3 }));
        assert_eq!(d.sent_by_sender(), 8, "a refused stanza is not counted");
        assert_eq!(d.sent_to_receiver(), 7);
        // R's ack of the first point's stanzas prunes it.
        assert_eq!(d.translate_ack(2), Ok(2));
        assert_eq!(d.unacked_gaps(), 2);
        d.withheld().unwrap();
        assert_eq!(d.unacked_gaps(), 3);
        assert_eq!(d.translate_ack(7), Ok(9));
        assert_eq!(d.unacked_gaps(), 0);
    }

    #[test]
    fn resume_forgets_what_will_be_retransmitted() {
        let mut d = enabled();
        d.forwarded(); // S1 → R1
        d.forwarded(); // S2 → R2
        d.injected().unwrap(); // R3
        d.withheld().unwrap(); // S3
        d.forwarded(); // S4 → R4
        assert_eq!(d.resume(2), Ok(3));
        assert_eq!((d.sent_by_sender(), d.sent_to_receiver(), d.unacked_gaps()), (3, 2, 0));
        // S retransmits S4; it is forwarded as R3 this time.
        d.forwarded();
        assert_eq!(d.translate_ack(3), Ok(4));
        assert_eq!(d.resume(9), Err(AckError::TooHigh { h: 9, send_count: 3 }));
    }

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Forward,
        Withhold,
        Inject,
        /// R acknowledges a point between its last `h` and all it was sent (in 0..=255/255).
        Ack(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Forward),
            2 => Just(Op::Withhold),
            1 => Just(Op::Inject),
            2 => any::<u8>().prop_map(Op::Ack),
        ]
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Event {
        Forwarded,
        Withheld,
        Injected,
    }

    /// The rule, evaluated on the whole history: with `k` forwarded stanzas at R positions
    /// `<= h`, S has handled everything it sent before its `k+1`-th forwarded stanza.
    fn expected(history: &[Event], h: u64) -> u64 {
        let (mut r, mut s, mut k) = (0, 0, 0);
        for e in history {
            if *e == Event::Forwarded {
                r += 1;
                if r <= h {
                    k += 1;
                }
            } else if *e == Event::Injected {
                r += 1;
            }
        }
        let mut forwarded = 0;
        for e in history {
            match e {
                Event::Forwarded if forwarded == k => return s,
                Event::Forwarded => {
                    forwarded += 1;
                    s += 1;
                }
                Event::Withheld => s += 1,
                Event::Injected => {}
            }
        }
        s
    }

    proptest! {
        #[test]
        fn translated_acks_follow_the_rule(
            ops in prop::collection::vec(op(), 0..400),
            r0 in (WRAP - 300)..(WRAP + 300),
            s0 in (WRAP - 300)..(WRAP + 300),
        ) {
            let mut d = Direction::enabled_at(r0, s0, DEFAULT_MAX_GAPS);
            let mut history = Vec::new();
            let (mut to_receiver, mut from_sender, mut last_h, mut last_ack) = (0u64, 0u64, 0u64, 0u64);
            for op in ops {
                match op {
                    Op::Forward => {
                        d.forwarded();
                        history.push(Event::Forwarded);
                        to_receiver += 1;
                        from_sender += 1;
                    }
                    Op::Withhold => {
                        d.withheld().unwrap();
                        history.push(Event::Withheld);
                        from_sender += 1;
                    }
                    Op::Inject => {
                        d.injected().unwrap();
                        history.push(Event::Injected);
                        to_receiver += 1;
                    }
                    Op::Ack(at) => {
                        let h = last_h + (to_receiver - last_h) * u64::from(at) / 255;
                        let got = d.translate_ack(wire(r0 + h)).unwrap();
                        let want = expected(&history, h);
                        prop_assert_eq!(got, wire(s0 + want));
                        prop_assert!(want >= last_ack, "monotonic");
                        prop_assert!(want <= from_sender, "never more than S sent");
                        // Anything above what R was sent is refused, and changes nothing.
                        let too_high = wire(r0 + to_receiver + 1 + u64::from(at));
                        prop_assert!(d.translate_ack(too_high).is_err());
                        prop_assert_eq!(d.acked_for_sender(), got);
                        (last_h, last_ack) = (h, want);
                    }
                }
                prop_assert_eq!(d.sent_to_receiver(), wire(r0 + to_receiver));
                prop_assert_eq!(d.sent_by_sender(), wire(s0 + from_sender));
            }
            prop_assert_eq!(d.translate_ack(wire(r0 + to_receiver)), Ok(wire(s0 + from_sender)));
            prop_assert_eq!(d.unacked_gaps(), 0);
        }

        #[test]
        fn the_cap_bounds_the_points_and_only_them(
            ops in prop::collection::vec(op(), 0..400),
            cap in 1usize..8,
        ) {
            let mut d = Direction::new(cap);
            d.enable();
            let mut to_receiver = 0u64;
            for op in ops {
                let before = d.unacked_gaps();
                let result = match op {
                    Op::Forward => {
                        d.forwarded();
                        to_receiver += 1;
                        Ok(())
                    }
                    Op::Withhold => d.withheld(),
                    Op::Inject => d.injected().map(|()| to_receiver += 1),
                    Op::Ack(at) => {
                        let last = d.acked.to_receiver;
                        let h = last + (to_receiver - last) * u64::from(at) / 255;
                        prop_assert!(d.translate_ack(wire(h)).is_ok());
                        Ok(())
                    }
                };
                prop_assert!(d.unacked_gaps() <= cap);
                if let Err(e) = result {
                    prop_assert_eq!(e, TooManyUnacked { max: cap });
                    prop_assert_eq!(before, cap);
                }
            }
        }
    }
}
