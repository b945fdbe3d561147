#!/usr/bin/env bash
# Builds the guest kernel from Debian's kernel source package (linux-source-6.1): an uncompressed ELF
# `vmlinux` for Firecracker, and the same kernel as a `bzImage` for QEMU's microvm machine (the
# emulated backend, which cannot load an ELF kernel without a PVH note), with everything a VoltRun guest needs built in, so the guest agent is
# init straight from the read-only root image (no modules, no initramfs): the virtio-mmio transport
# with devices from the kernel command line (as Firecracker passes them), virtio-blk, ext4, vsock over
# virtio, the 8250 serial console, ACPI/MP tables, KVM guest support, and the system calls the
# runtimes use.
#
# The configuration starts from the kernel's `tinyconfig` and turns on exactly the options listed
# below, then checks that each one is set to `y` after `olddefconfig` (a missing dependency would
# otherwise drop it silently).
#
#   scripts/build-guest-kernel.sh          # writes target/guest-kernel/{vmlinux,bzImage,config}
#   voltrun vm images build --kernel target/guest-kernel/vmlinux
#
# Needs root with apt-get (it installs the build tools and downloads the source package), about
# 1.5 GB of disk and, on 2 cores, several minutes. Idempotent: nothing is rebuilt when the source
# package and this script's option list are unchanged.
#
# Settings (environment): GUEST_KERNEL_DIR (default target/guest-kernel), GUEST_KERNEL_SOURCE
# (default linux-source-6.1), JOBS (default: the number of cores).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${GUEST_KERNEL_DIR:-target/guest-kernel}
SOURCE_PACKAGE=${GUEST_KERNEL_SOURCE:-linux-source-6.1}
JOBS=${JOBS:-$(nproc)}

log() { echo "build-guest-kernel: $*" >&2; }
fail() { log "$*"; exit 1; }

# Every option a guest needs, built in. Grouped by what needs it.
OPTIONS=(
  # The machine: 64-bit, several vCPUs, a KVM guest with its paravirtual clock, ACPI and MP tables.
  64BIT SMP HYPERVISOR_GUEST PARAVIRT KVM_GUEST ACPI X86_MPPARSE HIGH_RES_TIMERS NO_HZ_IDLE
  # The console Firecracker serves (ttyS0), and early messages on it.
  PRINTK EARLY_PRINTK TTY SERIAL_8250 SERIAL_8250_CONSOLE
  # Devices: Firecracker's virtio-mmio devices are declared on the command line.
  VIRTIO_MENU VIRTIO VIRTIO_MMIO VIRTIO_MMIO_CMDLINE_DEVICES BLOCK BLK_DEV VIRTIO_BLK
  # File systems: the root and code images and the scratch disk (ext4), /proc, /sys, /dev, tmpfs.
  EXT4_FS PROC_FS SYSFS DEVTMPFS TMPFS SHMEM BLK_DEV_INITRD
  # The agent's transport to the host, and the Runtime API on the guest's loopback.
  NET INET UNIX VSOCKETS VIRTIO_VSOCKETS
  # Running programs, and the system calls Python, Node.js and glibc use.
  BINFMT_ELF BINFMT_SCRIPT MULTIUSER FUTEX EPOLL SIGNALFD TIMERFD EVENTFD AIO POSIX_TIMERS
  ADVISE_SYSCALLS MEMBARRIER FILE_LOCKING INOTIFY_USER SYSVIPC FHANDLE
  # Limits the agent may set inside the guest.
  CGROUPS MEMCG CGROUP_PIDS
  # The oom_kill count in /proc/vmstat, by which the agent tells an out-of-memory death from any other
  # SIGKILL (tinyconfig leaves the counters out; found by the first emulated boot).
  VM_EVENT_COUNTERS
  # Firecracker's VM generation ID: a guest restored from a snapshot reseeds its random number
  # generator, so clones of one snapshot do not share it.
  VIRT_DRIVERS VMGENID
)

