//! Policies: named sets of quotas, validated and compiled once (header values included).

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc};

use http::HeaderValue;
use serde::{Deserialize, Serialize};

use super::algorithm::{self, State, Verdict, WindowSpec};
use crate::{duration::ConfigDuration, error::ConfigError};

/// The most quotas one policy may combine.
pub const MAX_QUOTAS: usize = 4;

/// The longest window, and the longest a GCRA bucket may take to refill.
const MAX_WINDOW: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);

/// How a policy counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Generic cell rate algorithm: a steady rate plus a burst (token-bucket semantics).
    #[default]
    Gcra,
    /// Sliding-window counter: at most `limit` in any window-long span (weighted estimate).
    SlidingWindow,
}

/// One quota: `limit` requests per `window`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Requests allowed per window, 1 to 4 294 967 295.
    pub limit: u64,
    /// Window length in whole seconds (`"1s"`, `"1m"`, `"1h"`, `"1d"`).
    pub window: ConfigDuration,
    /// GCRA only: requests allowed at once beyond the steady rate (the bucket holds
    /// `burst + 1`, as in redis-cell). Default `limit - 1`: the whole quota at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// The name in `RateLimit` headers. Default: the policy name for a single quota, else
    /// `<policy>-<window seconds>s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl QuotaConfig {
    /// `limit` per `window` with the default burst.
    pub fn new(limit: u64, window: std::time::Duration) -> Self {
        Self {
            limit,
            window: ConfigDuration(window),
            burst: None,
            name: None,
        }
    }

    /// Sets the GCRA burst.
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }
}

/// A named policy: an algorithm and the quotas that must all pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `gcra` (default) or `sliding_window`.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// One to four quotas; a request must pass all of them.
    pub quotas: Vec<QuotaConfig>,
    /// Tier name → the policy used instead for clients of that tier
    /// ([`RequestContext::tier`](crate::context::RequestContext::tier)).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: BTreeMap<String, String>,
}

impl PolicyConfig {
    /// A policy with the given algorithm and quotas.
    pub fn new(algorithm: Algorithm, quotas: impl IntoIterator<Item = QuotaConfig>) -> Self {
        Self {
            algorithm,
            quotas: quotas.into_iter().collect(),
            tiers: BTreeMap::new(),
        }
    }
}

/// One compiled quota.
#[derive(Debug, Clone)]
pub(crate) struct Quota {
    pub(crate) spec: WindowSpec,
    /// The quota's name, already a valid structured-field string body.
    pub(crate) name: Box<str>,
    /// `X-RateLimit-Limit`.
    pub(crate) limit_header: HeaderValue,
}

/// A compiled policy, shared by every request that uses it.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) name: Box<str>,
    /// Distinguishes policies in in-memory keys.
    pub(crate) id: u64,
    pub(crate) algorithm: Algorithm,
    pub(crate) quotas: Box<[Quota]>,
    /// `RateLimit-Policy`, built once.
    pub(crate) policy_header: HeaderValue,
    /// Tier → replacement policy, resolved after every policy is compiled.
    pub(crate) tiers: Box<[(Box<str>, Arc<Policy>)]>,
}

