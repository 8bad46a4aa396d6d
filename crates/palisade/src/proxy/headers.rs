//! Header rewriting on the way through: hop-by-hop fields out (RFC 9110 §7.6.1), forwarding
//! fields in (`X-Forwarded-*`, RFC 7239 `Forwarded`).

use std::net::IpAddr;

use http::{
    HeaderMap, HeaderName, HeaderValue,
    header::{
        CONNECTION, FORWARDED, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
        TRANSFER_ENCODING, UPGRADE,
    },
};

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the hop-by-hop fields: the fixed list and every field `Connection` names. What
/// a WebSocket upgrade needs is put back by the caller. Most messages carry none: one pass
/// over the names finds that without hashing.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Names listed in Connection first (they may be any field).
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

static HOP_BY_HOP: [&HeaderName; 9] = [
    &CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &TE,
    &TRAILER,
    &TRANSFER_ENCODING,
    &UPGRADE,
    &PROXY_AUTHORIZATION,
    &PROXY_AUTHENTICATE,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// What the gateway knows of the hop it received the request on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hop<'a> {
    /// The direct peer, when known.
    pub(crate) peer: Option<IpAddr>,
    /// Whether the peer is a trusted proxy: its forwarding fields are kept and extended;
    /// anyone else's are replaced, so a client cannot plant addresses upstream.
    pub(crate) trusted: bool,
    /// `https` or `http`, as this hop was.
    pub(crate) proto: &'static str,
    /// The host the client asked for (its `Host` value, or the URI authority).
    pub(crate) host: Option<&'a HeaderValue>,
}

/// Sets `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` for the
/// upstream: from a trusted peer its chain plus the peer, else the peer alone. On the hot
/// path of every proxied request: the address is written without `core::fmt` and the
/// client's host value is shared, not copied.
pub(crate) fn set_forwarding(headers: &mut HeaderMap, hop: &Hop<'_>) {
    let proto = HeaderValue::from_static(hop.proto);
    let host = hop.host.filter(|h| is_visible_ascii(h.as_bytes()));
    if hop.trusted {
        if let Some(peer) = hop.peer {
            let mut ip = Vec::with_capacity(48);
            push_ip(&mut ip, canonical(peer), false);
            append(headers, &X_FORWARDED_FOR, &ip);
            let element = forwarded_element(peer, host, hop.proto);
            append(headers, &FORWARDED, &element);
        }
        headers.entry(&X_FORWARDED_PROTO).or_insert(proto);
        if let Some(h) = host {
            headers
                .entry(&X_FORWARDED_HOST)
                .or_insert_with(|| h.clone());
        }
        return;
    }
    match hop.peer {
        Some(peer) => {
            let mut ip = Vec::with_capacity(48);
            push_ip(&mut ip, canonical(peer), false);
            set(headers, X_FORWARDED_FOR.clone(), ip);
            set(headers, FORWARDED, forwarded_element(peer, host, hop.proto));
        }
        None => {
            headers.remove(&X_FORWARDED_FOR);
            headers.remove(FORWARDED);
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), proto);
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST.clone(), h.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// `for=<peer>[;host=<host>];proto=<proto>` (RFC 7239).
fn forwarded_element(peer: IpAddr, host: Option<&HeaderValue>, proto: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"for=");
    push_ip(&mut out, canonical(peer), true);
    if let Some(h) = host {
        out.extend_from_slice(b";host=");
        quoted(&mut out, h.as_bytes());
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(proto.as_bytes());
    out
}

/// Appends `item` to the comma-separated list `name` (every existing line joined).
fn append(headers: &mut HeaderMap, name: &HeaderName, item: &[u8]) {
    let mut out = Vec::with_capacity(64 + item.len());
    for v in headers.get_all(name) {
        let s = v.as_bytes().trim_ascii();
        if !s.is_empty() {
            out.extend_from_slice(s);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(item);
    set(headers, name.clone(), out);
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: Vec<u8>) {
    // Built from visible ASCII and values that were valid header values already.
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
        headers.insert(name, v);
    }
}

/// Writes `ip` in its usual text form; IPv6 in brackets and quotes when `forwarded`.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr, forwarded: bool) {
    let v6 = forwarded && ip.is_ipv6();
    if v6 {
        out.extend_from_slice(b"\"[");
    }
    crate::text::push_ip(out, ip);
    if v6 {
        out.extend_from_slice(b"]\"");
    }
}

fn is_visible_ascii(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(u8::is_ascii_graphic)
}

/// RFC 7239 value: a token as is, anything else (`:` of a port) as a quoted string.
fn quoted(out: &mut Vec<u8>, value: &[u8]) {
    let token = value
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b));
    if token {
        out.extend_from_slice(value);
    } else {
        out.push(b'"');
        for &c in value {
            if c == b'"' || c == b'\\' {
                out.push(b'\\');
            }
            out.push(c);
        }
        out.push(b'"');
    }
}

/// IPv4-mapped IPv6 addresses as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_removed() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("x-other", "1"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic abc"),
            ("proxy-connection", "keep-alive"),
            ("x-end-to-end", "kept"),
            ("authorization", "Bearer kept"),
        ]);
        remove_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-end-to-end", "authorization"]);
    }

    #[test]
    fn an_untrusted_peer_cannot_plant_forwarding_addresses() {
        let mut h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ]);
        let hop = Hop {
            peer: Some("203.0.113.9".parse().unwrap()),
            trusted: false,
            proto: "http",
            host: Some(&HeaderValue::from_static("api.example:8080")),
        };
        set_forwarding(&mut h, &hop);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.9;host=\"api.example:8080\";proto=http"
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example:8080");
    }

    #[test]
    fn a_trusted_peers_chain_is_extended_with_the_peer() {
        let mut h = headers(&[
            ("x-forwarded-for", "198.51.100.1, 10.0.0.3"),
            ("x-forwarded-for", "10.0.0.4"),
            ("forwarded", "for=198.51.100.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.example"),
        ]);
        let hop = Hop {
            peer: Some("::ffff:10.0.0.5".parse().unwrap()),
            trusted: true,
            proto: "http",
            host: Some(&HeaderValue::from_static("internal")),
        };
        set_forwarding(&mut h, &hop);
        assert_eq!(
            h["x-forwarded-for"],
            "198.51.100.1, 10.0.0.3, 10.0.0.4, 10.0.0.5"
        );
        assert_eq!(
            h["forwarded"],
            "for=198.51.100.1, for=10.0.0.5;host=internal;proto=http"
        );
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.example");
    }

    #[test]
    fn ipv6_peers_are_bracketed_and_quoted_in_forwarded() {
        let mut h = HeaderMap::new();
        let hop = Hop {
            peer: Some("2001:db8::1".parse().unwrap()),
            trusted: false,
            proto: "https",
            host: None,
        };
        set_forwarding(&mut h, &hop);
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
        assert_eq!(h["forwarded"], "for=\"[2001:db8::1]\";proto=https");
        assert!(!h.contains_key("x-forwarded-host"));
    }
}
