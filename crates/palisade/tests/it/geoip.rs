//! GeoIP over a real HTTP/1.1 server, against a MaxMind DB the test writes itself
//! (`palisade_testkit::mmdb`). The client address comes from `X-Forwarded-For`, believed
//! because the test's loopback peer is a trusted proxy.

use std::convert::Infallible;

use axum::{Router, routing};
use axum_core::body::Body;
use http::Request;
use palisade::{
    client_ip::ClientIpConfig,
    context::{RequestContextConfig, RequestContextLayer},
    exempt::ExemptPaths,
    geoip::{CountryCode, Decision, GeoIpConfig, GeoIpLayer},
};
use palisade_testkit::{
    TempFile,
    mmdb::{MmdbWriter, Value},
};
use tower::{ServiceBuilder, util::BoxCloneSyncService};

use crate::helpers::{exchange, serve};

/// DE and KP in IPv4 and IPv6; a record with only `registered_country`; one with no country.
fn database() -> TempFile {
    MmdbWriter::new("GeoLite2-Country")
        .country("203.0.113.0/24", "DE")
        .country("198.51.100.0/24", "KP")
        .country("2001:db8:de::/48", "DE")
        .country("2001:db8:4b::/48", "KP")
        .insert(
            "192.0.2.0/24".parse().unwrap(),
            Value::registered_country("KP"),
        )
        .insert(
            "100.64.0.0/16".parse().unwrap(),
            Value::map([("continent", Value::map([("code", "AS".into())]))]),
        )
        .write_temp()
}

fn config(db: &TempFile, allow: &[&str], deny: &[&str], unknown: Decision) -> GeoIpConfig {
    GeoIpConfig {
        database: Some(db.path().to_owned()),
        allow: allow.iter().map(|s| (*s).to_owned()).collect(),
        deny: deny.iter().map(|s| (*s).to_owned()).collect(),
        unknown,
    }
}

/// `/` and `/livez` behind the request context (trusting the loopback peer's
/// `X-Forwarded-For`) and the GeoIP layer, served over HTTP/1.1.
async fn spawn(config: &GeoIpConfig) -> std::net::SocketAddr {
    let geoip = GeoIpLayer::new(config, ExemptPaths::health())
        .unwrap()
        .expect("the database exists");
    let context = RequestContextLayer::new(&RequestContextConfig {
        trust_incoming_request_id: true,
        client_ip: ClientIpConfig {
            trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
            ..Default::default()
        },
    });
    let router = Router::new()
        .route("/", routing::get(|| async { "ok" }))
        .route("/livez", routing::get(|| async { "live" }));
    let svc: BoxCloneSyncService<Request<Body>, http::Response<Body>, Infallible> =
        BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(context)
                .layer(geoip)
                .service(router),
        );
    serve(svc).await
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// `GET path` from `client` (`None`: no `X-Forwarded-For`, so the loopback peer itself).
async fn get(addr: std::net::SocketAddr, path: &str, client: Option<&str>) -> Reply {
    let xff = client.map_or(String::new(), |c| format!("x-forwarded-for: {c}\r\n"));
    let raw = format!(
        "GET {path} HTTP/1.1\r\nhost: x\r\n{xff}x-request-id: geo-1\r\nconnection: close\r\n\r\n"
    );
    let response = exchange(addr, raw.as_bytes()).await;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response: {response:?}"));
    Reply {
        status: head[9..12].parse().unwrap(),
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

#[tokio::test]
async fn a_denied_country_gets_a_403_problem_with_the_request_id_and_others_pass() {
    let db = database();
    let addr = spawn(&config(&db, &[], &["kp"], Decision::Allow)).await;
    for client in ["198.51.100.7", "2001:db8:4b::1"] {
        let reply = get(addr, "/", Some(client)).await;
        assert_eq!(reply.status, 403, "{client}: {}", reply.body);
        assert!(
            reply
                .head
                .contains("content-type: application/problem+json"),
            "{}",
            reply.head
        );
        let problem = reply.json();
        assert_eq!(problem["status"], 403);
        assert_eq!(problem["title"], "Forbidden by location");
        assert_eq!(problem["country"], "KP");
        assert_eq!(problem["request_id"], "geo-1");
        assert_eq!(problem["instance"], "urn:request:geo-1");
    }
    for client in ["203.0.113.9", "2001:db8:de::1"] {
        let reply = get(addr, "/", Some(client)).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok"), "{client}");
    }
}

#[tokio::test]
async fn an_allowlist_lets_only_its_countries_through() {
    let db = database();
    let addr = spawn(&config(&db, &["DE"], &[], Decision::Allow)).await;
    assert_eq!(get(addr, "/", Some("203.0.113.9")).await.status, 200);
    assert_eq!(get(addr, "/", Some("2001:db8:de::7")).await.status, 200);
    let refused = get(addr, "/", Some("198.51.100.7")).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["country"], "KP");
    // Unknown follows `unknown`, not the allowlist.
    assert_eq!(get(addr, "/", Some("10.9.9.9")).await.status, 200);
}

#[tokio::test]
async fn unknown_clients_get_the_configured_default_both_ways() {
    let db = database();
    // Not in the database; a record without any country; the loopback peer itself.
    let unknown = [
        Some("10.9.9.9"),
        Some("100.64.3.3"),
        Some("2001:db8:ff::1"),
        None,
    ];
    let allowing = spawn(&config(&db, &[], &["KP"], Decision::Allow)).await;
    let denying = spawn(&config(&db, &[], &["KP"], Decision::Deny)).await;
    for client in unknown {
        let reply = get(allowing, "/", client).await;
        assert_eq!(reply.status, 200, "{client:?}: {}", reply.body);
        let reply = get(denying, "/", client).await;
        assert_eq!(reply.status, 403, "{client:?}: {}", reply.body);
        let problem = reply.json();
        assert_eq!(problem["title"], "Forbidden by location");
        assert_eq!(problem["request_id"], "geo-1");
        assert!(problem.get("country").is_none(), "{problem}");
    }
    // Known and not denied still passes when unknown clients are refused.
    assert_eq!(get(denying, "/", Some("203.0.113.9")).await.status, 200);
}

#[tokio::test]
async fn exempt_paths_pass_even_for_refused_clients() {
    let db = database();
    let addr = spawn(&config(&db, &["DE"], &[], Decision::Deny)).await;
    for client in [Some("198.51.100.7"), Some("10.9.9.9"), None] {
        let reply = get(addr, "/livez", client).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "live"),
            "{client:?}"
        );
        assert_eq!(get(addr, "/", client).await.status, 403, "{client:?}");
    }
}

