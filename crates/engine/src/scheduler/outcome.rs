//! How an invocation ended, as its record says it: the status, output and error (Lambda's error
//! types) from what the runtime or the backend reported, and Lambda's `START` / `END` / `REPORT`
//! lines around what the function wrote. Pure functions, tested here.

use std::time::Duration;

use chrono::{DateTime, Utc};
use voltrun_domain::execution::{
    ExecutionError, ExecutionOutcome, ExecutionStatus, LogLine, LogStream,
};
use voltrun_domain::function::FunctionRecord;

use crate::InvocationResult;
use crate::isolation::Failure;
use crate::runtime_api::RuntimeReply;

/// How a cold start's instance became ready, for its first invocation's report.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Init {
    pub duration: Duration,
    /// Restored from a snapshot of an initialised instance rather than initialised.
    pub restored: bool,
}

/// What ran an invocation that ran.
#[derive(Debug)]
pub(crate) struct Ran {
    pub duration: Duration,
    pub memory_peak_mb: Option<i64>,
    pub instance_id: String,
}

/// How an invocation ended, for its record.
#[derive(Debug)]
pub(crate) struct Ended {
    pub request_id: String,
    pub started_at: DateTime<Utc>,
    /// Lambda's `START` line, then what the function wrote.
    pub logs: Vec<LogLine>,
    pub result: Result<RuntimeReply, Failure>,
    pub init: Option<Init>,
    pub cold: bool,
    /// `None` for an invocation whose instance never started: its duration is then `waited`.
    pub ran: Option<Ran>,
    /// How long since the invocation was taken.
    pub waited: Duration,
}

/// Lambda's `START` line.
pub(crate) fn start_line(request_id: &str, version: i64) -> LogLine {
    platform_line(format!("START RequestId: {request_id} Version: {version}"))
}

/// The record of an invocation that ended on `node` at `finished_at`: its outcome, and its log
/// lines closed with the error line (if any), `END` and `REPORT`.
pub(crate) fn finish(
    function: &FunctionRecord,
    ended: Ended,
    node: &str,
    finished_at: DateTime<Utc>,
) -> InvocationResult {
    let Ended {
        request_id,
        started_at,
        mut logs,
        result,
        init,
        cold,
        ran,
        waited,
    } = ended;
    let (status, output, error) = classify(result, function);
    let Ran {
        duration,
        memory_peak_mb,
        instance_id,
    } = ran.unwrap_or(Ran {
        duration: waited,
        memory_peak_mb: None,
        instance_id: String::new(),
    });
    if let Some(error) = &error {
        logs.push(LogLine {
            timestamp: Utc::now(),
            stream: LogStream::Stderr,
            line: format!("[ERROR] {}: {}", error.error_type, error.message),
        });
    }
    logs.push(platform_line(format!("END RequestId: {request_id}")));
    logs.push(platform_line(report_line(
        &request_id,
        duration,
        function.memory_mb,
        memory_peak_mb,
        init,
    )));
    InvocationResult {
        outcome: ExecutionOutcome {
            status,
            output,
            error,
            started_at,
            finished_at,
            duration_ms: millis(duration),
            init_duration_ms: init.map(|i| millis(i.duration)),
            memory_peak_mb,
            cold_start: cold,
            node: node.to_string(),
            instance_id,
        },
        logs,
    }
}

fn millis(duration: Duration) -> i64 {
    duration.as_millis().try_into().unwrap_or(i64::MAX)
}

/// Lambda's `REPORT` line: the duration, the billed duration (whole milliseconds, rounded up), the
/// memory size and peak, and for a cold start its init duration (`Restore Duration` for an
/// instance restored from a snapshot, as SnapStart reports it).
pub(crate) fn report_line(
    request_id: &str,
    duration: Duration,
    memory_mb: i32,
    peak_mb: Option<i64>,
    init: Option<Init>,
) -> String {
    let duration_ms = duration.as_secs_f64() * 1000.0;
    let mut report = format!(
        "REPORT RequestId: {request_id}\tDuration: {duration_ms:.2} ms\tBilled Duration: {} ms\tMemory Size: {memory_mb} MB\tMax Memory Used: {} MB",
        duration_ms.ceil() as u64,
        peak_mb.unwrap_or(0)
    );
    if let Some(init) = init {
        let label = if init.restored {
            "Restore Duration"
        } else {
            "Init Duration"
        };
        report.push_str(&format!(
            "\t{label}: {:.2} ms",
            init.duration.as_secs_f64() * 1000.0
        ));
    }
    report
}

fn platform_line(text: String) -> LogLine {
    LogLine {
        timestamp: Utc::now(),
        stream: LogStream::Stdout,
        line: text,
    }
}

