//! An in-memory [`ContainerRuntime`] for unit tests: containers in a map, images from a list,
//! every call recorded, failures injectable. It never sleeps, except an exec told to hang,
//! which waits out its timeout on tokio's clock (instant under paused time).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use drover_proto::model::Resources;

use super::{ContainerInfo, ContainerRuntime, ContainerSpec, ContainerState, RuntimeError, labels};

/// First host port handed out for a binding without a fixed `host_port`.
const FIRST_HOST_PORT: u16 = 30000;

/// Memory a running fake container reports unless [`FakeRuntime::set_usage`] says otherwise.
const DEFAULT_MEMORY_BYTES: u64 = 4 << 20;

/// First main-process id handed out to a started container: above Linux's largest
/// `pid_max` (2^22), so that it names no process of the host the tests run on.
const FIRST_PID: u32 = 1 << 30;

/// Exit code of a container stopped with [`ContainerRuntime::stop`]: it exits cleanly on
/// SIGTERM, as the seed images do.
const STOPPED_EXIT_CODE: i64 = 0;

/// An operation of [`FakeRuntime`], for [`FakeRuntime::set_fail_next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FakeOp {
    /// [`ContainerRuntime::list`].
    List,
    /// [`ContainerRuntime::ensure_image`].
    EnsureImage,
    /// [`ContainerRuntime::create`].
    Create,
    /// [`ContainerRuntime::start`].
    Start,
    /// [`ContainerRuntime::stop`].
    Stop,
    /// [`ContainerRuntime::remove`].
    Remove,
    /// [`ContainerRuntime::inspect`].
    Inspect,
    /// [`ContainerRuntime::exec`].
    Exec,
    /// [`ContainerRuntime::usage`].
    Usage,
    /// [`ContainerRuntime::update_resources`].
    UpdateResources,
}

impl FakeOp {
    /// The operation as an [`RuntimeError::Engine`] names it (the Docker runtime's words).
    fn operation(self) -> &'static str {
        match self {
            FakeOp::List => "list containers",
            FakeOp::EnsureImage => "pull image",
            FakeOp::Create => "create container",
            FakeOp::Start => "start container",
            FakeOp::Stop => "stop container",
            FakeOp::Remove => "remove container",
            FakeOp::Inspect => "inspect container",
            FakeOp::Exec => "exec in container",
            FakeOp::Usage => "read usage of container",
            FakeOp::UpdateResources => "update limits of container",
        }
    }
}

/// An in-memory container engine.
///
/// Behaves like the Docker runtime where the agent can tell: ids are 64 hex digits and any
/// call also accepts the container's name; `list` is ordered by name; `start` of a running
/// container, `stop` of a stopped one and `remove` of a missing one succeed; `stop` leaves a
/// container exited with code 0 (a clean exit on SIGTERM); published ports are reported only
/// while a container runs; `exec` in a container that is not running fails; an image is
/// "name" or "name:latest" alike; `update_resources` changes the limits `inspect` and `list`
/// report (a 0 leaves that one as it is), in any state, without a restart.
///
/// Test controls:
/// - images: [`FakeRuntime::new`] has every image, [`FakeRuntime::with_images`] only those
///   listed ([`add_image`](FakeRuntime::add_image) adds more); an absent image makes
///   `ensure_image` and `create` fail with [`RuntimeError::ImageUnavailable`];
/// - [`kill`](FakeRuntime::kill): the container exits on its own with a code;
/// - [`set_exec_result`](FakeRuntime::set_exec_result),
///   [`set_exec_hang`](FakeRuntime::set_exec_hang): what `exec` answers (by default 0, or 1
///   for the program `false`);
/// - [`set_usage`](FakeRuntime::set_usage): what `usage` reports;
/// - [`set_pid`](FakeRuntime::set_pid): the main process a running container reports (by
///   default a new made-up one at every start, which no host process has);
/// - [`set_fail_next`](FakeRuntime::set_fail_next): the next call of an operation fails;
///   [`set_unreachable`](FakeRuntime::set_unreachable): every call fails as if the engine
///   were down;
/// - [`calls`](FakeRuntime::calls): every call so far, as `create web.1`, `start <id>`, ….
#[derive(Debug)]
pub struct FakeRuntime {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// By id.
    containers: BTreeMap<String, FakeContainer>,
    /// `None`: every image is present.
    images: Option<BTreeSet<String>>,
    next_id: u64,
    next_host_port: u16,
    next_pid: u32,
    /// Main process ids set by [`FakeRuntime::set_pid`], by container id.
    pids: BTreeMap<String, Option<u32>>,
    /// By container id or name; `None` = hang until the timeout.
    exec_results: BTreeMap<String, Option<i64>>,
    /// For containers without their own entry in `exec_results`.
    exec_result_any: Option<Option<i64>>,
    usage: BTreeMap<String, Resources>,
    fail_next: BTreeMap<FakeOp, String>,
    unreachable: bool,
    calls: Vec<String>,
}

