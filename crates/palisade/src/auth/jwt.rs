//! JWT bearer tokens: one pinned algorithm, keys from a secret, a PEM file or a JWKS.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use super::jwks::{Jwks, JwksFetch};
use crate::{duration::ConfigDuration, error::ConfigError};

/// The signature algorithm a deployment accepts: exactly one, so a token can never choose
/// how it is checked (`alg: none` and HS/RS confusion are refused by construction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret of at least 32 bytes.
    #[default]
    #[serde(rename = "HS256")]
    Hs256,
    /// HMAC with SHA-384 and a shared secret of at least 48 bytes.
    #[serde(rename = "HS384")]
    Hs384,
    /// HMAC with SHA-512 and a shared secret of at least 64 bytes.
    #[serde(rename = "HS512")]
    Hs512,
    /// RSASSA-PKCS1-v1_5 with SHA-256 and an RSA public key.
    #[serde(rename = "RS256")]
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    #[serde(rename = "RS384")]
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    #[serde(rename = "RS512")]
    Rs512,
    /// RSASSA-PSS with SHA-256.
    #[serde(rename = "PS256")]
    Ps256,
    /// ECDSA on P-256 with SHA-256.
    #[serde(rename = "ES256")]
    Es256,
    /// ECDSA on P-384 with SHA-384.
    #[serde(rename = "ES384")]
    Es384,
    /// Ed25519.
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl JwtAlgorithm {
    /// The `jsonwebtoken` algorithm.
    pub fn algorithm(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::Hs384 => Algorithm::HS384,
            Self::Hs512 => Algorithm::HS512,
            Self::Rs256 => Algorithm::RS256,
            Self::Rs384 => Algorithm::RS384,
            Self::Rs512 => Algorithm::RS512,
            Self::Ps256 => Algorithm::PS256,
            Self::Es256 => Algorithm::ES256,
            Self::Es384 => Algorithm::ES384,
            Self::EdDsa => Algorithm::EdDSA,
        }
    }

    /// HMAC: a shared secret rather than a public key.
    pub fn is_hmac(self) -> bool {
        matches!(self, Self::Hs256 | Self::Hs384 | Self::Hs512)
    }

    /// The shortest accepted HMAC secret: the hash size (RFC 7518 §3.2).
    fn min_secret_bytes(self) -> usize {
        match self {
            Self::Hs384 => 48,
            Self::Hs512 => 64,
            _ => 32,
        }
    }
}

/// `[auth.jwt]`: how bearer tokens are verified. See the [module docs](super).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// The one accepted algorithm (`HS256`, `RS256`, `ES256`, …). Default `HS256`.
    pub algorithm: JwtAlgorithm,
    /// The shared secret for `HS*`, at least as long as the hash (32 bytes for `HS256`).
    pub secret: String,
    /// A PEM public key (RSA, EC or Ed25519) for the asymmetric algorithms.
    pub public_key_file: Option<PathBuf>,
    /// A JWKS URL for the asymmetric algorithms; keys are chosen by `kid`.
    pub jwks_url: String,
    /// How often the JWKS is fetched again. Default 5 minutes.
    pub jwks_refresh: ConfigDuration,
    /// A token whose `kid` is unknown fetches the JWKS at once (key rotation), but not more
    /// often than this. Default 30 seconds.
    pub jwks_cooldown: ConfigDuration,
    /// The required `iss`; empty: not checked.
    pub issuer: String,
    /// The required `aud` (one of the token's); empty: not checked.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`. Default 30 seconds.
    pub leeway: ConfigDuration,
    /// The claim that names the client's rate-limit tier, if present. Default `tier`.
    pub tier_claim: String,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("algorithm", &self.algorithm)
            .field(
                "secret",
                &if self.secret.is_empty() {
                    ""
                } else {
                    "********"
                },
            )
            .field("public_key_file", &self.public_key_file)
            .field("jwks_url", &self.jwks_url)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            algorithm: JwtAlgorithm::Hs256,
            secret: String::new(),
            public_key_file: None,
            jwks_url: String::new(),
            jwks_refresh: ConfigDuration(Duration::from_secs(300)),
            jwks_cooldown: ConfigDuration(Duration::from_secs(30)),
            issuer: String::new(),
            audience: String::new(),
            leeway: ConfigDuration(Duration::from_secs(30)),
            tier_claim: "tier".to_owned(),
        }
    }
}

/// Tokens longer than this are refused before any parsing.
pub(crate) const MAX_TOKEN_BYTES: usize = 8 << 10;
/// Subjects longer than this (or with control characters) are refused: they go into logs
/// and keys.
const MAX_SUBJECT_BYTES: usize = 256;

