//! The cost of a Prometheus scrape: a coordinator and one agent run as processes against
//! the real Docker engine with 50 NodePort services over one two-replica Deployment, each
//! connected through once so that every series exists; then `/metrics` on both daemons is
//! fetched ROUNDS times over one kept-alive TLS connection (curl, with the read token),
//! beside `/healthz` on the same connection as the anchor (same TLS, routing and token-free
//! answer, no metrics). Prints the size of each answer and the latency percentiles, and
//! the ratio to the anchor; it is not a test.
//!
//! ```sh
//! cargo build --release && cargo bench -p drover-tests --bench scrape   # -- 500: rounds
//! ```

use std::process::Command;
use std::time::Duration;

use drover_tests::{DroverProcess, build_images, success, wait_for};

const SERVICES: u16 = 50;
const DEFAULT_ROUNDS: usize = 200;
const FIRST_NODE_PORT: u16 = 31000;

fn main() {
    let rounds = drover_tests::bench_arg(DEFAULT_ROUNDS);
    drover_tests::require_binaries("scrape");
    build_images();
    let dir = tempfile::tempdir().expect("tempdir");
    let (coordinator, agent) = drover_tests::single_node_cluster(dir.path(), "scrape");
    let manifest = dir.path().join("scrape.yaml");
    std::fs::write(&manifest, manifest_text()).expect("write manifest");
    coordinator.apply(&manifest);
    wait_for("two healthy replicas", Duration::from_secs(120), || {
        drover_tests::healthy_nodes(&coordinator, "web").len() == 2
    });
    // One connection through every service, so that its per-revision series exist too.
    wait_for("every service answering", Duration::from_secs(60), || {
        (0..SERVICES).all(|i| {
            drover_tests::try_http_get(&format!("127.0.0.1:{}", FIRST_NODE_PORT + i)).is_ok()
        })
    });
    let out = coordinator.cli(&["token", "create", "scrape-bench", "--role", "read"]);
    let token = success(&out, "drover token create").trim().to_string();
    // The agent has the new token once it answers with it.
    wait_for(
        "the agent to know the token",
        Duration::from_secs(30),
        || fetch(&agent, drover_security::AGENT_NAME, "/metrics", &token, 1).is_some(),
    );

    // What is measured holds every service (the agent publishes its proxies' totals once a
    // second).
    for (process, name, wanted) in [
        (
            &coordinator,
            "coordinator.drover",
            "drover_coordinator_services 50",
        ),
        (
            &agent,
            drover_security::AGENT_NAME,
            "drover_agent_proxy_revision_connections_total{service=\"svc-49\"",
        ),
    ] {
        let mut text = String::new();
        let started = std::time::Instant::now();
        wait_for(
            &format!("{name}'s metrics with every service"),
            Duration::from_secs(120),
            || {
                text = body(process, name, "/metrics", &token);
                text.contains(wanted)
            },
        );
        let series = text.lines().filter(|l| !l.starts_with('#')).count();
        println!(
            "{name}: {series} series (after {:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
    println!("{SERVICES} services, {rounds} scrapes per daemon over one TLS connection");
    println!(
        "{:<12} {:<9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "daemon", "path", "bytes", "p50 ms", "p90 ms", "p99 ms", "x anchor"
    );
    for (daemon, name, process) in [
        ("coordinator", "coordinator.drover", &coordinator),
        ("agent", drover_security::AGENT_NAME, &agent),
    ] {
        let anchor = fetch(process, name, "/healthz", &token, rounds).expect("healthz");
        let metrics = fetch(process, name, "/metrics", &token, rounds).expect("metrics");
        for (path, (size, times)) in [("/healthz", &anchor), ("/metrics", &metrics)] {
            println!(
                "{daemon:<12} {path:<9} {size:>9} {:>9.3} {:>9.3} {:>9.3} {:>8.1}",
                percentile(times, 0.5),
                percentile(times, 0.9),
                percentile(times, 0.99),
                percentile(times, 0.5) / percentile(&anchor.1, 0.5),
            );
        }
    }
    drop(agent);
}

/// `rounds` GETs of `path` on one connection: the answer's size, and each transfer's time
/// from request to last byte, in ms; `None` when any answer is not 200.
fn fetch(
    process: &DroverProcess,
    name: &str,
    path: &str,
    token: &str,
    rounds: usize,
) -> Option<(usize, Vec<f64>)> {
    let port = process.http_port;
    let url = format!("https://{name}:{port}{path}");
    let mut command = Command::new("curl");
    command
        .args(["-s", "--cacert"])
        .arg(process.coordinator_dir.join("ca.crt"))
        .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "-w",
            "%{http_code} %{size_download} %{time_pretransfer} %{time_total}\\n",
        ]);
    // Each URL with its own output (one -o serves one URL).
    for _ in 0..rounds {
        command.args(["-o", "/dev/null"]).arg(&url);
    }
    let out = command.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut size = 0;
    let mut times = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.first() != Some(&"200") || fields.len() != 4 {
            return None;
        }
        size = fields[1].parse().ok()?;
        let pretransfer: f64 = fields[2].parse().ok()?;
        let total: f64 = fields[3].parse().ok()?;
        times.push((total - pretransfer) * 1000.0);
    }
    (times.len() == rounds).then_some((size, times))
}

/// One GET of `path`: the body.
fn body(process: &DroverProcess, name: &str, path: &str, token: &str) -> String {
    let port = process.http_port;
    let out = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(process.coordinator_dir.join("ca.crt"))
        .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("https://{name}:{port}{path}"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn percentile(times: &[f64], q: f64) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).copied().unwrap_or(f64::NAN)
}

/// One Deployment, and SERVICES NodePort services over it.
fn manifest_text() -> String {
    let mut text = String::from(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  \
         selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    \
         spec:\n      containers:\n      - name: web\n        image: user-service:latest\n        \
         ports: [{containerPort: 8080}]\n",
    );
    for i in 0..SERVICES {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}}}\nspec:\n  type: NodePort\n  \
             selector: {{app: web}}\n  ports: [{{port: {port}, targetPort: 8080, nodePort: {node_port}}}]\n",
            port = 8000 + i,
            node_port = FIRST_NODE_PORT + i,
        ));
    }
    text
}
