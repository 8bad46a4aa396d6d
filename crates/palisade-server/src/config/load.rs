//! Reading, layering and validating the configuration, remembering each value's source.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use toml::{Table, Value};

use super::{Environment, Settings};

/// The prefix of every configuration environment variable.
pub const ENV_PREFIX: &str = "PALISADE_";
/// The variable naming the config file.
pub const CONFIG_VAR: &str = "PALISADE_CONFIG";
/// The config file read from the working directory when none is named.
pub const DEFAULT_FILE: &str = "palisade.toml";

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Built-in default of the active profile.
    Default(Environment),
    /// The TOML file.
    File(PathBuf),
    /// A variable in the `.env` file.
    DotEnv(String),
    /// A process environment variable.
    Env(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default(Environment::Development) => f.write_str("default"),
            Self::Default(Environment::Production) => f.write_str("default (production profile)"),
            Self::File(p) => write!(f, "file {}", p.display()),
            Self::DotEnv(v) => write!(f, ".env {v}"),
            Self::Env(v) => write!(f, "env {v}"),
        }
    }
}

/// A configuration error: one line naming the key, the source and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Inputs of [`load`]; tests build them explicitly instead of touching the process.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--config PATH`. Wins over `PALISADE_CONFIG`.
    pub config_path: Option<PathBuf>,
    /// Environment variables (only `PALISADE_*` are read).
    pub env: Vec<(String, String)>,
    /// Directory holding the default `palisade.toml` and `.env`.
    pub dir: PathBuf,
    /// Read `.env` from `dir`.
    pub read_dotenv: bool,
}

impl LoadOptions {
    /// The process's environment and working directory. `DATABASE_URL`, the name every SQL
    /// tool knows, stands for `PALISADE_DATABASE__URL` when that is not set.
    pub fn from_process(config_path: Option<PathBuf>) -> Self {
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        if let Ok(url) = std::env::var("DATABASE_URL")
            && !env.iter().any(|(k, _)| k == "PALISADE_DATABASE__URL")
        {
            env.push(("PALISADE_DATABASE__URL".to_owned(), url));
        }
        Self {
            config_path,
            env,
            dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            read_dotenv: true,
        }
    }
}

/// The validated settings plus the source of every value.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The settings.
    pub settings: Settings,
    sources: BTreeMap<String, Source>,
    /// The config file actually read, if any.
    pub file: Option<PathBuf>,
}

impl Loaded {
    /// Where `key` (`server.port`) came from.
    pub fn source_of(&self, key: &str) -> Source {
        source_of(&self.sources, key, self.settings.env)
    }

    /// Every effective value with its source, one `key = value  # source` line each; secrets
    /// masked.
    pub fn explain(&self) -> String {
        let tree = Value::try_from(&self.settings).expect("settings serialise");
        let mut lines = Vec::new();
        flatten(&tree, String::new(), &mut lines);
        let width = lines
            .iter()
            .map(|(k, v)| k.len() + v.len() + 3)
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (key, value) in lines {
            let value = if is_secret_key(&key) {
                mask(&value)
            } else {
                value
            };
            let left = format!("{key} = {value}");
            out.push_str(&format!("{left:<width$}  # {}\n", self.source_of(&key)));
        }
        out
    }
}

fn source_of(sources: &BTreeMap<String, Source>, key: &str, env: Environment) -> Source {
    // `a.b[0]` comes from wherever `a.b` came from.
    let key = key.split('[').next().unwrap_or(key);
    if let Some(s) = sources.get(key) {
        return s.clone();
    }
    let prefix = format!("{key}.");
    sources
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(_, s)| s.clone())
        .next()
        .unwrap_or(Source::Default(env))
}

/// Names that hold secrets; their values are never printed. Names of headers that carry a
/// secret (`api_key_header`) are not secrets themselves.
fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    if last.ends_with("_header") {
        return false;
    }
    ["password", "secret", "token", "api_key", "private_key"]
        .iter()
        .any(|s| last.contains(s))
        || (last.ends_with("url") && (key.contains("redis") || key.contains("database")))
}

