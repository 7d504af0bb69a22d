//! Unit tests of placement: scoring, filters and failure messages.

use drover_proto::model::{
    ConstraintOp, LabelConstraint, NodeHealth, PortSpec, Protocol, Resources, SpreadMode,
    WorkloadSpec,
};

use super::{ClusterSnapshot, NodeView, PlacementOutcome, PlacementRequest};

const GIB: u64 = 1 << 30;

fn res(cpu_millis: u64, memory_gib: u64) -> Resources {
    Resources {
        cpu_millis,
        memory_bytes: memory_gib * GIB,
    }
}

fn node(id: &str, cpu_millis: u64, memory_gib: u64) -> NodeView {
    NodeView::new(id, res(cpu_millis, memory_gib))
}

fn labelled(id: &str, labels: &[(&str, &str)]) -> NodeView {
    let mut view = node(id, 4000, 8);
    view.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    view
}

fn loaded(mut view: NodeView, service: &str, allocated: Resources) -> NodeView {
    view.allocated = allocated;
    view.service_counts.insert(service.to_string(), 1);
    view
}

fn spec(name: &str, cpu_millis: u64, memory_gib: u64) -> WorkloadSpec {
    let mut spec = WorkloadSpec::new(name, "example/image:1");
    spec.resources = res(cpu_millis, memory_gib);
    spec
}

fn with_host_port(mut spec: WorkloadSpec, port: u16) -> WorkloadSpec {
    spec.ports.push(PortSpec {
        name: None,
        container_port: 80,
        host_port: Some(port),
        protocol: Protocol::Tcp,
    });
    spec
}

fn constrained(name: &str, key: &str, op: ConstraintOp, values: &[&str]) -> WorkloadSpec {
    let mut spec = spec(name, 100, 0);
    spec.placement.constraints.push(LabelConstraint {
        key: key.into(),
        op,
        values: values.iter().map(|v| v.to_string()).collect(),
    });
    spec
}

fn place(snapshot: &mut ClusterSnapshot, spec: &WorkloadSpec, count: u32) -> PlacementOutcome {
    snapshot.place(&PlacementRequest {
        service: &spec.name,
        spec,
        count,
        avoid_nodes: &[],
    })
}

fn sorted(outcome: &PlacementOutcome) -> Vec<&str> {
    let mut nodes: Vec<&str> = outcome.placed.iter().map(String::as_str).collect();
    nodes.sort_unstable();
    nodes
}

fn failure_message(outcome: &PlacementOutcome) -> String {
    outcome
        .failure
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default()
}

#[test]
fn spread_puts_one_replica_on_each_node() {
    let mut snapshot = ClusterSnapshot::new(vec![
        node("n3", 4000, 8),
        node("n1", 4000, 8),
        node("n2", 4000, 8),
    ]);
    let outcome = place(&mut snapshot, &spec("web", 500, 1), 3);
    assert_eq!(outcome.placed, ["n1", "n2", "n3"]);
    assert_eq!(outcome.failure, None);
}

#[test]
fn spread_prefers_nodes_without_the_service_even_when_more_loaded() {
    let mut snapshot = ClusterSnapshot::new(vec![
        loaded(node("n1", 4000, 8), "web", res(500, 1)),
        loaded(node("n2", 4000, 8), "db", res(3000, 6)),
    ]);
    let outcome = place(&mut snapshot, &spec("web", 500, 1), 1);
    assert_eq!(outcome.placed, ["n2"]);
}

#[test]
fn spread_picks_the_least_allocated_node() {
    let mut snapshot = ClusterSnapshot::new(vec![
        loaded(node("n1", 4000, 8), "db", res(2000, 4)),
        loaded(node("n2", 4000, 8), "db", res(400, 1)),
        loaded(node("n3", 4000, 8), "db", res(1200, 2)),
    ]);
    let outcome = place(&mut snapshot, &spec("web", 100, 0), 3);
    assert_eq!(outcome.placed, ["n2", "n3", "n1"]);
}

