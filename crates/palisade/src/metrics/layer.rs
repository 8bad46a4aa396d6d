use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    body::ResponseBody,
    registry::{Metrics, Recording},
};
use crate::{
    context::{RequestBody, RequestContext},
    rejection::Rejection,
};

/// Records every request into a [`Metrics`] registry. See the [module docs](super).
#[derive(Debug, Clone)]
#[must_use]
pub struct MetricsLayer {
    metrics: Option<Metrics>,
}

impl MetricsLayer {
    /// Records into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics: Some(metrics),
        }
    }

    /// Records into `metrics` when given, else passes requests through with the same
    /// service and body types (for stacks that switch metrics off by config).
    pub fn optional(metrics: Option<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = RecordMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RecordMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service made by [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct RecordMetrics<S> {
    inner: S,
    metrics: Option<Metrics>,
}

impl<S> RecordMetrics<S> {
    crate::macros::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RecordMetrics<S>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let Some(metrics) = &self.metrics else {
            return ResponseFuture {
                inner: self.inner.call(req.map(|b| RequestBody::new(b, None))),
                recording: None,
            };
        };
        let ctx = req.extensions().get::<RequestContext>().cloned();
        let recording = metrics.start(req.method(), req.uri().path(), ctx.clone());
        let req = req.map(|b| RequestBody::new(b, ctx.as_ref()));
        ResponseFuture {
            inner: self.inner.call(req),
            recording: Some(recording),
        }
    }
}

pin_project! {
    /// Response future of [`RecordMetrics`]. Dropped before the response (the client went
    /// away, a timeout outside): the request counts as status 499.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        recording: Option<Recording>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut recording = this.recording.take();
        Poll::Ready(match result {
            Ok(res) => {
                if let Some(r) = recording.as_mut() {
                    r.head(res.status(), res.extensions().get::<Rejection>());
                }
                Ok(res.map(|b| ResponseBody::new(b, recording)))
            }
            Err(e) => {
                // No response: hyper closes the connection. Counted as a 500.
                if let Some(r) = recording.as_mut() {
                    r.head(http::StatusCode::INTERNAL_SERVER_ERROR, None);
                }
                Err(e)
            }
        })
    }
}
