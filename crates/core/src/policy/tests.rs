use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::config::{Config, Files};
use crate::xml::{parse_stanzas, XmlLimits};

const BASE: &str = r#"
[[tls.certificate]]
domains = ["example.test"]
cert = "c.crt"
key = "c.key"

[[listener]]
name = "c2s"
kind = "c2s"
bind = "127.0.0.1:5222"
backend = "127.0.0.1:15222"
"#;

/// In-memory files for list files and includes.
struct Mem(Vec<(PathBuf, String)>);

impl Files for Mem {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        self.0
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| std::io::ErrorKind::NotFound.into())
    }

    fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        Ok(self.0.iter().filter(|(p, _)| p.parent() == Some(dir)).map(|(p, _)| p.clone()).collect())
    }
}

fn config_with(policy: &str, files: &[(&str, &str)]) -> Result<Config, String> {
    let mem = Mem(files.iter().map(|(p, t)| (PathBuf::from(p), (*t).to_owned())).collect());
    // Top-level keys must come before the first table.
    let text = match policy.strip_prefix("include") {
        Some(_) => {
            let (first, rest) = policy.split_once('\n').unwrap_or((policy, ""));
            format!("{first}\n{BASE}{rest}")
        }
        None => format!("{BASE}{policy}"),
    };
    Config::parse_with(&text, Path::new("/etc/sw/stanzawall.toml"), &mem).map_err(|e| e.to_string())
}

pub(super) fn compile_with(policy: &str, files: &[(&str, &str)]) -> Result<Policy, String> {
    let c = config_with(policy, files)?;
    Policy::compile(&c.policy).map_err(|e| e.to_string())
}

pub(super) fn policy(text: &str) -> Policy {
    compile_with(text, &[]).unwrap()
}

pub(super) fn error(text: &str) -> String {
    match compile_with(text, &[]) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e,
    }
}

pub(super) fn stanza(xml: &str) -> Element {
    parse_stanzas(xml, XmlLimits::default()).unwrap().remove(0)
}

fn alice() -> FullJid {
    jid::parse_full("alice@example.test/phone").unwrap()
}

fn eval_at(p: &Policy, chain: Chain, xml: &str, rates: &RateTable, now: Instant) -> Verdict {
    let user = alice();
    let ctx = Context { chain, user: Some(&user), source_ip: "192.0.2.10".parse().unwrap() };
    p.evaluate(&stanza(xml), &ctx, rates, now)
}

fn eval(p: &Policy, chain: Chain, xml: &str) -> Verdict {
    eval_at(p, chain, xml, &RateTable::new(), Instant::now())
}

fn rule_of(v: &Verdict) -> Option<&str> {
    v.rule.as_deref()
}

const MSG_IN: &str =
    "<message from='alice@example.test/phone' to='bob@example.test' id='1' type='chat'><body>hello</body></message>";

#[test]
fn issue_example_compiles_and_decides() {
    let p = compile_with(
        r#"
[list.spam_domains]
file = "lists/spam-domains.txt"
[list.bad_urls]
entries = ["evil.example/payload", "phish.example"]

[rate.per_sender]
rate  = "30/minute"
burst = 10
key   = "from.bare"

[[rule]]
name   = "blocked-servers"
chain  = "c2s-out"
when   = { from_domain_in = "spam_domains" }
action = "drop"

[[rule]]
name   = "malicious-links"
when   = { kind = "message", url_in = "bad_urls" }
action = "bounce"
error  = "policy-violation"
text   = "Link blocked by policy"

[[rule]]
name   = "no-file-offers"
when   = { payload = ["http://jabber.org/protocol/bytestreams", "http://jabber.org/protocol/si", "jabber:x:oob"] }
action = "bounce"

[[rule]]
name   = "flood"
when   = { kind = "message", rate = "per_sender" }
action = "bounce"
error  = "resource-constraint"

[[rule]]
name     = "watch-keywords"
when     = { body_contains = ["confidential", "password:"] }
action   = "drop"
log_only = true
"#,
        &[("/etc/sw/lists/spam-domains.txt", "# spammers\nspam.example\n\nbulk.example  # since May\n")],
    )
    .unwrap();
    let v =
        eval(&p, Chain::C2sOut, "<message from='x@spam.example/r' to='alice@example.test'><body>hi</body></message>");
    assert_eq!((rule_of(&v), &v.outcome), (Some("blocked-servers"), &Outcome::Drop));
    let v =
        eval(&p, Chain::C2sIn, "<message from='x@spam.example/r' to='alice@example.test'><body>hi</body></message>");
    assert_eq!(rule_of(&v), None, "blocked-servers is c2s-out only");
    let v = eval(
        &p,
        Chain::C2sIn,
        "<message to='bob@example.test'><body>see HTTPS://Evil.Example/payload/x.exe now</body></message>",
    );
    assert_eq!(rule_of(&v), Some("malicious-links"));
    assert_eq!(
        v.outcome,
        Outcome::Bounce { condition: StanzaCondition::PolicyViolation, text: Some("Link blocked by policy".into()) }
    );
    let v =
        eval(&p, Chain::C2sIn, "<message to='bob@example.test'><body>evil.example/payloadx is fine</body></message>");
    assert_eq!(rule_of(&v), None);
    let v = eval(
        &p,
        Chain::C2sIn,
        "<message to='bob@example.test'><x xmlns='jabber:x:oob'><url>http://a.phish.example/</url></x></message>",
    );
    assert_eq!(rule_of(&v), Some("malicious-links"), "OOB URLs are links too");
    let v = eval(
        &p,
        Chain::C2sIn,
        "<iq type='set' id='o' to='bob@example.test/r'><si xmlns='http://jabber.org/protocol/si'/></iq>",
    );
    assert_eq!(rule_of(&v), Some("no-file-offers"));
    let v = eval(&p, Chain::C2sIn, "<message to='bob@example.test'><body>my Password: hunter2</body></message>");
    assert_eq!((rule_of(&v), &v.outcome), (None, &Outcome::Pass), "log_only passes");
    assert_eq!(v.hits.len(), 1);
    assert_eq!((&*v.hits[0].rule, v.hits[0].action, v.hits[0].log_only), ("watch-keywords", RuleAction::Drop, true));
}

