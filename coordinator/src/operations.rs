//! Operator requests as pure decisions: state and request in, a change set out. Nothing is
//! changed when a request is refused.

use std::collections::{BTreeMap, BTreeSet};

use drover_proto::manifest::{self, Manifest};
use drover_proto::model::{DesiredState, NodeFlags, NodeHealth, UpdateKind, WorkloadSpec};

use crate::changes::ChangeSet;
use crate::error::Error;
use crate::events;
use crate::rollout;
use crate::state::ClusterState;
use crate::store::{RevisionRecord, RolloutPhase, WorkloadRecord, Write};

mod autoscalers;
mod services;

pub use services::{assign_missing_addresses, set_workload_weights};

/// Which kind of object a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// What is placed, scaled and rolled out.
    Workload,
    /// A name and ports over workloads' replicas.
    Service,
    /// A HorizontalPodAutoscaler or VerticalPodAutoscaler applied without its workload.
    Autoscaler,
}

impl ObjectKind {
    /// Lowercase name, as the API and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Workload => "workload",
            ObjectKind::Service => "service",
            ObjectKind::Autoscaler => "autoscaler",
        }
    }
}

/// What a delete removed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Deleted {
    /// A workload was deleted.
    pub workload: bool,
    /// A service was deleted.
    pub service: bool,
    /// The kinds of the autoscalers deleted by that name.
    pub autoscalers: Vec<&'static str>,
    /// Allocations of the workload told to stop.
    pub stopped: u32,
}

/// What an apply did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyChange {
    /// The service did not exist.
    Created,
    /// The service changed.
    Updated,
    /// Nothing changed.
    Unchanged,
}

/// Result of applying one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Workload or service.
    pub kind: ObjectKind,
    /// Its name.
    pub name: String,
    /// A workload's revision after the apply (0 for a service).
    pub revision: u64,
    /// What changed.
    pub change: ApplyChange,
}

/// Validates and applies workloads and services, all or nothing. A workload's changed
/// template makes a new revision and starts its rollout; `cause` goes into the revision
/// history.
pub fn apply(
    state: &ClusterState,
    manifest: &Manifest,
    cause: &str,
    changes: &mut ChangeSet,
) -> Result<Vec<ApplyOutcome>, Error> {
    let mut problems = check_specs(state, &manifest.workloads);
    let services = services::check(state, &manifest.services, &mut problems);
    autoscalers::check(state, manifest, &mut problems);
    if !problems.is_empty() {
        return Err(Error::InvalidArgument(problems.join("; ")));
    }
    let mut outcomes = apply_workloads(state, &manifest.workloads, cause, changes)?;
    outcomes.extend(services::apply(state, services, changes));
    outcomes.extend(autoscalers::apply(state, &manifest.autoscalers, changes));
    Ok(outcomes)
}

