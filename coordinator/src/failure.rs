//! Which nodes are down: a pure decision from the agent links and gossip.
//!
//! A node is `down` only when both say so: its AgentLink stream is gone (it is
//! `disconnected`) for at least [`LINK_GRACE_MS`], and gossip's failure detector no longer
//! lists it as alive. A link that drops while gossip still hears the node is not a failure
//! (a coordinator restart, a network blip between two hosts). When most nodes fail at once
//! the coordinator itself is the likely one cut off, so nothing is declared down; nodes that
//! never joined gossip, or have been down longer than `down_node_expiry`, do not count in
//! that guard.
//!
//! Hysteresis against flapping: a node that comes back after being down loses placement
//! ties to the other nodes (as many replicas of the service on it as on them) for a
//! probation ([`Flaps`]), which doubles with every further down within [`FLAP_WINDOW_MS`],
//! so a node that keeps dropping out stops attracting replacements while the cluster has
//! somewhere as good to put them. Spread still comes first.

use std::collections::BTreeSet;
use std::time::Duration;

use drover_proto::model::{AllocState, DesiredState, NodeHealth};

use crate::state::ClusterState;

/// How long a link must have been gone before gossip's verdict counts.
pub const LINK_GRACE_MS: u64 = 1_000;

/// Probation after the first down.
pub const PROBATION_BASE_MS: u64 = 10_000;
/// Longest probation, however often the node flapped.
pub const PROBATION_MAX_MS: u64 = 300_000;
/// Downs further apart than this start the count again.
pub const FLAP_WINDOW_MS: u64 = 600_000;

/// A node's recent failures and the probation they earned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flaps {
    /// Downs in a row, each within [`FLAP_WINDOW_MS`] of the one before.
    pub downs: u32,
    /// When it last went down.
    pub last_down_ms: Option<u64>,
    /// Loses placement ties before this time.
    pub probation_until_ms: Option<u64>,
}

impl Flaps {
    /// Records that the node was declared down at `now_unix_ms`.
    pub fn went_down(&mut self, now_unix_ms: u64) {
        let recent = self
            .last_down_ms
            .is_some_and(|last| now_unix_ms.saturating_sub(last) <= FLAP_WINDOW_MS);
        self.downs = if recent { self.downs + 1 } else { 1 };
        self.last_down_ms = Some(now_unix_ms);
        self.probation_until_ms = None;
    }

    /// Records that the node came back from down at `now_unix_ms`; returns the probation.
    pub fn came_back(&mut self, now_unix_ms: u64) -> Duration {
        let ms = probation_ms(self.downs);
        self.probation_until_ms = Some(now_unix_ms.saturating_add(ms));
        Duration::from_millis(ms)
    }

    /// Time left on probation at `now_unix_ms`, if any.
    pub fn probation_left(&self, now_unix_ms: u64) -> Option<Duration> {
        self.probation_until_ms
            .filter(|until| *until > now_unix_ms)
            .map(|until| Duration::from_millis(until - now_unix_ms))
    }
}

/// Probation after `downs` downs in a row: doubling from the base, capped.
pub fn probation_ms(downs: u32) -> u64 {
    let doublings = downs.saturating_sub(1).min(16);
    PROBATION_BASE_MS
        .saturating_mul(1 << doublings)
        .min(PROBATION_MAX_MS)
}

/// Outcome of one check.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Nodes to mark down now, with the reason.
    pub down: Vec<(String, String)>,
    /// Set when the guard held back: why.
    pub held_back: Option<String>,
}

