//! The whole middleware stack in process (no sockets): bare router vs `apply_middleware`,
//! to attribute user-space cost without kernel noise. `cargo bench -p palisade-server`.

// The stack's nested types need more trait-resolution steps than the default 128.
#![recursion_limit = "256"]
#![allow(missing_docs)]

use std::net::SocketAddr;

use axum::{Json, Router, routing::get};
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use palisade::{client_ip::ConnectionInfo, exempt::ExemptPaths};
use palisade_server::{
    config::{LoadOptions, load},
    middleware::apply_middleware,
};
use tower::ServiceExt;

fn router() -> Router {
    Router::new().route(
        "/bench",
        get(|| async { Json(serde_json::json!({"message": "hello", "id": 42})) }),
    )
}

fn request<B: Default>() -> Request<B> {
    let mut req = Request::get("/bench").body(B::default()).unwrap();
    req.extensions_mut().insert(ConnectionInfo {
        peer: "192.0.2.1:5000".parse::<SocketAddr>().unwrap(),
        tls: false,
    });
    req
}

fn settings(env: &[(&str, &str)]) -> palisade_server::config::Settings {
    let opts = LoadOptions {
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        dir: std::env::temp_dir().join("palisade-bench-none"),
        ..LoadOptions::default()
    };
    load(&opts).unwrap().settings
}

fn stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bare = router();
    c.bench_function("stack/bare_router", |b| {
        b.iter(|| {
            rt.block_on(bare.clone().oneshot(request::<axum::body::Body>()))
                .unwrap()
        })
    });
    for (name, env) in [
        (
            "stack/minimal",
            &[
                ("PALISADE_LOG__ACCESS_LOG", "false"),
                ("PALISADE_SECURITY_HEADERS__ENABLED", "false"),
            ][..],
        ),
        ("stack/full_without_log_subscriber", &[][..]),
    ] {
        let svc = apply_middleware(
            router(),
            &settings(env),
            &ExemptPaths::health(),
            None,
            None,
            None,
        )
        .unwrap();
        c.bench_function(name, |b| {
            b.iter(|| {
                let res = rt.block_on(svc.clone().oneshot(request::<axum::body::Body>()));
                res.unwrap()
            })
        });
    }
}

/// The full stack with the server's real telemetry (JSON logs to /dev/null through the batch
/// writer, access log straight into the batch): the access log's in-process cost.
fn stack_with_json_log(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let logged = settings(&[
        ("PALISADE_LOG__FORMAT", "json"),
        ("PALISADE_LOG__OUTPUT", "/dev/null"),
    ]);
    let _guard = palisade_server::telemetry::init(&logged).unwrap();
    let svc =
        apply_middleware(router(), &logged, &ExemptPaths::health(), None, None, None).unwrap();
    c.bench_function("stack/full_with_json_access_log", |b| {
        b.iter(|| {
            rt.block_on(svc.clone().oneshot(request::<axum::body::Body>()))
                .unwrap()
        })
    });
}

criterion_group!(benches, stack, stack_with_json_log);
criterion_main!(benches);
