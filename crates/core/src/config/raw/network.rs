//! `[network]` and `[nftables]` as written, and their validation: admission lists, caps, rates,
//! bans and bandwidth ([`crate::guard`], [`crate::ban`]), and the packet-filter settings, which
//! must agree with the listeners they protect.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{limit, MAX_BYTES};
use crate::ban::BanConfig;
use crate::config::locate::Locator;
use crate::config::{ConfigError, ListenerConfig, NetworkConfig, NftablesConfig};
use crate::guard::GuardConfig;
use crate::limit::{parse_bytes, parse_duration, Bandwidth, Rate};
use crate::net::Cidr;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNftables {
    sync: Option<bool>,
    table: Option<Spanned<String>>,
    nft: Option<Spanned<String>>,
    extra_tcp_ports: Option<Vec<Spanned<i64>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
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

/// Expand `list:NAME` entries of `network.allow` / `network.deny` with the list's CIDRs.
pub(super) fn resolve_network_lists(
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

pub(super) fn network(r: &RawNetwork, loc: &Locator<'_>) -> Result<NetworkConfig, ConfigError> {
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

pub(super) fn nftables(
    r: &RawNftables,
    listeners: &[ListenerConfig],
    loc: &Locator<'_>,
) -> Result<NftablesConfig, ConfigError> {
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
