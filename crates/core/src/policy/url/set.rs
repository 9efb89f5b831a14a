//! [`UrlSet`]: a compiled URL list, matched by host suffix and path prefix.
//!
//! Owns the entry syntax and the lookup: a host entry matches the host and its subdomains, a
//! host+path entry also needs the path to start with the entry's at a segment boundary. Lookup
//! tries at most the listed number of host labels and path segments, so its cost never grows
//! with the number of entries (README "Cost").

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use super::normalize::{parse_url, MAX_ENTRY_HOST_BYTES};
use super::{NormalizedUrl, MAX_URL_BYTES};

/// A compiled URL list (see the module docs for entry syntax and matching).
#[derive(Debug, Clone, Default)]
pub struct UrlSet {
    /// Host-only entries, by normalized host.
    hosts: HashSet<Box<str>>,
    /// Host+path entries: host → (path prefix → the entry as written back, `host/path`).
    paths: HashMap<Box<str>, HashMap<Box<str>, Box<str>>>,
    /// Most labels of any listed host: longer suffixes of an input host cannot match.
    max_labels: usize,
    /// Most segments of any listed path: longer prefixes of an input path cannot match.
    max_segments: usize,
}

impl UrlSet {
    /// Compile list entries: `phish.example`, `evil.example/payload`, `https://Evil.Example/x?y`.
    ///
    /// A host-only entry matches the host and all its subdomains (there is no `*.` syntax; it is
    /// rejected with a hint). A host+path entry matches the same hosts when the path starts with
    /// the entry's path at a segment boundary: `/payload` matches `/payload`, `/payload/` and
    /// `/payload/x`, not `/payloadx`. Trailing slashes of an entry are ignored (`host/` is a
    /// host-only entry). Scheme, port, query and fragment are ignored; userinfo is an error.
    ///
    /// Errors name the index and the entry.
    pub fn from_entries<I, S>(entries: I) -> Result<UrlSet, (usize, String)>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = UrlSet::default();
        for (index, entry) in entries.into_iter().enumerate() {
            set.insert(entry.as_ref()).map_err(|why| (index, format!("URL entry {:?}: {why}", entry.as_ref())))?;
        }
        Ok(set)
    }

    /// Add one entry (syntax as in [`UrlSet::from_entries`]).
    pub fn insert(&mut self, entry: &str) -> Result<(), String> {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err("empty entry".into());
        }
        if entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("contains whitespace".into());
        }
        if let Some(host) = entry.strip_prefix("*.") {
            return Err(format!("write {host:?}: a host entry already matches all its subdomains"));
        }
        if entry.len() > MAX_URL_BYTES {
            return Err(format!("longer than {MAX_URL_BYTES} bytes"));
        }
        let (url, has_userinfo) = parse_url(entry).ok_or("not a URL or host name")?;
        if has_userinfo {
            return Err("has user info (`user@`): list the host alone".into());
        }
        if url.host.len() > MAX_ENTRY_HOST_BYTES || url.host.split('.').any(str::is_empty) {
            return Err("not a valid host name".into());
        }
        let labels = label_count(&url.host);
        let path = url.path.trim_end_matches('/');
        if path.is_empty() {
            self.hosts.insert(url.host.into());
        } else {
            let written = format!("{}{path}", url.host).into_boxed_str();
            self.max_segments = self.max_segments.max(path.matches('/').count());
            self.paths.entry(url.host.into()).or_default().insert(path.into(), written);
        }
        self.max_labels = self.max_labels.max(labels);
        Ok(())
    }

    /// Number of distinct entries.
    pub fn len(&self) -> usize {
        self.hosts.len() + self.paths.values().map(HashMap::len).sum::<usize>()
    }

    /// Whether the list has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry matching `url`, in normalized spelling (`evil.example/payload`), if any.
    ///
    /// When several match, the most specific wins — the longest listed host, then a path entry
    /// over a host entry, then the longest path — so the answer does not depend on entry order.
    pub fn matches(&self, url: &NormalizedUrl) -> Option<&str> {
        let mut best = None;
        for host in host_suffixes(&url.host, self.max_labels) {
            if let Some(paths) = self.paths.get(host) {
                if let Some(entry) = longest_path_match(paths, &url.path, self.max_segments) {
                    best = Some(entry);
                    continue;
                }
            }
            if let Some(entry) = self.hosts.get(host) {
                best = Some(&**entry);
            }
        }
        best
    }
}

fn label_count(host: &str) -> usize {
    host.bytes().filter(|&b| b == b'.').count() + 1
}

/// The label suffixes of `host` with at most `max_labels` labels, shortest first
/// (`example`, `evil.example`, …). IP literals have no suffixes but themselves.
fn host_suffixes(host: &str, max_labels: usize) -> impl Iterator<Item = &str> {
    let is_ip = host.starts_with('[') || host.parse::<Ipv4Addr>().is_ok();
    let mut end_labels = 0;
    let mut cut = Some(host.len());
    std::iter::from_fn(move || {
        let at = cut?;
        if is_ip {
            cut = None;
            return (max_labels > 0).then_some(host);
        }
        if end_labels >= max_labels {
            return None;
        }
        end_labels += 1;
        match host[..at].rfind('.') {
            Some(dot) => {
                cut = Some(dot);
                Some(&host[dot + 1..])
            }
            None => {
                cut = None;
                Some(host)
            }
        }
    })
}

/// The entry of the longest listed prefix of `path` that ends at a segment boundary.
fn longest_path_match<'a>(paths: &'a HashMap<Box<str>, Box<str>>, path: &str, max_segments: usize) -> Option<&'a str> {
    let mut best = None;
    let boundaries = path
        .match_indices('/')
        .map(|(i, _)| i)
        .skip(1)
        .chain((!path.ends_with('/')).then_some(path.len()))
        .take(max_segments);
    for end in boundaries {
        if let Some(entry) = paths.get(&path[..end]) {
            best = Some(&**entry);
        }
    }
    best
}
