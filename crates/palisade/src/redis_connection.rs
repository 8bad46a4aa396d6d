//! One connection to Redis — a single endpoint or a Redis Cluster — shared by every
//! Redis-backed store (rate limits, idempotency).
//!
//! A single endpoint is one multiplexed connection that reconnects by itself. A cluster is
//! discovered from seed URLs in the background and followed (MOVED, failover) by the client;
//! until it is reachable, stores treat it as down. Cloning is cheap and shares the
//! connection. The URL may hold a password: it is never echoed in errors or logs.
//!
//! ```no_run
//! use std::time::Duration;
//! use palisade::redis_connection::RedisConnection;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = RedisConnection::open("redis://127.0.0.1:6379", false)?;
//! redis.ping(Duration::from_secs(1)).await?;
//! # Ok(()) }
//! ```

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};

use crate::error::{ConfigError, StoreError};

/// A shared connection to a Redis endpoint or cluster. See the [module docs](self).
#[derive(Clone)]
pub struct RedisConnection(Conn);

#[derive(Clone)]
pub(crate) enum Conn {
    /// One endpoint: a multiplexed connection manager.
    Single(ConnectionManager),
    /// Redis Cluster: set once the background task has connected.
    Cluster(Arc<OnceLock<ClusterConnection>>),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.0 {
            Conn::Single(_) => "single",
            Conn::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisConnection")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl RedisConnection {
    /// A connection to `url` (`redis://[:password@]host:port[/db]`), or, with `cluster`, to
    /// the Redis Cluster reached through comma-separated seed URLs. Connects lazily, in the
    /// background; must be called inside a tokio runtime. Errors name the key `url`.
    pub fn open(url: &str, cluster: bool) -> Result<Self, ConfigError> {
        if cluster {
            Self::cluster(url)
        } else {
            Self::single(url)
        }
    }

    fn single(url: &str) -> Result<Self, ConfigError> {
        let client = redis::Client::open(url).map_err(|e| {
            ConfigError::new(
                "url",
                format!("is not a valid Redis URL ({})", e.category()),
            )
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
            ConfigError::new(
                "url",
                format!("cannot create a Redis client ({})", e.category()),
            )
        })?;
        Ok(Self(Conn::Single(manager)))
    }

    fn cluster(seeds: &str) -> Result<Self, ConfigError> {
        let seeds: Vec<&str> = seeds
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let client = ClusterClient::builder(seeds)
            .connection_timeout(Duration::from_secs(1))
            .build()
            .map_err(|e| {
                ConfigError::new(
                    "url",
                    format!("is not a valid list of Redis URLs ({})", e.category()),
                )
            })?;
        let cell = Arc::new(OnceLock::new());
        let slot = cell.clone();
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                match client.get_async_connection().await {
                    Ok(conn) => {
                        let _ = slot.set(conn);
                        tracing::info!("connected to the redis cluster");
                        return;
                    }
                    Err(error) if !warned => {
                        warned = true;
                        tracing::warn!(%error, "redis cluster not reachable yet; retrying every second");
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Ok(Self(Conn::Cluster(cell)))
    }

    pub(crate) fn conn(&self) -> &Conn {
        &self.0
    }

    /// Runs a script (`EVALSHA`, loading it on `NOSCRIPT`) on the endpoint, or on the
    /// cluster node owning its keys; a cluster still connecting is an I/O error.
    pub(crate) async fn invoke(
        &self,
        script: &redis::ScriptInvocation<'_>,
    ) -> redis::RedisResult<redis::Value> {
        match &self.0 {
            Conn::Single(manager) => script.invoke_async(&mut manager.clone()).await,
            Conn::Cluster(cell) => match cell.get() {
                Some(conn) => script.invoke_async(&mut conn.clone()).await,
                None => Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "redis cluster: not connected yet",
                ))),
            },
        }
    }

    /// `PING`, answered within `within`: for startup logs and readiness checks. A cluster
    /// still connecting gets until `within` to finish.
    pub async fn ping(&self, within: Duration) -> Result<(), StoreError> {
        let cmd = redis::cmd("PING");
        let result = match &self.0 {
            Conn::Single(manager) => {
                let mut conn = manager.clone();
                tokio::time::timeout(within, cmd.query_async::<String>(&mut conn)).await
            }
            Conn::Cluster(cell) => {
                let deadline = Instant::now() + within;
                while cell.get().is_none() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let Some(conn) = cell.get() else {
                    return Err(StoreError("redis cluster: not connected".into()));
                };
                let mut conn = conn.clone();
                tokio::time::timeout(within, cmd.query_async::<String>(&mut conn)).await
            }
        };
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(StoreError(format!("redis: {e}").into())),
            Err(_) => Err(StoreError("redis: timed out".into())),
        }
    }
}
