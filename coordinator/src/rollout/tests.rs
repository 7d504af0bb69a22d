//! The rollout planner through the reconcile pass, on a simulated cluster: operations
//! apply specs, passes place and stop, the test plays the agents.

use std::time::Duration;

use drover_proto::model::{
    AllocState, AllocStatus, CanaryStep, DesiredState, ReplicaCount, RevisionTraffic, UpdateKind,
    WorkloadSpec,
};

use super::*;
use crate::changes::ChangeSet;
use crate::events;
use crate::operations::{self, RolloutAction};
use crate::reconcile;
use crate::state::{ClusterState, test_node};
use crate::store::Write;

/// A simulated cluster: the coordinator's state, a clock, and the events so far.
pub(super) struct Sim {
    pub state: ClusterState,
    pub now: u64,
    pub events: Vec<(String, String)>,
}

pub(super) fn spec(image: &str, replicas: u32) -> WorkloadSpec {
    let mut spec = WorkloadSpec::new("web", image);
    spec.replicas = replicas;
    spec
}

impl Sim {
    pub fn new(nodes: usize) -> Sim {
        let mut state = ClusterState {
            boot: 1,
            ..ClusterState::default()
        };
        for i in 0..nodes {
            let id = format!("n{i}");
            state.nodes.insert(id.clone(), test_node(&id));
        }
        Sim {
            state,
            now: 1_000_000,
            events: Vec::new(),
        }
    }

    fn commit(&mut self, changes: ChangeSet) -> Vec<Write> {
        let (writes, events) = changes.finish();
        self.state.apply(&writes);
        self.events
            .extend(events.into_iter().map(|e| (e.kind, e.message)));
        writes
    }

    pub fn apply(&mut self, spec: &WorkloadSpec) {
        let mut changes = ChangeSet::new(&self.state, self.now);
        let manifest = drover_proto::manifest::Manifest {
            workloads: vec![spec.clone()],
            services: Vec::new(),
            autoscalers: Vec::new(),
        };
        operations::apply(&self.state, &manifest, "", &mut changes).expect("apply");
        self.commit(changes);
    }

    pub fn action(&mut self, action: RolloutAction) -> Result<(), crate::error::Error> {
        let mut changes = ChangeSet::new(&self.state, self.now);
        operations::rollout_action(&self.state, "web", action, &mut changes)?;
        self.commit(changes);
        Ok(())
    }

    /// One reconcile pass; returns its writes.
    pub fn pass(&mut self) -> Vec<Write> {
        let plan = reconcile::plan(&self.state, self.now);
        self.state.placement_failures = plan.placement_failures;
        self.commit(plan.changes)
    }

    pub fn tick(&mut self, ms: u64) {
        self.now += ms;
    }

    pub fn running(&self) -> Vec<&Allocation> {
        self.state
            .allocations_of("web")
            .filter(|a| a.desired == DesiredState::Run)
            .collect()
    }

    /// Revisions of the replicas that should run, sorted.
    pub fn revisions(&self) -> Vec<u64> {
        let mut r: Vec<u64> = self.running().iter().map(|a| a.revision).collect();
        r.sort();
        r
    }

    pub fn ready(&self) -> usize {
        self.running()
            .iter()
            .filter(|a| self.state.alloc_state(&a.id) == AllocState::Healthy)
            .count()
    }

    pub fn set(&mut self, id: &str, state: AllocState, restarts: u32, message: &str) {
        let status = AllocStatus {
            state,
            restarts,
            message: message.into(),
            ..AllocStatus::default()
        };
        self.state.observe(id.to_string(), status, self.now);
    }

