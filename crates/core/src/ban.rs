//! Bans: sources that failed authentication too often within a window are refused for a while.
//!
//! Owns the failure counting and the ban table, with wall-clock times passed in by the caller
//! (bans must survive a restart, so they are kept as `SystemTime`, not `Instant`). It reads no
//! clock and does no I/O; [`BanList::to_text`] and [`BanList::from_text`] are the persistence
//! format the daemon writes to its state directory: one `IP UNTIL_UNIX_SECONDS` a line.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `[network.ban]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanConfig {
    /// Authentication failures from one address …
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

/// Most sources with recent failures remembered; beyond it the oldest are forgotten.
const MAX_FAILING: usize = 100_000;

/// Failure counts and active bans.
#[derive(Debug, Default)]
pub struct BanList {
    config: BanConfig,
    failures: HashMap<IpAddr, VecDeque<SystemTime>>,
    bans: HashMap<IpAddr, SystemTime>,
}

impl BanList {
    /// An empty list.
    pub fn new(config: BanConfig) -> Self {
        BanList { config, failures: HashMap::new(), bans: HashMap::new() }
    }

    /// New settings (reload); existing bans keep their expiry.
    pub fn reconfigure(&mut self, config: BanConfig) {
        self.config = config;
    }

    /// Is `ip` banned at `now`? Expired bans are dropped.
    pub fn is_banned(&mut self, ip: IpAddr, now: SystemTime) -> bool {
        match self.bans.get(&ip) {
            Some(&until) if until > now => true,
            Some(_) => {
                self.bans.remove(&ip);
                false
            }
            None => false,
        }
    }

    /// Count an authentication failure; returns the ban's expiry if this one caused a ban.
    pub fn record_failure(&mut self, ip: IpAddr, now: SystemTime) -> Option<SystemTime> {
        if self.is_banned(ip, now) {
            return None;
        }
        if !self.failures.contains_key(&ip) && self.failures.len() >= MAX_FAILING {
            self.prune(now);
        }
        let window = self.config.window;
        let times = self.failures.entry(ip).or_default();
        times.retain(|&t| now.duration_since(t).map_or(true, |age| age < window));
        times.push_back(now);
        if times.len() < self.config.auth_failures as usize {
            return None;
        }
        self.failures.remove(&ip);
        let until = now + self.config.duration;
        self.bans.insert(ip, until);
        Some(until)
    }

    fn prune(&mut self, now: SystemTime) {
        let window = self.config.window;
        self.failures.retain(|_, times| times.back().is_some_and(|&t| now.duration_since(t).is_ok_and(|a| a < window)));
        if self.failures.len() >= MAX_FAILING {
            self.failures.clear();
        }
    }

    /// Active bans and their expiry, sorted by address.
    pub fn entries(&self, now: SystemTime) -> Vec<(IpAddr, SystemTime)> {
        let mut v: Vec<(IpAddr, SystemTime)> =
            self.bans.iter().filter(|(_, &until)| until > now).map(|(&ip, &until)| (ip, until)).collect();
        v.sort();
        v
    }

    /// Lift a ban (an operator's decision); true if `ip` was banned.
    pub fn unban(&mut self, ip: IpAddr) -> bool {
        self.failures.remove(&ip);
        self.bans.remove(&ip).is_some()
    }

    /// Ban `ip` until `until` (a ban read back from the state directory).
    pub fn ban_until(&mut self, ip: IpAddr, until: SystemTime) {
        self.bans.insert(ip, until);
    }

    /// Active bans as text, one `IP UNTIL_UNIX_SECONDS` a line, sorted.
    pub fn to_text(&self, now: SystemTime) -> String {
        self.entries(now)
            .iter()
            .map(|(ip, until)| format!("{ip} {}\n", until.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())))
            .collect()
    }

    /// Parse the state file's text into bans still active at `now`, and the number of expired
    /// or malformed lines.
    pub fn parse_text(text: &str, now: SystemTime) -> (Vec<(IpAddr, SystemTime)>, usize) {
        let mut skipped = 0;
        let mut bans = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut parts = line.split_whitespace();
            let parsed = match (parts.next().map(str::parse::<IpAddr>), parts.next().map(str::parse::<u64>)) {
                (Some(Ok(ip)), Some(Ok(secs))) => Some((ip, UNIX_EPOCH + Duration::from_secs(secs))),
                _ => None,
            };
            match parsed {
                Some((ip, until)) if until > now => bans.push((ip, until)),
                _ => skipped += 1,
            }
        }
        (bans, skipped)
    }

    /// Load bans written by [`BanList::to_text`]; expired and malformed lines are skipped and
    /// counted in the second value.
    pub fn from_text(&mut self, text: &str, now: SystemTime) -> (usize, usize) {
        let (bans, skipped) = Self::parse_text(text, now);
        let loaded = bans.len();
        self.bans.extend(bans);
        (loaded, skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
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
            assert_eq!(b.record_failure(a, t0 + Duration::from_secs(i)), None);
        }
        assert!(!b.is_banned(a, t0 + Duration::from_secs(4)));
        assert_eq!(b.record_failure(a, t0 + Duration::from_secs(4)), Some(t0 + Duration::from_secs(3604)));
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
        let a = ip("2001:db8::1");
        assert_eq!(b.record_failure(a, t0), None);
        assert_eq!(b.record_failure(a, t0 + Duration::from_secs(30)), None);
        assert_eq!(b.record_failure(a, t0 + Duration::from_secs(100)), None, "both earlier ones aged out");
        assert_eq!(b.record_failure(a, t0 + Duration::from_secs(110)), None);
        assert!(b.record_failure(a, t0 + Duration::from_secs(120)).is_some(), "three within 60 s");
    }

    #[test]
    fn bans_survive_a_round_trip_through_text() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut b = BanList::new(BanConfig { auth_failures: 1, ..BanConfig::default() });
        b.record_failure(ip("192.0.2.9"), t0);
        b.record_failure(ip("::1"), t0);
        let text = b.to_text(t0);
        assert_eq!(text, "192.0.2.9 1700003600\n::1 1700003600\n");
        let mut again = BanList::new(BanConfig::default());
        assert_eq!(again.from_text(&format!("{text}garbage line\n10.0.0.1 5\n"), t0), (2, 2));
        assert!(again.is_banned(ip("192.0.2.9"), t0 + Duration::from_secs(10)));
        assert!(!again.is_banned(ip("10.0.0.1"), t0));
    }
}
