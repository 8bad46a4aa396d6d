//! Rate limiting in the real server: default headers, one quota shared by two instances
//! through a real Redis, outages, proxies, and config errors.

use std::time::{Duration, Instant};

use palisade_server::config::load;
use palisade_testkit::RedisServer;

use crate::helpers::{TestApp, assert_problem, options_with_file, spawn_app, spawn_app_with_toml};
use crate::metrics::sample;

/// A 20-per-minute sliding window shared through Redis.
fn shared(on_store_error: &str) -> String {
    format!(
        r#"
[client_ip]
trusted_proxies = ["127.0.0.1/32"]

[rate_limit]
store = "redis"
on_store_error = "{on_store_error}"

[rate_limit.policies.default]
algorithm = "sliding_window"
quotas = [{{ limit = 20, window = "1m" }}]
"#
    )
}

/// Sends `n` requests alternating between `apps`; returns the status codes.
async fn alternate(apps: &[&TestApp], n: usize, headers: &[(&str, &str)]) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let app = apps[i % apps.len()];
        let mut req = app.client.get(app.url("/whoami"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        out.push(req.send().await.unwrap().status().as_u16());
    }
    out
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test]
async fn default_stack_limits_per_client_with_headers_and_leaves_health_alone() {
    let app = spawn_app().await;
    let res = app.get("/whoami").await;
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert_eq!(h["ratelimit-policy"], "\"default\";q=6000;w=60");
    assert!(
        h["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"default\";r=500;t=")
    );
    assert_eq!(h["x-ratelimit-remaining"], "500");
    let res = app.get("/livez").await;
    assert!(res.headers().get("ratelimit").is_none());
}

#[tokio::test]
async fn two_instances_sharing_redis_enforce_one_quota() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [("PALISADE_REDIS__URL", url.as_str())];
    let a = spawn_app_with_toml(&shared("fail_open"), &env).await;
    let b = spawn_app_with_toml(&shared("fail_open"), &env).await;
    let statuses = alternate(&[&a, &b], 60, &[]).await;
    assert_eq!(count(&statuses, 200), 20, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 40, "{statuses:?}");
    // The 429 is the full problem, from whichever instance refused.
    let res = b.get("/whoami").await;
    assert_eq!(res.headers()["ratelimit-policy"], "\"default\";q=20;w=60");
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // A full current window waits for it to end, then for the previous window's weight to
    // fall by one request: at most 60 s + 60 s / 20 = 63 s, depending on where in the
    // (wall-clock aligned) window the test happens to run.
    assert!((1..=63).contains(&retry), "{retry}");
    let body = assert_problem(res, 429).await;
    assert_eq!(body["violated-policies"][0], "default");
}

