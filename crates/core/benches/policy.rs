//! Policy evaluation per stanza and policy compile time, at 10 and at 100,000 entries in each
//! list (domains, JIDs, URLs, keywords), beside 100 regex rules and a per-sender rate. The design
//! goal is that evaluation cost does not grow with list size (docs/DESIGN.md "Policy, state, performance"): the
//! `evaluate_lists_10` and `evaluate_lists_100000` groups should report about the same times.
//!
//! `cargo bench -p stanzawall-core --bench policy -- --warm-up-time 1 --measurement-time 3`

// A bench whose setup fails has nothing to measure: stopping with the reason is all it can do.
#![allow(clippy::panic, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use stanzawall_core::config::{Config, Files};
use stanzawall_core::jid::parse_full;
use stanzawall_core::limit::Rate;
use stanzawall_core::policy::rate::{Bucket, KeySource, Limit};
use stanzawall_core::policy::{Chain, Context, Outcome, Policy, PolicyConfig, RateTable};
use stanzawall_core::xml::{parse_stanzas, Element, XmlLimits};

const SIZES: [usize; 2] = [10, 100_000];

const CONFIG_PATH: &str = "/etc/sw/stanzawall.toml";

/// Listeners and certificates the config needs besides the policy (never read: certificates are
/// the daemon's business).
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

/// The rules of `bench/run.sh`'s realistic policy, plus a JID list and a keyword list. The
/// per-sender rate must never trip, yet its bucket lookup is paid on every message: the bench
/// advances its clock by the rate's emission interval (1 µs) per stanza, so the one sender stays
/// exactly at the rate however many iterations criterion runs.
const RULES: &str = r#"
[list.spam_domains]
file = "lists/domains.txt"

[list.blocked_jids]
file = "lists/jids.txt"

[list.bad_urls]
file = "lists/urls.txt"

[list.bad_words]
file = "lists/words.txt"

[rate.per_sender]
rate  = "1000000/second"
burst = 1000000
key   = "from.bare"

[[rule]]
name   = "blocked-servers"
chain  = "c2s-out"
when   = { from_domain_in = "spam_domains" }
action = "drop"

[[rule]]
name   = "blocked-senders"
chain  = "c2s-out"
when   = { from_in = "blocked_jids" }
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
name   = "bad-words"
when   = { kind = "message", body_contains = "list:bad_words" }
action = "drop"
"#;

/// In-memory list files.
struct Mem(HashMap<PathBuf, String>);

impl Files for Mem {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        self.0.get(path).cloned().ok_or_else(|| std::io::ErrorKind::NotFound.into())
    }

    fn list_dir(&self, _: &Path) -> std::io::Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }
}

/// A pronounceable-looking 8-letter word, distinct for every `i` below 26^8 (7 is coprime with
/// 26): real keyword lists start with every letter, so no single-byte prefilter can skip the body.
fn word(i: usize) -> String {
    let mut n = (i as u64).wrapping_mul(7_777_777) % 26u64.pow(8);
    (0..8)
        .map(|_| {
            let c = char::from(b'a' + (n % 26) as u8);
            n /= 26;
            c
        })
        .collect()
}

fn domain(i: usize) -> String {
    format!("spam{i}-{:x}.example", i.wrapping_mul(2_654_435_761) % 1_000_000_007)
}

fn url(i: usize) -> String {
    format!("phish{i}.example/login/{:x}", i.wrapping_mul(40_503) % 1_000_000_007)
}

fn lines(n: usize, entry: impl Fn(usize) -> String) -> String {
    (0..n).map(|i| entry(i) + "\n").collect()
}

/// The whole policy with every list `n` entries long, parsed but not compiled.
fn policy_config(n: usize) -> PolicyConfig {
    let mut text = format!("{BASE}{RULES}");
    for i in 0..100 {
        text.push_str(&format!(
            "\n[[rule]]\nname   = \"spam-pattern-{i}\"\nwhen   = {{ kind = \"message\", body_regex = \
             '(?i)(free|cheap|instant)\\s+(crypto|bitcoin|prize){i}\\b.*\\d{{3,}}' }}\naction = \"drop\"\n"
        ));
    }
    let files = Mem(HashMap::from([
        (PathBuf::from("/etc/sw/lists/domains.txt"), lines(n, domain)),
        (PathBuf::from("/etc/sw/lists/jids.txt"), lines(n, |i| format!("bot{i}@{}", domain(i + n)))),
        (PathBuf::from("/etc/sw/lists/urls.txt"), lines(n, url)),
        (PathBuf::from("/etc/sw/lists/words.txt"), lines(n, word)),
    ]));
    match Config::parse_with(&text, Path::new(CONFIG_PATH), &files) {
        Ok(c) => c.policy,
        Err(e) => panic!("bench config: {e}"),
    }
}

fn stanza(xml: &str) -> Element {
    match parse_stanzas(xml, XmlLimits::default()) {
        Ok(mut v) if v.len() == 1 => v.remove(0),
        other => panic!("bench stanza {xml}: {other:?}"),
    }
}

