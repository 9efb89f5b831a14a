//! The s2s stream kinds: federation through the gateway (README "Federation").
//!
//! - [`S2sInbound`] (`inbound`): a remote server in front (STARTTLS or direct TLS), our server's
//!   s2s port behind. The gateway authenticates the peer itself — SASL EXTERNAL when its
//!   certificate is valid for its domain (XEP-0178), else dialback (XEP-0220), answered at once
//!   when the certificate already proves the domain (XEP-0344) — and only then presents the
//!   domain pair to our server, by dialback with a key it minted (XEP-0185). Our server checks
//!   that key through its own outbound s2s, which reaches the gateway's `s2s-out` listener,
//!   where [`S2sOutbound`] answers it. A remote that failed at the gateway never reaches the
//!   backend, so the backend never sees it authenticated.
//! - [`S2sOutbound`] (`outbound`): our server in front (plaintext on loopback), the remote server
//!   behind, resolved and connected by the daemon (SRV, DNSSEC, DANE). The gateway authenticates
//!   our domain to the remote with its certificate (SASL EXTERNAL) or dialback, and answers our
//!   server's dialback only when the remote accepted.
//! - [`DialbackVerify`] (`verify`): the short stream the gateway opens to a peer's authoritative
//!   server to check a dialback key (`db:verify`).
//!
//! Shared rules (invariant 3, addresses are enforced, docs/DESIGN.md): every stanza carries
//! `from` and `to`; its (from-domain, to-domain) pair must be one the stream authenticated (else
//! `<invalid-from/>`, or `<host-unknown/>` for a `to` we do not serve); stream features that
//! cannot cross the hop (bidi, SM, compression) are never relayed — each leg gets the gateway's
//! own features.

mod common;
mod inbound;
mod outbound;
#[cfg(test)]
mod tests;
mod verify;

use std::sync::Arc;

use ring::hmac;

use crate::jid;
pub use crate::policy::spec::AuthLevel;
use crate::stanza::Kind;
use crate::stream::Condition;
use crate::xml::{Element, XmlLimits, NS_SERVER, NS_STREAMS};
pub use inbound::S2sInbound;
pub use outbound::S2sOutbound;
pub use verify::{DialbackVerify, VerifyStep};

use super::c2s::Check;
use super::Timeouts;

/// Dialback namespace (XEP-0220), bound to the `db:` prefix in every s2s header.
pub const NS_DIALBACK: &str = "jabber:server:dialback";
/// Dialback stream feature (XEP-0220 §2.1).
pub const NS_DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";
/// STARTTLS (RFC 6120 §5).
pub const NS_TLS: &str = super::c2s::NS_TLS;
/// SASL (RFC 6120 §6).
pub const NS_SASL: &str = super::c2s::NS_SASL;

/// What a peer's certificate proved about a domain (checked by the daemon: PKIX with the
/// configured roots and RFC 9525 name matching, or DANE when TLSA records are DNSSEC-secure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCert {
    /// No certificate was presented (or no TLS).
    None,
    /// A certificate that does not prove the domain (expired, wrong name, unknown issuer).
    Invalid(String),
    /// Valid for the domain by PKIX.
    Pkix,
    /// Matched by DNSSEC-secure TLSA records (RFC 7673).
    Dane,
}

impl PeerCert {
    /// The authentication level this certificate gives, if any.
    pub fn level(&self) -> Option<AuthLevel> {
        match self {
            PeerCert::Pkix => Some(AuthLevel::Pkix),
            PeerCert::Dane => Some(AuthLevel::Dane),
            PeerCert::None | PeerCert::Invalid(_) => None,
        }
    }

    /// A stable name for audit lines and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            PeerCert::None => "none",
            PeerCert::Invalid(_) => "invalid",
            PeerCert::Pkix => "pkix",
            PeerCert::Dane => "dane",
        }
    }
}

/// What DNS said about the remote (outbound): DNSSEC status of the answers that led to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dnssec {
    /// Every answer on the way was DNSSEC-validated.
    Secure,
    /// Some answer was provably unsigned.
    Insecure,
    /// Validation is off (`dnssec = "off"`).
    Off,
    /// A static route (`[[s2s.route]]`): DNS was not asked.
    Route,
    /// Not looked up (inbound streams).
    NotLooked,
}

impl Dnssec {
    /// A stable name for audit lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Dnssec::Secure => "secure",
            Dnssec::Insecure => "insecure",
            Dnssec::Off => "off",
            Dnssec::Route => "static-route",
            Dnssec::NotLooked => "not-looked-up",
        }
    }
}