#[derive(Debug)]
struct FakeContainer {
    info: ContainerInfo,
    /// Container port → host port, assigned at create; reported in `info` while running.
    ports: BTreeMap<u16, u16>,
}

impl Default for FakeRuntime {
    fn default() -> FakeRuntime {
        FakeRuntime::new()
    }
}

impl FakeRuntime {
    /// A fake engine on which every image is present.
    pub fn new() -> FakeRuntime {
        FakeRuntime {
            state: Mutex::new(State {
                containers: BTreeMap::new(),
                images: None,
                next_id: 1,
                next_host_port: FIRST_HOST_PORT,
                next_pid: FIRST_PID,
                pids: BTreeMap::new(),
                exec_results: BTreeMap::new(),
                exec_result_any: None,
                usage: BTreeMap::new(),
                fail_next: BTreeMap::new(),
                unreachable: false,
                calls: Vec::new(),
            }),
        }
    }

    /// A fake engine on which only `images` are present (none for an empty slice).
    pub fn with_images(images: &[&str]) -> FakeRuntime {
        let runtime = FakeRuntime::new();
        runtime.state().images = Some(images.iter().map(|image| normalize(image)).collect());
        runtime
    }

    /// Makes `image` present.
    pub fn add_image(&self, image: &str) {
        if let Some(images) = &mut self.state().images {
            images.insert(normalize(image));
        }
    }

    /// Every call so far, in order: `list <node>`, `ensure_image <image>`, `create <name>`,
    /// `start <id>`, `stop <id>`, `remove <id>`, `inspect <id>`, `exec <id> <command…>`,
    /// `usage <id>`, `update_resources <id> cpu=<millicores> memory=<bytes>` (with the id or
    /// name the caller passed). Failed calls are recorded too.
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    /// Forgets the calls recorded so far.
    pub fn clear_calls(&self) {
        self.state().calls.clear();
    }

    /// Every container, whatever its node, ordered by name.
    pub fn containers(&self) -> Vec<ContainerInfo> {
        let mut containers: Vec<ContainerInfo> = self
            .state()
            .containers
            .values()
            .map(|c| c.info.clone())
            .collect();
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        containers
    }

    /// Makes the container (id or name) exit on its own with `code` (137 for SIGKILL, as
    /// the OOM killer does). Returns whether there was such a container.
    pub fn kill(&self, id: &str, code: i64) -> bool {
        let mut state = self.state();
        let Ok(container) = state.container_mut(id) else {
            return false;
        };
        container.info.state = ContainerState::Exited { code };
        container.info.host_ports.clear();
        container.info.pid = None;
        true
    }

    /// From now on `exec` in the container `id` (id or name; `None`: in any container without
    /// its own setting) exits with `code`.
    pub fn set_exec_result(&self, id: Option<&str>, code: i64) {
        self.state().set_exec(id, Some(code));
    }

    /// From now on `exec` in the container `id` (id or name; `None`: in any container without
    /// its own setting) never finishes: the call fails when its timeout elapses.
    pub fn set_exec_hang(&self, id: Option<&str>) {
        self.state().set_exec(id, None);
    }

