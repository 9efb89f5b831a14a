//! Bounded tables of per-key state whose keys the traffic chooses (rate buckets today; any
//! later per-key counter), shared by every session of the gateway.
//!
//! The keys of such a table are made by whoever sends: a user who messages a million distinct
//! recipients makes a million `to.bare` buckets. So the table bounds, and charges to the one who
//! made them, everything an attacker can make it hold (invariant 6, bounded memory per connection,
//! docs/DESIGN.md):
//!
//! - **Memory per entry is constant**: keys and their *sources* (who created the key: a user, an
//!   address, later a remote domain) are kept as 128-bit keyed digests, never as the strings
//!   themselves. The digest is two SipHash values under a key drawn at random per table (std's
//!   `RandomState`, the same defence `HashMap` uses against hash flooding), so nobody outside
//!   can make two keys collide on purpose.
//! - **Bounded in total and per source**: at most [`KeyedTable::capacity`] entries, and at most
//!   `quota` (the caller's, per call) entries created by one source. A source at its quota first
//!   gets its own idle entries reclaimed; if none is idle its new key is refused
//!   ([`Refused::Quota`]). Nothing else is touched: the cost of making keys falls on the one
//!   making them.
//! - **A full table stays fair**: when a shard is full and none of the oldest entries is idle,
//!   a new key takes the place of the least recently used entry, among a few of the oldest, of
//!   the source that holds the *most* keys, and only if that source holds more than the one
//!   asking will with its new key. Existing entries of small sources are therefore never
//!   pushed out by large ones (a source at its quota cannot take any entry); what fills a
//!   table is quota × sources, and that is where room is taken back. Otherwise the new key is
//!   refused ([`Refused::Full`]): the asker is then the largest source around.
//! - **O(1) per operation, no scan under a lock**: entries are spread over up to
//!   [`MAX_SHARDS`] independently locked shards by key digest (sessions on different cores do
//!   not serialize on one mutex); each shard keeps an intrusive LRU list of its entries and,
//!   per source, an LRU list of that source's entries, so lookup, insert, touch and eviction
//!   are constant time, and reclaiming idle entries looks at a bounded number of list tails.
//!   Source counts live in their own shards, locked only while a shard is held (one lock
//!   order: entry shard, then source shard), never the other way round.
//!
//! Entries are "forgettable" ([`Forgettable`]): an idle entry is equivalent to a fresh one (an
//! idle rate bucket is a full one), so reclaiming it changes no verdict. Only a full table
//! under many large sources ever forgets a busy entry, and then one of the largest source's.
//!
//! Pure: no clock reads (the caller passes `now`), no I/O.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

mod shard;

use shard::Shard;
#[cfg(test)]
use shard::Slot;

/// Most shards a table has (a source's shards are tracked in one 64-bit mask).
pub const MAX_SHARDS: usize = 64;
/// Idle entries reclaimed, at most, from a list tail per operation: enough to outpace
/// insertion (one per operation) without holding a shard lock for long.
const SWEEP: usize = 4;
/// Oldest entries of a full shard examined for one to give up.
const PROBES: usize = 8;
/// Other shards tried, at most, for an idle entry of a source at its quota.
const FOREIGN: usize = 4;
const NIL: u32 = u32::MAX;

/// State that may be dropped once idle, because an idle value equals a new one.
pub trait Forgettable {
    /// True when forgetting the value now changes nothing (a rate bucket that is full again).
    fn is_idle(&self, now: Instant) -> bool;
}

/// Why a new key was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The key's source holds its quota of keys and none of them is idle.
    #[error("the source holds its quota of keys")]
    Quota,
    /// The table is full and no entry may make room (none idle, no larger source).
    #[error("the table is full")]
    Full,
}

/// A 128-bit keyed digest of a key or source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Digest(u64, u64);

impl Hash for Digest {
    fn hash<H: Hasher>(&self, h: &mut H) {
        // Already a keyed hash: the maps below use it as it is (see `PassThrough`).
        h.write_u64(self.0);
    }
}

