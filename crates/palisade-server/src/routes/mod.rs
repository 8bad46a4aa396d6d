//! HTTP routes: health endpoints, the metrics endpoint and the fallback for unknown paths,
//! around the application's own routes.

mod health;

use axum::{Router, response::IntoResponse, routing::MethodRouter, routing::get};
use palisade::{
    health::Health,
    metrics::Metrics,
    proxy::{Gateway, UpstreamConfig},
};

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

/// Every template the final router serves, with its metric label: the application's, the
/// health routes' and, when served here, the metrics path (each its own label), then the
/// gateway's prefixes (`/orders` and `/orders/{*path}`, both labelled `/orders/{*path}`).
pub fn templates(
    routes: &AppRoutes,
    metrics_path: Option<&str>,
    upstreams: &[UpstreamConfig],
) -> Vec<(String, String)> {
    let own = routes
        .templates
        .iter()
        .cloned()
        .chain(reserved_paths().into_iter().map(str::to_owned))
        .chain(metrics_path.map(str::to_owned))
        .map(|t| (t.clone(), t));
    let proxied = upstreams.iter().flat_map(|u| {
        let label = u.route_label();
        u.route_templates().map(|t| (t, label.clone()))
    });
    own.chain(proxied).collect()
}

/// Health routes, the metrics endpoint (`Some((path, registry))` when served on the main
/// listener) and the fallback (the gateway for the paths it proxies, else 404), around the
/// application's own `routes`.
pub fn router(
    routes: AppRoutes,
    health: Health,
    metrics: Option<(&str, Metrics)>,
    gateway: Option<Gateway>,
) -> Router {
    let health_routes = Router::new()
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .with_state(health);
    let mut router = routes.router.merge(health_routes);
    if let Some((path, metrics)) = metrics {
        router = router.route(path, metrics_endpoint(metrics));
    }
    let router = router.route_layer(crate::middleware::RecordRouteLayer);
    match gateway {
        // Routes of the application win; what they leave goes upstream when a prefix takes
        // it, else the same 404 as without a gateway.
        Some(gateway) => {
            router.fallback_service(gateway.with_not_found(|| ApiError::NotFound.into_response()))
        }
        None => router.fallback(not_found),
    }
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