/// Applies checked workloads.
fn apply_workloads(
    state: &ClusterState,
    specs: &[WorkloadSpec],
    cause: &str,
    changes: &mut ChangeSet,
) -> Result<Vec<ApplyOutcome>, Error> {
    let now = changes.now_unix_ms();
    let cause = if cause.is_empty() { "apply" } else { cause };
    let mut outcomes = Vec::with_capacity(specs.len());
    for spec in specs {
        let existing = state.service(&spec.name);
        // Autoscalers applied on their own stay; an autoscaled workload keeps the count its
        // autoscaler set (within the new bounds): the manifest's is only the first one.
        let (autoscale, vertical_autoscale) = autoscalers::kept(
            existing.as_ref().map(|(r, _)| *r),
            &spec.autoscale,
            &spec.vertical_autoscale,
        );
        let replicas = match &autoscale {
            Some(a) => existing
                .as_ref()
                .map_or(spec.replicas, |(r, _)| r.replicas)
                .clamp(a.min_replicas, a.max_replicas),
            None => spec.replicas,
        };
        let autoscaled = WorkloadSpec {
            replicas,
            autoscale,
            vertical_autoscale,
            ..spec.clone()
        };
        let spec = &autoscaled;
        let (revision, change) = match &existing {
            None => (1, ApplyChange::Created),
            Some((record, current)) if current.template_differs(spec) => {
                (record.newest_revision() + 1, ApplyChange::Updated)
            }
            Some((record, current)) if current != spec => (record.revision, ApplyChange::Updated),
            Some((record, _)) => (record.revision, ApplyChange::Unchanged),
        };
        check_weights(state, &spec.name, revision, &spec.traffic.revision_weights)?;
        outcomes.push(ApplyOutcome {
            kind: ObjectKind::Workload,
            name: spec.name.clone(),
            revision,
            change,
        });
        if change == ApplyChange::Unchanged {
            continue;
        }
        let new_revision = existing
            .as_ref()
            .is_none_or(|(record, _)| record.revision != revision);
        let mut record = match &existing {
            Some((record, _)) => (*record).clone(),
            None => WorkloadRecord::new(
                &spec.name,
                revision,
                spec.replicas,
                spec.traffic.clone(),
                now,
            ),
        };
        record.replicas = spec.replicas;
        record.traffic = spec.traffic.clone();
        record.update = spec.update.clone();
        record.autoscale = spec.autoscale.clone();
        record.vertical_autoscale = spec.vertical_autoscale.clone();
        record.updated_unix_ms = now;
        if let Some(paused) = spec.update.paused {
            record.paused = paused;
        }
        if new_revision {
            changes.push(Write::PutRevision(RevisionRecord {
                service: spec.name.clone(),
                revision,
                spec: spec.clone(),
                created_unix_ms: now,
                cause: cause.to_string(),
            }));
            let from = existing.as_ref().map(|(r, _)| r.revision);
            let traffic = state.service_traffic(&spec.name);
            start_rollout(&mut record, revision, from, cause, &traffic, changes);
        }
        let (kind, message) = match change {
            ApplyChange::Created => (
                events::SERVICE_CREATED,
                format!(
                    "created with image {} and {} replicas",
                    spec.image, spec.replicas
                ),
            ),
            _ if new_revision => (
                events::SERVICE_UPDATED,
                format!(
                    "revision {revision}: image {}, {} replicas",
                    spec.image, spec.replicas
                ),
            ),
            _ => (
                events::SERVICE_UPDATED,
                format!("{} replicas", spec.replicas),
            ),
        };
        changes.push(Write::PutWorkload(record));
        changes.event(kind, &spec.name, message);
    }
    Ok(outcomes)
}

/// Points `record` at `revision` and starts its rollout (replacing any in progress).
fn start_rollout(
    record: &mut WorkloadRecord,
    revision: u64,
    from: Option<u64>,
    started_by: &str,
    traffic: &rollout::Traffic,
    changes: &mut ChangeSet,
) {
    let now = changes.now_unix_ms();
    record.revision = revision;
    record.latest_revision = record.latest_revision.max(revision);
    let replaced = record
        .rollout
        .as_ref()
        .filter(|r| r.phase == RolloutPhase::Progressing && r.revision != revision)
        .map(|r| {
            format!(
                "; replaces the rollout of revision {} in progress",
                r.revision
            )
        })
        .unwrap_or_default();
    let mut rollout = rollout::start(revision, from, started_by, now);
    // The first step is judged on what happens from now on.
    rollout.baseline = traffic.baseline(revision);
    if from.is_none() {
        // A new service has nothing to compare a canary with: it starts at full strength.
        rollout.step = record.update.canary.len() as u32;
    }
    record.rollout = Some(rollout);
    let from = from.map_or("a new service".to_string(), |f| {
        format!("from revision {f}")
    });
    let how = match (record.update.kind, record.update.canary.len()) {
        (UpdateKind::Recreate, _) => "recreate".to_string(),
        (_, 0) => {
            let (surge, unavailable) = record.update.resolve(record.replicas);
            format!("rolling, maxSurge {surge}, maxUnavailable {unavailable}")
        }
        (_, steps) => format!("canary in {steps} steps"),
    };
    changes.event(
        events::ROLLOUT_STARTED,
        &record.name,
        format!("rollout of revision {revision} {from} ({started_by}; {how}){replaced}"),
    );
}

/// An operator's action on a service's rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    /// Nothing more is replaced until resumed.
    Pause,
    /// Replacing goes on.
    Resume,
    /// Skip the remaining canary steps: the rest rolls at maxSurge.
    Promote,
    /// Fail the rollout now and go back to the last stable revision.
    Abort,
    /// A new revision of the same spec, rolled like any other.
    Restart,
    /// Roll back to `Some(revision)`, or to the one the current rollout replaced.
    Undo(Option<u64>),
}

