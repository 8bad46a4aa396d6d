//! [`TimeoutLayer`]: a deadline per request, `504` problem when it passes.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum_core::body::Body;
use http::{Method, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use super::{TimeoutConfig, check_timeout};
use crate::rejection::Rejection;
use crate::{
    error::ConfigError,
    macros::define_inner_service_accessors,
    path_pattern::{RouteMatch, RouteRules},
    problem::Problem,
};

#[derive(Debug)]
struct Rules {
    default: Duration,
    routes: RouteRules<Duration>,
}

impl Rules {
    fn deadline(&self, method: &Method, path: &str) -> Duration {
        self.routes
            .find(method, path)
            .copied()
            .unwrap_or(self.default)
    }
}

/// Drops the request's future and answers `504` when its deadline passes. See the
/// [module docs](super).
#[derive(Debug, Clone)]
#[must_use]
pub struct TimeoutLayer {
    rules: Arc<Rules>,
}

impl TimeoutLayer {
    /// Deadlines from `config` (`request` and `routes`); errors name the key.
    pub fn new(config: &TimeoutConfig) -> Result<Self, ConfigError> {
        check_timeout("request", config.request)?;
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            check_timeout(&format!("routes[{i}].request"), r.request)?;
            routes.push((
                RouteMatch::compile(i, &r.path, &r.methods)?,
                r.request.get(),
            ));
        }
        Ok(Self {
            rules: Arc::new(Rules {
                default: config.request.get(),
                routes: RouteRules::new(routes),
            }),
        })
    }

    /// One deadline for everything this layer wraps (a route or a router).
    pub fn after(deadline: Duration) -> Self {
        Self {
            rules: Arc::new(Rules {
                default: deadline,
                routes: RouteRules::none(),
            }),
        }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            rules: self.rules.clone(),
        }
    }
}

/// The service made by [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    rules: Arc<Rules>,
}

impl<S> Timeout<S> {
    define_inner_service_accessors!();
}

impl<S, B> Service<Request<B>> for Timeout<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let deadline = self.rules.deadline(req.method(), req.uri().path());
        ResponseFuture {
            inner: self.inner.call(req),
            sleep: tokio::time::sleep(deadline),
            deadline,
        }
    }
}

pin_project! {
    /// The response future of [`Timeout`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        deadline: Duration,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(res) = this.inner.poll(cx) {
            return Poll::Ready(res);
        }
        match this.sleep.poll(cx) {
            // The caller drops this future, and with it the handler's.
            Poll::Ready(()) => Poll::Ready(Ok(timed_out(*this.deadline))),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn timed_out(deadline: Duration) -> Response<Body> {
    Problem::new(StatusCode::GATEWAY_TIMEOUT)
        .with_title("Request timed out")
        .with_detail(format!(
            "The request did not complete within {} ms.",
            deadline.as_millis()
        ))
        .with_rejection(Rejection::Timeout)
        .into_response()
}
