//! The vertical autoscalers' decisions over a state: replicas, their samples, the writes
//! and events.

use drover_proto::model::{AllocStatus, AllocUsage, Traffic};

use super::*;
use crate::store::{RevisionRecord, WorkloadRecord};

const NOW: u64 = 10_000_000;
const MIB: u64 = 1 << 20;

/// `web` with two healthy replicas of cpu 200m and memory 64Mi on node `n1`, vertically
/// autoscaled in `mode`.
fn state(mode: VerticalMode) -> ClusterState {
    let mut state = ClusterState::default();
    state
        .nodes
        .insert("n1".into(), crate::state::test_node("n1"));
    let resources = Resources {
        cpu_millis: 200,
        memory_bytes: 64 * MIB,
    };
    let mut spec = WorkloadSpec::new("web", "web:1");
    spec.resources = resources;
    let mut record = WorkloadRecord::new("web", 1, 2, Traffic::default(), 0);
    record.vertical_autoscale = Some(VerticalAutoscale {
        mode,
        min_allowed: Resources::default(),
        max_allowed: Resources::default(),
        controls_cpu: true,
        controls_memory: true,
        source: None,
    });
    state.stored.workloads.insert("web".into(), record);
    // New allocations get ids after the fixture's.
    state
        .stored
        .counters
        .insert(crate::store::counters::NEXT_ALLOC.into(), 3);
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
    for i in 1..=2 {
        let id = format!("web.{i}");
        state.stored.allocations.insert(
            id.clone(),
            Allocation {
                id: id.clone(),
                service: "web".into(),
                revision: 1,
                node: "n1".into(),
                resources,
                desired: DesiredState::Run,
                created_unix_ms: NOW - 3_600_000,
            },
        );
        state.observe(
            id,
            AllocStatus {
                state: AllocState::Healthy,
                ..AllocStatus::default()
            },
            NOW - 3_500_000,
        );
    }
    state
}

/// Both replicas report `cpu_millis` and `memory` (and `oom_kills`) at `at`.
fn sample(state: &mut ClusterState, cpu_millis: u64, memory: u64, oom_kills: u64, at: u64) {
    let samples = (1..=2)
        .map(|i| AllocUsage {
            allocation_id: format!("web.{i}"),
            cpu_millis,
            memory_working_set_bytes: memory,
            memory_limit_bytes: Some(64 * MIB),
            oom_kills,
            window_ms: 5_000,
        })
        .collect();
    let allocations = state.stored.allocations.clone();
    state.usage.observe(
        "n1",
        samples,
        |id| allocations.get(id).map(|a| a.node.as_str()),
        at,
    );
}

fn run(
    state: &ClusterState,
    resizers: &mut Resizers,
    now: u64,
) -> (BTreeMap<String, Recommendation>, Vec<Write>, Vec<String>) {
    let mut changes = ChangeSet::new(state, now);
    let recommendations = resizers.run(state, now, &mut changes);
    let (writes, events) = changes.finish();
    let events = events.into_iter().map(|e| e.message).collect();
    (recommendations, writes, events)
}

