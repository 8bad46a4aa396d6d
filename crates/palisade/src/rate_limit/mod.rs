//! Rate limiting per client and route: GCRA or sliding-window quotas, kept in memory or
//! shared through Redis, answered with the IETF `RateLimit` headers.
//!
//! A [`RateLimiter`] holds named [`Policy`]s (each one to four quotas that must all pass),
//! route rules that pick a policy (or exempt a path), the [`ClientKey`] that says who a
//! request counts against, and a [`RateLimitStore`]. [`RateLimitLayer`] applies it around a
//! whole router, or applies one named policy to a single route:
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use axum::{Router, routing::post};
//! use palisade::rate_limit::{
//!     Algorithm, MemoryStore, PolicyConfig, QuotaConfig, RateLimitConfig, RateLimitLayer,
//!     RateLimiter,
//! };
//!
//! # fn build() -> Result<(), palisade::error::ConfigError> {
//! let mut config = RateLimitConfig::default(); // per client IP, generous default policy
//! config.policies.insert(
//!     "login".into(),
//!     PolicyConfig::new(Algorithm::SlidingWindow, [
//!         QuotaConfig::new(5, Duration::from_secs(60)),
//!         QuotaConfig::new(20, Duration::from_secs(3600)),
//!     ]),
//! );
//! let limiter = Arc::new(RateLimiter::new(&config, Arc::new(MemoryStore::new()))?);
//!
//! let app: Router = Router::new()
//!     // The seeds' `@rate_limit("5/minute")`: one policy on one route.
//!     .route("/login", post(|| async { "welcome" })
//!         .layer(RateLimitLayer::policy(limiter.clone(), "login")?))
//!     // Everything else: the route table and the default policy.
//!     .layer(RateLimitLayer::new(limiter));
//! # let _ = app; Ok(()) }
//! ```
//!
//! Responses. Allowed requests carry `RateLimit-Policy` (`"default";q=6000;w=60`) and
//! `RateLimit` (`"default";r=5999;t=1`) as in draft-ietf-httpapi-ratelimit-headers-10, and,
//! unless turned off, `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
//! (seconds from now, not an epoch time) for the quota closest to its limit. A rejection is
//! a 429 problem of type `https://iana.org/assignments/http-problem-types#quota-exceeded`
//! with a `violated-policies` member and `Retry-After` in whole seconds (at least 1, never
//! before the request would really be allowed). Rejected requests consume no quota.
//!
//! Ordering: inside the request context (it needs the client IP and, for subject keys, the
//! auth layer's subject), outside the work it protects.

mod algorithm;
mod key;
mod layer;
mod memory;
mod policy;
#[cfg(feature = "redis")]
pub mod redis;
mod routes;
mod store;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use http::{HeaderName, Request};
use serde::{Deserialize, Serialize};

use crate::{
    context::RequestContext, duration::ConfigDuration, error::ConfigError, exempt::ExemptPaths,
};

pub use crate::store::StoreKind;
pub use key::{ClientKey, KeyDigest, KeyPart};
pub use layer::{
    QUOTA_EXCEEDED, RATELIMIT, RATELIMIT_POLICY, RateLimitLayer, RateLimitService, ResponseFuture,
    X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET,
};
pub use memory::{Clock, DEFAULT_MAX_KEYS, ManualClock, MemoryStore};
pub use policy::{Algorithm, MAX_QUOTAS, Policy, PolicyConfig, QuotaConfig};
pub use routes::RouteConfig;
pub use store::{Decide, Decision, QuotaStatus, RateLimitStore, StoreError};

use routes::{Action, RouteMatch, RouteRule};

/// What to do when the shared store cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Decide with this instance's in-memory limiter until the store is back.
    #[default]
    FailOpen,
    /// Answer 503 problem.
    FailClosed,
}

