//! The streaming restricted-XML reader: bytes in, stream events out.
//!
//! It owns one direction of one XMPP stream. Bytes are appended with [`StreamReader::feed`];
//! [`StreamReader::next_event`] returns `Ok(None)` when it needs more bytes and `Err` when the
//! input is invalid — never both, and never a panic. Every limit is checked against the bytes
//! *buffered so far*, so an oversized stanza is refused at the cap, not parsed to its end.
//!
//! Incremental work is linear: an incomplete start or end tag remembers how far it was scanned
//! (and the quote state), and character data inside a stanza is consumed as soon as it is
//! complete up to a character boundary, so a peer trickling one byte at a time costs O(n).

use std::sync::Arc;

use memchr::{memchr, memchr3};

use super::chars::{all_xml_chars, is_ncname};
use super::element::{Attr, Element, Node, Ns};
use super::skip::Skip;
use super::{XmlError, XmlEvent, XmlLimits, NS_STREAMS, NS_XML, NS_XMLNS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the stream header; `at_start` while nothing but a BOM has been seen.
    Prolog { at_start: bool },
    /// Inside the stream element.
    Stream,
    /// After `</stream:stream>`.
    Closed,
}

/// Namespace declarations made on one element (`None` key = default namespace).
type Decls = Vec<(Option<String>, Ns)>;

#[derive(Debug)]
struct Open {
    el: Element,
    qname: String,
    decls: Decls,
}

/// Outcome of one attempt to consume a token.
enum Step {
    Event(XmlEvent),
    Continue,
    Incomplete,
}

/// Restricted-XML reader for one direction of one XMPP stream (RFC 6120 §11).
#[derive(Debug)]
pub struct StreamReader {
    buf: Vec<u8>,
    pos: usize,
    /// Absolute offset up to which the current incomplete tag has been scanned.
    scan: usize,
    /// Quote byte open at `scan` while scanning a start tag (0 = none).
    scan_quote: u8,
    /// Attribute values seen so far in the start tag being scanned.
    scan_attrs: usize,
    state: State,
    limits: XmlLimits,
    /// Declarations on the stream header, and its raw qualified name.
    root_decls: Decls,
    root_qname: String,
    stack: Vec<Open>,
    /// Bytes of the current stanza already consumed (tags and text).
    stanza_consumed: usize,
    /// Recently declared namespace names, shared between elements.
    ns_cache: Vec<Ns>,
    /// A UTF-8 byte order mark was consumed in this prolog (at most one is allowed).
    bom_seen: bool,
    /// See [`StreamReader::skip_over_limits`].
    skip_over_limits: bool,
    /// The stanza being skipped.
    skip: Option<Skip>,
}

/// Namespace names kept for sharing.
const NS_CACHE: usize = 16;
/// Longest XML declaration accepted (`<?xml version='1.0' encoding='UTF-8' standalone='yes'?>`
/// is 56 bytes); bounds its rescans while it trickles in.
const MAX_XML_DECL: usize = 128;
/// What one element and one attribute cost in the tree beyond their bytes, charged against the
/// stanza cap so that `<a/><a/>…` cannot turn a 256 KiB stanza into megabytes of tree.
const ELEMENT_OVERHEAD: usize = 96;
const ATTRIBUTE_OVERHEAD: usize = 48;
/// An empty buffer larger than this is released when the next bytes are few.
const SHRINK_ABOVE: usize = 4096;

impl StreamReader {
    /// A reader expecting a stream header (optionally preceded by an XML declaration).
    pub fn new(limits: XmlLimits) -> Self {
        StreamReader {
            buf: Vec::new(),
            pos: 0,
            scan: 0,
            scan_quote: 0,
            scan_attrs: 0,
            state: State::Prolog { at_start: true },
            limits,
            root_decls: Vec::new(),
            root_qname: String::new(),
            stack: Vec::new(),
            stanza_consumed: 0,
            ns_cache: Vec::new(),
            bom_seen: false,
            skip_over_limits: false,
            skip: None,
        }
    }

    /// Change limits (e.g. once the stream is authenticated). Applies to the next check.
    pub fn set_limits(&mut self, limits: XmlLimits) {
        self.limits = limits;
    }

