//! The controller over a state: replicas, their samples, the decision and its event.

use drover_proto::model::{
    AllocStatus, AllocUsage, Allocation, Autoscale, Resources, ScaleMetric, ScaleRules, Traffic,
    WorkloadSpec,
};

use super::*;
use crate::store::{RevisionRecord, WorkloadRecord};

const NOW: u64 = 10_000_000;

/// `web` with `replicas` healthy replicas requesting 200m each, autoscaled 1..10 on 50 %
/// CPU (stabilisation off, to see a decision at once).
fn state(replicas: u32) -> ClusterState {
    let mut state = ClusterState::default();
    state
        .nodes
        .insert("n1".into(), crate::state::test_node("n1"));
    let mut spec = WorkloadSpec::new("web", "web:1");
    spec.resources = Resources {
        cpu_millis: 200,
        memory_bytes: 0,
    };
    let mut record = WorkloadRecord::new("web", 1, replicas, Traffic::default(), 0);
    record.autoscale = Some(Autoscale {
        min_replicas: 1,
        max_replicas: 10,
        metrics: vec![ScaleMetric {
            resource: ScaleResource::Cpu,
            target: ScaleTarget::Utilization(50),
        }],
        scale_up: ScaleRules::default_up(),
        scale_down: ScaleRules {
            stabilization_seconds: 0,
            ..ScaleRules::default_down()
        },
        source: None,
    });
    state.stored.workloads.insert("web".into(), record);
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
    for i in 1..=replicas {
        let id = format!("web.{i}");
        state.stored.allocations.insert(
            id.clone(),
            Allocation {
                id: id.clone(),
                service: "web".into(),
                revision: 1,
                node: "n1".into(),
                resources: Resources {
                    cpu_millis: 200,
                    memory_bytes: 0,
                },
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

fn sample(state: &mut ClusterState, cpu_millis: &[u64]) {
    let samples = cpu_millis
        .iter()
        .enumerate()
        .map(|(i, &cpu_millis)| AllocUsage {
            allocation_id: format!("web.{}", i + 1),
            cpu_millis,
            window_ms: 5_000,
            ..AllocUsage::default()
        })
        .collect();
    let allocations = state.stored.allocations.clone();
    state.usage.observe(
        "n1",
        samples,
        |id| allocations.get(id).map(|a| a.node.as_str()),
        NOW,
    );
}

fn run(state: &ClusterState, autoscalers: &mut Autoscalers, now: u64) -> (Vec<Write>, Vec<String>) {
    let mut changes = ChangeSet::new(state, now);
    autoscalers.run(state, now, &mut changes);
    let (writes, events) = changes.finish();
    (writes, events.into_iter().map(|e| e.message).collect())
}

fn replicas_written(writes: &[Write]) -> Option<u32> {
    writes.iter().find_map(|w| match w {
        Write::PutWorkload(r) => Some(r.replicas),
        _ => None,
    })
}

#[test]
fn busy_replicas_scale_up_with_an_event_that_says_why() {
    let mut state = state(2);
    // 360m of 400m requested = 90 %, target 50 %: ceil(2 × 90/50) = 4.
    sample(&mut state, &[180, 180]);
    let mut autoscalers = Autoscalers::default();
    let (writes, events) = run(&state, &mut autoscalers, NOW);
    assert_eq!(replicas_written(&writes), Some(4));
    assert_eq!(events, ["scaled web 2 → 4: cpu 90% of target 50%"]);
    // Not again before the next period.
    let (writes, _) = run(&state, &mut autoscalers, NOW + 1_000);
    assert_eq!(replicas_written(&writes), None);
}

#[test]
fn idle_replicas_scale_down_and_missing_samples_change_nothing() {
    let mut state = state(4);
    let mut autoscalers = Autoscalers::default();
    // No sample at all: no metric, no change.
    let (writes, events) = run(&state, &mut autoscalers, NOW);
    assert_eq!((replicas_written(&writes), events.len()), (None, 0));
    sample(&mut state, &[20, 20, 20, 20]);
    let (writes, events) = run(&state, &mut autoscalers, NOW + 15_000);
    // 10 % of target 50 %: ceil(4 × 0.2) = 1.
    assert_eq!(replicas_written(&writes), Some(1));
    assert_eq!(events, ["scaled web 4 → 1: cpu 10% of target 50%"]);
}

#[test]
fn an_operator_scale_of_an_autoscaled_workload_is_refused() {
    let state = state(2);
    let mut changes = ChangeSet::new(&state, NOW);
    let refused = crate::operations::scale(&state, "web", 5, &mut changes).expect_err("autoscaled");
    let message = refused.to_string();
    assert!(
        message.contains("is autoscaled between 1 and 10 replicas (by its spec.autoscale)"),
        "{message}"
    );
    assert!(changes.is_empty());
}

#[test]
fn the_proxies_connection_counts_are_targets_too() {
    let mut state = state(2);
    let record = state.stored.workloads.get_mut("web").expect("web");
    if let Some(autoscale) = record.autoscale.as_mut() {
        autoscale.metrics = vec![
            ScaleMetric {
                resource: ScaleResource::ActiveConnections,
                target: ScaleTarget::AverageValue(2_000),
            },
            ScaleMetric {
                resource: ScaleResource::ConnectionsPerSecond,
                target: ScaleTarget::AverageValue(100_000),
            },
        ];
    }
    let known = |id: &str| id.starts_with("web.");
    let count = |id: &str, connections, active| drover_proto::model::ReplicaTraffic {
        allocation_id: id.into(),
        connections,
        active,
    };
    // Two nodes' proxies: web.1 has 3 + 2 open, web.2 has 1 + 0; over 10 s, 300 + 200 new
    // connections to web.1 and 100 to web.2 (50/s and 10/s).
    for (at, new) in [(NOW - 10_000, 0), (NOW, 1)] {
        let n1 = vec![count("web.1", 300 * new, 3), count("web.2", 100 * new, 1)];
        let n2 = vec![count("web.1", 200 * new, 2), count("web.2", 0, 0)];
        state.usage.observe_connections("n1", n1, known, at);
        state.usage.observe_connections("n2", n2, known, at);
    }
    let mut autoscalers = Autoscalers::default();
    let (writes, events) = run(&state, &mut autoscalers, NOW);
    // Active: 6 over 2 replicas = 3 per replica, target 2: ceil(2 × 3/2) = 3. The rate (30/s
    // per replica, target 100/s) proposes fewer; the largest proposal wins.
    assert_eq!(replicas_written(&writes), Some(3));
    assert_eq!(
        events,
        [
            "scaled web 2 → 3: active_connections 3 per replica, target 2, connections_per_second 30 per replica, target 100"
        ]
    );
}
