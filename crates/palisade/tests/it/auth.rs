//! Authentication through the real layer: JWTs (HS256, RS256 from a JWKS, ES256 from a PEM
//! file), API keys, scopes, and every kind of bad token → 401/403, never a 5xx.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum_core::body::Body;
use http::{Request, Response, StatusCode};
use palisade::{
    auth::{
        Access, ApiKeyEntry, AuthConfig, AuthLayer, AuthRouteConfig, JwksFetch, JwtAlgorithm,
        JwtConfig, Principal, api_key_hash,
    },
    context::{RequestContext, RequestContextConfig, RequestContextLayer},
    duration::ConfigDuration,
};
use palisade_testkit::jwt;
use serde_json::json;
use tower::{ServiceBuilder, ServiceExt, util::BoxCloneService};

use crate::helpers::{body_json, request};

type Svc = BoxCloneService<Request<Body>, Response<Body>, Infallible>;

const SECRET: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCD";

/// Echoes who the layer admitted: `subject scopes | context subject | context tier`.
fn service(config: &AuthConfig, fetch: Option<Arc<dyn JwksFetch>>) -> Svc {
    let echo = tower::service_fn(|req: Request<Body>| async move {
        let p = req.extensions().get::<Principal>();
        let ctx = req.extensions().get::<RequestContext>().unwrap();
        let text = format!(
            "{} {}|{}|{}",
            p.map_or("-", |p| p.subject()),
            p.map(|p| p.scopes().collect::<Vec<_>>().join(","))
                .unwrap_or_default(),
            ctx.subject().unwrap_or("-"),
            ctx.tier().unwrap_or("-"),
        );
        Ok::<_, Infallible>(Response::new(Body::from(text)))
    });
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(RequestContextLayer::new(&RequestContextConfig::default()))
            .layer(AuthLayer::new(config, fetch).expect("valid auth config"))
            .service(echo),
    )
}

fn hs_config() -> AuthConfig {
    AuthConfig {
        jwt: Some(JwtConfig {
            secret: SECRET.into(),
            issuer: "https://issuer.test".into(),
            audience: "palisade-api".into(),
            ..JwtConfig::default()
        }),
        routes: vec![
            AuthRouteConfig {
                path: "/public".into(),
                methods: vec![],
                public: true,
                scopes: vec![],
            },
            AuthRouteConfig {
                path: "/items/*".into(),
                methods: vec!["POST".into()],
                public: false,
                scopes: vec!["items:write".into()],
            },
        ],
        default_access: Access::Authenticated,
        ..AuthConfig::default()
    }
}

fn good_claims() -> serde_json::Value {
    let mut c = jwt::claims("alice", "items:read items:write");
    c["iss"] = json!("https://issuer.test");
    c["aud"] = json!("palisade-api");
    c["tier"] = json!("gold");
    c
}

async fn call(svc: &Svc, method: &str, path: &str, headers: &[(&str, &str)]) -> Response<Body> {
    let mut req = request(path, "203.0.113.9:4000", headers);
    *req.method_mut() = method.parse().unwrap();
    svc.clone().oneshot(req).await.unwrap()
}

async fn text(res: Response<Body>) -> String {
    use http_body_util::BodyExt;
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A 401 problem with an `invalid_token` challenge whose description contains `why`.
async fn assert_invalid_token(res: Response<Body>, why: &str) {
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{why}");
    let challenge = res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer realm=\"api\", error=\"invalid_token\""),
        "{challenge}"
    );
    assert!(challenge.contains(why), "{challenge} should say {why:?}");
    let body = body_json(res).await;
    assert_eq!(body["status"], 401);
    assert!(body["detail"].as_str().unwrap().contains(why), "{body}");
    assert!(body["request_id"].is_string(), "{body}");
}

