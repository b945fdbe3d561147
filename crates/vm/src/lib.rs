//! VoltRun's Firecracker microVM manager.
//!
//! - [`manager`]: one Firecracker process per VM (directly or through the [`jailer`]), configured
//!   over its API socket ([`api`]), watched, stopped, and cleaned up — also after a crash.
//! - [`binaries`]: where the Firecracker and jailer binaries are found.
//! - [`emulated`]: the same guests booted by QEMU's `microvm` machine under emulation, for hosts
//!   without usable KVM (a development and test backend).
//! - [`guest_probe`]: tiny hand-made guest kernels that prove the VMM can run guest code here.
//! - [`images`]: the guest kernel and per-runtime root images, with their sha256 manifest;
//!   [`image_build`] makes them (`voltrun vm images build`).
//! - [`doctor`]: `voltrun vm doctor`'s checks, and the capability probe `ENGINE_BACKEND=auto` uses
//!   ([`doctor::capability`]); [`cli`] is the `voltrun vm` command.
//!
//! Every Firecracker API error is a [`VmError`] that names the [`Step`] it happened in.

pub mod api;
pub mod binaries;
pub mod cli;
pub mod doctor;
pub mod emulated;
mod error;
pub mod guest_probe;
pub mod image_build;
pub mod images;
pub mod jailer;
pub mod manager;

pub use error::{Step, VmError};
pub use manager::{ExitInfo, ManagerConfig, Snapshot, SweepReport, Timings, Vm, VmManager, VmSpec};
