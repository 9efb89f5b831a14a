//! `[quarantine]`: the bounds of the store that keeps stanzas held by `quarantine` rules
//! (README "Anti-spam", Quarantine). Parsed here into [`QuarantineConfig`]; the daemon's
//! `quarantine` module keeps the entries (embedded under the state directory, or in Redis with
//! `[store] backend = "redis"`).
//!
//! Bounded by design (invariant 6, docs/DESIGN.md): a held stanza costs disk or Redis memory
//! until someone releases or deletes it, so the count, the bytes and the age are all capped;
//! past a cap a stanza is dropped and audited, never delivered (invariant 5, fail closed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::locate::Locator;
use super::ConfigError;
use crate::limit::{parse_bytes, parse_duration};

/// Most entries `max_entries` accepts.
pub const MAX_ENTRIES: usize = 10_000_000;
/// Longest `retention` accepted.
pub const MAX_RETENTION: Duration = Duration::from_secs(366 * 86_400);

/// `[quarantine]` as the daemon uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineConfig {
    /// Held entries kept at most (default 10,000).
    pub max_entries: usize,
    /// Bytes of held stanzas kept at most (default 64 MiB).
    pub max_bytes: u64,
    /// How long an entry is kept before it expires (default 14 days).
    pub retention: Duration,
    /// The embedded database file (`quarantine.redb` in the state directory).
    pub path: PathBuf,
}

impl QuarantineConfig {
    /// The defaults, with the database in `state_dir`.
    pub fn with_state_dir(state_dir: &Path) -> Self {
        QuarantineConfig {
            max_entries: 10_000,
            max_bytes: 64 << 20,
            retention: Duration::from_secs(14 * 86_400),
            path: state_dir.join("quarantine.redb"),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuarantine {
    max_entries: Option<Spanned<i64>>,
    max_bytes: Option<Spanned<toml::Value>>,
    retention: Option<Spanned<String>>,
}

/// Validate `[quarantine]`.
pub(super) fn quarantine(
    raw: Option<&RawQuarantine>,
    state_dir: &Path,
    loc: &Locator<'_>,
) -> Result<QuarantineConfig, ConfigError> {
    let mut q = QuarantineConfig::with_state_dir(state_dir);
    let Some(r) = raw else { return Ok(q) };
    if let Some(n) = &r.max_entries {
        match usize::try_from(*n.get_ref()) {
            Ok(n) if (1..=MAX_ENTRIES).contains(&n) => q.max_entries = n,
            _ => {
                return loc.err(
                    n.span(),
                    "quarantine.max_entries",
                    format!("must be an integer from 1 to {MAX_ENTRIES}"),
                )
            }
        }
    }
    if let Some(b) = &r.max_bytes {
        let bytes = match b.get_ref() {
            toml::Value::Integer(n) => u64::try_from(*n).ok(),
            toml::Value::String(s) => parse_bytes(s),
            _ => None,
        };
        match bytes {
            Some(n) if n >= 1024 => q.max_bytes = n,
            _ => {
                return loc.err(
                    b.span(),
                    "quarantine.max_bytes",
                    "expected a size of at least 1 KiB, e.g. \"64MiB\" or 67108864",
                )
            }
        }
    }
    if let Some(t) = &r.retention {
        match parse_duration(t.get_ref()) {
            Some(d) if !d.is_zero() && d <= MAX_RETENTION => q.retention = d,
            _ => {
                return loc.err(
                    t.span(),
                    "quarantine.retention",
                    "expected a duration such as \"14d\", above zero and at most 366 days",
                )
            }
        }
    }
    Ok(q)
}
