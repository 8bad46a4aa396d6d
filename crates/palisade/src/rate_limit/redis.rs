//! The Redis store: one Lua script per decision, shared by every instance.
//!
//! Each decision is exactly one round trip: one `EVALSHA` (the script is loaded on first use
//! and after a Redis restart). Decisions made in the same scheduler tick travel together in
//! one pipeline — one write and one read for all of them — sent by a dispatcher task. The
//! script reads the clock with `TIME` (no clock skew between instances), checks every quota of the policy, and writes the new state only if all allow
//! the request: atomic, no read-modify-write race. Keys expire by themselves (`PX`), and all
//! keys of one decision share a hash tag — `<prefix>{<policy>:<client digest>}:<g|s><quota>`
//! — so they always live in one cluster slot: on a cluster [`RedisConnection`] each decision
//! goes to the primary that owns its slot. Client keys appear
//! only as 128-bit digests.
//!
//! Outages. A decision never waits longer than the configured timeout. When Redis cannot be
//! reached (connection refused or dropped, I/O error, timeout) the store is marked down for
//! [`RETRY_INTERVAL`]: meanwhile decisions do not touch
//! Redis at all and either fall back to this instance's [`MemoryStore`] (`fail_open`) or
//! fail (`fail_closed`, the layer answers 503). After the interval one request probes Redis;
//! the connection manager reconnects by itself. The outage is logged once when it starts and
//! once when it ends, and counted in [`RedisStore::stats`]. An error *answer* from Redis (say
//! a script error) affects only that request, which is handled as in an outage.
//!
//! ```no_run
//! use std::{sync::Arc, time::Duration};
//! use palisade::rate_limit::{OnStoreError, RateLimitConfig, RateLimiter, redis::RedisStore};
//! use palisade::redis_connection::RedisConnection;
//!
//! # fn build() -> Result<(), Box<dyn std::error::Error>> {
//! // Inside a tokio runtime: the connection is made lazily, in the background.
//! let redis = RedisConnection::open("redis://127.0.0.1:6379", false)?;
//! let store = RedisStore::new(
//!     &redis,
//!     "palisade:rl:",
//!     Duration::from_millis(50),
//!     OnStoreError::FailOpen,
//!     1_000_000,
//! )?;
//! let limiter = RateLimiter::new(&RateLimitConfig::default(), Arc::new(store))?;
//! # let _ = limiter; Ok(()) }
//! ```

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redis::{
    Cmd, RedisResult, Script, Value, aio::ConnectionManager, cluster_async::ClusterConnection,
};
use tokio::sync::{mpsc, oneshot};

use super::{
    Algorithm, MemoryStore, OnStoreError,
    key::KeyDigest,
    policy::Policy,
    store::{Decide, Decision, RateLimitStore, StoreError},
};
use crate::{
    error::ConfigError,
    redis_connection::{self, RedisConnection},
};

/// How long the store stays marked down after an error before one request probes it again.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// Decisions waiting to be sent; beyond this a decision is handled as in an outage.
const MAX_QUEUED: usize = 8192;
/// The most decisions sent in one pipeline.
const MAX_BATCH: usize = 256;

/// One decision for the dispatcher: its `EVALSHA`, and where the reply goes.
struct Job {
    cmd: Cmd,
    reply: oneshot::Sender<Result<Vec<i64>, Failure>>,
}

/// Sends queued decisions as pipelines: after the first decision arrives it yields once, so
/// every request task that is ready in this scheduler tick can queue its own, then sends
/// them all in one write. Each decision is still one `EVALSHA`: one round trip, atomic.
async fn dispatch(conn: ConnectionManager, timeout: Duration, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        tokio::task::yield_now().await;
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        tokio::spawn(send_batch(conn.clone(), timeout, batch));
    }
}

