//! Cheap checks on the request head before any real work: the content type of bodies, the
//! encoding of the path and query, and the size of the header section.
//!
//! - A request **with a body** whose `Content-Type` is not on the allowlist for its method
//!   (or its route) → `415` problem naming the accepted types (an `accepted` member, and
//!   `Accept-Post` / `Accept-Patch` headers for those methods). A body without any
//!   `Content-Type` is refused the same way. Requests without a body are not checked.
//!   Media ranges: `application/json` (exact, parameters ignored), `text/*`,
//!   `application/*+json` (any structured-syntax suffix), `*/*`.
//! - A path or query with invalid percent-encoding (`%zz`, a `%` near the end) or an encoded
//!   NUL byte (`%00`) → `400` problem. Raw control bytes never get this far: the HTTP parser
//!   refuses them.
//! - More than `max_headers` header fields, or more than `max_header_bytes` of names and
//!   values (each field counted as `name: value\r\n`) → `431` problem.
//!
//! ```
//! use palisade::content_validation::{ContentValidationConfig, ContentValidationLayer};
//!
//! let mut config = ContentValidationConfig::default();
//! config.content_types.insert("POST".into(), vec!["application/json".into()]);
//! let layer = ContentValidationLayer::new(&config).expect("valid config");
//! let app: axum::Router = axum::Router::new()
//!     .route("/items", axum::routing::post(|body: String| async move { body }))
//!     .layer(layer);
//! # let _ = app;
//! ```
//!
//! Ordering: early — after the layers that must see every response (context, access log,
//! security headers, CORS) and before load shedding, rate limits and anything that reads the
//! body. The server's HTTP parser has its own, higher hard limits (hyper answers a bare `431`
//! beyond them); set them above these so clients get the problem.

use std::{
    collections::BTreeMap,
    sync::Arc,
    task::{Context, Poll},
};

use axum_core::body::Body;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

use crate::rejection::Rejection;
use crate::{
    error::ConfigError,
    future::RejectOr,
    macros::define_inner_service_accessors,
    path_pattern::{RouteMatch, RouteRules},
    problem::Problem,
};

/// Default `max_headers`: 64 fields (below the HTTP parser's 100, so clients get the `431`
/// problem and the parser keeps its arrays on the stack).
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// The largest accepted `max_headers`.
pub const MAX_MAX_HEADERS: usize = 1000;
/// Default `max_header_bytes`: 32 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 << 10;

/// One `[[content_validation.routes]]` entry: the accepted types for some routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentTypeRouteConfig {
    /// Path pattern: `/uploads/*`, `/items/{id}`.
    pub path: String,
    /// Methods this rule applies to; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Media ranges accepted for bodies of matching requests; empty: any.
    pub content_types: Vec<String>,
}

/// `[content_validation]`: what a request head may look like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContentValidationConfig {
    /// Off: nothing is checked. Default `true`.
    pub enabled: bool,
    /// Accepted media ranges for request bodies, by method. Methods not listed accept any
    /// body. Default: `POST`, `PUT` and `PATCH` accept `application/json`,
    /// `application/*+json`, `application/x-www-form-urlencoded` and `multipart/form-data`.
    pub content_types: BTreeMap<String, Vec<String>>,
    /// Per-route allowlists, first match wins; they replace the per-method list.
    pub routes: Vec<ContentTypeRouteConfig>,
    /// Most header fields in a request, at most 1000. Default `64`.
    pub max_headers: usize,
    /// Most bytes of header names and values in a request. Default 32 KiB.
    pub max_header_bytes: usize,
}

