//! URLs in message bodies and out-of-band elements (XEP-0066 `<url/>`), and the list matcher for
//! them.
//!
//! This module owns three things: finding URL-like tokens in free text ([`extract_urls`]),
//! normalizing a URL to the one form lists are compared in ([`NormalizedUrl`]), and [`UrlSet`], a
//! compiled URL list whose lookup cost is bounded by the labels of the host and the segments of
//! the path, never by the number of entries (DESIGN.md, performance budget). It never fetches,
//! resolves or follows anything: it only reads text.
//!
//! Extraction is deliberately liberal — `report.pdf` comes out as the host `report.pdf` — because
//! an extracted URL is only ever compared with listed entries: a false candidate costs one
//! lookup, a missed one lets a listed link through. The work is bounded: at most
//! [`MAX_SCAN_BYTES`] of text, [`MAX_URL_BYTES`] per URL, [`MAX_CANDIDATES`] parse attempts and
//! [`MAX_URLS`] results per text. Hitting a bound is reported as [`Scan::Truncated`] so the policy
//! can fail closed (DESIGN.md invariant 5) instead of letting a listed URL hide behind 64 decoys.
//!
//! Normal form, shared by extracted URLs and list entries so both sides agree:
//! - the host is parsed as the WHATWG URL standard does for `http` (the `url` crate): IDN labels to
//!   punycode, ASCII lowercase, percent-escapes decoded, IPv4 in any spelling (`0x7f.1`,
//!   `2130706433`) to dotted decimal; the trailing root dot is removed. Userinfo and port are
//!   dropped: `http://good.example@evil.example:8080/` is a link to `evil.example`;
//! - the path has runs of `/` and `\` merged (as nginx and most servers do, so `//payload` does not
//!   evade `/payload`), dot segments resolved (also `%2e` spellings), escapes of unreserved
//!   characters (RFC 3986 §2.3) decoded, and ASCII case folded: a list must not be evaded by
//!   `/PAYLOAD` on servers that ignore case; the price, `/abc` also matching `/ABC` on a listed
//!   host, is acceptable for a blocklist;
//! - the scheme, query and fragment are ignored on both sides: any `scheme://` is read as
//!   `http://`, and a query would be evaded by reordering its parameters anyway.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use ::url::{Host, Url};

/// Most URLs taken from one text; more make the scan [`Scan::Truncated`].
pub const MAX_URLS: usize = 64;
/// Most candidates parsed for one text (failed parses included).
pub const MAX_CANDIDATES: usize = 16 * MAX_URLS;
/// Most bytes of one text that are scanned.
pub const MAX_SCAN_BYTES: usize = 1 << 20;
/// Most bytes of one URL that are considered; the rest of a longer token is ignored (the host and
/// the start of the path, which is what lists name, come first).
pub const MAX_URL_BYTES: usize = 2048;
/// Longest host a list entry may name (RFC 1035 §2.3.4 name length, without the root dot).
const MAX_ENTRY_HOST_BYTES: usize = 253;

/// A URL in the form lists are compared in (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NormalizedUrl {
    /// Lowercase ASCII (punycode for IDN), no trailing dot; IPv4 dotted decimal, IPv6 in `[]`.
    pub host: String,
    /// Normalized and case-folded, starts with `/`; no query, no fragment.
    pub path: String,
}

impl NormalizedUrl {
    /// Parse one URL — an OOB `<url/>` or a list entry — with or without a scheme
    /// (`https://evil.example/x`, `//evil.example/x`, `evil.example/x`). `None` if no host can be
    /// read from it.
    pub fn parse(s: &str) -> Option<NormalizedUrl> {
        parse_url(s).map(|(url, _)| url)
    }
}

/// Whether a scan saw all of its text.
#[must_use = "a truncated scan may have missed a listed URL"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Every URL-like token of the text was considered.
    Complete,
    /// A bound was hit ([`MAX_URLS`], [`MAX_CANDIDATES`] or [`MAX_SCAN_BYTES`]): later URLs were
    /// not extracted, and a policy that blocks listed URLs should treat the text as suspect.
    Truncated,
}

/// Find the URLs in free text: `scheme://` URLs (any scheme, read as `http`), and schemeless
/// `www.host.tld/path` or `host.tld/path` tokens. See the module docs for bounds and normal form.
pub fn extract_urls(text: &str) -> (Vec<NormalizedUrl>, Scan) {
    let mut out = Vec::new();
    let scan = extract_urls_into(text, &mut out);
    (out, scan)
}

