//! What the gateway checks in a relayed SASL exchange (it never performs SASL itself).
//!
//! One check: an authorization identity (PLAIN's authzid, SCRAM's `a=` in the GS2 header,
//! RFC 4616 §2 and RFC 5802 §5.1) may only name the authenticating user. Servers differ in what
//! they do with a foreign authzid — some ignore it, some implement proxy authorization — so the
//! gateway answers `<invalid-authzid/>` itself (RFC 6120 §6.5.6) rather than relay it. Payloads
//! are decoded here and never logged or kept.

use base64::Engine as _;

/// Does this `<auth/>` request an authorization identity other than the authenticating user?
/// Undecodable payloads return false: the server answers those with `incorrect-encoding`.
pub fn foreign_authzid(mechanism: &str, payload_b64: &str, domain: &str) -> bool {
    let payload = payload_b64.trim();
    if payload.is_empty() || payload == "=" {
        return false;
    }
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(payload) else { return false };
    let Ok(text) = std::str::from_utf8(&raw) else { return false };
    let mechanism = mechanism.to_ascii_uppercase();
    let (authzid, user) = if mechanism == "PLAIN" {
        let mut parts = text.split('\0');
        match (parts.next(), parts.next()) {
            (Some(authzid), Some(authcid)) => (authzid.to_owned(), authcid.to_owned()),
            _ => return false,
        }
    } else if mechanism.starts_with("SCRAM-") {
        // gs2-cbind-flag "," [ "a=" saslname ] "," "n=" saslname "," ...
        let mut fields = text.splitn(4, ',');
        let (_flag, authz, user) = (fields.next(), fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        let Some(authzid) = authz.strip_prefix("a=") else { return false };
        (unescape_saslname(authzid), unescape_saslname(user.strip_prefix("n=").unwrap_or("")))
    } else {
        return false;
    };
    if authzid.is_empty() {
        return false;
    }
    !names_user(&authzid, &user, domain)
}

/// RFC 5802 §5.1: `=2C` is `,` and `=3D` is `=` in a saslname.
fn unescape_saslname(s: &str) -> String {
    s.replace("=2C", ",").replace("=3D", "=")
}

/// Is `authzid` the user `user` of `domain` (as `user` or `user@domain`, compared prepared)?
fn names_user(authzid: &str, user: &str, domain: &str) -> bool {
    let own = crate::jid::parse(&format!("{user}@{domain}"));
    let claimed = crate::jid::parse(authzid).and_then(|j| match j.node() {
        Some(_) => Some(j),
        None => crate::jid::parse(&format!("{authzid}@{domain}")),
    });
    matches!((own, claimed), (Some(a), Some(b)) if a == b)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn plain_authzid_must_name_the_user() {
        let d = "example.test";
        assert!(!foreign_authzid("PLAIN", &b64("\0alice\0pw"), d));
        assert!(!foreign_authzid("PLAIN", &b64("alice@example.test\0alice\0pw"), d));
        assert!(!foreign_authzid("PLAIN", &b64("Alice@EXAMPLE.test\0alice\0pw"), d));
        assert!(!foreign_authzid("PLAIN", &b64("alice\0alice\0pw"), d));
        assert!(foreign_authzid("PLAIN", &b64("bob@example.test\0alice\0pw"), d));
        assert!(foreign_authzid("PLAIN", &b64("admin\0alice\0pw"), d));
        assert!(foreign_authzid("PLAIN", &b64("alice@evil.test\0alice\0pw"), d));
        assert!(!foreign_authzid("PLAIN", "not base64!", d), "left to the server");
    }

    #[test]
    fn scram_gs2_authzid_must_name_the_user() {
        let d = "example.test";
        assert!(!foreign_authzid("SCRAM-SHA-1", &b64("n,,n=alice,r=abc"), d));
        assert!(!foreign_authzid("SCRAM-SHA-256", &b64("n,a=alice@example.test,n=alice,r=abc"), d));
        assert!(foreign_authzid("SCRAM-SHA-1", &b64("n,a=bob@example.test,n=alice,r=abc"), d));
        assert!(foreign_authzid("SCRAM-SHA-1", &b64("y,a=b=2Cob,n=alice,r=abc"), d));
        assert!(!foreign_authzid("DIGEST-MD5", &b64("anything"), d));
    }
}
