//! What each session effect means for the audit log and the metrics: one pure mapping, so
//! that every stream kind reports the same way and the mapping is unit-tested without sockets.

use serde_json::Value;
use std::net::IpAddr;

use stanzawall_core::policy::Chain;
use stanzawall_core::session::{Effect, StanzaSummary};

use crate::audit;
use crate::metrics::{AntiSpamLabels, S2sAuthLabels, VerdictLabels};

/// The audit records and metric increments for one effect.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Report {
    /// Audit lines, in order.
    pub audit: Vec<Value>,
    /// `stanzawall_policy_verdicts_total` increments, one per matched rule.
    pub verdicts: Vec<VerdictLabels>,
    /// `stanzawall_policy_defaults_total` increments (a chain default other than pass decided).
    pub defaults: Vec<VerdictLabels>,
    /// `stanzawall_s2s_authenticated_total` increment.
    pub s2s_auth: Option<S2sAuthLabels>,
    /// `stanzawall_s2s_refused_total` increment (the direction).
    pub s2s_refused: Option<&'static str>,
    /// `stanzawall_antispam_waves_total` / `stanzawall_antispam_reports_total{reason}` increment.
    pub antispam: Option<AntiSpamLabels>,
}

/// The report for `effect` of a session on `listener` from `client_ip`; the session's user
/// comes with the effect (`StanzaSummary::user`). Effects that are not decisions about stanzas
/// report nothing.
pub(crate) fn report(effect: &Effect, listener: &str, client_ip: IpAddr, chains: (Chain, Chain)) -> Report {
    let chain = |from_backend: bool| if from_backend { chains.1 } else { chains.0 };
    let user = |s: Option<&StanzaSummary>| s.and_then(|s| s.user.as_ref()).map(ToString::to_string);
    match effect {
        Effect::Bounced { stanza, condition, reason } => {
            let user = user(Some(stanza));
            let origin = audit::Origin { listener, client_ip, user: user.as_deref() };
            let line =
                audit::gateway_record(chain(false), Some(stanza), "bounce", Some(condition.as_str()), reason, origin);
            Report { audit: vec![line], ..Report::default() }
        }
        Effect::Dropped { from_backend, stanza, reason } => {
            let user = user(stanza.as_ref());
            let origin = audit::Origin { listener, client_ip, user: user.as_deref() };
            let line = audit::gateway_record(chain(*from_backend), stanza.as_ref(), "drop", None, reason, origin);
            Report { audit: vec![line], ..Report::default() }
        }
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
            let user = user(Some(&event.stanza));
            let origin = audit::Origin { listener, client_ip, user: user.as_deref() };
            Report { audit: audit::records(event, origin), verdicts, defaults, ..Report::default() }
        }
        Effect::S2sAuthenticated(a) => {
            let origin = audit::Origin { listener, client_ip, user: None };
            let fields = serde_json::json!({
                "local": a.local,
                "method": a.method.as_str(),
                "certificate": a.cert.as_str(),
                "certificate_error": match &a.cert { stanzawall_core::session::s2s::PeerCert::Invalid(w) => Some(w.as_str()), _ => None },
                "dnssec": a.dnssec.as_str(),
            });
            let line = audit::s2s_record("s2s-authenticated", a.direction, &a.remote, fields, origin);
            let labels = S2sAuthLabels {
                direction: a.direction,
                method: a.method.as_str(),
                certificate: a.cert.as_str(),
                dnssec: a.dnssec.as_str(),
            };
            Report { audit: vec![line], s2s_auth: Some(labels), ..Report::default() }
        }
        Effect::S2sRefused { direction, remote, reason } => {
            let origin = audit::Origin { listener, client_ip, user: None };
            let line =
                audit::s2s_record("s2s-refused", direction, remote, serde_json::json!({ "reason": reason }), origin);
            Report { audit: vec![line], s2s_refused: Some(direction), ..Report::default() }
        }
        Effect::AntiSpam(event) => {
            use stanzawall_core::antispam::Event;
            let user = match event {
                Event::Report { reporter, .. } => Some(reporter.to_string()),
                Event::Wave { .. } | Event::Listed { .. } | Event::Unlisted { .. } => None,
            };
            let origin = audit::Origin { listener, client_ip, user: user.as_deref() };
            let labels = match event {
                Event::Wave { .. } => AntiSpamLabels { event: "wave", reason: "" },
                Event::Report { reason, .. } => AntiSpamLabels { event: "report", reason },
                Event::Listed { .. } => AntiSpamLabels { event: "listed", reason: "" },
                Event::Unlisted { .. } => AntiSpamLabels { event: "unlisted", reason: "" },
            };
            Report { audit: vec![audit::antispam_record(event, origin)], antispam: Some(labels), ..Report::default() }
        }
        _ => Report::default(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use stanzawall_core::policy::{Chain, Disposition, Hit, RuleAction};
    use stanzawall_core::session::PolicyEvent;
    use stanzawall_core::stanza::StanzaCondition;

    use super::*;

    fn report(effect: &Effect) -> Report {
        super::report(effect, "c2s", [192, 0, 2, 1].into(), (Chain::C2sIn, Chain::C2sOut))
    }

    fn stanza() -> StanzaSummary {
        let user = stanzawall_core::jid::parse_full("alice@example.test/phone");
        let el = stanzawall_core::xml::Element::new(stanzawall_core::stream::NS_CLIENT, "message")
            .with_attr("id", "m1")
            .with_attr("to", "b@x");
        StanzaSummary::of(&el, user.as_ref()).unwrap()
    }

    fn hit(rule: &str, action: RuleAction, log_only: bool) -> Hit {
        Hit { rule: Arc::from(rule), action, log_only, condition: None, note: None }
    }

    fn event(hits: Vec<Hit>, outcome: Disposition) -> Effect {
        Effect::Policy(PolicyEvent { chain: Chain::C2sIn, hits, outcome, stanza: stanza(), wrapped: None, body: None })
    }

    #[test]
    fn rules_count_once_each_and_a_default_only_when_no_rule_decided() {
        let r = report(&event(
            vec![hit("watch", RuleAction::Drop, true), hit("spam", RuleAction::Drop, false)],
            Disposition::Drop,
        ));
        assert_eq!(
            r.verdicts.iter().map(|v| (v.rule.as_str(), v.log_only)).collect::<Vec<_>>(),
            [("watch", "true"), ("spam", "false")]
        );
        assert!(r.defaults.is_empty());
        assert_eq!(r.audit.len(), 2);
        // Only log rules matched and the chain default dropped: one default increment and line.
        let r = report(&event(vec![hit("note", RuleAction::Log, false)], Disposition::Drop));
        assert_eq!(r.defaults.len(), 1);
        assert_eq!(r.defaults[0].rule, "default:c2s-in");
        assert_eq!(r.audit.iter().filter(|l| l["rule"] == "default").count(), 1);
        // A default of pass is not reported.
        let r = report(&event(vec![hit("note", RuleAction::Log, false)], Disposition::Pass));
        assert!(r.defaults.is_empty());
        assert_eq!(r.audit.len(), 1);
    }

    #[test]
    fn gateway_decisions_are_audited_and_other_effects_report_nothing() {
        let bounced = Effect::Bounced { stanza: stanza(), condition: StanzaCondition::JidMalformed, reason: "bad to" };
        let r = report(&bounced);
        assert_eq!(r.audit.len(), 1);
        assert_eq!(r.audit[0]["rule"], "gateway: bad to");
        assert_eq!(r.audit[0]["condition"], "jid-malformed");
        assert_eq!(r.audit[0]["user"], "alice@example.test", "the user travels with the effect");
        let dropped = Effect::Dropped { from_backend: true, stanza: None, reason: "too large" };
        assert_eq!(report(&dropped).audit[0]["chain"], "c2s-out");
        assert_eq!(report(&Effect::Authenticated), Report::default());
    }

    #[test]
    fn report_fed_listings_and_quarantine_verdicts_are_audited_and_counted() {
        use stanzawall_core::antispam::Event;
        let jid = stanzawall_core::jid::parse("spammer@spam.test").unwrap().to_bare();
        let listed =
            Event::Listed { jid, list: "reported".into(), reporters: 3, ttl: std::time::Duration::from_secs(60) };
        let r = report(&Effect::AntiSpam(listed));
        assert_eq!(r.antispam, Some(AntiSpamLabels { event: "listed", reason: "" }));
        let line = &r.audit[0];
        assert_eq!((line["event"].as_str(), line["jid"].as_str()), (Some("report-listed"), Some("spammer@spam.test")));
        assert_eq!(
            (line["list"].as_str(), line["reporters"].as_u64(), line["ttl_seconds"].as_u64()),
            (Some("reported"), Some(3), Some(60))
        );
        // A quarantine rule's own record: its action and outcome say quarantine.
        let r = report(&event(vec![hit("hold", RuleAction::Quarantine, false)], Disposition::Quarantine));
        assert_eq!(
            (r.audit[0]["action"].as_str(), r.audit[0]["outcome"].as_str()),
            (Some("quarantine"), Some("quarantine"))
        );
        assert_eq!(r.verdicts[0].action, "quarantine");
    }
}
