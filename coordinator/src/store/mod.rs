//! Durable desired state: the `Store` trait, its records, and its implementations.
//!
//! The coordinator keeps its working state in memory and writes every change through
//! [`Store::commit`] before acknowledging it. A commit is one atomic, durable transaction.

mod memory;
mod records;
mod redb_store;
#[cfg(test)]
mod suite;

pub use memory::MemoryStore;
pub use records::{
    EventRecord, RevisionRecord, Rollout, RolloutPhase, ServiceRecord, StoredState,
    TrafficBaseline, apply_writes,
};
pub use redb_store::RedbStore;

use drover_proto::model::{Allocation, NodeFlags};

/// Format version written into every stored record. Bump it with a migration when a record's
/// shape changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

/// One change in a commit.
// Writes live only as long as one commit; boxing the spec would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Create or replace a service record.
    PutService(ServiceRecord),
    /// Remove a service record and all its revisions.
    DeleteService(String),
    /// Store a revision of a service.
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
    /// Everything stored, to rebuild the coordinator's state at start.
    fn load(&self) -> Result<StoredState, StoreError>;
    /// Applies `writes` atomically and durably.
    fn commit(&self, writes: &[Write]) -> Result<(), StoreError>;
    /// Up to `limit` events with a sequence number of at least `since`, oldest first.
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
