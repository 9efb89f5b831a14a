//! One client connection: moves bytes between the sockets and the core [`Session`].
//!
//! mini-redis-shaped: a [`Connection`] owns the session and both legs; [`Connection::run`]
//! writes everything the session queued (a slow reader blocks us here, which is the
//! backpressure of invariant 6: we read no more from the other side until it drains), carries
//! out the session's effects ([`Connection::on_effect`]: TLS upgrades, backend connect, bans),
//! reports them through one mapping ([`report`]), then waits for bytes from either leg, a
//! reload, a shutdown or the session's next deadline. It keeps no protocol state: time belongs
//! to the session (`poll_timeout` / `handle_timeout`), and so does every decision.

mod bosh;
mod ibb;
mod legs;
pub(crate) mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use stanzawall_core::config::{ListenerConfig, ListenerKind};
use stanzawall_core::limit::ByteBucket;
use stanzawall_core::session::s2s::{PeerCert, S2sInbound, S2sOutbound};
use stanzawall_core::session::web::{WebConfig, WebSocketSession};
use stanzawall_core::session::{
    CloseReason, Counters, Effect, PolicyBinding, Session, SessionConfig, StreamMachine, Timeouts,
};
use stanzawall_core::stream::Condition;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, Instant, Sleep};
use tracing::{info, warn};

use crate::io::{Rewind, Stream};
use crate::metrics::{ChainLabels, CloseLabels, DirectionLabels, ErrorLabels, Metrics};
use crate::state::{Generation, Permit, Shared};
use legs::ReadBuf;

/// Time allowed for flushing final bytes when closing.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Time the backend has to answer a client's `</stream:stream>` with its own (RFC 6120 §4.4)
/// while what it still sends is relayed.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// See the `fault-injection` feature in Cargo.toml.
#[cfg(feature = "fault-injection")]
const FAULT_INJECTION_PANIC: &[u8] = b"<stanzawall-fault-injection-panic/>";

/// Traffic totals for the close log line.
#[derive(Debug, Default)]
struct Totals {
    from_client: u64,
    to_client: u64,
    from_backend: u64,
    to_backend: u64,
}

/// What a session runs with besides its socket.
#[derive(Debug)]
pub struct SessionContext {
    /// The generation current at accept (listener, limits, certificates).
    pub generation: Arc<Generation>,
    /// Later generations: their policy applies from the next stanza on.
    pub gen_rx: watch::Receiver<Arc<Generation>>,
    /// Set once at shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Rate state, metrics, audit.
    pub shared: Shared,
}

/// Keeps the open-sessions gauge right however the session ends.
struct Open(Arc<Metrics>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.sessions.dec();
    }
}

/// One accepted client connection and its backend leg, driving a stream machine of any kind
/// (today c2s; s2s and the SOCKS5 relay are next).
struct Connection<'a, S: StreamMachine> {
    session: S,
    client: Stream,
    backend: Option<Stream>,
    listener: Arc<ListenerConfig>,
    generation: Arc<Generation>,
    gen_rx: watch::Receiver<Arc<Generation>>,
    shutdown: watch::Receiver<bool>,
    shared: Shared,
    permit: &'a Permit,
    peer: SocketAddr,
    local: SocketAddr,
    audit_path: Option<PathBuf>,
    totals: Totals,
    /// Read shaping of the client leg after authentication: when the bucket is empty we stop
    /// reading (the kernel's receive window then slows the sender); nothing is ever dropped.
    shaper: Option<ByteBucket>,
    shaped: Duration,
    cbuf: ReadBuf,
    bbuf: ReadBuf,
    reported: Counters,
    /// The session's next deadline, armed once and re-armed only when it fires or moves
    /// earlier: a busy session costs no timer operation per read.
    timer: Pin<Box<Sleep>>,
    armed: Instant,
    /// Outbound s2s: the remote target connected to (for its TLS upgrade).
    remote: Option<Box<crate::dns::ConnectedTarget>>,
    /// The session's row in the live table (admin API) and its kicks.
    registration: crate::sessions::Registration,
    kicks: tokio::sync::mpsc::Receiver<crate::sessions::Control>,
    /// In-band transfers being scanned (boxed: most sessions never send one).
    ibb: Option<Box<ibb::IbbScans>>,
    /// While a stanza waits for a roster (`StreamMachine::paused`): news of rosters.
    roster_news: Option<watch::Receiver<u64>>,
    /// Stanzas released from the quarantine into this session, and the answers owed once
    /// what they queued has been flushed.
    deliveries: tokio::sync::mpsc::Receiver<crate::sessions::Delivery>,
    delivered: Vec<tokio::sync::oneshot::Sender<Result<(), String>>>,
}

