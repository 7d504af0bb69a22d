//! The vertical autoscalers' decisions (pure): each replica's new usage samples (and OOM
//! kills) feed its workload's [`vpa::Recommender`]; the recommendation is shown in every
//! mode, given to the workload's new replicas in every mode but `Off` (see [`sized`]), and
//! in `InPlace` written to the running replicas' allocations, which their agents apply
//! with the engine's update call, without a restart. The scheduler's reservations are the
//! allocations' resources, so they follow.
//!
//! When to change a running replica differs from VPA's updater, which acts when the
//! request leaves the recommendation's bounds: a Drover replica's reservation is also its
//! limit, so waiting for usage to pass the lower bound would wait for throttling or an OOM
//! kill. A resource grows as soon as the target is more than [`GROW_TOLERANCE_PERCENT`]
//! above what the replica has, and shrinks only once it is above the upper bound (which
//! short histories keep wide, as VPA's confidence does). Memory never shrinks below what
//! the replica uses plus [`MEMORY_HEADROOM_PERCENT`]: on cgroup v2 a lower limit makes the
//! kernel kill it.

use std::collections::{BTreeMap, HashMap};

use drover_proto::model::{
    AllocState, Allocation, DesiredState, Resources, VerticalAutoscale, VerticalMode, WorkloadSpec,
    format_bytes, format_cpu,
};

use super::vpa::{self, Recommendation, Recommender};
use crate::changes::ChangeSet;
use crate::events;
use crate::state::ClusterState;
use crate::store::Write;

/// A target this far above the current value (percent) makes a running replica grow.
pub const GROW_TOLERANCE_PERCENT: u64 = 5;

/// Memory is never set below the replica's working set plus this much (percent).
pub const MEMORY_HEADROOM_PERCENT: u64 = 10;

/// Drover's memory floor: VPA's 250 MiB is sized for Kubernetes pods; replicas on small
/// hosts are often far smaller.
pub const MIN_MEMORY_BYTES: u64 = 32 << 20;

/// What the vertical autoscalers remember between decisions (in memory, as VPA's
/// recommender without its checkpoints: a restarted coordinator learns afresh, and the
/// replicas keep the resources their allocations were given).
#[derive(Debug, Default)]
pub struct Resizers {
    recommenders: BTreeMap<String, Recommender>,
    /// Per allocation: when the last sample fed arrived, and its OOM-kill count.
    fed: HashMap<String, (u64, u64)>,
}

impl Resizers {
    /// Feeds the new samples of every vertically autoscaled workload's replicas, writes the
    /// `InPlace` changes to `changes`, and returns each workload's recommendation.
    pub fn run(
        &mut self,
        state: &ClusterState,
        now_ms: u64,
        changes: &mut ChangeSet,
    ) -> BTreeMap<String, Recommendation> {
        self.recommenders.retain(|name, _| {
            state
                .stored
                .workloads
                .get(name)
                .is_some_and(|r| r.vertical_autoscale.is_some())
        });
        self.fed
            .retain(|id, _| state.stored.allocations.contains_key(id));
        let mut recommendations = BTreeMap::new();
        for (name, record) in &state.stored.workloads {
            let Some(vertical) = &record.vertical_autoscale else {
                continue;
            };
            let config = vpa::Config {
                min_memory_bytes: MIN_MEMORY_BYTES,
                ..vpa::Config::default()
            };
            let recommender = self
                .recommenders
                .entry(name.clone())
                .or_insert_with(|| Recommender::new(config));
            let allocations: Vec<&Allocation> = state
                .allocations_of(name)
                .filter(|a| a.desired == DesiredState::Run)
                .collect();
            for alloc in &allocations {
                feed(recommender, &mut self.fed, state, alloc);
            }
            recommender.retain_replicas(|id| allocations.iter().any(|a| a.id == id));
            let Some(recommendation) =
                recommender.recommend(now_ms, vertical.min_allowed, vertical.max_allowed)
            else {
                continue;
            };
            recommendations.insert(name.clone(), recommendation);
            if vertical.mode == VerticalMode::InPlace {
                let resize = Resize {
                    vertical,
                    recommendation: &recommendation,
                    allocations: &allocations,
                };
                resize.in_place(state, changes);
            }
        }
        recommendations
    }
}

