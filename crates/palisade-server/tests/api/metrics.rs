//! `/metrics` in the real server: exact counts for a scripted mix of requests, labels that
//! stay bounded, the in-flight gauge after a cancelled request, promtool's verdict, the
//! separate listener and the token.

use std::time::Duration;

use palisade_server::config::load;

use crate::helpers::{TestApp, options_with_file, spawn_app_with, spawn_app_with_toml};

/// The value of the sample whose line starts with `series` (name and labels, exactly).
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn requests(method: &str, route: &str, status: u16) -> String {
    format!("http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}")
}

async fn scrape(app: &TestApp) -> String {
    let res = app.get("/metrics").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    res.text().await.unwrap()
}

/// Scrapes `url` until `done` holds for the exposition (bounded), and returns it.
async fn scrape_until(app: &TestApp, url: &str, done: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    for _ in 0..100 {
        text = app
            .client
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if done(&text) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition never held; last scrape:\n{text}");
}

const MIX: &str = r#"
[rate_limit.policies.default]
algorithm = "sliding_window"
quotas = [{ limit = 8, window = "1m" }]

[body_limit]
max_bytes = 100
"#;

#[tokio::test]
async fn a_scripted_mix_is_counted_exactly_by_method_route_status_and_rejection() {
    // Scraped on the private listener, so the scrapes are not requests of the stack and the
    // in-flight gauge must come back to exactly 0.
    let port = palisade_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let app = spawn_app_with_toml(MIX, &[("PALISADE_METRICS__LISTEN", &listen)]).await;
    // Eight requests use the quota of 8 …
    for id in 1..=3 {
        assert_eq!(app.get(&format!("/items/{id}")).await.status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(app.get("/whoami").await.status(), 200);
    }
    let nanos = std::time::UNIX_EPOCH.elapsed().unwrap().subsec_nanos();
    let raw = format!("/no-such-path-{nanos}");
    assert_eq!(app.get(&raw).await.status(), 404);
    let big = app
        .client
        .post(app.url("/echo"))
        .header("content-type", "application/json")
        .body(format!("\"{}\"", "x".repeat(200)))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    // … one of them cancelled by the client mid-request …
    let cancelled = app
        .client
        .get(app.url("/sleep/metrics-cancel?ms=5000"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(cancelled.unwrap_err().is_timeout());
    // … so these two are refused.
    for id in 4..=5 {
        assert_eq!(app.get(&format!("/items/{id}")).await.status(), 429);
    }

    // The cancelled request is recorded once the server has dropped it.
    let url = format!("http://{listen}/metrics");
    let text = scrape_until(&app, &url, |t| {
        sample(t, &requests("GET", "/sleep/{name}", 499)).is_some()
    })
    .await;
    let expect = [
        (requests("GET", "/items/{id}", 200), 3.0),
        (requests("GET", "/items/{id}", 429), 2.0),
        (requests("GET", "/whoami", 200), 2.0),
        (requests("GET", "unmatched", 404), 1.0),
        (requests("POST", "/echo", 413), 1.0),
        (requests("GET", "/sleep/{name}", 499), 1.0),
        (
            "http_rejections_total{layer=\"rate_limit\",reason=\"quota_exceeded\"}".into(),
            2.0,
        ),
        (
            "http_rejections_total{layer=\"body_limit\",reason=\"too_large\"}".into(),
            1.0,
        ),
        (
            "http_rejections_total{layer=\"timeout\",reason=\"deadline\"}".into(),
            0.0,
        ),
        (
            "http_request_duration_seconds_count{method=\"GET\",route=\"/items/{id}\"}".into(),
            5.0,
        ),
        (
            "http_response_size_bytes_count{method=\"GET\",route=\"/whoami\"}".into(),
            2.0,
        ),
        // Nothing is in flight: the cancelled request left the gauge when it was dropped.
        ("http_requests_in_flight".into(), 0.0),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&text, &series), Some(value), "{series} in:\n{text}");
    }
    assert!(
        !text.contains("no-such-path"),
        "raw paths never become labels"
    );
    assert!(
        !text.contains("status=\"200\"} 0"),
        "no zero series for statuses"
    );
    // Every request above is in exactly one series.
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("http_requests_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, 10.0, "{text}");
    // Response sizes are the bytes sent: the two /whoami bodies are JSON objects.
    let whoami_bytes = sample(
        &text,
        "http_response_size_bytes_sum{method=\"GET\",route=\"/whoami\"}",
    )
    .unwrap();
    assert!(whoami_bytes > 100.0, "{whoami_bytes}");
}

#[tokio::test]
async fn the_exposition_has_process_build_and_stack_families() {
    let app = spawn_app_with(&[]).await;
    let text = scrape(&app).await;
    for family in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
        "palisade_load_shed_in_flight",
        "palisade_load_shed_queued",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing in:\n{text}"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        text.contains(&format!("palisade_build_info{{version=\"{version}\"")),
        "{text}"
    );
}

#[tokio::test]
async fn the_exposition_passes_promtool_check_metrics() {
    let app = spawn_app_with_toml(MIX, &[]).await;
    app.get("/items/1").await;
    app.get("/nope").await;
    let text = scrape(&app).await;
    let out = promtool(&["check", "metrics"], Some(&text));
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}\n{}\n--- exposition:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `promtool` with `args`, `stdin` piped in. Fails, saying how to get it, when absent.
pub(crate) fn promtool(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use std::{
        io::Write,
        process::{Command, Stdio},
    };
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}); install Debian's `prometheus` package \
                 (apt-get install prometheus), which ./scripts/test does when it is missing"
            )
        });
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn a_separate_listener_serves_metrics_behind_the_token_and_the_main_port_does_not() {
    let port = palisade_testkit::free_port();
    let token = "scrape-token-0123456789abcdef";
    let app = spawn_app_with(&[
        ("PALISADE_METRICS__LISTEN", &format!("127.0.0.1:{port}")),
        ("PALISADE_METRICS__TOKEN", token),
    ])
    .await;
    assert_eq!(app.get("/whoami").await.status(), 200);
    assert_eq!(app.get("/metrics").await.status(), 404);
    let url = format!("http://127.0.0.1:{port}/metrics");
    let refused = app.client.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        refused.headers()["www-authenticate"],
        "Bearer realm=\"metrics\""
    );
    let wrong = app
        .client
        .get(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let text = app
        .client
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(&text, &requests("GET", "/whoami", 200)),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, &requests("GET", "unmatched", 404)), Some(1.0));
}