/// How a domain pair was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// SASL EXTERNAL with a certificate valid for the domain (XEP-0178).
    SaslExternal,
    /// Dialback, the key checked with the authoritative server (XEP-0220).
    Dialback,
    /// Dialback answered from the certificate alone (XEP-0344).
    DialbackCertificate,
}

impl AuthMethod {
    /// A stable name for audit lines and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::SaslExternal => "sasl-external",
            AuthMethod::Dialback => "dialback",
            AuthMethod::DialbackCertificate => "dialback-certificate",
        }
    }
}

/// Does what was proved (`cert`, and whether dialback succeeded) meet `required`?
pub fn meets(required: AuthLevel, cert: &PeerCert, dialback: bool) -> bool {
    match cert.level() {
        Some(l) if l >= required => true,
        _ => required == AuthLevel::Dialback && dialback,
    }
}

/// The gateway's dialback secret (XEP-0185): keys are
/// `hex(HMAC-SHA256(SHA256(secret), receiving ‖ ' ' ‖ originating ‖ ' ' ‖ stream-id))`.
pub struct DialbackSecret(hmac::Key);

impl std::fmt::Debug for DialbackSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DialbackSecret(..)")
    }
}

impl DialbackSecret {
    /// From the secret's bytes (the daemon keeps them in `dialback_secret_file`).
    pub fn new(secret: &[u8]) -> DialbackSecret {
        let digest = ring::digest::digest(&ring::digest::SHA256, secret);
        DialbackSecret(hmac::Key::new(hmac::HMAC_SHA256, digest.as_ref()))
    }

    fn message(receiving: &str, originating: &str, stream_id: &str) -> Vec<u8> {
        format!("{} {} {}", receiving.to_ascii_lowercase(), originating.to_ascii_lowercase(), stream_id).into_bytes()
    }

