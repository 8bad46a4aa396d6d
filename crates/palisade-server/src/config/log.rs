//! `[log]`: format, level and destination of log lines.

use serde::{Deserialize, Serialize};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON in production, console in development.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Console,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `auto`, `json` or `console`. Env `PALISADE_LOG__FORMAT`. Default `auto`.
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `palisade=debug,info`). Env `PALISADE_LOG__LEVEL`.
    /// Default `info`.
    pub level: String,
    /// Write one access-log line per request. Env `PALISADE_LOG__ACCESS_LOG`. Default `true`.
    pub access_log: bool,
    /// `stdout`, `stderr`, or a file path (appended to). Env `PALISADE_LOG__OUTPUT`.
    /// Default `stdout`.
    pub output: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            level: "info".into(),
            access_log: true,
            output: "stdout".into(),
        }
    }
}
