//! The quarantine: stanzas a `quarantine` rule held, kept durably until an operator releases
//! or deletes them, or they expire (README "Anti-spam", Quarantine; issue 12 item 6).
//!
//! The session only withholds the stanza and hands it over ([`Held`]); this module stores it
//! before the session reads on, behind [`QuarantineStore`]: embedded in a `redb` database in
//! the state directory by default ([`embedded`]), in Redis with `[store] backend = "redis"`
//! ([`redis`]), so that a stanza held by one gateway can be released from another.
//!
//! **Exactly once.** A release first *claims* the entry in the store (held → releasing, one
//! atomic step: a `redb` write transaction, a Lua script in Redis), so of two concurrent
//! releases, on one gateway or two, only one gets it; the other is told it is being released
//! or was. The claimer then delivers ([`Deliver`]): on success the entry becomes `released`,
//! on failure (nobody to take it) the claim is undone and the entry stays held — never lost,
//! never delivered twice. A gateway that dies between claim and delivery leaves the entry
//! `releasing` (at most once: it is not delivered again; `show` says so, `delete` removes it).
//!
//! **Where a release goes** ([`SessionDeliver`]), in the direction the stanza was going: the
//! session it was held in, if it is still open on this gateway; else any open session of the
//! account on this gateway (c2s-in: the sender's, whose backend leg carries it to the server,
//! `from` restamped with that session's JID; c2s-out: the recipient's, to its client); for s2s
//! chains any stream of that door with the domain pair authenticated. Else the fallbacks
//! ([`Deliver`]): with Redis, such a session on another gateway ([`redis::RemoteDeliver`]); with
//! `[contacts]`, the XEP-0356 component ([`ComponentDeliver`]), which sends a held c2s-in
//! `<message/>` through the server on behalf of its sender (§5: message permission `outgoing`
//! covers only messages from the server's own users, so other kinds and chains cannot go this
//! way). Else a clear error and the entry stays held.
//!
//! Bounded (invariant 6): `[quarantine] max_entries`, `max_bytes` and `retention`; a stanza
//! that does not fit is dropped and audited, never delivered (invariant 5, fail closed).

pub mod cli;
pub mod embedded;
pub mod redis;
pub mod tee;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use stanzawall_core::config::QuarantineConfig;
use stanzawall_core::policy::Chain;
use stanzawall_core::session::Held;
use stanzawall_core::xml::{parse_stanzas, Element, XmlLimits};
use tracing::{error, warn};

use crate::metrics::{Metrics, QuarantineLabels};
use crate::sessions::Sessions;

/// This process among the gateways sharing a store: session ids mean something only on the
/// gateway that gave them.
pub static GATEWAY: LazyLock<String> = LazyLock::new(|| {
    let mut b = [0u8; 6];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
});

/// Entries a list answers with at most.
pub const MAX_LIST: usize = 1_000;
/// How often expired entries are removed.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// An entry's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Held: may be released or deleted.
    Held,
    /// Claimed by a release that is delivering it now (or died doing so).
    Releasing,
    /// Delivered once; kept (as a record) until it expires.
    Released,
}

impl State {
    /// The name in the API and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Held => "held",
            State::Releasing => "releasing",
            State::Released => "released",
        }
    }

    fn parse(s: &str) -> Option<State> {
        [State::Held, State::Releasing, State::Released].into_iter().find(|x| x.as_str() == s)
    }
}

/// A held file (kind `file`): its metadata and where the file pipeline keeps its bytes, below
/// the state directory ([`tee`]). The store keeps, lists, expires and deletes such entries like
/// stanza ones; deleting or expiring one removes its bytes too. Files are not released: they
/// are kept for review only (a release answers [`ReleaseError::File`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldFile {
    /// Path of the held bytes, relative to the state directory.
    pub path: String,
    /// The name the sender gave it.
    pub name: Option<String>,
    /// Its size in bytes.
    pub size: u64,
    /// Hex SHA-256 of the content.
    pub sha256: Option<String>,
    /// The media type found in the content.
    pub media_type: Option<String>,
    /// How it travelled (`s5b`, `upload`).
    #[serde(default)]
    pub transport: Option<String>,
}

