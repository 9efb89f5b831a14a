//! The c2s session state machine: one client stream in front, one backend stream behind.
//!
//! Sans-IO (rustls' `ConnectionCommon` style): the daemon feeds bytes from either leg and reports
//! I/O milestones (TLS done, backend connected); the session answers with bytes to write on each
//! leg and [`Effect`]s for the daemon to carry out. It never touches sockets or clocks.
//!
//! What it enforces (DESIGN.md "Data flow of one c2s connection"):
//! - the gateway answers the client's header itself and offers only `<starttls><required/>`;
//!   after `<starttls/>` no byte reaches the XML parser until TLS is up;
//! - SASL is relayed, never performed; mechanisms that cannot cross a TLS-terminating hop
//!   (`-PLUS`, channel-binding advertisements), compression, STARTTLS and Stream Management are
//!   removed from the backend's features;
//! - every stanza from the client carries its bound JID as `from` (RFC 6120 §8.1.2.1);
//! - everything written is re-serialized from the parsed tree (invariant 1);
//! - any error closes both legs with the right stream error (invariant 5).

mod backend;
mod checks;
mod client;
mod effect;
mod features;
mod filter;
mod sasl;
pub mod sm;
mod sm_relay;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::jid::FullJid;
use crate::stream::{Condition, StreamError, NS_CLIENT, STREAM_CLOSE};
use crate::xml::{Element, StreamReader, XmlLimits};

pub use checks::{check_backend_stanza, check_client_stanza, decide, Check, Decision};
pub use effect::{CloseReason, Effect};
pub use features::{filter_features, is_channel_binding_mechanism};
pub use filter::{PolicyBinding, PolicyEvent, StanzaSummary};
use sm::StreamManagement;

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

/// The session's protocol timers (the core owns time: the daemon asks [`Session::poll_timeout`]
/// when to call [`Session::handle_timeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From accept to SASL success: TLS, stream open and authentication must be done by then
    /// (slowloris is cut here: traffic never extends it).
    pub handshake: Duration,
    /// After SASL success: no traffic either way for this long ends the session (whitespace
    /// keepalives count as traffic).
    pub idle: Duration,
    /// After the client's `</stream:stream>`: how long the backend has to answer with its own
    /// while what it still sends is relayed (RFC 6120 §4.4).
    pub close: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: Duration::from_secs(30),
            idle: Duration::from_secs(20 * 60),
            close: Duration::from_secs(3),
        }
    }
}

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

/// Traffic counters of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Top-level elements received from the client and forwarded.
    pub stanzas_from_client: u64,
    /// Top-level elements received from the backend and forwarded.
    pub stanzas_from_backend: u64,
}

/// One client-to-server session (see the module docs).
#[derive(Debug)]
pub struct Session {
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
}

/// Most runs of withheld or injected stanzas kept between two acknowledgements per direction.
const SM_MAX_GAPS: usize = sm::DEFAULT_MAX_GAPS;

impl Session {
    /// A session for a connection accepted at `now`, evaluating its stanzas against `policy`.
    pub fn new(cfg: SessionConfig, policy: PolicyBinding, now: Instant) -> Self {
        let client = StreamReader::new(cfg.preauth_limits);
        let mut backend = StreamReader::new(cfg.backend_limits);
        backend.skip_over_limits(true);
        let client_tls = cfg.direct_tls;
        let handshake_deadline = now + cfg.timeouts.handshake;
        Session {
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
        }
    }