/// Production refuses weak secrets: every secret-named key that is set must be at least 32
/// characters, not a well-known placeholder, and not one repeated character pattern. Secrets
/// themselves never appear in the error.
fn check_secrets(tree: &Value) -> Result<(), (String, String)> {
    let mut leaves = Vec::new();
    flatten(tree, String::new(), &mut leaves);
    for (key, _) in leaves.iter().filter(|(k, _)| is_secret_key(k)) {
        let Some(Value::String(secret)) = lookup_path(tree.as_table().expect("table"), key) else {
            continue;
        };
        if let Some(why) = weak_secret(secret) {
            return Err((
                key.clone(),
                format!("production refuses this secret: {why}"),
            ));
        }
    }
    Ok(())
}

/// Why `secret` is weak, or `None`. Empty means "not configured" and is left to the feature
/// that needs it. URLs (Redis, database) are judged by their password only.
fn weak_secret(secret: &str) -> Option<&'static str> {
    let secret = match secret.split_once("://") {
        Some((_, rest)) => match rest.split_once('@') {
            Some((userinfo, _)) => userinfo.split_once(':').map_or("", |(_, pw)| pw),
            None => return None,
        },
        None => secret,
    };
    if secret.is_empty() {
        return None;
    }
    const PLACEHOLDERS: [&str; 10] = [
        "changeme",
        "change-me",
        "secret",
        "password",
        "default",
        "development",
        "test",
        "example",
        "palisade",
        "insecure",
    ];
    let lower = secret.to_ascii_lowercase();
    if PLACEHOLDERS.iter().any(|p| lower.contains(p)) {
        return Some("it contains a well-known placeholder word");
    }
    if secret.chars().count() < 32 {
        return Some(
            "it is shorter than 32 characters; generate one with `openssl rand -base64 32`",
        );
    }
    let distinct = secret
        .chars()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if distinct < 10 {
        return Some("it has fewer than 10 distinct characters");
    }
    None
}

fn mask(value: &str) -> String {
    if value == "\"\"" {
        value.to_owned()
    } else {
        "\"********\"".to_owned()
    }
}

fn flatten(value: &Value, prefix: String, out: &mut Vec<(String, String)>) {
    match value {
        Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(v, key, out);
            }
        }
        v => out.push((prefix, v.to_string())),
    }
}

