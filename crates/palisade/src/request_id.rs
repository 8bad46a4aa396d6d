//! Request ids: validation of incoming `X-Request-ID` values and generation of fresh ones.
//!
//! An incoming id is kept when it is 1–128 characters from `[A-Za-z0-9._:-]`; anything else
//! (empty, too long, spaces, quotes, non-ASCII, several headers) is replaced by a fresh id.
//! Fresh ids are **UUID version 7** (RFC 9562): 48 bits of Unix milliseconds then 74 random
//! bits, so ids sort by creation time in logs. The random bits come from a thread-local
//! user-space generator (`fastrand`), not a syscall per request: request ids are correlation
//! handles, not secrets, and must never be used as credentials.
//!
//! The layer that assigns ids and sets the response headers is
//! [`RequestContextLayer`](crate::context::RequestContextLayer).
//!
//! ```
//! use palisade::request_id::RequestId;
//!
//! assert!(RequestId::parse("req-42.a:b_c").is_some());
//! assert!(RequestId::parse("has space").is_none());
//! let fresh = RequestId::generate();
//! assert_eq!(fresh.as_str().len(), 36);
//! assert_eq!(&fresh.as_str()[14..15], "7"); // the UUID version nibble
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;

/// The request-id header name.
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
/// The correlation-id header name.
pub const X_CORRELATION_ID: http::HeaderName = http::HeaderName::from_static("x-correlation-id");

/// The longest id accepted from a client.
pub const MAX_LEN: usize = 128;

/// A validated request (or correlation) id. See the [module docs](self).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(Repr);

/// Generated ids live inline (no allocation until a header is built); incoming ids keep the
/// client's header value, which shares the connection's read buffer.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Generated([u8; 36]),
    Incoming(HeaderValue),
}

impl RequestId {
    /// Accepts `value` if it is 1–128 characters from `[A-Za-z0-9._:-]`.
    pub fn parse(value: &str) -> Option<Self> {
        Self::from_header(&HeaderValue::from_str(value).ok()?)
    }

    /// Accepts an incoming header value under the same rule as [`parse`](Self::parse), without
    /// copying it.
    pub fn from_header(value: &HeaderValue) -> Option<Self> {
        let bytes = value.as_bytes();
        if bytes.is_empty() || bytes.len() > MAX_LEN || !bytes.iter().all(|&b| is_id_byte(b)) {
            return None;
        }
        Some(Self(Repr::Incoming(value.clone())))
    }

    /// A fresh UUIDv7 id.
    pub fn generate() -> Self {
        let mut buf = [0u8; 36];
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let random = fastrand::u128(..);
        write_uuid_v7(millis, random, &mut buf);
        Self(Repr::Generated(buf))
    }

    /// The id as text (always ASCII).
    pub fn as_str(&self) -> &str {
        // Validated as ASCII at construction.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The id's ASCII bytes, without the UTF-8 check of [`as_str`](Self::as_str).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Generated(b) => b.as_slice(),
            Repr::Incoming(v) => v.as_bytes(),
        }
    }

    /// The id as a header value, ready to insert.
    pub fn to_header_value(&self) -> HeaderValue {
        match &self.0 {
            // Only hex digits and dashes: always a valid header value.
            Repr::Generated(b) => HeaderValue::from_bytes(b).expect("uuid is a valid header value"),
            Repr::Incoming(v) => v.clone(),
        }
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestId({})", self.as_str())
    }
}

const fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

/// Writes a UUIDv7 (RFC 9562 §5.7) in its 8-4-4-4-12 text form.
fn write_uuid_v7(unix_ms: u64, random: u128, out: &mut [u8; 36]) {
    use crate::text::HEX;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&random.to_be_bytes()[..10]);
    bytes[6] = (bytes[6] & 0x0f) | 0x70; // version 7
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 9562 variant
    let mut pos = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[pos] = b'-';
            pos += 1;
        }
        out[pos] = HEX[(b >> 4) as usize];
        out[pos + 1] = HEX[(b & 0xf) as usize];
        pos += 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_allowed_characters_up_to_128_are_kept() {
        assert!(RequestId::parse("a").is_some());
        assert!(RequestId::parse(&"x".repeat(128)).is_some());
        assert!(RequestId::parse("AZaz09._:-").is_some());
    }

    #[test]
    fn empty_oversized_and_odd_ids_are_refused() {
        for bad in ["", " ", "a b", "a\"b", "a/b", "é", "a\tb", "<script>"] {
            assert!(RequestId::parse(bad).is_none(), "{bad:?} accepted");
        }
        assert!(RequestId::parse(&"x".repeat(129)).is_none());
        let obs = HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap();
        assert!(RequestId::from_header(&obs).is_none());
    }

    #[test]
    fn generated_ids_are_version_7_variant_10_and_distinct() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        let s = a.as_str();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "7");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
        assert!(RequestId::parse(s).is_some());
    }

    #[test]
    fn the_timestamp_prefix_encodes_milliseconds_big_endian() {
        let mut out = [0u8; 36];
        write_uuid_v7(0x0123_4567_89ab, 0, &mut out);
        assert_eq!(&out[..13], b"01234567-89ab");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "01234567-89ab-7000-8000-000000000000"
        );
    }
}
