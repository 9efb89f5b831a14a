//! What the gateway knows of each local user's roster: who may write to the user without being
//! a stranger.
//!
//! Learned from what the gateway relays: a roster result (RFC 6121 §2.1.4) replaces a user's
//! roster, a roster push (§2.1.6) changes one item, and the user's own outgoing
//! `subscribe`/`subscribed` presences mark the contact pending-out or pre-approved (§3.1.2,
//! §3.4) until the server's push confirms it. Only what comes from the user's own account counts
//! (the session refuses foreign roster pushes before this is asked). With `[contacts]
//! component`, rosters of users the gateway has not seen are fetched through its privileged
//! component (XEP-0356, [`crate::component`]) and replace the same way, and the pushes the
//! server sends the component change them.
//!
//! A contact is one whose item has a subscription either way (`to`, `from`, `both`), a pending
//! outbound request (`ask='subscribe'`) or a pre-approval (`approved='true'`): the same test as
//! Prosody's `mod_anti_spam`. A roster item naming a bare domain makes everyone at that domain a
//! contact.
//!
//! Bounded: JIDs are kept as 128-bit keyed digests (constant memory per item, no collisions an
//! outsider can aim for), at most [`MAX_CONTACTS_PER_ROSTER`] items per user and
//! [`MAX_CONTACTS`] in all, and [`MAX_ROSTERS`] rosters (an empty roster costs a map entry: a
//! component asked about ever new made-up users must not grow the table). A roster that does not fit is *forgotten*, never kept in part: a
//! partial roster would call real contacts strangers, while an unknown roster only makes
//! `stranger` not hold (and `roster_known = false` hold) for that user.
//!
//! Pure: no clock, no I/O.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::Digester;
use crate::jid::{BareJid, Jid};
use crate::xml::Element;

/// Most items kept for one user (Prosody and ejabberd default to far fewer).
pub const MAX_CONTACTS_PER_ROSTER: usize = 10_000;
/// Most items kept in all (~48 bytes each: digest, state, domain digest, map overhead).
pub const MAX_CONTACTS: usize = 4 << 20;
/// Most rosters known at once.
pub const MAX_ROSTERS: usize = 1 << 20;
const SHARDS: usize = 16;

/// The roster namespace (RFC 6121 §2.1).
pub const NS_ROSTER: &str = "jabber:iq:roster";

/// How a sender stands with a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// The recipient's roster is not known (never seen since start, or forgotten).
    Unknown,
    /// The recipient itself, a server or service of its domain, or a contact.
    Contact,
    /// Not a contact, but the recipient has contacts at the sender's domain.
    StrangerKnownDomain,
    /// Not a contact, and no contact at the sender's domain either.
    Stranger,
}

#[derive(Debug, Clone, Copy)]
struct Item {
    contact: bool,
    domain: u128,
}

#[derive(Debug, Default)]
struct Roster {
    items: HashMap<u128, Item>,
    /// Contacts per domain digest.
    domains: HashMap<u128, u32>,
}

impl Roster {
    fn set(&mut self, jid: u128, item: Option<Item>) {
        if let Some(old) = self.items.remove(&jid) {
            if old.contact {
                if let Some(n) = self.domains.get_mut(&old.domain) {
                    *n -= 1;
                    if *n == 0 {
                        self.domains.remove(&old.domain);
                    }
                }
            }
        }
        if let Some(new) = item {
            if new.contact {
                *self.domains.entry(new.domain).or_default() += 1;
            }
            self.items.insert(jid, new);
        }
    }
}

/// One roster item as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterItem {
    /// The contact's address (bare JID or a domain).
    pub jid: Jid,
    /// False for `subscription='remove'`.
    pub present: bool,
    /// Counts as a contact (see the module docs).
    pub contact: bool,
}

/// Read the items of a `<query xmlns='jabber:iq:roster'/>`; items with a malformed JID are
/// skipped (they can name nobody).
pub fn roster_items(query: &Element) -> Vec<RosterItem> {
    query
        .elements()
        .filter(|c| c.name == "item" && &*c.ns == NS_ROSTER)
        .filter_map(|c| {
            let jid = crate::jid::parse(c.attr("jid")?)?;
            let sub = c.attr("subscription").unwrap_or("none");
            let contact = matches!(sub, "to" | "from" | "both")
                || c.attr("ask") == Some("subscribe")
                || matches!(c.attr("approved"), Some("true" | "1"));
            Some(RosterItem { jid: Jid::from(jid.to_bare()), present: sub != "remove", contact })
        })
        .collect()
}

/// The rosters of local users, shared by every session.
#[derive(Debug)]
pub struct Contacts {
    digester: Digester,
    shards: Vec<Mutex<HashMap<u128, Roster>>>,
    total: AtomicUsize,
    capacity: usize,
    rosters: AtomicUsize,
}

