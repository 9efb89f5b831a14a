//! Outbound federation: our server (front leg, plaintext on loopback, the `s2s-out` listener) →
//! the gateway → the remote server (back leg, resolved and connected by the daemon).
//!
//! Our server opens a stream `to` the remote domain R and asks for a domain pair with
//! `db:result` (dialback): the gateway does not forward that key (it could not be checked
//! through us). It authenticates L to R itself — SASL EXTERNAL with its certificate for L, or
//! dialback with a key it minted, which R checks with L's authoritative server: the gateway's
//! inbound listener — and answers our server `valid` only when R accepted. Our server's
//! `db:verify` for keys the inbound side minted is answered here, never sent out.
//! `require_tls` and `require_authenticated` apply to R (its certificate: PKIX or DANE).

use std::time::Instant;

use base64::Engine;

use super::common::S2sCore;
use super::{
    db, db_error, domain_attr, header_problem, meets, stanza_domains, AuthMethod, Dnssec, PeerCert, S2sSettings,
    S2sWrite, NS_DIALBACK, NS_DIALBACK_FEATURE, NS_SASL, NS_TLS,
};
use crate::jid::FullJid;
use crate::policy::{Chain, Policy};
use crate::session::{BackendFailure, CloseReason, Counters, Effect, PolicyBinding, S2sAuth, StreamMachine};
use crate::stanza::Kind;
use crate::stream::{Condition, Header, StreamError, STREAM_CLOSE};
use crate::xml::{Element, XmlEvent, NS_SERVER, NS_STREAMS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackPhase {
    NotStarted,
    Connecting,
    AwaitHeader,
    AwaitFeatures,
    AwaitProceed,
    TlsHandshake,
    AwaitSasl,
    /// Features received and acted on: dialback requests may be sent.
    Ready,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PairState {
    /// Our server asked; not yet sent to the remote.
    Requested,
    /// Dialback sent to the remote; waiting for its answer.
    Sent,
    Valid,
}

#[derive(Debug, Clone)]
struct Pair {
    local: String,
    state: PairState,
}

/// One outbound s2s stream (see the module docs).
#[derive(Debug)]
pub struct S2sOutbound {
    core: S2sCore,
    header_seen: bool,
    back: BackPhase,
    /// The remote leg is under TLS.
    tls: bool,
    remote_cert: PeerCert,
    dnssec: Dnssec,
    sasl_tried: bool,
    /// Our server's domain (the header's `from`) and the remote domain (`to`).
    local: Option<String>,
    remote: Option<String>,
    pairs: Vec<Pair>,
    back_id: Option<String>,
}

impl S2sOutbound {
    /// A session for a connection from our server accepted at `now`.
    pub fn new(cfg: S2sSettings, policy: PolicyBinding, now: Instant) -> S2sOutbound {
        S2sOutbound {
            core: S2sCore::new(cfg, policy, now),
            header_seen: false,
            back: BackPhase::NotStarted,
            tls: false,
            remote_cert: PeerCert::None,
            dnssec: Dnssec::NotLooked,
            sasl_tried: false,
            local: None,
            remote: None,
            pairs: Vec::new(),
            back_id: None,
        }
    }

    fn error(&mut self, condition: Condition, text: &str) {
        let from = self.remote.clone();
        self.core.front_error(condition, text, from);
    }

    fn refuse(&mut self, condition: Condition, why: &str) {
        let remote = self.remote.clone().unwrap_or_default();
        self.core.effects.push_back(Effect::S2sRefused { direction: "out", remote, reason: why.to_owned() });
        self.answer_pending("remote-connection-failed");
        self.error(condition, why);
    }

    /// Tell our server that every pair still waiting failed (it bounces what it queued).
    fn answer_pending(&mut self, condition: &str) {
        let remote = self.remote.clone().unwrap_or_default();
        for p in self.pairs.iter().filter(|p| p.state != PairState::Valid) {
            db_error("result", &remote, &p.local, condition).write_s2s(&mut self.core.to_front);
        }
        self.pairs.retain(|p| p.state == PairState::Valid);
    }

    fn drain(&mut self) {
        while !self.core.closed {
            match self.core.front.next_event() {
                Ok(None) => break,
                Ok(Some(ev)) => self.on_event(ev),
                Err(e) => {
                    let err = StreamError::from(&e);
                    self.error(err.condition, &err.text.clone().unwrap_or_default());
                }
            }
        }
    }

    fn on_event(&mut self, ev: XmlEvent) {
        match ev {
            XmlEvent::StreamOpen { header, default_ns } if !self.header_seen => {
                self.on_header(&header, default_ns.as_deref())
            }
            XmlEvent::StreamClose => {
                self.core.to_front.extend_from_slice(STREAM_CLOSE);
                self.core.close_back_stream();
                self.core.finish(CloseReason::ClientClosed);
            }
            XmlEvent::Whitespace => {
                if self.back == BackPhase::Ready && self.core.back_open {
                    self.core.to_back.push(b' ');
                }
            }
            XmlEvent::Stanza(el) if self.header_seen => self.on_element(el),
            _ => self.error(Condition::BadFormat, "unexpected element"),
        }
    }

    fn on_header(&mut self, header: &Element, default_ns: Option<&str>) {
        let to = domain_attr(header, "to");
        let from = domain_attr(header, "from");
        self.core.write_front_header(to.clone(), from.clone());
        self.header_seen = true;
        if let Some((c, why)) = header_problem(header, default_ns) {
            return self.error(c, why);
        }
        let Some(local) = from.filter(|f| self.core.cfg.is_local(f)) else {
            return self.error(Condition::InvalidFrom, "'from' must be a domain this gateway serves ([s2s] domains)");
        };
        let Some(remote) = to else {
            return self.error(Condition::HostUnknown, "a valid 'to' domain is required");
        };
        if self.core.cfg.is_local(&remote) {
            return self.error(Condition::HostUnknown, "the remote domain is one of ours");
        }
        self.local = Some(local);
        self.remote = Some(remote.clone());
        if let Some(why) = self.core.filter.policy.s2s().refusal(&remote) {
            return self.refuse(Condition::PolicyViolation, why);
        }
        // Our server's leg is trusted by where it comes from (the s2s-out listener): only
        // dialback is offered, answered once the remote accepted.
        Element::new(NS_STREAMS, "features")
            .with_child(
                Element::new(NS_DIALBACK_FEATURE, "dialback").with_child(Element::new(NS_DIALBACK_FEATURE, "errors")),
            )
            .write_s2s(&mut self.core.to_front);
    }

    fn on_element(&mut self, el: Element) {
        let ns = &*el.ns;
        if ns == NS_DIALBACK && el.name == "result" && el.attr("type").is_none() {
            return self.on_db_result(&el);
        }
        if ns == NS_DIALBACK && el.name == "verify" && el.attr("type").is_none() {
            return self.on_db_verify(&el);
        }
        if ns == NS_STREAMS && el.name == "error" {
            let err = StreamError::from_element(&el);
            if self.core.back_open {
                err.to_element().write_s2s(&mut self.core.to_back);
            }
            self.core.close_back_stream();
            return self.core.finish(CloseReason::ClientFailed(format!("our server's stream error: {err}")));
        }
        if ns == NS_SERVER && Kind::of(&el).is_some() {
            return self.on_stanza(el);
        }
        self.error(Condition::UnsupportedStanzaType, "unsupported top-level element")
    }

    fn on_db_result(&mut self, el: &Element) {
        let (Some(local), Some(remote)) = (domain_attr(el, "from"), domain_attr(el, "to")) else {
            return self.error(Condition::ImproperAddressing, "db:result needs valid 'from' and 'to'");
        };
        if !self.core.cfg.is_local(&local) {
            return self.error(Condition::InvalidFrom, "'from' must be a domain this gateway serves");
        }
        if Some(&remote) != self.remote.as_ref() {
            return db_error("result", &remote, &local, "item-not-found").write_s2s(&mut self.core.to_front);
        }
        if let Some(p) = self.pairs.iter().find(|p| p.local == local) {
            if p.state == PairState::Valid {
                db("result", &remote, &local).with_attr("type", "valid").write_s2s(&mut self.core.to_front);
            }
            return;
        }
        if self.core.over_domain_rate(&remote, Chain::S2sOut, true) {
            return self.refuse(Condition::PolicyViolation, "too many streams to this domain");
        }
        self.pairs.push(Pair { local: local.clone(), state: PairState::Requested });
        match self.back {
            BackPhase::NotStarted => {
                self.back = BackPhase::Connecting;
                self.core.effects.push_back(Effect::ConnectBackend { domain: remote });
            }
            BackPhase::Ready => self.send_dialback(),
            _ => {}
        }
    }

    /// Our server checks a key the gateway's inbound side minted when it presented a remote
    /// domain (receiving = our domain, originating = the remote).
    fn on_db_verify(&mut self, el: &Element) {
        let (Some(receiving), Some(originating), Some(id)) =
            (domain_attr(el, "from"), domain_attr(el, "to"), el.attr("id").map(str::to_owned))
        else {
            return self.error(Condition::ImproperAddressing, "db:verify needs 'from', 'to' and 'id'");
        };
        let valid = self.core.cfg.is_local(&receiving)
            && self.core.cfg.dialback.verify(&receiving, &originating, &id, &el.text());
        db("verify", &originating, &receiving)
            .with_attr("id", id)
            .with_attr("type", if valid { "valid" } else { "invalid" })
            .write_s2s(&mut self.core.to_front);
    }

    fn on_stanza(&mut self, el: Element) {
        let (from, to) = match stanza_domains(&el) {
            Ok(d) => d,
            Err((c, why)) => return self.error(c, why),
        };
        if Some(&to) != self.remote.as_ref() {
            return self.error(Condition::ImproperAddressing, "stanza for another domain than the stream's");
        }
        if !self.pairs.iter().any(|p| p.local == from && p.state == PairState::Valid) {
            return self.error(Condition::InvalidFrom, "the stanza's domains were not authenticated on this stream");
        }
        if self.core.over_domain_rate(&to, Chain::S2sOut, false) {
            let why = "stanza rate of the domain exceeded";
            return self.core.refuse_front_stanza(&el, crate::stanza::StanzaCondition::PolicyViolation, why);
        }
        let Some(el) = self.core.police(Chain::S2sOut, el) else { return };
        self.core.counters.stanzas_from_client += 1;
        el.write_s2s(&mut self.core.to_back);
    }

    /// Send dialback for every requested pair (the remote's stream id binds the key).
    fn send_dialback(&mut self) {
        let (Some(remote), Some(id)) = (self.remote.clone(), self.back_id.clone()) else { return };
        for p in self.pairs.iter_mut().filter(|p| p.state == PairState::Requested) {
            let key = self.core.cfg.dialback.key(&remote, &p.local, &id);
            db("result", &p.local, &remote).with_text(key).write_s2s(&mut self.core.to_back);
            p.state = PairState::Sent;
        }
    }

    fn pair_valid(&mut self, local: &str, method: AuthMethod) {
        let remote = self.remote.clone().unwrap_or_default();
        let Some(p) = self.pairs.iter_mut().find(|p| p.local == local && p.state != PairState::Valid) else { return };
        p.state = PairState::Valid;
        self.core.established = true;
        self.core.effects.push_back(Effect::S2sAuthenticated(S2sAuth {
            direction: "out",
            remote: remote.clone(),
            local: local.to_owned(),
            method,
            cert: self.remote_cert.clone(),
            dnssec: self.dnssec,
        }));
        db("result", &remote, local).with_attr("type", "valid").write_s2s(&mut self.core.to_front);
    }

    fn back_failure(&mut self, failure: BackendFailure) {
        // DNS (bogus, no service), TLS (DANE mismatch) and connect failures are refusals of the
        // remote too: audited like the policy's.
        let remote = self.remote.clone().unwrap_or_default();
        self.core.effects.push_back(Effect::S2sRefused { direction: "out", remote, reason: failure.to_string() });
        self.answer_pending("remote-connection-failed");
        let err = StreamError::new(Condition::RemoteConnectionFailed, Some(failure.to_string()));
        let from = self.remote.clone();
        self.core.front_error_no_finish(&err, from);
        self.core.close_back_stream();
        self.core.finish(CloseReason::BackendFailed(failure));
    }

    fn write_back_header(&mut self) {
        let local = self.pairs.first().map(|p| p.local.clone()).or_else(|| self.local.clone());
        Header { from: local, to: self.remote.clone(), id: None, lang: None }.write_s2s(&mut self.core.to_back);
        self.core.back_open = true;
        self.back = BackPhase::AwaitHeader;
    }

    fn drain_back(&mut self) {
        while !self.core.closed && self.back != BackPhase::TlsHandshake {
            match self.core.back.next_event() {
                Ok(None) => break,
                Ok(Some(ev)) => self.on_back_event(ev),
                Err(e) => self.back_failure(BackendFailure::Protocol(format!("the remote sent bad XML: {e}"))),
            }
        }
    }

    fn on_back_event(&mut self, ev: XmlEvent) {
        match (self.back, ev) {
            (BackPhase::AwaitHeader, XmlEvent::StreamOpen { header, default_ns }) => {
                if header_problem(&header, default_ns.as_deref()).is_some() {
                    return self
                        .back_failure(BackendFailure::Protocol("the remote's header is not jabber:server 1.0".into()));
                }
                self.back_id = header.attr("id").map(str::to_owned);
                self.back = BackPhase::AwaitFeatures;
            }
            (BackPhase::AwaitFeatures, XmlEvent::Stanza(f)) if f.is(NS_STREAMS, "features") => {
                self.on_back_features(&f)
            }
            (BackPhase::AwaitProceed, XmlEvent::Stanza(el)) if el.is(NS_TLS, "proceed") => {
                self.back = BackPhase::TlsHandshake;
                self.core.effects.push_back(Effect::StartBackendTls);
            }
            (BackPhase::AwaitSasl, XmlEvent::Stanza(el)) if el.is(NS_SASL, "success") => {
                let local = self.pairs.first().map(|p| p.local.clone()).unwrap_or_default();
                self.pair_valid(&local, AuthMethod::SaslExternal);
                self.core.back.restart();
                self.write_back_header();
            }
            (BackPhase::AwaitSasl, XmlEvent::Stanza(el)) if el.is(NS_SASL, "failure") => {
                // XEP-0178 failed: fall back to dialback on the same stream.
                self.back = BackPhase::Ready;
                self.send_dialback();
            }
            (BackPhase::Ready, XmlEvent::Stanza(el)) if &*el.ns == NS_DIALBACK && el.name == "result" => {
                self.on_back_db_result(&el)
            }
            (_, XmlEvent::Stanza(el)) if el.is(NS_STREAMS, "error") => {
                let err = StreamError::from_element(&el);
                self.answer_pending("remote-connection-failed");
                err.to_element().write_s2s(&mut self.core.to_front);
                self.core.to_front.extend_from_slice(STREAM_CLOSE);
                self.core.back_open = false;
                self.core.finish(CloseReason::BackendError(err));
            }
            (_, XmlEvent::StreamClose) => {
                self.answer_pending("remote-connection-failed");
                self.core.to_front.extend_from_slice(STREAM_CLOSE);
                self.core.close_back_stream();
                self.core.finish(CloseReason::BackendClosed);
            }
            (_, XmlEvent::Whitespace) => {}
            (BackPhase::Ready, XmlEvent::Stanza(el)) => {
                self.core.drop_back_stanza(&el, "the remote sent on our outbound stream (bidi is not offered)")
            }
            _ => self.back_failure(BackendFailure::Protocol("unexpected element from the remote".into())),
        }
    }

    fn on_back_features(&mut self, f: &Element) {
        let remote = self.remote.clone().unwrap_or_default();
        if !self.tls {
            if f.child(NS_TLS, "starttls").is_some() {
                Element::new(NS_TLS, "starttls").write_s2s(&mut self.core.to_back);
                self.back = BackPhase::AwaitProceed;
                return;
            }
            if self.core.cfg.require_tls {
                return self.refuse(Condition::PolicyViolation, &format!("{remote} does not offer TLS (require_tls)"));
            }
        }
        let required = self.core.filter.policy.s2s().required(&remote);
        if !meets(required, &self.remote_cert, true) {
            let why = format!(
                "{remote} must be authenticated by {} (require_authenticated); its certificate: {}",
                required.as_str(),
                match &self.remote_cert {
                    PeerCert::Invalid(why) => why.clone(),
                    other => other.as_str().to_owned(),
                }
            );
            return self.refuse(Condition::PolicyViolation, &why);
        }
        let external = f
            .child(NS_SASL, "mechanisms")
            .is_some_and(|m| m.elements().any(|e| e.name == "mechanism" && e.text().trim() == "EXTERNAL"));
        let local = self.pairs.first().map(|p| p.local.clone());
        match local {
            Some(local) if self.tls && external && !self.sasl_tried && self.core.cfg.has_cert(&local) => {
                self.sasl_tried = true;
                let authzid = base64::engine::general_purpose::STANDARD.encode(local.as_bytes());
                Element::new(NS_SASL, "auth")
                    .with_attr("mechanism", "EXTERNAL")
                    .with_text(authzid)
                    .write_s2s(&mut self.core.to_back);
                self.back = BackPhase::AwaitSasl;
            }
            _ => {
                self.back = BackPhase::Ready;
                self.send_dialback();
            }
        }
    }

    fn on_back_db_result(&mut self, el: &Element) {
        let (Some(remote), Some(local)) = (domain_attr(el, "from"), domain_attr(el, "to")) else {
            return self.back_failure(BackendFailure::Protocol("db:result without from/to".into()));
        };
        if Some(&remote) != self.remote.as_ref()
            || !self.pairs.iter().any(|p| p.local == local && p.state == PairState::Sent)
        {
            return;
        }
        if el.attr("type") == Some("valid") {
            return self.pair_valid(&local, AuthMethod::Dialback);
        }
        self.pairs.retain(|p| p.local != local);
        db("result", &remote, &local).with_attr("type", "invalid").write_s2s(&mut self.core.to_front);
        let reason = format!("{remote} refused dialback for {local}");
        self.core.effects.push_back(Effect::S2sRefused { direction: "out", remote, reason: reason.clone() });
        if !self.pairs.iter().any(|p| p.state == PairState::Valid) {
            self.error(Condition::RemoteConnectionFailed, &reason);
        }
    }
}

impl StreamMachine for S2sOutbound {
    /// An s2s-out stanza released from the quarantine goes on to the remote server, if this
    /// stream still has its domain pair authenticated.
    fn deliver_released(&mut self, chain: Chain, stanza: Element) -> Result<(), crate::session::DeliverRefused> {
        use crate::session::DeliverRefused;
        if self.core.closed {
            return Err(DeliverRefused::Closed);
        }
        if chain != Chain::S2sOut {
            return Err(DeliverRefused::WrongStream);
        }
        let Ok((from, to)) = super::stanza_domains(&stanza) else { return Err(DeliverRefused::WrongStream) };
        if Some(&to) != self.remote.as_ref()
            || !self.pairs.iter().any(|p| p.local == from && p.state == PairState::Valid)
        {
            return Err(DeliverRefused::NotEstablished);
        }
        stanza.write_s2s(&mut self.core.to_back);
        Ok(())
    }

    fn client_bytes(&mut self, data: &[u8], now: Instant) {
        self.core.tick(now);
        if self.core.closed {
            return;
        }
        self.core.front.feed(data);
        self.drain();
    }

    fn backend_bytes(&mut self, data: &[u8], now: Instant) {
        self.core.tick(now);
        if self.core.closed || self.back == BackPhase::TlsHandshake {
            return;
        }
        self.core.back.feed(data);
        self.drain_back();
    }

    fn take_to_client(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.core.to_front)
    }

    fn take_to_backend(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.core.to_back)
    }

    fn poll_effect(&mut self) -> Option<Effect> {
        self.core.effects.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.core.now = self.core.now.max(now);
        if self.core.poll_timeout().is_none_or(|due| now < due) {
            return;
        }
        if self.core.established {
            // Idle: close politely both ways (RFC 6120 §4.4).
            self.core.to_front.extend_from_slice(STREAM_CLOSE);
            self.core.close_back_stream();
            return self.core.finish(CloseReason::ClientError(StreamError::new(Condition::ConnectionTimeout, None)));
        }
        self.answer_pending("remote-connection-failed");
        self.error(Condition::ConnectionTimeout, "the remote did not authenticate in time");
    }

    fn take_client_buffered(&mut self) -> Vec<u8> {
        Vec::new()
    }

    fn take_backend_buffered(&mut self) -> Vec<u8> {
        self.core.back.take_buffered()
    }

    fn client_tls_established(&mut self) {}

    fn backend_connected(&mut self) {
        if self.core.closed || self.back != BackPhase::Connecting {
            return;
        }
        self.write_back_header();
    }

    fn backend_tls_established(&mut self) {
        if self.core.closed || self.back != BackPhase::TlsHandshake {
            return;
        }
        self.tls = true;
        self.core.back.restart();
        self.write_back_header();
    }

    fn backend_failed(&mut self, why: &str) {
        if !self.core.closed {
            self.back_failure(BackendFailure::Io(why.to_owned()));
        }
    }

    fn client_disconnected(&mut self) {
        self.core.front_disconnected();
    }

    fn client_not_reading(&mut self) {
        self.core.front_not_reading();
    }

    fn shutdown(&mut self) {
        let from = self.remote.clone();
        self.core.shutdown(from, true);
    }

    fn refuse(&mut self, condition: Condition, text: &str) {
        self.error(condition, text);
    }

    fn set_policy(&mut self, policy: std::sync::Arc<Policy>) {
        self.core.filter.policy = policy;
        if self.core.closed {
            return;
        }
        let refusal = self.remote.as_deref().and_then(|r| self.core.filter.policy.s2s().refusal(r));
        if let Some(why) = refusal {
            if self.core.back_open {
                StreamError::new(Condition::PolicyViolation, Some(why.to_owned()))
                    .to_element()
                    .write_s2s(&mut self.core.to_back);
            }
            self.refuse(Condition::PolicyViolation, why);
        }
    }

    fn counters(&self) -> Counters {
        self.core.counters
    }

    fn is_closed(&self) -> bool {
        self.core.closed
    }

    fn bound_jid(&self) -> Option<&FullJid> {
        None
    }

    fn domain(&self) -> Option<&str> {
        self.remote.as_deref()
    }

    fn chains(&self) -> (Chain, Chain) {
        (Chain::S2sOut, Chain::S2sIn)
    }

    fn local_domain(&self) -> Option<&str> {
        self.pairs.first().map(|p| p.local.as_str()).or(self.local.as_deref())
    }

    fn remote_certificate(&mut self, cert: PeerCert, dnssec: Dnssec) {
        self.remote_cert = cert;
        self.dnssec = dnssec;
        // Direct TLS (XEP-0368): the certificate arrives before the socket is reported
        // connected; the stream then starts under TLS.
        if self.back == BackPhase::Connecting {
            self.tls = true;
        }
    }
}
