//! The in-memory idempotency store: sharded, bounded in entries and bytes, with TTLs.
//!
//! Entries are spread over independently locked shards (no global lock). Each shard keeps
//! two generations: lookups read both, writes go to the current one. The current generation
//! becomes the old one (and the old one is dropped) when it is older than the longest TTL
//! or lease seen — everything in the old generation has expired by then — or when it fills
//! half the shard's share of `max_entries` or `max_bytes`. In that second case completed
//! responses are forgotten early, oldest first: a retry of such a request runs again.
//! Leases of running requests are never dropped (they move to the new generation).
//! Expired entries are invisible at once, whatever the generation.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use super::{
    Fingerprint,
    store::{
        EntryKey, IdempotencyStore, Lease, Reservation, StoreError, StoreFuture, StoredResponse,
    },
};

/// Default `max_entries`.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
/// Default `max_bytes`: 64 MiB.
pub const DEFAULT_MAX_BYTES: usize = 64 << 20;

/// The in-memory [`IdempotencyStore`]. See the [module docs](self).
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[Padded]>,
    mask: usize,
    /// Per shard and generation.
    entry_cap: usize,
    byte_cap: usize,
}

/// One shard on its own cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(Mutex<Shard>);

#[derive(Debug)]
struct Shard {
    current: Generation,
    old: Generation,
    rotated: Instant,
    /// The longest TTL or lease written: after that long, the old generation is all expired.
    horizon: Duration,
}

impl Default for Shard {
    fn default() -> Self {
        Self {
            current: Generation::default(),
            old: Generation::default(),
            rotated: Instant::now(),
            horizon: Duration::ZERO,
        }
    }
}

#[derive(Debug, Default)]
struct Generation {
    entries: HashMap<EntryKey, Entry>,
    bytes: usize,
}

#[derive(Debug, Clone)]
struct Entry {
    fingerprint: Fingerprint,
    state: State,
    expires: Instant,
}

#[derive(Debug, Clone)]
enum State {
    Leased(u128),
    Done(Arc<StoredResponse>),
}

impl Entry {
    fn size(&self) -> usize {
        match &self.state {
            State::Leased(_) => 96,
            State::Done(r) => r.size(),
        }
    }

    fn held_by(&self, lease: &Lease) -> bool {
        matches!(self.state, State::Leased(o) if o == lease.owner())
    }
}

impl Generation {
    fn insert(&mut self, key: EntryKey, entry: Entry) {
        self.bytes += entry.size();
        if let Some(prev) = self.entries.insert(key, entry) {
            self.bytes -= prev.size();
        }
    }

    fn remove(&mut self, key: &EntryKey) -> Option<Entry> {
        let e = self.entries.remove(key)?;
        self.bytes -= e.size();
        Some(e)
    }
}

impl Shard {
    /// The live entry for `key`, if any (expired ones are removed on the way).
    fn live(&mut self, key: &EntryKey, now: Instant) -> Option<&Entry> {
        for generation in [&mut self.current, &mut self.old] {
            if let Some(e) = generation.entries.get(key) {
                if e.expires > now {
                    return generation.entries.get(key);
                }
                generation.remove(key);
            }
        }
        None
    }

    /// Writes `entry` into the current generation, rotating first when due. `false` (nothing
    /// written) when a new lease would not fit: the shard holds only running requests.
    fn put(
        &mut self,
        key: EntryKey,
        entry: Entry,
        lifetime: Duration,
        caps: (usize, usize),
    ) -> bool {
        self.old.remove(&key);
        self.current.remove(&key);
        self.horizon = self.horizon.max(lifetime);
        let now = Instant::now();
        let full = self.current.entries.len() >= caps.0 || self.current.bytes >= caps.1;
        if full || now.duration_since(self.rotated) >= self.horizon {
            self.rotate(now);
        }
        if matches!(entry.state, State::Leased(_)) && self.current.entries.len() >= caps.0 {
            return false;
        }
        self.current.insert(key, entry);
        true
    }

    /// The current generation becomes the old one; running requests' leases are kept.
    fn rotate(&mut self, now: Instant) {
        let dropped = std::mem::replace(&mut self.old, std::mem::take(&mut self.current));
        for (key, entry) in dropped.entries {
            if matches!(entry.state, State::Leased(_)) && entry.expires > now {
                self.current.insert(key, entry);
            }
        }
        self.rotated = now;
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES, DEFAULT_MAX_BYTES)
    }
}

