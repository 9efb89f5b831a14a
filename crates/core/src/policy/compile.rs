//! [`PolicyConfig`] → [`Policy`]: shared automata, hash-set lists, resolved references.
//!
//! Every error names the file and line of the value at fault: a list entry points at its line in
//! the list file, a regex or pattern at the rule's `when` key.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use regex::{Regex, RegexSetBuilder};

use super::cidrset::CidrSet;
use super::jidset::{DomainSet, JidSet};
use super::rewrite::Masker;
use super::spec::{ActionConfig, Chain, ConditionConfig, Located, PolicyConfig};
use super::url::UrlSet;
use super::{Action, Cond, FanoutCond, Limiter, Outcome, Policy, RelationTest, Rule, Step, WaveCond};
use crate::net::Cidr;
use crate::origin::{ConfigError, Origin};
use crate::stream::NS_CLIENT;

/// Compiled size limit of one regex and of the shared set (the regex crate's own guard against
/// exponential programs).
const REGEX_SIZE_LIMIT: usize = 32 << 20;

/// Up to this many keywords they are compiled into a DFA.
const DFA_KEYWORDS: usize = 10_000;

struct Compiler<'a> {
    config: &'a PolicyConfig,
    keyword_index: HashMap<String, usize>,
    keywords: Vec<String>,
    keyword_groups: Vec<Vec<usize>>,
    group_count: usize,
    regexes: Vec<String>,
    raw_regexes: Vec<String>,
    /// The rule being compiled has `regex_raw = true`.
    raw: bool,
    jid_lists: HashMap<String, Arc<JidSet>>,
    domain_lists: HashMap<String, Arc<DomainSet>>,
    url_lists: HashMap<String, Arc<UrlSet>>,
    cidr_lists: HashMap<String, Arc<CidrSet>>,
    limiters: Vec<Limiter>,
    limiter_index: HashMap<String, usize>,
    sha256_lists: HashMap<String, Arc<HashSet<[u8; 32]>>>,
    /// The rule being compiled, and its counting conditions so far: the namespace of a
    /// `fanout`/`wave` condition's state ([`namespace`]).
    rule_name: Arc<str>,
    counted: u32,
}

pub(super) fn compile(config: &PolicyConfig) -> Result<Policy, ConfigError> {
    let mut c = Compiler {
        config,
        keyword_index: HashMap::new(),
        keywords: Vec::new(),
        keyword_groups: Vec::new(),
        group_count: 0,
        regexes: Vec::new(),
        raw_regexes: Vec::new(),
        raw: false,
        jid_lists: HashMap::new(),
        domain_lists: HashMap::new(),
        url_lists: HashMap::new(),
        cidr_lists: HashMap::new(),
        limiters: Vec::new(),
        limiter_index: HashMap::new(),
        sha256_lists: HashMap::new(),
        rule_name: Arc::from(""),
        counted: 0,
    };
    let mut rules = Vec::new();
    let mut chains: [Vec<usize>; 4] = Default::default();
    for (i, r) in config.rules.iter().enumerate() {
        c.raw = r.regex_raw;
        c.rule_name = Arc::from(r.name.as_str());
        c.counted = 0;
        let when = c.conditions(&r.when)?;
        let action = match &r.action {
            ActionConfig::Pass => Action::Pass,
            ActionConfig::Drop => Action::Drop,
            ActionConfig::Log => Action::Log,
            ActionConfig::Quarantine => Action::Quarantine,
            ActionConfig::Bounce { condition, text } => Action::Bounce { condition: *condition, text: text.clone() },
            ActionConfig::Close { condition, text } => Action::Close { condition: *condition, text: text.clone() },
            ActionConfig::Strip => {
                let mut payload = Vec::new();
                let mut paths = Vec::new();
                collect_strip(&when, &mut payload, &mut paths);
                Action::Strip { payload, paths }
            }
            ActionConfig::Mask { with } => Action::Mask(c.masker(&r.when, with)?),
        };
        for chain in &r.chains {
            chains[chain.index()].push(i);
        }
        rules.push(Rule { name: Arc::from(r.name.as_str()), when, action, log_only: r.log_only });
    }
    let keywords = if c.keywords.is_empty() {
        None
    } else {
        // Standard semantics: overlapping search reports every keyword present.
        // A DFA scans fastest but its size grows fast with the patterns (68 MB at 100,000
        // keywords); past DFA_KEYWORDS the crate's contiguous NFA keeps memory small at a higher
        // constant per body byte (measured by benches/policy.rs).
        let kind = (c.keywords.len() <= DFA_KEYWORDS).then_some(AhoCorasickKind::DFA);
        let ac = AhoCorasick::builder().match_kind(MatchKind::Standard).kind(kind).build(&c.keywords).map_err(|e| {
            let origin = config.rules.first().map(|r| r.origin.clone()).unwrap_or_else(empty_origin);
            origin.error(format!("keywords cannot be compiled: {e}"))
        })?;
        Some(ac)
    };
    let regex_set = |patterns: &[String], raw: bool| -> Result<Option<regex::RegexSet>, ConfigError> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let set = RegexSetBuilder::new(patterns).size_limit(REGEX_SIZE_LIMIT).case_insensitive(!raw).build().map_err(
            |e| {
                let origin = config.rules.first().map(|r| r.origin.clone()).unwrap_or_else(empty_origin);
                origin.error(format!("the regexes together are too large: {e}"))
            },
        )?;
        Ok(Some(set))
    };
    let regexes = regex_set(&c.regexes, false)?;
    let raw_regexes = regex_set(&c.raw_regexes, true)?;
    let default = |chain: Chain| match config.defaults.get(&chain) {
        None | Some(ActionConfig::Pass) => Outcome::Pass,
        Some(ActionConfig::Bounce { condition, text }) => Outcome::Bounce { condition: *condition, text: text.clone() },
        Some(_) => Outcome::Drop,
    };
    let by_kind = super::kind_index(&rules, &chains);
    let asks_roster =
        by_kind.each_ref().map(|kinds| kinds.each_ref().map(|l| l.iter().any(|&i| uses_contacts(&rules[i].when))));
    Ok(Policy {
        chains,
        by_kind,
        asks_roster,
        defaults: Chain::ALL.map(default),
        keywords,
        keyword_groups: c.keyword_groups,
        keyword_group_count: c.group_count,
        regexes,
        raw_regexes,
        limiters: c.limiters,
        audit: config.audit.clone(),
        s2s: super::s2s::S2sRules::compile(&config.s2s)?,
        uses_contacts: rules.iter().any(|r| uses_contacts(&r.when)),
        file: Arc::new(super::file::FileRules::compile(config)?),
        report_threshold: config.report_threshold.as_ref().map(|t| t.threshold.clone()),
        rules,
    })
}