impl RolloutAction {
    /// The action as a word, for the event log.
    pub fn verb(self) -> String {
        match self {
            RolloutAction::Pause => "pause".into(),
            RolloutAction::Resume => "resume".into(),
            RolloutAction::Promote => "promote".into(),
            RolloutAction::Abort => "abort".into(),
            RolloutAction::Restart => "restart".into(),
            RolloutAction::Undo(None) => "undo".into(),
            RolloutAction::Undo(Some(revision)) => format!("undo to revision {revision}"),
        }
    }
}

/// Applies an operator's rollout action to a service.
pub fn rollout_action(
    state: &ClusterState,
    name: &str,
    action: RolloutAction,
    changes: &mut ChangeSet,
) -> Result<(), Error> {
    let current = record(state, name)?;
    let mut updated = current.clone();
    let now = changes.now_unix_ms();
    updated.updated_unix_ms = now;
    let progressing = current
        .rollout
        .as_ref()
        .filter(|r| r.phase == RolloutPhase::Progressing);
    let revision = current.revision;
    match action {
        RolloutAction::Pause => {
            if current.paused {
                return Err(Error::InvalidArgument(format!(
                    "service {name:?}: rollouts are already paused"
                )));
            }
            updated.paused = true;
            changes.event(
                events::ROLLOUT_PAUSED,
                name,
                format!("paused by operator at revision {revision}"),
            );
        }
        RolloutAction::Resume => {
            if !current.paused {
                return Err(Error::InvalidArgument(format!(
                    "service {name:?}: rollouts are not paused"
                )));
            }
            updated.paused = false;
            if let Some(rollout) = updated.rollout.as_mut() {
                // The time paused does not count against the progress deadline.
                rollout.progress_unix_ms = now;
            }
            changes.event(
                events::ROLLOUT_RESUMED,
                name,
                format!("resumed by operator at revision {revision}"),
            );
        }
        RolloutAction::Promote => {
            let steps = current.update.canary.len() as u32;
            let Some(rollout) = progressing.filter(|r| r.step < steps) else {
                return Err(Error::InvalidArgument(format!(
                    "service {name:?}: no canary step to promote (revision {revision} is not in a canary step)"
                )));
            };
            let skipped = steps - rollout.step;
            if let Some(rollout) = updated.rollout.as_mut() {
                rollout.step = steps;
                rollout.step_started_unix_ms = now;
                rollout.progress_unix_ms = now;
            }
            changes.event(
                events::ROLLOUT_PROMOTED,
                name,
                format!(
                    "revision {revision} promoted by operator ({skipped} canary steps skipped); the rest rolls at maxSurge"
                ),
            );
        }
        RolloutAction::Abort => {
            if progressing.is_none() {
                return Err(Error::InvalidArgument(format!(
                    "service {name:?}: no rollout in progress to abort"
                )));
            }
            let input = crate::reconcile::rollout_input(state, current, now);
            let (record, events) = rollout::abort(&input, "aborted by operator");
            updated = record;
            // Going back must not wait for a resume.
            updated.paused = false;
            updated.updated_unix_ms = now;
            for (kind, message) in events {
                changes.event(kind, name, message);
            }
        }
        RolloutAction::Restart => {
            let spec = state
                .revision_spec(name, revision)
                .ok_or_else(|| {
                    Error::Internal(format!("service {name:?}: revision {revision} has no spec"))
                })?
                .clone();
            let restarted = updated.newest_revision() + 1;
            changes.push(Write::PutRevision(RevisionRecord {
                service: name.to_string(),
                revision: restarted,
                spec,
                created_unix_ms: now,
                cause: format!("restart of revision {revision}"),
            }));
            let traffic = state.service_traffic(name);
            start_rollout(
                &mut updated,
                restarted,
                Some(revision),
                "restart",
                &traffic,
                changes,
            );
        }
        RolloutAction::Undo(to) => {
            let target = match to {
                Some(to) => to,
                None => current
                    .rollout
                    .as_ref()
                    .and_then(|r| r.from_revision)
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "service {name:?}: revision {revision} replaced no earlier revision; give --to-revision"
                        ))
                    })?,
            };
            if target == revision {
                return Err(Error::InvalidArgument(format!(
                    "service {name:?}: revision {target} is already the current one"
                )));
            }
            if state.revision_spec(name, target).is_none() {
                let known: Vec<String> = state
                    .stored
                    .revisions
                    .range((name.to_string(), 0)..=(name.to_string(), u64::MAX))
                    .map(|((_, r), _)| r.to_string())
                    .collect();
                return Err(Error::InvalidArgument(format!(
                    "service {name:?}: revision {target} does not exist (revisions: {})",
                    known.join(", ")
                )));
            }
            // The operator asks for it: its earlier failure no longer holds it back.
            updated.failed_revisions.remove(&target);
            let by = format!("undo to revision {target}");
            let traffic = state.service_traffic(name);
            start_rollout(&mut updated, target, Some(revision), &by, &traffic, changes);
            if let Some(rollout) = updated.rollout.as_mut() {
                // Going back to what ran before takes no canary steps.
                rollout.step = updated.update.canary.len() as u32;
            }
        }
    }
    changes.push(Write::PutWorkload(updated));
    Ok(())
}

