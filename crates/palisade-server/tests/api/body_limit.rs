//! Body limits in the real server, spoken to over raw HTTP/1.1 so chunked bodies and bad
//! `Content-Length` headers reach it as a client would send them.

use palisade_testkit::chunked_body;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TestApp, spawn_app, spawn_app_with_toml};

const MIB: usize = 1 << 20;

async fn raw(app: &TestApp, head: &str, body: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    let mut bytes = head.as_bytes().to_vec();
    bytes.extend_from_slice(body);
    // The server may answer and close before reading it all.
    let _ = s.write_all(&bytes).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status(response: &str) -> u16 {
    response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn with_length(app: &TestApp, path: &str, n: usize) -> String {
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {n}\r\nconnection: close\r\n\r\n"
    );
    raw(app, &head, &vec![b'x'; n]).await
}

#[tokio::test]
async fn the_default_limit_is_one_mib_on_the_bytes_that_arrive() {
    let app = spawn_app().await;
    let exact = with_length(&app, "/runs/body-limit-exact", MIB).await;
    assert_eq!(status(&exact), 201, "{}", &exact[..exact.len().min(300)]);
    let over = with_length(&app, "/runs/body-limit-over", MIB + 1).await;
    assert_eq!(status(&over), 413, "{over}");
    assert!(over.contains("connection: close"), "{over}");
    assert!(over.contains("x-request-id"), "{over}");
    assert_eq!(crate::helpers::runs("body-limit-over"), 0);
    // 2 MiB chunked to a handler that never reads it.
    let head = "POST /ignore-body HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    let ignored = raw(&app, head, &chunked_body(2 * MIB)).await;
    assert_eq!(status(&ignored), 413, "{ignored}");
    let small = raw(&app, head, &chunked_body(100)).await;
    assert_eq!(status(&small), 200, "{small}");
}

#[tokio::test]
async fn malformed_or_duplicate_content_length_is_400() {
    let app = spawn_app().await;
    for lengths in [
        "content-length: abc\r\n",
        "content-length: 3\r\ncontent-length: 4\r\n",
    ] {
        let head = format!(
            "POST /ignore-body HTTP/1.1\r\nhost: localhost\r\n{lengths}connection: close\r\n\r\n"
        );
        let res = raw(&app, &head, b"xxxx").await;
        assert_eq!(status(&res), 400, "{lengths:?}: {res}");
    }
}

#[tokio::test]
async fn per_route_limits_come_from_config() {
    let toml = r#"
[body_limit]
max_bytes = 100

[[body_limit.routes]]
path = "/runs/*"
max_bytes = 1000
"#;
    let app = spawn_app_with_toml(toml, &[]).await;
    assert_eq!(
        status(&with_length(&app, "/runs/body-limit-route", 1000).await),
        201
    );
    assert_eq!(status(&with_length(&app, "/ignore-body", 101).await), 413);
    let bad = palisade_server::config::load(&crate::helpers::options_with_file(
        "[[body_limit.routes]]\npath = \"nope\"\nmax_bytes = 1\n",
        &[],
    ))
    .unwrap_err()
    .to_string();
    assert!(bad.contains("body_limit.routes[0].path"), "{bad}");
}
