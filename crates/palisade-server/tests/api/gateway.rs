//! Gateway mode against a real upstream server that counts what it receives.

use std::{process::Stdio, time::Duration};

use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::{
    helpers::{TestApp, assert_problem, options_with_file, raw_request, spawn_app_with_toml},
    upstream::Upstream,
};

/// A server whose `/svc` prefix goes to `urls`, plus `extra` TOML.
async fn gateway(urls: &[String], upstream_keys: &str, extra: &str) -> TestApp {
    let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    let toml = format!(
        "{extra}\n[[upstreams]]\nprefix = \"/svc\"\nurls = [{}]\n{upstream_keys}\n",
        urls.join(", ")
    );
    spawn_app_with_toml(&toml, &[]).await
}

#[tokio::test]
async fn requests_go_upstream_with_the_prefix_stripped_and_headers_rewritten() {
    let up = Upstream::start().await;
    let app = gateway(&[format!("{}/base", up.url())], "strip_prefix = true", "").await;

    let res = app
        .client
        .get(app.url("/svc/items/7?x=1&y"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("connection", "x-secret")
        .header("x-secret", "must not pass")
        .header("x-end-to-end", "passes")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["path"], "/base/items/7");

    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "GET");
    assert_eq!(s.target, "/base/items/7?x=1&y");
    let h = &s.headers;
    // The client is not a trusted proxy: its forwarding headers are replaced.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(
        h["forwarded"],
        format!("for=127.0.0.1;host=\"127.0.0.1:{}\";proto=http", app.port)
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], format!("127.0.0.1:{}", app.port));
    assert_eq!(h["host"], format!("127.0.0.1:{}", up.port));
    assert_eq!(h["x-request-id"], request_id.as_str());
    assert_eq!(h["x-correlation-id"], request_id.as_str());
    assert_eq!(h["x-end-to-end"], "passes");
    for hop in [
        "x-secret",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
    ] {
        assert!(!h.contains_key(hop), "{hop} was forwarded: {h:?}");
    }

    // Hop-by-hop fields of the response stay behind too.
    let res = app.get("/svc/hop").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-end-to-end"], "kept");
    assert!(!res.headers().contains_key("x-hop"));
    assert!(!res.headers().contains_key("keep-alive"));

    // Paths outside every prefix are the server's own 404.
    let res = app.get("/svcx").await;
    assert_problem(res, 404).await;
    assert_eq!(up.requests(), 2);

    // Keep-alive: sequential requests share one pooled upstream connection.
    for _ in 0..5 {
        assert!(!app.get("/svc/again").await.text().await.unwrap().is_empty());
    }
    assert_eq!(up.requests(), 7);
    assert_eq!(up.connections(), 1, "the pooled connection was not reused");
}

