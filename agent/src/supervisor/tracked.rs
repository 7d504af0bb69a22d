//! One allocation as the agent tracks it: its container, restart backoff and health.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::model::{
    AllocState, AllocStatus, Allocation, ClusterDns, Resources, RestartPolicy, WorkloadSpec,
    format_bytes, format_cpu,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::backoff::{RestartDecision, after_exit, delay};
use crate::health::{CheckKind, HealthChecker, HealthEvent, HealthStatus, ProbeTarget};
use crate::runtime::{
    ContainerDns, ContainerInfo, ContainerRuntime, ContainerSpec, ContainerState, PortBinding,
    RuntimeError, labels,
};

/// Local state of one allocation.
#[derive(Debug)]
pub(super) struct Tracked {
    pub id: String,
    pub service: String,
    pub revision: u64,
    /// Known once the desired set names the allocation.
    pub spec: Option<WorkloadSpec>,
    /// What is reported to the coordinator.
    pub status: AllocStatus,
    /// Restarts since the last stable run.
    pub attempts: u32,
    /// When the next (re)start may happen.
    pub restart_at: Option<Instant>,
    running_since: Option<Instant>,
    pub readiness: Option<HealthStatus>,
    pub health_detail: String,
    /// The running checks: what they probe (container and published ports) and how to end
    /// them.
    checks: Option<(ProbeTarget, CancellationToken)>,
    /// When the current stop began, if one is in flight.
    stop_started: Option<Instant>,
    /// Identity of the coordinator store whose desired set named it; `None` for one adopted
    /// and not yet named. Allocation ids are unique within one store only.
    pub store: Option<String>,
    /// The allocation's resources from the last desired set that named it: the limits its
    /// container is created with and kept at (0 in a dimension: no limit at create, the
    /// running container's left as it is).
    pub resources: Resources,
    /// The limits the agent last set on a container, with its id (at create or by an
    /// update in place), until the engine reports them: a list may reuse an inspection
    /// from before the update.
    applied: Option<(String, Resources)>,
    /// The last memory working set sampled, with the container it was sampled in.
    pub working_set: Option<(String, u64)>,
    /// What the last look at the container's limits has to say (a lowering refused, an
    /// update that failed): part of the status message while the container runs.
    limits_note: String,
    /// The last failed update in place, if the limits still differ.
    limits_retry: Option<LimitsRetry>,
}

/// An update of a container's limits that failed: what it asked, how often, and when it
/// may be asked again (`None`: never, the engine cannot do it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct LimitsRetry {
    update: Resources,
    failures: u32,
    at: Option<Instant>,
}

/// What to change of a running container's limits: `update` (0 in a dimension: leave it),
/// and why some wanted change is held back, if one is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LimitsPlan {
    pub update: Resources,
    pub note: String,
}

/// Decides how to bring a running container's `current` limits to `wanted` (0 in a
/// dimension of `wanted`: leave it). A lower memory limit is applied only with room over
/// the container's last sampled `working_set`: 10% at least, since cgroup v2 kills a
/// container whose usage is above a new limit (v1 refuses the limit) and the sample is a
/// few seconds old; without a sample it waits for one.
pub(super) fn plan_limits(
    current: Resources,
    wanted: Resources,
    working_set: Option<u64>,
) -> LimitsPlan {
    let mut update = Resources::default();
    let mut note = String::new();
    if wanted.cpu_millis != 0 && wanted.cpu_millis != current.cpu_millis {
        update.cpu_millis = wanted.cpu_millis;
    }
    let memory = wanted.memory_bytes;
    if memory != 0 && memory != current.memory_bytes {
        let lowering = current.memory_bytes == 0 || memory < current.memory_bytes;
        let kept = if current.memory_bytes == 0 {
            "no limit".to_string()
        } else {
            format_bytes(current.memory_bytes)
        };
        match working_set {
            _ if !lowering => update.memory_bytes = memory,
            Some(used) if memory >= used.saturating_add(used / 10) => update.memory_bytes = memory,
            Some(used) if memory < used => {
                note = format!(
                    "memory limit {} is below what the replica uses ({}): kept {kept}",
                    format_bytes(memory),
                    format_bytes(used)
                );
            }
            Some(used) => {
                note = format!(
                    "memory limit {} leaves less than 10% over what the replica uses ({}): \
                     kept {kept}",
                    format_bytes(memory),
                    format_bytes(used)
                );
            }
            None => {
                note = format!(
                    "memory limit {} waits for a first usage sample of the replica: kept {kept}",
                    format_bytes(memory)
                );
            }
        }
    }
    LimitsPlan { update, note }
}

