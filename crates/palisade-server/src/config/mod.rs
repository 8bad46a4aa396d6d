//! The server's one typed configuration tree, one file per concern.
//!
//! Sources stack in this order, later ones winning: built-in defaults (which depend on the
//! profile, `env`), the TOML file, `.env`, then `PALISADE_<SECTION>__<KEY>` environment
//! variables. [`load`] reads them all, remembers where each value came from, deserialises the
//! tree (unknown keys are errors) and validates it once. Every key is documented in
//! `docs/configuration.md`.

mod auth;
mod database;
mod health;
mod jobs;
mod load;
mod log;
mod redis;
mod response_time;
mod security;
mod server;
mod upstreams;

use palisade::{
    body_limit::BodyLimitConfig, circuit_breaker::CircuitBreakerConfig, client_ip::ClientIpConfig,
    content_validation::ContentValidationConfig, cors::CorsConfig, geoip::GeoIpConfig,
    idempotency::IdempotencyConfig, load_shed::LoadShedConfig, metrics::MetricsConfig,
    rate_limit::RateLimitConfig, security_headers::SecurityHeadersConfig, store::StoreKind,
    timeout::TimeoutConfig,
};
use serde::{Deserialize, Serialize};

pub use auth::DEVELOPMENT_JWT_SECRET;
pub use database::{Backend, DatabaseSettings};
pub use health::HealthSettings;
pub use jobs::JobsSettings;
pub use load::{
    CONFIG_VAR, ConfigError, DEFAULT_FILE, ENV_PREFIX, LoadOptions, Loaded, Source, load,
};
pub use log::{LogFormat, LogSettings};
pub use palisade::duration::ConfigDuration;
pub use redis::RedisSettings;
pub use response_time::ResponseTimeSettings;
pub use security::{RequestIdSettings, TrustedHostsSettings};
pub use server::ServerSettings;

/// `[openapi]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenApiSettings {
    /// Serve `/openapi.json` and the `/docs` UI. Env `PALISADE_OPENAPI__ENABLED`. Default
    /// `true` in development, `false` in production.
    pub enabled: bool,
}

impl Default for OpenApiSettings {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// The deployment profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Local work: console logs, any `Host` allowed.
    #[default]
    Development,
    /// Production: JSON logs, HSTS on, a host allowlist required.
    Production,
}

/// The whole configuration. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `development` or `production`. Env `PALISADE_ENV`. Default `development`.
    pub env: Environment,
    /// `[server]`.
    pub server: ServerSettings,
    /// `[log]`.
    pub log: LogSettings,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// `[response_time]`.
    pub response_time: ResponseTimeSettings,
    /// `[request_id]`.
    pub request_id: RequestIdSettings,
    /// `[client_ip]`.
    pub client_ip: ClientIpConfig,
    /// `[security_headers]`.
    pub security_headers: SecurityHeadersConfig,
    /// `[cors]`.
    pub cors: CorsConfig,
    /// `[trusted_hosts]`.
    pub trusted_hosts: TrustedHostsSettings,
    /// `[health]`.
    pub health: HealthSettings,
    /// `[geoip]`.
    pub geoip: GeoIpConfig,
    /// `[content_validation]`.
    pub content_validation: ContentValidationConfig,
    /// `[load_shed]`.
    pub load_shed: LoadShedConfig,
    /// `[auth]`: JWT bearer tokens, API keys, scopes per route.
    pub auth: palisade::auth::AuthConfig,
    /// `[rate_limit]`.
    pub rate_limit: RateLimitConfig,
    /// `[body_limit]`.
    pub body_limit: BodyLimitConfig,
    /// `[circuit_breaker]`: on when it names routes.
    pub circuit_breaker: CircuitBreakerConfig,
    /// `[timeout]`.
    pub timeout: TimeoutConfig,
    /// `[idempotency]`.
    pub idempotency: IdempotencyConfig,
    /// `[cache_control]`: `Cache-Control` per route on successful reads.
    pub cache_control: palisade::cache_control::CacheControlConfig,
    /// `[redis]`.
    pub redis: RedisSettings,
    /// `[database]`: the API server's SQL database.
    pub database: DatabaseSettings,
    /// `[openapi]`: `/openapi.json` and `/docs`.
    pub openapi: OpenApiSettings,
    /// `[jobs]`: background jobs on Redis.
    pub jobs: JobsSettings,
    /// `[otel]`: OpenTelemetry tracing (the `otel` feature, on by default).
    #[cfg(feature = "otel")]
    pub otel: palisade::otel::OtelConfig,
    /// `[[upstreams]]`: gateway mode, prefixes proxied to upstream services (none: off).
    pub upstreams: Vec<palisade::proxy::UpstreamConfig>,
}

impl Default for Settings {
    fn default() -> Self {
        Self::defaults_for(Environment::Development)
    }
}