/// Why a token was refused; the text goes into the problem's `detail` and the
/// `WWW-Authenticate` `error_description`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwtError {
    Malformed,
    TooLarge,
    Algorithm,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    MissingClaim,
    Subject,
    UnknownKey,
    KeysUnavailable,
}

impl JwtError {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::Malformed => "The token is malformed.",
            Self::TooLarge => "The token is too large.",
            Self::Algorithm => "The token is not signed with the accepted algorithm.",
            Self::Signature => "The token's signature is invalid.",
            Self::Expired => "The token has expired.",
            Self::NotYetValid => "The token is not valid yet.",
            Self::Issuer => "The token's issuer is not accepted.",
            Self::Audience => "The token is not meant for this audience.",
            Self::MissingClaim => "The token lacks a required claim (exp, sub, iss or aud).",
            Self::Subject => "The token's subject is empty, too long or not printable.",
            Self::UnknownKey => "The token's signing key is unknown.",
            Self::KeysUnavailable => "The signing keys are unavailable; try again shortly.",
        }
    }
}

/// The claims a verified token yields.
#[derive(Debug)]
pub(crate) struct VerifiedToken {
    pub(crate) subject: String,
    pub(crate) scopes: Vec<Box<str>>,
    pub(crate) tier: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    /// OAuth 2.0 (RFC 8693 §4.2): space-separated.
    #[serde(default)]
    scope: Option<Scopes>,
    /// Azure AD / Okta style.
    #[serde(default)]
    scp: Option<Scopes>,
    #[serde(default)]
    scopes: Option<Scopes>,
    #[serde(flatten)]
    rest: HashMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Scopes {
    Spaced(String),
    List(Vec<String>),
}

impl Scopes {
    fn push_into(self, out: &mut Vec<Box<str>>) {
        match self {
            Self::Spaced(s) => out.extend(s.split_ascii_whitespace().map(Box::from)),
            Self::List(l) => out.extend(l.into_iter().map(String::into_boxed_str)),
        }
    }
}

enum Keys {
    Static(Box<DecodingKey>),
    Jwks(Arc<Jwks>),
}

/// Verifies bearer tokens against one configuration.
pub(crate) struct JwtVerifier {
    algorithm: JwtAlgorithm,
    keys: Keys,
    validation: Validation,
    tier_claim: Box<str>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The outcome of a synchronous check: done, or the JWKS must be fetched first.
pub(crate) enum Checked {
    Done(Result<VerifiedToken, JwtError>),
    NeedKeys(Arc<Jwks>),
}

impl JwtVerifier {
    /// Checks `config` and loads its static key; errors name keys under `jwt.`.
    pub(crate) fn new(
        config: &JwtConfig,
        fetch: Option<Arc<dyn JwksFetch>>,
    ) -> Result<Self, ConfigError> {
        let key = |k: &str| format!("jwt.{k}");
        let alg = config.algorithm;
        let keys = if alg.is_hmac() {
            if config.public_key_file.is_some() || !config.jwks_url.is_empty() {
                return Err(ConfigError::new(
                    key("algorithm"),
                    "HS* algorithms use `secret`; `public_key_file` and `jwks_url` are for RS*, PS*, ES* and EdDSA",
                ));
            }
            if config.secret.len() < alg.min_secret_bytes() {
                return Err(ConfigError::new(
                    key("secret"),
                    format!(
                        "must be at least {} bytes for {:?}; generate one with `openssl rand -base64 48`",
                        alg.min_secret_bytes(),
                        alg.algorithm()
                    ),
                ));
            }
            Keys::Static(Box::new(DecodingKey::from_secret(config.secret.as_bytes())))
        } else {
            if !config.secret.is_empty() {
                return Err(ConfigError::new(
                    key("secret"),
                    "a secret is only for HS* algorithms; asymmetric algorithms use `public_key_file` or `jwks_url`",
                ));
            }
            match (&config.public_key_file, config.jwks_url.is_empty()) {
                (Some(path), true) => Keys::Static(Box::new(load_pem(alg, path)?)),
                (None, false) => {
                    let fetch = fetch.ok_or_else(|| {
                        ConfigError::new(key("jwks_url"), "no JWKS fetcher was given to the layer")
                    })?;
                    if config.jwks_cooldown.0.is_zero() || config.jwks_refresh.0.is_zero() {
                        return Err(ConfigError::new(
                            key("jwks_refresh"),
                            "jwks_refresh and jwks_cooldown must be greater than 0",
                        ));
                    }
                    Keys::Jwks(Arc::new(Jwks::new(
                        alg,
                        fetch,
                        config.jwks_refresh.0,
                        config.jwks_cooldown.0,
                    )))
                }
                (Some(_), false) => {
                    return Err(ConfigError::new(
                        key("jwks_url"),
                        "set either `public_key_file` or `jwks_url`, not both",
                    ));
                }
                (None, true) => {
                    return Err(ConfigError::new(
                        key("public_key_file"),
                        format!(
                            "{:?} needs `public_key_file` or `jwks_url`",
                            alg.algorithm()
                        ),
                    ));
                }
            }
        };
        if config.leeway.0 > Duration::from_secs(300) {
            return Err(ConfigError::new(key("leeway"), "must be at most 5 minutes"));
        }
        let mut validation = Validation::new(alg.algorithm());
        validation.leeway = config.leeway.0.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if config.issuer.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&[&config.issuer]);
            required.push("iss");
        }
        if config.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&config.audience]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Ok(Self {
            algorithm: alg,
            keys,
            validation,
            tier_claim: config.tier_claim.as_str().into(),
        })
    }

    /// The JWKS behind this verifier, if any (for a first fetch at startup).
    pub(crate) fn jwks(&self) -> Option<&Arc<Jwks>> {
        match &self.keys {
            Keys::Jwks(j) => Some(j),
            Keys::Static(_) => None,
        }
    }

    /// Verifies `token` with the keys at hand.
    pub(crate) fn check(&self, token: &str) -> Checked {
        if token.len() > MAX_TOKEN_BYTES {
            return Checked::Done(Err(JwtError::TooLarge));
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Checked::Done(Err(JwtError::Malformed));
        };
        if header.alg != self.algorithm.algorithm() {
            return Checked::Done(Err(JwtError::Algorithm));
        }
        match &self.keys {
            Keys::Static(key) => Checked::Done(self.verify(token, key)),
            Keys::Jwks(jwks) => match jwks.key(header.kid.as_deref()) {
                Ok(key) => Checked::Done(self.verify(token, &key)),
                Err(super::jwks::Missing::Stale) => Checked::NeedKeys(jwks.clone()),
                Err(super::jwks::Missing::Unknown) => Checked::Done(Err(JwtError::UnknownKey)),
                Err(super::jwks::Missing::Unavailable) => {
                    Checked::Done(Err(JwtError::KeysUnavailable))
                }
            },
        }
    }

    fn verify(&self, token: &str, key: &DecodingKey) -> Result<VerifiedToken, JwtError> {
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidKeyFormat
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidRsaKey(_) => JwtError::Signature,
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        JwtError::Algorithm
                    }
                    ErrorKind::ExpiredSignature => JwtError::Expired,
                    ErrorKind::ImmatureSignature => JwtError::NotYetValid,
                    ErrorKind::InvalidIssuer => JwtError::Issuer,
                    ErrorKind::InvalidAudience => JwtError::Audience,
                    ErrorKind::MissingRequiredClaim(_) => JwtError::MissingClaim,
                    _ => JwtError::Malformed,
                }
            })?;
        let mut claims = data.claims;
        let subject = claims.sub.take().unwrap_or_default();
        if subject.is_empty()
            || subject.len() > MAX_SUBJECT_BYTES
            || subject.chars().any(char::is_control)
        {
            return Err(JwtError::Subject);
        }
        let mut scopes = Vec::new();
        for s in [claims.scope, claims.scp, claims.scopes]
            .into_iter()
            .flatten()
        {
            s.push_into(&mut scopes);
        }
        let tier = match claims.rest.remove(&*self.tier_claim) {
            Some(serde_json::Value::String(t)) if !t.is_empty() && t.len() <= 64 => Some(t),
            _ => None,
        };
        Ok(VerifiedToken {
            subject,
            scopes,
            tier,
        })
    }
}

fn load_pem(alg: JwtAlgorithm, path: &std::path::Path) -> Result<DecodingKey, ConfigError> {
    let k = "jwt.public_key_file";
    let pem = std::fs::read(path)
        .map_err(|e| ConfigError::new(k, format!("cannot read {}: {e}", path.display())))?;
    let key = match alg {
        JwtAlgorithm::Rs256 | JwtAlgorithm::Rs384 | JwtAlgorithm::Rs512 | JwtAlgorithm::Ps256 => {
            DecodingKey::from_rsa_pem(&pem)
        }
        JwtAlgorithm::Es256 | JwtAlgorithm::Es384 => DecodingKey::from_ec_pem(&pem),
        JwtAlgorithm::EdDsa => DecodingKey::from_ed_pem(&pem),
        JwtAlgorithm::Hs256 | JwtAlgorithm::Hs384 | JwtAlgorithm::Hs512 => {
            unreachable!("HMAC keys are secrets")
        }
    };
    key.map_err(|e| {
        ConfigError::new(
            k,
            format!(
                "{} is not a PEM public key for {:?}: {e}",
                path.display(),
                alg.algorithm()
            ),
        )
    })
}
