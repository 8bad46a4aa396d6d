//! `[auth]`: the profile defaults and the checks across keys. The layer itself is
//! `palisade::auth`.

use palisade::auth::{AuthConfig, JwtConfig};

use super::{Environment, Settings};

/// The HS256 secret of the development profile, so `palisade token issue` and a local server
/// agree out of the box. Production has no default and refuses this one (it is public).
pub const DEVELOPMENT_JWT_SECRET: &str = "palisade-development-only-jwt-secret-0123456789";

/// The `[auth]` defaults of a profile: development accepts HS256 tokens signed with
/// [`DEVELOPMENT_JWT_SECRET`]; production configures its own keys.
pub(super) fn defaults(env: Environment) -> AuthConfig {
    AuthConfig {
        jwt: (env == Environment::Development).then(|| JwtConfig {
            secret: DEVELOPMENT_JWT_SECRET.to_owned(),
            ..JwtConfig::default()
        }),
        ..AuthConfig::default()
    }
}

impl Settings {
    /// The `[auth]` checks (with the routes `[upstreams.policy]` adds); errors name the key.
    pub(super) fn validate_auth(&self) -> Result<(), (String, String)> {
        let auth = &self.with_upstream_policies().auth;
        if !auth.enabled {
            return Ok(());
        }
        if let Some(jwt) = &auth.jwt {
            let url = jwt.jwks_url.trim();
            if !url.is_empty() {
                jwks_url_ok(url, self.is_production())
                    .map_err(|m| ("auth.jwt.jwks_url".to_owned(), m))?;
            }
            if self.is_production() && jwt.secret == DEVELOPMENT_JWT_SECRET {
                return Err((
                    "auth.jwt.secret".to_owned(),
                    "production refuses the development secret; generate one with `openssl rand -base64 48`".to_owned(),
                ));
            }
        }
        // Builds the layer once (reads a public key file) with a fetcher that is never called.
        let never: std::sync::Arc<dyn palisade::auth::JwksFetch> =
            std::sync::Arc::new(|| async { Err::<Vec<u8>, _>("not fetched".to_owned()) });
        palisade::auth::AuthLayer::new(auth, Some(never))
            .map(drop)
            .map_err(|e| (format!("auth.{}", e.key), e.message))
    }
}

/// A JWKS URL is `https://`; plain `http://` only to a loopback host, and never in production
/// (a key set fetched in clear can be replaced by anyone on the path).
fn jwks_url_ok(url: &str, production: bool) -> Result<(), String> {
    let parsed: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    match (parsed.scheme_str(), parsed.host()) {
        (Some("https"), Some(_)) => Ok(()),
        (Some("http"), Some(h)) if !production && is_loopback(h) => Ok(()),
        (Some("http"), Some(_)) => Err(
            "must be https:// (plain http:// only to a loopback host, outside production)".into(),
        ),
        _ => Err(format!("{url:?} is not an https:// URL")),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_urls_must_be_https_except_loopback_in_development() {
        assert!(jwks_url_ok("https://issuer.example/.well-known/jwks.json", true).is_ok());
        assert!(jwks_url_ok("http://127.0.0.1:8080/jwks", false).is_ok());
        assert!(jwks_url_ok("http://[::1]:8080/jwks", false).is_ok());
        assert!(jwks_url_ok("http://127.0.0.1:8080/jwks", true).is_err());
        assert!(jwks_url_ok("http://issuer.example/jwks", false).is_err());
        assert!(jwks_url_ok("ftp://issuer.example/jwks", false).is_err());
        assert!(jwks_url_ok("not a url", false).is_err());
    }
}
