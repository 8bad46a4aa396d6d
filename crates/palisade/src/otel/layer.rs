use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::{Method, Request, Response, Version};
use opentelemetry::{
    KeyValue,
    trace::{Span as _, SpanBuilder, SpanKind, Status, TraceContextExt, Tracer as _},
};
use opentelemetry_sdk::trace::SdkTracer;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::context::RequestContext;

/// Starts a server span for every request. See the [module docs](super).
///
/// ```
/// use opentelemetry::trace::TracerProvider as _;
/// use opentelemetry_sdk::trace::SdkTracerProvider;
/// use palisade::otel::OtelLayer;
/// use tower::ServiceBuilder;
///
/// let provider = SdkTracerProvider::builder().build();
/// let svc = ServiceBuilder::new()
///     .layer(OtelLayer::new(provider.tracer("my-app")))
///     .service_fn(|_req: http::Request<()>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(()))
///     });
/// # let _ = svc;
/// ```
#[derive(Clone)]
#[must_use]
pub struct OtelLayer {
    tracer: SdkTracer,
}

impl std::fmt::Debug for OtelLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtelLayer").finish_non_exhaustive()
    }
}

impl OtelLayer {
    /// A layer whose spans `tracer` makes (its provider samples and exports them).
    /// [`OtelGuard::layer`](super::OtelGuard::layer) gives one for the provider [`init`](super::init) built.
    pub fn new(tracer: SdkTracer) -> Self {
        Self { tracer }
    }
}

impl<S> Layer<S> for OtelLayer {
    type Service = OtelService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OtelService {
            inner,
            tracer: self.tracer.clone(),
        }
    }
}

/// The service made by [`OtelLayer`].
#[derive(Clone)]
pub struct OtelService<S> {
    inner: S,
    tracer: SdkTracer,
}

impl<S: std::fmt::Debug> std::fmt::Debug for OtelService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtelService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> OtelService<S> {
    crate::macros::define_inner_service_accessors!();
}

/// The semantic-convention method name; `None` for a method outside the HTTP spec (reported
/// as `_OTHER`, with the original in `http.request.method_original`).
fn known_method(m: &Method) -> Option<&'static str> {
    Some(match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return None,
    })
}

fn protocol_version(v: Version) -> Option<&'static str> {
    Some(match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => return None,
    })
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for OtelService<S>
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
        let known = known_method(req.method());
        let method = known.unwrap_or("_OTHER");
        let parent = match super::extract(req.headers()) {
            Some(remote) => opentelemetry::Context::new().with_remote_span_context(remote),
            None => opentelemetry::Context::new(),
        };
        // Named by the method alone until the route is known (a static string: no allocation).
        let builder = SpanBuilder::from_name(method).with_kind(SpanKind::Server);
        let mut span = self.tracer.build_with_context(builder, &parent);
        let request_ctx = req.extensions().get::<RequestContext>().cloned();
        // Unsampled spans record nothing: build no attribute strings for them.
        if span.is_recording() {
            span.set_attribute(KeyValue::new("http.request.method", method));
            if known.is_none() {
                span.set_attribute(KeyValue::new(
                    "http.request.method_original",
                    req.method().as_str().to_owned(),
                ));
            }
            span.set_attribute(KeyValue::new("url.path", req.uri().path().to_owned()));
            let https = match &request_ctx {
                Some(c) => c.is_https(),
                None => req.uri().scheme() == Some(&http::uri::Scheme::HTTPS),
            };
            span.set_attribute(KeyValue::new(
                "url.scheme",
                if https { "https" } else { "http" },
            ));
            if let Some(v) = protocol_version(req.version()) {
                span.set_attribute(KeyValue::new("network.protocol.version", v));
            }
            if let Some(ip) = request_ctx.as_ref().and_then(RequestContext::client_ip) {
                span.set_attribute(KeyValue::new("client.address", ip.to_string()));
            }
            if let Some(ua) = req
                .headers()
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
            {
                span.set_attribute(KeyValue::new("user_agent.original", ua.to_owned()));
            }
        }
        if let Some(c) = &request_ctx {
            c.set_span_context(span.span_context().clone());
        }
        let otel_cx = parent.with_span(span);
        // Inner layers may log or reject synchronously in `call`: the span is current there too.
        let inner = {
            let _entered = otel_cx.clone().attach();
            self.inner.call(req)
        };
        ResponseFuture {
            inner,
            otel_cx,
            request_ctx,
            method,
        }
    }
}

pin_project! {
    /// Response future of [`OtelService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        otel_cx: opentelemetry::Context,
        request_ctx: Option<RequestContext>,
        method: &'static str,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.otel_cx.clone().attach();
            ready!(this.inner.poll(cx))
        };
        let span = this.otel_cx.span();
        if span.is_recording() {
            let route = this.request_ctx.as_ref().and_then(RequestContext::route);
            if let Some(route) = route {
                span.set_attribute(KeyValue::new("http.route", route.to_owned()));
                span.update_name(format!("{} {route}", this.method));
            }
            match &result {
                Ok(res) => {
                    let status = res.status();
                    span.set_attribute(KeyValue::new(
                        "http.response.status_code",
                        i64::from(status.as_u16()),
                    ));
                    // Server spans: 4xx is the client's error, not ours.
                    if status.is_server_error() {
                        span.set_attribute(KeyValue::new("error.type", status.as_str().to_owned()));
                        span.set_status(Status::error(""));
                    }
                }
                Err(_) => {
                    span.set_attribute(KeyValue::new("error.type", "_OTHER"));
                    span.set_status(Status::error(""));
                }
            }
        }
        span.end();
        Poll::Ready(result)
    }
}
