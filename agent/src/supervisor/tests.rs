//! The reconcile loop against the in-memory runtime, on tokio's paused clock: the same cases
//! the Docker tests cover, fast.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use drover_proto::model::{
    AllocState, AllocStatus, AllocUsage, Allocation, DesiredState, HealthCheck, PortSpec,
    ProbeAction, Protocol, Resources, WorkloadSpec,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{AllocReport, DesiredAlloc, DesiredUpdate, LinkState, Supervisor, SupervisorChannels};
use crate::health::{CheckKind, HealthEvent, HealthStatus, ProbeTarget};
use crate::runtime::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ContainerState, FakeOp, FakeRuntime,
    RuntimeError, labels,
};
use crate::usage::{CgroupMounts, UsageReader, UsageReport};

/// The fake engine plus what Docker does that the fake does not: calls that take time
/// (`stats` takes about a second, `create` and `stop` a moment) and a new host port for
/// container port 8080 at every start (a port published without a fixed host port).
#[derive(Debug)]
struct Engine {
    fake: Arc<FakeRuntime>,
    delays: Mutex<BTreeMap<FakeOp, Duration>>,
    /// Host ports handed out for 8080, one per start; when empty, the fake's own port.
    start_ports: Mutex<VecDeque<u16>>,
    /// Host port of 8080 by container id, as handed out at its last start.
    ports: Mutex<BTreeMap<String, u16>>,
    /// Whether `update_resources` fails as on an engine without the endpoint (Podman's
    /// Docker-compatible API before 5.1).
    updates_unsupported: AtomicBool,
    /// Calls of `update_resources`, whatever their outcome.
    update_calls: AtomicUsize,
    /// Limits `list` reports for these containers whatever they are, as the Docker runtime's
    /// list may from an earlier inspection.
    listed_limits: Mutex<BTreeMap<String, Resources>>,
}

impl Engine {
    fn new(fake: FakeRuntime) -> Arc<Engine> {
        Arc::new(Engine {
            fake: Arc::new(fake),
            delays: Mutex::new(BTreeMap::new()),
            start_ports: Mutex::new(VecDeque::new()),
            ports: Mutex::new(BTreeMap::new()),
            updates_unsupported: AtomicBool::new(false),
            update_calls: AtomicUsize::new(0),
            listed_limits: Mutex::new(BTreeMap::new()),
        })
    }

    /// Every call of `op` takes `delay` (on tokio's clock) before it acts.
    fn set_delay(&self, op: FakeOp, delay: Duration) {
        lock(&self.delays).insert(op, delay);
    }

    /// The next starts publish 8080 on these host ports, in turn.
    fn hand_out_ports(&self, ports: &[u16]) {
        lock(&self.start_ports).extend(ports);
    }

    async fn delay(&self, op: FakeOp) {
        let delay = lock(&self.delays).get(&op).copied();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
    }

    fn rewrite(&self, mut info: ContainerInfo) -> ContainerInfo {
        if info.state == ContainerState::Running {
            if let Some(port) = lock(&self.ports).get(&info.id) {
                info.host_ports.insert(8080, *port);
            }
        }
        info
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait::async_trait]
impl ContainerRuntime for Engine {
    async fn list(&self, node: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        self.delay(FakeOp::List).await;
        let listed = self.fake.list(node).await?;
        let stale = lock(&self.listed_limits).clone();
        Ok(listed
            .into_iter()
            .map(|c| self.rewrite(c))
            .map(|mut c| {
                if let Some(limits) = stale.get(&c.id) {
                    c.limits = *limits;
                }
                c
            })
            .collect())
    }

    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        self.delay(FakeOp::EnsureImage).await;
        self.fake.ensure_image(image).await
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.delay(FakeOp::Create).await;
        self.fake.create(spec).await
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.delay(FakeOp::Start).await;
        let was_running = self
            .fake
            .inspect(id)
            .await
            .is_ok_and(|c| c.state == ContainerState::Running);
        self.fake.start(id).await?;
        if !was_running {
            let info = self.fake.inspect(id).await?;
            if let Some(port) = lock(&self.start_ports).pop_front() {
                lock(&self.ports).insert(info.id, port);
            }
        }
        Ok(())
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.delay(FakeOp::Stop).await;
        self.fake.stop(id, grace).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.delay(FakeOp::Remove).await;
        self.fake.remove(id).await
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        self.delay(FakeOp::Inspect).await;
        let info = self.fake.inspect(id).await?;
        Ok(self.rewrite(info))
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<i64, RuntimeError> {
        self.delay(FakeOp::Exec).await;
        self.fake.exec(id, command, timeout).await
    }

    async fn usage(&self, id: &str) -> Result<Resources, RuntimeError> {
        self.delay(FakeOp::Usage).await;
        self.fake.usage(id).await
    }

    async fn update_resources(&self, id: &str, limits: Resources) -> Result<(), RuntimeError> {
        self.delay(FakeOp::UpdateResources).await;
        self.update_calls.fetch_add(1, Ordering::Relaxed);
        if self.updates_unsupported.load(Ordering::Relaxed) {
            // As Podman 4's Docker-compatible API: a 404 for a container that exists.
            return match self.fake.inspect(id).await {
                Ok(_) => Err(RuntimeError::Unsupported {
                    operation: "update limits of container",
                    target: id.to_owned(),
                    reason: "no container update endpoint".to_owned(),
                }),
                Err(e) => Err(e),
            };
        }
        self.fake.update_resources(id, limits).await
    }
}

struct Harness {
    engine: Arc<Engine>,
    runtime: Arc<FakeRuntime>,
    supervisor: Supervisor,
    desired: watch::Sender<Option<DesiredUpdate>>,
    link: watch::Sender<LinkState>,
    statuses: watch::Receiver<BTreeMap<String, AllocReport>>,
    cancel: CancellationToken,
    version: u64,
    /// Identity of the coordinator store the desired sets come from.
    store: String,
}

fn spec(image: &str) -> WorkloadSpec {
    let mut spec = WorkloadSpec::new("web", image);
    spec.ports.push(PortSpec {
        name: None,
        container_port: 8080,
        host_port: None,
        protocol: Protocol::Tcp,
    });
    spec.restart.max_attempts = 3;
    spec
}

/// Allocation `id` of `spec`, reserving what the spec asks, as the coordinator places it.
fn alloc(id: &str, desired: DesiredState, spec: &WorkloadSpec) -> Allocation {
    Allocation {
        id: id.into(),
        service: "web".into(),
        revision: 1,
        node: "n1".into(),
        resources: spec.resources,
        desired,
        created_unix_ms: 0,
    }
}

impl Harness {
    fn new(runtime: FakeRuntime) -> Harness {
        Harness::new_sharing(Engine::new(runtime))
    }