#[tokio::test]
async fn a_valid_token_admits_its_subject_scopes_and_tier_into_the_request_and_context() {
    let svc = service(&hs_config(), None);
    let token = jwt::hs256(SECRET, &good_claims());
    let res = call(
        &svc,
        "POST",
        "/items/1",
        &[("authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(text(res).await, "alice items:read,items:write|alice|gold");
    // The scheme is case-insensitive.
    let res = call(
        &svc,
        "GET",
        "/other",
        &[("authorization", &format!("bearer {token}"))],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn every_kind_of_bad_token_is_a_401_with_its_reason() {
    let svc = service(&hs_config(), None);
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = good_claims();
        f(&mut c);
        c
    };
    let now = jwt::now();
    let cases: Vec<(String, &str)> = vec![
        (
            jwt::hs256(SECRET, &with(&|c| c["exp"] = json!(now - 120))),
            "expired",
        ),
        (
            jwt::hs256(SECRET, &with(&|c| c["nbf"] = json!(now + 120))),
            "not valid yet",
        ),
        (
            jwt::hs256(SECRET, &with(&|c| c["iss"] = json!("https://evil.test"))),
            "issuer",
        ),
        (
            jwt::hs256(SECRET, &with(&|c| c["aud"] = json!("someone-else"))),
            "audience",
        ),
        (
            jwt::hs256(
                SECRET,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
            ),
            "required claim",
        ),
        (
            jwt::hs256(
                SECRET,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("sub");
                }),
            ),
            "required claim",
        ),
        (
            jwt::hs256(SECRET, &with(&|c| c["sub"] = json!(""))),
            "subject",
        ),
        (
            jwt::tamper(&jwt::hs256(SECRET, &good_claims())),
            "signature",
        ),
        (
            jwt::hs256("another-secret-that-is-long-enough-0000", &good_claims()),
            "signature",
        ),
        (jwt::alg_none(&good_claims()), "malformed"),
        (
            jwt::rs256(jwt::RSA_PRIVATE, None, &good_claims()),
            "algorithm",
        ),
        ("not.a.jwt".to_owned(), "malformed"),
        ("x".repeat(9000), "too large"),
    ];
    for (token, why) in cases {
        let res = call(
            &svc,
            "GET",
            "/public",
            &[("authorization", &bearer(&token))],
        )
        .await;
        assert_invalid_token(res, why).await;
    }
}

#[tokio::test]
async fn a_token_within_the_leeway_of_its_expiry_still_passes() {
    let svc = service(&hs_config(), None);
    let mut c = good_claims();
    c["exp"] = json!(jwt::now() - 10);
    let res = call(
        &svc,
        "GET",
        "/x",
        &[("authorization", &bearer(&jwt::hs256(SECRET, &c)))],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn routes_say_who_may_call_them() {
    let svc = service(&hs_config(), None);
    // Public: anonymous is fine.
    let res = call(&svc, "GET", "/public", &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(text(res).await, "- |-|-");
    // Health probes are exempt, bad credentials and all.
    let res = call(&svc, "GET", "/livez", &[("authorization", "Bearer junk")]).await;
    assert_eq!(res.status(), StatusCode::OK);
    // Default access is "authenticated": a 401 with the challenge.
    let res = call(&svc, "GET", "/anything", &[]).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["www-authenticate"], "Bearer realm=\"api\"");
    let body = body_json(res).await;
    assert_eq!(body["title"], "Authentication required");
    // Too few scopes: 403 naming them.
    let token = jwt::hs256(SECRET, &{
        let mut c = good_claims();
        c["scope"] = json!("items:read");
        c
    });
    let res = call(
        &svc,
        "POST",
        "/items/1",
        &[("authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        res.headers()["www-authenticate"],
        "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"items:write\""
    );
    let body = body_json(res).await;
    assert_eq!(body["required_scopes"], json!(["items:write"]));
    // The same token reads.
    let res = call(
        &svc,
        "GET",
        "/items/1",
        &[("authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
}

fn api_key_config() -> AuthConfig {
    AuthConfig {
        api_keys: palisade::auth::ApiKeysConfig {
            header: "X-API-Key".into(),
            keys: vec![ApiKeyEntry {
                id: "deploy-bot".into(),
                hash: api_key_hash("k-7f3a9c2e"),
                subject: String::new(),
                scopes: vec!["items:write".into()],
                tier: "internal".into(),
            }],
        },
        default_access: Access::Authenticated,
        ..AuthConfig::default()
    }
}

#[tokio::test]
async fn api_keys_admit_their_subject_and_unknown_keys_are_refused() {
    let svc = service(&api_key_config(), None);
    let res = call(&svc, "GET", "/x", &[("x-api-key", "k-7f3a9c2e")]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        text(res).await,
        "apikey:deploy-bot items:write|apikey:deploy-bot|internal"
    );
    for bad in ["k-7f3a9c2f", "", "k-7f3a9c2e "] {
        let res = call(&svc, "GET", "/x", &[("x-api-key", bad)]).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{bad:?}");
        assert_eq!(
            res.headers()["www-authenticate"],
            "ApiKey realm=\"api\", error=\"invalid_key\""
        );
    }
    let res = call(&svc, "GET", "/x", &[]).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.headers()["www-authenticate"],
        "ApiKey realm=\"api\", header=\"x-api-key\""
    );
}

#[tokio::test]
async fn es256_keys_come_from_a_pem_file_and_other_algorithms_are_refused() {
    let dir = std::env::temp_dir().join(format!("palisade-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("ec.pub.pem");
    std::fs::write(&pem, jwt::EC_PUBLIC).unwrap();
    let config = AuthConfig {
        jwt: Some(JwtConfig {
            algorithm: JwtAlgorithm::Es256,
            public_key_file: Some(pem),
            ..JwtConfig::default()
        }),
        default_access: Access::Authenticated,
        ..AuthConfig::default()
    };
    let svc = service(&config, None);
    let claims = jwt::claims("bob", "");
    let res = call(
        &svc,
        "GET",
        "/x",
        &[("authorization", &bearer(&jwt::es256(None, &claims)))],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(text(res).await, "bob |bob|-");
    let res = call(
        &svc,
        "GET",
        "/x",
        &[(
            "authorization",
            &bearer(&jwt::rs256(jwt::RSA_PRIVATE, None, &claims)),
        )],
    )
    .await;
    assert_invalid_token(res, "algorithm").await;
    let res = call(
        &svc,
        "GET",
        "/x",
        &[("authorization", &bearer(&jwt::hs256(SECRET, &claims)))],
    )
    .await;
    assert_invalid_token(res, "algorithm").await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A JWKS endpoint stand-in that counts fetches and serves whatever set it holds.
#[derive(Clone, Default)]
struct JwksDoc {
    keys: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksDoc {
    fn fetcher(&self) -> Arc<dyn JwksFetch> {
        let doc = self.clone();
        Arc::new(move || {
            let doc = doc.clone();
            async move {
                doc.fetches.fetch_add(1, Ordering::SeqCst);
                let keys = doc.keys.lock().unwrap().clone();
                Ok(serde_json::to_vec(&json!({ "keys": keys })).unwrap())
            }
        })
    }
}

fn jwks_config(cooldown: Duration) -> AuthConfig {
    AuthConfig {
        jwt: Some(JwtConfig {
            algorithm: JwtAlgorithm::Rs256,
            jwks_url: "https://issuer.test/.well-known/jwks.json".into(),
            jwks_cooldown: ConfigDuration(cooldown),
            ..JwtConfig::default()
        }),
        default_access: Access::Authenticated,
        ..AuthConfig::default()
    }
}

#[tokio::test]
async fn jwks_keys_are_fetched_once_chosen_by_kid_and_refetched_on_rotation() {
    let doc = JwksDoc::default();
    doc.keys.lock().unwrap().push(jwt::rsa_jwk("k1"));
    let svc = service(&jwks_config(Duration::from_millis(1)), Some(doc.fetcher()));
    let claims = jwt::claims("carol", "a b");
    let t1 = jwt::rs256(jwt::RSA_PRIVATE, Some("k1"), &claims);
    for _ in 0..3 {
        let res = call(&svc, "GET", "/x", &[("authorization", &bearer(&t1))]).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(doc.fetches.load(Ordering::SeqCst), 1, "the set is cached");
    // The confusion attack: HS256 signed with the RSA public key as the secret.
    let confused = jwt::hs256_with_rsa_public_key(&claims);
    let res = call(&svc, "GET", "/x", &[("authorization", &bearer(&confused))]).await;
    assert_invalid_token(res, "algorithm").await;
    // A forger reuses the kid with another key.
    let forged = jwt::rs256(jwt::RSA2_PRIVATE, Some("k1"), &claims);
    let res = call(&svc, "GET", "/x", &[("authorization", &bearer(&forged))]).await;
    assert_invalid_token(res, "signature").await;
    // The issuer rotates to k2: the first token naming it fetches the set again.
    doc.keys.lock().unwrap().push(jwt::rsa2_jwk("k2"));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let t2 = jwt::rs256(jwt::RSA2_PRIVATE, Some("k2"), &claims);
    let res = call(&svc, "GET", "/x", &[("authorization", &bearer(&t2))]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(text(res).await, "carol a,b|carol|-");
    assert_eq!(doc.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn unknown_kids_cannot_make_the_server_fetch_more_than_once_per_cooldown() {
    let doc = JwksDoc::default();
    doc.keys.lock().unwrap().push(jwt::rsa_jwk("k1"));
    let svc = service(&jwks_config(Duration::from_secs(3600)), Some(doc.fetcher()));
    let claims = jwt::claims("mallory", "");
    for i in 0..20 {
        let kid = format!("bogus-{i}");
        let t = jwt::rs256(jwt::RSA2_PRIVATE, Some(&kid), &claims);
        let res = call(&svc, "GET", "/x", &[("authorization", &bearer(&t))]).await;
        assert_invalid_token(res, "unknown").await;
    }
    assert_eq!(doc.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unreachable_jwks_is_a_503_not_a_500() {
    let fetch: Arc<dyn JwksFetch> =
        Arc::new(|| async { Err::<Vec<u8>, _>("connection refused".to_owned()) });
    let svc = service(&jwks_config(Duration::from_secs(3600)), Some(fetch));
    let t = jwt::rs256(jwt::RSA_PRIVATE, Some("k1"), &jwt::claims("dave", ""));
    let res = call(&svc, "GET", "/x", &[("authorization", &bearer(&t))]).await;
    // The first attempt failed; within the cooldown the keys are unavailable.
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
}

#[test]
fn bad_config_names_the_key() {
    let err = |c: AuthConfig| AuthLayer::new(&c, None).unwrap_err().key;
    let mut short = hs_config();
    short.jwt.as_mut().unwrap().secret = "too-short".into();
    assert_eq!(err(short), "jwt.secret");
    let no_key = AuthConfig {
        jwt: Some(JwtConfig {
            algorithm: JwtAlgorithm::Rs256,
            ..JwtConfig::default()
        }),
        ..AuthConfig::default()
    };
    assert_eq!(err(no_key), "jwt.public_key_file");
    let mut rs_with_secret = hs_config();
    rs_with_secret.jwt.as_mut().unwrap().algorithm = JwtAlgorithm::Rs256;
    assert_eq!(err(rs_with_secret), "jwt.secret");
    let nothing = AuthConfig {
        default_access: Access::Authenticated,
        ..AuthConfig::default()
    };
    assert_eq!(err(nothing), "jwt");
    let mut bad_scope = hs_config();
    bad_scope.routes[1].scopes = vec!["has space".into()];
    assert_eq!(err(bad_scope), "routes[1].scopes[0]");
    assert_eq!(err(jwks_config(Duration::from_secs(1))), "jwt.jwks_url");
}