#[test]
fn the_eleventh_message_of_a_burst_is_over_the_limit() {
    let p = policy(
        r#"
[rate.per_sender]
rate = "30/minute"
burst = 10
key = "from.bare"
[[rule]]
name = "flood"
when = { kind = "message", rate = "per_sender" }
action = "bounce"
error = "resource-constraint"
"#,
    );
    let rates = RateTable::new();
    let now = Instant::now();
    let decided: Vec<Option<String>> =
        (0..12).map(|_| eval_at(&p, Chain::C2sIn, MSG_IN, &rates, now).rule.map(|r| r.to_string())).collect();
    assert!(decided[..10].iter().all(Option::is_none), "{decided:?}");
    assert_eq!(decided[10].as_deref(), Some("flood"));
    // Presence does not meet the other condition, so it is not charged.
    let v = eval_at(&p, Chain::C2sIn, "<presence/>", &rates, now);
    assert_eq!(v.rule, None);
    // Two seconds later one more message is allowed (30/minute).
    assert_eq!(eval_at(&p, Chain::C2sIn, MSG_IN, &rates, now + Duration::from_secs(2)).rule, None);
}

#[test]
fn jid_patterns_kinds_types_and_users() {
    let p = policy(
        r#"
[[rule]]
name = "from-domain"
when = { from = "*@evil.example" }
action = "drop"
[[rule]]
name = "to-sub"
when = { to = "*.partner.example", kind = ["message", "presence"] }
action = "drop"
[[rule]]
name = "groupchat"
when = { type = "groupchat" }
action = "drop"
[[rule]]
name = "user"
chain = "c2s-in"
when = { user = "alice@example.test", type = "headline" }
action = "drop"
"#,
    );
    let out = |chain, xml: &str| eval(&p, chain, xml).rule.map(|r| r.to_string());
    assert_eq!(out(Chain::C2sOut, "<message from='M@Evil.Example/x'/>").as_deref(), Some("from-domain"));
    assert_eq!(out(Chain::C2sOut, "<message from='evil.example'/>"), None, "*@domain is users only");
    assert_eq!(out(Chain::C2sIn, "<message to='room@muc.partner.example'/>").as_deref(), Some("to-sub"));
    assert_eq!(out(Chain::C2sIn, "<iq type='get' id='1' to='muc.partner.example'><q xmlns='x'/></iq>"), None);
    assert_eq!(out(Chain::C2sIn, "<message to='partner.example'/>"), None);
    assert_eq!(out(Chain::C2sIn, "<message type='groupchat' to='r@m.example'/>").as_deref(), Some("groupchat"));
    assert_eq!(out(Chain::C2sIn, "<message type='headline' to='r@m.example'/>").as_deref(), Some("user"));
    assert_eq!(out(Chain::C2sOut, "<message type='headline' to='r@m.example'/>"), None);
}

#[test]
fn any_not_paths_source_ip_and_regex() {
    let p = policy(
        r#"
[list.nets]
entries = ["192.0.2.0/24"]
[[rule]]
name = "jingle-from-outside"
when = { path = "{urn:xmpp:jingle:1}jingle/{urn:xmpp:jingle:apps:file-transfer:5}*", not = { source_ip = "list:nets" } }
action = "drop"
[[rule]]
name = "card-numbers"
when = { any = [ { body_regex = '\b\d{4}-\d{4}-\d{4}-\d{4}\b' }, { body_contains = "list:none", kind = "iq" } ] }
action = "bounce"
[list.none]
entries = ["never-in-a-body"]
"#,
    );
    let jingle = "<iq type='set' id='j' to='b@example.test/r'><jingle xmlns='urn:xmpp:jingle:1'><content><description xmlns='urn:xmpp:jingle:apps:file-transfer:5'/></content></jingle></iq>";
    assert_eq!(rule_of(&eval(&p, Chain::C2sIn, jingle)), None, "the path needs the file-transfer child directly below");
    let jingle2 = "<iq type='set' id='j' to='b@example.test/r'><jingle xmlns='urn:xmpp:jingle:1'><file xmlns='urn:xmpp:jingle:apps:file-transfer:5'/></jingle></iq>";
    let user = alice();
    let inside = Context { chain: Chain::C2sIn, user: Some(&user), source_ip: "192.0.2.99".parse().unwrap() };
    let outside = Context { source_ip: "198.51.100.1".parse().unwrap(), ..inside };
    let rates = RateTable::new();
    assert_eq!(p.evaluate(&stanza(jingle2), &inside, &rates, Instant::now()).rule, None);
    assert_eq!(
        p.evaluate(&stanza(jingle2), &outside, &rates, Instant::now()).rule.as_deref(),
        Some("jingle-from-outside")
    );
    let card = "<message to='b@example.test'><body>it is 1234-5678-9012-3456 ok</body></message>";
    assert_eq!(rule_of(&eval(&p, Chain::C2sIn, card)), Some("card-numbers"));
    assert_eq!(rule_of(&eval(&p, Chain::C2sIn, MSG_IN)), None);
}