    /// A supervisor over an engine another harness may also use (an agent restart).
    fn new_sharing(engine: Arc<Engine>) -> Harness {
        let (desired, desired_rx) = watch::channel(None);
        let (link, link_rx) = watch::channel(LinkState::default());
        let (status_tx, statuses) = watch::channel(BTreeMap::new());
        let dyn_runtime: Arc<dyn ContainerRuntime> = engine.clone();
        let cancel = CancellationToken::new();
        let mut supervisor = Supervisor::new(
            "n1".into(),
            IpAddr::from([127, 0, 0, 1]),
            dyn_runtime,
            SupervisorChannels {
                desired: desired_rx,
                link: link_rx,
                statuses: status_tx,
            },
            Duration::from_secs(1),
            cancel.clone(),
        );
        // As Docker's stats endpoint, which the engine stands for here; the cgroup path has
        // tests of its own.
        supervisor.set_usage_reader(UsageReader::from_engine());
        Harness {
            runtime: engine.fake.clone(),
            engine,
            supervisor,
            desired,
            link,
            statuses,
            cancel,
            version: 0,
            store: "s1".into(),
        }
    }

    fn connect(&mut self, session: u64) {
        self.link.send_replace(LinkState {
            session,
            connected: true,
        });
    }

    fn want(&mut self, session: u64, allocs: &[(&str, DesiredState, WorkloadSpec)]) {
        let allocs: Vec<(Allocation, WorkloadSpec)> = allocs
            .iter()
            .map(|(id, d, s)| (alloc(id, *d, s), s.clone()))
            .collect();
        self.want_allocations(session, allocs);
    }

    /// Sends a desired set of these allocations, as they are (their resources may differ
    /// from their specs', as after a vertical scaling).
    fn want_allocations(&mut self, session: u64, allocs: Vec<(Allocation, WorkloadSpec)>) {
        self.version += 1;
        let allocations = allocs
            .into_iter()
            .map(|(allocation, spec)| (allocation.id.clone(), DesiredAlloc { allocation, spec }))
            .collect();
        self.desired.send_replace(Some(DesiredUpdate {
            version: self.version,
            session,
            allocations,
            store_id: self.store.clone(),
            cluster_dns: None,
        }));
    }

    fn status(&self, id: &str) -> AllocStatus {
        self.statuses
            .borrow()
            .get(id)
            .map(|r| r.status.clone())
            .unwrap_or_else(|| panic!("no status for {id}"))
    }

    /// Runs passes while advancing the paused clock by `step`, `n` times.
    async fn passes(&mut self, n: usize, step: Duration) {
        for _ in 0..n {
            self.supervisor.pass().await;
            tokio::time::advance(step).await;
            // Let spawned stop/remove tasks and health checkers run.
            tokio::task::yield_now().await;
            self.absorb().await;
        }
        self.supervisor.pass().await;
    }

    /// Hands the supervisor what its background tasks reported, as its run loop does.
    async fn absorb(&mut self) {
        while let Ok(event) = self.supervisor.health_rx.try_recv() {
            self.supervisor.on_health(event).await;
        }
        while let Ok(samples) = self.supervisor.usage_rx.try_recv() {
            self.supervisor.on_usage(samples);
        }
    }

    /// Passes one second apart until `id` is in `state`, at most `limit` of them; the
    /// last status.
    async fn pass_until(&mut self, id: &str, state: AllocState, limit: usize) -> AllocStatus {
        for _ in 0..limit {
            self.passes(1, Duration::from_secs(1)).await;
            let status = self.status(id);
            if status.state == state {
                return status;
            }
        }
        self.status(id)
    }

    /// Runs the supervisor's own loop in a task; the harness keeps its channels.
    fn spawn(self) -> Running {
        let Harness {
            engine,
            supervisor,
            desired,
            link,
            statuses,
            cancel,
            version,
            ..
        } = self;
        let task = tokio::spawn(supervisor.run());
        Running {
            engine,
            desired,
            _link: link,
            statuses,
            cancel,
            task,
            version,
        }
    }
}

/// A supervisor running its own loop ([`Supervisor::run`]).
struct Running {
    engine: Arc<Engine>,
    desired: watch::Sender<Option<DesiredUpdate>>,
    _link: watch::Sender<LinkState>,
    statuses: watch::Receiver<BTreeMap<String, AllocReport>>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    version: u64,
}

impl Running {
    fn want(&mut self, session: u64, allocs: &[(String, DesiredState, WorkloadSpec)]) {
        self.version += 1;
        let allocations = allocs
            .iter()
            .map(|(id, d, s)| {
                let desired = DesiredAlloc {
                    allocation: alloc(id, *d, s),
                    spec: s.clone(),
                };
                (id.clone(), desired)
            })
            .collect();
        self.desired.send_replace(Some(DesiredUpdate {
            version: self.version,
            session,
            allocations,
            store_id: "s1".into(),
            cluster_dns: None,
        }));
    }

