//! The `<body/>` wrapper of XEP-0124, read strictly and written canonically.
//!
//! A client's request body is parsed with the gateway's restricted reader ([`parse_body`]) under
//! the caps it is given; its attributes are checked (`rid`, `sid`, `type`, `xmpp:restart`, the
//! session-creation ones) and its children become [`Element`]s, each later re-serialized into the
//! c2s stream — no request byte is passed on as written (invariant 1). Responses are built here
//! too ([`ResponseBody`]): every child is a standalone element with its namespaces declared.

use crate::stream::NS_CLIENT;
use crate::xml::{escape_attr_str, Element, Node, StreamReader, XmlError, XmlEvent, XmlLimits};

use super::super::framing::standalone;

/// XEP-0124 §4: the namespace of `<body/>`.
pub const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
/// XEP-0206 §3: the namespace of `xmpp:version`, `xmpp:restart`, `xmpp:restartlogic`.
pub const NS_XBOSH: &str = "urn:xmpp:xbosh";
/// XEP-0124 §7.1: request ids are below 2^53 (they must survive a JavaScript number).
pub const MAX_RID: u64 = (1 << 53) - 1;
/// The prefix the stream namespace is bound to around a body (as for a WebSocket message).
const WRAPPER: &[u8] = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>";
/// Longest XML declaration looked for at the start of a body.
const MAX_XML_DECL: usize = 128;

/// One client request, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `rid`.
    pub rid: u64,
    /// `sid`; `None` on a session-creation request.
    pub sid: Option<String>,
    /// `type='terminate'` (XEP-0124 §12).
    pub terminate: bool,
    /// `xmpp:restart='true'` (XEP-0206 §5).
    pub restart: bool,
    /// `to`.
    pub to: Option<String>,
    /// `xml:lang`.
    pub lang: Option<String>,
    /// `ver` as (major, minor).
    pub ver: Option<(u32, u32)>,
    /// `wait` in seconds.
    pub wait: Option<u64>,
    /// `hold`.
    pub hold: Option<u64>,
    /// `xmpp:version`.
    pub xmpp_version: Option<String>,
    /// The payloads, in order, in `jabber:client` (or their own declared namespace).
    pub payloads: Vec<Element>,
}

/// Why a request body was refused; each is answered with a terminal binding condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not acceptable restricted XML (or over the caps).
    #[error("{0}")]
    Xml(XmlError),
    /// The document is not one `<body/>` in the httpbind namespace.
    #[error("the request must be one <body xmlns='http://jabber.org/protocol/httpbind'/> (XEP-0124 §4)")]
    NotBody,
    /// A required or malformed attribute.
    #[error("{0}")]
    Attribute(&'static str),
    /// Text directly inside `<body/>`.
    #[error("text directly inside <body/> (XEP-0124 §4: it wraps elements only)")]
    Text,
}

impl BodyError {
    /// The XEP-0124 §17.2 terminal condition: `policy-violation` for a body over the caps,
    /// `bad-request` otherwise.
    pub fn condition(&self) -> &'static str {
        match self {
            BodyError::Xml(
                XmlError::TooLarge { .. } | XmlError::TooDeep { .. } | XmlError::TooManyAttributes { .. },
            ) => "policy-violation",
            _ => "bad-request",
        }
    }
}

/// Parse one request body under `limits` (its `stanza_bytes` caps the whole body; `depth`
/// counts `<body/>` as a level).
pub fn parse_body(bytes: &[u8], limits: XmlLimits) -> Result<Request, BodyError> {
    let (decl, rest) = split_decl(bytes)?;
    let mut reader = StreamReader::new(limits);
    reader.feed(decl);
    reader.feed(WRAPPER);
    reader.feed(rest);
    let mut found: Option<Element> = None;
    // Each event consumes input; the input is finite, so this ends.
    loop {
        match reader.next_event() {
            Ok(Some(XmlEvent::StreamOpen { .. } | XmlEvent::Whitespace)) => {}
            Ok(Some(XmlEvent::Stanza(el))) => {
                if found.is_some() {
                    return Err(BodyError::NotBody);
                }
                found = Some(el);
            }
            Ok(Some(XmlEvent::StreamClose)) | Err(XmlError::NestedStreamHeader) => return Err(BodyError::NotBody),
            Ok(Some(XmlEvent::Skipped { reason, .. })) => return Err(BodyError::Xml(reason)),
            Ok(None) => break,
            Err(e) => return Err(BodyError::Xml(e)),
        }
    }
    if !reader.is_idle() {
        return Err(BodyError::Xml(XmlError::NotWellFormed("the body ends inside an element")));
    }
    let body = found.ok_or(BodyError::NotBody)?;
    if !body.is(NS_HTTPBIND, "body") {
        return Err(BodyError::NotBody);
    }
    request(body)
}

/// An XML declaration is allowed before `<body/>`; it goes before the wrapper, where the reader
/// checks it like any stream's.
fn split_decl(bytes: &[u8]) -> Result<(&[u8], &[u8]), BodyError> {
    if !bytes.starts_with(b"<?xml") {
        return Ok((&[], bytes));
    }
    let head = &bytes[..MAX_XML_DECL.min(bytes.len())];
    match head.windows(2).position(|w| w == b"?>") {
        Some(end) => Ok(bytes.split_at(end + 2)),
        None => Err(BodyError::Xml(XmlError::NotWellFormed("unterminated XML declaration"))),
    }
}

