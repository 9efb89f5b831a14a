use std::sync::Arc;

use super::inspect::{hex, luhn_valid, parse_sha256, SNIFF_BYTES};
use super::mediate::{self, ProxyIq, NS_BYTESTREAMS, NS_DISCO_ITEMS};
use super::socks5::{self, Handshake, Socks5Error};
use super::*;
use crate::stream::NS_CLIENT;
use crate::xml::Element;

const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

fn policy(f: impl FnOnce(&mut InspectPolicy)) -> Arc<InspectPolicy> {
    let mut p = InspectPolicy { hold_back: 16, ..InspectPolicy::default() };
    f(&mut p);
    Arc::new(p)
}

/// Push `data` in chunks of `chunk`; returns what was released and the outcome.
fn run(p: &Arc<InspectPolicy>, data: &[u8], chunk: usize, verdict: ScanVerdict) -> (Vec<u8>, Result<(), Refusal>) {
    let mut ins = match Inspection::new(p.clone(), None) {
        Ok(i) => i,
        Err(r) => return (Vec::new(), Err(r)),
    };
    let mut out = Vec::new();
    for c in data.chunks(chunk.max(1)) {
        match ins.push(c) {
            Ok(b) => out.extend(b),
            Err(r) => return (out, Err(r)),
        }
    }
    if let Err(r) = ins.finish() {
        return (out, Err(r));
    }
    match ins.scanned(verdict) {
        Ok(b) => {
            out.extend(b);
            (out, Ok(()))
        }
        Err(r) => (out, Err(r)),
    }
}

fn bulk(n: usize) -> Vec<u8> {
    (0..n).map(|i| b"abcdefghij klmnopqrstuvwxyz\n"[i % 28]).collect()
}

#[test]
fn a_clean_file_passes_whole_at_every_chunk_size() {
    let p = policy(|_| {});
    let data = bulk(100_000);
    for chunk in [1, 7, 4096, 100_000] {
        let (out, r) = run(&p, &data, chunk, ScanVerdict::Clean);
        assert_eq!(r, Ok(()));
        assert_eq!(out, data, "chunk {chunk}");
    }
}

#[test]
fn the_tail_is_held_until_the_verdict_and_never_released_on_refusal() {
    let p = policy(|p| p.hold_back = 1000);
    let data = bulk(50_000);
    let mut ins = Inspection::new(p.clone(), None).unwrap();
    let mut out = Vec::new();
    for c in data.chunks(3000) {
        out.extend(ins.push(c).unwrap());
    }
    assert_eq!(out.len(), data.len() - 1000, "everything but the held tail is released");
    let facts = ins.finish().unwrap().clone();
    assert_eq!(facts.bytes, 50_000);
    let r = ins.scanned(ScanVerdict::Infected("Local.EICAR.UNOFFICIAL".into())).unwrap_err();
    assert_eq!(r.detector, Detector::Antivirus);
    assert!(ins.push(b"more").is_err(), "refused stays refused");
    assert!(out.len() < data.len(), "the receiver never gets the whole file");
}

#[test]
fn nothing_is_released_before_the_type_is_known() {
    let p = policy(|p| p.hold_back = 1);
    let mut ins = Inspection::new(p, None).unwrap();
    assert!(ins.push(&bulk(SNIFF_BYTES - 1)).unwrap().is_empty());
    assert_eq!(ins.push(b"x").unwrap().len(), SNIFF_BYTES - 1);
}

#[test]
fn size_cap_declared_and_counted() {
    let p = policy(|p| p.max_bytes = 10_000);
    assert_eq!(Inspection::new(p.clone(), Some(10_001)).unwrap_err().detector, Detector::Size);
    assert!(Inspection::new(p.clone(), Some(10_000)).is_ok());
    let (out, r) = run(&p, &bulk(10_001), 1000, ScanVerdict::Clean);
    assert_eq!(r.unwrap_err().detector, Detector::Size);
    assert!(out.len() < 10_000);
    assert_eq!(run(&p, &bulk(10_000), 1000, ScanVerdict::Clean).1, Ok(()));
}

#[test]
fn media_type_from_content_against_deny_and_allow_lists() {
    // A zip's local file header, whatever the file is called.
    let mut zip = b"PK\x03\x04\x14\x00\x00\x00\x08\x00".to_vec();
    zip.extend(bulk(100));
    let deny = policy(|p| p.deny_types = vec!["application/zip".into()]);
    let r = run(&deny, &zip, 5, ScanVerdict::Clean).1.unwrap_err();
    assert_eq!(r.detector, Detector::Type);
    assert!(r.detail.contains("application/zip"), "{r}");
    let allow = policy(|p| p.allow_types = vec!["image/png".into()]);
    assert_eq!(run(&allow, &bulk(100), 5, ScanVerdict::Clean).1.unwrap_err().detector, Detector::Type);
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    assert_eq!(run(&allow, &png, 5, ScanVerdict::Clean).1, Ok(()));
}

