//! `[response_time]`: the timing header.

use palisade::response_time::ResponseTimeHeader;
use serde::{Deserialize, Serialize};

/// Timing-header settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseTimeSettings {
    /// `"off"`, `"server-timing"` (`Server-Timing: app;dur=<ms>`) or `"x-response-time"`.
    /// Env `PALISADE_RESPONSE_TIME__HEADER`. Default `"server-timing"` in development,
    /// `"off"` in production (timings help attackers measure the server).
    pub header: ResponseTimeHeader,
}
