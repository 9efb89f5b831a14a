//! The policy engine: ordered rules per chain, compiled into matchers, evaluated per stanza.
//!
//! [`Policy::compile`] turns a [`PolicyConfig`] into one program: every keyword of every rule in
//! one Aho-Corasick automaton, every regex in one `RegexSet`, JIDs and domains in hash sets with
//! suffix lookups, URLs in host/path tables, addresses in per-prefix hash sets. Evaluating a
//! stanza ([`Policy::evaluate`]) computes each fact once (the text, its folded form, their
//! keyword and regex hits, the URLs in them) and walks the chain's rules; first matching terminal rule wins, `log` rules
//! and `log_only` rules are recorded and passed over. No list scan anywhere: lookups in JID,
//! domain, URL and address lists cost the same at 10 or 100,000 entries; the keyword scan is
//! linear in the body, with a per-byte constant that grows past 10,000 keywords (DFA below,
//! a compact NFA above; `benches/policy.rs`).
//!
//! Pure like the rest of the core: the caller passes `now` and the shared [`RateTable`]; nothing
//! here reads a clock or a file. It never fails at evaluation time: everything that can be
//! wrong is refused by `compile`, with the file and line it came from.

#[cfg(test)]
mod antispam_tests;
mod cidrset;
mod compile;
pub mod file;
pub mod fold;
pub mod jidset;
pub mod rate;
mod rewrite;
pub mod s2s;
pub mod spec;
#[cfg(test)]
mod tests;
pub mod text;
pub mod url;
mod verdict;
pub mod wrapped;

use std::borrow::Cow;
use std::cell::OnceCell;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use aho_corasick::AhoCorasick;
use regex::RegexSet;

use crate::jid::{self, FullJid, Jid};
use crate::stanza::{Kind, StanzaCondition};
use crate::stream::{Condition as StreamCondition, NS_CLIENT, NS_SERVER};
use crate::xml::Element;

use cidrset::CidrSet;
use jidset::{DomainSet, JidSet};
pub use rate::{RateStore, RateTable};
pub use spec::{AuditConfig, Chain, PolicyConfig};
use url::{NormalizedUrl, UrlSet};
pub use verdict::{Disposition, Hit, Outcome, RuleAction, Verdict};
pub use wrapped::{Evaluation, WrappedVerdict, Wrapper};

/// XHTML-IM (XEP-0071): formatted bodies many clients show instead of the plain one.
pub const NS_XHTML_IM: &str = "http://jabber.org/protocol/xhtml-im";

/// What a stanza is evaluated against besides itself.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Which chain.
    pub chain: Chain,
    /// The session's authenticated JID.
    pub user: Option<&'a FullJid>,
    /// The client connection's source address.
    pub source_ip: IpAddr,
}

/// One step of an element path: a namespace and a local name (`*` for any name).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    ns: String,
    name: Option<String>,
}

impl Step {
    fn matches(&self, el: &Element) -> bool {
        *el.ns == *self.ns && self.name.as_deref().is_none_or(|n| n == el.name)
    }
}

/// A compiled condition.
#[derive(Debug)]
enum Cond {
    Kind(Vec<Kind>),
    Type(Vec<String>),
    From(Arc<JidSet>),
    To(Arc<JidSet>),
    User(Arc<JidSet>),
    FromDomain(Arc<DomainSet>),
    ToDomain(Arc<DomainSet>),
    SourceIp(Arc<CidrSet>),
    Payload(Vec<String>),
    Path(Vec<Vec<Step>>),
    /// A keyword group of the shared automaton.
    Keywords(usize),
    /// Indices into the shared regex set over the folded text, or (`raw`) over the text as written.
    Regex {
        raw: bool,
        indices: Vec<usize>,
    },
    Urls(Arc<UrlSet>),
    Rate(usize),
    /// An anti-spam relation test on the recipient's roster, and the value it must have.
    Relation(RelationTest, bool),
    FromSha256(Arc<std::collections::HashSet<[u8; 32]>>),
    Reported {
        reporters: usize,
        window: std::time::Duration,
    },
    Fanout(Box<FanoutCond>),
    Wave(Box<WaveCond>),
    /// The sender (or, `to`, the recipient) is on the report-fed list ([`crate::antispam`]).
    Listed {
        list: Arc<str>,
        to: bool,
    },
    Any(Vec<Vec<Cond>>),
    Not(Vec<Cond>),
}

