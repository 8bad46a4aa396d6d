//! The one trait every rate-limit store implements, and what a decision says.

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use super::{key::KeyDigest, policy::MAX_QUOTAS, policy::Policy};

/// Status of one quota after a decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaStatus {
    /// Requests still allowed now.
    pub remaining: u64,
    /// Seconds (rounded up) until the quota is restored (GCRA: the bucket is full again;
    /// sliding window: the current window ends).
    pub reset_secs: u64,
}

/// A store's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether every quota let the request through (and it was counted).
    pub allowed: bool,
    /// When rejected: whole seconds (≥ 1, rounded up) until a request would be allowed.
    pub retry_after_secs: u64,
    /// Per quota, in the policy's order; the first `len` entries are meaningful.
    pub quotas: [QuotaStatus; MAX_QUOTAS],
    /// When rejected: which quotas refused, as a bit set by index.
    pub violated: u8,
    /// The number of quotas.
    pub len: u8,
}

impl Decision {
    /// The quotas, in policy order.
    pub fn quotas(&self) -> &[QuotaStatus] {
        &self.quotas[..usize::from(self.len)]
    }

    /// Builds a decision from per-quota verdict parts (`remaining`, `reset`, `retry` in ns).
    pub(crate) fn from_parts(parts: impl Iterator<Item = (bool, u64, u64, u64)>) -> Self {
        let mut d = Decision {
            allowed: true,
            retry_after_secs: 0,
            quotas: [QuotaStatus::default(); MAX_QUOTAS],
            violated: 0,
            len: 0,
        };
        let mut retry = 0;
        for (i, (allowed, remaining, reset, retry_ns)) in parts.enumerate().take(MAX_QUOTAS) {
            d.quotas[i] = QuotaStatus {
                remaining,
                reset_secs: ceil_secs(reset),
            };
            if !allowed {
                d.allowed = false;
                d.violated |= 1 << i;
                retry = retry.max(retry_ns);
            }
            d.len += 1;
        }
        if !d.allowed {
            d.retry_after_secs = ceil_secs(retry).max(1);
            for q in &mut d.quotas {
                q.remaining = 0;
            }
        }
        d
    }
}

/// Nanoseconds to whole seconds, rounded up.
pub(crate) fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

pub use crate::error::StoreError;

/// A decision that is either known at once (in memory) or needs I/O (Redis).
pub enum Decide {
    /// Answered synchronously: no allocation, no await.
    Ready(Result<Decision, StoreError>),
    /// Needs a round trip.
    Pending(Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>),
}

impl fmt::Debug for Decide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready(r) => f.debug_tuple("Ready").field(r).finish(),
            Self::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// Where counters live. Implementations must decide atomically per key: check every quota
/// of the policy, and count the request in all of them only if all allow it.
pub trait RateLimitStore: Send + Sync + 'static {
    /// Decides one request of the client `key` under `policy`.
    fn decide(&self, policy: &Arc<Policy>, key: KeyDigest) -> Decide;

    /// Called once per policy when a limiter is built over this store.
    fn register(&self, _policy: &Policy) {}
}

impl<S: RateLimitStore + ?Sized> RateLimitStore for Arc<S> {
    fn decide(&self, policy: &Arc<Policy>, key: KeyDigest) -> Decide {
        (**self).decide(policy, key)
    }

    fn register(&self, policy: &Policy) {
        (**self).register(policy);
    }
}