#[test]
fn utilisation_is_relative_to_each_node_capacity() {
    // 1 core used of 16 is less loaded than nothing used of 2 once the replica lands.
    let mut snapshot = ClusterSnapshot::new(vec![
        node("small", 2000, 2),
        loaded(node("big", 16000, 32), "db", res(1000, 2)),
    ]);
    let outcome = place(&mut snapshot, &spec("web", 1000, 1), 1);
    assert_eq!(outcome.placed, ["big"]);
}

#[test]
fn bin_pack_fills_one_node_first() {
    let mut snapshot = ClusterSnapshot::new(vec![
        node("n1", 2000, 4),
        node("n2", 2000, 4),
        node("n3", 2000, 4),
    ]);
    let mut placed = Vec::new();
    for name in ["a", "b", "c", "d", "e"] {
        let mut packed = spec(name, 1000, 1);
        packed.placement.spread = SpreadMode::BinPack;
        placed.extend(place(&mut snapshot, &packed, 1).placed);
    }
    assert_eq!(placed, ["n1", "n1", "n2", "n2", "n3"]);
}

#[test]
fn bin_pack_prefers_the_most_allocated_node() {
    let mut snapshot = ClusterSnapshot::new(vec![
        node("n1", 4000, 8),
        loaded(node("n2", 4000, 8), "db", res(2000, 4)),
        loaded(node("n3", 4000, 8), "db", res(3000, 6)),
    ]);
    let mut packed = spec("web", 1000, 2);
    packed.placement.spread = SpreadMode::BinPack;
    assert_eq!(place(&mut snapshot, &packed, 1).placed, ["n3"]);
}

#[test]
fn bin_pack_still_spreads_replicas_of_one_service() {
    let mut snapshot = ClusterSnapshot::new(vec![node("n1", 4000, 8), node("n2", 4000, 8)]);
    let mut packed = spec("web", 1000, 1);
    packed.placement.spread = SpreadMode::BinPack;
    let outcome = place(&mut snapshot, &packed, 4);
    assert_eq!(outcome.placed, ["n1", "n2", "n1", "n2"]);
}

#[test]
fn a_node_takes_several_replicas_when_others_are_full() {
    let mut snapshot = ClusterSnapshot::new(vec![node("n1", 4000, 8), node("n2", 1000, 1)]);
    let outcome = place(&mut snapshot, &spec("web", 1000, 1), 4);
    assert_eq!(sorted(&outcome), ["n1", "n1", "n1", "n2"]);
    assert_eq!(outcome.failure, None);
}

#[test]
fn label_constraints_select_nodes() {
    let nodes = vec![
        labelled("n1", &[("zone", "a"), ("disk", "ssd")]),
        labelled("n2", &[("zone", "b"), ("disk", "hdd")]),
        labelled("n3", &[("zone", "c")]),
    ];
    let cases: [(WorkloadSpec, &[&str]); 5] = [
        (
            constrained("eq", "zone", ConstraintOp::Eq, &["a"]),
            &["n1", "n1", "n1"],
        ),
        (
            constrained("in", "zone", ConstraintOp::In, &["b", "c"]),
            &["n2", "n2", "n3"],
        ),
        (
            constrained("ne", "disk", ConstraintOp::NotEq, &["ssd"]),
            &["n2", "n2", "n3"],
        ),
        (
            constrained("ex", "disk", ConstraintOp::Exists, &[]),
            &["n1", "n1", "n2"],
        ),
        (
            constrained("dne", "disk", ConstraintOp::DoesNotExist, &[]),
            &["n3", "n3", "n3"],
        ),
    ];
    for (constrained_spec, expected) in cases {
        let mut snapshot = ClusterSnapshot::new(nodes.clone());
        let outcome = place(&mut snapshot, &constrained_spec, 3);
        assert_eq!(sorted(&outcome), expected, "{}", constrained_spec.name);
    }
}

#[test]
fn every_constraint_must_hold() {
    let mut snapshot = ClusterSnapshot::new(vec![
        labelled("n1", &[("zone", "a"), ("disk", "hdd")]),
        labelled("n2", &[("zone", "a"), ("disk", "ssd")]),
        labelled("n3", &[("zone", "b"), ("disk", "ssd")]),
    ]);
    let mut both = constrained("db", "zone", ConstraintOp::Eq, &["a"]);
    both.placement.constraints.push(LabelConstraint {
        key: "disk".into(),
        op: ConstraintOp::Eq,
        values: vec!["ssd".into()],
    });
    assert_eq!(place(&mut snapshot, &both, 2).placed, ["n2", "n2"]);
}

