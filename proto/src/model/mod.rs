//! Domain types shared by the coordinator, the agent and the CLI.
//!
//! These are what the code reasons about; the generated wire types in [`crate::pb`] only exist
//! at process boundaries and convert into these with checks (see [`crate::convert`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod service;

pub use service::{
    ClusterIp, Service, ServicePort, ServiceType, TargetPort, WORKLOAD_LABEL, label_selects,
};

/// CPU and memory, as reserved by an allocation or offered by a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in millicores (1000 = one core).
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

impl Resources {
    /// Resources of `self` plus `other`, saturating.
    pub fn plus(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }

    /// Resources of `self` minus `other`, saturating at zero.
    pub fn minus(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
        }
    }

    /// Whether every dimension of `self` is at most the one of `other`.
    pub fn fits_in(self, other: Resources) -> bool {
        self.cpu_millis <= other.cpu_millis && self.memory_bytes <= other.memory_bytes
    }
}

/// Transport protocol of a port. Only TCP is routed today.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
}

/// One port a workload's containers listen on. Services route to it ([`Service`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortSpec {
    /// Optional name, unique within the workload; a service's `targetPort` may name it.
    pub name: Option<String>,
    /// Port the process listens on inside the container.
    pub container_port: u16,
    /// Fixed host port on the node; `None` lets the engine choose one. A fixed host port
    /// means two replicas can never share a node.
    pub host_port: Option<u16>,
    /// Protocol.
    pub protocol: Protocol,
}

/// How a health check probes a replica.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeAction {
    /// A TCP connect to the container port succeeds.
    Tcp {
        /// Container port to connect to.
        port: u16,
    },
    /// An HTTP GET answers 2xx or 3xx.
    Http {
        /// Container port.
        port: u16,
        /// Request path, starting with `/`.
        path: String,
    },
    /// A command run inside the container exits 0.
    Exec {
        /// Command and arguments.
        command: Vec<String>,
    },
}

/// A periodic health check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HealthCheck {
    /// What to probe.
    pub action: ProbeAction,
    /// Time between probes.
    pub interval: Duration,
    /// How long one probe may take.
    pub timeout: Duration,
    /// Consecutive successes before the replica counts as healthy.
    pub success_threshold: u32,
    /// Consecutive failures before the replica counts as unhealthy.
    pub failure_threshold: u32,
    /// Grace period after start during which failures do not count.
    pub start_period: Duration,
}

impl HealthCheck {
    /// A check with the defaults Kubernetes uses for probes (10 s, 1 s, 1, 3, no start period).
    pub fn with_defaults(action: ProbeAction) -> HealthCheck {
        HealthCheck {
            action,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
            start_period: Duration::ZERO,
        }
    }
}

/// When a container that exited is started again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartMode {
    /// Always restart, whatever the exit code.
    #[default]
    Always,
    /// Restart only on a non-zero exit code.
    OnFailure,
    /// Never restart.
    Never,
}

/// Restart behaviour of a service's replicas.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// When to restart.
    pub mode: RestartMode,
    /// Restarts attempted before the allocation is `failed` and replaced elsewhere.
    pub max_attempts: u32,
    /// First backoff delay; it doubles on every restart.
    pub initial_backoff: Duration,
    /// Ceiling of the backoff delay.
    pub max_backoff: Duration,
    /// A container that ran this long resets the backoff and the attempt count.
    pub reset_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            mode: RestartMode::Always,
            max_attempts: 10,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            reset_after: Duration::from_secs(300),
        }
    }
}

/// Operator of a label constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintOp {
    /// Label equals the single value.
    Eq,
    /// Label is absent or differs from the single value.
    NotEq,
    /// Label is one of the values.
    In,
    /// Label is absent or none of the values.
    NotIn,
    /// Label is present, whatever its value.
    Exists,
    /// Label is absent.
    DoesNotExist,
}

/// A constraint on node labels that a node must satisfy to run a replica.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LabelConstraint {
    /// Label key.
    pub key: String,
    /// Operator.
    pub op: ConstraintOp,
    /// Values the operator compares with (one for `eq`/`not_eq`, none for the existence tests).
    pub values: Vec<String>,
}

