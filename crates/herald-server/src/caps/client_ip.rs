//! Who is asking: the client address of a request ([`client_ip`]), taken from
//! `X-Forwarded-For` only when the peer is a trusted proxy ([`IpNet`]), and the key it is
//! limited under ([`ip_key`]).

use std::net::IpAddr;
use std::str::FromStr;

use http::HeaderMap;

/// An address block in CIDR notation (`10.0.0.0/8`, `fd00::/8`); a bare address is a block of
/// one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix_len: u8,
}

/// Why a `--trusted-proxies` entry is not a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address or a CIDR block (such as 10.0.0.0/8 or fd00::/8)")]
pub struct InvalidIpNet(String);

impl FromStr for IpNet {
    type Err = InvalidIpNet;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidIpNet(s.to_owned());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s.trim(), None),
        };
        let addr = IpAddr::from_str(addr).map_err(|_| invalid())?.to_canonical();
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            Some(prefix) => prefix.parse::<u8>().ok().filter(|p| *p <= bits).ok_or_else(invalid)?,
            None => bits,
        };
        Ok(Self { addr, prefix_len })
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl IpNet {
    /// Whether `ip` is in this block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_len)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The client address of a request from `peer`. If `peer` is in `trusted` (a proxy), the
/// right-most address of `X-Forwarded-For` (all its headers, in order) that is not itself a
/// trusted proxy; if every address in it is trusted, the left-most one. Otherwise `peer`,
/// whatever the header says: a client could write any address there.
///
/// A malformed entry ends the walk: the address that forwarded it (the nearest trusted proxy,
/// or the peer) is taken, so that garbage never picks an address of its own.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect();
    let mut client = peer;
    while let Some(hop) = hops.pop() {
        let Some(ip) = parse_hop(hop.trim()) else { return client };
        client = ip;
        if !is_trusted(ip) {
            return ip;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, maybe with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let ip = IpAddr::from_str(hop)
        .ok()
        .or_else(|| std::net::SocketAddr::from_str(hop).ok().map(|addr| addr.ip()))?;
    Some(ip.to_canonical())
}

/// The key a client address is limited under: an IPv4 address, or the /64 prefix of an IPv6
/// one (a single host usually holds a whole /64, and could otherwise take a fresh address, and
/// a fresh budget, for every request).
pub fn ip_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6) & !u128::from(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_blocks_parse_and_match() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "an IPv4-mapped address is the IPv4 one");
        assert!("0.0.0.0/0".parse::<IpNet>().unwrap().contains(ip("8.8.8.8")));
        assert!("fd00::/8".parse::<IpNet>().unwrap().contains(ip("fd12::1")));
        assert!(!"fd00::/8".parse::<IpNet>().unwrap().contains(ip("10.0.0.1")));
        assert_eq!("127.0.0.1".parse::<IpNet>().unwrap().to_string(), "127.0.0.1/32");
        for bad in ["", "10.0.0.0/33", "::/129", "10.0.0/8", "nope", "10.0.0.0/"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn forwarded_for_is_read_only_from_a_trusted_peer() {
        let trusted = nets(&["10.0.0.0/8"]);
        let headers = xff(&["203.0.113.9"]);
        assert_eq!(client_ip(ip("198.51.100.1"), &headers, &trusted), ip("198.51.100.1"));
        assert_eq!(client_ip(ip("10.0.0.2"), &headers, &trusted), ip("203.0.113.9"));
        assert_eq!(client_ip(ip("10.0.0.2"), &headers, &[]), ip("10.0.0.2"));
    }

    #[test]
    fn the_right_most_untrusted_address_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "192.168.0.1"]);
        // A client that writes its own header gets it prepended to, never replaced.
        let headers = xff(&["1.1.1.1, 203.0.113.9", "10.0.0.7, 192.168.0.1"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &headers, &trusted), ip("203.0.113.9"));
        // Every hop trusted: the left-most one.
        assert_eq!(client_ip(ip("10.0.0.2"), &xff(&["10.0.0.5, 10.0.0.6"]), &trusted), ip("10.0.0.5"));
        // No header: the proxy itself.
        assert_eq!(client_ip(ip("10.0.0.2"), &HeaderMap::new(), &trusted), ip("10.0.0.2"));
        // Garbage ends the walk at the last trusted hop.
        assert_eq!(client_ip(ip("10.0.0.2"), &xff(&["bogus, 10.0.0.6"]), &trusted), ip("10.0.0.6"));
        // Ports and brackets are tolerated.
        assert_eq!(client_ip(ip("10.0.0.2"), &xff(&["[2001:db8::1]:443"]), &trusted), ip("2001:db8::1"));
        assert_eq!(client_ip(ip("10.0.0.2"), &xff(&["203.0.113.9:5000"]), &trusted), ip("203.0.113.9"));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_prefix() {
        assert_eq!(ip_key(ip("2001:db8:1:2::1")), ip_key(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(ip_key(ip("2001:db8:1:2::1")), ip_key(ip("2001:db8:1:3::1")));
        assert_ne!(ip_key(ip("10.0.0.1")), ip_key(ip("10.0.0.2")));
        assert_eq!(ip_key(ip("::ffff:10.0.0.1")), ip_key(ip("10.0.0.1")));
    }
}
