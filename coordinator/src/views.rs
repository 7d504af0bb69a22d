//! Read models for the Control API, built from the state.

use drover_proto::convert::node_health_to_pb;
use drover_proto::model::{AllocState, DesiredState, Resources, WorkloadSpec};
use drover_proto::pb;

use crate::coordinator::now_unix_ms;
use crate::reconcile;
use crate::rollout;
use crate::security::Caller;
use crate::state::ClusterState;
use crate::store::RolloutPhase;

/// Summary of one service.
pub fn service_summary(state: &ClusterState, name: &str) -> Option<pb::ServiceSummary> {
    let (record, spec) = state.service(name)?;
    let mut placed = 0;
    let mut running = 0;
    let mut healthy = 0;
    for alloc in state.allocations_of(name) {
        if alloc.desired != DesiredState::Run {
            continue;
        }
        placed += 1;
        match state.alloc_state(&alloc.id) {
            AllocState::Running => running += 1,
            AllocState::Healthy => {
                running += 1;
                healthy += 1;
            }
            AllocState::Unhealthy => running += 1,
            _ => {}
        }
    }
    Some(pb::ServiceSummary {
        name: name.to_string(),
        image: spec.image.clone(),
        revision: record.revision,
        desired_replicas: record.replicas,
        placed,
        running,
        healthy,
        revision_weights: spec.traffic.revision_weights.clone().into_iter().collect(),
        ports: spec.ports.iter().map(Into::into).collect(),
        placement_failure: state
            .placement_failures
            .get(name)
            .cloned()
            .unwrap_or_default(),
        services: state.services_selecting(&spec),
    })
}

/// Every service with the workloads it selects and how many of their replicas it routes to.
pub fn services(state: &ClusterState) -> Vec<pb::ServiceView> {
    state
        .stored
        .services
        .values()
        .map(|record| {
            let workloads = state.selected_workloads(&record.service);
            let (mut endpoints, mut healthy) = (0, 0);
            for workload in &workloads {
                for alloc in state.allocations_of(&workload.name) {
                    if alloc.desired == DesiredState::Run {
                        endpoints += 1;
                        healthy += u32::from(state.alloc_state(&alloc.id) == AllocState::Healthy);
                    }
                }
            }
            pb::ServiceView {
                service: Some((&record.service).into()),
                workloads: workloads.into_iter().map(|w| w.name).collect(),
                endpoints,
                healthy,
            }
        })
        .collect()
}

/// A spec as `caller` may see it: secret values withheld without the admin role.
fn spec_for(spec: &WorkloadSpec, caller: &Caller) -> pb::WorkloadSpec {
    let mut spec = pb::WorkloadSpec::from(spec);
    if !caller.sees_secrets() {
        spec.withhold_secrets();
    }
    spec
}

/// Everything about one service, as `caller` may see it.
pub fn service_status(
    state: &ClusterState,
    name: &str,
    caller: &Caller,
) -> Option<pb::ServiceStatus> {
    let summary = service_summary(state, name)?;
    let (record, spec) = state.service(name)?;
    let revisions = state
        .stored
        .revisions
        .range((name.to_string(), 0)..=(name.to_string(), u64::MAX))
        .map(|(_, r)| pb::Revision {
            revision: r.revision,
            spec: Some(spec_for(&r.spec, caller)),
            created_unix_ms: r.created_unix_ms,
            cause: r.cause.clone(),
            failure: record
                .failed_revisions
                .get(&r.revision)
                .cloned()
                .unwrap_or_default(),
        })
        .collect();
    let allocations = state
        .allocations_of(name)
        .map(|a| {
            let status = state.status.get(&a.id).cloned().unwrap_or_default();
            pb::AllocationView {
                allocation: Some(a.into()),
                status: Some((&status).into()),
            }
        })
        .collect();
    Some(pb::ServiceStatus {
        summary: Some(summary),
        spec: Some(spec_for(&spec, caller)),
        revisions,
        allocations,
        rollout: rollout_status(state, name, now_unix_ms()),
        stable_revision: record.stable_revision.unwrap_or(0),
        recommendation: state
            .recommendations
            .get(name)
            .map(|r| pb::ResourceRecommendation {
                target: Some(r.target.into()),
                lower: Some(r.lower.into()),
                upper: Some(r.upper.into()),
            }),
    })
}

