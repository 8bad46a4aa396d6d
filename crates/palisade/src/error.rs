//! The error every layer constructor returns for invalid configuration.
//!
//! Layers validate their config once, when built, and name the offending key so a server can
//! print one clear line at startup (see `ensure_usable_cors_rules` in tower-http for the idea).

/// Invalid layer configuration: which key, and what is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key, relative to the layer's config (`allow_origins`, `frame_options`).
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl ConfigError {
    /// A new error for `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A shared store (Redis) could not answer: unreachable, timed out, or an unexpected reply.
/// The message never contains credentials.
#[derive(Debug, Clone)]
pub struct StoreError(pub std::sync::Arc<str>);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}
