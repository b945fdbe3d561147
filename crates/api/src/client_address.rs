//! The client's network address, which rate limits and login lockouts are keyed on. It is the peer
//! address of the connection, unless that peer is a proxy the operator listed as trusted; then it is
//! the rightmost `X-Forwarded-For` hop that is not a trusted proxy. Everything left of that hop was
//! written by the client and may say anything, so it is never read.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;

use crate::SharedState;
use crate::error::ApiError;

/// An address range: an address and how many of its leading bits are fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    address: IpAddr,
    prefix: u8,
}

impl IpNet {
    fn bits(address: IpAddr) -> (u128, u8) {
        match address {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    }

    /// The bits of an address of `width` bits that a `prefix`-bit range fixes.
    fn mask(width: u8, prefix: u8) -> u128 {
        let all = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        if prefix == 0 {
            0
        } else {
            all & !(all >> prefix)
        }
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        if address.is_ipv4() != self.address.is_ipv4() {
            return false;
        }
        let (net, width) = Self::bits(self.address);
        let (ip, _) = Self::bits(address);
        let mask = Self::mask(width, self.prefix);
        ip & mask == net & mask
    }
}

impl FromStr for IpNet {
    type Err = String;

    /// `10.0.0.0/8`, `fd00::/8`, or a single address (`192.0.2.1`, `::1`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse::<IpAddr>()
            .map_err(|_| format!("{text:?} is not an IP address or a CIDR range like 10.0.0.0/8"))?
            .to_canonical();
        let (bits, width) = Self::bits(address);
        let prefix = match prefix {
            None => width,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {width}"))?,
        };
        // A typo such as 10.0.0.1/8 (meant /32?) would trust far more than intended: refuse it.
        if bits & !Self::mask(width, prefix) != 0 {
            return Err(format!(
                "{text:?} has bits set after its /{prefix} prefix; write the network address or a single address"
            ));
        }
        Ok(Self { address, prefix })
    }
}

/// The proxies whose `X-Forwarded-For` this server believes. Empty by default: then the header is
/// ignored and every client is its peer address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// A list of addresses and CIDR ranges separated by commas or whitespace; empty trusts none.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|entry| !entry.is_empty())
            .map(IpNet::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(address))
    }

    /// The client behind a connection from `peer`. A trusted proxy appends the address it received
    /// the request from to `X-Forwarded-For`, so reading from the right, each hop is vouched for by
    /// the one after it as long as that one is trusted. The first hop that is not a trusted proxy is
    /// the client. A hop that is not an address (or a header that is not text) ends the walk at the
    /// last address a trusted proxy vouched for: limiting that proxy is safer than believing it.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.contains(client) {
            return client;
        }
        for value in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(value) = value.to_str() else {
                return client;
            };
            for hop in value.rsplit(',') {
                let Some(hop) = parse_hop(hop) else {
                    return client;
                };
                client = hop;
                if !self.contains(hop) {
                    return hop;
                }
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, perhaps with a port (`192.0.2.1:4711`, `[2001:db8::1]:80`)
/// or in brackets, as some proxies write them.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let address = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            hop.strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<IpAddr>()
                .ok()
        })?;
    Some(address.to_canonical())
}

/// The client address as an extractor, for the auth routes' rate limits.
#[derive(Debug, Clone)]
pub struct ClientAddress(pub String);

/// Who a limit counts an address against: an IPv4 address itself, and an IPv6 address's /64 (one
/// subscriber's network, inside which it may take any of 2^64 addresses, each otherwise a fresh
/// bucket). IPv4-mapped IPv6 addresses count as the IPv4 address.
pub fn limit_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

impl FromRequestParts<SharedState> for ClientAddress {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|ci| ci.0.ip());
        let address = match peer {
            Some(peer) => {
                match limit_key(state.trusted_proxies.client_address(peer, &parts.headers)) {
                    IpAddr::V6(network) => format!("{network}/64"),
                    v4 => v4.to_string(),
                }
            }
            // Served without connection info (a router driven in-process): one shared bucket.
            None => "unknown".to_string(),
        };
        Ok(Self(address))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn ipv6_clients_are_limited_by_their_64_and_ipv4_by_address() {
        let key = |text: &str| limit_key(ip(text));
        assert_eq!(key("2001:db8:1:2::7"), key("2001:db8:1:2:ffff:1:2:3"));
        assert_ne!(key("2001:db8:1:2::7"), key("2001:db8:1:3::7"));
        assert_eq!(key("2001:db8:1:2::7"), ip("2001:db8:1:2::"));
        assert_eq!(key("192.0.2.7"), ip("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(key("::ffff:192.0.2.7"), ip("192.0.2.7"));
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn ranges_and_single_addresses() {
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("10.255.1.2")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.0.0.1")), "IPv4-mapped IPv6");
        let one: IpNet = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("::1")));
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "::/129",
            "proxy.local",
            "10.0.0.0/x",
            "1.2.3",
        ] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad}");
        }
        let list = TrustedProxies::parse(" 127.0.0.1, 10.0.0.0/8  fd00::/8 ,").unwrap();
        assert_eq!(list.0.len(), 3);
        assert!(TrustedProxies::parse("").unwrap().is_empty());
    }

    #[test]
    fn the_header_is_ignored_from_an_untrusted_peer() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let headers = forwarded(&["198.51.100.1"]);
        assert_eq!(
            proxies.client_address(ip("203.0.113.5"), &headers),
            ip("203.0.113.5")
        );
        assert_eq!(
            TrustedProxies::default().client_address(ip("10.0.0.1"), &headers),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let proxies = TrustedProxies::parse("10.0.0.0/8, 127.0.0.1").unwrap();
        let peer = ip("127.0.0.1");
        // The client wrote the first entry itself; the proxies appended the rest.
        let headers = forwarded(&["1.1.1.1, 203.0.113.5, 10.0.0.2"]);
        assert_eq!(proxies.client_address(peer, &headers), ip("203.0.113.5"));
        // The same chain split over several header lines, with ports and brackets.
        let headers = forwarded(&["1.1.1.1", "[2001:db8::7]:443, 10.0.0.2:80"]);
        assert_eq!(proxies.client_address(peer, &headers), ip("2001:db8::7"));
        // No header: the proxy itself is all we know.
        assert_eq!(proxies.client_address(peer, &HeaderMap::new()), peer);
        // Every hop trusted: the leftmost is the furthest anyone vouched for.
        let headers = forwarded(&["10.0.0.9, 10.0.0.2"]);
        assert_eq!(proxies.client_address(peer, &headers), ip("10.0.0.9"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_vouched_address() {
        let proxies = TrustedProxies::parse("10.0.0.0/8, 127.0.0.1").unwrap();
        let peer = ip("127.0.0.1");
        let headers = forwarded(&["203.0.113.5, unknown, 10.0.0.2"]);
        assert_eq!(proxies.client_address(peer, &headers), ip("10.0.0.2"));
        let headers = forwarded(&["203.0.113.5,"]);
        assert_eq!(proxies.client_address(peer, &headers), peer);
    }
}