/// ~200 bytes of chat with one unlisted link.
const INNOCENT_BODY: &str = "Hi Alice! The slides from this morning are up at \
    https://docs.friends.example/share/q3-review.pdf - have a look before Thursday and tell me \
    what you think about the budget part. Lunch at noon as usual?";

fn innocent(_n: usize) -> String {
    format!(
        "<message from='carol@friends.example/laptop' to='alice@example.test/phone' type='chat' \
         id='m1'><body>{INNOCENT_BODY}</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
    )
}

/// The same chat with the link replaced by one near the end of the URL list.
fn listed_link(n: usize) -> String {
    let body = INNOCENT_BODY.replace("docs.friends.example/share/q3-review.pdf", &format!("{}?s=1", url(n - 2)));
    format!(
        "<message from='carol@friends.example/laptop' to='alice@example.test/phone' type='chat' \
         id='m2'><body>{body}</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
    )
}

fn presence(_n: usize) -> String {
    "<presence from='carol@friends.example/laptop' to='alice@example.test/phone' id='p1'>\
     <show>away</show><status>In a meeting</status><priority>5</priority>\
     <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://conversations.im' \
     ver='q07IKJEyjvHSyhy//CH0CxmKi8w='/></presence>"
        .to_owned()
}

/// `bench/run.sh`'s bulk row: a ≈4 KB body of ordinary prose (loadgen's filler) with one link.
fn bulk_4k(_n: usize) -> String {
    let filler = "The quarterly numbers look fine; let us go through the slides tomorrow morning. ".repeat(51);
    format!(
        "<message from='carol@friends.example/laptop' to='alice@example.test/phone' type='chat' \
         id='m3'><body>Have a look at https://news1.example.org/articles/2?ref=chat before we meet. {}</body></message>",
        &filler[..3940]
    )
}

type Case = (&'static str, fn(usize) -> String, Option<&'static str>);

/// Each stanza, and the rule that must decide it (`None`: the chain's default, pass).
const CASES: [Case; 4] = [
    ("innocent_message", innocent, None),
    ("bulk_4k_message", bulk_4k, None),
    ("listed_url_message", listed_link, Some("malicious-links")),
    ("presence", presence, None),
];

fn evaluate(c: &mut Criterion) {
    let user = parse_full("alice@example.test/phone").expect("bench user JID");
    let ctx = Context { chain: Chain::C2sOut, user: Some(&user), source_ip: [192, 0, 2, 10].into() };
    for n in SIZES {
        let compiled = Policy::compile(&policy_config(n));
        let policy = compiled.unwrap_or_else(|e| panic!("bench policy: {e}"));
        let rates = RateTable::new();
        let mut t = Instant::now();
        let mut g = c.benchmark_group(format!("evaluate_lists_{n}"));
        g.throughput(Throughput::Elements(1));
        for (name, xml, decided_by) in CASES {
            let el = stanza(&xml(n));
            // The bench measures the intended path only if the verdict is the intended one,
            // before and after (the flood rule must not have tripped meanwhile).
            let check = |t| {
                let v = policy.evaluate(&el, &ctx, &rates, t);
                assert_eq!(v.rule.as_deref(), decided_by, "{name} at {n}: {v:?}");
                assert_eq!(v.outcome == Outcome::Pass, decided_by.is_none(), "{name} at {n}: {v:?}");
            };
            check(t);
            // Criterion calls the routine many times (warm-up, each sample): the clock lives
            // outside it so that it never goes back.
            g.bench_function(name, |b| {
                b.iter(|| {
                    t += Duration::from_micros(1);
                    policy.evaluate(black_box(&el), &ctx, &rates, t)
                })
            });
            t += Duration::from_micros(1);
            check(t);
        }
        g.finish();
    }
}

fn compile(c: &mut Criterion) {
    let mut g = c.benchmark_group("compile");
    // One compile of the 100k policy takes a noticeable fraction of a second: few samples, each
    // of the same iteration count.
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    for n in SIZES {
        let config = policy_config(n);
        g.bench_with_input(BenchmarkId::new("lists", n), &config, |b, config| {
            b.iter(|| Policy::compile(black_box(config)).map(|p| p.rule_count()))
        });
    }
    g.finish();
}

