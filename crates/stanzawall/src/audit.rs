//! The audit log: one JSON object per line for every policy decision worth recording.
//!
//! Sessions hand records to one writer task through a bounded channel; a full channel makes the
//! session wait (backpressure) rather than lose a record (invariant 4, lose nothing silently,
//! docs/DESIGN.md: drops are always audited). Without `[audit] path` records go to the daemon's log instead. Message bodies are
//! written only with `include_body = true`.
//!
//! The writer also keeps the most recent records in memory ([`Feed`]) for the admin API's
//! `GET /api/v1/audit` and hands each one to live subscribers (`/api/v1/audit/stream`); a slow
//! subscriber misses records (it is told how many), never slows the writer.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};
use stanzawall_core::policy::{Chain, RuleAction};
use stanzawall_core::session::{PolicyEvent, StanzaSummary};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Records waiting for the writer.
const QUEUE: usize = 16_384;
/// Records kept in memory for the admin API.
const RECENT: usize = 2_000;
/// Records a live subscriber may lag behind before it misses some.
const LIVE_BACKLOG: usize = 1_024;

/// Where sessions send records.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: mpsc::Sender<(Option<PathBuf>, Vec<Value>)>,
    /// The recent records and live subscribers.
    pub feed: Arc<Feed>,
}

/// The recent records (numbered from 1 in the order written) and the live channel.
#[derive(Debug)]
pub struct Feed {
    recent: std::sync::Mutex<(u64, std::collections::VecDeque<(u64, Value)>)>,
    live: tokio::sync::broadcast::Sender<(u64, Value)>,
}

impl Feed {
    fn new() -> Feed {
        let (live, _) = tokio::sync::broadcast::channel(LIVE_BACKLOG);
        Feed { recent: std::sync::Mutex::new((0, std::collections::VecDeque::new())), live }
    }

    fn push(&self, record: &Value) {
        let mut guard = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (seq, ring) = &mut *guard;
        *seq += 1;
        if ring.len() == RECENT {
            ring.pop_front();
        }
        ring.push_back((*seq, record.clone()));
        // No subscriber is not an error.
        let _ = self.live.send((*seq, record.clone()));
    }

    /// The recent records, oldest first, with their sequence numbers.
    pub fn recent(&self) -> Vec<(u64, Value)> {
        let guard = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.1.iter().cloned().collect()
    }

    /// Records written from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<(u64, Value)> {
        self.live.subscribe()
    }
}

/// Who the record is about, besides the stanza.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub listener: &'a str,
    pub client_ip: std::net::IpAddr,
    pub user: Option<&'a str>,
}

/// One record.
struct Record<'a> {
    chain: Chain,
    stanza: Option<&'a StanzaSummary>,
    rule: &'a str,
    action: &'a str,
    log_only: bool,
    condition: Option<&'a str>,
    outcome: &'a str,
    wrapped: Option<&'a str>,
    body: Option<&'a str>,
    /// What an anti-spam condition found (the wave matched).
    note: Option<&'a str>,
}

fn record(r: Record<'_>, origin: Origin<'_>, time: &str) -> Value {
    let s = r.stanza;
    let mut v = json!({
        "time": time,
        "listener": origin.listener,
        "chain": r.chain.as_str(),
        "client.ip": origin.client_ip.to_string(),
        "user": origin.user,
        "from": s.and_then(|s| s.from.as_deref()),
        "to": s.and_then(|s| s.to.as_deref()),
        "kind": s.map(|s| s.kind.as_str()),
        "type": s.and_then(|s| s.ty.as_deref()),
        "id": s.and_then(|s| s.id.as_deref()),
        "rule": r.rule,
        "action": r.action,
        "log_only": r.log_only,
        "condition": r.condition,
        "outcome": r.outcome,
    });
    if let (Some(wrapped), Some(map)) = (r.wrapped, v.as_object_mut()) {
        // The stanza the rule matched arrived inside another (a carbon, an archive result, a
        // forward); `outcome` is what was done to the whole.
        map.insert("wrapped".to_owned(), Value::String(wrapped.to_owned()));
    }
    if let (Some(body), Some(map)) = (r.body, v.as_object_mut()) {
        map.insert("body".to_owned(), Value::String(body.to_owned()));
    }
    if let (Some(note), Some(map)) = (r.note, v.as_object_mut()) {
        map.insert("note".to_owned(), Value::String(note.to_owned()));
    }
    v
}

