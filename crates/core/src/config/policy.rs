//! The policy sections of the config (`[list.*]`, `[rate.*]`, `[[rule]]`, `[chain.*]`, `[audit]`,
//! `include`) as written, and their validation into a [`PolicyConfig`].
//!
//! Checks names and shapes here (unknown condition keys, action and error names, rates, keys);
//! what needs the matchers (regexes, JID patterns, list entries, references to lists and
//! limiters) is checked by [`crate::policy::Policy::compile`], with the same origins.

mod conditions;
mod file;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use self::conditions::{conditions, has_regex};
use super::locate::Locator;
use super::{ConfigError, Files};
use crate::limit::Rate;
use crate::policy::rate::{DEFAULT_MAX_KEYS_PER_SOURCE, MAX_KEYS};
use crate::policy::spec::{
    ActionConfig, AuditConfig, Chain, ConditionConfig, ListConfig, Located, PolicyConfig, RateConfig, RateKey,
    RtblSource, RuleConfig,
};
use crate::stanza::StanzaCondition;
use crate::stream::Condition;

/// Most entries a list file may hold (a 10-million-line file is a mistake, not a list).
const MAX_LIST_ENTRIES: usize = 5_000_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawList {
    file: Option<Spanned<String>>,
    entries: Option<Vec<Spanned<String>>>,
    rtbl: Option<Spanned<RawRtbl>>,
}

/// `rtbl = { service = "pubsub.example", node = "spam_source_domains" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRtbl {
    service: Spanned<String>,
    node: Spanned<String>,
}

/// Longest pubsub node name accepted.
const MAX_NODE_NAME: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRate {
    rate: Spanned<String>,
    burst: Option<Spanned<i64>>,
    key: Option<Spanned<String>>,
    max_keys_per_source: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    name: Spanned<String>,
    chain: Option<Spanned<toml::Value>>,
    when: Option<Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
    action: Spanned<String>,
    error: Option<Spanned<String>>,
    text: Option<Spanned<String>>,
    mask: Option<Spanned<String>>,
    log_only: Option<bool>,
    regex_raw: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChain {
    default: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    path: Option<Spanned<String>>,
    include_body: Option<bool>,
}

/// `[antispam]`: settings of the anti-spam state that are not rule conditions.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAntispam {
    report_threshold: Option<Spanned<toml::Value>>,
}

/// Validate `[antispam]` into `policy`.
pub(super) fn antispam(
    raw: Option<&RawAntispam>,
    policy: &mut PolicyConfig,
    loc: &Locator<'_>,
) -> Result<(), ConfigError> {
    if let Some(t) = raw.and_then(|r| r.report_threshold.as_ref()) {
        policy.report_threshold = Some(conditions::report_threshold(t, loc)?);
    }
    Ok(())
}

/// The policy sections of one file (the main config or an include).
#[derive(Debug, Default, Deserialize)]
pub(super) struct RawPolicy {
    #[serde(default)]
    pub list: BTreeMap<String, Spanned<RawList>>,
    #[serde(default)]
    pub rate: BTreeMap<String, Spanned<RawRate>>,
    #[serde(default)]
    pub rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    pub chain: BTreeMap<String, Spanned<RawChain>>,
}

/// An included file: only policy sections.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInclude {
    #[serde(default)]
    list: BTreeMap<String, Spanned<RawList>>,
    #[serde(default)]
    rate: BTreeMap<String, Spanned<RawRate>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    chain: BTreeMap<String, Spanned<RawChain>>,
}

