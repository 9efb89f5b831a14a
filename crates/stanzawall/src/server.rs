//! The daemon's supervisor: listeners, config generations, reload and shutdown.
//!
//! A [`Generation`] is one validated config with its certificates loaded. It is published through
//! a `watch` channel; each accepted connection keeps the listener, limits and certificates of the
//! generation current at accept time, while its policy follows reloads: an open session evaluates
//! its next stanza against the newest policy (`StreamMachine::set_policy`). A reload is all or
//! nothing: parse, validate, load certificates, bind new sockets — any failure keeps the old
//! generation and logs why. Every load (the config, its includes and list files, certificates,
//! the ban file) runs on a thread of its own under a deadline ([`crate::files`]), while this
//! loop keeps answering SIGTERM/SIGINT. Shutdown stops accepting, asks every session to send
//! `<system-shutdown/>`, and waits a bounded time for them to finish. A drain (SIGUSR2, `POST
//! /api/v1/drain`) stops accepting and fails `/readyz` at once, lets sessions go on for
//! `[drain] grace`, then ends them with `<see-other-host/>` once their Stream Management is
//! settled, and exits when the last one has ended ([`drain`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use stanzawall_core::config::ConfigError;
use stanzawall_core::policy::RateTable;
use stanzawall_core::stream::{Condition, StreamError};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn, Instrument};

use stanzawall_core::guard::{Admission, ConnectionGuard};

use crate::audit::Audit;
use crate::conn;
use crate::metrics::Metrics;
use crate::state::{
    load_bans, load_off_loop, lock, reconcile_bans, Generation, LoadError, Permit, Shared, SharedGuard,
};

/// How often list files are checked for changes.
const LIST_POLL: Duration = Duration::from_millis(500);
/// How long shutdown waits for sessions to deliver `<system-shutdown/>` and close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a drain waits, after the grace period, for the sessions it asked to end: their
/// acknowledgements (bounded in the core) and the flush of their last bytes.
const DRAIN_END_BOUND: Duration = Duration::from_secs(stanzawall_core::session::c2s::DRAIN_ACK_TIMEOUT.as_secs() + 5);