/// The hasher of maps keyed by [`Digest`]: the digest is already uniformly random and secret.
#[derive(Debug, Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type DigestMap<T> = HashMap<Digest, T, BuildHasherDefault<PassThrough>>;

/// What the table knows about one source across shards.
#[derive(Debug)]
struct Source {
    /// Entries it created (and reservations being inserted).
    keys: usize,
    /// Bit `s`: it may have entries in shard `s` (a superset, changed only under that shard's lock).
    shards: u64,
}

/// A bounded, sharded table of per-key state with a quota per source of keys.
pub struct KeyedTable<V> {
    seed: RandomState,
    shards: Box<[Mutex<Shard<V>>]>,
    sources: Box<[Mutex<DigestMap<Source>>]>,
    per_shard: usize,
}

impl<V> fmt::Debug for KeyedTable<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedTable")
            .field("capacity", &(self.per_shard * self.shards.len()))
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update below leaves the lists consistent before anything that could panic, and
    // nothing here panics on input; a poisoned lock is taken over rather than failing every
    // later caller.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<V: Default + Forgettable> KeyedTable<V> {
    /// A table of at most `capacity` entries (rounded down to a multiple of the shard count,
    /// at least one per shard) in `shards` shards (1 to [`MAX_SHARDS`]).
    pub fn new(capacity: usize, shards: usize) -> Self {
        let shards = shards.clamp(1, MAX_SHARDS);
        let per_shard = (capacity / shards).clamp(1, NIL as usize - 1);
        KeyedTable {
            seed: RandomState::new(),
            shards: (0..shards).map(|_| Mutex::new(Shard::new())).collect(),
            sources: (0..shards).map(|_| Mutex::new(DigestMap::default())).collect(),
            per_shard,
        }
    }

    /// Most entries held at once.
    pub fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries held now that `source` created.
    pub fn keys_of<S: Hash + ?Sized>(&self, source: &S) -> usize {
        self.held(self.digest(source))
    }

    /// Apply `f` to the value of `key`. A key not held yet is created (from `V::default()`)
    /// on behalf of `source`, which may hold at most `quota` keys (at least 1): refused when
    /// it holds its quota and none of its keys is idle, or when the table is full and no
    /// entry may make room (see the module documentation).
    pub fn update<K, S, R>(
        &self,
        key: &K,
        source: &S,
        quota: usize,
        now: Instant,
        f: impl FnOnce(&mut V) -> R,
    ) -> Result<R, Refused>
    where
        K: Hash + ?Sized,
        S: Hash + ?Sized,
    {
        let kd = self.digest(key);
        let s = self.shard_of(kd);
        let quota = quota.max(1);
        let mut sd = None;
        // A second attempt only after an idle key of the source's was reclaimed in another shard.
        for attempt in 0..2 {
            let mut shard = lock(&self.shards[s]);
            let i = match shard.index.get(&kd) {
                Some(&i) => {
                    shard.touch(i);
                    i
                }
                None => {
                    let sd = *sd.get_or_insert_with(|| self.digest(source));
                    self.sweep(&mut shard, s, now);
                    match self.admit(&mut shard, s, sd, quota, now) {
                        Ok(()) => shard.insert(kd, sd, V::default()),
                        Err(Refused::Quota) if attempt == 0 => {
                            drop(shard);
                            if self.reclaim_elsewhere(sd, s, kd, now) {
                                continue;
                            }
                            return Err(Refused::Quota);
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            return Ok(f(&mut shard.slots[i as usize].value));
        }
        Err(Refused::Quota)
    }

    /// Apply `f` to the value of `key` if it is held, creating nothing (a read never charges
    /// a source and never makes room).
    pub fn read<K: Hash + ?Sized, R>(&self, key: &K, f: impl FnOnce(&V) -> R) -> Option<R> {
        let kd = self.digest(key);
        let shard = lock(&self.shards[self.shard_of(kd)]);
        let i = *shard.index.get(&kd)?;
        Some(f(&shard.slots[i as usize].value))
    }

    fn digest<K: Hash + ?Sized>(&self, v: &K) -> Digest {
        // Two values of one keyed PRF on domain-separated inputs: 128 bits, independent halves.
        let mut a = self.seed.build_hasher();
        a.write_u8(0);
        v.hash(&mut a);
        let mut b = self.seed.build_hasher();
        b.write_u8(1);
        v.hash(&mut b);
        Digest(a.finish(), b.finish())
    }

    fn shard_of(&self, d: Digest) -> usize {
        // The second half picks the shard, the first the bucket inside it: independent bits.
        (d.1 % self.shards.len() as u64) as usize
    }

    fn sources_of(&self, sd: Digest) -> &Mutex<DigestMap<Source>> {
        &self.sources[self.shard_of(sd)]
    }

    fn held(&self, sd: Digest) -> usize {
        lock(self.sources_of(sd)).get(&sd).map_or(0, |r| r.keys)
    }

    /// Make room for one new key of `sd` in shard `s` (held), charging it to `sd`.
    fn admit(&self, shard: &mut Shard<V>, s: usize, sd: Digest, quota: usize, now: Instant) -> Result<(), Refused> {
        let mut before = self.reserve(sd, s, quota);
        if before.is_none() {
            // Its own idle keys first: forgetting them changes no verdict.
            self.reclaim_own(shard, s, sd, now);
            before = self.reserve(sd, s, quota);
        }
        let Some(before) = before else { return Err(Refused::Quota) };
        if shard.len() >= self.per_shard && !self.make_room(shard, s, sd, before, now) {
            self.release(sd, s, false);
            return Err(Refused::Full);
        }
        Ok(())
    }

    /// Count one more key for `sd` (in shard `s`) if under `quota`; the count before.
    fn reserve(&self, sd: Digest, s: usize, quota: usize) -> Option<usize> {
        let mut sources = lock(self.sources_of(sd));
        // `quota` is at least 1, so a record is never left at zero keys.
        let r = sources.entry(sd).or_insert(Source { keys: 0, shards: 0 });
        if r.keys >= quota {
            return None;
        }
        r.keys += 1;
        r.shards |= 1 << s;
        Some(r.keys - 1)
    }

    /// One key of `sd` gone from shard `s`; `emptied`: it has none left there.
    fn release(&self, sd: Digest, s: usize, emptied: bool) {
        let mut sources = lock(self.sources_of(sd));
        if let Some(r) = sources.get_mut(&sd) {
            r.keys = r.keys.saturating_sub(1);
            if emptied {
                r.shards &= !(1 << s);
            }
            if r.keys == 0 {
                sources.remove(&sd);
            }
        }
    }

    fn evict(&self, shard: &mut Shard<V>, s: usize, i: u32) {
        let (sd, emptied) = shard.remove(i);
        self.release(sd, s, emptied);
    }

    /// Forget idle entries at the shard's LRU tail (a bounded number).
    fn sweep(&self, shard: &mut Shard<V>, s: usize, now: Instant) {
        for _ in 0..SWEEP {
            let t = shard.lru.tail;
            if t == NIL || !shard.slots[t as usize].value.is_idle(now) {
                break;
            }
            self.evict(shard, s, t);
        }
    }

    /// Forget idle entries of `sd` at the tail of its list in shard `s`; how many.
    fn reclaim_own(&self, shard: &mut Shard<V>, s: usize, sd: Digest, now: Instant) -> usize {
        let mut freed = 0;
        while freed < SWEEP {
            let Some(t) = shard.sources.get(&sd).map(|e| e.tail) else { break };
            if t == NIL || !shard.slots[t as usize].value.is_idle(now) {
                break;
            }
            self.evict(shard, s, t);
            freed += 1;
        }
        freed
    }

    /// With no shard locked: look for an idle entry of `sd` in a few of the other shards it
    /// has entries in, starting at a place the key picks (so repeated refusals spread out).
    fn reclaim_elsewhere(&self, sd: Digest, s: usize, kd: Digest, now: Instant) -> bool {
        let mask = lock(self.sources_of(sd)).get(&sd).map_or(0, |r| r.shards) & !(1u64 << s);
        let n = self.shards.len() as u32;
        let start = (kd.0 % u64::from(n)) as u32;
        let mut bits = mask.rotate_right(start);
        for _ in 0..FOREIGN {
            if bits == 0 {
                break;
            }
            let t = ((bits.trailing_zeros() + start) % 64) as usize;
            bits &= bits - 1;
            if t >= self.shards.len() {
                continue;
            }
            let mut shard = lock(&self.shards[t]);
            if self.reclaim_own(&mut shard, t, sd, now) > 0 {
                return true;
            }
        }
        false
    }

    /// Shard `s` is full: forget one of its oldest entries, an idle one, else the one of the
    /// source holding the most keys if that source holds more than the asker `sd` will with
    /// its new key (`before + 1`). So a source only loses a key to one that ends up with no
    /// more keys than it has left: the sizes never swap places (max-min fairness, and no two
    /// equal sources taking busy entries from each other in turn).
    fn make_room(&self, shard: &mut Shard<V>, s: usize, sd: Digest, before: usize, now: Instant) -> bool {
        let mut victim: Option<(u32, usize)> = None;
        let mut i = shard.lru.tail;
        for _ in 0..PROBES {
            if i == NIL {
                break;
            }
            let slot = &shard.slots[i as usize];
            if slot.value.is_idle(now) {
                victim = Some((i, usize::MAX));
                break;
            }
            let keys = if slot.source == sd { 0 } else { self.held(slot.source) };
            if keys > before + 1 && victim.is_none_or(|(_, most)| keys > most) {
                victim = Some((i, keys));
            }
            i = slot.prev;
        }
        let Some((i, _)) = victim else { return false };
        self.evict(shard, s, i);
        true
    }

    /// True if `key` is held (tests only).
    #[cfg(test)]
    pub(crate) fn contains<K: Hash + ?Sized>(&self, key: &K) -> bool {
        let kd = self.digest(key);
        lock(&self.shards[self.shard_of(kd)]).index.contains_key(&kd)
    }

    /// Check every structural invariant (tests only).
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let mut counts: HashMap<(u64, u64), usize> = HashMap::new();
        for (s, m) in self.shards.iter().enumerate() {
            let sh = lock(m);
            assert!(sh.len() <= self.per_shard, "shard {s} over its share");
            assert_eq!(sh.index.len(), sh.len());
            for (i, slot) in sh.slots.iter().enumerate() {
                assert_eq!(sh.index.get(&slot.key), Some(&(i as u32)));
                *counts.entry((slot.source.0, slot.source.1)).or_default() += 1;
            }
            // The LRU list, both ways, covers every slot once.
            let (mut n, mut i, mut prev) = (0, sh.lru.head, NIL);
            while i != NIL {
                assert_eq!(sh.slots[i as usize].prev, prev);
                (prev, i) = (i, sh.slots[i as usize].next);
                n += 1;
                assert!(n <= sh.len());
            }
            assert_eq!((n, sh.lru.tail), (sh.len(), prev));
            // The source lists partition the slots; each source's mask has this shard.
            let mut total = 0;
            for (sd, ends) in &sh.sources {
                let (mut i, mut prev) = (ends.head, NIL);
                while i != NIL {
                    let slot = &sh.slots[i as usize];
                    assert_eq!((slot.source, slot.sprev), (*sd, prev));
                    (prev, i) = (i, slot.snext);
                    total += 1;
                    assert!(total <= sh.len());
                }
                assert_eq!(ends.tail, prev);
                assert_ne!(ends.head, NIL);
                let mask = lock(self.sources_of(*sd)).get(sd).map_or(0, |r| r.shards);
                assert_ne!(mask & (1 << s), 0, "source missing shard {s} in its mask");
            }
            assert_eq!(total, sh.len());
        }
        let mut recorded = 0;
        for m in self.sources.iter() {
            for (sd, r) in lock(m).iter() {
                assert_eq!(counts.get(&(sd.0, sd.1)).copied().unwrap_or(0), r.keys, "count of a source");
                recorded += 1;
            }
        }
        assert_eq!(recorded, counts.len(), "a source with entries and no count");
    }
}

#[cfg(test)]
mod tests;
