//! The BOSH door's I/O (XEP-0124/0206): HTTP connections in, BOSH sessions behind them.
//!
//! A BOSH session outlives the HTTP connections that carry it, so it does not run on one. Each
//! session is an ordinary [`Connection`] driving a core [`BoshSession`] (the same engine loop
//! as every other door: backend leg, effects, audit, bans, reloads, kicks, deadlines) whose
//! client leg is an in-process pipe ([`Stream::Local`]). A small router task per session owns
//! the other end: it writes the requests the HTTP tasks give it as leg records and hands each
//! response record to the HTTP task waiting for that handle. The HTTP tasks ([`serve_http`])
//! find the session by `sid` in a registry, or create it for a session-creation request (after
//! the same admission as an accepted connection: per-address limits, rates and bans).
//!
//! Nothing here decides about protocol: request reading, caps, Origin and CORS are the core's
//! `bosh::http`, every BOSH rule the core's `BoshSession`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use stanzawall_core::config::{ListenerConfig, ListenerKind};
use stanzawall_core::guard::Admission;
use stanzawall_core::session::web::bosh::body::{parse_body, terminate};
use stanzawall_core::session::web::bosh::http::{ok, HttpEvent, HttpReader};
use stanzawall_core::session::web::bosh::leg::{LegDecoder, Record};
use stanzawall_core::session::web::bosh::{BoshConfig, BoshSession, BODY_OVERHEAD};
use stanzawall_core::session::web::http::{HostMetaLink, REL_WEBSOCKET, REL_XBOSH};
use stanzawall_core::session::PolicyBinding;
use stanzawall_core::xml::XmlLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::timeout;
use tracing::{debug, info, Instrument};

use super::{c2s_session, legs, Connection, Open, SessionContext};
use crate::io::Stream;
use crate::state::{lock, Generation, Permit};

/// How long a kept-alive connection may sit between requests.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(120);
/// Beyond `wait`, how long an HTTP task waits for its session's answer before it gives up on
/// the connection (the session answers at `wait`; this only guards against a stuck session).
const ANSWER_SLACK: Duration = Duration::from_secs(15);
/// The pipe between a session and its router, each way.
const LEG_BUFFER: usize = 64 * 1024;
/// Requests queued toward one session (the HTTP tasks wait beyond it: backpressure).
const ROUTE_QUEUE: usize = 16;
/// Time allowed to write one response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A live session as the HTTP tasks see it.
struct Route {
    listener: String,
    requests: mpsc::Sender<Vec<u8>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>,
    next_handle: AtomicU64,
}

/// Live sessions by `sid` (a 128-bit random secret; routing needs nothing else).
static SESSIONS: LazyLock<Mutex<HashMap<String, Arc<Route>>>> = LazyLock::new(Default::default);

fn sessions() -> std::sync::MutexGuard<'static, HashMap<String, Arc<Route>>> {
    SESSIONS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn pending(route: &Route) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Vec<u8>>>> {
    route.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The other web listeners of `generation`, for host-meta (XEP-0156).
pub(super) fn web_links(generation: &Generation, except: &str) -> Vec<HostMetaLink> {
    generation
        .config
        .listeners
        .iter()
        .filter(|l| l.name != except)
        .filter_map(|l| {
            let (rel, scheme) = match l.kind {
                ListenerKind::WebSocket => (REL_WEBSOCKET, "wss"),
                ListenerKind::Bosh => (REL_XBOSH, "https"),
                _ => return None,
            };
            Some(HostMetaLink {
                rel,
                scheme,
                port: Some(l.bind.port()),
                path: l.web.path.clone(),
                public_url: l.web.public_url.clone(),
            })
        })
        .collect()
}

/// The settings of a BOSH listener's sessions.
fn bosh_config(listener: &ListenerConfig, generation: &Generation) -> BoshConfig {
    let web = &listener.web;
    BoshConfig {
        path: web.path.clone(),
        origins: web.allowed_origins.clone(),
        max_request_bytes: web.max_request_bytes.unwrap_or(generation.config.limits.stanza_bytes + BODY_OVERHEAD),
        public_url: web.public_url.clone(),
        domains: generation.config.certificates.iter().flat_map(|c| c.domains.iter().cloned()).collect(),
        links: web_links(generation, &listener.name),
        ..BoshConfig::default()
    }
}

/// Serve one accepted connection of a BOSH listener: TLS, then requests until it closes.
pub(super) async fn serve_http(
    mut client: Stream,
    peer: SocketAddr,
    local: SocketAddr,
    listener: Arc<ListenerConfig>,
    ctx: SessionContext,
) {
    let handshake = ctx.generation.config.network.handshake_timeout;
    // Browsers offer ALPN h2 and http/1.1: the certificate without the `xmpp-client` ALPN.
    match timeout(handshake, Box::pin(legs::accept_tls(&mut client, None, false, &ctx.generation, false))).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return info!(error = %e, "BOSH connection: TLS handshake failed"),
        Err(_) => return info!("BOSH connection: TLS handshake timed out"),
    }
    let cfg = Arc::new(bosh_config(&listener, &ctx.generation));
    let mut http = Http { client, reader: HttpReader::new(), buf: vec![0; 16 * 1024], cfg };
    // The first request must come within the handshake timeout, like a TCP login's header.
    let mut idle = handshake;
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let Some(event) = http.next_event(idle, &mut shutdown).await else { break };
        idle = KEEPALIVE_IDLE;
        match event {
            HttpEvent::Respond { response, close, status, why } => {
                debug!(status, why, "BOSH connection: answered over HTTP");
                if http.write(&response).await.is_err() || close {
                    break;
                }
            }
            HttpEvent::Post { body, cors, keep_alive } => {
                let Some(answer) = http.route(body, peer, local, &listener, &ctx).await else { break };
                if http.write(&ok(&answer, cors.as_deref(), keep_alive)).await.is_err() || !keep_alive {
                    break;
                }
            }
        }
    }
    let _ = timeout(Duration::from_secs(2), http.client.shutdown()).await;
}

