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
    store::{EntryKey, IdempotencyStore, Lease, Reservation, StoreFuture, StoredResponse},
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

    /// Writes `entry` into the current generation, rotating first when due.
    fn put(&mut self, key: EntryKey, entry: Entry, lifetime: Duration, caps: (usize, usize)) {
        self.old.remove(&key);
        self.current.remove(&key);
        self.horizon = self.horizon.max(lifetime);
        let now = Instant::now();
        let full = self.current.entries.len() >= caps.0 || self.current.bytes >= caps.1;
        if full || now.duration_since(self.rotated) >= self.horizon {
            self.rotate(now);
        }
        self.current.insert(key, entry);
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
        let shards = (parallelism * 4).next_power_of_two().clamp(8, 256);
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

    /// [`IdempotencyStore::reserve`], synchronously.
    pub fn reserve_now(&self, key: EntryKey, lease: Lease, lease_for: Duration) -> Reservation {
        let now = Instant::now();
        self.with_shard(&key, |shard, caps| {
            match shard.live(&key, now) {
                Some(e) if e.fingerprint != *lease.fingerprint() => return Reservation::Mismatch,
                Some(Entry {
                    state: State::Leased(_),
                    ..
                }) => return Reservation::InFlight,
                Some(Entry {
                    state: State::Done(r),
                    ..
                }) => return Reservation::Completed(r.clone()),
                None => {}
            }
            let entry = Entry {
                fingerprint: *lease.fingerprint(),
                state: State::Leased(lease.owner()),
                expires: now + lease_for,
            };
            shard.put(key, entry, lease_for, caps);
            Reservation::Acquired(lease)
        })
    }

    /// Writes `state` if `lease` holds the entry or the entry has vanished.
    fn replace_if_owner(
        &self,
        key: EntryKey,
        lease: Lease,
        state: Option<State>,
        for_: Duration,
    ) -> bool {
        let now = Instant::now();
        self.with_shard(&key, |shard, caps| {
            if let Some(e) = shard.live(&key, now) {
                if !e.held_by(&lease) {
                    return false;
                }
            }
            match state {
                Some(state) => {
                    let entry = Entry {
                        fingerprint: *lease.fingerprint(),
                        state,
                        expires: now + for_,
                    };
                    shard.put(key, entry, for_, caps);
                }
                None => {
                    shard.current.remove(&key);
                    shard.old.remove(&key);
                }
            }
            true
        })
    }
}

impl IdempotencyStore for MemoryStore {
    fn reserve(
        &self,
        key: EntryKey,
        lease: Lease,
        lease_for: Duration,
    ) -> StoreFuture<Reservation> {
        let r = self.reserve_now(key, lease, lease_for);
        Box::pin(std::future::ready(Ok(r)))
    }

    fn renew(&self, key: EntryKey, lease: Lease, lease_for: Duration) -> StoreFuture<bool> {
        let state = State::Leased(lease.owner());
        let r = self.replace_if_owner(key, lease, Some(state), lease_for);
        Box::pin(std::future::ready(Ok(r)))
    }

    fn complete(
        &self,
        key: EntryKey,
        lease: Lease,
        response: Arc<StoredResponse>,
        ttl: Duration,
    ) -> StoreFuture<bool> {
        let state = State::Done(response);
        let r = self.replace_if_owner(key, lease, Some(state), ttl);
        Box::pin(std::future::ready(Ok(r)))
    }

    fn release(&self, key: EntryKey, lease: Lease) -> StoreFuture<bool> {
        let r = self.replace_if_owner(key, lease, None, Duration::ZERO);
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

    fn response(body: &str) -> StoredResponse {
        StoredResponse {
            status: StatusCode::CREATED,
            headers: Vec::new(),
            body: Some(Bytes::copy_from_slice(body.as_bytes())),
        }
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn lease_then_completion_then_replay() {
        let store = MemoryStore::default();
        let fp = Fingerprint([1; 32]);
        let lease = Lease::new(fp);
        assert!(matches!(
            store.reserve_now(key(1), lease, LONG),
            Reservation::Acquired(_)
        ));
        assert!(matches!(
            store.reserve_now(key(1), Lease::new(fp), LONG),
            Reservation::InFlight
        ));
        assert!(matches!(
            store.reserve_now(key(1), Lease::new(Fingerprint([2; 32])), LONG),
            Reservation::Mismatch
        ));
        // Only the owner completes.
        assert!(!store.replace_if_owner(
            key(1),
            Lease::new(fp),
            Some(State::Done(Arc::new(response("x")))),
            LONG
        ));
        assert!(store.replace_if_owner(
            key(1),
            lease,
            Some(State::Done(Arc::new(response("ok")))),
            LONG
        ));
        match store.reserve_now(key(1), Lease::new(fp), LONG) {
            Reservation::Completed(r) => assert_eq!(r.body.as_deref(), Some(&b"ok"[..])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_expired_lease_frees_the_key_and_the_stale_owner_cannot_overwrite() {
        let store = MemoryStore::default();
        let fp = Fingerprint([1; 32]);
        let stale = Lease::new(fp);
        store.reserve_now(key(1), stale, Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(30));
        let fresh = Lease::new(fp);
        assert!(matches!(
            store.reserve_now(key(1), fresh, LONG),
            Reservation::Acquired(_)
        ));
        assert!(
            !futures_util::FutureExt::now_or_never(store.complete(
                key(1),
                stale,
                Arc::new(response("stale")),
                LONG
            ))
            .unwrap()
            .unwrap()
        );
        assert!(
            futures_util::FutureExt::now_or_never(store.complete(
                key(1),
                fresh,
                Arc::new(response("fresh")),
                LONG
            ))
            .unwrap()
            .unwrap()
        );
        assert!(
            !futures_util::FutureExt::now_or_never(store.release(key(1), stale))
                .unwrap()
                .unwrap()
        );
        match store.reserve_now(key(1), Lease::new(fp), LONG) {
            Reservation::Completed(r) => assert_eq!(r.body.as_deref(), Some(&b"fresh"[..])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bounded_by_entries_and_bytes_and_running_leases_survive() {
        let store = MemoryStore::new(1_000, 1 << 30);
        let fp = Fingerprint([1; 32]);
        let running = Lease::new(fp);
        store.reserve_now(key(0), running, LONG);
        for n in 1..100_000 {
            let lease = Lease::new(fp);
            store.reserve_now(key(n), lease, LONG);
            store.replace_if_owner(
                key(n),
                lease,
                Some(State::Done(Arc::new(response("r")))),
                LONG,
            );
        }
        assert!(
            store.len() <= 1_000 + store.shards.len() * 8,
            "{}",
            store.len()
        );
        assert!(matches!(
            store.reserve_now(key(0), Lease::new(fp), LONG),
            Reservation::InFlight
        ));

        let big = "x".repeat(64 << 10);
        let store = MemoryStore::new(1 << 20, 8 << 20);
        for n in 0..1_000 {
            let lease = Lease::new(fp);
            store.reserve_now(key(n), lease, LONG);
            store.replace_if_owner(
                key(n),
                lease,
                Some(State::Done(Arc::new(response(&big)))),
                LONG,
            );
        }
        assert!(
            store.bytes() <= (8 << 20) + store.shards.len() * (64 << 10) * 2,
            "{}",
            store.bytes()
        );
    }
}