impl LabelConstraint {
    /// Whether a node with `labels` satisfies this constraint.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.op {
            ConstraintOp::Eq | ConstraintOp::In => value.is_some_and(|v| self.values.contains(v)),
            ConstraintOp::NotEq | ConstraintOp::NotIn => {
                value.is_none_or(|v| !self.values.contains(v))
            }
            ConstraintOp::Exists => value.is_some(),
            ConstraintOp::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for LabelConstraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let values = self.values.join(",");
        match self.op {
            ConstraintOp::Eq => write!(f, "{}={}", self.key, values),
            ConstraintOp::NotEq => write!(f, "{}!={}", self.key, values),
            ConstraintOp::In => write!(f, "{} in ({})", self.key, values),
            ConstraintOp::NotIn => write!(f, "{} notin ({})", self.key, values),
            ConstraintOp::Exists => write!(f, "{}", self.key),
            ConstraintOp::DoesNotExist => write!(f, "!{}", self.key),
        }
    }
}

/// How replicas are scored across feasible nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpreadMode {
    /// Fewest replicas of this service first, then least allocated node.
    #[default]
    Spread,
    /// Fewest replicas of this service first, then most allocated node (pack nodes full).
    BinPack,
}

/// Where replicas may run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Placement {
    /// Every constraint must hold on a node.
    pub constraints: Vec<LabelConstraint>,
    /// Scoring among feasible nodes.
    pub spread: SpreadMode,
}

/// A replica count written as a number or as a percentage of the desired replicas
/// (`maxSurge: 25%`, `maxUnavailable: 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaCount {
    /// That many replicas.
    Count(u32),
    /// That percentage of the desired replicas.
    Percent(u32),
}

impl ReplicaCount {
    /// The count for `replicas` desired, a percentage rounded up (Kubernetes' rule for
    /// `maxSurge`).
    pub fn round_up(self, replicas: u32) -> u32 {
        match self {
            ReplicaCount::Count(n) => n,
            ReplicaCount::Percent(p) => {
                let scaled = u64::from(replicas) * u64::from(p);
                u32::try_from(scaled.div_ceil(100)).unwrap_or(u32::MAX)
            }
        }
    }

    /// The count for `replicas` desired, a percentage rounded down (Kubernetes' rule for
    /// `maxUnavailable`).
    pub fn round_down(self, replicas: u32) -> u32 {
        match self {
            ReplicaCount::Count(n) => n,
            ReplicaCount::Percent(p) => {
                let scaled = u64::from(replicas) * u64::from(p);
                u32::try_from(scaled / 100).unwrap_or(u32::MAX)
            }
        }
    }
}

impl fmt::Display for ReplicaCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaCount::Count(n) => write!(f, "{n}"),
            ReplicaCount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// How a new revision replaces the old one's replicas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateKind {
    /// New replicas start while old ones serve, within `max_surge` and `max_unavailable`.
    #[default]
    RollingUpdate,
    /// Every old replica stops before the first new one starts.
    Recreate,
}

impl UpdateKind {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateKind::RollingUpdate => "RollingUpdate",
            UpdateKind::Recreate => "Recreate",
        }
    }
}

/// One canary step: the new revision gets `weight` percent of the connections, and the
/// step lasts at least `pause` while the analysis watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CanaryStep {
    /// Percent of new connections sent to the new revision, 1 to 99.
    pub weight: u32,
    /// Least time the step lasts.
    pub pause: Duration,
}

/// How a canary's connection outcomes are judged against the stable revision's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CanaryAnalysis {
    /// Largest failure rate of the canary above the stable revision's, in basis points
    /// (100 = 1 %), before the canary is aborted.
    pub max_failure_bp: u32,
    /// Connections the canary must have had in a step before it can be judged.
    pub min_sample: u64,
}

impl Default for CanaryAnalysis {
    fn default() -> Self {
        CanaryAnalysis {
            max_failure_bp: 100,
            min_sample: 100,
        }
    }
}

