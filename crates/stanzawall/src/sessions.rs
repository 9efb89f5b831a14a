//! The live session table: who is connected, through which listener, since when, how much.
//!
//! Every connection registers when it starts and is removed when its [`Registration`] drops
//! (however the session ends, unwinding included). The table holds a small control channel per
//! session: the admin API's kick is a message on it, which the connection hands to its stream
//! machine as [`StreamMachine::refuse`](stanzawall_core::session::StreamMachine::refuse), so
//! the client gets a proper stream error (RFC 6120 §4.9) from the engine, never a bare TCP
//! reset. The same channel carries what the gateway's other parts tell a session: a stanza
//! for its client (a file refused on the relay, told to its sender) and the antivirus's
//! verdict on an in-band transfer it holds. Counters are plain atomics the connection stores into once per loop turn; reading
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

/// What a session's control channel carries.
#[derive(Debug, Clone)]
pub enum Control {
    /// End the session with a stream error (admin API).
    Kick(Kick),
    /// Deliver this stanza to the client (from the gateway itself).
    Notice(stanzawall_core::xml::Element),
    /// The antivirus's verdict on in-band stream `id` of this session.
    Scanned {
        /// The stream.
        id: u64,
        /// The verdict.
        verdict: stanzawall_core::transfer::ScanVerdict,
    },
}

/// Room on a session's control channel: a kick, and a few notices and verdicts in flight.
const CONTROL_QUEUE: usize = 8;

/// A stanza released from the quarantine, to be written by one session's engine
/// ([`StreamMachine::deliver_released`](stanzawall_core::session::StreamMachine::deliver_released)).
/// The answer comes once the bytes were handed to the socket (or why not).
#[derive(Debug)]
pub struct Delivery {
    /// The chain it was held in (which way it goes).
    pub chain: stanzawall_core::policy::Chain,
    /// The stanza.
    pub stanza: stanzawall_core::xml::Element,
    /// Where the session answers.
    pub reply: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Why a delivery to one session did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// No session has this id (it ended).
    #[error("session {0} has ended")]
    Gone(u64),
    /// The session is busy with other deliveries.
    #[error("session {0} is busy")]
    Busy(u64),
    /// The session refused it (closing, not bound, another chain).
    #[error("session {0}: {1}")]
    Refused(u64, String),
    /// No answer in time.
    #[error("session {0} did not answer")]
    Timeout(u64),
}