#[test]
fn strip_and_mask_rewrite_and_leave_the_rest() {
    let p = policy(
        r#"
[[rule]]
name = "strip-oob"
when = { payload = "jabber:x:oob" }
action = "strip"
[[rule]]
name = "mask-words"
when = { body_contains = ["secret", "ПАРОЛЬ"], body_regex = '\d{3}-\d{4}' }
action = "mask"
"#,
    );
    let v = eval(
        &p,
        Chain::C2sIn,
        "<message to='b@example.test'><body>file</body><x xmlns='jabber:x:oob'><url>http://x.example/f</url></x><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
    );
    let Outcome::Rewrite(el) = &v.outcome else { panic!("{v:?}") };
    assert_eq!(
        String::from_utf8(el.to_bytes(NS_CLIENT)).unwrap(),
        "<message to='b@example.test'><body>file</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
    );
    // Mask needs every condition to hold: both a keyword and the regex.
    let v =
        eval(&p, Chain::C2sIn, "<message to='b@example.test'><body>My SECRET is 555-1234, пароль: x</body></message>");
    let Outcome::Rewrite(el) = &v.outcome else { panic!("{v:?}") };
    assert_eq!(body_text(el), "My ****** is ********, ******: x");
    let v = eval(&p, Chain::C2sIn, "<message to='b@example.test'><body>My SECRET is safe</body></message>");
    assert_eq!(v.outcome, Outcome::Pass);
}

#[test]
fn first_terminal_rule_wins_log_rules_continue_and_defaults_apply() {
    let p = policy(
        r#"
[chain.c2s-out]
default = "drop"
[[rule]]
name = "note"
when = { kind = "message" }
action = "log"
[[rule]]
name = "allow-chat"
when = { type = "chat" }
action = "pass"
[[rule]]
name = "drop-messages"
when = { kind = "message" }
action = "drop"
"#,
    );
    let v = eval(&p, Chain::C2sIn, MSG_IN);
    assert_eq!((rule_of(&v), &v.outcome), (Some("allow-chat"), &Outcome::Pass));
    assert_eq!(v.hits.iter().map(|h| &*h.rule).collect::<Vec<_>>(), ["note", "allow-chat"]);
    let v = eval(&p, Chain::C2sIn, "<message to='b@example.test' type='normal'/>");
    assert_eq!(rule_of(&v), Some("drop-messages"));
    assert_eq!(eval(&p, Chain::C2sIn, "<presence/>").outcome, Outcome::Pass);
    assert_eq!(eval(&p, Chain::C2sOut, "<presence from='x@y.example'/>").outcome, Outcome::Drop, "default drop");
}

#[test]
fn mistakes_name_file_line_and_key() {
    let e = error("[[rule]]\nname = \"r\"\nwhen = { body_regex = \"(unclosed\" }\naction = \"drop\"\n");
    assert!(e.contains("stanzawall.toml:14: rule[0].when.body_regex: bad regex '(unclosed': unclosed group"), "{e}");
    let e = error("[[rule]]\nname = \"r\"\nwhen = { from_in = \"nope\" }\naction = \"drop\"\n");
    assert!(e.contains(":14: rule[0].when.from_in: unknown list 'nope' (none is declared)"), "{e}");
    let e = error("[[rule]]\nname = \"r\"\nwhen = { rate = \"nope\" }\naction = \"drop\"\n");
    assert!(e.contains("unknown limiter 'nope'"), "{e}");
    let e = error("[[rule]]\nname = \"r\"\nwhen = { from = \"a@@b\" }\naction = \"drop\"\n");
    assert!(e.contains(":14: rule[0].when.from:"), "{e}");
    let e = error("[[rule]]\nname = \"r\"\nwhen = { frm = \"a@b\" }\naction = \"drop\"\n");
    assert!(e.contains("rule[0].when.frm: unknown condition 'frm'"), "{e}");
    let e = error("[[rule]]\nname = \"r\"\naction = \"explode\"\n");
    assert!(e.contains(":14: rule[0].action: unknown action 'explode'"), "{e}");
    let e = error("[[rule]]\nname = \"r\"\naction = \"bounce\"\nerror = \"teapot\"\n");
    assert!(e.contains(":15: rule[0].error: 'teapot' is not a stanza error condition"), "{e}");
    let e = error("[[rule]]\nname = \"r\"\naction = \"strip\"\n");
    assert!(e.contains("strip needs a payload or path condition"), "{e}");
    let e = error("[[rule]]\nname = \"r\"\nchain = \"s2s-sideways\"\naction = \"drop\"\n");
    assert!(e.contains(":14: rule[0].chain: unknown chain 's2s-sideways'"), "{e}");
    let e = error("[[rule]]\nname = \"r\"\naction = \"drop\"\n[[rule]]\nname = \"r\"\naction = \"pass\"\n");
    assert!(e.contains("rule[1].name: rule 'r' already exists (/etc/sw/stanzawall.toml:12)"), "{e}");
    let e = compile_with(
        "[list.d]\nfile = \"d.txt\"\n[[rule]]\nname = \"r\"\nwhen = { from_domain_in = \"d\" }\naction = \"drop\"\n",
        &[("/etc/sw/d.txt", "ok.example\n# comment\nnot a domain!\n")],
    )
    .unwrap_err();
    assert!(e.starts_with("/etc/sw/d.txt:3: list.d:"), "{e}");
    let e = config_with("[list.d]\nfile = \"missing.txt\"\n", &[]).unwrap_err();
    assert!(e.contains(":13: list.d.file: /etc/sw/missing.txt:"), "{e}");
}

