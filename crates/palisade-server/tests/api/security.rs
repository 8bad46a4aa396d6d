//! Security headers, HSTS, trusted hosts and CORS.

use crate::helpers::{raw_request, spawn_app, spawn_app_with};

#[tokio::test]
async fn responses_carry_the_owasp_headers_and_no_server_header() {
    let app = spawn_app().await;
    for path in ["/whoami", "/no-such-route"] {
        let res = app.get(path).await;
        let h = res.headers();
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert!(
            h["permissions-policy"]
                .to_str()
                .unwrap()
                .contains("camera=()")
        );
        assert_eq!(h["cross-origin-opener-policy"], "same-origin");
        assert_eq!(h["cross-origin-resource-policy"], "same-origin");
        assert!(h.get("x-xss-protection").is_none());
        assert!(h.get("server").is_none());
        assert!(
            h.get("strict-transport-security").is_none(),
            "plain HTTP gets no HSTS"
        );
        assert!(h.get("content-security-policy").is_none());
    }
}

#[tokio::test]
async fn hsts_is_sent_only_when_a_trusted_proxy_reports_https() {
    let app = spawn_app_with(&[
        ("PALISADE_SECURITY_HEADERS__HSTS", "true"),
        ("PALISADE_CLIENT_IP__TRUSTED_PROXIES", "127.0.0.1/32"),
    ])
    .await;
    let res = app
        .client
        .get(app.url("/whoami"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    let res = app.get("/whoami").await;
    assert!(res.headers().get("strict-transport-security").is_none());

    let untrusted = spawn_app_with(&[
        ("PALISADE_SECURITY_HEADERS__HSTS", "true"),
        ("PALISADE_CLIENT_IP__TRUSTED_PROXIES", "10.0.0.0/8"),
    ])
    .await;
    let res = untrusted
        .client
        .get(untrusted.url("/whoami"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("strict-transport-security").is_none());
}

#[tokio::test]
async fn a_content_security_policy_is_sent_when_configured() {
    let app = spawn_app_with(&[(
        "PALISADE_SECURITY_HEADERS__CONTENT_SECURITY_POLICY",
        "default-src 'none'",
    )])
    .await;
    assert_eq!(
        app.get("/whoami").await.headers()["content-security-policy"],
        "default-src 'none'"
    );
}

#[tokio::test]
async fn a_host_outside_the_allowlist_is_a_400_problem_but_probes_pass() {
    let app = spawn_app_with(&[(
        "PALISADE_TRUSTED_HOSTS__ALLOWED_HOSTS",
        "api.example.com,*.example.org",
    )])
    .await;
    let ok = raw_request(
        app.port,
        "GET /whoami HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let ok = raw_request(
        app.port,
        "GET /whoami HTTP/1.1\r\nHost: a.example.org:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let bad = raw_request(
        app.port,
        "GET /whoami HTTP/1.1\r\nHost: evil.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    assert!(bad.contains("application/problem+json"), "{bad}");
    assert!(bad.contains("\"request_id\""), "{bad}");
    assert!(bad.contains("x-content-type-options: nosniff"), "{bad}");
    // Kubelet probes address the pod IP.
    let probe = raw_request(
        app.port,
        "GET /livez HTTP/1.1\r\nHost: 10.1.2.3:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(probe.starts_with("HTTP/1.1 200"), "{probe}");
}

#[tokio::test]
async fn cors_preflight_and_simple_requests_follow_the_config() {
    let app = spawn_app_with(&[("PALISADE_CORS__ALLOW_ORIGINS", "https://app.example.com")]).await;
    let res = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/whoami"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(
        res.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    let res = app
        .client
        .get(app.url("/no-such"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(
        res.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-request-id")
    );
    let res = app
        .client
        .get(app.url("/whoami"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
}
