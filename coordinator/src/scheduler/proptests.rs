//! Property tests: random clusters and requests against a naive one-replica-at-a-time model.

use std::collections::{BTreeMap, HashMap};

use drover_proto::model::{
    ConstraintOp, LabelConstraint, NodeHealth, PortSpec, Protocol, Resources, SpreadMode,
    WorkloadSpec,
};
use proptest::prelude::*;

use super::failure::first_failure;
use super::{ClusterSnapshot, NodeView, PlacementRequest, utilisation};

const MIB: u64 = 1 << 20;
const ZONES: [&str; 3] = ["a", "b", "c"];
const PORTS: [u16; 2] = [8080, 9090];
const SERVICES: [&str; 4] = ["s0", "s1", "s2", "s3"];

fn arb_node() -> impl Strategy<Value = NodeView> {
    (
        (0..8u8, any::<bool>(), any::<bool>()),
        (0..4usize, any::<bool>()),
        (0..9u64, 0..9u64, prop_oneof![Just(0u64), 0..=100u64]),
        (0..4u8, 0..4u8, 0..3u32),
    )
        .prop_map(|(flags, labels, sizes, used)| {
            let (health, cordoned, draining) = flags;
            let (zone, ssd) = labels;
            let (cpu, memory, percent_used) = sizes;
            let (port_a, port_b, replicas) = used;
            let capacity = Resources {
                cpu_millis: cpu * 1000,
                memory_bytes: memory * 1024 * MIB,
            };
            let mut view = NodeView::new("", capacity);
            view.health = match health {
                0 => NodeHealth::Down,
                1 => NodeHealth::Disconnected,
                _ => NodeHealth::Ready,
            };
            view.flags.cordoned = cordoned && health == 2;
            view.flags.draining = draining && health == 3;
            if let Some(zone) = ZONES.get(zone) {
                view.labels.insert("zone".into(), zone.to_string());
            }
            view.labels
                .insert("disk".into(), if ssd { "ssd" } else { "hdd" }.into());
            view.allocated = Resources {
                cpu_millis: capacity.cpu_millis * percent_used / 100,
                memory_bytes: capacity.memory_bytes * percent_used / 100,
            };
            view.host_ports.extend(
                PORTS
                    .iter()
                    .zip([port_a, port_b])
                    .filter(|(_, used)| *used == 0)
                    .map(|(p, _)| *p),
            );
            if replicas > 0 {
                view.service_counts
                    .insert(SERVICES[replicas as usize].to_string(), replicas);
            }
            view
        })
}

fn arb_nodes() -> impl Strategy<Value = Vec<NodeView>> {
    prop::collection::vec(arb_node(), 0..16).prop_map(|mut nodes| {
        for (i, node) in nodes.iter_mut().enumerate() {
            node.id = format!("n{i:02}");
        }
        nodes
    })
}

fn arb_constraint() -> impl Strategy<Value = LabelConstraint> {
    prop_oneof![
        (0..3usize).prop_map(|z| constraint("zone", ConstraintOp::Eq, &[ZONES[z]])),
        Just(constraint("zone", ConstraintOp::In, &["a", "b"])),
        Just(constraint("zone", ConstraintOp::NotIn, &["c"])),
        Just(constraint("zone", ConstraintOp::Exists, &[])),
        Just(constraint("disk", ConstraintOp::NotEq, &["hdd"])),
    ]
}