#[test]
fn includes_append_rules_in_file_order() {
    let c = config_with(
        "include = [\"policy.d/*.toml\"]\n[[rule]]\nname = \"main\"\nwhen = { kind = \"iq\" }\naction = \"drop\"\n",
        &[
            ("/etc/sw/policy.d/20-b.toml", "[[rule]]\nname = \"b\"\naction = \"drop\"\n"),
            ("/etc/sw/policy.d/10-a.toml", "[list.x]\nentries = [\"a.example\"]\n[[rule]]\nname = \"a\"\nwhen = { from_domain_in = \"x\" }\naction = \"drop\"\n"),
            ("/etc/sw/policy.d/notes.txt", "not toml"),
        ],
    )
    .unwrap();
    assert_eq!(c.policy.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["main", "a", "b"]);
    assert_eq!(c.policy.rules[1].origin.file, PathBuf::from("/etc/sw/policy.d/10-a.toml"));
    let e = config_with(
        "include = [\"policy.d/*.toml\"]\n",
        &[("/etc/sw/policy.d/1.toml", "[[rule]]\nname = \"a\"\naction = \"drop\"\nlisten = 1\n")],
    )
    .unwrap_err();
    assert!(e.starts_with("/etc/sw/policy.d/1.toml:4:"), "{e}");
}

#[test]
fn errors_and_results_are_evaluated_but_never_bounced_by_the_session() {
    // The policy decides; stanza::error_reply refuses to answer errors and results (tested
    // there). Here: an error stanza still matches rules (a drop applies to it).
    let p = policy("[[rule]]\nname = \"r\"\nwhen = { type = \"error\" }\naction = \"bounce\"\n");
    let v = eval(&p, Chain::C2sIn, "<message type='error' to='b@example.test'/>");
    assert_eq!(rule_of(&v), Some("r"));
}

proptest! {
    /// Whatever order a list's entries are written in, every stanza gets the same verdict.
    #[test]
    fn verdicts_do_not_depend_on_list_order(
        entries in proptest::collection::vec("[a-c]{1,2}(\\.[a-c]{1,2}){0,2}\\.example", 1..12),
        seed in any::<u64>(),
        probes in proptest::collection::vec("[a-c]{1,2}(\\.[a-c]{1,2}){0,3}\\.example", 1..12),
    ) {
        let mut shuffled = entries.clone();
        let n = shuffled.len();
        let mut s = seed;
        for i in (1..n).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let build = |list: &[String]| {
            let quoted: Vec<String> = list.iter().map(|e| format!("\"{e}\"")).collect();
            policy(&format!(
                "[list.d]\nentries = [{q}]\n[list.u]\nentries = [{q}]\n[list.w]\nentries = [{q}]\n\
                 [[rule]]\nname = \"dom\"\nwhen = {{ from_domain_in = \"d\" }}\naction = \"drop\"\n\
                 [[rule]]\nname = \"url\"\nwhen = {{ url_in = \"u\" }}\naction = \"drop\"\n\
                 [[rule]]\nname = \"kw\"\nwhen = {{ body_contains = \"list:w\" }}\naction = \"drop\"\n",
                q = quoted.join(", ")
            ))
        };
        let (a, b) = (build(&entries), build(&shuffled));
        for probe in &probes {
            for xml in [
                format!("<message from='u@{probe}/r'><body>x</body></message>"),
                format!("<message from='u@z.test/r'><body>see http://{probe}/p</body></message>"),
                format!("<message from='u@z.test/r'><body>{probe}</body></message>"),
            ] {
                prop_assert_eq!(eval(&a, Chain::C2sOut, &xml).rule, eval(&b, Chain::C2sOut, &xml).rule);
            }
        }
    }
}

#[test]
fn text_outside_the_plain_body_is_seen_too() {
    let p = policy(
        r#"
[list.bad_urls]
entries = ["evil.example"]
[[rule]]
name = "links"
when = { url_in = "bad_urls" }
action = "drop"
[[rule]]
name = "words"
when = { body_contains = "viagra" }
action = "mask"
"#,
    );
    let xhtml = "<message to='b@example.test'><body>click</body><html xmlns='http://jabber.org/protocol/xhtml-im'>\
        <body xmlns='http://www.w3.org/1999/xhtml'><a href='https://EVIL.example/x'>click</a></body></html></message>";
    assert_eq!(rule_of(&eval(&p, Chain::C2sIn, xhtml)), Some("links"));
    assert_eq!(
        rule_of(&eval(&p, Chain::C2sIn, "<message to='b@example.test'><subject>evil.example/x</subject></message>")),
        Some("links")
    );
    assert_eq!(
        rule_of(&eval(&p, Chain::C2sOut, "<presence from='s@x.test/r'><status>visit evil.example</status></presence>")),
        Some("links")
    );
    // Invisible characters do not split a keyword, and the mask covers them.
    let v = eval(&p, Chain::C2sIn, "<message to='b@example.test'><body>cheap Vi\u{200b}AGRA</body><html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>cheap viagra</body></html></message>");
    let Outcome::Rewrite(el) = &v.outcome else { panic!("{v:?}") };
    assert_eq!(body_text(el), "cheap *******");
    assert!(el.child(NS_XHTML_IM, "html").is_none(), "the formatted copy is removed");
}

#[test]
fn rate_buckets_are_per_chain() {
    // The sender's c2s-in and a local recipient's c2s-out see the same message: it must be
    // counted once in each, not twice in one.
    let p = policy("[rate.r]\nrate = \"1/minute\"\nburst = 1\n[[rule]]\nname = \"flood\"\nwhen = { rate = \"r\" }\naction = \"drop\"\n");
    let rates = RateTable::new();
    let now = Instant::now();
    assert_eq!(eval_at(&p, Chain::C2sIn, MSG_IN, &rates, now).rule, None);
    assert_eq!(eval_at(&p, Chain::C2sOut, MSG_IN, &rates, now).rule, None);
    assert_eq!(eval_at(&p, Chain::C2sIn, MSG_IN, &rates, now).rule.as_deref(), Some("flood"));
}