#[tokio::test]
async fn a_trusted_proxys_forwarding_chain_is_extended_with_the_peer() {
    let up = Upstream::start().await;
    let app = gateway(
        &[up.url()],
        "",
        "[client_ip]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    )
    .await;
    let res = app
        .client
        .get(app.url("/svc/x"))
        .header("x-forwarded-for", "203.0.113.7, 10.0.0.1")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = &up.seen()[0].headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 10.0.0.1, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    // Not stripped: the upstream sees the full path.
    assert_eq!(up.seen()[0].target, "/svc/x");
}

#[tokio::test]
async fn an_idempotent_post_reaches_the_upstream_once_and_the_replay_is_identical() {
    let up = Upstream::start().await;
    let app = gateway(&[up.url()], "", "").await;
    let send = || {
        app.client
            .post(app.url("/svc/orders"))
            .header("idempotency-key", "order-42")
            .header("content-type", "application/json")
            .body(r#"{"amount": 42}"#)
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 200);
    let first_body = first.text().await.unwrap();
    let second = send().await.unwrap();
    assert_eq!(second.status(), 200);
    assert!(
        second.headers().contains_key("idempotent-replayed"),
        "{:?}",
        second.headers()
    );
    assert_eq!(second.text().await.unwrap(), first_body);
    assert_eq!(up.requests(), 1, "the replay must not reach the upstream");
}

#[tokio::test]
async fn rate_limits_and_body_limits_refuse_before_the_upstream_sees_anything() {
    let up = Upstream::start().await;
    let app = gateway(
        &[up.url()],
        "[upstreams.policy]\nrate_limit = \"tight\"\nbody_limit = 100\n",
        "[rate_limit.policies.tight]\nquotas = [{ limit = 3, window = \"1m\" }]\n",
    )
    .await;
    let big = "x".repeat(1000);
    let res = app
        .client
        .put(app.url("/svc/upload"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_problem(res, 413).await;
    assert_eq!(up.requests(), 0);
    // The rate limit runs first: the refused upload took one of the 3 requests.

    for _ in 0..2 {
        assert_eq!(app.get("/svc/a").await.status(), 200);
    }
    let res = app.get("/svc/a").await;
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_problem(res, 429).await;
    assert_eq!(
        up.requests(),
        2,
        "the refused request never reached the upstream"
    );
}

#[tokio::test]
async fn auth_refuses_before_the_upstream_sees_anything() {
    let up = Upstream::start().await;
    let app = gateway(
        &[up.url()],
        "[upstreams.policy]\nscopes = [\"orders:write\"]\n",
        "",
    )
    .await;
    let secret = palisade_server::config::DEVELOPMENT_JWT_SECRET;
    let bearer = |scope: &str| {
        format!(
            "Bearer {}",
            palisade_testkit::jwt::hs256(secret, &palisade_testkit::jwt::claims("alice", scope))
        )
    };
    let res = app.get("/svc/orders").await;
    assert_eq!(res.headers()["www-authenticate"], "Bearer realm=\"api\"");
    assert_problem(res, 401).await;
    let tampered = palisade_testkit::jwt::tamper(&bearer("orders:write"));
    let res = app
        .client
        .get(app.url("/svc/orders"))
        .header("authorization", tampered)
        .send()
        .await
        .unwrap();
    assert_problem(res, 401).await;
    let res = app
        .client
        .get(app.url("/svc/orders"))
        .header("authorization", bearer("orders:read"))
        .send()
        .await
        .unwrap();
    let body = assert_problem(res, 403).await;
    assert_eq!(body["required_scopes"], serde_json::json!(["orders:write"]));
    assert_eq!(
        up.requests(),
        0,
        "refused requests never reach the upstream"
    );

    let res = app
        .client
        .get(app.url("/svc/orders"))
        .header("authorization", bearer("orders:read orders:write"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn a_slow_upstream_is_a_504_within_the_response_timeout() {
    let up = Upstream::start().await;
    let app = gateway(&[up.url()], "response_timeout = \"300ms\"", "").await;
    let started = std::time::Instant::now();
    let res = app.get("/svc/slow?ms=5000").await;
    let took = started.elapsed();
    let body = assert_problem(res, 504).await;
    assert!(body["detail"].as_str().unwrap().contains("300ms"), "{body}");
    assert!(
        took < Duration::from_secs(4),
        "answered after {took:?}, not at the timeout"
    );
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn the_response_timeout_starts_when_the_upload_has_been_sent() {
    let up = Upstream::start().await;
    let app = gateway(&[up.url()], "response_timeout = \"300ms\"", "").await;
    // Ten chunks 100 ms apart: about 1 s of upload, well past the 300 ms response timeout.
    let chunks = futures_util::stream::unfold(0u8, |i| async move {
        if i == 10 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((
            Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 1000])),
            i + 1,
        ))
    });
    let res = app
        .client
        .put(app.url("/svc/upload"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["body_len"], 10_000);
}

#[tokio::test]
async fn a_stopped_upstream_is_a_502() {
    let up = Upstream::start().await;
    let app = gateway(&[up.url()], "", "").await;
    assert_eq!(app.get("/svc/a").await.status(), 200);
    up.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let res = app.get("/svc/a").await;
    let body = assert_problem(res, 502).await;
    assert_eq!(body["status"], 502);
}

#[tokio::test]
async fn with_one_of_two_upstreams_dead_every_request_succeeds_and_the_dead_one_is_ejected() {
    let live = Upstream::start().await;
    let dead = format!("http://127.0.0.1:{}", palisade_testkit::free_port());
    let app = gateway(
        &[live.url(), dead.clone()],
        "max_failures = 2\neject_for = \"1m\"",
        "",
    )
    .await;
    // GETs are idempotent: a refused connection is retried on the live URL.
    for i in 0..10 {
        let res = app.get(&format!("/svc/get/{i}")).await;
        assert_eq!(res.status(), 200, "GET {i}");
    }
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let ejected = crate::metrics::sample(
        &metrics,
        &format!("palisade_upstream_ejected{{upstream=\"/svc\",url=\"{dead}\"}}"),
    );
    assert_eq!(ejected, Some(1.0), "{metrics}");
    // Ejected: even POSTs (never retried) all go to the live URL now.
    for i in 0..10 {
        let res = app
            .client
            .post(app.url(&format!("/svc/post/{i}")))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "POST {i}");
    }
    assert_eq!(live.requests(), 20);
}

#[tokio::test]
async fn broken_framing_is_refused_and_never_reaches_the_upstream() {
    let up = Upstream::start().await;
    let app = gateway(&[up.url()], "", "").await;
    let cases = [
        // Invalid chunk size: the body's first frame fails before the upstream is contacted.
        "POST /svc/a HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        // Disagreeing lengths.
        "POST /svc/a HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        // A Transfer-Encoding that does not end in chunked.
        "POST /svc/a HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    ];
    for raw in cases {
        let res = raw_request(app.port, raw).await;
        assert!(res.starts_with("HTTP/1.1 400"), "{raw:?} got {res:?}");
    }
    // Content-Length with Transfer-Encoding and a request hidden after the body: refused,
    // and the hidden request is never read as a request of its own.
    let smuggle = "POST /svc/a HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /svc/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let res = raw_request(app.port, smuggle).await;
    assert!(res.starts_with("HTTP/1.1 400"), "got {res:?}");
    assert_eq!(
        res.matches("HTTP/1.1").count(),
        1,
        "one response only: {res:?}"
    );
    assert_eq!(up.requests(), 0, "{:?}", up.seen());
}

#[tokio::test]
async fn websocket_upgrades_pass_through_or_get_a_501() {
    let up = Upstream::start().await;
    let app = gateway(&[up.url()], "", "").await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    s.write_all(
        b"GET /svc/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status:?}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
    }
    let mut s = reader.into_inner();
    s.write_all(b"ping through the gateway").await.unwrap();
    let mut echoed = [0u8; 24];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&echoed, b"ping through the gateway");

    let off = gateway(&[up.url()], "websocket = false", "").await;
    let res = raw_request(
        off.port,
        "GET /svc/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 501"), "{res:?}");
}

/// `VmHWM` (peak resident set) and `VmRSS` of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[tokio::test]
async fn fifty_mib_up_and_down_stream_through_with_bounded_memory() {
    const SIZE: usize = 50 << 20;
    let up = Upstream::start().await;
    // The real binary in its own process, so its memory is its own.
    let toml = format!(
        "[[upstreams]]\nprefix = \"/svc\"\nurls = [\"{}\"]\n[upstreams.policy]\nbody_limit = {}\n",
        up.url(),
        SIZE * 2
    );
    let opts = options_with_file(&toml, &[]);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .env_clear()
        .env("PALISADE_CONFIG", opts.config_path.as_ref().unwrap())
        .env("PALISADE_SERVER__PORT", "0")
        .env("PALISADE_LOG__FORMAT", "json")
        .current_dir(&opts.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: Value = serde_json::from_str(&line).unwrap_or_default();
            if v["msg"] == "listening" {
                return v["port"].as_u64().unwrap();
            }
        }
        panic!("server exited before listening");
    })
    .await
    .expect("server started");
    // Keep draining its logs.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(
        client
            .get(format!("{base}/svc/warm"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (before, _) = memory_kib(pid);

    // Up: a chunked upload generated as it is sent.
    let chunk = bytes::Bytes::from(vec![b'u'; 64 * 1024]);
    let chunks = futures_util::stream::iter(
        (0..SIZE / chunk.len()).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let res = client
        .put(format!("{base}/svc/upload"))
        // A type `[content_validation]` accepts by default; the bytes are never parsed.
        .header("content-type", "multipart/form-data; boundary=x")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["body_len"], SIZE);

    // Down: counted as it arrives.
    let res = client
        .get(format!("{base}/svc/big?bytes={SIZE}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut stream = res.bytes_stream();
    let mut got = 0usize;
    while let Some(c) = stream.next().await {
        got += c.unwrap().len();
    }
    assert_eq!(got, SIZE);

    let (peak, rss) = memory_kib(pid);
    eprintln!(
        "gateway memory: peak {before} KiB before the transfers, {peak} KiB after 2 x 50 MiB; resident now {rss} KiB"
    );
    // Whole bodies held would add 50 MiB; streaming adds buffers only.
    assert!(
        peak.saturating_sub(before) < 16 * 1024,
        "peak resident memory grew by {} KiB moving 2 x 50 MiB",
        peak - before
    );
    let _ = child.kill().await;
}

#[tokio::test]
async fn bad_upstream_config_is_a_startup_error_naming_the_key() {
    for (toml, key) in [
        (
            "[[upstreams]]\nprefix = \"/svc\"\nurls = [\"https://x\"]\n",
            "upstreams[0].urls[0]",
        ),
        (
            "[[upstreams]]\nprefix = \"svc\"\nurls = [\"http://x\"]\n",
            "upstreams[0].prefix",
        ),
        (
            "[[upstreams]]\nprefix = \"/svc\"\nurls = []\n",
            "upstreams[0].urls",
        ),
        (
            "[[upstreams]]\nprefix = \"/svc\"\nurls = [\"http://x\"]\n[upstreams.policy]\nrate_limit = \"nope\"\n",
            "upstreams[0].policy.rate_limit",
        ),
        (
            "[[upstreams]]\nprefix = \"/svc\"\nurls = [\"http://x\"]\nbogus = 1\n",
            "bogus",
        ),
    ] {
        let err = palisade_server::config::load(&options_with_file(toml, &[])).unwrap_err();
        assert!(err.to_string().contains(key), "{toml}: {err}");
    }
}