/// `alloc`'s samples that arrived since the last run, and an OOM kill for every rise of its
/// count.
fn feed(
    recommender: &mut Recommender,
    fed: &mut HashMap<String, (u64, u64)>,
    state: &ClusterState,
    alloc: &Allocation,
) {
    let (mut last_at, mut last_ooms) = fed.get(&alloc.id).copied().unwrap_or((0, 0));
    for observed in state.usage.window(&alloc.id) {
        if observed.at_ms <= last_at {
            continue;
        }
        let usage = &observed.usage;
        recommender.add_sample(
            &alloc.id,
            usage.cpu_millis,
            alloc.resources.cpu_millis,
            usage.memory_working_set_bytes,
            observed.at_ms,
        );
        // A lower count is a new container (its cgroup starts at zero).
        if usage.oom_kills > last_ooms {
            let limit = usage
                .memory_limit_bytes
                .unwrap_or(alloc.resources.memory_bytes);
            recommender.record_oom(&alloc.id, limit, observed.at_ms);
        }
        last_at = observed.at_ms;
        last_ooms = usage.oom_kills;
    }
    fed.insert(alloc.id.clone(), (last_at, last_ooms));
}

/// One workload's resize decision.
struct Resize<'a> {
    vertical: &'a VerticalAutoscale,
    recommendation: &'a Recommendation,
    allocations: &'a [&'a Allocation],
}

impl Resize<'_> {
    /// The running replicas whose resources are off the recommendation get it, where their
    /// node holds it (the others are replaced on other nodes: [`replacement`]).
    fn in_place(&self, state: &ClusterState, changes: &mut ChangeSet) {
        let (vertical, recommendation) = (self.vertical, *self.recommendation);
        let mut allocated = state.allocated_by_node();
        for alloc in self.allocations {
            let Some(wanted) = wanted_for(state, alloc, vertical, &recommendation) else {
                continue;
            };
            let node = alloc.node.as_str();
            let on_node = allocated.get(node).copied().unwrap_or_default();
            let after = on_node.minus(alloc.resources).plus(wanted);
            if !fits(state, node, after) {
                continue;
            }
            allocated.insert(node, after);
            let mut resized = (*alloc).clone();
            resized.resources = wanted;
            changes.push(Write::PutAllocation(resized));
            changes.event(
                events::RESIZED,
                &alloc.id,
                format!(
                    "resized {} in place on node {node}: {} → {} (recommended {})",
                    alloc.id,
                    describe(alloc.resources),
                    describe(wanted),
                    describe(recommendation.target),
                ),
            );
        }
    }
}

/// What running `alloc` should have instead of its resources, if anything.
fn wanted_for(
    state: &ClusterState,
    alloc: &Allocation,
    vertical: &VerticalAutoscale,
    recommendation: &Recommendation,
) -> Option<Resources> {
    let running = matches!(
        state.alloc_state(&alloc.id),
        AllocState::Running | AllocState::Healthy
    );
    if !running {
        return None;
    }
    let working_set = state
        .usage
        .window(&alloc.id)
        .last()
        .map(|o| o.usage.memory_working_set_bytes);
    let wanted = wanted(alloc.resources, vertical, recommendation, working_set);
    (wanted != alloc.resources).then_some(wanted)
}

/// Whether `node` holds `allocated` (a node this coordinator has not heard from does not).
fn fits(state: &ClusterState, node: &str, allocated: Resources) -> bool {
    state
        .nodes
        .get(node)
        .is_some_and(|n| allocated.fits_in(n.info.capacity))
}

