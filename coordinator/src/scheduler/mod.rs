//! Placement decisions: which nodes take new replicas, as a pure function of a cluster snapshot.
//!
//! No I/O, no clock, no randomness: the same snapshot and requests always give the same
//! placements. A request filters the cluster once (static checks come from cached bit sets),
//! then places its replicas one by one from a heap of candidate nodes, so a replica costs
//! O(log count) rather than O(nodes).

mod failure;
mod nodeset;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use drover_proto::model::{
    LabelConstraint, NodeFlags, NodeHealth, Resources, SpreadMode, WorkloadSpec,
};

pub use failure::{FilterReason, PlacementFailure};
use nodeset::NodeSet;

/// A node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    /// Stable node id.
    pub id: String,
    /// Only `Ready` nodes take work.
    pub health: NodeHealth,
    /// Back from being down and still on probation (flap hysteresis): it comes after nodes
    /// with as many replicas of the service.
    pub probation: bool,
    /// Operator flags; cordoned and draining nodes take no work.
    pub flags: NodeFlags,
    /// Node labels, matched by placement constraints.
    pub labels: BTreeMap<String, String>,
    /// Resources available to workloads.
    pub capacity: Resources,
    /// Resources reserved by the allocations on the node.
    pub allocated: Resources,
    /// Host ports taken by the allocations on the node.
    pub host_ports: BTreeSet<u16>,
    /// Replicas of each service on the node.
    pub service_counts: HashMap<String, u32>,
}

impl NodeView {
    /// A ready node with `capacity`, no labels, flags or allocations.
    pub fn new(id: impl Into<String>, capacity: Resources) -> NodeView {
        NodeView {
            id: id.into(),
            health: NodeHealth::Ready,
            probation: false,
            flags: NodeFlags::default(),
            labels: BTreeMap::new(),
            capacity,
            allocated: Resources::default(),
            host_ports: BTreeSet::new(),
            service_counts: HashMap::new(),
        }
    }

    /// Whether the node takes new work at all: ready, neither cordoned nor draining.
    fn schedulable(&self) -> bool {
        self.health == NodeHealth::Ready && !self.flags.cordoned && !self.flags.draining
    }

    fn replicas_of(&self, service: &str) -> u32 {
        self.service_counts.get(service).copied().unwrap_or(0)
    }
}

/// Replicas of one service to place.
#[derive(Debug, Clone, Copy)]
pub struct PlacementRequest<'a> {
    /// Service name; replicas spread across nodes by it.
    pub service: &'a str,
    /// Resources per replica, constraints, spread mode and host ports.
    pub spec: &'a WorkloadSpec,
    /// Replicas wanted.
    pub count: u32,
    /// Nodes that must not take any of them (for example the node being drained).
    pub avoid_nodes: &'a [String],
}

/// What a request placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementOutcome {
    /// Node id of each placed replica, in placement order (a node may repeat).
    pub placed: Vec<String>,
    /// Set when fewer replicas than requested were placed.
    pub failure: Option<PlacementFailure>,
}

/// The cluster as the scheduler sees it during one reconcile pass. Placing mutates it, so a
/// request sees the placements of earlier ones.
#[derive(Debug, Clone)]
pub struct ClusterSnapshot {
    /// Sorted by id, ids unique: a node's position is its tie-break rank.
    nodes: Vec<NodeView>,
    /// Node id → position.
    positions: HashMap<String, usize>,
    /// Nodes that pass the health and flag checks.
    schedulable: NodeSet,
    /// Service → positions of nodes with at least one replica of it.
    hosting: HashMap<String, BTreeSet<usize>>,
    /// Constraint → nodes whose labels satisfy it. Labels never change in a snapshot.
    constraint_matches: HashMap<LabelConstraint, NodeSet>,
}

