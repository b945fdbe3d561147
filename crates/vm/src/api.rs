//! A client for Firecracker's HTTP/1.1 API on its Unix socket, and the request and response bodies
//! the manager uses (field names as in Firecracker's API specification).
//!
//! One connection per request: the API is used a handful of times per VM, and a fresh connection
//! cannot be left half-read by an earlier failure.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use crate::error::{Step, VmError};

/// `PUT /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u32,
    #[serde(default)]
    pub smt: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// `PUT /drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    pub drive_id: String,
    pub path_on_host: String,
    pub is_root_device: bool,
    pub is_read_only: bool,
}

/// `PUT /vsock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsock {
    pub guest_cid: u32,
    pub uds_path: String,
}

/// `GET /vm/config`: what Firecracker holds as the VM's configuration (the parts the manager sets).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmConfig {
    #[serde(rename = "machine-config")]
    pub machine_config: MachineConfig,
    #[serde(rename = "boot-source")]
    pub boot_source: BootSource,
    pub drives: Vec<Drive>,
    pub vsock: Option<Vsock>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<serde_json::Value>,
}

/// `GET /`: the instance's identity and state (`Not started`, `Running`, `Paused`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    pub state: String,
    pub vmm_version: String,
}

#[derive(Debug, Deserialize)]
struct Fault {
    fault_message: String,
}

#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
}

impl ApiClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request and returns the status and body. Firecracker's refusals (4xx/5xx with a
    /// `fault_message`) become [`VmError::Api`] for `step`.
    async fn call(
        &self,
        step: Step,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, VmError> {
        let transport = |source: std::io::Error| VmError::Transport { step, source };
        let stream = voltrun_agent::vsock::connect_unix(&self.socket)
            .await
            .map_err(transport)?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| transport(std::io::Error::other(e)))?;
        let driver = tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("accept", "application/json");
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| VmError::Protocol {
                step,
                detail: e.to_string(),
            })?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| transport(std::io::Error::other(e)))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| transport(std::io::Error::other(e)))?
                .to_bytes();
            Ok::<_, VmError>((status, bytes))
        }
        .await;
        driver.abort();
        let (status, bytes) = result?;
        if status.is_success() {
            return Ok(bytes);
        }
        let fault = serde_json::from_slice::<Fault>(&bytes)
            .map(|f| f.fault_message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        Err(VmError::Api {
            step,
            status: status.as_u16(),
            fault,
        })
    }

    async fn put(&self, step: Step, path: &str, body: &impl Serialize) -> Result<(), VmError> {
        let body = serde_json::to_vec(body).map_err(|e| VmError::Protocol {
            step,
            detail: e.to_string(),
        })?;
        self.call(step, Method::PUT, path, Some(body))
            .await
            .map(drop)
    }

    async fn get<T: for<'de> Deserialize<'de>>(
        &self,
        step: Step,
        path: &str,
    ) -> Result<T, VmError> {
        let bytes = self.call(step, Method::GET, path, None).await?;
        serde_json::from_slice(&bytes).map_err(|e| VmError::Protocol {
            step,
            detail: format!("{e} in {}", String::from_utf8_lossy(&bytes)),
        })
    }

    pub async fn instance_info(&self) -> Result<InstanceInfo, VmError> {
        self.get(Step::Describe, "/").await
    }

    /// `GET /`, for readiness: the step is [`Step::ApiReady`].
    pub(crate) async fn ping(&self) -> Result<InstanceInfo, VmError> {
        self.get(Step::ApiReady, "/").await
    }

    pub async fn vm_config(&self) -> Result<VmConfig, VmError> {
        self.get(Step::Describe, "/vm/config").await
    }

    pub async fn put_machine_config(&self, config: &MachineConfig) -> Result<(), VmError> {
        self.put(Step::ConfigureMachine, "/machine-config", config)
            .await
    }

    pub async fn put_boot_source(&self, boot: &BootSource) -> Result<(), VmError> {
        self.put(Step::ConfigureBootSource, "/boot-source", boot)
            .await
    }

    pub async fn put_drive(&self, drive: &Drive) -> Result<(), VmError> {
        // Drive ids are chosen by the manager (alphanumeric and `_`), so the path needs no escaping.
        self.put(
            Step::ConfigureDrive,
            &format!("/drives/{}", drive.drive_id),
            drive,
        )
        .await
        .map_err(|e| match e {
            VmError::Api {
                step,
                status,
                fault,
            } => VmError::Api {
                step,
                status,
                fault: format!("drive {}: {fault}", drive.drive_id),
            },
            other => other,
        })
    }

    pub async fn put_vsock(&self, vsock: &Vsock) -> Result<(), VmError> {
        self.put(Step::ConfigureVsock, "/vsock", vsock).await
    }

    /// `PATCH /vm`: pauses (`true`) or resumes the guest's vCPUs.
    pub async fn set_paused(&self, paused: bool) -> Result<(), VmError> {
        let state = if paused { "Paused" } else { "Resumed" };
        let body = serde_json::to_vec(&serde_json::json!({ "state": state })).map_err(|e| {
            VmError::Protocol {
                step: Step::Pause,
                detail: e.to_string(),
            }
        })?;
        self.call(Step::Pause, Method::PATCH, "/vm", Some(body))
            .await
            .map(drop)
    }

    /// `PUT /snapshot/create`: a full snapshot of a paused VM (device state and guest memory, to
    /// paths as the VMM sees them).
    pub async fn create_snapshot(
        &self,
        state_path: &str,
        memory_path: &str,
    ) -> Result<(), VmError> {
        self.put(
            Step::Snapshot,
            "/snapshot/create",
            &serde_json::json!({
                "snapshot_type": "Full",
                "snapshot_path": state_path,
                "mem_file_path": memory_path,
            }),
        )
        .await
    }

    /// `PUT /snapshot/load` into a VMM that has not been configured, and resume the guest.
    pub async fn load_snapshot(&self, state_path: &str, memory_path: &str) -> Result<(), VmError> {
        self.put(
            Step::Restore,
            "/snapshot/load",
            &serde_json::json!({
                "snapshot_path": state_path,
                "mem_backend": { "backend_type": "File", "backend_path": memory_path },
                "resume_vm": true,
            }),
        )
        .await
    }

    pub async fn instance_start(&self) -> Result<(), VmError> {
        self.put(
            Step::Start,
            "/actions",
            &serde_json::json!({ "action_type": "InstanceStart" }),
        )
        .await
    }
}
