use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum_core::body::Body;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use tokio::time::advance;
use tower::{Layer as _, ServiceExt as _};

use super::*;
use crate::health::{CheckResult, CheckStatus, HealthCheck as _};

/// Four calls decide, at 50 %; one-second slow calls; two probes.
fn config() -> CircuitBreakerConfig {
    CircuitBreakerConfig {
        failure_rate_threshold: 50,
        slow_call_rate_threshold: 100,
        slow_call_duration: ConfigDuration::secs(1),
        window: ConfigDuration::secs(10),
        minimum_calls: 4,
        open_duration: ConfigDuration::secs(30),
        half_open_max_calls: 2,
        ..CircuitBreakerConfig::default()
    }
}

fn breaker(config: &CircuitBreakerConfig) -> CircuitBreaker {
    CircuitBreaker::new("upstream", config).unwrap()
}

fn run(b: &CircuitBreaker, outcome: Outcome) {
    b.try_acquire().expect("call admitted").record(outcome);
}

fn fail(b: &CircuitBreaker, n: usize) {
    for _ in 0..n {
        run(b, Outcome::Failure);
    }
}

/// Opens `b` with four failures.
fn trip(b: &CircuitBreaker) {
    fail(b, 4);
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn it_stays_closed_below_the_minimum_calls_even_if_every_call_fails() {
    let b = breaker(&config());
    fail(&b, 3);
    assert_eq!(b.state(), BreakerState::Closed);
    fail(&b, 1);
    assert_eq!(b.state(), BreakerState::Open);
    let s = b.snapshot();
    assert_eq!((s.calls, s.failures, s.times_opened), (4, 4, 1));
}

#[test]
fn it_opens_when_the_failure_rate_reaches_the_threshold_and_not_before() {
    let b = breaker(&config());
    for _ in 0..3 {
        run(&b, Outcome::Success);
    }
    fail(&b, 2); // 2 of 5: 40 %
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.snapshot().window_failures, 2);
    fail(&b, 1); // 3 of 6: 50 %
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn calls_older_than_the_window_no_longer_count() {
    let b = breaker(&config());
    fail(&b, 3);
    advance(Duration::from_secs(11)).await;
    assert_eq!(b.snapshot().window_calls, 0);
    fail(&b, 1);
    assert_eq!(b.state(), BreakerState::Closed, "the old failures aged out");
    // Within the window they add up again.
    advance(Duration::from_secs(5)).await;
    fail(&b, 3);
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn the_window_slides_a_bucket_at_a_time() {
    let b = breaker(&config());
    fail(&b, 2);
    advance(Duration::from_millis(5_500)).await;
    fail(&b, 1);
    // 10.5 s after the first two: their bucket (0-1 s) has left the window.
    advance(Duration::from_millis(5_000)).await;
    assert_eq!(b.snapshot().window_calls, 1);
    fail(&b, 2);
    assert_eq!(b.state(), BreakerState::Closed);
    fail(&b, 1);
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_it_at_their_own_threshold() {
    let config = CircuitBreakerConfig {
        slow_call_rate_threshold: 50,
        ..config()
    };
    let b = breaker(&config);
    let slow = |b: &CircuitBreaker| {
        let permit = b.try_acquire().unwrap();
        async move {
            advance(Duration::from_secs(1)).await;
            permit.record(Outcome::Success);
        }
    };
    slow(&b).await;
    for _ in 0..3 {
        run(&b, Outcome::Success);
    }
    assert_eq!(b.state(), BreakerState::Closed, "1 of 4 slow");
    slow(&b).await;
    assert_eq!(b.snapshot().window_slow_calls, 2);
    slow(&b).await; // 3 of 6
    assert_eq!(b.state(), BreakerState::Open);
    let s = b.snapshot();
    assert_eq!((s.failures, s.slow_calls), (0, 3));
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_refuses_with_the_rest_of_the_open_duration() {
    let b = breaker(&config());
    fail(&b, 4);
    advance(Duration::from_millis(10_200)).await;
    let refused = b.try_acquire().unwrap_err();
    assert_eq!(refused.state(), BreakerState::Open);
    assert_eq!(refused.retry_after(), Duration::from_millis(19_800));
    assert_eq!(refused.retry_after_secs(), 20);
    assert_eq!(refused.name(), "upstream");
    advance(Duration::from_millis(19_799)).await;
    let refused = b.try_acquire().unwrap_err();
    assert_eq!(refused.retry_after_secs(), 1, "never 0");
    assert_eq!(b.snapshot().rejected, 2);
}

#[tokio::test(start_paused = true)]
async fn after_the_open_duration_it_half_opens_and_admits_only_the_probes() {
    let b = breaker(&config());
    fail(&b, 4);
    advance(Duration::from_secs(30)).await;
    assert_eq!(b.state(), BreakerState::HalfOpen);
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    let refused = b.try_acquire().unwrap_err();
    assert_eq!(refused.state(), BreakerState::HalfOpen);
    assert_eq!(refused.retry_after_secs(), 1);
    drop((p1, p2));
}

#[tokio::test(start_paused = true)]
async fn successful_probes_close_it_with_a_fresh_window() {
    let b = breaker(&config());
    trip(&b);
    advance(Duration::from_secs(30)).await;
    run(&b, Outcome::Success);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    run(&b, Outcome::Success);
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.snapshot().window_calls, 0);
    fail(&b, 3);
    assert_eq!(b.state(), BreakerState::Closed, "the old failures are gone");
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_opens_it_again_for_another_open_duration() {
    let b = breaker(&config());
    trip(&b);
    advance(Duration::from_secs(30)).await;
    run(&b, Outcome::Failure); // 1 of 2 probes: 50 %
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.try_acquire().unwrap_err().retry_after_secs(), 30);
    assert_eq!(b.snapshot().times_opened, 2);
}

#[tokio::test(start_paused = true)]
async fn probes_are_judged_together_and_decided_as_soon_as_certain() {
    let config = CircuitBreakerConfig {
        half_open_max_calls: 5,
        ..config()
    };
    let b = breaker(&config);
    fail(&b, 4);
    advance(Duration::from_secs(30)).await;
    fail(&b, 2);
    run(&b, Outcome::Success);
    assert_eq!(
        b.state(),
        BreakerState::HalfOpen,
        "2 of 5 failed: undecided"
    );
    run(&b, Outcome::Failure);
    assert_eq!(b.state(), BreakerState::Open, "3 of 5 failed");

    advance(Duration::from_secs(30)).await;
    run(&b, Outcome::Success);
    run(&b, Outcome::Failure);
    run(&b, Outcome::Success);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    run(&b, Outcome::Success);
    assert_eq!(b.state(), BreakerState::Closed, "3 of 5 succeeded");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_or_ignored_probe_gives_its_slot_back_without_counting() {
    let b = breaker(&config());
    trip(&b);
    advance(Duration::from_secs(30)).await;
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err());
    drop(p1);
    let p3 = b.try_acquire().expect("the dropped probe's slot");
    assert!(b.try_acquire().is_err());
    p2.record(Outcome::Ignored);
    let p4 = b.try_acquire().expect("the ignored probe's slot");
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(b.snapshot().calls, 4, "only the four failures were counted");
    p3.record(Outcome::Success);
    p4.record(Outcome::Success);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_call_from_before_it_opened_does_not_decide_the_next_state() {
    let b = breaker(&config());
    let stale = b.try_acquire().unwrap();
    fail(&b, 4);
    advance(Duration::from_secs(30)).await;
    assert_eq!(b.state(), BreakerState::HalfOpen);
    stale.record(Outcome::Failure);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(b.snapshot().failures, 5, "still in the totals");
    // Both probe slots are still free.
    let _p1 = b.try_acquire().unwrap();
    let _p2 = b.try_acquire().unwrap();
}

#[test]
fn config_errors_name_the_key() {
    type Break = fn(&mut CircuitBreakerConfig);
    let cases: [(&str, Break); 9] = [
        ("failure_rate_threshold", |c| c.failure_rate_threshold = 0),
        ("failure_rate_threshold", |c| c.failure_rate_threshold = 101),
        ("slow_call_rate_threshold", |c| {
            c.slow_call_rate_threshold = 0
        }),
        ("slow_call_duration", |c| {
            c.slow_call_duration = ConfigDuration::secs(0)
        }),
        ("window", |c| c.window = ConfigDuration::millis(0)),
        ("minimum_calls", |c| c.minimum_calls = 0),
        ("open_duration", |c| {
            c.open_duration = ConfigDuration::secs(0)
        }),
        ("half_open_max_calls", |c| c.half_open_max_calls = 0),
        ("failure_statuses[1]", |c| {
            c.failure_statuses = vec![502, 99]
        }),
    ];
    for (key, break_it) in cases {
        let mut c = CircuitBreakerConfig::default();
        break_it(&mut c);
        assert_eq!(CircuitBreaker::new("b", &c).unwrap_err().key, key);
    }
    let c = CircuitBreakerConfig {
        routes: vec![CircuitBreakerRouteConfig {
            path: "reports".into(),
            methods: Vec::new(),
        }],
        ..CircuitBreakerConfig::default()
    };
    assert_eq!(
        CircuitBreaker::new("b", &c).unwrap_err().key,
        "routes[0].path"
    );
    assert_eq!(
        CircuitBreaker::new(" ", &CircuitBreakerConfig::default())
            .unwrap_err()
            .key,
        "name"
    );
    assert!(CircuitBreaker::new("b", &CircuitBreakerConfig::default()).is_ok());
}

#[test]
fn config_reads_durations_as_text_and_rejects_unknown_keys() {
    let c: CircuitBreakerConfig = serde_json::from_str(
        r#"{"open_duration": "200ms", "minimum_calls": 5, "failure_statuses": [502, 503],
            "routes": [{"path": "/reports/*", "methods": ["get"]}]}"#,
    )
    .unwrap();
    assert_eq!(c.open_duration.get(), Duration::from_millis(200));
    assert_eq!(c.minimum_calls, 5);
    assert_eq!(c.window, ConfigDuration::secs(10), "the rest are defaults");
    let b = CircuitBreaker::new("b", &c).unwrap();
    let classify = |s: u16| {
        b.http_classifier().classify(&Ok::<_, ()>(
            Response::builder().status(s).body(()).unwrap(),
        ))
    };
    assert_eq!(classify(502), Outcome::Failure);
    assert_eq!(classify(500), Outcome::Success);
    let err = serde_json::from_str::<CircuitBreakerConfig>(r#"{"failure_rate": 50}"#);
    assert!(err.unwrap_err().to_string().contains("unknown field"));
}

/// A service answering the status in the path (`/500`), counting its calls.
fn status_service(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone {
    tower::service_fn(move |req: Request<Body>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let status: u16 = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        async move {
            let mut res = Response::new(Body::empty());
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok(res)
        }
    })
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn the_http_layer_counts_5xx_as_failures_and_4xx_as_successes() {
    let calls = Arc::new(AtomicUsize::new(0));
    let b = breaker(&config());
    let svc = CircuitBreakerLayer::new(b.clone()).layer(status_service(calls.clone()));
    for _ in 0..6 {
        let res = svc.clone().oneshot(get("/404")).await.unwrap();
        assert_eq!(res.status(), 404);
    }
    assert_eq!(b.snapshot().failures, 0);
    for _ in 0..5 {
        svc.clone().oneshot(get("/503")).await.unwrap();
    }
    assert_eq!(b.state(), BreakerState::Closed, "5 of 11");
    svc.clone().oneshot(get("/500")).await.unwrap();
    assert_eq!(b.state(), BreakerState::Open, "6 of 12");
    assert_eq!(calls.load(Ordering::SeqCst), 12);

    let res = svc.clone().oneshot(get("/200")).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 12, "refused without calling");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "30");
    assert!(crate::problem::is_problem(res.headers()));
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["title"], CIRCUIT_OPEN_TITLE);
    assert_eq!(v["status"], 503);
}

#[tokio::test]
async fn the_http_layer_counts_inner_errors_as_failures() {
    let b = breaker(&CircuitBreakerConfig {
        minimum_calls: 2,
        ..config()
    });
    let svc =
        CircuitBreakerLayer::new(b.clone()).layer(tower::service_fn(|_req: Request<Body>| async {
            Err::<Response<Body>, _>(std::io::Error::other("reset"))
        }));
    for _ in 0..2 {
        assert!(svc.clone().oneshot(get("/")).await.is_err());
    }
    assert_eq!(b.state(), BreakerState::Open);
    let res = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(res.status(), 503);
}

#[tokio::test]
async fn requests_outside_the_route_group_pass_an_open_breaker() {
    let calls = Arc::new(AtomicUsize::new(0));
    let b = breaker(&CircuitBreakerConfig {
        routes: vec![CircuitBreakerRouteConfig {
            path: "/reports/*".into(),
            methods: vec!["GET".into()],
        }],
        ..config()
    });
    let svc = CircuitBreakerLayer::new(b.clone()).layer(status_service(calls.clone()));
    for _ in 0..4 {
        svc.clone().oneshot(get("/other/500")).await.unwrap();
    }
    let post = Request::post("/reports/500").body(Body::empty()).unwrap();
    svc.clone().oneshot(post).await.unwrap();
    assert_eq!(b.snapshot().calls, 0, "none of those was in the group");
    for _ in 0..4 {
        svc.clone().oneshot(get("/reports/500")).await.unwrap();
    }
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(
        svc.clone()
            .oneshot(get("/reports/200"))
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        svc.clone()
            .oneshot(get("/other/200"))
            .await
            .unwrap()
            .status(),
        200
    );
    // `with_routes` replaces the config's group.
    let everything = CircuitBreakerLayer::new(b.clone())
        .with_routes(&[])
        .unwrap()
        .layer(status_service(calls.clone()));
    assert_eq!(
        everything
            .oneshot(get("/other/200"))
            .await
            .unwrap()
            .status(),
        503
    );
}

#[tokio::test(start_paused = true)]
async fn a_response_future_dropped_before_completion_gives_its_probe_slot_back() {
    let b = breaker(&CircuitBreakerConfig {
        half_open_max_calls: 1,
        ..config()
    });
    let hanging =
        CircuitBreakerLayer::new(b.clone()).layer(tower::service_fn(|_req: Request<Body>| {
            std::future::pending::<Result<Response<Body>, Infallible>>()
        }));
    fail(&b, 4);
    advance(Duration::from_secs(30)).await;
    let probe = hanging.clone().oneshot(get("/"));
    let mut probe = Box::pin(probe);
    assert!(
        tokio::time::timeout(Duration::from_millis(10), &mut probe)
            .await
            .is_err()
    );
    assert!(b.try_acquire().is_err(), "the one slot is taken");
    drop(probe);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    run(&b, Outcome::Success);
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.snapshot().calls, 5, "the cancelled probe did not count");
}

#[tokio::test]
async fn the_client_layer_fails_fast_with_breaker_open() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let b = breaker(&config());
    let client = ClientBreakerLayer::new(b.clone()).layer(tower::service_fn(move |n: u32| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                Err(std::io::Error::other("refused"))
            } else {
                Ok(n)
            }
        }
    }));
    assert_eq!(client.clone().oneshot(7).await.unwrap(), 7);
    for _ in 0..3 {
        let err = client.clone().oneshot(0).await.unwrap_err();
        assert!(matches!(err, BreakerError::Inner(_)), "{err}");
    }
    // 3 of 4 failed.
    assert_eq!(b.state(), BreakerState::Open);
    let err = client.clone().oneshot(7).await.unwrap_err();
    let BreakerError::Open(open) = err else {
        panic!("expected Open, got {err}");
    };
    assert_eq!(open.retry_after_secs(), 30);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert!(
        b.call(|| async { Ok::<_, Infallible>(()) })
            .await
            .is_err_and(|e| matches!(e, BreakerError::Open(_)))
    );
}

