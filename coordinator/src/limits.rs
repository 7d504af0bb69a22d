//! Bounds on what one request may ask for, so unbounded input cannot make unbounded work
//! (a service of 100,000,000 replicas once grew the coordinator to 5.9 GB). The defaults are
//! far above what a real fleet uses; each refusal names the limit and the config key that
//! raises it.

use drover_proto::model::WorkloadSpec;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Largest `NAME=value` the kernel passes to a program (`MAX_ARG_STRLEN`): a bigger
/// environment variable cannot reach the container whatever the limits say.
pub const MAX_ENV_ENTRY_BYTES: usize = 128 * 1024;

/// Limits the coordinator enforces on every request (the `[limits]` table of its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Most replicas one service may ask for.
    pub replicas_per_service: u32,
    /// Most services in the cluster.
    pub services: u32,
    /// Most replicas of all services together.
    pub allocations: u32,
    /// Most bytes of one service's environment (names and values) and its command and
    /// arguments together. Linux passes at most 2 MiB of them to a program (a quarter of
    /// the default 8 MiB stack); a container given more exits at once.
    pub env_bytes: u32,
    /// Most entries of one service's command and arguments together.
    pub args: u32,
    /// Longest image reference, in bytes.
    pub image_length: u32,
    /// Largest gRPC request the coordinator reads, in bytes (an apply carries every
    /// manifest of the call).
    pub request_bytes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            replicas_per_service: 10_000,
            services: 20_000,
            allocations: 100_000,
            env_bytes: 1024 * 1024,
            args: 4_096,
            image_length: 1_024,
            request_bytes: 16 * 1024 * 1024,
        }
    }
}

/// A limit reached, named as the config spells it.
fn over(what: String, value: usize, limit: u32, key: &str) -> String {
    format!(
        "{what} {value} is over the limit of {limit} (raise limits.{key} in the coordinator's config)"
    )
}

impl Limits {
    /// Problems with one spec, each naming the limit it breaks.
    pub fn check_spec(&self, spec: &WorkloadSpec) -> Vec<String> {
        let mut problems = Vec::new();
        problems.extend(self.check_replicas(spec.replicas));
        if spec.image.len() > self.image_length as usize {
            problems.push(over(
                "the image reference's length".into(),
                spec.image.len(),
                self.image_length,
                "image_length",
            ));
        }
        let args = spec.command.len() + spec.args.len();
        if args > self.args as usize {
            problems.push(over(
                "command and args count".into(),
                args,
                self.args,
                "args",
            ));
        }
        let entries = || {
            let plain = spec.env.iter().map(|(k, v)| (k, v.len()));
            plain.chain(spec.secret_env.iter().map(|(k, v)| (k, v.len())))
        };
        let env: usize = entries().map(|(k, v)| k.len() + v + 1).sum::<usize>()
            + spec
                .command
                .iter()
                .chain(&spec.args)
                .map(|a| a.len() + 1)
                .sum::<usize>();
        if env > self.env_bytes as usize {
            problems.push(over(
                "the size in bytes of the environment, command and args".into(),
                env,
                self.env_bytes,
                "env_bytes",
            ));
        }
        for (name, value) in entries() {
            let entry = name.len() + value + 1;
            if entry > MAX_ENV_ENTRY_BYTES {
                problems.push(format!(
                    "env {name} is {entry} bytes; Linux passes at most {MAX_ENV_ENTRY_BYTES} bytes per variable to a program, so the container could not start"
                ));
            }
        }
        problems
    }

    /// The problem with one service asking for `replicas`, if it is over the limit.
    pub fn check_replicas(&self, replicas: u32) -> Option<String> {
        (replicas > self.replicas_per_service).then(|| {
            over(
                "replicas".into(),
                replicas as usize,
                self.replicas_per_service,
                "replicas_per_service",
            )
        })
    }

    /// The problem with a cluster of `services` services whose replicas add up to
    /// `replicas`, if it is over a limit.
    pub fn check_totals(&self, services: usize, replicas: u64) -> Option<String> {
        if services > self.services as usize {
            return Some(over(
                "the number of services".into(),
                services,
                self.services,
                "services",
            ));
        }
        if replicas > u64::from(self.allocations) {
            return Some(over(
                "the replicas of all services together".into(),
                usize::try_from(replicas).unwrap_or(usize::MAX),
                self.allocations,
                "allocations",
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_over_its_limits_gets_one_problem_per_limit_naming_the_key() {
        let limits = Limits {
            replicas_per_service: 10,
            args: 2,
            env_bytes: 10,
            image_length: 8,
            ..Limits::default()
        };
        let mut spec = WorkloadSpec::new("web", "registry.example/web:1");
        spec.replicas = 100_000_000;
        spec.command = vec!["a".into(), "b".into()];
        spec.args = vec!["c".into()];
        spec.env.insert("KEY".into(), "a long value".into());
        let problems = limits.check_spec(&spec);
        assert_eq!(problems.len(), 4, "{problems:#?}");
        for (problem, key) in
            problems
                .iter()
                .zip(["replicas_per_service", "image_length", "args", "env_bytes"])
        {
            assert!(
                problem.contains(&format!("limits.{key}")),
                "{problem} names {key}"
            );
        }
        assert!(problems[0].starts_with("replicas 100000000 is over the limit of 10"));

        spec.replicas = 3;
        spec.env
            .insert("BIG".into(), "x".repeat(MAX_ENV_ENTRY_BYTES));
        let problems = Limits::default().check_spec(&spec);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(
            problems[0].contains("env BIG is 131076 bytes"),
            "{problems:?}"
        );
    }

    #[test]
    fn totals() {
        let limits = Limits {
            services: 2,
            allocations: 10,
            ..Limits::default()
        };
        assert_eq!(limits.check_totals(2, 10), None);
        assert!(
            limits
                .check_totals(3, 1)
                .is_some_and(|p| p.contains("limits.services"))
        );
        assert!(
            limits
                .check_totals(1, 11)
                .is_some_and(|p| p.contains("limits.allocations"))
        );
    }
}
