//! The one shared definition of infrastructure paths (health, metrics) that protective layers
//! leave alone.
//!
//! Probes and scrapers must get through when the service is busy or misconfigured for clients:
//! rate limiting, timeouts, load shedding, auth and the trusted-host check all consult the same
//! [`ExemptPaths`], so the list lives in one place.
//!
//! ```
//! use palisade::exempt::ExemptPaths;
//!
//! let exempt = ExemptPaths::new(["/livez", "/readyz", "/metrics"]);
//! assert!(exempt.contains("/readyz"));
//! assert!(!exempt.contains("/readyz/extra"));
//! ```

use std::sync::Arc;

/// A small set of exact paths. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ExemptPaths(Arc<[Box<str>]>);

impl ExemptPaths {
    /// The paths, matched exactly (no prefixes, no query).
    pub fn new<I, P>(paths: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        Self(paths.into_iter().map(|p| p.as_ref().into()).collect())
    }

    /// The health paths only: `/livez` and `/readyz`.
    pub fn health() -> Self {
        Self::new(crate::health::HEALTH_PATHS)
    }

    /// Whether `path` is exempt. A linear scan: the list holds a handful of entries.
    pub fn contains(&self, path: &str) -> bool {
        self.0.iter().any(|p| **p == *path)
    }

    /// The paths.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|p| &**p)
    }
}
