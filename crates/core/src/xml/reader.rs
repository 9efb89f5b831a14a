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

mod tag;
mod text;

use memchr::memchr;

use super::element::{Element, Node, Ns};
use super::skip::Skip;
use super::{XmlError, XmlEvent, XmlLimits};
use text::{decode_text, safe_text_end};

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
    /// The prefix of the start tag's name (its local name is `el.name`); kept to match the end
    /// tag, which must repeat the qualified name exactly. Unprefixed names, nearly all in XMPP,
    /// cost no allocation.
    prefix: Option<String>,
    decls: Decls,
}

impl Open {
    /// Is `name` the qualified name this element was opened with?
    fn is_named(&self, name: &str) -> bool {
        match &self.prefix {
            None => name == self.el.name,
            Some(p) => {
                name.len() == p.len() + 1 + self.el.name.len()
                    && name.starts_with(p.as_str())
                    && name.as_bytes()[p.len()] == b':'
                    && name.ends_with(self.el.name.as_str())
            }
        }
    }
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
            // should not each keep their largest stanza's worth of buffer (invariant 6, bounded
            // memory per connection, docs/DESIGN.md).
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
        // Borrowed from the buffer while it is appended to the open element (disjoint fields):
        // plain text is copied once, into the tree.
        let text = decode_text(&rest[..end])?;
        self.stanza_consumed += end;
        if self.stanza_consumed > self.limits.stanza_bytes {
            return Err(XmlError::TooLarge { limit: self.limits.stanza_bytes });
        }
        push_text(&mut self.stack, text);
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
}

/// Append text to the innermost open element, merged with a text node before it.
fn push_text(stack: &mut [Open], text: std::borrow::Cow<'_, str>) {
    if text.is_empty() {
        return;
    }
    let Some(open) = stack.last_mut() else {
        return;
    };
    if let Some(Node::Text(t)) = open.el.children.last_mut() {
        t.push_str(&text);
    } else {
        open.el.children.push(Node::Text(text.into_owned()));
    }
}
