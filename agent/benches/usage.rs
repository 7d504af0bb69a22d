//! Reading every container's usage: from its cgroup files (what the agent does) against
//! the container engine's stats call (what it did, and still does where cgroups cannot be
//! read), through the same `UsageReader::round` over the same running containers.
//!
//! Prints, per method: wall time of one round, per container, and this process's CPU time
//! per container sample (getrusage), and the ratios. Needs Docker and the test images
//! (built by examples/seed/build-images.sh, run first).
//!
//! `cargo bench -p drover-agent --bench usage` (CONTAINERS=8, ROUNDS=10 by default).

use std::process::Command;
use std::time::{Duration, Instant};

use drover_agent::runtime::{ContainerRuntime, DockerRuntime};
use drover_agent::usage::{UsageReader, UsageTarget};
use nix::sys::resource::{UsageWho, getrusage};

const IMAGE: &str = "drover-test-busybox:latest";

/// Removes the bench's containers, also when it panics.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&self.0)
                .output();
        }
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This process's user + system CPU time so far.
fn cpu_time() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let (user, system) = (usage.user_time(), usage.system_time());
    Duration::from_secs(u64::try_from(user.tv_sec() + system.tv_sec()).unwrap_or(0))
        + Duration::from_micros(u64::try_from(user.tv_usec() + system.tv_usec()).unwrap_or(0))
}

/// Mean wall time per round and CPU time per container sample over `rounds` rounds (after
/// two to warm up: the first reading of each container gives no sample).
async fn measure(
    mut reader: UsageReader,
    runtime: &DockerRuntime,
    targets: &[UsageTarget],
    rounds: usize,
) -> (Duration, Duration, usize) {
    for _ in 0..2 {
        reader.round(runtime, targets).await;
    }
    let (started, cpu) = (Instant::now(), cpu_time());
    let mut samples = 0;
    for _ in 0..rounds {
        samples += reader.round(runtime, targets).await.containers.len();
    }
    let wall = started.elapsed() / u32::try_from(rounds).unwrap_or(1);
    let cpu = (cpu_time() - cpu) / u32::try_from(samples.max(1)).unwrap_or(1);
    (wall, cpu, samples)
}

#[tokio::main]
async fn main() {
    let containers = env_or("CONTAINERS", 8);
    let rounds = env_or("ROUNDS", 10);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/seed/build-images.sh"
    );
    let built = Command::new(script).output().expect("run build-images.sh");
    assert!(built.status.success(), "build-images.sh failed");
    let mut started = Containers(Vec::new());
    for i in 0..containers {
        let out = Command::new("docker")
            .args(["run", "-d", "--rm", "--name"])
            .arg(format!("drover-usage-bench-{}-{i}", std::process::id()))
            .arg(IMAGE)
            .output()
            .expect("docker run");
        assert!(
            out.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        started
            .0
            .push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    let runtime = DockerRuntime::connect(None).await.expect("docker");
    let mut targets = Vec::new();
    for id in &started.0 {
        let info = runtime.inspect(id).await.expect("inspect");
        targets.push(UsageTarget {
            allocation_id: format!("bench.{}", targets.len()),
            container_id: info.id.clone(),
            pid: info.pid,
            started_at: info.started_at,
        });
    }
    let cgroups = UsageReader::new();
    assert!(
        cgroups.reads_cgroups(),
        "this host's cgroups cannot be read"
    );
    let (cg_wall, cg_cpu, cg_samples) = measure(cgroups, &runtime, &targets, rounds).await;
    let (en_wall, en_cpu, en_samples) =
        measure(UsageReader::from_engine(), &runtime, &targets, rounds).await;
    let per = |wall: Duration| wall / u32::try_from(containers.max(1)).unwrap_or(1);
    println!("usage of {containers} containers, {rounds} rounds each:");
    println!(
        "  cgroup files : round {:>10.3?}, {:>10.3?}/container, CPU {:>9.3?}/sample ({cg_samples} samples)",
        cg_wall,
        per(cg_wall),
        cg_cpu
    );
    println!(
        "  engine stats : round {:>10.3?}, {:>10.3?}/container, CPU {:>9.3?}/sample ({en_samples} samples)",
        en_wall,
        per(en_wall),
        en_cpu
    );
    println!(
        "  engine / cgroup files: {:.0}x the wall time per round, {:.1}x this process's CPU per sample",
        en_wall.as_secs_f64() / cg_wall.as_secs_f64().max(1e-9),
        en_cpu.as_secs_f64() / cg_cpu.as_secs_f64().max(1e-9)
    );
}
