//! What each container and the node actually use, read from the kernel's own counters.
//!
//! Autoscaling needs every container's CPU and memory every few seconds. The engine's stats
//! endpoint takes 1–2 s per container, so the agent reads the container's cgroup files
//! instead (a few small files, microseconds) and keeps the deltas itself:
//!
//! - [`cgroup`] finds a container's cgroup from its main process (cgroup v1 or v2, Docker's
//!   systemd or cgroupfs driver alike) and reads its raw counters ([`cgroup::RawReading`]);
//! - [`node`] reads the host's CPU times and memory from /proc;
//! - [`sampler`] turns two raw readings into a [`sampler::Usage`] (millicores, working set,
//!   OOM kills), starting a new series when a container restarts;
//! - [`reader`] is the supervisor's sampling round over its running containers: their main
//!   processes from the engine, then cgroups, sampler and node together ([`UsageReader`]),
//!   falling back to the engine's stats where this host's cgroups cannot be read.
//!
//! Reading and parsing are separate: every parser takes the file's contents, so the formats
//! are tested on fixtures of both cgroup versions. Reads are blocking but tiny (`/proc` and
//! `cgroupfs` never wait on a disk); a loop over many containers may still run them on a
//! blocking thread.

pub mod cgroup;
pub mod node;
pub mod reader;
pub mod sampler;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cgroup::{CgroupMounts, CgroupPaths, CgroupVersion, RawReading};
pub use node::NodeReading;
pub use reader::{ContainerUsage, UsageReader, UsageReport, UsageRound, UsageTarget};
pub use sampler::{NodeSampler, NodeUsage, Sampler, Usage};

/// Time between two samples unless configured otherwise: often enough for autoscaling to
/// react within a few samples, rare enough to cost nothing measurable.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// A cgroup or /proc file whose contents are not what the kernel writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct ParseError {
    /// The file: its name when parsed from a string, its full path once read from disk.
    pub file: String,
    /// What is wrong in it.
    pub problem: ParseProblem,
}

/// What is wrong in a file that failed to parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseProblem {
    /// A line does not have the expected form.
    #[error("line {number} {text:?}: {reason}")]
    BadLine {
        /// 1-based line number.
        number: usize,
        /// The line as it is in the file.
        text: String,
        /// What was expected instead.
        reason: &'static str,
    },
    /// A line the reading needs is not in the file.
    #[error("no {0:?} line")]
    MissingKey(&'static str),
}

impl ParseError {
    /// Names the file by the path it was read from, so that the error says which
    /// container's (or which host's) file was wrong.
    pub fn with_path(mut self, path: &Path) -> Self {
        self.file = path.display().to_string();
        self
    }

    fn bad_line(file: &str, number: usize, text: &str, reason: &'static str) -> Self {
        ParseError {
            file: file.to_owned(),
            problem: ParseProblem::BadLine {
                number,
                text: text.to_owned(),
                reason,
            },
        }
    }

    fn missing(file: &str, key: &'static str) -> Self {
        ParseError {
            file: file.to_owned(),
            problem: ParseProblem::MissingKey(key),
        }
    }
}

/// Why a reading could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// A file could not be read (the container may be gone: see [`UsageError::is_gone`]).
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the kernel answered.
        #[source]
        source: io::Error,
    },
    /// A file was read but its contents are not what the kernel writes.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The process's cgroup could not be found among this host's cgroup mounts.
    #[error("finding the cgroup of process {pid}: {source}")]
    Locate {
        /// The container's main process.
        pid: u32,
        /// What was missing.
        #[source]
        source: cgroup::LocateError,
    },
}

impl UsageError {
    /// True when the process or its cgroup no longer exists: the container stopped between
    /// listing and reading it, which is no fault to report, only a sample to skip.
    pub fn is_gone(&self) -> bool {
        match self {
            UsageError::Read { source, .. } => {
                source.kind() == io::ErrorKind::NotFound
                    || matches!(
                        source.raw_os_error(),
                        Some(code) if code == nix::errno::Errno::ESRCH as i32
                            || code == nix::errno::Errno::ENODEV as i32
                    )
            }
            _ => false,
        }
    }
}

