//! Fixed-window rate limiting in memory, keyed by client address or account. In-memory is right for
//! one node; a cluster would move these counters to a shared store.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Seconds until the caller may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

#[derive(Debug)]
pub struct RateLimiter {
    max: u32,
    window: Duration,
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

/// Above this many tracked keys, expired windows are swept on the next hit, bounding memory.
const SWEEP_ABOVE: usize = 10_000;

impl RateLimiter {
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one attempt for `key`; refuses once `max` attempts fall in the current window.
    pub fn hit(&self, key: &str) -> Result<(), RetryAfter> {
        self.update(key, true)
    }

    /// Refuses when `key` has used up its window, without counting an attempt (for failure counters
    /// that are checked first and counted only when the attempt fails).
    pub fn check(&self, key: &str) -> Result<(), RetryAfter> {
        self.update(key, false)
    }

    pub fn reset(&self, key: &str) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, u32)>> {
        // A panic while holding this lock cannot leave the map inconsistent (each update is one
        // insert), so a poisoned lock is still safe to use.
        self.windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update(&self, key: &str, count: bool) -> Result<(), RetryAfter> {
        let now = Instant::now();
        let mut windows = self.lock();
        if windows.len() > SWEEP_ABOVE {
            let window = self.window;
            windows.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let entry = windows.entry(key.to_string()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.max {
            let left = self.window.saturating_sub(now.duration_since(entry.0));
            return Err(RetryAfter(left.as_secs().max(1)));
        }
        if count {
            entry.1 += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key() {
        let rl = RateLimiter::new(2, Duration::from_secs(60));
        assert!(rl.hit("a").is_ok());
        assert!(rl.hit("a").is_ok());
        let RetryAfter(secs) = rl.hit("a").unwrap_err();
        assert!((1..=60).contains(&secs));
        assert!(rl.hit("b").is_ok());
        assert!(rl.check("a").is_err());
        rl.reset("a");
        assert!(rl.check("a").is_ok());
    }

    #[test]
    fn window_expires() {
        let rl = RateLimiter::new(1, Duration::from_millis(20));
        assert!(rl.hit("a").is_ok());
        assert!(rl.hit("a").is_err());
        std::thread::sleep(Duration::from_millis(25));
        assert!(rl.hit("a").is_ok());
    }
}