impl ClusterSnapshot {
    /// A snapshot of `nodes`. Should two nodes share an id, the later one wins.
    pub fn new(nodes: Vec<NodeView>) -> ClusterSnapshot {
        let by_id: BTreeMap<String, NodeView> =
            nodes.into_iter().map(|n| (n.id.clone(), n)).collect();
        let nodes: Vec<NodeView> = by_id.into_values().collect();
        let positions = nodes
            .iter()
            .enumerate()
            .map(|(position, n)| (n.id.clone(), position))
            .collect();
        let schedulable = NodeSet::from_fn(nodes.len(), |p| nodes[p].schedulable());
        let mut hosting: HashMap<String, BTreeSet<usize>> = HashMap::new();
        for (position, node) in nodes.iter().enumerate() {
            for (service, _) in node.service_counts.iter().filter(|(_, n)| **n > 0) {
                hosting.entry(service.clone()).or_default().insert(position);
            }
        }
        ClusterSnapshot {
            nodes,
            positions,
            schedulable,
            hosting,
            constraint_matches: HashMap::new(),
        }
    }

    /// Every node, sorted by id, with the placements made so far.
    pub fn nodes(&self) -> &[NodeView] {
        &self.nodes
    }

    /// The node with `id`, if the snapshot has it.
    pub fn node(&self, id: &str) -> Option<&NodeView> {
        self.positions.get(id).map(|&p| &self.nodes[p])
    }

    /// Places up to `req.count` replicas and records them in the snapshot.
    ///
    /// Each replica goes to the feasible node with the fewest replicas of the service, then
    /// the lowest (spread) or highest (bin-pack) utilisation after placement, then the
    /// smallest id. Utilisation is the sum of the CPU and memory fractions, so both count.
    pub fn place(&mut self, req: &PlacementRequest<'_>) -> PlacementOutcome {
        let mut placed = Vec::new();
        let mut counts = self.replica_counts(req.service);
        let mut heap = self.candidates(req, &counts);
        let mut placed_on = BTreeSet::new();
        while placed.len() < req.count as usize {
            let Some(Reverse(best)) = heap.pop() else {
                break;
            };
            let position = best.position;
            self.commit(position, req);
            counts[position] += 1;
            placed_on.insert(position);
            placed.push(self.nodes[position].id.clone());
            if let Some(next) = self.rank(position, req, counts[position]) {
                heap.push(Reverse(next));
            }
        }
        self.note_hosting(req.service, placed_on);
        let placed_count = u32::try_from(placed.len()).unwrap_or(u32::MAX);
        let failure =
            (placed_count < req.count).then(|| failure::diagnose(&self.nodes, req, placed_count));
        PlacementOutcome { placed, failure }
    }

    /// Frees what one replica of `service` holds on `node`: its resources, its host ports and
    /// its place in the spread count. Lets a pass model the stops it decides before placing.
    /// Returns false when the snapshot has no such node.
    pub fn release(
        &mut self,
        node: &str,
        service: &str,
        resources: Resources,
        host_ports: impl IntoIterator<Item = u16>,
    ) -> bool {
        let Some(&position) = self.positions.get(node) else {
            return false;
        };
        let view = &mut self.nodes[position];
        view.allocated = view.allocated.minus(resources);
        for port in host_ports {
            view.host_ports.remove(&port);
        }
        let Some(count) = view.service_counts.get_mut(service) else {
            return true;
        };
        *count = count.saturating_sub(1);
        if *count == 0 {
            view.service_counts.remove(service);
            if let Some(positions) = self.hosting.get_mut(service) {
                positions.remove(&position);
            }
        }
        true
    }

    /// Replicas of `service` per node position.
    fn replica_counts(&self, service: &str) -> Vec<u32> {
        let mut counts = vec![0; self.nodes.len()];
        for &position in self.hosting.get(service).into_iter().flatten() {
            counts[position] = self.nodes[position].replicas_of(service);
        }
        counts
    }

