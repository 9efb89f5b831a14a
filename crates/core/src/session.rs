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

mod features;
mod filter;
mod sasl;
pub mod sm;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use crate::jid::{self, FullJid};
use crate::stanza::{Kind, StanzaCondition};
use crate::stream::{Condition, Header, StreamError, NS_CLIENT, STREAM_CLOSE};
use crate::xml::{Element, StreamReader, XmlError, XmlEvent, XmlLimits, NS_STREAMS};

pub use features::{filter_features, is_channel_binding_mechanism};
pub use filter::{PolicyBinding, PolicyEvent, StanzaSummary};
use sm::{StreamManagement, NS_SM};

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
}

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
    /// SASL succeeded: the daemon may relax pre-authentication timeouts.
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
    /// Policy evaluation, once the daemon attaches it.
    filter: Option<PolicyBinding>,
    /// The time the daemon said it is (rate limits).
    now: Option<std::time::Instant>,
    /// XEP-0198 counters of both directions.
    sm: StreamManagement,
    /// The client's `<enable/>` was forwarded and not answered yet.
    sm_enable_pending: bool,
}

/// Most runs of withheld or injected stanzas kept between two acknowledgements per direction.
const SM_MAX_GAPS: usize = sm::DEFAULT_MAX_GAPS;

impl Session {
    /// A session for a freshly accepted connection.
    pub fn new(cfg: SessionConfig) -> Self {
        let client = StreamReader::new(cfg.preauth_limits);
        let mut backend = StreamReader::new(cfg.backend_limits);
        backend.skip_over_limits(true);
        let client_tls = cfg.direct_tls;
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
            filter: None,
            now: None,
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

    /// True between the client's `</stream:stream>` and the backend's: the daemon bounds this
    /// wait and then calls [`Session::timed_out`].
    pub fn is_closing(&self) -> bool {
        self.client_phase == ClientPhase::Closing
    }

    /// True once the session has closed; the daemon stops reading.
    pub fn is_closed(&self) -> bool {
        self.client_phase == ClientPhase::Closed
    }

    /// Bytes received from the client.
    pub fn client_bytes(&mut self, data: &[u8]) {
        if self.is_closed() || matches!(self.client_phase, ClientPhase::TlsHandshake | ClientPhase::Closing) {
            // After `<proceed/>` the daemon hands bytes to TLS; nothing reaches the parser.
            // After the client's `</stream:stream>` nothing more may come from it.
            return;
        }
        self.client.feed(data);
        self.drain_client();
    }

    /// Bytes received from the backend.
    pub fn backend_bytes(&mut self, data: &[u8]) {
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

    /// An inactivity or handshake deadline passed.
    pub fn timed_out(&mut self) {
        if self.is_closed() {
            return;
        }
        if self.client_phase == ClientPhase::Closing {
            self.to_client.extend_from_slice(STREAM_CLOSE);
            return self.finish(CloseReason::ClientClosed);
        }
        let err = StreamError::new(Condition::ConnectionTimeout, None);
        self.client_error_no_finish(err.clone());
        self.close_backend_stream();
        self.finish(CloseReason::ClientError(err));
    }

    /// True while the client's stream is open but the backend's features for it are not out
    /// yet (after TLS and after SASL success the backend leg is still being opened).
    fn awaiting_features(&self) -> bool {
        self.client_phase == ClientPhase::Open
            && (self.backend_phase != BackendPhase::Open || self.pending_features.is_some())
    }

    fn drain_client(&mut self) {
        while !matches!(self.client_phase, ClientPhase::Closed | ClientPhase::TlsHandshake | ClientPhase::Closing) {
            if self.awaiting_features() {
                // Clients pipeline (tsung sends `<auth/>` in the same write as its header) and
                // the servers accept it: what follows the header waits in the reader, unparsed,
                // until the features are out (`on_backend_features` resumes). Held within the
                // pre-authentication stanza cap.
                if self.client.buffered_len() > self.cfg.preauth_limits.stanza_bytes {
                    self.client_error(Condition::PolicyViolation, "too much sent before the stream features");
                }
                break;
            }
            match self.client.next_event() {
                Ok(None) => break,
                Ok(Some(ev)) => self.on_client_event(ev),
                Err(e) => self.client_xml_error(e),
            }
        }
    }

    fn drain_backend(&mut self) {
        while !self.is_closed() && self.backend_phase != BackendPhase::TlsHandshake {
            match self.backend.next_event() {
                Ok(None) => break,
                Ok(Some(ev)) => self.on_backend_event(ev),
                Err(e) => self.fail_backend(format!("invalid XML from backend: {e}")),
            }
        }
    }

    fn on_client_event(&mut self, ev: XmlEvent) {
        match (self.client_phase, ev) {
            (ClientPhase::Header, XmlEvent::StreamOpen { header, default_ns }) => {
                self.on_client_header(&header, default_ns.as_deref())
            }
            (ClientPhase::Open, XmlEvent::StreamClose) if self.backend_phase == BackendPhase::Open => {
                self.close_backend_stream();
                self.client_phase = ClientPhase::Closing;
            }
            (_, XmlEvent::StreamClose) => {
                self.to_client.extend_from_slice(STREAM_CLOSE);
                self.close_backend_stream();
                self.finish(CloseReason::ClientClosed);
            }
            (ClientPhase::Open, XmlEvent::Whitespace) => {
                if self.backend_phase == BackendPhase::Open && self.pending_features.is_none() {
                    self.to_backend.push(b' ');
                }
            }
            (_, XmlEvent::Whitespace) => {}
            (ClientPhase::AwaitStartTls, XmlEvent::Stanza(el)) => {
                if el.is(NS_TLS, "starttls") {
                    Element::new(NS_TLS, "proceed").write_to(&mut self.to_client, NS_CLIENT);
                    self.client_phase = ClientPhase::TlsHandshake;
                    let domain = self.domain.clone().unwrap_or_default();
                    self.effects.push_back(Effect::StartClientTls { domain });
                } else {
                    self.client_error(Condition::PolicyViolation, "STARTTLS is required");
                }
            }
            (ClientPhase::Open, XmlEvent::Stanza(el)) => self.on_client_element(el),
            // A header where a stanza belongs is caught by the reader, and the client leg never
            // skips; these cannot happen.
            (_, XmlEvent::StreamOpen { .. }) | (_, XmlEvent::Stanza(_)) | (_, XmlEvent::Skipped { .. }) => {
                self.client_error(Condition::BadFormat, "unexpected element")
            }
        }
    }

    fn on_client_header(&mut self, header: &Element, default_ns: Option<&str>) {
        let to = header.attr("to").map(str::to_owned);
        // RFC 6120 §4.9.1.2: an error at stream open is sent after our own header.
        self.write_client_header(to.clone().filter(|d| jid::is_domain(d)));
        if !header.is(NS_STREAMS, "stream") {
            return self.client_error(Condition::InvalidNamespace, "not a stream header");
        }
        if default_ns != Some(NS_CLIENT) {
            return self.client_error(Condition::InvalidNamespace, "content namespace must be jabber:client");
        }
        let major = header.attr("version").and_then(|v| v.split('.').next()).and_then(|m| m.parse::<u32>().ok());
        if major != Some(1) {
            return self.client_error(Condition::UnsupportedVersion, "version 1.0 is required");
        }
        let Some(to) = to.filter(|d| jid::is_domain(d)) else {
            return self.client_error(Condition::HostUnknown, "a valid 'to' domain is required");
        };
        if let Some(domain) = &self.domain {
            if !domain.eq_ignore_ascii_case(&to) {
                return self.client_error(Condition::HostUnknown, "'to' changed on stream restart");
            }
        }
        self.domain = Some(to.clone());
        self.lang = header.lang().map(str::to_owned);
        if !self.client_tls {
            let features = Element::new(NS_STREAMS, "features")
                .with_child(Element::new(NS_TLS, "starttls").with_child(Element::new(NS_TLS, "required")));
            features.write_to(&mut self.to_client, NS_CLIENT);
            self.client_phase = ClientPhase::AwaitStartTls;
            return;
        }
        self.client_phase = ClientPhase::Open;
        match self.backend_phase {
            BackendPhase::NotStarted => {
                self.backend_phase = BackendPhase::Connecting;
                self.effects.push_back(Effect::ConnectBackend { domain: to });
            }
            _ => {
                if let Some(features) = self.pending_features.take() {
                    features.write_to(&mut self.to_client, NS_CLIENT);
                }
            }
        }
    }

    fn on_client_element(&mut self, mut el: Element) {
        let ns = &*el.ns;
        if let Some(kind) = Kind::of(&el).filter(|_| ns == NS_CLIENT) {
            if let Err(e) = self.check_from(&mut el) {
                return self.client_error(e, "'from' does not match the authenticated address");
            }
            if kind == Kind::Iq && el.child(NS_LEGACY_AUTH, "query").is_some() {
                // XEP-0078 would authenticate without SASL, past the gateway's view of the session.
                return self.bounce(&el, StanzaCondition::ServiceUnavailable, "legacy authentication is disabled");
            }
            if kind == Kind::Iq {
                if let Err((condition, reason)) = check_iq(&el) {
                    return match condition {
                        None => self.client_error(Condition::InvalidXml, reason),
                        Some(c) => self.bounce(&el, c, reason),
                    };
                }
            }
            // RFC 7622: addresses are forwarded, and compared, only in prepared form.
            if let Some(to) = el.attr("to") {
                match jid::parse(to) {
                    Some(j) => el.set_attr("to", j.to_string()),
                    None => return self.bounce(&el, StanzaCondition::JidMalformed, "malformed 'to' address"),
                }
            }
            if !self.authenticated || self.bound.is_none() {
                let is_bind = el.name == "iq" && el.attr("type") == Some("set") && el.child(NS_BIND, "bind").is_some();
                // RFC 6120 §7.1: after SASL nothing but one bind request until it is answered. A
                // second request or a stanza pipelined behind it would be processed by the server
                // for a JID this gateway has not learnt yet, past policy.
                if self.authenticated && (!is_bind || self.bind_id.is_some()) {
                    return self.client_error(Condition::NotAuthorized, "stanza before resource binding completed");
                }
                if is_bind {
                    self.bind_id = el.attr("id").map(str::to_owned);
                }
            }
        } else if ns == NS_SASL {
            if !matches!(el.name.as_str(), "auth" | "response" | "abort") || self.authenticated {
                return self.client_error(Condition::UnsupportedStanzaType, "unexpected SASL element");
            }
            if el.name == "auth" && el.attr("mechanism").is_some_and(is_channel_binding_mechanism) {
                // The channel binding the client computes is for its TLS session with us, which
                // the backend cannot verify; refuse here rather than relay a doomed exchange.
                let failure = Element::new(NS_SASL, "failure").with_child(Element::new(NS_SASL, "invalid-mechanism"));
                failure.write_to(&mut self.to_client, NS_CLIENT);
                return;
            }
            if el.name == "auth" {
                let mechanism = el.attr("mechanism").unwrap_or_default();
                let domain = self.domain.as_deref().unwrap_or_default();
                if sasl::foreign_authzid(mechanism, &el.text(), domain) {
                    let failure = Element::new(NS_SASL, "failure").with_child(Element::new(NS_SASL, "invalid-authzid"));
                    failure.write_to(&mut self.to_client, NS_CLIENT);
                    self.effects.push_back(Effect::AuthFailed);
                    return;
                }
            }
        } else if ns == NS_SM && self.authenticated {
            return self.on_client_sm(el);
        } else if !(ns == NS_CSI && matches!(el.name.as_str(), "active" | "inactive") && self.bound.is_some()) {
            return self.client_error(Condition::UnsupportedStanzaType, "unsupported top-level element");
        }
        let is_stanza = Kind::of(&el).is_some();
        let Some(el) = self.police(crate::policy::Chain::C2sIn, el) else { return };
        self.counters.stanzas_from_client += 1;
        if is_stanza {
            self.sm.to_server.forwarded();
        }
        el.write_to(&mut self.to_backend, NS_CLIENT);
    }

    /// RFC 6120 §8.1.2.1: stamp the bound JID; a different `from` is `<invalid-from/>`. Before
    /// binding nothing is authorized, so a `from` is removed.
    fn check_from(&self, el: &mut Element) -> Result<(), Condition> {
        match &self.bound {
            None => {
                el.remove_attr("from");
                Ok(())
            }
            Some(bound) => match el.attr("from") {
                Some(from) if !jid::is_own_address(from, bound) => Err(Condition::InvalidFrom),
                _ => {
                    el.set_attr("from", bound.to_string());
                    Ok(())
                }
            },
        }
    }

    /// Answer a refused client stanza with a stanza error (or drop it where no error may be
    /// sent, RFC 6120 §8.3.1); nothing reaches the backend.
    fn bounce(&mut self, el: &Element, condition: StanzaCondition, reason: &'static str) {
        let stanza = StanzaSummary::of(el);
        match (self.refuse_client_stanza(el, condition, Some(reason)), stanza) {
            (true, Some(stanza)) => self.effects.push_back(Effect::Bounced { stanza, condition, reason }),
            (_, stanza) => self.effects.push_back(Effect::Dropped { from_backend: false, stanza, reason }),
        }
    }

    fn on_backend_event(&mut self, ev: XmlEvent) {
        match (self.backend_phase, ev) {
            (BackendPhase::AwaitHeader, XmlEvent::StreamOpen { header, default_ns }) => {
                if !header.is(NS_STREAMS, "stream") || default_ns.as_deref() != Some(NS_CLIENT) {
                    return self.fail_backend("backend stream header has the wrong namespace".to_owned());
                }
                self.backend_phase = BackendPhase::AwaitFeatures;
            }
            (_, XmlEvent::StreamClose) => {
                self.to_client.extend_from_slice(STREAM_CLOSE);
                if self.client_phase == ClientPhase::Closing {
                    // The backend answered the client's close: a clean end.
                    return self.finish(CloseReason::ClientClosed);
                }
                self.to_backend.extend_from_slice(STREAM_CLOSE);
                self.finish(CloseReason::BackendClosed);
            }
            (BackendPhase::Open, XmlEvent::Whitespace) => {
                if matches!(self.client_phase, ClientPhase::Open | ClientPhase::Closing) && self.client_header_sent {
                    self.to_client.push(b' ');
                }
            }
            (_, XmlEvent::Whitespace) => {}
            (_, XmlEvent::Skipped { reason, root }) => self.on_backend_skipped(reason, root),
            (_, XmlEvent::Stanza(el)) if el.is(NS_STREAMS, "error") => {
                let err = StreamError::from_element(&el);
                if !self.client_header_sent {
                    self.write_client_header(self.domain.clone());
                }
                el.write_to(&mut self.to_client, NS_CLIENT);
                self.to_client.extend_from_slice(STREAM_CLOSE);
                self.to_backend.extend_from_slice(STREAM_CLOSE);
                self.finish(CloseReason::BackendError(err));
            }
            (BackendPhase::AwaitFeatures, XmlEvent::Stanza(el)) if el.is(NS_STREAMS, "features") => {
                self.on_backend_features(el)
            }
            (BackendPhase::AwaitProceed, XmlEvent::Stanza(el)) if el.is(NS_TLS, "proceed") => {
                self.backend_phase = BackendPhase::TlsHandshake;
                self.effects.push_back(Effect::StartBackendTls);
            }
            (BackendPhase::Open, XmlEvent::Stanza(el)) => self.on_backend_element(el),
            (phase, XmlEvent::Stanza(el)) => {
                self.fail_backend(format!("unexpected <{}/> from backend in phase {phase:?}", el.name))
            }
            (_, XmlEvent::StreamOpen { .. }) => self.fail_backend("unexpected stream header".to_owned()),
        }
    }

    fn on_backend_features(&mut self, mut features: Element) {
        let offers_tls = features.child(NS_TLS, "starttls");
        if self.cfg.backend_tls == BackendTls::StartTls && !self.backend_tls_done {
            if offers_tls.is_none() {
                return self.fail_backend("backend does not offer STARTTLS (backend_tls = \"starttls\")".to_owned());
            }
            Element::new(NS_TLS, "starttls").write_to(&mut self.to_backend, NS_CLIENT);
            self.backend_phase = BackendPhase::AwaitProceed;
            return;
        }
        if offers_tls.is_some_and(|s| s.child(NS_TLS, "required").is_some()) && !self.backend_tls_done {
            return self.fail_backend("backend requires STARTTLS; set backend_tls = \"starttls\"".to_owned());
        }
        filter_features(&mut features);
        self.backend_phase = BackendPhase::Open;
        if self.client_header_sent && self.client_phase == ClientPhase::Open {
            features.write_to(&mut self.to_client, NS_CLIENT);
            // What the client pipelined behind its header is read now.
            self.drain_client();
        } else {
            self.pending_features = Some(features);
        }
    }

    fn on_backend_element(&mut self, el: Element) {
        if el.is(NS_STREAMS, "features") {
            return self.fail_backend("stream features outside stream negotiation".to_owned());
        }
        if &*el.ns == NS_SM {
            return self.on_backend_sm(el);
        }
        if let Some(reason) = self.forged_for_client(&el) {
            // Answer an iq so its sender is not left waiting; never answer a message or presence
            // from a forger (no error loops, no oracle).
            if el.name == "iq" {
                self.refuse_backend_stanza(&el, StanzaCondition::ServiceUnavailable, None);
            } else {
                let r = self.sm.to_client.withheld();
                self.sm_result(r);
            }
            self.effects.push_back(Effect::Dropped { from_backend: true, stanza: StanzaSummary::of(&el), reason });
            return;
        }
        let is_stanza = Kind::of(&el).is_some();
        let Some(el) = (if is_stanza { self.police(crate::policy::Chain::C2sOut, el) } else { Some(el) }) else {
            return;
        };
        self.counters.stanzas_from_backend += 1;
        if el.is(NS_SASL, "success") && !self.authenticated {
            el.write_to(&mut self.to_client, NS_CLIENT);
            return self.restart_after_sasl();
        }
        if el.is(NS_SASL, "failure") && !self.authenticated {
            self.effects.push_back(Effect::AuthFailed);
        }
        if self.bind_id.is_some() && el.name == "iq" && el.attr("id") == self.bind_id.as_deref() {
            self.bind_id = None;
            if el.attr("type") == Some("result") {
                let jid_text = el.child(NS_BIND, "bind").and_then(|b| b.child(NS_BIND, "jid")).map(Element::text);
                match jid_text.as_deref().and_then(jid::parse_full) {
                    Some(full) => {
                        self.bound = Some(full.clone());
                        self.effects.push_back(Effect::Bound(full));
                    }
                    None => return self.fail_backend("bind result without a valid full JID".to_owned()),
                }
            }
        }
        if is_stanza {
            self.sm.to_client.forwarded();
        }
        el.write_to(&mut self.to_client, NS_CLIENT);
    }

    /// A backend stanza the reader could not accept (over the limits, or not
    /// namespace-well-formed) was skipped: the client never sees it, the session lives on (what
    /// anyone can make the server emit must not disconnect the recipient — and an archived copy
    /// would do so again at every sync), and a stanza that may be answered gets an error back to
    /// its sender, unless that is the user's own account (a MAM result or carbon wrapping it).
    fn on_backend_skipped(&mut self, reason: XmlError, root: Option<Element>) {
        let stanza = root.as_ref().and_then(StanzaSummary::of);
        match &root {
            Some(root) if stanza.is_some() && !self.is_from_own_account(root) => {
                let text = match reason {
                    XmlError::TooLarge { .. } | XmlError::TooDeep { .. } | XmlError::TooManyAttributes { .. } => {
                        "stanza exceeds the recipient gateway's limits"
                    }
                    _ => "stanza is not acceptable XML for the recipient gateway",
                };
                self.refuse_backend_stanza(root, StanzaCondition::PolicyViolation, Some(text));
            }
            Some(root) if stanza.is_some() => {
                let r = self.sm.to_client.withheld();
                self.sm_result(r);
            }
            Some(_) => {}
            // Its root was unreadable: after binding, what the server sends at the top level
            // is stanzas (SM nonzas are tiny), so the SM count treats it as one.
            None => {
                let r = self.sm.to_client.withheld();
                self.sm_result(r);
            }
        }
        let why = match reason {
            XmlError::TooLarge { .. } => "stanza from backend too large",
            XmlError::TooDeep { .. } => "stanza from backend nested too deep",
            XmlError::TooManyAttributes { .. } => "stanza from backend with too many attributes",
            XmlError::ReservedNamespace | XmlError::NestedStreamElement => {
                "stanza from backend in a reserved namespace"
            }
            _ => "stanza from backend not namespace-well-formed",
        };
        self.effects.push_back(Effect::Dropped { from_backend: true, stanza, reason: why });
    }

    /// True if `el` comes from the user's own account, any resource (no `from`: the account
    /// itself, RFC 6120 §8.1.2.1).
    pub(super) fn is_from_own_account(&self, el: &Element) -> bool {
        match (el.attr("from"), &self.bound) {
            (None, _) => true,
            (Some(from), Some(bound)) => jid::parse(from).is_some_and(|j| j.to_bare() == bound.to_bare()),
            (Some(_), None) => false,
        }
    }

    /// Stanzas toward the client that only the user's own account may send: carbons
    /// (XEP-0280 §11: a client must check, many did not) and roster pushes (RFC 6121 §2.1.6).
    fn forged_for_client(&self, el: &Element) -> Option<&'static str> {
        let is_from_own_account = || match el.attr("from") {
            None => true,
            Some(from) => match (jid::parse(from), &self.bound) {
                (Some(j), Some(bound)) => j == bound.to_bare(),
                _ => false,
            },
        };
        match Kind::of(el)? {
            Kind::Message
                if el.elements().any(|c| &*c.ns == NS_CARBONS && matches!(c.name.as_str(), "received" | "sent")) =>
            {
                (!is_from_own_account()).then_some("carbon copy from a foreign sender")
            }
            Kind::Iq if el.attr("type") == Some("set") && el.child(NS_ROSTER, "query").is_some() => {
                (!is_from_own_account()).then_some("roster push from a foreign sender")
            }
            _ => None,
        }
    }

    /// RFC 6120 §6.4.6: after `<success/>` both streams restart. We restart the backend leg
    /// ourselves, and answer the client's new header when it comes.
    fn restart_after_sasl(&mut self) {
        self.authenticated = true;
        self.effects.push_back(Effect::Authenticated);
        self.client.set_limits(self.cfg.limits);
        self.client.restart();
        self.client_phase = ClientPhase::Header;
        self.client_header_sent = false;
        self.backend.restart();
        self.open_backend_stream();
    }

    fn open_backend_stream(&mut self) {
        let header = Header { to: self.domain.clone(), lang: self.lang.clone(), ..Header::default() };
        header.write(NS_CLIENT, &mut self.to_backend);
        self.backend_phase = BackendPhase::AwaitHeader;
    }

    fn write_client_header(&mut self, from: Option<String>) {
        let reply = Header { from, id: Some(self.cfg.stream_id.clone()), lang: Some("en".to_owned()), to: None };
        reply.write(NS_CLIENT, &mut self.to_client);
        self.client_header_sent = true;
    }

    fn client_xml_error(&mut self, e: XmlError) {
        self.close_with(StreamError::from(&e));
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

/// RFC 6120 §8.2.3: an iq has an id and a type; a get or set has exactly one child.
/// `Err((None, why))` is a stream error (there is no id to answer), `Err((Some(c), why))` a bounce.
fn check_iq(el: &Element) -> Result<(), (Option<StanzaCondition>, &'static str)> {
    if el.attr("id").is_none() {
        return Err((None, "iq without id"));
    }
    match el.attr("type") {
        Some("get" | "set") if el.elements().count() != 1 => {
            Err((Some(StanzaCondition::BadRequest), "iq get/set must have exactly one child"))
        }
        Some("get" | "set" | "result" | "error") => Ok(()),
        _ => Err((None, "iq without a valid type")),
    }
}
