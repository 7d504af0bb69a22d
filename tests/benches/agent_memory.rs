//! Agent memory and idle CPU benchmark: a coordinator and one `drover-agent` run as
//! processes against the real Docker engine; the agent manages 50 replicas with an HTTP
//! readiness check each, then its resident set and CPU time are read from /proc over an
//! idle window. Last, the service is deleted and the time until its containers are gone is
//! measured (the agent drains each for its drain delay, then stops and removes them all at
//! once). Prints figures; it is not a test.
//!
//! ```sh
//! cargo build --release && cargo bench -p drover-tests --bench agent_memory   # -- 10: 10 s window
//! ```

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use drover_tests::{DroverProcess, build_images, node_containers, success, unique_node};

const SERVICE: &str = "membench";
const REPLICAS: usize = 50;
const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(10);
const HEALTHY_DEADLINE: Duration = Duration::from_secs(300);
const GONE_DEADLINE: Duration = Duration::from_secs(120);
/// The agent's default `drain_delay`, which the harness keeps: a deleted replica serves its
/// open connections this long before it is stopped.
const DRAIN_DELAY: Duration = Duration::from_secs(3);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The issue's goal for the agent's resident set.
const GOAL_BYTES: f64 = 15e6;
/// What k3s documents for its agent.
const K3S_AGENT_BYTES: f64 = 256e6;

fn main() {
    let window = window_arg();
    drover_tests::require_binaries("agent_memory");
    build_images();

    let dir = tempfile::tempdir().expect("tempdir");
    let coordinator_dir = dir.path().join("coordinator");
    let agent_dir = dir.path().join("agent");
    for d in [&coordinator_dir, &agent_dir] {
        std::fs::create_dir_all(d).expect("create data dir");
    }
    let node = unique_node("membench");
    let coordinator = DroverProcess::coordinator(&coordinator_dir);
    let agent = DroverProcess::agent(&agent_dir, &node, &coordinator);
    let agent_pid = agent.pid().expect("agent pid");
    let coordinator_pid = coordinator.pid().expect("coordinator pid");
    println!(
        "agent {node} (pid {agent_pid}), coordinator {}",
        coordinator.url()
    );

    wait_until("the node to join", Duration::from_secs(60), || {
        let joined = coordinator
            .try_cli_json(&["nodes"])
            .is_some_and(|nodes| nodes.to_string().contains(node.as_str()));
        (
            joined,
            if joined { "joined" } else { "waiting" }.to_string(),
        )
    });

    let manifest = dir.path().join("membench.yaml");
    std::fs::write(&manifest, manifest_text()).expect("write manifest");
    let manifest = manifest.display().to_string();
    success(
        &coordinator.cli(&["apply", "-f", &manifest]),
        "drover apply",
    );
    let started = Instant::now();
    wait_until(
        &format!("{REPLICAS} healthy replicas"),
        HEALTHY_DEADLINE,
        || {
            let states = allocation_states(&coordinator);
            let healthy = states.get("healthy").copied().unwrap_or(0);
            let containers = node_containers(&node, false).len();
            (
                healthy == REPLICAS,
                format!("{states:?}, {containers} containers running"),
            )
        },
    );
    let ramp = started.elapsed();
    let running = node_containers(&node, false).len();
    println!(
        "{REPLICAS} replicas healthy after {:.1} s; settling {} s",
        ramp.as_secs_f64(),
        SETTLE.as_secs()
    );
    std::thread::sleep(SETTLE);

    // The idle window: nothing but /proc reads on this side.
    let ticks_per_second = clock_ticks_per_second();
    let before = Sample::read(agent_pid);
    let window_start = Instant::now();
    println!("idle window: {} s", window.as_secs());
    std::thread::sleep(window);
    let after = Sample::read(agent_pid);
    let elapsed = window_start.elapsed().as_secs_f64();
    let coordinator_sample = Sample::read(coordinator_pid);
    let still_healthy = allocation_states(&coordinator)
        .get("healthy")
        .copied()
        .unwrap_or(0);

    let cpu_seconds = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / ticks_per_second;
    let cpu_per_minute = cpu_seconds * 60.0 / elapsed;
    let rss = after.rss_bytes as f64;

    // Cleanup, measured: from `drover delete` until the engine lists none of the containers.
    success(&coordinator.cli(&["delete", SERVICE]), "drover delete");
    let deleted = Instant::now();
    wait_until("the containers to go", GONE_DEADLINE, || {
        let left = node_containers(&node, true).len();
        (left == 0, format!("{left} containers left"))
    });
    let gone = deleted.elapsed().as_secs_f64();

    println!();
    println!("agent memory and idle CPU benchmark (release build, Docker engine)");
    println!("containers managed:     {running} ({still_healthy} healthy after the window)");
    println!(
        "agent RSS:              {:.1} MiB ({:.1} MB) at end of window; {:.1} MiB at start",
        mib(after.rss_bytes),
        rss / 1e6,
        mib(before.rss_bytes)
    );
    println!(
        "  of which anon / file: {:.1} MiB / {:.1} MiB",
        mib(after.rss_anon_bytes),
        mib(after.rss_file_bytes)
    );
    println!("agent peak RSS (VmHWM): {:.1} MiB", mib(after.peak_bytes));
    println!("agent threads:          {}", after.threads);
    println!(
        "agent idle CPU:         {cpu_per_minute:.3} s per minute ({:.2}% of one core; {cpu_seconds:.3} s over {elapsed:.1} s)",
        cpu_seconds / elapsed * 100.0
    );
    println!(
        "vs Drover goal (15 MB): {:.2}x ({})",
        rss / GOAL_BYTES,
        if rss < GOAL_BYTES { "under" } else { "over" }
    );
    println!(
        "vs k3s agent (256 MB):  {:.3}x ({:.1}x smaller)",
        rss / K3S_AGENT_BYTES,
        K3S_AGENT_BYTES / rss
    );
    println!(
        "coordinator RSS:        {:.1} MiB (peak {:.1} MiB), for information",
        mib(coordinator_sample.rss_bytes),
        mib(coordinator_sample.peak_bytes)
    );
    println!(
        "delete of {REPLICAS} replicas:  containers gone after {gone:.1} s ({:.1} s beyond the {} s drain delay)",
        gone - DRAIN_DELAY.as_secs_f64(),
        DRAIN_DELAY.as_secs()
    );
    println!();
    drop(agent);
    drop(coordinator);
}

