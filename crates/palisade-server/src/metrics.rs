//! The server's metrics: the registry from `[metrics]` and the collectors that export the
//! state of the stack's stores, load shedding and breaker on every scrape.

use palisade::{
    circuit_breaker::{BreakerState, CircuitBreaker},
    error::ConfigError,
    idempotency,
    load_shed::LoadShedLayer,
    metrics::{Exposition, InfoMetric, MetricKind, Metrics, ProcessCollector},
    rate_limit::redis::RedisStore,
};

use crate::config::Settings;

/// The registry for `settings`, labelling by `templates` (`(template, label)`), with the process and build-info
/// families; `None` when `metrics.enabled` is off.
pub fn registry(
    settings: &Settings,
    templates: &[(String, String)],
) -> Result<Option<Metrics>, ConfigError> {
    if !settings.metrics.enabled {
        return Ok(None);
    }
    let metrics = Metrics::with_labels(
        &settings.metrics,
        templates.iter().map(|(t, l)| (t.as_str(), l.as_str())),
    )?;
    metrics.add_collector(ProcessCollector);
    metrics.add_collector(InfoMetric::new(
        "palisade_build_info",
        "Build facts of the running server (value 1).",
        [
            ("version", env!("CARGO_PKG_VERSION")),
            (
                "profile",
                if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "release"
                },
            ),
        ],
    ));
    Ok(Some(metrics))
}

/// `palisade_load_shed_in_flight` and `palisade_load_shed_queued`.
pub fn load_shed(metrics: &Metrics, layer: &LoadShedLayer) {
    let layer = layer.clone();
    metrics.add_collector(move |out: &mut Exposition| {
        let s = layer.stats();
        out.family(
            "palisade_load_shed_in_flight",
            "Requests holding a load-shedding slot.",
            MetricKind::Gauge,
        )
        .sample(&[], s.in_flight as f64);
        out.family(
            "palisade_load_shed_queued",
            "Requests waiting for a load-shedding slot.",
            MetricKind::Gauge,
        )
        .sample(&[], s.queued as f64);
    });
}

/// Background job attempts by outcome, and enqueue failures.
pub fn jobs(metrics: &Metrics, stats: std::sync::Arc<crate::jobs::JobStats>) {
    metrics.add_collector(move |out: &mut Exposition| {
        let (succeeded, failed, enqueued, enqueue_failures) = stats.snapshot();
        let mut attempts = out.family(
            "palisade_jobs_total",
            "Background job attempts by job and outcome (a retried job counts each attempt).",
            MetricKind::Counter,
        );
        attempts.sample(
            &[("job", "process_order"), ("outcome", "succeeded")],
            succeeded as f64,
        );
        attempts.sample(
            &[("job", "process_order"), ("outcome", "failed")],
            failed as f64,
        );
        out.family(
            "palisade_jobs_enqueued_total",
            "Background jobs enqueued.",
            MetricKind::Counter,
        )
        .sample(&[("job", "process_order")], enqueued as f64);
        out.family(
            "palisade_jobs_enqueue_failures_total",
            "Background jobs that could not be enqueued (Redis unreachable).",
            MetricKind::Counter,
        )
        .sample(&[("job", "process_order")], enqueue_failures as f64);
    });
}

/// The shared rate-limit store's errors, fallbacks, outages and whether it is down.
pub fn rate_limit_store(metrics: &Metrics, store: &RedisStore) {
    let store = store.clone();
    metrics.add_collector(move |out: &mut Exposition| {
        let s = store.stats();
        let families = [
            (
                "palisade_rate_limit_store_errors_total",
                "Rate-limit decisions Redis failed to answer (error or timeout).",
                MetricKind::Counter,
                s.errors as f64,
            ),
            (
                "palisade_rate_limit_store_fallbacks_total",
                "Rate-limit decisions answered by this instance's in-memory fallback.",
                MetricKind::Counter,
                s.fallbacks as f64,
            ),
            (
                "palisade_rate_limit_store_outages_total",
                "Redis outages seen by the rate limiter.",
                MetricKind::Counter,
                s.outages as f64,
            ),
            (
                "palisade_rate_limit_store_down",
                "1 while the rate limiter considers Redis down.",
                MetricKind::Gauge,
                f64::from(u8::from(s.down)),
            ),
        ];
        for (name, help, kind, value) in families {
            out.family(name, help, kind).sample(&[], value);
        }
    });
}

