//! The node's own CPU and memory, from /proc/stat and /proc/meminfo: what autoscaling and
//! placement compare containers' usage with, read the same cheap way.

use std::path::Path;

use super::{ParseError, UsageError, read_parsed};

/// The host's CPU time since boot, summed over all CPUs, in clock ticks (`USER_HZ`).
///
/// Only ratios of deltas are used, so the tick length never matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Ticks spent doing work: all but idle and iowait.
    pub busy_ticks: u64,
    /// All ticks: user, nice, system, idle, iowait, irq, softirq and steal (guest time is
    /// already in user and nice).
    pub total_ticks: u64,
}

/// What /proc/stat says about CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// The aggregate `cpu` line.
    pub cpu: CpuTimes,
    /// The number of `cpuN` lines: the online CPUs, for the node's capacity in millicores.
    pub cpus: u32,
}

/// What /proc/meminfo says about memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`, in bytes.
    pub total_bytes: u64,
    /// `MemAvailable`, in bytes: what new work can get without swapping, the kernel's own
    /// estimate (free memory plus reclaimable cache).
    pub available_bytes: u64,
}

/// One reading of the node's counters; [`crate::usage::sampler::NodeSampler`] turns two
/// into usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeReading {
    /// CPU times and the number of CPUs.
    pub stat: ProcStat,
    /// Memory.
    pub memory: MemInfo,
}

/// The aggregate CPU times and the CPU count in the contents of /proc/stat.
pub fn parse_proc_stat(text: &str) -> Result<ProcStat, ParseError> {
    const FILE: &str = "/proc/stat";
    let mut cpu = None;
    let mut cpus = 0u32;
    for (index, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("cpu") => {}
            Some(name) if name.starts_with("cpu") => {
                cpus = cpus.saturating_add(1);
                continue;
            }
            _ => continue,
        }
        let bad = |reason| ParseError::bad_line(FILE, index + 1, line, reason);
        let mut ticks = [0u64; 8];
        let mut count = 0;
        for field in fields.by_ref().take(ticks.len()) {
            ticks[count] = field.parse().map_err(|_| bad("expected tick counts"))?;
            count += 1;
        }
        // Kernels since 2.6.33 write 10 fields; user, nice, system and idle always exist.
        if count < 4 {
            return Err(bad("expected at least user, nice, system and idle ticks"));
        }
        let [user, nice, system, idle, iowait, irq, softirq, steal] = ticks;
        let total = [user, nice, system, idle, iowait, irq, softirq, steal]
            .iter()
            .fold(0u64, |sum, t| sum.saturating_add(*t));
        cpu = Some(CpuTimes {
            busy_ticks: total.saturating_sub(idle).saturating_sub(iowait),
            total_ticks: total,
        });
    }
    let cpu = cpu.ok_or_else(|| ParseError::missing(FILE, "cpu"))?;
    if cpus == 0 {
        return Err(ParseError::missing(FILE, "cpu0"));
    }
    Ok(ProcStat { cpu, cpus })
}

/// `MemTotal` and `MemAvailable` in the contents of /proc/meminfo (kernel 3.14 or newer).
pub fn parse_meminfo(text: &str) -> Result<MemInfo, ParseError> {
    const FILE: &str = "/proc/meminfo";
    let mut total = None;
    let mut available = None;
    for (index, line) in text.lines().enumerate() {
        let slot = if line.starts_with("MemTotal:") {
            &mut total
        } else if line.starts_with("MemAvailable:") {
            &mut available
        } else {
            continue;
        };
        let mut fields = line.split_whitespace().skip(1);
        let bytes = match (fields.next(), fields.next(), fields.next()) {
            (Some(value), Some("kB"), None) => value
                .parse::<u64>()
                .ok()
                .and_then(|kib| kib.checked_mul(1024)),
            _ => None,
        };
        *slot = Some(bytes.ok_or_else(|| {
            ParseError::bad_line(FILE, index + 1, line, "expected \"Key: <number> kB\"")
        })?);
    }
    Ok(MemInfo {
        total_bytes: total.ok_or_else(|| ParseError::missing(FILE, "MemTotal"))?,
        available_bytes: available.ok_or_else(|| ParseError::missing(FILE, "MemAvailable"))?,
    })
}

