//! Records kept in the store, and their versioned encoding.

use std::collections::BTreeMap;

use drover_proto::model::{Allocation, NodeFlags, ServiceSpec, Traffic, UpdateStrategy};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{FORMAT_VERSION, StoreError};

/// A service: its current revision and the settings that change without a new revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Service name.
    pub name: String,
    /// Revision new replicas run: the one being rolled out, or the one in place.
    pub revision: u64,
    /// Desired replica count.
    pub replicas: u32,
    /// Traffic policy in force (may differ from the revision's spec after `drover weights`).
    pub traffic: Traffic,
    /// Creation time, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// Last change, ms since the Unix epoch.
    pub updated_unix_ms: u64,
    /// Rollout settings in force (the last applied; changing them makes no revision).
    #[serde(default)]
    pub update: UpdateStrategy,
    /// Rollouts wait while set (`drover rollout pause`, a manifest's `paused: true`).
    #[serde(default)]
    pub paused: bool,
    /// Highest revision number ever given, so numbers are never reused after an undo or a
    /// pruned history.
    #[serde(default)]
    pub latest_revision: u64,
    /// Last revision whose replicas were all available: where a failed rollout goes back to.
    #[serde(default)]
    pub stable_revision: Option<u64>,
    /// Revisions whose rollout failed, with the cause.
    #[serde(default)]
    pub failed_revisions: BTreeMap<u64, String>,
    /// The current or last rollout.
    #[serde(default)]
    pub rollout: Option<Rollout>,
}

impl ServiceRecord {
    /// A new service at `revision` with default rollout settings and no rollout.
    pub fn new(
        name: &str,
        revision: u64,
        replicas: u32,
        traffic: Traffic,
        now_unix_ms: u64,
    ) -> ServiceRecord {
        ServiceRecord {
            name: name.to_string(),
            revision,
            replicas,
            traffic,
            created_unix_ms: now_unix_ms,
            updated_unix_ms: now_unix_ms,
            update: UpdateStrategy::default(),
            paused: false,
            latest_revision: revision,
            stable_revision: None,
            failed_revisions: BTreeMap::new(),
            rollout: None,
        }
    }

    /// The highest revision number given so far.
    pub fn newest_revision(&self) -> u64 {
        self.latest_revision.max(self.revision)
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutPhase {
    /// Replicas are being replaced (or it waits: paused, a canary step, readiness).
    Progressing,
    /// Every desired replica runs the revision and is available; nothing else runs.
    Complete,
    /// It failed; nothing more is placed for it and the old replicas keep serving.
    Failed,
}

impl RolloutPhase {
    /// The lowercase name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Progressing => "progressing",
            RolloutPhase::Complete => "complete",
            RolloutPhase::Failed => "failed",
        }
    }
}

/// One rollout of a service to a revision; durable, so a restarted coordinator resumes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Revision being rolled out.
    pub revision: u64,
    /// Revision it replaces (the one in place when it started), if any.
    pub from_revision: Option<u64>,
    /// What started it: "apply", "restart", "undo", "auto-revert from revision 3".
    pub started_by: String,
    /// Start, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// Last progress (a newly available replica, a step reached, a resume): the progress
    /// deadline counts from here.
    pub progress_unix_ms: u64,
    /// Most replicas of the revision seen available at once, to tell new progress.
    pub most_available: u32,
    /// Where it stands.
    pub phase: RolloutPhase,
    /// Canary step in progress, from 0; equal to the number of steps once promoted.
    pub step: u32,
    /// When the current step began, ms since the Unix epoch.
    pub step_started_unix_ms: u64,
    /// Connection counts of (canary, stable) when the current step began, from
    /// [`crate::state::ClusterState::traffic`] of boot `baseline_boot`.
    pub baseline: TrafficBaseline,
    /// Why it failed, once it has.
    pub cause: String,
    /// End, ms since the Unix epoch, once complete or failed.
    pub ended_unix_ms: Option<u64>,
}

/// Connection counts at the start of a canary step, to judge the step by differences.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficBaseline {
    /// Coordinator boot the counts were taken in; counts of another boot are not comparable.
    pub boot: u64,
    /// The canary's (connections, failed).
    pub canary: (u64, u64),
    /// The other revisions' (connections, failed).
    pub stable: (u64, u64),
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
    /// What made it: "apply", "restart" or an operator's change cause.
    #[serde(default)]
    pub cause: String,
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
            Write::DeleteRevision(service, revision) => {
                state.revisions.remove(&(service.clone(), *revision));
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
            Write::DeleteNodeFlags(node) => {
                state.node_flags.remove(node);
            }
            Write::PutEvent(_) => {}
            Write::PutCounter(name, value) => {
                state.counters.insert((*name).to_string(), *value);
            }
        }
    }
}
