//! Address lists for `source_ip`: one hash set per prefix length, so a lookup costs at most one
//! probe per distinct prefix length in the list (≤ 33 for IPv4, ≤ 129 for IPv6), whatever the
//! number of entries.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use crate::net::Cidr;

/// A set of prefixes.
#[derive(Debug, Clone, Default)]
pub struct CidrSet {
    v4: BTreeMap<u8, HashSet<u32>>,
    v6: BTreeMap<u8, HashSet<u128>>,
}

fn mask4(a: u32, prefix: u8) -> u32 {
    a & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask6(a: u128, prefix: u8) -> u128 {
    a & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl CidrSet {
    /// Add a prefix.
    pub fn insert(&mut self, c: Cidr) {
        match c.addr() {
            IpAddr::V4(a) => {
                self.v4.entry(c.prefix()).or_default().insert(mask4(a.into(), c.prefix()));
            }
            IpAddr::V6(a) => {
                self.v6.entry(c.prefix()).or_default().insert(mask6(a.into(), c.prefix()));
            }
        }
    }

    /// Is `ip` inside one of the prefixes? IPv4-mapped IPv6 addresses match IPv4 prefixes.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(a) => self.v4.iter().any(|(&p, set)| set.contains(&mask4(a.into(), p))),
            IpAddr::V6(a) => self.v6.iter().any(|(&p, set)| set.contains(&mask6(a.into(), p))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_of_both_families() {
        let mut s = CidrSet::default();
        for c in ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "0.0.0.0/0"] {
            s.insert(Cidr::parse(c).unwrap());
        }
        assert!(s.contains("10.200.1.1".parse().unwrap()));
        assert!(s.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(s.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!s.contains("2001:db9::1".parse().unwrap()));
        let mut t = CidrSet::default();
        t.insert(Cidr::parse("192.0.2.7").unwrap());
        assert!(t.contains("192.0.2.7".parse().unwrap()));
        assert!(!t.contains("192.0.2.8".parse().unwrap()));
    }
}
