//! One client connection: moves bytes between the sockets and the core [`Session`].
//!
//! The loop is mini-redis-shaped: write everything the session queued (a slow reader blocks
//! us here, which is the backpressure of invariant 6: we read no more from the other side until
//! it drains), carry out the session's effects (TLS upgrades, backend connect), then wait for
//! bytes from either leg, a shutdown, the handshake deadline or the idle deadline. It makes no
//! protocol decision.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use stanzawall_core::config::{ListenerConfig, ListenerKind};
use stanzawall_core::limit::ByteBucket;
use stanzawall_core::session::{BackendTls, CloseReason, Effect, PolicyBinding, Session, SessionConfig};
use stanzawall_core::stream::Condition;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use tracing::{debug, info, warn};

use crate::audit;
use crate::io::{Rewind, Stream};
use crate::metrics::{ChainLabels, CloseLabels, DirectionLabels, ErrorLabels, Metrics, VerdictLabels};
use crate::state::{Generation, Permit, Shared};

/// Time allowed for connecting to a backend.
const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for flushing final bytes when closing.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Time the backend has to answer a client's `</stream:stream>` with its own (RFC 6120 §4.4)
/// while what it still sends is relayed.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// A write that makes no progress for this long ends the session (the peer stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP keepalive on both legs, so a peer that vanished without a FIN is noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Read buffers grow from `READ_BUF_MIN` while reads fill them, up to `READ_BUF`, and drop back
/// once traffic is small again: an idle session holds 2 × 512 B instead of 2 × 16 KiB (most of
/// its memory, measured by bench/ with massif).
const READ_BUF: usize = 16 * 1024;
const READ_BUF_MIN: usize = 512;
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
struct Open<'a>(&'a Metrics);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.sessions.dec();
    }
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
    let SessionContext { generation, mut gen_rx, mut shutdown, shared } = ctx;
    let metrics = &*shared.metrics;
    metrics.sessions.inc();
    metrics.sessions_total.inc();
    let _open = Open(metrics);
    tune(&socket);
    let limits = generation.config.limits;
    let direct_tls = listener.kind == ListenerKind::C2sTls;
    let mut session = Session::new(SessionConfig {
        direct_tls,
        preauth_limits: limits.xml_preauth(),
        limits: limits.xml(),
        backend_limits: limits.xml_backend(),
        backend_tls: listener.backend.tls,
        stream_id: random_id(),
    });
    // The newest policy (a reload may have landed since accept), marked seen.
    let policy = gen_rx.borrow_and_update().policy.clone();
    let mut audit_path = policy.audit().path.clone();
    let binding = PolicyBinding { policy, rates: shared.rates.clone(), source_ip: peer.ip() };
    session.attach_policy(binding, std::time::Instant::now());
    let mut last_counters = session.counters();
    info!("session opened");

    let mut client = Stream::Plain(Rewind::new(socket));
    let mut totals = Totals::default();
    let network = &generation.config.network;
    let (handshake_timeout, idle_timeout) = (network.handshake_timeout, network.idle_timeout);
    // From accept to SASL success (slowloris is cut here, with <connection-timeout/> once a
    // stream is open); after that, no traffic either way for idle_timeout ends the session.
    let deadline = Instant::now() + handshake_timeout;
    // Traffic moves `last_activity` only; the one timer is re-armed when it fires early, so a
    // busy session costs no timer operation per read (tokio's select! would otherwise register
    // a new one each loop).
    let mut last_activity = Instant::now();
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    if direct_tls {
        match timeout(handshake_timeout, Box::pin(accept_tls(&mut client, None, true, &generation))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return info!(close.side = "client", reason = %format!("TLS handshake failed: {e}"), "session closed")
            }
            Err(_) => return info!(close.side = "client", reason = "TLS handshake timed out", "session closed"),
        }
    }
    let mut backend: Option<Stream> = None;
    let mut authenticated = false;
    // Read shaping of the client leg after authentication: when the bucket is empty we stop
    // reading (the kernel's receive window then slows the sender); nothing is ever dropped.
    let mut shaper: Option<ByteBucket> = None;
    let mut shaped = Duration::ZERO;
    let mut cbuf = ReadBuf::new();
    let mut bbuf = ReadBuf::new();

    let reason = 'session: loop {
        if let Err(failure) = flush(&mut session, &mut client, &mut backend, &mut totals).await {
            on_write_failure(&mut session, failure);
        }
        while let Some(effect) = session.poll_effect() {
            match effect {
                Effect::StartClientTls { domain } => {
                    let prefix = session.take_client_buffered();
                    if let Stream::Plain(r) = &mut client {
                        r.rewind(prefix);
                        r.skip_leading_whitespace();
                    }
                    match timeout(
                        deadline.saturating_duration_since(Instant::now()),
                        Box::pin(accept_tls(&mut client, Some(&domain), false, &generation)),
                    )
                    .await
                    {
                        Ok(Ok(())) => session.client_tls_established(),
                        Ok(Err(e)) => break 'session CloseReason::ClientFailed(format!("TLS handshake failed: {e}")),
                        Err(_) => break 'session CloseReason::ClientFailed("TLS handshake timed out".into()),
                    }
                }
                // A session that closed in the same read (header + garbage) needs no backend.
                Effect::ConnectBackend { .. } if session.is_closed() => {}
                Effect::ConnectBackend { domain } => {
                    match Box::pin(connect_backend(&listener, &generation, &domain, peer, local)).await {
                        Ok(stream) => {
                            backend = Some(stream);
                            session.backend_connected();
                        }
                        Err(e) => {
                            warn!(backend = %listener.backend.address, error = %e, "backend unavailable");
                            session.backend_failed(&e);
                        }
                    }
                }
                Effect::StartBackendTls => {
                    let leftover = session.take_backend_buffered();
                    let domain = session.domain().unwrap_or_default().to_owned();
                    match Box::pin(upgrade_backend(&mut backend, leftover, &listener, &generation, &domain)).await {
                        Ok(()) => session.backend_tls_established(),
                        Err(e) => session.backend_failed(&e),
                    }
                }
                Effect::Bound(jid) => {
                    tracing::Span::current().record("client.jid", tracing::field::display(&jid));
                    info!("session bound");
                }
                Effect::AuthFailed => {
                    if let Some(until) = Box::pin(permit.auth_failed()).await {
                        let unix = until.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                        warn!(banned_until_unix = unix, "source banned after repeated authentication failures");
                        // In the kernel before this session's close, so the next SYN is dropped.
                        if let Some(sync) = &generation.ban_sync {
                            Box::pin(sync.ban(peer.ip(), until)).await;
                        }
                        session.refuse(Condition::PolicyViolation, "too many authentication failures");
                    }
                }
                Effect::Authenticated => {
                    authenticated = true;
                    shaper = network.bandwidth_per_connection.map(|b| ByteBucket::new(b, std::time::Instant::now()));
                    last_activity = Instant::now();
                    timer.as_mut().reset(last_activity + idle_timeout);
                }
                Effect::Bounced { stanza, condition, reason } => {
                    info!(stanza.kind = stanza.kind.as_str(), error = condition.as_str(), reason, "stanza bounced");
                    let user = session.bound_jid().map(|j| j.to_bare().to_string());
                    let origin =
                        audit::Origin { listener: &listener.name, client_ip: peer.ip(), user: user.as_deref() };
                    let line =
                        audit::gateway_record(false, Some(&stanza), "bounce", Some(condition.as_str()), reason, origin);
                    shared.audit.record(audit_path.clone(), vec![line]).await;
                }
                Effect::Dropped { from_backend, stanza, reason } => {
                    info!(direction = if from_backend { "to-client" } else { "to-backend" }, reason, "stanza dropped");
                    let user = session.bound_jid().map(|j| j.to_bare().to_string());
                    let origin =
                        audit::Origin { listener: &listener.name, client_ip: peer.ip(), user: user.as_deref() };
                    let line = audit::gateway_record(from_backend, stanza.as_ref(), "drop", None, reason, origin);
                    shared.audit.record(audit_path.clone(), vec![line]).await;
                }
                Effect::Policy(event) => {
                    for hit in &event.hits {
                        let labels = VerdictLabels {
                            rule: hit.rule.to_string(),
                            action: hit.action,
                            log_only: if hit.log_only { "true" } else { "false" },
                        };
                        metrics.verdicts.get_or_create(&labels).inc();
                    }
                    if event.hits.iter().all(|h| h.log_only || h.action == "log") && event.outcome != "pass" {
                        let labels = VerdictLabels {
                            rule: format!("default:{}", event.chain.as_str()),
                            action: event.outcome,
                            log_only: "false",
                        };
                        metrics.defaults.get_or_create(&labels).inc();
                    }
                    let user = session.bound_jid().map(|j| j.to_bare().to_string());
                    let origin =
                        audit::Origin { listener: &listener.name, client_ip: peer.ip(), user: user.as_deref() };
                    shared.audit.record(audit_path.clone(), audit::records(&event, origin)).await;
                }
                Effect::Close(reason) => {
                    let _ =
                        timeout(CLOSE_FLUSH_TIMEOUT, flush(&mut session, &mut client, &mut backend, &mut totals)).await;
                    break 'session reason;
                }
            }
            if let Err(failure) = flush(&mut session, &mut client, &mut backend, &mut totals).await {
                on_write_failure(&mut session, failure);
            }
        }
        let (room, pause) = match shaper.as_mut() {
            None => (cbuf.len(), Duration::ZERO),
            Some(bucket) => {
                let now = std::time::Instant::now();
                match bucket.grant(cbuf.len(), now) {
                    0 => (0, bucket.wait(now)),
                    n => (n, Duration::ZERO),
                }
            }
        };
        let counters = session.counters();
        if counters != last_counters {
            let c2s_in = counters.stanzas_from_client - last_counters.stanzas_from_client;
            let c2s_out = counters.stanzas_from_backend - last_counters.stanzas_from_backend;
            metrics.stanzas.get_or_create(&ChainLabels { chain: "c2s-in" }).inc_by(c2s_in);
            metrics.stanzas.get_or_create(&ChainLabels { chain: "c2s-out" }).inc_by(c2s_out);
            last_counters = counters;
        }
        tokio::select! {
            changed = gen_rx.changed() => {
                // A reload: the next stanza is evaluated against the new policy.
                if changed.is_ok() {
                    let next = gen_rx.borrow_and_update().clone();
                    session.set_policy(next.policy.clone());
                    audit_path = next.policy.audit().path.clone();
                }
            }
            r = client.read(&mut cbuf.space()[..room]), if room > 0 => match r {
                Ok(0) | Err(_) => session.client_disconnected(),
                Ok(n) => {
                    let data = cbuf.filled(n);
                    if let Some(bucket) = shaper.as_mut() {
                        bucket.consume(n);
                    }
                    totals.from_client += n as u64;
                    last_activity = Instant::now();
                    #[cfg(feature = "fault-injection")]
                    #[allow(clippy::panic)] // the whole point of this test-only feature
                    if data.windows(FAULT_INJECTION_PANIC.len()).any(|w| w == FAULT_INJECTION_PANIC) {
                        panic!("fault injection: the client asked this session to panic");
                    }
                    session.set_now(std::time::Instant::now());
                    session.client_bytes(data);
                    cbuf.adapt(n);
                }
            },
            r = read_backend(&mut backend, bbuf.space()) => match r {
                Ok(0) => session.backend_failed("backend closed the connection"),
                Err(e) => session.backend_failed(&format!("backend read failed: {e}")),
                Ok(n) => {
                    totals.from_backend += n as u64;
                    last_activity = Instant::now();
                    session.set_now(std::time::Instant::now());
                    session.backend_bytes(bbuf.filled(n));
                    bbuf.adapt(n);
                }
            },
            _ = tokio::time::sleep(pause), if room == 0 => shaped += pause,
            _ = shutdown.changed() => session.shutdown(),
            _ = &mut timer, if !session.is_closing() => {
                // Before authentication the handshake deadline is fixed; after it, the session
                // is idle once nothing moved for idle_timeout.
                let due = if authenticated { last_activity + idle_timeout } else { deadline };
                if Instant::now() >= due {
                    session.timed_out();
                } else {
                    timer.as_mut().reset(due);
                }
            }
            _ = tokio::time::sleep(CLOSE_HANDSHAKE_TIMEOUT), if session.is_closing() => session.timed_out(),
        }
    };
    let _ = timeout(CLOSE_FLUSH_TIMEOUT, client.shutdown()).await;
    if let Some(b) = backend.as_mut() {
        let _ = timeout(CLOSE_FLUSH_TIMEOUT, b.shutdown()).await;
    }
    let counters = session.counters();
    for (direction, n) in [
        ("from_client", totals.from_client),
        ("to_client", totals.to_client),
        ("from_backend", totals.from_backend),
        ("to_backend", totals.to_backend),
    ] {
        metrics.bytes.get_or_create(&DirectionLabels { direction }).inc_by(n);
    }
    metrics.sessions_closed.get_or_create(&CloseLabels { side: reason.side(), reason: reason.kind() }).inc();
    match &reason {
        CloseReason::ClientError(e) => {
            metrics.stream_errors.get_or_create(&ErrorLabels { side: "client", condition: e.condition.as_str() }).inc();
        }
        CloseReason::BackendError(e) => {
            metrics
                .stream_errors
                .get_or_create(&ErrorLabels { side: "backend", condition: e.condition.as_str() })
                .inc();
        }
        _ => {}
    }
    info!(
        bytes.from_client = totals.from_client,
        bytes.to_client = totals.to_client,
        bytes.from_backend = totals.from_backend,
        bytes.to_backend = totals.to_backend,
        stanzas.from_client = counters.stanzas_from_client,
        stanzas.from_backend = counters.stanzas_from_backend,
        shaping.paused_ms = shaped.as_millis() as u64,
        close.side = reason.side(),
        reason = %reason,
        "session closed"
    );
}

