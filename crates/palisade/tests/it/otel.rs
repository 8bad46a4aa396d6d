//! OpenTelemetry: the server span, W3C trace context in and out, and the trace ids in the log
//! lines, checked on the spans an in-memory exporter receives.

use std::convert::Infallible;

use axum_core::body::Body;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use opentelemetry::{
    KeyValue, Value,
    trace::{SpanId, SpanKind, Status, TraceId, Tracer as _, TracerProvider as _},
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use palisade::{
    context::{self, RequestContextConfig, RequestContextLayer},
    otel::{self, OtelConfig, OtelGuard},
};
use tower::{ServiceBuilder, ServiceExt};

use crate::helpers::{body_json, request};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A provider exporting to memory, as `otel::init` would build it.
struct Traced {
    guard: OtelGuard,
    exporter: InMemorySpanExporter,
}

impl Traced {
    fn new(sample_ratio: f64) -> Self {
        let exporter = InMemorySpanExporter::default();
        let config = OtelConfig {
            enabled: true,
            sample_ratio,
            ..OtelConfig::default()
        };
        let guard = otel::init_with_exporter(&config, exporter.clone()).unwrap();
        Self { guard, exporter }
    }

    /// Every span finished so far.
    fn spans(&self) -> Vec<SpanData> {
        self.guard.force_flush().unwrap();
        self.exporter.get_finished_spans().unwrap()
    }

    /// The one server span exported so far.
    fn server_span(&self) -> SpanData {
        let spans: Vec<_> = self
            .spans()
            .into_iter()
            .filter(|s| s.span_kind == SpanKind::Server)
            .collect();
        assert_eq!(spans.len(), 1, "{spans:#?}");
        spans.into_iter().next().unwrap()
    }

    /// Serves one request through the context layer, the OpenTelemetry layer and [`handler`].
    async fn call(&self, req: Request<Body>) -> Response<Body> {
        ServiceBuilder::new()
            .layer(RequestContextLayer::new(&RequestContextConfig::default()))
            .layer(self.guard.layer())
            .service_fn(handler)
            .oneshot(req)
            .await
            .unwrap()
    }
}

/// `/items/{id}`: logs, then answers with the headers an outgoing call would carry (from the
/// handler and from a spawned task). `/fail`: 500. Anything else: 404 without a route.
async fn handler(req: Request<Body>) -> Result<Response<Body>, Infallible> {
    let ctx = context::current().expect("context");
    let path = req.uri().path();
    let status = if path.starts_with("/items/") {
        // What the server's route layer does once the router matched.
        ctx.set_route("/items/{id}");
        StatusCode::OK
    } else if path == "/fail" {
        ctx.set_route("/fail");
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NOT_FOUND
    };
    tracing::info!(marker = "in-handler", "handling");
    let mut outgoing = HeaderMap::new();
    context::inject_current(&mut outgoing);
    let spawned = context::spawn(async {
        let mut h = HeaderMap::new();
        context::inject_current(&mut h);
        h
    })
    .await
    .unwrap();
    let body = serde_json::json!({
        "outgoing": headers_json(&outgoing),
        "spawned": headers_json(&spawned),
    });
    let mut res = Response::new(Body::from(body.to_string()));
    *res.status_mut() = status;
    Ok(res)
}

fn headers_json(h: &HeaderMap) -> serde_json::Value {
    h.iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().into()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv: &&KeyValue| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn str_attr(span: &SpanData, key: &str) -> String {
    attr(span, key)
        .unwrap_or_else(|| panic!("no {key} in {:?}", span.attributes))
        .as_str()
        .into_owned()
}

/// The parent a `traceparent` header names, parsed by the library's own extractor.
fn parent_of(traceparent: &str) -> opentelemetry::trace::SpanContext {
    let mut h = HeaderMap::new();
    h.insert(otel::TRACEPARENT, traceparent.parse().unwrap());
    otel::extract(&h).expect("a valid traceparent")
}

#[cfg(feature = "json-log")]
mod logs {
    use std::sync::{Arc, Mutex};

    /// JSON lines written by `ContextFormat` while the returned guard lives (this thread).
    #[derive(Clone, Default)]
    pub(super) struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        pub(super) fn start() -> (Self, tracing::subscriber::DefaultGuard) {
            let out = Self::default();
            let writer = out.clone();
            let sub = tracing_subscriber::fmt()
                .event_format(palisade::logging::ContextFormat::json())
                .with_writer(move || writer.clone())
                .finish();
            (out, tracing::subscriber::set_default(sub))
        }

        pub(super) fn lines(&self) -> Vec<serde_json::Value> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }
}

#[cfg(feature = "json-log")]
#[tokio::test]
async fn an_incoming_traceparent_is_continued_in_the_exported_span_and_in_the_log_lines() {
    let traced = Traced::new(1.0);
    let (logs, _subscriber) = logs::Captured::start();
    let res = traced
        .call(request(
            "/items/42",
            "192.0.2.7:5000",
            &[("traceparent", SAMPLED), ("tracestate", "vendor=abc")],
        ))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers().get("traceparent").is_none(),
        "traceparent goes on outgoing requests, not on responses"
    );
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body = body_json(res).await;

    let span = traced.server_span();
    assert_eq!(
        span.span_context.trace_id(),
        TraceId::from_hex(TRACE).unwrap()
    );
    assert_eq!(span.parent_span_id, SpanId::from_hex(PARENT).unwrap());
    assert!(span.parent_span_is_remote);
    assert_eq!(span.span_context.trace_state().header(), "vendor=abc");
    let span_id = span.span_context.span_id().to_string();

    let line = logs
        .lines()
        .into_iter()
        .find(|l| l["marker"] == "in-handler")
        .expect("the handler's log line");
    assert_eq!(line["trace_id"], TRACE);
    assert_eq!(line["span_id"], span_id.as_str());
    assert_eq!(line["request_id"], request_id.as_str());

    // An outgoing call from the handler, and from a task it spawned, continues the trace
    // with this request's span as the parent, next to the request and correlation ids.
    for key in ["outgoing", "spawned"] {
        let h = &body[key];
        assert_eq!(
            h["traceparent"],
            format!("00-{TRACE}-{span_id}-01").as_str(),
            "{key}"
        );
        let injected = parent_of(h["traceparent"].as_str().unwrap());
        assert_eq!(injected.trace_id(), span.span_context.trace_id());
        assert_eq!(h["tracestate"], "vendor=abc", "{key}");
        assert_eq!(h["x-request-id"], request_id.as_str(), "{key}");
        assert_eq!(h["x-correlation-id"], request_id.as_str(), "{key}");
    }
}

