//! Circuit breakers for an upstream or a group of routes: stop calling what keeps failing,
//! answer fast instead, and probe now and then until it recovers.
//!
//! A [`CircuitBreaker`] is a shared handle (cheap to clone) with three states:
//!
//! - **Closed**: every call goes through. Outcomes go into a sliding window (`window`, kept
//!   in 10 fixed buckets, so the oldest tenth ages out at once). Once the window holds at
//!   least `minimum_calls` calls and `failure_rate_threshold` percent of them failed, or
//!   `slow_call_rate_threshold` percent of them took `slow_call_duration` or longer, the
//!   breaker opens.
//! - **Open**: calls are rejected without running — over HTTP, an immediate `503` problem
//!   with `Retry-After` (the rest of `open_duration`, in whole seconds, at least 1). After
//!   `open_duration` the next call (or [`CircuitBreaker::state`]) moves it to half-open.
//! - **Half-open**: at most `half_open_max_calls` probe calls run at once; the rest are
//!   rejected (`Retry-After: 1`). The probes are judged with the same thresholds, over
//!   `half_open_max_calls` calls: the breaker closes (fresh window) or opens again (for
//!   another `open_duration`) as soon as the outcome is certain — with the defaults (5
//!   probes, 50 %), after three successes or three failures.
//!
//! What counts: an inner `Err` is a failure; an HTTP response is a failure when its status
//! is in `failure_statuses` (every 5xx by default) and a success otherwise, 4xx included.
//! A call is slow when its response (the head, not a streamed body) took at least
//! `slow_call_duration`; slowness counts separately from failure. A call that is cancelled
//! (its future dropped: client gone, outer timeout) counts as neither, and gives its
//! half-open probe slot back. A [`Classify`] can decide differently, or ignore an outcome.
//!
//! A breaker for a group of routes, with its state in readiness (`warn` while open or
//! half-open, so readiness stays 200):
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use palisade::{
//!     circuit_breaker::{
//!         CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, CircuitBreakerRouteConfig,
//!     },
//!     health::Health,
//! };
//!
//! # fn build() -> Result<(), palisade::error::ConfigError> {
//! let config = CircuitBreakerConfig {
//!     routes: vec![CircuitBreakerRouteConfig { path: "/reports/*".into(), methods: vec![] }],
//!     ..CircuitBreakerConfig::default()
//! };
//! let breaker = CircuitBreaker::new("reports", &config)?;
//! let health = Health::builder().check(breaker.clone(), Duration::from_secs(1)).build();
//! let app: Router = Router::new()
//!     .route("/reports/{id}", get(|| async { "a report from a flaky backend" }))
//!     .route("/", get(|| async { "not guarded" }))
//!     .layer(CircuitBreakerLayer::new(breaker));
//! # let _ = (app, health); Ok(()) }
//! # build().unwrap();
//! ```
//!
//! Around outgoing calls, the same breaker answers with an error instead of a response:
//! [`ClientBreakerLayer`] wraps any service (an HTTP client, say) and fails with
//! [`BreakerError::Open`], and [`CircuitBreaker::call`] wraps a single future.
//!
//! ```
//! use palisade::circuit_breaker::{
//!     BreakerError, CircuitBreaker, CircuitBreakerConfig, ClientBreakerLayer,
//! };
//! use tower::{Layer, ServiceExt};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let breaker = CircuitBreaker::new("geo-api", &CircuitBreakerConfig::default())?;
//! // A whole client: any `Err` is a failure (`with_classifier` to change that).
//! let client = tower::service_fn(|q: String| async move { Ok::<_, std::io::Error>(q.len()) });
//! let client = ClientBreakerLayer::new(breaker.clone()).layer(client);
//! match client.oneshot("where".to_owned()).await {
//!     Ok(n) => assert_eq!(n, 5),
//!     Err(BreakerError::Open(open)) => println!("skipped; retry in {:?}", open.retry_after()),
//!     Err(BreakerError::Inner(e)) => return Err(e.into()),
//! }
//! // One call: the closure runs only if the breaker lets the call through.
//! let n = breaker.call(|| async { Ok::<_, std::io::Error>(7) }).await?;
//! assert_eq!(n, 7);
//! # Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
//! #     .block_on(run()).unwrap();
//! ```
//!
//! Metrics: [`CircuitBreaker::snapshot`] gives the state and monotonic counters (calls,
//! failures, slow calls, rejections, times opened) plus the current window. Transitions
//! are logged (`warn` on opening, `info` otherwise) with the breaker's name.
//!
//! Ordering: inside the request context (the problem carries the request id) and inside
//! rate limiting (rejected requests are not calls); outside what it protects. Put a timeout
//! *inside* the breaker, answering with a status that counts as a failure (503, 504): a call
//! that never ends is never recorded, and a half-open probe that never ends holds its slot.
//! A breaker sees another breaker's `503` as a failure, so do not nest two on one path.
//!
//! Caveats: one breaker is one `Mutex` (held for a few instructions per call, never across
//! an await) plus an atomic fast path while closed; use one per upstream or route group,
//! not per client. State is per process, not shared between instances.

mod breaker;
mod classify;
mod future;
mod layer;
#[cfg(test)]
mod tests;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{duration::ConfigDuration, error::ConfigError, path_pattern::RouteMatch};

pub use breaker::{BreakerOpen, BreakerSnapshot, BreakerState, CircuitBreaker, Permit};
pub use classify::{Classify, ErrorClassifier, HttpClassifier, Outcome};
pub use future::{ClientResponseFuture, ResponseFuture};
pub use layer::{
    BreakerError, CIRCUIT_OPEN_TITLE, CircuitBreakerLayer, CircuitBreakerService,
    ClientBreakerLayer, ClientBreakerService,
};

/// Buckets of the sliding window: the window slides by a tenth of its length.
pub const WINDOW_BUCKETS: usize = 10;

/// One `[[circuit_breaker.routes]]` entry: a path pattern and methods that the
/// [`CircuitBreakerLayer`] guards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerRouteConfig {
    /// Path pattern: `/reports/*`, `/items/{id}`.
    pub path: String,
    /// Methods this rule applies to; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

/// `[circuit_breaker]`: thresholds, timings and (for the HTTP layer) the route group of one
/// breaker. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    /// Open when at least this percentage (1–100) of the calls in the window failed.
    /// Default 50.
    pub failure_rate_threshold: u8,
    /// Open when at least this percentage (1–100) of the calls in the window were slow.
    /// Default 100: only when every call is slow, which in practice means "off"; lower it
    /// (say to 80) to open on a backend that has become slow without failing.
    pub slow_call_rate_threshold: u8,
    /// A call whose response takes at least this long is slow. Default `5s`.
    pub slow_call_duration: ConfigDuration,
    /// The sliding window the rates are computed over (kept in 10 buckets). Default `10s`.
    pub window: ConfigDuration,
    /// The breaker never opens while the window holds fewer calls than this. Default 20.
    pub minimum_calls: u32,
    /// How long the breaker stays open before it lets probes through. Default `30s`.
    pub open_duration: ConfigDuration,
    /// Probe calls let through while half-open, and the number the probes are judged
    /// over. Default 5.
    pub half_open_max_calls: u32,
    /// HTTP statuses that count as failures; empty (default): every 5xx. Other statuses,
    /// 4xx included, are successes.
    pub failure_statuses: Vec<u16>,
    /// The route group [`CircuitBreakerLayer`] guards; requests outside it pass straight
    /// through. Empty (default): everything the layer wraps. Not used around outgoing calls.
    pub routes: Vec<CircuitBreakerRouteConfig>,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_rate_threshold: 50,
            slow_call_rate_threshold: 100,
            slow_call_duration: ConfigDuration::secs(5),
            window: ConfigDuration::secs(10),
            minimum_calls: 20,
            open_duration: ConfigDuration::secs(30),
            half_open_max_calls: 5,
            failure_statuses: Vec::new(),
            routes: Vec::new(),
        }
    }
}

