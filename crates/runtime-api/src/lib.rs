//! The AWS Lambda Runtime API, served by the platform to one instance on the instance's own loopback
//! (`AWS_LAMBDA_RUNTIME_API`): by the engine inside a namespace sandbox's network namespace, and by
//! the guest agent inside a microVM. The runtime long-polls `invocation/next`, then posts a response or an
//! error for that request id; `init/error` reports a failed start. Official runtime interface clients
//! (awslambdaric, aws-lambda-ric) speak exactly this protocol.

pub mod output;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{Mutex, mpsc, oneshot};

/// Lambda's limit on a synchronous response payload.
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;

/// What is kept of an error's type and message (a runtime may post megabytes of either; they are
/// stored with the execution and shown to the caller).
pub const MAX_ERROR_TYPE_BYTES: usize = 256;
pub const MAX_ERROR_MESSAGE_BYTES: usize = 4 * 1024;

/// An error document's size at most (its stack trace included): what is kept of it is far smaller.
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Connections one instance's Runtime API serves at once. A runtime needs one or two; the rest wait
/// in the kernel's accept queue, holding no descriptor or memory of the server's.
pub const MAX_CONNECTIONS: usize = 8;

/// Signals waiting for the instance to read them. The instance reads the first (ready, or why the
/// start failed) and stops listening once it runs; later ones are dropped, not queued without end.
const SIGNAL_QUEUE: usize = 2;

/// One invocation handed to the runtime.
#[derive(Debug)]
pub struct NextInvocation {
    pub request_id: String,
    pub event: Bytes,
    pub deadline_unix_ms: i64,
    pub function_arn: String,
    /// Where the runtime's answer goes.
    pub reply: oneshot::Sender<RuntimeReply>,
}

/// What the runtime said about an invocation.
#[derive(Debug)]
pub enum RuntimeReply {
    Response(Bytes),
    Error { error_type: String, message: String },
    ResponseTooLarge(usize),
}

/// A failed initialisation, as reported to `init/error`.
#[derive(Debug, Clone)]
pub struct InitFailure {
    pub error_type: String,
    pub message: String,
}

/// Signals from the API to the instance that owns it.
#[derive(Debug)]
pub enum RuntimeSignal {
    /// The runtime asked for its first invocation: initialisation is done.
    Ready,
    InitError(InitFailure),
}

struct ApiState {
    next: Mutex<mpsc::Receiver<NextInvocation>>,
    current: Mutex<Option<(String, oneshot::Sender<RuntimeReply>)>>,
    signals: mpsc::Sender<RuntimeSignal>,
    ready_sent: std::sync::atomic::AtomicBool,
}

/// The channel an instance reads its runtime's readiness and init errors from (bounded).
pub fn signal_channel() -> (mpsc::Sender<RuntimeSignal>, mpsc::Receiver<RuntimeSignal>) {
    mpsc::channel(SIGNAL_QUEUE)
}

/// Serves `router` on `listener` with at most [`MAX_CONNECTIONS`] connections at a time.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(LimitedListener::new(listener, MAX_CONNECTIONS), router).await
}

/// A listener that accepts only while fewer than its limit of connections are open: each accepted
/// connection holds a permit until it is dropped.
#[derive(Debug)]
pub struct LimitedListener {
    inner: tokio::net::TcpListener,
    permits: Arc<tokio::sync::Semaphore>,
}

impl LimitedListener {
    pub fn new(inner: tokio::net::TcpListener, limit: usize) -> Self {
        Self {
            inner,
            permits: Arc::new(tokio::sync::Semaphore::new(limit)),
        }
    }
}