    /// The agents report: every replica that should run of `revision` is `state`; stopped
    /// ones end.
    pub fn report(&mut self, revision: u64, state: AllocState, message: &str) {
        let ids: Vec<(String, DesiredState, u64)> = self
            .state
            .allocations_of("web")
            .map(|a| (a.id.clone(), a.desired, a.revision))
            .collect();
        for (id, desired, rev) in ids {
            let restarts = self.state.status.get(&id).map_or(0, |s| s.restarts);
            if desired == DesiredState::Stop {
                self.set(&id, AllocState::Stopped, restarts, "");
            } else if rev == revision && !self.state.alloc_state(&id).is_terminal() {
                self.set(&id, state, restarts, message);
            }
        }
    }

    pub fn record(&self) -> &WorkloadRecord {
        &self.state.stored.workloads["web"]
    }

    pub fn rollout(&self) -> &Rollout {
        self.record().rollout.as_ref().expect("a rollout")
    }

    pub fn has_event(&self, kind: &str, text: &str) -> bool {
        self.events
            .iter()
            .any(|(k, m)| k == kind && m.contains(text))
    }

    /// Runs passes with every replica of `healthy` reported healthy after each, until the
    /// rollout ends or `rounds` pass; checks the surge and availability bounds throughout.
    pub fn roll(&mut self, healthy: &[u64], rounds: usize) {
        let replicas = self.record().replicas;
        let (surge, unavailable) = self.record().update.resolve(replicas);
        for _ in 0..rounds {
            let before = self.ready();
            self.pass();
            let placed = self.running().len() as u32;
            assert!(
                placed <= replicas + surge,
                "{placed} placed, more than {replicas} + {surge}"
            );
            let after = self.ready();
            let floor = replicas.saturating_sub(unavailable) as usize;
            assert!(
                after >= before.min(floor),
                "ready went from {before} to {after}, below {floor}"
            );
            for revision in healthy {
                self.report(*revision, AllocState::Healthy, "");
            }
            self.tick(1000);
            if self.rollout().phase != RolloutPhase::Progressing {
                return;
            }
        }
    }
}

/// A service of 6 replicas at revision 1, all healthy, its first rollout complete.
fn six() -> Sim {
    let mut sim = Sim::new(3);
    sim.apply(&spec("web:1", 6));
    sim.roll(&[1], 20);
    assert_eq!(sim.rollout().phase, RolloutPhase::Complete);
    assert_eq!(sim.record().stable_revision, Some(1));
    sim
}

#[test]
fn a_good_revision_rolls_within_surge_and_unavailable() {
    let mut sim = six();
    sim.apply(&spec("web:2", 6));
    assert_eq!(sim.record().revision, 2);
    assert!(sim.has_event(
        events::ROLLOUT_STARTED,
        "rollout of revision 2 from revision 1"
    ));
    sim.pass();
    // 25% of 6: 2 more may be placed, 1 may be missing.
    assert_eq!(sim.revisions(), vec![1, 1, 1, 1, 1, 2, 2]);
    sim.roll(&[1, 2], 30);
    assert_eq!(sim.rollout().phase, RolloutPhase::Complete);
    assert_eq!(sim.revisions(), vec![2; 6]);
    assert_eq!(sim.record().stable_revision, Some(2));
    assert!(sim.has_event(events::ROLLOUT_COMPLETED, "revision 2: 6 of 6"));
}

#[test]
fn with_no_unavailable_allowed_an_old_replica_waits_for_a_ready_new_one() {
    let mut sim = six();
    let mut next = spec("web:2", 6);
    next.update.max_unavailable = ReplicaCount::Count(0);
    next.update.max_surge = ReplicaCount::Count(1);
    sim.apply(&next);
    sim.pass();
    assert_eq!(sim.revisions(), vec![1, 1, 1, 1, 1, 1, 2]);
    sim.report(2, AllocState::Running, "");
    sim.pass();
    assert_eq!(
        sim.revisions().len(),
        7,
        "running is not ready: nothing stops"
    );
    sim.report(2, AllocState::Healthy, "");
    sim.pass();
    assert_eq!(sim.revisions(), vec![1, 1, 1, 1, 1, 2], "one old stops");
}

