//! Errors a handler returns, and the JSON extractor whose rejections are problems too.
//!
//! Which error type where:
//! - handlers return [`ApiError`]; each variant is one documented outcome and renders as an
//!   RFC 9457 problem; internal causes are logged with the request id, never sent;
//! - layers in the `palisade` crate reject with `palisade::problem::Problem` directly;
//! - startup and configuration fail with [`crate::startup::StartupError`].

use axum::{
    extract::{FromRequest, Request, rejection::JsonRejection},
    response::{IntoResponse, Response},
};
use http::StatusCode;
use palisade::problem::Problem;
use serde::de::DeserializeOwned;

/// An error answered to the client as a problem.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404: no such route or resource.
    #[error("not found")]
    NotFound,
    /// 400: the request is malformed; the text is shown to the client.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 415/400/422 from the JSON extractor, with axum's explanation.
    #[error(transparent)]
    Json(#[from] JsonRejection),
    /// 422: the body parsed but some fields are invalid; each is listed in `errors`.
    #[error("invalid fields: {0:?}")]
    Validation(Vec<FieldError>),
    /// 409: the request conflicts with the resource's state (a duplicate, a reference).
    #[error("conflict: {0}")]
    Conflict(String),
    /// 412: `If-Match` names another version.
    #[error("precondition failed")]
    PreconditionFailed,
    /// A response made elsewhere (the auth layer's 403 for a missing scope).
    #[error("refused")]
    Refused(Box<Response>),
    /// 503 (no connection in time) or 500: a database failure. Logged; never shown.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// 500: anything unexpected. Logged with the request id; the client sees a generic text.
    #[error("internal error: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One invalid field of a `422`: its JSON path and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The field (`name`, `price_cents`).
    #[schema(value_type = String)]
    pub field: &'static str,
    /// What is wrong, safe to show.
    pub message: String,
}

impl FieldError {
    /// `field` is invalid because `message`.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

impl From<Box<Response>> for ApiError {
    fn from(res: Box<Response>) -> Self {
        Self::Refused(res)
    }
}

impl ApiError {
    /// Turns a database error into a 409 when it is a constraint violation (`UNIQUE`, a
    /// foreign key), with `detail` as the explanation; else the error as it is.
    pub fn on_constraint(e: sqlx::Error, detail: &str) -> Self {
        match &e {
            sqlx::Error::Database(db)
                if db.is_unique_violation() || db.is_foreign_key_violation() =>
            {
                Self::Conflict(detail.to_owned())
            }
            _ => Self::Database(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::NotFound => Problem::new(StatusCode::NOT_FOUND)
                .with_detail("no resource at this path")
                .into_response(),
            Self::BadRequest(detail) => Problem::new(StatusCode::BAD_REQUEST)
                .with_detail(detail)
                .into_response(),
            Self::Json(rejection) => Problem::new(rejection.status())
                .with_detail(rejection.body_text())
                .into_response(),
            Self::Validation(errors) => {
                let detail = errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
                    .with_title("Invalid fields")
                    .with_detail(detail)
                    .with_extension("errors", serde_json::to_value(&errors).unwrap_or_default())
                    .into_response()
            }
            Self::Conflict(detail) => Problem::new(StatusCode::CONFLICT)
                .with_detail(detail)
                .into_response(),
            Self::PreconditionFailed => Problem::new(StatusCode::PRECONDITION_FAILED)
                .with_detail("the resource has changed: If-Match names another version")
                .into_response(),
            Self::Refused(res) => *res,
            Self::Database(sqlx::Error::PoolTimedOut) => {
                tracing::warn!("database: no connection available in time");
                let mut res = Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                    .with_detail("the database is busy or unreachable; try again shortly")
                    .into_response();
                res.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("1"),
                );
                res
            }
            Self::Database(e) => {
                tracing::error!(error = %e, "database error");
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR)
                    .with_detail("the server hit an unexpected error; quote the request id when reporting it")
                    .into_response()
            }
            Self::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR)
                    .with_detail("the server hit an unexpected error; quote the request id when reporting it")
                    .into_response()
            }
        }
    }
}

/// `axum::Json`, but a malformed body is a problem with axum's explanation as `detail`.
///
/// ```
/// use palisade_server::error::AppJson;
///
/// #[derive(serde::Deserialize)]
/// struct NewItem { name: String }
///
/// async fn create(AppJson(item): AppJson<NewItem>) -> String { item.name }
/// let _route: axum::routing::MethodRouter = axum::routing::post(create);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

impl<T: serde::Serialize> IntoResponse for AppJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}