#[test]
fn a_users_new_rate_keys_count_against_its_own_quota_only() {
    // Issue 18, finding 5: one bucket per recipient, and a user who writes to ever new
    // recipients. Past her quota her messages to new recipients are over the limit; another
    // user's are not, and neither are hers to recipients she already has a bucket for.
    let p = policy(
        "[rate.per_recipient]\nrate = \"30/minute\"\nburst = 10\nkey = \"to.bare\"\nmax_keys_per_source = 3\n\
         [[rule]]\nname = \"fan-out\"\nwhen = { rate = \"per_recipient\" }\naction = \"drop\"\n",
    );
    let rates = RateTable::new();
    let now = Instant::now();
    let send = |user: &str, to: &str| {
        let user = jid::parse_full(user).unwrap();
        let ctx = Context { chain: Chain::C2sIn, user: Some(&user), source_ip: "192.0.2.10".parse().unwrap() };
        let v = p.evaluate(&stanza(&format!("<message to='{to}'><body>hi</body></message>")), &ctx, &rates, now);
        v.rule.map(|r| r.to_string())
    };
    let mallory: Vec<_> = (0..50).map(|i| send("mallory@example.test/bot", &format!("r{i}@example.test"))).collect();
    assert!(mallory[..3].iter().all(Option::is_none), "{mallory:?}");
    assert!(mallory[3..].iter().all(|r| r.as_deref() == Some("fan-out")), "{mallory:?}");
    assert_eq!(send("mallory@example.test/other", "r0@example.test"), None, "her existing buckets still count");
    for i in 0..3 {
        assert_eq!(send("alice@example.test/phone", &format!("friend{i}@example.test")), None, "alice's message {i}");
    }
    // Same address as mallory (one NAT), different user: a different source.
    assert_eq!(send("bob@example.test/pc", "r40@example.test"), None);

    let e = error("[rate.r]\nrate = \"1/s\"\nmax_keys_per_source = 0\n");
    assert!(
        e.contains("stanzawall.toml:") && e.contains("rate.r.max_keys_per_source: must be an integer from 1 to"),
        "{e}"
    );
}

/// The text classes of issue 18 (finding 2) and the Unicode spellings (finding 4), as
/// `stanzawall explain` decides them: stanza → rule. Each of these passed unread before.
#[test]
fn every_shown_text_is_read() {
    let p = policy(
        r#"
[list.bad_urls]
entries = ["evil.example"]
[[rule]]
name = "links"
when = { url_in = "bad_urls" }
action = "drop"
[[rule]]
name = "words"
when = { body_contains = ["viagra", "casino"] }
action = "drop"
[[rule]]
name = "card"
when = { body_regex = '\b\d{4}-\d{4}-\d{4}-\d{4}\b' }
action = "drop"
[[rule]]
name = "phrase"
when = { body_regex = 'Buy\s+Now' }
action = "drop"
"#,
    );
    const XHTML_IM: &str = "http://jabber.org/protocol/xhtml-im";
    let table: &[(Chain, &str, Option<&str>)] = &[
        // Controls.
        (Chain::C2sIn, "<message to='b@example.test'><body>hello</body></message>", None),
        (Chain::C2sIn, "<message to='casino@example.test' id='viagra'><body>hi</body></message>", None),
        // Bodies, subjects and status in any namespace the server treats as the stanza's own.
        (Chain::C2sIn, "<message to='b@example.test'><body xmlns='jabber:server'>viagra</body></message>", Some("words")),
        (Chain::C2sOut, "<message from='m@x.test/r'><body xmlns='jabber:server'>CASINO</body></message>", Some("words")),
        (Chain::C2sOut, "<message from='m@x.test/r'><subject xmlns='jabber:server'>casino</subject></message>", Some("words")),
        (Chain::C2sOut, "<presence from='m@x.test/r'><status xmlns='jabber:server'>evil.example</status></presence>", Some("links")),
        (Chain::C2sIn, "<message to='b@example.test'><body xmlns='urn:example:other'>viagra</body></message>", Some("words")),
        // Text nested in child elements, and split by them.
        (Chain::C2sIn, "<message to='b@example.test'><body>cheap <x xmlns='urn:x'>vi</x>agra</body></message>", Some("words")),
        (Chain::C2sIn, "<message to='b@example.test'><body>cas<x xmlns='urn:x'/>ino</body></message>", Some("words")),
        // XHTML-IM text, split by inline markup.
        (Chain::C2sIn, &format!("<message to='b@example.test'><body>hi</body><html xmlns='{XHTML_IM}'><body xmlns='http://www.w3.org/1999/xhtml'><p>vi<b>ag</b><span>ra</span></p></body></html></message>"), Some("words")),
        (Chain::C2sIn, &format!("<message to='b@example.test'><body>hi</body><html xmlns='{XHTML_IM}'><body xmlns='http://www.w3.org/1999/xhtml'><img src='https://evil.example/i.png' alt='x'/></body></html></message>"), Some("links")),
        // Stanza error text (RFC 6120 §8.3.2).
        (Chain::C2sIn, "<message to='b@example.test' type='error'><error type='cancel'><undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>casino</text></error></message>", Some("words")),
        (Chain::C2sIn, "<iq to='b@example.test/r' type='error' id='e'><error type='cancel'><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>see https://evil.example/</text></error></iq>", Some("links")),
        // Invitations: MUC mediated (XEP-0045 §7.8.2) and direct (XEP-0249).
        (Chain::C2sIn, "<message to='room@muc.example.test'><x xmlns='http://jabber.org/protocol/muc#user'><invite to='b@example.test'><reason>casino night</reason></invite></x></message>", Some("words")),
        (Chain::C2sIn, "<message to='b@example.test'><x xmlns='jabber:x:conference' jid='room@muc.example.test' reason='go to evil.example'/></message>", Some("links")),
        (Chain::C2sIn, "<message to='b@example.test'><x xmlns='jabber:x:conference' jid='room@muc.example.test' reason='Viagra'/></message>", Some("words")),
        // File sharing sources (XEP-0447 with XEP-0103 url-data), OOB (XEP-0066), references (XEP-0372).
        (Chain::C2sIn, "<message to='b@example.test'><file-sharing xmlns='urn:xmpp:sfs:0'><file xmlns='urn:xmpp:file:metadata:0'><name>a.exe</name></file><sources><url-data xmlns='http://jabber.org/protocol/url-data' target='https://evil.example/a.exe'/></sources></file-sharing></message>", Some("links")),
        (Chain::C2sIn, "<message to='b@example.test'><file-sharing xmlns='urn:xmpp:sfs:0'><file xmlns='urn:xmpp:file:metadata:0'><desc>casino bonus</desc></file></file-sharing></message>", Some("words")),
        (Chain::C2sIn, "<message to='b@example.test'><x xmlns='jabber:x:oob'><url>http://evil.example/f</url></x></message>", Some("links")),
        (Chain::C2sIn, "<message to='b@example.test'><reference xmlns='urn:xmpp:reference:0' type='data' uri='https://evil.example/'/></message>", Some("links")),
        // Any other extension's text: a microblog entry.
        (Chain::C2sIn, "<iq type='set' id='p'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:microblog:0'><item><entry xmlns='http://www.w3.org/2005/Atom'><title>casino</title></entry></item></publish></pubsub></iq>", Some("words")),
        // Binary payloads are not text (base64 and ciphertext are never shown as such).
        (Chain::C2sIn, "<message to='b@example.test'><data xmlns='urn:xmpp:bob' cid='sha1+x@bob.xmpp.org' type='image/png'>casino</data></message>", None),
        // A regex spanning two shown texts (subject, then body).
        (Chain::C2sIn, "<message to='b@example.test'><subject>BUY</subject><body>now</body></message>", Some("phrase")),
        // Unicode spellings (finding 4): NFKC, case folding, default-ignorable code points.
        (Chain::C2sIn, "<message to='b@example.test'><body>ＶＩＡＧＲＡ</body></message>", Some("words")),
        (Chain::C2sIn, "<message to='b@example.test'><body>𝐜𝐚𝐬𝐢𝐧𝐨</body></message>", Some("words")),
        (Chain::C2sIn, "<message to='b@example.test'><body>ⓒⓐⓢⓘⓝⓞ</body></message>", Some("words")),
        (Chain::C2sIn, "<message to='b@example.test'><body>vi\u{E0020}ag\u{E007F}ra</body></message>", Some("words")),
        (Chain::C2sIn, "<message to='b@example.test'><body>v\u{FE0F}i\u{180B}a\u{3164}g\u{115F}r\u{FFA0}a</body></message>", Some("words")),
        (Chain::C2sIn, "<message to='b@example.test'><body>ca\u{1D173}si\u{1D17A}no\u{034F}</body></message>", Some("words")),
        (Chain::C2sIn, "<message to='b@example.test'><body>card １２３４-５６７８-９０１２-３４５６</body></message>", Some("card")),
        (Chain::C2sIn, "<message to='b@example.test'><body>ＢＵＹ ＮＯＷ</body></message>", Some("phrase")),
        (Chain::C2sIn, "<message to='b@example.test'><body>see evil\u{200B}.example/x</body></message>", Some("links")),
        (Chain::C2sIn, "<message to='b@example.test'><body>see ｅｖｉｌ．ｅｘａｍｐｌｅ</body></message>", Some("links")),
    ];
    let mut wrong = Vec::new();
    for (chain, xml, want) in table {
        let got = eval(&p, *chain, xml);
        if rule_of(&got) != *want {
            wrong.push(format!("{xml}\n  want {want:?}, got {:?}", rule_of(&got)));
        }
    }
    assert!(wrong.is_empty(), "{} of {}:\n{}", wrong.len(), table.len(), wrong.join("\n"));
}

