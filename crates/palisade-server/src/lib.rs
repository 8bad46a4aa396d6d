//! # palisade-server
//!
//! The ready-to-run API server built on the [`palisade`] layers: layered configuration,
//! logging with the request id on every line, problem+json errors, health endpoints, the
//! ordered middleware stack and graceful shutdown.
//!
//! ```no_run
//! use palisade_server::{config, startup::Application};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let loaded = config::load(&config::LoadOptions::from_process(None))?;
//! let app = Application::build_with_routes(
//!     &loaded.settings,
//!     axum::Router::new().route("/hello", axum::routing::get(|| async { "hi" })),
//! )
//! .await?;
//! app.run_until_stopped().await;
//! # Ok(()) }
//! ```

// The whole stack is one nested service type; proving its future `Send`/`Unpin` takes more
// than the default 128 steps of trait resolution.
#![recursion_limit = "256"]

/// The allocator of every binary that links this crate (feature `mimalloc`, on by default):
/// a request makes a few dozen small allocations, each cheaper with mimalloc's per-thread
/// free lists than with glibc's malloc (measured in `docs/performance.md`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod config;
pub mod db;
pub mod error;
pub mod jobs;
pub mod jwks;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod resources;
pub mod routes;
mod serve;
pub mod startup;
pub mod telemetry;
pub mod tokens;
