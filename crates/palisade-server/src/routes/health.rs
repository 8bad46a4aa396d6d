//! `GET /livez` and `GET /readyz`.

use axum::{extract::State, response::Response};
use palisade::health::Health;

/// Liveness: the process answers; no dependency is checked.
pub(super) async fn livez(State(health): State<Health>) -> Response {
    health.livez()
}

/// Readiness: every registered check, in parallel, each under its timeout.
pub(super) async fn readyz(State(health): State<Health>) -> Response {
    health.readyz().await
}
