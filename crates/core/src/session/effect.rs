//! What a session tells the daemon: [`Effect`]s to carry out and report, and why it ended
//! ([`CloseReason`], with the side that caused it for logs and metric labels).

use super::PolicyEvent;
use super::StanzaSummary;
use crate::jid::FullJid;
use crate::stanza::StanzaCondition;
use crate::stream::StreamError;

/// Something the daemon must do after writing out the pending bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `<proceed/>` was queued: flush it, then run the TLS server handshake on the client socket,
    /// starting with [`Session::take_client_buffered`].
    StartClientTls {
        /// The `to` of the client's stream header, for certificate choice when there is no SNI.
        domain: String,
    },
    /// Connect to the backend; call [`Session::backend_connected`] when the socket is ready.
    ConnectBackend {
        /// The domain the client asked for.
        domain: String,
    },
    /// Flush, then run a TLS client handshake on the backend socket; then
    /// [`Session::backend_tls_established`].
    StartBackendTls,
    /// The client bound this full JID.
    Bound(FullJid),
    /// SASL succeeded: the daemon starts read shaping (`bandwidth_per_connection`) from here.
    Authenticated,
    /// SASL failed (the backend's `<failure/>`, or a foreign authzid refused here): the daemon
    /// counts it toward a ban of the source address.
    AuthFailed,
    /// A client stanza was refused and answered with a stanza error (nothing forwarded).
    Bounced {
        /// The stanza, for the audit log.
        stanza: StanzaSummary,
        /// The error condition sent back.
        condition: StanzaCondition,
        /// Why, for the audit line.
        reason: &'static str,
    },
    /// A stanza was dropped without an error reply (one that may not be answered, or one from
    /// the backend that the client must not see).
    Dropped {
        /// True for a stanza from the backend toward the client.
        from_backend: bool,
        /// The stanza, for the audit log (`None`: skipped before its root was readable).
        stanza: Option<StanzaSummary>,
        /// Why, for the audit line.
        reason: &'static str,
    },
    /// A policy decision to audit (rules matched, or a chain default that is not pass).
    Policy(PolicyEvent),
    /// Flush what is queued and close both legs.
    Close(CloseReason),
}

/// Why a session ended, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed its stream.
    ClientClosed,
    /// The backend closed its stream.
    BackendClosed,
    /// The gateway closed the client's stream with this error.
    ClientError(StreamError),
    /// The backend sent this stream error (relayed to the client).
    BackendError(StreamError),
    /// The backend misbehaved or failed; the client got internal-server-error.
    BackendFailed(String),
    /// The client's connection failed below XMPP (TLS handshake, I/O).
    ClientFailed(String),
    /// The client stopped reading: a write to it made no progress for the daemon's write
    /// timeout (a slow-reader attack, or a client that hung).
    ClientNotReading,
    /// The gateway is shutting down.
    Shutdown,
}

impl CloseReason {
    /// Which side caused the close (`client`, `backend`, `gateway`), for metric labels.
    pub fn side(&self) -> &'static str {
        match self {
            CloseReason::ClientClosed
            | CloseReason::ClientError(_)
            | CloseReason::ClientFailed(_)
            | CloseReason::ClientNotReading => "client",
            CloseReason::BackendClosed | CloseReason::BackendError(_) | CloseReason::BackendFailed(_) => "backend",
            CloseReason::Shutdown => "gateway",
        }
    }

    /// A stable name of the kind of close, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client-closed",
            CloseReason::BackendClosed => "backend-closed",
            CloseReason::ClientError(_) => "client-stream-error",
            CloseReason::BackendError(_) => "backend-stream-error",
            CloseReason::BackendFailed(_) => "backend-failed",
            CloseReason::ClientFailed(_) => "client-failed",
            CloseReason::ClientNotReading => "client-not-reading",
            CloseReason::Shutdown => "shutdown",
        }
    }

    /// Every (side, kind) pair, for metric series that exist from the start.
    pub const KINDS: [(&'static str, &'static str); 8] = [
        ("client", "client-closed"),
        ("backend", "backend-closed"),
        ("client", "client-stream-error"),
        ("backend", "backend-stream-error"),
        ("backend", "backend-failed"),
        ("client", "client-failed"),
        ("client", "client-not-reading"),
        ("gateway", "shutdown"),
    ];
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::ClientClosed => f.write_str("client closed stream"),
            CloseReason::BackendClosed => f.write_str("backend closed stream"),
            CloseReason::ClientError(e) => write!(f, "client stream error: {e}"),
            CloseReason::BackendError(e) => write!(f, "backend stream error: {e}"),
            CloseReason::BackendFailed(why) => write!(f, "backend failed: {why}"),
            CloseReason::ClientFailed(why) => write!(f, "client failed: {why}"),
            CloseReason::ClientNotReading => f.write_str("client stopped reading"),
            CloseReason::Shutdown => f.write_str("system shutdown"),
        }
    }
}
