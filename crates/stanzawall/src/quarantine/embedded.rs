//! The embedded quarantine store: one `redb` database file in the state directory
//! (`quarantine.redb`), for a gateway that shares no state.
//!
//! `redb` is a pure-Rust embedded key-value store with ACID transactions: a write transaction
//! is exclusive and its commit is durable when it returns (`Durability::Immediate`, fsync), so
//! "stored before the session goes on" and "claimed once" are each one transaction, and a
//! restart finds every committed entry. Tables: the entries by id (JSON), the index of entries
//! not yet released by (time, id) with their bytes, and the running byte total.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use stanzawall_core::config::QuarantineConfig;

use super::{Entry, QuarantineError, QuarantineStore, State};

/// id → entry (JSON).
const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
/// (time ms, id) → bytes, for entries held or being released.
const INDEX: TableDefinition<(u64, &str), u64> = TableDefinition::new("index");
/// "bytes" → bytes of the indexed entries.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The embedded store.
#[derive(Debug)]
pub struct Embedded {
    db: Database,
}

fn err(e: impl std::fmt::Display) -> QuarantineError {
    QuarantineError::Store(e.to_string())
}

fn decode(bytes: &[u8]) -> Result<Entry, QuarantineError> {
    serde_json::from_slice(bytes).map_err(|e| QuarantineError::Store(format!("unreadable entry: {e}")))
}

fn encode(entry: &Entry) -> Result<Vec<u8>, QuarantineError> {
    serde_json::to_vec(entry).map_err(err)
}

impl Embedded {
    /// Open (or create) the database at `path`, creating its directory.
    pub fn open(path: &Path) -> Result<Embedded, QuarantineError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| QuarantineError::Store(format!("{}: {e}", dir.display())))?;
        }
        let db = Database::create(path).map_err(|e| QuarantineError::Store(format!("{}: {e}", path.display())))?;
        // The tables exist from the start, so reads never meet a missing one.
        let tx = db.begin_write().map_err(err)?;
        {
            tx.open_table(ENTRIES).map_err(err)?;
            tx.open_table(INDEX).map_err(err)?;
            tx.open_table(META).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(Embedded { db })
    }

    /// Change an entry's state in one write transaction; `check` says whether the current
    /// state allows it (else its error).
    fn transition(
        &self,
        id: &str,
        check: impl FnOnce(&Entry) -> Result<(), QuarantineError>,
        change: impl FnOnce(&mut Entry),
    ) -> Result<Entry, QuarantineError> {
        let tx = self.db.begin_write().map_err(err)?;
        let entry = {
            let mut entries = tx.open_table(ENTRIES).map_err(err)?;
            let mut entry = match entries.get(id).map_err(err)? {
                Some(v) => decode(v.value())?,
                None => return Err(QuarantineError::NotFound(id.to_owned())),
            };
            check(&entry)?;
            let was_indexed = entry.state != State::Released;
            change(&mut entry);
            entries.insert(id, encode(&entry)?.as_slice()).map_err(err)?;
            if was_indexed && entry.state == State::Released {
                let mut index = tx.open_table(INDEX).map_err(err)?;
                index.remove((entry.time_ms, id)).map_err(err)?;
                let mut meta = tx.open_table(META).map_err(err)?;
                let total = meta.get("bytes").map_err(err)?.map_or(0, |v| v.value());
                meta.insert("bytes", total.saturating_sub(entry.bytes)).map_err(err)?;
            }
            entry
        };
        tx.commit().map_err(err)?;
        Ok(entry)
    }
}

impl QuarantineStore for Embedded {
    fn hold(&self, entry: &Entry, bounds: &QuarantineConfig) -> Result<(), QuarantineError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut index = tx.open_table(INDEX).map_err(err)?;
            let mut meta = tx.open_table(META).map_err(err)?;
            let mut entries = tx.open_table(ENTRIES).map_err(err)?;
            let count = index.len().map_err(err)?;
            if count >= bounds.max_entries as u64 {
                return Err(QuarantineError::FullEntries(bounds.max_entries));
            }
            let total = meta.get("bytes").map_err(err)?.map_or(0, |v| v.value());
            if total.saturating_add(entry.bytes) > bounds.max_bytes {
                return Err(QuarantineError::FullBytes(bounds.max_bytes));
            }
            if entries.get(entry.id.as_str()).map_err(err)?.is_some() {
                return Err(QuarantineError::Store(format!("entry {} exists already", entry.id)));
            }
            entries.insert(entry.id.as_str(), encode(entry)?.as_slice()).map_err(err)?;
            index.insert((entry.time_ms, entry.id.as_str()), entry.bytes).map_err(err)?;
            meta.insert("bytes", total + entry.bytes).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    fn list(&self, limit: usize) -> Result<Vec<Entry>, QuarantineError> {
        let tx = self.db.begin_read().map_err(err)?;
        let index = tx.open_table(INDEX).map_err(err)?;
        let entries = tx.open_table(ENTRIES).map_err(err)?;
        let mut out = Vec::new();
        for row in index.iter().map_err(err)?.take(limit) {
            let (key, _) = row.map_err(err)?;
            let (_, id) = key.value();
            if let Some(v) = entries.get(id).map_err(err)? {
                out.push(decode(v.value())?);
            }
        }
        Ok(out)
    }

