//! Firecracker's host-initiated vsock handshake. The host connects to the VM's vsock Unix socket
//! and writes `CONNECT <port>\n`; Firecracker forwards the connection to that guest port and, once
//! the guest accepted it, answers `OK <host port>\n`; from then on the stream carries the guest's
//! bytes. When no guest listens (yet), Firecracker closes the connection instead.
//!
//! [`connect`] is the host's side. [`answer`] is Firecracker's side, for running the agent on the
//! host (tests) behind a plain Unix socket that behaves like the VM's vsock socket.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

/// The guest port the agent listens on.
pub const AGENT_PORT: u32 = 52;
/// Handshake lines are short; anything longer is not a handshake.
const MAX_LINE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no agent answered on vsock port {port} within {waited:?} (last: {last})")]
    Timeout {
        port: u32,
        waited: Duration,
        last: String,
    },
    #[error("unexpected handshake line {0:?}")]
    Unexpected(String),
    #[error("handshake i/o: {0}")]
    Io(#[from] std::io::Error),
}

async fn read_line<S: AsyncRead + Unpin>(stream: &mut S) -> Result<String, HandshakeError> {
    let mut line = Vec::new();
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte);
        if line.len() > MAX_LINE {
            return Err(HandshakeError::Unexpected(
                String::from_utf8_lossy(&line).into_owned(),
            ));
        }
    }
}

/// The longest socket path `connect` takes (`sun_path` is 108 bytes with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Connects to a Unix socket at any path length: a path too long for `sun_path` (a deep data
/// directory, a jail) is reached through `/proc/self/fd/<its directory>/<name>`, which the kernel
/// resolves like the path itself.
pub async fn connect_unix(path: &Path) -> std::io::Result<UnixStream> {
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return UnixStream::connect(path).await;
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return UnixStream::connect(path).await;
    };
    // Held open until the connection is made: the descriptor names the directory.
    let dir = std::fs::File::open(dir)?;
    let short = Path::new("/proc/self/fd")
        .join(std::os::fd::AsRawFd::as_raw_fd(&dir).to_string())
        .join(name);
    let stream = UnixStream::connect(&short).await;
    drop(dir);
    stream
}

/// One attempt: connect, ask for `port`, expect `OK <n>`.
async fn attempt(uds: &Path, port: u32) -> Result<UnixStream, HandshakeError> {
    let mut stream = connect_unix(uds).await?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    let line = read_line(&mut stream).await?;
    match line.strip_prefix("OK ") {
        Some(n) if n.trim().parse::<u32>().is_ok() => Ok(stream),
        _ => Err(HandshakeError::Unexpected(line)),
    }
}

/// What the agent, as a guest's init, writes on the console once it listens on its vsock port: a
/// host that can read the console (the emulated backend) connects only then.
pub const LISTENING_LINE: &str = "voltrun-agent: listening on vsock";

/// The pause between two handshake attempts while a Firecracker guest boots (in about 100 ms).
pub const RETRY_PAUSE: Duration = Duration::from_millis(5);

/// Connects to guest port `port` through the VM's vsock socket `uds`, retrying until `timeout`
/// (while the guest boots, the socket is absent or Firecracker refuses the port).
pub async fn connect(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, HandshakeError> {
    connect_paced(uds, port, timeout, RETRY_PAUSE).await
}

/// [`connect`], waiting `pause` between attempts. vhost-device-vsock (the emulated backend's vsock
/// device) stops answering for good when hundreds of attempts reach it while a slow guest's vsock
/// driver comes up (reproduced under load with 5 ms pauses, never with 200 ms ones).
pub async fn connect_paced(
    uds: &Path,
    port: u32,
    timeout: Duration,
    pause: Duration,
) -> Result<UnixStream, HandshakeError> {
    let deadline = Instant::now() + timeout;
    // Each attempt is bounded on its own: while a guest boots, the VMM may take a connection and
    // never answer it (Firecracker may; vhost-device-vsock loses a request made before the guest's
    // vsock driver is up, which held the first emulated boots for their whole timeout). The bound
    // grows, so that a slow guest's late answer is still waited for.
    let mut attempt_limit = Duration::from_millis(250);
    loop {
        let this_attempt = deadline.min(Instant::now() + attempt_limit);
        attempt_limit = (attempt_limit * 2).min(Duration::from_secs(4));
        let last = match tokio::time::timeout_at(this_attempt.into(), attempt(uds, port)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(HandshakeError::Unexpected(line))) => {
                return Err(HandshakeError::Unexpected(line));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "the handshake got no answer".to_string(),
        };
        if Instant::now() >= deadline {
            return Err(HandshakeError::Timeout {
                port,
                waited: timeout,
                last,
            });
        }
        tokio::time::sleep(pause).await;
    }
}

/// Firecracker's side of the handshake: reads `CONNECT <port>\n` and answers `OK <port>\n` when the
/// port is `expected`; otherwise fails (the caller drops the connection, as Firecracker does).
pub async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    expected: u32,
) -> Result<(), HandshakeError> {
    let line = read_line(stream).await?;
    match line
        .strip_prefix("CONNECT ")
        .map(|p| p.trim().parse::<u32>())
    {
        Some(Ok(port)) if port == expected => {
            stream.write_all(format!("OK {port}\n").as_bytes()).await?;
            Ok(())
        }
        _ => Err(HandshakeError::Unexpected(line)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[tokio::test]
    async fn sockets_deeper_than_sun_path_are_reached() {
        let base = std::env::temp_dir().join(format!("vlong-{}", std::process::id()));
        let deep = base.join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("s.sock");
        assert!(path.as_os_str().len() > 108);
        // Bound the same way, through the directory's descriptor (a plain bind fails too).
        let dir = std::fs::File::open(&deep).unwrap();
        let short = format!("/proc/self/fd/{}/s.sock", dir.as_raw_fd());
        let listener = tokio::net::UnixListener::bind(&short).unwrap();
        let (client, server) = tokio::join!(connect_unix(&path), listener.accept());
        client.unwrap();
        server.unwrap();
        assert!(
            UnixStream::connect(&path).await.is_err(),
            "a plain connect reached a path longer than sun_path"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// A VMM that takes the first connection and never answers it (as vhost-device-vsock does
    /// with one made before the guest's driver is up) does not hold the handshake to its deadline.
    #[tokio::test]
    async fn a_connection_that_is_never_answered_is_given_up_and_retried() {
        let dir = std::env::temp_dir().join(format!("vsilent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let vmm = tokio::spawn(async move {
            let (silent, _) = listener.accept().await.unwrap();
            let (mut answered, _) = listener.accept().await.unwrap();
            answer(&mut answered, 52).await.unwrap();
            (silent, answered)
        });
        let started = Instant::now();
        connect(&path, 52, Duration::from_secs(20)).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited {:?} on a connection nobody answered",
            started.elapsed()
        );
        drop(vmm.await.unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
