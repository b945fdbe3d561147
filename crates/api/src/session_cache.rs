//! Which sessions were found active a moment ago, so that an access token costs no database read on
//! every request (authenticated reads are otherwise served from memory; see `function_cache`).
//! Only "active" is remembered, for [`FRESH_FOR`]: a revocation through this server forgets its
//! session at once, and one through another server sharing the database takes effect here within
//! that second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// Past this many entries the cache starts over, bounding its memory.
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Default)]
pub struct SessionCache {
    active: Mutex<HashMap<Uuid, Instant>>,
}

impl SessionCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Instant>> {
        // Each operation is a single insert/remove/lookup, so a poisoned map is still consistent.
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn is_fresh(&self, id: Uuid) -> bool {
        self.lock()
            .get(&id)
            .is_some_and(|checked| checked.elapsed() < FRESH_FOR)
    }

    pub fn found_active(&self, id: Uuid) {
        let mut active = self.lock();
        if active.len() >= MAX_ENTRIES {
            active.clear();
        }
        active.insert(id, Instant::now());
    }

    pub fn forget(&self, id: Uuid) {
        self.lock().remove(&id);
    }
}