    /// The key for a stream from `originating` to `receiving` with id `stream_id`.
    pub fn key(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        let tag = hmac::sign(&self.0, &Self::message(receiving, originating, stream_id));
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Is `key` the one we minted? (ring compares the tags in constant time.)
    pub fn verify(&self, receiving: &str, originating: &str, stream_id: &str, key: &str) -> bool {
        let key = key.trim();
        if key.len() != 64 || !key.is_ascii() {
            return false;
        }
        let tag: Option<Vec<u8>> = (0..32).map(|i| u8::from_str_radix(&key[2 * i..2 * i + 2], 16).ok()).collect();
        match tag {
            Some(tag) => hmac::verify(&self.0, &Self::message(receiving, originating, stream_id), &tag).is_ok(),
            None => false,
        }
    }
}

/// Per-stream settings of an s2s session, from the listener and `[s2s]`.
#[derive(Debug, Clone)]
pub struct S2sSettings {
    /// The domains our server serves (lowercase).
    pub local_domains: Arc<[String]>,
    /// Local domains the gateway holds a certificate for (SASL EXTERNAL outbound).
    pub cert_domains: Arc<[String]>,
    /// Refuse the remote side without TLS.
    pub require_tls: bool,
    /// Inbound over direct TLS (XEP-0368): the TLS handshake happened before the first byte.
    pub direct_tls: bool,
    /// Limits on the remote side's stream.
    pub limits: XmlLimits,
    /// Limits on our server's stream.
    pub backend_limits: XmlLimits,
    /// The stream id the gateway announces (random, chosen by the daemon).
    pub stream_id: String,
    /// Protocol timers.
    pub timeouts: Timeouts,
    /// Dialback keys.
    pub dialback: Arc<DialbackSecret>,
}

impl S2sSettings {
    /// Do we serve `domain`?
    pub fn is_local(&self, domain: &str) -> bool {
        self.local_domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// Do we hold a certificate for `domain`?
    pub fn has_cert(&self, domain: &str) -> bool {
        self.cert_domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// A stanza's addresses on an s2s stream: both are required (RFC 6120 §8.1.1.2, §8.1.2.2) and
/// must be valid JIDs; returns their domains, lowercase.
pub(crate) fn stanza_domains(el: &Element) -> Result<(String, String), (Condition, &'static str)> {
    let domain = |attr: &str| {
        let value = el.attr(attr).ok_or((Condition::ImproperAddressing, "s2s stanzas need 'from' and 'to'"))?;
        jid::parse(value)
            .map(|j| j.domain().as_str().to_ascii_lowercase())
            .ok_or((Condition::InvalidFrom, "not a valid JID"))
    };
    let from = domain("from")?;
    let to =
        domain("to")
            .map_err(|(c, w)| if c == Condition::InvalidFrom { (Condition::ImproperAddressing, w) } else { (c, w) })?;
    Ok((from, to))
}

/// The gateway's own checks of an s2s stanza before policy (what `stanzawall explain --chain
/// s2s-in` runs): addresses present and valid. Whether the pair was authenticated is a property
/// of the live stream, not of the stanza.
pub fn check_s2s_stanza(el: &mut Element) -> Check {
    if Kind::of(el).is_none() {
        return Check::Close(Condition::UnsupportedStanzaType, "not a stanza");
    }
    match stanza_domains(el) {
        Ok(_) => Check::Pass,
        Err((condition, why)) => Check::Close(condition, why),
    }
}

/// The dialback element `db:NAME` with `from`, `to` and optional `id`/`type`.
pub(crate) fn db(name: &str, from: &str, to: &str) -> Element {
    Element::new(NS_DIALBACK, name).with_attr("from", from).with_attr("to", to)
}

/// Writing an element on an s2s stream: dialback elements keep the `db:` prefix that every
/// s2s header binds, everything else is written canonically (`jabber:server` default).
pub(crate) trait S2sWrite {
    /// Append the element to `out`.
    fn write_s2s(&self, out: &mut Vec<u8>);
}

impl S2sWrite for Element {
    fn write_s2s(&self, out: &mut Vec<u8>) {
        if &*self.ns != NS_DIALBACK {
            return self.write_to(out, NS_SERVER);
        }
        // ejabberd (fxml) matches dialback elements by their prefixed name, as XEP-0220 writes
        // them (`db:result`, `db:verify`), not by namespace: a `<result xmlns=…>` is ignored
        // there. The canonical form of the element in its own namespace starts with `<NAME`
        // and ends with `/>` or `</NAME>`; only the prefix is added.
        let bytes = self.to_bytes(NS_DIALBACK);
        out.extend_from_slice(b"<db:");
        let close = format!("</{}>", self.name);
        match bytes.strip_suffix(close.as_bytes()) {
            Some(head) => {
                out.extend_from_slice(&head[1..]);
                out.extend_from_slice(b"</db:");
                out.extend_from_slice(&bytes[bytes.len() - close.len() + 2..bytes.len() - 1]);
                out.push(b'>');
            }
            None => out.extend_from_slice(&bytes[1..]),
        }
    }
}

/// `<db:result type='error'>` with a stanza error condition (XEP-0220 §2.4:
/// `item-not-found` for a domain not served, `remote-connection-failed` when the remote could
/// not be reached or refused).
pub(crate) fn db_error(name: &str, from: &str, to: &str, condition: &str) -> Element {
    db(name, from, to).with_attr("type", "error").with_child(
        // XEP-0220 §2.4 writes the error unprefixed: in the stream's namespace.
        Element::new(NS_SERVER, "error")
            .with_attr("type", "cancel")
            .with_child(Element::new(crate::stanza::NS_STANZA_ERRORS, condition)),
    )
}

/// The features the gateway offers on an s2s stream: STARTTLS until TLS is up (required when
/// `require_tls`), then SASL EXTERNAL when the certificate proves the peer's domain, and
/// dialback always (for peers without a usable certificate and for piggybacked domains).
pub(crate) fn features(tls: bool, require_tls: bool, external: bool) -> Element {
    let mut f = Element::new(NS_STREAMS, "features");
    if !tls {
        let mut starttls = Element::new(NS_TLS, "starttls");
        if require_tls {
            starttls = starttls.with_child(Element::new(NS_TLS, "required"));
        }
        f = f.with_child(starttls);
    } else if external {
        f = f.with_child(
            Element::new(NS_SASL, "mechanisms").with_child(Element::new(NS_SASL, "mechanism").with_text("EXTERNAL")),
        );
    }
    f.with_child(Element::new(NS_DIALBACK_FEATURE, "dialback").with_child(Element::new(NS_DIALBACK_FEATURE, "errors")))
}

/// Is `header` a `jabber:server` stream header of version 1.x?
pub(crate) fn header_problem(header: &Element, default_ns: Option<&str>) -> Option<(Condition, &'static str)> {
    if !header.is(NS_STREAMS, "stream") {
        return Some((Condition::InvalidNamespace, "not a stream header"));
    }
    if default_ns != Some(NS_SERVER) {
        return Some((Condition::InvalidNamespace, "content namespace must be jabber:server"));
    }
    let major = header.attr("version").and_then(|v| v.split('.').next()).and_then(|m| m.parse::<u32>().ok());
    if major != Some(1) {
        return Some((Condition::UnsupportedVersion, "version 1.0 is required"));
    }
    None
}

/// A domain attribute, lowercase, if it is a valid domain.
pub(crate) fn domain_attr(el: &Element, name: &str) -> Option<String> {
    el.attr(name).map(str::to_ascii_lowercase).filter(|d| jid::is_domain(d))
}
