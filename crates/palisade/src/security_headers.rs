//! Security response headers after the OWASP Secure Headers Project.
//!
//! Defaults: `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`,
//! `Referrer-Policy: no-referrer`, a deny-all `Permissions-Policy`,
//! `Cross-Origin-Opener-Policy: same-origin`, `Cross-Origin-Resource-Policy: same-origin`,
//! no `Content-Security-Policy` unless configured, and no `X-XSS-Protection` (OWASP: the old
//! XSS auditor is harmful; absence is the safe choice). `Strict-Transport-Security` is sent
//! only when enabled **and** the request came over HTTPS (own TLS, or a trusted proxy reporting
//! `https`, as resolved into the [request context](crate::context)). Any `Server` header from
//! an inner service (a proxied upstream, say) is removed so versions never leak.
//!
//! Headers the handler already set are kept, so a route can loosen its own policy; the
//! exceptions are `Strict-Transport-Security`, which this layer owns (set on HTTPS, removed on
//! plain HTTP), and `Server`/`X-Powered-By`, which are always removed.
//!
//! ```
//! use palisade::security_headers::{SecurityHeadersConfig, SecurityHeadersLayer};
//!
//! let layer = SecurityHeadersLayer::new(&SecurityHeadersConfig {
//!     content_security_policy: "default-src 'none'; frame-ancestors 'none'".into(),
//!     ..Default::default()
//! })
//! .expect("valid header values");
//! let svc = tower::ServiceBuilder::new().layer(layer).service_fn(|_r: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(()))
//! });
//! # let _ = svc;
//! ```
//!
//! Ordering: outside every layer that rejects, so problem responses carry the headers too.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{HeaderName, HeaderValue, Request, Response, header};
use pin_project_lite::pin_project;
use serde::Deserialize;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::ConfigError;

/// Configuration for [`SecurityHeadersLayer`]. An empty string switches a header off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityHeadersConfig {
    /// Add the headers at all (`false`: the layer passes responses through untouched).
    pub enabled: bool,
    /// `X-Frame-Options`.
    pub frame_options: String,
    /// `Referrer-Policy`.
    pub referrer_policy: String,
    /// `Permissions-Policy`.
    pub permissions_policy: String,
    /// `Cross-Origin-Opener-Policy`.
    pub cross_origin_opener_policy: String,
    /// `Cross-Origin-Resource-Policy`.
    pub cross_origin_resource_policy: String,
    /// `Content-Security-Policy` (off by default).
    pub content_security_policy: String,
    /// Send `Strict-Transport-Security` on HTTPS requests.
    pub hsts: bool,
    /// HSTS `max-age` in seconds.
    pub hsts_max_age: u64,
    /// HSTS `includeSubDomains`.
    pub hsts_include_subdomains: bool,
    /// HSTS `preload` (only set this after registering at hstspreload.org).
    pub hsts_preload: bool,
}

impl Default for SecurityHeadersConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            frame_options: "DENY".into(),
            referrer_policy: "no-referrer".into(),
            permissions_policy: DEFAULT_PERMISSIONS_POLICY.into(),
            cross_origin_opener_policy: "same-origin".into(),
            cross_origin_resource_policy: "same-origin".into(),
            content_security_policy: String::new(),
            hsts: false,
            hsts_max_age: 31_536_000,
            hsts_include_subdomains: true,
            hsts_preload: false,
        }
    }
}

/// Adds the security headers. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct SecurityHeadersLayer {
    headers: Arc<Headers>,
}

#[derive(Debug)]
struct Headers {
    enabled: bool,
    always: Vec<(HeaderName, HeaderValue)>,
    hsts: Option<HeaderValue>,
}

impl SecurityHeadersLayer {
    /// Builds the layer; every header value is validated once, here.
    pub fn new(config: &SecurityHeadersConfig) -> Result<Self, ConfigError> {
        let mut always = vec![(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        )];
        let pairs = [
            (
                "frame_options",
                header::X_FRAME_OPTIONS,
                &config.frame_options,
            ),
            (
                "referrer_policy",
                header::REFERRER_POLICY,
                &config.referrer_policy,
            ),
            (
                "permissions_policy",
                HeaderName::from_static("permissions-policy"),
                &config.permissions_policy,
            ),
            (
                "cross_origin_opener_policy",
                HeaderName::from_static("cross-origin-opener-policy"),
                &config.cross_origin_opener_policy,
            ),
            (
                "cross_origin_resource_policy",
                HeaderName::from_static("cross-origin-resource-policy"),
                &config.cross_origin_resource_policy,
            ),
            (
                "content_security_policy",
                header::CONTENT_SECURITY_POLICY,
                &config.content_security_policy,
            ),
        ];
        for (key, name, value) in pairs {
            if value.trim().is_empty() {
                continue;
            }
            let value = static_value(value.trim())
                .map_or_else(|| HeaderValue::from_str(value.trim()), Ok)
                .map_err(|_| {
                    ConfigError::new(key, "must be visible ASCII text (a valid header value)")
                })?;
            always.push((name, value));
        }
        let hsts = config.hsts.then(|| {
            let mut v = format!("max-age={}", config.hsts_max_age);
            if config.hsts_include_subdomains {
                v.push_str("; includeSubDomains");
            }
            if config.hsts_preload {
                v.push_str("; preload");
            }
            HeaderValue::from_str(&v).expect("digits and ASCII")
        });
        if config.hsts
            && config.hsts_preload
            && (config.hsts_max_age < 31_536_000 || !config.hsts_include_subdomains)
        {
            return Err(ConfigError::new(
                "hsts_preload",
                "preload needs hsts_max_age >= 31536000 and hsts_include_subdomains = true",
            ));
        }
        Ok(Self {
            headers: Arc::new(Headers {
                enabled: config.enabled,
                always,
                hsts,
            }),
        })
    }
}

