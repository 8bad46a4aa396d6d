//! `palisade`: run the server, or check and explain its configuration.
//!
//! Kept thin: parse arguments, load config, start telemetry, build, run. Everything else is in
//! the library so tests drive exactly what production runs.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use palisade_server::{config, startup::Application, telemetry};

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
        Command::Serve => serve(&loaded.settings),
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