#[test]
fn a_new_replica_counts_only_after_min_ready() {
    let mut sim = six();
    let mut next = spec("web:2", 6);
    next.update.min_ready = Duration::from_secs(10);
    next.update.max_unavailable = ReplicaCount::Count(0);
    next.update.max_surge = ReplicaCount::Count(1);
    sim.apply(&next);
    sim.pass();
    sim.report(2, AllocState::Healthy, "");
    sim.tick(9_000);
    let plan = reconcile::plan(&sim.state, sim.now);
    assert!(plan.wake_at_ms.is_some_and(|at| at <= sim.now + 1_001));
    sim.pass();
    assert_eq!(
        sim.revisions().len(),
        7,
        "ready 9 s of 10: not yet available"
    );
    sim.tick(1_001);
    sim.pass();
    assert_eq!(sim.revisions(), vec![1, 1, 1, 1, 1, 2]);
    // A restart starts the minimum again.
    let id = sim
        .running()
        .into_iter()
        .find(|a| a.revision == 2)
        .map(|a| a.id.clone())
        .expect("new replica");
    sim.set(&id, AllocState::Healthy, 1, "");
    assert_eq!(sim.state.ready_since[&id], sim.now);
}

#[test]
fn a_missing_image_fails_fast_and_reverts_to_the_stable_revision() {
    let mut sim = six();
    sim.apply(&spec("web:nope", 6));
    sim.pass();
    sim.report(
        2,
        AllocState::Failed,
        "image web:nope is not available: no such image",
    );
    sim.pass();
    assert!(sim.has_event(
        events::ROLLOUT_FAILED,
        "rollout of revision 2 failed: replica web."
    ));
    assert!(sim.has_event(events::ROLLOUT_REVERTED, "back to stable revision 1"));
    assert_eq!(sim.record().revision, 1);
    assert!(sim.record().failed_revisions[&2].contains("image web:nope is not available"));
    sim.roll(&[1], 20);
    assert_eq!(sim.rollout().phase, RolloutPhase::Complete);
    assert_eq!(sim.revisions(), vec![1; 6]);
    assert_eq!(sim.rollout().started_by, "auto-revert from revision 2");
}

#[test]
fn a_failure_that_follows_the_image_fails_a_stable_revision_instead_of_moving_it_around() {
    // Two nodes; the image of the running, stable revision disappears from one of them.
    let mut sim = Sim::new(2);
    sim.apply(&spec("web:1", 2));
    sim.roll(&[1], 20);
    assert_eq!(sim.rollout().phase, RolloutPhase::Complete);
    let first = sim.running()[0].id.clone();
    let status = AllocStatus {
        state: AllocState::Failed,
        message: "image \"web:1\" is not present on this node and could not be pulled".into(),
        image_failure: true,
        ..AllocStatus::default()
    };
    sim.state.observe(first.clone(), status, sim.now);
    for _ in 0..10 {
        sim.pass();
        sim.report(1, AllocState::Healthy, "");
        sim.tick(1000);
    }
    assert!(sim.record().failed_revisions[&1].contains("would fail the same way on every node"));
    assert_eq!(sim.rollout().phase, RolloutPhase::Failed);
    assert!(sim.has_event(events::ROLLOUT_FAILED, "rollout of revision 1 failed"));
    let ids: Vec<String> = sim.running().iter().map(|a| a.id.clone()).collect();
    assert_eq!(ids.len(), 2, "nothing placed in its place: {ids:?}");
    assert!(ids.contains(&first), "the failed replica stays visible");

    // A failure that does not follow the image is replaced on the other node, as before.
    let mut sim = Sim::new(2);
    sim.apply(&spec("web:1", 2));
    sim.roll(&[1], 20);
    let first = sim.running()[0].id.clone();
    sim.set(
        &first,
        AllocState::Failed,
        0,
        "exited with code 1; gave up after 5 restarts",
    );
    sim.pass();
    assert!(sim.record().failed_revisions.is_empty());
    assert!(
        sim.running()
            .iter()
            .any(|a| a.id != first && a.created_unix_ms == sim.now),
        "a replacement is placed"
    );
}

