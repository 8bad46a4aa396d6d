//! Trusted hosts: refuse requests whose `Host` is not on the allowlist (a 400 problem).
//!
//! Patterns: an exact host (`api.example.com`), a wildcard for subdomains (`*.example.com`,
//! which does not match `example.com` itself), or `*` for any host. Matching ignores case and
//! the port. For HTTP/2 requests the `:authority` is used. An empty allowlist allows every
//! host. [Exempt paths](crate::exempt) (health probes, which arrive addressed to a pod IP) are
//! never checked.
//!
//! ```
//! use palisade::{exempt::ExemptPaths, trusted_host::TrustedHostLayer};
//!
//! let layer = TrustedHostLayer::new(["api.example.com", "*.example.org"], ExemptPaths::health())
//!     .expect("valid patterns");
//! let svc = tower::ServiceBuilder::new().layer(layer).service_fn(|_r: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(axum_core::body::Body::empty()))
//! });
//! # let _ = svc;
//! ```
//!
//! Ordering: inside the request context (the problem carries the request id), outside
//! everything that does real work.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use axum_core::body::Body;
use http::{Request, Response, StatusCode, header};
use tower_layer::Layer;
use tower_service::Service;

use crate::rejection::Rejection;
use crate::{error::ConfigError, exempt::ExemptPaths, future::RejectOr, problem::Problem};

#[derive(Debug)]
enum Pattern {
    Any,
    Exact(Box<str>),
    /// `*.example.com` stored as `.example.com`.
    Suffix(Box<str>),
}

#[derive(Debug)]
struct Rules {
    patterns: Vec<Pattern>,
    exempt: ExemptPaths,
}

/// Enforces the host allowlist. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct TrustedHostLayer {
    rules: Arc<Rules>,
}

impl TrustedHostLayer {
    /// Builds the layer; patterns are validated here.
    pub fn new<I, P>(allowed: I, exempt: ExemptPaths) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        let mut patterns = Vec::new();
        for raw in allowed {
            let p = raw.as_ref().trim().to_ascii_lowercase();
            // Host names, or bracketed IPv6 literals; never a port (ports are ignored when
            // matching, so a pattern with one could never match).
            let valid_host = |h: &str| {
                if let Some(inner) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                    return inner.parse::<std::net::Ipv6Addr>().is_ok();
                }
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
            };
            let pattern = if p == "*" {
                Pattern::Any
            } else if let Some(rest) = p.strip_prefix("*.") {
                if !valid_host(rest) {
                    return Err(bad(raw.as_ref()));
                }
                Pattern::Suffix(format!(".{rest}").into())
            } else if valid_host(&p) && !p.contains('*') {
                Pattern::Exact(p.into())
            } else {
                return Err(bad(raw.as_ref()));
            };
            patterns.push(pattern);
        }
        Ok(Self {
            rules: Arc::new(Rules { patterns, exempt }),
        })
    }
}

fn bad(pattern: &str) -> ConfigError {
    ConfigError::new(
        "allowed_hosts",
        format!("{pattern:?} is not a host name, `*.domain` wildcard or `*`"),
    )
}

impl Rules {
    fn allows(&self, host: &str) -> bool {
        if self.patterns.is_empty() {
            return true;
        }
        let host = strip_port(host);
        self.patterns.iter().any(|p| match p {
            Pattern::Any => true,
            Pattern::Exact(h) => h.eq_ignore_ascii_case(host),
            Pattern::Suffix(s) => {
                host.len() > s.len()
                    && host.as_bytes()[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
        })
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

impl<S> Layer<S> for TrustedHostLayer {
    type Service = TrustedHost<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrustedHost {
            inner,
            rules: self.rules.clone(),
        }
    }
}

/// The service made by [`TrustedHostLayer`].
#[derive(Debug, Clone)]
pub struct TrustedHost<S> {
    inner: S,
    rules: Arc<Rules>,
}

impl<S> TrustedHost<S> {
    crate::macros::define_inner_service_accessors!();
}

impl<S, ReqBody> Service<Request<ReqBody>> for TrustedHost<S>
where
    S: Service<Request<ReqBody>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = RejectOr<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if self.rules.patterns.is_empty() || self.rules.exempt.contains(req.uri().path()) {
            return RejectOr::inner(self.inner.call(req));
        }
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        let detail = match host {
            Some(h) if self.rules.allows(h) => return RejectOr::inner(self.inner.call(req)),
            Some(_) => "the Host header names a host this server does not serve",
            None => "the request has no Host",
        };
        RejectOr::reject(
            Problem::new(StatusCode::BAD_REQUEST)
                .with_title("Host not allowed")
                .with_detail(detail)
                .with_rejection(Rejection::UntrustedHost)
                .into_response(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(p: &[&str]) -> Arc<Rules> {
        TrustedHostLayer::new(p, ExemptPaths::default())
            .unwrap()
            .rules
    }

    #[test]
    fn exact_hosts_match_ignoring_case_and_port() {
        let r = rules(&["api.example.com"]);
        assert!(r.allows("API.example.com:8443"));
        assert!(!r.allows("evil.com"));
        assert!(!r.allows("api.example.com.evil.com"));
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let r = rules(&["*.example.com"]);
        assert!(r.allows("a.example.com"));
        assert!(r.allows("a.b.example.com:80"));
        assert!(!r.allows("example.com"));
        assert!(!r.allows("badexample.com"));
    }

    #[test]
    fn ipv6_literals_are_matched_without_the_port() {
        let r = rules(&["[::1]"]);
        assert!(r.allows("[::1]:8080"));
    }

    #[test]
    fn invalid_patterns_are_config_errors() {
        for p in [
            "",
            "a b",
            "ex*ample.com",
            "*.",
            "http://x",
            "api.example.com:8443",
            "[nope]",
        ] {
            assert!(
                TrustedHostLayer::new([p], ExemptPaths::default()).is_err(),
                "{p:?} accepted"
            );
        }
    }
}