fn constraint(key: &str, op: ConstraintOp, values: &[&str]) -> LabelConstraint {
    LabelConstraint {
        key: key.into(),
        op,
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

/// A request: its spec, its count and the positions of the nodes it avoids.
type Request = (WorkloadSpec, u32, Vec<usize>);

fn arb_request() -> impl Strategy<Value = Request> {
    (
        (0..4usize, 0..1500u64, 0..3000u64, 0..10u32),
        prop::collection::vec(arb_constraint(), 0..3),
        (any::<bool>(), 0..6usize),
        prop::collection::vec(0..16usize, 0..3),
    )
        .prop_map(|(shape, constraints, options, avoid)| {
            let (service, cpu, memory, count) = shape;
            let (bin_pack, port) = options;
            let mut spec = WorkloadSpec::new(SERVICES[service], "example/image:1");
            spec.resources = Resources {
                cpu_millis: cpu,
                memory_bytes: memory * MIB,
            };
            spec.placement.constraints = constraints;
            if bin_pack {
                spec.placement.spread = SpreadMode::BinPack;
            }
            if let Some(&host_port) = PORTS.get(port) {
                spec.ports.push(PortSpec {
                    name: None,
                    container_port: 80,
                    host_port: Some(host_port),
                    protocol: Protocol::Tcp,
                });
            }
            (spec, count, avoid)
        })
}

/// The rules applied literally: every replica looks at every node.
fn naive_place(nodes: &mut [NodeView], req: &PlacementRequest<'_>) -> Vec<String> {
    let mut placed = Vec::new();
    for _ in 0..req.count {
        let best = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| first_failure(n, req).is_none())
            .min_by_key(|(position, n)| {
                let score = utilisation(n.allocated.plus(req.spec.resources), n.capacity);
                let score = match req.spec.placement.spread {
                    SpreadMode::Spread => score,
                    SpreadMode::BinPack => u64::MAX - score,
                };
                (n.replicas_of(req.service), score, *position)
            })
            .map(|(position, _)| position);
        let Some(position) = best else {
            break;
        };
        let node = &mut nodes[position];
        node.allocated = node.allocated.plus(req.spec.resources);
        node.host_ports.extend(req.spec.host_ports());
        *node
            .service_counts
            .entry(req.service.to_string())
            .or_default() += 1;
        placed.push(node.id.clone());
    }
    placed
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn placement_respects_capacity_ports_and_accounting(
        nodes in arb_nodes(),
        requests in prop::collection::vec(arb_request(), 1..8),
    ) {
        let mut snapshot = ClusterSnapshot::new(nodes.clone());
        let mut model = nodes.clone();
        let mut port_uses: BTreeMap<(String, u16), u32> = nodes
            .iter()
            .flat_map(|n| n.host_ports.iter().map(|&p| ((n.id.clone(), p), 1)))
            .collect();
        let mut replicas: HashMap<(String, String), u32> = HashMap::new();
        for (spec, count, avoid) in &requests {
            let avoid_nodes: Vec<String> = avoid.iter().map(|i| format!("n{i:02}")).collect();
            let req = PlacementRequest { service: &spec.name, spec, count: *count, avoid_nodes: &avoid_nodes };
            let outcome = snapshot.place(&req);

            prop_assert_eq!(&outcome.placed, &naive_place(&mut model, &req));
            prop_assert_eq!(outcome.failure.is_some(), outcome.placed.len() < *count as usize);
            if let Some(failure) = &outcome.failure {
                prop_assert_eq!(failure.requested, *count);
                prop_assert_eq!(failure.placed as usize, outcome.placed.len());
                prop_assert_eq!(failure.nodes_evaluated as usize, nodes.len());
                prop_assert_eq!(failure.nodes_filtered(), failure.nodes_evaluated);
            }
            for id in &outcome.placed {
                prop_assert!(!avoid_nodes.contains(id));
                *replicas.entry((id.clone(), spec.name.clone())).or_default() += 1;
                for port in spec.host_ports() {
                    *port_uses.entry((id.clone(), port)).or_default() += 1;
                }
            }
        }
        prop_assert!(port_uses.values().all(|&uses| uses == 1), "{:?}", port_uses);
        for (view, original) in snapshot.nodes().iter().zip(&nodes) {
            prop_assert!(view.allocated.fits_in(view.capacity), "{} over capacity", view.id);
            for (service, &count) in &view.service_counts {
                let added = replicas.get(&(view.id.clone(), service.clone())).copied().unwrap_or(0);
                let before = original.service_counts.get(service).copied().unwrap_or(0);
                prop_assert_eq!(count, before + added);
            }
        }
        prop_assert_eq!(snapshot.nodes(), &model[..]);
    }
}
