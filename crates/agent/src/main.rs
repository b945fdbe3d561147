//! `voltrun-agent`: the guest's init. In a Firecracker guest it runs as PID 1: mounts the
//! pseudo-filesystems, the scratch disk and the function's code, brings loopback up, then serves the
//! host on vsock port 52, one connection at a time; the runtime outlives a connection (a host
//! reconnects after restoring a snapshot). For tests on a host, `--unix <path>` serves a Unix socket
//! that answers Firecracker's vsock handshake itself, and `--no-init` skips everything that needs a
//! guest.
//!
//! Usage: voltrun-agent [--no-init] [--vsock-port N] [--unix PATH [--once]]

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use voltrun_agent::{guest, vsock};
use voltrun_sandbox::guest::{
    MountFlags, loopback_up, make_sticky_tmp, mount, vsock_accept, vsock_listen,
};

#[derive(Debug)]
struct Options {
    init: bool,
    port: u32,
    unix: Option<PathBuf>,
    once: bool,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        init: true,
        port: vsock::AGENT_PORT,
        unix: None,
        once: false,
    };
    let mut args = args.skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--no-init" => options.init = false,
            "--once" => options.once = true,
            "--vsock-port" => {
                let value = args.next().ok_or("--vsock-port needs a value")?;
                options.port = value.parse().map_err(|_| format!("bad port {value}"))?;
            }
            "--unix" => options.unix = Some(args.next().ok_or("--unix needs a path")?.into()),
            // The kernel passes unknown boot parameters to init; they are not ours to refuse.
            other if std::process::id() == 1 => {
                let _ = other;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(options)
}

/// What a guest needs before the runtime can start. Failures are reported and the agent carries
/// on: the host learns about a broken image from the runtime failing, with these lines in its log.
fn init_guest() {
    let quiet = MountFlags {
        no_suid: true,
        no_dev: true,
        no_exec: true,
        ..MountFlags::default()
    };
    let tmp = MountFlags {
        no_suid: true,
        no_dev: true,
        ..MountFlags::default()
    };
    let code = MountFlags {
        read_only: true,
        no_suid: true,
        no_dev: true,
        ..MountFlags::default()
    };
    let steps: Vec<(&str, &str, &str, MountFlags, Option<&str>)> = vec![
        ("proc", "/proc", "proc", quiet, None),
        ("sysfs", "/sys", "sysfs", quiet, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MountFlags {
                no_suid: true,
                no_exec: true,
                ..MountFlags::default()
            },
            None,
        ),
    ];
    let mount_all = |steps: Vec<(&str, &str, &str, MountFlags, Option<&str>)>| {
        for (source, target, fstype, flags, data) in steps {
            if let Err(e) = mount(source, Path::new(target), fstype, flags, data) {
                eprintln!("voltrun-agent: mounting {source} on {target}: {e}");
            }
        }
    };
    mount_all(steps);
    // The drives are looked for only now that /dev is mounted: before it, no device node exists
    // (the kernel does not mount devtmpfs itself), and a booted guest would get neither its scratch
    // disk nor its code.
    let mut drives = Vec::new();
    // The per-VM scratch disk is /tmp; without one, a small tmpfs.
    if Path::new("/dev/vdb").exists() {
        drives.push(("/dev/vdb", "/tmp", "ext4", tmp, None));
    } else {
        drives.push(("tmpfs", "/tmp", "tmpfs", tmp, Some("size=64m,mode=1777")));
    }
    if Path::new("/dev/vdc").exists() {
        drives.push(("/dev/vdc", "/var/task", "ext4", code, None));
    }
    // The function's layers, merged, when it has any (Lambda mounts them at /opt).
    if Path::new("/dev/vdd").exists() {
        drives.push(("/dev/vdd", "/opt", "ext4", code, None));
    }
    mount_all(drives);
    // The scratch disk's root belongs to root; the runtime runs unprivileged.
    if let Err(e) = make_sticky_tmp(Path::new("/tmp")) {
        eprintln!("voltrun-agent: making /tmp writable: {e}");
    }
    if let Err(e) = loopback_up() {
        eprintln!("voltrun-agent: bringing loopback up: {e}");
    }
}

async fn serve_vsock(port: u32, pid1: bool) -> std::io::Result<()> {
    let listener = std::sync::Arc::new(vsock_listen(port)?);
    if pid1 {
        eprintln!("{} port {port}", vsock::LISTENING_LINE);
    }
    let mut agent = guest::Agent::new(pid1);
    loop {
        let listener = listener.clone();
        let fd: OwnedFd = tokio::task::spawn_blocking(move || vsock_accept(&listener))
            .await
            .map_err(std::io::Error::other)??;
        // A connected vsock socket is a plain byte stream; UnixStream is used for reading and
        // writing only (never for its address).
        let stream = std::os::unix::net::UnixStream::from(fd);
        stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(stream)?;
        if let Err(e) = agent.serve(stream).await {
            eprintln!("voltrun-agent: {e}");
        }
    }
}

async fn serve_unix(path: &Path, port: u32, once: bool, pid1: bool) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    let mut agent = guest::Agent::new(pid1);
    loop {
        let (mut stream, _) = listener.accept().await?;
        // Firecracker's side of the host-initiated handshake.
        if let Err(e) = vsock::answer(&mut stream, port).await {
            eprintln!("voltrun-agent: handshake: {e}");
            continue;
        }
        if let Err(e) = agent.serve(stream).await {
            eprintln!("voltrun-agent: {e}");
        }
        if once {
            return Ok(());
        }
    }
}

fn main() -> ExitCode {
    let options = match parse(std::env::args()) {
        Ok(options) => options,
        Err(e) => {
            eprintln!(
                "voltrun-agent: {e}\nusage: voltrun-agent [--no-init] [--vsock-port N] [--unix PATH [--once]]"
            );
            return ExitCode::from(2);
        }
    };
    let pid1 = std::process::id() == 1;
    if options.init && pid1 {
        init_guest();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("voltrun-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        if pid1 {
            tokio::spawn(guest::reap_orphans());
        }
        match &options.unix {
            Some(path) => serve_unix(path, options.port, options.once, pid1).await,
            None => serve_vsock(options.port, pid1).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voltrun-agent: {e}");
            // As init, exiting panics the kernel; with `panic=1 reboot=k` the VM then ends, which is
            // what the host expects from a guest whose agent cannot serve.
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        std::iter::once("voltrun-agent".to_string()).chain(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn options() {
        let o = parse(args(&["--no-init", "--unix", "/tmp/a.sock", "--once"])).unwrap();
        assert!(!o.init && o.once);
        assert_eq!(o.unix.as_deref(), Some(Path::new("/tmp/a.sock")));
        assert_eq!(o.port, 52);
        assert_eq!(parse(args(&["--vsock-port", "1024"])).unwrap().port, 1024);
        assert!(parse(args(&["--bogus"])).is_err());
        assert!(parse(args(&["--unix"])).is_err());
    }
}
