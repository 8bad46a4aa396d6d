//! The route both benchmark servers serve: a small JSON GET, as in most API traffic.

use axum::Json;
use serde::Serialize;

/// The path of the benchmark route.
pub const BENCH_PATH: &str = "/bench";

/// The response body.
#[derive(Debug, Serialize)]
pub struct Greeting {
    message: &'static str,
    id: u32,
}

/// `GET /bench`: `{"message":"hello","id":42}`.
pub async fn bench_handler() -> Json<Greeting> {
    Json(Greeting {
        message: "hello",
        id: 42,
    })
}
