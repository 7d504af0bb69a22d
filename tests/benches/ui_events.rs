//! What the web UI's event stream costs the coordinator: a coordinator and one agent run as
//! processes (release build, real Docker engine) with a two-replica workload; the workload
//! is scaled up and down ROUNDS times (each change commits a few events) with no page open
//! (the anchor), then again with STREAMS pages following `/api/v1/events` (curl processes
//! reading the server-sent events, as the page's fetch does). The coordinator's CPU time
//! (from /proc) is compared between the two, and every stream is checked to have received
//! every event. Also prints the size and time of `/api/v1/overview`. Prints figures; it is
//! not a test.
//!
//! ```sh
//! cargo build --release && cargo bench -p drover-tests --bench ui_events   # -- STREAMS (default 50)
//! ```

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use drover_tests::{DroverProcess, build_images, success, wait_for};

const DEFAULT_STREAMS: usize = 50;
const ROUNDS: usize = 10;

fn main() {
    let streams = drover_tests::bench_arg(DEFAULT_STREAMS);
    drover_tests::require_binaries("ui_events");
    build_images();
    let dir = tempfile::tempdir().expect("tempdir");
    let (coordinator, agent) = drover_tests::single_node_cluster(dir.path(), "uibench");
    drover_tests::apply_web(&coordinator, dir.path(), 2, "");
    let token = std::fs::read_to_string(coordinator.admin_token_file()).expect("admin token");
    let token = token.trim().to_string();
    let pid = coordinator.pid().expect("coordinator pid");

    let (size, took) = overview(&coordinator, &token);
    println!("/api/v1/overview: {size} bytes, {took:.2} ms (1 node, 1 workload, 2 replicas)");

    let (anchor_cpu, anchor_events) = scale_rounds(&coordinator, pid);
    println!(
        "no page open:     {ROUNDS} scale rounds, {anchor_events} events, coordinator CPU {anchor_cpu:.0} ms"
    );

    let files: Vec<std::path::PathBuf> = (0..streams)
        .map(|i| dir.path().join(format!("stream-{i}.txt")))
        .collect();
    let mut children: Vec<Child> = files
        .iter()
        .map(|file| follow_events(&coordinator, &token, file))
        .collect();
    wait_for("every stream to follow", Duration::from_secs(30), || {
        files
            .iter()
            .all(|f| std::fs::read_to_string(f).is_ok_and(|t| t.starts_with(": following")))
    });
    let (cpu, events) = scale_rounds(&coordinator, pid);
    // Every stream got every event of the rounds.
    std::thread::sleep(Duration::from_secs(1));
    let delivered: Vec<usize> = files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .matches("event: cluster")
                .count()
        })
        .collect();
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    let short = delivered.iter().filter(|n| **n < events).count();
    println!(
        "{streams} pages open: {ROUNDS} scale rounds, {events} events, coordinator CPU {cpu:.0} ms; \
         {} of {streams} streams got every event (fewest {})",
        streams - short,
        delivered.iter().min().copied().unwrap_or(0)
    );
    let extra = cpu - anchor_cpu * events as f64 / anchor_events.max(1) as f64;
    println!(
        "extra coordinator CPU per event sent to a page: {:.1} µs ({:.2}x the CPU of the rounds with none)",
        1000.0 * extra / (events * streams).max(1) as f64,
        cpu / anchor_cpu.max(0.001),
    );
    drop(agent);
}

/// Scales `web` up and down ROUNDS times, each time until the change is done: the
/// coordinator's CPU time meanwhile (ms), and the events committed.
fn scale_rounds(coordinator: &DroverProcess, pid: u32) -> (f64, usize) {
    let before_seq = last_seq(coordinator);
    let before = cpu_ms(pid);
    for round in 0..ROUNDS {
        let replicas = if round % 2 == 0 { 3 } else { 2 };
        success(
            &coordinator.cli(&["scale", "web", &replicas.to_string()]),
            "drover scale",
        );
        wait_for("the scale to settle", Duration::from_secs(60), || {
            drover_tests::healthy_nodes(coordinator, "web").len() == replicas
        });
    }
    let cpu = cpu_ms(pid) - before;
    (cpu, (last_seq(coordinator) - before_seq) as usize)
}

/// The newest event's sequence number.
fn last_seq(coordinator: &DroverProcess) -> u64 {
    coordinator
        .try_cli_json(&["events"])
        .and_then(|e| e.as_array()?.iter().filter_map(|e| e["seq"].as_u64()).max())
        .unwrap_or(0)
}

/// User plus system CPU time of `pid`, in ms (Linux's 100 clock ticks a second).
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks * 10.0
}

/// A curl following the event stream into `file`.
fn follow_events(coordinator: &DroverProcess, token: &str, file: &std::path::Path) -> Child {
    let port = coordinator.http_port;
    Command::new("curl")
        .args(["-s", "-N", "--cacert"])
        .arg(coordinator.coordinator_dir.join("ca.crt"))
        .args(["--resolve", &format!("coordinator.drover:{port}:127.0.0.1")])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg("-o")
        .arg(file)
        .arg(format!("https://coordinator.drover:{port}/api/v1/events"))
        .stdout(Stdio::null())
        .spawn()
        .expect("curl")
}

/// `/api/v1/overview`: its size and the time of one fetch after a warm-up, in ms.
fn overview(coordinator: &DroverProcess, token: &str) -> (usize, f64) {
    let port = coordinator.http_port;
    let url = format!("https://coordinator.drover:{port}/api/v1/overview");
    let mut command = Command::new("curl");
    command
        .args(["-s", "--cacert"])
        .arg(coordinator.coordinator_dir.join("ca.crt"))
        .args(["--resolve", &format!("coordinator.drover:{port}:127.0.0.1")])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "-w",
            "%{size_download} %{time_pretransfer} %{time_total}\\n",
        ]);
    for _ in 0..2 {
        command.args(["-o", "/dev/null"]).arg(&url);
    }
    let out = command.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or("0 0 0");
    let fields: Vec<f64> = last.split(' ').filter_map(|f| f.parse().ok()).collect();
    let size = fields.first().copied().unwrap_or(0.0) as usize;
    let took =
        (fields.get(2).copied().unwrap_or(0.0) - fields.get(1).copied().unwrap_or(0.0)) * 1000.0;
    (size, took)
}
