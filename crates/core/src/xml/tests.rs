use proptest::prelude::*;

use super::*;
use crate::stream::{Condition, NS_CLIENT};

const HEADER: &str = "<?xml version='1.0'?><stream:stream to='example.test' version='1.0' \
    xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

fn limits() -> XmlLimits {
    XmlLimits { stanza_bytes: 4096, depth: 8, attributes: 16 }
}

/// Feed `input` in chunks of `chunk` bytes; collect events until the first error.
fn parse_chunked(input: &[u8], chunk: usize, limits: XmlLimits) -> (Vec<XmlEvent>, Option<XmlError>) {
    let mut r = StreamReader::new(limits);
    let mut events = Vec::new();
    for part in input.chunks(chunk.max(1)) {
        r.feed(part);
        loop {
            match r.next_event() {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => break,
                Err(e) => return (events, Some(e)),
            }
        }
    }
    (events, None)
}

fn parse(input: &str) -> (Vec<XmlEvent>, Option<XmlError>) {
    parse_chunked(input.as_bytes(), input.len(), limits())
}

fn stanzas(input: &str) -> Vec<Element> {
    let (events, err) = parse(input);
    assert_eq!(err, None, "unexpected error for {input}");
    events
        .into_iter()
        .filter_map(|e| match e {
            XmlEvent::Stanza(el) => Some(el),
            _ => None,
        })
        .collect()
}

fn error_of(body: &str) -> XmlError {
    let input = format!("{HEADER}{body}");
    match parse(&input) {
        (_, Some(e)) => e,
        (events, None) => panic!("accepted {body:?}: {events:?}"),
    }
}

#[test]
fn header_then_stanzas_then_close() {
    let input = format!(
        "{HEADER}<message to='bob@example.test' type='chat'><body>hi &amp; bye</body></message>\n \
         <presence/><iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq></stream:stream>"
    );
    let (events, err) = parse(&input);
    assert_eq!(err, None);
    assert_eq!(events.len(), 6);
    assert_eq!(events[2], XmlEvent::Whitespace, "the keepalive between stanzas is reported");
    let XmlEvent::StreamOpen { header, default_ns } = &events[0] else { panic!("no header") };
    assert!(header.is(NS_STREAMS, "stream"));
    assert_eq!(header.attr("to"), Some("example.test"));
    assert_eq!(default_ns.as_deref(), Some(NS_CLIENT));
    let XmlEvent::Stanza(msg) = &events[1] else { panic!("no message") };
    assert!(msg.is(NS_CLIENT, "message"));
    assert_eq!(msg.child(NS_CLIENT, "body").map(Element::text).as_deref(), Some("hi & bye"));
    let XmlEvent::Stanza(iq) = &events[4] else { panic!("no iq") };
    assert!(iq.child("jabber:iq:roster", "query").is_some());
    assert_eq!(events[5], XmlEvent::StreamClose);
}

#[test]
fn canonical_serialization() {
    let input = format!(
        "{HEADER}<message xmlns=\"jabber:client\" to=\"a@b\"><body>&lt;x&gt; &quot;q&quot; &#x41;&#66;</body>\
         <x:y xmlns:x='urn:x' x:attr='v'/></message>"
    );
    let el = stanzas(&input).remove(0);
    let out = String::from_utf8(el.to_bytes(NS_CLIENT)).unwrap();
    assert_eq!(
        out,
        "<message to='a@b'><body>&lt;x&gt; \"q\" AB</body><y xmlns='urn:x' xmlns:a0='urn:x' a0:attr='v'/></message>"
    );
}

#[test]
fn cdata_becomes_escaped_text() {
    let el = stanzas(&format!("{HEADER}<message><body><![CDATA[<b>&]]></body></message>")).remove(0);
    let body = el.child(NS_CLIENT, "body").unwrap();
    assert_eq!(body.text(), "<b>&");
    assert_eq!(String::from_utf8(el.to_bytes(NS_CLIENT)).unwrap(), "<message><body>&lt;b&gt;&amp;</body></message>");
}

