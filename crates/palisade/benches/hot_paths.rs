//! Micro-benchmarks of the per-request hot paths. `cargo bench -p palisade`.

#![allow(missing_docs)]

use std::{convert::Infallible, hint::black_box, net::SocketAddr};

use axum_core::body::Body;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use palisade::{
    client_ip::{ClientIpConfig, ConnectionInfo, ForwardedHeader, TrustedProxies},
    context::{RequestContextConfig, RequestContextLayer},
    problem::Problem,
    request_id::RequestId,
    security_headers::{SecurityHeadersConfig, SecurityHeadersLayer},
};
use tower::{Layer, Service, ServiceExt};

fn request_id(c: &mut Criterion) {
    let valid = HeaderValue::from_static("0191e3c4-5b6a-7c8d-9e0f-a1b2c3d4e5f6");
    c.bench_function("request_id/parse_valid_header", |b| {
        b.iter(|| RequestId::from_header(black_box(&valid)))
    });
    c.bench_function("request_id/generate_uuid_v7", |b| {
        b.iter(RequestId::generate)
    });
}

fn client_ip(c: &mut Criterion) {
    let proxies = TrustedProxies::new(&ClientIpConfig {
        trusted_proxies: vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.168.0.0/16".parse().unwrap(),
        ],
        header: ForwardedHeader::XForwardedFor,
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-forwarded-for",
        HeaderValue::from_static("6.6.6.6, 203.0.113.7, 10.1.1.1"),
    );
    let untrusted = "198.51.100.1".parse().unwrap();
    let trusted = "10.0.0.2".parse().unwrap();
    c.bench_function("client_ip/untrusted_peer", |b| {
        b.iter(|| proxies.resolve(black_box(untrusted), false, black_box(&headers)))
    });
    c.bench_function("client_ip/trusted_peer_xff_3_hops", |b| {
        b.iter(|| proxies.resolve(black_box(trusted), false, black_box(&headers)))
    });
}

fn problem(c: &mut Criterion) {
    c.bench_function("problem/render_429_with_extension", |b| {
        b.iter(|| {
            Problem::new(StatusCode::TOO_MANY_REQUESTS)
                .with_detail("60 requests per minute")
                .with_request_id("0191e3c4-5b6a-7c8d-9e0f-a1b2c3d4e5f6")
                .into_response()
        })
    });
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn request() -> Request<Body> {
    let mut req = Request::get("/bench").body(Body::empty()).unwrap();
    req.extensions_mut().insert(ConnectionInfo {
        peer: "192.0.2.1:5000".parse::<SocketAddr>().unwrap(),
        tls: false,
    });
    req
}

async fn ok(_req: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::empty()))
}

fn layers(c: &mut Criterion) {
    let rt = rt();
    let bare = tower::service_fn(ok);
    c.bench_function("layer/none_baseline", |b| {
        b.iter(|| rt.block_on(bare.oneshot(request())).unwrap())
    });
    let headers = SecurityHeadersLayer::new(&SecurityHeadersConfig::default())
        .unwrap()
        .layer(tower::service_fn(ok));
    c.bench_function("layer/security_headers", |b| {
        b.iter(|| rt.block_on(headers.clone().oneshot(request())).unwrap())
    });
    let mut context =
        RequestContextLayer::new(&RequestContextConfig::default()).layer(tower::service_fn(ok));
    c.bench_function("layer/request_context", |b| {
        b.iter(|| rt.block_on(context.call(request())).unwrap())
    });
}

criterion_group!(benches, request_id, client_ip, problem, layers);
criterion_main!(benches);
