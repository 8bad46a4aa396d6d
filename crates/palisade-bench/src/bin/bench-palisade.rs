//! palisade-server with its full default stack (configured by `PALISADE_*` variables through
//! the real loader), serving the same route as `bench-bare`.

// The whole stack is one nested service type; proving its future `Send`/`Unpin` takes more
// than the default 128 steps of trait resolution.
#![recursion_limit = "256"]

use std::process::ExitCode;

use axum::routing::get;
use palisade_bench::{BENCH_PATH, bench_handler};
use palisade_server::{config, routes::AppRoutes, startup::Application, telemetry};

fn main() -> ExitCode {
    let loaded = match config::load(&config::LoadOptions::from_process(None)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bench-palisade: {e}");
            return ExitCode::from(2);
        }
    };
    let _guard = telemetry::init(&loaded.settings).expect("telemetry");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let routes = AppRoutes::new().route(BENCH_PATH, get(bench_handler));
        let app = Application::build_with_routes(&loaded.settings, routes)
            .await
            .expect("build");
        app.run_until_stopped().await;
    });
    ExitCode::SUCCESS
}