    /// Bytes to write to the client; the caller writes all of them before reading more.
    pub fn take_to_client(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.to_client)
    }

    /// Bytes to write to the backend.
    pub fn take_to_backend(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.to_backend)
    }

    /// Next effect for the daemon.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// Bytes the client sent after `<starttls/>`: the start of its TLS handshake.
    pub fn take_client_buffered(&mut self) -> Vec<u8> {
        self.client.take_buffered()
    }

    /// Bytes the backend sent after `<proceed/>`.
    pub fn take_backend_buffered(&mut self) -> Vec<u8> {
        self.backend.take_buffered()
    }

    /// The bound full JID, once known.
    pub fn bound_jid(&self) -> Option<&FullJid> {
        self.bound.as_ref()
    }

    /// The domain the client addressed.
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    /// Traffic counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// True once the session has closed; the daemon stops reading.
    pub fn is_closed(&self) -> bool {
        self.client_phase == ClientPhase::Closed
    }

    /// Bytes received from the client at `now`.
    pub fn client_bytes(&mut self, data: &[u8], now: Instant) {
        self.tick(now);
        if self.is_closed() || matches!(self.client_phase, ClientPhase::TlsHandshake | ClientPhase::Closing) {
            // After `<proceed/>` the daemon hands bytes to TLS; nothing reaches the parser.
            // After the client's `</stream:stream>` nothing more may come from it.
            return;
        }
        self.client.feed(data);
        self.drain_client();
    }

    /// Bytes received from the backend at `now`.
    pub fn backend_bytes(&mut self, data: &[u8], now: Instant) {
        self.tick(now);
        if self.is_closed() || self.backend_phase == BackendPhase::TlsHandshake {
            return;
        }
        self.backend.feed(data);
        self.drain_backend();
    }

    /// The client's TLS handshake completed: expect a new stream header inside TLS.
    pub fn client_tls_established(&mut self) {
        if self.client_phase != ClientPhase::TlsHandshake {
            return;
        }
        self.client_tls = true;
        self.client.restart();
        self.client_phase = ClientPhase::Header;
        self.client_header_sent = false;
    }

    /// The backend socket is connected (and, for direct TLS, the handshake is done).
    pub fn backend_connected(&mut self) {
        if self.is_closed() || self.backend_phase != BackendPhase::Connecting {
            return;
        }
        if self.cfg.backend_tls == BackendTls::Direct {
            self.backend_tls_done = true;
        }
        self.open_backend_stream();
    }

    /// The backend leg's STARTTLS handshake completed.
    pub fn backend_tls_established(&mut self) {
        if self.is_closed() || self.backend_phase != BackendPhase::TlsHandshake {
            return;
        }
        self.backend_tls_done = true;
        self.backend.restart();
        self.open_backend_stream();
    }

    /// The backend could not be reached or its connection broke.
    pub fn backend_failed(&mut self, why: &str) {
        if self.is_closed() {
            return;
        }
        self.fail_backend(why.to_owned());
    }

    /// The client's connection broke (no stream close): close the backend stream.
    pub fn client_disconnected(&mut self) {
        if self.is_closed() {
            return;
        }
        self.close_backend_stream();
        self.finish(CloseReason::ClientClosed);
    }

    /// The client stopped reading (a write to it timed out): close the backend stream; nothing
    /// more is written to the client, which would not read it.
    pub fn client_not_reading(&mut self) {
        if self.is_closed() {
            return;
        }
        self.to_client.clear();
        self.close_backend_stream();
        self.finish(CloseReason::ClientNotReading);
    }

    /// The gateway is shutting down: `<system-shutdown/>` to the client, close the backend.
    pub fn shutdown(&mut self) {
        if self.is_closed() {
            return;
        }
        self.client_error_no_finish(StreamError::new(Condition::SystemShutdown, None));
        self.close_backend_stream();
        self.finish(CloseReason::Shutdown);
    }

    /// Close the client's stream with a stream error decided outside the session (a ban).
    pub fn refuse(&mut self, condition: Condition, text: &str) {
        if self.is_closed() {
            return;
        }
        self.client_error(condition, text);
    }

    /// When [`Session::handle_timeout`] is next due: the handshake deadline before SASL
    /// success, the idle deadline after it, the close-handshake deadline once the client closed
    /// its stream; `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        Some(match self.closing_since {
            Some(since) => since + self.cfg.timeouts.close,
            None if !self.authenticated => self.handshake_deadline,
            None => self.last_activity + self.cfg.timeouts.idle,
        })
    }

    /// The time is `now`: act on a deadline that passed (nothing before it is due).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.poll_timeout().is_none_or(|due| now < due) {
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

    fn fail_backend(&mut self, why: String) {
        self.client_error_no_finish(StreamError::new(Condition::InternalServerError, None));
        self.close_backend_stream();
        self.finish(CloseReason::BackendFailed(why));
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
