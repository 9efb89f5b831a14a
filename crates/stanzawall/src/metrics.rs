//! Prometheus metrics: the families and their text encoding (served as `GET /metrics` by the
//! admin listener, [`crate::admin`]).
//!
//! Each family is registered once at start; sessions update them through [`Metrics`] (atomic
//! counters, no locks on the stanza path).

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChainLabels {
    pub chain: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub rule: String,
    pub action: &'static str,
    pub log_only: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub side: &'static str,
    pub condition: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    pub side: &'static str,
    pub reason: &'static str,
}

/// Labels of `stanzawall_antispam_events_total`: `wave` (a wave detected) or `report` (a
/// XEP-0377 report, with its reason).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AntiSpamLabels {
    pub event: &'static str,
    pub reason: &'static str,
}

/// Labels of `stanzawall_quarantine_events_total`: `held`, `released`, `deleted`, `expired`,
/// `refused` (not stored: the quarantine was full or failed; the stanza was dropped); `kind`
/// `stanza` or `file` (a file a `file` rule held).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuarantineLabels {
    pub event: &'static str,
    /// `stanza` or `file`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct S2sAuthLabels {
    pub direction: &'static str,
    pub method: &'static str,
    pub certificate: &'static str,
    pub dnssec: &'static str,
}

/// Every metric family of the daemon.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Sessions open now.
    pub sessions: Gauge,
    /// Sessions accepted since start.
    pub sessions_total: Counter,
    /// Stanzas forwarded per chain.
    pub stanzas: Family<ChainLabels, Counter>,
    /// Rule matches.
    pub verdicts: Family<VerdictLabels, Counter>,
    /// Stanzas decided by a chain's default other than pass.
    pub defaults: Family<VerdictLabels, Counter>,
    /// Bytes per direction.
    pub bytes: Family<DirectionLabels, Counter>,
    /// Connections refused at accept.
    pub refused: Family<ReasonLabels, Counter>,
    /// Stream errors that ended sessions, by side and condition (parse errors included).
    pub stream_errors: Family<ErrorLabels, Counter>,
    /// Sessions ended, by side and kind of close (`client-not-reading`, `backend-io`, `backend-protocol`, …).
    pub sessions_closed: Family<CloseLabels, Counter>,
    /// Audit records that could not be written.
    pub audit_failures: Counter,
    /// s2s domain pairs authenticated, by direction, method, certificate and DNSSEC status.
    pub s2s_authenticated: Family<S2sAuthLabels, Counter>,
    /// Remote domains refused (policy, authentication, TLS), by direction.
    pub s2s_refused: Family<DirectionLabels, Counter>,
    /// Anti-spam events: waves detected, spam reports recorded (by reason).
    pub antispam: Family<AntiSpamLabels, Counter>,
    /// Quarantine events (held, released, deleted, expired, refused).
    pub quarantine: Family<QuarantineLabels, Counter>,
    /// Entries held in the quarantine now (as the store last counted them).
    pub quarantine_entries: Gauge,
    /// Bytes of held stanzas in the quarantine now.
    pub quarantine_bytes: Gauge,
}

impl Metrics {
    /// Register every family in `registry`.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        // Series that exist from the start read 0 rather than missing (alerts on rate() work
        // before the first event).
        for reason in stanzawall_core::guard::Refusal::ALL {
            drop(self.refused.get_or_create(&ReasonLabels { reason: reason.as_str() }));
        }
        for chain in stanzawall_core::policy::Chain::ALL {
            drop(self.stanzas.get_or_create(&ChainLabels { chain: chain.as_str() }));
        }
        for direction in ["from_client", "to_client", "from_backend", "to_backend"] {
            drop(self.bytes.get_or_create(&DirectionLabels { direction }));
        }
        for (side, reason) in stanzawall_core::session::CloseReason::KINDS {
            drop(self.sessions_closed.get_or_create(&CloseLabels { side, reason }));
        }
        let r = registry.sub_registry_with_prefix("stanzawall");
        r.register("sessions", "Client sessions open now", self.sessions.clone());
        r.register("sessions_accepted", "Client sessions accepted since start", self.sessions_total.clone());
        r.register("stanzas", "Stanzas forwarded, per policy chain", self.stanzas.clone());
        r.register("policy_verdicts", "Policy rule matches, per rule and action", self.verdicts.clone());
        r.register("policy_defaults", "Stanzas decided by a chain default other than pass", self.defaults.clone());
        r.register("bytes", "Bytes relayed, per direction", self.bytes.clone());
        r.register("connections_refused", "Connections refused at accept, per reason", self.refused.clone());
        r.register(
            "stream_errors",
            "Sessions ended by a stream error, per side and condition",
            self.stream_errors.clone(),
        );
        r.register("sessions_closed", "Sessions ended, per side and kind of close", self.sessions_closed.clone());
        r.register("audit_failures", "Audit records that could not be written", self.audit_failures.clone());
        for direction in ["in", "out"] {
            drop(self.s2s_refused.get_or_create(&DirectionLabels { direction }));
        }
        r.register(
            "s2s_authenticated",
            "Federation domain pairs authenticated, per direction, method, certificate and DNSSEC status",
            self.s2s_authenticated.clone(),
        );
        for labels in [
            AntiSpamLabels { event: "wave", reason: "" },
            AntiSpamLabels { event: "report", reason: "spam" },
            AntiSpamLabels { event: "report", reason: "abuse" },
            AntiSpamLabels { event: "report", reason: "other" },
            AntiSpamLabels { event: "listed", reason: "" },
            AntiSpamLabels { event: "unlisted", reason: "" },
        ] {
            drop(self.antispam.get_or_create(&labels));
        }
        r.register(
            "antispam_events",
            "Anti-spam events: spam waves detected, XEP-0377 spam reports recorded (per reason), \
             reported JIDs listed and unlisted (report_threshold)",
            self.antispam.clone(),
        );
        for event in ["held", "released", "deleted", "expired", "refused"] {
            for kind in ["stanza", "file"] {
                drop(self.quarantine.get_or_create(&QuarantineLabels { event, kind }));
            }
        }
        r.register(
            "quarantine_events",
            "Quarantine: stanzas held, released, deleted, expired, refused (quarantine full: dropped)",
            self.quarantine.clone(),
        );
        r.register("quarantine_entries", "Stanzas held in the quarantine now", self.quarantine_entries.clone());
        r.register("quarantine_bytes", "Bytes of stanzas held in the quarantine now", self.quarantine_bytes.clone());
        r.register(
            "s2s_refused",
            "Remote domains refused (policy, authentication, TLS), per direction",
            self.s2s_refused.clone(),
        );
    }
}

/// The registry in the text exposition format (`GET /metrics` on the admin listener).
pub fn encode_text(registry: &Registry) -> Option<String> {
    let mut body = String::new();
    encode(&mut body, registry).ok()?;
    Some(body)
}
