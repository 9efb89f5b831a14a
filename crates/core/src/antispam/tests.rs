//! The anti-spam state on its own: fingerprints (with measured detection and false-positive
//! rates), waves, fan-out, contacts and reports, under a fake clock.

use std::time::{Duration, Instant};

use super::wave::{minhash, normalize, similarity, Copy, Signature, WaveSpec, DEFAULT_SIMILARITY};
use super::*;
use crate::policy::fold::fold;
use crate::xml::{parse_stanzas, XmlLimits};

const CORPUS: &str = include_str!("testdata/conversation.txt");

fn corpus() -> Vec<&'static str> {
    CORPUS.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).collect()
}

fn fingerprint(text: &str) -> (String, Signature) {
    let normal = normalize(text, fold);
    let fp = minhash(&normal);
    (normal, fp)
}

/// Variants of three spam texts as waves send them: another name, number and URL path each
/// time, spacing changed, case changed, look-alike letters swapped in.
fn spam_variants() -> Vec<Vec<String>> {
    let names = ["Anna", "Bob", "Carlos", "Dmitri", "Eve", "Fatima", "George", "Hana", "Igor", "Julia"];
    let templates = [
        "Hi {name}! You have won a {n} USD gift card. Claim it now at https://win-prize.example/c/{code} before it expires!",
        "Hello {name}, your package #{n} could not be delivered. Confirm your address here: http://parcel-track.example/{code}?ref={n}",
        "Crypto investment opportunity: earn {n}% daily profit, guaranteed. Join our private group at https://t.example/{code} and write to me, {name}.",
    ];
    templates
        .iter()
        .map(|t| {
            (0..20)
                .map(|i| {
                    let mut s = t
                        .replace("{name}", names[i % names.len()])
                        .replace("{n}", &format!("{}", 1000 + i * 7919 % 9000))
                        .replace("{code}", &format!("x{:x}q{}", i * 2654435761usize % 65521, i));
                    if i % 3 == 1 {
                        s = s.replace(' ', "  ");
                    }
                    if i % 4 == 2 {
                        s = s.to_uppercase();
                    }
                    if i % 5 == 3 {
                        // Cyrillic а, о, е for Latin a, o, e.
                        s = s.replace('a', "\u{430}").replace('o', "\u{43e}").replace('e', "\u{435}");
                    }
                    s
                })
                .collect()
        })
        .collect()
}

#[test]
fn normal_form_folds_links_digits_spacing_and_look_alikes() {
    let (a, _) = fingerprint("Claim   your PRIZE at https://www.win.example/c/8812?u=bob now, Anna! #4411");
    assert_eq!(a, "claim your prize at win example now");
    let (b, _) = fingerprint("claim your prize at win.example/x/1 now 99");
    assert_eq!(b, "claim your prize at win example now");
    let (c, _) = fingerprint("\u{441}l\u{430}im your pr\u{456}ze");
    assert_eq!(c, "claim your prize");
}

#[test]
fn variants_of_a_spam_text_are_similar_and_ordinary_messages_are_not() {
    let spec = WaveSpec {
        ns: 1,
        senders: 5,
        recipients: None,
        window: Duration::from_secs(1800),
        similarity: DEFAULT_SIMILARITY,
        min_length: 24,
    };
    // Detection: each variant against the first copy of its text.
    let (mut near, mut total) = (0, 0);
    for variants in spam_variants() {
        let (_, first) = fingerprint(&variants[0]);
        for v in &variants[1..] {
            total += 1;
            if similarity(&first, &fingerprint(v).1) >= spec.similarity {
                near += 1;
            }
        }
    }
    let detection = f64::from(near) / f64::from(total);
    // False positives: every pair of ordinary messages long enough to be fingerprinted.
    let prints: Vec<(String, Signature)> =
        corpus().iter().map(|t| fingerprint(t)).filter(|(n, _)| n.chars().count() >= spec.min_length).collect();
    let (mut close, mut pairs) = (0u32, 0u32);
    for i in 0..prints.len() {
        for j in i + 1..prints.len() {
            pairs += 1;
            if similarity(&prints[i].1, &prints[j].1) >= spec.similarity {
                close += 1;
            }
        }
    }
    let fp_rate = f64::from(close) / f64::from(pairs);
    println!(
        "wave fingerprint: variants within similarity {DEFAULT_SIMILARITY} of the first copy: {near}/{total} ({:.1}%); \
         ordinary pairs at the same: {close}/{pairs} ({:.3}%), {} of {} corpus messages fingerprinted",
        detection * 100.0,
        fp_rate * 100.0,
        prints.len(),
        corpus().len()
    );
    assert_eq!(corpus().len(), 200);
    assert!(detection >= 0.95, "detection {detection}");
    assert!(fp_rate < 0.001, "false-positive pair rate {fp_rate}");
}

