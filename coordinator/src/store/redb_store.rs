//! The embedded single-file store, on redb. Every commit is fsynced before it returns.
//!
//! What it adds to redb: the file is created with mode 0600 (it holds env values); a marker
//! beside it ([`super::identity`]) makes a missing or emptied file an error rather than an
//! empty cluster; every record carries a checksum, since redb does not verify the pages of a
//! cleanly closed file; and a redb panic on a corrupted file becomes an error naming it.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use drover_proto::model::{Allocation, NodeFlags};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
};
use tracing::{error, info, warn};

use super::credentials::Credential;
use super::identity::{
    Contents, IdentityPlan, Marker, NewIdentity, OnDisk, OpenPlan, Refusal, StoreMeta, marker_path,
    new_store_id, plan_identity, plan_open, private_file_options, read_marker, write_marker,
};
use super::records::{DecodeError, checksum, decode, encode, upgrade_legacy};
use super::{
    CORRUPTED_EVENT, EVENT_RETENTION, EventRecord, FORMAT_VERSION, RevisionRecord, STORE_FORMAT,
    ServiceRecord, Store, StoreError, StoredState, WorkloadRecord, Write, migrate,
};

const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
/// Services (apart from workloads since store format 3).
const SERVICE_DEFS: TableDefinition<&str, &[u8]> = TableDefinition::new("service_defs");
const REVISIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("revisions");
const ALLOCATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("allocations");
const NODE_FLAGS: TableDefinition<&str, &[u8]> = TableDefinition::new("node_flags");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// Checksum of each counter (name and value); the counters table keeps its type so older
/// files open unchanged. A counter without one predates checksums.
const COUNTER_SUMS: TableDefinition<&str, u32> = TableDefinition::new("counter_checksums");
/// The store's identity ([`StoreMeta`]), under [`META_KEY`].
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const CREDENTIALS: TableDefinition<&str, &[u8]> = TableDefinition::new("credentials");
const META_KEY: &str = "store";

/// The redb-backed store: one file, ACID transactions, durable commits.
#[derive(Debug)]
pub struct RedbStore {
    /// Always `Some` but while dropping, where it is dropped under a panic guard.
    db: Option<Database>,
    path: PathBuf,
    store_id: String,
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // After redb panicked on a corrupted file, its locks are poisoned and closing the
        // database panics again; that must not turn the error already reported into a crash.
        if let Some(db) = self.db.take() {
            let _ = guarded(&self.path, "closing", || {
                drop(db);
                Ok(())
            });
        }
    }
}

