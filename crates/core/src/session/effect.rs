//! What a session tells the daemon: [`Effect`]s to carry out and report, the policy decisions
//! it audits ([`PolicyEvent`]), and why it ended ([`CloseReason`], with the side that caused it
//! for logs and metric labels). Shared by every stream kind.

use std::net::IpAddr;
use std::sync::Arc;

use crate::jid::{BareJid, FullJid};
use crate::policy::{Chain, Disposition, Hit, Policy, RateStore, RuleAction, Wrapper};
use crate::stanza::{Kind, StanzaCondition};
use crate::stream::StreamError;
use crate::xml::Element;

/// Something the daemon must do after writing out the pending bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `<proceed/>` was queued: flush it, then run the TLS server handshake on the client socket,
    /// starting with [`super::StreamMachine::take_client_buffered`].
    StartClientTls {
        /// The `to` of the client's stream header, for certificate choice when there is no SNI.
        domain: String,
    },
    /// Connect to the backend; call [`crate::session::StreamMachine::backend_connected`] when the socket is ready.
    ConnectBackend {
        /// The domain the client asked for.
        domain: String,
    },
    /// Flush, then run a TLS client handshake on the backend socket; then
    /// [`crate::session::StreamMachine::backend_tls_established`].
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
    /// s2s: check the certificate the peer presented against `domain` (PKIX with the
    /// configured roots, DANE when published and secure); answer with
    /// [`crate::session::StreamMachine::peer_certificate`].
    CheckPeerCertificate {
        /// The domain the peer claims.
        domain: String,
    },
    /// s2s: ask `remote`'s authoritative server whether `key` is valid for the stream `id`
    /// from `remote` to `local` (XEP-0220 `db:verify`); answer with
    /// [`crate::session::StreamMachine::dialback_result`].
    VerifyDialback {
        /// The domain to verify.
        remote: String,
        /// Our domain it addressed.
        local: String,
        /// Our stream id.
        id: String,
        /// The key it sent.
        key: String,
    },
    /// s2s: a domain pair was authenticated (audit, metrics).
    S2sAuthenticated(S2sAuth),
    /// s2s: a remote domain was refused: policy, authentication or TLS (audit, metrics).
    S2sRefused {
        /// `in` (a remote server came to us) or `out` (our server went to it).
        direction: &'static str,
        /// The remote domain.
        remote: String,
        /// Why, for the audit line.
        reason: String,
    },
    /// Anti-spam: a wave detected, a spam report recorded (audit, metrics).
    AntiSpam(crate::antispam::Event),
    /// An in-band file transfer (XEP-0047): scan its bytes, answer the verdict, report its end.
    Ibb(crate::transfer::ibb::IbbEvent),
    /// A `quarantine` rule held a stanza: nothing was forwarded and the sender was not told.
    /// The daemon stores it durably (and audits it with the entry's id) before the session
    /// reads on; a stanza it cannot store is dropped and audited, never delivered.
    Quarantine(Box<Held>),
    /// Flush what is queued and close both legs.
    Close(CloseReason),
}

/// A stanza held by a `quarantine` rule, as the session hands it to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The chain it was held in (which way it was going: `c2s-in` toward the server, `c2s-out`
    /// toward the client, `s2s-*` across federation).
    pub chain: Chain,
    /// The rule that held it (`None`: the stanza wrapped in it was held by a rule, named in its
    /// own policy record).
    pub rule: Option<String>,
    /// The stanza as it would have been forwarded (after from-stamping on `c2s-in`).
    pub stanza: Element,
    /// Its addresses and kind, for the entry and the audit log.
    pub summary: StanzaSummary,
}

impl Held {
    /// The stanza in canonical form with its namespace declared (`jabber:client` or
    /// `jabber:server`): what the quarantine stores, parsed back on release.
    pub fn canonical(&self) -> String {
        self.stanza.to_string()
    }
}

