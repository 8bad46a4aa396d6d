//! Request guards against the real server: timeouts, load shedding, slow clients, content
//! validation, connection limits.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{assert_problem, raw_request, runs, spawn_app_with_toml};

fn status(response: &str) -> u16 {
    response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Reads until the peer closes or `limit` passes; `None` if it is still open then.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one response head and its `Content-Length` body from a kept-alive connection.
async fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before a full response: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if out.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn a_handler_that_sleeps_past_its_timeout_gets_504_and_its_side_effect_never_happens() {
    let toml = r#"
[[timeout.routes]]
path = "/sleep/*"
request = "200ms"
"#;
    let app = spawn_app_with_toml(toml, &[]).await;
    let started = Instant::now();
    let res = app.get("/sleep/timeout-late?ms=1000").await;
    let took = started.elapsed();
    let body = assert_problem(res, 504).await;
    assert_eq!(body["title"], "Request timed out");
    assert!(
        took < Duration::from_millis(1000),
        "answered after {took:?}"
    );
    // Well past the handler's sleep: had its future survived, it would have counted.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        runs("timeout-late"),
        0,
        "the handler's work went on after the timeout"
    );

    let ok = app.get("/sleep/timeout-in-time?ms=10").await;
    assert_eq!(ok.status(), 200);
    assert_eq!(runs("timeout-in-time"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_slow_requests_with_16_slots_and_a_queue_of_32_shed_exactly_the_excess_fast() {
    let toml = r#"
[load_shed]
max_concurrency = 16
max_queue = 32
max_queue_wait = "20s"
"#;
    let app = spawn_app_with_toml(toml, &[]).await;
    // Connected first, so the requests arrive together.
    let mut conns = Vec::new();
    for _ in 0..200 {
        conns.push(TcpStream::connect(("127.0.0.1", app.port)).await.unwrap());
    }
    let request =
        "GET /sleep/shed?ms=1000 HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let sent = Instant::now();
                s.write_all(request.as_bytes()).await.unwrap();
                let out = read_until_closed(&mut s, Duration::from_secs(30))
                    .await
                    .expect("an answer");
                (String::from_utf8_lossy(&out).into_owned(), sent.elapsed())
            })
        })
        .collect();

    // Health stays answered while every slot and queue place is taken.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        assert_eq!(app.get("/livez").await.status(), 200);
    }

    let mut served = 0;
    let mut shed = Vec::new();
    for t in tasks {
        let (response, took) = t.await.unwrap();
        match status(&response) {
            200 => served += 1,
            503 => {
                assert!(response.contains("retry-after: 1\r\n"), "{response}");
                assert!(response.contains("application/problem+json"), "{response}");
                shed.push(took);
            }
            other => panic!("unexpected {other}: {response}"),
        }
    }
    assert_eq!(served, 16 + 32, "the running and the queued are served");
    assert_eq!(shed.len(), 200 - 48, "exactly the excess is shed");
    let slowest = shed.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_millis(100),
        "a shed request waited {slowest:?}"
    );
    assert_eq!(runs("shed"), 48);
}

