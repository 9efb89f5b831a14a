//! `[store]`: where shared state is kept (README "Running several gateways (Redis)"). In process by
//! default; in Redis when several gateways behind a load balancer must share rate buckets and
//! bans. Parsed here into [`StoreConfig`]; the daemon's `store` module builds the store.
//!
//! What happens when Redis is slow or unreachable is chosen per kind of state ([`OnError`]), so
//! that an operator decides whether an outage of the shared store weakens a limit to one
//! gateway's view, refuses, or lets traffic through.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::locate::Locator;
use super::ConfigError;
use crate::limit::parse_duration;

/// `[store] backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// In process: nothing shared, nothing to install (the default).
    Memory,
    /// A Redis server (or a Sentinel-managed primary behind one address) at this URL,
    /// `redis://[:password@]host:port[/db]` or `rediss://` / `unix://`.
    Redis {
        /// The URL (never logged: it may carry a password).
        url: String,
    },
}

/// What a gateway does with one kind of state when the store does not answer within its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Use this gateway's own in-process state meanwhile: limits still hold, per gateway (a
    /// client spread over N gateways gets at most N times the limit); bans are still made
    /// and enforced here and pushed to the store when it is back.
    Local,
    /// Refuse: a rate or `fanout` condition counts as over its limit, a `wave` condition as
    /// met; new connections are refused (the bans of the other gateways cannot be known).
    Closed,
    /// Let through: a rate or `fanout` condition counts as under its limit, a `wave` condition
    /// as not met (not offered for bans).
    Open,
}

impl OnError {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Local => "local",
            OnError::Closed => "closed",
            OnError::Open => "open",
        }
    }
}

/// `[store]` as the daemon uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Where the state lives.
    pub backend: StoreBackend,
    /// Prefix of every key and channel name (several deployments may share one Redis).
    pub prefix: String,
    /// Longest a stanza waits for the store (one rate decision): past it the decision falls
    /// back as `rates_on_error` says, and the store counts as down until it answers a ping.
    pub timeout: Duration,
    /// Longest a connection attempt to the store may take (off the stanza path).
    pub connect_timeout: Duration,
    /// Rate decisions while the store is unreachable.
    pub rates_on_error: OnError,
    /// Admission (bans) while the store is unreachable.
    pub bans_on_error: OnError,
    /// `fanout` conditions while the store is unreachable (`closed`: every one holds).
    pub fanout_on_error: OnError,
    /// `wave` conditions while the store is unreachable (`closed`: every text long enough to be
    /// fingerprinted counts as part of a wave).
    pub waves_on_error: OnError,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Memory,
            prefix: "stanzawall:".into(),
            timeout: Duration::from_millis(5),
            connect_timeout: Duration::from_secs(1),
            rates_on_error: OnError::Local,
            bans_on_error: OnError::Local,
            fanout_on_error: OnError::Local,
            waves_on_error: OnError::Local,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    backend: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    rates_on_error: Option<Spanned<String>>,
    bans_on_error: Option<Spanned<String>>,
    fanout_on_error: Option<Spanned<String>>,
    waves_on_error: Option<Spanned<String>>,
}

