//! `voltrun`: the server, its operator commands, and the command-line client. Only wiring lives
//! here: the server in this crate's library, the client in `voltrun-cli`.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use voltrun::config::{ConfigError, Settings, SettingsArgs};
use voltrun::startup::{self, Application};

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
    Server(SettingsArgs),
    /// Apply database migrations and exit
    Migrate(SettingsArgs),
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
        // A setting's parser refused its value: report it as the other configuration errors are,
        // on one line naming the variable, which is where operators mostly set it.
        Err(e) => match ConfigError::from_clap(&e) {
            Some(error) => return config_error(&error),
            None => return voltrun_cli::exit_on_parse_error(e),
        },
    };
    match cli.command {
        Command::Server(args) => server(args, false),
        Command::Migrate(args) => server(args, true),
        Command::Vm(command) => voltrun_vm::cli::run(command),
        Command::Client(command) => voltrun_cli::run(cli.client, command, Cli::command),
    }
}

/// Configuration errors stop the server with one line and exit status 2.
fn config_error(error: &ConfigError) -> ExitCode {
    eprintln!("voltrun: {error}");
    ExitCode::from(2)
}

/// `voltrun server` and `voltrun migrate`: both need the server's settings, the client does not.
fn server(args: SettingsArgs, migrate_only: bool) -> ExitCode {
    let settings = match Settings::from_args(args, &startup::read_host()) {
        Ok(settings) => settings,
        Err(e) => return config_error(&e),
    };
    // `migrate` on a fresh development install makes the data directory (where the default SQLite
    // database goes) and its secrets, as `server` does; both report a damaged secret file alike.
    if migrate_only && let Err(e) = startup::secrets(&settings) {
        return config_error(&e);
    }
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
    match result.map_err(anyhow::Error::downcast::<ConfigError>) {
        Ok(()) => ExitCode::SUCCESS,
        // From `Application::build`'s first step, the development secrets (see `startup::secrets`).
        Err(Ok(e)) => config_error(&e),
        Err(Err(e)) => {
            tracing::error!(error = format!("{e:#}"), "voltrun stopped with an error");
            eprintln!("voltrun: {e:#}");
            ExitCode::FAILURE
        }
    }
}
