//! Request body size limits, enforced on the bytes that actually arrive, not on what
//! `Content-Length` promises.
//!
//! - `Content-Length` above the limit: a `413` problem before the handler runs; the body is
//!   never read.
//! - A malformed `Content-Length`, or several that disagree: a `400` problem.
//! - A body without a length (chunked), or longer than announced: the body the handler reads
//!   fails as soon as the limit is crossed, and whatever the handler answers is replaced by the
//!   `413` problem — a handler that swallows the read error cannot turn it into a 400 or a
//!   200. If the handler answers without reading the whole chunked body, the rest is read
//!   (up to the limit) before the answer goes out, so an oversized body is a `413` even then.
//! - Every `413` and `400` here carries `Connection: close`: the rest of an oversized body is
//!   never read.
//!
//! A global default (1 MiB) and per-route limits (first matching rule wins):
//!
//! ```
//! use palisade::body_limit::{BodyLimitConfig, BodyLimitLayer, BodyLimitRouteConfig};
//!
//! let config = BodyLimitConfig {
//!     routes: vec![BodyLimitRouteConfig {
//!         path: "/uploads/*".into(),
//!         methods: Vec::new(),
//!         max_bytes: 50 << 20,
//!     }],
//!     ..BodyLimitConfig::default()
//! };
//! let layer = BodyLimitLayer::new(&config).expect("valid rules");
//! let app: axum::Router = axum::Router::new()
//!     .route("/uploads/{name}", axum::routing::put(|body: bytes::Bytes| async move {
//!         body.len().to_string()
//!     }))
//!     .layer(layer);
//! # let _ = app;
//! ```
//!
//! Ordering: inside the request context (problems carry the request id), before anything
//! that reads the body (idempotency, the handler).

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use axum_core::body::Body;
use bytes::Bytes;
use futures_util::future::{BoxFuture, Either};
use http::{Method, Request, Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    error::ConfigError,
    future::RejectOr,
    path_pattern::{RouteMatch, RouteRules},
    problem::{Problem, close_connection},
    rejection::Rejection,
};

/// Default limit: 1 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;

/// One `[[body_limit.routes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyLimitRouteConfig {
    /// Path pattern: `/uploads/*`, `/items/{id}`.
    pub path: String,
    /// Methods this rule applies to; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// The limit for matching requests, in bytes.
    pub max_bytes: u64,
}

/// `[body_limit]`: the largest request body accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BodyLimitConfig {
    /// Bytes, for requests no rule matches. Default 1 MiB.
    pub max_bytes: u64,
    /// Per-route limits, first match wins.
    pub routes: Vec<BodyLimitRouteConfig>,
}

impl Default for BodyLimitConfig {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            routes: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct Rules {
    default: u64,
    routes: RouteRules<u64>,
}

impl Rules {
    fn limit(&self, method: &Method, path: &str) -> u64 {
        self.routes
            .find(method, path)
            .copied()
            .unwrap_or(self.default)
    }
}

/// Enforces the body limits. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct BodyLimitLayer {
    rules: Arc<Rules>,
}

impl BodyLimitLayer {
    /// The limits from `config`; errors name the key.
    pub fn new(config: &BodyLimitConfig) -> Result<Self, ConfigError> {
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            routes.push((RouteMatch::compile(i, &r.path, &r.methods)?, r.max_bytes));
        }
        Ok(Self {
            rules: Arc::new(Rules {
                default: config.max_bytes,
                routes: RouteRules::new(routes),
            }),
        })
    }

    /// One limit for everything this layer wraps (a route or router).
    pub fn max(bytes: u64) -> Self {
        Self {
            rules: Arc::new(Rules {
                default: bytes,
                routes: RouteRules::none(),
            }),
        }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyLimitService {
            inner,
            rules: self.rules.clone(),
        }
    }
}

/// The service made by [`BodyLimitLayer`].
#[derive(Debug, Clone)]
pub struct BodyLimitService<S> {
    inner: S,
    rules: Arc<Rules>,
}

/// The response future of [`BodyLimitService`].
pub type ResponseFuture<F, E> = RejectOr<Either<F, BoxFuture<'static, Result<Response<Body>, E>>>>;