/// One quarantine entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Random, 16 hex digits: unique across the gateways sharing a store.
    pub id: String,
    /// When it was held (Unix milliseconds).
    pub time_ms: u64,
    /// The chain it was held in: which way it was going.
    pub chain: String,
    /// The rule that held it.
    pub rule: Option<String>,
    /// The listener it arrived on.
    pub listener: String,
    /// The session it was held in (on `gateway`).
    pub session: u64,
    /// The gateway process that held it ([`GATEWAY`]).
    pub gateway: String,
    /// The stanza's `from`.
    pub from: Option<String>,
    /// The stanza's `to`.
    pub to: Option<String>,
    /// The session's account (c2s).
    pub user: Option<String>,
    /// `message`, `presence`, `iq`, or `file`.
    pub kind: String,
    /// The stanza in canonical form, its namespace declared (every kind but `file`).
    pub stanza: Option<String>,
    /// The held file (kind `file`).
    pub file: Option<HeldFile>,
    /// Bytes the entry counts against `max_bytes`.
    pub bytes: u64,
    /// Held, releasing, released.
    pub state: State,
    /// Who released it (the admin token's name).
    pub released_by: Option<String>,
    /// When (Unix milliseconds).
    pub released_ms: Option<u64>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A new random entry id.
pub fn new_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Is `id` shaped like an entry id (so that it can go into a key or a path as it is)?
pub fn valid_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl Entry {
    /// The entry for a stanza held in session `session` on `listener`.
    pub fn of_held(held: &Held, listener: &str, session: u64) -> Entry {
        let stanza = held.canonical();
        Entry {
            id: new_id(),
            time_ms: unix_ms(SystemTime::now()),
            chain: held.chain.as_str().to_owned(),
            rule: held.rule.clone(),
            listener: listener.to_owned(),
            session,
            gateway: GATEWAY.clone(),
            from: held.summary.from.clone(),
            to: held.summary.to.clone(),
            user: held.summary.user.as_ref().map(ToString::to_string),
            kind: held.summary.kind.as_str().to_owned(),
            bytes: stanza.len() as u64,
            stanza: Some(stanza),
            file: None,
            state: State::Held,
            released_by: None,
            released_ms: None,
        }
    }

    /// The entry as the API shows it (`with_stanza`: the held stanza too).
    pub fn to_json(&self, with_stanza: bool) -> Value {
        let time = |ms: u64| crate::audit::humantime_rfc3339(UNIX_EPOCH + Duration::from_millis(ms));
        let mut v = json!({
            "id": self.id,
            "time": time(self.time_ms),
            "state": self.state.as_str(),
            "chain": self.chain,
            "rule": self.rule,
            "listener": self.listener,
            "session": self.session,
            "gateway": self.gateway,
            "from": self.from,
            "to": self.to,
            "user": self.user,
            "kind": self.kind,
            "bytes": self.bytes,
            "released_by": self.released_by,
            "released": self.released_ms.map(time),
        });
        if let Some(map) = v.as_object_mut() {
            if let Some(f) = &self.file {
                map.insert("file".into(), serde_json::to_value(f).unwrap_or(Value::Null));
            }
            if with_stanza {
                map.insert("stanza".into(), self.stanza.clone().map_or(Value::Null, Value::String));
            }
        }
        v
    }

    fn chain(&self) -> Option<Chain> {
        Chain::from_name(&self.chain)
    }
}

/// Store errors (the store keeps its own words: disk, database, Redis).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuarantineError {
    /// No quarantine store could be opened (logged at start).
    #[error("the quarantine store is unavailable")]
    Unavailable,
    /// `max_entries` held already.
    #[error("the quarantine is full ({0} entries, quarantine.max_entries)")]
    FullEntries(usize),
    /// `max_bytes` held already.
    #[error("the quarantine is full ({0} bytes, quarantine.max_bytes)")]
    FullBytes(u64),
    /// No entry has this id (never, or deleted, or expired).
    #[error("no quarantine entry {0}")]
    NotFound(String),
    /// The entry is being released, or was.
    #[error("entry {id} is already {state} (by {by})")]
    NotHeld {
        /// The entry.
        id: String,
        /// Its state.
        state: &'static str,
        /// Who released it.
        by: String,
    },
    /// The store failed.
    #[error("quarantine store: {0}")]
    Store(String),
}

