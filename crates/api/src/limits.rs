//! Limits on request bodies, enforced before any handler reads one: a deadline for the whole body
//! (a client that drips a byte at a time would otherwise hold a connection and a growing buffer for
//! as long as it likes; it gets a 408), and a cap on large uploads in flight (each can buffer up to
//! ~67 MiB of function code; past the cap a 503 with `Retry-After`). Upload slots are taken only on
//! the routes that accept code, after the caller is authenticated, and at most
//! [`UPLOADS_PER_USER`] by one user: otherwise anyone could hold every slot with a few slow
//! connections. Large responses (a function's code, up to ~67 MiB as base64 JSON) are bounded the
//! same way the other way round: a transfer slot each, sent in chunks within the same deadline
//! ([`send_held`]). Header timeouts and the connection cap are the server's (the binary's `edge`).

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

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use uuid::Uuid;

use crate::caller::FullAccess;
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

/// Uploads one user may have in flight at once.
pub const UPLOADS_PER_USER: usize = 2;

/// The limits and the upload permits, kept in the app state.
#[derive(Debug)]
pub struct BodyGate {
    deadline: Duration,
    uploads: Arc<Semaphore>,
    per_user: Arc<KeyedSlots<Uuid>>,
    /// The same caps for large responses: a client reading slowly must not hold the server's
    /// memory for as long as it likes, nor hold up uploads.
    downloads: Arc<Semaphore>,
    downloads_per_user: Arc<KeyedSlots<Uuid>>,
}

impl BodyGate {
    pub fn new(limits: BodyLimits) -> Self {
        Self {
            deadline: limits.deadline,
            uploads: Arc::new(Semaphore::new(limits.max_uploads)),
            per_user: KeyedSlots::new(),
            downloads: Arc::new(Semaphore::new(limits.max_uploads)),
            downloads_per_user: KeyedSlots::new(),
        }
    }
}

/// Holders counted per key (a user, a client address), each key up to a cap. A slot gives its count
/// back when dropped, so nothing has to remember to.
#[derive(Debug)]
pub struct KeyedSlots<K> {
    held: std::sync::Mutex<std::collections::HashMap<K, usize>>,
}

/// One holder's slot under its key.
#[derive(Debug)]
pub struct KeyedSlot<K: Eq + std::hash::Hash> {
    key: Option<K>,
    of: Arc<KeyedSlots<K>>,
}

impl<K: Eq + std::hash::Hash + Clone> KeyedSlots<K> {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            held: std::sync::Mutex::default(),
        })
    }

    /// A slot under `key`, or `None` when `cap` are held already (a `cap` of 0: no cap).
    pub fn take(self: &Arc<Self>, key: K, cap: usize) -> Option<KeyedSlot<K>> {
        let mut held = self.held();
        let count = held.entry(key.clone()).or_default();
        if cap > 0 && *count >= cap {
            return None;
        }
        *count += 1;
        drop(held);
        Some(KeyedSlot {
            key: Some(key),
            of: self.clone(),
        })
    }
}

impl<K: Eq + std::hash::Hash> KeyedSlots<K> {
    fn held(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<K, usize>> {
        // The map is consistent after every change, so a poisoned lock is still usable.
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<K: Eq + std::hash::Hash> Drop for KeyedSlot<K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut held = self.of.held();
        if let Some(count) = held.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&key);
            }
        }
    }
}

/// The caller of a route that accepts code (an access token or a `full` API key), holding an upload
/// slot (its own, and one of the server's) when its body is an upload.
#[derive(Debug)]
pub struct Uploader {
    pub user_id: Uuid,
    _slots: Option<(KeyedSlot<Uuid>, tokio::sync::OwnedSemaphorePermit)>,
}

impl FromRequestParts<SharedState> for Uploader {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let FullAccess(user_id) = FullAccess::from_request_parts(parts, state).await?;
        if !is_upload(&parts.method, &parts.headers) {
            return Ok(Self {
                user_id,
                _slots: None,
            });
        }
        let gate = &state.bodies;
        let own = gate
            .per_user
            .take(user_id, UPLOADS_PER_USER)
            .ok_or(ApiError::TooManyUploads)?;
        // Without a server slot, `own` is dropped here and gives its count back.
        let server = gate
            .uploads
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyUploads)?;
        Ok(Self {
            user_id,
            _slots: Some((own, server)),
        })
    }
}

/// A download slot: its user's, and one of the server's.
pub type DownloadSlots = (KeyedSlot<Uuid>, tokio::sync::OwnedSemaphorePermit);

/// The slots a response of about `bytes` for `user_id` needs, taken before it is built (building a
/// large one is already the memory the slots bound): none for a small one, or
/// `503 too_many_downloads` when none is free.
pub fn download_slots(
    state: &SharedState,
    user_id: Uuid,
    bytes: u64,
) -> Result<Option<DownloadSlots>, ApiError> {
    if bytes <= UPLOAD_BYTES {
        return Ok(None);
    }
    let gate = &state.bodies;
    let own = gate
        .downloads_per_user
        .take(user_id, UPLOADS_PER_USER)
        .ok_or(ApiError::TooManyDownloads)?;
    let server = gate
        .downloads
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManyDownloads)?;
    Ok(Some((own, server)))
}

/// The response body, holding `slots` (see [`download_slots`]) while it is sent in chunks, failing
/// (the connection is closed) if the client has not taken all of it within the body deadline.
pub fn send_held(state: &SharedState, body: Bytes, slots: Option<DownloadSlots>) -> Body {
    match slots {
        None => Body::from(body),
        Some(slots) => Body::new(HeldBody {
            rest: body,
            slots: Some(slots),
            deadline: Box::pin(tokio::time::sleep(state.bodies.deadline)),
        }),
    }
}

/// Chunks handed to the connection as it takes them: hyper buffers at most one chunk, so the
/// response's memory and its slots stay with this body until the last chunk goes or the client is
/// cut off.
struct HeldBody {
    rest: Bytes,
    slots: Option<DownloadSlots>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

const CHUNK_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("the client did not take the response in time")]
struct ResponseTimedOut;

impl HttpBody for HeldBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.rest.is_empty() {
            self.slots = None;
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.slots = None;
            self.rest = Bytes::new();
            return Poll::Ready(Some(Err(axum::Error::new(ResponseTimedOut))));
        }
        let take = self.rest.len().min(CHUNK_BYTES);
        let chunk = self.rest.split_to(take);
        Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.rest.len() as u64)
    }
}

fn is_upload(method: &Method, headers: &axum::http::HeaderMap) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::DELETE) {
        return false;
    }
    match headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        Some(length) => length > UPLOAD_BYTES,
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

pub async fn limit_bodies(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let gate = &state.bodies;
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