/// Size and modification time of each watched file (list files), to notice edits.
fn fingerprint(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files.iter().map(|f| std::fs::metadata(f).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect()
}

struct RunningListener {
    bind: SocketAddr,
    task: JoinHandle<()>,
}

/// Run the daemon until SIGTERM/SIGINT.
pub async fn run(path: PathBuf) -> anyhow::Result<()> {
    let first = Arc::new(load_off_loop(&path).await?);
    let metrics = Arc::new(Metrics::default());
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    crate::relay::register_metrics(&mut registry);
    crate::transfers::register_metrics(&mut registry);
    crate::component::register_metrics(&mut registry);
    // `[store]` is read once: the store is where state lives, not a setting to swap on reload.
    let store = crate::store::RedisStore::new(&first.config.store)?;
    if let Some(store) = &store {
        store.register(&mut registry);
    }
    let registry = Arc::new(registry);
    let guard: SharedGuard = Arc::new(Mutex::new(ConnectionGuard::new(first.config.network.guard.clone())));
    let rates: Arc<dyn stanzawall_core::policy::RateStore> = match &store {
        Some(store) => store.clone(),
        None => Arc::new(RateTable::new()),
    };
    let sessions = Arc::new(crate::sessions::Sessions::default());
    // Like `[store]`, read once: the quarantine lives where the store does.
    let quarantine = match crate::quarantine::Quarantine::open(&first.config, metrics.clone(), sessions.clone()) {
        // With `[contacts]`, a held message whose sender is gone goes through the component.
        Ok(q) if first.config.contacts.is_some() => {
            Some(Arc::new(q.with_component(Arc::new(crate::component::ComponentDeliver))))
        }
        Ok(q) => Some(Arc::new(q)),
        Err(e) => {
            error!(error = %e, "cannot open the quarantine; stanzas to hold will be dropped (audited)");
            None
        }
    };
    let shared = Shared {
        guard: guard.clone(),
        rates,
        metrics: metrics.clone(),
        audit: Audit::start(metrics.clone(), store.clone().map(|s| s as Arc<dyn crate::audit::Sequencer>)),
        sessions,
        store,
        quarantine,
    };

    let (gen_tx, gen_rx) = watch::channel(first.clone());
    tokio::spawn(housekeeping(
        shared.quarantine.clone(),
        shared.rates.clone(),
        metrics,
        shared.audit.clone(),
        gen_rx.clone(),
    ));
    // The admin API's reloads come through here and are answered with their outcome.
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<crate::admin::ReloadRequest>(8);
    let admin_state =
        Arc::new(crate::admin::Admin::new(gen_rx.clone(), shared.clone(), registry.clone(), reload_tx.clone()));
    let mut admin = first.config.admin.bind.map(|b| (b, tokio::spawn(crate::admin::serve(b, admin_state.clone()))));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let tracker = TaskTracker::new();
    let mut running: HashMap<String, RunningListener> = HashMap::new();
    let sockets = bind_new(&first, &running).await?;
    load_bans(&guard, &first).await;
    if let Some(store) = &shared.store {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        store.start(tx);
        // List edits other gateways published are made here by the admin side (state never
        // calls into admin).
        let (edits_tx, mut edits_rx) = tokio::sync::mpsc::channel::<crate::store::ListEdit>(64);
        let admin_edits = admin_state.clone();
        tokio::spawn(async move {
            while let Some(edit) = edits_rx.recv().await {
                crate::admin::api::apply_remote_list_edit(&admin_edits, &edit).await;
            }
        });
        tokio::spawn(crate::state::apply_bans(store.clone(), rx, guard.clone(), gen_rx.clone(), edits_tx));
    }
    crate::component::start(&first, shared.clone(), gen_rx.clone(), reload_tx.clone()).await?;
    start_listeners(&first, sockets, &mut running, &gen_rx, &shutdown_rx, &tracker, &shared).await;
    admin_state.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    info!(config = %path.display(), listeners = first.config.listeners.len(), version = env!("CARGO_PKG_VERSION"), "stanzawall started");

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut drain_rx = admin_state.drain.subscribe();
    let mut draining = false;
    // List files are polled: an edit takes effect within a second or two, with no signal.
    let mut poll = tokio::time::interval(LIST_POLL);
    let mut watched = first.config.watched_files();
    let mut seen = fingerprint(&watched);
    loop {
        let mut api_reply = None;
        let reload_now = tokio::select! {
            _ = hup.recv() => true,
            Some(reply) = reload_rx.recv() => {
                api_reply = Some(reply);
                true
            }
            _ = poll.tick() => {
                let changed = fingerprint(&watched) != seen;
                if changed {
                    info!(files = ?watched, "a list file changed; reloading");
                }
                changed
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = usr2.recv() => {
                draining = true;
                break;
            }
            Ok(()) = drain_rx.changed() => {
                draining = *drain_rx.borrow_and_update();
                if draining {
                    break;
                }
                false
            }
        };
        if reload_now {
            // Taken before the files are read: an edit that lands while the reload reads them is
            // seen at the next tick (a fingerprint taken after could hide it for good).
            let before = fingerprint(&watched);
            // Read off this loop, which keeps answering SIGTERM/SIGINT meanwhile.
            let loaded = tokio::select! {
                loaded = load_off_loop(&path) => loaded,
                _ = term.recv() => break,
                _ = int.recv() => break,
            };
            let outcome = reload(loaded, &gen_tx, &mut running, &gen_rx, &shutdown_rx, &tracker, &shared).await;
            if let Some(reply) = api_reply {
                let _ = reply.send(outcome);
            }
            let current = gen_rx.borrow().clone();
            let now_watched = current.config.watched_files();
            // Files the new config added have no fingerprint yet: the next tick reloads once more.
            seen = if now_watched == watched { before } else { vec![None; now_watched.len()] };
            watched = now_watched;
            let bind = current.config.admin.bind;
            if admin.as_ref().map(|(b, _)| *b) != bind {
                if let Some((_, task)) = admin.take() {
                    task.abort();
                }
                admin = bind.map(|b| (b, tokio::spawn(crate::admin::serve(b, admin_state.clone()))));
            }
        }
    }

    if draining {
        let stop = Stop { term: &mut term, int: &mut int };
        drain(&mut running, &admin_state, &shared, &tracker, &gen_rx, stop).await;
    }
    info!(sessions = tracker.len(), "shutting down");
    for (_, l) in running.drain() {
        l.task.abort();
    }
    let _ = shutdown_tx.send(true);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        warn!(sessions = tracker.len(), "sessions still open after the grace period; exiting");
    }
    info!("stopped");
    Ok(())
}

/// The signals that end a drain early (the operator wants the process gone now).
struct Stop<'a> {
    term: &'a mut tokio::signal::unix::Signal,
    int: &'a mut tokio::signal::unix::Signal,
}

