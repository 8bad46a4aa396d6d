//! GeoIP: allow or deny clients by country, from a MaxMind DB file (GeoLite2/GeoIP2 Country or
//! City, or any database whose records have `country.iso_code`).
//!
//! - The client is the address the [request context](crate::context) resolved behind trusted
//!   proxies. Its country is `country.iso_code`, else `registered_country.iso_code`.
//! - `allow` non-empty: only those countries pass. Otherwise `deny` lists the countries
//!   refused (setting both is a configuration error). A refused client gets a `403` problem
//!   with the title `Forbidden by location` and the country in a `country` member.
//! - *Unknown* clients — an address the database does not cover (private, loopback and other
//!   reserved ranges are in none of MaxMind's databases), a record without a country, or no
//!   client address at all (the request context layer is missing) — get `unknown`: `allow`
//!   (default) or `deny`.
//! - [Exempt paths](crate::exempt) (health probes, which come from private addresses) always
//!   pass.
//!
//! The database is read into memory once, when the layer is built; a lookup walks the search
//! tree (at most 128 steps) and decodes two borrowed strings, without allocating. The country
//! lists are a 676-bit set, so checking one is a bit test.
//!
//! No database configured, or a path where no file exists: the layer is off ([`None`]); the
//! missing file is logged as a warning, so a server can ship the setting before the file is
//! provisioned. A file that cannot be read or is not a MaxMind DB is an error, at startup.
//!
//! ```
//! use palisade::{
//!     exempt::ExemptPaths,
//!     geoip::{GeoIpConfig, GeoIpLayer},
//! };
//! use tower::{ServiceBuilder, util::option_layer};
//!
//! let config = GeoIpConfig {
//!     database: Some("/var/lib/GeoIP/GeoLite2-Country.mmdb".into()),
//!     deny: vec!["KP".into(), "ir".into()], // case does not matter
//!     ..GeoIpConfig::default()
//! };
//! // No such file here: the layer is off (and a warning is logged).
//! let layer = GeoIpLayer::new(&config, ExemptPaths::health()).expect("valid config");
//! assert!(layer.is_none());
//! let svc = ServiceBuilder::new()
//!     .layer(option_layer(layer))
//!     .service_fn(|_r: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(axum_core::body::Body::empty()))
//!     });
//! # let _ = svc;
//! ```
//!
//! Ordering: inside the request context (it resolves the client address; problems carry the
//! request id), next to the trusted-host check: before anything that does real work.
//!
//! Caveats: a country database is only as right as its last update, and VPNs or proxies
//! outside the trusted list move a client anywhere; treat this as a coarse filter, not
//! authentication. Replacing the file needs a restart (or a new layer).

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    task::{Context, Poll},
};

use axum_core::body::Body;
use http::{Request, Response, StatusCode};
use maxminddb::Reader;
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

use crate::rejection::Rejection;
use crate::{
    context::RequestContext, error::ConfigError, exempt::ExemptPaths, future::RejectOr,
    problem::Problem,
};

/// What happens to clients whose country is unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// They pass.
    #[default]
    Allow,
    /// They get the `403` problem.
    Deny,
}

/// `[geoip]`: allow or deny clients by country. See the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeoIpConfig {
    /// The MaxMind DB file (`GeoLite2-Country.mmdb`). Default none: the layer is off. A path
    /// where no file exists also turns it off, with a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<PathBuf>,
    /// ISO 3166-1 alpha-2 codes (`"DE"`, any case); when not empty, only these countries pass.
    /// Default empty.
    pub allow: Vec<String>,
    /// ISO 3166-1 alpha-2 codes refused; only when `allow` is empty. Default empty.
    pub deny: Vec<String>,
    /// Clients the database has no country for (including private and loopback addresses):
    /// `"allow"` (default) or `"deny"`.
    pub unknown: Decision,
}

