//! The route table against the README and against the real router: every route answers 401
//! without credentials unless documented public, 403 to a `read` token when it acts, and the
//! README's endpoint table names exactly the routes the router has.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use super::{routes, Access, Verb};
use crate::admin::{router, Admin};
use crate::admin_tls::AdminPeer;
use crate::tokens::Role;

fn access_name(a: Access) -> &'static str {
    match a {
        Access::Public => "public",
        Access::Metrics => "metrics",
        Access::Read => "read",
        Access::Admin => "admin",
    }
}

/// The rows of the endpoint table in README "Administration": (method, path, access) for each
/// `METHOD[|METHOD] PATH[?query]` code span of a row's first cell.
fn readme_endpoints(readme: &str) -> Vec<(String, String, String)> {
    let section = readme.split("\n## Administration\n").nth(1).expect("README has ## Administration");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        // A `|` inside a code span is written `\|` (GitHub tables).
        let line = line.replace("\\|", "\u{1}");
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (first, role) = (cells[1], cells[2]);
        let access = if role.starts_with("public (or `read`") && role.contains("metrics_public") {
            "metrics"
        } else {
            role.split_whitespace().next().unwrap_or("")
        };
        for span in first.split('`').skip(1).step_by(2) {
            let Some((methods, rest)) = span.split_once(' ') else { continue };
            if methods.is_empty() || !methods.chars().all(|c| c.is_ascii_uppercase() || c == '\u{1}') {
                continue; // a request body, not an endpoint
            }
            let path = rest.split('?').next().unwrap_or(rest);
            for m in methods.split('\u{1}') {
                rows.push((m.to_owned(), path.to_owned(), access.to_owned()));
            }
        }
    }
    rows
}

fn readme() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn the_readme_table_names_exactly_the_routes() {
    let table = readme_endpoints(&readme());
    let code: Vec<(String, String, String)> = routes()
        .iter()
        .map(|r| (r.verb.as_str().to_owned(), r.path.to_owned(), access_name(r.access).to_owned()))
        .collect();
    let table_set: BTreeSet<_> = table.iter().cloned().collect();
    let code_set: BTreeSet<_> = code.iter().cloned().collect();
    assert_eq!(table_set.len(), table.len(), "a README row is listed twice: {table:?}");
    assert_eq!(code_set.len(), code.len(), "a route is listed twice: {code:?}");
    let undocumented: Vec<_> = code_set.difference(&table_set).collect();
    let not_routed: Vec<_> = table_set.difference(&code_set).collect();
    assert!(
        undocumented.is_empty() && not_routed.is_empty(),
        "README \"Administration\" and admin/routes.rs differ:\n  routed, not in the README (or with another role): \
         {undocumented:?}\n  in the README, not routed: {not_routed:?}"
    );
}

#[test]
fn the_readme_parser_reads_the_shorthands() {
    let text = "x\n## Administration\n\n| endpoint | role | what |\n|---|---|---|\n\
        | `GET /a`, `GET /b/{id}?x=\\|y` | public | z |\n\
        | `POST\\|DELETE /c` `{\"entry\"}` | admin | z |\n\
        | `GET /metrics` | public (or `read` with `metrics_public = false`) | z |\n\n## Next\n| `GET /no` | read | |\n";
    let rows = readme_endpoints(text);
    let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        rows,
        vec![
            s("GET", "/a", "public"),
            s("GET", "/b/{id}", "public"),
            s("POST", "/c", "admin"),
            s("DELETE", "/c", "admin"),
            s("GET", "/metrics", "metrics"),
        ]
    );
}