    fn get(&self, id: &str) -> Result<Option<Entry>, QuarantineError> {
        let tx = self.db.begin_read().map_err(err)?;
        let entries = tx.open_table(ENTRIES).map_err(err)?;
        let found = entries.get(id).map_err(err)?;
        found.map(|v| decode(v.value())).transpose()
    }

    fn claim(&self, id: &str, who: &str, now_ms: u64) -> Result<Entry, QuarantineError> {
        self.transition(
            id,
            |e| match e.state {
                State::Held => Ok(()),
                other => Err(QuarantineError::NotHeld {
                    id: id.to_owned(),
                    state: other.as_str(),
                    by: e.released_by.clone().unwrap_or_default(),
                }),
            },
            |e| {
                e.state = State::Releasing;
                e.released_by = Some(who.to_owned());
                e.released_ms = Some(now_ms);
            },
        )
    }

    fn finish(&self, id: &str) -> Result<(), QuarantineError> {
        self.transition(
            id,
            |e| match e.state {
                State::Releasing => Ok(()),
                other => Err(QuarantineError::NotHeld { id: id.to_owned(), state: other.as_str(), by: String::new() }),
            },
            |e| e.state = State::Released,
        )
        .map(drop)
    }

    fn unclaim(&self, id: &str) -> Result<(), QuarantineError> {
        self.transition(
            id,
            |e| match e.state {
                State::Releasing => Ok(()),
                other => Err(QuarantineError::NotHeld { id: id.to_owned(), state: other.as_str(), by: String::new() }),
            },
            |e| {
                e.state = State::Held;
                e.released_by = None;
                e.released_ms = None;
            },
        )
        .map(drop)
    }

    fn delete(&self, id: &str) -> Result<Entry, QuarantineError> {
        let tx = self.db.begin_write().map_err(err)?;
        let entry = {
            let mut entries = tx.open_table(ENTRIES).map_err(err)?;
            let entry = match entries.remove(id).map_err(err)? {
                Some(v) => decode(v.value())?,
                None => return Err(QuarantineError::NotFound(id.to_owned())),
            };
            if entry.state != State::Released {
                let mut index = tx.open_table(INDEX).map_err(err)?;
                index.remove((entry.time_ms, id)).map_err(err)?;
                let mut meta = tx.open_table(META).map_err(err)?;
                let total = meta.get("bytes").map_err(err)?.map_or(0, |v| v.value());
                meta.insert("bytes", total.saturating_sub(entry.bytes)).map_err(err)?;
            }
            entry
        };
        tx.commit().map_err(err)?;
        Ok(entry)
    }

    fn expire(&self, cutoff_ms: u64) -> Result<Vec<Entry>, QuarantineError> {
        let tx = self.db.begin_write().map_err(err)?;
        let mut gone = Vec::new();
        {
            let mut entries = tx.open_table(ENTRIES).map_err(err)?;
            let mut index = tx.open_table(INDEX).map_err(err)?;
            let mut meta = tx.open_table(META).map_err(err)?;
            let mut old: Vec<(u64, String)> = Vec::new();
            for row in index.range((0u64, "")..(cutoff_ms, "")).map_err(err)? {
                let (key, _) = row.map_err(err)?;
                let (t, id) = key.value();
                old.push((t, id.to_owned()));
            }
            let mut freed = 0u64;
            for (t, id) in &old {
                index.remove((*t, id.as_str())).map_err(err)?;
                if let Some(v) = entries.remove(id.as_str()).map_err(err)? {
                    let e = decode(v.value())?;
                    freed += e.bytes;
                    gone.push(e);
                }
            }
            if freed > 0 {
                let total = meta.get("bytes").map_err(err)?.map_or(0, |v| v.value());
                meta.insert("bytes", total.saturating_sub(freed)).map_err(err)?;
            }
            // Released records past retention go too (they are not indexed).
            let mut released = Vec::new();
            for row in entries.iter().map_err(err)? {
                let (k, v) = row.map_err(err)?;
                let e = decode(v.value())?;
                if e.state == State::Released && e.time_ms < cutoff_ms {
                    released.push(k.value().to_owned());
                }
            }
            for id in released {
                entries.remove(id.as_str()).map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        Ok(gone)
    }

    fn stats(&self) -> Result<(u64, u64), QuarantineError> {
        let tx = self.db.begin_read().map_err(err)?;
        let index = tx.open_table(INDEX).map_err(err)?;
        let meta = tx.open_table(META).map_err(err)?;
        let bytes = meta.get("bytes").map_err(err)?.map_or(0, |v| v.value());
        Ok((index.len().map_err(err)?, bytes))
    }
}