/// The record of an anti-spam event: `event` = `spam-wave` (with the wave's id, counts and a
/// sample of its normalized text), `spam-report` (reporter, reported JID, reason, text and
/// the distinct reporters so far), `report-listed` (a reported JID put on the
/// `report_threshold` list, with its TTL) or `report-unlisted` (its time ran out).
pub fn antispam_record(event: &stanzawall_core::antispam::Event, origin: Origin<'_>) -> Value {
    use stanzawall_core::antispam::Event;
    let time = humantime_rfc3339(std::time::SystemTime::now());
    let fields = match event {
        Event::Wave { rule, wave } => json!({
            "event": "spam-wave",
            "rule": rule,
            "wave": wave.id,
            "senders": wave.senders,
            "recipients": wave.recipients,
            "sample": wave.sample,
        }),
        Event::Report { reporter, reported, reason, text, reporters } => json!({
            "event": "spam-report",
            "reporter": reporter.as_str(),
            "reported": reported.as_str(),
            "reason": reason,
            "text": text,
            "reporters": reporters,
        }),
        Event::Listed { jid, list, reporters, ttl } => json!({
            "event": "report-listed",
            "jid": jid.as_str(),
            "list": list,
            "reporters": reporters,
            "ttl_seconds": ttl.as_secs(),
        }),
        Event::Unlisted { jid, list } => json!({
            "event": "report-unlisted",
            "jid": jid.as_str(),
            "list": list,
        }),
    };
    let mut v = json!({
        "time": time,
        "listener": origin.listener,
        "client.ip": origin.client_ip.to_string(),
        "user": origin.user,
    });
    if let (Some(map), Value::Object(extra)) = (v.as_object_mut(), fields) {
        map.extend(extra);
    }
    v
}

/// The record for a stanza the gateway itself refused (no rule: a built-in check such as a
/// forged carbon or an over-limit stanza); `rule` is `gateway: REASON`.
pub fn gateway_record(
    chain: Chain,
    stanza: Option<&StanzaSummary>,
    action: &str,
    condition: Option<&str>,
    reason: &str,
    origin: Origin<'_>,
) -> Value {
    let rule = format!("gateway: {reason}");
    let time = humantime_rfc3339(std::time::SystemTime::now());
    let r = Record {
        chain,
        stanza,
        rule: &rule,
        action,
        log_only: false,
        condition,
        outcome: action,
        wrapped: None,
        body: None,
        note: None,
    };
    record(r, origin, &time)
}

/// The record of a federation event: a domain pair authenticated (`event` = `s2s-authenticated`,
/// with `method`, `certificate` and `dnssec`) or a remote domain refused (`s2s-refused`, with
/// `reason`).
pub fn s2s_record(event: &str, direction: &str, remote: &str, fields: Value, origin: Origin<'_>) -> Value {
    let time = humantime_rfc3339(std::time::SystemTime::now());
    let mut v = json!({
        "time": time,
        "listener": origin.listener,
        "event": event,
        "client.ip": origin.client_ip.to_string(),
        "direction": direction,
        "remote": remote,
    });
    if let (Some(map), Value::Object(extra)) = (v.as_object_mut(), fields) {
        map.extend(extra);
    }
    v
}

/// The record of an operator's action through the admin API (who, what, when, result), or of
/// a refused API request (`action` = `auth`).
pub fn admin_record(who: &str, role: &str, client_ip: std::net::IpAddr, action: &str, detail: Value) -> Value {
    let time = humantime_rfc3339(std::time::SystemTime::now());
    let mut v = json!({
        "time": time,
        "event": "admin",
        "admin.token": who,
        "admin.role": role,
        "client.ip": client_ip.to_string(),
        "action": action,
    });
    if let (Some(map), Value::Object(extra)) = (v.as_object_mut(), detail) {
        map.extend(extra);
    }
    v
}

/// The JSON lines for one decision: one per matched rule, or one for a chain default.
pub fn records(event: &PolicyEvent, origin: Origin<'_>) -> Vec<Value> {
    let time = humantime_rfc3339(std::time::SystemTime::now());
    let base = |rule: &str, action: &str, log_only: bool, condition: Option<&str>, note: Option<&str>| {
        let r = Record {
            chain: event.chain,
            stanza: Some(&event.stanza),
            rule,
            action,
            log_only,
            condition,
            outcome: event.outcome.as_str(),
            wrapped: event.wrapped.map(|w| w.as_str()),
            body: event.body.as_deref(),
            note,
        };
        record(r, origin, &time)
    };
    let mut out: Vec<Value> = event
        .hits
        .iter()
        .filter(|h| h.action != RuleAction::Pass || h.log_only)
        .map(|h| base(&h.rule, h.action.as_str(), h.log_only, h.condition, h.note.as_deref()))
        .collect();
    if event.decided_by_default() {
        out.push(base("default", event.outcome.as_str(), false, None, None));
    }
    out
}

