//! `Cache-Control` (and `Vary`) per route, on successful `GET`/`HEAD` responses.
//!
//! Each rule names a path pattern and a policy: `public`, `private`, `no-cache` (store, but
//! revalidate every time: pairs well with `ETag`) or `no-store`, with `max_age` and
//! `stale_while_revalidate`. The header is added only
//!
//! - to `GET` and `HEAD` requests answered `2xx` or `304`,
//! - when the handler (or upstream) did not set `Cache-Control` itself: a handler's own value
//!   always wins;
//!
//! and `Vary` gains the rule's field names that it does not list yet. A `public` rule on a
//! request that carried credentials is sent as `private`: a response computed for one caller
//! must not land in a shared cache. Credentials are any of `credential_headers`
//! (`Authorization`, `Cookie`, `X-API-Key` by default), or an authenticated subject in the
//! [request context](crate::context).
//!
//! ```
//! use palisade::cache_control::{CacheControlConfig, CacheControlLayer, CacheRouteConfig, Visibility};
//! use palisade::duration::ConfigDuration;
//! use std::time::Duration;
//!
//! let config = CacheControlConfig {
//!     routes: vec![CacheRouteConfig {
//!         path: "/catalog/*".into(),
//!         visibility: Visibility::Public,
//!         max_age: Some(ConfigDuration(Duration::from_secs(300))),
//!         stale_while_revalidate: None,
//!         vary: vec!["Accept-Encoding".into()],
//!     }],
//!     ..CacheControlConfig::default()
//! };
//! let layer = CacheControlLayer::new(&config).expect("valid config");
//! let app: axum::Router = axum::Router::new()
//!     .route("/catalog/{id}", axum::routing::get(|| async { "item" }))
//!     .layer(layer);
//! # let _ = app;
//! ```
//!
//! Ordering: anywhere the handler's response headers are visible; the server puts it right
//! around the router (and the panic catcher).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, header};
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    context::RequestContext,
    duration::ConfigDuration,
    error::ConfigError,
    macros::define_inner_service_accessors,
    path_pattern::{RouteMatch, RouteRules},
};

/// Who may store a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Visibility {
    /// Any cache, shared ones included (`private` when the request carried credentials).
    Public,
    /// The client's own cache only.
    Private,
    /// Stored, but revalidated before every use.
    NoCache,
    /// Never stored.
    NoStore,
}

/// One `[[cache_control.routes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheRouteConfig {
    /// Path pattern: `/api/v1/items/*`, `/items/{id}`.
    pub path: String,
    /// `public`, `private`, `no-cache` or `no-store`.
    pub visibility: Visibility,
    /// `max-age`, whole seconds (not with `no-store`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<ConfigDuration>,
    /// `stale-while-revalidate`, whole seconds (not with `no-store`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_while_revalidate: Option<ConfigDuration>,
    /// Request fields the response varies by, added to `Vary`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vary: Vec<String>,
}

/// `[cache_control]`: caching policy per route. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheControlConfig {
    /// Off: no header is added. Default `true` (with no rules it does nothing).
    pub enabled: bool,
    /// Rules, first match wins; unmatched routes get nothing.
    pub routes: Vec<CacheRouteConfig>,
    /// Request headers that carry credentials: with any of them a `public` rule is sent as
    /// `private`. Default `Authorization`, `Cookie`, `X-API-Key`.
    pub credential_headers: Vec<String>,
}

impl Default for CacheControlConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            routes: Vec::new(),
            credential_headers: ["Authorization", "Cookie", "X-API-Key"]
                .map(String::from)
                .to_vec(),
        }
    }
}

#[derive(Debug)]
struct Rule {
    value: HeaderValue,
    /// `value` with `public` replaced by `private`, for requests with credentials.
    private_value: Option<HeaderValue>,
    vary: Box<[HeaderName]>,
}

/// Adds `Cache-Control` per route. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct CacheControlLayer {
    rules: Arc<Rules>,
}

#[derive(Debug)]
struct Rules {
    routes: RouteRules<Rule>,
    credential_headers: Box<[HeaderName]>,
}

impl Rules {
    fn has_credentials<B>(&self, req: &Request<B>) -> bool {
        self.credential_headers
            .iter()
            .any(|h| req.headers().contains_key(h))
            || req
                .extensions()
                .get::<RequestContext>()
                .is_some_and(|c| c.subject().is_some())
    }
}