/// Like [`extract_urls`], appending to the caller's `out` (which is not cleared) so a buffer can
/// be reused across stanzas.
pub fn extract_urls_into(text: &str, out: &mut Vec<NormalizedUrl>) -> Scan {
    let (text, mut scan) = if text.len() > MAX_SCAN_BYTES {
        (prefix_at_char_boundary(text, MAX_SCAN_BYTES), Scan::Truncated)
    } else {
        (text, Scan::Complete)
    };
    let mut budget = Budget { urls: MAX_URLS, candidates: MAX_CANDIDATES };
    // Only a token holding `://` or a dot (`.` or one the URL standard maps to it) can yield a URL
    // (see `plausible_raw_host`), so the scan jumps from one such spot to the next and reads only
    // the token around it: the tokens it skips are exactly those that would yield nothing.
    let mut triggers = Triggers::new(text.as_bytes());
    let mut from = 0;
    while let Some(hit) = triggers.next_from(from) {
        // `hit` starts a character that is not a delimiter, so its token is not empty.
        let start = text[from..hit]
            .char_indices()
            .rev()
            .find(|&(_, c)| is_delimiter(c))
            .map_or(from, |(i, c)| from + i + c.len_utf8());
        let end = text[hit..].find(is_delimiter).map_or(text.len(), |i| hit + i);
        if extract_from_token(&text[start..end], out, &mut budget).is_err() {
            scan = Scan::Truncated;
            break;
        }
        from = end;
    }
    scan
}

/// The dots a host may be spelled with: `.` and the ideographic, fullwidth and halfwidth ideographic
/// full stops, which the URL standard maps to it.
const DOTS: [char; 4] = ['.', '\u{3002}', '\u{ff0e}', '\u{ff61}'];

/// Finds the spots a URL can hang on: `://` and the [`DOTS`]. The non-ASCII dots start with
/// `0xE3` (U+3002) or `0xEF` (U+FF0E, U+FF61), lead bytes that never occur inside a character.
struct Triggers<'a> {
    bytes: &'a [u8],
    /// The next `0xEF` at or after the last search (`bytes.len()` if none): `memchr3` takes only
    /// three bytes, so this fourth one is searched for on its own, once per occurrence.
    next_ef: usize,
}

impl<'a> Triggers<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Triggers { bytes, next_ef: memchr::memchr(0xEF, bytes).unwrap_or(bytes.len()) }
    }

    /// The first trigger at or after `from`, which must be a character boundary.
    fn next_from(&mut self, mut from: usize) -> Option<usize> {
        let bytes = self.bytes;
        while from < bytes.len() {
            if self.next_ef < from {
                self.next_ef = memchr::memchr(0xEF, &bytes[from..]).map_or(bytes.len(), |i| from + i);
            }
            let at = match memchr::memchr3(b'.', b':', 0xE3, &bytes[from..self.next_ef]) {
                Some(i) => from + i,
                None if self.next_ef < bytes.len() => self.next_ef,
                None => return None,
            };
            let rest = &bytes[at..];
            let hit = match rest[0] {
                b'.' => true,
                b':' => rest.starts_with(b"://"),
                _ => DOTS[1..].iter().any(|d| rest.starts_with(d.encode_utf8(&mut [0; 4]).as_bytes())),
            };
            if hit {
                return Some(at);
            }
            from = at + 1;
        }
        None
    }
}

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

/// Which of the parse bounds ran out.
struct Exhausted;

struct Budget {
    urls: usize,
    candidates: usize,
}

fn extract_from_token(token: &str, out: &mut Vec<NormalizedUrl>, budget: &mut Budget) -> Result<(), Exhausted> {
    let mut first_scheme: Option<usize> = None;
    let colons = memchr::memchr_iter(b':', token.as_bytes());
    for at in colons.filter(|&at| token.as_bytes()[at..].starts_with(b"://")) {
        let Some(start) = scheme_start(token, at) else { continue };
        first_scheme = Some(first_scheme.map_or(start, |f| f.min(start)));
        // The candidate runs to the end of the token: a second `://` inside it (an open redirect,
        // `?u=http://evil.example/`) is also tried on its own.
        let candidate = trim_url(prefix_at_char_boundary(&token[start..], MAX_URL_BYTES));
        let Some(rest) = candidate.get(at - start + 3..) else { continue };
        try_candidate(rest, false, out, budget)?;
    }
    // Schemeless, over what comes before the first scheme (a later `://`, as in
    // `evil.example/x?u=a://b`, must not hide the link in front of it): brackets and `word:`
    // prefixes are split off (`[see](evil.example/x)`, `link:evil.example`), a `:` before digits
    // is kept as a port.
    let token = &token[..first_scheme.unwrap_or(token.len())];
    let mut piece_start = 0;
    let bytes = token.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let split =
            matches!(b, b'(' | b')' | b'[' | b']') || (b == b':' && !bytes.get(i + 1).is_some_and(u8::is_ascii_digit));
        if split {
            try_schemeless(&token[piece_start..i], out, budget)?;
            piece_start = i + 1;
        }
    }
    try_schemeless(&token[piece_start..], out, budget)
}

