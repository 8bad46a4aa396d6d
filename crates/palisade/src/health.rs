//! Liveness and readiness: `/livez` answers from the process alone, `/readyz` runs every
//! registered [`HealthCheck`] in parallel, each under its own timeout.
//!
//! Readiness also follows the process lifecycle: it fails until [`Health::set_ready`] is called
//! (startup work done) and fails again from [`Health::begin_shutdown`] on, so a load balancer
//! stops sending traffic before the server stops accepting it.
//!
//! Bodies are `application/health+json` (draft-inadarei-api-health-check):
//!
//! ```json
//! {"status":"fail","checks":{"database":[{"status":"fail","observedValue":12.5,
//!   "observedUnit":"ms","output":"connection refused"}]}}
//! ```
//!
//! A check that returns [`CheckStatus::Warn`] keeps readiness at 200 with overall `warn` (a
//! circuit breaker that is open, say); any `Fail` or timeout makes it 503.
//!
//! ```
//! use palisade::health::{CheckResult, Health, HealthCheck};
//! use std::{future::Future, pin::Pin, time::Duration};
//!
//! struct AlwaysUp;
//! impl HealthCheck for AlwaysUp {
//!     fn name(&self) -> &str { "always-up" }
//!     fn check(&self) -> Pin<Box<dyn Future<Output = CheckResult> + Send + '_>> {
//!         Box::pin(async { CheckResult::pass() })
//!     }
//! }
//!
//! # tokio_test(async {
//! let health = Health::builder().check(AlwaysUp, Duration::from_secs(1)).build();
//! assert_eq!(health.readyz().await.status(), 503); // not ready until startup is done
//! health.set_ready();
//! assert_eq!(health.readyz().await.status(), 200);
//! health.begin_shutdown();
//! assert_eq!(health.readyz().await.status(), 503);
//! # });
//! # fn tokio_test(f: impl Future<Output = ()>) {
//! #     tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
//! # }
//! ```

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::{Duration, Instant},
};

use axum_core::body::Body;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;
use serde_json::{Map, Value};

/// The liveness and readiness paths.
pub const HEALTH_PATHS: [&str; 2] = ["/livez", "/readyz"];

/// `Content-Type` of health responses.
pub const HEALTH_JSON: HeaderValue = HeaderValue::from_static("application/health+json");

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Healthy.
    Pass,
    /// Degraded but serving.
    Warn,
    /// Not able to serve.
    Fail,
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// The verdict.
    pub status: CheckStatus,
    /// A short, non-secret explanation.
    pub output: Option<String>,
}

impl CheckResult {
    /// A pass.
    pub fn pass() -> Self {
        Self {
            status: CheckStatus::Pass,
            output: None,
        }
    }

    /// A warning with an explanation.
    pub fn warn(output: impl Into<String>) -> Self {
        Self {
            status: CheckStatus::Warn,
            output: Some(output.into()),
        }
    }

    /// A failure with an explanation.
    pub fn fail(output: impl Into<String>) -> Self {
        Self {
            status: CheckStatus::Fail,
            output: Some(output.into()),
        }
    }
}

/// A readiness check any component can implement (database, Redis, an upstream).
pub trait HealthCheck: Send + Sync + 'static {
    /// The check's name in the report.
    fn name(&self) -> &str;
    /// Runs the check. It is cancelled at its timeout.
    fn check(&self) -> Pin<Box<dyn Future<Output = CheckResult> + Send + '_>>;
}

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

/// Registered checks plus the lifecycle state. Cheap to clone. See the [module docs](self).
#[derive(Clone)]
pub struct Health {
    checks: Arc<[(Arc<dyn HealthCheck>, Duration)]>,
    state: Arc<AtomicU8>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field(
                "checks",
                &self
                    .checks
                    .iter()
                    .map(|(c, t)| (c.name(), *t))
                    .collect::<Vec<_>>(),
            )
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish()
    }
}

/// Builds a [`Health`].
#[derive(Default)]
#[must_use]
pub struct HealthBuilder {
    checks: Vec<(Arc<dyn HealthCheck>, Duration)>,
}

impl HealthBuilder {
    /// Registers a check with its timeout.
    pub fn check(mut self, check: impl HealthCheck, timeout: Duration) -> Self {
        self.checks.push((Arc::new(check), timeout));
        self
    }

    /// Registers a shared check with its timeout.
    pub fn check_arc(mut self, check: Arc<dyn HealthCheck>, timeout: Duration) -> Self {
        self.checks.push((check, timeout));
        self
    }

    /// Finishes; the result starts in the *starting* (not ready) state.
    pub fn build(self) -> Health {
        Health {
            checks: self.checks.into(),
            state: Arc::new(AtomicU8::new(STARTING)),
        }
    }
}

