//! The coordinator's working state: durable desired state mirrored from the store, plus what
//! agents report (rebuilt after a restart).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use drover_proto::model::{
    AllocState, AllocStatus, Allocation, DesiredState, NodeFlags, NodeHealth, NodeInfo, Resources,
    RevisionTraffic, Service, WorkloadSpec,
};

use crate::limits::Limits;
use crate::scheduler::{ClusterSnapshot, NodeView};
use crate::store::{StoredState, WorkloadRecord, Write, apply_writes};

/// A node as agents report it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeEntry {
    /// What the agent said about itself in its last hello.
    pub info: NodeInfo,
    /// Whether it can take work.
    pub health: NodeHealth,
    /// Why it is in that state.
    pub reason: String,
    /// Resources its workloads use, as last reported.
    pub usage: Resources,
    /// When its agent stream ended, if it is not connected.
    pub disconnected_since_ms: Option<u64>,
    /// Whether gossip has ever listed it alive: a node only the link knows (it registered
    /// but never joined gossip) does not count in the mass-failure guard.
    pub gossip_seen: bool,
    /// Recent downs and the probation they earned (kept across reconnects).
    pub flaps: crate::failure::Flaps,
}

/// The operator's settings that decisions follow (from the coordinator's config).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// What one request may ask for.
    pub limits: Limits,
    /// How long a down node still counts in the mass-failure guard.
    pub down_node_expiry_ms: u64,
    /// Where services' cluster addresses come from.
    pub service_network: crate::cluster_ips::ServiceNetwork,
    /// The DNS domain of services' names.
    pub cluster_domain: crate::cluster_ips::ClusterDomain,
    /// How often autoscalers decide.
    pub autoscale_interval_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            limits: Limits::default(),
            down_node_expiry_ms: 600_000,
            service_network: crate::cluster_ips::ServiceNetwork::default(),
            cluster_domain: crate::cluster_ips::ClusterDomain::default(),
            autoscale_interval_ms: 15_000,
        }
    }
}

/// Desired state plus observations.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// The operator's settings.
    pub settings: Settings,
    /// Mirror of the store.
    pub stored: StoredState,
    /// Nodes that have connected since this coordinator started.
    pub nodes: BTreeMap<String, NodeEntry>,
    /// Last reported status per allocation id.
    pub status: HashMap<String, AllocStatus>,
    /// Why replicas of a service could not be placed, by service.
    pub placement_failures: BTreeMap<String, String>,
    /// Members gossip says are alive; `None` when the coordinator is not in gossip.
    pub gossip_live: Option<BTreeSet<String>>,
    /// Since when each ready allocation has been ready without a break or a restart, ms
    /// since the Unix epoch (rollouts count a replica available after `minReady` of it).
    pub ready_since: HashMap<String, u64>,
    /// Proxy connection outcomes per (service, revision), summed over nodes since this
    /// coordinator started: (connections, failed).
    pub traffic: BTreeMap<(String, u64), (u64, u64)>,
    /// Each node's last reported cumulative counts per (service, revision), to add only
    /// differences to [`ClusterState::traffic`].
    pub traffic_reported: HashMap<(String, String, u64), (u64, u64)>,
    /// This coordinator's boot number (traffic counts of another boot are not comparable).
    pub boot: u64,
    /// What replicas use, as their agents last measured.
    pub usage: crate::usage::UsageHistory,
    /// The vertical autoscalers' last recommendations, by workload.
    pub recommendations: BTreeMap<String, crate::autoscale::vpa::Recommendation>,
}

impl ClusterState {
    /// State rebuilt from the store, with no observations yet.
    pub fn from_stored(stored: StoredState) -> ClusterState {
        ClusterState {
            stored,
            ..ClusterState::default()
        }
    }

    /// Applies committed writes to the mirror.
    pub fn apply(&mut self, writes: &[Write]) {
        apply_writes(&mut self.stored, writes);
        for write in writes {
            if let Write::DeleteAllocation(id) = write {
                self.status.remove(id);
                self.ready_since.remove(id);
                self.usage.forget(id);
            }
        }
    }

    /// Records what an agent reported about an allocation at `now_unix_ms`; returns the
    /// state it had before.
    pub fn observe(&mut self, id: String, status: AllocStatus, now_unix_ms: u64) -> AllocState {
        let previous = self.status.get(&id);
        let before = previous.map(|s| s.state).unwrap_or_default();
        let restarted = previous.is_some_and(|p| p.restarts != status.restarts);
        if status.state == AllocState::Healthy {
            let since = self.ready_since.entry(id.clone()).or_insert(now_unix_ms);
            if before != AllocState::Healthy || restarted {
                *since = now_unix_ms;
            }
        } else {
            self.ready_since.remove(&id);
        }
        self.status.insert(id, status);
        before
    }

    /// Adds what a node's proxies counted since its last report: `reported` holds
    /// cumulative counts per (service, revision) since its agent started.
    pub fn observe_traffic(&mut self, node: &str, reported: &[RevisionTraffic]) {
        for t in reported.iter().filter(|t| !t.service.is_empty()) {
            let key = (node.to_string(), t.service.clone(), t.revision);
            let now = (t.connections, t.failed);
            let last = self.traffic_reported.insert(key, now).unwrap_or((0, 0));
            let window = crate::rollout::Window::since(now, last);
            let total = self
                .traffic
                .entry((t.service.clone(), t.revision))
                .or_default();
            total.0 += window.connections;
            total.1 += window.failed;
        }
    }

