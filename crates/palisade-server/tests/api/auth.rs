//! Auth in the running server: tokens from the development profile and from `palisade token
//! issue`, scopes per route, API keys, the subject in logs and rate-limit keys, bad input
//! → 401/403 (never 5xx), and the production profile's refusals.

use palisade_server::config::DEVELOPMENT_JWT_SECRET;
use palisade_testkit::jwt;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, spawn_app_with_toml, wait_for_log};

async fn app(extra: &str) -> TestApp {
    let toml = format!("[[auth.routes]]\npath = \"/me\"\nscopes = [\"profile\"]\n{extra}");
    spawn_app_with_toml(&toml, &[]).await
}

async fn get(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = app.client.get(app.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn bearer(sub: &str, scope: &str) -> String {
    format!(
        "Bearer {}",
        jwt::hs256(DEVELOPMENT_JWT_SECRET, &jwt::claims(sub, scope))
    )
}

#[tokio::test]
async fn a_development_token_reaches_a_scoped_route_and_its_subject_reaches_the_logs() {
    let app = app("").await;
    let res = get(
        &app,
        "/me",
        &[
            ("authorization", &bearer("alice", "profile items:read")),
            ("x-request-id", "auth-log-1"),
        ],
    )
    .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["subject"], "alice");
    assert_eq!(body["scopes"], json!(["profile", "items:read"]));
    assert_eq!(body["context_subject"], "alice");
    let line =
        wait_for_log(|v| v["target"] == "palisade::access" && v["request_id"] == "auth-log-1")
            .await;
    assert_eq!(line[0]["subject"], "alice");
    // The token itself is never logged.
    assert!(!crate::helpers::all_logs().contains(&bearer("alice", "profile items:read")[7..]));
}

#[tokio::test]
async fn missing_invalid_and_insufficient_credentials_are_401_and_403_problems() {
    let app = app("").await;
    let res = get(&app, "/me", &[]).await;
    assert_eq!(res.headers()["www-authenticate"], "Bearer realm=\"api\"");
    assert_problem(res, 401).await;

    let mut expired = jwt::claims("alice", "profile");
    expired["exp"] = json!(jwt::now() - 600);
    let hostile = [
        jwt::hs256(DEVELOPMENT_JWT_SECRET, &expired),
        jwt::alg_none(&jwt::claims("alice", "profile")),
        jwt::hs256_with_rsa_public_key(&jwt::claims("alice", "profile")),
        jwt::tamper(&jwt::hs256(
            DEVELOPMENT_JWT_SECRET,
            &jwt::claims("alice", "profile"),
        )),
        "%%%".to_owned(),
        "a".repeat(10_000),
    ];
    for token in hostile {
        let res = get(
            &app,
            "/me",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        let challenge = res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        let body = assert_problem(res, 401).await;
        assert!(body["request_id"].is_string());
    }
    // A bad token is refused on a public route too: the client learns it is bad.
    let res = get(
        &app,
        "/whoami",
        &[(
            "authorization",
            &format!("Bearer {}", jwt::tamper(&bearer("a", "")[7..])),
        )],
    )
    .await;
    assert_problem(res, 401).await;

    let res = get(
        &app,
        "/me",
        &[("authorization", &bearer("alice", "items:read"))],
    )
    .await;
    let body = assert_problem(res, 403).await;
    assert_eq!(body["required_scopes"], json!(["profile"]));
    // Public routes need nothing.
    assert_eq!(get(&app, "/whoami", &[]).await.status(), 200);
}

#[tokio::test]
async fn api_keys_authenticate_and_unknown_ones_are_refused() {
    let (key, hash) = palisade_server::tokens::new_api_key().unwrap();
    let app = app(&format!(
        "[[auth.api_keys.keys]]\nid = \"ci\"\nhash = \"{hash}\"\nscopes = [\"profile\"]\n"
    ))
    .await;
    let res = get(&app, "/me", &[("x-api-key", &key)]).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["subject"], "apikey:ci");
    let res = get(&app, "/me", &[("x-api-key", &format!("{key}x"))]).await;
    assert_problem(res, 401).await;
}

#[tokio::test]
async fn rate_limits_keyed_by_subject_count_each_caller_apart() {
    let app = app(
        "[rate_limit]\nkey = [\"subject\", \"ip\"]\n[rate_limit.policies.per_user]\nquotas = [{ limit = 2, window = \"1m\" }]\n\
         [[rate_limit.routes]]\npath = \"/me\"\npolicy = \"per_user\"\n",
    )
    .await;
    for who in ["alice", "bob"] {
        for _ in 0..2 {
            let res = get(&app, "/me", &[("authorization", &bearer(who, "profile"))]).await;
            assert_eq!(res.status(), 200, "{who}");
        }
        let res = get(&app, "/me", &[("authorization", &bearer(who, "profile"))]).await;
        assert_problem(res, 429).await;
    }
}

#[tokio::test]
async fn palisade_token_issue_mints_a_token_the_server_accepts() {
    let app = app("").await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args([
            "token", "issue", "--sub", "carol", "--scope", "profile", "--ttl", "5m",
        ])
        .env("PALISADE_ENV", "development")
        .env_remove("PALISADE_CONFIG")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let res = get(
        &app,
        "/me",
        &[("authorization", &format!("Bearer {}", token.trim()))],
    )
    .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["subject"], "carol");
}
