//! From raw counters to usage: the deltas between two readings, pure, with no I/O.
//!
//! The kernel's counters only grow while a cgroup lives, so a counter that went down means
//! a new cgroup (the container restarted: same id, new cgroup): that interval gives no
//! sample and the new reading starts a new series, rather than a negative or a huge value.

use std::collections::HashMap;
use std::time::Instant;

use super::cgroup::RawReading;
use super::node::NodeReading;

/// A container's usage over one interval, what autoscaling compares with its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Average CPU over the interval, in millicores (1000 = one CPU busy all the time).
    pub cpu_millis: u64,
    /// Working set at the end of the interval (usage minus inactive file cache).
    pub memory_working_set_bytes: u64,
    /// The container's memory limit, `None` without one.
    pub memory_limit_bytes: Option<u64>,
    /// Processes the OOM killer ended during the interval.
    pub oom_kills: u64,
}

/// Why two readings give no sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSample {
    /// A counter went down: the container restarted in a new cgroup, and the later
    /// reading starts a new series.
    Restarted,
    /// The later reading is not later: no time to divide by.
    NoTimeElapsed,
}

/// The usage between two readings of the same container taken at `prev_at` and `cur_at`.
pub fn usage_between(
    prev: &RawReading,
    prev_at: Instant,
    cur: &RawReading,
    cur_at: Instant,
) -> Result<Usage, NoSample> {
    if cur.cpu_usage_usec < prev.cpu_usage_usec || cur.oom_kills < prev.oom_kills {
        return Err(NoSample::Restarted);
    }
    let elapsed_nanos = cur_at
        .checked_duration_since(prev_at)
        .map(|elapsed| elapsed.as_nanos())
        .filter(|&nanos| nanos > 0)
        .ok_or(NoSample::NoTimeElapsed)?;
    let cpu_usec = u128::from(cur.cpu_usage_usec - prev.cpu_usage_usec);
    // usec of CPU per usec of wall time, times 1000: usec * 1e6 / ns, rounded.
    let cpu_millis = (cpu_usec * 1_000_000 + elapsed_nanos / 2) / elapsed_nanos;
    Ok(Usage {
        cpu_millis: u64::try_from(cpu_millis).unwrap_or(u64::MAX),
        memory_working_set_bytes: cur.working_set_bytes(),
        memory_limit_bytes: cur.memory_limit_bytes,
        oom_kills: cur.oom_kills - prev.oom_kills,
    })
}

/// The last reading of one container, the start of its next interval.
#[derive(Debug, Clone, Copy)]
struct Baseline {
    pid: u32,
    reading: RawReading,
    at: Instant,
}

/// Keeps each container's last reading and turns the next one into a [`Usage`].
#[derive(Debug, Default)]
pub struct Sampler {
    last: HashMap<String, Baseline>,
}

impl Sampler {
    /// A sampler that has seen no container yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `reading` of container `id` (main process `pid`) taken at `at`, and returns
    /// its usage since the previous reading.
    ///
    /// `None` for a container's first reading, after a restart (a new main process or a
    /// counter that went down: the reading starts a new series), and for a reading no
    /// later than the previous one (which is then kept as the baseline).
    pub fn sample(
        &mut self,
        id: &str,
        pid: u32,
        reading: RawReading,
        at: Instant,
    ) -> Option<Usage> {
        let current = Baseline { pid, reading, at };
        let Some(previous) = self.last.get_mut(id) else {
            self.last.insert(id.to_owned(), current);
            return None;
        };
        if previous.pid != pid {
            *previous = current;
            return None;
        }
        match usage_between(&previous.reading, previous.at, &reading, at) {
            Ok(usage) => {
                *previous = current;
                Some(usage)
            }
            Err(NoSample::Restarted) => {
                *previous = current;
                None
            }
            Err(NoSample::NoTimeElapsed) => None,
        }
    }

    /// Forgets a container that is gone, so that its id starts afresh if it comes back.
    pub fn forget(&mut self, id: &str) {
        self.last.remove(id);
    }

    /// Forgets every container for which `keep` is false: after each round, with the
    /// containers still on the node, so that removed ones do not pile up.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.last.retain(|id, _| keep(id));
    }

    /// How many containers have a baseline.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// True when no container has a baseline.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// The node's usage over one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeUsage {
    /// Average CPU busy over the interval, all CPUs together, in millicores.
    pub cpu_millis: u64,
    /// The node's CPUs, in millicores (1000 per online CPU).
    pub cpu_capacity_millis: u64,
    /// `MemTotal` at the end of the interval.
    pub memory_total_bytes: u64,
    /// `MemAvailable` at the end of the interval.
    pub memory_available_bytes: u64,
}

