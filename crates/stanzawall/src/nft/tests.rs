use std::path::Path;
use std::time::UNIX_EPOCH;

use stanzawall_core::guard::{source_key, Cidr};

use super::*;

fn config(extra: &str) -> Config {
    let text = format!(
        r#"
[[tls.certificate]]
domains = ["example.test"]
cert = "example.test.crt"
key = "example.test.key"

[[listener]]
name = "c2s"
kind = "c2s"
bind = "0.0.0.0:5222"
backend = "127.0.0.1:15222"

[[listener]]
name = "c2s-tls"
kind = "c2s-tls"
bind = "[2001:db8::1]:5223"
backend = "127.0.0.1:15222"
{extra}"#
    );
    Config::parse(&text, Path::new("/etc/stanzawall/stanzawall.toml")).unwrap()
}

#[test]
fn opens_exactly_the_listener_ports_with_rate_and_cap_meters() {
    let c = config("[network]\nconnection_rate_per_ip = \"30/minute\"\nconnection_burst_per_ip = 10\nmax_connections_per_ip = 20\n");
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let r = ruleset(&c, &[], now);
    assert!(r.starts_with("#!/usr/sbin/nft -f\n"), "{r}");
    assert!(r.contains("table inet stanzawall\ndelete table inet stanzawall\n"), "{r}");
    assert!(r.contains("type filter hook input priority filter; policy drop;"), "{r}");
    assert!(r.contains("ct state established,related counter accept"), "{r}");
    assert!(r.contains("fib saddr . iif oif missing counter drop"), "{r}");
    assert!(r.contains("meta nfproto ipv4 tcp dport 5222 counter accept comment \"listener c2s\""), "{r}");
    assert!(r.contains("ip6 daddr 2001:db8::1 tcp dport 5223 counter accept comment \"listener c2s-tls\""), "{r}");
    assert!(
        r.contains("tcp dport { 5222, 5223 } ct state new add @rate4 { ip saddr limit rate over 30/minute burst 10 packets } counter drop"),
        "{r}"
    );
    assert!(r.contains("add @conn6 { ip6 saddr and ffff:ffff:ffff:ffff:: ct count over 20 } counter drop"), "{r}");
    // 10 × 2 s to refill the burst, but never shorter than the period.
    assert!(r.contains("flags dynamic,timeout\n\t\ttimeout 60s"), "{r}");
    // Every rule of the input chain counts.
    let input = r.split("chain input {").nth(1).unwrap();
    for line in input.lines().map(str::trim).filter(|l| !l.is_empty() && *l != "}" && !l.starts_with("type ")) {
        assert!(line.contains("counter"), "rule without a counter: {line}");
    }
    // No deny list, no allow restriction: no such sets.
    assert!(!r.contains("@deny4") && !r.contains("@allow4"), "{r}");
    // No ports beyond the listeners'.
    let accepts: Vec<&str> = input.lines().filter(|l| l.contains("dport") && l.contains("accept")).collect();
    assert_eq!(accepts.len(), 2, "{accepts:?}");
}

#[test]
fn lists_bans_and_extra_ports() {
    let c = config(
        "[network]\nallow = [\"10.1.2.3/8\", \"192.0.2.0/24\"]\ndeny = [\"10.9.0.0/16\", \"2001:db8:bad::/48\"]\nconnection_rate_per_ip = \"off\"\n[nftables]\ntable = \"edge\"\nextra_tcp_ports = [22]\n",
    );
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let src = |s: &str| source_key(s.parse().unwrap(), 64);
    let bans = [
        (src("192.0.2.7"), now + Duration::from_millis(3_599_500)),
        (src("::ffff:198.51.100.1"), now + Duration::from_secs(60)),
        (src("2001:db8::66"), now + Duration::from_secs(10)),
        (src("192.0.2.8"), now - Duration::from_secs(1)),
        // Inside 2001:db8::/64 (written by hand): left out, nft refuses overlapping intervals.
        (Cidr::parse("2001:db8::66").unwrap(), now + Duration::from_secs(10)),
    ];
    let r = ruleset(&c, &bans, now);
    assert!(r.contains("table inet edge {"), "{r}");
    assert!(r.contains("elements = { 10.0.0.0/8, 192.0.2.0/24 }"), "host bits cleared: {r}");
    assert!(r.contains("elements = { 10.9.0.0/16 }") && r.contains("elements = { 2001:db8:bad::/48 }"), "{r}");
    assert!(r.contains("elements = { 192.0.2.7 timeout 3600s, 198.51.100.1 timeout 60s }"), "{r}");
    // IPv6 bans are the source's /64 (ipv6_prefix), one interval element.
    assert!(r.contains("elements = { 2001:db8::/64 timeout 10s }"), "{r}");
    assert!(r.contains("set ban6 {\n\t\ttype ipv6_addr\n\t\tflags interval,timeout\n"), "{r}");
    assert!(!r.contains("192.0.2.8"), "expired bans are left out: {r}");
    assert!(r.contains("ip saddr != @allow4 counter drop"), "{r}");
    // IPv6 is not in the allow list, so it is refused on the listener ports (as at accept).
    assert!(r.contains("ip6 saddr != @allow6 counter drop"), "{r}");
    assert!(!r.contains("@rate4"), "rate off: no meter: {r}");
    assert!(r.contains("tcp dport 22 counter accept"), "{r}");
}