/// One pipeline; decisions that meet `NOSCRIPT` (Redis restarted, or a new server) load the
/// script and are sent once more. Commands move into the pipeline; only retried ones are
/// copied.
async fn send_batch(mut conn: ConnectionManager, timeout: Duration, batch: Vec<Job>) {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut replies = Vec::with_capacity(batch.len());
    for job in batch {
        pipe.add_command(job.cmd);
        replies.push(job.reply);
    }
    let results = match pipeline(&mut conn, &pipe, timeout).await {
        Ok(r) => r,
        Err(f) => return fail_all(replies, &f),
    };
    let mut retry = redis::pipe();
    retry.ignore_errors();
    let mut retry_replies = Vec::new();
    for ((cmd, reply), result) in pipe.cmd_iter().zip(replies).zip(results) {
        match result {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                retry.add_command(cmd.clone());
                retry_replies.push(reply);
            }
            other => {
                let _ = reply.send(parse(other));
            }
        }
    }
    if retry_replies.is_empty() {
        return;
    }
    let load = redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT).to_owned();
    let results = match tokio::time::timeout(timeout, load.query_async::<String>(&mut conn)).await {
        Ok(Ok(_)) => pipeline(&mut conn, &retry, timeout).await,
        Ok(Err(e)) => Err(Failure::from_redis(&e)),
        Err(_) => Err(Failure::timeout(timeout)),
    };
    match results {
        Ok(results) => {
            for (reply, result) in retry_replies.into_iter().zip(results) {
                let _ = reply.send(parse(result));
            }
        }
        Err(f) => fail_all(retry_replies, &f),
    }
}

/// Answers every waiting decision with the same failure.
fn fail_all(replies: Vec<oneshot::Sender<Result<Vec<i64>, Failure>>>, failure: &Failure) {
    for reply in replies {
        let _ = reply.send(Err(failure.clone()));
    }
}

async fn pipeline(
    conn: &mut ConnectionManager,
    pipe: &redis::Pipeline,
    timeout: Duration,
) -> Result<Vec<RedisResult<Value>>, Failure> {
    let sent = pipe.cmd_iter().count();
    match tokio::time::timeout(timeout, pipe.query_async::<Vec<RedisResult<Value>>>(conn)).await {
        Ok(Ok(results)) if results.len() == sent => Ok(results),
        Ok(Ok(_)) => Err(Failure {
            error: StoreError("redis: pipeline reply of the wrong length".into()),
            unreachable: false,
        }),
        Ok(Err(e)) => Err(Failure::from_redis(&e)),
        Err(_) => Err(Failure::timeout(timeout)),
    }
}

fn parse(result: RedisResult<Value>) -> Result<Vec<i64>, Failure> {
    result.map_err(|e| Failure::from_redis(&e)).and_then(|v| {
        redis::from_redis_value::<Vec<i64>>(v).map_err(|e| Failure {
            error: StoreError(format!("redis: unexpected script reply ({e})").into()),
            unreachable: false,
        })
    })
}

/// Counters since the store was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Decisions Redis failed to answer (error or timeout).
    pub errors: u64,
    /// Decisions answered by the in-memory fallback.
    pub fallbacks: u64,
    /// Outages started (each logged once).
    pub outages: u64,
    /// Whether the store is currently marked down.
    pub down: bool,
}

/// The Redis-backed [`RateLimitStore`]. See the [module docs](self). Cheap to share.
#[derive(Clone)]
pub struct RedisStore(Arc<Inner>);

/// How decisions reach Redis.
enum Conn {
    /// One endpoint: decisions go through the pipelining dispatcher.
    Single(mpsc::Sender<Job>),
    /// Redis Cluster: each decision is routed to the primary of its keys' slot (all keys of
    /// one decision share a hash tag).
    Cluster(Arc<OnceLock<ClusterConnection>>),
}

