//! Rollouts: how a service moves from the replicas it runs to the replicas its revision
//! wants — revision changes, canary steps, drains and failure replacement, all through one
//! planner. Pure: a snapshot of one service in, stops, placements and the updated rollout
//! record out.
//!
//! The rolling rules are Kubernetes': at most `replicas + maxSurge` placed, and a replica
//! that is ready is stopped only while at least `replicas − maxUnavailable` stay ready
//! (new replicas count once available: ready for `minReady` without a restart). A rollout
//! fails when a new replica fails, crash-loops, the canary analysis finds it worse than the
//! stable revision, or the progress deadline passes; a failed rollout places nothing more,
//! and with `autoRevert` goes back to the last stable revision.

mod advance;
mod analysis;
#[cfg(test)]
mod proptests;
mod replace;
#[cfg(test)]
mod tests;
mod weights;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use drover_proto::model::{AllocState, Allocation};

pub use advance::abort;
pub use analysis::{Verdict, Window, judge, percent};
pub use weights::route_weights;

use crate::store::{Rollout, RolloutPhase, StoredState, TrafficBaseline, WorkloadRecord};

/// Restarts after which a new replica that is not available fails its rollout (a crash
/// loop), long before the restart policy gives up.
pub const CRASH_RESTARTS: u32 = 3;

/// One replica the coordinator wants running (desired `run`), as the planner sees it.
#[derive(Debug, Clone)]
pub struct Replica<'a> {
    /// The allocation.
    pub alloc: &'a Allocation,
    /// Its observed state.
    pub state: AllocState,
    /// Restarts its agent made.
    pub restarts: u32,
    /// What its agent last said about it.
    pub message: &'a str,
    /// It failed in a way that follows the image (missing, or its command cannot run).
    pub image_failure: bool,
    /// Since when it has been ready without interruption, ms since the Unix epoch.
    pub ready_since_ms: Option<u64>,
    /// Its node is draining.
    pub draining: bool,
    /// Why it is to be replaced by a replica of other resources (its vertical
    /// autoscaler's `Recreate`, or an in-place growth its node cannot hold); replaced as a
    /// replica of a draining node is, the new one available first.
    pub resize: Option<String>,
    /// Its node is connected (a replica on a node that is not is never stopped to make
    /// room: it may be lost, or come back as it was).
    pub node_ready: bool,
}

/// Connection outcomes of the service's revisions, counted since this coordinator started.
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    /// Coordinator boot the counts belong to.
    pub boot: u64,
    /// (connections, failed) per revision.
    pub by_revision: BTreeMap<u64, (u64, u64)>,
}

impl Traffic {
    /// Counts of `revision`, and of every other revision summed.
    fn split(&self, revision: u64) -> ((u64, u64), (u64, u64)) {
        let mut canary = (0, 0);
        let mut stable = (0, 0);
        for (rev, (connections, failed)) in &self.by_revision {
            let side = if *rev == revision {
                &mut canary
            } else {
                &mut stable
            };
            side.0 += connections;
            side.1 += failed;
        }
        (canary, stable)
    }

    /// The counts now, as the baseline of a step that starts now.
    pub fn baseline(&self, revision: u64) -> TrafficBaseline {
        let (canary, stable) = self.split(revision);
        TrafficBaseline {
            boot: self.boot,
            canary,
            stable,
        }
    }

    /// What happened since `baseline`: all of it when the baseline is of another boot
    /// (the counts restarted with this coordinator).
    fn since(&self, revision: u64, baseline: &TrafficBaseline) -> (Window, Window) {
        let (canary, stable) = self.split(revision);
        let (base_canary, base_stable) = if baseline.boot == self.boot {
            (baseline.canary, baseline.stable)
        } else {
            ((0, 0), (0, 0))
        };
        (
            Window::since(canary, base_canary),
            Window::since(stable, base_stable),
        )
    }
}

/// Everything the planner reads about one service.
#[derive(Debug)]
pub struct Input<'a> {
    /// The service record (revision, replicas, rollout settings and state).
    pub record: &'a WorkloadRecord,
    /// Its allocations that should run.
    pub replicas: Vec<Replica<'a>>,
    /// Allocations of another revision told to stop that still run (a `Recreate` waits for
    /// them to end).
    pub stopping_elsewhere: usize,
    /// Revisions that exist (a revert goes only to one of them).
    pub revisions: BTreeSet<u64>,
    /// Connection outcomes per revision.
    pub traffic: Traffic,
    /// Now, ms since the Unix epoch.
    pub now_unix_ms: u64,
}