/// How a new revision replaces the old one: the rollout's settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UpdateStrategy {
    /// Rolling update or recreate.
    pub kind: UpdateKind,
    /// Replicas placed above the desired count during an update (percentages round up).
    pub max_surge: ReplicaCount,
    /// Replicas that may be unavailable during an update or a drain (percentages round
    /// down).
    pub max_unavailable: ReplicaCount,
    /// A new replica counts as available only once it has been ready this long without a
    /// restart.
    pub min_ready: Duration,
    /// A rollout that makes no progress (no newly available replica, no step passed) for
    /// this long fails.
    pub progress_deadline: Duration,
    /// A failed rollout goes back to the last stable revision by itself.
    pub auto_revert: bool,
    /// Canary steps; empty means a plain rolling update.
    pub canary: Vec<CanaryStep>,
    /// How canary steps are judged.
    pub analysis: CanaryAnalysis,
    /// Old revisions kept for `drover rollout undo`.
    pub revision_history_limit: u32,
    /// `Some(true)` pauses rollouts, `Some(false)` resumes them, `None` leaves the service's
    /// pause as it is.
    pub paused: Option<bool>,
}

impl UpdateStrategy {
    /// Kubernetes' defaults (25 % surge, 25 % unavailable, 600 s deadline, 10 revisions)
    /// with automatic revert on, as Drover's own manifests have it.
    pub fn drover_defaults() -> UpdateStrategy {
        UpdateStrategy {
            kind: UpdateKind::RollingUpdate,
            max_surge: ReplicaCount::Percent(25),
            max_unavailable: ReplicaCount::Percent(25),
            min_ready: Duration::ZERO,
            progress_deadline: Duration::from_secs(600),
            auto_revert: true,
            canary: Vec::new(),
            analysis: CanaryAnalysis::default(),
            revision_history_limit: 10,
            paused: None,
        }
    }

    /// `(max_surge, max_unavailable)` resolved for `replicas` desired. When both come to 0
    /// (small percentages of few replicas), one replica may be unavailable, as Kubernetes
    /// does, so an update can always progress.
    pub fn resolve(&self, replicas: u32) -> (u32, u32) {
        let surge = self.max_surge.round_up(replicas);
        let unavailable = self.max_unavailable.round_down(replicas);
        if surge == 0 && unavailable == 0 {
            (0, 1)
        } else {
            (surge, unavailable)
        }
    }
}

impl Default for UpdateStrategy {
    fn default() -> Self {
        UpdateStrategy::drover_defaults()
    }
}

/// How a service proxy picks a replica for a new connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Power of two choices on active connections, weighted.
    LeastConn,
}

impl Strategy {
    /// The manifest spelling of the strategy.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::Random => "random",
            Strategy::LeastConn => "least_conn",
        }
    }
}

/// Traffic policy of a workload: how its revisions share the traffic its services send it.
/// (How a replica is picked is the service's [`Service::strategy`].)
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Traffic {
    /// Weight per revision number; empty means one pool: every running replica, whatever its
    /// revision, by its endpoint weight (old replicas keep serving while new ones start).
    pub revision_weights: BTreeMap<u64, u32>,
}

/// A secret value (a password, an API key). Its `Debug` shows no value, so a spec can be
/// logged; the value is read only through [`Secret::expose`], where it is used.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that needs it (the container's environment, the store's
    /// sealing).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length of the value in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<withheld>)")
    }
}

