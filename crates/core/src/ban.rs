//! Bans: sources that failed authentication too often within a window are refused for a while.
//!
//! Owns the failure counting and the ban table, keyed by source ([`crate::net::source_key`]:
//! an IPv4 address, an IPv6 address's `/ipv6_prefix`), with wall-clock times passed in by the
//! caller (bans must survive a restart, so they are kept as `SystemTime`, not `Instant`). It
//! reads no clock and does no I/O; [`BanList::to_text`] and [`BanList::parse_text`] are the
//! persistence format the daemon writes to its state directory: one `SOURCE UNTIL_UNIX_SECONDS`
//! a line, where SOURCE is an address (an IPv6 one bans its `/ipv6_prefix`, so files written
//! before bans were kept by prefix still mean the same source) or `ADDR/LEN`, that prefix as
//! written (an operator may ban a whole /48 by hand).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::net::{source_key, unmap, Cidr};

/// `[network.ban]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanConfig {
    /// Authentication failures from one source …
    pub auth_failures: u32,
    /// … within this window …
    pub window: Duration,
    /// … ban it for this long.
    pub duration: Duration,
}

impl Default for BanConfig {
    fn default() -> Self {
        BanConfig { auth_failures: 5, window: Duration::from_secs(600), duration: Duration::from_secs(3600) }
    }
}

/// Most sources with recent failures remembered; beyond it stale ones are dropped, and if too
/// few are stale, all (a source rotating through that many keys only resets counting).
const MAX_FAILING: usize = 100_000;
/// Expired bans are swept once the table has grown to twice its size after the last sweep (and
/// at least this many): amortized O(1) per ban, however many sources get banned over time.
const MIN_SWEEP: usize = 1024;

/// Failure counts and active bans.
#[derive(Debug, Default)]
pub struct BanList {
    config: BanConfig,
    failures: HashMap<Cidr, VecDeque<SystemTime>>,
    bans: HashMap<Cidr, SystemTime>,
    /// How many bans have each prefix length, per family (`[0]` IPv4, `[1]` IPv6): a lookup
    /// tries only the lengths present (usually one or two).
    lengths: [BTreeMap<u8, usize>; 2],
    sweep_at: usize,
}

fn family(ip: IpAddr) -> usize {
    usize::from(!ip.is_ipv4())
}

impl BanList {
    /// An empty list.
    pub fn new(config: BanConfig) -> Self {
        BanList { config, sweep_at: MIN_SWEEP, ..BanList::default() }
    }

    /// New settings (reload); existing bans keep their expiry.
    pub fn reconfigure(&mut self, config: BanConfig) {
        self.config = config;
    }

    /// Is `ip` inside a ban active at `now` (its source's, or a wider prefix)? Expired bans
    /// met on the way are dropped.
    pub fn is_banned(&mut self, ip: IpAddr, now: SystemTime) -> bool {
        self.is_banned_within(ip, 128, now)
    }

    /// Is `ip` inside an active ban of prefix length `max_len` or shorter?
    fn is_banned_within(&mut self, ip: IpAddr, max_len: u8, now: SystemTime) -> bool {
        let ip = unmap(ip);
        let mut expired = Vec::new();
        let mut banned = false;
        for &len in self.lengths[family(ip)].keys().filter(|&&l| l <= max_len) {
            let Some(key) = Cidr::new(ip, len) else { continue };
            match self.bans.get(&key) {
                Some(&until) if until > now => {
                    banned = true;
                    break;
                }
                Some(_) => expired.push(key),
                None => {}
            }
        }
        for key in expired {
            self.remove(key);
        }
        banned
    }

    fn insert(&mut self, key: Cidr, until: SystemTime, now: SystemTime) {
        if self.bans.insert(key, until).is_none() {
            *self.lengths[family(key.addr())].entry(key.prefix()).or_insert(0) += 1;
        }
        if self.bans.len() >= self.sweep_at {
            let expired: Vec<Cidr> = self.bans.iter().filter(|(_, &u)| u <= now).map(|(&k, _)| k).collect();
            for k in expired {
                self.remove(k);
            }
            self.sweep_at = (self.bans.len() * 2).max(MIN_SWEEP);
        }
    }

