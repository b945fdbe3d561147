//! `voltrun executions list|get` and `voltrun logs ID [--follow]`.

use std::collections::HashMap;
use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;

use crate::Context;
use crate::api::{Execution, Function, Page};
use crate::client::{Api, Body};
use crate::error::{CliError, CliResult, Exit};
use crate::output::{Cell, or_dash, short_time, status_cell};

const STATUSES: [&str; 6] = [
    "queued",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
];

#[derive(Debug, Subcommand)]
pub enum ExecutionsCommand {
    /// List executions, newest first
    #[command(visible_alias = "ls")]
    List {
        /// Only executions of this function (name or id)
        #[arg(long, short)]
        function: Option<String>,
        /// Only executions in this status
        #[arg(long, short, value_parser = STATUSES)]
        status: Option<String>,
        /// How many, 1 to 100
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: u32,
        /// Continue a previous listing (the cursor it printed)
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one execution
    Get {
        /// Execution id
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Execution id
    pub id: String,
    /// Keep printing new lines until the execution finishes (succeeded, failed, timed_out or cancelled)
    #[arg(long, short)]
    pub follow: bool,
    /// Seconds between polls with --follow
    #[arg(long, default_value_t = 1.0, hide = true)]
    pub interval: f64,
}

pub async fn run(context: &Context, command: ExecutionsCommand) -> CliResult<Exit> {
    match command {
        ExecutionsCommand::List {
            function,
            status,
            limit,
            cursor,
        } => list(context, function, status, limit, cursor).await,
        ExecutionsCommand::Get { id } => get(context, &id).await,
    }
}

/// Checks an execution id locally: anything else would be the server's `not_found` after a trip.
fn check_id(id: &str) -> CliResult<()> {
    if crate::api::is_id(id) {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "{id:?} is not an execution id (a UUID, as `voltrun executions list` shows)"
        )))
    }
}

/// Function names by id, for tables; empty when the credential may not list functions.
async fn function_names(api: &mut Api) -> HashMap<String, String> {
    api.list_all::<Function>("/api/functions")
        .await
        .map(|fs| fs.into_iter().map(|f| (f.id, f.name)).collect())
        .unwrap_or_default()
}

fn duration(ms: Option<i64>) -> String {
    or_dash(ms.map(|ms| format!("{ms} ms")))
}

async fn list(
    context: &Context,
    function: Option<String>,
    status: Option<String>,
    limit: u32,
    cursor: Option<String>,
) -> CliResult<Exit> {
    let mut api = context.api()?;
    let mut query = vec![("limit", limit.to_string())];
    if let Some(function) = function {
        query.push((
            "function_id",
            super::functions::resolve(&mut api, &function).await?,
        ));
    }
    if let Some(status) = status {
        query.push(("status", status));
    }
    if let Some(cursor) = cursor {
        query.push(("cursor", cursor));
    }
    let (page, raw): (Page<Value>, _) = api.get_query("/api/executions", &query).await?;
    if context.out.json_mode() {
        context.out.json(&raw);
        return Ok(Exit::Success);
    }
    let executions: Vec<Execution> = page
        .data
        .iter()
        .map(Execution::from_value)
        .collect::<Result<_, _>>()
        .map_err(|e| api.bad_response(e))?;
    if executions.is_empty() {
        context.out.note("No executions");
        return Ok(Exit::Success);
    }
    let names = function_names(&mut api).await;
    let rows: Vec<Vec<Cell>> = executions
        .into_iter()
        .map(|e| {
            let function = names.get(&e.function_id).cloned().unwrap_or(e.function_id);
            vec![
                e.id.into(),
                function.into(),
                status_cell(&e.status_text),
                e.invocation_type.into(),
                duration(e.duration_ms).into(),
                short_time(&e.created_at).into(),
            ]
        })
        .collect();
    context.out.table(
        &["ID", "FUNCTION", "STATUS", "TYPE", "DURATION", "CREATED"],
        &rows,
    );
    if let Some(next) = page.next_cursor {
        context
            .out
            .note(&format!("More: voltrun executions list --cursor {next}"));
    }
    Ok(Exit::Success)
}

