//! The client leg of a c2s session: the client's stream header, STARTTLS, SASL elements and
//! stanzas, parsed from the client's bytes and relayed (checked, stamped, policed) to the
//! backend. Never writes to the backend before the backend's features are out.

use super::checks::{check_client_stanza, Check};
use super::sasl;
use super::sm::NS_SM;
use super::{
    is_channel_binding_mechanism, BackendPhase, C2sSession, ClientPhase, CloseReason, Effect, StanzaSummary, NS_BIND,
    NS_CSI, NS_SASL, NS_TLS,
};
use crate::jid;
use crate::stanza::{Kind, StanzaCondition};
use crate::stream::{Condition, Header, StreamError, NS_CLIENT, STREAM_CLOSE};
use crate::xml::{Element, XmlError, XmlEvent, NS_STREAMS};

impl C2sSession {
    /// True while the client's stream is open but the backend's features for it are not out
    /// yet (after TLS and after SASL success the backend leg is still being opened).
    pub(super) fn awaiting_features(&self) -> bool {
        self.client_phase == ClientPhase::Open
            && (self.backend_phase != BackendPhase::Open || self.pending_features.is_some())
    }

    pub(super) fn drain_client(&mut self) {
        while !matches!(self.client_phase, ClientPhase::Closed | ClientPhase::TlsHandshake | ClientPhase::Closing) {
            if self.held_from_client() {
                // A stanza waits for a roster (`hold`): what follows it waits too, in order.
                break;
            }
            if self.drain_stops_client_input() {
                // The client's acknowledgement ended the first step of a drain: what follows
                // it in the same read is not accepted (see `drain`).
                break;
            }
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

    pub(super) fn on_client_event(&mut self, ev: XmlEvent) {
        match (self.client_phase, ev) {
            (ClientPhase::Header, XmlEvent::StreamOpen { header, default_ns }) => {
                self.on_client_header(&header, default_ns.as_deref())
            }
            (ClientPhase::Open, XmlEvent::StreamClose) if self.backend_phase == BackendPhase::Open => {
                self.close_backend_stream();
                self.client_phase = ClientPhase::Closing;
                self.closing_since = Some(self.now);
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

    pub(super) fn on_client_header(&mut self, header: &Element, default_ns: Option<&str>) {
        let to = header.attr("to").map(str::to_owned);
        // RFC 6120 §4.9.1.2: an error at stream open is sent after our own header.
        self.write_client_header(to.clone().filter(|d| jid::is_domain(d)));
        if let Some((condition, why)) = header_problem(header, default_ns) {
            return self.client_error(condition, why);
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

    pub(super) fn on_client_element(&mut self, mut el: Element) {
        let ns = &*el.ns;
        if Kind::of(&el).is_some() && ns == NS_CLIENT {
            match check_client_stanza(&mut el, self.bound.as_ref()) {
                Check::Pass => {}
                Check::Close(condition, why) => return self.client_error(condition, why),
                Check::Bounce(condition, why) => return self.bounce(&el, condition, why),
                Check::Drop(why) => {
                    let r = self.sm.to_server.withheld();
                    self.sm_result(r);
                    let stanza = StanzaSummary::of(&el, self.bound.as_ref());
                    return self.effects.push_back(Effect::Dropped { from_backend: false, stanza, reason: why });
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
        if is_stanza {
            if let Some(owner) = self.roster_wait(crate::policy::Chain::C2sIn, &el) {
                return self.hold(super::hold::Direction::FromClient, el, owner);
            }
        }
        self.relay_client_element(el, is_stanza);
    }

    /// The rest of [`C2sSession::on_client_element`] for an element that passed the checks:
    /// policy, file-transfer hooks, and out to the backend (also for a stanza released from a
    /// hold, [`super::hold`]).
    pub(super) fn relay_client_element(&mut self, el: Element, is_stanza: bool) {
        let Some(el) = self.police(crate::policy::Chain::C2sIn, el) else { return };
        let Some(el) = (if is_stanza { self.transfer_client_stanza(el) } else { Some(el) }) else { return };
        self.counters.stanzas_from_client += 1;
        if is_stanza {
            self.sm.to_server.forwarded();
        }
        el.write_to(&mut self.to_backend, NS_CLIENT);
    }

    /// Answer a refused client stanza with a stanza error (or drop it where no error may be
    /// sent, RFC 6120 §8.3.1); nothing reaches the backend.
    pub(super) fn bounce(&mut self, el: &Element, condition: StanzaCondition, reason: &'static str) {
        let stanza = StanzaSummary::of(el, self.bound.as_ref());
        match (self.refuse_client_stanza(el, condition, Some(reason)), stanza) {
            (true, Some(stanza)) => self.effects.push_back(Effect::Bounced { stanza, condition, reason }),
            (_, stanza) => self.effects.push_back(Effect::Dropped { from_backend: false, stanza, reason }),
        }
    }

    pub(super) fn write_client_header(&mut self, from: Option<String>) {
        let reply = Header { from, id: Some(self.cfg.stream_id.clone()), lang: Some("en".to_owned()), to: None };
        reply.write(NS_CLIENT, &mut self.to_client);
        self.client_header_sent = true;
    }

    pub(super) fn client_xml_error(&mut self, e: XmlError) {
        self.close_with(StreamError::from(&e));
    }
}

/// What is wrong with a client's stream header, as the stream error to answer it with: the
/// stream namespace (RFC 6120 §4.8.1), the content namespace `jabber:client` (§4.8.2), version
/// 1.x (§4.7.5) and a `to` that is a domain (§4.7.2). Passive inspection asks the same
/// question of a captured header (`capture::xmpp`).
pub(crate) fn header_problem(header: &Element, default_ns: Option<&str>) -> Option<(Condition, &'static str)> {
    if !header.is(NS_STREAMS, "stream") {
        return Some((Condition::InvalidNamespace, "not a stream header"));
    }
    if default_ns != Some(NS_CLIENT) {
        return Some((Condition::InvalidNamespace, "content namespace must be jabber:client"));
    }
    let major = header.attr("version").and_then(|v| v.split('.').next()).and_then(|m| m.parse::<u32>().ok());
    if major != Some(1) {
        return Some((Condition::UnsupportedVersion, "version 1.0 is required"));
    }
    if !header.attr("to").is_some_and(jid::is_domain) {
        return Some((Condition::HostUnknown, "a valid 'to' domain is required"));
    }
    None
}
