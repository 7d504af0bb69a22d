//! The agent's Prometheus metrics: what its tasks publish (the proxy's totals, the
//! replicas' statuses and usage, gossip's members and socket counters, the link), read at
//! each scrape, plus the counts its work adds as it goes ([`WorkCounters`]: replica
//! restarts, health probe results). Names follow Prometheus' rules (`drover_agent_`
//! prefix, base units, `_total` counters); labels are bounded: service, workload, revision,
//! state, cause, check, result and direction names.
//!
//! The proxy's totals are published by the routing task every
//! [`crate::routes::TRAFFIC_INTERVAL`], so a scrape sees connections up to that long late.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use drover_membership::GossipCounters;
use drover_proto::gossip::MemberFacts;
use drover_proto::model::AllocState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::health::{CheckKind, ProbeCounts};
use crate::proxy::{LATENCY_BOUNDS, ProxyTotals};
use crate::supervisor::{AllocReport, LinkState};
use crate::usage::UsageReport;

/// A `workload` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabel {
    workload: String,
}

/// A health probe's workload, check and result.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    workload: String,
    check: String,
    result: String,
}

/// What the agent's work counts as it goes; cheap to clone (every metric is shared).
#[derive(Debug, Clone, Default)]
pub struct WorkCounters {
    restarts: Family<WorkloadLabel, Counter>,
    probes: Family<ProbeLabels, Counter>,
}

impl WorkCounters {
    /// The counters one health check of a replica of `workload` counts its probes into.
    pub fn probes(&self, workload: &str, kind: CheckKind) -> ProbeCounts {
        let counter = |result: &str| {
            self.probes
                .get_or_create(&ProbeLabels {
                    workload: workload.to_owned(),
                    check: kind.to_string(),
                    result: result.to_owned(),
                })
                .clone()
        };
        ProbeCounts {
            passed: counter("passed"),
            failed: counter("failed"),
        }
    }

    /// Counts the restarts the supervisor's statuses show until `shutdown`: each increase of
    /// an allocation's restart count since the last statuses.
    pub async fn follow_restarts(
        self,
        mut statuses: watch::Receiver<BTreeMap<String, AllocReport>>,
        shutdown: CancellationToken,
    ) {
        let mut seen = BTreeMap::new();
        loop {
            let current = restart_counts(&statuses.borrow_and_update());
            for (workload, added) in restarts_since(&seen, &current) {
                self.restarts
                    .get_or_create(&WorkloadLabel { workload })
                    .inc_by(added);
            }
            seen = current;
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = statuses.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// Per allocation: its workload and restart count.
type RestartCounts = BTreeMap<String, (String, u32)>;

fn restart_counts(statuses: &BTreeMap<String, AllocReport>) -> RestartCounts {
    statuses
        .iter()
        .map(|(id, r)| (id.clone(), (r.service.clone(), r.status.restarts)))
        .collect()
}

/// Restarts per workload between two statuses: a new allocation's restarts all count (it
/// was adopted, or restarted before its first status).
fn restarts_since(seen: &RestartCounts, current: &RestartCounts) -> BTreeMap<String, u64> {
    let mut added: BTreeMap<String, u64> = BTreeMap::new();
    for (id, (workload, restarts)) in current {
        let before = seen.get(id).map_or(0, |(_, r)| *r);
        if *restarts > before {
            *added.entry(workload.clone()).or_default() += u64::from(restarts - before);
        }
    }
    added
}

/// Where the metrics come from, read at each scrape.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The proxy's totals.
    pub proxy: watch::Receiver<ProxyTotals>,
    /// The supervisor's statuses.
    pub statuses: watch::Receiver<BTreeMap<String, AllocReport>>,
    /// The last usage sampling round.
    pub usage: watch::Receiver<UsageReport>,
    /// Gossip's live members.
    pub members: watch::Receiver<BTreeMap<String, MemberFacts>>,
    /// Gossip's socket counters.
    pub gossip: Arc<GossipCounters>,
    /// The link to the coordinator.
    pub link: watch::Receiver<LinkState>,
    /// Counted as the agent works.
    pub counters: WorkCounters,
}

impl Sources {
    /// Everything, as it is now.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("drover_agent");
        registry.register_collector(Box::new(ProxyCollector(self.proxy.borrow().clone())));
        registry.register(
            "replica_restarts",
            "Times the agent restarted a replica's container, by workload",
            self.counters.restarts.clone(),
        );
        registry.register(
            "health_probes",
            "Health probes run, by workload, check (readiness, liveness) and result",
            self.counters.probes.clone(),
        );
        let snapshot = Snapshot {
            statuses: self.statuses.borrow().clone(),
            usage: self.usage.borrow().clone(),
            members: self.members.borrow().len(),
            gossip: &self.gossip,
            connected: self.link.borrow().connected,
        };
        registry.register_collector(Box::new(snapshot.collector()));
        registry
    }
}

/// The state-like sources at one scrape.
struct Snapshot<'a> {
    statuses: BTreeMap<String, AllocReport>,
    usage: UsageReport,
    members: usize,
    gossip: &'a GossipCounters,
    connected: bool,
}

