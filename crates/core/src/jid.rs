//! JIDs in canonical form (RFC 7622 address format, prepared with the stringprep profiles of the
//! `jid` crate).
//!
//! The gateway compares addresses only after preparation, so `Alice@Example.TEST/phone` and
//! `alice@example.test/phone` are the same sender (DESIGN.md invariant 3). This module never
//! allocates on comparison of two already-parsed JIDs.

pub use jid::{BareJid, FullJid, Jid};

/// Parse and prepare any JID; `None` if it is malformed.
pub fn parse(s: &str) -> Option<Jid> {
    Jid::new(s).ok()
}

/// Parse a full JID (with resource).
pub fn parse_full(s: &str) -> Option<FullJid> {
    FullJid::new(s).ok()
}

/// Is `domain` a valid domainpart (as the `to` of a stream header must be)?
pub fn is_domain(domain: &str) -> bool {
    matches!(Jid::new(domain), Ok(j) if j.node().is_none() && j.resource().is_none())
}

/// Does a stanza's `from` name this session's bound address — the full JID or its bare JID?
pub fn is_own_address(from: &str, bound: &FullJid) -> bool {
    match parse(from) {
        Some(j) => match j.resource() {
            Some(_) => j == *bound,
            None => j.to_bare() == bound.to_bare(),
        },
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_address_is_compared_after_preparation() {
        let bound = parse_full("alice@example.test/phone").expect("valid");
        assert!(is_own_address("alice@example.test/phone", &bound));
        assert!(is_own_address("Alice@EXAMPLE.test/phone", &bound));
        assert!(is_own_address("alice@example.test", &bound));
        assert!(!is_own_address("alice@example.test/laptop", &bound));
        assert!(!is_own_address("mallory@example.test/phone", &bound));
        assert!(!is_own_address("alice@evil.test/phone", &bound));
        assert!(!is_own_address("@@bad", &bound));
    }

    #[test]
    fn domains() {
        assert!(is_domain("example.test"));
        assert!(!is_domain("alice@example.test"));
        assert!(!is_domain(""));
    }
}
