//! Route handlers, one module per resource.

pub mod auth;
pub mod executions;
pub mod functions;
pub mod keys;
pub mod layers;
pub mod system;

/// Runs CPU-heavy work (password hashing, archive checks) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, crate::error::ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(crate::error::ApiError::internal)
}
