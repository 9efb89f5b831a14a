//! Ending a c2s session because the gateway leaves its pool (drain), without losing a stanza.
//!
//! Without Stream Management nothing can be settled: the session gets its stream error at once
//! and everything already read from the client is forwarded before the backend's stream is
//! closed (the daemon flushes both legs before it closes them). With Stream Management
//! (XEP-0198, relayed and translated by [`super::sm_relay`]) both ends can learn exactly what
//! the other handled, so the stream error waits for two acknowledgements:
//!
//! 1. **the client's**: the gateway asks `<r/>` and from then on delivers nothing more from the
//!    server (the server keeps those stanzas unacknowledged and deals with them when the
//!    session ends: Prosody's `mod_smacks` puts messages into offline storage, XEP-0198 §4);
//!    the client's `<a/>` covering all it was sent goes to the server;
//! 2. **the server's**: the gateway stops reading the client (what it sends from now on is
//!    not accepted, and stays unacknowledged for the client to send again) and asks the server
//!    `<r/>`; the server's `<a/>` covering everything forwarded goes to the client.
//!
//! Then `<see-other-host/>` (RFC 6120 §4.9.3.19) or `<system-shutdown/>` (§4.9.3.20) ends the
//! client's stream and `</stream:stream>` the server's. Each side has then been told what the
//! other handled: a client that sends again what is unacknowledged after reconnecting loses
//! nothing and duplicates nothing. Bounded: past [`DRAIN_ACK_TIMEOUT`] the session ends anyway.

use std::time::{Duration, Instant};

use super::sm::NS_SM;
use super::{C2sSession, ClientPhase, CloseReason};
use crate::session::StreamMachine;
use crate::stream::{StreamError, NS_CLIENT};
use crate::xml::Element;

/// Longest a draining session waits for the acknowledgements before it ends anyway.
pub const DRAIN_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// A drain in progress.
#[derive(Debug, Clone)]
pub(super) struct Drain {
    error: StreamError,
    phase: DrainPhase,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DrainPhase {
    /// `<r/>` sent to the client; nothing more is delivered to it.
    ClientAck,
    /// `<r/>` sent to the server; nothing more is read from the client.
    ServerAck,
}

impl C2sSession {
    /// Start ending the session with `error` (see the module docs).
    pub(super) fn start_drain(&mut self, error: StreamError, now: Instant) {
        if self.is_closed_or_draining() {
            return;
        }
        self.now = self.now.max(now);
        let deadline = now + DRAIN_ACK_TIMEOUT;
        self.drain = Some(Drain { error, phase: DrainPhase::ClientAck, deadline });
        if self.client_phase != ClientPhase::Open || self.bound.is_none() {
            // Before binding nothing is counted: nothing to settle.
            return self.end_drain();
        }
        if self.sm.to_client.is_enabled() && !self.sm.to_client.all_acknowledged() {
            Element::new(NS_SM, "r").write_to(&mut self.to_client, NS_CLIENT);
        } else {
            self.await_server_ack();
        }
    }

    fn is_closed_or_draining(&self) -> bool {
        self.client_phase == ClientPhase::Closed || self.drain.is_some()
    }

    /// Stop reading the client and ask the server what it handled.
    fn await_server_ack(&mut self) {
        let Some(d) = self.drain.as_mut() else { return };
        d.phase = DrainPhase::ServerAck;
        if self.sm.to_server.is_enabled() && !self.sm.to_server.all_acknowledged() {
            Element::new(NS_SM, "r").write_to(&mut self.to_backend, NS_CLIENT);
        } else {
            self.end_drain();
        }
    }

    /// The stream error to the client, `</stream:stream>` to the server.
    fn end_drain(&mut self) {
        let Some(d) = self.drain.as_ref() else { return };
        if self.client_phase == ClientPhase::Closed {
            return;
        }
        let error = d.error.clone();
        self.client_error_no_finish(error);
        self.close_backend_stream();
        self.finish(CloseReason::Shutdown);
    }

    /// While draining, client input after the client's acknowledgement is not accepted.
    pub(super) fn drain_stops_client_input(&self) -> bool {
        self.drain.as_ref().is_some_and(|d| d.phase == DrainPhase::ServerAck)
    }

    /// While draining with Stream Management toward the client, the server's stanzas are not
    /// delivered: it keeps them as unacknowledged (see the module docs).
    pub(super) fn drain_withholds_server_stanzas(&self) -> bool {
        self.drain.is_some() && self.sm.to_client.is_enabled()
    }

    /// The client acknowledged (its `<a/>` was forwarded): on to the server when it covers all.
    pub(super) fn drain_client_acked(&mut self) {
        if self.drain.as_ref().is_some_and(|d| d.phase == DrainPhase::ClientAck) && self.sm.to_client.all_acknowledged()
        {
            self.await_server_ack();
        }
    }

    /// The server acknowledged (its `<a/>` was forwarded): end when it covers all.
    pub(super) fn drain_server_acked(&mut self) {
        if self.drain.as_ref().is_some_and(|d| d.phase == DrainPhase::ServerAck) && self.sm.to_server.all_acknowledged()
        {
            self.end_drain();
        }
    }

    /// The drain's deadline, if one runs.
    pub(super) fn drain_deadline(&self) -> Option<Instant> {
        self.drain.as_ref().map(|d| d.deadline)
    }

    /// At the deadline: end without the missing acknowledgement.
    pub(super) fn drain_timed_out(&mut self, now: Instant) -> bool {
        if self.drain_deadline().is_some_and(|d| now >= d) && !self.is_closed() {
            self.end_drain();
            return true;
        }
        false
    }
}