impl CacheControlLayer {
    /// The layer for `config` (`enabled` is the caller's business); errors name the key.
    pub fn new(config: &CacheControlConfig) -> Result<Self, ConfigError> {
        let mut rules = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            let key = |k: &str| format!("routes[{i}].{k}");
            let route = RouteMatch::compile(i, &r.path, &[])?;
            let timed = r.max_age.is_some() || r.stale_while_revalidate.is_some();
            if r.visibility == Visibility::NoStore && timed {
                return Err(ConfigError::new(
                    key("max_age"),
                    "no-store responses are never stored: max_age and stale_while_revalidate do not apply",
                ));
            }
            let directives = |visibility: &str| {
                let mut v = visibility.to_owned();
                if let Some(a) = r.max_age {
                    v.push_str(&format!(", max-age={}", a.0.as_secs()));
                }
                if let Some(s) = r.stale_while_revalidate {
                    v.push_str(&format!(", stale-while-revalidate={}", s.0.as_secs()));
                }
                HeaderValue::try_from(v).expect("ASCII directives")
            };
            let value = directives(match r.visibility {
                Visibility::Public => "public",
                Visibility::Private => "private",
                Visibility::NoCache => "no-cache",
                Visibility::NoStore => "no-store",
            });
            let private_value = (r.visibility == Visibility::Public).then(|| directives("private"));
            let vary = header_names(&format!("routes[{i}].vary"), &r.vary)?;
            rules.push((
                route,
                Rule {
                    value,
                    private_value,
                    vary,
                },
            ));
        }
        let credential_headers = header_names("credential_headers", &config.credential_headers)?;
        Ok(Self {
            rules: Arc::new(Rules {
                routes: RouteRules::new(rules),
                credential_headers,
            }),
        })
    }
}

/// Parses a configured list of header names; errors name `<key>[<index>]`.
fn header_names(key: &str, names: &[String]) -> Result<Box<[HeaderName]>, ConfigError> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| ConfigError::new(format!("{key}[{i}]"), "not a header name"))
        })
        .collect()
}

impl<S> Layer<S> for CacheControlLayer {
    type Service = CacheControl<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheControl {
            inner,
            rules: self.rules.clone(),
        }
    }
}

/// The service made by [`CacheControlLayer`].
#[derive(Debug, Clone)]
pub struct CacheControl<S> {
    inner: S,
    rules: Arc<Rules>,
}

impl<S> CacheControl<S> {
    define_inner_service_accessors!();
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for CacheControl<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let method = req.method();
        let chosen = if *method == Method::GET || *method == Method::HEAD {
            self.rules
                .routes
                .position(method, req.uri().path())
                .map(|i| (i, self.rules.has_credentials(&req)))
        } else {
            None
        };
        ResponseFuture {
            inner: self.inner.call(req),
            rules: chosen.map(|c| (self.rules.clone(), c)),
        }
    }
}

pin_project! {
    /// The response future of [`CacheControl`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        rules: Option<(Arc<Rules>, (usize, bool))>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if let Some((rules, (index, credentials))) = this.rules.take() {
            let status = res.status();
            if status.is_success() || status == http::StatusCode::NOT_MODIFIED {
                apply(rules.routes.get(index), credentials, res.headers_mut());
            }
        }
        Poll::Ready(Ok(res))
    }
}