/// A read buffer sized by recent reads (see `READ_BUF_MIN`).
struct ReadBuf(Vec<u8>);

impl ReadBuf {
    fn new() -> Self {
        ReadBuf(vec![0; READ_BUF_MIN])
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn space(&mut self) -> &mut [u8] {
        &mut self.0
    }

    fn filled(&self, n: usize) -> &[u8] {
        &self.0[..n.min(self.0.len())]
    }

    /// After a read of `n` bytes: a full buffer doubles (more is waiting), a small read returns
    /// it to the minimum.
    fn adapt(&mut self, n: usize) {
        let len = self.0.len();
        if n == len && len < READ_BUF {
            self.0 = vec![0; (len * 2).min(READ_BUF)];
        } else if n < READ_BUF_MIN && len > READ_BUF_MIN {
            self.0 = vec![0; READ_BUF_MIN];
        }
    }
}

/// Which leg a write failed on.
#[derive(Debug)]
enum WriteFailure {
    Client(std::io::Error),
    Backend(std::io::Error),
}

/// Write what the session queued, backend first. Each leg's write is bounded by
/// `WRITE_TIMEOUT`: a peer that stops reading gets backpressure, then a close — never an
/// unbounded queue and never a session stuck forever.
async fn flush(
    session: &mut Session,
    client: &mut Stream,
    backend: &mut Option<Stream>,
    totals: &mut Totals,
) -> Result<(), WriteFailure> {
    let out = session.take_to_backend();
    if !out.is_empty() {
        if let Some(b) = backend.as_mut() {
            write_bounded(b, &out).await.map_err(WriteFailure::Backend)?;
            totals.to_backend += out.len() as u64;
        }
    }
    let out = session.take_to_client();
    if !out.is_empty() {
        write_bounded(client, &out).await.map_err(WriteFailure::Client)?;
        totals.to_client += out.len() as u64;
    }
    Ok(())
}

async fn write_bounded(stream: &mut Stream, data: &[u8]) -> std::io::Result<()> {
    let write = async {
        stream.write_all(data).await?;
        stream.flush().await
    };
    match timeout(WRITE_TIMEOUT, write).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "peer stopped reading")),
    }
}

