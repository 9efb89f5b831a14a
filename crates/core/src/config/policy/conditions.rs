//! A rule's `when` table as written (`kind`, `from_in`, `body_regex`, `any`, `not`, …) into
//! [`ConditionConfig`]s: known keys, value shapes and a bounded `any`/`not` nesting depth.
//! What needs the matchers (regexes, patterns, list names) is checked when the policy compiles.

use std::collections::BTreeMap;
use std::time::Duration;

use toml::Spanned;

use super::strings;
use crate::config::locate::Locator;
use crate::config::ConfigError;
use crate::policy::spec::{ConditionConfig, FanoutConfig, Located, RateKey, ReportedConfig, WaveConfig};
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
    "stranger",
    "stranger_domain",
    "roster_known",
    "fanout",
    "wave",
    "reported",
    "from_sha256_in",
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
    // Conditions that count (fanout, wave) come after the others: a copy is counted only for
    // stanzas that meet every other condition of the rule.
    let mut counting = Vec::new();
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
            "stranger" | "stranger_domain" | "roster_known" => {
                let toml::Value::Boolean(b) = v else { return loc.err(span, &k, "expected true or false") };
                match name.as_str() {
                    "stranger" => ConditionConfig::Stranger(*b),
                    "stranger_domain" => ConditionConfig::StrangerDomain(*b),
                    _ => ConditionConfig::RosterKnown(*b),
                }
            }
            "from_sha256_in" => ConditionConfig::FromSha256In(one()?),
            "fanout" | "wave" | "reported" => {
                let t = Table::new(v, &k, span.clone(), loc)?;
                let c = match name.as_str() {
                    "fanout" => {
                        t.only(&["recipients", "window", "key"])?;
                        let key = match t.string("key")? {
                            None => RateKey::FromBare,
                            Some(s) => match RateKey::ALL.into_iter().find(|x| x.as_str() == s) {
                                Some(x) => x,
                                None => {
                                    let all: Vec<&str> = RateKey::ALL.iter().map(|k| k.as_str()).collect();
                                    return t.err("key", format!("expected one of {}", all.join(", ")));
                                }
                            },
                        };
                        ConditionConfig::Fanout(FanoutConfig {
                            recipients: t.count("recipients", 1, 10_000)?.ok_or_else(|| t.missing("recipients"))?,
                            window: t.window("window", MAX_WINDOW)?.ok_or_else(|| t.missing("window"))?,
                            key,
                        })
                    }
                    "wave" => {
                        t.only(&["senders", "recipients", "window", "similarity", "min_length"])?;
                        let similarity = match t.get("similarity") {
                            None => crate::antispam::wave::DEFAULT_SIMILARITY,
                            Some(toml::Value::Float(f)) if (0.5..=1.0).contains(f) => *f,
                            Some(_) => return t.err("similarity", "expected a number from 0.5 to 1.0"),
                        };
                        ConditionConfig::Wave(WaveConfig {
                            senders: t.count("senders", 2, 100)?.ok_or_else(|| t.missing("senders"))?,
                            recipients: t.count("recipients", 2, 1000)?,
                            window: t.window("window", MAX_WINDOW)?.ok_or_else(|| t.missing("window"))?,
                            similarity,
                            min_length: t.count("min_length", 1, 10_000)?.unwrap_or(DEFAULT_WAVE_MIN_LENGTH),
                        })
                    }
                    _ => {
                        t.only(&["reporters", "window"])?;
                        ConditionConfig::Reported(ReportedConfig {
                            reporters: t
                                .count("reporters", 1, crate::antispam::MAX_REPORTERS)?
                                .ok_or_else(|| t.missing("reporters"))?,
                            window: t
                                .window("window", crate::antispam::MAX_REPORT_AGE)?
                                .ok_or_else(|| t.missing("window"))?,
                        })
                    }
                };
                if name != "reported" {
                    counting.push(c);
                    continue;
                }
                c
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
    out.extend(counting);
    out.extend(rate);
    Ok(out)
}

