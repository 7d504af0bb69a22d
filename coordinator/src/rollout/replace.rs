//! The rolling rules: which replicas to place and which to stop for what the rollout wants,
//! and where it stands for the operator.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_proto::model::{AllocState, Allocation, UpdateKind};

use super::{Classes, Pass, Placing, Progress, Replica, canary_replicas, is_ready, ms, secs};
use crate::store::RolloutPhase;

/// Stops and placements that move the replicas toward what the rollout wants; returns what
/// it waits for.
pub(super) fn replace<'a>(
    pass: &mut Pass<'a, '_>,
    c: &Classes<'_, 'a>,
    stops: &mut Vec<(&'a Allocation, String)>,
    place: &mut Vec<Placing<'a>>,
) -> String {
    let record = pass.record.clone();
    let replicas = record.replicas;
    let revision = record.revision;
    let rollout = record.rollout.as_ref();
    let phase = rollout.map(|r| r.phase);
    let progressing = phase == Some(RolloutPhase::Progressing);
    if phase == Some(RolloutPhase::Failed) || (progressing && record.paused) {
        frozen(pass, c, stops, place);
        return match rollout {
            Some(r) if r.phase == RolloutPhase::Failed => format!("failed: {}", r.cause),
            _ => "paused: no revision is replaced until `drover rollout resume`".to_string(),
        };
    }
    let step = rollout
        .filter(|_| progressing)
        .and_then(|r| record.update.canary.get(r.step as usize));
    let wanted = step.map_or(replicas, |s| canary_replicas(replicas, s.weight));
    let incoming = c.incoming.len() as u32;

    if incoming > wanted {
        let why = match step {
            Some(s) => format!("the canary step (weight {}%) runs {wanted}", s.weight),
            None => format!("the service wants {replicas} replicas"),
        };
        for alloc in surplus(&c.incoming, (incoming - wanted) as usize) {
            stops.push((alloc, why.clone()));
        }
    }
    // Failed replicas outside a rollout are replaced on other nodes (a rollout in progress
    // fails instead, so a broken revision never loops).
    if incoming >= wanted {
        for r in &c.failed {
            stops.push((
                r.alloc,
                "it failed and the service has its replicas".to_string(),
            ));
        }
    }
    let failed: Vec<&'a Allocation> = if incoming < wanted {
        c.failed.iter().map(|r| r.alloc).collect()
    } else {
        Vec::new()
    };

    if record.update.kind == UpdateKind::Recreate && !c.old.is_empty() {
        for r in &c.old {
            stops.push((
                r.alloc,
                format!(
                    "revision {} is replaced by {revision} (Recreate: old replicas stop first)",
                    r.alloc.revision
                ),
            ));
        }
        return format!(
            "stopping {} old replicas before starting new ones",
            c.old.len()
        );
    }
    if record.update.kind == UpdateKind::Recreate && pass.input.stopping_elsewhere > 0 {
        return format!(
            "waiting for {} old replicas to stop before starting new ones",
            pass.input.stopping_elsewhere
        );
    }

    let (surge, unavailable) = record.update.resolve(replicas);
    // During a canary step the old replicas stay at full strength beside the canary.
    let keep_old = step.is_some();
    let cap = replicas + if keep_old { surge.max(wanted) } else { surge };
    // During a step, old replicas beyond the desired count (a rollover, a scale-down) do
    // not hold the canary back; they go once it is promoted.
    let old_counted = if keep_old {
        (c.old.len() as u32).min(replicas)
    } else {
        c.old.len() as u32
    };
    let total = incoming + old_counted + c.migrating.len() as u32;
    let count = cap
        .saturating_sub(total)
        .min(wanted.saturating_sub(incoming));
    if count > 0 {
        place.push(Placing {
            revision,
            count,
            failed,
        });
    }
    if keep_old {
        // The old revision stays at full strength during the step: replicas lost or on a
        // draining node are placed again as they were, within the surge.
        let from = rollout.and_then(|r| r.from_revision);
        let staying = c.old.iter().filter(|r| !r.draining).count() as u32;
        let missing = replicas
            .saturating_sub(staying)
            .min(cap.saturating_sub(total + count).max(1));
        if let Some(from) = from.filter(|f| pass.input.revisions.contains(f))
            && staying < replicas
            && missing > 0
            && (c.old.len() as u32) < replicas + surge.max(1)
        {
            place.push(Placing {
                revision: from,
                count: missing,
                failed: Vec::new(),
            });
        }
    }

    // Stops of outgoing replicas: one that is not ready serves nothing and goes at once;
    // a ready one only while `replicas − maxUnavailable` stay available without it. A
    // replica whose node is not connected is left alone (it may be lost, or come back).
    let min_available = replicas.saturating_sub(unavailable);
    let available_new = c.incoming.iter().filter(|r| pass.available(r)).count() as u32;
    let mut available = available_new
        + c.old
            .iter()
            .chain(&c.migrating)
            .filter(|r| is_ready(r))
            .count() as u32;
    let mut outgoing: Vec<&&Replica<'_>> = c.migrating.iter().collect();
    outgoing.extend(c.old.iter().filter(|r| !keep_old || r.draining));
    outgoing.sort_by_key(|r| {
        (
            is_ready(r),
            !r.draining,
            r.alloc.created_unix_ms,
            r.alloc.id.clone(),
        )
    });
    let mut held = 0;
    for r in outgoing {
        if !r.node_ready {
            held += 1;
            continue;
        }
        if is_ready(r) {
            if available <= min_available {
                held += 1;
                continue;
            }
            available -= 1;
        }
        let why = if let Some(why) = r.resize.as_ref().filter(|_| !r.draining) {
            why.clone()
        } else if r.draining && r.alloc.revision == revision {
            format!("node {} is draining", r.alloc.node)
        } else {
            format!("revision {} is replaced by {revision}", r.alloc.revision)
        };
        stops.push((r.alloc, why));
    }

    let min_ready = record.update.min_ready;
    if !min_ready.is_zero() {
        for r in &c.incoming {
            if let Some(since) = r.ready_since_ms.filter(|_| is_ready(r)) {
                pass.wake_at(since.saturating_add(ms(min_ready)).saturating_add(1));
            }
        }
    }
    let mut message =
        format!("{available_new} of {replicas} replicas of revision {revision} available");
    if !min_ready.is_zero() {
        message.push_str(&format!(" (minReady {})", secs(min_ready)));
    }
    if held > 0 {
        message.push_str(&format!(
            "; {held} old replicas wait for new ones to become available"
        ));
    }
    message
}

