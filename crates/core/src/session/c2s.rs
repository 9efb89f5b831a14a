//! The c2s stream kind: one client stream in front, one backend stream behind.
//!
//! Sans-IO (rustls' `ConnectionCommon` style): the daemon feeds bytes from either leg and reports
//! I/O milestones (TLS done, backend connected); the session answers with bytes to write on each
//! leg and [`Effect`]s for the daemon to carry out. It never touches sockets or clocks.
//!
//! What it enforces (docs/DESIGN.md "How a stanza travels"):
//! - the gateway answers the client's header itself and offers only `<starttls><required/>`;
//!   after `<starttls/>` no byte reaches the XML parser until TLS is up;
//! - SASL is relayed, never performed; mechanisms that cannot cross a TLS-terminating hop
//!   (`-PLUS`, channel-binding advertisements), compression and STARTTLS are removed from the
//!   backend's features; Stream Management is relayed with its counters rewritten;
//! - every stanza from the client carries its bound JID as `from` (RFC 6120 §8.1.2.1);
//! - everything written is re-serialized from the parsed tree (invariant 1, never forward bytes
//!   the parser did not accept);
//! - any error closes both legs with the right stream error (invariant 5, fail closed).

mod backend;
mod checks;
mod client;
pub(crate) use client::header_problem;
mod drain;
mod features;
mod filter;
mod hold;
mod sasl;
mod sm_relay;
#[cfg(test)]
mod tests;
mod transfer_hook;

use std::collections::VecDeque;
use std::time::Instant;

use crate::jid::FullJid;
use crate::stream::{Condition, StreamError, NS_CLIENT, STREAM_CLOSE};
use crate::xml::{Element, StreamReader, XmlLimits};

pub use backend::skipped_reason;
pub use checks::{check_backend_stanza, check_client_stanza, decide, Check, Decision};
pub use drain::DRAIN_ACK_TIMEOUT;
pub use features::{filter_features, is_channel_binding_mechanism};
pub(crate) use filter::held;
pub use filter::policy_effects;
pub use hold::ROSTER_HOLD;

use super::sm::{self, StreamManagement};
use super::{BackendFailure, CloseReason, Counters, Effect, PolicyBinding, StanzaSummary, StreamMachine, Timeouts};

/// STARTTLS namespace (RFC 6120 §5).
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// SASL namespace (RFC 6120 §6).
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// Resource binding namespace (RFC 6120 §7).
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// Client State Indication (XEP-0352).
pub const NS_CSI: &str = "urn:xmpp:csi:0";
pub use crate::stanza::NS_CARBONS;
/// Roster management (RFC 6121 §2).
pub const NS_ROSTER: &str = "jabber:iq:roster";
/// Non-SASL authentication (XEP-0078, obsolete).
pub const NS_LEGACY_AUTH: &str = "jabber:iq:auth";

pub use crate::config::BackendTls;

/// Per-session settings, taken from the listener config.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The client connected with direct TLS (XEP-0368): no STARTTLS step.
    pub direct_tls: bool,
    /// Limits before SASL success.
    pub preauth_limits: XmlLimits,
    /// Limits after SASL success.
    pub limits: XmlLimits,
    /// Limits on what the backend sends.
    pub backend_limits: XmlLimits,
    /// Backend leg security.
    pub backend_tls: BackendTls,
    /// The stream id the gateway announces to the client (random, chosen by the daemon).
    pub stream_id: String,
    /// Protocol timers.
    pub timeouts: Timeouts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientPhase {
    /// Waiting for the client's stream header.
    Header,
    /// Plaintext stream open, only `<starttls/>` accepted.
    AwaitStartTls,
    /// `<proceed/>` sent; waiting for the TLS handshake.
    TlsHandshake,
    /// Secure stream open; stanzas are relayed.
    Open,
    /// The client sent `</stream:stream>`: its input is over, but what the backend still sends
    /// is relayed until the backend closes too (RFC 6120 §4.4) or the daemon times out.
    Closing,
    /// Closed; nothing more is read or written.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackendPhase {
    NotStarted,
    Connecting,
    AwaitHeader,
    AwaitFeatures,
    AwaitProceed,
    TlsHandshake,
    Open,
}