/// Reads /proc/stat and /proc/meminfo now.
pub fn read_node() -> Result<NodeReading, UsageError> {
    Ok(NodeReading {
        stat: read_parsed(Path::new("/proc/stat"), parse_proc_stat)?,
        memory: read_parsed(Path::new("/proc/meminfo"), parse_meminfo)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::ParseProblem;

    const PROC_STAT: &str = "\
cpu  149404 17002 30731 261789 1655 0 306 59 0 0
cpu0 71790 8480 14358 135274 536 0 63 26 0 0
cpu1 77613 8522 16372 126515 1118 0 242 33 0 0
intr 12345 0 0
ctxt 987654
btime 1700000000
processes 4321
procs_running 3
";

    const MEMINFO: &str = "\
MemTotal:       24683664 kB
MemFree:        13721012 kB
MemAvailable:   23609900 kB
Buffers:           24388 kB
HugePages_Total:       0
";

    #[test]
    fn proc_stat_sums_the_aggregate_line_and_counts_cpus() {
        let stat = parse_proc_stat(PROC_STAT).expect("fixture");
        let total = 149404 + 17002 + 30731 + 261789 + 1655 + 306 + 59;
        assert_eq!(
            stat,
            ProcStat {
                cpu: CpuTimes {
                    busy_ticks: total - 261789 - 1655,
                    total_ticks: total,
                },
                cpus: 2,
            }
        );
    }

    #[test]
    fn proc_stat_of_an_old_kernel_has_four_fields() {
        let stat = parse_proc_stat("cpu 10 0 5 85\ncpu0 10 0 5 85\n").expect("old format");
        assert_eq!(stat.cpu.total_ticks, 100);
        assert_eq!(stat.cpu.busy_ticks, 15);
    }

    #[test]
    fn proc_stat_errors_name_the_line() {
        let err = parse_proc_stat("cpu 1 2 x 4\ncpu0 1 2 3 4\n").expect_err("bad tick");
        assert_eq!(
            err.to_string(),
            "/proc/stat: line 1 \"cpu 1 2 x 4\": expected tick counts"
        );
        let err = parse_proc_stat("cpu 1 2\ncpu0 1 2\n").expect_err("too few");
        assert!(matches!(
            err.problem,
            ParseProblem::BadLine { number: 1, .. }
        ));
        let err = parse_proc_stat("cpu0 1 2 3 4\n").expect_err("no aggregate");
        assert_eq!(err.to_string(), "/proc/stat: no \"cpu\" line");
        let err = parse_proc_stat("cpu 1 2 3 4\n").expect_err("no cpus");
        assert_eq!(err.to_string(), "/proc/stat: no \"cpu0\" line");
    }

    #[test]
    fn meminfo_total_and_available_in_bytes() {
        assert_eq!(
            parse_meminfo(MEMINFO),
            Ok(MemInfo {
                total_bytes: 24_683_664 * 1024,
                available_bytes: 23_609_900 * 1024,
            })
        );
    }

    #[test]
    fn meminfo_errors_name_the_line() {
        let err = parse_meminfo("MemTotal: 100 MB\nMemAvailable: 50 kB\n").expect_err("unit");
        assert_eq!(
            err.to_string(),
            "/proc/meminfo: line 1 \"MemTotal: 100 MB\": expected \"Key: <number> kB\""
        );
        let err = parse_meminfo("MemTotal: 100 kB\nMemFree: 50 kB\n").expect_err("old kernel");
        assert_eq!(err.to_string(), "/proc/meminfo: no \"MemAvailable\" line");
    }

    #[test]
    fn reads_this_host() {
        let node = read_node().expect("read /proc");
        assert!(node.stat.cpus >= 1);
        assert!(node.stat.cpu.total_ticks >= node.stat.cpu.busy_ticks);
        assert!(node.memory.total_bytes >= node.memory.available_bytes);
        assert!(node.memory.total_bytes > 0);
    }
}
