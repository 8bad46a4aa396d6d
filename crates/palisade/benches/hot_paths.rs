//! Micro-benchmarks of the per-request hot paths. `cargo bench -p palisade`.

#![allow(missing_docs)]

use std::{convert::Infallible, hint::black_box, net::SocketAddr, sync::Arc, time::Duration};

use axum_core::body::Body;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use palisade::{
    circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, Outcome},
    client_ip::{ClientIpConfig, ConnectionInfo, ForwardedHeader, TrustedProxies},
    context::{RequestContextConfig, RequestContextLayer},
    idempotency::{
        Idempotency, IdempotencyConfig, IdempotencyLayer, IdempotencyStore,
        MemoryStore as IdemMemoryStore,
    },
    problem::Problem,
    rate_limit::{
        Algorithm, KeyDigest, MemoryStore, PolicyConfig, QuotaConfig, RateLimitConfig,
        RateLimitLayer, RateLimiter,
    },
    request_id::RequestId,
    security_headers::{SecurityHeadersConfig, SecurityHeadersLayer},
};
use tower::{Layer, Service, ServiceExt};

fn request_id(c: &mut Criterion) {
    let valid = HeaderValue::from_static("0191e3c4-5b6a-7c8d-9e0f-a1b2c3d4e5f6");
    c.bench_function("request_id/parse_valid_header", |b| {
        b.iter(|| RequestId::from_header(black_box(&valid)))
    });
    c.bench_function("request_id/generate_uuid_v7", |b| {
        b.iter(RequestId::generate)
    });
}

fn client_ip(c: &mut Criterion) {
    let proxies = TrustedProxies::new(&ClientIpConfig {
        trusted_proxies: vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.168.0.0/16".parse().unwrap(),
        ],
        header: ForwardedHeader::XForwardedFor,
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-forwarded-for",
        HeaderValue::from_static("6.6.6.6, 203.0.113.7, 10.1.1.1"),
    );
    let untrusted = "198.51.100.1".parse().unwrap();
    let trusted = "10.0.0.2".parse().unwrap();
    c.bench_function("client_ip/untrusted_peer", |b| {
        b.iter(|| proxies.resolve(black_box(untrusted), false, black_box(&headers)))
    });
    c.bench_function("client_ip/trusted_peer_xff_3_hops", |b| {
        b.iter(|| proxies.resolve(black_box(trusted), false, black_box(&headers)))
    });
}

fn problem(c: &mut Criterion) {
    c.bench_function("problem/render_429_with_extension", |b| {
        b.iter(|| {
            Problem::new(StatusCode::TOO_MANY_REQUESTS)
                .with_detail("60 requests per minute")
                .with_request_id("0191e3c4-5b6a-7c8d-9e0f-a1b2c3d4e5f6")
                .into_response()
        })
    });
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn request() -> Request<Body> {
    let mut req = Request::get("/bench").body(Body::empty()).unwrap();
    req.extensions_mut().insert(ConnectionInfo {
        peer: "192.0.2.1:5000".parse::<SocketAddr>().unwrap(),
        tls: false,
    });
    req
}

async fn ok<B>(_req: Request<B>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::empty()))
}

fn layers(c: &mut Criterion) {
    let rt = rt();
    let bare = tower::service_fn(ok);
    c.bench_function("layer/none_baseline", |b| {
        b.iter(|| rt.block_on(bare.oneshot(request())).unwrap())
    });
    let headers = SecurityHeadersLayer::new(&SecurityHeadersConfig::default())
        .unwrap()
        .layer(tower::service_fn(ok));
    c.bench_function("layer/security_headers", |b| {
        b.iter(|| rt.block_on(headers.clone().oneshot(request())).unwrap())
    });
    let mut context =
        RequestContextLayer::new(&RequestContextConfig::default()).layer(tower::service_fn(ok));
    c.bench_function("layer/request_context", |b| {
        b.iter(|| rt.block_on(context.call(request())).unwrap())
    });
    let body_limit = palisade::body_limit::BodyLimitLayer::max(1 << 20).layer(tower::service_fn(
        |_req: Request<palisade::body_limit::LimitedBody<Body>>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        },
    ));
    c.bench_function("layer/body_limit_get", |b| {
        b.iter(|| rt.block_on(body_limit.clone().oneshot(request())).unwrap())
    });
    // A closed breaker: the atomic fast path, then one lock to record the outcome.
    let breaker = CircuitBreaker::new("bench", &CircuitBreakerConfig::default()).unwrap();
    let mut closed = CircuitBreakerLayer::new(breaker).layer(tower::service_fn(ok));
    c.bench_function("layer/circuit_breaker_closed", |b| {
        b.iter(|| rt.block_on(closed.call(request())).unwrap())
    });
    // An open one: the 503 problem, without the inner service.
    let config = CircuitBreakerConfig {
        minimum_calls: 1,
        open_duration: palisade::duration::ConfigDuration::secs(3600),
        ..CircuitBreakerConfig::default()
    };
    let breaker = CircuitBreaker::new("bench", &config).unwrap();
    breaker.try_acquire().unwrap().record(Outcome::Failure);
    let mut open = CircuitBreakerLayer::new(breaker).layer(tower::service_fn(ok));
    c.bench_function("layer/circuit_breaker_open_rejects", |b| {
        b.iter(|| rt.block_on(open.call(request())).unwrap())
    });
}

