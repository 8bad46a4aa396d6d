//! The example resources against SQLite and against a real PostgreSQL: CRUD, validation,
//! pagination, ETags, the idempotent order endpoint, and readiness when the database goes.

use palisade_server::config::DEVELOPMENT_JWT_SECRET;
use palisade_testkit::jwt;
use serde_json::{Value, json};
use sqlx::{Connection, Row};

use crate::{
    database::TestDb,
    helpers::{TestApp, assert_problem, spawn_api},
};

fn bearer(sub: &str, scope: &str) -> String {
    format!(
        "Bearer {}",
        jwt::hs256(DEVELOPMENT_JWT_SECRET, &jwt::claims(sub, scope))
    )
}

fn writer() -> String {
    bearer("alice", "items:write orders:write orders:read")
}

async fn post(app: &TestApp, path: &str, auth: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header("authorization", auth)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn create_item(app: &TestApp, sku: &str, stock: i64) -> Value {
    let res = post(
        app,
        "/api/v1/items",
        &writer(),
        &json!({"sku": sku, "name": format!("Item {sku}"), "price_cents": 250, "stock": stock}),
    )
    .await;
    assert_eq!(res.status(), 201, "{:?}", res.text().await);
    res.json().await.unwrap()
}

/// Runs `$body(db)` once on SQLite and once on PostgreSQL.
macro_rules! on_both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test]
            async fn on_sqlite() {
                super::$body(super::TestDb::sqlite()).await;
            }
            #[tokio::test]
            async fn on_postgres() {
                super::$body(super::TestDb::postgres().await).await;
            }
        }
    };
}

on_both!(crud_round_trips_with_etags, crud);
on_both!(invalid_input_is_a_problem_naming_each_field, validation);
on_both!(pages_follow_next_links_to_the_end, pagination);
on_both!(orders_need_a_key_and_a_replay_makes_one_row, orders);
on_both!(
    without_the_layer_the_database_still_makes_one_order_per_key,
    orders_without_layer
);