#[tokio::test]
async fn without_a_traceparent_a_new_trace_starts_with_the_http_attributes() {
    let traced = Traced::new(1.0);
    let res = traced
        .call(request(
            "/items/42?q=secret",
            "192.0.2.7:5000",
            &[("user-agent", "curl/8.5.0")],
        ))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = body_json(res).await;
    let span = traced.server_span();

    assert!(span.span_context.is_valid());
    assert_eq!(span.parent_span_id, SpanId::INVALID, "a root span");
    assert_eq!(span.span_kind, SpanKind::Server);
    assert_eq!(span.name, "GET /items/{id}");
    assert_eq!(str_attr(&span, "http.request.method"), "GET");
    assert_eq!(str_attr(&span, "url.path"), "/items/42");
    assert_eq!(str_attr(&span, "url.scheme"), "http");
    assert_eq!(str_attr(&span, "http.route"), "/items/{id}");
    assert_eq!(
        attr(&span, "http.response.status_code"),
        Some(&Value::I64(200))
    );
    assert_eq!(str_attr(&span, "client.address"), "192.0.2.7");
    assert_eq!(str_attr(&span, "user_agent.original"), "curl/8.5.0");
    assert_eq!(str_attr(&span, "network.protocol.version"), "1.1");
    assert_eq!(span.status, Status::Unset);
    assert!(
        !format!("{:?}", span.attributes).contains("secret"),
        "no query string in the span"
    );

    let injected = parent_of(body["outgoing"]["traceparent"].as_str().unwrap());
    assert_eq!(injected.trace_id(), span.span_context.trace_id());
    assert_eq!(injected.span_id(), span.span_context.span_id());
    assert!(injected.is_sampled());
    assert!(body["outgoing"].get("tracestate").is_none());

    // Each request without a parent is a trace of its own.
    traced.exporter.reset();
    traced
        .call(request("/items/1", "192.0.2.7:5000", &[]))
        .await;
    assert_ne!(
        traced.server_span().span_context.trace_id(),
        span.span_context.trace_id()
    );
}

#[tokio::test]
async fn a_5xx_answer_marks_the_span_as_an_error_and_a_4xx_does_not() {
    let traced = Traced::new(1.0);
    traced.call(request("/fail", "192.0.2.7:5000", &[])).await;
    let span = traced.server_span();
    assert!(
        matches!(span.status, Status::Error { .. }),
        "{:?}",
        span.status
    );
    assert_eq!(str_attr(&span, "error.type"), "500");
    assert_eq!(
        attr(&span, "http.response.status_code"),
        Some(&Value::I64(500))
    );

    traced.exporter.reset();
    traced
        .call(request("/nowhere", "192.0.2.7:5000", &[]))
        .await;
    let span = traced.server_span();
    assert_eq!(span.status, Status::Unset);
    assert_eq!(span.name, "GET", "no route matched: the method alone");
    assert!(attr(&span, "http.route").is_none());
    assert!(attr(&span, "error.type").is_none());
}

