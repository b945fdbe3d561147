//! What can go wrong in a client command, how it reads (one line), and the exit code it ends the
//! process with.

use std::fmt;
use std::process::ExitCode;

/// How a client command ends. The numbers are part of the CLI's interface (see [`EXIT_CODES_HELP`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success,
    /// `invoke`: the function ran and failed (status `failed` or `cancelled`).
    FunctionFailed,
    /// `invoke`: the function ran past its timeout (status `timed_out`).
    FunctionTimedOut,
    /// The server answered with an error, could not be reached, or what was named does not exist.
    RequestFailed,
    /// Bad arguments or local configuration: flags, `voltrun.toml`, input files, missing login.
    Usage,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::FunctionFailed => 1,
            Self::FunctionTimedOut => 2,
            Self::RequestFailed => 3,
            Self::Usage => 64,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

/// The exit codes, for `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes of the client commands:
  0   success
  1   invoke: the function failed (status failed or cancelled)
  2   invoke: the function timed out (status timed_out)
  3   the server answered with an error (e.g. engine_unavailable, not_found), could not be reached,
      or the function, execution or key named does not exist
  64  usage or configuration error: bad arguments, invalid voltrun.toml or input, not logged in";

/// An error answered by the server, in the API's format
/// `{"error": {"code", "message", "field"?}, "request_id"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
    /// What the user can do about it, when the client knows better than the server.
    pub hint: Option<String>,
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}", one_line(&self.message), self.code)?;
        match &self.request_id {
            Some(id) => write!(f, ", request id {id})")?,
            None => write!(f, ", HTTP {})", self.status)?,
        }
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiFailure {}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments or input given on the command line.
    #[error("{0}")]
    Usage(String),
    /// A local file or setting is missing or invalid.
    #[error("{0}")]
    Config(String),
    #[error(
        "not logged in to {server}: run `voltrun login --server {server}`, or set VOLTRUN_API_KEY"
    )]
    NotLoggedIn { server: String },
    #[error("the session on {server} has ended ({reason}): run `voltrun login --server {server}`")]
    SessionEnded { server: String, reason: String },
    #[error(transparent)]
    Api(#[from] ApiFailure),
    #[error("cannot reach the VoltRun server at {server}: {cause}")]
    Unreachable { server: String, cause: String },
    #[error("the server at {server} answered with something that is not VoltRun's API: {cause}")]
    BadResponse { server: String, cause: String },
    /// A name that resolves to nothing.
    #[error("{0}")]
    NotFound(String),
}

impl CliError {
    pub fn exit(&self) -> Exit {
        match self {
            Self::Usage(_) | Self::Config(_) | Self::NotLoggedIn { .. } => Exit::Usage,
            Self::SessionEnded { .. }
            | Self::Api(_)
            | Self::Unreachable { .. }
            | Self::BadResponse { .. }
            | Self::NotFound(_) => Exit::RequestFailed,
        }
    }

    /// The whole message on one line: every error is printed as exactly one line.
    pub fn line(&self) -> String {
        one_line(&self.to_string())
    }
}

pub type CliResult<T> = Result<T, CliError>;

/// Collapses whitespace runs (newlines included) to single spaces.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_failures_read_as_one_line_with_code_and_request_id() {
        let failure = ApiFailure {
            status: 503,
            code: "engine_unavailable".into(),
            message: "functions cannot run\non this server".into(),
            request_id: Some("0190-abc".into()),
            hint: None,
        };
        assert_eq!(
            CliError::from(failure).line(),
            "functions cannot run on this server (engine_unavailable, request id 0190-abc)"
        );
    }

    #[test]
    fn exit_codes_are_distinct() {
        let codes = [
            Exit::Success,
            Exit::FunctionFailed,
            Exit::FunctionTimedOut,
            Exit::RequestFailed,
            Exit::Usage,
        ]
        .map(Exit::code);
        let mut sorted = codes.to_vec();
        sorted.dedup();
        assert_eq!(sorted.len(), codes.len());
        assert_eq!(
            CliError::NotLoggedIn { server: "x".into() }.exit(),
            Exit::Usage
        );
    }
}
