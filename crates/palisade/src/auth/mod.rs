//! Authentication and authorization: JWT bearer tokens and API keys, scopes per route.
//!
//! A request may carry a bearer token (`Authorization: Bearer <jwt>`) or an API key (in
//! `X-API-Key`, or the configured header). Whatever it carries is checked, on every route:
//!
//! - **Invalid credentials → `401`** problem with `WWW-Authenticate` (RFC 6750
//!   `error="invalid_token"` and a description: expired, not yet valid, wrong issuer, wrong
//!   audience, bad signature, wrong algorithm, unknown key), even on a public route.
//! - **Valid credentials** become a [`Principal`] (subject, scopes, tier) in the request
//!   extensions, and the subject and tier go into the [request context](crate::context), so
//!   the access log, rate-limit keys and idempotency scopes see who is calling.
//! - **Routes** (`[[auth.routes]]`, first match wins; unmatched routes follow
//!   `default_access`) say who may call: anyone (`public = true`), any authenticated client,
//!   or one holding every listed scope. No credentials where they are needed → `401`; too few
//!   scopes → `403` problem with a `required_scopes` member and
//!   `WWW-Authenticate: Bearer error="insufficient_scope", scope="…"`.
//!
//! JWTs: exactly one algorithm is accepted (`HS256` with a secret of at least 32 bytes;
//! `RS256`, `PS256`, `ES256`, `EdDSA`… with a PEM public key or a JWKS), so `alg: none` and
//! HS/RS confusion cannot pass; `exp` and `sub` are required, `nbf` is honoured, `iss` and
//! `aud` are checked when configured, all with a small `leeway` (30 s). Scopes come from the
//! `scope` (space-separated), `scp` or `scopes` claims; the tier from `tier_claim`. A JWKS is
//! fetched through a [`JwksFetch`] the caller provides (the library does no HTTP itself):
//! refreshed in the background every `jwks_refresh`, and at once — at most every
//! `jwks_cooldown` — for a token whose `kid` is unknown.
//!
//! API keys are configured by their SHA-256 digest ([`api_key_hash`]), never in clear, and
//! compared in constant time; each key names its subject, scopes and tier.
//!
//! ```
//! use palisade::auth::{ApiKeyEntry, AuthConfig, AuthLayer, AuthRouteConfig, Principal, api_key_hash};
//!
//! let mut config = AuthConfig::default();
//! config.api_keys.keys.push(ApiKeyEntry {
//!     id: "deploy-bot".into(),
//!     hash: api_key_hash("a-long-random-key"),
//!     subject: String::new(),
//!     scopes: vec!["items:write".into()],
//!     tier: String::new(),
//! });
//! config.routes.push(AuthRouteConfig {
//!     path: "/items/*".into(),
//!     methods: vec!["POST".into()],
//!     public: false,
//!     scopes: vec!["items:write".into()],
//! });
//! let layer = AuthLayer::new(&config, None).expect("valid config");
//! let app: axum::Router = axum::Router::new()
//!     .route(
//!         "/items",
//!         axum::routing::post(|who: Principal| async move { who.subject().to_owned() }),
//!     )
//!     .layer(layer);
//! # let _ = app;
//! ```
//!
//! Ordering: inside the request context (it writes the subject there) and load shedding
//! (a JWKS fetch can wait), outside rate limiting and idempotency (which key on the subject).
//! Credentials are never logged. A client that only ever sends bad credentials is answered
//! `401` before the rate limiter sees it; its cost is one hash or signature check.

mod api_key;
mod jwks;
mod jwt;
mod layer;

use std::sync::Arc;

use axum_core::body::Body;
use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use http::{Response, request::Parts};
use serde::{Deserialize, Serialize};

pub use api_key::{ApiKeyEntry, ApiKeysConfig, api_key_hash};
pub use jwks::JwksFetch;
pub use jwt::{JwtAlgorithm, JwtConfig};
pub use layer::{Auth, AuthLayer, ResponseFuture};

