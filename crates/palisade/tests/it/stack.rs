//! The layers composed as a server would compose them.

use std::convert::Infallible;

use axum_core::body::Body;
use http::{Request, Response, StatusCode};
use palisade::{
    catch_panic::CatchPanicLayer,
    client_ip::ClientIpConfig,
    context::{self, RequestContextConfig, RequestContextLayer},
    exempt::ExemptPaths,
    problem_fallback::ProblemFallbackLayer,
    security_headers::{SecurityHeadersConfig, SecurityHeadersLayer},
    trusted_host::TrustedHostLayer,
};
use tower::{ServiceBuilder, ServiceExt};

use crate::helpers::{body_json, request};

async fn echo_context(_req: Request<Body>) -> Result<Response<Body>, Infallible> {
    let ctx = context::current().expect("context is current inside the stack");
    let body = serde_json::json!({
        "request_id": ctx.request_id().as_str(),
        "client_ip": ctx.client_ip().map(|i| i.to_string()),
        "https": ctx.is_https(),
    });
    Ok(Response::new(Body::from(body.to_string())))
}

fn context_layer(trusted: &[&str]) -> RequestContextLayer {
    RequestContextLayer::new(&RequestContextConfig {
        trust_incoming_request_id: true,
        client_ip: ClientIpConfig {
            trusted_proxies: trusted.iter().map(|c| c.parse().unwrap()).collect(),
            ..Default::default()
        },
    })
}

#[tokio::test]
async fn the_context_is_current_in_the_handler_and_ids_are_on_the_response() {
    let svc = ServiceBuilder::new()
        .layer(context_layer(&[]))
        .service_fn(echo_context);
    let res = svc
        .oneshot(request("/", "192.0.2.1:5000", &[("x-request-id", "abc")]))
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc");
    assert_eq!(res.headers()["x-correlation-id"], "abc");
    let v = body_json(res).await;
    assert_eq!(v["request_id"], "abc");
    assert_eq!(v["client_ip"], "192.0.2.1");
}

#[tokio::test]
async fn a_synchronous_rejection_deep_in_the_stack_carries_the_request_id() {
    let svc = ServiceBuilder::new()
        .layer(context_layer(&[]))
        .layer(TrustedHostLayer::new(["good.example"], ExemptPaths::health()).unwrap())
        .service_fn(echo_context);
    let res = svc
        .oneshot(request(
            "/x",
            "192.0.2.1:5000",
            &[("x-request-id", "rej-1"), ("host", "bad.example")],
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let v = body_json(res).await;
    assert_eq!(v["request_id"], "rej-1");
    assert_eq!(v["title"], "Host not allowed");
}

#[tokio::test]
async fn trusted_host_lets_exempt_paths_through_with_any_host() {
    let svc = ServiceBuilder::new()
        .layer(TrustedHostLayer::new(["good.example"], ExemptPaths::health()).unwrap())
        .service_fn(echo_ok);
    let res = svc
        .oneshot(request(
            "/readyz",
            "192.0.2.1:5000",
            &[("host", "10.0.0.7:8080")],
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

async fn echo_ok(_req: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::from("ok")))
}

#[tokio::test]
async fn bare_errors_become_problems_but_handler_json_and_successes_pass() {
    let svc = ServiceBuilder::new()
        .layer(context_layer(&[]))
        .layer(ProblemFallbackLayer::new())
        .service_fn(|req: Request<Body>| async move {
            let mut res = Response::new(Body::from("internal detail: stack trace"));
            match req.uri().path() {
                "/bare" => {
                    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    res.headers_mut()
                        .insert("retry-after", "3".parse().unwrap());
                    res.headers_mut()
                        .insert("content-type", "text/plain; charset=utf-8".parse().unwrap());
                }
                "/json" => {
                    *res.status_mut() = StatusCode::CONFLICT;
                    res.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                }
                _ => {}
            }
            Ok::<_, Infallible>(res)
        });
    let res = svc
        .clone()
        .oneshot(request("/bare", "192.0.2.1:1", &[("x-request-id", "fb")]))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "3");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let v = body_json(res).await;
    assert_eq!(v["request_id"], "fb");
    assert!(!v.to_string().contains("stack trace"));
    let res = svc
        .clone()
        .oneshot(request("/json", "192.0.2.1:1", &[]))
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "application/json");
    let res = svc
        .oneshot(request("/ok", "192.0.2.1:1", &[]))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn a_panic_in_call_or_in_the_future_is_a_500_problem() {
    let svc = ServiceBuilder::new()
        .layer(context_layer(&[]))
        .layer(CatchPanicLayer::new())
        .service_fn(|req: Request<Body>| async move {
            if req.uri().path() == "/boom" {
                panic!("boom with secret");
            }
            Ok::<_, Infallible>(Response::new(Body::empty()))
        });
    let res = svc
        .oneshot(request("/boom", "192.0.2.1:1", &[("x-request-id", "p1")]))
        .await
        .unwrap();
    assert_eq!(res.status(), 500);
    let v = body_json(res).await;
    assert_eq!(v["request_id"], "p1");
    assert!(!v.to_string().contains("secret"));
}

#[tokio::test]
async fn security_headers_keep_handler_values_and_add_hsts_only_for_https_via_trusted_proxy() {
    let config = SecurityHeadersConfig {
        hsts: true,
        ..Default::default()
    };
    let svc = ServiceBuilder::new()
        .layer(context_layer(&["10.0.0.0/8"]))
        .layer(SecurityHeadersLayer::new(&config).unwrap())
        .service_fn(|_req: Request<Body>| async {
            let mut res = Response::new(Body::empty());
            res.headers_mut()
                .insert("x-frame-options", "SAMEORIGIN".parse().unwrap());
            res.headers_mut()
                .insert("server", "upstream/1.2.3".parse().unwrap());
            res.headers_mut()
                .insert("x-powered-by", "Express".parse().unwrap());
            // An upstream's own HSTS: replaced by ours over HTTPS, dropped over plain HTTP.
            res.headers_mut()
                .insert("strict-transport-security", "max-age=1".parse().unwrap());
            Ok::<_, Infallible>(res)
        });
    let https = [("x-forwarded-proto", "https")];
    let res = svc
        .clone()
        .oneshot(request("/", "10.0.0.1:1", &https))
        .await
        .unwrap();
    assert_eq!(res.headers()["x-frame-options"], "SAMEORIGIN");
    assert!(res.headers().get("server").is_none());
    assert!(res.headers().get("x-powered-by").is_none());
    let hsts: Vec<_> = res
        .headers()
        .get_all("strict-transport-security")
        .iter()
        .collect();
    assert_eq!(hsts.len(), 1);
    assert_ne!(hsts[0], "max-age=1", "ours replaces the handler's");
    let res = svc
        .oneshot(request("/", "192.0.2.1:1", &https))
        .await
        .unwrap();
    assert!(
        !res.headers().contains_key("strict-transport-security"),
        "untrusted peer claimed https"
    );
    assert!(res.headers().get("server").is_none());
    assert!(res.headers().get("x-powered-by").is_none());
}

#[tokio::test]
async fn disabled_security_headers_pass_responses_through() {
    let config = SecurityHeadersConfig {
        enabled: false,
        ..Default::default()
    };
    let svc = ServiceBuilder::new()
        .layer(SecurityHeadersLayer::new(&config).unwrap())
        .service_fn(echo_ok);
    let res = svc.oneshot(request("/", "192.0.2.1:1", &[])).await.unwrap();
    assert!(!res.headers().contains_key("x-content-type-options"));
}