impl Default for ContentValidationConfig {
    fn default() -> Self {
        let body_types: Vec<String> = [
            "application/json",
            "application/*+json",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        Self {
            enabled: true,
            content_types: ["POST", "PUT", "PATCH"]
                .into_iter()
                .map(|m| (m.to_owned(), body_types.clone()))
                .collect(),
            routes: Vec::new(),
            max_headers: DEFAULT_MAX_HEADERS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

/// A media range from the allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MediaRange {
    Any,
    /// `text/*`
    Type(Box<str>),
    /// `application/*+json`
    Suffix(Box<str>, Box<str>),
    /// `application/json`
    Exact(Box<str>, Box<str>),
}

impl MediaRange {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (ty, sub) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a media range like \"application/json\""))?;
        let token = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        let lower = |t: &str| t.to_ascii_lowercase().into_boxed_str();
        match (ty, sub) {
            ("*", "*") => Ok(Self::Any),
            (t, "*") if token(t) => Ok(Self::Type(lower(t))),
            (t, s) if token(t) && s.starts_with("*+") && token(&s[2..]) => {
                Ok(Self::Suffix(lower(t), lower(&s[2..])))
            }
            (t, s) if token(t) && token(s) => Ok(Self::Exact(lower(t), lower(s))),
            _ => Err(format!(
                "{s:?} is not a media range like \"application/json\", \"text/*\" or \"application/*+json\""
            )),
        }
    }

    /// `ty` and `sub` as sent, any case.
    fn matches(&self, ty: &str, sub: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Type(t) => t.eq_ignore_ascii_case(ty),
            Self::Suffix(t, suffix) => {
                t.eq_ignore_ascii_case(ty)
                    && sub.len() > suffix.len() + 1
                    && sub.as_bytes()[sub.len() - suffix.len() - 1] == b'+'
                    && sub[sub.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            Self::Exact(t, s) => t.eq_ignore_ascii_case(ty) && s.eq_ignore_ascii_case(sub),
        }
    }
}

/// An allowlist and the way it is announced in a `415`.
#[derive(Debug)]
struct Allowed {
    ranges: Box<[MediaRange]>,
    /// The ranges as configured, for the problem and the `Accept-*` headers.
    listed: HeaderValue,
    names: Box<[Box<str>]>,
}

impl Allowed {
    fn new(key: &str, types: &[String]) -> Result<Option<Arc<Self>>, ConfigError> {
        if types.is_empty() {
            return Ok(None);
        }
        let mut ranges = Vec::with_capacity(types.len());
        for (i, t) in types.iter().enumerate() {
            ranges.push(
                MediaRange::parse(t).map_err(|m| ConfigError::new(format!("{key}[{i}]"), m))?,
            );
        }
        let names: Box<[Box<str>]> = types.iter().map(|t| t.trim().into()).collect();
        let listed = HeaderValue::try_from(names.join(", "))
            .map_err(|_| ConfigError::new(key, "media ranges must be visible ASCII"))?;
        Ok(Some(Arc::new(Self {
            ranges: ranges.into(),
            listed,
            names,
        })))
    }

    fn accepts(&self, content_type: Option<&HeaderValue>) -> bool {
        let Some(ct) = content_type.and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let essence = ct.split(';').next().unwrap_or("").trim();
        let Some((ty, sub)) = essence.split_once('/') else {
            return false;
        };
        self.ranges.iter().any(|r| r.matches(ty.trim(), sub.trim()))
    }
}

#[derive(Debug)]
struct Rules {
    by_method: Box<[(Method, Option<Arc<Allowed>>)]>,
    routes: RouteRules<Option<Arc<Allowed>>>,
    max_headers: usize,
    max_header_bytes: usize,
}

impl Rules {
    fn allowed(&self, method: &Method, path: &str) -> Option<&Arc<Allowed>> {
        if let Some(allowed) = self.routes.find(method, path) {
            return allowed.as_ref();
        }
        self.by_method
            .iter()
            .find(|(m, _)| m == method)
            .and_then(|(_, a)| a.as_ref())
    }
}

/// Checks request heads. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct ContentValidationLayer {
    rules: Arc<Rules>,
}

