//! `[request_id]`, `[trusted_hosts]`: request identity and host checks. The security-header,
//! CORS and client-IP sections use the library's own config structs directly.

use serde::{Deserialize, Serialize};

/// `[request_id]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestIdSettings {
    /// Keep a valid incoming `X-Request-ID` instead of generating one. Env
    /// `PALISADE_REQUEST_ID__TRUST_INCOMING`. Default `true`.
    pub trust_incoming: bool,
}

impl Default for RequestIdSettings {
    fn default() -> Self {
        Self {
            trust_incoming: true,
        }
    }
}

/// `[trusted_hosts]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustedHostsSettings {
    /// Hosts this server answers for: `api.example.com`, `*.example.com`, or `*`. Empty allows
    /// every host in development and is a startup error in production. Env
    /// `PALISADE_TRUSTED_HOSTS__ALLOWED_HOSTS` (comma-separated). Default `[]`.
    pub allowed_hosts: Vec<String>,
}