/// Validate `[store]`.
pub(super) fn store(raw: Option<&RawStore>, loc: &Locator<'_>) -> Result<StoreConfig, ConfigError> {
    let d = StoreConfig::default();
    let Some(r) = raw else { return Ok(d) };
    let url = match &r.url {
        None => None,
        Some(u) => {
            let s = u.get_ref().trim();
            let scheme_ok = ["redis://", "rediss://", "unix://", "redis+unix://"].iter().any(|p| s.starts_with(p));
            if !scheme_ok || s.len() <= "redis://".len() {
                return loc.err(u.span(), "store.url", "expected redis://HOST:PORT[/DB] (or rediss://, unix://PATH)");
            }
            Some(s.to_owned())
        }
    };
    let backend = match r.backend.as_ref().map(|b| (b.get_ref().as_str(), b.span())) {
        // `url` alone means Redis: nobody writes a URL to keep state in memory.
        None => url.clone().map_or(StoreBackend::Memory, |url| StoreBackend::Redis { url }),
        Some(("memory", _)) => StoreBackend::Memory,
        Some(("redis", span)) => match url.clone() {
            Some(url) => StoreBackend::Redis { url },
            None => {
                return loc.err(span, "store.url", "backend = \"redis\" needs `url`, e.g. \"redis://127.0.0.1:6379\"")
            }
        },
        Some((other, span)) => {
            return loc.err(
                span,
                "store.backend",
                format!("unknown backend '{other}' (expected \"memory\" or \"redis\")"),
            )
        }
    };
    let prefix = match &r.prefix {
        None => d.prefix,
        Some(p) => {
            let s = p.get_ref();
            if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_graphic()) {
                return loc.err(p.span(), "store.prefix", "1 to 64 printable ASCII characters without spaces");
            }
            s.clone()
        }
    };
    let duration = |v: &Option<Spanned<String>>, key: &str, default: Duration, max: Duration| match v {
        None => Ok(default),
        Some(v) => match parse_duration(v.get_ref()) {
            Some(t) if !t.is_zero() && t <= max => Ok(t),
            _ => loc.err(v.span(), key, format!("expected a duration such as \"5ms\", above zero and at most {max:?}")),
        },
    };
    let timeout = duration(&r.timeout, "store.timeout", d.timeout, Duration::from_secs(5))?;
    let connect_timeout =
        duration(&r.connect_timeout, "store.connect_timeout", d.connect_timeout, Duration::from_secs(60))?;
    let on_error = |v: &Option<Spanned<String>>, key: &str, default: OnError, open_ok: bool| match v {
        None => Ok(default),
        Some(v) => match v.get_ref().as_str() {
            "local" => Ok(OnError::Local),
            "closed" => Ok(OnError::Closed),
            "open" if open_ok => Ok(OnError::Open),
            other => {
                let expected = if open_ok { "\"local\", \"closed\" or \"open\"" } else { "\"local\" or \"closed\"" };
                loc.err(v.span(), key, format!("unknown value '{other}' (expected {expected})"))
            }
        },
    };
    Ok(StoreConfig {
        backend,
        prefix,
        timeout,
        connect_timeout,
        rates_on_error: on_error(&r.rates_on_error, "store.rates_on_error", d.rates_on_error, true)?,
        // A ban store that lets everyone in when it is down would be a way around every ban.
        bans_on_error: on_error(&r.bans_on_error, "store.bans_on_error", d.bans_on_error, false)?,
        fanout_on_error: on_error(&r.fanout_on_error, "store.fanout_on_error", d.fanout_on_error, true)?,
        waves_on_error: on_error(&r.waves_on_error, "store.waves_on_error", d.waves_on_error, true)?,
    })
}

/// `[drain]`: how this gateway leaves a pool of gateways (SIGUSR2 or `POST /api/v1/drain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainConfig {
    /// How long sessions may go on after the drain started before the gateway ends them.
    pub grace: Duration,
    /// `host:port` of a peer gateway (or of the balancer) named in `<see-other-host/>` (RFC 6120
    /// §4.9.3.19); `None`: sessions get `<system-shutdown/>`.
    pub peer: Option<String>,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig { grace: Duration::from_secs(30), peer: None }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDrain {
    grace: Option<Spanned<String>>,
    peer: Option<Spanned<String>>,
}

