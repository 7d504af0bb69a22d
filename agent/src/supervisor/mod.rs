//! The agent's reconcile loop: desired allocations (from the coordinator) against containers
//! observed on the engine (by label) → create, start, restart with backoff, stop, remove.
//!
//! Level-triggered: every pass lists the node's containers and acts on the difference, so a
//! missed event or a failed call is repaired by the next pass.

mod backoff;
#[cfg(test)]
mod tests;
mod tracked;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::model::{AllocStatus, Allocation, ClusterDns, DesiredState, WorkloadSpec};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::health::{CheckKind, HealthEvent, HealthStatus};
use crate::runtime::{ContainerInfo, ContainerRuntime, labels};
use crate::usage::{UsageReader, UsageReport, UsageRound, UsageTarget};
pub use backoff::{RestartDecision, after_exit, delay};
pub use tracked::NAMESPACE;
use tracked::Tracked;

/// One allocation the coordinator wants on this node, with the spec it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredAlloc {
    /// The allocation.
    pub allocation: Allocation,
    /// The spec of its revision.
    pub spec: WorkloadSpec,
}

/// The node's desired set as last received.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredUpdate {
    /// Version from the coordinator; only newer versions replace older ones.
    pub version: u64,
    /// Link session it arrived on.
    pub session: u64,
    /// Allocations by id.
    pub allocations: BTreeMap<String, DesiredAlloc>,
    /// Identity of the coordinator's store: allocation ids are unique within one store, so
    /// an id of another store's set names another allocation (the coordinator was reset or
    /// restored from a backup).
    pub store_id: String,
    /// The cluster's DNS, which new containers get as their resolver.
    pub cluster_dns: Option<ClusterDns>,
}

/// What the agent reports about one allocation: to the coordinator (status) and to gossip
/// (service, revision, endpoint, health).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocReport {
    /// Service name.
    pub service: String,
    /// Spec revision.
    pub revision: u64,
    /// Observed status.
    pub status: AllocStatus,
}

/// Whether the link to the coordinator is up, and which session it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkState {
    /// Session counter, increased on every connect.
    pub session: u64,
    /// Whether the session is open.
    pub connected: bool,
}

/// Channels the supervisor works with.
#[derive(Debug)]
pub struct SupervisorChannels {
    /// Desired set; `None` until the first one arrives.
    pub desired: watch::Receiver<Option<DesiredUpdate>>,
    /// Link state.
    pub link: watch::Receiver<LinkState>,
    /// Status of every allocation the agent knows, published after each pass.
    pub statuses: watch::Sender<BTreeMap<String, AllocReport>>,
}

/// Grace period for containers whose spec is unknown (adopted, then undesired).
const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// The reconcile loop of one node.
#[derive(Debug)]
pub struct Supervisor {
    node: String,
    advertise: IpAddr,
    runtime: Arc<dyn ContainerRuntime>,
    channels: SupervisorChannels,
    tracked: BTreeMap<String, Tracked>,
    health_tx: mpsc::Sender<HealthEvent>,
    health_rx: mpsc::Receiver<HealthEvent>,
    /// Where probe results are counted.
    counters: crate::metrics::WorkCounters,
    interval: Duration,
    drain: Duration,
    /// Since when the link to the coordinator is down (`None` while connected).
    cut_off_since: Option<Instant>,
    next_usage: Instant,
    /// Time from the end of one sampling round to the start of the next.
    usage_interval: Duration,
    /// Reads the rounds, keeping each container's cgroup and baseline between them; a
    /// round's task holds it while it runs.
    usage: Arc<Mutex<UsageReader>>,
    /// The usage sampling round under way, if any: it runs beside the passes, which never
    /// wait for it (a round that has to ask the engine takes seconds).
    sampling: Option<JoinHandle<()>>,
    usage_tx: mpsc::Sender<UsageRound>,
    usage_rx: mpsc::Receiver<UsageRound>,
    /// Each round's samples of the replicas still running, and the node's usage, for the
    /// link to send.
    usage_reports: watch::Sender<UsageReport>,
    /// From the last desired set: the resolver of the containers it creates.
    cluster_dns: Option<ClusterDns>,
    cancel: CancellationToken,
}

