//! What replicas use, as their agents measure it (cgroup samples every few seconds, sent
//! over the AgentLink): a short window per allocation, for `drover top` and the
//! autoscalers. Observed state, never stored: a restarted coordinator starts empty and
//! fills within one sampling interval.
//!
//! Connections are counted by the proxies rather than the replica's node: every node's
//! proxy reports the cumulative connections it handed each replica and how many are open,
//! so a replica's load is the sum over nodes ([`UsageHistory::connections`]), with rates
//! taken from differences over [`RATE_WINDOW_MS`].

use std::collections::{BTreeMap, VecDeque};

use drover_proto::model::{AllocUsage, ReplicaTraffic};

/// Samples older than this are dropped.
pub const WINDOW_MS: u64 = 60_000;

/// Connection rates are averaged over this long (or since a node's first count, if that
/// is later): as short as a decision period of the autoscaler.
pub const RATE_WINDOW_MS: u64 = 15_000;

/// A rate needs counts this far apart at least.
const SHORTEST_RATE_MS: u64 = 1_000;

/// One sample as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// When it arrived, ms since the Unix epoch.
    pub at_ms: u64,
    /// The sample.
    pub usage: AllocUsage,
}

/// The recent samples of every allocation.
#[derive(Debug, Clone, Default)]
pub struct UsageHistory {
    by_allocation: BTreeMap<String, VecDeque<Observed>>,
    /// Per allocation, per reporting node: its proxies' counts, oldest first.
    counts: BTreeMap<String, BTreeMap<String, VecDeque<Count>>>,
}

/// One node's cumulative count for one replica, as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Count {
    at_ms: u64,
    connections: u64,
    active: u64,
}

/// Connections to one replica through every node's proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionLoad {
    /// New connections per second, in thousandths, over the rate window.
    pub per_second_milli: u64,
    /// Connections open now.
    pub active: u64,
    /// The longest span a node's rate was taken over, ms.
    pub window_ms: u64,
    /// When the latest count arrived, ms since the Unix epoch.
    pub at_ms: u64,
}

