//! Client-IP resolution behind trusted proxies.
//!
//! The direct peer's address is the only fact a server really knows. Forwarding headers
//! (`X-Forwarded-For`, RFC 7239 `Forwarded`) are believed only when that peer is one of the
//! configured trusted proxies, and even then they are walked **from the right**: each hop that
//! is itself a trusted proxy is skipped, and the first untrusted hop is the client. A client
//! that prepends fake hops therefore changes nothing, and a peer outside the trusted set cannot
//! move its address at all.
//!
//! The resolved address lands in the [request context](crate::context) (and thus the logs);
//! [`RequestContextLayer`](crate::context::RequestContextLayer) runs the resolution.
//!
//! ```
//! use palisade::client_ip::{ClientIpConfig, ForwardedHeader, TrustedProxies};
//! use http::HeaderMap;
//!
//! let proxies = TrustedProxies::new(&ClientIpConfig {
//!     trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
//!     header: ForwardedHeader::XForwardedFor,
//! });
//! let mut headers = HeaderMap::new();
//! headers.insert("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.1.1.1".parse().unwrap());
//! // Peer 10.0.0.2 is trusted; 10.1.1.1 is a trusted hop; 203.0.113.7 is the client.
//! let client = proxies.resolve("10.0.0.2".parse().unwrap(), false, &headers);
//! assert_eq!(client.ip.to_string(), "203.0.113.7");
//! // The same header from an untrusted peer is ignored.
//! let client = proxies.resolve("198.51.100.1".parse().unwrap(), false, &headers);
//! assert_eq!(client.ip.to_string(), "198.51.100.1");
//! ```
//!
//! Caveat: list every proxy between the internet and this server; a proxy missing from the
//! list is taken for the client.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;
use serde::Deserialize;

/// Which forwarding header trusted proxies use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (with `X-Forwarded-Proto` for the scheme).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded` (`for=` and `proto=`).
    Forwarded,
}

/// Configuration for [`TrustedProxies`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientIpConfig {
    /// CIDRs of the proxies whose forwarding headers are believed. Empty: trust nobody.
    pub trusted_proxies: Vec<IpNet>,
    /// The forwarding header those proxies set.
    pub header: ForwardedHeader,
}

/// Facts about the connection a request arrived on, inserted into request extensions by the
/// server (Palisade's server does this for every connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The direct peer.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// The outcome of resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedClient {
    /// The client's address.
    pub ip: IpAddr,
    /// Whether the client reached us over HTTPS (own TLS, or a trusted proxy says so).
    pub https: bool,
}