/// Which roster question a `stranger`/`stranger_domain`/`roster_known` condition asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RelationTest {
    Stranger,
    StrangerDomain,
    RosterKnown,
}

/// A compiled `fanout` condition.
#[derive(Debug)]
struct FanoutCond {
    ns: u64,
    recipients: usize,
    window: std::time::Duration,
    key: spec::RateKey,
    quota: usize,
}

/// A compiled `wave` condition.
#[derive(Debug)]
struct WaveCond {
    spec: crate::antispam::WaveSpec,
    rule: Arc<str>,
}

/// What a rule does, compiled.
#[derive(Debug)]
enum Action {
    Pass,
    Drop,
    Bounce { condition: StanzaCondition, text: Option<String> },
    Close { condition: StreamCondition, text: Option<String> },
    Strip { payload: Vec<String>, paths: Vec<Vec<Step>> },
    Mask(rewrite::Masker),
    Log,
    Quarantine,
}

impl Action {
    fn kind(&self) -> RuleAction {
        match self {
            Action::Pass => RuleAction::Pass,
            Action::Drop => RuleAction::Drop,
            Action::Bounce { .. } => RuleAction::Bounce,
            Action::Close { .. } => RuleAction::Close,
            Action::Strip { .. } => RuleAction::Strip,
            Action::Mask(_) => RuleAction::Mask,
            Action::Log => RuleAction::Log,
            Action::Quarantine => RuleAction::Quarantine,
        }
    }

    fn condition(&self) -> Option<&'static str> {
        match self {
            Action::Bounce { condition, .. } => Some(condition.as_str()),
            Action::Close { condition, .. } => Some(condition.as_str()),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Rule {
    name: Arc<str>,
    when: Vec<Cond>,
    action: Action,
    log_only: bool,
}

/// A limiter as the evaluator needs it.
#[derive(Debug)]
struct Limiter {
    name: String,
    limit: rate::Limit,
    key: spec::RateKey,
}

/// A compiled policy. Cheap to share (`Arc`); replaced as a whole on reload.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    /// Rule indices per chain, in order.
    chains: [Vec<usize>; 4],
    /// Per chain and stanza kind ([`kind_slot`]): the chain's rules that can match that kind, in
    /// order. A rule whose top-level `kind` condition leaves a kind out is not in that kind's
    /// list, so a presence never walks the message rules (100 regex rules in `bench/run.sh`).
    by_kind: [[Vec<usize>; KIND_SLOTS]; 4],
    /// Per chain and stanza kind: some rule there asks about rosters.
    asks_roster: [[bool; KIND_SLOTS]; 4],
    defaults: [Outcome; 4],
    /// All keywords, folded; pattern index → keyword groups containing it.
    keywords: Option<AhoCorasick>,
    keyword_groups: Vec<Vec<usize>>,
    keyword_group_count: usize,
    /// Regexes over the folded text, and (`regex_raw` rules) over the text as written.
    regexes: Option<RegexSet>,
    raw_regexes: Option<RegexSet>,
    limiters: Vec<Limiter>,
    audit: AuditConfig,
    /// `[s2s]` domain policy.
    s2s: s2s::S2sRules,
    /// Some rule asks about rosters: sessions learn them ([`crate::antispam::contacts`]).
    uses_contacts: bool,
    /// The `file` chain's rules.
    file: Arc<file::FileRules>,
    /// `[antispam] report_threshold`: reported JIDs go on a list for a while.
    report_threshold: Option<crate::antispam::ReportThreshold>,
}

/// Kinds a rule index is kept for: message, presence, iq, and anything else.
const KIND_SLOTS: usize = 4;

fn kind_slot(kind: Option<Kind>) -> usize {
    match kind {
        Some(Kind::Message) => 0,
        Some(Kind::Presence) => 1,
        Some(Kind::Iq) => 2,
        None => 3,
    }
}

/// The per-chain, per-kind rule lists (see `Policy::by_kind`). Only conditions every stanza must
/// meet (the rule's top level: its conditions are all required) are used to leave a rule out,
/// so a rule is left out only where it could never match.
fn kind_index(rules: &[Rule], chains: &[Vec<usize>; 4]) -> [[Vec<usize>; KIND_SLOTS]; 4] {
    let slots = [Some(Kind::Message), Some(Kind::Presence), Some(Kind::Iq), None];
    chains.each_ref().map(|chain| {
        slots.map(|kind| {
            chain
                .iter()
                .copied()
                .filter(|&i| {
                    rules[i].when.iter().all(|c| match c {
                        Cond::Kind(kinds) => kind.is_some_and(|k| kinds.contains(&k)),
                        _ => true,
                    })
                })
                .collect()
        })
    })
}

/// Facts about one stanza, each computed at most once per evaluation.
struct Facts<'a> {
    el: &'a Element,
    /// The stanza's kind, looked up once rather than per `kind` condition.
    kind: Option<Kind>,
    ctx: &'a Context<'a>,
    /// A stanza wrapped in another (`wrapped`): its own `from` names its sender on every chain.
    wrapped: bool,
    /// Borrowed when it is the session's own JID (no copy per stanza).
    from: OnceCell<Option<Cow<'a, Jid>>>,
    to: OnceCell<Option<Cow<'a, Jid>>>,
    text: OnceCell<Cow<'a, str>>,
    /// The text folded ([`fold`]); `None` when folding leaves it as it is.
    folded: OnceCell<Option<String>>,
    keyword_hits: OnceCell<Vec<bool>>,
    regex_hits: OnceCell<Vec<bool>>,
    raw_regex_hits: OnceCell<Vec<bool>>,
    urls: OnceCell<(Vec<NormalizedUrl>, bool)>,
    /// How the sender stands with the recipient; `None`: not judged (no sender, or a recipient
    /// addressed by full JID).
    relation: OnceCell<Option<crate::antispam::Relation>>,
    /// The text's normal form and fingerprint ([`crate::antispam::wave`]).
    fingerprint: OnceCell<(String, Box<crate::antispam::wave::Signature>)>,
    /// What an anti-spam condition of the rule being evaluated found.
    note: std::cell::RefCell<Option<String>>,
}

