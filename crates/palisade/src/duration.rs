//! Durations written as text in config files: `"30s"`, `"500ms"`, `"2m"`.
//!
//! ```
//! use palisade::duration::ConfigDuration;
//! #[derive(serde::Deserialize)]
//! struct Limits { window: ConfigDuration }
//! let l: Limits = serde_json::from_str(r#"{"window": "1m 30s"}"#).unwrap();
//! assert_eq!(l.window.get().as_secs(), 90);
//! ```

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration read from and written as humantime text (`"1m 30s"`, `"250ms"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// `n` seconds.
    pub const fn secs(n: u64) -> Self {
        Self(Duration::from_secs(n))
    }

    /// `n` milliseconds.
    pub const fn millis(n: u64) -> Self {
        Self(Duration::from_millis(n))
    }

    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration like \"30s\", \"500ms\" or \"2m\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                humantime::parse_duration(v.trim())
                    .map(ConfigDuration)
                    .map_err(|e| E::custom(format_args!("{v:?} is not a duration ({e}); expected a duration like \"30s\", \"500ms\" or \"2m\"")))
            }
        }
        d.deserialize_str(Visitor)
    }
}
