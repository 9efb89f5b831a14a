//! The PROXY protocol version 2 header (haproxy's proxy-protocol.txt §2.2), written as the first
//! bytes of a backend connection so the XMPP server sees the client's real address.
//!
//! Only the `PROXY` command over TCP (IPv4 or IPv6) is produced; no TLVs.

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

#[cfg(test)]
mod tests {
    use super::*;

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