fn try_schemeless(piece: &str, out: &mut Vec<NormalizedUrl>, budget: &mut Budget) -> Result<(), Exhausted> {
    // `plausible_raw_host` wants a dot in the host, a part of the piece: look for one first.
    if !has_dot(piece) {
        return Ok(());
    }
    let piece = piece.trim_start_matches(|c: char| !c.is_alphanumeric());
    let piece = trim_url(prefix_at_char_boundary(piece, MAX_URL_BYTES));
    let host = &piece[..piece.find(['/', '\\', '?', '#']).unwrap_or(piece.len())];
    // `user@host` is an e-mail address or a JID (matched by the JID lists), not a link.
    if host.contains('@') || !plausible_raw_host(host) {
        return Ok(());
    }
    try_candidate(piece, true, out, budget)
}

/// Whether `s` holds one of the [`DOTS`].
fn has_dot(s: &str) -> bool {
    let bytes = s.as_bytes();
    memchr::memchr(b'.', bytes).is_some() || (memchr::memchr2(0xE3, 0xEF, bytes).is_some() && s.contains(&DOTS[1..]))
}

/// Before parsing a schemeless token: does it end in a TLD-like label of two or more characters
/// starting with a letter (`evil.example`, `пример.рф`), or is it four dotted numbers? Decimals,
/// versions and `e.g` cost no parse and no budget.
fn plausible_raw_host(host: &str) -> bool {
    let host = host.split(':').next().unwrap_or("");
    let is_dot = |c: char| matches!(c, '.' | '\u{3002}' | '\u{ff0e}' | '\u{ff61}');
    let host = host.trim_end_matches(is_dot);
    let mut labels = host.split(is_dot);
    let tld = labels.next_back().unwrap_or("");
    let dotted = labels.count();
    if dotted == 0 {
        return false;
    }
    let tld_like = tld.chars().nth(1).is_some() && tld.starts_with(char::is_alphabetic);
    tld_like
        || (dotted == 3 && host.split(is_dot).all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric())))
}

fn try_candidate(
    rest: &str,
    schemeless: bool,
    out: &mut Vec<NormalizedUrl>,
    budget: &mut Budget,
) -> Result<(), Exhausted> {
    if budget.candidates == 0 || budget.urls == 0 {
        return Err(Exhausted);
    }
    budget.candidates -= 1;
    let Some((url, _)) = parse_after_scheme(rest) else { return Ok(()) };
    if schemeless && !plausible_bare_host(&url.host, rest) {
        return Ok(());
    }
    budget.urls -= 1;
    out.push(url);
    Ok(())
}