/// The shared idempotency store's errors (each answered 503).
pub fn idempotency_store(metrics: &Metrics, store: &idempotency::redis::RedisStore) {
    let store = store.clone();
    metrics.add_collector(move |out: &mut Exposition| {
        out.family(
            "palisade_idempotency_store_errors_total",
            "Idempotency operations Redis failed to answer (each request got a 503).",
            MetricKind::Counter,
        )
        .sample(&[], store.errors() as f64);
    });
}

/// Every breaker's state (one series per state, 1 for the current one) and counters, one
/// family each with a `breaker` label per breaker.
pub fn breakers(metrics: &Metrics, breakers: Vec<CircuitBreaker>) {
    if breakers.is_empty() {
        return;
    }
    metrics.add_collector(move |out: &mut Exposition| {
        let snapshots: Vec<_> = breakers.iter().map(|b| (b.name(), b.snapshot())).collect();
        let mut state = out.family(
            "palisade_circuit_breaker_state",
            "1 for the breaker's current state (closed, open, half_open).",
            MetricKind::Gauge,
        );
        for (name, s) in &snapshots {
            for st in [
                BreakerState::Closed,
                BreakerState::Open,
                BreakerState::HalfOpen,
            ] {
                state.sample(
                    &[("breaker", name), ("state", st.as_str())],
                    f64::from(u8::from(st == s.state)),
                );
            }
        }
        type Counter = fn(&palisade::circuit_breaker::BreakerSnapshot) -> u64;
        let counters: [(&str, &str, Counter); 4] = [
            (
                "palisade_circuit_breaker_calls_total",
                "Calls the breaker recorded.",
                |s| s.calls,
            ),
            (
                "palisade_circuit_breaker_failures_total",
                "Recorded calls that failed.",
                |s| s.failures,
            ),
            (
                "palisade_circuit_breaker_rejected_total",
                "Calls refused while open.",
                |s| s.rejected,
            ),
            (
                "palisade_circuit_breaker_opened_total",
                "Times the breaker opened.",
                |s| s.times_opened,
            ),
        ];
        for (metric, help, value) in counters {
            let mut family = out.family(metric, help, MetricKind::Counter);
            for (name, s) in &snapshots {
                family.sample(&[("breaker", name)], value(s) as f64);
            }
        }
    });
}

/// `palisade_upstream_ejected{upstream,url}` (1 while a URL is out of the rotation) and
/// `palisade_upstream_idle_connections{upstream,url}`.
pub fn gateway(metrics: &Metrics, gateway: &palisade::proxy::Gateway) {
    let gateway = gateway.clone();
    metrics.add_collector(move |out: &mut Exposition| {
        let status = gateway.status();
        let mut ejected = out.family(
            "palisade_upstream_ejected",
            "1 while the upstream URL is ejected after consecutive failures.",
            MetricKind::Gauge,
        );
        for u in &status {
            for (url, out_now, _) in &u.urls {
                ejected.sample(
                    &[("upstream", &u.name), ("url", url)],
                    f64::from(u8::from(*out_now)),
                );
            }
        }
        let mut idle = out.family(
            "palisade_upstream_idle_connections",
            "Idle keep-alive connections pooled for the upstream URL.",
            MetricKind::Gauge,
        );
        for u in &status {
            for (url, _, n) in &u.urls {
                idle.sample(&[("upstream", &u.name), ("url", url)], *n as f64);
            }
        }
    });
}