#[test]
fn newlines_and_attribute_whitespace_are_normalized() {
    let el = stanzas(&format!("{HEADER}<message id='a\tb\r\nc'><body>x\r\ny\rz&#13;</body></message>")).remove(0);
    assert_eq!(el.attr("id"), Some("a b c"));
    assert_eq!(el.child(NS_CLIENT, "body").unwrap().text(), "x\ny\nz\r");
}

#[test]
fn restricted_xml_is_refused() {
    for (body, cond) in [
        ("<message><body>&xxe;</body></message>", Condition::RestrictedXml),
        ("<!DOCTYPE foo [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]>", Condition::RestrictedXml),
        ("<!-- comment -->", Condition::RestrictedXml),
        ("<message><!-- c --></message>", Condition::RestrictedXml),
        ("<?php evil() ?>", Condition::RestrictedXml),
        ("<message><?pi x?></message>", Condition::RestrictedXml),
        ("<?xml version='1.0'?>", Condition::RestrictedXml),
        ("<message to='&xxe;'/>", Condition::RestrictedXml),
    ] {
        assert_eq!(Condition::from(&error_of(body)), cond, "{body}");
    }
}

#[test]
fn malformed_xml_is_refused() {
    for (body, cond) in [
        ("<message><body>x</message>", Condition::NotWellFormed),
        ("<message a='1' a='2'/>", Condition::NotWellFormed),
        ("<message xmlns:p='urn:p' p:a='1' xmlns:q='urn:p' q:a='2'/>", Condition::NotWellFormed),
        ("<p:message/>", Condition::NotWellFormed),
        ("<message p:a='1'/>", Condition::NotWellFormed),
        ("<message a=1/>", Condition::NotWellFormed),
        ("<message a='<'/>", Condition::NotWellFormed),
        ("<message a='1'b='2'/>", Condition::NotWellFormed),
        ("<1message/>", Condition::NotWellFormed),
        ("<message><body>\u{1}</body></message>", Condition::NotWellFormed),
        ("<message><body>a]]>b</body></message>", Condition::NotWellFormed),
        ("<message><body>&#0;</body></message>", Condition::NotWellFormed),
        ("<message><body>&#xD800;</body></message>", Condition::NotWellFormed),
        ("<message xmlns:p=''/>", Condition::NotWellFormed),
        ("</message>", Condition::NotWellFormed),
        ("hello", Condition::BadFormat),
        ("<stream:stream>", Condition::InvalidXml),
        ("<message><stream:features/></message>", Condition::InvalidXml),
        ("<message><stream:error/></message>", Condition::InvalidXml),
        ("<xml:a/>", Condition::BadFormat),
        ("<a xmlns='http://www.w3.org/XML/1998/namespace'/>", Condition::BadFormat),
    ] {
        assert_eq!(Condition::from(&error_of(body)), cond, "{body}");
    }
}

#[test]
fn non_utf8_is_unsupported_encoding() {
    let mut input = HEADER.as_bytes().to_vec();
    input.extend_from_slice(b"<message><body>\xff\xfe</body></message>");
    let (_, err) = parse_chunked(&input, input.len(), limits());
    assert_eq!(err.map(|e| Condition::from(&e)), Some(Condition::UnsupportedEncoding));
    let (_, err) = parse("<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream>");
    assert_eq!(err.map(|e| Condition::from(&e)), Some(Condition::UnsupportedEncoding));
}

