//! The `voltrun` command-line client. The same binary that runs the server is the client: the
//! binary parses [`GlobalArgs`] and a [`Command`] and hands them to [`run`]. The client talks to a
//! server over its public REST API only.
//!
//! Modules, one per concern: [`config`] (environment, server URL, credentials file), [`client`]
//! (HTTP, authentication and token refresh, error rendering), [`output`] (tables, JSON, colour),
//! [`error`] (errors and exit codes), [`api`] (response shapes), [`project`] (`voltrun.toml`),
//! [`archive`] (zipping a function directory), and one module per command group in `commands`.

pub mod api;
pub mod archive;
pub mod client;
mod commands;
pub mod config;
pub mod error;
pub mod output;
pub mod project;

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::client::{Api, Credential};
use crate::config::{CredentialStore, DEFAULT_SERVER, Environment, StoredCredential};
use crate::error::{CliError, CliResult, Exit};
use crate::output::Output;

pub use crate::commands::auth::{LoginArgs, RegisterArgs};
pub use crate::commands::deploy::DeployArgs;
pub use crate::commands::executions::{ExecutionsCommand, LogsArgs};
pub use crate::commands::functions::FunctionsCommand;
pub use crate::commands::invoke::InvokeArgs;
pub use crate::commands::keys::KeysCommand;
pub use crate::commands::layers::LayersCommand;
pub use crate::error::EXIT_CODES_HELP;
pub use crate::output::OutputFormat;

/// Text for the end of `voltrun --help`.
pub const AFTER_HELP: &str = "\
Environment of the client commands:
  VOLTRUN_SERVER   the server URL (as --server)
  VOLTRUN_API_KEY  an API key to use instead of stored credentials (for CI)
  XDG_CONFIG_HOME  credentials live in $XDG_CONFIG_HOME/voltrun/ (else ~/.config/voltrun/)
  NO_COLOR         never colour output

Exit codes of the client commands:
  0 success, 1 function failed, 2 function timed out, 3 request failed (server error or
  unreachable), 64 usage or configuration error. See `voltrun invoke --help`.";

/// Flags of every client command.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Server URL [default: the server last logged in to, else http://127.0.0.1:8080]
    #[arg(
        long,
        global = true,
        env = "VOLTRUN_SERVER",
        value_name = "URL",
        help_heading = "Client options"
    )]
    pub server: Option<String>,
    /// How to print results
    #[arg(
        long,
        short = 'o',
        global = true,
        value_enum,
        default_value = "table",
        help_heading = "Client options"
    )]
    pub output: OutputFormat,
    /// Trace requests to stderr: method, URL, status, request id
    #[arg(long, short = 'v', global = true, help_heading = "Client options")]
    pub verbose: bool,
}

/// The client commands, flattened next to the server's own by the binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an account on a server and log in to it
    Register(RegisterArgs),
    /// Log in to a server (email and password, or an API key) and store the credentials
    Login(LoginArgs),
    /// End the session on the server and forget the stored credentials
    Logout,
    /// Show who the stored credentials (or VOLTRUN_API_KEY) belong to
    Whoami,
    /// Create, list, show and delete functions
    #[command(subcommand)]
    Functions(FunctionsCommand),
    /// Deploy a function directory: create the function named in its voltrun.toml, or update it
    Deploy(DeployArgs),
    /// Invoke a function with a JSON event
    #[command(after_help = EXIT_CODES_HELP)]
    Invoke(InvokeArgs),
    /// List and show executions
    #[command(subcommand)]
    Executions(ExecutionsCommand),
    /// Show an execution's logs
    Logs(LogsArgs),
    /// Create, list and delete API keys
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Publish, list and delete layer versions (shared code functions find at /opt)
    #[command(subcommand)]
    Layers(LayersCommand),
    /// Print a shell completion script, e.g. `voltrun completions bash > ~/.local/share/bash-completion/completions/voltrun`
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Runs a client command and returns the process's exit code. `app` builds the whole binary's
/// command line, for completion scripts.
pub fn run(global: GlobalArgs, command: Command, app: impl FnOnce() -> clap::Command) -> ExitCode {
    // Nothing the client does should end in a panic message; if something does, say so in one line.
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".into());
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!(
                "error: internal error in voltrun: {}\n",
                error::one_line(&what)
            )
            .as_bytes(),
        );
    }));
    let env = Environment::capture();
    let context = Context {
        out: Output::new(global.output, env.no_color),
        env,
        global,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            context
                .out
                .error_line(&format!("cannot start the async runtime: {e}"));
            return Exit::Usage.into();
        }
    };
    let result = runtime.block_on(commands::dispatch(&context, command, app));
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            context.out.error(&e);
            e.exit().into()
        }
    }
}