#[tokio::test]
async fn garbage_traceparent_headers_start_a_new_trace_and_never_fail_the_request() {
    let traced = Traced::new(1.0);
    let bad: &[&[u8]] = &[
        b"garbage",
        b"",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-\xff\xfe",
        b"\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac",
    ];
    let mut cases: Vec<Vec<HeaderValue>> = bad
        .iter()
        .map(|b| vec![HeaderValue::from_bytes(b).unwrap()])
        .collect();
    // Two valid values disagree on the parent: neither is trusted.
    cases.push(vec![
        HeaderValue::from_static(SAMPLED),
        HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ]);
    for values in cases {
        traced.exporter.reset();
        let mut req = request(
            "/items/1",
            "192.0.2.7:5000",
            &[("tracestate", "vendor=abc")],
        );
        for v in &values {
            req.headers_mut().append("traceparent", v.clone());
        }
        let res = traced.call(req).await;
        assert_eq!(res.status(), StatusCode::OK, "{values:?}");
        let span = traced.server_span();
        assert!(span.span_context.is_valid(), "{values:?}");
        assert_eq!(span.parent_span_id, SpanId::INVALID, "{values:?}");
        assert_ne!(
            span.span_context.trace_id(),
            TraceId::from_hex(TRACE).unwrap(),
            "{values:?}"
        );
        assert_eq!(
            span.span_context.trace_state().header(),
            "",
            "no tracestate without a valid traceparent: {values:?}"
        );
    }
}

#[tokio::test]
async fn sampling_is_parent_based_and_unsampled_requests_still_propagate() {
    let traced = Traced::new(0.0);
    // A new trace at ratio 0: nothing exported, but the trace id still goes out, unsampled.
    let res = traced
        .call(request("/items/1", "192.0.2.7:5000", &[]))
        .await;
    let body = body_json(res).await;
    assert!(traced.spans().is_empty(), "{:?}", traced.spans());
    let injected = parent_of(body["outgoing"]["traceparent"].as_str().unwrap());
    assert!(!injected.is_sampled());
    assert!(
        body["outgoing"]["traceparent"]
            .as_str()
            .unwrap()
            .ends_with("-00")
    );

    // The caller sampled: its decision wins over the ratio.
    traced
        .call(request(
            "/items/1",
            "192.0.2.7:5000",
            &[("traceparent", SAMPLED)],
        ))
        .await;
    assert_eq!(
        traced.server_span().span_context.trace_id(),
        TraceId::from_hex(TRACE).unwrap()
    );

    // And the other way round: a caller that did not sample is not sampled at ratio 1.
    let all = Traced::new(1.0);
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let res = all
        .call(request(
            "/items/1",
            "192.0.2.7:5000",
            &[("traceparent", unsampled)],
        ))
        .await;
    let body = body_json(res).await;
    assert!(all.spans().is_empty());
    let injected = parent_of(body["outgoing"]["traceparent"].as_str().unwrap());
    assert_eq!(injected.trace_id(), TraceId::from_hex(TRACE).unwrap());
    assert!(!injected.is_sampled());
}

#[tokio::test]
async fn spans_a_handler_starts_are_children_of_the_request_span() {
    let traced = Traced::new(1.0);
    let tracer = traced.guard.provider().tracer("handler");
    let svc = ServiceBuilder::new()
        .layer(RequestContextLayer::new(&RequestContextConfig::default()))
        .layer(traced.guard.layer())
        .service_fn(move |_req: Request<Body>| {
            let tracer = tracer.clone();
            async move {
                // Started with the current context as parent: the request's span.
                let _child = tracer.start("load item");
                Ok::<_, Infallible>(Response::new(Body::empty()))
            }
        });
    svc.oneshot(request(
        "/items/1",
        "192.0.2.7:5000",
        &[("traceparent", SAMPLED)],
    ))
    .await
    .unwrap();
    let spans = traced.spans();
    let server = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Server)
        .unwrap();
    let child = spans
        .iter()
        .find(|s| s.name == "load item")
        .expect("child span");
    assert_eq!(child.parent_span_id, server.span_context.span_id());
    assert_eq!(
        child.span_context.trace_id(),
        TraceId::from_hex(TRACE).unwrap()
    );
}

#[tokio::test]
async fn without_the_layer_no_trace_header_is_read_or_written() {
    let svc = ServiceBuilder::new()
        .layer(RequestContextLayer::new(&RequestContextConfig::default()))
        .service_fn(handler);
    let res = svc
        .oneshot(request(
            "/items/1",
            "192.0.2.7:5000",
            &[("traceparent", SAMPLED)],
        ))
        .await
        .unwrap();
    let body = body_json(res).await;
    assert!(body["outgoing"].get("x-request-id").is_some());
    assert!(body["outgoing"].get("traceparent").is_none(), "{body}");
    assert!(body["spawned"].get("traceparent").is_none(), "{body}");
}
