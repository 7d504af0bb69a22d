//! Conversions between wire types ([`crate::pb`]) and domain types ([`crate::model`]).
//!
//! Domain → wire never fails. Wire → domain checks that required fields are present and
//! values are in range, and names the field that is not.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::{
    AllocState, AllocStatus, Allocation, CanaryAnalysis, CanaryStep, ConstraintOp, DesiredState,
    HealthCheck, LabelConstraint, NodeHealth, NodeInfo, Placement, PortSpec, ProbeAction, Protocol,
    ReplicaCount, Resources, RestartMode, RestartPolicy, Secret, SpreadMode, Strategy, Traffic,
    UpdateKind, UpdateStrategy, WorkloadSpec,
};
use crate::pb;

mod service;

pub use service::HEADLESS;

/// A wire message that cannot become a domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {message}.{field}: {reason}")]
pub struct ConvertError {
    /// Message type, e.g. `WorkloadSpec`.
    pub message: &'static str,
    /// Field path within it.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl ConvertError {
    fn new(message: &'static str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConvertError {
            message,
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn missing(message: &'static str, field: &str) -> Self {
        ConvertError::new(message, field, "required field is missing")
    }

    fn in_field(self, parent: &'static str, field: &str) -> Self {
        ConvertError {
            message: parent,
            field: format!("{field}.{}", self.field),
            reason: self.reason,
        }
    }
}

fn port(message: &'static str, field: &str, value: u32) -> Result<u16, ConvertError> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ConvertError::new(
            message,
            field,
            format!("port {value} is outside 1..65535"),
        )),
    }
}

fn ms(value: Duration) -> u64 {
    u64::try_from(value.as_millis()).unwrap_or(u64::MAX)
}

impl From<Resources> for pb::Resources {
    fn from(r: Resources) -> Self {
        pb::Resources {
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
        }
    }
}

impl From<pb::Resources> for Resources {
    fn from(r: pb::Resources) -> Self {
        Resources {
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
        }
    }
}

fn resources(r: Option<pb::Resources>) -> Resources {
    r.map(Resources::from).unwrap_or_default()
}

impl From<&PortSpec> for pb::PortSpec {
    fn from(p: &PortSpec) -> Self {
        pb::PortSpec {
            name: p.name.clone(),
            container_port: p.container_port.into(),
            host_port: p.host_port.map(u32::from),
            protocol: pb::Protocol::Tcp.into(),
        }
    }
}

impl TryFrom<pb::PortSpec> for PortSpec {
    type Error = ConvertError;

    fn try_from(p: pb::PortSpec) -> Result<Self, ConvertError> {
        const M: &str = "PortSpec";
        let protocol = match pb::Protocol::try_from(p.protocol) {
            Ok(pb::Protocol::Tcp | pb::Protocol::Unspecified) => Protocol::Tcp,
            Err(_) => {
                return Err(ConvertError::new(
                    M,
                    "protocol",
                    format!("unknown protocol {}", p.protocol),
                ));
            }
        };
        Ok(PortSpec {
            name: p.name,
            container_port: port(M, "container_port", p.container_port)?,
            host_port: p.host_port.map(|v| port(M, "host_port", v)).transpose()?,
            protocol,
        })
    }
}

impl From<&HealthCheck> for pb::HealthCheck {
    fn from(h: &HealthCheck) -> Self {
        let action = match &h.action {
            ProbeAction::Tcp { port } => pb::health_check::Action::Tcp(pb::TcpProbe {
                port: (*port).into(),
            }),
            ProbeAction::Http { port, path } => pb::health_check::Action::Http(pb::HttpProbe {
                port: (*port).into(),
                path: path.clone(),
            }),
            ProbeAction::Exec { command } => pb::health_check::Action::Exec(pb::ExecProbe {
                command: command.clone(),
            }),
        };
        pb::HealthCheck {
            action: Some(action),
            interval_ms: ms(h.interval),
            timeout_ms: ms(h.timeout),
            success_threshold: h.success_threshold,
            failure_threshold: h.failure_threshold,
            start_period_ms: ms(h.start_period),
        }
    }
}

impl TryFrom<pb::HealthCheck> for HealthCheck {
    type Error = ConvertError;

    fn try_from(h: pb::HealthCheck) -> Result<Self, ConvertError> {
        const M: &str = "HealthCheck";
        let action = match h.action {
            Some(pb::health_check::Action::Tcp(t)) => ProbeAction::Tcp {
                port: port(M, "tcp.port", t.port)?,
            },
            Some(pb::health_check::Action::Http(t)) => ProbeAction::Http {
                port: port(M, "http.port", t.port)?,
                path: t.path,
            },
            Some(pb::health_check::Action::Exec(e)) => ProbeAction::Exec { command: e.command },
            None => return Err(ConvertError::missing(M, "action")),
        };
        Ok(HealthCheck {
            action,
            interval: Duration::from_millis(h.interval_ms),
            timeout: Duration::from_millis(h.timeout_ms),
            success_threshold: h.success_threshold,
            failure_threshold: h.failure_threshold,
            start_period: Duration::from_millis(h.start_period_ms),
        })
    }
}

impl From<&RestartPolicy> for pb::RestartPolicy {
    fn from(r: &RestartPolicy) -> Self {
        let mode = match r.mode {
            RestartMode::Always => pb::RestartMode::Always,
            RestartMode::OnFailure => pb::RestartMode::OnFailure,
            RestartMode::Never => pb::RestartMode::Never,
        };
        pb::RestartPolicy {
            mode: mode.into(),
            max_attempts: r.max_attempts,
            initial_backoff_ms: ms(r.initial_backoff),
            max_backoff_ms: ms(r.max_backoff),
            reset_after_ms: ms(r.reset_after),
        }
    }
}

impl TryFrom<pb::RestartPolicy> for RestartPolicy {
    type Error = ConvertError;

    fn try_from(r: pb::RestartPolicy) -> Result<Self, ConvertError> {
        let mode = match pb::RestartMode::try_from(r.mode) {
            Ok(pb::RestartMode::Always | pb::RestartMode::Unspecified) => RestartMode::Always,
            Ok(pb::RestartMode::OnFailure) => RestartMode::OnFailure,
            Ok(pb::RestartMode::Never) => RestartMode::Never,
            Err(_) => {
                return Err(ConvertError::new(
                    "RestartPolicy",
                    "mode",
                    format!("unknown restart mode {}", r.mode),
                ));
            }
        };
        Ok(RestartPolicy {
            mode,
            max_attempts: r.max_attempts,
            initial_backoff: Duration::from_millis(r.initial_backoff_ms),
            max_backoff: Duration::from_millis(r.max_backoff_ms),
            reset_after: Duration::from_millis(r.reset_after_ms),
        })
    }
}

fn op_to_pb(op: ConstraintOp) -> pb::ConstraintOp {
    match op {
        ConstraintOp::Eq => pb::ConstraintOp::Eq,
        ConstraintOp::NotEq => pb::ConstraintOp::NotEq,
        ConstraintOp::In => pb::ConstraintOp::In,
        ConstraintOp::NotIn => pb::ConstraintOp::NotIn,
        ConstraintOp::Exists => pb::ConstraintOp::Exists,
        ConstraintOp::DoesNotExist => pb::ConstraintOp::DoesNotExist,
    }
}

impl TryFrom<pb::LabelConstraint> for LabelConstraint {
    type Error = ConvertError;

