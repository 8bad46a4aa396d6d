//! Who a request counts against: the client key, digested without allocating.

use std::{hash::Hasher as _, net::IpAddr};

use http::{HeaderName, Request};
use siphasher::sip128::{Hasher128, SipHasher13};

use crate::{context::RequestContext, error::ConfigError};

/// One part of a client key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client IP as resolved behind trusted proxies (`"ip"`). IPv6 addresses are grouped
    /// by their prefix (see [`ClientKey::ipv6_prefix`]).
    Ip,
    /// The authenticated subject (`"subject"`), set by an auth layer.
    Subject,
    /// The API key header's value (`"api_key"`), digested, never kept.
    ApiKey,
    /// A named request header (`"header:X-Tenant"`).
    Header(HeaderName),
}

impl KeyPart {
    /// Parses `ip`, `subject`, `api_key` or `header:<name>`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "ip" => Ok(Self::Ip),
            "subject" => Ok(Self::Subject),
            "api_key" => Ok(Self::ApiKey),
            _ => match s.strip_prefix("header:") {
                Some(name) => HeaderName::try_from(name.trim())
                    .map(Self::Header)
                    .map_err(|_| format!("{name:?} is not a header name")),
                None => Err(format!(
                    "{s:?} is not a key part; expected \"ip\", \"subject\", \"api_key\" or \"header:<name>\""
                )),
            },
        }
    }
}

/// How the client key is built: the parts, combined. A part the request lacks (no subject
/// yet, no such header) is replaced by the client IP, so anonymous requests never share one
/// bucket.
#[derive(Debug, Clone)]
pub struct ClientKey {
    parts: Box<[KeyPart]>,
    api_key_header: HeaderName,
    /// IPv6 clients are keyed by this many leading bits (default 64: one customer network).
    ipv6_prefix: u8,
}

/// A 128-bit digest of a client key within one policy. The same on every instance (fixed
/// SipHash keys), so it can name shared Redis keys; raw values (API keys) are never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest(pub(crate) u128);

impl KeyDigest {
    /// A digest from raw bits: for custom stores, tests and benchmarks. Requests get theirs
    /// from the limiter's [`ClientKey`].
    pub fn new(bits: u128) -> Self {
        Self(bits)
    }

    /// 64 bits for in-memory maps.
    pub(crate) fn short(self) -> u64 {
        (self.0 as u64) ^ ((self.0 >> 64) as u64)
    }
}

// Fixed, arbitrary keys: digests must agree across instances. Targeting another client's
// bucket would need a 128-bit (or, in memory, 64-bit) second preimage.
const SIP_K0: u64 = 0x7061_6c69_7361_6465; // "palisade"
const SIP_K1: u64 = 0x7261_7465_6c69_6d74; // "ratelimt"

impl ClientKey {
    /// A key from `parts` (`["ip"]`, `["subject"]`, `["header:x-tenant", "ip"]`).
    pub fn new<I, S>(parts: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let parts = parts
            .into_iter()
            .map(|p| KeyPart::parse(p.as_ref()).map_err(|m| ConfigError::new("key", m)))
            .collect::<Result<Box<[_]>, _>>()?;
        if parts.is_empty() {
            return Err(ConfigError::new(
                "key",
                "needs at least one part, e.g. [\"ip\"]",
            ));
        }
        Ok(Self {
            parts,
            api_key_header: HeaderName::from_static("x-api-key"),
            ipv6_prefix: 64,
        })
    }

    /// The header read by the `api_key` part. Default `X-API-Key`.
    pub fn api_key_header(mut self, name: HeaderName) -> Self {
        self.api_key_header = name;
        self
    }

    /// IPv6 prefix length, 1 to 128. Default 64.
    pub fn ipv6_prefix(mut self, bits: u8) -> Result<Self, ConfigError> {
        if !(1..=128).contains(&bits) {
            return Err(ConfigError::new("ipv6_prefix", "must be between 1 and 128"));
        }
        self.ipv6_prefix = bits;
        Ok(self)
    }

