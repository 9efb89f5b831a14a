//! XMPP stream framing: headers, stream errors and namespaces (RFC 6120 §4).
//!
//! Owns what the gateway *writes* at stream level: the headers it opens on either leg and the
//! `<stream:error/>` it closes a stream with. It never decides policy and never reads input;
//! parsing is [`crate::xml`]'s job.

use std::fmt;

use crate::xml::{escape_attr_str, Element, XmlError, NS_STREAMS};
pub use crate::xml::{NS_CLIENT, NS_SERVER};
/// Namespace of stream error conditions (RFC 6120 §4.9.3).
pub const NS_STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";

/// Stream error conditions (RFC 6120 §4.9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    /// §4.9.3.1 XML that cannot be processed.
    BadFormat,
    /// §4.9.3.2 unsupported namespace prefix.
    BadNamespacePrefix,
    /// §4.9.3.3 a new stream conflicts with an existing one.
    Conflict,
    /// §4.9.3.4 no traffic for too long.
    ConnectionTimeout,
    /// §4.9.3.5 the host is no longer served.
    HostGone,
    /// §4.9.3.6 the `to` host is not served.
    HostUnknown,
    /// §4.9.3.7 an s2s stanza lacks `to` or `from`.
    ImproperAddressing,
    /// §4.9.3.8 an internal error (also: backend unreachable).
    InternalServerError,
    /// §4.9.3.9 `from` does not match the authenticated address.
    InvalidFrom,
    /// §4.9.3.10 wrong stream or content namespace.
    InvalidNamespace,
    /// §4.9.3.11 XML that fails validation.
    InvalidXml,
    /// §4.9.3.12 acting before authentication.
    NotAuthorized,
    /// §4.9.3.13 not well-formed XML.
    NotWellFormed,
    /// §4.9.3.14 a local policy was violated (size limits, rules).
    PolicyViolation,
    /// §4.9.3.15 cannot connect to a remote entity.
    RemoteConnectionFailed,
    /// §4.9.3.16 the stream is closed because a new one replaces it.
    Reset,
    /// §4.9.3.17 lacking resources.
    ResourceConstraint,
    /// §4.9.3.18 restricted XML (comments, PIs, DTDs, entities).
    RestrictedXml,
    /// §4.9.3.19 see another host.
    SeeOtherHost,
    /// §4.9.3.20 the server is shutting down.
    SystemShutdown,
    /// §4.9.3.21 none of the others.
    UndefinedCondition,
    /// §4.9.3.22 not UTF-8.
    UnsupportedEncoding,
    /// §4.9.3.23 a required feature is not supported.
    UnsupportedFeature,
    /// §4.9.3.24 an unsupported top-level element.
    UnsupportedStanzaType,
    /// §4.9.3.25 an unsupported stream version.
    UnsupportedVersion,
}

