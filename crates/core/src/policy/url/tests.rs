//! Tests of URL extraction, normalization and [`super::UrlSet`].

#[test]
fn a_later_scheme_does_not_hide_the_link_before_it() {
    for text in ["evil.example/x?u=a://b", "evil.example/a://", "see evil.example/p?next=https://ok.example/"] {
        let (urls, _) = extract_urls(text);
        assert!(urls.iter().any(|u| u.host == "evil.example"), "{text}: {urls:?}");
    }
    let (urls, _) = extract_urls("see evil.example/p?next=https://ok.example/");
    assert!(urls.iter().any(|u| u.host == "ok.example"), "{urls:?}");
}

use super::extract::{extract_from_token, is_delimiter, Budget};
use super::normalize::{parse_plain, parse_with_url_crate};
use super::*;
use proptest::prelude::*;

fn url(host: &str, path: &str) -> NormalizedUrl {
    NormalizedUrl { host: host.into(), path: path.into() }
}

fn urls(text: &str) -> Vec<NormalizedUrl> {
    let (found, scan) = extract_urls(text);
    assert_eq!(scan, Scan::Complete, "{text}");
    found
}

fn one(text: &str) -> NormalizedUrl {
    let found = urls(text);
    assert_eq!(found.len(), 1, "{text}: {found:?}");
    found.into_iter().next().unwrap()
}

fn set(entries: &[&str]) -> UrlSet {
    UrlSet::from_entries(entries).unwrap()
}

#[test]
fn scheme_urls_and_trailing_punctuation() {
    for text in [
        "see http://evil.example/payload.",
        "see http://evil.example/payload, then",
        "(http://evil.example/payload)",
        "<http://evil.example/payload>",
        "\"http://evil.example/payload\"",
        "'http://evil.example/payload'",
        "«https://evil.example/payload»",
        "go:https://evil.example/payload!",
        "HTTP://EVIL.EXAMPLE/Payload",
        "ftp://evil.example/payload?",
        "hxxp://evil.example/payload",
        "http:///evil.example//payload",
        "http://evil.example./payload",
        "http://user:pw@evil.example:8443/payload#frag",
        "[text](https://evil.example/payload)",
        "评论：http://evil.example/payload。",
    ] {
        assert_eq!(one(text), url("evil.example", "/payload"), "{text}");
    }
    assert_eq!(one("http://w.example/Foo_(bar))."), url("w.example", "/foo_(bar)"));
}

#[test]
fn schemeless_urls() {
    for text in [
        "www.evil.example/payload",
        "visit evil.example/payload.",
        "(evil.example/payload)",
        "link:evil.example/payload",
        "[x](evil.example/payload)",
        "evil.example:8080/payload",
        "EVIL.Example/Payload?utm=1",
    ] {
        let host = if text.starts_with("www") { "www.evil.example" } else { "evil.example" };
        assert_eq!(one(text), url(host, "/payload"), "{text}");
    }
    assert_eq!(one("ping 10.0.0.1/x"), url("10.0.0.1", "/x"));
    // Not hosts: decimals, versions, abbreviations, e-mail addresses and JIDs.
    assert!(urls("pi is 3.14, v1.2.3, e.g. this; mail bob@evil.example or xmpp:bob@evil.example").is_empty());
}

