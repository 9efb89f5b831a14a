//! Rosters the gateway asks the server for, through its privileged component (XEP-0356), when a
//! rule needs one it does not know: who is waiting, which domains can be asked, which answers
//! failed recently.
//!
//! The shared meeting point of three parties that never call each other: sessions (a stanza
//! whose recipient's roster is unknown asks [`RosterFetch::want`]; true means "hold it, an
//! answer is coming"), the daemon's component task (takes the requests, asks the server,
//! reports [`RosterFetch::done`]), and the component's privileges (which domains granted roster
//! `get`, [`RosterFetch::set_domains`]; none while disconnected, so nobody waits for a
//! component that is down). Every change bumps [`RosterFetch::generation`], which the daemon
//! turns into a wake-up for held sessions.
//!
//! Bounded: at most [`MAX_QUEUED`] owners waiting for the component task, [`MAX_FAILED`]
//! remembered failures (keyed digests), [`MAX_DOMAINS`] domains. A request that does not fit
//! is not made and the stanza is not held (it is judged with the roster unknown).
//!
//! Pure: the caller passes `now`; no I/O.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::Digester;
use crate::jid::BareJid;

/// Most owners queued for the component task at once.
pub const MAX_QUEUED: usize = 1024;
/// Most failed fetches remembered.
pub const MAX_FAILED: usize = 1 << 16;
/// Most domains that may be asked.
pub const MAX_DOMAINS: usize = 256;
/// How long a failed fetch keeps its owner from being asked (and stanzas from being held)
/// again: a user the server has no roster for must not cost every stanza the hold time.
pub const FAILURE_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Inner {
    domains: HashSet<String>,
    queue: VecDeque<BareJid>,
    /// Digests of the owners queued or in flight.
    asked: HashSet<u128>,
    failed: HashMap<u128, Instant>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct RosterFetch {
    inner: Mutex<Inner>,
    digester: Digester,
    generation: AtomicU64,
    /// Fast path: no domain can be asked (no component, or it is down).
    enabled: AtomicBool,
}

impl RosterFetch {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The domains whose rosters can be fetched now (empty while the component is down).
    /// Owners waiting at a domain no longer listed are released.
    pub fn set_domains(&self, domains: impl IntoIterator<Item = String>) {
        let mut g = self.lock();
        g.domains = domains.into_iter().take(MAX_DOMAINS).collect();
        self.enabled.store(!g.domains.is_empty(), Ordering::Release);
        if g.domains.is_empty() {
            g.queue.clear();
            g.asked.clear();
        }
        drop(g);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Can `owner`'s roster be fetched (its domain granted roster `get` and the component is
    /// connected)?
    pub fn fetchable(&self, owner: &BareJid) -> bool {
        self.enabled.load(Ordering::Acquire) && self.lock().domains.contains(owner.domain().as_str())
    }

    /// A stanza needs `owner`'s roster, which is unknown: queue a fetch unless one is queued
    /// or in flight, or one failed within [`FAILURE_TTL`]. True if an answer is coming (the
    /// caller may hold the stanza for it).
    pub fn want(&self, owner: &BareJid, now: Instant) -> bool {
        if !self.enabled.load(Ordering::Acquire) {
            return false;
        }
        let d = self.digester.digest(owner.as_str());
        let mut g = self.lock();
        if !g.domains.contains(owner.domain().as_str()) {
            return false;
        }
        if let Some(&at) = g.failed.get(&d) {
            if now.saturating_duration_since(at) < FAILURE_TTL {
                return false;
            }
            g.failed.remove(&d);
        }
        if g.asked.contains(&d) {
            return true;
        }
        if g.queue.len() >= MAX_QUEUED {
            return false;
        }
        g.asked.insert(d);
        g.queue.push_back(owner.clone());
        true
    }

    /// Is a fetch of `owner`'s roster queued or in flight?
    pub fn is_waiting(&self, owner: &BareJid) -> bool {
        if !self.enabled.load(Ordering::Acquire) {
            return false;
        }
        let d = self.digester.digest(owner.as_str());
        self.lock().asked.contains(&d)
    }

    /// The owners to ask the server about (each once).
    pub fn take_requests(&self) -> Vec<BareJid> {
        self.lock().queue.drain(..).collect()
    }

    /// The fetch for `owner` ended at `now`: `ok` (its roster is in the contacts table now)
    /// or failed. Wakes held sessions.
    pub fn done(&self, owner: &BareJid, ok: bool, now: Instant) {
        let d = self.digester.digest(owner.as_str());
        let mut g = self.lock();
        g.asked.remove(&d);
        if !ok {
            if g.failed.len() >= MAX_FAILED {
                g.failed.retain(|_, at| now.saturating_duration_since(*at) < FAILURE_TTL);
            }
            if g.failed.len() < MAX_FAILED {
                g.failed.insert(d, now);
            }
        }
        drop(g);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The fetch for `owner` was lost with the connection: no longer in flight, not a
    /// failure of the server's (it may be asked again after a reconnect).
    pub fn cancel(&self, owner: &BareJid) {
        let d = self.digester.digest(owner.as_str());
        self.lock().asked.remove(&d);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Changes so far (roster answers, domains): a held stanza is looked at again when this
    /// moves.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Fetches queued or in flight.
    pub fn in_flight(&self) -> usize {
        self.lock().asked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bare(s: &str) -> BareJid {
        crate::jid::parse(s).expect("valid").to_bare()
    }

    #[test]
    fn nothing_is_held_without_a_domain_that_granted_roster_access() {
        let f = RosterFetch::default();
        let now = Instant::now();
        assert!(!f.want(&bare("bob@example.test"), now));
        f.set_domains(["example.test".to_owned()]);
        assert!(!f.want(&bare("bob@remote.example"), now), "a remote user's roster cannot be asked for");
        assert!(f.want(&bare("bob@example.test"), now));
        assert!(f.want(&bare("bob@example.test"), now), "queued once, every stanza may wait for it");
        assert_eq!(f.take_requests(), vec![bare("bob@example.test")]);
        assert!(f.take_requests().is_empty());
        let g = f.generation();
        f.done(&bare("bob@example.test"), true, now);
        assert!(f.generation() > g);
        assert_eq!(f.in_flight(), 0);
    }

    #[test]
    fn a_failed_fetch_is_not_waited_for_again_within_the_ttl() {
        let f = RosterFetch::default();
        let now = Instant::now();
        f.set_domains(["example.test".to_owned()]);
        assert!(f.want(&bare("ghost@example.test"), now));
        f.take_requests();
        f.done(&bare("ghost@example.test"), false, now);
        assert!(!f.want(&bare("ghost@example.test"), now + Duration::from_secs(1)));
        assert!(f.want(&bare("ghost@example.test"), now + FAILURE_TTL));
    }

    #[test]
    fn the_queue_is_bounded_and_a_disconnect_releases_it() {
        let f = RosterFetch::default();
        let now = Instant::now();
        f.set_domains(["example.test".to_owned()]);
        for i in 0..MAX_QUEUED {
            assert!(f.want(&bare(&format!("u{i}@example.test")), now));
        }
        assert!(!f.want(&bare("one-more@example.test"), now), "past the cap nothing is held");
        f.set_domains(Vec::new());
        assert_eq!(f.in_flight(), 0);
        assert!(!f.want(&bare("u1@example.test"), now));
    }
}
