//! The Kubernetes HorizontalPodAutoscaler, as pure functions: what operators know from
//! Kubernetes is what Drover does (`pkg/controller/podautoscaler`: replica_calculator.go
//! and horizontal.go, autoscaling/v2).
//!
//! - [`metric_replicas`]: one metric's proposal, `ceil(ready × value / target)` with the
//!   tolerance (0.1), replicas not yet started set aside, unready replicas (CPU) counted as
//!   0 % on a scale-up, replicas without a sample as 100 % of the target on a scale-down and
//!   0 % on a scale-up, and no change when that would reverse the direction. Values are
//!   integers in thousandths of the unit (Kubernetes' milli-values), and a utilization is a
//!   whole percent, truncated, as there.
//! - [`decide`]: the decision of one period from every metric's proposal: the largest,
//!   none when all failed, none when some failed and the rest suggest a scale-down; the
//!   bounds; the scale-up window's lowest and the scale-down window's highest recommendation
//!   ([`History`] keeps them); then the policies' rate limits per period.
//!
//! Time is passed in as milliseconds (any epoch), so a replay is deterministic.

use std::collections::BTreeMap;

/// Milliseconds on the caller's clock.
pub type Millis = u64;

/// Kubernetes' default tolerance: no change within ±10 % of the target.
pub const TOLERANCE: f64 = 0.1;
/// Kubernetes' `--horizontal-pod-autoscaler-cpu-initialization-period`.
pub const CPU_INITIALIZATION: Millis = 5 * 60 * 1000;
/// Kubernetes' `--horizontal-pod-autoscaler-initial-readiness-delay`.
pub const INITIAL_READINESS_DELAY: Millis = 30 * 1000;

/// A replica's lifecycle, as a pod's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not running yet (being placed, pulled, started).
    Pending,
    /// Running (ready or not).
    Running,
    /// Failed: left out.
    Failed,
    /// Being stopped: left out.
    Deleting,
}

/// A replica's readiness and when it last changed (the pod's Ready condition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// Passing its readiness check.
    pub ready: bool,
    /// When `ready` last changed.
    pub since: Millis,
}

/// One replica of the scaled workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    /// Its identity (allocation id), matched with the samples.
    pub id: String,
    /// Its phase.
    pub phase: Phase,
    /// When it started running.
    pub started: Option<Millis>,
    /// Its readiness, once checked.
    pub readiness: Option<Readiness>,
    /// Its request of the metric's resource, in thousandths (millicores, milli-bytes);
    /// needed by utilization targets.
    pub request_milli: Option<i64>,
}

/// One replica's measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The value, in thousandths of the unit.
    pub value_milli: i64,
    /// When the measurement window ended.
    pub at: Millis,
    /// How long the measurement window was.
    pub window: Millis,
}

/// What a metric aims at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Average usage as a whole percent of the replicas' requests.
    Utilization(u32),
    /// Average value per replica, in thousandths of the unit.
    AverageValue(i64),
}

/// One metric's inputs.
#[derive(Debug, Clone)]
pub struct Metric<'a> {
    /// CPU: unready and initialising replicas' samples are set aside, as Kubernetes does
    /// for the `cpu` resource only.
    pub cpu: bool,
    /// Its target.
    pub target: Target,
    /// Samples by replica id (replicas without one are "missing").
    pub samples: &'a BTreeMap<String, Sample>,
}

/// The calculation's settings (Kubernetes' controller flags).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// No change while the ratio is within this of 1.
    pub tolerance: f64,
    /// After a start, CPU samples of an unready replica, or from before its readiness
    /// changed, are set aside this long.
    pub cpu_initialization: Millis,
    /// A replica that became unready within this of its start never was ready.
    pub initial_readiness_delay: Millis,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tolerance: TOLERANCE,
            cpu_initialization: CPU_INITIALIZATION,
            initial_readiness_delay: INITIAL_READINESS_DELAY,
        }
    }
}

