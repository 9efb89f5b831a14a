//! Metrics of a live capture, served on `[admin] bind` by the gateway's own admin listener.
//!
//! `stanzawall inspect --interface …` with `[admin]` in its config starts the same admin
//! listener as `stanzawall run` ([`crate::admin::serve`]: plain or TLS, bearer tokens, client
//! certificates, the failed-attempt lockout, `metrics_public`), scoped to `/metrics`,
//! `/healthz` and `/readyz` — a passive inspector has no sessions to kick, no bans to set and
//! no config to reload. The families here are `stanzawall_inspect_*`; the capture thread updates
//! them (atomic counters) and the listener runs on a small runtime of its own.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use stanzawall_core::capture::CaptureStats;
use stanzawall_core::config::Config;
use stanzawall_core::policy::Policy;

use super::live::KernelStats;
use crate::metrics::VerdictLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    pub condition: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: &'static str,
}

/// Every family of a live inspection.
#[derive(Debug, Default)]
pub struct InspectMetrics {
    /// Packets read from the capture.
    pub packets: Counter,
    /// Kernel drops (ring full) and interface drops.
    pub kernel_dropped: Family<KindLabels, Counter>,
    /// TCP segments and their payload bytes.
    pub segments: Counter,
    pub payload_bytes: Counter,
    /// Flows created, and flows in the table now.
    pub flows: Counter,
    pub flows_active: Gauge,
    /// XMPP streams recognised, per kind (c2s, s2s, other), and those that went encrypted.
    pub streams: Family<KindLabels, Counter>,
    pub encrypted: Counter,
    /// Stanzas read.
    pub stanzas: Counter,
    /// Would-be verdicts per rule (as the gateway's `stanzawall_policy_verdicts`).
    pub verdicts: Family<VerdictLabels, Counter>,
    /// XML refused, per stream error condition.
    pub parse_errors: Family<ConditionLabels, Counter>,
    /// Streams the gateway would have closed, per condition.
    pub would_close: Family<ConditionLabels, Counter>,
    /// Reassembly: evictions, idle ends, gaps, conflicting overlaps, retransmissions, resync
    /// failures, out-of-order bytes given up.
    pub reassembly: Family<EventLabels, Counter>,
    pub gap_bytes: Counter,
}

/// Reassembly events exported (the label values of `stanzawall_inspect_reassembly_events`).
const REASSEMBLY_EVENTS: [&str; 6] =
    ["flows_evicted", "flows_idle", "gaps", "conflicting_overlaps", "retransmissions", "resync_failures"];