impl ContentValidationLayer {
    /// The checks from `config` (`enabled` is the caller's business); errors name the key.
    pub fn new(config: &ContentValidationConfig) -> Result<Self, ConfigError> {
        let mut by_method = Vec::with_capacity(config.content_types.len());
        for (method, types) in &config.content_types {
            let key = format!("content_types.{method}");
            let m = crate::path_pattern::parse_methods(std::slice::from_ref(method))
                .map_err(|msg| ConfigError::new(&key, msg))?;
            by_method.push((m[0].clone(), Allowed::new(&key, types)?));
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            routes.push((
                RouteMatch::compile(i, &r.path, &r.methods)?,
                Allowed::new(&format!("routes[{i}].content_types"), &r.content_types)?,
            ));
        }
        if config.max_headers == 0 || config.max_headers > MAX_MAX_HEADERS {
            return Err(ConfigError::new(
                "max_headers",
                format!("must be between 1 and {MAX_MAX_HEADERS}"),
            ));
        }
        if !(256..=1 << 20).contains(&config.max_header_bytes) {
            return Err(ConfigError::new(
                "max_header_bytes",
                "must be between 256 and 1048576",
            ));
        }
        Ok(Self {
            rules: Arc::new(Rules {
                by_method: by_method.into(),
                routes: RouteRules::new(routes),
                max_headers: config.max_headers,
                max_header_bytes: config.max_header_bytes,
            }),
        })
    }
}

impl<S> Layer<S> for ContentValidationLayer {
    type Service = ContentValidation<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ContentValidation {
            inner,
            rules: self.rules.clone(),
        }
    }
}

/// The service made by [`ContentValidationLayer`].
#[derive(Debug, Clone)]
pub struct ContentValidation<S> {
    inner: S,
    rules: Arc<Rules>,
}

impl<S> ContentValidation<S> {
    define_inner_service_accessors!();
}

impl<S, B> Service<Request<B>> for ContentValidation<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    B: http_body::Body,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = RejectOr<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.rules.check(&req) {
            Ok(()) => RejectOr::inner(self.inner.call(req)),
            Err(refused) => RejectOr::reject(*refused),
        }
    }
}

impl Rules {
    fn check<B: http_body::Body>(&self, req: &Request<B>) -> Result<(), Refused> {
        check_headers(req.headers(), self.max_headers, self.max_header_bytes)?;
        let uri = req.uri();
        check_encoding(uri.path().as_bytes(), "path")?;
        if let Some(query) = uri.query() {
            check_encoding(query.as_bytes(), "query")?;
        }
        if req.body().is_end_stream() {
            return Ok(());
        }
        match self.allowed(req.method(), uri.path()) {
            Some(allowed) if !allowed.accepts(req.headers().get(header::CONTENT_TYPE)) => {
                Err(unsupported(req.method(), allowed))
            }
            _ => Ok(()),
        }
    }
}

fn check_headers(headers: &HeaderMap, max: usize, max_bytes: usize) -> Result<(), Refused> {
    if headers.len() > max {
        return Err(too_large(format!(
            "The request has {} header fields; at most {max} are accepted.",
            headers.len()
        )));
    }
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if bytes > max_bytes {
        return Err(too_large(format!(
            "The request's header fields take {bytes} bytes; at most {max_bytes} are accepted."
        )));
    }
    Ok(())
}

/// A refusal: boxed, since the common path carries nothing.
type Refused = Box<Response<Body>>;

fn too_large(detail: String) -> Refused {
    Box::new(
        Problem::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            .with_detail(detail)
            .with_rejection(Rejection::HeadersTooLarge)
            .into_response(),
    )
}

/// Every `%` starts two hex digits, and none encodes NUL.
fn check_encoding(bytes: &[u8], part: &'static str) -> Result<(), Refused> {
    let mut i = 0;
    while let Some(pos) = memchr_percent(&bytes[i..]) {
        let at = i + pos;
        let (Some(&hi), Some(&lo)) = (bytes.get(at + 1), bytes.get(at + 2)) else {
            return Err(bad_encoding(
                part,
                "a '%' is not followed by two hex digits",
            ));
        };
        if !hi.is_ascii_hexdigit() || !lo.is_ascii_hexdigit() {
            return Err(bad_encoding(
                part,
                "a '%' is not followed by two hex digits",
            ));
        }
        if hi == b'0' && lo == b'0' {
            return Err(bad_encoding(part, "it encodes a NUL byte (%00)"));
        }
        i = at + 3;
    }
    Ok(())
}

