//! The stream engine: what every stream kind's state machine shares, and the kinds.
//!
//! Every door of the gateway is a sans-IO state machine here (rustls' `ConnectionCommon` and
//! quinn-proto's `Connection` style) behind one interface, [`StreamMachine`]: the daemon feeds
//! bytes from either leg with the time they arrived, reports I/O milestones (TLS done, backend
//! connected), writes what the machine queued for each leg, carries out its [`Effect`]s and asks
//! [`StreamMachine::poll_timeout`] when to call [`StreamMachine::handle_timeout`]. The machine
//! owns every protocol timer and decision; it never touches sockets or clocks. Effects are
//! reported the same way for every kind (`PolicyEvent`, `CloseReason` with its side).
//!
//! Kinds: [`c2s`] (client-to-server, STARTTLS or direct TLS), [`web`] (XMPP over WebSocket,
//! a c2s machine behind RFC 7395 framing) and [`s2s`] (federation: inbound, outbound, and the
//! dialback verify stream). A new kind (the SOCKS5 relay) is a module beside
//! them implementing [`StreamMachine`].

pub mod c2s;
mod effect;
pub mod s2s;
pub mod sm;
pub mod web;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::jid::FullJid;
use crate::policy::{Chain, Policy};
use crate::stream::Condition;

pub use c2s::{
    check_backend_stanza, check_client_stanza, decide, filter_features, is_channel_binding_mechanism, policy_effects,
    skipped_reason, BackendTls, C2sSession, Check, Decision, SessionConfig, NS_BIND, NS_CARBONS, NS_CSI,
    NS_LEGACY_AUTH, NS_ROSTER, NS_SASL, NS_TLS,
};
pub use effect::{BackendFailure, CloseReason, Effect, Held, PolicyBinding, PolicyEvent, S2sAuth, StanzaSummary};

/// The c2s state machine under its historical name.
pub type Session = C2sSession;

/// The session's protocol timers (the core owns time: the daemon asks [`crate::session::StreamMachine::poll_timeout`]
/// when to call [`crate::session::StreamMachine::handle_timeout`]).
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

/// Traffic counters of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Top-level elements received from the client and forwarded.
    pub stanzas_from_client: u64,
    /// Top-level elements received from the backend and forwarded.
    pub stanzas_from_backend: u64,
}