impl RedbStore {
    /// Opens the store file at `path`, creating it (mode 0600) and its tables when absent.
    ///
    /// Beside the file is a marker (`path` with extension `id`, `coordinator.id` for
    /// `coordinator.redb`) holding the store's identity. While the marker is there, a
    /// missing or empty store file is refused: the error says to restore the file, or to
    /// remove the marker to start a new, empty cluster on purpose.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let marker_file = marker_path(path);
        let marker = read_marker(&marker_file).map_err(|source| StoreError::Io {
            path: marker_file.display().to_string(),
            action: "read the store's marker",
            source,
        })?;
        let refused = |refusal: Refusal| StoreError::Refused {
            path: path.display().to_string(),
            marker: marker_file.display().to_string(),
            found: refusal.found(),
            store_id: marker
                .as_ref()
                .and_then(|m| m.store_id.clone())
                .unwrap_or_else(|| "unreadable".into()),
        };
        match plan_open(marker.is_some(), on_disk(path)?).map_err(refused)? {
            OpenPlan::Create => create_private(path)?,
            OpenPlan::Open => restrict_mode(path)?,
        }
        let db = guarded(path, "opening the file", || {
            Database::create(path).map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                hint: open_hint(&e, &marker_file),
                source: Box::new(e.into()),
            })
        })?;
        let mut store = RedbStore {
            db: Some(db),
            path: path.to_path_buf(),
            store_id: String::new(),
        };
        let meta = guarded(path, "preparing the store", || {
            store.prepare(marker.as_ref(), refused)
        })?;
        // Written after the file holds the identity: a crash in between leaves a file
        // without a marker, which only costs a new identity at the next open.
        write_marker(&marker_file, &meta.store_id, meta.opens).map_err(|source| {
            StoreError::Io {
                path: marker_file.display().to_string(),
                action: "write the store's marker",
                source,
            }
        })?;
        info!(path = %path.display(), store_id = %meta.store_id, opens = meta.opens, "store opened");
        store.store_id = meta.store_id;
        Ok(store)
    }

    /// Path of the store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The store's identity, as in [`StoredState::store_id`].
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    fn db(&self) -> &Database {
        self.db
            .as_ref()
            .expect("the database stays open until the store is dropped")
    }

    fn db_error(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Database {
            path: self.path.display().to_string(),
            source: Box::new(e.into()),
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        table: &'static str,
        key: &str,
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        decode(key, bytes)
            .map_err(|e| e.into_store_error(&self.path.display().to_string(), table, key))
    }

    /// A record that decodes but names another key than the one it is stored under.
    fn misplaced(&self, table: &'static str, key: &str, named: &str) -> StoreError {
        StoreError::Corrupted {
            path: self.path.display().to_string(),
            table,
            key: key.to_string(),
            reason: format!("the record is of {named}"),
        }
    }

    /// Creates the tables, settles the identity, counts the open and brings older records
    /// to the current format, in one transaction (aborted when refused).
    fn prepare(
        &self,
        marker: Option<&Marker>,
        refused: impl Fn(Refusal) -> StoreError,
    ) -> Result<StoreMeta, StoreError> {
        let txn = self.db().begin_write().map_err(|e| self.db_error(e))?;
        let meta = {
            // Every table is created up front so readers never meet a missing one.
            let mut meta_table = txn.open_table(META).map_err(|e| self.db_error(e))?;
            let mut services = txn.open_table(SERVICES).map_err(|e| self.db_error(e))?;
            let mut service_defs = txn.open_table(SERVICE_DEFS).map_err(|e| self.db_error(e))?;
            let mut revisions = txn.open_table(REVISIONS).map_err(|e| self.db_error(e))?;
            let mut allocations = txn.open_table(ALLOCATIONS).map_err(|e| self.db_error(e))?;
            let mut node_flags = txn.open_table(NODE_FLAGS).map_err(|e| self.db_error(e))?;
            let events = txn.open_table(EVENTS).map_err(|e| self.db_error(e))?;
            let counters = txn.open_table(COUNTERS).map_err(|e| self.db_error(e))?;
            let mut counter_sums = txn.open_table(COUNTER_SUMS).map_err(|e| self.db_error(e))?;
            let credentials = txn.open_table(CREDENTIALS).map_err(|e| self.db_error(e))?;

            let stored: Option<StoreMeta> =
                match meta_table.get(META_KEY).map_err(|e| self.db_error(e))? {
                    Some(value) => Some(self.decode("meta", META_KEY, value.value())?),
                    None => None,
                };
            let contents = match stored {
                Some(meta) => Contents::Identified(meta),
                None => {
                    let mut blank = true;
                    for empty in [
                        services.is_empty(),
                        service_defs.is_empty(),
                        revisions.is_empty(),
                        allocations.is_empty(),
                        node_flags.is_empty(),
                        events.is_empty(),
                        counters.is_empty(),
                        credentials.is_empty(),
                    ] {
                        blank &= empty.map_err(|e| self.db_error(e))?;
                    }
                    if blank {
                        Contents::Blank
                    } else {
                        Contents::Legacy
                    }
                }
            };
            let plan = plan_identity(marker, &contents).map_err(refused)?;
            let (opens, format) = match &contents {
                Contents::Identified(meta) => (meta.opens, meta.format),
                Contents::Blank | Contents::Legacy => (0, 0),
            };
            let store_id = match plan {
                IdentityPlan::Keep(id) => id,
                IdentityPlan::New(why) => {
                    let id = new_store_id();
                    match why {
                        NewIdentity::Created | NewIdentity::Upgraded => {
                            info!(path = %self.path.display(), store_id = %id, reason = %why, "store identity given")
                        }
                        _ => {
                            warn!(path = %self.path.display(), store_id = %id, reason = %why, "store given a new identity; agents drop the desired-set versions of the old one")
                        }
                    }
                    id
                }
            };
            if format < STORE_FORMAT && !matches!(contents, Contents::Blank) {
                let migrated = self.migrate_services(&services, &revisions, &mut service_defs)?;
                if migrated > 0 {
                    info!(path = %self.path.display(), services = migrated, format = STORE_FORMAT, "published ports of workloads became services of their own");
                }
            }
            if format < FORMAT_VERSION {
                let upgraded = self.upgrade_records(
                    &mut services,
                    &mut revisions,
                    &mut allocations,
                    &mut node_flags,
                    &counters,
                    &mut counter_sums,
                )?;
                if upgraded > 0 {
                    info!(path = %self.path.display(), records = upgraded, format = FORMAT_VERSION, "records brought to the current format (with checksums)");
                }
            }
            let meta = StoreMeta {
                store_id,
                opens: opens + 1,
                format: STORE_FORMAT,
            };
            let bytes = encode("meta", META_KEY, &meta)?;
            meta_table
                .insert(META_KEY, bytes.as_slice())
                .map_err(|e| self.db_error(e))?;
            meta
        };
        txn.commit().map_err(|e| self.db_error(e))?;
        Ok(meta)
    }

    /// Store format 3 ([`migrate::services_of_legacy_store`]): writes the services made of
    /// the workloads' published ports. Returns how many.
    fn migrate_services<'t>(
        &self,
        services: &Table<'t, &'static str, &'static [u8]>,
        revisions: &Table<'t, (&'static str, u64), &'static [u8]>,
        service_defs: &mut Table<'t, &'static str, &'static [u8]>,
    ) -> Result<usize, StoreError> {
        let mut workloads = BTreeMap::new();
        for entry in services.iter().map_err(|e| self.db_error(e))? {
            let (k, v) = entry.map_err(|e| self.db_error(e))?;
            let json: serde_json::Value = self.decode("services", k.value(), v.value())?;
            workloads.insert(k.value().to_string(), json);
        }
        let mut current = BTreeMap::new();
        for (name, workload) in &workloads {
            let Some(revision) = workload.get("revision").and_then(serde_json::Value::as_u64)
            else {
                continue;
            };
            if let Some(v) = revisions
                .get((name.as_str(), revision))
                .map_err(|e| self.db_error(e))?
            {
                let key = revision_key(name, revision);
                let json: serde_json::Value = self.decode("revisions", &key, v.value())?;
                current.insert((name.clone(), revision), json);
            }
        }
        let made = migrate::services_of_legacy_store(&workloads, &current);
        for record in &made {
            let bytes = encode("service_defs", &record.service.name, record)?;
            service_defs
                .insert(record.service.name.as_str(), bytes.as_slice())
                .map_err(|e| self.db_error(e))?;
        }
        Ok(made.len())
    }

    /// Rewrites records of the legacy format with checksums and gives counters theirs; the
    /// event log is left as it is (it ages out). Returns how many were rewritten.
    fn upgrade_records<'t>(
        &self,
        services: &mut Table<'t, &'static str, &'static [u8]>,
        revisions: &mut Table<'t, (&'static str, u64), &'static [u8]>,
        allocations: &mut Table<'t, &'static str, &'static [u8]>,
        node_flags: &mut Table<'t, &'static str, &'static [u8]>,
        counters: &Table<'t, &'static str, u64>,
        counter_sums: &mut Table<'t, &'static str, u32>,
    ) -> Result<usize, StoreError> {
        let mut upgraded = 0;
        for table in [services, allocations, node_flags] {
            let mut rewrites = Vec::new();
            for entry in table.iter().map_err(|e| self.db_error(e))? {
                let (k, v) = entry.map_err(|e| self.db_error(e))?;
                if let Some(bytes) = upgrade_legacy(k.value(), v.value()) {
                    rewrites.push((k.value().to_string(), bytes));
                }
            }
            upgraded += rewrites.len();
            for (key, bytes) in rewrites {
                table
                    .insert(key.as_str(), bytes.as_slice())
                    .map_err(|e| self.db_error(e))?;
            }
        }
        let mut rewrites = Vec::new();
        for entry in revisions.iter().map_err(|e| self.db_error(e))? {
            let (k, v) = entry.map_err(|e| self.db_error(e))?;
            let (service, revision) = k.value();
            if let Some(bytes) = upgrade_legacy(&revision_key(service, revision), v.value()) {
                rewrites.push((service.to_string(), revision, bytes));
            }
        }
        upgraded += rewrites.len();
        for (service, revision, bytes) in rewrites {
            revisions
                .insert((service.as_str(), revision), bytes.as_slice())
                .map_err(|e| self.db_error(e))?;
        }
        for entry in counters.iter().map_err(|e| self.db_error(e))? {
            let (k, v) = entry.map_err(|e| self.db_error(e))?;
            let present = counter_sums
                .get(k.value())
                .map_err(|e| self.db_error(e))?
                .is_some();
            if !present {
                counter_sums
                    .insert(k.value(), counter_checksum(k.value(), v.value()))
                    .map_err(|e| self.db_error(e))?;
                upgraded += 1;
            }
        }
        Ok(upgraded)
    }

    fn load_inner(&self) -> Result<StoredState, StoreError> {
        let txn = self.db().begin_read().map_err(|e| self.db_error(e))?;
        let mut state = StoredState {
            store_id: self.store_id.clone(),
            ..StoredState::default()
        };

        let table = txn.open_table(SERVICES).map_err(|e| self.db_error(e))?;
        for entry in table.iter().map_err(|e| self.db_error(e))? {
            let (k, v) = entry.map_err(|e| self.db_error(e))?;
            let record: WorkloadRecord = self.decode("services", k.value(), v.value())?;
            if record.name != k.value() {
                let named = format!("service {:?}", record.name);
                return Err(self.misplaced("services", k.value(), &named));
            }
            state.workloads.insert(k.value().to_string(), record);
        }
        let table = txn.open_table(SERVICE_DEFS).map_err(|e| self.db_error(e))?;
        for entry in table.iter().map_err(|e| self.db_error(e))? {
            let (k, v) = entry.map_err(|e| self.db_error(e))?;
            let record: ServiceRecord = self.decode("service_defs", k.value(), v.value())?;
            if record.service.name != k.value() {
                let named = format!("service {:?}", record.service.name);
                return Err(self.misplaced("service_defs", k.value(), &named));
            }
            state.services.insert(k.value().to_string(), record);
        }
        let table = txn.open_table(REVISIONS).map_err(|e| self.db_error(e))?;
        for entry in table.iter().map_err(|e| self.db_error(e))? {
            let (k, v) = entry.map_err(|e| self.db_error(e))?;
            let (service, revision) = k.value();
            let key = revision_key(service, revision);
            let record: RevisionRecord = self.decode("revisions", &key, v.value())?;
            if record.service != service || record.revision != revision {
                let named = revision_key(&record.service, record.revision);
                return Err(self.misplaced("revisions", &key, &named));
            }
            state
                .revisions
                .insert((service.to_string(), revision), record);
        }
        let table = txn.open_table(ALLOCATIONS).map_err(|e| self.db_error(e))?;
        for entry in table.iter().map_err(|e| self.db_error(e))? {
            let (k, v) = entry.map_err(|e| self.db_error(e))?;
            let record: Allocation = self.decode("allocations", k.value(), v.value())?;
            if record.id != k.value() {
                let named = format!("allocation {:?}", record.id);
                return Err(self.misplaced("allocations", k.value(), &named));
            }
            state.allocations.insert(k.value().to_string(), record);
        }
        let table = txn.open_table(NODE_FLAGS).map_err(|e| self.db_error(e))?;
        for entry in table.iter().map_err(|e| self.db_error(e))? {
            let (k, v) = entry.map_err(|e| self.db_error(e))?;
            let record: NodeFlags = self.decode("node_flags", k.value(), v.value())?;
            state.node_flags.insert(k.value().to_string(), record);
        }
        let sums = txn.open_table(COUNTER_SUMS).map_err(|e| self.db_error(e))?;
        let table = txn.open_table(COUNTERS).map_err(|e| self.db_error(e))?;
        for entry in table.iter().map_err(|e| self.db_error(e))? {
            let (k, v) = entry.map_err(|e| self.db_error(e))?;
            let (name, value) = (k.value(), v.value());
            let stored = sums.get(name).map_err(|e| self.db_error(e))?;
            if let Some(stored) = stored.map(|s| s.value()) {
                let computed = counter_checksum(name, value);
                if stored != computed {
                    return Err(StoreError::Corrupted {
                        path: self.path.display().to_string(),
                        table: "counters",
                        key: name.to_string(),
                        reason: format!(
                            "checksum mismatch: stored {stored:08x}, computed {computed:08x}"
                        ),
                    });
                }
            }
            state.counters.insert(name.to_string(), value);
        }
        let table = txn.open_table(CREDENTIALS).map_err(|e| self.db_error(e))?;
        for entry in table.iter().map_err(|e| self.db_error(e))? {
            let (k, v) = entry.map_err(|e| self.db_error(e))?;
            let record: Credential = self.decode("credentials", k.value(), v.value())?;
            if record.key() != k.value() {
                return Err(self.misplaced("credentials", k.value(), &record.key()));
            }
            state.credentials.insert(k.value().to_string(), record);
        }
        Ok(state)
    }

    fn commit_inner(&self, writes: &[Write]) -> Result<(), StoreError> {
        let txn = self.db().begin_write().map_err(|e| self.db_error(e))?;
        {
            let mut services = txn.open_table(SERVICES).map_err(|e| self.db_error(e))?;
            let mut service_defs = txn.open_table(SERVICE_DEFS).map_err(|e| self.db_error(e))?;
            let mut revisions = txn.open_table(REVISIONS).map_err(|e| self.db_error(e))?;
            let mut allocations = txn.open_table(ALLOCATIONS).map_err(|e| self.db_error(e))?;
            let mut node_flags = txn.open_table(NODE_FLAGS).map_err(|e| self.db_error(e))?;
            let mut events = txn.open_table(EVENTS).map_err(|e| self.db_error(e))?;
            let mut counters = txn.open_table(COUNTERS).map_err(|e| self.db_error(e))?;
            let mut counter_sums = txn.open_table(COUNTER_SUMS).map_err(|e| self.db_error(e))?;
            let mut credentials = txn.open_table(CREDENTIALS).map_err(|e| self.db_error(e))?;
            for write in writes {
                match write {
                    Write::PutWorkload(s) => {
                        let bytes = encode("services", &s.name, s)?;
                        services
                            .insert(s.name.as_str(), bytes.as_slice())
                            .map_err(|e| self.db_error(e))?;
                    }
                    Write::DeleteWorkload(name) => {
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
                    Write::PutService(r) => {
                        let bytes = encode("service_defs", &r.service.name, r)?;
                        service_defs
                            .insert(r.service.name.as_str(), bytes.as_slice())
                            .map_err(|e| self.db_error(e))?;
                    }
                    Write::DeleteService(name) => {
                        service_defs
                            .remove(name.as_str())
                            .map_err(|e| self.db_error(e))?;
                    }
                    Write::PutRevision(r) => {
                        let key = revision_key(&r.service, r.revision);
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
                        counter_sums
                            .insert(*name, counter_checksum(name, *value))
                            .map_err(|e| self.db_error(e))?;
                    }
                    Write::PutCredential(c) => {
                        let key = c.key();
                        let bytes = encode("credentials", &key, c)?;
                        credentials
                            .insert(key.as_str(), bytes.as_slice())
                            .map_err(|e| self.db_error(e))?;
                    }
                    Write::DeleteCredential(key) => {
                        credentials
                            .remove(key.as_str())
                            .map_err(|e| self.db_error(e))?;
                    }
                }
            }
        }
        // Durability::Immediate is redb's default: commit returns after fsync.
        txn.commit().map_err(|e| self.db_error(e))
    }

    fn events_inner(&self, since: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let txn = self.db().begin_read().map_err(|e| self.db_error(e))?;
        let table = txn.open_table(EVENTS).map_err(|e| self.db_error(e))?;
        let mut out: Vec<EventRecord> = Vec::new();
        for entry in table
            .range(since..)
            .map_err(|e| self.db_error(e))?
            .take(limit)
        {
            let (k, v) = entry.map_err(|e| self.db_error(e))?;
            let seq = k.value();
            let problem = match decode::<EventRecord>(&seq.to_string(), v.value()) {
                Ok(event) if event.seq == seq => {
                    out.push(event);
                    continue;
                }
                Ok(event) => format!("the record says it is event {}", event.seq),
                Err(DecodeError::Corrupted(reason) | DecodeError::Unreadable(reason)) => reason,
            };
            warn!(path = %self.path.display(), seq, problem = %problem, "stored event is corrupted; listed as such");
            // The neighbour's time keeps a listing in time order.
            let unix_ms = out.last().map(|e| e.unix_ms).unwrap_or(0);
            out.push(EventRecord {
                seq,
                unix_ms,
                kind: CORRUPTED_EVENT.to_string(),
                subject: "store".to_string(),
                message: format!(
                    "event {seq} is corrupted in the store and cannot be shown ({problem})"
                ),
            });
        }
        Ok(out)
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<StoredState, StoreError> {
        guarded(&self.path, "loading the state", || self.load_inner())
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        guarded(&self.path, "committing", || self.commit_inner(writes))
    }

    fn events(&self, since: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        guarded(&self.path, "listing events", || {
            self.events_inner(since, limit)
        })
    }
}

/// Key of a revision in errors and checksums: `web@3`.
fn revision_key(service: &str, revision: u64) -> String {
    format!("{service}@{revision}")
}

fn counter_checksum(name: &str, value: u64) -> u32 {
    checksum(name, &value.to_le_bytes())
}

/// Runs `f`, turning a panic (redb panics on some corrupted files) into an error naming the
/// file.
pub(crate) fn guarded<T>(
    path: &Path,
    operation: &'static str,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // Nothing `f` touches is used again after a panic but the database, which redb keeps
    // consistent (a panicking transaction is dropped uncommitted).
    std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        error!(path = %path.display(), operation, message = %message, "the database panicked");
        Err(StoreError::Panicked {
            path: path.display().to_string(),
            operation,
            message,
        })
    })
}

