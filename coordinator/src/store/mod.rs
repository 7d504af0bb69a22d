//! Durable desired state: the `Store` trait, its records, and its implementations.
//!
//! The coordinator keeps its working state in memory and writes every change through
//! [`Store::commit`] before acknowledging it. A commit is one atomic, durable transaction.

pub mod credentials;
mod identity;
mod memory;
pub mod migrate;
mod records;
mod redb_store;
mod sealed;
#[cfg(test)]
mod suite;

pub use memory::MemoryStore;
pub use records::{
    EventRecord, RevisionRecord, Rollout, RolloutPhase, ServiceRecord, StoredState,
    TrafficBaseline, WorkloadRecord, apply_writes,
};
pub use redb_store::RedbStore;
pub use sealed::{SealedStore, SecretsKey};

use drover_proto::model::{Allocation, NodeFlags};

/// Format version written into every stored record. Bump it with a migration when a record's
/// shape changes incompatibly.
///
/// 1: `{"v":1,"record":{…}}`, no checksum (still read; rewritten as 2 when the store opens,
/// events excepted). 2: `{"v":2,"crc32":"<8 hex digits>","record":"<the record's JSON>"}`, the
/// CRC-32 taken over the key and the record's JSON.
pub const FORMAT_VERSION: u32 = 2;

/// Format of the store as a whole, kept in its meta record; a store of an older format is
/// migrated when it opens (in one transaction with the identity).
///
/// 2: records with checksums ([`FORMAT_VERSION`]). 3: services apart from workloads: a
/// workload's published ports (`ports[].service_port` of its current revision) became a
/// service of the same name (`service_defs` table), see [`migrate`].
pub const STORE_FORMAT: u32 = 3;

/// Kind of the event [`Store::events`] lists in place of a stored event that is corrupted.
pub const CORRUPTED_EVENT: &str = "store_event_corrupted";

/// One change in a commit.
// Writes live only as long as one commit; boxing the spec would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Create or replace a service record.
    PutWorkload(WorkloadRecord),
    /// Remove a service record and all its revisions.
    DeleteWorkload(String),
    /// Create or replace a service.
    PutService(ServiceRecord),
    /// Remove a service.
    DeleteService(String),
    /// Store a revision of a workload.
    PutRevision(RevisionRecord),
    /// Removes one revision (pruned history).
    DeleteRevision(String, u64),
    /// Create or replace an allocation.
    PutAllocation(Allocation),
    /// Remove an allocation.
    DeleteAllocation(String),
    /// Set a node's operator flags.
    PutNodeFlags(String, NodeFlags),
    /// Forget a removed node's operator flags.
    DeleteNodeFlags(String),
    /// Append an event.
    PutEvent(EventRecord),
    /// Set a named counter (allocation ids, event sequence, coordinator boots).
    PutCounter(&'static str, u64),
    /// Create or replace a credential (token, certificate record, gossip keyring).
    PutCredential(credentials::Credential),
    /// Remove a credential by key.
    DeleteCredential(String),
}

/// Errors of a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The underlying database failed.
    #[error("store {path}: {source}")]
    Database {
        /// Database file.
        path: String,
        /// Cause.
        #[source]
        source: Box<redb::Error>,
    },
    /// The store file could not be opened.
    #[error("cannot open store file {path}: {source}; {hint}")]
    Open {
        /// Database file.
        path: String,
        /// Cause.
        #[source]
        source: Box<redb::Error>,
        /// What to do about it.
        hint: String,
    },
    /// The data dir held a store (its marker says so) but the store file is gone or empty:
    /// starting would silently make an empty cluster.
    #[error(
        "store file {path} {found}, but {marker} says this data dir held the cluster's store \
         (id {store_id}); refusing to start as an empty cluster. Restore {path} from a backup, \
         or remove {marker} to start a new, empty cluster on purpose"
    )]
    Refused {
        /// Database file.
        path: String,
        /// Marker file.
        marker: String,
        /// How the store file was found: "is missing", "is empty (0 bytes)"…
        found: &'static str,
        /// The id the marker names, or "unreadable".
        store_id: String,
    },
    /// A stored record is not what was written (checksum mismatch, broken encoding).
    #[error(
        "store file {path}: record {table}/{key} is corrupted ({reason}); refusing to run on \
         silently changed state: restore the file from a backup"
    )]
    Corrupted {
        /// Database file.
        path: String,
        /// Table name.
        table: &'static str,
        /// Record key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The database library panicked, which it does on some corrupted files.
    #[error(
        "store file {path}: the database panicked while {operation} ({message}); the file is \
         probably corrupted: restore it from a backup"
    )]
    Panicked {
        /// Database file.
        path: String,
        /// What the store was doing.
        operation: &'static str,
        /// The panic's message.
        message: String,
    },
    /// The store file, or the marker beside it, could not be inspected, created, read or
    /// written.
    #[error("{path}: cannot {action}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed, e.g. "write the marker".
        action: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The key that seals secrets at rest could not be read or made.
    #[error("secrets key {path}: {reason}")]
    SecretsKey {
        /// The key file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// A record could not be encoded or decoded.
    #[error("store record {table}/{key}: {reason}")]
    Record {
        /// Table name.
        table: &'static str,
        /// Record key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// Durable storage of the coordinator's desired state.
///
/// Implementations must make a commit atomic (all writes or none) and durable before
/// returning `Ok`.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Everything stored, to rebuild the coordinator's state at start, with the store's
    /// identity ([`StoredState::store_id`]). A corrupted record of the desired state is an
    /// error naming it: better not to start than to run a silently changed replica count.
    fn load(&self) -> Result<StoredState, StoreError>;
    /// Applies `writes` atomically and durably.
    fn commit(&self, writes: &[Write]) -> Result<(), StoreError>;
    /// Up to `limit` events with a sequence number of at least `since`, oldest first. A
    /// stored event that is corrupted is listed as an event of kind [`CORRUPTED_EVENT`] that
    /// says so, so one bad record does not hide the others.
    fn events(&self, since: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError>;
}

/// Counter names used with [`Write::PutCounter`].
pub mod counters {
    /// Next allocation number.
    pub const NEXT_ALLOC: &str = "next_alloc";
    /// Next event sequence number.
    pub const NEXT_EVENT: &str = "next_event";
    /// Number of times a coordinator started on this store.
    pub const BOOTS: &str = "boots";
}

/// Events kept in the store; older ones are trimmed on commit.
pub const EVENT_RETENTION: u64 = 50_000;
