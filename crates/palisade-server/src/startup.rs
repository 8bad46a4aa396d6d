//! Building and running the application: bind, assemble, serve, shut down.

use std::{future::Future, pin::Pin, sync::Arc};

use axum::Router;
use palisade::{
    exempt::ExemptPaths,
    health::{Health, HealthCheck},
};
use tokio::net::TcpListener;

use futures_util::FutureExt;

use crate::{
    config::Settings,
    middleware::apply_middleware,
    routes::{self, AppRoutes},
    serve::{ServeOptions, serve},
};

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Invalid configuration (one line naming the key).
    #[error("{0}")]
    Config(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The database could not be prepared (migrations at startup).
    #[error(transparent)]
    Database(#[from] crate::db::DatabaseError),
}

/// Registers more collectors with the metrics registry once it exists.
type MetricsHook = Box<dyn FnOnce(&palisade::metrics::Metrics) + Send>;

type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send>>;
type Runner = Box<dyn FnOnce(ShutdownSignal) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A bound, assembled server, ready to run.
pub struct Application {
    port: u16,
    health: Health,
    run: Runner,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Binds and assembles the API server: the database (`[database]`; migrated at startup
    /// unless switched off, and a readiness check) and the example resources under
    /// `/api/v1`, inside the whole stack.
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        let db = crate::db::Database::open(&settings.database)?;
        if settings.database.migrate_on_startup {
            let ran = db.migrate().await?;
            tracing::info!(backend = ?db.backend(), migrations = ran, "database ready");
        }
        let check = db.health_check();
        let jobs = if settings.jobs.enabled {
            let jobs = crate::jobs::Jobs::connect(&settings.redis.url, &settings.jobs)
                .await
                .map_err(StartupError::Config)?;
            if settings.jobs.worker {
                jobs.spawn_worker(&settings.jobs, db.clone())
                    .map_err(StartupError::Config)?;
            }
            Some(jobs)
        } else {
            None
        };
        let mut routes = crate::resources::routes(&db, jobs.as_ref());
        if settings.openapi.enabled {
            routes = crate::openapi::routes(routes, settings);
        }
        let job_metrics: Option<MetricsHook> = jobs.map(|j| {
            let stats = j.stats();
            Box::new(move |m: &palisade::metrics::Metrics| crate::metrics::jobs(m, stats))
                as MetricsHook
        });
        Self::build_parts(settings, routes, vec![check], job_metrics).await
    }

    /// Binds and assembles the server with Palisade's own routes only (no database).
    pub async fn build_bare(settings: &Settings) -> Result<Self, StartupError> {
        Self::build_with_routes(settings, Router::new()).await
    }

    /// Binds and assembles the server around the application's `routes` (health routes, the
    /// 404 fallback and the whole middleware stack are added). Port 0 picks a free port.
    pub async fn build_with_routes(
        settings: &Settings,
        routes: impl Into<AppRoutes>,
    ) -> Result<Self, StartupError> {
        Self::build_with(settings, routes, Vec::new()).await
    }

    /// Like [`build_with_routes`](Self::build_with_routes), plus readiness checks; each runs
    /// under `health.check_timeout` on every `/readyz`.
    pub async fn build_with(
        settings: &Settings,
        routes: impl Into<AppRoutes>,
        checks: Vec<Arc<dyn HealthCheck>>,
    ) -> Result<Self, StartupError> {
        Self::build_parts(settings, routes.into(), checks, None).await
    }

    async fn build_parts(
        settings: &Settings,
        routes: AppRoutes,
        checks: Vec<Arc<dyn HealthCheck>>,
        extra_metrics: Option<MetricsHook>,
    ) -> Result<Self, StartupError> {
        // `[upstreams.policy]` becomes route rules of the sections it names.
        let settings = &settings.with_upstream_policies();
        let host = &settings.server.host;
        let addr = if host.contains(':') {
            format!("[{host}]:{}", settings.server.port)
        } else {
            format!("{host}:{}", settings.server.port)
        };
        let listener = bind(&addr).await?;
        let port = listener
            .local_addr()
            .map_err(|source| StartupError::Bind { addr, source })?
            .port();

        let breaker = crate::middleware::route_breaker(settings)?;
        let gateway = (!settings.upstreams.is_empty())
            .then(|| palisade::proxy::Gateway::new(&settings.upstreams, &settings.client_ip))
            .transpose()
            .map_err(|e| {
                StartupError::Config(format!("invalid config key `{}`: {}", e.key, e.message))
            })?;
        // Every breaker: the route group's and each upstream's (readiness warns while open).
        let breakers: Vec<_> = breaker
            .iter()
            .cloned()
            .chain(gateway.iter().flat_map(palisade::proxy::Gateway::breakers))
            .collect();
        let mut checks = checks;
        checks.extend(
            breakers
                .iter()
                .map(|b| Arc::new(b.clone()) as Arc<dyn HealthCheck>),
        );
        let timeout = settings.health.check_timeout.get();
        let health = checks
            .into_iter()
            .fold(Health::builder(), |b, c| b.check_arc(c, timeout))
            .build();
        // Metrics on the main listener, or on their own (`metrics.listen`).
        let m = &settings.metrics;
        let public_metrics_path = (m.enabled && m.listen.is_none()).then_some(m.path.as_str());
        let templates = routes::templates(&routes, public_metrics_path, &settings.upstreams);
        let metrics = crate::metrics::registry(settings, &templates).map_err(|e| {
            StartupError::Config(format!(
                "invalid config key `metrics.{}`: {}",
                e.key, e.message
            ))
        })?;
        if let Some(m) = &metrics {
            if let Some(hook) = extra_metrics {
                hook(m);
            }
            crate::metrics::breakers(m, breakers);
            if let Some(g) = &gateway {
                crate::metrics::gateway(m, g);
            }
        }
        let metrics_listener = match (&metrics, m.listen) {
            (Some(registry), Some(addr)) => {
                Some((bind(&addr.to_string()).await?, registry.clone()))
            }
            _ => None,
        };
        let exempt = ExemptPaths::new(
            palisade::health::HEALTH_PATHS
                .iter()
                .copied()
                .chain(public_metrics_path),
        );
        let router = routes::router(
            routes,
            health.clone(),
            public_metrics_path.zip(metrics.clone()),
            gateway,
        );
        #[cfg(feature = "otel")]
        let otel = crate::telemetry::init_otel(&settings.otel).map_err(|e| {
            StartupError::Config(format!(
                "invalid config key `otel.{}`: {}",
                e.key, e.message
            ))
        })?;
        #[cfg(feature = "otel")]
        let otel_layer = otel.as_ref().map(palisade::otel::OtelGuard::layer);
        #[cfg(not(feature = "otel"))]
        let otel_layer = None;
        let service = apply_middleware(
            router,
            settings,
            &exempt,
            breaker,
            metrics.as_ref(),
            otel_layer,
        )?;
        let opts = ServeOptions {
            detect_ambiguous_framing: !settings.upstreams.is_empty(),
            header_read_timeout: settings.server.header_read_timeout.get(),
            keep_alive_timeout: settings.server.keep_alive_timeout.get(),
            shutdown_delay: settings.server.shutdown_delay.get(),
            drain_timeout: settings.server.drain_timeout.get(),
            tcp_nodelay: settings.server.tcp_nodelay,
            max_connections: settings.server.max_connections,
            max_connections_per_ip: settings.server.max_connections_per_ip,
            trusted_proxies: palisade::client_ip::TrustedProxies::new(&settings.client_ip),
            // Above the content-validation limits, so clients get its 431 problem; hyper's
            // own default (100 fields, kept on the stack) unless more are allowed.
            max_header_fields: (settings.content_validation.enabled
                && settings.content_validation.max_headers >= 100)
                .then(|| settings.content_validation.max_headers * 2),
            max_h2_header_list: settings.content_validation.enabled.then(|| {
                let cv = &settings.content_validation;
                u32::try_from(cv.max_header_bytes + 32 * cv.max_headers + 1024).unwrap_or(u32::MAX)
            }),
        };
        let serve_health = health.clone();
        let run: Runner = Box::new(move |shutdown| {
            Box::pin(async move {
                match metrics_listener {
                    Some((metrics_listener, registry)) => {
                        // The scrape listener stops with the main one.
                        let shutdown = shutdown.shared();
                        let scrape = serve_metrics(metrics_listener, registry, shutdown.clone());
                        tokio::join!(
                            serve(listener, service, serve_health, opts, shutdown),
                            scrape
                        );
                    }
                    None => serve(listener, service, serve_health, opts, shutdown).await,
                }
                // Export the spans of the last requests; the flush blocks, so off the runtime.
                #[cfg(feature = "otel")]
                if let Some(otel) = otel {
                    let flushed = tokio::task::spawn_blocking(move || otel.shutdown()).await;
                    if let Ok(Err(error)) = flushed {
                        tracing::warn!(%error, "OpenTelemetry: final export failed");
                    }
                }
            })
        });
        Ok(Self { port, health, run })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The health registry (readiness state).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Serves until SIGTERM or SIGINT (Ctrl-C), then drains.
    pub async fn run_until_stopped(self) {
        self.run_until(shutdown_signal()).await;
    }

    /// Serves until `shutdown` resolves, then drains. Startup work is done: readiness passes.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        self.health.set_ready();
        tracing::info!(port = self.port, "listening");
        (self.run)(Box::pin(shutdown)).await;
    }
}

async fn bind(addr: &str) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

/// Serves `GET <any path>` with the exposition on the separate metrics listener until
/// `shutdown`: a plain HTTP/1 server, no stack (the address is meant to be private).
async fn serve_metrics(
    listener: TcpListener,
    metrics: palisade::metrics::Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new().fallback(routes::metrics_endpoint(metrics));
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(%error, "metrics listener failed");
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