/// A paused or failed rollout: no revision replaces another, but the service keeps its
/// replica count (losses and scaling, with the last stable revision, or the current one
/// while paused without a stable one) and drains go on under the availability rule.
fn frozen<'a>(
    pass: &Pass<'a, '_>,
    c: &Classes<'_, 'a>,
    stops: &mut Vec<(&'a Allocation, String)>,
    place: &mut Vec<Placing<'a>>,
) {
    let record = &pass.record;
    let replicas = record.replicas;
    let (surge, unavailable) = record.update.resolve(replicas);
    let live: Vec<&Replica<'a>> = c
        .incoming
        .iter()
        .chain(&c.migrating)
        .chain(&c.old)
        .copied()
        .collect();
    let staying: Vec<&Replica<'a>> = live.iter().copied().filter(|r| !r.draining).collect();
    let fill = record
        .stable_revision
        .filter(|s| pass.input.revisions.contains(s) && !record.failed_revisions.contains_key(s))
        .or_else(|| record.paused.then_some(record.revision));
    let count = replicas
        .saturating_sub(staying.len() as u32)
        .min((replicas + surge).saturating_sub(live.len() as u32).max(1));
    if let Some(revision) = fill
        && count > 0
        && staying.len() < replicas as usize
    {
        place.push(Placing {
            revision,
            count,
            failed: Vec::new(),
        });
    }
    if staying.len() > replicas as usize {
        // Replicas of a revision whose rollout failed go first.
        let excess = staying.len() - replicas as usize;
        let (failed, kept): (Vec<&Replica<'a>>, Vec<&Replica<'a>>) = staying
            .iter()
            .partition(|r| record.failed_revisions.contains_key(&r.alloc.revision));
        let mut chosen = surplus(&failed, excess.min(failed.len()));
        chosen.extend(surplus(&kept, excess - chosen.len()));
        for alloc in chosen {
            stops.push((alloc, format!("the service wants {replicas} replicas")));
        }
    }
    let min_available = replicas.saturating_sub(unavailable);
    let mut ready = live.iter().filter(|r| is_ready(r)).count() as u32;
    let mut draining: Vec<&Replica<'a>> = live.iter().copied().filter(|r| r.draining).collect();
    draining.sort_by_key(|r| (is_ready(r), r.alloc.created_unix_ms, r.alloc.id.clone()));
    for r in draining {
        if !r.node_ready {
            continue;
        }
        if is_ready(r) {
            if ready <= min_available {
                continue;
            }
            ready -= 1;
        }
        stops.push((r.alloc, format!("node {} is draining", r.alloc.node)));
    }
}