/// Validate `[drain]`.
pub(super) fn drain(raw: Option<&RawDrain>, loc: &Locator<'_>) -> Result<DrainConfig, ConfigError> {
    let d = DrainConfig::default();
    let Some(r) = raw else { return Ok(d) };
    let grace = match &r.grace {
        None => d.grace,
        // Zero is allowed: end every session at once (it still gets its stream error).
        Some(v) => match parse_duration(v.get_ref()) {
            Some(t) if t <= Duration::from_secs(86_400) => t,
            _ => return loc.err(v.span(), "drain.grace", "expected a duration such as \"30s\", at most 1 day"),
        },
    };
    let peer = match &r.peer {
        None => None,
        Some(v) => {
            let s = v.get_ref().trim();
            if !valid_host_port(s) {
                return loc.err(
                    v.span(),
                    "drain.peer",
                    "expected HOST:PORT (a DNS name, an IPv4 address or [IPv6]) with a port from 1 to 65535",
                );
            }
            Some(s.to_owned())
        }
    };
    Ok(DrainConfig { grace, peer })
}

/// `host:port` as `<see-other-host/>` carries it (RFC 6120 §4.9.3.19: a domain name, an IPv4
/// address or a bracketed IPv6 address, then an optional port; the gateway always writes one).
fn valid_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else { return false };
    if !port.parse::<u16>().is_ok_and(|p| p > 0) || host.is_empty() || host.len() > 253 {
        return false;
    }
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        }),
    }
}