/// One HTTP connection.
struct Http {
    client: Stream,
    reader: HttpReader,
    buf: Vec<u8>,
    cfg: Arc<BoshConfig>,
}

impl Http {
    /// The next request (or refusal); `None` when the connection closed or sat idle, or the
    /// gateway is shutting down (a kept-alive connection between requests is simply closed;
    /// one waiting for its session's answer gets the session's terminal body first).
    async fn next_event(&mut self, idle: Duration, shutdown: &mut watch::Receiver<bool>) -> Option<HttpEvent> {
        // Each read either completes an event or adds bytes the reader bounds (it refuses a
        // head over its cap, and a body is read only up to its checked Content-Length).
        loop {
            if let Some(e) = self.reader.next_event(&self.cfg) {
                return Some(e);
            }
            if *shutdown.borrow() {
                return None;
            }
            tokio::select! {
                r = timeout(idle, self.client.read(&mut self.buf)) => match r {
                    Ok(Ok(n)) if n > 0 => self.reader.feed(&self.buf[..n]),
                    _ => return None,
                },
                _ = shutdown.changed() => return None,
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let write = async {
            self.client.write_all(bytes).await?;
            self.client.flush().await
        };
        timeout(WRITE_TIMEOUT, write).await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }

    /// Give a request body to its session and wait for the answer; `None` when this connection
    /// closed meanwhile (the session is told, and answers the client's retransmission).
    async fn route(
        &mut self,
        body: Vec<u8>,
        peer: SocketAddr,
        local: SocketAddr,
        listener: &Arc<ListenerConfig>,
        ctx: &SessionContext,
    ) -> Option<Vec<u8>> {
        let limits = ctx.generation.config.limits.xml();
        // Read here for the `sid` only; the session reads it again under its own caps.
        let parse = XmlLimits { stanza_bytes: self.cfg.max_request_bytes, depth: limits.depth + 1, ..limits };
        let sid = match parse_body(&body, parse) {
            Ok(r) => r.sid,
            Err(e) => {
                info!(client.ip = %peer.ip(), error = %e, "BOSH request refused");
                return Some(terminate(e.condition()));
            }
        };
        let route = match sid {
            None => match new_session(peer, local, listener, ctx, &self.cfg) {
                Ok(route) => route,
                Err(answer) => return Some(answer),
            },
            Some(sid) => match sessions().get(&sid) {
                Some(r) if r.listener == listener.name => r.clone(),
                _ => return Some(terminate("item-not-found")),
            },
        };
        let handle = route.next_handle.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        pending(&route).insert(handle, tx);
        if route.requests.send(Record::Request { handle, body }.to_bytes()).await.is_err() {
            pending(&route).remove(&handle);
            return Some(terminate("item-not-found"));
        }
        let deadline = tokio::time::Instant::now() + self.cfg.max_wait + ANSWER_SLACK;
        // Bounded by the deadline; each turn reads bytes the reader bounds.
        loop {
            // Pipelined bytes are buffered, up to one more request; then reading pauses.
            let room =
                self.reader.buffered() < stanzawall_core::session::web::http::MAX_HEAD + self.cfg.max_request_bytes;
            tokio::select! {
                answer = &mut rx => return Some(answer.unwrap_or_else(|_| terminate("item-not-found"))),
                r = self.client.read(&mut self.buf), if room => match r {
                    Ok(n) if n > 0 => self.reader.feed(&self.buf[..n]),
                    _ => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        // The connection is gone (or the session stuck): the request is not answered here.
        pending(&route).remove(&handle);
        let _ = route.requests.send(Record::Gone { handle }.to_bytes()).await;
        None
    }
}

/// A session-creation request: admit the source, start the session and its router.
fn new_session(
    peer: SocketAddr,
    local: SocketAddr,
    listener: &Arc<ListenerConfig>,
    ctx: &SessionContext,
    cfg: &Arc<BoshConfig>,
) -> Result<Arc<Route>, Vec<u8>> {
    let shared = &ctx.shared;
    let generation = &ctx.generation;
    // A BOSH session holds what a TCP connection holds: it is admitted like one.
    if shared.store.as_ref().is_some_and(|s| s.refuse_admission()) {
        return Err(terminate("policy-violation"));
    }
    let admission = lock(&shared.guard).admit(peer.ip(), std::time::Instant::now(), SystemTime::now());
    let permit = match admission {
        Admission::Admitted { source } => {
            Permit::new(shared.guard.clone(), peer.ip(), source, generation.config.state_dir.clone())
                .with_store(shared.store.clone())
        }
        Admission::Refused { why, .. } => {
            shared.metrics.refused.get_or_create(&crate::metrics::ReasonLabels { reason: why.as_str() }).inc();
            info!(client.ip = %peer.ip(), reason = why.as_str(), "BOSH session refused");
            return Err(terminate("policy-violation"));
        }
    };
    let sid = format!("{}{}", legs::random_id(), &legs::random_id()[..8]);
    let (ours, theirs) = tokio::io::duplex(LEG_BUFFER);
    let (requests, request_rx) = mpsc::channel(ROUTE_QUEUE);
    let route = Arc::new(Route {
        listener: listener.name.clone(),
        requests,
        pending: Mutex::new(HashMap::new()),
        next_handle: AtomicU64::new(1),
    });
    sessions().insert(sid.clone(), route.clone());
    tokio::spawn(router(ours, request_rx, route.clone(), sid.clone(), cfg.max_request_bytes));

    let span = tracing::info_span!(
        "session",
        listener = %listener.name,
        client.ip = %peer.ip(),
        client.port = peer.port(),
        bosh.sid = %sid,
        client.jid = tracing::field::Empty
    );
    let ctx = SessionContext {
        generation: generation.clone(),
        gen_rx: ctx.gen_rx.clone(),
        shutdown: ctx.shutdown.clone(),
        shared: shared.clone(),
    };
    let (listener, cfg) = (listener.clone(), cfg.clone());
    tokio::spawn(
        async move {
            let permit = permit;
            let metrics = ctx.shared.metrics.clone();
            metrics.sessions.inc();
            metrics.sessions_total.inc();
            let _open = Open(metrics);
            info!("BOSH session opened");
            let make = move |l: &ListenerConfig, g: &Generation, b: PolicyBinding, t, id| {
                let (preauth, limits) = (g.config.limits.xml_preauth(), g.config.limits.xml());
                let session = c2s_session(l, g, b, t, id)?;
                Some(BoshSession::new(cfg, session, sid, preauth, limits, std::time::Instant::now()))
            };
            let Some(conn) = Connection::new(Stream::Local(theirs), peer, local, listener, ctx, &permit, make) else {
                return;
            };
            conn.serve().await
        }
        .instrument(span),
    );
    Ok(route)
}

/// Moves records between the HTTP tasks and one session until the session ends.
async fn router(
    pipe: tokio::io::DuplexStream,
    mut requests: mpsc::Receiver<Vec<u8>>,
    route: Arc<Route>,
    sid: String,
    max_record: usize,
) {
    let (mut rd, mut wr) = tokio::io::split(pipe);
    // Requests in and responses out run side by side, so neither direction's full buffer can
    // stall the other.
    let forward = async {
        while let Some(record) = requests.recv().await {
            if wr.write_all(&record).await.is_err() {
                break;
            }
        }
    };
    let dispatch = async {
        // The session's answers are capped by its pending-output cap; a record over this is a fault.
        let mut decoder = LegDecoder::new(max_record.max(4 << 20));
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(n) if n > 0 => decoder.feed(&buf[..n]),
                _ => break,
            }
            while let Ok(Some(record)) = decoder.next_record() {
                if let Record::Response { handle, body } = record {
                    if let Some(tx) = pending(&route).remove(&handle) {
                        let _ = tx.send(body);
                    }
                }
            }
        }
    };
    tokio::select! {
        () = forward => {}
        () = dispatch => {}
    }
    sessions().remove(&sid);
    // Waiting HTTP tasks answer `item-not-found`: the session is gone.
    pending(&route).clear();
}