    /// Append received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.scan = 0;
            self.pos = 0;
            // Give back what a large stanza grew once small traffic resumes: idle sessions
            // should not each keep their largest stanza's worth of buffer (invariant 6).
            if self.buf.capacity() > SHRINK_ABOVE && data.len() < SHRINK_ABOVE / 4 {
                self.buf = Vec::new();
            }
        }
        self.buf.extend_from_slice(data);
    }

    /// Stream restart (RFC 6120 §4.3.3): expect a new header; bytes already buffered are kept.
    pub fn restart(&mut self) {
        self.state = State::Prolog { at_start: true };
        self.root_decls.clear();
        self.root_qname.clear();
        self.stack.clear();
        self.stanza_consumed = 0;
        self.scan = self.pos;
        self.scan_quote = 0;
        self.scan_attrs = 0;
        self.bom_seen = false;
        self.skip = None;
    }

    /// Remove and return the bytes received but not yet parsed (after `<starttls/>` they belong
    /// to TLS, never to this parser).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.pos);
        self.buf.clear();
        self.pos = 0;
        self.scan = 0;
        rest
    }

    /// Bytes buffered but not yet turned into events.
    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// True when every byte fed has been turned into events: nothing buffered, no stanza open.
    pub fn is_idle(&self) -> bool {
        self.pos == self.buf.len() && self.stack.is_empty()
    }

    /// Next event, `Ok(None)` if more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<XmlEvent>, XmlError> {
        match self.next_inner() {
            Err(e) if self.skip_over_limits && self.can_skip(&e) => {
                self.start_skip(e);
                self.next_inner()
            }
            other => other,
        }
    }

    /// Skip, rather than fail on, a stanza that cannot be accepted — over a size, depth or
    /// attribute limit, or not namespace-well-formed inside (an illegal declaration, an
    /// undeclared prefix, a duplicate attribute, an invalid character, a mismatched end tag):
    /// the rest of that stanza is scanned without building a tree and reported as
    /// [`XmlEvent::Skipped`]. For the backend leg, which relays what anyone sent: a server
    /// re-serializes remote input in ways this reader refuses (Prosody writes an unknown `xml:foo`
    /// attribute as `xmlns:ns1='…/XML/1998/namespace' ns1:foo`, a binding XML Namespaces §3
    /// forbids), and one such stanza must not end the recipient's session. Only corruption of
    /// the stream's framing stays fatal (see `can_skip`).
    pub fn skip_over_limits(&mut self, on: bool) {
        self.skip_over_limits = on;
    }

    /// Can the stanza in which `e` occurred be stepped over? Inside a stanza, or at a stanza's
    /// own start tag, the byte-level scanner finds the stanza's end whatever was wrong with its
    /// names, namespaces, characters or size. Not so for restricted markup (comments, PIs and
    /// DTDs change how the rest is read), for a stream header inside the stream, for an end tag
    /// that does not match (then nobody knows where the stanza ends), or for anything wrong
    /// between stanzas (text, a stray end tag): that is the framing of the stream itself.
    fn can_skip(&self, e: &XmlError) -> bool {
        if self.state != State::Stream
            || matches!(e, XmlError::Restricted(_) | XmlError::NestedStreamHeader | XmlError::UnsupportedEncoding)
        {
            return false;
        }
        let rest = &self.buf[self.pos..];
        let end_tag = rest.starts_with(b"</");
        if end_tag && matches!(e, XmlError::NotWellFormed(_) | XmlError::InvalidUtf8) {
            return false;
        }
        !self.stack.is_empty() || (rest.first() == Some(&b'<') && !end_tag && !matches!(rest.get(1), Some(b'!' | b'?')))
    }

    fn next_inner(&mut self) -> Result<Option<XmlEvent>, XmlError> {
        loop {
            if self.pos >= self.buf.len() {
                return Ok(None);
            }
            if let Some(mut skip) = self.skip.take() {
                let (consumed, done) = skip.scan(&self.buf[self.pos..])?;
                let to = self.pos + consumed;
                self.consume_to(to);
                if !done {
                    self.skip = Some(skip);
                    return Ok(None);
                }
                self.stanza_consumed = 0;
                return Ok(Some(XmlEvent::Skipped { reason: skip.reason, root: skip.root }));
            }
            let step = match self.state {
                State::Closed => {
                    // Nothing may follow the stream's end tag; discard it.
                    self.pos = self.buf.len();
                    return Ok(None);
                }
                _ if self.buf[self.pos] == b'<' => self.markup()?,
                _ => self.char_data()?,
            };
            match step {
                Step::Event(ev) => return Ok(Some(ev)),
                Step::Continue => {}
                Step::Incomplete => {
                    self.check_pending()?;
                    return Ok(None);
                }
            }
        }
    }

    /// Enter skip mode at the token that broke a limit (it has not been consumed).
    fn start_skip(&mut self, reason: XmlError) {
        let depth = self.stack.len();
        let root = (!self.stack.is_empty()).then(|| {
            let mut root = self.stack.swap_remove(0).el;
            root.children.clear();
            root
        });
        self.stack.clear();
        self.skip = Some(Skip::new(depth, reason, root));
    }

    /// Refuse as soon as the buffered part of the current token exceeds what may be buffered.
    fn check_pending(&self) -> Result<(), XmlError> {
        let pending = self.buf.len() - self.pos;
        match self.state {
            State::Prolog { .. } if pending > self.limits.stanza_bytes => {
                Err(XmlError::TooLarge { limit: self.limits.stanza_bytes })
            }
            State::Stream if self.stanza_consumed + pending > self.limits.stanza_bytes => {
                Err(XmlError::TooLarge { limit: self.limits.stanza_bytes })
            }
            _ => Ok(()),
        }
    }

    fn markup(&mut self) -> Result<Step, XmlError> {
        let rest = &self.buf[self.pos..];
        if rest.len() < 2 {
            return Ok(Step::Incomplete);
        }
        match rest[1] {
            b'/' => self.end_tag(),
            b'!' => self.bang(),
            b'?' => self.question(),
            _ => self.start_tag(),
        }
    }

    /// `<!…`: only CDATA inside a stanza is allowed; comments and DTDs are restricted XML.
    fn bang(&mut self) -> Result<Step, XmlError> {
        const CDATA: &[u8] = b"<![CDATA[";
        let rest = &self.buf[self.pos..];
        let in_stanza = !self.stack.is_empty();
        if in_stanza && CDATA.starts_with(&rest[..rest.len().min(CDATA.len())]) {
            if rest.len() < CDATA.len() {
                return Ok(Step::Incomplete);
            }
            let from = self.scan.max(self.pos + CDATA.len());
            let Some(end) = memchr::memmem::find(&self.buf[from..], b"]]>").map(|i| i + from) else {
                self.scan = self.buf.len().saturating_sub(2).max(self.pos + CDATA.len());
                return Ok(Step::Incomplete);
            };
            let raw = &self.buf[self.pos + CDATA.len()..end];
            let text = std::str::from_utf8(raw).map_err(|_| XmlError::InvalidUtf8)?;
            if !all_xml_chars(text) {
                return Err(XmlError::InvalidChar);
            }
            let text = normalize_newlines(text).into_owned();
            self.add_stanza_bytes(end + 3 - self.pos)?;
            self.push_text(&text);
            self.consume_to(end + 3);
            return Ok(Step::Continue);
        }
        if rest.starts_with(b"<!--") || (rest.len() < 4 && b"<!--".starts_with(rest)) {
            if rest.len() < 4 {
                return Ok(Step::Incomplete);
            }
            return Err(XmlError::Restricted("comments are not allowed"));
        }
        Err(XmlError::Restricted("DTDs and marked sections are not allowed"))
    }

    /// `<?…`: only the XML declaration, and only at the very start of a stream.
    fn question(&mut self) -> Result<Step, XmlError> {
        let at_start = matches!(self.state, State::Prolog { at_start: true });
        if !at_start {
            return Err(XmlError::Restricted("processing instructions are not allowed"));
        }
        let rest = &self.buf[self.pos..];
        if rest.len() < 6 {
            return if b"<?xml ".starts_with(rest) {
                Ok(Step::Incomplete)
            } else {
                Err(XmlError::Restricted("processing instructions are not allowed"))
            };
        }
        if !(rest.starts_with(b"<?xml") && matches!(rest[5], b' ' | b'\t' | b'\r' | b'\n')) {
            return Err(XmlError::Restricted("processing instructions are not allowed"));
        }
        let Some(end) = memchr::memmem::find(&rest[..rest.len().min(MAX_XML_DECL)], b"?>") else {
            return if rest.len() >= MAX_XML_DECL {
                Err(XmlError::NotWellFormed("XML declaration too long"))
            } else {
                Ok(Step::Incomplete)
            };
        };
        let decl = std::str::from_utf8(&rest[5..end]).map_err(|_| XmlError::InvalidUtf8)?;
        check_xml_decl(decl)?;
        let to = self.pos + end + 2;
        self.consume_to(to);
        self.state = State::Prolog { at_start: false };
        Ok(Step::Continue)
    }

    fn start_tag(&mut self) -> Result<Step, XmlError> {
        let Some(end) = self.scan_tag_end()? else {
            return Ok(Step::Incomplete);
        };
        let raw = &self.buf[self.pos + 1..end];
        let (raw, self_closing) = match raw.last() {
            Some(b'/') => (&raw[..raw.len() - 1], true),
            _ => (raw, false),
        };
        let tag = std::str::from_utf8(raw).map_err(|_| XmlError::InvalidUtf8)?;
        let parsed = parse_tag(tag, self.limits.attributes)?;
        let tag_len = end + 1 - self.pos;
        match self.state {
            State::Prolog { .. } => {
                // Checked here too so a header that arrives whole meets the same cap as one
                // that trickles in (where `check_pending` catches it).
                if tag_len > self.limits.stanza_bytes {
                    return Err(XmlError::TooLarge { limit: self.limits.stanza_bytes });
                }
                if self_closing {
                    return Err(XmlError::BadFormat("the stream header must not be self-closing"));
                }
                let decls = decls(&mut self.ns_cache, &parsed)?;
                let default_ns = lookup_default(std::iter::once(&decls));
                let el = self.resolve(parsed.qname, parsed.attrs, &decls)?;
                self.root_qname = parsed.qname.to_owned();
                self.root_decls = decls;
                self.consume_to(end + 1);
                self.state = State::Stream;
                Ok(Step::Event(XmlEvent::StreamOpen { header: el, default_ns }))
            }
            State::Stream => {
                if self.stack.len() >= self.limits.depth {
                    return Err(XmlError::TooDeep { limit: self.limits.depth });
                }
                let decls = decls(&mut self.ns_cache, &parsed)?;
                let el = self.resolve(parsed.qname, parsed.attrs, &decls)?;
                if self.stack.is_empty() && el.is(NS_STREAMS, "stream") {
                    return Err(XmlError::NestedStreamHeader);
                }
                if !self.stack.is_empty() && &*el.ns == NS_STREAMS {
                    // Stream elements never occur inside stanzas; lenient parsers behind us have
                    // keyed on these names (smuggling), so they do not cross.
                    return Err(XmlError::NestedStreamElement);
                }
                let qname = parsed.qname.to_owned();
                self.add_stanza_bytes(tag_len + ELEMENT_OVERHEAD + ATTRIBUTE_OVERHEAD * el.attrs.len())?;
                self.consume_to(end + 1);
                if self_closing {
                    Ok(self.close_element(Open { el, qname, decls }))
                } else {
                    self.stack.push(Open { el, qname, decls });
                    Ok(Step::Continue)
                }
            }
            State::Closed => Ok(Step::Continue),
        }
    }

    fn end_tag(&mut self) -> Result<Step, XmlError> {
        let from = self.scan.max(self.pos + 2);
        let Some(end) = memchr(b'>', &self.buf[from..]).map(|i| i + from) else {
            self.scan = self.buf.len();
            return Ok(Step::Incomplete);
        };
        let raw = &self.buf[self.pos + 2..end];
        let name = std::str::from_utf8(raw).map_err(|_| XmlError::InvalidUtf8)?;
        let name = name.trim_end_matches([' ', '\t', '\r', '\n']);
        let tag_len = end + 1 - self.pos;
        match self.stack.last() {
            Some(open) => {
                if open.qname != name {
                    return Err(XmlError::NotWellFormed("end tag does not match start tag"));
                }
                // Checked before the pop, so that skip mode sees the element still open.
                self.add_stanza_bytes(tag_len)?;
                self.consume_to(end + 1);
                match self.stack.pop() {
                    Some(open) => Ok(self.close_element(open)),
                    None => Err(XmlError::NotWellFormed("end tag without start tag")),
                }
            }
            None if self.state == State::Stream && name == self.root_qname => {
                self.consume_to(end + 1);
                self.state = State::Closed;
                Ok(Step::Event(XmlEvent::StreamClose))
            }
            None => Err(XmlError::NotWellFormed("end tag without start tag")),
        }
    }

    fn close_element(&mut self, open: Open) -> Step {
        match self.stack.last_mut() {
            Some(parent) => {
                parent.el.children.push(Node::Element(open.el));
                Step::Continue
            }
            None => {
                self.stanza_consumed = 0;
                // Released after every stanza: each open element is ~300 bytes, and an idle
                // session should not keep a stack sized for the last stanza it saw (measured:
                // 2.5 KB of a 17 KB idle session) for the price of one allocation per stanza.
                self.stack = Vec::new();
                Step::Event(XmlEvent::Stanza(open.el))
            }
        }
    }

    /// Character data: whitespace between stanzas, text inside one.
    fn char_data(&mut self) -> Result<Step, XmlError> {
        let rest = &self.buf[self.pos..];
        if self.stack.is_empty() {
            // Stream level and prolog: only whitespace (and a BOM at the very start).
            if self.state == (State::Prolog { at_start: true }) && !self.bom_seen {
                if rest.len() < 3 && [0xEF, 0xBB, 0xBF].starts_with(rest) {
                    return Ok(Step::Incomplete);
                }
                if rest.starts_with(&[0xEF, 0xBB, 0xBF]) {
                    self.bom_seen = true;
                    self.consume_to(self.pos + 3);
                    return Ok(Step::Continue);
                }
            }
            let n = rest.iter().take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')).count();
            if n == 0 {
                return Err(if self.state == State::Stream {
                    XmlError::BadFormat("character data at stream level")
                } else if rest[0] >= 0x80 {
                    XmlError::InvalidUtf8
                } else {
                    XmlError::NotWellFormed("expected a stream header")
                });
            }
            self.consume_to(self.pos + n);
            if let State::Prolog { .. } = self.state {
                self.state = State::Prolog { at_start: false };
                return Ok(Step::Continue);
            }
            // Whitespace keepalives (RFC 6120 §4.6.1) are reported, once per run, so the other
            // leg sees them: servers detect dead clients with them.
            return Ok(Step::Event(XmlEvent::Whitespace));
        }
        let (end, complete) = match memchr(b'<', rest) {
            Some(i) => (i, true),
            None => (safe_text_end(rest)?, false),
        };
        if end == 0 {
            return Ok(Step::Incomplete);
        }
        let text = decode_text(&rest[..end])?;
        self.add_stanza_bytes(end)?;
        self.push_text(&text);
        self.consume_to(self.pos + end);
        Ok(if complete { Step::Continue } else { Step::Incomplete })
    }

    /// Count consumed bytes against the stanza cap; a stanza that arrives whole in one read is
    /// held to the same limit as one that trickles in.
    fn add_stanza_bytes(&mut self, n: usize) -> Result<(), XmlError> {
        self.stanza_consumed += n;
        if self.stanza_consumed > self.limits.stanza_bytes {
            return Err(XmlError::TooLarge { limit: self.limits.stanza_bytes });
        }
        Ok(())
    }

    fn push_text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        let Some(open) = self.stack.last_mut() else {
            return;
        };
        if let Some(Node::Text(t)) = open.el.children.last_mut() {
            t.push_str(text);
        } else {
            open.el.children.push(Node::Text(text.to_owned()));
        }
    }

    fn consume_to(&mut self, to: usize) {
        self.pos = to;
        self.scan = to;
        self.scan_quote = 0;
        self.scan_attrs = 0;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            self.scan = 0;
        } else if self.pos > 8192 && self.pos * 2 > self.buf.len() {
            // Compact only when the consumed part dominates, so the cost stays amortized O(1).
            self.buf.drain(..self.pos);
            self.scan -= self.pos;
            self.pos = 0;
        }
    }

    /// Find the `>` closing the start tag at `pos`, skipping quoted attribute values; resumable.
    /// Counts attribute values as they pass, so a tag with too many attributes is refused at
    /// the cap, before its end arrives.
    fn scan_tag_end(&mut self) -> Result<Option<usize>, XmlError> {
        let mut i = self.scan.max(self.pos + 1);
        let mut quote = self.scan_quote;
        while i < self.buf.len() {
            if quote != 0 {
                match memchr(quote, &self.buf[i..]) {
                    Some(j) => {
                        i += j + 1;
                        quote = 0;
                        self.scan_attrs += 1;
                        if self.scan_attrs > self.limits.attributes {
                            return Err(XmlError::TooManyAttributes { limit: self.limits.attributes });
                        }
                    }
                    None => {
                        i = self.buf.len();
                        break;
                    }
                }
            } else {
                match memchr3(b'>', b'\'', b'"', &self.buf[i..]) {
                    Some(j) if self.buf[i + j] == b'>' => return Ok(Some(i + j)),
                    Some(j) => {
                        quote = self.buf[i + j];
                        i += j + 1;
                    }
                    None => {
                        i = self.buf.len();
                        break;
                    }
                }
            }
        }
        self.scan = i;
        self.scan_quote = quote;
        Ok(None)
    }

    /// Resolve prefixes of an element and its attributes against the open scopes.
    fn resolve(&self, qname: &str, raw_attrs: Vec<(&str, String)>, decls: &Decls) -> Result<Element, XmlError> {
        let scopes = || {
            std::iter::once(decls)
                .chain(self.stack.iter().rev().map(|o| &o.decls))
                .chain(std::iter::once(&self.root_decls))
        };
        let (prefix, local) = split_qname(qname);
        let ns = match prefix {
            None => lookup_default(scopes()).unwrap_or_else(|| Arc::from("")),
            Some(p) => lookup_prefix(scopes(), p)?,
        };
        if &*ns == NS_XML {
            // Well-formed, but no canonical form exists: the XML namespace can only be written
            // with the `xml` prefix, never as a default namespace. Nothing in XMPP uses it.
            return Err(XmlError::ReservedNamespace);
        }
        let mut attrs: Vec<Attr> = Vec::with_capacity(raw_attrs.len());
        for (name, value) in raw_attrs {
            if name == "xmlns" || name.starts_with("xmlns:") {
                continue;
            }
            let (prefix, local) = split_qname(name);
            let ans = match prefix {
                None => None,
                Some(p) => Some(lookup_prefix(scopes(), p)?),
            };
            if attrs.iter().any(|a| a.ns == ans && a.name == local) {
                return Err(XmlError::NotWellFormed("duplicate attribute"));
            }
            attrs.push(Attr { ns: ans, name: local.to_owned(), value });
        }
        Ok(Element { ns, name: local.to_owned(), attrs, children: Vec::new() })
    }
}

