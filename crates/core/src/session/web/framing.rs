//! RFC 7395 framing ↔ the XML stream form the c2s machine reads and writes.
//!
//! Client → gateway: each WebSocket text message is one standalone XML document holding exactly
//! one element (RFC 7395 §3.3.3). It is parsed with the gateway's own restricted reader
//! ([`parse_message`]) — never passed on as bytes — and turned into stream form: `<open/>`
//! becomes a stream header, `<close/>` the stream's end tag, any other element its canonical
//! serialization inside a `jabber:client` stream. The c2s machine then parses that again under
//! its own limits and applies every check and policy it applies to TCP clients.
//!
//! Gateway → client: what the c2s machine writes (a stream header, elements, the end tag) is
//! read back element by element ([`Reframer`]) and each becomes one message: the header an
//! `<open/>`, each element a standalone document with its namespaces declared, the end tag a
//! `<close/>`. Whitespace keepalives are not carried (RFC 7395 §3.3.3: frames are elements;
//! WebSocket has its own pings).

use crate::stream::{Condition, StreamError};
use crate::xml::{escape_attr_str, Element, StreamReader, XmlError, XmlEvent, XmlLimits, NS_STREAMS, NS_XML};

/// The framing namespace of `<open/>` and `<close/>` (RFC 7395 §3.3.2).
pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
/// The `<close/>` message.
pub const CLOSE_MESSAGE: &[u8] = b"<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>";
/// The prefix the stream namespace is bound to around each message: no default namespace, so
/// an element that does not declare its own is in no namespace and refused by the c2s machine.
const WRAPPER: &[u8] = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>";
/// Longest XML declaration looked for at the start of a message.
const MAX_XML_DECL: usize = 128;

/// One client message, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// `<open/>`: the stream header to feed the c2s machine.
    Open(Vec<u8>),
    /// `<close/>`: the end of the client's stream.
    Close,
    /// Any other element: a stanza or a nonza (SASL, Stream Management, CSI).
    Element(Element),
    /// A message of whitespace only (a keepalive some clients send).
    Keepalive,
}

/// Why a client message was refused; each maps to a stream error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The message is not acceptable restricted XML.
    #[error("{0}")]
    Xml(XmlError),
    /// More than one element in one message.
    #[error("a WebSocket message must hold exactly one XML element (RFC 7395 §3.3.3)")]
    TwoElements,
    /// The message ends inside an element.
    #[error("the WebSocket message ends inside an element (RFC 7395 §3.3.3)")]
    Incomplete,
    /// A `<stream:stream>` header or end tag: TCP framing on a WebSocket.
    #[error("use <open/> and <close/> in urn:ietf:params:xml:ns:xmpp-framing over WebSocket (RFC 7395 §3.3.2)")]
    StreamTag,
    /// An element of the framing namespace other than `<open/>` and `<close/>`, or an
    /// `<open/>` with children.
    #[error("unknown framing element <{0}/>")]
    UnknownFraming(String),
}

impl FramingError {
    /// The stream error to close the stream with (RFC 6120 §4.9.3).
    pub fn stream_error(&self) -> StreamError {
        let condition = match self {
            FramingError::Xml(e) => return StreamError::from(e),
            // XML 1.0 §2.1: a document has exactly one root element.
            FramingError::TwoElements | FramingError::Incomplete => Condition::NotWellFormed,
            // The framed stream's namespace is the framing one; a stream header is in the wrong.
            FramingError::StreamTag => Condition::InvalidNamespace,
            FramingError::UnknownFraming(_) => Condition::UnsupportedStanzaType,
        };
        StreamError::new(condition, Some(self.to_string()))
    }
}

/// Parse one client message with the restricted reader under `limits`.
pub fn parse_message(text: &str, limits: XmlLimits) -> Result<ClientFrame, FramingError> {
    // RFC 7395 §3.3.3: an XML declaration is allowed (not recommended); it must come first, so
    // it goes before the wrapper, where the reader checks it like any stream's.
    let (decl, rest) = match text.strip_prefix("<?xml") {
        Some(_) => match text.get(..MAX_XML_DECL.min(text.len())).and_then(|h| h.find("?>")) {
            Some(end) => text.split_at(end + 2),
            None => return Err(FramingError::Xml(XmlError::NotWellFormed("unterminated XML declaration"))),
        },
        None => ("", text),
    };
    if rest.trim_matches([' ', '\t', '\r', '\n']).is_empty() {
        return Ok(ClientFrame::Keepalive);
    }
    let mut reader = StreamReader::new(limits);
    reader.feed(decl.as_bytes());
    reader.feed(WRAPPER);
    reader.feed(rest.as_bytes());
    let mut found: Option<Element> = None;
    loop {
        match reader.next_event() {
            Ok(Some(XmlEvent::StreamOpen { .. } | XmlEvent::Whitespace)) => {}
            Ok(Some(XmlEvent::Stanza(el))) => {
                if found.is_some() {
                    return Err(FramingError::TwoElements);
                }
                found = Some(el);
            }
            Ok(Some(XmlEvent::StreamClose)) | Err(XmlError::NestedStreamHeader) => return Err(FramingError::StreamTag),
            // The reader never skips here (skip mode is off).
            Ok(Some(XmlEvent::Skipped { reason, .. })) => return Err(FramingError::Xml(reason)),
            Ok(None) => break,
            Err(e) => return Err(FramingError::Xml(e)),
        }
    }
    if !reader.is_idle() {
        return Err(FramingError::Incomplete);
    }
    let Some(el) = found else { return Err(FramingError::Incomplete) };
    if &*el.ns != NS_FRAMING {
        return Ok(ClientFrame::Element(el));
    }
    match el.name.as_str() {
        "open" if el.elements().next().is_none() => Ok(ClientFrame::Open(stream_header(&el))),
        "close" => Ok(ClientFrame::Close),
        other => Err(FramingError::UnknownFraming(other.to_owned())),
    }
}

