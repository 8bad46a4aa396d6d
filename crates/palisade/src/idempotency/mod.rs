//! Idempotency keys (draft-ietf-httpapi-idempotency-key-header): a retried `POST`/`PATCH`
//! with the same `Idempotency-Key` gets the first attempt's response instead of running
//! again — on one instance or on many sharing Redis.
//!
//! [`IdempotencyLayer`] handles the configured methods (default `POST` and `PATCH`) on every
//! route, or as route rules say (`required`, or `exempt`):
//!
//! 1. The key: a bare token or the draft's quoted string, 1–255 printable ASCII characters,
//!    else a 400 problem. A route that requires a key answers a request without one with a
//!    400 problem titled "Idempotency-Key is missing". Without a key (where optional) the
//!    request passes untouched.
//! 2. The body is read, up to `max_request_bytes` (else 413, nothing stored), for the
//!    request's [`Fingerprint`]: method, path, query, content type and body.
//! 3. The scope: client identity (authenticated subject, else the API key header, else the
//!    client IP), method, path and key, hashed into an [`EntryKey`]. Two clients never see
//!    each other's entries; the same key on another path is another entry. A request with
//!    no identity at all (no [`RequestContextLayer`](crate::context::RequestContextLayer)
//!    outside this layer, no API key) is a 500 problem: it could not be scoped.
//! 4. An atomic reservation in the [`IdempotencyStore`]:
//!    - first request: it takes a *lease* (renewed every third of its duration while the
//!      request runs; if the instance dies the lease expires and the key is usable again)
//!      and runs;
//!    - same key, other fingerprint: 422 problem "Idempotency-Key is already used";
//!    - same key while the first runs: 409 problem with `Retry-After: 1`;
//!    - same key after completion: the stored response, replayed with
//!      `Idempotent-Replayed: true` (request-specific headers such as `X-Request-ID` are
//!      fresh).
//! 5. Completion. 2xx and 4xx answers are stored, except 408, 409, 425 and 429: status,
//!    headers (without hop-by-hop headers, `Set-Cookie`, request/correlation ids, trace
//!    context, `Date`, timing headers) and body, for `ttl` (default 24 h). Anything else —
//!    5xx, 1xx/3xx, those four 4xx, an error from the inner service, a request dropped
//!    before it answered (timeout, client gone) — releases the key so a retry runs.
//!    Bodies of known size up to `max_response_bytes` are stored before the response is
//!    sent, so an immediate retry is already a replay. Streaming bodies are sent as they
//!    come and stored when they end. A body larger than `max_response_bytes`, one that
//!    fails, or one the client stops reading is *not replayable*: the entry records the
//!    status only, and retries get a 409 problem "Idempotency-Key response unavailable"
//!    (with an `original-status` member, no `Retry-After`) — the request is never run
//!    twice while the entry lives. Trailers are not stored.
//!
//! If the store cannot answer (Redis down), the request is refused with 503 and
//! `Retry-After: 1`: running it without the guarantee could run it twice.
//!
//! Cancellation. Until the handler answers, dropping the request (a timeout) releases the
//! key. Once it has answered, storing the answer runs in a task of its own, so it completes
//! even if the request is dropped meanwhile. A per-route layer inside a router-wide one
//! steps aside for requests the outer one already handles.
//!
//! ```
//! use std::sync::Arc;
//! use axum::{Router, routing::post};
//! use palisade::context::{RequestContextConfig, RequestContextLayer};
//! use palisade::idempotency::{
//!     Idempotency, IdempotencyConfig, IdempotencyKey, IdempotencyLayer, MemoryStore,
//! };
//!
//! # fn build() -> Result<(), palisade::error::ConfigError> {
//! let idempotency = Arc::new(Idempotency::new(
//!     &IdempotencyConfig::default(),
//!     Arc::new(MemoryStore::default()),
//! )?);
//! let app: Router = Router::new()
//!     // The seeds' `@idempotent(required=True)`: this route needs a key. The extractor
//!     // hands the handler the key it runs under.
//!     .route("/payments", post(|key: IdempotencyKey| async move { format!("paid {key}") })
//!         .layer(IdempotencyLayer::required(idempotency.clone())))
//!     // Everywhere else, POST and PATCH honour a key when the client sends one.
//!     .layer(IdempotencyLayer::new(idempotency))
//!     // The client identity that scopes entries (outermost).
//!     .layer(RequestContextLayer::new(&RequestContextConfig::default()));
//! # let _ = app; Ok(()) }
//! ```
//!
//! Ordering: inside the request context (client identity) and the auth layer (subject),
//! after the rate limit and body limit (rejected requests never reserve a key), outside the
//! handler.

mod fingerprint;
mod key;
mod layer;
mod memory;
#[cfg(feature = "redis")]
pub mod redis;
mod store;

