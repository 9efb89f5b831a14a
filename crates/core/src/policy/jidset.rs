//! JID patterns and JID/domain lists for policy conditions (`from`/`to` matching, README
//! "Policy": exact, bare, domain, wildcard, list).
//!
//! This module owns the pattern syntax ([`JidPattern`]) and two compiled lists, [`JidSet`] and
//! [`DomainSet`], whose lookup is a fixed handful of hash lookups plus one per parent label of the
//! domain (bounded by the longest listed parent), never a scan over entries. Patterns and inputs
//! are compared only in canonical form (invariant 3, addresses are enforced, docs/DESIGN.md):
//! patterns are prepared with [`crate::jid::parse`], so `Evil.Example` and `evil.example` are one
//! entry, and domains are further keyed in IDNA A-label form, so `ёлка.рф` and
//! `xn--80atc1g.xn--p1ai` are one domain (RFC 7622 §3.2.2). It never reads clocks, files or the
//! network.
//!
//! | pattern          | matches                                                              |
//! |------------------|----------------------------------------------------------------------|
//! | `user@dom/res`   | exactly that full JID (also `dom/res`)                               |
//! | `user@dom`       | that bare JID, with any resource or none                             |
//! | `*@dom`          | any user at exactly `dom`, any resource; not `dom` itself            |
//! | `dom`            | `dom` itself and every JID at it (`user@dom/res`, `dom/res`)         |
//! | `*.dom`          | any strict subdomain of `dom` and every JID at one; not `dom` itself |
//!
//! A plain `dom` deliberately covers the users at it: in a firewall, a `from` condition naming
//! `evil.example` is meant to stop everything that server sends. It does not cover subdomains;
//! write `*.dom` as well for that. `*` is accepted nowhere else (`bob*@d`, `a@d/*`, `*@*.d` are
//! errors rather than silently literal).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::jid::{self, BareJid, FullJid, Jid};

/// One JID pattern (syntax and meaning in the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JidPattern {
    /// `user@domain/resource` or `domain/resource`: exactly this full JID.
    Full(FullJid),
    /// `user@domain`: this bare JID, with any resource or none.
    Bare(BareJid),
    /// `*@domain`: any JID with a localpart at exactly this domain (canonical key).
    AnyUserAt(String),
    /// `domain`: this domain and every JID at it (canonical key).
    Domain(String),
    /// `*.domain`: every strict subdomain of this domain and every JID at one (canonical key).
    Subdomains(String),
}

impl JidPattern {
    /// Parse a pattern; surrounding whitespace is ignored. Errors say what is wrong and, where
    /// it helps, what to write instead.
    pub fn parse(s: &str) -> Result<JidPattern, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty JID pattern".into());
        }
        if let Some(domain) = s.strip_prefix("*@") {
            if domain.starts_with("*.") {
                return Err(format!(
                    "{s:?}: `*@*.domain` is not supported; `{domain}` already matches users at subdomains"
                ));
            }
            return wildcard_domain(s, domain).map(JidPattern::AnyUserAt);
        }
        if let Some(domain) = s.strip_prefix("*.") {
            let domain = wildcard_domain(s, domain)?;
            if is_ip_literal(&domain) {
                return Err(format!("{s:?}: an IP address has no subdomains"));
            }
            return Ok(JidPattern::Subdomains(domain));
        }
        if s.contains('*') {
            return Err(match s.strip_suffix("/*") {
                Some(bare) => format!("{s:?}: `*` is not a resource wildcard; write {bare:?} to match any resource"),
                None => format!("{s:?}: `*` is only allowed as `*@domain` or `*.domain`"),
            });
        }
        let parsed = jid::parse(s).ok_or_else(|| format!("{s:?} is not a valid JID"))?;
        Ok(match parsed.try_into_full() {
            Ok(full) => JidPattern::Full(full),
            Err(bare) if bare.node().is_none() => JidPattern::Domain(canonical_domain(bare.domain().as_str()).into()),
            Err(bare) => JidPattern::Bare(bare),
        })
    }

    /// Does `jid` match this pattern?
    pub fn matches(&self, jid: &Jid) -> bool {
        let keys = Keys::of(jid);
        match self {
            JidPattern::Full(full) => keys.full.as_deref() == Some(&*Keys::of(full).key()),
            JidPattern::Bare(bare) => *keys.bare == *Keys::of(bare).bare,
            JidPattern::AnyUserAt(domain) => keys.has_node && *keys.domain == **domain,
            JidPattern::Domain(domain) => *keys.domain == **domain,
            JidPattern::Subdomains(parent) => {
                !is_ip_literal(&keys.domain) && parent_domains(&keys.domain, usize::MAX).any(|p| p == parent)
            }
        }
    }
}