/// Replicas of one revision to place.
#[derive(Debug, Clone)]
pub struct Placing<'a> {
    /// Revision they run.
    pub revision: u64,
    /// How many.
    pub count: u32,
    /// Failed allocations they replace (stopped once a replacement is placed; their nodes
    /// are avoided).
    pub failed: Vec<&'a Allocation>,
}

/// Where a service's rollout stands, for the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Desired replicas.
    pub desired: u32,
    /// Placed replicas of the service's revision.
    pub updated: u32,
    /// Of those, ready.
    pub ready: u32,
    /// Of those, available (ready for `minReady` without a restart).
    pub available: u32,
    /// Every placed replica.
    pub total: u32,
    /// Canary step in progress, from 1; 0 outside canary steps.
    pub step: u32,
    /// Canary steps of the rollout.
    pub steps: u32,
    /// Percent of connections the revision gets in this step.
    pub weight: u32,
    /// The canary's connections and failures in this step.
    pub canary: Window,
    /// The other revisions' connections and failures in this step.
    pub stable: Window,
    /// What the rollout waits for, or how it ended.
    pub message: String,
}

/// What the planner decided for one service.
#[derive(Debug)]
pub struct Plan<'a> {
    /// Allocations to stop, with the reason.
    pub stops: Vec<(&'a Allocation, String)>,
    /// Replicas to place, by revision.
    pub place: Vec<Placing<'a>>,
    /// The record with the rollout's new state (equal to the input's when nothing changed).
    pub record: WorkloadRecord,
    /// Events: kind and message, about the service.
    pub events: Vec<(&'static str, String)>,
    /// Revisions to delete from the history.
    pub prune: Vec<u64>,
    /// Where the rollout stands.
    pub progress: Progress,
    /// The soonest time a pass should look again (a pause, `minReady` or a deadline ending).
    pub wake_at_ms: Option<u64>,
}

/// A new rollout to `revision`, replacing `from`.
pub fn start(revision: u64, from: Option<u64>, started_by: &str, now_unix_ms: u64) -> Rollout {
    Rollout {
        revision,
        from_revision: from,
        started_by: started_by.to_string(),
        started_unix_ms: now_unix_ms,
        progress_unix_ms: now_unix_ms,
        most_available: 0,
        phase: RolloutPhase::Progressing,
        step: 0,
        step_started_unix_ms: now_unix_ms,
        baseline: TrafficBaseline::default(),
        cause: String::new(),
        ended_unix_ms: None,
    }
}

/// Replicas a canary step of `weight` percent runs: the share of `replicas`, rounded up,
/// at least one.
pub fn canary_replicas(replicas: u32, weight: u32) -> u32 {
    if replicas == 0 {
        return 0;
    }
    let share = (u64::from(replicas) * u64::from(weight)).div_ceil(100);
    u32::try_from(share)
        .unwrap_or(u32::MAX)
        .clamp(1, replicas.max(1))
}

/// The replicas sorted into what they are to the rollout.
#[derive(Debug)]
struct Classes<'r, 'a> {
    /// Live replicas of the service's revision on nodes that keep them.
    incoming: Vec<&'r Replica<'a>>,
    /// Live replicas of the service's revision on draining nodes, or to be resized by
    /// replacement.
    migrating: Vec<&'r Replica<'a>>,
    /// Live replicas of other revisions.
    old: Vec<&'r Replica<'a>>,
    /// Live replicas of other revisions the operator's traffic weights keep.
    pinned: Vec<&'r Replica<'a>>,
    /// Failed replicas of the service's revision.
    failed: Vec<&'r Replica<'a>>,
    /// Ended replicas to stop (lost, stopped, failed of another revision), with the reason.
    ended: Vec<(&'a Allocation, String)>,
    /// Replicas lost with their node.
    lost: Vec<&'a Allocation>,
}

/// Ready as far as the rollout can count on it: healthy, on a node that is connected (the
/// last status of a node that is not may be stale, and proxies stop routing to it).
fn is_ready(r: &Replica<'_>) -> bool {
    r.state == AllocState::Healthy && r.node_ready
}

fn classify<'r, 'a>(record: &WorkloadRecord, replicas: &'r [Replica<'a>]) -> Classes<'r, 'a> {
    let mut c = Classes {
        incoming: Vec::new(),
        migrating: Vec::new(),
        old: Vec::new(),
        pinned: Vec::new(),
        failed: Vec::new(),
        ended: Vec::new(),
        lost: Vec::new(),
    };
    for r in replicas {
        let current = r.alloc.revision == record.revision;
        match r.state {
            AllocState::Failed if current => c.failed.push(r),
            state if state.is_terminal() => {
                if state == AllocState::Lost {
                    c.lost.push(r.alloc);
                }
                let reason = if state == AllocState::Failed {
                    format!(
                        "it failed and runs revision {}, not {}",
                        r.alloc.revision, record.revision
                    )
                } else {
                    format!("it is {state}; a replacement is placed")
                };
                c.ended.push((r.alloc, reason));
            }
            _ if current && (r.draining || r.resize.is_some()) => c.migrating.push(r),
            _ if current => c.incoming.push(r),
            _ if record
                .traffic
                .revision_weights
                .get(&r.alloc.revision)
                .is_some_and(|w| *w > 0) =>
            {
                c.pinned.push(r)
            }
            _ => c.old.push(r),
        }
    }
    c
}

/// State shared by the steps of one planning pass.
struct Pass<'a, 'i> {
    input: &'i Input<'a>,
    record: WorkloadRecord,
    events: Vec<(&'static str, String)>,
    prune: Vec<u64>,
    wake_at_ms: Option<u64>,
}

impl<'a, 'i> Pass<'a, 'i> {
    fn new(input: &'i Input<'a>) -> Pass<'a, 'i> {
        Pass {
            input,
            record: input.record.clone(),
            events: Vec::new(),
            prune: Vec::new(),
            wake_at_ms: None,
        }
    }

    fn now(&self) -> u64 {
        self.input.now_unix_ms
    }

    fn wake_at(&mut self, at: u64) {
        if at > self.now() {
            self.wake_at_ms = Some(self.wake_at_ms.map_or(at, |w| w.min(at)));
        }
    }

    fn min_ready_ms(&self) -> u64 {
        ms(self.record.update.min_ready)
    }

    /// Whether a replica of the service's revision counts as available now.
    fn available(&self, r: &Replica<'_>) -> bool {
        is_ready(r)
            && r.ready_since_ms
                .is_some_and(|since| self.now() >= since.saturating_add(self.min_ready_ms()))
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// Plans one service.
pub fn plan<'a>(input: &Input<'a>) -> Plan<'a> {
    let mut pass = Pass::new(input);
    let first = classify(&pass.record, &input.replicas);
    advance::advance(&mut pass, &first);
    // A revert changed the service's revision: sort the replicas again for it.
    let classes = if pass.record.revision == input.record.revision {
        first
    } else {
        classify(&pass.record, &input.replicas)
    };
    let mut stops: Vec<(&'a Allocation, String)> = classes.ended.clone();
    let mut place = Vec::new();
    let message = replace::replace(&mut pass, &classes, &mut stops, &mut place);
    let progress = replace::progress(&pass, &classes, message);
    Plan {
        stops,
        place,
        record: pass.record,
        events: pass.events,
        prune: pass.prune,
        progress,
        wake_at_ms: pass.wake_at_ms,
    }
}

/// Rollouts in progress as a restarted coordinator finds them, with their progress clock
/// restarted: the time it was down is not held against them, and agents get to report
/// before anything is judged.
pub fn resumed_after_restart(stored: &StoredState, now_unix_ms: u64) -> Vec<WorkloadRecord> {
    stored
        .workloads
        .values()
        .filter(|r| {
            r.rollout
                .as_ref()
                .is_some_and(|ro| ro.phase == RolloutPhase::Progressing)
        })
        .map(|r| {
            let mut record = r.clone();
            if let Some(rollout) = record.rollout.as_mut() {
                rollout.progress_unix_ms = now_unix_ms;
            }
            record
        })
        .collect()
}
