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
/// a WebSocket upgrade needs is put back by the caller.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
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
    for name in [
        &CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
        &PROXY_AUTHORIZATION,
        &PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
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
    /// The host the client asked for.
    pub(crate) host: Option<&'a str>,
}

/// Sets `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` for the
/// upstream: from a trusted peer its chain plus the peer, else the peer alone.
pub(crate) fn set_forwarding(headers: &mut HeaderMap, hop: &Hop<'_>) {
    if !hop.trusted {
        headers.remove(&X_FORWARDED_FOR);
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&X_FORWARDED_HOST);
        headers.remove(FORWARDED);
    }
    if let Some(peer) = hop.peer {
        let ip = canonical(peer);
        let xff = append_list(headers, &X_FORWARDED_FOR, &ip.to_string());
        set(headers, X_FORWARDED_FOR.clone(), &xff);
        let mut element = match ip {
            IpAddr::V4(v4) => format!("for={v4}"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
        };
        if let Some(host) = hop.host.filter(|h| is_visible_ascii(h)) {
            element.push_str(";host=");
            quoted(&mut element, host);
        }
        element.push_str(";proto=");
        element.push_str(hop.proto);
        let forwarded = append_list(headers, &FORWARDED, &element);
        set(headers, FORWARDED, &forwarded);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(hop.proto),
        );
    }
    if !headers.contains_key(&X_FORWARDED_HOST) {
        if let Some(v) = hop.host.and_then(|h| HeaderValue::from_str(h).ok()) {
            headers.insert(X_FORWARDED_HOST.clone(), v);
        }
    }
}

/// The existing values of `name` (every line, comma-joined) followed by `item`.
fn append_list(headers: &HeaderMap, name: &HeaderName, item: &str) -> String {
    let mut out = String::new();
    for v in headers.get_all(name) {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                out.push_str(s);
                out.push_str(", ");
            }
        }
    }
    out.push_str(item);
    out
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    // Built from visible ASCII and values that were valid header values already.
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

fn is_visible_ascii(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

/// RFC 7239 value: a token as is, anything else (`:` of a port) as a quoted string.
fn quoted(out: &mut String, value: &str) {
    let token = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        out.push_str(value);
    } else {
        out.push('"');
        for c in value.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
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
            host: Some("api.example:8080"),
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
            host: Some("internal"),
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
