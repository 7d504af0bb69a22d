//! The level-triggered reconcile decision: compare desired replicas with allocations and
//! return the changes that close the gap. Pure: state in, changes out.

use std::collections::{BTreeMap, BTreeSet};

use drover_proto::model::{AllocState, Allocation, DesiredState, NodeHealth, WorkloadSpec};

use crate::autoscale::resize;
use crate::changes::ChangeSet;
use crate::events;
use crate::rollout;
use crate::scheduler::PlacementRequest;
use crate::state::ClusterState;
use crate::store::{WorkloadRecord, Write};

/// What one reconcile pass decided.
#[derive(Debug)]
pub struct Plan {
    /// Writes and events to commit.
    pub changes: ChangeSet,
    /// Why replicas could not be placed, per service (replaces the previous map).
    pub placement_failures: BTreeMap<String, String>,
    /// The soonest time a rollout needs another pass (a pause or `minReady` ending, a
    /// progress deadline), ms since the Unix epoch.
    pub wake_at_ms: Option<u64>,
}

struct Stop<'a> {
    alloc: &'a Allocation,
    reason: String,
}

/// Replicas of one revision a service is short of, and the allocations they replace.
struct Wanted<'a> {
    spec: WorkloadSpec,
    revision: u64,
    count: u32,
    /// Failed allocations stay (visible, with their reason) until a replacement is placed
    /// for them on another node; replacing them on the node where they failed would loop.
    failed: Vec<&'a Allocation>,
    /// Allocations lost with their node, which the new replicas replace (for the events).
    lost: Vec<&'a Allocation>,
}

/// The rollout planner's view of one service.
pub fn rollout_input<'a>(
    state: &'a ClusterState,
    record: &'a WorkloadRecord,
    now_unix_ms: u64,
) -> rollout::Input<'a> {
    let name = record.name.as_str();
    let mut replicas = Vec::new();
    let mut stopping_elsewhere = 0;
    for alloc in state.allocations_of(name) {
        let status = state.status.get(&alloc.id);
        if alloc.desired != DesiredState::Run {
            // Unknown counts as running: after a coordinator restart no agent has reported
            // yet, and a Recreate must not start new replicas beside old ones.
            let running = status.is_none_or(|s| !s.state.is_terminal());
            if alloc.revision != record.revision && running {
                stopping_elsewhere += 1;
            }
            continue;
        }
        replicas.push(rollout::Replica {
            alloc,
            state: status.map(|s| s.state).unwrap_or_default(),
            restarts: status.map_or(0, |s| s.restarts),
            message: status.map_or("", |s| s.message.as_str()),
            image_failure: status.is_some_and(|s| s.image_failure),
            ready_since_ms: state.ready_since.get(&alloc.id).copied(),
            draining: state.node_flags(&alloc.node).draining,
            resize: resize::replacement(state, record, alloc),
            node_ready: state.node_health(&alloc.node) == NodeHealth::Ready,
        });
    }
    rollout::Input {
        record,
        replicas,
        stopping_elsewhere,
        revisions: state
            .stored
            .revisions
            .range((name.to_string(), 0)..=(name.to_string(), u64::MAX))
            .map(|((_, revision), _)| *revision)
            .collect(),
        traffic: state.service_traffic(name),
        now_unix_ms,
    }
}

