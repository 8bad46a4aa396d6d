//! Graceful shutdown: readiness fails at once, in-flight requests finish, new connections are
//! refused; the real binary exits 0 on SIGTERM.

use std::{process::Stdio, time::Duration};

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::spawn_app_with;

#[tokio::test]
async fn shutdown_fails_readiness_drains_in_flight_requests_and_refuses_new_ones() {
    let mut app = spawn_app_with(&[("PALISADE_SERVER__SHUTDOWN_DELAY", "400ms")]).await;
    let slow = tokio::spawn({
        let client = app.client.clone();
        let url = app.url("/slow");
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.trigger_shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;

    // During the delay: still accepting, but not ready.
    let fresh = reqwest::Client::new();
    let res = fresh.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["output"], "shutting down");

    // After the delay: new connections are refused.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let refused = reqwest::Client::new().get(app.url("/livez")).send().await;
    assert!(
        refused.is_err(),
        "a new connection was accepted after the delay"
    );

    // The slow request still completes.
    assert_eq!(slow.await.unwrap(), "slow done");
    let server = app.server.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stopped")
        .unwrap();
}

#[tokio::test]
async fn the_binary_exits_zero_on_sigterm() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .env_clear()
        .env("PALISADE_SERVER__PORT", "0")
        .env("PALISADE_LOG__FORMAT", "json")
        .current_dir(crate::helpers::scratch_dir("sigterm"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["msg"] == "listening" {
                return v["port"].as_u64().unwrap();
            }
        }
        panic!("server exited before listening");
    })
    .await
    .expect("server started");
    let res = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let rid = res.headers()["x-request-id"].to_str().unwrap().to_owned();

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exited")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let mut rest = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        rest.push_str(&line);
        rest.push('\n');
    }
    assert!(rest.contains("shutdown requested"), "{rest}");
    // The binary's JSON access log (written straight into the log batch) has the request.
    let access: serde_json::Value = rest
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"] == "palisade::access")
        .unwrap_or_else(|| panic!("no access line in {rest}"));
    assert_eq!(access["request_id"], rid.as_str());
    assert_eq!(access["correlation_id"], rid.as_str());
    assert_eq!(access["route"], "/readyz");
    assert_eq!(access["status"], 200);
    assert_eq!(access["client_ip"], "127.0.0.1");
    assert_eq!(access["completed"], true);
    assert!(access["duration_ms"].as_f64().is_some());
    assert!(access["ts"].as_str().unwrap().ends_with('Z'));
    assert!(rest.contains("\"stopped\""), "{rest}");
}
