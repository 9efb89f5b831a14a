//! URLs in message bodies and out-of-band elements (XEP-0066 `<url/>`), and the list matcher for
//! them.
//!
//! This module owns three things: finding URL-like tokens in free text ([`extract_urls`]),
//! normalizing a URL to the one form lists are compared in ([`NormalizedUrl`]), and [`UrlSet`], a
//! compiled URL list whose lookup cost is bounded by the labels of the host and the segments of
//! the path, never by the number of entries (README "Cost"). It never fetches,
//! resolves or follows anything: it only reads text. One submodule each: `extract` (the scan),
//! `normalize` (the normal form, below both others) and `set` (the list).
//!
//! Extraction is deliberately liberal — `report.pdf` comes out as the host `report.pdf` — because
//! an extracted URL is only ever compared with listed entries: a false candidate costs one lookup,
//! a missed one lets a listed link through. The work is bounded: at most [`MAX_SCAN_BYTES`] of
//! text, [`MAX_URL_BYTES`] per URL, [`MAX_CANDIDATES`] parse attempts and [`MAX_URLS`] results per
//! text. Hitting a bound is reported as [`Scan::Truncated`] so the policy can fail closed
//! (invariant 5, fail closed, docs/DESIGN.md) instead of letting a listed URL hide behind 64
//! decoys.
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

mod extract;
mod normalize;
mod set;
#[cfg(test)]
mod tests;

pub use extract::{extract_urls, extract_urls_into};
pub use set::UrlSet;

/// Most URLs taken from one text; more make the scan [`Scan::Truncated`].
pub const MAX_URLS: usize = 64;
/// Most candidates parsed for one text (failed parses included).
pub const MAX_CANDIDATES: usize = 16 * MAX_URLS;
/// Most bytes of one text that are scanned.
pub const MAX_SCAN_BYTES: usize = 1 << 20;
/// Most bytes of one URL that are considered; the rest of a longer token is ignored (the host and
/// the start of the path, which is what lists name, come first).
pub const MAX_URL_BYTES: usize = 2048;

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
        normalize::parse_url(s).map(|(url, _)| url)
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
