//! The framed, versioned protocol between the host and the guest agent, over one vsock stream.
//!
//! A frame is `length: u32 (big-endian) | version: u8 | kind: u8 | body`, where `length` counts the
//! bytes after itself (so at least 2) and never exceeds [`MAX_FRAME_BYTES`]. The body's fields
//! follow in a fixed order per kind: integers big-endian, strings and byte strings as a `u32`
//! length then the bytes, lists as a `u32` count then the items.
//!
//! Decoding never panics and never allocates more than the frame it was given: a frame that is too
//! long, too short, of an unknown version or kind, truncated inside a field, with invalid UTF-8 or
//! with bytes left over is a [`ProtocolError`].
//!
//! One file on purpose (past 500 lines): every message's encoder and decoder sit side by side, so a
//! change to a message's layout is made to both at once.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version this build speaks.
pub const VERSION: u8 = 4;
/// The largest frame (after the length prefix): a 6 MiB response payload plus headroom.
pub const MAX_FRAME_BYTES: u32 = 8 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("frame of {0} bytes exceeds the maximum of {MAX_FRAME_BYTES}")]
    TooLarge(u64),
    #[error("frame of {0} bytes is shorter than its header")]
    TooShort(u32),
    #[error("unsupported protocol version {0} (this side speaks {VERSION})")]
    Version(u8),
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("frame ends inside a field")]
    Truncated,
    #[error("{0} bytes left over after the message")]
    TrailingBytes(usize),
    #[error("a string field is not valid UTF-8")]
    InvalidUtf8,
    #[error("invalid value {value} for {field}")]
    InvalidValue { field: &'static str, value: u8 },
    #[error("the stream ended inside a frame")]
    UnexpectedEof,
    #[error("i/o error: {0}")]
    Io(String),
}

/// Which output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What the host asks the agent to run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartSpec {
    /// The runtime's command line (interpreter and bootstrap, or `/var/task/bootstrap`).
    pub command: Vec<String>,
    /// The runtime's whole environment (nothing is inherited from the agent).
    pub env: Vec<(String, String)>,
    pub cwd: String,
    /// The Runtime API's port on the guest's 127.0.0.1 (`AWS_LAMBDA_RUNTIME_API` must name it).
    pub runtime_api_port: u16,
    /// Processes and threads the runtime's user may have (`RLIMIT_NPROC`) where the agent runs it as
    /// an unprivileged user (in a guest); `0` for no limit.
    pub max_processes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Agent → host, first on every connection. `runtime_ready`: a runtime started on an earlier
    /// connection is waiting for its next invocation (a guest restored from a snapshot, or a host
    /// that detached); the host sends `Resume` instead of `Start`.
    Hello {
        agent_version: String,
        pid1: bool,
        runtime_ready: bool,
    },
    /// Host → agent: start the runtime.
    Start(StartSpec),
    /// Agent → host: the runtime asked for its first invocation (initialisation is done).
    Ready { init_ms: u32 },
    /// Agent → host: the runtime reported a failed initialisation (`init/error`).
    InitError { error_type: String, message: String },
    /// Host → agent: one invocation.
    Invoke {
        request_id: String,
        deadline_unix_ms: i64,
        function_arn: String,
        event: Vec<u8>,
    },
    /// Agent → host: the invocation's result.
    Response {
        request_id: String,
        payload: Vec<u8>,
    },
    /// Agent → host: the function failed (`invocation/{id}/error`).
    Error {
        request_id: String,
        error_type: String,
        message: String,
    },
    /// Agent → host: the response was larger than the Runtime API allows.
    ResponseTooLarge { request_id: String, size: u64 },
    /// Agent → host: one line the runtime wrote, stamped when the agent read it (milliseconds since
    /// the Unix epoch on the guest's clock).
    Log {
        stream: Stream,
        unix_ms: i64,
        line: String,
    },
    /// Agent → host: the runtime process ended; `out_of_memory` when the guest kernel's OOM killer
    /// ran meanwhile (the VM's memory is the function's).
    Exited { status: String, out_of_memory: bool },
    /// Host → agent: stop the runtime and close.
    Shutdown,
    /// Host → agent: close this connection but keep the runtime waiting (before a snapshot: vsock
    /// connections do not survive one).
    Detach,
    /// Host → agent, on a connection whose hello said `runtime_ready`: carry on with the runtime.
    /// A restored guest's clock stands where the snapshot left it; the agent sets it to `unix_ms`.
    /// The agent answers `Ready` with the original initialisation time.
    Resume { unix_ms: i64 },
    /// Agent → host, before each invocation's result: the runtime's peak resident memory during it.
    Usage { memory_peak_bytes: u64 },
    /// Host → agent, before `Start`: the host's clock. A booted guest's clock comes from whatever
    /// the VMM offers (an emulated RTC is read to the second); an agent that is the guest's init sets
    /// it to `unix_ms`, so that log lines are stamped on the host's time. No answer.
    Clock { unix_ms: i64 },
}

