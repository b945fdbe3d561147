//! `voltrun vm images build`: one read-only ext4 root image per runtime, made from this host's own
//! runtime files (the same interpreters the namespace backend runs), plus the guest kernel when one is
//! given, listed with sha256 sums in the manifest ([`crate::images::Manifest`]).
//!
//! Every image holds the static guest agent as `/sbin/init`, the engine's bootstraps in
//! `/var/runtime`, a minimal `/etc`, empty mount points (`/proc`, `/sys`, `/dev`, `/tmp`,
//! `/var/task`) and, for Python and Node.js, the interpreter with every shared library it loads
//! (found with `ldd`), at the paths the host has them. `mkfs.ext4 -d` (e2fsprogs) writes the image
//! from a staging directory; no loop mounts, no root needed.
//!
//! Images are rebuilt only when an input changed: the manifest keeps a hash over the agent, the
//! bootstraps, the kernel and the list (path, size, modification time) of every runtime file.
//!
//! One file on purpose (past 500 lines): what goes into an image and the hash that decides whether to
//! rebuild it must list the same inputs.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::images::{FORMAT, ImageFile, Manifest, RootImage, sha256_file};

const PYTHON_BOOTSTRAP: &str = include_str!("../../engine/bootstraps/bootstrap.py");
const NODE_BOOTSTRAP: &str = include_str!("../../engine/bootstraps/bootstrap.js");

/// The kernel command line the images are made for: the root image is `/dev/vda` (read-only), the
/// agent is init, and a guest panic reboots, which ends the VMM.
pub const BOOT_ARGS: &str =
    "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda ro rootfstype=ext4 init=/sbin/init";

/// Python standard-library directories a function never needs (tests, GUI toolkits).
const PYTHON_SKIP: &[&str] = &["test", "idlelib", "tkinter", "turtledemo", "ensurepip"];

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the agent {} is not a static executable (build it with scripts/build-agent.sh)", .0.display())]
    AgentNotStatic(PathBuf),
    #[error("the kernel {} is not an uncompressed ELF vmlinux", .0.display())]
    KernelNotElf(PathBuf),
    #[error("{} is not a bzImage (no Linux boot protocol header)", .0.display())]
    NotBzImage(PathBuf),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tool(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_path_buf();
    move |source| BuildError::Io { what, path, source }
}

/// A runtime to build an image for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeSource {
    /// The interpreter, e.g. `/usr/bin/python3`.
    Python(PathBuf),
    Node(PathBuf),
    /// Only the agent: the function brings its own `bootstrap`.
    Provided,
}

#[derive(Debug, Clone)]
pub struct BuildConfig {
    pub out_dir: PathBuf,
    /// The static guest agent.
    pub agent: PathBuf,
    pub runtimes: Vec<RuntimeSource>,
    /// An uncompressed ELF guest kernel to include, if any.
    pub kernel: Option<PathBuf>,
    /// The same kernel as a `bzImage` (for the emulated backend), if any.
    pub bzimage: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct BuildReport {
    pub manifest: Manifest,
    /// False when everything was up to date and nothing was written.
    pub rebuilt: bool,
}

/// Whether an ELF file asks for a program interpreter (i.e. is dynamically linked).
fn has_interpreter(bytes: &[u8]) -> Option<bool> {
    // ELF64 little-endian: program headers at e_phoff (0x20), e_phentsize (0x36), e_phnum (0x38).
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let (size, count) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    for i in 0..count {
        let at = phoff.checked_add(i.checked_mul(size)?)?;
        let p_type = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?);
        if p_type == 3 {
            return Some(true); // PT_INTERP
        }
    }
    Some(false)
}

/// Whether `path` is a static ELF executable.
pub fn is_static_elf(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| has_interpreter(&b) == Some(false))
}