/// An ISO 3166-1 alpha-2 country code, upper case: two bytes, no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// Two ASCII letters, any case; `None` otherwise.
    pub fn parse(code: &str) -> Option<Self> {
        match code.as_bytes() {
            &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Self([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    /// The code, `"DE"`.
    pub fn as_str(&self) -> &str {
        // Two ASCII letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    /// The position in a 26 × 26 set.
    fn index(self) -> usize {
        usize::from(self.0[0] - b'A') * 26 + usize::from(self.0[1] - b'A')
    }
}

impl fmt::Debug for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every two-letter code: 676 bits.
#[derive(Debug, Clone, Copy, Default)]
struct CountrySet([u64; 11]);

impl CountrySet {
    /// The codes in `list`; errors name `key[i]`.
    fn parse(key: &str, list: &[String]) -> Result<Self, ConfigError> {
        let mut set = Self::default();
        for (i, raw) in list.iter().enumerate() {
            let code = CountryCode::parse(raw.trim()).ok_or_else(|| {
                ConfigError::new(
                    format!("{key}[{i}]"),
                    format!(
                        "{raw:?} is not an ISO 3166-1 alpha-2 country code \
                         (two letters, like \"DE\")"
                    ),
                )
            })?;
            let i = code.index();
            set.0[i / 64] |= 1 << (i % 64);
        }
        Ok(set)
    }

    fn contains(&self, code: CountryCode) -> bool {
        let i = code.index();
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
}

#[derive(Debug)]
enum Rule {
    /// Only these pass.
    Allow(CountrySet),
    /// These are refused (possibly none).
    Deny(CountrySet),
}

#[derive(Debug)]
struct Shared {
    reader: Reader<Vec<u8>>,
    rule: Rule,
    unknown: Decision,
    exempt: ExemptPaths,
}

/// The parts of a GeoIP2 Country or City record the layer reads; everything else in the
/// record is skipped, not decoded.
#[derive(Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow)]
    registered_country: Option<IsoCode<'a>>,
}

#[derive(Deserialize)]
struct IsoCode<'a> {
    iso_code: Option<&'a str>,
}

/// Allows or denies clients by country. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct GeoIpLayer {
    shared: Arc<Shared>,
}

impl GeoIpLayer {
    /// Validates `config` and reads the database. `Ok(None)`: no database is configured, or
    /// the file does not exist (logged as a warning); the layer is off. Errors name the key:
    /// `allow[i]`/`deny[i]` for a bad code, `deny` when both lists are set, `database` when
    /// the file cannot be read or is not a MaxMind DB.
    pub fn new(config: &GeoIpConfig, exempt: ExemptPaths) -> Result<Option<Self>, ConfigError> {
        let allow = CountrySet::parse("allow", &config.allow)?;
        let deny = CountrySet::parse("deny", &config.deny)?;
        let rule = match (config.allow.is_empty(), config.deny.is_empty()) {
            (false, false) => {
                return Err(ConfigError::new(
                    "deny",
                    "set either `allow` (only those countries pass) or `deny` (those countries \
                     are refused), not both",
                ));
            }
            (false, true) => Rule::Allow(allow),
            (true, _) => Rule::Deny(deny),
        };
        let Some(path) = &config.database else {
            return Ok(None);
        };
        let Some(reader) = open(path)? else {
            tracing::warn!(
                path = %path.display(),
                "GeoIP database not found; the GeoIP layer is off"
            );
            return Ok(None);
        };
        let meta = reader.metadata();
        tracing::info!(
            path = %path.display(),
            database_type = %meta.database_type,
            build_epoch = meta.build_epoch,
            "GeoIP database loaded"
        );
        Ok(Some(Self {
            shared: Arc::new(Shared {
                reader,
                rule,
                unknown: config.unknown,
                exempt,
            }),
        }))
    }

    /// The country the database gives `ip` (`country`, else `registered_country`); `None` when
    /// the address is not covered or its record has no valid code.
    pub fn country(&self, ip: IpAddr) -> Option<CountryCode> {
        self.shared.country(ip)
    }

    /// Whether a client at `ip` passes (`None`: no known address, so unknown).
    pub fn allows(&self, ip: Option<IpAddr>) -> bool {
        self.shared.decide(ip).is_ok()
    }
}

/// The reader for `path`; `None` when no file exists there.
fn open(path: &Path) -> Result<Option<Reader<Vec<u8>>>, ConfigError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ConfigError::new(
                "database",
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    };
    Reader::from_source(bytes).map(Some).map_err(|e| {
        ConfigError::new(
            "database",
            format!("{} is not a MaxMind DB file: {e}", path.display()),
        )
    })
}

impl Shared {
    fn country(&self, ip: IpAddr) -> Option<CountryCode> {
        // IPv4-mapped IPv6 addresses are looked up as IPv4, where databases keep them.
        let result = self.reader.lookup(ip.to_canonical()).ok()?;
        let record: CountryRecord<'_> = match result.decode() {
            Ok(record) => record?,
            Err(e) => {
                tracing::debug!(%ip, error = %e, "GeoIP record unreadable; client unknown");
                return None;
            }
        };
        let country = (record.country.and_then(|c| c.iso_code))
            .or_else(|| record.registered_country.and_then(|c| c.iso_code))?;
        CountryCode::parse(country)
    }

    /// `Err` with the country (if known) when the client is refused.
    fn decide(&self, ip: Option<IpAddr>) -> Result<(), Option<CountryCode>> {
        let Some(country) = ip.and_then(|ip| self.country(ip)) else {
            return match self.unknown {
                Decision::Allow => Ok(()),
                Decision::Deny => Err(None),
            };
        };
        let pass = match &self.rule {
            Rule::Allow(set) => set.contains(country),
            Rule::Deny(set) => !set.contains(country),
        };
        if pass { Ok(()) } else { Err(Some(country)) }
    }
}

