//! A fixed amount of hot-path work for valgrind (callgrind counts instructions; perf counters
//! are not available on the benchmark machines), so that instruction counts per stanza can be
//! compared before and after a change (issue 14).
//!
//! ```sh
//! cargo build --release -p stanzawall-core --example hotpath_profile
//! valgrind --tool=callgrind --callgrind-out-file=cg.out \
//!     target/release/examples/hotpath_profile parse 2000
//! callgrind_annotate --inclusive=yes cg.out | head -40
//! ```
//!
//! Modes: `parse` (the 218-byte chat message of `benches/xml.rs`, N times through one reader),
//! `serialize` (each parsed tree written 10 times into one buffer with room), `fresh` (each
//! written 10 times into a new buffer, as a session's flush buffer starts out), `parse4k` and
//! `serialize4k` (the same for the ≈4 KB body of `policy4k`), `policy` (the `bench/run.sh`
//! realistic policy with 10-entry lists evaluated N times on c2s-in and on c2s-out for a
//! 270-byte chat message), `policy4k` (the same for a ≈4 KB body, `bench/run.sh`'s bulk row).

// A profiling driver whose setup fails has nothing to measure: stopping with the reason is all
// it can do.
#![allow(clippy::panic, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stanzawall_core::config::{Config, Files};
use stanzawall_core::jid::parse_full;
use stanzawall_core::policy::{Chain, Context, Policy, RateTable};
use stanzawall_core::stream::NS_CLIENT;
use stanzawall_core::xml::{parse_stanzas, StreamReader, XmlEvent, XmlLimits};

const HEADER: &str = "<?xml version='1.0'?><stream:stream to='example.test' version='1.0' \
    xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

/// The chat message of `benches/xml.rs`.
const STANZA: &str = "<message to='bob@example.test' from='alice@example.test/phone' type='chat' \
    id='a1b2c3d4-e5f6789'><body>Hello Bob, are we still on for lunch today?</body>\
    <active xmlns='http://jabber.org/protocol/chatstates'/></message>";

/// A chat message like `bench/run.sh`'s loadgen sends (one URL in the body).
const CHAT: &str = "<message to='alice@bench.test/res' from='bob@bench.test/res' type='chat' \
    id='1733100000000000-42'><body>Lorem ipsum dolor sit amet, see https://docs.friends.example/share/q3 \
    for the slides; consectetur adipiscing elit, sed do eiusmod tempor.</body></message>";

struct Mem(HashMap<PathBuf, String>);

impl Files for Mem {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        self.0.get(path).cloned().ok_or_else(|| std::io::ErrorKind::NotFound.into())
    }

    fn list_dir(&self, _: &Path) -> std::io::Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }
}

fn policy() -> Policy {
    let mut text = String::from(
        r#"
[[tls.certificate]]
domains = ["bench.test"]
cert = "c.crt"
key = "c.key"

[[listener]]
name = "c2s"
kind = "c2s"
bind = "127.0.0.1:5222"
backend = "127.0.0.1:15222"

[list.spam_domains]
file = "lists/domains.txt"

[list.bad_urls]
file = "lists/urls.txt"

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
name   = "blocked-destinations"
chain  = "c2s-in"
when   = { to_domain_in = "spam_domains" }
action = "bounce"

[[rule]]
name   = "malicious-links"
when   = { kind = "message", url_in = "bad_urls" }
action = "bounce"

[[rule]]
name   = "no-file-offers"
when   = { payload = ["http://jabber.org/protocol/bytestreams", "http://jabber.org/protocol/si", "jabber:x:oob"] }
action = "bounce"

[[rule]]
name   = "flood"
when   = { kind = "message", rate = "per_sender" }
action = "bounce"

[[rule]]
name     = "watch-keywords"
when     = { body_contains = ["confidential", "password:", "wire transfer now", "gift card code", "verify your account"] }
action   = "drop"
log_only = true
"#,
    );
    for i in 0..100 {
        text.push_str(&format!(
            "\n[[rule]]\nname   = \"spam-pattern-{i}\"\nwhen   = {{ kind = \"message\", body_regex = \
             '(?i)(free|cheap|instant)\\s+(crypto|bitcoin|prize){i}\\b.*\\d{{3,}}' }}\naction = \"drop\"\n"
        ));
    }
    let lines = |f: &dyn Fn(usize) -> String| (0..10).map(|i| f(i) + "\n").collect::<String>();
    let files = Mem(HashMap::from([
        (PathBuf::from("/etc/sw/lists/domains.txt"), lines(&|i| format!("spam{i}-{i:x}.example"))),
        (PathBuf::from("/etc/sw/lists/urls.txt"), lines(&|i| format!("phish{i}.example/login/{i:x}"))),
    ]));
    let config = Config::parse_with(&text, Path::new("/etc/sw/stanzawall.toml"), &files)
        .unwrap_or_else(|e| panic!("profile config: {e}"));
    Policy::compile(&config.policy).unwrap_or_else(|e| panic!("profile policy: {e}"))
}