    /// Traffic counts of one service's revisions, for its rollout.
    pub fn service_traffic(&self, service: &str) -> crate::rollout::Traffic {
        crate::rollout::Traffic {
            boot: self.boot,
            by_revision: self
                .traffic
                .range((service.to_string(), 0)..=(service.to_string(), u64::MAX))
                .map(|((_, revision), counts)| (*revision, *counts))
                .collect(),
        }
    }

    /// A service record with the spec of its current revision, replicas and traffic as set.
    pub fn service(&self, name: &str) -> Option<(&WorkloadRecord, WorkloadSpec)> {
        let record = self.stored.workloads.get(name)?;
        let mut spec = self.revision_spec(name, record.revision)?.clone();
        spec.replicas = record.replicas;
        spec.traffic = record.traffic.clone();
        spec.update = record.update.clone();
        spec.autoscale = record.autoscale.clone();
        spec.vertical_autoscale = record.vertical_autoscale.clone();
        Some((record, spec))
    }

    /// The workloads `service` selects, by name, with the spec of their current revision
    /// (the labels it matches are those of the current revision; its replicas of older
    /// revisions are routed with them, as a rollout needs).
    pub fn selected_workloads(&self, service: &Service) -> Vec<WorkloadSpec> {
        self.stored
            .workloads
            .keys()
            .filter_map(|name| self.service(name).map(|(_, spec)| spec))
            .filter(|spec| service.selects(spec))
            .collect()
    }

    /// Names of the services that select `workload`.
    pub fn services_selecting(&self, workload: &WorkloadSpec) -> Vec<String> {
        self.stored
            .services
            .values()
            .filter(|r| r.service.selects(workload))
            .map(|r| r.service.name.clone())
            .collect()
    }

    /// The spec of one revision.
    pub fn revision_spec(&self, service: &str, revision: u64) -> Option<&WorkloadSpec> {
        self.stored
            .revisions
            .get(&(service.to_string(), revision))
            .map(|r| &r.spec)
    }

    /// Allocations of one service, in id order.
    pub fn allocations_of<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Allocation> {
        self.stored
            .allocations
            .values()
            .filter(move |a| a.service == service)
    }

    /// Observed state of an allocation; `Pending` until its agent reports.
    pub fn alloc_state(&self, id: &str) -> AllocState {
        self.status.get(id).map(|s| s.state).unwrap_or_default()
    }

    /// Operator flags of a node.
    pub fn node_flags(&self, node: &str) -> NodeFlags {
        self.stored
            .node_flags
            .get(node)
            .copied()
            .unwrap_or_default()
    }

    /// Health of a node; nodes not connected since start are `Disconnected`.
    pub fn node_health(&self, node: &str) -> NodeHealth {
        self.nodes
            .get(node)
            .map(|n| n.health)
            .unwrap_or(NodeHealth::Disconnected)
    }

    /// Whether a node is known at all (connected once, flagged, or holding allocations).
    pub fn node_known(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
            || self.stored.node_flags.contains_key(node)
            || self.stored.allocations.values().any(|a| a.node == node)
    }

    /// Resources reserved on each node by allocations that should run.
    pub fn allocated_by_node(&self) -> HashMap<&str, Resources> {
        let mut out: HashMap<&str, Resources> = HashMap::new();
        for a in self.running_allocations() {
            let entry = out.entry(a.node.as_str()).or_default();
            *entry = entry.plus(a.resources);
        }
        out
    }

    fn running_allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.stored
            .allocations
            .values()
            .filter(|a| a.desired == DesiredState::Run)
    }

    /// The scheduler's view of the cluster, given allocations that this pass stops.
    pub fn snapshot(&self, stopping: &BTreeSet<String>, now_unix_ms: u64) -> ClusterSnapshot {
        let mut views: BTreeMap<&str, NodeView> = self
            .nodes
            .iter()
            .map(|(id, n)| {
                let view = NodeView {
                    id: id.clone(),
                    health: n.health,
                    probation: n.flaps.probation_left(now_unix_ms).is_some(),
                    flags: self.node_flags(id),
                    labels: n.info.labels.clone(),
                    capacity: n.info.capacity,
                    allocated: Resources::default(),
                    host_ports: Default::default(),
                    service_counts: Default::default(),
                };
                (id.as_str(), view)
            })
            .collect();
        for a in self.running_allocations() {
            if stopping.contains(&a.id) {
                continue;
            }
            let Some(view) = views.get_mut(a.node.as_str()) else {
                continue;
            };
            view.allocated = view.allocated.plus(a.resources);
            *view.service_counts.entry(a.service.clone()).or_default() += 1;
            if let Some(spec) = self.revision_spec(&a.service, a.revision) {
                view.host_ports.extend(spec.host_ports());
            }
        }
        ClusterSnapshot::new(views.into_values().collect())
    }
}

/// A ready node with plenty of room, for tests.
#[cfg(test)]
pub(crate) fn test_node(id: &str) -> NodeEntry {
    NodeEntry {
        info: NodeInfo {
            id: id.to_string(),
            generation: 1,
            address: "127.0.0.1".into(),
            capacity: Resources {
                cpu_millis: 64_000,
                memory_bytes: 64 << 30,
            },
            labels: Default::default(),
        },
        health: NodeHealth::Ready,
        reason: String::new(),
        usage: Resources::default(),
        disconnected_since_ms: None,
        gossip_seen: true,
        flaps: Default::default(),
    }
}
