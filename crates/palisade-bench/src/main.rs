//! `palisade-bench`: the load harness.
//!
//! Runs bare axum, palisade-server with its full default stack, and variants with one layer
//! switched off by configuration, **interleaved** round by round so machine drift hits all
//! alike. The server is pinned to core 0 and `wrk` to core 1; for each run it records req/s,
//! p50 and p99 latency (wrk's `--latency`) and the server's CPU time per request (utime and
//! stime of the whole process and its children from `/proc/<pid>/stat`). It prints medians
//! over the rounds, the ratios to bare axum, and the per-layer cost (full stack minus the
//! variant without it).
//!
//! The gateway variants put a proxy on core 0 in front of one shared upstream (`bench-bare`,
//! started once for the run and pinned to core 1 next to wrk): the real `palisade` binary in
//! gateway mode (`[[upstreams]] prefix = "/"`), and nginx (one worker, upstream keep-alive) for
//! comparison; `upstream` hits that upstream directly, the ceiling of every proxied run.
//!
//! The API variants (`api-sqlite-read`, `api-sqlite-create`, `api-postgres-read`,
//! `api-postgres-create`; only when named with `--only`) run the `palisade` API server over
//! a fresh database per run: reading one item by id, or creating items through a `wrk` script
//! (a bearer token, a new SKU per request). The PostgreSQL ones need the local server that
//! `./scripts/test` sets up, or `PALISADE_BENCH_POSTGRES_URL`.
//!
//! ```text
//! palisade-bench [--smoke] [--rounds N] [--duration SECS] [--connections N]
//!                [--only NAME,NAME] [--out FILE]
//! ```
//!
//! `--smoke` runs bare, full, the Redis-backed variant, gateway and nginx once for one second
//! each: proof that the harness works, no claim about speed. Run through `bench/run`, which
//! installs wrk, redis-server and nginx and builds release binaries.

// The whole stack is one nested service type; proving its future `Send`/`Unpin` takes more
// than the default 128 steps of trait resolution.
#![recursion_limit = "256"]

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use palisade_bench::BENCH_PATH;

/// One server configuration under test.
struct Variant {
    name: &'static str,
    what: &'static str,
    server: Server,
    /// `PALISADE_*` variables over the bench config (palisade servers only).
    env: &'static [(&'static str, &'static str)],
    /// For "one layer off" variants: the layer whose cost `full - this` measures.
    layer: Option<&'static str>,
    /// Runs against the harness's own throwaway `redis-server` (pinned with the load
    /// generator, on core 1).
    redis: bool,
}

/// The config every palisade variant reads: the default stack, with a rate-limit quota no
/// benchmark reaches, so every request takes the allowed path (the limiter's full cost:
/// decision plus headers) instead of measuring cheap 429s. The timing header is off, as in
/// production.
const BENCH_CONFIG: &str = r#"
[rate_limit.policies.default]
quotas = [{ limit = 4000000000, window = "1s" }]

[response_time]
header = "off"
"#;

/// What a variant runs on core 0, and so what `wrk` talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    /// A harness binary serving `/bench` itself.
    Own(&'static str),
    /// The `palisade` binary in gateway mode, proxying every path to the upstream.
    Gateway,
    /// nginx, one worker, proxying to the upstream over keep-alive connections.
    Nginx,
    /// No proxy: `wrk` talks to the upstream (on core 1) directly.
    Upstream,
    /// The `palisade` API server (database, resources): reading one item, or creating items
    /// (a `wrk` script posts a fresh SKU each time), on SQLite or PostgreSQL.
    Api { postgres: bool, create: bool },
}

impl Server {
    /// Whether the variant needs the shared upstream.
    fn uses_upstream(self) -> bool {
        matches!(self, Self::Gateway | Self::Nginx | Self::Upstream)
    }
}

/// The stack cut down to what cannot be switched off.
const MINIMAL_ENV: &[(&str, &str)] = &[
    ("PALISADE_LOG__ACCESS_LOG", "false"),
    ("PALISADE_SECURITY_HEADERS__ENABLED", "false"),
    ("PALISADE_RATE_LIMIT__ENABLED", "false"),
    ("PALISADE_CONTENT_VALIDATION__ENABLED", "false"),
    ("PALISADE_LOAD_SHED__ENABLED", "false"),
    ("PALISADE_TIMEOUT__ENABLED", "false"),
    ("PALISADE_IDEMPOTENCY__ENABLED", "false"),
    ("PALISADE_METRICS__ENABLED", "false"),
    ("PALISADE_AUTH__ENABLED", "false"),
    ("PALISADE_CACHE_CONTROL__ENABLED", "false"),
];

