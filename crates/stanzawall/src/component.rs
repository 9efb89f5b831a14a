//! The daemon's one component connection to the XMPP server (`[contacts]`, XEP-0114 with the
//! XEP-0356 privileges the server grants): moves bytes between a TCP socket and the core
//! [`Component`] machine, reconnects with backoff, and carries out what the machine reports.
//!
//! - Rosters: the roster fetches sessions wait for ([`stanzawall_core::antispam::fetch`]) are
//!   asked through the component; answers and the server's roster pushes go into the contacts
//!   table, and every change wakes held sessions ([`roster_news`]).
//! - RTBLs: every `[list.NAME] rtbl = { service, node }` is followed (subscribe, fetch the
//!   items, then item/retract/purge notifications); a changed list is written atomically to its
//!   file in the state directory and a reload is asked for, so every condition that takes a
//!   list sees it from the next stanza, and a restart starts from the file.
//! - Sending: [`ComponentHandle::send`] (for anyone in the daemon: spam reports to `report_to`
//!   today, the quarantine's released stanzas next), from the component's own address or, with
//!   message permission, on a local user's or the server's behalf (XEP-0356 §5).
//!
//! What it never does: decide about stanzas (sessions do), or block a session (sessions wait at
//! most `c2s::ROSTER_HOLD` and then decide with what is known).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use stanzawall_core::antispam::rtbl::RtblList;
use stanzawall_core::component::{Component, ComponentConfig, ComponentEvent, PubsubNode, SendError};
use stanzawall_core::config::ContactsConfig;
use stanzawall_core::xml::Element;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::{debug, error, info, warn};

use crate::state::{Generation, Shared};

/// First wait before reconnecting; doubled after each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Time to connect the TCP socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the server has for the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time an iq (roster get, pubsub request) may stay unanswered.
const IQ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time one write to the server may take before the connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Stanzas waiting to be sent through the component.
const SEND_QUEUE: usize = 256;

/// What to send through the component ([`ComponentHandle::send`]).
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// From the component's own address (`from` is set to it).
    Direct(Element),
    /// A `<message/>` on behalf of its `from` (a local user's bare JID, or the server's
    /// domain), wrapped per XEP-0356 §5.3; needs message permission `outgoing`. The
    /// quarantine releases held messages through this ([`crate::quarantine::ComponentDeliver`]).
    OnBehalf(Element),
}

type Request = (Outgoing, oneshot::Sender<Result<(), SendError>>);

/// The daemon's way to the component task.
#[derive(Debug, Clone)]
pub struct ComponentHandle {
    tx: mpsc::Sender<Request>,
}

impl ComponentHandle {
    /// Send `out` through the component: `Ok` once it is queued on the connection (the server
    /// reports refusals asynchronously; they are logged). Errors: not connected, not permitted,
    /// queue full.
    pub async fn send(&self, out: Outgoing) -> Result<(), SendError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send((out, reply)).map_err(|_| SendError::Full)?;
        rx.await.unwrap_or(Err(SendError::NotConnected))
    }
}

static HANDLE: OnceLock<ComponentHandle> = OnceLock::new();
/// Wakes the component task when a session queued a roster fetch.
static FETCH_WAKE: Notify = Notify::const_new();
/// Moves whenever rosters or fetches changed: held sessions look again.
static ROSTER_NEWS: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::channel(0).0);

/// The component, when `[contacts]` is configured and the task started.
pub fn handle() -> Option<&'static ComponentHandle> {
    HANDLE.get()
}

/// A session queued a roster fetch: have the component task ask the server.
pub fn wake_fetcher() {
    FETCH_WAKE.notify_one();
}

/// Changes to rosters and fetches, for sessions holding a stanza (subscribe before looking, so
/// no change is missed).
pub fn roster_news() -> watch::Receiver<u64> {
    ROSTER_NEWS.subscribe()
}