/// A connection and the permit it holds.
#[derive(Debug)]
pub struct LimitedConnection {
    stream: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedConnection;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                // The semaphore is never closed; wait for ever rather than spin if it were.
                std::future::pending::<()>().await;
                continue;
            };
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    return (
                        LimitedConnection {
                            stream,
                            _permit: permit,
                        },
                        addr,
                    );
                }
                // Out of descriptors or a connection reset before accept: try again shortly
                // rather than spin (what axum's own listener does).
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl tokio::io::AsyncRead for LimitedConnection {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for LimitedConnection {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Builds the router for one instance. Invocations arrive on `next`; readiness and init errors are
/// reported on `signals` (from [`signal_channel`]).
pub fn router(
    next: mpsc::Receiver<NextInvocation>,
    signals: mpsc::Sender<RuntimeSignal>,
) -> Router {
    let state = Arc::new(ApiState {
        next: Mutex::new(next),
        current: Mutex::new(None),
        signals,
        ready_sent: std::sync::atomic::AtomicBool::new(false),
    });
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/error",
            post(error).layer(DefaultBodyLimit::max(MAX_ERROR_BODY_BYTES)),
        )
        .route(
            "/2018-06-01/runtime/init/error",
            post(init_error).layer(DefaultBodyLimit::max(MAX_ERROR_BODY_BYTES)),
        )
        // Error documents are read whole; `response` reads its body itself, within the same limit.
        .layer(DefaultBodyLimit::max(MAX_RESPONSE_BYTES + 1))
        .with_state(state)
}

async fn next_invocation(State(state): State<Arc<ApiState>>) -> Response {
    if !state
        .ready_sent
        .swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        let _ = state.signals.try_send(RuntimeSignal::Ready);
    }
    let invocation = state.next.lock().await.recv().await;
    let Some(inv) = invocation else {
        // The instance is shutting down; the runtime will be killed.
        return StatusCode::GONE.into_response();
    };
    *state.current.lock().await = Some((inv.request_id.clone(), inv.reply));
    let mut headers = HeaderMap::new();
    let pairs = [
        ("lambda-runtime-aws-request-id", inv.request_id.clone()),
        (
            "lambda-runtime-deadline-ms",
            inv.deadline_unix_ms.to_string(),
        ),
        (
            "lambda-runtime-invoked-function-arn",
            inv.function_arn.clone(),
        ),
        (
            "lambda-runtime-trace-id",
            format!("Root=1-{}", inv.request_id.replace('-', "")),
        ),
        ("content-type", "application/json".to_string()),
    ];
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    (StatusCode::OK, headers, inv.event).into_response()
}

async fn take_current(state: &ApiState, id: &str) -> Option<oneshot::Sender<RuntimeReply>> {
    let mut current = state.current.lock().await;
    match current.take() {
        Some((current_id, reply)) if current_id == id => Some(reply),
        other => {
            *current = other;
            None
        }
    }
}

/// What a response body turned out to be.
enum ResponseBody {
    /// The whole body, with the trailers a streamed (chunked) response may end with.
    Complete(Bytes, Option<HeaderMap>),
    /// Over the limit: how many bytes had arrived when reading stopped.
    TooLarge(usize),
    /// The connection broke off before the body ended.
    Broken(String),
}

/// Reads a response body up to [`MAX_RESPONSE_BYTES`], keeping its trailers: a streamed response
/// (`Lambda-Runtime-Function-Response-Mode: streaming`, as `aws-lambda-ric` sends for
/// `awslambda.streamifyResponse` handlers) reports a failure after its data, in the trailers
/// `Lambda-Runtime-Function-Error-Type` and `Lambda-Runtime-Function-Error-Body`.
async fn read_body(mut body: Body) -> ResponseBody {
    let mut data = Vec::new();
    let mut trailers = None;
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => return ResponseBody::Complete(Bytes::from(data), trailers),
            Some(Err(e)) => return ResponseBody::Broken(e.to_string()),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(chunk) => {
                    if data.len() + chunk.len() > MAX_RESPONSE_BYTES {
                        return ResponseBody::TooLarge(data.len() + chunk.len());
                    }
                    data.extend_from_slice(&chunk);
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers.get_or_insert_with(HeaderMap::new).extend(t);
                    }
                }
            },
        }
    }
}

/// The failure a streamed response reported in its trailers, if it did: the type, and the error
/// document (base64 JSON) when it came with one.
fn trailer_error(trailers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine as _;
    trailers.get("lambda-runtime-function-error-type")?;
    let doc = trailers
        .get("lambda-runtime-function-error-body")
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.as_bytes())
                .ok()
        })
        .unwrap_or_default();
    Some(parse_error(trailers, &doc))
}