impl Stop<'_> {
    async fn asked(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Leave the pool of gateways (SIGUSR2, `POST /api/v1/drain`; README "Running several
/// gateways"): stop accepting on every listener and answer `/readyz` with 503 at once, so the
/// balancer's health check takes this gateway out while open sessions go on; after `[drain]
/// grace`, end the remaining ones with `<see-other-host/>` naming `[drain] peer` (else
/// `<system-shutdown/>`), each once its Stream Management is settled (`session::c2s::drain`).
/// Returns when no session is left, or at a bound past that, or when SIGTERM/SIGINT comes; the
/// caller's shutdown then ends whatever remains.
async fn drain(
    running: &mut HashMap<String, RunningListener>,
    admin: &crate::admin::Admin,
    shared: &Shared,
    tracker: &TaskTracker,
    gen_rx: &watch::Receiver<Arc<Generation>>,
    mut stop: Stop<'_>,
) {
    admin.ready.store(false, std::sync::atomic::Ordering::Relaxed);
    admin.drain.send_replace(true);
    for (name, l) in running.drain() {
        l.task.abort();
        let _ = l.task.await;
        info!(listener = %name, bind = %l.bind, "listener stopped (draining)");
    }
    let config = gen_rx.borrow().config.drain.clone();
    info!(
        grace_s = config.grace.as_secs_f64(),
        peer = config.peer.as_deref().unwrap_or("-"),
        sessions = tracker.len(),
        "draining: not accepting, /readyz answers 503; sessions go on for the grace period"
    );
    tracker.close();
    tokio::select! {
        _ = tracker.wait() => return info!("drained: every session ended within the grace period"),
        _ = tokio::time::sleep(config.grace) => {}
        _ = stop.asked() => return info!("stop asked while draining"),
    }
    let error = match config.peer {
        Some(peer) => {
            StreamError::see_other_host(peer, Some("this gateway is leaving; connect to the named host".into()))
        }
        None => StreamError::new(Condition::SystemShutdown, None),
    };
    let asked = shared.sessions.drain_all(&error);
    info!(sessions = asked, condition = error.condition.as_str(), "drain grace over: ending the remaining sessions");
    tokio::select! {
        _ = tracker.wait() => info!("drained: every session ended"),
        _ = tokio::time::sleep(DRAIN_END_BOUND) => warn!(sessions = tracker.len(), "sessions still open after the drain; shutting them down"),
        _ = stop.asked() => info!("stop asked while draining"),
    }
}

/// Bind the sockets a generation needs that are not already bound at the same address.
async fn bind_new(
    generation: &Generation,
    running: &HashMap<String, RunningListener>,
) -> Result<HashMap<String, TcpListener>, ConfigError> {
    let mut sockets = HashMap::new();
    for l in &generation.config.listeners {
        if running.get(&l.name).is_some_and(|r| r.bind == l.bind) {
            continue;
        }
        // A listener moving to an address another running listener holds is bound after that one
        // stops; any other address must be free now.
        if running.values().any(|r| r.bind == l.bind) {
            continue;
        }
        let socket = TcpListener::bind(l.bind)
            .await
            .map_err(|e| l.bind_origin.error(format!("cannot listen on {}: {e}", l.bind)))?;
        sockets.insert(l.name.clone(), socket);
    }
    Ok(sockets)
}

async fn start_listeners(
    generation: &Arc<Generation>,
    mut sockets: HashMap<String, TcpListener>,
    running: &mut HashMap<String, RunningListener>,
    gen_rx: &watch::Receiver<Arc<Generation>>,
    shutdown_rx: &watch::Receiver<bool>,
    tracker: &TaskTracker,
    shared: &Shared,
) {
    // Stop listeners that are gone or moved, and wait until their sockets are closed: an
    // address they held may be bound again just below (a renamed or swapped listener).
    let keep: Vec<(String, SocketAddr)> =
        generation.config.listeners.iter().map(|l| (l.name.clone(), l.bind)).collect();
    let stopped: Vec<String> = running
        .iter()
        .filter(|(name, r)| !keep.iter().any(|(n, b)| n == *name && *b == r.bind))
        .map(|(name, _)| name.clone())
        .collect();
    for name in stopped {
        if let Some(r) = running.remove(&name) {
            r.task.abort();
            let _ = r.task.await;
            info!(listener = %name, bind = %r.bind, "listener stopped");
        }
    }
    for l in &generation.config.listeners {
        if running.contains_key(&l.name) {
            continue;
        }
        let socket = match sockets.remove(&l.name) {
            Some(s) => s,
            // Its address was held by a listener stopped just above.
            None => match std::net::TcpListener::bind(l.bind).and_then(|s| {
                s.set_nonblocking(true)?;
                TcpListener::from_std(s)
            }) {
                Ok(s) => s,
                Err(e) => {
                    error!(listener = %l.name, bind = %l.bind, error = %e, "cannot listen");
                    continue;
                }
            },
        };
        info!(listener = %l.name, kind = l.kind.as_str(), bind = %l.bind, backend = %l.backend.address, "listening");
        let task = tokio::spawn(accept_loop(
            l.name.clone(),
            socket,
            gen_rx.clone(),
            shutdown_rx.clone(),
            tracker.clone(),
            shared.clone(),
        ));
        running.insert(l.name.clone(), RunningListener { bind: l.bind, task });
    }
}

async fn accept_loop(
    name: String,
    socket: TcpListener,
    gen_rx: watch::Receiver<Arc<Generation>>,
    shutdown_rx: watch::Receiver<bool>,
    tracker: TaskTracker,
    shared: Shared,
) {
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let generation = gen_rx.borrow().clone();
        let Some(listener) = generation.config.listeners.iter().find(|l| l.name == name).cloned() else {
            continue;
        };
        let accepted =
            Accepted { name: &name, gen_rx: &gen_rx, shutdown_rx: &shutdown_rx, tracker: &tracker, shared: &shared };
        match listener.trusted_proxies.clone() {
            None => accepted.admit(stream, peer, generation, listener),
            Some(trusted) => accepted.proxied(stream, peer, generation, listener, trusted),
        }
    }
}

/// What a connection needs from its accept loop.
struct Accepted<'a> {
    name: &'a str,
    gen_rx: &'a watch::Receiver<Arc<Generation>>,
    shutdown_rx: &'a watch::Receiver<bool>,
    tracker: &'a TaskTracker,
    shared: &'a Shared,
}