/// What a release answers when it cannot deliver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliverError {
    /// Nobody can take it now (the session ended, no other session of the account here, no
    /// component delivery): the entry stays held.
    #[error("session gone; {0}")]
    SessionGone(String),
    /// The stored entry cannot be delivered (a file, an unparsable record).
    #[error("{0}")]
    Undeliverable(String),
    /// Another gateway took the delivery and did not say how it went: it may have happened, so
    /// the entry stays `releasing` (at most once).
    #[error("{0}")]
    Uncertain(String),
}

/// Where a released stanza goes. [`SessionDeliver`] writes it into a live session; the XEP-0356
/// privileged component (`crate::component::ComponentDeliver`) plugs in as the fallback with
/// [`Quarantine::with_fallback`] and sends a held message through the server on behalf of its
/// sender when no session can take it.
pub trait Deliver: Send + Sync + fmt::Debug {
    /// Deliver `stanza`, held as `entry`, once; `Ok` says how (for the audit log).
    fn deliver<'a>(
        &'a self,
        entry: &'a Entry,
        chain: Chain,
        stanza: Element,
    ) -> Pin<Box<dyn Future<Output = Result<String, DeliverError>> + Send + 'a>>;
}

/// Delivery into this gateway's live sessions (see the module docs for the order).
#[derive(Debug)]
pub struct SessionDeliver {
    /// The session table.
    pub sessions: Arc<Sessions>,
}

/// The bare JID a c2s release goes to: the sender's account for c2s-in, the recipient's for
/// c2s-out.
pub(crate) fn account(entry: &Entry, chain: Chain) -> Option<String> {
    let jid = match chain {
        Chain::C2sIn => entry.user.clone().or_else(|| entry.from.clone()),
        Chain::C2sOut => entry.to.clone(),
        Chain::S2sIn | Chain::S2sOut => None,
    }?;
    let j = stanzawall_core::jid::parse(&jid)?;
    Some(j.to_bare().to_string())
}

impl Deliver for SessionDeliver {
    fn deliver<'a>(
        &'a self,
        entry: &'a Entry,
        chain: Chain,
        stanza: Element,
    ) -> Pin<Box<dyn Future<Output = Result<String, DeliverError>> + Send + 'a>> {
        Box::pin(async move {
            let bare = account(entry, chain).unwrap_or_default();
            let preferred = (entry.gateway == *GATEWAY).then_some(entry.session);
            let mut tried = Vec::new();
            for id in self.sessions.candidates(chain, preferred, &bare) {
                match self.sessions.deliver(id, chain, stanza.clone()).await {
                    Ok(()) => return Ok(format!("session {id}")),
                    Err(e) => tried.push(e.to_string()),
                }
            }
            let whom = match chain {
                Chain::C2sIn | Chain::C2sOut => format!("no open session of {bare} on this gateway"),
                Chain::S2sIn | Chain::S2sOut => format!("no open {} stream on this gateway", chain.as_str()),
            };
            let tried = if tried.is_empty() { String::new() } else { format!(" ({})", tried.join("; ")) };
            Err(DeliverError::SessionGone(format!("{whom}{tried}")))
        })
    }
}

/// Sessions first, then a fallback.
#[derive(Debug)]
pub struct Chained {
    first: Arc<dyn Deliver>,
    fallback: Arc<dyn Deliver>,
}

impl Deliver for Chained {
    fn deliver<'a>(
        &'a self,
        entry: &'a Entry,
        chain: Chain,
        stanza: Element,
    ) -> Pin<Box<dyn Future<Output = Result<String, DeliverError>> + Send + 'a>> {
        Box::pin(async move {
            match self.first.deliver(entry, chain, stanza.clone()).await {
                Err(DeliverError::SessionGone(why)) => {
                    self.fallback.deliver(entry, chain, stanza).await.map_err(|e| match e {
                        DeliverError::SessionGone(f) => DeliverError::SessionGone(format!("{why}; {f}")),
                        other => other,
                    })
                }
                other => other,
            }
        })
    }
}

