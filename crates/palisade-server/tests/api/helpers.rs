//! `spawn_app()` and friends: build the real `Application` through the real config loader.

use std::{
    io::Write,
    path::PathBuf,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use axum::{
    Json,
    routing::{get, post},
};
use palisade_server::{
    config::{LoadOptions, load},
    error::AppJson,
    routes::AppRoutes,
    startup::Application,
};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// Every log line written by any app in this test binary (JSON lines).
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

#[derive(Clone, Copy)]
struct LogSink;

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        if std::env::var_os("TEST_LOG").is_some() {
            std::io::stdout().write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs one JSON subscriber for the whole test binary, writing to [`LOGS`].
pub(crate) fn init_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        tracing_subscriber::fmt()
            .event_format(palisade::logging::ContextFormat::json())
            .with_env_filter("info")
            .with_writer(|| LogSink)
            .init();
    });
}

/// Parsed log lines for which `pred` holds.
pub(crate) fn log_lines(pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let logs = LOGS.lock().unwrap();
    String::from_utf8_lossy(&logs)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| pred(v))
        .collect()
}

/// Raw text of every log line so far.
pub(crate) fn all_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

/// Waits until at least one log line satisfies `pred` (the access log is written when the
/// response body is dropped, a moment after the client has it).
pub(crate) async fn wait_for_log(pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    for _ in 0..200 {
        let lines = log_lines(&pred);
        if !lines.is_empty() {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no matching log line; logs:\n{}", all_logs());
}

/// Routes only tests need: they use the public API exactly as an application would.
pub(crate) fn test_routes() -> AppRoutes {
    AppRoutes::new()
        .route("/whoami", get(whoami))
        .route(
            "/me",
            get(|who: palisade::auth::Principal| async move {
                Json(json!({
                    "subject": who.subject(),
                    "scopes": who.scopes().collect::<Vec<_>>(),
                    "context_subject": palisade::context::current()
                        .and_then(|c| c.subject().map(str::to_owned)),
                }))
            }),
        )
        .route("/panic", get(|| async { panic_route() }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "slow done"
            }),
        )
        .route("/log", get(log_route))
        .route(
            "/echo",
            post(|AppJson(v): AppJson<Value>| async move { Json(v) }),
        )
        .route(
            "/plain-json",
            post(|Json(v): Json<Value>| async move { Json(v) }),
        )
        .route("/items/{id}", get(|| async { "item" }))
        .route("/runs/{name}", post(count_run))
        .route("/sleep/{name}", get(sleep_then_count))
        .route("/status/{code}", get(status_and_count))
        .route("/upgrade-echo", get(upgrade_echo))
        .route("/ignore-body", post(|| async { "ignored" }))
}

/// How many times `/runs/{name}` ran, per name, in this test process.
static RUNS: std::sync::LazyLock<Mutex<std::collections::HashMap<String, usize>>> =
    std::sync::LazyLock::new(Default::default);

/// Runs of `POST /runs/{name}` so far (use a name unique to the test).
pub(crate) fn runs(name: &str) -> usize {
    RUNS.lock().unwrap().get(name).copied().unwrap_or(0)
}

/// Counts a run, takes a moment (so concurrent duplicates overlap), answers 201.
async fn count_run(
    axum::extract::Path(name): axum::extract::Path<String>,
    body: String,
) -> (http::StatusCode, Json<Value>) {
    let run = {
        let mut runs = RUNS.lock().unwrap();
        let n = runs.entry(name.clone()).or_default();
        *n += 1;
        *n
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    (
        http::StatusCode::CREATED,
        Json(json!({ "name": name, "run": run, "body": body })),
    )
}

/// Sleeps `?ms=` milliseconds, then counts a run of `name` (a side effect a timeout must
/// prevent).
async fn sleep_then_count(
    axum::extract::Path(name): axum::extract::Path<String>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, u64>>,
) -> &'static str {
    tokio::time::sleep(Duration::from_millis(q.get("ms").copied().unwrap_or(0))).await;
    *RUNS.lock().unwrap().entry(name).or_default() += 1;
    "slept"
}

/// Answers with `code`, counting a run of `status-{code}`.
async fn status_and_count(axum::extract::Path(code): axum::extract::Path<u16>) -> http::StatusCode {
    *RUNS
        .lock()
        .unwrap()
        .entry(format!("status-{code}"))
        .or_default() += 1;
    http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::BAD_REQUEST)
}

