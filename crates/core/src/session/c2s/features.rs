//! Which stream features may cross a TLS-terminating hop.
//!
//! The gateway relays the backend's `<stream:features/>` to the client minus what would break or
//! be unsafe through it: STARTTLS (TLS is the gateway's), compression (XEP-0138; CRIME-style
//! attacks and it would bypass parsing), SASL mechanisms with channel binding (`-PLUS`, RFC 5802
//! §6: the binding is to the client↔gateway TLS session, which the backend never sees) and their
//! advertisement (XEP-0440), SASL2/Bind2 (XEP-0388/0386: no stream restart, not relayed yet), and
//! Stream Management v2 and instant resumption (XEP-0397); SM v3 is relayed with its counters
//! rewritten (`filter.rs`), and legacy non-SASL authentication (XEP-0078), which would bypass the SASL
//! relay the gateway follows.

use crate::xml::Element;

use super::{NS_SASL, NS_TLS};

/// Namespaces of top-level features removed from the backend's features.
const REMOVED_FEATURES: &[&str] = &[
    NS_TLS,
    "http://jabber.org/features/compress",
    "urn:xmpp:sasl-cb:0",
    "urn:xmpp:sasl:2",
    "urn:xmpp:bind:0",
    "urn:xmpp:sm:2",
    "urn:xmpp:isr:0",
    "http://jabber.org/features/iq-auth",
];

/// True for SASL mechanisms that bind to the TLS channel (`SCRAM-SHA-1-PLUS`, …).
pub fn is_channel_binding_mechanism(mechanism: &str) -> bool {
    mechanism.trim().to_ascii_uppercase().ends_with("-PLUS")
}

/// Remove what cannot cross the gateway from a `<stream:features/>` element.
pub fn filter_features(features: &mut Element) {
    features.retain_elements(|f| !REMOVED_FEATURES.contains(&&*f.ns));
    for child in &mut features.children {
        if let crate::xml::Node::Element(mechs) = child {
            if mechs.is(NS_SASL, "mechanisms") {
                mechs.retain_elements(|m| !(m.is(NS_SASL, "mechanism") && is_channel_binding_mechanism(&m.text())));
            }
        }
    }
    // A mechanisms list left empty would advertise SASL with nothing to use.
    features.retain_elements(|f| !(f.is(NS_SASL, "mechanisms") && f.elements().next().is_none()));
}