/// One client-to-server session (see the module docs).
#[derive(Debug)]
pub struct C2sSession {
    cfg: SessionConfig,
    client: StreamReader,
    backend: StreamReader,
    client_phase: ClientPhase,
    backend_phase: BackendPhase,
    client_tls: bool,
    backend_tls_done: bool,
    /// Our header has been written on the current client stream.
    client_header_sent: bool,
    /// Backend features received before the client's restarted header.
    pending_features: Option<Element>,
    domain: Option<String>,
    lang: Option<String>,
    authenticated: bool,
    bind_id: Option<String>,
    bound: Option<FullJid>,
    to_client: Vec<u8>,
    to_backend: Vec<u8>,
    effects: VecDeque<Effect>,
    counters: Counters,
    /// Policy evaluation: every session has one (an empty policy is a policy).
    filter: PolicyBinding,
    /// The time of the latest input (rate limits, timers).
    now: Instant,
    /// SASL must succeed by then.
    handshake_deadline: Instant,
    /// The latest traffic either way.
    last_activity: Instant,
    /// The client closed its stream at this time (waiting for the backend's close).
    closing_since: Option<Instant>,
    /// XEP-0198 counters of both directions.
    sm: StreamManagement,
    /// The client's `<enable/>` was forwarded and not answered yet.
    sm_enable_pending: bool,
    /// `[file_transfer]`: the gateway's proxy JID and forced mediation.
    transfer: Option<transfer_hook::FileTransferHook>,
    /// A stanza from each leg waiting for a roster ([`hold`]).
    held: [Option<hold::Held>; 2],
    /// The gateway is leaving its pool: the session ends once both sides are settled.
    drain: Option<drain::Drain>,
}

/// Most runs of withheld or injected stanzas kept between two acknowledgements per direction.
const SM_MAX_GAPS: usize = sm::DEFAULT_MAX_GAPS;

impl C2sSession {
    /// A session for a connection accepted at `now`, evaluating its stanzas against `policy`.
    pub fn new(cfg: SessionConfig, policy: PolicyBinding, now: Instant) -> Self {
        let client = StreamReader::new(cfg.preauth_limits);
        let mut backend = StreamReader::new(cfg.backend_limits);
        backend.skip_over_limits(true);
        let client_tls = cfg.direct_tls;
        let handshake_deadline = now + cfg.timeouts.handshake;
        C2sSession {
            cfg,
            client,
            backend,
            client_phase: ClientPhase::Header,
            backend_phase: BackendPhase::NotStarted,
            client_tls,
            backend_tls_done: false,
            client_header_sent: false,
            pending_features: None,
            domain: None,
            lang: None,
            authenticated: false,
            bind_id: None,
            bound: None,
            to_client: Vec::new(),
            to_backend: Vec::new(),
            effects: VecDeque::new(),
            counters: Counters::default(),
            handshake_deadline,
            filter: policy,
            now,
            last_activity: now,
            closing_since: None,
            sm: StreamManagement::new(SM_MAX_GAPS),
            sm_enable_pending: false,
            transfer: None,
            held: [None, None],
            drain: None,
        }
    }

    /// Input arrived at `now`: traffic either way keeps an authenticated session alive (the
    /// handshake deadline never moves).
    fn tick(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.last_activity = self.last_activity.max(now);
    }

    fn client_error(&mut self, condition: Condition, text: &str) {
        self.close_with(StreamError::new(condition, Some(text.to_owned())));
    }

    fn close_with(&mut self, err: StreamError) {
        self.client_error_no_finish(err.clone());
        self.close_backend_stream();
        self.finish(CloseReason::ClientError(err));
    }

    /// Write a stream error and the closing tag to the client (our header first if needed).
    fn client_error_no_finish(&mut self, err: StreamError) {
        if self.client_phase == ClientPhase::TlsHandshake {
            // Mid-handshake there is no stream to write to.
            return;
        }
        if !self.client_header_sent {
            self.write_client_header(self.domain.clone());
        }
        err.to_element().write_to(&mut self.to_client, NS_CLIENT);
        self.to_client.extend_from_slice(STREAM_CLOSE);
    }

    /// The backend broke the protocol: `<internal-server-error/>` to the client, close both.
    fn fail_backend(&mut self, why: String) {
        self.backend_failure(BackendFailure::Protocol(why));
    }

    pub(super) fn backend_failure(&mut self, failure: BackendFailure) {
        self.client_error_no_finish(StreamError::new(Condition::InternalServerError, None));
        self.close_backend_stream();
        self.finish(CloseReason::BackendFailed(failure));
    }

