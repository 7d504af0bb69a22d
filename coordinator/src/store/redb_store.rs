//! The embedded single-file store, on redb. Every commit is fsynced before it returns.

use std::path::{Path, PathBuf};

use drover_proto::model::{Allocation, NodeFlags};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::records::{decode, encode};
use super::{
    EVENT_RETENTION, EventRecord, RevisionRecord, ServiceRecord, Store, StoreError, StoredState,
    Write,
};

const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
const REVISIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("revisions");
const ALLOCATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("allocations");
const NODE_FLAGS: TableDefinition<&str, &[u8]> = TableDefinition::new("node_flags");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// The redb-backed store: one file, ACID transactions, durable commits.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl RedbStore {
    /// Opens the store file at `path`, creating it and its tables when absent.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let store_error = |e: redb::Error| StoreError::Database {
            path: path.display().to_string(),
            source: Box::new(e),
        };
        let db = Database::create(path).map_err(|e| store_error(e.into()))?;
        let store = RedbStore {
            db,
            path: path.to_path_buf(),
        };
        // Create every table up front so readers never meet a missing one.
        let txn = store.db.begin_write().map_err(|e| store_error(e.into()))?;
        {
            txn.open_table(SERVICES)
                .map_err(|e| store_error(e.into()))?;
            txn.open_table(REVISIONS)
                .map_err(|e| store_error(e.into()))?;
            txn.open_table(ALLOCATIONS)
                .map_err(|e| store_error(e.into()))?;
            txn.open_table(NODE_FLAGS)
                .map_err(|e| store_error(e.into()))?;
            txn.open_table(EVENTS).map_err(|e| store_error(e.into()))?;
            txn.open_table(COUNTERS)
                .map_err(|e| store_error(e.into()))?;
        }
        txn.commit().map_err(|e| store_error(e.into()))?;
        Ok(store)
    }

    /// Path of the store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db_error(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Database {
            path: self.path.display().to_string(),
            source: Box::new(e.into()),
        }
    }

    fn load_inner(&self) -> Result<StoredState, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_error(e))?;
        let mut state = StoredState::default();

        let table = txn.open_table(SERVICES).map_err(|e| self.db_error(e))?;
        for entry in table.iter().map_err(|e| self.db_error(e))? {
            let (k, v) = entry.map_err(|e| self.db_error(e))?;
            let record: ServiceRecord = decode("services", k.value(), v.value())?;
            state.services.insert(k.value().to_string(), record);
        }
        let table = txn.open_table(REVISIONS).map_err(|e| self.db_error(e))?;
        for entry in table.iter().map_err(|e| self.db_error(e))? {
            let (k, v) = entry.map_err(|e| self.db_error(e))?;
            let (service, revision) = k.value();
            let key = format!("{service}@{revision}");
            let record: RevisionRecord = decode("revisions", &key, v.value())?;
            state
                .revisions
                .insert((service.to_string(), revision), record);
        }
        let table = txn.open_table(ALLOCATIONS).map_err(|e| self.db_error(e))?;
        for entry in table.iter().map_err(|e| self.db_error(e))? {
            let (k, v) = entry.map_err(|e| self.db_error(e))?;
            let record: Allocation = decode("allocations", k.value(), v.value())?;
            state.allocations.insert(k.value().to_string(), record);
        }
        let table = txn.open_table(NODE_FLAGS).map_err(|e| self.db_error(e))?;
        for entry in table.iter().map_err(|e| self.db_error(e))? {
            let (k, v) = entry.map_err(|e| self.db_error(e))?;
            let record: NodeFlags = decode("node_flags", k.value(), v.value())?;
            state.node_flags.insert(k.value().to_string(), record);
        }
        let table = txn.open_table(COUNTERS).map_err(|e| self.db_error(e))?;
        for entry in table.iter().map_err(|e| self.db_error(e))? {
            let (k, v) = entry.map_err(|e| self.db_error(e))?;
            state.counters.insert(k.value().to_string(), v.value());
        }
        Ok(state)
    }

    fn commit_inner(&self, writes: &[Write]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.db_error(e))?;
        {
            let mut services = txn.open_table(SERVICES).map_err(|e| self.db_error(e))?;
            let mut revisions = txn.open_table(REVISIONS).map_err(|e| self.db_error(e))?;
            let mut allocations = txn.open_table(ALLOCATIONS).map_err(|e| self.db_error(e))?;
            let mut node_flags = txn.open_table(NODE_FLAGS).map_err(|e| self.db_error(e))?;
            let mut events = txn.open_table(EVENTS).map_err(|e| self.db_error(e))?;
            let mut counters = txn.open_table(COUNTERS).map_err(|e| self.db_error(e))?;
            for write in writes {
                match write {
                    Write::PutService(s) => {
                        let bytes = encode("services", &s.name, s)?;
                        services
                            .insert(s.name.as_str(), bytes.as_slice())
                            .map_err(|e| self.db_error(e))?;
                    }
                    Write::DeleteService(name) => {
                        services
                            .remove(name.as_str())
                            .map_err(|e| self.db_error(e))?;
                        let keys: Vec<u64> = revisions
                            .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
                            .map_err(|e| self.db_error(e))?
                            .map(|entry| entry.map(|(k, _)| k.value().1))
                            .collect::<Result<_, _>>()
                            .map_err(|e| self.db_error(e))?;
                        for revision in keys {
                            revisions
                                .remove((name.as_str(), revision))
                                .map_err(|e| self.db_error(e))?;
                        }
                    }
                    Write::PutRevision(r) => {
                        let key = format!("{}@{}", r.service, r.revision);
                        let bytes = encode("revisions", &key, r)?;
                        revisions
                            .insert((r.service.as_str(), r.revision), bytes.as_slice())
                            .map_err(|e| self.db_error(e))?;
                    }
                    Write::DeleteRevision(service, revision) => {
                        revisions
                            .remove((service.as_str(), *revision))
                            .map_err(|e| self.db_error(e))?;
                    }
                    Write::PutAllocation(a) => {
                        let bytes = encode("allocations", &a.id, a)?;
                        allocations
                            .insert(a.id.as_str(), bytes.as_slice())
                            .map_err(|e| self.db_error(e))?;
                    }
                    Write::DeleteAllocation(id) => {
                        allocations
                            .remove(id.as_str())
                            .map_err(|e| self.db_error(e))?;
                    }
                    Write::PutNodeFlags(node, flags) => {
                        let bytes = encode("node_flags", node, flags)?;
                        node_flags
                            .insert(node.as_str(), bytes.as_slice())
                            .map_err(|e| self.db_error(e))?;
                    }
                    Write::DeleteNodeFlags(node) => {
                        node_flags
                            .remove(node.as_str())
                            .map_err(|e| self.db_error(e))?;
                    }
                    Write::PutEvent(e) => {
                        let bytes = encode("events", &e.seq.to_string(), e)?;
                        events
                            .insert(e.seq, bytes.as_slice())
                            .map_err(|err| self.db_error(err))?;
                        if let Some(expired) = e.seq.checked_sub(EVENT_RETENTION) {
                            events.remove(expired).map_err(|err| self.db_error(err))?;
                        }
                    }
                    Write::PutCounter(name, value) => {
                        counters
                            .insert(*name, *value)
                            .map_err(|e| self.db_error(e))?;
                    }
                }
            }
        }
        // Durability::Immediate is redb's default: commit returns after fsync.
        txn.commit().map_err(|e| self.db_error(e))
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<StoredState, StoreError> {
        self.load_inner()
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        self.commit_inner(writes)
    }

    fn events(&self, since: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_error(e))?;
        let table = txn.open_table(EVENTS).map_err(|e| self.db_error(e))?;
        let mut out = Vec::new();
        for entry in table
            .range(since..)
            .map_err(|e| self.db_error(e))?
            .take(limit)
        {
            let (k, v) = entry.map_err(|e| self.db_error(e))?;
            out.push(decode("events", &k.value().to_string(), v.value())?);
        }
        Ok(out)
    }
}