fn empty_origin() -> Origin {
    Origin { file: Default::default(), line: 0, key: String::new() }
}

/// Does a condition ask about rosters (inside `any`/`not` too)?
pub(super) fn uses_contacts(conds: &[Cond]) -> bool {
    conds.iter().any(|c| match c {
        Cond::Relation(..) => true,
        Cond::Any(groups) => groups.iter().any(|g| uses_contacts(g)),
        Cond::Not(g) => uses_contacts(g),
        _ => false,
    })
}

/// What a strip rule removes: the namespaces and paths its conditions name (outside `not`).
fn collect_strip(conds: &[Cond], payload: &mut Vec<String>, paths: &mut Vec<Vec<Step>>) {
    for c in conds {
        match c {
            Cond::Payload(p) => payload.extend(p.iter().cloned()),
            Cond::Path(p) => paths.extend(p.iter().cloned()),
            Cond::Any(groups) => groups.iter().for_each(|g| collect_strip(g, payload, paths)),
            _ => {}
        }
    }
}

/// Parse `{ns}name/{ns}*/name` (a step without `{ns}` is in `jabber:client`).
fn parse_path(text: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (ns, after) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some((ns, after)) if !ns.is_empty() => (ns.to_owned(), after),
                _ => return Err(format!("'{text}': a '{{namespace}}' is not closed or empty")),
            },
            None => (NS_CLIENT.to_owned(), rest),
        };
        let (name, next) = after.split_once('/').unwrap_or((after, ""));
        let name = match name {
            "" => return Err(format!("'{text}': a step has no element name")),
            "*" => None,
            n if n.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.')) => Some(n.to_owned()),
            n => return Err(format!("'{text}': '{n}' is not an element name")),
        };
        steps.push(Step { ns, name });
        rest = next;
        if steps.len() > 16 {
            return Err(format!("'{text}': more than 16 steps"));
        }
    }
    if steps.is_empty() {
        return Err("an empty path".to_owned());
    }
    Ok(steps)
}