const VARIANTS: &[Variant] = &[
    Variant {
        name: "bare",
        what: "axum 0.8, axum::serve, no middleware",
        server: Server::Own("bench-bare"),
        env: &[],
        layer: None,
        redis: false,
    },
    Variant {
        name: "full",
        what: "palisade default stack, JSON access log to a file",
        server: Server::Own("bench-palisade"),
        env: &[],
        layer: None,
        redis: false,
    },
    Variant {
        name: "no-access-log",
        what: "full minus the access log",
        server: Server::Own("bench-palisade"),
        env: &[("PALISADE_LOG__ACCESS_LOG", "false")],
        layer: Some("access log (JSON line, background writer)"),
        redis: false,
    },
    Variant {
        name: "no-security-headers",
        what: "full minus the security headers",
        server: Server::Own("bench-palisade"),
        env: &[("PALISADE_SECURITY_HEADERS__ENABLED", "false")],
        layer: Some("security headers"),
        redis: false,
    },
    Variant {
        name: "no-rate-limit",
        what: "full minus the rate limiter",
        server: Server::Own("bench-palisade"),
        env: &[("PALISADE_RATE_LIMIT__ENABLED", "false")],
        layer: Some("rate limit (in memory, per IP, headers)"),
        redis: false,
    },
    Variant {
        name: "no-metrics",
        what: "full minus Prometheus metrics",
        server: Server::Own("bench-palisade"),
        env: &[("PALISADE_METRICS__ENABLED", "false")],
        layer: Some("metrics (route match, counters, histograms, in-flight)"),
        redis: false,
    },
    Variant {
        name: "no-auth",
        what: "full minus auth (no credentials sent: route lookup and header checks only)",
        server: Server::Own("bench-palisade"),
        env: &[("PALISADE_AUTH__ENABLED", "false")],
        layer: Some("auth (anonymous request on a public route)"),
        redis: false,
    },
    Variant {
        name: "no-cache-control",
        what: "full minus Cache-Control rules",
        server: Server::Own("bench-palisade"),
        env: &[("PALISADE_CACHE_CONTROL__ENABLED", "false")],
        layer: Some("cache control (route lookup on GET)"),
        redis: false,
    },
    Variant {
        name: "no-guards",
        what: "full minus content validation, load shedding and the timeouts",
        server: Server::Own("bench-palisade"),
        env: &[
            ("PALISADE_CONTENT_VALIDATION__ENABLED", "false"),
            ("PALISADE_LOAD_SHED__ENABLED", "false"),
            ("PALISADE_TIMEOUT__ENABLED", "false"),
        ],
        layer: Some("guards (content validation, load shedding, timeouts)"),
        redis: false,
    },
    Variant {
        name: "minimal",
        what: "request context, problem fallback, body limit, panic catcher, own serve loop (no metrics)",
        server: Server::Own("bench-palisade"),
        env: MINIMAL_ENV,
        layer: None,
        redis: false,
    },
    Variant {
        name: "plus-trusted-hosts",
        what: "full plus a Host allowlist",
        server: Server::Own("bench-palisade"),
        env: &[(
            "PALISADE_TRUSTED_HOSTS__ALLOWED_HOSTS",
            "127.0.0.1,localhost",
        )],
        layer: None,
        redis: false,
    },
    Variant {
        name: "plus-cors",
        what: "full plus CORS for one origin (requests carry no Origin)",
        server: Server::Own("bench-palisade"),
        env: &[("PALISADE_CORS__ALLOW_ORIGINS", "https://app.example.com")],
        layer: None,
        redis: false,
    },
    Variant {
        name: "redis-rate-limit",
        what: "full with the rate limiter on Redis (one Lua call per request)",
        server: Server::Own("bench-palisade"),
        env: &[("PALISADE_RATE_LIMIT__STORE", "redis")],
        layer: None,
        redis: true,
    },
    Variant {
        name: "gateway",
        what: "palisade binary proxying the upstream: default stack, JSON access log to a file",
        server: Server::Gateway,
        env: &[],
        layer: None,
        redis: false,
    },
    Variant {
        name: "gateway-no-access-log",
        what: "gateway minus the access log",
        server: Server::Gateway,
        env: &[("PALISADE_LOG__ACCESS_LOG", "false")],
        layer: None,
        redis: false,
    },
    Variant {
        name: "gateway-minimal",
        what: "gateway with the stack cut as in minimal: the proxy path itself",
        server: Server::Gateway,
        env: MINIMAL_ENV,
        layer: None,
        redis: false,
    },
    Variant {
        name: "nginx",
        what: "nginx, 1 worker, upstream keep-alive 64, buffered access log to a file",
        server: Server::Nginx,
        env: &[],
        layer: None,
        redis: false,
    },
    Variant {
        name: "api-sqlite-read",
        what: "palisade API server, GET /api/v1/items/{id} (ETag), embedded SQLite",
        server: Server::Api {
            postgres: false,
            create: false,
        },
        env: &[],
        layer: None,
        redis: false,
    },
    Variant {
        name: "api-sqlite-create",
        what: "palisade API server, POST /api/v1/items (bearer JWT, validation, INSERT), SQLite",
        server: Server::Api {
            postgres: false,
            create: true,
        },
        env: &[],
        layer: None,
        redis: false,
    },
    Variant {
        name: "api-postgres-read",
        what: "as api-sqlite-read, on the local PostgreSQL (fresh database per run)",
        server: Server::Api {
            postgres: true,
            create: false,
        },
        env: &[],
        layer: None,
        redis: false,
    },
    Variant {
        name: "api-postgres-create",
        what: "as api-sqlite-create, on the local PostgreSQL",
        server: Server::Api {
            postgres: true,
            create: true,
        },
        env: &[],
        layer: None,
        redis: false,
    },
    Variant {
        name: "upstream",
        what: "the upstream alone (bench-bare on core 1 with wrk): the proxies' ceiling",
        server: Server::Upstream,
        env: &[],
        layer: None,
        redis: false,
    },
];

