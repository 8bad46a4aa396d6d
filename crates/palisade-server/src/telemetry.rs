//! Logging setup: the [`ContextFormat`] formatter (request id on every line) writing through a
//! background thread, so the request path never waits on a write syscall.

use std::io::IsTerminal;

use palisade::logging::ContextFormat;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{LogFormat, Settings};

/// Flushes buffered log lines when dropped; keep it alive for the life of the process.
#[derive(Debug)]
pub struct TelemetryGuard(#[allow(dead_code)] WorkerGuard);

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
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(64 * 1024)
        .thread_name("palisade-log")
        .finish(writer);
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
        .with_writer(writer)
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok(TelemetryGuard(guard))
}
