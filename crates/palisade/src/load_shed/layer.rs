//! [`LoadShedLayer`] and its service.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum_core::body::Body;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response, StatusCode, header};
use pin_project_lite::pin_project;
use tokio::{sync::OwnedSemaphorePermit, time::Instant};
use tower_layer::Layer;
use tower_service::Service;

use super::{
    LoadShedConfig,
    gate::{Gate, Shed, TryEnter},
};
use crate::{
    error::ConfigError,
    exempt::ExemptPaths,
    macros::define_inner_service_accessors,
    path_pattern::{RouteMatch, RouteRules},
    problem::Problem,
    rejection::Rejection,
};

/// The most slots one limit can have.
const MAX_SLOTS: usize = tokio::sync::Semaphore::MAX_PERMITS;

#[derive(Debug)]
struct Shared {
    global: Gate,
    routes: RouteRules<Arc<Gate>>,
    exempt: ExemptPaths,
    max_wait: Duration,
    retry_after: HeaderValue,
    retry_after_secs: u64,
}

/// Counts of the global limit, exact at the moment they are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadShedStats {
    /// Requests holding a slot.
    pub in_flight: usize,
    /// Requests waiting for one.
    pub queued: usize,
}

/// Sheds load beyond a concurrency limit and a bounded queue. See the [module docs](super).
#[derive(Debug, Clone)]
#[must_use]
pub struct LoadShedLayer {
    shared: Arc<Shared>,
}

fn check_slots(key: &str, n: usize) -> Result<(), ConfigError> {
    if n == 0 || n > MAX_SLOTS {
        return Err(ConfigError::new(
            key,
            format!("must be between 1 and {MAX_SLOTS}"),
        ));
    }
    Ok(())
}

impl LoadShedLayer {
    /// The limits from `config` (`enabled` is the caller's business); `exempt` paths are
    /// always served. Errors name the key.
    pub fn new(config: &LoadShedConfig, exempt: ExemptPaths) -> Result<Self, ConfigError> {
        check_slots("max_concurrency", config.max_concurrency)?;
        if config.max_queue > MAX_SLOTS {
            return Err(ConfigError::new(
                "max_queue",
                format!("must be at most {MAX_SLOTS}"),
            ));
        }
        crate::timeout::check_timeout("max_queue_wait", config.max_queue_wait)?;
        let retry_after_secs = config.retry_after.get().as_secs_f64().ceil().max(1.0) as u64;
        if config.retry_after.get() > Duration::from_secs(86_400) {
            return Err(ConfigError::new("retry_after", "must be at most 1 day"));
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            check_slots(&format!("routes[{i}].max_concurrency"), r.max_concurrency)?;
            routes.push((
                RouteMatch::compile(i, &r.path, &r.methods)?,
                Arc::new(Gate::new(r.max_concurrency, r.max_queue)),
            ));
        }
        Ok(Self {
            shared: Arc::new(Shared {
                global: Gate::new(config.max_concurrency, config.max_queue),
                routes: RouteRules::new(routes),
                exempt,
                max_wait: config.max_queue_wait.get(),
                retry_after: HeaderValue::from(retry_after_secs),
                retry_after_secs,
            }),
        })
    }

    /// The global limit's counts now.
    pub fn stats(&self) -> LoadShedStats {
        LoadShedStats {
            in_flight: self.shared.global.in_flight(),
            queued: self.shared.global.queued(),
        }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`LoadShedLayer`].
#[derive(Debug, Clone)]
pub struct LoadShed<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> LoadShed<S> {
    define_inner_service_accessors!();
}

impl<S, B> Service<Request<B>> for LoadShed<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = &self.shared;
        if shared.exempt.contains(req.uri().path()) {
            return ResponseFuture::running(self.inner.call(req), None, None);
        }
        let route = shared.routes.find(req.method(), req.uri().path());

