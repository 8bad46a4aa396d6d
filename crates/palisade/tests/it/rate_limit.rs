//! Rate limiting through the real layers: headers, problems, routes, tiers, client IPs, and
//! the Redis store against a real `redis-server`.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum_core::body::Body;
use http::{Request, Response, StatusCode};
use palisade::{
    client_ip::ClientIpConfig,
    context::{RequestContext, RequestContextConfig, RequestContextLayer},
    rate_limit::{
        Algorithm, Clock, ManualClock, MemoryStore, OnStoreError, PolicyConfig, QuotaConfig,
        RateLimitConfig, RateLimitLayer, RateLimitStore, RateLimiter, RouteConfig,
    },
};
use tower::{Layer, ServiceBuilder, ServiceExt, util::BoxCloneService};

use crate::helpers::{body_json, request};

type Svc = BoxCloneService<Request<Body>, Response<Body>, Infallible>;

/// The redis-cell shape: burst 4 at 1 request per second.
fn cell_config() -> RateLimitConfig {
    let mut c = RateLimitConfig::default();
    c.policies.insert(
        "default".into(),
        PolicyConfig::new(
            Algorithm::Gcra,
            [QuotaConfig::new(1, Duration::from_secs(1)).burst(4)],
        ),
    );
    c
}

fn service(config: &RateLimitConfig, store: Arc<dyn RateLimitStore>, trusted: &[&str]) -> Svc {
    let limiter = Arc::new(RateLimiter::new(config, store).unwrap());
    let context = RequestContextLayer::new(&RequestContextConfig {
        trust_incoming_request_id: true,
        client_ip: ClientIpConfig {
            trusted_proxies: trusted.iter().map(|c| c.parse().unwrap()).collect(),
            ..Default::default()
        },
    });
    let ok = tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::from("ok")))
    });
    let limited: Svc = BoxCloneService::new(RateLimitLayer::new(limiter).layer(ok));
    // A stand-in for an auth layer: `X-Test-Tier` becomes the context's tier.
    let set_tier = tower::service_fn(move |req: Request<Body>| {
        if let (Some(ctx), Some(t)) = (
            req.extensions().get::<RequestContext>(),
            req.headers().get("x-test-tier"),
        ) {
            ctx.set_tier(t.to_str().unwrap());
        }
        limited.clone().oneshot(req)
    });
    BoxCloneService::new(ServiceBuilder::new().layer(context).service(set_tier))
}

async fn get(svc: &Svc, path: &str, peer: &str, headers: &[(&str, &str)]) -> Response<Body> {
    svc.clone()
        .oneshot(request(path, peer, headers))
        .await
        .unwrap()
}