/// Decides one reconcile pass.
pub fn plan(state: &ClusterState, now_unix_ms: u64) -> Plan {
    let mut changes = ChangeSet::new(state, now_unix_ms);
    let mut stops: Vec<Stop> = Vec::new();
    let mut wanted: Vec<Wanted> = Vec::new();
    let mut wake_at_ms: Option<u64> = None;

    for alloc in state.stored.allocations.values() {
        if alloc.desired == DesiredState::Run
            && !state.stored.workloads.contains_key(&alloc.service)
        {
            stops.push(Stop {
                alloc,
                reason: "its service no longer exists".into(),
            });
        }
    }

    for (name, record) in &state.stored.workloads {
        let input = rollout_input(state, record, now_unix_ms);
        let decided = rollout::plan(&input);
        if decided.record != *record {
            changes.push(Write::PutWorkload(decided.record.clone()));
        }
        for (kind, message) in decided.events {
            changes.event(kind, name, message);
        }
        for revision in decided.prune {
            changes.push(Write::DeleteRevision(name.clone(), revision));
        }
        if let Some(at) = decided.wake_at_ms {
            wake_at_ms = Some(wake_at_ms.map_or(at, |w| w.min(at)));
        }
        stops.extend(
            decided
                .stops
                .into_iter()
                .map(|(alloc, reason)| Stop { alloc, reason }),
        );
        let mut lost: Vec<&Allocation> = input
            .replicas
            .iter()
            .filter(|r| r.state == AllocState::Lost)
            .map(|r| r.alloc)
            .collect();
        lost.sort_by_key(|a| (a.created_unix_ms, a.id.clone()));
        for placing in decided.place {
            let Some(spec) = state.revision_spec(name, placing.revision) else {
                continue;
            };
            wanted.push(Wanted {
                spec: resize::sized(state, name, spec),
                revision: placing.revision,
                count: placing.count,
                failed: placing.failed,
                lost: std::mem::take(&mut lost),
            });
        }
    }

    let stopping: BTreeSet<String> = stops.iter().map(|s| s.alloc.id.clone()).collect();
    for stop in stops {
        let mut alloc = stop.alloc.clone();
        alloc.desired = DesiredState::Stop;
        changes.push(Write::PutAllocation(alloc));
        changes.event(
            events::ALLOCATION_STOPPED,
            &stop.alloc.id,
            format!("stopping on node {}: {}", stop.alloc.node, stop.reason),
        );
    }

    let mut snapshot = state.snapshot(&stopping, now_unix_ms);
    let mut placement_failures = BTreeMap::new();
    for Wanted {
        spec,
        revision,
        count,
        mut failed,
        lost,
    } in wanted
    {
        let mut avoid: Vec<String> = failed.iter().map(|a| a.node.clone()).collect();
        avoid.sort();
        avoid.dedup();
        let outcome = snapshot.place(&PlacementRequest {
            service: &spec.name,
            spec: &spec,
            count,
            avoid_nodes: &avoid,
        });
        // Each placed replica replaces one failed allocation, oldest first.
        failed.sort_by_key(|a| a.created_unix_ms);
        for replaced in failed.iter().take(outcome.placed.len()) {
            let mut alloc = (*replaced).clone();
            alloc.desired = DesiredState::Stop;
            changes.push(Write::PutAllocation(alloc));
            changes.event(
                events::ALLOCATION_STOPPED,
                &replaced.id,
                format!(
                    "stopping on node {}: it failed; a replacement is placed on another node",
                    replaced.node
                ),
            );
        }
        let mut replaced = lost.into_iter();
        for node in outcome.placed {
            let alloc = Allocation {
                id: changes.alloc_id(&spec.name),
                service: spec.name.clone(),
                revision,
                node: node.clone(),
                resources: spec.resources,
                desired: DesiredState::Run,
                created_unix_ms: now_unix_ms,
            };
            changes.event(
                events::ALLOCATION_PLACED,
                &alloc.id,
                format!("placed on node {node} (revision {revision})"),
            );
            if let Some(old) = replaced.next() {
                changes.event(
                    events::ALLOCATION_RESCHEDULED,
                    &alloc.id,
                    format!(
                        "rescheduled from node {} to node {node}: replaces {}, lost with its node",
                        old.node, old.id
                    ),
                );
            }
            changes.push(Write::PutAllocation(alloc));
        }
        if let Some(failure) = outcome.failure {
            let message = failure.to_string();
            if state.placement_failures.get(&spec.name) != Some(&message) {
                changes.event(events::PLACEMENT_FAILED, &spec.name, message.clone());
            }
            placement_failures.insert(spec.name.clone(), message);
        }
    }

    forget_stopped(state, &mut changes);
    finish_drains(state, &stopping, &mut changes);
    Plan {
        changes,
        placement_failures,
        wake_at_ms,
    }
}