#[test]
fn without_auto_revert_a_failed_rollout_stops_where_it_is() {
    let mut sim = six();
    let mut next = spec("web:nope", 6);
    next.update.auto_revert = false;
    sim.apply(&next);
    sim.pass();
    sim.report(2, AllocState::Failed, "image web:nope is not available");
    sim.pass();
    assert_eq!(sim.rollout().phase, RolloutPhase::Failed);
    assert_eq!(sim.record().revision, 2);
    let before = sim.revisions();
    for _ in 0..5 {
        sim.report(1, AllocState::Healthy, "");
        sim.pass();
        sim.tick(1000);
    }
    assert_eq!(sim.revisions(), before, "nothing placed or stopped");
    assert!(before.iter().filter(|r| **r == 1).count() >= 5);
}

#[test]
fn a_crash_loop_fails_the_rollout_before_the_restart_policy_gives_up() {
    let mut sim = six();
    sim.apply(&spec("web:2", 6));
    sim.pass();
    let new: Vec<String> = sim
        .running()
        .iter()
        .filter(|a| a.revision == 2)
        .map(|a| a.id.clone())
        .collect();
    sim.set(&new[0], AllocState::Starting, 2, "exited with code 1");
    sim.pass();
    assert_eq!(sim.record().revision, 2, "two restarts are not yet a loop");
    sim.set(
        &new[0],
        AllocState::Starting,
        3,
        "exited with code 1; back-off 4s",
    );
    sim.pass();
    assert_eq!(sim.record().revision, 1, "reverted");
    assert!(sim.record().failed_revisions[&2].contains("restarted 3 times"));
}

#[test]
fn no_progress_within_the_deadline_fails() {
    let mut sim = six();
    let mut next = spec("web:2", 6);
    next.update.progress_deadline = Duration::from_secs(30);
    sim.apply(&next);
    sim.pass();
    sim.report(2, AllocState::Running, "waiting for readiness check");
    sim.tick(29_000);
    sim.pass();
    assert_eq!(sim.record().revision, 2);
    sim.tick(2_000);
    sim.pass();
    assert_eq!(sim.record().revision, 1);
    let cause = &sim.record().failed_revisions[&2];
    assert!(
        cause.starts_with("no progress in 30s: 0 of 6 replicas of revision 2 available"),
        "{cause}"
    );
    assert!(cause.contains("waiting for readiness check"), "{cause}");
}

#[test]
fn a_revert_never_loops_when_the_stable_revision_fails_too() {
    let mut sim = six();
    sim.apply(&spec("web:2", 6));
    sim.pass();
    sim.report(2, AllocState::Failed, "image web:2 is not available");
    sim.pass();
    assert_eq!(sim.record().revision, 1);
    // The stable revision's own rollout back fails as well: it stays failed, no loop.
    sim.pass();
    let placed = sim
        .running()
        .into_iter()
        .find(|a| a.revision == 1 && sim.state.alloc_state(&a.id) == AllocState::Pending)
        .map(|a| a.id.clone());
    if let Some(id) = placed {
        sim.set(&id, AllocState::Failed, 0, "disk full");
        sim.pass();
        assert_eq!(sim.rollout().phase, RolloutPhase::Failed);
        assert_eq!(sim.record().revision, 1);
    }
}

fn canary(sim: &mut Sim) {
    let mut next = spec("web:2", 10);
    next.update.canary = vec![
        CanaryStep {
            weight: 10,
            pause: Duration::from_secs(60),
        },
        CanaryStep {
            weight: 50,
            pause: Duration::from_secs(60),
        },
    ];
    sim.apply(&next);
}

fn traffic(sim: &mut Sim, node: &str, revision: u64, connections: u64, failed: u64) {
    sim.state.observe_traffic(
        node,
        &[RevisionTraffic {
            service: "web".into(),
            revision,
            connections,
            failed,
        }],
    );
}

