//! `[server]`: where to listen and how to stop.

use serde::{Deserialize, Serialize};

use super::ConfigDuration;

/// Listener and lifecycle settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to bind. Env `PALISADE_SERVER__HOST`. Default `127.0.0.1`; use `0.0.0.0` in a
    /// container.
    pub host: String,
    /// Port to bind; `0` picks a free one. Env `PALISADE_SERVER__PORT`. Default `8080`.
    pub port: u16,
    /// After SIGTERM/SIGINT, keep accepting (with readiness failing) this long so load
    /// balancers notice first. Env `PALISADE_SERVER__SHUTDOWN_DELAY`. Default `0s`.
    pub shutdown_delay: ConfigDuration,
    /// How long in-flight requests may take to finish once shutdown starts; then the process
    /// exits anyway. Env `PALISADE_SERVER__DRAIN_TIMEOUT`. Default `30s`.
    pub drain_timeout: ConfigDuration,
    /// A client must send its complete request headers within this time, or the connection
    /// is closed (slow-loris protection). Env `PALISADE_SERVER__HEADER_READ_TIMEOUT`.
    /// Default `10s`.
    pub header_read_timeout: ConfigDuration,
    /// Set `TCP_NODELAY` on accepted connections. Off, like `axum::serve`: hyper writes each
    /// response in one `writev`, and measured on loopback the flag costs ~1.5 µs of CPU per
    /// request. Turn it on for streaming many small chunks. Env
    /// `PALISADE_SERVER__TCP_NODELAY`. Default `false`.
    pub tcp_nodelay: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            shutdown_delay: ConfigDuration::secs(0),
            drain_timeout: ConfigDuration::secs(30),
            header_read_timeout: ConfigDuration::secs(10),
            tcp_nodelay: false,
        }
    }
}