impl Condition {
    /// The element name of the condition.
    pub fn as_str(self) -> &'static str {
        use Condition::*;
        match self {
            BadFormat => "bad-format",
            BadNamespacePrefix => "bad-namespace-prefix",
            Conflict => "conflict",
            ConnectionTimeout => "connection-timeout",
            HostGone => "host-gone",
            HostUnknown => "host-unknown",
            ImproperAddressing => "improper-addressing",
            InternalServerError => "internal-server-error",
            InvalidFrom => "invalid-from",
            InvalidNamespace => "invalid-namespace",
            InvalidXml => "invalid-xml",
            NotAuthorized => "not-authorized",
            NotWellFormed => "not-well-formed",
            PolicyViolation => "policy-violation",
            RemoteConnectionFailed => "remote-connection-failed",
            Reset => "reset",
            ResourceConstraint => "resource-constraint",
            RestrictedXml => "restricted-xml",
            SeeOtherHost => "see-other-host",
            SystemShutdown => "system-shutdown",
            UndefinedCondition => "undefined-condition",
            UnsupportedEncoding => "unsupported-encoding",
            UnsupportedFeature => "unsupported-feature",
            UnsupportedStanzaType => "unsupported-stanza-type",
            UnsupportedVersion => "unsupported-version",
        }
    }

    /// Parse a condition element name.
    pub fn from_name(name: &str) -> Option<Condition> {
        use Condition::*;
        const ALL: [Condition; 25] = [
            BadFormat,
            BadNamespacePrefix,
            Conflict,
            ConnectionTimeout,
            HostGone,
            HostUnknown,
            ImproperAddressing,
            InternalServerError,
            InvalidFrom,
            InvalidNamespace,
            InvalidXml,
            NotAuthorized,
            NotWellFormed,
            PolicyViolation,
            RemoteConnectionFailed,
            Reset,
            ResourceConstraint,
            RestrictedXml,
            SeeOtherHost,
            SystemShutdown,
            UndefinedCondition,
            UnsupportedEncoding,
            UnsupportedFeature,
            UnsupportedStanzaType,
            UnsupportedVersion,
        ];
        ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Namespace of application-specific error conditions shared by XMPP servers (`stanza-too-big`).
pub const NS_XMPP_ERRORS: &str = "urn:xmpp:errors";

/// A stream error to send (or one received from a peer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    /// The defined condition.
    pub condition: Condition,
    /// Optional human-readable text (never includes peer-supplied data verbatim).
    pub text: Option<String>,
    /// Application-specific condition (RFC 6120 §4.9.4), as (namespace, element name).
    pub app: Option<(&'static str, &'static str)>,
    /// The character data of the condition element: only `<see-other-host/>` has any, the
    /// `host[:port]` the peer should connect to instead (RFC 6120 §4.9.3.19).
    pub other_host: Option<String>,
}

impl StreamError {
    /// A stream error with a condition and optional explanation.
    pub fn new(condition: Condition, text: impl Into<Option<String>>) -> Self {
        StreamError { condition, text: text.into(), app: None, other_host: None }
    }

    /// `<see-other-host>host:port</see-other-host>` (RFC 6120 §4.9.3.19): the peer should
    /// reconnect there (a gateway leaving its pool names a peer gateway or the balancer).
    pub fn see_other_host(host: impl Into<String>, text: impl Into<Option<String>>) -> Self {
        StreamError { other_host: Some(host.into()), ..StreamError::new(Condition::SeeOtherHost, text) }
    }

    /// Add an application-specific condition element.
    #[must_use]
    pub fn with_app(mut self, ns: &'static str, name: &'static str) -> Self {
        self.app = Some((ns, name));
        self
    }

    /// The `<stream:error>` element.
    pub fn to_element(&self) -> Element {
        let mut condition = Element::new(NS_STREAM_ERRORS, self.condition.as_str());
        if let (Condition::SeeOtherHost, Some(host)) = (self.condition, &self.other_host) {
            condition = condition.with_text(host.clone());
        }
        let mut el = Element::new(NS_STREAMS, "error").with_child(condition);
        if let Some(t) = &self.text {
            el = el.with_child(
                Element::new(NS_STREAM_ERRORS, "text")
                    .with_attr_ns(crate::xml::NS_XML, "lang", "en")
                    .with_text(t.clone()),
            );
        }
        if let Some((ns, name)) = self.app {
            el = el.with_child(Element::new(ns, name));
        }
        el
    }

    /// Read a received `<stream:error>` element; unknown conditions become undefined-condition.
    pub fn from_element(el: &Element) -> StreamError {
        let condition = el
            .elements()
            .filter(|c| &*c.ns == NS_STREAM_ERRORS && c.name != "text")
            .find_map(|c| Condition::from_name(&c.name))
            .unwrap_or(Condition::UndefinedCondition);
        let text = el.child(NS_STREAM_ERRORS, "text").map(Element::text);
        let other_host = match condition {
            Condition::SeeOtherHost => el.child(NS_STREAM_ERRORS, "see-other-host").map(Element::text),
            _ => None,
        };
        StreamError { condition, text, app: None, other_host }
    }
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.text {
            Some(t) => write!(f, "{} ({t})", self.condition),
            None => write!(f, "{}", self.condition),
        }
    }
}