/// A schemeless token names a host only if it ends in a TLD-like label (`3.14` and `e.g` are not
/// hosts) or is a dotted-quad IPv4 address (`1.2` would otherwise read as `1.0.0.2`).
fn plausible_bare_host(host: &str, raw: &str) -> bool {
    if host.parse::<Ipv4Addr>().is_ok() {
        let raw_host = raw.split(['/', '\\', '?', '#', ':']).next().unwrap_or("");
        return raw_host.trim_end_matches('.').split('.').count() == 4;
    }
    let tld = host.rsplit('.').next().unwrap_or("");
    tld.len() >= 2
        && tld.starts_with(|c: char| c.is_ascii_alphabetic())
        && tld.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Parse a URL given with or without a scheme; also says whether it carried userinfo.
fn parse_url(s: &str) -> Option<(NormalizedUrl, bool)> {
    let s = s.trim();
    let rest = match s.find("://") {
        Some(at) if scheme_start(s, at) == Some(0) => &s[at + 3..],
        _ => s.strip_prefix("//").unwrap_or(s),
    };
    parse_after_scheme(prefix_at_char_boundary(rest, MAX_URL_BYTES))
}

/// Parse what follows `scheme://` as an `http` URL and normalize it.
fn parse_after_scheme(rest: &str) -> Option<(NormalizedUrl, bool)> {
    // WHATWG skips any number of slashes after a special scheme: `http:///evil.example`.
    let rest = rest.trim_start_matches(['/', '\\']);
    let authority_end = rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let path = &tail[..tail.find(['?', '#']).unwrap_or(tail.len())];
    match parse_plain(authority, path) {
        Some(url) => Some((url, false)),
        None => parse_with_url_crate(authority, path),
    }
}

/// [`parse_after_scheme`] of `authority` and `path` (up to any query or fragment) by the URL
/// parser.
fn parse_with_url_crate(authority: &str, path: &str) -> Option<(NormalizedUrl, bool)> {
    let mut raw = String::with_capacity(7 + authority.len() + path.len());
    raw.push_str("http://");
    raw.push_str(authority);
    // Merge slash runs before dot segments are resolved, as servers do: `/a//../b` is `/b`.
    for c in path.chars() {
        let c = if c == '\\' { '/' } else { c };
        if !(c == '/' && raw.ends_with('/')) {
            raw.push(c);
        }
    }
    let url = Url::parse(&raw).ok()?;
    let host = match url.host()? {
        Host::Domain(d) => d.trim_end_matches('.').to_owned(),
        Host::Ipv4(a) => a.to_string(),
        Host::Ipv6(a) => format!("[{a}]"),
    };
    if host.is_empty() {
        return None;
    }
    let has_userinfo = !url.username().is_empty() || url.password().is_some();
    Some((NormalizedUrl { host, path: normalize_path(url.path()) }, has_userinfo))
}

/// The common case of [`parse_after_scheme`] without the URL parser: an ASCII host name of
/// letters, digits, dots and hyphens ending in a label that starts with a letter (so it is no IPv4
/// address), no IDN (`xn--`) label, no userinfo or port, and a path of plain characters without
/// escapes or dot segments. The URL standard leaves such a URL as it is but for ASCII case, so
/// the normal form is the same as the parser's. `None` if the URL is not this simple, to be parsed
/// properly.
fn parse_plain(authority: &str, path: &str) -> Option<NormalizedUrl> {
    if authority.is_empty() || authority.len() > MAX_ENTRY_HOST_BYTES {
        return None;
    }
    let mut last_label = "";
    for label in authority.split('.') {
        let b = label.as_bytes();
        let plain = !b.is_empty()
            && b.len() <= 63
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
            && b.first() != Some(&b'-')
            && b.last() != Some(&b'-')
            && b.get(2..4) != Some(&b"--"[..]);
        if !plain {
            return None;
        }
        last_label = label;
    }
    if !last_label.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    // RFC 3986 `pchar` and `/` without `%`, `\` read as `/`: nothing the URL standard escapes.
    let mut normal = String::with_capacity(path.len() + 1);
    normal.push('/');
    let mut segment_start = normal.len();
    for &b in path.as_bytes() {
        let b = if b == b'\\' { b'/' } else { b };
        if b == b'/' {
            if is_dot_segment(&normal[segment_start..]) {
                return None;
            }
            if !normal.ends_with('/') {
                normal.push('/');
            }
            segment_start = normal.len();
        } else if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
            normal.push(char::from(b.to_ascii_lowercase()));
        } else {
            return None;
        }
    }
    if is_dot_segment(&normal[segment_start..]) {
        return None;
    }
    Some(NormalizedUrl { host: authority.to_ascii_lowercase(), path: normal })
}

fn is_dot_segment(segment: &str) -> bool {
    matches!(segment, "." | "..")
}

/// Decode escapes of unreserved characters (RFC 3986 §2.3, §6.2.2.2), fold ASCII case and merge
/// slashes of an already WHATWG-serialized (hence ASCII) path.
fn normalize_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len() + 1);
    if !path.starts_with('/') {
        out.push('/');
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            if let (Some(hi), Some(lo)) = (bytes.get(i + 1).and_then(hex), bytes.get(i + 2).and_then(hex)) {
                let decoded = hi << 4 | lo;
                if decoded.is_ascii_alphanumeric() || matches!(decoded, b'-' | b'.' | b'_' | b'~') {
                    out.push(char::from(decoded.to_ascii_lowercase()));
                } else {
                    out.push('%');
                    out.push(char::from(bytes[i + 1].to_ascii_lowercase()));
                    out.push(char::from(bytes[i + 2].to_ascii_lowercase()));
                }
                i += 3;
                continue;
            }
        }
        if !(b == b'/' && out.ends_with('/')) && b.is_ascii() {
            out.push(char::from(b.to_ascii_lowercase()));
        }
        i += 1;
    }
    out
}

