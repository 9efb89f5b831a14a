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

/// A forgotten idle bucket is a full one, which is what a new bucket is: tables of buckets
/// ([`crate::keyed::KeyedTable`]) may drop idle ones without changing any verdict.
impl crate::keyed::Forgettable for Gcra {
    fn is_idle(&self, now: Instant) -> bool {
        Gcra::is_idle(self, now)
    }
}

/// A byte rate with a burst, such as `10KB/s` with `64KB`: read shaping for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bandwidth {
    /// Sustained bytes per second.
    pub bytes_per_second: u64,
    /// Bytes that may be read back to back before the rate applies (the bucket size).
    pub burst: u64,
}

impl Bandwidth {
    /// Parse `N<unit>/s` (also `/sec`, `/second`), the unit as in [`parse_bytes`].
    pub fn parse(s: &str, burst: u64) -> Option<Bandwidth> {
        let (n, per) = s.split_once('/')?;
        if !matches!(per.trim(), "s" | "sec" | "second") {
            return None;
        }
        let bytes_per_second = parse_bytes(n).filter(|&b| b > 0)?;
        Some(Bandwidth { bytes_per_second, burst: burst.max(1) })
    }
}

/// A token bucket of bytes for one connection, over time the caller passes in.
///
/// Shaping never drops: the caller asks [`ByteBucket::grant`] how much it may read now, reads
/// at most that, and when the answer is zero waits [`ByteBucket::wait`] before asking again.
/// The kernel's receive window then pushes back on the sender.
#[derive(Debug, Clone)]
pub struct ByteBucket {
    rate: Bandwidth,
    tokens: u64,
    /// Nanoseconds of refill carried between calls, so slow rates do not lose fractions.
    carry_nanos: u128,
    last: Instant,
}

impl ByteBucket {
    /// A bucket that starts full.
    pub fn new(rate: Bandwidth, now: Instant) -> Self {
        ByteBucket { rate, tokens: rate.burst, carry_nanos: 0, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos() + self.carry_nanos;
        self.last = now;
        let per_second = u128::from(self.rate.bytes_per_second);
        let earned = elapsed * per_second / 1_000_000_000;
        self.carry_nanos = (earned * 1_000_000_000).checked_div(per_second).map_or(0, |used| elapsed - used);
        let tokens = u128::from(self.tokens) + earned;
        self.tokens = u64::try_from(tokens.min(u128::from(self.rate.burst))).unwrap_or(self.rate.burst);
        if self.tokens == self.rate.burst {
            self.carry_nanos = 0;
        }
    }

    /// Bytes that may be read at `now`, at most `want`; zero means wait.
    ///
    /// Reads are granted in quanta of at least ~50 ms of traffic (capped by the burst), so a
    /// shaped connection is woken a few times a second rather than once per byte.
    pub fn grant(&mut self, want: usize, now: Instant) -> usize {
        self.refill(now);
        if self.tokens < self.quantum() {
            return 0;
        }
        usize::try_from(self.tokens).map_or(want, |t| t.min(want))
    }

    /// Record that `n` bytes were read.
    pub fn consume(&mut self, n: usize) {
        self.tokens = self.tokens.saturating_sub(n as u64);
    }

    /// How long until [`ByteBucket::grant`] will give a full quantum.
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        let missing = self.quantum().saturating_sub(self.tokens);
        // Rounded up, less the refill time already carried, so the next grant is not early.
        let nanos = (u128::from(missing) * 1_000_000_000).div_ceil(u128::from(self.rate.bytes_per_second.max(1)));
        let nanos = nanos.saturating_sub(self.carry_nanos);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)).max(Duration::from_millis(1))
    }

    fn quantum(&self) -> u64 {
        (self.rate.bytes_per_second / 20).clamp(1, self.rate.burst)
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
    fn byte_bucket_paces_reads_to_the_rate() {
        let rate = Bandwidth::parse("10KB/s", 64_000).unwrap();
        assert_eq!(rate.bytes_per_second, 10_000);
        let t0 = Instant::now();
        let mut b = ByteBucket::new(rate, t0);
        // The burst is available at once, in reads no larger than asked.
        let mut got = 0;
        while got < 64_000 {
            let n = b.grant(16_384, t0);
            assert!(n > 0 && n <= 16_384);
            b.consume(n);
            got += n;
        }
        assert_eq!(got, 64_000);
        assert_eq!(b.grant(16_384, t0), 0, "empty bucket grants nothing");
        // Next grant after one quantum (50 ms of 10 KB/s = 500 bytes).
        assert_eq!(b.wait(t0), Duration::from_millis(50));
        assert_eq!(b.grant(16_384, t0 + Duration::from_millis(49)), 0);
        assert_eq!(b.grant(16_384, t0 + Duration::from_millis(50)), 500);
        // Over 10 simulated seconds, reading whenever allowed yields rate × time, no more.
        let mut now = t0 + Duration::from_millis(50);
        let mut total = 0u64;
        let end = now + Duration::from_secs(10);
        while now < end {
            let n = b.grant(16_384, now);
            b.consume(n);
            total += n as u64;
            now += b.wait(now).max(Duration::from_millis(7));
        }
        assert!((99_000..=101_000).contains(&total), "{total}");
    }

    #[test]
    fn byte_bucket_slow_rates_keep_fractions() {
        // 3 bytes per second (a third of a second per byte, not a whole number of nanoseconds),
        // read whenever the bucket says so, for 100 s.
        let rate = Bandwidth::parse("3/s", 1).unwrap();
        let t0 = Instant::now();
        let mut b = ByteBucket::new(rate, t0);
        let mut total = 0;
        let mut now = t0;
        while now < t0 + Duration::from_secs(100) {
            let n = b.grant(100, now);
            b.consume(n);
            total += n;
            now += b.wait(now);
        }
        assert!((300..=301).contains(&total), "{total}");
        assert!(Bandwidth::parse("10KB/min", 1).is_none());
        assert!(Bandwidth::parse("0KB/s", 1).is_none());
        assert_eq!(Bandwidth::parse("1MiB/second", 1).map(|b| b.bytes_per_second), Some(1 << 20));
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
