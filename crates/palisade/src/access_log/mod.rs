//! One access-log line per request, written when the response body is finished.
//!
//! The line is a `tracing` event with target `palisade::access` at `INFO` and the fields
//! `request_id`, `correlation_id`, `method`, `route` (the matched template, or `-`), `path` (no query string:
//! queries often hold tokens), `status`, `duration_ms`, `request_bytes` (body bytes read, counted by the context layer),
//! `response_bytes` (body bytes sent), `client_ip`, `subject` (the authenticated caller, when known) and `completed` (`false` when the client went
//! away before the body was sent), plus `trace_id` and `span_id` of the request's server span
//! when the `otel` feature's layer started one. Headers are never logged, so `Authorization`, `Cookie`,
//! `Set-Cookie` and API keys cannot leak through it.
//!
//! By default the line is a `tracing` event, so any subscriber can take it. With
//! [`AccessLogSink::Json`] the layer formats the same members straight into a reused buffer
//! and hands the line to a [`BatchWriter`](crate::logging::BatchWriter): no event dispatch, no
//! field visitors, about a third of the cost. Palisade's server does this for JSON logs.
//!
//! The line is written when the response body ends or is dropped, so `duration_ms` and
//! `response_bytes` cover streaming bodies too. Nothing is formatted on the request path: the
//! fields are recorded by reference and formatted by the subscriber (Palisade's
//! [`logging`](crate::logging) formatter writes through a background thread).
//!
//! ```
//! use palisade::{access_log::AccessLogLayer, context::{RequestContextConfig, RequestContextLayer}};
//!
//! let svc = tower::ServiceBuilder::new()
//!     .layer(RequestContextLayer::new(&RequestContextConfig::default()))
//!     .layer(AccessLogLayer::new())
//!     .service_fn(|_r: http::Request<axum_core::body::Body>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(axum_core::body::Body::empty()))
//!     });
//! # let _ = svc;
//! ```
//!
//! Ordering: directly inside [`RequestContextLayer`](crate::context::RequestContextLayer), so
//! every rejection by a later layer is logged with its final status.

mod body;
mod layer;
mod sink;

pub use body::AccessLogBody;
pub use layer::{AccessLog, AccessLogLayer, ResponseFuture};
pub use sink::AccessLogSink;

/// The `tracing` target of access-log events.
pub const TARGET: &str = "palisade::access";