/// Decides which disconnected nodes are down at `now_unix_ms`.
pub fn check(state: &ClusterState, now_unix_ms: u64) -> Verdict {
    // Without gossip there is no second opinion: never declare a node down on the link alone.
    let Some(live) = &state.gossip_live else {
        return Verdict::default();
    };
    let candidates: Vec<&String> = state
        .nodes
        .iter()
        .filter(|(id, n)| {
            n.health == NodeHealth::Disconnected
                && n.disconnected_since_ms
                    .is_some_and(|since| now_unix_ms.saturating_sub(since) >= LINK_GRACE_MS)
                && !live.contains(*id)
        })
        .map(|(id, _)| id)
        .collect();
    if candidates.is_empty() {
        return Verdict::default();
    }
    // Only nodes that took part in the cluster recently count: one that never joined
    // gossip, or has been down for a long time, says nothing about this coordinator being
    // cut off now.
    let expiry = state.settings.down_node_expiry_ms;
    let counts = |id: &String| {
        state.nodes.get(id).is_some_and(|n| {
            n.gossip_seen
                && !(n.health == NodeHealth::Down
                    && n.flaps
                        .last_down_ms
                        .is_some_and(|at| now_unix_ms.saturating_sub(at) > expiry))
        })
    };
    let already: BTreeSet<&String> = state
        .nodes
        .iter()
        .filter(|(id, n)| n.health == NodeHealth::Down && counts(id))
        .map(|(id, _)| id)
        .collect();
    let total = state.nodes.keys().filter(|id| counts(id)).count();
    let failing = already.len() + candidates.iter().filter(|id| counts(id)).count();
    // Losing more than half of the nodes at once looks like this coordinator's isolation.
    if total >= 2 && failing * 2 > total {
        return Verdict {
            down: Vec::new(),
            held_back: Some(format!(
                "{failing} of {total} nodes look down at once; this coordinator is likely the one cut off, so nothing is rescheduled"
            )),
        };
    }
    Verdict {
        down: candidates
            .into_iter()
            .map(|id| {
                (
                    id.clone(),
                    "agent stream gone and gossip's failure detector says dead".to_string(),
                )
            })
            .collect(),
        held_back: None,
    }
}

/// Margin added to a service's `stop_after_disconnect` before its replicas on a down node
/// count as lost: the cut-off agent has stopped them by then, so a singleton never runs twice.
pub const STOP_AFTER_DISCONNECT_MARGIN_MS: u64 = 2_000;

/// Allocations on down nodes to mark lost now, with their node. Replicas of a service with
/// `stop_after_disconnect` wait until the cut-off agent has stopped them (plus a margin).
pub fn lost_allocations(state: &ClusterState, now_unix_ms: u64) -> Vec<(String, String)> {
    pending_losses(state)
        .filter(|(_, _, at)| *at <= now_unix_ms)
        .map(|(id, node, _)| (id, node))
        .collect()
}

/// When [`check`] or [`lost_allocations`] could next change their answer with nothing else
/// happening: the end of a disconnected node's link grace, or the moment a down node's
/// waiting replicas count as lost. The reconcile loop wakes then instead of a full interval
/// later.
pub fn next_deadline(state: &ClusterState, now_unix_ms: u64) -> Option<u64> {
    let graces = state
        .nodes
        .values()
        .filter(|n| n.health == NodeHealth::Disconnected)
        .filter_map(|n| n.disconnected_since_ms)
        .map(|since| since.saturating_add(LINK_GRACE_MS));
    let losses = pending_losses(state).map(|(_, _, at)| at);
    graces.chain(losses).filter(|at| *at > now_unix_ms).min()
}

/// Running allocations on down nodes not yet lost: (id, node, when they count as lost).
fn pending_losses(state: &ClusterState) -> impl Iterator<Item = (String, String, u64)> + '_ {
    state.stored.allocations.values().filter_map(|alloc| {
        if alloc.desired != DesiredState::Run || state.alloc_state(&alloc.id) == AllocState::Lost {
            return None;
        }
        let node = state.nodes.get(&alloc.node)?;
        if node.health != NodeHealth::Down {
            return None;
        }
        // The agent stops the replica `stop_after_disconnect` after it lost the link, which
        // takes up to `stop_grace_period`; the margin covers the two clocks' skew.
        let wait = state
            .revision_spec(&alloc.service, alloc.revision)
            .and_then(|spec| {
                let limit = spec.stop_after_disconnect?;
                Some(limit + spec.stop_grace_period)
            })
            .map(|d| {
                u64::try_from(d.as_millis())
                    .unwrap_or(u64::MAX)
                    .saturating_add(STOP_AFTER_DISCONNECT_MARGIN_MS)
            })
            .unwrap_or(0);
        // `check` marks only a node with a disconnect time down, so this is always set.
        let since = node.disconnected_since_ms.unwrap_or(0);
        Some((
            alloc.id.clone(),
            alloc.node.clone(),
            since.saturating_add(wait),
        ))
    })
}