/// What `mask` leaves of each text class: every text node and attribute a match touched.
#[test]
fn mask_rewrites_every_text_it_matched() {
    let p = policy(
        r#"
[[rule]]
name = "spanning"
when = { body_regex = 'cheap\s+pills' }
action = "mask"
[[rule]]
name = "words"
when = { body_contains = ["viagra", "file", "straße"] }
action = "mask"
"#,
    );
    let table: &[(&str, &str)] = &[
        // The issue's case: one match across <subject/> and <body/>.
        (
            "<message to='b@example.test'><subject>Cheap</subject><body>pills!</body></message>",
            "<message to='b@example.test'><subject>*****</subject><body>*****!</body></message>",
        ),
        (
            "<message to='b@example.test'><body xmlns='jabber:server'>buy VIAGRA</body></message>",
            "<message to='b@example.test'><body xmlns='jabber:server'>buy ******</body></message>",
        ),
        (
            "<message to='b@example.test'><body>vi<x xmlns='urn:x'>ag</x>ra ok</body></message>",
            "<message to='b@example.test'><body>**<x xmlns='urn:x'>**</x>** ok</body></message>",
        ),
        (
            "<message to='b@example.test'><x xmlns='jabber:x:conference' jid='r@muc.example.test' reason='viagra party'/></message>",
            "<message to='b@example.test'><x xmlns='jabber:x:conference' jid='r@muc.example.test' reason='****** party'/></message>",
        ),
        (
            "<message to='b@example.test' type='error'><error type='cancel'><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>viagra</text></error></message>",
            "<message to='b@example.test' type='error'><error type='cancel'><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>******</text></error></message>",
        ),
        // At any depth: a message forwarded in a carbon (XEP-0280) loses its XHTML-IM copy too.
        (
            "<message to='b@example.test'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' to='c@example.test'><body>viagra</body><html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>viagra</body></html></message></forwarded></sent></message>",
            "<message to='b@example.test'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' to='c@example.test'><body>******</body></message></forwarded></sent></message>",
        ),
        // Mapped back to the original characters: 6 full-width letters, a ligature standing
        // for two, an ignorable inside the match, ß folded to ss.
        (
            "<message to='b@example.test'><body>ＶＩＡＧＲＡ, \u{FB01}le, vi\u{200B}agra, STRASSE, Straße.</body></message>",
            "<message to='b@example.test'><body>******, ***, *******, *******, ******.</body></message>",
        ),
    ];
    for (xml, want) in table {
        let v = eval(&p, Chain::C2sIn, xml);
        let Outcome::Rewrite(el) = &v.outcome else { panic!("{xml}: {v:?}") };
        assert_eq!(String::from_utf8(el.to_bytes(NS_CLIENT)).unwrap(), *want, "{xml}");
    }
}