#[test]
fn unmatched_constraint_is_named_in_the_failure() {
    let mut snapshot = ClusterSnapshot::new(vec![
        labelled("n1", &[("zone", "a")]),
        labelled("n2", &[("zone", "b")]),
    ]);
    let outcome = place(
        &mut snapshot,
        &constrained("web", "zone", ConstraintOp::In, &["c", "d"]),
        1,
    );
    assert_eq!(
        failure_message(&outcome),
        "placed 0 of 1 replicas: 2 nodes evaluated, 2 filtered: 2 failed constraint \"zone in (c,d)\""
    );
}

#[test]
fn memory_exhaustion_is_reported() {
    let mut cordoned = node("n3", 8000, 16);
    cordoned.flags.cordoned = true;
    let mut snapshot =
        ClusterSnapshot::new(vec![node("n1", 4000, 1), node("n2", 4000, 1), cordoned]);
    let outcome = place(&mut snapshot, &spec("web", 500, 2), 1);
    assert!(outcome.placed.is_empty());
    assert_eq!(
        failure_message(&outcome),
        "placed 0 of 1 replicas: 3 nodes evaluated, 3 filtered: 2 lacked memory (need 2 GiB), 1 cordoned"
    );
}

#[test]
fn cpu_exhaustion_is_reported_after_partial_placement() {
    let mut snapshot = ClusterSnapshot::new(vec![node("n1", 2000, 8), node("n2", 2000, 8)]);
    let outcome = place(&mut snapshot, &spec("web", 1500, 1), 3);
    assert_eq!(outcome.placed, ["n1", "n2"]);
    let failure = outcome
        .failure
        .clone()
        .unwrap_or_else(|| panic!("no failure"));
    assert_eq!((failure.requested, failure.placed), (3, 2));
    assert_eq!(
        failure.to_string(),
        "placed 2 of 3 replicas: 2 nodes evaluated, 2 filtered: 2 lacked cpu (need 1500m)"
    );
}

#[test]
fn a_host_port_allows_one_replica_per_node() {
    let mut snapshot = ClusterSnapshot::new(vec![node("n1", 4000, 8)]);
    let outcome = place(&mut snapshot, &with_host_port(spec("web", 100, 0), 8080), 2);
    assert_eq!(outcome.placed, ["n1"]);
    assert_eq!(
        failure_message(&outcome),
        "placed 1 of 2 replicas: 1 node evaluated, 1 filtered: 1 had host port 8080 in use"
    );
}

#[test]
fn host_ports_taken_by_other_services_block_placement() {
    let mut busy = node("n1", 4000, 8);
    busy.host_ports.insert(8080);
    let mut snapshot = ClusterSnapshot::new(vec![busy, node("n2", 4000, 8)]);
    let outcome = place(&mut snapshot, &with_host_port(spec("web", 100, 0), 8080), 2);
    assert_eq!(outcome.placed, ["n2"]);
    assert_eq!(
        snapshot.node("n2").map(|n| n.host_ports.contains(&8080)),
        Some(true)
    );
}

#[test]
fn unavailable_and_avoided_nodes_are_skipped() {
    let mut down = node("n1", 4000, 8);
    down.health = NodeHealth::Down;
    let mut disconnected = node("n2", 4000, 8);
    disconnected.health = NodeHealth::Disconnected;
    let mut draining = node("n3", 4000, 8);
    draining.flags.draining = true;
    let avoided = node("n4", 4000, 8);
    let mut snapshot = ClusterSnapshot::new(vec![
        down,
        disconnected,
        draining,
        avoided,
        node("n5", 4000, 1),
    ]);
    let web = spec("web", 100, 1);
    let outcome = snapshot.place(&PlacementRequest {
        service: "web",
        spec: &web,
        count: 2,
        avoid_nodes: &["n4".to_string()],
    });
    assert_eq!(outcome.placed, ["n5"]);
    assert_eq!(
        failure_message(&outcome),
        "placed 1 of 2 replicas: 5 nodes evaluated, 5 filtered: 1 down, 1 disconnected, \
         1 draining, 1 had a replica of it fail there, 1 lacked memory (need 1 GiB)"
    );
}

