//! `[redis]`: the shared store used by rate limiting and idempotency (one connection for
//! both).

use serde::{Deserialize, Serialize};

/// `[redis]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `redis://[:password@]host:port[/db]`. Needed when a feature uses the `redis` store;
    /// treated as a secret (never printed, weak passwords refused in production). Env
    /// `PALISADE_REDIS__URL`. Default `""` (none).
    pub url: String,
    /// Talk to a Redis Cluster: `url` then lists seed nodes, comma-separated; the topology is
    /// discovered and followed. Env `PALISADE_REDIS__CLUSTER`. Default `false`.
    pub cluster: bool,
}