fn ten() -> Sim {
    let mut sim = Sim::new(3);
    sim.apply(&spec("web:1", 10));
    sim.roll(&[1], 20);
    sim
}

#[test]
fn a_healthy_canary_walks_its_steps_and_is_promoted() {
    let mut sim = ten();
    canary(&mut sim);
    sim.pass();
    assert_eq!(sim.revisions().iter().filter(|r| **r == 2).count(), 1);
    assert_eq!(sim.revisions().iter().filter(|r| **r == 1).count(), 10);
    sim.report(2, AllocState::Healthy, "");
    let weights = route_weights(&sim.state, "web");
    assert_eq!(weights[&2] * 9, weights[&1], "exactly 10% to the canary");
    traffic(&mut sim, "n0", 2, 150, 0);
    traffic(&mut sim, "n0", 1, 1350, 0);
    sim.tick(30_000);
    sim.pass();
    assert_eq!(sim.rollout().step, 0, "the pause is not over");
    sim.tick(31_000);
    sim.pass();
    assert_eq!(sim.rollout().step, 1);
    assert!(sim.has_event(
        events::ROLLOUT_STEP,
        "canary step 1 of 2 (weight 10%) passed"
    ));
    sim.pass();
    assert_eq!(sim.revisions().iter().filter(|r| **r == 2).count(), 5);
    sim.report(2, AllocState::Healthy, "");
    // Counts from the step's start only: the first step's 150 do not count again.
    sim.tick(61_000);
    sim.pass();
    assert_eq!(sim.rollout().step, 1, "no connections in step 2 yet");
    traffic(&mut sim, "n1", 2, 500, 1);
    sim.pass();
    assert_eq!(sim.rollout().step, 2);
    assert!(sim.has_event(events::ROLLOUT_PROMOTED, "promoted after 2 canary steps"));
    assert!(
        route_weights(&sim.state, "web").is_empty(),
        "one pool again"
    );
    sim.roll(&[1, 2], 40);
    assert_eq!(sim.rollout().phase, RolloutPhase::Complete);
    assert_eq!(sim.revisions(), vec![2; 10]);
}

#[test]
fn a_canary_that_fails_connections_is_aborted_and_gets_no_traffic() {
    let mut sim = ten();
    canary(&mut sim);
    sim.pass();
    sim.report(2, AllocState::Healthy, "");
    traffic(&mut sim, "n0", 2, 60, 12);
    traffic(&mut sim, "n0", 1, 540, 0);
    sim.pass();
    assert_eq!(sim.record().revision, 2, "60 connections: too few to judge");
    traffic(&mut sim, "n1", 2, 60, 12);
    sim.pass();
    assert_eq!(
        sim.record().revision,
        1,
        "a fifth failed: aborted, reverted"
    );
    let cause = &sim.record().failed_revisions[&2];
    assert!(
        cause.contains("24 of 120 connections failed (20%)"),
        "{cause}"
    );
    assert!(!sim.revisions().contains(&2), "the canary stops at once");
    sim.roll(&[1], 20);
    assert_eq!(sim.revisions(), vec![1; 10]);
}

#[test]
fn a_failed_canary_without_revert_is_stopped_and_gets_no_traffic() {
    let mut sim = ten();
    canary(&mut sim);
    let mut next = spec("web:2", 10);
    next.update = sim.record().update.clone();
    next.update.auto_revert = false;
    sim.apply(&next);
    sim.pass();
    sim.report(2, AllocState::Healthy, "");
    traffic(&mut sim, "n0", 2, 100, 30);
    // Before the pass that fails it, the canary has its step's weight.
    assert!(
        route_weights(&sim.state, "web")
            .get(&2)
            .is_some_and(|w| *w > 0)
    );
    sim.pass();
    assert_eq!(sim.rollout().phase, RolloutPhase::Failed);
    assert_eq!(sim.record().revision, 2, "no revert");
    // The failed canary is beyond the replica count and goes first; the old ones stay.
    assert_eq!(sim.revisions(), vec![1; 10]);
}

