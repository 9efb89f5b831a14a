//! The `file` chain (README "File transfer"): `[[rule]] chain = "file"` rules over what is
//! known about one transfer — who sends it to whom, how (s5b, ibb, upload), what the offer
//! declared (name, size, media type, hash) and what the inspection found in the bytes
//! (detected media type, counted size, SHA-256, DLP, antivirus, scanner failure).
//!
//! Facts arrive in stages: the offer before any byte, the media type after the first bytes, a
//! DLP hit whenever it is found, the size, hash and "no DLP hit" at the end of the input, the
//! antivirus verdict last. So conditions are three-valued here: a condition on a fact not
//! known yet is *pending*. [`FileRules::decide`] walks the rules in order: a rule that cannot
//! hold any more is skipped; a terminal rule (`pass`, `block`) that holds decides; a terminal
//! rule still pending stops the walk with no decision (a later rule must not pre-empt it);
//! `log` rules are recorded once when they hold and never stop the walk. The caller (core
//! [`crate::transfer::Inspection`]) asks again as facts arrive; once every fact is known no
//! condition is pending, so there is always a decision at the end.
//!
//! `pass` is final: the file passes, no later rule and no `[file_transfer]` check refuses it.
//! The `[file_transfer]` keys (`max_bytes`, `allow_types`/`deny_types`, `hash_deny`, DLP,
//! clamd, `on_scanner_error`) are the chain's implicit last rules, after every `[[rule]]`.
//!
//! Pure: no clock, no I/O. Lists (`from_in`, `to_in`, `hash_in`) are resolved when the policy
//! compiles, with the file and line of a bad entry.

use std::collections::HashSet;
use std::sync::Arc;

use super::jidset::JidSet;
use super::spec::{Located, PolicyConfig};
use crate::jid::Jid;
use crate::origin::{ConfigError, Origin};

/// How a file travels (the `transport` condition, audit and metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// SOCKS5 bytestreams (XEP-0065, XEP-0260) through the gateway's relay.
    S5b,
    /// In-band bytestreams (XEP-0047) inside the c2s stream.
    Ibb,
    /// HTTP File Upload (XEP-0363) through the gateway's upload proxy.
    Upload,
}

impl Transport {
    /// Every transport.
    pub const ALL: [Transport; 3] = [Transport::S5b, Transport::Ibb, Transport::Upload];

    /// The config and audit spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::S5b => "s5b",
            Transport::Ibb => "ibb",
            Transport::Upload => "upload",
        }
    }

    /// Parse the config spelling.
    pub fn from_name(s: &str) -> Option<Transport> {
        Transport::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// One condition of a `file` rule, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileConditionConfig {
    /// `from`: JID patterns for the sender.
    From(Vec<Located<String>>),
    /// `to`: JID patterns for the recipient.
    To(Vec<Located<String>>),
    /// `from_in`: a list of JID patterns.
    FromIn(Located<String>),
    /// `to_in`: a list of JID patterns.
    ToIn(Located<String>),
    /// `transport`: s5b, ibb, upload.
    Transport(Vec<Transport>),
    /// `size_over`: the size (declared, or counted) is over this many bytes.
    SizeOver(u64),
    /// `name`: shell patterns (`*`, `?`) over the declared file name, ASCII case-insensitive.
    Name(Vec<String>),
    /// `declared_type`: media types the offer declared (`image/*` for a whole family).
    DeclaredType(Vec<String>),
    /// `media_type`: media types detected from the content (`application/octet-stream` when
    /// no signature matched).
    MediaType(Vec<String>),
    /// `hash_in`: a list of hex SHA-256 digests; the declared hash or the computed one is listed.
    HashIn(Located<String>),
    /// `dlp = true|false`: a `[file_transfer]` DLP detector matched.
    Dlp(bool),
    /// `malware = true|false`: the antivirus found something.
    Malware(bool),
    /// `scanner_error = true|false`: the antivirus could not decide (down, timed out, over its limit).
    ScannerError(bool),
}

/// What a `file` rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileActionConfig {
    /// The file passes; nothing later refuses it.
    Pass,
    /// The file is refused; the sender is told, with `text` when given.
    Block {
        /// The text of the error the sender gets.
        text: Option<String>,
    },
    /// Audited, and the walk goes on.
    Log,
    /// Refused toward the receiver as `block` is, and the whole file kept in the quarantine
    /// for review (the daemon tees it to the state directory; the sender gets the block error).
    Quarantine,
}

