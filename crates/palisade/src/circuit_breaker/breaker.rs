//! [`CircuitBreaker`]: the shared state machine, its sliding window, and [`Permit`]s.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

// Tokio's clock, so tests can pause and advance time; without a paused runtime it is the
// system's monotonic clock.
use tokio::time::Instant;

use super::{
    BreakerError, CircuitBreakerConfig, Classify, ErrorClassifier, HttpClassifier, Outcome,
    Settings, WINDOW_BUCKETS,
};
use crate::{
    error::ConfigError,
    health::{CheckResult, HealthCheck},
    path_pattern::RouteMatch,
};

/// The state of a [`CircuitBreaker`]. See the [module docs](super).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through and are counted.
    Closed,
    /// Calls are rejected until the open duration has passed.
    Open,
    /// A few probe calls go through; the rest are rejected.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    fn code(self) -> u64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A breaker's state and counters at one moment, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerSnapshot {
    /// The current state.
    pub state: BreakerState,
    /// Calls recorded since the breaker was built (cancelled and ignored calls excluded).
    pub calls: u64,
    /// Of those, failures.
    pub failures: u64,
    /// Of those, slow calls (failed or not).
    pub slow_calls: u64,
    /// Calls rejected because the breaker was open or its probe slots were taken.
    pub rejected: u64,
    /// How many times the breaker has opened.
    pub times_opened: u64,
    /// Calls in the current sliding window (always 0 unless closed).
    pub window_calls: u64,
    /// Failures in the current sliding window.
    pub window_failures: u64,
    /// Slow calls in the current sliding window.
    pub window_slow_calls: u64,
}

/// A call the breaker refused, with when to try again.
#[derive(Debug, Clone)]
pub struct BreakerOpen {
    name: Arc<str>,
    state: BreakerState,
    retry_after: Duration,
}

impl BreakerOpen {
    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// [`BreakerState::Open`], or [`BreakerState::HalfOpen`] when every probe slot was taken.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// How long until the breaker lets calls through again: the rest of the open duration,
    /// or one second while half-open.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// [`retry_after`](Self::retry_after) in whole seconds, rounded up, at least 1: the
    /// `Retry-After` value.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after)
    }
}

impl std::fmt::Display for BreakerOpen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.state {
            BreakerState::HalfOpen => write!(
                f,
                "circuit breaker {:?} is half-open and every probe slot is taken",
                self.name
            ),
            _ => write!(
                f,
                "circuit breaker {:?} is open; retry in {} s",
                self.name,
                self.retry_after_secs()
            ),
        }
    }
}

impl std::error::Error for BreakerOpen {}

/// Whole seconds, rounded up, at least 1.
fn ceil_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// A circuit breaker for one upstream or route group. Cheap to clone: clones share the
/// state. See the [module docs](super).
///
/// ```
/// use palisade::circuit_breaker::{BreakerState, CircuitBreaker, CircuitBreakerConfig, Outcome};
///
/// let config = CircuitBreakerConfig { minimum_calls: 2, ..Default::default() };
/// let breaker = CircuitBreaker::new("payments", &config).unwrap();
/// for _ in 0..2 {
///     breaker.try_acquire().unwrap().record(Outcome::Failure);
/// }
/// assert_eq!(breaker.state(), BreakerState::Open);
/// assert!(breaker.try_acquire().is_err());
/// assert_eq!(breaker.snapshot().rejected, 1);
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

struct Shared {
    name: Arc<str>,
    settings: Settings,
    /// Time zero of the window's bucket numbers.
    base: Instant,
    /// `generation << 2 | state code`, written under the lock: closed-state calls get
    /// their permit from it without locking.
    mode: AtomicU64,
    inner: Mutex<Inner>,
}

const CLOSED: u64 = 0;

fn mode(state: BreakerState, generation: u64) -> u64 {
    (generation << 2) | state.code()
}

