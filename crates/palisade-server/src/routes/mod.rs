//! HTTP routes: health endpoints and the fallback for unknown paths.

mod health;

use axum::{Router, routing::get};
use palisade::health::Health;

use crate::error::ApiError;

/// Health routes plus the 404 fallback, around the application's own `routes`.
pub fn router(routes: Router, health: Health) -> Router {
    let health_routes = Router::new()
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .with_state(health);
    routes
        .merge(health_routes)
        .route_layer(crate::middleware::RecordRouteLayer)
        .fallback(not_found)
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}