#[test]
fn normal_form() {
    let n = |s: &str| NormalizedUrl::parse(s).unwrap();
    // IDN to punycode, fullwidth and ideographic dots as the URL standard maps them.
    assert_eq!(n("http://ёлка.рф/").host, "xn--80atc1g.xn--p1ai");
    assert_eq!(n("ｅｖｉｌ。example").host, "evil.example");
    assert_eq!(one("смотри ёлка.рф/x").host, "xn--80atc1g.xn--p1ai");
    // IPv4 in other spellings, IPv6.
    assert_eq!(n("http://0x7f.1/").host, "127.0.0.1");
    assert_eq!(n("http://2130706433/").host, "127.0.0.1");
    assert_eq!(n("http://[0:0::1]/").host, "[::1]");
    assert_eq!(one("(see http://[::1]:8080/x)"), url("[::1]", "/x"));
    // Percent-escapes in host and path, dot segments, slash runs, backslashes.
    assert_eq!(n("http://evil%2Eexample/%70ay%6Coad"), url("evil.example", "/payload"));
    assert_eq!(n("http://evil.example/a/../b/./c"), url("evil.example", "/b/c"));
    assert_eq!(n("http://evil.example/a/%2e%2E/b"), url("evil.example", "/b"));
    assert_eq!(n("http://evil.example/a//../b"), url("evil.example", "/b"));
    assert_eq!(n("http://evil.example\\a\\b"), url("evil.example", "/a/b"));
    assert_eq!(n("http://evil.example/%2F%3f"), url("evil.example", "/%2f%3f"));
    assert_eq!(n("http://evil.example"), url("evil.example", "/"));
    // Userinfo is not the host.
    assert_eq!(n("http://good.example@evil.example/").host, "evil.example");
    assert_eq!(NormalizedUrl::parse("javascript:alert(1)"), None);
    assert_eq!(NormalizedUrl::parse(""), None);
}

#[test]
fn open_redirects_yield_both_urls() {
    let found = urls("https://good.example/out?u=https://evil.example/payload");
    assert_eq!(found, vec![url("good.example", "/out"), url("evil.example", "/payload")]);
}

#[test]
fn bounds_are_reported() {
    let many = "a.example/x ".repeat(MAX_URLS);
    let (found, scan) = extract_urls(&many);
    assert_eq!((found.len(), scan), (MAX_URLS, Scan::Complete));
    let (found, scan) = extract_urls(&format!("{many} evil.example"));
    assert_eq!((found.len(), scan), (MAX_URLS, Scan::Truncated));
    let (_, scan) = extract_urls(&"x".repeat(MAX_SCAN_BYTES + 1));
    assert_eq!(scan, Scan::Truncated);
    let nested = "http://".repeat(MAX_CANDIDATES + 1);
    assert_eq!(extract_urls(&nested).1, Scan::Truncated);
    // A long URL is cut, keeping its host.
    let long = format!("http://evil.example/{}", "a".repeat(3 * MAX_URL_BYTES));
    assert_eq!(one(&long).host, "evil.example");
    // Plain prose with many dotted numbers costs no budget.
    assert_eq!(extract_urls(&"1.5 ".repeat(10 * MAX_CANDIDATES)).1, Scan::Complete);
}

#[test]
fn reuses_the_callers_buffer() {
    let mut out = vec![url("kept.example", "/")];
    assert_eq!(extract_urls_into("evil.example", &mut out), Scan::Complete);
    assert_eq!(out, vec![url("kept.example", "/"), url("evil.example", "/")]);
}

#[test]
fn host_entries_match_host_and_subdomains_only() {
    let s = set(&["Evil.Example"]);
    let m = |text: &str| s.matches(&one(text));
    assert_eq!(m("http://evil.example/"), Some("evil.example"));
    assert_eq!(m("HTTP://EVIL.EXAMPLE/Payload"), Some("evil.example"));
    assert_eq!(m("https://a.b.evil.example/x"), Some("evil.example"));
    assert_eq!(m("http://evil.example.:80"), Some("evil.example"));
    assert_eq!(m("http://user@evil.example/"), Some("evil.example"));
    assert_eq!(m("http://evil.example@good.example/"), None);
    assert_eq!(m("http://evil.example.attacker.test/"), None);
    assert_eq!(m("http://notevil.example/"), None);
    assert_eq!(m("http://example/"), None);
}