#[test]
fn hash_list_refuses_at_the_end() {
    let digest = ring::digest::digest(&ring::digest::SHA256, EICAR);
    let listed = parse_sha256(&hex(digest.as_ref()).to_uppercase()).unwrap();
    let p = policy(|p| {
        p.hash_deny.insert(listed);
    });
    let (out, r) = run(&p, EICAR, 10, ScanVerdict::Clean);
    assert_eq!(r.unwrap_err().detector, Detector::Hash);
    assert!(out.len() < EICAR.len());
    assert_eq!(run(&p, b"something else", 10, ScanVerdict::Clean).1, Ok(()));
    assert_eq!(parse_sha256("zz"), None);
}

#[test]
fn dlp_keywords_patterns_and_card_numbers_across_chunk_boundaries() {
    let dlp = Dlp::new(&["CONFIDENTIAL".into()], &[r"ACME-[0-9]{6}".into()], true).unwrap();
    let p = policy(|p| p.dlp = Some(dlp));
    for (text, what) in [
        ("quarterly numbers, Confidential, do not share", "keyword"),
        ("ticket ACME-123456 attached", "pattern"),
        ("card 4111 1111 1111 1111 exp 12/30", "card"),
    ] {
        let mut data = bulk(20_000);
        data.extend_from_slice(text.as_bytes());
        data.extend(bulk(20_000));
        for chunk in [1, 5, 4096] {
            let (out, r) = run(&p, &data, chunk, ScanVerdict::Clean);
            let r = r.unwrap_err();
            assert_eq!(r.detector, Detector::Dlp, "{what} at chunk {chunk}");
            assert!(r.detail.contains(what), "{r}");
            assert!(out.len() < 20_000 + text.len(), "cut before the tail");
        }
    }
    // Not Luhn-valid: passes.
    assert_eq!(run(&p, b"order 4111 1111 1111 1112 shipped", 3, ScanVerdict::Clean).1, Ok(()));
    assert!(Dlp::new(&[], &["(".into()], false).is_err());
}

#[test]
fn dlp_skips_binary_types() {
    let dlp = Dlp::new(&["CONFIDENTIAL".into()], &[], false).unwrap();
    let p = policy(|p| p.dlp = Some(dlp));
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    png.extend_from_slice(b"CONFIDENTIAL");
    assert_eq!(run(&p, &png, 3, ScanVerdict::Clean).1, Ok(()));
}

#[test]
fn luhn() {
    assert!(luhn_valid(b"4111111111111111"));
    assert!(luhn_valid(b"5500-0000-0000-0004"));
    assert!(!luhn_valid(b"4111111111111112"));
    assert!(!luhn_valid(b"1234"));
}

#[test]
fn scanner_failure_blocks_or_passes_as_configured() {
    let block = policy(|_| {});
    let r = run(&block, b"data", 2, ScanVerdict::Failed("clamd: connection refused".into())).1.unwrap_err();
    assert_eq!(r.detector, Detector::Scanner);
    let pass = policy(|p| p.on_scanner_error = OnScannerError::Pass);
    let mut ins = Inspection::new(pass, None).unwrap();
    let mut out = ins.push(b"data").unwrap();
    ins.finish().unwrap();
    out.extend(ins.scanned(ScanVerdict::Failed("down".into())).unwrap());
    assert_eq!(out, b"data");
    assert!(ins.facts().scanner_failed_open);
}

#[test]
fn socks5_xep0065_handshake_at_every_split() {
    let hash = socks5::stream_hash("sid1", "alice@example.test/a", "bob@example.test/b");
    assert_eq!(hash.len(), 40);
    let mut bytes = vec![5, 2, 0x02, 0x00];
    bytes.extend([5, 1, 0, 3, 40]);
    bytes.extend(hash.as_bytes());
    bytes.extend([0, 0]);
    bytes.extend(b"early");
    for split in 0..=bytes.len() {
        let mut h = Handshake::new();
        let a = h.feed(&bytes[..split]);
        let b = h.feed(&bytes[split..]);
        let mut reply = a.reply.clone();
        reply.extend(&b.reply);
        assert_eq!(reply, vec![5, 0], "method choice only; success is sent after pairing");
        // After the request the handshake reads nothing more: later bytes are the caller's.
        let (req, later) = match a.outcome {
            Some(o) => (o.unwrap(), &bytes[split..]),
            None => (b.outcome.unwrap().unwrap(), &[][..]),
        };
        assert_eq!(req.hash, hash);
        assert_eq!([req.early.as_slice(), later].concat(), b"early");
    }
    let ok = socks5::reply(socks5::ReplyCode::Succeeded, &hash);
    assert_eq!(&ok[..5], &[5, 0, 0, 3, 40]);
}

