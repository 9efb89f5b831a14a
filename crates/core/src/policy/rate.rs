//! The counters behind `rate` conditions: one GCRA bucket per (limiter, key value), shared by
//! every session of the gateway and kept across policy reloads (a reload must not hand a
//! flooder a fresh burst).
//!
//! Bounded (invariant 6): at most [`MAX_KEYS`] buckets; when full, idle buckets are forgotten,
//! and if none is idle a new key counts as over the limit (fail closed, invariant 5). Pure: the
//! caller passes `now`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::Chain;
use crate::limit::{Gcra, Rate};

/// Most buckets kept at once.
pub const MAX_KEYS: usize = 1 << 20;

/// Shared rate state.
#[derive(Debug, Default)]
pub struct RateTable {
    buckets: Mutex<HashMap<(String, Chain, String), Gcra>>,
}

impl RateTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Charge one event to `key` of `limiter` in `chain`; true if it is over the limit.
    pub fn over_limit(&self, limiter: &str, chain: Chain, rate: &Rate, key: String, now: Instant) -> bool {
        let mut buckets = match self.buckets.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        let id = (limiter.to_owned(), chain, key);
        if !buckets.contains_key(&id) && buckets.len() >= MAX_KEYS {
            buckets.retain(|_, g| !g.is_idle(now));
            if buckets.len() >= MAX_KEYS {
                return true;
            }
        }
        !buckets.entry(id).or_default().admit(rate, now)
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.buckets.lock().map_or(0, |b| b.len())
    }

    /// True when no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate_per_key() {
        let t = RateTable::new();
        let rate = Rate::parse("60/minute", 10).unwrap();
        let now = Instant::now();
        let c = Chain::C2sIn;
        let over: Vec<bool> = (0..11).map(|_| t.over_limit("l", c, &rate, "alice".into(), now)).collect();
        assert_eq!(over.iter().filter(|&&o| !o).count(), 10);
        assert!(over[10]);
        assert!(!t.over_limit("l", c, &rate, "bob".into(), now), "another key has its own bucket");
        assert!(!t.over_limit("other", c, &rate, "alice".into(), now), "another limiter too");
        assert!(!t.over_limit("l", Chain::C2sOut, &rate, "alice".into(), now), "and the other chain");
        assert!(!t.over_limit("l", c, &rate, "alice".into(), now + Duration::from_secs(1)), "refilled at the rate");
    }
}
