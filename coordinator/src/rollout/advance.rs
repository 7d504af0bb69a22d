//! The rollout's state machine: progress, canary steps, completion, failure and revert.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{
    CRASH_RESTARTS, Classes, Input, Pass, Verdict, canary_replicas, judge, ms, secs, start,
};
use crate::events;
use crate::store::{RolloutPhase, WorkloadRecord};

/// Moves the rollout's state: progress, steps, completion, failure and revert.
pub(super) fn advance(pass: &mut Pass<'_, '_>, c: &Classes<'_, '_>) {
    let progressing = pass.record.rollout.as_ref().is_some_and(|r| {
        r.phase == RolloutPhase::Progressing && r.revision == pass.record.revision
    });
    if !progressing {
        image_failure(pass, c);
    }
    let replicas = pass.record.replicas;
    let available = c.incoming.iter().filter(|r| pass.available(r)).count() as u32;
    let Some(mut rollout) = pass.record.rollout.clone() else {
        // No rollout on record (a store from before rollouts): a fully available service
        // is stable.
        if available >= replicas && c.old.is_empty() && c.migrating.is_empty() {
            pass.record.stable_revision = Some(pass.record.revision);
        }
        return;
    };
    if rollout.phase != RolloutPhase::Progressing || rollout.revision != pass.record.revision {
        return;
    }
    let now = pass.now();
    if pass.record.paused {
        return;
    }
    if available > rollout.most_available {
        rollout.most_available = available;
        rollout.progress_unix_ms = now;
    }
    let steps = pass.record.update.canary.clone();
    if replicas == 0 {
        // Nothing runs to judge: a service scaled to 0 takes no canary steps.
        rollout.step = steps.len() as u32;
    }
    let revision = pass.record.revision;
    let mut cause = failure(pass, c, rollout.started_unix_ms);
    if cause.is_none()
        && let Some(step) = steps.get(rollout.step as usize)
    {
        let (canary, stable) = pass.input.traffic.since(revision, &rollout.baseline);
        let wanted = canary_replicas(replicas, step.weight);
        let pause_ends = rollout.step_started_unix_ms.saturating_add(ms(step.pause));
        match judge(canary, stable, &pass.record.update.analysis) {
            Verdict::Fail(why) => {
                cause = Some(format!(
                    "canary step {} of {} (weight {}%): {why}",
                    rollout.step + 1,
                    steps.len(),
                    step.weight
                ));
            }
            Verdict::Pass if available >= wanted && now >= pause_ends => {
                rollout.step += 1;
                rollout.step_started_unix_ms = now;
                rollout.progress_unix_ms = now;
                rollout.baseline = pass.input.traffic.baseline(revision);
                pass.events.push((
                    events::ROLLOUT_STEP,
                    format!(
                        "revision {revision}: canary step {} of {} (weight {}%) passed: {canary} (stable: {stable})",
                        rollout.step,
                        steps.len(),
                        step.weight
                    ),
                ));
                if rollout.step as usize == steps.len() {
                    pass.events.push((
                        events::ROLLOUT_PROMOTED,
                        format!(
                            "revision {revision} promoted after {} canary steps; the rest rolls at maxSurge",
                            steps.len()
                        ),
                    ));
                }
            }
            _ => pass.wake_at(pause_ends),
        }
    }
    let deadline = pass.record.update.progress_deadline;
    // A step's pause is progress as planned: the deadline counts from its end.
    let pause_ends = steps.get(rollout.step as usize).map_or(0, |s| {
        rollout.step_started_unix_ms.saturating_add(ms(s.pause))
    });
    let deadline_at = rollout
        .progress_unix_ms
        .max(pause_ends)
        .saturating_add(ms(deadline));
    let waits_for_replicas = available < replicas || (rollout.step as usize) < steps.len();
    if cause.is_none() && now > deadline_at && waits_for_replicas {
        let waiting = c
            .incoming
            .iter()
            .find(|r| !pass.available(r) && !r.message.is_empty())
            .map(|r| format!("; replica {} says: {}", r.alloc.id, r.message))
            .unwrap_or_default();
        cause = Some(format!(
            "no progress in {}: {available} of {replicas} replicas of revision {revision} available{waiting}",
            secs(deadline)
        ));
    }
    if let Some(cause) = cause {
        pass.record.rollout = Some(rollout);
        fail(pass, &cause, false);
        return;
    }
    pass.wake_at(deadline_at.saturating_add(1));
    let promoted = rollout.step as usize >= steps.len();
    if promoted && available >= replicas && c.old.is_empty() && c.migrating.is_empty() {
        rollout.phase = RolloutPhase::Complete;
        rollout.ended_unix_ms = Some(now);
        let took = Duration::from_millis(now.saturating_sub(rollout.started_unix_ms));
        pass.events.push((
            events::ROLLOUT_COMPLETED,
            format!(
                "revision {revision}: {replicas} of {replicas} replicas available ({} after start)",
                humantime::format_duration(Duration::from_millis(
                    took.as_millis() as u64 / 100 * 100
                ))
            ),
        ));
        pass.record.stable_revision = Some(revision);
        pass.record.failed_revisions.remove(&revision);
        pass.prune = prune(pass.input, &pass.record);
    }
    pass.record.rollout = Some(rollout);
}