impl UsageHistory {
    /// Records `samples` from `node` at `now_ms`, keeping only those of allocations that
    /// `node_of` says run on that node (an agent speaks for its own node only); returns how
    /// many were refused.
    pub fn observe<'a>(
        &mut self,
        node: &str,
        samples: Vec<AllocUsage>,
        node_of: impl Fn(&str) -> Option<&'a str>,
        now_ms: u64,
    ) -> usize {
        let mut refused = 0;
        for usage in samples {
            if node_of(&usage.allocation_id) != Some(node) {
                refused += 1;
                continue;
            }
            let window = self
                .by_allocation
                .entry(usage.allocation_id.clone())
                .or_default();
            window.push_back(Observed {
                at_ms: now_ms,
                usage,
            });
            while window.front().is_some_and(|o| o.at_ms + WINDOW_MS < now_ms) {
                window.pop_front();
            }
        }
        refused
    }

    /// The last sample of `allocation`, if one arrived within the window before `now_ms`.
    pub fn latest(&self, allocation: &str, now_ms: u64) -> Option<&Observed> {
        self.by_allocation
            .get(allocation)?
            .back()
            .filter(|o| o.at_ms + WINDOW_MS >= now_ms)
    }

    /// The samples of `allocation` within the window, oldest first.
    pub fn window(&self, allocation: &str) -> impl Iterator<Item = &Observed> {
        self.by_allocation.get(allocation).into_iter().flatten()
    }

    /// Records `node`'s proxy counts at `now_ms`, the node's full list: a replica it no
    /// longer lists has no connection from it. Counts of allocations `known` does not know
    /// are refused (counted in the result); a count lower than the last one (the agent
    /// restarted) starts the node's series again.
    pub fn observe_connections(
        &mut self,
        node: &str,
        counts: Vec<ReplicaTraffic>,
        known: impl Fn(&str) -> bool,
        now_ms: u64,
    ) -> usize {
        let listed: std::collections::BTreeSet<&str> =
            counts.iter().map(|c| c.allocation_id.as_str()).collect();
        self.counts.retain(|id, by_node| {
            if !listed.contains(id.as_str()) {
                by_node.remove(node);
            }
            !by_node.is_empty()
        });
        let mut refused = 0;
        for count in counts {
            if !known(&count.allocation_id) {
                refused += 1;
                continue;
            }
            let series = self
                .counts
                .entry(count.allocation_id)
                .or_default()
                .entry(node.to_owned())
                .or_default();
            if series
                .back()
                .is_some_and(|last| last.connections > count.connections)
            {
                series.clear();
            }
            series.push_back(Count {
                at_ms: now_ms,
                connections: count.connections,
                active: count.active,
            });
            // Keep one count at or before the rate window's start, as its base.
            let start = now_ms.saturating_sub(RATE_WINDOW_MS);
            while series.len() > 2 && series[1].at_ms <= start {
                series.pop_front();
            }
        }
        refused
    }

    /// The connections every node's proxy has to `allocation` at `now_ms`: open ones as
    /// last reported, and new ones per second from each node's counts since the rate
    /// window's start (a node sends its counts when they change, so one not heard from
    /// has had no new connection). `None` until some node's counts span a second.
    pub fn connections(&self, allocation: &str, now_ms: u64) -> Option<ConnectionLoad> {
        let by_node = self.counts.get(allocation)?;
        let start = now_ms.saturating_sub(RATE_WINDOW_MS);
        let mut load = ConnectionLoad::default();
        let mut measured = false;
        for series in by_node.values() {
            let (Some(first), Some(last)) = (series.front(), series.back()) else {
                continue;
            };
            let base = series
                .iter()
                .rev()
                .find(|c| c.at_ms <= start)
                .unwrap_or(first);
            load.active += last.active;
            load.at_ms = load.at_ms.max(last.at_ms);
            let span = now_ms.saturating_sub(base.at_ms);
            if span < SHORTEST_RATE_MS {
                continue;
            }
            measured = true;
            let new = last.connections.saturating_sub(base.connections);
            load.per_second_milli += new.saturating_mul(1_000_000) / span;
            load.window_ms = load.window_ms.max(span);
        }
        measured.then_some(load)
    }

    /// Forgets the counts a node's proxies reported (its agent is gone).
    pub fn forget_node(&mut self, node: &str) {
        self.counts.retain(|_, by_node| {
            by_node.remove(node);
            !by_node.is_empty()
        });
    }

    /// Forgets an allocation (deleted).
    pub fn forget(&mut self, allocation: &str) {
        self.by_allocation.remove(allocation);
        self.counts.remove(allocation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str, cpu_millis: u64) -> AllocUsage {
        AllocUsage {
            allocation_id: id.into(),
            cpu_millis,
            ..AllocUsage::default()
        }
    }

    #[test]
    fn an_agent_speaks_for_its_own_replicas_and_old_samples_go() {
        let mut history = UsageHistory::default();
        let node_of = |id: &str| match id {
            "web.1" => Some("n1"),
            "web.2" => Some("n2"),
            _ => None,
        };
        let refused = history.observe(
            "n1",
            vec![
                sample("web.1", 100),
                sample("web.2", 900),
                sample("ghost.1", 5),
            ],
            node_of,
            1_000,
        );
        assert_eq!(refused, 2);
        assert_eq!(
            history.latest("web.1", 1_000).map(|o| o.usage.cpu_millis),
            Some(100)
        );
        assert!(history.latest("web.2", 1_000).is_none());
        history.observe("n1", vec![sample("web.1", 300)], node_of, 6_000);
        assert_eq!(history.window("web.1").count(), 2);
        history.observe("n1", vec![sample("web.1", 200)], node_of, 62_000);
        // The first is over a minute old.
        assert_eq!(
            history
                .window("web.1")
                .map(|o| o.usage.cpu_millis)
                .collect::<Vec<_>>(),
            [300, 200]
        );
        assert!(history.latest("web.1", 62_000 + WINDOW_MS + 1).is_none());
        history.forget("web.1");
        assert_eq!(history.window("web.1").count(), 0);
    }

    fn count(id: &str, connections: u64, active: u64) -> ReplicaTraffic {
        ReplicaTraffic {
            allocation_id: id.into(),
            connections,
            active,
        }
    }

    #[test]
    fn a_replicas_connections_are_summed_over_every_nodes_proxy() {
        let mut history = UsageHistory::default();
        let known = |id: &str| id.starts_with("web.");
        // n1's proxy: 100 connections to web.1 so far, 2 open; n2's: 50, 1 open.
        assert_eq!(
            history.observe_connections(
                "n1",
                vec![count("web.1", 100, 2), count("ghost.1", 5, 0)],
                known,
                0
            ),
            1
        );
        history.observe_connections("n2", vec![count("web.1", 50, 1)], known, 0);
        assert_eq!(history.connections("web.1", 500), None, "no span yet");
        // 10 s later: n1 handed 200 more, n2 is not heard from (no change).
        history.observe_connections("n1", vec![count("web.1", 300, 4)], known, 10_000);
        let load = history.connections("web.1", 10_000).expect("measured");
        assert_eq!(load.active, 5);
        assert_eq!(
            load.per_second_milli, 20_000,
            "200 over 10 s from n1, none from n2"
        );
        // 30 s in: the window is the last 15 s, in which nothing new came.
        let quiet = history.connections("web.1", 30_000).expect("measured");
        assert_eq!(quiet.per_second_milli, 0);
        assert_eq!(
            quiet.active, 5,
            "open connections stay until a node says otherwise"
        );

        // n1's agent restarted (lower count): its series starts again.
        history.observe_connections("n1", vec![count("web.1", 3, 1)], known, 31_000);
        history.observe_connections("n1", vec![count("web.1", 33, 1)], known, 34_000);
        let restarted = history.connections("web.1", 34_000).expect("measured");
        // n1: 30 over 3 s; n2: none over 34 s.
        assert_eq!(restarted.per_second_milli, 10_000);
        assert_eq!(restarted.active, 2);

        // n2 no longer lists web.1 (it left its endpoints): no connection from n2.
        history.observe_connections("n2", Vec::new(), known, 35_000);
        assert_eq!(
            history.connections("web.1", 35_000).map(|l| l.active),
            Some(1)
        );
        history.forget_node("n1");
        assert_eq!(history.connections("web.1", 35_000), None);
    }
}