/// Limits for logs and messages: "CPU 250m, memory 96 MiB", naming only the non-zero ones.
fn describe_limits(limits: Resources) -> String {
    let mut parts = Vec::new();
    if limits.cpu_millis > 0 {
        parts.push(format!("CPU {}", format_cpu(limits.cpu_millis)));
    }
    if limits.memory_bytes > 0 {
        parts.push(format!("memory {}", format_bytes(limits.memory_bytes)));
    }
    if parts.is_empty() {
        "no limits".to_string()
    } else {
        parts.join(", ")
    }
}

/// `current` with the non-zero dimensions of `update`, as the engine applies an update.
fn merge_limits(current: Resources, update: Resources) -> Resources {
    Resources {
        cpu_millis: if update.cpu_millis > 0 {
            update.cpu_millis
        } else {
            current.cpu_millis
        },
        memory_bytes: if update.memory_bytes > 0 {
            update.memory_bytes
        } else {
            current.memory_bytes
        },
    }
}

impl Tracked {
    /// A new allocation, no container yet.
    pub fn new(alloc: &Allocation) -> Tracked {
        let mut t = Tracked::blank(&alloc.id, alloc.service.clone(), alloc.revision);
        t.resources = alloc.resources;
        t
    }

    fn blank(id: &str, service: String, revision: u64) -> Tracked {
        Tracked {
            id: id.to_string(),
            service,
            revision,
            spec: None,
            status: AllocStatus::default(),
            attempts: 0,
            restart_at: None,
            running_since: None,
            readiness: None,
            health_detail: String::new(),
            checks: None,
            stop_started: None,
            store: None,
            resources: Resources::default(),
            applied: None,
            working_set: None,
            limits_note: String::new(),
            limits_retry: None,
        }
    }

    /// An allocation found as a running container (agent restart or upgrade).
    pub fn adopted(id: &str, container: &ContainerInfo) -> Tracked {
        let revision = container
            .labels
            .get(labels::REVISION)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let service = container
            .labels
            .get(labels::SERVICE)
            .cloned()
            .unwrap_or_default();
        let mut t = Tracked::blank(id, service, revision);
        info!(alloc = %id, container = %container.id, "adopted running container");
        t.observe(Some(container));
        t
    }

    pub fn is_running(&self) -> bool {
        matches!(
            self.status.state,
            AllocState::Running | AllocState::Healthy | AllocState::Unhealthy
        )
    }

    pub fn container_is(&self, id: &str) -> bool {
        self.status.container_id == id
    }

    /// Updates the status from the container without acting on it.
    pub fn observe(&mut self, container: Option<&ContainerInfo>) {
        match container {
            None => {
                self.status.container_id.clear();
                if !self.status.state.is_terminal() {
                    self.set_state(AllocState::Pending, "no container".into());
                }
            }
            Some(c) => {
                self.status.container_id = c.id.clone();
                self.status.host_ports = c.host_ports.clone();
                match &c.state {
                    ContainerState::Running => {
                        if !self.is_running() {
                            self.set_state(AllocState::Running, String::new());
                        }
                        self.running_since.get_or_insert_with(Instant::now);
                        self.refresh_health_state();
                    }
                    ContainerState::Exited { code } => {
                        if !self.status.state.is_terminal() && self.restart_at.is_none() {
                            self.set_state(
                                AllocState::Starting,
                                format!("exited with code {code}"),
                            );
                        }
                    }
                    ContainerState::Created => {
                        self.set_state(AllocState::Starting, "created, not started".into());
                    }
                    ContainerState::Other(state) => {
                        self.status.message = format!("container is {state}");
                    }
                }
            }
        }
    }

    fn set_state(&mut self, state: AllocState, message: String) {
        if self.status.state != state {
            info!(alloc = %self.id, from = %self.status.state, to = %state, message = %message, "allocation state");
        }
        self.status.state = state;
        self.status.message = message;
    }