/// The text of a message's `<body/>` children (all languages, nested text included), joined by
/// newlines: what `[audit] include_body` records. A body in `jabber:server` (or the stanza's own
/// namespace) is a body too: servers deliver those (RFC 6120 §4.8.3 leaves the content namespace
/// of a stanza to its stream).
pub fn body_text(el: &Element) -> String {
    let mut out = String::new();
    let is_body = |c: &Element| c.name == "body" && (*c.ns == *NS_CLIENT || *c.ns == *NS_SERVER || c.ns == el.ns);
    for b in el.elements().filter(|c| is_body(c)) {
        if !out.is_empty() {
            out.push('\n');
        }
        all_text(b, &mut out);
    }
    out
}

fn all_text(el: &Element, out: &mut String) {
    for n in &el.children {
        match n {
            crate::xml::Node::Text(t) => out.push_str(t),
            crate::xml::Node::Element(c) => all_text(c, out),
        }
    }
}

impl<'a> Facts<'a> {
    fn new(el: &'a Element, ctx: &'a Context<'a>, wrapped: bool) -> Self {
        Facts {
            el,
            kind: Kind::of(el),
            ctx,
            wrapped,
            from: OnceCell::new(),
            to: OnceCell::new(),
            text: OnceCell::new(),
            folded: OnceCell::new(),
            keyword_hits: OnceCell::new(),
            regex_hits: OnceCell::new(),
            raw_regex_hits: OnceCell::new(),
            urls: OnceCell::new(),
            relation: OnceCell::new(),
            fingerprint: OnceCell::new(),
            note: std::cell::RefCell::new(None),
        }
    }

    /// The sender's relation to the recipient (see [`crate::antispam::contacts`]). Like
    /// Prosody's `mod_anti_spam`, only stanzas addressed to a bare JID are judged: one
    /// addressed to a full JID comes from someone the user gave it to (a contact with
    /// presence, a room it joined).
    fn relation(&self, rates: &dyn RateStore) -> Option<crate::antispam::Relation> {
        *self.relation.get_or_init(|| {
            let to = self.to()?;
            if !to.is_bare() {
                return None;
            }
            Some(rates.antispam().contacts.relation(&to.to_bare(), self.from()?))
        })
    }