/// Reads every source, layers them, deserialises and validates. See the [module docs](super).
pub fn load(opts: &LoadOptions) -> Result<Loaded, ConfigError> {
    // 1. `.env` (needed early: it may name the config file or the profile).
    let dotenv = if opts.read_dotenv {
        read_dotenv(&opts.dir.join(".env"))?
    } else {
        Vec::new()
    };
    let lookup = |name: &str| {
        opts.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .or_else(|| dotenv.iter().rev().find(|(k, _)| k == name))
            .map(|(_, v)| v.clone())
    };

    // 2. The file: --config, else PALISADE_CONFIG (both must exist), else ./palisade.toml.
    let (file_path, required) = match (&opts.config_path, lookup(CONFIG_VAR)) {
        (Some(p), _) => (opts.dir.join(p), true),
        (None, Some(p)) => (opts.dir.join(p), true),
        (None, None) => (opts.dir.join(DEFAULT_FILE), false),
    };
    let file_table = match std::fs::read_to_string(&file_path) {
        Ok(text) => Some(text.parse::<Table>().map_err(|e| {
            let msg = e
                .message()
                .trim()
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("; ");
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!(" at line {line}")
                })
                .unwrap_or_default();
            ConfigError(format!("config file {}{at}: {msg}", file_path.display()))
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => None,
        Err(e) => {
            let named_by = if opts.config_path.is_some() {
                "named by --config"
            } else if required {
                "named by PALISADE_CONFIG"
            } else {
                "the default config file"
            };
            return Err(ConfigError(format!(
                "config file {}: {e} ({named_by})",
                file_path.display()
            )));
        }
    };

    // 3. Environment-style layers, as (path, raw string, source).
    let mut env_layers: Vec<(Vec<String>, String, Source)> = Vec::new();
    for (vars, make_source) in [
        (&dotenv, Source::DotEnv as fn(String) -> Source),
        (&opts.env, Source::Env as fn(String) -> Source),
    ] {
        for (name, value) in vars {
            let Some(path) = env_path(name)? else {
                continue;
            };
            env_layers.push((path, value.clone(), make_source(name.clone())));
        }
    }

    // 4. The profile decides the defaults, so find it first.
    let env_raw = env_layers
        .iter()
        .rev()
        .find(|(p, _, _)| p.len() == 1 && p[0] == "env")
        .map(|(_, v, s)| (Value::String(v.clone()), s.clone()))
        .or_else(|| {
            file_table
                .as_ref()
                .and_then(|t| t.get("env"))
                .map(|v| (v.clone(), Source::File(file_path.clone())))
        });
    let env = match env_raw {
        None => Environment::Development,
        Some((v, source)) => <Environment as serde::Deserialize>::deserialize(v.clone()).map_err(|_| {
            ConfigError(format!(
                "invalid config key `env` = {v} (from {source}): expected \"development\" or \"production\""
            ))
        })?,
    };

    // 5. Layer: defaults <- file <- .env <- env.
    let defaults = Value::try_from(Settings::defaults_for(env)).expect("defaults serialise");
    let Value::Table(mut tree) = defaults.clone() else {
        unreachable!("settings are a table")
    };
    let mut sources = BTreeMap::new();
    if let Some(t) = &file_table {
        merge(
            &mut tree,
            t,
            "",
            &Source::File(file_path.clone()),
            &mut sources,
        );
    }
    for (path, raw, source) in env_layers {
        let typed = typed_env_value(&defaults, &path, &raw);
        set_path(&mut tree, &path, typed, &source)?;
        let key = path.join(".");
        sources.retain(|k, _| !k.starts_with(&format!("{key}.")));
        sources.insert(key, source);
    }

    // 6. Deserialise (unknown keys and wrong types fail here) and validate.
    let settings: Settings = serde_path_to_error::deserialize(Value::Table(tree.clone()))
        .map_err(|e| {
            let mut key = e.path().to_string();
            let inner = e.inner().to_string();
            let inner = inner.lines().next().unwrap_or_default().trim().to_owned();
            if let Some(field) = unknown_field(&inner) {
                // serde_path_to_error already ends the path with the unknown field.
                if key == "." || key.is_empty() {
                    key = field;
                } else if key.rsplit('.').next() != Some(field.as_str()) {
                    key = format!("{key}.{field}");
                }
                let source = source_of(&sources, &key, env);
                return ConfigError(format!(
                    "unknown config key `{key}` (from {source}); see docs/configuration.md for the keys"
                ));
            }
            let source = source_of(&sources, &key, env);
            let value = lookup_path(&tree, key.split('[').next().unwrap_or(&key)).map(|v| format!(" = {v}")).unwrap_or_default();
            let value = if is_secret_key(&key) { String::new() } else { value };
            ConfigError(format!("invalid config key `{key}`{value} (from {source}): {inner}"))
        })?;
    settings
        .validate()
        .and_then(|()| {
            if settings.is_production() {
                check_secrets(&Value::try_from(&settings).expect("settings serialise"))
            } else {
                Ok(())
            }
        })
        .map_err(|(key, msg)| {
            let source = source_of(&sources, &key, env);
            ConfigError(format!("invalid config key `{key}` (from {source}): {msg}"))
        })?;
    Ok(Loaded {
        settings,
        sources,
        file: file_table.map(|_| file_path),
    })
}

fn unknown_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_owned())
}

fn lookup_path<'a>(tree: &'a Table, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let mut v = tree.get(parts.next()?)?;
    for p in parts {
        v = v.as_table()?.get(p)?;
    }
    Some(v)
}