/// How the store file is found before opening it.
fn on_disk(path: &Path) -> Result<OnDisk, StoreError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() && meta.len() == 0 => Ok(OnDisk::Empty),
        Ok(_) => Ok(OnDisk::Present),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(OnDisk::Missing),
        Err(source) => Err(StoreError::Io {
            path: path.display().to_string(),
            action: "inspect the store file",
            source,
        }),
    }
}

/// Creates the empty store file readable by its owner only; redb initializes it.
fn create_private(path: &Path) -> Result<(), StoreError> {
    match private_file_options().create_new(true).open(path) {
        Ok(_) => Ok(()),
        // Another process created it meanwhile; the open that follows settles who runs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => restrict_mode(path),
        Err(source) => Err(StoreError::Io {
            path: path.display().to_string(),
            action: "create the store file",
            source,
        }),
    }
}

/// Takes group and other permissions off an existing store file (it holds env values).
fn restrict_mode(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let io_error = |source| StoreError::Io {
            path: path.display().to_string(),
            action: "restrict the store file to its owner (mode 0600)",
            source,
        };
        let mode = std::fs::metadata(path)
            .map_err(io_error)?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(io_error)?;
            warn!(path = %path.display(), mode = %format!("{:o}", mode & 0o7777), "store file was open to other users; its mode is now 0600");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// What to do about a failed open.
fn open_hint(e: &redb::DatabaseError, marker: &Path) -> String {
    let damaged = || {
        format!(
            "the file is damaged or is not a Drover store: restore it from a backup, or move \
             it and {} away to start a new, empty cluster on purpose",
            marker.display()
        )
    };
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => {
            "another coordinator (or `drover dev`) has it open".into()
        }
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => damaged(),
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::InvalidData =>
        {
            damaged()
        }
        _ => "check the file, its directory and their permissions".into(),
    }
}