impl Compiler<'_> {
    fn list(&self, name: &Located<String>) -> Result<&super::spec::ListConfig, ConfigError> {
        self.config.lists.get(&name.value).ok_or_else(|| {
            let known: Vec<&str> = self.config.lists.keys().map(String::as_str).collect();
            let hint = if known.is_empty() {
                "none is declared".to_owned()
            } else {
                format!("declared: {}", known.join(", "))
            };
            name.origin.error(format!("unknown list '{}' ({hint})", name.value))
        })
    }

    fn jid_list(&mut self, name: &Located<String>) -> Result<Arc<JidSet>, ConfigError> {
        if let Some(s) = self.jid_lists.get(&name.value) {
            return Ok(s.clone());
        }
        let list = self.list(name)?;
        let set = JidSet::from_entries(list.entries.iter().map(|e| e.value.as_str()))
            .map_err(|(i, why)| entry_error(&list.entries, i, &why))?;
        let set = Arc::new(set);
        self.jid_lists.insert(name.value.clone(), set.clone());
        Ok(set)
    }

    /// `from_in`/`to_in`: the list's entries, and, for the list `[antispam] report_threshold`
    /// feeds, the JIDs on it now (a `[list.NAME]` of the same name adds fixed entries).
    fn jid_list_cond(&mut self, name: &Located<String>, to: bool) -> Result<Cond, ConfigError> {
        let fed = self.config.report_threshold.as_ref().is_some_and(|t| t.threshold.list == name.value);
        let static_cond = |set| if to { Cond::To(set) } else { Cond::From(set) };
        if !fed {
            return Ok(static_cond(self.jid_list(name)?));
        }
        let listed = Cond::Listed { list: Arc::from(name.value.as_str()), to };
        if !self.config.lists.contains_key(&name.value) {
            return Ok(listed);
        }
        Ok(Cond::Any(vec![vec![static_cond(self.jid_list(name)?)], vec![listed]]))
    }

    fn domain_list(&mut self, name: &Located<String>) -> Result<Arc<DomainSet>, ConfigError> {
        if let Some(s) = self.domain_lists.get(&name.value) {
            return Ok(s.clone());
        }
        let list = self.list(name)?;
        let set = DomainSet::from_entries(list.entries.iter().map(|e| e.value.as_str()))
            .map_err(|(i, why)| entry_error(&list.entries, i, &why))?;
        let set = Arc::new(set);
        self.domain_lists.insert(name.value.clone(), set.clone());
        Ok(set)
    }

    fn url_list(&mut self, name: &Located<String>) -> Result<Arc<UrlSet>, ConfigError> {
        if let Some(s) = self.url_lists.get(&name.value) {
            return Ok(s.clone());
        }
        let list = self.list(name)?;
        let set = UrlSet::from_entries(list.entries.iter().map(|e| e.value.as_str()))
            .map_err(|(i, why)| entry_error(&list.entries, i, &why))?;
        let set = Arc::new(set);
        self.url_lists.insert(name.value.clone(), set.clone());
        Ok(set)
    }

    fn cidrs(&mut self, items: &[Located<String>]) -> Result<Arc<CidrSet>, ConfigError> {
        let mut set = CidrSet::default();
        for item in items {
            if let Some(name) = item.value.strip_prefix("list:") {
                let located = Located { value: name.to_owned(), origin: item.origin.clone() };
                if let Some(s) = self.cidr_lists.get(name) {
                    if items.len() == 1 {
                        return Ok(s.clone());
                    }
                }
                let list = self.list(&located)?;
                let mut one = CidrSet::default();
                for e in &list.entries {
                    let cidr = Cidr::parse(&e.value)
                        .ok_or_else(|| e.origin.error(format!("'{}' is not an address or CIDR", e.value)))?;
                    one.insert(cidr);
                    set.insert(cidr);
                }
                self.cidr_lists.insert(name.to_owned(), Arc::new(one));
            } else {
                let cidr = Cidr::parse(&item.value).ok_or_else(|| {
                    item.origin.error(format!("'{}' is not an address, CIDR or list:NAME", item.value))
                })?;
                set.insert(cidr);
            }
        }
        Ok(Arc::new(set))
    }

    fn patterns(&self, items: &[Located<String>]) -> Result<Arc<JidSet>, ConfigError> {
        JidSet::from_entries(items.iter().map(|i| i.value.as_str()))
            .map(Arc::new)
            .map_err(|(i, why)| entry_error(items, i, &why))
    }

    /// Keywords (inline or `list:NAME`), folded, as one group of the shared automaton.
    fn keyword_group(&mut self, items: &[Located<String>]) -> Result<usize, ConfigError> {
        let group = self.group_count;
        self.group_count += 1;
        for word in self.keyword_texts(items)? {
            let idx = match self.keyword_index.get(&word) {
                Some(&i) => i,
                None => {
                    self.keywords.push(word.clone());
                    self.keyword_groups.push(Vec::new());
                    self.keyword_index.insert(word, self.keywords.len() - 1);
                    self.keywords.len() - 1
                }
            };
            if !self.keyword_groups[idx].contains(&group) {
                self.keyword_groups[idx].push(group);
            }
        }
        Ok(group)
    }

    fn keyword_texts(&self, items: &[Located<String>]) -> Result<Vec<String>, ConfigError> {
        let mut out = Vec::new();
        for item in items {
            if let Some(name) = item.value.strip_prefix("list:") {
                let list = self.list(&Located { value: name.to_owned(), origin: item.origin.clone() })?;
                for e in &list.entries {
                    out.push(keyword(e)?);
                }
            } else {
                out.push(keyword(item)?);
            }
        }
        Ok(out)
    }

    fn regex_indices(&mut self, items: &[Located<String>]) -> Result<Vec<usize>, ConfigError> {
        let mut out = Vec::new();
        let set = if self.raw { &mut self.raw_regexes } else { &mut self.regexes };
        for item in items {
            check_regex(item, self.raw)?;
            out.push(set.len());
            set.push(item.value.clone());
        }
        Ok(out)
    }

    fn masker(&self, when: &[ConditionConfig], with: &str) -> Result<Masker, ConfigError> {
        let mut words = Vec::new();
        let mut regexes = Vec::new();
        for c in when {
            match c {
                ConditionConfig::BodyContains(items) => words.extend(self.keyword_texts(items)?),
                ConditionConfig::BodyRegex(items) => {
                    for item in items {
                        regexes.push(check_regex(item, self.raw)?);
                    }
                }
                _ => {}
            }
        }
        Masker::new(&words, regexes, self.raw, with).map_err(|e| {
            let origin = when.iter().find_map(|c| match c {
                ConditionConfig::BodyContains(i) | ConditionConfig::BodyRegex(i) => i.first().map(|l| l.origin.clone()),
                _ => None,
            });
            origin.unwrap_or_else(empty_origin).error(e)
        })
    }

    fn limiter(&mut self, name: &Located<String>) -> Result<usize, ConfigError> {
        if let Some(&i) = self.limiter_index.get(&name.value) {
            return Ok(i);
        }
        let Some(r) = self.config.rates.get(&name.value) else {
            let known: Vec<&str> = self.config.rates.keys().map(String::as_str).collect();
            let hint = if known.is_empty() {
                "none is declared".to_owned()
            } else {
                format!("declared: {}", known.join(", "))
            };
            return Err(name.origin.error(format!("unknown limiter '{}' ({hint})", name.value)));
        };
        let limit = super::rate::Limit { rate: r.rate, max_keys_per_source: r.max_keys_per_source };
        self.limiters.push(Limiter { name: name.value.clone(), limit, key: r.key });
        self.limiter_index.insert(name.value.clone(), self.limiters.len() - 1);
        Ok(self.limiters.len() - 1)
    }

    /// The state namespace of the next counting condition of the rule: its name and position,
    /// so that a reload keeps the counts of a rule that is still there, and two conditions
    /// never share counts.
    fn namespace(&mut self) -> u64 {
        self.counted += 1;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.rule_name.bytes().chain([0]).chain(self.counted.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }

    /// A list of hex SHA-256 digests (64 hex digits an entry, either case).
    fn sha256_list(&mut self, name: &Located<String>) -> Result<Arc<HashSet<[u8; 32]>>, ConfigError> {
        if let Some(s) = self.sha256_lists.get(&name.value) {
            return Ok(s.clone());
        }
        let list = self.list(name)?;
        let mut set = HashSet::with_capacity(list.entries.len());
        for e in &list.entries {
            let d = parse_sha256(&e.value)
                .ok_or_else(|| e.origin.error(format!("'{}' is not a SHA-256 digest (64 hex digits)", e.value)))?;
            set.insert(d);
        }
        let set = Arc::new(set);
        self.sha256_lists.insert(name.value.clone(), set.clone());
        Ok(set)
    }

    fn conditions(&mut self, conds: &[ConditionConfig]) -> Result<Vec<Cond>, ConfigError> {
        conds.iter().map(|c| self.condition(c)).collect()
    }

    fn condition(&mut self, c: &ConditionConfig) -> Result<Cond, ConfigError> {
        Ok(match c {
            ConditionConfig::Kind(k) => Cond::Kind(k.clone()),
            ConditionConfig::Type(t) => Cond::Type(t.clone()),
            ConditionConfig::From(p) => Cond::From(self.patterns(p)?),
            ConditionConfig::To(p) => Cond::To(self.patterns(p)?),
            ConditionConfig::User(p) => Cond::User(self.patterns(p)?),
            ConditionConfig::FromIn(l) => self.jid_list_cond(l, false)?,
            ConditionConfig::ToIn(l) => self.jid_list_cond(l, true)?,
            ConditionConfig::FromDomainIn(l) => Cond::FromDomain(self.domain_list(l)?),
            ConditionConfig::ToDomainIn(l) => Cond::ToDomain(self.domain_list(l)?),
            ConditionConfig::SourceIp(items) => Cond::SourceIp(self.cidrs(items)?),
            ConditionConfig::Payload(nss) => Cond::Payload(nss.clone()),
            ConditionConfig::Path(items) => Cond::Path(
                items.iter().map(|p| parse_path(&p.value).map_err(|e| p.origin.error(e))).collect::<Result<_, _>>()?,
            ),
            ConditionConfig::BodyContains(items) => Cond::Keywords(self.keyword_group(items)?),
            ConditionConfig::BodyRegex(items) => Cond::Regex { raw: self.raw, indices: self.regex_indices(items)? },
            ConditionConfig::UrlIn(l) => Cond::Urls(self.url_list(l)?),
            ConditionConfig::Rate(l) => Cond::Rate(self.limiter(l)?),
            ConditionConfig::Stranger(b) => Cond::Relation(RelationTest::Stranger, *b),
            ConditionConfig::StrangerDomain(b) => Cond::Relation(RelationTest::StrangerDomain, *b),
            ConditionConfig::RosterKnown(b) => Cond::Relation(RelationTest::RosterKnown, *b),
            ConditionConfig::FromSha256In(l) => Cond::FromSha256(self.sha256_list(l)?),
            ConditionConfig::Reported(r) => Cond::Reported { reporters: r.reporters, window: r.window },
            ConditionConfig::Fanout(f) => Cond::Fanout(Box::new(FanoutCond {
                ns: self.namespace(),
                recipients: f.recipients,
                window: f.window,
                key: f.key,
                quota: super::rate::DEFAULT_MAX_KEYS_PER_SOURCE,
            })),
            ConditionConfig::Wave(w) => Cond::Wave(Box::new(WaveCond {
                spec: crate::antispam::WaveSpec {
                    ns: self.namespace(),
                    senders: w.senders,
                    recipients: w.recipients,
                    window: w.window,
                    similarity: w.similarity,
                    min_length: w.min_length,
                },
                rule: self.rule_name.clone(),
            })),
            ConditionConfig::Any(groups) => {
                Cond::Any(groups.iter().map(|g| self.conditions(g)).collect::<Result<_, _>>()?)
            }
            ConditionConfig::Not(g) => Cond::Not(self.conditions(g)?),
        })
    }
}