/// The files a runtime needs from the host: (host path, path in the image).
fn runtime_files(runtime: &RuntimeSource) -> Result<(String, Vec<PathBuf>), BuildError> {
    match runtime {
        RuntimeSource::Provided => Ok(("provided".into(), vec![])),
        RuntimeSource::Python(interpreter) => {
            let probe = output(
                Command::new(interpreter).args([
                    "-c",
                    "import sys, sysconfig; print('%d.%d' % sys.version_info[:2]); print(sysconfig.get_paths()['stdlib']); print(sys.executable)",
                ]),
            )?;
            let lines: Vec<&str> = probe.lines().collect();
            let [version, stdlib, executable] = lines[..] else {
                return Err(BuildError::Tool(format!(
                    "{} did not describe itself: {probe}",
                    interpreter.display()
                )));
            };
            // The interpreter as the host names it (`/usr/bin/python3`, a link) and as it is.
            let mut files = vec![interpreter.clone(), canonical(Path::new(executable))?];
            let stdlib = canonical(Path::new(stdlib))?;
            walk(&stdlib, &mut files, &|p| {
                p.parent() == Some(stdlib.as_path())
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| PYTHON_SKIP.contains(&n))
            })?;
            // The interpreter and the extension modules (lib-dynload) load shared libraries.
            let binaries: Vec<PathBuf> = files
                .iter()
                .skip(1)
                .filter(|p| !p.starts_with(&stdlib) || p.extension().is_some_and(|e| e == "so"))
                .cloned()
                .collect();
            files.extend(shared_libraries(&binaries)?);
            Ok((format!("python{version}"), files))
        }
        RuntimeSource::Node(interpreter) => {
            let version = output(Command::new(interpreter).args(["-p", "process.versions.node"]))?;
            let major = version.trim().split('.').next().unwrap_or("").to_string();
            let executable = canonical(interpreter)?;
            let mut files = vec![interpreter.clone(), executable.clone()];
            files.extend(shared_libraries(&[executable])?);
            Ok((format!("nodejs{major}"), files))
        }
    }
}

