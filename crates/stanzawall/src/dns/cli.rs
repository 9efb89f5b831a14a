//! `stanzawall resolve`: the s2s resolver from the command line, for operators and e2e tests.
//!
//! Owns parsing `--route` values and printing a [`Resolution`](super::Resolution) as JSON. Runs
//! its own small runtime; never touches the daemon's config.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{DnsSettings, S2sResolver, StaticRoute};

/// Parses `DOMAIN=HOST:PORT[,direct]` (`,starttls` is accepted and is the default).
pub fn parse_route(s: &str) -> Result<StaticRoute, String> {
    let (domain, rest) =
        s.split_once('=').ok_or_else(|| format!("--route {s:?}: expected DOMAIN=HOST:PORT[,direct]"))?;
    let (connect, flag) = match rest.split_once(',') {
        Some((c, f)) => (c, Some(f)),
        None => (rest, None),
    };
    let direct_tls = match flag {
        None | Some("starttls") => false,
        Some("direct") => true,
        Some(other) => return Err(format!("--route {s:?}: unknown flag {other:?} (direct or starttls)")),
    };
    let domain = super::normalize_domain(domain).map_err(|e| format!("--route {s:?}: {e}"))?;
    if super::split_host_port(connect).is_none() {
        return Err(format!("--route {s:?}: {connect:?} is not HOST:PORT"));
    }
    Ok(StaticRoute { domain, connect: connect.to_owned(), direct_tls })
}

/// Resolves `domain` and returns the pretty JSON, or the error message.
pub fn run(
    domain: &str,
    resolver: Option<SocketAddr>,
    trust_anchor: Option<PathBuf>,
    dnssec: bool,
    routes: &[String],
) -> Result<String, String> {
    let routes = routes.iter().map(|r| parse_route(r)).collect::<Result<Vec<_>, _>>()?;
    let settings = DnsSettings { resolver, dnssec, trust_anchor, routes };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    let resolution = runtime.block_on(async {
        let resolver = S2sResolver::new(&settings)?;
        resolver.resolve(domain).await
    });
    let resolution = resolution.map_err(|e| e.to_string())?;
    serde_json::to_string_pretty(&resolution).map_err(|e| e.to_string())
}