/// Prints a command-line parse error (or `--help`/`--version`) and returns its exit code: 0 for
/// help and version, 64 for a usage error.
pub fn exit_on_parse_error(error: clap::Error) -> ExitCode {
    let _ = error.print();
    if error.use_stderr() {
        Exit::Usage.into()
    } else {
        Exit::Success.into()
    }
}

/// What every command gets: the output, the environment and the global flags.
#[derive(Debug)]
pub(crate) struct Context {
    pub out: Output,
    pub env: Environment,
    pub global: GlobalArgs,
}

impl Context {
    /// The credentials store, from the config directory.
    pub fn store(&self) -> CliResult<CredentialStore> {
        let dir = self.env.config_dir.as_deref().ok_or_else(|| {
            CliError::Config(
                "cannot find a config directory for credentials: set XDG_CONFIG_HOME or HOME"
                    .into(),
            )
        })?;
        let store = CredentialStore::open(dir)?;
        if store.loose_permissions {
            self.out.warn(&format!(
                "{} was readable by other users; its mode is now 0600",
                store.path().display()
            ));
        }
        Ok(store)
    }

    /// The server: `--server`/`VOLTRUN_SERVER`, else the last one logged in to, else the default.
    pub fn server(&self, store: Option<&CredentialStore>) -> CliResult<String> {
        let raw = match &self.global.server {
            Some(flag) => flag.clone(),
            None => store
                .and_then(CredentialStore::default_server)
                .unwrap_or(DEFAULT_SERVER)
                .to_string(),
        };
        config::normalize_server(&raw)
    }

    /// A client without credentials.
    pub fn anonymous(&self, server: String, store: Option<CredentialStore>) -> CliResult<Api> {
        Api::new(
            server,
            Credential::None,
            store,
            self.global.verbose,
            self.out.stderr_is_terminal,
        )
    }

    /// A client with the caller's credentials: `VOLTRUN_API_KEY`, else those stored for the server.
    pub fn api(&self) -> CliResult<Api> {
        if let Some(key) = self.env.api_key.clone() {
            // The environment's key needs no stored state, nor even a config directory.
            let store = self.store().ok();
            let server = self.server(store.as_ref())?;
            return Api::new(
                server,
                Credential::ApiKey {
                    key,
                    from_env: true,
                },
                None,
                self.global.verbose,
                self.out.stderr_is_terminal,
            );
        }
        let store = self.store()?;
        let server = self.server(Some(&store))?;
        let credential = match store.get(&server) {
            Some(StoredCredential::Session {
                email,
                access_token,
                refresh_token,
            }) => Credential::Session {
                email: email.clone(),
                access_token: access_token.clone(),
                refresh_token: refresh_token.clone(),
            },
            Some(StoredCredential::ApiKey { key }) => Credential::ApiKey {
                key: key.clone(),
                from_env: false,
            },
            None => return Err(CliError::NotLoggedIn { server }),
        };
        Api::new(
            server,
            credential,
            Some(store),
            self.global.verbose,
            self.out.stderr_is_terminal,
        )
    }
}
