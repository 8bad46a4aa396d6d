//! [`Gateway`]: the service that forwards matched requests to their upstream.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum_core::body::Body;
use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
    header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING, UPGRADE},
    uri::PathAndQuery,
};
use http_body::Body as HttpBody;
use http_body_util::BodyExt as _;
use hyper::client::conn::http1::SendRequest;

use crate::{
    circuit_breaker::Outcome,
    client_ip::{ClientIpConfig, ConnectionInfo, TrustedProxies},
    context::RequestContext,
    error::ConfigError,
    problem::Problem,
    rejection::Rejection,
};

use super::{
    HostHeader, UpstreamConfig,
    body::{Lease, Prepended, SignalEnd, UpstreamBody},
    headers::{self, Hop},
    pool::ConnectError,
    upstream::Upstream,
};

/// One prefix rule.
#[derive(Debug)]
struct Route {
    /// Without a trailing `/`; `""` takes every path.
    prefix: Box<str>,
    methods: Box<[Method]>,
    /// Lower case, without a port.
    host: Option<Box<str>>,
    strip_prefix: bool,
    host_header: HostHeader,
    websocket: bool,
    /// The route label for the request context (and so metrics and logs).
    label: Box<str>,
    upstream: Arc<Upstream>,
}

impl Route {
    fn matches(&self, method: &Method, host: Option<&str>, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && self
                .host
                .as_deref()
                .is_none_or(|h| host.is_some_and(|got| host_eq(h, got)))
            && strip(&self.prefix, path).is_some()
    }
}

/// `path` without `prefix` (`""` or starting with `/`), when `prefix` covers it on whole
/// segments.
fn strip<'p>(prefix: &str, path: &'p str) -> Option<&'p str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Whether the request's host (`Host: Api.Example:8080`) is `want` (`api.example`).
fn host_eq(want: &str, got: &str) -> bool {
    let got = match got.rsplit_once(':') {
        Some((h, port))
            if port.bytes().all(|b| b.is_ascii_digit())
                && (h.ends_with(']') || !h.contains(':')) =>
        {
            h
        }
        _ => got,
    };
    got.eq_ignore_ascii_case(want)
}

struct Inner {
    routes: Box<[Route]>,
    trusted: TrustedProxies,
}

/// Forwards requests to upstream HTTP services by path prefix. See the
/// [module docs](super).
#[derive(Clone)]
pub struct Gateway(Arc<Inner>, fn() -> Response<Body>);

/// The answer for a request no prefix takes, unless [`Gateway::with_not_found`] says.
fn default_not_found() -> Response<Body> {
    Problem::new(StatusCode::NOT_FOUND)
        .with_detail("No upstream serves this path.")
        .into_response()
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field(
                "routes",
                &self.0.routes.iter().map(|r| &r.prefix).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// An upstream's state, for metrics and readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamStatus {
    /// The upstream's name.
    pub name: String,
    /// Per URL: the URL, whether it is ejected now, and its idle pooled connections.
    pub urls: Vec<(String, bool, usize)>,
}

impl Gateway {
    /// Builds the routes of `upstreams` (longest prefix first; with equal prefixes, the
    /// order given). `client_ip` says whose forwarding headers to keep and extend. Errors
    /// name the key (`upstreams[1].urls[0]`).
    pub fn new(
        upstreams: &[UpstreamConfig],
        client_ip: &ClientIpConfig,
    ) -> Result<Self, ConfigError> {
        let mut routes = Vec::with_capacity(upstreams.len());
        for (i, config) in upstreams.iter().enumerate() {
            let keyed =
                |e: ConfigError| ConfigError::new(format!("upstreams[{i}].{}", e.key), e.message);
            let upstream = Arc::new(Upstream::new(config).map_err(keyed)?);
            let methods = crate::path_pattern::parse_methods(&config.methods)
                .map_err(|m| keyed(ConfigError::new("methods", m)))?;
            routes.push(Route {
                prefix: config.prefix.trim_end_matches('/').into(),
                methods,
                host: config
                    .host
                    .as_deref()
                    .map(|h| h.trim().to_ascii_lowercase().into()),
                strip_prefix: config.strip_prefix,
                host_header: config.host_header.clone(),
                websocket: config.websocket,
                label: config.route_label().into(),
                upstream,
            });
        }
        // Longest prefix first; `sort_by` is stable, so equal prefixes keep their order.
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(Self(
            Arc::new(Inner {
                routes: routes.into(),
                trusted: TrustedProxies::new(client_ip),
            }),
            default_not_found,
        ))
    }

    /// Answers requests no prefix takes with `not_found` (an application's own 404), so the
    /// gateway can be a router's whole fallback.
    #[must_use]
    pub fn with_not_found(mut self, not_found: fn() -> Response<Body>) -> Self {
        self.1 = not_found;
        self
    }

    /// Whether some upstream takes this request.
    pub fn matches<B>(&self, req: &Request<B>) -> bool {
        self.route(req).is_some()
    }

    /// Every upstream's circuit breaker.
    pub fn breakers(&self) -> Vec<crate::circuit_breaker::CircuitBreaker> {
        self.0
            .routes
            .iter()
            .filter_map(|r| r.upstream.breaker.as_ref().map(|(b, _)| b.clone()))
            .collect()
    }

    /// Every upstream's URLs and their health.
    pub fn status(&self) -> Vec<UpstreamStatus> {
        self.0
            .routes
            .iter()
            .map(|r| UpstreamStatus {
                name: r.upstream.name.to_string(),
                urls: r
                    .upstream
                    .backends
                    .iter()
                    .map(|b| (b.url.to_string(), b.is_ejected(), b.idle_count()))
                    .collect(),
            })
            .collect()
    }

    fn route<B>(&self, req: &Request<B>) -> Option<&Route> {
        let host = request_host(req);
        let path = req.uri().path();
        self.0
            .routes
            .iter()
            .find(|r| r.matches(req.method(), host, path))
    }
}

fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(http::uri::Authority::as_str))
}

