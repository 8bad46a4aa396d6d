//! The circuit breaker over a real HTTP/1.1 server (hyper): a handler whose failures are
//! switched on and off, a group of guarded routes, readiness, and clients that hang up.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, routing};
use axum_core::body::Body;
use http::{Request, StatusCode};
use palisade::{
    circuit_breaker::{
        BreakerState, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer,
        CircuitBreakerRouteConfig,
    },
    context::{RequestContextConfig, RequestContextLayer},
    duration::ConfigDuration,
    health::Health,
};
use tokio::io::AsyncWriteExt as _;
use tower::{ServiceBuilder, util::BoxCloneSyncService};

use crate::helpers::{exchange, serve};

const OPEN_FOR: Duration = Duration::from_millis(200);

/// The upstream behind the breaker: fails with 500 while `failing`, counts the calls that
/// reach it, and counts the hanging calls whose future was dropped.
#[derive(Default)]
struct Upstream {
    failing: AtomicBool,
    calls: AtomicUsize,
    dropped: AtomicUsize,
}

impl Upstream {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Counts a dropped handler future.
struct DropGuard(Arc<Upstream>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// Four calls decide at 50 %; open for 200 ms; two probes; the group is `/api/*` and
/// `/hang`.
fn breaker() -> CircuitBreaker {
    let route = |path: &str| CircuitBreakerRouteConfig {
        path: path.into(),
        methods: Vec::new(),
    };
    let config = CircuitBreakerConfig {
        minimum_calls: 4,
        failure_rate_threshold: 50,
        open_duration: ConfigDuration(OPEN_FOR),
        half_open_max_calls: 2,
        routes: vec![route("/api/*"), route("/hang")],
        ..CircuitBreakerConfig::default()
    };
    CircuitBreaker::new("reports", &config).unwrap()
}

struct TestApp {
    addr: SocketAddr,
    upstream: Arc<Upstream>,
    breaker: CircuitBreaker,
}

async fn spawn_app() -> TestApp {
    let upstream = Arc::new(Upstream::default());
    let breaker = breaker();
    let health = Health::builder()
        .check(breaker.clone(), Duration::from_secs(1))
        .build();
    health.set_ready();
    let (up1, up2, up3) = (upstream.clone(), upstream.clone(), upstream.clone());
    let router = Router::new()
        .route(
            "/api/{name}",
            routing::get(move || async move {
                up1.calls.fetch_add(1, Ordering::SeqCst);
                if up1.failing.load(Ordering::SeqCst) {
                    (StatusCode::INTERNAL_SERVER_ERROR, "upstream down")
                } else {
                    (StatusCode::OK, "report")
                }
            }),
        )
        .route(
            "/hang",
            routing::get(move || async move {
                up2.calls.fetch_add(1, Ordering::SeqCst);
                let _guard = DropGuard(up2.clone());
                std::future::pending::<()>().await;
                "never"
            }),
        )
        .route(
            "/other",
            routing::get(move || async move {
                up3.calls.fetch_add(1, Ordering::SeqCst);
                "not guarded"
            }),
        )
        .route(
            "/readyz",
            routing::get(move || async move { health.readyz().await }),
        )
        .layer(CircuitBreakerLayer::new(breaker.clone()));
    let svc: BoxCloneSyncService<Request<Body>, http::Response<Body>, Infallible> =
        BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(RequestContextLayer::new(&RequestContextConfig::default()))
                .service(router),
        );
    TestApp {
        addr: serve(svc).await,
        upstream,
        breaker,
    }
}

/// One parsed response.
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

impl TestApp {
    async fn get_with_id(&self, path: &str, request_id: &str) -> Reply {
        let raw = format!(
            "GET {path} HTTP/1.1\r\nhost: x\r\nx-request-id: {request_id}\r\nconnection: close\r\n\r\n"
        );
        let text = exchange(self.addr, raw.as_bytes()).await;
        let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
        Reply {
            status: head[9..12].parse().unwrap(),
            head: head.to_owned(),
            body: body.to_owned(),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.get_with_id(path, "test").await
    }

    fn fail(&self, on: bool) {
        self.upstream.failing.store(on, Ordering::SeqCst);
    }

    /// Four failing calls: the breaker opens.
    async fn trip(&self) {
        self.fail(true);
        for _ in 0..4 {
            assert_eq!(self.get("/api/sales").await.status, 500);
        }
        assert_eq!(self.breaker.state(), BreakerState::Open);
    }

    /// Waits out the open duration.
    async fn wait_open_duration(&self) {
        tokio::time::sleep(OPEN_FOR + Duration::from_millis(50)).await;
    }
}

/// Polls `cond` until it holds (a liveness bound, not a speed assertion).
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not after 5 s");
}

fn assert_circuit_open(reply: &Reply, retry_after: &str) {
    assert_eq!(reply.status, 503, "{}{}", reply.head, reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(reply.header("retry-after"), Some(retry_after));
    let v = reply.json();
    assert_eq!(v["title"], "Circuit open");
    assert_eq!(v["status"], 503);
}

#[tokio::test]
async fn the_breaker_opens_after_the_minimum_failures_and_then_answers_503_without_the_handler() {
    let app = spawn_app().await;
    app.fail(true);
    for _ in 0..3 {
        assert_eq!(app.get("/api/sales").await.status, 500);
    }
    assert_eq!(
        app.breaker.state(),
        BreakerState::Closed,
        "3 calls: below minimum_calls"
    );
    assert_eq!(app.get("/api/sales").await.status, 500);
    assert_eq!(app.breaker.state(), BreakerState::Open);
    assert_eq!(app.upstream.calls(), 4);

    // Open: every guarded route is refused at once, even though the handler would
    // succeed now, and the handler is not called.
    app.fail(false);
    for path in ["/api/sales", "/api/stock", "/hang"] {
        let reply = app.get_with_id(path, "req-open-1").await;
        assert_circuit_open(&reply, "1");
        let v = reply.json();
        assert_eq!(v["request_id"], "req-open-1");
        assert_eq!(v["instance"], "urn:request:req-open-1");
        assert_eq!(reply.header("x-request-id"), Some("req-open-1"));
    }
    assert_eq!(app.upstream.calls(), 4, "no call reached the handler");
    // Routes outside the group are not affected.
    assert_eq!(app.get("/other").await.status, 200);
    assert_eq!(app.upstream.calls(), 5);
    let s = app.breaker.snapshot();
    assert_eq!(
        (s.calls, s.failures, s.rejected, s.times_opened),
        (4, 4, 3, 1)
    );
}

#[tokio::test]
async fn after_the_open_duration_probes_reach_the_handler_and_successes_close_it() {
    let app = spawn_app().await;
    app.trip().await;
    app.fail(false);
    assert_circuit_open(&app.get("/api/sales").await, "1");
    app.wait_open_duration().await;
    assert_eq!(app.breaker.state(), BreakerState::HalfOpen);

    let probe = app.get("/api/sales").await;
    assert_eq!(probe.status, 200, "{}", probe.body);
    assert_eq!(probe.body, "report");
    assert_eq!(app.upstream.calls(), 5, "the probe reached the handler");
    assert_eq!(app.breaker.state(), BreakerState::HalfOpen, "1 of 2 probes");
    assert_eq!(app.get("/api/sales").await.status, 200);
    assert_eq!(app.breaker.state(), BreakerState::Closed);
    for _ in 0..5 {
        assert_eq!(app.get("/api/sales").await.status, 200);
    }
    assert_eq!(app.upstream.calls(), 11);
}

#[tokio::test]
async fn a_failed_probe_opens_the_breaker_again() {
    let app = spawn_app().await;
    app.trip().await;
    app.wait_open_duration().await;
    let probe = app.get("/api/sales").await;
    assert_eq!(probe.status, 500, "the probe ran and failed");
    assert_eq!(app.upstream.calls(), 5);
    assert_eq!(app.breaker.state(), BreakerState::Open);
    app.fail(false);
    assert_circuit_open(&app.get("/api/sales").await, "1");
    assert_eq!(app.upstream.calls(), 5);
    assert_eq!(app.breaker.snapshot().times_opened, 2);
    // It recovers the same way once the upstream does.
    app.wait_open_duration().await;
    for _ in 0..2 {
        assert_eq!(app.get("/api/sales").await.status, 200);
    }
    assert_eq!(app.breaker.state(), BreakerState::Closed);
}

#[tokio::test]
async fn readiness_warns_while_the_breaker_is_open_and_passes_once_closed() {
    let app = spawn_app().await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "pass");
    assert_eq!(ready.json()["checks"]["reports"][0]["status"], "pass");

    app.trip().await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, 200, "a warning keeps readiness up");
    let v = ready.json();
    assert_eq!(v["status"], "warn");
    assert_eq!(v["checks"]["reports"][0]["status"], "warn");
    let output = v["checks"]["reports"][0]["output"].as_str().unwrap();
    assert!(output.starts_with("open: 4 of 4 calls failed"), "{output}");

