use std::path::Path;

use super::*;

const GOOD: &str = r#"
[[tls.certificate]]
domains = ["example.test", "*.example.test"]
cert = "certs/example.test.crt"
key  = "/etc/keys/example.test.key"

[[listener]]
name    = "c2s"
kind    = "c2s"
bind    = "127.0.0.1:5222"
backend = "127.0.0.1:15222"

[[listener]]
name    = "c2s-direct"
kind    = "c2s-tls"
bind    = "[::1]:5223"
backend = "xmpp.internal:5222"
backend_tls = "starttls"
backend_ca = "ca.pem"
proxy_protocol = "v2"

[limits]
stanza_bytes = 262144
preauth_stanza_bytes = 10000
depth = 32
attributes = 64
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/stanzawall/gw.toml"))
}

fn error(text: &str) -> String {
    parse(text).expect_err("must be refused").to_string()
}

#[test]
fn the_documented_example_parses() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[0].kind, ListenerKind::C2s);
    assert_eq!(c.listeners[1].kind, ListenerKind::C2sTls);
    assert_eq!(c.listeners[1].backend.tls, BackendTls::StartTls);
    assert!(c.listeners[1].backend.proxy_protocol);
    assert_eq!(c.listeners[1].backend.ca.as_deref(), Some(Path::new("/etc/stanzawall/ca.pem")));
    // Relative paths are relative to the config file; absolute ones stay.
    assert_eq!(c.certificates[0].cert, Path::new("/etc/stanzawall/certs/example.test.crt"));
    assert_eq!(c.certificates[0].key, Path::new("/etc/keys/example.test.key"));
    assert_eq!(c.certificates[0].cert_origin.line, 4);
    assert_eq!(c.limits.preauth_stanza_bytes, 10000);
}

#[test]
fn errors_name_file_line_and_key() {
    let bad = GOOD.replace("bind    = \"[::1]:5223\"", "bind    = \"localhost\"");
    assert_eq!(
        error(&bad),
        "/etc/stanzawall/gw.toml:16: listener[1].bind: expected IP:PORT, e.g. \"0.0.0.0:5222\" or \"[::]:5222\""
    );
    let bad = GOOD.replace("kind    = \"c2s-tls\"", "kind    = \"xmpp\"");
    assert!(
        error(&bad).starts_with("/etc/stanzawall/gw.toml:15: listener[1].kind: unknown kind 'xmpp'"),
        "{}",
        error(&bad)
    );
    let bad = GOOD.replace("depth = 32", "depth = -1");
    assert_eq!(error(&bad), "/etc/stanzawall/gw.toml:25: limits.depth: must be an integer from 4 to 256");
    let bad = GOOD.replace("backend_tls = \"starttls\"", "backend_tls = \"maybe\"");
    assert!(error(&bad).starts_with("/etc/stanzawall/gw.toml:18: listener[1].backend_tls:"), "{}", error(&bad));
    let bad = GOOD.replace("name    = \"c2s-direct\"", "name    = \"c2s\"");
    assert!(error(&bad).contains(":14: listener[1].name: duplicate listener name 'c2s'"), "{}", error(&bad));
    let bad = GOOD.replace("domains = [\"example.test\", \"*.example.test\"]", "domains = [\"exa mple\"]");
    assert!(error(&bad).contains(":3: tls.certificate[0].domains:"), "{}", error(&bad));
}

#[test]
fn unknown_keys_are_errors() {
    let bad = GOOD.replace("proxy_protocol = \"v2\"", "proxy_protocol = \"v2\"\nbackend_tsl = \"tls\"");
    let e = error(&bad);
    assert!(e.starts_with("/etc/stanzawall/gw.toml:21: listener[1].backend_tsl: unknown field `backend_tsl`"), "{e}");
    let bad = format!("{GOOD}\n[limit]\ndepth = 3\n");
    let e = error(&bad);
    assert!(e.starts_with("/etc/stanzawall/gw.toml:28: limit: unknown field `limit`"), "{e}");
}