    /// Running containers report readiness: healthy without a readiness check.
    pub fn refresh_health_state(&mut self) {
        if !self.is_running() {
            return;
        }
        // An adopted container whose spec is not known yet is running, readiness unknown.
        let Some(spec) = &self.spec else {
            return;
        };
        let has_check = spec.health.is_some();
        let (state, message) = match (has_check, self.readiness) {
            (false, _) | (true, Some(HealthStatus::Healthy)) => {
                (AllocState::Healthy, String::new())
            }
            (true, Some(HealthStatus::Unhealthy)) => (
                AllocState::Unhealthy,
                format!("readiness check failing: {}", self.health_detail),
            ),
            (true, _) => (AllocState::Running, "waiting for readiness check".into()),
        };
        let message = match (message.is_empty(), self.limits_note.is_empty()) {
            (_, true) => message,
            (true, false) => self.limits_note.clone(),
            (false, false) => format!("{message}; {}", self.limits_note),
        };
        self.set_state(state, message);
    }

    /// Creates and starts the container, unless a backoff is running or it gave up.
    pub async fn create(&mut self, placement: &Placement<'_>, runtime: &dyn ContainerRuntime) {
        if self.status.state.is_terminal() || self.stop_started.is_some() {
            return;
        }
        if self.restart_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let Some(spec) = self.spec.clone() else {
            return;
        };
        self.stop_checks();
        self.set_state(
            AllocState::Starting,
            format!("creating container from {}", spec.image),
        );
        if let Err(e) = runtime.ensure_image(&spec.image).await {
            if matches!(e, RuntimeError::ImageUnavailable { .. }) {
                self.status.image_failure = true;
                self.set_state(AllocState::Failed, e.to_string());
                warn!(alloc = %self.id, error = %e, "allocation failed");
                return;
            }
            self.retry_later(format!("cannot prepare image: {e}"));
            return;
        }
        let container = container_spec(&self.id, placement, self.revision, self.resources, &spec);
        let id = match runtime.create(&container).await {
            Ok(id) => id,
            Err(e) => {
                self.retry_later(e.to_string());
                return;
            }
        };
        self.status.container_id = id.clone();
        // A new container: what was said or tried about the limits of an earlier one is over.
        let limits = Resources {
            cpu_millis: container.cpu_millis,
            memory_bytes: container.memory_bytes,
        };
        self.applied = Some((id.clone(), limits));
        self.limits_note.clear();
        self.limits_retry = None;
        match runtime.start(&id).await {
            Ok(()) => {
                info!(alloc = %self.id, container = %id, "container started");
                // Published ports are known once it runs; report them with the first status.
                match runtime.inspect(&id).await {
                    Ok(info) => self.status.host_ports = info.host_ports,
                    Err(e) => {
                        warn!(alloc = %self.id, error = %e, "cannot inspect started container")
                    }
                }
                self.restart_at = None;
                self.running_since = Some(Instant::now());
                self.readiness = None;
                self.set_state(AllocState::Running, String::new());
                self.refresh_health_state();
            }
            Err(e) => self.start_failed(e),
        }
    }

    /// A start that failed: for good when the command cannot run, else retried.
    fn start_failed(&mut self, e: RuntimeError) {
        if matches!(e, RuntimeError::CannotExecute { .. }) {
            self.status.image_failure = true;
            warn!(alloc = %self.id, error = %e, "allocation failed");
            self.set_state(AllocState::Failed, e.to_string());
            return;
        }
        self.retry_later(e.to_string());
    }

    /// A failed create or start: try again after the backoff, or give up.
    fn retry_later(&mut self, reason: String) {
        let Some(policy) = self.spec.as_ref().map(|s| s.restart.clone()) else {
            return;
        };
        if self.attempts >= policy.max_attempts {
            self.set_state(
                AllocState::Failed,
                format!("{reason}; gave up after {} attempts", self.attempts),
            );
            return;
        }
        let wait = delay(&policy, self.attempts);
        self.attempts += 1;
        self.restart_at = Some(Instant::now() + wait);
        warn!(alloc = %self.id, reason = %reason, retry_in = ?wait, "container start failed");
        self.set_state(
            AllocState::Starting,
            format!("{reason}; retrying in {}", humanize(wait)),
        );
    }