#[test]
fn path_entries_match_at_segment_boundaries() {
    let s = set(&["evil.example/payload", "https://Shared.Example/Bad/Repo/?tab=x#y"]);
    let m = |text: &str| s.matches(&one(text));
    for hit in [
        "http://evil.example/payload",
        "http://evil.example/payload/",
        "http://evil.example/payload/x?y",
        "http://cdn.evil.example/PAYLOAD",
        "http://evil.example/x/../payload",
        "http://evil.example//payload",
        "http://evil.example/%70ayload",
    ] {
        assert_eq!(m(hit), Some("evil.example/payload"), "{hit}");
    }
    for miss in ["http://evil.example/payloadx", "http://evil.example/", "http://evil.example/x/payload"] {
        assert_eq!(m(miss), None, "{miss}");
    }
    assert_eq!(m("shared.example/bad/repo/issues"), Some("shared.example/bad/repo"));
    assert_eq!(m("shared.example/bad"), None);
}

#[test]
fn the_most_specific_entry_wins() {
    let s = set(&["example", "evil.example", "evil.example/a", "evil.example/a/b", "x.evil.example"]);
    let m = |text: &str| s.matches(&one(text));
    assert_eq!(m("evil.example/a/b/c"), Some("evil.example/a/b"));
    assert_eq!(m("evil.example/a/c"), Some("evil.example/a"));
    assert_eq!(m("evil.example/c"), Some("evil.example"));
    assert_eq!(m("x.evil.example/a"), Some("x.evil.example"));
    assert_eq!(m("other.example/a"), Some("example"));
    assert_eq!(s.len(), 5);
}

#[test]
fn ip_and_idn_entries() {
    let s = set(&["http://0x7f.0.0.1/admin", "ёлка.рф"]);
    assert_eq!(s.matches(&one("http://127.0.0.1/admin/x")), Some("127.0.0.1/admin"));
    assert_eq!(s.matches(&one("http://2130706433/admin")), Some("127.0.0.1/admin"));
    assert_eq!(NormalizedUrl::parse("http://1.127.0.0.1/admin"), None);
    assert_eq!(s.matches(&one("http://127.0.0.2/admin")), None);
    assert_eq!(s.matches(&one("https://xn--80ATC1G.xn--p1ai/")), Some("xn--80atc1g.xn--p1ai"));
    assert_eq!(s.matches(&one("https://www.ЁЛКА.РФ/")), Some("xn--80atc1g.xn--p1ai"));
}

#[test]
fn bad_entries_are_named() {
    let err = |entries: &[&str]| UrlSet::from_entries(entries).unwrap_err();
    assert_eq!(err(&["ok.example", ""]).0, 1);
    for bad in ["*.evil.example", "bob@evil.example", "evil example", "http://", "a..b", "javascript:x"] {
        let (index, msg) = err(&[bad]);
        assert_eq!(index, 0);
        assert!(msg.contains(&format!("{bad:?}")), "{msg}");
    }
    assert!(err(&["*.evil.example"]).1.contains("already matches all its subdomains"));
    let empty = UrlSet::from_entries(Vec::<String>::new()).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.matches(&url("evil.example", "/")), None);
}

