//! The anti-spam conditions in the rule language: parsed with file/line/key errors, evaluated
//! on the same path as every rule, with the state learned through the session's own pipeline
//! (`session::decide`).

use std::time::{Duration, Instant};

use super::tests::{error, policy, stanza};
use super::*;
use crate::antispam::Event;
use crate::session::{decide, Decision};

fn bob() -> FullJid {
    jid::parse_full("bob@example.test/laptop").unwrap()
}

fn s2s_in(p: &Policy, xml: &str, rates: &RateTable, now: Instant) -> Verdict {
    let ctx = Context { chain: Chain::S2sIn, user: None, source_ip: "192.0.2.20".parse().unwrap() };
    p.evaluate(&stanza(xml), &ctx, rates, now)
}

fn c2s_in(p: &Policy, user: &str, xml: &str, rates: &RateTable, now: Instant) -> Verdict {
    let user = jid::parse_full(user).unwrap();
    let ctx = Context { chain: Chain::C2sIn, user: Some(&user), source_ip: "192.0.2.10".parse().unwrap() };
    let mut el = stanza(xml);
    match decide(&mut el, &ctx, p, rates, now) {
        Decision::Policy(eval) => eval.outer,
        other => panic!("refused before policy: {other:?}"),
    }
}

/// Relay `xml` from the server to bob's session, as the session does (checks, learning, policy).
fn to_bob(p: &Policy, xml: &str, rates: &RateTable, now: Instant) {
    let user = bob();
    let ctx = Context { chain: Chain::C2sOut, user: Some(&user), source_ip: "192.0.2.10".parse().unwrap() };
    let _ = decide(&mut stanza(xml), &ctx, p, rates, now);
}

const STRANGERS: &str = r#"
[[rule]]
name = "unknown-roster"
chain = ["s2s-in", "c2s-in"]
when = { kind = "message", roster_known = false }
action = "log"

[[rule]]
name = "strangers"
chain = ["s2s-in", "c2s-in"]
when = { kind = ["message", "presence"], type = ["chat", "normal", "subscribe"], stranger = true }
action = "bounce"
text = "You are not in this user's contacts"
"#;

#[test]
fn a_stranger_is_bounced_and_a_contact_passes_once_the_roster_is_seen() {
    let p = policy(STRANGERS);
    assert!(p.uses_contacts());
    let rates = RateTable::new();
    let now = Instant::now();
    let msg = |from: &str, to: &str| format!("<message from='{from}' to='{to}' type='chat'><body>hi</body></message>");
    // Before bob's roster is known nothing is a stranger (logged as unknown).
    let v = s2s_in(&p, &msg("mallory@spam.test/x", "bob@example.test"), &rates, now);
    assert_eq!((v.outcome, v.hits[0].rule.as_ref()), (Outcome::Pass, "unknown-roster"));
    to_bob(
        &p,
        "<iq type='result' id='roster1' to='bob@example.test/laptop'><query xmlns='jabber:iq:roster'>\
           <item jid='carol@remote.test' subscription='both'/></query></iq>",
        &rates,
        now,
    );
    let v = s2s_in(&p, &msg("carol@remote.test/phone", "bob@example.test"), &rates, now);
    assert_eq!(v.outcome, Outcome::Pass, "{v:?}");
    assert!(v.hits.is_empty());
    let v = s2s_in(&p, &msg("mallory@spam.test/x", "bob@example.test"), &rates, now);
    assert!(matches!(v.outcome, Outcome::Bounce { .. }), "{v:?}");
    assert_eq!(v.rule.as_deref(), Some("strangers"));
    // A subscription request from a stranger too; a message to a full JID is not judged.
    let sub = "<presence from='mallory@spam.test' to='bob@example.test' type='subscribe'/>";
    assert!(matches!(s2s_in(&p, sub, &rates, now).outcome, Outcome::Bounce { .. }));
    let full = msg("mallory@spam.test/x", "bob@example.test/laptop");
    assert_eq!(s2s_in(&p, &full, &rates, now).outcome, Outcome::Pass);
    // Local senders too (c2s-in, the recipient's roster decides).
    let v = c2s_in(&p, "alice@example.test/a", &msg("alice@example.test/a", "bob@example.test"), &rates, now);
    assert!(matches!(v.outcome, Outcome::Bounce { .. }));
    // A roster push makes mallory a contact at once.
    to_bob(
        &p,
        "<iq type='set' id='push1'><query xmlns='jabber:iq:roster'>\
           <item jid='mallory@spam.test' subscription='from'/></query></iq>",
        &rates,
        now,
    );
    assert_eq!(s2s_in(&p, &msg("mallory@spam.test/x", "bob@example.test"), &rates, now).outcome, Outcome::Pass);
    // A forged push (from someone else) was refused by the session's checks: nothing learned.
    to_bob(
        &p,
        "<iq type='set' id='push2' from='eve@spam.test'><query xmlns='jabber:iq:roster'>\
           <item jid='eve@spam.test' subscription='both'/></query></iq>",
        &rates,
        now,
    );
    assert!(matches!(
        s2s_in(&p, &msg("eve@spam.test/x", "bob@example.test"), &rates, now).outcome,
        Outcome::Bounce { .. }
    ));
}