impl Policy {
    /// Compiles and validates `config`; errors name the key below the policy.
    pub(crate) fn compile(name: &str, id: u64, config: &PolicyConfig) -> Result<Self, ConfigError> {
        check_name(name).map_err(|m| ConfigError::new("policies", m))?;
        let n = config.quotas.len();
        if n == 0 || n > MAX_QUOTAS {
            return Err(ConfigError::new(
                format!("policies.{name}.quotas"),
                format!("expected 1 to {MAX_QUOTAS} quotas, got {n}"),
            ));
        }
        let mut quotas = Vec::with_capacity(n);
        let mut policy_header = String::new();
        for (i, q) in config.quotas.iter().enumerate() {
            let key = |field: &str| format!("policies.{name}.quotas[{i}].{field}");
            if q.limit == 0 || q.limit > u64::from(u32::MAX) {
                return Err(ConfigError::new(
                    key("limit"),
                    format!("must be between 1 and {}, got {}", u32::MAX, q.limit),
                ));
            }
            let window = q.window.get();
            if window > MAX_WINDOW {
                return Err(ConfigError::new(key("window"), "must be at most 366 days"));
            }
            if window.as_secs() == 0 || window.subsec_nanos() != 0 {
                return Err(ConfigError::new(
                    key("window"),
                    format!(
                        "must be a whole number of seconds, at least 1s; got {}",
                        humantime::format_duration(window)
                    ),
                ));
            }
            let burst = match (config.algorithm, q.burst) {
                (Algorithm::Gcra, Some(b)) if b > u64::from(u32::MAX) => {
                    return Err(ConfigError::new(key("burst"), "is too large"));
                }
                (Algorithm::Gcra, b) => b.unwrap_or(q.limit - 1),
                (Algorithm::SlidingWindow, None) => 0,
                (Algorithm::SlidingWindow, Some(_)) => {
                    return Err(ConfigError::new(
                        key("burst"),
                        "only applies to algorithm \"gcra\"",
                    ));
                }
            };
            let quota_name = match &q.name {
                Some(custom) => {
                    check_name(custom).map_err(|m| ConfigError::new(key("name"), m))?;
                    custom.clone()
                }
                None if n == 1 => name.to_owned(),
                None => format!("{name}-{}s", window.as_secs()),
            };
            if quotas.iter().any(|x: &Quota| *x.name == *quota_name) {
                return Err(ConfigError::new(
                    key("name"),
                    format!("two quotas are named {quota_name:?}"),
                ));
            }
            if !policy_header.is_empty() {
                policy_header.push_str(", ");
            }
            let _ = write!(
                policy_header,
                "\"{quota_name}\";q={};w={}",
                q.limit,
                window.as_secs()
            );
            let spec = WindowSpec::new(q.limit, window.as_nanos() as u64, burst);
            if spec.capacity > MAX_WINDOW.as_nanos() as u64 {
                return Err(ConfigError::new(
                    key("burst"),
                    format!(
                        "is too large: a bucket of {} requests at {} per {} takes more than 366 days to refill",
                        burst + 1,
                        q.limit,
                        humantime::format_duration(window)
                    ),
                ));
            }
            quotas.push(Quota {
                spec,
                name: quota_name.into(),
                limit_header: HeaderValue::from(q.limit),
            });
        }
        Ok(Self {
            name: name.into(),
            id,
            algorithm: config.algorithm,
            quotas: quotas.into(),
            policy_header: HeaderValue::try_from(policy_header).expect("checked names"),
            tiers: Box::new([]),
        })
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The policy to apply for a client of `tier`: its tier override, else itself.
    pub(crate) fn for_tier<'a>(self: &'a Arc<Self>, tier: Option<&str>) -> &'a Arc<Self> {
        match tier {
            Some(t) if !self.tiers.is_empty() => self
                .tiers
                .iter()
                .find(|(name, _)| **name == *t)
                .map_or(self, |(_, p)| p),
            _ => self,
        }
    }

    /// Runs this policy's algorithm for one quota.
    pub(crate) fn verdict(&self, quota: usize, state: State, now: u64) -> Verdict {
        let spec = &self.quotas[quota].spec;
        match self.algorithm {
            Algorithm::Gcra => algorithm::gcra(spec, state, now),
            Algorithm::SlidingWindow => algorithm::sliding_window(spec, state, now),
        }
    }
}

/// Policy and quota names appear in headers and Redis keys: keep them plain.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name; use 1 to 64 of A-Z a-z 0-9 _ - ."
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn compile(c: &PolicyConfig) -> Result<Policy, ConfigError> {
        Policy::compile("api", 1, c)
    }

    #[test]
    fn headers_are_built_once_in_the_draft_syntax() {
        let p = compile(&PolicyConfig::new(
            Algorithm::SlidingWindow,
            [
                QuotaConfig::new(60, Duration::from_secs(60)),
                QuotaConfig::new(1000, Duration::from_secs(3600)),
            ],
        ))
        .unwrap();
        assert_eq!(
            p.policy_header,
            "\"api-60s\";q=60;w=60, \"api-3600s\";q=1000;w=3600"
        );
    }

    #[test]
    fn bad_quotas_name_the_key() {
        let bad = |q: QuotaConfig, alg| compile(&PolicyConfig::new(alg, [q])).unwrap_err();
        let e = bad(QuotaConfig::new(0, Duration::from_secs(1)), Algorithm::Gcra);
        assert_eq!(e.key, "policies.api.quotas[0].limit");
        let e = bad(QuotaConfig::new(5, Duration::ZERO), Algorithm::Gcra);
        assert_eq!(e.key, "policies.api.quotas[0].window");
        let e = bad(
            QuotaConfig::new(5, Duration::from_millis(1500)),
            Algorithm::Gcra,
        );
        assert_eq!(e.key, "policies.api.quotas[0].window");
        let e = bad(
            QuotaConfig::new(5, Duration::from_secs(1)).burst(2),
            Algorithm::SlidingWindow,
        );
        assert_eq!(e.key, "policies.api.quotas[0].burst");
        let e = bad(
            QuotaConfig::new(5, Duration::from_secs(400 * 86_400)),
            Algorithm::Gcra,
        );
        assert_eq!(e.key, "policies.api.quotas[0].window");
        let e = bad(
            QuotaConfig::new(1, Duration::from_secs(86_400)).burst(1_000_000),
            Algorithm::Gcra,
        );
        assert_eq!(e.key, "policies.api.quotas[0].burst");
        let e = compile(&PolicyConfig::new(Algorithm::Gcra, [])).unwrap_err();
        assert_eq!(e.key, "policies.api.quotas");
        let e = Policy::compile("a b", 1, &PolicyConfig::new(Algorithm::Gcra, [])).unwrap_err();
        assert!(e.message.contains("not a valid name"), "{e:?}");
    }
}
