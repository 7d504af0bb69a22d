//! A container's cgroup: where it is, and its raw CPU and memory counters.
//!
//! The directory is found from the container's main process rather than from its id, so
//! that both of Docker's cgroup drivers (systemd: `system.slice/docker-<id>.scope`,
//! cgroupfs: `/docker/<id>`) and Podman's layouts need no special case: `/proc/<pid>/cgroup`
//! gives the process's cgroup in each hierarchy, and `/proc/self/mountinfo` where each
//! hierarchy is mounted (not always /sys/fs/cgroup).
//!
//! - cgroup v2 (unified): `cpu.stat` `usage_usec`, `memory.current`, `memory.stat`
//!   `inactive_file`, `memory.events` `oom_kill`, `memory.max` (`max`: no limit).
//! - cgroup v1: `cpuacct.usage` (nanoseconds), `memory.usage_in_bytes`, `memory.stat`
//!   `total_inactive_file`, `memory.oom_control` `oom_kill`, `memory.limit_in_bytes`.
//!
//! A hybrid host (v1 controllers plus a unified hierarchy without controllers, as systemd
//! mounts at /sys/fs/cgroup/unified) is read through v1, where the memory controller is.

use std::path::{Component, Path, PathBuf};

use super::{ParseError, UsageError, keyed_value, read_parsed, required_value};

/// Which cgroup layout a hierarchy, or a container's counters, use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller (or group of controllers).
    V1,
    /// The unified hierarchy.
    V2,
}

/// A cgroup hierarchy mounted in this mount namespace (a line of /proc/self/mountinfo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// The cgroup shown at the mount point: "/" unless a sub-tree is mounted (bind mounts,
    /// cgroup namespaces); a process's cgroup path is relative to the hierarchy's root.
    pub root: String,
    /// Where the hierarchy is mounted.
    pub mount_point: PathBuf,
    /// `cgroup` (v1) or `cgroup2` (v2).
    pub version: CgroupVersion,
    /// The superblock options; for v1 they name the hierarchy's controllers (`rw,cpu,cpuacct`).
    pub options: Vec<String>,
}

impl CgroupMount {
    /// True when this is a v1 hierarchy holding `controller` (e.g. `memory`).
    pub fn has_v1_controller(&self, controller: &str) -> bool {
        self.version == CgroupVersion::V1 && self.options.iter().any(|o| o == controller)
    }

