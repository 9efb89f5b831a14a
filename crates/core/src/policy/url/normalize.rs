//! The one normal form of a URL, shared by extracted URLs and list entries (see [`super`]).
//!
//! Owns reading a URL with or without a scheme into a [`NormalizedUrl`]: the host as the WHATWG
//! URL standard parses it for `http` (through the `url` crate, with a fast path for plain ASCII
//! hosts that gives the same result), the path with slashes merged, dot segments resolved,
//! unreserved escapes decoded and case folded. It neither scans text nor matches lists.

use ::url::{Host, Url};

use super::{NormalizedUrl, MAX_URL_BYTES};

/// Longest host a list entry may name (RFC 1035 §2.3.4 name length, without the root dot).
pub(super) const MAX_ENTRY_HOST_BYTES: usize = 253;

/// Parse a URL given with or without a scheme; also says whether it carried userinfo.
pub(super) fn parse_url(s: &str) -> Option<(NormalizedUrl, bool)> {
    let s = s.trim();
    let rest = match s.find("://") {
        Some(at) if scheme_start(s, at) == Some(0) => &s[at + 3..],
        _ => s.strip_prefix("//").unwrap_or(s),
    };
    parse_after_scheme(prefix_at_char_boundary(rest, MAX_URL_BYTES))
}

/// Parse what follows `scheme://` as an `http` URL and normalize it.
pub(super) fn parse_after_scheme(rest: &str) -> Option<(NormalizedUrl, bool)> {
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
pub(super) fn parse_with_url_crate(authority: &str, path: &str) -> Option<(NormalizedUrl, bool)> {
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
pub(super) fn parse_plain(authority: &str, path: &str) -> Option<NormalizedUrl> {
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
pub(super) fn scheme_start(s: &str, colon: usize) -> Option<usize> {
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

pub(super) fn prefix_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