#[tokio::test]
async fn registered_country_stands_in_and_mapped_addresses_are_looked_up_as_ipv4() {
    let db = database();
    let layer = GeoIpLayer::new(
        &config(&db, &[], &["KP"], Decision::Allow),
        ExemptPaths::default(),
    )
    .unwrap()
    .unwrap();
    let country = |ip: &str| layer.country(ip.parse().unwrap()).map(|c| c.to_string());
    assert_eq!(country("192.0.2.44").as_deref(), Some("KP"));
    assert_eq!(country("::ffff:203.0.113.1").as_deref(), Some("DE"));
    assert_eq!(country("2001:db8:de::5").as_deref(), Some("DE"));
    assert_eq!(country("100.64.0.1"), None);
    assert_eq!(country("127.0.0.1"), None);
    assert_eq!(
        layer.country("198.51.100.1".parse().unwrap()),
        CountryCode::parse("kp")
    );
    assert!(!layer.allows(Some("192.0.2.44".parse().unwrap())));
    assert!(layer.allows(None));
    // Over HTTP too.
    let addr = spawn(&config(&db, &[], &["KP"], Decision::Allow)).await;
    let reply = get(addr, "/", Some("192.0.2.44")).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.json()["country"], "KP");
}

#[tokio::test]
async fn an_absent_database_turns_the_layer_off() {
    let missing = TempFile::new(".mmdb"); // never written
    let config = GeoIpConfig {
        database: Some(missing.path().to_owned()),
        deny: vec!["KP".into()],
        ..GeoIpConfig::default()
    };
    assert!(
        GeoIpLayer::new(&config, ExemptPaths::health())
            .unwrap()
            .is_none()
    );
    assert!(
        GeoIpLayer::new(&GeoIpConfig::default(), ExemptPaths::health())
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn an_unreadable_or_invalid_database_is_a_startup_error() {
    let garbage = TempFile::new(".mmdb");
    std::fs::write(garbage.path(), b"this is not a MaxMind DB\n").unwrap();
    let config = |path: &std::path::Path| GeoIpConfig {
        database: Some(path.to_owned()),
        ..GeoIpConfig::default()
    };
    let err = GeoIpLayer::new(&config(garbage.path()), ExemptPaths::health()).unwrap_err();
    assert_eq!(err.key, "database");
    assert!(err.message.contains("is not a MaxMind DB file"), "{err}");
    assert!(
        err.message.contains(&garbage.path().display().to_string()),
        "{err}"
    );
    // A directory cannot be read as a file.
    let err = GeoIpLayer::new(&config(&std::env::temp_dir()), ExemptPaths::health()).unwrap_err();
    assert_eq!(err.key, "database");
    assert!(err.message.starts_with("cannot read "), "{err}");
}

#[tokio::test]
async fn an_invalid_country_code_is_an_error_naming_the_key() {
    let db = database();
    let err = GeoIpLayer::new(
        &config(&db, &["DE", "FR", "GER"], &[], Decision::Allow),
        ExemptPaths::health(),
    )
    .unwrap_err();
    assert_eq!(err.key, "allow[2]");
    assert!(err.message.contains("ISO 3166-1 alpha-2"), "{err}");
    let err = GeoIpLayer::new(
        &config(&db, &["DE"], &["KP"], Decision::Allow),
        ExemptPaths::health(),
    )
    .unwrap_err();
    assert_eq!(err.key, "deny");
}