fn hex(b: &u8) -> Option<u8> {
    char::from(*b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Start of the scheme ending at `colon` (`scheme://`), per RFC 3986 §3.1 `ALPHA *( ALPHA /
/// DIGIT / "+" / "-" / "." )`, skipping a leading run of non-letters (`(http://`, `1http://`).
fn scheme_start(s: &str, colon: usize) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut start = colon;
    while start > 0 && matches!(bytes[start - 1], b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'+' | b'-' | b'.') {
        start -= 1;
    }
    while start < colon && !bytes[start].is_ascii_alphabetic() {
        start += 1;
    }
    (start < colon).then_some(start)
}

/// Characters that end a URL in running text: whitespace, controls, and what RFC 3986 Appendix C
/// suggests as delimiters (`<>"`), plus typographic quotes and brackets.
#[inline]
fn is_delimiter(c: char) -> bool {
    if c.is_ascii() {
        // ASCII whitespace is among the controls and the space.
        c <= ' ' || matches!(c, '\x7f' | '<' | '>' | '"' | '`' | '{' | '}' | '|' | '^')
    } else {
        is_non_ascii_delimiter(c)
    }
}

fn is_non_ascii_delimiter(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '«' | '»'
                | '‹'
                | '›'
                | '“'
                | '”'
                | '„'
                | '‘'
                | '’'
                | '「'
                | '」'
                | '『'
                | '』'
                | '〈'
                | '〉'
                | '《'
                | '》'
                | '【'
                | '】'
                | '（'
                | '）'
                | '＜'
                | '＞'
        )
}

/// Drop sentence punctuation after a URL, and closing brackets that do not close one opened
/// inside it (`(see http://w.example/Foo_(bar))`).
fn trim_url(mut s: &str) -> &str {
    // The opening and closing brackets in `s`, counted when a closing one is first met at the end
    // (before that, stripping an opening one leaves nothing to update).
    let mut brackets: Option<(usize, usize)> = None;
    while let Some(c) = s.chars().next_back() {
        let strip = match c {
            '.' | ',' | ';' | ':' | '!' | '?' | '\'' | '*' | '_' | '~' => true,
            '。' | '、' | '，' | '．' | '！' | '？' | '：' | '；' | '…' => true,
            ')' | ']' => {
                let (open, close) = brackets.get_or_insert_with(|| count_brackets(s));
                let unmatched = *close > *open;
                if unmatched {
                    *close -= 1;
                }
                unmatched
            }
            '(' | '[' => {
                if let Some((open, _)) = &mut brackets {
                    *open = open.saturating_sub(1);
                }
                true
            }
            _ => false,
        };
        if !strip {
            break;
        }
        s = &s[..s.len() - c.len_utf8()];
    }
    s
}

/// The opening (`(`, `[`) and closing (`)`, `]`) brackets in `s`.
fn count_brackets(s: &str) -> (usize, usize) {
    s.bytes().fold((0, 0), |(open, close), b| match b {
        b'(' | b'[' => (open + 1, close),
        b')' | b']' => (open, close + 1),
        _ => (open, close),
    })
}

