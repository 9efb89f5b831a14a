//! Holding a stanza while the roster it is to be judged by is fetched.
//!
//! A `stranger`/`stranger_domain`/`roster_known` rule judges a stanza by its recipient's
//! roster. When the gateway does not know that roster but its privileged component can fetch
//! it ([`crate::antispam::fetch`]: connected, and the recipient's domain granted roster `get`),
//! the stanza waits — at most [`ROSTER_HOLD`] — and is evaluated once the roster is known, the
//! fetch failed, or the time is up, whichever comes first; then with what is known (an unknown
//! roster makes `stranger` not hold: fail open, README "Rosters"). What the same peer sends
//! after it waits behind it, in order (XEP-0198 counts and the stanza order of RFC 6120 §10.1
//! stay as they were); the daemon stops reading that leg meanwhile, so nothing piles up.
//! Only the first stanza to an unknown roster waits: the fetch makes the roster known (or a
//! failure is remembered for a minute) for every later one.

use std::time::{Duration, Instant};

use super::C2sSession;
use crate::jid::BareJid;
use crate::policy::{Chain, Context};
use crate::session::StreamMachine;
use crate::xml::Element;

/// Longest a stanza waits for its recipient's roster.
pub const ROSTER_HOLD: Duration = Duration::from_secs(2);

/// Which leg a held stanza came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    /// Client → server (`c2s-in`).
    FromClient = 0,
    /// Server → client (`c2s-out`).
    FromBackend = 1,
}

/// A stanza waiting for `owner`'s roster until `until`.
#[derive(Debug)]
pub(super) struct Held {
    el: Element,
    owner: BareJid,
    until: Instant,
}

impl C2sSession {
    /// Whose roster `el` should wait for in `chain`: some rule asks about the recipient's roster,
    /// which is unknown and being fetched.
    pub(super) fn roster_wait(&self, chain: Chain, el: &Element) -> Option<BareJid> {
        let b = &self.filter;
        if !b.policy.uses_contacts() || b.policy.is_pass_all(chain) {
            return None;
        }
        let a = b.rates.antispam();
        let ctx = Context { chain, user: self.bound.as_ref(), source_ip: b.source_ip };
        let owner = b.policy.roster_owner(el, &ctx)?;
        if a.contacts.is_known(&owner) {
            return None;
        }
        a.fetch.want(&owner, self.now).then_some(owner)
    }

    pub(super) fn hold(&mut self, dir: Direction, el: Element, owner: BareJid) {
        self.held[dir as usize] = Some(Held { el, owner, until: self.now + ROSTER_HOLD });
    }

    pub(super) fn held_from_client(&self) -> bool {
        self.held[Direction::FromClient as usize].is_some()
    }

    pub(super) fn held_from_backend(&self) -> bool {
        self.held[Direction::FromBackend as usize].is_some()
    }

    /// The earliest time a held stanza must be decided.
    pub(super) fn hold_deadline(&self) -> Option<Instant> {
        self.held.iter().flatten().map(|h| h.until).min()
    }

    /// Decide held stanzas whose roster is known, whose fetch ended, or whose time is up, and
    /// read on behind them.
    pub(super) fn release_held(&mut self, now: Instant) {
        for dir in [Direction::FromClient, Direction::FromBackend] {
            let a = self.filter.rates.antispam();
            let ready = self.held[dir as usize]
                .as_ref()
                .is_some_and(|h| now >= h.until || a.contacts.is_known(&h.owner) || !a.fetch.is_waiting(&h.owner));
            if !ready {
                continue;
            }
            let Some(h) = self.held[dir as usize].take() else { continue };
            if self.is_closed() {
                continue;
            }
            match dir {
                Direction::FromClient => {
                    self.relay_client_element(h.el, true);
                    self.drain_client();
                }
                Direction::FromBackend => {
                    self.relay_backend_element(h.el, true);
                    self.drain_backend();
                }
            }
        }
    }
}