/// The namespace declarations among a tag's attributes (XML Namespaces §3), with namespace
/// names shared through a small cache: stanzas repeat the same few namespaces.
fn decls(cache: &mut Vec<Ns>, tag: &ParsedTag<'_>) -> Result<Decls, XmlError> {
    let mut decls = Decls::new();
    for (name, value) in &tag.attrs {
        let prefix = if *name == "xmlns" {
            if value == NS_XML || value == NS_XMLNS {
                return Err(XmlError::ReservedNamespace);
            }
            None
        } else if let Some(p) = name.strip_prefix("xmlns:") {
            let reserved = p == "xml" || value == NS_XML;
            if p == "xmlns" || value.is_empty() || value == NS_XMLNS || (reserved && !(p == "xml" && value == NS_XML)) {
                return Err(XmlError::NotWellFormed("illegal namespace declaration"));
            }
            Some(p.to_owned())
        } else {
            continue;
        };
        decls.push((prefix, intern(cache, value)));
    }
    Ok(decls)
}

fn intern(cache: &mut Vec<Ns>, ns: &str) -> Ns {
    if let Some(found) = cache.iter().find(|n| &***n == ns) {
        return found.clone();
    }
    let fresh: Ns = Arc::from(ns);
    if cache.len() >= NS_CACHE {
        cache.remove(0);
    }
    cache.push(fresh.clone());
    fresh
}