impl Message {
    fn kind(&self) -> u8 {
        match self {
            Message::Hello { .. } => 1,
            Message::Start(_) => 2,
            Message::Ready { .. } => 3,
            Message::InitError { .. } => 4,
            Message::Invoke { .. } => 5,
            Message::Response { .. } => 6,
            Message::Error { .. } => 7,
            Message::ResponseTooLarge { .. } => 8,
            Message::Log { .. } => 9,
            Message::Exited { .. } => 10,
            Message::Shutdown => 11,
            Message::Detach => 12,
            Message::Resume { .. } => 13,
            Message::Usage { .. } => 14,
            Message::Clock { .. } => 15,
        }
    }
}

/// The local clock in milliseconds since the Unix epoch, as log lines and `Resume` carry it.
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// --- encoding --------------------------------------------------------------------------------------

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn len(&mut self, n: usize) -> Result<(), ProtocolError> {
        let n = u32::try_from(n).map_err(|_| ProtocolError::TooLarge(n as u64))?;
        self.u32(n);
        Ok(())
    }
    fn bytes(&mut self, v: &[u8]) -> Result<(), ProtocolError> {
        self.len(v.len())?;
        self.0.extend_from_slice(v);
        Ok(())
    }
    fn str(&mut self, v: &str) -> Result<(), ProtocolError> {
        self.bytes(v.as_bytes())
    }
}

/// Encodes one message as a whole frame, length prefix included.
pub fn encode(message: &Message) -> Result<Vec<u8>, ProtocolError> {
    let mut w = Writer(Vec::with_capacity(64));
    w.u32(0); // the length, filled in below
    w.u8(VERSION);
    w.u8(message.kind());
    match message {
        Message::Hello {
            agent_version,
            pid1,
            runtime_ready,
        } => {
            w.str(agent_version)?;
            w.u8(u8::from(*pid1));
            w.u8(u8::from(*runtime_ready));
        }
        Message::Start(spec) => {
            w.len(spec.command.len())?;
            for arg in &spec.command {
                w.str(arg)?;
            }
            w.len(spec.env.len())?;
            for (k, v) in &spec.env {
                w.str(k)?;
                w.str(v)?;
            }
            w.str(&spec.cwd)?;
            w.u16(spec.runtime_api_port);
            w.u32(spec.max_processes);
        }
        Message::Ready { init_ms } => w.u32(*init_ms),
        Message::InitError {
            error_type,
            message,
        } => {
            w.str(error_type)?;
            w.str(message)?;
        }
        Message::Invoke {
            request_id,
            deadline_unix_ms,
            function_arn,
            event,
        } => {
            w.str(request_id)?;
            w.i64(*deadline_unix_ms);
            w.str(function_arn)?;
            w.bytes(event)?;
        }
        Message::Response {
            request_id,
            payload,
        } => {
            w.str(request_id)?;
            w.bytes(payload)?;
        }
        Message::Error {
            request_id,
            error_type,
            message,
        } => {
            w.str(request_id)?;
            w.str(error_type)?;
            w.str(message)?;
        }
        Message::ResponseTooLarge { request_id, size } => {
            w.str(request_id)?;
            w.u64(*size);
        }
        Message::Log {
            stream,
            unix_ms,
            line,
        } => {
            w.u8(match stream {
                Stream::Stdout => 1,
                Stream::Stderr => 2,
            });
            w.i64(*unix_ms);
            w.str(line)?;
        }
        Message::Exited {
            status,
            out_of_memory,
        } => {
            w.str(status)?;
            w.u8(u8::from(*out_of_memory));
        }
        Message::Shutdown | Message::Detach => {}
        Message::Resume { unix_ms } | Message::Clock { unix_ms } => w.i64(*unix_ms),
        Message::Usage { memory_peak_bytes } => w.u64(*memory_peak_bytes),
    }
    let length = w.0.len() - 4;
    if length as u64 > u64::from(MAX_FRAME_BYTES) {
        return Err(ProtocolError::TooLarge(length as u64));
    }
    let length = u32::try_from(length).map_err(|_| ProtocolError::TooLarge(length as u64))?;
    w.0[..4].copy_from_slice(&length.to_be_bytes());
    Ok(w.0)
}