    fn remove(&mut self, key: Cidr) -> bool {
        if self.bans.remove(&key).is_none() {
            return false;
        }
        let lengths = &mut self.lengths[family(key.addr())];
        if let Some(n) = lengths.get_mut(&key.prefix()) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                lengths.remove(&key.prefix());
            }
        }
        true
    }

    /// Count an authentication failure of `source` (a [`crate::net::source_key`]); returns
    /// the ban's expiry if this one caused a ban.
    pub fn record_failure(&mut self, source: Cidr, now: SystemTime) -> Option<SystemTime> {
        if self.is_banned_within(source.addr(), source.prefix(), now) {
            return None;
        }
        if !self.failures.contains_key(&source) && self.failures.len() >= MAX_FAILING {
            self.prune(now);
        }
        let window = self.config.window;
        let times = self.failures.entry(source).or_default();
        times.retain(|&t| now.duration_since(t).map_or(true, |age| age < window));
        times.push_back(now);
        if times.len() < self.config.auth_failures as usize {
            return None;
        }
        self.failures.remove(&source);
        // A duration beyond the clock's range bans for as long as the clock goes.
        let until = now.checked_add(self.config.duration).unwrap_or(now + Duration::from_secs(100 * 365 * 86_400));
        self.insert(source, until, now);
        Some(until)
    }

    fn prune(&mut self, now: SystemTime) {
        let window = self.config.window;
        self.failures.retain(|_, times| times.back().is_some_and(|&t| now.duration_since(t).is_ok_and(|a| a < window)));
        // Keep a quarter free, so the next scan is at least MAX_FAILING / 4 new sources away
        // (amortized O(1) per failure).
        if self.failures.len() > MAX_FAILING / 4 * 3 {
            self.failures.clear();
        }
    }

    /// Active bans and their expiry, sorted by source.
    pub fn entries(&self, now: SystemTime) -> Vec<(Cidr, SystemTime)> {
        let mut v: Vec<(Cidr, SystemTime)> =
            self.bans.iter().filter(|(_, &until)| until > now).map(|(&key, &until)| (key, until)).collect();
        v.sort();
        v
    }

    /// Lift a ban (an operator's decision); true if `source` was banned.
    pub fn unban(&mut self, source: Cidr) -> bool {
        self.failures.remove(&source);
        self.remove(source)
    }

    /// Ban `source` until `until` (a ban read back from the state directory).
    pub fn ban_until(&mut self, source: Cidr, until: SystemTime) {
        self.insert(source, until, SystemTime::UNIX_EPOCH);
    }

    /// Active bans as text, one `SOURCE UNTIL_UNIX_SECONDS` a line, sorted; a single IPv4
    /// address is written bare (as before prefixes), anything wider as `ADDR/LEN`.
    pub fn to_text(&self, now: SystemTime) -> String {
        self.entries(now)
            .iter()
            .map(|(key, until)| {
                format!("{} {}\n", key.compact(), until.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
            })
            .collect()
    }

    /// Parse the state file's text into bans still active at `now`, and the number of expired
    /// or malformed lines. A bare IPv6 address stands for its `/ipv6_prefix` source.
    pub fn parse_text(text: &str, now: SystemTime, ipv6_prefix: u8) -> (Vec<(Cidr, SystemTime)>, usize) {
        let mut skipped = 0;
        let mut bans = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut parts = line.split_whitespace();
            let source = parts.next().and_then(|s| match s.contains('/') {
                true => Cidr::parse(s).map(|c| c.network()),
                false => s.parse::<IpAddr>().ok().map(|ip| source_key(ip, ipv6_prefix)),
            });
            // A number too large for the clock is malformed, not a panic.
            let until = parts
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)));
            match (source, until) {
                (Some(source), Some(until)) if until > now => bans.push((source, until)),
                _ => skipped += 1,
            }
        }
        (bans, skipped)
    }

    /// Load bans written by [`BanList::to_text`] (or by hand); expired and malformed lines are
    /// skipped and counted in the second value.
    pub fn from_text(&mut self, text: &str, now: SystemTime, ipv6_prefix: u8) -> (usize, usize) {
        let (bans, skipped) = Self::parse_text(text, now, ipv6_prefix);
        let loaded = bans.len();
        for (source, until) in bans {
            self.insert(source, until, now);
        }
        (loaded, skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The source of `s` with the default /64 for IPv6.
    fn src(s: &str) -> Cidr {
        source_key(ip(s), 64)
    }

    #[test]
    fn fifth_failure_in_the_window_bans_until_the_duration_passes() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut b = BanList::new(BanConfig {
            auth_failures: 5,
            window: Duration::from_secs(600),
            duration: Duration::from_secs(3600),
        });
        let a = ip("192.0.2.1");
        for i in 0..4 {
            assert_eq!(b.record_failure(src("192.0.2.1"), t0 + Duration::from_secs(i)), None);
        }
        assert!(!b.is_banned(a, t0 + Duration::from_secs(4)));
        assert_eq!(
            b.record_failure(src("192.0.2.1"), t0 + Duration::from_secs(4)),
            Some(t0 + Duration::from_secs(3604))
        );
        assert!(b.is_banned(a, t0 + Duration::from_secs(5)));
        assert!(!b.is_banned(ip("192.0.2.2"), t0), "others are not");
        assert!(!b.is_banned(a, t0 + Duration::from_secs(3604)), "lifted after the duration");
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut b = BanList::new(BanConfig {
            auth_failures: 3,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(60),
        });
        let a = src("2001:db8::1");
        assert_eq!(b.record_failure(a, t0), None);
        assert_eq!(b.record_failure(a, t0 + Duration::from_secs(30)), None);
        assert_eq!(b.record_failure(a, t0 + Duration::from_secs(100)), None, "both earlier ones aged out");
        assert_eq!(b.record_failure(a, t0 + Duration::from_secs(110)), None);
        assert!(b.record_failure(a, t0 + Duration::from_secs(120)).is_some(), "three within 60 s");
    }

    #[test]
    fn failures_from_addresses_of_one_prefix_add_up_and_ban_the_prefix() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut b = BanList::new(BanConfig { auth_failures: 5, ..BanConfig::default() });
        // Five different addresses of 2001:db8:0:7::/64, one failure each.
        for i in 1..5u16 {
            assert_eq!(b.record_failure(src(&format!("2001:db8:0:7::{i:x}")), t0), None);
        }
        assert!(b.record_failure(src("2001:db8:0:7:ffff::5"), t0).is_some());
        for i in 0..40u16 {
            assert!(b.is_banned(ip(&format!("2001:db8:0:7:{i:x}::{i:x}")), t0), "all of the /64");
        }
        assert!(!b.is_banned(ip("2001:db8:0:8::1"), t0), "not the next /64");
        assert_eq!(b.entries(t0), vec![(Cidr::parse("2001:db8:0:7::/64").unwrap(), t0 + Duration::from_secs(3600))]);
        assert!(b.unban(Cidr::parse("2001:db8:0:7::/64").unwrap()));
        assert!(!b.is_banned(ip("2001:db8:0:7::1"), t0));
    }

    #[test]
    fn bans_survive_a_round_trip_through_text() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut b = BanList::new(BanConfig { auth_failures: 1, ..BanConfig::default() });
        b.record_failure(src("192.0.2.9"), t0);
        b.record_failure(src("::ffff:198.51.100.4"), t0);
        b.record_failure(src("2001:db8::1"), t0);
        let text = b.to_text(t0);
        assert_eq!(text, "192.0.2.9 1700003600\n198.51.100.4 1700003600\n2001:db8::/64 1700003600\n");
        let mut again = BanList::new(BanConfig::default());
        assert_eq!(again.from_text(&format!("{text}garbage line\n10.0.0.1 5\n"), t0, 64), (3, 2));
        assert!(again.is_banned(ip("192.0.2.9"), t0 + Duration::from_secs(10)));
        assert!(again.is_banned(ip("2001:db8::ffff"), t0 + Duration::from_secs(10)));
        assert!(!again.is_banned(ip("10.0.0.1"), t0));
        assert_eq!(again.to_text(t0), text);
    }

    #[test]
    fn old_ban_files_and_hand_written_prefixes_load() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        // Written before bans were kept by prefix: bare IPv6 addresses. Each means its source.
        let old = "192.0.2.9 1700003600\n::1 1700003600\n2001:db8:1:2::99 1700003600\n";
        let mut b = BanList::new(BanConfig::default());
        assert_eq!(b.from_text(old, t0, 64), (3, 0));
        assert!(b.is_banned(ip("2001:db8:1:2::1"), t0), "the whole /64 of the old entry");
        assert!(b.is_banned(ip("::2"), t0));
        assert!(!b.is_banned(ip("2001:db8:1:3::1"), t0));
        // With ipv6_prefix = 128 an address is only itself.
        let mut exact = BanList::new(BanConfig::default());
        exact.from_text(old, t0, 128);
        assert!(exact.is_banned(ip("2001:db8:1:2::99"), t0) && !exact.is_banned(ip("2001:db8:1:2::1"), t0));
        // A prefix written by hand bans that prefix as written (host bits cleared), wider or not.
        let mut hand = BanList::new(BanConfig::default());
        let text = "2001:db8:aa::1/48 1700003600\n198.51.100.77/24 1700003600\n2001:db8:bb::/130 1700003600\n";
        assert_eq!(hand.from_text(text, t0, 64), (2, 1), "a /130 is malformed");
        assert!(hand.is_banned(ip("2001:db8:aa:ffff::1"), t0));
        assert!(hand.is_banned(ip("198.51.100.1"), t0) && hand.is_banned(ip("::ffff:198.51.100.200"), t0));
        // A source inside a wider ban counts no failures of its own (it cannot connect anyway).
        assert_eq!(hand.record_failure(src("2001:db8:aa:1::1"), t0), None);
        assert_eq!(hand.entries(t0).len(), 2);
        assert_eq!(hand.to_text(t0), "198.51.100.0/24 1700003600\n2001:db8:aa::/48 1700003600\n");
    }

    #[test]
    fn hostile_ban_files_do_not_panic() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let text = "192.0.2.1 18446744073709551615\n192.0.2.2 -5\n192.0.2.3\n/64 1700003600\n\u{0}\n";
        let (bans, skipped) = BanList::parse_text(text, t0, 64);
        assert!(bans.is_empty());
        assert_eq!(skipped, 5);
        let mut b =
            BanList::new(BanConfig { auth_failures: 1, window: Duration::from_secs(1), duration: Duration::MAX });
        assert!(b.record_failure(src("192.0.2.1"), t0).is_some(), "an endless ban, not an overflow");
        assert!(b.is_banned(ip("192.0.2.1"), t0 + Duration::from_secs(10 * 365 * 86_400)));
    }

    #[test]
    fn expired_bans_are_swept_as_the_table_grows() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut b = BanList::new(BanConfig {
            auth_failures: 1,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(1),
        });
        // 100,000 sources banned one second each, a second apart: never more than a few
        // thousand entries kept, although nobody looks the expired ones up.
        for i in 0..100_000u32 {
            let now = t0 + Duration::from_secs(u64::from(i));
            b.record_failure(source_key(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), 64), now);
            assert!(b.bans.len() <= 2 * MIN_SWEEP, "{} entries at {i}", b.bans.len());
        }
        assert_eq!(b.entries(t0 + Duration::from_secs(99_999)).len(), 1);
    }
}