/// Build the policy from the main file's sections and the files `include` names.
pub(super) fn policy(
    main: RawPolicy,
    include: &Option<Vec<Spanned<String>>>,
    audit: &RawAudit,
    state_dir: &Path,
    loc: &Locator<'_>,
    files: &dyn Files,
) -> Result<PolicyConfig, ConfigError> {
    let mut out = PolicyConfig {
        audit: AuditConfig {
            path: audit.path.as_ref().map(|p| loc.path(p.get_ref())),
            include_body: audit.include_body.unwrap_or(false),
        },
        ..PolicyConfig::default()
    };
    add_sections(&mut out, main, state_dir, loc, files)?;
    for pattern in include.iter().flatten() {
        let paths =
            expand(&loc.path(pattern.get_ref()), files).map_err(|e| loc.origin(pattern.span(), "include").error(e))?;
        for path in paths {
            let text = files
                .read(&path)
                .map_err(|e| loc.origin(pattern.span(), "include").error(format!("{}: {e}", path.display())))?;
            let inc = Locator { text: &text, file: &path };
            let raw: RawInclude = toml::from_str(&text).map_err(|e| inc.toml_error(&e))?;
            let sections = RawPolicy { list: raw.list, rate: raw.rate, rule: raw.rule, chain: raw.chain };
            add_sections(&mut out, sections, state_dir, &inc, files)?;
        }
    }
    Ok(out)
}

/// `dir/*.toml` → the matching files, sorted; a pattern without wildcards is one file. Only the
/// last path component may hold `*` and `?`.
fn expand(pattern: &Path, files: &dyn Files) -> Result<Vec<PathBuf>, String> {
    let name = pattern.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if !name.contains(['*', '?']) {
        return Ok(vec![pattern.to_path_buf()]);
    }
    let dir = pattern.parent().unwrap_or(Path::new(""));
    if dir.to_string_lossy().contains(['*', '?']) {
        return Err("wildcards are allowed in the file name only".to_owned());
    }
    let mut found: Vec<PathBuf> = files
        .list_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .into_iter()
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| wildcard(name, n)))
        .collect();
    found.sort();
    Ok(found)
}

/// Shell-style match of `*` and `?` (no character classes).
fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
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
    p[pi..].iter().all(|&c| c == '*')
}