/// Everything an operator declares about a workload: what is placed, scaled and rolled out
/// (a Deployment, or the workload half of Drover's own document). Parsed from manifests,
/// validated, stored. Services ([`Service`]) route to its replicas.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// DNS-1123 label, unique in the cluster.
    pub name: String,
    /// Container image reference.
    pub image: String,
    /// Entrypoint override; empty keeps the image's.
    pub command: Vec<String>,
    /// Arguments override; empty keeps the image's.
    pub args: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values are secrets: sealed at rest in the coordinator's
    /// store, withheld from views without the admin role, sent only to the node that runs
    /// the replica. A name is never in both maps.
    #[serde(default)]
    pub secret_env: BTreeMap<String, Secret>,
    /// Desired number of replicas.
    pub replicas: u32,
    /// Resources reserved per replica (and enforced as limits).
    pub resources: Resources,
    /// Ports the container listens on.
    pub ports: Vec<PortSpec>,
    /// Readiness: a replica receives traffic only while this passes.
    pub health: Option<HealthCheck>,
    /// Liveness: a replica whose check fails is restarted.
    pub liveness: Option<HealthCheck>,
    /// Restart behaviour.
    pub restart: RestartPolicy,
    /// Placement constraints and scoring.
    pub placement: Placement,
    /// Update strategy for new revisions.
    pub update: UpdateStrategy,
    /// Traffic policy.
    pub traffic: Traffic,
    /// Time a container gets between SIGTERM and SIGKILL.
    pub stop_grace_period: Duration,
    /// Stop the replicas of this service after this long without the coordinator.
    pub stop_after_disconnect: Option<Duration>,
    /// Free-form labels (from the manifest's metadata).
    pub labels: BTreeMap<String, String>,
    /// Labels of the workload's replicas (a Deployment's pod template labels; the metadata
    /// labels in Drover's format): what a service's selector matches, together with the
    /// implicit [`WORKLOAD_LABEL`].
    #[serde(default)]
    pub pod_labels: BTreeMap<String, String>,
    /// Horizontal autoscaling; `None`: the replica count is the operator's.
    pub autoscale: Option<Autoscale>,
    /// Vertical autoscaling; `None`: the resources are the operator's.
    #[serde(default)]
    pub vertical_autoscale: Option<VerticalAutoscale>,
}

impl WorkloadSpec {
    /// Every environment variable a container of this spec gets, secrets included.
    pub fn container_env(&self) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        env.extend(
            self.secret_env
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_string())),
        );
        env
    }

    /// A spec with defaults for everything but the name and image.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> WorkloadSpec {
        WorkloadSpec {
            name: name.into(),
            image: image.into(),
            command: Vec::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            secret_env: BTreeMap::new(),
            replicas: 1,
            resources: Resources::default(),
            ports: Vec::new(),
            health: None,
            liveness: None,
            restart: RestartPolicy::default(),
            placement: Placement::default(),
            update: UpdateStrategy::default(),
            traffic: Traffic::default(),
            stop_grace_period: Duration::from_secs(10),
            stop_after_disconnect: None,
            labels: BTreeMap::new(),
            pod_labels: BTreeMap::new(),
            autoscale: None,
            vertical_autoscale: None,
        }
    }

    /// Whether `other` differs from `self` in what its containers run (anything but the
    /// replica count, the update strategy, the traffic policy and autoscaling, horizontal or
    /// vertical). Such a change makes a new revision.
    pub fn template_differs(&self, other: &WorkloadSpec) -> bool {
        let strip = |spec: &WorkloadSpec| WorkloadSpec {
            replicas: 0,
            traffic: Traffic::default(),
            update: UpdateStrategy::default(),
            autoscale: None,
            vertical_autoscale: None,
            ..spec.clone()
        };
        strip(self) != strip(other)
    }

    /// Host ports that a replica of this spec occupies on its node.
    pub fn host_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports.iter().filter_map(|p| p.host_port)
    }
}

/// Horizontal autoscaling of a workload: Drover's `autoscale:`, or a
/// HorizontalPodAutoscaler (autoscaling/v2) targeting it; the coordinator runs the
/// Kubernetes algorithm on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Autoscale {
    /// Fewest replicas (≥ 1).
    pub min_replicas: u32,
    /// Most replicas (≥ min).
    pub max_replicas: u32,
    /// What it scales on; the largest proposal wins.
    pub metrics: Vec<ScaleMetric>,
    /// Scaling up.
    pub scale_up: ScaleRules,
    /// Scaling down.
    pub scale_down: ScaleRules,
    /// The HorizontalPodAutoscaler it came from; `None`: the workload's own spec.
    pub source: Option<String>,
}

