//! `[database]`: the SQL database of the API server's resources. SQLite, embedded, by default;
//! PostgreSQL when `url` (or `DATABASE_URL`) names one.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigDuration;

/// `[database]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `postgres://user:password@host:5432/db` or `sqlite://path/to/file.db`; empty: SQLite at
    /// `<data_dir>/palisade.db`. A secret (never printed; weak passwords refused in
    /// production). Env `PALISADE_DATABASE__URL`, or `DATABASE_URL`. Default `""`.
    pub url: String,
    /// Where the default SQLite file lives (created when missing). Env
    /// `PALISADE_DATABASE__DATA_DIR`. Default `./data`.
    pub data_dir: PathBuf,
    /// Most pooled connections. SQLite writes one at a time whatever this says. Env
    /// `PALISADE_DATABASE__MAX_CONNECTIONS`. Default `10`.
    pub max_connections: u32,
    /// Connections kept open when idle. Default `0`.
    pub min_connections: u32,
    /// Longest wait for a pooled connection before a request gets `503`. Default `5s`.
    pub acquire_timeout: ConfigDuration,
    /// Idle connections are closed after this long. Default `10m`.
    pub idle_timeout: ConfigDuration,
    /// Run the embedded migrations at startup (else: `palisade db migrate`). Default `true`.
    pub migrate_on_startup: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            data_dir: PathBuf::from("./data"),
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: ConfigDuration(std::time::Duration::from_secs(5)),
            idle_timeout: ConfigDuration(std::time::Duration::from_secs(600)),
            migrate_on_startup: true,
        }
    }
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite (WAL mode).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl DatabaseSettings {
    /// The URL to connect to: `url`, else SQLite in `data_dir` (created with the file).
    pub fn connect_url(&self) -> String {
        if self.url.trim().is_empty() {
            let path = self.data_dir.join("palisade.db");
            format!("sqlite://{}?mode=rwc", path.display())
        } else {
            self.url.trim().to_owned()
        }
    }

    /// The backend of [`connect_url`](Self::connect_url).
    pub fn backend(&self) -> Result<Backend, String> {
        let url = self.connect_url();
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err("expected postgres://… or sqlite://… (empty: SQLite in data_dir)".into())
        }
    }

    /// The `[database]` checks; errors name the key.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let key = |k: &str| format!("database.{k}");
        self.backend().map_err(|m| (key("url"), m))?;
        if self.max_connections == 0 || self.max_connections > 1000 {
            return Err((key("max_connections"), "must be between 1 and 1000".into()));
        }
        if self.min_connections > self.max_connections {
            return Err((
                key("min_connections"),
                "must not exceed max_connections".into(),
            ));
        }
        if self.acquire_timeout.0.is_zero() {
            return Err((key("acquire_timeout"), "must be greater than 0s".into()));
        }
        Ok(())
    }
}