use std::{sync::Arc, time::Duration};

use http::{HeaderName, Method, request::Parts};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    context::RequestContext, duration::ConfigDuration, error::ConfigError, exempt::ExemptPaths,
    path_pattern::RouteMatch,
};

pub use crate::store::StoreKind;
pub use fingerprint::{Fingerprint, Fingerprinter};
pub use key::{IDEMPOTENCY_KEY, IdempotencyKey, KeyError, MAX_KEY_LEN, deterministic_key};
pub use layer::{IDEMPOTENT_REPLAYED, IdempotencyLayer, IdempotencyService, ResponseFuture};
pub use memory::{DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, MemoryStore};
pub use store::{
    EntryKey, IdempotencyStore, Lease, Reservation, StoreError, StoreFuture, StoredResponse,
};

/// Feeds one length-prefixed field to a SHA-256: no two field lists hash alike.
pub(crate) fn hash_field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// Appends `bytes` to `out` in lower-case hex.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

/// One `[[idempotency.routes]]` entry. Rules are tried in order; the first match wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyRouteConfig {
    /// Path pattern: `/orders`, `/items/{id}`, `/payments/*`.
    pub path: String,
    /// Methods this rule applies to; empty: the section's `methods`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// A request without a key is a 400 problem.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// Never handle keys here (the header is ignored).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exempt: bool,
}

/// `[idempotency]`: everything about idempotency keys. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    /// Honour `Idempotency-Key`. Default `true`.
    pub enabled: bool,
    /// Methods handled. Default `["POST", "PATCH"]`.
    pub methods: Vec<String>,
    /// Route rules (`required`, `exempt`), first match wins; other paths: key optional.
    pub routes: Vec<IdempotencyRouteConfig>,
    /// How long a completed response is kept. Default `24h`.
    pub ttl: ConfigDuration,
    /// How long a running request's reservation lasts without renewal (it is renewed while
    /// the request runs; after a crash the key is usable again this long). Default `10s`.
    pub lease: ConfigDuration,
    /// The largest request body read for the fingerprint; larger → 413. Default 1 MiB.
    pub max_request_bytes: usize,
    /// The largest response body stored for replay. Default 1 MiB.
    pub max_response_bytes: usize,
    /// `memory` (default) or `redis`.
    pub store: StoreKind,
    /// In-memory store: most entries kept. Default 100 000.
    pub max_entries: usize,
    /// In-memory store: most bytes of stored responses. Default 64 MiB.
    pub max_memory_bytes: usize,
    /// Redis store: the longest an operation waits. Default `500ms`.
    pub store_timeout: ConfigDuration,
    /// Redis store: key prefix. Default `palisade:idem:`.
    pub redis_prefix: String,
    /// The header whose value identifies a client without a subject. Default `X-API-Key`.
    pub api_key_header: String,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            methods: vec!["POST".to_owned(), "PATCH".to_owned()],
            routes: Vec::new(),
            ttl: ConfigDuration::secs(24 * 3600),
            lease: ConfigDuration::secs(10),
            max_request_bytes: 1 << 20,
            max_response_bytes: 1 << 20,
            store: StoreKind::Memory,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_memory_bytes: DEFAULT_MAX_BYTES,
            store_timeout: ConfigDuration::millis(500),
            redis_prefix: "palisade:idem:".to_owned(),
            api_key_header: "x-api-key".to_owned(),
        }
    }
}

/// Whether a request must, may, or must not carry a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Optional,
    Required,
}

#[derive(Debug, Clone)]
struct Rule {
    /// Empty methods: the section's `methods`.
    route: RouteMatch,
    mode: Option<Mode>,
}

/// The compiled configuration and the store. Share it with an `Arc`.
pub struct Idempotency {
    methods: Box<[Method]>,
    /// Every method some rule names.
    rule_methods: Box<[Method]>,
    rules: Box<[Rule]>,
    pub(crate) store: Arc<dyn IdempotencyStore>,
    pub(crate) ttl: Duration,
    pub(crate) lease: Duration,
    pub(crate) max_request_bytes: usize,
    pub(crate) max_response_bytes: usize,
    api_key_header: HeaderName,
    exempt: ExemptPaths,
}

