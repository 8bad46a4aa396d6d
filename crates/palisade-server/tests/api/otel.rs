//! OpenTelemetry through the real server: spans exported over OTLP/HTTP to a local receiver,
//! an incoming `traceparent` continued, trace ids in the log lines, off means off.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::any_value,
    trace::v1::{Span, span::SpanKind, status::StatusCode},
};
use prost::Message as _;
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app, spawn_app_with, wait_for_log};

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

/// A minimal OTLP/HTTP receiver on a free loopback port: keeps every export request it gets
/// and answers `200` (an empty `ExportTraceServiceResponse`).
struct Receiver {
    endpoint: String,
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (r, p) = (received.clone(), paths.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (r, p) = (r.clone(), p.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (r, p) = (r.clone(), p.clone());
                            async move {
                                p.lock().unwrap().push(format!(
                                    "{} {} {}",
                                    req.method(),
                                    req.uri().path(),
                                    req.headers()
                                        .get("content-type")
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or("")
                                ));
                                let body = req.into_body().collect().await?.to_bytes();
                                let decoded = ExportTraceServiceRequest::decode(body)
                                    .expect("an OTLP protobuf export request");
                                r.lock().unwrap().push(decoded);
                                let res = http::Response::builder()
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::new()))
                                    .unwrap();
                                Ok::<_, hyper::Error>(res)
                            }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        Self {
            endpoint,
            received,
            paths,
        }
    }

    /// Every span received so far, with its resource's `service.name`.
    fn spans(&self) -> Vec<(String, Span)> {
        let mut out = Vec::new();
        for req in self.received.lock().unwrap().iter() {
            for rs in &req.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                    .and_then(|kv| string_value(kv.value.as_ref()?.value.as_ref()?))
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        out.push((service.clone(), span.clone()));
                    }
                }
            }
        }
        out
    }
}

