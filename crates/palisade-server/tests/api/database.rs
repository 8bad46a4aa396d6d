//! Databases for the data-layer tests: a fresh SQLite directory, or a fresh database on a
//! real PostgreSQL server (created for the test, dropped after it).

use std::path::PathBuf;

use sqlx::{Connection, PgConnection};

/// The server the PostgreSQL tests use: `PALISADE_TEST_POSTGRES_URL`, else the `palisade_test`
/// role that `./scripts/test` creates on the local cluster.
fn admin_url() -> String {
    std::env::var("PALISADE_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        "postgres://palisade_test:palisade_test@127.0.0.1:5432/postgres".to_owned()
    })
}

/// A database for one test.
pub(crate) enum TestDb {
    Sqlite(PathBuf),
    Postgres { name: String, url: String },
}

impl TestDb {
    pub(crate) fn sqlite() -> Self {
        Self::Sqlite(crate::helpers::scratch_dir("sqlite"))
    }

    pub(crate) async fn postgres() -> Self {
        let admin = admin_url();
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "cannot reach PostgreSQL at {} ({e}); run ./scripts/test, which installs and \
                 starts it and creates the palisade_test role, or set PALISADE_TEST_POSTGRES_URL",
                admin.split('@').next_back().unwrap_or("?")
            )
        });
        let name = format!(
            "palisade_test_{}_{}",
            std::process::id(),
            palisade::request_id::RequestId::generate()
                .as_str()
                .replace('-', "")
        );
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        Self::Postgres { name, url }
    }

    /// The `[database]` section pointing at this database.
    pub(crate) fn toml(&self) -> String {
        match self {
            Self::Sqlite(dir) => {
                format!("[database]\ndata_dir = {:?}\n", dir.display().to_string())
            }
            Self::Postgres { url, .. } => format!("[database]\nurl = {url:?}\n"),
        }
    }

    /// The URL, for connecting from the test.
    pub(crate) fn url(&self) -> String {
        match self {
            Self::Sqlite(dir) => format!("sqlite://{}", dir.join("palisade.db").display()),
            Self::Postgres { url, .. } => url.clone(),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match self {
            Self::Sqlite(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Self::Postgres { name, .. } => {
                let name = name.clone();
                // Drop runs inside the test's runtime: a thread with its own does the work.
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
                            let _ = sqlx::query(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .execute(&mut conn)
                            .await;
                        }
                    });
                })
                .join();
            }
        }
    }
}