#[tokio::test]
async fn the_timing_header_is_on_in_development_and_off_in_production() {
    let dev = spawn_app_with(&[]).await;
    let res = dev.get("/whoami").await;
    let timing = res.headers()["server-timing"].to_str().unwrap().to_owned();
    assert!(timing.starts_with("app;dur="), "{timing}");

    let prod = spawn_app_with(&[
        ("PALISADE_ENV", "production"),
        ("PALISADE_TRUSTED_HOSTS__ALLOWED_HOSTS", "127.0.0.1"),
        ("PALISADE_METRICS__ENABLED", "false"),
    ])
    .await;
    let res = prod.get("/whoami").await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("server-timing").is_none());
    assert!(res.headers().get("x-response-time").is_none());
}

#[test]
fn production_refuses_public_metrics_without_a_token_and_weak_tokens() {
    let prod = "env = \"production\"\n[trusted_hosts]\nallowed_hosts = [\"api.example.com\"]\n";
    let err = load(&options_with_file(prod, &[])).unwrap_err().to_string();
    assert!(err.contains("metrics.token"), "{err}");

    let weak = format!("{prod}[metrics]\ntoken = \"0123456789abcdef\"\n");
    let err = load(&options_with_file(&weak, &[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("metrics.token") && err.contains("production"),
        "{err}"
    );
    assert!(
        !err.contains("0123456789abcdef"),
        "the token is never printed: {err}"
    );

    let private = format!("{prod}[metrics]\nlisten = \"127.0.0.1:9464\"\n");
    load(&options_with_file(&private, &[])).expect("a private listener needs no token");
}

/// The repository's `deploy/` directory.
fn deploy_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = deploy_dir().join("prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let mut cmd_args = args.to_vec();
        let file = dir.join(cmd_args.pop().unwrap());
        let file = file.to_str().unwrap();
        cmd_args.push(file);
        let out = promtool(&cmd_args, None);
        assert!(
            out.status.success(),
            "promtool {cmd_args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The `expr:` values of a rules file, single-line or `|` blocks.
fn alert_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(value) = line.trim_start().strip_prefix("expr: ") else {
            continue;
        };
        if value.trim() != "|" {
            exprs.push(value.to_owned());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.len() - l.trim_start().len() > indent)
            .map(|l| l.trim())
            .collect();
        exprs.push(block.join(" "));
    }
    exprs
}

/// Metric names (`http_…`, `process_…`, `palisade_…`) used in a PromQL expression, without
/// the histogram suffixes.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| {
            ["http_", "process_", "palisade_"]
                .iter()
                .any(|p| t.starts_with(p))
        })
        .map(|t| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| t.strip_suffix(s))
                .unwrap_or(t)
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn every_dashboard_and_alert_query_is_valid_promql_naming_a_metric_the_server_exports() {
    // A server with every optional family: Redis-backed stores and a route breaker.
    let redis = palisade_testkit::RedisServer::start();
    let toml = r#"
[rate_limit]
store = "redis"

[idempotency]
store = "redis"

[circuit_breaker]
routes = [{ path = "/status/*" }]
"#;
    let app = spawn_app_with_toml(toml, &[("PALISADE_REDIS__URL", &redis.url())]).await;
    app.get("/whoami").await;
    let text = scrape(&app).await;
    let exported: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_dir().join("grafana/palisade-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is valid JSON");
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let alerts = std::fs::read_to_string(deploy_dir().join("prometheus/alerts.yml")).unwrap();
    for name in [
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "palisade_",
    ] {
        assert!(alerts.contains(name));
    }
    exprs.extend(alert_exprs(&alerts));
    for expr in &exprs {
        let names = metric_names(expr);
        // `up` is Prometheus' own.
        assert!(
            !names.is_empty() || expr.starts_with("up{"),
            "no metric in {expr}"
        );
        for name in names {
            assert!(
                exported.contains(name.as_str()),
                "{name} (in `{expr}`) is not exported; the server has: {exported:?}"
            );
        }
    }

    // promtool parses each dashboard query as a recording rule (Grafana's variables filled).
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$job", "palisade");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::Value::from(expr)
        ));
    }
    let path = crate::helpers::scratch_dir("dashboard").join("queries.yml");
    std::fs::write(&path, rules).unwrap();
    let out = promtool(&["check", "rules", path.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "a dashboard query is not valid PromQL:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