impl Accepted<'_> {
    /// `accept_proxy = "v2"`: only the trusted balancers may connect, and the client's address
    /// is what their PROXY header says. The header is read on the connection's own task (a
    /// balancer sends it at once; a connection that does not is closed at the handshake
    /// timeout), then the connection is admitted as from the client.
    fn proxied(
        &self,
        mut stream: tokio::net::TcpStream,
        peer: SocketAddr,
        generation: Arc<Generation>,
        listener: stanzawall_core::config::ListenerConfig,
        trusted: Vec<stanzawall_core::guard::Cidr>,
    ) {
        let refused = |reason: &'static str| {
            self.shared.metrics.refused.get_or_create(&crate::metrics::ReasonLabels { reason }).inc();
        };
        if !crate::store::trusted(peer.ip(), &trusted) {
            refused("untrusted-proxy");
            info!(listener = %self.name, client.ip = %peer.ip(), reason = "untrusted-proxy", "connection refused: accept_proxy is on and this address is not in trusted_proxies");
            return;
        }
        let (name, gen_rx, shutdown_rx, tracker, shared) = (
            self.name.to_owned(),
            self.gen_rx.clone(),
            self.shutdown_rx.clone(),
            self.tracker.clone(),
            self.shared.clone(),
        );
        let deadline = generation.config.network.handshake_timeout;
        self.tracker.spawn(async move {
            let header = tokio::time::timeout(deadline, read_proxy_header(&mut stream)).await;
            let client = match header {
                Ok(Ok(stanzawall_core::proxy_protocol::ProxiedFrom::Tcp { client, .. })) => client,
                Ok(Ok(stanzawall_core::proxy_protocol::ProxiedFrom::Local)) => peer,
                Ok(Err(e)) => {
                    shared.metrics.refused.get_or_create(&crate::metrics::ReasonLabels { reason: "bad-proxy-header" }).inc();
                    return info!(listener = %name, proxy.ip = %peer.ip(), error = %e, "connection refused: bad PROXY header");
                }
                Err(_) => {
                    shared.metrics.refused.get_or_create(&crate::metrics::ReasonLabels { reason: "bad-proxy-header" }).inc();
                    return info!(listener = %name, proxy.ip = %peer.ip(), "connection refused: no PROXY header in time");
                }
            };
            let accepted = Accepted { name: &name, gen_rx: &gen_rx, shutdown_rx: &shutdown_rx, tracker: &tracker, shared: &shared };
            accepted.admit(stream, client, generation, listener);
        });
    }

    fn admit(
        &self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        generation: Arc<Generation>,
        listener: stanzawall_core::config::ListenerConfig,
    ) {
        let (name, shared, guard) = (self.name, self.shared, &self.shared.guard);
        // `bans_on_error = "closed"`: while the shared store is down, the bans other gateways
        // made cannot be known, so nobody is admitted.
        if shared.store.as_ref().is_some_and(|s| s.refuse_admission()) {
            shared.metrics.refused.get_or_create(&crate::metrics::ReasonLabels { reason: "store-down" }).inc();
            return;
        }
        // The L3/L4 guard decides before a byte is read: a refusal costs this accept only.
        let admission = lock(guard).admit(peer.ip(), std::time::Instant::now(), SystemTime::now());
        let permit = match admission {
            Admission::Admitted { source } => {
                Permit::new(guard.clone(), peer.ip(), source, generation.config.state_dir.clone())
                    .with_store(shared.store.clone())
            }
            Admission::Refused { why, audit } => {
                shared.metrics.refused.get_or_create(&crate::metrics::ReasonLabels { reason: why.as_str() }).inc();
                if audit {
                    let source =
                        stanzawall_core::guard::source_key(peer.ip(), generation.config.network.guard.ipv6_prefix);
                    info!(listener = %name, client.ip = %peer.ip(), client.source = %source, reason = %why.as_str(), "connection refused (further refusals of this source are not logged for a minute)");
                }
                drop(stream);
                return;
            }
        };
        let local = stream.local_addr().unwrap_or(listener.bind);
        let span = tracing::info_span!(
            "session",
            listener = %name,
            client.ip = %peer.ip(),
            client.port = peer.port(),
            client.jid = tracing::field::Empty
        );
        let shutdown_rx = self.shutdown_rx.clone();
        let (gen_rx, shared) = (self.gen_rx.clone(), shared.clone());
        self.tracker.spawn(
            async move {
                // Released when the session ends, however it ends (the permit is dropped on
                // unwinding too).
                let ctx = conn::SessionContext { generation, gen_rx, shutdown: shutdown_rx, shared };
                conn::serve(stream, peer, local, Arc::new(listener), ctx, &permit).await
            }
            .instrument(span),
        );
    }
}