/// A name as error messages quote it: at most its first 64 characters.
fn quoted(name: &str) -> String {
    format!("{:?}", manifest::excerpt(name))
}

fn check_specs(state: &ClusterState, specs: &[WorkloadSpec]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    let limits = &state.settings.limits;
    for spec in specs {
        if !names.insert(spec.name.as_str()) {
            problems.push(format!(
                "service {} appears more than once",
                quoted(&spec.name)
            ));
        }
        if let Err(errors) = manifest::validate(spec) {
            for e in errors {
                problems.push(format!("service {}: {e}", quoted(&spec.name)));
            }
        }
        for problem in limits.check_spec(spec) {
            problems.push(format!("service {}: {problem}", quoted(&spec.name)));
        }
    }
    let kept = state
        .stored
        .workloads
        .iter()
        .filter(|(name, _)| !names.contains(name.as_str()));
    let services = kept.clone().count() + specs.len();
    let replicas = kept.map(|(_, r)| u64::from(r.replicas)).sum::<u64>()
        + specs.iter().map(|s| u64::from(s.replicas)).sum::<u64>();
    problems.extend(limits.check_totals(services, replicas));
    problems
}

fn check_weights(
    state: &ClusterState,
    service: &str,
    newest_revision: u64,
    weights: &BTreeMap<u64, u32>,
) -> Result<(), Error> {
    if weights.is_empty() {
        return Ok(());
    }
    if weights.values().all(|w| *w == 0) {
        return Err(Error::InvalidArgument(format!(
            "service {service:?}: traffic weights are all zero"
        )));
    }
    for revision in weights.keys() {
        let exists = *revision == newest_revision
            || state
                .stored
                .revisions
                .contains_key(&(service.to_string(), *revision));
        if !exists {
            return Err(Error::InvalidArgument(format!(
                "service {service:?}: revision {revision} in traffic weights does not exist"
            )));
        }
    }
    Ok(())
}

fn record<'a>(state: &'a ClusterState, name: &str) -> Result<&'a WorkloadRecord, Error> {
    state
        .stored
        .workloads
        .get(name)
        .ok_or_else(|| Error::NotFound {
            kind: "service",
            name: name.to_string(),
        })
}

/// Deletes the workload, the service, or (no `kind`) whichever of the two are named
/// `name`; a workload's allocations are told to stop.
pub fn delete(
    state: &ClusterState,
    name: &str,
    kind: Option<ObjectKind>,
    changes: &mut ChangeSet,
) -> Result<Deleted, Error> {
    let mut deleted = Deleted::default();
    if kind.is_none_or(|k| k == ObjectKind::Workload) && state.stored.workloads.contains_key(name) {
        deleted.workload = true;
        deleted.stopped = delete_workload(state, name, changes)?;
    }
    if kind.is_none() || kind == Some(ObjectKind::Service) {
        deleted.service = services::delete(state, name, changes);
    }
    if kind.is_none() || kind == Some(ObjectKind::Autoscaler) {
        deleted.autoscalers = autoscalers::delete(state, name, changes);
    }
    if !deleted.workload && !deleted.service && deleted.autoscalers.is_empty() {
        return Err(Error::NotFound {
            kind: kind.map_or("workload, service or autoscaler", ObjectKind::as_str),
            name: name.to_string(),
        });
    }
    Ok(deleted)
}