/// `PALISADE_SERVER__PORT` → `["server", "port"]`; `PALISADE_ENV` → `["env"]`;
/// `PALISADE_CONFIG` and non-Palisade variables → `None`.
fn env_path(name: &str) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
        return Ok(None);
    };
    if name == CONFIG_VAR {
        return Ok(None);
    }
    let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    if path.iter().any(String::is_empty) {
        return Err(ConfigError(format!(
            "environment variable {name}: malformed name; expected PALISADE_<SECTION>__<KEY>"
        )));
    }
    Ok(Some(path))
}

/// Types an environment string after the default at the same path, so `"9000"` becomes a
/// port but a secret `"123456"` stays text. Unparsable values stay strings and fail
/// deserialisation with a message naming the key.
fn typed_env_value(defaults: &Value, path: &[String], raw: &str) -> Value {
    let mut v = Some(defaults);
    for p in path {
        v = v.and_then(|v| v.as_table()).and_then(|t| t.get(p));
    }
    let s = raw.trim();
    match v {
        Some(Value::Integer(_)) => s
            .parse()
            .map_or_else(|_| Value::String(raw.into()), Value::Integer),
        Some(Value::Float(_)) => s
            .parse()
            .map_or_else(|_| Value::String(raw.into()), Value::Float),
        Some(Value::Boolean(_)) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Value::Boolean(true),
            "false" | "0" | "no" | "off" => Value::Boolean(false),
            _ => Value::String(raw.into()),
        },
        Some(Value::Array(_)) if s.starts_with('[') => format!("v = {s}")
            .parse::<Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| Value::String(raw.into())),
        Some(Value::Array(_)) => Value::Array(
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(|x| Value::String(x.into()))
                .collect(),
        ),
        _ => Value::String(raw.into()),
    }
}

fn set_path(
    tree: &mut Table,
    path: &[String],
    value: Value,
    source: &Source,
) -> Result<(), ConfigError> {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut t = tree;
    for (i, p) in parents.iter().enumerate() {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        t = entry.as_table_mut().ok_or_else(|| {
            ConfigError(format!(
                "invalid config key `{}` (from {source}): `{}` is a value, not a section",
                path.join("."),
                path[..=i].join(".")
            ))
        })?;
    }
    t.insert(last.clone(), value);
    Ok(())
}

fn merge(
    dst: &mut Table,
    src: &Table,
    prefix: &str,
    source: &Source,
    sources: &mut BTreeMap<String, Source>,
) {
    for (k, v) in src {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (dst.get_mut(k), v) {
            (Some(Value::Table(d)), Value::Table(s)) => merge(d, s, &key, source, sources),
            _ => {
                dst.insert(k.clone(), v.clone());
                sources.retain(|s, _| !s.starts_with(&format!("{key}.")));
                sources.insert(key, source.clone());
            }
        }
    }
}