/// A keyword in the form it is matched in; an empty one is refused.
fn keyword(item: &Located<String>) -> Result<String, ConfigError> {
    let word = super::fold::fold(&item.value).into_owned();
    if word.is_empty() {
        return Err(item.origin.error("an empty keyword matches everything"));
    }
    Ok(word)
}

/// Compile one regex as it will be matched: over the folded text (lowercase, so compiled
/// case-insensitive: `Buy NOW` still matches), or over the text as written (`raw`).
fn check_regex(item: &Located<String>, raw: bool) -> Result<Regex, ConfigError> {
    regex::RegexBuilder::new(&item.value).size_limit(REGEX_SIZE_LIMIT).case_insensitive(!raw).build().map_err(|e| {
        // The regex crate's message spans lines (pattern, caret, error); keep the error.
        let text = e.to_string();
        let why = text.lines().last().unwrap_or_default().trim_start_matches("error: ").to_owned();
        item.origin.error(format!("bad regex '{}': {why}", item.value))
    })
}

fn entry_error(entries: &[Located<String>], i: usize, why: &str) -> ConfigError {
    match entries.get(i) {
        Some(e) => e.origin.error(why.to_owned()),
        None => empty_origin().error(why.to_owned()),
    }
}

/// 64 hex digits → 32 bytes.
fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let text = text.trim().as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks(2).enumerate() {
        let hex = |c: u8| (c as char).to_digit(16);
        out[i] = u8::try_from(hex(pair[0])? * 16 + hex(pair[1])?).ok()?;
    }
    Some(out)
}