impl InspectMetrics {
    /// Register every family in `registry`, every series at 0 from the start.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        for kind in ["ring", "interface"] {
            drop(self.kernel_dropped.get_or_create(&KindLabels { kind }));
        }
        for kind in ["c2s", "s2s", "other"] {
            drop(self.streams.get_or_create(&KindLabels { kind }));
        }
        for event in REASSEMBLY_EVENTS {
            drop(self.reassembly.get_or_create(&EventLabels { event }));
        }
        let r = registry.sub_registry_with_prefix("stanzawall_inspect");
        r.register("packets", "Packets read from the capture", self.packets.clone());
        r.register(
            "kernel_dropped_packets",
            "Packets dropped before the inspector saw them: ring (the kernel's buffer was full) or interface",
            self.kernel_dropped.clone(),
        );
        r.register("tcp_segments", "TCP segments inspected", self.segments.clone());
        r.register("tcp_payload_bytes", "TCP payload bytes inspected", self.payload_bytes.clone());
        r.register("flows", "TCP flows seen", self.flows.clone());
        r.register("flows_active", "TCP flows in the flow table now", self.flows_active.clone());
        r.register("xmpp_streams", "XMPP streams recognised, per kind", self.streams.clone());
        r.register(
            "encrypted_streams",
            "XMPP streams that went encrypted (STARTTLS or direct TLS)",
            self.encrypted.clone(),
        );
        r.register("stanzas", "Stanzas read from plaintext streams", self.stanzas.clone());
        r.register(
            "policy_verdicts",
            "Would-be policy verdicts (nothing is blocked), per rule and action",
            self.verdicts.clone(),
        );
        r.register(
            "parse_errors",
            "XML refused by the restricted reader, per stream error condition",
            self.parse_errors.clone(),
        );
        r.register(
            "would_close",
            "Streams the inline gateway would have closed, per stream error condition",
            self.would_close.clone(),
        );
        r.register(
            "reassembly_events",
            "TCP reassembly: flows evicted (table full) or idle, gaps, conflicting overlaps, retransmissions, resync failures",
            self.reassembly.clone(),
        );
        r.register("gap_bytes", "Bytes never seen (capture loss)", self.gap_bytes.clone());
    }

    /// Bring the counters that mirror the inspector's and the kernel's totals up to date.
    pub fn sync(&self, stats: &CaptureStats, flows_active: usize, kernel: &KernelStats) {
        advance(&self.segments, stats.segments);
        advance(&self.payload_bytes, stats.payload_bytes);
        advance(&self.flows, stats.flows);
        advance(&self.stanzas, stats.stanzas);
        advance(&self.gap_bytes, stats.gap_bytes);
        self.flows_active.set(i64::try_from(flows_active).unwrap_or(i64::MAX));
        let events = [
            stats.flows_evicted,
            stats.flows_idle,
            stats.gaps,
            stats.conflicts,
            stats.duplicates,
            stats.resync_failures,
        ];
        for (event, n) in REASSEMBLY_EVENTS.into_iter().zip(events) {
            advance(&self.reassembly.get_or_create(&EventLabels { event }), n);
        }
        advance(&self.kernel_dropped.get_or_create(&KindLabels { kind: "ring" }), kernel.dropped);
        advance(&self.kernel_dropped.get_or_create(&KindLabels { kind: "interface" }), kernel.if_dropped);
    }
}

/// Raise `counter` to `total` (a cumulative value kept elsewhere; only one thread writes it).
fn advance(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

/// The admin listener of a live inspection; dropped, it stops.
#[derive(Debug)]
pub struct AdminEndpoint {
    runtime: Option<tokio::runtime::Runtime>,
    state: Arc<crate::admin::Admin>,
}

impl AdminEndpoint {
    /// Start the admin listener of `config` (`[admin] bind`) serving `metrics`; `None` without
    /// `[admin] bind`. The token file and TLS material load as for the gateway, with the same
    /// errors.
    pub fn start(
        config: &Config,
        policy: Arc<Policy>,
        metrics: &Arc<InspectMetrics>,
    ) -> anyhow::Result<Option<AdminEndpoint>> {
        let Some(bind) = config.admin.bind else { return Ok(None) };
        let generation = Arc::new(crate::state::Generation::for_inspection(config.clone(), policy)?);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        // A bind failure is logged by the listener; checked here first so the run stops with it.
        std::net::TcpListener::bind(bind).map_err(|e| anyhow::anyhow!("[admin] bind {bind}: {e}"))?;
        let state = {
            let _entered = runtime.enter();
            let gateway_metrics = Arc::new(crate::metrics::Metrics::default());
            let shared = crate::state::Shared {
                guard: Arc::new(std::sync::Mutex::new(stanzawall_core::guard::ConnectionGuard::new(
                    generation.config.network.guard.clone(),
                ))),
                rates: Arc::new(stanzawall_core::policy::RateTable::new()),
                metrics: gateway_metrics.clone(),
                // Refused admin requests are audited as the gateway does (`[audit] path`).
                audit: crate::audit::Audit::start(gateway_metrics, None),
                sessions: Arc::new(crate::sessions::Sessions::default()),
                store: None,
                // Passive inspection holds nothing: there is no stanza to deliver later.
                quarantine: None,
            };
            Arc::new(crate::admin::Admin::for_inspection(generation, shared, Arc::new(registry)))
        };
        runtime.spawn(crate::admin::serve(bind, state.clone()));
        Ok(Some(AdminEndpoint { runtime: Some(runtime), state }))
    }

    /// The capture runs: `/readyz` answers 200 from now on.
    pub fn ready(&self) {
        self.state.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for AdminEndpoint {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