/// A GET like a browser's or an SDK's: eight ordinary headers.
fn request_with_headers() -> Request<Body> {
    let mut req = request();
    for (name, value) in [
        ("host", "api.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("accept-language", "en"),
        ("x-request-id", "0191e3c4-5b6a-7c8d-9e0f-a1b2c3d4e5f6"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("cookie", "session=abc"),
    ] {
        req.headers_mut()
            .insert(name, http::HeaderValue::from_static(value));
    }
    *req.uri_mut() = "/items/a%20b?page=2&q=caf%C3%A9".parse().unwrap();
    req
}

/// The request guards one by one and together, on a GET (the common case: no body).
fn guards(c: &mut Criterion) {
    use palisade::{
        content_validation::{ContentValidationConfig, ContentValidationLayer},
        exempt::ExemptPaths,
        load_shed::{LoadShedConfig, LoadShedLayer},
        timeout::{RequestBodyTimeoutLayer, TimeoutConfig, TimeoutLayer},
    };
    // Timers need a runtime with time enabled; the baseline runs on the same one.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let bare = tower::service_fn(ok);
    c.bench_function("guards/none_baseline", |b| {
        b.iter(|| rt.block_on(bare.oneshot(request_with_headers())).unwrap())
    });
    let validation = ContentValidationLayer::new(&ContentValidationConfig::default())
        .unwrap()
        .layer(tower::service_fn(ok));
    c.bench_function("guards/content_validation", |b| {
        b.iter(|| {
            rt.block_on(validation.clone().oneshot(request_with_headers()))
                .unwrap()
        })
    });
    let shed = LoadShedLayer::new(&LoadShedConfig::default(), ExemptPaths::health())
        .unwrap()
        .layer(tower::service_fn(ok));
    c.bench_function("guards/load_shed", |b| {
        b.iter(|| {
            rt.block_on(shed.clone().oneshot(request_with_headers()))
                .unwrap()
        })
    });
    let timeout = TimeoutLayer::new(&TimeoutConfig::default())
        .unwrap()
        .layer(tower::service_fn(ok));
    c.bench_function("guards/timeout", |b| {
        b.iter(|| {
            rt.block_on(timeout.clone().oneshot(request_with_headers()))
                .unwrap()
        })
    });
    let config = TimeoutConfig::default();
    let all = tower::ServiceBuilder::new()
        .layer(ContentValidationLayer::new(&ContentValidationConfig::default()).unwrap())
        .layer(LoadShedLayer::new(&LoadShedConfig::default(), ExemptPaths::health()).unwrap())
        .layer(RequestBodyTimeoutLayer::new(config.body_idle.get()))
        .layer(TimeoutLayer::new(&config).unwrap())
        .service(tower::service_fn(
            |_req: Request<palisade::timeout::TimeoutBody<Body>>| async {
                Ok::<_, Infallible>(Response::new(Body::empty()))
            },
        ));
    c.bench_function("guards/all_four", |b| {
        b.iter(|| {
            rt.block_on(all.clone().oneshot(request_with_headers()))
                .unwrap()
        })
    });
}

/// The in-memory decision alone, with one tracked client and with a million.
fn rate_limit(c: &mut Criterion) {
    let store = Arc::new(MemoryStore::new());
    let limiter = RateLimiter::new(&RateLimitConfig::default(), store.clone()).unwrap();
    let policy = limiter.policy("default").unwrap().clone();
    let one = KeyDigest::new(7);
    c.bench_function("rate_limit/memory_decision_1_key", |b| {
        b.iter(|| store.decide_now(&policy, black_box(one)))
    });
    // Spread keys the way SipHash digests spread.
    let key = |i: u64| {
        KeyDigest::new(u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
    };
    // A million clients whose state all still matters (one request an hour, a bucket of a
    // thousand: every request is allowed and written back, and nothing goes idle), in twice
    // as many slots, as the store's docs advise. Bucket overflow forgets a few percent.
    let mut live = RateLimitConfig::default();
    live.policies.insert(
        "default".into(),
        PolicyConfig::new(
            Algorithm::Gcra,
            [QuotaConfig::new(1, Duration::from_secs(3600)).burst(1000)],
        ),
    );
    let store = Arc::new(MemoryStore::with_max_keys(2_000_000));
    let limiter = RateLimiter::new(&live, store.clone()).unwrap();
    let policy = limiter.policy("default").unwrap().clone();
    for i in 0..1_000_000 {
        store.decide_now(&policy, key(i));
    }
    let held = store.len();
    assert!(held >= 950_000, "{held} keys held");
    eprintln!(
        "1M clients in 2M slots: {held} held, {} forgotten",
        store.forgotten()
    );
    let mut i = 0u64;
    c.bench_function("rate_limit/memory_decision_1m_keys", |b| {
        b.iter(|| {
            i = (i + 7_919) % 1_000_000;
            store.decide_now(&policy, key(i))
        })
    });
    // A million tracked, ten thousand of them active: the usual shape of real traffic.
    c.bench_function("rate_limit/memory_decision_1m_keys_10k_active", |b| {
        b.iter(|| {
            i = (i + 7_919) % 10_000;
            store.decide_now(&policy, key(i * 100))
        })
    });
    // The whole layer: key digest, decision, RateLimit headers (inside a request context),
    // under a quota the benchmark never exhausts, so every request takes the allowed path.
    let rt = rt();
    let unreachable = || {
        let mut c = RateLimitConfig::default();
        c.policies.insert(
            "default".into(),
            PolicyConfig::new(
                Algorithm::Gcra,
                [QuotaConfig::new(4_000_000_000, Duration::from_secs(1))],
            ),
        );
        c
    };
    let limiter = Arc::new(RateLimiter::new(&unreachable(), Arc::new(MemoryStore::new())).unwrap());
    let mut svc = RequestContextLayer::new(&RequestContextConfig::default())
        .layer(RateLimitLayer::new(limiter).layer(tower::service_fn(ok)));
    let mut baseline =
        RequestContextLayer::new(&RequestContextConfig::default()).layer(tower::service_fn(ok));
    c.bench_function("layer/request_context_plus_rate_limit", |b| {
        b.iter(|| rt.block_on(svc.call(request())).unwrap())
    });
    c.bench_function("layer/request_context_again_for_difference", |b| {
        b.iter(|| rt.block_on(baseline.call(request())).unwrap())
    });
    let config = RateLimitConfig {
        legacy_headers: false,
        ..unreachable()
    };
    let limiter = Arc::new(RateLimiter::new(&config, Arc::new(MemoryStore::new())).unwrap());
    let mut ietf_only = RequestContextLayer::new(&RequestContextConfig::default())
        .layer(RateLimitLayer::new(limiter).layer(tower::service_fn(ok)));
    c.bench_function(
        "layer/request_context_plus_rate_limit_no_legacy_headers",
        |b| b.iter(|| rt.block_on(ietf_only.call(request())).unwrap()),
    );
}

async fn created(_req: Request<Body>) -> Result<Response<Body>, Infallible> {
    let mut res = Response::new(Body::from(r#"{"id":1234,"status":"created"}"#));
    *res.status_mut() = StatusCode::CREATED;
    res.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    Ok(res)
}

fn post(key: Option<&str>) -> Request<Body> {
    let mut b = Request::post("/orders").header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    let mut req = b
        .body(Body::from(
            r#"{"sku":"A-1234","quantity":2,"note":"leave at the door"}"#,
        ))
        .unwrap();
    req.extensions_mut().insert(ConnectionInfo {
        peer: "192.0.2.1:5000".parse::<SocketAddr>().unwrap(),
        tls: false,
    });
    req
}

/// The idempotency layer inside a request context: requests it passes through, a new key
/// (reserve, run, store) and a replay, in memory and (with the `redis` feature) on a real
/// local Redis.
fn idempotency(c: &mut Criterion) {
    // Lease renewal needs the runtime's timers; Redis its I/O.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stack = |store: Arc<dyn IdempotencyStore>| {
        let idem = Arc::new(Idempotency::new(&IdempotencyConfig::default(), store).unwrap());
        RequestContextLayer::new(&RequestContextConfig::default())
            .layer(IdempotencyLayer::new(idem).layer(tower::service_fn(created)))
    };
    let mut baseline = RequestContextLayer::new(&RequestContextConfig::default())
        .layer(tower::service_fn(created));
    c.bench_function("idempotency/baseline_context_post_no_layer", |b| {
        b.iter(|| rt.block_on(baseline.call(post(None))).unwrap())
    });
    let mut svc = stack(Arc::new(IdemMemoryStore::default()));
    c.bench_function("idempotency/get_passes_through", |b| {
        b.iter(|| rt.block_on(svc.call(request())).unwrap())
    });
    c.bench_function("idempotency/post_without_key", |b| {
        b.iter(|| rt.block_on(svc.call(post(None))).unwrap())
    });
    // A fresh key every time (formatting it costs ~50 ns of the figure).
    let mut i = 0u64;
    c.bench_function("idempotency/memory_new_key", |b| {
        b.iter(|| {
            i += 1;
            rt.block_on(svc.call(post(Some(&format!("order-{i}")))))
                .unwrap()
        })
    });
    rt.block_on(svc.call(post(Some("replayed")))).unwrap();
    c.bench_function("idempotency/memory_replay", |b| {
        b.iter(|| rt.block_on(svc.call(post(Some("replayed")))).unwrap())
    });
    #[cfg(feature = "redis")]
    {
        let redis = palisade_testkit::RedisServer::start();
        let (store, mut svc) = rt.block_on(async {
            let conn =
                palisade::redis_connection::RedisConnection::open(&redis.url(), false).unwrap();
            conn.ping(Duration::from_secs(5)).await.unwrap();
            let store = palisade::idempotency::redis::RedisStore::new(
                &conn,
                "bench:",
                Duration::from_secs(1),
            )
            .unwrap();
            (store.clone(), stack(Arc::new(store)))
        });
        let _ = store;
        c.bench_function("idempotency/redis_new_key_2_round_trips", |b| {
            b.iter(|| {
                i += 1;
                rt.block_on(svc.call(post(Some(&format!("order-{i}")))))
                    .unwrap()
            })
        });
        rt.block_on(svc.call(post(Some("replayed")))).unwrap();
        c.bench_function("idempotency/redis_replay_1_round_trip", |b| {
            b.iter(|| rt.block_on(svc.call(post(Some("replayed")))).unwrap())
        });
    }
}

/// A country lookup in a generated database of 4096 IPv4 /24s and 4096 IPv6 /48s, and the
/// layer on an allowed request. Needs `--features geoip`.
fn geoip(c: &mut Criterion) {
    #[cfg(feature = "geoip")]
    {
        use palisade::{
            exempt::ExemptPaths,
            geoip::{GeoIpConfig, GeoIpLayer},
        };
        const CODES: [&str; 8] = ["DE", "FR", "GB", "US", "JP", "BR", "KP", "IR"];
        let mut writer = palisade_testkit::mmdb::MmdbWriter::new("GeoLite2-Country");
        for i in 0..4096u32 {
            let code = CODES[i as usize % CODES.len()];
            let v4 = std::net::Ipv4Addr::from((i + 256) << 8);
            writer = writer.country(&format!("{v4}/24"), code);
            writer = writer.country(&format!("2001:{i:x}::/48"), code);
        }
        let db = writer.write_temp();
        let config = GeoIpConfig {
            database: Some(db.path().to_owned()),
            deny: vec!["KP".into(), "IR".into()],
            ..GeoIpConfig::default()
        };
        let layer = GeoIpLayer::new(&config, ExemptPaths::health())
            .unwrap()
            .unwrap();
        let v4 = "0.3.5.77".parse().unwrap();
        let v6 = "2001:305::1".parse().unwrap();
        let miss = "198.51.100.1".parse().unwrap();
        assert!(layer.country(v4).is_some() && layer.country(v6).is_some());
        c.bench_function("geoip/lookup_v4", |b| {
            b.iter(|| layer.country(black_box(v4)))
        });
        c.bench_function("geoip/lookup_v6", |b| {
            b.iter(|| layer.country(black_box(v6)))
        });
        c.bench_function("geoip/lookup_not_found", |b| {
            b.iter(|| layer.country(black_box(miss)))
        });
        // A client in an allowed country; the context layer's own cost is
        // `layer/request_context`.
        let from_de = || {
            let mut req = request();
            req.extensions_mut().insert(ConnectionInfo {
                peer: SocketAddr::new(v4, 5000),
                tls: false,
            });
            req
        };
        let rt = rt();
        let mut svc = RequestContextLayer::new(&RequestContextConfig::default())
            .layer(layer.layer(tower::service_fn(ok)));
        assert_eq!(rt.block_on(svc.call(from_de())).unwrap().status(), 200);
        c.bench_function("layer/request_context_geoip", |b| {
            b.iter(|| rt.block_on(svc.call(from_de())).unwrap())
        });
    }
    #[cfg(not(feature = "geoip"))]
    let _ = c;
}

/// Recording one request (context + metrics against context alone) and rendering a scrape.
fn metrics(c: &mut Criterion) {
    use palisade::metrics::{Metrics, MetricsConfig, MetricsLayer};
    let rt = rt();
    let routes: Vec<String> = (0..20)
        .map(|i| format!("/api/v1/resource{i}/{{id}}"))
        .chain(["/bench".to_owned()])
        .collect();
    let registry = Metrics::new(&MetricsConfig::default(), &routes).unwrap();
    let mut baseline =
        RequestContextLayer::new(&RequestContextConfig::default()).layer(tower::service_fn(ok));
    c.bench_function("metrics/context_only_baseline", |b| {
        b.iter(|| rt.block_on(baseline.call(request())).unwrap())
    });
    let mut recorded = tower::ServiceBuilder::new()
        .layer(RequestContextLayer::new(&RequestContextConfig::default()))
        .layer(MetricsLayer::new(registry.clone()))
        .service_fn(ok);
    // The response (and its body) is dropped at the end of each iteration: that records it.
    c.bench_function("metrics/context_and_metrics", |b| {
        b.iter(|| rt.block_on(recorded.call(request())).unwrap())
    });
    let unmatched = || {
        let mut r = request();
        *r.uri_mut() = "/no/such/path".parse().unwrap();
        r
    };
    c.bench_function("metrics/context_and_metrics_unmatched_path", |b| {
        b.iter(|| rt.block_on(recorded.call(unmatched())).unwrap())
    });
    for i in 0..20 {
        let _ = rt.block_on(recorded.call({
            let mut r = request();
            *r.uri_mut() = format!("/api/v1/resource{i}/7").parse().unwrap();
            r
        }));
    }
    c.bench_function("metrics/render_22_series_groups", |b| {
        b.iter(|| registry.render())
    });
}

/// The OpenTelemetry layer behind the request context: compare with `layer/request_context`
/// (the server without `[otel]`, where the layer is absent).
#[cfg(feature = "otel")]
fn otel(c: &mut Criterion) {
    use palisade::otel::{OtelConfig, init_with_exporter};

    /// Drops every batch: the bench measures the request path, not an exporter.
    #[derive(Debug)]
    struct Discard;
    impl opentelemetry_sdk::trace::SpanExporter for Discard {
        async fn export(
            &self,
            _batch: Vec<opentelemetry_sdk::trace::SpanData>,
        ) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
    }

    let rt = rt();
    let context = RequestContextLayer::new(&RequestContextConfig::default());
    for (name, ratio, traceparent) in [
        ("otel/new_trace_sampled", 1.0, None),
        (
            "otel/traceparent_continued_sampled",
            1.0,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ),
        ("otel/new_trace_unsampled", 0.0, None),
    ] {
        let config = OtelConfig {
            enabled: true,
            sample_ratio: ratio,
            ..OtelConfig::default()
        };
        let guard = init_with_exporter(&config, Discard).unwrap();
        let mut svc = context
            .clone()
            .layer(guard.layer().layer(tower::service_fn(ok)));
        c.bench_function(name, |b| {
            b.iter(|| {
                let mut req = request();
                if let Some(tp) = traceparent {
                    req.headers_mut()
                        .insert("traceparent", HeaderValue::from_static(tp));
                }
                rt.block_on(svc.call(req)).unwrap()
            })
        });
    }
}

#[cfg(not(feature = "otel"))]
fn otel(_: &mut Criterion) {}

criterion_group!(
    benches,
    metrics,
    request_id,
    client_ip,
    problem,
    layers,
    guards,
    rate_limit,
    idempotency,
    geoip,
    otel
);
criterion_main!(benches);