/// Longest `window` of a counting condition.
const MAX_WINDOW: Duration = Duration::from_secs(86_400);
/// `wave.min_length` unless set: shorter texts ("ok", "see you") are everyday repeats.
pub const DEFAULT_WAVE_MIN_LENGTH: usize = 24;

/// An inline table condition (`fanout = { … }`): its keys, with errors at the condition's line.
struct Table<'a> {
    t: &'a toml::map::Map<String, toml::Value>,
    key: &'a str,
    span: std::ops::Range<usize>,
    loc: &'a Locator<'a>,
}

impl<'a> Table<'a> {
    fn new(
        v: &'a toml::Value,
        key: &'a str,
        span: std::ops::Range<usize>,
        loc: &'a Locator<'a>,
    ) -> Result<Self, ConfigError> {
        match v {
            toml::Value::Table(t) => Ok(Table { t, key, span, loc }),
            _ => loc.err(span, key, "expected a table, e.g. { window = \"10m\", ... }"),
        }
    }

    fn err<T>(&self, name: &str, what: impl Into<String>) -> Result<T, ConfigError> {
        self.loc.err(self.span.clone(), &format!("{}.{name}", self.key), what.into())
    }

    fn missing(&self, name: &str) -> ConfigError {
        self.loc.origin(self.span.clone(), &format!("{}.{name}", self.key)).error("missing")
    }

    fn only(&self, known: &[&str]) -> Result<(), ConfigError> {
        match self.t.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => self.err(k, format!("unknown key (expected one of {})", known.join(", "))),
            None => Ok(()),
        }
    }

    fn get(&self, name: &str) -> Option<&toml::Value> {
        self.t.get(name)
    }

    fn string(&self, name: &str) -> Result<Option<&str>, ConfigError> {
        match self.t.get(name) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(_) => self.err(name, "expected a string"),
        }
    }

    fn count(&self, name: &str, min: usize, max: usize) -> Result<Option<usize>, ConfigError> {
        match self.t.get(name) {
            None => Ok(None),
            Some(toml::Value::Integer(n)) if usize::try_from(*n).is_ok_and(|n| (min..=max).contains(&n)) => {
                Ok(usize::try_from(*n).ok())
            }
            Some(_) => self.err(name, format!("expected an integer from {min} to {max}")),
        }
    }

    fn window(&self, name: &str, max: Duration) -> Result<Option<Duration>, ConfigError> {
        match self.string(name)? {
            None => Ok(None),
            Some(s) => match crate::limit::parse_duration(s) {
                Some(d) if !d.is_zero() && d <= max => Ok(Some(d)),
                _ => self.err(name, format!("expected a duration such as \"10m\", at most {}s", max.as_secs())),
            },
        }
    }
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

/// `[antispam] report_threshold = { reporters, window, list, ttl }`.
pub(in crate::config) fn report_threshold(
    v: &toml::Spanned<toml::Value>,
    loc: &Locator<'_>,
) -> Result<crate::policy::spec::ReportThresholdConfig, ConfigError> {
    let key = "antispam.report_threshold";
    let t = Table::new(v.get_ref(), key, v.span(), loc)?;
    t.only(&["reporters", "window", "list", "ttl"])?;
    let list = t.string("list")?.ok_or_else(|| t.missing("list"))?.trim().to_owned();
    let ok = !list.is_empty()
        && list.len() <= 64
        && list.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !ok {
        return t.err("list", format!("'{list}': names are 1-64 letters, digits, '-', '_' or '.'"));
    }
    let threshold = crate::antispam::ReportThreshold {
        reporters: t.count("reporters", 1, crate::antispam::MAX_REPORTERS)?.ok_or_else(|| t.missing("reporters"))?,
        window: t.window("window", crate::antispam::MAX_REPORT_AGE)?.ok_or_else(|| t.missing("window"))?,
        list,
        ttl: t.window("ttl", crate::antispam::MAX_LISTED_TTL)?.ok_or_else(|| t.missing("ttl"))?,
    };
    Ok(crate::policy::spec::ReportThresholdConfig { threshold, origin: loc.origin(v.span(), key) })
}
