//! Idempotency keys through the real layers (request context, idempotency, an axum router
//! that counts handler runs), in memory and on a real `redis-server`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, routing};
use axum_core::body::Body;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use palisade::{
    client_ip::ConnectionInfo,
    context::{RequestContextConfig, RequestContextLayer},
    idempotency::{
        Idempotency, IdempotencyConfig, IdempotencyKey, IdempotencyLayer, IdempotencyRouteConfig,
        IdempotencyStore, MemoryStore,
    },
};
use tokio::sync::Semaphore;
use tower::{ServiceBuilder, ServiceExt, util::BoxCloneSyncService};

type Svc = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// One instance: the stack around a router whose handlers count their runs.
#[derive(Clone)]
struct App {
    svc: Svc,
    calls: Arc<AtomicUsize>,
    /// `/slow` waits for a permit.
    gate: Arc<Semaphore>,
}

fn config(edit: impl FnOnce(&mut IdempotencyConfig)) -> IdempotencyConfig {
    let mut c = IdempotencyConfig {
        max_response_bytes: 64,
        routes: vec![IdempotencyRouteConfig {
            path: "/required".into(),
            methods: Vec::new(),
            required: true,
            exempt: false,
        }],
        ..Default::default()
    };
    edit(&mut c);
    c
}

fn app(config: &IdempotencyConfig, store: Arc<dyn IdempotencyStore>) -> App {
    let idem = Arc::new(Idempotency::new(config, store).unwrap());
    static INSTANCES: AtomicUsize = AtomicUsize::new(0);
    let instance = INSTANCES.fetch_add(1, Ordering::Relaxed);
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (c, g) = (calls.clone(), gate.clone());
    let count = move || c.fetch_add(1, Ordering::SeqCst) + 1;
    let created = {
        let count = count.clone();
        move |body: Bytes| {
            let n = count();
            async move {
                Response::builder()
                    .status(StatusCode::CREATED)
                    .header("location", format!("/orders/{n}"))
                    .header("set-cookie", "session=secret")
                    .header("content-type", "application/json")
                    .body(Body::from(format!(
                        r#"{{"order":{n},"echo":{:?}}}"#,
                        String::from_utf8_lossy(&body)
                    )))
                    .unwrap()
            }
        }
    };
    let router = Router::new()
        .route(
            "/orders",
            routing::post(created.clone()).patch(created.clone()),
        )
        // A per-route layer inside the router-wide one: the route requires a key.
        .route(
            "/nested",
            routing::post(created.clone()).layer(IdempotencyLayer::required(idem.clone())),
        )
        .route(
            "/status/{code}",
            routing::post({
                let count = count.clone();
                move |axum::extract::Path(code): axum::extract::Path<u16>| {
                    let n = count();
                    async move { (StatusCode::from_u16(code).unwrap(), format!("run {n}")) }
                }
            }),
        )
        .route(
            "/stream-with-length",
            routing::post({
                let count = count.clone();
                move || {
                    let n = count();
                    let text = format!("streamed run {n}");
                    let len = text.len();
                    let chunks = vec![Ok::<_, Infallible>(Bytes::from(text))];
                    async move {
                        Response::builder()
                            .header("content-length", len)
                            .body(Body::from_stream(futures_util::stream::iter(chunks)))
                            .unwrap()
                    }
                }
            }),
        )
        .route("/required", routing::post(created))
        .route(
            "/key",
            routing::post({
                let count = count.clone();
                move |key: IdempotencyKey| {
                    count();
                    async move { key.to_string() }
                }
            }),
        )
        .route(
            "/fail",
            routing::post({
                let count = count.clone();
                move || {
                    count();
                    async { StatusCode::INTERNAL_SERVER_ERROR }
                }
            }),
        )
        .route(
            "/slow",
            routing::post({
                let count = count.clone();
                move || {
                    let n = count();
                    let g = g.clone();
                    async move {
                        g.acquire().await.unwrap().forget();
                        (StatusCode::CREATED, format!("slow {instance}:{n}"))
                    }
                }
            }),
        )
        .route(
            "/stream",
            routing::post({
                let count = count.clone();
                move |body: Bytes| {
                    let n = count();
                    // Chunks of unknown total size: recorded while they stream.
                    let chunks = vec![
                        Ok::<_, Infallible>(Bytes::from(format!("run {n}; "))),
                        Ok(body),
                    ];
                    async move { Body::from_stream(futures_util::stream::iter(chunks)) }
                }
            }),
        )
        .route(
            "/big",
            routing::post(move || {
                let n = count();
                async move { format!("{n}:{}", "x".repeat(1000)) }
            }),
        );
    let context = RequestContextLayer::new(&RequestContextConfig::default());
    let svc = ServiceBuilder::new()
        .layer(context)
        .layer(IdempotencyLayer::new(idem))
        .service(router);
    App {
        svc: BoxCloneSyncService::new(svc),
        calls,
        gate,
    }
}

