//! OpenAPI 3.1 for the API server, generated from the handlers' annotations (utoipa), at
//! `/openapi.json`, and a browsable UI at `/docs` (Swagger UI, vendored in
//! `assets/swagger-ui/` and embedded in the binary). On in development, off in production
//! unless `openapi.enabled = true`.

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use utoipa::{
    OpenApi, ToSchema,
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::{config::Settings, error::FieldError, resources, routes::AppRoutes};

/// The document's paths and schemas; security schemes are added from the config.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Palisade API",
        description = "The example resources of the Palisade API server. Every error is an \
                       RFC 9457 problem (`application/problem+json`) carrying the request id."
    ),
    paths(
        resources::items::list,
        resources::items::create,
        resources::items::read,
        resources::items::update,
        resources::items::delete,
        resources::orders::create,
        resources::orders::read,
    ),
    components(schemas(Problem, FieldError)),
    tags(
        (name = "items", description = "Reads are public; writes need `items:write`."),
        (name = "orders", description = "Orders need an `Idempotency-Key`; `orders:write` to create, `orders:read` to read one's own."),
    )
)]
struct ApiDoc;

/// An RFC 9457 problem, as every error response carries it (for the document only).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Problem {
    /// A URI naming the problem type (`about:blank` when the status says it all).
    r#type: String,
    /// A short summary of the problem type.
    title: String,
    /// The HTTP status.
    status: u16,
    /// What went wrong this time, safe to show.
    detail: String,
    /// `urn:request:<request id>`.
    instance: String,
    /// The request id (also the `X-Request-ID` response header).
    request_id: String,
    /// `422`: each invalid field.
    errors: Option<Vec<FieldError>>,
    /// `403`: the scopes the operation needs.
    required_scopes: Option<Vec<String>>,
}

/// The OpenAPI document for `settings` (the API-key header name comes from `[auth]`).
pub fn document(settings: &Settings) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .build(),
        ),
    );
    components.add_security_scheme(
        "api_key",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(
            settings.auth.api_keys.header.clone(),
        ))),
    );
    doc
}

const INDEX: &str = include_str!("../assets/swagger-ui/index.html");
const INIT: &str = include_str!("../assets/swagger-ui/init.js");
const CSS: &str = include_str!("../assets/swagger-ui/swagger-ui.css");
const BUNDLE: &str = include_str!("../assets/swagger-ui/swagger-ui-bundle.js");

/// The page's policy: its own scripts and styles only (Swagger UI sets inline styles).
const DOCS_CSP: HeaderValue = HeaderValue::from_static(
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
);

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
            (header::CONTENT_SECURITY_POLICY, DOCS_CSP),
        ],
        body,
    )
        .into_response()
}

/// `/openapi.json` and `/docs` (with its assets), added to `routes`.
pub fn routes(routes: AppRoutes, settings: &Settings) -> AppRoutes {
    let json = Bytes::from(
        document(settings)
            .to_pretty_json()
            .expect("the document serialises"),
    );
    routes
        .route(
            "/openapi.json",
            get(move || {
                let json = json.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        )],
                        json,
                    )
                }
            }),
        )
        .route(
            "/docs",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/docs/init.js",
            get(|| async { asset("text/javascript", INIT) }),
        )
        .route(
            "/docs/swagger-ui.css",
            get(|| async { asset("text/css", CSS) }),
        )
        .route(
            "/docs/swagger-ui-bundle.js",
            get(|| async { asset("text/javascript", BUNDLE) }),
        )
}
