//! The in-memory store: sharded, fixed-size, O(1) per decision.
//!
//! Keys are spread over many independently locked shards (no global lock; a shard lock is
//! held for one or a few bucket scans). Each shard owns a fixed table of buckets, allocated
//! once and never resized: a bucket is eight 32-byte slots (key, two words of state, and the
//! instant the state stops mattering), 256 bytes on four adjacent cache lines of one page,
//! read in parallel. A key lives only in the bucket its hash names, so a decision reads one
//! bucket per quota: no probing, no rehashing, no sweep, whatever the number of clients.
//!
//! A slot whose state no longer matters (GCRA: the bucket has refilled; sliding window: two
//! windows have passed) is *idle*: it answers like an empty one and is reused by the next
//! new key of its bucket. So idle clients are evicted as a side effect of new ones arriving.
//!
//! **At the cap.** The table holds `max_keys` slots (rounded up to whole buckets). When a
//! new key's bucket has eight clients whose state still matters, the one nearest to idle is
//! forgotten — for GCRA, the one owing the least — and starts again with a full quota;
//! [`MemoryStore::forgotten`] counts these. Buckets fill unevenly, so this starts before
//! `max_keys` clients are live at once: with live clients in half the slots, about 0.8% of
//! new ones forget someone; in three quarters, 5%; in all, 14%. Size `max_keys` at about
//! twice the clients whose state matters at once (GCRA: those still paying off requests;
//! sliding window: those seen within two windows). Memory is exactly 32 bytes per slot,
//! touched as clients arrive: 32 MiB for the default million.

use std::{
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

/// Default `max_keys`: one million tracked (client, quota) pairs, 32 MiB.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// Slots per bucket.
const WAYS: usize = 8;
/// Words per slot: key, state `a`, state `b`, idle-at.
const SLOT_WORDS: usize = 4;
/// Words per bucket (256 bytes: four cache lines, never across a page boundary).
const BUCKET_WORDS: usize = WAYS * SLOT_WORDS;

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
    /// Live clients forgotten because their bucket was full.
    forgotten: AtomicU64,
    clock: Clock,
}

/// Pads each shard to its own cache line so neighbouring locks do not share one.
#[derive(Debug)]
#[repr(align(64))]
struct Shard(Mutex<Table>);

/// One shard's buckets: `BUCKET_WORDS` words each, the first at `words[base]`.
#[derive(Debug)]
struct Table {
    /// Zeroed on allocation (the OS's lazily mapped zero pages: untouched buckets cost no
    /// resident memory). A key of 0 marks an empty slot.
    words: Box<[u64]>,
    /// Offset of the first bucket, so that buckets are aligned to their size.
    base: usize,
    /// Number of buckets.
    buckets: u64,
}

/// Where a slot of a bucket is, as a word index into [`Table::words`].
type SlotAt = usize;

impl Table {
    fn new(buckets: usize) -> Self {
        // `vec![0; n]` asks the allocator for zeroed memory: no page is written here.
        // One bucket of slack: aligning the first bucket skips at most one bucket less a word.
        let words = vec![0u64; (buckets + 1) * BUCKET_WORDS].into_boxed_slice();
        let align = BUCKET_WORDS * size_of::<u64>();
        let misalign = words.as_ptr() as usize % align;
        let base = (align - misalign) % align / size_of::<u64>();
        Self {
            words,
            base,
            buckets: buckets as u64,
        }
    }

    /// The first word of `key`'s bucket.
    fn bucket(&self, key: u64) -> usize {
        // Multiply-shift: the product's top bits depend on every bit of `key`, so even a
        // digest weaker than SipHash spreads evenly; then map 32 of them onto the buckets.
        let h = key.wrapping_mul(0xff51_afd7_ed55_8ccd) >> 32;
        self.base + ((h * self.buckets) >> 32) as usize * BUCKET_WORDS
    }

    /// The slot holding `key`, if any.
    fn find(&self, key: u64) -> Option<SlotAt> {
        let b = self.bucket(key);
        let bucket = &self.words[b..b + BUCKET_WORDS];
        // Compare all eight keys without a branch per slot (which slot matches is random,
        // so a branch per slot would be mispredicted), then pick the match.
        let mut matches = 0u32;
        for w in 0..WAYS {
            matches |= u32::from(bucket[w * SLOT_WORDS] == key) << w;
        }
        (matches != 0).then(|| b + matches.trailing_zeros() as usize * SLOT_WORDS)
    }

    fn state(&self, at: SlotAt) -> State {
        State {
            a: self.words[at + 1],
            b: self.words[at + 2],
        }
    }

