//! What one client may hold of the HTTP server: time to send a request and to read the response,
//! connections at once (in all and per address) and large uploads at once. `crate::edge` enforces
//! them.

use std::time::Duration;

use super::parse::number;

#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Seconds a client has to send a request's line and headers, or the connection is closed
    #[arg(
        long = "http-header-timeout-s",
        env = "HTTP_HEADER_TIMEOUT_S",
        default_value_t = 10,
        value_parser = number::<u64>(1, 3600)
    )]
    pub header_timeout_s: u64,
    /// Seconds a client has to send a request's whole body, or it gets a 408
    #[arg(
        long = "http-body-timeout-s",
        env = "HTTP_BODY_TIMEOUT_S",
        default_value_t = 60,
        value_parser = number::<u64>(1, 3600)
    )]
    pub body_timeout_s: u64,
    /// Client connections served at once; more wait to be accepted
    #[arg(
        long = "http-max-connections",
        env = "HTTP_MAX_CONNECTIONS",
        default_value_t = 512,
        value_parser = number::<usize>(1, 1_000_000)
    )]
    pub max_connections: usize,
    /// Connections one client address may hold at once; more are closed at once (0: no cap, e.g.
    /// behind a proxy)
    #[arg(
        long = "http-max-connections-per-address",
        env = "HTTP_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 64,
        value_parser = number::<usize>(0, 1_000_000)
    )]
    pub max_connections_per_address: usize,
    /// Seconds a response write may stay stuck on a client that does not read, before the
    /// connection is closed
    #[arg(
        long = "http-write-timeout-s",
        env = "HTTP_WRITE_TIMEOUT_S",
        default_value_t = 30,
        value_parser = number::<u64>(1, 3600)
    )]
    pub write_timeout_s: u64,
    /// Uploads over 1 MiB (function code) read at once; more get a 503 with Retry-After
    #[arg(
        long = "http-max-uploads",
        env = "HTTP_MAX_UPLOADS",
        default_value_t = 4,
        value_parser = number::<usize>(1, 10_000)
    )]
    pub max_uploads: usize,
}

/// What one client may hold of the HTTP server (see `edge`).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub write_timeout: Duration,
    /// 0: no cap.
    pub max_connections_per_address: usize,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub max_uploads: usize,
}

impl HttpArgs {
    pub(super) fn limits(&self) -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_secs(self.header_timeout_s),
            write_timeout: Duration::from_secs(self.write_timeout_s),
            max_connections_per_address: self.max_connections_per_address,
            body_timeout: Duration::from_secs(self.body_timeout_s),
            max_connections: self.max_connections,
            max_uploads: self.max_uploads,
        }
    }
}