#[test]
fn stranger_domain_and_no_learning_without_a_roster_rule() {
    let p = policy(
        r#"
[[rule]]
name = "unknown-domains"
chain = "s2s-in"
when = { kind = "message", stranger_domain = true }
action = "drop"
"#,
    );
    let rates = RateTable::new();
    let now = Instant::now();
    to_bob(
        &p,
        "<iq type='result' id='r'><query xmlns='jabber:iq:roster'><item jid='carol@remote.test' subscription='to'/></query></iq>",
        &rates,
        now,
    );
    let m = |from: &str| format!("<message from='{from}' to='bob@example.test'><body>x</body></message>");
    assert_eq!(s2s_in(&p, &m("dave@remote.test"), &rates, now).outcome, Outcome::Pass, "a known domain");
    assert_eq!(s2s_in(&p, &m("dave@spam.test"), &rates, now).outcome, Outcome::Drop);
    // A policy without roster conditions learns no roster.
    let plain = policy("[[rule]]\nname = \"r\"\nwhen = { kind = \"iq\" }\naction = \"log\"\n");
    let rates = RateTable::new();
    to_bob(
        &plain,
        "<iq type='result' id='r'><query xmlns='jabber:iq:roster'><item jid='carol@remote.test' subscription='to'/></query></iq>",
        &rates,
        now,
    );
    assert_eq!(rates.antispam().contacts.rosters(), 0);
}

#[test]
fn fanout_trips_at_the_twenty_first_distinct_recipient() {
    let p = policy(
        r#"
[[rule]]
name = "fanout"
chain = "c2s-in"
when = { kind = "message", fanout = { recipients = 20, window = "10m", key = "from.bare" } }
action = "bounce"
error = "policy-violation"
"#,
    );
    let rates = RateTable::new();
    let now = Instant::now();
    let outcomes: Vec<bool> = (0..25)
        .map(|i| {
            let xml = format!("<message to='r{i}@example.test' type='chat'><body>hello</body></message>");
            matches!(c2s_in(&p, "spammer@example.test/s", &xml, &rates, now).outcome, Outcome::Bounce { .. })
        })
        .collect();
    assert_eq!(outcomes.iter().position(|&b| b), Some(20));
    assert!(outcomes[20..].iter().all(|&b| b));
    // Writing again to one of the first twenty is fine; another user has a count of its own.
    let again = "<message to='r5@example.test' type='chat'><body>hello</body></message>";
    assert_eq!(c2s_in(&p, "spammer@example.test/s", again, &rates, now).outcome, Outcome::Pass);
    let other = "<message to='r24@example.test' type='chat'><body>hello</body></message>";
    assert_eq!(c2s_in(&p, "alice@example.test/a", other, &rates, now).outcome, Outcome::Pass);
    // Ten minutes later the window has slid past the first twenty.
    let later = now + Duration::from_secs(600);
    let xml = "<message to='new@example.test' type='chat'><body>hello</body></message>";
    assert_eq!(c2s_in(&p, "spammer@example.test/s", xml, &rates, later).outcome, Outcome::Pass);
}

