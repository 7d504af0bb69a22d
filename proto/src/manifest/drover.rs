//! Drover's own manifest format, `apiVersion: drover.dev/v1`, `kind: Service`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::constraint::parse_constraint;
use super::error::{Errors, FieldError, at};
use super::input::{
    CountOrPercent, Cpu, Dur, EnvValue, Memory, Proto, Text, count_at_least, port_number,
    replica_count,
};
use super::validate;
use crate::model::{
    CanaryStep, ClusterIp, ConstraintOp, HealthCheck, LabelConstraint, PortSpec, ProbeAction,
    Protocol, ReplicaCount, Resources, RestartMode, Secret, Service, ServicePort, ServiceType,
    SpreadMode, Strategy, TargetPort, UpdateKind, UpdateStrategy, WorkloadSpec,
};

/// `apiVersion` of Drover's format.
pub(crate) const API_VERSION: &str = "drover.dev/v1";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Document {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Metadata {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    image: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, EnvValue>,
    replicas: Option<i64>,
    #[serde(default)]
    resources: ResourcesInput,
    #[serde(default)]
    ports: Vec<PortInput>,
    health: Option<CheckInput>,
    liveness: Option<CheckInput>,
    #[serde(default)]
    restart: RestartInput,
    #[serde(default)]
    placement: PlacementInput,
    #[serde(default)]
    update: UpdateInput,
    #[serde(default)]
    traffic: TrafficInput,
    stop_grace_period: Option<Dur>,
    stop_after_disconnect: Option<Dur>,
    service: Option<ServiceInput>,
    autoscale: Option<super::autoscale::AutoscaleInput>,
    vertical_autoscale: Option<super::vertical::VerticalInput>,
}

/// How the document's service is reached; it has one when a port has a `servicePort`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceInput {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourcesInput {
    cpu: Option<Cpu>,
    memory: Option<Memory>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortInput {
    name: Option<String>,
    container_port: i64,
    service_port: Option<i64>,
    node_port: Option<i64>,
    host_port: Option<i64>,
    protocol: Option<Proto>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CheckInput {
    http: Option<HttpInput>,
    tcp: Option<TcpInput>,
    exec: Option<ExecInput>,
    interval: Option<Dur>,
    timeout: Option<Dur>,
    success_threshold: Option<u32>,
    failure_threshold: Option<u32>,
    start_period: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpInput {
    port: i64,
    path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpInput {
    port: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecInput {
    command: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RestartInput {
    policy: Option<RestartMode>,
    max_attempts: Option<u32>,
    initial_backoff: Option<Dur>,
    max_backoff: Option<Dur>,
    reset_after: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacementInput {
    #[serde(default)]
    constraints: Vec<String>,
    spread: Option<SpreadMode>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpdateInput {
    strategy: Option<KindInput>,
    max_surge: Option<CountOrPercent>,
    max_unavailable: Option<CountOrPercent>,
    min_ready: Option<Dur>,
    progress_deadline: Option<Dur>,
    auto_revert: Option<bool>,
    revision_history_limit: Option<i64>,
    paused: Option<bool>,
    canary: Option<CanaryInput>,
}

/// `spec.update.strategy`, spelled as in a Kubernetes Deployment.
#[derive(Debug, Clone, Copy, Deserialize)]
enum KindInput {
    RollingUpdate,
    Recreate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryInput {
    #[serde(default)]
    steps: Vec<StepInput>,
    analysis: Option<AnalysisInput>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepInput {
    weight: i64,
    pause: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AnalysisInput {
    max_failure_rate: Option<Text>,
    min_sample: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrafficInput {
    strategy: Option<Strategy>,
    #[serde(default)]
    weights: BTreeMap<u64, u32>,
}

impl Document {
    /// The workload this document declares, and its service when a port has a
    /// `servicePort` (named like the workload, selecting it by [`crate::model::WORKLOAD_LABEL`], reached
    /// on every node's address unless `spec.service.type` says otherwise); errors use the
    /// document's field paths. Values that do not convert are replaced by placeholders that
    /// [`super::validate`] also refuses at the same path, so the caller can merge both lists.
    pub(crate) fn into_spec(self) -> (WorkloadSpec, Option<Service>, Vec<FieldError>) {
        let mut errors = Errors::default();
        let input = self.spec;
        let mut spec = WorkloadSpec::new(self.metadata.name, input.image);
        spec.pod_labels = self.metadata.labels.clone();
        spec.labels = self.metadata.labels;
        spec.command = input.command;
        spec.args = input.args;
        for (name, value) in input.env {
            match value {
                EnvValue::Plain(value) => spec.env.insert(name, value),
                EnvValue::Secret(value) => {
                    spec.secret_env.insert(name, Secret::new(value));
                    None
                }
            };
        }
        if let Some(replicas) = input.replicas {
            spec.replicas = errors
                .check("spec.replicas", count_at_least(replicas, 0))
                .unwrap_or(0);
        }
        spec.resources = Resources {
            cpu_millis: input.resources.cpu.map_or(0, |c| c.0),
            memory_bytes: input.resources.memory.map_or(0, |m| m.0),
        };
        let mut published = Vec::new();
        spec.ports = input
            .ports
            .into_iter()
            .enumerate()
            .map(|(index, port)| convert_port(&mut errors, index, port, &mut published))
            .collect();
        spec.health = input
            .health
            .and_then(|check| convert_check(&mut errors, "spec.health", check));
        spec.liveness = input
            .liveness
            .and_then(|check| convert_check(&mut errors, "spec.liveness", check));
        convert_restart(&mut spec, input.restart);
        spec.placement.constraints = input
            .placement
            .constraints
            .iter()
            .enumerate()
            .map(|(index, text)| convert_constraint(&mut errors, index, text))
            .collect();
        if let Some(spread) = input.placement.spread {
            spec.placement.spread = spread;
        }
        spec.update = convert_update(&mut errors, input.update);
        spec.traffic.revision_weights = input.traffic.weights;
        if let Some(period) = input.stop_grace_period {
            spec.stop_grace_period = period.0;
        }
        spec.stop_after_disconnect = input.stop_after_disconnect.map(|d| d.0);
        if let Some(autoscale) = input.autoscale {
            if autoscale.scale_target_ref.is_some() {
                errors.push(
                    "spec.autoscale.scaleTargetRef",
                    "spec.autoscale scales the document's own workload; scaleTargetRef is for a HorizontalPodAutoscaler",
                );
            } else {
                spec.autoscale =
                    autoscale.convert(&mut errors, "spec.autoscale", Some(spec.resources), None);
            }
        }
        if let Some(vertical) = input.vertical_autoscale {
            if vertical.target_ref.is_some() {
                errors.push(
                    "spec.verticalAutoscale.targetRef",
                    "spec.verticalAutoscale resizes the document's own workload; targetRef is for a VerticalPodAutoscaler",
                );
            }
            spec.vertical_autoscale = vertical.convert(&mut errors, "spec.verticalAutoscale", None);
        }
        let service = service(
            &mut errors,
            &spec.name,
            published,
            input.service,
            input.traffic.strategy,
        );
        (spec, service, errors.0)
    }
}

/// The document's service: its published ports, how it is reached, its strategy.
fn service(
    errors: &mut Errors,
    name: &str,
    ports: Vec<(usize, ServicePort)>,
    input: Option<ServiceInput>,
    strategy: Option<Strategy>,
) -> Option<Service> {
    if ports.is_empty() {
        if input.is_some() {
            errors.push(
                "spec.service",
                "no port has a servicePort, so there is no service to configure",
            );
        }
        if strategy.is_some() {
            errors.push(
                "spec.traffic.strategy",
                "the strategy is the service's, and no port has a servicePort",
            );
        }
        return None;
    }
    let mut service = Service::for_workload(name, name);
    let indexes: Vec<usize> = ports.iter().map(|(index, _)| *index).collect();
    service.ports = ports.into_iter().map(|(_, port)| port).collect();
    if service.ports.len() > 1 {
        // A service of several ports names each (SRV records use them); this format lets
        // them be unnamed, as it always has.
        for port in service.ports.iter_mut().filter(|p| p.name.is_none()) {
            port.name = Some(format!("port-{}", port.port));
        }
    }
    service.kind = ServiceType::LoadBalancer;
    service.strategy = strategy.unwrap_or_default();
    let input = input.unwrap_or(ServiceInput {
        kind: None,
        cluster_ip: None,
    });
    match input.kind.as_deref() {
        None | Some("LoadBalancer") => {}
        Some("ClusterIP") => service.kind = ServiceType::ClusterIp,
        Some("NodePort") => service.kind = ServiceType::NodePort,
        Some(other) => errors.push(
            "spec.service.type",
            format!("type \"{other}\" is not one of ClusterIP, NodePort, LoadBalancer"),
        ),
    }
    match input.cluster_ip.as_deref() {
        None | Some("") => {}
        Some("None") => service.cluster_ip = ClusterIp::Headless,
        Some(text) => match text.parse::<Ipv4Addr>() {
            Ok(ip) => service.cluster_ip = ClusterIp::Fixed(ip),
            Err(_) => errors.push(
                "spec.service.clusterIP",
                format!("\"{text}\" is not an IPv4 address nor \"None\""),
            ),
        },
    }
    for error in super::validate::service(&service) {
        errors.push(document_path(&error.path, &indexes), error.message);
    }
    Some(service)
}

/// The path in this document of a field `validate::service` names in the Service form:
/// `spec.ports[k].port` of the k-th published port is `spec.ports[i].servicePort` of the
/// document's i-th port; the rest is under `spec.service`.
fn document_path(path: &str, indexes: &[usize]) -> String {
    let published = path
        .strip_prefix("spec.ports[")
        .and_then(|rest| rest.split_once("]."))
        .and_then(|(k, field)| Some((indexes.get(k.parse::<usize>().ok()?)?, field)));
    match published {
        Some((index, field)) => {
            let field = match field {
                "port" => "servicePort",
                "targetPort" => "containerPort",
                other => other,
            };
            format!("spec.ports[{index}].{field}")
        }
        None => match path.strip_prefix("spec.") {
            Some(rest) => format!("spec.service.{rest}"),
            None => format!("spec.service ({path})"),
        },
    }
}

/// A container port; one with a `servicePort` also adds a port to `published`, with its
/// index.
fn convert_port(
    errors: &mut Errors,
    index: usize,
    port: PortInput,
    published: &mut Vec<(usize, ServicePort)>,
) -> PortSpec {
    let base = format!("spec.ports[{index}]");
    let mut number = |field: &str, value: i64| {
        errors
            .check(at(&base, field), port_number(value))
            .unwrap_or(0)
    };
    let container_port = number("containerPort", port.container_port);
    let service_port = port.service_port.map(|p| number("servicePort", p));
    let node_port = port.node_port.map(|p| number("nodePort", p));
    let host_port = port.host_port.map(|p| number("hostPort", p));
    let protocol = port.protocol.map_or(Protocol::Tcp, |p| p.0);
    match service_port {
        // A value that did not convert is reported already; the service is not checked
        // again over its placeholder.
        Some(0) => {}
        Some(_) if container_port == 0 => {}
        Some(service_port) => published.push((
            index,
            ServicePort {
                name: port.name.clone(),
                port: service_port,
                target: TargetPort::Number(container_port),
                node_port: node_port.filter(|p| *p != 0),
                protocol,
            },
        )),
        None if node_port.is_some() => {
            errors.push(at(&base, "nodePort"), "a nodePort needs a servicePort");
        }
        None => {}
    }
    PortSpec {
        name: port.name,
        container_port,
        host_port,
        protocol,
    }
}

fn convert_check(errors: &mut Errors, base: &str, check: CheckInput) -> Option<HealthCheck> {
    let mut actions = Vec::new();
    if let Some(http) = check.http {
        let port = errors
            .check(format!("{base}.http.port"), port_number(http.port))
            .unwrap_or(0);
        let path = http.path.unwrap_or_else(|| "/".to_string());
        actions.push(ProbeAction::Http { port, path });
    }
    if let Some(tcp) = check.tcp {
        let port = errors
            .check(format!("{base}.tcp.port"), port_number(tcp.port))
            .unwrap_or(0);
        actions.push(ProbeAction::Tcp { port });
    }
    if let Some(exec) = check.exec {
        actions.push(ProbeAction::Exec {
            command: exec.command,
        });
    }
    if actions.len() != 1 {
        errors.push(
            base,
            format!(
                "exactly one of http, tcp, exec is required, found {}",
                actions.len()
            ),
        );
        return None;
    }
    let mut health = HealthCheck::with_defaults(actions.remove(0));
    if let Some(interval) = check.interval {
        health.interval = interval.0;
    }
    if let Some(timeout) = check.timeout {
        health.timeout = timeout.0;
    }
    if let Some(threshold) = check.success_threshold {
        health.success_threshold = threshold;
    }
    if let Some(threshold) = check.failure_threshold {
        health.failure_threshold = threshold;
    }
    if let Some(period) = check.start_period {
        health.start_period = period.0;
    }
    Some(health)
}

fn convert_restart(spec: &mut WorkloadSpec, input: RestartInput) {
    let restart = &mut spec.restart;
    if let Some(mode) = input.policy {
        restart.mode = mode;
    }
    if let Some(attempts) = input.max_attempts {
        restart.max_attempts = attempts;
    }
    if let Some(backoff) = input.initial_backoff {
        restart.initial_backoff = backoff.0;
    }
    if let Some(backoff) = input.max_backoff {
        restart.max_backoff = backoff.0;
    }
    if let Some(after) = input.reset_after {
        restart.reset_after = after.0;
    }
}

fn convert_update(errors: &mut Errors, input: UpdateInput) -> UpdateStrategy {
    let base = "spec.update";
    let mut update = UpdateStrategy::drover_defaults();
    if let Some(kind) = input.strategy {
        update.kind = match kind {
            KindInput::RollingUpdate => UpdateKind::RollingUpdate,
            KindInput::Recreate => UpdateKind::Recreate,
        };
    }
    // A count that does not convert keeps the default, which `validate` accepts.
    let mut count = |field: &str, value: Option<CountOrPercent>, target: &mut ReplicaCount| {
        let converted = value.map(|value| replica_count(&value));
        if let Some(count) = converted.and_then(|c| errors.check(at(base, field), c)) {
            *target = count;
        }
    };
    count("maxSurge", input.max_surge, &mut update.max_surge);
    count(
        "maxUnavailable",
        input.max_unavailable,
        &mut update.max_unavailable,
    );
    if let Some(min_ready) = input.min_ready {
        update.min_ready = min_ready.0;
    }
    match input.progress_deadline {
        Some(deadline) => update.progress_deadline = deadline.0,
        // `validate` says the same at this path, without knowing it is the default.
        None if update.progress_deadline <= update.min_ready => errors.push(
            at(base, "progressDeadline"),
            format!(
                "progressDeadline {} (the default) must be longer than minReady {}",
                humantime::format_duration(update.progress_deadline),
                humantime::format_duration(update.min_ready)
            ),
        ),
        None => {}
    }
    if let Some(auto_revert) = input.auto_revert {
        update.auto_revert = auto_revert;
    }
    if let Some(limit) = input.revision_history_limit {
        let path = at(base, "revisionHistoryLimit");
        if let Some(limit) = errors.check(path, count_at_least(limit, 0)) {
            update.revision_history_limit = limit;
        }
    }
    update.paused = input.paused;
    if let Some(canary) = input.canary {
        convert_canary(errors, &mut update, canary);
    }
    update
}

fn convert_canary(errors: &mut Errors, update: &mut UpdateStrategy, input: CanaryInput) {
    let base = "spec.update.canary";
    if input.steps.is_empty() {
        errors.push(
            at(base, "steps"),
            "canary has no steps: give at least one step or leave canary out",
        );
    }
    update.canary = input
        .steps
        .into_iter()
        .enumerate()
        .map(|(index, step)| {
            // A weight that is not a u32 becomes 0, which `validate` refuses at this path.
            let weight = u32::try_from(step.weight)
                .map_err(|_| format!("weight {} is out of range 1..=99", step.weight));
            CanaryStep {
                weight: errors
                    .check(format!("{base}.steps[{index}].weight"), weight)
                    .unwrap_or(0),
                pause: step.pause.map_or(Duration::ZERO, |p| p.0),
            }
        })
        .collect();
    let Some(analysis) = input.analysis else {
        return;
    };
    let base = at(base, "analysis");
    if let Some(rate) = analysis.max_failure_rate {
        let rate = failure_rate(&rate.0).and_then(|bp| validate::failure_rate(bp).map(|()| bp));
        if let Some(bp) = errors.check(at(&base, "maxFailureRate"), rate) {
            update.analysis.max_failure_bp = bp;
        }
    }
    if let Some(sample) = analysis.min_sample {
        let sample = u64::try_from(sample)
            .map_err(|_| format!("must be >= 1, got {sample}"))
            .and_then(|n| validate::min_sample(n).map(|()| n));
        if let Some(sample) = errors.check(at(&base, "minSample"), sample) {
            update.analysis.min_sample = sample;
        }
    }
}

/// A failure rate written as a percentage with at most two decimals (`"1%"`, `"0.5%"`), in
/// basis points.
fn failure_rate(text: &str) -> Result<u32, String> {
    let not_a_percentage =
        || format!("maxFailureRate \"{text}\" is not a percentage: write e.g. \"1%\" or \"0.5%\"");
    let number = text.strip_suffix('%').ok_or_else(not_a_percentage)?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, "00"));
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return Err(not_a_percentage());
    }
    if fraction.len() > 2 {
        return Err(format!(
            "maxFailureRate \"{text}\" has more than two decimals: the rate is kept in basis points (0.01%)"
        ));
    }
    let out_of_range = || format!("maxFailureRate {text} is out of range 0%..=100%");
    let whole: u32 = whole.parse().map_err(|_| out_of_range())?;
    let fraction: u32 = format!("{fraction:0<2}")
        .parse()
        .map_err(|_| out_of_range())?;
    whole
        .checked_mul(100)
        .and_then(|bp| bp.checked_add(fraction))
        .ok_or_else(out_of_range)
}

fn convert_constraint(errors: &mut Errors, index: usize, text: &str) -> LabelConstraint {
    let parsed = parse_constraint(text).map_err(|err| err.0);
    errors
        .check(format!("spec.placement.constraints[{index}]"), parsed)
        .unwrap_or_else(|| LabelConstraint {
            key: String::new(),
            op: ConstraintOp::Exists,
            values: Vec::new(),
        })
}
