//! [`RateLimitLayer`]: decide, then call the inner service or answer 429, and write headers.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, LazyLock},
    task::{Context, Poll, ready},
};

use axum_core::body::Body;
use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header::RETRY_AFTER,
};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{Decide, Decision, Policy, RateLimiter, StoreError};
use crate::{
    context::RequestContext, error::ConfigError, problem::Problem, rejection::Rejection,
    text::push_u64,
};

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-10).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// Legacy `X-RateLimit-Limit`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// Legacy `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// Legacy `X-RateLimit-Reset`: seconds from now (not an epoch time).
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The problem type of a 429 (RFC 9457 registry).
pub const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// Applies a [`RateLimiter`]: its route table, or one fixed policy. See the
/// [module docs](super).
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
    fixed: Option<Arc<Policy>>,
}

impl RateLimitLayer {
    /// Route rules first, then the default policy.
    pub fn new(limiter: Arc<RateLimiter>) -> Self {
        Self {
            limiter,
            fixed: None,
        }
    }

    /// Always the named policy (for one route or router); exempt paths still pass.
    pub fn policy(limiter: Arc<RateLimiter>, name: &str) -> Result<Self, ConfigError> {
        let fixed = limiter
            .policy(name)
            .cloned()
            .ok_or_else(|| ConfigError::new("policy", format!("no policy named {name:?}")))?;
        Ok(Self {
            limiter,
            fixed: Some(fixed),
        })
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limiter: self.limiter.clone(),
            fixed: self.fixed.clone(),
        }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimitService<S> {
    inner: S,
    limiter: Arc<RateLimiter>,
    fixed: Option<Arc<Policy>>,
}

impl<S, B> Service<Request<B>> for RateLimitService<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ctx = req.extensions().get::<RequestContext>();
        let Some(policy) = self.limiter.resolve(self.fixed.as_ref(), &req, ctx) else {
            return ResponseFuture::calling(self.inner.call(req), None);
        };
        let policy = policy.clone();
        match self.limiter.decide(&policy, &req, ctx) {
            Decide::Ready(result) => respond(&mut self.inner, &self.limiter, policy, result, req),
            Decide::Pending(decision) => {
                // The ready service goes with the request; a fresh clone stays here.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture {
                    state: State::Deciding {
                        decision,
                        pending: Some(Pending {
                            inner,
                            limiter: self.limiter.clone(),
                            policy,
                            req,
                        }),
                    },
                }
            }
        }
    }
}

/// Acts on a decision: call `inner` and remember headers to add, or reject.
fn respond<S, B>(
    inner: &mut S,
    limiter: &RateLimiter,
    policy: Arc<Policy>,
    result: Result<Decision, StoreError>,
    req: Request<B>,
) -> ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    match result {
        Ok(d) if d.allowed => ResponseFuture::calling(
            inner.call(req),
            Some(Allowed {
                decision: d,
                policy,
                legacy: limiter.legacy_headers,
            }),
        ),
        Ok(d) => ResponseFuture::done(reject(&policy, &d, limiter.legacy_headers)),
        Err(e) => ResponseFuture::done(store_unavailable(&e)),
    }
}

/// What an allowed request's response gets.
struct Allowed {
    decision: Decision,
    policy: Arc<Policy>,
    legacy: bool,
}

struct Pending<S, B> {
    inner: S,
    limiter: Arc<RateLimiter>,
    policy: Arc<Policy>,
    req: Request<B>,
}

pin_project! {
    /// The future of [`RateLimitService`].
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Deciding {
            decision: Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>,
            pending: Option<Pending<S, B>>,
        },
        Calling {
            #[pin]
            future: S::Future,
            allowed: Option<Allowed>,
        },
        Done {
            response: Option<Response<Body>>,
        },
    }
}

impl<S: Service<Request<B>>, B> ResponseFuture<S, B> {
    fn calling(future: S::Future, allowed: Option<Allowed>) -> Self {
        Self {
            state: State::Calling { future, allowed },
        }
    }

