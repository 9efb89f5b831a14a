//! The copy of a file kept for review by a `quarantine` rule on chain `file` (README "File
//! transfer", issue 13 item 5).
//!
//! While a file crosses the relay or the upload proxy, and only when some `file` rule can
//! quarantine, every byte from the sender is also written to `STATE_DIR/quarantine/files/<id>`
//! as it passes (streamed: never the whole file in memory), up to `[quarantine] max_bytes`
//! (the file size limits bound it too: the inspection refuses, and the copy is dropped, beyond
//! `[file_transfer] max_bytes`). On a quarantine verdict the copy is flushed and fsynced (the
//! file and its directory) *before* the entry is recorded, so an entry never names bytes that a
//! crash could lose; on any other ending (pass, block, abort) it is removed at once.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{json, Value};
use stanzawall_core::policy::file::{Offer, Transport};
use stanzawall_core::transfer::{Facts, Refusal};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use super::{new_id, unix_ms, Entry, HeldFile, Quarantine, State, GATEWAY};

/// Where the copies live, relative to the state directory.
pub const FILES_DIR: &str = "quarantine/files";

/// Is `rel` a path this module made (so that deleting it can touch nothing else)?
pub fn is_file_path(rel: &str) -> bool {
    rel.strip_prefix(FILES_DIR).and_then(|r| r.strip_prefix('/')).is_some_and(super::valid_id)
}

/// The copy of one file in transit.
#[derive(Debug)]
pub struct Tee {
    id: String,
    rel: String,
    abs: PathBuf,
    dir: PathBuf,
    file: Option<tokio::fs::File>,
    written: u64,
    limit: u64,
    /// Why the copy cannot be kept (too large, a write failed); the file is gone then.
    failed: Option<String>,
}

impl Tee {
    /// Start a copy below `state_dir`, of at most `limit` bytes. A copy that cannot be created
    /// is not fatal to the transfer: a quarantine verdict then refuses it without keeping it
    /// (audited as dropped, fail closed).
    pub async fn start(state_dir: &Path, limit: u64) -> Tee {
        let id = new_id();
        let rel = format!("{FILES_DIR}/{id}");
        let dir = state_dir.join(FILES_DIR);
        let abs = dir.join(&id);
        let opened = async {
            tokio::fs::create_dir_all(&dir).await?;
            let mut o = tokio::fs::OpenOptions::new();
            o.write(true).create_new(true);
            #[cfg(unix)]
            o.mode(0o600);
            o.open(&abs).await
        }
        .await;
        let (file, failed) = match opened {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(format!("cannot create {}: {e}", abs.display()))),
        };
        Tee { id, rel, abs, dir, file, written: 0, limit, failed }
    }

    /// Bytes from the sender (all of them, in order).
    pub async fn write(&mut self, data: &[u8]) {
        let Some(file) = self.file.as_mut() else { return };
        let r = if self.written.saturating_add(data.len() as u64) > self.limit {
            Err(format!("the file is larger than quarantine.max_bytes ({} bytes)", self.limit))
        } else {
            file.write_all(data).await.map_err(|e| format!("write {}: {e}", self.abs.display()))
        };
        match r {
            Ok(()) => self.written += data.len() as u64,
            Err(why) => {
                self.failed = Some(why);
                self.file = None;
                let _ = tokio::fs::remove_file(&self.abs).await;
            }
        }
    }

    /// The transfer did not end in a quarantine verdict: the copy goes at once.
    pub async fn discard(mut self) {
        self.file = None;
        if self.failed.is_none() {
            if let Err(e) = tokio::fs::remove_file(&self.abs).await {
                warn!(path = %self.abs.display(), error = %e, "could not remove the copy of a file");
            }
        }
    }

    /// Flush and fsync the copy (and its directory entry).
    async fn sync(&mut self) -> Result<(), String> {
        let Some(file) = self.file.as_mut() else {
            return Err(self.failed.clone().unwrap_or_else(|| "no copy".into()));
        };
        let r = async {
            file.flush().await?;
            file.sync_all().await?;
            // The new name must survive a crash too (fsync(2): syncing a file does not sync
            // the directory entry).
            tokio::fs::File::open(&self.dir).await?.sync_all().await
        }
        .await;
        r.map_err(|e| format!("fsync {}: {e}", self.abs.display()))
    }

    /// A quarantine verdict: keep the copy and record its entry (after the fsync). Returns the
    /// audit record (`event: quarantine`, outcome `held`, or `drop` with the reason when it
    /// could not be kept: then the copy is removed; the file stays refused either way).
    pub async fn keep(mut self, quarantine: Option<&Quarantine>, held: HeldTransfer<'_>) -> (Option<String>, Value) {
        let facts = held.facts;
        let file = HeldFile {
            path: self.rel.clone(),
            name: held.offer.name.clone(),
            size: facts.bytes,
            sha256: facts.sha256.clone(),
            media_type: facts.media_type.map(str::to_owned),
            transport: Some(held.transport.as_str().to_owned()),
        };
        let entry = Entry {
            id: self.id.clone(),
            time_ms: unix_ms(SystemTime::now()),
            chain: "file".to_owned(),
            rule: held.refusal.rule.clone(),
            listener: held.listener.to_owned(),
            session: 0,
            gateway: GATEWAY.clone(),
            from: held.offer.sender.as_ref().map(ToString::to_string),
            to: held.offer.recipient.as_ref().map(ToString::to_string),
            user: held.offer.sender.as_ref().map(|j| j.to_bare().to_string()),
            kind: "file".to_owned(),
            stanza: None,
            file: Some(file),
            bytes: facts.bytes,
            state: State::Held,
            released_by: None,
            released_ms: None,
        };
        let result = match self.sync().await {
            Err(e) => Err(e),
            Ok(()) => match quarantine {
                None => Err(super::QuarantineError::Unavailable.to_string()),
                Some(q) => q.hold(entry.clone()).await.map_err(|e| e.to_string()),
            },
        };
        let mut record = super::audit_event(if result.is_ok() { "held" } else { "drop" }, &entry, None);
        if let Some(map) = record.as_object_mut() {
            map.insert("listener".into(), json!(held.listener));
            map.insert("transport".into(), json!(held.transport.as_str()));
            map.insert("file".into(), serde_json::to_value(&entry.file).unwrap_or(Value::Null));
            if let Err(e) = &result {
                map.insert("reason".into(), json!(e));
            }
        }
        match &result {
            Ok(()) => {
                info!(quarantine.id = %entry.id, transport = held.transport.as_str(), bytes = facts.bytes, "file held in the quarantine");
                self.file = None;
                (Some(entry.id), record)
            }
            Err(e) => {
                warn!(quarantine.id = %entry.id, error = %e, "file not kept (refused all the same)");
                self.discard().await;
                (None, record)
            }
        }
    }
}

/// What a quarantined transfer was.
#[derive(Debug)]
pub struct HeldTransfer<'a> {
    /// The relay or upload listener.
    pub listener: &'a str,
    /// How it travelled.
    pub transport: Transport,
    /// What the offer declared (sender, recipient, name).
    pub offer: &'a Offer,
    /// What the inspection found (size, hash, type).
    pub facts: &'a Facts,
    /// The quarantine verdict (its rule).
    pub refusal: &'a Refusal,
}