impl Supervisor {
    /// A supervisor for `node`, binding published ports to `advertise`. It reads container
    /// usage from this host's cgroups (their mounts are read now), every
    /// [`crate::usage::DEFAULT_INTERVAL`] unless told otherwise.
    pub fn new(
        node: String,
        advertise: IpAddr,
        runtime: Arc<dyn ContainerRuntime>,
        channels: SupervisorChannels,
        interval: Duration,
        cancel: CancellationToken,
    ) -> Supervisor {
        let (health_tx, health_rx) = mpsc::channel(256);
        let (usage_tx, usage_rx) = mpsc::channel(1);
        Supervisor {
            node,
            advertise,
            runtime,
            channels,
            tracked: BTreeMap::new(),
            health_tx,
            health_rx,
            counters: crate::metrics::WorkCounters::default(),
            interval,
            drain: Duration::ZERO,
            cut_off_since: None,
            next_usage: Instant::now(),
            usage_interval: crate::usage::DEFAULT_INTERVAL,
            usage: Arc::new(Mutex::new(UsageReader::new())),
            sampling: None,
            usage_tx,
            usage_rx,
            usage_reports: watch::channel(UsageReport::default()).0,
            cluster_dns: None,
            cancel,
        }
    }

    /// How long a container being stopped keeps serving open connections before SIGTERM
    /// (default: none).
    pub fn set_drain(&mut self, drain: Duration) {
        self.drain = drain;
    }

    /// Counts health probe results into `counters` (the agent's metrics).
    pub fn set_counters(&mut self, counters: crate::metrics::WorkCounters) {
        self.counters = counters;
    }

    /// Time from the end of one usage sampling round to the start of the next (default
    /// [`crate::usage::DEFAULT_INTERVAL`]); must not be zero.
    pub fn set_usage_interval(&mut self, interval: Duration) {
        self.usage_interval = interval;
    }

    /// Reads usage with `reader` instead of this host's cgroups: from the engine, or from
    /// given mounts (tests).
    pub fn set_usage_reader(&mut self, reader: UsageReader) {
        self.usage = Arc::new(Mutex::new(reader));
    }

    /// What each sampling round found, for the link to send: published after every round.
    pub fn usage_reports(&self) -> watch::Receiver<UsageReport> {
        self.usage_reports.subscribe()
    }