fn add_sections(
    out: &mut PolicyConfig,
    raw: RawPolicy,
    state_dir: &Path,
    loc: &Locator<'_>,
    files: &dyn Files,
) -> Result<(), ConfigError> {
    for (name, l) in raw.list {
        let key = format!("list.{name}");
        check_name(&name, l.span(), &key, loc)?;
        if out.lists.contains_key(&name) {
            return loc.err(l.span(), &key, format!("list '{name}' is declared twice"));
        }
        let origin = loc.origin(l.span(), &key);
        let l = l.into_inner();
        if let Some(rtbl) = l.rtbl {
            if l.file.is_some() || l.entries.is_some() {
                return loc.err(rtbl.span(), &format!("{key}.rtbl"), "use rtbl, file or entries, one of them");
            }
            let (source, file, entries) = rtbl_list(&name, rtbl, state_dir, &key, loc, files)?;
            out.lists.insert(name, ListConfig { file: Some(file), entries, origin, rtbl: Some(source) });
            continue;
        }
        let (file, entries) = match (l.file, l.entries) {
            (Some(_), Some(e)) => {
                return loc.err(e.first().map_or(0..0, |e| e.span()), &key, "use file or entries, not both")
            }
            (None, None) => {
                return Err(origin.error("needs file = \"...\", entries = [...] or rtbl = { service, node }"))
            }
            (None, Some(entries)) => {
                let entries = entries
                    .into_iter()
                    .map(|e| Located { origin: loc.origin(e.span(), &key), value: e.into_inner().trim().to_owned() })
                    .collect();
                (None, entries)
            }
            (Some(f), None) => {
                let path = loc.path(f.get_ref());
                let text = files.read(&path).map_err(|e| {
                    loc.origin(f.span(), &format!("{key}.file")).error(format!("{}: {e}", path.display()))
                })?;
                (Some(path.clone()), list_file_entries(&text, &path, &key, loc.origin(f.span(), &key))?)
            }
        };
        out.lists.insert(name, ListConfig { file, entries, origin, rtbl: None });
    }
    for (name, r) in raw.rate {
        let key = format!("rate.{name}");
        check_name(&name, r.span(), &key, loc)?;
        if out.rates.contains_key(&name) {
            return loc.err(r.span(), &key, format!("limiter '{name}' is declared twice"));
        }
        let origin = loc.origin(r.span(), &key);
        let r = r.into_inner();
        let burst = match &r.burst {
            None => 1,
            Some(b) => match u32::try_from(*b.get_ref()) {
                Ok(n) if (1..=1_000_000).contains(&n) => n,
                _ => return loc.err(b.span(), &format!("{key}.burst"), "must be an integer from 1 to 1000000"),
            },
        };
        let Some(rate) = Rate::parse(r.rate.get_ref(), burst) else {
            return loc.err(r.rate.span(), &format!("{key}.rate"), "expected N/second, N/minute or N/hour");
        };
        let key_kind = match &r.key {
            None => RateKey::FromBare,
            Some(k) => match RateKey::ALL.into_iter().find(|x| x.as_str() == k.get_ref()) {
                Some(x) => x,
                None => {
                    let all: Vec<&str> = RateKey::ALL.iter().map(|k| k.as_str()).collect();
                    return loc.err(k.span(), &format!("{key}.key"), format!("expected one of {}", all.join(", ")));
                }
            },
        };
        let max_keys_per_source = match &r.max_keys_per_source {
            None => DEFAULT_MAX_KEYS_PER_SOURCE,
            Some(m) => match usize::try_from(*m.get_ref()) {
                Ok(n) if (1..=MAX_KEYS).contains(&n) => n,
                _ => {
                    let what = format!("must be an integer from 1 to {MAX_KEYS}");
                    return loc.err(m.span(), &format!("{key}.max_keys_per_source"), what);
                }
            },
        };
        out.rates.insert(name, RateConfig { rate, key: key_kind, max_keys_per_source, origin });
    }
    for (name, c) in raw.chain {
        let key = format!("chain.{name}");
        let Some(chain) = Chain::from_name(&name) else {
            if name == "file" {
                return loc.err(
                    c.span(),
                    &key,
                    "chain file has no default of its own: the [file_transfer] checks follow its rules, then files pass",
                );
            }
            return loc.err(c.span(), &key, chain_error(&name));
        };
        let c = c.into_inner();
        let action = match c.default.get_ref().as_str() {
            "pass" => ActionConfig::Pass,
            "drop" => ActionConfig::Drop,
            "bounce" => ActionConfig::Bounce { condition: StanzaCondition::PolicyViolation, text: None },
            other => {
                return loc.err(
                    c.default.span(),
                    &format!("{key}.default"),
                    format!("'{other}': a chain's default is \"pass\", \"drop\" or \"bounce\""),
                )
            }
        };
        out.defaults.insert(chain, action);
    }
    let first = out.rules.len();
    for (i, r) in raw.rule.into_iter().enumerate() {
        let key = format!("rule[{}]", first + i);
        let origin = loc.origin(r.span(), &key);
        let r = r.into_inner();
        let name = r.name.get_ref().trim().to_owned();
        check_name(&name, r.name.span(), &format!("{key}.name"), loc)?;
        let existing = out
            .rules
            .iter()
            .map(|o| (&o.name, &o.origin))
            .chain(out.file_rules.iter().map(|o| (&o.name, &o.origin)))
            .find(|(n, _)| **n == name);
        if let Some((_, other)) = existing {
            return loc.err(
                r.name.span(),
                &format!("{key}.name"),
                format!("rule '{name}' already exists ({}:{})", other.file.display(), other.line),
            );
        }
        // The file chain judges transfers, not stanzas: its own conditions and actions.
        if let Some(v) = &r.chain {
            let names = strings(v.get_ref()).unwrap_or_default();
            if names.iter().any(|n| n == "file") {
                if names.len() != 1 {
                    return loc.err(
                        v.span(),
                        &format!("{key}.chain"),
                        "chain \"file\" judges transfers, not stanzas: give it a rule of its own",
                    );
                }
                out.file_rules.push(file::file_rule(&r, name, &key, origin, loc)?);
                continue;
            }
        }
        let chains = match &r.chain {
            None => Chain::ALL.to_vec(),
            Some(v) => {
                let names = strings(v.get_ref()).ok_or(()).or_else(|()| {
                    loc.err(v.span(), &format!("{key}.chain"), "expected a chain name or a list of them")
                })?;
                let mut chains = Vec::new();
                for n in names {
                    match Chain::from_name(&n) {
                        Some(c) if !chains.contains(&c) => chains.push(c),
                        Some(_) => {}
                        None => return loc.err(v.span(), &format!("{key}.chain"), chain_error(&n)),
                    }
                }
                chains
            }
        };
        let when = match &r.when {
            None => Vec::new(),
            Some(w) => conditions(w.get_ref(), &format!("{key}.when"), loc, 0)?,
        };
        let text = r.text.as_ref().map(|t| t.get_ref().clone());
        let action_key = format!("{key}.action");
        let action = match r.action.get_ref().as_str() {
            "pass" => ActionConfig::Pass,
            "drop" => ActionConfig::Drop,
            "log" => ActionConfig::Log,
            "quarantine" => ActionConfig::Quarantine,
            "strip" => ActionConfig::Strip,
            "mask" => {
                ActionConfig::Mask { with: r.mask.as_ref().map_or_else(|| "*".to_owned(), |m| m.get_ref().clone()) }
            }
            "bounce" => {
                let condition = match &r.error {
                    None => StanzaCondition::PolicyViolation,
                    Some(e) => StanzaCondition::from_name(e.get_ref()).ok_or(()).or_else(|()| {
                        loc.err(
                            e.span(),
                            &format!("{key}.error"),
                            format!("'{}' is not a stanza error condition (RFC 6120 §8.3.3)", e.get_ref()),
                        )
                    })?,
                };
                ActionConfig::Bounce { condition, text: text.clone() }
            }
            "close" => {
                let condition = match &r.error {
                    None => Condition::PolicyViolation,
                    Some(e) => Condition::from_name(e.get_ref()).ok_or(()).or_else(|()| {
                        loc.err(
                            e.span(),
                            &format!("{key}.error"),
                            format!("'{}' is not a stream error condition (RFC 6120 §4.9.3)", e.get_ref()),
                        )
                    })?,
                };
                ActionConfig::Close { condition, text: text.clone() }
            }
            other => {
                return loc.err(
                    r.action.span(),
                    &action_key,
                    format!(
                        "unknown action '{other}' (expected pass, drop, bounce, close, strip, mask, log or quarantine)"
                    ),
                )
            }
        };
        let only = |field: &Option<Spanned<String>>, k: &str, allowed: &[&str]| -> Result<(), ConfigError> {
            match field {
                Some(f) if !allowed.contains(&action.as_str()) => loc.err(
                    f.span(),
                    &format!("{key}.{k}"),
                    format!("only meaningful with action = {}", allowed.join(" or ")),
                ),
                _ => Ok(()),
            }
        };
        only(&r.error, "error", &["bounce", "close"])?;
        only(&r.text, "text", &["bounce", "close"])?;
        only(&r.mask, "mask", &["mask"])?;
        let has = |f: fn(&ConditionConfig) -> bool| when.iter().any(f);
        if action == ActionConfig::Strip
            && !has(|c| matches!(c, ConditionConfig::Payload(_) | ConditionConfig::Path(_)))
        {
            return loc.err(r.action.span(), &action_key, "strip needs a payload or path condition (what to strip)");
        }
        if matches!(action, ActionConfig::Mask { .. })
            && !has(|c| matches!(c, ConditionConfig::BodyContains(_) | ConditionConfig::BodyRegex(_)))
        {
            return loc.err(
                r.action.span(),
                &action_key,
                "mask needs a body_contains or body_regex condition (what to mask)",
            );
        }
        if let Some(raw) = &r.regex_raw {
            if !when.iter().any(has_regex) {
                return loc.err(raw.span(), &format!("{key}.regex_raw"), "only meaningful with a body_regex condition");
            }
        }
        let regex_raw = r.regex_raw.as_ref().is_some_and(|r| *r.get_ref());
        out.rules.push(RuleConfig {
            name,
            chains,
            when,
            action,
            log_only: r.log_only.unwrap_or(false),
            regex_raw,
            origin,
        });
    }
    Ok(())
}

