//! `[s2s]`: federation settings (README "Federation"). Parsed here into [`S2sConfig`] (what the
//! daemon needs: domains served, trust roots, DNS, dialback secret, static routes) and
//! [`S2sDomainsConfig`] (the domain policy, compiled with the rest of the policy so that a
//! reload — a list file edited — closes live sessions of a domain that is now denied).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::locate::Locator;
use super::ConfigError;
use crate::limit::Rate;
use crate::origin::Located;
use crate::policy::spec::{AuthLevel, PolicyConfig, S2sDomainsConfig};

/// One `[[s2s.route]]`: where to connect for a domain instead of asking DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S2sRoute {
    /// The remote domain (lowercase).
    pub domain: String,
    /// `host:port`.
    pub connect: String,
    /// Direct TLS (XEP-0368) instead of STARTTLS.
    pub direct_tls: bool,
}

/// `[s2s]` as the daemon uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S2sConfig {
    /// The domains our server serves over federation (lowercase): the only `to` of inbound
    /// streams and the only `from` of outbound ones.
    pub local_domains: Vec<String>,
    /// Refuse remote streams without TLS (default true).
    pub require_tls: bool,
    /// PKIX roots for peers' certificates; `None` = the webpki roots.
    pub trust_roots: Option<PathBuf>,
    /// Validate DNSSEC (default true).
    pub dnssec: bool,
    /// DNSSEC trust anchor file; `None` = the IANA root anchor compiled in.
    pub trust_anchor: Option<PathBuf>,
    /// The resolver to ask; `None` = the system's.
    pub resolver: Option<SocketAddr>,
    /// Where the dialback secret (XEP-0185) is kept, created on first start.
    pub dialback_secret_file: PathBuf,
    /// Static routes.
    pub routes: Vec<S2sRoute>,
    /// `intercept`: our servers' addresses whose outbound s2s (TCP 5269, any destination) the
    /// generated nftables ruleset redirects to the `s2s-out` listener (transparent interception;
    /// the gateway is their router).
    pub intercept: Vec<crate::net::Cidr>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawRequire {
    One(String),
    PerDomain(BTreeMap<String, String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawS2s {
    domains: Option<Spanned<Vec<Spanned<String>>>>,
    allow: Option<Vec<Spanned<String>>>,
    deny: Option<Vec<Spanned<String>>>,
    require_tls: Option<bool>,
    require_authenticated: Option<Spanned<RawRequire>>,
    trust_roots: Option<Spanned<String>>,
    dnssec: Option<Spanned<String>>,
    trust_anchor: Option<Spanned<String>>,
    resolver: Option<Spanned<String>>,
    dialback_secret_file: Option<Spanned<String>>,
    stanza_rate_per_domain: Option<Spanned<String>>,
    connection_rate_per_domain: Option<Spanned<String>>,
    #[serde(default)]
    route: Vec<RawRoute>,
    intercept: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    domain: Spanned<String>,
    connect: Spanned<String>,
    tls: Option<Spanned<String>>,
}

/// Validate `[s2s]`: `Some` when the section or an s2s listener is present (`needed`).
pub(super) fn s2s(
    raw: Option<&RawS2s>,
    needed: bool,
    has_out_listener: bool,
    state_dir: &std::path::Path,
    loc: &Locator<'_>,
) -> Result<Option<S2sConfig>, ConfigError> {
    let Some(r) = raw else {
        if needed {
            return loc.err(0..0, "s2s", "s2s listeners need an [s2s] section with `domains` (the domains served)");
        }
        return Ok(None);
    };
    let mut local_domains = Vec::new();
    match &r.domains {
        None => return loc.err(0..0, "s2s.domains", "the domains our server serves over federation are required"),
        Some(list) if list.get_ref().is_empty() => {
            return loc.err(list.span(), "s2s.domains", "at least one domain is required")
        }
        Some(list) => {
            for d in list.get_ref() {
                let lower = d.get_ref().trim().to_ascii_lowercase();
                if !crate::jid::is_domain(&lower) || lower.contains('*') {
                    return loc.err(d.span(), "s2s.domains", format!("'{lower}' is not a domain"));
                }
                local_domains.push(lower);
            }
        }
    }
    let dnssec = match r.dnssec.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
        None | Some(("validate", _)) => true,
        Some(("off", _)) => false,
        Some((other, span)) => {
            return loc.err(span, "s2s.dnssec", format!("unknown value '{other}' (expected \"validate\" or \"off\")"))
        }
    };
    let resolver = match &r.resolver {
        None => None,
        Some(s) => match s.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => match s.get_ref().parse::<std::net::IpAddr>() {
                Ok(ip) => Some(SocketAddr::new(ip, 53)),
                Err(_) => return loc.err(s.span(), "s2s.resolver", "expected IP or IP:PORT, e.g. \"127.0.0.1:53\""),
            },
        },
    };
    let mut routes = Vec::new();
    for (i, route) in r.route.iter().enumerate() {
        let key = |k: &str| format!("s2s.route[{i}].{k}");
        let domain = route.domain.get_ref().trim().to_ascii_lowercase();
        if !crate::jid::is_domain(&domain) {
            return loc.err(route.domain.span(), &key("domain"), format!("'{domain}' is not a domain"));
        }
        if !super::raw::valid_host_port(route.connect.get_ref()) {
            return loc.err(route.connect.span(), &key("connect"), "expected HOST:PORT, e.g. \"10.1.2.3:5269\"");
        }
        let direct_tls = match route.tls.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
            None | Some(("starttls", _)) => false,
            Some(("direct", _)) => true,
            Some((other, span)) => {
                return loc.err(
                    span,
                    &key("tls"),
                    format!("unknown value '{other}' (expected \"starttls\" or \"direct\")"),
                )
            }
        };
        routes.push(S2sRoute { domain, connect: route.connect.get_ref().clone(), direct_tls });
    }
    let mut intercept = Vec::new();
    for e in r.intercept.iter().flatten() {
        let Some(cidr) = crate::net::Cidr::parse(e.get_ref()) else {
            return loc.err(e.span(), "s2s.intercept", format!("'{}' is not an address or CIDR", e.get_ref()));
        };
        if !has_out_listener {
            return loc.err(e.span(), "s2s.intercept", "needs an s2s-out listener to redirect to");
        }
        intercept.push(cidr);
    }
    let path = |v: &Option<Spanned<String>>| v.as_ref().map(|p| loc.path(p.get_ref()));
    Ok(Some(S2sConfig {
        local_domains,
        require_tls: r.require_tls.unwrap_or(true),
        trust_roots: path(&r.trust_roots),
        dnssec,
        trust_anchor: path(&r.trust_anchor),
        resolver,
        dialback_secret_file: path(&r.dialback_secret_file).unwrap_or_else(|| state_dir.join("dialback.key")),
        routes,
        intercept,
    }))
}

