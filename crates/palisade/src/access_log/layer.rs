use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::{Method, Request, Response, Uri};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    AccessLogSink,
    body::{AccessLogBody, Entry},
};
use crate::context::{RequestBody, RequestContext};

/// Writes one access-log line per request. See the [module docs](super).
#[derive(Debug, Clone)]
#[must_use]
pub struct AccessLogLayer {
    enabled: bool,
    sink: AccessLogSink,
}

impl Default for AccessLogLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl AccessLogLayer {
    /// An enabled access log.
    pub fn new() -> Self {
        Self {
            enabled: true,
            sink: AccessLogSink::Tracing,
        }
    }

    /// Sends lines to `sink` instead of `tracing` events.
    pub fn with_sink(mut self, sink: AccessLogSink) -> Self {
        self.sink = sink;
        self
    }

    /// Switches logging on or off without changing the service's type.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            enabled: self.enabled,
            sink: self.sink.clone(),
        }
    }
}

/// The service made by [`AccessLogLayer`].
#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
    enabled: bool,
    sink: AccessLogSink,
}

impl<S> AccessLog<S> {
    crate::macros::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AccessLog<S>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    ResBody: http_body::Body,
{
    type Response = Response<AccessLogBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let ctx = if self.enabled {
            req.extensions().get::<RequestContext>().cloned()
        } else {
            None
        };
        let req = req.map(|b| RequestBody::new(b, ctx.as_ref()));
        let pending = ctx.map(|ctx| Pending {
            ctx,
            method: req.method().clone(),
            uri: req.uri().clone(),
            sink: self.sink.clone(),
        });
        ResponseFuture {
            inner: self.inner.call(req),
            pending,
        }
    }
}

struct Pending {
    ctx: RequestContext,
    method: Method,
    uri: Uri,
    sink: AccessLogSink,
}

pin_project! {
    /// Response future of [`AccessLog`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
{
    type Output = Result<Response<AccessLogBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let pending = this.pending.take();
        Poll::Ready(match result {
            Ok(res) => {
                let status = res.status();
                let entry = pending.map(|p| Entry::new(p.ctx, p.method, p.uri, status, p.sink));
                Ok(res.map(|b| AccessLogBody::new(b, entry)))
            }
            Err(e) => {
                // The inner service failed without a response: hyper closes the connection.
                if let Some(p) = pending {
                    drop(Entry::new(
                        p.ctx,
                        p.method,
                        p.uri,
                        http::StatusCode::INTERNAL_SERVER_ERROR,
                        p.sink,
                    ));
                }
                Err(e)
            }
        })
    }
}
