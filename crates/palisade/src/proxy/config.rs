//! `[[upstreams]]`: which requests go where, and how.

use serde::{Deserialize, Serialize};

use crate::{circuit_breaker::CircuitBreakerConfig, duration::ConfigDuration, error::ConfigError};

/// Default time to open a TCP connection to an upstream.
pub const DEFAULT_CONNECT_TIMEOUT: ConfigDuration = ConfigDuration::secs(5);
/// Default time from the end of the request body to the upstream's response head.
pub const DEFAULT_RESPONSE_TIMEOUT: ConfigDuration = ConfigDuration::secs(30);
/// Default time an idle pooled connection is kept: below uvicorn's 5 s keep-alive, so the
/// gateway gives a connection up before a FastAPI server closes it under its feet.
pub const DEFAULT_IDLE_TIMEOUT: ConfigDuration = ConfigDuration::secs(4);
/// Default idle connections kept per upstream URL.
pub const DEFAULT_MAX_IDLE: usize = 128;
/// Default consecutive failures that eject an upstream URL from the rotation.
pub const DEFAULT_MAX_FAILURES: u32 = 3;
/// Default time an ejected URL stays out of the rotation.
pub const DEFAULT_EJECT_FOR: ConfigDuration = ConfigDuration::secs(10);

/// What the upstream receives as `Host`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostHeader {
    /// The upstream URL's authority (`127.0.0.1:8000`), as nginx's `proxy_pass` does; the
    /// client's host travels in `X-Forwarded-Host`.
    #[default]
    Upstream,
    /// The client's `Host`, unchanged.
    Preserve,
}

/// One `[[upstreams]]` entry: a path prefix (optionally narrowed to methods and a host)
/// served by one or more upstream base URLs. See the [module docs](super).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// A name for logs, metrics and the breaker; default: the prefix.
    #[serde(default)]
    pub name: Option<String>,
    /// The path prefix, matched on whole segments: `/orders` takes `/orders` and
    /// `/orders/7`, not `/ordersx`. `/` takes everything.
    pub prefix: String,
    /// Methods this entry takes; empty: all.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Only requests for this host (`Host`/authority, port ignored, case-insensitive);
    /// default: any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Upstream base URLs (`http://host:port[/base/path]`), balanced round-robin.
    pub urls: Vec<String>,
    /// Remove the prefix before forwarding (`/orders/7` → `<base>/7`). Default `false`.
    #[serde(default)]
    pub strip_prefix: bool,
    /// `upstream` (default) or `preserve`.
    #[serde(default)]
    pub host_header: HostHeader,
    /// Time to connect to an upstream URL. Default 5 s.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: ConfigDuration,
    /// Time from the end of the request body (sent upstream) to the upstream's response
    /// head; then `504`. Default 30 s.
    #[serde(default = "default_response_timeout")]
    pub response_timeout: ConfigDuration,
    /// How long an idle keep-alive connection is kept. Default 4 s.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: ConfigDuration,
    /// Idle keep-alive connections kept per URL. Default 128.
    #[serde(default = "default_max_idle")]
    pub max_idle: usize,
    /// Extra attempts, on another URL, for an idempotent request that failed before any
    /// byte of it was sent. Default 1.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Consecutive connection failures or timeouts that eject a URL. Default 3.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// How long an ejected URL stays out before it is tried again. Default 10 s.
    #[serde(default = "default_eject_for")]
    pub eject_for: ConfigDuration,
    /// Pass WebSocket upgrades through (default `true`); `false`: `501` problem.
    #[serde(default = "default_true")]
    pub websocket: bool,
    /// Whether the upstream has its own circuit breaker. Default `true`.
    #[serde(default = "default_true")]
    pub breaker: bool,
    /// `[upstreams.circuit_breaker]`: that breaker's settings, the keys of
    /// `[circuit_breaker]` except `routes`. Default: those defaults.
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
    /// Route policies the server applies to this prefix (see [`RoutePolicy`]).
    #[serde(default)]
    pub policy: RoutePolicy,
}

/// `[upstreams.policy]`: per-prefix settings for the other layers of the stack. The proxy
/// itself ignores them; `palisade-server` turns each into a route rule of its section
/// (`[[auth.routes]]`, `[[rate_limit.routes]]`, `[[idempotency.routes]]`,
/// `[[body_limit.routes]]`, `[[timeout.routes]]`) for `<prefix>` and `<prefix>/*`, after that section's own rules, so
/// a finer rule written there wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutePolicy {
    /// A rate-limit policy name from `[rate_limit.policies]`.
    pub rate_limit: Option<String>,
    /// Require an `Idempotency-Key` on this prefix's unsafe methods.
    pub idempotency_required: bool,
    /// The body limit in bytes.
    pub body_limit: Option<u64>,
    /// The request timeout.
    pub timeout: Option<ConfigDuration>,
    /// Only authenticated callers reach the upstream.
    pub auth_required: bool,
    /// Scopes a caller must hold, all of them (implies `auth_required`).
    pub scopes: Vec<String>,
}