struct Inner {
    conn: Conn,
    script: Arc<Script>,
    prefix: Box<str>,
    timeout: Duration,
    on_error: OnStoreError,
    fallback: MemoryStore,
    started: Instant,
    down: AtomicBool,
    /// While `down`: ns (since `started`) before which Redis is not tried.
    retry_at: AtomicU64,
    errors: AtomicU64,
    fallbacks: AtomicU64,
    outages: AtomicU64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.0.prefix)
            .field("timeout", &self.0.timeout)
            .field("on_error", &self.0.on_error)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on `redis` (one endpoint or a cluster; see [`RedisConnection`]). Must be
    /// called inside a tokio runtime. `max_keys` bounds the in-memory fallback.
    pub fn new(
        redis: &RedisConnection,
        prefix: &str,
        timeout: Duration,
        on_error: OnStoreError,
        max_keys: usize,
    ) -> Result<Self, ConfigError> {
        if timeout.is_zero() {
            return Err(ConfigError::new("store_timeout", "must be greater than 0s"));
        }
        let conn = match redis.conn() {
            redis_connection::Conn::Single(manager) => {
                let (jobs, queue) = mpsc::channel(MAX_QUEUED);
                tokio::spawn(dispatch(manager.clone(), timeout, queue));
                Conn::Single(jobs)
            }
            redis_connection::Conn::Cluster(cell) => Conn::Cluster(cell.clone()),
        };
        Ok(Self::with_conn(conn, prefix, timeout, on_error, max_keys))
    }

    fn with_conn(
        conn: Conn,
        prefix: &str,
        timeout: Duration,
        on_error: OnStoreError,
        max_keys: usize,
    ) -> Self {
        Self(Arc::new(Inner {
            conn,
            script: Arc::new(Script::new(SCRIPT)),
            prefix: prefix.into(),
            timeout,
            on_error,
            fallback: MemoryStore::with_max_keys(max_keys),
            started: Instant::now(),
            down: AtomicBool::new(false),
            retry_at: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            outages: AtomicU64::new(0),
        }))
    }

    /// Counters and the current state.
    pub fn stats(&self) -> StoreStats {
        let i = &self.0;
        StoreStats {
            errors: i.errors.load(Ordering::Relaxed),
            fallbacks: i.fallbacks.load(Ordering::Relaxed),
            outages: i.outages.load(Ordering::Relaxed),
            down: i.down.load(Ordering::Relaxed),
        }
    }
}

impl Inner {
    async fn via_dispatcher(
        &self,
        jobs: &mpsc::Sender<Job>,
        cmd: Cmd,
    ) -> Result<Vec<i64>, Failure> {
        let (tx, rx) = oneshot::channel();
        if jobs.try_send(Job { cmd, reply: tx }).is_err() {
            return Err(Failure {
                error: StoreError("redis: too many decisions queued".into()),
                unreachable: false,
            });
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(Failure {
                error: StoreError("redis: dispatcher stopped".into()),
                unreachable: true,
            }),
            Err(_) => Err(Failure::timeout(self.timeout)),
        }
    }
}

/// One decision on a cluster: `EVALSHA` routed by its keys; on `NOSCRIPT` the script is
/// loaded (on every primary) and the decision sent again.
async fn cluster_call(mut conn: ClusterConnection, cmd: Cmd) -> Result<Vec<i64>, Failure> {
    match cmd.query_async::<Value>(&mut conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            let load = redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT).to_owned();
            load.query_async::<Value>(&mut conn)
                .await
                .map_err(|e| Failure::from_redis(&e))?;
            parse(cmd.query_async::<Value>(&mut conn).await)
        }
        other => parse(other),
    }
}

/// Why a decision failed, and whether Redis looked unreachable (then the store is marked
/// down) or answered with an error (then only this request falls back).
#[derive(Clone)]
struct Failure {
    error: StoreError,
    unreachable: bool,
}

impl Failure {
    fn from_redis(e: &redis::RedisError) -> Self {
        Self {
            error: StoreError(format!("redis: {e}").into()),
            unreachable: e.is_io_error()
                || e.is_connection_refusal()
                || e.is_connection_dropped()
                || e.is_timeout(),
        }
    }

    fn timeout(timeout: Duration) -> Self {
        let within = humantime::format_duration(timeout);
        Self {
            error: StoreError(format!("redis: no answer within {within}").into()),
            unreachable: true,
        }
    }
}

