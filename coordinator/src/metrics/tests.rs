//! The metrics as Prometheus reads them: names, labels and values from a state.

use drover_proto::model::{AllocStatus, Allocation, Resources, Traffic};

use super::*;
use crate::store::WorkloadRecord;

fn encoded(metrics: &Metrics, state: &ClusterState, connected: usize) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &metrics.registry(state, connected))
        .expect("encode");
    text
}

#[test]
fn the_state_becomes_gauges_and_the_work_counters() {
    let mut state = ClusterState::default();
    state
        .nodes
        .insert("n1".into(), crate::state::test_node("n1"));
    state.stored.workloads.insert(
        "web".into(),
        WorkloadRecord::new("web", 1, 3, Traffic::default(), 0),
    );
    for (i, observed) in [
        AllocState::Healthy,
        AllocState::Healthy,
        AllocState::Pending,
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("web.{i}");
        state.stored.allocations.insert(
            id.clone(),
            Allocation {
                id: id.clone(),
                service: "web".into(),
                revision: 1,
                node: "n1".into(),
                resources: Resources::default(),
                desired: DesiredState::Run,
                created_unix_ms: 0,
            },
        );
        state.observe(
            id,
            AllocStatus {
                state: observed,
                ..AllocStatus::default()
            },
            0,
        );
    }
    let metrics = Metrics::default();
    metrics.reconciled(Duration::from_millis(3));
    metrics.observe_events(&[
        EventRecord {
            seq: 1,
            unix_ms: 0,
            kind: events::ALLOCATION_PLACED.into(),
            subject: "web.0".into(),
            message: String::new(),
        },
        EventRecord {
            seq: 2,
            unix_ms: 0,
            kind: events::ALLOCATION_RESCHEDULED.into(),
            subject: "web.1".into(),
            message: String::new(),
        },
    ]);
    metrics.request(&RequestLabels {
        method: "Control/Apply".into(),
        code: "Ok".into(),
    });
    let text = encoded(&metrics, &state, 1);
    for line in [
        "drover_coordinator_workloads 1",
        "drover_coordinator_connected_agents 1",
        "drover_coordinator_allocations{state=\"healthy\"} 2",
        "drover_coordinator_allocations{state=\"pending\"} 1",
        "drover_coordinator_allocations{state=\"lost\"} 0",
        "drover_coordinator_nodes{state=\"ready\"} 1",
        "drover_coordinator_workload_desired_replicas{workload=\"web\"} 3",
        "drover_coordinator_workload_healthy_replicas{workload=\"web\"} 2",
        "drover_coordinator_placements_total 1",
        "drover_coordinator_failovers_total 1",
        "drover_coordinator_events_total{kind=\"allocation_placed\"} 1",
        "drover_coordinator_api_requests_total{method=\"Control/Apply\",code=\"Ok\"} 1",
        "drover_coordinator_reconcile_duration_seconds_count 1",
        "# TYPE drover_coordinator_reconcile_duration_seconds histogram",
        "# UNIT drover_coordinator_reconcile_duration_seconds seconds",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
}
