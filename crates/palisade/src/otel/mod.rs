//! OpenTelemetry tracing: one server span per request, W3C trace context in and out, OTLP
//! export over HTTP/protobuf, and the trace ids in every log line.
//!
//! - [`init`] builds the tracer provider (parent-based ratio sampling, a batch processor, OTLP
//!   over HTTP to [`OtelConfig::endpoint`]) and returns an [`OtelGuard`] that flushes the
//!   spans still buffered when it is dropped.
//! - [`OtelLayer`] starts a `SERVER` span for each request. A valid incoming `traceparent`
//!   (and its `tracestate`) makes it a child of the caller's span; anything else (absent,
//!   repeated, malformed) starts a fresh trace and never fails the request. The span carries
//!   the HTTP semantic-convention attributes (`http.request.method`, `url.path`, `url.scheme`,
//!   `http.route`, `http.response.status_code`, `client.address`, `user_agent.original`,
//!   `network.protocol.version`), is named `{method} {route}`, and ends with an error status
//!   on a 5xx. Unsampled spans record nothing but still propagate.
//! - The span's ids go into the [`RequestContext`](crate::context::RequestContext): the log
//!   formatter ([`ContextFormat`](crate::logging::ContextFormat)) and the access log write
//!   `trace_id` and `span_id` on every line of the request, and
//!   [`context::inject_current`](crate::context::inject_current) puts `traceparent` and
//!   `tracestate` on outgoing requests, next to `X-Request-ID` and `X-Correlation-ID`.
//! - While the request's future runs, the span is the current OpenTelemetry
//!   [`Context`](opentelemetry::Context): spans started by handlers with the
//!   `opentelemetry` API (after [`OtelGuard::set_global`], `global::tracer(..)`) are its
//!   children, and handlers can add attributes to it through `Context::current().span()`.
//!
//! ```
//! use palisade::context::{RequestContextConfig, RequestContextLayer};
//! use palisade::otel::{self, OtelConfig};
//! use tower::ServiceBuilder;
//!
//! # fn build() -> Result<(), palisade::error::ConfigError> {
//! let guard = otel::init(&OtelConfig {
//!     enabled: true,
//!     endpoint: "http://127.0.0.1:4318/v1/traces".into(),
//!     ..OtelConfig::default()
//! })?;
//! let app: axum::Router = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
//! let service = ServiceBuilder::new()
//!     .layer(RequestContextLayer::new(&RequestContextConfig::default()))
//!     .layer(guard.layer())
//!     .service(app);
//! # let _ = service;
//! // Keep `guard` alive while serving; dropping it exports what is still buffered.
//! drop(guard);
//! # Ok(()) }
//! ```
//!
//! Ordering: right inside [`RequestContextLayer`](crate::context::RequestContextLayer), so the
//! span covers every other layer (rejections included) and every log line of the request can
//! carry its ids. The route template is read from
//! [`RequestContext::route`](crate::context::RequestContext::route) when the response is
//! ready, so something inside must record it (the server's route layer does).
//!
//! Cost: when the config switch is off, install no layer: nothing is parsed and no span is
//! made. When on, a request costs the header parse (no allocation without `tracestate`), one
//! span, and, only for sampled requests, its attribute strings.
//!
//! Caveats: the span ends when the response head is ready, so a streamed body's time is not
//! in it. The built-in exporter speaks plain `http://` (a collector or agent next to the
//! server); the SDK still reads the `OTEL_BSP_*` batch settings and
//! `OTEL_EXPORTER_OTLP_HEADERS` from the environment. `tracing` spans are not bridged.

mod export;
mod layer;
mod propagation;

pub use export::{OtelGuard, init, init_with_exporter};
pub use layer::{OtelLayer, OtelService, ResponseFuture};
pub use propagation::{TRACEPARENT, TRACESTATE, current_span_context, extract, inject};

pub(crate) use propagation::with_active_span;

use serde::{Deserialize, Serialize};

use crate::{duration::ConfigDuration, error::ConfigError};

/// The default OTLP/HTTP traces endpoint: a collector on this host.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4318/v1/traces";

/// `[otel]`: OpenTelemetry tracing. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtelConfig {
    /// Off: no layer, no exporter, no span (the caller decides whether to install the
    /// layer). Default `false`.
    pub enabled: bool,
    /// OTLP/HTTP (protobuf) traces endpoint, the full URL including `/v1/traces`. Plain
    /// `http://` only. Default `http://127.0.0.1:4318/v1/traces`.
    pub endpoint: String,
    /// The `service.name` resource attribute. Default `palisade`.
    pub service_name: String,
    /// Fraction of new traces sampled, `0.0`–`1.0`. Parent-based: a request whose caller
    /// sent a `traceparent` follows the caller's decision. Default `1.0`.
    pub sample_ratio: f64,
    /// Longest wait for the collector per export (and for the final flush). Default `10s`.
    pub export_timeout: ConfigDuration,
}

impl Default for OtelConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: DEFAULT_ENDPOINT.to_owned(),
            service_name: "palisade".to_owned(),
            sample_ratio: 1.0,
            export_timeout: ConfigDuration::secs(10),
        }
    }
}

impl OtelConfig {
    /// Checks every value (whether or not `enabled`); the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::new(
                "sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        if self.service_name.trim().is_empty() {
            return Err(ConfigError::new("service_name", "must not be empty"));
        }
        crate::timeout::check_timeout("export_timeout", self.export_timeout)?;
        let uri: http::Uri = self.endpoint.parse().map_err(|_| {
            ConfigError::new(
                "endpoint",
                "is not a URL; expected e.g. \"http://127.0.0.1:4318/v1/traces\"",
            )
        })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(ConfigError::new(
                "endpoint",
                "expected an http:// URL with a host, e.g. \"http://127.0.0.1:4318/v1/traces\" \
                 (send to a local collector or agent; https is not built in)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_off() {
        let c = OtelConfig::default();
        assert!(!c.enabled);
        assert_eq!(c.endpoint, DEFAULT_ENDPOINT);
        c.validate().unwrap();
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases = [
            (
                OtelConfig {
                    sample_ratio: 1.5,
                    ..OtelConfig::default()
                },
                "sample_ratio",
            ),
            (
                OtelConfig {
                    sample_ratio: f64::NAN,
                    ..OtelConfig::default()
                },
                "sample_ratio",
            ),
            (
                OtelConfig {
                    service_name: " ".into(),
                    ..OtelConfig::default()
                },
                "service_name",
            ),
            (
                OtelConfig {
                    endpoint: "https://collector:4318/v1/traces".into(),
                    ..OtelConfig::default()
                },
                "endpoint",
            ),
            (
                OtelConfig {
                    endpoint: "collector:4318".into(),
                    ..OtelConfig::default()
                },
                "endpoint",
            ),
            (
                OtelConfig {
                    endpoint: "not a url".into(),
                    ..OtelConfig::default()
                },
                "endpoint",
            ),
            (
                OtelConfig {
                    export_timeout: ConfigDuration::secs(0),
                    ..OtelConfig::default()
                },
                "export_timeout",
            ),
        ];
        for (config, key) in cases {
            assert_eq!(config.validate().unwrap_err().key, key, "{config:?}");
        }
    }
}
