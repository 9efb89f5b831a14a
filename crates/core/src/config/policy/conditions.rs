//! A rule's `when` table as written (`kind`, `from_in`, `body_regex`, `any`, `not`, …) into
//! [`ConditionConfig`]s: known keys, value shapes and a bounded `any`/`not` nesting depth.
//! What needs the matchers (regexes, patterns, list names) is checked when the policy compiles.

use std::collections::BTreeMap;

use toml::Spanned;

use super::strings;
use crate::config::locate::Locator;
use crate::config::ConfigError;
use crate::policy::spec::{ConditionConfig, Located};
use crate::stanza::Kind;

/// Deepest `any`/`not` nesting.
const MAX_CONDITION_DEPTH: usize = 8;

/// Does a `body_regex` condition appear in `c` (inside `any`/`not` too)?
pub(super) fn has_regex(c: &ConditionConfig) -> bool {
    match c {
        ConditionConfig::BodyRegex(_) => true,
        ConditionConfig::Any(groups) => groups.iter().flatten().any(has_regex),
        ConditionConfig::Not(group) => group.iter().any(has_regex),
        _ => false,
    }
}

const CONDITION_KEYS: &[&str] = &[
    "kind",
    "type",
    "from",
    "to",
    "user",
    "from_in",
    "to_in",
    "from_domain_in",
    "to_domain_in",
    "source_ip",
    "payload",
    "path",
    "body_contains",
    "body_regex",
    "url_in",
    "rate",
    "any",
    "not",
];

pub(super) fn conditions(
    when: &BTreeMap<String, Spanned<toml::Value>>,
    key: &str,
    loc: &Locator<'_>,
    depth: usize,
) -> Result<Vec<ConditionConfig>, ConfigError> {
    if depth > MAX_CONDITION_DEPTH {
        return Err(loc.origin(0..0, key).error(format!("any/not nested deeper than {MAX_CONDITION_DEPTH}")));
    }
    let mut out = Vec::new();
    let mut rate = None;
    for (name, value) in when {
        let k = format!("{key}.{name}");
        let span = value.span();
        let v = value.get_ref();
        let located = |s: String| Located { value: s, origin: loc.origin(span.clone(), &k) };
        let list = || -> Result<Vec<Located<String>>, ConfigError> {
            let items = strings(v)
                .ok_or(())
                .or_else(|()| loc.err(span.clone(), &k, "expected a string or a list of strings"))?;
            if items.is_empty() {
                return loc.err(span.clone(), &k, "an empty list never matches; remove the condition");
            }
            Ok(items.into_iter().map(located).collect())
        };
        let one = || -> Result<Located<String>, ConfigError> {
            match v {
                toml::Value::String(s) => Ok(located(s.clone())),
                _ => loc.err(span.clone(), &k, "expected the name of a list"),
            }
        };
        let c = match name.as_str() {
            "kind" => {
                let mut kinds = Vec::new();
                for item in list()? {
                    let kind = match item.value.as_str() {
                        "message" => Kind::Message,
                        "presence" => Kind::Presence,
                        "iq" => Kind::Iq,
                        other => return loc.err(span, &k, format!("'{other}' is not message, presence or iq")),
                    };
                    kinds.push(kind);
                }
                ConditionConfig::Kind(kinds)
            }
            "type" => ConditionConfig::Type(list()?.into_iter().map(|l| l.value).collect()),
            "from" => ConditionConfig::From(list()?),
            "to" => ConditionConfig::To(list()?),
            "user" => ConditionConfig::User(list()?),
            "from_in" => ConditionConfig::FromIn(one()?),
            "to_in" => ConditionConfig::ToIn(one()?),
            "from_domain_in" => ConditionConfig::FromDomainIn(one()?),
            "to_domain_in" => ConditionConfig::ToDomainIn(one()?),
            "url_in" => ConditionConfig::UrlIn(one()?),
            "source_ip" => ConditionConfig::SourceIp(list()?),
            "payload" => ConditionConfig::Payload(list()?.into_iter().map(|l| l.value).collect()),
            "path" => ConditionConfig::Path(list()?),
            "body_contains" => ConditionConfig::BodyContains(list()?),
            "body_regex" => ConditionConfig::BodyRegex(list()?),
            "rate" => {
                // Evaluated last: a bucket is charged only for stanzas that meet every other condition.
                rate = Some(ConditionConfig::Rate(one()?));
                continue;
            }
            "any" => {
                let toml::Value::Array(groups) = v else {
                    return loc.err(span, &k, "expected a list of condition tables: any = [ {...}, {...} ]");
                };
                let mut out_groups = Vec::new();
                for (i, g) in groups.iter().enumerate() {
                    out_groups.push(group(g, &format!("{k}[{i}]"), span.clone(), loc, depth)?);
                }
                if out_groups.is_empty() {
                    return loc.err(span, &k, "an empty any never matches");
                }
                ConditionConfig::Any(out_groups)
            }
            "not" => ConditionConfig::Not(group(v, &k, span.clone(), loc, depth)?),
            other => {
                return loc.err(
                    span,
                    &k,
                    format!("unknown condition '{other}' (expected one of {})", CONDITION_KEYS.join(", ")),
                )
            }
        };
        out.push(c);
    }
    out.extend(rate);
    Ok(out)
}

/// A nested condition table (inside `any` or `not`): no spans inside, so its keys get the
/// outer key's line.
fn group(
    v: &toml::Value,
    key: &str,
    span: std::ops::Range<usize>,
    loc: &Locator<'_>,
    depth: usize,
) -> Result<Vec<ConditionConfig>, ConfigError> {
    let toml::Value::Table(t) = v else {
        return loc.err(span, key, "expected a table of conditions, e.g. { kind = \"message\" }");
    };
    let map: BTreeMap<String, Spanned<toml::Value>> =
        t.iter().map(|(k, v)| (k.clone(), Spanned::new(span.clone(), v.clone()))).collect();
    let conds = conditions(&map, key, loc, depth + 1)?;
    if conds.is_empty() {
        return loc.err(span, key, "an empty condition table");
    }
    Ok(conds)
}