fn on_write_failure(session: &mut Session, failure: WriteFailure) {
    match failure {
        WriteFailure::Client(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            debug!(error = %e, "write to client timed out");
            session.client_not_reading();
        }
        WriteFailure::Client(e) => {
            debug!(error = %e, "write to client failed");
            session.client_disconnected();
        }
        WriteFailure::Backend(e) => session.backend_failed(&format!("write to backend failed: {e}")),
    }
}

async fn read_backend(backend: &mut Option<Stream>, buf: &mut [u8]) -> std::io::Result<usize> {
    match backend {
        Some(b) => b.read(buf).await,
        None => std::future::pending().await,
    }
}

/// TLS server handshake on the client leg; the certificate is chosen by SNI, else `domain`.
async fn accept_tls(
    client: &mut Stream,
    domain: Option<&str>,
    direct: bool,
    generation: &Generation,
) -> std::io::Result<()> {
    let plain = client.take_plain()?;
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), plain);
    let start = acceptor.await?;
    let sni = start.client_hello().server_name().map(str::to_owned);
    let name = sni.as_deref().or(domain);
    let config =
        generation.tls.server_config(name, direct).ok_or_else(|| std::io::Error::other("no certificate configured"))?;
    let tls = start.into_stream(config).await?;
    *client = Stream::Server(Box::new(tls));
    // The client's first stream header must not wait for a delayed ACK (see `ack_now`).
    client.ack_now();
    Ok(())
}