#[test]
fn a_wave_across_senders_is_cut_after_the_threshold_and_named_in_the_hit() {
    let p = policy(
        r#"
[[rule]]
name = "waves"
chain = ["s2s-in", "c2s-in"]
when = { kind = "message", wave = { senders = 3, window = "30m" } }
action = "drop"
"#,
    );
    let rates = RateTable::new();
    let now = Instant::now();
    let names = ["Anna", "Boris", "Chen", "Dora", "Emil", "Femi"];
    let outcomes: Vec<Outcome> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let body = format!(
                "Hello {n}! Your parcel #{} is waiting. Pay the customs fee at https://parcel.example/p/{}",
                4000 + i * 17,
                i * 31
            );
            let xml = format!(
                "<message from='bot{i}@spam{i}.test/x' to='user{i}@example.test' type='chat'><body>{body}</body></message>"
            );
            s2s_in(&p, &xml, &rates, now).outcome
        })
        .collect();
    assert_eq!(outcomes, [Outcome::Pass, Outcome::Pass, Outcome::Drop, Outcome::Drop, Outcome::Drop, Outcome::Drop]);
    let events = rates.antispam().take_events();
    assert!(matches!(&events[..], [Event::Wave { rule, wave }] if rule == "waves" && wave.senders == 3), "{events:?}");
    let xml = "<message from='bot9@spam9.test/x' to='u@example.test'><body>Hello Zed! Your parcel #1 is waiting. \
               Pay the customs fee at https://parcel.example/p/x</body></message>";
    let v = s2s_in(&p, xml, &rates, now);
    let note = v.hits[0].note.as_deref().unwrap_or_default();
    assert!(note.starts_with("wave ") && note.contains("your parcel is waiting"), "{note}");
    assert!(rates.antispam().take_events().is_empty(), "a wave is reported once");
    // Other texts pass.
    let xml = "<message from='bot1@spam1.test/x' to='u@example.test'><body>Are we still meeting for lunch tomorrow at noon?</body></message>";
    assert_eq!(s2s_in(&p, xml, &rates, now).outcome, Outcome::Pass);
}