fn chain_error(name: &str) -> String {
    format!("unknown chain '{name}' (expected \"c2s-in\", \"c2s-out\", \"s2s-in\", \"s2s-out\" or \"file\")")
}

fn check_name(name: &str, span: std::ops::Range<usize>, key: &str, loc: &Locator<'_>) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        loc.err(span, key, format!("'{name}': names are 1-64 letters, digits, '-', '_' or '.'"))
    }
}

/// A list file: one entry a line, `#` starts a comment, blank lines skipped.
fn list_file_entries(
    text: &str,
    path: &Path,
    key: &str,
    declared: super::Origin,
) -> Result<Vec<Located<String>>, ConfigError> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or_default().trim();
        if entry.is_empty() {
            continue;
        }
        if entries.len() == MAX_LIST_ENTRIES {
            return Err(declared.error(format!("{}: more than {MAX_LIST_ENTRIES} entries", path.display())));
        }
        let origin = super::Origin { file: path.to_path_buf(), line: i + 1, key: key.to_owned() };
        entries.push(Located { value: entry.to_owned(), origin });
    }
    Ok(entries)
}

/// An RTBL list: its node, the file it is kept in (`STATE_DIR/rtbl/NAME.list`, written by the
/// daemon as the node changes) and the entries that file holds now (none before the first
/// fetch). Entries are kept in the form the node's kind needs ([`crate::antispam::rtbl`]), so a
/// line that is not one is skipped rather than failing the whole config.
fn rtbl_list(
    name: &str,
    rtbl: Spanned<RawRtbl>,
    state_dir: &Path,
    key: &str,
    loc: &Locator<'_>,
    files: &dyn Files,
) -> Result<(RtblSource, PathBuf, Vec<Located<String>>), ConfigError> {
    let span = rtbl.span();
    let r = rtbl.into_inner();
    let service = match crate::jid::parse(r.service.get_ref()) {
        Some(j) if j.resource().is_none() && !r.service.get_ref().contains(['\'', '"', '<', '&']) => j.to_string(),
        _ => return loc.err(r.service.span(), &format!("{key}.rtbl.service"), "must be the pubsub service's JID"),
    };
    let node = r.node.get_ref();
    if node.is_empty() || node.len() > MAX_NODE_NAME || node.chars().any(|c| c.is_control() || "'\"<&".contains(c)) {
        return loc.err(
            r.node.span(),
            &format!("{key}.rtbl.node"),
            format!("must be a node name of 1 to {MAX_NODE_NAME} characters without control characters or quotes"),
        );
    }
    let file = state_dir.join("rtbl").join(format!("{name}.list"));
    let text = match files.read(&file) {
        Ok(t) => t,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::Unsupported) => String::new(),
        Err(e) => return Err(loc.origin(span, &format!("{key}.rtbl")).error(format!("{}: {e}", file.display()))),
    };
    let list = crate::antispam::rtbl::RtblList::from_file_text(node, &text);
    let origin = super::Origin { file: file.clone(), line: 0, key: key.to_owned() };
    let entries = list.entries().map(|e| Located { value: e.to_owned(), origin: origin.clone() }).collect();
    Ok((RtblSource { service, node: node.clone() }, file, entries))
}

/// A string or an array of strings.
fn strings(v: &toml::Value) -> Option<Vec<String>> {
    match v {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Array(a) => a.iter().map(|x| x.as_str().map(str::to_owned)).collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::wildcard;

    #[test]
    fn wildcards() {
        assert!(wildcard("*.toml", "a.toml"));
        assert!(wildcard("*.toml", ".toml"));
        assert!(!wildcard("*.toml", "a.toml.bak"));
        assert!(wildcard("p?.toml", "p1.toml"));
        assert!(wildcard("*", "anything"));
        assert!(!wildcard("a*b", "acbd"));
        assert!(wildcard("a*b*c", "aXbYc"));
    }
}