impl MemoryStore {
    /// A store holding about `max_entries` entries and `max_bytes` of stored responses at
    /// most.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        let parallelism = std::thread::available_parallelism().map_or(4, |n| n.get());
        // Few shards: each must hold several of the largest responses within its share.
        let shards = (parallelism * 2).next_power_of_two().clamp(4, 32);
        Self {
            shards: (0..shards).map(|_| Padded::default()).collect(),
            mask: shards - 1,
            entry_cap: (max_entries / shards / 2).max(4),
            byte_cap: (max_bytes / shards / 2).max(4096),
        }
    }

    /// Live and not-yet-dropped entries (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let g = s.0.lock().unwrap_or_else(PoisonError::into_inner);
                g.current.entries.len() + g.old.entries.len()
            })
            .sum()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate bytes held by entries.
    pub fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let g = s.0.lock().unwrap_or_else(PoisonError::into_inner);
                g.current.bytes + g.old.bytes
            })
            .sum()
    }

    fn with_shard<T>(&self, key: &EntryKey, f: impl FnOnce(&mut Shard, (usize, usize)) -> T) -> T {
        let index = u64::from_le_bytes(key.0[..8].try_into().expect("8 bytes")) as usize;
        let shard = &self.shards[index & self.mask];
        let mut g = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut g, (self.entry_cap, self.byte_cap))
    }

    /// [`IdempotencyStore::reserve`], synchronously. Fails when the key's shard is full of
    /// running requests (more than about `max_entries / 2` at once).
    pub fn reserve_now(
        &self,
        key: EntryKey,
        lease: Lease,
        lease_for: Duration,
    ) -> Result<Reservation, StoreError> {
        let now = Instant::now();
        self.with_shard(&key, |shard, caps| {
            match shard.live(&key, now) {
                Some(e) if e.fingerprint != *lease.fingerprint() => {
                    return Ok(Reservation::Mismatch);
                }
                Some(Entry {
                    state: State::Leased(_),
                    ..
                }) => return Ok(Reservation::InFlight),
                Some(Entry {
                    state: State::Done(r),
                    ..
                }) => return Ok(Reservation::Completed(r.clone())),
                None => {}
            }
            let entry = Entry {
                fingerprint: *lease.fingerprint(),
                state: State::Leased(lease.owner()),
                expires: now + lease_for,
            };
            if shard.put(key, entry, lease_for, caps) {
                Ok(Reservation::Acquired(lease))
            } else {
                Err(StoreError(
                    "idempotency store: too many requests in flight".into(),
                ))
            }
        })
    }

    /// Applies `op` if `lease` holds the entry — or, for `Op::Complete` and `Op::Release`, if
    /// the entry has vanished (an expired lease nobody else took).
    fn if_owner(&self, key: EntryKey, lease: Lease, op: Op) -> bool {
        let now = Instant::now();
        self.with_shard(&key, |shard, caps| {
            match shard.live(&key, now) {
                Some(e) if !e.held_by(&lease) => return false,
                None if matches!(op, Op::Renew(_)) => return false,
                _ => {}
            }
            let (state, for_) = match op {
                Op::Renew(for_) => (State::Leased(lease.owner()), for_),
                Op::Complete(response, ttl) => (State::Done(response), ttl),
                Op::Release => {
                    shard.current.remove(&key);
                    shard.old.remove(&key);
                    return true;
                }
            };
            let entry = Entry {
                fingerprint: *lease.fingerprint(),
                state,
                expires: now + for_,
            };
            // A completed entry always fits; a renewed lease replaces itself.
            shard.put(key, entry, for_, caps);
            true
        })
    }
}

/// What [`MemoryStore::if_owner`] does.
enum Op {
    Renew(Duration),
    Complete(Arc<StoredResponse>, Duration),
    Release,
}

impl IdempotencyStore for MemoryStore {
    fn reserve(
        &self,
        key: EntryKey,
        lease: Lease,
        lease_for: Duration,
    ) -> StoreFuture<Reservation> {
        Box::pin(std::future::ready(self.reserve_now(key, lease, lease_for)))
    }

    fn renew(&self, key: EntryKey, lease: Lease, lease_for: Duration) -> StoreFuture<bool> {
        let r = self.if_owner(key, lease, Op::Renew(lease_for));
        Box::pin(std::future::ready(Ok(r)))
    }

    fn complete(
        &self,
        key: EntryKey,
        lease: Lease,
        response: Arc<StoredResponse>,
        ttl: Duration,
    ) -> StoreFuture<bool> {
        let r = self.if_owner(key, lease, Op::Complete(response, ttl));
        Box::pin(std::future::ready(Ok(r)))
    }