async fn response(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> StatusCode {
    let Some(reply) = take_current(&state, &id).await else {
        return StatusCode::BAD_REQUEST;
    };
    match read_body(body).await {
        ResponseBody::Complete(bytes, trailers) => {
            match trailers.as_ref().and_then(trailer_error) {
                Some((error_type, message)) => {
                    let _ = reply.send(RuntimeReply::Error {
                        error_type,
                        message,
                    });
                }
                None => {
                    let _ = reply.send(RuntimeReply::Response(bytes));
                }
            }
            StatusCode::ACCEPTED
        }
        ResponseBody::TooLarge(read) => {
            // The whole size when the runtime declared it; reading stopped at the limit.
            let declared = headers
                .get("content-length")
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
            let size = declared.map_or(read, |d| d.max(read));
            let _ = reply.send(RuntimeReply::ResponseTooLarge(size));
            StatusCode::PAYLOAD_TOO_LARGE
        }
        ResponseBody::Broken(why) => {
            let _ = reply.send(RuntimeReply::Error {
                error_type: "Runtime.TruncatedResponse".into(),
                message: format!("the runtime's response broke off: {why}"),
            });
            StatusCode::BAD_REQUEST
        }
    }
}

/// Lambda's error document: `{"errorType", "errorMessage", "stackTrace"}`; the type may also come in
/// the `Lambda-Runtime-Function-Error-Type` header.
fn parse_error(headers: &HeaderMap, body: &[u8]) -> (String, String) {
    // Only the two fields that are kept are read: a stack trace or any other member is skipped
    // without being built (a `Value` of a JSON array takes many times the body's size).
    #[derive(serde::Deserialize, Default)]
    struct ErrorDoc {
        #[serde(rename = "errorType")]
        error_type: Option<String>,
        #[serde(rename = "errorMessage")]
        error_message: Option<String>,
    }
    let doc: ErrorDoc = serde_json::from_slice(body).unwrap_or_default();
    let header_type = headers
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let error_type = doc
        .error_type
        .or(header_type)
        .unwrap_or_else(|| "Unhandled".into());
    let message = match doc.error_message.as_deref() {
        Some(message) => cut(message, MAX_ERROR_MESSAGE_BYTES),
        None => cut(
            &String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_MESSAGE_BYTES + 4)]),
            MAX_ERROR_MESSAGE_BYTES,
        ),
    };
    (cut(&error_type, MAX_ERROR_TYPE_BYTES), message)
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

async fn error(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let Some(reply) = take_current(&state, &id).await else {
        return StatusCode::BAD_REQUEST;
    };
    let (error_type, message) = parse_error(&headers, &body);
    let _ = reply.send(RuntimeReply::Error {
        error_type,
        message,
    });
    StatusCode::ACCEPTED
}

async fn init_error(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    // Initialisation ends once: with the first `next` (ready) or the first init error. Later calls
    // are refused, as Lambda refuses them, and cost nothing.
    if state
        .ready_sent
        .swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        return StatusCode::FORBIDDEN;
    }
    let (error_type, message) = parse_error(&headers, &body);
    let _ = state
        .signals
        .try_send(RuntimeSignal::InitError(InitFailure {
            error_type,
            message,
        }));
    StatusCode::ACCEPTED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_documents_and_the_header_fallback() {
        let doc = br#"{"errorType": "ValueError", "errorMessage": "bad\nline", "stackTrace": []}"#;
        let (t, m) = parse_error(&HeaderMap::new(), doc);
        assert_eq!((t.as_str(), m.as_str()), ("ValueError", "bad\nline"));
        let mut headers = HeaderMap::new();
        headers.insert(
            "lambda-runtime-function-error-type",
            HeaderValue::from_static("Runtime.X"),
        );
        let (t, m) = parse_error(&headers, b"not json");
        assert_eq!((t.as_str(), m.as_str()), ("Runtime.X", "not json"));
    }

    async fn post(router: &Router, path: &str, body: Vec<u8>) -> StatusCode {
        use tower::ServiceExt as _;
        let request = axum::http::Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        router.clone().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn init_errors_are_taken_once_and_error_documents_are_small() {
        let (_next_tx, next_rx) = mpsc::channel(1);
        let (signal_tx, mut signals) = signal_channel();
        let router = router(next_rx, signal_tx);
        let init = "/2018-06-01/runtime/init/error";
        let doc = br#"{"errorType": "Boom", "errorMessage": "init failed"}"#.to_vec();
        assert_eq!(post(&router, init, doc.clone()).await, StatusCode::ACCEPTED);
        for _ in 0..100 {
            assert_eq!(
                post(&router, init, doc.clone()).await,
                StatusCode::FORBIDDEN
            );
        }
        assert!(matches!(
            signals.try_recv(),
            Ok(RuntimeSignal::InitError(_))
        ));
        assert!(signals.try_recv().is_err(), "only the first was queued");
        let huge = format!("[{}0]", "0,".repeat(MAX_ERROR_BODY_BYTES));
        let status = post(
            &router,
            "/2018-06-01/runtime/invocation/x/error",
            huge.into_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn error_fields_are_cut_at_character_boundaries() {
        let doc = serde_json::json!({"errorType": "T".repeat(10_000), "errorMessage": "é".repeat(1 << 20)});
        let (t, m) = parse_error(&HeaderMap::new(), doc.to_string().as_bytes());
        assert_eq!(t.len(), MAX_ERROR_TYPE_BYTES);
        assert_eq!(m.len(), MAX_ERROR_MESSAGE_BYTES);
        let (_, raw) = parse_error(&HeaderMap::new(), "ü".repeat(1 << 20).as_bytes());
        assert!(raw.len() <= MAX_ERROR_MESSAGE_BYTES && raw.chars().all(|c| c == 'ü'));
    }
}
