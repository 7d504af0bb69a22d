//! Per-service proxy counters: relaxed atomics bumped on the data path, read as a
//! [`CountersSnapshot`] for the agent's metrics; and per-revision connection outcomes
//! ([`RevisionCounters`], read as [`RevisionOutcomes`]) for the coordinator's canary analysis.

use std::collections::BTreeMap;
use std::io;
use std::ops::AddAssign;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;

/// Live counters of one service proxy (one published port). Every update is a relaxed atomic
/// add, so the data path never takes a lock for them.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    accepted: AtomicU64,
    active: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    connect_errors: AtomicU64,
    connect_refused: AtomicU64,
    connect_timeouts: AtomicU64,
    retries: AtomicU64,
    replayed: AtomicU64,
    failed: AtomicU64,
    drained: AtomicU64,
    connect_latency: LatencyHistogram,
}

/// Upper bounds of [`LatencyHistogram`]'s buckets, in seconds (a last one, +Inf, follows):
/// 100 µs, what a connect to a replica on the same host takes, to 5 s, past the proxy's
/// connect timeout.
pub const LATENCY_BOUNDS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Observations of a duration in [`LATENCY_BOUNDS`]' buckets, each a relaxed atomic.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// Counts one observation of `took`.
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = LATENCY_BOUNDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// A copy of the counts.
    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

/// A point-in-time copy of a [`LatencyHistogram`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LatencySnapshot {
    /// Observations per bucket (not cumulative), the last one past every bound.
    pub buckets: [u64; LATENCY_BOUNDS.len() + 1],
    /// Sum of the observations, in nanoseconds.
    pub sum_nanos: u64,
}

impl LatencySnapshot {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl AddAssign for LatencySnapshot {
    fn add_assign(&mut self, other: LatencySnapshot) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.sum_nanos += other.sum_nanos;
    }
}

/// A point-in-time copy of [`ServiceCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CountersSnapshot {
    /// Client connections accepted.
    pub accepted: u64,
    /// Client connections being handled now (connecting or copying).
    pub active: u64,
    /// Bytes read from clients (and forwarded to replicas).
    pub bytes_in: u64,
    /// Bytes written to clients (read from replicas).
    pub bytes_out: u64,
    /// Failed connect attempts to a replica (refused, unreachable, timed out).
    pub connect_errors: u64,
    /// Of those: refused (nothing listens, or the replica's host said no).
    pub connect_refused: u64,
    /// Of those: no answer within the connect timeout.
    pub connect_timeouts: u64,
    /// Connect attempts beyond the first one of a client connection.
    pub retries: u64,
    /// Times a replica closed a connection before answering and the client's bytes went to
    /// another one.
    pub replayed: u64,
    /// Client connections closed because no replica could be connected.
    pub failed: u64,
    /// Connections closed by the drain deadline after their replica was removed.
    pub drained: u64,
    /// Time of the successful connects to replicas.
    pub connect_latency: LatencySnapshot,
}

impl AddAssign for CountersSnapshot {
    fn add_assign(&mut self, other: CountersSnapshot) {
        self.accepted += other.accepted;
        self.active += other.active;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.connect_errors += other.connect_errors;
        self.connect_refused += other.connect_refused;
        self.connect_timeouts += other.connect_timeouts;
        self.retries += other.retries;
        self.replayed += other.replayed;
        self.failed += other.failed;
        self.drained += other.drained;
        self.connect_latency += other.connect_latency;
    }
}