/// One `[[rule]] chain = "file"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRuleConfig {
    /// Unique name.
    pub name: String,
    /// All must hold.
    pub when: Vec<FileConditionConfig>,
    /// What it does.
    pub action: FileActionConfig,
    /// Shadow mode: recorded as "would …", the walk goes on.
    pub log_only: bool,
    /// Where the rule starts.
    pub origin: Origin,
}

/// What the offer said, known before any byte (owned: it lives as long as the transfer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offer {
    /// The sender (the bound JID of the session it came from); `None`: not known on this path
    /// (an HTTP upload carries no JID).
    pub sender: Option<Jid>,
    /// The recipient; `None`: not known (an upload has none).
    pub recipient: Option<Jid>,
    /// How the file travels.
    pub transport: Option<Transport>,
    /// The declared file name (XEP-0234 `<name>`, XEP-0363 `filename`, the upload path).
    pub name: Option<String>,
    /// The declared size.
    pub size: Option<u64>,
    /// The declared media type, lowercase, parameters removed.
    pub media_type: Option<String>,
    /// The declared SHA-256 (XEP-0300 `<hash algo='sha-256'>`).
    pub sha256: Option<[u8; 32]>,
}

/// What the inspection has found so far (`None`: not known yet).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Bytes counted so far.
    pub bytes: u64,
    /// The sender's input ended: `bytes` is the size.
    pub ended: bool,
    /// The media type from the content, once sniffed (`application/octet-stream` if unknown).
    pub media_type: Option<&'static str>,
    /// The SHA-256, once the input ended.
    pub sha256: Option<[u8; 32]>,
    /// A DLP detector matched (`Some(true)` as soon as found; `Some(false)` at the end, or at
    /// once when no detector applies).
    pub dlp: Option<bool>,
    /// The antivirus found something; `None` until its verdict.
    pub malware: Option<bool>,
    /// The antivirus failed; `None` until its verdict.
    pub scanner_error: Option<bool>,
}

/// A compiled condition.
#[derive(Debug)]
enum Cond {
    From(Arc<JidSet>),
    To(Arc<JidSet>),
    Transport(Vec<Transport>),
    SizeOver(u64),
    Name(Vec<String>),
    DeclaredType(Vec<String>),
    MediaType(Vec<String>),
    HashIn(Arc<HashSet<[u8; 32]>>),
    Dlp(bool),
    Malware(bool),
    ScannerError(bool),
}

#[derive(Debug)]
enum Action {
    Pass,
    Block(Option<String>),
    Log,
    Quarantine,
}

#[derive(Debug)]
struct Rule {
    name: Arc<str>,
    when: Vec<Cond>,
    action: Action,
    log_only: bool,
}

/// The compiled `file` chain (the `[[rule]]`s only; the `[file_transfer]` checks follow them
/// in [`crate::transfer::Inspection`]).
#[derive(Debug, Default)]
pub struct FileRules {
    rules: Vec<Rule>,
}

/// A rule's verdict on a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileDecision {
    /// A `pass` rule holds.
    Pass(Arc<str>),
    /// A `block` rule holds: its name and the text for the sender.
    Block {
        /// The rule.
        rule: Arc<str>,
        /// Its `text`, if any.
        text: Option<String>,
    },
    /// A `quarantine` rule holds: refused, and the whole file kept for review.
    Quarantine(Arc<str>),
    /// Every rule was passed over: the `[file_transfer]` checks decide.
    Fallthrough,
    /// A terminal rule is still pending: ask again when more is known.
    Pending,
}

/// `*`/`?` shell match, ASCII case-insensitive (file names; no character classes).
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < name.len() {
        if pi < pattern.len() && (pattern[pi] == b'?' || pattern[pi].eq_ignore_ascii_case(&name[ni])) {
            pi += 1;
            ni += 1;
        } else if pi < pattern.len() && pattern[pi] == b'*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    pattern[pi..].iter().all(|&c| c == b'*')
}

/// Does media type `ty` match `pattern` (`type/subtype` or `type/*`)?
pub fn type_matches(pattern: &str, ty: &str) -> bool {
    match pattern.strip_suffix("/*") {
        Some(family) => ty.split('/').next().is_some_and(|f| f.eq_ignore_ascii_case(family)),
        None => pattern.eq_ignore_ascii_case(ty),
    }
}

