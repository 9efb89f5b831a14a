//! Differential check of the restricted-XML reader against rxml, a strict reference parser.
//!
//! Generated and mutated streams are fed to both. Whatever stanzawall accepts, rxml must accept
//! with the same tree (namespaces, names, attributes, text); and stanzawall's re-serialization of
//! what it accepted must re-parse, in rxml too, to the same tree. stanzawall may refuse more
//! (limits, RFC 6120 §11 restrictions), never less. This is the check that rules out the parser
//! differentials behind stanza smuggling.
//!
//! CI runs `STANZAWALL_DIFF_CASES` cases (default 20,000); the long mode is
//! `STANZAWALL_DIFF_CASES=1000000 cargo test --release -p stanzawall-core --test differential`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rxml::{Event, Parse, Parser};
use stanzawall_core::stream::NS_CLIENT;
use stanzawall_core::xml::{Element, Node, StreamReader, XmlEvent, XmlLimits, NS_XML};

const HEADER: &str = "<stream:stream to='example.test' version='1.0' \
    xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
const FOOTER: &str = "</stream:stream>";

/// (namespace, local name, sorted attributes, children) of an element being built.
type Open = (String, String, Vec<(String, String, String)>, Vec<T>);

/// A comparable tree: (namespace, local name, sorted attributes, children).
#[derive(Debug, Clone, PartialEq, Eq)]
enum T {
    E(String, String, Vec<(String, String, String)>, Vec<T>),
    Text(String),
}

fn merge_text(children: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for c in children {
        match (out.last_mut(), c) {
            (Some(T::Text(a)), T::Text(b)) => a.push_str(&b),
            (_, T::Text(b)) if b.is_empty() => {}
            (_, c) => out.push(c),
        }
    }
    out
}

fn from_ours(el: &Element) -> T {
    let mut attrs: Vec<_> =
        el.attrs.iter().map(|a| (a.ns.as_deref().unwrap_or("").to_owned(), a.name.clone(), a.value.clone())).collect();
    attrs.sort();
    let children = el
        .children
        .iter()
        .map(|c| match c {
            Node::Element(e) => from_ours(e),
            Node::Text(t) => T::Text(t.clone()),
        })
        .collect();
    T::E(el.ns.to_string(), el.name.clone(), attrs, merge_text(children))
}

/// stanzawall: the stanzas of `body` if it accepts all of it (stream still open, nothing pending).
fn ours(body: &[u8]) -> Option<Vec<T>> {
    let mut r = StreamReader::new(XmlLimits { stanza_bytes: 1 << 20, depth: 64, attributes: 64 });
    r.feed(HEADER.as_bytes());
    r.feed(body);
    let mut out = Vec::new();
    loop {
        match r.next_event() {
            Ok(Some(XmlEvent::Stanza(el))) => out.push(from_ours(&el)),
            Ok(Some(XmlEvent::StreamOpen { .. } | XmlEvent::Whitespace)) => {}
            Ok(Some(XmlEvent::StreamClose | XmlEvent::Skipped { .. })) => return None,
            Ok(None) => break,
            Err(_) => return None,
        }
    }
    r.is_idle().then_some(out)
}

/// rxml: the depth-1 elements of header+body+footer as one document, or None if refused.
fn reference(body: &[u8]) -> Option<Vec<T>> {
    let mut doc = Vec::new();
    doc.extend_from_slice(HEADER.as_bytes());
    doc.extend_from_slice(body);
    doc.extend_from_slice(FOOTER.as_bytes());
    let mut p = Parser::new();
    let mut buf = &doc[..];
    // (namespace, name, attrs, children) of open elements below the stream root.
    let mut stack: Vec<Open> = Vec::new();
    let mut depth = 0usize;
    let mut out = Vec::new();
    loop {
        match p.parse(&mut buf, true) {
            Ok(None) => break,
            Err(_) => return None,
            Ok(Some(Event::XmlDeclaration(..))) => {}
            Ok(Some(Event::StartElement(_, (ns, name), attrs))) => {
                depth += 1;
                if depth >= 2 {
                    let mut a: Vec<_> = attrs
                        .into_iter()
                        .map(|((ans, an), v)| (ans.as_str().to_owned(), an.as_str().to_owned(), v))
                        .collect();
                    a.sort();
                    stack.push((ns.as_str().to_owned(), name.as_str().to_owned(), a, Vec::new()));
                }
            }
            Ok(Some(Event::EndElement(_))) => {
                depth -= 1;
                if depth >= 1 {
                    let (ns, name, attrs, children) = stack.pop()?;
                    let el = T::E(ns, name, attrs, merge_text(children));
                    match stack.last_mut() {
                        Some(parent) => parent.3.push(el),
                        None => out.push(el),
                    }
                }
            }
            Ok(Some(Event::Text(_, text))) => {
                if let Some(top) = stack.last_mut() {
                    top.3.push(T::Text(text));
                }
            }
        }
    }
    Some(out)
}

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

