//! What the supervisor and the connections share: config generations, daemon-wide state, the
//! admission permit and the ban file.
//!
//! A [`Generation`] is one validated config with its certificates loaded and its policy
//! compiled; [`Shared`] is what outlives generations (the guard, rate buckets, metrics, the
//! audit writer). A [`Permit`] is an admitted connection's slot in the guard; a failed
//! authentication through it may ban the source, and the ban table is then persisted to the
//! state directory, which [`load_bans`] reads back at start and [`reconcile_bans`] on reload.
//! Every file read here runs on a thread of its own under a deadline ([`crate::files`]).
//! [`crate::server`] (the supervisor) and [`crate::conn`] (one connection) both import this
//! module and neither imports the other's internals through it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use stanzawall_core::config::{Config, ConfigError, Files};
use stanzawall_core::guard::{Cidr, ConnectionGuard};
use stanzawall_core::policy::{Policy, RateStore};
use tracing::{error, info};

use crate::audit::Audit;
use crate::files::{self, OffLoopError, LOAD_DEADLINE};
use crate::metrics::Metrics;
use crate::nft::BanSync;
use crate::store::{BanEvent, RedisStore};
use crate::tls::TlsStore;

/// One config generation: the validated config and everything loaded from files it names.
#[derive(Debug)]
pub struct Generation {
    /// The configuration.
    pub config: Config,
    /// Certificates and backend TLS settings.
    pub tls: TlsStore,
    /// Live ban sync to nftables (`[nftables] sync = true`).
    pub ban_sync: Option<BanSync>,
    /// The compiled policy.
    pub policy: Arc<Policy>,
    /// Federation: dialback secret, resolver, trust roots (with `[s2s]`).
    pub s2s: Option<Arc<crate::s2s::S2sRuntime>>,
    /// The admin API's tokens (`[admin] tokens`); empty without the file.
    pub admin_tokens: Arc<crate::tokens::TokenSet>,
    /// TLS and client certificates of the admin listener (`[admin] tls_*`, `client_ca`).
    pub admin_tls: Option<Arc<crate::admin_tls::AdminTls>>,
    /// What every file must satisfy: the `file` chain's rules, then the `[file_transfer]`
    /// checks (with `[file_transfer]`).
    pub inspect: Option<Arc<stanzawall_core::transfer::InspectPolicy>>,
}

/// Daemon-wide state that outlives generations.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Admission at accept (lists, caps, rates, bans).
    pub guard: SharedGuard,
    /// Rate-limit buckets of `rate` conditions (kept across reloads).
    pub rates: Arc<dyn RateStore>,
    /// Prometheus families.
    pub metrics: Arc<Metrics>,
    /// The audit log writer.
    pub audit: Audit,
    /// Open sessions (admin API: list, kick).
    pub sessions: Arc<crate::sessions::Sessions>,
    /// The shared store (`[store] backend = "redis"`): also `rates`; bans are counted there.
    pub store: Option<Arc<RedisStore>>,
    /// Held stanzas (`quarantine` rules); `None` when its store could not be opened (then a
    /// stanza to hold is dropped and audited).
    pub quarantine: Option<Arc<crate::quarantine::Quarantine>>,
}

/// Errors loading a generation: either a config mistake or an unreadable file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The config file cannot be read at all.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A mistake at a line of the config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The load did not finish (see [`files::off_loop`]).
    #[error("{path}: loading the configuration {source}")]
    Unfinished {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: OffLoopError,
    },
}

impl Generation {
    /// Read, validate and load everything the config file names.
    pub fn load(path: &Path) -> Result<Generation, LoadError> {
        let config = load_config(path)?;
        let policy = Arc::new(Policy::compile(&config.policy)?);
        let tls = TlsStore::load(&config)?;
        let ban_sync = BanSync::new(&config);
        let s2s = crate::s2s::S2sRuntime::load(&config, &tls)?.map(Arc::new);
        let admin_tokens = Arc::new(load_admin_tokens(&config)?);
        let admin_tls = crate::admin_tls::load(&config, &tls)?;
        let inspect = match &config.file_transfer {
            None => None,
            Some(ft) => Some(Arc::new(ft.inspect_policy(policy.file_rules().clone()).map_err(|e| {
                LoadError::Config(
                    stanzawall_core::origin::Origin { file: path.to_path_buf(), line: 0, key: "file_transfer".into() }
                        .error(e.to_string()),
                )
            })?)),
        };
        Ok(Generation { config, tls, ban_sync, policy, s2s, admin_tokens, admin_tls, inspect })
    }
}