    fn try_from(c: pb::LabelConstraint) -> Result<Self, ConvertError> {
        const M: &str = "LabelConstraint";
        let op = match pb::ConstraintOp::try_from(c.op) {
            Ok(pb::ConstraintOp::Eq) => ConstraintOp::Eq,
            Ok(pb::ConstraintOp::NotEq) => ConstraintOp::NotEq,
            Ok(pb::ConstraintOp::In) => ConstraintOp::In,
            Ok(pb::ConstraintOp::NotIn) => ConstraintOp::NotIn,
            Ok(pb::ConstraintOp::Exists) => ConstraintOp::Exists,
            Ok(pb::ConstraintOp::DoesNotExist) => ConstraintOp::DoesNotExist,
            Ok(pb::ConstraintOp::Unspecified) => return Err(ConvertError::missing(M, "op")),
            Err(_) => {
                return Err(ConvertError::new(
                    M,
                    "op",
                    format!("unknown operator {}", c.op),
                ));
            }
        };
        if c.key.is_empty() {
            return Err(ConvertError::missing(M, "key"));
        }
        Ok(LabelConstraint {
            key: c.key,
            op,
            values: c.values,
        })
    }
}

/// Domain strategy to its wire enum.
pub fn strategy_to_pb(s: Strategy) -> pb::Strategy {
    match s {
        Strategy::RoundRobin => pb::Strategy::RoundRobin,
        Strategy::Random => pb::Strategy::Random,
        Strategy::LeastConn => pb::Strategy::LeastConn,
    }
}

/// Wire strategy to the domain; unspecified means the default, round robin.
pub fn strategy_from_pb(value: i32) -> Result<Strategy, ConvertError> {
    match pb::Strategy::try_from(value) {
        Ok(pb::Strategy::RoundRobin | pb::Strategy::Unspecified) => Ok(Strategy::RoundRobin),
        Ok(pb::Strategy::Random) => Ok(Strategy::Random),
        Ok(pb::Strategy::LeastConn) => Ok(Strategy::LeastConn),
        Err(_) => Err(ConvertError::new(
            "Traffic",
            "strategy",
            format!("unknown strategy {value}"),
        )),
    }
}

fn replica_count_to_pb(c: ReplicaCount) -> pb::ReplicaCount {
    pb::ReplicaCount {
        value: Some(match c {
            ReplicaCount::Count(n) => pb::replica_count::Value::Count(n),
            ReplicaCount::Percent(p) => pb::replica_count::Value::Percent(p),
        }),
    }
}

fn replica_count(
    field: &str,
    c: Option<pb::ReplicaCount>,
) -> Result<Option<ReplicaCount>, ConvertError> {
    const M: &str = "UpdateStrategy";
    match c.map(|c| c.value) {
        None => Ok(None),
        Some(None) => Err(ConvertError::missing(M, field)),
        Some(Some(pb::replica_count::Value::Count(n))) => Ok(Some(ReplicaCount::Count(n))),
        Some(Some(pb::replica_count::Value::Percent(p))) => Ok(Some(ReplicaCount::Percent(p))),
    }
}

impl From<&UpdateStrategy> for pb::UpdateStrategy {
    fn from(u: &UpdateStrategy) -> Self {
        pb::UpdateStrategy {
            kind: match u.kind {
                UpdateKind::RollingUpdate => pb::UpdateKind::RollingUpdate,
                UpdateKind::Recreate => pb::UpdateKind::Recreate,
            }
            .into(),
            max_surge: Some(replica_count_to_pb(u.max_surge)),
            max_unavailable: Some(replica_count_to_pb(u.max_unavailable)),
            min_ready_ms: ms(u.min_ready),
            progress_deadline_ms: ms(u.progress_deadline),
            auto_revert: u.auto_revert,
            canary: u
                .canary
                .iter()
                .map(|c| pb::CanaryStep {
                    weight: c.weight,
                    pause_ms: ms(c.pause),
                })
                .collect(),
            analysis: Some(pb::CanaryAnalysis {
                max_failure_bp: u.analysis.max_failure_bp,
                min_sample: u.analysis.min_sample,
            }),
            revision_history_limit: u.revision_history_limit,
            paused: u.paused,
        }
    }
}

impl TryFrom<pb::UpdateStrategy> for UpdateStrategy {
    type Error = ConvertError;

    fn try_from(u: pb::UpdateStrategy) -> Result<Self, ConvertError> {
        const M: &str = "UpdateStrategy";
        let defaults = UpdateStrategy::default();
        let kind = match pb::UpdateKind::try_from(u.kind) {
            Ok(pb::UpdateKind::Recreate) => UpdateKind::Recreate,
            Ok(_) => UpdateKind::RollingUpdate,
            Err(_) => {
                return Err(ConvertError::new(
                    M,
                    "kind",
                    format!("unknown update kind {}", u.kind),
                ));
            }
        };
        Ok(UpdateStrategy {
            kind,
            max_surge: replica_count("max_surge", u.max_surge)?.unwrap_or(defaults.max_surge),
            max_unavailable: replica_count("max_unavailable", u.max_unavailable)?
                .unwrap_or(defaults.max_unavailable),
            min_ready: Duration::from_millis(u.min_ready_ms),
            progress_deadline: if u.progress_deadline_ms == 0 {
                defaults.progress_deadline
            } else {
                Duration::from_millis(u.progress_deadline_ms)
            },
            auto_revert: u.auto_revert,
            canary: u
                .canary
                .into_iter()
                .map(|c| CanaryStep {
                    weight: c.weight,
                    pause: Duration::from_millis(c.pause_ms),
                })
                .collect(),
            analysis: u
                .analysis
                .map(|a| CanaryAnalysis {
                    max_failure_bp: a.max_failure_bp,
                    min_sample: a.min_sample,
                })
                .unwrap_or_default(),
            revision_history_limit: u.revision_history_limit,
            paused: u.paused,
        })
    }
}

impl From<&WorkloadSpec> for pb::WorkloadSpec {
    fn from(s: &WorkloadSpec) -> Self {
        pb::WorkloadSpec {
            name: s.name.clone(),
            image: s.image.clone(),
            command: s.command.clone(),
            args: s.args.clone(),
            env: s.env.clone().into_iter().collect(),
            secret_env: s
                .secret_env
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_string()))
                .collect(),
            withheld_secrets: Vec::new(),
            replicas: s.replicas,
            resources: Some(s.resources.into()),
            ports: s.ports.iter().map(Into::into).collect(),
            health: s.health.as_ref().map(Into::into),
            liveness: s.liveness.as_ref().map(Into::into),
            restart: Some((&s.restart).into()),
            placement: Some(pb::Placement {
                constraints: s
                    .placement
                    .constraints
                    .iter()
                    .map(|c| pb::LabelConstraint {
                        key: c.key.clone(),
                        op: op_to_pb(c.op).into(),
                        values: c.values.clone(),
                    })
                    .collect(),
                spread: match s.placement.spread {
                    SpreadMode::Spread => pb::SpreadMode::Spread,
                    SpreadMode::BinPack => pb::SpreadMode::BinPack,
                }
                .into(),
            }),
            update: Some((&s.update).into()),
            traffic: Some(pb::Traffic {
                revision_weights: s.traffic.revision_weights.clone().into_iter().collect(),
            }),
            stop_grace_period_ms: ms(s.stop_grace_period),
            stop_after_disconnect_ms: s.stop_after_disconnect.map(ms),
            labels: s.labels.clone().into_iter().collect(),
            pod_labels: s.pod_labels.clone().into_iter().collect(),
            autoscale: s.autoscale.as_ref().map(Into::into),
            vertical_autoscale: s.vertical_autoscale.as_ref().map(Into::into),
        }
    }
}