/// Serve one accepted connection to completion.
///
/// The future lives as long as the session, so its size is memory per idle session: the
/// handshakes, backend connect and ban sync run once, in boxes freed when they finish, instead
/// of widening this state machine for its whole life.
pub async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    listener: Arc<ListenerConfig>,
    ctx: SessionContext,
    permit: &Permit,
) {
    let metrics = ctx.shared.metrics.clone();
    metrics.sessions.inc();
    metrics.sessions_total.inc();
    let _open = Open(metrics);
    legs::tune(&socket);
    info!("session opened");
    if listener.kind == ListenerKind::S2sOut {
        // Transparent interception (`[s2s] intercept`, nftables redirect): where our server
        // meant to go. The remote domain still comes from the stream header and is resolved
        // by the gateway itself; the address is for the log.
        let sock = socket2::SockRef::from(&socket);
        let original = sock.original_dst_v4().or_else(|_| sock.original_dst_v6()).ok().and_then(|a| a.as_socket());
        if let Some(dst) = original.filter(|a| *a != local) {
            info!(original_dst = %dst, "outbound s2s intercepted");
        }
    }
    // The file-transfer door: the XEP-0065 relay (`relay`) and the upload proxy, no stream machine.
    match listener.kind {
        ListenerKind::Socks5 => return crate::relay::serve(socket, peer, listener, ctx.generation, ctx.shared).await,
        ListenerKind::HttpUpload | ListenerKind::HttpUploadTls => {
            return crate::upload::serve(socket, peer, listener, ctx.generation, ctx.shared).await
        }
        _ => {}
    }
    let client = Stream::Plain(Rewind::new(socket));
    match listener.kind {
        // BOSH: this connection carries HTTP requests; the sessions they belong to run apart.
        ListenerKind::Bosh => bosh::serve_http(client, peer, local, listener, ctx).await,
        ListenerKind::WebSocket => {
            // The web door: the same c2s machine behind RFC 7395 framing (core `session::web`).
            let web = Arc::new(web_config(&listener, &ctx.generation));
            let make = move |l: &ListenerConfig, g: &Generation, b: PolicyBinding, t: Timeouts, id: String| {
                let (preauth, limits) = (g.config.limits.xml_preauth(), g.config.limits.xml());
                let session = c2s_session(l, g, b, t, id)?;
                Some(WebSocketSession::new(web, session, preauth, limits))
            };
            let Some(conn) = Connection::new(client, peer, local, listener, ctx, permit, make) else { return };
            conn.serve().await
        }
        ListenerKind::Socks5 | ListenerKind::HttpUpload | ListenerKind::HttpUploadTls => {}
        ListenerKind::C2s | ListenerKind::C2sTls => {
            let Some(conn) = Connection::new(client, peer, local, listener, ctx, permit, c2s_session) else { return };
            conn.serve().await
        }
        ListenerKind::S2s | ListenerKind::S2sTls => {
            let make: MakeSession<S2sInbound> = |l, g, b, t, id| {
                let rt = g.s2s.as_ref()?;
                Some(S2sInbound::new(rt.settings(l, &g.config, id, t), b, std::time::Instant::now()))
            };
            let Some(conn) = Connection::new(client, peer, local, listener, ctx, permit, make) else { return };
            conn.serve().await
        }
        ListenerKind::S2sOut => {
            let make: MakeSession<S2sOutbound> = |l, g, b, t, id| {
                let rt = g.s2s.as_ref()?;
                Some(S2sOutbound::new(rt.settings(l, &g.config, id, t), b, std::time::Instant::now()))
            };
            let Some(conn) = Connection::new(client, peer, local, listener, ctx, permit, make) else { return };
            conn.serve().await
        }
    }
}