/// A validated set of trusted proxies. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// Builds the resolver from its config.
    pub fn new(config: &ClientIpConfig) -> Self {
        Self {
            nets: config.trusted_proxies.clone(),
            header: config.header,
        }
    }

    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// Resolves the client behind `peer`.
    pub fn resolve(&self, peer: IpAddr, tls: bool, headers: &HeaderMap) -> ResolvedClient {
        let peer = canonical(peer);
        if self.nets.is_empty() || !self.is_trusted(peer) {
            return ResolvedClient {
                ip: peer,
                https: tls,
            };
        }
        match self.header {
            ForwardedHeader::XForwardedFor => {
                let ip = self.walk(
                    peer,
                    headers
                        .get_all("x-forwarded-for")
                        .iter()
                        .rev()
                        .filter_map(|v| v.to_str().ok())
                        .flat_map(|v| v.rsplit(','))
                        .map(|hop| parse_node(hop.trim())),
                );
                let https = tls
                    || headers
                        .get("x-forwarded-proto")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.split(',').next())
                        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
                ResolvedClient { ip, https }
            }
            ForwardedHeader::Forwarded => {
                let elements = || {
                    headers
                        .get_all(http::header::FORWARDED)
                        .iter()
                        .rev()
                        .filter_map(|v| v.to_str().ok())
                        .flat_map(|v| v.rsplit(','))
                };
                let ip = self.walk(
                    peer,
                    elements().map(|e| forwarded_param(e, "for").and_then(parse_node)),
                );
                // The scheme the client used is what the outermost proxy saw: the leftmost
                // element's proto.
                let https = tls
                    || elements()
                        .last()
                        .and_then(|e| forwarded_param(e, "proto"))
                        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
                ResolvedClient { ip, https }
            }
        }
    }

    /// Walks hops right to left: skip trusted ones, stop at the first untrusted one. An
    /// unparsable or obfuscated hop stops the walk at the last address we could verify.
    fn walk(&self, peer: IpAddr, hops: impl Iterator<Item = Option<IpAddr>>) -> IpAddr {
        let mut client = peer;
        for hop in hops {
            let Some(ip) = hop else { break };
            client = canonical(ip);
            if !self.is_trusted(client) {
                break;
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Parses a node: `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]`, `[::1]:80`, optionally quoted.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = node.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let inner = node.strip_prefix('[')?.split(']').next()?;
    inner.parse().ok()
}

/// The value of `name=` in one `Forwarded` element (`for=1.2.3.4;proto=https`).
fn forwarded_param<'a>(element: &'a str, name: &str) -> Option<&'a str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(cidrs: &[&str], header: ForwardedHeader) -> TrustedProxies {
        TrustedProxies::new(&ClientIpConfig {
            trusted_proxies: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            header,
        })
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        let p = proxies(&[], ForwardedHeader::XForwardedFor);
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let r = p.resolve(ip("9.9.9.9"), false, &h);
        assert_eq!(
            r,
            ResolvedClient {
                ip: ip("9.9.9.9"),
                https: false
            }
        );
    }

    #[test]
    fn spoofed_leftmost_hops_are_ignored() {
        let p = proxies(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 5.6.7.8")]);
        assert_eq!(p.resolve(ip("10.0.0.1"), false, &h).ip, ip("5.6.7.8"));
    }

    #[test]
    fn several_header_lines_are_one_list_in_order() {
        let p = proxies(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8, 10.0.0.9"),
        ]);
        assert_eq!(p.resolve(ip("10.0.0.1"), false, &h).ip, ip("5.6.7.8"));
    }

    #[test]
    fn all_trusted_hops_resolve_to_the_leftmost() {
        let p = proxies(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let h = headers(&[("x-forwarded-for", "10.0.0.3, 10.0.0.2")]);
        assert_eq!(p.resolve(ip("10.0.0.1"), false, &h).ip, ip("10.0.0.3"));
    }

    #[test]
    fn garbage_hops_stop_the_walk_at_the_last_verified_address() {
        let p = proxies(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let h = headers(&[("x-forwarded-for", "1.1.1.1, not-an-ip, 10.0.0.5")]);
        assert_eq!(p.resolve(ip("10.0.0.1"), false, &h).ip, ip("10.0.0.5"));
        let h = headers(&[("x-forwarded-for", "")]);
        assert_eq!(p.resolve(ip("10.0.0.1"), false, &h).ip, ip("10.0.0.1"));
    }

    #[test]
    fn ports_brackets_and_mapped_addresses_are_understood() {
        let p = proxies(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let h = headers(&[("x-forwarded-for", "[2001:db8::1]:443")]);
        assert_eq!(
            p.resolve(ip("::ffff:10.0.0.1"), false, &h).ip,
            ip("2001:db8::1")
        );
        let h = headers(&[("x-forwarded-for", "::ffff:1.2.3.4")]);
        assert_eq!(p.resolve(ip("10.0.0.1"), false, &h).ip, ip("1.2.3.4"));
    }

    #[test]
    fn forwarded_header_is_walked_from_the_right_with_quotes_and_ports() {
        let p = proxies(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        let h = headers(&[(
            "forwarded",
            "for=6.6.6.6;proto=https, for=\"[2001:db8::7]:4711\";proto=http, for=10.0.0.4",
        )]);
        let r = p.resolve(ip("10.0.0.1"), false, &h);
        assert_eq!(r.ip, ip("2001:db8::7"));
        assert!(r.https, "scheme comes from the outermost element");
        let h = headers(&[("forwarded", "for=unknown, for=10.0.0.2")]);
        assert_eq!(p.resolve(ip("10.0.0.1"), false, &h).ip, ip("10.0.0.2"));
    }

    #[test]
    fn forwarded_proto_from_a_trusted_proxy_marks_https() {
        let p = proxies(&["127.0.0.1/32"], ForwardedHeader::XForwardedFor);
        let h = headers(&[("x-forwarded-proto", "https")]);
        assert!(p.resolve(ip("127.0.0.1"), false, &h).https);
        assert!(!p.resolve(ip("127.0.0.2"), false, &h).https);
        assert!(p.resolve(ip("127.0.0.2"), true, &h).https);
    }
}