/// The rate table alone: a charge to a bucket that exists, a new bucket (idle ones forgotten as
/// the clock moves), and a user at its quota making ever new keys (each refused). All three
/// should stay flat as the table fills: nothing scans it.
fn rate_table(c: &mut Criterion) {
    let alice = KeySource::User(parse_full("alice@example.test/phone").expect("bench JID").to_bare());
    let mallory = KeySource::User(parse_full("mallory@example.test/bot").expect("bench JID").to_bare());
    let limit = Limit { rate: Rate::parse("30/minute", 10).expect("bench rate"), max_keys_per_source: 4096 };
    let mut g = c.benchmark_group("rate_table");
    g.throughput(Throughput::Elements(1));
    let rates = RateTable::new();
    let mut t = Instant::now();
    let keys: Vec<String> = (0..1_000_000).map(|i| format!("r{i}@example.test")).collect();
    let existing = Bucket { limiter: "per_recipient", chain: Chain::C2sIn, key: "bob@example.test" };
    g.bench_function("existing_bucket", |b| {
        b.iter(|| {
            t += Duration::from_micros(1);
            rates.over_limit(black_box(existing), &alice, &limit, t)
        })
    });
    let mut i = 0;
    let wide = Limit { max_keys_per_source: 1 << 20, ..limit };
    g.bench_function("new_bucket", |b| {
        b.iter(|| {
            // 100 µs apart: 2 s (one emission interval) makes 20,000 busy buckets at most.
            t += Duration::from_micros(100);
            i = (i + 1) % keys.len();
            rates.over_limit(Bucket { limiter: "fan_out", chain: Chain::C2sIn, key: &keys[i] }, &alice, &wide, t)
        })
    });
    // Mallory at her quota, her buckets busy for the whole bench (10 events each: 20 s; the
    // clock stands still from here).
    for k in keys.iter().take(4096) {
        for _ in 0..10 {
            rates.over_limit(Bucket { limiter: "per_recipient", chain: Chain::C2sIn, key: k }, &mallory, &limit, t);
        }
    }
    g.bench_function("source_at_quota", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            rates.over_limit(
                Bucket { limiter: "per_recipient", chain: Chain::C2sIn, key: &keys[i] },
                &mallory,
                &limit,
                t,
            )
        })
    });
    g.finish();
}

/// The anti-spam rules on top of the realistic policy (10-entry lists): a stranger rule (the
/// recipient's roster of 200 contacts is known; the sender is one of them), a fan-out limit that
/// never trips (one sender, one recipient) and a wave rule (the text is fingerprinted and looked
/// up on every message; one sender never makes a wave). Compare with
/// `evaluate_lists_10/innocent_message`: the difference is the anti-spam cost per message.
const ANTISPAM_RULES: &str = r#"
[[rule]]
name   = "strangers"
chain  = "c2s-out"
when   = { kind = "message", type = ["chat", "normal"], stranger = true }
action = "bounce"

[[rule]]
name   = "fan-out"
chain  = "c2s-out"
when   = { kind = "message", fanout = { recipients = 20, window = "10m" } }
action = "drop"

[[rule]]
name   = "waves"
chain  = "c2s-out"
when   = { kind = "message", wave = { senders = 5, window = "30m" } }
action = "drop"
"#;

fn antispam(c: &mut Criterion) {
    let mut config = policy_config(10);
    let extra =
        match Config::parse_with(&format!("{BASE}{ANTISPAM_RULES}"), Path::new(CONFIG_PATH), &Mem(HashMap::new())) {
            Ok(c) => c.policy,
            Err(e) => panic!("bench anti-spam config: {e}"),
        };
    config.rules.extend(extra.rules);
    let policy = Policy::compile(&config).unwrap_or_else(|e| panic!("bench policy: {e}"));
    let user = parse_full("alice@example.test/phone").expect("bench user JID");
    let ctx = Context { chain: Chain::C2sOut, user: Some(&user), source_ip: [192, 0, 2, 10].into() };
    let rates = RateTable::new();
    let mut roster = String::from("<iq type='result' id='r'><query xmlns='jabber:iq:roster'>");
    for i in 0..200 {
        roster.push_str(&format!("<item jid='friend{i}@friends.example' subscription='both'/>"));
    }
    roster.push_str("<item jid='carol@friends.example' subscription='both'/></query></iq>");
    rates.antispam().learn_from_server(&stanza(&roster), Some(&user));
    let el = stanza(&innocent(0).replace("alice@example.test/phone", "alice@example.test"));
    let mut t = Instant::now();
    let v = policy.evaluate(&el, &ctx, &rates, t);
    assert_eq!((v.outcome, v.rule), (Outcome::Pass, None), "the innocent message passes");
    let mut g = c.benchmark_group("antispam");
    g.throughput(Throughput::Elements(1));
    g.bench_function("innocent_message", |b| {
        b.iter(|| {
            t += Duration::from_micros(1);
            policy.evaluate(black_box(&el), &ctx, &rates, t)
        })
    });
    // Its parts: the fingerprint of the body alone.
    g.bench_function("fingerprint", |b| {
        b.iter(|| {
            let normal = stanzawall_core::antispam::wave::normalize(
                black_box(INNOCENT_BODY),
                stanzawall_core::policy::fold::fold,
            );
            stanzawall_core::antispam::wave::minhash(&normal)
        })
    });
    g.finish();
    let v = policy.evaluate(&el, &ctx, &rates, t + Duration::from_micros(1));
    assert_eq!(v.outcome, Outcome::Pass, "still passes after the run: {v:?}");
}

criterion_group!(benches, evaluate, compile, rate_table, antispam);
criterion_main!(benches);