impl From<&XmlError> for Condition {
    /// The stream error condition RFC 6120 §4.9.3 prescribes for input the parser refused.
    fn from(e: &XmlError) -> Condition {
        match e {
            XmlError::NotWellFormed(_) | XmlError::InvalidChar | XmlError::UndeclaredPrefix => Condition::NotWellFormed,
            XmlError::Restricted(_) => Condition::RestrictedXml,
            XmlError::InvalidUtf8 | XmlError::UnsupportedEncoding => Condition::UnsupportedEncoding,
            XmlError::BadFormat(_) => Condition::BadFormat,
            XmlError::NestedStreamHeader | XmlError::NestedStreamElement => Condition::InvalidXml,
            XmlError::ReservedNamespace => Condition::BadFormat,
            XmlError::TooLarge { .. } | XmlError::TooDeep { .. } | XmlError::TooManyAttributes { .. } => {
                Condition::PolicyViolation
            }
        }
    }
}

impl From<&XmlError> for StreamError {
    /// The stream error to close the stream with when the parser refused input: its condition,
    /// the parser's reason as text, and `stanza-too-big` for an oversized stanza.
    fn from(e: &XmlError) -> StreamError {
        let err = StreamError::new(Condition::from(e), Some(e.to_string()));
        match e {
            XmlError::TooLarge { .. } => err.with_app(NS_XMPP_ERRORS, "stanza-too-big"),
            _ => err,
        }
    }
}

/// Attributes of a stream header the gateway writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// `to`
    pub to: Option<String>,
    /// `from`
    pub from: Option<String>,
    /// `id` (only in response headers)
    pub id: Option<String>,
    /// `xml:lang`
    pub lang: Option<String>,
}

impl Header {
    /// Write `<?xml version='1.0'?><stream:stream …>` with the given content namespace.
    pub fn write(&self, content_ns: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(b"<?xml version='1.0'?><stream:stream");
        for (k, v) in [("from", &self.from), ("to", &self.to), ("id", &self.id), ("xml:lang", &self.lang)] {
            if let Some(v) = v {
                out.push(b' ');
                out.extend_from_slice(k.as_bytes());
                out.extend_from_slice(b"='");
                escape_attr_str(v, out);
                out.push(b'\'');
            }
        }
        out.extend_from_slice(b" version='1.0' xmlns='");
        escape_attr_str(content_ns, out);
        out.extend_from_slice(b"' xmlns:stream='http://etherx.jabber.org/streams'>");
    }

    /// Write a server-to-server header (`jabber:server`) that also declares the dialback
    /// namespace, which peers take as the sign that dialback is supported (XEP-0220 §2.1).
    pub fn write_s2s(&self, out: &mut Vec<u8>) {
        self.write(crate::xml::NS_SERVER, out);
        // Insert the declaration before the closing '>' of the start tag just written.
        out.pop();
        out.extend_from_slice(b" xmlns:db='jabber:server:dialback'>");
    }
}

/// The closing tag of a stream.
pub const STREAM_CLOSE: &[u8] = b"</stream:stream>";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{StreamReader, XmlEvent, XmlLimits};

    #[test]
    fn stream_error_round_trips() {
        let err = StreamError::new(Condition::PolicyViolation, Some("too big".to_owned()));
        let mut bytes = Vec::new();
        Header::default().write(NS_CLIENT, &mut bytes);
        err.to_element().write_to(&mut bytes, NS_CLIENT);
        assert!(String::from_utf8_lossy(&bytes)
            .contains("<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"));
        let mut r = StreamReader::new(XmlLimits::default());
        r.feed(&bytes);
        assert!(matches!(r.next_event(), Ok(Some(XmlEvent::StreamOpen { .. }))));
        let Ok(Some(XmlEvent::Stanza(el))) = r.next_event() else { panic!("no error element") };
        assert_eq!(StreamError::from_element(&el), err);
    }

    #[test]
    fn every_condition_name_parses_back() {
        for name in ["bad-format", "system-shutdown", "unsupported-version", "invalid-from"] {
            assert_eq!(Condition::from_name(name).map(Condition::as_str), Some(name));
        }
        assert_eq!(Condition::from_name("made-up"), None);
    }
}