fn resized(writes: &[Write]) -> Vec<(String, Resources)> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::PutAllocation(a) => Some((a.id.clone(), a.resources)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_replica_near_its_memory_limit_grows_in_place_and_cpu_is_not_shrunk_on_a_short_history() {
    let mut state = state(VerticalMode::InPlace);
    sample(&mut state, 50, 60 * MIB, 0, NOW);
    let mut resizers = Resizers::default();
    let (recommendations, writes, events) = run(&state, &mut resizers, NOW);
    let recommendation = recommendations["web"];
    // 60 MiB plus the 15 % margin, rounded up to its histogram bucket: above 64 MiB + 5 %.
    let target = recommendation.target.memory_bytes;
    assert!(target > 69 * MIB && target < 75 * MIB, "{recommendation:?}");
    // One sample: no confidence to shrink the 200m below its upper bound.
    assert_eq!(recommendation.upper.cpu_millis, u64::MAX);
    let grown = Resources {
        cpu_millis: 200,
        memory_bytes: target,
    };
    assert_eq!(
        resized(&writes),
        [("web.1".to_string(), grown), ("web.2".to_string(), grown)]
    );
    assert!(
        events[0].starts_with(
            "resized web.1 in place on node n1: cpu 200m, memory 64 MiB → cpu 200m, memory "
        ),
        "{events:?}"
    );
    // The same samples again, with the replicas at their new size: nothing more to do.
    let mut after = state.clone();
    for id in ["web.1", "web.2"] {
        after
            .stored
            .allocations
            .get_mut(id)
            .expect("allocation")
            .resources = grown;
    }
    let (_, writes, _) = run(&after, &mut resizers, NOW + 15_000);
    assert_eq!(resized(&writes), []);
}

#[test]
fn off_recommends_only_and_initial_sizes_new_replicas_only() {
    for mode in [VerticalMode::Off, VerticalMode::Initial] {
        let mut state = state(mode);
        sample(&mut state, 50, 60 * MIB, 0, NOW);
        let (recommendations, writes, events) = run(&state, &mut Resizers::default(), NOW);
        assert!(recommendations.contains_key("web"), "{mode:?}");
        assert_eq!(resized(&writes), [], "{mode:?}");
        assert_eq!(events, Vec::<String>::new(), "{mode:?}");
        state.recommendations = recommendations;
        let spec = state.revision_spec("web", 1).expect("spec").clone();
        let sized = sized(&state, "web", &spec);
        if mode == VerticalMode::Off {
            assert_eq!(sized.resources, spec.resources);
        } else {
            assert_eq!(sized.resources, state.recommendations["web"].target);
        }
    }
}

#[test]
fn no_sample_no_recommendation() {
    let state = state(VerticalMode::InPlace);
    let (recommendations, writes, _) = run(&state, &mut Resizers::default(), NOW);
    assert!(recommendations.is_empty());
    assert_eq!(resized(&writes), []);
    assert_eq!(
        sized(&state, "web", state.revision_spec("web", 1).expect("spec")).resources,
        Resources {
            cpu_millis: 200,
            memory_bytes: 64 * MIB
        }
    );
}

#[test]
fn an_oom_kill_raises_the_memory_recommendation() {
    let mut state = state(VerticalMode::Off);
    let mut resizers = Resizers::default();
    sample(&mut state, 50, 30 * MIB, 0, NOW);
    let (before, _, _) = run(&state, &mut resizers, NOW);
    sample(&mut state, 50, 30 * MIB, 1, NOW + 5_000);
    let (after, _, _) = run(&state, &mut resizers, NOW + 15_000);
    // VPA's bump: max(64 MiB × 1.2, 64 MiB + 100 MiB) = 164 MiB, plus the margin.
    assert!(
        after["web"].target.memory_bytes >= 164 * MIB * 115 / 100,
        "{before:?} → {after:?}"
    );
    assert!(after["web"].target.memory_bytes > before["web"].target.memory_bytes);
    // A sample seen once is fed once: the same window again changes nothing.
    let (again, _, _) = run(&state, &mut resizers, NOW + 15_000);
    assert_eq!(again["web"], after["web"]);
}

#[test]
fn a_growth_the_node_cannot_hold_is_a_replacement_on_another_node() {
    let mut state = state(VerticalMode::InPlace);
    let node = state.nodes.get_mut("n1").expect("node");
    node.info.capacity = Resources {
        cpu_millis: 4_000,
        memory_bytes: 140 * MIB,
    };
    sample(&mut state, 50, 60 * MIB, 0, NOW);
    let mut resizers = Resizers::default();
    let (recommendations, writes, events) = run(&state, &mut resizers, NOW);
    // The first replica's growth fits beside the second at 64 MiB; the second's does not.
    assert_eq!(resized(&writes).len(), 1, "{events:?}");
    state.apply(&writes);
    state.recommendations = recommendations;
    let record = state.stored.workloads["web"].clone();
    let first = state.stored.allocations["web.1"].clone();
    let second = state.stored.allocations["web.2"].clone();
    assert_eq!(replacement(&state, &record, &first), None);
    let why = replacement(&state, &record, &second).expect("replaced");
    assert!(
        why.contains("more than node n1 holds: a replica with them on another node replaces it"),
        "{why}"
    );
}

#[test]
fn recreate_replaces_the_replicas_through_the_rollout_planner() {
    let mut state = state(VerticalMode::Recreate);
    state
        .nodes
        .insert("n2".into(), crate::state::test_node("n2"));
    sample(&mut state, 50, 60 * MIB, 0, NOW);
    let (recommendations, writes, _) = run(&state, &mut Resizers::default(), NOW);
    assert_eq!(resized(&writes), [], "Recreate changes nothing in place");
    state.recommendations = recommendations;
    let target = state.recommendations["web"].target;
    let plan = crate::reconcile::plan(&state, NOW);
    let (writes, events) = plan.changes.finish();
    // Within the surge, a new replica with the recommendation comes first; the old ones
    // stay until it is available.
    let placed: Vec<&Allocation> = writes
        .iter()
        .filter_map(|w| match w {
            Write::PutAllocation(a) if a.desired == DesiredState::Run => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(placed.len(), 1, "{writes:?}");
    assert_eq!(placed[0].resources.memory_bytes, target.memory_bytes);
    assert_eq!(placed[0].resources.cpu_millis, target.cpu_millis);
    assert!(
        !writes
            .iter()
            .any(|w| matches!(w, Write::PutAllocation(a) if a.desired == DesiredState::Stop)),
        "{events:?}"
    );
    // Once it is healthy, an old one stops, saying why.
    state.apply(&writes);
    let new_id = placed[0].id.clone();
    state.observe(
        new_id,
        AllocStatus {
            state: AllocState::Healthy,
            ..AllocStatus::default()
        },
        NOW,
    );
    let (writes, events) = crate::reconcile::plan(&state, NOW + 1_000).changes.finish();
    assert!(
        writes
            .iter()
            .any(|w| matches!(w, Write::PutAllocation(a) if a.desired == DesiredState::Stop)),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e
            .message
            .contains("its vertical autoscaler recommends cpu ")
            && e.message
                .contains("(Recreate): a replica with them replaces it")),
        "{events:?}"
    );
}

#[test]
fn memory_never_shrinks_below_what_the_replica_uses() {
    let vertical = VerticalAutoscale {
        mode: VerticalMode::InPlace,
        min_allowed: Resources::default(),
        max_allowed: Resources::default(),
        controls_cpu: false,
        controls_memory: true,
        source: None,
    };
    let current = Resources {
        cpu_millis: 200,
        memory_bytes: 512 * MIB,
    };
    let recommendation = Recommendation {
        target: Resources {
            cpu_millis: 25,
            memory_bytes: 40 * MIB,
        },
        lower: Resources {
            cpu_millis: 25,
            memory_bytes: 32 * MIB,
        },
        upper: Resources {
            cpu_millis: 50,
            memory_bytes: 100 * MIB,
        },
    };
    let memory = |used| wanted(current, &vertical, &recommendation, used).memory_bytes;
    // Above the upper bound: down to the target, or to what it uses plus 10 %.
    assert_eq!(memory(Some(20 * MIB)), 40 * MIB);
    assert_eq!(memory(Some(200 * MIB)), 220 * MIB);
    // Using nearly all of it: nothing to shrink (and within 5 %, no growth).
    assert_eq!(memory(Some(480 * MIB)), 512 * MIB);
    // No sample: never shrink blind.
    assert_eq!(memory(None), 512 * MIB);
    // CPU is not controlled: kept.
    assert_eq!(
        wanted(current, &vertical, &recommendation, None).cpu_millis,
        200
    );
}
