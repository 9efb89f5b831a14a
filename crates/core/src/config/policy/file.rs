//! `[[rule]] chain = "file"` as written: its own conditions (sender, recipient, transport,
//! size, name, media types, hash list, DLP/antivirus results) and actions (`pass`, `block`,
//! `log`, `quarantine`), checked here with the line of the offending key ([`crate::policy::file`]).

use std::collections::BTreeMap;

use toml::Spanned;

use super::{strings, RawRule};
use crate::config::locate::Locator;
use crate::config::ConfigError;
use crate::origin::Origin;
use crate::policy::file::{FileActionConfig, FileConditionConfig, FileRuleConfig, Transport};
use crate::policy::spec::Located;

/// Transports whose files a `quarantine` rule can keep.
const QUARANTINE_TRANSPORTS: &[Transport] = &[Transport::S5b, Transport::Upload];

const FILE_CONDITION_KEYS: &[&str] = &[
    "from",
    "to",
    "from_in",
    "to_in",
    "transport",
    "size_over",
    "name",
    "declared_type",
    "media_type",
    "hash_in",
    "dlp",
    "malware",
    "scanner_error",
];

/// A `file` rule (the name is checked already).
pub(super) fn file_rule(
    r: &RawRule,
    name: String,
    key: &str,
    origin: Origin,
    loc: &Locator<'_>,
) -> Result<FileRuleConfig, ConfigError> {
    let action = match r.action.get_ref().as_str() {
        "pass" => FileActionConfig::Pass,
        "block" => FileActionConfig::Block { text: r.text.as_ref().map(|t| t.get_ref().clone()) },
        "log" => FileActionConfig::Log,
        "quarantine" => FileActionConfig::Quarantine,
        other => {
            return loc.err(
                r.action.span(),
                &format!("{key}.action"),
                format!("unknown action '{other}' on chain file (expected pass, block, log or quarantine)"),
            )
        }
    };
    if let Some(t) = &r.text {
        if !matches!(action, FileActionConfig::Block { .. }) {
            return loc.err(t.span(), &format!("{key}.text"), "only meaningful with action = block");
        }
    }
    for (field, k) in [(&r.error, "error"), (&r.mask, "mask")] {
        if let Some(f) = field {
            return loc.err(f.span(), &format!("{key}.{k}"), "not meaningful on chain file");
        }
    }
    if let Some(raw) = &r.regex_raw {
        return loc.err(raw.span(), &format!("{key}.regex_raw"), "not meaningful on chain file");
    }
    let when = match &r.when {
        None => Vec::new(),
        Some(w) => conditions(w.get_ref(), &format!("{key}.when"), loc)?,
    };
    if action == FileActionConfig::Quarantine {
        // Only the relay and the upload proxy see the file's bytes as one stream they can copy
        // to disk; IBB chunks travel inside the c2s session and are not kept (yet).
        let transports = when.iter().find_map(|c| match c {
            FileConditionConfig::Transport(t) => Some(t),
            _ => None,
        });
        if !transports.is_some_and(|t| t.iter().all(|t| QUARANTINE_TRANSPORTS.contains(t))) {
            return loc.err(
                r.action.span(),
                &format!("{key}.action"),
                "quarantine on chain file keeps files of transport s5b and upload only: add \
                 when.transport = [\"s5b\", \"upload\"] (or one of them); ibb cannot be kept",
            );
        }
    }
    Ok(FileRuleConfig { name, when, action, log_only: r.log_only.unwrap_or(false), origin })
}

fn conditions(
    when: &BTreeMap<String, Spanned<toml::Value>>,
    key: &str,
    loc: &Locator<'_>,
) -> Result<Vec<FileConditionConfig>, ConfigError> {
    let mut out = Vec::new();
    for (name, value) in when {
        let k = format!("{key}.{name}");
        let span = value.span();
        let v = value.get_ref();
        let located = |s: String| Located { value: s, origin: loc.origin(span.clone(), &k) };
        let list = || -> Result<Vec<String>, ConfigError> {
            let items = strings(v)
                .ok_or(())
                .or_else(|()| loc.err(span.clone(), &k, "expected a string or a list of strings"))?;
            if items.is_empty() {
                return loc.err(span.clone(), &k, "an empty list never matches; remove the condition");
            }
            Ok(items)
        };
        let one = || -> Result<Located<String>, ConfigError> {
            match v {
                toml::Value::String(s) => Ok(located(s.clone())),
                _ => loc.err(span.clone(), &k, "expected the name of a list"),
            }
        };
        let flag = || -> Result<bool, ConfigError> {
            match v {
                toml::Value::Boolean(b) => Ok(*b),
                _ => loc.err(span.clone(), &k, "expected true or false"),
            }
        };
        let types = || -> Result<Vec<String>, ConfigError> {
            let mut out = Vec::new();
            for t in list()? {
                let t = t.trim().to_ascii_lowercase();
                let ok = t.split_once('/').is_some_and(|(a, b)| {
                    !a.is_empty() && !b.is_empty() && a != "*" && !b.contains('/') && (b == "*" || !b.contains('*'))
                });
                if !ok {
                    return loc.err(span.clone(), &k, format!("'{t}' is not a media type (type/subtype or type/*)"));
                }
                out.push(t);
            }
            Ok(out)
        };
        let c = match name.as_str() {
            "from" => FileConditionConfig::From(list()?.into_iter().map(located).collect()),
            "to" => FileConditionConfig::To(list()?.into_iter().map(located).collect()),
            "from_in" => FileConditionConfig::FromIn(one()?),
            "to_in" => FileConditionConfig::ToIn(one()?),
            "hash_in" => FileConditionConfig::HashIn(one()?),
            "transport" => {
                let mut ts = Vec::new();
                for t in list()? {
                    match Transport::from_name(&t) {
                        Some(t) => ts.push(t),
                        None => return loc.err(span, &k, format!("'{t}' is not a transport (s5b, ibb or upload)")),
                    }
                }
                FileConditionConfig::Transport(ts)
            }
            "size_over" => match v {
                toml::Value::Integer(n) if *n >= 0 => FileConditionConfig::SizeOver(*n as u64),
                _ => return loc.err(span, &k, "expected a number of bytes (a non-negative integer)"),
            },
            "name" => {
                let names = list()?;
                if let Some(bad) = names.iter().find(|n| n.is_empty() || n.len() > 255) {
                    return loc.err(span, &k, format!("'{bad}': a file name pattern is 1 to 255 bytes"));
                }
                FileConditionConfig::Name(names)
            }
            "declared_type" => FileConditionConfig::DeclaredType(types()?),
            "media_type" => FileConditionConfig::MediaType(types()?),
            "dlp" => FileConditionConfig::Dlp(flag()?),
            "malware" => FileConditionConfig::Malware(flag()?),
            "scanner_error" => FileConditionConfig::ScannerError(flag()?),
            other => {
                return loc.err(
                    span,
                    &k,
                    format!(
                        "unknown condition '{other}' on chain file (expected one of {})",
                        FILE_CONDITION_KEYS.join(", ")
                    ),
                )
            }
        };
        out.push(c);
    }
    Ok(out)
}