    /// Acts on an existing container: keeps it running, restarts it with backoff.
    pub async fn drive(&mut self, c: &ContainerInfo, runtime: &dyn ContainerRuntime) {
        self.status.container_id = c.id.clone();
        self.status.host_ports = c.host_ports.clone();
        if self.status.state == AllocState::Failed || self.stop_started.is_some() {
            return;
        }
        let Some(policy) = self.spec.as_ref().map(|s| s.restart.clone()) else {
            return;
        };
        match &c.state {
            ContainerState::Running => {
                let since = *self.running_since.get_or_insert_with(Instant::now);
                if self.attempts > 0 && since.elapsed() >= policy.reset_after {
                    self.attempts = 0;
                }
                self.restart_at = None;
                if !self.is_running() {
                    self.set_state(AllocState::Running, String::new());
                }
                self.reconcile_limits(c, runtime, &policy).await;
                self.refresh_health_state();
            }
            ContainerState::Created => self.start_again(c, runtime, false).await,
            ContainerState::Exited { code } => {
                self.stop_checks();
                self.running_since = None;
                match self.restart_at {
                    None => match after_exit(&policy, *code, self.attempts) {
                        RestartDecision::RestartAfter(wait) => {
                            self.restart_at = Some(Instant::now() + wait);
                            self.set_state(
                                AllocState::Starting,
                                format!(
                                    "exited with code {code}; back-off {}, restart {} of {}",
                                    humanize(wait),
                                    self.attempts + 1,
                                    policy.max_attempts
                                ),
                            );
                        }
                        RestartDecision::Completed => {
                            self.set_state(AllocState::Stopped, format!("exited with code {code}"));
                        }
                        RestartDecision::GiveUp => {
                            self.set_state(
                                AllocState::Failed,
                                format!(
                                    "exited with code {code}; gave up after {} restarts",
                                    self.attempts
                                ),
                            );
                        }
                    },
                    Some(at) if Instant::now() >= at => self.start_again(c, runtime, true).await,
                    Some(_) => {}
                }
            }
            ContainerState::Other(state) => {
                self.status.message = format!("container is {state}");
            }
        }
    }

    /// The limits `c` runs with: those the agent set on it, until the engine reports them
    /// (then the engine's word, so that a change made behind the agent's back is seen).
    fn limits_of(&mut self, c: &ContainerInfo) -> Resources {
        match &self.applied {
            Some((id, applied)) if *id == c.id && *applied != c.limits => *applied,
            _ => {
                self.applied = None;
                c.limits
            }
        }
    }

    /// Brings the running container `c`'s limits to the allocation's resources in place (no
    /// restart), as far as [`plan_limits`] finds it safe. A failed update is asked again
    /// after the restart policy's backoff, or never if the engine cannot do it; a new target
    /// is asked at once.
    async fn reconcile_limits(
        &mut self,
        c: &ContainerInfo,
        runtime: &dyn ContainerRuntime,
        policy: &RestartPolicy,
    ) {
        let current = self.limits_of(c);
        let working_set = self
            .working_set
            .as_ref()
            .filter(|(id, _)| *id == c.id)
            .map(|(_, bytes)| *bytes);
        let plan = plan_limits(current, self.resources, working_set);
        if plan.update == Resources::default() {
            self.limits_retry = None;
            self.set_limits_note(plan.note);
            return;
        }
        if let Some(retry) = &self.limits_retry {
            let waiting = retry.at.is_none_or(|at| Instant::now() < at);
            if retry.update == plan.update && waiting {
                return;
            }
        }
        match runtime.update_resources(&c.id, plan.update).await {
            Ok(()) => {
                let new = merge_limits(current, plan.update);
                info!(
                    alloc = %self.id,
                    container = %c.id,
                    old = %describe_limits(current),
                    new = %describe_limits(new),
                    "container limits changed in place"
                );
                self.applied = Some((c.id.clone(), new));
                self.limits_retry = None;
                self.set_limits_note(plan.note);
            }
            Err(e) => {
                let failures = match &self.limits_retry {
                    Some(retry) if retry.update == plan.update => retry.failures + 1,
                    _ => 1,
                };
                let wait = (!matches!(e, RuntimeError::Unsupported { .. }))
                    .then(|| delay(policy, failures - 1));
                warn!(
                    alloc = %self.id,
                    container = %c.id,
                    limits = %describe_limits(plan.update),
                    error = %e,
                    retry_in = ?wait,
                    "cannot change container limits in place"
                );
                let mut note = format!(
                    "cannot change limits to {}: {e}",
                    describe_limits(plan.update)
                );
                if let Some(wait) = wait {
                    note.push_str(&format!("; retrying in {}", humanize(wait)));
                }
                if !plan.note.is_empty() {
                    note = format!("{}; {note}", plan.note);
                }
                self.limits_retry = Some(LimitsRetry {
                    update: plan.update,
                    failures,
                    at: wait.map(|wait| Instant::now() + wait),
                });
                self.limits_note = note;
            }
        }
    }

