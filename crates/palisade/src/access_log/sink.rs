use http::{Method, StatusCode, Uri};

use crate::context::RequestContext;

/// Where access-log lines go. See the [module docs](super).
#[derive(Debug, Clone, Default)]
pub enum AccessLogSink {
    /// A `tracing` event (target `palisade::access`, level `INFO`).
    #[default]
    Tracing,
    /// A JSON line formatted in place and appended to a batch writer.
    #[cfg(feature = "json-log")]
    Json(crate::logging::BatchWriter),
}

/// Everything one line says.
pub(super) struct Line<'a> {
    pub(super) ctx: &'a RequestContext,
    pub(super) method: &'a Method,
    pub(super) uri: &'a Uri,
    pub(super) status: StatusCode,
    pub(super) response_bytes: u64,
    pub(super) completed: bool,
}

impl AccessLogSink {
    pub(super) fn write(&self, line: &Line<'_>) {
        match self {
            Self::Tracing => emit_event(line),
            #[cfg(feature = "json-log")]
            Self::Json(writer) => {
                use std::cell::RefCell;
                thread_local! {
                    static BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
                }
                BUF.with(|buf| {
                    let Ok(mut buf) = buf.try_borrow_mut() else {
                        return emit_event(line);
                    };
                    buf.clear();
                    format_json(&mut buf, line);
                    writer.write_line(&buf);
                });
            }
        }
    }
}

/// The request's server span ids, when the OpenTelemetry layer started one.
#[cfg(feature = "otel")]
fn span_ids(
    ctx: &RequestContext,
) -> Option<(opentelemetry::trace::TraceId, opentelemetry::trace::SpanId)> {
    ctx.span_context().map(|s| (s.trace_id(), s.span_id()))
}

#[cfg(not(feature = "otel"))]
fn span_ids(_: &RequestContext) -> Option<(&'static str, &'static str)> {
    None
}

fn emit_event(l: &Line<'_>) {
    let ctx = l.ctx;
    let ids = span_ids(ctx);
    tracing::info!(
        target: super::TARGET,
        request_id = ctx.request_id().as_str(),
        correlation_id = ctx.correlation_id().as_str(),
        method = l.method.as_str(),
        route = ctx.route().unwrap_or("-"),
        path = l.uri.path(),
        status = l.status.as_u16(),
        duration_ms = ctx.started().elapsed().as_secs_f64() * 1000.0,
        request_bytes = ctx.request_body_bytes(),
        response_bytes = l.response_bytes,
        client_ip = ctx.client_ip().map(tracing::field::display),
        subject = ctx.subject(),
        completed = l.completed,
        trace_id = ids.map(|(t, _)| tracing::field::display(t)),
        span_id = ids.map(|(_, s)| tracing::field::display(s)),
        "request"
    );
}

