//! The VM manager's errors. Every failure names the step it happened in (`vm.configure.machine`, …)
//! so that an execution error tells an operator exactly which part of bringing a microVM up failed.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A step of a microVM's life, as named in errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Creating the VM's directory, scratch disk, chroot links or network namespace.
    Prepare,
    /// Starting the Firecracker (or jailer) process.
    Spawn,
    /// Waiting for the API socket to answer.
    ApiReady,
    ConfigureMachine,
    ConfigureBootSource,
    ConfigureDrive,
    ConfigureVsock,
    /// `InstanceStart`.
    Start,
    /// `GET /vm/config` or `GET /`.
    Describe,
    /// Connecting to the guest agent over vsock and waiting for its hello.
    AgentConnect,
    /// Pausing, or resuming, the guest (`PATCH /vm`).
    Pause,
    /// `PUT /snapshot/create`.
    Snapshot,
    /// `PUT /snapshot/load`.
    Restore,
    Stop,
    Cleanup,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Prepare => "vm.prepare",
            Step::Spawn => "vm.spawn",
            Step::ApiReady => "vm.api_ready",
            Step::ConfigureMachine => "vm.configure.machine",
            Step::ConfigureBootSource => "vm.configure.boot_source",
            Step::ConfigureDrive => "vm.configure.drive",
            Step::ConfigureVsock => "vm.configure.vsock",
            Step::Start => "vm.start",
            Step::Describe => "vm.describe",
            Step::AgentConnect => "vm.agent_connect",
            Step::Pause => "vm.pause",
            Step::Snapshot => "vm.snapshot",
            Step::Restore => "vm.restore",
            Step::Stop => "vm.stop",
            Step::Cleanup => "vm.cleanup",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Firecracker refused a request; `fault` is its `fault_message`.
    #[error("{step}: Firecracker answered {status}: {fault}")]
    Api {
        step: Step,
        status: u16,
        fault: String,
    },
    /// The API socket could not be reached or the HTTP exchange broke off.
    #[error("{step}: talking to the Firecracker API failed: {source}")]
    Transport {
        step: Step,
        #[source]
        source: std::io::Error,
    },
    /// Firecracker answered something that is not the JSON its API documents.
    #[error("{step}: unexpected answer from the Firecracker API: {detail}")]
    Protocol { step: Step, detail: String },
    /// `log` is the tail of the VMM's (or the jailer's) output so far.
    #[error(
        "{step}: the Firecracker API did not answer within {waited:?}; its output so far: {log}"
    )]
    ApiTimeout {
        step: Step,
        waited: Duration,
        log: String,
    },
    /// The VMM process exited while the step was in progress; `log` is the tail of its output.
    #[error("{step}: the Firecracker process exited ({status}); its last output: {log}")]
    Exited {
        step: Step,
        status: String,
        log: String,
    },
    #[error("{step}: {what} {}: {source}", path.display())]
    Io {
        step: Step,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A required binary or image is not where the manager looks for it.
    #[error("{what} not found: {hint}")]
    Missing { what: &'static str, hint: String },
    #[error("{step}: invalid VM specification: {detail}")]
    InvalidSpec { step: Step, detail: String },
    /// Another VM manager holds the run directory.
    #[error("the VM run directory {} is in use by another VoltRun process", .0.display())]
    RunDirInUse(PathBuf),
    #[error("{step}: {detail}")]
    Agent { step: Step, detail: String },
}

impl VmError {
    /// The step this error happened in, when it belongs to one.
    pub fn step(&self) -> Option<Step> {
        match self {
            VmError::Api { step, .. }
            | VmError::Transport { step, .. }
            | VmError::Protocol { step, .. }
            | VmError::ApiTimeout { step, .. }
            | VmError::Exited { step, .. }
            | VmError::Io { step, .. }
            | VmError::InvalidSpec { step, .. }
            | VmError::Agent { step, .. } => Some(*step),
            VmError::Missing { .. } | VmError::RunDirInUse(_) => None,
        }
    }

    pub(crate) fn io(
        step: Step,
        what: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        VmError::Io {
            step,
            what,
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_name_the_step_and_firecrackers_message() {
        let error = VmError::Api {
            step: Step::ConfigureMachine,
            status: 400,
            fault: "The number of vCPUs must be greater than 0".into(),
        };
        assert_eq!(
            error.to_string(),
            "vm.configure.machine: Firecracker answered 400: The number of vCPUs must be greater than 0"
        );
        assert_eq!(error.step(), Some(Step::ConfigureMachine));
    }
}
