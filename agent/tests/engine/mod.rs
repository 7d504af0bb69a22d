//! What the tests of the Docker runtime against real engines (Docker, Podman) share: unique
//! node ids, the cleanup of a test's containers, and a supervisor fed as the link would.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use drover_agent::runtime::{ContainerRuntime, DockerRuntime, labels};
use drover_agent::supervisor::{
    AllocReport, DesiredAlloc, DesiredUpdate, LinkState, Supervisor, SupervisorChannels,
};
use drover_proto::model::{Allocation, DesiredState, WorkloadSpec};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A node id no other test (in this or another process) uses, starting with `prefix`.
pub fn unique_node(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes the test's containers when dropped, also while unwinding from a panic: those
/// labelled with its node id and those named after it (checks label some with other nodes).
/// Synchronous, through the engine's CLI, so that it works outside the async runtime (and
/// after a test's own service is gone).
pub struct Cleanup {
    /// The engine's command line: `docker` or `podman` (on the same storage as the
    /// service the test uses).
    pub cli: &'static str,
    /// The test's node id.
    pub node: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut ids = Vec::new();
        for filter in [
            format!("label={}={}", labels::NODE, self.node),
            format!("name={}", self.node),
        ] {
            let listed = Command::new(self.cli)
                .args(["ps", "--all", "--quiet", "--no-trunc", "--filter", &filter])
                .output();
            match listed {
                Ok(output) => ids.extend(
                    String::from_utf8_lossy(&output.stdout)
                        .split_whitespace()
                        .map(str::to_owned),
                ),
                Err(err) => eprintln!("cleanup of {}: {} ps: {err}", self.node, self.cli),
            }
        }
        ids.sort();
        ids.dedup();
        if ids.is_empty() {
            return;
        }
        let removed = Command::new(self.cli)
            .args(["rm", "--force", "--volumes"])
            .args(&ids)
            .output();
        if let Err(err) = removed {
            eprintln!("cleanup of {}: {} rm: {err}", self.node, self.cli);
        }
    }
}

/// A supervisor running its loop on the real engine, fed as the link would feed it (one
/// connected session).
pub struct Agent {
    desired: watch::Sender<Option<DesiredUpdate>>,
    _link: watch::Sender<LinkState>,
    /// What the supervisor reports, by allocation id.
    pub statuses: watch::Receiver<BTreeMap<String, AllocReport>>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    version: u64,
}

impl Agent {
    pub fn start(node: &str, runtime: &DockerRuntime, drain: Duration) -> Agent {
        let (desired, desired_rx) = watch::channel(None);
        let (link, link_rx) = watch::channel(LinkState {
            session: 1,
            connected: true,
        });
        let (status_tx, statuses) = watch::channel(BTreeMap::new());
        let cancel = CancellationToken::new();
        let runtime: Arc<dyn ContainerRuntime> = Arc::new(runtime.clone());
        let mut supervisor = Supervisor::new(
            node.to_owned(),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            runtime,
            SupervisorChannels {
                desired: desired_rx,
                link: link_rx,
                statuses: status_tx,
            },
            Duration::from_secs(1),
            cancel.clone(),
        );
        supervisor.set_drain(drain);
        Agent {
            desired,
            _link: link,
            statuses,
            cancel,
            task: tokio::spawn(supervisor.run()),
            version: 0,
        }
    }

    /// Sends a desired set: these allocations of `spec`, to run or to stop.
    pub fn want(&mut self, node: &str, spec: &WorkloadSpec, ids: &[String], desired: DesiredState) {
        self.version += 1;
        let allocations = ids
            .iter()
            .map(|id| {
                let allocation = Allocation {
                    id: id.clone(),
                    service: spec.name.clone(),
                    revision: 1,
                    node: node.to_owned(),
                    // What the spec asks, as the coordinator reserves it.
                    resources: spec.resources,
                    desired,
                    created_unix_ms: 0,
                };
                let spec = spec.clone();
                (id.clone(), DesiredAlloc { allocation, spec })
            })
            .collect();
        self.desired.send_replace(Some(DesiredUpdate {
            version: self.version,
            session: 1,
            allocations,
            store_id: "test".into(),
            cluster_dns: None,
        }));
    }

    /// Waits until `done` holds for the reported statuses; panics after `deadline`.
    pub async fn wait_for(
        &self,
        what: &str,
        deadline: Duration,
        mut done: impl FnMut(&BTreeMap<String, AllocReport>) -> bool,
    ) {
        let until = Instant::now() + deadline;
        while !done(&self.statuses.borrow()) {
            assert!(
                Instant::now() < until,
                "{what}: not after {deadline:?}: {:#?}",
                self.statuses.borrow()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        self.task.await.expect("supervisor panicked");
    }
}