/// The obvious linear matcher, as an oracle for the hashed one.
fn naive(entry: &str, u: &NormalizedUrl) -> bool {
    let e = NormalizedUrl::parse(entry).unwrap();
    let host_ok = u.host == e.host || u.host.ends_with(&format!(".{}", e.host));
    let path = e.path.trim_end_matches('/');
    host_ok
        && (path.is_empty() || u.path.strip_prefix(path).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
}

const HOSTS: &[&str] = &["evil.example", "a.evil.example", "notevil.example", "example", "x.test", "EVIL.EXAMPLE"];
const PATHS: &[&str] = &["", "/", "/p", "/p/", "/P/q", "/p/q/r", "/px", "/q"];

fn entry() -> impl Strategy<Value = String> {
    (prop::sample::select(HOSTS), prop::sample::select(PATHS)).prop_map(|(h, p)| format!("{h}{p}"))
}

/// [`extract_urls`] without the jump from trigger to trigger: every token, as the delimiters
/// split the text.
fn extract_every_token(text: &str) -> (Vec<NormalizedUrl>, Scan) {
    let mut out = Vec::new();
    let mut budget = Budget { urls: MAX_URLS, candidates: MAX_CANDIDATES };
    for token in text.split(is_delimiter).filter(|t| !t.is_empty()) {
        if extract_from_token(token, &mut out, &mut budget).is_err() {
            return (out, Scan::Truncated);
        }
    }
    (out, Scan::Complete)
}

#[test]
fn ascii_delimiters() {
    for c in (0..=0x7f).map(char::from) {
        let delimiter = c.is_whitespace() || c.is_control() || "<>\"`{}|^".contains(c);
        assert_eq!(is_delimiter(c), delimiter, "{c:?}");
    }
}

#[test]
fn plain_urls_skip_the_parser_with_the_same_result() {
    for (authority, path) in [
        ("Evil.Example", "/Payload"),
        ("report.pdf", ""),
        ("docs.friends.example", "/share//q3-review.pdf"),
        ("a-b.c1.example", "\\x\\y/"),
        ("a.example", "/.../a:b@c;d=e,f!g$h&i'j(k)l*m+n~o_p"),
    ] {
        let plain = parse_plain(authority, path);
        assert!(plain.is_some(), "{authority}{path}");
        assert_eq!(plain.map(|u| (u, false)), parse_with_url_crate(authority, path), "{authority}{path}");
    }
    for (authority, path) in [
        ("xn--80atc1g.xn--p1ai", ""),
        ("XN--abc.example", ""),
        ("ёлка.рф", ""),
        ("evil.example.", ""),
        ("a..example", ""),
        ("evil.example:8080", ""),
        ("u@evil.example", ""),
        ("10.0.0.1", ""),
        ("a.0x7f", ""),
        ("-a.example", ""),
        ("evil.example", "/a/../b"),
        ("evil.example", "/a/."),
        ("evil.example", "/%70ayload"),
        ("evil.example", "/ё"),
    ] {
        assert_eq!(parse_plain(authority, path), None, "{authority}{path}");
    }
}

proptest! {
    #[test]
    fn plain_parse_agrees_with_the_url_crate(
        authority in "((xn--|XN--|[a-zA-Z0-9_-]){0,4}[.]?){0,4}",
        path in "([/\\\\]([a-zA-Z0-9.%:@!$&'()*+,;=~_-]|[.]{1,2}|/){0,8}){0,4}",
    ) {
        if let Some(plain) = parse_plain(&authority, &path) {
            prop_assert_eq!(Some((plain, false)), parse_with_url_crate(&authority, &path));
        }
    }

    #[test]
    fn skipping_tokens_without_triggers_changes_nothing(
        text in "([a-zA-Z0-9]{1,6}|[.:/\\\\@()\\[\\]?#%_~'!,;-]|[ \t\n«»「」（）<>\"|]|[。．｡ёй汉\u{ff00}\u{3000}]|[.]?[a-z]{2,4}|https?://|www[.]|:[0-9]{1,5}|[0-9]{1,3}[.][0-9]{1,3}){0,40}",
    ) {
        prop_assert_eq!(extract_urls(&text), extract_every_token(&text));
    }

    #[test]
    fn skipping_tokens_changes_nothing_in_any_text(text in "\\PC{0,200}") {
        prop_assert_eq!(extract_urls(&text), extract_every_token(&text));
    }

    #[test]
    fn matching_is_independent_of_entry_order(
        entries in prop::collection::vec(entry(), 0..12).prop_shuffle(),
        probes in prop::collection::vec(entry(), 1..8),
    ) {
        let forward = set(&entries.iter().map(String::as_str).collect::<Vec<_>>());
        let mut reversed = entries.clone();
        reversed.reverse();
        let backward = set(&reversed.iter().map(String::as_str).collect::<Vec<_>>());
        for probe in &probes {
            let u = NormalizedUrl::parse(probe).unwrap();
            prop_assert_eq!(forward.matches(&u), backward.matches(&u));
            prop_assert_eq!(forward.matches(&u).is_some(), entries.iter().any(|e| naive(e, &u)));
        }
    }

    #[test]
    fn extraction_never_panics(text in "\\PC{0,200}") {
        let _ = extract_urls(&text);
    }
}