    /// The directory of the cgroup at `path` (as in /proc/<pid>/cgroup) under this mount,
    /// or `None` when that cgroup is not visible through it.
    fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let relative = if self.root == "/" {
            path
        } else {
            let rest = path.strip_prefix(self.root.as_str())?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            rest
        };
        let relative = Path::new(relative.trim_start_matches('/'));
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return None;
        }
        Some(self.mount_point.join(relative))
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for a backslash, …).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some((&first, tail)) = rest.split_first() {
        let escaped = match tail {
            [a, b, c, ..]
                if first == b'\\' && [a, b, c].iter().all(|d| (b'0'..=b'7').contains(*d)) =>
            {
                u8::try_from(
                    u32::from(a - b'0') * 64 + u32::from(b - b'0') * 8 + u32::from(c - b'0'),
                )
                .ok()
            }
            _ => None,
        };
        match escaped {
            Some(byte) => {
                out.push(byte);
                rest = &tail[3..];
            }
            None => {
                out.push(first);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup mounts in the contents of /proc/self/mountinfo; other mounts are skipped.
pub fn parse_mountinfo(text: &str) -> Result<Vec<CgroupMount>, ParseError> {
    const FILE: &str = "/proc/self/mountinfo";
    let mut mounts = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(' ').collect();
        // id parent major:minor root mount-point options [optional…] - fstype source super
        let separator = fields
            .iter()
            .skip(6)
            .position(|f| *f == "-")
            .map(|p| p + 6)
            .filter(|&p| fields.len() >= p + 4);
        let Some(separator) = separator else {
            return Err(ParseError::bad_line(
                FILE,
                index + 1,
                line,
                "expected \"id parent dev root mount-point options … - fstype source options\"",
            ));
        };
        let version = match fields[separator + 1] {
            "cgroup" => CgroupVersion::V1,
            "cgroup2" => CgroupVersion::V2,
            _ => continue,
        };
        mounts.push(CgroupMount {
            root: unescape_mountinfo(fields[3]),
            mount_point: PathBuf::from(unescape_mountinfo(fields[4])),
            version,
            options: fields[separator + 3]
                .split(',')
                .map(str::to_owned)
                .collect(),
        });
    }
    Ok(mounts)
}

/// A process's cgroup in one hierarchy (a line of /proc/<pid>/cgroup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroup {
    /// The hierarchy's id; 0 is the unified (v2) hierarchy.
    pub hierarchy_id: u32,
    /// The v1 controllers of the hierarchy (`cpu`, `cpuacct`, `name=systemd`); empty for v2.
    pub controllers: Vec<String>,
    /// The cgroup, from the hierarchy's root (`/docker/<id>`).
    pub path: String,
}

/// The lines of /proc/<pid>/cgroup: `0::/path` (v2) and `N:controller,…:/path` (v1).
pub fn parse_proc_cgroup(text: &str) -> Result<Vec<ProcCgroup>, ParseError> {
    const FILE: &str = "/proc/<pid>/cgroup";
    let mut cgroups = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // The path may itself hold colons, so only the first two separate fields.
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(ParseError::bad_line(
                FILE,
                index + 1,
                line,
                "expected \"hierarchy-id:controllers:path\"",
            ));
        };
        let Ok(hierarchy_id) = id.parse() else {
            return Err(ParseError::bad_line(
                FILE,
                index + 1,
                line,
                "expected a numeric hierarchy id",
            ));
        };
        if !path.starts_with('/') {
            return Err(ParseError::bad_line(
                FILE,
                index + 1,
                line,
                "expected an absolute cgroup path",
            ));
        }
        cgroups.push(ProcCgroup {
            hierarchy_id,
            controllers: controllers
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect(),
            path: path.to_owned(),
        });
    }
    Ok(cgroups)
}

/// Why a process's cgroup directory could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocateError {
    /// The process is in no hierarchy this reading can use.
    #[error("/proc/<pid>/cgroup has neither v1 memory and cpuacct lines nor a v2 \"0::\" line")]
    NoHierarchy,
    /// The process is in one of the two v1 hierarchies read but not in the other.
    #[error("/proc/<pid>/cgroup has a v1 line for memory or cpuacct, but none for {0}")]
    MissingController(&'static str),
    /// The process is in the hierarchy but it is not mounted here.
    #[error("the {0} hierarchy is not mounted (no such line in /proc/self/mountinfo)")]
    NotMounted(&'static str),
    /// The hierarchy is mounted, but not the part holding the process's cgroup.
    #[error("its {hierarchy} cgroup {path:?} is outside every mount of that hierarchy")]
    OutsideMounts {
        /// Which hierarchy.
        hierarchy: &'static str,
        /// The process's cgroup in it.
        path: String,
    },
}

/// Where one container's counters are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupPaths {
    /// The container's directory in the unified hierarchy.
    V2 {
        /// E.g. /sys/fs/cgroup/system.slice/docker-<id>.scope.
        dir: PathBuf,
    },
    /// The container's directories in the two v1 hierarchies read.
    V1 {
        /// E.g. /sys/fs/cgroup/cpu,cpuacct/docker/<id>.
        cpuacct: PathBuf,
        /// E.g. /sys/fs/cgroup/memory/docker/<id>.
        memory: PathBuf,
    },
}