/// An authenticated s2s domain pair, as the audit log and metrics report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S2sAuth {
    /// `in` (remote → our server) or `out` (our server → remote).
    pub direction: &'static str,
    /// The remote domain.
    pub remote: String,
    /// Our domain.
    pub local: String,
    /// How the pair was authenticated.
    pub method: crate::session::s2s::AuthMethod,
    /// What the peer's certificate proved.
    pub cert: crate::session::s2s::PeerCert,
    /// DNSSEC status of the resolution (outbound).
    pub dnssec: crate::session::s2s::Dnssec,
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
    BackendFailed(BackendFailure),
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
            CloseReason::BackendFailed(f) => f.kind(),
            CloseReason::ClientFailed(_) => "client-failed",
            CloseReason::ClientNotReading => "client-not-reading",
            CloseReason::Shutdown => "shutdown",
        }
    }

    /// Every (side, kind) pair, for metric series that exist from the start.
    pub const KINDS: [(&'static str, &'static str); 10] = [
        ("client", "client-closed"),
        ("backend", "backend-closed"),
        ("client", "client-stream-error"),
        ("backend", "backend-stream-error"),
        ("backend", "backend-io"),
        ("backend", "backend-protocol"),
        ("backend", "backend-config"),
        ("client", "client-failed"),
        ("client", "client-not-reading"),
        ("gateway", "shutdown"),
    ];
}

/// How the backend leg failed (the client got `<internal-server-error/>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendFailure {
    /// The connection could not be made, or broke below XMPP (I/O, TLS), as the daemon reported.
    #[error("{0}")]
    Io(String),
    /// The backend broke the XMPP protocol (framing, unexpected elements, impossible acks).
    #[error("{0}")]
    Protocol(String),
    /// The backend and the listener's `backend_tls` setting disagree.
    #[error("{0}")]
    Config(&'static str),
}

impl BackendFailure {
    /// The `reason` label of `stanzawall_sessions_closed_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendFailure::Io(_) => "backend-io",
            BackendFailure::Protocol(_) => "backend-protocol",
            BackendFailure::Config(_) => "backend-config",
        }
    }
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

/// What the session needs to evaluate policy.
#[derive(Debug, Clone)]
pub struct PolicyBinding {
    /// The current policy (replaced on reload with [`crate::session::StreamMachine::set_policy`]).
    pub policy: Arc<Policy>,
    /// Rate state shared by all sessions.
    pub rates: Arc<dyn RateStore>,
    /// The client connection's source address.
    pub source_ip: IpAddr,
}

/// What the audit log says about a stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StanzaSummary {
    /// The stanza kind.
    pub kind: Kind,
    /// `type`.
    pub ty: Option<String>,
    /// `id`.
    pub id: Option<String>,
    /// `from` (after stamping).
    pub from: Option<String>,
    /// `to`.
    pub to: Option<String>,
    /// The session's authenticated account when the stanza was seen (the audit's `user`), so
    /// that the record does not depend on asking the session later.
    pub user: Option<BareJid>,
}

impl StanzaSummary {
    /// The summary of `el`, if it is a stanza, seen in a session of `user`.
    pub fn of(el: &Element, user: Option<&FullJid>) -> Option<StanzaSummary> {
        let attr = |n: &str| el.attr(n).map(str::to_owned);
        Some(StanzaSummary {
            kind: Kind::of(el)?,
            ty: attr("type"),
            id: attr("id"),
            from: attr("from"),
            to: attr("to"),
            user: user.map(|u| u.to_bare()),
        })
    }
}

/// A policy decision to audit: every rule that matched one stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEvent {
    /// Which chain.
    pub chain: Chain,
    /// The matched rules (log and log_only first, then the terminal one); empty when the
    /// chain's default (not pass) decided.
    pub hits: Vec<Hit>,
    /// What was done: `pass`, `drop`, `bounce`, `close`, `rewrite`.
    pub outcome: Disposition,
    /// The stanza the rules matched: the one received, or one wrapped in it.
    pub stanza: StanzaSummary,
    /// What carried `stanza` when it was wrapped in the stanza received (a carbon, an archive
    /// result, a forward).
    pub wrapped: Option<Wrapper>,
    /// The message body, when the audit includes bodies.
    pub body: Option<String>,
}

impl PolicyEvent {
    /// True when the chain's default decided (no terminal rule matched: only `log` and
    /// `log_only` rules, if any) and it did something other than pass.
    pub fn decided_by_default(&self) -> bool {
        self.hits.iter().all(|h| h.log_only || h.action == RuleAction::Log) && self.outcome != Disposition::Pass
    }
}
