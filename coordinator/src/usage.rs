//! What replicas use, as their agents measure it (cgroup samples every few seconds, sent
//! over the AgentLink): a short window per allocation, for `drover top` and the
//! autoscalers. Observed state, never stored: a restarted coordinator starts empty and
//! fills within one sampling interval.

use std::collections::{BTreeMap, VecDeque};

use drover_proto::model::AllocUsage;

/// Samples older than this are dropped.
pub const WINDOW_MS: u64 = 60_000;

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

    /// Forgets an allocation (deleted).
    pub fn forget(&mut self, allocation: &str) {
        self.by_allocation.remove(allocation);
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
}
