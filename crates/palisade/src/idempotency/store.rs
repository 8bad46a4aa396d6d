//! The one trait every idempotency store implements, and what an entry holds.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use super::Fingerprint;
pub use crate::error::StoreError;

/// Where one scope — client identity, method, path and key — is stored: the SHA-256 of its
/// parts, so neither the key nor the client's identity is kept, and no client can aim at
/// another client's entry.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryKey(pub [u8; 32]);

impl fmt::Debug for EntryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryKey({})", self.hex())
    }
}

impl EntryKey {
    /// Lower-case hex, 64 characters: the Redis key suffix.
    pub fn hex(&self) -> String {
        super::hex(&self.0)
    }
}

/// Proof of holding an entry's reservation: the request's fingerprint and a random owner
/// token. Only the holder can complete, renew or release the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    fingerprint: Fingerprint,
    owner: u128,
}

impl Lease {
    /// A new lease for a request with `fingerprint`, with a fresh owner token.
    pub fn new(fingerprint: Fingerprint) -> Self {
        Self {
            fingerprint,
            owner: fastrand::u128(..),
        }
    }

    /// The fingerprint of the request holding the lease.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// The owner token.
    pub fn owner(&self) -> u128 {
        self.owner
    }
}

/// A completed request's response, kept for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The status the handler answered.
    pub status: StatusCode,
    /// The headers to replay (hop-by-hop headers, `Set-Cookie` and per-request ids removed).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body, or `None` when it was not kept (larger than the configured maximum, or the
    /// client stopped reading it): then retries are told the request completed, and it is
    /// not run again.
    pub body: Option<Bytes>,
}

impl StoredResponse {
    /// Approximate memory held: body, headers and a fixed overhead.
    pub fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        128 + headers + self.body.as_ref().map_or(0, Bytes::len)
    }
}

/// A store's answer to a reservation.
#[derive(Debug, Clone)]
pub enum Reservation {
    /// No entry existed: the caller now holds it and runs the request.
    Acquired(Lease),
    /// Another request with this key is running (its lease has not expired).
    InFlight,
    /// The request completed earlier: replay this.
    Completed(Arc<StoredResponse>),
    /// The key was used for a request with another fingerprint.
    Mismatch,
}

/// What store operations return.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// Where idempotency entries live. Each operation is atomic per entry.
///
/// An entry is either a *lease* (a request holds it while it runs; it expires after the
/// lease duration unless renewed, so a dead instance frees its keys) or a *completed
/// response* (kept for the TTL). Completion, renewal and release succeed only for the lease
/// holder; completion and release also when the entry has vanished (an expired lease nobody
/// else took). A stale owner never overwrites a newer owner's lease or result, and a lost
/// lease is never renewed back to life.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// No live entry: store `lease` for `lease_for`, answer [`Reservation::Acquired`]. An
    /// entry whose fingerprint differs: [`Reservation::Mismatch`]. Otherwise the entry's
    /// state: [`Reservation::InFlight`] or [`Reservation::Completed`].
    fn reserve(&self, key: EntryKey, lease: Lease, lease_for: Duration)
    -> StoreFuture<Reservation>;

    /// Extends the caller's live lease to `lease_for` from now. `false`: the lease is gone
    /// (expired, released, or another owner holds the entry).
    fn renew(&self, key: EntryKey, lease: Lease, lease_for: Duration) -> StoreFuture<bool>;

    /// Replaces the lease with `response`, kept for `ttl`. `false`: another owner holds the
    /// entry (nothing written).
    fn complete(
        &self,
        key: EntryKey,
        lease: Lease,
        response: Arc<StoredResponse>,
        ttl: Duration,
    ) -> StoreFuture<bool>;

    /// Deletes the entry so the key can be used again. `false`: another owner holds it.
    fn release(&self, key: EntryKey, lease: Lease) -> StoreFuture<bool>;
}