/// Why `alloc` is to be replaced by a replica of the recommended resources, if it is: its
/// workload's vertical autoscaler is `Recreate` and its resources are off the
/// recommendation, or `InPlace` and its node cannot hold the change. The rollout planner
/// replaces it as it replaces a replica of a draining node (within the surge, the old one
/// stopping once the availability rule allows); new replicas get the resources by
/// [`sized`].
pub fn replacement(
    state: &ClusterState,
    record: &crate::store::WorkloadRecord,
    alloc: &Allocation,
) -> Option<String> {
    let vertical = record.vertical_autoscale.as_ref()?;
    if !matches!(
        vertical.mode,
        VerticalMode::InPlace | VerticalMode::Recreate
    ) || alloc.revision != record.revision
        || alloc.desired != DesiredState::Run
    {
        return None;
    }
    let recommendation = state.recommendations.get(&record.name)?;
    let wanted = wanted_for(state, alloc, vertical, recommendation)?;
    let resources = describe(wanted);
    if vertical.mode == VerticalMode::Recreate {
        return Some(format!(
            "its vertical autoscaler recommends {resources} (Recreate): a replica with them replaces it"
        ));
    }
    let allocated = state
        .allocated_by_node()
        .get(alloc.node.as_str())
        .copied()
        .unwrap_or_default();
    let after = allocated.minus(alloc.resources).plus(wanted);
    (!fits(state, &alloc.node, after)).then(|| {
        format!(
            "its vertical autoscaler recommends {resources}, more than node {} holds: a replica with them on another node replaces it",
            alloc.node
        )
    })
}

/// What a replica with `current` resources should have, by the rules in the module doc.
fn wanted(
    current: Resources,
    vertical: &VerticalAutoscale,
    recommendation: &Recommendation,
    working_set: Option<u64>,
) -> Resources {
    let cpu = if vertical.controls_cpu {
        dimension(
            current.cpu_millis,
            recommendation.target.cpu_millis,
            recommendation.upper.cpu_millis,
        )
    } else {
        current.cpu_millis
    };
    let mut memory = if vertical.controls_memory {
        dimension(
            current.memory_bytes,
            recommendation.target.memory_bytes,
            recommendation.upper.memory_bytes,
        )
    } else {
        current.memory_bytes
    };
    if memory != current.memory_bytes {
        memory = match working_set {
            Some(used) => memory.max(used.saturating_add(used / 100 * MEMORY_HEADROOM_PERCENT)),
            // No sample to know what it uses: grow, never shrink blind.
            None => memory.max(current.memory_bytes),
        };
        // What it uses leaves nothing to shrink.
        if current.memory_bytes != 0
            && memory > current.memory_bytes
            && !grows(current.memory_bytes, memory)
        {
            memory = current.memory_bytes;
        }
    }
    Resources {
        cpu_millis: cpu,
        memory_bytes: memory,
    }
}

/// Whether `target` is more than the tolerance above `current`.
fn grows(current: u64, target: u64) -> bool {
    target > current.saturating_add(current / 100 * GROW_TOLERANCE_PERCENT)
}

/// One resource: no limit yet or too small → the target; above the upper bound → the
/// target; otherwise unchanged.
fn dimension(current: u64, target: u64, upper: u64) -> u64 {
    if current == 0 || grows(current, target) || current > upper {
        target
    } else {
        current
    }
}

/// `spec` with the resources its workload's vertical autoscaler recommends, for new
/// replicas: every mode but `Off`, in the resources it controls.
pub fn sized(state: &ClusterState, name: &str, spec: &WorkloadSpec) -> WorkloadSpec {
    let vertical = state
        .stored
        .workloads
        .get(name)
        .and_then(|r| r.vertical_autoscale.as_ref());
    let (Some(vertical), Some(recommendation)) = (vertical, state.recommendations.get(name)) else {
        return spec.clone();
    };
    if vertical.mode == VerticalMode::Off {
        return spec.clone();
    }
    let mut sized = spec.clone();
    if vertical.controls_cpu {
        sized.resources.cpu_millis = recommendation.target.cpu_millis;
    }
    if vertical.controls_memory {
        sized.resources.memory_bytes = recommendation.target.memory_bytes;
    }
    sized
}

/// `cpu 250m, memory 64Mi`, for events.
pub fn describe(r: Resources) -> String {
    format!(
        "cpu {}, memory {}",
        format_cpu(r.cpu_millis),
        format_bytes(r.memory_bytes)
    )
}

#[cfg(test)]
mod tests;