#[tokio::test]
async fn a_custom_classifier_decides_what_fails() {
    let b = breaker(&config());
    // Only 503 counts; everything else (500 included) is ignored.
    let classify = |r: &Result<Response<Body>, Infallible>| match r {
        Ok(res) if res.status() == 503 => Outcome::Failure,
        _ => Outcome::Ignored,
    };
    let svc = CircuitBreakerLayer::new(b.clone())
        .with_classifier(classify)
        .layer(status_service(Arc::default()));
    for _ in 0..5 {
        svc.clone().oneshot(get("/500")).await.unwrap();
    }
    assert_eq!(b.snapshot().calls, 0);
    for _ in 0..4 {
        svc.clone().oneshot(get("/503")).await.unwrap();
    }
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn health_warns_while_open_or_half_open_and_passes_when_closed() {
    let b = breaker(&config());
    assert_eq!(b.name(), "upstream");
    assert_eq!(b.check().await, CheckResult::pass());
    fail(&b, 4);
    let open = b.check().await;
    assert_eq!(open.status, CheckStatus::Warn);
    assert_eq!(
        open.output.as_deref(),
        Some("open: 4 of 4 calls failed, 0 slow; half-open in 30 s")
    );
    advance(Duration::from_secs(30)).await;
    let probing = b.check().await;
    assert_eq!(probing.status, CheckStatus::Warn);
    assert!(probing.output.unwrap().starts_with("half-open"));
    run(&b, Outcome::Success);
    run(&b, Outcome::Success);
    assert_eq!(b.check().await.status, CheckStatus::Pass);
}

#[test]
fn the_futures_and_the_breaker_are_send_and_sync() {
    fn assert_send<T: Send>(_: &T) {}
    fn assert_sync<T: Send + Sync>() {}
    assert_sync::<CircuitBreaker>();
    assert_sync::<Permit>();
    assert_sync::<BreakerOpen>();
    let b = breaker(&config());
    let mut svc = CircuitBreakerLayer::new(b.clone()).layer(status_service(Arc::default()));
    assert_send(&tower::Service::call(&mut svc, get("/")));
    let mut client = ClientBreakerLayer::new(b.clone())
        .layer(tower::service_fn(|_: ()| async { Ok::<_, Infallible>(()) }));
    assert_send(&tower::Service::call(&mut client, ()));
    assert_send(&b.call(|| async { Ok::<_, Infallible>(()) }));
}