/// The node's usage between two readings; the tick deltas need no clock.
pub fn node_usage_between(prev: &NodeReading, cur: &NodeReading) -> Result<NodeUsage, NoSample> {
    let (p, c) = (prev.stat.cpu, cur.stat.cpu);
    if c.total_ticks < p.total_ticks || c.busy_ticks < p.busy_ticks {
        // CPUs went offline (their ticks leave the sum) or the counters wrapped.
        return Err(NoSample::Restarted);
    }
    let total = u128::from(c.total_ticks - p.total_ticks);
    if total == 0 {
        return Err(NoSample::NoTimeElapsed);
    }
    let busy = u128::from(c.busy_ticks - p.busy_ticks);
    let capacity = u64::from(cur.stat.cpus) * 1000;
    let cpu_millis = (busy * u128::from(capacity) + total / 2) / total;
    Ok(NodeUsage {
        cpu_millis: u64::try_from(cpu_millis).unwrap_or(u64::MAX),
        cpu_capacity_millis: capacity,
        memory_total_bytes: cur.memory.total_bytes,
        memory_available_bytes: cur.memory.available_bytes,
    })
}

/// Keeps the node's last reading and turns the next one into a [`NodeUsage`].
#[derive(Debug, Default)]
pub struct NodeSampler {
    last: Option<NodeReading>,
}

