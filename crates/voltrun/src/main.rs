//! `voltrun`: the server, its operator commands, and the command-line client. Only wiring lives
//! here: the server in this crate's library, the client in `voltrun-cli`.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use voltrun::config::{RawSettings, Settings};
use voltrun::startup::Application;

#[derive(Debug, Parser)]
#[command(
    name = "voltrun",
    version,
    about = "VoltRun: a self-hostable function platform",
    after_help = voltrun_cli::AFTER_HELP
)]
struct Cli {
    #[command(flatten)]
    client: voltrun_cli::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the API server
    Server(RawSettings),
    /// Apply database migrations and exit
    Migrate(RawSettings),
    /// Firecracker microVM backend tools (`vm doctor`, `vm images build`)
    #[command(subcommand)]
    Vm(voltrun_vm::cli::VmCommand),
    #[command(flatten)]
    Client(voltrun_cli::Command),
}

fn main() -> ExitCode {
    // A missing .env is normal; a malformed one is reported by the settings it breaks.
    let _ = dotenvy::dotenv();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return voltrun_cli::exit_on_parse_error(e),
    };
    match cli.command {
        Command::Server(raw) => server(raw, false),
        Command::Migrate(raw) => server(raw, true),
        Command::Vm(command) => voltrun_vm::cli::run(command),
        Command::Client(command) => voltrun_cli::run(cli.client, command, Cli::command),
    }
}

/// `voltrun server` and `voltrun migrate`: both need the server's settings, the client does not.
fn server(raw: RawSettings, migrate_only: bool) -> ExitCode {
    let settings = match Settings::from_raw(raw) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("voltrun: {e}");
            return ExitCode::from(2);
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
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        if migrate_only {
            voltrun_storage::migrate(settings.database_url.expose()).await?;
            tracing::info!("migrations applied");
            Ok(())
        } else {
            Application::build(&settings).await?.run().await
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "voltrun stopped with an error");
            eprintln!("voltrun: {e:#}");
            ExitCode::FAILURE
        }
    }
}