impl Snapshot<'_> {
    fn collector(self) -> StateCollector {
        let mut replicas: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
        for report in self.statuses.values() {
            *replicas
                .entry((report.service.clone(), report.status.state.as_str()))
                .or_default() += 1;
        }
        // Every state of a workload present, so a series at zero exists rather than vanishing.
        let workloads: Vec<String> = replicas.keys().map(|(w, _)| w.clone()).collect();
        for workload in workloads {
            for state in STATES {
                replicas
                    .entry((workload.clone(), state.as_str()))
                    .or_default();
            }
        }
        let mut cpu: BTreeMap<String, f64> = BTreeMap::new();
        let mut memory: BTreeMap<String, u64> = BTreeMap::new();
        for sample in &self.usage.allocations {
            let Some(report) = self.statuses.get(&sample.allocation_id) else {
                continue;
            };
            *cpu.entry(report.service.clone()).or_default() += sample.cpu_millis as f64 / 1000.0;
            *memory.entry(report.service.clone()).or_default() += sample.memory_working_set_bytes;
        }
        let load = |o: &std::sync::atomic::AtomicU64| o.load(Ordering::Relaxed);
        let g = self.gossip;
        StateCollector {
            replicas,
            cpu,
            memory,
            node: self.usage.node,
            members: self.members,
            connected: self.connected,
            datagrams: [
                ("in", load(&g.datagrams_in)),
                ("out", load(&g.datagrams_out)),
            ],
            bytes: [("in", load(&g.bytes_in)), ("out", load(&g.bytes_out))],
            rejected: [
                ("unsealed", load(&g.sealed_rejected)),
                ("replayed", load(&g.replayed)),
                ("stale", load(&g.stale)),
                ("fragment_dropped", load(&g.fragments_dropped)),
                ("refused", load(&g.refused)),
                ("undecoded", load(&g.undecoded)),
            ],
        }
    }
}

/// Every state an agent reports (`lost` is the coordinator's).
const STATES: [AllocState; 7] = [
    AllocState::Pending,
    AllocState::Starting,
    AllocState::Running,
    AllocState::Healthy,
    AllocState::Unhealthy,
    AllocState::Failed,
    AllocState::Stopped,
];