        // Fast path: free slots, no waiting, no allocation.
        let route_permit = match route.map(|g| g.try_enter()) {
            None => None,
            Some(TryEnter::In(permit)) => Some(permit),
            Some(TryEnter::Shed(why)) => return ResponseFuture::reject(shed(shared, why)),
            Some(TryEnter::MustWait) => return self.wait(req, route.cloned(), None),
        };
        match shared.global.try_enter() {
            TryEnter::In(permit) => {
                ResponseFuture::running(self.inner.call(req), route_permit, Some(permit))
            }
            TryEnter::Shed(why) => ResponseFuture::reject(shed(shared, why)),
            TryEnter::MustWait => self.wait(req, None, route_permit),
        }
    }
}

impl<S> LoadShed<S> {
    /// Slow path: queue for the route slot (if `route` is given) and then a global slot,
    /// both within one `max_queue_wait`.
    fn wait<B>(
        &mut self,
        req: Request<B>,
        route: Option<Arc<Gate>>,
        route_permit: Option<OwnedSemaphorePermit>,
    ) -> ResponseFuture<S::Future, S::Error>
    where
        S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        B: Send + 'static,
    {
        // The ready service goes into the future; `self` keeps a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        ResponseFuture::waiting(Box::pin(async move {
            let deadline = Instant::now() + shared.max_wait;
            let route_permit = match (route, route_permit) {
                (Some(gate), _) => match gate.enter(deadline).await {
                    Ok(p) => Some(p),
                    Err(why) => return Ok(shed(&shared, why)),
                },
                (None, p) => p,
            };
            let permit = match shared.global.enter(deadline).await {
                Ok(p) => p,
                Err(why) => return Ok(shed(&shared, why)),
            };
            let res = inner.call(req).await;
            drop((permit, route_permit));
            res
        }))
    }
}

fn shed(shared: &Shared, why: Shed) -> Response<Body> {
    let (rejection, detail) = match why {
        Shed::QueueFull => (
            Rejection::QueueFull,
            "The server is at capacity and its queue is full.",
        ),
        Shed::WaitedTooLong => (
            Rejection::QueueTimeout,
            "The server is at capacity; the request waited too long for its turn.",
        ),
    };
    let mut res = Problem::new(StatusCode::SERVICE_UNAVAILABLE)
        .with_title("Server overloaded")
        .with_detail(format!("{detail} Retry in {} s.", shared.retry_after_secs))
        .with_extension("reason", rejection.reason().into())
        .with_rejection(rejection)
        .into_response();
    res.headers_mut()
        .insert(header::RETRY_AFTER, shared.retry_after.clone());
    res
}

pin_project! {
    /// The response future of [`LoadShed`].
    pub struct ResponseFuture<F, E> {
        #[pin]
        kind: Kind<F, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, E> {
        Reject { response: Option<Response<Body>> },
        Running {
            #[pin]
            future: F,
            // Released when the response head is ready, or when the request is dropped.
            permits: (Option<OwnedSemaphorePermit>, Option<OwnedSemaphorePermit>),
        },
        Waiting { future: BoxFuture<'static, Result<Response<Body>, E>> },
    }
}

impl<F, E> ResponseFuture<F, E> {
    fn reject(response: Response<Body>) -> Self {
        Self {
            kind: Kind::Reject {
                response: Some(response),
            },
        }
    }

    fn running(
        future: F,
        route: Option<OwnedSemaphorePermit>,
        global: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            kind: Kind::Running {
                future,
                permits: (route, global),
            },
        }
    }

    fn waiting(future: BoxFuture<'static, Result<Response<Body>, E>>) -> Self {
        Self {
            kind: Kind::Waiting { future },
        }
    }
}

impl<F, E> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Reject { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            KindProj::Running { future, permits } => {
                let res = std::task::ready!(future.poll(cx));
                *permits = (None, None);
                Poll::Ready(res)
            }
            KindProj::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}