#[test]
fn syntax_and_type_errors_have_lines() {
    let e = error("[[listener]]\nname = \"c2s\"\nkind = c2s\n");
    assert!(e.starts_with("/etc/stanzawall/gw.toml:3:"), "{e}");
    let e = error(&GOOD.replace("stanza_bytes = 262144", "stanza_bytes = \"big\""));
    assert!(e.starts_with("/etc/stanzawall/gw.toml:23: limits.stanza_bytes:"), "{e}");
}

#[test]
fn limits_and_binds_are_checked_against_each_other() {
    let e = error(&GOOD.replace("depth = 32", "depth = 1000000"));
    assert!(e.contains("limits.depth: must be an integer from 4 to 256"), "{e}");
    let e = error(&GOOD.replace("preauth_stanza_bytes = 10000", "preauth_stanza_bytes = 300000"));
    assert!(e.contains(":24: limits.preauth_stanza_bytes: must not exceed limits.stanza_bytes"), "{e}");
    let e = error(&GOOD.replace("[::1]:5223", "127.0.0.1:5222"));
    assert!(e.contains(":16: listener[1].bind: 127.0.0.1:5222 is already used by listener 'c2s'"), "{e}");
    // A bad domain in a multi-line array is reported at its own line.
    let e = error(&GOOD.replace(
        "domains = [\"example.test\", \"*.example.test\"]",
        "domains = [\n  \"example.test\",\n  \"bad domain\",\n]",
    ));
    assert!(e.contains(":5: tls.certificate[0].domains: 'bad domain'"), "{e}");
}

#[test]
fn missing_parts_are_errors() {
    assert!(error("").contains("at least one [[listener]] is required"));
    let no_certs = GOOD.split("[[listener]]").skip(1).map(|l| format!("[[listener]]{l}")).collect::<String>();
    assert!(error(&no_certs).contains("tls.certificate: at least one"));
    let e = error("[[tls.certificate]]\ndomains=[\"a.test\"]\ncert=\"c\"\nkey=\"k\"\n[[listener]]\nname=\"x\"\nkind=\"c2s\"\nbind=\"127.0.0.1:1\"\n");
    assert!(e.contains(":6: listener[0].backend: `backend = \"HOST:PORT\"` is required"), "{e}");
    let e = error(&GOOD.replace("backend_tls = \"starttls\"\n", ""));
    assert!(e.contains("listener[1].backend_ca: only meaningful with backend_tls"), "{e}");
}

#[test]
fn diff_reports_changes() {
    let a = parse(GOOD).unwrap();
    let b = parse(&GOOD.replace("127.0.0.1:15222", "127.0.0.1:15223")).unwrap();
    assert_eq!(b.diff(&a), vec!["listener c2s changed".to_owned()]);
    assert!(a.diff(&a).is_empty());
}

#[test]
fn network_section() {
    let text = format!(
        "{GOOD}\n[network]\nallow = [\"0.0.0.0/0\", \"::/0\"]\ndeny = [\"192.0.2.0/24\", \"2001:db8::1\"]\n\
         max_connections = 1000\nmax_connections_per_ip = 5\nconnection_rate_per_ip = \"30/minute\"\n\
         connection_burst_per_ip = 4\nhandshake_timeout = \"10s\"\nidle_timeout = \"10m\"\n"
    );
    let c = parse(&text).unwrap();
    let n = &c.network;
    assert_eq!(n.guard.allow.len(), 2);
    assert_eq!(n.guard.deny[1].to_string(), "2001:db8::1/128");
    assert_eq!((n.guard.max_connections, n.guard.max_connections_per_ip), (1000, 5));
    let rate = n.guard.connection_rate_per_ip.unwrap();
    assert_eq!((rate.count, rate.per.as_secs(), rate.burst), (30, 60, 4));
    assert_eq!(n.handshake_timeout.as_secs(), 10);
    assert_eq!(n.idle_timeout.as_secs(), 600);
    assert_eq!(n.guard.ban, crate::ban::BanConfig::default());
    let banned = parse(&format!(
        "state_dir = \"/var/lib/stanzawall\"\n{GOOD}\n[network.ban]\nauth_failures = 3\nwindow = \"1m\"\nduration = \"5s\"\n"
    ))
    .unwrap();
    assert_eq!(banned.state_dir, Path::new("/var/lib/stanzawall"));
    assert_eq!(parse(GOOD).unwrap().state_dir, Path::new("/etc/stanzawall/state"));
    let b = banned.network.guard.ban;
    assert_eq!((b.auth_failures, b.window.as_secs(), b.duration.as_secs()), (3, 60, 5));
    // Defaults when absent.
    assert_eq!(parse(GOOD).unwrap().network, NetworkConfig::default());
    let off = parse(&format!("{GOOD}\n[network]\nconnection_rate_per_ip = \"off\"\n")).unwrap();
    assert!(off.network.guard.connection_rate_per_ip.is_none());
}