impl FromStr for JidPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JidPattern::parse(s)
    }
}

/// The canonical spelling, as accepted by [`JidPattern::parse`] (for `explain` and logs).
impl fmt::Display for JidPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JidPattern::Full(full) => write!(f, "{full}"),
            JidPattern::Bare(bare) => write!(f, "{bare}"),
            JidPattern::AnyUserAt(domain) => write!(f, "*@{domain}"),
            JidPattern::Domain(domain) => f.write_str(domain),
            JidPattern::Subdomains(parent) => write!(f, "*.{parent}"),
        }
    }
}

/// A compiled list of [`JidPattern`]s; a JID matches the set if it matches any pattern in it.
#[derive(Debug, Clone, Default)]
pub struct JidSet {
    full: HashSet<Box<str>>,
    bare: HashSet<Box<str>>,
    any_user_at: HashSet<Box<str>>,
    domains: DomainSet,
}

impl JidSet {
    /// Compile patterns given as text; an error names the index and the entry.
    pub fn from_entries<I, S>(entries: I) -> Result<JidSet, (usize, String)>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = JidSet::default();
        for (index, entry) in entries.into_iter().enumerate() {
            set.insert(&JidPattern::parse(entry.as_ref()).map_err(|why| (index, why))?);
        }
        Ok(set)
    }

    /// Compile already parsed patterns.
    pub fn from_patterns<'a>(patterns: impl IntoIterator<Item = &'a JidPattern>) -> JidSet {
        let mut set = JidSet::default();
        for pattern in patterns {
            set.insert(pattern);
        }
        set
    }

    /// Add one pattern.
    pub fn insert(&mut self, pattern: &JidPattern) {
        match pattern {
            JidPattern::Full(full) => {
                self.full.insert(Keys::of(full).key().into());
            }
            JidPattern::Bare(bare) => {
                self.bare.insert(Keys::of(bare).bare.into());
            }
            JidPattern::AnyUserAt(domain) => {
                self.any_user_at.insert(domain.as_str().into());
            }
            JidPattern::Domain(domain) => self.domains.insert_exact(domain),
            JidPattern::Subdomains(parent) => self.domains.insert_subdomains(parent),
        }
    }

    /// Whether the set has no patterns.
    pub fn is_empty(&self) -> bool {
        self.full.is_empty() && self.bare.is_empty() && self.any_user_at.is_empty() && self.domains.is_empty()
    }

    /// Does `jid` match any pattern of the set?
    pub fn matches(&self, jid: &Jid) -> bool {
        let keys = Keys::of(jid);
        keys.full.as_deref().is_some_and(|full| contains(&self.full, full))
            || contains(&self.bare, &keys.bare)
            || (keys.has_node && contains(&self.any_user_at, &keys.domain))
            || self.domains.matches_canonical(&keys.domain)
    }
}

/// A compiled list of domains for `from_domain_in`-style conditions.
///
/// Entries are `domain` (that domain exactly: a spam-domain list must not take a whole parent
/// zone by accident) or `*.domain` (every strict subdomain, not the domain itself; list both lines
/// to cover both). This is the same meaning as the [`JidPattern`] forms of the same spelling.
#[derive(Debug, Clone, Default)]
pub struct DomainSet {
    exact: HashSet<Box<str>>,
    subdomains_of: HashSet<Box<str>>,
    /// Most labels of a `*.` parent: longer parent suffixes of an input cannot match.
    max_parent_labels: usize,
}

