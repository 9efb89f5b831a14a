//! The bounded element tree a stanza is parsed into, and its one canonical serialization.
//!
//! Canonical form (invariant 1, never forward bytes the parser did not accept, docs/DESIGN.md):
//! UTF-8, no XML declaration, no comments, PIs or CDATA, text escaped (`&lt; &gt; &amp;`),
//! attributes single-quoted and escaped, namespaces written only as default-namespace declarations
//! — except the stream namespace, which keeps the `stream:` prefix that the gateway itself binds in
//! every stream header it writes. Attributes in a namespace other than `xml:` get a prefix declared
//! on the element that uses it.

use std::fmt;
use std::sync::Arc;

use super::chars::{escape_attr, escape_text};
use super::{NS_STREAMS, NS_XML};

/// A namespace name, shared between the elements that use it.
pub type Ns = Arc<str>;

/// One attribute after namespace processing (`xmlns` declarations are not kept as attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Namespace of a prefixed attribute (`xml:lang` → the XML namespace); `None` if unprefixed.
    pub ns: Option<Ns>,
    /// Local name.
    pub name: String,
    /// Value with entity and character references resolved.
    pub value: String,
}

/// A child node: an element or a run of character data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data, references resolved.
    Text(String),
}

/// An XML element with its namespace resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Namespace name (`jabber:client` for a c2s stanza).
    pub ns: Ns,
    /// Local name (`message`, `iq`, `presence`, `features`, …).
    pub name: String,
    /// Attributes in document order.
    pub attrs: Vec<Attr>,
    /// Children in document order; adjacent text is merged by the parser.
    pub children: Vec<Node>,
}

impl Element {
    /// A new empty element.
    pub fn new(ns: impl Into<Ns>, name: impl Into<String>) -> Self {
        Element { ns: ns.into(), name: name.into(), attrs: Vec::new(), children: Vec::new() }
    }

    /// Builder: add an unprefixed attribute.
    #[must_use]
    pub fn with_attr(mut self, name: &str, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder: add a namespaced attribute (e.g. `xml:lang`).
    #[must_use]
    pub fn with_attr_ns(mut self, ns: &str, name: &str, value: impl Into<String>) -> Self {
        self.attrs.push(Attr { ns: Some(Ns::from(ns)), name: name.to_owned(), value: value.into() });
        self
    }

    /// Builder: append a child element.
    #[must_use]
    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder: append text.
    #[must_use]
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.children.push(Node::Text(text.into()));
        self
    }

    /// True if this element has the given namespace and local name.
    pub fn is(&self, ns: &str, name: &str) -> bool {
        &*self.ns == ns && self.name == name
    }

