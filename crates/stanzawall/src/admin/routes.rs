//! Every endpoint of the admin listener, in one table: method, path, who may call it, handler.
//!
//! The router is built from this table and nothing else, so the table *is* the list of routes
//! the listener answers; the README's endpoint table is checked against it (`tests`), and so is
//! each entry's declared [`Access`] against what the handler really does without a token and
//! with a `read` token. A new endpoint is one line here plus its README row. Who may call is
//! enforced by the handler's extractor ([`super::Reader`], [`super::Operator`]); the table
//! declares it, the tests hold the two together.

use axum::handler::Handler;
use axum::http::StatusCode;
use axum::routing::{on, MethodFilter, MethodRouter};
use serde_json::json;

use super::{api, dashboard, metrics, quarantine, readyz, reply, St};

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health, readiness and the dashboard's static files (which hold no data).
    Public,
    /// Anyone while `[admin] metrics_public` (the default), else a `read` token.
    Metrics,
    /// A `read` or `admin` token (or a client certificate mapped to one of these roles).
    Read,
    /// An `admin` token: the endpoint acts.
    Admin,
}

/// An HTTP method the admin listener routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// GET.
    Get,
    /// POST.
    Post,
    /// DELETE.
    Delete,
}

impl Verb {
    /// The method's name, as in a request line.
    // Read by the tests that hold the README and the handlers to this table.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Delete => "DELETE",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Post => MethodFilter::POST,
            Verb::Delete => MethodFilter::DELETE,
        }
    }
}

/// One endpoint. `verb` and `access` are what the tests hold the README's table and the
/// handlers' extractors to; the router needs only `path` and `handler`.
#[derive(Debug)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct Route {
    /// The method.
    pub verb: Verb,
    /// The path, with `{name}` for a path parameter (axum's syntax).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    pub(super) handler: MethodRouter<St>,
}

fn route<H, T>(verb: Verb, path: &'static str, access: Access, handler: H) -> Route
where
    H: Handler<T, St>,
    T: 'static,
{
    Route { verb, path, access, handler: on(verb.filter(), handler) }
}

/// The admin listener's endpoints (README "Administration" lists the same, row by row).
pub(super) fn routes() -> Vec<Route> {
    use Access::{Admin, Metrics, Public, Read};
    use Verb::{Delete, Get, Post};
    vec![
        route(Get, "/", Public, dashboard::index),
        route(Get, "/dashboard.js", Public, dashboard::script),
        route(Get, "/dashboard.css", Public, dashboard::style),
        route(Get, "/healthz", Public, || async { reply(StatusCode::OK, json!({ "status": "ok" })) }),
        route(Get, "/readyz", Public, readyz),
        route(Get, "/metrics", Metrics, metrics),
        route(Get, "/api/v1/whoami", Read, api::whoami),
        route(Get, "/api/v1/stats", Read, api::stats),
        route(Get, "/api/v1/sessions", Read, api::sessions),
        route(Delete, "/api/v1/sessions/{id}", Admin, api::kick),
        route(Get, "/api/v1/bans", Read, api::bans),
        route(Post, "/api/v1/bans", Admin, api::ban),
        route(Delete, "/api/v1/bans/{address}", Admin, api::unban),
        route(Get, "/api/v1/lists", Read, api::lists),
        route(Get, "/api/v1/lists/{name}", Read, api::list),
        route(Post, "/api/v1/lists/{name}/entries", Admin, api::add_entry),
        route(Delete, "/api/v1/lists/{name}/entries", Admin, api::remove_entry),
        route(Get, "/api/v1/rules", Read, api::rules),
        route(Post, "/api/v1/explain", Read, api::explain),
        route(Get, "/api/v1/audit", Read, api::audit),
        route(Get, "/api/v1/audit/stream", Read, api::audit_stream),
        route(Post, "/api/v1/reload", Admin, api::reload),
        route(Post, "/api/v1/drain", Admin, api::drain),
        route(Get, "/api/v1/quarantine", Read, quarantine::list),
        route(Get, "/api/v1/quarantine/{id}", Read, quarantine::show),
        route(Post, "/api/v1/quarantine/{id}/release", Admin, quarantine::release),
        route(Delete, "/api/v1/quarantine/{id}", Admin, quarantine::delete),
    ]
}

#[cfg(test)]
mod tests;