struct Options {
    rounds: usize,
    duration: u64,
    connections: u32,
    only: Option<Vec<String>>,
    out: Option<PathBuf>,
    smoke: bool,
    /// Count instructions under callgrind instead of timing (`--instructions`).
    instructions: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us: f64,
    user_us: f64,
    requests: u64,
    /// `--instructions`: user-space instructions the server executed per request.
    instructions: f64,
    /// Responses other than 2xx/3xx: a run with any measured something else (a proxy
    /// answering 502, a limiter answering 429).
    non_2xx: u64,
}

/// What every run shares: where binaries, logs and configs are, the helpers on core 1.
struct Bench {
    bin_dir: PathBuf,
    /// Access logs (palisade's and nginx's), one file per variant, removed at the end.
    log_dir: PathBuf,
    /// nginx's prefix: its generated config, pid file, error log and temp directories.
    nginx_dir: PathBuf,
    /// `PALISADE_*` variables every palisade variant gets.
    shared_env: Vec<(String, String)>,
    /// The bench config plus `[[upstreams]]` to the upstream, for the gateway variants.
    gateway_config: PathBuf,
    /// The shared upstream and its port.
    upstream: Option<(Child, u16)>,
    redis: Option<(Child, String)>,
    clk_tck: f64,
    /// `--instructions`: servers run under callgrind, their profiles written here.
    callgrind: Option<PathBuf>,
}

fn main() {
    let opts = parse_args();
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .expect("binary directory");
    let variants: Vec<&Variant> = VARIANTS
        .iter()
        .filter(|v| match &opts.only {
            Some(names) => v.name == "bare" || names.iter().any(|n| n == v.name),
            // The API variants need PostgreSQL: only when named.
            None if v.name.starts_with("api-") => false,
            None => {
                !opts.smoke
                    || matches!(
                        v.name,
                        "bare" | "full" | "redis-rate-limit" | "gateway" | "nginx"
                    )
            }
        })
        // Under callgrind only palisade's own processes run (and bare axum, the baseline).
        .filter(|v| !opts.instructions || !matches!(v.server, Server::Nginx | Server::Upstream))
        .collect();
    let bench = Bench::start(&bin_dir, &variants, opts.instructions);

    eprintln!(
        "palisade-bench: {} variants x {} rounds x {} s, {} connections; server on core 0, wrk on core 1",
        variants.len(),
        opts.rounds,
        opts.duration,
        opts.connections
    );
    let mut samples: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
    for round in 1..=opts.rounds {
        for v in &variants {
            let s = bench.run_one(v, &opts);
            eprintln!(
                "  round {round} {:<22} {:>9.0} req/s  p50 {:>7.1} us  p99 {:>7.1} us  cpu {:>5.2} us/req{}",
                v.name,
                s.rps,
                s.p50_us,
                s.p99_us,
                s.cpu_us,
                if s.non_2xx > 0 {
                    format!("  NON-2XX {}", s.non_2xx)
                } else if opts.instructions {
                    format!("  (under callgrind) {:.0} instructions/req", s.instructions)
                } else {
                    String::new()
                }
            );
            samples.entry(v.name).or_default().push(s);
        }
    }
    bench.stop();

    let medians: BTreeMap<&str, Sample> = samples.iter().map(|(k, v)| (*k, median(v))).collect();
    let report = if opts.instructions {
        render_instructions(&variants, &medians, &opts)
    } else {
        render(&variants, &medians, &opts)
    };
    println!("{report}");
    if let Some(out) = &opts.out {
        std::fs::write(out, &report).expect("write report");
        eprintln!("palisade-bench: report written to {}", out.display());
    }
    if medians.values().any(|s| s.requests == 0) {
        eprintln!("palisade-bench: a variant served no requests");
        std::process::exit(1);
    }
    for (name, s) in &medians {
        if s.non_2xx > 0 {
            eprintln!(
                "palisade-bench: {name} answered {} requests with neither 2xx nor 3xx in a run",
                s.non_2xx
            );
            std::process::exit(1);
        }
    }
}