// Each kind of piece in a valid flavour (mostly) and a hostile one (1 in 12), so that both
// acceptance and refusal are exercised with enough accepted cases to compare trees.
const NAMES: (&[&str], &[&str]) = (
    &["message", "body", "x", "p:x", "q:y", "stream:features", "iq", "\u{e9}l", "_n-1.2"],
    &["1bad", "a:b:c", "xml:z", "xmlns:q", "p:", ":p", "r:z", "a b"],
);
const ATTR_NAMES: (&[&str], &[&str]) = (
    &["id", "to", "xml:lang", "p:attr", "q:attr", "b", "type"],
    &["xmlns", "xmlns:p", "xmlns:xml", "xmlns:xmlns", "a", "r:attr", "1a", "xml:space"],
);
const VALUES: (&[&str], &[&str]) = (
    &["v", "urn:p", "", "&amp;", "&lt;", "&#x41;", "\"", "'", "\t\r\n", "\u{e9}", "]]>", "&#10;", "&apos;&quot;", ">"],
    &["&#0;", "<", "&xxe;", "&#xD800;", "http://www.w3.org/XML/1998/namespace", "&", "&#;", "\u{1}"],
);
const TEXTS: (&[&str], &[&str]) = (
    &[
        "hi",
        "&amp;",
        "&lt;&gt;",
        "<![CDATA[x<y]]>",
        "&#13;",
        "\r\n",
        "\r",
        "&#x1F600;",
        "\u{e9}",
        "  ",
        "]]",
        "&gt;",
        "&#x10FFFF;",
    ],
    &["]]>", "\u{1}", "&", "\u{FFFE}", "&#1114112;", "<!-- c -->", "<?pi x?>", "&nbsp;"],
);

