//! [`CircuitBreakerLayer`] (HTTP: a `503` problem while open) and [`ClientBreakerLayer`]
//! (any service: [`BreakerError::Open`] while open).

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use axum_core::body::Body;
use http::{HeaderValue, Request, Response, StatusCode, header::RETRY_AFTER};
use tower_layer::Layer;
use tower_service::Service;

use super::{
    BreakerOpen, CircuitBreaker, CircuitBreakerRouteConfig, Classify, ClientResponseFuture,
    ErrorClassifier, HttpClassifier, ResponseFuture, future::Guard,
};
use crate::rejection::Rejection;
use crate::{error::ConfigError, path_pattern::RouteMatch, problem::Problem};

/// The title of the `503` problem a refused request gets.
pub const CIRCUIT_OPEN_TITLE: &str = "Circuit open";

impl BreakerOpen {
    /// The response [`CircuitBreakerLayer`] answers a refused request with: a `503`
    /// problem titled "Circuit open" with `Retry-After` in whole seconds (at least 1).
    /// Also the way to answer when an outgoing call was refused.
    ///
    /// ```
    /// use palisade::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, Outcome};
    ///
    /// let config = CircuitBreakerConfig { minimum_calls: 1, ..Default::default() };
    /// let breaker = CircuitBreaker::new("geo", &config).unwrap();
    /// breaker.try_acquire().unwrap().record(Outcome::Failure);
    /// let refused = breaker.try_acquire().unwrap_err();
    /// let res = refused.to_response();
    /// assert_eq!(res.status(), 503);
    /// assert_eq!(res.headers()["retry-after"], "30");
    /// ```
    pub fn to_response(&self) -> Response<Body> {
        let secs = self.retry_after_secs();
        let mut res = Problem::new(StatusCode::SERVICE_UNAVAILABLE)
            .with_title(CIRCUIT_OPEN_TITLE)
            .with_detail(format!(
                "Requests here are paused after repeated failures; retry in {secs} second{}.",
                if secs == 1 { "" } else { "s" }
            ))
            .with_rejection(Rejection::CircuitOpen)
            .into_response();
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
        res
    }
}

impl axum_core::response::IntoResponse for BreakerOpen {
    fn into_response(self) -> axum_core::response::Response {
        self.to_response()
    }
}

/// A breaker around HTTP requests: the whole wrapped service, or the route group of the
/// breaker's config. See the [module docs](super).
#[derive(Clone)]
#[must_use]
pub struct CircuitBreakerLayer<C = HttpClassifier> {
    breaker: CircuitBreaker,
    /// `None`: the breaker's own `routes`.
    routes: Option<Arc<[RouteMatch]>>,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// Guards the route group of `breaker`'s config (everything if it has none), counting
    /// its `failure_statuses` (every 5xx by default) and errors as failures.
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self {
            classifier: breaker.http_classifier(),
            routes: None,
            breaker,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Guards these routes instead of the config's (empty: everything); errors name
    /// `routes[i].path` or `routes[i].methods`.
    ///
    /// ```
    /// use palisade::circuit_breaker::{
    ///     CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, CircuitBreakerRouteConfig,
    /// };
    ///
    /// let breaker = CircuitBreaker::new("search", &CircuitBreakerConfig::default()).unwrap();
    /// let layer = CircuitBreakerLayer::new(breaker).with_routes(&[CircuitBreakerRouteConfig {
    ///     path: "/search".into(),
    ///     methods: vec!["GET".into()],
    /// }]);
    /// assert!(layer.is_ok());
    /// ```
    pub fn with_routes(
        mut self,
        routes: &[CircuitBreakerRouteConfig],
    ) -> Result<Self, ConfigError> {
        let compiled = routes
            .iter()
            .enumerate()
            .map(|(i, r)| RouteMatch::compile(i, &r.path, &r.methods))
            .collect::<Result<Vec<_>, _>>()?;
        self.routes = Some(compiled.into());
        Ok(self)
    }

    /// Decides what counts as a failure with `classifier` instead.
    pub fn with_classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            routes: self.routes,
            classifier,
        }
    }

    /// The breaker, for health and metrics.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl<C> std::fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
            routes: self.routes.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// The service made by [`CircuitBreakerLayer`].