impl Settings {
    /// The built-in defaults of a profile.
    pub fn defaults_for(env: Environment) -> Self {
        let production = env == Environment::Production;
        Self {
            env,
            server: ServerSettings::default(),
            log: LogSettings::default(),
            metrics: MetricsConfig::default(),
            response_time: ResponseTimeSettings {
                header: if production {
                    palisade::response_time::ResponseTimeHeader::Off
                } else {
                    palisade::response_time::ResponseTimeHeader::ServerTiming
                },
            },
            request_id: RequestIdSettings::default(),
            client_ip: ClientIpConfig::default(),
            security_headers: SecurityHeadersConfig {
                hsts: production,
                ..SecurityHeadersConfig::default()
            },
            cors: CorsConfig::default(),
            trusted_hosts: TrustedHostsSettings::default(),
            health: HealthSettings::default(),
            geoip: GeoIpConfig::default(),
            content_validation: ContentValidationConfig::default(),
            load_shed: LoadShedConfig::default(),
            auth: auth::defaults(env),
            rate_limit: RateLimitConfig::default(),
            body_limit: BodyLimitConfig::default(),
            circuit_breaker: CircuitBreakerConfig::default(),
            timeout: TimeoutConfig::default(),
            idempotency: IdempotencyConfig::default(),
            cache_control: default_cache_control(),
            redis: RedisSettings::default(),
            database: DatabaseSettings::default(),
            openapi: OpenApiSettings {
                enabled: !production,
            },
            jobs: JobsSettings::default(),
            #[cfg(feature = "otel")]
            otel: palisade::otel::OtelConfig::default(),
            upstreams: Vec::new(),
        }
    }

    /// Whether this is the production profile.
    pub fn is_production(&self) -> bool {
        self.env == Environment::Production
    }

    /// The log format after resolving `auto`.
    pub fn log_format(&self) -> LogFormat {
        match self.log.format {
            LogFormat::Auto if self.is_production() => LogFormat::Json,
            LogFormat::Auto => LogFormat::Console,
            f => f,
        }
    }