    /// Waits (on the paused clock, in steps of 100 ms) until `done` holds, at most `limit`;
    /// how long it took.
    async fn wait_for(&self, limit: Duration, mut done: impl FnMut(&Running) -> bool) -> Duration {
        let started = Instant::now();
        while !done(self) {
            assert!(started.elapsed() < limit, "not done after {limit:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        started.elapsed()
    }

    fn count(&self, state: AllocState) -> usize {
        self.statuses
            .borrow()
            .values()
            .filter(|r| r.status.state == state)
            .count()
    }

    /// Containers of `ids` still on the engine.
    fn containers_of(&self, ids: &[String]) -> usize {
        self.engine
            .fake
            .containers()
            .iter()
            .filter(|c| ids.contains(&c.labels[labels::ALLOC]))
            .count()
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.expect("supervisor panicked");
    }
}

#[tokio::test(start_paused = true)]
async fn creates_starts_and_reports_healthy() {
    let mut h = Harness::new(FakeRuntime::with_images(&["web:1"]));
    h.connect(1);
    h.want(1, &[("web.1", DesiredState::Run, spec("web:1"))]);
    h.passes(1, Duration::from_millis(10)).await;
    let status = h.status("web.1");
    assert_eq!(status.state, AllocState::Healthy, "{status:?}");
    assert!(!status.container_id.is_empty());
    assert!(status.host_ports.contains_key(&8080), "{status:?}");
    let containers = h.runtime.list("n1").await.expect("list");
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].labels[labels::ALLOC], "web.1");
    assert_eq!(containers[0].labels[labels::SERVICE], "web");
    assert_eq!(containers[0].labels[labels::REVISION], "1");
}

#[tokio::test(start_paused = true)]
async fn an_allocation_id_of_a_new_coordinator_store_starts_afresh() {
    let mut h = Harness::new(FakeRuntime::with_images(&["web:1"]));
    // The old container is still draining when the new set names its id.
    h.supervisor.set_drain(Duration::from_secs(3));
    h.connect(1);
    h.want(1, &[("web.1", DesiredState::Run, spec("web:1"))]);
    h.passes(1, Duration::from_millis(10)).await;
    let old = h.status("web.1").container_id;
    assert_eq!(h.status("web.1").state, AllocState::Healthy);

    // The coordinator was reset: its first set is empty, the next names web.1 again — a
    // new allocation that happens to have the old one's id.
    h.store = "s2".into();
    h.connect(2);
    h.want(2, &[]);
    h.passes(1, Duration::from_millis(10)).await;
    h.want(2, &[("web.1", DesiredState::Run, spec("web:1"))]);
    let status = h.pass_until("web.1", AllocState::Healthy, 20).await;
    assert_eq!(status.state, AllocState::Healthy, "{status:?}");
    assert_ne!(status.container_id, old, "a new container");
    let containers = h.runtime.list("n1").await.expect("list");
    assert_eq!(containers.len(), 1, "the old container is gone");
}

#[tokio::test(start_paused = true)]
async fn adopts_running_containers_without_restarting_them() {
    let runtime = FakeRuntime::with_images(&["web:1"]);
    let mut first = Harness::new(runtime);
    first.connect(1);
    first.want(1, &[("web.1", DesiredState::Run, spec("web:1"))]);
    first.passes(1, Duration::from_millis(10)).await;
    let container = first.status("web.1").container_id;
    let calls_before = first.runtime.calls().len();

    // A new supervisor over the same engine, as after an agent restart: before any desired
    // set arrives it already lists the container, and it never touches it.
    let mut second = Harness::new_sharing(first.engine.clone());
    second.passes(2, Duration::from_secs(1)).await;
    assert_eq!(second.status("web.1").container_id, container);
    assert_eq!(second.status("web.1").state, AllocState::Running);
    second.connect(7);
    second.want(7, &[("web.1", DesiredState::Run, spec("web:1"))]);
    second.passes(2, Duration::from_secs(1)).await;
    let status = second.status("web.1");
    assert_eq!(status.container_id, container);
    assert_eq!(status.state, AllocState::Healthy);
    assert_eq!(status.restarts, 0);
    let new_calls: Vec<String> = second.runtime.calls()[calls_before..]
        .iter()
        .filter(|c| !c.starts_with("list") && !c.starts_with("usage"))
        .cloned()
        .collect();
    assert!(new_calls.is_empty(), "adoption must not act: {new_calls:?}");
}

#[tokio::test(start_paused = true)]
async fn restarts_with_doubling_backoff_then_fails() {
    let mut h = Harness::new(FakeRuntime::with_images(&["web:1"]));
    h.connect(1);
    h.want(1, &[("web.1", DesiredState::Run, spec("web:1"))]);
    h.passes(1, Duration::from_millis(10)).await;
    let id = h.status("web.1").container_id;

    h.runtime.kill(&id, 137);
    h.supervisor.pass().await;
    let status = h.status("web.1");
    assert_eq!(status.state, AllocState::Starting);
    assert!(status.message.contains("back-off 1s"), "{}", status.message);
    // Not before the backoff ends.
    tokio::time::advance(Duration::from_millis(900)).await;
    h.supervisor.pass().await;
    assert_eq!(h.status("web.1").restarts, 0);
    tokio::time::advance(Duration::from_millis(200)).await;
    h.supervisor.pass().await;
    let status = h.status("web.1");
    assert_eq!((status.state, status.restarts), (AllocState::Healthy, 1));
    assert_eq!(status.container_id, id, "a restart reuses the container");

    // Second crash: 2 s backoff; third: 4 s; then out of attempts (max 3).
    h.runtime.kill(&id, 1);
    h.supervisor.pass().await;
    assert!(
        h.status("web.1").message.contains("back-off 2s"),
        "{}",
        h.status("web.1").message
    );
    h.passes(3, Duration::from_secs(1)).await;
    assert_eq!(h.status("web.1").restarts, 2);
    h.runtime.kill(&id, 1);
    h.supervisor.pass().await;
    assert!(
        h.status("web.1").message.contains("back-off 4s"),
        "{}",
        h.status("web.1").message
    );
    h.passes(5, Duration::from_secs(1)).await;
    assert_eq!(h.status("web.1").restarts, 3);
    h.runtime.kill(&id, 1);
    h.passes(2, Duration::from_secs(1)).await;
    let status = h.status("web.1");
    assert_eq!(status.state, AllocState::Failed, "{status:?}");
    assert!(
        status.message.contains("gave up after 3 restarts"),
        "{}",
        status.message
    );
}

#[tokio::test(start_paused = true)]
async fn missing_image_fails_with_its_name() {
    let mut h = Harness::new(FakeRuntime::with_images(&[]));
    h.connect(1);
    h.want(1, &[("web.1", DesiredState::Run, spec("nope:1"))]);
    h.passes(1, Duration::from_millis(10)).await;
    let status = h.status("web.1");
    assert_eq!(status.state, AllocState::Failed);
    assert!(status.message.contains("nope:1"), "{}", status.message);
}

#[tokio::test(start_paused = true)]
async fn undesired_containers_are_removed_only_on_a_confirmed_set() {
    let mut h = Harness::new(FakeRuntime::with_images(&["web:1"]));
    h.connect(1);
    h.want(1, &[("web.1", DesiredState::Run, spec("web:1"))]);
    h.passes(1, Duration::from_millis(10)).await;

    // Coordinator unreachable: the set from session 1 no longer confirms anything.
    h.link.send_replace(LinkState {
        session: 1,
        connected: false,
    });
    h.want(1, &[]);
    h.passes(3, Duration::from_secs(1)).await;
    assert_eq!(
        h.runtime.list("n1").await.expect("list").len(),
        1,
        "kept while cut off"
    );

    // Reconnected, and the new session's set leaves it out: stopped and removed.
    h.connect(2);
    h.want(2, &[]);
    h.passes(3, Duration::from_secs(1)).await;
    assert!(h.runtime.list("n1").await.expect("list").is_empty());
    assert!(h.statuses.borrow().is_empty(), "forgotten once removed");
}

#[tokio::test(start_paused = true)]
async fn desired_stop_stops_and_removes() {
    let mut h = Harness::new(FakeRuntime::with_images(&["web:1"]));
    h.connect(1);
    h.want(1, &[("web.1", DesiredState::Run, spec("web:1"))]);
    h.passes(1, Duration::from_millis(10)).await;
    h.want(1, &[("web.1", DesiredState::Stop, spec("web:1"))]);
    h.passes(3, Duration::from_secs(1)).await;
    assert_eq!(h.status("web.1").state, AllocState::Stopped);
    let remaining = h.runtime.list("n1").await.expect("list");
    assert!(
        remaining.iter().all(|c| c.state != ContainerState::Running),
        "{remaining:?}"
    );
    assert!(remaining.is_empty(), "removed: {remaining:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stopping_replica_drains_before_its_container_stops() {
    let mut h = Harness::new(FakeRuntime::with_images(&["web:1"]));
    h.supervisor.set_drain(Duration::from_secs(5));
    h.connect(1);
    h.want(1, &[("web.1", DesiredState::Run, spec("web:1"))]);
    h.passes(1, Duration::from_millis(10)).await;
    h.want(1, &[("web.1", DesiredState::Stop, spec("web:1"))]);
    h.supervisor.pass().await;
    // Reported stopped at once (no new connections), still running for open ones.
    let status = h.status("web.1");
    assert_eq!(status.state, AllocState::Stopped);
    assert!(
        status.message.contains("draining for 5s"),
        "{}",
        status.message
    );
    h.passes(3, Duration::from_secs(1)).await;
    let running = h.runtime.list("n1").await.expect("list");
    assert_eq!(running.len(), 1, "still serving during the drain");
    assert_eq!(running[0].state, ContainerState::Running);
    h.passes(4, Duration::from_secs(1)).await;
    assert!(
        h.runtime.list("n1").await.expect("list").is_empty(),
        "stopped after the drain"
    );
}

#[tokio::test(start_paused = true)]
async fn stop_after_disconnect_stops_replicas_when_cut_off_too_long() {
    let mut h = Harness::new(FakeRuntime::with_images(&["web:1"]));
    let mut singleton = spec("web:1");
    singleton.stop_after_disconnect = Some(Duration::from_secs(5));
    let plain = spec("web:1");
    h.connect(1);
    h.want(
        1,
        &[
            ("web.1", DesiredState::Run, singleton),
            ("web.2", DesiredState::Run, plain),
        ],
    );
    h.passes(1, Duration::from_millis(10)).await;
    h.link.send_replace(LinkState {
        session: 1,
        connected: false,
    });
    h.passes(3, Duration::from_secs(1)).await;
    assert_eq!(
        h.status("web.1").state,
        AllocState::Healthy,
        "not before the limit"
    );
    h.passes(4, Duration::from_secs(1)).await;
    assert_eq!(h.status("web.1").state, AllocState::Stopped);
    assert_eq!(
        h.status("web.2").state,
        AllocState::Healthy,
        "other services keep running"
    );
    let running: Vec<String> = h
        .runtime
        .list("n1")
        .await
        .expect("list")
        .into_iter()
        .filter(|c| c.state == ContainerState::Running)
        .map(|c| c.labels[labels::ALLOC].clone())
        .collect();
    assert_eq!(running, vec!["web.2"]);
}

/// `web:1` with a readiness check that connects to container port 8080.
fn checked_spec() -> WorkloadSpec {
    let mut spec = spec("web:1");
    spec.health = Some(HealthCheck {
        interval: Duration::from_secs(1),
        // Far beyond the steps of the paused clock, so that a loopback connect in flight
        // always finishes before its timeout.
        timeout: Duration::from_secs(60),
        success_threshold: 1,
        failure_threshold: 1,
        ..HealthCheck::with_defaults(ProbeAction::Tcp { port: 8080 })
    });
    spec
}

/// A listener on a free loopback port, where the checks' connects succeed (through its
/// backlog), and its port.
async fn listening() -> (TcpListener, u16) {
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind a loopback port");
    let port = listener.local_addr().expect("local address").port();
    (listener, port)
}

#[tokio::test(start_paused = true)]
async fn a_restart_on_a_new_host_port_is_checked_on_that_port() {
    let (first_listener, first_port) = listening().await;
    let (_second_listener, second_port) = listening().await;
    let mut h = Harness::new(FakeRuntime::with_images(&["web:1"]));
    h.engine.hand_out_ports(&[first_port, second_port]);
    h.connect(1);
    h.want(1, &[("web.1", DesiredState::Run, checked_spec())]);
    let status = h.pass_until("web.1", AllocState::Healthy, 10).await;
    assert_eq!(status.state, AllocState::Healthy, "{status:?}");
    assert_eq!(status.host_ports[&8080], first_port);

    // The container dies; the agent starts it again and the engine publishes 8080 on
    // another host port. Nothing listens on the old one any more.
    drop(first_listener);
    h.runtime.kill(&status.container_id, 137);
    let status = h.pass_until("web.1", AllocState::Healthy, 20).await;
    assert_eq!(status.state, AllocState::Healthy, "{status:?}");
    assert_eq!(
        (status.restarts, status.host_ports[&8080]),
        (1, second_port)
    );
}

#[tokio::test(start_paused = true)]
async fn an_adopted_container_restarted_on_a_new_host_port_turns_healthy() {
    let (first_listener, first_port) = listening().await;
    let (_second_listener, second_port) = listening().await;
    let mut first = Harness::new(FakeRuntime::with_images(&["web:1"]));
    first.engine.hand_out_ports(&[first_port, second_port]);
    first.connect(1);
    first.want(1, &[("web.1", DesiredState::Run, checked_spec())]);
    let status = first.pass_until("web.1", AllocState::Healthy, 10).await;
    assert_eq!(status.state, AllocState::Healthy, "{status:?}");

    // The agent and its container die together (SIGKILL, `docker kill`); a new agent adopts
    // the exited container and starts it again, on another host port.
    let engine = first.engine.clone();
    drop(first);
    drop(first_listener);
    engine.fake.kill(&status.container_id, 137);
    let mut second = Harness::new_sharing(engine);
    second.passes(1, Duration::from_secs(1)).await;
    second.connect(2);
    second.want(2, &[("web.1", DesiredState::Run, checked_spec())]);
    let restarted = second.pass_until("web.1", AllocState::Healthy, 20).await;
    assert_eq!(restarted.state, AllocState::Healthy, "{restarted:?}");
    assert_eq!(restarted.container_id, status.container_id);
    assert_eq!(
        (restarted.restarts, restarted.host_ports[&8080]),
        (1, second_port)
    );
}

#[tokio::test(start_paused = true)]
async fn a_container_restarted_behind_the_agents_back_gets_a_new_checker() {
    let (first_listener, first_port) = listening().await;
    let (_second_listener, second_port) = listening().await;
    let mut h = Harness::new(FakeRuntime::with_images(&["web:1"]));
    h.engine.hand_out_ports(&[first_port, second_port]);
    h.connect(1);
    h.want(1, &[("web.1", DesiredState::Run, checked_spec())]);
    let status = h.pass_until("web.1", AllocState::Healthy, 10).await;
    assert_eq!(status.state, AllocState::Healthy, "{status:?}");

    // `docker restart` between two passes: same container, new host port.
    drop(first_listener);
    h.runtime.kill(&status.container_id, 0);
    h.engine
        .start(&status.container_id)
        .await
        .expect("start again");
    h.passes(5, Duration::from_secs(1)).await;
    let status = h.status("web.1");
    assert_eq!(status.state, AllocState::Healthy, "{status:?}");
    assert_eq!(
        (status.restarts, status.host_ports[&8080]),
        (0, second_port)
    );
}

#[tokio::test(start_paused = true)]
async fn late_events_of_replaced_checkers_are_ignored() {
    let (_listener, port) = listening().await;
    let mut h = Harness::new(FakeRuntime::with_images(&["web:1"]));
    h.engine.hand_out_ports(&[port]);
    let mut spec = checked_spec();
    spec.liveness = spec.health.clone();
    h.connect(1);
    h.want(1, &[("web.1", DesiredState::Run, spec)]);
    let status = h.pass_until("web.1", AllocState::Healthy, 10).await;
    assert_eq!(status.state, AllocState::Healthy, "{status:?}");

    // Failures the checkers of what the allocation ran before (another container, or this
    // one on its old host port) sent just before they were replaced.
    let on_old_port = ProbeTarget {
        container_id: status.container_id.clone(),
        host: IpAddr::from([127, 0, 0, 1]),
        host_ports: BTreeMap::from([(8080, port.wrapping_add(1))]),
    };
    let in_old_container = ProbeTarget {
        container_id: "0".repeat(64),
        ..on_old_port.clone()
    };
    for target in [on_old_port, in_old_container] {
        for kind in [CheckKind::Readiness, CheckKind::Liveness] {
            let event = HealthEvent {
                alloc_id: "web.1".to_owned(),
                kind,
                status: HealthStatus::Unhealthy,
                detail: "connect refused".to_owned(),
                target: target.clone(),
            };
            h.supervisor.on_health(event).await;
        }
    }
    h.passes(1, Duration::from_millis(10)).await;
    let after = h.status("web.1");
    assert_eq!(after.state, AllocState::Healthy, "{after:?}");
    let stops: Vec<String> = h
        .runtime
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("stop"))
        .collect();
    assert!(stops.is_empty(), "{stops:?}");
}

/// Allocation ids `<prefix>01`, `<prefix>02`, … (sorted as numbered).
fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i:02}")).collect()
}