[ "$(uname -m)" = x86_64 ] || fail "builds an x86_64 guest kernel; this is $(uname -m)"
command -v apt-get >/dev/null 2>&1 || fail "needs apt-get (Debian or Ubuntu) for the source package and the build tools"

options_hash=$(printf '%s\n' "$SOURCE_PACKAGE" "${OPTIONS[@]}" vmlinux bzImage | sha256sum | cut -c1-16)
if [ -f "$OUT/vmlinux" ] && [ -f "$OUT/bzImage" ] && [ "$(cat "$OUT/inputs" 2>/dev/null)" = "$options_hash" ]; then
  log "up to date: $OUT/vmlinux ($(sha256sum "$OUT/vmlinux" | cut -c1-16)…)"
  exit 0
fi

tools=(make gcc bc bison flex xz perl)
missing=()
for tool in "${tools[@]}"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
[ -f /usr/include/libelf.h ] || missing+=(libelf)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || fail "missing ${missing[*]}: run as root, or: apt-get install build-essential bc bison flex libelf-dev xz-utils perl"
  log "installing the build tools (missing: ${missing[*]})"
  apt-get install -y build-essential bc bison flex libelf-dev xz-utils perl >/dev/null \
    || { apt-get update -qq && apt-get install -y build-essential bc bison flex libelf-dev xz-utils perl >/dev/null; } \
    || fail "apt-get could not install the build tools"
fi

mkdir -p "$OUT/src"
OUT=$(cd "$OUT" && pwd)
cd "$OUT/src"
if ! ls "$SOURCE_PACKAGE"_*.deb >/dev/null 2>&1; then
  log "downloading $SOURCE_PACKAGE from the Debian archive"
  apt-get download "$SOURCE_PACKAGE" >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get download "$SOURCE_PACKAGE" >/dev/null; } \
    || fail "apt-get download $SOURCE_PACKAGE failed"
fi
deb=$(ls "$SOURCE_PACKAGE"_*.deb | head -n 1)
tree=$(ls -d linux-source-*/ 2>/dev/null | head -n 1 || true)
if [ -z "$tree" ]; then
  log "unpacking $deb"
  rm -rf pkg && mkdir pkg
  dpkg-deb -x "$deb" pkg
  tarball=$(ls pkg/usr/src/linux-source-*.tar.xz | head -n 1)
  [ -n "$tarball" ] || fail "$deb holds no kernel tarball"
  tar -xJf "$tarball"
  rm -rf pkg
  tree=$(ls -d linux-source-*/ | head -n 1)
fi
cd "$tree"
log "configuring $(make -s kernelversion) from tinyconfig"
make -s ARCH=x86_64 tinyconfig >/dev/null
for option in "${OPTIONS[@]}"; do scripts/config --enable "$option"; done
make -s ARCH=x86_64 olddefconfig >/dev/null
unset_options=()
for option in "${OPTIONS[@]}"; do
  grep -qx "CONFIG_$option=y" .config || unset_options+=("$option")
done
[ ${#unset_options[@]} -eq 0 ] || fail "these options did not end up built in: ${unset_options[*]}"

log "building vmlinux and bzImage with $JOBS jobs"
started=$(date +%s)
make -s ARCH=x86_64 -j"$JOBS" vmlinux bzImage
cp vmlinux "$OUT/vmlinux.tmp" && mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
cp arch/x86/boot/bzImage "$OUT/bzImage.tmp" && mv "$OUT/bzImage.tmp" "$OUT/bzImage"
cp .config "$OUT/config"
echo "$options_hash" > "$OUT/inputs"
log "built $OUT/vmlinux ($(du -h "$OUT/vmlinux" | cut -f1), sha256 $(sha256sum "$OUT/vmlinux" | cut -c1-16)…) in $(( $(date +%s) - started )) s"
log "next: voltrun vm images build --kernel $OUT/vmlinux"
