//! One sampling round over the node's running containers: each one's usage from its cgroup
//! (or, where this host's cgroups cannot be read, from the engine), and the node's own.
//!
//! A container's cgroup is found from its main process, which the engine gives (listed, or
//! inspected when the list did not say); where it is, is kept per container id until the
//! container starts again, so that a round costs a few small file reads per container and
//! no engine call. The [`Sampler`] keeps the deltas; what it has not seen in a round is
//! forgotten, so that removed containers do not pile up.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use drover_proto::model::{AllocUsage, Resources};
use futures_util::StreamExt;
use tracing::{debug, warn};

use super::UsageError;
use super::cgroup::{CgroupMounts, CgroupPaths, LocateError, RawReading};
use super::node::read_node;
use super::sampler::{NodeSampler, Sampler, Usage};
use crate::runtime::{ContainerRuntime, ContainerState, RuntimeError};

/// Containers whose usage the engine is asked for at once, where cgroups cannot be read.
/// Docker takes about a second per sample (it waits for a second reading to compute the CPU
/// share) and works for it: more at once slowed the engine's creates and starts of a large
/// apply to half speed.
pub const ENGINE_CONCURRENCY: usize = 2;

/// A running container a round samples, as the supervisor last listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageTarget {
    /// The allocation it runs.
    pub allocation_id: String,
    /// The engine's id of the container.
    pub container_id: String,
    /// Its main process as listed; `None` has it inspected when its cgroup is to be found.
    pub pid: Option<u32>,
    /// When it last started, as listed: another start is another process to find.
    pub started_at: Option<SystemTime>,
}

/// One container's usage over its last interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUsage {
    /// The container sampled, so that a sample of a replaced container is not taken for
    /// its successor's.
    pub container_id: String,
    /// The sample, as the coordinator gets it.
    pub usage: AllocUsage,
}

impl ContainerUsage {
    /// CPU and memory as the allocation's status reports them (memory: the working set).
    pub fn resources(&self) -> Resources {
        Resources {
            cpu_millis: self.usage.cpu_millis,
            memory_bytes: self.usage.memory_working_set_bytes,
        }
    }
}

/// What one round read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageRound {
    /// The containers that gave a sample; a container's first reading (and its first after
    /// a restart) gives none, only the start of its next interval.
    pub containers: Vec<ContainerUsage>,
    /// The node's usage since the previous round (CPU in use, memory not available);
    /// `None` in the first round or when /proc cannot be read.
    pub node: Option<Resources>,
}

/// What the agent sends the coordinator after each round: the samples of the replicas
/// still running, and the node's usage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageReport {
    /// One sample per running replica that gave one, by allocation id.
    pub allocations: Vec<AllocUsage>,
    /// The node's usage, if read.
    pub node: Option<Resources>,
}

/// Where one container's counters are, found from its main process.
#[derive(Debug)]
struct Located {
    pid: u32,
    paths: CgroupPaths,
    /// The start time listed when it was found: a new one means a new process.
    started_at: Option<SystemTime>,
}

/// The last reading given to the sampler for a container, as the sampler keeps it: the
/// start of the next sample's window, and what tells a restart (counters that went down).
#[derive(Debug, Clone, Copy)]
struct Baseline {
    pid: u32,
    reading: RawReading,
    at: Instant,
}

/// What can go wrong with one container, each warned about once per container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Failure {
    Inspect,
    NoPid,
    Locate,
    Read,
    Engine,
}

/// How one container's round went on the cgroup path.
enum Outcome {
    Sampled(ContainerUsage),
    /// Nothing to report this round (a first reading, or the container is gone).
    NoSample,
    /// Its cgroup cannot be read: ask the engine.
    FromEngine,
}

/// Reads the usage of the node's containers, round after round, keeping what the next
/// round needs: the host's cgroup mounts, each container's cgroup, the sampler's baselines.
#[derive(Debug)]
pub struct UsageReader {
    /// `None`: this host's cgroups cannot be read, every container is asked of the engine.
    mounts: Option<CgroupMounts>,
    sampler: Sampler,
    node: NodeSampler,
    /// By container id.
    located: HashMap<String, Located>,
    /// By container id, mirroring the sampler's.
    baselines: HashMap<String, Baseline>,
    /// By container id: the failures already warned about.
    warned: HashMap<String, HashSet<Failure>>,
    node_warned: bool,
}

