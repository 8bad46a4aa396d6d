//! Body limits over a real HTTP/1.1 server (hyper): the bytes that arrive count, whatever
//! the handler does with them.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{Router, routing};
use axum_core::body::Body;
use bytes::Bytes;
use http::{Request, StatusCode};
use palisade::{
    body_limit::{BodyLimitConfig, BodyLimitLayer, BodyLimitRouteConfig},
    context::{RequestContextConfig, RequestContextLayer},
};
use tower::{ServiceBuilder, ServiceExt, util::BoxCloneSyncService};

use crate::helpers::{body_json, exchange, serve};

const LIMIT: u64 = 1024;

/// Handlers: one that never reads the body, one that reads it and swallows any error, one
/// that reads it properly; `runs` counts handler calls.
fn app(
    runs: Arc<AtomicUsize>,
) -> BoxCloneSyncService<Request<Body>, http::Response<Body>, Infallible> {
    let count = move || runs.fetch_add(1, Ordering::SeqCst);
    let (c1, c2, c3) = (count.clone(), count.clone(), count);
    let router = Router::new()
        .route(
            "/ignore",
            routing::post(move || async move {
                c1();
                "ignored"
            }),
        )
        .route(
            "/swallow",
            routing::post(move |body: Body| async move {
                c2();
                // Reads, gets an error, and answers 200 anyway.
                let n = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes().len())
                    .unwrap_or(0);
                format!("read {n}")
            }),
        )
        .route(
            "/read",
            routing::post(move |body: Bytes| async move {
                c3();
                format!("read {}", body.len())
            }),
        )
        .route(
            "/uploads/{name}",
            routing::post(|body: Bytes| async move { format!("read {}", body.len()) }),
        );
    let config = BodyLimitConfig {
        max_bytes: LIMIT,
        routes: vec![BodyLimitRouteConfig {
            path: "/uploads/*".into(),
            methods: Vec::new(),
            max_bytes: 4 * LIMIT,
        }],
    };
    let svc = ServiceBuilder::new()
        .layer(RequestContextLayer::new(&RequestContextConfig::default()))
        .layer(BodyLimitLayer::new(&config).unwrap())
        .service(router);
    BoxCloneSyncService::new(svc)
}

use http_body_util::BodyExt as _;

fn with_length(path: &str, n: usize) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {n}\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    raw.extend(std::iter::repeat_n(b'x', n));
    raw
}

fn chunked(path: &str, total: usize) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    raw.extend(palisade_testkit::chunked_body(total));
    raw
}

fn status(response: &str) -> u16 {
    response[9..12].parse().unwrap()
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_413_before_the_handler_and_closes() {
    let runs = Arc::new(AtomicUsize::new(0));
    let addr = serve(app(runs.clone())).await;
    let exact = exchange(addr, &with_length("/read", LIMIT as usize)).await;
    assert_eq!(status(&exact), 200, "{exact}");
    assert!(exact.ends_with(&format!("read {LIMIT}")));
    let over = exchange(addr, &with_length("/read", LIMIT as usize + 1)).await;
    assert_eq!(status(&over), 413, "{over}");
    assert!(over.contains("connection: close"), "{over}");
    assert!(over.contains("application/problem+json"), "{over}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // A route with its own limit.
    let upload = exchange(addr, &with_length("/uploads/a", 3 * LIMIT as usize)).await;
    assert_eq!(status(&upload), 200, "{upload}");
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413_whatever_the_handler_does() {
    let runs = Arc::new(AtomicUsize::new(0));
    let addr = serve(app(runs.clone())).await;
    // Never read by the handler: 2 MiB.
    let ignored = exchange(addr, &chunked("/ignore", 2 << 20)).await;
    assert_eq!(status(&ignored), 413, "{ignored}");
    assert!(ignored.contains("connection: close"));
    // Read, error swallowed, 200 attempted.
    let swallowed = exchange(addr, &chunked("/swallow", 4 * LIMIT as usize)).await;
    assert_eq!(status(&swallowed), 413, "{swallowed}");
    // Read properly (the extractor's own error is replaced too).
    let read = exchange(addr, &chunked("/read", LIMIT as usize + 1)).await;
    assert_eq!(status(&read), 413, "{read}");
    // Within the limit, chunked: fine, read or not.
    let ok = exchange(addr, &chunked("/read", LIMIT as usize)).await;
    assert_eq!(status(&ok), 200, "{ok}");
    assert!(ok.ends_with(&format!("read {LIMIT}")), "{ok}");
    let ok = exchange(addr, &chunked("/ignore", 10)).await;
    assert_eq!(status(&ok), 200, "{ok}");
    // The `Bytes` extractor's failure kept `/read` over the limit from running at all.
    assert_eq!(runs.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn malformed_or_conflicting_content_length_is_400() {
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = app(runs.clone());
    for values in [&["abc"][..], &["-1"], &["5", "6"], &["5, 6"], &[""]] {
        let mut b = Request::post("/read");
        for v in values {
            b = b.header("content-length", *v);
        }
        let res = svc
            .clone()
            .oneshot(b.body(Body::from("xxxxx")).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{values:?}");
        assert_eq!(res.headers()["connection"], "close");
        assert!(
            body_json(res).await["detail"]
                .as_str()
                .unwrap()
                .contains("Content-Length")
        );
    }
    // Agreeing duplicates are one length.
    let res = svc
        .clone()
        .oneshot(
            Request::post("/read")
                .header("content-length", "5")
                .header("content-length", "5")
                .body(Body::from("xxxxx"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn bad_rules_name_the_key() {
    let config = BodyLimitConfig {
        routes: vec![BodyLimitRouteConfig {
            path: "uploads".into(),
            methods: Vec::new(),
            max_bytes: 1,
        }],
        ..BodyLimitConfig::default()
    };
    assert_eq!(
        BodyLimitLayer::new(&config).unwrap_err().key,
        "routes[0].path"
    );
}
