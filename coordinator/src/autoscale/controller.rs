//! The autoscalers' decisions (pure): for every workload with [`Autoscale`], its replicas
//! and their last usage samples go through [`hpa::metric_replicas`] per metric and
//! [`hpa::decide`], and a new count becomes a write of the workload's replica count with an
//! event that says why (`scaled web 3 → 6: cpu 180% of target 60%`).

use std::collections::BTreeMap;

use drover_proto::model::{
    AllocState, Autoscale, DesiredState, ScalePolicy, ScaleResource, ScaleRules, ScaleSelect,
    ScaleTarget, format_bytes, format_cpu,
};

use super::hpa::{self, History, Metric, Phase, Readiness, Replica, Sample, Target};
use crate::changes::ChangeSet;
use crate::events;
use crate::state::ClusterState;
use crate::store::Write;

/// What the autoscalers remember between decisions (in memory, as Kubernetes' controller:
/// a restarted coordinator starts its windows afresh).
#[derive(Debug, Default)]
pub struct Autoscalers {
    histories: BTreeMap<String, History>,
    /// The vertical autoscalers, deciding on the same period.
    resizers: super::resize::Resizers,
    /// When the next decisions are due.
    pub next_ms: u64,
}

impl Autoscalers {
    /// Decides for every autoscaled workload, horizontally and vertically, if a period has
    /// passed since the last time; writes go to `changes`. Returns the vertical
    /// autoscalers' recommendations when it decided.
    pub fn run(
        &mut self,
        state: &ClusterState,
        now_ms: u64,
        changes: &mut ChangeSet,
    ) -> Option<BTreeMap<String, super::vpa::Recommendation>> {
        if now_ms < self.next_ms {
            return None;
        }
        self.next_ms = now_ms + state.settings.autoscale_interval_ms;
        let recommendations = self.resizers.run(state, now_ms, changes);
        self.histories
            .retain(|name, _| autoscale_of(state, name).is_some());
        for (name, record) in &state.stored.workloads {
            let Some(autoscale) = autoscale_of(state, name) else {
                continue;
            };
            let history = self.histories.entry(name.clone()).or_default();
            let (decision, measured) =
                decide(state, name, record.replicas, autoscale, history, now_ms);
            if decision.replicas == record.replicas {
                continue;
            }
            let mut updated = record.clone();
            updated.replicas = decision.replicas;
            updated.updated_unix_ms = now_ms;
            changes.push(Write::PutWorkload(updated));
            changes.event(
                events::AUTOSCALED,
                name,
                format!(
                    "scaled {name} {} → {}: {}",
                    record.replicas,
                    decision.replicas,
                    why(decision.reason, &measured, autoscale)
                ),
            );
        }
        Some(recommendations)
    }
}

/// The autoscaling of `name`'s current revision, if any.
pub fn autoscale_of<'a>(state: &'a ClusterState, name: &str) -> Option<&'a Autoscale> {
    state.stored.workloads.get(name)?.autoscale.as_ref()
}

/// One metric's measurement, for the event.
#[derive(Debug, Clone, PartialEq)]
struct Measured {
    resource: ScaleResource,
    target: ScaleTarget,
    /// Utilization percent, or the average in thousandths.
    current: Option<i64>,
}

