//! The backend leg of a c2s session: the server's stream header, features (filtered), the
//! STARTTLS and SASL milestones, and the stanzas it delivers, checked and policed toward the
//! client. What the server emits that the reader cannot accept is skipped, never fatal.

use super::checks::{check_backend_stanza, Check};
use super::sm::NS_SM;
use super::{
    filter_features, BackendPhase, BackendTls, C2sSession, ClientPhase, CloseReason, Effect, StanzaSummary, NS_BIND,
    NS_SASL, NS_TLS,
};
use crate::jid;
use crate::session::{BackendFailure, StreamMachine};
use crate::stanza::{Kind, StanzaCondition};
use crate::stream::{Header, StreamError, NS_CLIENT, STREAM_CLOSE};
use crate::xml::{Element, XmlError, XmlEvent, NS_STREAMS};

impl C2sSession {
    pub(super) fn drain_backend(&mut self) {
        while !self.is_closed() && self.backend_phase != BackendPhase::TlsHandshake {
            if self.held_from_backend() {
                break;
            }
            match self.backend.next_event() {
                Ok(None) => break,
                Ok(Some(ev)) => self.on_backend_event(ev),
                Err(e) => self.fail_backend(format!("invalid XML from backend: {e}")),
            }
        }
    }

    pub(super) fn on_backend_event(&mut self, ev: XmlEvent) {
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

    pub(super) fn on_backend_features(&mut self, mut features: Element) {
        let offers_tls = features.child(NS_TLS, "starttls");
        if self.cfg.backend_tls == BackendTls::StartTls && !self.backend_tls_done {
            if offers_tls.is_none() {
                return self.backend_failure(BackendFailure::Config(
                    "backend does not offer STARTTLS (backend_tls = \"starttls\")",
                ));
            }
            Element::new(NS_TLS, "starttls").write_to(&mut self.to_backend, NS_CLIENT);
            self.backend_phase = BackendPhase::AwaitProceed;
            return;
        }
        if offers_tls.is_some_and(|s| s.child(NS_TLS, "required").is_some()) && !self.backend_tls_done {
            return self
                .backend_failure(BackendFailure::Config("backend requires STARTTLS; set backend_tls = \"starttls\""));
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

    pub(super) fn on_backend_element(&mut self, el: Element) {
        if el.is(NS_STREAMS, "features") {
            return self.fail_backend("stream features outside stream negotiation".to_owned());
        }
        if &*el.ns == NS_SM {
            return self.on_backend_sm(el);
        }
        if self.drain_withholds_server_stanzas() {
            // Draining: not delivered, so not acknowledged; the server keeps it (see `drain`).
            return;
        }
        if self.transfer_swallows(&el) {
            return;
        }
        match check_backend_stanza(&el, self.bound.as_ref()) {
            Check::Pass => {}
            Check::Bounce(condition, reason) => {
                self.refuse_backend_stanza(&el, condition, None);
                let stanza = StanzaSummary::of(&el, self.bound.as_ref());
                return self.effects.push_back(Effect::Dropped { from_backend: true, stanza, reason });
            }
            Check::Drop(reason) => {
                let r = self.sm.to_client.withheld();
                self.sm_result(r);
                let stanza = StanzaSummary::of(&el, self.bound.as_ref());
                return self.effects.push_back(Effect::Dropped { from_backend: true, stanza, reason });
            }
            Check::Close(_, reason) => return self.fail_backend(reason.to_owned()),
        }
        let is_stanza = Kind::of(&el).is_some();
        if is_stanza {
            if let Some(owner) = self.roster_wait(crate::policy::Chain::C2sOut, &el) {
                return self.hold(super::hold::Direction::FromBackend, el, owner);
            }
        }
        self.relay_backend_element(el, is_stanza);
    }

    /// The rest of [`C2sSession::on_backend_element`] for an element that passed the checks
    /// (also for a stanza released from a hold, [`super::hold`]).
    pub(super) fn relay_backend_element(&mut self, el: Element, is_stanza: bool) {
        let Some(mut el) = (if is_stanza { self.police(crate::policy::Chain::C2sOut, el) } else { Some(el) }) else {
            return;
        };
        if is_stanza {
            self.transfer_backend_stanza(&mut el);
        }
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
    pub(super) fn on_backend_skipped(&mut self, reason: XmlError, root: Option<Element>) {
        let stanza = root.as_ref().and_then(|r| StanzaSummary::of(r, self.bound.as_ref()));
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
        let why = skipped_reason(&reason);
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

    /// RFC 6120 §6.4.6: after `<success/>` both streams restart. We restart the backend leg
    /// ourselves, and answer the client's new header when it comes.
    pub(super) fn restart_after_sasl(&mut self) {
        self.authenticated = true;
        self.effects.push_back(Effect::Authenticated);
        self.client.set_limits(self.cfg.limits);
        self.client.restart();
        self.client_phase = ClientPhase::Header;
        self.client_header_sent = false;
        self.backend.restart();
        self.open_backend_stream();
    }

    pub(super) fn open_backend_stream(&mut self) {
        let header = Header { to: self.domain.clone(), lang: self.lang.clone(), ..Header::default() };
        header.write(NS_CLIENT, &mut self.to_backend);
        self.backend_phase = BackendPhase::AwaitHeader;
    }
}

/// The audit reason for a backend stanza the reader skipped (shared with passive inspection).
pub fn skipped_reason(reason: &XmlError) -> &'static str {
    match reason {
        XmlError::TooLarge { .. } => "stanza from backend too large",
        XmlError::TooDeep { .. } => "stanza from backend nested too deep",
        XmlError::TooManyAttributes { .. } => "stanza from backend with too many attributes",
        XmlError::ReservedNamespace | XmlError::NestedStreamElement => "stanza from backend in a reserved namespace",
        _ => "stanza from backend not namespace-well-formed",
    }
}