    fn done(response: Response<Body>) -> Self {
        Self {
            state: State::Done {
                response: Some(response),
            },
        }
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Output = Result<Response<Body>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Deciding { decision, pending } => {
                    let result = ready!(decision.as_mut().poll(cx));
                    let mut p = pending.take().expect("polled after completion");
                    respond(&mut p.inner, &p.limiter, p.policy, result, p.req)
                }
                StateProj::Calling { future, allowed } => {
                    let mut res = ready!(future.poll(cx))?;
                    if let Some(a) = allowed.take() {
                        write_headers(res.headers_mut(), &a.policy, &a.decision, a.legacy);
                    }
                    return Poll::Ready(Ok(res));
                }
                StateProj::Done { response } => {
                    return Poll::Ready(Ok(response.take().expect("polled after completion")));
                }
            };
            self.set(next);
        }
    }
}

/// The 429 problem, with `Retry-After` and the rate-limit fields.
fn reject(policy: &Policy, d: &Decision, legacy: bool) -> Response<Body> {
    let violated: Vec<serde_json::Value> = policy
        .quotas
        .iter()
        .enumerate()
        .filter(|(i, _)| d.violated & (1 << i) != 0)
        .map(|(_, q)| serde_json::Value::from(&*q.name))
        .collect();
    let secs = d.retry_after_secs;
    let mut res = Problem::new(StatusCode::TOO_MANY_REQUESTS)
        .with_type(QUOTA_EXCEEDED)
        .with_title("Too Many Requests")
        .with_detail(format!(
            "Rate limit exceeded; retry in {secs} second{}.",
            if secs == 1 { "" } else { "s" }
        ))
        .with_extension("violated-policies", serde_json::Value::Array(violated))
        .with_rejection(Rejection::RateLimited)
        .into_response();
    let headers = res.headers_mut();
    headers.insert(RETRY_AFTER, int_header(secs));
    write_headers(headers, policy, d, legacy);
    res
}

/// 503 when the shared store is down and the limiter fails closed.
fn store_unavailable(e: &StoreError) -> Response<Body> {
    tracing::debug!(error = %e, "rate limit store unavailable; failing closed");
    let mut res = Problem::new(StatusCode::SERVICE_UNAVAILABLE)
        .with_title("Service Unavailable")
        .with_detail("The rate limiter cannot reach its store; retry shortly.")
        .with_rejection(Rejection::RateLimitStoreUnavailable)
        .into_response();
    res.headers_mut().insert(RETRY_AFTER, int_header(1));
    res
}

/// Adds the IETF fields (appending: an inner limiter's own items stay) and, if absent, the
/// legacy trio for the quota closest to its limit.
fn write_headers(headers: &mut HeaderMap, policy: &Policy, d: &Decision, legacy: bool) {
    headers.append(RATELIMIT_POLICY, policy.policy_header.clone());
    let mut value = Vec::with_capacity(40 * policy.quotas.len());
    for (q, s) in policy.quotas.iter().zip(d.quotas()) {
        if !value.is_empty() {
            value.extend_from_slice(b", ");
        }
        value.push(b'"');
        value.extend_from_slice(q.name.as_bytes());
        value.extend_from_slice(b"\";r=");
        push_u64(&mut value, s.remaining);
        value.extend_from_slice(b";t=");
        push_u64(&mut value, s.reset_secs);
    }
    headers.append(
        RATELIMIT,
        HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).expect("ASCII"),
    );
    if !legacy {
        return;
    }
    // An inner limiter (a per-route policy) already answered for the tighter quota.
    let http::header::Entry::Vacant(limit) = headers.entry(X_RATELIMIT_LIMIT) else {
        return;
    };
    let Some((q, s)) = policy
        .quotas
        .iter()
        .zip(d.quotas())
        .min_by_key(|(_, s)| s.remaining)
    else {
        return;
    };
    limit.insert(q.limit_header.clone());
    headers.insert(X_RATELIMIT_REMAINING, int_header(s.remaining));
    headers.insert(X_RATELIMIT_RESET, int_header(s.reset_secs));
}

/// Header values for small integers, built once: most counters are small.
fn int_header(n: u64) -> HeaderValue {
    static SMALL: LazyLock<Box<[HeaderValue]>> =
        LazyLock::new(|| (0..1024u64).map(HeaderValue::from).collect());
    match SMALL.get(n as usize) {
        Some(v) => v.clone(),
        None => HeaderValue::from(n),
    }
}