/// A declared media type as compared: lowercase, without parameters (`text/plain; charset=…`).
pub fn normalize_type(s: &str) -> String {
    s.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

impl Cond {
    /// `Some(holds)`, or `None` while the fact is not known.
    fn holds(&self, offer: &Offer, seen: &Observed) -> Option<bool> {
        Some(match self {
            Cond::From(set) => offer.sender.as_ref().is_some_and(|j| set.matches(j)),
            Cond::To(set) => offer.recipient.as_ref().is_some_and(|j| set.matches(j)),
            Cond::Transport(ts) => offer.transport.is_some_and(|t| ts.contains(&t)),
            Cond::SizeOver(n) => {
                // The declared size or the count so far, whichever is larger: a sender that
                // declares less than it sends is judged by what it sends.
                let known = seen.bytes.max(offer.size.unwrap_or(0));
                if known > *n {
                    true
                } else if seen.ended {
                    false
                } else {
                    // A declared size under the limit proves nothing until the count ends.
                    return None;
                }
            }
            Cond::Name(patterns) => {
                offer.name.as_ref().is_some_and(|n| patterns.iter().any(|p| glob(p.as_bytes(), n.as_bytes())))
            }
            Cond::DeclaredType(types) => {
                offer.media_type.as_ref().is_some_and(|t| types.iter().any(|p| type_matches(p, t)))
            }
            Cond::MediaType(types) => {
                let t = seen.media_type?;
                types.iter().any(|p| type_matches(p, t))
            }
            Cond::HashIn(set) => {
                if offer.sha256.is_some_and(|h| set.contains(&h)) {
                    true
                } else {
                    set.contains(&seen.sha256?)
                }
            }
            Cond::Dlp(want) => seen.dlp? == *want,
            Cond::Malware(want) => seen.malware? == *want,
            Cond::ScannerError(want) => seen.scanner_error? == *want,
        })
    }
}

/// All of `conds`: false as soon as one is false, pending if one is pending.
fn all(conds: &[Cond], offer: &Offer, seen: &Observed) -> Option<bool> {
    let mut pending = false;
    for c in conds {
        match c.holds(offer, seen) {
            Some(false) => return Some(false),
            None => pending = true,
            Some(true) => {}
        }
    }
    if pending {
        None
    } else {
        Some(true)
    }
}

impl FileRules {
    /// No rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Does some rule (not a shadow one) quarantine? Then the daemon keeps a copy of every
    /// file while it passes, to store it on a quarantine verdict.
    pub fn quarantines(&self) -> bool {
        self.rules.iter().any(|r| !r.log_only && matches!(r.action, Action::Quarantine))
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// The rules' names, actions and whether they are shadow rules, in order (`explain`).
    pub fn describe(&self) -> Vec<(Arc<str>, &'static str, bool)> {
        self.rules
            .iter()
            .map(|r| {
                let action = match r.action {
                    Action::Pass => "pass",
                    Action::Block(_) => "block",
                    Action::Log => "log",
                    Action::Quarantine => "quarantine",
                };
                (r.name.clone(), action, r.log_only)
            })
            .collect()
    }

    /// Walk the chain with what is known (see the module docs). `logged[i]` marks rule `i`'s
    /// log (or shadow) record as made; the names of newly recorded rules are pushed to `hits`.
    pub fn decide(
        &self,
        offer: &Offer,
        seen: &Observed,
        logged: &mut Vec<bool>,
        hits: &mut Vec<String>,
    ) -> FileDecision {
        if logged.len() < self.rules.len() {
            logged.resize(self.rules.len(), false);
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let shadow = rule.log_only || matches!(rule.action, Action::Log);
            match all(&rule.when, offer, seen) {
                Some(false) => {}
                None if shadow => {}
                None => return FileDecision::Pending,
                Some(true) if shadow => {
                    if !logged[i] {
                        logged[i] = true;
                        let name = if rule.log_only {
                            format!(
                                "{} (would {})",
                                rule.name,
                                match rule.action {
                                    Action::Pass => "pass",
                                    Action::Quarantine => "quarantine",
                                    _ => "block",
                                }
                            )
                        } else {
                            rule.name.to_string()
                        };
                        hits.push(name);
                    }
                }
                Some(true) => {
                    return match &rule.action {
                        Action::Pass => FileDecision::Pass(rule.name.clone()),
                        Action::Block(text) => FileDecision::Block { rule: rule.name.clone(), text: text.clone() },
                        Action::Quarantine => FileDecision::Quarantine(rule.name.clone()),
                        Action::Log => FileDecision::Fallthrough,
                    }
                }
            }
        }
        FileDecision::Fallthrough
    }

    /// Compile the `file` rules of `config`.
    pub fn compile(config: &PolicyConfig) -> Result<FileRules, ConfigError> {
        let mut rules = Vec::new();
        for r in &config.file_rules {
            let mut when = Vec::new();
            for c in &r.when {
                when.push(match c {
                    FileConditionConfig::From(items) => Cond::From(patterns(items)?),
                    FileConditionConfig::To(items) => Cond::To(patterns(items)?),
                    FileConditionConfig::FromIn(name) => Cond::From(jid_list(config, name)?),
                    FileConditionConfig::ToIn(name) => Cond::To(jid_list(config, name)?),
                    FileConditionConfig::Transport(t) => Cond::Transport(t.clone()),
                    FileConditionConfig::SizeOver(n) => Cond::SizeOver(*n),
                    FileConditionConfig::Name(p) => Cond::Name(p.clone()),
                    FileConditionConfig::DeclaredType(t) => Cond::DeclaredType(t.clone()),
                    FileConditionConfig::MediaType(t) => Cond::MediaType(t.clone()),
                    FileConditionConfig::HashIn(name) => Cond::HashIn(hash_list(config, name)?),
                    FileConditionConfig::Dlp(b) => Cond::Dlp(*b),
                    FileConditionConfig::Malware(b) => Cond::Malware(*b),
                    FileConditionConfig::ScannerError(b) => Cond::ScannerError(*b),
                });
            }
            let action = match &r.action {
                FileActionConfig::Pass => Action::Pass,
                FileActionConfig::Block { text } => Action::Block(text.clone()),
                FileActionConfig::Log => Action::Log,
                FileActionConfig::Quarantine => Action::Quarantine,
            };
            rules.push(Rule { name: Arc::from(r.name.as_str()), when, action, log_only: r.log_only });
        }
        Ok(FileRules { rules })
    }
}

fn patterns(items: &[Located<String>]) -> Result<Arc<JidSet>, ConfigError> {
    JidSet::from_entries(items.iter().map(|i| i.value.as_str()))
        .map(Arc::new)
        .map_err(|(i, why)| items[i.min(items.len() - 1)].origin.error(why))
}

fn list<'a>(config: &'a PolicyConfig, name: &Located<String>) -> Result<&'a super::spec::ListConfig, ConfigError> {
    config.lists.get(&name.value).ok_or_else(|| {
        let known: Vec<&str> = config.lists.keys().map(String::as_str).collect();
        let hint =
            if known.is_empty() { "none is declared".to_owned() } else { format!("declared: {}", known.join(", ")) };
        name.origin.error(format!("unknown list '{}' ({hint})", name.value))
    })
}