fn choose<'a>(rng: &mut Rng, (good, bad): (&[&'a str], &[&'a str])) -> &'a str {
    if rng.below(12) == 0 {
        rng.pick(bad)
    } else {
        rng.pick(good)
    }
}

fn gen_element(rng: &mut Rng, out: &mut String, depth: usize) {
    let name = choose(rng, NAMES);
    out.push('<');
    out.push_str(name);
    if depth == 0 && rng.below(8) != 0 {
        out.push_str(" xmlns:p='urn:p' xmlns:q=\"urn:q\"");
    }
    if rng.below(6) == 0 {
        out.push_str(rng.pick(&[" xmlns='urn:d'", " xmlns=''", " xmlns:p='urn:p2'", " xmlns='jabber:client'"]));
    }
    for _ in 0..rng.below(4) {
        let q = if rng.below(2) == 0 { '\'' } else { '"' };
        let value = choose(rng, VALUES);
        if value.contains(q) {
            continue;
        }
        out.push(' ');
        out.push_str(choose(rng, ATTR_NAMES));
        out.push('=');
        out.push(q);
        out.push_str(value);
        out.push(q);
    }
    if depth > 3 || rng.below(4) == 0 {
        out.push_str("/>");
        return;
    }
    out.push('>');
    for _ in 0..rng.below(4) {
        if rng.below(2) == 0 {
            out.push_str(choose(rng, TEXTS));
        } else {
            gen_element(rng, out, depth + 1);
        }
    }
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

fn gen_case(rng: &mut Rng) -> Vec<u8> {
    let mut s = String::new();
    for _ in 0..1 + rng.below(3) {
        gen_element(rng, &mut s, 0);
        if rng.below(3) == 0 {
            s.push_str(rng.pick(&[" ", "\n", " \r\n\t", "x"]));
        }
    }
    let mut bytes = s.into_bytes();
    // Byte-level mutations on a fifth of the cases.
    if rng.below(5) == 0 && !bytes.is_empty() {
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(bytes.len());
            match rng.below(4) {
                0 => {
                    bytes.remove(i);
                }
                1 => bytes.insert(i, b"<>&;'\"/=: \0\xff\xc3"[rng.below(13)]),
                2 => bytes[i] = b"<>&;'\"/=: x"[rng.below(11)],
                _ => {
                    let j = (i + rng.below(8)).min(bytes.len());
                    let dup = bytes[i..j].to_vec();
                    bytes.splice(i..i, dup);
                }
            }
            if bytes.is_empty() {
                break;
            }
        }
    }
    bytes
}

/// A CR not followed by LF inside a quoted attribute value (a rough scan, used only to name the
/// one known rxml deviation).
fn lone_cr_in_attribute(body: &[u8]) -> bool {
    let (mut in_tag, mut quote) = (false, 0u8);
    for (i, &b) in body.iter().enumerate() {
        match (in_tag, quote, b) {
            (false, _, b'<') => in_tag = true,
            (true, 0, b'>') => in_tag = false,
            (true, 0, b'\'' | b'"') => quote = b,
            (true, q, _) if q != 0 && b == q => quote = 0,
            (true, q, b'\r') if q != 0 && body.get(i + 1) != Some(&b'\n') => return true,
            _ => {}
        }
    }
    false
}

#[test]
fn lone_cr_in_an_attribute_is_a_line_end() {
    // Pinned: XML 1.0 §2.11 + §3.3.3 make it a space; canonical output carries no CR.
    let mine = ours(b"<x a=\"\r:\"/>").expect("accepted");
    assert_eq!(
        mine,
        vec![T::E("jabber:client".into(), "x".into(), vec![("".into(), "a".into(), " :".into())], vec![])]
    );
    assert_eq!(serialize(b"<x a=\"\r:\"/>"), b"<x a=' :'/>");
    assert!(lone_cr_in_attribute(b"<x a=\"\r:\"/>") && !lone_cr_in_attribute(b"<x a='\r\n'>\r</x>"));
}

fn serialize(body: &[u8]) -> Vec<u8> {
    let mut r = StreamReader::new(XmlLimits { stanza_bytes: 1 << 20, depth: 64, attributes: 64 });
    r.feed(HEADER.as_bytes());
    r.feed(body);
    let mut out = Vec::new();
    while let Ok(Some(ev)) = r.next_event() {
        if let XmlEvent::Stanza(el) = ev {
            el.write_to(&mut out, NS_CLIENT);
        }
    }
    out
}

#[test]
fn stanzawall_accepts_nothing_the_reference_refuses() {
    let cases: usize = std::env::var("STANZAWALL_DIFF_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let (mut accepted, mut refused, mut rxml_cr_deviations) = (0usize, 0usize, 0usize);
    for case in 0..cases {
        let body = gen_case(&mut rng);
        let Some(mine) = ours(&body) else {
            refused += 1;
            continue;
        };
        accepted += 1;
        let shown = String::from_utf8_lossy(&body);
        let theirs = reference(&body);
        if theirs.as_ref() != Some(&mine) && lone_cr_in_attribute(&body) {
            // rxml 0.14 mishandles a CR not followed by LF inside an attribute value (it refuses
            // `a="\r:"`, and reads `a="\t\r"` as one space); XML 1.0 §2.11 makes such a CR a line
            // end and §3.3.3 a space. Harmless here: raw bytes are never forwarded, and the
            // canonical form (which carries no CR) is checked strictly just below.
            rxml_cr_deviations += 1;
        } else {
            assert_eq!(theirs.as_ref(), Some(&mine), "case {case}: rxml disagrees on accepted input {shown:?}");
        }
        let canonical = serialize(&body);
        let shown_c = String::from_utf8_lossy(&canonical);
        assert_eq!(
            ours(&canonical).as_ref(),
            Some(&mine),
            "case {case}: canonical form {shown_c:?} re-parses differently"
        );
        assert_eq!(
            reference(&canonical).as_ref(),
            Some(&mine),
            "case {case}: rxml reads canonical {shown_c:?} differently"
        );
    }
    eprintln!(
        "differential: {cases} cases, {accepted} accepted and identical in rxml (of which {rxml_cr_deviations} only \
         after canonicalization: rxml's lone-CR attribute bug), {refused} refused by stanzawall"
    );
    // The generator must exercise both sides, or the check proves nothing.
    assert!(accepted > cases / 20, "only {accepted} of {cases} accepted");
    assert!(refused > cases / 20, "only {refused} of {cases} refused");
}

#[test]
fn xml_namespace_attributes_agree() {
    let body = b"<message xml:lang='en'><body xml:lang='de'>x</body></message>";
    let mine = ours(body).expect("accepted");
    assert_eq!(reference(body), Some(mine.clone()));
    let T::E(_, _, attrs, _) = &mine[0] else { panic!("not an element") };
    assert_eq!(attrs[0].0, NS_XML);
}
