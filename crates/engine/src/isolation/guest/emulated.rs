//! The emulated backend (`ENGINE_BACKEND=emulated`): the Firecracker backend's guests — the same
//! kernel, root images, code drives, agent and protocol — booted by QEMU's `microvm` machine under
//! emulation ([`voltrun_vm::emulated`]) instead of by Firecracker. It exists so that the guest path
//! can be run end to end on hosts where no guest boots under KVM; it is never chosen by `auto`,
//! isolates no better than the VM it emulates, and is slow (every instruction is emulated).
//!
//! Everything after the boot is shared with the Firecracker backend: the engine's instances are the
//! same [`GuestInstance`](super::GuestInstance)s, speaking to the agent over the same
//! hybrid-vsock handshake. There are no snapshots: QEMU's are not Firecracker's.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use voltrun_agent::vsock::LISTENING_LINE;
use voltrun_vm::emulated::{EmulatedGuest, Emulator, EmulatorConfig};
use voltrun_vm::images::Manifest;

use super::{
    Guest, GuestBody, GuestError, GuestLauncher, GuestSpec, agent_hello, guest_images,
    guest_vm_spec, warn_of_leftovers,
};

/// Between two attempts to reach a booting guest's agent: vhost-device-vsock stops answering for good
/// when attempts come every few milliseconds while a slow guest's vsock driver comes up
/// ([`voltrun_agent::vsock::connect_paced`]); an emulated boot takes seconds anyway.
const HANDSHAKE_PAUSE: Duration = Duration::from_millis(200);

/// Every guest has its own vsock backend process, so every guest can have the first guest CID.
const GUEST_CID: u32 = 3;

/// How the emulated backend runs its guests.
#[derive(Debug, Clone)]
pub struct EmulatedConfig {
    pub emulator: EmulatorConfig,
    /// Where `voltrun vm images build --bzimage …` put the kernel and root images.
    pub images_dir: PathBuf,
    /// How long a guest may take from QEMU's start to its agent's hello (emulated: seconds).
    pub boot_timeout: Duration,
}

/// Boots one emulated microVM per guest from the verified image set.
#[derive(Debug)]
pub struct EmulatedLauncher {
    emulator: Emulator,
    manifest: Manifest,
    /// The image set's bzImage, which QEMU boots.
    kernel: String,
    images_dir: PathBuf,
    boot_timeout: Duration,
}

impl EmulatedLauncher {
    /// Verifies the images (which must include a bzImage) and takes the run directory.
    pub async fn new(mut config: EmulatedConfig) -> Result<Self, GuestError> {
        config.images_dir = std::path::absolute(&config.images_dir)
            .map_err(GuestError::path(&config.images_dir))?;
        let manifest = Manifest::load(&config.images_dir)?;
        manifest.verify(&config.images_dir)?;
        let Some(kernel) = manifest.bzimage.as_ref().map(|k| k.file.clone()) else {
            return Err(GuestError::NoKernel {
                dir: config.images_dir,
                what: "bzImage for the emulator (build it with `voltrun vm images build --kernel … \
                       --bzimage …`; scripts/build-guest-kernel.sh makes both)",
            });
        };
        let emulator = Emulator::new(config.emulator).await?;
        Ok(Self {
            emulator,
            manifest,
            kernel,
            images_dir: config.images_dir,
            boot_timeout: config.boot_timeout,
        })
    }
}

/// An emulated guest as a guest body.
#[derive(Debug)]
struct EmulatedBody(EmulatedGuest);

#[async_trait]
impl GuestBody for EmulatedBody {
    async fn stop(self: Box<Self>) {
        warn_of_leftovers(&self.0.stop().await);
    }
}

#[async_trait]
impl GuestLauncher for EmulatedLauncher {
    fn backend(&self) -> &'static str {
        "emulated"
    }

    /// Six times Lambda's: a Python runtime that initialises in well under a second on hardware
    /// takes about 4.5 s here (measured), more on a loaded host.
    fn init_timeout(&self) -> Duration {
        crate::isolation::INIT_TIMEOUT * 6
    }

    fn describe(&self) -> String {
        format!(
            "emulated microVMs (QEMU microvm under TCG, {}; a development backend: slow, and isolating no better than the VM it emulates), guest images for {} in {}",
            self.emulator.config().qemu.display(),
            self.manifest.runtimes().join(", "),
            self.images_dir.display()
        )
    }

    fn runtimes(&self) -> Vec<String> {
        self.manifest.runtimes()
    }

    async fn launch(&self, spec: &GuestSpec) -> Result<Guest, GuestError> {
        let images = guest_images(spec).await?;
        let vm_spec = guest_vm_spec(&self.manifest, &self.images_dir, &self.kernel, spec, images)?;
        let guest = self.emulator.boot(&vm_spec, GUEST_CID).await?;
        // vhost-device-vsock 0.3.0 stops answering for good when a connection reaches it while the
        // guest's vsock driver comes up (reproduced under load even with 200 ms between attempts):
        // connect only once the agent says on the console that it listens.
        let started = std::time::Instant::now();
        guest
            .wait_for_console(LISTENING_LINE, started + self.boot_timeout)
            .await;
        let left = self.boot_timeout.saturating_sub(started.elapsed());
        let hello = agent_hello(
            &guest.vsock_path(),
            (left.max(Duration::from_secs(1)), HANDSHAKE_PAUSE),
            guest.wait_exit(),
            "said hello",
        )
        .await;
        let session = match hello {
            Ok(session) => session,
            Err(why) => {
                // While the guest runs, its console says how far it got (once QEMU has exited, the
                // error carries its last output already).
                let console = guest.console_tail();
                let console: Vec<&str> = console.lines().rev().take(3).collect();
                // Nothing of the guest outlives the error: QEMU and its vsock backend are dead and
                // its files gone before the caller hears of it.
                guest.stop().await;
                if console.is_empty() {
                    return Err(why);
                }
                let said = format!("the guest's console last said: {}", console.join(" | "));
                return Err(match why {
                    GuestError::At { step, detail } => GuestError::At {
                        step,
                        detail: format!("{detail}; {said}"),
                    },
                    other => other,
                });
            }
        };
        tracing::debug!(
            guest = guest.id(),
            boot_ms = guest.age().as_millis(),
            "emulated guest up"
        );
        Ok(Guest {
            session,
            body: Box::new(EmulatedBody(guest)),
        })
    }
}
