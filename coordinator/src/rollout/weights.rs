//! The per-revision weights a rollout gives the proxies.

use std::collections::BTreeMap;

use drover_proto::model::{AllocState, DesiredState};

use crate::state::ClusterState;
use crate::store::RolloutPhase;

/// The per-revision weights every proxy applies to a service: a canary step's split
/// (exact, whatever the replica counts), weight 0 for a revision whose rollout failed, or
/// else the operator's weights (`drover weights`, `traffic.weights`; empty: one pool).
pub fn route_weights(state: &ClusterState, service: &str) -> BTreeMap<u64, u32> {
    let Some(record) = state.stored.workloads.get(service) else {
        return BTreeMap::new();
    };
    if !record.traffic.revision_weights.is_empty() {
        return record.traffic.revision_weights.clone();
    }
    let mut live: BTreeMap<u64, u32> = BTreeMap::new();
    for alloc in state.allocations_of(service) {
        if alloc.desired == DesiredState::Run && !state.alloc_state(&alloc.id).is_terminal() {
            *live.entry(alloc.revision).or_default() += 1;
        }
    }
    let target = record.revision;
    let others: u32 = live
        .iter()
        .filter(|(r, _)| **r != target)
        .map(|(_, n)| *n)
        .sum();
    if others == 0 {
        return BTreeMap::new();
    }
    let step = record.rollout.as_ref().and_then(|r| {
        (r.revision == target && r.phase != RolloutPhase::Complete)
            .then(|| {
                record
                    .update
                    .canary
                    .get(r.step as usize)
                    .map(|s| (r.phase, s.weight))
            })
            .flatten()
    });
    let mut weights = BTreeMap::new();
    match step {
        Some((RolloutPhase::Progressing, weight)) => {
            // Each old replica gets its share of (100 − w); the canary revision w in all.
            for (revision, count) in &live {
                let w = if *revision == target {
                    weight.saturating_mul(others)
                } else {
                    (100 - weight.min(100)).saturating_mul(*count)
                };
                weights.insert(*revision, w);
            }
        }
        _ => {
            let failed_target = step.is_some();
            let zeroed = |r: &u64| {
                (*r == target && failed_target)
                    || (*r != target && record.failed_revisions.contains_key(r))
            };
            if !live.keys().any(&zeroed) {
                return BTreeMap::new();
            }
            // A failed revision loses its traffic only once the revision taking over can
            // carry the service (replicas − maxUnavailable ready); until then, one pool.
            let (_, unavailable) = record.update.resolve(record.replicas);
            let floor = record.replicas.saturating_sub(unavailable).max(1);
            let ready_target = state
                .allocations_of(service)
                .filter(|a| a.desired == DesiredState::Run && a.revision == target)
                .filter(|a| state.alloc_state(&a.id) == AllocState::Healthy)
                .count() as u32;
            if !failed_target && ready_target < floor {
                return BTreeMap::new();
            }
            for (revision, count) in &live {
                weights.insert(*revision, if zeroed(revision) { 0 } else { *count });
            }
            if weights.values().all(|w| *w == 0) {
                return BTreeMap::new();
            }
        }
    }
    weights
}
