//! The bounded table under a fake clock: `t0` plus offsets, never a clock read.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::limit::{Gcra, Rate};

/// One event a second, no burst: a bucket is busy for one second after each event.
fn rate() -> Rate {
    Rate::parse("1/s", 1).unwrap()
}

/// Charge `key` for `source`: `Ok(true)` admitted, `Ok(false)` over the limit, `Err` refused.
fn charge(t: &KeyedTable<Gcra>, source: &str, key: &str, quota: usize, now: Instant) -> Result<bool, Refused> {
    t.update(key, source, quota, now, |g| g.admit(&rate(), now))
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn a_flooding_source_changes_no_other_sources_verdicts() {
    // The same honest traffic (4 sources, a few keys each, some over the limit) with and
    // without a fifth source making 10x its quota of keys at every step.
    const QUOTA: usize = 16;
    let run = |flood: bool| {
        let t = KeyedTable::<Gcra>::new(1024, 8);
        let t0 = Instant::now();
        let mut verdicts = Vec::new();
        let mut made = 0;
        for step in 0..40u64 {
            let now = t0 + Duration::from_millis(step * 300);
            if flood {
                for _ in 0..4 {
                    let _ = charge(&t, "flooder", &format!("victim{made}@example.test"), QUOTA, now);
                    made += 1;
                }
                assert!(t.keys_of("flooder") <= QUOTA);
            }
            for s in 0..4 {
                let source = format!("user{s}");
                let key = format!("friend{}@example.test", (step + s) % 5);
                verdicts.push(charge(&t, &source, &key, QUOTA, now));
            }
            t.check();
        }
        assert!(!flood || made >= 10 * QUOTA);
        verdicts
    };
    let (quiet, flooded) = (run(false), run(true));
    assert_eq!(quiet, flooded);
    assert!(quiet.contains(&Ok(false)) && quiet.contains(&Ok(true)), "the honest traffic meets the limit too");
}

#[test]
fn entries_are_bounded_per_source_and_in_total() {
    let t = KeyedTable::<Gcra>::new(512, 8);
    assert_eq!(t.capacity(), 512);
    let now = Instant::now();
    let mut refused = [0usize; 2];
    for s in 0..64 {
        for k in 0..100 {
            match charge(&t, &format!("s{s}"), &format!("{s}-{k}"), 32, now) {
                Ok(admitted) => assert!(admitted, "a new key starts from a full bucket"),
                Err(Refused::Quota) => refused[0] += 1,
                Err(Refused::Full) => refused[1] += 1,
            }
            assert!(t.keys_of(&format!("s{s}")) <= 32);
        }
        assert!(t.len() <= 512);
    }
    t.check();
    assert!(refused[0] > 0 && refused[1] > 0, "{refused:?}");
}

#[test]
fn idle_entries_are_reclaimed() {
    // Eight shards and a quota of 4: the source's idle keys are in other shards than most
    // of its new ones, so reclaiming must look there too.
    let t = KeyedTable::<Gcra>::new(1024, 8);
    let t0 = Instant::now();
    for k in 0..4 {
        assert_eq!(charge(&t, "a", &format!("k{k}"), 4, t0), Ok(true));
    }
    assert_eq!(charge(&t, "a", "k4", 4, t0), Err(Refused::Quota), "busy keys are not given up");
    assert_eq!(charge(&t, "a", "k4", 4, t0 + Duration::from_millis(999)), Err(Refused::Quota));
    // A second later every bucket is full again: forgetting them changes nothing.
    for k in 4..40 {
        let now = t0 + secs(1 + k);
        assert_eq!(charge(&t, "a", &format!("k{k}"), 4, now), Ok(true), "key {k}");
        assert!(t.keys_of("a") <= 4);
        t.check();
    }
    // Other sources' idle entries go as new keys arrive (swept from the LRU tail).
    let t = KeyedTable::<Gcra>::new(1024, 1);
    for k in 0..100 {
        charge(&t, &format!("s{k}"), &format!("k{k}"), 4, t0).unwrap();
    }
    assert_eq!(t.len(), 100);
    for k in 0..30 {
        charge(&t, "late", &format!("late{k}"), 64, t0 + secs(5)).unwrap();
    }
    // Each new key sweeps up to SWEEP idle ones: the 100 are gone after 25 new keys; the
    // sweep then stops at "late0", which is busy.
    assert_eq!(t.len(), 30);
    t.check();
}

#[test]
fn eviction_follows_use_not_insertion() {
    // One shard, so the order is observable. a, b, c are busy until 1.0, 1.1 and 1.2 s.
    let t = KeyedTable::<Gcra>::new(64, 1);
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    for (k, at) in [("a", 0), ("b", 100), ("c", 200)] {
        assert_eq!(charge(&t, "s", k, 8, ms(at)), Ok(true));
    }
    // Using "a" again (over the limit, so its bucket is unchanged) makes it the most recent.
    assert_eq!(charge(&t, "s", "a", 8, ms(500)), Ok(false));
    // At 1.15 s a and b are idle, c is not. The sweep walks from the least recently used
    // (b, then c) and stops at the first busy one: b goes, a stays although idle.
    assert_eq!(charge(&t, "s", "d", 8, ms(1150)), Ok(true));
    assert_eq!((t.contains("a"), t.contains("b"), t.contains("c"), t.contains("d")), (true, false, true, true));
    // At 1.25 s c is idle too and is now the tail (c, a, d): both go, d (busy) stops it.
    assert_eq!(charge(&t, "s", "e", 8, ms(1250)), Ok(true));
    assert_eq!((t.contains("a"), t.contains("c"), t.contains("d"), t.contains("e")), (false, false, true, true));
    t.check();
}

#[test]
fn a_full_table_takes_room_from_the_largest_source() {
    let t = KeyedTable::<Gcra>::new(8, 1);
    let t0 = Instant::now();
    for k in 0..6 {
        charge(&t, "big", &format!("big{k}"), 8, t0).unwrap();
    }
    for k in 0..2 {
        charge(&t, "small", &format!("small{k}"), 8, t0).unwrap();
    }
    assert_eq!(t.len(), 8);
    // Nothing is idle: a newcomer's key takes the oldest entry of the largest source.
    assert_eq!(charge(&t, "new", "new0", 8, t0), Ok(true));
    assert_eq!((t.keys_of("big"), t.keys_of("small"), t.keys_of("new")), (5, 2, 1));
    assert!(!t.contains("big0") && t.contains("big1") && t.contains("small0"), "the oldest of the largest went");
    assert_eq!(charge(&t, "small", "small0", 8, t0), Ok(false), "the small source's bucket was kept");
    // The largest source asking for more is refused: nobody is larger than it.
    assert_eq!(charge(&t, "big", "big-more", 8, t0), Err(Refused::Full));
    // A source one key short of the largest does not take from it either (no swapping places).
    let t = KeyedTable::<Gcra>::new(4, 1);
    for (s, k) in [("x", "x0"), ("x", "x1"), ("y", "y0"), ("y", "y1")] {
        charge(&t, s, k, 8, t0).unwrap();
    }
    assert_eq!(charge(&t, "y", "y2", 8, t0), Err(Refused::Full));
    assert_eq!(charge(&t, "z", "z0", 8, t0), Ok(true), "a source with none takes from one with two");
    t.check();
}

#[test]
fn a_full_table_under_many_sources_stays_fair() {
    // 16 flooders at a quota of 64 could hold 1024 entries; the table holds 512.
    let t = KeyedTable::<Gcra>::new(512, 4);
    let t0 = Instant::now();
    for f in 0..16 {
        for k in 0..640 {
            let _ = charge(&t, &format!("flooder{f}"), &format!("f{f}-{k}"), 64, t0);
        }
    }
    assert!(t.len() > 500, "{}", t.len());
    // 100 honest sources, each with a new key and a second charge on it: all admitted, then
    // all over the limit (their buckets were kept), while the flooders keep flooding.
    for h in 0..100 {
        let source = format!("honest{h}");
        assert_eq!(charge(&t, &source, &format!("h{h}"), 64, t0), Ok(true), "{source}");
        for f in 0..16 {
            let _ = charge(&t, &format!("flooder{f}"), &format!("g{f}-{h}"), 64, t0);
        }
    }
    for h in 0..100 {
        assert_eq!(charge(&t, &format!("honest{h}"), &format!("h{h}"), 64, t0), Ok(false), "honest{h}");
    }
    for f in 0..16 {
        assert!(t.keys_of(&format!("flooder{f}")) <= 64);
    }
    assert!(t.len() <= 512);
    t.check();
}

#[test]
fn threads_keep_the_bounds() {
    let t = KeyedTable::<Gcra>::new(256, 8);
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        for th in 0..4u64 {
            let t = &t;
            scope.spawn(move || {
                for i in 0..3000u64 {
                    let now = t0 + Duration::from_millis(i);
                    let source = format!("s{}", (i + th) % 6);
                    let _ = charge(t, &source, &format!("k{}", (i * 7 + th) % 500), 16, now);
                }
            });
        }
    });
    t.check();
    for s in 0..6 {
        assert!(t.keys_of(&format!("s{s}")) <= 16);
    }
    assert!(t.len() <= 256);
}

proptest! {
    #[test]
    fn never_over_its_bounds(
        capacity in 1usize..64,
        shards in 1usize..9,
        quota in 1usize..12,
        ops in prop::collection::vec((0u8..8, 0u16..96, 0u16..1500), 1..400),
    ) {
        let t = KeyedTable::<Gcra>::new(capacity, shards);
        prop_assert!(t.capacity() <= capacity.max(shards));
        let mut now = Instant::now();
        for (source, key, step) in ops {
            now += Duration::from_millis(u64::from(step));
            let source = format!("s{source}");
            let _ = charge(&t, &source, &format!("k{key}"), quota, now);
            prop_assert!(t.len() <= t.capacity());
            prop_assert!(t.keys_of(&source) <= quota);
        }
        t.check();
    }
}

#[test]
fn memory_per_entry_does_not_depend_on_the_key() {
    // The slot holds two digests, the value and four links, and nothing on the heap: a
    // 3,000-byte key costs what a 3-byte one does (the maps beside it hold a digest and an
    // index or list ends). A slot that kept the key (a String: 24 bytes more) fails this.
    assert!(std::mem::size_of::<Slot<Gcra>>() <= 64, "{}", std::mem::size_of::<Slot<Gcra>>());
}
