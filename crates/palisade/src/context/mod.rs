//! The request context: request id, correlation id, client IP, scheme and (once known) the
//! authenticated subject and matched route, readable anywhere while the request is served.
//!
//! [`RequestContextLayer`] creates a [`RequestContext`] for every request, puts it in the
//! request extensions and makes it the *current* context (a tokio task-local) while the inner
//! service runs, so handlers, logging and rejections deep in the stack can all read it without
//! threading it through arguments:
//!
//! ```
//! use palisade::context;
//!
//! async fn handler() -> String {
//!     let id = context::current().map(|c| c.request_id().to_string());
//!     id.unwrap_or_default()
//! }
//! ```
//!
//! The task-local does not cross `tokio::spawn`. Carry it with [`spawn`] (or
//! [`RequestContext::scope`]) and put the ids on outgoing calls with
//! [`RequestContext::inject`]:
//!
//! ```
//! # async fn demo() {
//! use palisade::context;
//! let handle = context::spawn(async {
//!     // same request id here as in the handler that spawned us
//!     context::current().map(|c| c.request_id().to_string())
//! });
//! let mut outgoing = http::HeaderMap::new();
//! // X-Request-ID, X-Correlation-ID; with the `otel` feature also traceparent/tracestate
//! context::inject_current(&mut outgoing);
//! # let _ = handle.await;
//! # }
//! ```
//!
//! Ordering: put [`RequestContextLayer`] outermost, so every other layer, the access log and
//! every problem response see the same ids.

mod body;
mod layer;

use std::{
    future::Future,
    net::IpAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use http::HeaderMap;

use crate::request_id::{RequestId, X_CORRELATION_ID, X_REQUEST_ID};

pub use body::RequestBody;
pub use layer::{RequestContextConfig, RequestContextLayer, RequestContextService, ResponseFuture};

tokio::task_local! {
    static CURRENT: RequestContext;
}

/// Everything known about the request being served. Cheap to clone (one `Arc`).
///
/// See the [module docs](self).
#[derive(Clone, Debug)]
pub struct RequestContext(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    request_id: RequestId,
    /// `None`: the same as the request id (no copy kept).
    correlation_id: Option<RequestId>,
    client_ip: Option<IpAddr>,
    https: bool,
    started: Instant,
    subject: OnceLock<Box<str>>,
    tier: OnceLock<Box<str>>,
    route: OnceLock<Box<str>>,
    request_body_bytes: AtomicU64,
    body_counted: AtomicBool,
    /// The request's server span, once the OpenTelemetry layer has started it.
    #[cfg(feature = "otel")]
    span: OnceLock<opentelemetry::trace::SpanContext>,
}

impl RequestContext {
    /// A context with the given ids; mostly for tests and for work not started by a request.
    pub fn new(request_id: RequestId, correlation_id: Option<RequestId>) -> Self {
        Self::build(request_id, correlation_id, None, false)
    }

    pub(crate) fn build(
        request_id: RequestId,
        correlation_id: Option<RequestId>,
        client_ip: Option<IpAddr>,
        https: bool,
    ) -> Self {
        Self(Arc::new(Inner {
            request_id,
            correlation_id,
            client_ip,
            https,
            started: Instant::now(),
            subject: OnceLock::new(),
            tier: OnceLock::new(),
            route: OnceLock::new(),
            request_body_bytes: AtomicU64::new(0),
            body_counted: AtomicBool::new(false),
            #[cfg(feature = "otel")]
            span: OnceLock::new(),
        }))
    }

    /// The request id (also the response's `X-Request-ID`).
    pub fn request_id(&self) -> &RequestId {
        &self.0.request_id
    }

    /// The correlation id: the caller's `X-Correlation-ID`, else the request id.
    pub fn correlation_id(&self) -> &RequestId {
        self.0.correlation_id.as_ref().unwrap_or(&self.0.request_id)
    }

    /// The client's address as resolved behind trusted proxies, when the peer is known.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.0.client_ip
    }

    /// Whether the client used HTTPS (own TLS, or a trusted proxy reports it).
    pub fn is_https(&self) -> bool {
        self.0.https
    }

    /// When the context was created (the request arrived).
    pub fn started(&self) -> Instant {
        self.0.started
    }

    /// The authenticated subject, once an auth layer has set it.
    pub fn subject(&self) -> Option<&str> {
        self.0.subject.get().map(|s| &**s)
    }

    /// Records the authenticated subject. The first value wins; later calls return `false`.
    pub fn set_subject(&self, subject: &str) -> bool {
        self.0.subject.set(subject.into()).is_ok()
    }

    /// The client's tier (`"pro"`, `"internal"`), once an auth layer has set it from a token
    /// claim or an API key record. Rate-limit policies can name other quotas per tier.
    pub fn tier(&self) -> Option<&str> {
        self.0.tier.get().map(|s| &**s)
    }

    /// Records the client's tier. The first value wins; later calls return `false`.
    pub fn set_tier(&self, tier: &str) -> bool {
        self.0.tier.set(tier.into()).is_ok()
    }

    /// The matched route template (`/items/{id}`), once the router has matched.
    pub fn route(&self) -> Option<&str> {
        self.0.route.get().map(|s| &**s)
    }

    /// Records the matched route template. The first value wins.
    pub fn set_route(&self, route: &str) -> bool {
        self.0.route.set(route.into()).is_ok()
    }

    /// Request body bytes read so far, when a layer counts them (the access log or metrics,
    /// through [`RequestBody`]); else 0.
    pub fn request_body_bytes(&self) -> u64 {
        self.0.request_body_bytes.load(Ordering::Relaxed)
    }

    /// `true` for the first caller only: that [`RequestBody`] counts the bytes.
    fn claim_body_count(&self) -> bool {
        !self.0.body_counted.swap(true, Ordering::Relaxed)
    }

    pub(crate) fn add_request_body_bytes(&self, n: u64) {
        self.0.request_body_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// The request's server span (trace id, span id, sampling), once
    /// [`OtelLayer`](crate::otel::OtelLayer) has started it.
    #[cfg(feature = "otel")]
    pub fn span_context(&self) -> Option<&opentelemetry::trace::SpanContext> {
        self.0.span.get()
    }

    /// Records the request's server span. The first value wins.
    #[cfg(feature = "otel")]
    pub(crate) fn set_span_context(&self, span: opentelemetry::trace::SpanContext) -> bool {
        self.0.span.set(span).is_ok()
    }

    /// Runs `fut` with this context as the current one.
    pub fn scope<F: Future>(&self, fut: F) -> tokio::task::futures::TaskLocalFuture<Self, F> {
        CURRENT.scope(self.clone(), fut)
    }

    /// Runs `f` with this context as the current one.
    pub fn sync_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self.clone(), f)
    }

    /// Sets `X-Request-ID` and `X-Correlation-ID` on an outgoing request's headers; with the
    /// `otel` feature, also `traceparent` (and `tracestate`) of this request's server span
    /// when [`OtelLayer`](crate::otel::OtelLayer) started one.
    ///
    /// [`inject_current`] is the same for the current request, but prefers the active
    /// OpenTelemetry span (a child span the caller entered) over the server span.
    pub fn inject(&self, headers: &mut HeaderMap) {
        self.inject_ids(headers);
        #[cfg(feature = "otel")]
        if let Some(span) = self.span_context() {
            crate::otel::inject(span, headers);
        }
    }

    /// `X-Request-ID` and `X-Correlation-ID` only: what responses carry.
    pub(crate) fn inject_ids(&self, headers: &mut HeaderMap) {
        let request_id = self.0.request_id.to_header_value();
        let correlation_id = match &self.0.correlation_id {
            Some(c) => c.to_header_value(),
            None => request_id.clone(),
        };
        headers.insert(X_REQUEST_ID, request_id);
        headers.insert(X_CORRELATION_ID, correlation_id);
    }
}