fn split_qname(q: &str) -> (Option<&str>, &str) {
    match q.split_once(':') {
        Some((p, l)) => (Some(p), l),
        None => (None, q),
    }
}

fn lookup_default<'a>(mut scopes: impl Iterator<Item = &'a Decls>) -> Option<Ns> {
    scopes.find_map(|s| s.iter().find(|(p, _)| p.is_none())).and_then(|(_, ns)| (!ns.is_empty()).then(|| ns.clone()))
}

fn lookup_prefix<'a>(mut scopes: impl Iterator<Item = &'a Decls>, prefix: &str) -> Result<Ns, XmlError> {
    if prefix == "xml" {
        return Ok(Arc::from(NS_XML));
    }
    scopes
        .find_map(|s| s.iter().find(|(p, _)| p.as_deref() == Some(prefix)))
        .map(|(_, ns)| ns.clone())
        .ok_or(XmlError::UndeclaredPrefix)
}

/// A start tag split into its name and raw attributes.
struct ParsedTag<'a> {
    qname: &'a str,
    attrs: Vec<(&'a str, String)>,
}

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn check_qname(q: &str) -> Result<(), XmlError> {
    let ok = match q.split_once(':') {
        Some((p, l)) => is_ncname(p) && is_ncname(l),
        None => is_ncname(q),
    };
    if ok {
        Ok(())
    } else {
        Err(XmlError::NotWellFormed("invalid name"))
    }
}