const X_POWERED_BY: HeaderName = HeaderName::from_static("x-powered-by");

const DEFAULT_PERMISSIONS_POLICY: &str = "accelerometer=(), camera=(), geolocation=(), \
     gyroscope=(), magnetometer=(), microphone=(), payment=(), usb=()";

/// Common values as `'static` header values: cloning those per response costs no atomic
/// reference count, unlike values built from config text.
fn static_value(value: &str) -> Option<HeaderValue> {
    const KNOWN: [&str; 8] = [
        "DENY",
        "SAMEORIGIN",
        "no-referrer",
        "strict-origin-when-cross-origin",
        "same-origin",
        "same-site",
        "cross-origin",
        DEFAULT_PERMISSIONS_POLICY,
    ];
    KNOWN
        .iter()
        .find(|k| **k == value)
        .map(|k| HeaderValue::from_static(k))
}

impl<S> Layer<S> for SecurityHeadersLayer {
    type Service = SecurityHeaders<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SecurityHeaders {
            inner,
            headers: self.headers.clone(),
        }
    }
}

/// The service made by [`SecurityHeadersLayer`].
#[derive(Debug, Clone)]
pub struct SecurityHeaders<S> {
    inner: S,
    headers: Arc<Headers>,
}

impl<S> SecurityHeaders<S> {
    crate::macros::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SecurityHeaders<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let https = req
            .extensions()
            .get::<crate::context::RequestContext>()
            .is_some_and(|c| c.is_https());
        ResponseFuture {
            inner: self.inner.call(req),
            headers: self.headers.clone(),
            https,
        }
    }
}

pin_project! {
    /// Response future of [`SecurityHeaders`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        headers: Arc<Headers>,
        https: bool,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx))?;
        if !this.headers.enabled {
            return Poll::Ready(Ok(res));
        }
        let h = res.headers_mut();
        // One growth of the map instead of several as headers are added one by one.
        h.reserve(this.headers.always.len() + 1);
        for (name, value) in &this.headers.always {
            h.entry(name).or_insert_with(|| value.clone());
        }
        if *this.https {
            if let Some(hsts) = &this.headers.hsts {
                h.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
            }
        }
        // One pass over the names (a handful) instead of a hashed lookup per name removed;
        // they are rarely there at all.
        let strip = |name: &HeaderName| {
            name == header::SERVER
                || name == X_POWERED_BY
                // HSTS over plain HTTP is meaningless and may leak from a proxied upstream.
                || (!*this.https && name == header::STRICT_TRANSPORT_SECURITY)
        };
        if h.keys().any(strip) {
            h.remove(header::SERVER);
            h.remove(X_POWERED_BY);
            if !*this.https {
                h.remove(header::STRICT_TRANSPORT_SECURITY);
            }
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_with_newlines_are_a_config_error_naming_the_key() {
        let err = SecurityHeadersLayer::new(&SecurityHeadersConfig {
            referrer_policy: "no-referrer\r\nX-Evil: 1".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.key, "referrer_policy");
    }

    /// Each stripped name on its own: the one-pass scan must find any of them.
    #[tokio::test]
    async fn server_powered_by_and_plain_http_hsts_are_stripped_each_alone() {
        let layer = SecurityHeadersLayer::new(&SecurityHeadersConfig::default()).unwrap();
        for (name, https, stripped) in [
            ("server", false, true),
            ("x-powered-by", false, true),
            ("x-powered-by", true, true),
            ("strict-transport-security", false, true),
            ("x-custom", false, false),
        ] {
            let mut res = Response::new(());
            res.headers_mut()
                .insert(HeaderName::from_static(name), HeaderValue::from_static("v"));
            let fut = ResponseFuture {
                inner: std::future::ready(Ok::<_, std::convert::Infallible>(res)),
                headers: layer.headers.clone(),
                https,
            };
            let res = fut.await.unwrap();
            assert_eq!(
                res.headers().get(name).is_none(),
                stripped,
                "{name} over https={https}"
            );
        }
    }

    #[test]
    fn preload_without_a_year_is_refused() {
        let err = SecurityHeadersLayer::new(&SecurityHeadersConfig {
            hsts: true,
            hsts_preload: true,
            hsts_max_age: 60,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.key, "hsts_preload");
    }
}
