//! The coordinator's Prometheus metrics: counters and histograms its work updates as it
//! goes (reconcile passes, store commits, events by kind, placements, failovers, API
//! requests), and gauges taken from the state at each scrape (workloads, services,
//! allocations and nodes by state, rollouts by phase, per workload its replicas, autoscaler
//! bounds and vertical recommendation, connected agents). Names follow Prometheus' rules
//! (`drover_` prefix, base units, `_total` counters); labels are bounded: state and kind
//! names, workloads, nodes.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use drover_proto::model::{AllocState, DesiredState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::events;
use crate::state::ClusterState;
use crate::store::EventRecord;

/// A `kind` label (an event kind, a state, a phase).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// A `state` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// A `workload` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabel {
    workload: String,
}

/// A gRPC request's method and status code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `Service/Method`, e.g. `Control/Apply`.
    pub method: String,
    /// The gRPC status code's name, e.g. `Ok`, `InvalidArgument`.
    pub code: String,
}

/// What the coordinator counts as it works; cheap to clone (every metric is shared).
#[derive(Debug, Clone)]
pub struct Metrics {
    reconcile: Histogram,
    commit: Histogram,
    events: Family<KindLabel, Counter>,
    placements: Counter,
    placement_failures: Counter,
    failovers: Counter,
    requests: Family<RequestLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        // 0.5 ms to about 16 s.
        let buckets = || exponential_buckets(0.0005, 2.0, 16);
        Metrics {
            reconcile: Histogram::new(buckets()),
            commit: Histogram::new(buckets()),
            events: Family::default(),
            placements: Counter::default(),
            placement_failures: Counter::default(),
            failovers: Counter::default(),
            requests: Family::default(),
        }
    }
}

impl Metrics {
    /// One reconcile round (the passes until stable, and the push) took `took`.
    pub fn reconciled(&self, took: Duration) {
        self.reconcile.observe(took.as_secs_f64());
    }

    /// One store commit took `took`.
    pub fn committed(&self, took: Duration) {
        self.commit.observe(took.as_secs_f64());
    }

    /// Counts committed events, by kind and into the named counters.
    pub fn observe_events(&self, committed: &[EventRecord]) {
        for event in committed {
            self.events
                .get_or_create(&KindLabel {
                    kind: event.kind.clone(),
                })
                .inc();
            match event.kind.as_str() {
                events::ALLOCATION_PLACED => self.placements.inc(),
                events::PLACEMENT_FAILED => self.placement_failures.inc(),
                events::ALLOCATION_RESCHEDULED => self.failovers.inc(),
                _ => 0,
            };
        }
    }

    /// One gRPC request answered.
    pub fn request(&self, labels: &RequestLabels) {
        self.requests.get_or_create(labels).inc();
    }

    /// Everything, with the gauges of `state` now (`connected`: agents with a session).
    pub fn registry(&self, state: &ClusterState, connected: usize) -> Registry {
        let mut registry = Registry::with_prefix("drover_coordinator");
        registry.register_with_unit(
            "reconcile_duration",
            "Time of a reconcile round: the passes until nothing changes, and the push to agents",
            Unit::Seconds,
            self.reconcile.clone(),
        );
        registry.register_with_unit(
            "store_commit_duration",
            "Time of a durable store commit",
            Unit::Seconds,
            self.commit.clone(),
        );
        registry.register("events", "Events committed, by kind", self.events.clone());
        registry.register(
            "placements",
            "Replicas placed on a node",
            self.placements.clone(),
        );
        registry.register(
            "placement_failures",
            "Times replicas of a workload could not be placed (each new reason once)",
            self.placement_failures.clone(),
        );
        registry.register(
            "failovers",
            "Replicas placed again elsewhere because their node was lost",
            self.failovers.clone(),
        );
        registry.register(
            "api_requests",
            "gRPC requests answered, by method and status code",
            self.requests.clone(),
        );
        register_state(&mut registry, state, connected);
        registry
    }
}

fn gauge(value: usize) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    gauge
}

/// A gauge family with one series per key of `counts`.
fn family<L, K>(counts: &BTreeMap<K, usize>, label: impl Fn(&K) -> L) -> Family<L, Gauge>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family: Family<L, Gauge> = Family::default();
    for (key, count) in counts {
        family
            .get_or_create(&label(key))
            .set(i64::try_from(*count).unwrap_or(i64::MAX));
    }
    family
}

