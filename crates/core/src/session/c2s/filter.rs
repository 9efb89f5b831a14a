//! Where the session meets the policy engine.
//!
//! Every stanza of a session is evaluated: client → server in chain `c2s-in`, server → client
//! in `c2s-out`, with the stanzas it wraps ([`crate::policy::wrapped`]). The verdict is carried
//! out here (forward, forward rewritten, drop, bounce to the sender, close, hold in the
//! quarantine as an [`Effect::Quarantine`]) and reported as an
//! [`Effect::Policy`] for the audit log; what is withheld or injected is told to the XEP-0198
//! accounting ([`super::sm_relay`]).

use super::C2sSession;
use crate::jid::FullJid;
use crate::policy::{Chain, Context, Evaluation, Outcome};
use crate::session::{Effect, Held, PolicyEvent, StanzaSummary};
use crate::stanza::{self, Kind, StanzaCondition};
use crate::stream::{StreamError, NS_CLIENT};
use crate::xml::Element;

impl C2sSession {
    /// Run `el` through chain `chain`. Returns the stanza to forward, or `None` when it was
    /// dropped, bounced or the stream closed (all accounted for here).
    pub(super) fn police(&mut self, chain: Chain, mut el: Element) -> Option<Element> {
        // SASL and SM elements are not stanzas and not evaluated; with no rule and a pass default
        // nothing is computed (the audit summary allocates).
        let (binding, now) = (&self.filter, self.now);
        if Kind::of(&el).is_none() {
            return Some(el);
        }
        // What the user's traffic teaches the anti-spam state (rosters, reports), whatever
        // the rules of this chain: a stranger rule on s2s-in needs the rosters seen on c2s-out.
        let antispam = binding.rates.antispam();
        match chain {
            Chain::C2sOut if binding.policy.uses_contacts() => antispam.learn_from_server(&el, self.bound.as_ref()),
            Chain::C2sIn => {
                if binding.policy.uses_contacts() {
                    antispam.request_full_roster(&mut el, self.bound.as_ref());
                }
                let threshold = binding.policy.report_threshold();
                let learned = antispam.learn_from_user(&el, self.bound.as_ref(), now, threshold);
                self.effects.extend(learned.into_iter().map(Effect::AntiSpam));
            }
            _ => {}
        }
        let binding = &self.filter;
        if binding.policy.is_pass_all(chain) {
            return Some(el);
        }
        let ctx = Context { chain, user: self.bound.as_ref(), source_ip: binding.source_ip };
        let mut eval = binding.policy.evaluate_stanza(&el, &ctx, &*binding.rates, now);
        let include_body = binding.policy.audit().include_body;
        let effects = policy_effects(chain, &el, &mut eval, self.bound.as_ref(), include_body);
        self.effects.extend(effects);
        self.effects.extend(binding.rates.antispam().take_events().into_iter().map(Effect::AntiSpam));
        match eval.outcome {
            Outcome::Pass => Some(el),
            Outcome::Rewrite(new) => Some(new),
            Outcome::Drop => {
                let r = match chain {
                    Chain::C2sOut => self.sm.to_client.withheld(),
                    Chain::C2sIn | Chain::S2sIn | Chain::S2sOut => self.sm.to_server.withheld(),
                };
                self.sm_result(r);
                None
            }
            Outcome::Bounce { condition, text } => {
                match chain {
                    Chain::C2sIn | Chain::S2sIn | Chain::S2sOut => {
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
            Outcome::Quarantine => {
                // Held silently: withheld for XEP-0198 like a drop, handed to the daemon to store.
                let r = match chain {
                    Chain::C2sOut => self.sm.to_client.withheld(),
                    Chain::C2sIn | Chain::S2sIn | Chain::S2sOut => self.sm.to_server.withheld(),
                };
                self.sm_result(r);
                if let Some(held) = held(chain, el, &eval, self.bound.as_ref()) {
                    self.effects.push_back(Effect::Quarantine(Box::new(held)));
                }
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

/// The [`Held`] record of a stanza `eval` quarantined: the rule is the outer verdict's, else
/// that of the first wrapped stanza held.
pub(crate) fn held(chain: Chain, el: Element, eval: &Evaluation, user: Option<&FullJid>) -> Option<Held> {
    let summary = StanzaSummary::of(&el, user)?;
    let rule = eval.outer.rule.clone().or_else(|| {
        eval.wrapped.iter().find(|w| w.verdict.outcome == Outcome::Quarantine).and_then(|w| w.verdict.rule.clone())
    });
    Some(Held { chain, rule: rule.map(|r| r.to_string()), stanza: el, summary })
}

/// The effects the session reports for one evaluated stanza `el` of a session bound to `user`:
/// one [`Effect::Policy`] for the stanza received (when a rule matched, or a default that is
/// not pass decided), one for each wrapped stanza a rule matched (each says what was done to
/// the whole), and an [`Effect::Dropped`] when it wraps too many stanzas. The hits are moved
/// out of `eval`; its outcome stays for the caller to carry out. Passive inspection
/// (`crate::capture`) reports through this same function, so both modes audit alike.
pub fn policy_effects(
    chain: Chain,
    el: &Element,
    eval: &mut Evaluation,
    user: Option<&FullJid>,
    include_body: bool,
) -> Vec<Effect> {
    let mut out = Vec::new();
    let Some(stanza) = StanzaSummary::of(el, user) else { return out };
    let outcome = eval.outcome.disposition();
    let body =
        |e: &Element, s: &StanzaSummary| (include_body && s.kind == Kind::Message).then(|| crate::policy::body_text(e));
    if !eval.outer.hits.is_empty() || (eval.wrapped.is_empty() && eval.outcome != Outcome::Pass) {
        let body = body(el, &stanza);
        let hits = std::mem::take(&mut eval.outer.hits);
        out.push(Effect::Policy(PolicyEvent { chain, hits, outcome, stanza, wrapped: None, body }));
    }
    for w in &mut eval.wrapped {
        let Some(stanza) = StanzaSummary::of(&w.stanza, user) else { continue };
        let body = body(&w.stanza, &stanza);
        let (hits, wrapped) = (std::mem::take(&mut w.verdict.hits), Some(w.wrapper));
        out.push(Effect::Policy(PolicyEvent { chain, hits, outcome, stanza, wrapped, body }));
    }
    if eval.too_many_wrapped {
        let reason = "stanza wraps too many forwarded stanzas";
        let (from_backend, stanza) = (chain == Chain::C2sOut, StanzaSummary::of(el, user));
        out.push(Effect::Dropped { from_backend, stanza, reason });
    }
    out
}
