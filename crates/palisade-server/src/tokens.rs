//! Development credentials: `palisade token issue` mints a JWT the configured `[auth.jwt]`
//! accepts; `palisade apikey new` makes an API key and the hash to configure for it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use palisade::auth::{JwtAlgorithm, api_key_hash};
use serde_json::{Value, json};

use crate::config::Settings;

/// What goes into a token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `sub`.
    pub subject: String,
    /// `scope`, joined with spaces.
    pub scopes: Vec<String>,
    /// `exp` − `iat`.
    pub ttl: Duration,
    /// The rate-limit tier claim, if any.
    pub tier: Option<String>,
    /// `kid` in the header (for a JWKS).
    pub key_id: Option<String>,
    /// The PEM private key, for the asymmetric algorithms.
    pub private_key_pem: Option<Vec<u8>>,
}

/// A token for `req`, signed as `[auth.jwt]` expects, with its `iss` and `aud`.
pub fn issue(settings: &Settings, req: &TokenRequest) -> Result<String, String> {
    let jwt = settings
        .auth
        .jwt
        .as_ref()
        .ok_or("[auth.jwt] is not configured; there is nothing to sign for")?;
    if req.subject.trim().is_empty() {
        return Err("--sub must not be empty".into());
    }
    let alg = jwt.algorithm;
    let key = if alg.is_hmac() {
        if req.private_key_pem.is_some() {
            return Err(format!(
                "{:?} signs with auth.jwt.secret; --private-key is for asymmetric algorithms",
                alg.algorithm()
            ));
        }
        EncodingKey::from_secret(jwt.secret.as_bytes())
    } else {
        let pem = req.private_key_pem.as_deref().ok_or_else(|| {
            format!(
                "{:?} needs the private key: --private-key <PEM file>",
                alg.algorithm()
            )
        })?;
        match alg {
            JwtAlgorithm::Es256 | JwtAlgorithm::Es384 => EncodingKey::from_ec_pem(pem),
            JwtAlgorithm::EdDsa => EncodingKey::from_ed_pem(pem),
            _ => EncodingKey::from_rsa_pem(pem),
        }
        .map_err(|e| {
            format!(
                "the private key is not usable for {:?}: {e}",
                alg.algorithm()
            )
        })?
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970")?
        .as_secs();
    let mut claims = json!({
        "sub": req.subject,
        "iat": now,
        "nbf": now,
        "exp": now + req.ttl.as_secs(),
    });
    if !req.scopes.is_empty() {
        claims["scope"] = Value::from(req.scopes.join(" "));
    }
    if !jwt.issuer.is_empty() {
        claims["iss"] = Value::from(jwt.issuer.as_str());
    }
    if !jwt.audience.is_empty() {
        claims["aud"] = Value::from(jwt.audience.as_str());
    }
    if let Some(tier) = &req.tier {
        claims[jwt.tier_claim.as_str()] = Value::from(tier.as_str());
    }
    let mut header = Header::new(alg.algorithm());
    header.kid.clone_from(&req.key_id);
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| format!("signing failed: {e}"))
}

/// A new random API key (`pk_` and 43 URL-safe characters: 256 bits from the OS) and the
/// `hash` to put in `[[auth.api_keys.keys]]`.
pub fn new_api_key() -> Result<(String, String), String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut key = String::from("pk_");
    let mut acc = 0u32;
    let mut bits = 0;
    for b in bytes {
        acc = acc << 8 | u32::from(b);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            key.push(char::from(A[(acc >> bits & 63) as usize]));
        }
    }
    if bits > 0 {
        key.push(char::from(A[(acc << (6 - bits) & 63) as usize]));
    }
    let hash = api_key_hash(&key);
    Ok((key, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_api_keys_are_random_and_hash_to_what_the_config_expects() {
        let (a, ha) = new_api_key().unwrap();
        let (b, _) = new_api_key().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 43);
        assert_eq!(ha, api_key_hash(&a));
    }
}
