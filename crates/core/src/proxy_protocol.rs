//! The PROXY protocol version 2 header (haproxy's proxy-protocol.txt §2.2), written as the first
//! bytes of a backend connection so the XMPP server sees the client's real address, and read
//! ([`parse_v2`]) as the first bytes of a client connection from a trusted load balancer
//! (`accept_proxy = "v2"`), so that limits, bans and audit see the client and not the balancer.
//!
//! Only the `PROXY` command over TCP (IPv4 or IPv6) is produced; no TLVs. Parsing accepts
//! `PROXY` over TCP4/TCP6 and `LOCAL` (the balancer's own health check), skips TLVs, and refuses
//! everything else: a header it cannot fully account for must not pick a connection's source.

use std::net::SocketAddr;

/// The 12-byte v2 signature.
pub const SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];

/// The header announcing a TCP connection from `client` to `local` (the gateway's listener).
/// Mixed families are expressed as IPv6 with IPv4-mapped addresses.
pub fn v2_header(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    match (client, local) {
        (SocketAddr::V4(c), SocketAddr::V4(l)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&c.ip().octets());
            out.extend_from_slice(&l.ip().octets());
            out.extend_from_slice(&c.port().to_be_bytes());
            out.extend_from_slice(&l.port().to_be_bytes());
        }
        (c, l) => {
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V4(a) => a.ip().to_ipv6_mapped(),
                SocketAddr::V6(a) => *a.ip(),
            };
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(c).octets());
            out.extend_from_slice(&v6(l).octets());
            out.extend_from_slice(&c.port().to_be_bytes());
            out.extend_from_slice(&l.port().to_be_bytes());
        }
    }
    out
}

/// The fixed part of a v2 header: signature, version/command, family/protocol, length.
pub const FIXED_LEN: usize = 16;
/// Longest header accepted: the fixed part and a length field's worth of addresses and TLVs
/// (haproxy sends well under this; a balancer that sends more is misconfigured).
pub const MAX_LEN: usize = FIXED_LEN + 512;

/// What a received v2 header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxiedFrom {
    /// `PROXY` over TCP: the client's address and the address it connected to.
    Tcp {
        /// The client.
        client: SocketAddr,
        /// Where the client connected (the balancer's frontend).
        destination: SocketAddr,
    },
    /// `LOCAL`: the balancer speaking for itself (a health check); the connection's own
    /// addresses apply.
    Local,
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The first 12 bytes are not the v2 signature (no header, or v1 text).
    #[error("no PROXY v2 signature")]
    Signature,
    /// Version other than 2, or a command other than LOCAL and PROXY.
    #[error("unsupported PROXY version or command 0x{0:02x}")]
    Command(u8),
    /// A family or transport other than TCP over IPv4/IPv6 with the PROXY command.
    #[error("unsupported PROXY address family/protocol 0x{0:02x}")]
    Family(u8),
    /// The length field is shorter than the addresses it must hold, or longer than [`MAX_LEN`].
    #[error("PROXY header length {0} is invalid")]
    Length(usize),
}

/// The total length of the header whose first [`FIXED_LEN`] bytes are `fixed`, once the
/// signature and length are checked; the caller then reads exactly that many bytes (no byte
/// past the header is consumed: what follows belongs to the client's stream).
pub fn v2_total_len(fixed: &[u8; FIXED_LEN]) -> Result<usize, ProxyHeaderError> {
    if fixed[..12] != SIGNATURE {
        return Err(ProxyHeaderError::Signature);
    }
    let total = FIXED_LEN + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if total > MAX_LEN {
        return Err(ProxyHeaderError::Length(total - FIXED_LEN));
    }
    Ok(total)
}