fn prefix_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_later_scheme_does_not_hide_the_link_before_it() {
        for text in ["evil.example/x?u=a://b", "evil.example/a://", "see evil.example/p?next=https://ok.example/"] {
            let (urls, _) = extract_urls(text);
            assert!(urls.iter().any(|u| u.host == "evil.example"), "{text}: {urls:?}");
        }
        let (urls, _) = extract_urls("see evil.example/p?next=https://ok.example/");
        assert!(urls.iter().any(|u| u.host == "ok.example"), "{urls:?}");
    }

    use super::*;
    use proptest::prelude::*;

    fn url(host: &str, path: &str) -> NormalizedUrl {
        NormalizedUrl { host: host.into(), path: path.into() }
    }

    fn urls(text: &str) -> Vec<NormalizedUrl> {
        let (found, scan) = extract_urls(text);
        assert_eq!(scan, Scan::Complete, "{text}");
        found
    }

    fn one(text: &str) -> NormalizedUrl {
        let found = urls(text);
        assert_eq!(found.len(), 1, "{text}: {found:?}");
        found.into_iter().next().unwrap()
    }

    fn set(entries: &[&str]) -> UrlSet {
        UrlSet::from_entries(entries).unwrap()
    }

    #[test]
    fn scheme_urls_and_trailing_punctuation() {
        for text in [
            "see http://evil.example/payload.",
            "see http://evil.example/payload, then",
            "(http://evil.example/payload)",
            "<http://evil.example/payload>",
            "\"http://evil.example/payload\"",
            "'http://evil.example/payload'",
            "«https://evil.example/payload»",
            "go:https://evil.example/payload!",
            "HTTP://EVIL.EXAMPLE/Payload",
            "ftp://evil.example/payload?",
            "hxxp://evil.example/payload",
            "http:///evil.example//payload",
            "http://evil.example./payload",
            "http://user:pw@evil.example:8443/payload#frag",
            "[text](https://evil.example/payload)",
            "评论：http://evil.example/payload。",
        ] {
            assert_eq!(one(text), url("evil.example", "/payload"), "{text}");
        }
        assert_eq!(one("http://w.example/Foo_(bar))."), url("w.example", "/foo_(bar)"));
    }

    #[test]
    fn schemeless_urls() {
        for text in [
            "www.evil.example/payload",
            "visit evil.example/payload.",
            "(evil.example/payload)",
            "link:evil.example/payload",
            "[x](evil.example/payload)",
            "evil.example:8080/payload",
            "EVIL.Example/Payload?utm=1",
        ] {
            let host = if text.starts_with("www") { "www.evil.example" } else { "evil.example" };
            assert_eq!(one(text), url(host, "/payload"), "{text}");
        }
        assert_eq!(one("ping 10.0.0.1/x"), url("10.0.0.1", "/x"));
        // Not hosts: decimals, versions, abbreviations, e-mail addresses and JIDs.
        assert!(urls("pi is 3.14, v1.2.3, e.g. this; mail bob@evil.example or xmpp:bob@evil.example").is_empty());
    }

    #[test]
    fn normal_form() {
        let n = |s: &str| NormalizedUrl::parse(s).unwrap();
        // IDN to punycode, fullwidth and ideographic dots as the URL standard maps them.
        assert_eq!(n("http://ёлка.рф/").host, "xn--80atc1g.xn--p1ai");
        assert_eq!(n("ｅｖｉｌ。example").host, "evil.example");
        assert_eq!(one("смотри ёлка.рф/x").host, "xn--80atc1g.xn--p1ai");
        // IPv4 in other spellings, IPv6.
        assert_eq!(n("http://0x7f.1/").host, "127.0.0.1");
        assert_eq!(n("http://2130706433/").host, "127.0.0.1");
        assert_eq!(n("http://[0:0::1]/").host, "[::1]");
        assert_eq!(one("(see http://[::1]:8080/x)"), url("[::1]", "/x"));
        // Percent-escapes in host and path, dot segments, slash runs, backslashes.
        assert_eq!(n("http://evil%2Eexample/%70ay%6Coad"), url("evil.example", "/payload"));
        assert_eq!(n("http://evil.example/a/../b/./c"), url("evil.example", "/b/c"));
        assert_eq!(n("http://evil.example/a/%2e%2E/b"), url("evil.example", "/b"));
        assert_eq!(n("http://evil.example/a//../b"), url("evil.example", "/b"));
        assert_eq!(n("http://evil.example\\a\\b"), url("evil.example", "/a/b"));
        assert_eq!(n("http://evil.example/%2F%3f"), url("evil.example", "/%2f%3f"));
        assert_eq!(n("http://evil.example"), url("evil.example", "/"));
        // Userinfo is not the host.
        assert_eq!(n("http://good.example@evil.example/").host, "evil.example");
        assert_eq!(NormalizedUrl::parse("javascript:alert(1)"), None);
        assert_eq!(NormalizedUrl::parse(""), None);
    }

    #[test]
    fn open_redirects_yield_both_urls() {
        let found = urls("https://good.example/out?u=https://evil.example/payload");
        assert_eq!(found, vec![url("good.example", "/out"), url("evil.example", "/payload")]);
    }

    #[test]
    fn bounds_are_reported() {
        let many = "a.example/x ".repeat(MAX_URLS);
        let (found, scan) = extract_urls(&many);
        assert_eq!((found.len(), scan), (MAX_URLS, Scan::Complete));
        let (found, scan) = extract_urls(&format!("{many} evil.example"));
        assert_eq!((found.len(), scan), (MAX_URLS, Scan::Truncated));
        let (_, scan) = extract_urls(&"x".repeat(MAX_SCAN_BYTES + 1));
        assert_eq!(scan, Scan::Truncated);
        let nested = "http://".repeat(MAX_CANDIDATES + 1);
        assert_eq!(extract_urls(&nested).1, Scan::Truncated);
        // A long URL is cut, keeping its host.
        let long = format!("http://evil.example/{}", "a".repeat(3 * MAX_URL_BYTES));
        assert_eq!(one(&long).host, "evil.example");
        // Plain prose with many dotted numbers costs no budget.
        assert_eq!(extract_urls(&"1.5 ".repeat(10 * MAX_CANDIDATES)).1, Scan::Complete);
    }

    #[test]
    fn reuses_the_callers_buffer() {
        let mut out = vec![url("kept.example", "/")];
        assert_eq!(extract_urls_into("evil.example", &mut out), Scan::Complete);
        assert_eq!(out, vec![url("kept.example", "/"), url("evil.example", "/")]);
    }

    #[test]
    fn host_entries_match_host_and_subdomains_only() {
        let s = set(&["Evil.Example"]);
        let m = |text: &str| s.matches(&one(text));
        assert_eq!(m("http://evil.example/"), Some("evil.example"));
        assert_eq!(m("HTTP://EVIL.EXAMPLE/Payload"), Some("evil.example"));
        assert_eq!(m("https://a.b.evil.example/x"), Some("evil.example"));
        assert_eq!(m("http://evil.example.:80"), Some("evil.example"));
        assert_eq!(m("http://user@evil.example/"), Some("evil.example"));
        assert_eq!(m("http://evil.example@good.example/"), None);
        assert_eq!(m("http://evil.example.attacker.test/"), None);
        assert_eq!(m("http://notevil.example/"), None);
        assert_eq!(m("http://example/"), None);
    }

    #[test]
    fn path_entries_match_at_segment_boundaries() {
        let s = set(&["evil.example/payload", "https://Shared.Example/Bad/Repo/?tab=x#y"]);
        let m = |text: &str| s.matches(&one(text));
        for hit in [
            "http://evil.example/payload",
            "http://evil.example/payload/",
            "http://evil.example/payload/x?y",
            "http://cdn.evil.example/PAYLOAD",
            "http://evil.example/x/../payload",
            "http://evil.example//payload",
            "http://evil.example/%70ayload",
        ] {
            assert_eq!(m(hit), Some("evil.example/payload"), "{hit}");
        }
        for miss in ["http://evil.example/payloadx", "http://evil.example/", "http://evil.example/x/payload"] {
            assert_eq!(m(miss), None, "{miss}");
        }
        assert_eq!(m("shared.example/bad/repo/issues"), Some("shared.example/bad/repo"));
        assert_eq!(m("shared.example/bad"), None);
    }

    #[test]
    fn the_most_specific_entry_wins() {
        let s = set(&["example", "evil.example", "evil.example/a", "evil.example/a/b", "x.evil.example"]);
        let m = |text: &str| s.matches(&one(text));
        assert_eq!(m("evil.example/a/b/c"), Some("evil.example/a/b"));
        assert_eq!(m("evil.example/a/c"), Some("evil.example/a"));
        assert_eq!(m("evil.example/c"), Some("evil.example"));
        assert_eq!(m("x.evil.example/a"), Some("x.evil.example"));
        assert_eq!(m("other.example/a"), Some("example"));
        assert_eq!(s.len(), 5);
    }

    #[test]
    fn ip_and_idn_entries() {
        let s = set(&["http://0x7f.0.0.1/admin", "ёлка.рф"]);
        assert_eq!(s.matches(&one("http://127.0.0.1/admin/x")), Some("127.0.0.1/admin"));
        assert_eq!(s.matches(&one("http://2130706433/admin")), Some("127.0.0.1/admin"));
        assert_eq!(NormalizedUrl::parse("http://1.127.0.0.1/admin"), None);
        assert_eq!(s.matches(&one("http://127.0.0.2/admin")), None);
        assert_eq!(s.matches(&one("https://xn--80ATC1G.xn--p1ai/")), Some("xn--80atc1g.xn--p1ai"));
        assert_eq!(s.matches(&one("https://www.ЁЛКА.РФ/")), Some("xn--80atc1g.xn--p1ai"));
    }

    #[test]
    fn bad_entries_are_named() {
        let err = |entries: &[&str]| UrlSet::from_entries(entries).unwrap_err();
        assert_eq!(err(&["ok.example", ""]).0, 1);
        for bad in ["*.evil.example", "bob@evil.example", "evil example", "http://", "a..b", "javascript:x"] {
            let (index, msg) = err(&[bad]);
            assert_eq!(index, 0);
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
        }
        assert!(err(&["*.evil.example"]).1.contains("already matches all its subdomains"));
        let empty = UrlSet::from_entries(Vec::<String>::new()).unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.matches(&url("evil.example", "/")), None);
    }

    /// The obvious linear matcher, as an oracle for the hashed one.
    fn naive(entry: &str, u: &NormalizedUrl) -> bool {
        let e = NormalizedUrl::parse(entry).unwrap();
        let host_ok = u.host == e.host || u.host.ends_with(&format!(".{}", e.host));
        let path = e.path.trim_end_matches('/');
        host_ok
            && (path.is_empty()
                || u.path.strip_prefix(path).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
    }

    const HOSTS: &[&str] = &["evil.example", "a.evil.example", "notevil.example", "example", "x.test", "EVIL.EXAMPLE"];
    const PATHS: &[&str] = &["", "/", "/p", "/p/", "/P/q", "/p/q/r", "/px", "/q"];

    fn entry() -> impl Strategy<Value = String> {
        (prop::sample::select(HOSTS), prop::sample::select(PATHS)).prop_map(|(h, p)| format!("{h}{p}"))
    }

    /// [`extract_urls`] without the jump from trigger to trigger: every token, as the delimiters
    /// split the text.
    fn extract_every_token(text: &str) -> (Vec<NormalizedUrl>, Scan) {
        let mut out = Vec::new();
        let mut budget = Budget { urls: MAX_URLS, candidates: MAX_CANDIDATES };
        for token in text.split(is_delimiter).filter(|t| !t.is_empty()) {
            if extract_from_token(token, &mut out, &mut budget).is_err() {
                return (out, Scan::Truncated);
            }
        }
        (out, Scan::Complete)
    }

    #[test]
    fn ascii_delimiters() {
        for c in (0..=0x7f).map(char::from) {
            let delimiter = c.is_whitespace() || c.is_control() || "<>\"`{}|^".contains(c);
            assert_eq!(is_delimiter(c), delimiter, "{c:?}");
        }
    }

    #[test]
    fn plain_urls_skip_the_parser_with_the_same_result() {
        for (authority, path) in [
            ("Evil.Example", "/Payload"),
            ("report.pdf", ""),
            ("docs.friends.example", "/share//q3-review.pdf"),
            ("a-b.c1.example", "\\x\\y/"),
            ("a.example", "/.../a:b@c;d=e,f!g$h&i'j(k)l*m+n~o_p"),
        ] {
            let plain = parse_plain(authority, path);
            assert!(plain.is_some(), "{authority}{path}");
            assert_eq!(plain.map(|u| (u, false)), parse_with_url_crate(authority, path), "{authority}{path}");
        }
        for (authority, path) in [
            ("xn--80atc1g.xn--p1ai", ""),
            ("XN--abc.example", ""),
            ("ёлка.рф", ""),
            ("evil.example.", ""),
            ("a..example", ""),
            ("evil.example:8080", ""),
            ("u@evil.example", ""),
            ("10.0.0.1", ""),
            ("a.0x7f", ""),
            ("-a.example", ""),
            ("evil.example", "/a/../b"),
            ("evil.example", "/a/."),
            ("evil.example", "/%70ayload"),
            ("evil.example", "/ё"),
        ] {
            assert_eq!(parse_plain(authority, path), None, "{authority}{path}");
        }
    }

    proptest! {
        #[test]
        fn plain_parse_agrees_with_the_url_crate(
            authority in "((xn--|XN--|[a-zA-Z0-9_-]){0,4}[.]?){0,4}",
            path in "([/\\\\]([a-zA-Z0-9.%:@!$&'()*+,;=~_-]|[.]{1,2}|/){0,8}){0,4}",
        ) {
            if let Some(plain) = parse_plain(&authority, &path) {
                prop_assert_eq!(Some((plain, false)), parse_with_url_crate(&authority, &path));
            }
        }

        #[test]
        fn skipping_tokens_without_triggers_changes_nothing(
            text in "([a-zA-Z0-9]{1,6}|[.:/\\\\@()\\[\\]?#%_~'!,;-]|[ \t\n«»「」（）<>\"|]|[。．｡ёй汉\u{ff00}\u{3000}]|[.]?[a-z]{2,4}|https?://|www[.]|:[0-9]{1,5}|[0-9]{1,3}[.][0-9]{1,3}){0,40}",
        ) {
            prop_assert_eq!(extract_urls(&text), extract_every_token(&text));
        }

        #[test]
        fn skipping_tokens_changes_nothing_in_any_text(text in "\\PC{0,200}") {
            prop_assert_eq!(extract_urls(&text), extract_every_token(&text));
        }

        #[test]
        fn matching_is_independent_of_entry_order(
            entries in prop::collection::vec(entry(), 0..12).prop_shuffle(),
            probes in prop::collection::vec(entry(), 1..8),
        ) {
            let forward = set(&entries.iter().map(String::as_str).collect::<Vec<_>>());
            let mut reversed = entries.clone();
            reversed.reverse();
            let backward = set(&reversed.iter().map(String::as_str).collect::<Vec<_>>());
            for probe in &probes {
                let u = NormalizedUrl::parse(probe).unwrap();
                prop_assert_eq!(forward.matches(&u), backward.matches(&u));
                prop_assert_eq!(forward.matches(&u).is_some(), entries.iter().any(|e| naive(e, &u)));
            }
        }

        #[test]
        fn extraction_never_panics(text in "\\PC{0,200}") {
            let _ = extract_urls(&text);
        }
    }
}