    fn close_backend_stream(&mut self) {
        // Only a leg on which we have written a header (and that is not mid-handshake).
        if matches!(
            self.backend_phase,
            BackendPhase::AwaitHeader | BackendPhase::AwaitFeatures | BackendPhase::AwaitProceed | BackendPhase::Open
        ) {
            self.to_backend.extend_from_slice(STREAM_CLOSE);
        }
    }

    fn finish(&mut self, reason: CloseReason) {
        self.client_phase = ClientPhase::Closed;
        self.effects.push_back(Effect::Close(reason));
    }
}

impl StreamMachine for C2sSession {
    /// Bytes received from the client at `now`.
    fn client_bytes(&mut self, data: &[u8], now: Instant) {
        self.tick(now);
        if self.is_closed() || matches!(self.client_phase, ClientPhase::TlsHandshake | ClientPhase::Closing) {
            // After `<proceed/>` the daemon hands bytes to TLS; nothing reaches the parser.
            // After the client's `</stream:stream>` nothing more may come from it.
            return;
        }
        if self.drain_stops_client_input() {
            // Draining: the server has been asked what it handled; what the client sends now
            // is not accepted (it stays unacknowledged and is sent again after reconnecting).
            return;
        }
        self.client.feed(data);
        self.drain_client();
    }

    /// Bytes received from the backend at `now`.
    fn backend_bytes(&mut self, data: &[u8], now: Instant) {
        self.tick(now);
        if self.is_closed() || self.backend_phase == BackendPhase::TlsHandshake {
            return;
        }
        self.backend.feed(data);
        self.drain_backend();
    }

