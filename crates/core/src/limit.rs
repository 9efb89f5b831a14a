//! Rate limiting with GCRA (the generic cell rate algorithm, a token bucket kept as one
//! timestamp), over time the caller passes in.
//!
//! Owns the arithmetic only: no clock reads (callers pass `now`), no tables. A limiter admits
//! `burst` events at once and then one event per `period / count`.

use std::time::{Duration, Instant};

/// A rate such as `30/minute`, with a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Events per `per`.
    pub count: u32,
    /// The period.
    pub per: Duration,
    /// Events admitted back to back before the rate applies.
    pub burst: u32,
}

impl Rate {
    /// Time between events at the sustained rate.
    pub fn emission_interval(&self) -> Duration {
        self.per / self.count.max(1)
    }

    /// Parse `N/second|minute|hour` (also `N/s`, `N/min`, `N/h`).
    pub fn parse(s: &str, burst: u32) -> Option<Rate> {
        let (n, unit) = s.split_once('/')?;
        let count: u32 = n.trim().parse().ok().filter(|&c| c > 0)?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return None,
        };
        Some(Rate { count, per, burst: burst.max(1) })
    }
}

/// One GCRA limiter: the theoretical arrival time of the next conforming event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    tat: Option<Instant>,
}

impl Default for Gcra {
    fn default() -> Self {
        Self::new()
    }
}

impl Gcra {
    /// A limiter with its full burst available.
    pub fn new() -> Self {
        Gcra { tat: None }
    }

    /// Admit one event at `now` if it conforms to `rate`.
    pub fn admit(&mut self, rate: &Rate, now: Instant) -> bool {
        let interval = rate.emission_interval();
        let tolerance = interval * rate.burst.saturating_sub(1);
        let tat = self.tat.map_or(now, |t| t.max(now));
        if tat > now + tolerance {
            return false;
        }
        self.tat = Some(tat + interval);
        true
    }

    /// True once the limiter is back to a full burst (its state can be forgotten).
    pub fn is_idle(&self, now: Instant) -> bool {
        self.tat.is_none_or(|t| t <= now)
    }
}

/// Parse a duration such as `10s`, `10m`, `1h`, `500ms`, `2d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => return Some(Duration::from_millis(n)),
        "s" => n,
        "m" | "min" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// Parse a byte size such as `64KB`, `10KiB`, `2MB`, `512B` (KB = 1000, KiB = 1024).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1024,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_sustained_rate() {
        let rate = Rate::parse("30/minute", 10).unwrap();
        assert_eq!(rate.emission_interval(), Duration::from_secs(2));
        let t0 = Instant::now();
        let mut g = Gcra::new();
        for i in 0..10 {
            assert!(g.admit(&rate, t0), "burst event {i}");
        }
        assert!(!g.admit(&rate, t0), "11th at once is refused");
        assert!(!g.admit(&rate, t0 + Duration::from_millis(1999)));
        assert!(g.admit(&rate, t0 + Duration::from_secs(2)), "one more every 2 s");
        assert!(!g.admit(&rate, t0 + Duration::from_secs(2)));
        assert!(g.is_idle(t0 + Duration::from_secs(60)));
        assert!(!g.is_idle(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn refused_events_do_not_consume() {
        let rate = Rate::parse("1/s", 1).unwrap();
        let t0 = Instant::now();
        let mut g = Gcra::new();
        assert!(g.admit(&rate, t0));
        for _ in 0..100 {
            assert!(!g.admit(&rate, t0 + Duration::from_millis(500)));
        }
        assert!(g.admit(&rate, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn units() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_bytes("64KB"), Some(64_000));
        assert_eq!(parse_bytes("10KiB"), Some(10_240));
        assert_eq!(parse_bytes("1MB"), Some(1_000_000));
        assert_eq!(parse_bytes("12"), Some(12));
        assert_eq!(parse_bytes("1GB"), None);
        assert!(Rate::parse("0/s", 1).is_none());
        assert!(Rate::parse("5/fortnight", 1).is_none());
    }
}
