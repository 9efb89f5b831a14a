//! JIDs in canonical form (RFC 7622 address format, prepared with the stringprep profiles of the
//! `jid` crate).
//!
//! The gateway compares addresses only after preparation, so `Alice@Example.TEST/phone` and
//! `alice@example.test/phone` are the same sender (invariant 3, addresses are enforced,
//! docs/DESIGN.md). This module never allocates on comparison of two already-parsed JIDs.

pub use jid::{BareJid, FullJid, Jid};

/// Parse and prepare any JID; `None` if it is malformed.
///
/// Preparation is applied until it reaches a fixed point: the stringprep profiles are not
/// idempotent for some inputs (found by the `jid` fuzz target: U+213B FACSIMILE SIGN prepares to
/// `FAX`, which prepares again to `fax`), and two spellings of one address must never compare
/// as different.
pub fn parse(s: &str) -> Option<Jid> {
    let mut jid = Jid::new(s).ok()?;
    for _ in 0..4 {
        let again = Jid::new(&jid.to_string()).ok()?;
        if again == jid {
            return Some(jid);
        }
        jid = again;
    }
    None
}

/// Parse a full JID (with resource), prepared to a fixed point like [`parse`].
pub fn parse_full(s: &str) -> Option<FullJid> {
    parse(s).and_then(|j| j.try_into_full().ok())
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
    fn preparation_reaches_a_fixed_point() {
        let a = parse("alice@x\u{213B}.test").expect("valid");
        assert_eq!(a.to_string(), "alice@xfax.test");
        assert_eq!(parse("alice@XFAX.test"), Some(a));
    }

    #[test]
    fn domains() {
        assert!(is_domain("example.test"));
        assert!(!is_domain("alice@example.test"));
        assert!(!is_domain(""));
    }
}
