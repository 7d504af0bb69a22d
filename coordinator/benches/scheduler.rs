//! Scheduler throughput: 100,000 replicas of 1,000 services on 10,000 nodes, on one thread.
//!
//! Run with `cargo bench -p drover-coordinator --bench scheduler [-- SCALE]`, where SCALE
//! (default 1.0) multiplies the node and service counts.

use std::hint::black_box;
use std::time::Instant;

use drover_coordinator::scheduler::{
    ClusterSnapshot, NodeView, PlacementOutcome, PlacementRequest,
};
use drover_proto::model::{
    ConstraintOp, LabelConstraint, PortSpec, Protocol, Resources, SpreadMode, WorkloadSpec,
};

const NODES: f64 = 10_000.0;
const SERVICES: f64 = 1_000.0;
const REPLICAS_PER_SERVICE: u32 = 100;
/// Nomad's C1M challenge: 1,000,000 containers in under 5 minutes, about 3,750 placements/s.
const NOMAD_C1M_PER_SECOND: f64 = 3_750.0;
/// Drover's goal on one core.
const GOAL_PER_SECOND: f64 = 100_000.0;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const ZONES: [&str; 4] = ["a", "b", "c", "d"];

/// A tiny deterministic generator (SplitMix64), so every run builds the same cluster.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

fn scale_from_args() -> f64 {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .find_map(|a| a.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0)
}

fn build_nodes(count: usize, rng: &mut SplitMix) -> Vec<NodeView> {
    (0..count)
        .map(|i| {
            let capacity = Resources {
                cpu_millis: rng.pick(&[4_000, 8_000, 16_000, 32_000]),
                memory_bytes: rng.pick(&[8, 16, 32, 64]) * GIB,
            };
            let mut node = NodeView::new(format!("node-{i:05}"), capacity);
            node.labels
                .insert("zone".into(), ZONES[i % ZONES.len()].into());
            let disk = if rng.below(3) == 0 { "hdd" } else { "ssd" };
            node.labels.insert("disk".into(), disk.into());
            node.flags.cordoned = rng.below(100) == 0;
            node
        })
        .collect()
}

fn constraint(key: &str, op: ConstraintOp, values: &[&str]) -> LabelConstraint {
    LabelConstraint {
        key: key.into(),
        op,
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

fn build_services(count: usize, rng: &mut SplitMix) -> Vec<WorkloadSpec> {
    (0..count)
        .map(|i| {
            let mut spec = WorkloadSpec::new(format!("svc-{i:04}"), "example/app:1");
            spec.replicas = REPLICAS_PER_SERVICE;
            spec.resources = Resources {
                cpu_millis: rng.pick(&[100, 250, 500, 1_000]),
                memory_bytes: rng.pick(&[128, 256, 512, 1_024, 2_048]) * MIB,
            };
            spec.placement.constraints = match rng.below(10) {
                0..=3 => Vec::new(),
                4..=6 => {
                    let first = rng.pick(&ZONES);
                    let second = rng.pick(&ZONES);
                    vec![constraint("zone", ConstraintOp::In, &[first, second])]
                }
                7 | 8 => vec![constraint("disk", ConstraintOp::Eq, &["ssd"])],
                _ => vec![
                    constraint("zone", ConstraintOp::NotEq, &["d"]),
                    constraint("disk", ConstraintOp::Exists, &[]),
                ],
            };
            if rng.below(5) == 0 {
                spec.placement.spread = SpreadMode::BinPack;
            }
            if rng.below(50) == 0 {
                spec.ports.push(PortSpec {
                    name: None,
                    container_port: 80,
                    host_port: Some(8_000 + i as u16 % 100),
                    protocol: Protocol::Tcp,
                });
            }
            spec
        })
        .collect()
}

/// FNV-1a over the placed node ids, in order: any change in placement changes it.
fn fnv1a<'a>(ids: impl Iterator<Item = &'a String>) -> u64 {
    ids.flat_map(|id| id.bytes().chain([0]))
        .fold(0xCBF2_9CE4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3)
        })
}

fn main() {
    let scale = scale_from_args();
    let node_count = ((NODES * scale) as usize).max(1);
    let service_count = ((SERVICES * scale) as usize).max(1);
    let mut rng = SplitMix(0x00D2_07E2);
    let nodes = build_nodes(node_count, &mut rng);
    let services = build_services(service_count, &mut rng);
    let requested = service_count as u64 * u64::from(REPLICAS_PER_SERVICE);

    let start = Instant::now();
    let mut snapshot = ClusterSnapshot::new(nodes);
    let outcomes: Vec<PlacementOutcome> = services
        .iter()
        .map(|spec| {
            snapshot.place(&PlacementRequest {
                service: &spec.name,
                spec,
                count: spec.replicas,
                avoid_nodes: &[],
            })
        })
        .collect();
    let seconds = start.elapsed().as_secs_f64();
    black_box(&snapshot);

    let placed: usize = outcomes.iter().map(|o| o.placed.len()).sum();
    let failures = outcomes.iter().filter(|o| o.failure.is_some()).count();
    let checksum = fnv1a(outcomes.iter().flat_map(|o| &o.placed));
    let per_second = placed as f64 / seconds;
    println!("scheduler benchmark (one thread, snapshot build included)");
    println!("nodes:             {node_count}");
    println!("services:          {service_count} x {REPLICAS_PER_SERVICE} replicas");
    println!("allocations:       {placed} placed of {requested} ({failures} services short)");
    println!("seconds:           {seconds:.3}");
    println!("placements/second: {per_second:.0}");
    println!(
        "vs Nomad C1M ({NOMAD_C1M_PER_SECOND:.0}/s): {:.1}x",
        per_second / NOMAD_C1M_PER_SECOND
    );
    println!(
        "vs Drover goal ({GOAL_PER_SECOND:.0}/s): {:.2}x",
        per_second / GOAL_PER_SECOND
    );
    println!("checksum:          {checksum:016x}");
}