async fn get(context: &Context, id: &str) -> CliResult<Exit> {
    check_id(id)?;
    let mut api = context.api()?;
    let (raw, _): (Value, _) = api.get(&format!("/api/executions/{id}")).await?;
    if context.out.json_mode() {
        context.out.json(&raw);
        return Ok(Exit::Success);
    }
    let e = Execution::from_value(&raw).map_err(|e| api.bad_response(e))?;
    let names = function_names(&mut api).await;
    let function = match names.get(&e.function_id) {
        Some(name) => format!("{name} ({})", e.function_id),
        None => e.function_id.clone(),
    };
    let compact = |v: &Value| v.to_string();
    let mut rows: Vec<(&str, Cell)> = vec![
        ("ID", e.id.as_str().into()),
        ("Function", function.into()),
        ("Version", e.function_version.to_string().into()),
        ("Status", status_cell(&e.status_text)),
        ("Type", e.invocation_type.as_str().into()),
        ("Created", short_time(&e.created_at).into()),
        (
            "Started",
            or_dash(e.started_at.as_deref().map(short_time)).into(),
        ),
        (
            "Finished",
            or_dash(e.finished_at.as_deref().map(short_time)).into(),
        ),
        ("Duration", duration(e.duration_ms).into()),
        ("Init", duration(e.init_duration_ms).into()),
        (
            "Memory peak",
            or_dash(e.memory_peak_mb.map(|mb| format!("{mb} MB"))).into(),
        ),
        (
            "Cold start",
            or_dash(
                e.cold_start
                    .map(|c| if c { "yes" } else { "no" }.to_string()),
            )
            .into(),
        ),
        ("Node", or_dash(e.node.clone()).into()),
        ("Input", compact(&e.input).into()),
        ("Output", or_dash(e.output.as_ref().map(compact)).into()),
    ];
    if let Some(error) = &e.error {
        rows.push((
            "Error",
            Cell::painted(
                format!("{}: {}", error.error_type, error.message),
                crate::output::Paint::Red,
            ),
        ));
    }
    if e.logs_truncated {
        rows.push(("Logs", "truncated".into()));
    }
    context.out.fields(&rows);
    Ok(Exit::Success)
}

async fn fetch_text_logs(api: &mut Api, id: &str) -> CliResult<String> {
    let reply = api
        .send(
            Method::GET,
            &format!("/api/executions/{id}/logs"),
            &[("format", "text".to_string())],
            Body::Empty,
        )
        .await?;
    Ok(String::from_utf8_lossy(&reply.body).into_owned())
}

pub async fn logs(context: &Context, args: LogsArgs) -> CliResult<Exit> {
    check_id(&args.id)?;
    if !(args.interval.is_finite() && args.interval > 0.0) {
        return Err(CliError::Usage(
            "--interval must be a positive number".into(),
        ));
    }
    let mut api = context.api()?;
    if args.follow {
        // Wait for the end first in JSON mode: a document is printed once, whole.
        let interval = Duration::from_secs_f64(args.interval);
        let mut printed = 0usize;
        loop {
            // The status is read before the logs, so logs fetched after a terminal status are complete.
            let (execution, _): (Value, _) =
                api.get(&format!("/api/executions/{}", args.id)).await?;
            let execution = Execution::from_value(&execution).map_err(|e| api.bad_response(e))?;
            let finished = execution.status.is_terminal();
            if !context.out.json_mode() {
                let text = fetch_text_logs(&mut api, &args.id).await?;
                // The server keeps lines in order and only appends, so new lines follow the printed ones.
                if text.len() > printed {
                    context.out.write(text.get(printed..).unwrap_or_default());
                    printed = text.len();
                }
            }
            if finished {
                if !context.out.json_mode() {
                    context.out.note(&format!(
                        "Execution {} {}",
                        execution.id, execution.status_text
                    ));
                }
                break;
            }
            tokio::time::sleep(interval).await;
        }
        if !context.out.json_mode() {
            return Ok(Exit::Success);
        }
    }
    if context.out.json_mode() {
        let (raw, _): (Value, _) = api
            .get_query(
                &format!("/api/executions/{}/logs", args.id),
                &[("format", "json".to_string())],
            )
            .await?;
        context.out.json(&raw);
    } else {
        context
            .out
            .write(&fetch_text_logs(&mut api, &args.id).await?);
    }
    Ok(Exit::Success)
}
