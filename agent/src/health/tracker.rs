//! The threshold state machine that turns a stream of probe results into a health status.

use std::fmt;
use std::time::Duration;

use drover_proto::model::HealthCheck;
use tokio::time::Instant;

/// Health of one check of one allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthStatus {
    /// Not enough results yet to decide.
    Unknown,
    /// `success_threshold` consecutive probes passed.
    Healthy,
    /// `failure_threshold` consecutive counted probes failed.
    Unhealthy,
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthStatus::Unknown => "unknown",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        })
    }
}

/// Counts consecutive probe results against a check's thresholds. Pure: it never reads a
/// clock; the caller passes the time of each result.
///
/// Failures before `started_at + start_period` do not count towards `failure_threshold`
/// (they still break a run of successes). As with Docker's `start_period`, the grace period
/// ends early at the first success: once the container has shown it is up, a later failure
/// is a real one.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    interval: Duration,
    success_threshold: u32,
    failure_threshold: u32,
    started_at: Instant,
    grace_until: Instant,
    status: HealthStatus,
    successes: u32,
    failures: u32,
    last_probe: Option<Instant>,
}

impl HealthTracker {
    /// A tracker for `check` on a container that started at `started_at`. Thresholds of 0
    /// are treated as 1.
    pub fn new(check: &HealthCheck, started_at: Instant) -> HealthTracker {
        HealthTracker {
            interval: check.interval,
            success_threshold: check.success_threshold.max(1),
            failure_threshold: check.failure_threshold.max(1),
            started_at,
            grace_until: started_at + check.start_period,
            status: HealthStatus::Unknown,
            successes: 0,
            failures: 0,
            last_probe: None,
        }
    }

    /// Records the result of a probe that finished at `now`; returns the new status if it
    /// changed.
    pub fn record(&mut self, ok: bool, now: Instant) -> Option<HealthStatus> {
        self.last_probe = Some(now);
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            self.grace_until = self.grace_until.min(now);
            if self.successes >= self.success_threshold {
                return self.transition(HealthStatus::Healthy);
            }
            return None;
        }
        self.successes = 0;
        if now < self.grace_until {
            return None;
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.failure_threshold {
            return self.transition(HealthStatus::Unhealthy);
        }
        None
    }

    /// Current status.
    pub fn status(&self) -> HealthStatus {
        self.status
    }

    /// When the next probe should run: right at start for the first one, then `interval`
    /// after the previous one finished.
    pub fn next_due(&self) -> Instant {
        match self.last_probe {
            Some(last) => last + self.interval,
            None => self.started_at,
        }
    }

    fn transition(&mut self, to: HealthStatus) -> Option<HealthStatus> {
        if self.status == to {
            return None;
        }
        self.status = to;
        Some(to)
    }
}

#[cfg(test)]
mod tests {
    use drover_proto::model::ProbeAction;

    use super::*;

    const INTERVAL: Duration = Duration::from_secs(10);

    fn check(
        success_threshold: u32,
        failure_threshold: u32,
        start_period: Duration,
    ) -> HealthCheck {
        HealthCheck {
            interval: INTERVAL,
            success_threshold,
            failure_threshold,
            start_period,
            ..HealthCheck::with_defaults(ProbeAction::Tcp { port: 80 })
        }
    }

    /// Feeds `results` one interval apart, starting at `start`; returns the transitions
    /// with the index of the result that caused each.
    fn feed(
        tracker: &mut HealthTracker,
        start: Instant,
        results: &[bool],
    ) -> Vec<(usize, HealthStatus)> {
        let mut transitions = Vec::new();
        for (i, &ok) in results.iter().enumerate() {
            let now = start + INTERVAL * i as u32;
            if let Some(status) = tracker.record(ok, now) {
                transitions.push((i, status));
            }
        }
        transitions
    }

    #[test]
    fn starts_unknown_and_first_probe_is_due_at_start() {
        let start = Instant::now();
        let tracker = HealthTracker::new(&check(1, 3, Duration::ZERO), start);
        assert_eq!(tracker.status(), HealthStatus::Unknown);
        assert_eq!(tracker.next_due(), start);
    }

    #[test]
    fn next_probe_is_due_one_interval_after_the_previous_one() {
        let start = Instant::now();
        let mut tracker = HealthTracker::new(&check(1, 3, Duration::ZERO), start);
        let finished = start + Duration::from_millis(1500);
        tracker.record(false, finished);
        assert_eq!(tracker.next_due(), finished + INTERVAL);
        tracker.record(true, finished + INTERVAL);
        assert_eq!(tracker.next_due(), finished + INTERVAL * 2);
    }

    #[test]
    fn one_success_is_enough_with_threshold_one() {
        let start = Instant::now();
        let mut tracker = HealthTracker::new(&check(1, 3, Duration::ZERO), start);
        assert_eq!(tracker.record(true, start), Some(HealthStatus::Healthy));
        assert_eq!(tracker.status(), HealthStatus::Healthy);
    }