#[test]
fn ipv6_sources_are_counted_by_prefix() {
    assert_eq!(parse(GOOD).unwrap().network.guard.ipv6_prefix, 64, "the default is the /64 of a LAN");
    for p in [32, 48, 56, 128] {
        let c = parse(&format!("{GOOD}\n[network]\nipv6_prefix = {p}\n")).unwrap();
        assert_eq!(usize::from(c.network.guard.ipv6_prefix), p);
    }
    for bad in ["31", "129", "0", "-64", "\"64\""] {
        let e = error(&format!("{GOOD}\n[network]\nmax_connections = 10\nipv6_prefix = {bad}\n"));
        if bad.starts_with('"') {
            assert!(e.contains(":30: network.ipv6_prefix: invalid type"), "{e}");
        } else {
            assert!(e.contains(":30: network.ipv6_prefix: must be an integer from 32 to 128"), "{e}");
        }
    }
}

#[test]
fn per_source_defaults_let_a_nat_office_in() {
    // Finding 11: hundreds of users behind one address, all reconnecting after a network blip.
    let g = parse(GOOD).unwrap().network.guard;
    assert!(g.max_connections_per_ip >= 1000, "{}", g.max_connections_per_ip);
    let rate = g.connection_rate_per_ip.unwrap();
    assert!(rate.burst >= 500 && rate.count >= 600 && rate.per.as_secs() == 60, "{rate:?}");
    assert!(g.max_connections_per_ip < g.max_connections, "one source cannot fill the gateway");
    // An explicit burst without a rate keeps the default rate.
    let c = parse(&format!("{GOOD}\n[network]\nconnection_burst_per_ip = 7\n")).unwrap();
    assert_eq!(c.network.guard.connection_rate_per_ip.map(|r| (r.count, r.burst)), Some((rate.count, 7)));
}

#[test]
fn network_mistakes_name_their_line() {
    let e = error(&format!("{GOOD}\n[network]\ndeny = [\n  \"10.0.0.0/8\",\n  \"10.0.0.0/40\",\n]\n"));
    assert!(e.contains(":31: network.deny: '10.0.0.0/40' is not an address or CIDR"), "{e}");
    let e = error(&format!("{GOOD}\n[network]\ndeny = [\"list:bad_ips\"]\n"));
    assert!(e.contains(":29: network.deny: no [list.bad_ips]"), "{e}");
    let c = parse(&format!(
        "{GOOD}\n[network]\ndeny = [\"list:bad_ips\", \"192.0.2.1\"]\n[list.bad_ips]\nentries = [\"10.9.0.0/16\"]\n"
    ))
    .unwrap();
    assert_eq!(c.network.guard.deny.len(), 2);
    assert!(c.network.guard.deny.iter().any(|d| d.contains("10.9.1.1".parse().unwrap())));
    let e = error(&format!(
        "{GOOD}\n[network]\ndeny = [\"list:bad_ips\"]\n[list.bad_ips]\nentries = [\n\"10.0.0.1\",\n\"x\"]\n"
    ));
    assert!(e.contains(":33: list.bad_ips: 'x' is not an address or CIDR"), "{e}");
    let e = error(&format!("{GOOD}\n[network]\nconnection_rate_per_ip = \"30/fortnight\"\n"));
    assert!(e.contains(":29: network.connection_rate_per_ip: expected N/second"), "{e}");
    let e = error(&format!("{GOOD}\n[network]\nhandshake_timeout = \"soon\"\n"));
    assert!(e.contains("network.handshake_timeout: expected a duration"), "{e}");
    let e = error(&format!("{GOOD}\n[network]\nbandwidth_per_connection = \"10KB/min\"\n"));
    assert!(e.contains(":29: network.bandwidth_per_connection: expected bytes per second"), "{e}");
    let e = error(&format!("{GOOD}\n[network]\nbandwidth_burst = \"64KB\"\n"));
    assert!(e.contains(":29: network.bandwidth_burst: needs network.bandwidth_per_connection"), "{e}");
    let e = error(&format!("{GOOD}\n[network]\nbandwidth_per_connection = \"1MB/s\"\nbandwidth_burst = \"1GB\"\n"));
    assert!(e.contains(":30: network.bandwidth_burst: expected a size"), "{e}");
}