/// Calls, failures and slow calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    calls: u64,
    failures: u64,
    slow: u64,
}

impl Tally {
    fn add(&mut self, failure: bool, slow: bool) {
        self.calls += 1;
        self.failures += u64::from(failure);
        self.slow += u64::from(slow);
    }

    fn sub(&mut self, other: Self) {
        self.calls -= other.calls;
        self.failures -= other.failures;
        self.slow -= other.slow;
    }

    /// Whether the failure or slow-call rate over `of` calls reaches its threshold.
    fn trips(self, s: &Settings, of: u64) -> bool {
        self.failures * 100 >= s.failure_rate * of || self.slow * 100 >= s.slow_rate * of
    }
}

/// A time-based sliding window in [`WINDOW_BUCKETS`] fixed buckets, with running totals:
/// O(1) per call, no allocation.
#[derive(Debug, Default)]
struct Window {
    buckets: [Tally; WINDOW_BUCKETS],
    /// Number of the newest bucket; bucket `n` lives in slot `n % WINDOW_BUCKETS`.
    head: u64,
    total: Tally,
}

impl Window {
    /// Moves the window so that bucket `now` is the newest, emptying the buckets it passes.
    fn advance(&mut self, now: u64) {
        if now <= self.head {
            return;
        }
        let steps = (now - self.head).min(WINDOW_BUCKETS as u64);
        for k in 1..=steps {
            let slot = ((self.head + k) % WINDOW_BUCKETS as u64) as usize;
            self.total.sub(self.buckets[slot]);
            self.buckets[slot] = Tally::default();
        }
        self.head = now;
    }

    /// Adds a call to bucket `now` (a call finishing a moment after a newer one counts in
    /// the newest bucket).
    fn add(&mut self, now: u64, failure: bool, slow: bool) {
        self.advance(now);
        let slot = (self.head % WINDOW_BUCKETS as u64) as usize;
        self.buckets[slot].add(failure, slow);
        self.total.add(failure, slow);
    }

    fn clear(&mut self) {
        self.buckets = Default::default();
        self.total = Tally::default();
    }
}

#[derive(Debug, Default)]
struct Counters {
    calls: u64,
    failures: u64,
    slow: u64,
    rejected: u64,
    opened: u64,
}

/// Why the breaker last opened: the window's tally, or the probes'.
#[derive(Debug, Clone, Copy, Default)]
struct Trip {
    tally: Tally,
    probes: bool,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    /// Bumped on every transition: a permit from an earlier state counts in the totals,
    /// not in the decisions of the current one.
    generation: u64,
    /// When the open state ends (meaningful while open).
    open_until: Instant,
    window: Window,
    /// Half-open: probes running, and the tally of those done.
    probes_in_flight: u64,
    probes: Tally,
    counters: Counters,
    last_trip: Trip,
}

/// A call that finished and counts.
#[derive(Debug, Clone, Copy)]
struct Finished {
    /// The generation its permit was granted under.
    generation: u64,
    /// The window bucket it ended in.
    bucket: u64,
    now: Instant,
    failure: bool,
    slow: bool,
}

/// A transition, logged once the lock is released.
#[derive(Debug, Clone, Copy)]
enum Transition {
    Opened(Trip),
    HalfOpened,
    Closed,
}

impl Inner {
    fn set_state(&mut self, state: BreakerState, mode_cell: &AtomicU64) {
        self.state = state;
        self.generation += 1;
        mode_cell.store(mode(state, self.generation), Ordering::Release);
    }

    fn open(
        &mut self,
        s: &Settings,
        mode_cell: &AtomicU64,
        now: Instant,
        trip: Trip,
    ) -> Transition {
        self.set_state(BreakerState::Open, mode_cell);
        // An absurd open duration must not overflow the clock: a year is forever enough.
        self.open_until = now
            .checked_add(s.open_duration)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
        self.window.clear();
        self.counters.opened += 1;
        self.last_trip = trip;
        Transition::Opened(trip)
    }

