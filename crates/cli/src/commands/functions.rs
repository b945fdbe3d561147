//! `voltrun functions init|list|get|delete`, and turning a function's name into its id.

use std::path::PathBuf;

use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use crate::Context;
use crate::api::{Function, is_id};
use crate::client::{Api, Body};
use crate::error::{CliError, CliResult, Exit};
use crate::output::{Cell, human_bytes, short_time};

#[derive(Debug, Subcommand)]
pub enum FunctionsCommand {
    /// Scaffold a function directory: handler, sample event.json, voltrun.toml, .voltrunignore
    Init {
        /// The function's name: lower-case letters, digits and hyphens
        name: String,
        /// Runtime id, e.g. python3.12, nodejs20 or provided; the template follows its family
        #[arg(long, short)]
        runtime: String,
        /// Directory to create [default: ./NAME]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// List your functions
    #[command(visible_alias = "ls")]
    List,
    /// Show one function
    Get {
        /// Name or id
        function: String,
    },
    /// Delete a function (its executions go with it)
    #[command(visible_alias = "rm")]
    Delete {
        /// Name or id
        function: String,
    },
}

pub async fn run(context: &Context, command: FunctionsCommand) -> CliResult<Exit> {
    match command {
        FunctionsCommand::Init { name, runtime, dir } => {
            super::init::run(context, &name, &runtime, dir)
        }
        FunctionsCommand::List => list(context).await,
        FunctionsCommand::Get { function } => get(context, &function).await,
        FunctionsCommand::Delete { function } => delete(context, &function).await,
    }
}

/// Finds one of the caller's functions by name; `None` when there is none.
pub async fn find_by_name(api: &mut Api, name: &str) -> CliResult<Option<Function>> {
    let functions: Vec<Function> = api.list_all("/api/functions").await.map_err(|e| match e {
        CliError::Api(mut failure) if failure.code == "insufficient_scope" => {
            failure.hint = Some(
                "an execute-only API key cannot look functions up by name: give the function's id"
                    .into(),
            );
            CliError::Api(failure)
        }
        other => other,
    })?;
    Ok(functions.into_iter().find(|f| f.name == name))
}

/// The id of a function given by name or id. An id is used as it is (the server says whether it
/// exists); a name is looked up.
pub async fn resolve(api: &mut Api, name_or_id: &str) -> CliResult<String> {
    if is_id(name_or_id) {
        return Ok(name_or_id.to_string());
    }
    match find_by_name(api, name_or_id).await? {
        Some(f) => Ok(f.id),
        None => Err(CliError::NotFound(format!(
            "no function named {name_or_id:?} on {}",
            api.server()
        ))),
    }
}

async fn list(context: &Context) -> CliResult<Exit> {
    let mut api = context.api()?;
    let functions: Vec<serde_json::Value> = api.list_all("/api/functions").await?;
    if context.out.json_mode() {
        context.out.json(&serde_json::Value::Array(functions));
        return Ok(Exit::Success);
    }
    let functions: Vec<Function> = functions
        .iter()
        .map(|v| serde_json::from_value(v.clone()))
        .collect::<Result<_, _>>()
        .map_err(|e| api.bad_response(e))?;
    if functions.is_empty() {
        context.out.note(
            "No functions yet: create one with `voltrun functions init NAME --runtime RUNTIME` and `voltrun deploy NAME`",
        );
        return Ok(Exit::Success);
    }
    let rows: Vec<Vec<Cell>> = functions
        .into_iter()
        .map(|f| {
            vec![
                f.name.into(),
                f.runtime.into(),
                f.version.to_string().into(),
                format!("{} MB", f.memory_mb).into(),
                format!("{} s", f.timeout_s).into(),
                short_time(&f.updated_at).into(),
                f.id.into(),
            ]
        })
        .collect();
    context.out.table(
        &[
            "NAME", "RUNTIME", "VERSION", "MEMORY", "TIMEOUT", "UPDATED", "ID",
        ],
        &rows,
    );
    Ok(Exit::Success)
}

async fn get(context: &Context, name_or_id: &str) -> CliResult<Exit> {
    let mut api = context.api()?;
    let id = resolve(&mut api, name_or_id).await?;
    let (f, raw): (Function, _) = api.get(&format!("/api/functions/{id}")).await?;
    if context.out.json_mode() {
        context.out.json(&raw);
        return Ok(Exit::Success);
    }
    show_function(context, &f);
    Ok(Exit::Success)
}

pub fn show_function(context: &Context, f: &Function) {
    let env = match &f.env {
        Some(env) if !env.is_empty() => env.keys().cloned().collect::<Vec<_>>().join(", "),
        Some(_) => "-".to_string(),
        None => "?".to_string(),
    };
    let mut rows: Vec<(&str, Cell)> = vec![
        ("Name", f.name.as_str().into()),
        ("ID", f.id.as_str().into()),
        ("Runtime", f.runtime.as_str().into()),
        ("Handler", f.handler.as_str().into()),
        ("Memory", format!("{} MB", f.memory_mb).into()),
        ("Timeout", format!("{} s", f.timeout_s).into()),
        ("Version", f.version.to_string().into()),
        (
            "Code",
            format!(
                "{} {} (sha256 {})",
                f.code_kind,
                human_bytes(f.code_size_bytes.max(0) as u64),
                f.code_sha256.get(..12).unwrap_or(&f.code_sha256)
            )
            .into(),
        ),
        ("Env", env.into()),
        ("Created", short_time(&f.created_at).into()),
        ("Updated", short_time(&f.updated_at).into()),
    ];
    if let Some(retries) = f.max_retries {
        rows.insert(6, ("Max retries", retries.to_string().into()));
    }
    if !f.description.is_empty() {
        rows.insert(1, ("Description", f.description.as_str().into()));
    }
    context.out.fields(&rows);
}

async fn delete(context: &Context, name_or_id: &str) -> CliResult<Exit> {
    let mut api = context.api()?;
    let id = resolve(&mut api, name_or_id).await?;
    api.send(
        Method::DELETE,
        &format!("/api/functions/{id}"),
        &[],
        Body::Empty,
    )
    .await?;
    if context.out.json_mode() {
        context.out.json(&json!({ "deleted": id }));
    } else {
        context
            .out
            .line(&format!("Deleted function {name_or_id} ({id})"));
    }
    Ok(Exit::Success)
}