/// Validate a listener's `accept_proxy` and `trusted_proxies` (they belong with `[store]`: both
/// exist for gateways behind a load balancer).
pub(super) fn accept_proxy(
    accept: &Option<Spanned<String>>,
    trusted: &Option<Spanned<Vec<Spanned<String>>>>,
    kind: super::ListenerKind,
    key: &dyn Fn(&str) -> String,
    loc: &Locator<'_>,
) -> Result<Option<Vec<crate::net::Cidr>>, ConfigError> {
    let on = match accept.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
        None | Some(("off", _)) => false,
        Some(("v2", span)) => {
            if kind.is_s2s() {
                return loc.err(span, &key("accept_proxy"), "not supported on s2s listeners");
            }
            true
        }
        Some((other, span)) => {
            return loc.err(span, &key("accept_proxy"), format!("unknown value '{other}' (expected \"v2\" or \"off\")"))
        }
    };
    match (on, trusted) {
        (false, None) => Ok(None),
        (false, Some(t)) => loc.err(t.span(), &key("trusted_proxies"), "only meaningful with accept_proxy = \"v2\""),
        (true, None) => loc.err(
            accept.as_ref().map_or(0..0, |s| s.span()),
            &key("trusted_proxies"),
            "accept_proxy = \"v2\" needs trusted_proxies (the load balancers' addresses): a header from anyone else would let a client choose its own address",
        ),
        (true, Some(t)) if t.get_ref().is_empty() => {
            loc.err(t.span(), &key("trusted_proxies"), "at least one address or CIDR is required")
        }
        (true, Some(t)) => {
            let mut out = Vec::new();
            for c in t.get_ref() {
                let s = c.get_ref().trim();
                let cidr = match s.parse::<std::net::IpAddr>() {
                    Ok(ip) => crate::net::Cidr::new(ip, if ip.is_ipv4() { 32 } else { 128 }),
                    Err(_) => crate::net::Cidr::parse(s),
                };
                match cidr {
                    Some(cidr) => out.push(cidr),
                    None => return loc.err(c.span(), &key("trusted_proxies"), format!("'{s}' is not an address or CIDR")),
                }
            }
            Ok(Some(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::{Config, OnError, StoreBackend};

    const LISTENER: &str = r#"
[[tls.certificate]]
domains = ["example.test"]
cert = "c.pem"
key = "k.pem"

[[listener]]
name    = "c2s"
kind    = "c2s"
bind    = "127.0.0.1:5222"
backend = "127.0.0.1:15222"
"#;

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{LISTENER}{extra}"), Path::new("/etc/stanzawall/gw.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn memory_by_default_redis_when_asked() {
        let c = parse("").unwrap();
        assert_eq!(c.store.backend, StoreBackend::Memory);
        assert_eq!(c.store.rates_on_error, OnError::Local);
        let c = parse(
            "[store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:26379/0\"\ntimeout = \"20ms\"\nrates_on_error = \"closed\"\nbans_on_error = \"closed\"\nprefix = \"gw1:\"\n",
        )
        .unwrap();
        assert_eq!(c.store.backend, StoreBackend::Redis { url: "redis://127.0.0.1:26379/0".into() });
        assert_eq!(c.store.timeout, Duration::from_millis(20));
        assert_eq!((c.store.rates_on_error, c.store.bans_on_error), (OnError::Closed, OnError::Closed));
        assert_eq!(c.store.prefix, "gw1:");
        let c = parse("[store]\nurl = \"redis://h:1\"\n").unwrap();
        assert!(matches!(c.store.backend, StoreBackend::Redis { .. }), "a url alone means redis");
    }

    #[test]
    fn store_mistakes_name_line_and_key() {
        let e = parse("[store]\nbackend = \"redis\"\n").unwrap_err();
        let line = LISTENER.lines().count() + 2;
        assert!(e.contains(&format!("gw.toml:{line}: store.url")), "{e}");
        let e = parse("[store]\nbackend = \"memcached\"\n").unwrap_err();
        assert!(e.contains("store.backend") && e.contains("memcached"), "{e}");
        let e = parse("[store]\nurl = \"http://x\"\n").unwrap_err();
        assert!(e.contains("store.url"), "{e}");
        let e = parse("[store]\nurl = \"redis://h:1\"\ntimeout = \"0ms\"\n").unwrap_err();
        assert!(e.contains("store.timeout"), "{e}");
        let e = parse("[store]\nurl = \"redis://h:1\"\nbans_on_error = \"open\"\n").unwrap_err();
        assert!(e.contains("store.bans_on_error") && e.contains("\"local\" or \"closed\""), "{e}");
        let e = parse("[store]\nurl = \"redis://h:1\"\nrates_on_error = \"maybe\"\n").unwrap_err();
        assert!(e.contains("store.rates_on_error"), "{e}");
        assert!(parse("[store]\nurl = \"redis://h:1\"\nrates_on_error = \"open\"\n").is_ok());
        let e = parse("[store]\nredis = \"redis://h:1\"\n").unwrap_err();
        assert!(e.contains("redis"), "unknown keys are errors: {e}");
    }

    #[test]
    fn accept_proxy_needs_trusted_proxies() {
        let proxied = |extra: &str| {
            Config::parse(
                &format!("[[tls.certificate]]\ndomains = [\"e.test\"]\ncert = \"c\"\nkey = \"k\"\n[[listener]]\nname = \"c2s\"\nkind = \"c2s\"\nbind = \"127.0.0.1:5222\"\nbackend = \"127.0.0.1:15222\"\n{extra}"),
                Path::new("/etc/stanzawall/gw.toml"),
            )
            .map_err(|e| e.to_string())
        };
        let c = proxied("accept_proxy = \"v2\"\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\", \"::1\"]\n").unwrap();
        let t = c.listeners[0].trusted_proxies.as_ref().unwrap();
        assert_eq!(t.len(), 3);
        assert!(t[1].contains("10.1.2.3".parse().unwrap()) && !t[0].contains("127.0.0.2".parse().unwrap()));
        assert_eq!(parse("").unwrap().listeners[0].trusted_proxies, None);
        let e = proxied("accept_proxy = \"v2\"\n").unwrap_err();
        assert!(e.contains("listener[0].trusted_proxies"), "{e}");
        let e = proxied("trusted_proxies = [\"127.0.0.1\"]\n").unwrap_err();
        assert!(e.contains("only meaningful"), "{e}");
        let e = proxied("accept_proxy = \"v1\"\ntrusted_proxies = [\"127.0.0.1\"]\n").unwrap_err();
        assert!(e.contains("listener[0].accept_proxy"), "{e}");
        let e = proxied("accept_proxy = \"v2\"\ntrusted_proxies = [\"nowhere\"]\n").unwrap_err();
        assert!(e.contains("'nowhere'"), "{e}");
    }
}