#[test]
fn limits_are_enforced_at_the_cap() {
    // A stanza far larger than the cap is refused once the cap is buffered, whether it arrives
    // whole or in pieces, and whether the excess is in text or inside an unfinished tag.
    let huge_text = format!("{HEADER}<message><body>{}</body></message>", "a".repeat(100_000));
    let huge_attr = format!("{HEADER}<message id='{}'/>", "a".repeat(100_000));
    for input in [&huge_text, &huge_attr] {
        for chunk in [input.len(), 1000, 7] {
            let (_, err) = parse_chunked(input.as_bytes(), chunk, limits());
            assert_eq!(err, Some(XmlError::TooLarge { limit: 4096 }));
        }
    }
    // Refused before the stanza completes: the end tag never arrives.
    let mut r = StreamReader::new(limits());
    r.feed(HEADER.as_bytes());
    assert!(matches!(r.next_event(), Ok(Some(XmlEvent::StreamOpen { .. }))));
    r.feed(b"<message><body>");
    r.feed(&[b'x'; 5000]);
    assert_eq!(r.next_event(), Err(XmlError::TooLarge { limit: 4096 }));

    let deep = format!("{HEADER}{}", "<a>".repeat(9));
    assert_eq!(parse(&deep).1, Some(XmlError::TooDeep { limit: 8 }));
    let ok_deep = format!("{HEADER}{}{}", "<a>".repeat(8), "</a>".repeat(8));
    assert_eq!(parse(&ok_deep).1, None);
    let attrs: String = (0..17).map(|i| format!(" a{i}='x'")).collect();
    assert_eq!(error_of(&format!("<message{attrs}/>")), XmlError::TooManyAttributes { limit: 16 });
    // Refused at the 17th value, before the tag ends.
    let mut r = StreamReader::new(limits());
    r.feed(format!("{HEADER}<message{attrs}").as_bytes());
    assert!(matches!(r.next_event(), Ok(Some(XmlEvent::StreamOpen { .. }))));
    assert_eq!(r.next_event(), Err(XmlError::TooManyAttributes { limit: 16 }));
    // An endless stream header is capped too.
    let endless = format!("<stream:stream {}", "a".repeat(10_000));
    assert_eq!(parse(&endless).1, Some(XmlError::TooLarge { limit: 4096 }));
}

#[test]
fn header_checks() {
    let (_, err) = parse("<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>");
    assert_eq!(err.map(|e| Condition::from(&e)), Some(Condition::BadFormat));
    let (_, err) = parse("GET / HTTP/1.1\r\n");
    assert_eq!(err.map(|e| Condition::from(&e)), Some(Condition::NotWellFormed));
    // A BOM and leading whitespace are fine; an XML declaration after whitespace is not.
    let (events, err) =
        parse("\u{feff}<?xml version='1.0'?>\n<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>");
    assert_eq!(err, None);
    assert_eq!(events.len(), 1);
    let (_, err) = parse(" <?xml version='1.0'?><stream:stream>");
    assert_eq!(err.map(|e| Condition::from(&e)), Some(Condition::RestrictedXml));
}

#[test]
fn trickled_brackets_and_crs_stay_linear() {
    // Each read holds back at most two `]` or one CR, so a 250 KB trickle costs a linear scan;
    // the old code rescanned everything held back on every byte. (Time is measured in benches;
    // this checks the bytes are consumed as they come.)
    for b in [b']', b'\r'] {
        let mut r = StreamReader::new(XmlLimits::default());
        r.feed(format!("{HEADER}<message><body>").as_bytes());
        while let Ok(Some(_)) = r.next_event() {}
        for _ in 0..10_000 {
            r.feed(&[b]);
            assert_eq!(r.next_event(), Ok(None));
            assert!(r.buffered_len() <= 2, "{} bytes held back", r.buffered_len());
        }
    }
}

#[test]
fn one_bom_at_most() {
    let (_, err) = parse("\u{feff}\u{feff}<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>");
    assert!(err.is_some());
}

#[test]
fn tree_overhead_counts_against_the_cap() {
    // 4-byte elements: far under the byte cap, but each costs a tree node.
    let input = format!("{HEADER}<message>{}</message>", "<a/>".repeat(400));
    assert_eq!(parse(&input).1, Some(XmlError::TooLarge { limit: 4096 }));
}

