//! The file as written: serde structs with spans, and their validation into [`Config`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{
    BackendConfig, BackendTls, CertificateConfig, Config, ConfigError, Limits, ListenerConfig, ListenerKind, Origin,
};
use std::time::Duration;

use std::collections::BTreeMap;

use super::policy::{RawAudit, RawChain, RawList, RawPolicy, RawRate, RawRule};
use super::{AdminConfig, Files, NetworkConfig, NftablesConfig};
use crate::ban::BanConfig;
use crate::guard::GuardConfig;
use crate::limit::{parse_bytes, parse_duration, Bandwidth, Rate};
use crate::net::Cidr;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<Spanned<String>>,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    listener: Vec<RawListener>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    nftables: RawNftables,
    include: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    list: BTreeMap<String, Spanned<RawList>>,
    #[serde(default)]
    rate: BTreeMap<String, Spanned<RawRate>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    chain: BTreeMap<String, Spanned<RawChain>>,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    admin: RawAdmin,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    bind: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNftables {
    sync: Option<bool>,
    table: Option<Spanned<String>>,
    nft: Option<Spanned<String>>,
    extra_tcp_ports: Option<Vec<Spanned<i64>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    allow: Option<Vec<Spanned<String>>>,
    deny: Option<Vec<Spanned<String>>>,
    max_connections: Option<Spanned<i64>>,
    max_connections_per_ip: Option<Spanned<i64>>,
    connection_rate_per_ip: Option<Spanned<String>>,
    connection_burst_per_ip: Option<Spanned<i64>>,
    ipv6_prefix: Option<Spanned<i64>>,
    handshake_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    bandwidth_per_connection: Option<Spanned<String>>,
    bandwidth_burst: Option<Spanned<String>>,
    #[serde(default)]
    ban: RawBan,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBan {
    auth_failures: Option<Spanned<i64>>,
    window: Option<Spanned<String>>,
    duration: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    certificate: Vec<RawCertificate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    domains: Spanned<Vec<Spanned<String>>>,
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Spanned<String>,
    kind: Spanned<String>,
    bind: Spanned<String>,
    backend: Spanned<String>,
    backend_tls: Option<Spanned<String>>,
    backend_ca: Option<Spanned<String>>,
    backend_server_name: Option<Spanned<String>>,
    proxy_protocol: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    stanza_bytes: Option<Spanned<i64>>,
    preauth_stanza_bytes: Option<Spanned<i64>>,
    backend_stanza_bytes: Option<Spanned<i64>>,
    depth: Option<Spanned<i64>>,
    attributes: Option<Spanned<i64>>,
}

/// Resolves spans to lines and keys for one file's text.
pub(super) struct Locator<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a Path,
}

impl Locator<'_> {
    /// A TOML syntax or schema error, with the key at its position.
    pub(super) fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().to_owned();
        self.origin(span.clone(), &key_at(self.text, span.start)).error(message)
    }

    pub(super) fn origin(&self, span: Range<usize>, key: &str) -> Origin {
        let start = span.start.min(self.text.len());
        let line = self.text.as_bytes()[..start].iter().filter(|&&b| b == b'\n').count() + 1;
        Origin { file: self.file.to_path_buf(), line, key: key.to_owned() }
    }

    pub(super) fn err<T>(&self, span: Range<usize>, key: &str, msg: impl Into<String>) -> Result<T, ConfigError> {
        Err(self.origin(span, key).error(msg))
    }

    pub(super) fn path(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file.parent().unwrap_or(Path::new("")).join(p)
        }
    }
}

pub(super) fn parse(text: &str, file: &Path, files: &dyn Files) -> Result<Config, ConfigError> {
    let loc = Locator { text, file };
    let raw: RawConfig = toml::from_str(text).map_err(|e| loc.toml_error(&e))?;
    validate(raw, &loc, files)
}

