//! One shard of a [`super::KeyedTable`]: its slots, the shard-wide LRU list and, per source of
//! keys, that source's LRU list in the shard — all intrusive (indices into `slots`), so that
//! touching, inserting and evicting an entry are O(1).

use super::{Digest, DigestMap, NIL};

/// One entry, linked into its shard's LRU list and into its source's LRU list in the shard.
#[derive(Debug)]
pub(super) struct Slot<V> {
    pub(super) key: Digest,
    pub(super) source: Digest,
    pub(super) value: V,
    pub(super) prev: u32,
    pub(super) next: u32,
    pub(super) sprev: u32,
    pub(super) snext: u32,
}

/// Both ends of an intrusive list (`head` most recently used).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ends {
    pub(super) head: u32,
    pub(super) tail: u32,
}

pub(super) const EMPTY: Ends = Ends { head: NIL, tail: NIL };

#[derive(Debug)]
pub(super) struct Shard<V> {
    pub(super) index: DigestMap<u32>,
    pub(super) slots: Vec<Slot<V>>,
    pub(super) lru: Ends,
    /// Per source with entries in this shard, the ends of its list.
    pub(super) sources: DigestMap<Ends>,
}

impl<V> Shard<V> {
    pub(super) fn new() -> Self {
        Shard { index: DigestMap::default(), slots: Vec::new(), lru: EMPTY, sources: DigestMap::default() }
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn lru_unlink(&mut self, i: u32) {
        let (p, n) = (self.slots[i as usize].prev, self.slots[i as usize].next);
        if p == NIL {
            self.lru.head = n;
        } else {
            self.slots[p as usize].next = n;
        }
        if n == NIL {
            self.lru.tail = p;
        } else {
            self.slots[n as usize].prev = p;
        }
    }

    pub(super) fn lru_push(&mut self, i: u32) {
        let head = self.lru.head;
        self.slots[i as usize].prev = NIL;
        self.slots[i as usize].next = head;
        if head == NIL {
            self.lru.tail = i;
        } else {
            self.slots[head as usize].prev = i;
        }
        self.lru.head = i;
    }

    /// Unlink `i` from its source's list; true if that left the source without entries here.
    pub(super) fn source_unlink(&mut self, i: u32) -> bool {
        let slot = &self.slots[i as usize];
        let (source, p, n) = (slot.source, slot.sprev, slot.snext);
        let Some(ends) = self.sources.get_mut(&source) else { return true };
        if p == NIL {
            ends.head = n;
        } else {
            self.slots[p as usize].snext = n;
        }
        if n == NIL {
            ends.tail = p;
        } else {
            self.slots[n as usize].sprev = p;
        }
        if ends.head == NIL {
            self.sources.remove(&source);
            return true;
        }
        false
    }

    pub(super) fn source_push(&mut self, i: u32) {
        let source = self.slots[i as usize].source;
        let ends = self.sources.entry(source).or_insert(EMPTY);
        let head = ends.head;
        ends.head = i;
        if head == NIL {
            ends.tail = i;
        }
        self.slots[i as usize].sprev = NIL;
        self.slots[i as usize].snext = head;
        if head != NIL {
            self.slots[head as usize].sprev = i;
        }
    }

    /// Mark `i` most recently used.
    pub(super) fn touch(&mut self, i: u32) {
        if self.lru.head != i {
            self.lru_unlink(i);
            self.lru_push(i);
        }
        if self.sources.get(&self.slots[i as usize].source).is_some_and(|e| e.head != i) {
            self.source_unlink(i);
            self.source_push(i);
        }
    }

    pub(super) fn insert(&mut self, key: Digest, source: Digest, value: V) -> u32 {
        // Fits: a shard holds at most `capacity / shards` entries, and capacity is a usize
        // checked against u32 in `KeyedTable::new`.
        let i = self.slots.len() as u32;
        self.slots.push(Slot { key, source, value, prev: NIL, next: NIL, sprev: NIL, snext: NIL });
        self.index.insert(key, i);
        self.lru_push(i);
        self.source_push(i);
        i
    }

    /// Remove entry `i`; returns its source and whether the source has no entry left here.
    /// The last slot moves into `i` (so the slots stay dense and their memory can shrink).
    pub(super) fn remove(&mut self, i: u32) -> (Digest, bool) {
        self.lru_unlink(i);
        let emptied = self.source_unlink(i);
        let removed = self.slots.swap_remove(i as usize);
        self.index.remove(&removed.key);
        if let Some(moved) = self.slots.get(i as usize) {
            let (key, source, p, n, sp, sn) =
                (moved.key, moved.source, moved.prev, moved.next, moved.sprev, moved.snext);
            self.index.insert(key, i);
            if p == NIL {
                self.lru.head = i;
            } else {
                self.slots[p as usize].next = i;
            }
            if n == NIL {
                self.lru.tail = i;
            } else {
                self.slots[n as usize].prev = i;
            }
            if let Some(ends) = self.sources.get_mut(&source) {
                if sp == NIL {
                    ends.head = i;
                }
                if sn == NIL {
                    ends.tail = i;
                }
            }
            if sp != NIL {
                self.slots[sp as usize].snext = i;
            }
            if sn != NIL {
                self.slots[sn as usize].sprev = i;
            }
        }
        // Give memory back after a flood, amortized: only once the shard is down to a quarter.
        let cap = self.slots.capacity();
        if cap > 64 && self.slots.len() < cap / 4 {
            self.slots.shrink_to(cap / 2);
            self.index.shrink_to(cap / 2);
            self.sources.shrink_to(cap / 2);
        }
        (removed.source, emptied)
    }
}