/// One metric's proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposal {
    /// Replicas it asks for.
    pub replicas: u32,
    /// What it measured: the utilization in percent, or the average value in thousandths.
    pub current: i64,
}

/// Why a metric gives no proposal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    /// The workload has no replica.
    #[error("no replicas")]
    NoReplicas,
    /// No ready replica has a sample.
    #[error("no samples from ready replicas")]
    NoSamples,
    /// A utilization target needs every replica's request.
    #[error("replica {0} has no request for the resource")]
    MissingRequest(String),
}

/// One metric's proposal for a workload of `current` replicas (`GetResourceReplicas`,
/// `GetRawResourceReplicas`, `GetMetricReplicas`).
pub fn metric_replicas(
    current: u32,
    replicas: &[Replica],
    metric: &Metric<'_>,
    settings: &Settings,
    now: Millis,
) -> Result<Proposal, MetricError> {
    if replicas.is_empty() {
        return Err(MetricError::NoReplicas);
    }
    let groups = group(replicas, metric, settings, now);
    let mut samples: BTreeMap<&str, i64> = metric
        .samples
        .iter()
        .filter(|(id, _)| !groups.ignored.contains(&id.as_str()))
        .map(|(id, s)| (id.as_str(), s.value_milli))
        .collect();
    let requests = match metric.target {
        Target::Utilization(_) => Some(requests(replicas)?),
        Target::AverageValue(_) => None,
    };
    if samples.is_empty() {
        return Err(MetricError::NoSamples);
    }
    let (ratio, measured) = ratio_of(&samples, requests.as_ref(), metric.target)?;
    let rebalance_ignored = !groups.ignored.is_empty() && ratio > 1.0;
    if !rebalance_ignored && groups.missing.is_empty() {
        if (1.0 - ratio).abs() <= settings.tolerance {
            return Ok(Proposal {
                replicas: current,
                current: measured,
            });
        }
        return Ok(Proposal {
            replicas: ceil(ratio * groups.ready as f64),
            current: measured,
        });
    }
    if !groups.missing.is_empty() {
        for id in &groups.missing {
            let assumed = if ratio < 1.0 {
                // On a scale-down a missing replica counts as at the target.
                match (metric.target, &requests) {
                    (Target::Utilization(_), Some(requests)) => {
                        requests.get(id).copied().unwrap_or(0)
                    }
                    (Target::AverageValue(value), _) => value,
                    (Target::Utilization(_), None) => 0,
                }
            } else if ratio > 1.0 || matches!(metric.target, Target::AverageValue(_)) {
                // On a scale-up, as idle.
                0
            } else {
                continue;
            };
            samples.insert(id, assumed);
        }
    }
    if rebalance_ignored {
        for id in &groups.ignored {
            samples.insert(id, 0);
        }
    }
    let (new_ratio, _) = ratio_of(&samples, requests.as_ref(), metric.target)?;
    let unchanged = Proposal {
        replicas: current,
        current: measured,
    };
    if (1.0 - new_ratio).abs() <= settings.tolerance
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(unchanged);
    }
    let proposed = ceil(new_ratio * samples.len() as f64);
    if matches!(metric.target, Target::Utilization(_))
        && ((new_ratio < 1.0 && proposed > current) || (new_ratio > 1.0 && proposed < current))
    {
        return Ok(unchanged);
    }
    Ok(Proposal {
        replicas: proposed,
        current: measured,
    })
}

/// Replicas counted, set aside and without a sample (`groupPods`).
struct Groups<'a> {
    ready: usize,
    ignored: Vec<&'a str>,
    missing: Vec<&'a str>,
}

fn group<'a>(
    replicas: &'a [Replica],
    metric: &Metric<'_>,
    settings: &Settings,
    now: Millis,
) -> Groups<'a> {
    let mut groups = Groups {
        ready: 0,
        ignored: Vec::new(),
        missing: Vec::new(),
    };
    for replica in replicas {
        match replica.phase {
            Phase::Failed | Phase::Deleting => continue,
            Phase::Pending => {
                groups.ignored.push(&replica.id);
                continue;
            }
            Phase::Running => {}
        }
        let Some(sample) = metric.samples.get(&replica.id) else {
            groups.missing.push(&replica.id);
            continue;
        };
        if metric.cpu && cpu_set_aside(replica, sample, settings, now) {
            groups.ignored.push(&replica.id);
            continue;
        }
        groups.ready += 1;
    }
    groups
}

