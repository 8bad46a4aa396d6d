//! Request deadlines and slow-client protection.
//!
//! - [`TimeoutLayer`]: a deadline per request (a global default, per-route overrides). When it
//!   passes, the handler's future is dropped — its work stops at its next `.await` — and the
//!   client gets a `504` problem. The deadline covers everything inside the layer up to the
//!   response head; a streamed response body is not cut off.
//! - [`RequestBodyTimeoutLayer`]: a client that stops sending its request body for longer than
//!   the idle timeout gets a `408` problem with `Connection: close`, whatever the handler makes
//!   of the read error.
//!
//! The header-read and keep-alive timeouts and the connection limits live in the accept loop
//! (they concern connections, not requests); `palisade-server` implements them.
//!
//! ```
//! use std::time::Duration;
//! use palisade::timeout::{RequestBodyTimeoutLayer, TimeoutConfig, TimeoutLayer, TimeoutRouteConfig};
//! use palisade::duration::ConfigDuration;
//!
//! let config = TimeoutConfig {
//!     routes: vec![TimeoutRouteConfig {
//!         path: "/reports/*".into(),
//!         methods: Vec::new(),
//!         request: ConfigDuration::secs(120),
//!     }],
//!     ..TimeoutConfig::default()
//! };
//! let app: axum::Router = axum::Router::new()
//!     .route("/reports/{id}", axum::routing::get(|| async { "slow but allowed" }))
//!     .route("/items", axum::routing::post(|body: bytes::Bytes| async move { body.len().to_string() }))
//!     .layer(TimeoutLayer::new(&config).expect("valid rules"))
//!     .layer(RequestBodyTimeoutLayer::new(config.body_idle.get()));
//! # let _ = app;
//! ```
//!
//! Ordering: inside load shedding and the rate limit (a request waiting in the load-shedding
//! queue is bounded by the queue wait, not by this deadline), outside idempotency, so a
//! request that times out releases its key.

mod body;
mod layer;

pub use body::{BodyReadTimeout, RequestBodyTimeout, RequestBodyTimeoutLayer, TimeoutBody};
pub use layer::{ResponseFuture, Timeout, TimeoutLayer};

use serde::{Deserialize, Serialize};

use crate::duration::ConfigDuration;

/// Default request deadline: 30 s.
pub const DEFAULT_REQUEST_TIMEOUT: ConfigDuration = ConfigDuration::secs(30);
/// Default request-body idle timeout: 10 s without a byte.
pub const DEFAULT_BODY_IDLE_TIMEOUT: ConfigDuration = ConfigDuration::secs(10);
/// The longest accepted timeout: one day.
pub const MAX_TIMEOUT: ConfigDuration = ConfigDuration::secs(86_400);

/// One `[[timeout.routes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutRouteConfig {
    /// Path pattern: `/reports/*`, `/items/{id}`.
    pub path: String,
    /// Methods this rule applies to; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// The deadline for matching requests.
    pub request: ConfigDuration,
}

/// `[timeout]`: request deadlines and the request-body idle timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    /// Off: neither the request deadline nor the body idle timeout (the caller decides
    /// whether to install the layers). Default `true`.
    pub enabled: bool,
    /// Deadline for requests no rule matches. Default `30s`.
    pub request: ConfigDuration,
    /// Longest pause between two pieces of a request body. Default `10s`.
    pub body_idle: ConfigDuration,
    /// Per-route deadlines, first match wins.
    pub routes: Vec<TimeoutRouteConfig>,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            request: DEFAULT_REQUEST_TIMEOUT,
            body_idle: DEFAULT_BODY_IDLE_TIMEOUT,
            routes: Vec::new(),
        }
    }
}

/// `Ok` when `d` is a usable timeout (above zero, at most a day); the error names `key`.
pub fn check_timeout(key: &str, d: ConfigDuration) -> Result<(), crate::error::ConfigError> {
    if d.get().is_zero() || d > MAX_TIMEOUT {
        return Err(crate::error::ConfigError::new(
            key,
            "must be above 0 and at most 1 day",
        ));
    }
    Ok(())
}
