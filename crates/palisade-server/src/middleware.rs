//! The one function that assembles the ordered middleware stack around the router.
//!
//! Outermost first. Every later layer goes into [`apply_middleware`] with a comment saying why
//! it sits where it does; `docs/architecture.md` draws the same order.
//!
//! The stack wraps the whole router as one `ServiceBuilder` (not `Router::layer` per layer):
//! one service around the router is measurably cheaper than layers applied route by route, and
//! protective layers must see requests no route matches.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{Router, extract::MatchedPath};
use http::{Request, Response};
use palisade::{
    access_log::{AccessLogBody, AccessLogLayer},
    auth::AuthLayer,
    body_limit::BodyLimitLayer,
    cache_control::CacheControlLayer,
    catch_panic::CatchPanicLayer,
    circuit_breaker::{CircuitBreaker, CircuitBreakerLayer},
    content_validation::ContentValidationLayer,
    context::{RequestContext, RequestContextConfig, RequestContextLayer},
    exempt::ExemptPaths,
    geoip::GeoIpLayer,
    idempotency::{self, Idempotency, IdempotencyLayer, IdempotencyStore},
    load_shed::LoadShedLayer,
    metrics::{Metrics, MetricsLayer},
    problem_fallback::ProblemFallbackLayer,
    rate_limit::{
        MemoryStore, RateLimitLayer, RateLimitStore, RateLimiter, StoreKind, redis::RedisStore,
    },
    redis_connection::RedisConnection,
    response_time::ResponseTimeLayer,
    security_headers::SecurityHeadersLayer,
    timeout::{RequestBodyTimeoutLayer, TimeoutLayer},
    trusted_host::TrustedHostLayer,
};
use tower::{Layer, Service, ServiceBuilder, util::option_layer};

use crate::{config::Settings, startup::StartupError};

/// How many response headers the default stack adds at most: request and correlation id (2),
/// security headers (7), rate limit (5), `Cache-Control` and `Vary` (2).
const STACK_RESPONSE_HEADERS: usize = 16;

/// The OpenTelemetry layer (`[otel]`), built from the provider `telemetry::init_otel` made.
#[cfg(feature = "otel")]
pub use palisade::otel::OtelLayer;

/// Stands in for the OpenTelemetry layer in a build without the `otel` feature: there is
/// never one, so callers pass `None` either way.
#[cfg(not(feature = "otel"))]
#[derive(Debug, Clone)]
pub enum OtelLayer {}

#[cfg(not(feature = "otel"))]
impl<S> Layer<S> for OtelLayer {
    type Service = S;

    fn layer(&self, _inner: S) -> S {
        match *self {}
    }
}

/// The breaker for `[circuit_breaker]`'s group of routes, when it names any. Build it before
/// the stack so readiness can report it too.
pub fn route_breaker(settings: &Settings) -> Result<Option<CircuitBreaker>, StartupError> {
    if settings.circuit_breaker.routes.is_empty() {
        return Ok(None);
    }
    CircuitBreaker::new("circuit_breaker", &settings.circuit_breaker)
        .map(Some)
        .map_err(|e| {
            StartupError::Config(format!(
                "invalid config key `circuit_breaker.{}`: {}",
                e.key, e.message
            ))
        })
}

/// Wraps `router` in the full stack, in order. `breaker` comes from [`route_breaker`];
/// `metrics` (when on) records every request and gets the collectors of the layers built here;
/// `otel` is the OpenTelemetry layer when `[otel]` is on. Errors name the config key at fault.
pub fn apply_middleware<B>(
    router: Router,
    settings: &Settings,
    exempt: &ExemptPaths,
    breaker: Option<CircuitBreaker>,
    metrics: Option<&Metrics>,
    otel: Option<OtelLayer>,
) -> Result<
    impl Service<
        Request<B>,
        Response = Response<palisade::metrics::ResponseBody<AccessLogBody<axum::body::Body>>>,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static,
    StartupError,
