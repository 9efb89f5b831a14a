//! The L3/L4 guard: admit or refuse a connection by its source, before any byte is read
//! (docs/DESIGN.md, the guard at accept).
//!
//! Owns the allow and deny lists, the global and per-source concurrent caps and the per-source
//! connection rate, plus the bookkeeping that keeps refusal audits to one line per source per
//! minute. A *source* is what [`source_key`] makes of an address: an IPv4 address itself, an
//! IPv6 address's `/ipv6_prefix` (default /64). One IPv6 host or site holds at least a whole /64
//! and picks new addresses in it at will (RFC 4291 §2.5.4, RFC 6177, RFC 8981 temporary
//! addresses), so limits counted per address would let it rotate past every one of them.
//!
//! Pure: the caller passes `now`. Every table is bounded, with O(1) work per connection: the
//! per-source connection counts hold only sources with a connection open (at most
//! `max_connections` of them); rate and audit state lives in two generations of at most
//! [`MAX_TRACKED`] / 2 sources each, and a generation that is full (or old) is dropped whole
//! instead of being scanned. A source rotating through more keys than that only makes the
//! gateway forget old rate state early; it never refuses anyone else.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::ban::{BanConfig, BanList};
use crate::limit::{Gcra, Rate};
pub use crate::net::{source_key, unmap, Cidr};

/// Most sources whose rate and audit state is remembered (two generations of half each).
pub const MAX_TRACKED: usize = 1 << 20;
/// A source's refusals are audited at most once per this period.
pub const AUDIT_EVERY: Duration = Duration::from_secs(60);
/// `[network] ipv6_prefix` when not set: the /64 of an IPv6 LAN (RFC 4291 §2.5.4).
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The guard's settings (`[network]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardConfig {
    /// Sources allowed; empty = everyone.
    pub allow: Vec<Cidr>,
    /// Sources refused (checked first).
    pub deny: Vec<Cidr>,
    /// Connections open at once, whole gateway.
    pub max_connections: usize,
    /// Connections open at once from one source (see [`source_key`]).
    pub max_connections_per_ip: usize,
    /// New connections per source.
    pub connection_rate_per_ip: Option<Rate>,
    /// IPv6 sources are counted by this prefix length (see [`source_key`]).
    pub ipv6_prefix: u8,
    /// Bans after repeated authentication failures.
    pub ban: BanConfig,
}

