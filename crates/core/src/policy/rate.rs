//! The counters behind `rate` conditions: one GCRA bucket per (limiter, chain, key value),
//! shared by every session of the gateway and kept across policy reloads (a reload must not
//! hand a flooder a fresh burst).
//!
//! The key values are chosen by the traffic (one `to.bare` bucket per recipient a user writes to),
//! so the buckets live in a [`KeyedTable`] (invariant 6, bounded memory per connection,
//! docs/DESIGN.md): constant memory per bucket, at most [`MAX_KEYS`] in all, and at most the
//! limiter's `max_keys_per_source` created by one [`KeySource`] (the session's user). A source at
//! its quota whose buckets are all busy gets its *new* keys counted as over the limit (invariant 5,
//! fail closed, docs/DESIGN.md), rather than forgetting one of its busy buckets: forgetting one
//! would hand it a fresh burst on that key, which a flooder could then use at will by cycling keys.
//! Its idle buckets are forgotten instead (an idle bucket is a full one, so nothing changes).
//! Nobody else's bucket is touched, so one user's keys never change another user's verdicts; only a
//! table full of sources that are all busy takes room back, from the largest of them (see
//! [`crate::keyed`]).
//!
//! Pure: the caller passes `now`.

use std::net::IpAddr;
use std::time::Instant;

use super::Chain;
use crate::jid::{BareJid, FullJid};
use crate::keyed::{KeyedTable, MAX_SHARDS};
use crate::limit::{Gcra, Rate};

/// Most buckets kept at once. A bucket costs a fixed size whatever its key: 64 bytes of slot,
/// plus its share of the index and source maps, ~115 bytes in all with few sources and at
/// most ~230 when every bucket has a source of its own (~240 MiB if ever full that way, which
/// takes a million distinct users with busy buckets; one user holds at most its quota).
pub const MAX_KEYS: usize = 1 << 20;

/// Buckets one source may create per limiter and chain unless `[rate.NAME]
/// max_keys_per_source` says otherwise: far more distinct recipients than a person writes to
/// within a bucket's busy time (at most `burst / rate`), so only machines meet it.
pub const DEFAULT_MAX_KEYS_PER_SOURCE: usize = 4096;

/// Who made a key: the one whose traffic a new bucket is charged to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// A c2s session's authenticated user (all its resources together).
    User(BareJid),
    /// A connection with no authenticated user, by its source address.
    Address(IpAddr),
}

impl KeySource {
    /// The source of a session's keys: its user when it has one, else its address.
    pub fn of(user: Option<&FullJid>, source_ip: IpAddr) -> KeySource {
        match user {
            Some(u) => KeySource::User(u.to_bare()),
            None => KeySource::Address(source_ip),
        }
    }
}

/// One bucket's name: the limiter, the chain and the key value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bucket<'a> {
    /// The `[rate.NAME]` limiter.
    pub limiter: &'a str,
    /// The chain counted in (a message counts once per chain).
    pub chain: Chain,
    /// The key value (`to.bare` → the recipient's bare JID).
    pub key: &'a str,
}

/// A limiter's settings as the table needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Sustained rate and burst.
    pub rate: Rate,
    /// Buckets one source may hold in this limiter and chain.
    pub max_keys_per_source: usize,
}

/// One `fanout` question: count `recipient` among the distinct recipients of `key` (a sender)
/// in the condition `ns`.
#[derive(Debug, Clone, Copy)]
pub struct FanoutQuery<'a> {
    /// The condition's own namespace (two rules count apart).
    pub ns: u64,
    /// Whose recipients are counted (the sender's bare JID, domain, address, …).
    pub key: &'a str,
    /// Who makes the key (its quota of keys is `quota`).
    pub source: &'a KeySource,
    /// Keys one source may hold.
    pub quota: usize,
    /// The recipient's bare JID.
    pub recipient: &'a str,
    /// Distinct recipients allowed within the window.
    pub recipients: usize,
    /// The sliding window.
    pub window: std::time::Duration,
}