#[test]
fn skip_mode_steps_over_a_stanza_over_the_limits() {
    let mut r = StreamReader::new(limits());
    r.skip_over_limits(true);
    let input = format!(
        "{HEADER}<message id='big'><body>{}</body></message><presence/><iq id='deep' type='get'>{}{}</iq><presence id='after'/>",
        "x".repeat(10_000),
        "<a>".repeat(20),
        "</a>".repeat(20)
    );
    let mut events = Vec::new();
    for part in input.as_bytes().chunks(7) {
        r.feed(part);
        while let Some(ev) = r.next_event().unwrap() {
            events.push(ev);
        }
    }
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e {
            XmlEvent::StreamOpen { .. } => "open".into(),
            XmlEvent::Stanza(el) => el.attr("id").unwrap_or(&el.name).to_owned(),
            XmlEvent::Skipped { reason, root } => {
                format!(
                    "skipped:{}:{}",
                    root.as_ref().and_then(|r| r.attr("id")).unwrap_or("-"),
                    Condition::from(reason)
                )
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["open", "skipped:big:policy-violation", "presence", "skipped:deep:policy-violation", "after"]);
}

#[test]
fn restart_keeps_buffered_bytes() {
    let mut r = StreamReader::new(limits());
    r.feed(format!("{HEADER}<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>{HEADER}<presence/>").as_bytes());
    assert!(matches!(r.next_event(), Ok(Some(XmlEvent::StreamOpen { .. }))));
    assert!(matches!(r.next_event(), Ok(Some(XmlEvent::Stanza(_)))));
    r.restart();
    assert!(matches!(r.next_event(), Ok(Some(XmlEvent::StreamOpen { .. }))));
    assert!(matches!(r.next_event(), Ok(Some(XmlEvent::Stanza(ref p))) if p.name == "presence"));
}

#[test]
fn bytes_after_an_element_can_be_taken() {
    let mut r = StreamReader::new(limits());
    r.feed(format!("{HEADER}<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\x16\x03\x01").as_bytes());
    assert!(matches!(r.next_event(), Ok(Some(XmlEvent::StreamOpen { .. }))));
    assert!(matches!(r.next_event(), Ok(Some(XmlEvent::Stanza(_)))));
    assert_eq!(r.take_buffered(), b"\x16\x03\x01");
}

const CORPUS: &str = "<message to='bob@example.test' type='chat' id='m1' xml:lang='en'>\
    <body>caf\u{e9} \u{1F600} &amp; &lt;tag&gt; line1\r\nline2 ]]&gt;</body>\
    <x xmlns='jabber:x:oob'><url>https://example.test/a?b=1&amp;c=2</url></x>\
    <html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>\
    <p style='a:b'>hi</p></body></html></message>\
    <iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>\
    <presence><show>away</show><status><![CDATA[x<y]]></status></presence>";

fn all_stanzas(input: &[u8], chunk: usize) -> Vec<Element> {
    let (events, err) = parse_chunked(input, chunk, XmlLimits::default());
    assert_eq!(err, None);
    events
        .into_iter()
        .filter_map(|e| match e {
            XmlEvent::Stanza(el) => Some(el),
            _ => None,
        })
        .collect()
}

#[test]
fn split_at_every_byte_boundary_parses_identically() {
    let input = format!("{HEADER}{CORPUS}").into_bytes();
    let whole = all_stanzas(&input, input.len());
    assert_eq!(whole.len(), 3);
    for cut in 1..input.len() {
        let mut r = StreamReader::new(XmlLimits::default());
        let mut got = Vec::new();
        for part in [&input[..cut], &input[cut..]] {
            r.feed(part);
            while let Some(ev) = r.next_event().unwrap() {
                if let XmlEvent::Stanza(el) = ev {
                    got.push(el);
                }
            }
        }
        assert_eq!(got, whole, "split at {cut}");
    }
    assert_eq!(all_stanzas(&input, 1), whole);
}

#[test]
fn parse_serialize_parse_is_identity() {
    let input = format!("{HEADER}{CORPUS}").into_bytes();
    let first = all_stanzas(&input, input.len());
    let mut again = HEADER.as_bytes().to_vec();
    for el in &first {
        el.write_to(&mut again, NS_CLIENT);
    }
    let second = all_stanzas(&again, again.len());
    assert_eq!(first, second);
    // And the canonical form is a fixed point.
    let mut third = HEADER.as_bytes().to_vec();
    for el in &second {
        el.write_to(&mut third, NS_CLIENT);
    }
    assert_eq!(again, third);
}

fn arb_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("a".to_owned()),
            Just("<".to_owned()),
            Just("&".to_owned()),
            Just(">".to_owned()),
            Just("]]>".to_owned()),
            Just("\r\n".to_owned()),
            Just("\r".to_owned()),
            Just("'\"".to_owned()),
            Just("\u{e9}\u{1F600}".to_owned()),
            Just("\t".to_owned()),
        ],
        0..12,
    )
    .prop_map(|v| v.concat())
}