fn parse_args() -> Options {
    let mut o = Options {
        rounds: 3,
        duration: 5,
        connections: 64,
        only: None,
        out: None,
        smoke: false,
        instructions: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--smoke" => {
                o.smoke = true;
                o.rounds = 1;
                o.duration = 1;
            }
            "--rounds" => o.rounds = val().parse().unwrap_or_else(|_| usage("--rounds N")),
            "--duration" => o.duration = val().parse().unwrap_or_else(|_| usage("--duration SECS")),
            "--connections" => {
                o.connections = val().parse().unwrap_or_else(|_| usage("--connections N"))
            }
            "--instructions" => {
                o.instructions = true;
                o.rounds = 1;
                o.duration = 10;
                o.connections = 16;
            }
            "--only" => o.only = Some(val().split(',').map(str::to_owned).collect()),
            "--out" => o.out = Some(PathBuf::from(val())),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if o.rounds == 0 || o.duration == 0 {
        usage("--rounds and --duration must be at least 1");
    }
    o
}

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("palisade-bench: {msg}");
    }
    let names: Vec<_> = VARIANTS.iter().map(|v| v.name).collect();
    eprintln!(
        "usage: palisade-bench [--smoke] [--instructions] [--rounds N] [--duration SECS] [--connections N] [--only NAME,..] [--out FILE]\nvariants: {}",
        names.join(", ")
    );
    std::process::exit(2);
}

impl Bench {
    /// Writes the configs and starts the helpers the chosen variants need.
    fn start(bin_dir: &Path, variants: &[&Variant], instructions: bool) -> Self {
        let log_dir = std::env::temp_dir().join(format!("palisade-bench-{}", std::process::id()));
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let config = log_dir.join("bench.toml");
        let callgrind = instructions.then(|| log_dir.join("callgrind"));
        std::fs::write(&config, BENCH_CONFIG).expect("bench config");
        let redis = variants.iter().any(|v| v.redis).then(start_redis);
        let upstream = variants
            .iter()
            .any(|v| v.server.uses_upstream())
            .then(|| start_upstream(bin_dir));
        let mut shared_env = vec![("PALISADE_CONFIG".to_owned(), config.display().to_string())];
        if let Some((_, url)) = &redis {
            shared_env.push(("PALISADE_REDIS__URL".to_owned(), url.clone()));
        }
        // Arrays of tables cannot come from env vars: the gateway reads a file of its own.
        let gateway_config = log_dir.join("gateway.toml");
        if let Some((_, port)) = &upstream {
            let upstreams =
                format!("\n[[upstreams]]\nprefix = \"/\"\nurls = [\"http://127.0.0.1:{port}\"]\n");
            std::fs::write(&gateway_config, format!("{BENCH_CONFIG}{upstreams}"))
                .expect("gateway config");
        }
        // Under the target directory (next to `release/`), kept for inspection.
        let nginx_dir = bin_dir
            .parent()
            .unwrap_or(bin_dir)
            .join("palisade-bench-nginx");
        Self {
            bin_dir: bin_dir.to_owned(),
            log_dir,
            nginx_dir,
            shared_env,
            gateway_config,
            upstream,
            redis,
            clk_tck: clock_ticks(),
            callgrind,
        }
    }

    fn stop(mut self) {
        if let Some(dir) = &self.callgrind {
            keep_profiles(dir);
        }
        let _ = std::fs::remove_dir_all(&self.log_dir);
        for (child, _) in self.redis.iter_mut() {
            stop(child);
        }
        for (child, _) in self.upstream.iter_mut() {
            stop(child);
        }
    }

