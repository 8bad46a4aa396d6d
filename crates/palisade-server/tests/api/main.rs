//! Integration tests: the real server (real config loader, port 0) over real HTTP.

// The whole stack is one nested service type; proving its future `Send`/`Unpin` takes more
// than the default 128 steps of trait resolution.
#![recursion_limit = "256"]

mod auth;
mod body_limit;
mod config;
mod context;
mod database;
mod errors;
mod gateway;
mod guards;
mod health;
mod helpers;
mod idempotency;
mod jobs;
mod metrics;
#[cfg(feature = "otel")]
mod otel;
mod rate_limit;
mod resources;
mod security;
mod shutdown;
mod upstream;