#[test]
fn nftables_section() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.nftables, NftablesConfig::default());
    let c = parse(&format!("{GOOD}\n[nftables]\nsync = true\ntable = \"edge_1\"\nextra_tcp_ports = [22, 22, 80]\n"))
        .unwrap();
    assert!(c.nftables.sync);
    assert_eq!(c.nftables.table, "edge_1");
    assert_eq!(c.nftables.extra_tcp_ports, vec![22, 80]);
    let e = error(&format!("{GOOD}\n[nftables]\ntable = \"x; flush ruleset\"\n"));
    assert!(e.contains(":29: nftables.table: expected a name"), "{e}");
    let e = error(&format!("{GOOD}\n[nftables]\nextra_tcp_ports = [22, 5222]\n"));
    assert!(e.contains(":29: nftables.extra_tcp_ports: 5222 is listener 'c2s' already"), "{e}");
    let e = error(&format!("{GOOD}\n[nftables]\nextra_tcp_ports = [70000]\n"));
    assert!(e.contains("nftables.extra_tcp_ports: expected a port"), "{e}");
    let e = error(&format!("{GOOD}\n[nftables]\nsink = true\n"));
    assert!(e.contains("unknown field `sink`"), "{e}");
}

#[test]
fn bandwidth_shaping() {
    let c = parse(&format!("{GOOD}\n[network]\nbandwidth_per_connection = \"10KB/s\"\nbandwidth_burst = \"16KiB\"\n"))
        .unwrap();
    let b = c.network.bandwidth_per_connection.unwrap();
    assert_eq!((b.bytes_per_second, b.burst), (10_000, 16_384));
    let c = parse(&format!("{GOOD}\n[network]\nbandwidth_per_connection = \"1MB/s\"\n")).unwrap();
    assert_eq!(c.network.bandwidth_per_connection.map(|b| b.burst), Some(64_000));
    let c = parse(&format!("{GOOD}\n[network]\nbandwidth_per_connection = \"off\"\n")).unwrap();
    assert!(c.network.bandwidth_per_connection.is_none());
    assert!(parse(GOOD).unwrap().network.bandwidth_per_connection.is_none());
}