fn output(command: &mut Command) -> Result<String, BuildError> {
    let out = command
        .output()
        .map_err(|e| BuildError::Tool(format!("running {command:?}: {e}")))?;
    if !out.status.success() {
        return Err(BuildError::Tool(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn canonical(path: &Path) -> Result<PathBuf, BuildError> {
    std::fs::canonicalize(path).map_err(io("resolving", path))
}

/// Every regular file under `dir`, except subtrees `skip` says no to.
fn walk(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    skip: &dyn Fn(&Path) -> bool,
) -> Result<(), BuildError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io("reading", dir))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = entry.file_type().map_err(io("reading", &path))?;
        if kind.is_dir() {
            if !skip(&path) {
                walk(&path, out, skip)?;
            }
        } else if kind.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// The shared libraries (and the dynamic loader) `binaries` load, resolved to real files.
fn shared_libraries(binaries: &[PathBuf]) -> Result<Vec<PathBuf>, BuildError> {
    let mut found = BTreeSet::new();
    for binary in binaries {
        let Ok(text) = output(Command::new("ldd").arg(binary)) else {
            continue; // "not a dynamic executable"
        };
        for line in text.lines() {
            // `libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line
                    .split_whitespace()
                    .next()
                    .filter(|p| p.starts_with('/')),
            };
            if let Some(path) = path.filter(|p| p.starts_with('/')) {
                found.insert(PathBuf::from(path));
            }
        }
    }
    Ok(found.into_iter().collect())
}

/// Copies a host file into the staging tree at the same path, keeping its mode. Paths through the
/// merged-`/usr` links (`/lib` → `/usr/lib`) are stored under `/usr`, where the image's own links
/// lead.
fn stage_file(staging: &Path, host: &Path) -> Result<(), BuildError> {
    let real = canonical(host)?;
    let relative = real.strip_prefix("/").unwrap_or(&real);
    let target = staging.join(relative);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    if !target.exists() {
        std::fs::copy(&real, &target).map_err(io("copying", &real))?;
    }
    // The path the file is asked for by may differ (`libc.so.6` or `python3`, links to the real
    // file): the same link in the image, absolute, so it resolves inside the guest's root.
    let asked = staging.join(usr_merged(host.strip_prefix("/").unwrap_or(host)));
    if asked != target && std::fs::symlink_metadata(&asked).is_err() {
        if let Some(parent) = asked.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        std::os::unix::fs::symlink(Path::new("/").join(relative), &asked)
            .map_err(io("linking", &asked))?;
    }
    Ok(())
}

/// `lib/…` → `usr/lib/…` (and `bin`, `sbin`, `lib64`), as on a merged-`/usr` system.
fn usr_merged(relative: &Path) -> PathBuf {
    let first = relative
        .components()
        .next()
        .and_then(|c| c.as_os_str().to_str());
    match first {
        Some("lib" | "lib64" | "bin" | "sbin") => Path::new("usr").join(relative),
        _ => relative.to_path_buf(),
    }
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), BuildError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    std::fs::write(path, contents).map_err(io("writing", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

/// The skeleton every image shares: links, mount points, `/etc`, the agent and the bootstraps.
fn stage_skeleton(staging: &Path, agent: &[u8], runtime: &str) -> Result<(), BuildError> {
    for dir in [
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib64",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "var/task",
        "var/runtime",
        "opt",
        "etc",
    ] {
        let path = staging.join(dir);
        std::fs::create_dir_all(&path).map_err(io("creating", &path))?;
    }
    std::fs::set_permissions(staging.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .map_err(io("chmod", &staging.join("tmp")))?;
    for link in ["bin", "sbin", "lib", "lib64"] {
        let path = staging.join(link);
        std::os::unix::fs::symlink(format!("usr/{link}"), &path).map_err(io("linking", &path))?;
    }
    write_file(&staging.join("usr/sbin/init"), agent, 0o755)?;
    write_file(
        &staging.join("var/runtime/bootstrap.py"),
        PYTHON_BOOTSTRAP.as_bytes(),
        0o644,
    )?;
    write_file(
        &staging.join("var/runtime/bootstrap.js"),
        NODE_BOOTSTRAP.as_bytes(),
        0o644,
    )?;
    let etc = [
        (
            "passwd",
            "root:x:0:0:root:/root:/usr/sbin/nologin\nsbx_user:x:1000:1000:function:/tmp:/usr/sbin/nologin\n",
        ),
        ("group", "root:x:0:\nsbx_user:x:1000:\n"),
        ("hosts", "127.0.0.1 localhost\n::1 localhost\n"),
        ("hostname", "voltrun\n"),
        ("voltrun-runtime", runtime),
    ];
    for (name, contents) in etc {
        write_file(&staging.join("etc").join(name), contents.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// Files, directories and links below `dir`, links not followed.
fn tree_entries(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => 1 + tree_entries(&entry.path()),
            _ => 1,
        })
        .sum()
}

fn tree_bytes(dir: &Path) -> u64 {
    let mut files = Vec::new();
    let _ = walk(dir, &mut files, &|_| false);
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// `mkfs.ext4 -d`: an ext4 image of the staging tree, sized to fit with a little room. Also makes
/// the Firecracker backend's code drives.
pub fn make_ext4(staging: &Path, image: &Path, label: &str) -> Result<(), BuildError> {
    // Room for metadata and per-file block rounding: 25% plus 16 MiB.
    let mib = ((tree_bytes(staging) / 4 * 5) >> 20) + 16;
    // An inode for every entry, with room: the default ratio gives a small image about a thousand,
    // which a tree of many empty files (a bundle can hold 10,000 entries) would run out of.
    let inodes = tree_entries(staging) * 5 / 4 + 64;
    let _ = std::fs::remove_file(image);
    output(
        Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-m",
                "0",
                "-O",
                "^has_journal",
                "-N",
                &inodes.to_string(),
                "-E",
                "root_owner=0:0",
                "-L",
            ])
            .arg(label)
            .arg("-d")
            .arg(staging)
            .arg(image)
            .arg(format!("{mib}M")),
    )
    .map(drop)
    .map_err(|e| BuildError::Tool(format!("{e} (mkfs.ext4 comes with e2fsprogs)")))
}

/// A hash over every input: the manifest keeps it, and an equal hash means nothing to rebuild.
fn inputs_hash(
    agent_sha: &str,
    kernels: [(&str, Option<&Path>); 3],
    runtimes: &[(String, Vec<PathBuf>)],
) -> Result<String, BuildError> {
    let mut h = Sha256::new();
    h.update(format!(
        "format {FORMAT}\nagent {agent_sha}\nboot {BOOT_ARGS}\n"
    ));
    h.update(PYTHON_BOOTSTRAP);
    h.update(NODE_BOOTSTRAP);
    for (role, file) in kernels {
        if let Some(file) = file {
            h.update(format!(
                "{role} {}\n",
                sha256_file(file).map_err(io("reading", file))?
            ));
        }
    }
    for (id, files) in runtimes {
        h.update(format!("runtime {id}\n"));
        for file in files {
            let meta = std::fs::metadata(file).map_err(io("reading", file))?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            h.update(format!("{} {} {mtime}\n", file.display(), meta.len()));
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Builds (or confirms up to date) the image set in `config.out_dir`.
pub fn build(config: &BuildConfig) -> Result<BuildReport, BuildError> {
    if !is_static_elf(&config.agent) {
        return Err(BuildError::AgentNotStatic(config.agent.clone()));
    }
    if let Some(kernel) = &config.kernel {
        let head = std::fs::read(kernel).map_err(io("reading", kernel))?;
        if head.get(..4) != Some(b"\x7fELF") {
            return Err(BuildError::KernelNotElf(kernel.clone()));
        }
    }
    if let Some(bzimage) = &config.bzimage {
        // The x86 boot protocol's header signature, "HdrS" at 0x202.
        let head = std::fs::read(bzimage).map_err(io("reading", bzimage))?;
        if head.get(0x202..0x206) != Some(b"HdrS") {
            return Err(BuildError::NotBzImage(bzimage.clone()));
        }
    }
    let out = &config.out_dir;
    std::fs::create_dir_all(out).map_err(io("creating", out))?;
    let agent = std::fs::read(&config.agent).map_err(io("reading", &config.agent))?;
    let agent_sha = hex::encode(Sha256::digest(&agent));
    let runtimes: Vec<(String, Vec<PathBuf>)> = config
        .runtimes
        .iter()
        .map(runtime_files)
        .collect::<Result<_, _>>()?;
    let inputs = inputs_hash(
        &agent_sha,
        [
            ("kernel", config.kernel.as_deref()),
            ("bzimage", config.bzimage.as_deref()),
            ("initrd", config.initrd.as_deref()),
        ],
        &runtimes,
    )?;
    if let Ok(existing) = Manifest::load(out)
        && existing.inputs_sha256 == inputs
        && existing.verify(out).is_ok()
    {
        return Ok(BuildReport {
            manifest: existing,
            rebuilt: false,
        });
    }

    let copy_in = |source: &Path, name: &str| -> Result<ImageFile, BuildError> {
        let target = out.join(name);
        std::fs::copy(source, &target).map_err(io("copying", source))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644))
            .map_err(io("chmod", &target))?;
        ImageFile::describe(out, name).map_err(io("hashing", &target))
    };
    let kernel = config
        .kernel
        .as_deref()
        .map(|k| copy_in(k, "vmlinux"))
        .transpose()?;
    let bzimage = config
        .bzimage
        .as_deref()
        .map(|k| copy_in(k, "bzImage"))
        .transpose()?;
    let initrd = config
        .initrd
        .as_deref()
        .map(|i| copy_in(i, "initrd"))
        .transpose()?;
    let mut rootfs = Vec::new();
    for (id, files) in &runtimes {
        let staging = out.join(format!(".staging-{id}"));
        let _ = std::fs::remove_dir_all(&staging);
        let result = (|| {
            stage_skeleton(&staging, &agent, id)?;
            for file in files {
                stage_file(&staging, file)?;
            }
            let name = format!("rootfs-{id}.ext4");
            let image = out.join(&name);
            make_ext4(&staging, &image, &format!("voltrun-{id}"))?;
            std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o644))
                .map_err(io("chmod", &image))?;
            ImageFile::describe(out, &name).map_err(io("hashing", &image))
        })();
        let _ = std::fs::remove_dir_all(&staging);
        rootfs.push(RootImage {
            runtime: id.clone(),
            image: result?,
        });
    }
    let manifest = Manifest {
        format: FORMAT,
        kernel,
        bzimage,
        initrd,
        boot_args: BOOT_ARGS.into(),
        rootfs,
        agent_sha256: agent_sha,
        inputs_sha256: inputs,
    };
    manifest
        .save(out)
        .map_err(io("writing the manifest in", out))?;
    Ok(BuildReport {
        manifest,
        rebuilt: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_usr_paths() {
        assert_eq!(
            usr_merged(Path::new("lib/x/libc.so.6")),
            Path::new("usr/lib/x/libc.so.6")
        );
        assert_eq!(
            usr_merged(Path::new("lib64/ld.so")),
            Path::new("usr/lib64/ld.so")
        );
        assert_eq!(
            usr_merged(Path::new("usr/bin/node")),
            Path::new("usr/bin/node")
        );
    }

    #[test]
    fn interpreters_are_detected_in_elf_headers() {
        assert_eq!(
            has_interpreter(&crate::guest_probe::spin_kernel()),
            Some(false)
        );
        assert_eq!(has_interpreter(b"#!/bin/sh\n"), None);
        // A dynamically linked executable of this host.
        let sh = std::fs::read("/bin/sh").unwrap();
        assert_eq!(has_interpreter(&sh), Some(true));
    }
}