    fn release(&self, key: EntryKey, lease: Lease) -> StoreFuture<bool> {
        let r = self.if_owner(key, lease, Op::Release);
        Box::pin(std::future::ready(Ok(r)))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::StatusCode;

    use super::*;

    fn key(n: u64) -> EntryKey {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&n.to_le_bytes());
        k[8..16].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
        EntryKey(k)
    }

    fn done(body: &str) -> Op {
        Op::Complete(
            Arc::new(StoredResponse {
                status: StatusCode::CREATED,
                headers: Vec::new(),
                body: Some(Bytes::copy_from_slice(body.as_bytes())),
            }),
            LONG,
        )
    }

    fn reserve(store: &MemoryStore, n: u64, lease: Lease, for_: Duration) -> Reservation {
        store.reserve_now(key(n), lease, for_).unwrap()
    }

    fn replayed_body(store: &MemoryStore, n: u64, fp: Fingerprint) -> Bytes {
        match reserve(store, n, Lease::new(fp), LONG) {
            Reservation::Completed(r) => r.body.clone().unwrap(),
            other => panic!("{other:?}"),
        }
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn lease_then_completion_then_replay() {
        let store = MemoryStore::default();
        let fp = Fingerprint([1; 32]);
        let lease = Lease::new(fp);
        assert!(matches!(
            reserve(&store, 1, lease, LONG),
            Reservation::Acquired(_)
        ));
        assert!(matches!(
            reserve(&store, 1, Lease::new(fp), LONG),
            Reservation::InFlight
        ));
        assert!(matches!(
            reserve(&store, 1, Lease::new(Fingerprint([2; 32])), LONG),
            Reservation::Mismatch
        ));
        // Only the owner renews and completes.
        assert!(!store.if_owner(key(1), Lease::new(fp), Op::Renew(LONG)));
        assert!(!store.if_owner(key(1), Lease::new(fp), done("x")));
        assert!(store.if_owner(key(1), lease, Op::Renew(LONG)));
        assert!(store.if_owner(key(1), lease, done("ok")));
        assert_eq!(replayed_body(&store, 1, fp), "ok");
    }

    #[test]
    fn an_expired_lease_frees_the_key_and_the_stale_owner_cannot_overwrite() {
        let store = MemoryStore::default();
        let fp = Fingerprint([1; 32]);
        let stale = Lease::new(fp);
        reserve(&store, 1, stale, Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(30));
        // A vanished lease is not renewed back to life.
        assert!(!store.if_owner(key(1), stale, Op::Renew(LONG)));
        let fresh = Lease::new(fp);
        assert!(matches!(
            reserve(&store, 1, fresh, LONG),
            Reservation::Acquired(_)
        ));
        assert!(!store.if_owner(key(1), stale, done("stale")));
        assert!(store.if_owner(key(1), fresh, done("fresh")));
        assert!(!store.if_owner(key(1), stale, Op::Release));
        assert_eq!(replayed_body(&store, 1, fp), "fresh");
    }

    #[test]
    fn bounded_by_entries_and_bytes_and_running_leases_survive() {
        let store = MemoryStore::new(1_000, 1 << 30);
        let fp = Fingerprint([1; 32]);
        reserve(&store, 0, Lease::new(fp), LONG);
        for n in 1..100_000 {
            let lease = Lease::new(fp);
            reserve(&store, n, lease, LONG);
            store.if_owner(key(n), lease, done("r"));
        }
        let cap = 2 * store.shards.len() * (store.entry_cap + 1);
        assert!(store.len() <= cap, "{} > {cap}", store.len());
        assert!(matches!(
            reserve(&store, 0, Lease::new(fp), LONG),
            Reservation::InFlight
        ));

        let big = "x".repeat(64 << 10);
        let store = MemoryStore::new(1 << 20, 8 << 20);
        for n in 0..1_000 {
            let lease = Lease::new(fp);
            reserve(&store, n, lease, LONG);
            store.if_owner(key(n), lease, done(&big));
        }
        let cap = (8 << 20) + store.shards.len() * 2 * (big.len() + 256);
        assert!(store.bytes() <= cap, "{} > {cap}", store.bytes());
    }

    #[test]
    fn a_shard_full_of_running_requests_refuses_new_leases() {
        let store = MemoryStore::new(64, 1 << 30);
        let fp = Fingerprint([1; 32]);
        let refused = (0..10_000)
            .filter(|n| store.reserve_now(key(*n), Lease::new(fp), LONG).is_err())
            .count();
        assert!(refused > 0);
        // Every lease it did grant is still held.
        let held = (0..10_000)
            .filter(|n| {
                matches!(
                    store.reserve_now(key(*n), Lease::new(fp), LONG),
                    Ok(Reservation::InFlight)
                )
            })
            .count();
        assert_eq!(held, 10_000 - refused);
    }
}