    /// Stores `key`'s state, reusing its slot (`found`, if it still holds `key`), else an
    /// empty or idle one, else forgetting the client nearest to idle — never one of `keep`
    /// (the other quotas of this decision). Returns whether a client whose state still
    /// mattered was forgotten.
    fn put(
        &mut self,
        key: u64,
        found: Option<SlotAt>,
        next: (State, u64),
        keep: &[u64],
        now: u64,
    ) -> bool {
        // An earlier quota of the same decision may have taken the slot if it was idle.
        let found = found.filter(|&at| self.words[at] == key);
        if let Some(at) = found.or_else(|| self.find(key)) {
            self.write(at, key, next);
            return false;
        }
        let b = self.bucket(key);
        let mut victim = None;
        let mut victim_idle_at = u64::MAX;
        for w in 0..WAYS {
            let at = b + w * SLOT_WORDS;
            let (k, idle) = (self.words[at], self.words[at + 3]);
            if k == 0 || idle <= now {
                victim = Some((at, false));
                break;
            }
            if idle < victim_idle_at && !keep.contains(&k) {
                victim = Some((at, true));
                victim_idle_at = idle;
            }
        }
        // `keep` holds at most `MAX_QUOTAS - 1` keys other than `key`, which is not in the
        // bucket: one of the eight slots is always free to take.
        let (at, live) = victim.expect("a bucket has more slots than quotas");
        self.write(at, key, next);
        live
    }

    fn write(&mut self, at: SlotAt, key: u64, (state, idle_at): (State, u64)) {
        self.words[at..at + SLOT_WORDS].copy_from_slice(&[key, state.a, state.b, idle_at]);
    }

    /// Slots holding a key (live or idle).
    fn held(&self) -> usize {
        let end = self.base + self.buckets as usize * BUCKET_WORDS;
        self.words[self.base..end]
            .chunks_exact(SLOT_WORDS)
            .filter(|slot| slot[0] != 0)
            .count()
    }
}

impl MemoryStore {
    /// A store tracking at most [`DEFAULT_MAX_KEYS`] keys, on the system clock.
    pub fn new() -> Self {
        Self::with_max_keys(DEFAULT_MAX_KEYS)
    }

    /// A store of `max_keys` slots for (client, quota) pairs (at least 1 024, rounded up to
    /// whole buckets): 32 bytes each.
    pub fn with_max_keys(max_keys: usize) -> Self {
        let parallelism = std::thread::available_parallelism().map_or(4, |n| n.get());
        let shards = (parallelism * 16).next_power_of_two().clamp(16, 1024);
        let buckets_per_shard = max_keys.max(1024).div_ceil(WAYS * shards);
        Self {
            shards: (0..shards)
                .map(|_| Shard(Mutex::new(Table::new(buckets_per_shard))))
                .collect(),
            shard_mask: shards - 1,
            forgotten: AtomicU64::new(0),
            clock: Clock::System(Instant::now()),
        }
    }

    /// Uses `clock` instead of the system clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Keys held, live or idle (an idle key's slot is reused by the next new key of its
    /// bucket): an upper bound on the clients being tracked. Scans the whole table.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.0.lock().unwrap_or_else(PoisonError::into_inner).held())
            .sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Clients forgotten while their state still mattered, because their bucket was full
    /// of such clients (see the [module docs](self)). Non-zero means `max_keys` is too small
    /// for the traffic, or many clients are being made up.
    pub fn forgotten(&self) -> u64 {
        self.forgotten.load(Ordering::Relaxed)
    }

    /// The decision at the store clock's current time.
    pub fn decide_now(&self, policy: &Policy, key: KeyDigest) -> Decision {
        let now = self.clock.now();
        let shard = &self.shards[((key.0 >> 96) as usize) & self.shard_mask];
        let n = policy.quotas.len();
        let mut keys = [0u64; MAX_QUOTAS];
        let mut next = [(State::default(), 0u64); MAX_QUOTAS];
        let mut found = [None; MAX_QUOTAS];
        let mut table = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
        let decision = Decision::from_parts((0..n).map(|i| {
            keys[i] = quota_key(key, i);
            found[i] = table.find(keys[i]);
            let state = found[i].map_or(State::default(), |at| table.state(at));
            let v = policy.verdict(i, state, now);
            next[i] = (v.next, now.saturating_add(v.ttl));
            (v.allowed, v.remaining, v.reset, v.retry_after)
        }));
        if decision.allowed {
            let mut forgotten = 0;
            for i in 0..n {
                forgotten += u64::from(table.put(keys[i], found[i], next[i], &keys[..n], now));
            }
            drop(table);
            if forgotten > 0 {
                self.forgotten.fetch_add(forgotten, Ordering::Relaxed);
            }
        }
        decision
    }
}