fn read_dotenv(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let iter = match dotenvy::from_path_iter(path) {
        Ok(iter) => iter,
        Err(e) if e.not_found() => return Ok(Vec::new()),
        Err(e) => return Err(ConfigError(format!("{}: {e}", path.display()))),
    };
    iter.filter_map(|item| match item {
        Ok((k, v)) if k.starts_with(ENV_PREFIX) => Some(Ok((k, v))),
        Ok(_) => None,
        Err(e) => Some(Err(ConfigError(format!("{}: {e}", path.display())))),
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(env: &[(&str, &str)]) -> LoadOptions {
        LoadOptions {
            config_path: None,
            env: env
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            dir: PathBuf::from("/nonexistent-palisade-dir"),
            read_dotenv: false,
        }
    }

    #[test]
    fn env_vars_mirror_the_toml_path_and_are_typed_by_the_default() {
        let l = load(&opts(&[
            ("PALISADE_SERVER__PORT", "9000"),
            ("PALISADE_LOG__ACCESS_LOG", "false"),
            (
                "PALISADE_TRUSTED_HOSTS__ALLOWED_HOSTS",
                "a.example, b.example",
            ),
        ]))
        .unwrap();
        assert_eq!(l.settings.server.port, 9000);
        assert!(!l.settings.log.access_log);
        assert_eq!(
            l.settings.trusted_hosts.allowed_hosts,
            ["a.example", "b.example"]
        );
        assert_eq!(
            l.source_of("server.port"),
            Source::Env("PALISADE_SERVER__PORT".into())
        );
        assert_eq!(
            l.source_of("server.host"),
            Source::Default(Environment::Development)
        );
    }

    #[test]
    fn a_bad_value_names_key_value_source_and_expectation() {
        let e = load(&opts(&[("PALISADE_SERVER__PORT", "eighty")]))
            .unwrap_err()
            .0;
        assert!(e.contains("`server.port`"), "{e}");
        assert!(e.contains("env PALISADE_SERVER__PORT"), "{e}");
        assert!(e.contains("u16"), "{e}");
        assert_eq!(e.lines().count(), 1);
    }

    #[test]
    fn an_unknown_key_is_named_in_full() {
        let e = load(&opts(&[("PALISADE_SERVER__PROT", "1")]))
            .unwrap_err()
            .0;
        assert!(e.contains("unknown config key `server.prot`"), "{e}");
        let e = load(&opts(&[("PALISADE_NOPE__X", "1")])).unwrap_err().0;
        assert!(e.contains("`nope`"), "{e}");
    }

    #[test]
    fn malformed_variable_names_are_refused() {
        assert!(load(&opts(&[("PALISADE_SERVER____PORT", "1")])).is_err());
    }

    #[test]
    fn production_needs_a_host_allowlist_and_turns_on_hsts() {
        let e = load(&opts(&[("PALISADE_ENV", "production")]))
            .unwrap_err()
            .0;
        assert!(e.contains("trusted_hosts.allowed_hosts"), "{e}");
        let l = load(&opts(&[
            ("PALISADE_ENV", "production"),
            ("PALISADE_TRUSTED_HOSTS__ALLOWED_HOSTS", "api.example.com"),
            ("PALISADE_METRICS__LISTEN", "127.0.0.1:9464"),
        ]))
        .unwrap();
        assert!(l.settings.security_headers.hsts);
        assert_eq!(
            l.source_of("security_headers.hsts"),
            Source::Default(Environment::Production)
        );
        let e = load(&opts(&[("PALISADE_ENV", "staging")])).unwrap_err().0;
        assert!(e.contains("`env`"), "{e}");
    }

    #[test]
    fn production_refuses_weak_secrets_anywhere_in_the_tree() {
        let tree = |k: &str, v: &str| -> Value {
            format!("[auth]\n{k} = {v:?}\n")
                .parse::<Table>()
                .map(Value::Table)
                .unwrap()
        };
        assert!(
            check_secrets(&tree("jwt_secret", "")).is_ok(),
            "unset is not weak"
        );
        for weak in [
            "changeme",
            "short-but-random-Xq9",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "my-Secret-value-that-is-long-enough-1234",
        ] {
            let (key, msg) = check_secrets(&tree("jwt_secret", weak)).unwrap_err();
            assert_eq!(key, "auth.jwt_secret");
            assert!(!msg.contains(weak), "the secret leaked into the error");
        }
        assert!(check_secrets(&tree("jwt_secret", "q8Zt3xVb1LmN0pR7sW4yK2dF6hJ9cA5e")).is_ok());
        assert!(check_secrets(&tree("redis_url", "redis://:changeme@cache:6379")).is_err());
        assert!(check_secrets(&tree("redis_url", "redis://cache:6379")).is_ok());
    }

    #[test]
    fn explain_masks_secret_looking_keys() {
        assert!(is_secret_key("auth.jwt_secret"));
        assert!(is_secret_key("redis.url"));
        assert!(!is_secret_key("server.port"));
        assert!(!is_secret_key("rate_limit.api_key_header"));
        assert_eq!(mask("\"hunter2\""), "\"********\"");
    }
}