    app.fail(false);
    app.wait_open_duration().await;
    let v = app.get("/readyz").await.json();
    assert_eq!(v["status"], "warn");
    let output = v["checks"]["reports"][0]["output"].as_str().unwrap();
    assert!(output.starts_with("half-open"), "{output}");
    for _ in 0..2 {
        assert_eq!(app.get("/api/sales").await.status, 200);
    }
    assert_eq!(app.get("/readyz").await.json()["status"], "pass");
}

#[tokio::test]
async fn a_request_cancelled_in_half_open_gives_its_probe_slot_back() {
    let app = spawn_app().await;
    app.trip().await;
    app.fail(false);
    app.wait_open_duration().await;

    // Two probes that hang: both slots are taken.
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        s.write_all(b"GET /hang HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        clients.push(s);
    }
    let upstream = app.upstream.clone();
    eventually("both probes reach the handler", || upstream.calls() == 6).await;
    let refused = app.get("/api/sales").await;
    assert_circuit_open(&refused, "1");
    assert_eq!(app.upstream.calls(), 6, "a third probe is refused");

    // The clients hang up: the server drops the probes' futures.
    drop(clients);
    eventually("both probe futures dropped", || {
        upstream.dropped.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(
        app.breaker.state(),
        BreakerState::HalfOpen,
        "cancelled probes are not failures"
    );
    // Both slots are free again, and the successful probes close the breaker.
    for _ in 0..2 {
        assert_eq!(app.get("/api/sales").await.status, 200);
    }
    assert_eq!(app.breaker.state(), BreakerState::Closed);
    let s = app.breaker.snapshot();
    assert_eq!(
        (s.calls, s.failures),
        (6, 4),
        "the cancelled probes did not count"
    );
}