    /// Runs passes until cancelled: on every desired-set or link change, every health
    /// transition, every `interval`, and when a restart backoff ends.
    pub async fn run(mut self) {
        info!(node = %self.node, "supervisor started");
        loop {
            self.pass().await;
            let wake_at = self.next_wake();
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                changed = self.channels.desired.changed() => {
                    if changed.is_err() { break; }
                }
                changed = self.channels.link.changed() => {
                    if changed.is_err() { break; }
                }
                Some(event) = self.health_rx.recv() => self.on_health(event).await,
                Some(round) = self.usage_rx.recv() => self.on_usage(round),
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
        for t in self.tracked.values_mut() {
            t.stop_checks();
        }
        if let Some(round) = self.sampling.take() {
            round.abort();
        }
        info!(node = %self.node, "supervisor stopped; containers keep running");
    }

    fn next_wake(&self) -> Instant {
        let tick = Instant::now() + self.interval;
        self.tracked
            .values()
            .filter_map(|t| t.restart_at)
            .fold(tick, Instant::min)
    }

    /// One reconcile pass.
    pub async fn pass(&mut self) {
        let containers = match self.runtime.list(&self.node).await {
            Ok(c) => c,
            Err(e) => {
                warn!(node = %self.node, error = %e, "cannot list containers; retrying next pass");
                return;
            }
        };
        let mut by_alloc: HashMap<String, ContainerInfo> = HashMap::new();
        for c in containers {
            let Some(alloc) = c.labels.get(labels::ALLOC).cloned() else {
                continue;
            };
            // Adoption: a container this node runs is tracked even before the desired set
            // arrives, so the hello lists it and nothing restarts.
            self.tracked
                .entry(alloc.clone())
                .or_insert_with(|| Tracked::adopted(&alloc, &c));
            by_alloc.insert(alloc, c);
        }

        // Seen from here on: one arriving during the pass interrupts its creates (below).
        let desired = self.channels.desired.borrow_and_update().clone();
        let link = *self.channels.link.borrow();
        // Undesired containers are removed only on the coordinator's word in this session.
        let confirmed = desired
            .as_ref()
            .is_some_and(|d| link.connected && d.session == link.session);
        let store = desired
            .as_ref()
            .map(|d| d.store_id.clone())
            .unwrap_or_default();
        if let Some(d) = desired.as_ref() {
            self.cluster_dns = d.cluster_dns.clone();
        }
        let wanted = desired.map(|d| d.allocations).unwrap_or_default();

        self.cut_off_since = match (link.connected, self.cut_off_since) {
            (true, _) => None,
            (false, since) => Some(since.unwrap_or_else(Instant::now)),
        };
        let cut_off_for = self.cut_off_since.map(|since| since.elapsed());
        // Stops first: each only starts a background task, and none may wait behind the
        // creates of the same pass (a rollout stops and creates at once).
        let mut to_run: Vec<&String> = Vec::new();
        for (id, want) in &wanted {
            let container = by_alloc.get(id);
            // Services that must not run twice stop on their own after this long without the
            // coordinator, which waits as long (plus a margin) before replacing them.
            if let (Some(limit), Some(cut_off)) = (want.spec.stop_after_disconnect, cut_off_for) {
                if cut_off >= limit && want.allocation.desired == DesiredState::Run {
                    if let Some(t) = self.tracked.get(id) {
                        if t.status.state != drover_proto::model::AllocState::Stopped {
                            warn!(alloc = %id, cut_off = ?cut_off, "stopping: coordinator unreachable for longer than stop_after_disconnect");
                        }
                    }
                    // No drain: nothing should reach a replica whose node is cut off.
                    self.stop_now(id, container, want.spec.stop_grace_period);
                    continue;
                }
            }
            match want.allocation.desired {
                DesiredState::Run => to_run.push(id),
                DesiredState::Stop => {
                    self.ensure_stopped(id, container, want.spec.stop_grace_period)
                }
            }
        }
        let unwanted: Vec<String> = self
            .tracked
            .keys()
            .filter(|id| !wanted.contains_key(*id))
            .cloned()
            .collect();
        for id in unwanted {
            let container = by_alloc.get(&id);
            if confirmed {
                let grace = self
                    .tracked
                    .get(&id)
                    .and_then(|t| t.spec.as_ref())
                    .map(|s| s.stop_grace_period)
                    .unwrap_or(DEFAULT_GRACE);
                self.ensure_stopped(&id, container, grace);
                if container.is_none() {
                    self.tracked.remove(&id);
                }
            } else if let Some(t) = self.tracked.get_mut(&id) {
                t.observe(container);
            }
        }
        self.publish();
        for id in to_run {
            // A newer set (a delete, the next rollout step) need not wait for every create
            // of this one: the next pass starts at once and takes it up.
            if self.channels.desired.has_changed().unwrap_or(false) {
                info!(node = %self.node, "newer desired set; leaving the rest of this pass to the next");
                break;
            }
            self.ensure_running(id, &wanted[id], by_alloc.get(id), &store)
                .await;
            // Creating containers one by one takes a while on a busy node: report each as it
            // starts rather than all at the end of the pass.
            self.publish();
        }
        let sampling = self
            .sampling
            .as_ref()
            .is_some_and(|round| !round.is_finished());
        if !sampling && Instant::now() >= self.next_usage {
            self.sample_usage(&by_alloc);
        }
        self.publish();
    }

    async fn ensure_running(
        &mut self,
        id: &str,
        want: &DesiredAlloc,
        container: Option<&ContainerInfo>,
        store: &str,
    ) {
        let t = self
            .tracked
            .entry(id.to_string())
            .or_insert_with(|| Tracked::new(&want.allocation));
        match t.store.as_deref() {
            None => t.store = Some(store.to_string()),
            Some(known) if known != store => {
                // The same id from another store (the coordinator was reset or restored) is
                // another allocation: the old one's container goes first, then this one
                // starts afresh.
                if container.is_some() {
                    let grace = t
                        .spec
                        .as_ref()
                        .map_or(DEFAULT_GRACE, |s| s.stop_grace_period);
                    t.stop(container, self.drain, grace, &self.runtime);
                    return;
                }
                info!(alloc = %id, "allocation id of a new coordinator store: starting it afresh");
                *t = Tracked::new(&want.allocation);
                t.store = Some(store.to_string());
            }
            Some(_) => {}
        }
        t.spec = Some(want.spec.clone());
        t.revision = want.allocation.revision;
        // Vertical scaling changes only these (same id, revision and spec): the next look at
        // a running container changes its limits in place.
        t.resources = want.allocation.resources;
        match container {
            None => {
                let placement = tracked::Placement {
                    node: &self.node,
                    advertise: self.advertise,
                    cluster_dns: self.cluster_dns.as_ref(),
                };
                t.create(&placement, self.runtime.as_ref()).await
            }
            Some(c) => {
                t.drive(c, self.runtime.as_ref()).await;
                if t.is_running() {
                    t.start_checks(
                        self.advertise,
                        &self.runtime,
                        &self.health_tx,
                        &self.counters,
                    );
                }
            }
        }
    }

    fn stop_now(&mut self, id: &str, container: Option<&ContainerInfo>, grace: Duration) {
        let Some(t) = self.tracked.get_mut(id) else {
            return;
        };
        t.stop(container, Duration::ZERO, grace, &self.runtime);
    }

    fn ensure_stopped(&mut self, id: &str, container: Option<&ContainerInfo>, grace: Duration) {
        let Some(t) = self.tracked.get_mut(id) else {
            return;
        };
        t.stop(container, self.drain, grace, &self.runtime);
    }

    async fn on_health(&mut self, event: HealthEvent) {
        let Some(t) = self.tracked.get_mut(&event.alloc_id) else {
            return;
        };
        // Sent before its checker was replaced or stopped: about another container or port.
        if t.checked_target() != Some(&event.target) {
            debug!(alloc = %event.alloc_id, kind = %event.kind, container = %event.target.container_id, "health event of a replaced checker ignored");
            return;
        }
        match event.kind {
            CheckKind::Readiness => t.readiness = Some(event.status),
            CheckKind::Liveness if event.status == HealthStatus::Unhealthy => {
                warn!(alloc = %event.alloc_id, detail = %event.detail, "liveness check failed; restarting container");
                t.liveness_failed(&event.detail, &self.runtime);
            }
            CheckKind::Liveness => {}
        }
        t.refresh_health_state();
        if let Some(detail) = Some(event.detail).filter(|d| !d.is_empty()) {
            t.health_detail = detail;
        }
    }

    /// Starts a round that reads the usage of every running container in the background;
    /// [`Supervisor::on_usage`] takes the results.
    fn sample_usage(&mut self, containers: &HashMap<String, ContainerInfo>) {
        let targets: Vec<UsageTarget> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.is_running())
            .filter_map(|(id, t)| {
                let c = containers.get(id).filter(|c| t.container_is(&c.id))?;
                Some(UsageTarget {
                    allocation_id: id.clone(),
                    container_id: c.id.clone(),
                    pid: c.pid,
                    started_at: c.started_at,
                })
            })
            .collect();
        let runtime = self.runtime.clone();
        let reader = self.usage.clone();
        let results = self.usage_tx.clone();
        self.sampling = Some(tokio::spawn(async move {
            let round = reader.lock().await.round(runtime.as_ref(), &targets).await;
            // Fails only once the supervisor is gone.
            let _ = results.send(round).await;
        }));
    }

