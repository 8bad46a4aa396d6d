//! Background jobs on Redis (apalis): the order endpoint enqueues `ProcessOrder`; a worker in
//! the same process runs it with retries and exponential backoff.
//!
//! The request context travels with the job: the payload carries the request id, correlation
//! id and subject, and the worker runs each attempt inside a [`RequestContext`] built from
//! them, so every log line of the job carries the request's ids (and `subject`). Attempts are
//! counted by outcome in `palisade_jobs_total{job,outcome}`; enqueue failures in
//! `palisade_jobs_enqueue_failures_total`. A failed attempt is logged at `WARN` with its
//! attempt number, the last one at `ERROR`.
//!
//! The queue lives in Redis (`[redis] url`), so any instance's worker may run a job any
//! instance enqueued; a job whose worker died is re-enqueued by apalis's heartbeat.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use apalis::{
    layers::{
        WorkerBuilderExt,
        retry::{
            BackoffRetryPolicy, HasherRng,
            backoff::{ExponentialBackoffMaker, MakeBackoff},
        },
    },
    prelude::{AbortError, Attempt, BoxDynError, Data, TaskSink, WorkerBuilder},
};
use apalis_redis::{ConnectionManager, RedisStorage};
use palisade::{context::RequestContext, request_id::RequestId};
use serde::{Deserialize, Serialize};

use crate::{config::JobsSettings, db::Database};

/// The job an accepted order enqueues: mark it processed (a stand-in for payment capture or
/// fulfilment), in the context of the request that created it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessOrder {
    /// The order.
    pub order_id: String,
    /// The creating request's id.
    pub request_id: String,
    /// The creating request's correlation id.
    pub correlation_id: String,
    /// Who ordered.
    pub subject: String,
}

/// Attempt and enqueue counts, for the metrics.
#[derive(Debug, Default)]
pub struct JobStats {
    succeeded: AtomicU64,
    failed: AtomicU64,
    enqueued: AtomicU64,
    enqueue_failures: AtomicU64,
}

impl JobStats {
    /// `(succeeded, failed, enqueued, enqueue_failures)` so far.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.succeeded.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.enqueued.load(Ordering::Relaxed),
            self.enqueue_failures.load(Ordering::Relaxed),
        )
    }
}

/// The queue handlers enqueue into. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    storage: RedisStorage<ProcessOrder, ConnectionManager>,
    stats: Arc<JobStats>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").finish_non_exhaustive()
    }
}

impl Jobs {
    /// Connects to the queue at `redis_url` (an error when Redis is unreachable: jobs were
    /// asked for and cannot be kept).
    pub async fn connect(redis_url: &str, settings: &JobsSettings) -> Result<Self, String> {
        let conn = apalis_redis::connect(redis_url.trim())
            .await
            .map_err(|e| format!("jobs: cannot connect to Redis: {e}"))?;
        // An idle worker looks for new jobs when its heartbeat is due (a push from another
        // process does not wake it), so the heartbeat is the poll interval.
        let config = apalis_redis::Config::default()
            .queue(format!("{}:process_order", settings.namespace.trim()))
            .heartbeat_interval(settings.poll_interval.0);
        Ok(Self {
            storage: RedisStorage::new(conn).with_config(config),
            stats: Arc::new(JobStats::default()),
        })
    }

    /// Counters for the metrics.
    pub fn stats(&self) -> Arc<JobStats> {
        self.stats.clone()
    }

    /// Enqueues `job`; a failure is logged and counted (the order stands).
    pub async fn enqueue(&self, job: ProcessOrder) -> bool {
        let mut storage = self.storage.clone();
        match storage.push(job).await {
            Ok(()) => {
                self.stats.enqueued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.stats.enqueue_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "jobs: enqueueing failed");
                false
            }
        }
    }

    /// Starts this process's worker on the runtime; it runs until the process ends.
    pub fn spawn_worker(&self, settings: &JobsSettings, db: Database) -> Result<(), String> {
        let backoff = ExponentialBackoffMaker::new(
            settings.backoff_min.0,
            settings.backoff_max.0,
            0.5,
            HasherRng::default(),
        )
        .map_err(|e| format!("jobs.backoff_min: {e}"))?
        .make_backoff();
        let worker = WorkerBuilder::new("palisade-orders")
            .backend(self.storage.clone())
            // The handler ends the job itself after its last attempt (an `AbortError`, so
            // neither this policy nor the Redis backend's own rescheduling runs it again); the
            // policy only has to allow at least that many.
            .retry(BackoffRetryPolicy::new(settings.retries + 1, backoff))
            .concurrency(settings.concurrency)
            .data(db)
            .data(self.stats.clone())
            .data(Retries(settings.retries))
            .build(process_order);
        tokio::spawn(async move {
            if let Err(e) = worker.run().await {
                tracing::error!(error = %e, "jobs: the worker stopped");
            }
        });
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct Retries(usize);

/// Runs one attempt of [`ProcessOrder`] inside the creating request's context.
async fn process_order(
    job: ProcessOrder,
    db: Data<Database>,
    stats: Data<Arc<JobStats>>,
    retries: Data<Retries>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    let ctx = RequestContext::new(
        RequestId::parse(&job.request_id).unwrap_or_else(RequestId::generate),
        RequestId::parse(&job.correlation_id),
    );
    ctx.set_subject(&job.subject);
    // 1 for the first attempt.
    let attempt = attempt.current();
    let Retries(max_retries) = *retries;
    let last = attempt > max_retries;
    if attempt > max_retries + 1 {
        // Rescheduled by the backend after its last attempt: never run again.
        return Err(AbortError::new("no attempts left").into());
    }
    ctx.scope(async move {
        let done = sqlx::query(
            "UPDATE orders SET status = 'processed', updated_at = $1 WHERE id = $2 AND status = 'accepted'",
        )
        .bind(crate::resources::now_millis())
        .bind(&job.order_id)
        .execute(db.pool())
        .await;
        let outcome: Result<(), BoxDynError> = match done {
            Ok(r) if r.rows_affected() == 1 => Ok(()),
            Ok(_) => {
                let exists: Result<Option<String>, _> =
                    sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
                        .bind(&job.order_id)
                        .fetch_optional(db.pool())
                        .await;
                match exists {
                    // Processed by an earlier attempt whose acknowledgement was lost.
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("the order does not exist".into()),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        };
        match &outcome {
            Ok(()) => {
                stats.succeeded.fetch_add(1, Ordering::Relaxed);
                tracing::info!(job = "process_order", order_id = %job.order_id, attempt, "job done");
            }
            Err(e) if last => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(job = "process_order", order_id = %job.order_id, attempt, error = %e, "job failed; no retries left");
                return Err(AbortError::new(format!("no retries left: {e}")).into());
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(job = "process_order", order_id = %job.order_id, attempt, error = %e, "job attempt failed; retrying");
            }
        }
        outcome
    })
    .await
}
