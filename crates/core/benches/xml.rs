//! Restricted-XML throughput on realistic stanzas, beside quick-xml's bare tokenizer as a
//! reference point (quick-xml does none of the RFC 6120 §11 checks, builds no tree and resolves
//! no namespaces, so it bounds what any parser on this machine can reach).
//!
//! `cargo bench -p stanzawall-core --bench xml`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use stanzawall_core::stream::NS_CLIENT;
use stanzawall_core::xml::{StreamReader, XmlEvent, XmlLimits};

const HEADER: &str = "<?xml version='1.0'?><stream:stream to='example.test' version='1.0' \
    xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

/// A 218-byte chat message, as typical clients send it.
const STANZA: &str = "<message to='bob@example.test' from='alice@example.test/phone' type='chat' \
    id='a1b2c3d4-e5f6789'><body>Hello Bob, are we still on for lunch today?</body>\
    <active xmlns='http://jabber.org/protocol/chatstates'/></message>";

fn corpus(n: usize) -> Vec<u8> {
    let mut v = HEADER.as_bytes().to_vec();
    for _ in 0..n {
        v.extend_from_slice(STANZA.as_bytes());
    }
    v
}

fn bench(c: &mut Criterion) {
    assert_eq!(STANZA.len(), 218);
    let input = corpus(1000);
    let body = (input.len() - HEADER.len()) as u64;
    let mut g = c.benchmark_group("xml");
    g.throughput(Throughput::Bytes(body));

    g.bench_function("stanzawall_parse", |b| {
        b.iter(|| {
            let mut r = StreamReader::new(XmlLimits::default());
            r.feed(black_box(&input));
            let mut n = 0;
            while let Ok(Some(ev)) = r.next_event() {
                if let XmlEvent::Stanza(el) = ev {
                    n += el.children.len();
                }
            }
            n
        })
    });

    g.bench_function("stanzawall_parse_16k_reads", |b| {
        b.iter(|| {
            let mut r = StreamReader::new(XmlLimits::default());
            let mut n = 0;
            for chunk in input.chunks(16 * 1024) {
                r.feed(black_box(chunk));
                while let Ok(Some(ev)) = r.next_event() {
                    if let XmlEvent::Stanza(_) = ev {
                        n += 1;
                    }
                }
            }
            n
        })
    });

    // Serialization alone, of the trees parsed once (the escaping and the copy of runs).
    let trees: Vec<_> = {
        let mut r = StreamReader::new(XmlLimits::default());
        r.feed(&input);
        std::iter::from_fn(|| r.next_event().ok().flatten())
            .filter_map(|ev| if let XmlEvent::Stanza(el) = ev { Some(el) } else { None })
            .collect()
    };
    g.bench_function("stanzawall_serialize", |b| {
        let mut out = Vec::with_capacity(input.len());
        b.iter(|| {
            out.clear();
            for el in black_box(&trees) {
                el.write_to(&mut out, NS_CLIENT);
            }
            out.len()
        })
    });

    g.bench_function("stanzawall_parse_and_serialize", |b| {
        let mut out = Vec::with_capacity(input.len());
        b.iter(|| {
            out.clear();
            let mut r = StreamReader::new(XmlLimits::default());
            r.feed(black_box(&input));
            while let Ok(Some(ev)) = r.next_event() {
                if let XmlEvent::Stanza(el) = ev {
                    el.write_to(&mut out, NS_CLIENT);
                }
            }
            out.len()
        })
    });

    g.bench_function("quick_xml_tokenize_only", |b| {
        b.iter(|| {
            let mut r = quick_xml::Reader::from_reader(black_box(&input[..]));
            let mut n = 0;
            loop {
                match r.read_event() {
                    Ok(quick_xml::events::Event::Eof) | Err(_) => break,
                    Ok(_) => n += 1,
                }
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
