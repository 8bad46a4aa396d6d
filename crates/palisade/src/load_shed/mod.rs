//! Load shedding: a concurrency limit with a bounded wait queue, so an overloaded instance
//! answers the excess at once with `503` instead of letting latency and memory grow.
//!
//! - At most `max_concurrency` requests run at a time. The next `max_queue` wait, first come
//!   first served, each for at most `max_queue_wait`.
//! - A request that finds the queue full is answered `503` with `Retry-After` immediately;
//!   one that waited `max_queue_wait` in vain gets the same answer then.
//! - Exempt paths (health checks, metrics) are always served and never counted.
//! - Optional per-route limits (a slow export endpoint capped at 4), each with its own queue,
//!   taken before the global limit.
//! - A slot is held until the response head is ready; a cancelled request (client gone,
//!   timeout) frees its slot and its queue place when its future is dropped, so the counts
//!   stay exact. [`LoadShedLayer::stats`] reads them.
//!
//! ```
//! use palisade::exempt::ExemptPaths;
//! use palisade::load_shed::{LoadShedConfig, LoadShedLayer, LoadShedRouteConfig};
//!
//! let config = LoadShedConfig {
//!     max_concurrency: 64,
//!     max_queue: 128,
//!     routes: vec![LoadShedRouteConfig {
//!         path: "/exports/*".into(),
//!         methods: Vec::new(),
//!         max_concurrency: 2,
//!         max_queue: 0,
//!     }],
//!     ..LoadShedConfig::default()
//! };
//! let layer = LoadShedLayer::new(&config, ExemptPaths::health()).expect("valid config");
//! let app: axum::Router = axum::Router::new()
//!     .route("/exports/{id}", axum::routing::get(|| async { "big file" }))
//!     .layer(layer.clone());
//! assert_eq!(layer.stats().in_flight, 0);
//! # let _ = app;
//! ```
//!
//! Ordering: wraps the whole app (axum routers are always ready, so a tower `poll_ready`
//! limit would never push back), outside the rate limit and everything that does real work,
//! inside the request context so its problems carry the request id.

mod gate;
mod layer;

pub use layer::{LoadShed, LoadShedLayer, LoadShedStats, ResponseFuture};

use serde::{Deserialize, Serialize};

use crate::duration::ConfigDuration;

/// One `[[load_shed.routes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadShedRouteConfig {
    /// Path pattern: `/exports/*`, `/items/{id}`.
    pub path: String,
    /// Methods this rule applies to; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Requests of this route running at once.
    pub max_concurrency: usize,
    /// Requests of this route waiting for a slot. Default `0`: shed at once.
    #[serde(default)]
    pub max_queue: usize,
}

/// `[load_shed]`: the global concurrency limit and its queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadShedConfig {
    /// Off: no limit at all. Default `true`.
    pub enabled: bool,
    /// Requests running at once. Default `512`.
    pub max_concurrency: usize,
    /// Requests waiting for a slot; beyond that, `503` at once. Default `1024`.
    pub max_queue: usize,
    /// Longest wait in the queue before `503`. Default `2s`.
    pub max_queue_wait: ConfigDuration,
    /// The `Retry-After` of a shed request, rounded up to whole seconds. Default `1s`.
    pub retry_after: ConfigDuration,
    /// Per-route limits, first match wins; taken before the global limit.
    pub routes: Vec<LoadShedRouteConfig>,
}

impl Default for LoadShedConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_concurrency: 512,
            max_queue: 1024,
            max_queue_wait: ConfigDuration::secs(2),
            retry_after: ConfigDuration::secs(1),
            routes: Vec::new(),
        }
    }
}