impl Default for UsageReader {
    fn default() -> Self {
        UsageReader::new()
    }
}

impl UsageReader {
    /// A reader of this host's cgroups: its mounts are read now, once (they do not change
    /// while the agent runs). When they cannot be read, one warning says so and every
    /// container's usage comes from the engine, as slow as that is.
    pub fn new() -> UsageReader {
        match CgroupMounts::read() {
            Ok(mounts) => {
                debug!(
                    mounts = mounts.mounts().len(),
                    "reading container usage from cgroup files"
                );
                UsageReader::with_mounts(mounts)
            }
            Err(error) => {
                warn!(%error, "cgroups cannot be read on this host: container usage comes from the engine instead, about a second per container");
                UsageReader::from_engine()
            }
        }
    }

    /// A reader of the cgroups under `mounts` (a host's /proc/self/mountinfo).
    pub fn with_mounts(mounts: CgroupMounts) -> UsageReader {
        UsageReader {
            mounts: Some(mounts),
            ..UsageReader::from_engine()
        }
    }

    /// A reader that asks the engine for every container's usage, as on a host whose
    /// cgroups cannot be read.
    pub fn from_engine() -> UsageReader {
        UsageReader {
            mounts: None,
            sampler: Sampler::new(),
            node: NodeSampler::new(),
            located: HashMap::new(),
            baselines: HashMap::new(),
            warned: HashMap::new(),
            node_warned: false,
        }
    }

    /// Whether containers are read from their cgroups (else from the engine).
    pub fn reads_cgroups(&self) -> bool {
        self.mounts.is_some()
    }

    /// Samples every container of `targets` (the running ones) and the node. Containers
    /// not among `targets` are forgotten: a container seen again starts a new series.
    pub async fn round(
        &mut self,
        runtime: &dyn ContainerRuntime,
        targets: &[UsageTarget],
    ) -> UsageRound {
        let current: HashSet<&str> = targets.iter().map(|t| t.container_id.as_str()).collect();
        self.located.retain(|id, _| current.contains(id.as_str()));
        self.baselines.retain(|id, _| current.contains(id.as_str()));
        self.warned.retain(|id, _| current.contains(id.as_str()));
        self.sampler.retain(|id| current.contains(id));

        let mut containers = Vec::with_capacity(targets.len());
        let mut ask_engine = Vec::new();
        for target in targets {
            match self.read_cgroup(runtime, target).await {
                Outcome::Sampled(sample) => containers.push(sample),
                Outcome::NoSample => {}
                Outcome::FromEngine => ask_engine.push(target),
            }
        }
        containers.extend(self.ask_engine(runtime, &ask_engine).await);
        UsageRound {
            containers,
            node: self.node_usage(),
        }
    }

