//! Where a layer keeps its shared state: this process, or Redis.

use serde::{Deserialize, Serialize};

/// Where a layer's state (rate-limit counters, idempotency entries) lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// This process only.
    #[default]
    Memory,
    /// Shared by every instance through Redis (needs the `redis` feature and a URL).
    Redis,
}
