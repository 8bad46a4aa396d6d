//! [`AuthLayer`] and its service.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum_core::body::Body;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    Access, AuthConfig, Credential, JwksFetch, Principal,
    api_key::ApiKeys,
    jwt::{Checked, JwtError, JwtVerifier},
};
use crate::{
    context::RequestContext,
    error::ConfigError,
    exempt::ExemptPaths,
    future::RejectOr,
    macros::define_inner_service_accessors,
    path_pattern::{RouteMatch, RouteRules},
    problem::Problem,
    rejection::Rejection,
};

/// What a route asks of its callers.
#[derive(Debug)]
enum Requirement {
    Public,
    Authenticated {
        scopes: Box<[Box<str>]>,
        /// `WWW-Authenticate` for a `403`, built once.
        insufficient: Option<HeaderValue>,
    },
}

#[derive(Debug)]
struct Authenticator {
    jwt: Option<JwtVerifier>,
    api_keys: Option<ApiKeys>,
    routes: RouteRules<Requirement>,
    default: Requirement,
    realm: Box<str>,
    /// The challenges of a `401` for missing credentials, built once.
    challenges: Box<[HeaderValue]>,
}

/// Authenticates requests and enforces per-route access. See the [module docs](super).
#[derive(Debug, Clone)]
#[must_use]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
    /// Paths served without looking at credentials (health probes).
    exempt: ExemptPaths,
}

impl AuthLayer {
    /// The layer for `config` (`enabled` is the caller's business); `jwks` fetches the key
    /// set when `jwt.jwks_url` is set. Errors name the key.
    pub fn new(config: &AuthConfig, jwks: Option<Arc<dyn JwksFetch>>) -> Result<Self, ConfigError> {
        let jwt = config
            .jwt
            .as_ref()
            .map(|j| JwtVerifier::new(j, jwks))
            .transpose()?;
        let api_keys = ApiKeys::new(&config.api_keys)?;
        let realm = config.realm.trim();
        if realm.is_empty()
            || !realm
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            return Err(ConfigError::new(
                "realm",
                "must be printable ASCII without quotes",
            ));
        }
        let needs_credentials = |r: &Requirement| matches!(r, Requirement::Authenticated { .. });
        let default = match config.default_access {
            Access::Public => Requirement::Public,
            Access::Authenticated => Requirement::Authenticated {
                scopes: Box::new([]),
                insufficient: None,
            },
        };
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            let route = RouteMatch::compile(i, &r.path, &r.methods)?;
            let requirement = if r.public {
                if !r.scopes.is_empty() {
                    return Err(ConfigError::new(
                        format!("routes[{i}].scopes"),
                        "a public route cannot require scopes",
                    ));
                }
                Requirement::Public
            } else {
                for (j, s) in r.scopes.iter().enumerate() {
                    if s.is_empty()
                        || !s
                            .bytes()
                            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
                    {
                        return Err(ConfigError::new(
                            format!("routes[{i}].scopes[{j}]"),
                            "a scope is printable ASCII without spaces or quotes",
                        ));
                    }
                }
                let insufficient = (!r.scopes.is_empty()).then(|| {
                    HeaderValue::try_from(format!(
                        "Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{}\"",
                        r.scopes.join(" ")
                    ))
                    .expect("checked characters")
                });
                Requirement::Authenticated {
                    scopes: r.scopes.iter().map(|s| Box::from(s.as_str())).collect(),
                    insufficient,
                }
            };
            routes.push((route, requirement));
        }
        let any_required =
            needs_credentials(&default) || routes.iter().any(|(_, r)| needs_credentials(r));
        if any_required && jwt.is_none() && api_keys.is_none() {
            return Err(ConfigError::new(
                "jwt",
                "routes require authentication, but neither `jwt` nor `api_keys.keys` is configured",
            ));
        }
        let mut challenges = Vec::new();
        if jwt.is_some() {
            challenges
                .push(HeaderValue::try_from(format!("Bearer realm=\"{realm}\"")).expect("checked"));
        }
        if let Some(k) = &api_keys {
            challenges.push(
                HeaderValue::try_from(format!("ApiKey realm=\"{realm}\", header=\"{}\"", k.header))
                    .expect("checked"),
            );
        }
        Ok(Self {
            auth: Arc::new(Authenticator {
                jwt,
                api_keys,
                routes: RouteRules::new(routes),
                default,
                realm: realm.into(),
                challenges: challenges.into(),
            }),
            exempt: ExemptPaths::health(),
        })
    }

    /// Paths served without looking at credentials. Default: the health paths.
    pub fn exempt(mut self, paths: ExemptPaths) -> Self {
        self.exempt = paths;
        self
    }

    /// Fetches the JWKS now, if one is configured: call it at startup so the first requests
    /// do not wait. A failure is logged and retried when tokens arrive.
    pub async fn prefetch_keys(&self) {
        if let Some(jwks) = self.auth.jwt.as_ref().and_then(JwtVerifier::jwks) {
            jwks.refresh().await;
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            auth: self.auth.clone(),
            exempt: self.exempt.clone(),
        }
    }
}

