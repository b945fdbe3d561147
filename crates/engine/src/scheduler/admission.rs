//! Admission: whether a new invocation or instance may go ahead now — the function's concurrency
//! limit, the host's memory budget and its user's share of it. Each waits up to the queue timeout
//! (making idle instances give way where that helps), then refuses as overloaded; a function that
//! asks for more than this server ever grants is refused at once.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use voltrun_domain::function::FunctionRecord;

use super::LocalEngine;
use super::pool;
use super::shares::MemoryShare;
use crate::EngineError;

impl LocalEngine {
    pub(super) async fn function_slot(
        &self,
        function: &FunctionRecord,
    ) -> Result<OwnedSemaphorePermit, EngineError> {
        let limit = function
            .max_concurrency
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(self.config.max_concurrency_per_function);
        let semaphore = {
            let mut all = self.concurrency.lock().await;
            let entry = all
                .entry(function.id)
                .or_insert_with(|| (limit, Arc::new(Semaphore::new(limit))));
            if entry.0 != limit {
                // A changed limit takes effect for new invocations; running ones finish on the old one.
                *entry = (limit, Arc::new(Semaphore::new(limit)));
            }
            entry.1.clone()
        };
        tokio::time::timeout(self.config.queue_timeout, semaphore.acquire_owned())
            .await
            .map_err(|_| EngineError::Overloaded)?
            .map_err(|_| EngineError::Overloaded)
    }

    /// The user's share of the memory budget for a new instance of `function`: its idle instances
    /// (the oldest first) make way for it, then it waits up to the queue timeout for its busy ones.
    pub(super) async fn reserve_share(
        &self,
        function: &FunctionRecord,
    ) -> Result<MemoryShare, EngineError> {
        let (user, mb) = (function.user_id, u64::from(function.memory_mib()));
        if mb > self.shares.cap_mb() {
            return Err(EngineError::MemoryTooLarge(format!(
                "the function's {mb} MB exceed this server's memory share per user of {} MB (ENGINE_USER_MEMORY_MB)",
                self.shares.cap_mb()
            )));
        }
        let deadline = tokio::time::Instant::now() + self.config.queue_timeout;
        loop {
            // Armed before looking: a share given back, or an instance of the user's going idle
            // (which can then make way), in between still ends the wait below.
            let changed = self.shares.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(share) = self.shares.try_take(user, mb) {
                return Ok(share);
            }
            match self
                .pooled(|pool| pool.take_oldest(|i| pool::Pooled::user(i) == user))
                .await
            {
                Some(instance) => instance.stop().await,
                None => {
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        return Err(EngineError::Overloaded);
                    }
                }
            }
        }
    }

    /// Reserves memory for a new instance, evicting idle instances (oldest first) when the budget is
    /// used up, then waiting up to the queue timeout.
    pub(super) async fn reserve_memory(
        &self,
        memory_mb: u32,
    ) -> Result<OwnedSemaphorePermit, EngineError> {
        if u64::from(memory_mb) > self.config.memory_budget_mb {
            return Err(EngineError::MemoryTooLarge(format!(
                "the function's {memory_mb} MB exceed this host's memory budget of {} MB",
                self.config.memory_budget_mb
            )));
        }
        let budget = &self.memory.0;
        loop {
            if let Ok(permit) = budget.clone().try_acquire_many_owned(memory_mb) {
                return Ok(permit);
            }
            match self.pooled(|pool| pool.take_oldest(|_| true)).await {
                Some(instance) => instance.stop().await,
                None => {
                    return tokio::time::timeout(
                        self.config.queue_timeout,
                        budget.clone().acquire_many_owned(memory_mb),
                    )
                    .await
                    .map_err(|_| EngineError::Overloaded)?
                    .map_err(|_| EngineError::Overloaded);
                }
            }
        }
    }
}