fn header<'a>(res: &'a Response<Body>, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn the_redis_cell_vector_with_headers_and_a_429_problem() {
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new().with_clock(Clock::Manual(clock.clone())));
    let svc = service(&cell_config(), store, &[]);
    for remaining in [4, 3, 2, 1, 0] {
        let res = get(&svc, "/", "192.0.2.1:1000", &[]).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "ratelimit-policy"), "\"default\";q=1;w=1");
        let t = 5 - remaining; // the bucket refills one request per second
        assert_eq!(
            header(&res, "ratelimit"),
            format!("\"default\";r={remaining};t={t}")
        );
        assert_eq!(header(&res, "x-ratelimit-limit"), "1");
        assert_eq!(header(&res, "x-ratelimit-remaining"), remaining.to_string());
        assert_eq!(header(&res, "x-ratelimit-reset"), t.to_string());
    }
    let res = get(&svc, "/", "192.0.2.1:1000", &[("x-request-id", "req-6")]).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), "1");
    assert_eq!(header(&res, "content-type"), "application/problem+json");
    assert_eq!(header(&res, "ratelimit"), "\"default\";r=0;t=5");
    let body = body_json(res).await;
    assert_eq!(
        body["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(body["violated-policies"], serde_json::json!(["default"]));
    assert_eq!(body["request_id"], "req-6");
    // Another client is unaffected; after the retry time the first one gets one request.
    assert_eq!(
        get(&svc, "/", "192.0.2.2:1000", &[]).await.status(),
        StatusCode::OK
    );
    clock.advance(Duration::from_millis(999));
    assert_eq!(
        get(&svc, "/", "192.0.2.1:1000", &[]).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        get(&svc, "/", "192.0.2.1:1000", &[]).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn routes_pick_policies_exempt_paths_and_tiers_get_their_own_quota() {
    let mut config = cell_config();
    config.policies.insert(
        "login".into(),
        PolicyConfig::new(
            Algorithm::SlidingWindow,
            [QuotaConfig::new(2, Duration::from_secs(60))],
        ),
    );
    config.policies.insert(
        "pro".into(),
        PolicyConfig::new(
            Algorithm::Gcra,
            [QuotaConfig::new(100, Duration::from_secs(1))],
        ),
    );
    config
        .policies
        .get_mut("default")
        .unwrap()
        .tiers
        .insert("pro".into(), "pro".into());
    config.routes = vec![
        RouteConfig {
            path: "/login".into(),
            methods: vec!["POST".into()],
            policy: Some("login".into()),
            exempt: false,
        },
        RouteConfig {
            path: "/internal/*".into(),
            methods: vec![],
            policy: None,
            exempt: true,
        },
    ];
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new().with_clock(Clock::Manual(clock)));
    let svc = service(&config, store, &[]);
    let post = |path: &str| {
        let mut req = request(path, "192.0.2.9:1", &[]);
        *req.method_mut() = http::Method::POST;
        svc.clone().oneshot(req)
    };
    let statuses = |n: usize, path: &'static str| {
        let svc = svc.clone();
        async move {
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(get(&svc, path, "192.0.2.9:1", &[]).await.status().as_u16());
            }
            v
        }
    };
    // POST /login: its own policy and bucket.
    assert_eq!(post("/login").await.unwrap().status(), StatusCode::OK);
    let res = post("/login").await.unwrap();
    assert_eq!(header(&res, "ratelimit-policy"), "\"login\";q=2;w=60");
    let res = post("/login").await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body_json(res).await["violated-policies"][0], "login");
    // GET /login is not the rule's method: the default policy (5 at once), untouched so far.
    assert_eq!(statuses(6, "/login").await, [200, 200, 200, 200, 200, 429]);
    // Exempt rules and the health paths: never limited, no headers.
    let res = get(&svc, "/internal/metrics", "192.0.2.9:1", &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("ratelimit").is_none());
    assert_eq!(statuses(3, "/readyz").await, [200, 200, 200]);
    // The `pro` tier of the default policy: a bigger quota, a separate bucket.
    for _ in 0..20 {
        let res = get(&svc, "/", "192.0.2.9:1", &[("x-test-tier", "pro")]).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(header(&res, "ratelimit-policy").starts_with("\"pro\""));
    }
}

#[tokio::test]
async fn forwarded_clients_get_their_own_buckets_only_behind_a_trusted_proxy() {
    let store = Arc::new(MemoryStore::new());
    let svc = service(&cell_config(), store, &["10.0.0.0/8"]);
    let burst = |peer: &'static str, xff: &'static str| {
        let svc = svc.clone();
        async move {
            let mut ok = 0;
            for _ in 0..6 {
                let res = get(&svc, "/", peer, &[("x-forwarded-for", xff)]).await;
                ok += usize::from(res.status() == StatusCode::OK);
            }
            ok
        }
    };
    // Behind the trusted proxy, two forwarded clients: 5 each.
    assert_eq!(burst("10.0.0.1:1", "198.51.100.1").await, 5);
    assert_eq!(burst("10.0.0.1:1", "198.51.100.2").await, 5);
    // An untrusted peer cannot pick a fresh bucket by inventing X-Forwarded-For.
    assert_eq!(burst("203.0.113.7:1", "198.51.100.3").await, 5);
    assert_eq!(burst("203.0.113.7:1", "198.51.100.4").await, 0);
}