impl<B> tower_service::Service<Request<B>> for Gateway
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum_core::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(req.map(Body::new)).await) })
    }
}

/// How one attempt ended without a response.
enum Failure {
    /// Nothing was sent: another URL may be tried, whatever the method.
    Unsent(Box<Request<Body>>, String),
    /// Bytes went out (or the timeout passed): answered 502/504, never retried.
    Sent { timeout: bool, detail: String },
}

impl Gateway {
    async fn forward(&self, mut req: Request<Body>) -> Response<Body> {
        let Some(route) = self.route(&req) else {
            return (self.1)();
        };
        let ctx = req.extensions().get::<RequestContext>().cloned();
        if let Some(ctx) = &ctx {
            ctx.set_route(&route.label);
        }
        if req.extensions().get::<super::AmbiguousFraming>().is_some() {
            return framing_refused("Content-Length and Transfer-Encoding together are ambiguous.");
        }
        if let Some(problem) = framing_problem(req.headers()) {
            return problem;
        }
        let websocket = is_websocket(req.headers());
        if req.method() == Method::CONNECT {
            return upgrade_unsupported("CONNECT tunnels are not proxied.");
        }
        if websocket && !route.websocket {
            return upgrade_unsupported("WebSocket upgrades are not passed through on this route.");
        }
        let upstream = Arc::clone(&route.upstream);

        // The request as the upstream gets it, but for the URL-specific parts.
        let client_host: Option<HeaderValue> = match req.headers().get(HOST) {
            Some(h) => Some(h.clone()),
            None => req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        };
        // Shares the request's bytes: the path is re-read from it for each attempt.
        let original = req.uri().clone();
        let rest = if route.strip_prefix {
            strip(&route.prefix, original.path()).unwrap_or("")
        } else {
            original.path()
        };
        let conn = req.extensions().get::<ConnectionInfo>().copied();
        let hop = Hop {
            peer: conn
                .map(|c| c.peer.ip())
                .or_else(|| ctx.as_ref().and_then(RequestContext::client_ip)),
            trusted: conn.is_some_and(|c| self.0.trusted.is_trusted(c.peer.ip())),
            proto: if conn.is_some_and(|c| c.tls) {
                "https"
            } else {
                "http"
            },
            host: client_host.as_ref(),
        };
        let on_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let h = &mut parts.headers;
        headers::remove_hop_by_hop(h);
        // Handled here: the first body frame is read before forwarding.
        h.remove(EXPECT);
        headers::set_forwarding(h, &hop);
        match &ctx {
            Some(ctx) => ctx.inject(h),
            None => crate::context::inject_current(h),
        }
        if websocket {
            h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        }
        parts.version = Version::HTTP_11;
        let idempotent = is_idempotent(&parts.method);

        // Read the first frame before anything is sent: broken chunking is refused here
        // and never reaches the upstream.
        let body = if body.is_end_stream() {
            Body::empty()
        } else {
            let mut body = body;
            match body.frame().await {
                None => Body::empty(),
                Some(Ok(first)) => Body::new(Prepended::new(first, body)),
                Some(Err(error)) => {
                    return Problem::new(StatusCode::BAD_REQUEST)
                        .with_detail(format!("The request body could not be read: {error}"))
                        .with_rejection(Rejection::MalformedFraming)
                        .into_response();
                }
            }
        };
        let mut req = Some(Request::from_parts(parts, body));

        let permit = match &upstream.breaker {
            Some((breaker, _)) => match breaker.try_acquire() {
                Ok(p) => Some(p),
                Err(open) => return open.to_response(),
            },
            None => None,
        };
        let attempts = 1 + if idempotent { upstream.retries } else { 0 };
        let mut tried: u64 = 0;
        for _ in 0..attempts {
            let Some(i) = upstream.pick(tried) else { break };
            if i < 64 {
                tried |= 1 << i;
            }
            let backend = &upstream.backends[i];
            let mut r = req.take().expect("a request is kept for each attempt");
            match original.path_and_query() {
                // The usual case: the target as received, its bytes shared.
                Some(pq) if backend.base_path.is_empty() && !route.strip_prefix => {
                    *r.uri_mut() = Uri::from(pq.clone());
                }
                _ => set_target(&mut r, &backend.base_path, rest, original.query()),
            }
            match route.host_header {
                HostHeader::Upstream => {
                    r.headers_mut().insert(HOST, backend.authority.clone());
                }
                HostHeader::Preserve => {
                    if let Some(v) = &client_host {
                        r.headers_mut().insert(HOST, v.clone());
                    }
                }
            }
            match attempt(&upstream, i, r, upstream.response_timeout).await {
                Ok((res, tx)) => {
                    backend.record_success();
                    if let (Some(p), Some((_, classify))) = (permit, &upstream.breaker) {
                        p.record(if classify.is_failure(res.status()) {
                            Outcome::Failure
                        } else {
                            Outcome::Success
                        });
                    }
                    return respond(res, tx, &upstream, i, on_upgrade);
                }
                Err(Failure::Unsent(back, detail)) => {
                    upstream.failed(i);
                    tracing::warn!(upstream = %upstream.name, url = %backend.url, error = %detail, "upstream unreachable");
                    req = Some(*back);
                    if !idempotent {
                        break;
                    }
                }
                Err(Failure::Sent { timeout, detail }) => {
                    upstream.failed(i);
                    if let Some(p) = permit {
                        p.record(Outcome::Failure);
                    }
                    tracing::warn!(upstream = %upstream.name, url = %backend.url, error = %detail, "upstream request failed");
                    return if timeout {
                        Problem::new(StatusCode::GATEWAY_TIMEOUT)
                            .with_detail(format!(
                                "The upstream did not answer within {}.",
                                humantime::format_duration(upstream.response_timeout)
                            ))
                            .with_rejection(Rejection::UpstreamTimeout)
                            .into_response()
                    } else {
                        bad_gateway("The upstream failed while handling the request.")
                    };
                }
            }
        }
        if let Some(p) = permit {
            p.record(Outcome::Failure);
        }
        bad_gateway("The upstream could not be reached.")
    }
}

