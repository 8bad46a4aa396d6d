//! `/livez` and `/readyz`.

use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn livez_and_readyz_pass_once_started() {
    let app = spawn_app().await;
    let res = app.get("/livez").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/health+json");
    assert_eq!(res.headers()["cache-control"], "no-store");
    let res = app.get("/readyz").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "pass");
}
