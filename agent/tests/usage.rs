//! Usage read from real containers' cgroup files: a CPU burner should use about one CPU and
//! a container holding 50 MB should show it in its working set, whichever cgroup version
//! and Docker cgroup driver the host has; and the agent's sampling round
//! ([`UsageReader::round`]) finds a container's cgroup through the engine and reports it.
//!
//! Needs a Docker engine and busybox-static (examples/seed/build-images.sh builds the
//! image); without a reachable engine the container tests print why and skip. Every
//! container is removed when its test ends, also by a panic.

use std::process::Command;
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use drover_agent::runtime::{ContainerRuntime, DockerRuntime};
use drover_agent::usage::node::read_node;
use drover_agent::usage::{
    CgroupMounts, CgroupPaths, NodeSampler, Sampler, Usage, UsageReader, UsageTarget,
};

const TEST_IMAGE: &str = "drover-test-busybox:latest";
const MB: u64 = 1_000_000;
const MIB: u64 = 1024 * 1024;

/// Why the engine cannot be used, if it cannot: only then do the container tests skip.
fn docker_unavailable() -> Option<String> {
    match Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
    {
        Err(err) => Some(format!("cannot run docker: {err}")),
        Ok(output) if !output.status.success() => Some(format!(
            "docker version failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// Builds the test image once per test binary; the script is idempotent and locked.
fn build_images() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/seed/build-images.sh"
        );
        let output = Command::new(script)
            .output()
            .map_err(|err| format!("running {script}: {err}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{script} failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    });
    if let Err(err) = built {
        panic!("{err}");
    }
}

/// A running test container, removed (`docker rm -f`) when dropped, also while unwinding.
struct Container {
    name: String,
    pid: u32,
    removed: bool,
}

impl Container {
    /// Starts `script` under busybox sh in a container named after this process and `role`.
    /// The guard exists before `docker run`, so that a half-started container is removed too.
    fn start(role: &str, docker_args: &[&str], script: &str) -> Container {
        let mut container = Container {
            name: format!("drover-usage-test-{}-{role}", std::process::id()),
            pid: 0,
            removed: false,
        };
        let output = Command::new("docker")
            .args(["run", "-d", "--rm", "--name", &container.name])
            .args(docker_args)
            .args([TEST_IMAGE, "sh", "-c", script])
            .output()
            .expect("run docker");
        assert!(
            output.status.success(),
            "docker run {}: {}",
            container.name,
            String::from_utf8_lossy(&output.stderr)
        );
        let output = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Pid}}", &container.name])
            .output()
            .expect("run docker inspect");
        assert!(
            output.status.success(),
            "docker inspect {}: {}",
            container.name,
            String::from_utf8_lossy(&output.stderr)
        );
        let pid = String::from_utf8_lossy(&output.stdout);
        container.pid = pid.trim().parse().expect("docker inspect gives a PID");
        assert_ne!(container.pid, 0, "{} is not running", container.name);
        container
    }

    /// Removes the container now (once).
    fn remove(&mut self) {
        if std::mem::replace(&mut self.removed, true) {
            return;
        }
        match Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output()
        {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "docker rm -f {}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(err) => eprintln!("docker rm -f {}: {err}", self.name),
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Locates the container's cgroup the way the agent will: mounts once, then its PID.
fn locate(container: &Container) -> CgroupPaths {
    let mounts = CgroupMounts::read().expect("read /proc/self/mountinfo");
    let paths = mounts
        .locate(container.pid)
        .unwrap_or_else(|err| panic!("{}: {err}\nmounts: {:#?}", container.name, mounts));
    eprintln!("{} (pid {}): {paths:?}", container.name, container.pid);
    paths
}

/// Samples the container twice, `interval` apart.
fn sample_over(container: &Container, paths: &CgroupPaths, interval: Duration) -> Usage {
    let mut sampler = Sampler::new();
    let first = paths.read().expect("first reading");
    assert_eq!(
        sampler.sample(&container.name, container.pid, first, Instant::now()),
        None,
        "a first reading gives no sample"
    );
    sleep(interval);
    let second = paths.read().expect("second reading");
    sampler
        .sample(&container.name, container.pid, second, Instant::now())
        .unwrap_or_else(|| panic!("no sample from {first:?} to {second:?}"))
}

#[test]
fn a_cpu_burner_uses_about_one_cpu() {
    if let Some(reason) = docker_unavailable() {
        eprintln!("skipping a_cpu_burner_uses_about_one_cpu: {reason}");
        return;
    }
    build_images();
    let mut burner = Container::start("cpu", &[], "while :; do :; done");
    let paths = locate(&burner);
    let usage = sample_over(&burner, &paths, Duration::from_secs(1));
    eprintln!("{}: {usage:?}", burner.name);
    assert!(
        (500..=1300).contains(&usage.cpu_millis),
        "a busy loop should use about 1000 millicores: {usage:?}"
    );
    assert_eq!(usage.memory_limit_bytes, None, "no --memory given");
    assert_eq!(usage.oom_kills, 0);

    // Once the container is removed, its cgroup is gone, which is no error to report.
    burner.remove();
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match paths.read() {
            Err(err) => break err,
            Ok(_) if Instant::now() < deadline => sleep(Duration::from_millis(100)),
            Ok(reading) => panic!("cgroup still readable after docker rm -f: {reading:?}"),
        }
    };
    assert!(err.is_gone(), "{err}");
}

#[test]
fn a_container_holding_50_mb_has_it_in_its_working_set() {
    if let Some(reason) = docker_unavailable() {
        eprintln!("skipping a_container_holding_50_mb_has_it_in_its_working_set: {reason}");
        return;
    }
    build_images();
    // The loop keeps sh (and the 50 MB string) alive: as a last command `sleep` would
    // replace the shell, and the string with it.
    let hog = Container::start(
        "memory",
        &["--memory", "256m"],
        r#"x=$(head -c 50000000 /dev/zero | tr "\0" a); while :; do sleep 1; done"#,
    );
    let paths = locate(&hog);
    // Filling the string takes a moment on a busy machine: sample until it shows.
    let deadline = Instant::now() + Duration::from_secs(30);
    let usage = loop {
        let usage = sample_over(&hog, &paths, Duration::from_secs(1));
        if usage.memory_working_set_bytes >= 40 * MB || Instant::now() >= deadline {
            break usage;
        }
    };
    eprintln!("{}: {usage:?}", hog.name);
    assert!(
        usage.memory_working_set_bytes >= 40 * MB,
        "working set should hold the 50 MB string: {usage:?}"
    );
    assert!(
        usage.memory_working_set_bytes < 256 * MIB,
        "working set above the limit: {usage:?}"
    );
    assert_eq!(usage.memory_limit_bytes, Some(256 * MIB));
    assert_eq!(usage.oom_kills, 0);
    assert!(usage.cpu_millis <= 1300, "{usage:?}");
}

#[test]
fn the_node_reading_is_consistent() {
    let mut sampler = NodeSampler::new();
    let first = read_node().expect("read /proc/stat and /proc/meminfo");
    assert_eq!(sampler.sample(first), None);
    // Burn a little CPU so that the interval has ticks in any case.
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        std::hint::black_box(0u64);
    }
    let usage = sampler
        .sample(read_node().expect("second reading"))
        .expect("two readings give a sample");
    eprintln!("node: {usage:?}");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    assert!(usage.cpu_capacity_millis >= 1000);
    assert!(
        usage.cpu_capacity_millis >= cpus * 1000,
        "fewer online CPUs than this process may use: {usage:?}"
    );
    assert!(usage.cpu_millis <= usage.cpu_capacity_millis, "{usage:?}");
    assert!(usage.memory_available_bytes <= usage.memory_total_bytes);
    assert!(usage.memory_total_bytes > 0);
}

#[tokio::test]
async fn the_agents_round_reads_a_container_through_the_engine() {
    if let Some(reason) = docker_unavailable() {
        eprintln!("skipping the_agents_round_reads_a_container_through_the_engine: {reason}");
        return;
    }
    build_images();
    // Half a CPU at most: the round must see the limit's scale, whatever else the host runs.
    let burner = Container::start(
        "round",
        &["--memory", "256m", "--cpus", "0.5"],
        "while :; do :; done",
    );
    let runtime = DockerRuntime::connect(None)
        .await
        .expect("connect to the Docker engine");
    let info = runtime.inspect(&burner.name).await.expect("inspect");
    assert_eq!(info.pid, Some(burner.pid), "inspect gives the main process");
    // As listed without a process: the round inspects the container for it.
    let target = UsageTarget {
        allocation_id: "burner.1".into(),
        container_id: info.id.clone(),
        pid: None,
        started_at: info.started_at,
    };
    let mut reader = UsageReader::new();
    assert!(reader.reads_cgroups(), "this host's cgroups are readable");
    let first = reader.round(&runtime, std::slice::from_ref(&target)).await;
    assert!(first.containers.is_empty(), "a first reading: {first:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = reader.round(&runtime, std::slice::from_ref(&target)).await;
    eprintln!("{}: {second:?}", burner.name);
    assert!(reader.reads_cgroups(), "the container's cgroup was found");
    assert_eq!(second.containers.len(), 1, "{second:?}");
    let sample = &second.containers[0];
    assert_eq!(sample.container_id, info.id);
    assert_eq!(sample.usage.allocation_id, "burner.1");
    assert!(
        (150..=650).contains(&sample.usage.cpu_millis),
        "a busy loop held to half a CPU should use about 500 millicores: {sample:?}"
    );
    assert_eq!(sample.usage.memory_limit_bytes, Some(256 * MIB));
    assert!(
        sample.usage.memory_working_set_bytes > 0
            && sample.usage.memory_working_set_bytes < 256 * MIB,
        "{sample:?}"
    );
    assert_eq!(sample.usage.oom_kills, 0);
    assert!(
        (1900..=5000).contains(&sample.usage.window_ms),
        "the time between the two readings: {sample:?}"
    );
    let node = second.node.expect("the node's usage");
    assert!(node.cpu_millis > 0 && node.memory_bytes > 0, "{node:?}");
}
