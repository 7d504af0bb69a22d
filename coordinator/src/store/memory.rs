//! An in-memory store for tests and for `drover dev --ephemeral`-style uses.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::identity::new_store_id;
use super::records::apply_writes;
use super::{EVENT_RETENTION, EventRecord, Store, StoreError, StoredState, Write};

/// A store that keeps everything in memory; nothing survives the process.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<(StoredState, BTreeMap<u64, EventRecord>)>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store with a new identity.
    pub fn new() -> MemoryStore {
        let state = StoredState {
            store_id: new_store_id(),
            ..StoredState::default()
        };
        MemoryStore {
            inner: Mutex::new((state, BTreeMap::new())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (StoredState, BTreeMap<u64, EventRecord>)> {
        // A panic while holding the lock leaves consistent data (writes apply in one call).
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for MemoryStore {
    fn load(&self) -> Result<StoredState, StoreError> {
        Ok(self.lock().0.clone())
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut guard = self.lock();
        let (state, events) = &mut *guard;
        apply_writes(state, writes);
        for write in writes {
            if let Write::PutEvent(e) = write {
                events.insert(e.seq, e.clone());
                if let Some(expired) = e.seq.checked_sub(EVENT_RETENTION) {
                    events.remove(&expired);
                }
            }
        }
        Ok(())
    }

    fn events(&self, since: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        Ok(self
            .lock()
            .1
            .range(since..)
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect())
    }
}