fn apply(rule: &Rule, credentials: bool, headers: &mut HeaderMap) {
    if !headers.contains_key(header::CACHE_CONTROL) {
        let value = match (&rule.private_value, credentials) {
            (Some(private), true) => private.clone(),
            _ => rule.value.clone(),
        };
        headers.insert(header::CACHE_CONTROL, value);
    }
    for name in &*rule.vary {
        let listed = headers.get_all(header::VARY).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case(name.as_str()))
            })
        });
        if !listed {
            headers.append(header::VARY, HeaderValue::from_name(name.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::StatusCode;
    use tower::{ServiceExt, service_fn};

    use super::*;

    fn layer() -> CacheControlLayer {
        CacheControlLayer::new(&CacheControlConfig {
            routes: vec![
                CacheRouteConfig {
                    path: "/public/*".into(),
                    visibility: Visibility::Public,
                    max_age: Some(ConfigDuration(Duration::from_secs(60))),
                    stale_while_revalidate: Some(ConfigDuration(Duration::from_secs(30))),
                    vary: vec!["Accept-Encoding".into(), "Accept".into()],
                },
                CacheRouteConfig {
                    path: "/mine/*".into(),
                    visibility: Visibility::NoStore,
                    max_age: None,
                    stale_while_revalidate: None,
                    vary: vec![],
                },
            ],
            ..CacheControlConfig::default()
        })
        .unwrap()
    }

    /// Answers `status`, with the handler's own headers from `x-set-*` request headers.
    async fn call(
        method: &str,
        path: &str,
        status: u16,
        req_headers: &[(&str, &str)],
    ) -> Response<()> {
        let svc = layer().layer(service_fn(move |req: Request<()>| async move {
            let mut res = Response::builder().status(status);
            if let Some(v) = req.headers().get("x-set-cache-control") {
                res = res.header(header::CACHE_CONTROL, v);
            }
            if let Some(v) = req.headers().get("x-set-vary") {
                res = res.header(header::VARY, v);
            }
            Ok::<_, std::convert::Infallible>(res.body(()).unwrap())
        }));
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in req_headers {
            req = req.header(*k, *v);
        }
        svc.oneshot(req.body(()).unwrap()).await.unwrap()
    }

    fn cc(res: &Response<()>) -> Option<&str> {
        res.headers()
            .get(header::CACHE_CONTROL)
            .map(|v| v.to_str().unwrap())
    }

    #[tokio::test]
    async fn successful_reads_of_a_matching_route_get_the_policy_and_vary() {
        let res = call("GET", "/public/a", 200, &[]).await;
        assert_eq!(
            cc(&res),
            Some("public, max-age=60, stale-while-revalidate=30")
        );
        let vary: Vec<_> = res.headers().get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["accept-encoding", "accept"]);
        assert_eq!(
            cc(&call("HEAD", "/public/a", 304, &[]).await),
            Some("public, max-age=60, stale-while-revalidate=30")
        );
        assert_eq!(
            cc(&call("GET", "/mine/1", 200, &[]).await),
            Some("no-store")
        );
    }

    #[tokio::test]
    async fn errors_writes_and_unmatched_routes_are_left_alone() {
        assert_eq!(cc(&call("GET", "/public/a", 404, &[]).await), None);
        assert_eq!(cc(&call("GET", "/public/a", 500, &[]).await), None);
        assert_eq!(cc(&call("POST", "/public/a", 200, &[]).await), None);
        assert_eq!(cc(&call("GET", "/elsewhere", 200, &[]).await), None);
    }

    #[tokio::test]
    async fn the_handlers_own_header_wins_and_vary_is_merged_not_repeated() {
        let res = call(
            "GET",
            "/public/a",
            200,
            &[
                ("x-set-cache-control", "max-age=5"),
                ("x-set-vary", "Accept-Encoding"),
            ],
        )
        .await;
        assert_eq!(cc(&res), Some("max-age=5"));
        let vary: Vec<_> = res.headers().get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Accept-Encoding", "accept"]);
    }

    #[tokio::test]
    async fn public_becomes_private_for_requests_with_credentials() {
        let res = call("GET", "/public/a", 200, &[("authorization", "Bearer x")]).await;
        assert_eq!(
            cc(&res),
            Some("private, max-age=60, stale-while-revalidate=30")
        );
        let res = call(
            "GET",
            "/public/a",
            StatusCode::OK.as_u16(),
            &[("cookie", "s=1")],
        )
        .await;
        assert!(cc(&res).unwrap().starts_with("private"));
        let res = call("GET", "/public/a", 200, &[("x-api-key", "k")]).await;
        assert!(cc(&res).unwrap().starts_with("private"));
    }

    #[test]
    fn no_store_with_a_max_age_is_a_config_error() {
        let err = CacheControlLayer::new(&CacheControlConfig {
            routes: vec![CacheRouteConfig {
                path: "/x".into(),
                visibility: Visibility::NoStore,
                max_age: Some(ConfigDuration(Duration::from_secs(1))),
                stale_while_revalidate: None,
                vary: vec![],
            }],
            ..CacheControlConfig::default()
        })
        .unwrap_err();
        assert_eq!(err.key, "routes[0].max_age");
    }
}
