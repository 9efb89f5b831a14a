//! Addresses as the gateway counts them: IP prefixes ([`Cidr`]) and the *source* an address
//! belongs to ([`source_key`]).
//!
//! Owns the one definition of a source, shared by the guard's caps and rates
//! ([`crate::guard`]), the ban table ([`crate::ban`]), the policy's `source` lists and the
//! nftables meters: an IPv4 address is its own source; an IPv6 address counts as its
//! `/ipv6_prefix`, because one IPv6 host or site holds at least a whole /64 and picks new
//! addresses in it at will (RFC 4291 §2.5.4, RFC 6177, RFC 8981). Plain values: no tables, no
//! clock, no I/O.

use std::fmt;
use std::net::IpAddr;

/// An address prefix such as `192.0.2.0/24` or `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// The mask of an IPv4 prefix length (`0` for /0).
fn mask4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0)
}

/// The mask of an IPv6 prefix length (`0` for /0).
fn mask6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix.min(128))).unwrap_or(0)
}

impl Cidr {
    /// Parse `ADDR/PREFIX` or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a = s.trim().parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        Cidr::new(addr, prefix).map(|_| Cidr { addr, prefix })
    }

    /// `addr/prefix` with the host bits cleared; `None` if `prefix` is too long for the family.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then(|| Cidr { addr, prefix }.network())
    }

    /// Does the prefix contain `ip`? IPv4-mapped IPv6 addresses match IPv4 prefixes.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, unmap(ip)) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                u32::from(net) & mask4(self.prefix) == u32::from(a) & mask4(self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                u128::from(net) & mask6(self.prefix) == u128::from(a) & mask6(self.prefix)
            }
            _ => false,
        }
    }

    /// The address as written.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The prefix with its host bits cleared (`10.1.2.3/8` → `10.0.0.0/8`), as a packet filter
    /// wants it.
    pub fn network(&self) -> Cidr {
        let addr = match self.addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask4(self.prefix)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask6(self.prefix)).into()),
        };
        Cidr { addr, prefix: self.prefix }
    }

    /// An IPv4 prefix?
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Does it cover its whole family (`0.0.0.0/0`, `::/0`)?
    pub fn is_everything(&self) -> bool {
        self.prefix == 0
    }

    /// Is it one address (a /32 or /128)?
    pub fn is_host(&self) -> bool {
        self.prefix == if self.is_ipv4() { 32 } else { 128 }
    }

    /// The address alone for one host, `ADDR/PREFIX` otherwise: how the ban file and nftables
    /// elements name a source.
    pub fn compact(&self) -> String {
        if self.is_host() {
            self.addr.to_string()
        } else {
            self.to_string()
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.7`, what a dual-stack socket reports for an
/// IPv4 peer) as the IPv4 address it is; every other address unchanged.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The source an address counts as, for per-source caps, rates, bans and the nftables meters:
/// an IPv4 address is its own source (a /32); an IPv6 address counts as its `/ipv6_prefix`
/// (values above 128 are taken as 128). The one place this is decided.
pub fn source_key(ip: IpAddr, ipv6_prefix: u8) -> Cidr {
    match unmap(ip) {
        v4 @ IpAddr::V4(_) => Cidr { addr: v4, prefix: 32 },
        v6 => Cidr { addr: v6, prefix: ipv6_prefix.min(128) }.network(),
    }
}
