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
    /// A client must send a complete request head within this time from its first byte (or
    /// from connecting), or the connection is closed (slow-loris protection). Env
    /// `PALISADE_SERVER__HEADER_READ_TIMEOUT`. Default `10s`.
    pub header_read_timeout: ConfigDuration,
    /// An idle keep-alive connection (no request since the last response) is closed after
    /// this long. Keep it above your load balancer's idle timeout (AWS ALB: 60 s) so the
    /// balancer never reuses a connection this server is closing. Env
    /// `PALISADE_SERVER__KEEP_ALIVE_TIMEOUT`. Default `75s`.
    pub keep_alive_timeout: ConfigDuration,
    /// Open connections at most; further ones are closed as soon as they are accepted.
    /// Env `PALISADE_SERVER__MAX_CONNECTIONS`. Default `10000`.
    pub max_connections: usize,
    /// Open connections from one peer address at most; trusted proxies
    /// (`client_ip.trusted_proxies`) are exempt. Env `PALISADE_SERVER__MAX_CONNECTIONS_PER_IP`.
    /// Default `256`.
    pub max_connections_per_ip: usize,
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
            keep_alive_timeout: ConfigDuration::secs(75),
            max_connections: 10_000,
            max_connections_per_ip: 256,
            tcp_nodelay: false,
        }
    }
}