/// The directory of a process's cgroup, from its /proc/<pid>/cgroup lines and the host's
/// cgroup mounts: v1 when its memory and cpuacct controllers are v1 ones, else v2.
pub fn resolve(cgroups: &[ProcCgroup], mounts: &[CgroupMount]) -> Result<CgroupPaths, LocateError> {
    let v1_line = |controller: &str| {
        cgroups
            .iter()
            .find(|c| c.hierarchy_id != 0 && c.controllers.iter().any(|n| n == controller))
    };
    let v1_dir =
        |controller: &'static str, line: Option<&ProcCgroup>| -> Result<PathBuf, LocateError> {
            let line = line.ok_or(LocateError::MissingController(controller))?;
            let mut candidates = mounts
                .iter()
                .filter(|m| m.has_v1_controller(controller))
                .peekable();
            if candidates.peek().is_none() {
                return Err(LocateError::NotMounted(controller));
            }
            candidates
                .find_map(|m| m.dir_of(&line.path))
                .ok_or_else(|| LocateError::OutsideMounts {
                    hierarchy: controller,
                    path: line.path.clone(),
                })
        };
    let (memory, cpuacct) = (v1_line("memory"), v1_line("cpuacct"));
    if memory.is_some() || cpuacct.is_some() {
        return Ok(CgroupPaths::V1 {
            cpuacct: v1_dir("cpuacct", cpuacct)?,
            memory: v1_dir("memory", memory)?,
        });
    }
    let unified = cgroups
        .iter()
        .find(|c| c.hierarchy_id == 0 && c.controllers.is_empty())
        .ok_or(LocateError::NoHierarchy)?;
    let mut candidates = mounts
        .iter()
        .filter(|m| m.version == CgroupVersion::V2)
        .peekable();
    if candidates.peek().is_none() {
        return Err(LocateError::NotMounted("cgroup2"));
    }
    let dir = candidates
        .find_map(|m| m.dir_of(&unified.path))
        .ok_or_else(|| LocateError::OutsideMounts {
            hierarchy: "cgroup2",
            path: unified.path.clone(),
        })?;
    Ok(CgroupPaths::V2 { dir })
}

/// The host's cgroup mounts, read once: they do not change while the agent runs, and
/// locating every container then costs one small read of its /proc/<pid>/cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMounts {
    mounts: Vec<CgroupMount>,
}

impl CgroupMounts {
    /// Reads /proc/self/mountinfo.
    pub fn read() -> Result<Self, UsageError> {
        read_parsed(Path::new("/proc/self/mountinfo"), Self::from_mountinfo)
    }

    /// The cgroup mounts in the contents of a mountinfo file.
    pub fn from_mountinfo(text: &str) -> Result<Self, ParseError> {
        Ok(CgroupMounts {
            mounts: parse_mountinfo(text)?,
        })
    }

    /// The mounts found, to log what the host has.
    pub fn mounts(&self) -> &[CgroupMount] {
        &self.mounts
    }

    /// Where the counters of the container whose main process is `pid` are.
    ///
    /// Resolve once per container start and keep the result: a PID can be reused after the
    /// container exits, while the directory simply disappears ([`UsageError::is_gone`]).
    pub fn locate(&self, pid: u32) -> Result<CgroupPaths, UsageError> {
        let cgroups = read_parsed(Path::new(&format!("/proc/{pid}/cgroup")), parse_proc_cgroup)?;
        resolve(&cgroups, &self.mounts).map_err(|source| UsageError::Locate { pid, source })
    }
}

/// One reading of a container's counters, taken at once; [`crate::usage::sampler`] turns two
/// of them into usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawReading {
    /// CPU time used since the cgroup was created, in microseconds.
    pub cpu_usage_usec: u64,
    /// Memory charged to the cgroup, page cache included (`memory.current`,
    /// `memory.usage_in_bytes`).
    pub memory_usage_bytes: u64,
    /// The part of it that is inactive file cache, which the kernel reclaims first.
    pub memory_inactive_file_bytes: u64,
    /// The memory limit; `None` without one.
    pub memory_limit_bytes: Option<u64>,
    /// Processes the OOM killer ended in the cgroup since it was created.
    pub oom_kills: u64,
}

impl RawReading {
    /// Usage minus inactive file cache (floor 0), as cAdvisor and the kubelet compute it:
    /// what the container cannot give back under pressure, the number to scale on.
    pub fn working_set_bytes(&self) -> u64 {
        self.memory_usage_bytes
            .saturating_sub(self.memory_inactive_file_bytes)
    }
}