impl DomainSet {
    /// Compile `domain` / `*.domain` entries; an error names the index and the entry.
    pub fn from_entries<I, S>(entries: I) -> Result<DomainSet, (usize, String)>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = DomainSet::default();
        for (index, entry) in entries.into_iter().enumerate() {
            let entry = entry.as_ref();
            match JidPattern::parse(entry) {
                Ok(JidPattern::Domain(domain)) => set.insert_exact(&domain),
                Ok(JidPattern::Subdomains(parent)) => set.insert_subdomains(&parent),
                Ok(_) => {
                    return Err((index, format!("{:?}: a domain list takes `domain` or `*.domain`", entry.trim())))
                }
                Err(why) => return Err((index, why)),
            }
        }
        Ok(set)
    }

    /// Whether the set has no entries.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.subdomains_of.is_empty()
    }

    /// Is `domain` — unprepared text, e.g. a stream header's `from` — in the set? Text that is not
    /// a valid domain matches nothing: it is rejected before policy runs (RFC 6120 §4.7.1).
    pub fn matches_domain(&self, domain: &str) -> bool {
        match jid::parse(domain) {
            Some(j) if j.node().is_none() && j.resource().is_none() => {
                self.matches_canonical(&canonical_domain(j.domain().as_str()))
            }
            _ => false,
        }
    }

    /// Is the domain of `jid` in the set?
    pub fn matches(&self, jid: &Jid) -> bool {
        self.matches_canonical(&canonical_domain(jid.domain().as_str()))
    }

    fn insert_exact(&mut self, domain: &str) {
        self.exact.insert(domain.into());
    }

    fn insert_subdomains(&mut self, parent: &str) {
        self.max_parent_labels = self.max_parent_labels.max(parent.split('.').count());
        self.subdomains_of.insert(parent.into());
    }

    fn matches_canonical(&self, domain: &str) -> bool {
        contains(&self.exact, domain)
            || (!self.subdomains_of.is_empty()
                && !is_ip_literal(domain)
                && parent_domains(domain, self.max_parent_labels).any(|p| self.subdomains_of.contains(p)))
    }
}

/// The lookup keys of one JID, with its domain in canonical form. Borrowed from the JID when the
/// domain is already ASCII (the common case: no allocation).
struct Keys<'a> {
    full: Option<Cow<'a, str>>,
    bare: Cow<'a, str>,
    domain: Cow<'a, str>,
    has_node: bool,
}

impl<'a> Keys<'a> {
    fn of(jid: &'a Jid) -> Keys<'a> {
        let s = jid.as_str();
        let bare_len = jid.resource().map_or(s.len(), |r| s.len() - r.as_str().len() - 1);
        let domain = canonical_domain(jid.domain().as_str());
        let has_node = jid.node().is_some();
        match domain {
            Cow::Borrowed(_) => Keys {
                full: jid.resource().map(|_| Cow::Borrowed(s)),
                bare: Cow::Borrowed(&s[..bare_len]),
                domain,
                has_node,
            },
            Cow::Owned(ref d) => {
                let bare = match jid.node() {
                    Some(node) => format!("{}@{d}", node.as_str()),
                    None => d.clone(),
                };
                let full = jid.resource().map(|r| Cow::Owned(format!("{bare}/{}", r.as_str())));
                Keys { full, bare: Cow::Owned(bare), domain, has_node }
            }
        }
    }

    /// The full key if there is a resource, else the bare key.
    fn key(&self) -> Cow<'a, str> {
        self.full.clone().unwrap_or_else(|| self.bare.clone())
    }
}

/// A prepared domain in the form lists are keyed by: IDNA A-labels (RFC 7622 §3.2.2 compares
/// domainparts as A-labels and U-labels alike), IPv6 literals in their one RFC 5952 spelling.
/// If conversion fails the prepared form is kept — patterns and inputs go through this same
/// function, so they still agree.
fn canonical_domain(domain: &str) -> Cow<'_, str> {
    if domain.is_ascii() {
        if let Some(v6) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            if let Ok(addr) = v6.parse::<Ipv6Addr>() {
                let canonical = format!("[{addr}]");
                if canonical != domain {
                    return Cow::Owned(canonical);
                }
            }
        }
        return Cow::Borrowed(domain);
    }
    match idna::domain_to_ascii(domain) {
        Ok(ascii) => Cow::Owned(ascii),
        Err(_) => Cow::Borrowed(domain),
    }
}

/// Parse the domain of a `*@domain` / `*.domain` pattern `s`.
fn wildcard_domain(s: &str, domain: &str) -> Result<String, String> {
    if domain.is_empty() {
        return Err(format!("{s:?}: missing domain after the wildcard"));
    }
    if domain.contains('*') {
        return Err(format!("{s:?}: only one leading wildcard is allowed"));
    }
    if domain.contains('/') {
        return Err(format!("{s:?}: a wildcard pattern cannot name a resource"));
    }
    match jid::parse(domain) {
        Some(j) if j.node().is_none() && j.resource().is_none() => Ok(canonical_domain(j.domain().as_str()).into()),
        _ => Err(format!("{s:?}: {domain:?} is not a valid domain")),
    }
}