/// The chain and the stanza of an entry, parsed back with the parser every stanza goes
/// through (the stored text is the gateway's own canonical output).
pub fn parse_entry(entry: &Entry) -> Result<(Chain, Element), DeliverError> {
    let chain = entry.chain().ok_or_else(|| DeliverError::Undeliverable(format!("unknown chain '{}'", entry.chain)))?;
    let Some(text) = &entry.stanza else {
        return Err(DeliverError::Undeliverable(format!(
            "a held {} is released by the file pipeline, not as a stanza",
            entry.kind
        )));
    };
    let limits = XmlLimits { stanza_bytes: text.len().max(1024), ..XmlLimits::default() };
    match parse_stanzas(text, limits) {
        Ok(mut v) if v.len() == 1 => Ok((chain, v.remove(0))),
        Ok(_) => Err(DeliverError::Undeliverable("the stored stanza is not one stanza".into())),
        Err(e) => Err(DeliverError::Undeliverable(format!("the stored stanza does not parse: {e}"))),
    }
}

/// Where entries are kept. Calls block (disk, network): the [`Quarantine`] runs them off the
/// async threads. Every state change is one atomic step of the store.
pub trait QuarantineStore: Send + Sync + fmt::Debug {
    /// Keep `entry` (state held) if the bounds allow it.
    fn hold(&self, entry: &Entry, bounds: &QuarantineConfig) -> Result<(), QuarantineError>;
    /// Held (and releasing) entries, oldest first, at most `limit`.
    fn list(&self, limit: usize) -> Result<Vec<Entry>, QuarantineError>;
    /// One entry in any state.
    fn get(&self, id: &str) -> Result<Option<Entry>, QuarantineError>;
    /// held → releasing, for `who`; the entry as it is now.
    fn claim(&self, id: &str, who: &str, now_ms: u64) -> Result<Entry, QuarantineError>;
    /// releasing → released.
    fn finish(&self, id: &str) -> Result<(), QuarantineError>;
    /// releasing → held (the delivery did not happen).
    fn unclaim(&self, id: &str) -> Result<(), QuarantineError>;
    /// Remove the entry in any state; the entry as it was.
    fn delete(&self, id: &str) -> Result<Entry, QuarantineError>;
    /// Remove entries held before `cutoff_ms`; the held ones removed (released records go
    /// silently).
    fn expire(&self, cutoff_ms: u64) -> Result<Vec<Entry>, QuarantineError>;
    /// Held entries and their bytes.
    fn stats(&self) -> Result<(u64, u64), QuarantineError>;
}

/// The quarantine of this gateway: its store, bounds, delivery and metrics.
#[derive(Debug)]
pub struct Quarantine {
    store: Arc<dyn QuarantineStore>,
    bounds: QuarantineConfig,
    metrics: Arc<Metrics>,
    deliver: Arc<dyn Deliver>,
    /// Where held files' bytes are ([`tee`]); `None`: no file entries are kept here.
    state_dir: Option<std::path::PathBuf>,
    /// Whether the XEP-0356 component is among the fallbacks (for the 409's words).
    component: bool,
}

/// A finished release: the entry (now released) and how it was delivered.
#[derive(Debug)]
pub struct Released {
    /// The entry.
    pub entry: Entry,
    /// How (`session 12`, or the fallback's word).
    pub via: String,
}

/// Why a release did not deliver.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// From the store: not found, already released, store failure.
    #[error(transparent)]
    Store(#[from] QuarantineError),
    /// Nobody could take it; the entry is held again.
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    /// A file entry: files are kept for review, not delivered.
    #[error("entry {0} is a file: files are kept for review, not delivered (delete it when reviewed)")]
    File(String),
}

async fn off_loop<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QuarantineError> + Send + 'static,
) -> Result<T, QuarantineError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(QuarantineError::Store(e.to_string())))
}

impl Quarantine {
    /// The quarantine over `store`, delivering into `sessions`.
    pub fn new(
        store: Arc<dyn QuarantineStore>,
        bounds: QuarantineConfig,
        metrics: Arc<Metrics>,
        sessions: Arc<Sessions>,
    ) -> Quarantine {
        Quarantine {
            store,
            bounds,
            metrics,
            deliver: Arc::new(SessionDeliver { sessions }),
            state_dir: None,
            component: false,
        }
    }

    /// Try `fallback` when no session can take a released stanza: the other gateways (Redis),
    /// the XEP-0356 component ([`Quarantine::with_component`]).
    pub fn with_fallback(mut self, fallback: Arc<dyn Deliver>) -> Quarantine {
        self.deliver = Arc::new(Chained { first: self.deliver, fallback });
        self
    }

