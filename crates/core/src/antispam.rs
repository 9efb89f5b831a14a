//! Anti-spam (SPIM) state: who is a contact of whom, how many distinct recipients a sender
//! addressed, which texts are arriving as a wave, who was reported as a spammer.
//!
//! Anti-spam is policy: the conditions that use this state (`stranger`, `stranger_domain`,
//! `roster_known`, `fanout`, `wave`, `reported`, `from_sha256_in`) are rule conditions like any
//! other, evaluated by [`crate::policy`] on the same path, in every chain, with the same
//! actions, audit and metrics. This module owns only the state behind them, shared by every
//! session of the gateway (it lives beside the rate buckets) and kept across policy reloads:
//!
//! - [`contacts`]: the local users' rosters, learned from what the gateway relays and fetched
//!   through the gateway's privileged component;
//! - [`fetch`]: the roster fetches sessions wait for;
//! - [`rtbl`]: real-time block lists fed by pubsub nodes;
//! - [`distinct`]: distinct recipients per sender (`fanout`) and reporters per reported JID;
//! - [`wave`]: text fingerprints and the waves they form;
//! - [`reports`]: XEP-0377 reports read from the user's XEP-0191 block commands.
//!
//! Everything is bounded (invariant 6, docs/DESIGN.md): keyed digests instead of strings,
//! per-key caps, table capacities, and per-source quotas where the traffic chooses the keys.
//! A key that cannot be admitted counts as over the limit (invariant 5, fail closed).
//!
//! Pure: no clock reads (the caller passes `now`), no I/O. Never imports `policy` or `session`
//! (they import it).

pub mod contacts;
pub mod distinct;
pub mod fetch;
pub mod reports;
pub mod rtbl;
#[cfg(test)]
mod tests;
pub mod wave;

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::jid::{BareJid, FullJid};
use crate::keyed::{KeyedTable, MAX_SHARDS};
use crate::stanza::Kind;
use crate::xml::Element;

pub use contacts::{Contacts, Relation};
use distinct::{Added, Distinct};
pub use wave::{Wave, WaveMatch, WaveSpec, Waves};

/// Most `fanout` keys (senders) tracked at once.
pub const MAX_FANOUT_KEYS: usize = 1 << 18;
/// Most reported JIDs tracked at once.
pub const MAX_REPORTED: usize = 1 << 16;
/// Distinct reporters kept per reported JID (`reported.reporters` is at most this).
pub const MAX_REPORTERS: usize = 64;
/// How long a report counts at most (`reported.window` is at most this).
pub const MAX_REPORT_AGE: Duration = Duration::from_secs(7 * 86_400);
/// Longest `report_threshold.ttl`.
pub const MAX_LISTED_TTL: Duration = Duration::from_secs(30 * 86_400);
/// Most JIDs on report-fed lists at once (all lists together); past it the entry that expires
/// first makes room. A JID gets here only when several local users reported it.
pub const MAX_LISTED: usize = 1 << 14;
/// Reported JIDs one reporter may have counted at once.
const REPORTS_PER_REPORTER: usize = 256;
/// Events waiting for a session to report them.
const MAX_PENDING: usize = 256;

/// 128-bit keyed digests (SipHash under a per-process random key, as [`crate::keyed`] does):
/// constant memory per remembered JID, no collision an outsider can aim for.
#[derive(Debug, Default)]
pub(crate) struct Digester {
    seed: RandomState,
}

impl Digester {
    pub(crate) fn digest<T: Hash + ?Sized>(&self, v: &T) -> u128 {
        let mut a = self.seed.build_hasher();
        a.write_u8(0);
        v.hash(&mut a);
        let mut b = self.seed.build_hasher();
        b.write_u8(1);
        v.hash(&mut b);
        u128::from(a.finish()) << 64 | u128::from(b.finish())
    }
}

/// `[antispam] report_threshold = { reporters = 3, window = "1h", list = "reported", ttl = "24h" }`:
/// a JID that many distinct users reported within the window goes on the named list for `ttl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportThreshold {
    /// Distinct reporters that list the JID.
    pub reporters: usize,
    /// Within this long.
    pub window: Duration,
    /// The list the JID is added to (usable by `from_in`/`to_in` like any JID list).
    pub list: String,
    /// How long it stays listed after the report that listed it.
    pub ttl: Duration,
}