/// The gauges read from the state.
fn register_state(registry: &mut Registry, state: &ClusterState, connected: usize) {
    registry.register(
        "workloads",
        "Workloads stored",
        gauge(state.stored.workloads.len()),
    );
    registry.register(
        "services",
        "Services stored",
        gauge(state.stored.services.len()),
    );
    registry.register(
        "connected_agents",
        "Agents with an open session",
        gauge(connected),
    );

    // Every state named, so a series at zero exists rather than vanishing.
    let mut allocations: BTreeMap<&str, usize> = [
        AllocState::Pending,
        AllocState::Starting,
        AllocState::Running,
        AllocState::Healthy,
        AllocState::Unhealthy,
        AllocState::Failed,
        AllocState::Stopped,
        AllocState::Lost,
    ]
    .into_iter()
    .map(|s| (s.as_str(), 0))
    .collect();
    let mut desired: BTreeMap<String, usize> = BTreeMap::new();
    let mut healthy: BTreeMap<String, usize> = BTreeMap::new();
    for alloc in state.stored.allocations.values() {
        if alloc.desired != DesiredState::Run {
            continue;
        }
        let observed = state.alloc_state(&alloc.id);
        *allocations.entry(observed.as_str()).or_default() += 1;
        if observed == AllocState::Healthy {
            *healthy.entry(alloc.service.clone()).or_default() += 1;
        }
    }
    registry.register(
        "allocations",
        "Replicas the coordinator wants running, by the state their agents report",
        family(&allocations, |s| StateLabel {
            state: (*s).to_string(),
        }),
    );

    let mut nodes: BTreeMap<&str, usize> = ["ready", "disconnected", "down"]
        .into_iter()
        .map(|s| (s, 0))
        .collect();
    for node in state.nodes.keys() {
        *nodes.entry(state.node_health(node).as_str()).or_default() += 1;
    }
    registry.register(
        "nodes",
        "Nodes known since this coordinator started, by health",
        family(&nodes, |s| StateLabel {
            state: (*s).to_string(),
        }),
    );

    let mut rollouts: BTreeMap<&str, usize> = ["progressing", "complete", "failed"]
        .into_iter()
        .map(|s| (s, 0))
        .collect();
    for record in state.stored.workloads.values() {
        desired.insert(record.name.clone(), record.replicas as usize);
        healthy.entry(record.name.clone()).or_default();
        if let Some(rollout) = &record.rollout {
            *rollouts.entry(rollout.phase.as_str()).or_default() += 1;
        }
    }
    registry.register(
        "rollouts",
        "Workloads by the phase of their current or last rollout",
        family(&rollouts, |s| KindLabel {
            kind: (*s).to_string(),
        }),
    );
    let by_workload = |name: &String| WorkloadLabel {
        workload: name.clone(),
    };
    registry.register(
        "workload_desired_replicas",
        "Replicas a workload wants (set by the operator or its autoscaler)",
        family(&desired, by_workload),
    );
    registry.register(
        "workload_healthy_replicas",
        "A workload's replicas that pass their readiness check",
        family(&healthy, by_workload),
    );
    register_autoscalers(registry, state);
}

/// Per autoscaled workload: its bounds, and the vertical recommendation.
fn register_autoscalers(registry: &mut Registry, state: &ClusterState) {
    let (min, max): (BTreeMap<String, usize>, BTreeMap<String, usize>) = state
        .stored
        .workloads
        .values()
        .filter_map(|r| r.autoscale.as_ref().map(|a| (r.name.clone(), a)))
        .map(|(name, a)| {
            (
                (name.clone(), a.min_replicas as usize),
                (name, a.max_replicas as usize),
            )
        })
        .unzip();
    let by_workload = |name: &String| WorkloadLabel {
        workload: name.clone(),
    };
    registry.register(
        "autoscaler_min_replicas",
        "A horizontal autoscaler's fewest replicas",
        family(&min, by_workload),
    );
    registry.register(
        "autoscaler_max_replicas",
        "A horizontal autoscaler's most replicas",
        family(&max, by_workload),
    );
    let cpu: Family<WorkloadLabel, Gauge<f64, AtomicU64>> = Family::default();
    let memory: Family<WorkloadLabel, Gauge> = Family::default();
    for (name, recommendation) in &state.recommendations {
        let label = by_workload(name);
        cpu.get_or_create(&label)
            .set(recommendation.target.cpu_millis as f64 / 1000.0);
        memory
            .get_or_create(&label)
            .set(i64::try_from(recommendation.target.memory_bytes).unwrap_or(i64::MAX));
    }
    registry.register(
        "recommended_cpu",
        "The vertical autoscaler's CPU target per replica, in cores",
        cpu,
    );
    registry.register_with_unit(
        "recommended_memory",
        "The vertical autoscaler's memory target per replica",
        Unit::Bytes,
        memory,
    );
}

#[cfg(test)]
mod tests;