impl Inner {
    fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// Whether this decision should skip Redis (marked down and not yet time to probe).
    fn skip_redis(&self) -> bool {
        if !self.down.load(Ordering::Acquire) {
            return false;
        }
        let now = self.now();
        let retry_at = self.retry_at.load(Ordering::Acquire);
        if now < retry_at {
            return true;
        }
        // One request probes; the others keep skipping.
        let next = now + RETRY_INTERVAL.as_nanos() as u64;
        self.retry_at
            .compare_exchange(retry_at, next, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    }

    fn mark_down(&self, error: &StoreError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.retry_at.store(
            self.now() + RETRY_INTERVAL.as_nanos() as u64,
            Ordering::Release,
        );
        if !self.down.swap(true, Ordering::AcqRel) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            let fallback = match self.on_error {
                OnStoreError::FailOpen => "deciding with this instance's in-memory limiter",
                OnStoreError::FailClosed => "answering 503 (fail_closed)",
            };
            tracing::warn!(%error, "rate limit store unreachable; {fallback} until it is back");
        }
    }

    fn mark_up(&self) {
        if self.down.load(Ordering::Acquire) && self.down.swap(false, Ordering::AcqRel) {
            tracing::info!("rate limit store reachable again; shared limits resumed");
        }
    }

    fn on_failure(
        &self,
        policy: &Policy,
        key: KeyDigest,
        error: StoreError,
    ) -> Result<Decision, StoreError> {
        match self.on_error {
            OnStoreError::FailOpen => {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                Ok(self.fallback.decide_now(policy, key))
            }
            OnStoreError::FailClosed => Err(error),
        }
    }

    async fn decide_redis(&self, policy: &Policy, key: KeyDigest) -> Result<Decision, Failure> {
        // The algorithm is part of the key: a policy switched from one to the other never
        // reads the other's state.
        let alg = match policy.algorithm {
            Algorithm::Gcra => b'g',
            Algorithm::SlidingWindow => b's',
        };
        let n = policy.quotas.len();
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(n);
        // `<prefix>{<policy>:<digest as 32 hex digits>}:<alg><quota index>`, written without
        // `core::fmt`: the stem once, then each quota's index after it.
        let mut name = Vec::with_capacity(self.prefix.len() + policy.name.len() + 40);
        name.extend_from_slice(self.prefix.as_bytes());
        name.push(b'{');
        name.extend_from_slice(policy.name.as_bytes());
        name.push(b':');
        crate::text::push_hex_u128(&mut name, key.0);
        name.extend_from_slice(b"}:");
        name.push(alg);
        let stem = name.len();
        for i in 0..n {
            name.truncate(stem);
            crate::text::push_u64(&mut name, i as u64);
            cmd.arg(name.as_slice());
        }
        cmd.arg(match policy.algorithm {
            Algorithm::Gcra => 0,
            Algorithm::SlidingWindow => 1,
        });
        for q in &*policy.quotas {
            let s = &q.spec;
            cmd.arg(s.limit)
                .arg(s.window)
                .arg(s.interval)
                .arg(s.capacity);
        }
        let reply = match &self.conn {
            Conn::Single(jobs) => self.via_dispatcher(jobs, cmd).await?,
            Conn::Cluster(cell) => {
                let Some(conn) = cell.get() else {
                    return Err(Failure {
                        error: StoreError("redis cluster: not connected yet".into()),
                        unreachable: true,
                    });
                };
                let call = cluster_call(conn.clone(), cmd);
                match tokio::time::timeout(self.timeout, call).await {
                    Ok(r) => r?,
                    Err(_) => return Err(Failure::timeout(self.timeout)),
                }
            }
        };
        // [allowed, retry_us, remaining_1, reset_us_1, remaining_2, reset_us_2, ...]
        if reply.len() != 2 + 2 * n {
            return Err(Failure {
                error: StoreError("redis: unexpected script reply".into()),
                unreachable: false,
            });
        }
        // A refused quota reports remaining -1; the request passed if none did.
        let us = |v: i64| (v.max(0) as u64).saturating_mul(1000);
        let d = Decision::from_parts((0..n).map(|i| {
            let (remaining, reset) = (reply[2 + 2 * i], us(reply[3 + 2 * i]));
            let allowed = remaining >= 0;
            let retry = if allowed { 0 } else { us(reply[1]) };
            (allowed, remaining.max(0) as u64, reset, retry)
        }));
        Ok(d)
    }
}