#[derive(Serialize)]
struct CheckReport {
    status: CheckStatus,
    #[serde(rename = "observedValue")]
    observed_value: f64,
    #[serde(rename = "observedUnit")]
    observed_unit: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<String>,
}

impl Health {
    /// Starts a builder.
    pub fn builder() -> HealthBuilder {
        HealthBuilder::default()
    }

    /// Marks startup as done: readiness may pass from now on.
    pub fn set_ready(&self) {
        let _ = self
            .state
            .compare_exchange(STARTING, READY, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Marks the process as shutting down: readiness fails from now on.
    pub fn begin_shutdown(&self) {
        self.state.store(DRAINING, Ordering::Release);
    }

    /// Whether the process is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        self.state.load(Ordering::Acquire) == DRAINING
    }

    /// The `/livez` response: always 200, no dependency checks.
    pub fn livez(&self) -> Response<Body> {
        health_response(StatusCode::OK, br#"{"status":"pass"}"#.as_slice().into())
    }

    /// Runs every check in parallel, each under its timeout, and builds the `/readyz` response.
    pub async fn readyz(&self) -> Response<Body> {
        let state = self.state.load(Ordering::Acquire);
        if state != READY {
            let output = if state == STARTING {
                "starting"
            } else {
                "shutting down"
            };
            let body = serde_json::json!({ "status": "fail", "output": output });
            return health_response(StatusCode::SERVICE_UNAVAILABLE, body.to_string().into());
        }
        let runs = self.checks.iter().map(|(check, timeout)| async move {
            let started = Instant::now();
            let result = tokio::time::timeout(*timeout, check.check())
                .await
                .unwrap_or_else(|_| {
                    CheckResult::fail(format!("timed out after {} ms", timeout.as_millis()))
                });
            (check.name(), result, started.elapsed())
        });
        let results = futures_util::future::join_all(runs).await;
        let mut overall = CheckStatus::Pass;
        let mut checks = Map::new();
        for (name, result, elapsed) in results {
            overall = overall.max(result.status);
            let report = CheckReport {
                status: result.status,
                observed_value: (elapsed.as_secs_f64() * 1e6).round() / 1e3,
                observed_unit: "ms",
                output: result.output,
            };
            checks.insert(
                name.to_owned(),
                Value::Array(vec![serde_json::to_value(report).expect("plain data")]),
            );
        }
        let status = if overall == CheckStatus::Fail {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let body = serde_json::json!({ "status": overall, "checks": checks });
        health_response(status, body.to_string().into())
    }
}

fn health_response(status: StatusCode, body: bytes::Bytes) -> Response<Body> {
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HEALTH_JSON);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(&'static str, CheckResult, Duration);
    impl HealthCheck for Fixed {
        fn name(&self) -> &str {
            self.0
        }
        fn check(&self) -> Pin<Box<dyn Future<Output = CheckResult> + Send + '_>> {
            Box::pin(async move {
                tokio::time::sleep(self.2).await;
                self.1.clone()
            })
        }
    }

    async fn body_json(res: Response<Body>) -> Value {
        use http_body_util::BodyExt;
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn checks_run_in_parallel_and_a_slow_one_times_out_as_fail() {
        let health = Health::builder()
            .check(
                Fixed("fast", CheckResult::pass(), Duration::from_millis(10)),
                Duration::from_secs(1),
            )
            .check(
                Fixed("slow", CheckResult::pass(), Duration::from_secs(60)),
                Duration::from_millis(500),
            )
            .build();
        health.set_ready();
        let started = tokio::time::Instant::now();
        let res = health.readyz().await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "checks ran serially or waited"
        );
        assert_eq!(res.status(), 503);
        let v = body_json(res).await;
        assert_eq!(v["status"], "fail");
        assert_eq!(v["checks"]["fast"][0]["status"], "pass");
        assert_eq!(v["checks"]["slow"][0]["status"], "fail");
        assert_eq!(v["checks"]["slow"][0]["output"], "timed out after 500 ms");
    }

    #[tokio::test]
    async fn a_warning_keeps_readiness_up_with_overall_warn() {
        let health = Health::builder()
            .check(
                Fixed("breaker", CheckResult::warn("open"), Duration::ZERO),
                Duration::from_secs(1),
            )
            .build();
        health.set_ready();
        let res = health.readyz().await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "application/health+json");
        assert_eq!(body_json(res).await["status"], "warn");
    }

    #[tokio::test]
    async fn shutdown_is_final_even_if_set_ready_is_called_again() {
        let health = Health::builder().build();
        health.begin_shutdown();
        health.set_ready();
        let res = health.readyz().await;
        assert_eq!(res.status(), 503);
        assert_eq!(body_json(res).await["output"], "shutting down");
    }
}