    /// What `usage` reports for the container (id or name) while it runs. Returns whether
    /// there was such a container.
    pub fn set_usage(&self, id: &str, usage: Resources) -> bool {
        let mut state = self.state();
        let Ok(container) = state.container_mut(id) else {
            return false;
        };
        let id = container.info.id.clone();
        state.usage.insert(id, usage);
        true
    }

    /// The main process id the container (id or name) reports while it runs, from now on
    /// and at later starts (`None`: none, as an engine that does not say). A test that
    /// gives its own process id has the agent read the test's own cgroup. Returns whether
    /// there was such a container.
    pub fn set_pid(&self, id: &str, pid: Option<u32>) -> bool {
        let mut state = self.state();
        let Ok(container) = state.container_mut(id) else {
            return false;
        };
        if container.info.state == ContainerState::Running {
            container.info.pid = pid;
        }
        let id = container.info.id.clone();
        state.pids.insert(id, pid);
        true
    }

    /// Makes the next call of `op` fail with `message`: an [`RuntimeError::Engine`] error, or
    /// for [`FakeOp::EnsureImage`] an [`RuntimeError::ImageUnavailable`] one. The call has no
    /// other effect.
    pub fn set_fail_next(&self, op: FakeOp, message: &str) {
        self.state().fail_next.insert(op, message.to_owned());
    }

    /// While `unreachable`, every call fails with [`RuntimeError::Unreachable`].
    pub fn set_unreachable(&self, unreachable: bool) {
        self.state().unreachable = unreachable;
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock leaves consistent state behind: every
        // mutation is a single step.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the call, then applies an injected failure, if any.
    fn begin(
        &self,
        op: FakeOp,
        call: String,
        target: &str,
    ) -> Result<MutexGuard<'_, State>, RuntimeError> {
        let mut state = self.state();
        state.calls.push(call);
        if state.unreachable {
            return Err(RuntimeError::Unreachable {
                endpoint: "fake".to_owned(),
                reason: format!(
                    "{} {target}: the fake engine is set unreachable",
                    op.operation()
                ),
            });
        }
        if let Some(reason) = state.fail_next.remove(&op) {
            return Err(match op {
                FakeOp::EnsureImage => RuntimeError::ImageUnavailable {
                    image: target.to_owned(),
                    reason,
                },
                _ => RuntimeError::Engine {
                    operation: op.operation(),
                    target: target.to_owned(),
                    reason,
                },
            });
        }
        Ok(state)
    }
}

impl State {
    fn resolve(&self, id_or_name: &str) -> Option<String> {
        if self.containers.contains_key(id_or_name) {
            return Some(id_or_name.to_owned());
        }
        self.containers
            .values()
            .find(|c| c.info.name == id_or_name)
            .map(|c| c.info.id.clone())
    }

    fn container_mut(&mut self, id_or_name: &str) -> Result<&mut FakeContainer, RuntimeError> {
        let id = self
            .resolve(id_or_name)
            .ok_or_else(|| RuntimeError::NotFound(id_or_name.to_owned()))?;
        self.containers
            .get_mut(&id)
            .ok_or_else(|| RuntimeError::NotFound(id_or_name.to_owned()))
    }

    fn has_image(&self, image: &str) -> bool {
        self.images
            .as_ref()
            .is_none_or(|images| images.contains(&normalize(image)))
    }

    fn set_exec(&mut self, id: Option<&str>, result: Option<i64>) {
        match id {
            Some(id) => {
                self.exec_results.insert(id.to_owned(), result);
            }
            None => self.exec_result_any = Some(result),
        }
    }

    /// Hands out the next id: 64 hex digits, like the engine's, distinct in their first 12.
    fn new_id(&mut self) -> String {
        let n = self.next_id;
        self.next_id += 1;
        (0..4u64)
            .map(|part| format!("{:016x}", mix(n.wrapping_mul(4).wrapping_add(part))))
            .collect()
    }
}

