//! The admin listener (`[admin] bind`): the JSON API under `/api/v1`, the dashboard at `/`,
//! `GET /metrics`, `GET /healthz` and `GET /readyz`.
//!
//! Every API endpoint needs a bearer token ([`auth`], [`crate::tokens`]) or, over TLS with
//! `[admin] client_ca`, a client certificate whose common name `[admin.client_roles]` maps to a
//! role ([`crate::admin_tls`]); `read` callers see, `admin` callers also act. A request that carries an
//! `Authorization` header is judged by its token alone. Public without a token: the dashboard's static files (they hold no data;
//! the page asks for a token and calls the API with it), `/healthz`, `/readyz`, and `/metrics`
//! unless `[admin] metrics_public = false`. Every action (kick, ban, unban, list edit, reload,
//! quarantine release and delete)
//! and every refused request is written to the audit log as an `"event": "admin"` record naming
//! the token, so the log says who did what and when.
//!
//! The API acts through the daemon's own paths, never around them: a kick is a message to the
//! session's engine ([`crate::sessions`]), a ban goes into the guard, the state directory's ban
//! file and nftables as an automatic ban does, a list edit rewrites the list file and then
//! reloads exactly as SIGHUP does (the supervisor answers with the reload's error, and the edit
//! is undone if the reload fails).

pub(crate) mod api;
pub mod auth;
mod dashboard;
pub mod lists;
mod quarantine;
pub mod routes;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::state::{Generation, Shared};
use crate::tokens::Role;
use auth::FailureLimiter;
// Outside `admin`: the config generation (crate::state) loads it, and admin reads the generation.
use crate::admin_tls as tls;

/// A reload asked for through the API: the supervisor answers with the changes or the error.
pub type ReloadRequest = oneshot::Sender<Result<Vec<String>, String>>;

/// What the admin listener serves from.
#[derive(Debug)]
pub struct Admin {
    gen_rx: watch::Receiver<Arc<Generation>>,
    shared: Shared,
    registry: Arc<Registry>,
    reload: mpsc::Sender<ReloadRequest>,
    /// Set once the first generation's listeners are serving (`/readyz`).
    pub ready: AtomicBool,
    failures: Mutex<FailureLimiter>,
    /// List edits one at a time (read, change, write, reload).
    list_edit: tokio::sync::Mutex<()>,
    /// Set by `POST /api/v1/drain` (and by SIGUSR2, through the supervisor): the supervisor
    /// follows it and drains the gateway.
    pub drain: watch::Sender<bool>,
    /// What this listener serves: everything, or (passive inspection) metrics and health only.
    scope: Scope,
}

/// The endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// `stanzawall run`: the API, the dashboard, metrics, health.
    Gateway,
    /// `stanzawall inspect --interface`: `/metrics`, `/healthz`, `/readyz` (nothing to act on).
    Inspect,
}

type St = Arc<Admin>;

impl Admin {
    /// The admin state over the daemon's generations and shared state.
    pub fn new(
        gen_rx: watch::Receiver<Arc<Generation>>,
        shared: Shared,
        registry: Arc<Registry>,
        reload: mpsc::Sender<ReloadRequest>,
    ) -> Admin {
        Admin {
            gen_rx,
            shared,
            registry,
            reload,
            ready: AtomicBool::new(false),
            failures: Mutex::new(FailureLimiter::default()),
            list_edit: tokio::sync::Mutex::new(()),
            scope: Scope::Gateway,
            drain: watch::channel(false).0,
        }
    }

    /// The admin state of a live passive inspection (`stanzawall inspect --interface`): the
    /// same authentication over `generation`'s `[admin]`, serving only `/metrics` from
    /// `registry` and the health endpoints.
    pub fn for_inspection(generation: Arc<Generation>, shared: Shared, registry: Arc<Registry>) -> Admin {
        // Nothing answers reloads here, and no route asks for one.
        let (reload, _) = mpsc::channel(1);
        let (_, gen_rx) = watch::channel(generation);
        Admin { scope: Scope::Inspect, ..Admin::new(gen_rx, shared, registry, reload) }
    }

    fn generation(&self) -> Arc<Generation> {
        self.gen_rx.borrow().clone()
    }

    /// Write an admin audit record (to the configured audit log, else the daemon's log).
    async fn audit(&self, who: &Caller, action: &str, detail: Value) {
        let path = self.generation().policy.audit().path.clone();
        let record = crate::audit::admin_record(&who.name, who.role_str(), who.ip, action, detail);
        self.shared.audit.record(path, vec![record]).await;
    }

