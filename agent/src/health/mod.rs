//! Per-allocation health checks: probes (`probe`), the threshold state machine (`tracker`)
//! and the task that runs one check on its interval (`checker`).

mod checker;
mod probe;
#[cfg(test)]
mod test_support;
mod tracker;

pub use checker::{CheckKind, HealthChecker, HealthEvent, ProbeCounts, Reports};
pub use probe::{ProbeResult, ProbeTarget, probe_once};
pub use tracker::{HealthStatus, HealthTracker};
