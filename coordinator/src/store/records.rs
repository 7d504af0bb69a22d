//! Records kept in the store, and their versioned encoding.

use std::collections::BTreeMap;

use drover_proto::model::{Allocation, NodeFlags, Service, Traffic, UpdateStrategy, WorkloadSpec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{FORMAT_VERSION, StoreError};

/// A service: its current revision and the settings that change without a new revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRecord {
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
    /// Horizontal autoscaling, as the last apply declared it (like `update`, it is the
    /// workload's, not a revision's).
    #[serde(default)]
    pub autoscale: Option<drover_proto::model::Autoscale>,
    /// Vertical autoscaling, as the last apply declared it (the workload's, like
    /// `autoscale`).
    #[serde(default)]
    pub vertical_autoscale: Option<drover_proto::model::VerticalAutoscale>,
}

impl WorkloadRecord {
    /// A new service at `revision` with default rollout settings and no rollout.
    pub fn new(
        name: &str,
        revision: u64,
        replicas: u32,
        traffic: Traffic,
        now_unix_ms: u64,
    ) -> WorkloadRecord {
        WorkloadRecord {
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
            autoscale: None,
            vertical_autoscale: None,
        }
    }

    /// The highest revision number given so far.
    pub fn newest_revision(&self) -> u64 {
        self.latest_revision.max(self.revision)
    }
}

/// A service: what a name (and, later, an address) routes to, as the operator declared it,
/// with the node ports the coordinator picked filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The service.
    pub service: Service,
    /// Creation time, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// Last change, ms since the Unix epoch.
    pub updated_unix_ms: u64,
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
    pub spec: WorkloadSpec,
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
    /// Workloads by name.
    pub workloads: BTreeMap<String, WorkloadRecord>,
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
    /// Tokens, certificate records and the gossip keyring, by key.
    pub credentials: BTreeMap<String, super::credentials::Credential>,
    /// The store's identity: a random 128-bit id (32 hex digits) given when the store was
    /// created, the same across reopens. A new id (a reset, a restored backup) means the
    /// versions agents applied came from another store and no longer order anything.
    pub store_id: String,
}

impl StoredState {
    /// Value of a named counter, 0 when never set.
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

/// Format version of records written before checksums: `{"v":1,"record":{…}}`.
const LEGACY_FORMAT: u32 = 1;

/// How a record is written: the record's JSON kept as a string, so the checksum covers the
/// exact bytes that were written (re-encoding parsed JSON need not give the same bytes).
#[derive(Serialize)]
struct EnvelopeOut<'a> {
    v: u32,
    /// 8 hex digits: a fixed width keeps a record's size independent of its checksum.
    crc32: String,
    record: &'a str,
}

/// Any version of a record as read.
#[derive(Deserialize)]
struct EnvelopeIn {
    v: u32,
    #[serde(default)]
    crc32: Option<String>,
    record: serde_json::Value,
}

/// Why a stored value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The bytes are not what was written: a checksum mismatch, broken JSON, a record that
    /// names another key.
    Corrupted(String),
    /// Intact, but this build cannot read it (an unknown format version, another shape).
    Unreadable(String),
}

impl DecodeError {
    /// Turns it into a store error about `table`/`key` of the file at `path`.
    pub(crate) fn into_store_error(self, path: &str, table: &'static str, key: &str) -> StoreError {
        match self {
            DecodeError::Corrupted(reason) => StoreError::Corrupted {
                path: path.to_string(),
                table,
                key: key.to_string(),
                reason,
            },
            DecodeError::Unreadable(reason) => StoreError::Record {
                table,
                key: key.to_string(),
                reason,
            },
        }
    }
}

/// Checksum of a record's JSON under its key: a value moved to another key fails it too.
pub(crate) fn checksum(key: &str, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key.as_bytes());
    hasher.update(&[0]);
    hasher.update(bytes);
    hasher.finalize()
}

/// Encodes a record under `key` with its format version and checksum.
pub(crate) fn encode<T: Serialize>(
    table: &'static str,
    key: &str,
    record: &T,
) -> Result<Vec<u8>, StoreError> {
    let encode_error = |e: serde_json::Error| StoreError::Record {
        table,
        key: key.to_string(),
        reason: format!("cannot encode: {e}"),
    };
    let json = serde_json::to_string(record).map_err(encode_error)?;
    seal(key, &json).map_err(encode_error)
}

fn seal(key: &str, json: &str) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&EnvelopeOut {
        v: FORMAT_VERSION,
        crc32: format!("{:08x}", checksum(key, json.as_bytes())),
        record: json,
    })
}

/// Decodes the record stored under `key`, checking its checksum; records of the legacy
/// format (no checksum) are read as they are.
pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, DecodeError> {
    let envelope: EnvelopeIn = serde_json::from_slice(bytes)
        .map_err(|e| DecodeError::Corrupted(format!("not a record envelope: {e}")))?;
    match (envelope.v, envelope.record) {
        (LEGACY_FORMAT, record) => serde_json::from_value(record)
            .map_err(|e| DecodeError::Corrupted(format!("cannot decode: {e}"))),
        (FORMAT_VERSION, serde_json::Value::String(json)) => {
            let Some(stored) = envelope
                .crc32
                .and_then(|hex| u32::from_str_radix(&hex, 16).ok())
            else {
                return Err(DecodeError::Corrupted("no readable checksum".into()));
            };
            let computed = checksum(key, json.as_bytes());
            if stored != computed {
                return Err(DecodeError::Corrupted(format!(
                    "checksum mismatch: stored {stored:08x}, computed {computed:08x}"
                )));
            }
            serde_json::from_str(&json)
                .map_err(|e| DecodeError::Unreadable(format!("cannot decode: {e}")))
        }
        (FORMAT_VERSION, _) => Err(DecodeError::Corrupted("the record is not a string".into())),
        (v, _) => Err(DecodeError::Unreadable(format!(
            "format version {v} is not one this build reads ({LEGACY_FORMAT} or \
             {FORMAT_VERSION})"
        ))),
    }
}