impl Generation {
    /// A generation for `stanzawall inspect` (a policy-only config is enough): what its admin
    /// listener needs — the token file and the admin TLS material, loaded with the gateway's
    /// errors — and no listeners' certificates beyond those the config names, no federation,
    /// no nftables sync.
    pub fn for_inspection(config: Config, policy: Arc<Policy>) -> Result<Generation, LoadError> {
        let tls = TlsStore::load(&config)?;
        let admin_tokens = Arc::new(load_admin_tokens(&config)?);
        let admin_tls = crate::admin_tls::load(&config, &tls)?;
        Ok(Generation { config, tls, ban_sync: None, policy, s2s: None, admin_tokens, admin_tls, inspect: None })
    }
}

/// The token file `[admin] tokens` names; errors point at that line of the config.
fn load_admin_tokens(config: &Config) -> Result<crate::tokens::TokenSet, ConfigError> {
    let (Some(path), Some(origin)) = (&config.admin.tokens, &config.admin.tokens_origin) else {
        return Ok(Default::default());
    };
    let text = files::read_to_string(path).map_err(|e| origin.error(format!("{}: {e}", path.display())))?;
    crate::tokens::TokenSet::parse(&text).map_err(|e| origin.error(format!("{}:{e}", path.display())))
}

/// Load the generation at `path` on a thread of its own, giving up after [`LOAD_DEADLINE`];
/// the caller keeps serving (and answering signals) meanwhile.
pub async fn load_off_loop(path: &Path) -> Result<Generation, LoadError> {
    let owned = path.to_owned();
    match files::off_loop(LOAD_DEADLINE, move || Generation::load(&owned)).await {
        Ok(loaded) => loaded,
        Err(source) => Err(LoadError::Unfinished { path: path.to_owned(), source }),
    }
}

/// Read the ban file off the control loop (`None`: it could not be read; logged).
async fn read_bans_off_loop(dir: &Path) -> Option<String> {
    let owned = dir.to_owned();
    files::off_loop(LOAD_DEADLINE, move || read_bans(&owned)).await.unwrap_or_else(|e| {
        error!(state_dir = %dir.display(), error = %e, "cannot read bans");
        None
    })
}

/// [`Generation::load`] for the one-shot commands (`check`, `nft`, `explain`): under the same
/// deadline, so they end even if a file hangs.
pub fn load_with_deadline(path: &Path) -> Result<Generation, LoadError> {
    let owned = path.to_owned();
    files::with_deadline(LOAD_DEADLINE, move || Generation::load(&owned))
        .unwrap_or_else(|source| Err(LoadError::Unfinished { path: path.to_owned(), source }))
}

/// [`load_config`] under the deadline, for the one-shot commands.
pub fn load_config_with_deadline(path: &Path) -> Result<Config, LoadError> {
    let owned = path.to_owned();
    files::with_deadline(LOAD_DEADLINE, move || load_config(&owned))
        .unwrap_or_else(|source| Err(LoadError::Unfinished { path: path.to_owned(), source }))
}

/// The file system, for the list files and includes a config names: regular files of at most
/// [`files::MAX_FILE_BYTES`] only.
#[derive(Debug, Clone, Copy)]
pub struct StdFiles;

impl Files for StdFiles {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        files::read_to_string(path)
    }

    fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect()
    }
}

/// Read and validate the config at `path` with the files it names.
pub fn load_config(path: &Path) -> Result<Config, LoadError> {
    let text = files::read_to_string(path).map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
    Ok(Config::parse_with(&text, path, &StdFiles)?)
}

/// The admission state shared by all listeners (short critical sections, no await inside).
pub type SharedGuard = Arc<Mutex<ConnectionGuard>>;

pub fn lock(guard: &SharedGuard) -> MutexGuard<'_, ConnectionGuard> {
    // A panic while holding the lock cannot leave the counters half-updated in a way that
    // matters more than refusing service; keep going with the data as it is.
    guard.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An admitted connection's slot in the guard, given back on drop (also on unwinding).