/// Whether a CPU sample of `replica` is set aside: unready (or from before its readiness
/// last changed) while initialising, or unready and never ready since.
fn cpu_set_aside(replica: &Replica, sample: &Sample, settings: &Settings, now: Millis) -> bool {
    let (Some(readiness), Some(started)) = (replica.readiness, replica.started) else {
        return true;
    };
    if started + settings.cpu_initialization > now {
        !readiness.ready || sample.at < readiness.since + sample.window
    } else {
        !readiness.ready && started + settings.initial_readiness_delay > readiness.since
    }
}

fn requests(replicas: &[Replica]) -> Result<BTreeMap<&str, i64>, MetricError> {
    replicas
        .iter()
        .map(|r| match r.request_milli {
            Some(request) => Ok((r.id.as_str(), request)),
            None => Err(MetricError::MissingRequest(r.id.clone())),
        })
        .collect()
}

/// The usage ratio and what was measured (`GetResourceUtilizationRatio`,
/// `GetMetricUtilizationRatio`).
fn ratio_of(
    samples: &BTreeMap<&str, i64>,
    requests: Option<&BTreeMap<&str, i64>>,
    target: Target,
) -> Result<(f64, i64), MetricError> {
    match (target, requests) {
        (Target::Utilization(percent), Some(requests)) => {
            let (mut used, mut requested) = (0i64, 0i64);
            for (id, value) in samples {
                if let Some(request) = requests.get(id) {
                    used += value;
                    requested += request;
                }
            }
            if requested == 0 {
                return Err(MetricError::NoSamples);
            }
            let utilization = used * 100 / requested;
            Ok((utilization as f64 / f64::from(percent.max(1)), utilization))
        }
        (Target::AverageValue(value), _) => {
            let total: i64 = samples.values().sum();
            let average = total / samples.len().max(1) as i64;
            Ok((average as f64 / value.max(1) as f64, average))
        }
        (Target::Utilization(_), None) => Err(MetricError::NoSamples),
    }
}

fn ceil(x: f64) -> u32 {
    x.ceil().clamp(0.0, f64::from(u32::MAX)) as u32
}

/// How a direction's policies combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// The largest change (the default).
    Max,
    /// The smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// One scaling policy: at most `value` replicas (or percent) per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// `value` replicas per `period`.
    Pods {
        /// Replicas.
        value: u32,
        /// Period.
        period: Millis,
    },
    /// `value` percent of the replicas at the period's start per `period`.
    Percent {
        /// Percent.
        value: u32,
        /// Period.
        period: Millis,
    },
}

impl Policy {
    fn period(self) -> Millis {
        match self {
            Policy::Pods { period, .. } | Policy::Percent { period, .. } => period,
        }
    }
}

/// One direction's behaviour (`HPAScalingRules`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Recommendations over this long are considered (up: the lowest, down: the highest).
    pub stabilization: Millis,
    /// How the policies combine.
    pub select: Select,
    /// The rate limits.
    pub policies: Vec<Policy>,
}

/// Both directions' behaviour, Kubernetes' defaults by [`Behavior::default`]: up at once by
/// max(100 %, 4 replicas) per 15 s; down after a 300 s window by 100 % per 15 s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behavior {
    /// Scaling up.
    pub up: Rules,
    /// Scaling down.
    pub down: Rules,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            up: Rules {
                stabilization: 0,
                select: Select::Max,
                policies: vec![
                    Policy::Pods {
                        value: 4,
                        period: 15_000,
                    },
                    Policy::Percent {
                        value: 100,
                        period: 15_000,
                    },
                ],
            },
            down: Rules {
                stabilization: 300_000,
                select: Select::Max,
                policies: vec![Policy::Percent {
                    value: 100,
                    period: 15_000,
                }],
            },
        }
    }
}

