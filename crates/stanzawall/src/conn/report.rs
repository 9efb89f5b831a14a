//! What each session effect means for the audit log and the metrics: one pure mapping, so
//! that every stream kind reports the same way and the mapping is unit-tested without sockets.

use serde_json::Value;
use stanzawall_core::session::Effect;

use crate::audit;
use crate::metrics::VerdictLabels;

/// The audit records and metric increments for one effect.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Report {
    /// Audit lines, in order.
    pub audit: Vec<Value>,
    /// `stanzawall_policy_verdicts_total` increments, one per matched rule.
    pub verdicts: Vec<VerdictLabels>,
    /// `stanzawall_policy_defaults_total` increments (a chain default other than pass decided).
    pub defaults: Vec<VerdictLabels>,
}

/// The report for `effect` of a session at `origin`; effects that are not decisions about
/// stanzas report nothing.
pub(super) fn report(effect: &Effect, origin: audit::Origin<'_>) -> Report {
    match effect {
        Effect::Bounced { stanza, condition, reason } => Report {
            audit: vec![audit::gateway_record(false, Some(stanza), "bounce", Some(condition.as_str()), reason, origin)],
            ..Report::default()
        },
        Effect::Dropped { from_backend, stanza, reason } => Report {
            audit: vec![audit::gateway_record(*from_backend, stanza.as_ref(), "drop", None, reason, origin)],
            ..Report::default()
        },
        Effect::Policy(event) => {
            let verdicts = event
                .hits
                .iter()
                .map(|hit| VerdictLabels {
                    rule: hit.rule.to_string(),
                    action: hit.action.as_str(),
                    log_only: if hit.log_only { "true" } else { "false" },
                })
                .collect();
            let defaults = event
                .decided_by_default()
                .then(|| VerdictLabels {
                    rule: format!("default:{}", event.chain.as_str()),
                    action: event.outcome.as_str(),
                    log_only: "false",
                })
                .into_iter()
                .collect();
            Report { audit: audit::records(event, origin), verdicts, defaults }
        }
        _ => Report::default(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use stanzawall_core::policy::{Chain, Disposition, Hit, RuleAction};
    use stanzawall_core::session::{PolicyEvent, StanzaSummary};
    use stanzawall_core::stanza::{Kind, StanzaCondition};

    use super::*;

    fn origin() -> audit::Origin<'static> {
        audit::Origin { listener: "c2s", client_ip: [192, 0, 2, 1].into(), user: Some("alice@example.test") }
    }

    fn stanza() -> StanzaSummary {
        StanzaSummary { kind: Kind::Message, ty: None, id: Some("m1".into()), from: None, to: Some("b@x".into()) }
    }

    fn hit(rule: &str, action: RuleAction, log_only: bool) -> Hit {
        Hit { rule: Arc::from(rule), action, log_only, condition: None }
    }

    fn event(hits: Vec<Hit>, outcome: Disposition) -> Effect {
        Effect::Policy(PolicyEvent { chain: Chain::C2sIn, hits, outcome, stanza: stanza(), wrapped: None, body: None })
    }

    #[test]
    fn rules_count_once_each_and_a_default_only_when_no_rule_decided() {
        let r = report(
            &event(vec![hit("watch", RuleAction::Drop, true), hit("spam", RuleAction::Drop, false)], Disposition::Drop),
            origin(),
        );
        assert_eq!(
            r.verdicts.iter().map(|v| (v.rule.as_str(), v.log_only)).collect::<Vec<_>>(),
            [("watch", "true"), ("spam", "false")]
        );
        assert!(r.defaults.is_empty());
        assert_eq!(r.audit.len(), 2);
        // Only log rules matched and the chain default dropped: one default increment and line.
        let r = report(&event(vec![hit("note", RuleAction::Log, false)], Disposition::Drop), origin());
        assert_eq!(r.defaults.len(), 1);
        assert_eq!(r.defaults[0].rule, "default:c2s-in");
        assert_eq!(r.audit.iter().filter(|l| l["rule"] == "default").count(), 1);
        // A default of pass is not reported.
        let r = report(&event(vec![hit("note", RuleAction::Log, false)], Disposition::Pass), origin());
        assert!(r.defaults.is_empty());
        assert_eq!(r.audit.len(), 1);
    }

    #[test]
    fn gateway_decisions_are_audited_and_other_effects_report_nothing() {
        let bounced = Effect::Bounced { stanza: stanza(), condition: StanzaCondition::JidMalformed, reason: "bad to" };
        let r = report(&bounced, origin());
        assert_eq!(r.audit.len(), 1);
        assert_eq!(r.audit[0]["rule"], "gateway: bad to");
        assert_eq!(r.audit[0]["condition"], "jid-malformed");
        let dropped = Effect::Dropped { from_backend: true, stanza: None, reason: "too large" };
        assert_eq!(report(&dropped, origin()).audit[0]["chain"], "c2s-out");
        assert_eq!(report(&Effect::Authenticated, origin()), Report::default());
    }
}