fn jid_list(config: &PolicyConfig, name: &Located<String>) -> Result<Arc<JidSet>, ConfigError> {
    let l = list(config, name)?;
    JidSet::from_entries(l.entries.iter().map(|e| e.value.as_str()))
        .map(Arc::new)
        .map_err(|(i, why)| l.entries.get(i).map_or_else(|| name.origin.clone(), |e| e.origin.clone()).error(why))
}

fn hash_list(config: &PolicyConfig, name: &Located<String>) -> Result<Arc<HashSet<[u8; 32]>>, ConfigError> {
    let l = list(config, name)?;
    let mut set = HashSet::new();
    for e in &l.entries {
        let d = parse_sha256(&e.value)
            .ok_or_else(|| e.origin.error(format!("'{}' is not a SHA-256 (64 hex digits)", e.value)))?;
        set.insert(d);
    }
    Ok(Arc::new(set))
}

/// Parse a hex SHA-256 (64 hex digits, either case).
pub fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_types() {
        assert!(glob(b"*.exe", b"SETUP.EXE"));
        assert!(!glob(b"*.exe", b"setup.exe.txt"));
        assert!(glob(b"report-??.pdf", b"report-07.pdf"));
        assert!(type_matches("image/*", "image/png"));
        assert!(!type_matches("image/*", "application/pdf"));
        assert_eq!(normalize_type("Text/Plain; charset=utf-8"), "text/plain");
    }
}