impl CgroupPaths {
    /// Which layout the counters are read from.
    pub fn version(&self) -> CgroupVersion {
        match self {
            CgroupPaths::V2 { .. } => CgroupVersion::V2,
            CgroupPaths::V1 { .. } => CgroupVersion::V1,
        }
    }

    /// Reads the container's counters now.
    pub fn read(&self) -> Result<RawReading, UsageError> {
        match self {
            CgroupPaths::V2 { dir } => Ok(RawReading {
                cpu_usage_usec: read_parsed(&dir.join("cpu.stat"), parse_cpu_stat)?,
                memory_usage_bytes: read_parsed(&dir.join("memory.current"), parse_memory_current)?,
                memory_inactive_file_bytes: read_parsed(
                    &dir.join("memory.stat"),
                    parse_memory_stat_v2,
                )?,
                memory_limit_bytes: read_parsed(&dir.join("memory.max"), parse_memory_max)?,
                oom_kills: read_parsed(&dir.join("memory.events"), parse_memory_events)?,
            }),
            CgroupPaths::V1 { cpuacct, memory } => Ok(RawReading {
                cpu_usage_usec: read_parsed(&cpuacct.join("cpuacct.usage"), parse_cpuacct_usage)?,
                memory_usage_bytes: read_parsed(
                    &memory.join("memory.usage_in_bytes"),
                    parse_usage_in_bytes,
                )?,
                memory_inactive_file_bytes: read_parsed(
                    &memory.join("memory.stat"),
                    parse_memory_stat_v1,
                )?,
                memory_limit_bytes: read_parsed(
                    &memory.join("memory.limit_in_bytes"),
                    parse_limit_in_bytes,
                )?,
                oom_kills: read_parsed(&memory.join("memory.oom_control"), parse_oom_control)?,
            }),
        }
    }
}

/// Reads the counters of the container whose main process is `pid`, locating its cgroup
/// first: for a one-off reading; a loop keeps [`CgroupMounts`] and [`CgroupPaths`] instead.
pub fn read_pid(pid: u32) -> Result<RawReading, UsageError> {
    CgroupMounts::read()?.locate(pid)?.read()
}

/// v2 `cpu.stat`: `usage_usec`, the CPU time used, in microseconds.
pub fn parse_cpu_stat(text: &str) -> Result<u64, ParseError> {
    required_value("cpu.stat", text, "usage_usec")
}

/// v2 `memory.current`: memory charged, in bytes.
pub fn parse_memory_current(text: &str) -> Result<u64, ParseError> {
    required_single("memory.current", text)
}

/// v2 `memory.stat`: `inactive_file`, in bytes.
pub fn parse_memory_stat_v2(text: &str) -> Result<u64, ParseError> {
    required_value("memory.stat", text, "inactive_file")
}

/// v2 `memory.events`: `oom_kill`; 0 when the kernel has no such line (before 4.13).
pub fn parse_memory_events(text: &str) -> Result<u64, ParseError> {
    Ok(keyed_value("memory.events", text, "oom_kill")?.unwrap_or(0))
}

/// v2 `memory.max`: the limit in bytes, `None` for `max`.
pub fn parse_memory_max(text: &str) -> Result<Option<u64>, ParseError> {
    super::single_value("memory.max", text, Some("max"))
}

/// v1 `cpuacct.usage`: CPU time in nanoseconds, returned in microseconds like v2's.
pub fn parse_cpuacct_usage(text: &str) -> Result<u64, ParseError> {
    Ok(required_single("cpuacct.usage", text)? / 1000)
}

/// v1 `memory.usage_in_bytes`: memory charged, in bytes.
pub fn parse_usage_in_bytes(text: &str) -> Result<u64, ParseError> {
    required_single("memory.usage_in_bytes", text)
}

/// v1 `memory.stat`: `total_inactive_file` (the cgroup and its children, like
/// `memory.usage_in_bytes`), in bytes.
pub fn parse_memory_stat_v1(text: &str) -> Result<u64, ParseError> {
    required_value("memory.stat", text, "total_inactive_file")
}