/// `[rate_limit]`: everything about rate limiting. The defaults limit each client IP to a
/// generous steady 100 requests per second with bursts of 500.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Turn rate limiting on. Default `true`.
    pub enabled: bool,
    /// Who a request counts against: parts out of `ip`, `subject`, `api_key`,
    /// `header:<name>`, combined. Default `["ip"]`.
    pub key: Vec<String>,
    /// The header the `api_key` part reads. Default `X-API-Key`.
    pub api_key_header: String,
    /// IPv6 clients are keyed by this prefix length. Default 64.
    pub ipv6_prefix: u8,
    /// The policy for requests no route rule matches; `""` for none. Default `"default"`.
    pub default_policy: String,
    /// Named policies.
    pub policies: BTreeMap<String, PolicyConfig>,
    /// Route rules, first match wins.
    pub routes: Vec<RouteConfig>,
    /// Send `X-RateLimit-Limit`/`-Remaining`/`-Reset` besides the IETF fields. Default `true`.
    pub legacy_headers: bool,
    /// `memory` (default) or `redis`.
    pub store: StoreKind,
    /// In-memory store: most (client, quota) pairs tracked. Default 1 000 000.
    pub max_keys: usize,
    /// Redis store: `fail_open` (default) or `fail_closed`.
    pub on_store_error: OnStoreError,
    /// Redis store: the longest a decision waits for Redis. Default `50ms`.
    pub store_timeout: ConfigDuration,
    /// Redis store: key prefix. Default `palisade:rl:`.
    pub redis_prefix: String,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        let mut policies = BTreeMap::new();
        policies.insert(
            "default".to_owned(),
            PolicyConfig::new(
                Algorithm::Gcra,
                [QuotaConfig::new(6000, Duration::from_secs(60)).burst(500)],
            ),
        );
        Self {
            enabled: true,
            key: vec!["ip".to_owned()],
            api_key_header: "x-api-key".to_owned(),
            ipv6_prefix: 64,
            default_policy: "default".to_owned(),
            policies,
            routes: Vec::new(),
            legacy_headers: true,
            store: StoreKind::Memory,
            max_keys: DEFAULT_MAX_KEYS,
            on_store_error: OnStoreError::FailOpen,
            store_timeout: ConfigDuration::millis(50),
            redis_prefix: "palisade:rl:".to_owned(),
        }
    }
}

