//! Counting distinct things per key within a sliding window, in bounded memory: the distinct
//! recipients a sender addressed (`fanout`), the distinct users who reported a JID (`reported`).
//!
//! Each key holds at most `cap` (item digest, last seen) pairs, so a key costs at most
//! `cap × 16` bytes whatever the traffic; the keys live in a [`KeyedTable`] (bounded in total
//! and per source of keys, idle keys forgotten first). The window slides: an item counts while
//! it was seen within the window, and seeing it again refreshes it.
//!
//! Pure: the caller passes `now`.

use std::time::{Duration, Instant};

use crate::keyed::Forgettable;

/// The distinct items of one key.
#[derive(Debug, Default)]
pub struct Distinct {
    items: Vec<(u64, Instant)>,
    /// How long an item counts (the window it was last added with).
    keep: Duration,
}

/// What adding an item did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The item was counted already within the window.
    Known,
    /// A new item, counted: this many are counted now.
    New(usize),
    /// A new item past the cap: not counted.
    Over,
}

impl Distinct {
    fn expire(&mut self, now: Instant, window: Duration) {
        self.items.retain(|&(_, t)| now.saturating_duration_since(t) < window);
    }

    /// Count `item` at `now` within `window`, holding at most `cap` items.
    pub fn add(&mut self, item: u64, now: Instant, window: Duration, cap: usize) -> Added {
        self.keep = window;
        self.expire(now, window);
        if let Some(e) = self.items.iter_mut().find(|(i, _)| *i == item) {
            e.1 = e.1.max(now);
            return Added::Known;
        }
        if self.items.len() >= cap {
            return Added::Over;
        }
        self.items.push((item, now));
        Added::New(self.items.len())
    }

    /// Items seen within `window` before `now`.
    pub fn count(&self, now: Instant, window: Duration) -> usize {
        self.items.iter().filter(|&&(_, t)| now.saturating_duration_since(t) < window).count()
    }
}

impl Forgettable for Distinct {
    fn is_idle(&self, now: Instant) -> bool {
        self.items.iter().all(|&(_, t)| now.saturating_duration_since(t) >= self.keep)
    }
}
