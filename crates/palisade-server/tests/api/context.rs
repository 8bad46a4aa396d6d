//! Request ids, correlation ids, client IP and the request id on every log line.

use serde_json::Value;

use crate::helpers::{spawn_app, spawn_app_with, wait_for_log};

fn is_uuid_v7(s: &str) -> bool {
    s.len() == 36 && &s[14..15] == "7" && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

#[tokio::test]
async fn a_valid_incoming_request_id_is_kept_and_echoed() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/whoami"))
        .header("x-request-id", "client-id_1.2:3")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "client-id_1.2:3");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["request_id"], "client-id_1.2:3");
}

#[tokio::test]
async fn malformed_oversized_or_repeated_request_ids_are_replaced_by_a_uuid_v7() {
    let app = spawn_app().await;
    let long = "a".repeat(129);
    for bad in ["has space", "quote\"d", long.as_str(), "semi;colon"] {
        let res = app
            .client
            .get(app.url("/whoami"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(is_uuid_v7(&id), "{bad:?} -> {id}");
    }
    let res = app
        .client
        .get(app.url("/whoami"))
        .header("x-request-id", "one")
        .header("x-request-id", "two")
        .send()
        .await
        .unwrap();
    assert!(is_uuid_v7(res.headers()["x-request-id"].to_str().unwrap()));
    // 128 characters is still fine.
    let ok = "b".repeat(128);
    let res = app
        .client
        .get(app.url("/whoami"))
        .header("x-request-id", &ok)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], ok.as_str());
}

#[tokio::test]
async fn the_correlation_id_is_propagated_and_defaults_to_the_request_id() {
    let app = spawn_app().await;
    let res = app.get("/whoami").await;
    let rid = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(res.headers()["x-correlation-id"], rid.as_str());
    let res = app
        .client
        .get(app.url("/whoami"))
        .header("x-correlation-id", "flow-9")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-correlation-id"], "flow-9");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["correlation_id"], "flow-9");
}

#[tokio::test]
async fn every_log_line_of_a_request_carries_its_request_id_even_in_spawned_tasks() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/log"))
        .header("x-request-id", "log-test-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let handler =
        wait_for_log(|v| v["marker"] == "in-handler" && v["request_id"] == "log-test-1").await;
    assert_eq!(handler[0]["correlation_id"], "log-test-1");
    assert_eq!(handler[0]["client_ip"], "127.0.0.1");
    wait_for_log(|v| v["marker"] == "in-spawned-task" && v["request_id"] == "log-test-1").await;
}

#[tokio::test]
async fn one_access_log_line_has_route_template_status_sizes_and_client_ip() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/items/42?token=secret"))
        .header("x-request-id", "access-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.text().await.unwrap(), "item");
    let lines =
        wait_for_log(|v| v["target"] == "palisade::access" && v["request_id"] == "access-1").await;
    assert_eq!(lines.len(), 1, "exactly one access line");
    let l = &lines[0];
    assert_eq!(l["method"], "GET");
    assert_eq!(l["route"], "/items/{id}");
    assert_eq!(l["path"], "/items/42", "no query string in logs");
    assert_eq!(l["status"], 200);
    assert_eq!(l["response_bytes"], 4);
    assert_eq!(l["request_bytes"], 0);
    assert_eq!(l["client_ip"], "127.0.0.1");
    assert_eq!(l["completed"], true);
    assert!(l["duration_ms"].as_f64().unwrap() >= 0.0);
}

#[tokio::test]
async fn request_body_bytes_are_counted_in_the_access_log() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url("/echo"))
        .header("x-request-id", "access-body-1")
        .header("content-type", "application/json")
        .body(r#"{"a":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let lines =
        wait_for_log(|v| v["target"] == "palisade::access" && v["request_id"] == "access-body-1")
            .await;
    assert_eq!(lines[0]["request_bytes"], 7);
    assert_eq!(lines[0]["route"], "/echo");
}

#[tokio::test]
async fn credentials_in_headers_never_reach_the_logs() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/log"))
        .header("x-request-id", "secret-headers-1")
        .header("authorization", "Bearer tok-SHOULD-NOT-LEAK")
        .header("cookie", "session=COOKIE-SHOULD-NOT-LEAK")
        .header("x-api-key", "APIKEY-SHOULD-NOT-LEAK")
        .send()
        .await
        .unwrap();
    // Not a JWT: auth refuses it, and the refusal is logged without it.
    assert_eq!(res.status(), 401);
    wait_for_log(|v| v["target"] == "palisade::access" && v["request_id"] == "secret-headers-1")
        .await;
    let logs = crate::helpers::all_logs();
    assert!(!logs.contains("SHOULD-NOT-LEAK"), "a credential was logged");
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_resolves_the_client() {
    let app = spawn_app_with(&[(
        "PALISADE_CLIENT_IP__TRUSTED_PROXIES",
        "127.0.0.1/32, 10.0.0.0/8",
    )])
    .await;
    let res = app
        .client
        .get(app.url("/whoami"))
        .header("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.2.3")
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["client_ip"], "203.0.113.9");
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_changes_nothing() {
    let app = spawn_app_with(&[("PALISADE_CLIENT_IP__TRUSTED_PROXIES", "10.0.0.0/8")]).await;
    for spoof in ["6.6.6.6", "10.0.0.1", "1.1.1.1, 2.2.2.2"] {
        let res = app
            .client
            .get(app.url("/whoami"))
            .header("x-forwarded-for", spoof)
            .send()
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["client_ip"], "127.0.0.1", "spoofed with {spoof}");
    }
    let res = app
        .client
        .get(app.url("/whoami"))
        .header("forwarded", "for=6.6.6.6")
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["client_ip"], "127.0.0.1");
}

#[tokio::test]
async fn the_rfc_7239_forwarded_header_is_used_when_configured() {
    let app = spawn_app_with(&[
        ("PALISADE_CLIENT_IP__TRUSTED_PROXIES", "127.0.0.1/32"),
        ("PALISADE_CLIENT_IP__HEADER", "forwarded"),
    ])
    .await;
    let res = app
        .client
        .get(app.url("/whoami"))
        .header("forwarded", "for=198.51.100.4;proto=https")
        .header("x-forwarded-for", "6.6.6.6")
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["client_ip"], "198.51.100.4");
    assert_eq!(body["https"], true);
}

/// HTTP/2 with prior knowledge: concurrent streams on one connection each get the whole
/// stack (their own request id, security headers, a problem for an unknown path).
#[tokio::test]
async fn http2_streams_on_one_connection_each_get_the_stack() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let (a, b, c) = tokio::join!(
        client.get(app.url("/whoami")).send(),
        client.get(app.url("/whoami")).send(),
        client.get(app.url("/no-such-path")).send(),
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    for res in [&a, &b, &c] {
        assert_eq!(res.version(), reqwest::Version::HTTP_2);
        assert!(is_uuid_v7(res.headers()["x-request-id"].to_str().unwrap()));
        assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    }
    assert_eq!(a.status(), 200);
    assert_eq!(b.status(), 200);
    assert_ne!(a.headers()["x-request-id"], b.headers()["x-request-id"]);
    assert_eq!(c.status(), 404);
    assert_eq!(c.headers()["content-type"], "application/problem+json");
}
