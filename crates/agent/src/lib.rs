//! VoltRun's guest agent, library half: what the host and the guest share.
//!
//! - [`protocol`]: the framed, versioned messages carried over vsock.
//! - [`vsock`]: Firecracker's `CONNECT <port>` / `OK <port>` handshake on the host's Unix socket.
//! - [`host`]: the host's session with one agent (start the runtime, invoke, collect logs).
//! - [`guest`]: the agent's side of a session (the Runtime API it serves to the runtime).
//!
//! The binary (`src/main.rs`) is PID 1 in the guest: it mounts what the runtime needs, brings the
//! loopback interface up and serves the host's connections on vsock port [`vsock::AGENT_PORT`].

pub mod guest;
pub mod host;
pub mod protocol;
pub mod vsock;
