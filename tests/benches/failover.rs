//! Failover time on a real cluster: a coordinator and five agents as processes (each agent
//! on its own loopback address, against the real Docker engine), the seed's `user-service`
//! with 3 replicas, one per node. Each trial SIGKILLs the agent of a node that runs one
//! replica and kills its containers (a node crash), then measures the time from the SIGKILL
//! until the coordinator sees 3 healthy replicas again, none on the dead node; meanwhile a
//! client connects in a loop through the proxy of a node without a replica and counts
//! failures. The node is then started again (same data dir) and the next trial waits for it.
//!
//! Five nodes, not three, so that every trial starts as the first does, one replica per
//! node with an empty node for the replacement (with three, the restarted victim of the
//! previous trial would often be the only empty node, and the replicas would stay on fewer
//! nodes).
//!
//! Run with `cargo build --release --workspace --bins && cargo bench -p drover-tests --bench
//! failover [-- TRIALS]` (10 trials by default). Goals (issue 5): p50 ≤ 2 s, p99 ≤ 5 s, zero
//! client errors.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use drover_tests::{
    DroverProcess, LoopingClient, allocations, healthy_nodes, http_get, nodes_cluster, ready_nodes,
    remove_node_containers, seed_on_node_addresses, wait_for,
};

const IPS: [&str; 5] = [
    "127.0.0.71",
    "127.0.0.72",
    "127.0.0.73",
    "127.0.0.74",
    "127.0.0.75",
];
const SERVICE: &str = "user-service";
const REPLICAS: usize = 3;
const SETTLE: Duration = Duration::from_secs(120);
/// Longest a trial may take before it counts as a failure to recover.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

/// Replicas per node, healthy ones only.
fn placement(coordinator: &DroverProcess) -> BTreeMap<String, usize> {
    let mut per_node = BTreeMap::new();
    for node in healthy_nodes(coordinator, SERVICE) {
        *per_node.entry(node).or_default() += 1;
    }
    per_node
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest rank: the smallest value with at least q of the samples at or below it.
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn main() {
    let trials: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    let (dir, coordinator, mut agents, nodes) = nodes_cluster("fo", &IPS);
    let seed = seed_on_node_addresses(&coordinator.coordinator_dir);
    coordinator.apply(&seed);
    println!(
        "failover benchmark: coordinator + {} agents as processes, real Docker engine",
        IPS.len()
    );
    println!(
        "service {SERVICE}: {REPLICAS} replicas; node crash = SIGKILL agent + docker rm -f its containers"
    );
    println!(
        "failover time: SIGKILL -> coordinator sees {REPLICAS} healthy replicas, none on the dead node"
    );
    println!(
        "client: connects in a loop (5 ms pause) through a node without a replica (its proxy, port 80)"
    );
    println!();
    println!("  trial  killed  client via  failover ms  client ok  client errors");

    let mut times = Vec::new();
    let mut total_errors = 0u64;
    let mut unrecovered = 0usize;
    for trial in 1..=trials {
        wait_for("all nodes ready", SETTLE, || {
            ready_nodes(&coordinator).len() == nodes.len()
        });
        wait_for("3 healthy replicas", SETTLE, || {
            placement(&coordinator).values().sum::<usize>() == REPLICAS
                && allocations(&coordinator, SERVICE).len() == REPLICAS
        });
        // The victim: a node with one replica, in turn; the client goes through an empty node.
        let per_node = placement(&coordinator);
        let victim = (0..nodes.len())
            .map(|i| (i + trial) % nodes.len())
            .find(|&i| per_node.get(&nodes[i]).is_some_and(|&n| n == 1))
            .unwrap_or_else(|| panic!("no node runs exactly one replica: {per_node:?}"));
        let via = (0..nodes.len())
            .find(|&i| !per_node.contains_key(&nodes[i]))
            .expect("a node without a replica");
        let proxy = format!("{}:80", IPS[via]);
        wait_for("the client's proxy reaching every replica", SETTLE, || {
            let seen: std::collections::BTreeSet<String> = (0..12)
                .map(|_| http_get(&proxy))
                .filter(|b| !b.is_empty())
                .collect();
            seen.len() == REPLICAS
        });

        let client = LoopingClient::start(proxy, |body| body.starts_with("user-service "));
        std::thread::sleep(Duration::from_millis(300));
        let dead = nodes[victim].clone();
        let start = Instant::now();
        agents[victim].kill();
        remove_node_containers(&dead);
        let recovered = loop {
            let on = healthy_nodes(&coordinator, SERVICE);
            if on.len() == REPLICAS
                && on.iter().all(|n| *n != dead)
                && allocations(&coordinator, SERVICE).len() == REPLICAS
            {
                break Some(start.elapsed());
            }
            if start.elapsed() > RECOVERY_LIMIT {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Keep the client going a little after recovery, then count.
        std::thread::sleep(Duration::from_millis(500));
        let (ok, failed, kinds) = client.finish();
        total_errors += failed;
        let shown = match recovered {
            Some(t) => {
                times.push(t);
                format!("{}", t.as_millis())
            }
            None => {
                unrecovered += 1;
                format!("> {}", RECOVERY_LIMIT.as_millis())
            }
        };
        println!("  {trial:>5}  node {victim}  node {via}      {shown:>11}  {ok:>9}  {failed:>13}");
        for (what, count) in kinds {
            println!("         client error x{count}: {what}");
        }

        // The node comes back (same data dir) for the next trial.
        agents[victim].kill_and_restart();
    }

    times.sort();
    let p50 = percentile(&times, 0.50);
    let p99 = percentile(&times, 0.99);
    let max = times.last().copied().unwrap_or_default();
    let min = times.first().copied().unwrap_or_default();
    println!();
    println!(
        "failover over {} trials: min {} ms, p50 {} ms, p99 {} ms, max {} ms; not recovered within {} s: {unrecovered}; client errors: {total_errors}",
        times.len(),
        min.as_millis(),
        p50.as_millis(),
        p99.as_millis(),
        max.as_millis(),
        RECOVERY_LIMIT.as_secs()
    );
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    println!("goals");
    println!(
        "  p50 {} ms (goal <= 2000 ms): {}",
        p50.as_millis(),
        verdict(p50 <= Duration::from_secs(2) && unrecovered == 0)
    );
    println!(
        "  p99 {} ms (goal <= 5000 ms): {}",
        p99.as_millis(),
        verdict(p99 <= Duration::from_secs(5) && unrecovered == 0)
    );
    println!(
        "  client errors {total_errors} (goal 0): {}",
        verdict(total_errors == 0)
    );
    drop(agents);
    drop(coordinator);
    if total_errors > 0 || unrecovered > 0 {
        // Every process's log stays for a look at what went wrong.
        println!("logs kept in {}", dir.keep().display());
    }
}