/// The validated config.
#[derive(Debug)]
struct Settings {
    failure_rate: u64,
    slow_rate: u64,
    slow_call: Duration,
    bucket_nanos: u64,
    minimum_calls: u64,
    open_duration: Duration,
    half_open_max: u64,
    classifier: HttpClassifier,
    routes: Box<[RouteMatch]>,
}

impl Settings {
    fn new(config: &CircuitBreakerConfig) -> Result<Self, ConfigError> {
        let percent = |key: &str, v: u8| {
            if (1..=100).contains(&v) {
                Ok(u64::from(v))
            } else {
                Err(ConfigError::new(
                    key,
                    format!("{v} is not a percentage from 1 to 100"),
                ))
            }
        };
        let positive = |key: &str, d: ConfigDuration| {
            if d.get().is_zero() {
                Err(ConfigError::new(key, "must be longer than 0s"))
            } else {
                Ok(d.get())
            }
        };
        let at_least_one = |key: &str, v: u32| {
            if v == 0 {
                Err(ConfigError::new(key, "must be at least 1"))
            } else {
                Ok(u64::from(v))
            }
        };
        let failure_rate = percent("failure_rate_threshold", config.failure_rate_threshold)?;
        let slow_rate = percent("slow_call_rate_threshold", config.slow_call_rate_threshold)?;
        let slow_call = positive("slow_call_duration", config.slow_call_duration)?;
        let window = positive("window", config.window)?;
        let minimum_calls = at_least_one("minimum_calls", config.minimum_calls)?;
        let open_duration = positive("open_duration", config.open_duration)?;
        let half_open_max = at_least_one("half_open_max_calls", config.half_open_max_calls)?;
        for (i, &s) in config.failure_statuses.iter().enumerate() {
            if !(100..=599).contains(&s) {
                return Err(ConfigError::new(
                    format!("failure_statuses[{i}]"),
                    format!("{s} is not an HTTP status from 100 to 599"),
                ));
            }
        }
        let classifier = if config.failure_statuses.is_empty() {
            HttpClassifier::default()
        } else {
            HttpClassifier::from_codes(&config.failure_statuses)
        };
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| RouteMatch::compile(i, &r.path, &r.methods))
            .collect::<Result<Vec<_>, _>>()?;
        let window_nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        Ok(Self {
            failure_rate,
            slow_rate,
            slow_call,
            bucket_nanos: (window_nanos / WINDOW_BUCKETS as u64).max(1),
            minimum_calls,
            open_duration,
            half_open_max,
            classifier,
            routes: routes.into(),
        })
    }
}