/// Outside a rollout (one in progress fails on any failed replica): a replica that failed in
/// a way that follows the image — it is missing, or its command cannot run — would fail on
/// every node, so the revision fails at once instead of its replacements moving from node
/// to node (a pull each time). Nothing more of it is placed; the failed replica stays
/// visible until an operator applies a fix or undoes.
fn image_failure(pass: &mut Pass<'_, '_>, c: &Classes<'_, '_>) {
    let revision = pass.record.revision;
    if pass.record.failed_revisions.contains_key(&revision) {
        return;
    }
    let Some(r) = c.failed.iter().find(|r| r.image_failure) else {
        return;
    };
    let cause = format!(
        "replica {} on node {} failed: {} (it would fail the same way on every node)",
        r.alloc.id, r.alloc.node, r.message
    );
    if pass.record.rollout.is_none() {
        let now = pass.now();
        pass.record.rollout = Some(start(revision, None, "failure", now));
    }
    if let Some(rollout) = pass.record.rollout.as_mut() {
        // The failure is this revision's, whatever rollout last ended.
        rollout.revision = revision;
    }
    fail(pass, &cause, false);
    if let Some(rollout) = pass.record.rollout.as_mut()
        && rollout.revision == revision
    {
        rollout.phase = RolloutPhase::Failed;
        rollout.cause = cause;
        rollout.ended_unix_ms = Some(pass.input.now_unix_ms);
    }
}

/// Why the rollout's revision fails now, if it does: a new replica failed or crash-loops.
fn failure(pass: &Pass<'_, '_>, c: &Classes<'_, '_>, started_unix_ms: u64) -> Option<String> {
    if let Some(r) = c.failed.first() {
        return Some(format!(
            "replica {} on node {} failed: {}",
            r.alloc.id, r.alloc.node, r.message
        ));
    }
    c.incoming
        .iter()
        .chain(&c.migrating)
        // Restarts count against replicas placed for this rollout only: a long-lived
        // replica's lifetime restarts say nothing of the revision's health now.
        .filter(|r| r.alloc.created_unix_ms >= started_unix_ms)
        .find(|r| r.restarts >= CRASH_RESTARTS && !pass.available(r))
        .map(|r| {
            let said = if r.message.is_empty() {
                String::new()
            } else {
                format!(": {}", r.message)
            };
            format!(
                "replica {} on node {} restarted {} times without becoming available{said}",
                r.alloc.id, r.alloc.node, r.restarts
            )
        })
}

/// Fails the rollout with `cause`; goes back to the last stable revision when `autoRevert`
/// is on (or an operator aborted) and there is one to go back to.
pub(super) fn fail(pass: &mut Pass<'_, '_>, cause: &str, aborted: bool) {
    let now = pass.now();
    let record = &mut pass.record;
    let revision = record.revision;
    record.failed_revisions.insert(revision, cause.to_string());
    pass.events.push((
        events::ROLLOUT_FAILED,
        format!("rollout of revision {revision} failed: {cause}"),
    ));
    let back_to = record
        .stable_revision
        .filter(|s| *s != revision && pass.input.revisions.contains(s));
    match back_to {
        Some(stable) if record.update.auto_revert || aborted => {
            record.revision = stable;
            let by = if aborted {
                format!("abort of revision {revision}")
            } else {
                format!("auto-revert from revision {revision}")
            };
            let mut back = start(stable, Some(revision), &by, now);
            // Going back to what ran well takes no canary steps.
            back.step = record.update.canary.len() as u32;
            record.rollout = Some(back);
            pass.events.push((
                events::ROLLOUT_REVERTED,
                format!(
                    "back to stable revision {stable} ({by}); revision {revision} gets no traffic"
                ),
            ));
        }
        _ => {
            if let Some(rollout) = record.rollout.as_mut() {
                rollout.phase = RolloutPhase::Failed;
                rollout.cause = cause.to_string();
                rollout.ended_unix_ms = Some(now);
            }
        }
    }
}

/// Revisions beyond `revisionHistoryLimit` that nothing needs: not the current or stable
/// one, no allocation running them; oldest first.
fn prune(input: &Input<'_>, record: &WorkloadRecord) -> Vec<u64> {
    let keep = record.update.revision_history_limit as usize;
    let used: BTreeSet<u64> = input.replicas.iter().map(|r| r.alloc.revision).collect();
    let old: Vec<u64> = input
        .revisions
        .iter()
        .copied()
        .filter(|r| *r != record.revision && Some(*r) != record.stable_revision)
        .collect();
    let excess = old.len().saturating_sub(keep);
    old.into_iter()
        .take(excess)
        .filter(|r| !used.contains(r))
        .collect()
}

/// An operator's abort: the rollout fails with `cause` and goes back to the last stable
/// revision whatever `autoRevert` says (or stops where it is when there is none). Returns
/// the updated record and the events.
pub fn abort(input: &Input<'_>, cause: &str) -> (WorkloadRecord, Vec<(&'static str, String)>) {
    let mut pass = Pass::new(input);
    fail(&mut pass, cause, true);
    (pass.record, pass.events)
}
