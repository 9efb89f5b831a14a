//! Restricted, streaming XML for XMPP (RFC 6120 §11) with hard limits.
//!
//! This module owns turning bytes into a bounded element tree and back into one canonical byte
//! form. It refuses everything RFC 6120 §11.1 prohibits (comments, processing instructions, DTDs,
//! entity references other than the five predefined ones) and everything that is not
//! well-formed XML 1.0 + Namespaces (non-UTF-8, invalid characters, undeclared prefixes,
//! duplicate attributes, mismatched tags). It never forwards input bytes: callers re-serialize
//! the tree (invariant 1, never forward bytes the parser did not accept, docs/DESIGN.md). It
//! never reads a clock or does I/O.
//!
//! Parser choice: a purpose-built tokenizer rather than quick-xml (fast but lenient: it accepts
//! DTDs, comments, undeclared prefixes and duplicate attributes, and is not incremental over a
//! byte stream) or rxml (strict but slow). The throughput of this one is measured by
//! `cargo bench -p stanzawall-core --bench xml` and recorded in docs/BENCHMARKS.md.

mod chars;
mod element;
mod reader;
mod skip;
#[cfg(test)]
mod tests;

pub(crate) use chars::escape_attr as escape_attr_str;
pub use element::{Attr, Element, Node, Ns};
pub use reader::StreamReader;

/// The stream namespace (RFC 6120 §4.8.1).
pub const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
/// Client-to-server content namespace (RFC 6120 §4.8.2); also [`crate::stream::NS_CLIENT`].
pub const NS_CLIENT: &str = "jabber:client";
/// Server-to-server content namespace (RFC 6120 §4.8.2); also [`crate::stream::NS_SERVER`].
pub const NS_SERVER: &str = "jabber:server";
/// The namespace bound to the `xml` prefix.
pub const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";
/// The namespace bound to the `xmlns` prefix; may never be declared.
pub const NS_XMLNS: &str = "http://www.w3.org/2000/xmlns/";

/// Caps enforced while parsing (invariant 2, restricted XML and bounded everything,
/// docs/DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XmlLimits {
    /// Largest stanza (top-level element), and largest stream header, in bytes.
    pub stanza_bytes: usize,
    /// Deepest element nesting inside a stanza (the stanza itself is depth 1).
    pub depth: usize,
    /// Most attributes (namespace declarations included) on one element.
    pub attributes: usize,
}

impl Default for XmlLimits {
    fn default() -> Self {
        XmlLimits { stanza_bytes: 262_144, depth: 32, attributes: 64 }
    }
}

/// What the reader produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XmlEvent {
    /// The stream header's start tag (no children); `default_ns` is its default namespace.
    StreamOpen {
        /// The `<stream:stream>` element with its attributes.
        header: Element,
        /// The content namespace declared on the header (`jabber:client`, `jabber:server`).
        default_ns: Option<Ns>,
    },
    /// A complete top-level element: a stanza or a stream-level element (features, SASL, …).
    Stanza(Element),
    /// `</stream:stream>`.
    StreamClose,
    /// Whitespace between stanzas (a keepalive, RFC 6120 §4.6.1); one event per run.
    Whitespace,
    /// A stanza skipped because it broke a limit or was not namespace-well-formed (only with
    /// [`StreamReader::skip_over_limits`]); `root` is its top element without children, when the
    /// root's own start tag was acceptable.
    Skipped {
        /// The limit or rule it broke.
        reason: XmlError,
        /// The stanza's root element, without children.
        root: Option<Element>,
    },
}

/// Why input was refused. Each maps to the stream error RFC 6120 §4.9.3 requires (the mapping is
/// `StreamError::from(&XmlError)` in [`crate::stream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// Not well-formed XML 1.0 or XML Namespaces.
    #[error("not well-formed: {0}")]
    NotWellFormed(&'static str),
    /// A feature prohibited by RFC 6120 §11.1 (comment, PI, DTD, entity reference).
    #[error("restricted XML: {0}")]
    Restricted(&'static str),
    /// Bytes that are not UTF-8, or an encoding other than UTF-8 declared.
    #[error("not UTF-8")]
    InvalidUtf8,
    /// A declared encoding other than UTF-8.
    #[error("unsupported encoding declared")]
    UnsupportedEncoding,
    /// A character outside XML 1.0 `Char` (e.g. a C0 control).
    #[error("invalid XML character")]
    InvalidChar,
    /// A prefix used without a declaration in scope.
    #[error("undeclared namespace prefix")]
    UndeclaredPrefix,
    /// Well-formed XML that cannot appear there in an XMPP stream.
    #[error("bad format: {0}")]
    BadFormat(&'static str),
    /// A `<stream:stream>` element inside the stream.
    #[error("nested stream header")]
    NestedStreamHeader,
    /// An element in the stream namespace inside a stanza.
    #[error("stream element inside a stanza")]
    NestedStreamElement,
    /// An element in the XML namespace, or the XML or XMLNS namespace as a default namespace
    /// (they have no canonical serialization).
    #[error("reserved namespace")]
    ReservedNamespace,
    /// A stanza (or stream header) larger than the cap.
    #[error("stanza exceeds {limit} bytes")]
    TooLarge {
        /// The cap in force.
        limit: usize,
    },
    /// Nesting deeper than the cap.
    #[error("nesting exceeds depth {limit}")]
    TooDeep {
        /// The cap in force.
        limit: usize,
    },
    /// More attributes on one element than the cap.
    #[error("more than {limit} attributes")]
    TooManyAttributes {
        /// The cap in force.
        limit: usize,
    },
}

/// Why [`parse_stanzas`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StanzaTextError {
    /// The text is not acceptable restricted XML.
    #[error("{0}")]
    Xml(XmlError),
    /// The text ended inside an element.
    #[error("the text ends inside an element")]
    Incomplete,
}

/// Parse top-level elements written as they would appear inside a `jabber:client` stream (for
/// `stanzawall explain`, tests and benchmarks), with the same restricted parser and `limits`.
pub fn parse_stanzas(text: &str, limits: XmlLimits) -> Result<Vec<Element>, StanzaTextError> {
    let mut reader = StreamReader::new(XmlLimits { stanza_bytes: limits.stanza_bytes.max(1024), ..limits });
    reader.feed(format!("<stream:stream xmlns='{}' xmlns:stream='{NS_STREAMS}'>", NS_CLIENT).as_bytes());
    reader.feed(text.as_bytes());
    let mut out = Vec::new();
    loop {
        match reader.next_event() {
            Ok(Some(XmlEvent::Stanza(el))) => out.push(el),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => return Err(StanzaTextError::Xml(e)),
        }
    }
    if !reader.is_idle() {
        return Err(StanzaTextError::Incomplete);
    }
    Ok(out)
}
