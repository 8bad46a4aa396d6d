//! [`RequestBodyTimeoutLayer`]: a client that stalls mid-body gets `408` and the connection
//! is closed.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum_core::body::Body;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::rejection::Rejection;
use crate::{
    macros::define_inner_service_accessors,
    problem::{Problem, close_connection},
};

/// Fails a request body that pauses longer than the idle timeout, and answers `408` with
/// `Connection: close` in place of whatever the handler answered. See the
/// [module docs](super).
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct RequestBodyTimeoutLayer {
    idle: Duration,
}

impl RequestBodyTimeoutLayer {
    /// At most `idle` between two pieces of a request body (and before the first).
    pub fn new(idle: Duration) -> Self {
        Self { idle }
    }
}

impl<S> Layer<S> for RequestBodyTimeoutLayer {
    type Service = RequestBodyTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestBodyTimeout {
            inner,
            idle: self.idle,
        }
    }
}

/// The service made by [`RequestBodyTimeoutLayer`].
#[derive(Debug, Clone)]
pub struct RequestBodyTimeout<S> {
    inner: S,
    idle: Duration,
}

impl<S> RequestBodyTimeout<S> {
    define_inner_service_accessors!();
}

impl<S, B> Service<Request<B>> for RequestBodyTimeout<S>
where
    S: Service<Request<TimeoutBody<B>>, Response = Response<Body>>,
    B: http_body::Body,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Requests without a body (most GETs) cost nothing more.
        let stalled = if req.body().is_end_stream() {
            None
        } else {
            Some(Arc::new(AtomicBool::new(false)))
        };
        let idle = self.idle;
        let flag = stalled.clone();
        let req = req.map(|inner| TimeoutBody {
            inner,
            idle,
            sleep: None,
            waiting: false,
            stalled: flag,
        });
        ResponseFuture {
            inner: self.inner.call(req),
            stalled,
            idle,
        }
    }
}

pin_project! {
    /// The response future of [`RequestBodyTimeout`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        stalled: Option<Arc<AtomicBool>>,
        idle: Duration,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.inner.poll(cx));
        if this
            .stalled
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Acquire))
        {
            return Poll::Ready(Ok(stalled(*this.idle)));
        }
        Poll::Ready(res)
    }
}

fn stalled(idle: Duration) -> Response<Body> {
    close_connection(
        Problem::new(StatusCode::REQUEST_TIMEOUT)
            .with_title("Request body timed out")
            .with_detail(format!(
                "The request body stalled for more than {} ms.",
                idle.as_millis()
            ))
            .with_rejection(Rejection::BodyTimeout)
            .into_response(),
    )
}

/// The error a [`TimeoutBody`] yields when the client stalls. The layer answers `408`
/// whatever the handler makes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyReadTimeout;

impl std::fmt::Display for BodyReadTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body read timed out")
    }
}

impl std::error::Error for BodyReadTimeout {}

/// The request body behind [`RequestBodyTimeoutLayer`]. The timer is allocated only when a
/// read actually has to wait, and reused after that.
pub struct TimeoutBody<B> {
    inner: B,
    idle: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// A read is pending and the timer runs.
    waiting: bool,
    stalled: Option<Arc<AtomicBool>>,
}

impl<B> std::fmt::Debug for TimeoutBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeoutBody")
            .field("idle", &self.idle)
            .field("waiting", &self.waiting)
            .finish_non_exhaustive()
    }
}

impl<B> http_body::Body for TimeoutBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum_core::BoxError>,
{
    type Data = Bytes;
    type Error = axum_core::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.waiting = false;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if !this.waiting {
            this.waiting = true;
            let deadline = Instant::now() + this.idle;
            match &mut this.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let sleep = this.sleep.as_mut().expect("armed above");
        if sleep.as_mut().poll(cx).is_ready() {
            if let Some(flag) = &this.stalled {
                flag.store(true, Ordering::Release);
            }
            return Poll::Ready(Some(Err(Box::new(BodyReadTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