    fn run_one(&self, v: &Variant, opts: &Options) -> Sample {
        let log_file = self.log_dir.join(format!("{}.log", v.name));
        let _ = std::fs::remove_file(&log_file);
        let (mut child, port) = match v.server {
            Server::Upstream => {
                let (_, port) = self.upstream.as_ref().expect("upstream started");
                (None, *port)
            }
            Server::Own(bin) => {
                let port = free_port();
                (
                    Some(self.start_palisade(bin, v, port, &log_file, None)),
                    port,
                )
            }
            Server::Gateway => {
                let port = free_port();
                let config = Some(self.gateway_config.as_path());
                (
                    Some(self.start_palisade("palisade", v, port, &log_file, config)),
                    port,
                )
            }
            Server::Nginx => {
                let port = free_port();
                (Some(self.start_nginx(port, &log_file)), port)
            }
            Server::Api { postgres, .. } => {
                let port = free_port();
                (Some(self.start_api(v, postgres, port, &log_file)), port)
            }
        };
        let pid = match (&child, &self.upstream) {
            (Some(c), _) => c.id(),
            (None, Some((upstream, _))) => upstream.id(),
            (None, None) => unreachable!("a variant without a server of its own uses the upstream"),
        };
        if let Some(c) = &mut child {
            wait_listening(port, c);
        }
        let creates = matches!(v.server, Server::Api { create: true, .. });
        let url = match v.server {
            Server::Api { create: false, .. } => {
                let id = seed_item(port);
                format!("http://127.0.0.1:{port}/api/v1/items/{id}")
            }
            Server::Api { create: true, .. } => format!("http://127.0.0.1:{port}/api/v1/items"),
            _ => format!("http://127.0.0.1:{port}{BENCH_PATH}"),
        };
        // A script of its own for each wrk run: SKUs never repeat (a repeat is a 409).
        let script = || creates.then(|| self.create_script());
        // Warm up: connections, allocator, caches.
        let _ = wrk(&url, opts.connections, 1, script().as_deref());
        let script = script();
        let counted = self.callgrind.as_ref().map(|dir| {
            let file = dir.join(format!("{}.out.1", v.name));
            let _ = std::fs::remove_file(&file);
            callgrind_control("--instr=on", pid);
            file
        });
        let before = proc_cpu(pid);
        let out = wrk(&url, opts.connections, opts.duration, script.as_deref());
        let after = proc_cpu(pid);
        let instructions = counted.map(|file| {
            callgrind_control("--instr=off", pid);
            callgrind_control("--dump", pid);
            callgrind_totals(&file)
        });
        if let Some(c) = &mut child {
            stop(c);
        }
        let requests = parse_requests(&out);
        let per_req = |ticks: f64| {
            if requests == 0 {
                0.0
            } else {
                ticks / self.clk_tck * 1e6 / requests as f64
            }
        };
        Sample {
            rps: parse_field(&out, "Requests/sec:").unwrap_or(0.0),
            p50_us: parse_latency(&out, "50%").unwrap_or(0.0),
            p99_us: parse_latency(&out, "99%").unwrap_or(0.0),
            cpu_us: per_req((after.0 + after.1 - before.0 - before.1) as f64),
            user_us: per_req((after.0 - before.0) as f64),
            requests,
            instructions: instructions.map_or(0.0, |n| n as f64 / requests.max(1) as f64),
            non_2xx: parse_field(&out, "Non-2xx or 3xx responses:").unwrap_or(0.0) as u64,
        }
    }

    /// `program` pinned to core 0; in `--instructions` mode under callgrind, with
    /// instrumentation off until the measured run switches it on.
    fn server_cmd(&self, program: PathBuf, variant: &str) -> Command {
        let Some(dir) = &self.callgrind else {
            return pinned(0, program);
        };
        let _ = std::fs::create_dir_all(dir);
        let mut cmd = pinned(0, "valgrind");
        cmd.args(["--tool=callgrind", "--instr-atstart=no", "--quiet"])
            .arg(format!(
                "--callgrind-out-file={}",
                dir.join(format!("{variant}.out")).display()
            ))
            .arg(program);
        cmd
    }

    /// A palisade server (`bench-palisade`, or the `palisade` binary with `config`) on core 0.
    fn start_palisade(
        &self,
        bin: &str,
        v: &Variant,
        port: u16,
        log_file: &Path,
        config: Option<&Path>,
    ) -> Child {
        let mut cmd = self.server_cmd(self.bin_dir.join(bin), v.name);
        cmd.env("BENCH_PORT", port.to_string())
            .env("PALISADE_SERVER__PORT", port.to_string())
            .env("PALISADE_LOG__FORMAT", "json")
            .env("PALISADE_LOG__OUTPUT", log_file)
            .envs(self.shared_env.iter().map(|(k, v)| (k, v)))
            .envs(config.map(|c| ("PALISADE_CONFIG", c)))
            .envs(v.env.iter().copied());
        spawn(cmd, bin)
    }