    /// Reads one container's cgroup. A first try with what is known (the cached cgroup, or
    /// the listed process); when that cgroup is gone or restarted, one more with the
    /// container inspected afresh.
    async fn read_cgroup(
        &mut self,
        runtime: &dyn ContainerRuntime,
        target: &UsageTarget,
    ) -> Outcome {
        let id = target.container_id.as_str();
        if self
            .located
            .get(id)
            .is_some_and(|l| l.started_at != target.started_at)
        {
            self.located.remove(id);
        }
        for attempt in 0..2 {
            if self.mounts.is_none() {
                return Outcome::FromEngine;
            }
            if !self.located.contains_key(id) {
                // The listed process first; inspected afresh for the second try.
                let pid = match target.pid.filter(|_| attempt == 0) {
                    Some(pid) => pid,
                    None => match self.inspect_pid(runtime, target).await {
                        Ok(Some(pid)) => pid,
                        Ok(None) => return Outcome::NoSample,
                        Err(outcome) => return outcome,
                    },
                };
                let Some(mounts) = self.mounts.as_ref() else {
                    return Outcome::FromEngine;
                };
                match mounts.locate(pid) {
                    Ok(paths) => {
                        let located = Located {
                            pid,
                            paths,
                            started_at: target.started_at,
                        };
                        self.located.insert(id.to_owned(), located);
                    }
                    Err(error) if error.is_gone() => {
                        if attempt == 0 {
                            continue;
                        }
                        debug!(alloc = %target.allocation_id, container = %id, pid, "container process gone; no usage sample");
                        return Outcome::NoSample;
                    }
                    Err(
                        error @ UsageError::Locate {
                            source: LocateError::NotMounted(_),
                            ..
                        },
                    ) => {
                        self.cgroups_unavailable(&error);
                        return Outcome::FromEngine;
                    }
                    Err(error) => {
                        if self.first_failure(id, Failure::Locate) {
                            warn!(alloc = %target.allocation_id, container = %id, pid, %error, "cannot find the container's cgroup; reading its usage from the engine");
                        }
                        return Outcome::FromEngine;
                    }
                }
            }
            let Some(located) = self.located.get(id) else {
                return Outcome::NoSample;
            };
            let pid = located.pid;
            match located.paths.read() {
                Ok(reading) => {
                    if attempt == 0 && self.restarted(id, pid, &reading) {
                        // Counters went down: a new cgroup, likely a new process too.
                        self.located.remove(id);
                        continue;
                    }
                    return match self.sample(target, pid, reading) {
                        Some(sample) => Outcome::Sampled(sample),
                        None => Outcome::NoSample,
                    };
                }
                Err(error) if error.is_gone() => {
                    self.located.remove(id);
                    if attempt == 0 {
                        continue;
                    }
                    debug!(alloc = %target.allocation_id, container = %id, pid, "container cgroup gone; no usage sample");
                    return Outcome::NoSample;
                }
                Err(error) => {
                    if self.first_failure(id, Failure::Read) {
                        warn!(alloc = %target.allocation_id, container = %id, pid, %error, "cannot read the container's cgroup; reading its usage from the engine");
                    }
                    return Outcome::FromEngine;
                }
            }
        }
        Outcome::NoSample
    }

    /// The container's main process, inspected; `Ok(None)` when it has none (it stopped),
    /// `Err` with what to do instead when the engine does not say.
    async fn inspect_pid(
        &mut self,
        runtime: &dyn ContainerRuntime,
        target: &UsageTarget,
    ) -> Result<Option<u32>, Outcome> {
        let id = target.container_id.as_str();
        match runtime.inspect(id).await {
            Ok(info) if info.pid.is_some() => Ok(info.pid),
            Ok(info) if info.state == ContainerState::Running => {
                if self.first_failure(id, Failure::NoPid) {
                    warn!(alloc = %target.allocation_id, container = %id, "the engine gives no main process of the running container; reading its usage from the engine");
                }
                Err(Outcome::FromEngine)
            }
            Ok(info) => {
                debug!(alloc = %target.allocation_id, container = %id, state = ?info.state, "container no longer runs; no usage sample");
                Ok(None)
            }
            Err(RuntimeError::NotFound(_)) => {
                debug!(alloc = %target.allocation_id, container = %id, "container gone; no usage sample");
                Ok(None)
            }
            Err(error) => {
                if self.first_failure(id, Failure::Inspect) {
                    warn!(alloc = %target.allocation_id, container = %id, %error, "cannot inspect the container for its main process; no usage sample");
                } else {
                    debug!(alloc = %target.allocation_id, container = %id, %error, "cannot inspect the container for its main process");
                }
                Err(Outcome::NoSample)
            }
        }
    }

    /// Whether `reading` is of a new cgroup than the last one of the same process: the
    /// kernel's counters only grow while a cgroup lives.
    fn restarted(&self, id: &str, pid: u32, reading: &RawReading) -> bool {
        self.baselines.get(id).is_some_and(|last| {
            last.pid == pid
                && (reading.cpu_usage_usec < last.reading.cpu_usage_usec
                    || reading.oom_kills < last.reading.oom_kills)
        })
    }