/// Reads a whole file, naming it in the error.
fn read_file(path: &Path) -> Result<String, UsageError> {
    std::fs::read_to_string(path).map_err(|source| UsageError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads a file and parses it, naming the file's full path in any error.
fn read_parsed<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<T, UsageError> {
    let text = read_file(path)?;
    parse(&text).map_err(|err| UsageError::Parse(err.with_path(path)))
}

/// The value of `key` in a flat-keyed file (`key value` lines: cpu.stat, memory.stat,
/// memory.events, memory.oom_control); other lines are not looked at, so keys a newer
/// kernel adds do no harm.
fn keyed_value(file: &str, text: &str, key: &'static str) -> Result<Option<u64>, ParseError> {
    for (index, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        if fields.next() != Some(key) {
            continue;
        }
        let value = match (fields.next(), fields.next()) {
            (Some(value), None) => value,
            _ => {
                return Err(ParseError::bad_line(
                    file,
                    index + 1,
                    line,
                    "expected \"key value\"",
                ));
            }
        };
        return value.parse().map(Some).map_err(|_| {
            ParseError::bad_line(file, index + 1, line, "expected a non-negative integer")
        });
    }
    Ok(None)
}

/// Like [`keyed_value`], for a key the reading cannot do without.
fn required_value(file: &str, text: &str, key: &'static str) -> Result<u64, ParseError> {
    keyed_value(file, text, key)?.ok_or_else(|| ParseError::missing(file, key))
}

/// The one number of a single-value file (memory.current, cpuacct.usage, …); `unlimited`
/// is the word that stands for "no limit" in that file (v2's `max`), if any.
fn single_value(
    file: &str,
    text: &str,
    unlimited: Option<&str>,
) -> Result<Option<u64>, ParseError> {
    let mut lines = text.lines();
    let line = lines.next().unwrap_or("");
    if let Some((index, extra)) = lines.enumerate().find(|(_, l)| !l.trim().is_empty()) {
        return Err(ParseError::bad_line(
            file,
            index + 2,
            extra,
            "expected a single line",
        ));
    }
    let value = line.trim();
    if unlimited == Some(value) {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| ParseError::bad_line(file, 1, line, "expected a non-negative integer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_value_finds_the_key_and_ignores_other_lines() {
        let text = "usage_usec 12\nuser_usec 7\nfuture_key a b c\n";
        assert_eq!(keyed_value("cpu.stat", text, "usage_usec"), Ok(Some(12)));
        assert_eq!(keyed_value("cpu.stat", text, "system_usec"), Ok(None));
    }

    #[test]
    fn keyed_value_names_the_file_and_the_bad_line() {
        let err = keyed_value("cpu.stat", "user_usec 1\nusage_usec -5\n", "usage_usec")
            .expect_err("negative");
        assert_eq!(
            err.to_string(),
            "cpu.stat: line 2 \"usage_usec -5\": expected a non-negative integer"
        );
        let err = keyed_value("cpu.stat", "usage_usec 5 6\n", "usage_usec").expect_err("3 fields");
        assert!(matches!(
            err.problem,
            ParseProblem::BadLine { number: 1, .. }
        ));
    }

    #[test]
    fn required_value_says_which_key_is_missing() {
        let err = required_value("memory.stat", "anon 1\n", "inactive_file").expect_err("missing");
        assert_eq!(err.to_string(), "memory.stat: no \"inactive_file\" line");
    }

    #[test]
    fn single_value_parses_one_number_or_the_unlimited_word() {
        assert_eq!(
            single_value("memory.current", "4096\n", None),
            Ok(Some(4096))
        );
        assert_eq!(single_value("memory.max", "max\n", Some("max")), Ok(None));
        let err = single_value("memory.current", "", None).expect_err("empty");
        assert_eq!(
            err.to_string(),
            "memory.current: line 1 \"\": expected a non-negative integer"
        );
        let err = single_value("memory.current", "1\n2\n", None).expect_err("two lines");
        assert_eq!(
            err.to_string(),
            "memory.current: line 2 \"2\": expected a single line"
        );
    }

    #[test]
    fn with_path_names_the_full_path() {
        let err = single_value("memory.current", "x", None)
            .expect_err("not a number")
            .with_path(Path::new("/sys/fs/cgroup/docker/abc/memory.current"));
        assert!(
            err.to_string()
                .starts_with("/sys/fs/cgroup/docker/abc/memory.current: line 1")
        );
    }

    #[test]
    fn a_missing_file_is_gone_and_a_parse_error_is_not() {
        let err = read_file(Path::new("/proc/does-not-exist/cgroup")).expect_err("no such file");
        assert!(err.is_gone(), "{err}");
        let err = UsageError::Parse(ParseError::missing("memory.stat", "inactive_file"));
        assert!(!err.is_gone());
    }
}
