//! The L3/L4 guard: admit or refuse a connection by its source address, before any byte is read
//! (DESIGN.md "Accept").
//!
//! Owns the allow and deny lists, the global and per-IP concurrent caps and the per-IP
//! connection rate, plus the bookkeeping that keeps refusal audits to one line per source per
//! minute. Pure: the caller passes `now`, and tables are bounded (idle per-IP entries are
//! pruned; at most `MAX_TRACKED` sources are tracked, beyond that new sources are refused
//! rather than let the table grow).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::ban::{BanConfig, BanList};
use crate::limit::{Gcra, Rate};

/// Most sources tracked at once (active connections or recent rate state).
pub const MAX_TRACKED: usize = 1 << 20;
/// A source's refusals are audited at most once per this period.
pub const AUDIT_EVERY: Duration = Duration::from_secs(60);

/// An address prefix such as `192.0.2.0/24` or `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parse `ADDR/PREFIX` or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a = s.trim().parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    /// Does the prefix contain `ip`? IPv4-mapped IPv6 addresses match IPv4 prefixes.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl Cidr {
    /// The address as written.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The prefix with its host bits cleared (`10.1.2.3/8` → `10.0.0.0/8`), as a packet filter
    /// wants it.
    pub fn network(&self) -> Cidr {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Cidr { addr, prefix: self.prefix }
    }

    /// An IPv4 prefix?
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Does it cover its whole family (`0.0.0.0/0`, `::/0`)?
    pub fn is_everything(&self) -> bool {
        self.prefix == 0
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The guard's settings (`[network]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardConfig {
    /// Sources allowed; empty = everyone.
    pub allow: Vec<Cidr>,
    /// Sources refused (checked first).
    pub deny: Vec<Cidr>,
    /// Connections open at once, whole gateway.
    pub max_connections: usize,
    /// Connections open at once from one address.
    pub max_connections_per_ip: usize,
    /// New connections per address.
    pub connection_rate_per_ip: Option<Rate>,
    /// Bans after repeated authentication failures.
    pub ban: BanConfig,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            allow: Vec::new(),
            deny: Vec::new(),
            max_connections: 200_000,
            max_connections_per_ip: 20,
            connection_rate_per_ip: Rate::parse("30/minute", 10),
            ban: BanConfig::default(),
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The source is banned (repeated authentication failures).
    Banned,
    /// The source is in `deny`.
    Denied,
    /// `allow` is set and the source is not in it.
    NotAllowed,
    /// `max_connections` reached.
    GatewayFull,
    /// `max_connections_per_ip` reached for this source.
    TooManyFromSource,
    /// `connection_rate_per_ip` exceeded.
    RateExceeded,
}

impl Refusal {
    /// Every reason, so metrics can show each at zero before it happens.
    pub const ALL: [Refusal; 6] = [
        Refusal::Banned,
        Refusal::Denied,
        Refusal::NotAllowed,
        Refusal::GatewayFull,
        Refusal::TooManyFromSource,
        Refusal::RateExceeded,
    ];

    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Banned => "banned",
            Refusal::Denied => "denied",
            Refusal::NotAllowed => "not-allowed",
            Refusal::GatewayFull => "gateway-full",
            Refusal::TooManyFromSource => "per-ip-cap",
            Refusal::RateExceeded => "per-ip-rate",
        }
    }
}

#[derive(Debug, Default)]
struct Source {
    active: usize,
    rate: Gcra,
    last_audit: Option<Instant>,
}

/// Admission state across all listeners.
#[derive(Debug)]
pub struct ConnectionGuard {
    config: GuardConfig,
    bans: BanList,
    sources: HashMap<IpAddr, Source>,
    total: usize,
    last_prune: Option<Instant>,
}

/// What [`ConnectionGuard::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Accepted; call [`ConnectionGuard::release`] when the connection ends.
    Admitted,
    /// Refused; `audit` is true for the first refusal of this source in [`AUDIT_EVERY`].
    Refused {
        /// Why.
        why: Refusal,
        /// Log this one.
        audit: bool,
    },
}

