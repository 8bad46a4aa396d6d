//! Why a layer refused a request: a small typed tag every Palisade rejection carries in its
//! response extensions, so the layers outside it (metrics, logs) can count rejections by layer
//! and reason without parsing bodies.
//!
//! Layers attach it with [`Problem::with_rejection`](crate::problem::Problem::with_rejection);
//! anything outside reads it back:
//!
//! ```
//! use http::StatusCode;
//! use palisade::{problem::Problem, rejection::Rejection};
//!
//! let res = Problem::new(StatusCode::TOO_MANY_REQUESTS)
//!     .with_rejection(Rejection::RateLimited)
//!     .into_response();
//! let why = res.extensions().get::<Rejection>().copied();
//! assert_eq!(why.map(|r| (r.layer(), r.reason())), Some(("rate_limit", "quota_exceeded")));
//! ```
//!
//! The set is closed and small (the metric `http_rejections_total{layer,reason}` stays
//! bounded); every variant is listed in [`Rejection::ALL`].

/// A rejection by a Palisade layer. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rejection {
    /// `trusted_host`: the `Host` is not allowed (400).
    UntrustedHost,
    /// `geoip`: the client's country is not allowed (403).
    Location,
    /// `content_validation`: the body's `Content-Type` is not accepted (415).
    UnsupportedMediaType,
    /// `content_validation`: bad percent-encoding or `%00` in path or query (400).
    MalformedTarget,
    /// `content_validation`: too many header fields or header bytes (431).
    HeadersTooLarge,
    /// `load_shed`: every slot busy and the queue full (503).
    QueueFull,
    /// `load_shed`: waited `max_queue_wait` for a slot (503).
    QueueTimeout,
    /// `rate_limit`: a quota is exhausted (429).
    RateLimited,
    /// `rate_limit`: the shared store failed and the limiter fails closed (503).
    RateLimitStoreUnavailable,
    /// `timeout`: the request body stalled (408).
    BodyTimeout,
    /// `timeout`: the request ran past its deadline (504).
    Timeout,
    /// `body_limit`: the body is larger than allowed (413).
    BodyTooLarge,
    /// `body_limit`: `Content-Length` malformed or conflicting (400).
    MalformedLength,
    /// `circuit_breaker`: the breaker is open (503).
    CircuitOpen,
    /// `idempotency`: the operation requires an `Idempotency-Key` (400).
    IdempotencyKeyMissing,
    /// `idempotency`: the key is malformed (400).
    IdempotencyKeyInvalid,
    /// `idempotency`: a request with this key is still running (409).
    IdempotencyInFlight,
    /// `idempotency`: the key was used for a different request (422).
    IdempotencyMismatch,
    /// `idempotency`: the stored response is unavailable (409).
    IdempotencyResponseUnavailable,
    /// `idempotency`: the body is too large to fingerprint (413).
    IdempotencyBodyTooLarge,
    /// `idempotency`: the store failed (503).
    IdempotencyStoreUnavailable,
    /// `auth`: no credentials, or invalid ones (401).
    Unauthenticated,
    /// `auth`: valid credentials without the required scope (403).
    Forbidden,
    /// `catch_panic`: the handler panicked (500).
    Panic,
    /// `gateway`: no upstream could be reached (502).
    UpstreamUnavailable,
    /// `gateway`: the upstream did not answer in time (504).
    UpstreamTimeout,
    /// `gateway`: the request's framing is ambiguous or invalid, a smuggling risk (400).
    MalformedFraming,
    /// `gateway`: a protocol upgrade the route does not pass through (501).
    UpgradeUnsupported,
}