fn arb_element(depth: u32) -> BoxedStrategy<Element> {
    let leaf = (
        prop_oneof![Just("jabber:client"), Just("urn:a"), Just("urn:b")],
        prop_oneof![Just("body"), Just("x"), Just("item")],
        prop::collection::vec((prop_oneof![Just("id"), Just("to"), Just("type")], arb_text()), 0..3),
        arb_text(),
    )
        .prop_map(|(ns, name, attrs, text)| {
            let mut el = Element::new(ns, name);
            for (k, v) in attrs {
                el.set_attr(k, v);
            }
            if !text.is_empty() {
                el = el.with_text(text);
            }
            el
        });
    if depth == 0 {
        return leaf.boxed();
    }
    (leaf, prop::collection::vec(arb_element(depth - 1), 0..3))
        .prop_map(|(mut el, kids)| {
            for k in kids {
                el.children.push(Node::Element(k));
            }
            el
        })
        .boxed()
}

// What a parse can reproduce: attribute whitespace and CR survive only via escaping, adjacent
// text merges. The serializer escapes all of them, so the tree must come back unchanged.
proptest! {
    #[test]
    fn serialized_trees_parse_back_identically(el in arb_element(3), chunk in 1usize..64) {
        let mut input = HEADER.as_bytes().to_vec();
        el.write_to(&mut input, NS_CLIENT);
        let got = all_stanzas(&input, chunk);
        prop_assert_eq!(got.len(), 1);
        // Merge adjacent text in the expectation the same way the parser does.
        prop_assert_eq!(&got[0], &merged(el));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512), chunk in 1usize..32) {
        let mut input = HEADER.as_bytes().to_vec();
        input.extend_from_slice(&data);
        let _ = parse_chunked(&input, chunk, limits());
    }
}

fn merged(mut el: Element) -> Element {
    let mut out: Vec<Node> = Vec::new();
    for n in el.children.drain(..) {
        match (out.last_mut(), n) {
            (Some(Node::Text(a)), Node::Text(b)) => a.push_str(&b),
            (_, Node::Element(e)) => out.push(Node::Element(merged(e))),
            (_, t) => out.push(t),
        }
    }
    el.children = out;
    el
}