async fn crud(db: TestDb) {
    let app = spawn_api(&db.toml(), &[]).await;
    let res = post(
        &app,
        "/api/v1/items",
        &writer(),
        &json!({"sku": "mug-1", "name": "  Mug ", "description": "blue", "price_cents": 1200}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let etag1 = res.headers()["etag"].to_str().unwrap().to_owned();
    let item: Value = res.json().await.unwrap();
    assert_eq!(item["name"], "Mug");
    assert_eq!(item["stock"], 0);
    assert_eq!(item["version"], 1);
    assert_eq!(
        location,
        format!("/api/v1/items/{}", item["id"].as_str().unwrap())
    );

    // Reads are public, cacheable, and conditional.
    let res = app.get(&location).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["etag"].to_str().unwrap(), etag1);
    assert_eq!(
        res.headers()["cache-control"],
        "public, max-age=30, stale-while-revalidate=30"
    );
    assert_eq!(res.headers()["vary"], "accept-encoding");
    let res = app
        .client
        .get(app.url(&location))
        .header("authorization", writer())
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["cache-control"],
        "private, max-age=30, stale-while-revalidate=30",
        "a read with credentials stays out of shared caches"
    );
    let res = app
        .client
        .get(app.url(&location))
        .header("if-none-match", &etag1)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
    assert!(res.bytes().await.unwrap().is_empty());

    // Update: a new version and ETag; a stale If-Match is refused.
    let res = app
        .client
        .patch(app.url(&location))
        .header("authorization", writer())
        .header("if-match", &etag1)
        .json(&json!({"price_cents": 1500, "stock": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let etag2 = res.headers()["etag"].to_str().unwrap().to_owned();
    assert_ne!(etag1, etag2);
    let item: Value = res.json().await.unwrap();
    assert_eq!(
        (item["price_cents"].as_i64(), item["version"].as_i64()),
        (Some(1500), Some(2))
    );
    let res = app
        .client
        .get(app.url(&location))
        .header("if-none-match", &etag1)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the old ETag no longer matches");
    let res = app
        .client
        .delete(app.url(&location))
        .header("authorization", writer())
        .header("if-match", &etag1)
        .send()
        .await
        .unwrap();
    assert_problem(res, 412).await;

    let res = app
        .client
        .delete(app.url(&location))
        .header("authorization", writer())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_problem(app.get(&location).await, 404).await;
    let res = app
        .client
        .delete(app.url(&location))
        .header("authorization", writer())
        .send()
        .await
        .unwrap();
    assert_problem(res, 404).await;
}

async fn validation(db: TestDb) {
    let app = spawn_api(&db.toml(), &[]).await;
    let res = post(
        &app,
        "/api/v1/items",
        &writer(),
        &json!({"sku": "bad sku!", "name": "", "stock": -1}),
    )
    .await;
    let body = assert_problem(res, 422).await;
    let mut fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["name", "price_cents", "sku", "stock"], "{body}");
    // Unknown members and wrong types are refused too.
    let res = post(
        &app,
        "/api/v1/items",
        &writer(),
        &json!({"sku": "a", "name": "A", "price_cents": 1, "colour": "red"}),
    )
    .await;
    assert_problem(res, 422).await;
    let res = post(
        &app,
        "/api/v1/items",
        &writer(),
        &json!({"sku": "a", "name": "A", "price_cents": "one"}),
    )
    .await;
    assert_problem(res, 422).await;
    // A duplicate SKU is a conflict.
    create_item(&app, "dup", 1).await;
    let res = post(
        &app,
        "/api/v1/items",
        &writer(),
        &json!({"sku": "dup", "name": "Again", "price_cents": 1}),
    )
    .await;
    assert_problem(res, 409).await;
    // Writes need credentials and the scope.
    let res = app
        .client
        .post(app.url("/api/v1/items"))
        .json(&json!({"sku": "x", "name": "X", "price_cents": 1}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 401).await;
    let res = post(
        &app,
        "/api/v1/items",
        &bearer("bob", "items:read"),
        &json!({"sku": "x", "name": "X", "price_cents": 1}),
    )
    .await;
    let body = assert_problem(res, 403).await;
    assert_eq!(body["required_scopes"], json!(["items:write"]));
    // An item with orders cannot be deleted.
    let item = create_item(&app, "ordered", 5).await;
    let res = app
        .client
        .post(app.url("/api/v1/orders"))
        .header("authorization", writer())
        .header("idempotency-key", "val-1")
        .json(&json!({"item_id": item["id"], "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = app
        .client
        .delete(app.url(&format!("/api/v1/items/{}", item["id"].as_str().unwrap())))
        .header("authorization", writer())
        .send()
        .await
        .unwrap();
    assert_problem(res, 409).await;
}

async fn pagination(db: TestDb) {
    let app = spawn_api(&db.toml(), &[]).await;
    let res = app.get("/api/v1/items").await;
    let page: Value = res.json().await.unwrap();
    assert_eq!(
        page,
        json!({"items": []}),
        "an empty table: no items, no next"
    );
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(create_item(&app, &format!("p{i}"), 1).await["id"].clone());
    }
    let mut seen = Vec::new();
    let mut next = Some("/api/v1/items?limit=2".to_owned());
    let mut pages = 0;
    while let Some(url) = next {
        let res = app.get(&url).await;
        assert_eq!(res.status(), 200);
        let link = res
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_owned());
        let page: Value = res.json().await.unwrap();
        next = page["next"].as_str().map(str::to_owned);
        assert_eq!(link, next.as_ref().map(|n| format!("<{n}>; rel=\"next\"")));
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].clone()),
        );
        pages += 1;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, made, "every item once, in creation order");
    // A page exactly as large as what is left has no next link.
    let page: Value = app.get("/api/v1/items?limit=5").await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
    assert!(page.get("next").is_none());
    for bad in ["limit=0", "limit=101", "limit=x", "cursor=%27%20OR%201=1"] {
        let body = assert_problem(app.get(&format!("/api/v1/items?{bad}")).await, 422).await;
        assert!(body["errors"].is_array(), "{bad}: {body}");
    }
}

async fn orders(db: TestDb) {
    let app = spawn_api(&db.toml(), &[]).await;
    let item = create_item(&app, "widget", 3).await;
    let order = |key: Option<&str>, quantity: i64, who: &str| {
        let mut req = app
            .client
            .post(app.url("/api/v1/orders"))
            .header("authorization", bearer(who, "orders:write orders:read"))
            .json(&json!({"item_id": item["id"], "quantity": quantity}));
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        req.send()
    };
    assert_problem(order(None, 1, "alice").await.unwrap(), 400).await;

    let first = order(Some("pay-1"), 2, "alice").await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(
        !first.headers().contains_key("cache-control"),
        "writes get no policy"
    );
    let first_body: Value = first.json().await.unwrap();
    assert_eq!(first_body["total_cents"], 500);
    let replay = order(Some("pay-1"), 2, "alice").await.unwrap();
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replay_body: Value = replay.json().await.unwrap();
    assert_eq!(replay_body, first_body, "the replay is the same order");
    // The same key with another payload is refused.
    assert_problem(order(Some("pay-1"), 1, "alice").await.unwrap(), 422).await;
    // Stock: 1 left.
    assert_problem(order(Some("pay-2"), 2, "alice").await.unwrap(), 409).await;

    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&db.url()).await.unwrap();
    let rows = sqlx::query("SELECT COUNT(*) AS n FROM orders")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        rows.get::<i64, _>("n"),
        1,
        "one row for the key, however often it is sent"
    );
    let stock = sqlx::query("SELECT stock FROM items WHERE id = $1")
        .bind(item["id"].as_str().unwrap())
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(stock.get::<i64, _>("stock"), 1);
    conn.close().await.unwrap();

    // Orders are private to their subject.
    let path = format!("/api/v1/orders/{}", first_body["id"].as_str().unwrap());
    let res = app
        .client
        .get(app.url(&path))
        .header("authorization", bearer("alice", "orders:read"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert_eq!(res.json::<Value>().await.unwrap(), first_body);
    let res = app
        .client
        .get(app.url(&path))
        .header("authorization", bearer("mallory", "orders:read"))
        .send()
        .await
        .unwrap();
    assert_problem(res, 404).await;
}

/// The idempotency layer's entry gone (expired, or the layer off): the unique index still
/// keeps one order per key, and a retry gets that order back.
async fn orders_without_layer(db: TestDb) {
    let app = spawn_api(&db.toml(), &[("PALISADE_IDEMPOTENCY__ENABLED", "false")]).await;
    let item = create_item(&app, "gadget", 5).await;
    let order = |quantity: i64| {
        app.client
            .post(app.url("/api/v1/orders"))
            .header("authorization", writer())
            .header("idempotency-key", "retry-1")
            .json(&json!({"item_id": item["id"], "quantity": quantity}))
            .send()
    };
    let first = order(2).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = order(2).await.unwrap();
    assert_eq!(again.status(), 201);
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        again["id"], first["id"],
        "the retry answers with the same order"
    );
    let body = assert_problem(order(1).await.unwrap(), 422).await;
    assert_eq!(body["errors"][0]["field"], "Idempotency-Key");
    // Stock was taken once.
    let item: Value = app
        .get(&format!("/api/v1/items/{}", item["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(item["stock"], 3);
}

#[tokio::test]
async fn readiness_fails_while_postgres_is_unreachable_and_recovers() {
    let db = TestDb::postgres().await;
    let url = db.url();
    let (_, rest) = url.split_once('@').unwrap();
    let port: u16 = rest.split(['/', ':']).nth(1).unwrap().parse().unwrap();
    let relay = palisade_testkit::TcpRelay::start(port);
    let via_relay = url.replace(&format!(":{port}/"), &format!(":{}/", relay.port()));
    let app = spawn_api(
        &format!(
            "[database]\nurl = {via_relay:?}\nacquire_timeout = \"500ms\"\nidle_timeout = \"1s\"\n"
        ),
        &[],
    )
    .await;
    assert_eq!(app.get("/readyz").await.status(), 200);
    relay.cut();
    let res = app.get("/readyz").await;
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert!(body.to_string().contains("database"), "{body}");
    // Requests that need the database fail cleanly meanwhile: 503 or 500, a problem either way.
    let res = app.get("/api/v1/items").await;
    assert!(res.status().is_server_error());
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    relay.restore();
    let mut ready = false;
    for _ in 0..50 {
        if app.get("/readyz").await.status() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "readiness recovers once the database is back");
    assert_eq!(app.get("/api/v1/items").await.status(), 200);
}

#[tokio::test]
async fn the_openapi_document_covers_every_resource_route_and_docs_are_served() {
    let db = TestDb::sqlite();
    let app = spawn_api(&db.toml(), &[]).await;
    let res = app.get("/openapi.json").await;
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    // Every route the server declares for its resources is documented, and nothing else.
    let settings = palisade_server::config::Settings::default();
    let mut database = settings.database.clone();
    database.data_dir = crate::helpers::scratch_dir("openapi-routes");
    let routes = palisade_server::resources::routes(
        &palisade_server::db::Database::open(&database).unwrap(),
        None,
    );
    let mut declared: Vec<&str> = routes.templates().iter().map(String::as_str).collect();
    declared.sort_unstable();
    let mut documented: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    documented.sort_unstable();
    assert_eq!(declared, documented);
    let create = &doc["paths"]["/api/v1/orders"]["post"];
    assert_eq!(create["security"][0]["bearer"], json!(["orders:write"]));
    assert!(
        create["responses"]["422"]["content"]["application/problem+json"].is_object(),
        "{create}"
    );
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["name"],
        "X-API-Key"
    );
    assert!(doc["components"]["schemas"]["Item"].is_object());

    let res = app.get("/docs").await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("/docs/swagger-ui-bundle.js")
    );
    for (asset, min) in [
        ("/docs/swagger-ui-bundle.js", 1 << 20),
        ("/docs/swagger-ui.css", 1 << 10),
        ("/docs/init.js", 50),
    ] {
        let res = app.get(asset).await;
        assert_eq!(res.status(), 200, "{asset}");
        assert!(res.bytes().await.unwrap().len() > min, "{asset}");
    }
}

#[tokio::test]
async fn production_serves_no_api_docs_unless_enabled() {
    let db = TestDb::sqlite();
    let env = [
        ("PALISADE_ENV", "production"),
        ("PALISADE_TRUSTED_HOSTS__ALLOWED_HOSTS", "[\"*\"]"),
        ("PALISADE_METRICS__ENABLED", "false"),
        (
            "PALISADE_AUTH__JWT__SECRET",
            "Xq7vR2mLp9wTz4kHb6nJc3sYd8fGh5jKe2Wn",
        ),
    ];
    let app = spawn_api(&db.toml(), &env).await;
    assert_problem(app.get("/openapi.json").await, 404).await;
    assert_problem(app.get("/docs").await, 404).await;
    let mut with_docs = env.to_vec();
    with_docs.push(("PALISADE_OPENAPI__ENABLED", "true"));
    let app = spawn_api(&db.toml(), &with_docs).await;
    assert_eq!(app.get("/openapi.json").await.status(), 200);
}

/// `palisade db migrate` applies the embedded migrations once, on SQLite and PostgreSQL
/// (`DATABASE_URL` honoured), and a second run applies none.
#[tokio::test]
async fn palisade_db_migrate_applies_the_migrations_once() {
    for db in [TestDb::sqlite(), TestDb::postgres().await] {
        let env: Vec<(String, String)> = match &db {
            TestDb::Sqlite(dir) => vec![(
                "PALISADE_DATABASE__DATA_DIR".into(),
                dir.display().to_string(),
            )],
            TestDb::Postgres { url, .. } => vec![("DATABASE_URL".into(), url.clone())],
        };
        let run = || {
            std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
                .args(["db", "migrate"])
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)))
                .current_dir(std::env::temp_dir())
                .output()
                .unwrap()
        };
        let first = run();
        let out = String::from_utf8_lossy(&first.stdout).into_owned();
        assert!(
            first.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&first.stderr)
        );
        assert!(out.contains("2 migration(s) applied"), "{out}");
        let second = run();
        assert!(String::from_utf8_lossy(&second.stdout).contains("0 migration(s) applied"));
        // The tables exist.
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&db.url()).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 0);
        conn.close().await.unwrap();
    }
}