    fn fingerprint(&self) -> &(String, Box<crate::antispam::wave::Signature>) {
        self.fingerprint.get_or_init(|| {
            let normal = crate::antispam::wave::normalize(self.text(), fold::fold);
            let fp = Box::new(crate::antispam::wave::minhash(&normal));
            (normal, fp)
        })
    }

    /// The sender. On c2s-in it is the session's bound JID: the session stamps every client
    /// stanza's `from` with it (RFC 6120 §8.1.2.1) before policy, so no parse is needed. On
    /// c2s-out it is the `from` attribute, else the user's server.
    fn from(&self) -> Option<&Jid> {
        let parse = |s: &str| jid::parse(s).map(Cow::Owned);
        self.from
            .get_or_init(|| match (self.ctx.chain, self.el.attr("from")) {
                (_, Some(f)) if self.wrapped => parse(f),
                (Chain::C2sIn, _) => self.ctx.user.map(|u| Cow::Borrowed(&**u)),
                (Chain::C2sOut, Some(f)) => parse(f),
                (Chain::C2sOut, None) => self.ctx.user.and_then(|u| parse(u.domain().as_str())),
                // s2s stanzas carry both addresses (checked before policy, RFC 6120 §8.1.2.2).
                (Chain::S2sIn | Chain::S2sOut, f) => f.and_then(parse),
            })
            .as_deref()
    }

    /// The recipient: the `to` attribute, else the user's own account (c2s-in) or the user's
    /// full JID (c2s-out).
    fn to(&self) -> Option<&Jid> {
        self.to
            .get_or_init(|| match self.el.attr("to") {
                Some(t) => jid::parse(t).map(Cow::Owned),
                None => match self.ctx.chain {
                    Chain::C2sIn => self.ctx.user.map(|u| Cow::Owned(Jid::from(u.to_bare()))),
                    Chain::C2sOut => self.ctx.user.map(|u| Cow::Borrowed(&**u)),
                    Chain::S2sIn | Chain::S2sOut => None,
                },
            })
            .as_deref()
    }

    /// The text as written.
    fn text(&self) -> &str {
        self.text.get_or_init(|| text::stanza_text(self.el))
    }

    /// The text folded: what keywords and (unless `regex_raw`) regexes are matched against.
    fn folded(&self) -> &str {
        let folded = self.folded.get_or_init(|| match fold::fold(self.text()) {
            Cow::Borrowed(_) => None,
            Cow::Owned(f) => Some(f),
        });
        folded.as_deref().unwrap_or_else(|| self.text())
    }

    fn keyword_hit(&self, policy: &Policy, group: usize) -> bool {
        let hits = self.keyword_hits.get_or_init(|| {
            let mut hits = vec![false; policy.keyword_group_count];
            if let Some(ac) = &policy.keywords {
                for m in ac.find_overlapping_iter(self.folded()) {
                    for &g in &policy.keyword_groups[m.pattern().as_usize()] {
                        hits[g] = true;
                    }
                }
            }
            hits
        });
        hits.get(group).copied().unwrap_or(false)
    }

    fn regex_hit(&self, policy: &Policy, raw: bool, indices: &[usize]) -> bool {
        let (cell, set) =
            if raw { (&self.raw_regex_hits, &policy.raw_regexes) } else { (&self.regex_hits, &policy.regexes) };
        let hits = cell.get_or_init(|| {
            let mut hits = vec![false; set.as_ref().map_or(0, RegexSet::len)];
            if let Some(set) = set {
                // The text is looked up only here, once: every later regex rule reads `hits`.
                let text = if raw { self.text() } else { self.folded() };
                for i in set.matches(text).iter() {
                    hits[i] = true;
                }
            }
            hits
        });
        indices.iter().any(|&i| hits.get(i).copied().unwrap_or(false))
    }