#[test]
fn s2s_section_errors_name_file_line_and_key() {
    let s2s_listener =
        "[[listener]]\nname = \"s2s\"\nkind = \"s2s\"\nbind = \"127.0.0.1:5269\"\nbackend = \"127.0.0.1:15269\"\n";
    let with = |extra: &str| format!("{GOOD}\n{s2s_listener}{extra}");
    assert!(error(&with("")).contains("s2s listeners need an [s2s] section"), "{}", error(&with("")));
    let e = error(&with("[s2s]\ndomains = [\"a.test\"]\ndeny = [\"bad@x\"]\n"));
    assert!(e.contains("s2s.deny") && e.contains("domain"), "{e}");
    let e = error(&with("[s2s]\ndomains = [\"a.test\"]\nrequire_authenticated = \"strong\"\n"));
    assert!(e.contains("s2s.require_authenticated: unknown value 'strong'"), "{e}");
    let e = error(&with("[s2s]\ndomains = [\"a.test\"]\ndnssec = \"maybe\"\n"));
    assert!(e.contains("s2s.dnssec: unknown value 'maybe'"), "{e}");
    let e = error(&with("[s2s]\ndomains = [\"a.test\"]\ndeny = [\"list:nope\"]\n"));
    assert!(e.contains("s2s.deny: no [list.nope]"), "{e}");
    let e = error(&with("[s2s]\ndomains = [\"a.test\"]\n[[s2s.route]]\ndomain = \"b.test\"\nconnect = \"nowhere\"\n"));
    assert!(e.contains("s2s.route[0].connect: expected HOST:PORT"), "{e}");
    let out =
        "[[listener]]\nname = \"out\"\nkind = \"s2s-out\"\nbind = \"127.0.0.1:15270\"\nbackend = \"127.0.0.1:1\"\n";
    let e = error(&format!("{GOOD}\n{out}[s2s]\ndomains = [\"a.test\"]\n"));
    assert!(e.contains("backend: an s2s-out listener resolves each remote domain"), "{e}");
    let ok = with("[list.partners]\nentries = [\"b.test\", \"*.c.test\"]\n[s2s]\ndomains = [\"A.test\"]\nallow = [\"list:partners\"]\nrequire_authenticated = { \"*.c.test\" = \"dane\", \"*\" = \"pkix\" }\n");
    let c = Config::parse(&ok, std::path::Path::new("/etc/stanzawall/gw.toml")).expect("valid");
    let s2s = c.s2s.expect("s2s");
    assert_eq!(s2s.local_domains, vec!["a.test".to_owned()]);
    assert!(s2s.dnssec && s2s.require_tls);
    assert_eq!(s2s.dialback_secret_file, std::path::PathBuf::from("/etc/stanzawall/state/dialback.key"));
    assert_eq!(c.policy.s2s.allow.len(), 2);
    assert_eq!(c.policy.s2s.default_require, Some(crate::config::AuthLevel::Pkix));
}

#[test]
fn admin_tls_and_client_certificates() {
    let with = |extra: &str| format!("{GOOD}\n[admin]\nbind = \"127.0.0.1:5380\"\n{extra}");
    let c = parse(&with(
        "tls_cert = \"admin.crt\"\ntls_key = \"/k/admin.key\"\nclient_ca = \"ops-ca.pem\"\n\
         [admin.client_roles]\n\"CN=ops\" = \"admin\"\n\"CN=grafana\" = \"read\"\n",
    ))
    .expect("valid");
    let AdminTls::Files { cert, key, .. } = c.admin.tls.as_ref().expect("tls") else { panic!("files") };
    assert_eq!(cert, Path::new("/etc/stanzawall/admin.crt"));
    assert_eq!(key, Path::new("/k/admin.key"));
    let auth = c.admin.client_auth.expect("mtls");
    assert_eq!(auth.ca, Path::new("/etc/stanzawall/ops-ca.pem"));
    assert_eq!(auth.roles, vec![("grafana".to_owned(), AdminRole::Read), ("ops".to_owned(), AdminRole::Admin)]);
    let c = parse(&with("tls_certificate = \"Admin.Example.Test\"\n")).expect("wildcard covers it");
    assert_eq!(
        c.admin.tls.as_ref().map(|t| matches!(t, AdminTls::Reuse { domain, .. } if domain == "admin.example.test")),
        Some(true)
    );
    assert_eq!(parse(&with("")).expect("plain").admin.tls, None);

    // Errors name the file, the line and the key.
    let e = error(&with("tls_cert = \"a.crt\"\n"));
    assert!(e.starts_with("/etc/stanzawall/gw.toml:") && e.contains("admin.tls_cert: needs admin.tls_key"), "{e}");
    let e = error(&with("tls_key = \"a.key\"\n"));
    assert!(e.contains("admin.tls_key: needs admin.tls_cert"), "{e}");
    let e = error(&with("tls_certificate = \"other.test\"\n"));
    assert!(e.contains("admin.tls_certificate: no [[tls.certificate]] serves 'other.test'"), "{e}");
    let e = error(&with("tls_certificate = \"example.test\"\ntls_cert = \"a\"\ntls_key = \"b\"\n"));
    assert!(e.contains("admin.tls_certificate: give either"), "{e}");
    let e = error(&with("client_ca = \"ca.pem\"\n[admin.client_roles]\n\"CN=ops\" = \"admin\"\n"));
    assert!(e.contains("admin.client_ca: client certificates need TLS"), "{e}");
    let tls = "tls_certificate = \"example.test\"\n";
    let e = error(&with(&format!("{tls}client_ca = \"ca.pem\"\n")));
    assert!(e.contains("admin.client_ca: map at least one certificate"), "{e}");
    let e = error(&with(&format!("{tls}[admin.client_roles]\n\"CN=ops\" = \"admin\"\n")));
    assert!(e.contains("admin.client_roles: client certificate roles need admin.client_ca"), "{e}");
    let e = error(&with(&format!("{tls}client_ca = \"ca.pem\"\n[admin.client_roles]\n\"ops\" = \"admin\"\n")));
    assert!(e.contains("admin.client_roles.\"ops\": the key must be \"CN=<common name>\""), "{e}");
    let text = with(&format!("{tls}client_ca = \"ca.pem\"\n[admin.client_roles]\n\"CN=ops\" = \"root\"\n"));
    let e = error(&text);
    let line = text.lines().position(|l| l.contains("\"root\"")).expect("line") + 1;
    assert!(e.contains(&format!("gw.toml:{line}: admin.client_roles.\"CN=ops\": unknown role 'root'")), "{e}");
    let e = error(&format!("{GOOD}\n[admin]\ntls_certificate = \"example.test\"\n"));
    assert!(e.contains("admin.tls_certificate: TLS for the admin listener needs admin.bind"), "{e}");
}