/// Which of `active` to stop: pending ones first, then those on the nodes most crowded with
/// this service, newest first. Deterministic.
fn surplus<'a>(active: &[&Replica<'a>], count: usize) -> Vec<&'a Allocation> {
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for r in active {
        *per_node.entry(r.alloc.node.as_str()).or_default() += 1;
    }
    let mut ranked: Vec<&Replica<'a>> = active.to_vec();
    ranked.sort_by_key(|r| {
        (
            matches!(r.state, AllocState::Running | AllocState::Healthy),
            std::cmp::Reverse(per_node[r.alloc.node.as_str()]),
            std::cmp::Reverse(r.alloc.created_unix_ms),
            std::cmp::Reverse(r.alloc.id.clone()),
        )
    });
    ranked.into_iter().take(count).map(|r| r.alloc).collect()
}

pub(super) fn progress(pass: &Pass<'_, '_>, c: &Classes<'_, '_>, waiting: String) -> Progress {
    let record = &pass.record;
    let updated: Vec<&&Replica<'_>> = c.incoming.iter().chain(&c.migrating).collect();
    let mut progress = Progress {
        desired: record.replicas,
        updated: updated.len() as u32,
        ready: updated.iter().filter(|r| is_ready(r)).count() as u32,
        available: c.incoming.iter().filter(|r| pass.available(r)).count() as u32,
        total: (updated.len() + c.old.len() + c.pinned.len()) as u32,
        steps: record.update.canary.len() as u32,
        ..Progress::default()
    };
    let Some(rollout) = &record.rollout else {
        progress.message = waiting;
        return progress;
    };
    progress.message = match rollout.phase {
        RolloutPhase::Complete => format!(
            "complete: {} of {} replicas of revision {} available",
            progress.available, record.replicas, record.revision
        ),
        RolloutPhase::Failed => format!("failed: {}", rollout.cause),
        RolloutPhase::Progressing => waiting,
    };
    if rollout.phase != RolloutPhase::Progressing {
        return progress;
    }
    if let Some(step) = record.update.canary.get(rollout.step as usize) {
        let (canary, stable) = pass.input.traffic.since(record.revision, &rollout.baseline);
        progress.step = rollout.step + 1;
        progress.weight = step.weight;
        progress.canary = canary;
        progress.stable = stable;
        let pause_ends = rollout.step_started_unix_ms.saturating_add(ms(step.pause));
        let left = Duration::from_millis(pause_ends.saturating_sub(pass.now()));
        let analysis = &record.update.analysis;
        let mut message = format!(
            "canary step {} of {} (weight {}%): {}; canary {canary}, stable {stable}",
            progress.step, progress.steps, step.weight, progress.message
        );
        if canary.connections < analysis.min_sample {
            message.push_str(&format!(
                "; waiting for {} connections to judge",
                analysis.min_sample
            ));
        }
        if !left.is_zero() {
            message.push_str(&format!("; pause ends in {}", secs(left)));
        }
        progress.message = message;
    }
    progress
}