/// Vertical autoscaling of a workload: Drover's `verticalAutoscale:`, or a
/// VerticalPodAutoscaler (autoscaling.k8s.io/v1) targeting it. The coordinator recommends
/// CPU and memory per replica from the replicas' usage, as VPA's recommender does, and
/// `mode` says what happens with the recommendation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VerticalAutoscale {
    /// What the recommendation changes.
    pub mode: VerticalMode,
    /// Floors; a zero dimension has none.
    pub min_allowed: Resources,
    /// Ceilings; a zero dimension has none.
    pub max_allowed: Resources,
    /// Whether it sets the CPU limit.
    pub controls_cpu: bool,
    /// Whether it sets the memory limit.
    pub controls_memory: bool,
    /// The VerticalPodAutoscaler it came from; `None`: the workload's own spec.
    pub source: Option<String>,
}

/// An autoscaler applied on its own, for a workload already in the cluster: a
/// HorizontalPodAutoscaler or VerticalPodAutoscaler whose Deployment is not in the same
/// apply. Like Kubernetes' own objects it outlives applies of its Deployment, until it is
/// deleted by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Autoscaler {
    /// The workload it scales.
    pub target: String,
    /// Its kind and settings (their `source` is its name).
    pub kind: AutoscalerKind,
}

/// A horizontal or a vertical autoscaler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AutoscalerKind {
    /// A HorizontalPodAutoscaler.
    Horizontal(Autoscale),
    /// A VerticalPodAutoscaler.
    Vertical(VerticalAutoscale),
}

impl Autoscaler {
    /// Its name (the manifest's `metadata.name`).
    pub fn name(&self) -> &str {
        let source = match &self.kind {
            AutoscalerKind::Horizontal(a) => &a.source,
            AutoscalerKind::Vertical(v) => &v.source,
        };
        source.as_deref().unwrap_or_default()
    }

    /// Its Kubernetes kind.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            AutoscalerKind::Horizontal(_) => "HorizontalPodAutoscaler",
            AutoscalerKind::Vertical(_) => "VerticalPodAutoscaler",
        }
    }
}

/// What a vertical autoscaler does with its recommendation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VerticalMode {
    /// Recommend only (shown in `drover status`).
    Off,
    /// New replicas start with the recommendation; running ones keep theirs.
    Initial,
    /// Running replicas' limits change in place, without a restart; a replica whose node
    /// cannot hold the increase is replaced on another node.
    InPlace,
    /// Replicas are replaced, one at a time, by replicas with the recommendation.
    Recreate,
}

impl VerticalMode {
    /// The mode as manifests spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            VerticalMode::Off => "Off",
            VerticalMode::Initial => "Initial",
            VerticalMode::InPlace => "InPlace",
            VerticalMode::Recreate => "Recreate",
        }
    }
}

/// A resource an autoscaler measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleResource {
    /// CPU (millicores).
    Cpu,
    /// Memory working set (bytes).
    Memory,
    /// New connections per second handed to a replica by every node's proxy (thousandths).
    ConnectionsPerSecond,
    /// Connections open to a replica through the proxies (thousandths).
    ActiveConnections,
}

impl ScaleResource {
    /// Its name in manifests and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ScaleResource::Cpu => "cpu",
            ScaleResource::Memory => "memory",
            ScaleResource::ConnectionsPerSecond => "connections_per_second",
            ScaleResource::ActiveConnections => "active_connections",
        }
    }

    /// Measured by the proxies rather than the container's cgroup.
    pub fn is_traffic(self) -> bool {
        matches!(
            self,
            ScaleResource::ConnectionsPerSecond | ScaleResource::ActiveConnections
        )
    }
}

/// What one metric aims at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleTarget {
    /// Average usage as a percent of the replicas' requests.
    Utilization(u32),
    /// Average per replica: millicores, or bytes.
    AverageValue(u64),
}

/// One metric of an autoscaler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ScaleMetric {
    /// What is measured.
    pub resource: ScaleResource,
    /// Its target.
    pub target: ScaleTarget,
}

/// How proposals in one direction combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScaleSelect {
    /// The largest change.
    #[default]
    Max,
    /// The smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// One direction's behaviour (a HorizontalPodAutoscaler's `HPAScalingRules`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ScaleRules {
    /// Recommendations over this long are considered.
    pub stabilization_seconds: u32,
    /// How the policies combine.
    pub select: ScaleSelect,
    /// Rate limits.
    pub policies: Vec<ScalePolicy>,
}

