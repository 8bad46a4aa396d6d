//! The in-memory store: sharded, bounded, O(1) per decision.
//!
//! Keys are spread over many independently locked shards (no global lock; a shard lock is
//! held for a few hash lookups). Each shard keeps two generations of entries: lookups read
//! the current one, then the previous one (moving the entry forward). The previous
//! generation is dropped wholesale when the current one fills half the shard's share of
//! `max_keys`, or when it is older than the longest time a key's state can matter (two
//! windows; a GCRA bucket's refill time; at least two minutes), so everything dropped is idle. So idle keys are evicted without a
//! sweep, memory never exceeds `max_keys` entries, and each decision stays O(1).
//!
//! At the cap, the keys least recently seen (the previous generation) are forgotten: those
//! clients start again with a full quota. Size `max_keys` so this happens only under attack
//! (one entry per client and quota: about 24 bytes plus map overhead, ≤ 64 bytes).

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    algorithm::State,
    key::KeyDigest,
    policy::{MAX_QUOTAS, Policy},
    store::{Decide, Decision, RateLimitStore},
};

/// Default `max_keys`: one million tracked (client, quota) pairs, ≤ 64 MiB.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// The store's clock: the system's monotonic clock, or a manual one for tests.
#[derive(Debug, Clone)]
pub enum Clock {
    /// Real time since the store was created.
    System(Instant),
    /// Time that moves only when told; see [`ManualClock`].
    Manual(ManualClock),
}

impl Clock {
    /// Nanoseconds on this clock (never 0, so a zeroed state means "never seen").
    pub(crate) fn now(&self) -> u64 {
        match self {
            Self::System(start) => start.elapsed().as_nanos() as u64 + 1,
            Self::Manual(m) => m.0.load(Ordering::Relaxed) + 1,
        }
    }
}

/// A clock for tests: starts at 0 and moves with [`ManualClock::advance`].
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock at 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// The in-memory [`RateLimitStore`]. See the [module docs](self).
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[Shard]>,
    shard_mask: usize,
    /// Entries per generation per shard before the previous generation is dropped.
    generation_cap: usize,
    /// A generation older than this holds only idle entries (ns).
    rotate_after: AtomicU64,
    clock: Clock,
}

/// Pads each shard to its own cache line so neighbouring locks do not share one.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard(Mutex<Generations>);

type Map = HashMap<u64, State, BuildHasherDefault<PreHashed>>;

#[derive(Debug, Default)]
struct Generations {
    current: Map,
    previous: Map,
    /// When `current` was started.
    started: u64,
}

impl Generations {
    fn rotate(&mut self, now: u64) {
        self.previous = std::mem::take(&mut self.current);
        self.started = now;
    }
}

impl MemoryStore {
    /// A store tracking at most [`DEFAULT_MAX_KEYS`] keys, on the system clock.
    pub fn new() -> Self {
        Self::with_max_keys(DEFAULT_MAX_KEYS)
    }

    /// A store tracking at most `max_keys` (client, quota) pairs (at least 1 024).
    pub fn with_max_keys(max_keys: usize) -> Self {
        let parallelism = std::thread::available_parallelism().map_or(4, |n| n.get());
        let shards = (parallelism * 16).next_power_of_two().clamp(16, 1024);
        let max_keys = max_keys.max(1024);
        Self {
            shards: (0..shards).map(|_| Shard::default()).collect(),
            shard_mask: shards - 1,
            generation_cap: (max_keys / shards / 2).max(8),
            rotate_after: AtomicU64::new(120 * 1_000_000_000),
            clock: Clock::System(Instant::now()),
        }
    }