fn validate(raw: RawConfig, loc: &Locator<'_>, files: &dyn Files) -> Result<Config, ConfigError> {
    let mut certificates = Vec::new();
    for (i, c) in raw.tls.certificate.into_iter().enumerate() {
        let key = |k: &str| format!("tls.certificate[{i}].{k}");
        if c.domains.get_ref().is_empty() {
            return loc.err(c.domains.span(), &key("domains"), "at least one domain is required");
        }
        let mut domains = Vec::new();
        for d in c.domains.get_ref() {
            let lower = d.get_ref().to_ascii_lowercase();
            let name = lower.strip_prefix("*.").unwrap_or(&lower);
            if !crate::jid::is_domain(name) || name.contains('*') {
                return loc.err(d.span(), &key("domains"), format!("'{lower}' is not a domain or '*.domain'"));
            }
            domains.push(lower);
        }
        certificates.push(CertificateConfig {
            domains,
            cert: loc.path(c.cert.get_ref()),
            cert_origin: loc.origin(c.cert.span(), &key("cert")),
            key: loc.path(c.key.get_ref()),
            key_origin: loc.origin(c.key.span(), &key("key")),
        });
    }

    let mut listeners = Vec::new();
    let mut names = HashSet::new();
    for (i, l) in raw.listener.into_iter().enumerate() {
        let key = |k: &str| format!("listener[{i}].{k}");
        let name = l.name.get_ref().trim().to_owned();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return loc.err(l.name.span(), &key("name"), "use letters, digits, '-' and '_'");
        }
        if !names.insert(name.clone()) {
            return loc.err(l.name.span(), &key("name"), format!("duplicate listener name '{name}'"));
        }
        let kind = match l.kind.get_ref().as_str() {
            "c2s" => ListenerKind::C2s,
            "c2s-tls" => ListenerKind::C2sTls,
            other => {
                return loc.err(
                    l.kind.span(),
                    &key("kind"),
                    format!("unknown kind '{other}' (expected \"c2s\" or \"c2s-tls\")"),
                )
            }
        };
        let bind: SocketAddr = match l.bind.get_ref().parse() {
            Ok(a) => a,
            Err(_) => {
                return loc.err(l.bind.span(), &key("bind"), "expected IP:PORT, e.g. \"0.0.0.0:5222\" or \"[::]:5222\"")
            }
        };
        if let Some(other) = listeners.iter().find(|o: &&ListenerConfig| o.bind == bind) {
            return loc.err(
                l.bind.span(),
                &key("bind"),
                format!("{bind} is already used by listener '{}'", other.name),
            );
        }
        let address = l.backend.get_ref().clone();
        if !valid_host_port(&address) {
            return loc.err(l.backend.span(), &key("backend"), "expected HOST:PORT, e.g. \"127.0.0.1:15222\"");
        }
        let tls = match l.backend_tls.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
            None | Some(("off", _)) => BackendTls::Off,
            Some(("starttls", _)) => BackendTls::StartTls,
            Some(("tls", _)) => BackendTls::Direct,
            Some((other, span)) => {
                return loc.err(
                    span,
                    &key("backend_tls"),
                    format!("unknown value '{other}' (expected \"off\", \"starttls\" or \"tls\")"),
                )
            }
        };
        let proxy_protocol = match l.proxy_protocol.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
            None | Some(("off", _)) => false,
            Some(("v2", _)) => true,
            Some((other, span)) => {
                return loc.err(
                    span,
                    &key("proxy_protocol"),
                    format!("unknown value '{other}' (expected \"v2\" or \"off\")"),
                )
            }
        };
        for (opt, k) in [(&l.backend_ca, "backend_ca"), (&l.backend_server_name, "backend_server_name")] {
            if let (Some(v), BackendTls::Off) = (opt, tls) {
                return loc.err(v.span(), &key(k), "only meaningful with backend_tls = \"starttls\" or \"tls\"");
            }
        }
        let server_name = match &l.backend_server_name {
            Some(s) if !crate::jid::is_domain(s.get_ref()) => {
                return loc.err(s.span(), &key("backend_server_name"), "not a valid DNS name")
            }
            other => other.as_ref().map(|s| s.get_ref().clone()),
        };
        listeners.push(ListenerConfig {
            name,
            kind,
            bind,
            bind_origin: loc.origin(l.bind.span(), &key("bind")),
            backend: BackendConfig {
                address,
                tls,
                ca: l.backend_ca.as_ref().map(|p| loc.path(p.get_ref())),
                server_name,
                proxy_protocol,
                origin: loc.origin(l.backend.span(), &key("backend")),
            },
        });
    }
    if listeners.is_empty() {
        return loc.err(0..0, "listener", "at least one [[listener]] is required");
    }
    if certificates.is_empty() {
        return loc.err(
            0..0,
            "tls.certificate",
            "at least one [[tls.certificate]] is required (clients are served over TLS)",
        );
    }

    let d = Limits::default();
    let r = &raw.limits;
    let limits = Limits {
        stanza_bytes: limit(loc, &r.stanza_bytes, "limits.stanza_bytes", d.stanza_bytes, 1024..=MAX_BYTES)?,
        preauth_stanza_bytes: limit(
            loc,
            &r.preauth_stanza_bytes,
            "limits.preauth_stanza_bytes",
            d.preauth_stanza_bytes,
            1024..=MAX_BYTES,
        )?,
        backend_stanza_bytes: limit(
            loc,
            &r.backend_stanza_bytes,
            "limits.backend_stanza_bytes",
            d.backend_stanza_bytes,
            1024..=MAX_BYTES,
        )?,
        // Bounded above: trees are built and dropped recursively, and duplicate-attribute checks
        // are quadratic in the attribute count.
        depth: limit(loc, &r.depth, "limits.depth", d.depth, 4..=256)?,
        attributes: limit(loc, &r.attributes, "limits.attributes", d.attributes, 8..=256)?,
    };
    if let Some(v) = &r.preauth_stanza_bytes {
        if limits.preauth_stanza_bytes > limits.stanza_bytes {
            return loc.err(v.span(), "limits.preauth_stanza_bytes", "must not exceed limits.stanza_bytes");
        }
    }
    let mut network = network(&raw.network, loc)?;
    let sections = RawPolicy { list: raw.list, rate: raw.rate, rule: raw.rule, chain: raw.chain };
    let policy = super::policy::policy(sections, &raw.include, &raw.audit, loc, files)?;
    resolve_network_lists(&mut network, &raw.network, &policy, loc)?;
    let admin = match &raw.admin.bind {
        None => AdminConfig { bind: None },
        Some(b) => match b.get_ref().parse::<SocketAddr>() {
            Ok(a) => AdminConfig { bind: Some(a) },
            Err(_) => return loc.err(b.span(), "admin.bind", "expected IP:PORT, e.g. \"127.0.0.1:5380\""),
        },
    };
    let nftables = nftables(&raw.nftables, &listeners, loc)?;
    // Bans (and later other state) outlive the process here; relative to the config file.
    let state_dir = raw.state_dir.as_ref().map_or_else(|| loc.path("state"), |d| loc.path(d.get_ref()));
    Ok(Config {
        path: loc.file.to_path_buf(),
        state_dir,
        certificates,
        listeners,
        limits,
        network,
        nftables,
        policy,
        admin,
    })
}

