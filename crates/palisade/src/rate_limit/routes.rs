//! Route rules: which policy (or none) applies to a method and path (patterns: see
//! [`PathPattern`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::policy::Policy;
pub(crate) use crate::path_pattern::RouteMatch;

/// One `[[rate_limit.routes]]` entry. Rules are tried in order; the first match wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path pattern: `/login`, `/items/{id}`, `/uploads/*`.
    pub path: String,
    /// Methods this rule applies to (`["POST"]`); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// The policy to apply instead of the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Never rate-limit matching requests.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exempt: bool,
}

/// What a rule does.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    Apply(Arc<Policy>),
    Exempt,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub(crate) struct RouteRule {
    pub(crate) route: RouteMatch,
    pub(crate) action: Action,
}