fn announce_roster_news() {
    ROSTER_NEWS.send_modify(|n| *n = n.wrapping_add(1));
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListLabels {
    list: String,
}

#[derive(Debug, Default)]
struct ComponentMetrics {
    connected: Gauge,
    roster_fetches: Family<ResultLabels, Counter>,
    roster_pushes: Counter,
    rtbl_entries: Family<ListLabels, Gauge>,
    rtbl_updates: Family<ListLabels, Counter>,
    reports_forwarded: Family<ResultLabels, Counter>,
}

static METRICS: LazyLock<ComponentMetrics> = LazyLock::new(ComponentMetrics::default);

/// Register the component's metric families.
pub fn register_metrics(registry: &mut Registry) {
    let r = registry.sub_registry_with_prefix("stanzawall_component");
    r.register("connected", "1 while the component connection is up (handshake done)", METRICS.connected.clone());
    r.register(
        "roster_fetches",
        "Rosters fetched through the component, per result (ok, error, timeout, too-large)",
        METRICS.roster_fetches.clone(),
    );
    r.register("roster_pushes", "Roster pushes received from the server", METRICS.roster_pushes.clone());
    r.register(
        "reports_forwarded",
        "Spam reports sent to [contacts] report_to, per result",
        METRICS.reports_forwarded.clone(),
    );
    let r = registry.sub_registry_with_prefix("stanzawall_rtbl");
    r.register("entries", "Entries of each RTBL list now", METRICS.rtbl_entries.clone());
    r.register(
        "updates",
        "Changes applied to each RTBL list (fetches and notifications)",
        METRICS.rtbl_updates.clone(),
    );
}

/// Reloads asked of the supervisor (the admin API's channel): answered with the outcome.
pub type ReloadSender = mpsc::Sender<oneshot::Sender<Result<Vec<String>, String>>>;

/// Start the component task for `[contacts]` of the first generation (the connection is made
/// once; a change needs a restart). Fails if the secret cannot be read.
pub async fn start(
    first: &Arc<Generation>,
    shared: Shared,
    gen_rx: watch::Receiver<Arc<Generation>>,
    reload: ReloadSender,
) -> anyhow::Result<()> {
    let Some(cfg) = first.config.contacts.clone() else { return Ok(()) };
    let path = cfg.secret_file.clone();
    let text = crate::files::off_loop(crate::files::LOAD_DEADLINE, move || crate::files::read_to_string(&path))
        .await
        .map_err(|e| anyhow::anyhow!("{}", cfg.secret_origin.error(format!("{}: {e}", cfg.secret_file.display()))))?
        .map_err(|e| anyhow::anyhow!("{}", cfg.secret_origin.error(format!("{}: {e}", cfg.secret_file.display()))))?;
    let secret = text.trim().to_owned();
    if secret.is_empty() {
        anyhow::bail!("{}", cfg.secret_origin.error(format!("{}: the secret is empty", cfg.secret_file.display())));
    }
    let (tx, rx) = mpsc::channel(SEND_QUEUE);
    let _ = HANDLE.set(ComponentHandle { tx });
    let limits = first.config.limits.xml_backend();
    let task = Task { cfg, secret, limits, shared, gen_rx, reload, requests: rx, lists: BTreeMap::new() };
    tokio::spawn(task.run());
    Ok(())
}

/// One RTBL list the task keeps.
struct Rtbl {
    node: PubsubNode,
    list: RtblList,
    file: PathBuf,
    dirty: bool,
}

struct Task {
    cfg: ContactsConfig,
    secret: String,
    limits: stanzawall_core::xml::XmlLimits,
    shared: Shared,
    gen_rx: watch::Receiver<Arc<Generation>>,
    reload: ReloadSender,
    requests: mpsc::Receiver<Request>,
    lists: BTreeMap<String, Rtbl>,
}

impl Task {
    async fn run(mut self) {
        self.sync_lists().await;
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.connect().await {
                Ok(stream) => {
                    if self.session(stream).await {
                        backoff = MIN_BACKOFF;
                    }
                }
                Err(e) => {
                    warn!(component = %self.cfg.component, backend = %self.cfg.backend, error = %e, retry_in_s = backoff.as_secs(), "component connection failed");
                }
            }
            // Meanwhile nothing waits for a roster, and sends are refused.
            self.shared.rates.antispam().fetch.set_domains(Vec::new());
            announce_roster_news();
            let until = tokio::time::Instant::now() + backoff;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    Some((_, reply)) = self.requests.recv() => { let _ = reply.send(Err(SendError::NotConnected)); }
                    _ = FETCH_WAKE.notified() => { self.shared.rates.antispam().fetch.take_requests(); }
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn connect(&self) -> std::io::Result<TcpStream> {
        let addr = self.cfg.backend.clone();
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
        }
    }

    async fn audit(&self, fields: Value) {
        let path = self.gen_rx.borrow().policy.audit().path.clone();
        let mut v = json!({
            "time": crate::audit::humantime_rfc3339(std::time::SystemTime::now()),
            "component": self.cfg.component,
            "backend": self.cfg.backend,
        });
        if let (Some(map), Value::Object(extra)) = (v.as_object_mut(), fields) {
            map.extend(extra);
        }
        self.shared.audit.record(path, vec![v]).await;
    }

    /// One connection, until it ends; true if the handshake succeeded.
    async fn session(&mut self, mut stream: TcpStream) -> bool {
        let _ = stream.set_nodelay(true);
        let cc = ComponentConfig {
            jid: self.cfg.component.clone(),
            secret: self.secret.clone(),
            limits: self.limits,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            iq_timeout: IQ_TIMEOUT,
        };
        let mut c = Component::new(cc, std::time::Instant::now());
        let mut news = self.gen_rx.clone();
        news.borrow_and_update();
        let mut buf = vec![0u8; 16 * 1024];
        let mut connected = false;
        loop {
            let out = c.take_output();
            if !out.is_empty() {
                match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => c.disconnected(&e.to_string()),
                    Err(_) => c.disconnected("write timed out"),
                }
            }
            while let Some(ev) = c.poll_event() {
                if let Some(ended) = self.on_event(&mut c, ev, &mut connected).await {
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&c.take_output())).await;
                    let _ = stream.shutdown().await;
                    return ended;
                }
            }
            self.flush_lists().await;
            let deadline = c.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                r = stream.read(&mut buf) => match r {
                    Ok(0) => c.disconnected("the server closed the connection"),
                    Ok(n) => c.feed(&buf[..n], std::time::Instant::now()),
                    Err(e) => c.disconnected(&e.to_string()),
                },
                _ = FETCH_WAKE.notified() => self.fetch(&mut c),
                Some((out, reply)) = self.requests.recv() => {
                    let r = match out {
                        Outgoing::Direct(el) => c.send_direct(el),
                        Outgoing::OnBehalf(el) => c.send_privileged(el),
                    };
                    let _ = reply.send(r);
                }
                changed = news.changed() => {
                    if changed.is_ok() {
                        news.borrow_and_update();
                        self.sync_lists().await;
                        self.follow_all(&mut c);
                    }
                }
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                    c.handle_timeout(std::time::Instant::now());
                }
            }
        }
    }

    /// Ask the server for the rosters sessions are waiting for.
    fn fetch(&self, c: &mut Component) {
        let a = self.shared.rates.antispam();
        let now = std::time::Instant::now();
        for owner in a.fetch.take_requests() {
            if !c.fetch_roster(&owner, now) {
                // Not askable now (privilege gone, too many in flight): nobody waits for it.
                a.fetch.cancel(&owner);
                announce_roster_news();
            }
        }
    }

    fn follow_all(&self, c: &mut Component) {
        let now = std::time::Instant::now();
        for r in self.lists.values() {
            c.follow(r.node.clone(), now);
        }
    }

    /// Carry out one event; `Some(handshake_succeeded)` when the connection is over.
    async fn on_event(&mut self, c: &mut Component, ev: ComponentEvent, connected: &mut bool) -> Option<bool> {
        let a = self.shared.rates.antispam();
        let now = std::time::Instant::now();
        match ev {
            ComponentEvent::Connected => {
                *connected = true;
                METRICS.connected.set(1);
                info!(component = %self.cfg.component, backend = %self.cfg.backend, "component connected");
                self.audit(json!({ "event": "component-connected" })).await;
                self.follow_all(c);
            }
            ComponentEvent::Privileges { server, privileges } => {
                info!(
                    component = %self.cfg.component,
                    server = %server,
                    roster_get = privileges.roster_get,
                    roster_push = privileges.roster_push,
                    message_outgoing = privileges.message_outgoing,
                    "component privileges granted"
                );
                a.fetch.set_domains(c.roster_domains());
                announce_roster_news();
            }
            ComponentEvent::Roster { owner, items } => {
                let fits = a.contacts.replace(&owner, &items);
                METRICS
                    .roster_fetches
                    .get_or_create(&ResultLabels { result: if fits { "ok" } else { "too-large" } })
                    .inc();
                debug!(owner = %owner, items = items.len(), fits, "roster fetched through the component");
                a.fetch.done(&owner, fits, now);
                announce_roster_news();
            }
            ComponentEvent::RosterFailed { owner, reason } => {
                if reason == "disconnected" {
                    a.fetch.cancel(&owner);
                } else {
                    let result = if reason == "timeout" { "timeout" } else { "error" };
                    METRICS.roster_fetches.get_or_create(&ResultLabels { result }).inc();
                    info!(owner = %owner, reason = %reason, "roster fetch through the component failed");
                    a.fetch.done(&owner, false, now);
                }
                announce_roster_news();
            }
            ComponentEvent::RosterPush { owner, items } => {
                METRICS.roster_pushes.inc();
                a.contacts.update(&owner, &items);
                announce_roster_news();
            }
            ComponentEvent::Node { node, change } => {
                for (name, r) in self.lists.iter_mut().filter(|(_, r)| r.node == node) {
                    if r.list.apply(&change) {
                        r.dirty = true;
                        METRICS.rtbl_updates.get_or_create(&ListLabels { list: name.clone() }).inc();
                    }
                }
            }
            ComponentEvent::NodeFailed { node, step, reason } => {
                let lists: Vec<&String> = self.lists.iter().filter(|(_, r)| r.node == node).map(|(n, _)| n).collect();
                warn!(service = %node.service, node = %node.node, lists = ?lists, step, reason = %reason, "RTBL subscription failed");
            }
            ComponentEvent::SendFailed { reason } => {
                warn!(component = %self.cfg.component, reason = %reason, "the server refused a stanza sent through the component");
            }
            ComponentEvent::Closed(e) => {
                METRICS.connected.set(0);
                a.fetch.set_domains(Vec::new());
                announce_roster_news();
                warn!(component = %self.cfg.component, backend = %self.cfg.backend, error = %e, "component disconnected");
                self.audit(json!({ "event": "component-disconnected", "reason": e.to_string() })).await;
                return Some(*connected);
            }
        }
        None
    }

    /// Keep one entry per RTBL list of the newest generation (read from its file when new).
    async fn sync_lists(&mut self) {
        let generation = self.gen_rx.borrow().clone();
        let wanted: Vec<(String, PubsubNode, PathBuf)> = generation
            .config
            .policy
            .lists
            .iter()
            .filter_map(|(name, l)| {
                let src = l.rtbl.as_ref()?;
                let node = PubsubNode { service: src.service.clone(), node: src.node.clone() };
                Some((name.clone(), node, l.file.clone()?))
            })
            .collect();
        let keep: HashSet<&String> = wanted.iter().map(|(n, _, _)| n).collect();
        self.lists.retain(|name, _| keep.contains(name));
        for (name, node, file) in wanted {
            if self.lists.get(&name).is_some_and(|r| r.node == node && r.file == file) {
                continue;
            }
            let path = file.clone();
            let text = crate::files::off_loop(crate::files::LOAD_DEADLINE, move || crate::files::read_to_string(&path))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let list = RtblList::from_file_text(&node.node, &text);
            METRICS.rtbl_entries.get_or_create(&ListLabels { list: name.clone() }).set(list.len() as i64);
            info!(list = %name, service = %node.service, node = %node.node, entries = list.len(), "RTBL list followed");
            self.lists.insert(name, Rtbl { node, list, file, dirty: false });
        }
    }

    /// Write changed lists (atomically) and ask for a reload, so policies compiled from the
    /// files see them.
    async fn flush_lists(&mut self) {
        let mut wrote = false;
        for (name, r) in self.lists.iter_mut().filter(|(_, r)| r.dirty) {
            r.dirty = false;
            METRICS.rtbl_entries.get_or_create(&ListLabels { list: name.clone() }).set(r.list.len() as i64);
            let text = r.list.to_file_text(&r.node.service, &r.node.node);
            let file = r.file.clone();
            let job = move || -> std::io::Result<()> {
                if let Some(dir) = file.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                crate::files::replace_atomically(&file, &text, Some(0o640))
            };
            match crate::files::off_loop(crate::files::LOAD_DEADLINE, job).await {
                Ok(Ok(())) => {
                    wrote = true;
                    info!(list = %name, entries = r.list.len(), "RTBL list updated");
                }
                Ok(Err(e)) => error!(list = %name, file = %r.file.display(), error = %e, "cannot write RTBL list"),
                Err(e) => error!(list = %name, file = %r.file.display(), error = %e, "cannot write RTBL list"),
            }
        }
        if wrote {
            // The supervisor also notices the file within its poll; asking saves that wait.
            let (tx, _rx) = oneshot::channel();
            let _ = self.reload.try_send(tx);
        }
    }
}