fn refused(bytes: &[u8]) -> (Vec<u8>, Socks5Error) {
    let step = Handshake::new().feed(bytes);
    (step.reply, step.outcome.unwrap().unwrap_err())
}

#[test]
fn socks5_refuses_anything_but_a_stream_hash_connect() {
    assert_eq!(refused(&[4, 1, 0, 80, 127, 0, 0, 1, 0]).1, Socks5Error::Version(4));
    let (reply, e) = refused(&[5, 1, 0x02]);
    assert_eq!((reply, e), (vec![5, 0xff], Socks5Error::NoAcceptableMethod));
    // CONNECT to an IPv4 address: the relay never dials anywhere.
    let (reply, e) = refused(&[5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 22]);
    assert_eq!(e, Socks5Error::AddressType(1));
    assert_eq!(reply[2..4], [5, 0x08]);
    // BIND.
    assert_eq!(refused(&[5, 1, 0, 5, 2, 0, 3, 1, b'a', 0, 0]).1, Socks5Error::Command(2));
    // A host name, not a hash.
    let mut req = vec![5, 1, 0, 5, 1, 0, 3, 11];
    req.extend(b"example.com");
    req.extend([0, 80]);
    let (reply, e) = refused(&req);
    assert_eq!(e, Socks5Error::NotAStreamHash);
    assert_eq!(reply[2..4], [5, 0x02]);
    // A hash with a port.
    let mut req = vec![5, 1, 0, 5, 1, 0, 3, 40];
    req.extend([b'a'; 40]);
    req.extend([0, 1]);
    assert_eq!(refused(&req).1, Socks5Error::NotAStreamHash);
}

fn settings() -> ProxySettings {
    ProxySettings {
        jid: "proxy.example.test".into(),
        host: "192.0.2.7".into(),
        port: 7777,
        mediate: true,
        upload_url: None,
    }
}

fn parse(xml: &str) -> Element {
    let mut r = crate::xml::StreamReader::new(crate::xml::XmlLimits::default());
    r.feed(
        format!("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>{xml}")
            .as_bytes(),
    );
    loop {
        match r.next_event() {
            Ok(Some(crate::xml::XmlEvent::Stanza(e))) => return e,
            Ok(Some(_)) => continue,
            other => panic!("no element: {other:?}"),
        }
    }
}

#[test]
fn offers_keep_only_the_gateways_proxy() {
    let mut offer = parse(
        "<iq type='set' id='o1' to='bob@example.test/b'><query xmlns='http://jabber.org/protocol/bytestreams' sid='s1'>\
         <streamhost jid='alice@example.test/a' host='10.0.0.5' port='6000'/>\
         <streamhost jid='proxy.other.test' host='198.51.100.1' port='7777'/>\
         <streamhost jid='proxy.example.test' host='203.0.113.9' port='1'/></query></iq>",
    );
    assert_eq!(mediate::rewrite_offer(&mut offer, &settings()), 2);
    let q = offer.child(NS_BYTESTREAMS, "query").unwrap();
    let hosts: Vec<_> = q.elements().collect();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].attr("jid"), Some("proxy.example.test"));
    assert_eq!((hosts[0].attr("host"), hosts[0].attr("port")), (Some("192.0.2.7"), Some("7777")));
    assert_eq!(q.attr("sid"), Some("s1"));
    // Idempotent; other iqs untouched.
    assert_eq!(mediate::rewrite_offer(&mut offer, &settings()), 0);
    let mut used = parse(
        "<iq type='result' id='o1'><query xmlns='http://jabber.org/protocol/bytestreams'>\
         <streamhost-used jid='proxy.example.test'/></query></iq>",
    );
    let before = used.clone();
    assert_eq!(mediate::rewrite_offer(&mut used, &settings()), 0);
    assert_eq!(used, before);
}