fn copy<'a>(a: &AntiSpam, normal: &'a str, fp: &'a Signature, sender: &str, recipient: &str) -> Copy<'a> {
    Copy { fingerprint: fp, normal, sender: a.item_digest(sender), recipient: a.item_digest(recipient) }
}

#[test]
fn a_wave_is_detected_at_the_threshold_and_flagged_until_quiet() {
    let a = AntiSpam::new();
    let spec = WaveSpec {
        ns: 7,
        senders: 5,
        recipients: None,
        window: Duration::from_secs(1800),
        similarity: DEFAULT_SIMILARITY,
        min_length: 24,
    };
    let t0 = Instant::now();
    let variants = &spam_variants()[0];
    let mut found = Vec::new();
    for (i, v) in variants.iter().take(8).enumerate() {
        let (normal, fp) = fingerprint(v);
        let now = t0 + Duration::from_secs(60 * i as u64);
        let m = a.waves.observe(
            &spec,
            copy(&a, &normal, &fp, &format!("spammer{i}@spam.test"), "victim@example.test"),
            now,
        );
        found.push(m.map(|m| m.new));
    }
    assert_eq!(found, [None, None, None, None, Some(true), Some(false), Some(false), Some(false)]);
    // Ordinary messages from the same senders meanwhile are not part of it.
    for (i, t) in corpus().iter().enumerate().take(50) {
        let (normal, fp) = fingerprint(t);
        let m = a.waves.observe(
            &spec,
            copy(&a, &normal, &fp, &format!("spammer{}@spam.test", i % 8), "x@example.test"),
            t0,
        );
        assert!(m.is_none(), "{t}");
    }
    // After a quiet window the wave is over; a copy starts counting again.
    let later = t0 + Duration::from_secs(7 * 60 + 1800);
    let (normal, fp) = fingerprint(&variants[9]);
    assert!(a.waves.observe(&spec, copy(&a, &normal, &fp, "late@spam.test", "v@example.test"), later).is_none());
}

#[test]
fn a_wave_to_many_recipients_from_one_sender() {
    let a = AntiSpam::new();
    let spec = WaveSpec {
        ns: 8,
        senders: 5,
        recipients: Some(10),
        window: Duration::from_secs(600),
        similarity: DEFAULT_SIMILARITY,
        min_length: 24,
    };
    let now = Instant::now();
    let hits: Vec<bool> = spam_variants()[1]
        .iter()
        .take(12)
        .enumerate()
        .map(|(i, v)| {
            let (normal, fp) = fingerprint(v);
            a.waves
                .observe(&spec, copy(&a, &normal, &fp, "one@spam.test", &format!("u{i}@example.test")), now)
                .is_some()
        })
        .collect();
    assert_eq!(hits.iter().position(|&h| h), Some(9), "the tenth recipient makes the wave: {hits:?}");
}

#[test]
fn the_corpus_makes_no_wave_from_two_hundred_senders() {
    let a = AntiSpam::new();
    let spec = WaveSpec {
        ns: 9,
        senders: 3,
        recipients: Some(5),
        window: Duration::from_secs(1800),
        similarity: 0.9,
        min_length: 24,
    };
    let now = Instant::now();
    let mut waves = 0;
    for (i, t) in corpus().iter().enumerate() {
        let (normal, fp) = fingerprint(t);
        if normal.chars().count() < spec.min_length {
            continue;
        }
        let c = copy(&a, &normal, &fp, &format!("user{i}@example.test"), &format!("peer{}@example.test", i % 7));
        waves += usize::from(a.waves.observe(&spec, c, now).is_some());
    }
    println!("corpus through the wave table (senders = 3, recipients = 5): {waves} stanzas flagged");
    assert_eq!(waves, 0);
}