#[test]
fn reported_senders_and_sha256_lists() {
    let p = policy(
        r#"
[list.rtbl_jids]
entries = ["8a0e3fd6bde7a5f5b5b2e1bc0b67c46b07b4c0e5f9fb9f8f1f8c66f0c0f2b4a1", "{SPAMMER}"]

[[rule]]
name = "reported"
chain = "s2s-in"
when = { reported = { reporters = 2, window = "1h" } }
action = "drop"

[[rule]]
name = "rtbl"
chain = "s2s-in"
when = { from_sha256_in = "rtbl_jids" }
action = "bounce"
"#
        .replace("{SPAMMER}", &hex(ring::digest::digest(&ring::digest::SHA256, b"listed@spam.test").as_ref()))
        .as_str(),
    );
    let rates = RateTable::new();
    let now = Instant::now();
    let m = |from: &str| format!("<message from='{from}' to='bob@example.test'><body>x</body></message>");
    assert!(matches!(s2s_in(&p, &m("listed@spam.test/r"), &rates, now).outcome, Outcome::Bounce { .. }));
    assert_eq!(s2s_in(&p, &m("other@spam.test/r"), &rates, now).outcome, Outcome::Pass);
    let report = "<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='other@spam.test'>\
                  <report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'/></item></block></iq>";
    c2s_in(&p, "alice@example.test/a", report, &rates, now);
    assert_eq!(s2s_in(&p, &m("other@spam.test/r"), &rates, now).outcome, Outcome::Pass, "one reporter");
    c2s_in(&p, "bob@example.test/b", report, &rates, now);
    assert_eq!(s2s_in(&p, &m("other@spam.test/r"), &rates, now).outcome, Outcome::Drop, "two");
    let later = now + Duration::from_secs(3600);
    assert_eq!(s2s_in(&p, &m("other@spam.test/r"), &rates, later).outcome, Outcome::Pass, "an hour later");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn anti_spam_conditions_are_checked_with_file_line_and_key() {
    let rule = |when: &str| format!("[[rule]]\nname = \"r\"\nwhen = {{ {when} }}\naction = \"drop\"\n");
    let cases = [
        ("stranger = \"yes\"", "rule[0].when.stranger: expected true or false"),
        ("fanout = { recipients = 20 }", "rule[0].when.fanout.window: missing"),
        (
            "fanout = { recipients = 0, window = \"1m\" }",
            "rule[0].when.fanout.recipients: expected an integer from 1 to 10000",
        ),
        ("fanout = { recipients = 5, window = \"2d\" }", "rule[0].when.fanout.window: expected a duration"),
        (
            "fanout = { recipients = 5, window = \"1m\", key = \"to.nothing\" }",
            "rule[0].when.fanout.key: expected one of",
        ),
        ("fanout = { recipients = 5, window = \"1m\", bogus = 1 }", "rule[0].when.fanout.bogus: unknown key"),
        (
            "wave = { senders = 5, window = \"30m\", similarity = 2.0 }",
            "rule[0].when.wave.similarity: expected a number from 0.5 to 1.0",
        ),
        ("wave = { window = \"30m\" }", "rule[0].when.wave.senders: missing"),
        ("wave = 3", "rule[0].when.wave: expected a table"),
        (
            "reported = { reporters = 500, window = \"1h\" }",
            "rule[0].when.reported.reporters: expected an integer from 1 to 64",
        ),
        ("from_sha256_in = \"nope\"", "unknown list 'nope'"),
    ];
    for (when, want) in cases {
        let e = error(&rule(when));
        assert!(e.contains("stanzawall.toml:") && e.contains(want), "{when}: {e}");
    }
    let e = error(
        "[list.l]\nentries = [\"abc\"]\n[[rule]]\nname = \"r\"\nwhen = { from_sha256_in = \"l\" }\naction = \"drop\"\n",
    );
    assert!(e.contains("'abc' is not a SHA-256 digest"), "{e}");
}

/// The README's recommended configuration ("Anti-spam"), exactly as written there.
fn readme_policy() -> Policy {
    let readme = include_str!("../../../../README.md");
    let section = &readme[readme.find("## Anti-spam").expect("README has an Anti-spam section")..];
    let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let block = &section[start..start + section[start..].find("```").expect("closed")];
    let listed = hex(ring::digest::digest(&ring::digest::SHA256, b"listed@spam.test").as_ref());
    let files = [
        // The RTBL lists as the component keeps them in the state directory.
        ("/etc/sw/state/rtbl/rtbl_jids.list", listed.as_str()),
        ("/etc/sw/state/rtbl/rtbl_domains.list", "# RTBL spam_source_domains on xmppbl.org\nspam-domain.test\n"),
    ];
    super::tests::compile_with(block, &files).unwrap_or_else(|e| panic!("README policy: {e}"))
}

#[test]
fn the_readme_recommended_configuration_does_what_it_says() {
    let p = readme_policy();
    let rates = RateTable::new();
    let now = Instant::now();
    to_bob(
        &p,
        "<iq type='result' id='r'><query xmlns='jabber:iq:roster'><item jid='carol@remote.test' subscription='both'/></query></iq>",
        &rates,
        now,
    );
    let msg = |from: &str, body: &str| {
        format!("<message from='{from}' to='bob@example.test' type='chat'><body>{body}</body></message>")
    };
    let bounced = |v: &Verdict| matches!(v.outcome, Outcome::Bounce { .. });
    // Strangers may write, but not links; contacts may send links.
    assert_eq!(s2s_in(&p, &msg("eve@new.test/x", "hello there"), &rates, now).outcome, Outcome::Pass);
    let v = s2s_in(&p, &msg("eve@new.test/x", "see https://x.test/a"), &rates, now);
    assert!(bounced(&v) && v.rule.as_deref() == Some("stranger-links"), "{v:?}");
    assert_eq!(s2s_in(&p, &msg("carol@remote.test/x", "see https://x.test/a"), &rates, now).outcome, Outcome::Pass);
    // RTBL-listed JIDs and domains.
    assert!(bounced(&s2s_in(&p, &msg("listed@spam.test/x", "hi"), &rates, now)));
    assert!(bounced(&s2s_in(&p, &msg("anyone@spam-domain.test/x", "hi"), &rates, now)));
    // A stranger's subscription requests: five an hour.
    let sub = "<presence from='flood@new.test' to='bob@example.test' type='subscribe'/>";
    let dropped = (0..8).filter(|_| s2s_in(&p, sub, &rates, now).outcome == Outcome::Drop).count();
    assert_eq!(dropped, 3);
    // A wave from five senders is dropped from the fifth copy on.
    let outcomes: Vec<Outcome> = (0..6)
        .map(|i| {
            let body =
                format!("Congratulations, you were selected for a free cruise! Reply with code {i}{i}{i} to claim");
            s2s_in(&p, &msg(&format!("bot{i}@bots{i}.test/x"), &body), &rates, now).outcome
        })
        .collect();
    assert_eq!(outcomes[..4], [Outcome::Pass, Outcome::Pass, Outcome::Pass, Outcome::Pass]);
    assert_eq!(outcomes[4..], [Outcome::Drop, Outcome::Drop]);
}

#[test]
fn report_threshold_puts_the_reported_jid_on_a_list_for_its_ttl() {
    let p = policy(
        r#"
[antispam]
report_threshold = { reporters = 2, window = "1h", list = "reported", ttl = "1d" }

[list.reported]
entries = ["fixed@spam.test"]

[[rule]]
name = "reported-senders"
chain = "s2s-in"
when = { kind = "message", from_in = "reported" }
action = "drop"

[[rule]]
name = "to-reported"
chain = "c2s-in"
when = { to_in = "reported" }
action = "bounce"
"#,
    );
    let rates = RateTable::new();
    let now = Instant::now();
    let m = |from: &str| format!("<message from='{from}' to='bob@example.test'><body>x</body></message>");
    let report = "<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='other@spam.test'>\
                  <report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'/></item></block></iq>";
    // The list's fixed entries match from the start; the reported JID only once listed.
    assert_eq!(s2s_in(&p, &m("fixed@spam.test/r"), &rates, now).outcome, Outcome::Drop);
    assert_eq!(s2s_in(&p, &m("other@spam.test/r"), &rates, now).outcome, Outcome::Pass);
    c2s_in(&p, "alice@example.test/a", report, &rates, now);
    assert!(!rates.antispam().take_events().iter().any(|e| matches!(e, Event::Listed { .. })));
    assert_eq!(s2s_in(&p, &m("other@spam.test/r"), &rates, now).outcome, Outcome::Pass, "one reporter");
    // The session's own pipeline reports the events it learned (filter::police); here the
    // state is asked directly after the second reporter.
    let user = jid::parse_full("bob@example.test/b").unwrap();
    let events = rates.antispam().learn_from_user(&stanza(report), Some(&user), now, p.report_threshold());
    assert!(
        events.iter().any(|e| matches!(e, Event::Listed { jid, list, reporters: 2, ttl }
            if jid.as_str() == "other@spam.test" && list == "reported" && ttl.as_secs() == 86_400)),
        "{events:?}"
    );
    let v = s2s_in(&p, &m("other@spam.test/r"), &rates, now);
    assert_eq!((v.outcome, v.rule.as_deref()), (Outcome::Drop, Some("reported-senders")));
    // `to_in` reads the same list; the recipient's bare JID is looked up.
    let to = "<message to='other@spam.test/x'><body>hi</body></message>";
    assert!(matches!(c2s_in(&p, "alice@example.test/a", to, &rates, now).outcome, Outcome::Bounce { .. }));
    assert_eq!(rates.antispam().listed("reported", now).len(), 1);
    // A day later it has expired: no longer listed, and the expiry is one event.
    let later = now + Duration::from_secs(86_400);
    assert_eq!(s2s_in(&p, &m("other@spam.test/r"), &rates, later).outcome, Outcome::Pass);
    let gone = rates.antispam().expire_listed(later);
    assert!(
        matches!(&gone[..], [Event::Unlisted { jid, list }] if jid.as_str() == "other@spam.test" && list == "reported")
    );
    assert!(rates.antispam().listed("reported", later).is_empty());
    assert!(rates.antispam().expire_listed(later).is_empty());
}

#[test]
fn report_threshold_is_checked_with_file_line_and_key() {
    let cases = [
        (
            "report_threshold = { reporters = 3, window = \"1h\", ttl = \"1d\" }",
            "antispam.report_threshold.list: missing",
        ),
        (
            "report_threshold = { reporters = 0, window = \"1h\", list = \"r\", ttl = \"1d\" }",
            "antispam.report_threshold.reporters: expected an integer from 1 to 64",
        ),
        (
            "report_threshold = { reporters = 3, window = \"1h\", list = \"r\", ttl = \"90d\" }",
            "antispam.report_threshold.ttl: expected a duration",
        ),
        (
            "report_threshold = { reporters = 3, window = \"1h\", list = \"a b\", ttl = \"1d\" }",
            "antispam.report_threshold.list: 'a b': names are",
        ),
        ("bogus = 1", "unknown field `bogus`"),
    ];
    for (line, want) in cases {
        let e = error(&format!("[antispam]\n{line}\n"));
        assert!(e.contains("stanzawall.toml:") && e.contains(want), "{line}: {e}");
    }
    // Without the threshold, a rule naming the list needs the list declared.
    let e = error("[[rule]]\nname = \"r\"\nwhen = { from_in = \"reported\" }\naction = \"drop\"\n");
    assert!(e.contains("unknown list 'reported'"), "{e}");
}