/// v1 `memory.oom_control`: `oom_kill`; 0 when the kernel has no such line (before 4.13).
pub fn parse_oom_control(text: &str) -> Result<u64, ParseError> {
    Ok(keyed_value("memory.oom_control", text, "oom_kill")?.unwrap_or(0))
}

/// The smallest v1 `memory.limit_in_bytes` meaning "no limit": v1 writes the largest
/// page-aligned i64 (9223372036854771712 with 4 KiB pages); 64 KiB pages give the lowest.
const V1_UNLIMITED: u64 = (i64::MAX as u64) & !0xFFFF;

/// v1 `memory.limit_in_bytes`: the limit in bytes, `None` for v1's "unlimited" value.
pub fn parse_limit_in_bytes(text: &str) -> Result<Option<u64>, ParseError> {
    let limit = required_single("memory.limit_in_bytes", text)?;
    Ok((limit < V1_UNLIMITED).then_some(limit))
}

fn required_single(file: &str, text: &str) -> Result<u64, ParseError> {
    super::single_value(file, text, None)?
        .ok_or_else(|| ParseError::bad_line(file, 1, text, "expected a non-negative integer"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::ParseProblem;

    /// A cgroup v2 host (Debian 12, Docker's systemd driver), trimmed.
    const MOUNTINFO_V2: &str = "\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
23 28 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
28 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    /// A hybrid host like the one these tests were written on: v1 controllers, cpu and
    /// cpuacct in separate hierarchies, and an empty unified hierarchy.
    const MOUNTINFO_HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A classic v1 host (Ubuntu 20.04): cpu and cpuacct co-mounted.
    const MOUNTINFO_V1: &str = "\
25 24 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
29 25 0:26 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
33 25 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
36 25 0:33 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,memory
";

    const PROC_CGROUP_V2_SYSTEMD: &str = "0::/system.slice/docker-4f1c.scope\n";

    const PROC_CGROUP_V1_CGROUPFS: &str = "\
12:pids:/docker/9a15
5:memory:/docker/9a15
3:cpu,cpuacct:/docker/9a15
1:name=systemd:/docker/9a15
0::/docker/9a15
";

    fn mounts(text: &str) -> Vec<CgroupMount> {
        parse_mountinfo(text).expect("fixture mountinfo")
    }

    #[test]
    fn mountinfo_keeps_only_cgroup_mounts() {
        let v2 = mounts(MOUNTINFO_V2);
        assert_eq!(
            v2,
            vec![CgroupMount {
                root: "/".into(),
                mount_point: "/sys/fs/cgroup".into(),
                version: CgroupVersion::V2,
                options: vec![
                    "rw".into(),
                    "nsdelegate".into(),
                    "memory_recursiveprot".into()
                ],
            }]
        );
        let v1 = mounts(MOUNTINFO_V1);
        assert_eq!(v1.len(), 3);
        assert!(v1[1].has_v1_controller("cpuacct"));
        assert!(v1[1].has_v1_controller("cpu"));
        assert!(!v1[1].has_v1_controller("memory"));
        assert_eq!(v1[1].mount_point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
    }

    #[test]
    fn mountinfo_without_optional_fields_and_with_escapes() {
        let text = "40 31 0:37 /sub\\040dir /mnt/my\\040cgroups rw - cgroup2 none rw\n";
        let parsed = mounts(text);
        assert_eq!(parsed[0].root, "/sub dir");
        assert_eq!(parsed[0].mount_point, Path::new("/mnt/my cgroups"));
    }

    #[test]
    fn mountinfo_names_the_bad_line() {
        let err = parse_mountinfo("30 22 0:26 / /sys/fs/cgroup rw cgroup2\n").expect_err("no -");
        assert_eq!(err.file, "/proc/self/mountinfo");
        assert!(
            matches!(err.problem, ParseProblem::BadLine { number: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn proc_cgroup_lines_of_both_versions() {
        let parsed = parse_proc_cgroup(PROC_CGROUP_V1_CGROUPFS).expect("fixture");
        assert_eq!(parsed.len(), 5);
        assert_eq!(parsed[2].hierarchy_id, 3);
        assert_eq!(parsed[2].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(parsed[2].path, "/docker/9a15");
        assert_eq!(
            parse_proc_cgroup(PROC_CGROUP_V2_SYSTEMD).expect("fixture"),
            vec![ProcCgroup {
                hierarchy_id: 0,
                controllers: vec![],
                path: "/system.slice/docker-4f1c.scope".into(),
            }]
        );
        // A colon in the path belongs to the path.
        let parsed = parse_proc_cgroup("0::/a:b\n").expect("colon");
        assert_eq!(parsed[0].path, "/a:b");
    }

    #[test]
    fn proc_cgroup_names_the_bad_line() {
        let err = parse_proc_cgroup("0::/\nx:memory:/docker\n").expect_err("bad id");
        assert_eq!(
            err.to_string(),
            "/proc/<pid>/cgroup: line 2 \"x:memory:/docker\": expected a numeric hierarchy id"
        );
        assert!(parse_proc_cgroup("0:/docker\n").is_err());
        assert!(parse_proc_cgroup("0::docker\n").is_err());
    }

    #[test]
    fn resolves_v2_with_the_systemd_driver() {
        let cgroups = parse_proc_cgroup(PROC_CGROUP_V2_SYSTEMD).expect("fixture");
        assert_eq!(
            resolve(&cgroups, &mounts(MOUNTINFO_V2)),
            Ok(CgroupPaths::V2 {
                dir: "/sys/fs/cgroup/system.slice/docker-4f1c.scope".into()
            })
        );
    }

    #[test]
    fn resolves_v1_with_the_cgroupfs_driver() {
        let cgroups = parse_proc_cgroup(PROC_CGROUP_V1_CGROUPFS).expect("fixture");
        assert_eq!(
            resolve(&cgroups, &mounts(MOUNTINFO_V1)),
            Ok(CgroupPaths::V1 {
                cpuacct: "/sys/fs/cgroup/cpu,cpuacct/docker/9a15".into(),
                memory: "/sys/fs/cgroup/memory/docker/9a15".into(),
            })
        );
    }

    #[test]
    fn a_hybrid_host_reads_v1_where_the_memory_controller_is() {
        let text =
            "4:memory:/docker/9a15\n2:cpuacct:/docker/9a15\n1:cpu:/docker/9a15\n0::/docker/9a15\n";
        let cgroups = parse_proc_cgroup(text).expect("fixture");
        let paths = resolve(&cgroups, &mounts(MOUNTINFO_HYBRID)).expect("resolves");
        assert_eq!(paths.version(), CgroupVersion::V1);
        assert_eq!(
            paths,
            CgroupPaths::V1 {
                cpuacct: "/sys/fs/cgroup/cpuacct/docker/9a15".into(),
                memory: "/sys/fs/cgroup/memory/docker/9a15".into(),
            }
        );
    }

    #[test]
    fn a_mount_of_a_sub_tree_strips_its_root() {
        let mounts = mounts("50 1 0:26 /docker /host/cgroup rw - cgroup2 cgroup2 rw\n");
        let inside = parse_proc_cgroup("0::/docker/abc\n").expect("fixture");
        assert_eq!(
            resolve(&inside, &mounts),
            Ok(CgroupPaths::V2 {
                dir: "/host/cgroup/abc".into()
            })
        );
        for outside in [
            "0::/dockerx/abc\n",
            "0::/system.slice\n",
            "0::/docker/../etc\n",
        ] {
            let cgroups = parse_proc_cgroup(outside).expect("fixture");
            assert!(
                matches!(
                    resolve(&cgroups, &mounts),
                    Err(LocateError::OutsideMounts {
                        hierarchy: "cgroup2",
                        ..
                    })
                ),
                "{outside}"
            );
        }
    }

    #[test]
    fn missing_hierarchies_are_named() {
        let v2_only = parse_proc_cgroup(PROC_CGROUP_V2_SYSTEMD).expect("fixture");
        assert_eq!(
            resolve(&v2_only, &mounts(MOUNTINFO_V1)),
            Err(LocateError::NotMounted("cgroup2"))
        );
        let v1 = parse_proc_cgroup(PROC_CGROUP_V1_CGROUPFS).expect("fixture");
        assert_eq!(
            resolve(&v1, &mounts(MOUNTINFO_V2)),
            Err(LocateError::NotMounted("cpuacct"))
        );
        let memory_only = parse_proc_cgroup("5:memory:/docker/9a15\n").expect("fixture");
        assert_eq!(
            resolve(&memory_only, &mounts(MOUNTINFO_V1)),
            Err(LocateError::MissingController("cpuacct"))
        );
        let systemd_only = parse_proc_cgroup("1:name=systemd:/\n").expect("fixture");
        assert_eq!(
            resolve(&systemd_only, &mounts(MOUNTINFO_V1)),
            Err(LocateError::NoHierarchy)
        );
    }

    const CPU_STAT_V2: &str = "\
usage_usec 8812345
user_usec 8000000
system_usec 812345
core_sched.force_idle_usec 0
nr_periods 0
nr_throttled 0
throttled_usec 0
nr_bursts 0
burst_usec 0
";

    const MEMORY_STAT_V2: &str = "\
anon 50176000
file 1732608
kernel 421888
inactive_anon 50171904
active_anon 4096
inactive_file 319488
active_file 1413120
unevictable 0
";

    const MEMORY_EVENTS_V2: &str = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n";

    #[test]
    fn v2_files() {
        assert_eq!(parse_cpu_stat(CPU_STAT_V2), Ok(8_812_345));
        assert_eq!(parse_memory_current("52621312\n"), Ok(52_621_312));
        assert_eq!(parse_memory_stat_v2(MEMORY_STAT_V2), Ok(319_488));
        assert_eq!(parse_memory_events(MEMORY_EVENTS_V2), Ok(2));
        assert_eq!(parse_memory_events("low 0\nhigh 0\nmax 0\noom 0\n"), Ok(0));
        assert_eq!(parse_memory_max("max\n"), Ok(None));
        assert_eq!(parse_memory_max("268435456\n"), Ok(Some(268_435_456)));
    }

    #[test]
    fn v2_errors_name_the_file_and_line() {
        assert_eq!(
            parse_cpu_stat("user_usec 1\n")
                .expect_err("no usage")
                .to_string(),
            "cpu.stat: no \"usage_usec\" line"
        );
        assert_eq!(
            parse_memory_max("unlimited\n")
                .expect_err("bad word")
                .to_string(),
            "memory.max: line 1 \"unlimited\": expected a non-negative integer"
        );
        assert_eq!(
            parse_memory_events("oom_kill many\n")
                .expect_err("bad value")
                .to_string(),
            "memory.events: line 1 \"oom_kill many\": expected a non-negative integer"
        );
    }

    /// From a container of the hybrid host, trimmed.
    const MEMORY_STAT_V1: &str = "\
cache 1732608
rss 50208768
inactive_file 274432
active_file 1413120
hierarchical_memory_limit 9223372036854771712
total_cache 1732608
total_rss 50208768
total_inactive_file 274432
total_active_file 1413120
";

    const OOM_CONTROL_V1: &str = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";

    #[test]
    fn v1_files() {
        assert_eq!(parse_cpuacct_usage("302454943\n"), Ok(302_454));
        assert_eq!(parse_usage_in_bytes("52621312\n"), Ok(52_621_312));
        assert_eq!(parse_memory_stat_v1(MEMORY_STAT_V1), Ok(274_432));
        assert_eq!(parse_oom_control(OOM_CONTROL_V1), Ok(3));
        assert_eq!(
            parse_oom_control("oom_kill_disable 0\nunder_oom 0\n"),
            Ok(0)
        );
        assert_eq!(parse_limit_in_bytes("9223372036854771712\n"), Ok(None));
        // arm64 with 64 KiB pages.
        assert_eq!(parse_limit_in_bytes("9223372036854710272\n"), Ok(None));
        assert_eq!(parse_limit_in_bytes("268435456\n"), Ok(Some(268_435_456)));
    }

    #[test]
    fn v1_errors_name_the_file_and_line() {
        // v2's inactive_file alone is not v1's hierarchical total.
        assert_eq!(
            parse_memory_stat_v1(MEMORY_STAT_V2)
                .expect_err("v2 file")
                .to_string(),
            "memory.stat: no \"total_inactive_file\" line"
        );
        assert_eq!(
            parse_cpuacct_usage("-1\n")
                .expect_err("negative")
                .to_string(),
            "cpuacct.usage: line 1 \"-1\": expected a non-negative integer"
        );
        assert!(parse_limit_in_bytes("max\n").is_err());
    }

    #[test]
    fn working_set_is_usage_minus_inactive_file_floor_zero() {
        let mut reading = RawReading {
            cpu_usage_usec: 0,
            memory_usage_bytes: 52_621_312,
            memory_inactive_file_bytes: 274_432,
            memory_limit_bytes: None,
            oom_kills: 0,
        };
        assert_eq!(reading.working_set_bytes(), 52_346_880);
        reading.memory_inactive_file_bytes = reading.memory_usage_bytes + 1;
        assert_eq!(reading.working_set_bytes(), 0);
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("write fixture");
    }

    #[test]
    fn reads_a_v2_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "cpu.stat", CPU_STAT_V2);
        write(dir.path(), "memory.current", "52621312\n");
        write(dir.path(), "memory.stat", MEMORY_STAT_V2);
        write(dir.path(), "memory.events", MEMORY_EVENTS_V2);
        write(dir.path(), "memory.max", "max\n");
        let paths = CgroupPaths::V2 {
            dir: dir.path().to_owned(),
        };
        assert_eq!(
            paths.read().expect("read"),
            RawReading {
                cpu_usage_usec: 8_812_345,
                memory_usage_bytes: 52_621_312,
                memory_inactive_file_bytes: 319_488,
                memory_limit_bytes: None,
                oom_kills: 2,
            }
        );

        // An error names the full path of the bad file.
        write(dir.path(), "memory.max", "lots\n");
        let err = paths.read().expect_err("bad memory.max");
        let expected = format!("{}: line 1", dir.path().join("memory.max").display());
        assert!(err.to_string().starts_with(&expected), "{err}");
        assert!(!err.is_gone());

        // A removed cgroup is "gone", not broken.
        std::fs::remove_file(dir.path().join("cpu.stat")).expect("remove");
        assert!(paths.read().expect_err("no cpu.stat").is_gone());
    }

    #[test]
    fn reads_v1_directories() {
        let cpuacct = tempfile::tempdir().expect("tempdir");
        let memory = tempfile::tempdir().expect("tempdir");
        write(cpuacct.path(), "cpuacct.usage", "302454943\n");
        write(memory.path(), "memory.usage_in_bytes", "52621312\n");
        write(memory.path(), "memory.stat", MEMORY_STAT_V1);
        write(memory.path(), "memory.limit_in_bytes", "268435456\n");
        write(memory.path(), "memory.oom_control", OOM_CONTROL_V1);
        let paths = CgroupPaths::V1 {
            cpuacct: cpuacct.path().to_owned(),
            memory: memory.path().to_owned(),
        };
        assert_eq!(paths.version(), CgroupVersion::V1);
        assert_eq!(
            paths.read().expect("read"),
            RawReading {
                cpu_usage_usec: 302_454,
                memory_usage_bytes: 52_621_312,
                memory_inactive_file_bytes: 274_432,
                memory_limit_bytes: Some(268_435_456),
                oom_kills: 3,
            }
        );
    }

    #[test]
    fn locates_and_reads_this_process() {
        // Whatever this host has, the test process itself is in some cgroup.
        let mounts = CgroupMounts::read().expect("mountinfo");
        if mounts.mounts().is_empty() {
            eprintln!("skipping: no cgroup mounts in /proc/self/mountinfo");
            return;
        }
        let paths = mounts.locate(std::process::id()).expect("locate self");
        match paths.read() {
            Ok(reading) => assert!(reading.memory_usage_bytes > 0, "{reading:?}"),
            // The root cgroup has no memory.current nor memory.max; a container does.
            Err(err) if err.is_gone() => eprintln!("own cgroup not readable: {err}"),
            Err(err) => panic!("{err}"),
        }
    }
}