/// Replicas, usage, gossip and link at one scrape.
#[derive(Debug)]
struct StateCollector {
    replicas: BTreeMap<(String, &'static str), u64>,
    cpu: BTreeMap<String, f64>,
    memory: BTreeMap<String, u64>,
    node: Option<drover_proto::model::Resources>,
    members: usize,
    connected: bool,
    datagrams: [(&'static str, u64); 2],
    bytes: [(&'static str, u64); 2],
    rejected: [(&'static str, u64); 6],
}

/// A `workload` and `state` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadState {
    workload: String,
    state: String,
}

/// A `direction` label (`in`, `out`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: String,
}

/// A `reason` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        gauges(
            &mut encoder,
            "replicas",
            "Replicas on this node, by workload and state",
            None,
            self.replicas.iter().map(|((workload, state), n)| {
                let labels = WorkloadState {
                    workload: workload.clone(),
                    state: (*state).to_owned(),
                };
                (labels, Value::Int(*n))
            }),
        )?;
        gauges(
            &mut encoder,
            "workload_cpu_usage",
            "CPU the workload's replicas on this node used over the last sampling interval",
            Some(&Unit::Other("cores".into())),
            self.cpu
                .iter()
                .map(|(w, cores)| (workload(w), Value::Float(*cores))),
        )?;
        gauges(
            &mut encoder,
            "workload_memory_working_set",
            "Memory the workload's replicas on this node cannot give back (usage minus inactive file cache)",
            Some(&Unit::Bytes),
            self.memory
                .iter()
                .map(|(w, b)| (workload(w), Value::Int(*b))),
        )?;
        if let Some(node) = self.node {
            gauge(
                &mut encoder,
                "node_cpu_usage",
                "CPU the whole node used over the last sampling interval",
                Some(&Unit::Other("cores".into())),
                Value::Float(node.cpu_millis as f64 / 1000.0),
            )?;
            gauge(
                &mut encoder,
                "node_memory_used",
                "Memory in use on the node (total minus available)",
                Some(&Unit::Bytes),
                Value::Int(node.memory_bytes),
            )?;
        }
        gauge(
            &mut encoder,
            "gossip_members",
            "Gossip members this node sees alive, itself included",
            None,
            Value::Int(self.members as u64),
        )?;
        gauge(
            &mut encoder,
            "coordinator_connected",
            "1 while the agent has a session with a coordinator",
            None,
            Value::Int(u64::from(self.connected)),
        )?;
        let direction = |(d, n): &(&str, u64)| {
            let labels = Direction {
                direction: (*d).to_owned(),
            };
            (labels, *n)
        };
        counters(
            &mut encoder,
            "gossip_datagrams",
            "Gossip datagrams received and sent",
            None,
            self.datagrams.iter().map(direction),
        )?;
        counters(
            &mut encoder,
            "gossip",
            "Bytes of gossip datagrams received and sent",
            Some(&Unit::Bytes),
            self.bytes.iter().map(direction),
        )?;
        counters(
            &mut encoder,
            "gossip_rejected",
            "Gossip datagrams or messages refused, by reason",
            None,
            self.rejected.iter().map(|(r, n)| {
                let labels = Reason {
                    reason: (*r).to_owned(),
                };
                (labels, *n)
            }),
        )
    }
}

fn workload(name: &str) -> WorkloadLabel {
    WorkloadLabel {
        workload: name.to_owned(),
    }
}

/// A gauge's value.
#[derive(Debug, Clone, Copy)]
enum Value {
    Int(u64),
    Float(f64),
}

/// One gauge family with `series`; nothing when there is none.
fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: impl Iterator<Item = (L, Value)>,
) -> fmt::Result {
    let mut series = series.peekable();
    if series.peek().is_none() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in series {
        let mut family = metric.encode_family(&labels)?;
        match value {
            Value::Int(v) => family.encode_gauge(&v)?,
            Value::Float(v) => family.encode_gauge(&v)?,
        }
    }
    Ok(())
}

/// One gauge without labels.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: Value,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    match value {
        Value::Int(v) => metric.encode_gauge(&v),
        Value::Float(v) => metric.encode_gauge(&v),
    }
}

/// One counter family with `series`; nothing when there is none.
fn counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: impl Iterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut series = series.peekable();
    if series.peek().is_none() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, value) in series {
        metric
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

/// A `service` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

/// A `service` and `cause` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceCause {
    service: String,
    cause: String,
}

/// A revision's labels: the service that routed to it, its workload and number.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevisionLabels {
    service: String,
    workload: String,
    revision: String,
}

/// The proxy's totals at one scrape.
#[derive(Debug)]
struct ProxyCollector(ProxyTotals);