impl<S, B> Service<Request<B>> for BodyLimitService<S>
where
    S: Service<Request<LimitedBody<B>>, Response = Response<Body>>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<axum_core::BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let limit = self.rules.limit(req.method(), req.uri().path());
        let Ok(announced) = content_length(req.headers()) else {
            return RejectOr::reject(malformed_length());
        };
        if announced.is_some_and(|n| n > limit) {
            return RejectOr::reject(too_large(limit));
        }
        let chunked = announced.is_none() && !req.body().is_end_stream();
        if !chunked {
            // The length is known and within the limit (the server enforces it); the
            // counter still stops a body longer than announced.
            let req = req.map(|b| LimitedBody::new(b, limit, None));
            return RejectOr::inner(Either::Left(self.inner.call(req)));
        }
        let shared = Arc::new(Shared {
            over: AtomicBool::new(false),
            read: AtomicU64::new(0),
            rest: Mutex::new(None),
        });
        let req = req.map(|b| LimitedBody::new(b, limit, Some(shared.clone())));
        let future = self.inner.call(req);
        RejectOr::inner(Either::Right(Box::pin(async move {
            let res = future.await?;
            if shared.over.load(Ordering::Acquire) {
                return Ok(too_large(limit));
            }
            // The handler answered without reading the whole body: read the rest (within
            // the limit) so an oversized body is refused all the same.
            let rest = shared
                .rest
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(rest) = rest {
                let allowed = limit.saturating_sub(shared.read.load(Ordering::Acquire));
                let allowed = usize::try_from(allowed).unwrap_or(usize::MAX);
                if let Err(e) = Limited::new(rest, allowed).collect().await {
                    if e.is::<LengthLimitError>() {
                        return Ok(too_large(limit));
                    }
                }
            }
            Ok(res)
        })))
    }
}

/// The one `Content-Length`, `None` without one; `Err` when malformed or contradictory.
pub(crate) fn content_length(headers: &http::HeaderMap) -> Result<Option<u64>, ()> {
    let mut found = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        // A list (`5, 5`) is allowed by RFC 9110 if all members agree.
        for part in value.to_str().map_err(|_| ())?.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            let n: u64 = part.parse().map_err(|_| ())?;
            if found.is_some_and(|f| f != n) {
                return Err(());
            }
            found = Some(n);
        }
    }
    Ok(found)
}

fn too_large(limit: u64) -> Response<Body> {
    close_connection(
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE)
            .with_detail(format!("The request body may have at most {limit} bytes."))
            .with_rejection(Rejection::BodyTooLarge)
            .into_response(),
    )
}

fn malformed_length() -> Response<Body> {
    close_connection(
        Problem::new(StatusCode::BAD_REQUEST)
            .with_detail(
                "Content-Length is malformed, or given several times with different values.",
            )
            .with_rejection(Rejection::MalformedLength)
            .into_response(),
    )
}

/// The error a [`LimitedBody`] yields once the limit is crossed. The layer answers `413`
/// whatever the handler makes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body too large")
    }
}

impl std::error::Error for BodyTooLarge {}

/// Per chunked request: whether the limit was crossed, bytes read, and the unread rest of
/// the body if the handler dropped it early.
struct Shared<B> {
    over: AtomicBool,
    read: AtomicU64,
    rest: Mutex<Option<B>>,
}

/// The request body behind [`BodyLimitLayer`]: fails with a length-limit error once more
/// than the limit has arrived.
pub struct LimitedBody<B> {
    inner: Option<B>,
    remaining: u64,
    ended: bool,
    shared: Option<Arc<Shared<B>>>,
}

impl<B> LimitedBody<B> {
    fn new(inner: B, limit: u64, shared: Option<Arc<Shared<B>>>) -> Self {
        Self {
            inner: Some(inner),
            remaining: limit,
            ended: false,
            shared,
        }
    }
}

impl<B> std::fmt::Debug for LimitedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitedBody")
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl<B> Drop for LimitedBody<B> {
    fn drop(&mut self) {
        if let (false, Some(shared), Some(inner)) = (self.ended, &self.shared, self.inner.take()) {
            *shared.rest.lock().unwrap_or_else(PoisonError::into_inner) = Some(inner);
        }
    }
}

impl<B> http_body::Body for LimitedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum_core::BoxError>,
{
    type Data = Bytes;
    type Error = axum_core::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match std::task::ready!(Pin::new(inner).poll_frame(cx)) {
            None => {
                this.ended = true;
                return Poll::Ready(None);
            }
            Some(Err(e)) => {
                this.ended = true;
                return Poll::Ready(Some(Err(e.into())));
            }
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref() {
            let n = data.len() as u64;
            if n > this.remaining {
                this.ended = true;
                if let Some(shared) = &this.shared {
                    shared.over.store(true, Ordering::Release);
                }
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
            }
            this.remaining -= n;
            if let Some(shared) = &this.shared {
                shared.read.fetch_add(n, Ordering::AcqRel);
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}