/// Read a PROXY v2 header and not one byte more (what follows is the client's stream).
async fn read_proxy_header(
    stream: &mut tokio::net::TcpStream,
) -> Result<stanzawall_core::proxy_protocol::ProxiedFrom, Box<dyn std::error::Error + Send + Sync>> {
    use stanzawall_core::proxy_protocol::{parse_v2, v2_total_len, FIXED_LEN};
    use tokio::io::AsyncReadExt;
    let mut fixed = [0u8; FIXED_LEN];
    stream.read_exact(&mut fixed).await?;
    let total = v2_total_len(&fixed)?;
    let mut header = fixed.to_vec();
    header.resize(total, 0);
    stream.read_exact(&mut header[FIXED_LEN..]).await?;
    Ok(parse_v2(&header)?)
}

async fn reload(
    loaded: Result<Generation, LoadError>,
    gen_tx: &watch::Sender<Arc<Generation>>,
    running: &mut HashMap<String, RunningListener>,
    gen_rx: &watch::Receiver<Arc<Generation>>,
    shutdown_rx: &watch::Receiver<bool>,
    tracker: &TaskTracker,
    shared: &Shared,
) -> Result<Vec<String>, String> {
    let guard = &shared.guard;
    let next = match loaded {
        Ok(generation) => Arc::new(generation),
        Err(e) => {
            error!(error = %e, "reload failed; keeping the running configuration");
            return Err(e.to_string());
        }
    };
    let sockets = match bind_new(&next, running).await {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "reload failed; keeping the running configuration");
            return Err(e.to_string());
        }
    };
    let old = gen_tx.borrow().clone();
    let changes = next.config.diff(&old.config);
    if next.config.store != old.config.store {
        warn!("[store] changed: it takes effect at the next restart");
    }
    for c in &next.config.certificates {
        let name = c.domains.first().map(String::as_str);
        info!(domains = ?c.domains, sha256 = next.tls.fingerprint(name).unwrap_or(""), "certificate loaded");
    }
    lock(guard).reconfigure(next.config.network.guard.clone());
    gen_tx.send_replace(next.clone());
    reconcile_bans(guard, &next).await;
    start_listeners(&next, sockets, running, gen_rx, shutdown_rx, tracker, shared).await;
    info!(changes = ?changes, "configuration reloaded");
    Ok(changes)
}