fn decide(
    state: &ClusterState,
    name: &str,
    current: u32,
    autoscale: &Autoscale,
    history: &mut History,
    now_ms: u64,
) -> (hpa::Decision, Vec<Measured>) {
    let allocations: Vec<_> = state
        .allocations_of(name)
        .filter(|a| a.desired == DesiredState::Run)
        .collect();
    let replicas_for = |resource: ScaleResource| -> Vec<Replica> {
        allocations
            .iter()
            .map(|a| {
                let observed = state.alloc_state(&a.id);
                let phase = match observed {
                    AllocState::Pending | AllocState::Starting => Phase::Pending,
                    AllocState::Failed | AllocState::Lost => Phase::Failed,
                    AllocState::Stopped => Phase::Deleting,
                    _ => Phase::Running,
                };
                let ready_since = state.ready_since.get(&a.id).copied();
                let readiness = match ready_since {
                    Some(since) => Readiness { ready: true, since },
                    // Never ready as far as this coordinator saw: since it was placed.
                    None => Readiness {
                        ready: false,
                        since: a.created_unix_ms,
                    },
                };
                let request = match resource {
                    ScaleResource::Cpu => a.resources.cpu_millis,
                    ScaleResource::Memory => a.resources.memory_bytes.saturating_mul(1000),
                    // No request: these take average-value targets only.
                    ScaleResource::ConnectionsPerSecond | ScaleResource::ActiveConnections => 0,
                };
                Replica {
                    id: a.id.clone(),
                    phase,
                    started: Some(a.created_unix_ms),
                    readiness: Some(readiness),
                    request_milli: (request > 0)
                        .then(|| i64::try_from(request).unwrap_or(i64::MAX)),
                }
            })
            .collect()
    };
    let mut proposals = Vec::new();
    let mut measured = Vec::new();
    for metric in &autoscale.metrics {
        let replicas = replicas_for(metric.resource);
        let samples: BTreeMap<String, Sample> = allocations
            .iter()
            .filter_map(|a| {
                let (value, at, window) = match metric.resource {
                    ScaleResource::Cpu | ScaleResource::Memory => {
                        let observed = state.usage.latest(&a.id, now_ms)?;
                        let value = if metric.resource == ScaleResource::Cpu {
                            observed.usage.cpu_millis
                        } else {
                            observed.usage.memory_working_set_bytes.saturating_mul(1000)
                        };
                        (value, observed.at_ms, observed.usage.window_ms)
                    }
                    ScaleResource::ConnectionsPerSecond | ScaleResource::ActiveConnections => {
                        let load = state.usage.connections(&a.id, now_ms)?;
                        let value = if metric.resource == ScaleResource::ActiveConnections {
                            load.active.saturating_mul(1000)
                        } else {
                            load.per_second_milli
                        };
                        (value, load.at_ms, load.window_ms)
                    }
                };
                Some((
                    a.id.clone(),
                    Sample {
                        value_milli: i64::try_from(value).unwrap_or(i64::MAX),
                        at,
                        window,
                    },
                ))
            })
            .collect();
        let target = match (metric.target, metric.resource) {
            (ScaleTarget::Utilization(p), _) => Target::Utilization(p),
            (ScaleTarget::AverageValue(v), ScaleResource::Memory) => {
                Target::AverageValue(i64::try_from(v.saturating_mul(1000)).unwrap_or(i64::MAX))
            }
            // Millicores, and thousandths of a connection: already in thousandths.
            (ScaleTarget::AverageValue(v), _) => {
                Target::AverageValue(i64::try_from(v).unwrap_or(i64::MAX))
            }
        };
        let input = Metric {
            cpu: metric.resource == ScaleResource::Cpu,
            target,
            samples: &samples,
        };
        let proposal = hpa::metric_replicas(
            current,
            &replicas,
            &input,
            &hpa::Settings::default(),
            now_ms,
        );
        measured.push(Measured {
            resource: metric.resource,
            target: metric.target,
            current: proposal.as_ref().ok().map(|p| p.current),
        });
        proposals.push(proposal);
    }
    let behavior = hpa::Behavior {
        up: rules(&autoscale.scale_up),
        down: rules(&autoscale.scale_down),
    };
    let decision = hpa::decide(
        (autoscale.min_replicas, autoscale.max_replicas),
        &behavior,
        current,
        &proposals,
        history,
        now_ms,
    );
    (decision, measured)
}

fn rules(rules: &ScaleRules) -> hpa::Rules {
    hpa::Rules {
        stabilization: u64::from(rules.stabilization_seconds) * 1000,
        select: match rules.select {
            ScaleSelect::Max => hpa::Select::Max,
            ScaleSelect::Min => hpa::Select::Min,
            ScaleSelect::Disabled => hpa::Select::Disabled,
        },
        policies: rules
            .policies
            .iter()
            .map(
                |&ScalePolicy {
                     percent,
                     value,
                     period_seconds,
                 }| {
                    let period = u64::from(period_seconds) * 1000;
                    if percent {
                        hpa::Policy::Percent { value, period }
                    } else {
                        hpa::Policy::Pods { value, period }
                    }
                },
            )
            .collect(),
    }
}

/// Why, in words: each metric against its target, and what held the count if anything did.
fn why(reason: hpa::Reason, measured: &[Measured], autoscale: &Autoscale) -> String {
    let metrics: Vec<String> = measured
        .iter()
        .map(|m| {
            let name = m.resource.as_str();
            match (m.target, m.current) {
                (ScaleTarget::Utilization(target), Some(current)) => {
                    format!("{name} {current}% of target {target}%")
                }
                (ScaleTarget::AverageValue(target), Some(current)) => {
                    let show = |v: u64| match m.resource {
                        ScaleResource::Cpu => format_cpu(v),
                        ScaleResource::Memory => format_bytes(v),
                        ScaleResource::ConnectionsPerSecond | ScaleResource::ActiveConnections => {
                            format_thousandths(v)
                        }
                    };
                    let current = u64::try_from(current).unwrap_or(0);
                    let current = match m.resource {
                        ScaleResource::Memory => current / 1000,
                        _ => current,
                    };
                    format!(
                        "{name} {} per replica, target {}",
                        show(current),
                        show(target)
                    )
                }
                (_, None) => format!("{name} not measured yet"),
            }
        })
        .collect();
    let held = match reason {
        hpa::Reason::Bounded => format!(
            " (bounded to {}..{})",
            autoscale.min_replicas, autoscale.max_replicas
        ),
        hpa::Reason::RateLimited => " (limited by the scaling policy)".to_string(),
        hpa::Reason::Stabilized => " (held by the stabilization window)".to_string(),
        _ => String::new(),
    };
    format!("{}{held}", metrics.join(", "))
}

/// A count kept in thousandths, as a person writes it: 2500 is "2.5", 20000 is "20".
fn format_thousandths(v: u64) -> String {
    let (whole, rest) = (v / 1000, v % 1000);
    if rest == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{}", format!("{rest:03}").trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests;