/// Parse `name (S attr=value)* S?` — the inside of a start tag without `<`, `/` and `>`.
fn parse_tag(tag: &str, max_attrs: usize) -> Result<ParsedTag<'_>, XmlError> {
    let name_end = tag.bytes().position(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')).unwrap_or(tag.len());
    let qname = &tag[..name_end];
    check_qname(qname)?;
    let mut attrs: Vec<(&str, String)> = Vec::new();
    let mut rest = &tag[name_end..];
    loop {
        let trimmed = rest.trim_start_matches(is_ws);
        if trimmed.is_empty() {
            break;
        }
        if trimmed.len() == rest.len() {
            return Err(XmlError::NotWellFormed("attributes must be separated by whitespace"));
        }
        let eq = memchr(b'=', trimmed.as_bytes()).ok_or(XmlError::NotWellFormed("attribute without value"))?;
        let name = trimmed[..eq].trim_end_matches(is_ws);
        check_qname(name)?;
        let after = trimmed[eq + 1..].trim_start_matches(is_ws);
        let quote = after.chars().next().ok_or(XmlError::NotWellFormed("attribute without value"))?;
        if quote != '"' && quote != '\'' {
            return Err(XmlError::NotWellFormed("attribute value must be quoted"));
        }
        let close =
            memchr(quote as u8, &after.as_bytes()[1..]).ok_or(XmlError::NotWellFormed("unterminated attribute"))?;
        let raw_value = &after[1..1 + close];
        if attrs.iter().any(|(n, _)| *n == name) {
            return Err(XmlError::NotWellFormed("duplicate attribute"));
        }
        if attrs.len() >= max_attrs {
            return Err(XmlError::TooManyAttributes { limit: max_attrs });
        }
        attrs.push((name, decode_attr(raw_value)?));
        rest = &after[close + 2..];
    }
    Ok(ParsedTag { qname, attrs })
}