/// Deletes a workload; its allocations are told to stop. Returns how many.
fn delete_workload(
    state: &ClusterState,
    name: &str,
    changes: &mut ChangeSet,
) -> Result<u32, Error> {
    record(state, name)?;
    changes.push(Write::DeleteWorkload(name.to_string()));
    let mut stopped = 0;
    for alloc in state.allocations_of(name) {
        if alloc.desired == DesiredState::Run {
            let mut alloc = alloc.clone();
            alloc.desired = DesiredState::Stop;
            changes.push(Write::PutAllocation(alloc));
            stopped += 1;
        }
    }
    changes.event(
        events::SERVICE_DELETED,
        name,
        format!("deleted; {stopped} allocations told to stop"),
    );
    Ok(stopped)
}

/// Sets a service's replica count.
pub fn scale(
    state: &ClusterState,
    name: &str,
    replicas: u32,
    changes: &mut ChangeSet,
) -> Result<(), Error> {
    let current = record(state, name)?;
    if let Some(autoscale) = &current.autoscale {
        let by = autoscale.source.as_ref().map_or_else(
            || "its spec.autoscale".to_string(),
            |hpa| format!("HorizontalPodAutoscaler {hpa}"),
        );
        return Err(Error::InvalidArgument(format!(
            "service {} is autoscaled between {} and {} replicas (by {by}): change minReplicas/maxReplicas, or remove the autoscaler, in its manifest and apply it",
            quoted(name),
            autoscale.min_replicas,
            autoscale.max_replicas
        )));
    }
    if current.replicas == replicas {
        return Ok(());
    }
    let limits = &state.settings.limits;
    let others: u64 = state
        .stored
        .workloads
        .values()
        .filter(|r| r.name != name)
        .map(|r| u64::from(r.replicas))
        .sum();
    let problem = limits.check_replicas(replicas).or_else(|| {
        limits.check_totals(state.stored.workloads.len(), others + u64::from(replicas))
    });
    // Scaling down is always allowed, even over limits lowered since.
    if let Some(problem) = problem.filter(|_| replicas > current.replicas) {
        return Err(Error::InvalidArgument(format!(
            "service {}: {problem}",
            quoted(name)
        )));
    }
    let mut updated = current.clone();
    updated.replicas = replicas;
    updated.updated_unix_ms = changes.now_unix_ms();
    changes.push(Write::PutWorkload(updated));
    changes.event(
        events::SERVICE_UPDATED,
        name,
        format!("scaled from {} to {replicas} replicas", current.replicas),
    );
    Ok(())
}

/// Sets a service's per-revision traffic weights.
pub fn set_weights(
    state: &ClusterState,
    name: &str,
    weights: BTreeMap<u64, u32>,
    changes: &mut ChangeSet,
) -> Result<(), Error> {
    let current = record(state, name)?;
    if weights.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "service {name:?}: no weights given"
        )));
    }
    check_weights(state, name, current.revision, &weights)?;
    let text = weights
        .iter()
        .map(|(rev, w)| format!("{rev}={w}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut updated = current.clone();
    updated.traffic.revision_weights = weights;
    updated.updated_unix_ms = changes.now_unix_ms();
    changes.push(Write::PutWorkload(updated));
    changes.event(
        events::SERVICE_UPDATED,
        name,
        format!("traffic weights {text}"),
    );
    Ok(())
}

/// Forgets a node that is down (or has not come back since this coordinator started): its
/// operator flags and every allocation record it held. Returns how many allocations went.
/// A connected node, or one whose link is gone but is not yet down, is refused.
pub fn remove_node(
    state: &ClusterState,
    node: &str,
    changes: &mut ChangeSet,
) -> Result<u32, Error> {
    if !state.node_known(node) {
        return Err(Error::NotFound {
            kind: "node",
            name: node.to_string(),
        });
    }
    match state.nodes.get(node).map(|n| n.health) {
        Some(NodeHealth::Ready) => {
            return Err(Error::Refused(format!(
                "node {node} is connected; drain it and stop its agent before removing it"
            )));
        }
        Some(NodeHealth::Disconnected) => {
            return Err(Error::Refused(format!(
                "node {node} is disconnected but not down (gossip may still hear it); remove it once `drover nodes` shows it down"
            )));
        }
        _ => {}
    }
    let mut removed = 0;
    for alloc in state.stored.allocations.values().filter(|a| a.node == node) {
        changes.push(Write::DeleteAllocation(alloc.id.clone()));
        removed += 1;
    }
    if state.stored.node_flags.contains_key(node) {
        changes.push(Write::DeleteNodeFlags(node.to_string()));
    }
    changes.event(
        events::NODE_REMOVED,
        node,
        format!("node removed by operator with {removed} allocation records"),
    );
    Ok(removed)
}

/// An operator action on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAction {
    /// No new placements.
    Cordon,
    /// Placements allowed again; stops a drain.
    Uncordon,
    /// Move allocations away, then stay cordoned.
    Drain,
}