fn string_value(v: &any_value::Value) -> Option<String> {
    match v {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

/// A span's attributes as strings (integers formatted).
fn attrs(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .filter_map(|kv| {
            let v = string_value(kv.value.as_ref()?.value.as_ref()?)?;
            Some((kv.key.clone(), v))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Stops the app as SIGTERM would and waits until it has exported its last spans.
async fn stop(mut app: TestApp) {
    app.trigger_shutdown();
    let server = app.server.take().unwrap();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("server stopped")
        .unwrap();
}

#[tokio::test]
async fn an_incoming_traceparent_is_continued_and_exported_to_the_collector_over_otlp() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(&[
        ("PALISADE_OTEL__ENABLED", "true"),
        ("PALISADE_OTEL__ENDPOINT", &receiver.endpoint),
        ("PALISADE_OTEL__SERVICE_NAME", "otel-api-test"),
    ])
    .await;
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let res = app
        .client
        .get(app.url("/log"))
        .header("traceparent", &traceparent)
        .header("user-agent", "otel-api-test/1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("traceparent").is_none());
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let _ = res.text().await;

    // A fresh trace: no traceparent, a 500 from the handler, and a routed 404.
    let res = app.get("/status/500").await;
    assert_eq!(res.status(), 500);
    let failed_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let _ = res.text().await;

    // Every line of the request carries the trace id: the handler's, its spawned task's, and
    // the access log's.
    let by_request = |v: &Value| v["request_id"] == request_id.as_str();
    let handler = wait_for_log(|v| by_request(v) && v["marker"] == "in-handler").await;
    let spawned = wait_for_log(|v| by_request(v) && v["marker"] == "in-spawned-task").await;
    let access = wait_for_log(|v| by_request(v) && v["target"] == "palisade::access").await;
    let failed_access = wait_for_log(|v| {
        v["request_id"] == failed_id.as_str() && v["target"] == "palisade::access"
    })
    .await;
    stop(app).await;

    let spans = receiver.spans();
    let paths = receiver.paths.lock().unwrap().clone();
    assert!(
        paths
            .iter()
            .all(|p| p == "POST /v1/traces application/x-protobuf"),
        "{paths:?}"
    );
    let (service, span) = spans
        .iter()
        .find(|(_, s)| hex(&s.trace_id) == TRACE)
        .unwrap_or_else(|| panic!("no span of the incoming trace in {spans:#?}"));
    assert_eq!(service, "otel-api-test");
    assert_eq!(hex(&span.parent_span_id), PARENT);
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(span.name, "GET /log");
    let a = attrs(span);
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["url.path"], "/log");
    assert_eq!(a["url.scheme"], "http");
    assert_eq!(a["http.route"], "/log");
    assert_eq!(a["http.response.status_code"], "200");
    assert_eq!(a["client.address"], "127.0.0.1");
    assert_eq!(a["user_agent.original"], "otel-api-test/1");
    assert_eq!(a["network.protocol.version"], "1.1");
    let span_id = hex(&span.span_id);
    for line in [&handler[0], &spawned[0], &access[0]] {
        assert_eq!(line["trace_id"], TRACE, "{line}");
        assert_eq!(line["span_id"], span_id.as_str(), "{line}");
    }

    let failed_trace = failed_access[0]["trace_id"]
        .as_str()
        .expect("a trace id")
        .to_owned();
    assert_ne!(failed_trace, TRACE);
    let (_, failed) = spans
        .iter()
        .find(|(_, s)| hex(&s.trace_id) == failed_trace)
        .unwrap_or_else(|| panic!("no span of the fresh trace in {spans:#?}"));
    assert!(failed.parent_span_id.is_empty() || failed.parent_span_id.iter().all(|b| *b == 0));
    assert_eq!(failed.name, "GET /status/{code}");
    assert_eq!(attrs(failed)["http.route"], "/status/{code}");
    assert_eq!(attrs(failed)["http.response.status_code"], "500");
    assert_eq!(
        failed.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
}

#[tokio::test]
async fn a_garbage_traceparent_gets_a_fresh_trace_and_a_normal_answer() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(&[
        ("PALISADE_OTEL__ENABLED", "true"),
        ("PALISADE_OTEL__ENDPOINT", &receiver.endpoint),
    ])
    .await;
    let res = app
        .client
        .get(app.url("/items/7"))
        .header(
            "traceparent",
            format!("00-{TRACE}-{PARENT}-01-trailing-garbage"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let _ = res.text().await;
    stop(app).await;
    let spans = receiver.spans();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let span = &spans[0].1;
    assert_ne!(hex(&span.trace_id), TRACE);
    assert!(span.parent_span_id.is_empty() || span.parent_span_id.iter().all(|b| *b == 0));
    assert_eq!(attrs(span)["http.route"], "/items/{id}");
}

#[tokio::test]
async fn with_otel_off_by_default_no_trace_id_appears_in_the_logs() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/log"))
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .send()
        .await
        .unwrap();
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let _ = res.text().await;
    let lines = wait_for_log(|v| {
        v["request_id"] == request_id.as_str() && v["target"] == "palisade::access"
    })
    .await;
    assert!(lines[0].get("trace_id").is_none(), "{}", lines[0]);
    let handler =
        wait_for_log(|v| v["request_id"] == request_id.as_str() && v["marker"] == "in-handler")
            .await;
    assert!(handler[0].get("trace_id").is_none(), "{}", handler[0]);
}

#[test]
fn otel_values_from_the_environment_are_validated_naming_the_key() {
    use palisade_server::config::load;

    use crate::helpers::options;
    for ratio in ["0.25", "1", "0"] {
        let loaded = load(&options(&[("PALISADE_OTEL__SAMPLE_RATIO", ratio)])).unwrap();
        assert_eq!(
            loaded.settings.otel.sample_ratio,
            ratio.parse::<f64>().unwrap()
        );
    }
    let cases = [
        ("PALISADE_OTEL__SAMPLE_RATIO", "1.5", "otel.sample_ratio"),
        (
            "PALISADE_OTEL__ENDPOINT",
            "https://collector:4318/v1/traces",
            "otel.endpoint",
        ),
        ("PALISADE_OTEL__ENDPOINT", "collector:4318", "otel.endpoint"),
        ("PALISADE_OTEL__SERVICE_NAME", "", "otel.service_name"),
        ("PALISADE_OTEL__EXPORT_TIMEOUT", "0s", "otel.export_timeout"),
        ("PALISADE_OTEL__ENABLED", "maybe", "otel.enabled"),
    ];
    for (var, value, key) in cases {
        let err = load(&options(&[(var, value)])).unwrap_err();
        assert!(err.0.contains(key), "{var}={value:?}: {err}");
    }
}
