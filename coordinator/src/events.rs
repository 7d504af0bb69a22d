//! Kinds of cluster events, one place for their names.

/// A workload was created.
pub const SERVICE_CREATED: &str = "service_created";
/// A workload changed (new revision, replicas or traffic).
pub const SERVICE_UPDATED: &str = "service_updated";
/// A workload was deleted.
pub const SERVICE_DELETED: &str = "service_deleted";
/// An allocation was placed on a node.
pub const ALLOCATION_PLACED: &str = "allocation_placed";
/// An allocation was told to stop.
pub const ALLOCATION_STOPPED: &str = "allocation_stopped";
/// An agent reported an allocation failed.
pub const ALLOCATION_FAILED: &str = "allocation_failed";
/// Replicas could not be placed.
pub const PLACEMENT_FAILED: &str = "placement_failed";
/// A node's agent connected.
pub const NODE_CONNECTED: &str = "node_connected";
/// A node's agent stream ended.
pub const NODE_DISCONNECTED: &str = "node_disconnected";
/// An operator changed a node's flags.
pub const NODE_FLAGS: &str = "node_flags_changed";
/// A draining node has no allocations left.
pub const NODE_DRAINED: &str = "node_drained";
/// The coordinator started.
pub const COORDINATOR_STARTED: &str = "coordinator_started";
/// A node's link and gossip both lost it.
pub const NODE_DOWN: &str = "node_down";
/// A node back from down loses placement ties for a while (flap hysteresis).
pub const NODE_PROBATION: &str = "node_probation";
/// An allocation's node is down.
pub const ALLOCATION_LOST: &str = "allocation_lost";
/// A replacement for an allocation lost with its node: from which node to which.
pub const ALLOCATION_RESCHEDULED: &str = "allocation_rescheduled";
/// Too many nodes failed at once to trust the verdict.
pub const RESCHEDULE_HELD: &str = "reschedule_held_back";
/// A rollout to a revision began (apply, restart, undo, revert).
pub const ROLLOUT_STARTED: &str = "rollout_started";
/// A canary step passed its analysis and pause.
pub const ROLLOUT_STEP: &str = "rollout_step";
/// A canary was promoted: the rest of the replicas roll.
pub const ROLLOUT_PROMOTED: &str = "rollout_promoted";
/// An operator paused a rollout.
pub const ROLLOUT_PAUSED: &str = "rollout_paused";
/// An operator resumed a rollout.
pub const ROLLOUT_RESUMED: &str = "rollout_resumed";
/// A rollout failed (its cause in the message).
pub const ROLLOUT_FAILED: &str = "rollout_failed";
/// A failed or aborted rollout went back to the last stable revision.
pub const ROLLOUT_REVERTED: &str = "rollout_reverted";
/// Every replica runs the new revision and is available.
pub const ROLLOUT_COMPLETED: &str = "rollout_completed";
/// An operator removed a down node for good.
pub const NODE_REMOVED: &str = "node_removed";
/// An operator's request changed something (who, what).
pub const API_REQUEST: &str = "api_request";
/// A token was made or revoked.
pub const TOKEN_CHANGED: &str = "token_changed";
/// A node joined with a token, or renewed its certificate.
pub const NODE_CERTIFIED: &str = "node_certified";
/// A CA rotation started or finished.
pub const CA_ROTATED: &str = "ca_rotated";
/// A service (a name and ports over workloads' replicas) was created.
pub const SERVICE_PUBLISHED: &str = "service_published";
/// A service changed (ports, selector, type, weights).
pub const SERVICE_CHANGED: &str = "service_changed";
/// A workload was deleted.
pub const SERVICE_REMOVED: &str = "service_removed";
/// An autoscaler changed a workload's replica count.
pub const AUTOSCALED: &str = "autoscaled";
/// A vertical autoscaler changed a running replica's resources in place.
pub const RESIZED: &str = "resized";
/// An autoscaler applied without its workload was applied, changed or deleted.
pub const AUTOSCALER_CHANGED: &str = "autoscaler_changed";
