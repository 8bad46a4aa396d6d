//! The tracer provider: sampling, batching, OTLP/HTTP export, and the guard that flushes.

use std::{future::Future, pin::Pin, sync::OnceLock, time::Duration};

use opentelemetry::{InstrumentationScope, trace::TracerProvider as _};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response, hyper::HyperClient};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanExporter},
};

use super::{OtelConfig, OtelLayer};
use crate::error::ConfigError;

/// Builds the tracer provider for `config`, exporting over OTLP/HTTP (protobuf) to
/// `config.endpoint`. Validates the config; nothing connects until the first export.
/// See the [module docs](super).
///
/// Spans are batched in memory and sent by one background thread (every 5 s, or sooner when
/// 512 are waiting); a collector that is down costs a warning per failed batch, never a
/// request's time.
pub fn init(config: &OtelConfig) -> Result<OtelGuard, ConfigError> {
    config.validate()?;
    let timeout = config.export_timeout.get();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(config.endpoint.as_str())
        .with_timeout(timeout)
        .with_http_client(ExportClient::new(timeout))
        .build()
        .map_err(|e| ConfigError::new("endpoint", e.to_string()))?;
    init_with_exporter(config, exporter)
}

/// Like [`init`], with any span exporter: the SDK's `InMemorySpanExporter` in tests, or an
/// exporter configured by hand. Sampling, batching and the resource are as in [`init`].
///
/// ```
/// use opentelemetry_sdk::trace::InMemorySpanExporter; // SDK feature `testing`
/// use palisade::otel::{self, OtelConfig};
///
/// let exporter = InMemorySpanExporter::default();
/// let guard = otel::init_with_exporter(&OtelConfig::default(), exporter.clone()).unwrap();
/// // ... serve requests through `guard.layer()` ...
/// guard.force_flush().unwrap();
/// assert!(exporter.get_finished_spans().unwrap().is_empty());
/// ```
pub fn init_with_exporter<E>(config: &OtelConfig, exporter: E) -> Result<OtelGuard, ConfigError>
where
    E: SpanExporter + 'static,
{
    config.validate()?;
    // The exporter's HTTP client bounds each export by `export_timeout`.
    let processor = BatchSpanProcessor::builder(exporter).build();
    // Parent-based: a caller's sampling decision (the traceparent's flag) is kept, so one
    // trace is either whole or absent; the ratio decides only for new traces.
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
    // `builder_empty`: the library reads no environment variables for the resource.
    let resource = Resource::builder_empty()
        .with_service_name(config.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer_with_scope(
        InstrumentationScope::builder("palisade")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    );
    Ok(OtelGuard {
        provider,
        tracer,
        timeout: config.export_timeout.get(),
    })
}

/// The tracer provider built by [`init`]; exports the spans still buffered (waiting at most
/// `export_timeout`) when dropped. Keep it alive while serving. See the [module docs](super).
pub struct OtelGuard {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    timeout: Duration,
}

impl std::fmt::Debug for OtelGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtelGuard")
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl OtelGuard {
    /// The layer that starts a server span per request with this provider's tracer.
    pub fn layer(&self) -> OtelLayer {
        OtelLayer::new(self.tracer.clone())
    }

    /// The provider, to make other tracers from it.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Makes this provider `opentelemetry::global`'s, so spans that handlers start with
    /// `global::tracer(..)` are exported too (as children of the request's span).
    pub fn set_global(&self) {
        opentelemetry::global::set_tracer_provider(self.provider.clone());
    }

    /// Exports every finished span now; blocks until the exporter answers.
    pub fn force_flush(&self) -> OTelSdkResult {
        self.provider.force_flush()
    }

    /// Exports what is buffered and stops; later spans are dropped. Blocks at most
    /// `export_timeout` (plus a moment). Dropping the guard does the same.
    pub fn shutdown(self) -> OTelSdkResult {
        self.provider.shutdown_with_timeout(self.timeout)
    }
}

impl Drop for OtelGuard {
    fn drop(&mut self) {
        // A second shutdown (after `shutdown`) only reports that it was already done.
        let _ = self.provider.shutdown_with_timeout(self.timeout);
    }
}

/// OTLP over hyper, from the batch processor's own thread.
///
/// The SDK's batch processor runs exports on a plain thread (no tokio runtime), and
/// opentelemetry-http's hyper client needs one: a current-thread runtime is made on first use
/// and runs each export on that same thread, so exporting adds no thread and never touches
/// the server's runtime.
#[derive(Debug)]
struct ExportClient {
    inner: HyperClient,
    runtime: OnceLock<tokio::runtime::Runtime>,
}

impl ExportClient {
    fn new(timeout: Duration) -> Self {
        Self {
            inner: HyperClient::with_default_connector(timeout, None),
            runtime: OnceLock::new(),
        }
    }

    fn runtime(&self) -> std::io::Result<&tokio::runtime::Runtime> {
        if let Some(rt) = self.runtime.get() {
            return Ok(rt);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(self.runtime.get_or_init(|| rt))
    }
}

impl Drop for ExportClient {
    fn drop(&mut self) {
        // Never blocks, so it is safe wherever the exporter ends up being dropped.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

// `HttpClient` is an `async_trait`; this is the signature it expands to.
impl HttpClient for ExportClient {
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            // Already on a runtime (a caller exporting from async code): use it.
            if tokio::runtime::Handle::try_current().is_ok() {
                return self.inner.send_bytes(request).await;
            }
            self.runtime()?.block_on(self.inner.send_bytes(request))
        })
    }
}