/// XML declaration body after `<?xml`: version 1.x, encoding (if any) UTF-8.
fn check_xml_decl(decl: &str) -> Result<(), XmlError> {
    let tag = format!("xml{decl}");
    let parsed = parse_tag(&tag, 3)?;
    let mut version_seen = false;
    for (name, value) in &parsed.attrs {
        match *name {
            // RFC 6120 §11.5: XML 1.0 only.
            "version" if value == "1.0" => version_seen = true,
            "version" => return Err(XmlError::NotWellFormed("only XML 1.0 is supported")),
            "encoding" if value.eq_ignore_ascii_case("utf-8") => {}
            "encoding" => return Err(XmlError::UnsupportedEncoding),
            "standalone" if value == "yes" || value == "no" => {}
            _ => return Err(XmlError::NotWellFormed("invalid XML declaration")),
        }
    }
    if version_seen {
        Ok(())
    } else {
        Err(XmlError::NotWellFormed("XML declaration without version"))
    }
}

/// How much of an unterminated text run can be decoded now: stop before a partial UTF-8
/// sequence, an unterminated reference, or a trailing CR (which may start a CRLF pair).
fn safe_text_end(rest: &[u8]) -> Result<usize, XmlError> {
    let mut end = rest.len();
    if let Some(amp) = memchr::memrchr(b'&', rest) {
        if memchr(b';', &rest[amp..]).is_none() {
            if rest.len() - amp > 12 {
                return Err(XmlError::Restricted("entity references are not allowed"));
            }
            end = amp;
        }
    }
    // Back off over a partial multi-byte UTF-8 sequence.
    let mut start = end;
    while start > 0 && end - start < 4 && (rest[start - 1] & 0xC0) == 0x80 {
        start -= 1;
    }
    if start > 0 && rest[start - 1] >= 0xC0 {
        let lead = rest[start - 1];
        let need = if lead >= 0xF0 {
            4
        } else if lead >= 0xE0 {
            3
        } else {
            2
        };
        if end - (start - 1) < need {
            end = start - 1;
        }
    }
    // A trailing CR may start a CRLF pair, and `]]>` split across reads must still be seen:
    // hold back one CR, or at most two `]`. Never more: a peer trickling `]` or CR one byte at a
    // time would otherwise make every read rescan all of them (quadratic time).
    if end > 0 && rest[end - 1] == b'\r' {
        end -= 1;
    } else {
        let mut held = 0;
        while held < 2 && end > 0 && rest[end - 1] == b']' {
            end -= 1;
            held += 1;
        }
    }
    Ok(end)
}