#[test]
fn the_wave_table_stays_bounded() {
    let w = Waves::with_capacity(64);
    let spec = WaveSpec {
        ns: 1,
        senders: 2,
        recipients: None,
        window: Duration::from_secs(60),
        similarity: 0.9,
        min_length: 1,
    };
    let now = Instant::now();
    for i in 0..1000u64 {
        let fp = minhash(&format!("text number {}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        let _ = w.observe(&spec, Copy { fingerprint: &fp, normal: "x", sender: i, recipient: i }, now);
    }
    assert_eq!(w.len(), 64);
}

#[test]
fn fanout_counts_distinct_recipients_in_a_sliding_window() {
    let a = AntiSpam::new();
    let t0 = Instant::now();
    let w = Duration::from_secs(600);
    let over: Vec<bool> = (0..25)
        .map(|i| a.fanout(1, "s@example.test", &"src", 4096, &format!("r{i}@example.test"), 20, w, t0))
        .collect();
    assert_eq!(over.iter().position(|&o| o), Some(20), "the 21st distinct recipient");
    assert!(over[20..].iter().all(|&o| o));
    assert!(!a.fanout(1, "s@example.test", &"src", 4096, "r3@example.test", 20, w, t0), "a known recipient");
    assert!(!a.fanout(2, "s@example.test", &"src", 4096, "r24@example.test", 20, w, t0), "another condition");
    assert!(!a.fanout(1, "t@example.test", &"src", 4096, "r24@example.test", 20, w, t0), "another sender");
    assert!(!a.fanout(1, "s@example.test", &"src", 4096, "new@example.test", 20, w, t0 + w), "the window slid");
}

fn el(xml: &str) -> Element {
    parse_stanzas(xml, XmlLimits::default()).unwrap().remove(0)
}

fn bare(s: &str) -> BareJid {
    crate::jid::parse(s).unwrap().to_bare()
}

fn jid(s: &str) -> crate::jid::Jid {
    crate::jid::parse(s).unwrap()
}

#[test]
fn contacts_learned_from_roster_results_and_pushes() {
    let a = AntiSpam::new();
    let bob = crate::jid::parse_full("bob@example.test/laptop").unwrap();
    let c = &a.contacts;
    assert_eq!(c.relation(&bob.to_bare(), &jid("carol@remote.test")), Relation::Unknown);
    a.learn_from_server(
        &el("<iq type='result' to='bob@example.test/laptop' id='r1'><query xmlns='jabber:iq:roster'>\
             <item jid='carol@remote.test' subscription='both'/>\
             <item jid='dave@remote.test' subscription='none'/>\
             <item jid='erin@other.test' subscription='none' ask='subscribe'/>\
             <item jid='fred@other.test' subscription='none' approved='true'/>\
             <item jid='friendly.test' subscription='to'/>\
           </query></iq>"),
        Some(&bob),
    );
    let b = bob.to_bare();
    assert_eq!(c.relation(&b, &jid("carol@remote.test/phone")), Relation::Contact);
    assert_eq!(c.relation(&b, &jid("dave@remote.test")), Relation::StrangerKnownDomain, "no subscription");
    assert_eq!(c.relation(&b, &jid("erin@other.test")), Relation::Contact, "pending out");
    assert_eq!(c.relation(&b, &jid("fred@other.test")), Relation::Contact, "pre-approved");
    assert_eq!(c.relation(&b, &jid("anyone@friendly.test")), Relation::Contact, "a domain item");
    assert_eq!(c.relation(&b, &jid("mallory@spam.test")), Relation::Stranger);
    assert_eq!(c.relation(&b, &jid("bob@example.test/other")), Relation::Contact, "oneself");
    assert_eq!(c.relation(&b, &jid("example.test")), Relation::Contact, "one's own server");
    assert_eq!(c.relation(&b, &jid("conference.example.test")), Relation::Contact, "its services");
    assert_eq!(c.relation(&b, &jid("spam.test")), Relation::Stranger, "another server");
    // A push adds mallory, another removes carol.
    a.learn_from_server(
        &el("<iq type='set' id='p1'><query xmlns='jabber:iq:roster'>\
             <item jid='mallory@spam.test' subscription='from'/></query></iq>"),
        Some(&bob),
    );
    a.learn_from_server(
        &el("<iq type='set' from='bob@example.test' id='p2'><query xmlns='jabber:iq:roster'>\
             <item jid='carol@remote.test' subscription='remove'/></query></iq>"),
        Some(&bob),
    );
    assert_eq!(c.relation(&b, &jid("mallory@spam.test")), Relation::Contact);
    assert_eq!(c.relation(&b, &jid("carol@remote.test")), Relation::Stranger, "no contact left at remote.test");
    // Anyone else's roster-shaped iq teaches nothing.
    a.learn_from_server(
        &el("<iq type='result' from='evil@spam.test' id='x'><query xmlns='jabber:iq:roster'>\
             <item jid='evil@spam.test' subscription='both'/></query></iq>"),
        Some(&bob),
    );
    assert_eq!(c.relation(&b, &jid("evil@spam.test")), Relation::StrangerKnownDomain, "mallory is at spam.test");
    assert_eq!(c.relation(&b, &jid("mallory@spam.test")), Relation::Contact, "the roster was not replaced");
    // The user asking a subscription makes the contact pending-out at once.
    let now = Instant::now();
    a.learn_from_user(&el("<presence type='subscribe' to='zoe@new.test'/>"), Some(&bob), now, None);
    assert_eq!(c.relation(&b, &jid("zoe@new.test")), Relation::Contact);
    // A new roster result replaces the old one.
    a.learn_from_server(&el("<iq type='result' id='r2'><query xmlns='jabber:iq:roster'/></iq>"), Some(&bob));
    assert_eq!(c.relation(&b, &jid("mallory@spam.test")), Relation::Stranger);
    assert_eq!(c.len(), 0);
    assert_eq!(c.rosters(), 1);
}

#[test]
fn a_roster_that_does_not_fit_is_forgotten_not_kept_in_part() {
    let c = Contacts::with_capacity(3);
    let items: Vec<_> = ["a@x.test", "b@x.test"]
        .iter()
        .map(|j| contacts::RosterItem { jid: jid(j), present: true, contact: true })
        .collect();
    assert!(c.replace(&bare("u@example.test"), &items));
    assert!(!c.replace(&bare("v@example.test"), &[items.clone(), items.clone()].concat()[..3]));
    assert!(!c.is_known(&bare("v@example.test")));
    let more = contacts::RosterItem { jid: jid("c@x.test"), present: true, contact: true };
    c.update(&bare("u@example.test"), std::slice::from_ref(&more));
    assert!(c.is_known(&bare("u@example.test")), "fits exactly");
    let extra = contacts::RosterItem { jid: jid("d@x.test"), present: true, contact: true };
    c.update(&bare("u@example.test"), &[extra]);
    assert!(!c.is_known(&bare("u@example.test")), "over the capacity: unknown, never partial");
    assert_eq!(c.len(), 0);
}

#[test]
fn spam_reports_are_read_counted_and_expire() {
    let a = AntiSpam::new();
    let t0 = Instant::now();
    let report = |who: &str, reason: &str| {
        el(&format!(
            "<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'><item jid='{who}'>\
             <report xmlns='urn:xmpp:reporting:1' reason='{reason}'><text>buy now</text></report>\
             </item></block></iq>"
        ))
    };
    let alice = crate::jid::parse_full("alice@example.test/a").unwrap();
    let bob = crate::jid::parse_full("bob@example.test/b").unwrap();
    let ev = a.learn_from_user(&report("spammer@spam.test/x", "urn:xmpp:reporting:spam"), Some(&alice), t0, None);
    assert_eq!(
        ev,
        [Event::Report {
            reporter: bare("alice@example.test"),
            reported: bare("spammer@spam.test"),
            reason: "spam",
            text: Some("buy now".into()),
            reporters: 1
        }]
    );
    // The same reporter again counts once; another reporter counts.
    a.learn_from_user(&report("spammer@spam.test", "urn:xmpp:reporting:spam"), Some(&alice), t0, None);
    let ev = a.learn_from_user(&report("spammer@spam.test", "urn:xmpp:reporting:abuse"), Some(&bob), t0, None);
    assert!(matches!(&ev[..], [Event::Report { reporters: 2, reason: "abuse", .. }]));
    assert_eq!(a.reporters(&bare("spammer@spam.test"), Duration::from_secs(3600), t0), 2);
    assert_eq!(a.reporters(&bare("spammer@spam.test"), Duration::from_secs(3600), t0 + Duration::from_secs(3600)), 0);
    assert_eq!(a.reports_recorded(), 3);
    // A block without a report is no report; version 0 is read.
    let plain = el("<iq type='set' id='b2'><block xmlns='urn:xmpp:blocking'><item jid='x@y.test'/></block></iq>");
    assert!(a.learn_from_user(&plain, Some(&alice), t0, None).is_empty());
    let v0 = el("<iq type='set' id='b3'><block xmlns='urn:xmpp:blocking'><item jid='x@y.test'>\
                 <report xmlns='urn:xmpp:reporting:0'><spam/></report></item></block></iq>");
    assert!(matches!(
        &a.learn_from_user(&v0, Some(&alice), t0, None)[..],
        [Event::Report { reason: "spam", text: None, .. }]
    ));
    let beside = el("<iq type='set' id='b4'><block xmlns='urn:xmpp:blocking'>\
                     <report xmlns='urn:xmpp:reporting:0'><text>flood</text><spam/></report>\
                     <item jid='p@y.test'/><item jid='q@y.test'/></block></iq>");
    let ev = a.learn_from_user(&beside, Some(&alice), t0, None);
    assert_eq!(ev.len(), 2);
    assert!(
        matches!(&ev[1], Event::Report { reported, reason: "spam", text: Some(t), .. } if reported.as_str() == "q@y.test" && t == "flood")
    );
}

#[test]
fn detection_and_false_positives_by_threshold() {
    let variants = spam_variants();
    let prints: Vec<Signature> =
        corpus().iter().map(|t| fingerprint(t)).filter(|(n, _)| n.chars().count() >= 24).map(|(_, s)| s).collect();
    let mut closest = 0.0f64;
    for i in 0..prints.len() {
        for j in i + 1..prints.len() {
            closest = closest.max(similarity(&prints[i], &prints[j]));
        }
    }
    println!("closest pair of ordinary messages: similarity {closest:.3}");
    assert!(closest < 0.7, "{closest}");
    for threshold in [0.7, 0.75, 0.8, 0.85, 0.9, 0.95] {
        let (mut near, mut total) = (0, 0);
        for v in &variants {
            let first = fingerprint(&v[0]).1;
            for x in &v[1..] {
                total += 1;
                near += usize::from(similarity(&first, &fingerprint(x).1) >= threshold);
            }
        }
        let mut close = 0;
        let mut pairs = 0;
        for i in 0..prints.len() {
            for j in i + 1..prints.len() {
                pairs += 1;
                close += usize::from(similarity(&prints[i], &prints[j]) >= threshold);
            }
        }
        println!("threshold {threshold}: variants {near}/{total}, ordinary pairs {close}/{pairs}");
        if threshold <= DEFAULT_SIMILARITY {
            assert_eq!(near, total, "at {threshold}");
        }
        if threshold >= 0.7 {
            assert_eq!(close, 0, "at {threshold}");
        }
    }
}

#[test]
fn a_versioned_roster_request_asks_for_the_whole_roster_while_the_roster_is_unknown() {
    let a = AntiSpam::new();
    let bob = crate::jid::parse_full("bob@example.test/laptop").unwrap();
    let mut get = el("<iq type='get' id='r1'><query xmlns='jabber:iq:roster' ver='v42'/></iq>");
    assert!(a.request_full_roster(&mut get, Some(&bob)));
    assert_eq!(get.elements().next().unwrap().attr("ver"), None);
    // Someone else's roster, or a request that is not a get, is left alone.
    let mut other =
        el("<iq type='get' id='r2' to='alice@example.test'><query xmlns='jabber:iq:roster' ver='v1'/></iq>");
    assert!(!a.request_full_roster(&mut other, Some(&bob)));
    let mut set = el("<iq type='set' id='r3'><query xmlns='jabber:iq:roster' ver='v1'/></iq>");
    assert!(!a.request_full_roster(&mut set, Some(&bob)));
    // Once the roster is known, versioning works as the client asked.
    a.learn_from_server(&el("<iq type='result' id='r1'><query xmlns='jabber:iq:roster'/></iq>"), Some(&bob));
    let mut again = el("<iq type='get' id='r4'><query xmlns='jabber:iq:roster' ver='v43'/></iq>");
    assert!(!a.request_full_roster(&mut again, Some(&bob)));
    assert_eq!(again.elements().next().unwrap().attr("ver"), Some("v43"));
}