#[test]
fn operator_promote_and_abort() {
    let mut sim = ten();
    canary(&mut sim);
    sim.pass();
    sim.action(RolloutAction::Promote).expect("promote");
    assert_eq!(sim.rollout().step, 2);
    let again = sim.action(RolloutAction::Promote);
    assert!(again.is_err(), "nothing left to promote");

    let mut sim = ten();
    canary(&mut sim);
    sim.pass();
    sim.action(RolloutAction::Abort).expect("abort");
    assert_eq!(sim.record().revision, 1);
    assert_eq!(sim.record().failed_revisions[&2], "aborted by operator");
    assert!(
        sim.action(RolloutAction::Abort).is_ok(),
        "the revert is a rollout too"
    );
}

#[test]
fn paused_replaces_nothing_and_resume_goes_on() {
    let mut sim = six();
    sim.action(RolloutAction::Pause).expect("pause");
    sim.apply(&spec("web:2", 6));
    sim.pass();
    assert_eq!(sim.revisions(), vec![1; 6]);
    sim.tick(3_600_000);
    sim.pass();
    assert_eq!(sim.record().revision, 2, "no deadline while paused");
    sim.action(RolloutAction::Resume).expect("resume");
    sim.roll(&[1, 2], 30);
    assert_eq!(sim.revisions(), vec![2; 6]);
}

#[test]
fn recreate_stops_every_old_replica_before_starting_new_ones() {
    let mut sim = six();
    let mut next = spec("web:2", 6);
    next.update.kind = UpdateKind::Recreate;
    sim.apply(&next);
    sim.pass();
    assert!(sim.revisions().is_empty(), "{:?}", sim.revisions());
    sim.pass();
    assert!(sim.revisions().is_empty(), "old ones still stopping");
    sim.report(1, AllocState::Stopped, "");
    sim.pass();
    sim.pass();
    assert_eq!(sim.revisions(), vec![2; 6]);
}

#[test]
fn undo_restart_and_history() {
    let mut sim = six();
    sim.apply(&spec("web:2", 6));
    sim.roll(&[1, 2], 30);
    sim.action(RolloutAction::Undo(None)).expect("undo");
    assert_eq!(sim.record().revision, 1);
    assert_eq!(sim.rollout().started_by, "undo to revision 1");
    sim.roll(&[1, 2], 30);
    assert_eq!(sim.revisions(), vec![1; 6]);
    sim.action(RolloutAction::Restart).expect("restart");
    assert_eq!(sim.record().revision, 3, "numbers are never reused");
    assert!(sim.action(RolloutAction::Undo(Some(9))).is_err());
    assert!(
        sim.action(RolloutAction::Undo(Some(3))).is_err(),
        "already current"
    );
    // The same spec again after an undo makes no revision.
    sim.roll(&[1, 3], 30);
    sim.apply(&spec("web:1", 6));
    assert_eq!(sim.record().revision, 3);
}

#[test]
fn old_revisions_beyond_the_history_limit_are_pruned() {
    let mut sim = Sim::new(3);
    let mut s = spec("web:1", 2);
    s.update.revision_history_limit = 2;
    sim.apply(&s);
    sim.roll(&[1], 10);
    for v in 2..=5 {
        s.image = format!("web:{v}");
        sim.apply(&s);
        sim.roll(&[v - 1, v], 20);
        sim.report(v - 1, AllocState::Stopped, "");
        sim.pass();
    }
    let kept: Vec<u64> = sim.state.stored.revisions.keys().map(|(_, r)| *r).collect();
    assert_eq!(kept, vec![3, 4, 5]);
}

#[test]
fn a_restarted_coordinator_does_not_count_its_downtime() {
    let mut sim = six();
    sim.apply(&spec("web:2", 6));
    sim.tick(3_600_000);
    let resumed = resumed_after_restart(&sim.state.stored, sim.now);
    assert_eq!(resumed.len(), 1);
    assert_eq!(
        resumed[0].rollout.as_ref().map(|r| r.progress_unix_ms),
        Some(sim.now)
    );
}

