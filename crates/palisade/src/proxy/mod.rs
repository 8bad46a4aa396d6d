//! Gateway mode: forward requests, by path prefix, to upstream HTTP services that know
//! nothing of Palisade, so every layer of the stack protects them too.
//!
//! [`Gateway`] is a terminal service (use it as a router fallback or a nested service). For
//! each request it finds the `[[upstreams]]` entry with the longest matching prefix (methods
//! and host narrowing it), then:
//!
//! - **Streams both ways.** The request body goes out as it arrives and the response body
//!   comes back as the upstream sends it; neither is ever held whole. Only the first body
//!   frame is read before the upstream is contacted, so broken chunking is answered `400`
//!   and never reaches it.
//! - **Keeps connections alive.** HTTP/1.1 to each URL over a pool of idle connections
//!   (`max_idle`, `idle_timeout` — keep the latter below the upstream's own keep-alive
//!   timeout). A connection returns to the pool when its response body has been read to the
//!   end; one abandoned midway is closed.
//! - **Rewrites headers.** Hop-by-hop fields (RFC 9110 §7.6.1: `Connection`, `Keep-Alive`,
//!   `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-*`, and every field
//!   `Connection` names) are dropped both ways. `X-Forwarded-For`, `X-Forwarded-Proto`,
//!   `X-Forwarded-Host` and `Forwarded` are set: a trusted proxy's chain (see
//!   [`client_ip`](crate::client_ip)) is kept and the peer appended; from anyone else the
//!   incoming values are replaced, so a client cannot plant addresses. `X-Request-ID`,
//!   `X-Correlation-ID` and (with `otel`) `traceparent` carry the request's context.
//!   `Host` is the upstream URL's authority, or the client's with `host_header = "preserve"`.
//! - **Balances and ejects.** Several URLs take turns (round-robin); `max_failures`
//!   consecutive connection failures or timeouts take a URL out for `eject_for`, after which
//!   it is tried again (one more failure ejects it at once). When every URL is out, the one
//!   due back first is still tried. Each upstream has a
//!   [`CircuitBreaker`](crate::circuit_breaker::CircuitBreaker) (5xx, connection failures
//!   and timeouts count as failures) that answers `503` while open.
//! - **Retries safely.** Only idempotent methods, only on another URL, and only when nothing
//!   of the request was sent (the connection could not be made, or a pooled one was found
//!   closed). A request whose bytes went out is never sent twice.
//! - **Fails clearly.** No URL reachable → `502` problem; no response head within
//!   `response_timeout` → `504` problem. Ambiguous framing (`Content-Length` with
//!   `Transfer-Encoding`, a `Transfer-Encoding` not ending in `chunked`, disagreeing
//!   lengths) → `400` problem (`hyper`, the server under it, already refuses most of these
//!   before any service runs, and every body is re-framed on the way out, so the upstream
//!   can never read a second request out of one).
//! - **Passes WebSockets through.** An `Upgrade: websocket` request goes to the upstream on
//!   its own connection; when it answers `101`, bytes are copied both ways until either side
//!   closes. `websocket = false` answers `501` instead. Other upgrades (`h2c`) are dropped
//!   as hop-by-hop and the request forwarded as plain HTTP/1.1; `CONNECT` is answered `501`.
//!
//! The request context's route is set to the upstream's label (`/orders/{*path}`), so logs
//! and metrics group a proxied prefix as one route.
//!
//! ```no_run
//! use palisade::{client_ip::ClientIpConfig, proxy::{Gateway, UpstreamConfig}};
//!
//! # fn build() -> Result<(), palisade::error::ConfigError> {
//! let mut orders = UpstreamConfig::new("/orders", ["http://127.0.0.1:8000", "http://127.0.0.1:8001"]);
//! orders.strip_prefix = true;
//! let gateway = Gateway::new(&[orders], &ClientIpConfig::default())?;
//! let app: axum::Router = axum::Router::new()
//!     .route("/livez", axum::routing::get(|| async { "ok" }))
//!     .fallback_service(gateway);
//! # let _ = app; Ok(()) }
//! ```
//!
//! Limits: upstream URLs are `http://` only (TLS to upstreams is not built in); requests go
//! out as HTTP/1.1 whatever the client spoke.

mod body;
mod config;
mod gateway;
mod headers;
mod pool;
mod upstream;
mod websocket;

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_EJECT_FOR, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_FAILURES,
    DEFAULT_MAX_IDLE, DEFAULT_RESPONSE_TIMEOUT, HostHeader, RoutePolicy, UpstreamConfig,
};
pub use gateway::{Gateway, UpstreamStatus};

/// Request extension: the request head carried both `Content-Length` and
/// `Transfer-Encoding`. hyper drops `Content-Length` before any service runs, so only the
/// server's connection reader can tell; Palisade's server inserts this in gateway mode and
/// [`Gateway`] answers such requests `400` without contacting the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmbiguousFraming;