fn forbidden(country: Option<CountryCode>) -> Response<Body> {
    let problem = Problem::new(StatusCode::FORBIDDEN)
        .with_title("Forbidden by location")
        .with_rejection(Rejection::Location);
    match country {
        Some(c) => problem
            .with_detail(format!(
                "Requests from this country ({c}) are not accepted."
            ))
            .with_extension("country", serde_json::Value::from(c.as_str())),
        None => problem.with_detail("Requests from an unknown location are not accepted."),
    }
    .into_response()
}

impl<S> Layer<S> for GeoIpLayer {
    type Service = GeoIp<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GeoIp {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`GeoIpLayer`].
#[derive(Debug, Clone)]
pub struct GeoIp<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> GeoIp<S> {
    crate::macros::define_inner_service_accessors!();
}

impl<S, ReqBody> Service<Request<ReqBody>> for GeoIp<S>
where
    S: Service<Request<ReqBody>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = RejectOr<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if self.shared.exempt.contains(req.uri().path()) {
            return RejectOr::inner(self.inner.call(req));
        }
        let ip = req
            .extensions()
            .get::<RequestContext>()
            .and_then(RequestContext::client_ip);
        match self.shared.decide(ip) {
            Ok(()) => RejectOr::inner(self.inner.call(req)),
            Err(country) => RejectOr::reject(forbidden(country)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(allow: &[&str], deny: &[&str]) -> GeoIpConfig {
        GeoIpConfig {
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            deny: deny.iter().map(|s| (*s).to_owned()).collect(),
            ..GeoIpConfig::default()
        }
    }

    #[test]
    fn country_codes_are_two_letters_in_any_case() {
        assert_eq!(CountryCode::parse("de").unwrap().as_str(), "DE");
        assert_eq!(CountryCode::parse("Zz").unwrap().to_string(), "ZZ");
        for bad in ["", "D", "DEU", "D1", "é", "1A", " D"] {
            assert!(CountryCode::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_set_holds_exactly_the_codes_listed() {
        let set = CountrySet::parse("deny", &["AA".into(), "zz".into(), " kp ".into()]).unwrap();
        let mut members = Vec::new();
        for a in b'A'..=b'Z' {
            for b in b'A'..=b'Z' {
                let code = CountryCode([a, b]);
                if set.contains(code) {
                    members.push(code.to_string());
                }
            }
        }
        assert_eq!(members, ["AA", "KP", "ZZ"]);
    }

    #[test]
    fn a_bad_code_names_its_key_and_index() {
        let err = GeoIpLayer::new(&config(&["DE", "FR", "GER"], &[]), ExemptPaths::default())
            .unwrap_err();
        assert_eq!(err.key, "allow[2]");
        assert!(err.message.contains("\"GER\""), "{err}");
        let err = GeoIpLayer::new(&config(&[], &["1x"]), ExemptPaths::default()).unwrap_err();
        assert_eq!(err.key, "deny[0]");
    }

    #[test]
    fn allow_and_deny_together_are_refused() {
        let err = GeoIpLayer::new(&config(&["DE"], &["FR"]), ExemptPaths::default()).unwrap_err();
        assert_eq!(err.key, "deny");
    }

    #[test]
    fn without_a_database_the_layer_is_off_but_the_lists_are_still_checked() {
        assert!(
            GeoIpLayer::new(&config(&["DE"], &[]), ExemptPaths::default())
                .unwrap()
                .is_none()
        );
        assert!(GeoIpLayer::new(&config(&["D"], &[]), ExemptPaths::default()).is_err());
    }

    #[test]
    fn the_config_reads_lower_case_decisions_and_rejects_unknown_keys() {
        let c: GeoIpConfig = serde_json::from_value(serde_json::json!({
            "database": "/x.mmdb", "deny": ["KP"], "unknown": "deny"
        }))
        .unwrap();
        assert_eq!(c.unknown, Decision::Deny);
        assert_eq!(c.database.as_deref(), Some(Path::new("/x.mmdb")));
        let defaults: GeoIpConfig = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(defaults, GeoIpConfig::default());
        assert_eq!(defaults.unknown, Decision::Allow);
        assert!(
            serde_json::from_value::<GeoIpConfig>(serde_json::json!({"countries": []})).is_err()
        );
    }
}