    /// Last, the XEP-0356 component (`[contacts]`): `crate::component::ComponentDeliver`
    /// (passed in: the component module depends on this one, not the other way round).
    pub fn with_component(mut self, component: Arc<dyn Deliver>) -> Quarantine {
        self.component = true;
        self.with_fallback(component)
    }

    /// The store `config` asks for: Redis with `[store] backend = "redis"`, else the embedded
    /// database in the state directory.
    pub fn open(
        config: &stanzawall_core::config::Config,
        metrics: Arc<Metrics>,
        sessions: Arc<Sessions>,
    ) -> Result<Quarantine, QuarantineError> {
        match &config.store.backend {
            stanzawall_core::config::StoreBackend::Redis { url } => {
                let store =
                    Arc::new(redis::RedisQuarantine::new(url, &config.store.prefix, config.quarantine.retention)?);
                // Releases from another gateway reach this one's sessions, and the other way round.
                store.start_delivery(sessions.clone(), tokio::runtime::Handle::current());
                let remote = Arc::new(redis::RemoteDeliver { store: store.clone() });
                Ok(Quarantine::new(store, config.quarantine.clone(), metrics, sessions)
                    .with_fallback(remote)
                    .with_state_dir(config.state_dir.clone()))
            }
            stanzawall_core::config::StoreBackend::Memory => {
                let store = Arc::new(embedded::Embedded::open(&config.quarantine.path)?);
                Ok(Quarantine::new(store, config.quarantine.clone(), metrics, sessions)
                    .with_state_dir(config.state_dir.clone()))
            }
        }
    }

    fn count(&self, event: &'static str, entry: &Entry) {
        let kind = if entry.kind == "file" { "file" } else { "stanza" };
        self.metrics.quarantine.get_or_create(&QuarantineLabels { event, kind }).inc();
    }

    /// Keep the bytes of held files below `state_dir` (deleting an entry removes them).
    pub fn with_state_dir(mut self, state_dir: std::path::PathBuf) -> Quarantine {
        self.state_dir = Some(state_dir);
        self
    }

    /// Remove the bytes of a file entry that is gone (deleted, expired).
    async fn remove_bytes(&self, entry: &Entry) {
        let (Some(file), Some(dir)) = (&entry.file, &self.state_dir) else { return };
        // Only a path the tee made: an entry from a shared store must not name any other file.
        if !tee::is_file_path(&file.path) {
            return warn!(quarantine.id = %entry.id, path = %file.path, "file entry with an unexpected path: not removed");
        }
        match tokio::fs::remove_file(dir.join(&file.path)).await {
            Ok(()) => {}
            // Kept by another gateway sharing the store (Redis): its files are on its disk.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(quarantine.id = %entry.id, error = %e, "could not remove a held file"),
        }
    }

    /// Store a held stanza (before the session reads on), or a held file (after its bytes are
    /// synced).
    pub async fn hold(&self, entry: Entry) -> Result<(), QuarantineError> {
        let (store, bounds) = (self.store.clone(), self.bounds.clone());
        let counted = entry.clone();
        let r = off_loop(move || store.hold(&entry, &bounds)).await;
        self.count(if r.is_ok() { "held" } else { "refused" }, &counted);
        self.refresh_gauges().await;
        r
    }