    /// Semantic checks that types alone cannot express. Errors name the key.
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, msg: String| Err((key.to_owned(), msg));
        if self.server.host.parse::<std::net::IpAddr>().is_err() && self.server.host != "localhost"
        {
            return err(
                "server.host",
                format!(
                    "{:?} is not an IP address; expected e.g. \"127.0.0.1\" or \"0.0.0.0\"",
                    self.server.host
                ),
            );
        }
        if self.server.drain_timeout.get().is_zero() {
            return err("server.drain_timeout", "must be greater than 0s".into());
        }
        for (key, d) in [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.keep_alive_timeout", self.server.keep_alive_timeout),
        ] {
            if d.get().is_zero() || d.get() > std::time::Duration::from_secs(86_400) {
                return err(key, "must be greater than 0s and at most 1 day".into());
            }
        }
        for (key, n) in [
            ("server.max_connections", self.server.max_connections),
            (
                "server.max_connections_per_ip",
                self.server.max_connections_per_ip,
            ),
        ] {
            if n == 0 {
                return err(key, "must be at least 1".into());
            }
        }
        if self.health.check_timeout.get().is_zero() {
            return err("health.check_timeout", "must be greater than 0s".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            return err(
                "log.level",
                format!(
                    "{:?} is not a tracing filter ({e}); expected e.g. \"info\" or \"palisade=debug,info\"",
                    self.log.level
                ),
            );
        }
        if self.log.output.trim().is_empty() {
            return err(
                "log.output",
                "expected \"stdout\", \"stderr\" or a file path".into(),
            );
        }
        if let Err(e) =
            palisade::security_headers::SecurityHeadersLayer::new(&self.security_headers)
        {
            return err(&format!("security_headers.{}", e.key), e.message);
        }
        if let Err(e) = self.cors.into_layer() {
            return err(&format!("cors.{}", e.key), e.message);
        }
        if let Err(e) = palisade::trusted_host::TrustedHostLayer::new(
            &self.trusted_hosts.allowed_hosts,
            palisade::exempt::ExemptPaths::health(),
        ) {
            return err(&format!("trusted_hosts.{}", e.key), e.message);
        }
        if let Err(e) = palisade::rate_limit::RateLimiter::new(
            &self.rate_limit,
            std::sync::Arc::new(palisade::rate_limit::MemoryStore::with_max_keys(0)),
        ) {
            return err(&format!("rate_limit.{}", e.key), e.message);
        }
        if let Err(e) = palisade::body_limit::BodyLimitLayer::new(&self.body_limit) {
            return err(&format!("body_limit.{}", e.key), e.message);
        }
        if let Err(e) =
            palisade::content_validation::ContentValidationLayer::new(&self.content_validation)
        {
            return err(&format!("content_validation.{}", e.key), e.message);
        }
        if let Err(e) = palisade::load_shed::LoadShedLayer::new(
            &self.load_shed,
            palisade::exempt::ExemptPaths::health(),
        ) {
            return err(&format!("load_shed.{}", e.key), e.message);
        }
        // The country lists; the database file itself is opened once, at startup.
        let lists = GeoIpConfig {
            database: None,
            ..self.geoip.clone()
        };
        if let Err(e) =
            palisade::geoip::GeoIpLayer::new(&lists, palisade::exempt::ExemptPaths::health())
        {
            return err(&format!("geoip.{}", e.key), e.message);
        }
        if let Err(e) =
            palisade::circuit_breaker::CircuitBreaker::new("circuit_breaker", &self.circuit_breaker)
        {
            return err(&format!("circuit_breaker.{}", e.key), e.message);
        }
        if let Err(e) = palisade::timeout::TimeoutLayer::new(&self.timeout) {
            return err(&format!("timeout.{}", e.key), e.message);
        }
        if let Err(e) = palisade::timeout::check_timeout("body_idle", self.timeout.body_idle) {
            return err(&format!("timeout.{}", e.key), e.message);
        }
        if let Err(e) = palisade::idempotency::Idempotency::new(
            &self.idempotency,
            std::sync::Arc::new(palisade::idempotency::MemoryStore::new(0, 0)),
        ) {
            return err(&format!("idempotency.{}", e.key), e.message);
        }
        #[cfg(feature = "otel")]
        if let Err(e) = self.otel.validate() {
            return err(&format!("otel.{}", e.key), e.message);
        }
        let redis_users = [
            (
                "rate_limit",
                self.rate_limit.enabled && self.rate_limit.store == StoreKind::Redis,
                self.rate_limit.store_timeout.get(),
            ),
            (
                "idempotency",
                self.idempotency.enabled && self.idempotency.store == StoreKind::Redis,
                self.idempotency.store_timeout.get(),
            ),
        ];
        for (section, uses_redis, timeout) in redis_users {
            if !uses_redis {
                continue;
            }
            if self.redis.url.trim().is_empty() {
                return err(
                    "redis.url",
                    format!(
                        "{section}.store = \"redis\" needs a Redis URL, e.g. \"redis://127.0.0.1:6379\""
                    ),
                );
            }
            let urls: Vec<&str> = if self.redis.cluster {
                self.redis.url.split(',').map(str::trim).collect()
            } else {
                vec![self.redis.url.trim()]
            };
            if let Some(e) = urls.iter().find_map(|u| redis_url_ok(u).err()) {
                return err("redis.url", e);
            }
            if timeout.is_zero() {
                return err(
                    &format!("{section}.store_timeout"),
                    "must be greater than 0s".into(),
                );
            }
        }
        self.validate_upstreams()?;
        self.validate_auth()?;
        self.database.validate()?;
        self.jobs.validate(&self.redis.url)?;
        if let Err(e) = palisade::cache_control::CacheControlLayer::new(&self.cache_control) {
            return err(&format!("cache_control.{}", e.key), e.message);
        }
        if let Err(e) = self.metrics.validate() {
            return err(&format!("metrics.{}", e.key), e.message);
        }
        if self.metrics.enabled && self.metrics.listen.is_none() {
            let path = &self.metrics.path;
            if crate::routes::reserved_paths().contains(&path.as_str()) {
                return err(
                    "metrics.path",
                    format!("{path:?} is taken by the health routes"),
                );
            }
        }
        if self.is_production() && self.trusted_hosts.allowed_hosts.is_empty() {
            return err(
                "trusted_hosts.allowed_hosts",
                "production needs the list of hosts this server answers for (or [\"*\"] to allow any)".into(),
            );
        }
        if self.is_production()
            && self.metrics.enabled
            && self.metrics.listen.is_none()
            && self.metrics.token.is_none()
        {
            return err(
                "metrics.token",
                "production serves metrics on the public listener only behind a token; set \
                 metrics.token, or metrics.listen to a private address, or metrics.enabled = false"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The example resources' caching: items are public data (30 s fresh, revalidated by ETag
/// after); orders are one caller's and never stored.
fn default_cache_control() -> palisade::cache_control::CacheControlConfig {
    use palisade::cache_control::{CacheControlConfig, CacheRouteConfig, Visibility};
    let secs = |s| Some(ConfigDuration(std::time::Duration::from_secs(s)));
    CacheControlConfig {
        routes: vec![
            CacheRouteConfig {
                path: "/api/v1/items/*".into(),
                visibility: Visibility::Public,
                max_age: secs(30),
                stale_while_revalidate: secs(30),
                vary: vec!["Accept-Encoding".into()],
            },
            CacheRouteConfig {
                path: "/api/v1/orders/*".into(),
                visibility: Visibility::NoStore,
                max_age: None,
                stale_while_revalidate: None,
                vary: Vec::new(),
            },
        ],
        ..CacheControlConfig::default()
    }
}

/// Whether `url` parses as a Redis URL; the message never repeats it (it may hold a password).
fn redis_url_ok(url: &str) -> Result<(), String> {
    let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|s| url.starts_with(s));
    if scheme_ok {
        Ok(())
    } else {
        Err("is not a Redis URL; expected redis://[:password@]host:port[/db]".into())
    }
}