    /// The digest of this request's key under `policy_id`.
    pub(crate) fn digest<B>(
        &self,
        policy_id: u64,
        req: &Request<B>,
        ctx: Option<&RequestContext>,
    ) -> KeyDigest {
        let mut h = SipHasher13::new_with_keys(SIP_K0, SIP_K1);
        h.write_u64(policy_id);
        for part in &*self.parts {
            let value: Option<&[u8]> = match part {
                KeyPart::Ip => None,
                KeyPart::Subject => ctx.and_then(|c| c.subject()).map(str::as_bytes),
                KeyPart::ApiKey => req
                    .headers()
                    .get(&self.api_key_header)
                    .map(|v| v.as_bytes()),
                KeyPart::Header(name) => req.headers().get(name).map(|v| v.as_bytes()),
            };
            match value {
                Some(v) => {
                    h.write_u8(1);
                    h.write_u64(v.len() as u64);
                    h.write(v);
                }
                None => self.write_ip(&mut h, ctx.and_then(RequestContext::client_ip)),
            }
        }
        KeyDigest(h.finish128().as_u128())
    }

    fn write_ip(&self, h: &mut SipHasher13, ip: Option<IpAddr>) {
        match ip.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => {
                h.write_u8(4);
                h.write(&v4.octets());
            }
            Some(IpAddr::V6(v6)) => {
                let bits = u128::from(v6);
                let mask = u128::MAX << (128 - u32::from(self.ipv6_prefix));
                h.write_u8(6);
                h.write(&(bits & mask).to_be_bytes());
            }
            // No peer address (a service called without a connection): one shared key.
            None => h.write_u8(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_id::RequestId;

    fn digest(
        key: &ClientKey,
        headers: &[(&str, &str)],
        ip: Option<&str>,
        sub: Option<&str>,
    ) -> u128 {
        let mut req = http::Request::builder();
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(()).unwrap();
        let ctx = RequestContext::build(
            RequestId::generate(),
            None,
            ip.map(|i| i.parse().unwrap()),
            false,
        );
        if let Some(s) = sub {
            ctx.set_subject(s);
        }
        key.digest(9, &req, Some(&ctx)).0
    }

    #[test]
    fn ipv6_clients_are_grouped_by_prefix_and_v4_mapped_is_v4() {
        let key = ClientKey::new(["ip"]).unwrap();
        let a = digest(&key, &[], Some("2001:db8:1:2::1"), None);
        assert_eq!(a, digest(&key, &[], Some("2001:db8:1:2:ffff::9"), None));
        assert_ne!(a, digest(&key, &[], Some("2001:db8:1:3::1"), None));
        assert_eq!(
            digest(&key, &[], Some("::ffff:10.0.0.1"), None),
            digest(&key, &[], Some("10.0.0.1"), None)
        );
        let exact = ClientKey::new(["ip"]).unwrap().ipv6_prefix(128).unwrap();
        assert_ne!(
            digest(&exact, &[], Some("2001:db8::1"), None),
            digest(&exact, &[], Some("2001:db8::2"), None)
        );
    }

    #[test]
    fn missing_parts_fall_back_to_the_client_ip() {
        let key = ClientKey::new(["subject"]).unwrap();
        let anon_a = digest(&key, &[], Some("10.0.0.1"), None);
        let anon_b = digest(&key, &[], Some("10.0.0.2"), None);
        assert_ne!(anon_a, anon_b);
        let alice_a = digest(&key, &[], Some("10.0.0.1"), Some("alice"));
        assert_eq!(alice_a, digest(&key, &[], Some("10.0.0.2"), Some("alice")));
        assert_ne!(alice_a, anon_a);
        let tenant = ClientKey::new(["header:x-tenant", "ip"]).unwrap();
        assert_ne!(
            digest(&tenant, &[("x-tenant", "a")], Some("10.0.0.1"), None),
            digest(&tenant, &[("x-tenant", "b")], Some("10.0.0.1"), None)
        );
    }

    #[test]
    fn bad_parts_are_named() {
        assert!(
            ClientKey::new(["cookie"])
                .unwrap_err()
                .message
                .contains("\"cookie\"")
        );
        assert!(ClientKey::new(Vec::<String>::new()).is_err());
        assert!(ClientKey::new(["header:bad header"]).is_err());
    }
}
