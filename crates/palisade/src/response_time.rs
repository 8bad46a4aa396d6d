//! A timing header on every response: how long the server took to produce the response head,
//! as `Server-Timing: app;dur=1.234` (shown by browsers' developer tools) or
//! `X-Response-Time: 1.234ms`, in milliseconds.
//!
//! The clock starts when the request context was created (the request arrived), or when this
//! layer saw the request if there is no context. It tells clients how fast the server is,
//! which is why Palisade's server leaves it off in production by default.
//!
//! ```
//! use palisade::response_time::{ResponseTimeHeader, ResponseTimeLayer};
//!
//! let app: axum::Router = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "hi" }))
//!     .layer(ResponseTimeLayer::new(ResponseTimeHeader::ServerTiming));
//! # let _ = app;
//! ```

use std::{
    fmt::Write as _,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Instant,
};

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

use crate::context::RequestContext;

/// `Server-Timing` (W3C Server Timing).
pub const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");
/// `X-Response-Time`.
pub const X_RESPONSE_TIME: HeaderName = HeaderName::from_static("x-response-time");

/// Which timing header to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResponseTimeHeader {
    /// None.
    #[default]
    Off,
    /// `Server-Timing: app;dur=<ms>`.
    ServerTiming,
    /// `X-Response-Time: <ms>ms`.
    XResponseTime,
}

/// Adds the timing header. See the [module docs](self).
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct ResponseTimeLayer {
    header: ResponseTimeHeader,
}

impl ResponseTimeLayer {
    /// Sends `header` (nothing for [`ResponseTimeHeader::Off`]).
    pub fn new(header: ResponseTimeHeader) -> Self {
        Self { header }
    }
}

impl<S> Layer<S> for ResponseTimeLayer {
    type Service = ResponseTime<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResponseTime {
            inner,
            header: self.header,
        }
    }
}

/// The service made by [`ResponseTimeLayer`].
#[derive(Debug, Clone)]
pub struct ResponseTime<S> {
    inner: S,
    header: ResponseTimeHeader,
}

impl<S> ResponseTime<S> {
    crate::macros::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ResponseTime<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let started = (self.header != ResponseTimeHeader::Off).then(|| {
            req.extensions()
                .get::<RequestContext>()
                .map_or_else(Instant::now, RequestContext::started)
        });
        ResponseFuture {
            inner: self.inner.call(req),
            started,
            header: self.header,
        }
    }
}

pin_project! {
    /// Response future of [`ResponseTime`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        started: Option<Instant>,
        header: ResponseTimeHeader,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx))?;
        if let Some(started) = this.started {
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            let mut value = String::with_capacity(24);
            let name = match this.header {
                ResponseTimeHeader::ServerTiming => {
                    let _ = write!(value, "app;dur={ms:.3}");
                    SERVER_TIMING
                }
                _ => {
                    let _ = write!(value, "{ms:.3}ms");
                    X_RESPONSE_TIME
                }
            };
            if let Ok(v) = HeaderValue::try_from(value) {
                // Appended: a handler's own Server-Timing metrics stay.
                res.headers_mut().append(name, v);
            }
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt;

    use super::*;

    async fn header(kind: ResponseTimeHeader) -> http::HeaderMap {
        let svc = ResponseTimeLayer::new(kind).layer(tower::service_fn(|_r: Request<()>| async {
            Ok::<_, Infallible>(Response::new(()))
        }));
        svc.oneshot(Request::new(()))
            .await
            .unwrap()
            .headers()
            .clone()
    }

    #[tokio::test]
    async fn server_timing_carries_the_duration_in_milliseconds() {
        let h = header(ResponseTimeHeader::ServerTiming).await;
        let v = h[SERVER_TIMING].to_str().unwrap();
        let ms: f64 = v.strip_prefix("app;dur=").unwrap().parse().unwrap();
        assert!(ms >= 0.0, "{v}");
        assert!(h.get(X_RESPONSE_TIME).is_none());
    }

    #[tokio::test]
    async fn x_response_time_ends_in_ms_and_off_sends_nothing() {
        let h = header(ResponseTimeHeader::XResponseTime).await;
        let v = h[X_RESPONSE_TIME].to_str().unwrap();
        assert!(v.strip_suffix("ms").unwrap().parse::<f64>().is_ok(), "{v}");
        assert!(header(ResponseTimeHeader::Off).await.is_empty());
    }
}
