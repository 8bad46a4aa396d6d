//! # Palisade
//!
//! Production tower layers for HTTP APIs: the cross-cutting layer every service rewrites,
//! done once, fast, and tested against real servers. Each concern is one module with a
//! `Layer`, a `Service` and a plain config struct; rejections are RFC 9457 problems
//! ([`problem`]) carrying the request id.
//!
//! ```
//! use palisade::{
//!     access_log::AccessLogLayer,
//!     catch_panic::CatchPanicLayer,
//!     context::{RequestContextConfig, RequestContextLayer},
//!     exempt::ExemptPaths,
//!     problem_fallback::ProblemFallbackLayer,
//!     security_headers::{SecurityHeadersConfig, SecurityHeadersLayer},
//!     trusted_host::TrustedHostLayer,
//! };
//! use tower::ServiceBuilder;
//!
//! # fn build() -> Result<(), palisade::error::ConfigError> {
//! let app: axum::Router = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
//! // One ServiceBuilder around the whole router, outermost layer first.
//! let service = ServiceBuilder::new()
//!     .layer(RequestContextLayer::new(&RequestContextConfig::default()))
//!     .layer(AccessLogLayer::new())
//!     .layer(ProblemFallbackLayer::new())
//!     .layer(SecurityHeadersLayer::new(&SecurityHeadersConfig::default())?)
//!     .layer(TrustedHostLayer::new(["api.example.com"], ExemptPaths::health())?)
//!     .layer(CatchPanicLayer::new())
//!     .service(app);
//! # let _ = service; Ok(()) }
//! ```
//!
//! ## Modules and features
//!
//! | module | what | feature |
//! |---|---|---|
//! | [`context`] | request id, correlation id, client IP, subject; task-local | — |
//! | [`request_id`] | id validation and UUIDv7 generation | — |
//! | [`client_ip`] | client IP behind trusted proxies | — |
//! | [`problem`] | RFC 9457 problem+json | — |
//! | [`rejection`] | why a layer refused: a tag on every rejection, read by metrics | — |
//! | [`problem_fallback`] | bare error responses become problems | — |
//! | [`access_log`] | one log line per request | — |
//! | [`security_headers`] | OWASP security headers, HSTS on HTTPS | — |
//! | [`trusted_host`] | `Host` allowlist | — |
//! | [`geoip`] | allow or deny clients by country, from a MaxMind DB file | `geoip` |
//! | [`cache_control`] | `Cache-Control` and `Vary` per route on successful reads | — |
//! | [`body_limit`] | request body limits on the bytes that arrive, per route | — |
//! | [`content_validation`] | content-type allowlist (415), path/query encoding (400), header limits (431) | — |
//! | [`load_shed`] | concurrency limit with a bounded queue, 503 beyond it | — |
//! | [`timeout`] | request deadlines per route (504), request-body idle timeout (408) | — |
//! | [`catch_panic`] | panics become 500 problems | — |
//! | [`circuit_breaker`] | closed / open / half-open per upstream or route group; 503 while open | — |
//! | [`metrics`] | Prometheus metrics by route template, rejections, process; `/metrics` | — |
//! | [`response_time`] | `Server-Timing` / `X-Response-Time` header | — |
//! | [`health`] | `/livez`, `/readyz` with parallel checks | — |
//! | [`auth`] | JWT bearer tokens and hashed API keys, scopes per route (401/403) | `auth` |
//! | [`rate_limit`] | GCRA / sliding-window quotas per client and route, IETF headers | `redis` for the shared store |
//! | [`duration`] | `"30s"`-style durations in config structs | — |
//! | [`idempotency`] | `Idempotency-Key`: run once, replay, across instances | `redis` for the shared store |
//! | [`redis_connection`] | one connection to a Redis endpoint or cluster for every store | `redis` |
//! | [`store`] | where a layer keeps shared state | — |
//! | [`exempt`] | the shared list of infrastructure paths | — |
//! | [`cors`] | validated CORS on tower-http | `cors` (default) |
//! | [`logging`] | log formatter with the request context | `json-log` (default) |
//! | [`otel`] | OpenTelemetry server spans, W3C trace context, OTLP/HTTP export | `otel` |

pub mod access_log;
#[cfg(feature = "auth")]
pub mod auth;
mod body_end;
pub mod body_limit;
pub mod cache_control;
pub mod catch_panic;
pub mod circuit_breaker;
pub mod client_ip;
pub mod content_validation;
pub mod context;
#[cfg(feature = "cors")]
pub mod cors;
pub mod duration;
pub mod error;
pub mod exempt;
pub mod future;
#[cfg(feature = "geoip")]
pub mod geoip;
pub mod health;
pub mod idempotency;
pub mod load_shed;
#[cfg(feature = "json-log")]
pub mod logging;
mod macros;
pub mod metrics;
#[cfg(feature = "otel")]
pub mod otel;
mod path_pattern;
pub mod problem;
pub mod problem_fallback;
#[cfg(feature = "proxy")]
pub mod proxy;
pub mod rate_limit;
#[cfg(feature = "redis")]
pub mod redis_connection;
pub mod rejection;
pub mod request_id;
pub mod response_time;
pub mod security_headers;
pub mod store;
mod text;
pub mod timeout;
pub mod trusted_host;