/// The service made by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    auth: Arc<Authenticator>,
    exempt: ExemptPaths,
}

impl<S> Auth<S> {
    define_inner_service_accessors!();
}

/// The outcome of the synchronous part.
enum Decision {
    Pass(Option<Principal>),
    Reject(Box<Response<Body>>),
    NeedKeys(Arc<super::jwks::Jwks>),
}

impl Authenticator {
    fn decide(&self, method: &Method, path: &str, headers: &HeaderMap) -> Decision {
        let principal = match self.credentials(headers) {
            Ok(p) => p,
            Err(d) => return d,
        };
        let requirement = self.routes.find(method, path).unwrap_or(&self.default);
        match (requirement, &principal) {
            (Requirement::Public, _) => Decision::Pass(principal),
            (Requirement::Authenticated { .. }, None) => Decision::Reject(Box::new(self.missing())),
            (
                Requirement::Authenticated {
                    scopes,
                    insufficient,
                },
                Some(p),
            ) => {
                if scopes.iter().all(|s| p.has_scope(s)) {
                    Decision::Pass(principal)
                } else {
                    Decision::Reject(Box::new(forbidden(scopes, insufficient.as_ref())))
                }
            }
        }
    }

    /// The principal the request's credentials prove, none, or a refusal.
    fn credentials(&self, headers: &HeaderMap) -> Result<Option<Principal>, Decision> {
        if let Some(jwt) = &self.jwt
            && let Some(token) = headers.get(header::AUTHORIZATION).and_then(bearer)
        {
            return match jwt.check(token) {
                Checked::Done(Ok(t)) => Ok(Some(Principal::new(
                    t.subject,
                    t.scopes,
                    Credential::Jwt,
                    t.tier,
                ))),
                Checked::Done(Err(e)) => Err(Decision::Reject(Box::new(self.invalid_token(e)))),
                Checked::NeedKeys(jwks) => Err(Decision::NeedKeys(jwks)),
            };
        }
        if let Some(keys) = &self.api_keys
            && let Some(presented) = headers.get(&keys.header)
        {
            return match keys.check(presented.as_bytes()) {
                Some(p) => Ok(Some(p.clone())),
                None => Err(Decision::Reject(Box::new(self.invalid_key()))),
            };
        }
        Ok(None)
    }

    fn missing(&self) -> Response<Body> {
        let mut res = authentication_required().into_response();
        for c in &*self.challenges {
            res.headers_mut()
                .append(header::WWW_AUTHENTICATE, c.clone());
        }
        res
    }

    fn invalid_token(&self, e: JwtError) -> Response<Body> {
        let status = if e == JwtError::KeysUnavailable {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::UNAUTHORIZED
        };
        let mut res = Problem::new(status)
            .with_title("Invalid credentials")
            .with_detail(e.describe())
            .with_rejection(Rejection::Unauthenticated)
            .into_response();
        let challenge = if status == StatusCode::SERVICE_UNAVAILABLE {
            // The token was not judged: no `error`.
            format!("Bearer realm=\"{}\"", self.realm)
        } else {
            format!(
                "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{}\"",
                self.realm,
                e.describe()
            )
        };
        if let Ok(v) = HeaderValue::try_from(challenge) {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        res
    }

    fn invalid_key(&self) -> Response<Body> {
        let mut res = Problem::new(StatusCode::UNAUTHORIZED)
            .with_title("Invalid credentials")
            .with_detail("The API key is not valid.")
            .with_rejection(Rejection::Unauthenticated)
            .into_response();
        if let Ok(v) = HeaderValue::try_from(format!(
            "ApiKey realm=\"{}\", error=\"invalid_key\"",
            self.realm
        )) {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        res
    }
}

/// The `401` problem for a request without credentials where they are needed.
pub(super) fn authentication_required() -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED)
        .with_title("Authentication required")
        .with_detail("This operation needs credentials: a bearer token or an API key.")
        .with_rejection(Rejection::Unauthenticated)
}