impl ConnectionGuard {
    /// A guard with no connections.
    pub fn new(config: GuardConfig) -> Self {
        let bans = BanList::new(config.ban);
        ConnectionGuard { config, bans, sources: HashMap::new(), total: 0, last_prune: None }
    }

    /// New settings (reload); open connections stay counted, bans keep their expiry.
    pub fn reconfigure(&mut self, config: GuardConfig) {
        self.bans.reconfigure(config.ban);
        self.config = config;
    }

    /// Count an authentication failure from `ip` at wall-clock `now`; the ban's expiry if it
    /// caused one.
    pub fn record_auth_failure(&mut self, ip: IpAddr, now: SystemTime) -> Option<SystemTime> {
        self.bans.record_failure(ip, now)
    }

    /// The ban table, for the state directory.
    pub fn bans(&mut self) -> &mut BanList {
        &mut self.bans
    }

    /// Connections currently admitted.
    pub fn active(&self) -> usize {
        self.total
    }

    /// Decide on a new connection from `ip` at `now` (monotonic, for rates) and `wall`
    /// (wall-clock, for bans, which outlive the process).
    pub fn admit(&mut self, ip: IpAddr, now: Instant, wall: SystemTime) -> Admission {
        self.maybe_prune(now);
        let why = if self.bans.is_banned(ip, wall) { Some(Refusal::Banned) } else { self.check(ip, now) };
        match why {
            None => {
                self.total += 1;
                if let Some(s) = self.sources.get_mut(&ip) {
                    s.active += 1;
                }
                Admission::Admitted
            }
            Some(why) => {
                let audit = match self.sources.get_mut(&ip) {
                    Some(s) => {
                        let due = s.last_audit.is_none_or(|t| now.saturating_duration_since(t) >= AUDIT_EVERY);
                        if due {
                            s.last_audit = Some(now);
                        }
                        due
                    }
                    None => true,
                };
                Admission::Refused { why, audit }
            }
        }
    }

    fn check(&mut self, ip: IpAddr, now: Instant) -> Option<Refusal> {
        if self.config.deny.iter().any(|c| c.contains(ip)) {
            return Some(Refusal::Denied);
        }
        if !self.config.allow.is_empty() && !self.config.allow.iter().any(|c| c.contains(ip)) {
            return Some(Refusal::NotAllowed);
        }
        if self.total >= self.config.max_connections {
            return Some(Refusal::GatewayFull);
        }
        if !self.sources.contains_key(&ip) && self.sources.len() >= MAX_TRACKED {
            return Some(Refusal::GatewayFull);
        }
        let source = self.sources.entry(ip).or_default();
        if source.active >= self.config.max_connections_per_ip {
            return Some(Refusal::TooManyFromSource);
        }
        if let Some(rate) = &self.config.connection_rate_per_ip {
            if !source.rate.admit(rate, now) {
                return Some(Refusal::RateExceeded);
            }
        }
        None
    }

    /// A connection from `ip` admitted earlier has ended.
    pub fn release(&mut self, ip: IpAddr) {
        self.total = self.total.saturating_sub(1);
        if let Some(s) = self.sources.get_mut(&ip) {
            s.active = s.active.saturating_sub(1);
        }
    }

