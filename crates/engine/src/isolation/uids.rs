//! Host uids for sandboxes. Each live instance holds a uid no other instance holds: two sandboxes
//! under one uid could signal each other's processes, read each other's `/proc` entries, and share
//! per-uid kernel limits. A uid goes back to the end of the free list when its instance is gone, so
//! the one freed longest ago is reused first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct UidPool {
    free: Mutex<VecDeque<u32>>,
}

/// A uid held until this is dropped.
#[derive(Debug)]
pub struct UidLease {
    uid: u32,
    pool: Arc<UidPool>,
}

impl UidPool {
    pub fn new(base: u32, count: u32) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new((base..base.saturating_add(count)).collect()),
        })
    }

    fn free(&self) -> std::sync::MutexGuard<'_, VecDeque<u32>> {
        // The list is consistent after every push and pop, so a poisoned lock is still usable.
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A uid of its own, or `None` when every uid is held by a live instance.
    pub fn lease(self: &Arc<Self>) -> Option<UidLease> {
        let uid = self.free().pop_front()?;
        Some(UidLease {
            uid,
            pool: self.clone(),
        })
    }
}

impl UidLease {
    pub fn uid(&self) -> u32 {
        self.uid
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        self.pool.free().push_back(self.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_is_never_held_twice_and_the_longest_freed_comes_back_first() {
        let pool = UidPool::new(100, 3);
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        let c = pool.lease().unwrap();
        assert_eq!([a.uid(), b.uid(), c.uid()], [100, 101, 102]);
        assert!(pool.lease().is_none(), "all three are held");
        drop(b);
        drop(a);
        let again = pool.lease().unwrap();
        assert_eq!(again.uid(), 101, "the uid freed first comes back first");
        let other = pool.lease().unwrap();
        assert_eq!(other.uid(), 100);
        assert!(pool.lease().is_none(), "again, other and c are held");
        drop(other);
        assert_eq!(
            pool.lease().map(|l| l.uid()),
            Some(100),
            "dropping gives it back"
        );
        drop((again, c));
    }
}