    fn close(&mut self, mode_cell: &AtomicU64) -> Transition {
        self.set_state(BreakerState::Closed, mode_cell);
        self.window.clear();
        Transition::Closed
    }

    /// Open → half-open once the open duration has passed.
    fn expire(&mut self, mode_cell: &AtomicU64, now: Instant) -> Option<Transition> {
        if self.state != BreakerState::Open || now < self.open_until {
            return None;
        }
        self.set_state(BreakerState::HalfOpen, mode_cell);
        self.probes_in_flight = 0;
        self.probes = Tally::default();
        Some(Transition::HalfOpened)
    }

    /// The generation a new call runs under, or why it is refused.
    fn acquire(
        &mut self,
        s: &Settings,
        mode_cell: &AtomicU64,
        now: Instant,
    ) -> (Result<u64, (BreakerState, Duration)>, Option<Transition>) {
        let transition = self.expire(mode_cell, now);
        let result = match self.state {
            BreakerState::Closed => Ok(self.generation),
            BreakerState::Open => {
                self.counters.rejected += 1;
                Err((BreakerState::Open, self.open_until - now))
            }
            BreakerState::HalfOpen => {
                if self.probes_in_flight + self.probes.calls < s.half_open_max {
                    self.probes_in_flight += 1;
                    Ok(self.generation)
                } else {
                    self.counters.rejected += 1;
                    Err((BreakerState::HalfOpen, Duration::from_secs(1)))
                }
            }
        };
        (result, transition)
    }

    /// Records a finished call and decides whether the state changes.
    fn record(
        &mut self,
        s: &Settings,
        mode_cell: &AtomicU64,
        call: Finished,
    ) -> Option<Transition> {
        let Finished {
            generation,
            bucket,
            now,
            failure,
            slow,
        } = call;
        self.counters.calls += 1;
        self.counters.failures += u64::from(failure);
        self.counters.slow += u64::from(slow);
        if generation != self.generation {
            return None;
        }
        match self.state {
            BreakerState::Closed => {
                self.window.add(bucket, failure, slow);
                let w = self.window.total;
                (w.calls >= s.minimum_calls && w.trips(s, w.calls)).then(|| {
                    let trip = Trip {
                        tally: w,
                        probes: false,
                    };
                    self.open(s, mode_cell, now, trip)
                })
            }
            BreakerState::HalfOpen => {
                self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
                self.probes.add(failure, slow);
                // Judged over `half_open_max` probes, decided as soon as it is certain:
                // open if the rates reach a threshold even if every probe left succeeds
                // fast, close if they cannot even if every probe left fails slowly.
                let m = s.half_open_max;
                let done = self.probes;
                let left = m.saturating_sub(done.calls);
                let worst = Tally {
                    calls: m,
                    failures: done.failures + left,
                    slow: done.slow + left,
                };
                if done.trips(s, m) {
                    let trip = Trip {
                        tally: done,
                        probes: true,
                    };
                    Some(self.open(s, mode_cell, now, trip))
                } else if !worst.trips(s, m) {
                    Some(self.close(mode_cell))
                } else {
                    None
                }
            }
            // Permits are never issued under an open generation.
            BreakerState::Open => None,
        }
    }

