//! Background jobs on a real Redis: an order's job runs in the creating request's context
//! (its id and subject on the job's log lines); a failing job is retried with backoff and its
//! failures show in the logs and the metrics.

use std::time::Duration;

use palisade_server::{
    config::{DEVELOPMENT_JWT_SECRET, JobsSettings},
    jobs::{Jobs, ProcessOrder},
};
use palisade_testkit::{RedisServer, jwt};
use serde_json::{Value, json};

use crate::{
    database::TestDb,
    helpers::{TestApp, spawn_api, wait_for_log},
};

const JOBS: &str =
    "[jobs]\nenabled = true\nretries = 2\nbackoff_min = \"20ms\"\nbackoff_max = \"100ms\"\n";

async fn app(db: &TestDb, redis: &RedisServer) -> TestApp {
    let toml = format!("{}[redis]\nurl = {:?}\n{JOBS}", db.toml(), redis.url());
    spawn_api(&toml, &[]).await
}

fn bearer() -> String {
    format!(
        "Bearer {}",
        jwt::hs256(
            DEVELOPMENT_JWT_SECRET,
            &jwt::claims("alice", "items:write orders:write orders:read")
        )
    )
}

#[tokio::test]
async fn an_orders_job_runs_with_the_requests_id_and_subject_in_its_logs() {
    let redis = RedisServer::start();
    let db = TestDb::sqlite();
    let app = app(&db, &redis).await;
    let item: Value = app
        .client
        .post(app.url("/api/v1/items"))
        .header("authorization", bearer())
        .json(&json!({"sku": "job-1", "name": "Job", "price_cents": 10, "stock": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let res = app
        .client
        .post(app.url("/api/v1/orders"))
        .header("authorization", bearer())
        .header("idempotency-key", "job-order-1")
        .header("x-request-id", "job-req-1")
        .json(&json!({"item_id": item["id"], "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let order: Value = res.json().await.unwrap();
    assert_eq!(order["status"], "accepted");

    let done = wait_long(|v| v["msg"] == "job done" && v["request_id"] == "job-req-1").await;
    assert_eq!(done[0]["subject"], "alice");
    assert_eq!(done[0]["order_id"], order["id"]);
    assert_eq!(done[0]["correlation_id"], "job-req-1");
    let path = format!("/api/v1/orders/{}", order["id"].as_str().unwrap());
    let seen: Value = app
        .client
        .get(app.url(&path))
        .header("authorization", bearer())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["status"], "processed");
}

#[tokio::test]
async fn a_failing_job_is_retried_then_logged_and_counted_as_failed() {
    let redis = RedisServer::start();
    let db = TestDb::sqlite();
    let app = app(&db, &redis).await;
    let settings: JobsSettings = toml_section(JOBS);
    let queue = Jobs::connect(&redis.url(), &settings).await.unwrap();
    assert!(
        queue
            .enqueue(ProcessOrder {
                order_id: "no-such-order".into(),
                request_id: "job-fail-1".into(),
                correlation_id: "job-fail-1".into(),
                subject: "bob".into(),
            })
            .await
    );
    let last = wait_for_log(|v| {
        v["request_id"] == "job-fail-1" && v["msg"] == "job failed; no retries left"
    })
    .await;
    assert_eq!(last[0]["level"], "ERROR");
    assert_eq!(last[0]["attempt"], 3);
    assert!(
        last[0]["error"]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );
    // Nothing runs it again: not the retry policy, not the Redis backend's rescheduling.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let attempts: Vec<i64> = crate::helpers::log_lines(|v| {
        v["request_id"] == "job-fail-1" && v["job"] == "process_order"
    })
    .iter()
    .map(|v| v["attempt"].as_i64().unwrap())
    .collect();
    assert_eq!(
        attempts,
        [1, 2, 3],
        "the first attempt and two retries, no more"
    );
    // Counted in the metrics (each attempt).
    let mut exposition = String::new();
    for _ in 0..50 {
        exposition = app.get("/metrics").await.text().await.unwrap();
        if exposition.contains("palisade_jobs_total{job=\"process_order\",outcome=\"failed\"} 3") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        exposition.contains("palisade_jobs_total{job=\"process_order\",outcome=\"failed\"} 3"),
        "{exposition}"
    );
}

fn toml_section(section: &str) -> JobsSettings {
    let opts = crate::helpers::options_with_file(
        section,
        &[("PALISADE_REDIS__URL", "redis://127.0.0.1:1")],
    );
    palisade_server::config::load(&opts).unwrap().settings.jobs
}

/// Waits up to 15 s for a log line (an idle worker looks for jobs every `poll_interval`).
async fn wait_long(pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    for _ in 0..1500 {
        let lines = crate::helpers::log_lines(&pred);
        if !lines.is_empty() {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "no matching log line; logs:\n{}",
        crate::helpers::all_logs()
    );
}