#[tokio::test]
async fn redis_outage_fail_open_keeps_serving_fail_closed_refuses_and_sharing_resumes() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let env = [("PALISADE_REDIS__URL", url.as_str())];
    let a = spawn_app_with_toml(&shared("fail_open"), &env).await;
    let b = spawn_app_with_toml(&shared("fail_open"), &env).await;
    let closed = spawn_app_with_toml(&shared("fail_closed"), &env).await;
    assert_eq!(alternate(&[&a, &b], 4, &[]).await, [200; 4]);

    redis.stop();
    let started = Instant::now();
    let statuses = alternate(&[&a, &b], 30, &[]).await;
    // Each instance falls back to its own in-memory limiter: no 5xx, still limited.
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(
        count(&statuses, 200),
        30,
        "each instance allows its own 20: {statuses:?}"
    );
    // 30 requests, of which at most a few waited the 50 ms store timeout.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_problem(closed.get("/whoami").await, 503).await;
    // The outage shows in each instance's metrics.
    let text = a.get("/metrics").await.text().await.unwrap();
    let fallbacks = sample(&text, "palisade_rate_limit_store_fallbacks_total").unwrap();
    assert!(fallbacks >= 1.0, "{text}");
    assert!(sample(&text, "palisade_rate_limit_store_errors_total").unwrap() >= 1.0);
    let text = closed.get("/metrics").await.text().await.unwrap();
    assert!(
        sample(
            &text,
            "http_rejections_total{layer=\"rate_limit\",reason=\"store_unavailable\"}"
        )
        .unwrap()
            >= 1.0,
        "{text}"
    );

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while closed.get("/whoami").await.status() != 200 {
        assert!(
            Instant::now() < deadline,
            "fail_closed instance never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Back to one shared quota. Each instance reconnects on its own (a probe every retry
    // interval, the connection manager's backoff), so under load one may lag: each attempt
    // uses a fresh client address (a fresh bucket) until all three instances share it.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let ip = format!("198.51.100.{attempt}");
        let statuses = alternate(&[&a, &b, &closed], 30, &[("x-forwarded-for", &ip)]).await;
        if count(&statuses, 200) == 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the instances never shared one quota again: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn forwarded_clients_get_separate_buckets_only_behind_trusted_proxies() {
    let config = |trusted: &str| {
        format!(
            r#"
[client_ip]
trusted_proxies = [{trusted}]

[rate_limit.policies.default]
quotas = [{{ limit = 3, window = "1m" }}]
"#
        )
    };
    let proxied = spawn_app_with_toml(&config("\"127.0.0.1/32\""), &[]).await;
    for client in ["198.51.100.1", "198.51.100.2"] {
        let s = alternate(&[&proxied], 4, &[("x-forwarded-for", client)]).await;
        assert_eq!(s, [200, 200, 200, 429], "{client}");
    }
    // Nobody trusted: the header is ignored and every request is 127.0.0.1's.
    let direct = spawn_app_with_toml(&config(""), &[]).await;
    let s = alternate(&[&direct], 2, &[("x-forwarded-for", "198.51.100.1")]).await;
    let t = alternate(&[&direct], 2, &[("x-forwarded-for", "198.51.100.2")]).await;
    assert_eq!([s, t].concat(), [200, 200, 200, 429]);
}

#[test]
fn bad_rate_limit_config_is_an_error_naming_the_key() {
    let cases = [
        (
            "quotas = [{ limit = 0, window = \"1m\" }]",
            "rate_limit.policies.default.quotas[0].limit",
        ),
        (
            "quotas = [{ limit = -5, window = \"1m\" }]",
            "rate_limit.policies.default.quotas",
        ),
        (
            "quotas = [{ limit = 5, window = \"0s\" }]",
            "rate_limit.policies.default.quotas[0].window",
        ),
        (
            "algorithm = \"leaky\"\nquotas = [{ limit = 5, window = \"1m\" }]",
            "rate_limit.policies.default.algorithm",
        ),
    ];
    for (policy, key) in cases {
        let toml = format!("[rate_limit.policies.default]\n{policy}\n");
        let err = load(&options_with_file(&toml, &[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{policy}: {err}");
    }
    let err = load(&options_with_file("[rate_limit]\nstore = \"redis\"\n", &[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("redis.url"), "{err}");
}

#[tokio::test]
async fn two_instances_on_a_redis_cluster_enforce_one_quota() {
    let cluster = palisade_testkit::RedisCluster::start();
    let urls = cluster.urls();
    let env = [
        ("PALISADE_REDIS__URL", urls.as_str()),
        ("PALISADE_REDIS__CLUSTER", "true"),
        ("PALISADE_RATE_LIMIT__STORE_TIMEOUT", "1s"),
    ];
    let a = spawn_app_with_toml(&shared("fail_closed"), &env).await;
    let b = spawn_app_with_toml(&shared("fail_closed"), &env).await;
    // The cluster connection is made in the background: wait until both answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.get("/livez").await.status() != 200 || b.get("/livez").await.status() != 200 {
        assert!(Instant::now() < deadline);
    }
    let mut statuses = Vec::new();
    while statuses.is_empty() || statuses.contains(&503) {
        assert!(
            Instant::now() < deadline,
            "cluster never connected: {statuses:?}"
        );
        statuses = alternate(&[&a, &b], 1, &[]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let statuses = alternate(&[&a, &b], 40, &[]).await;
    assert_eq!(count(&statuses, 200), 19, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 21, "{statuses:?}");
}