#[test]
fn regex_raw_reads_the_text_as_written() {
    let p = policy(
        r##"
[[rule]]
name = "shouting"
regex_raw = true
when = { body_regex = '[A-Z]{6}' }
action = "mask"
mask = "#"
[[rule]]
name = "folded"
when = { body_regex = 'secret' }
action = "drop"
"##,
    );
    let v = eval(&p, Chain::C2sIn, "<message to='b@example.test'><body>hey LISTEN up</body></message>");
    let Outcome::Rewrite(el) = &v.outcome else { panic!("{v:?}") };
    assert_eq!(body_text(el), "hey ###### up");
    // As written: lowercase does not match [A-Z], full-width letters are not A-Z.
    assert_eq!(rule_of(&eval(&p, Chain::C2sIn, "<message><body>hey listen up</body></message>")), None);
    assert_eq!(rule_of(&eval(&p, Chain::C2sIn, "<message><body>ＬＩＳＴＥＮ</body></message>")), None);
    // Folded (the default): case and width do not matter.
    assert_eq!(rule_of(&eval(&p, Chain::C2sIn, "<message><body>ＳＥＣＲＥＴ</body></message>")), Some("folded"));
    let e = error("[[rule]]\nname = \"r\"\nregex_raw = true\nwhen = { body_contains = \"x\" }\naction = \"drop\"\n");
    assert!(e.contains("stanzawall.toml:14: rule[0].regex_raw: only meaningful with a body_regex condition"), "{e}");
    let e = error("[[rule]]\nname = \"r\"\nregex_raw = \"yes\"\nwhen = { body_regex = \"x\" }\naction = \"drop\"\n");
    assert!(e.contains("stanzawall.toml:14"), "{e}");
    // Inside any/not is fine.
    policy(
        "[[rule]]\nname = \"r\"\nregex_raw = true\nwhen = { not = { body_regex = \"[A-Z]\" } }\naction = \"drop\"\n",
    );
}

#[test]
fn audit_bodies_are_read_in_any_stanza_namespace() {
    let el = stanza("<message><body>a<b xmlns='urn:x'>b</b></body><body xmlns='jabber:server' xml:lang='de'>c</body><subject>s</subject></message>");
    assert_eq!(body_text(&el), "ab\nc");
}

proptest! {
    /// Detection and masking agree: whenever a keyword rule matches, the masked stanza changes,
    /// and it no longer matches — every occurrence of every keyword was masked, whatever NFKC,
    /// case folding and ignorable characters did to the lengths.
    #[test]
    fn a_mask_that_matched_masks_all_it_matched(
        words in proptest::collection::vec("[abcsß]{1,3}", 1..4),
        text in "([abcsßSABC ]|\u{FB00}|\u{FF41}|\u{FF33}|\u{200B}|\u{E0041}|\u{0301}|\u{1E9E}|\u{1D41A}){0,24}",
    ) {
        let quoted: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
        let p = policy(&format!(
            "[[rule]]\nname = \"m\"\nwhen = {{ body_contains = [{}] }}\naction = \"mask\"\n",
            quoted.join(", ")
        ));
        let xml = format!("<message to='b@example.test'><subject>{text}</subject><body>{text}</body></message>");
        let v = eval(&p, Chain::C2sIn, &xml);
        let folded = fold::fold(&text).into_owned();
        let expected = words.iter().any(|w| folded.contains(&*fold::fold(w)));
        prop_assert_eq!(rule_of(&v).is_some(), expected, "{:?} in {:?}", words, folded);
        if let Outcome::Rewrite(el) = &v.outcome {
            prop_assert_ne!(el, &stanza(&xml));
            let again = p.evaluate(el, &Context { chain: Chain::C2sIn, user: Some(&alice()), source_ip: "192.0.2.10".parse().unwrap() }, &RateTable::new(), Instant::now());
            prop_assert_eq!(again.rule, None, "still matches after masking: {:?}", el);
        }
    }
}

/// The evaluator's shortcuts give what the long way gave: the bare string sliced from a prepared
/// JID is `to_bare().to_string()`, and a prepared JID's domain looked up directly is what parsing
/// that domain again as text and looking it up gave.
#[test]
fn prepared_jid_shortcuts_equal_the_long_way() {
    let set = DomainSet::from_entries(["Spam.Example", "*.bulk.example", "xn--bcher-kva.example", "[::1]", "10.0.0.1"])
        .unwrap();
    for s in [
        "user@spam.example/r",
        "USER@SPAM.EXAMPLE./Res/with/slashes@and@ats",
        "spam.example",
        "a.bulk.example/r",
        "bulk.example",
        "x@bücher.example/phone",
        "x@BÜCHER.example",
        "[0:0::1]",
        "u@[::1]/r",
        "10.0.0.1",
        "ﬀ@ﬀ.example/ﬀ",
        "notspam.example",
    ] {
        let j = crate::jid::parse(s).unwrap_or_else(|| panic!("{s}"));
        assert_eq!(bare_str(&j), j.to_bare().to_string(), "{s}");
        assert_eq!(set.matches(&j), set.matches_domain(j.domain().as_str()), "{s}");
    }
}

