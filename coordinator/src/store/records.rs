//! Records kept in the store, and their versioned encoding.

use std::collections::BTreeMap;

use drover_proto::model::{Allocation, NodeFlags, ServiceSpec, Traffic};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{FORMAT_VERSION, StoreError};

/// A service: its current revision and the settings that change without a new revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Service name.
    pub name: String,
    /// Revision new replicas run.
    pub revision: u64,
    /// Desired replica count.
    pub replicas: u32,
    /// Traffic policy in force (may differ from the revision's spec after `drover weights`).
    pub traffic: Traffic,
    /// Creation time, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// Last change, ms since the Unix epoch.
    pub updated_unix_ms: u64,
}

/// One revision of a service's spec; revisions are never modified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionRecord {
    /// Service name.
    pub service: String,
    /// Revision number, from 1.
    pub revision: u64,
    /// The spec as applied.
    pub spec: ServiceSpec,
    /// Creation time, ms since the Unix epoch.
    pub created_unix_ms: u64,
}

/// A cluster event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Sequence number, increasing.
    pub seq: u64,
    /// Time, ms since the Unix epoch.
    pub unix_ms: u64,
    /// Machine-readable kind.
    pub kind: String,
    /// Service, node or allocation the event is about.
    pub subject: String,
    /// Human-readable message.
    pub message: String,
}

/// Everything a store holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredState {
    /// Services by name.
    pub services: BTreeMap<String, ServiceRecord>,
    /// Revisions by (service, revision).
    pub revisions: BTreeMap<(String, u64), RevisionRecord>,
    /// Allocations by id.
    pub allocations: BTreeMap<String, Allocation>,
    /// Operator flags by node id.
    pub node_flags: BTreeMap<String, NodeFlags>,
    /// Named counters.
    pub counters: BTreeMap<String, u64>,
}

impl StoredState {
    /// Value of a named counter, 0 when never set.
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

#[derive(Serialize)]
struct EnvelopeRef<'a, T> {
    v: u32,
    record: &'a T,
}

#[derive(Deserialize)]
struct Envelope<T> {
    v: u32,
    record: T,
}

/// Encodes a record with its format version.
pub(crate) fn encode<T: Serialize>(
    table: &'static str,
    key: &str,
    record: &T,
) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&EnvelopeRef {
        v: FORMAT_VERSION,
        record,
    })
    .map_err(|e| StoreError::Record {
        table,
        key: key.to_string(),
        reason: format!("cannot encode: {e}"),
    })
}

/// Decodes a record, refusing format versions this build does not understand.
pub(crate) fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    let record_error = |reason: String| StoreError::Record {
        table,
        key: key.to_string(),
        reason,
    };
    let envelope: Envelope<serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|e| record_error(format!("cannot decode: {e}")))?;
    if envelope.v != FORMAT_VERSION {
        return Err(record_error(format!(
            "format version {} is not {FORMAT_VERSION}, the one this build reads",
            envelope.v
        )));
    }
    serde_json::from_value(envelope.record).map_err(|e| record_error(format!("cannot decode: {e}")))
}

/// Applies writes to an in-memory mirror of a store. Events are not part of the mirror
/// (they are read back from the store), so `PutEvent` is skipped here.
pub fn apply_writes(state: &mut StoredState, writes: &[super::Write]) {
    use super::Write;
    for write in writes {
        match write {
            Write::PutService(s) => {
                state.services.insert(s.name.clone(), s.clone());
            }
            Write::DeleteService(name) => {
                state.services.remove(name);
                state.revisions.retain(|(service, _), _| service != name);
            }
            Write::PutRevision(r) => {
                state
                    .revisions
                    .insert((r.service.clone(), r.revision), r.clone());
            }
            Write::PutAllocation(a) => {
                state.allocations.insert(a.id.clone(), a.clone());
            }
            Write::DeleteAllocation(id) => {
                state.allocations.remove(id);
            }
            Write::PutNodeFlags(node, flags) => {
                state.node_flags.insert(node.clone(), *flags);
            }
            Write::PutEvent(_) => {}
            Write::PutCounter(name, value) => {
                state.counters.insert((*name).to_string(), *value);
            }
        }
    }
}