#[cfg(test)]
mod tests {
    use drover_proto::model::{NodeInfo, Resources};

    use super::*;
    use crate::state::NodeEntry;

    fn state(nodes: &[(&str, NodeHealth, Option<u64>)], live: &[&str]) -> ClusterState {
        let mut state = ClusterState::default();
        for (id, health, since) in nodes {
            state.nodes.insert(
                id.to_string(),
                NodeEntry {
                    info: NodeInfo {
                        id: id.to_string(),
                        generation: 1,
                        address: "127.0.0.1".into(),
                        capacity: Resources::default(),
                        labels: Default::default(),
                    },
                    health: *health,
                    reason: String::new(),
                    usage: Resources::default(),
                    disconnected_since_ms: *since,
                    gossip_seen: true,
                    flaps: Flaps::default(),
                },
            );
        }
        state.gossip_live = Some(live.iter().map(|s| s.to_string()).collect());
        state
    }

    #[test]
    fn down_needs_both_link_and_gossip() {
        use NodeHealth::*;
        let s = state(
            &[
                ("a", Ready, None),
                ("b", Ready, None),
                ("c", Disconnected, Some(0)),
            ],
            &["a", "b"],
        );
        let down: Vec<String> = check(&s, 5_000)
            .down
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(down, vec!["c"]);
        // Within the link grace: not yet.
        assert!(check(&s, 500).down.is_empty());
        // Gossip still hears it: not down.
        let s = state(
            &[
                ("a", Ready, None),
                ("b", Ready, None),
                ("c", Disconnected, Some(0)),
            ],
            &["a", "b", "c"],
        );
        assert!(check(&s, 5_000).down.is_empty());
        // No gossip at all: never on the link alone.
        let mut s = state(&[("a", Ready, None), ("c", Disconnected, Some(0))], &[]);
        s.gossip_live = None;
        assert!(check(&s, 5_000).down.is_empty());
    }

    #[test]
    fn mass_failure_is_held_back() {
        use NodeHealth::*;
        let s = state(
            &[
                ("a", Ready, None),
                ("b", Disconnected, Some(0)),
                ("c", Disconnected, Some(0)),
            ],
            &["a"],
        );
        let verdict = check(&s, 5_000);
        assert!(verdict.down.is_empty());
        assert!(verdict.held_back.expect("held back").contains("2 of 3"));
    }

    #[test]
    fn nodes_that_never_joined_gossip_or_went_down_long_ago_do_not_hold_back_a_real_failure() {
        use NodeHealth::*;
        // Three nodes that registered over the link but never appeared in gossip, and one
        // real node that crashed.
        let mut s = state(
            &[
                ("real", Disconnected, Some(0)),
                ("ghost-1", Down, Some(0)),
                ("ghost-2", Down, Some(0)),
                ("ghost-3", Disconnected, Some(0)),
                ("a", Ready, None),
            ],
            &["a"],
        );
        for ghost in ["ghost-1", "ghost-2", "ghost-3"] {
            s.nodes.get_mut(ghost).expect("node").gossip_seen = false;
        }
        let mut down: Vec<String> = check(&s, 5_000)
            .down
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        down.sort();
        assert_eq!(down, ["ghost-3", "real"], "the real crash is acted on");

        // Nodes down longer than the expiry do not count either.
        let mut s = state(
            &[
                ("real", Disconnected, Some(0)),
                ("old-1", Down, Some(0)),
                ("old-2", Down, Some(0)),
                ("a", Ready, None),
            ],
            &["a"],
        );
        s.settings.down_node_expiry_ms = 60_000;
        for old in ["old-1", "old-2"] {
            s.nodes.get_mut(old).expect("node").flaps.went_down(1_000);
        }
        let at = 1_000 + 60_001;
        let verdict = check(&s, at);
        assert_eq!(verdict.held_back, None);
        assert_eq!(verdict.down.len(), 1);
        // Within the expiry, they still count: 3 of 4 down holds back.
        let verdict = check(&s, 30_000);
        assert!(verdict.down.is_empty());
        assert!(verdict.held_back.expect("held back").contains("3 of 4"));
    }

