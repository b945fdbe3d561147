//! The handle on one running microVM ([`Vm`]): its identity, configuring and starting it over the
//! API, reading its configuration back, and stopping it. A VMM that dies under an API call is
//! reported as having exited, with its output, rather than as a broken socket.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::api::{ApiClient, BootSource, VmConfig, Vsock};
use crate::error::{Step, VmError};

use super::VmSpec;
use super::drives::planned_drives;
use super::layout::{INITRD_IN_JAIL, KERNEL_IN_JAIL, LOG_FILE, Layout, VSOCK};
use super::watcher::{ExitInfo, tail, wait_for_exit};

/// How long the steps took, as measured by the manager.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Process start to the API answering `GET /`.
    pub api_ready: Option<Duration>,
    /// Machine, boot source, drives and vsock configured (including the scratch disk's mkfs).
    pub configure: Option<Duration>,
    /// The `InstanceStart` request.
    pub start: Option<Duration>,
    /// Loading a snapshot into the VMM, resumed (a restored VM is neither configured nor started).
    pub restore: Option<Duration>,
}

/// One microVM. Dropping it kills the VMM (the watcher then cleans up); [`Vm::stop`] does the same
/// and waits until everything is gone.
#[derive(Debug)]
pub struct Vm {
    pub(super) id: String,
    pub(super) pid: u32,
    pub(super) spec: VmSpec,
    pub(super) guest_cid: u32,
    pub(super) api: ApiClient,
    pub(super) layout: Layout,
    pub(super) kill: Option<oneshot::Sender<()>>,
    pub(super) exit: watch::Receiver<Option<ExitInfo>>,
    pub(super) timings: Timings,
}

impl Vm {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The VMM's process id (the jailer execs into Firecracker, so the same process).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn spec(&self) -> &VmSpec {
        &self.spec
    }

    pub fn guest_cid(&self) -> u32 {
        self.guest_cid
    }

    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// The VM's own directory on the host.
    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    /// The host side of the VM's vsock device: connect here and send `CONNECT <port>\n`.
    pub fn vsock_path(&self) -> PathBuf {
        self.layout.own_host(VSOCK)
    }

    /// Whether the process has exited, and how.
    pub fn exit_info(&self) -> Option<ExitInfo> {
        self.exit.borrow().clone()
    }

    /// Waits for the process to exit (and its files to be removed).
    pub async fn wait_exit(&self) -> ExitInfo {
        wait_for_exit(&self.exit).await
    }

    fn exited_error(&self, step: Step) -> Option<VmError> {
        self.exit_info().map(|info| VmError::Exited {
            step,
            status: info.status,
            log: info.log_tail,
        })
    }

    /// `result` of an API call, except that a transport error from a VMM that has died meanwhile
    /// becomes [`VmError::Exited`] at the transport error's step: why the VMM ended says more than
    /// the broken socket.
    pub(super) async fn unless_exited<T>(&self, result: Result<T, VmError>) -> Result<T, VmError> {
        if let Err(VmError::Transport { step, .. }) = &result {
            // The exit is reaped a moment after the socket breaks.
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some(error) = self.exited_error(*step) {
                return Err(error);
            }
        }
        result
    }

    pub(super) async fn wait_api_ready(&mut self, timeout: Duration) -> Result<(), VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(error) = self.exited_error(Step::ApiReady) {
                return Err(error);
            }
            if self.layout.api_socket.exists() && self.api.ping().await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(VmError::ApiTimeout {
                    step: Step::ApiReady,
                    waited: timeout,
                    log: tail(&self.layout.dir.join(LOG_FILE)),
                });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Configures machine, boot source, drives (read-only root image, writable scratch disk) and the
    /// vsock device. No network interface is configured.
    pub async fn configure(&mut self) -> Result<(), VmError> {
        let started = Instant::now();
        let result = self.configure_inner().await;
        self.unless_exited(result).await?;
        self.timings.configure = Some(started.elapsed());
        Ok(())
    }

    async fn configure_inner(&self) -> Result<(), VmError> {
        let spec = &self.spec;
        self.api.put_machine_config(&spec.machine_config()).await?;
        let step = Step::ConfigureBootSource;
        let kernel = self.layout.place(&spec.kernel, KERNEL_IN_JAIL, step)?;
        let initrd = spec
            .initrd
            .as_ref()
            .map(|i| self.layout.place(i, INITRD_IN_JAIL, step))
            .transpose()?;
        self.api
            .put_boot_source(&BootSource {
                kernel_image_path: kernel,
                boot_args: Some(spec.boot_args.clone()),
                initrd_path: initrd,
            })
            .await?;
        for drive in planned_drives(spec) {
            let path_on_host = drive.prepare(&self.layout, spec.scratch_mib).await?;
            self.api.put_drive(&drive.drive(path_on_host)).await?;
        }
        self.api.put_vsock(&self.vsock()).await
    }

    /// The vsock device. Its socket is named as the VMM sees it (relative to its working directory
    /// or the jail's root), so that a snapshot, which records the name, restores into another VM's
    /// directory rather than onto the socket of the VM it was taken from.
    fn vsock(&self) -> Vsock {
        Vsock {
            guest_cid: self.guest_cid,
            uds_path: self.layout.own_inner(VSOCK),
        }
    }

    /// Issues `InstanceStart`.
    pub async fn start(&mut self) -> Result<(), VmError> {
        let started = Instant::now();
        let result = self.api.instance_start().await;
        self.unless_exited(result).await?;
        self.timings.start = Some(started.elapsed());
        Ok(())
    }

    /// `GET /vm/config`: the configuration Firecracker holds.
    pub async fn read_config(&self) -> Result<VmConfig, VmError> {
        self.api.vm_config().await
    }

    /// What the manager configured, as `GET /vm/config` should report it.
    pub fn expected_config(&self) -> VmConfig {
        let layout = &self.layout;
        let drives = planned_drives(&self.spec)
            .into_iter()
            .map(|drive| drive.drive(drive.expected_path(layout)))
            .collect();
        VmConfig {
            machine_config: self.spec.machine_config(),
            boot_source: BootSource {
                kernel_image_path: layout.image_inner(&self.spec.kernel, KERNEL_IN_JAIL),
                boot_args: Some(self.spec.boot_args.clone()),
                initrd_path: self
                    .spec
                    .initrd
                    .as_ref()
                    .map(|i| layout.image_inner(i, INITRD_IN_JAIL)),
            },
            drives,
            vsock: Some(self.vsock()),
            network_interfaces: vec![],
        }
    }

    /// Kills the VMM and waits until it has exited and everything the VM created is removed. The VM
    /// holds no state worth a graceful shutdown: its scratch disk is discarded anyway.
    pub async fn stop(mut self) -> ExitInfo {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        self.wait_exit().await
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Dropping the kill sender wakes the watcher, which kills the process and cleans up.
        self.kill.take();
    }
}