    /// Gives the reading to the sampler; the sample, if the interval gave one.
    fn sample(
        &mut self,
        target: &UsageTarget,
        pid: u32,
        reading: RawReading,
    ) -> Option<ContainerUsage> {
        let id = target.container_id.as_str();
        let at = Instant::now();
        let previous = self.baselines.get(id).copied();
        let usage = self.sampler.sample(id, pid, reading, at);
        // As the sampler: a reading no later than the last one keeps the last one.
        if previous.is_none_or(|last| at > last.at || last.pid != pid) {
            self.baselines
                .insert(id.to_owned(), Baseline { pid, reading, at });
        }
        let Usage {
            cpu_millis,
            memory_working_set_bytes,
            memory_limit_bytes,
            oom_kills: _,
        } = usage?;
        let window = previous.map_or(Duration::ZERO, |last| at.duration_since(last.at));
        Some(ContainerUsage {
            container_id: id.to_owned(),
            usage: AllocUsage {
                allocation_id: target.allocation_id.clone(),
                cpu_millis,
                memory_working_set_bytes,
                memory_limit_bytes,
                // Cumulative: the coordinator takes differences, and a lost update then
                // loses no kill.
                oom_kills: reading.oom_kills,
                window_ms: millis(window),
            },
        })
    }

    /// Asks the engine for the usage of `targets`, a few at a time. The engine gives no
    /// limit and no OOM kills; its CPU share is measured across its own two readings,
    /// taken during the call, so the window is the call's duration.
    async fn ask_engine(
        &mut self,
        runtime: &dyn ContainerRuntime,
        targets: &[&UsageTarget],
    ) -> Vec<ContainerUsage> {
        // Owned targets: a closure over borrowed ones is not `Send` enough for a spawned
        // round (rust-lang/rust#102211).
        let owned: Vec<UsageTarget> = targets.iter().map(|&target| target.clone()).collect();
        let results: Vec<(UsageTarget, Result<Resources, RuntimeError>, Duration)> =
            futures_util::stream::iter(owned)
                .map(|target| engine_usage(runtime, target))
                .buffer_unordered(ENGINE_CONCURRENCY)
                .collect()
                .await;
        let mut samples = Vec::with_capacity(results.len());
        for (target, result, took) in results {
            let id = target.container_id.as_str();
            match result {
                Ok(used) => samples.push(ContainerUsage {
                    container_id: id.to_owned(),
                    usage: AllocUsage {
                        allocation_id: target.allocation_id.clone(),
                        cpu_millis: used.cpu_millis,
                        memory_working_set_bytes: used.memory_bytes,
                        memory_limit_bytes: None,
                        oom_kills: 0,
                        window_ms: millis(took).max(1),
                    },
                }),
                Err(RuntimeError::NotFound(_)) => {
                    debug!(alloc = %target.allocation_id, container = %id, "container gone; no usage sample");
                }
                Err(error) => {
                    if self.first_failure(id, Failure::Engine) {
                        warn!(alloc = %target.allocation_id, container = %id, %error, "cannot read container usage");
                    } else {
                        debug!(alloc = %target.allocation_id, container = %id, %error, "cannot read container usage");
                    }
                }
            }
        }
        samples
    }

    /// The node's usage since the previous round.
    fn node_usage(&mut self) -> Option<Resources> {
        match read_node() {
            Ok(reading) => self.node.sample(reading).map(|usage| Resources {
                cpu_millis: usage.cpu_millis,
                memory_bytes: usage
                    .memory_total_bytes
                    .saturating_sub(usage.memory_available_bytes),
            }),
            Err(error) => {
                if !std::mem::replace(&mut self.node_warned, true) {
                    warn!(%error, "cannot read the node's usage from /proc");
                } else {
                    debug!(%error, "cannot read the node's usage from /proc");
                }
                None
            }
        }
    }

    /// This host's cgroups cannot be used: says so once, and reads every container from
    /// the engine from now on.
    fn cgroups_unavailable(&mut self, error: &UsageError) {
        warn!(%error, "cgroups cannot be read on this host: container usage comes from the engine instead, about a second per container");
        self.mounts = None;
        self.located.clear();
        self.baselines.clear();
        self.sampler.retain(|_| false);
    }

    /// True the first time `failure` happens to container `id` (while it stays a target).
    fn first_failure(&mut self, id: &str, failure: Failure) -> bool {
        self.warned
            .entry(id.to_owned())
            .or_default()
            .insert(failure)
    }
}

/// The engine's usage of one container, and how long the call took.
async fn engine_usage(
    runtime: &dyn ContainerRuntime,
    target: UsageTarget,
) -> (UsageTarget, Result<Resources, RuntimeError>, Duration) {
    let started = Instant::now();
    let result = runtime.usage(&target.container_id).await;
    (target, result, started.elapsed())
}

