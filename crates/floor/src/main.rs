//! `voltrun-floor`: the benchmark floor. A bare HTTP server on the same stack as the VoltRun server
//! (axum 0.8 over hyper, a multi-threaded tokio runtime, `axum::serve` with connect info) that does
//! no work per request: no middleware, no authentication, no database. `scripts/bench-api.sh` runs it
//! next to the real server, so the API's figures can be read as a fraction of what the stack itself
//! does on the same machine.
//!
//! Routes: `GET /hello` answers `200 hello`; `GET /record` answers a fixed JSON body about the size
//! of a function record from `GET /api/functions/{id}`.
//!
//! Usage: `voltrun-floor [PORT]` (or `PORT=...`; default 8081). It listens on 127.0.0.1 only.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const DEFAULT_PORT: u16 = 8081;

/// The shape and size (~450 bytes) of a function record as the API returns it.
const RECORD: &str = r#"{"id":"019ab1c2-3d4e-7f60-8a9b-0c1d2e3f4a5b","name":"bench","description":"","runtime":"provided","handler":"function.handler","memory_mb":128,"timeout_s":30,"env":{},"version":1,"code_sha256":"3f0a9c8e5b7d1e2f4a6b8c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e0f","code_size_bytes":18,"code_kind":"source","created_at":"2025-01-01T00:00:00.000000Z","updated_at":"2025-01-01T00:00:00.000000Z"}"#;

async fn hello() -> &'static str {
    "hello"
}

async fn record() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], RECORD)
}

fn port() -> Result<u16, String> {
    let raw = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PORT").ok());
    match raw {
        None => Ok(DEFAULT_PORT),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|_| format!("{raw:?} is not a port number")),
    }
}

fn main() -> ExitCode {
    let port = match port() {
        Ok(port) => port,
        Err(e) => {
            eprintln!("voltrun-floor: {e}");
            return ExitCode::from(2);
        }
    };
    // The same runtime the server builds in its main.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("voltrun-floor: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: std::io::Result<()> = runtime.block_on(async {
        let app = Router::new()
            .route("/hello", get(hello))
            .route("/record", get(record));
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
        eprintln!("voltrun-floor: listening on {}", listener.local_addr()?);
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voltrun-floor: {e}");
            ExitCode::FAILURE
        }
    }
}