/// The idle window's length in seconds: the first numeric argument (cargo passes `--bench`).
fn window_arg() -> Duration {
    std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_WINDOW)
}

fn manifest_text() -> String {
    format!(
        r#"apiVersion: drover.dev/v1
kind: Service
metadata: {{name: {SERVICE}}}
spec:
  image: drover-test-busybox
  replicas: {REPLICAS}
  resources: {{cpu: 10m, memory: 16Mi}}
  ports:
    - {{name: http, containerPort: 8080}}
  health:
    http: {{port: 8080, path: /healthz}}
    interval: 5s
"#
    )
}

/// Count of the service's running allocations by state.
fn allocation_states(coordinator: &DroverProcess) -> BTreeMap<String, usize> {
    let mut states = BTreeMap::new();
    let Some(status) = coordinator.try_cli_json(&["status", SERVICE]) else {
        return states;
    };
    for a in status["allocations"].as_array().into_iter().flatten() {
        if a["desired"] == "run" {
            let state = a["state"].as_str().unwrap_or("?").to_string();
            *states.entry(state).or_insert(0) += 1;
        }
    }
    states
}

/// Polls `check` (done, progress line) every second, printing progress every few seconds;
/// panics after `timeout` (the processes' logs are printed as they drop).
fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> (bool, String)) {
    let start = Instant::now();
    let mut last_print = start;
    loop {
        let (done, progress) = check();
        if done {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}: {progress}"
        );
        if last_print.elapsed() >= PROGRESS_EVERY {
            println!(
                "  waiting for {what} ({:.0} s): {progress}",
                start.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `getconf CLK_TCK`; 100 when it cannot be run.
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One reading of a process's memory and CPU time from /proc.
#[derive(Debug)]
struct Sample {
    rss_bytes: u64,
    rss_anon_bytes: u64,
    rss_file_bytes: u64,
    peak_bytes: u64,
    threads: u64,
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
}

impl Sample {
    fn read(pid: u32) -> Sample {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/status (has the process exited?): {e}"));
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
        // Fields after the command name, which sits in parentheses and may hold spaces:
        // state is field 3, utime 14, stime 15.
        let rest: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let tick = |i: usize| -> u64 {
            rest.get(i)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("field {} of /proc/{pid}/stat", i + 3))
        };
        Sample {
            rss_bytes: field("VmRSS") * 1024,
            rss_anon_bytes: field("RssAnon") * 1024,
            rss_file_bytes: field("RssFile") * 1024,
            peak_bytes: field("VmHWM") * 1024,
            threads: field("Threads"),
            cpu_ticks: tick(11) + tick(12),
        }
    }
}