    /// Takes the results of a sampling round, for the containers that still run, and
    /// publishes them with the node's usage.
    fn on_usage(&mut self, round: UsageRound) {
        let mut allocations = Vec::with_capacity(round.containers.len());
        for sample in round.containers {
            if let Some(t) = self.tracked.get_mut(&sample.usage.allocation_id) {
                if t.container_is(&sample.container_id) && t.is_running() {
                    t.status.usage = sample.resources();
                    // What a lower memory limit must leave room for.
                    t.working_set = Some((
                        sample.container_id.clone(),
                        sample.usage.memory_working_set_bytes,
                    ));
                    allocations.push(sample.usage);
                }
            }
        }
        allocations.sort_by(|a, b| a.allocation_id.cmp(&b.allocation_id));
        self.usage_reports.send_replace(UsageReport {
            allocations,
            node: round.node,
        });
        self.next_usage = Instant::now() + self.usage_interval;
    }

    fn publish(&self) {
        let statuses: BTreeMap<String, AllocReport> = self
            .tracked
            .iter()
            .map(|(id, t)| {
                let report = AllocReport {
                    service: t.service.clone(),
                    revision: t.revision,
                    status: t.status.clone(),
                };
                (id.clone(), report)
            })
            .collect();
        self.channels.statuses.send_if_modified(|current| {
            if *current == statuses {
                false
            } else {
                *current = statuses;
                true
            }
        });
    }
}