    /// Value of an unprefixed attribute.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|a| a.ns.is_none() && a.name == name).map(|a| a.value.as_str())
    }

    /// Value of `xml:lang`.
    pub fn lang(&self) -> Option<&str> {
        self.attrs.iter().find(|a| a.ns.as_deref() == Some(NS_XML) && a.name == "lang").map(|a| a.value.as_str())
    }

    /// Set (or replace) an unprefixed attribute.
    pub fn set_attr(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.attrs.iter_mut().find(|a| a.ns.is_none() && a.name == name) {
            Some(a) => a.value = value,
            None => self.attrs.push(Attr { ns: None, name: name.to_owned(), value }),
        }
    }

    /// Remove an unprefixed attribute; returns its old value.
    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let i = self.attrs.iter().position(|a| a.ns.is_none() && a.name == name)?;
        Some(self.attrs.remove(i).value)
    }

    /// Child elements in order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// First child element with this namespace and name.
    pub fn child(&self, ns: &str, name: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(ns, name))
    }

    /// Keep only the child nodes for which `keep` returns true (text nodes are always kept).
    pub fn retain_elements(&mut self, mut keep: impl FnMut(&Element) -> bool) {
        self.children.retain(|n| match n {
            Node::Element(e) => keep(e),
            Node::Text(_) => true,
        });
    }

    /// Concatenated direct text children.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                s.push_str(t);
            }
        }
        s
    }

    /// Serialize canonically as a child of the stream, whose default namespace is `stream_ns`.
    ///
    /// The whole stanza is written into `out` in one go: its size is estimated first and
    /// reserved once, so a flush buffer that starts empty (the sessions hand theirs to the daemon
    /// and start a new one) is allocated once per flush, not regrown through every power of two.
    pub fn write_to(&self, out: &mut Vec<u8>, stream_ns: &str) {
        out.reserve(self.size_hint());
        self.write_inner(out, stream_ns);
    }

    /// The canonical size before escaping, plus the namespace declarations of the children:
    /// a close lower bound (escapes and `xmlns:aN` prefixes only add bytes). A walk over the
    /// tree's lengths, far cheaper than the copies it saves.
    fn size_hint(&self) -> usize {
        // `<name` `>` `</name>`, plus ` xmlns=''` for a child in another namespace.
        let mut n = 2 * self.name.len() + 5 + self.ns.len() + 10;
        for a in &self.attrs {
            n += a.name.len() + a.value.len() + 4;
        }
        for child in &self.children {
            n += match child {
                Node::Element(e) => e.size_hint(),
                Node::Text(t) => t.len(),
            };
        }
        n
    }

    /// Canonical serialization as a new buffer (see [`Element::write_to`]).
    pub fn to_bytes(&self, stream_ns: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.write_to(&mut out, stream_ns);
        out
    }

    fn write_inner(&self, out: &mut Vec<u8>, inherited_ns: &str) {
        let in_streams = &*self.ns == NS_STREAMS;
        out.push(b'<');
        if in_streams {
            out.extend_from_slice(b"stream:");
        }
        out.extend_from_slice(self.name.as_bytes());
        // The stream prefix is bound by the stream header, so a `stream:` element leaves the
        // default namespace as inherited.
        let child_ns: &str = if in_streams { inherited_ns } else { &self.ns };
        // The parser shares one `Ns` between an element and the children that inherit it, so
        // comparing addresses first settles nearly every element without a string compare.
        if !in_streams && !same_str(&self.ns, inherited_ns) {
            out.extend_from_slice(b" xmlns='");
            escape_attr(&self.ns, out);
            out.push(b'\'');
        }
        let mut declared: Vec<&str> = Vec::new();
        for a in &self.attrs {
            out.push(b' ');
            match a.ns.as_deref() {
                None => {}
                Some(NS_XML) => out.extend_from_slice(b"xml:"),
                Some(ns) => {
                    let idx = match declared.iter().position(|d| *d == ns) {
                        Some(i) => i,
                        None => {
                            declared.push(ns);
                            let i = declared.len() - 1;
                            out.extend_from_slice(format!("xmlns:a{i}='").as_bytes());
                            escape_attr(ns, out);
                            out.extend_from_slice(b"' ");
                            i
                        }
                    };
                    out.extend_from_slice(format!("a{idx}:").as_bytes());
                }
            }
            out.extend_from_slice(a.name.as_bytes());
            out.extend_from_slice(b"='");
            escape_attr(&a.value, out);
            out.push(b'\'');
        }
        if self.children.is_empty() {
            out.extend_from_slice(b"/>");
            return;
        }
        out.push(b'>');
        for child in &self.children {
            match child {
                Node::Element(e) => e.write_inner(out, child_ns),
                Node::Text(t) => escape_text(t, out),
            }
        }
        out.extend_from_slice(b"</");
        if in_streams {
            out.extend_from_slice(b"stream:");
        }
        out.extend_from_slice(self.name.as_bytes());
        out.push(b'>');
    }
}

/// String equality with an address check first (see `write_inner`).
#[inline]
fn same_str(a: &str, b: &str) -> bool {
    (std::ptr::eq(a.as_ptr(), b.as_ptr()) && a.len() == b.len()) || a == b
}

impl fmt::Display for Element {
    /// Canonical form with the element's own namespace declared (for logs and `explain`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_bytes("");
        f.write_str(&String::from_utf8_lossy(&bytes))
    }
}