/// The current request's context, if called while a request is served (or inside
/// [`RequestContext::scope`]).
pub fn current() -> Option<RequestContext> {
    CURRENT.try_with(RequestContext::clone).ok()
}

/// Calls `f` with the current context without cloning it.
pub fn with_current<R>(f: impl FnOnce(&RequestContext) -> R) -> Option<R> {
    CURRENT.try_with(f).ok()
}

/// `tokio::spawn` that carries the current context (if any) into the new task.
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match current() {
        Some(ctx) => tokio::spawn(CURRENT.scope(ctx, fut)),
        None => tokio::spawn(fut),
    }
}

/// Injects the current context's ids into outgoing headers; no-op outside a request.
///
/// With the `otel` feature, also the `traceparent` and `tracestate` of the active span: the
/// OpenTelemetry span the caller entered, else the request's server span (which a task
/// started with [`spawn`] still sees). Without an active span no trace header is written.
pub fn inject_current(headers: &mut HeaderMap) {
    with_current(|c| c.inject_ids(headers));
    #[cfg(feature = "otel")]
    crate::otel::with_active_span(|span| crate::otel::inject(span, headers));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spawned_tasks_see_the_spawning_requests_context() {
        let ctx = RequestContext::new(RequestId::parse("abc").unwrap(), None);
        let seen = ctx
            .scope(async { spawn(async { current().map(|c| c.request_id().to_string()) }).await })
            .await
            .unwrap();
        assert_eq!(seen.as_deref(), Some("abc"));
    }

    #[tokio::test]
    async fn outside_a_request_there_is_no_context() {
        assert!(current().is_none());
        let mut h = HeaderMap::new();
        inject_current(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn the_correlation_id_defaults_to_the_request_id_and_both_are_injected() {
        let ctx = RequestContext::new(RequestId::parse("r1").unwrap(), None);
        let mut h = HeaderMap::new();
        ctx.sync_scope(|| inject_current(&mut h));
        assert_eq!(h["x-request-id"], "r1");
        assert_eq!(h["x-correlation-id"], "r1");
    }

    #[test]
    fn subject_and_route_are_set_once() {
        let ctx = RequestContext::new(RequestId::generate(), None);
        assert!(ctx.set_subject("alice"));
        assert!(!ctx.set_subject("mallory"));
        assert_eq!(ctx.subject(), Some("alice"));
        assert!(ctx.set_route("/items/{id}"));
        assert_eq!(ctx.route(), Some("/items/{id}"));
    }
}