impl ScaleRules {
    /// Kubernetes' default for scaling up: at once, by max(4 replicas, 100 %) per 15 s.
    pub fn default_up() -> ScaleRules {
        ScaleRules {
            stabilization_seconds: 0,
            select: ScaleSelect::Max,
            policies: vec![
                ScalePolicy {
                    percent: false,
                    value: 4,
                    period_seconds: 15,
                },
                ScalePolicy {
                    percent: true,
                    value: 100,
                    period_seconds: 15,
                },
            ],
        }
    }

    /// Kubernetes' default for scaling down: after 300 s, by 100 % per 15 s.
    pub fn default_down() -> ScaleRules {
        ScaleRules {
            stabilization_seconds: 300,
            select: ScaleSelect::Max,
            policies: vec![ScalePolicy {
                percent: true,
                value: 100,
                period_seconds: 15,
            }],
        }
    }
}

/// A rate limit: `value` replicas (or percent) per `period_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ScalePolicy {
    /// `value` is a percent of the replicas at the period's start.
    pub percent: bool,
    /// Replicas or percent.
    pub value: u32,
    /// The period.
    pub period_seconds: u32,
}

/// What the coordinator wants of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    /// Keep it running.
    Run,
    /// Stop it and remove its container.
    Stop,
}

/// State of an allocation as its agent reports it (plus `Lost`, which the coordinator sets).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocState {
    /// Placed, not yet reported by the agent.
    #[default]
    Pending,
    /// Container being created or started.
    Starting,
    /// Running, readiness not yet passed (or no readiness check).
    Running,
    /// Running and passing its readiness check.
    Healthy,
    /// Running and failing its readiness check.
    Unhealthy,
    /// Gave up after restarts, or could not be created.
    Failed,
    /// Stopped on purpose.
    Stopped,
    /// Its node is down.
    Lost,
}

impl AllocState {
    /// The lowercase name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            AllocState::Pending => "pending",
            AllocState::Starting => "starting",
            AllocState::Running => "running",
            AllocState::Healthy => "healthy",
            AllocState::Unhealthy => "unhealthy",
            AllocState::Failed => "failed",
            AllocState::Stopped => "stopped",
            AllocState::Lost => "lost",
        }
    }

    /// Whether the allocation has ended and will not run again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            AllocState::Failed | AllocState::Stopped | AllocState::Lost
        )
    }
}

impl fmt::Display for AllocState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One replica of one revision of a service, placed on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// Unique, never reused.
    pub id: String,
    /// Service name.
    pub service: String,
    /// Spec revision the replica runs.
    pub revision: u64,
    /// Node it is placed on.
    pub node: String,
    /// Resources reserved on the node.
    pub resources: Resources,
    /// What the coordinator wants.
    pub desired: DesiredState,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
}

/// What an agent last reported about an allocation. Not durable: rebuilt from agents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocStatus {
    /// Observed state.
    pub state: AllocState,
    /// Why it is in that state, when there is something to say.
    pub message: String,
    /// Container id in the engine.
    pub container_id: String,
    /// Times the agent restarted the container.
    pub restarts: u32,
    /// Host ports published, container port → host port.
    pub host_ports: BTreeMap<u16, u16>,
    /// Last measured usage.
    pub usage: Resources,
    /// A `Failed` state follows the image (missing, or its command cannot run): every node
    /// would fail the same way, so the revision fails instead of moving between nodes.
    pub image_failure: bool,
}

/// A node as its agent describes itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Stable node id.
    pub id: String,
    /// Changes on every agent start.
    pub generation: u64,
    /// Address other nodes and clients reach it on.
    pub address: String,
    /// Resources available to workloads (host reservation already taken off).
    pub capacity: Resources,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
}

/// Operator flags on a node; durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFlags {
    /// No new placements.
    pub cordoned: bool,
    /// Allocations are being moved away.
    pub draining: bool,
}