fn platform_error(error_type: &str, message: impl Into<String>) -> ExecutionError {
    ExecutionError {
        error_type: error_type.into(),
        message: message.into(),
    }
}

/// An error a runtime reported (at start or for an invocation): Lambda's own types (`Runtime.*`,
/// `Function.*`) as they are; an exception's class (`ValueError`) as `Runtime.Unhandled` with the
/// class before the message, as Lambda shows a function's unhandled error (no class: the message
/// alone).
fn function_error(error_type: &str, message: String) -> ExecutionError {
    if error_type.starts_with("Runtime.") || error_type.starts_with("Function.") {
        platform_error(error_type, message)
    } else if error_type.is_empty() {
        platform_error("Runtime.Unhandled", message)
    } else {
        platform_error("Runtime.Unhandled", format!("{error_type}: {message}"))
    }
}

/// Maps how an invocation ended to the execution's status, output and error.
fn classify(
    result: Result<RuntimeReply, Failure>,
    function: &FunctionRecord,
) -> (
    ExecutionStatus,
    Option<serde_json::Value>,
    Option<ExecutionError>,
) {
    let failed = |error| (ExecutionStatus::Failed, None, Some(error));
    match result {
        Ok(RuntimeReply::Response(bytes)) => {
            // Lambda returns whatever bytes the function produced; a record keeps JSON, so non-JSON
            // output is kept as a string.
            let output = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
            });
            (ExecutionStatus::Succeeded, Some(output), None)
        }
        Ok(RuntimeReply::Error {
            error_type,
            message,
        }) => failed(function_error(&error_type, message)),
        Ok(RuntimeReply::ResponseTooLarge(size)) => failed(platform_error(
            "Function.ResponseSizeTooLarge",
            format!(
                "response payload of {size} bytes exceeds the limit of {} bytes",
                crate::runtime_api::MAX_RESPONSE_BYTES
            ),
        )),
        Err(Failure::Init(init)) => failed(function_error(&init.error_type, init.message)),
        Err(Failure::Exited {
            out_of_memory: true,
            ..
        }) => failed(platform_error(
            "Runtime.OutOfMemory",
            format!(
                "the function ran out of memory (limit {} MB)",
                function.memory_mb
            ),
        )),
        Err(Failure::Exited { status, .. }) => failed(platform_error(
            "Runtime.ExitError",
            format!("the runtime exited: {status}"),
        )),
        Err(Failure::TimedOut) => (
            ExecutionStatus::TimedOut,
            None,
            Some(platform_error(
                "Sandbox.Timedout",
                format!("task timed out after {} seconds", function.timeout_s),
            )),
        ),
        Err(Failure::Sandbox(message)) => failed(platform_error("Platform.SandboxError", message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;

    #[test]
    fn the_report_line_is_lambdas() {
        assert_eq!(
            report_line("r-1", Duration::from_micros(12_345), 256, Some(31), None),
            "REPORT RequestId: r-1\tDuration: 12.35 ms\tBilled Duration: 13 ms\tMemory Size: 256 MB\tMax Memory Used: 31 MB"
        );
        let cold = Init {
            duration: Duration::from_millis(80),
            restored: false,
        };
        assert!(
            report_line("r-2", Duration::from_millis(2), 128, None, Some(cold))
                .ends_with("\tBilled Duration: 2 ms\tMemory Size: 128 MB\tMax Memory Used: 0 MB\tInit Duration: 80.00 ms")
        );
        let restored = Init {
            restored: true,
            ..cold
        };
        assert!(
            report_line("r-3", Duration::from_millis(2), 128, None, Some(restored))
                .ends_with("\tRestore Duration: 80.00 ms")
        );
    }

    #[test]
    fn a_runtimes_error_keeps_lambdas_types_and_names_an_exceptions_class() {
        let shown = |t: &str, m: &str| {
            let e = function_error(t, m.to_string());
            (e.error_type, e.message)
        };
        assert_eq!(
            shown("Runtime.ImportModuleError", "no module"),
            ("Runtime.ImportModuleError".into(), "no module".into())
        );
        assert_eq!(
            shown("Function.ResponseSizeTooLarge", "big"),
            ("Function.ResponseSizeTooLarge".into(), "big".into())
        );
        assert_eq!(
            shown("ValueError", "at import"),
            ("Runtime.Unhandled".into(), "ValueError: at import".into())
        );
        assert_eq!(
            shown("", "no class"),
            ("Runtime.Unhandled".into(), "no class".into())
        );
    }

    #[test]
    fn each_way_an_invocation_ends_has_its_status_and_lambdas_error_type() {
        let function = crate::test_function("python3.11");
        let outcome = |result| {
            let (status, output, error) = classify(result, &function);
            (status, output, error.map(|e| (e.error_type, e.message)))
        };
        let response = |bytes: &'static [u8]| Ok(RuntimeReply::Response(Bytes::from(bytes)));
        assert_eq!(
            outcome(response(br#"{"n":1}"#)),
            (
                ExecutionStatus::Succeeded,
                Some(serde_json::json!({"n": 1})),
                None
            )
        );
        assert_eq!(
            outcome(response(b"plain text")).1,
            Some(serde_json::json!("plain text")),
            "output that is not JSON is kept as a string"
        );
        let error_type = |result| outcome(result).2.map(|(t, _)| t);
        assert_eq!(
            error_type(Ok(RuntimeReply::ResponseTooLarge(7_000_000))).as_deref(),
            Some("Function.ResponseSizeTooLarge")
        );
        assert_eq!(
            outcome(Err(Failure::Exited {
                status: "signal: 9".into(),
                out_of_memory: true
            })),
            (
                ExecutionStatus::Failed,
                None,
                Some((
                    "Runtime.OutOfMemory".into(),
                    "the function ran out of memory (limit 128 MB)".into()
                ))
            )
        );
        assert_eq!(
            outcome(Err(Failure::Exited {
                status: "exit status: 3".into(),
                out_of_memory: false
            }))
            .2,
            Some((
                "Runtime.ExitError".into(),
                "the runtime exited: exit status: 3".into()
            ))
        );
        assert_eq!(
            outcome(Err(Failure::TimedOut)),
            (
                ExecutionStatus::TimedOut,
                None,
                Some((
                    "Sandbox.Timedout".into(),
                    "task timed out after 3 seconds".into()
                ))
            )
        );
        assert_eq!(
            error_type(Err(Failure::Sandbox("no uid".into()))).as_deref(),
            Some("Platform.SandboxError")
        );
        assert_eq!(
            outcome(Err(Failure::Init(crate::runtime_api::InitFailure {
                error_type: "Runtime.ImportModuleError".into(),
                message: "No module named 'app'".into(),
            }))),
            (
                ExecutionStatus::Failed,
                None,
                Some((
                    "Runtime.ImportModuleError".into(),
                    "No module named 'app'".into()
                ))
            )
        );
        assert_eq!(
            outcome(Ok(RuntimeReply::Error {
                error_type: "ValueError".into(),
                message: "bad".into(),
            })),
            (
                ExecutionStatus::Failed,
                None,
                Some(("Runtime.Unhandled".into(), "ValueError: bad".into()))
            )
        );
    }

    #[test]
    fn a_record_ends_with_the_error_end_and_report_lines() {
        let function = crate::test_function("python3.11");
        let ended = |result, ran| Ended {
            request_id: "r-1".into(),
            started_at: Utc::now(),
            logs: vec![start_line("r-1", 4)],
            result,
            init: None,
            cold: true,
            ran,
            waited: Duration::from_millis(40),
        };
        let lines = |r: &InvocationResult| -> Vec<String> {
            r.logs.iter().map(|l| l.line.clone()).collect()
        };

        let never_started = finish(
            &function,
            ended(Err(Failure::TimedOut), None),
            "node-a",
            Utc::now(),
        );
        let shown = lines(&never_started);
        assert_eq!(shown[0], "START RequestId: r-1 Version: 4");
        assert_eq!(
            shown[1],
            "[ERROR] Sandbox.Timedout: task timed out after 3 seconds"
        );
        assert_eq!(shown[2], "END RequestId: r-1");
        assert!(shown[3].starts_with("REPORT RequestId: r-1\tDuration: 40.00 ms"));
        assert_eq!(never_started.outcome.duration_ms, 40);
        assert_eq!(never_started.outcome.node, "node-a");
        assert!(never_started.outcome.instance_id.is_empty());

        let ran = Ran {
            duration: Duration::from_millis(7),
            memory_peak_mb: Some(20),
            instance_id: "i-1".into(),
        };
        let succeeded = finish(
            &function,
            ended(Ok(RuntimeReply::Response(Bytes::from("1"))), Some(ran)),
            "node-a",
            Utc::now(),
        );
        assert_eq!(lines(&succeeded).len(), 3, "no error line");
        assert_eq!(
            (
                succeeded.outcome.duration_ms,
                succeeded.outcome.memory_peak_mb,
                succeeded.outcome.instance_id.as_str()
            ),
            (7, Some(20), "i-1")
        );
    }
}
