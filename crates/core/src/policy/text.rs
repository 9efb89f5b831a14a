//! "The text" of a stanza: what `body_contains`, `body_regex`, `url_in` and `mask` read.
//!
//! It is *all* character data of the stanza, at any depth and in any namespace, plus the
//! attribute values that clients show or follow as links — never a list of element names, which
//! the next extension (or a body in `jabber:server`, which Prosody delivers from s2s and
//! ejabberd even locally) escapes. What a client displays is somewhere in there: bodies,
//! subjects and status in whatever namespace, text nested in child elements, XHTML-IM
//! (XEP-0071) markup, stanza error `<text/>` (RFC 6120 §8.3.2), invitation reasons (XEP-0045
//! `<reason/>`, XEP-0249 `reason=`), OOB URLs (XEP-0066), references (XEP-0372 `uri=`) and
//! file-sharing sources (XEP-0447 `<url-data target=/>`).
//!
//! Left out, deliberately: the stanza element's own attributes (its routing: `to`, `from`, `id`,
//! `type`, matched by the JID and type conditions), attributes that are identifiers or protocol
//! values (`id`, `var`, `node`, `jid`, …), and the content of a few elements that only ever carry
//! base64 binary data or ciphertext that no client shows as text (in-band bytestream chunks,
//! bits of binary, avatar data, vCard photos, OMEMO and OpenPGP payloads) — scanning them would
//! find keywords in random base64 and cost time, and hide nothing.
//!
//! Pieces are joined by a newline where a client would show them apart (two elements of
//! element-only content: `<subject/>` and `<body/>`), and without one where it would show them
//! run together: inside mixed content (`<body>vi<x/>agra</body>`) and across inline XHTML
//! elements (`vi<b>agra</b>`, `<span>vi</span><span>agra</span>`). Attribute values come after
//! all character data, each apart, so that an `<a href/>` does not split the text it wraps.
//!
//! Every piece keeps its place in the tree, so the masker (`policy::rewrite`) can rewrite exactly
//! the text nodes and attributes a match touched, parts of one match in two nodes included.

use std::borrow::Cow;
use std::ops::Range;

use crate::xml::{Element, Node};

/// XHTML (XEP-0071 bodies are in this namespace).
pub const NS_XHTML: &str = "http://www.w3.org/1999/xhtml";

/// Attribute local names whose values a client shows (`reason`, `alt`, `title`, `label`,
/// `name`, `desc`) or follows as a link (`href`, `src`, `uri`, `url`, `target`), on any element
/// below the stanza, in any namespace: XHTML-IM `<a href>`/`<img src alt>`, XEP-0372 `uri`,
/// XEP-0447/XEP-0103 url-data `target`, XEP-0249 `reason`, XEP-0004 `label`, XEP-0084 `url`,
/// XEP-0363 `url`, disco and roster `name`.
const SHOWN_ATTRIBUTES: &[&str] =
    &["href", "src", "uri", "url", "target", "reason", "alt", "title", "label", "name", "desc", "description", "text"];

/// Elements that carry only base64 binary data or ciphertext (see the module docs).
const BINARY: &[(&str, &str)] = &[
    ("http://jabber.org/protocol/ibb", "data"),    // XEP-0047
    ("urn:xmpp:bob", "data"),                      // XEP-0231
    ("urn:xmpp:avatar:data", "data"),              // XEP-0084
    ("vcard-temp", "BINVAL"),                      // XEP-0054
    ("eu.siacs.conversations.axolotl", "payload"), // XEP-0384 (legacy)
    ("eu.siacs.conversations.axolotl", "key"),
    ("eu.siacs.conversations.axolotl", "iv"),
    ("urn:xmpp:omemo:2", "payload"), // XEP-0384
    ("urn:xmpp:omemo:2", "key"),
    ("urn:xmpp:openpgp:0", "openpgp"), // XEP-0373
    ("jabber:x:encrypted", "x"),       // XEP-0027
    ("jabber:x:signed", "x"),
];

/// XHTML elements shown as blocks (a line break around them); every other XHTML element is
/// inline and does not separate the text around it.
const XHTML_BLOCKS: &[&str] = &[
    "address",
    "blockquote",
    "body",
    "br",
    "dd",
    "div",
    "dl",
    "dt",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "li",
    "ol",
    "p",
    "pre",
    "table",
    "td",
    "th",
    "tr",
    "ul",
];

/// Where a piece of the text sits in its element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    /// The element's child node at this index (a text node).
    Text(usize),
    /// The element's attribute at this index.
    Attr(usize),
}

/// A piece of the text: where it is (child indices from the stanza down to its element, and the
/// slot there) and which bytes of the joined text it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Piece {
    pub path: Vec<usize>,
    pub slot: Slot,
    pub range: Range<usize>,
}

/// The text, joined (see the module docs). Borrowed when the stanza has one piece of text.
pub fn stanza_text(el: &Element) -> Cow<'_, str> {
    let mut text = Cow::Borrowed("");
    let mut pieces = 0usize;
    for_each_piece(el, &mut |piece, separate, _, _| {
        if pieces == 0 {
            text = Cow::Borrowed(piece);
        } else {
            let t = text.to_mut();
            if separate {
                t.push('\n');
            }
            t.push_str(piece);
        }
        pieces += 1;
    });
    text
}

