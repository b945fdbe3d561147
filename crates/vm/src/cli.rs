//! `voltrun vm …`: operator commands for the microVM backend (`doctor`, `images build`). The `voltrun` binary only forwards to
//! [`run`].

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::binaries::BinarySearch;
use crate::doctor::{self, DoctorConfig};
use crate::image_build::{self, BuildConfig, RuntimeSource};

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Check what this host allows: /dev/kvm, Firecracker, jailer, guest images, guest code, a boot
    Doctor(DoctorArgs),
    /// Guest images: the kernel and one read-only ext4 root image per runtime
    #[command(subcommand)]
    Images(ImagesCommand),
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Build the root images from this host's runtimes (skipped when no input changed)
    Build(BuildArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Where the images and manifest.json go
    #[arg(long, env = "VM_IMAGES_DIR", default_value = "data/vm/images")]
    pub out: PathBuf,
    /// The static guest agent (scripts/build-agent.sh builds it)
    #[arg(
        long,
        default_value = "target/x86_64-unknown-linux-gnu/release/voltrun-agent"
    )]
    pub agent: PathBuf,
    /// An uncompressed ELF guest kernel (vmlinux) with virtio-mmio, virtio-blk, vsock and ext4 built
    /// in; see docs/firecracker.md
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// The same kernel as a bzImage, for the emulated backend (QEMU's microvm machine);
    /// scripts/build-guest-kernel.sh writes both
    #[arg(long)]
    pub bzimage: Option<PathBuf>,
    /// An initramfs for that kernel, if it needs one
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// The Python interpreter to package ("none" to skip)
    #[arg(long, default_value = "/usr/bin/python3")]
    pub python: String,
    /// The Node.js interpreter to package ("none" to skip)
    #[arg(long, default_value = "/usr/bin/node")]
    pub node: String,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Where the guest kernel and root images are (`voltrun vm images build` writes them)
    #[arg(long, env = "VM_IMAGES_DIR", default_value = "data/vm/images")]
    pub images_dir: PathBuf,
    /// How long the boot probe waits for the guest agent's hello, in seconds (a nested-virtualisation
    /// host takes about 25 s to report its failure)
    #[arg(long, default_value_t = 30)]
    pub boot_deadline_s: u64,
}

/// Runs a `voltrun vm` command; the exit code is 0 only when every check passed.
pub fn run(command: VmCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "voltrun: cannot start the async runtime: {e}"
            );
            return ExitCode::FAILURE;
        }
    };
    match command {
        VmCommand::Images(ImagesCommand::Build(args)) => images_build(args),
        VmCommand::Doctor(args) => {
            let config = DoctorConfig {
                search: BinarySearch::from_env(),
                images_dir: args.images_dir,
                boot_deadline: Duration::from_secs(args.boot_deadline_s),
            };
            let report = runtime.block_on(doctor::run(&config));
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(report.render().as_bytes());
            let verdict = if report.all_passed() {
                "the Firecracker backend can run functions on this host"
            } else {
                "the Firecracker backend cannot run functions on this host (see FAIL above)"
            };
            let _ = writeln!(out, "{verdict}");
            if report.all_passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn images_build(args: BuildArgs) -> ExitCode {
    let mut runtimes = Vec::new();
    for (path, make) in [
        (
            &args.python,
            RuntimeSource::Python as fn(PathBuf) -> RuntimeSource,
        ),
        (&args.node, RuntimeSource::Node),
    ] {
        if path != "none" {
            runtimes.push(make(PathBuf::from(path)));
        }
    }
    runtimes.push(RuntimeSource::Provided);
    let config = BuildConfig {
        out_dir: args.out,
        agent: args.agent,
        runtimes,
        kernel: args.kernel,
        bzimage: args.bzimage,
        initrd: args.initrd,
    };
    let started = std::time::Instant::now();
    match image_build::build(&config) {
        Ok(report) => {
            let mut out = std::io::stdout().lock();
            let verb = if report.rebuilt {
                "built"
            } else {
                "up to date:"
            };
            let m = &report.manifest;
            for root in &m.rootfs {
                let _ = writeln!(
                    out,
                    "{verb} {} ({} MiB) for {}",
                    root.image.file,
                    root.image.bytes >> 20,
                    root.runtime
                );
            }
            match &m.kernel {
                Some(k) => {
                    let _ = writeln!(out, "{verb} {} (guest kernel)", k.file);
                }
                None => {
                    let _ = writeln!(
                        out,
                        "no guest kernel given (--kernel): VMs cannot boot from this image set yet"
                    );
                }
            }
            let _ = writeln!(
                out,
                "manifest: {} ({:.1} s)",
                config.out_dir.join(crate::images::MANIFEST).display(),
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "voltrun vm images build: {e}");
            ExitCode::FAILURE
        }
    }
}