/// A duration in whole milliseconds, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::process::{Child, Command};

    use super::*;
    use crate::runtime::{ContainerSpec, FakeRuntime, labels};

    /// This host's cgroup mounts, if this process can read its own cgroup as the agent
    /// reads a container's; `None` (and why, printed) if not.
    fn cgroups_here() -> Option<CgroupMounts> {
        let read = CgroupMounts::read().and_then(|mounts| {
            mounts
                .locate(std::process::id())
                .and_then(|paths| paths.read())
                .map(|_| mounts)
        });
        read.map_err(|reason| eprintln!("skipping: this host's cgroups cannot be read: {reason}"))
            .ok()
    }

    /// A child process, killed when dropped.
    struct Process(Child);

    impl Process {
        fn sleeping() -> Process {
            Process(
                Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .expect("spawn sleep"),
            )
        }

        fn pid(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for Process {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Creates and starts `name` on the fake engine; the target as the supervisor would
    /// list it.
    async fn running(runtime: &FakeRuntime, name: &str, pid: Option<u32>) -> UsageTarget {
        let spec = ContainerSpec {
            name: name.to_owned(),
            image: "web:1".to_owned(),
            command: Vec::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            labels: BTreeMap::from([(labels::NODE.to_owned(), "n1".to_owned())]),
            cpu_millis: 0,
            memory_bytes: 0,
            ports: Vec::new(),
            dns: None,
        };
        let id = runtime.create(&spec).await.expect("create");
        runtime.start(&id).await.expect("start");
        assert!(runtime.set_pid(&id, pid));
        let info = runtime.inspect(&id).await.expect("inspect");
        UsageTarget {
            allocation_id: name.to_owned(),
            container_id: id,
            pid: info.pid,
            started_at: info.started_at,
        }
    }

    fn engine_calls(runtime: &FakeRuntime) -> Vec<String> {
        runtime
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("usage") || c.starts_with("inspect"))
            .collect()
    }

    #[tokio::test]
    async fn the_second_reading_gives_a_sample_with_the_cumulative_oom_kills() {
        let Some(mounts) = cgroups_here() else {
            return;
        };
        let runtime = FakeRuntime::new();
        let target = running(&runtime, "web.1", Some(std::process::id())).await;
        runtime.clear_calls();
        let mut reader = UsageReader::with_mounts(mounts.clone());
        let first = reader.round(&runtime, std::slice::from_ref(&target)).await;
        assert!(first.containers.is_empty(), "{first:?}");
        assert_eq!(first.node, None, "one node reading gives no usage yet");
        std::thread::sleep(Duration::from_millis(30));
        let second = reader.round(&runtime, std::slice::from_ref(&target)).await;
        assert_eq!(second.containers.len(), 1, "{second:?}");
        let sample = &second.containers[0];
        assert_eq!(sample.container_id, target.container_id);
        assert_eq!(sample.usage.allocation_id, "web.1");
        assert!(sample.usage.window_ms >= 30, "{sample:?}");
        assert!(sample.usage.memory_working_set_bytes > 0, "{sample:?}");
        let raw = mounts
            .locate(std::process::id())
            .and_then(|paths| paths.read())
            .expect("reading");
        assert_eq!(sample.usage.oom_kills, raw.oom_kills, "the counter itself");
        assert_eq!(sample.usage.memory_limit_bytes, raw.memory_limit_bytes);
        let node = second.node.expect("the node's usage");
        assert!(node.memory_bytes > 0, "{node:?}");
        assert!(
            engine_calls(&runtime).is_empty(),
            "the listed process is enough: {:?}",
            runtime.calls()
        );
    }

    #[tokio::test]
    async fn a_process_the_list_does_not_give_is_inspected_once() {
        let Some(mounts) = cgroups_here() else {
            return;
        };
        let runtime = FakeRuntime::new();
        let mut target = running(&runtime, "web.1", Some(std::process::id())).await;
        target.pid = None;
        runtime.clear_calls();
        let mut reader = UsageReader::with_mounts(mounts);
        reader.round(&runtime, std::slice::from_ref(&target)).await;
        let second = reader.round(&runtime, std::slice::from_ref(&target)).await;
        assert_eq!(second.containers.len(), 1, "{second:?}");
        assert_eq!(
            engine_calls(&runtime),
            vec![format!("inspect {}", target.container_id)]
        );
    }

    #[tokio::test]
    async fn a_new_start_or_a_new_appearance_starts_a_new_series() {
        let Some(mounts) = cgroups_here() else {
            return;
        };
        let runtime = FakeRuntime::new();
        let mut target = running(&runtime, "web.1", Some(std::process::id())).await;
        let mut reader = UsageReader::with_mounts(mounts);
        reader.round(&runtime, std::slice::from_ref(&target)).await;
        let sampled = reader.round(&runtime, std::slice::from_ref(&target)).await;
        assert_eq!(sampled.containers.len(), 1, "{sampled:?}");

        // Started again: another process (in the same cgroup here), a new series.
        let child = Process::sleeping();
        target.pid = Some(child.pid());
        target.started_at = target
            .started_at
            .map(|at| at + Duration::from_secs(1))
            .or(Some(SystemTime::now()));
        let restarted = reader.round(&runtime, std::slice::from_ref(&target)).await;
        assert!(restarted.containers.is_empty(), "{restarted:?}");
        let again = reader.round(&runtime, std::slice::from_ref(&target)).await;
        assert_eq!(again.containers.len(), 1, "{again:?}");

        // Gone for a round: forgotten, and seen again it starts afresh.
        reader.round(&runtime, &[]).await;
        assert!(reader.sampler.is_empty());
        assert!(reader.located.is_empty());
        let back = reader.round(&runtime, std::slice::from_ref(&target)).await;
        assert!(back.containers.is_empty(), "{back:?}");
    }

    #[tokio::test]
    async fn a_process_gone_gives_no_sample_and_asks_no_stats() {
        let Some(mounts) = cgroups_here() else {
            return;
        };
        let runtime = FakeRuntime::new();
        let mut ended = Command::new("true").spawn().expect("spawn true");
        let pid = ended.id();
        ended.wait().expect("wait for true");
        let target = running(&runtime, "web.1", Some(pid)).await;
        runtime.clear_calls();
        let mut reader = UsageReader::with_mounts(mounts);
        let round = reader.round(&runtime, std::slice::from_ref(&target)).await;
        assert!(round.containers.is_empty(), "{round:?}");
        // The listed process is gone: inspected once more, then given up for this round.
        assert_eq!(
            engine_calls(&runtime),
            vec![format!("inspect {}", target.container_id)]
        );
        assert!(reader.reads_cgroups());
    }

    #[tokio::test]
    async fn a_container_without_a_process_is_read_from_the_engine() {
        let runtime = FakeRuntime::new();
        let target = running(&runtime, "web.1", None).await;
        let used = Resources {
            cpu_millis: 300,
            memory_bytes: 12 << 20,
        };
        assert!(runtime.set_usage(&target.container_id, used));
        runtime.clear_calls();
        let mounts = CgroupMounts::from_mountinfo("").expect("empty mountinfo");
        let mut reader = UsageReader::with_mounts(mounts);
        let round = reader.round(&runtime, std::slice::from_ref(&target)).await;
        assert_eq!(round.containers.len(), 1, "{round:?}");
        assert_eq!(round.containers[0].resources(), used);
        assert_eq!(round.containers[0].usage.memory_limit_bytes, None);
        assert_eq!(
            engine_calls(&runtime),
            vec![
                format!("inspect {}", target.container_id),
                format!("usage {}", target.container_id),
            ]
        );
        // Only this container: the host's cgroups are still read for the others.
        assert!(reader.reads_cgroups());
    }

    #[tokio::test]
    async fn a_host_without_cgroup_mounts_reads_every_container_from_the_engine() {
        let runtime = FakeRuntime::new();
        let target = running(&runtime, "web.1", Some(std::process::id())).await;
        let mounts = CgroupMounts::from_mountinfo("").expect("empty mountinfo");
        let mut reader = UsageReader::with_mounts(mounts);
        let round = reader.round(&runtime, std::slice::from_ref(&target)).await;
        assert_eq!(round.containers.len(), 1, "{round:?}");
        assert!(!reader.reads_cgroups());
        let again = reader.round(&runtime, &[target]).await;
        assert_eq!(again.containers.len(), 1, "{again:?}");
    }
}
