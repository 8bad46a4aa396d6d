//! API keys: stored as SHA-256 digests, never in clear; a presented key is hashed and
//! compared in constant time.
//!
//! The table is a hash map from digest to key, so a lookup is O(1) however many keys there
//! are. The map's own comparison is not constant-time, but it compares digests of what the
//! client sent, which tell an attacker nothing about any stored key (finding a key from its
//! digest is a preimage attack on SHA-256); the final equality check is `subtle`'s
//! constant-time comparison all the same.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Credential, Principal};
use crate::error::ConfigError;

/// The longest API key accepted; longer ones are refused unhashed.
const MAX_KEY_BYTES: usize = 256;

/// One `[[auth.api_keys.keys]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// A name for the key, in logs and as the default subject (`deploy-bot`).
    pub id: String,
    /// `sha256:<64 hex digits>` of the key (`palisade apikey new` prints a key and its hash).
    pub hash: String,
    /// The subject requests with this key act as. Default: `apikey:<id>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subject: String,
    /// The scopes the key grants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The rate-limit tier of requests with this key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tier: String,
}

/// `[auth.api_keys]`: keys accepted in a header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeysConfig {
    /// The request header carrying the key. Default `X-API-Key`.
    pub header: String,
    /// The accepted keys; empty: API keys are off.
    pub keys: Vec<ApiKeyEntry>,
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        Self {
            header: "X-API-Key".to_owned(),
            keys: Vec::new(),
        }
    }
}

/// The `hash` to configure for `key`: `sha256:<hex>`.
///
/// ```
/// let h = palisade::auth::api_key_hash("k-123");
/// assert!(h.starts_with("sha256:") && h.len() == 7 + 64);
/// ```
pub fn api_key_hash(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

#[derive(Debug)]
pub(crate) struct ApiKeys {
    pub(crate) header: http::HeaderName,
    by_digest: HashMap<[u8; 32], Principal>,
}

impl ApiKeys {
    pub(crate) fn new(config: &ApiKeysConfig) -> Result<Option<Self>, ConfigError> {
        if config.keys.is_empty() {
            return Ok(None);
        }
        let header = http::HeaderName::from_bytes(config.header.trim().as_bytes())
            .map_err(|_| ConfigError::new("api_keys.header", "not a header name"))?;
        if header == http::header::AUTHORIZATION || header == http::header::COOKIE {
            return Err(ConfigError::new(
                "api_keys.header",
                "Authorization carries bearer tokens and Cookie is not for API keys; use a header of its own such as X-API-Key",
            ));
        }
        let mut by_digest = HashMap::with_capacity(config.keys.len());
        for (i, k) in config.keys.iter().enumerate() {
            let key = |f: &str| format!("api_keys.keys[{i}].{f}");
            if k.id.is_empty() || k.id.len() > 64 || k.id.chars().any(char::is_control) {
                return Err(ConfigError::new(
                    key("id"),
                    "must be 1 to 64 printable characters",
                ));
            }
            let digest = parse_hash(&k.hash).ok_or_else(|| {
                ConfigError::new(
                    key("hash"),
                    "must be \"sha256:\" and 64 hex digits (`palisade apikey new` prints one); never the key itself",
                )
            })?;
            let subject = if k.subject.is_empty() {
                format!("apikey:{}", k.id)
            } else {
                k.subject.clone()
            };
            let principal = Principal::new(
                subject,
                k.scopes.iter().map(|s| Box::from(s.as_str())).collect(),
                Credential::ApiKey(k.id.as_str().into()),
                (!k.tier.is_empty()).then(|| k.tier.clone()),
            );
            if by_digest.insert(digest, principal).is_some() {
                return Err(ConfigError::new(
                    key("hash"),
                    "the same key is configured twice",
                ));
            }
        }
        Ok(Some(Self { header, by_digest }))
    }

    /// The principal of a presented key, if it is one of ours.
    pub(crate) fn check(&self, presented: &[u8]) -> Option<&Principal> {
        if presented.is_empty() || presented.len() > MAX_KEY_BYTES {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let (stored, principal) = self.by_digest.get_key_value(&digest)?;
        bool::from(stored.ct_eq(&digest)).then_some(principal)
    }
}

fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let hex = s.trim().strip_prefix("sha256:")?.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(entries: Vec<ApiKeyEntry>) -> ApiKeys {
        ApiKeys::new(&ApiKeysConfig {
            header: "X-API-Key".into(),
            keys: entries,
        })
        .unwrap()
        .unwrap()
    }

    fn entry(id: &str, key: &str) -> ApiKeyEntry {
        ApiKeyEntry {
            id: id.into(),
            hash: api_key_hash(key),
            subject: String::new(),
            scopes: vec!["items:write".into()],
            tier: String::new(),
        }
    }

    #[test]
    fn a_configured_key_yields_its_principal_and_others_nothing() {
        let k = keys(vec![entry("ci", "key-one"), entry("bot", "key-two")]);
        let p = k.check(b"key-two").expect("known key");
        assert_eq!(p.subject(), "apikey:bot");
        assert!(p.has_scope("items:write"));
        assert!(k.check(b"key-three").is_none());
        assert!(k.check(b"").is_none());
        assert!(k.check(&[b'k'; 300]).is_none());
    }

    #[test]
    fn hashes_must_be_digests_not_keys() {
        let mut e = entry("ci", "key-one");
        e.hash = "key-one".into();
        let err = ApiKeys::new(&ApiKeysConfig {
            header: "X-API-Key".into(),
            keys: vec![e],
        })
        .unwrap_err();
        assert_eq!(err.key, "api_keys.keys[0].hash");
        assert!(
            parse_hash(&api_key_hash("x").to_uppercase().replace("SHA256", "sha256")).is_some()
        );
    }

    #[test]
    fn authorization_is_not_an_api_key_header() {
        let err = ApiKeys::new(&ApiKeysConfig {
            header: "authorization".into(),
            keys: vec![entry("ci", "k")],
        })
        .unwrap_err();
        assert_eq!(err.key, "api_keys.header");
    }
}