    /// Reload as SIGHUP does and wait for the outcome.
    async fn reload_now(&self) -> Result<Vec<String>, String> {
        let (tx, rx) = oneshot::channel();
        self.reload.send(tx).await.map_err(|_| "the daemon is shutting down".to_owned())?;
        rx.await.map_err(|_| "the daemon is shutting down".to_owned())?
    }
}

/// Who made a request (the token's name and role, the client address).
#[derive(Debug, Clone)]
pub struct Caller {
    name: String,
    role: Option<Role>,
    ip: IpAddr,
}

impl Caller {
    fn role_str(&self) -> &'static str {
        self.role.map_or("none", Role::as_str)
    }
}

/// A caller with any valid token.
#[derive(Debug)]
pub struct Reader(pub Caller);

/// A caller with an `admin` token.
#[derive(Debug)]
pub struct Operator(pub Caller);

/// A JSON response.
pub(crate) fn reply(status: StatusCode, body: Value) -> Response {
    (status, [(CONTENT_TYPE, "application/json"), (CACHE_CONTROL, "no-store")], body.to_string()).into_response()
}

/// A JSON error response.
pub(crate) fn fail(status: StatusCode, message: impl std::fmt::Display) -> Response {
    reply(status, json!({ "error": message.to_string() }))
}

/// Check the request's bearer token; `need` is the role the endpoint requires.
async fn authorize(parts: &Parts, st: &St, need: Role) -> Result<Caller, Response> {
    let peer = parts.extensions.get::<ConnectInfo<AdminPeer>>().map(|ConnectInfo(p)| p);
    let ip = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.addr.ip());
    let cert = peer.and_then(|p| p.cert.as_ref());
    let path = parts.uri.path().to_owned();
    let now = Instant::now();
    let locked = auth::lock(&st.failures).locked(ip, now);
    if locked {
        return Err(fail(StatusCode::TOO_MANY_REQUESTS, "too many failed attempts from this address; try later"));
    }
    let header = parts.headers.get(AUTHORIZATION);
    let presented = header.and_then(|v| v.to_str().ok()).and_then(auth::bearer);
    let tokens = st.generation().admin_tokens.clone();
    let found = match (header, cert) {
        // mTLS: a verified client certificate with a mapped role, and no token to judge instead.
        (None, Some(c)) => c.role.map(|role| (c.audit_name(), role)),
        _ => presented.and_then(|p| tokens.verify(p)).map(|t| (t.name.clone(), t.role)),
    };
    let Some((name, role)) = found else {
        let reason = match (header, cert) {
            (None, Some(_)) => "client certificate has no role in [admin.client_roles]",
            _ if presented.is_some() => "unknown token",
            _ => "no token",
        };
        let limited = auth::lock(&st.failures).failed(ip, now);
        let anonymous = Caller { name: String::new(), role: None, ip };
        let subject = cert.map(tls::CertIdentity::audit_name);
        warn!(client.ip = %ip, path = %path, reason, client.cert = ?subject, "admin API request refused");
        st.audit(
            &anonymous,
            "auth",
            json!({ "result": "refused", "reason": reason, "path": path, "locked_out": limited, "certificate": subject }),
        )
        .await;
        let mut r = fail(StatusCode::UNAUTHORIZED, format!("{reason}: send Authorization: Bearer TOKEN"));
        r.headers_mut().insert(WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer realm=\"stanzawall\""));
        return Err(r);
    };
    let caller = Caller { name, role: Some(role), ip };
    if need == Role::Admin && role != Role::Admin {
        st.audit(&caller, "auth", json!({ "result": "forbidden", "path": path, "method": parts.method.as_str() }))
            .await;
        return Err(fail(StatusCode::FORBIDDEN, "this token may read, not act (role read)"));
    }
    Ok(caller)
}

impl FromRequestParts<St> for Reader {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &St) -> Result<Self, Self::Rejection> {
        authorize(parts, st, Role::Read).await.map(Reader)
    }
}

impl FromRequestParts<St> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &St) -> Result<Self, Self::Rejection> {
        authorize(parts, st, Role::Admin).await.map(Operator)
    }
}

