//! The component machine against scripted server bytes: handshake, privileges (both
//! namespaces), roster fetches and pushes, pubsub, privileged sends, and hostile input.

use std::time::{Duration, Instant};

use super::*;

const SERVER_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
     xmlns:stream='http://etherx.jabber.org/streams' from='stanzawall.example.test' id='3BF96D32'>";

fn cfg() -> ComponentConfig {
    ComponentConfig {
        jid: "stanzawall.example.test".to_owned(),
        secret: "s3cr3t".to_owned(),
        limits: XmlLimits::default(),
        handshake_timeout: Duration::from_secs(10),
        iq_timeout: Duration::from_secs(5),
    }
}

fn out(c: &mut Component) -> String {
    String::from_utf8(c.take_output()).expect("utf-8")
}

fn events(c: &mut Component) -> Vec<ComponentEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// A connected component; the privileges message of `privilege` (if any) is fed.
fn connected(now: Instant, privilege: Option<&str>) -> Component {
    let mut c = Component::new(cfg(), now);
    let header = out(&mut c);
    assert!(header.contains("xmlns='jabber:component:accept'") && header.contains("to='stanzawall.example.test'"));
    let tag = header.split("<stream:stream").nth(1).unwrap_or_default();
    assert!(!tag.contains("version"), "XEP-0114 streams carry no version: {header}");
    c.feed(SERVER_HEADER.as_bytes(), now);
    let hs = out(&mut c);
    assert_eq!(hs, format!("<handshake>{}</handshake>", handshake_digest("3BF96D32", "s3cr3t")));
    assert!(!c.is_open());
    c.feed(b"<handshake/>", now);
    assert!(c.is_open());
    assert_eq!(events(&mut c), vec![ComponentEvent::Connected]);
    if let Some(p) = privilege {
        c.feed(p.as_bytes(), now);
    }
    c
}

const PRIV2: &str =
    "<message from='example.test' to='stanzawall.example.test'><privilege xmlns='urn:xmpp:privilege:2'>\
     <perm access='roster' type='both'/><perm access='message' type='outgoing'/></privilege></message>";

#[test]
fn the_handshake_is_hex_sha1_of_stream_id_and_secret() {
    // Checked against the digest computed independently: `printf %s 3BF96D32s3cr3t | sha1sum`.
    assert_eq!(handshake_digest("3BF96D32", "s3cr3t"), "ba33290100f616a33656a931798d6c9011cfa840");
}

#[test]
fn a_refused_handshake_closes_with_not_authorized() {
    let now = Instant::now();
    let mut c = Component::new(cfg(), now);
    c.feed(SERVER_HEADER.as_bytes(), now);
    c.feed(
        b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>",
        now,
    );
    assert!(c.is_closed());
    assert!(matches!(events(&mut c).as_slice(), [ComponentEvent::Closed(ComponentError::NotAuthorized(_))]));
}

#[test]
fn no_answer_to_the_handshake_times_out() {
    let now = Instant::now();
    let mut c = Component::new(cfg(), now);
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(10)));
    c.handle_timeout(now + Duration::from_secs(9));
    assert!(!c.is_closed());
    c.handle_timeout(now + Duration::from_secs(10));
    assert!(matches!(events(&mut c).as_slice(), [ComponentEvent::Closed(ComponentError::Timeout("handshake"))]));
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn a_wrong_header_is_refused() {
    let now = Instant::now();
    for header in [
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='x'>",
        "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'>",
    ] {
        let mut c = Component::new(cfg(), now);
        c.feed(header.as_bytes(), now);
        assert!(c.is_closed(), "{header}");
        assert!(matches!(events(&mut c).as_slice(), [ComponentEvent::Closed(ComponentError::Protocol(_))]));
    }
}