/// The compiled limiter: policies, route rules, key and store. Share it with an `Arc`.
pub struct RateLimiter {
    policies: BTreeMap<Box<str>, Arc<Policy>>,
    rules: Box<[RouteRule]>,
    default: Option<Arc<Policy>>,
    key: ClientKey,
    store: Arc<dyn RateLimitStore>,
    exempt: ExemptPaths,
    pub(crate) legacy_headers: bool,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("policies", &self.policies.keys())
            .field("rules", &self.rules.len())
            .field("default", &self.default.as_ref().map(|p| p.name()))
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// Compiles `config` (errors name the key below `rate_limit`) over `store`. Health
    /// paths are exempt; add more with [`RateLimiter::exempt`].
    pub fn new(
        config: &RateLimitConfig,
        store: Arc<dyn RateLimitStore>,
    ) -> Result<Self, ConfigError> {
        let mut policies = BTreeMap::new();
        for (name, pc) in &config.policies {
            let p = Policy::compile(name, policy_id(name), pc)?;
            policies.insert(Box::<str>::from(name.as_str()), p);
        }
        // Resolve tiers: a tier names another policy, which must exist (no chains).
        let mut tiers = BTreeMap::new();
        for (name, pc) in &config.policies {
            for (tier, target) in &pc.tiers {
                if !policies.contains_key(target.as_str()) {
                    return Err(ConfigError::new(
                        format!("policies.{name}.tiers.{tier}"),
                        format!("no policy named {target:?}"),
                    ));
                }
                tiers
                    .entry(name.clone())
                    .or_insert_with(Vec::new)
                    .push((tier.clone(), target.clone()));
            }
        }
        let plain: BTreeMap<Box<str>, Arc<Policy>> = policies
            .into_iter()
            .map(|(k, v)| (k, Arc::new(v)))
            .collect();
        let mut compiled = BTreeMap::new();
        for (name, p) in &plain {
            let with_tiers = match tiers.get(&**name) {
                Some(list) => {
                    let mut p = Policy::clone(p);
                    p.tiers = list
                        .iter()
                        .map(|(t, target)| (t.as_str().into(), plain[target.as_str()].clone()))
                        .collect();
                    Arc::new(p)
                }
                None => p.clone(),
            };
            compiled.insert(name.clone(), with_tiers);
        }
        let lookup = |key: String, name: &str| {
            compiled
                .get(name)
                .cloned()
                .ok_or_else(|| ConfigError::new(key, format!("no policy named {name:?}")))
        };
        let default = match config.default_policy.as_str() {
            "" => None,
            name => Some(lookup("default_policy".into(), name)?),
        };
        let mut rules = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            let key = |f: &str| format!("routes[{i}].{f}");
            let route = RouteMatch::compile(i, &r.path, &r.methods)?;
            let action = match (&r.policy, r.exempt) {
                (None, true) => Action::Exempt,
                (Some(p), false) => Action::Apply(lookup(key("policy"), p)?),
                _ => {
                    return Err(ConfigError::new(
                        key("policy"),
                        "set either `policy = \"<name>\"` or `exempt = true`",
                    ));
                }
            };
            rules.push(RouteRule { route, action });
        }
        let api_key_header = HeaderName::try_from(config.api_key_header.trim()).map_err(|_| {
            ConfigError::new(
                "api_key_header",
                format!("{:?} is not a header name", config.api_key_header),
            )
        })?;
        let key = ClientKey::new(&config.key)?
            .api_key_header(api_key_header)
            .ipv6_prefix(config.ipv6_prefix)?;
        for p in compiled.values() {
            store.register(p);
        }
        Ok(Self {
            policies: compiled,
            rules: rules.into(),
            default,
            key,
            store,
            exempt: ExemptPaths::health(),
            legacy_headers: config.legacy_headers,
        })
    }

    /// Paths never limited (default: the health paths). Replaces the list.
    pub fn exempt(mut self, paths: ExemptPaths) -> Self {
        self.exempt = paths;
        self
    }

    /// The compiled policies.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.values()
    }

    /// The named policy.
    pub fn policy(&self, name: &str) -> Option<&Arc<Policy>> {
        self.policies.get(name)
    }

    /// Which policy applies to this request, or `None` when it is exempt.
    pub(crate) fn resolve<'a, B>(
        &'a self,
        fixed: Option<&'a Arc<Policy>>,
        req: &Request<B>,
        ctx: Option<&RequestContext>,
    ) -> Option<&'a Arc<Policy>> {
        let path = req.uri().path();
        if self.exempt.contains(path) {
            return None;
        }
        let policy = match fixed {
            Some(p) => p,
            None => match self
                .rules
                .iter()
                .find(|r| r.route.matches(req.method(), path))
            {
                Some(RouteRule {
                    action: Action::Apply(p),
                    ..
                }) => p,
                Some(RouteRule {
                    action: Action::Exempt,
                    ..
                }) => return None,
                None => self.default.as_ref()?,
            },
        };
        Some(policy.for_tier(ctx.and_then(RequestContext::tier)))
    }

    /// Decides one request under `policy`.
    pub(crate) fn decide<B>(
        &self,
        policy: &Arc<Policy>,
        req: &Request<B>,
        ctx: Option<&RequestContext>,
    ) -> Decide {
        let key = self.key.digest(policy.id, req, ctx);
        self.store.decide(policy, key)
    }
}

/// A stable id per policy name (the same on every instance given the same config).
fn policy_id(name: &str) -> u64 {
    use std::hash::Hasher as _;
    let mut h = siphasher::sip::SipHasher13::new_with_keys(1, 2);
    h.write(name.as_bytes());
    h.finish()
}