async fn connect_backend(
    listener: &ListenerConfig,
    generation: &Generation,
    domain: &str,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<Stream, String> {
    let address = &listener.backend.address;
    let socket = match timeout(BACKEND_CONNECT_TIMEOUT, TcpStream::connect(address.as_str())).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("connect to {address} failed: {e}")),
        Err(_) => return Err(format!("connect to {address} timed out")),
    };
    tune(&socket);
    let mut stream = Stream::Plain(Rewind::new(socket));
    if listener.backend.proxy_protocol {
        let header = stanzawall_core::proxy_protocol::v2_header(peer, local);
        stream.write_all(&header).await.map_err(|e| format!("PROXY header to {address}: {e}"))?;
    }
    if listener.backend.tls == BackendTls::Direct {
        upgrade_backend_stream(&mut stream, listener, generation, domain).await?;
    }
    Ok(stream)
}

async fn upgrade_backend(
    backend: &mut Option<Stream>,
    leftover: Vec<u8>,
    listener: &ListenerConfig,
    generation: &Generation,
    domain: &str,
) -> Result<(), String> {
    if !leftover.is_empty() {
        return Err("backend sent data after <proceed/>".into());
    }
    match backend.as_mut() {
        Some(stream) => upgrade_backend_stream(stream, listener, generation, domain).await,
        None => Err("no backend connection".into()),
    }
}