    /// Uses `clock` instead of the system clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Keys currently held (both generations, so an upper bound on live keys).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let g = s.0.lock().unwrap_or_else(PoisonError::into_inner);
                g.current.len() + g.previous.len()
            })
            .sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The decision at the store clock's current time.
    pub fn decide_now(&self, policy: &Policy, key: KeyDigest) -> Decision {
        let now = self.clock.now();
        let short = key.short();
        let shard = &self.shards[((key.0 >> 96) as usize) & self.shard_mask];
        let n = policy.quotas.len();
        let mut keys = [0u64; MAX_QUOTAS];
        let mut next = [State::default(); MAX_QUOTAS];
        let mut g = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
        if now.saturating_sub(g.started) >= self.rotate_after.load(Ordering::Relaxed) {
            // Both generations are idle by now: drop the older one.
            g.rotate(now);
        }
        // Where each quota's entry was found: 0 nowhere, 1 current, 2 previous.
        let mut found = [0u8; MAX_QUOTAS];
        let decision = Decision::from_parts((0..n).map(|i| {
            keys[i] = short ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let state = match g.current.get(&keys[i]) {
                Some(s) => {
                    found[i] = 1;
                    *s
                }
                None => match g.previous.get(&keys[i]) {
                    Some(s) => {
                        found[i] = 2;
                        *s
                    }
                    None => State::default(),
                },
            };
            let v = policy.verdict(i, state, now);
            next[i] = v.next;
            (v.allowed, v.remaining, v.reset, v.retry_after)
        }));
        if decision.allowed {
            for i in 0..n {
                if found[i] == 1 {
                    if let Some(slot) = g.current.get_mut(&keys[i]) {
                        *slot = next[i];
                        continue;
                    }
                }
                if found[i] == 2 {
                    g.previous.remove(&keys[i]);
                }
                if g.current.len() >= self.generation_cap {
                    g.rotate(now);
                }
                g.current.insert(keys[i], next[i]);
            }
        }
        decision
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimitStore for MemoryStore {
    fn decide(&self, policy: &Arc<Policy>, key: KeyDigest) -> Decide {
        Decide::Ready(Ok(self.decide_now(policy, key)))
    }

    /// Makes sure idle eviction never drops state that could still matter for `policy`.
    fn register(&self, policy: &Policy) {
        self.rotate_after
            .fetch_max(policy.state_lifetime(), Ordering::Relaxed);
    }
}

/// Keys are already SipHash digests: hashing them again is wasted work.
#[derive(Debug, Default, Clone, Copy)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; fold anything else in for completeness.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::policy::{Algorithm, PolicyConfig, QuotaConfig};

    fn policy(alg: Algorithm, quotas: &[(u64, u64)]) -> Policy {
        let q = quotas
            .iter()
            .map(|&(l, w)| QuotaConfig::new(l, Duration::from_secs(w)));
        Policy::compile("t", 1, &PolicyConfig::new(alg, q)).unwrap()
    }

    #[test]
    fn all_quotas_must_pass_and_rejections_count_nowhere() {
        // 3 per second and 5 per minute.
        let clock = ManualClock::new();
        let store = MemoryStore::new().with_clock(Clock::Manual(clock.clone()));
        let p = policy(Algorithm::SlidingWindow, &[(3, 1), (5, 60)]);
        store.register(&p);
        let k = KeyDigest(42);
        let allowed = |n| (0..n).filter(|_| store.decide_now(&p, k).allowed).count();
        assert_eq!(allowed(10), 3);
        let d = store.decide_now(&p, k);
        assert_eq!(d.violated, 0b01);
        // The 3 of this second still weigh on the next one: 3 * (1 - e) + 1 <= 3 from
        // e = 1/3 s into it, so 1.33 s from now, rounded up.
        assert_eq!(d.retry_after_secs, 2);
        clock.advance(Duration::from_secs(2));
        // The minute quota has 2 left; the 8 rejected above did not use it up.
        assert_eq!(allowed(10), 2);
        let d = store.decide_now(&p, k);
        assert_eq!(d.violated, 0b10);
        assert!(d.retry_after_secs > 1);
    }

    #[test]
    fn keys_are_bounded_and_idle_ones_evicted() {
        let clock = ManualClock::new();
        let store = MemoryStore::with_max_keys(4096).with_clock(Clock::Manual(clock.clone()));
        let p = policy(Algorithm::Gcra, &[(10, 1)]);
        store.register(&p);
        for i in 0..100_000u128 {
            store.decide_now(
                &p,
                KeyDigest(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)),
            );
        }
        assert!(store.len() <= 4096, "{} keys held", store.len());
        // Two idle periods later, every touched shard has dropped the old keys.
        let touch_every_shard = || {
            for i in 0..1024u128 {
                store.decide_now(&p, KeyDigest(i << 96));
            }
        };
        clock.advance(Duration::from_secs(121));
        touch_every_shard();
        clock.advance(Duration::from_secs(121));
        touch_every_shard();
        assert!(store.len() <= 1024, "{} keys held", store.len());
    }

    #[test]
    fn a_big_gcra_bucket_is_remembered_until_it_has_refilled() {
        // 1 per hour with a bucket of 24: a full bucket takes a day to refill, far longer
        // than two windows.
        let clock = ManualClock::new();
        let store = MemoryStore::with_max_keys(1 << 20).with_clock(Clock::Manual(clock.clone()));
        let q = QuotaConfig::new(1, Duration::from_secs(3600)).burst(23);
        let p = Policy::compile("t", 1, &PolicyConfig::new(Algorithm::Gcra, [q])).unwrap();
        store.register(&p);
        let k = KeyDigest(99);
        assert_eq!(
            (0..30).filter(|_| store.decide_now(&p, k).allowed).count(),
            24
        );
        for _ in 0..5 {
            clock.advance(Duration::from_secs(3600));
            for i in 0..1024u128 {
                store.decide_now(&p, KeyDigest((i + 1) << 96));
            }
        }
        // Five hours later (past two idle-eviction periods of a "two windows" rule): five
        // requests, not a fresh bucket of 24.
        assert_eq!(
            (0..30).filter(|_| store.decide_now(&p, k).allowed).count(),
            5
        );
    }
}