/// A presence walks only the rules that can match a presence; the verdicts and hits are those
/// of the full walk.
#[test]
fn kind_index_leaves_out_only_rules_that_cannot_match() {
    let rules = r#"
[[rule]]
name = "msg-only"
when = { kind = "message", body_contains = ["x"] }
action = "drop"

[[rule]]
name = "log-presence"
when = { kind = ["presence", "iq"] }
action = "log"

[[rule]]
name = "any-kind"
when = { any = [{ kind = "message" }, { type = "unavailable" }] }
action = "drop"
"#;
    let policy = policy(rules);
    let user = alice();
    let ctx = Context { chain: Chain::C2sIn, user: Some(&user), source_ip: [127, 0, 0, 1].into() };
    let message = [0usize, 2];
    let presence = [1usize, 2];
    assert_eq!(policy.by_kind[Chain::C2sIn.index()][kind_slot(Some(Kind::Message))], message);
    assert_eq!(policy.by_kind[Chain::C2sIn.index()][kind_slot(Some(Kind::Presence))], presence);
    assert_eq!(policy.by_kind[Chain::C2sIn.index()][kind_slot(Some(Kind::Iq))], presence);
    assert_eq!(policy.by_kind[Chain::C2sIn.index()][kind_slot(None)], [2usize]);
    let el = stanza("<presence type='unavailable'/>");
    let v = policy.evaluate(&el, &ctx, &RateTable::new(), Instant::now());
    assert_eq!(v.rule.as_deref(), Some("any-kind"));
    assert_eq!(v.hits.iter().map(|h| &*h.rule).collect::<Vec<_>>(), ["log-presence", "any-kind"]);
}

#[test]
fn quarantine_is_an_action_that_holds_the_stanza_and_its_wrapper() {
    let p = policy(
        r#"
[[rule]]
name = "hold-links"
when = { kind = "message", body_regex = "https?://" }
action = "quarantine"
"#,
    );
    let rates = RateTable::new();
    let now = Instant::now();
    let v = eval_at(
        &p,
        Chain::C2sIn,
        "<message to='bob@example.test'><body>see http://x.test</body></message>",
        &rates,
        now,
    );
    assert_eq!((v.outcome, v.rule.as_deref()), (Outcome::Quarantine, Some("hold-links")));
    assert_eq!(v.hits[0].action.as_str(), "quarantine");
    assert_eq!(Outcome::Quarantine.disposition().as_str(), "quarantine");
    // A carbon of a held message holds the whole carbon (the wrapper is what is delivered).
    let user = alice();
    let ctx = Context { chain: Chain::C2sOut, user: Some(&user), source_ip: "192.0.2.10".parse().unwrap() };
    let carbon = stanza(
        "<message from='alice@example.test' to='alice@example.test/phone'>\
           <received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>\
             <message xmlns='jabber:client' from='mallory@spam.test/x' to='alice@example.test/laptop'>\
               <body>http://spam.test</body></message></forwarded></received></message>",
    );
    let by_sender =
        policy("[[rule]]\nname = \"hold-mallory\"\nwhen = { from = \"mallory@spam.test\" }\naction = \"quarantine\"\n");
    let eval = by_sender.evaluate_stanza(&carbon, &ctx, &rates, now);
    assert_eq!((eval.outcome, eval.outer.rule), (Outcome::Quarantine, None));
    assert_eq!(eval.wrapped[0].verdict.rule.as_deref(), Some("hold-mallory"));
    // Every chain takes it, and `log_only` shadows it like any action.
    for chain in Chain::ALL {
        let v =
            eval_at(&p, chain, "<message from='a@b.test/r' to='c@d.test'><body>http://x</body></message>", &rates, now);
        assert_eq!(v.outcome, Outcome::Quarantine, "{chain:?}");
    }
    let shadow =
        policy("[[rule]]\nname = \"q\"\nwhen = { kind = \"message\" }\naction = \"quarantine\"\nlog_only = true\n");
    assert_eq!(eval_at(&shadow, Chain::C2sIn, "<message to='b@x.test'/>", &rates, now).outcome, Outcome::Pass);
    // Options of other actions are refused with it; an unknown action names quarantine.
    let e = error("[[rule]]\nname = \"q\"\nwhen = { kind = \"message\" }\naction = \"quarantine\"\ntext = \"no\"\n");
    assert!(e.contains("rule[0].text: only meaningful with action = bounce or close"), "{e}");
    let e = error("[[rule]]\nname = \"q\"\naction = \"hold\"\n");
    assert!(e.contains("expected pass, drop, bounce, close, strip, mask, log or quarantine"), "{e}");
}

#[test]
fn quarantine_section_is_validated() {
    let c = config_with("[quarantine]\nmax_entries = 5\nmax_bytes = \"1MiB\"\nretention = \"2d\"\n", &[]).unwrap();
    assert_eq!(c.quarantine.max_entries, 5);
    assert_eq!(c.quarantine.max_bytes, 1 << 20);
    assert_eq!(c.quarantine.retention, Duration::from_secs(2 * 86_400));
    assert_eq!(c.quarantine.path, Path::new("/etc/sw/state/quarantine.redb"));
    let d = config_with("", &[]).unwrap().quarantine;
    assert_eq!((d.max_entries, d.max_bytes, d.retention.as_secs()), (10_000, 64 << 20, 14 * 86_400));
    for (text, want) in [
        ("max_entries = 0", "quarantine.max_entries: must be an integer from 1"),
        ("max_bytes = \"12 parsecs\"", "quarantine.max_bytes: expected a size"),
        ("retention = \"0s\"", "quarantine.retention: expected a duration"),
        ("retention = \"400d\"", "quarantine.retention: expected a duration"),
        ("path = \"x\"", "unknown field `path`"),
    ] {
        let e = config_with(&format!("[quarantine]\n{text}\n"), &[]).unwrap_err();
        assert!(e.contains("stanzawall.toml:") && e.contains(want), "{text}: {e}");
    }
}