// --- decoding --------------------------------------------------------------------------------------

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.0.len() < n {
            return Err(ProtocolError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ProtocolError> {
        self.array().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        self.array().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        self.array().map(u64::from_be_bytes)
    }
    fn i64(&mut self) -> Result<i64, ProtocolError> {
        self.array().map(i64::from_be_bytes)
    }
    fn bytes(&mut self) -> Result<Vec<u8>, ProtocolError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn str(&mut self) -> Result<String, ProtocolError> {
        let n = self.u32()? as usize;
        let raw = self.take(n)?;
        std::str::from_utf8(raw)
            .map(str::to_string)
            .map_err(|_| ProtocolError::InvalidUtf8)
    }
    /// A list count, refused when the frame cannot hold that many items of `min_item` bytes (so a
    /// forged count cannot make the decoder reserve memory it will never fill).
    fn count(&mut self, min_item: usize) -> Result<usize, ProtocolError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item) > self.0.len() {
            return Err(ProtocolError::Truncated);
        }
        Ok(n)
    }
    fn bool(&mut self, field: &'static str) -> Result<bool, ProtocolError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(ProtocolError::InvalidValue { field, value }),
        }
    }
}

/// Decodes the part of a frame after its length prefix: version, kind and body.
pub fn decode_body(frame: &[u8]) -> Result<Message, ProtocolError> {
    if frame.len() as u64 > u64::from(MAX_FRAME_BYTES) {
        return Err(ProtocolError::TooLarge(frame.len() as u64));
    }
    let mut r = Reader(frame);
    let version = r
        .u8()
        .map_err(|_| ProtocolError::TooShort(frame.len() as u32))?;
    if version != VERSION {
        return Err(ProtocolError::Version(version));
    }
    let kind = r
        .u8()
        .map_err(|_| ProtocolError::TooShort(frame.len() as u32))?;
    let message = match kind {
        1 => Message::Hello {
            agent_version: r.str()?,
            pid1: r.bool("hello.pid1")?,
            runtime_ready: r.bool("hello.runtime_ready")?,
        },
        2 => {
            let n = r.count(4)?;
            let mut command = Vec::with_capacity(n);
            for _ in 0..n {
                command.push(r.str()?);
            }
            let n = r.count(8)?;
            let mut env = Vec::with_capacity(n);
            for _ in 0..n {
                env.push((r.str()?, r.str()?));
            }
            Message::Start(StartSpec {
                command,
                env,
                cwd: r.str()?,
                runtime_api_port: r.u16()?,
                max_processes: r.u32()?,
            })
        }
        3 => Message::Ready { init_ms: r.u32()? },
        4 => Message::InitError {
            error_type: r.str()?,
            message: r.str()?,
        },
        5 => Message::Invoke {
            request_id: r.str()?,
            deadline_unix_ms: r.i64()?,
            function_arn: r.str()?,
            event: r.bytes()?,
        },
        6 => Message::Response {
            request_id: r.str()?,
            payload: r.bytes()?,
        },
        7 => Message::Error {
            request_id: r.str()?,
            error_type: r.str()?,
            message: r.str()?,
        },
        8 => Message::ResponseTooLarge {
            request_id: r.str()?,
            size: r.u64()?,
        },
        9 => Message::Log {
            stream: match r.u8()? {
                1 => Stream::Stdout,
                2 => Stream::Stderr,
                value => {
                    return Err(ProtocolError::InvalidValue {
                        field: "log.stream",
                        value,
                    });
                }
            },
            unix_ms: r.i64()?,
            line: r.str()?,
        },
        10 => Message::Exited {
            status: r.str()?,
            out_of_memory: r.bool("exited.out_of_memory")?,
        },
        11 => Message::Shutdown,
        12 => Message::Detach,
        13 => Message::Resume { unix_ms: r.i64()? },
        15 => Message::Clock { unix_ms: r.i64()? },
        14 => Message::Usage {
            memory_peak_bytes: r.u64()?,
        },
        other => return Err(ProtocolError::UnknownKind(other)),
    };
    if !r.0.is_empty() {
        return Err(ProtocolError::TrailingBytes(r.0.len()));
    }
    Ok(message)
}