/// Something worth an audit record and a metric, found while learning or evaluating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A wave was detected (once per wave).
    Wave {
        /// The rule whose `wave` condition detected it.
        rule: String,
        /// The wave.
        wave: Wave,
    },
    /// A user reported a JID (XEP-0377).
    Report {
        /// Who reported.
        reporter: BareJid,
        /// Who was reported.
        reported: BareJid,
        /// `spam`, `abuse` or `other`.
        reason: &'static str,
        /// The reporter's text.
        text: Option<String>,
        /// Distinct users who reported `reported` within [`MAX_REPORT_AGE`], this one included.
        reporters: usize,
    },
    /// A reported JID reached `[antispam] report_threshold` and was put on its list.
    Listed {
        /// Who.
        jid: BareJid,
        /// The list.
        list: String,
        /// Distinct reporters within the threshold's window.
        reporters: usize,
        /// How long it stays listed.
        ttl: Duration,
    },
    /// A JID's time on a report-fed list ran out.
    Unlisted {
        /// Who.
        jid: BareJid,
        /// The list.
        list: String,
    },
}

/// One copy of a text as a `wave` condition counts it, before any digest is taken.
#[derive(Debug, Clone, Copy)]
pub struct TextCopy<'a> {
    /// The fingerprint of its normal form.
    pub fingerprint: &'a wave::Signature,
    /// The normal form (for the sample).
    pub normal: &'a str,
    /// The sender's bare JID.
    pub sender: &'a str,
    /// The recipient's bare JID.
    pub recipient: &'a str,
}

/// The anti-spam state of the gateway.
#[derive(Debug)]
pub struct AntiSpam {
    /// Local users' rosters.
    pub contacts: Contacts,
    /// Roster fetches through the component (XEP-0356).
    pub fetch: fetch::RosterFetch,
    /// Text fingerprints and waves.
    pub waves: Waves,
    fanout: KeyedTable<Distinct>,
    reported: KeyedTable<Distinct>,
    digester: Digester,
    pending: Mutex<VecDeque<Event>>,
    /// Report-fed lists (`[antispam] report_threshold`): (list, bare JID) → listed until.
    listed: Mutex<std::collections::HashMap<(String, BareJid), Instant>>,
    waves_detected: AtomicU64,
    reports: AtomicU64,
}

impl Default for AntiSpam {
    fn default() -> Self {
        AntiSpam::new()
    }
}

impl AntiSpam {
    /// Empty tables of the default capacities.
    pub fn new() -> Self {
        AntiSpam {
            contacts: Contacts::default(),
            fetch: fetch::RosterFetch::default(),
            waves: Waves::default(),
            fanout: KeyedTable::new(MAX_FANOUT_KEYS, MAX_SHARDS),
            reported: KeyedTable::new(MAX_REPORTED, MAX_SHARDS),
            digester: Digester::default(),
            pending: Mutex::new(VecDeque::new()),
            listed: Mutex::new(std::collections::HashMap::new()),
            waves_detected: AtomicU64::new(0),
            reports: AtomicU64::new(0),
        }
    }

    /// A 64-bit keyed digest (items inside one key: recipients, senders, reporters).
    pub fn item_digest(&self, v: &str) -> u64 {
        self.digester.digest(v) as u64
    }

    /// Learn from a stanza the server sends to a session of `user` (chain `c2s-out`): roster
    /// results replace the user's roster, roster pushes change it (RFC 6121 §2.1.4, §2.1.6).
    /// Only iqs from the user's own account (no `from`, or its bare JID) are read: anyone else
    /// could otherwise write themselves into the roster.
    pub fn learn_from_server(&self, el: &Element, user: Option<&FullJid>) {
        let Some(user) = user else { return };
        if Kind::of(el) != Some(Kind::Iq) {
            return;
        }
        let own = match el.attr("from") {
            None => true,
            Some(f) => crate::jid::parse(f).is_some_and(|j| j == user.to_bare()),
        };
        let Some(query) = el.elements().find(|c| c.name == "query" && &*c.ns == contacts::NS_ROSTER) else { return };
        if !own {
            return;
        }
        let items = contacts::roster_items(query);
        match el.attr("type") {
            Some("result") => {
                self.contacts.replace(&user.to_bare(), &items);
            }
            Some("set") => self.contacts.update(&user.to_bare(), &items),
            _ => {}
        }
    }