/// The text, joined exactly as [`stanza_text`] joins it, and where each piece sits.
pub(super) fn pieces(el: &Element) -> (String, Vec<Piece>) {
    let mut text = String::new();
    let mut out = Vec::new();
    for_each_piece(el, &mut |piece, separate, path, slot| {
        if !out.is_empty() && separate {
            text.push('\n');
        }
        let start = text.len();
        text.push_str(piece);
        out.push(Piece { path: path.to_vec(), slot, range: start..text.len() });
    });
    (text, out)
}

/// The element at `path` (child indices) below `el`.
pub(super) fn element_at_mut<'e>(el: &'e mut Element, path: &[usize]) -> Option<&'e mut Element> {
    let mut at = el;
    for &i in path {
        at = match at.children.get_mut(i) {
            Some(Node::Element(c)) => c,
            _ => return None,
        };
    }
    Some(at)
}

/// Call `f(piece, separate_from_previous, path, slot)` for each piece of the text, character
/// data first (in document order), then attribute values.
fn for_each_piece<'a>(el: &'a Element, f: &mut impl FnMut(&'a str, bool, &[usize], Slot)) {
    let mut path = Vec::new();
    let mut separate = false;
    character_data(el, &mut path, &mut separate, f);
    // No recursion bound of its own: the parser bounds depth (`limits.depth`, at most 256 + 16
    // on the backend leg), and cloning or dropping the element recurses as deep.
    attributes(el, &mut path, true, f);
}

fn is_binary(el: &Element) -> bool {
    BINARY.iter().any(|&(ns, name)| el.is(ns, name))
}

fn character_data<'a>(
    el: &'a Element,
    path: &mut Vec<usize>,
    separate: &mut bool,
    f: &mut impl FnMut(&'a str, bool, &[usize], Slot),
) {
    // Mixed content (text beside elements) is read as one run, as clients that show an
    // element's text do: the child elements inside it do not separate.
    let mixed = el.children.iter().any(|n| matches!(n, Node::Text(t) if !t.trim().is_empty()));
    for (i, node) in el.children.iter().enumerate() {
        match node {
            Node::Text(t) if !t.is_empty() => {
                f(t, *separate, path, Slot::Text(i));
                *separate = false;
            }
            Node::Text(_) => {}
            Node::Element(c) if is_binary(c) => {}
            Node::Element(c) => {
                let apart = if *c.ns == *NS_XHTML { XHTML_BLOCKS.contains(&c.name.as_str()) } else { !mixed };
                *separate |= apart;
                path.push(i);
                character_data(c, path, separate, f);
                path.pop();
                *separate |= apart;
            }
        }
    }
}

fn attributes<'a>(
    el: &'a Element,
    path: &mut Vec<usize>,
    root: bool,
    f: &mut impl FnMut(&'a str, bool, &[usize], Slot),
) {
    if !root {
        for (i, a) in el.attrs.iter().enumerate() {
            if a.ns.is_none() && !a.value.is_empty() && SHOWN_ATTRIBUTES.contains(&a.name.as_str()) {
                f(&a.value, true, path, Slot::Attr(i));
            }
        }
    }
    for (i, node) in el.children.iter().enumerate() {
        if let Node::Element(c) = node {
            if !is_binary(c) {
                path.push(i);
                attributes(c, path, false, f);
                path.pop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{parse_stanzas, XmlLimits};

    fn text_of(xml: &str) -> String {
        let el = parse_stanzas(xml, XmlLimits::default()).unwrap().remove(0);
        let joined = stanza_text(&el).into_owned();
        assert_eq!(joined, pieces(&el).0, "one joining for detection and masking");
        joined
    }

    #[test]
    fn all_character_data_and_shown_attributes() {
        assert_eq!(text_of("<message to='a@b' id='x'><body>hi</body></message>"), "hi");
        assert_eq!(
            text_of("<message><subject>s</subject><body xmlns='jabber:server'>b</body><thread>t</thread></message>"),
            "s\nb\nt"
        );
        assert_eq!(text_of("<message><body>vi<x xmlns='y'/>ag<y xmlns='y'>r</y>a</body></message>"), "viagra");
        assert_eq!(
            text_of(
                "<message><html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>\
                 <p><span>vi</span><b>ag</b><a href='https://x.example/'>ra</a></p><p>next<br/>line</p></body></html></message>"
            ),
            "viagra\nnext\nline\nhttps://x.example/"
        );
        assert_eq!(
            text_of("<message><x xmlns='jabber:x:conference' jid='r@muc.example' reason='join us'/></message>"),
            "join us"
        );
        assert_eq!(
            text_of("<message><data xmlns='urn:xmpp:bob' cid='c'>dmlhZ3Jh</data><body>b</body></message>"),
            "b",
            "binary payloads are not text"
        );
    }

    #[test]
    fn one_piece_is_borrowed() {
        let el = parse_stanzas("<message><body>hi</body><active xmlns='c'/></message>", XmlLimits::default())
            .unwrap()
            .remove(0);
        assert!(matches!(stanza_text(&el), Cow::Borrowed("hi")));
    }
}