/// Who may call routes that no `[[auth.routes]]` entry matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Anyone; credentials, when sent, are still checked.
    #[default]
    Public,
    /// Authenticated clients only.
    Authenticated,
}

/// One `[[auth.routes]]` entry: who may call some routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthRouteConfig {
    /// Path pattern: `/api/v1/items/*`, `/admin/{id}`.
    pub path: String,
    /// Methods this rule applies to; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Anyone may call (credentials, when sent, are still checked). Default `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
    /// Scopes the caller must hold, all of them; empty: any authenticated caller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// `[auth]`: credentials and who may call what. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Off: no credentials are checked and every route is public. Default `true`.
    pub enabled: bool,
    /// The `realm` of `WWW-Authenticate` challenges. Default `api`.
    pub realm: String,
    /// Routes no rule matches. Default `public`.
    pub default_access: Access,
    /// JWT bearer tokens; `None`: not accepted.
    pub jwt: Option<JwtConfig>,
    /// API keys; none configured: not accepted.
    pub api_keys: ApiKeysConfig,
    /// Per-route access, first match wins.
    pub routes: Vec<AuthRouteConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            realm: "api".to_owned(),
            default_access: Access::Public,
            jwt: None,
            api_keys: ApiKeysConfig::default(),
            routes: Vec::new(),
        }
    }
}

/// How a [`Principal`] proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credential {
    /// A verified JWT bearer token.
    Jwt,
    /// An API key, by its configured `id`.
    ApiKey(Arc<str>),
}

/// The authenticated caller, in the request extensions. Cheap to clone.
///
/// As an axum extractor it requires authentication (`401` problem without it);
/// `Option<Principal>` accepts anonymous requests too.
#[derive(Debug, Clone)]
pub struct Principal(Arc<PrincipalInner>);

#[derive(Debug)]
struct PrincipalInner {
    subject: Box<str>,
    scopes: Box<[Box<str>]>,
    credential: Credential,
    tier: Option<Box<str>>,
}

impl Principal {
    /// A principal; for tests and custom authenticators.
    pub fn new(
        subject: impl Into<Box<str>>,
        scopes: Vec<Box<str>>,
        credential: Credential,
        tier: Option<String>,
    ) -> Self {
        Self(Arc::new(PrincipalInner {
            subject: subject.into(),
            scopes: scopes.into(),
            credential,
            tier: tier.map(String::into_boxed_str),
        }))
    }

    /// The subject: the JWT's `sub`, or the API key's subject.
    pub fn subject(&self) -> &str {
        &self.0.subject
    }

    /// The granted scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.0.scopes.iter().map(|s| &**s)
    }

    /// Whether `scope` was granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.0.scopes.iter().any(|s| **s == *scope)
    }

    /// How the caller authenticated.
    pub fn credential(&self) -> &Credential {
        &self.0.credential
    }

    /// The rate-limit tier, if the credential names one.
    pub fn tier(&self) -> Option<&str> {
        self.0.tier.as_deref()
    }

    /// `Ok` when every scope in `scopes` was granted, else the same `403` problem (with
    /// `required_scopes` and `WWW-Authenticate`) the layer answers: for scope checks in
    /// handlers.
    ///
    /// ```
    /// use palisade::auth::{Credential, Principal};
    ///
    /// let p = Principal::new("alice", vec!["items:read".into()], Credential::Jwt, None);
    /// assert!(p.require_scopes(&["items:read"]).is_ok());
    /// assert_eq!(p.require_scopes(&["items:write"]).unwrap_err().status(), 403);
    /// ```
    pub fn require_scopes(&self, scopes: &[&str]) -> Result<(), Box<Response<Body>>> {
        if scopes.iter().all(|s| self.has_scope(s)) {
            Ok(())
        } else {
            Err(Box::new(layer::forbidden(scopes, None)))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Response<Body>;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            let mut res = layer::authentication_required().into_response();
            res.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            res
        })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Principal {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Principal>().cloned())
    }
}