    #[test]
    fn healthy_only_after_success_threshold_consecutive_successes() {
        let start = Instant::now();
        let mut tracker = HealthTracker::new(&check(3, 3, Duration::ZERO), start);
        let transitions = feed(&mut tracker, start, &[true, true, true, true]);
        assert_eq!(transitions, vec![(2, HealthStatus::Healthy)]);
    }

    #[test]
    fn unhealthy_only_after_failure_threshold_consecutive_failures() {
        let start = Instant::now();
        let mut tracker = HealthTracker::new(&check(1, 3, Duration::ZERO), start);
        let transitions = feed(&mut tracker, start, &[false, false, false, false, false]);
        assert_eq!(transitions, vec![(2, HealthStatus::Unhealthy)]);
        assert_eq!(tracker.status(), HealthStatus::Unhealthy);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let start = Instant::now();
        let mut tracker = HealthTracker::new(&check(2, 3, Duration::ZERO), start);
        let results = [false, false, true, false, false, true, false, false, false];
        let transitions = feed(&mut tracker, start, &results);
        assert_eq!(transitions, vec![(8, HealthStatus::Unhealthy)]);
    }

    #[test]
    fn a_failure_resets_the_success_count() {
        let start = Instant::now();
        let mut tracker = HealthTracker::new(&check(3, 1, Duration::ZERO), start);
        tracker.record(false, start);
        let results = [true, true, false, true, true, false, true, true, true];
        let transitions = feed(&mut tracker, start + INTERVAL, &results);
        assert_eq!(transitions, vec![(8, HealthStatus::Healthy)]);
    }

    #[test]
    fn flapping_below_both_thresholds_changes_nothing() {
        let start = Instant::now();
        let mut tracker = HealthTracker::new(&check(2, 2, Duration::ZERO), start);
        let results = [true, false, true, false, true, false, true, false];
        assert_eq!(feed(&mut tracker, start, &results), vec![]);
        assert_eq!(tracker.status(), HealthStatus::Unknown);
    }

    #[test]
    fn flapping_across_thresholds_reports_every_transition_once() {
        let start = Instant::now();
        let mut tracker = HealthTracker::new(&check(1, 2, Duration::ZERO), start);
        let results = [true, true, false, false, false, true, true, false, true];
        let transitions = feed(&mut tracker, start, &results);
        assert_eq!(
            transitions,
            vec![
                (0, HealthStatus::Healthy),
                (3, HealthStatus::Unhealthy),
                (5, HealthStatus::Healthy),
            ]
        );
        assert_eq!(tracker.status(), HealthStatus::Healthy);
    }

    #[test]
    fn failures_during_the_start_period_do_not_count() {
        let start = Instant::now();
        let mut tracker = HealthTracker::new(&check(1, 2, INTERVAL * 3), start);
        // Probes at 0, 10, 20 s fall inside the 30 s start period; 30 and 40 s count.
        let transitions = feed(&mut tracker, start, &[false; 5]);
        assert_eq!(transitions, vec![(4, HealthStatus::Unhealthy)]);
    }

    #[test]
    fn the_start_period_ends_exactly_at_its_length() {
        let start = Instant::now();
        let start_period = Duration::from_secs(5);
        let mut tracker = HealthTracker::new(&check(1, 1, start_period), start);
        let just_before = start + start_period - Duration::from_millis(1);
        assert_eq!(tracker.record(false, just_before), None);
        assert_eq!(
            tracker.record(false, start + start_period),
            Some(HealthStatus::Unhealthy)
        );
    }

    #[test]
    fn successes_count_during_the_start_period() {
        let start = Instant::now();
        let mut tracker = HealthTracker::new(&check(2, 3, INTERVAL * 10), start);
        let transitions = feed(&mut tracker, start, &[false, true, true]);
        assert_eq!(transitions, vec![(2, HealthStatus::Healthy)]);
    }

    #[test]
    fn a_failure_during_the_start_period_breaks_a_run_of_successes() {
        let start = Instant::now();
        let mut tracker = HealthTracker::new(&check(2, 3, INTERVAL * 10), start);
        let transitions = feed(&mut tracker, start, &[true, false, true, true]);
        assert_eq!(transitions, vec![(3, HealthStatus::Healthy)]);
    }

    #[test]
    fn the_first_success_ends_the_start_period() {
        let start = Instant::now();
        let mut tracker = HealthTracker::new(&check(1, 2, INTERVAL * 10), start);
        let transitions = feed(&mut tracker, start, &[false, true, false, false]);
        assert_eq!(
            transitions,
            vec![(1, HealthStatus::Healthy), (3, HealthStatus::Unhealthy)]
        );
    }

    #[test]
    fn zero_thresholds_behave_like_one() {
        let start = Instant::now();
        let mut tracker = HealthTracker::new(&check(0, 0, Duration::ZERO), start);
        assert_eq!(tracker.record(false, start), Some(HealthStatus::Unhealthy));
        assert_eq!(
            tracker.record(true, start + INTERVAL),
            Some(HealthStatus::Healthy)
        );
    }
}