impl Default for GuardConfig {
    /// Per-source defaults sized for many users behind one NAT address (an office of a few
    /// hundred people with two or three clients each, all reconnecting after a network blip):
    /// floods are stopped by the global cap, the handshake timeout, bans and the kernel meters
    /// (README "Network layer" has the reasoning; the example config shows strict values).
    fn default() -> Self {
        GuardConfig {
            allow: Vec::new(),
            deny: Vec::new(),
            max_connections: 200_000,
            max_connections_per_ip: 1000,
            connection_rate_per_ip: Rate::parse("600/minute", 500),
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
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

/// What is remembered of a source between its connections.
#[derive(Debug, Clone, Copy, Default)]
struct Recent {
    rate: Gcra,
    last_audit: Option<Instant>,
}

/// A map bounded to `2 × half` entries with O(1) eviction: entries live in the current
/// generation; when it holds `half` entries, or is older than `max_age`, it becomes the previous
/// one and the old previous generation is dropped whole. Looking an entry up moves it into the
/// current generation, so an entry survives at least `max_age` after its last use unless more
/// than `half` other keys arrive in between.
#[derive(Debug)]
struct Generations<K, V> {
    current: HashMap<K, V>,
    previous: HashMap<K, V>,
    half: usize,
    started: Option<Instant>,
}

impl<K: Hash + Eq + Copy, V: Default> Generations<K, V> {
    fn new(half: usize) -> Self {
        Generations { current: HashMap::new(), previous: HashMap::new(), half: half.max(1), started: None }
    }

    /// Retire generations older than `max_age` at `now`.
    fn age(&mut self, now: Instant, max_age: Duration) {
        let started = *self.started.get_or_insert(now);
        let age = now.saturating_duration_since(started);
        if age >= max_age.saturating_mul(2) {
            self.current = HashMap::new();
            self.previous = HashMap::new();
            self.started = Some(now);
        } else if age >= max_age {
            self.rotate(now);
        }
    }

    fn rotate(&mut self, now: Instant) {
        // Dropping a map of plain-data entries frees one allocation: no per-entry work.
        self.previous = std::mem::take(&mut self.current);
        self.started = Some(now);
    }

    /// The entry for `key`, created (default) if absent.
    fn entry(&mut self, key: K, now: Instant) -> &mut V {
        if !self.current.contains_key(&key) {
            let value = self.previous.remove(&key).unwrap_or_default();
            if self.current.len() >= self.half {
                self.rotate(now);
            }
            self.current.insert(key, value);
        }
        self.current.entry(key).or_default()
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// Admission state across all listeners.
#[derive(Debug)]
pub struct ConnectionGuard {
    config: GuardConfig,
    bans: BanList,
    /// Open connections per source; only sources with at least one.
    active: HashMap<Cidr, usize>,
    recent: Generations<Cidr, Recent>,
    total: usize,
}

/// What [`ConnectionGuard::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Accepted; call [`ConnectionGuard::release`] with `source` when the connection ends.
    Admitted {
        /// The source the connection counts against.
        source: Cidr,
    },
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
        Self::with_tracked(config, MAX_TRACKED)
    }

    /// A guard remembering rate and audit state of at most `max_tracked` sources.
    fn with_tracked(config: GuardConfig, max_tracked: usize) -> Self {
        let bans = BanList::new(config.ban);
        ConnectionGuard { config, bans, active: HashMap::new(), recent: Generations::new(max_tracked / 2), total: 0 }
    }

    /// New settings (reload); open connections stay counted, bans keep their expiry.
    pub fn reconfigure(&mut self, config: GuardConfig) {
        self.bans.reconfigure(config.ban);
        self.config = config;
    }

    /// The source `ip` counts as under the current settings.
    pub fn source(&self, ip: IpAddr) -> Cidr {
        source_key(ip, self.config.ipv6_prefix)
    }

    /// Count an authentication failure from `ip` (against its source) at wall-clock `now`; the
    /// ban's expiry if it caused one.
    pub fn record_auth_failure(&mut self, ip: IpAddr, now: SystemTime) -> Option<SystemTime> {
        self.bans.record_failure(self.source(ip), now)
    }

    /// The ban settings (`[network.ban]`), for a store that counts failures elsewhere.
    pub fn ban_config(&self) -> BanConfig {
        self.config.ban
    }

    /// The ban table, for the state directory.
    pub fn bans(&mut self) -> &mut BanList {
        &mut self.bans
    }

    /// Connections currently admitted.
    pub fn active(&self) -> usize {
        self.total
    }

    /// Sources currently remembered (with a connection open, or recent rate or audit state).
    pub fn tracked(&self) -> usize {
        self.active.len() + self.recent.len()
    }

    /// How long a source's rate and audit state must outlive its last connection: until its
    /// burst is full again, and at least one audit period.
    fn keep(&self) -> Duration {
        let refill = self
            .config
            .connection_rate_per_ip
            .map_or(Duration::ZERO, |r| r.emission_interval().saturating_mul(r.burst));
        refill.max(AUDIT_EVERY)
    }

    /// Decide on a new connection from `ip` at `now` (monotonic, for rates) and `wall`
    /// (wall-clock, for bans, which outlive the process).
    pub fn admit(&mut self, ip: IpAddr, now: Instant, wall: SystemTime) -> Admission {
        let keep = self.keep();
        self.recent.age(now, keep);
        let source = self.source(ip);
        let why = if self.bans.is_banned(ip, wall) { Some(Refusal::Banned) } else { self.check(ip, source, now) };
        match why {
            None => {
                self.total += 1;
                *self.active.entry(source).or_insert(0) += 1;
                Admission::Admitted { source }
            }
            Some(why) => {
                let recent = self.recent.entry(source, now);
                let audit = recent.last_audit.is_none_or(|t| now.saturating_duration_since(t) >= AUDIT_EVERY);
                if audit {
                    recent.last_audit = Some(now);
                }
                Admission::Refused { why, audit }
            }
        }
    }

    fn check(&mut self, ip: IpAddr, source: Cidr, now: Instant) -> Option<Refusal> {
        // Allow and deny lists are about addresses, whatever prefix a source is counted by.
        if self.config.deny.iter().any(|c| c.contains(ip)) {
            return Some(Refusal::Denied);
        }
        if !self.config.allow.is_empty() && !self.config.allow.iter().any(|c| c.contains(ip)) {
            return Some(Refusal::NotAllowed);
        }
        if self.total >= self.config.max_connections {
            return Some(Refusal::GatewayFull);
        }
        if self.active.get(&source).copied().unwrap_or(0) >= self.config.max_connections_per_ip {
            return Some(Refusal::TooManyFromSource);
        }
        if let Some(rate) = &self.config.connection_rate_per_ip {
            if !self.recent.entry(source, now).rate.admit(rate, now) {
                return Some(Refusal::RateExceeded);
            }
        }
        None
    }

    /// A connection admitted earlier as from `source` has ended.
    pub fn release(&mut self, source: Cidr) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.active.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.active.remove(&source);
            }
        }
    }
}

#[cfg(test)]
mod tests;