/// Allocations told to stop are forgotten once nothing runs them any more: their agent
/// reported them ended or never had them, or their node is not connected (a node that comes
/// back stops whatever is not in its desired set).
fn forget_stopped(state: &ClusterState, changes: &mut ChangeSet) {
    for alloc in state.stored.allocations.values() {
        if alloc.desired != DesiredState::Stop {
            continue;
        }
        let gone = match state.status.get(&alloc.id) {
            None => true,
            Some(status) => status.state.is_terminal(),
        };
        if gone || state.node_health(&alloc.node) != NodeHealth::Ready {
            changes.push(Write::DeleteAllocation(alloc.id.clone()));
        }
    }
}

fn finish_drains(state: &ClusterState, stopping: &BTreeSet<String>, changes: &mut ChangeSet) {
    for (node, flags) in &state.stored.node_flags {
        if !flags.draining {
            continue;
        }
        let remaining = state.stored.allocations.values().any(|a| {
            a.node == *node && a.desired == DesiredState::Run && !stopping.contains(&a.id)
        });
        if !remaining {
            let mut done = *flags;
            done.draining = false;
            changes.push(Write::PutNodeFlags(node.clone(), done));
            changes.event(
                events::NODE_DRAINED,
                node,
                "drain complete; node stays cordoned".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use drover_proto::model::{AllocStatus, Traffic, WorkloadSpec};

    use super::*;
    use crate::store::{RevisionRecord, WorkloadRecord};

    fn state(nodes: &[&str], replicas: u32) -> ClusterState {
        let mut state = ClusterState::default();
        for id in nodes {
            state
                .nodes
                .insert(id.to_string(), crate::state::test_node(id));
        }
        let spec = WorkloadSpec::new("web", "web:1");
        state.stored.workloads.insert(
            "web".into(),
            WorkloadRecord::new("web", 1, replicas, Traffic::default(), 0),
        );
        state.stored.revisions.insert(
            ("web".into(), 1),
            RevisionRecord {
                service: "web".into(),
                revision: 1,
                spec,
                created_unix_ms: 0,
                cause: "apply".into(),
            },
        );
        state
    }

    fn apply(state: &mut ClusterState) -> Vec<Write> {
        let plan = plan(state, 1);
        state.placement_failures = plan.placement_failures;
        let (writes, _) = plan.changes.finish();
        state.apply(&writes);
        writes
    }

    fn running_on(state: &ClusterState) -> Vec<String> {
        let mut nodes: Vec<String> = state
            .allocations_of("web")
            .filter(|a| a.desired == DesiredState::Run)
            .map(|a| a.node.clone())
            .collect();
        nodes.sort();
        nodes
    }

    /// Revisions of the allocations that should run, sorted.
    fn revisions(state: &ClusterState) -> Vec<u64> {
        let mut revisions: Vec<u64> = state
            .allocations_of("web")
            .filter(|a| a.desired == DesiredState::Run)
            .map(|a| a.revision)
            .collect();
        revisions.sort();
        revisions
    }

    fn report(state: &mut ClusterState, node: &str, observed: AllocState) {
        let ids: Vec<String> = state
            .allocations_of("web")
            .filter(|a| a.node == node && a.desired == DesiredState::Run)
            .map(|a| a.id.clone())
            .collect();
        for id in ids {
            state.observe(
                id,
                AllocStatus {
                    state: observed,
                    ..AllocStatus::default()
                },
                1,
            );
        }
    }

    #[test]
    fn places_spread_and_is_stable() {
        let mut s = state(&["a", "b", "c"], 3);
        apply(&mut s);
        assert_eq!(running_on(&s), vec!["a", "b", "c"]);
        assert!(apply(&mut s).is_empty(), "a second pass changes nothing");
    }

    #[test]
    fn surplus_is_stopped_pending_first() {
        let mut s = state(&["a", "b", "c"], 3);
        apply(&mut s);
        report(&mut s, "a", AllocState::Healthy);
        report(&mut s, "b", AllocState::Healthy);
        s.stored.workloads.get_mut("web").expect("web").replicas = 2;
        apply(&mut s);
        assert_eq!(running_on(&s), vec!["a", "b"], "the pending one on c goes");
    }

    #[test]
    fn failed_allocation_is_replaced_on_another_node_only() {
        let mut s = state(&["a"], 1);
        apply(&mut s);
        report(&mut s, "a", AllocState::Failed);
        apply(&mut s);
        // Only node a exists: the failed allocation stays, visible, and the reason says why.
        assert_eq!(running_on(&s), vec!["a"]);
        let failure = &s.placement_failures["web"];
        assert!(failure.contains("placed 0 of 1"), "{failure}");
        assert!(
            apply(&mut s)
                .iter()
                .all(|w| !matches!(w, Write::PutAllocation(_)))
        );

        // A second node appears: the replacement goes there and the failed one stops.
        let mut with_b = state(&["a", "b"], 1);
        with_b.stored.allocations = s.stored.allocations.clone();
        with_b.stored.counters = s.stored.counters.clone();
        with_b.status = s.status.clone();
        apply(&mut with_b);
        assert_eq!(running_on(&with_b), vec!["b"]);
    }

    #[test]
    fn a_weighted_older_revision_keeps_its_replicas() {
        let mut s = state(&["a", "b"], 2);
        apply(&mut s);
        let mut spec = WorkloadSpec::new("web", "web:2");
        spec.replicas = 1;
        s.stored.revisions.insert(
            ("web".into(), 2),
            RevisionRecord {
                service: "web".into(),
                revision: 2,
                spec,
                created_unix_ms: 0,
                cause: "apply".into(),
            },
        );
        let record = s.stored.workloads.get_mut("web").expect("web");
        record.revision = 2;
        record.replicas = 1;
        record.traffic.revision_weights = [(1, 90), (2, 10)].into_iter().collect();
        apply(&mut s);
        assert_eq!(
            revisions(&s),
            vec![1, 1, 2],
            "stable replicas stay beside the canary"
        );

        // Weight moved entirely to revision 2: the old replicas go.
        let record = s.stored.workloads.get_mut("web").expect("web");
        record.traffic.revision_weights = [(1, 0), (2, 100)].into_iter().collect();
        apply(&mut s);
        let revisions: Vec<u64> = s
            .allocations_of("web")
            .filter(|a| a.desired == DesiredState::Run)
            .map(|a| a.revision)
            .collect();
        assert_eq!(revisions, vec![2]);
    }

    #[test]
    fn new_revision_replaces_old_allocations() {
        let mut s = state(&["a", "b"], 2);
        apply(&mut s);
        let mut spec = WorkloadSpec::new("web", "web:2");
        spec.replicas = 2;
        s.stored.revisions.insert(
            ("web".into(), 2),
            RevisionRecord {
                service: "web".into(),
                revision: 2,
                spec,
                created_unix_ms: 0,
                cause: "apply".into(),
            },
        );
        s.stored.workloads.get_mut("web").expect("web").revision = 2;
        for node in ["a", "b"] {
            report(&mut s, node, AllocState::Healthy);
        }
        // Two replicas at 25%/25%: one more may be placed, none may be missing.
        apply(&mut s);
        assert_eq!(revisions(&s), vec![1, 1, 2], "one new replica first");
        for _ in 0..4 {
            for node in ["a", "b"] {
                report(&mut s, node, AllocState::Healthy);
            }
            apply(&mut s);
        }
        assert_eq!(revisions(&s), vec![2, 2]);
    }

    fn drain(state: &mut ClusterState, node: &str) {
        state.stored.node_flags.insert(
            node.into(),
            drover_proto::model::NodeFlags {
                cordoned: true,
                draining: true,
            },
        );
    }

    fn stopping_on(state: &ClusterState, node: &str) -> usize {
        state
            .allocations_of("web")
            .filter(|a| a.node == node && a.desired == DesiredState::Stop)
            .count()
    }

    #[test]
    fn drain_stops_a_replica_only_once_its_replacement_is_healthy() {
        let mut s = state(&["a", "b", "c", "d"], 3);
        apply(&mut s);
        let first = running_on(&s);
        for node in &first {
            report(&mut s, node, AllocState::Healthy);
        }
        let drained = first[0].clone();
        drain(&mut s, &drained);
        apply(&mut s);
        let spare = ["a", "b", "c", "d"]
            .into_iter()
            .find(|n| !first.iter().any(|f| f == n))
            .expect("one free node");
        assert_eq!(running_on(&s).len(), 4, "a replacement is placed first");
        assert_eq!(stopping_on(&s, &drained), 0, "the old one keeps serving");

        report(&mut s, spare, AllocState::Running);
        apply(&mut s);
        assert_eq!(
            stopping_on(&s, &drained),
            0,
            "running but not yet ready is not enough"
        );

        report(&mut s, spare, AllocState::Healthy);
        apply(&mut s);
        assert_eq!(
            stopping_on(&s, &drained),
            1,
            "healthy replacement: old one stops"
        );
        assert!(!running_on(&s).contains(&drained));

        // The agent reports it ended: the allocation is forgotten and the drain completes.
        let old: Vec<String> = s
            .allocations_of("web")
            .filter(|a| a.node == drained)
            .map(|a| a.id.clone())
            .collect();
        for id in old {
            s.status.insert(
                id,
                AllocStatus {
                    state: AllocState::Stopped,
                    ..AllocStatus::default()
                },
            );
        }
        apply(&mut s);
        apply(&mut s);
        let flags = s.node_flags(&drained);
        assert!(flags.cordoned && !flags.draining, "{flags:?}");
    }

    #[test]
    fn drain_with_max_unavailable_stops_that_many_at_once() {
        let mut s = state(&["a", "b", "c"], 3);
        if let Some(record) = s.stored.workloads.get_mut("web") {
            record.update.max_unavailable = drover_proto::model::ReplicaCount::Count(1);
        }
        apply(&mut s);
        for node in ["a", "b", "c"] {
            report(&mut s, node, AllocState::Healthy);
        }
        drain(&mut s, "a");
        apply(&mut s);
        assert_eq!(
            stopping_on(&s, "a"),
            1,
            "one healthy replica may be missing"
        );
    }

    #[test]
    fn drain_stops_an_unhealthy_replica_at_once() {
        let mut s = state(&["a", "b", "c"], 2);
        apply(&mut s);
        let first = running_on(&s);
        report(&mut s, &first[0], AllocState::Unhealthy);
        report(&mut s, &first[1], AllocState::Healthy);
        drain(&mut s, &first[0]);
        apply(&mut s);
        assert_eq!(stopping_on(&s, &first[0]), 1, "it served nothing anyway");
    }

    #[test]
    fn a_node_on_probation_is_passed_over_while_spread_allows() {
        let mut s = state(&["a", "b", "c", "d"], 3);
        if let Some(a) = s.nodes.get_mut("a") {
            a.flaps.went_down(0);
            a.flaps.came_back(0);
        }
        // `apply` plans at 1 ms: a is on probation for 10 s.
        apply(&mut s);
        assert_eq!(running_on(&s), vec!["b", "c", "d"]);
    }

    #[test]
    fn a_lost_allocation_is_rescheduled_with_an_event_naming_both_nodes() {
        let mut s = state(&["a", "b", "c"], 2);
        apply(&mut s);
        let first = running_on(&s);
        let dead = first[0].clone();
        report(&mut s, &first[1], AllocState::Healthy);
        report(&mut s, &dead, AllocState::Lost);
        if let Some(node) = s.nodes.get_mut(&dead) {
            node.health = NodeHealth::Down;
        }
        let (_, events) = plan(&s, 1).changes.finish();
        let moved: Vec<&str> = events
            .iter()
            .filter(|e| e.kind == events::ALLOCATION_RESCHEDULED)
            .map(|e| e.message.as_str())
            .collect();
        assert_eq!(moved.len(), 1, "{events:?}");
        assert!(
            moved[0].starts_with(&format!("rescheduled from node {dead} to node c")),
            "{moved:?}"
        );
    }
}
