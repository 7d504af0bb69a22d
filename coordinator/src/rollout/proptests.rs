//! Property test: for any sequence of replica events during a rollout (ready, unhealthy,
//! crash, node lost), no pass places more than `replicas + maxSurge` nor stops a ready
//! replica that takes the service below `replicas − maxUnavailable` ready.

use drover_proto::model::{AllocState, DesiredState, ReplicaCount};
use proptest::prelude::*;

use super::tests::{Sim, spec};
use crate::store::RolloutPhase;

#[derive(Debug, Clone, Copy)]
enum Event {
    Ready,
    Unhealthy,
    Crash,
    Lost,
    Failed,
}

fn arb_event() -> impl Strategy<Value = (usize, Event)> {
    (
        0..16usize,
        prop_oneof![
            6 => Just(Event::Ready),
            1 => Just(Event::Unhealthy),
            1 => Just(Event::Crash),
            1 => Just(Event::Lost),
            1 => Just(Event::Failed),
        ],
    )
}

fn arb_count() -> impl Strategy<Value = ReplicaCount> {
    prop_oneof![
        (0..4u32).prop_map(ReplicaCount::Count),
        (0..=100u32).prop_map(ReplicaCount::Percent),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn a_rollout_keeps_its_bounds(
        replicas in 1..8u32,
        surge in arb_count(),
        unavailable in arb_count(),
        events in proptest::collection::vec(proptest::collection::vec(arb_event(), 0..4), 1..40),
    ) {
        let zero = |c: ReplicaCount| matches!(c, ReplicaCount::Count(0) | ReplicaCount::Percent(0));
        prop_assume!(!(zero(surge) && zero(unavailable)), "refused by validation");
        let mut sim = Sim::new(4);
        let mut first = spec("web:1", replicas);
        first.update.max_surge = surge;
        first.update.max_unavailable = unavailable;
        sim.apply(&first);
        sim.roll(&[1], 20);
        let mut next = first.clone();
        next.image = "web:2".into();
        sim.apply(&next);
        let (max_surge, max_unavailable) = sim.record().update.resolve(replicas);
        let floor = (replicas - max_unavailable.min(replicas)) as usize;
        for round in events {
            let ready_before = sim.ready();
            sim.pass();
            let placed = sim.running().len() as u32;
            let progressing = sim
                .record()
                .rollout
                .as_ref()
                .is_some_and(|r| r.phase == RolloutPhase::Progressing);
            if progressing {
                prop_assert!(
                    placed <= replicas + max_surge,
                    "{placed} placed, more than {replicas} + {max_surge}"
                );
            }
            let ready_after = sim.ready();
            prop_assert!(
                ready_after >= ready_before.min(floor),
                "a pass took ready replicas from {ready_before} to {ready_after}, below {floor}"
            );
            // The agents: stopped replicas end; the events happen to replicas that run.
            let ids: Vec<(String, DesiredState)> = sim
                .state
                .allocations_of("web")
                .map(|a| (a.id.clone(), a.desired))
                .collect();
            for (id, desired) in &ids {
                if *desired == DesiredState::Stop {
                    sim.set(id, AllocState::Stopped, 0, "");
                }
            }
            let live: Vec<String> = ids
                .iter()
                .filter(|(id, d)| {
                    *d == DesiredState::Run && !sim.state.alloc_state(id).is_terminal()
                })
                .map(|(id, _)| id.clone())
                .collect();
            for (pick, event) in round {
                let Some(id) = live.get(pick % live.len().max(1)) else {
                    continue;
                };
                let restarts = sim.state.status.get(id).map_or(0, |s| s.restarts);
                match event {
                    Event::Ready => sim.set(id, AllocState::Healthy, restarts, ""),
                    Event::Unhealthy => sim.set(id, AllocState::Unhealthy, restarts, "check"),
                    Event::Crash => sim.set(id, AllocState::Starting, restarts + 1, "exited"),
                    Event::Lost => sim.set(id, AllocState::Lost, restarts, "node down"),
                    Event::Failed => sim.set(id, AllocState::Failed, restarts, "gave up"),
                }
            }
            sim.tick(1000);
        }
    }
}
