//! `palisade`: run the server, or check and explain its configuration.
//!
//! Kept thin: parse arguments, load config, start telemetry, build, run. Everything else is in
//! the library so tests drive exactly what production runs.

// The whole stack is one nested service type; proving its future `Send`/`Unpin` takes more
// than the default 128 steps of trait resolution.
#![recursion_limit = "256"]

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use palisade_server::{config, startup::Application, telemetry, tokens};

/// Palisade: a production API server and gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (default: ./palisade.toml when present). Also PALISADE_CONFIG.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Development tokens signed as `[auth.jwt]` expects.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// The SQL database (`[database]`).
    Db {
        #[command(subcommand)]
        action: DbAction,
    },
    /// API keys for `[[auth.api_keys.keys]]`.
    Apikey {
        #[command(subcommand)]
        action: ApikeyAction,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Print a signed JWT for a subject and scopes.
    Issue {
        /// The subject (`sub`).
        #[arg(long)]
        sub: String,
        /// A scope to grant; repeat for more.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// Lifetime, e.g. `1h`, `15m`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// The rate-limit tier claim.
        #[arg(long)]
        tier: Option<String>,
        /// The key id (`kid`) header, for a JWKS.
        #[arg(long)]
        kid: Option<String>,
        /// PEM private key file, for RS*/PS*/ES*/EdDSA.
        #[arg(long, value_name = "PEM")]
        private_key: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DbAction {
    /// Apply the embedded migrations not applied yet, then exit.
    Migrate,
}

#[derive(Subcommand)]
enum ApikeyAction {
    /// Print a new random API key and the hash to configure for it.
    New,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the configuration and exit (0 when valid).
    Check,
    /// Print every effective value and where it came from; secrets are masked.
    Explain,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match config::load(&config::LoadOptions::from_process(cli.config)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("palisade: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config {
            action: ConfigAction::Check,
        } => {
            let file = loaded
                .file
                .as_ref()
                .map_or_else(|| "no config file".to_owned(), |f| f.display().to_string());
            println!(
                "configuration is valid ({file}, env {:?})",
                loaded.settings.env
            );
            ExitCode::SUCCESS
        }
        Command::Config {
            action: ConfigAction::Explain,
        } => {
            print!("{}", loaded.explain());
            ExitCode::SUCCESS
        }
        Command::Token {
            action:
                TokenAction::Issue {
                    sub,
                    scopes,
                    ttl,
                    tier,
                    kid,
                    private_key,
                },
        } => {
            let private_key_pem = match private_key.map(std::fs::read).transpose() {
                Ok(pem) => pem,
                Err(e) => {
                    eprintln!("palisade: cannot read the private key: {e}");
                    return ExitCode::from(2);
                }
            };
            let req = tokens::TokenRequest {
                subject: sub,
                scopes,
                ttl,
                tier,
                key_id: kid,
                private_key_pem,
            };
            match tokens::issue(&loaded.settings, &req) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("palisade: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Apikey {
            action: ApikeyAction::New,
        } => match tokens::new_api_key() {
            Ok((key, hash)) => {
                println!("key:  {key}");
                println!("hash: {hash}");
                println!("Give the key to the client; configure only the hash:");
                println!("[[auth.api_keys.keys]]\nid = \"<name>\"\nhash = \"{hash}\"");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("palisade: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Db {
            action: DbAction::Migrate,
        } => migrate(&loaded.settings),
        Command::Serve => serve(&loaded.settings),
    }
}

fn migrate(settings: &config::Settings) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("palisade: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let migrated = runtime.block_on(async {
        let db = palisade_server::db::Database::connect(&settings.database).await?;
        let applied = db.migrate().await?;
        Ok::<_, palisade_server::db::DatabaseError>((db.backend(), applied))
    });
    match migrated {
        Ok((backend, n)) => {
            println!("{backend:?} database: {n} migration(s) applied");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("palisade: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(settings: &config::Settings) -> ExitCode {
    let _guard = match telemetry::init(settings) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("palisade: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("palisade: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match Application::build(settings).await {
            Ok(app) => {
                app.run_until_stopped().await;
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "startup failed");
                eprintln!("palisade: {e}");
                ExitCode::from(2)
            }
        }
    })
}