fn memchr_percent(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'%')
}

fn bad_encoding(part: &'static str, why: &'static str) -> Refused {
    Box::new(
        Problem::new(StatusCode::BAD_REQUEST)
            .with_title("Malformed request target")
            .with_detail(format!("The request {part} is malformed: {why}."))
            .with_rejection(Rejection::MalformedTarget)
            .into_response(),
    )
}

fn unsupported(method: &Method, allowed: &Allowed) -> Refused {
    let accepted = allowed
        .names
        .iter()
        .map(|n| serde_json::Value::from(&**n))
        .collect::<Vec<_>>();
    let mut res = Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        .with_detail(format!(
            "The request body must be one of: {}.",
            allowed.listed.to_str().unwrap_or_default()
        ))
        .with_extension("accepted", accepted.into())
        .with_rejection(Rejection::UnsupportedMediaType)
        .into_response();
    let announce = match *method {
        Method::POST => Some(HeaderName::from_static("accept-post")),
        Method::PATCH => Some(HeaderName::from_static("accept-patch")),
        _ => None,
    };
    if let Some(name) = announce {
        res.headers_mut().insert(name, allowed.listed.clone());
    }
    Box::new(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ranges_match_type_subtype_and_suffix_in_any_case() {
        let exact = MediaRange::parse("application/json").unwrap();
        assert!(exact.matches("Application", "JSON"));
        assert!(!exact.matches("application", "xml"));
        let suffix = MediaRange::parse("application/*+json").unwrap();
        assert!(suffix.matches("application", "problem+json"));
        assert!(suffix.matches("application", "vnd.api+JSON"));
        assert!(!suffix.matches("application", "json"));
        assert!(!suffix.matches("application", "+json"));
        assert!(!suffix.matches("text", "x+json"));
        let ty = MediaRange::parse("text/*").unwrap();
        assert!(ty.matches("TEXT", "csv"));
        assert!(!ty.matches("image", "png"));
        assert!(MediaRange::parse("*/*").unwrap().matches("a", "b"));
        assert!(MediaRange::parse("json").is_err());
        assert!(MediaRange::parse("*/json").is_err());
        assert!(MediaRange::parse("application/js on").is_err());
    }

    #[test]
    fn content_type_parameters_and_spaces_are_ignored() {
        let allowed = Allowed::new("k", &["application/json".into()])
            .unwrap()
            .unwrap();
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(allowed.accepts(Some(&v("application/json; charset=utf-8"))));
        assert!(allowed.accepts(Some(&v(" application/json "))));
        assert!(!allowed.accepts(Some(&v("application/jsonx"))));
        assert!(!allowed.accepts(Some(&v("json"))));
        assert!(!allowed.accepts(None));
    }

    #[test]
    fn percent_encoding_must_be_complete_and_never_nul() {
        assert!(check_encoding(b"/items/a%20b", "path").is_ok());
        assert!(check_encoding(b"/items/%e2%82%ac", "path").is_ok());
        assert!(check_encoding(b"/items/%zz", "path").is_err());
        assert!(check_encoding(b"/items/%2", "path").is_err());
        assert!(check_encoding(b"/items/%", "path").is_err());
        assert!(check_encoding(b"q=a%00b", "query").is_err());
        assert!(check_encoding(b"q=%25%30%30", "query").is_ok());
    }

    #[test]
    fn config_errors_name_the_key() {
        let mut config = ContentValidationConfig::default();
        config.content_types.insert(
            "POST".into(),
            vec!["application/json".into(), "nonsense".into()],
        );
        let err = ContentValidationLayer::new(&config).unwrap_err();
        assert_eq!(err.key, "content_types.POST[1]");
        let config = ContentValidationConfig {
            max_headers: 0,
            ..ContentValidationConfig::default()
        };
        assert_eq!(
            ContentValidationLayer::new(&config).unwrap_err().key,
            "max_headers"
        );
    }
}