impl Default for Contacts {
    fn default() -> Self {
        Self::with_capacity(MAX_CONTACTS)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Contacts {
    /// An empty table holding at most `capacity` items in all.
    pub fn with_capacity(capacity: usize) -> Self {
        Contacts {
            digester: Digester::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            total: AtomicUsize::new(0),
            capacity,
            rosters: AtomicUsize::new(0),
        }
    }

    fn d<T: Hash + ?Sized>(&self, v: &T) -> u128 {
        self.digester.digest(v)
    }

    fn shard(&self, owner: u128) -> MutexGuard<'_, HashMap<u128, Roster>> {
        lock(&self.shards[(owner % SHARDS as u128) as usize])
    }

    fn item(&self, i: &RosterItem) -> (u128, Item) {
        (self.d(i.jid.as_str()), Item { contact: i.contact, domain: self.d(i.jid.domain().as_str()) })
    }

    /// `owner`'s whole roster (a roster result): replaces what was known. False if it did not
    /// fit (then the roster is unknown).
    pub fn replace(&self, owner: &BareJid, items: &[RosterItem]) -> bool {
        let o = self.d(owner.as_str());
        let mut shard = self.shard(o);
        match shard.remove(&o) {
            Some(old) => {
                self.total.fetch_sub(old.items.len(), Ordering::Relaxed);
            }
            None => {
                let admitted = self
                    .rosters
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| (r < MAX_ROSTERS).then_some(r + 1));
                if admitted.is_err() {
                    return false;
                }
            }
        }
        let n = items.iter().filter(|i| i.present).count();
        if n > MAX_CONTACTS_PER_ROSTER || !self.reserve(n) {
            self.rosters.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        let mut roster = Roster::default();
        for i in items.iter().filter(|i| i.present) {
            let (jid, item) = self.item(i);
            roster.set(jid, Some(item));
        }
        // Duplicates in the result take one place each.
        self.total.fetch_sub(n - roster.items.len(), Ordering::Relaxed);
        shard.insert(o, roster);
        true
    }

    fn reserve(&self, n: usize) -> bool {
        self.total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| (t + n <= self.capacity).then_some(t + n))
            .is_ok()
    }

    /// Changes to `owner`'s roster (a roster push, or what the user's own subscription
    /// presences imply). Ignored while the roster is unknown: a push alone is not the roster.
    /// An item that does not fit makes the roster unknown.
    pub fn update(&self, owner: &BareJid, items: &[RosterItem]) {
        let o = self.d(owner.as_str());
        let mut shard = self.shard(o);
        let Some(roster) = shard.get_mut(&o) else { return };
        let mut overflow = false;
        for i in items {
            let (jid, item) = self.item(i);
            let had = roster.items.contains_key(&jid);
            match (i.present, had) {
                (true, false) if roster.items.len() >= MAX_CONTACTS_PER_ROSTER || !self.reserve(1) => {
                    overflow = true;
                    break;
                }
                (false, true) => {
                    self.total.fetch_sub(1, Ordering::Relaxed);
                }
                _ => {}
            }
            roster.set(jid, i.present.then_some(item));
        }
        if overflow {
            if let Some(r) = shard.remove(&o) {
                self.total.fetch_sub(r.items.len(), Ordering::Relaxed);
                self.rosters.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Mark `contact` as a contact of `owner` (the user asked for or granted a subscription),
    /// unless it is one already.
    pub fn add_contact(&self, owner: &BareJid, contact: &Jid) {
        let item = RosterItem { jid: Jid::from(contact.to_bare()), present: true, contact: true };
        self.update(owner, &[item]);
    }

    /// Is `owner`'s roster known?
    pub fn is_known(&self, owner: &BareJid) -> bool {
        let o = self.d(owner.as_str());
        self.shard(o).contains_key(&o)
    }

    /// How `sender` stands with `recipient` (see [`Relation`]).
    pub fn relation(&self, recipient: &BareJid, sender: &Jid) -> Relation {
        let sender_bare = sender.to_bare();
        if sender_bare == *recipient {
            return Relation::Contact;
        }
        // The user's own server and its services (a domain-only sender at or below the user's
        // domain): server announcements, MUC and pubsub services the operator runs.
        let (sd, rd) = (sender.domain().as_str(), recipient.domain().as_str());
        if sender.node().is_none() && (sd == rd || sd.strip_suffix(rd).is_some_and(|p| p.ends_with('.'))) {
            return Relation::Contact;
        }
        let o = self.d(recipient.as_str());
        let shard = self.shard(o);
        let Some(roster) = shard.get(&o) else { return Relation::Unknown };
        let contact = |key: &str| roster.items.get(&self.d(key)).is_some_and(|i| i.contact);
        if contact(sender_bare.as_str()) || contact(sd) {
            return Relation::Contact;
        }
        if roster.domains.contains_key(&self.d(sd)) {
            Relation::StrangerKnownDomain
        } else {
            Relation::Stranger
        }
    }

    /// Items held now.
    pub fn len(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// True when no item is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rosters known now.
    pub fn rosters(&self) -> usize {
        self.rosters.load(Ordering::Relaxed)
    }
}