/// Decodes one whole frame (length prefix included) from the start of `bytes`; returns the message
/// and how many bytes it used. `Err(Truncated)` when `bytes` does not hold the whole frame yet.
pub fn decode(bytes: &[u8]) -> Result<(Message, usize), ProtocolError> {
    let mut r = Reader(bytes);
    let length = r.u32()?;
    check_length(length)?;
    let body = r.take(length as usize)?;
    Ok((decode_body(body)?, 4 + length as usize))
}

fn check_length(length: u32) -> Result<(), ProtocolError> {
    if length > MAX_FRAME_BYTES {
        return Err(ProtocolError::TooLarge(u64::from(length)));
    }
    if length < 2 {
        return Err(ProtocolError::TooShort(length));
    }
    Ok(())
}

fn io_error(e: std::io::Error) -> ProtocolError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ProtocolError::UnexpectedEof
    } else {
        ProtocolError::Io(e.to_string())
    }
}

/// Reads one message. `Ok(None)` when the stream ends cleanly between frames. An oversized length is
/// refused before anything more is read or allocated.
pub async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Message>, ProtocolError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = reader.read(&mut prefix[got..]).await.map_err(io_error)?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(ProtocolError::UnexpectedEof)
            };
        }
        got += n;
    }
    let length = u32::from_be_bytes(prefix);
    check_length(length)?;
    let mut body = vec![0u8; length as usize];
    reader.read_exact(&mut body).await.map_err(io_error)?;
    decode_body(&body).map(Some)
}

/// Writes one message as a frame.
pub async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &Message,
) -> Result<(), ProtocolError> {
    let frame = encode(message)?;
    writer.write_all(&frame).await.map_err(io_error)?;
    writer.flush().await.map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_has_length_version_kind_and_body() {
        let frame = encode(&Message::Ready { init_ms: 7 }).unwrap();
        assert_eq!(frame, [0, 0, 0, 6, VERSION, 3, 0, 0, 0, 7]);
        assert_eq!(decode(&frame).unwrap(), (Message::Ready { init_ms: 7 }, 10));
    }

    #[test]
    fn refusals_are_typed() {
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(ProtocolError::TooLarge(0xffff_ffff))
        );
        assert_eq!(decode(&[0, 0, 0, 1, 1]), Err(ProtocolError::TooShort(1)));
        assert_eq!(decode(&[0, 0, 0, 2, 9, 3]), Err(ProtocolError::Version(9)));
        assert_eq!(
            decode(&[0, 0, 0, 2, VERSION, 200]),
            Err(ProtocolError::UnknownKind(200))
        );
        assert_eq!(
            decode(&[0, 0, 0, 3, VERSION, 11, 0]),
            Err(ProtocolError::TrailingBytes(1))
        );
        assert_eq!(
            decode(&[0, 0, 0, 9, VERSION, 10, 0, 0, 0, 2, 0xff, 0xfe, 0]),
            Err(ProtocolError::InvalidUtf8)
        );
        assert_eq!(
            decode(&[0, 0, 0, 3, VERSION, 9, 3]),
            Err(ProtocolError::InvalidValue {
                field: "log.stream",
                value: 3
            })
        );
        // A list count larger than the frame could hold is refused before allocating.
        assert_eq!(
            decode(&[0, 0, 0, 6, VERSION, 2, 0xff, 0xff, 0xff, 0xff]),
            Err(ProtocolError::Truncated)
        );
    }

    #[test]
    fn an_oversized_message_is_refused_when_encoding() {
        let message = Message::Response {
            request_id: "r".into(),
            payload: vec![0; MAX_FRAME_BYTES as usize],
        };
        assert!(matches!(encode(&message), Err(ProtocolError::TooLarge(_))));
    }
}
