//! Short connections through a service's cluster address against its node port, on a real
//! agent: a coordinator and one agent as processes (the agent serving cluster addresses on
//! `lo`), a `LoadBalancer` service over two replicas of the seed's `user-service` (busybox
//! httpd), so that one proxy listens on both the node's address and the cluster address.
//! Clients connect, send an HTTP/1.0 request, read the answer to its end and close, in a
//! loop, through three targets in alternating rounds: one replica directly (its host port:
//! the anchor), the node port, and the cluster address. Both proxied paths are the same
//! proxy; what differs is the address, so the ratio shows what the address on `lo` costs.
//!
//! Run with `cargo build --release --workspace --bins && cargo bench -p drover-tests --bench
//! cluster_ip [-- ROUNDS]` (8 rounds of 2 s per target and client count by default). Needs
//! root (the agent adds the cluster address to `lo`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use drover_tests::{allocations, healthy_nodes, nodes_cluster_with_cluster_ips, wait_for};

const IP: &str = "127.0.0.188";
const ROUND: Duration = Duration::from_secs(2);
const WARM_UP: Duration = Duration::from_millis(300);

/// Connections completed in `ROUND` by `clients` threads through `target`; failures.
fn measure(target: SocketAddr, clients: usize) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, counting) = (Arc::clone(&stop), Arc::clone(&counting));
            let (done, failed) = (Arc::clone(&done), Arc::clone(&failed));
            std::thread::spawn(move || {
                let mut answer = Vec::with_capacity(512);
                while !stop.load(Ordering::Relaxed) {
                    let ok = one_connection(target, &mut answer);
                    if counting.load(Ordering::Relaxed) {
                        if ok {
                            done.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(WARM_UP);
    counting.store(true, Ordering::Relaxed);
    std::thread::sleep(ROUND);
    counting.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(8);
    let (dir, coordinator, _agents, _nodes) = nodes_cluster_with_cluster_ips("vipb", &[IP]);
    let manifest = dir.path().join("web.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  \
         selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    \
         spec:\n      containers:\n        - name: web\n          image: user-service\n          \
         ports: [{containerPort: 8080}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\n\
         spec:\n  type: LoadBalancer\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n",
    )
    .expect("write manifest");
    coordinator.apply(&manifest);
    wait_for("2 healthy replicas", Duration::from_secs(60), || {
        healthy_nodes(&coordinator, "web").len() == 2
    });
    let services = coordinator.cli_json(&["get", "services"]);
    let cluster_ip = services[0]["cluster_ip"]
        .as_str()
        .expect("the service's cluster address")
        .to_string();
    let host_port = allocations(&coordinator, "web")[0]["host_ports"]["8080"]
        .as_u64()
        .expect("a replica's host port");
    let targets: [(&str, SocketAddr); 3] = [
        (
            "direct (one replica)",
            format!("{IP}:{host_port}").parse().expect("address"),
        ),
        ("node port", format!("{IP}:80").parse().expect("address")),
        (
            "cluster address",
            format!("{cluster_ip}:80").parse().expect("address"),
        ),
    ];
    wait_for("every target answering", Duration::from_secs(30), || {
        targets
            .iter()
            .all(|(_, t)| one_connection(*t, &mut Vec::new()))
    });

    println!(
        "cluster address vs node port: one agent (release build) on {IP}, service web ({cluster_ip}:80 and {IP}:80) over 2 busybox httpd replicas"
    );
    println!(
        "short connections: connect, HTTP/1.0 GET, read to the end, close; {rounds} rounds of {} s per target, targets alternating; {} cores",
        ROUND.as_secs(),
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    for clients in [1, 4] {
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
        let mut ratios = Vec::new();
        let mut failures = [0u64; 3];
        for round in 0..rounds {
            let mut this_round = [0.0; 3];
            // Start one target later each round, so no target always runs first.
            for k in 0..targets.len() {
                let i = (round + k) % targets.len();
                let (done, failed) = measure(targets[i].1, clients);
                this_round[i] = done as f64 / ROUND.as_secs_f64();
                failures[i] += failed;
            }
            for (i, rate) in this_round.iter().enumerate() {
                rates[i].push(*rate);
            }
            ratios.push(this_round[2] / this_round[1]);
        }
        println!("\n{clients} client(s):");
        println!(
            "  {:<22} {:>12} {:>20} {:>9}",
            "target", "conn/s", "range", "failed"
        );
        for (i, (name, _)) in targets.iter().enumerate() {
            let mut sorted = rates[i].clone();
            let med = median(&mut sorted);
            println!(
                "  {:<22} {:>12.0} {:>9.0} – {:<8.0} {:>9}",
                name,
                med,
                sorted.first().copied().unwrap_or(0.0),
                sorted.last().copied().unwrap_or(0.0),
                failures[i]
            );
        }
        let mut sorted = ratios.clone();
        let med = median(&mut sorted);
        println!(
            "  cluster address / node port, per round: median {med:.3}, range {:.3} – {:.3}",
            sorted.first().copied().unwrap_or(0.0),
            sorted.last().copied().unwrap_or(0.0)
        );
    }
}

/// One short connection through `target`: whether it got a whole answer (into `answer`).
fn one_connection(target: SocketAddr, answer: &mut Vec<u8>) -> bool {
    answer.clear();
    TcpStream::connect(target)
        .and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")?;
            s.read_to_end(answer)
        })
        .is_ok_and(|_| answer.ends_with(b"\n") && answer.len() > 20)
}
