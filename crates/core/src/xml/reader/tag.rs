//! Markup: start and end tags, CDATA sections, the XML declaration, and the namespace scopes
//! they open (XML 1.0 §3.1, XML Namespaces §5).
//!
//! Owns scanning a tag to its end across feeds, parsing its name and attributes, refusing what
//! RFC 6120 §11.1 prohibits (comments, PIs, DTDs), and resolving prefixes against the open
//! elements' declarations. Character data and references are [`super::text`]'s.

use std::borrow::Cow;
use std::sync::Arc;

use memchr::{memchr, memchr3};

use super::text::{decode_attr, normalize_newlines};
use super::{Decls, Open, State, Step, StreamReader, ATTRIBUTE_OVERHEAD, ELEMENT_OVERHEAD, MAX_XML_DECL};
use crate::xml::chars::{all_xml_chars, is_ncname};
use crate::xml::element::{Attr, Element, Node, Ns};
use crate::xml::{XmlError, XmlEvent, NS_STREAMS, NS_XML, NS_XMLNS};

/// Namespace names kept for sharing.
const NS_CACHE: usize = 16;

impl StreamReader {
    /// `<!…`: only CDATA inside a stanza is allowed; comments and DTDs are restricted XML.
    pub(super) fn bang(&mut self) -> Result<Step, XmlError> {
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
            let text = normalize_newlines(text);
            let consumed = end + 3 - self.pos;
            self.stanza_consumed += consumed;
            if self.stanza_consumed > self.limits.stanza_bytes {
                return Err(XmlError::TooLarge { limit: self.limits.stanza_bytes });
            }
            super::push_text(&mut self.stack, text);
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
    pub(super) fn question(&mut self) -> Result<Step, XmlError> {
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

    pub(super) fn start_tag(&mut self) -> Result<Step, XmlError> {
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
                let prefix = split_qname(parsed.qname).0.map(str::to_owned);
                self.add_stanza_bytes(tag_len + ELEMENT_OVERHEAD + ATTRIBUTE_OVERHEAD * el.attrs.len())?;
                self.consume_to(end + 1);
                if self_closing {
                    Ok(self.close_element(Open { el, prefix, decls }))
                } else {
                    self.stack.push(Open { el, prefix, decls });
                    Ok(Step::Continue)
                }
            }
            State::Closed => Ok(Step::Continue),
        }
    }

    pub(super) fn end_tag(&mut self) -> Result<Step, XmlError> {
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
                if !open.is_named(name) {
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
    fn resolve(&self, qname: &str, raw_attrs: Vec<(&str, Cow<'_, str>)>, decls: &Decls) -> Result<Element, XmlError> {
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
            attrs.push(Attr { ns: ans, name: local.to_owned(), value: value.into_owned() });
        }
        Ok(Element { ns, name: local.to_owned(), attrs, children: Vec::new() })
    }
}

/// The namespace declarations among a tag's attributes (XML Namespaces §3), with namespace
/// names shared through a small cache: stanzas repeat the same few namespaces.
pub(super) fn decls(cache: &mut Vec<Ns>, tag: &ParsedTag<'_>) -> Result<Decls, XmlError> {
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

pub(super) fn split_qname(q: &str) -> (Option<&str>, &str) {
    // A byte search (names are short: a plain loop beats a vectorized scan's set-up); `:` is
    // ASCII, so the split is on a char boundary.
    match q.bytes().position(|b| b == b':') {
        Some(i) => (Some(&q[..i]), &q[i + 1..]),
        None => (None, q),
    }
}

pub(super) fn lookup_default<'a>(mut scopes: impl Iterator<Item = &'a Decls>) -> Option<Ns> {
    scopes.find_map(|s| s.iter().find(|(p, _)| p.is_none())).and_then(|(_, ns)| (!ns.is_empty()).then(|| ns.clone()))
}

pub(super) fn lookup_prefix<'a>(mut scopes: impl Iterator<Item = &'a Decls>, prefix: &str) -> Result<Ns, XmlError> {
    if prefix == "xml" {
        return Ok(Arc::from(NS_XML));
    }
    scopes
        .find_map(|s| s.iter().find(|(p, _)| p.as_deref() == Some(prefix)))
        .map(|(_, ns)| ns.clone())
        .ok_or(XmlError::UndeclaredPrefix)
}

/// A start tag split into its name and raw attributes.
pub(super) struct ParsedTag<'a> {
    qname: &'a str,
    /// Values decoded, borrowed from the tag when plain (namespace declarations are then
    /// interned without a copy).
    attrs: Vec<(&'a str, Cow<'a, str>)>,
}

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn check_qname(q: &str) -> Result<(), XmlError> {
    let ok = match split_qname(q) {
        (Some(p), l) => is_ncname(p) && is_ncname(l),
        (None, q) => is_ncname(q),
    };
    if ok {
        Ok(())
    } else {
        Err(XmlError::NotWellFormed("invalid name"))
    }
}

/// Parse `name (S attr=value)* S?` — the inside of a start tag without `<`, `/` and `>`.
pub(super) fn parse_tag(tag: &str, max_attrs: usize) -> Result<ParsedTag<'_>, XmlError> {
    let name_end = tag.bytes().position(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')).unwrap_or(tag.len());
    let qname = &tag[..name_end];
    check_qname(qname)?;
    let mut attrs: Vec<(&str, Cow<'_, str>)> = Vec::new();
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
pub(super) fn check_xml_decl(decl: &str) -> Result<(), XmlError> {
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