impl Audit {
    /// Start the writer task. With a shared store every record gets `seq`, a number from one
    /// counter in the store, and `gateway`, this gateway's name there, so that the audit logs
    /// of several gateways merge into one order (README "Running several gateways").
    pub fn start(metrics: Arc<Metrics>, store: Option<Arc<dyn Sequencer>>) -> Audit {
        let (tx, mut rx) = mpsc::channel::<(Option<PathBuf>, Vec<Value>)>(QUEUE);
        let feed = Arc::new(Feed::new());
        let fed = feed.clone();
        tokio::spawn(async move {
            // The open file, kept across batches (reopened when the configured path changes).
            let mut open: Option<(PathBuf, tokio::io::BufWriter<tokio::fs::File>)> = None;
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, 256).await > 0 {
                if let Some(store) = &store {
                    number(store, &mut batch).await;
                }
                for (path, lines) in batch.drain(..) {
                    for l in &lines {
                        fed.push(l);
                    }
                    let Some(path) = path else {
                        for l in &lines {
                            info!(audit = %l, "policy decision");
                        }
                        continue;
                    };
                    if open.as_ref().is_none_or(|(p, _)| *p != path) {
                        if let Some((_, mut w)) = open.take() {
                            let _ = w.flush().await;
                        }
                        match tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await {
                            Ok(f) => open = Some((path.clone(), tokio::io::BufWriter::new(f))),
                            Err(e) => warn!(audit.path = %path.display(), error = %e, "cannot open the audit log"),
                        }
                    }
                    let mut text = String::new();
                    for l in &lines {
                        text.push_str(&l.to_string());
                        text.push('\n');
                    }
                    let written = match open.as_mut() {
                        Some((_, w)) => w.write_all(text.as_bytes()).await.is_ok(),
                        None => false,
                    };
                    if !written {
                        open = None;
                        metrics.audit_failures.inc_by(lines.len() as u64);
                        for l in &lines {
                            warn!(audit = %l, "policy decision (audit file unavailable)");
                        }
                    }
                }
                // Everything received so far is on disk before the next wait.
                if let Some((path, w)) = open.as_mut() {
                    if let Err(e) = w.flush().await {
                        warn!(audit.path = %path.display(), error = %e, "cannot write the audit log");
                        metrics.audit_failures.inc();
                        open = None;
                    }
                }
            }
        });
        Audit { tx, feed }
    }

    /// Queue records (waits while the writer is behind).
    pub async fn record(&self, path: Option<PathBuf>, lines: Vec<Value>) {
        if !lines.is_empty() {
            let _ = self.tx.send((path, lines)).await;
        }
    }
}

/// Where audit sequence numbers come from: the shared store's counter (implemented by the
/// daemon's Redis store; the audit writer never talks to Redis itself).
pub trait Sequencer: Send + Sync + std::fmt::Debug + 'static {
    /// This gateway's name there (the records' `gateway`).
    fn name(&self) -> &str;
    /// True while the counter can be asked.
    fn is_up(&self) -> bool;
    /// Take `n` numbers; the last one (blocking).
    fn take(&self, n: u64) -> Result<u64, String>;
}

/// Number a batch of records from the store's counter (one `INCRBY` for the batch, off the
/// async threads). Records written while the store is down get `gateway` but no `seq`.
async fn number(store: &Arc<dyn Sequencer>, batch: &mut [(Option<PathBuf>, Vec<Value>)]) {
    let n: u64 = batch.iter().map(|(_, l)| l.len() as u64).sum();
    let last = match store.is_up() && n > 0 {
        true => {
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.take(n)).await {
                Ok(Ok(last)) => Some(last),
                Ok(Err(e)) => {
                    warn!(error = %e, "audit sequence numbers unavailable from the shared store");
                    None
                }
                Err(_) => None,
            }
        }
        false => None,
    };
    let mut next = last.map(|l| l + 1 - n);
    for record in batch.iter_mut().flat_map(|(_, l)| l.iter_mut()) {
        if let Some(map) = record.as_object_mut() {
            if let Some(seq) = next.as_mut() {
                map.insert("seq".to_owned(), json!(*seq));
                *seq += 1;
            }
            map.insert("gateway".to_owned(), json!(store.name()));
        }
    }
}

/// RFC 3339 UTC with milliseconds, without a date-time dependency.
pub(crate) fn humantime_rfc3339(t: std::time::SystemTime) -> String {
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