    /// A call that ended without counting: gives back a half-open probe slot.
    fn release(&mut self, generation: u64) {
        if generation == self.generation && self.state == BreakerState::HalfOpen {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker named `name` (in logs, health and [`BreakerOpen`]), configured by
    /// `config`; errors name the key.
    pub fn new(
        name: impl Into<String>,
        config: &CircuitBreakerConfig,
    ) -> Result<Self, ConfigError> {
        let name: String = name.into();
        if name.trim().is_empty() {
            return Err(ConfigError::new("name", "a circuit breaker needs a name"));
        }
        let settings = Settings::new(config)?;
        let now = Instant::now();
        Ok(Self {
            shared: Arc::new(Shared {
                name: name.into(),
                settings,
                base: now,
                mode: AtomicU64::new(mode(BreakerState::Closed, 0)),
                inner: Mutex::new(Inner {
                    state: BreakerState::Closed,
                    generation: 0,
                    open_until: now,
                    window: Window::default(),
                    probes_in_flight: 0,
                    probes: Tally::default(),
                    counters: Counters::default(),
                    last_trip: Trip::default(),
                }),
            }),
        })
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The current state. An open breaker whose open duration has passed becomes
    /// half-open here (or on the next call), so this never reports a stale `Open`.
    pub fn state(&self) -> BreakerState {
        let (state, transition) = {
            let mut inner = self.lock();
            let t = inner.expire(&self.shared.mode, Instant::now());
            (inner.state, t)
        };
        self.log(transition);
        state
    }

    /// The state and counters, for metrics.
    pub fn snapshot(&self) -> BreakerSnapshot {
        let now = Instant::now();
        let bucket = self.bucket(now);
        let (snapshot, transition) = {
            let mut inner = self.lock();
            let t = inner.expire(&self.shared.mode, now);
            inner.window.advance(bucket);
            let w = inner.window.total;
            let c = &inner.counters;
            let snapshot = BreakerSnapshot {
                state: inner.state,
                calls: c.calls,
                failures: c.failures,
                slow_calls: c.slow,
                rejected: c.rejected,
                times_opened: c.opened,
                window_calls: w.calls,
                window_failures: w.failures,
                window_slow_calls: w.slow,
            };
            (snapshot, t)
        };
        self.log(transition);
        snapshot
    }

    /// The HTTP classifier from the config's `failure_statuses`.
    pub fn http_classifier(&self) -> HttpClassifier {
        self.shared.settings.classifier
    }

    /// Asks to make one call: a [`Permit`] to record its outcome with, or [`BreakerOpen`].
    /// Dropping the permit without recording counts the call as cancelled.
    pub fn try_acquire(&self) -> Result<Permit, BreakerOpen> {
        let now = Instant::now();
        let m = self.shared.mode.load(Ordering::Acquire);
        if m & 3 == CLOSED {
            return Ok(self.permit(m >> 2, now));
        }
        let (result, transition) = {
            let mut inner = self.lock();
            inner.acquire(&self.shared.settings, &self.shared.mode, now)
        };
        self.log(transition);
        match result {
            Ok(generation) => Ok(self.permit(generation, now)),
            Err((state, retry_after)) => Err(BreakerOpen {
                name: self.shared.name.clone(),
                state,
                retry_after,
            }),
        }
    }

    /// Runs the future `f` makes if the breaker lets the call through, and records its
    /// outcome: `Err` is a failure. `f` is not called when the call is refused. Dropping the
    /// returned future before it completes counts the call as cancelled.
    ///
    /// ```
    /// use palisade::circuit_breaker::{BreakerError, CircuitBreaker, CircuitBreakerConfig};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let breaker = CircuitBreaker::new("geo", &CircuitBreakerConfig::default()).unwrap();
    /// let r = breaker.call(|| async { Err::<(), _>("connection refused") }).await;
    /// assert!(matches!(r, Err(BreakerError::Inner("connection refused"))));
    /// assert_eq!(breaker.snapshot().failures, 1);
    /// # });
    /// ```
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, BreakerError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire().map_err(BreakerError::Open)?;
        let result = f().await;
        permit.record(ErrorClassifier.classify(&result));
        result.map_err(BreakerError::Inner)
    }

    pub(super) fn routes(&self) -> &[RouteMatch] {
        &self.shared.settings.routes
    }

    fn permit(&self, generation: u64, started: Instant) -> Permit {
        Permit {
            breaker: self.clone(),
            generation,
            started,
            armed: true,
        }
    }

    fn record(&self, generation: u64, outcome: Outcome, started: Instant) {
        let failure = match outcome {
            Outcome::Success => false,
            Outcome::Failure => true,
            Outcome::Ignored => return self.release(generation),
        };
        let now = Instant::now();
        let s = &self.shared.settings;
        let slow = now.saturating_duration_since(started) >= s.slow_call;
        let call = Finished {
            generation,
            bucket: self.bucket(now),
            now,
            failure,
            slow,
        };
        let transition = self.lock().record(s, &self.shared.mode, call);
        self.log(transition);
    }

    fn release(&self, generation: u64) {
        // Only a half-open probe holds anything; closed-state calls need no lock.
        if self.shared.mode.load(Ordering::Acquire) == mode(BreakerState::Closed, generation) {
            return;
        }
        self.lock().release(generation);
    }

    fn bucket(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.shared.base).as_nanos();
        u64::try_from(since / u128::from(self.shared.settings.bucket_nanos)).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn log(&self, transition: Option<Transition>) {
        let name = &*self.shared.name;
        match transition {
            None => {}
            Some(Transition::Opened(trip)) => tracing::warn!(
                breaker = name,
                calls = trip.tally.calls,
                failures = trip.tally.failures,
                slow_calls = trip.tally.slow,
                probes = trip.probes,
                open_for = ?self.shared.settings.open_duration,
                "circuit breaker opened"
            ),
            Some(Transition::HalfOpened) => {
                tracing::info!(
                    breaker = name,
                    "circuit breaker half-open: letting probes through"
                );
            }
            Some(Transition::Closed) => tracing::info!(breaker = name, "circuit breaker closed"),
        }
    }

    /// The health verdict: pass when closed, warn with an explanation otherwise.
    fn health(&self) -> CheckResult {
        let now = Instant::now();
        let s = &self.shared.settings;
        let (result, transition) = {
            let mut inner = self.lock();
            let t = inner.expire(&self.shared.mode, now);
            let trip = inner.last_trip;
            let what = if trip.probes { "probes" } else { "calls" };
            let result = match inner.state {
                BreakerState::Closed => CheckResult::pass(),
                BreakerState::Open => CheckResult::warn(format!(
                    "open: {} of {} {what} failed, {} slow; half-open in {} s",
                    trip.tally.failures,
                    trip.tally.calls,
                    trip.tally.slow,
                    ceil_secs(inner.open_until - now)
                )),
                BreakerState::HalfOpen => CheckResult::warn(format!(
                    "half-open: {} of {} probes done, {} failed, {} running",
                    inner.probes.calls,
                    s.half_open_max,
                    inner.probes.failures,
                    inner.probes_in_flight
                )),
            };
            (result, t)
        };
        self.log(transition);
        result
    }
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.shared.mode.load(Ordering::Relaxed);
        let state = match m & 3 {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        };
        f.debug_struct("CircuitBreaker")
            .field("name", &self.shared.name)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// Readiness: `pass` when closed, `warn` while open or half-open (readiness stays 200).
impl HealthCheck for CircuitBreaker {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn check(&self) -> Pin<Box<dyn Future<Output = CheckResult> + Send + '_>> {
        Box::pin(std::future::ready(self.health()))
    }
}

/// Leave to make one call through a [`CircuitBreaker`]. Record the outcome with
/// [`record`](Self::record); dropping it unrecorded counts the call as cancelled (neither
/// success nor failure) and gives a half-open probe slot back.
#[derive(Debug)]
#[must_use = "a permit dropped without `record` counts the call as cancelled"]
pub struct Permit {
    breaker: CircuitBreaker,
    generation: u64,
    started: Instant,
    armed: bool,
}

impl Permit {
    /// Records the call's outcome; it is slow if it took at least `slow_call_duration`
    /// since the permit was granted.
    pub fn record(mut self, outcome: Outcome) {
        self.armed = false;
        self.breaker.record(self.generation, outcome, self.started);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.armed {
            self.breaker.release(self.generation);
        }
    }
}