impl UpstreamConfig {
    /// An entry for `prefix` served by `urls`, everything else default.
    pub fn new(
        prefix: impl Into<String>,
        urls: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            name: None,
            prefix: prefix.into(),
            methods: Vec::new(),
            host: None,
            urls: urls.into_iter().map(Into::into).collect(),
            strip_prefix: false,
            host_header: HostHeader::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_idle: DEFAULT_MAX_IDLE,
            retries: default_retries(),
            max_failures: DEFAULT_MAX_FAILURES,
            eject_for: DEFAULT_EJECT_FOR,
            websocket: true,
            breaker: true,
            circuit_breaker: CircuitBreakerConfig::default(),
            policy: RoutePolicy::default(),
        }
    }

    /// The name used in logs and metrics: `name`, else the prefix.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.prefix)
    }

    /// The path patterns the prefix covers, in the syntax of the layers' `routes`
    /// (`/orders` and `/orders/*`; `/` gives `/*`).
    pub fn route_patterns(&self) -> Vec<String> {
        let p = self.prefix.trim_end_matches('/');
        if p.is_empty() {
            vec!["/*".to_owned()]
        } else {
            vec![p.to_owned(), format!("{p}/*")]
        }
    }

    /// The route templates (for metric labels) the prefix covers, in axum's syntax: the
    /// prefix itself and [`route_label`](Self::route_label).
    pub fn route_templates(&self) -> [String; 2] {
        let p = self.prefix.trim_end_matches('/');
        [
            if p.is_empty() { "/" } else { p }.to_owned(),
            self.route_label(),
        ]
    }

    /// The one route label of the prefix's requests (`/orders/{*path}`), in logs and metrics.
    pub fn route_label(&self) -> String {
        format!("{}/{{*path}}", self.prefix.trim_end_matches('/'))
    }

    /// Checks what types cannot; errors name the key relative to the entry.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.prefix.starts_with('/') {
            return Err(ConfigError::new(
                "prefix",
                format!("{:?} must start with '/'", self.prefix),
            ));
        }
        if self.prefix.contains(['?', '#', '{', '}', '*']) {
            return Err(ConfigError::new(
                "prefix",
                format!(
                    "{:?} must be a plain path (no '?', '#', '{{', '}}' or '*')",
                    self.prefix
                ),
            ));
        }
        if self.urls.is_empty() {
            return Err(ConfigError::new("urls", "needs at least one upstream URL"));
        }
        crate::path_pattern::parse_methods(&self.methods)
            .map_err(|m| ConfigError::new("methods", m))?;
        for (key, d) in [
            ("connect_timeout", self.connect_timeout),
            ("response_timeout", self.response_timeout),
            ("idle_timeout", self.idle_timeout),
            ("eject_for", self.eject_for),
        ] {
            if d.get().is_zero() {
                return Err(ConfigError::new(key, "must be greater than 0s"));
            }
        }
        if !self.circuit_breaker.routes.is_empty() {
            return Err(ConfigError::new(
                "circuit_breaker.routes",
                "an upstream's breaker covers the whole upstream; remove `routes`",
            ));
        }
        if self.max_failures == 0 {
            return Err(ConfigError::new("max_failures", "must be at least 1"));
        }
        if matches!(self.policy.body_limit, Some(0)) {
            return Err(ConfigError::new("policy.body_limit", "must be at least 1"));
        }
        if self.policy.timeout.is_some_and(|t| t.get().is_zero()) {
            return Err(ConfigError::new(
                "policy.timeout",
                "must be greater than 0s",
            ));
        }
        Ok(())
    }
}

fn default_connect_timeout() -> ConfigDuration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_response_timeout() -> ConfigDuration {
    DEFAULT_RESPONSE_TIMEOUT
}
fn default_idle_timeout() -> ConfigDuration {
    DEFAULT_IDLE_TIMEOUT
}
fn default_max_idle() -> usize {
    DEFAULT_MAX_IDLE
}
fn default_retries() -> u32 {
    1
}
fn default_max_failures() -> u32 {
    DEFAULT_MAX_FAILURES
}
fn default_eject_for() -> ConfigDuration {
    DEFAULT_EJECT_FOR
}
fn default_true() -> bool {
    true
}