    /// Before a session's roster request goes to the server (chain `c2s-in`): while the
    /// gateway does not know the user's roster, remove the request's roster version (RFC 6121
    /// §2.6, XEP-0237), so that the server answers with the whole roster instead of an empty
    /// "unchanged" result the gateway could learn nothing from. A client must accept a complete
    /// roster whatever version it sent (RFC 6121 §2.6.3), so this costs it one full roster.
    /// True if the request was changed.
    pub fn request_full_roster(&self, el: &mut Element, user: Option<&FullJid>) -> bool {
        let Some(user) = user else { return false };
        if el.name != "iq" || el.attr("type") != Some("get") {
            return false;
        }
        let own = el.attr("to").is_none_or(|t| crate::jid::parse(t).is_some_and(|j| j == user.to_bare()));
        if !own || self.contacts.is_known(&user.to_bare()) {
            return false;
        }
        for n in &mut el.children {
            if let crate::xml::Node::Element(q) = n {
                if q.is(contacts::NS_ROSTER, "query") && q.remove_attr("ver").is_some() {
                    return true;
                }
            }
        }
        false
    }

    /// Learn from a stanza a session of `user` sends (chain `c2s-in`): a `subscribe` makes the
    /// addressee pending-out, a `subscribed` approves or pre-approves it (RFC 6121 §3.1.2,
    /// §3.4), both contacts from now on, ahead of the server's roster push; XEP-0377 reports
    /// in block commands are counted. Returns the reports, to be audited.
    /// With `threshold`, a reported JID that reaches it is put on its list (one more event).
    pub fn learn_from_user(
        &self,
        el: &Element,
        user: Option<&FullJid>,
        now: Instant,
        threshold: Option<&ReportThreshold>,
    ) -> Vec<Event> {
        let Some(user) = user else { return Vec::new() };
        match Kind::of(el) {
            Some(Kind::Presence) if matches!(el.attr("type"), Some("subscribe" | "subscribed")) => {
                if let Some(to) = el.attr("to").and_then(crate::jid::parse) {
                    self.contacts.add_contact(&user.to_bare(), &to);
                }
                Vec::new()
            }
            Some(Kind::Iq) => {
                let mut out = Vec::new();
                for r in reports::reports_in(el) {
                    let reported = r.reported.clone();
                    out.push(self.record_report(user, r, now));
                    if let Some(t) = threshold {
                        out.extend(self.apply_threshold(t, reported, now));
                    }
                }
                out
            }
            _ => Vec::new(),
        }
    }

    fn record_report(&self, user: &FullJid, r: reports::Report, now: Instant) -> Event {
        self.reports.fetch_add(1, Ordering::Relaxed);
        let reporter = user.to_bare();
        let item = self.item_digest(reporter.as_str());
        let key = ("reported", r.reported.as_str());
        let source = ("reporter", reporter.as_str());
        let reporters = self
            .reported
            .update(&key, &source, REPORTS_PER_REPORTER, now, |d| {
                let _ = d.add(item, now, MAX_REPORT_AGE, MAX_REPORTERS);
                d.count(now, MAX_REPORT_AGE)
            })
            .unwrap_or(0);
        Event::Report { reporter, reported: r.reported, reason: r.reason, text: r.text, reporters }
    }

    /// `[antispam] report_threshold`: list `jid` when enough distinct users reported it
    /// within the window; a JID listed already gets its time renewed (no second event).
    fn apply_threshold(&self, t: &ReportThreshold, jid: BareJid, now: Instant) -> Option<Event> {
        let reporters = self.reporters(&jid, t.window, now);
        if reporters < t.reporters {
            return None;
        }
        let until = now + t.ttl;
        let mut listed = self.listed.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (t.list.clone(), jid.clone());
        let fresh = listed.get(&key).is_none_or(|&u| u <= now);
        if fresh && listed.len() >= MAX_LISTED && !listed.contains_key(&key) {
            // Full: the entry that would leave first makes room (bounded, invariant 6).
            let soonest = listed.iter().min_by_key(|(_, &u)| u).map(|(k, _)| k.clone());
            if let Some(k) = soonest {
                listed.remove(&k);
            }
        }
        listed.insert(key, until);
        fresh.then(|| Event::Listed { jid, list: t.list.clone(), reporters, ttl: t.ttl })
    }