/// Switches to a raw echo protocol (`Upgrade: echo`), as a WebSocket handshake would.
async fn upgrade_echo(mut req: axum::extract::Request) -> axum::response::Response {
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(upgraded) = upgrade.await else { return };
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        let mut buf = [0u8; 1024];
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    axum::response::Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, "echo")
        .body(axum::body::Body::empty())
        .unwrap()
}

fn panic_route() -> &'static str {
    panic!("secret internal state: db password is hunter2")
}

async fn whoami() -> Json<Value> {
    let ctx = palisade::context::current().expect("context in handler");
    Json(json!({
        "request_id": ctx.request_id().as_str(),
        "correlation_id": ctx.correlation_id().as_str(),
        "client_ip": ctx.client_ip().map(|ip| ip.to_string()),
        "https": ctx.is_https(),
    }))
}

async fn log_route() -> &'static str {
    tracing::info!(marker = "in-handler", "inside handler");
    palisade::context::spawn(async {
        tracing::info!(marker = "in-spawned-task", "inside spawned task");
    })
    .await
    .unwrap();
    "logged"
}

/// A running test server.
pub(crate) struct TestApp {
    pub(crate) address: String,
    pub(crate) port: u16,
    pub(crate) client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    pub(crate) server: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// Starts graceful shutdown, as SIGTERM would.
    pub(crate) fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(s) = &self.server {
            s.abort();
        }
    }
}

/// Builds options for the real loader: no process env, no files, port 0, plus `env`.
pub(crate) fn options(env: &[(&str, &str)]) -> LoadOptions {
    let mut vars = vec![
        ("PALISADE_SERVER__PORT".to_owned(), "0".to_owned()),
        ("PALISADE_SERVER__DRAIN_TIMEOUT".to_owned(), "5s".to_owned()),
    ];
    vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    LoadOptions {
        config_path: None,
        env: vars,
        dir: scratch_dir("noconfig"),
        read_dotenv: false,
    }
}

/// Options for the real loader with `toml` as the config file.
pub(crate) fn options_with_file(toml: &str, env: &[(&str, &str)]) -> LoadOptions {
    let mut opts = options(env);
    let path = scratch_dir("config").join("palisade.toml");
    std::fs::write(&path, toml).unwrap();
    opts.config_path = Some(path);
    opts
}

/// Spawns the real application with `toml` as its config file, plus `env`.
pub(crate) async fn spawn_app_with_toml(toml: &str, env: &[(&str, &str)]) -> TestApp {
    spawn_loaded(&options_with_file(toml, env), Vec::new()).await
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Spawns the real application with extra `PALISADE_*` variables.
pub(crate) async fn spawn_app_with(env: &[(&str, &str)]) -> TestApp {
    spawn_app_with_checks(env, Vec::new()).await
}

/// Spawns the real application with extra variables and readiness checks.
pub(crate) async fn spawn_app_with_checks(
    env: &[(&str, &str)],
    checks: Vec<std::sync::Arc<dyn palisade::health::HealthCheck>>,
) -> TestApp {
    spawn_loaded(&options(env), checks).await
}

/// Spawns the API server as `palisade` runs it (database, resources) with `toml`.
pub(crate) async fn spawn_api(toml: &str, env: &[(&str, &str)]) -> TestApp {
    init_logs();
    let loaded = load(&options_with_file(toml, env)).expect("valid test config");
    let app = Application::build(&loaded.settings)
        .await
        .expect("app builds");
    run(app)
}

async fn spawn_loaded(
    opts: &LoadOptions,
    checks: Vec<std::sync::Arc<dyn palisade::health::HealthCheck>>,
) -> TestApp {
    init_logs();
    let loaded = load(opts).expect("valid test config");
    let app = Application::build_with(&loaded.settings, test_routes(), checks)
        .await
        .expect("app builds");
    run(app)
}

fn run(app: Application) -> TestApp {
    let port = app.port();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        shutdown: Some(tx),
        server: Some(server),
    }
}

/// A fresh, empty directory under the system temp dir.
pub(crate) fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "palisade-test-{tag}-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fastrand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Sends raw bytes and returns the raw response (the server closes or we read to a timeout).
pub(crate) async fn raw_request(port: u16, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Asserts an RFC 9457 body whose request id matches the response header; returns the body.
pub(crate) async fn assert_problem(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status().as_u16(), status);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let header_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert_eq!(body["request_id"], header_id.as_str());
    for member in ["type", "title", "detail", "instance"] {
        assert!(body[member].is_string(), "missing {member}: {body}");
    }
    body
}