#[test]
fn the_proxy_answers_discovery_and_activation_for_the_bound_requester_only() {
    let bound = crate::jid::parse_full("alice@example.test/a").unwrap();
    let s = settings();
    let info = parse("<iq type='get' id='d1' to='proxy.example.test' from='alice@example.test/a'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    let Some(ProxyIq::Answer(a)) = mediate::proxy_iq(&info, &s, &bound) else { panic!() };
    let xml = String::from_utf8(a.to_bytes(NS_CLIENT)).unwrap();
    assert!(xml.contains("category=\"proxy\"") || xml.contains("category='proxy'"), "{xml}");
    let host = parse("<iq type='get' id='d2' to='proxy.example.test' from='alice@example.test/a'><query xmlns='http://jabber.org/protocol/bytestreams'/></iq>");
    let Some(ProxyIq::Answer(a)) = mediate::proxy_iq(&host, &s, &bound) else { panic!() };
    assert_eq!(
        a.child(NS_BYTESTREAMS, "query").unwrap().child(NS_BYTESTREAMS, "streamhost").unwrap().attr("port"),
        Some("7777")
    );
    let act = parse("<iq type='set' id='a1' to='proxy.example.test' from='alice@example.test/a'><query xmlns='http://jabber.org/protocol/bytestreams' sid='s1'><activate>bob@example.test/b</activate></query></iq>");
    let Some(ProxyIq::Activate { hash, requester, .. }) = mediate::proxy_iq(&act, &s, &bound) else { panic!() };
    assert_eq!(requester, "alice@example.test/a");
    assert_eq!(hash, socks5::stream_hash("s1", "alice@example.test/a", "bob@example.test/b"));
    // Another user activating the same sid computes another hash: it pairs nothing.
    let mallory = crate::jid::parse_full("mallory@example.test/m").unwrap();
    let Some(ProxyIq::Activate { hash: other, .. }) = mediate::proxy_iq(&act, &s, &mallory) else { panic!() };
    assert_ne!(other, hash);
    let bad = parse("<iq type='set' id='a2' to='proxy.example.test'><query xmlns='http://jabber.org/protocol/bytestreams' sid='s1'><activate/></query></iq>");
    assert!(matches!(mediate::proxy_iq(&bad, &s, &bound), Some(ProxyIq::Answer(e)) if e.attr("type") == Some("error")));
}

#[test]
fn the_servers_disco_items_list_the_proxy_once() {
    let mut items = parse("<iq type='result' id='i1' from='example.test'><query xmlns='http://jabber.org/protocol/disco#items'><item jid='upload.example.test'/></query></iq>");
    assert!(mediate::add_proxy_item(&mut items, &settings(), "example.test"));
    assert!(!mediate::add_proxy_item(&mut items, &settings(), "example.test"));
    assert_eq!(items.child(NS_DISCO_ITEMS, "query").unwrap().elements().count(), 2);
    let mut foreign = parse(
        "<iq type='result' id='i2' from='other.test'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
    );
    assert!(!mediate::add_proxy_item(&mut foreign, &settings(), "example.test"));
}

#[test]
fn jingle_s5b_candidates_keep_only_the_gateways_proxy() {
    let mut init = parse(
        "<iq type='set' id='j1' to='bob@example.test/b'><jingle xmlns='urn:xmpp:jingle:1' action='session-initiate' sid='js1'>\
         <content creator='initiator' name='file'><description xmlns='urn:xmpp:jingle:apps:file-transfer:5'/>\
         <transport xmlns='urn:xmpp:jingle:transports:s5b:1' sid='t1' dstaddr='abc' mode='tcp'>\
         <candidate cid='c1' host='192.168.4.1' jid='alice@example.test/a' port='5086' priority='8257636' type='direct'/>\
         <candidate cid='c2' host='203.0.113.5' jid='alice@example.test/a' port='5087' priority='7929856' type='assisted'/>\
         <candidate cid='c3' host='198.51.100.1' jid='proxy.other.test' port='7777' priority='655360' type='proxy'/>\
         </transport></content></jingle></iq>",
    );
    assert_eq!(mediate::rewrite_offer(&mut init, &settings()), 3);
    let t = init
        .child(mediate::NS_JINGLE, "jingle")
        .and_then(|j| j.child(mediate::NS_JINGLE, "content"))
        .and_then(|c| c.child(mediate::NS_JINGLE_S5B, "transport"))
        .unwrap();
    let c: Vec<_> = t.elements().collect();
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].attr("jid"), c[0].attr("host"), c[0].attr("port"), c[0].attr("type"), c[0].attr("cid")),
        (Some("proxy.example.test"), Some("192.0.2.7"), Some("7777"), Some("proxy"), Some(mediate::PROXY_CID))
    );
    assert_eq!((t.attr("sid"), t.attr("dstaddr")), (Some("t1"), Some("abc")));
    assert_eq!(mediate::rewrite_offer(&mut init, &settings()), 0, "idempotent");
    // transport-info naming the used candidate is left alone.
    let mut used = parse(
        "<iq type='set' id='j2'><jingle xmlns='urn:xmpp:jingle:1' action='transport-info' sid='js1'><content creator='initiator' name='file'>\
         <transport xmlns='urn:xmpp:jingle:transports:s5b:1' sid='t1'><candidate-used cid='stanzawall-proxy'/></transport></content></jingle></iq>",
    );
    let before = used.clone();
    assert_eq!(mediate::rewrite_offer(&mut used, &settings()), 0);
    assert_eq!(used, before);
}
