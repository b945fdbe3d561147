//! Limits on request bodies, enforced before any handler reads one: a deadline for the whole body
//! (a client that drips a byte at a time would otherwise hold a connection and a growing buffer for
//! as long as it likes; it gets a 408), and a cap on large uploads in flight (each can buffer up to
//! ~67 MiB of function code; past the cap a 503 with `Retry-After`). Header timeouts and the
//! connection cap are the server's (the binary's `edge`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::{ApiError, SharedState};

/// Bodies larger than this (declared, or of unknown length) count as uploads.
const UPLOAD_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// How long a client has to send a whole body, from when its headers arrived.
    pub deadline: Duration,
    /// Uploads read at once.
    pub max_uploads: usize,
}

/// The limits and the upload permits, kept in the app state.
#[derive(Debug)]
pub struct BodyGate {
    deadline: Duration,
    uploads: Arc<Semaphore>,
}

impl BodyGate {
    pub fn new(limits: BodyLimits) -> Self {
        Self {
            deadline: limits.deadline,
            uploads: Arc::new(Semaphore::new(limits.max_uploads)),
        }
    }
}

fn is_upload(req: &Request) -> bool {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::DELETE) {
        return false;
    }
    match req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        Some(length) => length > UPLOAD_BYTES,
        None => req.headers().contains_key(header::TRANSFER_ENCODING),
    }
}

pub async fn limit_bodies(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let gate = &state.bodies;
    let _upload = if is_upload(&req) {
        match gate.uploads.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => return ApiError::TooManyUploads.into_response(),
        }
    } else {
        None
    };
    let expired = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(gate.deadline)),
            expired: expired.clone(),
        })
    });
    let response = next.run(req).await;
    // Whatever the handler's extractor made of the failed read (a 400), the client was too slow.
    if expired.load(Ordering::Relaxed) {
        return ApiError::RequestTimeout(gate.deadline.as_secs()).into_response();
    }
    response
}

/// A body that fails once its deadline passes.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
