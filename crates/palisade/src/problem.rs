//! RFC 9457 problem details: the one error body every Palisade layer answers with.
//!
//! A [`Problem`] renders as `application/problem+json` with the members `type`, `title`,
//! `status`, `detail`, `instance` and `request_id`, plus any extension members. When a request
//! context is active (see [`crate::context`]) the request id is filled in automatically, so a
//! rejection produced anywhere inside the stack carries the same id as the response's
//! `X-Request-ID` header.
//!
//! ```
//! use palisade::problem::Problem;
//! use http::StatusCode;
//!
//! let response = Problem::new(StatusCode::TOO_MANY_REQUESTS)
//!     .with_type("https://iana.org/assignments/http-problem-types#quota-exceeded")
//!     .with_detail("60 requests per minute")
//!     .with_extension("violated-policies", serde_json::json!(["default"]))
//!     .into_response();
//! assert_eq!(response.status(), 429);
//! assert_eq!(response.headers()["content-type"], "application/problem+json");
//! ```

use std::borrow::Cow;

use axum_core::body::Body;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::rejection::Rejection;

/// The `Content-Type` of every problem response.
pub const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// An RFC 9457 problem. See the [module docs](self).
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct Problem {
    status: StatusCode,
    type_uri: Cow<'static, str>,
    title: Cow<'static, str>,
    detail: Option<Cow<'static, str>>,
    instance: Option<String>,
    request_id: Option<String>,
    extensions: Map<String, Value>,
    rejection: Option<Rejection>,
}

impl Problem {
    /// A problem for `status`, with type `about:blank` and the status's reason phrase as title.
    pub fn new(status: StatusCode) -> Self {
        Self {
            status,
            type_uri: Cow::Borrowed("about:blank"),
            title: Cow::Borrowed(status.canonical_reason().unwrap_or("Error")),
            detail: None,
            instance: None,
            request_id: None,
            extensions: Map::new(),
            rejection: None,
        }
    }

    /// Sets the `type` URI.
    pub fn with_type(mut self, type_uri: impl Into<Cow<'static, str>>) -> Self {
        self.type_uri = type_uri.into();
        self
    }

    /// Sets the `title`: a short summary that does not change between occurrences.
    pub fn with_title(mut self, title: impl Into<Cow<'static, str>>) -> Self {
        self.title = title.into();
        self
    }

    /// Sets the `detail`: an explanation of this occurrence, safe to show to the client.
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Sets the `instance` URI. When unset, `urn:request:<request id>` is used.
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// Sets the `request_id` member explicitly (normally taken from the request context).
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    /// Adds an extension member. Reserved names (`type`, `title`, ...) are ignored.
    pub fn with_extension(mut self, name: impl Into<String>, value: Value) -> Self {
        let name = name.into();
        if !matches!(
            name.as_str(),
            "type" | "title" | "status" | "detail" | "instance" | "request_id"
        ) {
            self.extensions.insert(name, value);
        }
        self
    }

    /// Tags the response with the layer and reason that rejected the request (read by the
    /// metrics layer; see [`crate::rejection`]).
    pub fn with_rejection(mut self, rejection: Rejection) -> Self {
        self.rejection = Some(rejection);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `title` member.
    pub fn title(&self) -> &str {
        &self.title
    }

    /// The `detail` member, if any.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The `type` member.
    pub fn type_uri(&self) -> &str {
        &self.type_uri
    }

    /// Renders the JSON body. The request id comes from the explicit value, else the current
    /// request context, else the member is omitted.
    pub fn to_json(&self) -> Bytes {
        match self.request_id.as_deref() {
            Some(id) => self.render(Some(id)),
            None => crate::context::with_current(|c| self.render(Some(c.request_id().as_str())))
                .unwrap_or_else(|| self.render(None)),
        }
    }

    fn render(&self, request_id: Option<&str>) -> Bytes {
        let instance = match (&self.instance, request_id) {
            (Some(i), _) => Some(Cow::Borrowed(i.as_str())),
            (None, Some(id)) => Some(Cow::Owned(format!("urn:request:{id}"))),
            (None, None) => None,
        };
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "type")]
            type_uri: &'a str,
            title: &'a str,
            status: u16,
            detail: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            instance: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            request_id: Option<&'a str>,
            #[serde(flatten)]
            extensions: &'a Map<String, Value>,
        }
        let body = Body {
            type_uri: &self.type_uri,
            title: &self.title,
            status: self.status.as_u16(),
            detail: self.detail.as_deref().unwrap_or(&self.title),
            instance: instance.as_deref(),
            request_id,
            extensions: &self.extensions,
        };
        let mut buf = BytesMut::with_capacity(192).writer();
        // Serialising plain strings and a JSON map cannot fail.
        serde_json::to_writer(&mut buf, &body).expect("problem serialises");
        buf.into_inner().freeze()
    }

    /// Builds the `application/problem+json` response.
    pub fn into_response(self) -> Response<Body> {
        let body = self.to_json();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = self.status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, PROBLEM_JSON);
        if let Some(r) = self.rejection {
            response.extensions_mut().insert(r);
        }
        response
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.title)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

impl axum_core::response::IntoResponse for Problem {
    fn into_response(self) -> axum_core::response::Response {
        Problem::into_response(self)
    }
}

/// Marks `res` to close the connection after it (`Connection: close`): for rejections that
/// leave the rest of a request body unread.
pub(crate) fn close_connection(mut res: Response<Body>) -> Response<Body> {
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// Whether `headers` say the body is `application/problem+json`.
pub fn is_problem(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim_start();
            ct.starts_with("application/problem+json")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(p: &Problem) -> Value {
        serde_json::from_slice(&p.to_json()).unwrap()
    }

    #[test]
    fn a_bare_problem_uses_about_blank_and_the_reason_phrase() {
        let v = parse(&Problem::new(StatusCode::NOT_FOUND));
        assert_eq!(v["type"], "about:blank");
        assert_eq!(v["title"], "Not Found");
        assert_eq!(v["status"], 404);
        assert_eq!(v["detail"], "Not Found");
        assert!(v.get("request_id").is_none());
    }

    #[test]
    fn an_explicit_request_id_fills_instance_and_request_id() {
        let v = parse(&Problem::new(StatusCode::BAD_REQUEST).with_request_id("abc"));
        assert_eq!(v["request_id"], "abc");
        assert_eq!(v["instance"], "urn:request:abc");
    }

    #[test]
    fn extensions_cannot_overwrite_reserved_members() {
        let v = parse(
            &Problem::new(StatusCode::CONFLICT)
                .with_extension("status", Value::from(200))
                .with_extension("retry", Value::from(3)),
        );
        assert_eq!(v["status"], 409);
        assert_eq!(v["retry"], 3);
    }

    #[test]
    fn detail_with_quotes_and_control_characters_stays_valid_json() {
        let v = parse(&Problem::new(StatusCode::BAD_REQUEST).with_detail("a \"b\"\n\u{1}"));
        assert_eq!(v["detail"], "a \"b\"\n\u{1}");
    }

    #[test]
    fn the_response_has_the_problem_content_type_and_status() {
        let r = Problem::new(StatusCode::PAYLOAD_TOO_LARGE).into_response();
        assert_eq!(r.status(), 413);
        assert!(is_problem(r.headers()));
    }
}
