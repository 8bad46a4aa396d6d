//! The SQL database: one `sqlx` pool over SQLite (embedded, WAL mode; the default) or
//! PostgreSQL, the embedded migrations, and the readiness check.
//!
//! The queries are portable SQL with `$n` parameters, run through sqlx's `Any` driver, so one
//! code path serves both databases and the tests run it against each.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use palisade::health::{CheckResult, HealthCheck};
use sqlx::{
    AnyPool, Executor,
    any::{AnyPoolOptions, install_default_drivers},
    migrate::Migrator,
};

use crate::config::{Backend, DatabaseSettings};

/// The embedded migrations (`crates/palisade-server/migrations`).
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// A connection pool and what it points at. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
}

/// Why the database could not be used at startup.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The settings are unusable (URL, directory).
    #[error("{0}")]
    Config(String),
    /// Connecting failed; the message never holds the password.
    #[error("cannot connect to the {backend:?} database: {source}")]
    Connect {
        /// Which database.
        backend: Backend,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl Database {
    /// Opens the pool (lazily: connections are made on first use, so a database that is down
    /// at startup shows in readiness rather than stopping the server) after creating the
    /// SQLite data directory.
    pub fn open(settings: &DatabaseSettings) -> Result<Self, DatabaseError> {
        install_default_drivers();
        let backend = settings.backend().map_err(DatabaseError::Config)?;
        if backend == Backend::Sqlite && settings.url.trim().is_empty() {
            std::fs::create_dir_all(&settings.data_dir).map_err(|e| {
                DatabaseError::Config(format!(
                    "cannot create database.data_dir {}: {e}",
                    settings.data_dir.display()
                ))
            })?;
        }
        let mut options = AnyPoolOptions::new()
            .max_connections(settings.max_connections)
            .min_connections(settings.min_connections)
            .acquire_timeout(settings.acquire_timeout.0)
            .idle_timeout(Some(settings.idle_timeout.0));
        if backend == Backend::Sqlite {
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL: readers never wait for the writer; a busy writer is waited for,
                    // not failed; foreign keys enforced.
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                    )
                    .await?;
                    Ok(())
                })
            });
        }
        let pool = options
            .connect_lazy(&settings.connect_url())
            .map_err(|source| DatabaseError::Connect { backend, source })?;
        Ok(Self { pool, backend })
    }

    /// Opens the pool and waits for a first connection (for `palisade db migrate`).
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, DatabaseError> {
        let db = Self::open(settings)?;
        db.pool
            .acquire()
            .await
            .map_err(|source| DatabaseError::Connect {
                backend: db.backend,
                source,
            })?;
        Ok(db)
    }

    /// Applies the migrations not applied yet; returns how many ran.
    pub async fn migrate(&self) -> Result<usize, DatabaseError> {
        let before = self.applied().await.unwrap_or(0);
        MIGRATOR.run(&self.pool).await?;
        let after = self.applied().await.unwrap_or(before);
        Ok(after.saturating_sub(before))
    }

    async fn applied(&self) -> Result<usize, sqlx::Error> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// The pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// SQLite or PostgreSQL.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The readiness check: `SELECT 1` within the check's timeout.
    pub fn health_check(&self) -> Arc<dyn HealthCheck> {
        Arc::new(self.clone())
    }
}

impl HealthCheck for Database {
    fn name(&self) -> &str {
        "database"
    }

    fn check(&self) -> Pin<Box<dyn Future<Output = CheckResult> + Send + '_>> {
        Box::pin(async move {
            // Shorter than any sensible check timeout, so the output says why.
            let ping = tokio::time::timeout(Duration::from_secs(2), async {
                let mut conn = self.pool.acquire().await?;
                conn.execute("SELECT 1").await.map(drop)
            });
            match ping.await {
                Ok(Ok(())) => CheckResult::pass(),
                Ok(Err(e)) => {
                    CheckResult::fail(format!("{:?} unreachable: {}", self.backend, kind(&e)))
                }
                Err(_) => CheckResult::fail(format!("{:?} did not answer within 2s", self.backend)),
            }
        })
    }
}

/// A short, password-free description of a database error.
pub(crate) fn kind(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::PoolTimedOut => "no connection available in time",
        sqlx::Error::Io(_) => "connection failed",
        sqlx::Error::Tls(_) => "TLS failed",
        sqlx::Error::Database(_) => "the database refused the query",
        sqlx::Error::PoolClosed => "the pool is closed",
        _ => "unexpected error",
    }
}
