//! Prometheus metrics: HTTP requests by route template, latency and size histograms, an exact
//! in-flight gauge, rejections by layer and reason, plus families from [`Collector`]s (stores,
//! load shedding, breakers, the process).
//!
//! [`Metrics`] is the registry; [`MetricsLayer`] records every request into it;
//! [`Metrics::scrape`] answers `GET /metrics` (optionally behind a bearer token).
//!
//! ```
//! use palisade::metrics::{Metrics, MetricsConfig, MetricsLayer, ProcessCollector};
//! use axum::{Router, routing::get};
//!
//! # fn build() -> Result<(), palisade::error::ConfigError> {
//! let metrics = Metrics::new(&MetricsConfig::default(), ["/items/{id}", "/metrics"])?;
//! metrics.add_collector(ProcessCollector);
//! let scrape = metrics.clone();
//! let app: Router = Router::new()
//!     .route("/items/{id}", get(|| async { "item" }))
//!     .route("/metrics", get(move |h: http::HeaderMap| async move { scrape.scrape(&h) }))
//!     .layer(MetricsLayer::new(metrics));
//! # let _ = app; Ok(()) }
//! ```
//!
//! # Families
//!
//! | name | type | labels |
//! |---|---|---|
//! | `http_requests_total` | counter | `method`, `route`, `status` |
//! | `http_request_duration_seconds` | histogram | `method`, `route` |
//! | `http_request_size_bytes`, `http_response_size_bytes` | histogram | `method`, `route` |
//! | `http_requests_in_flight` | gauge | — |
//! | `http_rejections_total` | counter | `layer`, `reason` (every [`Rejection`](crate::rejection::Rejection)) |
//!
//! # Labels stay bounded
//!
//! - `route` is a route *template*, never a raw path. The layer matches the path against the
//!   templates declared to [`Metrics::new`] when the request arrives, so requests refused
//!   before routing (429, 413, 503, 401 …) carry their route too. A template the router
//!   matched that was not declared (read from [`RequestContext::route`](crate::context::RequestContext::route))
//!   is learnt on first use (at most 256; a read lock per such request: declare templates to
//!   avoid it). Everything else shares the label `unmatched`.
//! - `method` is one of the seven usual methods or `other`.
//! - `status` is the response status; `499` when the client went away before a response.
//!
//! # Timing and exactness
//!
//! A request is recorded once, when its response body ends, fails or is dropped, so the
//! duration and response size cover streamed bodies, and the in-flight gauge returns to its
//! value before the request whatever happens (cancelled requests included). Request sizes are
//! the body bytes actually read, counted by [`RequestContextLayer`](crate::context::RequestContextLayer).
//!
//! Recording costs a route match and a handful of relaxed atomic additions: no lock, no
//! allocation once a (route, method) pair has been seen.
//!
//! Ordering: directly inside [`RequestContextLayer`](crate::context::RequestContextLayer), so
//! it sees every rejection by a later layer with its final status.

mod body;
mod config;
mod exposition;
mod layer;
mod process;
mod registry;

pub use body::ResponseBody;
pub use config::{DEFAULT_DURATION_BUCKETS, DEFAULT_SIZE_BUCKETS, MAX_BUCKETS, MetricsConfig};
pub use exposition::{Collector, Exposition, Family, InfoMetric, MetricKind, TEXT_FORMAT};
pub use layer::{MetricsLayer, RecordMetrics, ResponseFuture};
pub use process::ProcessCollector;
pub use registry::{Metrics, UNMATCHED_ROUTE};
