//! From byte spans in a config file's text to [`Origin`]s: the line and the dotted key
//! (`listener[1].bind`) that an error names, and paths relative to the file's directory.

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::{ConfigError, Origin};

/// Resolves spans to lines and keys for one file's text.
pub(super) struct Locator<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a Path,
}

impl Locator<'_> {
    /// A TOML syntax or schema error, with the key at its position.
    pub(super) fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().to_owned();
        self.origin(span.clone(), &key_at(self.text, span.start)).error(message)
    }

    pub(super) fn origin(&self, span: Range<usize>, key: &str) -> Origin {
        let start = span.start.min(self.text.len());
        let line = self.text.as_bytes()[..start].iter().filter(|&&b| b == b'\n').count() + 1;
        Origin { file: self.file.to_path_buf(), line, key: key.to_owned() }
    }

    pub(super) fn err<T>(&self, span: Range<usize>, key: &str, msg: impl Into<String>) -> Result<T, ConfigError> {
        Err(self.origin(span, key).error(msg))
    }

    pub(super) fn path(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file.parent().unwrap_or(Path::new("")).join(p)
        }
    }
}

/// The dotted key whose key or value covers byte offset `at` (`listener[1].bind`), for errors
/// that serde reports with only a span.
fn key_at(text: &str, at: usize) -> String {
    let Ok(doc) = text.parse::<toml_edit::Document<String>>() else {
        return String::new();
    };
    let mut best = String::new();
    walk_table(doc.as_table(), "", at, &mut best);
    best
}

fn covers(span: Option<Range<usize>>, at: usize) -> bool {
    span.is_some_and(|s| s.start <= at && at < s.end.max(s.start + 1))
}

fn walk_table(table: &toml_edit::Table, prefix: &str, at: usize, best: &mut String) {
    for (k, item) in table.iter() {
        let path = if prefix.is_empty() { k.to_owned() } else { format!("{prefix}.{k}") };
        let key_span = table.key(k).and_then(|key| key.span());
        if covers(key_span, at) || covers(item.span(), at) {
            *best = path.clone();
        }
        walk_item(item, &path, at, best);
    }
}

fn walk_item(item: &toml_edit::Item, path: &str, at: usize, best: &mut String) {
    match item {
        toml_edit::Item::Table(t) => walk_table(t, path, at, best),
        toml_edit::Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                if covers(t.span(), at) {
                    *best = p.clone();
                }
                walk_table(t, &p, at, best);
            }
        }
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => {
            for (k, v) in t.iter() {
                let p = format!("{path}.{k}");
                if covers(v.span(), at) || covers(t.key(k).and_then(|key| key.span()), at) {
                    *best = p;
                }
            }
        }
        _ => {}
    }
}
