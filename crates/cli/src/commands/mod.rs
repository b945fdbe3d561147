//! The command groups, one module each, and the dispatch from a parsed [`Command`] to them.

pub mod auth;
pub mod deploy;
pub mod executions;
pub mod functions;
pub mod init;
pub mod invoke;
pub mod keys;
pub mod layers;

use crate::error::{CliResult, Exit};
use crate::{Command, Context};

pub async fn dispatch(
    context: &Context,
    command: Command,
    app: impl FnOnce() -> clap::Command,
) -> CliResult<Exit> {
    match command {
        Command::Login(args) => auth::login(context, args).await,
        Command::Register(args) => auth::register(context, args).await,
        Command::Logout => auth::logout(context).await,
        Command::Whoami => auth::whoami(context).await,
        Command::Functions(command) => functions::run(context, command).await,
        Command::Deploy(args) => deploy::run(context, args).await,
        Command::Invoke(args) => invoke::run(context, args).await,
        Command::Executions(command) => executions::run(context, command).await,
        Command::Logs(args) => executions::logs(context, args).await,
        Command::Keys(command) => keys::run(context, command).await,
        Command::Layers(command) => layers::run(context, command).await,
        Command::Completions { shell } => {
            let mut app = app();
            let mut buffer = Vec::new();
            clap_complete::generate(shell, &mut app, "voltrun", &mut buffer);
            context.out.write(&String::from_utf8_lossy(&buffer));
            Ok(Exit::Success)
        }
    }
}
