//! A cap on concurrent password hashing. One Argon2id call costs tens of milliseconds of CPU and
//! 19 MiB of memory, and register and login are open to anyone: uncapped, a burst of them takes every
//! blocking thread and as much memory as it brings. Past the cap a call waits its turn for a bounded
//! time, then is refused with `503 auth_busy` and `Retry-After`, and the server stays responsive.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use voltrun_auth::RetryAfter;

use crate::error::{ApiError, ApiResult};

/// What a refused caller is told to wait: a turn at the cap takes well under a second.
const RETRY_AFTER_S: u64 = 1;

#[derive(Debug)]
pub struct PasswordWork {
    permits: Arc<Semaphore>,
    queue_timeout: Duration,
}

impl PasswordWork {
    /// At most `concurrency` hashes at once (at least one); a caller waits up to `queue_timeout`.
    pub fn new(concurrency: usize, queue_timeout: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            queue_timeout,
        }
    }

    /// Runs `work` (a hash or a verification) on a blocking thread once a turn is free.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> ApiResult<T> {
        let permit =
            match tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned())
                .await
            {
                Ok(Ok(permit)) => permit,
                Ok(Err(closed)) => return Err(ApiError::internal(closed)),
                Err(_waited_too_long) => {
                    metrics::counter!("voltrun_auth_busy_total").increment(1);
                    return Err(ApiError::AuthBusy(RetryAfter(RETRY_AFTER_S)));
                }
            };
        // The permit goes with the work: a client that hangs up does not stop the hashing it started,
        // so the turn stays taken until the hashing ends.
        crate::routes::blocking(move || {
            let _turn = permit;
            work()
        })
        .await
    }
}