    /// The best `req.count` feasible nodes, as a min-heap of ranks.
    ///
    /// Only these can receive replicas: a node's rank only changes when it receives one, so a
    /// node outside them is chosen only after each of them received at least one replica,
    /// i.e. after `req.count` placements.
    fn candidates(
        &mut self,
        req: &PlacementRequest<'_>,
        counts: &[u32],
    ) -> BinaryHeap<Reverse<Rank>> {
        let wanted = req.count as usize;
        if wanted == 0 {
            return BinaryHeap::new();
        }
        let eligible = self.eligible(req);
        let mut ranks: Vec<Rank> = eligible
            .iter()
            .filter_map(|p| self.rank(p, req, counts[p]))
            .collect();
        if ranks.len() > wanted {
            ranks.select_nth_unstable(wanted - 1);
            ranks.truncate(wanted);
        }
        ranks.into_iter().map(Reverse).collect()
    }

    /// Nodes passing the checks that placing cannot change: health, flags, the request's
    /// avoid list and its label constraints.
    fn eligible(&mut self, req: &PlacementRequest<'_>) -> NodeSet {
        let mut eligible = self.schedulable.clone();
        for constraint in &req.spec.placement.constraints {
            eligible.intersect(self.matching(constraint));
        }
        for id in req.avoid_nodes {
            if let Some(&position) = self.positions.get(id) {
                eligible.remove(position);
            }
        }
        eligible
    }

    /// Nodes satisfying `constraint`, computed once per snapshot.
    fn matching(&mut self, constraint: &LabelConstraint) -> &NodeSet {
        let nodes = &self.nodes;
        self.constraint_matches
            .entry(constraint.clone())
            .or_insert_with(|| {
                NodeSet::from_fn(nodes.len(), |p| constraint.matches(&nodes[p].labels))
            })
    }

    /// The rank of the eligible node at `position` for one more replica, holding `replicas`
    /// of the service already, or `None` if the replica does not fit.
    fn rank(&self, position: usize, req: &PlacementRequest<'_>, replicas: u32) -> Option<Rank> {
        let node = &self.nodes[position];
        let after = node.allocated.plus(req.spec.resources);
        if !after.fits_in(node.capacity) {
            return None;
        }
        if req
            .spec
            .host_ports()
            .any(|port| node.host_ports.contains(&port))
        {
            return None;
        }
        let utilisation = utilisation(after, node.capacity);
        let score = match req.spec.placement.spread {
            SpreadMode::Spread => utilisation,
            SpreadMode::BinPack => u64::MAX - utilisation,
        };
        Some(Rank {
            replicas,
            probation: node.probation,
            score,
            position,
        })
    }

    /// Records one replica of `req` on the node at `position`.
    fn commit(&mut self, position: usize, req: &PlacementRequest<'_>) {
        let node = &mut self.nodes[position];
        node.allocated = node.allocated.plus(req.spec.resources);
        node.host_ports.extend(req.spec.host_ports());
        match node.service_counts.get_mut(req.service) {
            Some(count) => *count += 1,
            None => {
                node.service_counts.insert(req.service.to_string(), 1);
            }
        }
    }

    fn note_hosting(&mut self, service: &str, positions: BTreeSet<usize>) {
        if positions.is_empty() {
            return;
        }
        match self.hosting.get_mut(service) {
            Some(hosting) => hosting.extend(positions),
            None => {
                self.hosting.insert(service.to_string(), positions);
            }
        }
    }
}

/// Order of preference among feasible nodes: smallest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    /// Replicas of the service already on the node: spread across nodes first.
    replicas: u32,
    /// On probation after being down: among nodes with as many replicas, such nodes come
    /// last. Spread still wins: two replicas on one node is the larger risk.
    probation: bool,
    /// Utilisation after placement (spread) or its complement (bin-pack).
    score: u64,
    /// Position in the id-sorted node list: ties go to the smallest id.
    position: usize,
}

/// Parts per billion of each dimension used, summed (0 to 2e9 for a node that fits).
fn utilisation(used: Resources, capacity: Resources) -> u64 {
    fraction_ppb(used.cpu_millis, capacity.cpu_millis)
        + fraction_ppb(used.memory_bytes, capacity.memory_bytes)
}

fn fraction_ppb(used: u64, capacity: u64) -> u64 {
    if capacity == 0 {
        // Only a request for none of this dimension fits a node with none of it.
        return 0;
    }
    (used as f64 / capacity as f64 * 1e9) as u64
}