#[test]
fn a_step_pause_longer_than_the_deadline_is_progress_as_planned() {
    let mut sim = ten();
    let mut next = spec("web:2", 10);
    next.update.progress_deadline = Duration::from_secs(30);
    next.update.canary = vec![CanaryStep {
        weight: 10,
        pause: Duration::from_secs(120),
    }];
    sim.apply(&next);
    sim.pass();
    sim.report(2, AllocState::Healthy, "");
    sim.tick(100_000);
    sim.pass();
    assert_eq!(sim.record().revision, 2, "still in its pause: not failed");
    sim.tick(60_000);
    sim.pass();
    assert_eq!(
        sim.record().revision,
        1,
        "no traffic 30 s after the pause: failed"
    );
}

#[test]
fn undo_in_a_canary_takes_no_steps() {
    let mut sim = ten();
    canary(&mut sim);
    sim.pass();
    sim.report(2, AllocState::Healthy, "");
    sim.action(RolloutAction::Undo(None)).expect("undo");
    assert_eq!(sim.rollout().step, 2, "no canary steps going back");
    sim.pass();
    assert_eq!(
        sim.revisions().iter().filter(|r| **r == 1).count(),
        10,
        "the old replicas all stay"
    );
    sim.roll(&[1, 2], 20);
    assert_eq!(sim.revisions(), vec![1; 10]);
}

fn drain(sim: &mut Sim, node: &str) {
    sim.state.stored.node_flags.insert(
        node.into(),
        drover_proto::model::NodeFlags {
            cordoned: true,
            draining: true,
        },
    );
}

fn on_node(sim: &Sim, node: &str) -> usize {
    sim.running().iter().filter(|a| a.node == node).count()
}

#[test]
fn a_drain_goes_on_while_a_rollout_is_paused_or_failed() {
    let mut sim = six();
    sim.action(RolloutAction::Pause).expect("pause");
    sim.apply(&spec("web:2", 6));
    drain(&mut sim, "n0");
    for _ in 0..10 {
        sim.report(1, AllocState::Healthy, "");
        sim.pass();
        sim.tick(1000);
    }
    assert_eq!(on_node(&sim, "n0"), 0, "drained while paused");
    assert_eq!(
        sim.revisions(),
        vec![1; 6],
        "with the stable revision, nothing rolled"
    );

    // A failed rollout without revert keeps the replica count: scaled up, it places the
    // stable revision.
    let mut sim = six();
    let mut broken = spec("web:nope", 6);
    broken.update.auto_revert = false;
    sim.apply(&broken);
    sim.pass();
    sim.report(2, AllocState::Failed, "image web:nope is not available");
    sim.pass();
    assert_eq!(sim.rollout().phase, RolloutPhase::Failed);
    let mut changes = ChangeSet::new(&sim.state, sim.now);
    operations::scale(&sim.state, "web", 8, &mut changes).expect("scale");
    sim.commit(changes);
    for _ in 0..5 {
        sim.report(1, AllocState::Healthy, "");
        sim.pass();
    }
    assert_eq!(sim.revisions().iter().filter(|r| **r == 1).count(), 8);
}

#[test]
fn a_drain_goes_on_during_a_canary_step() {
    let mut sim = ten();
    canary(&mut sim);
    sim.pass();
    drain(&mut sim, "n0");
    for _ in 0..10 {
        sim.report(1, AllocState::Healthy, "");
        sim.report(2, AllocState::Healthy, "");
        sim.pass();
        sim.tick(1000);
    }
    assert_eq!(on_node(&sim, "n0"), 0, "drained during the step");
    assert_eq!(
        sim.revisions().iter().filter(|r| **r == 1).count(),
        10,
        "the old revision stays at full strength"
    );
}