impl From<&crate::model::Autoscale> for pb::Autoscale {
    fn from(a: &crate::model::Autoscale) -> Self {
        use crate::model::{ScaleResource, ScaleTarget};
        let rules = |r: &crate::model::ScaleRules| pb::ScaleRules {
            stabilization_seconds: r.stabilization_seconds,
            select: match r.select {
                crate::model::ScaleSelect::Max => pb::scale_rules::Select::Max,
                crate::model::ScaleSelect::Min => pb::scale_rules::Select::Min,
                crate::model::ScaleSelect::Disabled => pb::scale_rules::Select::Disabled,
            }
            .into(),
            policies: r
                .policies
                .iter()
                .map(|p| pb::ScalePolicy {
                    percent: p.percent,
                    value: p.value,
                    period_seconds: p.period_seconds,
                })
                .collect(),
        };
        pb::Autoscale {
            min_replicas: a.min_replicas,
            max_replicas: a.max_replicas,
            metrics: a
                .metrics
                .iter()
                .map(|m| pb::ScaleMetric {
                    resource: match m.resource {
                        ScaleResource::Cpu => pb::scale_metric::Resource::Cpu,
                        ScaleResource::Memory => pb::scale_metric::Resource::Memory,
                        ScaleResource::ConnectionsPerSecond => {
                            pb::scale_metric::Resource::ConnectionsPerSecond
                        }
                        ScaleResource::ActiveConnections => {
                            pb::scale_metric::Resource::ActiveConnections
                        }
                    }
                    .into(),
                    target: Some(match m.target {
                        ScaleTarget::Utilization(p) => pb::scale_metric::Target::Utilization(p),
                        ScaleTarget::AverageValue(v) => pb::scale_metric::Target::AverageValue(v),
                    }),
                })
                .collect(),
            scale_up: Some(rules(&a.scale_up)),
            scale_down: Some(rules(&a.scale_down)),
            source: a.source.clone().unwrap_or_default(),
        }
    }
}

impl From<&crate::model::Autoscaler> for pb::Autoscaler {
    fn from(a: &crate::model::Autoscaler) -> Self {
        use crate::model::AutoscalerKind;
        pb::Autoscaler {
            target: a.target.clone(),
            kind: Some(match &a.kind {
                AutoscalerKind::Horizontal(h) => pb::autoscaler::Kind::Horizontal(h.into()),
                AutoscalerKind::Vertical(v) => pb::autoscaler::Kind::Vertical(v.into()),
            }),
        }
    }
}

impl TryFrom<pb::Autoscaler> for crate::model::Autoscaler {
    type Error = ConvertError;

    fn try_from(a: pb::Autoscaler) -> Result<Self, ConvertError> {
        use crate::model::AutoscalerKind;
        const M: &str = "Autoscaler";
        let kind = match a.kind {
            Some(pb::autoscaler::Kind::Horizontal(h)) => AutoscalerKind::Horizontal(
                h.try_into()
                    .map_err(|e: ConvertError| e.in_field(M, "horizontal"))?,
            ),
            Some(pb::autoscaler::Kind::Vertical(v)) => AutoscalerKind::Vertical(
                v.try_into()
                    .map_err(|e: ConvertError| e.in_field(M, "vertical"))?,
            ),
            None => return Err(ConvertError::missing(M, "kind")),
        };
        let autoscaler = crate::model::Autoscaler {
            target: a.target,
            kind,
        };
        if autoscaler.name().is_empty() {
            return Err(ConvertError::new(
                M,
                "source",
                "an autoscaler applied on its own needs its name",
            ));
        }
        Ok(autoscaler)
    }
}

