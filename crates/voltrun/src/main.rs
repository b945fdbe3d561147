//! `voltrun`: the server and its operator commands. Only wiring lives here.

use clap::{Parser, Subcommand};
use voltrun::config::{RawSettings, Settings};
use voltrun::startup::Application;

#[derive(Debug, Parser)]
#[command(
    name = "voltrun",
    version,
    about = "VoltRun: a self-hostable function platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the API server
    Server(RawSettings),
    /// Apply database migrations and exit
    Migrate(RawSettings),
}

fn main() -> std::process::ExitCode {
    // A missing .env is normal; a malformed one is reported by the settings it breaks.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let (Command::Server(raw) | Command::Migrate(raw)) = &cli.command;
    let settings = match Settings::from_raw(raw.clone()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("voltrun: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    voltrun::telemetry::init(settings.log_format, &settings.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("voltrun: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(_) => Application::build(&settings).await?.run().await,
            Command::Migrate(_) => {
                voltrun_storage::migrate(settings.database_url.expose()).await?;
                tracing::info!("migrations applied");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "voltrun stopped with an error");
            eprintln!("voltrun: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
