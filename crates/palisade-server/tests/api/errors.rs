//! Every error is problem+json with the request id: unknown route, wrong method, malformed
//! JSON, panics.

use crate::helpers::{all_logs, assert_problem, spawn_app, wait_for_log};

#[tokio::test]
async fn an_unknown_route_is_a_404_problem() {
    let app = spawn_app().await;
    let body = assert_problem(app.get("/no/such/route").await, 404).await;
    assert_eq!(body["title"], "Not Found");
}

#[tokio::test]
async fn a_wrong_method_is_a_405_problem_that_keeps_allow() {
    let app = spawn_app().await;
    let res = app.client.delete(app.url("/whoami")).send().await.unwrap();
    let allow = res.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET"), "{allow}");
    assert_problem(res, 405).await;
}

#[tokio::test]
async fn malformed_json_is_a_400_problem_with_the_parser_explanation() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url("/echo"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let body = assert_problem(res, 400).await;
    assert!(body["detail"].as_str().unwrap().contains("JSON"), "{body}");
}

#[tokio::test]
async fn a_missing_json_content_type_is_a_415_problem() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url("/echo"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(res, 415).await;
}

#[tokio::test]
async fn plain_axum_json_rejections_are_turned_into_problems_too() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url("/plain-json"))
        .header("content-type", "application/json")
        .body("[1,")
        .send()
        .await
        .unwrap();
    assert_problem(res, 400).await;
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_problem_logged_with_its_request_id() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/panic"))
        .header("x-request-id", "panic-1")
        .send()
        .await
        .unwrap();
    let text_body = assert_problem(res, 500).await.to_string();
    assert!(
        !text_body.contains("hunter2"),
        "panic text leaked: {text_body}"
    );
    let lines =
        wait_for_log(|v| v["msg"] == "handler panicked" && v["request_id"] == "panic-1").await;
    assert!(lines[0]["panic"].as_str().unwrap().contains("hunter2"));
    wait_for_log(|v| {
        v["target"] == "palisade::access" && v["request_id"] == "panic-1" && v["status"] == 500
    })
    .await;
    // The server keeps serving.
    assert_eq!(app.get("/livez").await.status(), 200);
    let _ = all_logs();
}
