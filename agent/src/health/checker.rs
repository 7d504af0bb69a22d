//! The task that runs one health check of one allocation on its interval and reports
//! status changes.

use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use drover_proto::model::HealthCheck;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::probe::{ProbeTarget, probe_once};
use super::tracker::{HealthStatus, HealthTracker};
use crate::runtime::ContainerRuntime;

/// What a check decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// Whether the replica receives traffic.
    Readiness,
    /// Whether the replica is restarted.
    Liveness,
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckKind::Readiness => "readiness",
            CheckKind::Liveness => "liveness",
        })
    }
}

/// A change of one check's status, sent once per transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    /// Allocation the check belongs to.
    pub alloc_id: String,
    /// Which check changed.
    pub kind: CheckKind,
    /// The new status.
    pub status: HealthStatus,
    /// Detail of the probe that caused the change.
    pub detail: String,
    /// What the check probes (container and published ports), so that the receiver can
    /// tell an event of a checker it has since replaced.
    pub target: ProbeTarget,
}

/// Counts of one check's probe results, shared with the agent's metrics (detached ones by
/// default).
#[derive(Debug, Clone, Default)]
pub struct ProbeCounts {
    /// Probes that passed.
    pub passed: Counter,
    /// Probes that failed (or timed out).
    pub failed: Counter,
}

/// Where a checker reports: each status change, and each probe's result.
#[derive(Debug, Clone)]
pub struct Reports {
    /// Status changes.
    pub events: mpsc::Sender<HealthEvent>,
    /// Probe results.
    pub probes: ProbeCounts,
}

impl From<mpsc::Sender<HealthEvent>> for Reports {
    fn from(events: mpsc::Sender<HealthEvent>) -> Reports {
        Reports {
            events,
            probes: ProbeCounts::default(),
        }
    }
}

/// Runs one check of one allocation until cancelled. Waits only through tokio's clock, so
/// tests can run it on paused time.
#[derive(Debug)]
pub struct HealthChecker {
    alloc_id: String,
    kind: CheckKind,
    check: HealthCheck,
    target: ProbeTarget,
    runtime: Arc<dyn ContainerRuntime>,
    events: mpsc::Sender<HealthEvent>,
    probes: ProbeCounts,
    tracker: HealthTracker,
}

impl HealthChecker {
    /// Starts checking now: the first probe runs at once, then one `check.interval` after
    /// each probe finishes. Sends a [`HealthEvent`] on every status change and nothing
    /// otherwise, and counts every probe's result. The task ends when `cancel` fires or the
    /// receiver of the events is dropped.
    pub fn spawn(
        alloc_id: impl Into<String>,
        kind: CheckKind,
        check: HealthCheck,
        target: ProbeTarget,
        runtime: Arc<dyn ContainerRuntime>,
        reports: impl Into<Reports>,
        cancel: CancellationToken,
    ) -> JoinHandle<()> {
        let tracker = HealthTracker::new(&check, Instant::now());
        let Reports { events, probes } = reports.into();
        let checker = HealthChecker {
            alloc_id: alloc_id.into(),
            kind,
            check,
            target,
            runtime,
            events,
            probes,
            tracker,
        };
        tokio::spawn(checker.run(cancel))
    }

    async fn run(mut self, cancel: CancellationToken) {
        debug!(alloc = %self.alloc_id, kind = %self.kind, "health checker started");
        // `None`: cancelled; `Break`: nobody listens any more.
        while let Some(ControlFlow::Continue(())) = cancel.run_until_cancelled(self.step()).await {}
        debug!(alloc = %self.alloc_id, kind = %self.kind, "health checker stopped");
    }