/// The c2s session for `listener`.
fn c2s_session(
    listener: &ListenerConfig,
    generation: &Generation,
    binding: PolicyBinding,
    timeouts: Timeouts,
    stream_id: String,
) -> Option<Session> {
    let limits = generation.config.limits;
    let cfg = SessionConfig {
        // A WebSocket's client leg is TLS below HTTP: no STARTTLS inside the stream.
        direct_tls: matches!(listener.kind, ListenerKind::C2sTls | ListenerKind::WebSocket | ListenerKind::Bosh),
        preauth_limits: limits.xml_preauth(),
        limits: limits.xml(),
        backend_limits: limits.xml_backend(),
        backend_tls: listener.backend.tls,
        stream_id,
        timeouts,
    };
    let session = Session::new(cfg, binding, std::time::Instant::now());
    Some(match &generation.config.file_transfer {
        Some(ft) => {
            let session = session.with_file_transfer(ft.proxy_settings(), crate::relay::activator());
            // Compiled with the generation; absent only if that failed, and then IBB is refused,
            // not waved through.
            let policy = generation.inspect.clone().unwrap_or_else(|| {
                Arc::new(stanzawall_core::transfer::InspectPolicy { max_bytes: 0, ..Default::default() })
            });
            let session = session.with_ibb_inspection(policy);
            if ft.clamd.is_some() {
                session.with_ibb_scanner()
            } else {
                session
            }
        }
        None => session,
    })
}

/// Builds a listener's stream machine; `None` when the generation cannot serve the kind
/// (an s2s listener without `[s2s]`, which config validation prevents).
type MakeSession<S> = fn(&ListenerConfig, &Generation, PolicyBinding, Timeouts, String) -> Option<S>;

/// The settings of a WebSocket listener's sessions: its options, caps defaulting to the
/// stanza cap, and the certificates' domains for host-meta.
fn web_config(listener: &ListenerConfig, generation: &Generation) -> WebConfig {
    let web = &listener.web;
    let stanza = generation.config.limits.stanza_bytes;
    WebConfig {
        path: web.path.clone(),
        origins: web.allowed_origins.clone(),
        max_frame_bytes: web.max_frame_bytes.unwrap_or(stanza),
        max_message_bytes: web.max_message_bytes.unwrap_or(stanza),
        public_url: web.public_url.clone(),
        domains: generation.config.certificates.iter().flat_map(|c| c.domains.iter().cloned()).collect(),
        links: bosh::web_links(generation, &listener.name),
    }
}

impl<'a, S: StreamMachine> Connection<'a, S> {
    /// A connection on `listener` running the machine `make` builds, with the newest policy.
    fn new(
        client: Stream,
        peer: SocketAddr,
        local: SocketAddr,
        listener: Arc<ListenerConfig>,
        ctx: SessionContext,
        permit: &'a Permit,
        make: impl FnOnce(&ListenerConfig, &Generation, PolicyBinding, Timeouts, String) -> Option<S>,
    ) -> Option<Self> {
        let SessionContext { generation, mut gen_rx, shutdown, shared } = ctx;
        let network = &generation.config.network;
        let timeouts = Timeouts {
            handshake: network.handshake_timeout,
            idle: network.idle_timeout,
            close: CLOSE_HANDSHAKE_TIMEOUT,
        };
        // The newest policy (a reload may have landed since accept), marked seen.
        let policy = gen_rx.borrow_and_update().policy.clone();
        let audit_path = policy.audit().path.clone();
        let binding = PolicyBinding { policy, rates: shared.rates.clone(), source_ip: peer.ip() };
        let session = make(&listener, &generation, binding, timeouts, legs::random_id())?;
        let armed = Instant::now() + network.handshake_timeout;
        let (registration, kicks, deliveries) = shared.sessions.register(&listener.name, listener.kind.as_str(), peer);
        Some(Connection {
            reported: session.counters(),
            session,
            client,
            backend: None,
            listener,
            generation,
            gen_rx,
            shutdown,
            shared,
            permit,
            peer,
            local,
            audit_path,
            totals: Totals::default(),
            shaper: None,
            shaped: Duration::ZERO,
            cbuf: ReadBuf::new(),
            bbuf: ReadBuf::new(),
            timer: Box::pin(tokio::time::sleep_until(armed)),
            armed,
            remote: None,
            registration,
            kicks,
            ibb: None,
            roster_news: None,
            deliveries,
            delivered: Vec::new(),
        })
    }

