//! Per-service proxy counters: relaxed atomics bumped on the data path, read as a
//! [`CountersSnapshot`] by the metrics endpoint; and per-revision connection outcomes
//! ([`RevisionCounters`], read as [`RevisionOutcomes`]) for the coordinator's canary analysis.

use std::collections::BTreeMap;
use std::ops::AddAssign;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

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
    retries: AtomicU64,
    failed: AtomicU64,
    drained: AtomicU64,
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
    /// Connect attempts beyond the first one of a client connection.
    pub retries: u64,
    /// Client connections closed because no replica could be connected.
    pub failed: u64,
    /// Connections closed by the drain deadline after their replica was removed.
    pub drained: u64,
}

impl AddAssign for CountersSnapshot {
    fn add_assign(&mut self, other: CountersSnapshot) {
        self.accepted += other.accepted;
        self.active += other.active;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.connect_errors += other.connect_errors;
        self.retries += other.retries;
        self.failed += other.failed;
        self.drained += other.drained;
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
            retries: self.retries.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            drained: self.drained.load(Ordering::Relaxed),
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

    pub(crate) fn connect_error(&self) {
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
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
