//! `[[upstreams]]` (gateway mode): checks across sections, and each upstream's `policy`
//! turned into route rules of the sections it names.

use palisade::{
    auth::AuthRouteConfig, body_limit::BodyLimitRouteConfig, idempotency::IdempotencyRouteConfig,
    rate_limit::RouteConfig, timeout::TimeoutRouteConfig,
};

use super::Settings;

impl Settings {
    /// These settings with every `[upstreams.policy]` appended, for `<prefix>` and
    /// `<prefix>/*` (and the upstream's methods), to the route rules of `[auth]`, `[rate_limit]`,
    /// `[idempotency]`, `[body_limit]` and `[timeout]`, after their own rules: a finer rule
    /// written in a section wins. A `host`-restricted upstream's policy covers its prefix on
    /// every host.
    pub fn with_upstream_policies(&self) -> Settings {
        let mut s = self.clone();
        for u in &self.upstreams {
            let p = &u.policy;
            for path in u.route_patterns() {
                let methods = u.methods.clone();
                if p.auth_required || !p.scopes.is_empty() {
                    s.auth.routes.push(AuthRouteConfig {
                        path: path.clone(),
                        methods: methods.clone(),
                        public: false,
                        scopes: p.scopes.clone(),
                    });
                }
                if let Some(policy) = &p.rate_limit {
                    s.rate_limit.routes.push(RouteConfig {
                        path: path.clone(),
                        methods: methods.clone(),
                        policy: Some(policy.clone()),
                        exempt: false,
                    });
                }
                if p.idempotency_required {
                    s.idempotency.routes.push(IdempotencyRouteConfig {
                        path: path.clone(),
                        methods: methods.clone(),
                        required: true,
                        exempt: false,
                    });
                }
                if let Some(max_bytes) = p.body_limit {
                    s.body_limit.routes.push(BodyLimitRouteConfig {
                        path: path.clone(),
                        methods: methods.clone(),
                        max_bytes,
                    });
                }
                if let Some(request) = p.timeout {
                    s.timeout.routes.push(TimeoutRouteConfig {
                        path,
                        methods,
                        request,
                    });
                }
            }
        }
        s
    }

    /// The `[[upstreams]]` checks; errors name `upstreams[i].<key>`.
    pub(super) fn validate_upstreams(&self) -> Result<(), (String, String)> {
        if let Err(e) = palisade::proxy::Gateway::new(&self.upstreams, &self.client_ip) {
            return Err((e.key, e.message));
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            let key = |k: &str| format!("upstreams[{i}].policy.{k}");
            let p = &u.policy;
            if let Some(name) = &p.rate_limit {
                if !self.rate_limit.enabled {
                    return Err((key("rate_limit"), "needs rate_limit.enabled = true".into()));
                }
                if !self.rate_limit.policies.contains_key(name) {
                    let known: Vec<&str> = self
                        .rate_limit
                        .policies
                        .keys()
                        .map(String::as_str)
                        .collect();
                    return Err((
                        key("rate_limit"),
                        format!(
                            "{name:?} is not a policy of [rate_limit.policies] (known: {known:?})"
                        ),
                    ));
                }
            }
            if p.idempotency_required && !self.idempotency.enabled {
                return Err((
                    key("idempotency_required"),
                    "needs idempotency.enabled = true".into(),
                ));
            }
            if (p.auth_required || !p.scopes.is_empty()) && !self.auth.enabled {
                return Err((key("auth_required"), "needs auth.enabled = true".into()));
            }
            if p.timeout.is_some() && !self.timeout.enabled {
                return Err((key("timeout"), "needs timeout.enabled = true".into()));
            }
            for reserved in crate::routes::reserved_paths() {
                if u.prefix.trim_end_matches('/') == reserved {
                    return Err((
                        format!("upstreams[{i}].prefix"),
                        format!("{reserved:?} is taken by the health routes"),
                    ));
                }
            }
        }
        // The rules the policies add must be valid in their sections too (a timeout above
        // the maximum, say).
        let with = self.with_upstream_policies();
        if let Err(e) = palisade::timeout::TimeoutLayer::new(&with.timeout) {
            return Err((
                format!("timeout.{} (from [upstreams.policy])", e.key),
                e.message,
            ));
        }
        Ok(())
    }
}
