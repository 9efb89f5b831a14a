//! Finding URL-like tokens in free text (see [`super`] for what counts and the bounds).
//!
//! Owns the scan: jumping from trigger (`://` or a dot) to trigger, cutting the token around it
//! at delimiters, trimming sentence punctuation, and spending the per-text budget of candidates
//! and results. Each candidate is handed to [`super::normalize`]; nothing here decides the
//! normal form or looks at a list.

use super::normalize::{parse_after_scheme, prefix_at_char_boundary, scheme_start};
use super::{NormalizedUrl, Scan, MAX_CANDIDATES, MAX_SCAN_BYTES, MAX_URLS, MAX_URL_BYTES};
use std::net::Ipv4Addr;

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

/// Which of the parse bounds ran out.
pub(super) struct Exhausted;

pub(super) struct Budget {
    pub(super) urls: usize,
    pub(super) candidates: usize,
}

pub(super) fn extract_from_token(
    token: &str,
    out: &mut Vec<NormalizedUrl>,
    budget: &mut Budget,
) -> Result<(), Exhausted> {
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

/// Characters that end a URL in running text: whitespace, controls, and what RFC 3986 Appendix C
/// suggests as delimiters (`<>"`), plus typographic quotes and brackets.
#[inline]
pub(super) fn is_delimiter(c: char) -> bool {
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
