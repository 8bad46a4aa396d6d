//! `[health]`: readiness checks.

use serde::{Deserialize, Serialize};

use super::ConfigDuration;

/// Health settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSettings {
    /// Timeout of each readiness check. Env `PALISADE_HEALTH__CHECK_TIMEOUT`. Default `2s`.
    pub check_timeout: ConfigDuration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            check_timeout: ConfigDuration::secs(2),
        }
    }
}