    /// The `palisade` API server on core 0 over a fresh database: a new SQLite directory, or
    /// the `palisade_bench` database recreated on PostgreSQL.
    fn start_api(&self, v: &Variant, postgres: bool, port: u16, log_file: &Path) -> Child {
        let mut cmd = self.server_cmd(self.bin_dir.join("palisade"), v.name);
        cmd.env("PALISADE_SERVER__PORT", port.to_string())
            .env("PALISADE_LOG__FORMAT", "json")
            .env("PALISADE_LOG__OUTPUT", log_file)
            .envs(self.shared_env.iter().map(|(k, v)| (k, v)))
            .envs(v.env.iter().copied());
        if postgres {
            cmd.env("PALISADE_DATABASE__URL", fresh_postgres_database());
        } else {
            let dir = self.log_dir.join(format!("data-{}-{port}", v.name));
            let _ = std::fs::remove_dir_all(&dir);
            cmd.env("PALISADE_DATABASE__DATA_DIR", dir);
        }
        spawn(cmd, "palisade")
    }

    /// A `wrk` script posting items with SKUs unique to this run, thread and request.
    fn create_script(&self) -> PathBuf {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = self.log_dir.join(format!("create-{nonce}.lua"));
        let script = format!(
            r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local n = 0
function request()
  n = n + 1
  return wrk.format(nil, nil, nil, string.format('{{"sku":"b{nonce}-%d-%d","name":"Bench item","price_cents":1250,"stock":10}}', tid, n))
end
"#,
            token = bench_token()
        );
        std::fs::write(&path, script).expect("wrk script");
        path
    }

    /// nginx in the foreground on core 0, its config generated for this run's ports.
    fn start_nginx(&self, port: u16, log_file: &Path) -> Child {
        let (_, upstream) = self.upstream.as_ref().expect("upstream started");
        let dir = &self.nginx_dir;
        std::fs::create_dir_all(dir.join("tmp")).expect("nginx prefix dir");
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(dir, port, *upstream, log_file)).expect("nginx.conf");
        let mut cmd = pinned(0, nginx_binary());
        cmd.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off;"]);
        spawn(cmd, "nginx (bench/run installs it)")
    }
}

/// The nginx side of the comparison: one worker (the proxy gets one core, as palisade does),
/// keep-alive to the upstream, the forwarding headers palisade sets, and an access log to a
/// file, buffered as palisade's is (palisade's writer flushes every 50 ms).
fn nginx_conf(dir: &Path, port: u16, upstream: u16, log_file: &Path) -> String {
    let tmp = dir.join("tmp");
    let tmp = tmp.display();
    format!(
        r#"worker_processes 1;
pid {pid};
events {{ worker_connections 4096; }}
http {{
    log_format json escape=json '{{"time":"$time_iso8601","method":"$request_method","path":"$request_uri","status":$status,"bytes":$body_bytes_sent,"duration":$request_time,"request_id":"$request_id","client_ip":"$remote_addr"}}';
    access_log {log} json buffer=64k flush=1s;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream u {{
        server 127.0.0.1:{upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://u;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $proxy_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Request-ID $request_id;
        }}
    }}
}}
"#,
        pid = dir.join("nginx.pid").display(),
        log = log_file.display(),
    )
}

/// `/usr/sbin` is not on every user's `PATH`.
fn nginx_binary() -> PathBuf {
    let sbin = Path::new("/usr/sbin/nginx");
    if sbin.exists() {
        sbin.to_owned()
    } else {
        PathBuf::from("nginx")
    }
}