/// Feed `input` to a backend-leg reader (skip mode) in `chunk`-byte reads; the events as short
/// strings, and the first error.
fn skip_mode_events(input: &[u8], chunk: usize) -> (Vec<String>, Option<XmlError>) {
    let mut r = StreamReader::new(limits());
    r.skip_over_limits(true);
    let mut events = Vec::new();
    for part in input.chunks(chunk) {
        r.feed(part);
        loop {
            match r.next_event() {
                Ok(None) => break,
                Ok(Some(XmlEvent::Stanza(el))) => events.push(el.attr("id").unwrap_or(&el.name).to_owned()),
                Ok(Some(XmlEvent::Skipped { root, .. })) => {
                    events.push(format!("skipped:{}", root.as_ref().and_then(|r| r.attr("id")).unwrap_or("-")))
                }
                Ok(Some(_)) => {}
                Err(e) => return (events, Some(e)),
            }
        }
    }
    (events, None)
}

#[test]
fn skip_mode_steps_over_stanzas_that_are_not_namespace_well_formed() {
    // What a server can be made to emit by a remote sender: each one stanza, then the stream
    // goes on.
    let bad: &[(&str, &[u8])] = &[
        ("prosody-xml-attr", b"<message id='a'><x xmlns='urn:x:y' xmlns:ns1='http://www.w3.org/XML/1998/namespace' ns1:foo='1'/></message>"),
        ("undeclared-prefix", b"<message id='b'><x p:foo='1'/></message>"),
        ("duplicate-attribute", b"<message id='c'><x a='1' a='2'/></message>"),
        ("invalid-char-ref", b"<message id='d'><body>&#1;</body></message>"),
        ("invalid-utf8-text", b"<message id='f'><body>\xff\xfe</body></message>"),
        ("xml-namespace-element", b"<message id='g'><xml:x/></message>"),
        ("xmlns-prefix-bound", b"<message id='i'><x xmlns:xmlns='urn:a'/></message>"),
        ("stream-element-inside", b"<message id='j'><stream:features/></message>"),
        ("invalid-name", b"<message id='k'><1x/></message>"),
    ];
    for (name, stanza) in bad {
        let mut input = HEADER.as_bytes().to_vec();
        input.extend_from_slice(stanza);
        input.extend_from_slice(b"<presence id='after'/>");
        let id = std::str::from_utf8(&stanza[13..14]).unwrap();
        for chunk in [1, 3, input.len()] {
            let (events, err) = skip_mode_events(&input, chunk);
            assert_eq!(err, None, "{name} (chunk {chunk})");
            assert_eq!(events, [format!("skipped:{id}"), "after".to_owned()], "{name} (chunk {chunk})");
        }
    }
    // At the root's own start tag the root is not known, the stanza is still stepped over.
    let input = format!("{HEADER}<message id='e' xmlns:p='urn:a' xmlns:q='urn:a' p:x='1' q:x='2'><body/></message><presence id='after'/>");
    assert_eq!(skip_mode_events(input.as_bytes(), 1), (vec!["skipped:-".to_owned(), "after".to_owned()], None));
    // Binding `xml` to its own namespace is legal (XML Namespaces §3) and accepted.
    let input = format!("{HEADER}<message xmlns:xml='http://www.w3.org/XML/1998/namespace' id='h' xml:foo='1'/>");
    assert_eq!(skip_mode_events(input.as_bytes(), 1), (vec!["h".to_owned()], None));
}

#[test]
fn skip_mode_keeps_framing_errors_fatal() {
    let framing: &[(&str, &str)] = &[
        ("mismatched-end-tag", "<message id='a'><body>x</message><presence id='after'/>"),
        ("text-between-stanzas", "hello<presence id='after'/>"),
        ("comment", "<message id='a'><!-- c --></message>"),
        ("pi", "<message id='a'><?pi x?></message>"),
        ("stray-end-tag", "</message><presence id='after'/>"),
        ("nested-stream-header", "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>"),
    ];
    for (name, rest) in framing {
        let input = format!("{HEADER}{rest}");
        let (events, err) = skip_mode_events(input.as_bytes(), 1);
        assert!(err.is_some(), "{name}: {events:?}");
        assert!(!events.contains(&"after".to_owned()), "{name}: {events:?}");
    }
}
