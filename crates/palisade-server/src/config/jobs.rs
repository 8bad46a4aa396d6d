//! `[jobs]`: background jobs on the Redis queue (`crate::jobs`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigDuration;

/// `[jobs]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsSettings {
    /// Enqueue and run background jobs; needs `[redis] url`. Env `PALISADE_JOBS__ENABLED`.
    /// Default `false`.
    pub enabled: bool,
    /// Run a worker in this process (else only enqueue). Default `true`.
    pub worker: bool,
    /// Jobs one worker runs at once. Default `4`.
    pub concurrency: usize,
    /// Attempts after the first that fails. Default `3`.
    pub retries: usize,
    /// The first retry's delay; each next one doubles, with jitter. Default `200ms`.
    pub backoff_min: ConfigDuration,
    /// The longest delay between attempts. Default `30s`.
    pub backoff_max: ConfigDuration,
    /// The Redis key namespace of the queues. Default `palisade:jobs`.
    pub namespace: String,
    /// How often an idle worker looks for new jobs (its heartbeat; a worker missing two is
    /// presumed dead and its jobs re-enqueued). Default `1s`.
    pub poll_interval: ConfigDuration,
}

impl Default for JobsSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            worker: true,
            concurrency: 4,
            retries: 3,
            backoff_min: ConfigDuration(Duration::from_millis(200)),
            backoff_max: ConfigDuration(Duration::from_secs(30)),
            namespace: "palisade:jobs".to_owned(),
            poll_interval: ConfigDuration(Duration::from_secs(1)),
        }
    }
}

impl JobsSettings {
    /// The `[jobs]` checks; errors name the key.
    pub(super) fn validate(&self, redis_url: &str) -> Result<(), (String, String)> {
        if !self.enabled {
            return Ok(());
        }
        let key = |k: &str| format!("jobs.{k}");
        if redis_url.trim().is_empty() {
            return Err((
                key("enabled"),
                "jobs need a Redis queue: set redis.url".into(),
            ));
        }
        if self.concurrency == 0 || self.concurrency > 1024 {
            return Err((key("concurrency"), "must be between 1 and 1024".into()));
        }
        if self.retries > 100 {
            return Err((key("retries"), "must be at most 100".into()));
        }
        if self.backoff_min.0.is_zero() || self.backoff_min.0 > self.backoff_max.0 {
            return Err((
                key("backoff_min"),
                "must be greater than 0 and at most backoff_max".into(),
            ));
        }
        if self.poll_interval.0 < Duration::from_millis(10)
            || self.poll_interval.0 > Duration::from_secs(60)
        {
            return Err((key("poll_interval"), "must be between 10ms and 60s".into()));
        }
        if self.namespace.trim().is_empty() {
            return Err((key("namespace"), "must not be empty".into()));
        }
        Ok(())
    }
}