#[test]
fn json_requests_carry_parsed_addresses_only() {
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let add = ban_request(
        "stanzawall",
        source_key("::ffff:192.0.2.7".parse().unwrap(), 64),
        now + Duration::from_secs(3600),
        now,
    );
    assert_eq!(
        add.to_string(),
        r#"{"nftables":[{"add":{"element":{"elem":[{"elem":{"timeout":3600,"val":"192.0.2.7"}}],"family":"inet","name":"ban4","table":"stanzawall"}}}]}"#
    );
    let del = unban_request("stanzawall", Cidr::parse("2001:db8::1").unwrap());
    assert_eq!(
        del.to_string(),
        r#"{"nftables":[{"delete":{"element":{"elem":["2001:db8::1"],"family":"inet","name":"ban6","table":"stanzawall"}}}]}"#
    );
    // A /64 source is a prefix element, added and deleted as such.
    let source = source_key("2001:db8:0:7:1:2:3:4".parse().unwrap(), 64);
    let add = ban_request("stanzawall", source, now + Duration::from_secs(60), now);
    assert_eq!(
        add.to_string(),
        r#"{"nftables":[{"add":{"element":{"elem":[{"elem":{"timeout":60,"val":{"prefix":{"addr":"2001:db8:0:7::","len":64}}}}],"family":"inet","name":"ban6","table":"stanzawall"}}}]}"#
    );
    let del = unban_request("stanzawall", source);
    assert_eq!(
        del.to_string(),
        r#"{"nftables":[{"delete":{"element":{"elem":[{"prefix":{"addr":"2001:db8:0:7::","len":64}}],"family":"inet","name":"ban6","table":"stanzawall"}}}]}"#
    );
}

#[test]
fn ipv6_meters_count_by_prefix() {
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let r =
        ruleset(&config("[network]\nconnection_rate_per_ip = \"30/minute\"\nmax_connections_per_ip = 20\n"), &[], now);
    assert!(
        r.contains("add @rate6 { ip6 saddr and ffff:ffff:ffff:ffff:: limit rate over 30/minute burst"),
        "the default /64: {r}"
    );
    assert!(r.contains("add @conn6 { ip6 saddr and ffff:ffff:ffff:ffff:: ct count over 20 }"), "{r}");
    assert!(r.contains("add @rate4 { ip saddr limit rate"), "IPv4 by address: {r}");
    assert!(r.contains("# [network] max_connections_per_ip, per source (/64)"), "{r}");
    let r = ruleset(&config("[network]\nipv6_prefix = 56\n"), &[], now);
    assert!(r.contains("add @conn6 { ip6 saddr and ffff:ffff:ffff:ff00:: ct count over"), "{r}");
    let r = ruleset(&config("[network]\nipv6_prefix = 128\n"), &[], now);
    assert!(r.contains("add @conn6 { ip6 saddr ct count over"), "{r}");
}

#[test]
fn s2s_intercept_redirects_our_servers_outbound_federation() {
    let text = "[[tls.certificate]]\ndomains = [\"a.example\"]\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
        [[listener]]\nname = \"out\"\nkind = \"s2s-out\"\nbind = \"10.0.0.1:15270\"\n\
        [s2s]\ndomains = [\"a.example\"]\nintercept = [\"10.0.0.10\", \"fd00::10/128\"]\n";
    let config = stanzawall_core::config::Config::parse(text, std::path::Path::new("/etc/sw/gw.toml")).unwrap();
    let rules = super::ruleset(&config, &[], std::time::SystemTime::now());
    assert!(rules.contains("type nat hook prerouting priority dstnat;"), "{rules}");
    assert!(rules.contains("ip saddr { 10.0.0.10/32 } tcp dport 5269 counter redirect to :15270"), "{rules}");
    assert!(rules.contains("ip6 saddr { fd00::10/128 } tcp dport 5269 counter redirect to :15270"), "{rules}");
    // Without an s2s-out listener there is nothing to redirect to: a config error.
    let bad = text.replace("kind = \"s2s-out\"", "kind = \"s2s\"\nbackend = \"10.0.0.10:5269\"");
    let e = stanzawall_core::config::Config::parse(&bad, std::path::Path::new("/etc/sw/gw.toml")).unwrap_err();
    assert!(e.to_string().contains("s2s.intercept: needs an s2s-out listener"), "{e}");
}
