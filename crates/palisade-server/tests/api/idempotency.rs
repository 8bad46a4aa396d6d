//! Idempotency keys in the real server: replays through the whole stack, and one key shared
//! by two instances through a real Redis.

use palisade_testkit::RedisServer;
use serde_json::Value;

use crate::helpers::{TestApp, assert_problem, runs, spawn_app, spawn_app_with_toml};

async fn post(app: &TestApp, path: &str, key: &str, body: &str) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_default_stack_replays_a_retried_post_with_fresh_per_request_headers() {
    let app = spawn_app().await;
    let first = post(&app, "/runs/server-replay", "k1", "pay 10").await;
    assert_eq!(first.status(), 201);
    let first_id = first.headers()["x-request-id"].clone();
    let first_body: Value = first.json().await.unwrap();

    let again = post(&app, "/runs/server-replay", "k1", "pay 10").await;
    assert_eq!(again.status(), 201);
    let h = again.headers();
    assert_eq!(h["idempotent-replayed"], "true");
    assert_ne!(h["x-request-id"], first_id);
    // Layers outside idempotency still answer for this request.
    assert!(h.get("ratelimit").is_some());
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(again.json::<Value>().await.unwrap(), first_body);
    assert_eq!(runs("server-replay"), 1);

    let other = post(&app, "/runs/server-replay", "k1", "pay 20").await;
    assert_problem(other, 422).await;
    assert_eq!(runs("server-replay"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_posts_across_two_instances_sharing_redis_run_once() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [("PALISADE_REDIS__URL", url.as_str())];
    let toml = "[idempotency]\nstore = \"redis\"\n";
    let a = std::sync::Arc::new(spawn_app_with_toml(toml, &env).await);
    let b = std::sync::Arc::new(spawn_app_with_toml(toml, &env).await);
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let app = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let res = post(&app, "/runs/two-instances", "same", "order 1").await;
                let status = res.status().as_u16();
                let replayed = res.headers().contains_key("idempotent-replayed");
                (status, replayed, res.text().await.unwrap())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert_eq!(runs("two-instances"), 1);
    let original: Vec<_> = answers.iter().filter(|(s, r, _)| *s == 201 && !r).collect();
    assert_eq!(original.len(), 1, "{answers:?}");
    for (status, _, body) in &answers {
        assert!(
            *status == 409 || (*status == 201 && *body == original[0].2),
            "{status} {body}"
        );
    }
}

#[tokio::test]
async fn bad_idempotency_config_is_an_error_naming_the_key() {
    let toml = "[idempotency]\nlease = \"1ms\"\n";
    let opts = crate::helpers::options_with_file(toml, &[]);
    let err = palisade_server::config::load(&opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("idempotency.lease"), "{err}");
    let toml = "[idempotency]\nstore = \"redis\"\n";
    let opts = crate::helpers::options_with_file(toml, &[]);
    let err = palisade_server::config::load(&opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("redis.url") && err.contains("idempotency.store"),
        "{err}"
    );
}
