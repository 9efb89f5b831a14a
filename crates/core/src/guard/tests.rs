use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn admitted(a: Admission) -> Cidr {
    match a {
        Admission::Admitted { source } => source,
        refused => panic!("refused: {refused:?}"),
    }
}

#[test]
fn cidrs() {
    let net = Cidr::parse("192.0.2.0/24").unwrap();
    assert!(net.contains(ip("192.0.2.77")));
    assert!(!net.contains(ip("192.0.3.1")));
    assert!(net.contains(ip("::ffff:192.0.2.1")), "IPv4-mapped");
    assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("203.0.113.9")));
    assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
    assert!(!Cidr::parse("::/0").unwrap().contains(ip("10.0.0.1")));
    assert!(Cidr::parse("2001:db8::/32").unwrap().contains(ip("2001:db8:ffff::1")));
    assert_eq!(Cidr::parse("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
    assert!(Cidr::parse("10.0.0.0/33").is_none());
    assert!(Cidr::parse("::/129").is_none());
    assert!(Cidr::parse("nonsense").is_none());
    assert_eq!(Cidr::parse("10.1.2.3/8").unwrap().addr(), ip("10.1.2.3"), "kept as written");
    assert_eq!(Cidr::new(ip("10.1.2.3"), 8).unwrap().to_string(), "10.0.0.0/8");
    assert_eq!(Cidr::new(ip("10.1.2.3"), 32).unwrap().compact(), "10.1.2.3");
    assert_eq!(Cidr::new(ip("2001:db8::1"), 128).unwrap().compact(), "2001:db8::1");
    assert_eq!(Cidr::new(ip("2001:db8::1"), 64).unwrap().compact(), "2001:db8::/64");
    assert!(Cidr::new(ip("10.1.2.3"), 33).is_none());
}

#[test]
fn source_keys() {
    let k = |s: &str, p: u8| source_key(ip(s), p).to_string();
    assert_eq!(k("192.0.2.7", 64), "192.0.2.7/32", "IPv4: the address");
    assert_eq!(k("::ffff:192.0.2.7", 64), "192.0.2.7/32", "IPv4-mapped: the IPv4 address");
    assert_eq!(k("2001:db8:1:2:3:4:5:6", 64), "2001:db8:1:2::/64");
    assert_eq!(k("2001:db8:1:2:3:4:5:6", 48), "2001:db8:1::/48");
    assert_eq!(k("2001:db8:1:2:3:4:5:6", 56), "2001:db8:1::/56");
    assert_eq!(k("2001:db8:1:2ff:3:4:5:6", 56), "2001:db8:1:200::/56");
    assert_eq!(k("2001:db8:1:2:3:4:5:6", 128), "2001:db8:1:2:3:4:5:6/128");
    assert_eq!(k("2001:db8:1:2:3:4:5:6", 200), "2001:db8:1:2:3:4:5:6/128", "clamped");
    assert_eq!(k("::1", 64), "::/64");
    // 40 addresses of one /64 are one source; the next /64 is another.
    let one = source_key(ip("2001:db8:0:7::1"), 64);
    for i in 0..40u16 {
        assert_eq!(source_key(ip(&format!("2001:db8:0:7:{i:x}:{i:x}::{i:x}")), 64), one);
    }
    assert_ne!(source_key(ip("2001:db8:0:8::1"), 64), one);
}

fn strict() -> GuardConfig {
    GuardConfig {
        allow: vec![Cidr::parse("127.0.0.0/8").unwrap()],
        deny: vec![Cidr::parse("127.0.0.66").unwrap()],
        max_connections: 5,
        max_connections_per_ip: 2,
        connection_rate_per_ip: Rate::parse("60/minute", 3),
        ipv6_prefix: 64,
        ban: BanConfig { auth_failures: 2, ..BanConfig::default() },
    }
}

#[test]
fn lists_caps_and_rates() {
    let t0 = Instant::now();
    let mut g = ConnectionGuard::new(strict());
    assert_eq!(
        g.admit(ip("127.0.0.66"), t0, SystemTime::UNIX_EPOCH),
        Admission::Refused { why: Refusal::Denied, audit: true }
    );
    assert!(matches!(
        g.admit(ip("192.0.2.1"), t0, SystemTime::UNIX_EPOCH),
        Admission::Refused { why: Refusal::NotAllowed, .. }
    ));
    let a = ip("127.0.0.2");
    let source = admitted(g.admit(a, t0, SystemTime::UNIX_EPOCH));
    assert_eq!(source, Cidr::parse("127.0.0.2/32").unwrap());
    admitted(g.admit(a, t0, SystemTime::UNIX_EPOCH));
    assert_eq!(
        g.admit(a, t0, SystemTime::UNIX_EPOCH),
        Admission::Refused { why: Refusal::TooManyFromSource, audit: true }
    );
    // The second refusal of the same source within a minute is not audited again.
    assert_eq!(
        g.admit(a, t0, SystemTime::UNIX_EPOCH),
        Admission::Refused { why: Refusal::TooManyFromSource, audit: false }
    );
    g.release(source);
    admitted(g.admit(a, t0, SystemTime::UNIX_EPOCH)); // third of the burst of 3
    g.release(source);
    assert_eq!(g.admit(a, t0, SystemTime::UNIX_EPOCH), Admission::Refused { why: Refusal::RateExceeded, audit: false });
    // One a second after the burst.
    admitted(g.admit(a, t0 + Duration::from_secs(1), SystemTime::UNIX_EPOCH));
    // Gateway-wide cap.
    for i in 3..6 {
        admitted(g.admit(ip(&format!("127.0.0.{i}")), t0, SystemTime::UNIX_EPOCH));
    }
    assert!(matches!(
        g.admit(ip("127.0.0.9"), t0, SystemTime::UNIX_EPOCH),
        Admission::Refused { why: Refusal::GatewayFull, .. }
    ));
    assert_eq!(g.active(), 5);
    // Two authentication failures ban the source, whatever the other limits say.
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let b = ip("127.0.0.3");
    assert_eq!(g.record_auth_failure(b, wall), None);
    assert!(g.record_auth_failure(b, wall).is_some());
    assert!(matches!(g.admit(b, t0, wall), Admission::Refused { why: Refusal::Banned, .. }));
}

#[test]
fn refusals_at_the_lists_are_audited_once_a_minute_too() {
    let t0 = Instant::now();
    let mut g = ConnectionGuard::new(strict());
    let denied = |g: &mut ConnectionGuard, t| g.admit(ip("127.0.0.66"), t, SystemTime::UNIX_EPOCH);
    assert_eq!(denied(&mut g, t0), Admission::Refused { why: Refusal::Denied, audit: true });
    assert_eq!(denied(&mut g, t0 + Duration::from_secs(59)), Admission::Refused { why: Refusal::Denied, audit: false });
    assert_eq!(denied(&mut g, t0 + Duration::from_secs(60)), Admission::Refused { why: Refusal::Denied, audit: true });
}

/// Finding 6: 40 addresses of one /64 are one source for the per-source cap, the rate and bans.
#[test]
fn ipv6_addresses_of_one_prefix_are_one_source() {
    let t0 = Instant::now();
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let config = GuardConfig {
        allow: Vec::new(),
        deny: Vec::new(),
        max_connections: 1000,
        max_connections_per_ip: 20,
        connection_rate_per_ip: Rate::parse("30/minute", 10),
        ipv6_prefix: 64,
        ban: BanConfig { auth_failures: 5, ..BanConfig::default() },
    };
    let addr = |i: u16| ip(&format!("2001:db8:0:7:{i:x}:{i:x}:{i:x}:{i:x}"));

    // Per-source cap: 40 addresses, 20 open connections at most (rate off for this part).
    let mut g = ConnectionGuard::new(GuardConfig { connection_rate_per_ip: None, ..config.clone() });
    let results: Vec<Admission> = (0..40).map(|i| g.admit(addr(i), t0, wall)).collect();
    assert_eq!(results.iter().filter(|a| matches!(a, Admission::Admitted { .. })).count(), 20);
    assert!(results[20..].iter().all(|a| matches!(a, Admission::Refused { why: Refusal::TooManyFromSource, .. })));
    assert_eq!(results.iter().filter(|a| matches!(a, Admission::Refused { audit: true, .. })).count(), 1);
    // Another /64 is another source.
    admitted(g.admit(ip("2001:db8:0:8::1"), t0, wall));
    // Releasing by the source the admission named frees a slot for any address of the /64.
    g.release(source_key(addr(3), 64));
    admitted(g.admit(addr(39), t0, wall));

    // Rate: a burst of 10 for the whole /64, however many addresses it uses.
    let mut g = ConnectionGuard::new(config.clone());
    let admitted_count = (0..40).filter(|&i| matches!(g.admit(addr(i), t0, wall), Admission::Admitted { .. })).count();
    assert_eq!(admitted_count, 10);

    // Bans: five failures from five addresses ban the /64, every address of it.
    let mut g = ConnectionGuard::new(config.clone());
    for i in 0..4 {
        assert_eq!(g.record_auth_failure(addr(i), wall), None);
    }
    assert!(g.record_auth_failure(addr(4), wall).is_some());
    for i in 0..40 {
        assert!(matches!(g.admit(addr(i), t0, wall), Admission::Refused { why: Refusal::Banned, .. }));
    }
    admitted(g.admit(ip("2001:db8:0:8::1"), t0, wall));

    // With ipv6_prefix = 128 every address is its own source again.
    let mut g = ConnectionGuard::new(GuardConfig {
        ipv6_prefix: 128,
        connection_rate_per_ip: None,
        max_connections_per_ip: 1,
        ..config
    });
    assert!((0..40).all(|i| matches!(g.admit(addr(i), t0, wall), Admission::Admitted { .. })));
}

#[test]
fn idle_sources_are_forgotten() {
    let t0 = Instant::now();
    let mut g = ConnectionGuard::new(GuardConfig::default());
    for i in 0..100u8 {
        let a = IpAddr::from([10, 0, 0, i]);
        let source = admitted(g.admit(a, t0, SystemTime::UNIX_EPOCH));
        g.release(source);
    }
    assert_eq!(g.tracked(), 100);
    g.admit(ip("10.1.0.1"), t0 + Duration::from_secs(3600), SystemTime::UNIX_EPOCH);
    // Only the newcomer is left: its open connection and its rate state.
    assert_eq!((g.active.len(), g.recent.len()), (1, 1));
}

/// An attacker rotating through sources (IPv4 addresses, IPv6 /64s) cannot grow the guard's
/// tables past their bound, and never gets anyone else refused.
#[test]
fn rotating_sources_stay_bounded_and_refuse_nobody_else() {
    let t0 = Instant::now();
    let config = GuardConfig {
        max_connections_per_ip: 2,
        connection_rate_per_ip: Rate::parse("1/hour", 1),
        ..GuardConfig::default()
    };
    let mut g = ConnectionGuard::with_tracked(config, 1000);
    let legit = ip("192.0.2.1");
    let held = admitted(g.admit(legit, t0, SystemTime::UNIX_EPOCH));
    for i in 0..100_000u64 {
        let now = t0 + Duration::from_millis(i);
        // A fresh /64 each time, every one using its single connection of the hour.
        let a = IpAddr::from((0x2001_0db8_u128 << 96 | u128::from(i) << 64 | 1).to_be_bytes());
        let source = admitted(g.admit(a, now, SystemTime::UNIX_EPOCH));
        g.release(source);
        assert!(g.tracked() <= 1000 + 1, "{} sources at {i}", g.tracked());
    }
    // The legitimate source's open connection is still counted (connection counts are never
    // evicted); its rate state was forgotten under the rotation (the documented cost), so a
    // second connection fits and a third hits the per-source cap.
    let now = t0 + Duration::from_secs(100);
    assert_eq!(g.active(), 1);
    admitted(g.admit(legit, now, SystemTime::UNIX_EPOCH));
    assert!(matches!(
        g.admit(legit, now, SystemTime::UNIX_EPOCH),
        Admission::Refused { why: Refusal::TooManyFromSource, .. }
    ));
    g.release(held);
    assert_eq!(g.active(), 1);
}

#[test]
fn generations_keep_recently_used_entries() {
    let t0 = Instant::now();
    let mut gens: Generations<u32, u32> = Generations::new(4);
    *gens.entry(1, t0) = 10;
    for k in 2..=4 {
        gens.entry(k, t0);
    }
    // Full: a new key retires the generation; 1..=4 are still found (and move back).
    gens.entry(5, t0);
    assert_eq!(gens.len(), 5);
    assert_eq!(*gens.entry(1, t0), 10);
    for k in 6..=8 {
        gens.entry(k, t0);
    }
    // 1 was used again after the rotation, so it survives the next one; 2..=4 do not.
    gens.entry(9, t0);
    assert_eq!(*gens.entry(1, t0), 10);
    assert_eq!(*gens.entry(2, t0), 0, "forgotten");
    // Age: one period retires a generation, two forget everything.
    gens.age(t0 + Duration::from_secs(61), Duration::from_secs(60));
    assert!(gens.len() > 0);
    gens.age(t0 + Duration::from_secs(300), Duration::from_secs(60));
    assert_eq!(gens.len(), 0);
}