/// Parse a complete v2 header (`header.len()` as [`v2_total_len`] said).
pub fn parse_v2(header: &[u8]) -> Result<ProxiedFrom, ProxyHeaderError> {
    let fixed: &[u8; FIXED_LEN] =
        header.get(..FIXED_LEN).and_then(|f| f.try_into().ok()).ok_or(ProxyHeaderError::Length(0))?;
    let total = v2_total_len(fixed)?;
    if header.len() != total {
        return Err(ProxyHeaderError::Length(header.len().saturating_sub(FIXED_LEN)));
    }
    let body = &header[FIXED_LEN..];
    match header[12] {
        // LOCAL: addresses (if any) are to be ignored (proxy-protocol.txt §2.2).
        0x20 => return Ok(ProxiedFrom::Local),
        0x21 => {}
        other => return Err(ProxyHeaderError::Command(other)),
    }
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match header[13] {
        0x11 if body.len() >= 12 => {
            let ip = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Ok(ProxiedFrom::Tcp {
                client: SocketAddr::from((ip(&body[0..4]), port(&body[8..10]))),
                destination: SocketAddr::from((ip(&body[4..8]), port(&body[10..12]))),
            })
        }
        0x21 if body.len() >= 36 => {
            let ip = |b: &[u8]| {
                let octets: [u8; 16] = b.try_into().unwrap_or([0; 16]);
                std::net::Ipv6Addr::from(octets)
            };
            Ok(ProxiedFrom::Tcp {
                client: SocketAddr::from((ip(&body[0..16]), port(&body[32..34]))),
                destination: SocketAddr::from((ip(&body[16..32]), port(&body[34..36]))),
            })
        }
        0x11 | 0x21 => Err(ProxyHeaderError::Length(body.len())),
        other => Err(ProxyHeaderError::Family(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(h: &[u8]) -> Result<ProxiedFrom, ProxyHeaderError> {
        let fixed: [u8; FIXED_LEN] = h[..FIXED_LEN].try_into().unwrap();
        let total = v2_total_len(&fixed)?;
        parse_v2(&h[..total])
    }

    #[test]
    fn what_is_written_parses_back() {
        for (c, l) in [("192.0.2.1:40000", "127.0.0.1:5222"), ("[2001:db8::1]:1", "[::1]:2")] {
            let (c, l): (SocketAddr, SocketAddr) = (c.parse().unwrap(), l.parse().unwrap());
            assert_eq!(parse(&v2_header(c, l)), Ok(ProxiedFrom::Tcp { client: c, destination: l }));
        }
    }

    #[test]
    fn tlvs_are_skipped_and_local_is_local() {
        let mut h = v2_header("192.0.2.1:4".parse().unwrap(), "127.0.0.1:5".parse().unwrap());
        h[15] += 7; // a 7-byte TLV after the addresses (e.g. PP2_TYPE_UNIQUE_ID)
        h.extend_from_slice(&[0x05, 0x00, 0x04, 1, 2, 3, 4]);
        assert!(matches!(parse(&h), Ok(ProxiedFrom::Tcp { .. })));
        h[12] = 0x20;
        assert_eq!(parse(&h), Ok(ProxiedFrom::Local));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let good = v2_header("192.0.2.1:4".parse().unwrap(), "127.0.0.1:5".parse().unwrap());
        let mut v1 = b"PROXY TCP4 192.0.2.1 127.0.0.1 4 5\r\n".to_vec();
        v1.resize(16, 0);
        assert_eq!(parse(&v1), Err(ProxyHeaderError::Signature));
        let mut bad = good.clone();
        bad[12] = 0x11; // version 1
        assert_eq!(parse(&bad), Err(ProxyHeaderError::Command(0x11)));
        let mut udp = good.clone();
        udp[13] = 0x12;
        assert_eq!(parse(&udp), Err(ProxyHeaderError::Family(0x12)));
        let mut short = good.clone();
        short[15] = 4; // addresses need 12
        short.truncate(20);
        assert_eq!(parse(&short), Err(ProxyHeaderError::Length(4)));
        let mut long = good.clone();
        long[14] = 0xff;
        assert!(matches!(parse(&long), Err(ProxyHeaderError::Length(_))));
        assert!(parse_v2(&good[..10]).is_err(), "a cut header is an error, not a panic");
        assert!(parse_v2(&good[..20]).is_err());
    }

    #[test]
    fn ipv4_header_layout() {
        let h = v2_header("192.0.2.1:40000".parse().unwrap(), "127.0.0.1:5222".parse().unwrap());
        assert_eq!(h.len(), 16 + 12);
        assert_eq!(&h[..12], &SIGNATURE);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12);
        assert_eq!(&h[16..20], &[192, 0, 2, 1]);
        assert_eq!(&h[20..24], &[127, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 40000);
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 5222);
    }

    #[test]
    fn ipv6_and_mixed_use_inet6() {
        let h = v2_header("[2001:db8::1]:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        assert_eq!(h[13], 0x21);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[32..48], &"::ffff:127.0.0.1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    }
}
