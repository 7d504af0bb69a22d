//! The reconcile loop against the in-memory runtime, on tokio's paused clock: the same cases
//! the Docker tests cover, fast.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::model::{
    AllocState, AllocStatus, Allocation, DesiredState, PortSpec, Protocol, ServiceSpec,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{AllocReport, DesiredAlloc, DesiredUpdate, LinkState, Supervisor, SupervisorChannels};
use crate::runtime::{ContainerRuntime, ContainerState, FakeRuntime, labels};

struct Harness {
    runtime: Arc<FakeRuntime>,
    supervisor: Supervisor,
    desired: watch::Sender<Option<DesiredUpdate>>,
    link: watch::Sender<LinkState>,
    statuses: watch::Receiver<BTreeMap<String, AllocReport>>,
    version: u64,
}

fn spec(image: &str) -> ServiceSpec {
    let mut spec = ServiceSpec::new("web", image);
    spec.ports.push(PortSpec {
        name: None,
        container_port: 8080,
        service_port: Some(80),
        host_port: None,
        protocol: Protocol::Tcp,
    });
    spec.restart.max_attempts = 3;
    spec
}

fn alloc(id: &str, desired: DesiredState) -> Allocation {
    Allocation {
        id: id.into(),
        service: "web".into(),
        revision: 1,
        node: "n1".into(),
        resources: Default::default(),
        desired,
        created_unix_ms: 0,
    }
}

impl Harness {
    fn new(runtime: FakeRuntime) -> Harness {
        Harness::new_sharing(Arc::new(runtime))
    }

    /// A supervisor over an engine another harness may also use (an agent restart).
    fn new_sharing(runtime: Arc<FakeRuntime>) -> Harness {
        let (desired, desired_rx) = watch::channel(None);
        let (link, link_rx) = watch::channel(LinkState::default());
        let (status_tx, statuses) = watch::channel(BTreeMap::new());
        let dyn_runtime: Arc<dyn ContainerRuntime> = runtime.clone();
        let supervisor = Supervisor::new(
            "n1".into(),
            IpAddr::from([127, 0, 0, 1]),
            dyn_runtime,
            SupervisorChannels {
                desired: desired_rx,
                link: link_rx,
                statuses: status_tx,
            },
            Duration::from_secs(1),
            CancellationToken::new(),
        );
        Harness {
            runtime,
            supervisor,
            desired,
            link,
            statuses,
            version: 0,
        }
    }

    fn connect(&mut self, session: u64) {
        self.link.send_replace(LinkState {
            session,
            connected: true,
        });
    }

    fn want(&mut self, session: u64, allocs: &[(&str, DesiredState, ServiceSpec)]) {
        self.version += 1;
        let allocations = allocs
            .iter()
            .map(|(id, d, s)| {
                (
                    id.to_string(),
                    DesiredAlloc {
                        allocation: alloc(id, *d),
                        spec: s.clone(),
                    },
                )
            })
            .collect();
        self.desired.send_replace(Some(DesiredUpdate {
            version: self.version,
            session,
            allocations,
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
            // Let spawned stop/remove tasks run.
            tokio::task::yield_now().await;
        }
        self.supervisor.pass().await;
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
    let runtime = first.runtime.clone();
    let mut second = Harness::new_sharing(runtime);
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