    /// Waits for the next probe, runs it and reports a transition. Breaks when nobody
    /// listens to the events any more.
    async fn step(&mut self) -> ControlFlow<()> {
        tokio::time::sleep_until(self.tracker.next_due()).await;
        let result = probe_once(
            &self.check.action,
            &self.target,
            self.runtime.as_ref(),
            self.check.timeout,
        )
        .await;
        debug!(
            alloc = %self.alloc_id,
            kind = %self.kind,
            ok = result.ok,
            detail = %result.detail,
            "health probe finished"
        );
        if result.ok {
            self.probes.passed.inc();
        } else {
            self.probes.failed.inc();
        }
        let Some(status) = self.tracker.record(result.ok, Instant::now()) else {
            return ControlFlow::Continue(());
        };
        info!(
            alloc = %self.alloc_id,
            kind = %self.kind,
            status = %status,
            detail = %result.detail,
            "health status changed"
        );
        let event = HealthEvent {
            alloc_id: self.alloc_id.clone(),
            kind: self.kind,
            status,
            detail: result.detail,
            target: self.target.clone(),
        };
        if self.events.send(event).await.is_err() {
            debug!(alloc = %self.alloc_id, kind = %self.kind, "health events receiver is gone");
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use drover_proto::model::ProbeAction;

    use super::*;
    use crate::health::test_support::{LOOPBACK, exec_calls, running_container};
    use crate::runtime::FakeRuntime;

    // The tests run on paused time: sleeps end as soon as every task waits, and the clock
    // jumps exactly to the next timer.
    const INTERVAL: Duration = Duration::from_secs(10);
    /// Upper bound for anything the tests wait for; far above what they need.
    const PATIENCE: Duration = Duration::from_secs(3600);

    fn check(failure_threshold: u32) -> HealthCheck {
        HealthCheck {
            interval: INTERVAL,
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold,
            start_period: Duration::ZERO,
            ..HealthCheck::with_defaults(ProbeAction::Exec {
                command: vec!["check".to_owned()],
            })
        }
    }

    struct Running {
        runtime: Arc<FakeRuntime>,
        container_id: String,
        target: ProbeTarget,
        events: mpsc::Receiver<HealthEvent>,
        cancel: CancellationToken,
        task: JoinHandle<()>,
        started: Instant,
    }

    /// Starts a checker on a running fake container whose `exec` exits with `exit_code`.
    async fn start(kind: CheckKind, check: HealthCheck, exit_code: i64) -> Running {
        let runtime = Arc::new(FakeRuntime::new());
        let container_id = running_container(&runtime).await;
        runtime.set_exec_result(None, exit_code);
        let target = ProbeTarget {
            container_id: container_id.clone(),
            host: LOOPBACK,
            host_ports: BTreeMap::new(),
        };
        let (sender, events) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let task = HealthChecker::spawn(
            "alloc-1",
            kind,
            check,
            target.clone(),
            runtime.clone(),
            sender,
            cancel.clone(),
        );
        Running {
            runtime,
            container_id,
            target,
            events,
            cancel,
            task,
            started,
        }
    }

    impl Running {
        async fn next_event(&mut self) -> HealthEvent {
            tokio::time::timeout(PATIENCE, self.events.recv())
                .await
                .expect("no health event in time")
                .expect("checker ended without an event")
        }

        fn probes(&self) -> usize {
            exec_calls(&self.runtime).len()
        }

        /// Cancels the checker, waits for it to end and returns the events it sent but
        /// nobody read.
        async fn stop(mut self) -> Vec<HealthEvent> {
            self.cancel.cancel();
            tokio::time::timeout(PATIENCE, self.task)
                .await
                .expect("checker did not stop when cancelled")
                .expect("checker panicked");
            let mut rest = Vec::new();
            while let Some(event) = self.events.recv().await {
                rest.push(event);
            }
            rest
        }
    }

    impl Running {
        /// The event this checker sends for a transition.
        fn event(&self, kind: CheckKind, status: HealthStatus, detail: &str) -> HealthEvent {
            HealthEvent {
                alloc_id: "alloc-1".to_owned(),
                kind,
                status,
                detail: detail.to_owned(),
                target: self.target.clone(),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reports_unhealthy_once_after_failure_threshold_failures() {
        let mut running = start(CheckKind::Liveness, check(3), 1).await;
        let unhealthy = running.next_event().await;
        let elapsed = running.started.elapsed();
        assert_eq!(
            unhealthy,
            running.event(CheckKind::Liveness, HealthStatus::Unhealthy, "exit code 1")
        );
        // Probes at 0, 1 and 2 intervals after start; the third failure decides.
        assert_eq!(elapsed, INTERVAL * 2);
        assert_eq!(running.probes(), 3);
        // Further failures are no transition, so no further event.
        tokio::time::sleep(INTERVAL * 3 + INTERVAL / 2).await;
        assert_eq!(running.probes(), 6);
        let id = &running.container_id;
        assert!(
            exec_calls(&running.runtime)
                .iter()
                .all(|call| *call == format!("exec {id} check"))
        );
        assert_eq!(running.stop().await, vec![]);
    }

    #[tokio::test(start_paused = true)]
    async fn reports_recovery_after_being_unhealthy() {
        let mut running = start(CheckKind::Readiness, check(3), 7).await;
        assert_eq!(
            running.next_event().await,
            running.event(CheckKind::Readiness, HealthStatus::Unhealthy, "exit code 7")
        );
        running.runtime.set_exec_result(None, 0);
        assert_eq!(
            running.next_event().await,
            running.event(CheckKind::Readiness, HealthStatus::Healthy, "exit code 0")
        );
        // Three failures, then the first success one interval later.
        assert_eq!(running.started.elapsed(), INTERVAL * 3);
        assert_eq!(running.probes(), 4);
        assert_eq!(running.stop().await, vec![]);
    }

    #[tokio::test(start_paused = true)]
    async fn reports_each_transition_of_a_flapping_target() {
        let mut running = start(CheckKind::Readiness, check(1), 0).await;
        assert_eq!(running.next_event().await.status, HealthStatus::Healthy);
        running.runtime.set_exec_result(None, 1);
        assert_eq!(running.next_event().await.status, HealthStatus::Unhealthy);
        running.runtime.set_exec_result(None, 0);
        assert_eq!(running.next_event().await.status, HealthStatus::Healthy);
        running.runtime.kill(&running.container_id, 137);
        let unhealthy = running.next_event().await;
        assert_eq!(unhealthy.status, HealthStatus::Unhealthy);
        assert!(
            unhealthy.detail.ends_with("is not running"),
            "{}",
            unhealthy.detail
        );
        assert_eq!(running.stop().await, vec![]);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_in_the_start_period_after_spawn_do_not_count() {
        let mut check = check(1);
        check.start_period = INTERVAL * 2 + INTERVAL / 2;
        let mut running = start(CheckKind::Liveness, check, 1).await;
        assert_eq!(running.next_event().await.status, HealthStatus::Unhealthy);
        // Probes at 0, 1 and 2 intervals fall in the start period; the one at 3 counts.
        assert_eq!(running.started.elapsed(), INTERVAL * 3);
        assert_eq!(running.probes(), 4);
        assert_eq!(running.stop().await, vec![]);
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_stops_a_checker_waiting_for_its_next_probe() {
        let mut check = check(3);
        check.interval = PATIENCE * 10;
        let mut running = start(CheckKind::Liveness, check, 0).await;
        assert_eq!(running.next_event().await.status, HealthStatus::Healthy);
        assert_eq!(running.stop().await, vec![]);
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_stops_a_checker_in_the_middle_of_a_probe() {
        let mut check = check(3);
        check.timeout = PATIENCE * 10;
        let running = start(CheckKind::Liveness, check, 0).await;
        running.runtime.set_exec_hang(None);
        while running.probes() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(running.stop().await, vec![]);
    }

    #[tokio::test(start_paused = true)]
    async fn ends_when_nobody_listens() {
        let Running { events, task, .. } = start(CheckKind::Readiness, check(1), 0).await;
        drop(events);
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("checker did not stop without a receiver")
            .expect("checker panicked");
    }
}