/// The whole admin application: every entry of [`routes::routes`], and 404 for the rest.
fn router(st: St) -> axum::Router {
    use axum::routing::get;
    if st.scope == Scope::Inspect {
        return axum::Router::new()
            .route("/healthz", get(|| async { reply(StatusCode::OK, json!({ "status": "ok" })) }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .fallback(|| async {
                fail(StatusCode::NOT_FOUND, "no such endpoint (passive inspection serves /metrics, /healthz, /readyz)")
            })
            .with_state(st);
    }
    let app = routes::routes().into_iter().fold(axum::Router::new(), |app, r| app.route(r.path, r.handler));
    app.fallback(|| async { fail(StatusCode::NOT_FOUND, "no such endpoint") }).with_state(st)
}

async fn readyz(axum::extract::State(st): axum::extract::State<St>) -> Response {
    if st.ready.load(Ordering::Relaxed) {
        reply(StatusCode::OK, json!({ "ready": true }))
    } else {
        reply(StatusCode::SERVICE_UNAVAILABLE, json!({ "ready": false }))
    }
}

async fn metrics(axum::extract::State(st): axum::extract::State<St>, request: axum::extract::Request) -> Response {
    if !st.generation().config.admin.metrics_public {
        let (parts, _) = request.into_parts();
        if let Err(r) = authorize(&parts, &st, Role::Read).await {
            return r;
        }
    }
    match crate::metrics::encode_text(&st.registry) {
        Some(body) => {
            ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
        }
        None => fail(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed"),
    }
}

/// Serve the admin listener on `bind` until the task is aborted: plain HTTP, or HTTPS when the
/// current generation configures TLS (taken at each accept, so a reload switches or rotates it).
pub async fn serve(bind: SocketAddr, st: St) {
    let listener = match tokio::net::TcpListener::bind(bind).await {
        Ok(l) => l,
        Err(e) => return error!(admin.bind = %bind, error = %e, "cannot listen for the admin endpoint"),
    };
    let g = st.generation();
    let scheme = if g.admin_tls.is_some() { "https" } else { "http" };
    let mtls = g.config.admin.client_auth.is_some();
    let serves = match st.scope {
        Scope::Gateway => "API /api/v1, dashboard /, /metrics",
        Scope::Inspect => "/metrics, /healthz, /readyz",
    };
    info!(admin.bind = %bind, admin.tokens = g.admin_tokens.len(), admin.scheme = scheme, admin.mtls = mtls,
        "admin endpoint listening ({serves})");
    drop(g);
    let (tx, rx) = mpsc::channel(16);
    let acceptor = tokio::spawn(accept_loop(listener, st.clone(), tx));
    let app = router(st).into_make_service_with_connect_info::<AdminPeer>();
    if let Err(e) = axum::serve(AdminListener { rx, local: bind }, app).await {
        error!(admin.bind = %bind, error = %e, "admin endpoint failed");
    }
    acceptor.abort();
}

use tls::AdminPeer;

type AdminIo =
    tokio_util::either::Either<tokio::net::TcpStream, tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;

/// Connections ready for HTTP (TLS already done), handed to axum.
#[derive(Debug)]
struct AdminListener {
    rx: mpsc::Receiver<(AdminIo, AdminPeer)>,
    local: SocketAddr,
}

impl axum::serve::Listener for AdminListener {
    type Io = AdminIo;
    type Addr = AdminPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop ended (it logged why): serve what is open, accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(AdminPeer { addr: self.local, cert: None })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, AdminListener>> for AdminPeer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, AdminListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Accept TCP connections; run each TLS handshake on a task of its own (bounded in time and in
/// number) and pass the finished connection on.
async fn accept_loop(listener: tokio::net::TcpListener, st: St, tx: mpsc::Sender<(AdminIo, AdminPeer)>) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(tls::MAX_HANDSHAKES));
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: wait instead of spinning.
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(tls) = st.generation().admin_tls.clone() else {
            if tx.send((tokio_util::either::Either::Left(stream), AdminPeer { addr, cert: None })).await.is_err() {
                return;
            }
            continue;
        };
        let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
        let (tx, st) = (tx.clone(), st.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
            match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => {
                    let cert = tls.identify(s.get_ref().1.peer_certificates());
                    let _ = tx.send((tokio_util::either::Either::Right(s), AdminPeer { addr, cert })).await;
                }
                Ok(Err(e)) => {
                    let bad_cert = e
                        .get_ref()
                        .and_then(|i| i.downcast_ref::<rustls::Error>())
                        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
                    if bad_cert {
                        // A client certificate that does not chain to client_ca: an authentication
                        // failure like an unknown token (counted and audited the same way).
                        let limited = auth::lock(&st.failures).failed(addr.ip(), Instant::now());
                        warn!(client.ip = %addr.ip(), error = %e, "admin TLS: client certificate refused");
                        let anonymous = Caller { name: String::new(), role: None, ip: addr.ip() };
                        let detail = json!({ "result": "refused", "reason": format!("client certificate: {e}"), "locked_out": limited });
                        st.audit(&anonymous, "auth", detail).await;
                    } else {
                        info!(client.ip = %addr.ip(), error = %e, "admin TLS handshake failed");
                    }
                }
                Err(_) => info!(client.ip = %addr.ip(), "admin TLS handshake timed out"),
            }
        });
    }
}
