//! Turns bare error responses into problems, so a client sees one error format whatever
//! produced the error.
//!
//! A response with status 400 or above whose body is empty or `text/plain` (axum's own
//! rejections: unknown route without a fallback, wrong method, malformed JSON; tower-http
//! layers' empty 408/413) gets its body replaced by a [`Problem`] for the same status. Other
//! headers (`Allow`, `Retry-After`, `WWW-Authenticate`) are kept. Responses that are already
//! `application/problem+json`, or carry any other content type the handler chose, pass
//! untouched. A plain-text body is dropped rather than echoed: it may hold internal detail.
//!
//! ```
//! use palisade::problem_fallback::ProblemFallbackLayer;
//!
//! let svc = tower::ServiceBuilder::new()
//!     .layer(ProblemFallbackLayer::new())
//!     .service_fn(|_r: http::Request<()>| async {
//!         let mut res = http::Response::new(axum_core::body::Body::empty());
//!         *res.status_mut() = http::StatusCode::METHOD_NOT_ALLOWED;
//!         Ok::<_, std::convert::Infallible>(res)
//!     });
//! # let _ = svc;
//! ```
//!
//! Ordering: inside the request context (for the request id) and outside every layer or
//! router that may answer with a bare status.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use axum_core::body::Body;
use http::{HeaderValue, Request, Response, header};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::problem::{PROBLEM_JSON, Problem};

/// Replaces bare error bodies with problems. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
#[must_use]
pub struct ProblemFallbackLayer;

impl ProblemFallbackLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for ProblemFallbackLayer {
    type Service = ProblemFallback<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ProblemFallback { inner }
    }
}

/// The service made by [`ProblemFallbackLayer`].
#[derive(Debug, Clone)]
pub struct ProblemFallback<S> {
    inner: S,
}

impl<S> ProblemFallback<S> {
    crate::macros::define_inner_service_accessors!();
}

impl<S, ReqBody> Service<Request<ReqBody>> for ProblemFallback<S>
where
    S: Service<Request<ReqBody>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// Response future of [`ProblemFallback`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
    }
}

/// Whether `headers` describe a body we should replace.
fn is_bare(headers: &http::HeaderMap) -> bool {
    match headers.get(header::CONTENT_TYPE) {
        None => true,
        Some(ct) => {
            let ct = ct.as_bytes();
            ct.len() >= 10 && ct[..10].eq_ignore_ascii_case(b"text/plain")
        }
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = ready!(self.project().inner.poll(cx))?;
        let status = res.status();
        if status.as_u16() < 400 || !is_bare(res.headers()) {
            return Poll::Ready(Ok(res));
        }
        let (mut parts, _bare) = res.into_parts();
        let body = Problem::new(status).to_json();
        parts.headers.insert(header::CONTENT_TYPE, PROBLEM_JSON);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        Poll::Ready(Ok(Response::from_parts(parts, Body::from(body))))
    }
}