/// Expand `list:NAME` entries of `network.allow` / `network.deny` with the list's CIDRs.
fn resolve_network_lists(
    network: &mut NetworkConfig,
    r: &RawNetwork,
    policy: &crate::policy::spec::PolicyConfig,
    loc: &Locator<'_>,
) -> Result<(), ConfigError> {
    for (raw, out, key) in
        [(&r.allow, &mut network.guard.allow, "network.allow"), (&r.deny, &mut network.guard.deny, "network.deny")]
    {
        for e in raw.iter().flatten() {
            let Some(name) = e.get_ref().strip_prefix("list:") else { continue };
            let Some(list) = policy.lists.get(name) else {
                return loc.err(e.span(), key, format!("no [list.{name}]"));
            };
            for entry in &list.entries {
                match Cidr::parse(&entry.value) {
                    Some(c) => out.push(c),
                    None => return Err(entry.origin.error(format!("'{}' is not an address or CIDR", entry.value))),
                }
            }
        }
    }
    Ok(())
}

fn network(r: &RawNetwork, loc: &Locator<'_>) -> Result<NetworkConfig, ConfigError> {
    let d = NetworkConfig::default();
    let cidrs = |v: &Option<Vec<Spanned<String>>>, key: &str| -> Result<Option<Vec<Cidr>>, ConfigError> {
        let Some(v) = v else { return Ok(None) };
        v.iter()
            // Named lists are expanded once the [list.*] sections are read.
            .filter(|e| !e.get_ref().starts_with("list:"))
            .map(|e| {
                let text = e.get_ref();
                Cidr::parse(text)
                    .map_or_else(|| loc.err(e.span(), key, format!("'{text}' is not an address or CIDR")), Ok)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    };
    let burst = match &r.connection_burst_per_ip {
        None => d.guard.connection_rate_per_ip.map_or(10, |r| r.burst),
        Some(b) => u32::try_from(*b.get_ref())
            .ok()
            .filter(|&b| b >= 1)
            .map_or_else(|| loc.err(b.span(), "network.connection_burst_per_ip", "must be a positive integer"), Ok)?,
    };
    let rate = match &r.connection_rate_per_ip {
        None => d.guard.connection_rate_per_ip.map(|rate| Rate { burst, ..rate }),
        Some(v) if v.get_ref() == "off" => None,
        Some(v) => Some(Rate::parse(v.get_ref(), burst).map_or_else(
            || loc.err(v.span(), "network.connection_rate_per_ip", "expected N/second, N/minute or N/hour, or \"off\""),
            Ok,
        )?),
    };
    let duration = |v: &Option<Spanned<String>>, key: &str, default: Duration| match v {
        None => Ok(default),
        Some(v) => parse_duration(v.get_ref())
            .filter(|d| !d.is_zero())
            .map_or_else(|| loc.err(v.span(), key, "expected a duration such as \"10s\", \"10m\" or \"1h\""), Ok),
    };
    let burst_bytes = match &r.bandwidth_burst {
        None => DEFAULT_BANDWIDTH_BURST,
        Some(v) => parse_bytes(v.get_ref()).filter(|&b| b > 0 && b <= MAX_BYTES as u64).map_or_else(
            || loc.err(v.span(), "network.bandwidth_burst", "expected a size from 1B to 64MiB, such as \"64KB\""),
            Ok,
        )?,
    };
    let bandwidth = match &r.bandwidth_per_connection {
        Some(v) if v.get_ref() != "off" => Some(Bandwidth::parse(v.get_ref(), burst_bytes).map_or_else(
            || {
                loc.err(
                    v.span(),
                    "network.bandwidth_per_connection",
                    "expected bytes per second such as \"10KB/s\", or \"off\"",
                )
            },
            Ok,
        )?),
        _ => {
            if let Some(b) = &r.bandwidth_burst {
                return loc.err(b.span(), "network.bandwidth_burst", "needs network.bandwidth_per_connection");
            }
            None
        }
    };
    Ok(NetworkConfig {
        bandwidth_per_connection: bandwidth,
        guard: GuardConfig {
            allow: cidrs(&r.allow, "network.allow")?.unwrap_or(d.guard.allow),
            deny: cidrs(&r.deny, "network.deny")?.unwrap_or(d.guard.deny),
            max_connections: limit(
                loc,
                &r.max_connections,
                "network.max_connections",
                d.guard.max_connections,
                1..=10_000_000,
            )?,
            max_connections_per_ip: limit(
                loc,
                &r.max_connections_per_ip,
                "network.max_connections_per_ip",
                d.guard.max_connections_per_ip,
                1..=1_000_000,
            )?,
            connection_rate_per_ip: rate,
            // Shorter than /32 would lump whole providers together; /128 counts every address.
            ipv6_prefix: u8::try_from(limit(
                loc,
                &r.ipv6_prefix,
                "network.ipv6_prefix",
                usize::from(d.guard.ipv6_prefix),
                32..=128,
            )?)
            .unwrap_or(d.guard.ipv6_prefix),
            ban: BanConfig {
                auth_failures: u32::try_from(limit(
                    loc,
                    &r.ban.auth_failures,
                    "network.ban.auth_failures",
                    d.guard.ban.auth_failures as usize,
                    1..=1000,
                )?)
                .unwrap_or(d.guard.ban.auth_failures),
                window: duration(&r.ban.window, "network.ban.window", d.guard.ban.window)?,
                duration: duration(&r.ban.duration, "network.ban.duration", d.guard.ban.duration)?,
            },
        },
        handshake_timeout: duration(&r.handshake_timeout, "network.handshake_timeout", d.handshake_timeout)?,
        idle_timeout: duration(&r.idle_timeout, "network.idle_timeout", d.idle_timeout)?,
    })
}

fn nftables(r: &RawNftables, listeners: &[ListenerConfig], loc: &Locator<'_>) -> Result<NftablesConfig, ConfigError> {
    let d = NftablesConfig::default();
    let table = match &r.table {
        None => d.table,
        Some(t) => {
            let name = t.get_ref();
            let ok = name.len() <= 32
                && name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return loc.err(t.span(), "nftables.table", "expected a name of letters, digits and '_' (at most 32)");
            }
            name.clone()
        }
    };
    let mut extra_tcp_ports = Vec::new();
    for p in r.extra_tcp_ports.iter().flatten() {
        let port = u16::try_from(*p.get_ref())
            .ok()
            .filter(|&p| p > 0)
            .map_or_else(|| loc.err(p.span(), "nftables.extra_tcp_ports", "expected a port from 1 to 65535"), Ok)?;
        if let Some(l) = listeners.iter().find(|l| l.bind.port() == port) {
            return loc.err(
                p.span(),
                "nftables.extra_tcp_ports",
                format!("{port} is listener '{}' already; list only other services' ports", l.name),
            );
        }
        if !extra_tcp_ports.contains(&port) {
            extra_tcp_ports.push(port);
        }
    }
    let nft = r.nft.as_ref().map_or(d.nft, |p| loc.path(p.get_ref()));
    Ok(NftablesConfig { sync: r.sync.unwrap_or(false), table, nft, extra_tcp_ports })
}

/// `network.bandwidth_burst` when not set: enough for a large stanza at full speed.
const DEFAULT_BANDWIDTH_BURST: u64 = 64_000;

/// Largest byte cap accepted (64 MiB): beyond it one connection could pin too much memory.
const MAX_BYTES: usize = 64 << 20;

fn limit(
    loc: &Locator<'_>,
    v: &Option<Spanned<i64>>,
    key: &str,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    match usize::try_from(*v.get_ref()) {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => loc.err(v.span(), key, format!("must be an integer from {} to {}", range.start(), range.end())),
    }
}

fn valid_host_port(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => crate::jid::is_domain(host) && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

/// The dotted key whose key or value covers byte offset `at` (`listener[1].bind`), for errors
/// that serde reports with only a span.
fn key_at(text: &str, at: usize) -> String {
    let Ok(doc) = text.parse::<toml_edit::Document<String>>() else {
        return String::new();
    };
    let mut best = String::new();
    walk_table(doc.as_table(), "", at, &mut best);
    best
}

fn covers(span: Option<Range<usize>>, at: usize) -> bool {
    span.is_some_and(|s| s.start <= at && at < s.end.max(s.start + 1))
}

fn walk_table(table: &toml_edit::Table, prefix: &str, at: usize, best: &mut String) {
    for (k, item) in table.iter() {
        let path = if prefix.is_empty() { k.to_owned() } else { format!("{prefix}.{k}") };
        let key_span = table.key(k).and_then(|key| key.span());
        if covers(key_span, at) || covers(item.span(), at) {
            *best = path.clone();
        }
        walk_item(item, &path, at, best);
    }
}

fn walk_item(item: &toml_edit::Item, path: &str, at: usize, best: &mut String) {
    match item {
        toml_edit::Item::Table(t) => walk_table(t, path, at, best),
        toml_edit::Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                if covers(t.span(), at) {
                    *best = p.clone();
                }
                walk_table(t, &p, at, best);
            }
        }
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => {
            for (k, v) in t.iter() {
                let p = format!("{path}.{k}");
                if covers(v.span(), at) || covers(t.key(k).and_then(|key| key.span()), at) {
                    *best = p;
                }
            }
        }
        _ => {}
    }
}