#[derive(Debug)]
pub struct Permit {
    guard: SharedGuard,
    ip: IpAddr,
    /// What the guard counted the connection against (released on drop).
    source: Cidr,
    state_dir: PathBuf,
    store: Option<Arc<RedisStore>>,
}

impl Permit {
    /// The slot of a connection from `ip` that the guard admitted as `source`; failed
    /// authentications are persisted to the ban file in `state_dir`.
    pub fn new(guard: SharedGuard, ip: IpAddr, source: Cidr, state_dir: PathBuf) -> Permit {
        Permit { guard, ip, source, state_dir, store: None }
    }

    /// Count this connection's failed authentications in the shared store too.
    pub fn with_store(mut self, store: Option<Arc<RedisStore>>) -> Permit {
        self.store = store;
        self
    }

    /// Count a failed authentication from this connection's source (the address's
    /// [`stanzawall_core::guard::source_key`], so an IPv6 /64 as a whole). If it bans the source,
    /// the ban table is written to the state directory (bans survive a restart) and the ban's
    /// expiry is returned.
    pub async fn auth_failed(&self) -> Option<SystemTime> {
        let until = match &self.store {
            None => lock(&self.guard).record_auth_failure(self.ip, SystemTime::now())?,
            Some(store) => {
                // Counted in the store, so failures spread over several gateways add up; the
                // ban reaches the others through the store's channel. Without the store (down,
                // or no answer in time) this gateway counts alone.
                let (store, guard, ip) = (store.clone(), self.guard.clone(), self.ip);
                let shared = tokio::task::spawn_blocking(move || {
                    let (source, ban) = {
                        let g = lock(&guard);
                        (g.source(ip), g.ban_config())
                    };
                    let now = SystemTime::now();
                    let until = store.auth_failed(source, now, &ban, || lock(&guard).record_auth_failure(ip, now))?;
                    lock(&guard).bans().ban_until(source, until);
                    Some(until)
                })
                .await;
                match shared {
                    Ok(until) => until?,
                    Err(e) => {
                        error!(error = %e, "ban counter failed");
                        return None;
                    }
                }
            }
        };
        persist_bans(&self.guard, &self.state_dir).await;
        Some(until)
    }
}

/// Write the ban table to the state directory (bans survive a restart).
pub async fn persist_bans(guard: &SharedGuard, state_dir: &Path) {
    let table = lock(guard).bans().to_text(SystemTime::now());
    let dir = state_dir.to_owned();
    match tokio::task::spawn_blocking(move || write_bans(&dir, &table)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(state_dir = %state_dir.display(), error = %e, "cannot persist bans"),
        Err(e) => error!(error = %e, "ban writer failed"),
    }
}

/// The ban table's file in the state directory.
fn bans_path(dir: &Path) -> PathBuf {
    dir.join("bans")
}

/// Replace the ban file atomically (write a temporary file, then rename over the old one).
pub(crate) fn write_bans(dir: &Path, table: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("bans.tmp");
    std::fs::write(&tmp, table)?;
    std::fs::rename(tmp, bans_path(dir))
}

/// Read the ban file (a missing file is an empty table; `None` if it cannot be read).
fn read_bans(dir: &Path) -> Option<String> {
    match files::read_to_string(&bans_path(dir)) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(String::new()),
        Err(e) => {
            error!(state_dir = %dir.display(), error = %e, "cannot read bans");
            None
        }
    }
}

/// Load the bans a previous run wrote, and hand them to nftables when syncing (the ruleset may
/// have been loaded before they were made).
pub async fn load_bans(guard: &SharedGuard, generation: &Generation) {
    let dir = &generation.config.state_dir;
    let Some(text) = read_bans_off_loop(dir).await else { return };
    let text = text.as_str();
    let now = SystemTime::now();
    let entries = {
        let mut g = lock(guard);
        let (loaded, skipped) = g.bans().from_text(text, now, generation.config.network.guard.ipv6_prefix);
        info!(state_dir = %dir.display(), loaded, expired_or_malformed = skipped, "bans loaded");
        g.bans().entries(now)
    };
    if let Some(sync) = &generation.ban_sync {
        for (source, until) in entries {
            sync.ban_source(source, until).await;
        }
    }
}