    /// Forget sources with no connection, a full rate burst and no recent audit.
    fn maybe_prune(&mut self, now: Instant) {
        if self.last_prune.is_some_and(|t| now.saturating_duration_since(t) < AUDIT_EVERY) {
            return;
        }
        self.last_prune = Some(now);
        self.sources.retain(|_, s| {
            s.active > 0
                || !s.rate.is_idle(now)
                || s.last_audit.is_some_and(|t| now.saturating_duration_since(t) < AUDIT_EVERY)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs() {
        let net = Cidr::parse("192.0.2.0/24").unwrap();
        assert!(net.contains(ip("192.0.2.77")));
        assert!(!net.contains(ip("192.0.3.1")));
        assert!(net.contains(ip("::ffff:192.0.2.1")), "IPv4-mapped");
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("203.0.113.9")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        assert!(!Cidr::parse("::/0").unwrap().contains(ip("10.0.0.1")));
        assert!(Cidr::parse("2001:db8::/32").unwrap().contains(ip("2001:db8:ffff::1")));
        assert_eq!(Cidr::parse("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nonsense").is_none());
    }

    #[test]
    fn lists_caps_and_rates() {
        let t0 = Instant::now();
        let mut g = ConnectionGuard::new(GuardConfig {
            allow: vec![Cidr::parse("127.0.0.0/8").unwrap()],
            deny: vec![Cidr::parse("127.0.0.66").unwrap()],
            max_connections: 5,
            max_connections_per_ip: 2,
            connection_rate_per_ip: Rate::parse("60/minute", 3),
            ban: BanConfig { auth_failures: 2, ..BanConfig::default() },
        });
        assert_eq!(
            g.admit(ip("127.0.0.66"), t0, SystemTime::UNIX_EPOCH),
            Admission::Refused { why: Refusal::Denied, audit: true }
        );
        assert!(matches!(
            g.admit(ip("192.0.2.1"), t0, SystemTime::UNIX_EPOCH),
            Admission::Refused { why: Refusal::NotAllowed, .. }
        ));
        let a = ip("127.0.0.2");
        assert_eq!(g.admit(a, t0, SystemTime::UNIX_EPOCH), Admission::Admitted);
        assert_eq!(g.admit(a, t0, SystemTime::UNIX_EPOCH), Admission::Admitted);
        assert_eq!(
            g.admit(a, t0, SystemTime::UNIX_EPOCH),
            Admission::Refused { why: Refusal::TooManyFromSource, audit: true }
        );
        // The second refusal of the same source within a minute is not audited again.
        assert_eq!(
            g.admit(a, t0, SystemTime::UNIX_EPOCH),
            Admission::Refused { why: Refusal::TooManyFromSource, audit: false }
        );
        g.release(a);
        assert_eq!(g.admit(a, t0, SystemTime::UNIX_EPOCH), Admission::Admitted, "third of the burst of 3");
        g.release(a);
        assert_eq!(
            g.admit(a, t0, SystemTime::UNIX_EPOCH),
            Admission::Refused { why: Refusal::RateExceeded, audit: false }
        );
        assert_eq!(
            g.admit(a, t0 + Duration::from_secs(1), SystemTime::UNIX_EPOCH),
            Admission::Admitted,
            "one a second after the burst"
        );
        // Gateway-wide cap.
        for i in 3..6 {
            assert_eq!(g.admit(ip(&format!("127.0.0.{i}")), t0, SystemTime::UNIX_EPOCH), Admission::Admitted);
        }
        assert!(matches!(
            g.admit(ip("127.0.0.9"), t0, SystemTime::UNIX_EPOCH),
            Admission::Refused { why: Refusal::GatewayFull, .. }
        ));
        assert_eq!(g.active(), 5);
        // Two authentication failures ban the source, whatever the other limits say.
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let b = ip("127.0.0.3");
        assert_eq!(g.record_auth_failure(b, wall), None);
        assert!(g.record_auth_failure(b, wall).is_some());
        assert!(matches!(g.admit(b, t0, wall), Admission::Refused { why: Refusal::Banned, .. }));
    }

    #[test]
    fn idle_sources_are_forgotten() {
        let t0 = Instant::now();
        let mut g = ConnectionGuard::new(GuardConfig::default());
        for i in 0..100u8 {
            let a = IpAddr::from([10, 0, 0, i]);
            assert_eq!(g.admit(a, t0, SystemTime::UNIX_EPOCH), Admission::Admitted);
            g.release(a);
        }
        assert_eq!(g.sources.len(), 100);
        g.admit(ip("10.1.0.1"), t0 + Duration::from_secs(3600), SystemTime::UNIX_EPOCH);
        assert_eq!(g.sources.len(), 1);
    }
}