impl From<&crate::model::VerticalAutoscale> for pb::VerticalAutoscale {
    fn from(v: &crate::model::VerticalAutoscale) -> Self {
        use crate::model::VerticalMode;
        pb::VerticalAutoscale {
            mode: match v.mode {
                VerticalMode::Off => pb::vertical_autoscale::Mode::Off,
                VerticalMode::Initial => pb::vertical_autoscale::Mode::Initial,
                VerticalMode::InPlace => pb::vertical_autoscale::Mode::InPlace,
                VerticalMode::Recreate => pb::vertical_autoscale::Mode::Recreate,
            }
            .into(),
            min_allowed: Some(v.min_allowed.into()),
            max_allowed: Some(v.max_allowed.into()),
            controls_cpu: v.controls_cpu,
            controls_memory: v.controls_memory,
            source: v.source.clone().unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::VerticalAutoscale> for crate::model::VerticalAutoscale {
    type Error = ConvertError;

    fn try_from(v: pb::VerticalAutoscale) -> Result<Self, ConvertError> {
        use crate::model::VerticalMode;
        const M: &str = "VerticalAutoscale";
        let mode = match pb::vertical_autoscale::Mode::try_from(v.mode) {
            Ok(pb::vertical_autoscale::Mode::Off) => VerticalMode::Off,
            Ok(pb::vertical_autoscale::Mode::Initial) => VerticalMode::Initial,
            Ok(pb::vertical_autoscale::Mode::InPlace) => VerticalMode::InPlace,
            Ok(pb::vertical_autoscale::Mode::Recreate) => VerticalMode::Recreate,
            Err(_) => {
                return Err(ConvertError::new(
                    M,
                    "mode",
                    format!("unknown mode {}", v.mode),
                ));
            }
        };
        if !v.controls_cpu && !v.controls_memory {
            return Err(ConvertError::new(
                M,
                "controls_cpu",
                "controls neither cpu nor memory",
            ));
        }
        let (min_allowed, max_allowed) = (resources(v.min_allowed), resources(v.max_allowed));
        let above = |min: u64, max: u64| max != 0 && min > max;
        if above(min_allowed.cpu_millis, max_allowed.cpu_millis)
            || above(min_allowed.memory_bytes, max_allowed.memory_bytes)
        {
            return Err(ConvertError::new(
                M,
                "min_allowed",
                format!("{min_allowed:?} is above max_allowed {max_allowed:?}"),
            ));
        }
        Ok(crate::model::VerticalAutoscale {
            mode,
            min_allowed,
            max_allowed,
            controls_cpu: v.controls_cpu,
            controls_memory: v.controls_memory,
            source: (!v.source.is_empty()).then_some(v.source),
        })
    }
}

impl TryFrom<pb::Autoscale> for crate::model::Autoscale {
    type Error = ConvertError;

    fn try_from(a: pb::Autoscale) -> Result<Self, ConvertError> {
        use crate::model::{ScaleMetric, ScaleResource, ScaleRules, ScaleSelect, ScaleTarget};
        const M: &str = "Autoscale";
        let rules = |r: Option<pb::ScaleRules>, field: &'static str, default: ScaleRules| {
            let Some(r) = r else {
                return Ok(default);
            };
            let select = match pb::scale_rules::Select::try_from(r.select) {
                Ok(pb::scale_rules::Select::Max) => ScaleSelect::Max,
                Ok(pb::scale_rules::Select::Min) => ScaleSelect::Min,
                Ok(pb::scale_rules::Select::Disabled) => ScaleSelect::Disabled,
                Err(_) => {
                    return Err(ConvertError::new(
                        M,
                        field,
                        format!("unknown select {}", r.select),
                    ));
                }
            };
            Ok(ScaleRules {
                stabilization_seconds: r.stabilization_seconds,
                select,
                policies: r
                    .policies
                    .into_iter()
                    .map(|p| crate::model::ScalePolicy {
                        percent: p.percent,
                        value: p.value,
                        period_seconds: p.period_seconds,
                    })
                    .collect(),
            })
        };
        let metrics = a
            .metrics
            .into_iter()
            .map(|m| {
                let resource = match pb::scale_metric::Resource::try_from(m.resource) {
                    Ok(pb::scale_metric::Resource::Cpu) => ScaleResource::Cpu,
                    Ok(pb::scale_metric::Resource::Memory) => ScaleResource::Memory,
                    Ok(pb::scale_metric::Resource::ConnectionsPerSecond) => {
                        ScaleResource::ConnectionsPerSecond
                    }
                    Ok(pb::scale_metric::Resource::ActiveConnections) => {
                        ScaleResource::ActiveConnections
                    }
                    _ => {
                        return Err(ConvertError::new(
                            M,
                            "metrics.resource",
                            format!("unknown resource {}", m.resource),
                        ));
                    }
                };
                let target = match m.target {
                    Some(pb::scale_metric::Target::Utilization(p)) => ScaleTarget::Utilization(p),
                    Some(pb::scale_metric::Target::AverageValue(v)) => ScaleTarget::AverageValue(v),
                    None => return Err(ConvertError::missing(M, "metrics.target")),
                };
                Ok(ScaleMetric { resource, target })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(crate::model::Autoscale {
            min_replicas: a.min_replicas,
            max_replicas: a.max_replicas,
            metrics,
            scale_up: rules(a.scale_up, "scale_up", ScaleRules::default_up())?,
            scale_down: rules(a.scale_down, "scale_down", ScaleRules::default_down())?,
            source: Some(a.source).filter(|s| !s.is_empty()),
        })
    }
}

impl pb::WorkloadSpec {
    /// Withholds the values of the secret environment variables, listing their names in
    /// `withheld_secrets`: the spec as a caller without the admin role sees it.
    pub fn withhold_secrets(&mut self) {
        let names = std::mem::take(&mut self.secret_env).into_keys();
        self.withheld_secrets.extend(names);
        self.withheld_secrets.sort();
    }
}

impl TryFrom<pb::WorkloadSpec> for WorkloadSpec {
    type Error = ConvertError;

    fn try_from(s: pb::WorkloadSpec) -> Result<Self, ConvertError> {
        const M: &str = "WorkloadSpec";
        if s.name.is_empty() {
            return Err(ConvertError::missing(M, "name"));
        }
        if s.image.is_empty() {
            return Err(ConvertError::missing(M, "image"));
        }
        if !s.withheld_secrets.is_empty() {
            return Err(ConvertError::new(
                M,
                "withheld_secrets",
                format!(
                    "the values of secret env {} were withheld from this copy of the spec; \
                     apply the manifest that holds them",
                    s.withheld_secrets.join(", ")
                ),
            ));
        }
        if let Some(name) = s.secret_env.keys().find(|k| s.env.contains_key(*k)) {
            return Err(ConvertError::new(
                M,
                "secret_env",
                format!("{name} is set both as a plain and as a secret environment variable"),
            ));
        }
        let ports = s
            .ports
            .into_iter()
            .enumerate()
            .map(|(i, p)| PortSpec::try_from(p).map_err(|e| e.in_field(M, &format!("ports[{i}]"))))
            .collect::<Result<_, _>>()?;
        let health = s
            .health
            .map(HealthCheck::try_from)
            .transpose()
            .map_err(|e| e.in_field(M, "health"))?;
        let liveness = s
            .liveness
            .map(HealthCheck::try_from)
            .transpose()
            .map_err(|e| e.in_field(M, "liveness"))?;
        let restart = s
            .restart
            .map(RestartPolicy::try_from)
            .transpose()
            .map_err(|e| e.in_field(M, "restart"))?
            .unwrap_or_default();
        let placement = match s.placement {
            Some(p) => Placement {
                constraints: p
                    .constraints
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| {
                        LabelConstraint::try_from(c)
                            .map_err(|e| e.in_field(M, &format!("placement.constraints[{i}]")))
                    })
                    .collect::<Result<_, _>>()?,
                spread: match pb::SpreadMode::try_from(p.spread) {
                    Ok(pb::SpreadMode::BinPack) => SpreadMode::BinPack,
                    Ok(_) => SpreadMode::Spread,
                    Err(_) => {
                        return Err(ConvertError::new(
                            M,
                            "placement.spread",
                            format!("unknown spread mode {}", p.spread),
                        ));
                    }
                },
            },
            None => Placement::default(),
        };
        let traffic = match s.traffic {
            Some(t) => Traffic {
                revision_weights: t.revision_weights.into_iter().collect(),
            },
            None => Traffic::default(),
        };
        Ok(WorkloadSpec {
            name: s.name,
            image: s.image,
            command: s.command,
            args: s.args,
            env: s.env.into_iter().collect(),
            secret_env: s
                .secret_env
                .into_iter()
                .map(|(k, v)| (k, Secret::new(v)))
                .collect(),
            replicas: s.replicas,
            resources: resources(s.resources),
            ports,
            health,
            liveness,
            restart,
            placement,
            update: s
                .update
                .map(UpdateStrategy::try_from)
                .transpose()
                .map_err(|e| e.in_field(M, "update"))?
                .unwrap_or_default(),
            traffic,
            stop_grace_period: Duration::from_millis(s.stop_grace_period_ms),
            stop_after_disconnect: s.stop_after_disconnect_ms.map(Duration::from_millis),
            labels: s.labels.into_iter().collect(),
            pod_labels: s.pod_labels.into_iter().collect(),
            autoscale: s
                .autoscale
                .map(crate::model::Autoscale::try_from)
                .transpose()
                .map_err(|e| e.in_field(M, "autoscale"))?,
            vertical_autoscale: s
                .vertical_autoscale
                .map(crate::model::VerticalAutoscale::try_from)
                .transpose()
                .map_err(|e| e.in_field(M, "vertical_autoscale"))?,
        })
    }
}

impl From<&Allocation> for pb::Allocation {
    fn from(a: &Allocation) -> Self {
        pb::Allocation {
            id: a.id.clone(),
            service: a.service.clone(),
            revision: a.revision,
            node: a.node.clone(),
            resources: Some(a.resources.into()),
            desired: match a.desired {
                DesiredState::Run => pb::DesiredState::Run,
                DesiredState::Stop => pb::DesiredState::Stop,
            }
            .into(),
            created_unix_ms: a.created_unix_ms,
        }
    }
}

impl TryFrom<pb::Allocation> for Allocation {
    type Error = ConvertError;

    fn try_from(a: pb::Allocation) -> Result<Self, ConvertError> {
        const M: &str = "Allocation";
        for (field, value) in [("id", &a.id), ("service", &a.service), ("node", &a.node)] {
            if value.is_empty() {
                return Err(ConvertError::missing(M, field));
            }
        }
        let desired = match pb::DesiredState::try_from(a.desired) {
            Ok(pb::DesiredState::Run) => DesiredState::Run,
            Ok(pb::DesiredState::Stop) => DesiredState::Stop,
            _ => {
                return Err(ConvertError::new(
                    M,
                    "desired",
                    format!("must be run or stop, got {}", a.desired),
                ));
            }
        };
        Ok(Allocation {
            id: a.id,
            service: a.service,
            revision: a.revision,
            node: a.node,
            resources: resources(a.resources),
            desired,
            created_unix_ms: a.created_unix_ms,
        })
    }
}

/// Domain allocation state to its wire enum.
pub fn alloc_state_to_pb(s: AllocState) -> pb::AllocState {
    match s {
        AllocState::Pending => pb::AllocState::Pending,
        AllocState::Starting => pb::AllocState::Starting,
        AllocState::Running => pb::AllocState::Running,
        AllocState::Healthy => pb::AllocState::Healthy,
        AllocState::Unhealthy => pb::AllocState::Unhealthy,
        AllocState::Failed => pb::AllocState::Failed,
        AllocState::Stopped => pb::AllocState::Stopped,
        AllocState::Lost => pb::AllocState::Lost,
    }
}

impl From<&AllocStatus> for pb::AllocStatus {
    fn from(s: &AllocStatus) -> Self {
        pb::AllocStatus {
            state: alloc_state_to_pb(s.state).into(),
            message: s.message.clone(),
            container_id: s.container_id.clone(),
            restarts: s.restarts,
            host_ports: s
                .host_ports
                .iter()
                .map(|(c, h)| (u32::from(*c), u32::from(*h)))
                .collect(),
            usage: Some(s.usage.into()),
            image_failure: s.image_failure,
        }
    }
}

impl TryFrom<pb::AllocStatus> for AllocStatus {
    type Error = ConvertError;

    fn try_from(s: pb::AllocStatus) -> Result<Self, ConvertError> {
        const M: &str = "AllocStatus";
        let state = match pb::AllocState::try_from(s.state) {
            Ok(pb::AllocState::Pending) => AllocState::Pending,
            Ok(pb::AllocState::Starting) => AllocState::Starting,
            Ok(pb::AllocState::Running) => AllocState::Running,
            Ok(pb::AllocState::Healthy) => AllocState::Healthy,
            Ok(pb::AllocState::Unhealthy) => AllocState::Unhealthy,
            Ok(pb::AllocState::Failed) => AllocState::Failed,
            Ok(pb::AllocState::Stopped) => AllocState::Stopped,
            Ok(pb::AllocState::Lost) => AllocState::Lost,
            Ok(pb::AllocState::Unspecified) => return Err(ConvertError::missing(M, "state")),
            Err(_) => {
                return Err(ConvertError::new(
                    M,
                    "state",
                    format!("unknown state {}", s.state),
                ));
            }
        };
        let host_ports = s
            .host_ports
            .into_iter()
            .map(|(c, h)| {
                Ok((
                    port(M, "host_ports.key", c)?,
                    port(M, "host_ports.value", h)?,
                ))
            })
            .collect::<Result<BTreeMap<_, _>, ConvertError>>()?;
        Ok(AllocStatus {
            state,
            message: s.message,
            container_id: s.container_id,
            restarts: s.restarts,
            host_ports,
            usage: resources(s.usage),
            image_failure: s.image_failure,
        })
    }
}

impl From<&NodeInfo> for pb::NodeInfo {
    fn from(n: &NodeInfo) -> Self {
        pb::NodeInfo {
            id: n.id.clone(),
            generation: n.generation,
            address: n.address.clone(),
            capacity: Some(n.capacity.into()),
            labels: n.labels.clone().into_iter().collect(),
        }
    }
}

impl TryFrom<pb::NodeInfo> for NodeInfo {
    type Error = ConvertError;

    fn try_from(n: pb::NodeInfo) -> Result<Self, ConvertError> {
        const M: &str = "NodeInfo";
        if n.id.is_empty() {
            return Err(ConvertError::missing(M, "id"));
        }
        if n.address.is_empty() {
            return Err(ConvertError::missing(M, "address"));
        }
        let capacity = n
            .capacity
            .ok_or_else(|| ConvertError::missing(M, "capacity"))?;
        Ok(NodeInfo {
            id: n.id,
            generation: n.generation,
            address: n.address,
            capacity: capacity.into(),
            labels: n.labels.into_iter().collect(),
        })
    }
}

/// Domain node health to its wire enum.
pub fn node_health_to_pb(h: NodeHealth) -> pb::NodeHealth {
    match h {
        NodeHealth::Ready => pb::NodeHealth::Ready,
        NodeHealth::Disconnected => pb::NodeHealth::Disconnected,
        NodeHealth::Down => pb::NodeHealth::Down,
    }
}

/// Wire node health to the domain.
pub fn node_health_from_pb(value: i32) -> Result<NodeHealth, ConvertError> {
    match pb::NodeHealth::try_from(value) {
        Ok(pb::NodeHealth::Ready) => Ok(NodeHealth::Ready),
        Ok(pb::NodeHealth::Disconnected) => Ok(NodeHealth::Disconnected),
        Ok(pb::NodeHealth::Down) => Ok(NodeHealth::Down),
        _ => Err(ConvertError::new(
            "NodeStatus",
            "health",
            format!("unknown node health {value}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ProbeAction, SpreadMode};

    fn full_spec() -> WorkloadSpec {
        let mut spec = WorkloadSpec::new("web", "web:1");
        spec.command = vec!["/bin/web".into()];
        spec.args = vec!["--port".into(), "8080".into()];
        spec.env.insert("A".into(), "1".into());
        spec.replicas = 3;
        spec.resources = Resources {
            cpu_millis: 250,
            memory_bytes: 64 << 20,
        };
        spec.ports.push(PortSpec {
            name: Some("http".into()),
            container_port: 8080,
            host_port: Some(18080),
            protocol: Protocol::Tcp,
        });
        spec.health = Some(HealthCheck::with_defaults(ProbeAction::Http {
            port: 8080,
            path: "/".into(),
        }));
        spec.liveness = Some(HealthCheck::with_defaults(ProbeAction::Exec {
            command: vec!["true".into()],
        }));
        spec.placement.constraints.push(LabelConstraint {
            key: "zone".into(),
            op: ConstraintOp::In,
            values: vec!["a".into(), "b".into()],
        });
        spec.placement.spread = SpreadMode::BinPack;
        spec.traffic.revision_weights.insert(1, 90);
        spec.stop_after_disconnect = Some(Duration::from_secs(30));
        spec.labels.insert("tier".into(), "front".into());
        spec.pod_labels.insert("app".into(), "web".into());
        spec.secret_env
            .insert("TOKEN".into(), Secret::new("s3cret"));
        spec.vertical_autoscale = Some(crate::model::VerticalAutoscale {
            mode: crate::model::VerticalMode::Recreate,
            min_allowed: Resources {
                cpu_millis: 50,
                memory_bytes: 0,
            },
            max_allowed: Resources {
                cpu_millis: 0,
                memory_bytes: 1 << 30,
            },
            controls_cpu: false,
            controls_memory: true,
            source: Some("web-vpa".into()),
        });
        spec
    }

    #[test]
    fn withheld_secrets_show_names_only_and_are_refused_as_input() {
        let mut wire = pb::WorkloadSpec::from(&full_spec());
        assert_eq!(
            wire.secret_env.get("TOKEN").map(String::as_str),
            Some("s3cret")
        );
        wire.withhold_secrets();
        assert!(wire.secret_env.is_empty());
        assert_eq!(wire.withheld_secrets, ["TOKEN"]);
        let err = WorkloadSpec::try_from(wire).expect_err("a withheld copy is not a spec");
        assert_eq!(err.field, "withheld_secrets");
        assert!(err.to_string().contains("TOKEN"), "{err}");

        let mut wire = pb::WorkloadSpec::from(&full_spec());
        wire.env.insert("TOKEN".into(), "plain".into());
        let err = WorkloadSpec::try_from(wire).expect_err("one name, two values");
        assert!(err.to_string().contains("TOKEN is set both"), "{err}");
    }

    #[test]
    fn service_spec_round_trips() {
        let spec = full_spec();
        let wire = pb::WorkloadSpec::from(&spec);
        assert_eq!(WorkloadSpec::try_from(wire), Ok(spec));
    }

    #[test]
    fn missing_required_fields_are_named() {
        let mut wire = pb::WorkloadSpec::from(&full_spec());
        wire.image.clear();
        let err = WorkloadSpec::try_from(wire).expect_err("image is required");
        assert_eq!(err.field, "image");

        let mut wire = pb::WorkloadSpec::from(&full_spec());
        wire.ports[0].container_port = 70000;
        let err = WorkloadSpec::try_from(wire).expect_err("port out of range");
        assert_eq!(err.field, "ports[0].container_port");
        assert!(err.to_string().contains("70000"), "{err}");

        let mut wire = pb::WorkloadSpec::from(&full_spec());
        wire.health.as_mut().expect("health set").action = None;
        let err = WorkloadSpec::try_from(wire).expect_err("probe action is required");
        assert_eq!(err.field, "health.action");

        let mut wire = pb::WorkloadSpec::from(&full_spec());
        let vertical = wire.vertical_autoscale.as_mut().expect("vertical set");
        vertical.controls_memory = false;
        let err = WorkloadSpec::try_from(wire).expect_err("controls nothing");
        assert_eq!(err.field, "vertical_autoscale.controls_cpu");

        let mut wire = pb::WorkloadSpec::from(&full_spec());
        let vertical = wire.vertical_autoscale.as_mut().expect("vertical set");
        vertical.min_allowed = Some(pb::Resources {
            cpu_millis: 0,
            memory_bytes: 2 << 30,
        });
        let err = WorkloadSpec::try_from(wire).expect_err("min above max");
        assert_eq!(err.field, "vertical_autoscale.min_allowed");
    }

    #[test]
    fn allocation_and_status_round_trip() {
        let alloc = Allocation {
            id: "web-1".into(),
            service: "web".into(),
            revision: 2,
            node: "n1".into(),
            resources: Resources {
                cpu_millis: 1,
                memory_bytes: 2,
            },
            desired: DesiredState::Stop,
            created_unix_ms: 5,
        };
        assert_eq!(
            Allocation::try_from(pb::Allocation::from(&alloc)),
            Ok(alloc)
        );
        let status = AllocStatus {
            state: AllocState::Healthy,
            message: "ok".into(),
            container_id: "c1".into(),
            restarts: 2,
            host_ports: [(8080, 32768)].into_iter().collect(),
            usage: Resources::default(),
            image_failure: true,
        };
        assert_eq!(
            AllocStatus::try_from(pb::AllocStatus::from(&status)),
            Ok(status)
        );
        let err = AllocStatus::try_from(pb::AllocStatus::default()).expect_err("state required");
        assert_eq!(err.field, "state");
    }

    #[test]
    fn node_info_requires_id_address_capacity() {
        let mut wire = pb::NodeInfo {
            id: "n1".into(),
            generation: 1,
            address: "127.0.0.1".into(),
            capacity: None,
            labels: Default::default(),
        };
        assert_eq!(
            NodeInfo::try_from(wire.clone())
                .expect_err("capacity")
                .field,
            "capacity"
        );
        wire.capacity = Some(pb::Resources::default());
        wire.id.clear();
        assert_eq!(NodeInfo::try_from(wire).expect_err("id").field, "id");
    }
}

impl From<&crate::model::RevisionTraffic> for pb::RevisionTraffic {
    fn from(t: &crate::model::RevisionTraffic) -> Self {
        pb::RevisionTraffic {
            service: t.service.clone(),
            revision: t.revision,
            connections: t.connections,
            failed: t.failed,
        }
    }
}

/// Infallible: every value is valid; a receiver ignores entries for allocations it does not
/// know.
impl From<&crate::model::ReplicaTraffic> for pb::ReplicaTraffic {
    fn from(t: &crate::model::ReplicaTraffic) -> Self {
        pb::ReplicaTraffic {
            allocation_id: t.allocation_id.clone(),
            connections: t.connections,
            active: t.active,
        }
    }
}

impl From<pb::ReplicaTraffic> for crate::model::ReplicaTraffic {
    fn from(t: pb::ReplicaTraffic) -> Self {
        crate::model::ReplicaTraffic {
            allocation_id: t.allocation_id,
            connections: t.connections,
            active: t.active,
        }
    }
}

impl From<pb::RevisionTraffic> for crate::model::RevisionTraffic {
    fn from(t: pb::RevisionTraffic) -> Self {
        crate::model::RevisionTraffic {
            service: t.service,
            revision: t.revision,
            connections: t.connections,
            failed: t.failed,
        }
    }
}

impl From<&crate::model::AllocUsage> for pb::AllocUsage {
    fn from(u: &crate::model::AllocUsage) -> Self {
        pb::AllocUsage {
            allocation_id: u.allocation_id.clone(),
            cpu_millis: u.cpu_millis,
            memory_working_set_bytes: u.memory_working_set_bytes,
            memory_limit_bytes: u.memory_limit_bytes.unwrap_or(0),
            oom_kills: u.oom_kills,
            window_ms: u.window_ms,
        }
    }
}

/// Infallible: every value is valid (0 is no memory limit); a receiver checks the
/// allocation is its sender's.
impl From<pb::AllocUsage> for crate::model::AllocUsage {
    fn from(u: pb::AllocUsage) -> Self {
        crate::model::AllocUsage {
            allocation_id: u.allocation_id,
            cpu_millis: u.cpu_millis,
            memory_working_set_bytes: u.memory_working_set_bytes,
            memory_limit_bytes: Some(u.memory_limit_bytes).filter(|&b| b > 0),
            oom_kills: u.oom_kills,
            window_ms: u.window_ms,
        }
    }
}

#[cfg(test)]
mod revision_traffic_tests {
    use super::*;
    use crate::model::{AllocUsage, RevisionTraffic};

    #[test]
    fn alloc_usage_round_trips_and_0_is_no_limit() {
        let usage = AllocUsage {
            allocation_id: "web.1".into(),
            cpu_millis: 250,
            memory_working_set_bytes: 50 << 20,
            memory_limit_bytes: Some(256 << 20),
            oom_kills: 1,
            window_ms: 5000,
        };
        assert_eq!(AllocUsage::from(pb::AllocUsage::from(&usage)), usage);
        let unlimited = AllocUsage {
            memory_limit_bytes: None,
            ..usage
        };
        assert_eq!(pb::AllocUsage::from(&unlimited).memory_limit_bytes, 0);
        assert_eq!(
            AllocUsage::from(pb::AllocUsage::from(&unlimited)),
            unlimited
        );
    }

    #[test]
    fn revision_traffic_round_trips() {
        let traffic = RevisionTraffic {
            service: "web".into(),
            revision: 3,
            connections: 120,
            failed: 4,
        };
        let wire = pb::RevisionTraffic::from(&traffic);
        assert_eq!((wire.revision, wire.connections, wire.failed), (3, 120, 4));
        assert_eq!(RevisionTraffic::from(wire), traffic);
    }
}

impl From<&crate::model::DesiredAllocation> for pb::DesiredAllocation {
    fn from(d: &crate::model::DesiredAllocation) -> Self {
        pb::DesiredAllocation {
            allocation: Some((&d.allocation).into()),
            spec: Some((&d.spec).into()),
        }
    }
}

impl TryFrom<pb::DesiredAllocation> for crate::model::DesiredAllocation {
    type Error = ConvertError;

    fn try_from(d: pb::DesiredAllocation) -> Result<Self, ConvertError> {
        const M: &str = "DesiredAllocation";
        let allocation = d
            .allocation
            .ok_or_else(|| ConvertError::missing(M, "allocation"))?;
        let allocation =
            Allocation::try_from(allocation).map_err(|e| e.in_field(M, "allocation"))?;
        let spec = d.spec.ok_or_else(|| ConvertError::missing(M, "spec"))?;
        let spec = WorkloadSpec::try_from(spec).map_err(|e| e.in_field(M, "spec"))?;
        Ok(crate::model::DesiredAllocation { allocation, spec })
    }
}

impl From<&crate::model::DesiredSet> for pb::DesiredSet {
    fn from(s: &crate::model::DesiredSet) -> Self {
        pb::DesiredSet {
            version: s.version,
            allocations: s.allocations.iter().map(Into::into).collect(),
            store_id: s.store_id.clone(),
            cluster_dns: s.cluster_dns.as_ref().map(Into::into),
        }
    }
}

impl TryFrom<pb::DesiredSet> for crate::model::DesiredSet {
    type Error = ConvertError;

    fn try_from(s: pb::DesiredSet) -> Result<Self, ConvertError> {
        const M: &str = "DesiredSet";
        let allocations = s
            .allocations
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                crate::model::DesiredAllocation::try_from(d)
                    .map_err(|e| e.in_field(M, &format!("allocations[{i}]")))
            })
            .collect::<Result<_, _>>()?;
        let cluster_dns = s
            .cluster_dns
            .map(crate::model::ClusterDns::try_from)
            .transpose()
            .map_err(|e| e.in_field(M, "cluster_dns"))?;
        Ok(crate::model::DesiredSet {
            version: s.version,
            allocations,
            store_id: s.store_id,
            cluster_dns,
        })
    }
}

impl From<&crate::model::ClusterDns> for pb::ClusterDns {
    fn from(d: &crate::model::ClusterDns) -> Self {
        pb::ClusterDns {
            address: d.address.to_string(),
            domain: d.domain.clone(),
            service_network: d.service_network.clone(),
        }
    }
}

impl TryFrom<pb::ClusterDns> for crate::model::ClusterDns {
    type Error = ConvertError;

    fn try_from(d: pb::ClusterDns) -> Result<Self, ConvertError> {
        let address = d.address.parse().map_err(|e| {
            ConvertError::new(
                "ClusterDns",
                "address",
                format!("{:?} is not an IPv4 address: {e}", d.address),
            )
        })?;
        Ok(crate::model::ClusterDns {
            address,
            domain: d.domain,
            service_network: d.service_network,
        })
    }
}

impl From<&crate::model::RouteEndpoint> for pb::RouteEndpoint {
    fn from(e: &crate::model::RouteEndpoint) -> Self {
        pb::RouteEndpoint {
            allocation_id: e.allocation_id.clone(),
            node: e.node.clone(),
            revision: e.revision,
            address: e.address.map(|a| a.to_string()).unwrap_or_default(),
            weight: e.weight,
            workload: e.workload.clone(),
            pool: e.pool,
            container_port: e.container_port.into(),
        }
    }
}

/// An empty address means "not known yet"; anything else must be `ip:port`.
impl TryFrom<pb::RouteEndpoint> for crate::model::RouteEndpoint {
    type Error = ConvertError;

    fn try_from(e: pb::RouteEndpoint) -> Result<Self, ConvertError> {
        const M: &str = "RouteEndpoint";
        if e.allocation_id.is_empty() {
            return Err(ConvertError::missing(M, "allocation_id"));
        }
        if e.node.is_empty() {
            return Err(ConvertError::missing(M, "node"));
        }
        let address = if e.address.is_empty() {
            None
        } else {
            Some(e.address.parse().map_err(|_| {
                ConvertError::new(M, "address", format!("`{}` is not `ip:port`", e.address))
            })?)
        };
        Ok(crate::model::RouteEndpoint {
            allocation_id: e.allocation_id,
            node: e.node,
            revision: e.revision,
            address,
            weight: e.weight,
            workload: e.workload,
            pool: e.pool,
            container_port: port(M, "container_port", e.container_port)?,
        })
    }
}

impl From<&crate::model::ServiceRoute> for pb::ServiceRoute {
    fn from(r: &crate::model::ServiceRoute) -> Self {
        pb::ServiceRoute {
            service: r.service.clone(),
            service_port: r.node_port.unwrap_or(r.port).into(),
            node_port: r.node_port.map_or(0, u32::from),
            cluster_ip: r.cluster_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            port: r.port.into(),
            port_name: r.port_name.clone(),
            strategy: strategy_to_pb(r.strategy).into(),
            pool_weights: r.pool_weights.clone().into_iter().collect(),
            endpoints: r.endpoints.iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::ServiceRoute> for crate::model::ServiceRoute {
    type Error = ConvertError;

    fn try_from(r: pb::ServiceRoute) -> Result<Self, ConvertError> {
        const M: &str = "ServiceRoute";
        if r.service.is_empty() {
            return Err(ConvertError::missing(M, "service"));
        }
        let strategy =
            strategy_from_pb(r.strategy).map_err(|e| ConvertError::new(M, "strategy", e.reason))?;
        let endpoints = r
            .endpoints
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                crate::model::RouteEndpoint::try_from(e)
                    .map_err(|e| e.in_field(M, &format!("endpoints[{i}]")))
            })
            .collect::<Result<_, _>>()?;
        let cluster_ip = match r.cluster_ip.as_str() {
            "" => None,
            text => Some(text.parse::<std::net::Ipv4Addr>().map_err(|e| {
                ConvertError::new(
                    M,
                    "cluster_ip",
                    format!("{text:?} is not an IPv4 address: {e}"),
                )
            })?),
        };
        // An older coordinator sends no `port`: every service on node addresses, at
        // `service_port`.
        let (service_port, node_port) = if r.port == 0 {
            let listen = port(M, "service_port", r.service_port)?;
            (listen, Some(listen))
        } else {
            let node_port = match r.node_port {
                0 => None,
                n => Some(port(M, "node_port", n)?),
            };
            (port(M, "port", r.port)?, node_port)
        };
        Ok(crate::model::ServiceRoute {
            service: r.service,
            port: service_port,
            port_name: r.port_name,
            cluster_ip,
            node_port,
            strategy,
            pool_weights: r.pool_weights.into_iter().collect(),
            endpoints,
        })
    }
}

impl From<&crate::model::RoutePolicy> for pb::RoutePolicy {
    fn from(p: &crate::model::RoutePolicy) -> Self {
        pb::RoutePolicy {
            version: p.version,
            services: p.services.iter().map(Into::into).collect(),
            store_id: p.store_id.clone(),
        }
    }
}

impl TryFrom<pb::RoutePolicy> for crate::model::RoutePolicy {
    type Error = ConvertError;

    fn try_from(p: pb::RoutePolicy) -> Result<Self, ConvertError> {
        const M: &str = "RoutePolicy";
        let services = p
            .services
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                crate::model::ServiceRoute::try_from(s)
                    .map_err(|e| e.in_field(M, &format!("services[{i}]")))
            })
            .collect::<Result<_, _>>()?;
        Ok(crate::model::RoutePolicy {
            version: p.version,
            services,
            store_id: p.store_id,
        })
    }
}

#[cfg(test)]
mod push_tests {
    use super::*;
    use crate::model::{DesiredAllocation, DesiredSet, RouteEndpoint, RoutePolicy, ServiceRoute};

    fn policy() -> RoutePolicy {
        RoutePolicy {
            store_id: "0123abcd".into(),
            version: 7 << 32,
            services: vec![ServiceRoute {
                service: "web".into(),
                port: 80,
                port_name: Some("http".into()),
                cluster_ip: Some(std::net::Ipv4Addr::new(10, 96, 0, 7)),
                node_port: Some(30080),
                strategy: Strategy::LeastConn,
                pool_weights: [(1, 90), ((1 << 32) | 2, 10)].into_iter().collect(),
                endpoints: vec![
                    RouteEndpoint {
                        allocation_id: "web.1".into(),
                        node: "n1".into(),
                        revision: 1,
                        address: Some("10.0.0.1:31000".parse().expect("address")),
                        weight: 1,
                        workload: "web-v1".into(),
                        pool: 1,
                        container_port: 8080,
                    },
                    RouteEndpoint {
                        allocation_id: "web.2".into(),
                        node: "n2".into(),
                        revision: 2,
                        address: None,
                        weight: 3,
                        workload: "web-v2".into(),
                        pool: (1 << 32) | 2,
                        container_port: 9090,
                    },
                ],
            }],
        }
    }

    #[test]
    fn route_policy_round_trips() {
        let wire = pb::RoutePolicy::from(&policy());
        let endpoint = &wire.services[0].endpoints[1];
        assert_eq!(endpoint.address, "");
        assert_eq!(
            (
                endpoint.workload.as_str(),
                endpoint.pool,
                endpoint.container_port
            ),
            ("web-v2", (1 << 32) | 2, 9090)
        );
        assert_eq!(RoutePolicy::try_from(wire), Ok(policy()));
    }

    #[test]
    fn route_policy_of_an_older_coordinator_puts_services_on_node_addresses() {
        let mut wire = pb::RoutePolicy::from(&policy());
        assert_eq!(
            wire.services[0].service_port, 30080,
            "what older agents listen on"
        );
        wire.services[0].port = 0;
        wire.services[0].node_port = 0;
        wire.services[0].service_port = 8080;
        let route = &RoutePolicy::try_from(wire).expect("valid").services[0];
        assert_eq!((route.port, route.node_port), (8080, Some(8080)));
    }

    #[test]
    fn route_policy_errors_name_the_field() {
        let check = |edit: fn(&mut pb::RoutePolicy), field: &str, text: &str| {
            let mut wire = pb::RoutePolicy::from(&policy());
            edit(&mut wire);
            let err = RoutePolicy::try_from(wire).expect_err(field);
            assert_eq!((err.message, err.field.as_str()), ("RoutePolicy", field));
            assert!(err.to_string().contains(text), "{err}");
        };
        check(
            |w| w.services[0].node_port = 70_000,
            "services[0].node_port",
            "70000",
        );
        check(
            |w| {
                w.services[0].port = 0;
                w.services[0].service_port = 0;
            },
            "services[0].service_port",
            "port 0",
        );
        check(
            |w| w.services[0].cluster_ip = "10.96.0.300".into(),
            "services[0].cluster_ip",
            "10.96.0.300",
        );
        check(
            |w| w.services[0].endpoints[1].container_port = 0,
            "services[0].endpoints[1].container_port",
            "port 0",
        );
        check(
            |w| w.services[0].endpoints[0].container_port = 65_536,
            "services[0].endpoints[0].container_port",
            "65536",
        );
        check(
            |w| w.services[0].service.clear(),
            "services[0].service",
            "missing",
        );
        check(
            |w| w.services[0].strategy = 99,
            "services[0].strategy",
            "99",
        );
        check(
            |w| w.services[0].endpoints[1].address = "n2.example:80".into(),
            "services[0].endpoints[1].address",
            "n2.example:80",
        );
        check(
            |w| w.services[0].endpoints[0].node.clear(),
            "services[0].endpoints[0].node",
            "missing",
        );
        check(
            |w| w.services[0].endpoints[0].allocation_id.clear(),
            "services[0].endpoints[0].allocation_id",
            "missing",
        );
    }

    fn desired() -> DesiredSet {
        let spec = WorkloadSpec::new("web", "web:1");
        DesiredSet {
            store_id: "0123abcd".into(),
            version: 3,
            allocations: vec![DesiredAllocation {
                allocation: Allocation {
                    id: "web.1".into(),
                    service: "web".into(),
                    revision: 1,
                    node: "n1".into(),
                    resources: Resources::default(),
                    desired: DesiredState::Run,
                    created_unix_ms: 1,
                },
                spec,
            }],
            cluster_dns: Some(crate::model::ClusterDns {
                address: std::net::Ipv4Addr::new(10, 96, 0, 10),
                domain: "cluster.local".into(),
                service_network: "10.96.0.0/16".into(),
            }),
        }
    }

    #[test]
    fn desired_set_round_trips_and_errors_name_the_field() {
        assert_eq!(
            DesiredSet::try_from(pb::DesiredSet::from(&desired())),
            Ok(desired())
        );
        let mut wire = pb::DesiredSet::from(&desired());
        if let Some(dns) = wire.cluster_dns.as_mut() {
            dns.address = "ten".into();
        }
        let err = DesiredSet::try_from(wire).expect_err("dns address");
        assert_eq!(err.field, "cluster_dns.address");
        let mut wire = pb::DesiredSet::from(&desired());
        wire.allocations[0].spec = None;
        let err = DesiredSet::try_from(wire).expect_err("spec");
        assert_eq!(err.field, "allocations[0].spec");
        let mut wire = pb::DesiredSet::from(&desired());
        wire.allocations[0].allocation = None;
        assert_eq!(
            DesiredSet::try_from(wire).expect_err("allocation").field,
            "allocations[0].allocation"
        );
        let mut wire = pb::DesiredSet::from(&desired());
        if let Some(a) = wire.allocations[0].allocation.as_mut() {
            a.id.clear();
        }
        let err = DesiredSet::try_from(wire).expect_err("id");
        assert_eq!(err.field, "allocations[0].allocation.id");
        assert_eq!(err.message, "DesiredSet");
        let mut wire = pb::DesiredSet::from(&desired());
        if let Some(s) = wire.allocations[0].spec.as_mut() {
            s.image.clear();
        }
        assert_eq!(
            DesiredSet::try_from(wire).expect_err("image").field,
            "allocations[0].spec.image"
        );
    }
}