/// Where rate buckets are kept: the one interface the policy evaluator charges events through
/// (the rate part of the `Store` of DESIGN.md "State"). The evaluator decides *which* bucket and
/// limit a stanza is charged to; the store only keeps the counters.
///
/// [`RateTable`] is the in-process store (one gateway). The daemon's Redis store keeps the same
/// GCRA arithmetic in one atomic script, so several gateways behind a load balancer share one
/// bucket per key; it answers within its time budget or falls back as configured. Calls are
/// synchronous and made only when a `rate` condition is evaluated: a stanza that meets no rate
/// condition costs the store nothing.
pub trait RateStore: Send + Sync + std::fmt::Debug {
    /// Charge one event to `bucket`, made by `source`; true if it is over the limit. A store
    /// that cannot tell (a bucket it may not create, a backend it cannot reach) answers as
    /// documented for it, never by panicking.
    fn over_limit(&self, bucket: Bucket<'_>, source: &KeySource, limit: &Limit, now: Instant) -> bool;

    /// The anti-spam state ([`crate::antispam`]: contacts, reports, the events queue, and the
    /// fan-out and wave tables of the in-process store). A shared store keeps its local
    /// fallback's here and shares fan-out and waves through [`RateStore::fanout`] and
    /// [`RateStore::wave`].
    fn antispam(&self) -> &crate::antispam::AntiSpam;

    /// Count one recipient of a `fanout` condition; true when it is past the limit (or may not
    /// be counted: fail closed). The in-process store counts in [`RateStore::antispam`]; a
    /// shared store counts for every gateway and answers within its budget or as configured.
    fn fanout(&self, q: &FanoutQuery<'_>, now: Instant) -> bool {
        self.antispam().fanout(q.ns, q.key, q.source, q.quota, q.recipient, q.recipients, q.window, now)
    }

    /// Count one copy of a text toward a wave (`sender` and `recipient` are bare JIDs; each
    /// store keeps only digests of them): `Some` when it belongs to a detected wave.
    fn wave(
        &self,
        spec: &crate::antispam::WaveSpec,
        copy: &crate::antispam::TextCopy<'_>,
        now: Instant,
    ) -> Option<crate::antispam::WaveMatch> {
        self.antispam().wave_local(spec, copy, now)
    }
}

impl RateStore for RateTable {
    fn over_limit(&self, bucket: Bucket<'_>, source: &KeySource, limit: &Limit, now: Instant) -> bool {
        RateTable::over_limit(self, bucket, source, limit, now)
    }

    fn antispam(&self) -> &crate::antispam::AntiSpam {
        &self.antispam
    }
}

/// Shared rate state, in process, and the anti-spam state beside it ([`crate::antispam`]):
/// what the counting conditions of every session share, kept across policy reloads.
#[derive(Debug)]
pub struct RateTable {
    buckets: KeyedTable<Gcra>,
    antispam: crate::antispam::AntiSpam,
}

impl Default for RateTable {
    fn default() -> Self {
        Self::new()
    }
}

impl RateTable {
    /// An empty table of [`MAX_KEYS`] buckets.
    pub fn new() -> Self {
        Self::with_capacity(MAX_KEYS)
    }

    /// An empty table of at most `capacity` buckets (rounded down to a multiple of the shard
    /// count when that is not below it).
    pub fn with_capacity(capacity: usize) -> Self {
        RateTable {
            buckets: KeyedTable::new(capacity, MAX_SHARDS.min(capacity).max(1)),
            antispam: crate::antispam::AntiSpam::new(),
        }
    }

    /// The anti-spam state (contacts, fan-out, waves, reports).
    pub fn antispam(&self) -> &crate::antispam::AntiSpam {
        &self.antispam
    }

    /// Charge one event to `bucket`, made by `source`; true if it is over the limit (also when
    /// the bucket is new and may not be created: see the module documentation).
    pub fn over_limit(&self, bucket: Bucket<'_>, source: &KeySource, limit: &Limit, now: Instant) -> bool {
        // A source's quota is per limiter and chain, like the buckets.
        let source = (bucket.limiter, bucket.chain, source);
        match self.buckets.update(&bucket, &source, limit.max_keys_per_source, now, |g| g.admit(&limit.rate, now)) {
            Ok(admitted) => !admitted,
            Err(_) => true,
        }
    }

    /// Buckets `source` holds in `limiter` and `chain`.
    pub fn keys_of(&self, limiter: &str, chain: Chain, source: &KeySource) -> usize {
        self.buckets.keys_of(&(limiter, chain, source))
    }

