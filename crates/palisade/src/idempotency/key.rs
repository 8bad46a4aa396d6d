//! The `Idempotency-Key` request header: parsing, validation, deterministic keys.

use std::fmt;

use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};

/// `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The longest key accepted, in characters.
pub const MAX_KEY_LEN: usize = 255;

/// A valid idempotency key: 1 to 255 printable ASCII characters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(Box<str>);

/// Why an `Idempotency-Key` header was refused (each becomes a 400 problem).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// The header appears more than once.
    Repeated,
    /// Empty, or an empty quoted string.
    Empty,
    /// Longer than [`MAX_KEY_LEN`].
    TooLong,
    /// A character outside printable ASCII, or a malformed quoted string.
    Invalid,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Repeated => "Idempotency-Key must be sent once",
            Self::Empty => "Idempotency-Key must not be empty",
            Self::TooLong => "Idempotency-Key must be at most 255 characters",
            Self::Invalid => {
                "Idempotency-Key must be printable ASCII: a token, or a quoted string (\"...\")"
            }
        })
    }
}

impl std::error::Error for KeyError {}

impl IdempotencyKey {
    /// Reads the request's `Idempotency-Key`: `Ok(None)` when absent.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, KeyError> {
        let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(KeyError::Repeated);
        }
        Self::parse(value.as_bytes()).map(Some)
    }

    /// Parses a header value: a bare token (`pay_abc123`, printable ASCII without spaces) or
    /// the draft's structured-field string (`"pay abc 123"`, with `\"` and `\\` escapes).
    pub fn parse(raw: &[u8]) -> Result<Self, KeyError> {
        let raw = raw.trim_ascii();
        let key = match raw {
            [b'"', inner @ .., b'"'] => unquote(inner)?,
            [b'"', ..] => return Err(KeyError::Invalid),
            _ => {
                if !raw.iter().all(|b| (0x21..=0x7e).contains(b)) {
                    return Err(KeyError::Invalid);
                }
                String::from_utf8(raw.to_vec()).map_err(|_| KeyError::Invalid)?
            }
        };
        match key.len() {
            0 => Err(KeyError::Empty),
            n if n > MAX_KEY_LEN => Err(KeyError::TooLong),
            _ => Ok(Self(key.into())),
        }
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The body of an RFC 8941 string: printable ASCII, `"` and `\` only escaped.
fn unquote(inner: &[u8]) -> Result<String, KeyError> {
    let mut out = String::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&e @ (b'"' | b'\\')) => out.push(char::from(e)),
                _ => return Err(KeyError::Invalid),
            },
            b'"' => return Err(KeyError::Invalid),
            0x20..=0x7e => out.push(char::from(b)),
            _ => return Err(KeyError::Invalid),
        }
    }
    Ok(out)
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyKey").field(&self.0).finish()
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A deterministic key from an operation's name and parameters (the seeds'
/// `generate_idempotency_key`): the same inputs always give the same 64 hex characters, and
/// parts are length-prefixed so `("ab", "c")` and `("a", "bc")` differ.
///
/// ```
/// use palisade::idempotency::deterministic_key;
/// let key = deterministic_key("create_payment", ["user-42", "1999", "EUR"]);
/// assert_eq!(key.len(), 64);
/// assert_eq!(key, deterministic_key("create_payment", ["user-42", "1999", "EUR"]));
/// assert_ne!(key, deterministic_key("create_payment", ["user-42", "1999", "USD"]));
/// ```
pub fn deterministic_key<I, P>(operation: &str, parts: I) -> String
where
    I: IntoIterator<Item = P>,
    P: AsRef<[u8]>,
{
    let mut h = Sha256::new();
    super::hash_field(&mut h, operation.as_bytes());
    for p in parts {
        super::hash_field(&mut h, p.as_ref());
    }
    super::hex(&h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_quoted_strings() {
        let ok = |raw: &str| IdempotencyKey::parse(raw.as_bytes()).map(|k| k.as_str().to_owned());
        assert_eq!(ok("pay_abc123").unwrap(), "pay_abc123");
        assert_eq!(ok("  pay_abc123 ").unwrap(), "pay_abc123");
        assert_eq!(
            ok("\"8e03978e-40d5-43e8-bc93-6894a57f9324\"").unwrap(),
            "8e03978e-40d5-43e8-bc93-6894a57f9324"
        );
        assert_eq!(
            ok(r#""with space and \"quote\" and \\""#).unwrap(),
            r#"with space and "quote" and \"#
        );
        assert_eq!(ok(&"k".repeat(255)).unwrap().len(), 255);
    }

    #[test]
    fn bad_keys_say_why() {
        let err = |raw: &[u8]| IdempotencyKey::parse(raw).unwrap_err();
        assert_eq!(err(b""), KeyError::Empty);
        assert_eq!(err(b"\"\""), KeyError::Empty);
        assert_eq!(err("k".repeat(256).as_bytes()), KeyError::TooLong);
        assert_eq!(err(&vec![b'k'; 300]), KeyError::TooLong);
        assert_eq!(err(b"bad\x01key"), KeyError::Invalid);
        assert_eq!(err(b"two words"), KeyError::Invalid);
        assert_eq!(err("caf\u{e9}".as_bytes()), KeyError::Invalid);
        assert_eq!(err(b"\"unterminated"), KeyError::Invalid);
        assert_eq!(err(b"\"bad \\x escape\""), KeyError::Invalid);
        assert_eq!(err(b"\"inner \" quote\""), KeyError::Invalid);
        let mut headers = HeaderMap::new();
        assert_eq!(IdempotencyKey::from_headers(&headers), Ok(None));
        headers.append(IDEMPOTENCY_KEY, "a".parse().unwrap());
        assert!(IdempotencyKey::from_headers(&headers).unwrap().is_some());
        headers.append(IDEMPOTENCY_KEY, "b".parse().unwrap());
        assert_eq!(
            IdempotencyKey::from_headers(&headers),
            Err(KeyError::Repeated)
        );
    }

    #[test]
    fn deterministic_keys_are_unambiguous() {
        assert_ne!(
            deterministic_key("op", ["ab", "c"]),
            deterministic_key("op", ["a", "bc"])
        );
        assert_ne!(
            deterministic_key("op", ["x"]),
            deterministic_key("po", ["x"])
        );
    }
}