/// The domain policy of `[s2s]` into `policy.s2s`, with `list:NAME` entries expanded from the
/// policy's lists (so that editing a list file re-evaluates live sessions on reload).
pub(super) fn s2s_domains(
    raw: Option<&RawS2s>,
    policy: &mut PolicyConfig,
    loc: &Locator<'_>,
) -> Result<(), ConfigError> {
    let Some(r) = raw else { return Ok(()) };
    let expand = |v: &Option<Vec<Spanned<String>>>, key: &str| -> Result<Vec<Located<String>>, ConfigError> {
        let mut out = Vec::new();
        for e in v.iter().flatten() {
            match e.get_ref().strip_prefix("list:") {
                Some(name) => {
                    let Some(list) = policy.lists.get(name) else {
                        return loc.err(e.span(), key, format!("no [list.{name}]"));
                    };
                    out.extend(list.entries.iter().cloned());
                }
                None => out.push(Located { value: e.get_ref().clone(), origin: loc.origin(e.span(), key) }),
            }
        }
        for entry in &out {
            if let Err((_, why)) = crate::policy::jidset::DomainSet::from_entries([&entry.value]) {
                return Err(entry.origin.error(why));
            }
        }
        Ok(out)
    };
    let allow = expand(&r.allow, "s2s.allow")?;
    let deny = expand(&r.deny, "s2s.deny")?;
    let level = |s: &str, span: std::ops::Range<usize>, key: &str| {
        AuthLevel::parse(s).map_or_else(
            || loc.err(span, key, format!("unknown value '{s}' (expected \"dialback\", \"pkix\" or \"dane\")")),
            Ok,
        )
    };
    let mut require = Vec::new();
    let mut default_require = None;
    if let Some(req) = &r.require_authenticated {
        let key = "s2s.require_authenticated";
        match req.get_ref() {
            RawRequire::One(s) => default_require = Some(level(s, req.span(), key)?),
            RawRequire::PerDomain(map) => {
                for (pattern, l) in map {
                    let l = level(l, req.span(), key)?;
                    if pattern == "*" {
                        default_require = Some(l);
                        continue;
                    }
                    if let Err((_, why)) = crate::policy::jidset::DomainSet::from_entries([pattern]) {
                        return loc.err(req.span(), key, why);
                    }
                    require.push((Located { value: pattern.clone(), origin: loc.origin(req.span(), key) }, l));
                }
            }
        }
    }
    let rate = |v: &Option<Spanned<String>>, key: &str| match v {
        None => Ok(None),
        Some(s) => Rate::parse(s.get_ref(), 10)
            .map_or_else(|| loc.err(s.span(), key, "expected N/second, N/minute or N/hour"), |r| Ok(Some(r))),
    };
    policy.s2s = S2sDomainsConfig {
        allow,
        deny,
        require,
        default_require,
        stanza_rate: rate(&r.stanza_rate_per_domain, "s2s.stanza_rate_per_domain")?,
        connection_rate: rate(&r.connection_rate_per_domain, "s2s.connection_rate_per_domain")?,
    };
    Ok(())
}