    /// Sets what is said about the limits, warning when it says something new.
    fn set_limits_note(&mut self, note: String) {
        if !note.is_empty() && note != self.limits_note {
            warn!(alloc = %self.id, reason = %note, "container limits not changed");
        }
        self.limits_note = note;
    }

    async fn start_again(
        &mut self,
        c: &ContainerInfo,
        runtime: &dyn ContainerRuntime,
        counts: bool,
    ) {
        match runtime.start(&c.id).await {
            Ok(()) => {
                if counts {
                    self.attempts += 1;
                    self.status.restarts += 1;
                }
                info!(alloc = %self.id, container = %c.id, restarts = self.status.restarts, "container restarted");
                // The engine publishes the ports afresh at every start (a new host port when
                // none is fixed): `c`, listed before the start, shows none or the old ones.
                match runtime.inspect(&c.id).await {
                    Ok(info) => self.status.host_ports = info.host_ports,
                    Err(e) => {
                        warn!(alloc = %self.id, container = %c.id, error = %e, "cannot inspect restarted container; its ports are read on the next pass")
                    }
                }
                self.restart_at = None;
                self.running_since = Some(Instant::now());
                self.readiness = None;
                self.set_state(AllocState::Running, String::new());
                self.refresh_health_state();
            }
            Err(e) => self.start_failed(e),
        }
    }

    /// Starts the readiness and liveness checks of the running container, against the
    /// container and published ports last observed (`status`). Checks follow what they
    /// probe: a new container id or new host ports (a restart publishes them afresh) replace
    /// the running checks with new ones.
    pub fn start_checks(
        &mut self,
        advertise: IpAddr,
        runtime: &Arc<dyn ContainerRuntime>,
        events: &mpsc::Sender<HealthEvent>,
        counters: &crate::metrics::WorkCounters,
    ) {
        let target = ProbeTarget {
            container_id: self.status.container_id.clone(),
            host: advertise,
            host_ports: self.status.host_ports.clone(),
        };
        if self.checked_target() == Some(&target) {
            return;
        }
        let has_checks = self
            .spec
            .as_ref()
            .is_some_and(|s| s.health.is_some() || s.liveness.is_some());
        if let Some((old, _)) = self.checks.as_ref().filter(|_| has_checks) {
            info!(
                alloc = %self.id,
                container = %target.container_id,
                old_container = %old.container_id,
                host_ports = ?target.host_ports,
                old_host_ports = ?old.host_ports,
                "container or its published ports changed; restarting its health checks"
            );
            // What the old checks found was about another container or port.
            self.readiness = None;
            self.refresh_health_state();
        }
        self.stop_checks();
        let Some(spec) = &self.spec else {
            return;
        };
        let cancel = CancellationToken::new();
        for (kind, check) in [
            (CheckKind::Readiness, &spec.health),
            (CheckKind::Liveness, &spec.liveness),
        ] {
            if let Some(check) = check {
                HealthChecker::spawn(
                    self.id.clone(),
                    kind,
                    check.clone(),
                    target.clone(),
                    runtime.clone(),
                    crate::health::Reports {
                        events: events.clone(),
                        probes: counters.probes(&self.service, kind),
                    },
                    cancel.clone(),
                );
            }
        }
        self.checks = Some((target, cancel));
    }

    /// What the running checks probe, if any run.
    pub fn checked_target(&self) -> Option<&ProbeTarget> {
        self.checks.as_ref().map(|(target, _)| target)
    }

    pub fn stop_checks(&mut self) {
        if let Some((_, cancel)) = self.checks.take() {
            cancel.cancel();
        }
    }