    /// Links in the text (its character data and link attributes: XEP-0066 `<url/>`, XEP-0372
    /// `uri`, XHTML-IM `href`/`src`, XEP-0447 url-data `target`, …), and whether every one was
    /// seen (a text with more links than the extractor's bounds is not complete). A text that
    /// folding changes beyond ASCII case is read folded too: a link spelled with full-width
    /// letters or broken by invisible characters is the link it shows.
    fn urls(&self) -> &(Vec<NormalizedUrl>, bool) {
        self.urls.get_or_init(|| {
            let mut urls = Vec::new();
            let text = self.text();
            let mut complete = url::extract_urls_into(text, &mut urls) == url::Scan::Complete;
            if !text.is_ascii() && self.folded() != text {
                complete &= url::extract_urls_into(self.folded(), &mut urls) == url::Scan::Complete;
            }
            (urls, complete)
        })
    }
}

/// Does some descendant chain below `el` follow `path`?
fn has_path(el: &Element, path: &[Step]) -> bool {
    match path.split_first() {
        None => true,
        Some((step, rest)) => el.elements().any(|c| step.matches(c) && has_path(c, rest)),
    }
}

impl Policy {
    /// Compile `config`; errors name the file and line of the offending value.
    pub fn compile(config: &PolicyConfig) -> Result<Policy, crate::origin::ConfigError> {
        compile::compile(config)
    }

    /// True if no rule applies to `chain` and its default is pass: evaluation can be skipped.
    pub fn is_pass_all(&self, chain: Chain) -> bool {
        self.chains[chain.index()].is_empty() && self.defaults[chain.index()] == Outcome::Pass
    }

    /// The federation domain policy (`[s2s]`).
    pub fn s2s(&self) -> &s2s::S2sRules {
        &self.s2s
    }

    /// True if a rule asks about rosters (`stranger`, `stranger_domain`, `roster_known`):
    /// sessions then learn their users' rosters.
    pub fn uses_contacts(&self) -> bool {
        self.uses_contacts
    }

    /// The `file` chain's rules (the `[file_transfer]` checks follow them).
    pub fn file_rules(&self) -> &Arc<file::FileRules> {
        &self.file
    }

    /// Whose roster a rule of this stanza's chain would ask about: the recipient's bare JID,
    /// when some rule of the chain for this kind of stanza has a `stranger`, `stranger_domain`
    /// or `roster_known` condition and the stanza is one such a condition judges (addressed to
    /// a bare JID, with a sender). What the session waits for when the roster is unknown
    /// ([`crate::antispam::fetch`]).
    pub fn roster_owner(&self, el: &Element, ctx: &Context<'_>) -> Option<jid::BareJid> {
        let kind = Kind::of(el);
        if !self.asks_roster[ctx.chain.index()][kind_slot(kind)] {
            return None;
        }
        let facts = Facts::new(el, ctx, false);
        let (to, from) = (facts.to()?, facts.from()?);
        // The user itself is always a contact: no roster needed (its own presence broadcasts).
        if !to.is_bare() || from.to_bare() == to.to_bare() {
            return None;
        }
        Some(to.to_bare())
    }

    /// `[antispam] report_threshold`, if configured.
    pub fn report_threshold(&self) -> Option<&crate::antispam::ReportThreshold> {
        self.report_threshold.as_ref()
    }

    /// The audit settings.
    pub fn audit(&self) -> &AuditConfig {
        &self.audit
    }

    /// Number of rules.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Decide what happens to stanza `el` on its own (see [`Policy::evaluate_stanza`] for the
    /// stanzas it wraps).
    pub fn evaluate(&self, el: &Element, ctx: &Context<'_>, rates: &dyn RateStore, now: Instant) -> Verdict {
        self.evaluate_as(el, ctx, rates, now, false)
    }