impl std::fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("methods", &self.methods)
            .field("rules", &self.rules.len())
            .field("ttl", &self.ttl)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Idempotency {
    /// Compiles `config` (errors name the key below `idempotency`) over `store`. Health
    /// paths are exempt; set others with [`Idempotency::exempt`].
    pub fn new(
        config: &IdempotencyConfig,
        store: Arc<dyn IdempotencyStore>,
    ) -> Result<Self, ConfigError> {
        let methods = crate::path_pattern::parse_methods(&config.methods)
            .map_err(|m| ConfigError::new("methods", m))?;
        let mut rules = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            let route = RouteMatch::compile(i, &r.path, &r.methods)?;
            let mode = match (r.required, r.exempt) {
                (true, true) => {
                    return Err(ConfigError::new(
                        format!("routes[{i}].exempt"),
                        "a route cannot be both required and exempt",
                    ));
                }
                (true, false) => Some(Mode::Required),
                (false, true) => None,
                (false, false) => Some(Mode::Optional),
            };
            rules.push(Rule { route, mode });
        }
        let (ttl, lease) = (config.ttl.get(), config.lease.get());
        if lease < Duration::from_millis(100) {
            return Err(ConfigError::new("lease", "must be at least 100ms"));
        }
        if lease > Duration::from_secs(3600) {
            return Err(ConfigError::new("lease", "must be at most 1h"));
        }
        if ttl < lease || ttl > Duration::from_secs(366 * 24 * 3600) {
            return Err(ConfigError::new(
                "ttl",
                "must be at least the lease and at most 366d",
            ));
        }
        if config.store == StoreKind::Redis && config.store_timeout.get() * 3 > lease {
            // A lease is renewed every third of its duration; a renewal that waits the whole
            // store timeout must still land before the lease runs out.
            return Err(ConfigError::new(
                "lease",
                "must be at least three times store_timeout",
            ));
        }
        for (name, v) in [
            ("max_request_bytes", config.max_request_bytes),
            ("max_response_bytes", config.max_response_bytes),
        ] {
            if v == 0 || v > 1 << 30 {
                return Err(ConfigError::new(name, "must be between 1 byte and 1 GiB"));
            }
        }
        let api_key_header = HeaderName::try_from(config.api_key_header.trim()).map_err(|_| {
            ConfigError::new(
                "api_key_header",
                format!("{:?} is not a header name", config.api_key_header),
            )
        })?;
        let mut rule_methods: Vec<Method> = Vec::new();
        for m in rules.iter().flat_map(|r| r.route.methods.iter()) {
            if !rule_methods.contains(m) {
                rule_methods.push(m.clone());
            }
        }
        Ok(Self {
            methods,
            rule_methods: rule_methods.into(),
            rules: rules.into(),
            store,
            ttl,
            lease,
            max_request_bytes: config.max_request_bytes,
            max_response_bytes: config.max_response_bytes,
            api_key_header,
            exempt: ExemptPaths::health(),
        })
    }

    /// Paths never handled (default: the health paths). Replaces the list.
    pub fn exempt(mut self, paths: ExemptPaths) -> Self {
        self.exempt = paths;
        self
    }

    /// How this request is handled: `None` passes it through untouched. `fixed` (a
    /// per-route layer) replaces the route rules.
    pub(crate) fn mode(&self, fixed: Option<Mode>, method: &Method, path: &str) -> Option<Mode> {
        let listed = self.methods.contains(method);
        if !listed && !self.rule_methods.contains(method) {
            return None; // GET and friends: nothing to look up
        }
        if self.exempt.contains(path) {
            return None;
        }
        if let Some(mode) = fixed {
            return listed.then_some(mode);
        }
        let applies = |r: &&Rule| {
            (if r.route.methods.is_empty() {
                listed
            } else {
                r.route.methods.contains(method)
            }) && r.route.pattern.matches(path)
        };
        match self.rules.iter().find(applies) {
            Some(rule) => rule.mode,
            None => listed.then_some(Mode::Optional),
        }
    }

    /// The entry for this request and key: SHA-256 over the client identity, method, path
    /// and key, each length-prefixed. `None` when the request has no identity at all (no
    /// subject, API key or client IP: the request context layer is missing).
    pub(crate) fn entry_key(&self, parts: &Parts, key: &IdempotencyKey) -> Option<EntryKey> {
        let ctx = parts.extensions.get::<RequestContext>();
        let mut h = Sha256::new();
        let mut field = |tag: u8, bytes: &[u8]| {
            h.update([tag]);
            hash_field(&mut h, bytes);
        };
        field(0, b"palisade-idempotency-v1");
        let subject = ctx.and_then(RequestContext::subject);
        let api_key = parts.headers.get(&self.api_key_header);
        match (subject, api_key, ctx.and_then(RequestContext::client_ip)) {
            (Some(s), _, _) => field(b's', s.as_bytes()),
            (None, Some(k), _) => field(b'k', k.as_bytes()),
            (None, None, Some(std::net::IpAddr::V4(ip))) => field(b'4', &ip.octets()),
            (None, None, Some(std::net::IpAddr::V6(ip))) => field(b'6', &ip.octets()),
            (None, None, None) => return None,
        }
        field(b'm', parts.method.as_str().as_bytes());
        field(b'p', parts.uri.path().as_bytes());
        field(b'k', key.as_str().as_bytes());
        Some(EntryKey(h.finalize().into()))
    }
}