/// A scratch directory with a config (one c2s listener, a self-signed certificate, an admin
/// token file with one `read` and one `admin` token); returns the config path and both tokens.
fn scratch_config(name: &str, metrics_public: bool) -> (PathBuf, String, String) {
    let dir = std::env::temp_dir().join(format!("sw-admin-routes-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["example.test".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    std::fs::write(dir.join("gw.crt"), cert.pem()).expect("cert file");
    std::fs::write(dir.join("gw.key"), key.serialize_pem()).expect("key file");
    let (read, read_line) = crate::tokens::generate("grafana", Role::Read).expect("token");
    let (admin, admin_line) = crate::tokens::generate("alice", Role::Admin).expect("token");
    std::fs::write(dir.join("admin-tokens"), format!("{read_line}{admin_line}")).expect("tokens");
    std::fs::write(dir.join("spam.txt"), "spam.example\n").expect("list");
    let config = format!(
        "state_dir = \"{state}\"\n\
         [[tls.certificate]]\ndomains = [\"example.test\"]\ncert = \"gw.crt\"\nkey = \"gw.key\"\n\
         [[listener]]\nname = \"c2s\"\nkind = \"c2s\"\nbind = \"127.0.0.1:0\"\nbackend = \"127.0.0.1:9\"\n\
         [admin]\nbind = \"127.0.0.1:0\"\ntokens = \"admin-tokens\"\nmetrics_public = {metrics_public}\n\
         [list.spam]\nfile = \"spam.txt\"\n",
        state = dir.join("state").display(),
    );
    let path = dir.join("stanzawall.toml");
    std::fs::write(&path, config).expect("config");
    (path, read, admin)
}

/// The admin application over a loaded generation, as `server::run` builds it (no listener:
/// requests go straight into the router).
fn app(config: &Path) -> axum::Router {
    let generation = Arc::new(crate::state::Generation::load(config).expect("config loads"));
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let guard = Arc::new(std::sync::Mutex::new(stanzawall_core::guard::ConnectionGuard::new(
        generation.config.network.guard.clone(),
    )));
    let shared = crate::state::Shared {
        guard,
        rates: Arc::new(stanzawall_core::policy::RateTable::new()),
        metrics: metrics.clone(),
        audit: crate::audit::Audit::start(metrics, None),
        sessions: Arc::new(crate::sessions::Sessions::default()),
        store: None,
        quarantine: None,
    };
    let (_gen_tx, gen_rx) = tokio::sync::watch::channel(generation);
    // Nobody answers reloads here: `POST /api/v1/reload` gets its "shutting down" error.
    let (reload_tx, _) = tokio::sync::mpsc::channel(1);
    let admin = Arc::new(Admin::new(gen_rx, shared, Arc::new(registry), reload_tx));
    // As once the listeners serve (`/readyz` is 200).
    admin.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    router(admin)
}

/// Send one request from `client` (each caller its own address: the failure limiter locks an
/// address out after 10 refusals, and this walk makes more than that on purpose).
async fn status(app: &axum::Router, verb: Verb, path: &str, token: Option<&str>, client: u16) -> StatusCode {
    let path = path.replace("{id}", "1").replace("{address}", "192.0.2.1").replace("{name}", "spam");
    let mut req = Request::builder().method(verb.as_str()).uri(&path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut req = req.body(Body::empty()).expect("request");
    let [hi, lo] = client.to_be_bytes();
    let addr = SocketAddr::from(([198, 51, hi, lo], 40000));
    req.extensions_mut().insert(ConnectInfo(AdminPeer { addr, cert: None }));
    // Only the status line is read: the audit stream's body never ends.
    app.clone().oneshot(req).await.expect("infallible").status()
}

#[tokio::test]
async fn every_route_refuses_without_a_token_unless_documented_public() {
    let (config, read, admin) = scratch_config("private-metrics", false);
    let app = app(&config);
    let mut client = 0u16;
    let mut next = || {
        client += 1;
        client
    };
    let table = routes();
    assert!(table.len() >= 20, "the table lost routes: {}", table.len());
    for r in &table {
        let what = format!("{} {} ({:?})", r.verb.as_str(), r.path, r.access);
        let anonymous = status(&app, r.verb, r.path, None, next()).await;
        let bad = status(&app, r.verb, r.path, Some("swt_not-a-token"), next()).await;
        let reader = status(&app, r.verb, r.path, Some(&read), next()).await;
        let operator = status(&app, r.verb, r.path, Some(&admin), next()).await;
        match r.access {
            Access::Public => {
                assert!(anonymous.is_success(), "{what}: {anonymous} without a token");
            }
            // metrics_public = false here: /metrics is a read endpoint.
            Access::Metrics | Access::Read => {
                assert_eq!(anonymous, StatusCode::UNAUTHORIZED, "{what} without a token");
                assert_eq!(bad, StatusCode::UNAUTHORIZED, "{what} with an unknown token");
                assert!(![401, 403].contains(&reader.as_u16()), "{what}: {reader} with a read token");
                assert!(![401, 403].contains(&operator.as_u16()), "{what}: {operator} with an admin token");
            }
            Access::Admin => {
                assert_eq!(anonymous, StatusCode::UNAUTHORIZED, "{what} without a token");
                assert_eq!(bad, StatusCode::UNAUTHORIZED, "{what} with an unknown token");
                assert_eq!(reader, StatusCode::FORBIDDEN, "{what} with a read token");
                assert!(![401, 403].contains(&operator.as_u16()), "{what}: {operator} with an admin token");
            }
        }
    }
    // Off the table: 404 for an unknown path, 405 for another method on a known one; neither
    // reaches a handler.
    assert_eq!(status(&app, Verb::Get, "/api/v1/nothing", None, next()).await, StatusCode::NOT_FOUND);
    assert_eq!(status(&app, Verb::Delete, "/api/v1/rules", None, next()).await, StatusCode::METHOD_NOT_ALLOWED);
    let _ = std::fs::remove_dir_all(config.parent().expect("dir"));
}

#[tokio::test]
async fn metrics_are_public_by_default() {
    let (config, _, _) = scratch_config("public-metrics", true);
    let app = app(&config);
    assert_eq!(status(&app, Verb::Get, "/metrics", None, 1).await, StatusCode::OK);
    assert_eq!(status(&app, Verb::Get, "/api/v1/stats", None, 2).await, StatusCode::UNAUTHORIZED);
    let _ = std::fs::remove_dir_all(config.parent().expect("dir"));
}