#[tokio::test]
async fn a_queued_request_that_waits_too_long_is_shed_and_a_cancelled_one_frees_its_slot() {
    let toml = r#"
[load_shed]
max_concurrency = 1
max_queue = 1
max_queue_wait = "200ms"
"#;
    let app = spawn_app_with_toml(toml, &[]).await;
    let port = app.port;
    // Takes the only slot for a while, then is abandoned by its client.
    let mut holder = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    holder
        .write_all(b"GET /sleep/shed-cancel?ms=60000 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waited = app.get("/whoami").await;
    let body = assert_problem(waited, 503).await;
    assert_eq!(body["reason"], "queue_timeout");
    drop(holder);
    // The slot comes back once the server notices the client is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let res = app.get("/whoami").await;
        if res.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cancelled request kept its slot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_headers_a_byte_at_a_time_is_cut_off_while_others_are_served() {
    let toml = "[server]\nheader_read_timeout = \"1s\"\n";
    let app = spawn_app_with_toml(toml, &[]).await;
    let port = app.port;
    let slow = tokio::spawn(async move {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let started = Instant::now();
        let request =
            b"GET /whoami HTTP/1.1\r\nhost: localhost\r\nx-padding: aaaaaaaaaaaaaaaa\r\n\r\n";
        for byte in request {
            if s.write_all(&[*byte]).await.is_err() {
                break;
            }
            let mut buf = [0u8; 1024];
            // A read that ends (EOF or reset) means the server hung up.
            match tokio::time::timeout(Duration::from_millis(250), s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return (started.elapsed(), true),
                Ok(Ok(n)) => panic!(
                    "answered a slow client: {:?}",
                    String::from_utf8_lossy(&buf[..n])
                ),
                Err(_) => {}
            }
        }
        (started.elapsed(), false)
    });
    // Meanwhile ordinary clients are served, each well within the slow client's budget.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(app.get("/whoami").await.status(), 200);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a normal request took {slowest:?}"
    );
    let (after, cut) = slow.await.unwrap();
    assert!(cut, "the slow client sent its whole request in {after:?}");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(3),
        "cut off after {after:?}"
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_close_after_their_timeout_and_silent_ones_at_the_header_timeout()
 {
    let toml = "[server]\nkeep_alive_timeout = \"600ms\"\nheader_read_timeout = \"300ms\"\n";
    let app = spawn_app_with_toml(toml, &[]).await;
    let request = b"GET /whoami HTTP/1.1\r\nhost: localhost\r\n\r\n";
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    s.write_all(request).await.unwrap();
    assert_eq!(status(&read_response(&mut s).await), 200);
    // Idle longer than the header timeout but within keep-alive: still usable.
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.write_all(request).await.unwrap();
    assert_eq!(status(&read_response(&mut s).await), 200);
    // Then idle: closed after the keep-alive timeout, not before.
    let idle = Instant::now();
    let rest = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert_eq!(rest.as_deref(), Some(&[][..]), "closed without a response");
    let after = idle.elapsed();
    assert!(
        after >= Duration::from_millis(500) && after < Duration::from_secs(3),
        "closed after {after:?}"
    );

    // A connection that never sends a byte gets the header timeout.
    let mut silent = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let opened = Instant::now();
    assert!(
        read_until_closed(&mut silent, Duration::from_secs(5))
            .await
            .is_some()
    );
    let after = opened.elapsed();
    assert!(
        after >= Duration::from_millis(250) && after < Duration::from_millis(600),
        "a silent connection closed after {after:?}"
    );
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_and_the_connection_closes() {
    let toml = "[timeout]\nbody_idle = \"300ms\"\n";
    let app = spawn_app_with_toml(toml, &[]).await;
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    s.write_all(
        b"POST /runs/stalled-body HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"a\":",
    )
    .await
    .unwrap();
    let out = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("answered and closed");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status(&text), 408, "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert_eq!(runs("stalled-body"), 0);
}

#[tokio::test]
async fn bodies_of_unlisted_types_get_415_and_malformed_targets_400() {
    let app = spawn_app_with_toml("", &[]).await;
    let res = app
        .client
        .post(app.url("/echo"))
        .header("content-type", "text/csv")
        .body("a,b")
        .send()
        .await
        .unwrap();
    let accept_post = res.headers()["accept-post"].to_str().unwrap().to_owned();
    let body = assert_problem(res, 415).await;
    assert!(accept_post.contains("application/json"), "{accept_post}");
    assert!(body["accepted"].as_array().unwrap().len() >= 2, "{body}");

    let untyped = app
        .client
        .post(app.url("/echo"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(untyped, 415).await;
    let vendor_json = app
        .client
        .post(app.url("/echo"))
        .header(
            "content-type",
            "application/vnd.example+json; charset=utf-8",
        )
        .body("{\"ok\":true}")
        .send()
        .await
        .unwrap();
    assert_eq!(vendor_json.status(), 200);

    for target in [
        "/items/%00",
        "/items/a%zz",
        "/items/a?q=%",
        "/items/1?q=a%00",
    ] {
        let raw = raw_request(
            app.port,
            &format!("GET {target} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status(&raw), 400, "{target}: {raw}");
        assert!(raw.contains("application/problem+json"), "{target}: {raw}");
    }
    assert_eq!(app.get("/items/a%20b?q=%C3%A9").await.status(), 200);
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_a_431_problem() {
    let app = spawn_app_with_toml("", &[]).await;
    let mut many = app.client.get(app.url("/whoami"));
    for i in 0..80 {
        many = many.header(format!("x-h{i}"), "v");
    }
    assert_problem(many.send().await.unwrap(), 431).await;
    let big = app
        .client
        .get(app.url("/whoami"))
        .header("x-big", "a".repeat(40_000))
        .send()
        .await
        .unwrap();
    assert_problem(big, 431).await;
    let fine = app
        .client
        .get(app.url("/whoami"))
        .header("x-big", "a".repeat(8_000))
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), 200);
}

#[tokio::test]
async fn connections_beyond_the_per_ip_limit_are_closed_at_once_and_freed_ones_reused() {
    let toml = "[server]\nmax_connections_per_ip = 3\n";
    let app = spawn_app_with_toml(toml, &[]).await;
    let request = b"GET /whoami HTTP/1.1\r\nhost: localhost\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
        s.write_all(request).await.unwrap();
        assert_eq!(status(&read_response(&mut s).await), 200);
        held.push(s);
    }
    let mut fourth = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let _ = fourth.write_all(request).await;
    let out = read_until_closed(&mut fourth, Duration::from_secs(5))
        .await
        .expect("closed at once");
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));

    drop(held.pop());
    // The server notices the close, then admits a new connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let raw = raw_request(
            app.port,
            "GET /whoami HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
        )
        .await;
        if status(&raw) == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was never reused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_route_breaker_opens_on_failures_answers_fast_then_half_opens_and_closes() {
    let toml = r#"
[circuit_breaker]
minimum_calls = 4
failure_rate_threshold = 50
open_duration = "400ms"
half_open_max_calls = 2
routes = [{ path = "/status/*" }]
"#;
    let app = spawn_app_with_toml(toml, &[]).await;
    for _ in 0..4 {
        assert_eq!(app.get("/status/502").await.status(), 502);
    }
    assert_eq!(runs("status-502"), 4);
    // Open: refused without running the handler, other routes untouched.
    let started = Instant::now();
    let refused = app.get("/status/200").await;
    assert!(refused.headers().contains_key("retry-after"));
    let body = assert_problem(refused, 503).await;
    assert_eq!(body["title"], "Circuit open");
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        runs("status-200"),
        0,
        "the handler ran while the breaker was open"
    );
    assert_eq!(app.get("/whoami").await.status(), 200);
    let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(
        ready["checks"]["circuit_breaker"][0]["status"], "warn",
        "{ready}"
    );

    // After the open duration, probes reach the handler; two successes close it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..2 {
        assert_eq!(app.get("/status/200").await.status(), 200);
    }
    assert_eq!(runs("status-200"), 2);
    for _ in 0..5 {
        assert_eq!(app.get("/status/200").await.status(), 200);
    }
    let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(
        ready["checks"]["circuit_breaker"][0]["status"], "pass",
        "{ready}"
    );
}

#[tokio::test]
async fn geoip_refuses_denied_countries_passes_allowed_and_applies_the_default_to_unknown() {
    let db = palisade_testkit::mmdb::MmdbWriter::new("GeoLite2-Country")
        .country("203.0.113.0/24", "DE")
        .country("198.51.100.0/24", "KP")
        .write_temp();
    let toml = |unknown: &str| {
        format!(
            r#"
[client_ip]
trusted_proxies = ["127.0.0.1/32"]

[geoip]
database = "{}"
deny = ["kp"]
unknown = "{unknown}"
"#,
            db.path().display()
        )
    };
    let get_from = |app: &crate::helpers::TestApp, ip: &str| {
        app.client
            .get(app.url("/whoami"))
            .header("x-forwarded-for", ip)
            .send()
    };
    let app = spawn_app_with_toml(&toml("deny"), &[]).await;
    let denied = assert_problem(get_from(&app, "198.51.100.7").await.unwrap(), 403).await;
    assert_eq!(denied["country"], "KP");
    assert_eq!(get_from(&app, "203.0.113.9").await.unwrap().status(), 200);
    assert_problem(get_from(&app, "192.0.2.1").await.unwrap(), 403).await;
    // Health probes pass whatever the address.
    let livez = app
        .client
        .get(app.url("/livez"))
        .header("x-forwarded-for", "198.51.100.7")
        .send()
        .await
        .unwrap();
    assert_eq!(livez.status(), 200);

    let lenient = spawn_app_with_toml(&toml("allow"), &[]).await;
    assert_eq!(get_from(&lenient, "192.0.2.1").await.unwrap().status(), 200);
    assert_eq!(
        get_from(&lenient, "198.51.100.7").await.unwrap().status(),
        403
    );
}

#[test]
fn a_geoip_database_that_is_not_one_stops_startup_and_a_missing_one_is_a_warning() {
    let garbage = std::env::temp_dir().join(format!("palisade-not-mmdb-{}", std::process::id()));
    std::fs::write(&garbage, b"definitely not a MaxMind database").unwrap();
    let settings = |path: &std::path::Path| {
        let toml = format!(
            "[geoip]\ndatabase = \"{}\"\ndeny = [\"KP\"]\n",
            path.display()
        );
        palisade_server::config::load(&crate::helpers::options_with_file(&toml, &[]))
            .unwrap()
            .settings
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let built = rt.block_on(palisade_server::startup::Application::build_bare(
        &settings(&garbage),
    ));
    let Err(err) = built else {
        panic!("startup accepted a file that is not a MaxMind DB");
    };
    assert!(err.to_string().contains("geoip.database"), "{err}");
    std::fs::remove_file(&garbage).unwrap();
    let missing = std::env::temp_dir().join("palisade-no-such-db.mmdb");
    assert!(
        rt.block_on(palisade_server::startup::Application::build_bare(
            &settings(&missing)
        ))
        .is_ok()
    );
}

#[tokio::test]
async fn an_upgraded_connection_is_not_cut_by_the_header_or_keep_alive_deadlines() {
    let toml = "[server]\nheader_read_timeout = \"300ms\"\nkeep_alive_timeout = \"500ms\"\n";
    let app = spawn_app_with_toml(toml, &[]).await;
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    s.write_all(
        b"GET /upgrade-echo HTTP/1.1\r\nhost: localhost\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert_eq!(status(&String::from_utf8_lossy(&head)), 101);
    // Longer than both deadlines, twice, with traffic in between.
    for word in [&b"ping"[..], b"pong"] {
        tokio::time::sleep(Duration::from_millis(800)).await;
        s.write_all(word).await.unwrap();
        let mut echo = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
            .await
            .expect("echoed in time")
            .expect("the upgraded connection is still open");
        assert_eq!(&echo, word);
    }
}