/// The same members, in the same order, as [`ContextFormat::json`](crate::logging::ContextFormat)
/// writes for the tracing event.
#[cfg(feature = "json-log")]
fn format_json(out: &mut Vec<u8>, l: &Line<'_>) {
    use std::io::Write as _;

    use crate::{
        logging::{escape_json_into, timestamp},
        text::{push_3_digits, push_ip, push_u64},
    };
    let ctx = l.ctx;
    let micros = ctx.started().elapsed().as_micros() as u64;
    out.extend_from_slice(b"{\"ts\":\"");
    out.extend_from_slice(&timestamp());
    out.extend_from_slice(
        b"\",\"level\":\"INFO\",\"target\":\"palisade::access\",\"msg\":\"request\",\"request_id\":\"",
    );
    // Ids are validated to [A-Za-z0-9._:-]: nothing to escape.
    out.extend_from_slice(ctx.request_id().as_bytes());
    out.extend_from_slice(b"\",\"correlation_id\":\"");
    out.extend_from_slice(ctx.correlation_id().as_bytes());
    out.extend_from_slice(b"\",\"method\":\"");
    escape_json_into(out, l.method.as_str());
    out.extend_from_slice(b"\",\"route\":\"");
    escape_json_into(out, ctx.route().unwrap_or("-"));
    out.extend_from_slice(b"\",\"path\":\"");
    escape_json_into(out, l.uri.path());
    out.extend_from_slice(b"\",\"status\":");
    push_u64(out, u64::from(l.status.as_u16()));
    out.extend_from_slice(b",\"duration_ms\":");
    push_u64(out, micros / 1000);
    out.push(b'.');
    push_3_digits(out, (micros % 1000) as u16);
    out.extend_from_slice(b",\"request_bytes\":");
    push_u64(out, ctx.request_body_bytes());
    out.extend_from_slice(b",\"response_bytes\":");
    push_u64(out, l.response_bytes);
    if let Some(ip) = ctx.client_ip() {
        out.extend_from_slice(b",\"client_ip\":\"");
        push_ip(out, ip);
        out.push(b'"');
    }
    if let Some(subject) = ctx.subject() {
        out.extend_from_slice(b",\"subject\":\"");
        escape_json_into(out, subject);
        out.push(b'"');
    }
    out.extend_from_slice(if l.completed {
        b",\"completed\":true"
    } else {
        b",\"completed\":false"
    });
    if let Some((trace_id, span_id)) = span_ids(ctx) {
        let _ = write!(
            out,
            ",\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\""
        );
    }
    out.extend_from_slice(b"}\n");
}

#[cfg(all(test, feature = "json-log"))]
mod tests {
    use super::*;
    use crate::request_id::RequestId;

    #[test]
    fn the_json_line_is_valid_json_with_every_member() {
        let ctx = RequestContext::new(RequestId::parse("r-1").unwrap(), None);
        ctx.set_route("/items/{id}");
        let uri: Uri = "/items/%22x%22?token=secret".parse().unwrap();
        let mut out = Vec::new();
        format_json(
            &mut out,
            &Line {
                ctx: &ctx,
                method: &Method::POST,
                uri: &uri,
                status: StatusCode::CREATED,
                response_bytes: 12,
                completed: false,
            },
        );
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["target"], "palisade::access");
        assert_eq!(v["request_id"], "r-1");
        assert_eq!(v["correlation_id"], "r-1");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["route"], "/items/{id}");
        assert_eq!(v["path"], "/items/%22x%22");
        assert_eq!(v["status"], 201);
        assert_eq!(v["response_bytes"], 12);
        assert_eq!(v["request_bytes"], 0);
        assert_eq!(v["completed"], false);
        assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);
        assert!(v.get("client_ip").is_none());
        assert!(v.get("subject").is_none());
        assert!(v.get("trace_id").is_none());
        assert!(!String::from_utf8(out).unwrap().contains("secret"));
    }

    #[test]
    fn the_json_line_carries_the_authenticated_subject_escaped() {
        let ctx = RequestContext::new(RequestId::parse("r-3").unwrap(), None);
        ctx.set_subject("al\"ice");
        let uri: Uri = "/".parse().unwrap();
        let mut out = Vec::new();
        format_json(
            &mut out,
            &Line {
                ctx: &ctx,
                method: &Method::GET,
                uri: &uri,
                status: StatusCode::OK,
                response_bytes: 0,
                completed: true,
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["subject"], "al\"ice");
    }

    #[cfg(feature = "otel")]
    #[test]
    fn the_json_line_carries_the_request_spans_ids() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        let ctx = RequestContext::new(RequestId::parse("r-2").unwrap(), None);
        ctx.set_span_context(SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ));
        let uri: Uri = "/".parse().unwrap();
        let line = Line {
            ctx: &ctx,
            method: &Method::GET,
            uri: &uri,
            status: StatusCode::OK,
            response_bytes: 0,
            completed: true,
        };
        let mut out = Vec::new();
        format_json(&mut out, &line);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["span_id"], "00f067aa0ba902b7");
        assert_eq!(v["completed"], true);
    }
}
