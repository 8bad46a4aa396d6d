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
    /// 500: anything unexpected. Logged with the request id; the client sees a generic text.
    #[error("internal error: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
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