/// A service's current (or last) rollout, as the planner sees it at `now_unix_ms`.
pub fn rollout_status(
    state: &ClusterState,
    name: &str,
    now_unix_ms: u64,
) -> Option<pb::RolloutStatus> {
    let stored = state.stored.workloads.get(name)?;
    let input = reconcile::rollout_input(state, stored, now_unix_ms);
    // As the next pass will have it: a rollout complete or failed by now reads so.
    let plan = rollout::plan(&input);
    let progress = plan.progress;
    let record = &plan.record;
    let rollout = record.rollout.as_ref();
    let phase = match rollout.map(|r| r.phase) {
        Some(RolloutPhase::Progressing) => pb::RolloutPhase::Progressing,
        Some(RolloutPhase::Failed) => pb::RolloutPhase::Failed,
        Some(RolloutPhase::Complete) | None => pb::RolloutPhase::Complete,
    };
    Some(pb::RolloutStatus {
        service: name.to_string(),
        revision: record.revision,
        from_revision: rollout.and_then(|r| r.from_revision).unwrap_or(0),
        stable_revision: record.stable_revision.unwrap_or(0),
        phase: phase.into(),
        paused: record.paused,
        desired: progress.desired,
        updated: progress.updated,
        ready: progress.ready,
        available: progress.available,
        total: progress.total,
        step: progress.step,
        steps: progress.steps,
        weight: progress.weight,
        message: progress.message,
        cause: rollout.map(|r| r.cause.clone()).unwrap_or_default(),
        started_by: rollout.map(|r| r.started_by.clone()).unwrap_or_default(),
        started_unix_ms: rollout.map_or(0, |r| r.started_unix_ms),
        canary_connections: progress.canary.connections,
        canary_failed: progress.canary.failed,
        stable_connections: progress.stable.connections,
        stable_failed: progress.stable.failed,
    })
}

/// Every node known: connected since start, flagged, or holding allocations.
pub fn nodes(state: &ClusterState) -> Vec<pb::NodeStatus> {
    let mut ids: std::collections::BTreeSet<&str> =
        state.nodes.keys().map(String::as_str).collect();
    ids.extend(state.stored.node_flags.keys().map(String::as_str));
    ids.extend(state.stored.allocations.values().map(|a| a.node.as_str()));
    let allocated = state.allocated_by_node();
    ids.into_iter()
        .map(|id| node_status(state, id, allocated.get(id).copied().unwrap_or_default()))
        .collect()
}

/// One node's status.
pub fn node_status(state: &ClusterState, id: &str, allocated: Resources) -> pb::NodeStatus {
    let flags = state.node_flags(id);
    let entry = state.nodes.get(id);
    let allocations = state
        .stored
        .allocations
        .values()
        .filter(|a| a.node == id && a.desired == DesiredState::Run)
        .count() as u32;
    pb::NodeStatus {
        info: Some(match entry {
            Some(e) => (&e.info).into(),
            None => pb::NodeInfo {
                id: id.to_string(),
                ..Default::default()
            },
        }),
        health: node_health_to_pb(state.node_health(id)).into(),
        cordoned: flags.cordoned,
        draining: flags.draining,
        allocated: Some(allocated.into()),
        allocations,
        reason: node_reason(state, id),
    }
}

fn node_reason(state: &ClusterState, id: &str) -> String {
    let entry = state.nodes.get(id);
    let mut parts: Vec<String> = Vec::new();
    match entry {
        Some(e) if !e.reason.is_empty() => parts.push(e.reason.clone()),
        Some(_) => {}
        None => parts.push("not connected since the coordinator started".into()),
    }
    if let Some(e) = entry {
        if let Some(left) = e.flaps.probation_left(now_unix_ms()) {
            parts.push(format!(
                "on probation after being down {} time(s): placements prefer other nodes for {}s",
                e.flaps.downs,
                left.as_secs().max(1)
            ));
        }
    }
    if let Some(live) = &state.gossip_live {
        parts.push(if live.contains(id) {
            "alive in gossip".into()
        } else {
            "not alive in gossip".into()
        });
    }
    parts.join("; ")
}

/// What nodes and replicas use (`drover top`): every node, and the replicas of `name` (a
/// workload, or the workloads a service selects; every replica when empty) that should run.
/// `None` when `name` is neither.
pub fn top(state: &ClusterState, name: &str, now_ms: u64) -> Option<pb::TopResponse> {
    let workloads: Vec<String> = if name.is_empty() {
        state.stored.workloads.keys().cloned().collect()
    } else if state.stored.workloads.contains_key(name) {
        vec![name.to_string()]
    } else {
        let service = state.stored.services.get(name)?;
        state
            .selected_workloads(&service.service)
            .into_iter()
            .map(|w| w.name)
            .collect()
    };
    let allocated = state.allocated_by_node();
    let nodes = state
        .nodes
        .iter()
        .map(|(id, entry)| pb::NodeTop {
            node: id.clone(),
            capacity: Some(entry.info.capacity.into()),
            used: Some(entry.usage.into()),
            requested: Some(
                allocated
                    .get(id.as_str())
                    .copied()
                    .unwrap_or_default()
                    .into(),
            ),
        })
        .collect();
    let replicas = workloads
        .iter()
        .flat_map(|w| state.allocations_of(w))
        .filter(|a| a.desired == DesiredState::Run)
        .map(|a| {
            let observed = state.usage.latest(&a.id, now_ms);
            pb::ReplicaTop {
                allocation_id: a.id.clone(),
                workload: a.service.clone(),
                node: a.node.clone(),
                usage: observed.map(|o| (&o.usage).into()),
                requests: Some(a.resources.into()),
                age_ms: observed.map_or(0, |o| now_ms.saturating_sub(o.at_ms)),
                connections: state.usage.connections(&a.id, now_ms).map(|load| {
                    pb::ReplicaConnections {
                        per_second_milli: load.per_second_milli,
                        active: load.active,
                    }
                }),
            }
        })
        .collect();
    Some(pb::TopResponse { nodes, replicas })
}