impl RateLimitStore for RedisStore {
    fn decide(&self, policy: &Arc<Policy>, key: KeyDigest) -> Decide {
        let inner = &self.0;
        if inner.skip_redis() {
            let error = StoreError("redis: marked down after an error".into());
            return Decide::Ready(inner.on_failure(policy, key, error));
        }
        let this = self.0.clone();
        let policy = policy.clone();
        Decide::Pending(Box::pin(async move {
            match this.decide_redis(&policy, key).await {
                Ok(d) => {
                    this.mark_up();
                    Ok(d)
                }
                Err(Failure { error, unreachable }) => {
                    if unreachable {
                        this.mark_down(&error);
                    } else {
                        // Redis answered, with an error (a script error, a reply we do not
                        // understand): handle this request like an outage, but do not take
                        // the store down for everyone.
                        this.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%error, "rate limit store answered with an error");
                    }
                    this.on_failure(&policy, key, error)
                }
            }
        }))
    }

    fn register(&self, policy: &Policy) {
        self.0.fallback.register(policy);
    }
}

/// The decision script. Mirrors `algorithm.rs` in microseconds (Redis `TIME`); arguments
/// arrive in nanoseconds. A refused quota reports remaining -1 so the caller knows which.
const SCRIPT: &str = r"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local alg = tonumber(ARGV[1])
local n = #KEYS
local allowed = 1
local retry = 0
local out = {}
local values = {}
local ttls = {}
for i = 1, n do
  local base = 1 + (i - 1) * 4
  local limit = tonumber(ARGV[base + 1])
  local window = tonumber(ARGV[base + 2]) / 1000
  local interval = tonumber(ARGV[base + 3]) / 1000
  local capacity = tonumber(ARGV[base + 4]) / 1000
  local remaining, reset, wait
  if alg == 0 then
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
    if tat < now then tat = now end
    -- Whole microseconds, rounded up: never more generous than the in-memory version.
    local new_tat = math.ceil(tat + interval)
    local horizon = now + capacity
    if new_tat > horizon then
      remaining, reset, wait = -1, tat - now, new_tat - horizon
    else
      remaining = math.floor((horizon - new_tat) / interval)
      reset, wait = new_tat - now, 0
      values[i] = string.format('%d', new_tat)
      ttls[i] = new_tat - now
    end
  else
    local index = math.floor(now / window)
    local prev, curr = 0, 0
    local s = redis.call('GET', KEYS[i])
    if s then
      local k, p, c = string.match(s, '^(%d+):(%d+):(%d+)$')
      k, p, c = tonumber(k), tonumber(p), tonumber(c)
      if k == index then prev, curr = p, c elseif k and k + 1 == index then prev = c end
    end
    local elapsed = now - index * window
    local left = window - elapsed
    local used = prev * left + (curr + 1) * window
    if used <= limit * window then
      remaining = math.floor((limit * window - used) / window)
      reset, wait = left, 0
      values[i] = string.format('%d:%d:%d', index, prev, curr + 1)
      ttls[i] = left + window
    else
      local function fit(weighted, c)
        if weighted == 0 then return 0 end
        local max_left = math.floor((limit - c - 1) * window / weighted)
        if max_left > window then max_left = window end
        return window - max_left
      end
      remaining, reset = -1, left
      if curr < limit then wait = fit(prev, curr) - elapsed else wait = left + fit(curr, 0) end
    end
  end
  if remaining < 0 then
    allowed = 0
    if wait > retry then retry = wait end
  end
  out[#out + 1] = remaining
  out[#out + 1] = math.ceil(reset)
end
if allowed == 1 then
  for i = 1, n do
    redis.call('SET', KEYS[i], values[i], 'PX', math.ceil(ttls[i] / 1000) + 1000)
  end
end
-- One microsecond of margin covers float rounding: Retry-After is never early.
if retry > 0 then retry = math.ceil(retry) + 1 end
local reply = {allowed, retry}
for i = 1, #out do reply[#reply + 1] = out[i] end
return reply
";
