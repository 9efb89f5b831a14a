//! Where the session meets the policy engine.
//!
//! Every stanza of a session is evaluated: client → server in chain `c2s-in`, server → client
//! in `c2s-out`, with the stanzas it wraps ([`crate::policy::wrapped`]). The verdict is carried
//! out here (forward, forward rewritten, drop, bounce to the sender, close) and reported as an
//! [`Effect::Policy`] for the audit log; what is withheld or injected is told to the XEP-0198
//! accounting ([`super::sm_relay`]).

use std::net::IpAddr;
use std::sync::Arc;

use super::{Effect, Session};
use crate::policy::{Chain, Context, Hit, Outcome, Policy, RateTable, Wrapper};
use crate::stanza::{self, Kind, StanzaCondition};
use crate::stream::{StreamError, NS_CLIENT};
use crate::xml::Element;

/// What the session needs to evaluate policy.
#[derive(Debug, Clone)]
pub struct PolicyBinding {
    /// The current policy (replaced on reload with [`Session::set_policy`]).
    pub policy: Arc<Policy>,
    /// Rate state shared by all sessions.
    pub rates: Arc<RateTable>,
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
}

impl StanzaSummary {
    /// The summary of `el`, if it is a stanza.
    pub fn of(el: &Element) -> Option<StanzaSummary> {
        let attr = |n: &str| el.attr(n).map(str::to_owned);
        Some(StanzaSummary {
            kind: Kind::of(el)?,
            ty: attr("type"),
            id: attr("id"),
            from: attr("from"),
            to: attr("to"),
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
    pub outcome: &'static str,
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
        self.hits.iter().all(|h| h.log_only || h.action == "log") && self.outcome != "pass"
    }
}

impl Session {
    /// A new policy (reload): the next stanza is evaluated against it.
    pub fn set_policy(&mut self, policy: Arc<Policy>) {
        self.filter.policy = policy;
    }

    /// Run `el` through chain `chain`. Returns the stanza to forward, or `None` when it was
    /// dropped, bounced or the stream closed (all accounted for here).
    pub(super) fn police(&mut self, chain: Chain, el: Element) -> Option<Element> {
        // Only stanzas reach here as stanzas (SASL and SM elements are not evaluated).
        let Some(stanza) = StanzaSummary::of(&el) else { return Some(el) };
        let (binding, now) = (&self.filter, self.now);
        if binding.policy.is_pass_all(chain) {
            return Some(el);
        }
        let ctx = Context { chain, user: self.bound.as_ref(), source_ip: binding.source_ip };
        let eval = binding.policy.evaluate_stanza(&el, &ctx, &binding.rates, now);
        let include_body = binding.policy.audit().include_body;
        let outcome = eval.outcome.action();
        let body = |e: &Element, s: &StanzaSummary| {
            (include_body && s.kind == Kind::Message).then(|| crate::policy::body_text(e))
        };
        // One audit event for the stanza received (when a rule matched, or a default that is not
        // pass decided), and one for each wrapped stanza a rule matched; each says what was done
        // to the whole.
        if !eval.outer.hits.is_empty() || (eval.wrapped.is_empty() && eval.outcome != Outcome::Pass) {
            let body = body(&el, &stanza);
            let hits = eval.outer.hits;
            self.effects.push_back(Effect::Policy(PolicyEvent { chain, hits, outcome, stanza, wrapped: None, body }));
        }
        for w in eval.wrapped {
            let Some(stanza) = StanzaSummary::of(&w.stanza) else { continue };
            let body = body(&w.stanza, &stanza);
            let (hits, wrapped) = (w.verdict.hits, Some(w.wrapper));
            self.effects.push_back(Effect::Policy(PolicyEvent { chain, hits, outcome, stanza, wrapped, body }));
        }
        if eval.too_many_wrapped {
            let reason = "stanza wraps too many forwarded stanzas";
            let (from_backend, stanza) = (chain == Chain::C2sOut, StanzaSummary::of(&el));
            self.effects.push_back(Effect::Dropped { from_backend, stanza, reason });
        }
        match eval.outcome {
            Outcome::Pass => Some(el),
            Outcome::Rewrite(new) => Some(new),
            Outcome::Drop => {
                let r = match chain {
                    Chain::C2sIn => self.sm.to_server.withheld(),
                    Chain::C2sOut => self.sm.to_client.withheld(),
                };
                self.sm_result(r);
                None
            }
            Outcome::Bounce { condition, text } => {
                match chain {
                    Chain::C2sIn => {
                        self.refuse_client_stanza(&el, condition, text.as_deref());
                    }
                    // A carbon or archive result comes from the user's own account: an error
                    // would go back to the user; withhold it instead.
                    Chain::C2sOut if self.is_from_own_account(&el) => {
                        let r = self.sm.to_client.withheld();
                        self.sm_result(r);
                    }
                    Chain::C2sOut => {
                        self.refuse_backend_stanza(&el, condition, text.as_deref());
                    }
                }
                None
            }
            Outcome::Close { condition, text } => {
                self.close_with(StreamError::new(condition, text));
                None
            }
        }
    }

    /// A client stanza the gateway will not forward: answer it toward the client with a stanza
    /// error, or drop it where none may be sent (RFC 6120 §8.3.1); either way the SM counters
    /// learn of it. True if an error was sent.
    pub(super) fn refuse_client_stanza(
        &mut self,
        el: &Element,
        condition: StanzaCondition,
        text: Option<&str>,
    ) -> bool {
        let domain = self.domain.clone().unwrap_or_default();
        let (sent, r) = match stanza::error_reply(el, condition, text, &domain) {
            Some(reply) => {
                reply.write_to(&mut self.to_client, NS_CLIENT);
                (true, self.sm.client_stanza_bounced())
            }
            None => (false, self.sm.to_server.withheld()),
        };
        self.sm_result(r);
        sent
    }

    /// The same for a stanza from the backend: the error goes back to its sender through the
    /// backend, on behalf of the user. True if an error was sent.
    pub(super) fn refuse_backend_stanza(
        &mut self,
        el: &Element,
        condition: StanzaCondition,
        text: Option<&str>,
    ) -> bool {
        let own = self.bound.as_ref().map(|b| b.to_string()).unwrap_or_default();
        let (sent, r) = match stanza::error_reply(el, condition, text, &own) {
            Some(reply) => {
                reply.write_to(&mut self.to_backend, NS_CLIENT);
                (true, self.sm.server_stanza_bounced())
            }
            None => (false, self.sm.to_client.withheld()),
        };
        self.sm_result(r);
        sent
    }
}