>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let config_err = |section: &str, e: palisade::error::ConfigError| {
        StartupError::Config(format!(
            "invalid config key `{section}.{}`: {}",
            e.key, e.message
        ))
    };
    let context = RequestContextLayer::new(&RequestContextConfig {
        trust_incoming_request_id: settings.request_id.trust_incoming,
        client_ip: settings.client_ip.clone(),
    });
    let security_headers = SecurityHeadersLayer::new(&settings.security_headers)
        .map_err(|e| config_err("security_headers", e))?;
    let cors = settings
        .cors
        .into_layer()
        .map_err(|e| config_err("cors", e))?;
    let trusted_host = TrustedHostLayer::new(&settings.trusted_hosts.allowed_hosts, exempt.clone())
        .map_err(|e| config_err("trusted_hosts", e))?;
    let geoip =
        GeoIpLayer::new(&settings.geoip, exempt.clone()).map_err(|e| config_err("geoip", e))?;
    // The breaker guards the routes of its own config (its metrics are registered with the
    // gateway's, at startup).
    let breaker = breaker.map(CircuitBreakerLayer::new);
    let content_validation = settings
        .content_validation
        .enabled
        .then(|| ContentValidationLayer::new(&settings.content_validation))
        .transpose()
        .map_err(|e| config_err("content_validation", e))?;
    let load_shed = settings
        .load_shed
        .enabled
        .then(|| LoadShedLayer::new(&settings.load_shed, exempt.clone()))
        .transpose()
        .map_err(|e| config_err("load_shed", e))?;
    if let (Some(m), Some(l)) = (metrics, &load_shed) {
        crate::metrics::load_shed(m, l);
    }
    let auth = auth(settings, exempt).map_err(|e| config_err("auth", e))?;
    let timeouts = settings.timeout.enabled;
    let timeout = timeouts
        .then(|| TimeoutLayer::new(&settings.timeout))
        .transpose()
        .map_err(|e| config_err("timeout", e))?;
    let body_timeout =
        timeouts.then(|| RequestBodyTimeoutLayer::new(settings.timeout.body_idle.get()));
    // One Redis connection for every store that uses Redis.
    let redis = shared_redis(settings).map_err(|e| config_err("redis", e))?;
    let rate_limit = rate_limiter(settings, exempt, redis.as_ref(), metrics)
        .map_err(|e| config_err("rate_limit", e))?
        .map(RateLimitLayer::new);
    let body_limit =
        BodyLimitLayer::new(&settings.body_limit).map_err(|e| config_err("body_limit", e))?;
    let cache_control = settings
        .cache_control
        .enabled
        .then(|| CacheControlLayer::new(&settings.cache_control))
        .transpose()
        .map_err(|e| config_err("cache_control", e))?;
    let idempotency = idempotency(settings, exempt, redis.as_ref(), metrics)
        .map_err(|e| config_err("idempotency", e))?
        .map(IdempotencyLayer::new);

    Ok(ServiceBuilder::new()
        // 1. Request context: ids, client IP and the task-local come first so every layer
        //    below, every log line and every problem body carries the same request id.
        .layer(context)
        // The stack below, behind one box: the context's task-local scope, the connection and
        // hyper then move a pointer instead of the ~1 KiB future of every layer below, and
        // the stack's type stays small (its full name is ~800 KB: wrapping it again in a
        // generic type made rustc run out of memory).
        .layer(tower::layer::layer_fn(
            tower::util::BoxCloneSyncService::new,
        ))
        // 2. OpenTelemetry server span (`[otel]`; absent when off, so nothing is parsed or
        //    created). Right inside the context: the span records its ids into the context,
        //    so every log line below and the access log carry them, and it covers every layer
        //    below, rejections included. The route template is read from the context once the
        //    response is ready (the router's route layer records it).
        .layer(option_layer(otel))
        // 3. Metrics: every request counted once, by route template, with the final status
        //    of everything below and the layer and reason of any rejection; recorded when the
        //    response body ends, so the in-flight gauge and durations cover streaming too.
        .layer(MetricsLayer::optional(metrics.cloned()))
        // 4. Timing header (`[response_time]`): the time to the response head, rejections
        //    included.
        .layer(ResponseTimeLayer::new(settings.response_time.header))
        // 5. Access log: sees the final status of everything below, including rejections,
        //    and the full response body size.
        .layer(
            AccessLogLayer::new()
                .enabled(settings.log.access_log)
                .with_sink(crate::telemetry::access_log_sink()),
        )
        // 6. Problem fallback: any bare error from below (axum's 405, a tower-http rejection)
        //    becomes problem+json; other headers (Allow, Retry-After) are kept.
        .layer(ProblemFallbackLayer::new())
        // 7. Security headers: on every response, rejections included.
        .layer(security_headers)
        // 8. Trusted hosts: the cheapest rejection, before any real work, and before CORS so
        //    a preflight (`OPTIONS`, answered by the CORS layer itself) cannot skip it.
        .layer(trusted_host)
        // 9. CORS: outside the rejecting layers below so browsers can read their problems;
        //    answers preflights without reaching them.
        .layer(option_layer(cors))
        // 10. GeoIP: a refusal by client address, as cheap as the host check; after CORS so
        //    browsers can read the 403. Off unless `geoip.database` names a file.
        .layer(option_layer(geoip))
        // 11. Content validation: stateless checks of the request head (content type,
        //    percent-encoding, header size); malformed requests cost no slot and no quota.
        .layer(option_layer(content_validation))
        // 12. Load shedding: the concurrency limit and its queue, before any work that costs
        //    (a Redis round trip for the rate limit, the handler); health paths exempt.
        .layer(option_layer(load_shed))
        // The future of everything below, boxed: each layer's call returns its future by
        // value, wrapping the one below, so without a box here the layers above would copy
        // an ever larger future on their way out (an allocation costs less than those copies).
        .layer(tower::util::MapFutureLayer::new(Box::pin))
        // 13. Auth: credentials checked and the subject recorded before the rate limit and
        //     idempotency key on it; inside load shedding, since a JWKS fetch may wait. Its
        //     401/403s pass through the access log, CORS and security headers above.
        .layer(option_layer(auth))
        // 14. Rate limit: after everything that rejects for free, before any work it protects;
        //    its 429s pass through the access log, CORS and security headers above.
        .layer(option_layer(rate_limit))
        // 15. Request-body idle timeout: a stalled upload gets 408 and the connection closes,
        //     whatever reads the body below.
        .layer(option_layer(body_timeout))
        // 16. Body limit: before anything reads the body (idempotency, the handler); counts
        //     the bytes that arrive, so chunked bodies are limited too.
        .layer(body_limit)
        // 17. Circuit breaker for `[circuit_breaker]`'s routes: outside the timeout, so a 504
        //     counts as a failure; while open, answers 503 before any work.
        .layer(option_layer(breaker))
        // 18. Request timeout: around idempotency and the handler, so a request that runs
        //     too long is dropped (its key released) and answered 504.
        .layer(option_layer(timeout))
        // 19. Idempotency: after everything that rejects (a refused request never reserves a
        //     key), around the handler so a replay never runs it; scoped by the subject auth
        //     recorded.
        .layer(option_layer(idempotency))
        // 20. Cache-Control per route on successful reads: right around the handler, so it
        //     sees the handler's own headers (which win) and the final status.
        .layer(option_layer(cache_control))
        //
        // 21. Innermost. Panics become 500 problems, logged with the request id.
        .layer(CatchPanicLayer::new())
        // The router's future, boxed: the layers above then move a pointer, not the
        // router's whole future, as each wraps the one below (fewer bytes copied per request
        // than the allocation costs).
        .layer(tower::util::MapFutureLayer::new(Box::pin))
        // Room for the headers the layers above add (ids, security headers, rate limit,
        // caching), made once, before the first of them: one growth of the map instead of
        // one each time it fills up.
        .layer(tower::util::MapResponseLayer::new(
            |mut res: Response<axum::body::Body>| {
                res.headers_mut().reserve(STACK_RESPONSE_HEADERS);
                res
            },
        ))
        .service(router))
}