#[test]
fn privileges_are_read_in_both_namespaces() {
    let now = Instant::now();
    let mut c = connected(now, Some(PRIV2));
    let p = Privileges { roster_get: true, roster_push: true, message_outgoing: true };
    assert_eq!(events(&mut c), vec![ComponentEvent::Privileges { server: "example.test".to_owned(), privileges: p }]);
    assert_eq!(c.roster_domains(), vec!["example.test".to_owned()]);
    // ejabberd 23.01: the older namespace, every permission listed, pushes unknown there.
    let v1 = "<message from='other.test' to='stanzawall.example.test'><privilege xmlns='urn:xmpp:privilege:1'>\
         <perm access='message' type='none'/><perm access='roster' type='get'/><perm access='presence' type='none'/>\
         </privilege></message>";
    c.feed(v1.as_bytes(), now);
    let p1 = Privileges { roster_get: true, roster_push: false, message_outgoing: false };
    assert_eq!(events(&mut c), vec![ComponentEvent::Privileges { server: "other.test".to_owned(), privileges: p1 }]);
    // push='false' turns pushes off; set-only grants no reading.
    let el = crate::xml::parse_stanzas(
        "<privilege xmlns='urn:xmpp:privilege:2'><perm access='roster' type='get' push='false'/></privilege>",
        XmlLimits::default(),
    )
    .expect("parses");
    assert_eq!(parse_privilege(&el[0]), Some(Privileges { roster_get: true, ..Default::default() }));
    let el = crate::xml::parse_stanzas(
        "<privilege xmlns='urn:xmpp:privilege:2'><perm access='roster' type='set'/><perm access='message' type='all'/></privilege>",
        XmlLimits::default(),
    )
    .expect("parses");
    assert_eq!(parse_privilege(&el[0]), Some(Privileges::default()));
}

#[test]
fn an_advertisement_from_a_user_grants_nothing() {
    let now = Instant::now();
    let forged = PRIV2.replace("from='example.test'", "from='mallory@example.test'");
    let mut c = connected(now, Some(&forged));
    assert!(events(&mut c).is_empty());
    assert!(!c.can_fetch(&bare("bob@example.test")));
}

fn bare(s: &str) -> BareJid {
    crate::jid::parse(s).expect("valid").to_bare()
}

