//! `/livez` and `/readyz`.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use palisade::health::{CheckResult, HealthCheck};
use serde_json::Value;

use crate::helpers::{spawn_app, spawn_app_with_checks};

/// A check whose verdict and delay the test chooses.
struct Scripted {
    name: &'static str,
    result: CheckResult,
    delay: Duration,
}

impl HealthCheck for Scripted {
    fn name(&self) -> &str {
        self.name
    }
    fn check(&self) -> Pin<Box<dyn Future<Output = CheckResult> + Send + '_>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.result.clone()
        })
    }
}

#[tokio::test]
async fn a_failing_or_slow_check_makes_readyz_503_but_livez_stays_200() {
    let app = spawn_app_with_checks(
        &[("PALISADE_HEALTH__CHECK_TIMEOUT", "200ms")],
        vec![
            Arc::new(Scripted {
                name: "db",
                result: CheckResult::fail("connection refused"),
                delay: Duration::ZERO,
            }),
            Arc::new(Scripted {
                name: "cache",
                result: CheckResult::pass(),
                delay: Duration::from_secs(5),
            }),
            Arc::new(Scripted {
                name: "breaker",
                result: CheckResult::warn("open"),
                delay: Duration::ZERO,
            }),
        ],
    )
    .await;
    let started = std::time::Instant::now();
    let res = app.get("/readyz").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the slow check was not cut at its timeout"
    );
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["content-type"], "application/health+json");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "fail");
    assert_eq!(body["checks"]["db"][0]["output"], "connection refused");
    assert_eq!(
        body["checks"]["cache"][0]["output"],
        "timed out after 200 ms"
    );
    assert_eq!(body["checks"]["breaker"][0]["status"], "warn");
    assert_eq!(app.get("/livez").await.status(), 200);
}

#[tokio::test]
async fn livez_and_readyz_pass_once_started() {
    let app = spawn_app().await;
    let res = app.get("/livez").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/health+json");
    assert_eq!(res.headers()["cache-control"], "no-store");
    let res = app.get("/readyz").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "pass");
}