/// Whether a node can take work, as the coordinator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeHealth {
    /// Connected and alive.
    Ready,
    /// Not connected to this coordinator.
    Disconnected,
    /// Declared dead.
    Down,
}

impl NodeHealth {
    /// The lowercase name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeHealth::Ready => "ready",
            NodeHealth::Disconnected => "disconnected",
            NodeHealth::Down => "down",
        }
    }
}

/// Bytes as a short human string with binary units ("512 MiB", "2 GiB").
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 || unit == 0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Millicores as a short human string ("500m", "2").
pub fn format_cpu(millis: u64) -> String {
    if millis % 1000 == 0 {
        format!("{}", millis / 1000)
    } else {
        format!("{millis}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraint_operators() {
        let labels: BTreeMap<String, String> = [("zone".to_string(), "a".to_string())]
            .into_iter()
            .collect();
        let c = |op, values: &[&str]| LabelConstraint {
            key: "zone".into(),
            op,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        assert!(c(ConstraintOp::Eq, &["a"]).matches(&labels));
        assert!(!c(ConstraintOp::Eq, &["b"]).matches(&labels));
        assert!(c(ConstraintOp::NotEq, &["b"]).matches(&labels));
        assert!(c(ConstraintOp::In, &["b", "a"]).matches(&labels));
        assert!(!c(ConstraintOp::NotIn, &["a"]).matches(&labels));
        assert!(c(ConstraintOp::Exists, &[]).matches(&labels));
        assert!(!c(ConstraintOp::DoesNotExist, &[]).matches(&labels));
        assert!(c(ConstraintOp::NotEq, &["a"]).matches(&BTreeMap::new()));
    }

    #[test]
    fn replicas_and_traffic_do_not_make_a_revision() {
        let a = WorkloadSpec::new("web", "nginx");
        let mut b = a.clone();
        b.replicas = 7;
        b.traffic.revision_weights = BTreeMap::from([(1, 90), (2, 10)]);
        b.update.max_surge = ReplicaCount::Count(3);
        assert!(!a.template_differs(&b));
        let mut relabelled = b.clone();
        relabelled.pod_labels.insert("v".into(), "2".into());
        assert!(
            a.template_differs(&relabelled),
            "pod labels are the template's"
        );
        b.image = "nginx:2".into();
        assert!(a.template_differs(&b));
    }

    #[test]
    fn percentages_round_as_kubernetes_does() {
        let update = UpdateStrategy::default();
        assert_eq!(
            update.resolve(6),
            (2, 1),
            "25% of 6: surge up, unavailable down"
        );
        assert_eq!(update.resolve(4), (1, 1));
        assert_eq!(update.resolve(1), (1, 0));
        let zero = UpdateStrategy {
            max_surge: ReplicaCount::Percent(10),
            max_unavailable: ReplicaCount::Percent(10),
            ..UpdateStrategy::default()
        };
        assert_eq!(zero.resolve(0), (0, 1), "both 0: one may be unavailable");
        assert_eq!(zero.resolve(30), (3, 3));
        assert_eq!(ReplicaCount::Count(2).round_up(100), 2);
    }

    #[test]
    fn human_units() {
        assert_eq!(format_bytes(2 << 30), "2 GiB");
        assert_eq!(format_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(format_bytes(100), "100 B");
        assert_eq!(format_cpu(500), "500m");
        assert_eq!(format_cpu(2000), "2");
    }
}

/// Connection outcomes one node's proxies saw for the replicas of one revision of a service,
/// counted since the agent started (cumulative; a reader takes differences).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionTraffic {
    /// Service name.
    pub service: String,
    /// Revision of the service the replicas run.
    pub revision: u64,
    /// Connections handed to a replica of the revision; every connect attempt counts, so a
    /// client connection retried on another replica counts once per replica tried.
    pub connections: u64,
    /// Of those: the connect failed (refused, timed out), or the replica closed or reset the
    /// connection before its first answer byte.
    pub failed: u64,
}

/// Connections one node's proxies made to one replica (on any node), counted since the
/// agent started: the per-replica traffic an autoscaler can target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaTraffic {
    /// The allocation.
    pub allocation_id: String,
    /// Connections handed to it (cumulative).
    pub connections: u64,
    /// Of those, open now.
    pub active: u64,
}

/// What one replica used over its agent's last sampling interval, from its cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AllocUsage {
    /// The allocation.
    pub allocation_id: String,
    /// CPU, averaged over the interval, in millicores.
    pub cpu_millis: u64,
    /// Memory that cannot be reclaimed (usage minus inactive file cache), in bytes.
    pub memory_working_set_bytes: u64,
    /// The container's memory limit, if any.
    pub memory_limit_bytes: Option<u64>,
    /// OOM kills in the container's cgroup since the container started.
    pub oom_kills: u64,
    /// The interval, in milliseconds.
    pub window_ms: u64,
}