/// On reload, the ban file is the operator's word: lines removed from it lift those bans (the
/// way to unban by hand), lines added are bans; both reach nftables when syncing.
pub async fn reconcile_bans(guard: &SharedGuard, generation: &Generation) {
    // Read now, not with the config: a ban made while the config loaded is in the file by now.
    let Some(text) = read_bans_off_loop(&generation.config.state_dir).await else { return };
    let text = text.as_str();
    let now = SystemTime::now();
    let (wanted, _) = stanzawall_core::ban::BanList::parse_text(text, now, generation.config.network.guard.ipv6_prefix);
    let (lifted, added) = {
        let mut g = lock(guard);
        let current = g.bans().entries(now);
        // By source: the file keeps whole seconds, the table exact expiries, so comparing
        // (source, expiry) pairs would re-add every ban on every reload.
        let current_keys: std::collections::HashSet<Cidr> = current.iter().map(|&(key, _)| key).collect();
        let wanted_keys: std::collections::HashSet<Cidr> = wanted.iter().map(|&(key, _)| key).collect();
        let lifted: Vec<Cidr> = current_keys.difference(&wanted_keys).copied().collect();
        let added: Vec<(Cidr, SystemTime)> =
            wanted.iter().copied().filter(|(key, _)| !current_keys.contains(key)).collect();
        for key in &lifted {
            g.bans().unban(*key);
        }
        for &(key, until) in &added {
            g.bans().ban_until(key, until);
        }
        (lifted, added)
    };
    for key in &lifted {
        info!(client.source = %key, "ban lifted (removed from the ban file)");
    }
    if let Some(sync) = &generation.ban_sync {
        for key in lifted {
            sync.unban(key).await;
        }
        for (key, until) in added {
            sync.ban_source(key, until).await;
        }
    }
}

/// Apply bans from the shared store (`crate::store`) to this gateway: its guard, its ban file, its nftables set.
/// Bans this gateway already holds (its own, echoed by the channel) are skipped.
pub async fn apply_bans(
    store: Arc<RedisStore>,
    mut events: tokio::sync::mpsc::Receiver<BanEvent>,
    guard: SharedGuard,
    gen_rx: tokio::sync::watch::Receiver<Arc<Generation>>,
    list_edits: tokio::sync::mpsc::Sender<crate::store::ListEdit>,
) {
    while let Some(event) = events.recv().await {
        if let BanEvent::List(edit) = event {
            let _ = list_edits.send(edit).await;
            continue;
        }
        let now = SystemTime::now();
        let (added, local_only) = {
            let mut g = lock(&guard);
            let held = g.bans().entries(now);
            let (incoming, snapshot) = match event {
                BanEvent::Ban(source, until) => (vec![(source, until)], false),
                BanEvent::Snapshot(all) => (all, true),
                BanEvent::List(_) => (Vec::new(), false),
            };
            let mut added = Vec::new();
            for (source, until) in &incoming {
                if until <= &now || held.iter().any(|(s, u)| s == source && u >= until) {
                    continue;
                }
                g.bans().ban_until(*source, *until);
                added.push((*source, *until));
            }
            // On a snapshot: bans made here while the store was down go to the others now.
            let local_only: Vec<(Cidr, SystemTime)> = match snapshot {
                true => held.into_iter().filter(|(s, _)| !incoming.iter().any(|(i, _)| i == s)).collect(),
                false => Vec::new(),
            };
            (added, local_only)
        };
        if !local_only.is_empty() {
            let store = store.clone();
            let count = local_only.len();
            match tokio::task::spawn_blocking(move || store.push_bans(&local_only)).await {
                Ok(Ok(())) => info!(bans = count, "bans made while the shared store was down pushed to it"),
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot push local bans to the shared store"),
                Err(e) => tracing::warn!(error = %e, "ban pusher failed"),
            }
        }
        if added.is_empty() {
            continue;
        }
        let generation = gen_rx.borrow().clone();
        for (source, until) in &added {
            info!(client.source = %source, banned_until_unix = crate::store::unix_secs(*until), "ban received from the shared store");
        }
        persist_bans(&guard, &generation.config.state_dir).await;
        if let Some(sync) = &generation.ban_sync {
            for (source, until) in added {
                sync.ban_source(source, until).await;
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        lock(&self.guard).release(self.source);
    }
}