/// Sends `req` to URL `i`: on a pooled connection, or on a new one when a pooled one turns
/// out closed before anything was written.
async fn attempt(
    upstream: &Upstream,
    i: usize,
    req: Request<Body>,
    response_timeout: Duration,
) -> Result<(Response<hyper::body::Incoming>, SendRequest<Body>), Failure> {
    let backend = &upstream.backends[i];
    let mut req = req;
    // A pooled connection the upstream closed meanwhile hands the request back untouched;
    // a few such are tried, then the error counts.
    for _ in 0..3 {
        let mut tx = match backend.checkout().await {
            Ok(tx) => tx,
            Err(e) => {
                let detail = match &e {
                    ConnectError::Timeout => "connect timed out".to_owned(),
                    other => other.to_string(),
                };
                return Err(Failure::Unsent(Box::new(req), detail));
            }
        };
        // The response timeout starts once the request body has been sent to the end.
        let (body_sent, sent_rx) = tokio::sync::oneshot::channel();
        let wrapped = req.map(|b| Body::new(SignalEnd::new(b, body_sent)));
        let deadline = async {
            let _ = sent_rx.await;
            tokio::time::sleep(response_timeout).await;
        };
        let sent = tokio::select! {
            r = tx.try_send_request(wrapped) => Ok(r),
            () = deadline => Err(()),
        };
        match sent {
            Err(()) => {
                return Err(Failure::Sent {
                    timeout: true,
                    detail: "response timed out".to_owned(),
                });
            }
            Ok(Ok(res)) => return Ok((res, tx)),
            Ok(Err(mut e)) => match e.take_message() {
                Some(back) => req = back,
                None => {
                    return Err(Failure::Sent {
                        timeout: false,
                        detail: e.into_error().to_string(),
                    });
                }
            },
        }
    }
    Err(Failure::Unsent(
        Box::new(req),
        "connections closed before use".to_owned(),
    ))
}