/// What the daemon's connection loop needs from any stream kind.
pub trait StreamMachine {
    /// Bytes received from the client leg at `now`.
    fn client_bytes(&mut self, data: &[u8], now: Instant);
    /// Bytes received from the backend leg at `now`.
    fn backend_bytes(&mut self, data: &[u8], now: Instant);
    /// Bytes to write to the client; written in full before more is read.
    fn take_to_client(&mut self) -> Vec<u8>;
    /// Bytes to write to the backend (only once it is connected).
    fn take_to_backend(&mut self) -> Vec<u8>;
    /// Next effect for the daemon.
    fn poll_effect(&mut self) -> Option<Effect>;
    /// When [`StreamMachine::handle_timeout`] is next due; `None` once closed.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The time is `now`: act on deadlines that passed.
    fn handle_timeout(&mut self, now: Instant);
    /// Bytes received after a STARTTLS `<proceed/>` on the client leg: the start of its TLS.
    fn take_client_buffered(&mut self) -> Vec<u8>;
    /// The same on the backend leg.
    fn take_backend_buffered(&mut self) -> Vec<u8>;
    /// The client leg's TLS handshake completed.
    fn client_tls_established(&mut self);
    /// The backend socket is connected.
    fn backend_connected(&mut self);
    /// The backend leg's TLS handshake completed.
    fn backend_tls_established(&mut self);
    /// The backend could not be reached or its connection broke.
    fn backend_failed(&mut self, why: &str);
    /// The client's connection broke below the stream.
    fn client_disconnected(&mut self);
    /// A write to the client made no progress for the write timeout.
    fn client_not_reading(&mut self);
    /// The gateway is shutting down.
    fn shutdown(&mut self);
    /// Close with a stream error decided outside the machine (a ban).
    fn refuse(&mut self, condition: Condition, text: &str);
    /// The gateway leaves its pool (drain, README "Running several gateways"): end the session
    /// with `error` (`<see-other-host/>` or `<system-shutdown/>`) once nothing it accepted can
    /// be lost. Kinds without Stream Management close at once, as at shutdown.
    fn drain(&mut self, error: crate::stream::StreamError, now: Instant) {
        let _ = (error, now);
        self.shutdown();
    }
    /// A new policy (reload): the next stanza is evaluated against it.
    fn set_policy(&mut self, policy: Arc<Policy>);
    /// Traffic counters.
    fn counters(&self) -> Counters;
    /// True once closed.
    fn is_closed(&self) -> bool;
    /// The authenticated address of the peer, once known (audit `user`).
    fn bound_jid(&self) -> Option<&FullJid>;
    /// The domain the peer addressed.
    fn domain(&self) -> Option<&str>;
    /// Legs not to read from now (client, backend): a stanza from that leg waits for a roster
    /// (`c2s::ROSTER_HOLD`), and what follows it waits in the socket.
    fn paused(&self) -> (bool, bool) {
        (false, false)
    }
    /// Something a held stanza waits for may have happened (a roster arrived): look again.
    fn wake(&mut self, _now: Instant) {}
    /// The chains this kind's two directions are counted in (client leg → backend first).
    fn chains(&self) -> (Chain, Chain) {
        (Chain::C2sIn, Chain::C2sOut)
    }
    /// s2s outbound: our domain the stream authenticates (its certificate is presented).
    fn local_domain(&self) -> Option<&str> {
        None
    }
    /// c2s: a stanza from the gateway itself to the client (a transfer refused on the relay,
    /// told to its sender); dropped when the session has no bound client.
    fn notify_client(&mut self, _stanza: &crate::xml::Element) {}
    /// c2s: the antivirus's verdict on in-band stream `id` (after
    /// [`crate::transfer::ibb::IbbEvent::AwaitVerdict`]).
    fn transfer_scanned(&mut self, _id: u64, _verdict: crate::transfer::ScanVerdict) {}
    /// s2s: the answer to [`Effect::CheckPeerCertificate`].
    fn peer_certificate(&mut self, _domain: &str, _cert: s2s::PeerCert) {}
    /// s2s: the answer to [`Effect::VerifyDialback`]: valid, invalid, or why it could not be
    /// asked (which counts as invalid).
    fn dialback_result(&mut self, _remote: &str, _local: &str, _result: Result<bool, String>) {}
    /// Deliver a stanza released from the quarantine, held earlier in `chain` on this kind of
    /// stream: toward the server for the front leg's chain (c2s-in, s2s-in, s2s-out), toward
    /// the client for c2s-out. It is written as it was held (an operator released it: it is not
    /// evaluated again) and counted as injected for XEP-0198. `Err` says why this session
    /// cannot take it (closed, not bound yet, another chain); nothing was written then.
    fn deliver_released(&mut self, chain: Chain, stanza: crate::xml::Element) -> Result<(), DeliverRefused> {
        let _ = (chain, stanza);
        Err(DeliverRefused::WrongStream)
    }
    /// s2s outbound: what the remote's certificate proved and how DNS led to it; called
    /// before [`StreamMachine::backend_tls_established`] (or before `backend_connected` for
    /// direct TLS).
    fn remote_certificate(&mut self, _cert: s2s::PeerCert, _dnssec: s2s::Dnssec) {}
}

/// Why a session could not take a released stanza ([`StreamMachine::deliver_released`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeliverRefused {
    /// The session has closed or is closing.
    #[error("the session has ended")]
    Closed,
    /// The session has not bound a JID (c2s) or authenticated its domain pair (s2s) yet.
    #[error("the session is not established")]
    NotEstablished,
    /// The stanza was held in a chain this session does not carry.
    #[error("the session does not carry that chain")]
    WrongStream,
}
