//! The audit log: one JSON object per line for every policy decision worth recording.
//!
//! Sessions hand records to one writer task through a bounded channel; a full channel makes the
//! session wait (backpressure) rather than lose a record (DESIGN.md invariant 4: drops are always
//! audited). Without `[audit] path` records go to the daemon's log instead. Message bodies are
//! written only with `include_body = true`.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};
use stanzawall_core::session::PolicyEvent;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Records waiting for the writer.
const QUEUE: usize = 16_384;

/// Where sessions send records.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: mpsc::Sender<(Option<PathBuf>, Vec<Value>)>,
}

/// Who the record is about, besides the stanza.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub listener: &'a str,
    pub client_ip: std::net::IpAddr,
    pub user: Option<&'a str>,
}

/// The JSON lines for one decision: one per matched rule, or one for a chain default.
pub fn records(event: &PolicyEvent, origin: Origin<'_>) -> Vec<Value> {
    let time = humantime_rfc3339(std::time::SystemTime::now());
    let base = |rule: &str, action: &str, log_only: bool, condition: Option<&str>| {
        let mut v = json!({
            "time": time,
            "listener": origin.listener,
            "chain": event.chain.as_str(),
            "client.ip": origin.client_ip.to_string(),
            "user": origin.user,
            "from": event.from,
            "to": event.to,
            "kind": event.kind.as_str(),
            "type": event.ty,
            "id": event.id,
            "rule": rule,
            "action": action,
            "log_only": log_only,
            "condition": condition,
            "outcome": event.outcome,
        });
        if let (Some(body), Some(map)) = (&event.body, v.as_object_mut()) {
            map.insert("body".to_owned(), Value::String(body.clone()));
        }
        v
    };
    let mut out: Vec<Value> = event
        .hits
        .iter()
        .filter(|h| h.action != "pass" || h.log_only)
        .map(|h| base(&h.rule, h.action, h.log_only, h.condition))
        .collect();
    if event.hits.iter().all(|h| h.log_only || h.action == "log") && event.outcome != "pass" {
        out.push(base("default", event.outcome, false, None));
    }
    out
}

impl Audit {
    /// Start the writer task.
    pub fn start(metrics: Arc<Metrics>) -> Audit {
        let (tx, mut rx) = mpsc::channel::<(Option<PathBuf>, Vec<Value>)>(QUEUE);
        tokio::spawn(async move {
            while let Some((path, lines)) = rx.recv().await {
                let Some(path) = path else {
                    for l in &lines {
                        info!(audit = %l, "policy decision");
                    }
                    continue;
                };
                let mut text = String::new();
                for l in &lines {
                    text.push_str(&l.to_string());
                    text.push('\n');
                }
                // Blocking file I/O off the runtime threads; appends are atomic per write for
                // O_APPEND files of this size on Linux.
                let p = path.clone();
                let written = tokio::task::spawn_blocking(move || {
                    std::fs::OpenOptions::new().create(true).append(true).open(&p)?.write_all(text.as_bytes())
                })
                .await;
                if !matches!(written, Ok(Ok(()))) {
                    metrics.audit_failures.inc_by(lines.len() as u64);
                    warn!(audit.path = %path.display(), "cannot write audit records");
                    for l in &lines {
                        warn!(audit = %l, "policy decision (audit file unavailable)");
                    }
                }
            }
        });
        Audit { tx }
    }

    /// Queue records (waits while the writer is behind).
    pub async fn record(&self, path: Option<PathBuf>, lines: Vec<Value>) {
        if !lines.is_empty() {
            let _ = self.tx.send((path, lines)).await;
        }
    }
}

/// RFC 3339 UTC with milliseconds, without a date-time dependency.
fn humantime_rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z", d.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_796_164_838_123);
        assert_eq!(humantime_rfc3339(t), "2026-12-01T22:40:38.123Z");
        assert_eq!(humantime_rfc3339(std::time::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(humantime_rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