/// How long a delivery may wait for the session's engine to write it.
const DELIVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
    control: mpsc::Sender<Control>,
    /// A kick was delivered: the session is closing.
    kicked: std::sync::atomic::AtomicBool,
    deliveries: mpsc::Sender<Delivery>,
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
    /// Register a new session; the receiver is where its kicks (and notices) arrive.
    pub fn register(
        self: &Arc<Self>,
        listener: &str,
        kind: &'static str,
        peer: SocketAddr,
    ) -> (Registration, mpsc::Receiver<Control>, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        let (dtx, drx) = mpsc::channel(4);
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
            kicked: std::sync::atomic::AtomicBool::new(false),
            deliveries: dtx,
        });
        lock(&self.table).insert(id, entry.clone());
        (Registration { sessions: self.clone(), entry }, rx, drx)
    }

    /// Sessions that may take a stanza released from `chain`: `preferred` first (the session it
    /// was held in, if still open), then, for c2s chains, every session bound to `bare` (the
    /// sender's account for c2s-in, the recipient's for c2s-out), for s2s chains every session
    /// of that door (the engine checks its authenticated domain pairs).
    pub fn candidates(&self, chain: stanzawall_core::policy::Chain, preferred: Option<u64>, bare: &str) -> Vec<u64> {
        use stanzawall_core::policy::Chain;
        let table = lock(&self.table);
        let fits = |e: &Entry| match chain {
            Chain::C2sIn | Chain::C2sOut => {
                matches!(e.kind, "c2s" | "c2s-tls" | "websocket" | "bosh")
                    && lock(&e.jid).as_deref().is_some_and(|j| j.split('/').next() == Some(bare))
            }
            Chain::S2sIn => matches!(e.kind, "s2s" | "s2s-tls"),
            Chain::S2sOut => e.kind == "s2s-out",
        };
        let mut out: Vec<u64> = preferred.filter(|id| table.contains_key(id)).into_iter().collect();
        let mut others: Vec<u64> =
            table.values().filter(|e| Some(e.id) != preferred && fits(e)).map(|e| e.id).collect();
        // Newest first: the latest login of the account is the likeliest to stay.
        others.sort_unstable_by(|a, b| b.cmp(a));
        out.extend(others);
        out
    }

    /// Hand `stanza` to session `id` and wait until its engine wrote it (or refused).
    pub async fn deliver(
        &self,
        id: u64,
        chain: stanzawall_core::policy::Chain,
        stanza: stanzawall_core::xml::Element,
    ) -> Result<(), DeliveryError> {
        let entry = lock(&self.table).get(&id).cloned().ok_or(DeliveryError::Gone(id))?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        match entry.deliveries.try_send(Delivery { chain, stanza, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(DeliveryError::Busy(id)),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(DeliveryError::Gone(id)),
        }
        match tokio::time::timeout(DELIVERY_TIMEOUT, answer).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(why))) => Err(DeliveryError::Refused(id, why)),
            // The session ended before answering: it did not write it.
            Ok(Err(_)) => Err(DeliveryError::Gone(id)),
            Err(_) => Err(DeliveryError::Timeout(id)),
        }
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
        entries.iter().filter(|e| e.control.try_send(Control::Kick(kick.clone())).is_ok()).count()
    }

    /// Ask session `id` to close with `kick`.
    pub fn kick(&self, id: u64, kick: Kick) -> Result<Value, KickError> {
        let entry = lock(&self.table).get(&id).cloned().ok_or(KickError::NotFound(id))?;
        // A second kick while the first is being carried out has nothing to add.
        if entry.kicked.swap(true, Ordering::AcqRel) {
            return Err(KickError::Closing(id));
        }
        match entry.control.try_send(Control::Kick(kick)) {
            Ok(()) => Ok(entry.to_json()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                entry.kicked.store(false, Ordering::Release);
                Err(KickError::Closing(id))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(KickError::NotFound(id)),
        }
    }

    /// Deliver `stanza` to the client session bound to full JID `jid` (ASCII case-insensitive
    /// on the whole, as bound JIDs are canonical). False if no such session is open or its
    /// queue is full (the notice is then lost, never blocking the caller).
    pub fn notify(&self, jid: &str, stanza: stanzawall_core::xml::Element) -> bool {
        let entry = lock(&self.table)
            .values()
            .find(|e| !e.kind.starts_with("s2s") && lock(&e.jid).as_deref() == Some(jid))
            .cloned();
        entry.is_some_and(|e| e.control.try_send(Control::Notice(stanza)).is_ok())
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

    /// A sender on the session's own control channel (for tasks it starts).
    pub fn control(&self) -> mpsc::Sender<Control> {
        self.entry.control.clone()
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
        let (reg, mut rx, _deliveries) = sessions.register("c2s", "c2s", "127.0.0.1:4000".parse().unwrap());
        reg.set_jid("alice@example.test/phone");
        reg.update(10, 20, 1, 2);
        let list = sessions.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["jid"], "alice@example.test/phone");
        assert_eq!(list[0]["bytes"]["to_client"], 20);
        let kick = Kick { condition: Condition::Reset, text: "bye".into(), drain: None };
        sessions.kick(reg.id(), kick.clone()).unwrap();
        assert!(matches!(sessions.kick(reg.id(), kick.clone()), Err(KickError::Closing(_))));
        assert!(matches!(rx.recv().await.unwrap(), Control::Kick(k) if k.condition == Condition::Reset));
        assert!(sessions.notify(
            "alice@example.test/phone",
            stanzawall_core::xml::Element::new(stanzawall_core::stream::NS_CLIENT, "message")
        ));
        assert!(!sessions.notify(
            "bob@example.test/phone",
            stanzawall_core::xml::Element::new(stanzawall_core::stream::NS_CLIENT, "message")
        ));
        assert!(matches!(rx.recv().await.unwrap(), Control::Notice(_)));
        let id = reg.id();
        drop(reg);
        assert!(sessions.list().is_empty());
        assert!(matches!(sessions.kick(id, kick), Err(KickError::NotFound(_))));
    }
}