async fn upgrade_backend_stream(
    stream: &mut Stream,
    listener: &ListenerConfig,
    generation: &Generation,
    domain: &str,
) -> Result<(), String> {
    let config = generation.tls.backend_config(&listener.name).ok_or("no TLS client configuration for backend")?;
    let name = listener.backend.server_name.as_deref().unwrap_or(domain).to_owned();
    let server_name = ServerName::try_from(name.clone()).map_err(|e| format!("backend name {name}: {e}"))?;
    let plain = stream.take_plain().map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = timeout(BACKEND_CONNECT_TIMEOUT, connector.connect(server_name, plain))
        .await
        .map_err(|_| "backend TLS handshake timed out".to_owned())?
        .map_err(|e| format!("backend TLS handshake with {name} failed: {e}"))?;
    *stream = Stream::Client(Box::new(tls));
    Ok(())
}

/// No Nagle delay (stanzas are small and latency-bound), and TCP keepalive.
fn tune(socket: &TcpStream) {
    let _ = socket.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE).with_interval(TCP_KEEPALIVE / 4);
    let _ = socket2::SockRef::from(socket).set_tcp_keepalive(&keepalive);
}

fn random_id() -> String {
    let mut bytes = [0u8; 12];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy source: ids only need to be unique per stream, not secret.
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        bytes[..12].copy_from_slice(&nanos.to_le_bytes()[..12]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