/// Delivery through the XEP-0356 privileged component (`[contacts]`), for a release no session
/// can take: a held `c2s-in` `<message/>` is sent on behalf of its sender's bare JID (XEP-0356
/// §5, message permission `outgoing`), and the server routes it as if the sender had sent it.
///
/// Only that: §5 lets the component send *messages* on behalf of the server's *own users*. A
/// `c2s-out` stanza comes from someone else (often a remote sender: the server would refuse
/// it, and a local one is better released into the recipient's session, which sees it as it
/// was going), and an iq or presence has no privileged route at all. Those keep the 409: the
/// entry stays held for a session.
///
/// "Once" holds as for sessions: the stanza is handed to the component's connection once, while
/// the entry is claimed; if the component cannot take it (not connected, no permission, its
/// queue full) the claim is undone. A refusal the server sends later is logged by the
/// component (it cannot be told apart from other errors by then); the entry stays `released`.
#[derive(Debug)]
pub struct ComponentDeliver;

impl crate::quarantine::Deliver for ComponentDeliver {
    fn deliver<'a>(
        &'a self,
        entry: &'a crate::quarantine::Entry,
        chain: stanzawall_core::policy::Chain,
        mut stanza: Element,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, crate::quarantine::DeliverError>> + Send + 'a>>
    {
        Box::pin(async move {
            if chain != stanzawall_core::policy::Chain::C2sIn || stanza.name != "message" {
                return Err(crate::quarantine::DeliverError::SessionGone(format!(
                    "the component cannot send a held {} {} (XEP-0356 §5 lets it send only messages on behalf of                      local users, i.e. c2s-in messages)",
                    entry.chain, entry.kind
                )));
            }
            let Some(sender) = crate::quarantine::account(entry, chain) else {
                return Err(crate::quarantine::DeliverError::SessionGone(
                    "the component needs the sender's JID, and the entry has none".into(),
                ));
            };
            let Some(component) = handle() else {
                return Err(crate::quarantine::DeliverError::SessionGone("the component is not running".into()));
            };
            // §5.3: the forwarded message's `from` is the user on whose behalf it is sent (bare:
            // the user's sessions may be gone; the server treats it as sent by the account).
            stanza.set_attr("from", sender.clone());
            match component.send(Outgoing::OnBehalf(stanza)).await {
                Ok(()) => Ok(format!("component (XEP-0356, on behalf of {sender})")),
                Err(e) => {
                    Err(crate::quarantine::DeliverError::SessionGone(format!("the component did not take it: {e}")))
                }
            }
        })
    }
}