/// The stream header equivalent to a client's `<open/>`: its `to`, `from`, `version` and
/// `xml:lang`, as given (the c2s machine checks them as it checks a TCP client's header).
fn stream_header(open: &Element) -> Vec<u8> {
    let mut out = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'".to_vec();
    let lang = open.attrs.iter().find(|a| a.ns.as_deref() == Some(NS_XML) && a.name == "lang");
    let attrs = [("to", open.attr("to")), ("from", open.attr("from")), ("version", open.attr("version"))];
    for (name, value) in attrs.into_iter().chain([("xml:lang", lang.map(|a| a.value.as_str()))]) {
        if let Some(v) = value {
            out.push(b' ');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"='");
            escape_attr_str(v, &mut out);
            out.push(b'\'');
        }
    }
    out.push(b'>');
    out
}

/// What the c2s machine wrote, as messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    /// One message (`<open/>` or an element).
    Message(Vec<u8>),
    /// The stream ended: send `<close/>`, then close the WebSocket.
    Close,
}

/// Reads the c2s machine's client-bound stream back, element by element.
#[derive(Debug)]
pub struct Reframer {
    reader: StreamReader,
}

impl Default for Reframer {
    fn default() -> Self {
        Self::new()
    }
}

impl Reframer {
    /// A reader of the gateway's own canonical output: its caps only guard against a bug (the
    /// c2s machine already bounded what it parsed, and re-escaping may grow it several times).
    pub fn new() -> Self {
        Reframer {
            reader: StreamReader::new(XmlLimits { stanza_bytes: usize::MAX / 4, depth: 1024, attributes: 1 << 16 }),
        }
    }

    /// Turn `bytes` (the next part of the c2s machine's output) into messages.
    pub fn convert(&mut self, bytes: &[u8]) -> Result<Vec<ServerFrame>, XmlError> {
        self.reader.feed(bytes);
        let mut out = Vec::new();
        loop {
            match self.reader.next_event()? {
                None => return Ok(out),
                Some(XmlEvent::StreamOpen { header, .. }) => out.push(ServerFrame::Message(open_message(&header))),
                Some(XmlEvent::Stanza(el)) => {
                    out.push(ServerFrame::Message(standalone(&el)));
                    if el.is(crate::session::NS_SASL, "success") {
                        // RFC 6120 §6.4.6: the stream restarts after SASL success; the c2s
                        // machine writes a new header when the client's next `<open/>` comes.
                        self.reader.restart();
                    }
                }
                Some(XmlEvent::StreamClose) => {
                    out.push(ServerFrame::Close);
                    return Ok(out);
                }
                Some(XmlEvent::Whitespace | XmlEvent::Skipped { .. }) => {}
            }
        }
    }
}

/// `<open/>` with the attributes of the gateway's stream header (RFC 7395 §3.4).
fn open_message(header: &Element) -> Vec<u8> {
    let mut open = Element::new(NS_FRAMING, "open");
    for name in ["from", "id", "version"] {
        if let Some(v) = header.attr(name) {
            open = open.with_attr(name, v);
        }
    }
    if let Some(lang) = header.lang() {
        open = open.with_attr_ns(NS_XML, "lang", lang);
    }
    open.to_bytes("")
}

/// An element as a standalone document: its own namespace declared, and for stream-level
/// elements (`<stream:features/>`, `<stream:error/>`) the `stream` prefix too (RFC 7395 §3.3.3).
pub fn standalone(el: &Element) -> Vec<u8> {
    let mut out = el.to_bytes("");
    if &*el.ns == NS_STREAMS {
        let at = 1 + "stream:".len() + el.name.len();
        let decl = format!(" xmlns:stream='{NS_STREAMS}'");
        out.splice(at..at, decl.into_bytes());
    }
    out
}