#[test]
fn a_roster_is_fetched_with_an_iq_to_the_users_bare_jid() {
    let now = Instant::now();
    let mut c = connected(now, Some(PRIV2));
    events(&mut c);
    assert!(!c.fetch_roster(&bare("bob@remote.example"), now), "no privilege there");
    assert!(c.fetch_roster(&bare("bob@example.test"), now));
    assert!(c.fetch_roster(&bare("bob@example.test"), now), "one in flight serves both");
    let sent = out(&mut c);
    assert_eq!(
        sent,
        "<iq type='get' from='stanzawall.example.test' to='bob@example.test' id='sw1'><query xmlns='jabber:iq:roster'/></iq>"
    );
    // An answer from someone else is not bob's roster.
    c.feed(b"<iq type='result' from='mallory@example.test' id='sw1'><query xmlns='jabber:iq:roster'/></iq>", now);
    assert!(matches!(events(&mut c).as_slice(), [ComponentEvent::RosterFailed { .. }]));
    assert!(c.fetch_roster(&bare("bob@example.test"), now));
    out(&mut c);
    c.feed(
        b"<iq type='result' from='bob@example.test' to='stanzawall.example.test' id='sw2'><query xmlns='jabber:iq:roster'>\
          <item jid='alice@example.test' subscription='both'/><item jid='eve@example.test' subscription='none'/></query></iq>",
        now,
    );
    match events(&mut c).as_slice() {
        [ComponentEvent::Roster { owner, items }] => {
            assert_eq!(owner, &bare("bob@example.test"));
            assert_eq!(items.len(), 2);
            assert!(items[0].contact && !items[1].contact);
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn an_unanswered_fetch_fails_at_its_deadline_and_errors_carry_the_condition() {
    let now = Instant::now();
    let mut c = connected(now, Some(PRIV2));
    events(&mut c);
    c.fetch_roster(&bare("bob@example.test"), now);
    c.fetch_roster(&bare("carol@example.test"), now);
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(5)));
    c.feed(
        b"<iq type='error' from='carol@example.test' id='sw2'><error type='auth'>\
          <forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
        now,
    );
    assert_eq!(
        events(&mut c),
        vec![ComponentEvent::RosterFailed { owner: bare("carol@example.test"), reason: "forbidden".to_owned() }]
    );
    c.handle_timeout(now + Duration::from_secs(5));
    assert_eq!(
        events(&mut c),
        vec![ComponentEvent::RosterFailed { owner: bare("bob@example.test"), reason: "timeout".to_owned() }]
    );
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn roster_pushes_are_applied_only_from_a_granting_domain_and_answered() {
    let now = Instant::now();
    let mut c = connected(now, Some(PRIV2));
    events(&mut c);
    c.feed(
        b"<iq type='set' from='bob@example.test' to='stanzawall.example.test' id='p1'><query xmlns='jabber:iq:roster'>\
          <item jid='carol@example.test' subscription='to'/></query></iq>",
        now,
    );
    assert_eq!(out(&mut c), "<iq type='result' to='bob@example.test' from='stanzawall.example.test' id='p1'/>");
    assert!(matches!(events(&mut c).as_slice(), [ComponentEvent::RosterPush { owner, items }]
        if owner == &bare("bob@example.test") && items.len() == 1));
    c.feed(
        b"<iq type='set' from='bob@elsewhere.example' id='p2'><query xmlns='jabber:iq:roster'>\
          <item jid='carol@example.test' subscription='to'/></query></iq>",
        now,
    );
    assert!(out(&mut c).contains("<forbidden"));
    assert!(events(&mut c).is_empty());
}

#[test]
fn pubsub_nodes_are_followed_and_their_events_read_only_from_their_service() {
    let now = Instant::now();
    let mut c = connected(now, None);
    let node = PubsubNode { service: "pubsub.example.test".to_owned(), node: "spam_source_domains".to_owned() };
    c.follow(node.clone(), now);
    let sent = out(&mut c);
    assert!(sent.contains("<subscribe node='spam_source_domains' jid='stanzawall.example.test'/>"), "{sent}");
    assert!(sent.contains("<items node='spam_source_domains'/>"), "{sent}");
    c.feed(b"<iq type='result' from='pubsub.example.test' id='sw1'/>", now);
    c.feed(
        b"<iq type='result' from='pubsub.example.test' id='sw2'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
          <items node='spam_source_domains'><item id='spam.example'/><item id='bad.example'/></items></pubsub></iq>",
        now,
    );
    let all = NodeChange::All { ids: vec!["spam.example".to_owned(), "bad.example".to_owned()], complete: true };
    assert_eq!(events(&mut c), vec![ComponentEvent::Node { node: node.clone(), change: all }]);
    let event = |from: &str, inner: &str| {
        format!(
            "<message from='{from}' to='stanzawall.example.test'><event xmlns='http://jabber.org/protocol/pubsub#event'>{inner}</event></message>"
        )
    };
    c.feed(
        event("mallory.example", "<items node='spam_source_domains'><item id='x.example'/></items>").as_bytes(),
        now,
    );
    assert!(events(&mut c).is_empty(), "only the node's service speaks for it");
    c.feed(
        event(
            "pubsub.example.test",
            "<items node='spam_source_domains'><item id='new.example'/><retract id='bad.example'/></items>",
        )
        .as_bytes(),
        now,
    );
    assert_eq!(
        events(&mut c),
        vec![
            ComponentEvent::Node { node: node.clone(), change: NodeChange::Published(vec!["new.example".to_owned()]) },
            ComponentEvent::Node { node: node.clone(), change: NodeChange::Retracted(vec!["bad.example".to_owned()]) },
        ]
    );
    c.feed(event("pubsub.example.test", "<purge node='spam_source_domains'/>").as_bytes(), now);
    assert_eq!(events(&mut c), vec![ComponentEvent::Node { node, change: NodeChange::Purged }]);
}

#[test]
fn followed_nodes_are_asked_again_after_a_reconnect() {
    let now = Instant::now();
    let mut c = Component::new(cfg(), now);
    let node = PubsubNode { service: "pubsub.example.test".to_owned(), node: "n".to_owned() };
    c.follow(node, now);
    assert!(!out(&mut c).contains("<iq"), "nothing is sent before the handshake");
    c.feed(SERVER_HEADER.as_bytes(), now);
    c.feed(b"<handshake/>", now);
    assert!(out(&mut c).contains("<subscribe node='n'"));
}

#[test]
fn a_privileged_message_is_wrapped_as_xep_0356_says() {
    let now = Instant::now();
    let mut c = connected(now, Some(PRIV2));
    events(&mut c);
    let msg = crate::xml::parse_stanzas(
        "<message xmlns='jabber:client' from='example.test' to='admin@example.test' type='chat'><body>hi</body></message>",
        XmlLimits::default(),
    )
    .expect("parses")
    .remove(0);
    c.send_privileged(msg.clone()).expect("permitted");
    assert_eq!(
        out(&mut c),
        "<message from='stanzawall.example.test' to='example.test'><privilege xmlns='urn:xmpp:privilege:2'>\
         <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='example.test' \
         to='admin@example.test' type='chat'><body>hi</body></message></forwarded></privilege></message>"
    );
    let mut foreign = msg.clone();
    foreign.set_attr("from", "someone@elsewhere.example");
    assert!(matches!(c.send_privileged(foreign), Err(SendError::NotPermitted(_))));
    let mut full = msg;
    full.set_attr("from", "bob@example.test/phone");
    assert!(matches!(c.send_privileged(full), Err(SendError::NotPermitted(_))));
    let direct = Element::new(NS_CLIENT, "message").with_attr("to", "admin@example.test");
    c.send_direct(direct).expect("connected");
    assert_eq!(out(&mut c), "<message to='admin@example.test' from='stanzawall.example.test'/>");
}

#[test]
fn nothing_is_sent_while_disconnected() {
    let now = Instant::now();
    let mut c = Component::new(cfg(), now);
    out(&mut c);
    assert_eq!(c.send_direct(Element::new(NS_CLIENT, "message")), Err(SendError::NotConnected));
    assert!(!c.fetch_roster(&bare("bob@example.test"), now));
    let mut c = connected(now, Some(PRIV2));
    events(&mut c);
    c.fetch_roster(&bare("bob@example.test"), now);
    c.disconnected("reset");
    let ev = events(&mut c);
    assert!(
        matches!(ev.as_slice(), [ComponentEvent::RosterFailed { reason, .. }, ComponentEvent::Closed(_)] if reason == "disconnected")
    );
    assert!(!c.can_fetch(&bare("bob@example.test")), "privileges end with the connection");
}

#[test]
fn hostile_input_closes_without_panic_and_state_stays_bounded() {
    let now = Instant::now();
    // Garbage, a DTD, a stanza past the limit, unknown stanzas, answers to nothing.
    for bad in [
        &b"\x00\xff\xfe garbage"[..],
        b"<!DOCTYPE x [<!ENTITY a 'b'>]>",
        b"<iq type='result' id='nope'/><iq type='get' id='q' from='x@example.test'><ping xmlns='urn:xmpp:ping'/></iq>",
    ] {
        let mut c = connected(now, Some(PRIV2));
        events(&mut c);
        c.feed(bad, now);
        let _ = out(&mut c);
        let _ = events(&mut c);
    }
    let mut c = connected(now, Some(PRIV2));
    events(&mut c);
    let huge = format!("<message from='example.test'><body>{}</body></message>", "a".repeat(300_000));
    c.feed(huge.as_bytes(), now);
    assert!(c.is_closed(), "a stanza past the limit closes the stream");
    // A flood of advertisements from many domains: at most MAX_DOMAINS remembered.
    let mut c = connected(now, None);
    for i in 0..(MAX_DOMAINS + 50) {
        let m = PRIV2.replace("from='example.test'", &format!("from='d{i}.example'"));
        c.feed(m.as_bytes(), now);
    }
    assert_eq!(c.roster_domains().len(), MAX_DOMAINS);
    // Fetches beyond the cap of iqs in flight are refused, not queued.
    let mut c = connected(now, Some(PRIV2));
    events(&mut c);
    for i in 0..(MAX_PENDING + 10) {
        c.fetch_roster(&bare(&format!("u{i}@example.test")), now);
    }
    assert_eq!(c.pending.len(), MAX_PENDING);
    // Split at every byte boundary, the conversation means the same.
    let script = format!("{SERVER_HEADER}<handshake/>{PRIV2}");
    for cut in 0..script.len() {
        let mut c = Component::new(cfg(), now);
        c.feed(&script.as_bytes()[..cut], now);
        c.feed(&script.as_bytes()[cut..], now);
        assert!(c.is_open(), "cut at {cut}");
        assert_eq!(c.roster_domains(), vec!["example.test".to_owned()], "cut at {cut}");
    }
}

#[test]
fn a_report_becomes_a_readable_message_for_the_admin() {
    let now = Instant::now();
    let mut c = connected(now, None);
    let m = report_message("admin@example.test", "alice@example.test", "carol@example.test", "spam", Some("ads <b>"));
    c.send_direct(m).expect("connected");
    let sent = out(&mut c);
    assert!(
        sent.starts_with("<message to='admin@example.test' type='normal' from='stanzawall.example.test'>"),
        "{sent}"
    );
    assert!(
        sent.contains("<body>Spam report: alice@example.test reported carol@example.test (spam): ads &lt;b&gt;</body>"),
        "{sent}"
    );
    assert!(
        sent.contains(
            "<report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam' jid='carol@example.test'>"
        ),
        "{sent}"
    );
}