impl Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let services = &self.0.services;
        let per_service = |value: fn(&crate::proxy::CountersSnapshot) -> u64| {
            services.iter().map(move |(service, counted)| {
                let labels = ServiceLabel {
                    service: service.clone(),
                };
                (labels, value(counted))
            })
        };
        let e = &mut encoder;
        counters(
            e,
            "proxy_connections_accepted",
            "Client connections the proxy accepted, by service",
            None,
            per_service(|c| c.accepted),
        )?;
        gauges(
            e,
            "proxy_connections_active",
            "Client connections being proxied now, by service",
            None,
            per_service(|c| c.active).map(|(l, v)| (l, Value::Int(v))),
        )?;
        counters(
            e,
            "proxy_connections_failed",
            "Client connections closed because no replica could be connected, by service",
            None,
            per_service(|c| c.failed),
        )?;
        counters(
            e,
            "proxy_connect_failures",
            "Connects to replicas that failed, by service and cause (refused, timeout, other)",
            None,
            services.iter().flat_map(|(service, c)| {
                let other = c.connect_errors - c.connect_refused - c.connect_timeouts;
                [
                    ("refused", c.connect_refused),
                    ("timeout", c.connect_timeouts),
                    ("other", other),
                ]
                .map(|(cause, n)| {
                    let labels = ServiceCause {
                        service: service.clone(),
                        cause: cause.to_owned(),
                    };
                    (labels, n)
                })
            }),
        )?;
        counters(
            e,
            "proxy_connection_retries",
            "Connects to another replica after one failed, by service",
            None,
            per_service(|c| c.retries),
        )?;
        counters(
            e,
            "proxy_connections_replayed",
            "Times a replica closed a connection before answering and the client's bytes went to another, by service",
            None,
            per_service(|c| c.replayed),
        )?;
        counters(
            e,
            "proxy_connections_drained",
            "Connections closed at the drain deadline after their replica was removed, by service",
            None,
            per_service(|c| c.drained),
        )?;
        counters(
            e,
            "proxy_received",
            "Bytes read from clients (and sent to replicas), by service",
            Some(&Unit::Bytes),
            per_service(|c| c.bytes_in),
        )?;
        counters(
            e,
            "proxy_sent",
            "Bytes written to clients (read from replicas), by service",
            Some(&Unit::Bytes),
            per_service(|c| c.bytes_out),
        )?;
        if !services.is_empty() {
            let mut metric = e.encode_descriptor(
                "proxy_connect_duration",
                "Time of the successful connects to replicas, by service",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (service, counted) in services {
                let latency = counted.connect_latency;
                let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
                    .iter()
                    .copied()
                    .chain([f64::MAX])
                    .zip(latency.buckets)
                    .collect();
                let labels = ServiceLabel {
                    service: service.clone(),
                };
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        latency.sum_nanos as f64 / 1e9,
                        latency.count(),
                        &buckets,
                        None,
                    )?;
            }
        }
        let revisions = &self.0.revisions;
        let per_revision = |value: fn(&crate::proxy::RevisionOutcomes) -> u64| {
            revisions
                .iter()
                .map(move |((service, workload, revision), outcomes)| {
                    let labels = RevisionLabels {
                        service: service.clone(),
                        workload: workload.clone(),
                        revision: revision.to_string(),
                    };
                    (labels, value(outcomes))
                })
        };
        counters(
            e,
            "proxy_revision_connections",
            "Connects to replicas of a revision (a retried client connection counts once per replica)",
            None,
            per_revision(|o| o.connections),
        )?;
        counters(
            e,
            "proxy_revision_connections_failed",
            "Of those: the connect failed, or the replica closed before answering",
            None,
            per_revision(|o| o.failed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::model::AllocStatus;

    fn report(workload: &str, state: AllocState, restarts: u32) -> AllocReport {
        AllocReport {
            service: workload.into(),
            revision: 1,
            status: AllocStatus {
                state,
                restarts,
                ..AllocStatus::default()
            },
        }
    }

    #[test]
    fn restarts_count_each_increase_once_per_workload() {
        let before = restart_counts(&BTreeMap::from([
            ("a1".to_owned(), report("web", AllocState::Healthy, 2)),
            ("a2".to_owned(), report("web", AllocState::Healthy, 0)),
        ]));
        let after = restart_counts(&BTreeMap::from([
            ("a1".to_owned(), report("web", AllocState::Healthy, 3)),
            ("a2".to_owned(), report("web", AllocState::Healthy, 2)),
            ("b1".to_owned(), report("db", AllocState::Running, 1)),
        ]));
        assert_eq!(
            restarts_since(&before, &after),
            BTreeMap::from([("db".to_owned(), 1), ("web".to_owned(), 3)])
        );
        assert!(restarts_since(&after, &after).is_empty());
    }
}

#[cfg(test)]
mod collector_tests {
    use super::*;
    use crate::proxy::{CountersSnapshot, RevisionOutcomes};

    #[test]
    fn the_proxys_totals_are_encoded_per_service_and_revision() {
        let mut totals = ProxyTotals::default();
        totals.services.insert(
            "svc".into(),
            CountersSnapshot {
                accepted: 3,
                ..CountersSnapshot::default()
            },
        );
        totals.revisions.insert(
            ("svc".into(), "web".into(), 2),
            RevisionOutcomes {
                connections: 3,
                failed: 1,
            },
        );
        let mut registry = Registry::with_prefix("drover_agent");
        registry.register_collector(Box::new(ProxyCollector(totals)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for line in [
            "drover_agent_proxy_connections_accepted_total{service=\"svc\"} 3",
            "drover_agent_proxy_revision_connections_total{service=\"svc\",workload=\"web\",revision=\"2\"} 3",
            "drover_agent_proxy_revision_connections_failed_total{service=\"svc\",workload=\"web\",revision=\"2\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
    }
}