    /// `evaluate`, for a stanza wrapped in another when `wrapped`.
    fn evaluate_as(
        &self,
        el: &Element,
        ctx: &Context<'_>,
        rates: &dyn RateStore,
        now: Instant,
        wrapped: bool,
    ) -> Verdict {
        let facts = Facts::new(el, ctx, wrapped);
        let mut hits = Vec::new();
        for &i in &self.by_kind[ctx.chain.index()][kind_slot(facts.kind)] {
            let rule = &self.rules[i];
            if !self.all(&rule.when, &facts, rates, now) {
                facts.note.borrow_mut().take();
                continue;
            }
            hits.push(Hit {
                rule: rule.name.clone(),
                action: rule.action.kind(),
                log_only: rule.log_only,
                condition: rule.action.condition(),
                note: facts.note.borrow_mut().take(),
            });
            if rule.log_only {
                continue;
            }
            let outcome = match &rule.action {
                Action::Log => continue,
                Action::Pass => Outcome::Pass,
                Action::Drop => Outcome::Drop,
                Action::Bounce { condition, text } => Outcome::Bounce { condition: *condition, text: text.clone() },
                Action::Close { condition, text } => Outcome::Close { condition: *condition, text: text.clone() },
                Action::Strip { payload, paths } => Outcome::Rewrite(rewrite::strip(el, payload, paths)),
                Action::Mask(masker) => Outcome::Rewrite(masker.mask(el)),
                Action::Quarantine => Outcome::Quarantine,
            };
            return Verdict { outcome, rule: Some(rule.name.clone()), hits };
        }
        Verdict { outcome: self.defaults[ctx.chain.index()].clone(), rule: None, hits }
    }

    fn all(&self, conds: &[Cond], f: &Facts<'_>, rates: &dyn RateStore, now: Instant) -> bool {
        conds.iter().all(|c| self.holds(c, f, rates, now))
    }

    fn holds(&self, c: &Cond, f: &Facts<'_>, rates: &dyn RateStore, now: Instant) -> bool {
        match c {
            Cond::Kind(kinds) => f.kind.is_some_and(|k| kinds.contains(&k)),
            Cond::Type(types) => {
                let ty = f.el.attr("type").unwrap_or(match f.kind {
                    Some(Kind::Message) => "normal",
                    Some(Kind::Presence) => "available",
                    _ => "",
                });
                types.iter().any(|t| t == ty)
            }
            Cond::From(set) => f.from().is_some_and(|j| set.matches(j)),
            Cond::To(set) => f.to().is_some_and(|j| set.matches(j)),
            Cond::User(set) => f.ctx.user.is_some_and(|u| set.matches(&Jid::from(u.clone()))),
            // The JID is prepared already (`jid::parse` to a fixed point, or the bound JID): its
            // domain is looked up as it is, not parsed a second time as text.
            Cond::FromDomain(set) => f.from().is_some_and(|j| set.matches(j)),
            Cond::ToDomain(set) => f.to().is_some_and(|j| set.matches(j)),
            Cond::SourceIp(set) => set.contains(f.ctx.source_ip),
            Cond::Payload(nss) => f.el.elements().any(|c| nss.iter().any(|ns| **ns == *c.ns)),
            Cond::Path(paths) => paths.iter().any(|p| has_path(f.el, p)),
            Cond::Keywords(group) => f.keyword_hit(self, *group),
            Cond::Regex { raw, indices } => f.regex_hit(self, *raw, indices),
            Cond::Urls(set) => {
                // Invariant 5 (fail closed, docs/DESIGN.md): links past the
                // extractor's bounds could hide a listed one behind many harmless ones, so an
                // incomplete scan counts as a match.
                let (urls, complete) = f.urls();
                !complete || urls.iter().any(|u| set.matches(u).is_some())
            }
            Cond::Rate(i) => {
                let l = &self.limiters[*i];
                match rate_key(l.key, f) {
                    // Per chain: a message counted when the sender sends it (c2s-in) must not
                    // be counted again when a local recipient receives it (c2s-out).
                    // The bucket is charged to the session's user (its address without one),
                    // whose quota of new buckets bounds what one user can make the table hold.
                    Some(key) => {
                        let bucket = rate::Bucket { limiter: &l.name, chain: f.ctx.chain, key: key.as_ref() };
                        let source = rate::KeySource::of(f.ctx.user, f.ctx.source_ip);
                        rates.over_limit(bucket, &source, &l.limit, now)
                    }
                    // Nothing to count by (no sender address): not over any limit.
                    None => false,
                }
            }
            Cond::Relation(test, want) => {
                use crate::antispam::Relation::*;
                let Some(rel) = f.relation(rates) else { return false };
                let is = match test {
                    RelationTest::RosterKnown => rel != Unknown,
                    _ if rel == Unknown => return false,
                    RelationTest::Stranger => matches!(rel, Stranger | StrangerKnownDomain),
                    RelationTest::StrangerDomain => rel == Stranger,
                };
                is == *want
            }
            Cond::FromSha256(set) => f.from().is_some_and(|j| {
                let d = ring::digest::digest(&ring::digest::SHA256, j.to_bare().as_str().as_bytes());
                <[u8; 32]>::try_from(d.as_ref()).is_ok_and(|d| set.contains(&d))
            }),
            Cond::Reported { reporters, window } => {
                f.from().is_some_and(|j| rates.antispam().reporters(&j.to_bare(), *window, now) >= *reporters)
            }
            Cond::Fanout(c) => {
                let (Some(key), Some(to)) = (rate_key(c.key, f), f.to()) else { return false };
                let source = rate::KeySource::of(f.ctx.user, f.ctx.source_ip);
                let recipient = to.to_bare();
                let q = rate::FanoutQuery {
                    ns: c.ns,
                    key: &key,
                    source: &source,
                    quota: c.quota,
                    recipient: recipient.as_str(),
                    recipients: c.recipients,
                    window: c.window,
                };
                rates.fanout(&q, now)
            }
            Cond::Wave(c) => self.wave(c, f, rates, now),
            Cond::Listed { list, to } => {
                let jid = if *to { f.to() } else { f.from() };
                jid.is_some_and(|j| rates.antispam().is_listed(list, &j.to_bare(), now))
            }
            Cond::Any(groups) => groups.iter().any(|g| self.all(g, f, rates, now)),
            Cond::Not(group) => !self.all(group, f, rates, now),
        }
    }
}