#[derive(Clone)]
pub struct CircuitBreakerService<S, C = HttpClassifier> {
    inner: S,
    breaker: CircuitBreaker,
    routes: Option<Arc<[RouteMatch]>>,
    classifier: C,
}

impl<S, C> CircuitBreakerService<S, C> {
    crate::macros::define_inner_service_accessors!();

    fn guards(&self, method: &http::Method, path: &str) -> bool {
        let routes = self.routes.as_deref().unwrap_or(self.breaker.routes());
        routes.is_empty() || routes.iter().any(|r| r.matches(method, path))
    }
}

impl<S: std::fmt::Debug, C> std::fmt::Debug for CircuitBreakerService<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreakerService")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, C, B> Service<Request<B>> for CircuitBreakerService<S, C>
where
    S: Service<Request<B>, Response = Response<Body>>,
    C: Classify<Response<Body>, S::Error> + Clone,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if !self.guards(req.method(), req.uri().path()) {
            return ResponseFuture::running(self.inner.call(req), None);
        }
        match self.breaker.try_acquire() {
            Ok(permit) => {
                let guard = Guard {
                    permit,
                    classifier: self.classifier.clone(),
                };
                ResponseFuture::running(self.inner.call(req), Some(guard))
            }
            Err(open) => ResponseFuture::rejected(open.to_response()),
        }
    }
}

/// A breaker around any service, outgoing calls in particular: fails with
/// [`BreakerError::Open`] while open. See the [module docs](super).
///
/// Around an HTTP client, count statuses too:
///
/// ```
/// use palisade::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, ClientBreakerLayer};
///
/// let breaker = CircuitBreaker::new("upstream", &CircuitBreakerConfig::default()).unwrap();
/// let layer = ClientBreakerLayer::new(breaker.clone()).with_classifier(breaker.http_classifier());
/// # let _ = layer;
/// ```
#[derive(Clone)]
#[must_use]
pub struct ClientBreakerLayer<C = ErrorClassifier> {
    breaker: CircuitBreaker,
    classifier: C,
}

impl ClientBreakerLayer {
    /// Any `Err` of the inner service is a failure, any `Ok` a success.
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self {
            breaker,
            classifier: ErrorClassifier,
        }
    }
}

impl<C> ClientBreakerLayer<C> {
    /// Decides what counts as a failure with `classifier` instead.
    pub fn with_classifier<C2>(self, classifier: C2) -> ClientBreakerLayer<C2> {
        ClientBreakerLayer {
            breaker: self.breaker,
            classifier,
        }
    }

    /// The breaker, for health and metrics.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl<C> std::fmt::Debug for ClientBreakerLayer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBreakerLayer")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, C: Clone> Layer<S> for ClientBreakerLayer<C> {
    type Service = ClientBreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientBreakerService {
            inner,
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// The service made by [`ClientBreakerLayer`].
#[derive(Clone)]
pub struct ClientBreakerService<S, C = ErrorClassifier> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
}

impl<S, C> ClientBreakerService<S, C> {
    crate::macros::define_inner_service_accessors!();
}

impl<S: std::fmt::Debug, C> std::fmt::Debug for ClientBreakerService<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBreakerService")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, C, R> Service<R> for ClientBreakerService<S, C>
where
    S: Service<R>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BreakerError<S::Error>;
    type Future = ClientResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(BreakerError::Inner)
    }

    fn call(&mut self, req: R) -> Self::Future {
        match self.breaker.try_acquire() {
            Ok(permit) => {
                let guard = Guard {
                    permit,
                    classifier: self.classifier.clone(),
                };
                ClientResponseFuture::running(self.inner.call(req), guard)
            }
            Err(open) => ClientResponseFuture::open(open),
        }
    }
}

/// The error of a call through a breaker: refused, or the call's own error.
#[derive(Debug)]
pub enum BreakerError<E> {
    /// The breaker refused the call; it did not run.
    Open(BreakerOpen),
    /// The call ran and failed.
    Inner(E),
}

impl<E> From<BreakerOpen> for BreakerError<E> {
    fn from(open: BreakerOpen) -> Self {
        Self::Open(open)
    }
}

impl<E: std::fmt::Display> std::fmt::Display for BreakerError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Open(open) => open.fmt(f),
            Self::Inner(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for BreakerError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Transparent: the inner error's own message is ours.
            Self::Inner(e) => e.source(),
            Self::Open(_) => None,
        }
    }
}
