//! The DNSSEC trust anchor file (`[s2s] trust_anchor`).
//!
//! Owns reading DNSKEY records in zone-file syntax, as `ldns-keygen` writes them (`K*.key`), as
//! `unbound-anchor` keeps `root.key` (DNSKEY lines with `;;state=` comments) or as `dig DNSKEY`
//! prints them. hickory's validator anchors on keys, not digests, so DS lines (`ldns-key2ds`,
//! IANA's `root-anchors.xml`) are refused with a clear message rather than silently ignored.

use std::path::Path;
use std::str::FromStr;

use hickory_resolver::proto::dnssec::TrustAnchors;

use super::DnsError;

/// Largest anchor file read: a handful of keys, not a zone.
const MAX_ANCHOR_BYTES: u64 = 64 * 1024;

/// Loads the DNSKEY records of `path` as trust anchors (at any owner name: `.` or a TLD).
pub fn load(path: &Path) -> Result<TrustAnchors, DnsError> {
    let err = |reason: String| DnsError::TrustAnchor { path: path.display().to_string(), reason };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > MAX_ANCHOR_BYTES {
        return Err(err(format!("larger than {MAX_ANCHOR_BYTES} bytes; expected a few DNSKEY lines")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    parse(&text).map_err(err)
}

/// Parses anchor text; the error says what is wrong.
pub fn parse(text: &str) -> Result<TrustAnchors, String> {
    let mut keys = 0usize;
    let mut cleaned = String::with_capacity(text.len());
    for (n, line) in text.lines().enumerate() {
        // Zone-file comments (unbound-anchor's `;;state=2 [ VALID ]` trailers included).
        let body = line.split(';').next().unwrap_or("").trim();
        if body.is_empty() {
            continue;
        }
        let tokens: Vec<&str> = body.split_whitespace().collect();
        let rtype = tokens.iter().skip(1).find(|t| t.eq_ignore_ascii_case("DNSKEY") || t.eq_ignore_ascii_case("DS"));
        match rtype {
            Some(t) if t.eq_ignore_ascii_case("DS") => {
                return Err(format!(
                    "line {}: a DS record; the validator needs the DNSKEY itself (e.g. the K*.key file \
                     ldns-keygen wrote, or `dig . DNSKEY` output checked against this DS)",
                    n + 1
                ))
            }
            Some(_) => {
                keys += 1;
                cleaned.push_str(body);
                cleaned.push('\n');
            }
            None => return Err(format!("line {}: not a DNSKEY record: {body:?}", n + 1)),
        }
    }
    if keys == 0 {
        return Err("no DNSKEY record".to_owned());
    }
    TrustAnchors::from_str(&cleaned).map_err(|e| format!("invalid DNSKEY record: {e}"))
}