/// Forward a spam report to every `[contacts] report_to` address (from the component's own
/// address), as Prosody's `mod_report_forward` does; nothing when no component is configured.
pub async fn forward_report(event: &stanzawall_core::antispam::Event, report_to: &[String]) {
    let stanzawall_core::antispam::Event::Report { reporter, reported, reason, text, .. } = event else { return };
    let Some(h) = handle() else { return };
    for to in report_to {
        let m = stanzawall_core::component::report_message(
            to,
            reporter.as_str(),
            reported.as_str(),
            reason,
            text.as_deref(),
        );
        let result = match h.send(Outgoing::Direct(m)).await {
            Ok(()) => "sent",
            Err(e) => {
                warn!(to = %to, reported = %reported, error = %e, "spam report not forwarded");
                "failed"
            }
        };
        METRICS.reports_forwarded.get_or_create(&ResultLabels { result }).inc();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use stanzawall_core::config::QuarantineConfig;
    use stanzawall_core::policy::Chain;
    use stanzawall_core::session::{Held, StanzaSummary};
    use stanzawall_core::xml::{parse_stanzas, XmlLimits};

    use super::ComponentDeliver;
    use crate::metrics::Metrics;
    use crate::quarantine::embedded::Embedded;
    use crate::quarantine::{new_id, DeliverError, Entry, Quarantine, QuarantineStore, ReleaseError, State};

    fn held(chain: Chain, from: &str, to: &str) -> Held {
        let xml = format!("<message from='{from}' to='{to}' type='chat'><body>hi</body></message>");
        let stanza = parse_stanzas(&xml, XmlLimits::default()).unwrap().remove(0);
        let user = stanzawall_core::jid::parse_full(if chain == Chain::C2sIn { from } else { to }).unwrap();
        let summary = StanzaSummary::of(&stanza, Some(&user)).unwrap();
        Held { chain, rule: Some("hold".into()), stanza, summary }
    }

    #[tokio::test]
    async fn the_component_takes_only_c2s_in_messages_and_a_refusal_leaves_the_entry_held() {
        let d = std::env::temp_dir().join(format!("stanzawall-qc-{}-{}", std::process::id(), new_id()));
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("q.redb");
        let store: Arc<dyn QuarantineStore> = Arc::new(Embedded::open(&path).unwrap());
        let bounds =
            QuarantineConfig { max_entries: 10, max_bytes: 1 << 20, retention: Duration::from_secs(3600), path };
        let q = Quarantine::new(store, bounds, Arc::new(Metrics::default()), Arc::default())
            .with_component(Arc::new(ComponentDeliver));
        // A c2s-out stanza from a remote sender: XEP-0356 §5 has no way to send it; a 409 that says so.
        let e = Entry::of_held(&held(Chain::C2sOut, "mallory@spam.test/x", "bob@example.test/laptop"), "c2s", 7);
        let id = e.id.clone();
        q.hold(e).await.unwrap();
        match q.release(&id, "ops").await {
            Err(ReleaseError::Deliver(DeliverError::SessionGone(why))) => {
                assert!(why.contains("XEP-0356 §5 lets it send only messages"), "{why}");
                assert!(!why.contains("no component delivery is configured"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(q.get(&id).await.unwrap().state, State::Held);
        // A c2s-in message, but the component is not running in this process: held again.
        let e = Entry::of_held(&held(Chain::C2sIn, "alice@example.test/pc", "dave@example.test"), "c2s", 3);
        let id = e.id.clone();
        q.hold(e).await.unwrap();
        match q.release(&id, "ops").await {
            Err(ReleaseError::Deliver(DeliverError::SessionGone(why))) => {
                assert!(why.contains("no open session of alice@example.test"), "{why}");
                assert!(why.contains("the component is not running"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(q.get(&id).await.unwrap().state, State::Held);
    }
}