impl ServiceCounters {
    /// A copy of every counter. Counters are read one by one, so a snapshot taken under load
    /// may mix values from slightly different instants.
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            accepted: self.accepted.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            connect_errors: self.connect_errors.load(Ordering::Relaxed),
            connect_refused: self.connect_refused.load(Ordering::Relaxed),
            connect_timeouts: self.connect_timeouts.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            replayed: self.replayed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            drained: self.drained.load(Ordering::Relaxed),
            connect_latency: self.connect_latency.snapshot(),
        }
    }

    pub(crate) fn connection_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection accepted by the agent before a restart, carried on here.
    pub(crate) fn connection_adopted(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_ended(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn add_bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A connect to a replica failed with `kind`.
    pub(crate) fn connect_error(&self, kind: io::ErrorKind) {
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
        match kind {
            io::ErrorKind::ConnectionRefused => {
                self.connect_refused.fetch_add(1, Ordering::Relaxed);
            }
            io::ErrorKind::TimedOut => {
                self.connect_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// A connect to a replica succeeded after `took`.
    pub(crate) fn connected(&self, took: Duration) {
        self.connect_latency.observe(took);
    }

    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn replay(&self) {
        self.replayed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn client_failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_drained(&self) {
        self.drained.fetch_add(1, Ordering::Relaxed);
    }
}

/// Connection outcomes of the replicas of one revision, as counted by [`RevisionCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RevisionOutcomes {
    /// Connect attempts to a replica of the revision (a client connection retried on another
    /// replica counts once per replica tried).
    pub connections: u64,
    /// Of those: the connect failed (refused, unreachable, timed out), or the replica closed
    /// or reset the connection before its first answer byte, within
    /// [`ProxyConfig::retry_unanswered_within`](super::ProxyConfig::retry_unanswered_within).
    /// A connection that got an answer is never counted here, whatever happens later.
    pub failed: u64,
}

impl AddAssign for RevisionOutcomes {
    fn add_assign(&mut self, other: RevisionOutcomes) {
        self.connections += other.connections;
        self.failed += other.failed;
    }
}

/// Live per-revision outcomes of one service proxy, since it was created. A small map behind
/// a mutex, touched once per connect attempt (twice when the replica then closes without
/// answering), never per byte.
#[derive(Debug, Default)]
pub struct RevisionCounters {
    by_revision: Mutex<BTreeMap<(Arc<str>, u64), RevisionOutcomes>>,
}

impl RevisionCounters {
    /// Outcomes per (workload, revision); only revisions that had at least one connect
    /// attempt appear.
    pub fn snapshot(&self) -> BTreeMap<(Arc<str>, u64), RevisionOutcomes> {
        self.by_revision
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A connect attempt to a replica of `revision` of `workload` ended: connected, or failed.
    pub(crate) fn attempted(&self, workload: &Arc<str>, revision: u64, connect_failed: bool) {
        self.add(
            workload,
            revision,
            RevisionOutcomes {
                connections: 1,
                failed: u64::from(connect_failed),
            },
        );
    }

    /// A replica of `revision` of `workload` that was connected closed or reset before
    /// answering.
    pub(crate) fn unanswered(&self, workload: &Arc<str>, revision: u64) {
        self.add(
            workload,
            revision,
            RevisionOutcomes {
                connections: 0,
                failed: 1,
            },
        );
    }

    fn add(&self, workload: &Arc<str>, revision: u64, outcomes: RevisionOutcomes) {
        *self
            .by_revision
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((Arc::clone(workload), revision))
            .or_default() += outcomes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_the_first_bucket_that_holds_them() {
        let histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_micros(50));
        histogram.observe(Duration::from_micros(100));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(9));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), 4);
        assert_eq!(snapshot.buckets[0], 2, "100 µs is within the first bound");
        assert_eq!(snapshot.buckets[5], 1, "3 ms is within 5 ms");
        assert_eq!(
            snapshot.buckets[LATENCY_BOUNDS.len()],
            1,
            "past every bound"
        );
        assert_eq!(snapshot.sum_nanos, 9_003_150_000);
        let mut twice = snapshot;
        twice += snapshot;
        assert_eq!(twice.count(), 8);
    }

    #[test]
    fn connect_failures_are_told_apart_by_cause() {
        let counters = ServiceCounters::default();
        counters.connect_error(io::ErrorKind::ConnectionRefused);
        counters.connect_error(io::ErrorKind::TimedOut);
        counters.connect_error(io::ErrorKind::HostUnreachable);
        let snapshot = counters.snapshot();
        assert_eq!(
            (
                snapshot.connect_errors,
                snapshot.connect_refused,
                snapshot.connect_timeouts
            ),
            (3, 1, 1)
        );
    }
}
