//! Logging setup: the [`ContextFormat`] formatter (request id on every line) writing through
//! [`BatchWriter`]: lines collect in memory and one background thread writes them every 50 ms,
//! so the request path never waits on a write syscall or wakes a thread per line.
//!
//! Tracing setup ([`init_otel`], the `otel` feature): the OpenTelemetry provider exporting
//! over OTLP/HTTP, built per application by `Application::build` when `otel.enabled`.

use std::{io::IsTerminal, sync::OnceLock, time::Duration};

use palisade::{
    access_log::AccessLogSink,
    logging::{BatchWriter, BatchWriterGuard, ContextFormat},
};
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{LogFormat, Settings};

/// Flushes buffered log lines when dropped; keep it alive for the life of the process.
#[derive(Debug)]
pub struct TelemetryGuard(#[allow(dead_code)] BatchWriterGuard);

/// How long a log line may wait in memory before it is written.
const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Bytes of log lines held in memory at most; beyond it requests wait for the writer.
const MAX_BUFFER: usize = 8 << 20;

/// Installs the global subscriber. Fails if the log file cannot be opened or a subscriber is
/// already installed.
pub fn init(settings: &Settings) -> Result<TelemetryGuard, String> {
    let (writer, ansi): (Box<dyn std::io::Write + Send>, bool) = match settings.log.output.as_str()
    {
        "stdout" => (Box::new(std::io::stdout()), std::io::stdout().is_terminal()),
        "stderr" => (Box::new(std::io::stderr()), std::io::stderr().is_terminal()),
        path => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("log.output {path}: {e}"))?;
            (Box::new(file), false)
        }
    };
    // Not lossy: under overload the request path waits briefly rather than dropping lines.
    let (writer, guard) = BatchWriter::new(writer, FLUSH_INTERVAL, MAX_BUFFER);
    let json = settings.log_format() == LogFormat::Json;
    let format = match settings.log_format() {
        LogFormat::Json => ContextFormat::json(),
        _ => ContextFormat::console(ansi),
    };
    let filter = EnvFilter::builder()
        .parse(&settings.log.level)
        .map_err(|e| format!("log.level: {e}"))?;
    fmt()
        .event_format(format)
        .with_env_filter(filter)
        .with_writer(writer.clone())
        .try_init()
        .map_err(|e| e.to_string())?;
    if json {
        // Access-log lines skip the event machinery and go straight into the same batch.
        let _ = ACCESS_SINK.set(AccessLogSink::Json(writer));
    }
    Ok(TelemetryGuard(guard))
}

/// Set once by [`init`] when logs are JSON; the process-wide subscriber is global too.
static ACCESS_SINK: OnceLock<AccessLogSink> = OnceLock::new();

/// Where the access log writes: straight into the JSON log batch when [`init`] set one up,
/// else `tracing` events (which any installed subscriber receives, as in tests).
pub fn access_log_sink() -> AccessLogSink {
    ACCESS_SINK.get().cloned().unwrap_or_default()
}

/// The OpenTelemetry provider for `[otel]`, or `None` when `otel.enabled` is false (then no
/// layer is installed and requests pay nothing). Also makes it the `opentelemetry::global`
/// provider, so spans handlers start with `global::tracer(..)` join the request's trace.
/// Dropping the guard (or `OtelGuard::shutdown`) exports what is still buffered.
#[cfg(feature = "otel")]
pub fn init_otel(
    config: &palisade::otel::OtelConfig,
) -> Result<Option<palisade::otel::OtelGuard>, palisade::error::ConfigError> {
    if !config.enabled {
        return Ok(None);
    }
    let guard = palisade::otel::init(config)?;
    guard.set_global();
    tracing::info!(
        endpoint = config.endpoint.as_str(),
        service_name = config.service_name.as_str(),
        sample_ratio = config.sample_ratio,
        "OpenTelemetry trace export on"
    );
    Ok(Some(guard))
}