    /// Run to completion and close.
    async fn serve(mut self) {
        let reason = self.run().await;
        Box::pin(self.close(reason)).await;
    }
}

impl<S: StreamMachine> Connection<'_, S> {
    /// The session's deadline as the runtime's instant (none: far away).
    fn deadline(&self) -> Instant {
        match self.session.poll_timeout() {
            Some(due) => Instant::from_std(due),
            None => Instant::now() + Duration::from_secs(86_400),
        }
    }

    /// Move the armed timer earlier if the session's deadline did (a client's close).
    fn rearm_if_earlier(&mut self) {
        let due = self.deadline();
        if due < self.armed {
            self.armed = due;
            self.timer.as_mut().reset(due);
        }
    }

    async fn flush(&mut self) {
        let flushed = legs::flush(&mut self.session, &mut self.client, &mut self.backend, &mut self.totals).await;
        // A released stanza counts as delivered once its bytes went to the socket.
        let answer = match &flushed {
            Ok(()) => Ok(()),
            Err(_) => Err("the session's connection failed while writing it".to_owned()),
        };
        for reply in self.delivered.drain(..) {
            let _ = reply.send(answer.clone());
        }
        if let Err(failure) = flushed {
            legs::on_write_failure(&mut self.session, failure);
        }
    }

    /// Until the session closes: flush, effects, then wait for the next input.
    async fn run(&mut self) -> CloseReason {
        if matches!(self.listener.kind, ListenerKind::C2sTls | ListenerKind::S2sTls | ListenerKind::WebSocket) {
            let s2s = self.listener.kind.is_s2s();
            // Browsers offer ALPN h2 and http/1.1: a WebSocket listener takes the certificate
            // without the `xmpp-client` ALPN (the STARTTLS configuration) and speaks HTTP/1.1.
            let direct = self.listener.kind != ListenerKind::WebSocket;
            let handshake = timeout(
                self.deadline().saturating_duration_since(Instant::now()),
                Box::pin(legs::accept_tls(&mut self.client, None, direct, &self.generation, s2s)),
            );
            match handshake.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return CloseReason::ClientFailed(format!("TLS handshake failed: {e}")),
                Err(_) => return CloseReason::ClientFailed("TLS handshake timed out".into()),
            }
        }
        loop {
            self.flush().await;
            while let Some(effect) = self.session.poll_effect() {
                // Boxed: effects are rare next to reads, and their futures (handshakes, audit
                // writes) would otherwise widen this state machine, which is memory per idle
                // session (measured: 3,264 -> 6,272 bytes unboxed).
                if let Some(reason) = Box::pin(self.on_effect(effect)).await {
                    return reason;
                }
                self.flush().await;
            }
            self.count_stanzas();
            self.rearm_if_earlier();
            self.next_input().await;
        }
    }

    /// Carry out one effect and report it; `Some` once the session has closed.
    async fn on_effect(&mut self, effect: Effect) -> Option<CloseReason> {
        self.report(&effect).await;
        match effect {
            Effect::StartClientTls { domain } => {
                let prefix = self.session.take_client_buffered();
                if let Stream::Plain(r) = &mut self.client {
                    r.rewind(prefix);
                    r.skip_leading_whitespace();
                }
                let handshake = timeout(
                    self.deadline().saturating_duration_since(Instant::now()),
                    Box::pin(legs::accept_tls(
                        &mut self.client,
                        Some(&domain),
                        false,
                        &self.generation,
                        self.listener.kind.is_s2s(),
                    )),
                );
                match handshake.await {
                    Ok(Ok(())) => self.session.client_tls_established(),
                    Ok(Err(e)) => return Some(CloseReason::ClientFailed(format!("TLS handshake failed: {e}"))),
                    Err(_) => return Some(CloseReason::ClientFailed("TLS handshake timed out".into())),
                }
            }
            // A session that closed in the same read (header + garbage) needs no backend.
            Effect::ConnectBackend { .. } if self.session.is_closed() => {}
            Effect::ConnectBackend { domain } if self.listener.kind == ListenerKind::S2sOut => {
                Box::pin(self.connect_remote(&domain)).await
            }
            Effect::StartBackendTls if self.listener.kind == ListenerKind::S2sOut => {
                Box::pin(self.upgrade_remote()).await
            }
            Effect::ConnectBackend { domain } => {
                let connect = legs::connect_backend(&self.listener, &self.generation, &domain, self.peer, self.local);
                match Box::pin(connect).await {
                    Ok(stream) => {
                        self.backend = Some(stream);
                        self.session.backend_connected();
                    }
                    Err(e) => {
                        warn!(backend = %self.listener.backend.address, error = %e, "backend unavailable");
                        self.session.backend_failed(&e.to_string());
                    }
                }
            }
            Effect::StartBackendTls => {
                let leftover = self.session.take_backend_buffered();
                let domain = self.session.domain().unwrap_or_default().to_owned();
                let upgrade =
                    legs::upgrade_backend(&mut self.backend, leftover, &self.listener, &self.generation, &domain);
                match Box::pin(upgrade).await {
                    Ok(()) => self.session.backend_tls_established(),
                    Err(e) => self.session.backend_failed(&e.to_string()),
                }
            }
            Effect::Bound(jid) => {
                tracing::Span::current().record("client.jid", tracing::field::display(&jid));
                self.registration.set_jid(&jid.to_string());
                info!("session bound");
            }
            Effect::AuthFailed => self.on_auth_failed().await,
            Effect::Authenticated => {
                let bandwidth = self.generation.config.network.bandwidth_per_connection;
                self.shaper = bandwidth.map(|b| ByteBucket::new(b, std::time::Instant::now()));
            }
            Effect::Bounced { stanza, condition, reason } => {
                info!(stanza.kind = stanza.kind.as_str(), error = condition.as_str(), reason, "stanza bounced");
            }
            Effect::Dropped { from_backend, reason, .. } => {
                info!(direction = if from_backend { "to-client" } else { "to-backend" }, reason, "stanza dropped");
            }
            Effect::Policy(_) => {}
            Effect::CheckPeerCertificate { domain } => {
                let cert = match self.generation.s2s.clone() {
                    Some(rt) => Box::pin(rt.check_peer(&self.client, &domain)).await,
                    None => PeerCert::None,
                };
                info!(remote = %domain, certificate = cert.as_str(), "remote certificate checked");
                self.session.peer_certificate(&domain, cert);
            }
            Effect::VerifyDialback { remote, local, id, key } => {
                let result = match self.generation.s2s.clone() {
                    Some(rt) => Box::pin(rt.verify_dialback(&remote, &local, &id, &key)).await,
                    None => Err("no [s2s] section".to_owned()),
                };
                info!(remote = %remote, local = %local, result = ?result, "dialback verified with the authoritative server");
                self.session.dialback_result(&remote, &local, result);
            }
            Effect::S2sAuthenticated(a) => {
                self.registration.set_jid(&a.remote.to_string());
                info!(
                    direction = a.direction,
                    remote = %a.remote,
                    local = %a.local,
                    method = a.method.as_str(),
                    certificate = a.cert.as_str(),
                    dnssec = a.dnssec.as_str(),
                    "s2s domain pair authenticated"
                );
            }
            Effect::S2sRefused { direction, remote, reason } => {
                warn!(direction, remote = %remote, reason = %reason, "s2s remote refused");
            }
            Effect::AntiSpam(event) => {
                let report_to = self.gen_rx.borrow().config.contacts.as_ref().map(|c| c.report_to.clone());
                if let Some(to) = report_to.filter(|t| !t.is_empty()) {
                    // Its own task: a slow component connection never stalls this session.
                    tokio::spawn(async move { crate::component::forward_report(&event, &to).await });
                }
            }
            Effect::Ibb(event) => {
                let control = self.registration.control();
                let scans = self.ibb.get_or_insert_with(Default::default);
                let (generation, shared) = (&self.generation, &self.shared);
                Box::pin(scans.handle(event, generation, shared, &control, &self.listener.name, self.peer.ip())).await;
            }
            Effect::Quarantine(held) => Box::pin(self.on_quarantine(*held)).await,
            Effect::Close(reason) => {
                let _ = timeout(CLOSE_FLUSH_TIMEOUT, self.flush()).await;
                return Some(reason);
            }
        }
        None
    }

    /// Audit lines and metric increments for `effect` ([`report::report`]).
    async fn report(&mut self, effect: &Effect) {
        let r = report::report(effect, &self.listener.name, self.peer.ip(), self.session.chains());
        let metrics = &self.shared.metrics;
        if let Some(labels) = &r.s2s_auth {
            metrics.s2s_authenticated.get_or_create(labels).inc();
        }
        if let Some(labels) = &r.antispam {
            metrics.antispam.get_or_create(labels).inc();
        }
        if let Some(direction) = r.s2s_refused {
            metrics.s2s_refused.get_or_create(&DirectionLabels { direction }).inc();
        }
        for labels in &r.verdicts {
            metrics.verdicts.get_or_create(labels).inc();
        }
        for labels in &r.defaults {
            metrics.defaults.get_or_create(labels).inc();
        }
        if !r.audit.is_empty() {
            self.shared.audit.record(self.audit_path.clone(), r.audit).await;
        }
    }

    /// A stanza a `quarantine` rule held: store it durably before this session reads on, and
    /// audit it with the entry's id; one that cannot be stored is dropped (audited), never
    /// delivered (invariant 5, fail closed).
    async fn on_quarantine(&mut self, held: stanzawall_core::session::Held) {
        let entry = crate::quarantine::Entry::of_held(&held, &self.listener.name, self.registration.id());
        let result = match &self.shared.quarantine {
            Some(q) => q.hold(entry.clone()).await,
            None => Err(crate::quarantine::QuarantineError::Unavailable),
        };
        let user = held.summary.user.as_ref().map(ToString::to_string);
        let origin =
            crate::audit::Origin { listener: &self.listener.name, client_ip: self.peer.ip(), user: user.as_deref() };
        let line = crate::quarantine::audit_record(&entry, result.as_ref().err(), origin);
        match &result {
            Ok(()) => info!(quarantine.id = %entry.id, chain = held.chain.as_str(), "stanza held in the quarantine"),
            Err(e) => warn!(quarantine.id = %entry.id, error = %e, "stanza not held (dropped): quarantine refused it"),
        }
        self.shared.audit.record(self.audit_path.clone(), vec![line]).await;
    }

    /// Count a failed authentication; on a ban, sync it to the kernel before this session's
    /// close (so the next SYN is dropped) and end the session.
    async fn on_auth_failed(&mut self) {
        let Some(until) = Box::pin(self.permit.auth_failed()).await else { return };
        let unix = until.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        warn!(banned_until_unix = unix, "source banned after repeated authentication failures");
        if let Some(sync) = &self.generation.ban_sync {
            Box::pin(sync.ban(self.peer.ip(), until)).await;
        }
        self.session.refuse(Condition::PolicyViolation, "too many authentication failures");
    }

    fn count_stanzas(&mut self) {
        let counters = self.session.counters();
        let t = &self.totals;
        self.registration.update(
            t.from_client,
            t.to_client,
            counters.stanzas_from_client,
            counters.stanzas_from_backend,
        );
        if counters != self.reported {
            let stanzas = &self.shared.metrics.stanzas;
            let (front, back) = self.session.chains();
            let from_client = counters.stanzas_from_client - self.reported.stanzas_from_client;
            let from_backend = counters.stanzas_from_backend - self.reported.stanzas_from_backend;
            stanzas.get_or_create(&ChainLabels { chain: front.as_str() }).inc_by(from_client);
            stanzas.get_or_create(&ChainLabels { chain: back.as_str() }).inc_by(from_backend);
            self.reported = counters;
        }
    }

    /// Wait for one input — client bytes (within the read shaper's grant), backend bytes, a
    /// reload, a shutdown, the session's deadline — and hand it to the session.
    async fn next_input(&mut self) {
        let (room, pause) = match self.shaper.as_mut() {
            None => (self.cbuf.len(), Duration::ZERO),
            Some(bucket) => {
                let now = std::time::Instant::now();
                match bucket.grant(self.cbuf.len(), now) {
                    0 => (0, bucket.wait(now)),
                    n => (n, Duration::ZERO),
                }
            }
        };
        let (client_paused, backend_paused) = self.session.paused();
        if client_paused || backend_paused {
            if self.roster_news.is_none() {
                // Subscribed before looking again: a roster that lands in between is not missed.
                self.roster_news = Some(crate::component::roster_news());
                crate::component::wake_fetcher();
                self.session.wake(std::time::Instant::now());
                return;
            }
        } else {
            self.roster_news = None;
        }
        let room = if client_paused { 0 } else { room };
        tokio::select! {
            Some(Ok(())) = async { match self.roster_news.as_mut() { Some(rx) => Some(rx.changed().await), None => None } } => {
                self.session.wake(std::time::Instant::now());
            }
            changed = self.gen_rx.changed() => {
                // A reload: the next stanza is evaluated against the new policy.
                if changed.is_ok() {
                    let next = self.gen_rx.borrow_and_update().clone();
                    self.session.set_policy(next.policy.clone());
                    self.audit_path = next.policy.audit().path.clone();
                }
            }
            r = self.client.read(&mut self.cbuf.space()[..room]), if room > 0 => match r {
                Ok(0) | Err(_) => self.session.client_disconnected(),
                Ok(n) => self.on_client_read(n),
            },
            r = legs::read_backend(&mut self.backend, self.bbuf.space()), if !backend_paused => match r {
                Ok(0) => self.session.backend_failed("backend closed the connection"),
                Err(e) => self.session.backend_failed(&format!("backend read failed: {e}")),
                Ok(n) => {
                    self.totals.from_backend += n as u64;
                    self.session.backend_bytes(self.bbuf.filled(n), std::time::Instant::now());
                    self.bbuf.adapt(n);
                }
            },
            _ = tokio::time::sleep(pause), if room == 0 && !client_paused => self.shaped += pause,
            _ = self.shutdown.changed() => self.session.shutdown(),
            // A stanza released from the quarantine: the engine writes it toward where it was
            // going; the answer waits for the flush.
            Some(d) = self.deliveries.recv() => {
                match self.session.deliver_released(d.chain, d.stanza) {
                    Ok(()) => {
                        info!(session.id = self.registration.id(), chain = d.chain.as_str(), "quarantined stanza released into this session");
                        self.delivered.push(d.reply);
                    }
                    Err(why) => {
                        let _ = d.reply.send(Err(why.to_string()));
                    }
                }
            }
            // An operator's kick (admin API): the engine sends the stream error and closes.
            Some(control) = self.kicks.recv() => match control {
                crate::sessions::Control::Kick(kick) => match kick.drain {
                    // The gateway leaves its pool: the session settles what it can, then ends.
                    Some(error) => {
                        info!(session.id = self.registration.id(), condition = error.condition.as_str(), "session ending: the gateway is draining");
                        self.session.drain(error, std::time::Instant::now());
                        self.rearm_if_earlier();
                    }
                    None => {
                        info!(session.id = self.registration.id(), condition = kick.condition.as_str(), "session kicked by an operator");
                        self.session.refuse(kick.condition, &kick.text);
                    }
                },
                crate::sessions::Control::Notice(stanza) => self.session.notify_client(&stanza),
                crate::sessions::Control::Scanned { id, verdict } => self.session.transfer_scanned(id, verdict),
            },
            _ = &mut self.timer => {
                self.session.handle_timeout(std::time::Instant::now());
                self.armed = self.deadline();
                self.timer.as_mut().reset(self.armed);
            }
        }
    }

    fn on_client_read(&mut self, n: usize) {
        let data = self.cbuf.filled(n);
        if let Some(bucket) = self.shaper.as_mut() {
            bucket.consume(n);
        }
        self.totals.from_client += n as u64;
        #[cfg(feature = "fault-injection")]
        #[allow(clippy::panic)] // the whole point of this test-only feature
        if data.windows(FAULT_INJECTION_PANIC.len()).any(|w| w == FAULT_INJECTION_PANIC) {
            panic!("fault injection: the client asked this session to panic");
        }
        self.session.client_bytes(data, std::time::Instant::now());
        self.cbuf.adapt(n);
    }

    /// Outbound s2s: resolve and connect to the remote domain (direct TLS at once when its
    /// SRV says so) and tell the session what the certificate and DNS proved.
    async fn connect_remote(&mut self, domain: &str) {
        let Some(rt) = self.generation.s2s.clone() else {
            return self.session.backend_failed("no [s2s] section");
        };
        let (mut stream, target) = match rt.connect(domain).await {
            Ok(c) => c,
            Err(e) => {
                warn!(remote = %domain, error = %e, "remote server unreachable");
                return self.session.backend_failed(&e);
            }
        };
        let dnssec = crate::s2s::dnssec_of(&target);
        info!(remote = %domain, target = %target.host, addr = %target.addr, dnssec = dnssec.as_str(), "remote server connected");
        if target.direct_tls {
            let cert = self.session.local_domain().and_then(|l| self.generation.tls.client_cert(l));
            match rt.upgrade(&mut stream, domain, &target, cert).await {
                Ok(peer) => self.session.remote_certificate(peer, dnssec),
                Err(e) => return self.session.backend_failed(&e),
            }
            self.backend = Some(stream);
            self.session.backend_connected();
        } else {
            self.backend = Some(stream);
            self.session.backend_connected();
            self.session.remote_certificate(PeerCert::None, dnssec);
        }
        self.remote = Some(Box::new(target));
    }

    /// Outbound s2s: STARTTLS with the remote (DANE or PKIX, our certificate for SASL EXTERNAL).
    async fn upgrade_remote(&mut self) {
        let (Some(rt), Some(target)) = (self.generation.s2s.clone(), self.remote.clone()) else {
            return self.session.backend_failed("no remote connection to secure");
        };
        if !self.session.take_backend_buffered().is_empty() {
            return self.session.backend_failed("the remote sent data after <proceed/>");
        }
        let domain = self.session.domain().unwrap_or_default().to_owned();
        let cert = self.session.local_domain().and_then(|l| self.generation.tls.client_cert(l));
        let Some(stream) = self.backend.as_mut() else {
            return self.session.backend_failed("no remote connection to secure");
        };
        match rt.upgrade(stream, &domain, &target, cert).await {
            Ok(peer) => {
                info!(remote = %domain, certificate = peer.as_str(), "remote TLS established");
                self.session.remote_certificate(peer, crate::s2s::dnssec_of(&target));
                self.session.backend_tls_established();
            }
            Err(e) => {
                warn!(remote = %domain, error = %e, "remote TLS failed");
                self.session.backend_failed(&e);
            }
        }
    }

    /// Shut both legs down and log and count how the session ended.
    async fn close(mut self, reason: CloseReason) {
        let _ = timeout(CLOSE_FLUSH_TIMEOUT, self.client.shutdown()).await;
        if let Some(b) = self.backend.as_mut() {
            let _ = timeout(CLOSE_FLUSH_TIMEOUT, b.shutdown()).await;
        }
        self.count_stanzas();
        let metrics = &self.shared.metrics;
        let t = &self.totals;
        for (direction, n) in [
            ("from_client", t.from_client),
            ("to_client", t.to_client),
            ("from_backend", t.from_backend),
            ("to_backend", t.to_backend),
        ] {
            metrics.bytes.get_or_create(&DirectionLabels { direction }).inc_by(n);
        }
        metrics.sessions_closed.get_or_create(&CloseLabels { side: reason.side(), reason: reason.kind() }).inc();
        if let CloseReason::ClientError(e) | CloseReason::BackendError(e) = &reason {
            let side = reason.side();
            metrics.stream_errors.get_or_create(&ErrorLabels { side, condition: e.condition.as_str() }).inc();
        }
        let counters = self.session.counters();
        info!(
            bytes.from_client = t.from_client,
            bytes.to_client = t.to_client,
            bytes.from_backend = t.from_backend,
            bytes.to_backend = t.to_backend,
            stanzas.from_client = counters.stanzas_from_client,
            stanzas.from_backend = counters.stanzas_from_backend,
            shaping.paused_ms = self.shaped.as_millis() as u64,
            close.side = reason.side(),
            reason = %reason,
            "session closed"
        );
    }
}