fn memory_app(edit: impl FnOnce(&mut IdempotencyConfig)) -> App {
    app(&config(edit), Arc::new(MemoryStore::default()))
}

/// A POST from `peer` with an optional key.
fn post_req(path: &str, peer: &str, key: Option<&str>, body: &str) -> Request<Body> {
    let mut b = Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    let mut req = b.body(Body::from(body.to_owned())).unwrap();
    req.extensions_mut().insert(ConnectionInfo {
        peer: peer.parse::<SocketAddr>().unwrap(),
        tls: false,
    });
    req
}

const ALICE: &str = "192.0.2.1:5000";
const BOB: &str = "192.0.2.2:5000";

/// Status, headers and body of one answer.
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .map(|v| v.as_bytes())
            == Some(b"true")
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

async fn send(app: &App, req: Request<Body>) -> Answer {
    let res = app.svc.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn post(app: &App, path: &str, peer: &str, key: Option<&str>, body: &str) -> Answer {
    send(app, post_req(path, peer, key, body)).await
}

/// First run executes; the retry replays status, headers and body byte for byte, marked,
/// with its own request id; the handler ran once.
async fn replay_is_identical(app: &App) {
    let first = post(app, "/orders", ALICE, Some("order-1"), r#"{"sku":7}"#).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed());
    let again = post(app, "/orders", ALICE, Some("\"order-1\""), r#"{"sku":7}"#).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["location"], first.headers["location"]);
    assert_eq!(again.headers["content-type"], "application/json");
    assert!(again.headers.get("set-cookie").is_none());
    assert_ne!(again.headers["x-request-id"], first.headers["x-request-id"]);
    assert_eq!(app.calls.load(Ordering::SeqCst), 1);
    // Without a key, nothing is stored: each request runs.
    post(app, "/orders", ALICE, None, "{}").await;
    post(app, "/orders", ALICE, None, "{}").await;
    assert_eq!(app.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_retry_replays_the_first_response_byte_for_byte() {
    replay_is_identical(&memory_app(|_| {})).await;
}

#[tokio::test]
async fn reusing_a_key_with_another_body_is_422_and_bad_keys_are_400() {
    let app = memory_app(|_| {});
    post(&app, "/orders", ALICE, Some("k"), r#"{"sku":7}"#).await;
    let other = post(&app, "/orders", ALICE, Some("k"), r#"{"sku":8}"#).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.json()["title"], "Idempotency-Key is already used");
    assert!(other.json()["request_id"].is_string());

    let missing = post(&app, "/required", ALICE, None, "{}").await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.json()["title"], "Idempotency-Key is missing");
    let long = "k".repeat(300);
    for bad in [long.as_str(), "", "\"\"", "a b", "\"unterminated"] {
        let res = post(&app, "/orders", ALICE, Some(bad), "{}").await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(res.json()["title"], "Invalid Idempotency-Key", "{bad:?}");
    }
    // A control character (tab) and a non-ASCII byte, as raw header bytes.
    for raw in [&b"a\tb"[..], "caf\u{e9}".as_bytes()] {
        let mut req = post_req("/orders", ALICE, None, "{}");
        req.headers_mut().insert(
            "idempotency-key",
            http::HeaderValue::from_bytes(raw).unwrap(),
        );
        assert_eq!(send(&app, req).await.status, StatusCode::BAD_REQUEST);
    }
    // Sent twice.
    let mut req = post_req("/orders", ALICE, Some("a"), "{}");
    req.headers_mut()
        .append("idempotency-key", http::HeaderValue::from_static("b"));
    assert_eq!(send(&app, req).await.status, StatusCode::BAD_REQUEST);
    // Only the first request ran.
    assert_eq!(app.calls.load(Ordering::SeqCst), 1);
    // The handler's extractor sees the key the request runs under.
    let res = post(&app, "/key", ALICE, Some("\"my key\""), "").await;
    assert_eq!(res.body, "my key");
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_reserves_nothing() {
    let app = memory_app(|c| c.max_request_bytes = 16);
    let body = "x".repeat(17);
    let res = post(&app, "/orders", ALICE, Some("big"), &body).await;
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE);
    // A chunked body (no Content-Length) is cut off the same way.
    let chunks = vec![Ok::<_, Infallible>(Bytes::from("x".repeat(10))); 2];
    let mut req = post_req("/orders", ALICE, Some("big"), "");
    *req.body_mut() = Body::from_stream(futures_util::stream::iter(chunks));
    assert_eq!(send(&app, req).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(app.calls.load(Ordering::SeqCst), 0);
    let res = post(&app, "/orders", ALICE, Some("big"), "{}").await;
    assert_eq!(res.status, StatusCode::CREATED);
}

/// `n` concurrent requests with one key, spread over `apps`; the handler must run once and
/// every other answer is a 409 or the replay.
async fn concurrent_requests_run_once(apps: &[App], n: usize) {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let app = apps[i % apps.len()].clone();
            tokio::spawn(async move { post(&app, "/orders", ALICE, Some("once"), "{}").await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let calls: usize = apps.iter().map(|a| a.calls.load(Ordering::SeqCst)).sum();
    assert_eq!(calls, 1);
    let originals: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED && !a.replayed())
        .collect();
    assert_eq!(originals.len(), 1);
    for a in &answers {
        match a.status {
            StatusCode::CONFLICT => assert_eq!(a.headers["retry-after"], "1"),
            StatusCode::CREATED => assert_eq!(a.body, originals[0].body),
            other => panic!("unexpected {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_with_one_key_run_the_handler_once() {
    concurrent_requests_run_once(&[memory_app(|_| {})], 50).await;
}

#[tokio::test]
async fn a_500_is_not_stored_and_a_timed_out_request_releases_the_key() {
    let app = memory_app(|_| {});
    for _ in 0..2 {
        let res = post(&app, "/fail", ALICE, Some("f"), "").await;
        assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(app.calls.load(Ordering::SeqCst), 2);

    // A timeout drops the request's future while the handler waits.
    let call = app
        .svc
        .clone()
        .oneshot(post_req("/slow", ALICE, Some("t"), ""));
    assert!(
        tokio::time::timeout(Duration::from_millis(100), call)
            .await
            .is_err()
    );
    // The release runs in the background; the retry gets the key.
    tokio::time::sleep(Duration::from_millis(20)).await;
    app.gate.add_permits(1);
    let res = post(&app, "/slow", ALICE, Some("t"), "").await;
    assert_eq!(res.status, StatusCode::CREATED);
    assert!(res.body.ends_with(b":4"), "{:?}", res.body);
}

#[tokio::test]
async fn a_running_request_keeps_its_key_past_the_lease_by_renewing_it() {
    let app = memory_app(|c| c.lease = palisade::duration::ConfigDuration::millis(150));
    let running = tokio::spawn({
        let app = app.clone();
        async move { post(&app, "/slow", ALICE, Some("r"), "").await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await; // over three lease durations
    // (If renewal were broken, the duplicate would take the key and wait at the gate.)
    let dup = tokio::time::timeout(
        Duration::from_secs(5),
        post(&app, "/slow", ALICE, Some("r"), ""),
    )
    .await
    .expect("the duplicate ran instead of being refused");
    assert_eq!(dup.status, StatusCode::CONFLICT);
    app.gate.add_permits(1);
    let first = running.await.unwrap();
    let again = post(&app, "/slow", ALICE, Some("r"), "").await;
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_eq!(app.calls.load(Ordering::SeqCst), 1);
}

/// Two clients with one key get their own results; after the TTL the key runs again.
async fn clients_are_separate_and_entries_expire(app: &App) {
    let a = post(app, "/orders", ALICE, Some("shared"), "{}").await;
    let b = post(app, "/orders", BOB, Some("shared"), "{}").await;
    assert!(!a.replayed() && !b.replayed());
    assert_ne!(a.body, b.body);
    // An API key is an identity of its own, above the IP.
    let mut req = post_req("/orders", ALICE, Some("shared"), "{}");
    req.headers_mut()
        .insert("x-api-key", http::HeaderValue::from_static("key-1"));
    assert!(!send(app, req).await.replayed());
    assert!(
        post(app, "/orders", ALICE, Some("shared"), "{}")
            .await
            .replayed()
    );
    assert_eq!(app.calls.load(Ordering::SeqCst), 3);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        !post(app, "/orders", ALICE, Some("shared"), "{}")
            .await
            .replayed()
    );
    assert_eq!(app.calls.load(Ordering::SeqCst), 4);
}

fn short_ttl(c: &mut IdempotencyConfig) {
    c.ttl = palisade::duration::ConfigDuration::secs(1);
    c.lease = palisade::duration::ConfigDuration::millis(500);
}

#[tokio::test]
async fn two_clients_with_one_key_are_independent_and_entries_expire() {
    clients_are_separate_and_entries_expire(&memory_app(short_ttl)).await;
}

#[tokio::test]
async fn large_and_streamed_responses_are_never_run_twice() {
    let app = memory_app(|_| {});
    // Streamed, within the limit: stored when it ends, replayed whole.
    let first = post(&app, "/stream", ALICE, Some("s"), "abc").await;
    assert_eq!(first.body, "run 1; abc");
    tokio::time::sleep(Duration::from_millis(20)).await; // the store runs after the end
    let again = post(&app, "/stream", ALICE, Some("s"), "abc").await;
    assert!(again.replayed());
    assert_eq!(again.body, first.body);

    // Too large to keep: the client gets all of it once; retries learn it completed.
    let big = post(&app, "/big", ALICE, Some("b"), "").await;
    assert_eq!(big.status, StatusCode::OK);
    assert_eq!(big.body.len(), 1002);
    let retry = post(&app, "/big", ALICE, Some("b"), "").await;
    assert_eq!(retry.status, StatusCode::CONFLICT);
    assert_eq!(
        retry.json()["title"],
        "Idempotency-Key response unavailable"
    );
    assert_eq!(retry.json()["original-status"], 200);
    assert!(retry.headers.get("retry-after").is_none());
    assert_eq!(app.calls.load(Ordering::SeqCst), 2);

    // A streamed response the client stops reading: the handler ran, so no second run.
    let res = app
        .svc
        .clone()
        .oneshot(post_req("/stream", ALICE, Some("dropped"), "abc"))
        .await
        .unwrap();
    drop(res);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let retry = post(&app, "/stream", ALICE, Some("dropped"), "abc").await;
    assert_eq!(retry.status, StatusCode::CONFLICT);
    assert_eq!(app.calls.load(Ordering::SeqCst), 3);
}

#[test]
fn config_errors_name_the_key() {
    let store: Arc<dyn IdempotencyStore> = Arc::new(MemoryStore::default());
    let err = |c: IdempotencyConfig| Idempotency::new(&c, store.clone()).unwrap_err().key;
    assert_eq!(
        err(config(|c| c.methods = vec!["NOT A METHOD".into()])),
        "methods"
    );
    assert_eq!(
        err(config(
            |c| c.lease = palisade::duration::ConfigDuration::millis(1)
        )),
        "lease"
    );
    assert_eq!(
        err(config(|c| {
            c.ttl = palisade::duration::ConfigDuration::secs(1);
            c.lease = palisade::duration::ConfigDuration::secs(2);
        })),
        "ttl"
    );
    assert_eq!(
        err(config(|c| c.max_response_bytes = 0)),
        "max_response_bytes"
    );
    assert_eq!(
        err(config(|c| c.routes[0].path = "nope".into())),
        "routes[0].path"
    );
    assert_eq!(
        err(config(|c| c.routes[0].exempt = true)),
        "routes[0].exempt"
    );
}

#[tokio::test]
async fn a_per_route_layer_inside_the_router_wide_one_requires_a_key_and_runs_once() {
    let app = memory_app(|_| {});
    let missing = post(&app, "/nested", ALICE, None, "{}").await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.json()["title"], "Idempotency-Key is missing");
    let first = post(&app, "/nested", ALICE, Some("n"), "{}").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = post(&app, "/nested", ALICE, Some("n"), "{}").await;
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_eq!(app.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn client_errors_are_stored_but_timing_dependent_ones_and_patch_too() {
    let app = memory_app(|_| {});
    // A 422 from the handler is its answer to this payload: replayed.
    let first = post(&app, "/status/422", ALICE, Some("e"), "").await;
    assert_eq!(first.status, StatusCode::UNPROCESSABLE_ENTITY);
    let again = post(&app, "/status/422", ALICE, Some("e"), "").await;
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_eq!(app.calls.load(Ordering::SeqCst), 1);
    // 408, 409, 425 and 429 depend on the moment, 3xx is not an answer: each retry runs.
    for code in [408, 409, 425, 429, 303] {
        let path = format!("/status/{code}");
        let a = post(&app, &path, ALICE, Some("t"), "").await;
        let b = post(&app, &path, ALICE, Some("t"), "").await;
        assert_eq!(a.status.as_u16(), code);
        assert!(!b.replayed(), "{code}");
        assert_ne!(a.body, b.body, "{code}");
    }
    assert_eq!(app.calls.load(Ordering::SeqCst), 11);
    // PATCH is handled like POST (default methods).
    let mut req = post_req("/orders", ALICE, Some("p"), "{}");
    *req.method_mut() = http::Method::PATCH;
    let first = send(&app, req).await;
    let mut req = post_req("/orders", ALICE, Some("p"), "{}");
    *req.method_mut() = http::Method::PATCH;
    let again = send(&app, req).await;
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
}

/// Over a real HTTP/1.1 connection: a streamed response that declares its length is stored
/// once that many bytes were sent, even if the server never polls the body for its end.
#[tokio::test]
async fn a_streamed_response_with_a_content_length_is_stored_over_real_http() {
    let app = memory_app(|_| {});
    let addr = crate::helpers::serve(app.svc.clone()).await;
    let raw = b"POST /stream-with-length HTTP/1.1\r\nhost: x\r\nidempotency-key: L\r\n\
                content-length: 0\r\nconnection: close\r\n\r\n";
    let first = crate::helpers::exchange(addr, raw).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(first.ends_with("streamed run 1"), "{first}");
    tokio::time::sleep(Duration::from_millis(50)).await; // storing runs after the last byte
    let again = crate::helpers::exchange(addr, raw).await;
    assert!(again.contains("idempotent-replayed: true"), "{again}");
    assert!(again.ends_with("streamed run 1"), "{again}");
    assert_eq!(app.calls.load(Ordering::SeqCst), 1);
}

/// The Redis store against a real server (needs the `redis` feature).
#[cfg(feature = "redis")]
mod redis {
    use palisade::{idempotency::redis::RedisStore, redis_connection::RedisConnection};
    use palisade_testkit::{RedisServer, TcpRelay};

    use super::*;

    fn redis_app(url: &str, edit: impl FnOnce(&mut IdempotencyConfig)) -> (App, RedisConnection) {
        let conn = RedisConnection::open(url, false).unwrap();
        let store = RedisStore::new(&conn, "palisade:test:idem:", Duration::from_secs(1));
        (app(&config(edit), Arc::new(store.unwrap())), conn)
    }

    #[tokio::test]
    async fn a_retry_replays_the_first_response_byte_for_byte_from_redis() {
        let redis = RedisServer::start();
        replay_is_identical(&redis_app(&redis.url(), |_| {}).0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn fifty_concurrent_requests_across_two_instances_run_the_handler_once() {
        let redis = RedisServer::start();
        let (a, _) = redis_app(&redis.url(), |_| {});
        let (b, _) = redis_app(&redis.url(), |_| {});
        concurrent_requests_run_once(&[a, b], 50).await;
    }

    #[tokio::test]
    async fn two_clients_with_one_key_are_independent_and_redis_entries_expire() {
        let redis = RedisServer::start();
        clients_are_separate_and_entries_expire(&redis_app(&redis.url(), short_ttl).0).await;
    }

    /// Calls of the script so far (`INFO commandstats`).
    async fn script_calls(url: &str) -> u64 {
        let client = ::redis::Client::open(url).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = ::redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut c)
            .await
            .unwrap();
        info.lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    #[tokio::test]
    async fn a_new_request_costs_two_round_trips_and_a_replay_one() {
        let redis = RedisServer::start();
        let url = redis.url();
        let (app, _) = redis_app(&url, |_| {});
        post(&app, "/orders", ALICE, Some("warm-up"), "{}").await; // loads the script
        let before = script_calls(&url).await;
        post(&app, "/orders", ALICE, Some("new"), "{}").await;
        let after_new = script_calls(&url).await;
        assert_eq!(after_new - before, 2, "reserve + complete");
        assert!(
            post(&app, "/orders", ALICE, Some("new"), "{}")
                .await
                .replayed()
        );
        assert_eq!(
            script_calls(&url).await - after_new,
            1,
            "reserve answers the replay"
        );
    }

    /// An instance loses Redis while its request runs (as if it died): after the lease the
    /// key runs on another instance, and the first instance's late result is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_instance_frees_its_key_after_the_lease_and_never_overwrites_the_new_result() {
        let redis = RedisServer::start();
        let relay = TcpRelay::start(redis.port());
        let lease = |c: &mut IdempotencyConfig| {
            c.lease = palisade::duration::ConfigDuration::millis(600);
        };
        let (dying, dying_conn) = redis_app(&relay.redis_url(), lease);
        let (other, _) = redis_app(&redis.url(), lease);

        let stuck = tokio::spawn({
            let dying = dying.clone();
            async move { post(&dying, "/slow", ALICE, Some("k"), "").await }
        });
        // Wait until the first instance holds the lease.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while dying.calls.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "never reserved");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            post(&other, "/slow", ALICE, Some("k"), "").await.status,
            StatusCode::CONFLICT
        );
        relay.cut(); // no renewals reach Redis any more
        tokio::time::sleep(Duration::from_millis(900)).await;

        other.gate.add_permits(1);
        let fresh = post(&other, "/slow", ALICE, Some("k"), "").await;
        assert_eq!(fresh.status, StatusCode::CREATED);
        assert!(!fresh.replayed());
        assert_eq!(other.calls.load(Ordering::SeqCst), 1);

        // The first instance comes back and its handler finishes: its result is refused.
        relay.restore();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while dying_conn.ping(Duration::from_millis(200)).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "never reconnected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        dying.gate.add_permits(1);
        let late = stuck.await.unwrap();
        assert_eq!(late.status, StatusCode::CREATED);
        assert_ne!(late.body, fresh.body);
        for app in [&dying, &other] {
            let replay = post(app, "/slow", ALICE, Some("k"), "").await;
            assert!(replay.replayed());
            assert_eq!(replay.body, fresh.body);
        }
    }
}