    /// Is `jid` (a bare JID's canonical string) on the report-fed list `list` at `now`?
    pub fn is_listed(&self, list: &str, jid: &BareJid, now: Instant) -> bool {
        let listed = self.listed.lock().unwrap_or_else(PoisonError::into_inner);
        // Keyed by owned strings: a lookup clones the key once (lists are small and only
        // consulted by rules that name them).
        listed.get(&(list.to_owned(), jid.clone())).is_some_and(|&u| u > now)
    }

    /// The JIDs on the report-fed list `list`, with the time each has left.
    pub fn listed(&self, list: &str, now: Instant) -> Vec<(BareJid, Duration)> {
        let listed = self.listed.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<(BareJid, Duration)> = listed
            .iter()
            .filter(|((l, _), &u)| l == list && u > now)
            .map(|((_, j), &u)| (j.clone(), u - now))
            .collect();
        out.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        out
    }

    /// Remove the entries whose time ran out; one [`Event::Unlisted`] each.
    pub fn expire_listed(&self, now: Instant) -> Vec<Event> {
        let mut listed = self.listed.lock().unwrap_or_else(PoisonError::into_inner);
        let gone: Vec<(String, BareJid)> = listed.iter().filter(|(_, &u)| u <= now).map(|(k, _)| k.clone()).collect();
        gone.into_iter()
            .map(|k| {
                listed.remove(&k);
                Event::Unlisted { list: k.0, jid: k.1 }
            })
            .collect()
    }

    /// Distinct users who reported `jid` within `window` of `now`.
    pub fn reporters(&self, jid: &BareJid, window: Duration, now: Instant) -> usize {
        self.reported.read(&("reported", jid.as_str()), |d| d.count(now, window)).unwrap_or(0)
    }

    /// Count `recipient` among the distinct recipients of `key` (a sender) in the `fanout`
    /// condition `ns`; true when it is past the first `recipients` within `window` (also when
    /// `source` may not add the key: fail closed).
    #[allow(clippy::too_many_arguments)]
    pub fn fanout<S: Hash + ?Sized>(
        &self,
        ns: u64,
        key: &str,
        source: &S,
        quota: usize,
        recipient: &str,
        recipients: usize,
        window: Duration,
        now: Instant,
    ) -> bool {
        let item = self.item_digest(recipient);
        let added = self.fanout.update(&(ns, key), &(ns, source), quota, now, |d| d.add(item, now, window, recipients));
        matches!(added, Ok(Added::Over) | Err(_))
    }

    /// Count a copy in this gateway's wave table (keyed digests of the JIDs).
    pub fn wave_local(&self, spec: &WaveSpec, copy: &TextCopy<'_>, now: Instant) -> Option<WaveMatch> {
        let c = wave::Copy {
            fingerprint: copy.fingerprint,
            normal: copy.normal,
            sender: self.item_digest(copy.sender),
            recipient: self.item_digest(copy.recipient),
        };
        self.waves.observe(spec, c, now)
    }

    /// Queue an event for the next session that reports (a wave found during evaluation).
    pub fn push_event(&self, e: Event) {
        if matches!(e, Event::Wave { .. }) {
            self.waves_detected.fetch_add(1, Ordering::Relaxed);
        }
        let mut q = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if q.len() < MAX_PENDING {
            q.push_back(e);
        }
    }

    /// The queued events (each reported once, by whoever takes it).
    pub fn take_events(&self) -> Vec<Event> {
        let mut q = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        q.drain(..).collect()
    }

    /// Waves detected since start.
    pub fn waves_detected(&self) -> u64 {
        self.waves_detected.load(Ordering::Relaxed)
    }

    /// Reports recorded since start.
    pub fn reports_recorded(&self) -> u64 {
        self.reports.load(Ordering::Relaxed)
    }
}
