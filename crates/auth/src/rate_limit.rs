//! Fixed-window rate limiting in memory, keyed by client address or account. In-memory is right for
//! one node; a cluster would move these counters to a shared store.
//!
//! The keys come from the network (addresses, emails), so the number tracked is capped: past the cap
//! the least recently seen key is forgotten. Forgetting a key forgives its count, so the cap must be
//! far above the keys one window sees in normal use; an attacker who rotates through more keys than
//! the cap to reset one is limited per address first (see the API's limits).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Seconds until the caller may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

#[derive(Debug)]
struct Window {
    start: Instant,
    count: u32,
    /// When this key was last seen, in the limiter's own order (see `Windows::recency`).
    seen: u64,
}

#[derive(Debug, Default)]
struct Windows {
    by_key: HashMap<String, Window>,
    /// Keys by when they were last seen, oldest first: the eviction order.
    recency: BTreeMap<u64, String>,
    next_seen: u64,
}

#[derive(Debug)]
pub struct RateLimiter {
    max: u32,
    window: Duration,
    max_keys: usize,
    windows: Mutex<Windows>,
}

impl RateLimiter {
    /// `max` attempts per key per `window`, tracking at most `max_keys` keys (at least one).
    pub fn new(max: u32, window: Duration, max_keys: usize) -> Self {
        Self {
            max,
            window,
            max_keys: max_keys.max(1),
            windows: Mutex::new(Windows::default()),
        }
    }

    /// Counts one attempt for `key` and refuses it once `max` attempts fall in the current window.
    /// Checking and counting are one step under one lock, so concurrent attempts cannot all pass a
    /// check before any of them is counted.
    pub fn hit(&self, key: &str) -> Result<(), RetryAfter> {
        let now = Instant::now();
        let mut windows = self.lock();
        let Windows {
            by_key,
            recency,
            next_seen,
        } = &mut *windows;
        let seen = *next_seen;
        *next_seen += 1;
        match by_key.get(key) {
            Some(entry) => {
                recency.remove(&entry.seen);
            }
            None if by_key.len() >= self.max_keys => {
                if let Some((_, oldest)) = recency.pop_first() {
                    by_key.remove(&oldest);
                }
            }
            None => {}
        }
        let entry = by_key.entry(key.to_string()).or_insert(Window {
            start: now,
            count: 0,
            seen,
        });
        entry.seen = seen;
        recency.insert(seen, key.to_string());
        if now.duration_since(entry.start) >= self.window {
            entry.start = now;
            entry.count = 0;
        }
        if entry.count >= self.max {
            let left = self.window.saturating_sub(now.duration_since(entry.start));
            return Err(RetryAfter(left.as_secs().max(1)));
        }
        entry.count += 1;
        Ok(())
    }

    /// Takes back one counted attempt of `key` (one that the server then did not evaluate).
    pub fn refund(&self, key: &str) {
        if let Some(entry) = self.lock().by_key.get_mut(key) {
            entry.count = entry.count.saturating_sub(1);
        }
    }

    pub fn reset(&self, key: &str) {
        let mut windows = self.lock();
        if let Some(entry) = windows.by_key.remove(key) {
            windows.recency.remove(&entry.seen);
        }
    }

    /// How many keys are tracked now (never more than `max_keys`).
    pub fn tracked_keys(&self) -> usize {
        self.lock().by_key.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        // Every update finishes its map changes before it can panic (nothing in it panics), so a
        // poisoned lock still guards consistent maps.
        self.windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key() {
        let rl = RateLimiter::new(2, Duration::from_secs(60), 100);
        assert!(rl.hit("a").is_ok());
        assert!(rl.hit("a").is_ok());
        let RetryAfter(secs) = rl.hit("a").unwrap_err();
        assert!((1..=60).contains(&secs));
        assert!(rl.hit("b").is_ok());
        rl.reset("a");
        assert!(rl.hit("a").is_ok());
    }

    #[test]
    fn a_refund_gives_back_one_attempt() {
        let rl = RateLimiter::new(1, Duration::from_secs(60), 100);
        assert!(rl.hit("a").is_ok());
        rl.refund("a");
        assert!(rl.hit("a").is_ok());
        assert!(rl.hit("a").is_err());
    }

    #[test]
    fn window_expires() {
        let rl = RateLimiter::new(1, Duration::from_millis(20), 100);
        assert!(rl.hit("a").is_ok());
        assert!(rl.hit("a").is_err());
        std::thread::sleep(Duration::from_millis(25));
        assert!(rl.hit("a").is_ok());
    }

    #[test]
    fn many_distinct_keys_stay_within_the_cap() {
        let rl = RateLimiter::new(1, Duration::from_secs(60), 64);
        for n in 0..10_000 {
            let _ = rl.hit(&format!("198.51.{}.{}", n / 256, n % 256));
            assert!(rl.tracked_keys() <= 64);
        }
        assert_eq!(rl.tracked_keys(), 64);
        let windows = rl.lock();
        assert_eq!(
            windows.recency.len(),
            64,
            "the eviction order tracks the same keys"
        );
    }

    #[test]
    fn the_least_recently_seen_key_is_forgotten_first() {
        let rl = RateLimiter::new(1, Duration::from_secs(60), 2);
        assert!(rl.hit("old").is_ok());
        assert!(rl.hit("busy").is_ok());
        // "old" is seen again: "busy" is now the least recent.
        assert!(rl.hit("old").is_err());
        assert!(rl.hit("new").is_ok());
        assert!(
            rl.hit("old").is_err(),
            "old is still tracked, and still limited"
        );
        assert!(rl.hit("busy").is_ok(), "busy was forgotten");
    }
}