    /// Bytes to write to the client; the caller writes all of them before reading more.
    fn take_to_client(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.to_client)
    }

    /// Bytes to write to the backend.
    fn take_to_backend(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.to_backend)
    }

    /// Next effect for the daemon.
    fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When [`crate::session::StreamMachine::handle_timeout`] is next due: the handshake deadline before SASL
    /// success, the idle deadline after it, the close-handshake deadline once the client closed
    /// its stream; `None` once closed.
    /// A held stanza's deadline ([`hold`]) comes first when it is earlier.
    fn poll_timeout(&self) -> Option<Instant> {
        let protocol = self.protocol_deadline()?;
        let due = self.hold_deadline().map_or(protocol, |h| h.min(protocol));
        Some(self.drain_deadline().map_or(due, |d| d.min(due)))
    }

    /// The time is `now`: decide held stanzas that are ready, and act on a protocol deadline
    /// that passed (nothing before it is due).
    fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.release_held(now);
        // A drain's deadline comes before the protocol's (idle, handshake, close).
        if self.drain_timed_out(now) {
            return;
        }
        if self.protocol_deadline().is_none_or(|due| now < due) {
            return;
        }
        if self.client_phase == ClientPhase::Closing {
            // The backend never answered the client's close: end it from our side.
            self.to_client.extend_from_slice(STREAM_CLOSE);
            return self.finish(CloseReason::ClientClosed);
        }
        let err = StreamError::new(Condition::ConnectionTimeout, None);
        self.client_error_no_finish(err.clone());
        self.close_backend_stream();
        self.finish(CloseReason::ClientError(err));
    }

    /// Bytes the client sent after `<starttls/>`: the start of its TLS handshake.
    fn take_client_buffered(&mut self) -> Vec<u8> {
        self.client.take_buffered()
    }

    /// Bytes the backend sent after `<proceed/>`.
    fn take_backend_buffered(&mut self) -> Vec<u8> {
        self.backend.take_buffered()
    }

    /// The client's TLS handshake completed: expect a new stream header inside TLS.
    fn client_tls_established(&mut self) {
        if self.client_phase != ClientPhase::TlsHandshake {
            return;
        }
        self.client_tls = true;
        self.client.restart();
        self.client_phase = ClientPhase::Header;
        self.client_header_sent = false;
    }

    /// The backend socket is connected (and, for direct TLS, the handshake is done).
    fn backend_connected(&mut self) {
        if self.is_closed() || self.backend_phase != BackendPhase::Connecting {
            return;
        }
        if self.cfg.backend_tls == BackendTls::Direct {
            self.backend_tls_done = true;
        }
        self.open_backend_stream();
    }

    /// The backend leg's STARTTLS handshake completed.
    fn backend_tls_established(&mut self) {
        if self.is_closed() || self.backend_phase != BackendPhase::TlsHandshake {
            return;
        }
        self.backend_tls_done = true;
        self.backend.restart();
        self.open_backend_stream();
    }

    /// The backend could not be reached or its connection broke.
    fn backend_failed(&mut self, why: &str) {
        if self.is_closed() {
            return;
        }
        self.backend_failure(BackendFailure::Io(why.to_owned()));
    }

    /// The client's connection broke (no stream close): close the backend stream.
    fn client_disconnected(&mut self) {
        if self.is_closed() {
            return;
        }
        self.close_backend_stream();
        self.finish(CloseReason::ClientClosed);
    }

    /// The client stopped reading (a write to it timed out): close the backend stream; nothing
    /// more is written to the client, which would not read it.
    fn client_not_reading(&mut self) {
        if self.is_closed() {
            return;
        }
        self.to_client.clear();
        self.close_backend_stream();
        self.finish(CloseReason::ClientNotReading);
    }

    /// The gateway is shutting down: `<system-shutdown/>` to the client, close the backend.
    fn shutdown(&mut self) {
        if self.is_closed() {
            return;
        }
        self.client_error_no_finish(StreamError::new(Condition::SystemShutdown, None));
        self.close_backend_stream();
        self.finish(CloseReason::Shutdown);
    }

    /// The gateway leaves its pool: settle Stream Management, then end (see [`drain`]).
    fn drain(&mut self, error: StreamError, now: Instant) {
        self.start_drain(error, now);
    }

    /// Close the client's stream with a stream error decided outside the session (a ban).
    fn refuse(&mut self, condition: Condition, text: &str) {
        if self.is_closed() {
            return;
        }
        self.client_error(condition, text);
    }

    /// A stanza released from the quarantine: c2s-in toward the server (its `from` stamped with
    /// this session's JID, as every client stanza is, RFC 6120 §8.1.2.1: the session it was
    /// held in may have ended and this be another of the account's), c2s-out toward the client.
    fn deliver_released(
        &mut self,
        chain: crate::policy::Chain,
        mut stanza: Element,
    ) -> Result<(), super::DeliverRefused> {
        use crate::policy::Chain;
        if self.client_phase != ClientPhase::Open || self.backend_phase != BackendPhase::Open {
            return Err(if self.is_closed() || self.client_phase == ClientPhase::Closing {
                super::DeliverRefused::Closed
            } else {
                super::DeliverRefused::NotEstablished
            });
        }
        let Some(bound) = self.bound.clone() else { return Err(super::DeliverRefused::NotEstablished) };
        let r = match chain {
            Chain::C2sIn => {
                stanza.set_attr("from", bound.to_string());
                stanza.write_to(&mut self.to_backend, NS_CLIENT);
                self.sm.to_server.injected()
            }
            Chain::C2sOut => {
                stanza.write_to(&mut self.to_client, NS_CLIENT);
                self.sm.to_client.injected()
            }
            Chain::S2sIn | Chain::S2sOut => return Err(super::DeliverRefused::WrongStream),
        };
        self.sm_result(r);
        Ok(())
    }

    /// Traffic counters.
    fn counters(&self) -> Counters {
        self.counters
    }

    /// True once the session has closed; the daemon stops reading.
    fn is_closed(&self) -> bool {
        self.client_phase == ClientPhase::Closed
    }

    /// The bound full JID, once known.
    fn bound_jid(&self) -> Option<&FullJid> {
        self.bound.as_ref()
    }

    /// The domain the client addressed.
    fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    fn notify_client(&mut self, stanza: &Element) {
        self.transfer_notify(stanza);
    }

    fn transfer_scanned(&mut self, id: u64, verdict: crate::transfer::ScanVerdict) {
        self.transfer_ibb_scanned(id, verdict);
    }

    fn set_policy(&mut self, policy: std::sync::Arc<crate::policy::Policy>) {
        self.filter.policy = policy;
    }

    fn paused(&self) -> (bool, bool) {
        (self.held_from_client(), self.held_from_backend())
    }

    fn wake(&mut self, now: Instant) {
        self.tick(now);
        self.release_held(now);
    }
}

impl C2sSession {
    /// The handshake deadline before SASL success, the idle deadline after it, the
    /// close-handshake deadline once the client closed its stream; `None` once closed.
    fn protocol_deadline(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        Some(match self.closing_since {
            Some(since) => since + self.cfg.timeouts.close,
            None if !self.authenticated => self.handshake_deadline,
            None => self.last_activity + self.cfg.timeouts.idle,
        })
    }
}
