use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Default latency buckets, in seconds: 1 ms to 10 s.
pub const DEFAULT_DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Default body-size buckets, in bytes: 64 B to 16 MiB, by fours.
pub const DEFAULT_SIZE_BUCKETS: [f64; 10] = [
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
];
/// The most buckets a histogram may have.
pub const MAX_BUCKETS: usize = 40;

/// `[metrics]`: what is recorded and where the exposition is served.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Record and serve metrics. Default `true`.
    pub enabled: bool,
    /// The exposition path. Default `/metrics`.
    pub path: String,
    /// Serve the exposition on this separate address instead of the main listener (e.g.
    /// `127.0.0.1:9090`, reachable by the scraper only). Default: none.
    pub listen: Option<SocketAddr>,
    /// When set, scrapes must send `Authorization: Bearer <token>`. Never logged.
    pub token: Option<String>,
    /// Upper bounds of `http_request_duration_seconds`, in seconds, increasing.
    pub duration_buckets: Vec<f64>,
    /// Upper bounds of `http_request_size_bytes` and `http_response_size_bytes`, in bytes.
    pub size_buckets: Vec<f64>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/metrics".into(),
            listen: None,
            token: None,
            duration_buckets: DEFAULT_DURATION_BUCKETS.to_vec(),
            size_buckets: DEFAULT_SIZE_BUCKETS.to_vec(),
        }
    }
}

impl std::fmt::Debug for MetricsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsConfig")
            .field("enabled", &self.enabled)
            .field("path", &self.path)
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("duration_buckets", &self.duration_buckets)
            .field("size_buckets", &self.size_buckets)
            .finish()
    }
}

impl MetricsConfig {
    /// Checks the keys; errors name the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.path.starts_with('/') || self.path.contains(['?', '#', ' ']) {
            return Err(ConfigError::new("path", "must be a path starting with '/'"));
        }
        if let Some(token) = &self.token {
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::new(
                    "token",
                    "must be at least 16 visible ASCII characters",
                ));
            }
        }
        check_buckets("duration_buckets", &self.duration_buckets)?;
        check_buckets("size_buckets", &self.size_buckets)
    }
}

/// Bounds that are finite, positive, strictly increasing and at most [`MAX_BUCKETS`].
fn check_buckets(key: &str, bounds: &[f64]) -> Result<(), ConfigError> {
    if bounds.is_empty() || bounds.len() > MAX_BUCKETS {
        return Err(ConfigError::new(
            key,
            format!("must list 1 to {MAX_BUCKETS} bounds"),
        ));
    }
    if bounds.iter().any(|b| !b.is_finite() || *b <= 0.0) || bounds.windows(2).any(|w| w[0] >= w[1])
    {
        return Err(ConfigError::new(
            key,
            "must be positive, finite and strictly increasing",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        MetricsConfig::default().validate().unwrap();
    }

    #[test]
    fn unordered_or_empty_buckets_are_refused_by_key() {
        let mut c = MetricsConfig {
            duration_buckets: vec![0.1, 0.1],
            ..MetricsConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "duration_buckets");
        c.duration_buckets = vec![0.1];
        c.size_buckets = Vec::new();
        assert_eq!(c.validate().unwrap_err().key, "size_buckets");
    }

    #[test]
    fn a_short_token_is_refused_and_never_printed() {
        let c = MetricsConfig {
            token: Some("short".into()),
            ..MetricsConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "token");
        assert!(!format!("{c:?}").contains("short"));
    }
}