impl Rejection {
    /// Every variant, in declaration order (`ALL[r.index()] == r`).
    pub const ALL: [Rejection; 28] = [
        Self::UntrustedHost,
        Self::Location,
        Self::UnsupportedMediaType,
        Self::MalformedTarget,
        Self::HeadersTooLarge,
        Self::QueueFull,
        Self::QueueTimeout,
        Self::RateLimited,
        Self::RateLimitStoreUnavailable,
        Self::BodyTimeout,
        Self::Timeout,
        Self::BodyTooLarge,
        Self::MalformedLength,
        Self::CircuitOpen,
        Self::IdempotencyKeyMissing,
        Self::IdempotencyKeyInvalid,
        Self::IdempotencyInFlight,
        Self::IdempotencyMismatch,
        Self::IdempotencyResponseUnavailable,
        Self::IdempotencyBodyTooLarge,
        Self::IdempotencyStoreUnavailable,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::Panic,
        Self::UpstreamUnavailable,
        Self::UpstreamTimeout,
        Self::MalformedFraming,
        Self::UpgradeUnsupported,
    ];

    /// The position of this variant in [`ALL`](Self::ALL).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The layer that rejected (`rate_limit`, `body_limit`, …).
    pub const fn layer(self) -> &'static str {
        match self {
            Self::UntrustedHost => "trusted_host",
            Self::Location => "geoip",
            Self::UnsupportedMediaType | Self::MalformedTarget | Self::HeadersTooLarge => {
                "content_validation"
            }
            Self::QueueFull | Self::QueueTimeout => "load_shed",
            Self::RateLimited | Self::RateLimitStoreUnavailable => "rate_limit",
            Self::BodyTimeout | Self::Timeout => "timeout",
            Self::BodyTooLarge | Self::MalformedLength => "body_limit",
            Self::CircuitOpen => "circuit_breaker",
            Self::IdempotencyKeyMissing
            | Self::IdempotencyKeyInvalid
            | Self::IdempotencyInFlight
            | Self::IdempotencyMismatch
            | Self::IdempotencyResponseUnavailable
            | Self::IdempotencyBodyTooLarge
            | Self::IdempotencyStoreUnavailable => "idempotency",
            Self::Unauthenticated | Self::Forbidden => "auth",
            Self::Panic => "catch_panic",
            Self::UpstreamUnavailable
            | Self::UpstreamTimeout
            | Self::MalformedFraming
            | Self::UpgradeUnsupported => "gateway",
        }
    }

    /// Why, within the layer (`quota_exceeded`, `too_large`, …).
    pub const fn reason(self) -> &'static str {
        match self {
            Self::UntrustedHost => "untrusted_host",
            Self::Location => "location",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::MalformedTarget => "malformed_target",
            Self::HeadersTooLarge => "headers_too_large",
            Self::QueueFull => "queue_full",
            Self::QueueTimeout => "queue_timeout",
            Self::RateLimited => "quota_exceeded",
            Self::RateLimitStoreUnavailable | Self::IdempotencyStoreUnavailable => {
                "store_unavailable"
            }
            Self::BodyTimeout => "body_idle",
            Self::Timeout => "deadline",
            Self::BodyTooLarge | Self::IdempotencyBodyTooLarge => "too_large",
            Self::MalformedLength => "malformed_length",
            Self::CircuitOpen => "open",
            Self::IdempotencyKeyMissing => "key_missing",
            Self::IdempotencyKeyInvalid => "key_invalid",
            Self::IdempotencyInFlight => "in_flight",
            Self::IdempotencyMismatch => "payload_mismatch",
            Self::IdempotencyResponseUnavailable => "response_unavailable",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::Panic => "panic",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::MalformedFraming => "malformed_framing",
            Self::UpgradeUnsupported => "upgrade_unsupported",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_variant_at_its_own_index() {
        for (i, r) in Rejection::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
    }

    #[test]
    fn layer_and_reason_pairs_are_unique_label_values() {
        let mut seen = std::collections::HashSet::new();
        for r in Rejection::ALL {
            assert!(seen.insert((r.layer(), r.reason())), "{r:?} repeats a pair");
            for s in [r.layer(), r.reason()] {
                assert!(
                    s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                    "{s}"
                );
            }
        }
    }
}
