//! SRV answers → connection order: pure, the randomness passed in.
//!
//! Owns the RFC 2782 "Usage rules" (lowest priority first; within a priority, weighted random
//! order with zero-weight records first in the list) applied to the union of the
//! `_xmpps-server` (direct TLS, XEP-0368 §2) and `_xmpp-server` (STARTTLS, RFC 6120 §3.2.1)
//! RRsets, and the "." target ("service decidedly not available", RFC 2782). Never does I/O.

use super::DnsError;

/// One SRV record as answered (target lower case, without the trailing dot; "" = ".").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    /// Lower is tried first.
    pub priority: u16,
    /// Relative share among records of the same priority.
    pub weight: u16,
    /// Port on the target.
    pub port: u16,
    /// Host name.
    pub target: String,
}

/// A host to resolve and try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Host name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// From `_xmpps-server` (direct TLS).
    pub direct_tls: bool,
}

/// A service RRset consisting of one record with target "." (RFC 2782, RFC 6120 §3.2.1 step 2).
fn says_unavailable(records: &[SrvRecord]) -> bool {
    records.len() == 1 && records[0].target.is_empty()
}

/// Merges both services in RFC 2782 order. `Ok(None)` = no SRV at all (use the A/AAAA
/// fallback); `Err(NoService)` = the domain published "." and nothing usable. `rng(n)` returns a
/// number in `0..n`.
pub fn merge(
    domain: &str,
    xmpps: Vec<SrvRecord>,
    xmpp: Vec<SrvRecord>,
    rng: &mut impl FnMut(u32) -> u32,
) -> Result<Option<Vec<Candidate>>, DnsError> {
    if xmpps.is_empty() && xmpp.is_empty() {
        return Ok(None);
    }
    let no_service = || DnsError::NoService { domain: domain.to_owned() };
    let mut all: Vec<(SrvRecord, bool)> = Vec::new();
    // Direct TLS first in the list: among equal priorities it is tried first unless the weights
    // say otherwise (XEP-0368 §3 lets a server prefer it; it saves a round trip).
    if !says_unavailable(&xmpps) {
        all.extend(xmpps.into_iter().filter(|r| !r.target.is_empty()).map(|r| (r, true)));
    }
    if !says_unavailable(&xmpp) {
        all.extend(xmpp.into_iter().filter(|r| !r.target.is_empty()).map(|r| (r, false)));
    }
    if all.is_empty() {
        return Err(no_service());
    }
    // Stable sort keeps the xmpps-first order inside one priority.
    all.sort_by_key(|(r, _)| r.priority);
    let mut out = Vec::with_capacity(all.len());
    let mut start = 0;
    while start < all.len() {
        let prio = all[start].0.priority;
        let end = all[start..].iter().position(|(r, _)| r.priority != prio).map_or(all.len(), |p| start + p);
        let mut group: Vec<(SrvRecord, bool)> = all[start..end].to_vec();
        // RFC 2782: zero-weight records first, so they are picked only when the rest are gone
        // or the random number is 0.
        group.sort_by_key(|(r, _)| r.weight != 0);
        while !group.is_empty() {
            let sum: u32 = group.iter().map(|(r, _)| u32::from(r.weight)).sum();
            let pick = rng(sum + 1).min(sum);
            let mut running = 0u32;
            let idx = group
                .iter()
                .position(|(r, _)| {
                    running += u32::from(r.weight);
                    running >= pick
                })
                .unwrap_or(0);
            let (r, direct_tls) = group.remove(idx);
            let c = Candidate { host: r.target, port: r.port, direct_tls };
            if !out.contains(&c) {
                out.push(c);
            }
        }
        start = end;
    }
    Ok(Some(out))
}