/// `program` under `taskset -c <core>`, its stdout discarded and stderr shown.
fn pinned(core: u8, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(core.to_string())
        .arg(program)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

fn spawn(mut cmd: Command, what: &str) -> Child {
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {what} (is taskset installed?): {e}"))
}

/// `callgrind_control <what> <pid>`: switches counting on or off, or writes the profile.
fn callgrind_control(what: &str, pid: u32) {
    let ok = Command::new("callgrind_control")
        .args([what, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "callgrind_control {what} {pid} failed (bench/run installs valgrind)"
    );
}

/// The instruction total of a callgrind profile (its `totals:` line).
fn callgrind_totals(file: &Path) -> u64 {
    // The dump is written asynchronously by the profiled process.
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            if let Some(n) = text
                .lines()
                .find_map(|l| l.strip_prefix("totals: "))
                .and_then(|n| n.trim().parse().ok())
            {
                return n;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no callgrind profile at {}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A throwaway `redis-server` on a free port, on the load generator's core.
fn start_redis() -> (Child, String) {
    let port = free_port();
    let mut cmd = pinned(1, "redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"]);
    let mut child = spawn(cmd, "redis-server (bench/run installs it)");
    wait_listening(port, &mut child);
    (child, format!("redis://127.0.0.1:{port}"))
}

/// The proxies' upstream: `bench-bare` on a free port, on the load generator's core, so the
/// proxy under test has core 0 to itself.
fn start_upstream(bin_dir: &Path) -> (Child, u16) {
    let port = free_port();
    let mut cmd = pinned(1, bin_dir.join("bench-bare"));
    cmd.env("BENCH_PORT", port.to_string());
    let mut child = spawn(cmd, "bench-bare");
    wait_listening(port, &mut child);
    (child, port)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_listening(port: u16, child: &mut Child) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server exited before listening: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "server did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn wrk(url: &str, connections: u32, secs: u64, script: Option<&Path>) -> String {
    let mut cmd = pinned(1, "wrk");
    cmd.args(["-t1", "--latency"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"));
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd
        .arg(url)
        .stdout(Stdio::piped())
        .output()
        .expect("wrk runs (bench/run installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A development token with `items:write`, as `palisade token issue` makes it.
fn bench_token() -> String {
    let settings = palisade_server::config::Settings::default();
    palisade_server::tokens::issue(
        &settings,
        &palisade_server::tokens::TokenRequest {
            subject: "bench".into(),
            scopes: vec!["items:write".into()],
            ttl: Duration::from_secs(3600),
            tier: None,
            key_id: None,
            private_key_pem: None,
        },
    )
    .expect("a development token")
}

/// Creates one item over plain HTTP/1.1 and returns its id.
fn seed_item(port: u16) -> String {
    use std::io::{Read, Write};
    let body = r#"{"sku":"seed","name":"Seed item","price_cents":1250,"stock":10}"#;
    let req = format!(
        "POST /api/v1/items HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        bench_token(),
        body.len()
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the API server");
    s.write_all(req.as_bytes()).expect("send");
    let mut res = String::new();
    s.read_to_string(&mut res).expect("read");
    assert!(
        res.starts_with("HTTP/1.1 201"),
        "seeding an item failed: {res}"
    );
    let id = res
        .split("\"id\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the item's id");
    id.to_owned()
}

/// `PALISADE_BENCH_POSTGRES_URL` (a role that may create databases), else the role
/// `./scripts/test` creates; the `palisade_bench` database is dropped and created again.
fn fresh_postgres_database() -> String {
    let admin = std::env::var("PALISADE_BENCH_POSTGRES_URL").unwrap_or_else(|_| {
        "postgres://palisade_test:palisade_test@127.0.0.1:5432/postgres".to_owned()
    });
    for sql in [
        "DROP DATABASE IF EXISTS palisade_bench WITH (FORCE)",
        "CREATE DATABASE palisade_bench",
    ] {
        let ok = Command::new("psql")
            .args([admin.as_str(), "-qc", sql])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "psql could not run {sql:?}; start PostgreSQL (./scripts/test sets it up) or set PALISADE_BENCH_POSTGRES_URL"
        );
    }
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    format!("{base}/palisade_bench")
}

/// (utime, stime) in clock ticks for the whole process (all threads) and its descendants
/// (nginx's worker under its master).
fn proc_cpu(pid: u32) -> (u64, u64) {
    let mut total = (0, 0);
    let mut todo = vec![pid];
    let stats: Vec<(u32, u32, (u64, u64))> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(|p| {
            let (ppid, cpu) = proc_stat(p)?;
            Some((p, ppid, cpu))
        })
        .collect();
    while let Some(p) = todo.pop() {
        for (child, ppid, cpu) in &stats {
            if *child == p {
                total = (total.0 + cpu.0, total.1 + cpu.1);
            }
            if *ppid == p {
                todo.push(*child);
            }
        }
    }
    total
}

/// (ppid, (utime, stime)) of one process.
fn proc_stat(pid: u32) -> Option<(u32, (u64, u64))> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`, which may contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, utime field 14, stime field 15.
    let get = |i: usize| f.get(i - 3).and_then(|s| s.parse::<u64>().ok());
    Some((u32::try_from(get(4)?).ok()?, (get(14)?, get(15)?)))
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn parse_field(out: &str, label: &str) -> Option<f64> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|v| v.trim().parse().ok())
}

fn parse_requests(out: &str) -> u64 {
    out.lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `     99%    2.31ms` → microseconds.
fn parse_latency(out: &str, pct: &str) -> Option<f64> {
    let line = out.lines().map(str::trim).find(|l| l.starts_with(pct))?;
    let value = line.split_whitespace().nth(1)?;
    let (num, unit) = value.split_at(value.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        _ => return None,
    })
}

fn median(samples: &[Sample]) -> Sample {
    let pick = |f: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Sample {
        rps: pick(|s| s.rps),
        p50_us: pick(|s| s.p50_us),
        p99_us: pick(|s| s.p99_us),
        cpu_us: pick(|s| s.cpu_us),
        user_us: pick(|s| s.user_us),
        requests: samples.iter().map(|s| s.requests).min().unwrap_or(0),
        instructions: pick(|s| s.instructions),
        non_2xx: samples.iter().map(|s| s.non_2xx).max().unwrap_or(0),
    }
}

/// The `--instructions` table: user-space instructions per request, exact where the timing
/// table is noisy, and each variant's difference from bare axum and from `full`.
fn render_instructions(
    variants: &[&Variant],
    m: &BTreeMap<&str, Sample>,
    opts: &Options,
) -> String {
    let bare = m.get("bare").map_or(0.0, |s| s.instructions);
    let full = m.get("full").map(|s| s.instructions);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Instructions per request under callgrind (user space of the server process, all its threads; {} s of `wrk -c{}` after a warm-up; {}).\n",
        opts.duration,
        opts.connections,
        cpu_model()
    );
    let _ = writeln!(
        s,
        "| variant | what | instructions/req | × bare | over bare | full minus this |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
    for v in variants {
        let x = m[v.name].instructions;
        let less = full.filter(|_| v.name != "full" && v.name != "bare");
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.2} | {:+.0} | {} |",
            v.name,
            v.what,
            x,
            ratio(x, bare),
            x - bare,
            less.map_or(String::new(), |f| format!("{:+.0}", f - x)),
        );
    }
    s
}

fn render(variants: &[&Variant], m: &BTreeMap<&str, Sample>, opts: &Options) -> String {
    let bare = m.get("bare").copied().unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Machine: {}; {} cores; {} rounds x {} s; {} connections; server (or proxy) pinned to core 0, wrk (1 thread) to core 1 with the proxies' upstream and Redis; medians.\n",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        opts.rounds,
        opts.duration,
        opts.connections
    );
    let _ = writeln!(
        s,
        "| variant | what | req/s | × bare | p50 µs | p99 µs | p99 × bare | CPU µs/req | user µs/req | extra CPU µs/req |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for v in variants {
        let x = m[v.name];
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:+.2} |",
            v.name,
            v.what,
            x.rps,
            ratio(x.rps, bare.rps),
            x.p50_us,
            x.p99_us,
            ratio(x.p99_us, bare.p99_us),
            x.cpu_us,
            x.user_us,
            x.cpu_us - bare.cpu_us
        );
    }
    if let Some(nginx) = m.get("nginx") {
        let _ = writeln!(
            s,
            "\nGateway vs nginx (the proxy on core 0; the upstream and wrk share core 1):\n"
        );
        let _ = writeln!(
            s,
            "| variant | req/s | × nginx | p50 µs | p99 µs | p99 × nginx | proxy CPU µs/req | × nginx |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for v in variants.iter().filter(|v| v.server.uses_upstream()) {
            let x = m[v.name];
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} |",
                v.name,
                x.rps,
                ratio(x.rps, nginx.rps),
                x.p50_us,
                x.p99_us,
                ratio(x.p99_us, nginx.p99_us),
                x.cpu_us,
                ratio(x.cpu_us, nginx.cpu_us),
            );
        }
        let _ = writeln!(
            s,
            "\n(For `upstream` the CPU column is the upstream's own, with no proxy in the path.)"
        );
    }
    if let Some(full) = m.get("full") {
        let layers: Vec<_> = variants.iter().filter(|v| v.layer.is_some()).collect();
        if !layers.is_empty() {
            let _ = writeln!(
                s,
                "\nPer-layer cost (full stack minus the variant without the layer):\n"
            );
            let _ = writeln!(s, "| layer | CPU µs/req | req/s when off |");
            let _ = writeln!(s, "|---|---:|---:|");
            for v in layers {
                let x = m[v.name];
                let _ = writeln!(
                    s,
                    "| {} | {:+.2} | {:.0} |",
                    v.layer.unwrap_or_default(),
                    full.cpu_us - x.cpu_us,
                    x.rps
                );
            }
        }
    }
    s
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Copies the callgrind profiles of an `--instructions` run to `target/callgrind/` (replacing
/// the last run's), for `callgrind_annotate --inclusive=yes target/callgrind/<variant>.out.1`.
fn keep_profiles(dir: &Path) {
    let keep = Path::new("target/callgrind");
    let _ = std::fs::remove_dir_all(keep);
    if std::fs::create_dir_all(keep).is_err() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let _ = std::fs::copy(entry.path(), keep.join(entry.file_name()));
    }
    eprintln!("callgrind profiles kept in {}", keep.display());
}
