use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{HeaderMap, Request, Response};
use pin_project_lite::pin_project;
use serde::Deserialize;
use tokio::task::futures::TaskLocalFuture;
use tower_layer::Layer;
use tower_service::Service;

use super::RequestContext;
use crate::{
    client_ip::{ClientIpConfig, ConnectionInfo, TrustedProxies},
    request_id::{RequestId, X_CORRELATION_ID, X_REQUEST_ID},
};

/// Configuration for [`RequestContextLayer`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestContextConfig {
    /// Keep a valid incoming `X-Request-ID` (`true`) or always generate a fresh one.
    pub trust_incoming_request_id: bool,
    /// Client-IP resolution.
    pub client_ip: ClientIpConfig,
}

impl Default for RequestContextConfig {
    fn default() -> Self {
        Self {
            trust_incoming_request_id: true,
            client_ip: ClientIpConfig::default(),
        }
    }
}

/// Creates the [`RequestContext`] of every request. See the [module docs](super).
///
/// ```
/// use palisade::context::{RequestContextConfig, RequestContextLayer};
/// use tower::ServiceBuilder;
///
/// let layer = RequestContextLayer::new(&RequestContextConfig::default());
/// let svc = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// });
/// # let _ = svc;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RequestContextLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    trust_incoming: bool,
    proxies: TrustedProxies,
}

impl RequestContextLayer {
    /// Builds the layer from its config.
    pub fn new(config: &RequestContextConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                trust_incoming: config.trust_incoming_request_id,
                proxies: TrustedProxies::new(&config.client_ip),
            }),
        }
    }
}

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContextService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`RequestContextLayer`].
#[derive(Debug, Clone)]
pub struct RequestContextService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> RequestContextService<S> {
    crate::macros::define_inner_service_accessors!();
}

/// The single valid value of a header, or `None` when absent, repeated or invalid.
fn single_id(headers: &HeaderMap, name: &http::HeaderName) -> Option<RequestId> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    RequestId::from_header(first)
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestContextService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let headers = req.headers();
        let incoming = if self.shared.trust_incoming {
            single_id(headers, &X_REQUEST_ID)
        } else {
            None
        };
        let request_id = incoming.unwrap_or_else(RequestId::generate);
        let correlation_id = single_id(headers, &X_CORRELATION_ID);
        let resolved = req
            .extensions()
            .get::<ConnectionInfo>()
            .map(|c| self.shared.proxies.resolve(c.peer.ip(), c.tls, headers));
        let ctx = RequestContext::build(
            request_id,
            correlation_id,
            resolved.map(|r| r.ip),
            resolved.is_some_and(|r| r.https),
        );
        // The ids are read from the context, not from request headers: a handler or a proxy
        // that needs them as headers calls `RequestContext::inject`.
        req.extensions_mut().insert(ctx.clone());
        // `call` of inner layers may reject synchronously: let them see the context too.
        let inner = ctx.sync_scope(|| self.inner.call(req));
        ResponseFuture {
            inner: ctx.scope(inner),
            ctx,
        }
    }
}

pin_project! {
    /// Response future of [`RequestContextService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: TaskLocalFuture<RequestContext, F>,
        ctx: RequestContext,
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
        // Ids only: a `traceparent` belongs on outgoing requests, not on responses.
        this.ctx.inject_ids(res.headers_mut());
        Poll::Ready(Ok(res))
    }
}