#[tokio::test]
async fn a_single_route_can_carry_its_own_policy() {
    use axum::{Router, routing::get as get_route};
    let mut config = cell_config();
    config.default_policy = String::new(); // nothing limited unless asked
    config.policies.insert(
        "search".into(),
        PolicyConfig::new(
            Algorithm::SlidingWindow,
            [QuotaConfig::new(1, Duration::from_secs(60))],
        ),
    );
    let limiter = Arc::new(RateLimiter::new(&config, Arc::new(MemoryStore::new())).unwrap());
    let app = Router::new()
        .route(
            "/search",
            get_route(|| async { "found" })
                .layer(RateLimitLayer::policy(limiter.clone(), "search").unwrap()),
        )
        .route("/free", get_route(|| async { "free" }))
        .layer(RateLimitLayer::new(limiter.clone()));
    let svc = ServiceBuilder::new()
        .layer(RequestContextLayer::new(&RequestContextConfig::default()))
        .service(app);
    let status = |path: &'static str| {
        let svc = svc.clone();
        async move {
            svc.oneshot(request(path, "192.0.2.3:1", &[]))
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status("/search").await, StatusCode::OK);
    assert_eq!(status("/search").await, StatusCode::TOO_MANY_REQUESTS);
    for _ in 0..10 {
        assert_eq!(status("/free").await, StatusCode::OK);
    }
    assert!(RateLimitLayer::policy(limiter, "nope").is_err());
}

/// The Redis store against a real server (needs the `redis` feature).
#[cfg(feature = "redis")]
mod redis {
    use palisade::{rate_limit::redis::RedisStore, redis_connection::RedisConnection};
    use palisade_testkit::RedisServer;

    use super::*;

    fn redis_store(url: &str, on_error: OnStoreError) -> Arc<RedisStore> {
        Arc::new(
            RedisStore::new(
                &RedisConnection::open(url, false).unwrap(),
                "palisade:test:",
                Duration::from_millis(50),
                on_error,
                10_000,
            )
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn redis_store_gives_the_same_answers_and_shares_one_quota() {
        let redis = RedisServer::start();
        // Two limiters (two instances) on one Redis share a bucket per client.
        let a = service(
            &cell_config(),
            redis_store(&redis.url(), OnStoreError::FailClosed),
            &[],
        );
        let b = service(
            &cell_config(),
            redis_store(&redis.url(), OnStoreError::FailClosed),
            &[],
        );
        for (i, remaining) in [4, 3, 2, 1, 0].into_iter().enumerate() {
            let svc = if i % 2 == 0 { &a } else { &b };
            let res = get(svc, "/", "192.0.2.1:1000", &[]).await;
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(header(&res, "x-ratelimit-remaining"), remaining.to_string());
        }
        let res = get(&b, "/", "192.0.2.1:1000", &[]).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&res, "retry-after"), "1");
        // One key for the client, in the documented shape (hash tag around policy and digest).
        let mut conn = ::redis::Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg("palisade:test:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        let digest = keys[0]
            .strip_prefix("palisade:test:{default:")
            .and_then(|k| k.strip_suffix("}:g0"))
            .unwrap_or_else(|| panic!("unexpected key {:?}", keys[0]));
        assert_eq!(digest.len(), 32, "{digest}");
        assert!(
            digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{digest}"
        );
        // The sliding window through the script: 3 per minute, across both instances.
        let mut config = cell_config();
        config.policies.insert(
            "default".into(),
            PolicyConfig::new(
                Algorithm::SlidingWindow,
                [QuotaConfig::new(3, Duration::from_secs(60))],
            ),
        );
        let a = service(
            &config,
            redis_store(&redis.url(), OnStoreError::FailClosed),
            &[],
        );
        let b = service(
            &config,
            redis_store(&redis.url(), OnStoreError::FailClosed),
            &[],
        );
        let mut ok = 0;
        for i in 0..8 {
            let svc = if i % 2 == 0 { &a } else { &b };
            ok += usize::from(get(svc, "/", "192.0.2.50:1", &[]).await.status() == StatusCode::OK);
        }
        assert_eq!(ok, 3);
    }

    #[tokio::test]
    async fn redis_outage_fails_open_or_closed_without_waiting_and_recovers() {
        let mut redis = RedisServer::start();
        let open_store = redis_store(&redis.url(), OnStoreError::FailOpen);
        let closed_store = redis_store(&redis.url(), OnStoreError::FailClosed);
        let open = service(&cell_config(), open_store.clone(), &[]);
        let closed = service(&cell_config(), closed_store.clone(), &[]);
        assert_eq!(
            get(&open, "/", "192.0.2.1:1", &[]).await.status(),
            StatusCode::OK
        );
        assert_eq!(
            get(&closed, "/", "192.0.2.2:1", &[]).await.status(),
            StatusCode::OK
        );

        redis.stop();
        let started = std::time::Instant::now();
        let mut open_statuses = Vec::new();
        for _ in 0..6 {
            open_statuses.push(get(&open, "/", "192.0.2.3:1", &[]).await.status().as_u16());
        }
        // The in-memory fallback still limits: 5 then 429, never a 5xx.
        assert_eq!(open_statuses, [200, 200, 200, 200, 200, 429]);
        let res = get(&closed, "/", "192.0.2.4:1", &[]).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&res, "retry-after"), "1");
        // Eight decisions, at most two of which waited for Redis (one per store).
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let stats = open_store.stats();
        assert!(
            stats.down && stats.outages == 1 && stats.fallbacks >= 6,
            "{stats:?}"
        );

