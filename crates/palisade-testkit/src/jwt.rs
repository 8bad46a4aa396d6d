//! Test keys and token minting for the auth tests: RSA and P-256 key pairs generated once
//! for these suites (`keys/`), their JWKs, and tokens signed with them — including the
//! hostile ones (`alg: none`, HS256 signed with an RSA public key).

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// RSA private key (PKCS#8 PEM), test only.
pub const RSA_PRIVATE: &str = include_str!("../keys/rsa.pem");
/// Its public key (SPKI PEM).
pub const RSA_PUBLIC: &str = include_str!("../keys/rsa.pub.pem");
/// A second RSA private key: a rotated key, or a forger's.
pub const RSA2_PRIVATE: &str = include_str!("../keys/rsa2.pem");
/// Its public key.
pub const RSA2_PUBLIC: &str = include_str!("../keys/rsa2.pub.pem");
/// P-256 private key (PKCS#8 PEM), test only.
pub const EC_PRIVATE: &str = include_str!("../keys/ec.pem");
/// Its public key.
pub const EC_PUBLIC: &str = include_str!("../keys/ec.pub.pem");

const RSA_N: &str = "mX77T1quD7WBVS7He1QRoJw0AwGWtWH8TypPYtbzyJRQ1GJ9eWZ-Pm1YX_O8A8GtXMZaNs3v1Z4WC3VioeX38yi1Hy2MCEnpJU3H7IuzmPG5V4iBD8QYK1-Zir3lo-dVDqMxo-UIXit90OrZJwDSmv7_K0ONuRVpTTSU4lS2uLpdSh5HEDG6XnNZNNLTjOfNt2HzPcaVQwsNCnP9Ns29MeRamgjh9DTuoZcOexLwRSeohAAi8F815E0fcN-IENoX-jiOspyCqPGDipuuUFbT6YBSdy_RDYHgO2wSDVEGQpuRrOSVZscpDflbCmbZ8ctHepHOfSZwvyB0YMzoB7fuwQ";
const RSA2_N: &str = "vQNwvxgRomuUgZtIMUd_BJjr5MiHozULUYdijiEFPUuDiCg12kVD43Ccy_-9ZOjyrW8mzDaUZLpQgbsWm7kO1cTEHeqsadPLofIpLLmPmlUDQ9UiRq4ZANqcCzCLp8J6f0kLO6-S8lJ5_sQP0BD3ndM9jlF96CQoOuD3mGod-hG-3uxrqgj7BZYSpX4XT0jzknrJXz5OGvpjuLEYmsRWBPopQN6r_8gVHFIk2bVEy9nz7mrqZWrmRsRY1xQqJNfA0FlAU1wwSnSA6u6OwLDtERVnpcQb4J2p99JEy7xnLJSbabhi3vGdLalD6KhsIwY0DOSYjyrXtEVzGijZpSX4rQ";
const EC_X: &str = "TNhh63gVvr03oSm-XnKy4QriRjycuKiz7cDxVTQKHZs";
const EC_Y: &str = "cxx8JOwkbNj5aGVvcJ2SsjW_k2SFVu925oBlCRlE1-M";

/// The public JWK of the first RSA key, with `kid`.
pub fn rsa_jwk(kid: &str) -> Value {
    json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": RSA_N, "e": "AQAB"})
}

/// The public JWK of the second RSA key, with `kid`.
pub fn rsa2_jwk(kid: &str) -> Value {
    json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": RSA2_N, "e": "AQAB"})
}

/// The public JWK of the P-256 key, with `kid`.
pub fn ec_jwk(kid: &str) -> Value {
    json!({"kty": "EC", "kid": kid, "use": "sig", "alg": "ES256", "crv": "P-256", "x": EC_X, "y": EC_Y})
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Claims for `sub` valid for an hour, with `scope` (space-separated).
pub fn claims(sub: &str, scope: &str) -> Value {
    json!({"sub": sub, "scope": scope, "iat": now(), "exp": now() + 3600})
}

/// `claims` signed with HS256 and `secret`.
pub fn hs256(secret: &str, claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret.as_bytes()),
        None,
        claims,
    )
}

/// `claims` signed with RS256 and `private_pem`, with an optional `kid`.
pub fn rs256(private_pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("RSA test key");
    sign(Algorithm::RS256, &key, kid, claims)
}

/// `claims` signed with ES256 and the P-256 test key.
pub fn es256(kid: Option<&str>, claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("EC test key");
    sign(Algorithm::ES256, &key, kid, claims)
}

/// An unsigned token: header `{"alg":"none"}`, empty signature.
pub fn alg_none(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

/// The confusion attack: HS256 with the RSA *public* key's PEM as the HMAC secret.
pub fn hs256_with_rsa_public_key(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        None,
        claims,
    )
}

/// `token` with one character of its signature changed.
pub fn tamper(token: &str) -> String {
    let mut t = token.to_owned().into_bytes();
    let i = t.len() - 5;
    t[i] = if t[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(t).expect("ascii")
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign test token")
}

fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_the_rfc_4648_vectors() {
        assert_eq!(b64(b"f"), "Zg");
        assert_eq!(b64(b"fo"), "Zm8");
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64(&[0xfb, 0xff]), "-_8");
    }
}