/// The auth layer from `[auth]`, or `None` when disabled or when no credentials are
/// configured (then every route is public). A JWKS is fetched at once, in the background.
fn auth(
    settings: &Settings,
    exempt: &ExemptPaths,
) -> Result<Option<AuthLayer>, palisade::error::ConfigError> {
    let config = &settings.auth;
    let configured = config.jwt.is_some() || !config.api_keys.keys.is_empty();
    if !config.enabled || (!configured && config.routes.is_empty()) {
        return Ok(None);
    }
    let fetch = match config.jwt.as_ref().map(|j| j.jwks_url.trim()) {
        Some(url) if !url.is_empty() => Some(
            crate::jwks::fetcher(url)
                .map_err(|m| palisade::error::ConfigError::new("jwt.jwks_url", m))?,
        ),
        _ => None,
    };
    let layer = AuthLayer::new(config, fetch)?.exempt(exempt.clone());
    let prefetch = layer.clone();
    tokio::spawn(async move { prefetch.prefetch_keys().await });
    Ok(Some(layer))
}

/// The connection shared by the Redis stores, when any store uses Redis. Startup logs
/// whether Redis is reachable.
fn shared_redis(
    settings: &Settings,
) -> Result<Option<RedisConnection>, palisade::error::ConfigError> {
    let rl = &settings.rate_limit;
    let idem = &settings.idempotency;
    let used = (rl.enabled && rl.store == StoreKind::Redis)
        || (idem.enabled && idem.store == StoreKind::Redis);
    if !used {
        return Ok(None);
    }
    let redis = RedisConnection::open(&settings.redis.url, settings.redis.cluster)?;
    let probe = redis.clone();
    tokio::spawn(async move {
        match probe.ping(std::time::Duration::from_secs(1)).await {
            Ok(()) => tracing::info!("redis reachable"),
            Err(error) => tracing::warn!(%error, "redis not reachable yet"),
        }
    });
    Ok(Some(redis))
}