        redis.restart();
        // Within a few retry intervals both stores use Redis again.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let res = get(&closed, "/", "192.0.2.5:1", &[]).await;
            if res.status() == StatusCode::OK && !closed_store.stats().down {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no recovery: {:?}",
                closed_store.stats()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Shared limiting resumed: two fresh limiters on this Redis share one bucket again.
        let other = service(
            &cell_config(),
            redis_store(&redis.url(), OnStoreError::FailClosed),
            &[],
        );
        let mut ok = 0;
        for i in 0..8 {
            let svc = if i % 2 == 0 { &closed } else { &other };
            ok += usize::from(get(svc, "/", "192.0.2.6:1", &[]).await.status() == StatusCode::OK);
        }
        assert_eq!(ok, 5);
    }

    #[tokio::test]
    async fn switching_a_policy_to_the_other_algorithm_reads_no_stale_state() {
        let redis = RedisServer::start();
        let mut sliding = cell_config();
        sliding.policies.insert(
            "default".into(),
            PolicyConfig::new(
                Algorithm::SlidingWindow,
                [QuotaConfig::new(3, Duration::from_secs(60))],
            ),
        );
        let store = redis_store(&redis.url(), OnStoreError::FailClosed);
        let before = service(&sliding, store.clone(), &[]);
        for _ in 0..3 {
            assert_eq!(
                get(&before, "/", "192.0.2.7:1", &[]).await.status(),
                StatusCode::OK
            );
        }
        // A rolling deploy switches the same policy name to GCRA: the new instance starts
        // from a fresh bucket instead of failing on the old instance's state.
        let gcra_store = redis_store(&redis.url(), OnStoreError::FailClosed);
        let after = service(&cell_config(), gcra_store.clone(), &[]);
        let res = get(&after, "/", "192.0.2.7:1", &[]).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "x-ratelimit-remaining"), "4");
        assert_eq!(gcra_store.stats().errors, 0);
        assert!(!store.stats().down);
    }

    #[tokio::test]
    async fn a_redis_cluster_shares_quotas_across_instances_and_spreads_clients() {
        let cluster = palisade_testkit::RedisCluster::start();
        // Two instances: two connections to the cluster.
        let store = || {
            let redis = RedisConnection::open(&cluster.urls(), true).unwrap();
            let store = RedisStore::new(
                &redis,
                "palisade:test:",
                Duration::from_secs(1),
                OnStoreError::FailClosed,
                10_000,
            );
            (redis, Arc::new(store.unwrap()))
        };
        let ((ra, sa), (rb, sb)) = (store(), store());
        ra.ping(Duration::from_secs(10)).await.unwrap();
        rb.ping(Duration::from_secs(10)).await.unwrap();
        let a = service(&cell_config(), sa, &[]);
        let b = service(&cell_config(), sb, &[]);
        // The redis-cell vector across two instances, for many clients (many slots).
        for client in 1..=12 {
            let peer = format!("192.0.2.{client}:1");
            let mut statuses = Vec::new();
            for i in 0..6 {
                let svc = if i % 2 == 0 { &a } else { &b };
                statuses.push(get(svc, "/", &peer, &[]).await.status().as_u16());
            }
            assert_eq!(statuses, [200, 200, 200, 200, 200, 429], "client {client}");
        }
        let keys = cluster.keys_per_node();
        assert!(keys.iter().all(|k| *k > 0), "keys did not spread: {keys:?}");
    }
}