/// What a decision remembers for the next ones (per autoscaled workload): recommendations
/// for the windows and changes for the policies' periods. In memory, as in Kubernetes: a
/// restarted coordinator starts with empty windows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    recommendations: Vec<(u32, Millis)>,
    ups: Vec<(u32, Millis)>,
    downs: Vec<(u32, Millis)>,
}

/// Why a decision came out as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The metrics' proposal, within every limit.
    Desired,
    /// No metric gave a proposal.
    NoMetrics,
    /// Some metrics failed and the others suggest a scale-down: nothing changes.
    InvalidMetricsScaleDown,
    /// The workload is at 0 replicas while the minimum is not: scaling is off (as in
    /// Kubernetes, an operator scaled it to 0).
    ScalingDisabled,
    /// Brought within `min`/`max`.
    Bounded,
    /// Held by a stabilisation window.
    Stabilized,
    /// Held by a policy's rate.
    RateLimited,
}

/// One period's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Replicas to run.
    pub replicas: u32,
    /// Why.
    pub reason: Reason,
}

/// The decision for a workload of `current` replicas between `min` and `max` from its
/// metrics' `proposals` (`reconcileAutoscaler` with behaviours); `history` is updated.
pub fn decide(
    (min, max): (u32, u32),
    behavior: &Behavior,
    current: u32,
    proposals: &[Result<Proposal, MetricError>],
    history: &mut History,
    now: Millis,
) -> Decision {
    let decision = if current == 0 && min != 0 {
        Decision {
            replicas: 0,
            reason: Reason::ScalingDisabled,
        }
    } else if current > max {
        Decision {
            replicas: max,
            reason: Reason::Bounded,
        }
    } else if current < min {
        Decision {
            replicas: min,
            reason: Reason::Bounded,
        }
    } else {
        let valid: Vec<u32> = proposals
            .iter()
            .filter_map(|p| p.as_ref().ok().map(|p| p.replicas))
            .collect();
        let invalid = proposals.len() - valid.len();
        let proposed = valid.iter().copied().max().unwrap_or(0);
        if valid.is_empty() {
            return Decision {
                replicas: current,
                reason: Reason::NoMetrics,
            };
        }
        if invalid > 0 && proposed < current {
            return Decision {
                replicas: current,
                reason: Reason::InvalidMetricsScaleDown,
            };
        }
        normalize((min, max), behavior, current, proposed, history, now)
    };
    if decision.replicas != current {
        record_change(behavior, current, decision.replicas, history, now);
    }
    decision
}

/// Stabilise, then limit the rate (`normalizeDesiredReplicasWithBehaviors`).
fn normalize(
    (min, max): (u32, u32),
    behavior: &Behavior,
    current: u32,
    desired: u32,
    history: &mut History,
    now: Millis,
) -> Decision {
    let stabilized = stabilize(behavior, current, desired, history, now);
    let (limited, reason) = rate_limit((min, max), behavior, current, stabilized, history, now);
    let reason = match reason {
        Some(reason) => reason,
        None if stabilized != desired => Reason::Stabilized,
        None => Reason::Desired,
    };
    Decision {
        replicas: limited,
        reason,
    }
}

fn after(at: Millis, cutoff: Option<Millis>) -> bool {
    cutoff.is_none_or(|cutoff| at > cutoff)
}

/// The windows' recommendation; records `desired` (`stabilizeRecommendationWithBehaviors`).
fn stabilize(
    behavior: &Behavior,
    current: u32,
    desired: u32,
    history: &mut History,
    now: Millis,
) -> u32 {
    let up_cutoff = now.checked_sub(behavior.up.stabilization);
    let down_cutoff = now.checked_sub(behavior.down.stabilization);
    let (mut up, mut down) = (desired, desired);
    let mut old = None;
    for (i, &(recommendation, at)) in history.recommendations.iter().enumerate() {
        if after(at, up_cutoff) {
            up = up.min(recommendation);
        }
        if after(at, down_cutoff) {
            down = down.max(recommendation);
        }
        if !after(at, up_cutoff) && !after(at, down_cutoff) {
            old = Some(i);
        }
    }
    let recommendation = current.max(up).min(down);
    match old {
        Some(i) => history.recommendations[i] = (desired, now),
        None => history.recommendations.push((desired, now)),
    }
    recommendation
}

