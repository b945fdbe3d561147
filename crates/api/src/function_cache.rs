//! A short-lived in-process cache of function records, for the two hot reads: `GET
//! /api/functions/{id}` and every invocation. Writes through this server invalidate their entry at
//! once; another server sharing the database sees a change within [`FRESH_FOR`]. Updates never read
//! from here (they compare versions against the database).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;
use voltrun_domain::function::FunctionRecord;

/// How long a cached record is served without asking the database.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// Past this many entries the cache starts over, bounding its memory.
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Default)]
pub struct FunctionCache {
    entries: Mutex<HashMap<Uuid, (FunctionRecord, Instant)>>,
}

impl FunctionCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (FunctionRecord, Instant)>> {
        // Each operation is a single insert/remove/lookup, so a poisoned map is still consistent.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached record of function `id`, if fresh. The caller still checks ownership.
    pub fn get(&self, id: Uuid) -> Option<FunctionRecord> {
        let entries = self.lock();
        let (record, cached_at) = entries.get(&id)?;
        (cached_at.elapsed() < FRESH_FOR).then(|| record.clone())
    }

    pub fn put(&self, record: FunctionRecord) {
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(record.id, (record, Instant::now()));
    }

    pub fn forget(&self, id: Uuid) {
        self.lock().remove(&id);
    }
}
