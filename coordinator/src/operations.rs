//! Operator requests as pure decisions: state and request in, a change set out. Nothing is
//! changed when a request is refused.

use std::collections::{BTreeMap, BTreeSet};

use drover_proto::manifest;
use drover_proto::model::{DesiredState, NodeFlags, ServiceSpec};

use crate::changes::ChangeSet;
use crate::error::Error;
use crate::events;
use crate::state::ClusterState;
use crate::store::{RevisionRecord, ServiceRecord, Write};

/// What an apply did to one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyChange {
    /// The service did not exist.
    Created,
    /// The service changed.
    Updated,
    /// Nothing changed.
    Unchanged,
}

/// Result of applying one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Service name.
    pub name: String,
    /// Its revision after the apply.
    pub revision: u64,
    /// What changed.
    pub change: ApplyChange,
}

/// Validates and applies service specs, all or nothing.
pub fn apply_services(
    state: &ClusterState,
    specs: &[ServiceSpec],
    changes: &mut ChangeSet,
) -> Result<Vec<ApplyOutcome>, Error> {
    check_specs(state, specs)?;
    let now = changes.now_unix_ms();
    let mut outcomes = Vec::with_capacity(specs.len());
    for spec in specs {
        let existing = state.service(&spec.name);
        let (revision, change, created_unix_ms) = match &existing {
            None => (1, ApplyChange::Created, now),
            Some((record, current)) if current.template_differs(spec) => (
                record.revision + 1,
                ApplyChange::Updated,
                record.created_unix_ms,
            ),
            Some((record, current)) if current != spec => (
                record.revision,
                ApplyChange::Updated,
                record.created_unix_ms,
            ),
            Some((record, _)) => (
                record.revision,
                ApplyChange::Unchanged,
                record.created_unix_ms,
            ),
        };
        check_weights(state, &spec.name, revision, &spec.traffic.revision_weights)?;
        outcomes.push(ApplyOutcome {
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
        if new_revision {
            changes.push(Write::PutRevision(RevisionRecord {
                service: spec.name.clone(),
                revision,
                spec: spec.clone(),
                created_unix_ms: now,
            }));
        }
        changes.push(Write::PutService(ServiceRecord {
            name: spec.name.clone(),
            revision,
            replicas: spec.replicas,
            traffic: spec.traffic.clone(),
            created_unix_ms,
            updated_unix_ms: now,
        }));
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
                format!(
                    "{} replicas, traffic {}",
                    spec.replicas,
                    spec.traffic.strategy.as_str()
                ),
            ),
        };
        changes.event(kind, &spec.name, message);
    }
    Ok(outcomes)
}

fn check_specs(state: &ClusterState, specs: &[ServiceSpec]) -> Result<(), Error> {
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for spec in specs {
        if !names.insert(spec.name.as_str()) {
            problems.push(format!("service {:?} appears more than once", spec.name));
        }
        if let Err(errors) = manifest::validate(spec) {
            for e in errors {
                problems.push(format!("service {:?}: {e}", spec.name));
            }
        }
    }
    // A service port is cluster-wide: every node's proxy listens on it.
    let mut ports: BTreeMap<u16, &str> = BTreeMap::new();
    let others = state
        .stored
        .services
        .keys()
        .filter(|name| !names.contains(name.as_str()))
        .filter_map(|name| state.service(name).map(|(_, spec)| spec));
    let others: Vec<ServiceSpec> = others.collect();
    for spec in others.iter().chain(specs) {
        for port in spec.ports.iter().filter_map(|p| p.service_port) {
            match ports.insert(port, &spec.name) {
                Some(other) if other != spec.name => problems.push(format!(
                    "service port {port} is used by both {other:?} and {:?}",
                    spec.name
                )),
                _ => {}
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(problems.join("; ")))
    }
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

fn record<'a>(state: &'a ClusterState, name: &str) -> Result<&'a ServiceRecord, Error> {
    state
        .stored
        .services
        .get(name)
        .ok_or_else(|| Error::NotFound {
            kind: "service",
            name: name.to_string(),
        })
}

/// Deletes a service; its allocations are told to stop. Returns how many.
pub fn delete_service(
    state: &ClusterState,
    name: &str,
    changes: &mut ChangeSet,
) -> Result<u32, Error> {
    record(state, name)?;
    changes.push(Write::DeleteService(name.to_string()));
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
    if current.replicas == replicas {
        return Ok(());
    }
    let mut updated = current.clone();
    updated.replicas = replicas;
    updated.updated_unix_ms = changes.now_unix_ms();
    changes.push(Write::PutService(updated));
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
    changes.push(Write::PutService(updated));
    changes.event(
        events::SERVICE_UPDATED,
        name,
        format!("traffic weights {text}"),
    );
    Ok(())
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
