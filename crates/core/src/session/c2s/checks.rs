//! The gateway's own checks on a c2s stanza, besides policy: one set of pure functions that
//! the session and `stanzawall explain` both call, so that explain never says "pass" for a
//! stanza the gateway refuses.
//!
//! Client → server (`c2s-in`): the sender is the bound JID (RFC 6120 §8.1.2.1: stamped, a
//! different `from` is `<invalid-from/>`), legacy authentication is refused (XEP-0078 would
//! authenticate past the gateway), iq structure is enforced (RFC 6120 §8.2.3), and `to` is
//! forwarded only prepared (RFC 7622). Server → client (`c2s-out`): carbons and roster pushes
//! only from the user's own account (XEP-0280 §11, RFC 6121 §2.1.6).

use super::{NS_CARBONS, NS_LEGACY_AUTH, NS_ROSTER};
use crate::jid::{self, FullJid};
use crate::stanza::{Kind, StanzaCondition};
use crate::stream::Condition;
use crate::xml::Element;

/// What the gateway itself does with a stanza, before policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Acceptable: policy decides next.
    Pass,
    /// Close the client's stream with this stream error.
    Close(Condition, &'static str),
    /// Refuse the stanza with this stanza error to its sender (dropped where none may be sent).
    Bounce(StanzaCondition, &'static str),
    /// Drop the stanza without an answer (audited).
    Drop(&'static str),
}

/// A stanza from the client of a session bound to `bound` (`None`: not bound yet). Stamps
/// `from` and prepares `to` in place.
pub fn check_client_stanza(el: &mut Element, bound: Option<&FullJid>) -> Check {
    let Some(kind) = Kind::of(el) else { return Check::Pass };
    match bound {
        // Before binding nothing is authorized, so a `from` is removed.
        None => {
            el.remove_attr("from");
        }
        Some(bound) => match el.attr("from") {
            Some(from) if !jid::is_own_address(from, bound) => {
                return Check::Close(Condition::InvalidFrom, "'from' does not match the authenticated address")
            }
            _ => el.set_attr("from", bound.to_string()),
        },
    }
    if kind == Kind::Iq {
        if el.child(NS_LEGACY_AUTH, "query").is_some() {
            return Check::Bounce(StanzaCondition::ServiceUnavailable, "legacy authentication is disabled");
        }
        if el.attr("id").is_none() {
            return Check::Close(Condition::InvalidXml, "iq without id");
        }
        match el.attr("type") {
            Some("get" | "set") if el.elements().count() != 1 => {
                return Check::Bounce(StanzaCondition::BadRequest, "iq get/set must have exactly one child")
            }
            Some("get" | "set" | "result" | "error") => {}
            _ => return Check::Close(Condition::InvalidXml, "iq without a valid type"),
        }
    }
    if let Some(to) = el.attr("to") {
        match jid::parse(to) {
            Some(j) => el.set_attr("to", j.to_string()),
            None => return Check::Bounce(StanzaCondition::JidMalformed, "malformed 'to' address"),
        }
    }
    Check::Pass
}

/// A stanza from the backend toward the client of a session bound to `bound`.
pub fn check_backend_stanza(el: &Element, bound: Option<&FullJid>) -> Check {
    let from_own_account = || match el.attr("from") {
        None => true,
        Some(from) => match (jid::parse(from), bound) {
            (Some(j), Some(bound)) => j == bound.to_bare(),
            _ => false,
        },
    };
    let forged = match Kind::of(el) {
        Some(Kind::Message)
            if el.elements().any(|c| &*c.ns == NS_CARBONS && matches!(c.name.as_str(), "received" | "sent")) =>
        {
            (!from_own_account()).then_some("carbon copy from a foreign sender")
        }
        Some(Kind::Iq) if el.attr("type") == Some("set") && el.child(NS_ROSTER, "query").is_some() => {
            (!from_own_account()).then_some("roster push from a foreign sender")
        }
        _ => None,
    };
    match forged {
        // Answer an iq so its sender is not left waiting; never answer a message or presence
        // from a forger (no error loops, no oracle).
        Some(reason) if el.name == "iq" => Check::Bounce(StanzaCondition::ServiceUnavailable, reason),
        Some(reason) => Check::Drop(reason),
        None => Check::Pass,
    }
}

/// The gateway's whole decision on one stanza of a bound session, in the order the session
/// takes it: its own checks, then the policy (wrapped stanzas included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The gateway refused it before policy.
    Gateway(Check),
    /// The policy decided.
    Policy(Box<crate::policy::Evaluation>),
}

/// Decide `el` in `ctx.chain` for a session bound to `ctx.user`, as the session does (c2s-in
/// stanzas are stamped and prepared in place first). `stanzawall explain` shows this.
pub fn decide(
    el: &mut Element,
    ctx: &crate::policy::Context<'_>,
    policy: &crate::policy::Policy,
    rates: &dyn crate::policy::RateStore,
    now: std::time::Instant,
) -> Decision {
    let check = match ctx.chain {
        crate::policy::Chain::C2sIn => check_client_stanza(el, ctx.user),
        crate::policy::Chain::C2sOut => check_backend_stanza(el, ctx.user),
        crate::policy::Chain::S2sIn | crate::policy::Chain::S2sOut => crate::session::s2s::check_s2s_stanza(el),
    };
    // The session learns from what it relays before policy (see `filter::police`).
    match ctx.chain {
        crate::policy::Chain::C2sOut if check == Check::Pass && policy.uses_contacts() => {
            rates.antispam().learn_from_server(el, ctx.user)
        }
        crate::policy::Chain::C2sIn if check == Check::Pass => {
            if policy.uses_contacts() {
                rates.antispam().request_full_roster(el, ctx.user);
            }
            drop(rates.antispam().learn_from_user(el, ctx.user, now, policy.report_threshold()))
        }
        _ => {}
    }
    match check {
        Check::Pass => Decision::Policy(Box::new(policy.evaluate_stanza(el, ctx, rates, now))),
        refused => Decision::Gateway(refused),
    }
}