fn normalize_newlines(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\r') {
        std::borrow::Cow::Owned(s.replace("\r\n", "\n").replace('\r', "\n"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Decode character data: UTF-8, XML `Char`s, no `]]>`, predefined entities and character
/// references only (RFC 6120 §11.1), CRLF normalized.
fn decode_text(raw: &[u8]) -> Result<String, XmlError> {
    let s = std::str::from_utf8(raw).map_err(|_| XmlError::InvalidUtf8)?;
    if !all_xml_chars(s) {
        return Err(XmlError::InvalidChar);
    }
    if s.contains("]]>") {
        return Err(XmlError::NotWellFormed("']]>' in character data"));
    }
    resolve_refs(s, false)
}

/// Decode an attribute value: like text, plus `<` is forbidden and whitespace is normalized to
/// spaces (XML 1.0 §3.3.3).
fn decode_attr(raw: &str) -> Result<String, XmlError> {
    if !all_xml_chars(raw) {
        return Err(XmlError::InvalidChar);
    }
    if raw.contains('<') {
        return Err(XmlError::NotWellFormed("'<' in attribute value"));
    }
    resolve_refs(raw, true)
}

fn resolve_refs(s: &str, attr: bool) -> Result<String, XmlError> {
    let plain = |b: &u8| !(matches!(b, b'&' | b'\r') || (attr && matches!(b, b'\t' | b'\n')));
    if s.as_bytes().iter().all(plain) {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let (lit, tail) = match memchr(b'&', rest.as_bytes()) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let lit = normalize_newlines(lit);
        if attr {
            out.extend(lit.chars().map(|c| if matches!(c, '\t' | '\n') { ' ' } else { c }));
        } else {
            out.push_str(&lit);
        }
        let Some(tail) = tail else { break };
        let semi = memchr(b';', tail.as_bytes()).ok_or(XmlError::NotWellFormed("unterminated reference"))?;
        let name = &tail[..semi];
        let c = match name {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ if name.starts_with("#x") => char_ref(&name[2..], 16)?,
            _ if name.starts_with('#') => char_ref(&name[1..], 10)?,
            _ => return Err(XmlError::Restricted("entity references are not allowed")),
        };
        out.push(c);
        rest = &tail[semi + 1..];
    }
    Ok(out)
}

fn char_ref(digits: &str, radix: u32) -> Result<char, XmlError> {
    if digits.is_empty() || digits.len() > 8 || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(XmlError::NotWellFormed("invalid character reference"));
    }
    let v = u32::from_str_radix(digits, radix).map_err(|_| XmlError::InvalidChar)?;
    match char::from_u32(v) {
        Some(c) if super::chars::is_xml_char(c) => Ok(c),
        _ => Err(XmlError::InvalidChar),
    }
}
