//! The real binary's configuration handling: layering, `config check`, `config explain`, and
//! one clear line for each kind of invalid value.

use std::{path::Path, process::Output};

use crate::helpers::scratch_dir;

fn palisade(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Runs `config check` and expects exit 2 with one stderr line containing every `needle`.
fn assert_rejected(dir: &Path, env: &[(&str, &str)], needles: &[&str]) {
    let out = palisade(dir, &["config", "check"], env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "accepted {env:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{stderr:?} lacks {n:?}");
    }
}

#[test]
fn defaults_alone_are_valid() {
    let dir = scratch_dir("cfg-defaults");
    let out = palisade(&dir, &["config", "check"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no config file"));
}

/// Environment to set, and the fragments the error line must contain.
type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);

#[test]
fn each_kind_of_invalid_value_is_one_line_naming_key_and_source() {
    let dir = scratch_dir("cfg-invalid");
    let cases: &[Case<'_>] = &[
        (
            &[("PALISADE_SERVER__PORT", "eighty")],
            &["server.port", "env PALISADE_SERVER__PORT", "u16"],
        ),
        (
            &[("PALISADE_SERVER__PORT", "70000")],
            &["server.port", "u16"],
        ),
        (
            &[("PALISADE_SERVER__HOST", "not an ip")],
            &["server.host", "IP address"],
        ),
        (
            &[("PALISADE_SERVER__DRAIN_TIMEOUT", "soon")],
            &["server.drain_timeout", "duration"],
        ),
        (
            &[("PALISADE_SERVER__DRAIN_TIMEOUT", "0s")],
            &["server.drain_timeout", "greater than 0s"],
        ),
        (&[("PALISADE_LOG__FORMAT", "xml")], &["log.format", "json"]),
        (
            &[("PALISADE_LOG__LEVEL", "info,[")],
            &["log.level", "tracing filter"],
        ),
        (
            &[("PALISADE_LOG__ACCESS_LOG", "maybe")],
            &["log.access_log", "bool"],
        ),
        (
            &[("PALISADE_CLIENT_IP__TRUSTED_PROXIES", "10.0.0.0/33")],
            &[
                "client_ip.trusted_proxies",
                "env PALISADE_CLIENT_IP__TRUSTED_PROXIES",
            ],
        ),
        (
            &[("PALISADE_CLIENT_IP__HEADER", "x-real-ip")],
            &["client_ip.header", "x-forwarded-for"],
        ),
        (
            &[
                ("PALISADE_CORS__ALLOW_ORIGINS", "*"),
                ("PALISADE_CORS__ALLOW_CREDENTIALS", "true"),
            ],
            &["cors.allow_credentials", "credentials"],
        ),
        (
            &[("PALISADE_CORS__ALLOW_ORIGINS", "example.com")],
            &["cors.allow_origins", "origin"],
        ),
        (
            &[("PALISADE_TRUSTED_HOSTS__ALLOWED_HOSTS", "bad host")],
            &["trusted_hosts.allowed_hosts"],
        ),
        (
            &[("PALISADE_SECURITY_HEADERS__FRAME_OPTIONS", "DENY\u{7f}")],
            &["security_headers.frame_options"],
        ),
        (
            &[("PALISADE_SERVER__PROT", "1")],
            &[
                "unknown config key `server.prot`",
                "env PALISADE_SERVER__PROT",
            ],
        ),
        (&[("PALISADE_BOGUS", "1")], &["unknown config key `bogus`"]),
        (&[("PALISADE_ENV", "staging")], &["`env`", "production"]),
        (
            &[("PALISADE_ENV", "production")],
            &["trusted_hosts.allowed_hosts", "production"],
        ),
        (
            &[
                ("PALISADE_ENV", "production"),
                ("PALISADE_TRUSTED_HOSTS__ALLOWED_HOSTS", "api.example.com"),
                ("PALISADE_METRICS__ENABLED", "false"),
                (
                    "PALISADE_AUTH__JWT__SECRET",
                    palisade_server::config::DEVELOPMENT_JWT_SECRET,
                ),
            ],
            &["auth.jwt.secret", "production"],
        ),
        (
            &[("PALISADE_AUTH__JWT__SECRET", "short")],
            &["auth.jwt.secret", "32 bytes"],
        ),
        (
            &[
                ("PALISADE_AUTH__JWT__ALGORITHM", "RS256"),
                ("PALISADE_AUTH__JWT__SECRET", ""),
                ("PALISADE_AUTH__JWT__JWKS_URL", "http://issuer.example/jwks"),
            ],
            &["auth.jwt.jwks_url", "https"],
        ),
        (
            &[("PALISADE_AUTH__JWT__ALGORITHM", "none")],
            &["auth.jwt.algorithm"],
        ),
        (
            &[(
                "PALISADE_AUTH__API_KEYS__KEYS",
                "[{ id = \"x\", hash = \"plain-key\" }]",
            )],
            &["auth.api_keys.keys[0].hash", "sha256"],
        ),
    ];
    for (env, needles) in cases {
        assert_rejected(&dir, env, needles);
    }
}

#[test]
fn file_errors_name_the_file_and_key() {
    let dir = scratch_dir("cfg-file");
    std::fs::write(dir.join("palisade.toml"), "[server]\nport = \"x\"\n").unwrap();
    assert_rejected(&dir, &[], &["server.port", "file", "palisade.toml"]);
    std::fs::write(
        dir.join("palisade.toml"),
        "[server]\nport = 1\nextra = true\n",
    )
    .unwrap();
    assert_rejected(
        &dir,
        &[],
        &["unknown config key `server.extra`", "palisade.toml"],
    );
    std::fs::write(dir.join("palisade.toml"), "[server\nport = 1\n").unwrap();
    assert_rejected(&dir, &[], &["palisade.toml", "line"]);
    assert_rejected(
        &dir,
        &[("PALISADE_CONFIG", "missing.toml")],
        &["missing.toml", "PALISADE_CONFIG"],
    );
    let out = palisade(
        &dir,
        &["--config", "also-missing.toml", "config", "check"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

#[test]
fn sources_stack_defaults_file_dotenv_env_and_explain_shows_each_source() {
    let dir = scratch_dir("cfg-layers");
    std::fs::write(
        dir.join("palisade.toml"),
        "[server]\nport = 7000\nhost = \"0.0.0.0\"\n[log]\nlevel = \"debug\"\naccess_log = false\n",
    )
    .unwrap();
    std::fs::write(
        dir.join(".env"),
        "PALISADE_SERVER__PORT=7100\nPALISADE_LOG__LEVEL=warn\n",
    )
    .unwrap();
    let out = palisade(
        &dir,
        &["config", "explain"],
        &[("PALISADE_SERVER__PORT", "7200")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in\n{text}"))
            .to_owned()
    };
    assert!(
        line("server.port").contains("7200")
            && line("server.port").contains("env PALISADE_SERVER__PORT")
    );
    assert!(
        line("log.level").contains("\"warn\"")
            && line("log.level").contains(".env PALISADE_LOG__LEVEL")
    );
    assert!(
        line("server.host").contains("0.0.0.0") && line("server.host").contains("palisade.toml")
    );
    assert!(line("log.access_log").contains("false"));
    assert!(line("server.drain_timeout").contains("# default"));
}

#[test]
fn the_production_profile_changes_defaults_and_explain_says_so() {
    let dir = scratch_dir("cfg-prod");
    let out = palisade(
        &dir,
        &["config", "explain"],
        &[
            ("PALISADE_ENV", "production"),
            ("PALISADE_TRUSTED_HOSTS__ALLOWED_HOSTS", "api.example.com"),
            ("PALISADE_METRICS__LISTEN", "127.0.0.1:9464"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let hsts = text
        .lines()
        .find(|l| l.starts_with("security_headers.hsts = "))
        .unwrap();
    assert!(
        hsts.contains("true") && hsts.contains("production profile"),
        "{hsts}"
    );
}

#[test]
fn a_port_in_use_is_a_clear_startup_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let dir = scratch_dir("cfg-busy");
    let out = palisade(&dir, &[], &[("PALISADE_SERVER__PORT", &port)]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on 127.0.0.1:"), "{stderr}");
}

/// The documentation's full example loads, and every key of every section is documented.
#[test]
fn the_documented_full_example_loads_and_every_key_is_documented() {
    let docs = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .unwrap();
    let example = docs
        .split("## Full example `palisade.toml`")
        .nth(1)
        .and_then(|rest| rest.split("```toml\n").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("a full example block");
    let opts = crate::helpers::options_with_file(example, &[]);
    let loaded = palisade_server::config::load(&opts).unwrap();
    let tree = serde_json::to_value(&loaded.settings).unwrap();
    for (section, value) in tree.as_object().unwrap() {
        let Some(keys) = value.as_object() else {
            assert!(
                docs.contains(&format!("| `{section}` |")),
                "top-level `{section}`"
            );
            continue;
        };
        assert!(
            docs.contains(&format!("## `[{section}]`")),
            "no section [{section}]"
        );
        for key in keys.keys() {
            assert!(
                docs.contains(&format!("| `{key}` |")) || docs.contains(&format!("| `{key}.")),
                "`{section}.{key}` is not documented in docs/configuration.md"
            );
            assert!(
                example.contains(&format!("\n{key} ="))
                    || example.contains(&format!("[{section}.{key}")),
                "`{section}.{key}` is missing from the full example"
            );
        }
    }
}

/// The shipped production sample passes the production checks once its secrets are in the
/// environment, and the Kubernetes manifests probe and expose what it configures.
#[test]
fn the_deployment_files_agree_with_a_valid_production_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let toml = std::fs::read_to_string(root.join("deploy/palisade.production.toml")).unwrap();
    let opts = crate::helpers::options_with_file(
        &toml,
        &[
            // The sample's own port, not the tests' port 0.
            ("PALISADE_SERVER__PORT", "8080"),
            (
                "PALISADE_DATABASE__URL",
                "postgres://palisade:Xq7vR2mLp9wTz4kHb6nJc3sYd8fGh5jKe2@db.internal:5432/palisade",
            ),
            (
                "PALISADE_REDIS__URL",
                "redis://:Xq7vR2mLp9wTz4kHb6nJc3sYd8fGh5jKe2@redis.internal:6379",
            ),
        ],
    );
    let loaded = palisade_server::config::load(&opts).unwrap();
    let s = &loaded.settings;
    assert!(s.is_production());
    assert_eq!(s.server.host, "0.0.0.0");
    assert!(toml.contains(&format!("port = {}", s.server.port)));
    let deployment = std::fs::read_to_string(root.join("deploy/k8s/deployment.yaml")).unwrap();
    assert!(deployment.contains(&format!("containerPort: {}", s.server.port)));
    let metrics_port = s.metrics.listen.expect("metrics on their own port").port();
    assert!(deployment.contains(&format!("containerPort: {metrics_port}")));
    for path in palisade::health::HEALTH_PATHS {
        assert!(
            deployment.contains(&format!("path: {path}")),
            "{path} is not probed"
        );
    }
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    assert!(dockerfile.contains(&format!("EXPOSE {} {metrics_port}", s.server.port)));
}