/// The token of `Bearer <token>` (scheme in any case).
fn bearer(value: &HeaderValue) -> Option<&str> {
    let v = value.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub(super) fn forbidden<T: AsRef<str>>(
    scopes: &[T],
    challenge: Option<&HeaderValue>,
) -> Response<Body> {
    let listed: Vec<serde_json::Value> = scopes
        .iter()
        .map(|s| serde_json::Value::from(s.as_ref()))
        .collect();
    let joined = |sep: &str| {
        scopes
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<&str>>()
            .join(sep)
    };
    let mut res = Problem::new(StatusCode::FORBIDDEN)
        .with_title("Insufficient scope")
        .with_detail(format!(
            "This operation needs the scopes: {}.",
            joined(", ")
        ))
        .with_extension("required_scopes", serde_json::Value::Array(listed))
        .with_rejection(Rejection::Forbidden)
        .into_response();
    let challenge = challenge.cloned().or_else(|| {
        HeaderValue::try_from(format!(
            "Bearer error=\"insufficient_scope\", scope=\"{}\"",
            joined(" ")
        ))
        .ok()
    });
    if let Some(c) = challenge {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, c);
    }
    res
}

/// Records `principal` in the request and its context.
fn admit<B>(req: &mut Request<B>, principal: Option<Principal>) {
    let Some(p) = principal else { return };
    if let Some(ctx) = req.extensions().get::<RequestContext>() {
        ctx.set_subject(p.subject());
        if let Some(tier) = p.tier() {
            ctx.set_tier(tier);
        }
    }
    req.extensions_mut().insert(p);
}

type BoxResponseFuture<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

pin_project! {
    /// The response future of [`Auth`]: the inner service's, an early refusal, or a wait for
    /// the JWKS first.
    pub struct ResponseFuture<F, E> {
        #[pin]
        kind: Kind<F, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, E> {
        Now { #[pin] future: RejectOr<F> },
        AfterKeys { future: BoxResponseFuture<E> },
    }
}

impl<F, E> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Now { future } => future.poll(cx),
            KindProj::AfterKeys { future } => future.as_mut().poll(cx),
        }
    }
}

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if self.exempt.contains(req.uri().path()) {
            return ResponseFuture {
                kind: Kind::Now {
                    future: RejectOr::inner(self.inner.call(req)),
                },
            };
        }
        let decision = self
            .auth
            .decide(req.method(), req.uri().path(), req.headers());
        let now = |future| ResponseFuture {
            kind: Kind::Now { future },
        };
        match decision {
            Decision::Pass(p) => {
                admit(&mut req, p);
                now(RejectOr::inner(self.inner.call(req)))
            }
            Decision::Reject(res) => now(RejectOr::reject(*res)),
            Decision::NeedKeys(jwks) => {
                // The service that was polled ready goes with the request.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let auth = self.auth.clone();
                ResponseFuture {
                    kind: Kind::AfterKeys {
                        future: Box::pin(async move {
                            // On a task of its own: a client that goes away cannot cancel the
                            // fetch (and so hold off every fetch for the cooldown).
                            let fetch = tokio::spawn(async move { jwks.refresh().await });
                            let _ = fetch.await;
                            match auth.decide(req.method(), req.uri().path(), req.headers()) {
                                Decision::Pass(p) => {
                                    admit(&mut req, p);
                                    inner.call(req).await
                                }
                                Decision::Reject(res) => Ok(*res),
                                Decision::NeedKeys(_) => {
                                    Ok(auth.invalid_token(JwtError::UnknownKey))
                                }
                            }
                        }),
                    },
                }
            }
        }
    }
}