    /// Stops and removes the container in the background. The allocation reports `stopped`
    /// at once, so proxies send it no new connections; the container keeps serving open
    /// ones for `drain`, then gets SIGTERM and `grace` before SIGKILL.
    pub fn stop(
        &mut self,
        container: Option<&ContainerInfo>,
        drain: Duration,
        grace: Duration,
        runtime: &Arc<dyn ContainerRuntime>,
    ) {
        self.stop_checks();
        let Some(c) = container else {
            self.stop_started = None;
            self.set_state(AllocState::Stopped, String::new());
            return;
        };
        // A stop in flight is left alone; one that should long be over is tried again.
        let patience = drain + grace + Duration::from_secs(30);
        if self.stop_started.is_some_and(|at| at.elapsed() < patience) {
            return;
        }
        self.stop_started = Some(Instant::now());
        let message = if drain.is_zero() {
            "stopping".to_string()
        } else {
            format!("draining for {}, then stopping", humanize(drain))
        };
        self.set_state(AllocState::Stopped, message);
        let runtime = runtime.clone();
        let id = c.id.clone();
        let alloc = self.id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            if let Err(e) = runtime.stop(&id, grace).await {
                warn!(alloc = %alloc, container = %id, error = %e, "stop failed; removing anyway");
            }
            match runtime.remove(&id).await {
                Ok(()) => info!(alloc = %alloc, container = %id, "container removed"),
                Err(e) => {
                    warn!(alloc = %alloc, container = %id, error = %e, "remove failed; a later pass retries")
                }
            }
        });
    }

    /// Liveness failed: stop the container; the next pass restarts it with backoff.
    pub fn liveness_failed(&mut self, detail: &str, runtime: &Arc<dyn ContainerRuntime>) {
        self.stop_checks();
        self.set_state(
            AllocState::Unhealthy,
            format!("liveness check failed: {detail}"),
        );
        let grace = self
            .spec
            .as_ref()
            .map(|s| s.stop_grace_period)
            .unwrap_or(Duration::from_secs(10));
        let runtime = runtime.clone();
        let id = self.status.container_id.clone();
        tokio::spawn(async move {
            if let Err(e) = runtime.stop(&id, grace).await {
                warn!(container = %id, error = %e, "stopping a container that failed liveness");
            }
        });
    }
}

/// Where a container is created: its node, the address its ports are published on, and
/// the cluster's DNS it resolves names with.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    /// Node id.
    pub node: &'a str,
    /// Address published ports bind to.
    pub advertise: IpAddr,
    /// The cluster's DNS, if the coordinator sent one.
    pub cluster_dns: Option<&'a ClusterDns>,
}

/// Namespace of every workload until Drover has namespaces (its services' names are
/// `NAME.default.svc.DOMAIN`).
pub const NAMESPACE: &str = "default";

/// The container of allocation `alloc`: `spec`'s image, command and ports, the allocation's
/// `resources` as its limits (they follow the allocation when it is resized, not the spec).
fn container_spec(
    alloc: &str,
    placement: &Placement<'_>,
    revision: u64,
    resources: Resources,
    spec: &WorkloadSpec,
) -> ContainerSpec {
    let (node, advertise) = (placement.node, placement.advertise);
    let labels: BTreeMap<String, String> = [
        (labels::ALLOC, alloc.to_string()),
        (labels::SERVICE, spec.name.clone()),
        (labels::REVISION, revision.to_string()),
        (labels::NODE, node.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    ContainerSpec {
        // Unique on an engine that several nodes (or clusters) share.
        name: format!("drover-{alloc}-{}", sanitize(node)),
        image: spec.image.clone(),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: spec.container_env(),
        labels,
        cpu_millis: resources.cpu_millis,
        memory_bytes: resources.memory_bytes,
        ports: spec
            .ports
            .iter()
            .map(|p| PortBinding {
                container_port: p.container_port,
                host_port: p.host_port,
                host_ip: advertise,
            })
            .collect(),
        // Kubernetes' resolver settings: the search path of the pod's namespace, and ndots:5
        // so that `NAME` and `NAME.NAMESPACE` go through the search path first.
        dns: placement.cluster_dns.map(|dns| ContainerDns {
            servers: vec![dns.address],
            search: vec![
                format!("{NAMESPACE}.svc.{}", dns.domain),
                format!("svc.{}", dns.domain),
                dns.domain.clone(),
            ],
            options: vec!["ndots:5".to_string()],
        }),
    }
}

/// Keeps only characters Docker allows in container names.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn humanize(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}
