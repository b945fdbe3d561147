//! Each user's share of the engine's memory budget: the memory one user's live instances may hold at
//! once, like Lambda's per-account concurrency limit. Without it, one tenant asking for the whole
//! budget (large `memory_mb`, long timeouts, functions that only sleep) holds every other tenant's
//! cold starts at 429 for as long as it likes, since the budget counts what instances reserve, not
//! what they use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use uuid::Uuid;

/// What every user's live instances hold, against one cap per user.
#[derive(Debug)]
pub struct UserShares {
    cap_mb: u64,
    held: Mutex<HashMap<Uuid, u64>>,
    /// Woken whenever a share is given back.
    freed: Notify,
}

/// One instance's part of its user's share, given back when dropped (when the instance ends).
#[derive(Debug)]
pub struct MemoryShare {
    shares: Arc<UserShares>,
    user: Uuid,
    mb: u64,
}

impl MemoryShare {
    pub fn user(&self) -> Uuid {
        self.user
    }
}

impl UserShares {
    pub fn new(cap_mb: u64) -> Arc<Self> {
        Arc::new(Self {
            cap_mb,
            held: Mutex::new(HashMap::new()),
            freed: Notify::new(),
        })
    }

    pub fn cap_mb(&self) -> u64 {
        self.cap_mb
    }

    /// `mb` more for `user`, if that stays within the cap.
    pub fn try_take(self: &Arc<Self>, user: Uuid, mb: u64) -> Option<MemoryShare> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let now = held.get(&user).copied().unwrap_or(0);
        if now + mb > self.cap_mb {
            return None;
        }
        held.insert(user, now + mb);
        Some(MemoryShare {
            shares: self.clone(),
            user,
            mb,
        })
    }

    /// Completes at the next give-back or [`notify_changed`](Self::notify_changed); arm it with
    /// `enable` before looking, so that one in between is not missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    /// Wakes the waits: something changed that may let a waiting user go on (one of its instances
    /// went idle, and can now be evicted to make way).
    pub fn notify_changed(&self) {
        self.freed.notify_waiters();
    }
}

impl Drop for MemoryShare {
    fn drop(&mut self) {
        let mut held = self
            .shares
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(now) = held.get_mut(&self.user) {
            *now = now.saturating_sub(self.mb);
            if *now == 0 {
                held.remove(&self.user);
            }
        }
        drop(held);
        self.shares.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_user_holds_at_most_the_cap_and_waiters_hear_of_give_backs() {
        let shares = UserShares::new(512);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let first = shares.try_take(a, 256).unwrap();
        let _second = shares.try_take(a, 256).unwrap();
        assert!(shares.try_take(a, 128).is_none(), "over the cap");
        // Another user has a share of its own.
        let _other = shares.try_take(b, 512).unwrap();
        let waiting = {
            let shares = shares.clone();
            tokio::spawn(async move {
                let changed = shares.changed();
                tokio::pin!(changed);
                changed.as_mut().enable();
                tokio::time::timeout(Duration::from_secs(5), changed)
                    .await
                    .is_ok()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        assert!(waiting.await.unwrap(), "woken by the give-back");
        let third = shares.try_take(a, 128).unwrap();
        assert!(shares.try_take(a, 256).is_none(), "256 + 128 held");
        drop(third);
        assert!(shares.try_take(a, 256).is_some());
    }
}