/// A legacy record (no checksum) rewritten in the current format, the record unchanged;
/// `None` for anything else, including a legacy record that does not parse (loading it
/// reports it).
pub(crate) fn upgrade_legacy(key: &str, bytes: &[u8]) -> Option<Vec<u8>> {
    let envelope: EnvelopeIn = serde_json::from_slice(bytes).ok()?;
    if envelope.v != LEGACY_FORMAT {
        return None;
    }
    let json = serde_json::to_string(&envelope.record).ok()?;
    seal(key, &json).ok()
}

/// Applies writes to an in-memory mirror of a store. Events are not part of the mirror
/// (they are read back from the store), so `PutEvent` is skipped here.
pub fn apply_writes(state: &mut StoredState, writes: &[super::Write]) {
    use super::Write;
    for write in writes {
        match write {
            Write::PutWorkload(s) => {
                state.workloads.insert(s.name.clone(), s.clone());
            }
            Write::DeleteWorkload(name) => {
                state.workloads.remove(name);
                state.revisions.retain(|(service, _), _| service != name);
            }
            Write::PutService(r) => {
                state.services.insert(r.service.name.clone(), r.clone());
            }
            Write::DeleteService(name) => {
                state.services.remove(name);
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
            Write::PutCredential(c) => {
                state.credentials.insert(c.key(), c.clone());
            }
            Write::DeleteCredential(key) => {
                state.credentials.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> EventRecord {
        EventRecord {
            seq,
            unix_ms: 5,
            kind: "test".into(),
            subject: "web".into(),
            message: "replicas 3".into(),
        }
    }

    /// The stored bytes with their record's JSON edited in place, checksum untouched.
    fn tampered(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
        let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
        assert!(text.contains(from), "{text}");
        text.replacen(from, to, 1).into_bytes()
    }

    #[test]
    fn records_round_trip_with_their_checksum() {
        let bytes = encode("events", "7", &event(7)).expect("encode");
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        assert!(text.starts_with(r#"{"v":2,"crc32":"#), "{text}");
        assert_eq!(decode::<EventRecord>("7", &bytes), Ok(event(7)));
    }

    #[test]
    fn a_changed_record_fails_its_checksum() {
        let bytes = encode("events", "7", &event(7)).expect("encode");
        let changed = tampered(&bytes, "replicas 3", "replicas 7");
        match decode::<EventRecord>("7", &changed) {
            Err(DecodeError::Corrupted(reason)) => assert!(reason.contains("checksum"), "{reason}"),
            other => panic!("changed record decoded: {other:?}"),
        }
    }

    #[test]
    fn a_record_under_another_key_or_a_changed_checksum_fails() {
        let bytes = encode("events", "7", &event(7)).expect("encode");
        assert!(matches!(
            decode::<EventRecord>("8", &bytes),
            Err(DecodeError::Corrupted(_))
        ));
        let crc = checksum(
            "7",
            serde_json::to_string(&event(7)).expect("json").as_bytes(),
        );
        let changed = tampered(
            &bytes,
            &format!("\"crc32\":\"{crc:08x}\""),
            &format!("\"crc32\":\"{:08x}\"", crc ^ 1),
        );
        assert!(matches!(
            decode::<EventRecord>("7", &changed),
            Err(DecodeError::Corrupted(_))
        ));
        assert!(matches!(
            decode::<EventRecord>("7", b"{\"v\":2,\"crc"),
            Err(DecodeError::Corrupted(_))
        ));
    }

    #[test]
    fn legacy_records_without_a_checksum_still_load_and_upgrade() {
        let legacy = serde_json::to_vec(&serde_json::json!({"v": 1, "record": event(7)}))
            .expect("legacy bytes");
        assert_eq!(decode::<EventRecord>("7", &legacy), Ok(event(7)));
        let upgraded = upgrade_legacy("7", &legacy).expect("a legacy record upgrades");
        assert!(upgraded.starts_with(br#"{"v":2,"#));
        assert_eq!(decode::<EventRecord>("7", &upgraded), Ok(event(7)));
        assert_eq!(upgrade_legacy("7", &upgraded), None, "current records stay");
        assert_eq!(
            upgrade_legacy("7", b"{\"v\":1,"),
            None,
            "broken ones are left"
        );
    }

    #[test]
    fn unknown_versions_are_unreadable_not_corrupted() {
        match decode::<EventRecord>("7", br#"{"v":99,"record":{}}"#) {
            Err(DecodeError::Unreadable(reason)) => assert!(reason.contains("99"), "{reason}"),
            other => panic!("version 99 decoded: {other:?}"),
        }
    }
}