#[test]
fn later_requests_see_earlier_placements() {
    let mut snapshot = ClusterSnapshot::new(vec![node("n1", 4000, 2)]);
    assert_eq!(place(&mut snapshot, &spec("a", 100, 1), 2).placed.len(), 2);
    let second = place(&mut snapshot, &spec("b", 100, 1), 1);
    assert!(second.placed.is_empty());
    let view = snapshot
        .node("n1")
        .cloned()
        .unwrap_or_else(|| panic!("no n1"));
    assert_eq!(view.allocated, res(200, 2));
    assert_eq!(view.service_counts.get("a"), Some(&2));
}

#[test]
fn release_frees_resources_ports_and_spread_count() {
    let mut snapshot = ClusterSnapshot::new(vec![node("n1", 4000, 1), node("n2", 4000, 8)]);
    let web = with_host_port(spec("web", 100, 1), 9000);
    assert_eq!(sorted(&place(&mut snapshot, &web, 2)), ["n1", "n2"]);
    assert!(snapshot.release("n1", "web", web.resources, web.host_ports()));
    assert!(!snapshot.release("n9", "web", web.resources, web.host_ports()));
    let view = snapshot
        .node("n1")
        .cloned()
        .unwrap_or_else(|| panic!("no n1"));
    assert_eq!(view.allocated, Resources::default());
    assert!(view.host_ports.is_empty() && view.service_counts.is_empty());
    // n1 holds no replica of web any more, so it wins over n2 again.
    let again = place(&mut snapshot, &spec("web", 100, 0), 1);
    assert_eq!(again.placed, ["n1"]);
}

#[test]
fn zero_replicas_place_nothing_and_do_not_fail() {
    let mut snapshot = ClusterSnapshot::new(Vec::new());
    let outcome = place(&mut snapshot, &spec("web", 100, 1), 0);
    assert_eq!(
        outcome,
        PlacementOutcome {
            placed: Vec::new(),
            failure: None
        }
    );
    let outcome = place(&mut snapshot, &spec("web", 100, 1), 1);
    assert_eq!(
        failure_message(&outcome),
        "placed 0 of 1 replicas: 0 nodes evaluated"
    );
}

#[test]
fn placement_is_deterministic_whatever_the_node_order() {
    let mut nodes: Vec<NodeView> = (0..20)
        .map(|i| {
            let mut view = node(&format!("node-{i:02}"), 1000 + 500 * (i % 4), 2 + i % 3);
            view.labels
                .insert("zone".into(), ["a", "b", "c"][i as usize % 3].into());
            view
        })
        .collect();
    let services: Vec<WorkloadSpec> = (0..8)
        .map(|i| {
            let mut s = spec(&format!("svc-{i}"), 250 * (1 + i % 3), 1);
            if i % 2 == 0 {
                s.placement.spread = SpreadMode::BinPack;
            }
            if i % 3 == 0 {
                s.placement.constraints.push(LabelConstraint {
                    key: "zone".into(),
                    op: ConstraintOp::In,
                    values: vec!["a".into(), "c".into()],
                });
            }
            s
        })
        .collect();
    let run = |nodes: Vec<NodeView>| {
        let mut snapshot = ClusterSnapshot::new(nodes);
        services
            .iter()
            .map(|s| place(&mut snapshot, s, 7))
            .collect::<Vec<_>>()
    };
    let first = run(nodes.clone());
    nodes.reverse();
    assert_eq!(first, run(nodes));
}

#[test]
fn a_node_on_probation_loses_ties_but_spread_comes_first() {
    let mut back = node("a", 4000, 8);
    back.probation = true;
    let mut snapshot = ClusterSnapshot::new(vec![back, node("b", 4000, 8), node("c", 4000, 8)]);
    let web = spec("web", 500, 1);
    // Equal replica counts: the nodes off probation go first, whatever their ids.
    assert_eq!(place(&mut snapshot, &web, 2).placed, vec!["b", "c"]);
    // b and c hold one each: spreading to the node on probation beats a second on b.
    assert_eq!(place(&mut snapshot, &web, 1).placed, vec!["a"]);
}
