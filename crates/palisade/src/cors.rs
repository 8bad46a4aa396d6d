//! CORS from a plain config, validated up front, built on tower-http's `CorsLayer`.
//!
//! tower-http panics when a layer combines credentials with a wildcard; here that combination,
//! an origin that is not `scheme://host[:port]`, or a header or method that is not a valid
//! token is a [`ConfigError`] naming the key, returned when the layer is built. An empty
//! `allow_origins` means CORS is off ([`CorsConfig::into_layer`] returns `None`).
//!
//! ```
//! use palisade::cors::CorsConfig;
//!
//! let config = CorsConfig {
//!     allow_origins: vec!["https://app.example.com".into()],
//!     allow_credentials: true,
//!     ..Default::default()
//! };
//! let layer = config.into_layer().expect("valid").expect("enabled");
//! # let _ = layer;
//!
//! let bad = CorsConfig { allow_origins: vec!["*".into()], allow_credentials: true, ..Default::default() };
//! assert_eq!(bad.into_layer().unwrap_err().key, "allow_credentials");
//! ```
//!
//! Ordering: outside every layer that rejects (rate limits, auth), so browsers can read the
//! problem responses, and inside the request context.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer, ExposeHeaders};

use crate::error::ConfigError;

/// CORS configuration. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Allowed origins (`https://app.example.com`), or `["*"]`. Empty: CORS off.
    pub allow_origins: Vec<String>,
    /// Allowed methods, or `["*"]`.
    pub allow_methods: Vec<String>,
    /// Allowed request headers, or `["*"]`.
    pub allow_headers: Vec<String>,
    /// Response headers the browser may read.
    pub expose_headers: Vec<String>,
    /// `Access-Control-Allow-Credentials`. Not allowed with any wildcard.
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight, in seconds.
    pub max_age_secs: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allow_origins: Vec::new(),
            allow_methods: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
                .map(String::from)
                .to_vec(),
            allow_headers: [
                "authorization",
                "content-type",
                "idempotency-key",
                "x-request-id",
                "x-correlation-id",
            ]
            .map(String::from)
            .to_vec(),
            expose_headers: ["x-request-id", "x-correlation-id", "retry-after"]
                .map(String::from)
                .to_vec(),
            allow_credentials: false,
            max_age_secs: 600,
        }
    }
}

fn is_wildcard(list: &[String]) -> bool {
    list.iter().any(|s| s.trim() == "*")
}

fn header_names(key: &str, list: &[String]) -> Result<Vec<HeaderName>, ConfigError> {
    list.iter()
        .map(|h| {
            HeaderName::from_bytes(h.trim().as_bytes())
                .map_err(|_| ConfigError::new(key, format!("{h:?} is not a valid header name")))
        })
        .collect()
}

fn valid_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && !rest.is_empty()
        && !rest.contains('/')
        && !rest.contains('*')
        && rest.parse::<http::uri::Authority>().is_ok()
}

impl CorsConfig {
    /// Validates and builds the layer; `Ok(None)` when no origin is allowed (CORS off). The
    /// other keys are validated even then, so a mistake shows before CORS is switched on.
    pub fn into_layer(&self) -> Result<Option<CorsLayer>, ConfigError> {
        let layer = self.build()?;
        Ok((!self.allow_origins.is_empty()).then_some(layer))
    }

    fn build(&self) -> Result<CorsLayer, ConfigError> {
        let wildcard_origin = is_wildcard(&self.allow_origins);
        if self.allow_credentials
            && (wildcard_origin
                || is_wildcard(&self.allow_methods)
                || is_wildcard(&self.allow_headers))
        {
            return Err(ConfigError::new(
                "allow_credentials",
                "credentials cannot be combined with a `*` in allow_origins, allow_methods or \
                 allow_headers; list them explicitly",
            ));
        }
        let origin = if wildcard_origin {
            if self.allow_origins.len() > 1 {
                return Err(ConfigError::new(
                    "allow_origins",
                    "`*` must be the only entry",
                ));
            }
            AllowOrigin::any()
        } else if self.allow_origins.is_empty() {
            AllowOrigin::list([])
        } else {
            let mut values = Vec::with_capacity(self.allow_origins.len());
            for o in &self.allow_origins {
                let o = o.trim().trim_end_matches('/');
                if !valid_origin(o) {
                    return Err(ConfigError::new(
                        "allow_origins",
                        format!("{o:?} is not an origin like \"https://app.example.com\""),
                    ));
                }
                values.push(HeaderValue::from_str(o).expect("validated origin"));
            }
            AllowOrigin::list(values)
        };
        let methods = if is_wildcard(&self.allow_methods) {
            AllowMethods::any()
        } else {
            let methods = self
                .allow_methods
                .iter()
                .map(|m| {
                    Method::from_bytes(m.trim().as_bytes()).map_err(|_| {
                        ConfigError::new("allow_methods", format!("{m:?} is not an HTTP method"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            AllowMethods::list(methods)
        };
        let headers = if is_wildcard(&self.allow_headers) {
            AllowHeaders::any()
        } else {
            AllowHeaders::list(header_names("allow_headers", &self.allow_headers)?)
        };
        let expose = if is_wildcard(&self.expose_headers) {
            if self.allow_credentials {
                return Err(ConfigError::new(
                    "expose_headers",
                    "`*` cannot be combined with allow_credentials",
                ));
            }
            ExposeHeaders::any()
        } else {
            ExposeHeaders::list(header_names("expose_headers", &self.expose_headers)?)
        };
        Ok(CorsLayer::new()
            .allow_origin(origin)
            .allow_methods(methods)
            .allow_headers(headers)
            .expose_headers(expose)
            .allow_credentials(self.allow_credentials)
            .max_age(Duration::from_secs(self.max_age_secs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_origins(o: &[&str]) -> CorsConfig {
        CorsConfig {
            allow_origins: o.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn no_origins_means_cors_is_off() {
        assert!(CorsConfig::default().into_layer().unwrap().is_none());
    }

    #[test]
    fn other_keys_are_validated_even_while_cors_is_off() {
        let c = CorsConfig {
            allow_methods: vec!["GE T".into()],
            ..Default::default()
        };
        assert_eq!(c.into_layer().unwrap_err().key, "allow_methods");
    }

    #[test]
    fn origins_with_paths_or_without_scheme_are_refused() {
        for o in [
            "example.com",
            "https://example.com/app",
            "https://*.example.com",
            "://x",
        ] {
            let err = with_origins(&[o]).into_layer().unwrap_err();
            assert_eq!(err.key, "allow_origins", "{o}");
        }
        assert!(
            with_origins(&["https://example.com:8443", "http://localhost:3000"])
                .into_layer()
                .is_ok()
        );
    }

    #[test]
    fn credentials_with_wildcard_headers_are_refused() {
        let mut c = with_origins(&["https://a.example"]);
        c.allow_credentials = true;
        c.allow_headers = vec!["*".into()];
        assert_eq!(c.into_layer().unwrap_err().key, "allow_credentials");
    }

    #[test]
    fn bad_header_names_name_their_key() {
        let mut c = with_origins(&["https://a.example"]);
        c.expose_headers = vec!["bad header".into()];
        assert_eq!(c.into_layer().unwrap_err().key, "expose_headers");
    }
}