/// Every `SWEEP_EVERY`: expire quarantine entries past retention and report-fed list entries
/// past their TTL, each with an audit record and a metric.
async fn housekeeping(
    quarantine: Option<Arc<crate::quarantine::Quarantine>>,
    rates: Arc<dyn stanzawall_core::policy::RateStore>,
    metrics: Arc<Metrics>,
    audit: crate::audit::Audit,
    gen_rx: tokio::sync::watch::Receiver<Arc<crate::state::Generation>>,
) {
    let mut tick = tokio::time::interval(crate::quarantine::SWEEP_EVERY);
    loop {
        tick.tick().await;
        let path = gen_rx.borrow().policy.audit().path.clone();
        let mut lines = Vec::new();
        if let Some(q) = &quarantine {
            match q.expire().await {
                Ok(gone) => {
                    for e in gone {
                        info!(quarantine.id = %e.id, "quarantine entry expired");
                        lines.push(crate::quarantine::audit_event("expired", &e, None));
                    }
                }
                Err(e) => warn!(error = %e, "quarantine expiry failed"),
            }
        }
        for event in rates.antispam().expire_listed(std::time::Instant::now()) {
            metrics.antispam.get_or_create(&crate::metrics::AntiSpamLabels { event: "unlisted", reason: "" }).inc();
            let origin = crate::audit::Origin { listener: "", client_ip: [0, 0, 0, 0].into(), user: None };
            lines.push(crate::audit::antispam_record(&event, origin));
        }
        if !lines.is_empty() {
            audit.record(path, lines).await;
        }
    }
}