/// The limiter from `[rate_limit]` over its store, or `None` when disabled.
fn rate_limiter(
    settings: &Settings,
    exempt: &ExemptPaths,
    redis: Option<&RedisConnection>,
    metrics: Option<&Metrics>,
) -> Result<Option<Arc<RateLimiter>>, palisade::error::ConfigError> {
    let config = &settings.rate_limit;
    if !config.enabled {
        return Ok(None);
    }
    let store: Arc<dyn RateLimitStore> = match (config.store, redis) {
        (StoreKind::Redis, Some(redis)) => {
            let store = RedisStore::new(
                redis,
                &config.redis_prefix,
                config.store_timeout.get(),
                config.on_store_error,
                config.max_keys,
            )?;
            if let Some(m) = metrics {
                crate::metrics::rate_limit_store(m, &store);
            }
            Arc::new(store)
        }
        (StoreKind::Redis, None) => {
            return Err(palisade::error::ConfigError::new(
                "store",
                "\"redis\" needs a Redis connection",
            ));
        }
        (StoreKind::Memory, _) => Arc::new(MemoryStore::with_max_keys(config.max_keys)),
    };
    Ok(Some(Arc::new(
        RateLimiter::new(config, store)?.exempt(exempt.clone()),
    )))
}

/// Idempotency from `[idempotency]` over its store, or `None` when disabled.
fn idempotency(
    settings: &Settings,
    exempt: &ExemptPaths,
    redis: Option<&RedisConnection>,
    metrics: Option<&Metrics>,
) -> Result<Option<Arc<Idempotency>>, palisade::error::ConfigError> {
    let config = &settings.idempotency;
    if !config.enabled {
        return Ok(None);
    }
    let store: Arc<dyn IdempotencyStore> = match (config.store, redis) {
        (StoreKind::Redis, Some(redis)) => {
            let store = idempotency::redis::RedisStore::new(
                redis,
                &config.redis_prefix,
                config.store_timeout.get(),
            )?;
            if let Some(m) = metrics {
                crate::metrics::idempotency_store(m, &store);
            }
            Arc::new(store)
        }
        (StoreKind::Redis, None) => {
            return Err(palisade::error::ConfigError::new(
                "store",
                "\"redis\" needs a Redis connection",
            ));
        }
        (StoreKind::Memory, _) => Arc::new(idempotency::MemoryStore::new(
            config.max_entries,
            config.max_memory_bytes,
        )),
    };
    Ok(Some(Arc::new(
        Idempotency::new(config, store)?.exempt(exempt.clone()),
    )))
}

/// Records the matched route template into the request context (for the access log and,
/// later, metrics). Applied with `Router::route_layer`, so only matched routes pay for it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordRouteLayer;

impl<S> Layer<S> for RecordRouteLayer {
    type Service = RecordRoute<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RecordRoute { inner }
    }
}

/// The service made by [`RecordRouteLayer`].
#[derive(Debug, Clone)]
pub struct RecordRoute<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for RecordRoute<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ext = req.extensions();
        if let (Some(ctx), Some(path)) = (ext.get::<RequestContext>(), ext.get::<MatchedPath>()) {
            ctx.set_route(path.as_str());
        }
        self.inner.call(req)
    }
}