/// One allocation of a node's desired set, with the spec of the revision it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredAllocation {
    /// The allocation.
    pub allocation: Allocation,
    /// The spec of its revision.
    pub spec: WorkloadSpec,
}

/// A node's complete desired set, as the coordinator sends it: anything not in it should
/// not run there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredSet {
    /// Grows with every change; an agent applies only versions newer than the one it has.
    pub version: u64,
    /// The allocations placed on the node.
    pub allocations: Vec<DesiredAllocation>,
    /// Identity of the coordinator's store; versions of another store are not comparable.
    pub store_id: String,
    /// The cluster's DNS, the resolver of the node's containers.
    pub cluster_dns: Option<ClusterDns>,
}

/// The cluster's DNS: every agent answers on `address` for names in `domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    /// A cluster address (the service network's 10th), on every node's `lo`.
    pub address: std::net::Ipv4Addr,
    /// The cluster domain, e.g. `cluster.local`.
    pub domain: String,
    /// The service network (`a.b.c.d/len`) cluster addresses come from; agents remove only
    /// addresses inside it from `lo`.
    pub service_network: String,
}

/// One replica a service proxy may send traffic to, as the coordinator decides. Gossip may
/// only take it out of rotation (its node dead or leaving, the replica not healthy); the
/// address is this one, never gossip's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEndpoint {
    /// Allocation id.
    pub allocation_id: String,
    /// Node it runs on: the only gossip member whose facts about it count.
    pub node: String,
    /// Revision it runs.
    pub revision: u64,
    /// Node address and host port of the service's container port; `None` until the
    /// agent has reported the port (such an endpoint is not routed).
    pub address: Option<std::net::SocketAddr>,
    /// Relative weight within its pool.
    pub weight: u32,
    /// Workload of the allocation (the proxies count outcomes per workload and revision).
    pub workload: String,
    /// Traffic pool the endpoint is in ([`ServiceRoute::pool_weights`]): its revision
    /// when the service selects one workload, else `workload index << 32 | revision`.
    pub pool: u64,
    /// The workload's container port the traffic goes to (through the host port).
    pub container_port: u16,
}

/// How the proxies route one port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRoute {
    /// Service name.
    pub service: String,
    /// The service's own port, on its cluster address.
    pub port: u16,
    /// The port's name, if it has one (SRV records).
    pub port_name: Option<String>,
    /// The service's cluster address, which every node makes reachable on `port`; `None`
    /// for a headless service.
    pub cluster_ip: Option<std::net::Ipv4Addr>,
    /// Port every node's proxy address listens on (a NodePort's node port, a
    /// LoadBalancer's port); `None` for ClusterIP and headless services.
    pub node_port: Option<u16>,
    /// Replica selection strategy.
    pub strategy: Strategy,
    /// Weight per pool (a workload's revision); empty means one pool of every endpoint.
    pub pool_weights: BTreeMap<u64, u32>,
    /// Every replica that should run, routed or not yet.
    pub endpoints: Vec<RouteEndpoint>,
}

/// The route policy the coordinator sends every agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Grows with every change; an agent applies only versions newer than the one it has.
    pub version: u64,
    /// One entry per port of every service.
    pub services: Vec<ServiceRoute>,
    /// Identity of the coordinator's store; versions of another store are not comparable.
    pub store_id: String,
}
