//! Integration tests for the palisade layers, driven through `tower::ServiceBuilder`.

#[cfg(feature = "auth")]
mod auth;
mod body_limit;
mod circuit_breaker;
#[cfg(feature = "geoip")]
mod geoip;
mod helpers;
mod idempotency;
#[cfg(feature = "otel")]
mod otel;
mod rate_limit;
mod stack;