/// `bench/run.sh`'s bulk row: a ≈4 KB body (loadgen's filler) with one URL.
fn bulk_message() -> String {
    format!(
        "<message to='alice@bench.test/res' type='chat' id='b1'><body>Have a look at \
         https://news1.example.org/articles/2?ref=chat before we meet. {}</body></message>",
        &"The quarterly numbers look fine; let us go through the slides tomorrow morning. ".repeat(51)[..3940]
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("parse", String::as_str);
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let mut input: Vec<u8> = HEADER.as_bytes().to_vec();
    for _ in 0..n {
        input.extend_from_slice(STANZA.as_bytes());
    }
    match mode {
        "parse" | "serialize" | "fresh" | "parse4k" | "serialize4k" => {
            let big = mode.ends_with("4k");
            if big {
                input = HEADER.as_bytes().to_vec();
                for _ in 0..n {
                    input.extend_from_slice(bulk_message().as_bytes());
                }
            }
            let mut r = StreamReader::new(XmlLimits::default());
            let mut out = Vec::with_capacity(input.len());
            let mut stanzas = 0;
            // 16 KiB reads, as the daemon's read buffers deliver them at most.
            for chunk in input.chunks(16 * 1024) {
                r.feed(black_box(chunk));
                while let Ok(Some(ev)) = r.next_event() {
                    if let XmlEvent::Stanza(el) = ev {
                        stanzas += 1;
                        match mode {
                            // Into one buffer with room (the serializer's own cost).
                            "serialize" | "serialize4k" => {
                                out.clear();
                                for _ in 0..10 {
                                    el.write_to(&mut out, NS_CLIENT);
                                }
                            }
                            // Each write into a new buffer, as a session's flush buffer starts
                            // after the daemon took the last one (allocation and growth).
                            "fresh" => {
                                for _ in 0..10 {
                                    let mut flush = Vec::new();
                                    el.write_to(&mut flush, NS_CLIENT);
                                    out.clear();
                                    out.extend_from_slice(black_box(&flush));
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            println!("{mode}: {stanzas} stanzas, {} bytes out", out.len());
        }
        "policy" | "policy4k" => {
            let policy = policy();
            let bulk = bulk_message();
            let xml = if mode == "policy" { CHAT } else { bulk.as_str() };
            let el = parse_stanzas(xml, XmlLimits::default()).expect("chat stanza").remove(0);
            let user = parse_full("bob@bench.test/res").expect("user");
            let rates = RateTable::new();
            let mut t = Instant::now();
            let mut passed = 0;
            for chain in [Chain::C2sIn, Chain::C2sOut] {
                let ctx = Context { chain, user: Some(&user), source_ip: [127, 0, 0, 1].into() };
                for _ in 0..n {
                    t += Duration::from_micros(1);
                    let ev = policy.evaluate_stanza(black_box(&el), &ctx, &rates, t);
                    passed += usize::from(ev.outcome == stanzawall_core::policy::Outcome::Pass);
                }
            }
            println!("policy: {passed} of {} passed", 2 * n);
        }
        "canon" => {
            // Every file named after the mode, fed whole and in 7-byte reads, with and without
            // skip mode: each event, its canonical bytes, and the error that ended the stream.
            // Two builds' outputs compared byte for byte prove a reader change left the trees
            // and their canonical form as they were.
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            // `canon stream FILES…` / `canon stanzas FILES…`: the inputs of the fuzz targets of
            // those names (the first byte is the target's read size and is skipped; `stanzas`
            // puts a stream header in front).
            let stanzas = args.get(2).map(String::as_str) == Some("stanzas");
            for path in &args[3..] {
                let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
                let mut data = if stanzas { HEADER.as_bytes().to_vec() } else { Vec::new() };
                data.extend_from_slice(raw.get(1..).unwrap_or_default());
                for (chunk, skip) in [(data.len().max(1), false), (7, false), (data.len().max(1), true)] {
                    let mut r = StreamReader::new(XmlLimits { stanza_bytes: 4096, depth: 8, attributes: 8 });
                    r.skip_over_limits(skip);
                    let mut line = Vec::new();
                    'feed: for c in data.chunks(chunk) {
                        r.feed(c);
                        loop {
                            match r.next_event() {
                                Ok(Some(XmlEvent::Stanza(el))) => {
                                    el.write_to(&mut line, NS_CLIENT);
                                    line.push(b'|');
                                }
                                Ok(Some(XmlEvent::StreamOpen { header, default_ns })) => {
                                    line.extend_from_slice(format!("open {default_ns:?} ").as_bytes());
                                    header.write_to(&mut line, "");
                                    line.push(b'|');
                                }
                                Ok(Some(ev)) => line.extend_from_slice(format!("{ev:?}|").as_bytes()),
                                Ok(None) => break,
                                Err(e) => {
                                    line.extend_from_slice(format!("error {e:?}").as_bytes());
                                    break 'feed;
                                }
                            }
                        }
                    }
                    line.push(b'\n');
                    out.write_all(&line).expect("stdout");
                }
            }
        }
        other => {
            panic!("unknown mode {other}: parse, serialize, fresh, parse4k, serialize4k, policy, policy4k or canon")
        }
    }
}