/// Replicas changed in the direction's events within `period` before `now`.
fn changed_within(events: &[(u32, Millis)], period: Millis, now: Millis) -> i64 {
    let cutoff = now.checked_sub(period);
    events
        .iter()
        .filter(|(_, at)| after(*at, cutoff))
        .map(|(n, _)| i64::from(*n))
        .sum()
}

/// The policies' limit (`convertDesiredReplicasWithBehaviorRate`).
fn rate_limit(
    (min, max): (u32, u32),
    behavior: &Behavior,
    current: u32,
    desired: u32,
    history: &History,
    now: Millis,
) -> (u32, Option<Reason>) {
    let current_i = i64::from(current);
    let period_start = |period| {
        current_i - changed_within(&history.ups, period, now)
            + changed_within(&history.downs, period, now)
    };
    if desired > current {
        let rules = &behavior.up;
        let limit = match rules.select {
            Select::Disabled => current_i,
            select => {
                let proposals = rules.policies.iter().map(|&policy| {
                    let start = period_start(policy.period());
                    match policy {
                        Policy::Pods { value, .. } => start + i64::from(value),
                        Policy::Percent { value, .. } => {
                            (start as f64 * (1.0 + f64::from(value) / 100.0)).ceil() as i64
                        }
                    }
                });
                let picked = if select == Select::Min {
                    proposals.min()
                } else {
                    proposals.max()
                };
                picked.unwrap_or(current_i)
            }
        }
        .max(current_i);
        let (allowed, reason) = if i64::from(max) > limit {
            (limit, Reason::RateLimited)
        } else {
            (i64::from(max), Reason::Bounded)
        };
        if i64::from(desired) > allowed {
            return (to_u32(allowed), Some(reason));
        }
    } else if desired < current {
        let rules = &behavior.down;
        let limit = match rules.select {
            Select::Disabled => current_i,
            select => {
                let proposals = rules.policies.iter().map(|&policy| {
                    let start = period_start(policy.period());
                    match policy {
                        Policy::Pods { value, .. } => start - i64::from(value),
                        // Truncated, as Kubernetes' int32 conversion.
                        Policy::Percent { value, .. } => {
                            (start as f64 * (1.0 - f64::from(value) / 100.0)) as i64
                        }
                    }
                });
                let picked = if select == Select::Min {
                    proposals.max()
                } else {
                    proposals.min()
                };
                picked.unwrap_or(current_i)
            }
        }
        .min(current_i);
        let (allowed, reason) = if i64::from(min) < limit {
            (limit, Reason::RateLimited)
        } else {
            (i64::from(min), Reason::Bounded)
        };
        if i64::from(desired) < allowed {
            return (to_u32(allowed), Some(reason));
        }
    }
    (desired, None)
}

fn to_u32(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// Records a change for the policies' periods, reusing an entry older than the longest
/// period (`storeScaleEvent`).
fn record_change(behavior: &Behavior, from: u32, to: u32, history: &mut History, now: Millis) {
    let (events, rules, change) = if to > from {
        (&mut history.ups, &behavior.up, to - from)
    } else {
        (&mut history.downs, &behavior.down, from - to)
    };
    let longest = rules.policies.iter().map(|p| p.period()).max().unwrap_or(0);
    let cutoff = now.saturating_sub(longest);
    match events.iter_mut().find(|(_, at)| *at < cutoff) {
        Some(slot) => *slot = (change, now),
        None => events.push((change, now)),
    }
}

#[cfg(test)]
mod tests;
