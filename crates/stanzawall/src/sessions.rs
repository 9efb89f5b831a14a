//! The live session table: who is connected, through which listener, since when, how much.
//!
//! Every connection registers when it starts and is removed when its [`Registration`] drops
//! (however the session ends, unwinding included). The table holds a small control channel per
//! session: the admin API's kick is a message on it, which the connection hands to its stream
//! machine as [`StreamMachine::refuse`](stanzawall_core::session::StreamMachine::refuse), so
//! the client gets a proper stream error (RFC 6120 §4.9) from the engine, never a bare TCP
//! reset. Counters are plain atomics the connection stores into once per loop turn; reading
//! them never blocks a session. Nothing here decides anything about traffic.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{json, Value};
use stanzawall_core::stream::{Condition, StreamError};
use tokio::sync::mpsc;

/// A request to end one session with a stream error.
#[derive(Debug, Clone)]
pub struct Kick {
    /// The stream error condition (`policy-violation` or `reset`).
    pub condition: Condition,
    /// The text sent with it.
    pub text: String,
    /// The gateway is draining: end the session through
    /// [`StreamMachine::drain`](stanzawall_core::session::StreamMachine::drain) with this error
    /// instead (`condition` and `text` are then unused).
    pub drain: Option<StreamError>,
}

/// One open session as the table sees it.
#[derive(Debug)]
pub struct Entry {
    id: u64,
    listener: String,
    kind: &'static str,
    peer: SocketAddr,
    since: SystemTime,
    /// The bound JID (c2s) or the authenticated remote domain (s2s), once known.
    jid: Mutex<Option<String>>,
    bytes_from_client: AtomicU64,
    bytes_to_client: AtomicU64,
    stanzas_from_client: AtomicU64,
    stanzas_from_backend: AtomicU64,
    control: mpsc::Sender<Kick>,
}

/// Every open session, by id.
#[derive(Debug, Default)]
pub struct Sessions {
    next: AtomicU64,
    table: Mutex<HashMap<u64, Arc<Entry>>>,
}

/// Why a kick was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum KickError {
    /// No session has this id (it ended, or never existed).
    #[error("no session {0}")]
    NotFound(u64),
    /// The session already has a kick pending (it is closing).
    #[error("session {0} is already closing")]
    Closing(u64),
}

/// A session's place in the table; removes it on drop.
#[derive(Debug)]
pub struct Registration {
    sessions: Arc<Sessions>,
    entry: Arc<Entry>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data behind the lock: a panic elsewhere cannot leave it half-updated.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sessions {
    /// Register a new session; the receiver is where its kicks arrive.
    pub fn register(
        self: &Arc<Self>,
        listener: &str,
        kind: &'static str,
        peer: SocketAddr,
    ) -> (Registration, mpsc::Receiver<Kick>) {
        // One slot: a second kick while the first is being carried out has nothing to add.
        let (tx, rx) = mpsc::channel(1);
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(Entry {
            id,
            listener: listener.to_owned(),
            kind,
            peer,
            since: SystemTime::now(),
            jid: Mutex::new(None),
            bytes_from_client: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            stanzas_from_client: AtomicU64::new(0),
            stanzas_from_backend: AtomicU64::new(0),
            control: tx,
        });
        lock(&self.table).insert(id, entry.clone());
        (Registration { sessions: self.clone(), entry }, rx)
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        lock(&self.table).len()
    }

    /// Every open session as JSON, oldest first.
    pub fn list(&self) -> Vec<Value> {
        let mut entries: Vec<Arc<Entry>> = lock(&self.table).values().cloned().collect();
        entries.sort_by_key(|e| e.id);
        entries.iter().map(|e| e.to_json()).collect()
    }

    /// Ask every open session to end with `error` once it is settled (a drain); how many were
    /// asked (a session with a kick pending is closing already).
    pub fn drain_all(&self, error: &StreamError) -> usize {
        let entries: Vec<Arc<Entry>> = lock(&self.table).values().cloned().collect();
        let kick = Kick { condition: error.condition, text: String::new(), drain: Some(error.clone()) };
        entries.iter().filter(|e| e.control.try_send(kick.clone()).is_ok()).count()
    }

    /// Ask session `id` to close with `kick`.
    pub fn kick(&self, id: u64, kick: Kick) -> Result<Value, KickError> {
        let entry = lock(&self.table).get(&id).cloned().ok_or(KickError::NotFound(id))?;
        match entry.control.try_send(kick) {
            Ok(()) => Ok(entry.to_json()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(KickError::Closing(id)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(KickError::NotFound(id)),
        }
    }
}

impl Entry {
    fn to_json(&self) -> Value {
        let since = crate::audit::humantime_rfc3339(self.since);
        let secs = SystemTime::now().duration_since(self.since).map_or(0, |d| d.as_secs());
        json!({
            "id": self.id,
            "listener": self.listener,
            "kind": self.kind,
            "address": self.peer.to_string(),
            "jid": *lock(&self.jid),
            "since": since,
            "seconds": secs,
            "bytes": {
                "from_client": self.bytes_from_client.load(Ordering::Relaxed),
                "to_client": self.bytes_to_client.load(Ordering::Relaxed),
            },
            "stanzas": {
                "from_client": self.stanzas_from_client.load(Ordering::Relaxed),
                "from_backend": self.stanzas_from_backend.load(Ordering::Relaxed),
            },
        })
    }
}

impl Registration {
    /// The session's id in the table (and in the API).
    pub fn id(&self) -> u64 {
        self.entry.id
    }

    /// The session bound a JID (or authenticated a remote domain).
    pub fn set_jid(&self, jid: &str) {
        *lock(&self.entry.jid) = Some(jid.to_owned());
    }

    /// The session's totals so far.
    pub fn update(&self, from_client: u64, to_client: u64, stanzas_in: u64, stanzas_out: u64) {
        let e = &self.entry;
        e.bytes_from_client.store(from_client, Ordering::Relaxed);
        e.bytes_to_client.store(to_client, Ordering::Relaxed);
        e.stanzas_from_client.store(stanzas_in, Ordering::Relaxed);
        e.stanzas_from_backend.store(stanzas_out, Ordering::Relaxed);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.sessions.table).remove(&self.entry.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn register_list_kick_and_drop() {
        let sessions = Arc::new(Sessions::default());
        let (reg, mut rx) = sessions.register("c2s", "c2s", "127.0.0.1:4000".parse().unwrap());
        reg.set_jid("alice@example.test/phone");
        reg.update(10, 20, 1, 2);
        let list = sessions.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["jid"], "alice@example.test/phone");
        assert_eq!(list[0]["bytes"]["to_client"], 20);
        let kick = Kick { condition: Condition::Reset, text: "bye".into(), drain: None };
        sessions.kick(reg.id(), kick.clone()).unwrap();
        assert!(matches!(sessions.kick(reg.id(), kick.clone()), Err(KickError::Closing(_))));
        assert_eq!(rx.recv().await.unwrap().condition, Condition::Reset);
        let id = reg.id();
        drop(reg);
        assert!(sessions.list().is_empty());
        assert!(matches!(sessions.kick(id, kick), Err(KickError::NotFound(_))));
    }
}
