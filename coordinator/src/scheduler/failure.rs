//! Why replicas could not be placed: per-node filter reasons and the operator's message.

use std::collections::BTreeMap;
use std::fmt;

use drover_proto::model::{NodeHealth, Resources, format_bytes, format_cpu};

use super::{NodeView, PlacementRequest};

/// The first check a node failed for a request. Checks run in the order of the variants, so
/// each filtered node counts once.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FilterReason {
    /// Declared dead.
    Down,
    /// Not connected to this coordinator.
    Disconnected,
    /// Operator cordoned the node.
    Cordoned,
    /// The node is being drained.
    Draining,
    /// A replica being replaced failed on the node (a failure that follows the node: a
    /// port in use, an engine error), so its replacement goes elsewhere.
    Avoided,
    /// The node's labels do not satisfy this constraint (as the manifest spells it).
    Constraint(String),
    /// Not enough free CPU for one more replica.
    Cpu,
    /// Not enough free memory for one more replica.
    Memory,
    /// This host port is already taken on the node.
    HostPort(u16),
}

/// Why a request placed fewer replicas than it asked for.
///
/// The counts describe the cluster as the first unplaced replica saw it, after the replicas
/// placed before it: every evaluated node was then filtered for exactly one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementFailure {
    /// Replicas requested.
    pub requested: u32,
    /// Replicas placed.
    pub placed: u32,
    /// Nodes looked at (every node in the snapshot).
    pub nodes_evaluated: u32,
    /// Nodes filtered, by the first reason each failed.
    pub filtered: BTreeMap<FilterReason, u32>,
    /// Resources one replica needs (quoted when nodes lacked CPU or memory).
    pub resources: Resources,
}

impl PlacementFailure {
    /// Nodes filtered for any reason.
    pub fn nodes_filtered(&self) -> u32 {
        self.filtered.values().sum()
    }

    fn describe(&self, reason: &FilterReason) -> String {
        match reason {
            FilterReason::Down => "down".into(),
            FilterReason::Disconnected => "disconnected".into(),
            FilterReason::Cordoned => "cordoned".into(),
            FilterReason::Draining => "draining".into(),
            FilterReason::Avoided => "had a replica of it fail there".into(),
            FilterReason::Constraint(text) => format!("failed constraint \"{text}\""),
            FilterReason::Cpu => format!(
                "lacked cpu (need {})",
                format_cpu(self.resources.cpu_millis)
            ),
            FilterReason::Memory => format!(
                "lacked memory (need {})",
                format_bytes(self.resources.memory_bytes)
            ),
            FilterReason::HostPort(port) => format!("had host port {port} in use"),
        }
    }
}

/// "placed 1 of 3 replicas: 4 nodes evaluated, 4 filtered: 3 lacked memory (need 2 GiB),
/// 1 cordoned" — reasons by count, largest first.
impl fmt::Display for PlacementFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "placed {} of {} replicas: {} evaluated",
            self.placed,
            self.requested,
            nodes(self.nodes_evaluated)
        )?;
        let filtered = self.nodes_filtered();
        if filtered == 0 {
            return Ok(());
        }
        write!(f, ", {filtered} filtered")?;
        let mut reasons: Vec<(&FilterReason, u32)> =
            self.filtered.iter().map(|(r, &n)| (r, n)).collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        for (position, (reason, count)) in reasons.into_iter().enumerate() {
            let separator = if position == 0 { ": " } else { ", " };
            write!(f, "{separator}{count} {}", self.describe(reason))?;
        }
        Ok(())
    }
}

impl std::error::Error for PlacementFailure {}

fn nodes(count: u32) -> String {
    if count == 1 {
        "1 node".into()
    } else {
        format!("{count} nodes")
    }
}

/// The first check `node` fails for one more replica of `req`, or `None` if it could take one.
pub(super) fn first_failure(node: &NodeView, req: &PlacementRequest<'_>) -> Option<FilterReason> {
    match node.health {
        NodeHealth::Down => return Some(FilterReason::Down),
        NodeHealth::Disconnected => return Some(FilterReason::Disconnected),
        NodeHealth::Ready => {}
    }
    if node.flags.cordoned {
        return Some(FilterReason::Cordoned);
    }
    if node.flags.draining {
        return Some(FilterReason::Draining);
    }
    if req.avoid_nodes.contains(&node.id) {
        return Some(FilterReason::Avoided);
    }
    let spec = req.spec;
    if let Some(failed) = spec
        .placement
        .constraints
        .iter()
        .find(|c| !c.matches(&node.labels))
    {
        return Some(FilterReason::Constraint(failed.to_string()));
    }
    resource_or_port_failure(node, req)
}

/// The capacity or host-port check `node` fails for one more replica of `req`, if any.
pub(super) fn resource_or_port_failure(
    node: &NodeView,
    req: &PlacementRequest<'_>,
) -> Option<FilterReason> {
    let after = node.allocated.plus(req.spec.resources);
    if after.cpu_millis > node.capacity.cpu_millis {
        return Some(FilterReason::Cpu);
    }
    if after.memory_bytes > node.capacity.memory_bytes {
        return Some(FilterReason::Memory);
    }
    req.spec
        .host_ports()
        .find(|port| node.host_ports.contains(port))
        .map(FilterReason::HostPort)
}

/// Counts, over all nodes, the first reason each fails one more replica of `req`.
pub(super) fn diagnose(
    nodes: &[NodeView],
    req: &PlacementRequest<'_>,
    placed: u32,
) -> PlacementFailure {
    let mut filtered = BTreeMap::new();
    for reason in nodes.iter().filter_map(|node| first_failure(node, req)) {
        *filtered.entry(reason).or_insert(0) += 1;
    }
    PlacementFailure {
        requested: req.count,
        placed,
        nodes_evaluated: u32::try_from(nodes.len()).unwrap_or(u32::MAX),
        filtered,
        resources: req.spec.resources,
    }
}
