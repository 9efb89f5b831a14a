//! Inbound federation: a remote server (front leg) → the gateway → our server's s2s port (back
//! leg). See the parent module for the trust model.
//!
//! Order of events for one domain pair (remote R, local L):
//! 1. R's header (`to` = L, a domain we serve), our header and features: STARTTLS until TLS is
//!    up, then SASL EXTERNAL if the certificate proves R, and dialback;
//! 2. SASL EXTERNAL success, or `db:result` answered from the certificate (XEP-0344), or
//!    `db:result` checked with R's authoritative server (`Effect::VerifyDialback`);
//! 3. the pair is presented to our server with a key the gateway minted; our server checks it
//!    through its outbound s2s (answered by the `s2s-out` listener) and says `valid`;
//! 4. only then does R learn its dialback succeeded, and only then are its stanzas read.
//!
//! Until step 3 completes nothing R sends after its request is parsed (it waits in the reader,
//! within the stanza cap): a stanza can never reach a backend that has not accepted its pair.

use std::time::Instant;

use base64::Engine;

use super::common::S2sCore;
use super::{
    db, db_error, domain_attr, features, header_problem, meets, stanza_domains, AuthMethod, Dnssec, PeerCert,
    S2sSettings, S2sWrite, NS_DIALBACK, NS_SASL, NS_TLS,
};
use crate::jid::{BareJid, FullJid};
use crate::policy::{Chain, Context, Policy};
use crate::session::c2s::ROSTER_HOLD;
use crate::session::{BackendFailure, CloseReason, Counters, Effect, PolicyBinding, S2sAuth, StreamMachine};
use crate::stanza::{Kind, StanzaCondition};
use crate::stream::{Condition, Header, StreamError, STREAM_CLOSE};
use crate::xml::{Element, XmlEvent, NS_SERVER, NS_STREAMS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the remote's stream header.
    Header,
    /// Stream open.
    Open,
    /// `<proceed/>` sent; the daemon runs the TLS handshake.
    TlsHandshake,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackPhase {
    NotStarted,
    Connecting,
    AwaitHeader,
    AwaitFeatures,
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PairState {
    /// Waiting for the certificate check of the remote domain.
    CheckingCert,
    /// Waiting for the authoritative server's answer.
    Verifying,
    /// Authenticated at the gateway; not yet presented to our server.
    Authenticated,
    /// Presented to our server; waiting for its answer.
    Presented,
    /// Usable: stanzas for this pair are relayed.
    Valid,
}

#[derive(Debug, Clone)]
struct Pair {
    remote: String,
    local: String,
    state: PairState,
    method: AuthMethod,
    /// The remote's dialback key (dialback pairs: answered with `db:result type='valid'`).
    key: Option<String>,
}

/// One inbound s2s stream (see the module docs).
#[derive(Debug)]
pub struct S2sInbound {
    pub(super) core: S2sCore,
    phase: Phase,
    back: BackPhase,
    tls: bool,
    /// The header's `to` (a local domain) and `from`, lowercase.
    to: Option<String>,
    from: Option<String>,
    /// SASL EXTERNAL succeeded on this stream.
    sasl_done: bool,
    /// Features are owed once the certificate check answers.
    features_owed: bool,
    /// Certificate checks answered, by domain.
    certs: Vec<(String, PeerCert)>,
    /// A certificate check is under way.
    cert_pending: Option<String>,
    pairs: Vec<Pair>,
    /// Our server's stream id on the back leg (keys are bound to it).
    back_id: Option<String>,
    /// A stanza waiting for its recipient's roster (the component fetches it), as on c2s
    /// (`crate::session::c2s::hold`): what the peer sends after it waits behind it, in order.
    held: Option<(Element, BareJid, Instant)>,
}

impl S2sInbound {
    /// A session for a connection accepted at `now`.
    pub fn new(cfg: S2sSettings, policy: PolicyBinding, now: Instant) -> S2sInbound {
        let tls = cfg.direct_tls;
        S2sInbound {
            core: S2sCore::new(cfg, policy, now),
            phase: Phase::Header,
            back: BackPhase::NotStarted,
            tls,
            to: None,
            from: None,
            sasl_done: false,
            features_owed: false,
            certs: Vec::new(),
            cert_pending: None,
            pairs: Vec::new(),
            back_id: None,
            held: None,
        }
    }

    /// Input is held while the gateway waits for a check or for our server.
    fn waiting(&self) -> bool {
        self.cert_pending.is_some()
            || self.pairs.iter().any(|p| !matches!(p.state, PairState::Valid))
            || self.features_owed
    }

    fn error(&mut self, condition: Condition, text: &str) {
        let from = self.to.clone();
        self.core.front_error(condition, text, from);
    }

    fn cert_for(&self, domain: &str) -> Option<&PeerCert> {
        self.certs.iter().find(|(d, _)| d == domain).map(|(_, c)| c)
    }

    fn drain(&mut self) {
        while !self.core.closed && self.phase != Phase::TlsHandshake && self.held.is_none() {
            if self.waiting() {
                if self.core.front.buffered_len() > self.core.cfg.limits.stanza_bytes {
                    self.error(Condition::PolicyViolation, "too much sent while authentication is pending");
                }
                break;
            }
            match self.core.front.next_event() {
                Ok(None) => break,
                Ok(Some(ev)) => self.on_event(ev),
                Err(e) => {
                    let err = StreamError::from(&e);
                    let from = self.to.clone();
                    self.core.front_error(err.condition, &err.text.clone().unwrap_or_default(), from);
                }
            }
        }
    }

    fn on_event(&mut self, ev: XmlEvent) {
        match (self.phase, ev) {
            (Phase::Header, XmlEvent::StreamOpen { header, default_ns }) => {
                self.on_header(&header, default_ns.as_deref())
            }
            (_, XmlEvent::StreamClose) => {
                self.core.to_front.extend_from_slice(STREAM_CLOSE);
                self.core.close_back_stream();
                self.core.finish(CloseReason::ClientClosed);
            }
            (_, XmlEvent::Whitespace) => {}
            (Phase::Open, XmlEvent::Stanza(el)) => self.on_element(el),
            _ => self.error(Condition::BadFormat, "unexpected element"),
        }
    }

    fn on_header(&mut self, header: &Element, default_ns: Option<&str>) {
        let to = domain_attr(header, "to");
        let from = domain_attr(header, "from");
        let ours = to.clone().filter(|d| self.core.cfg.is_local(d));
        self.core.write_front_header(ours.clone(), from.clone());
        if let Some((c, why)) = header_problem(header, default_ns) {
            return self.error(c, why);
        }
        let Some(to) = ours else {
            return self.error(Condition::HostUnknown, "this gateway does not serve that domain");
        };
        if self.to.as_ref().is_some_and(|t| *t != to) {
            return self.error(Condition::HostUnknown, "'to' changed on stream restart");
        }
        self.to = Some(to);
        if let Some(f) = &from {
            if self.core.cfg.is_local(f) {
                return self.error(Condition::InvalidFrom, "a remote server cannot claim our own domain");
            }
            if let Some(why) = self.core.filter.policy.s2s().refusal(f) {
                return self.refuse(f.clone(), Condition::PolicyViolation, why);
            }
        }
        self.from = from.clone();
        self.phase = Phase::Open;
        match from {
            // After TLS the certificate may prove the claimed domain: ask before the features,
            // which offer SASL EXTERNAL only then.
            Some(f) if self.tls && !self.sasl_done && self.cert_for(&f).is_none() => {
                self.features_owed = true;
                self.ask_cert(f);
            }
            _ => self.write_features(),
        }
    }

    fn write_features(&mut self) {
        self.features_owed = false;
        let external =
            !self.sasl_done && self.from.as_ref().and_then(|f| self.cert_for(f)).and_then(PeerCert::level).is_some();
        features(self.tls, self.core.cfg.require_tls, external).write_s2s(&mut self.core.to_front);
    }

    fn ask_cert(&mut self, domain: String) {
        self.cert_pending = Some(domain.clone());
        self.core.effects.push_back(Effect::CheckPeerCertificate { domain });
    }

    /// Refuse a remote domain: audit, then close with `condition`.
    fn refuse(&mut self, remote: String, condition: Condition, why: &str) {
        self.core.effects.push_back(Effect::S2sRefused { direction: "in", remote, reason: why.to_owned() });
        self.error(condition, why);
    }

    fn on_element(&mut self, el: Element) {
        let ns = &*el.ns;
        if ns == NS_TLS && el.name == "starttls" && !self.tls {
            Element::new(NS_TLS, "proceed").write_s2s(&mut self.core.to_front);
            self.phase = Phase::TlsHandshake;
            self.core.front_in_tls_handshake = true;
            let domain = self.to.clone().unwrap_or_default();
            return self.core.effects.push_back(Effect::StartClientTls { domain });
        }
        if !self.tls && self.core.cfg.require_tls {
            // RFC 6120 §5.3.1 with TLS required: nothing but STARTTLS before it.
            let remote = self.from.clone().unwrap_or_default();
            return self.refuse(remote, Condition::PolicyViolation, "TLS is required before anything else");
        }
        if ns == NS_SASL && el.name == "auth" {
            return self.on_sasl_auth(&el);
        }
        if ns == NS_DIALBACK && el.name == "result" && el.attr("type").is_none() {
            return self.on_db_result(&el);
        }
        if ns == NS_DIALBACK && el.name == "verify" && el.attr("type").is_none() {
            return self.on_db_verify(&el);
        }
        if ns == NS_STREAMS && el.name == "error" {
            let err = StreamError::from_element(&el);
            self.core.close_back_stream();
            return self.core.finish(CloseReason::ClientFailed(format!("remote stream error: {err}")));
        }
        if ns == NS_SERVER && Kind::of(&el).is_some() {
            return self.on_stanza(el);
        }
        self.error(Condition::UnsupportedStanzaType, "unsupported top-level element")
    }

    fn on_sasl_auth(&mut self, el: &Element) {
        let failure = |reason: &str| Element::new(NS_SASL, "failure").with_child(Element::new(NS_SASL, reason));
        if el.attr("mechanism") != Some("EXTERNAL") || self.sasl_done {
            return failure("invalid-mechanism").write_s2s(&mut self.core.to_front);
        }
        let (Some(remote), Some(local)) = (self.from.clone(), self.to.clone()) else {
            return failure("not-authorized").write_s2s(&mut self.core.to_front);
        };
        // XEP-0178 §3: the authorization identity is empty ("=") or the stream's `from`.
        let text = el.text();
        let authzid = match text.trim() {
            "" | "=" => Some(remote.clone()),
            b64 => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .map(|s| s.to_ascii_lowercase()),
        };
        let cert = self.cert_for(&remote).cloned().unwrap_or(PeerCert::None);
        let required = self.core.filter.policy.s2s().required(&remote);
        if authzid.as_deref() != Some(remote.as_str()) || !meets(required, &cert, false) || cert.level().is_none() {
            failure("not-authorized").write_s2s(&mut self.core.to_front);
            return;
        }
        if self.core.over_domain_rate(&remote, Chain::S2sIn, true) {
            return self.refuse(remote, Condition::PolicyViolation, "too many streams from this domain");
        }
        Element::new(NS_SASL, "success").write_s2s(&mut self.core.to_front);
        self.sasl_done = true;
        // RFC 6120 §6.4.6: the stream restarts after success.
        self.core.front.restart();
        self.core.front_header_sent = false;
        self.phase = Phase::Header;
        self.authenticated(remote, local, AuthMethod::SaslExternal, None);
    }

    fn on_db_result(&mut self, el: &Element) {
        let (Some(remote), Some(local)) = (domain_attr(el, "from"), domain_attr(el, "to")) else {
            return self.error(Condition::ImproperAddressing, "db:result needs valid 'from' and 'to'");
        };
        if !self.core.cfg.is_local(&local) {
            let err = db_error("result", &local, &remote, "item-not-found");
            return err.write_s2s(&mut self.core.to_front);
        }
        if self.core.cfg.is_local(&remote) {
            return self.error(Condition::InvalidFrom, "a remote server cannot claim our own domain");
        }
        if let Some(why) = self.core.filter.policy.s2s().refusal(&remote) {
            return self.refuse(remote, Condition::PolicyViolation, why);
        }
        if self.pairs.iter().any(|p| p.remote == remote && p.local == local) {
            return; // already under way or done: a repeated request changes nothing
        }
        if self.core.over_domain_rate(&remote, Chain::S2sIn, true) {
            return self.refuse(remote, Condition::PolicyViolation, "too many streams from this domain");
        }
        let key = el.text();
        self.pairs.push(Pair {
            remote: remote.clone(),
            local,
            state: PairState::CheckingCert,
            method: AuthMethod::Dialback,
            key: Some(key),
        });
        match (self.tls, self.cert_for(&remote)) {
            (true, None) => self.ask_cert(remote),
            _ => self.decide_dialback(&remote),
        }
    }

    /// The certificate of `remote` is known (or there is none): answer its dialback request
    /// from it (XEP-0344), or ask its authoritative server, or refuse.
    fn decide_dialback(&mut self, remote: &str) {
        let Some(i) = self.pairs.iter().position(|p| p.remote == remote && p.state == PairState::CheckingCert) else {
            return;
        };
        let cert = self.cert_for(remote).cloned().unwrap_or(PeerCert::None);
        let required = self.core.filter.policy.s2s().required(remote);
        let pair = self.pairs[i].clone();
        if cert.level().is_some() && meets(required, &cert, false) {
            self.pairs.remove(i);
            return self.authenticated(pair.remote, pair.local, AuthMethod::DialbackCertificate, pair.key);
        }
        if !meets(required, &cert, true) {
            self.pairs.remove(i);
            db("result", &pair.local, &pair.remote).with_attr("type", "invalid").write_s2s(&mut self.core.to_front);
            let why = format!(
                "{remote} must be authenticated by {} (require_authenticated); its certificate: {}",
                required.as_str(),
                match &cert {
                    PeerCert::Invalid(why) => why.clone(),
                    other => other.as_str().to_owned(),
                }
            );
            self.core.effects.push_back(Effect::S2sRefused {
                direction: "in",
                remote: pair.remote,
                reason: why.clone(),
            });
            return self.error(Condition::NotAuthorized, &why);
        }
        self.pairs[i].state = PairState::Verifying;
        self.core.effects.push_back(Effect::VerifyDialback {
            remote: pair.remote,
            local: pair.local,
            id: self.core.cfg.stream_id.clone(),
            key: pair.key.unwrap_or_default(),
        });
    }

    /// A pair passed at the gateway: audit it and present it to our server.
    fn authenticated(&mut self, remote: String, local: String, method: AuthMethod, key: Option<String>) {
        let cert = self.cert_for(&remote).cloned().unwrap_or(PeerCert::None);
        self.core.effects.push_back(Effect::S2sAuthenticated(S2sAuth {
            direction: "in",
            remote: remote.clone(),
            local: local.clone(),
            method,
            cert,
            dnssec: Dnssec::NotLooked,
        }));
        self.pairs.push(Pair { remote, local, state: PairState::Authenticated, method, key });
        self.present();
    }

    /// Present every authenticated pair to our server (XEP-0220 with a key we minted).
    fn present(&mut self) {
        match self.back {
            BackPhase::NotStarted => {
                let Some(local) = self.pairs.first().map(|p| p.local.clone()) else { return };
                self.back = BackPhase::Connecting;
                self.core.effects.push_back(Effect::ConnectBackend { domain: local });
            }
            BackPhase::Open => {
                let id = self.back_id.clone().unwrap_or_default();
                for p in self.pairs.iter_mut().filter(|p| p.state == PairState::Authenticated) {
                    let key = self.core.cfg.dialback.key(&p.local, &p.remote, &id);
                    db("result", &p.remote, &p.local).with_text(key).write_s2s(&mut self.core.to_back);
                    p.state = PairState::Presented;
                }
            }
            _ => {}
        }
    }

    /// `db:verify` from a remote checking a key our outbound side sent it (we are the
    /// authoritative server for `to`).
    fn on_db_verify(&mut self, el: &Element) {
        let (Some(receiving), Some(originating), Some(id)) =
            (domain_attr(el, "from"), domain_attr(el, "to"), el.attr("id").map(str::to_owned))
        else {
            return self.error(Condition::ImproperAddressing, "db:verify needs 'from', 'to' and 'id'");
        };
        if !self.core.cfg.is_local(&originating) {
            let err = db_error("verify", &originating, &receiving, "item-not-found");
            return err.with_attr("id", id).write_s2s(&mut self.core.to_front);
        }
        let valid = self.core.cfg.dialback.verify(&receiving, &originating, &id, &el.text());
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
        if !self.core.cfg.is_local(&to) {
            return self.error(Condition::HostUnknown, "stanza addressed to a domain we do not serve");
        }
        if !self.pairs.iter().any(|p| p.remote == from && p.local == to && p.state == PairState::Valid) {
            return self.error(Condition::InvalidFrom, "the stanza's domains were not authenticated on this stream");
        }
        if self.core.over_domain_rate(&from, Chain::S2sIn, false) {
            return self.core.refuse_front_stanza(
                &el,
                StanzaCondition::PolicyViolation,
                "stanza rate of the domain exceeded",
            );
        }
        if let Some(owner) = self.roster_wait(&el) {
            self.held = Some((el, owner, self.core.now + ROSTER_HOLD));
            return;
        }
        self.forward(el);
    }

    fn forward(&mut self, el: Element) {
        let Some(el) = self.core.police(Chain::S2sIn, el) else { return };
        self.core.counters.stanzas_from_client += 1;
        el.write_s2s(&mut self.core.to_back);
    }

    /// Whose roster `el` should wait for: a `stranger*`/`roster_known` rule of `s2s-in` asks
    /// about its local recipient, whose roster is unknown and being fetched. Spam comes mostly
    /// over federation, so this is where the fetch matters most (README "Rosters").
    fn roster_wait(&self, el: &Element) -> Option<BareJid> {
        let b = &self.core.filter;
        if !b.policy.uses_contacts() || b.policy.is_pass_all(Chain::S2sIn) {
            return None;
        }
        let a = b.rates.antispam();
        let ctx = Context { chain: Chain::S2sIn, user: None, source_ip: b.source_ip };
        let owner = b.policy.roster_owner(el, &ctx)?;
        if a.contacts.is_known(&owner) {
            return None;
        }
        a.fetch.want(&owner, self.core.now).then_some(owner)
    }

    /// Decide the held stanza once its roster is known, its fetch ended or its time is up
    /// (then with what is known: an unknown roster fails open), and read on behind it.
    fn release_held(&mut self, now: Instant) {
        let a = self.core.filter.rates.antispam();
        let ready = self
            .held
            .as_ref()
            .is_some_and(|(_, owner, until)| now >= *until || a.contacts.is_known(owner) || !a.fetch.is_waiting(owner));
        if !ready {
            return;
        }
        let Some((el, _, _)) = self.held.take() else { return };
        if self.core.closed {
            return;
        }
        self.forward(el);
        self.drain();
    }

    fn drain_back(&mut self) {
        while !self.core.closed {
            match self.core.back.next_event() {
                Ok(None) => break,
                Ok(Some(ev)) => self.on_back_event(ev),
                Err(e) => self.back_failure(BackendFailure::Protocol(format!("backend sent bad XML: {e}"))),
            }
        }
    }

    fn back_failure(&mut self, failure: BackendFailure) {
        let err = StreamError::new(Condition::InternalServerError, None);
        let from = self.to.clone();
        self.core.front_error_no_finish(&err, from);
        self.core.close_back_stream();
        self.core.finish(CloseReason::BackendFailed(failure));
    }

    fn on_back_event(&mut self, ev: XmlEvent) {
        match (self.back, ev) {
            (BackPhase::AwaitHeader, XmlEvent::StreamOpen { header, default_ns }) => {
                if header_problem(&header, default_ns.as_deref()).is_some() {
                    return self.back_failure(BackendFailure::Protocol(
                        "backend stream header is not jabber:server 1.0".into(),
                    ));
                }
                let Some(id) = header.attr("id").filter(|i| !i.is_empty()) else {
                    return self.back_failure(BackendFailure::Protocol("backend stream header has no id".into()));
                };
                self.back_id = Some(id.to_owned());
                self.back = BackPhase::AwaitFeatures;
            }
            (BackPhase::AwaitFeatures, XmlEvent::Stanza(f)) if f.is(NS_STREAMS, "features") => {
                if f.child(NS_TLS, "starttls").is_some_and(|s| s.child(NS_TLS, "required").is_some()) {
                    return self.back_failure(BackendFailure::Config(
                        "our server requires TLS on its s2s port; the gateway reaches it in plaintext (set s2s_require_encryption = false / s2s_use_starttls: optional for the loopback leg)",
                    ));
                }
                self.back = BackPhase::Open;
                self.present();
            }
            (BackPhase::Open, XmlEvent::Stanza(el)) if &*el.ns == NS_DIALBACK && el.name == "result" => {
                self.on_back_db_result(&el)
            }
            (_, XmlEvent::Stanza(el)) if el.is(NS_STREAMS, "error") => {
                let err = StreamError::from_element(&el);
                if !self.core.front_in_tls_handshake {
                    err.to_element().write_s2s(&mut self.core.to_front);
                    self.core.to_front.extend_from_slice(STREAM_CLOSE);
                }
                self.core.back_open = false;
                self.core.finish(CloseReason::BackendError(err));
            }
            (_, XmlEvent::StreamClose) => {
                self.core.to_front.extend_from_slice(STREAM_CLOSE);
                self.core.close_back_stream();
                self.core.finish(CloseReason::BackendClosed);
            }
            (_, XmlEvent::Whitespace) => {}
            (BackPhase::Open, XmlEvent::Stanza(el)) => {
                self.core.drop_back_stanza(&el, "our server sent on an inbound s2s stream (bidi is not offered)")
            }
            (BackPhase::Open, XmlEvent::Skipped { .. }) => {}
            _ => self.back_failure(BackendFailure::Protocol("unexpected element from the backend".into())),
        }
    }

    fn on_back_db_result(&mut self, el: &Element) {
        let (Some(local), Some(remote)) = (domain_attr(el, "from"), domain_attr(el, "to")) else {
            return self.back_failure(BackendFailure::Protocol("db:result without from/to".into()));
        };
        let Some(i) =
            self.pairs.iter().position(|p| p.remote == remote && p.local == local && p.state == PairState::Presented)
        else {
            return;
        };
        if el.attr("type") != Some("valid") {
            return self.back_failure(BackendFailure::Protocol(format!(
                "our server did not accept {remote} → {local} presented by the gateway (is its outbound s2s routed to the s2s-out listener?)"
            )));
        }
        self.pairs[i].state = PairState::Valid;
        self.core.established = true;
        let p = self.pairs[i].clone();
        if p.method != AuthMethod::SaslExternal {
            db("result", &p.local, &p.remote).with_attr("type", "valid").write_s2s(&mut self.core.to_front);
        }
    }
}

impl StreamMachine for S2sInbound {
    /// An s2s-in stanza released from the quarantine goes on to our server, if this stream
    /// still has its domain pair authenticated (RFC 6120 §8.1.2.2: never a pair it has not).
    fn deliver_released(&mut self, chain: Chain, stanza: Element) -> Result<(), crate::session::DeliverRefused> {
        use crate::session::DeliverRefused;
        if self.core.closed {
            return Err(DeliverRefused::Closed);
        }
        if chain != Chain::S2sIn {
            return Err(DeliverRefused::WrongStream);
        }
        let Ok((from, to)) = stanza_domains(&stanza) else { return Err(DeliverRefused::WrongStream) };
        if !self.pairs.iter().any(|p| p.remote == from && p.local == to && p.state == PairState::Valid) {
            return Err(DeliverRefused::NotEstablished);
        }
        stanza.write_s2s(&mut self.core.to_back);
        Ok(())
    }

    fn client_bytes(&mut self, data: &[u8], now: Instant) {
        self.core.tick(now);
        if self.core.closed || self.phase == Phase::TlsHandshake {
            return;
        }
        self.core.front.feed(data);
        self.drain();
    }

    fn backend_bytes(&mut self, data: &[u8], now: Instant) {
        self.core.tick(now);
        if self.core.closed {
            return;
        }
        self.core.back.feed(data);
        self.drain_back();
        self.drain();
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
        let hold = self.held.as_ref().map(|(_, _, until)| *until);
        match (self.core.poll_timeout(), hold) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.core.now = self.core.now.max(now);
        self.release_held(now);
        if self.core.poll_timeout().is_none_or(|due| now < due) {
            return;
        }
        self.error(Condition::ConnectionTimeout, "no traffic or authentication in time");
    }

    fn paused(&self) -> (bool, bool) {
        (self.held.is_some(), false)
    }

    fn wake(&mut self, now: Instant) {
        self.core.tick(now);
        self.release_held(now);
    }

    fn take_client_buffered(&mut self) -> Vec<u8> {
        self.core.front.take_buffered()
    }

    fn take_backend_buffered(&mut self) -> Vec<u8> {
        Vec::new()
    }

    fn client_tls_established(&mut self) {
        if self.core.closed || self.phase != Phase::TlsHandshake {
            return;
        }
        self.tls = true;
        self.core.front_in_tls_handshake = false;
        self.core.front.restart();
        self.core.front_header_sent = false;
        self.phase = Phase::Header;
    }

    fn backend_connected(&mut self) {
        if self.core.closed || self.back != BackPhase::Connecting {
            return;
        }
        let Some(p) = self.pairs.first() else { return };
        let header = Header { from: Some(p.remote.clone()), to: Some(p.local.clone()), id: None, lang: None };
        header.write_s2s(&mut self.core.to_back);
        self.core.back_open = true;
        self.back = BackPhase::AwaitHeader;
    }

    fn backend_tls_established(&mut self) {}

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
        let from = self.to.clone();
        self.core.shutdown(from, false);
    }

    fn refuse(&mut self, condition: Condition, text: &str) {
        self.error(condition, text);
    }

    fn set_policy(&mut self, policy: std::sync::Arc<Policy>) {
        self.core.filter.policy = policy;
        if self.core.closed {
            return;
        }
        // A reload that denies a domain ends its live streams (README "Federation").
        let refused = self
            .pairs
            .iter()
            .map(|p| p.remote.clone())
            .chain(self.from.clone())
            .find_map(|r| self.core.filter.policy.s2s().refusal(&r).map(|why| (r, why)));
        if let Some((remote, why)) = refused {
            self.refuse(remote, Condition::PolicyViolation, why);
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
        self.to.as_deref()
    }

    fn chains(&self) -> (Chain, Chain) {
        (Chain::S2sIn, Chain::S2sOut)
    }

    fn peer_certificate(&mut self, domain: &str, cert: PeerCert) {
        if self.core.closed || self.cert_pending.as_deref() != Some(domain) {
            return;
        }
        self.cert_pending = None;
        self.certs.push((domain.to_owned(), cert));
        if self.features_owed {
            self.write_features();
        }
        self.decide_dialback(domain);
        self.drain();
    }

    fn dialback_result(&mut self, remote: &str, local: &str, result: Result<bool, String>) {
        // A closed session writes nothing more (the answer may come after a backend failure).
        if self.core.closed {
            return;
        }
        let Some(i) =
            self.pairs.iter().position(|p| p.remote == remote && p.local == local && p.state == PairState::Verifying)
        else {
            return;
        };
        let pair = self.pairs.remove(i);
        match result {
            Ok(true) => self.authenticated(pair.remote, pair.local, AuthMethod::Dialback, pair.key),
            other => {
                db("result", &pair.local, &pair.remote).with_attr("type", "invalid").write_s2s(&mut self.core.to_front);
                let why = match other {
                    Err(e) => format!("dialback for {remote} could not be verified: {e}"),
                    _ => format!("{remote}'s authoritative server says the dialback key is invalid"),
                };
                self.refuse(pair.remote, Condition::NotAuthorized, &why);
            }
        }
        self.drain();
    }
}