impl NodeSampler {
    /// A sampler with no reading yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `reading` and returns the usage since the previous one; `None` for the
    /// first reading and when the counters went down (then a new series starts).
    pub fn sample(&mut self, reading: NodeReading) -> Option<NodeUsage> {
        let previous = self.last.replace(reading)?;
        match node_usage_between(&previous, &reading) {
            Ok(usage) => Some(usage),
            Err(NoSample::Restarted) => None,
            Err(NoSample::NoTimeElapsed) => {
                self.last = Some(previous);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::usage::node::{CpuTimes, MemInfo, ProcStat};

    const MIB: u64 = 1024 * 1024;

    fn raw(cpu_usage_usec: u64, oom_kills: u64) -> RawReading {
        RawReading {
            cpu_usage_usec,
            memory_usage_bytes: 120 * MIB,
            memory_inactive_file_bytes: 20 * MIB,
            memory_limit_bytes: Some(256 * MIB),
            oom_kills,
        }
    }

    #[test]
    fn cpu_is_the_usage_delta_over_the_wall_time_delta() {
        let t0 = Instant::now();
        // 2.5 s of CPU in 5 s: half a CPU.
        let usage = usage_between(
            &raw(1_000_000, 0),
            t0,
            &raw(3_500_000, 0),
            t0 + Duration::from_secs(5),
        );
        assert_eq!(
            usage,
            Ok(Usage {
                cpu_millis: 500,
                memory_working_set_bytes: 100 * MIB,
                memory_limit_bytes: Some(256 * MIB),
                oom_kills: 0,
            })
        );
        // Two CPUs busy for 1.5 s; rounding to the nearest millicore.
        let at = |ms| t0 + Duration::from_millis(ms);
        let two = usage_between(&raw(0, 0), at(0), &raw(3_000_000, 0), at(1500));
        assert_eq!(two.map(|u| u.cpu_millis), Ok(2000));
        let third = usage_between(&raw(0, 0), at(0), &raw(1_000, 0), at(3));
        assert_eq!(third.map(|u| u.cpu_millis), Ok(333));
        let idle = usage_between(&raw(7, 0), at(0), &raw(7, 0), at(5000));
        assert_eq!(idle.map(|u| u.cpu_millis), Ok(0));
    }

    #[test]
    fn oom_kills_are_counted_per_interval() {
        let t0 = Instant::now();
        let usage = usage_between(&raw(0, 2), t0, &raw(10, 5), t0 + Duration::from_secs(1));
        assert_eq!(usage.map(|u| u.oom_kills), Ok(3));
    }

    #[test]
    fn a_counter_going_down_is_a_restart_not_a_negative() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(
            usage_between(&raw(9_000_000, 0), t0, &raw(100, 0), t1),
            Err(NoSample::Restarted)
        );
        assert_eq!(
            usage_between(&raw(100, 4), t0, &raw(200, 0), t1),
            Err(NoSample::Restarted)
        );
    }

    #[test]
    fn no_time_elapsed_gives_no_sample() {
        let t0 = Instant::now();
        assert_eq!(
            usage_between(&raw(0, 0), t0, &raw(10, 0), t0),
            Err(NoSample::NoTimeElapsed)
        );
        assert_eq!(
            usage_between(&raw(0, 0), t0 + Duration::from_secs(1), &raw(10, 0), t0),
            Err(NoSample::NoTimeElapsed)
        );
    }

    #[test]
    fn working_set_has_a_floor_of_zero() {
        let t0 = Instant::now();
        let mut cur = raw(10, 0);
        cur.memory_inactive_file_bytes = cur.memory_usage_bytes + 4096;
        let usage = usage_between(&raw(0, 0), t0, &cur, t0 + Duration::from_secs(1));
        assert_eq!(usage.map(|u| u.memory_working_set_bytes), Ok(0));
    }

    #[test]
    fn sampler_needs_two_readings_then_follows_the_series() {
        let mut sampler = Sampler::new();
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(sampler.sample("web-1", 40, raw(0, 0), at(0)), None);
        assert_eq!(
            sampler
                .sample("web-1", 40, raw(5_000_000, 0), at(5))
                .map(|u| u.cpu_millis),
            Some(1000)
        );
        // The baseline moved: the next interval is 5 s to 10 s.
        assert_eq!(
            sampler
                .sample("web-1", 40, raw(7_500_000, 1), at(10))
                .map(|u| (u.cpu_millis, u.oom_kills)),
            Some((500, 1))
        );
        // Containers are kept apart.
        assert_eq!(sampler.sample("web-2", 41, raw(0, 0), at(10)), None);
        assert_eq!(sampler.len(), 2);
    }

    #[test]
    fn sampler_starts_a_new_series_after_a_restart() {
        let mut sampler = Sampler::new();
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        sampler.sample("web-1", 40, raw(0, 0), at(0));
        sampler.sample("web-1", 40, raw(9_000_000, 1), at(5));
        // Restarted in a new cgroup: counters from zero, no sample for that interval…
        assert_eq!(sampler.sample("web-1", 40, raw(1_000_000, 0), at(10)), None);
        // …and the next interval is measured from the new series.
        assert_eq!(
            sampler
                .sample("web-1", 40, raw(3_000_000, 0), at(15))
                .map(|u| (u.cpu_millis, u.oom_kills)),
            Some((400, 0))
        );
    }

    #[test]
    fn sampler_treats_a_new_main_process_as_a_restart() {
        let mut sampler = Sampler::new();
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        sampler.sample("web-1", 40, raw(1_000_000, 0), at(0));
        // The new process burned more than the old one had: the counters alone would
        // hide the restart.
        assert_eq!(sampler.sample("web-1", 77, raw(4_000_000, 0), at(5)), None);
        assert_eq!(
            sampler
                .sample("web-1", 77, raw(6_000_000, 0), at(10))
                .map(|u| u.cpu_millis),
            Some(400)
        );
    }

    #[test]
    fn sampler_keeps_its_baseline_on_a_reading_that_is_not_later() {
        let mut sampler = Sampler::new();
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        sampler.sample("web-1", 40, raw(0, 0), at(5));
        assert_eq!(sampler.sample("web-1", 40, raw(100, 0), at(5)), None);
        assert_eq!(
            sampler
                .sample("web-1", 40, raw(1_000_000, 0), at(6))
                .map(|u| u.cpu_millis),
            Some(1000)
        );
    }

    #[test]
    fn sampler_forgets_containers() {
        let mut sampler = Sampler::new();
        let t0 = Instant::now();
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            sampler.sample(id, i as u32, raw(0, 0), t0);
        }
        sampler.retain(|id| id != "b");
        assert_eq!(sampler.len(), 2);
        sampler.forget("a");
        assert_eq!(sampler.len(), 1);
        // A forgotten container starts afresh.
        assert_eq!(
            sampler.sample("a", 0, raw(10, 0), t0 + Duration::from_secs(1)),
            None
        );
        sampler.retain(|_| false);
        assert!(sampler.is_empty());
    }

    fn node(busy_ticks: u64, total_ticks: u64) -> NodeReading {
        NodeReading {
            stat: ProcStat {
                cpu: CpuTimes {
                    busy_ticks,
                    total_ticks,
                },
                cpus: 4,
            },
            memory: MemInfo {
                total_bytes: 8192 * MIB,
                available_bytes: 6000 * MIB,
            },
        }
    }

    #[test]
    fn node_cpu_is_the_busy_share_of_all_cpus() {
        // 4 CPUs, 100 ticks each over the interval; 150 busy: 1.5 CPUs.
        assert_eq!(
            node_usage_between(&node(1000, 5000), &node(1150, 5400)),
            Ok(NodeUsage {
                cpu_millis: 1500,
                cpu_capacity_millis: 4000,
                memory_total_bytes: 8192 * MIB,
                memory_available_bytes: 6000 * MIB,
            })
        );
        assert_eq!(
            node_usage_between(&node(1000, 5000), &node(1000, 5000)),
            Err(NoSample::NoTimeElapsed)
        );
        assert_eq!(
            node_usage_between(&node(1000, 5000), &node(900, 5100)),
            Err(NoSample::Restarted)
        );
    }

    #[test]
    fn node_sampler_needs_two_readings() {
        let mut sampler = NodeSampler::new();
        assert_eq!(sampler.sample(node(0, 0)), None);
        assert_eq!(sampler.sample(node(0, 0)), None);
        assert_eq!(
            sampler.sample(node(400, 400)).map(|u| u.cpu_millis),
            Some(4000)
        );
        // Counters going down start a new series from the new reading.
        assert_eq!(sampler.sample(node(10, 100)), None);
        assert_eq!(sampler.sample(node(10, 500)).map(|u| u.cpu_millis), Some(0));
    }
}
