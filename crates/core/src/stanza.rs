//! Stanzas (RFC 6120 §8): what kind an element is, and the error stanza that answers one.
//!
//! Owns the rule "never an error in reply to an error or to an iq result" (RFC 6120 §8.3.1), so
//! every caller that bounces gets it for free. Pure functions over [`Element`]; no policy here.

use crate::stream::{NS_CLIENT, NS_SERVER};
use crate::xml::Element;

/// Namespace of stanza error conditions (RFC 6120 §8.3.3).
pub const NS_STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// Message Carbons (XEP-0280).
pub const NS_CARBONS: &str = "urn:xmpp:carbons:2";

/// The three stanza kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `<message/>`
    Message,
    /// `<presence/>`
    Presence,
    /// `<iq/>`
    Iq,
}

impl Kind {
    /// The kind of a top-level element, if it is a stanza in a content namespace.
    pub fn of(el: &Element) -> Option<Kind> {
        if &*el.ns != NS_CLIENT && &*el.ns != NS_SERVER {
            return None;
        }
        match el.name.as_str() {
            "message" => Some(Kind::Message),
            "presence" => Some(Kind::Presence),
            "iq" => Some(Kind::Iq),
            _ => None,
        }
    }

    /// Element name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::Presence => "presence",
            Kind::Iq => "iq",
        }
    }
}

/// Stanza error conditions the gateway produces (RFC 6120 §8.3.3), with their error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StanzaCondition {
    /// §8.3.3.1, type modify.
    BadRequest,
    /// §8.3.3.4, type auth.
    Forbidden,
    /// §8.3.3.8, type modify.
    JidMalformed,
    /// §8.3.3.9, type cancel.
    NotAcceptable,
    /// §8.3.3.10, type cancel.
    NotAllowed,
    /// §8.3.3.12, type modify.
    PolicyViolation,
    /// §8.3.3.14, type wait.
    ResourceConstraint,
    /// §8.3.3.19, type cancel.
    ServiceUnavailable,
}

impl StanzaCondition {
    /// Element name of the condition.
    pub fn as_str(self) -> &'static str {
        match self {
            StanzaCondition::BadRequest => "bad-request",
            StanzaCondition::Forbidden => "forbidden",
            StanzaCondition::JidMalformed => "jid-malformed",
            StanzaCondition::NotAcceptable => "not-acceptable",
            StanzaCondition::NotAllowed => "not-allowed",
            StanzaCondition::PolicyViolation => "policy-violation",
            StanzaCondition::ResourceConstraint => "resource-constraint",
            StanzaCondition::ServiceUnavailable => "service-unavailable",
        }
    }

    /// The error `type` RFC 6120 §8.3.3 gives the condition.
    pub fn error_type(self) -> &'static str {
        match self {
            StanzaCondition::BadRequest | StanzaCondition::JidMalformed | StanzaCondition::PolicyViolation => "modify",
            StanzaCondition::Forbidden => "auth",
            StanzaCondition::ResourceConstraint => "wait",
            StanzaCondition::NotAcceptable | StanzaCondition::NotAllowed | StanzaCondition::ServiceUnavailable => {
                "cancel"
            }
        }
    }

    /// Parse a condition name (config, `explain`).
    pub fn from_name(name: &str) -> Option<StanzaCondition> {
        use StanzaCondition::*;
        [
            BadRequest,
            Forbidden,
            JidMalformed,
            NotAcceptable,
            NotAllowed,
            PolicyViolation,
            ResourceConstraint,
            ServiceUnavailable,
        ]
        .into_iter()
        .find(|c| c.as_str() == name)
    }
}

/// May this stanza be answered with an error? Not an error, and not an iq result
/// (RFC 6120 §8.3.1: an entity MUST NOT respond to an error, and iq results are never answered).
pub fn may_bounce(el: &Element) -> bool {
    match (Kind::of(el), el.attr("type")) {
        (None, _) | (_, Some("error")) => false,
        (Some(Kind::Iq), t) => matches!(t, Some("get") | Some("set")),
        _ => true,
    }
}

/// The error stanza answering `el` (RFC 6120 §8.3): same kind and id, `from` and `to` swapped
/// (`default_from` when the original had no `to`), an `<error/>` with the condition and text.
/// `None` where [`may_bounce`] says no error may be sent.
pub fn error_reply(
    el: &Element,
    condition: StanzaCondition,
    text: Option<&str>,
    default_from: &str,
) -> Option<Element> {
    if !may_bounce(el) {
        return None;
    }
    let mut reply = Element::new(el.ns.clone(), el.name.clone()).with_attr("type", "error");
    if let Some(id) = el.attr("id") {
        reply.set_attr("id", id);
    }
    reply.set_attr("from", el.attr("to").unwrap_or(default_from));
    if let Some(from) = el.attr("from") {
        reply.set_attr("to", from);
    }
    let mut error = Element::new(el.ns.clone(), "error")
        .with_attr("type", condition.error_type())
        .with_child(Element::new(NS_STANZA_ERRORS, condition.as_str()));
    if let Some(t) = text {
        error = error.with_child(
            Element::new(NS_STANZA_ERRORS, "text").with_attr_ns(crate::xml::NS_XML, "lang", "en").with_text(t),
        );
    }
    Some(reply.with_child(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: Option<&str>) -> Element {
        let mut m = Element::new(NS_CLIENT, "message")
            .with_attr("id", "m1")
            .with_attr("from", "alice@example.test/phone")
            .with_attr("to", "bob@example.test");
        if let Some(t) = ty {
            m.set_attr("type", t);
        }
        m.with_child(Element::new(NS_CLIENT, "body").with_text("hi"))
    }

    #[test]
    fn bounce_swaps_addresses_and_keeps_id() {
        let reply = error_reply(&msg(Some("chat")), StanzaCondition::PolicyViolation, Some("blocked"), "example.test")
            .expect("bounced");
        assert_eq!(
            String::from_utf8(reply.to_bytes(NS_CLIENT)).unwrap(),
            "<message type='error' id='m1' from='bob@example.test' to='alice@example.test/phone'>\
             <error type='modify'><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>blocked</text></error></message>"
        );
    }

    #[test]
    fn never_an_error_to_an_error_or_a_result() {
        assert!(error_reply(&msg(Some("error")), StanzaCondition::BadRequest, None, "x").is_none());
        let result = Element::new(NS_CLIENT, "iq").with_attr("type", "result").with_attr("id", "1");
        assert!(error_reply(&result, StanzaCondition::BadRequest, None, "x").is_none());
        let get = Element::new(NS_CLIENT, "iq").with_attr("type", "get").with_attr("id", "1");
        let reply = error_reply(&get, StanzaCondition::ServiceUnavailable, None, "example.test").unwrap();
        assert_eq!(reply.attr("from"), Some("example.test"));
        assert_eq!(reply.attr("type"), Some("error"));
        assert!(error_reply(&Element::new("urn:x", "foo"), StanzaCondition::BadRequest, None, "x").is_none());
    }

    #[test]
    fn condition_names_round_trip() {
        for c in ["bad-request", "jid-malformed", "policy-violation", "resource-constraint", "service-unavailable"] {
            assert_eq!(StanzaCondition::from_name(c).map(StanzaCondition::as_str), Some(c));
        }
    }
}