impl NodeAction {
    /// The action as a word, for the event log.
    pub fn verb(self) -> &'static str {
        match self {
            NodeAction::Cordon => "cordon",
            NodeAction::Uncordon => "uncordon",
            NodeAction::Drain => "drain",
        }
    }
}

/// Changes a node's operator flags.
pub fn node_action(
    state: &ClusterState,
    node: &str,
    action: NodeAction,
    changes: &mut ChangeSet,
) -> Result<NodeFlags, Error> {
    if !state.node_known(node) {
        return Err(Error::NotFound {
            kind: "node",
            name: node.to_string(),
        });
    }
    let flags = match action {
        NodeAction::Cordon => NodeFlags {
            cordoned: true,
            ..state.node_flags(node)
        },
        NodeAction::Uncordon => NodeFlags::default(),
        NodeAction::Drain => NodeFlags {
            cordoned: true,
            draining: true,
        },
    };
    if flags != state.node_flags(node) {
        changes.push(Write::PutNodeFlags(node.to_string(), flags));
        let what = match action {
            NodeAction::Cordon => "cordoned",
            NodeAction::Uncordon => "uncordoned",
            NodeAction::Drain => "draining",
        };
        changes.event(events::NODE_FLAGS, node, format!("node {what} by operator"));
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use drover_proto::model::{Allocation, Resources};

    use super::*;
    use crate::state::test_node;

    fn state_with_node(health: NodeHealth) -> ClusterState {
        let mut state = ClusterState::default();
        let mut node = test_node("gone");
        node.health = health;
        node.disconnected_since_ms = Some(0);
        state.nodes.insert("gone".into(), node);
        state.stored.node_flags.insert(
            "gone".into(),
            NodeFlags {
                cordoned: true,
                draining: false,
            },
        );
        for id in ["web.1", "web.2"] {
            state.stored.allocations.insert(
                id.into(),
                Allocation {
                    id: id.into(),
                    service: "web".into(),
                    revision: 1,
                    node: "gone".into(),
                    resources: Resources::default(),
                    desired: DesiredState::Run,
                    created_unix_ms: 0,
                },
            );
        }
        state
    }

    #[test]
    fn a_down_node_is_removed_with_its_flags_and_allocations() {
        let mut state = state_with_node(NodeHealth::Down);
        let mut changes = ChangeSet::new(&state, 1);
        assert_eq!(
            remove_node(&state, "gone", &mut changes).expect("removed"),
            2
        );
        let (writes, events) = changes.finish();
        assert_eq!(events.len(), 1);
        state.apply(&writes);
        assert!(state.stored.allocations.is_empty());
        assert!(state.stored.node_flags.is_empty());
    }

    #[test]
    fn a_node_that_is_connected_or_not_yet_down_is_not_removed() {
        for (health, expected) in [
            (NodeHealth::Ready, "is connected"),
            (NodeHealth::Disconnected, "not down"),
        ] {
            let state = state_with_node(health);
            let mut changes = ChangeSet::new(&state, 1);
            let refused = remove_node(&state, "gone", &mut changes)
                .expect_err("refused")
                .to_string();
            assert!(refused.contains(expected), "{refused}");
            assert!(changes.is_empty(), "nothing changes");
        }
        let state = ClusterState::default();
        let mut changes = ChangeSet::new(&state, 1);
        assert!(matches!(
            remove_node(&state, "nobody", &mut changes),
            Err(Error::NotFound { .. })
        ));
    }
}