fn request(body: Element) -> Result<Request, BodyError> {
    let rid = match body.attr("rid") {
        Some(r) if !r.is_empty() && r.len() <= 16 && r.bytes().all(|b| b.is_ascii_digit()) => {
            r.parse::<u64>().ok().filter(|&n| n <= MAX_RID).ok_or(BodyError::Attribute("'rid' exceeds 2^53-1"))?
        }
        Some(_) => return Err(BodyError::Attribute("'rid' must be a decimal integer (XEP-0124 §7.1)")),
        None => return Err(BodyError::Attribute("every request needs a 'rid' (XEP-0124 §7.1)")),
    };
    let sid = match body.attr("sid") {
        Some(s) if !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric()) => Some(s.to_owned()),
        Some(_) => return Err(BodyError::Attribute("malformed 'sid'")),
        None => None,
    };
    let terminate = match body.attr("type") {
        None => false,
        Some("terminate") => true,
        Some(_) => return Err(BodyError::Attribute("a client's body 'type' can only be 'terminate' (XEP-0124 §12)")),
    };
    let xbosh = |name: &str| {
        body.attrs.iter().find(|a| a.ns.as_deref() == Some(NS_XBOSH) && a.name == name).map(|a| a.value.clone())
    };
    let restart = match xbosh("restart").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(BodyError::Attribute("'xmpp:restart' must be 'true' or 'false'")),
    };
    let number = |name: &'static str, what: &'static str| -> Result<Option<u64>, BodyError> {
        match body.attr(name) {
            None => Ok(None),
            Some(v) if !v.is_empty() && v.len() <= 9 && v.bytes().all(|b| b.is_ascii_digit()) => Ok(v.parse().ok()),
            Some(_) => Err(BodyError::Attribute(what)),
        }
    };
    let wait = number("wait", "'wait' must be a number of seconds")?;
    let hold = number("hold", "'hold' must be a number")?;
    let ver = match body.attr("ver") {
        None => None,
        Some(v) => {
            let parsed = v.split_once('.').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
            Some(parsed.ok_or(BodyError::Attribute("'ver' must be MAJOR.MINOR"))?)
        }
    };
    let to = body.attr("to").map(str::to_owned);
    let lang = body.lang().map(str::to_owned);
    let xmpp_version = xbosh("version");
    let mut payloads = Vec::new();
    for node in body.children {
        match node {
            Node::Element(mut el) => {
                client_namespace(&mut el);
                payloads.push(el);
            }
            Node::Text(t) if t.trim_matches([' ', '\t', '\r', '\n']).is_empty() => {}
            Node::Text(_) => return Err(BodyError::Text),
        }
    }
    Ok(Request { rid, sid, terminate, restart, to, lang, ver, wait, hold, xmpp_version, payloads })
}

/// A payload that did not declare its own namespace inherited `<body/>`'s; XEP-0206 §6 says
/// stanzas are qualified by `jabber:client` there, and clients leave it implicit, so such
/// elements (and their descendants that inherited it) are read as `jabber:client` — what
/// Prosody and ejabberd do. Anything else keeps its namespace and meets the c2s checks.
fn client_namespace(el: &mut Element) {
    if &*el.ns != NS_HTTPBIND {
        return;
    }
    el.ns = NS_CLIENT.into();
    for child in &mut el.children {
        if let Node::Element(c) = child {
            client_namespace(c);
        }
    }
}

/// A response `<body/>` under construction.
#[derive(Debug, Default)]
pub struct ResponseBody {
    attrs: Vec<u8>,
    children: Vec<u8>,
}

impl ResponseBody {
    /// An empty response.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add an attribute (the name is ours; the value is escaped).
    pub fn attr(&mut self, name: &str, value: &str) -> &mut Self {
        self.attrs.push(b' ');
        self.attrs.extend_from_slice(name.as_bytes());
        self.attrs.extend_from_slice(b"='");
        escape_attr_str(value, &mut self.attrs);
        self.attrs.push(b'\'');
        self
    }

    /// Add a child: an element already serialized as a standalone document.
    pub fn child(&mut self, standalone: &[u8]) -> &mut Self {
        self.children.extend_from_slice(standalone);
        self
    }

    /// Add a child element.
    pub fn element(&mut self, el: &Element) -> &mut Self {
        self.children.extend_from_slice(&standalone(el));
        self
    }

    /// Bytes so far in children (to bound a response).
    pub fn children_len(&self) -> usize {
        self.children.len()
    }

    /// The document. The `xmpp` and `stream` prefixes are declared once on `<body/>` (XEP-0206
    /// §3, §7): the children declare `stream` again where they use it, which is harmless.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(120 + self.attrs.len() + self.children.len());
        out.extend_from_slice(b"<body xmlns='");
        out.extend_from_slice(NS_HTTPBIND.as_bytes());
        out.extend_from_slice(b"' xmlns:xmpp='urn:xmpp:xbosh' xmlns:stream='http://etherx.jabber.org/streams'");
        out.extend_from_slice(&self.attrs);
        if self.children.is_empty() {
            out.extend_from_slice(b"/>");
        } else {
            out.push(b'>');
            out.extend_from_slice(&self.children);
            out.extend_from_slice(b"</body>");
        }
        out
    }
}

/// `<body type='terminate' condition='…'/>` (XEP-0124 §17.2) with no session to speak of: the
/// answer to a request for an unknown `sid` or a body that could not be read.
pub fn terminate(condition: &str) -> Vec<u8> {
    ResponseBody::new().attr("type", "terminate").attr("condition", condition).finish()
}