    /// Held entries, oldest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<Entry>, QuarantineError> {
        let store = self.store.clone();
        off_loop(move || store.list(limit.min(MAX_LIST))).await
    }

    /// Held entries and bytes.
    pub async fn stats(&self) -> Result<(u64, u64), QuarantineError> {
        let store = self.store.clone();
        off_loop(move || store.stats()).await
    }

    /// One entry.
    pub async fn get(&self, id: &str) -> Result<Entry, QuarantineError> {
        let (store, key) = (self.store.clone(), id.to_owned());
        off_loop(move || store.get(&key)).await?.ok_or_else(|| QuarantineError::NotFound(id.to_owned()))
    }

    /// Release entry `id` for `who`: claim, deliver, then mark released or undo the claim.
    pub async fn release(&self, id: &str, who: &str) -> Result<Released, ReleaseError> {
        // Files are kept for review, never delivered: refused before any claim, so the entry
        // stays as it is.
        if self.get(id).await?.kind == "file" {
            return Err(ReleaseError::File(id.to_owned()));
        }
        let (store, key, by) = (self.store.clone(), id.to_owned(), who.to_owned());
        let mut entry = off_loop(move || store.claim(&key, &by, unix_ms(SystemTime::now()))).await?;
        let outcome = match parse_entry(&entry) {
            Ok((chain, stanza)) => self.deliver.deliver(&entry, chain, stanza).await,
            Err(e) => Err(e),
        };
        let (store, key) = (self.store.clone(), id.to_owned());
        match outcome {
            Ok(via) => {
                if let Err(e) = off_loop(move || store.finish(&key)).await {
                    // Delivered: the claim stands (the entry reads `releasing`, never held again).
                    error!(quarantine.id = %id, error = %e, "released, but the store did not record it");
                }
                self.count("released", &entry);
                self.refresh_gauges().await;
                entry.state = State::Released;
                Ok(Released { entry, via })
            }
            // Perhaps delivered elsewhere: never held again (at most once).
            Err(e @ DeliverError::Uncertain(_)) => Err(e.into()),
            Err(e) => {
                if let Err(u) = off_loop(move || store.unclaim(&key)).await {
                    warn!(quarantine.id = %id, error = %u, "could not undo the claim of an undelivered release");
                }
                Err(match e {
                    DeliverError::SessionGone(why) => {
                        let component = if self.component { "" } else { "; no component delivery is configured" };
                        DeliverError::SessionGone(format!(
                            "{why}{component}; the entry stays held: release it again when the account is back"
                        ))
                    }
                    other => other,
                }
                .into())
            }
        }
    }

    /// Delete entry `id`.
    pub async fn delete(&self, id: &str) -> Result<Entry, QuarantineError> {
        let (store, key) = (self.store.clone(), id.to_owned());
        let r = off_loop(move || store.delete(&key)).await;
        if let Ok(entry) = &r {
            self.remove_bytes(entry).await;
            self.count("deleted", entry);
            self.refresh_gauges().await;
        }
        r
    }

    /// Remove what is past `retention`; the held entries that expired.
    pub async fn expire(&self) -> Result<Vec<Entry>, QuarantineError> {
        let cutoff = unix_ms(SystemTime::now())
            .saturating_sub(u64::try_from(self.bounds.retention.as_millis()).unwrap_or(u64::MAX));
        let store = self.store.clone();
        let gone = off_loop(move || store.expire(cutoff)).await?;
        for entry in &gone {
            self.remove_bytes(entry).await;
            self.count("expired", entry);
        }
        self.refresh_gauges().await;
        Ok(gone)
    }

    async fn refresh_gauges(&self) {
        if let Ok((entries, bytes)) = self.stats().await {
            self.metrics.quarantine_entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
            self.metrics.quarantine_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }
}

/// The record of a stanza a `quarantine` rule held: `"event": "quarantine"`, `"action":
/// "quarantine"`, the entry's `id` and what it says about the stanza; `outcome` is `held`, or
/// `drop` with the `reason` when the quarantine refused it (full, unavailable).
pub fn audit_record(entry: &Entry, refused: Option<&QuarantineError>, origin: crate::audit::Origin<'_>) -> Value {
    let mut v = audit_event(if refused.is_some() { "drop" } else { "held" }, entry, None);
    if let Some(map) = v.as_object_mut() {
        map.insert("listener".into(), json!(origin.listener));
        map.insert("client.ip".into(), json!(origin.client_ip.to_string()));
        map.insert("user".into(), json!(origin.user));
        if let Some(e) = refused {
            map.insert("reason".into(), json!(e.to_string()));
        }
    }
    v
}

/// A quarantine record: `outcome` is `held`, `drop`, `expired` (retention passed); `by` the
/// operator for releases and deletions made elsewhere.
pub fn audit_event(outcome: &str, entry: &Entry, by: Option<&str>) -> Value {
    json!({
        "time": crate::audit::humantime_rfc3339(std::time::SystemTime::now()),
        "event": "quarantine",
        "action": "quarantine",
        "outcome": outcome,
        "id": entry.id,
        "chain": entry.chain,
        "rule": entry.rule,
        "session": entry.session,
        "from": entry.from,
        "to": entry.to,
        "kind": entry.kind,
        "by": by,
    })
}

#[cfg(test)]
mod tests;