#[test]
fn drain_section() {
    let d = parse(GOOD).unwrap().drain;
    assert_eq!(d, DrainConfig { grace: std::time::Duration::from_secs(30), peer: None });
    let c = parse(&format!("{GOOD}\n[drain]\ngrace = \"2s\"\npeer = \"gw-b.example.test:5222\"\n")).unwrap();
    assert_eq!(c.drain.grace, std::time::Duration::from_secs(2));
    assert_eq!(c.drain.peer.as_deref(), Some("gw-b.example.test:5222"));
    assert_eq!(
        parse(&format!("{GOOD}\n[drain]\npeer = \"[2001:db8::1]:5222\"\ngrace = \"0s\"\n")).unwrap().drain.grace,
        std::time::Duration::ZERO
    );
    for bad in ["gw-b", "gw-b:0", "gw-b:99999", ":5222", "a b:5222", "[::1:5222", "-x.test:5222", "gw\u{e9}.test:1"] {
        let e = error(&format!("{GOOD}\n[drain]\npeer = \"{bad}\"\n"));
        assert!(e.contains("drain.peer") && e.contains("HOST:PORT"), "{bad}: {e}");
    }
    assert!(error(&format!("{GOOD}\n[drain]\ngrace = \"soon\"\n")).contains("drain.grace"));
    assert!(error(&format!("{GOOD}\n[drain]\nlinger = \"1s\"\n")).contains("linger"));
}

#[test]
fn store_decisions_on_error_per_kind() {
    let c = parse(&format!(
        "{GOOD}\n[store]\nurl = \"redis://127.0.0.1:6379\"\nfanout_on_error = \"closed\"\nwaves_on_error = \"open\"\n"
    ))
    .unwrap();
    assert_eq!((c.store.fanout_on_error, c.store.waves_on_error), (OnError::Closed, OnError::Open));
    assert_eq!(parse(GOOD).unwrap().store.fanout_on_error, OnError::Local);
    let e = error(&format!("{GOOD}\n[store]\nurl = \"redis://127.0.0.1:6379\"\nwaves_on_error = \"maybe\"\n"));
    assert!(e.contains("store.waves_on_error"), "{e}");
}
