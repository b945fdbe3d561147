//! `voltrun invoke NAME`: sends a JSON event to `POST /api/functions/{id}/execute` and reports the
//! execution. The function's output goes to stdout (pretty JSON on a terminal, compact when piped);
//! its logs (`--logs`) and any failure go to stderr, so stdout is only ever the output. The exit
//! code tells how it ended (see [`crate::error::Exit`]).

use std::io::{IsTerminal, Read};

use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};

use crate::Context;
use crate::api::{Execution, ExecutionStatus, Queued};
use crate::client::{Api, Body};
use crate::error::{CliError, CliResult, Exit};

#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// Name or id of the function
    pub function: String,
    /// The event: JSON text, or @FILE to read it from a file [default: stdin when it is not a
    /// terminal, else {}]
    #[arg(long, short)]
    pub data: Option<String>,
    /// Queue the invocation and print the execution id instead of waiting
    #[arg(long = "async")]
    pub run_async: bool,
    /// Print the execution's logs to stderr
    #[arg(long, conflicts_with = "run_async")]
    pub logs: bool,
}

/// The event to send, checked to be JSON before anything is sent.
fn read_event(data: Option<&str>) -> CliResult<Value> {
    let (text, source) = match data {
        Some(file) if file.starts_with('@') => {
            let path = &file[1..];
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::Usage(format!("cannot read --data file {path}: {e}")))?;
            (text, path.to_string())
        }
        Some(text) => (text.to_string(), "--data".to_string()),
        None if !std::io::stdin().is_terminal() => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| CliError::Usage(format!("cannot read the event from stdin: {e}")))?;
            (text, "stdin".to_string())
        }
        None => (String::new(), String::new()),
    };
    if text.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("the event from {source} is not valid JSON: {e}")))
}

pub async fn run(context: &Context, args: InvokeArgs) -> CliResult<Exit> {
    let event = read_event(args.data.as_deref())?;
    let mut api = context.api()?;
    let id = super::functions::resolve(&mut api, &args.function).await?;
    let query = if args.run_async {
        vec![("async", "true".to_string())]
    } else {
        Vec::new()
    };
    let reply = api
        .send(
            Method::POST,
            &format!("/api/functions/{id}/execute"),
            &query,
            Body::json(&event),
        )
        .await?;
    if args.run_async {
        let (queued, raw): (Queued, _) = api.decode(&reply)?;
        if context.out.json_mode() {
            context.out.json(&raw);
        } else {
            context.out.line(&queued.execution_id);
            context.out.note(&format!(
                "Queued ({}): follow it with `voltrun logs {} --follow`",
                queued.status, queued.execution_id
            ));
        }
        return Ok(Exit::Success);
    }
    let raw: Value = api.decode::<Value>(&reply)?.0;
    let execution = Execution::from_value(&raw).map_err(|e| api.bad_response(e))?;
    if args.logs {
        print_logs(context, &mut api, &execution.id).await;
    }
    if context.out.json_mode() {
        context.out.json(&raw);
    } else if execution.status == ExecutionStatus::Succeeded {
        context
            .out
            .json_data(execution.output.as_ref().unwrap_or(&Value::Null));
    }
    let (exit, problem) = outcome(&execution);
    if let Some(problem) = problem {
        context.out.error_line(&problem);
    }
    Ok(exit)
}

/// Logs go to stderr; failing to fetch them does not change how the invocation ended.
async fn print_logs(context: &Context, api: &mut Api, execution_id: &str) {
    let fetched = api
        .send(
            Method::GET,
            &format!("/api/executions/{execution_id}/logs"),
            &[("format", "text".to_string())],
            Body::Empty,
        )
        .await;
    match fetched {
        Ok(reply) => context
            .out
            .stderr_text(&String::from_utf8_lossy(&reply.body)),
        Err(e) => context
            .out
            .warn(&format!("cannot fetch the logs: {}", e.line())),
    }
}

/// How a finished execution ends the command: its exit code and, unless it succeeded, one line
/// saying why.
pub fn outcome(execution: &Execution) -> (Exit, Option<String>) {
    let reason = || {
        execution
            .error
            .as_ref()
            .map(|e| format!(": {}: {}", e.error_type, e.message))
            .unwrap_or_default()
    };
    let id = &execution.id;
    match execution.status {
        ExecutionStatus::Succeeded => (Exit::Success, None),
        ExecutionStatus::Failed => (
            Exit::FunctionFailed,
            Some(format!("the function failed{} (execution {id})", reason())),
        ),
        ExecutionStatus::TimedOut => (
            Exit::FunctionTimedOut,
            Some(format!(
                "the function timed out{} (execution {id})",
                reason()
            )),
        ),
        ExecutionStatus::Cancelled => (
            Exit::FunctionFailed,
            Some(format!(
                "the execution was cancelled{} (execution {id})",
                reason()
            )),
        ),
        ExecutionStatus::Queued | ExecutionStatus::Running | ExecutionStatus::Other => (
            Exit::RequestFailed,
            Some(format!(
                "the server answered with the execution still {} (execution {id}); follow it with `voltrun logs {id} --follow`",
                execution.status_text
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn execution(status: &str, error: Value) -> Execution {
        Execution::from_value(&json!({
            "id": "0190", "function_id": "0191", "function_version": 1, "status": status,
            "invocation_type": "sync", "input": {}, "output": {"ok": true}, "error": error,
            "created_at": "2025-01-01T00:00:00Z", "logs_truncated": false
        }))
        .unwrap()
    }

    #[test]
    fn each_terminal_status_has_its_exit_code() {
        assert_eq!(
            outcome(&execution("succeeded", Value::Null)),
            (Exit::Success, None)
        );
        let (exit, line) = outcome(&execution(
            "failed",
            json!({"type": "Runtime.Unhandled", "message": "boom"}),
        ));
        assert_eq!(exit, Exit::FunctionFailed);
        assert_eq!(
            line.unwrap(),
            "the function failed: Runtime.Unhandled: boom (execution 0190)"
        );
        let (exit, line) = outcome(&execution(
            "timed_out",
            json!({"type": "Sandbox.Timedout", "message": "after 3 s"}),
        ));
        assert_eq!(exit, Exit::FunctionTimedOut);
        assert!(line.unwrap().contains("timed out"));
        assert_eq!(
            outcome(&execution("cancelled", Value::Null)).0,
            Exit::FunctionFailed
        );
        assert_eq!(
            outcome(&execution("running", Value::Null)).0,
            Exit::RequestFailed
        );
    }

    #[test]
    fn events_must_be_json() {
        assert_eq!(read_event(Some("{\"a\": 1}")).unwrap(), json!({"a": 1}));
        assert_eq!(read_event(Some("  ")).unwrap(), json!({}));
        assert!(matches!(read_event(Some("{nope")), Err(CliError::Usage(_))));
        assert!(matches!(
            read_event(Some("@/definitely/not/here.json")),
            Err(CliError::Usage(_))
        ));
    }
}
