//! One report per file transfer, whatever its transport (s5b relay, IBB in the c2s stream,
//! HTTP upload proxy): the metric families, the audit record and the log line, so every path
//! is counted and audited the same way (README "File transfer").
//!
//! Also what the sender of a refused transfer is told when no exchange of its own is left to
//! answer (the SOCKS5 relay: the activation was answered before the bytes flowed): a
//! `<message type='error'>` from the proxy JID with the reason as text (RFC 6120 §8.3: a
//! stanza error tells the sender why; XEP-0065 §6.3.4 has no error after activation, and the
//! bytestream itself is only cut). Nothing here decides anything about a file.

use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::json;
use stanzawall_core::policy::file::{Offer, Transport};
use stanzawall_core::stanza::StanzaCondition;
use stanzawall_core::stream::NS_CLIENT;
use stanzawall_core::transfer::{Facts, Refusal};
use stanzawall_core::xml::Element;
use tracing::info;

use crate::state::Shared;

/// `transport`, `verdict`, `detector` labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransferLabels {
    transport: &'static str,
    verdict: &'static str,
    detector: &'static str,
}

/// `transport` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

struct Metrics {
    transfers: Family<TransferLabels, Counter>,
    bytes: Family<TransportLabel, Counter>,
    seconds: Family<TransportLabel, Histogram>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    transfers: Family::default(),
    bytes: Family::default(),
    seconds: Family::new_with_constructor(|| Histogram::new([0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0])),
});

/// Register the families.
pub fn register_metrics(registry: &mut Registry) {
    let r = registry.sub_registry_with_prefix("stanzawall_file");
    r.register("transfers", "File transfers ended, per transport, verdict and detector", METRICS.transfers.clone());
    r.register("bytes", "Bytes received from file senders, per transport", METRICS.bytes.clone());
    r.register("transfer_seconds", "Duration of file transfers, per transport", METRICS.seconds.clone());
}

/// How a transfer ended.
#[derive(Debug, Clone, Copy)]
pub enum Ending<'a> {
    /// Delivered.
    Pass,
    /// Refused by the file chain.
    Block(&'a Refusal),
    /// Broken off (a party went away, stalled, an I/O error).
    Aborted(&'a str),
}

/// One ended transfer.
#[derive(Debug)]
pub struct Report<'a> {
    /// The listener (relay, upload proxy, or the c2s listener for IBB).
    pub listener: &'a str,
    /// How it travelled.
    pub transport: Transport,
    /// The sender's connection address, when known.
    pub client_ip: Option<IpAddr>,
    /// The sender's JID, when known.
    pub sender: Option<&'a str>,
    /// The recipient's JID, when known.
    pub recipient: Option<&'a str>,
    /// What the offer declared.
    pub offer: Option<&'a Offer>,
    /// What the inspection learned.
    pub facts: &'a Facts,
    /// How it ended.
    pub ending: Ending<'a>,
    /// From the first byte (or the offer) to the end.
    pub duration: Duration,
    /// Extra audit fields (the relay's stream hash, the upload path, the IBB sid).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Count, log and audit one transfer.
pub async fn report(shared: &Shared, audit_path: Option<std::path::PathBuf>, r: Report<'_>) {
    let transport = r.transport.as_str();
    let (verdict, detector, detail, rule) = ending(&r);
    METRICS.transfers.get_or_create(&TransferLabels { transport, verdict, detector }).inc();
    METRICS.bytes.get_or_create(&TransportLabel { transport }).inc_by(r.facts.bytes);
    METRICS.seconds.get_or_create(&TransportLabel { transport }).observe(r.duration.as_secs_f64());
    info!(
        listener = %r.listener, transport, sender = r.sender.unwrap_or("-"), recipient = r.recipient.unwrap_or("-"),
        bytes = r.facts.bytes, verdict, detector, rule = rule.as_deref().unwrap_or("-"), detail = %detail,
        "file transfer ended"
    );
    let record = record(&r);
    shared.audit.record(audit_path, vec![record]).await;
}

/// Verdict, detector, detail and rule of a report.
fn ending(r: &Report<'_>) -> (&'static str, &'static str, String, Option<String>) {
    match r.ending {
        Ending::Pass => ("pass", "none", String::new(), r.facts.rule.clone()),
        Ending::Block(x) => ("block", x.detector.as_str(), x.detail.clone(), x.rule.clone()),
        Ending::Aborted(why) => ("aborted", "none", why.to_owned(), None),
    }
}

/// The `file-transfer` audit record of one transfer (also written by `stanzawall inspect`
/// for in-band transfers seen in a capture, so both modes audit the same fields).
pub fn record(r: &Report<'_>) -> serde_json::Value {
    let (verdict, detector, detail, rule) = ending(r);
    let offer = r.offer.cloned().unwrap_or_default();
    let mut record = json!({
        "time": crate::audit::humantime_rfc3339(std::time::SystemTime::now()),
        "event": "file-transfer",
        "listener": r.listener,
        "transport": r.transport.as_str(),
        "client.ip": r.client_ip.map(|ip| ip.to_string()),
        "sender": r.sender,
        "recipient": r.recipient,
        "name": offer.name,
        "declared_size": offer.size,
        "declared_type": offer.media_type,
        "bytes": r.facts.bytes,
        "media_type": r.facts.media_type,
        "sha256": r.facts.sha256,
        "verdict": verdict,
        "detector": detector,
        "rule": rule,
        "logged": r.facts.logged,
        "detail": detail,
        "scanner_failed_open": r.facts.scanner_failed_open,
        "duration_ms": r.duration.as_millis() as u64,
    });
    if let Some(obj) = record.as_object_mut() {
        obj.extend(r.extra.clone());
    }
    record
}

static NOTICES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The `<message type='error'>` telling `sender` its transfer to `recipient` was refused.
pub fn refusal_notice(proxy_jid: &str, sender: &str, recipient: &str, refusal: &Refusal) -> Option<Element> {
    let original = Element::new(NS_CLIENT, "message")
        .with_attr("from", sender)
        .with_attr("to", proxy_jid)
        .with_attr("id", format!("stanzawall-file-{}", NOTICES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    let text = format!("file transfer to {recipient} refused by the gateway: {refusal}");
    stanzawall_core::stanza::error_reply(&original, StanzaCondition::NotAcceptable, Some(&text), proxy_jid)
}