    #[test]
    fn stop_after_disconnect_delays_lost() {
        use drover_proto::model::{Allocation, WorkloadSpec};

        use crate::store::RevisionRecord;
        let mut s = state(&[("a", NodeHealth::Down, Some(0))], &[]);
        for (service, limit) in [("single", Some(10_000)), ("web", None)] {
            let mut spec = WorkloadSpec::new(service, "img");
            spec.stop_after_disconnect = limit.map(std::time::Duration::from_millis);
            s.stored.revisions.insert(
                (service.to_string(), 1),
                RevisionRecord {
                    service: service.into(),
                    revision: 1,
                    spec,
                    created_unix_ms: 0,
                    cause: "apply".into(),
                },
            );
            s.stored.allocations.insert(
                format!("{service}.1"),
                Allocation {
                    id: format!("{service}.1"),
                    service: service.into(),
                    revision: 1,
                    node: "a".into(),
                    resources: Resources::default(),
                    desired: DesiredState::Run,
                    created_unix_ms: 0,
                },
            );
        }
        let ids = |now| -> Vec<String> {
            lost_allocations(&s, now)
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        };
        // 10 s limit + 10 s default stop grace + 2 s margin.
        assert_eq!(ids(1_000), vec!["web.1"], "the singleton waits");
        assert_eq!(
            ids(21_999),
            vec!["web.1"],
            "limit, grace and margin not yet over"
        );
        assert_eq!(ids(22_000), vec!["single.1", "web.1"]);
    }

    #[test]
    fn probation_doubles_with_flaps_in_the_window_and_resets_after() {
        let mut flaps = Flaps::default();
        flaps.went_down(0);
        assert_eq!(flaps.came_back(5_000), Duration::from_secs(10));
        assert!(flaps.probation_left(14_999).is_some());
        assert_eq!(flaps.probation_left(15_000), None);
        flaps.went_down(60_000);
        assert_eq!(flaps.probation_until_ms, None, "a down ends the probation");
        assert_eq!(flaps.came_back(61_000), Duration::from_secs(20));
        flaps.went_down(120_000);
        assert_eq!(flaps.came_back(121_000), Duration::from_secs(40));
        for i in 0..10 {
            flaps.went_down(130_000 + i);
        }
        assert_eq!(
            flaps.came_back(200_000),
            Duration::from_millis(PROBATION_MAX_MS),
            "capped"
        );
        // Quiet for longer than the window: back to the base.
        flaps.went_down(200_000 + FLAP_WINDOW_MS + 1);
        assert_eq!(flaps.downs, 1);
        assert_eq!(
            flaps.came_back(200_000 + FLAP_WINDOW_MS + 2),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn next_deadline_is_the_end_of_the_link_grace() {
        use NodeHealth::*;
        let s = state(
            &[
                ("a", Ready, None),
                ("b", Ready, None),
                ("c", Disconnected, Some(10_000)),
            ],
            &["a", "b"],
        );
        // Gossip already says c is dead at 10.99 s, but the link grace ends at 11 s.
        assert!(check(&s, 10_990).down.is_empty());
        assert_eq!(next_deadline(&s, 10_990), Some(10_000 + LINK_GRACE_MS));
        assert_eq!(check(&s, 11_000).down.len(), 1);
        assert_eq!(next_deadline(&s, 11_000), None);
    }
}