/// The response for the client: hop-by-hop fields out, the body streamed (its connection
/// back to the pool at its end), or for a `101` the upgraded connections joined.
fn respond(
    mut res: Response<hyper::body::Incoming>,
    tx: SendRequest<Body>,
    upstream: &Arc<Upstream>,
    backend: usize,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client) = on_upgrade else {
            return bad_gateway("The upstream switched protocols unasked.");
        };
        let upstream_io = hyper::upgrade::on(&mut res);
        super::websocket::join(client, upstream_io, upstream.name.clone());
        // The connection now belongs to the WebSocket.
        drop(tx);
        let (parts, _) = res.into_parts();
        let mut out = Response::new(Body::empty());
        *out.status_mut() = parts.status;
        *out.headers_mut() = parts.headers;
        return out;
    }
    let (mut parts, body) = res.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers);
    let lease = Lease {
        upstream: Arc::clone(upstream),
        backend,
        tx,
    };
    Response::from_parts(parts, Body::new(UpstreamBody::new(body, lease)))
}

/// Points `req` at `<base><rest>?<query>` (origin form).
fn set_target(req: &mut Request<Body>, base: &str, rest: &str, query: Option<&str>) {
    let mut pq =
        String::with_capacity(base.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1);
    pq.push_str(base);
    pq.push_str(rest);
    if pq.is_empty() {
        pq.push('/');
    }
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    // Built from an already valid path and query.
    if let Ok(pq) = PathAndQuery::try_from(pq) {
        *req.uri_mut() = Uri::from(pq);
    }
}

/// `400` when the message framing is ambiguous: `Content-Length` with `Transfer-Encoding`,
/// a `Transfer-Encoding` other than a final `chunked`, or disagreeing lengths.
fn framing_problem(headers: &HeaderMap) -> Option<Response<Body>> {
    let te = headers.get_all(TRANSFER_ENCODING).iter().next_back();
    let detail = if te.is_some() && headers.contains_key(CONTENT_LENGTH) {
        "Content-Length and Transfer-Encoding together are ambiguous."
    } else if te.is_some_and(|v| {
        !v.to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
    }) {
        "Transfer-Encoding must end with chunked."
    } else if crate::body_limit::content_length(headers).is_err() {
        "Invalid or conflicting Content-Length."
    } else {
        return None;
    };
    Some(framing_refused(detail))
}

fn framing_refused(detail: &'static str) -> Response<Body> {
    // Whatever follows on this connection cannot be trusted to be a request of its own.
    crate::problem::close_connection(
        Problem::new(StatusCode::BAD_REQUEST)
            .with_detail(detail)
            .with_rejection(Rejection::MalformedFraming)
            .into_response(),
    )
}

fn is_websocket(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        });
    let connection = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    upgrade && connection
}

/// RFC 9110 §9.2.2.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn bad_gateway(detail: &'static str) -> Response<Body> {
    Problem::new(StatusCode::BAD_GATEWAY)
        .with_detail(detail)
        .with_rejection(Rejection::UpstreamUnavailable)
        .into_response()
}

fn upgrade_unsupported(detail: &'static str) -> Response<Body> {
    Problem::new(StatusCode::NOT_IMPLEMENTED)
        .with_detail(detail)
        .with_rejection(Rejection::UpgradeUnsupported)
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments_only() {
        assert_eq!(strip("/orders", "/orders"), Some(""));
        assert_eq!(strip("/orders", "/orders/7"), Some("/7"));
        assert_eq!(strip("/orders", "/ordersx"), None);
        assert_eq!(strip("", "/anything"), Some("/anything"));
    }

    #[test]
    fn hosts_match_without_port_and_case() {
        assert!(host_eq("api.example", "API.example:8080"));
        assert!(host_eq("api.example", "api.example"));
        assert!(!host_eq("api.example", "api.example.evil"));
        assert!(host_eq("[::1]", "[::1]:80"));
    }

    #[test]
    fn ambiguous_framing_is_a_400() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            m
        };
        for bad in [
            h(&[("content-length", "4"), ("transfer-encoding", "chunked")]),
            h(&[("transfer-encoding", "chunked, gzip")]),
            h(&[("content-length", "4"), ("content-length", "5")]),
            h(&[("content-length", "-1")]),
        ] {
            let res = framing_problem(&bad).expect("refused");
            assert_eq!(res.status(), 400);
            assert_eq!(
                res.extensions().get::<Rejection>(),
                Some(&Rejection::MalformedFraming)
            );
        }
        assert!(framing_problem(&h(&[("transfer-encoding", "gzip, chunked")])).is_none());
        assert!(framing_problem(&h(&[("content-length", "4"), ("content-length", "4")])).is_none());
    }

    #[test]
    fn targets_join_base_rest_and_query() {
        let mut r = Request::new(Body::empty());
        set_target(&mut r, "/api", "/items/7", Some("a=1&b"));
        assert_eq!(r.uri(), "/api/items/7?a=1&b");
        set_target(&mut r, "", "", None);
        assert_eq!(r.uri(), "/");
    }
}