/// splitmix64: spreads consecutive counters over all bits.
fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// "name" and "name:latest" are the same image.
fn normalize(image: &str) -> String {
    let last_component = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last_component.contains(':') {
        image.to_owned()
    } else {
        format!("{image}:latest")
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn list(&self, node: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let target = format!("labelled {}={node}", labels::NODE);
        let state = self.begin(FakeOp::List, format!("list {node}"), &target)?;
        let mut containers: Vec<ContainerInfo> = state
            .containers
            .values()
            .filter(|c| c.info.labels.get(labels::NODE).map(String::as_str) == Some(node))
            .map(|c| c.info.clone())
            .collect();
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(containers)
    }

    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        let state = self.begin(FakeOp::EnsureImage, format!("ensure_image {image}"), image)?;
        if state.has_image(image) {
            return Ok(());
        }
        Err(RuntimeError::ImageUnavailable {
            image: image.to_owned(),
            reason: "no registry is reachable from the fake engine".to_owned(),
        })
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let mut state = self.begin(FakeOp::Create, format!("create {}", spec.name), &spec.name)?;
        if let Some(existing) = state.resolve(&spec.name) {
            return Err(RuntimeError::Engine {
                operation: FakeOp::Create.operation(),
                target: spec.name.clone(),
                reason: format!(
                    "the container name {:?} is already in use by container {existing}",
                    spec.name
                ),
            });
        }
        if !state.has_image(&spec.image) {
            return Err(RuntimeError::ImageUnavailable {
                image: spec.image.clone(),
                reason: format!("creating container {}: no such image", spec.name),
            });
        }
        let id = state.new_id();
        let mut ports = BTreeMap::new();
        for binding in &spec.ports {
            let host_port = match binding.host_port {
                Some(port) => port,
                None => {
                    let port = state.next_host_port;
                    state.next_host_port =
                        state.next_host_port.wrapping_add(1).max(FIRST_HOST_PORT);
                    port
                }
            };
            ports.insert(binding.container_port, host_port);
        }
        let info = ContainerInfo {
            id: id.clone(),
            name: spec.name.clone(),
            image: spec.image.clone(),
            labels: spec.labels.clone(),
            state: ContainerState::Created,
            started_at: None,
            host_ports: BTreeMap::new(),
            pid: None,
            limits: Resources {
                cpu_millis: spec.cpu_millis,
                memory_bytes: spec.memory_bytes,
            },
        };
        state
            .containers
            .insert(id.clone(), FakeContainer { info, ports });
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let mut state = self.begin(FakeOp::Start, format!("start {id}"), id)?;
        let id = state
            .resolve(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        let pid = match state.pids.get(&id) {
            Some(pid) => *pid,
            None => Some(state.next_pid),
        };
        let container = state.container_mut(&id)?;
        if container.info.state != ContainerState::Running {
            container.info.state = ContainerState::Running;
            container.info.started_at = Some(SystemTime::now());
            container.info.host_ports = container.ports.clone();
            container.info.pid = pid;
            state.next_pid = state.next_pid.wrapping_add(1).max(FIRST_PID);
        }
        Ok(())
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        let mut state = self.begin(FakeOp::Stop, format!("stop {id}"), id)?;
        let container = state.container_mut(id)?;
        if container.info.state == ContainerState::Running {
            container.info.state = ContainerState::Exited {
                code: STOPPED_EXIT_CODE,
            };
            container.info.host_ports.clear();
            container.info.pid = None;
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut state = self.begin(FakeOp::Remove, format!("remove {id}"), id)?;
        if let Some(id) = state.resolve(id) {
            state.containers.remove(&id);
            state.usage.remove(&id);
            state.pids.remove(&id);
        }
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let mut state = self.begin(FakeOp::Inspect, format!("inspect {id}"), id)?;
        Ok(state.container_mut(id)?.info.clone())
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<i64, RuntimeError> {
        let result = {
            let call = format!("exec {id} {}", command.join(" "));
            let mut state = self.begin(FakeOp::Exec, call, id)?;
            let container = state.container_mut(id)?;
            if container.info.state != ContainerState::Running {
                return Err(RuntimeError::Engine {
                    operation: FakeOp::Exec.operation(),
                    target: id.to_owned(),
                    reason: format!("container {} is not running", container.info.id),
                });
            }
            let (container_id, name) = (container.info.id.clone(), container.info.name.clone());
            let default = match command.first().map(String::as_str) {
                Some("false" | "/bin/false") => Some(1),
                _ => Some(0),
            };
            state
                .exec_results
                .get(&container_id)
                .or_else(|| state.exec_results.get(&name))
                .copied()
                .or(state.exec_result_any)
                .unwrap_or(default)
        };
        match result {
            Some(code) => Ok(code),
            None => {
                tokio::time::sleep(timeout).await;
                Err(RuntimeError::Engine {
                    operation: FakeOp::Exec.operation(),
                    target: id.to_owned(),
                    reason: format!("exec timed out after {timeout:?} (command {command:?})"),
                })
            }
        }
    }

    async fn usage(&self, id: &str) -> Result<Resources, RuntimeError> {
        let mut state = self.begin(FakeOp::Usage, format!("usage {id}"), id)?;
        let container = state.container_mut(id)?;
        if container.info.state != ContainerState::Running {
            return Ok(Resources::default());
        }
        let container_id = container.info.id.clone();
        Ok(state
            .usage
            .get(&container_id)
            .copied()
            .unwrap_or(Resources {
                cpu_millis: 0,
                memory_bytes: DEFAULT_MEMORY_BYTES,
            }))
    }

    async fn update_resources(&self, id: &str, limits: Resources) -> Result<(), RuntimeError> {
        let call = format!(
            "update_resources {id} cpu={} memory={}",
            limits.cpu_millis, limits.memory_bytes
        );
        let mut state = self.begin(FakeOp::UpdateResources, call, id)?;
        let current = &mut state.container_mut(id)?.info.limits;
        // As the engine: 0 is "no change".
        if limits.cpu_millis > 0 {
            current.cpu_millis = limits.cpu_millis;
        }
        if limits.memory_bytes > 0 {
            current.memory_bytes = limits.memory_bytes;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::runtime::PortBinding;
    use crate::runtime::conformance::{self, Fixture};

    const IMAGE: &str = "drover-test-busybox";

    fn fixture() -> (FakeRuntime, Fixture) {
        (
            FakeRuntime::with_images(&[IMAGE]),
            Fixture::new("fake-node", IMAGE),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn conformance_create_start_list() {
        let (runtime, fixture) = fixture();
        conformance::create_start_list(&runtime, &fixture)
            .await
            .expect("conformance");
    }

    #[tokio::test(start_paused = true)]
    async fn conformance_stop_then_start_again() {
        let (runtime, fixture) = fixture();
        conformance::stop_then_start_again(&runtime, &fixture)
            .await
            .expect("conformance");
    }

    #[tokio::test(start_paused = true)]
    async fn conformance_remove() {
        let (runtime, fixture) = fixture();
        conformance::remove(&runtime, &fixture)
            .await
            .expect("conformance");
    }

    #[tokio::test(start_paused = true)]
    async fn conformance_list_filters_by_node() {
        let (runtime, fixture) = fixture();
        conformance::list_filters_by_node(&runtime, &fixture)
            .await
            .expect("conformance");
    }

    #[tokio::test(start_paused = true)]
    async fn conformance_missing_image() {
        let (runtime, fixture) = fixture();
        conformance::missing_image(&runtime, &fixture)
            .await
            .expect("conformance");
    }

    #[tokio::test(start_paused = true)]
    async fn conformance_duplicate_name() {
        let (runtime, fixture) = fixture();
        conformance::duplicate_name(&runtime, &fixture)
            .await
            .expect("conformance");
    }

    #[tokio::test(start_paused = true)]
    async fn conformance_missing_container() {
        let (runtime, fixture) = fixture();
        conformance::missing_container(&runtime, &fixture)
            .await
            .expect("conformance");
    }

    #[tokio::test(start_paused = true)]
    async fn conformance_exec_exit_codes() {
        let (runtime, fixture) = fixture();
        conformance::exec_exit_codes(&runtime, &fixture)
            .await
            .expect("conformance");
    }

    #[tokio::test(start_paused = true)]
    async fn conformance_usage() {
        let (runtime, fixture) = fixture();
        conformance::usage(&runtime, &fixture)
            .await
            .expect("conformance");
    }

    #[tokio::test(start_paused = true)]
    async fn conformance_fixed_host_port() {
        let (runtime, fixture) = fixture();
        conformance::fixed_host_port(&runtime, &fixture)
            .await
            .expect("conformance");
    }

    #[tokio::test(start_paused = true)]
    async fn conformance_update_resources_in_place() {
        let (runtime, fixture) = fixture();
        conformance::update_resources_in_place(&runtime, &fixture)
            .await
            .expect("conformance");
    }

    #[tokio::test(start_paused = true)]
    async fn conformance_run_all() {
        let (runtime, fixture) = fixture();
        conformance::run_all(&runtime, &fixture)
            .await
            .expect("conformance");
    }

    fn spec(name: &str, ports: &[(u16, Option<u16>)]) -> ContainerSpec {
        ContainerSpec {
            name: name.to_owned(),
            image: IMAGE.to_owned(),
            command: vec![],
            args: vec![],
            env: BTreeMap::new(),
            labels: BTreeMap::from([(labels::NODE.to_owned(), "n1".to_owned())]),
            cpu_millis: 0,
            memory_bytes: 0,
            ports: ports
                .iter()
                .map(|&(container_port, host_port)| PortBinding {
                    container_port,
                    host_port,
                    host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                })
                .collect(),
            dns: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn records_calls_and_assigns_ports_from_30000() {
        let runtime = FakeRuntime::new();
        let a = runtime
            .create(&spec("web.1", &[(8080, None), (9090, Some(19090))]))
            .await
            .expect("create");
        let b = runtime
            .create(&spec("web.2", &[(8080, None)]))
            .await
            .expect("create");
        assert_ne!(a[..12], b[..12]);
        runtime.start(&a).await.expect("start");
        runtime.start("web.2").await.expect("start by name");
        runtime
            .stop(&a, Duration::from_secs(1))
            .await
            .expect("stop");
        runtime.remove(&a).await.expect("remove");
        assert_eq!(
            runtime.calls(),
            vec![
                "create web.1".to_owned(),
                "create web.2".to_owned(),
                format!("start {a}"),
                "start web.2".to_owned(),
                format!("stop {a}"),
                format!("remove {a}"),
            ]
        );
        let web2 = runtime.inspect(&b).await.expect("inspect");
        assert_eq!(web2.host_ports, BTreeMap::from([(8080, 30001)]));
        runtime.clear_calls();
        assert!(runtime.calls().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn kill_exits_with_the_code() {
        let runtime = FakeRuntime::new();
        let id = runtime
            .create(&spec("web.1", &[(8080, None)]))
            .await
            .expect("create");
        runtime.start(&id).await.expect("start");
        assert!(runtime.kill(&id, 137));
        let info = runtime.inspect(&id).await.expect("inspect");
        assert_eq!(info.state, ContainerState::Exited { code: 137 });
        assert!(info.host_ports.is_empty());
        assert!(!runtime.kill("nope", 1));
    }

    #[tokio::test(start_paused = true)]
    async fn fail_next_fails_once() {
        let runtime = FakeRuntime::new();
        let id = runtime.create(&spec("web.1", &[])).await.expect("create");
        runtime.set_fail_next(FakeOp::Start, "boom");
        let err = runtime.start(&id).await.expect_err("injected failure");
        assert!(
            matches!(&err, RuntimeError::Engine { operation: "start container", reason, .. } if reason == "boom"),
            "{err}"
        );
        assert_eq!(
            runtime.inspect(&id).await.expect("inspect").state,
            ContainerState::Created
        );
        runtime.start(&id).await.expect("second start");

        runtime.set_fail_next(FakeOp::EnsureImage, "registry down");
        let err = runtime
            .ensure_image("web:1")
            .await
            .expect_err("injected failure");
        assert!(
            matches!(err, RuntimeError::ImageUnavailable { ref image, .. } if image == "web:1"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_fails_every_call() {
        let runtime = FakeRuntime::new();
        runtime.set_unreachable(true);
        assert!(matches!(
            runtime.list("n1").await,
            Err(RuntimeError::Unreachable { .. })
        ));
        runtime.set_unreachable(false);
        assert!(runtime.list("n1").await.expect("list").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn exec_results_and_hang() {
        let runtime = FakeRuntime::new();
        let a = runtime.create(&spec("web.1", &[])).await.expect("create");
        let b = runtime.create(&spec("web.2", &[])).await.expect("create");
        runtime.start(&a).await.expect("start");
        runtime.start(&b).await.expect("start");
        let probe = vec!["check".to_owned()];
        let timeout = Duration::from_secs(5);
        assert_eq!(runtime.exec(&a, &probe, timeout).await.expect("exec"), 0);
        runtime.set_exec_result(None, 3);
        runtime.set_exec_result(Some("web.1"), 7);
        assert_eq!(runtime.exec(&a, &probe, timeout).await.expect("exec"), 7);
        assert_eq!(runtime.exec(&b, &probe, timeout).await.expect("exec"), 3);

        runtime.set_exec_hang(Some(&b));
        let started = tokio::time::Instant::now();
        let err = runtime.exec(&b, &probe, timeout).await.expect_err("hangs");
        assert_eq!(started.elapsed(), timeout);
        assert!(err.to_string().contains("timed out after 5s"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_container_has_a_main_process_of_its_own_or_the_one_set() {
        let runtime = FakeRuntime::new();
        let a = runtime.create(&spec("web.1", &[])).await.expect("create");
        let b = runtime.create(&spec("web.2", &[])).await.expect("create");
        let pid = |id: &str| {
            let runtime = &runtime;
            let id = id.to_owned();
            async move { runtime.inspect(&id).await.expect("inspect").pid }
        };
        assert_eq!(pid(&a).await, None, "created, not started");
        runtime.start(&a).await.expect("start");
        runtime.start(&b).await.expect("start");
        let (first_a, first_b) = (pid(&a).await, pid(&b).await);
        assert!(first_a.is_some_and(|p| p >= FIRST_PID), "{first_a:?}");
        assert_ne!(first_a, first_b);
        // A restart is a new process.
        runtime.stop(&a, Duration::ZERO).await.expect("stop");
        assert_eq!(pid(&a).await, None);
        runtime.start(&a).await.expect("start again");
        assert_ne!(pid(&a).await, first_a);
        // Set: at once while it runs, and at later starts.
        assert!(runtime.set_pid("web.1", Some(4242)));
        assert_eq!(pid(&a).await, Some(4242));
        assert!(runtime.kill(&a, 137));
        assert_eq!(pid(&a).await, None);
        runtime.start(&a).await.expect("start after kill");
        assert_eq!(pid(&a).await, Some(4242));
        assert!(runtime.set_pid(&b, None));
        assert_eq!(pid(&b).await, None);
        assert!(!runtime.set_pid("web.3", Some(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn images_by_name_or_latest_tag() {
        let runtime = FakeRuntime::with_images(&["web", "api:2"]);
        runtime
            .ensure_image("web:latest")
            .await
            .expect("web:latest");
        runtime.ensure_image("api:2").await.expect("api:2");
        assert!(runtime.ensure_image("api").await.is_err());
        runtime.add_image("api");
        runtime.ensure_image("api:latest").await.expect("added");
    }
}