    /// Most buckets held at once.
    pub fn capacity(&self) -> usize {
        self.buckets.capacity()
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn user(s: &str) -> KeySource {
        KeySource::User(crate::jid::parse(s).unwrap().to_bare())
    }

    fn limit(rate: &str, burst: u32, quota: usize) -> Limit {
        Limit { rate: Rate::parse(rate, burst).unwrap(), max_keys_per_source: quota }
    }

    fn bucket<'a>(limiter: &'a str, chain: Chain, key: &'a str) -> Bucket<'a> {
        Bucket { limiter, chain, key }
    }

    #[test]
    fn burst_then_rate_per_key() {
        let t = RateTable::new();
        let l = limit("60/minute", 10, DEFAULT_MAX_KEYS_PER_SOURCE);
        let now = Instant::now();
        let c = Chain::C2sIn;
        let a = user("alice@example.test");
        let over: Vec<bool> = (0..11).map(|_| t.over_limit(bucket("l", c, "alice"), &a, &l, now)).collect();
        assert_eq!(over.iter().filter(|&&o| !o).count(), 10);
        assert!(over[10]);
        assert!(!t.over_limit(bucket("l", c, "bob"), &a, &l, now), "another key has its own bucket");
        assert!(!t.over_limit(bucket("other", c, "alice"), &a, &l, now), "another limiter too");
        assert!(!t.over_limit(bucket("l", Chain::C2sOut, "alice"), &a, &l, now), "and the other chain");
        assert!(
            t.over_limit(bucket("l", c, "alice"), &user("bob@example.test"), &l, now),
            "one bucket for all sources"
        );
        assert!(!t.over_limit(bucket("l", c, "alice"), &a, &l, now + Duration::from_secs(1)), "refilled at the rate");
    }

    #[test]
    fn one_user_filling_the_table_leaves_the_others_alone() {
        // Issue 18, finding 5: a user creating keys (one `to.bare` bucket per distinct
        // recipient) filled the table, and then every other user's new keys were refused.
        let t = RateTable::new();
        let l = limit("30/minute", 10, DEFAULT_MAX_KEYS_PER_SOURCE);
        let now = Instant::now();
        let c = Chain::C2sIn;
        let (mallory, bob) = (user("mallory@example.test"), user("bob@example.test"));
        let mut passed = 0;
        for i in 0..=MAX_KEYS {
            if !t.over_limit(bucket("per_recipient", c, &format!("r{i}@example.test")), &mallory, &l, now) {
                passed += 1;
            }
        }
        assert_eq!(passed, DEFAULT_MAX_KEYS_PER_SOURCE, "her new keys are over the limit once she holds her quota");
        assert_eq!(t.keys_of("per_recipient", c, &mallory), DEFAULT_MAX_KEYS_PER_SOURCE);
        assert_eq!(t.len(), DEFAULT_MAX_KEYS_PER_SOURCE);
        for i in 0..100 {
            let key = format!("friend{i}@example.test");
            assert!(!t.over_limit(bucket("per_recipient", c, &key), &bob, &l, now), "bob's message {i}");
        }
        // Her own busy buckets were kept: no fresh burst to her first recipient.
        let first = bucket("per_recipient", c, "r0@example.test");
        assert_eq!((0..9).filter(|_| !t.over_limit(first, &mallory, &l, now)).count(), 9);
        assert!(t.over_limit(first, &mallory, &l, now));
        // Two seconds later (one emission interval) her buckets are idle, and forgotten as she
        // makes new ones.
        let later = now + Duration::from_secs(2);
        assert!(!t.over_limit(bucket("per_recipient", c, "new@example.test"), &mallory, &l, later));
    }

    #[test]
    fn a_source_quota_is_per_limiter_and_chain() {
        let t = RateTable::with_capacity(1024);
        let l = limit("1/minute", 1, 3);
        let now = Instant::now();
        let a = user("alice@example.test");
        for k in ["x", "y", "z"] {
            assert!(!t.over_limit(bucket("l", Chain::C2sIn, k), &a, &l, now));
        }
        assert!(t.over_limit(bucket("l", Chain::C2sIn, "w"), &a, &l, now), "a fourth key is over the limit");
        assert!(!t.over_limit(bucket("l", Chain::C2sOut, "w"), &a, &l, now), "the other chain has its own quota");
        assert!(!t.over_limit(bucket("m", Chain::C2sIn, "w"), &a, &l, now), "another limiter too");
        let by_address = KeySource::of(None, [192, 0, 2, 1].into());
        assert!(!t.over_limit(bucket("l", Chain::C2sIn, "w"), &by_address, &l, now), "another source too");
        assert_eq!(t.keys_of("l", Chain::C2sIn, &a), 3);
    }
}