fn all(ids: &[String], desired: DesiredState) -> Vec<(String, DesiredState, WorkloadSpec)> {
    ids.iter()
        .map(|id| (id.clone(), desired, spec("web:1")))
        .collect()
}

const DRAIN: Duration = Duration::from_secs(3);

#[tokio::test(start_paused = true)]
async fn twenty_allocations_left_out_of_the_desired_set_stop_together() {
    let engine = Engine::new(FakeRuntime::with_images(&["web:1"]));
    // As on Docker: a usage sample takes about a second, and so does a stop.
    engine.set_delay(FakeOp::Usage, Duration::from_secs(1));
    engine.set_delay(FakeOp::Stop, Duration::from_secs(1));
    let mut h = Harness::new_sharing(engine);
    h.supervisor.set_drain(DRAIN);
    h.connect(1);
    let mut running = h.spawn();
    let ids = numbered("web.", 20);
    running.want(1, &all(&ids, DesiredState::Run));
    let limit = Duration::from_secs(120);
    running
        .wait_for(limit, |r| r.count(AllocState::Healthy) == 20)
        .await;
    // The agent samples usage, as it does much of the time with many containers.
    running
        .wait_for(limit, |r| {
            r.engine.fake.calls().iter().any(|c| c.starts_with("usage"))
        })
        .await;

    running.want(1, &[]);
    let took = running
        .wait_for(limit, |r| r.containers_of(&ids) == 0)
        .await;
    // The drain, then one stop (1 s) for all of them, within a pass's interval.
    assert!(
        took <= DRAIN + Duration::from_secs(2),
        "20 containers removed after {took:?}"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stops_do_not_wait_behind_the_creates_of_the_same_pass() {
    let engine = Engine::new(FakeRuntime::with_images(&["web:1"]));
    engine.set_delay(FakeOp::Create, Duration::from_secs(1));
    let mut h = Harness::new_sharing(engine);
    h.supervisor.set_drain(DRAIN);
    h.connect(1);
    let mut running = h.spawn();
    let old = numbered("web.b", 10);
    running.want(1, &all(&old, DesiredState::Run));
    let limit = Duration::from_secs(120);
    running
        .wait_for(limit, |r| r.count(AllocState::Healthy) == 10)
        .await;

    // A rollout step: the old replicas stop and new ones (first in id order) start.
    let new = numbered("web.a", 10);
    let mut step = all(&old, DesiredState::Stop);
    step.extend(all(&new, DesiredState::Run));
    running.want(1, &step);
    let took = running
        .wait_for(limit, |r| r.containers_of(&old) == 0)
        .await;
    assert!(
        took <= DRAIN + Duration::from_secs(1),
        "old containers removed after {took:?}"
    );
    running
        .wait_for(limit, |r| r.count(AllocState::Healthy) == 10)
        .await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_desired_set_arriving_during_creates_is_taken_up_after_the_current_one() {
    let engine = Engine::new(FakeRuntime::with_images(&["web:1"]));
    engine.set_delay(FakeOp::Create, Duration::from_secs(1));
    let mut h = Harness::new_sharing(engine);
    h.supervisor.set_drain(DRAIN);
    h.connect(1);
    let mut running = h.spawn();
    let ids = numbered("web.", 10);
    running.want(1, &all(&ids, DesiredState::Run));
    let limit = Duration::from_secs(120);
    running
        .wait_for(limit, |r| r.containers_of(&ids) >= 2)
        .await;

    // Deleted while the agent is still creating its replicas.
    running.want(1, &all(&ids, DesiredState::Stop));
    let took = running
        .wait_for(limit, |r| r.containers_of(&ids) == 0)
        .await;
    // The create in flight, then the drain.
    assert!(
        took <= DRAIN + Duration::from_secs(2),
        "containers removed after {took:?}"
    );
    let creates = running
        .engine
        .fake
        .calls()
        .iter()
        .filter(|c| c.starts_with("create"))
        .count();
    assert!(
        creates <= 3,
        "{creates} containers created after the delete"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn usage_is_reported_without_holding_up_passes() {
    let engine = Engine::new(FakeRuntime::with_images(&["web:1"]));
    engine.set_delay(FakeOp::Usage, Duration::from_secs(1));
    let mut h = Harness::new_sharing(engine);
    h.connect(1);
    let mut running = h.spawn();
    let ids = numbered("web.", 3);
    running.want(1, &all(&ids, DesiredState::Run));
    let limit = Duration::from_secs(60);
    running
        .wait_for(limit, |r| r.count(AllocState::Healthy) == 3)
        .await;
    let used = Resources {
        cpu_millis: 120,
        memory_bytes: 7 << 20,
    };
    for id in &ids {
        let name = format!("drover-{id}-n1");
        assert!(running.engine.fake.set_usage(&name, used));
    }
    running
        .wait_for(limit, |r| {
            r.statuses.borrow().values().all(|s| s.status.usage == used)
        })
        .await;
    running.stop().await;
}

/// Passes a second apart (usage sampled every second) until a published usage report
/// satisfies `done`, at most 20; that report.
async fn pass_until_reported(
    h: &mut Harness,
    reports: &mut watch::Receiver<UsageReport>,
    mut done: impl FnMut(&UsageReport) -> bool,
) -> UsageReport {
    for _ in 0..20 {
        h.passes(1, Duration::from_secs(1)).await;
        if reports.has_changed().unwrap_or(false) && done(&reports.borrow_and_update()) {
            return reports.borrow().clone();
        }
    }
    panic!("no such usage report: {:?}", *reports.borrow());
}

/// One running replica, web.1, sampled every second; its container's name.
async fn one_sampled_replica(h: &mut Harness) -> String {
    h.supervisor.set_usage_interval(Duration::from_secs(1));
    h.connect(1);
    h.want(1, &[("web.1", DesiredState::Run, spec("web:1"))]);
    h.passes(1, Duration::from_millis(10)).await;
    assert_eq!(h.status("web.1").state, AllocState::Healthy);
    "drover-web.1-n1".to_owned()
}

#[tokio::test(start_paused = true)]
async fn usage_read_from_the_engine_is_published_for_the_link() {
    let mut h = Harness::new(FakeRuntime::with_images(&["web:1"]));
    let mut reports = h.supervisor.usage_reports();
    let name = one_sampled_replica(&mut h).await;
    let used = Resources {
        cpu_millis: 120,
        memory_bytes: 7 << 20,
    };
    assert!(h.runtime.set_usage(&name, used));
    let report = pass_until_reported(&mut h, &mut reports, |r| {
        r.allocations.iter().any(|u| u.cpu_millis == 120)
    })
    .await;
    assert_eq!(report.allocations.len(), 1, "{report:?}");
    let sample = &report.allocations[0];
    assert!(sample.window_ms >= 1, "{sample:?}");
    assert_eq!(
        *sample,
        AllocUsage {
            allocation_id: "web.1".into(),
            cpu_millis: 120,
            memory_working_set_bytes: 7 << 20,
            // The engine's stats give neither.
            memory_limit_bytes: None,
            oom_kills: 0,
            window_ms: sample.window_ms,
        }
    );
    assert_eq!(h.status("web.1").usage, used);
}

#[tokio::test(start_paused = true)]
async fn usage_comes_from_the_engine_where_cgroups_are_not_mounted() {
    let mut h = Harness::new(FakeRuntime::with_images(&["web:1"]));
    // A host whose mountinfo has no cgroup hierarchy at all.
    let mounts = CgroupMounts::from_mountinfo("").expect("an empty mountinfo");
    h.supervisor
        .set_usage_reader(UsageReader::with_mounts(mounts));
    let mut reports = h.supervisor.usage_reports();
    let name = one_sampled_replica(&mut h).await;
    // A process that exists, with a /proc/<pid>/cgroup to read.
    assert!(h.runtime.set_pid(&name, Some(std::process::id())));
    let used = Resources {
        cpu_millis: 80,
        memory_bytes: 9 << 20,
    };
    assert!(h.runtime.set_usage(&name, used));
    let report = pass_until_reported(&mut h, &mut reports, |r| !r.allocations.is_empty()).await;
    assert_eq!(report.allocations[0].cpu_millis, 80, "{report:?}");
    assert_eq!(report.allocations[0].memory_working_set_bytes, 9 << 20);
    assert_eq!(h.status("web.1").usage, used);
    assert!(!h.supervisor.usage.lock().await.reads_cgroups());
}

/// Whether this host lets this process read its own cgroup, as the agent reads a
/// container's; why not, if not.
fn own_cgroup_unreadable() -> Option<String> {
    let read = CgroupMounts::read()
        .and_then(|mounts| mounts.locate(std::process::id()))
        .and_then(|paths| paths.read());
    read.err().map(|e| e.to_string())
}

#[tokio::test(start_paused = true)]
async fn usage_is_read_from_the_cgroup_of_the_containers_main_process() {
    if let Some(reason) = own_cgroup_unreadable() {
        eprintln!("skipping: this host's cgroups cannot be read: {reason}");
        return;
    }
    let mut h = Harness::new(FakeRuntime::with_images(&["web:1"]));
    h.supervisor.set_usage_reader(UsageReader::new());
    let mut reports = h.supervisor.usage_reports();
    let name = one_sampled_replica(&mut h).await;
    // The test's own process stands for the container's.
    assert!(h.runtime.set_pid(&name, Some(std::process::id())));
    h.runtime.clear_calls();
    let report = pass_until_reported(&mut h, &mut reports, |r| !r.allocations.is_empty()).await;
    let sample = &report.allocations[0];
    assert_eq!(sample.allocation_id, "web.1");
    assert!(sample.memory_working_set_bytes > 0, "{sample:?}");
    assert_eq!(
        h.status("web.1").usage,
        Resources {
            cpu_millis: sample.cpu_millis,
            memory_bytes: sample.memory_working_set_bytes,
        }
    );
    let asked: Vec<String> = h
        .runtime
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("usage") || c.starts_with("inspect"))
        .collect();
    assert!(
        asked.is_empty(),
        "the listed process is enough, the engine's stats are not asked: {asked:?}"
    );
    assert!(h.supervisor.usage.lock().await.reads_cgroups());
}

/// `spec("web:1")` reserving 500m and 64 MiB.
fn limited_spec() -> WorkloadSpec {
    let mut spec = spec("web:1");
    spec.resources = Resources {
        cpu_millis: 500,
        memory_bytes: 64 << 20,
    };
    spec
}

/// Allocation web.1 of `spec`, resized to `resources` (same id, revision and spec).
fn resized(spec: &WorkloadSpec, resources: Resources) -> Vec<(Allocation, WorkloadSpec)> {
    let mut allocation = alloc("web.1", DesiredState::Run, spec);
    allocation.resources = resources;
    vec![(allocation, spec.clone())]
}

/// The calls of `runtime` that changed limits.
fn updates(runtime: &FakeRuntime) -> Vec<String> {
    runtime
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("update_resources"))
        .collect()
}

/// The one container on the fake engine.
fn only_container(runtime: &FakeRuntime) -> ContainerInfo {
    let mut containers = runtime.containers();
    assert_eq!(containers.len(), 1, "{containers:?}");
    containers.remove(0)
}

#[tokio::test(start_paused = true)]
async fn a_resized_allocation_changes_its_containers_limits_in_place() {
    let mut h = Harness::new(FakeRuntime::with_images(&["web:1"]));
    h.connect(1);
    let spec = limited_spec();
    h.want(1, &[("web.1", DesiredState::Run, spec.clone())]);
    h.passes(2, Duration::from_millis(10)).await;
    assert_eq!(h.status("web.1").state, AllocState::Healthy);
    let before = only_container(&h.runtime);
    assert_eq!(
        before.limits, spec.resources,
        "created with the allocation's"
    );

    let bigger = Resources {
        cpu_millis: 250,
        memory_bytes: 96 << 20,
    };
    h.runtime.clear_calls();
    // The list goes on reporting the limits the container was created with, as a list
    // reusing an earlier inspection would: the agent goes by what it set.
    lock(&h.engine.listed_limits).insert(before.id.clone(), before.limits);
    h.want_allocations(1, resized(&spec, bigger));
    h.passes(3, Duration::from_secs(1)).await;

    let after = only_container(&h.runtime);
    assert_eq!(after.limits, bigger);
    assert_eq!(after.id, before.id, "the same container");
    assert_eq!(after.started_at, before.started_at, "not restarted");
    assert_eq!(after.state, ContainerState::Running);
    let status = h.status("web.1");
    assert_eq!(status.state, AllocState::Healthy, "{status:?}");
    assert_eq!(status.restarts, 0);
    assert_eq!(status.message, "");
    assert_eq!(
        updates(&h.runtime),
        vec![format!(
            "update_resources {} cpu=250 memory={}",
            before.id,
            96 << 20
        )],
        "one update, not one per pass"
    );
    let acted: Vec<String> = h
        .runtime
        .calls()
        .into_iter()
        .filter(|c| !c.starts_with("list") && !c.starts_with("update") && !c.starts_with("usage"))
        .collect();
    assert!(acted.is_empty(), "nothing else done to it: {acted:?}");
}

#[tokio::test(start_paused = true)]
async fn a_lower_memory_limit_than_the_replica_uses_is_refused() {
    let mut h = Harness::new(FakeRuntime::with_images(&["web:1"]));
    h.supervisor.set_usage_interval(Duration::from_secs(1));
    let mut reports = h.supervisor.usage_reports();
    h.connect(1);
    let spec = limited_spec();
    h.want(1, &[("web.1", DesiredState::Run, spec.clone())]);
    h.passes(1, Duration::from_millis(10)).await;
    let id = only_container(&h.runtime).id;
    let used = Resources {
        cpu_millis: 100,
        memory_bytes: 52 << 20,
    };
    assert!(h.runtime.set_usage(&id, used));
    pass_until_reported(&mut h, &mut reports, |r| {
        r.allocations
            .iter()
            .any(|u| u.memory_working_set_bytes == 52 << 20)
    })
    .await;

    // 40 MiB: below the 52 MiB it uses. The CPU half of the change is safe and made.
    let smaller = Resources {
        cpu_millis: 250,
        memory_bytes: 40 << 20,
    };
    h.runtime.clear_calls();
    h.want_allocations(1, resized(&spec, smaller));
    h.passes(3, Duration::from_secs(1)).await;
    let status = h.status("web.1");
    assert_eq!(
        status.message,
        "memory limit 40 MiB is below what the replica uses (52 MiB): kept 64 MiB"
    );
    assert_eq!(status.state, AllocState::Healthy, "{status:?}");
    assert_eq!(
        only_container(&h.runtime).limits,
        Resources {
            cpu_millis: 250,
            memory_bytes: 64 << 20,
        }
    );
    assert_eq!(
        updates(&h.runtime),
        vec![format!("update_resources {id} cpu=250 memory=0")]
    );

    // Once the replica uses less, the lower limit is applied.
    assert!(h.runtime.set_usage(
        &id,
        Resources {
            cpu_millis: 100,
            memory_bytes: 20 << 20,
        }
    ));
    pass_until_reported(&mut h, &mut reports, |r| {
        r.allocations
            .iter()
            .any(|u| u.memory_working_set_bytes == 20 << 20)
    })
    .await;
    h.passes(1, Duration::from_secs(1)).await;
    assert_eq!(only_container(&h.runtime).limits, smaller);
    assert_eq!(h.status("web.1").message, "");
    assert_eq!(only_container(&h.runtime).id, id);
}

#[tokio::test(start_paused = true)]
async fn an_unchanged_allocation_makes_no_update_call() {
    let engine = Engine::new(FakeRuntime::with_images(&["web:1"]));
    let mut h = Harness::new_sharing(engine.clone());
    h.connect(1);
    let spec = limited_spec();
    h.want(1, &[("web.1", DesiredState::Run, spec.clone())]);
    h.passes(3, Duration::from_secs(1)).await;
    // The same set again, as the coordinator sends it after any change of another service.
    h.want(1, &[("web.1", DesiredState::Run, spec.clone())]);
    h.passes(3, Duration::from_secs(1)).await;
    assert_eq!(h.status("web.1").state, AllocState::Healthy);
    assert!(updates(&h.runtime).is_empty(), "{:?}", h.runtime.calls());

    // A new agent adopts the container: it reads the limits from the engine, which match.
    let mut again = Harness::new_sharing(engine);
    again.connect(1);
    again.want(1, &[("web.1", DesiredState::Run, spec)]);
    again.passes(3, Duration::from_secs(1)).await;
    assert_eq!(again.status("web.1").state, AllocState::Healthy);
    assert!(
        updates(&again.runtime).is_empty(),
        "{:?}",
        again.runtime.calls()
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_update_is_reported_and_tried_again_after_the_backoff() {
    let mut h = Harness::new(FakeRuntime::with_images(&["web:1"]));
    h.connect(1);
    let spec = limited_spec();
    h.want(1, &[("web.1", DesiredState::Run, spec.clone())]);
    h.passes(1, Duration::from_millis(10)).await;
    let id = only_container(&h.runtime).id;
    h.runtime
        .set_fail_next(FakeOp::UpdateResources, "cgroup write refused");
    h.runtime.clear_calls();
    let bigger = Resources {
        cpu_millis: 1000,
        memory_bytes: 128 << 20,
    };
    h.want_allocations(1, resized(&spec, bigger));
    // Passes 100 ms apart, within the first backoff (1 s): one try only.
    h.passes(3, Duration::from_millis(100)).await;
    let status = h.status("web.1");
    assert!(
        status
            .message
            .starts_with("cannot change limits to CPU 1, memory 128 MiB:")
            && status.message.contains(&id)
            && status.message.contains("cgroup write refused")
            && status.message.ends_with("retrying in 1s"),
        "{status:?}"
    );
    assert_eq!(status.state, AllocState::Healthy, "it runs on: {status:?}");
    assert_eq!(updates(&h.runtime).len(), 1, "{:?}", h.runtime.calls());
    assert_eq!(only_container(&h.runtime).limits, spec.resources);

    h.passes(2, Duration::from_secs(1)).await;
    assert_eq!(updates(&h.runtime).len(), 2, "{:?}", h.runtime.calls());
    assert_eq!(only_container(&h.runtime).limits, bigger);
    assert_eq!(h.status("web.1").message, "");
}

#[test]
fn limits_plans_leave_zeros_raise_freely_and_lower_with_room_only() {
    use super::tracked::plan_limits;
    let mib = |n: u64| n << 20;
    let limits = |cpu_millis: u64, memory: u64| Resources {
        cpu_millis,
        memory_bytes: mib(memory),
    };
    let current = limits(500, 64);
    // Nothing wanted, or a 0 (no change), or what it has: nothing to do.
    for wanted in [limits(0, 0), current, limits(500, 0), limits(0, 64)] {
        let plan = plan_limits(current, wanted, None);
        assert_eq!(plan.update, Resources::default(), "{wanted:?}");
        assert_eq!(plan.note, "");
    }
    // Raising memory needs no sample; CPU changes either way.
    let plan = plan_limits(current, limits(250, 96), None);
    assert_eq!((plan.update, plan.note.as_str()), (limits(250, 96), ""));
    // Lowering waits for a sample, then needs 10% over the working set.
    let plan = plan_limits(current, limits(250, 40), None);
    assert_eq!(plan.update, limits(250, 0));
    assert_eq!(
        plan.note,
        "memory limit 40 MiB waits for a first usage sample of the replica: kept 64 MiB"
    );
    let plan = plan_limits(current, limits(0, 40), Some(mib(37)));
    assert_eq!(plan.update, Resources::default());
    assert_eq!(
        plan.note,
        "memory limit 40 MiB leaves less than 10% over what the replica uses (37 MiB): kept 64 MiB"
    );
    let plan = plan_limits(current, limits(0, 40), Some(mib(36)));
    assert_eq!((plan.update, plan.note.as_str()), (limits(0, 40), ""));
    // A first limit on a container without one is a lowering too.
    let plan = plan_limits(limits(0, 0), limits(0, 40), Some(mib(52)));
    assert_eq!(plan.update, Resources::default());
    assert_eq!(
        plan.note,
        "memory limit 40 MiB is below what the replica uses (52 MiB): kept no limit"
    );
}

#[tokio::test(start_paused = true)]
async fn an_engine_that_cannot_update_is_not_asked_again_for_the_same_limits() {
    let engine = Engine::new(FakeRuntime::with_images(&["web:1"]));
    engine.updates_unsupported.store(true, Ordering::Relaxed);
    let mut h = Harness::new_sharing(engine);
    h.connect(1);
    let spec = limited_spec();
    h.want(1, &[("web.1", DesiredState::Run, spec.clone())]);
    h.passes(1, Duration::from_millis(10)).await;
    let asked = |h: &Harness| h.engine.update_calls.load(Ordering::Relaxed);
    let bigger = Resources {
        cpu_millis: 1000,
        memory_bytes: 128 << 20,
    };
    h.want_allocations(1, resized(&spec, bigger));
    h.passes(60, Duration::from_secs(1)).await;
    assert_eq!(asked(&h), 1, "asked once: {:?}", h.runtime.calls());
    let status = h.status("web.1");
    assert_eq!(status.state, AllocState::Healthy, "{status:?}");
    assert!(
        status
            .message
            .starts_with("cannot change limits to CPU 1, memory 128 MiB:")
            && status.message.contains("no container update endpoint")
            && !status.message.contains("retrying"),
        "{status:?}"
    );
    // Other limits are asked for once more.
    let other = Resources {
        cpu_millis: 2000,
        memory_bytes: 128 << 20,
    };
    h.want_allocations(1, resized(&spec, other));
    h.passes(3, Duration::from_secs(1)).await;
    assert_eq!(asked(&h), 2, "{:?}", h.runtime.calls());
    assert_eq!(only_container(&h.runtime).limits, spec.resources);
}