/// The table key of `key`'s state under quota `i` of its policy: never 0 (0 marks an empty
/// slot). Every quota of one client is in the same shard, chosen by the digest's top bits.
fn quota_key(key: KeyDigest, i: usize) -> u64 {
    (key.short() ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1
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

    /// Spreads `i` the way SipHash digests spread.
    fn spread(i: u64) -> KeyDigest {
        KeyDigest(u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
    }

    #[test]
    fn keys_are_bounded_and_idle_ones_make_room_without_forgetting_anyone() {
        let clock = ManualClock::new();
        let store = MemoryStore::with_max_keys(4096).with_clock(Clock::Manual(clock.clone()));
        // One per hour: every client stays live for an hour.
        let p = policy(Algorithm::Gcra, &[(1, 3600)]);
        for i in 0..100_000 {
            assert!(store.decide_now(&p, spread(i)).allowed);
        }
        assert!(store.len() <= 4096, "{} keys held", store.len());
        assert!(store.forgotten() >= 100_000 - 4096, "{}", store.forgotten());
        // An hour later every one of them is idle: new clients take their slots and no
        // live client is forgotten.
        clock.advance(Duration::from_secs(3600));
        let before = store.forgotten();
        for i in 1_000_000..1_000_256 {
            assert!(store.decide_now(&p, spread(i)).allowed);
        }
        assert_eq!(store.forgotten(), before);
        assert!(store.len() <= 4096, "{} keys held", store.len());
        // And each new client was remembered: its second request is refused.
        for i in 1_000_000..1_000_256 {
            assert!(!store.decide_now(&p, spread(i)).allowed, "client {i}");
        }
    }

    #[test]
    fn every_bucket_is_aligned_and_inside_the_allocation() {
        // Allocations of many sizes, so their addresses fall at many offsets from 256.
        let tables: Vec<Table> = (1..200).map(Table::new).collect();
        for (t, buckets) in tables.iter().zip(1..) {
            let first = t.words.as_ptr() as usize + t.base * size_of::<u64>();
            assert_eq!(first % (BUCKET_WORDS * size_of::<u64>()), 0);
            assert!(
                t.base + buckets * BUCKET_WORDS <= t.words.len(),
                "{buckets} buckets"
            );
            // Keys reach the last bucket, and it can be read.
            let last = (0..20_000u64)
                .map(|i| t.bucket(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1))
                .max()
                .unwrap();
            assert_eq!(last, t.base + (buckets - 1) * BUCKET_WORDS);
            assert_eq!(t.find(u64::MAX), None);
        }
    }

    #[test]
    fn at_the_cap_the_client_nearest_to_idle_is_forgotten() {
        // The clock stands still: everyone's state still matters.
        let store = MemoryStore::with_max_keys(1024).with_clock(Clock::Manual(ManualClock::new()));
        // 1 per second, a bucket of 10.
        let q = QuotaConfig::new(10, Duration::from_secs(10)).burst(9);
        let p = Policy::compile("t", 1, &PolicyConfig::new(Algorithm::Gcra, [q])).unwrap();
        // Nine clients of one bucket of one shard.
        let where_is = |k: KeyDigest| {
            let shard = ((k.0 >> 96) as usize) & store.shard_mask;
            (
                shard,
                store.shards[shard]
                    .0
                    .lock()
                    .unwrap()
                    .bucket(quota_key(k, 0)),
            )
        };
        let same: Vec<KeyDigest> = (0..)
            .map(spread)
            .filter(|&k| where_is(k) == where_is(spread(0)))
            .take(WAYS + 1)
            .collect();
        let client = |j: usize| same[j - 1];
        // Clients 1..=8 fill the bucket, owing these many intervals; client 2 the least.
        let owed = [5, 1, 3, 4, 6, 7, 8, 2];
        for (j, &n) in (1..).zip(&owed) {
            for _ in 0..n {
                assert!(store.decide_now(&p, client(j)).allowed);
            }
        }
        assert_eq!(store.forgotten(), 0);
        // A ninth client: the bucket is full of live clients.
        assert_eq!(store.decide_now(&p, client(9)).quotas()[0].remaining, 9);
        assert_eq!(store.forgotten(), 1);
        let remaining = |j| store.decide_now(&p, client(j)).quotas()[0].remaining;
        for (j, &n) in (1..).zip(&owed).filter(|&(j, _)| j != 2) {
            assert_eq!(remaining(j), 10 - n - 1, "client {j} is remembered");
        }
        assert_eq!(remaining(9), 8, "client 9 is remembered");
        assert_eq!(store.forgotten(), 1);
        // Client 2 starts again with a full bucket (and, arriving last, forgets someone).
        assert_eq!(remaining(2), 9, "client 2 was forgotten");
    }

    #[test]
    fn a_big_gcra_bucket_is_remembered_until_it_has_refilled() {
        // 1 per hour with a bucket of 24: a full bucket takes a day to refill, far longer
        // than two windows.
        let clock = ManualClock::new();
        let store = MemoryStore::with_max_keys(1 << 20).with_clock(Clock::Manual(clock.clone()));
        let q = QuotaConfig::new(1, Duration::from_secs(3600)).burst(23);
        let p = Policy::compile("t", 1, &PolicyConfig::new(Algorithm::Gcra, [q])).unwrap();
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
