//! HTTP routes: health endpoints, the metrics endpoint and the fallback for unknown paths,
//! around the application's own routes.

mod health;

use axum::{Router, routing::MethodRouter, routing::get};
use palisade::{health::Health, metrics::Metrics};

use crate::error::ApiError;

/// The application's routes together with their path templates, so that metrics can label
/// every request by its route, including requests refused before the router ran (429, 413,
/// 503 …). A plain [`Router`] converts too; its templates are then learnt from the requests
/// the router matches (refusals before routing count as `unmatched` until then).
#[derive(Debug, Default)]
#[must_use]
pub struct AppRoutes {
    router: Router,
    templates: Vec<String>,
}

impl AppRoutes {
    /// No routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route, as [`Router::route`] does, and remembers its template.
    pub fn route(mut self, path: &str, method_router: MethodRouter) -> Self {
        self.router = self.router.route(path, method_router);
        self.templates.push(path.to_owned());
        self
    }

    /// The declared templates.
    pub fn templates(&self) -> &[String] {
        &self.templates
    }
}

impl From<Router> for AppRoutes {
    fn from(router: Router) -> Self {
        Self {
            router,
            templates: Vec::new(),
        }
    }
}

/// Paths the server's own routes take.
pub fn reserved_paths() -> [&'static str; 2] {
    palisade::health::HEALTH_PATHS
}

/// Every template the final router serves: the application's, the health routes' and, when
/// served here, the metrics path.
pub fn templates(routes: &AppRoutes, metrics_path: Option<&str>) -> Vec<String> {
    let mut all = routes.templates.clone();
    all.extend(reserved_paths().iter().map(|p| (*p).to_owned()));
    all.extend(metrics_path.map(str::to_owned));
    all
}

/// Health routes, the metrics endpoint (`Some((path, registry))` when served on the main
/// listener) and the 404 fallback, around the application's own `routes`.
pub fn router(routes: AppRoutes, health: Health, metrics: Option<(&str, Metrics)>) -> Router {
    let health_routes = Router::new()
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .with_state(health);
    let mut router = routes.router.merge(health_routes);
    if let Some((path, metrics)) = metrics {
        router = router.route(path, metrics_endpoint(metrics));
    }
    router
        .route_layer(crate::middleware::RecordRouteLayer)
        .fallback(not_found)
}

/// `GET` of the exposition (behind the token when one is configured).
pub fn metrics_endpoint(metrics: Metrics) -> MethodRouter {
    get(move |headers: http::HeaderMap| {
        let metrics = metrics.clone();
        async move { metrics.scrape(&headers) }
    })
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}