fn is_ip_literal(domain: &str) -> bool {
    domain.starts_with('[') || domain.parse::<Ipv4Addr>().is_ok()
}

/// The strict parent domains of `domain` with at most `max_labels` labels, shortest first:
/// `a.b.example` → `example`, `b.example`.
fn parent_domains(domain: &str, max_labels: usize) -> impl Iterator<Item = &str> {
    domain.rmatch_indices('.').take(max_labels).map(move |(dot, _)| &domain[dot + 1..])
}

fn contains(set: &HashSet<Box<str>>, key: &str) -> bool {
    !set.is_empty() && set.contains(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn j(s: &str) -> Jid {
        jid::parse(s).unwrap()
    }

    fn p(s: &str) -> JidPattern {
        JidPattern::parse(s).unwrap()
    }

    /// Check one pattern alone and as a one-entry set, which must agree.
    fn check(pattern: &str, hits: &[&str], misses: &[&str]) {
        let pat = p(pattern);
        let set = JidSet::from_entries([pattern]).unwrap();
        for hit in hits {
            assert!(pat.matches(&j(hit)), "{pattern} should match {hit}");
            assert!(set.matches(&j(hit)), "set {pattern} should match {hit}");
        }
        for miss in misses {
            assert!(!pat.matches(&j(miss)), "{pattern} should not match {miss}");
            assert!(!set.matches(&j(miss)), "set {pattern} should not match {miss}");
        }
    }

    #[test]
    fn full_jids_match_exactly() {
        check(
            "Alice@Example.TEST/phone",
            &["alice@example.test/phone", "ALICE@example.test/phone"],
            &["alice@example.test", "alice@example.test/Phone", "alice@example.test/laptop", "bob@example.test/phone"],
        );
        check("example.test/admin", &["example.test/admin"], &["example.test", "a@example.test/admin"]);
        assert!(matches!(p("a@b.test/r"), JidPattern::Full(_)));
    }

    #[test]
    fn bare_jids_match_any_resource() {
        check(
            "alice@example.test",
            &["alice@example.test", "alice@example.test/phone", "Alice@EXAMPLE.test/x"],
            &["bob@example.test", "example.test", "alice@sub.example.test", "alice@example.test.evil"],
        );
    }

    #[test]
    fn any_user_at_a_domain() {
        check(
            "*@Evil.Example",
            &["bob@evil.example", "bob@evil.example/res", "BOB@EVIL.EXAMPLE"],
            &["evil.example", "evil.example/res", "bob@sub.evil.example", "bob@notevil.example"],
        );
    }

    #[test]
    fn a_domain_covers_itself_and_its_users_not_subdomains() {
        check(
            "Evil.Example",
            &["evil.example", "evil.example/res", "user@evil.example/res", "user@EVIL.example."],
            &["sub.evil.example", "user@sub.evil.example", "notevil.example", "evil.example.attacker.test"],
        );
    }

    #[test]
    fn subdomains_exclude_the_domain_itself() {
        check(
            "*.evil.example",
            &["sub.evil.example", "a.b.evil.example", "user@sub.evil.example/res"],
            &["evil.example", "user@evil.example", "notevil.example", "sub.notevil.example", "evil.example.test"],
        );
        check("*.example", &["evil.example", "a.b.example"], &["example", "example.test"]);
    }

    #[test]
    fn idn_domains_compare_as_a_labels() {
        check("*@ёлка.рф", &["bob@xn--80atc1g.xn--p1ai", "bob@ЁЛКА.рф"], &["ёлка.рф"]);
        check("xn--80atc1g.xn--p1ai", &["ёлка.рф", "bob@ёлка.рф/r"], &["елка.рф"]);
        check("*.рф", &["ёлка.рф", "a@xn--80atc1g.xn--p1ai"], &["рф"]);
        check("bob@ёлка.рф", &["bob@xn--80atc1g.xn--p1ai/r"], &["alice@ёлка.рф"]);
        check("bob@xn--80atc1g.xn--p1ai/r", &["bob@ёлка.рф/r"], &["bob@ёлка.рф"]);
        check("[::0:1]", &["[::1]", "a@[0::1]"], &["[::2]"]);
    }

    #[test]
    fn malformed_patterns_are_explained() {
        let err = |s: &str| JidPattern::parse(s).unwrap_err();
        assert_eq!(err("  "), "empty JID pattern");
        assert!(err("*@").contains("missing domain"));
        assert!(err("*.").contains("missing domain"));
        assert!(err("*@*.evil.example").contains("`*.evil.example` already matches users at subdomains"));
        assert!(err("*.*.evil.example").contains("only one leading wildcard"));
        assert!(err("*@evil.example/res").contains("cannot name a resource"));
        assert!(err("*@bob@evil.example").contains("not a valid domain"));
        assert!(err("*.1.2.3.4").contains("IP address has no subdomains"));
        assert!(err("bob*@evil.example").contains("only allowed as"));
        assert!(err("*").contains("only allowed as"));
        assert!(err("a@evil.example/*").contains("write \"a@evil.example\""));
        assert!(err("@@bad").contains("not a valid JID"));
        assert!(err("a@").contains("not a valid JID"));
    }

    #[test]
    fn display_round_trips() {
        for s in ["a@b.test/r", "a@b.test", "*@b.test", "b.test", "*.b.test", "b.test/r"] {
            assert_eq!(p(s).to_string(), s);
            assert_eq!(p(&p(s).to_string()), p(s));
        }
        assert_eq!(p(" Evil.Example ").to_string(), "evil.example");
    }

    #[test]
    fn sets_combine_patterns() {
        let set = JidSet::from_entries(["alice@a.test", "*@b.test", "c.test", "*.d.test", "eve@e.test/x"]).unwrap();
        for hit in ["alice@a.test/r", "bob@b.test", "c.test/r", "x@y.d.test", "eve@e.test/x"] {
            assert!(set.matches(&j(hit)), "{hit}");
        }
        for miss in ["bob@a.test", "b.test", "sub.c.test", "d.test", "eve@e.test", "eve@e.test/y"] {
            assert!(!set.matches(&j(miss)), "{miss}");
        }
        assert_eq!(JidSet::from_entries(["ok.test", "*x"]).unwrap_err().0, 1);
        assert!(JidSet::default().is_empty() && !set.is_empty());
        let patterns = [p("c.test")];
        assert!(JidSet::from_patterns(&patterns).matches(&j("u@c.test")));
    }

    #[test]
    fn domain_sets() {
        let set = DomainSet::from_entries(["Spam.Example", "*.bulk.example"]).unwrap();
        assert!(set.matches_domain("spam.example"));
        assert!(set.matches_domain("SPAM.example."));
        assert!(!set.matches_domain("sub.spam.example"));
        assert!(set.matches_domain("a.bulk.example"));
        assert!(!set.matches_domain("bulk.example"));
        assert!(!set.matches_domain("notspam.example"));
        assert!(!set.matches_domain("user@spam.example"));
        assert!(!set.matches_domain("@@"));
        assert!(set.matches(&j("user@spam.example/r")));
        assert!(set.matches(&j("user@x.bulk.example")));
        let (index, why) = DomainSet::from_entries(["ok.example", "bob@spam.example"]).unwrap_err();
        assert_eq!(index, 1);
        assert!(why.contains("takes `domain` or `*.domain`"), "{why}");
        assert!(DomainSet::from_entries(["*@spam.example"]).is_err());
        assert!(DomainSet::default().is_empty());
    }

    const PATTERNS: &[&str] = &[
        "alice@evil.example/r",
        "alice@evil.example",
        "*@evil.example",
        "evil.example",
        "*.evil.example",
        "*.example",
        "bob@sub.evil.example",
        "other.test",
        "*@other.test",
    ];
    const JIDS: &[&str] = &[
        "alice@evil.example/r",
        "alice@evil.example/s",
        "alice@evil.example",
        "bob@evil.example",
        "evil.example",
        "evil.example/r",
        "sub.evil.example",
        "bob@sub.evil.example/r",
        "example",
        "notevil.example",
        "other.test",
        "carol@other.test",
        "x.other.test",
    ];

    proptest! {
        #[test]
        fn matching_is_independent_of_entry_order(
            entries in prop::collection::vec(prop::sample::select(PATTERNS), 0..10).prop_shuffle(),
        ) {
            let forward = JidSet::from_entries(&entries).unwrap();
            let backward = JidSet::from_entries(entries.iter().rev()).unwrap();
            for s in JIDS {
                let jid = j(s);
                let any = entries.iter().any(|e| p(e).matches(&jid));
                prop_assert_eq!(forward.matches(&jid), any, "{}", s);
                prop_assert_eq!(backward.matches(&jid), any, "{}", s);
            }
        }
    }
}
