//! Integration tests for the palisade layers, driven through `tower::ServiceBuilder`.

mod body_limit;
#[cfg(feature = "geoip")]
mod geoip;
mod helpers;
mod idempotency;
mod rate_limit;
mod stack;