impl Policy {
    /// Count this copy of the text toward a wave; true when it belongs to a detected one (its
    /// id and sample go into the rule's hit; a wave just detected is queued for the audit).
    fn wave(&self, c: &WaveCond, f: &Facts<'_>, rates: &dyn RateStore, now: Instant) -> bool {
        let (normal, fingerprint) = f.fingerprint();
        if normal.chars().count() < c.spec.min_length {
            return false;
        }
        let (Some(from), Some(to)) = (f.from(), f.to()) else { return false };
        let (sender, recipient) = (from.to_bare(), to.to_bare());
        let copy =
            crate::antispam::TextCopy { fingerprint, normal, sender: sender.as_str(), recipient: recipient.as_str() };
        let Some(m) = rates.wave(&c.spec, &copy, now) else { return false };
        let a = rates.antispam();
        let w = &m.wave;
        *f.note.borrow_mut() =
            Some(format!("wave {} ({} senders, {} recipients): \"{}\"", w.id, w.senders, w.recipients, w.sample));
        if m.new {
            a.push_event(crate::antispam::Event::Wave { rule: c.rule.to_string(), wave: m.wave });
        }
        true
    }
}

/// The bucket key: slices of the prepared JIDs' canonical strings, which are what
/// `to_bare().to_string()` and `domain().to_string()` would write, without the copies.
fn rate_key<'f>(key: spec::RateKey, f: &'f Facts<'_>) -> Option<Cow<'f, str>> {
    use spec::RateKey::*;
    Some(match key {
        FromBare => Cow::Borrowed(bare_str(f.from()?)),
        FromFull => Cow::Borrowed(f.from()?.as_str()),
        FromDomain => Cow::Borrowed(f.from()?.domain().as_str()),
        ToBare => Cow::Borrowed(bare_str(f.to()?)),
        ToDomain => Cow::Borrowed(f.to()?.domain().as_str()),
        SourceIp => Cow::Owned(f.ctx.source_ip.to_string()),
        User => Cow::Borrowed(bare_str(f.ctx.user?)),
    })
}

/// `node@domain` (or `domain`) of a JID: its canonical string without `/resource`.
fn bare_str(j: &Jid) -> &str {
    let s = j.as_str();
    match j.resource() {
        Some(r) => &s[..s.len() - r.as_str().len() - 1],
        None => s,
    }
}
