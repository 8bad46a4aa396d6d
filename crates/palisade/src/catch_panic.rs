//! Panics in handlers become a 500 problem; the panic message is logged, never sent.
//!
//! tower-http's `CatchPanicLayer` does the same but changes the response body type to a boxed
//! body, which would cost every response an extra allocation once the stack converts back;
//! this layer keeps axum's [`Body`].
//!
//! ```
//! use palisade::catch_panic::CatchPanicLayer;
//!
//! let svc = tower::ServiceBuilder::new()
//!     .layer(CatchPanicLayer::new())
//!     .service_fn(|_r: http::Request<()>| async {
//!         if true { panic!("bug") }
//!         Ok::<_, std::convert::Infallible>(http::Response::new(axum_core::body::Body::empty()))
//!     });
//! # let _ = svc;
//! ```
//!
//! Ordering: innermost, right around the router, inside the request context (so the log line
//! carries the request id) and inside the access log (so the 500 is logged).

use std::{
    any::Any,
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    task::{Context, Poll},
};

use axum_core::body::Body;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::problem::Problem;
use crate::rejection::Rejection;

/// Turns panics into 500 problems. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
#[must_use]
pub struct CatchPanicLayer;

impl CatchPanicLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic { inner }
    }
}

/// The service made by [`CatchPanicLayer`].
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S> CatchPanic<S> {
    crate::macros::define_inner_service_accessors!();
}

impl<S, ReqBody> Service<Request<ReqBody>> for CatchPanic<S>
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
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(future) => ResponseFuture {
                inner: Some(future),
            },
            Err(panic) => {
                log_panic(&*panic);
                ResponseFuture { inner: None }
            }
        }
    }
}

pin_project! {
    /// Response future of [`CatchPanic`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(future) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(Ok(internal_error()));
        };
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => {
                log_panic(&*panic);
                this.inner.set(None);
                Poll::Ready(Ok(internal_error()))
            }
        }
    }
}

fn log_panic(panic: &(dyn Any + Send)) {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<non-string panic payload>");
    tracing::error!(panic = message, "handler panicked");
}

fn internal_error() -> Response<Body> {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR)
        .with_detail("the server hit an unexpected error; quote the request id when reporting it")
        .with_rejection(Rejection::Panic)
        .into_response()
}
