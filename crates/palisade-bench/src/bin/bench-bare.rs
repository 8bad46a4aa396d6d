//! Bare axum: the same route, `axum::serve`, no middleware. The baseline of every ratio.

use axum::{Router, routing::get};
use palisade_bench::{BENCH_PATH, bench_handler};

#[tokio::main]
async fn main() {
    let port: u16 = std::env::var("BENCH_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8081);
    let app = Router::new().route(BENCH_PATH, get(bench_handler));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .expect("serve");
}
