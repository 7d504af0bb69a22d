//! Conversion of a Kubernetes Deployment into a [`WorkloadSpec`], with Kubernetes field paths.

use std::collections::BTreeMap;
use std::time::Duration;

use super::constraint;
use super::error::{Errors, FieldError, at};
use super::input::{
    CountOrPercent, IntOrName, count_at_least, port_number, replica_count, seconds_at_least,
};
use super::kube::{
    Container, ContainerPort, Deployment, DeploymentSpec, DeploymentStrategy, ObjectMeta, Probe,
    ResourceList,
};
use super::validate;
use crate::model::{
    ConstraintOp, HealthCheck, LabelConstraint, PortSpec, ProbeAction, Protocol, ReplicaCount,
    Resources, UpdateKind, UpdateStrategy, WorkloadSpec,
};

const POD: &str = "spec.template.spec";
const CONTAINER: &str = "spec.template.spec.containers[0]";
/// Annotation of a Deployment that turns Drover's automatic revert on (`"true"`) or keeps it
/// off (`"false"`, as Kubernetes behaves).
const AUTO_REVERT: &str = "drover.dev/auto-revert";

/// A Deployment converted.
#[derive(Debug)]
pub(crate) struct Converted {
    /// The workload's spec.
    pub(crate) spec: WorkloadSpec,
}

/// Converts a Deployment; on errors the spec is a best effort, to join Services against.
pub(crate) fn convert(doc: Deployment) -> (Converted, Vec<FieldError>) {
    let mut errors = Errors::default();
    check_metadata(&mut errors, &doc.metadata);
    let deployment = doc.spec;
    let update = convert_update(&mut errors, &doc.metadata.annotations, &deployment);
    let template_labels = deployment.template.metadata.labels;
    let pod = deployment.template.spec;
    let container_count = pod.containers.len();
    let container = pod.containers.into_iter().next();
    let image = container
        .as_ref()
        .map(|c| c.image.clone())
        .unwrap_or_default();
    let mut spec = WorkloadSpec::new(doc.metadata.name, image);
    spec.labels = doc.metadata.labels;
    spec.update = update;
    if let Some(replicas) = deployment.replicas {
        spec.replicas = errors
            .check("spec.replicas", count_at_least(replicas, 0))
            .unwrap_or(0);
    }
    if deployment.selector.match_labels.is_empty() {
        errors.push("spec.selector.matchLabels", "must not be empty");
    }
    for (key, value) in &deployment.selector.match_labels {
        if template_labels.get(key) != Some(value) {
            errors.push(
                format!("spec.selector.matchLabels.{key}"),
                format!(
                    "selector {key}={value} does not match the template's labels ({})",
                    show_labels(&template_labels)
                ),
            );
        }
    }
    match container {
        None => errors.push(
            format!("{POD}.containers"),
            "one container is required, found none",
        ),
        Some(container) => convert_container(&mut errors, &mut spec, container),
    }
    if container_count > 1 {
        errors.push(
            format!("{POD}.containers[1]"),
            format!("Drover runs exactly one container per service, found {container_count}"),
        );
    }
    if let Some(policy) = pod.restart_policy.filter(|p| p != "Always") {
        errors.push(
            format!("{POD}.restartPolicy"),
            format!("restartPolicy \"{policy}\" is not supported: a Deployment only allows Always"),
        );
    }
    if let Some(seconds) = pod.termination_grace_period_seconds {
        let path = format!("{POD}.terminationGracePeriodSeconds");
        if let Some(period) = errors.check(path, seconds_at_least(seconds, 0)) {
            spec.stop_grace_period = period;
        }
    }
    for (key, value) in pod.node_selector {
        let constraint = LabelConstraint {
            key,
            op: ConstraintOp::Eq,
            values: vec![value],
        };
        let path = format!("{POD}.nodeSelector.{}", constraint.key);
        if errors.check(path, constraint::check(&constraint)).is_some() {
            spec.placement.constraints.push(constraint);
        }
    }
    spec.pod_labels = template_labels;
    let converted = Converted { spec };
    (converted, errors.0)
}

/// Checks the name and namespace of a Deployment or Service.
pub(crate) fn check_metadata(errors: &mut Errors, metadata: &ObjectMeta) {
    errors.check("metadata.name", validate::dns_label(&metadata.name));
    if let Some(namespace) = metadata.namespace.as_deref().filter(|n| *n != "default") {
        errors.push(
            "metadata.namespace",
            format!(
                "namespace \"{namespace}\" is not supported: Drover has no namespaces (use \"default\" or leave it out)"
            ),
        );
    }
}

/// Labels as `k=v, k=v` for messages.
pub(crate) fn show_labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "none".to_string();
    }
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(", ")
}

fn convert_container(errors: &mut Errors, spec: &mut WorkloadSpec, container: Container) {
    errors.check(at(CONTAINER, "image"), validate::image(&container.image));
    if let Some(policy) = container.image_pull_policy {
        if !matches!(policy.as_str(), "Always" | "IfNotPresent" | "Never") {
            errors.push(
                at(CONTAINER, "imagePullPolicy"),
                format!("unknown imagePullPolicy \"{policy}\" (Always, IfNotPresent or Never)"),
            );
        }
    }
    spec.command = container.command;
    spec.args = container.args;
    for (index, var) in container.env.into_iter().enumerate() {
        let path = format!("{CONTAINER}.env[{index}].name");
        if errors.check(&path, validate::env_name(&var.name)).is_none() {
            continue;
        }
        if spec.env.contains_key(&var.name) {
            errors.push(
                path,
                format!("environment variable {} is set twice", var.name),
            );
            continue;
        }
        spec.env
            .insert(var.name, var.value.map(|v| v.0).unwrap_or_default());
    }
    spec.ports = convert_ports(errors, container.ports);
    spec.resources = convert_resources(
        errors,
        &container.resources.requests,
        &container.resources.limits,
    );
    let names: BTreeMap<&str, u16> = spec
        .ports
        .iter()
        .filter_map(|p| Some((p.name.as_deref()?, p.container_port)))
        .collect();
    spec.health = container
        .readiness_probe
        .and_then(|probe| convert_probe(errors, &at(CONTAINER, "readinessProbe"), probe, &names));
    spec.liveness = container
        .liveness_probe
        .and_then(|probe| convert_probe(errors, &at(CONTAINER, "livenessProbe"), probe, &names));
}

/// Values already declared by earlier entries of a container's `ports`, with their index.
#[derive(Debug, Default)]
struct SeenPorts {
    ports: BTreeMap<u16, usize>,
    names: BTreeMap<String, usize>,
    host_ports: BTreeMap<u16, usize>,
}

fn convert_ports(errors: &mut Errors, ports: Vec<ContainerPort>) -> Vec<PortSpec> {
    let mut seen = SeenPorts::default();
    ports
        .into_iter()
        .enumerate()
        .filter_map(|(index, port)| convert_port(errors, &mut seen, index, port))
        .collect()
}

fn convert_port(
    errors: &mut Errors,
    seen: &mut SeenPorts,
    index: usize,
    port: ContainerPort,
) -> Option<PortSpec> {
    let base = format!("{CONTAINER}.ports[{index}]");
    let path = at(&base, "containerPort");
    let container_port = errors.check(&path, port_number(port.container_port))?;
    let first = first_use(&mut seen.ports, container_port, index, "containerPort");
    errors.check(&path, first)?;
    if let Some(name) = &port.name {
        let path = at(&base, "name");
        errors.check(&path, validate::port_name(name))?;
        let first = first_use(&mut seen.names, name.clone(), index, "port name");
        errors.check(&path, first)?;
    }
    let host_port = match port.host_port {
        None => None,
        Some(value) => {
            let path = at(&base, "hostPort");
            let host_port = errors.check(&path, port_number(value))?;
            let first = first_use(&mut seen.host_ports, host_port, index, "hostPort");
            errors.check(&path, first)?;
            Some(host_port)
        }
    };
    Some(PortSpec {
        name: port.name,
        container_port,
        host_port,
        protocol: port.protocol.map_or(Protocol::Tcp, |p| p.0),
    })
}

/// Records `value` as declared by `ports[index]`, unless an earlier port declared it.
fn first_use<T: Ord + std::fmt::Display>(
    declared: &mut BTreeMap<T, usize>,
    value: T,
    index: usize,
    what: &str,
) -> Result<(), String> {
    if let Some(first) = declared.get(&value) {
        return Err(format!(
            "{what} {value} is already declared by ports[{first}]"
        ));
    }
    declared.insert(value, index);
    Ok(())
}

/// Reservation = requests, falling back to limits, per resource.
fn convert_resources(
    errors: &mut Errors,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Resources {
    let base = format!("{CONTAINER}.resources.requests");
    let cpu = pick(
        errors,
        &at(&base, "cpu"),
        requests.cpu.map(|c| c.0),
        limits.cpu.map(|c| c.0),
    );
    let memory = pick(
        errors,
        &at(&base, "memory"),
        requests.memory.map(|m| m.0),
        limits.memory.map(|m| m.0),
    );
    Resources {
        cpu_millis: cpu,
        memory_bytes: memory,
    }
}

fn pick(errors: &mut Errors, path: &str, request: Option<u64>, limit: Option<u64>) -> u64 {
    match (request, limit) {
        (Some(request), Some(limit)) if request > limit => {
            errors.push(path, format!("request {request} exceeds the limit {limit}"));
            request
        }
        (Some(request), _) => request,
        (None, limit) => limit.unwrap_or(0),
    }
}

fn convert_probe(
    errors: &mut Errors,
    base: &str,
    probe: Probe,
    port_names: &BTreeMap<&str, u16>,
) -> Option<HealthCheck> {
    let mut actions = Vec::new();
    if let Some(http) = probe.http_get {
        let base = at(base, "httpGet");
        let port = resolve_port(errors, &at(&base, "port"), &http.port, port_names);
        let path = http.path.unwrap_or_else(|| "/".to_string());
        errors.check(at(&base, "path"), validate::http_path(&path));
        if let Some(scheme) = http.scheme.filter(|s| s != "HTTP") {
            errors.push(
                at(&base, "scheme"),
                format!("scheme \"{scheme}\" is not supported: Drover probes over plain HTTP"),
            );
        }
        actions.push(ProbeAction::Http { port, path });
    }
    if let Some(tcp) = probe.tcp_socket {
        let path = format!("{base}.tcpSocket.port");
        let port = resolve_port(errors, &path, &tcp.port, port_names);
        actions.push(ProbeAction::Tcp { port });
    }
    if let Some(exec) = probe.exec {
        errors.check(
            format!("{base}.exec.command"),
            validate::exec_command(&exec.command),
        );
        actions.push(ProbeAction::Exec {
            command: exec.command,
        });
    }
    if actions.len() != 1 {
        let found = actions.len();
        errors.push(
            base,
            format!("exactly one of httpGet, tcpSocket, exec is required, found {found}"),
        );
        return None;
    }
    let mut check = HealthCheck::with_defaults(actions.remove(0));
    let mut seconds = |field: &str, value: Option<i64>, min: u32, target: &mut Duration| {
        if let Some(value) = value {
            if let Some(duration) = errors.check(at(base, field), seconds_at_least(value, min)) {
                *target = duration;
            }
        }
    };
    seconds(
        "initialDelaySeconds",
        probe.initial_delay_seconds,
        0,
        &mut check.start_period,
    );
    seconds(
        "periodSeconds",
        probe.period_seconds,
        1,
        &mut check.interval,
    );
    seconds(
        "timeoutSeconds",
        probe.timeout_seconds,
        1,
        &mut check.timeout,
    );
    let mut threshold = |field: &str, value: Option<i64>, target: &mut u32| {
        if let Some(value) = value {
            if let Some(count) = errors.check(at(base, field), count_at_least(value, 1)) {
                *target = count;
            }
        }
    };
    threshold(
        "successThreshold",
        probe.success_threshold,
        &mut check.success_threshold,
    );
    threshold(
        "failureThreshold",
        probe.failure_threshold,
        &mut check.failure_threshold,
    );
    Some(check)
}

/// A probe port: a number, or the name of one of the container's ports.
fn resolve_port(
    errors: &mut Errors,
    path: &str,
    port: &IntOrName,
    names: &BTreeMap<&str, u16>,
) -> u16 {
    let resolved = match port {
        IntOrName::Int(value) => port_number(*value),
        IntOrName::Name(name) => names.get(name.as_str()).copied().ok_or_else(|| {
            let known: Vec<&str> = names.keys().copied().collect();
            format!(
                "port name \"{name}\" matches no named containerPort (named ports: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        }),
    };
    errors.check(path, resolved).unwrap_or(0)
}

/// The rollout settings of a Deployment, with Kubernetes' defaults: automatic revert is off
/// unless the [`AUTO_REVERT`] annotation turns it on.
fn convert_update(
    errors: &mut Errors,
    annotations: &BTreeMap<String, String>,
    deployment: &DeploymentSpec,
) -> UpdateStrategy {
    let mut update = UpdateStrategy {
        auto_revert: false,
        ..UpdateStrategy::default()
    };
    if let Some(value) = annotations.get(AUTO_REVERT) {
        match value.as_str() {
            "true" => update.auto_revert = true,
            "false" => {}
            other => errors.push(
                format!("metadata.annotations.{AUTO_REVERT}"),
                format!("annotation {AUTO_REVERT} must be \"true\" or \"false\", got \"{other}\""),
            ),
        }
    }
    if let Some(strategy) = &deployment.strategy {
        convert_strategy(errors, &mut update, strategy);
    }
    let seconds = |errors: &mut Errors, path: &str, value: Option<i64>| match value {
        None => Some(None),
        Some(value) => errors.check(path, seconds_at_least(value, 0)).map(Some),
    };
    // `None`: written but refused; `Some(None)`: not written.
    let min_ready = seconds(errors, "spec.minReadySeconds", deployment.min_ready_seconds);
    let deadline = seconds(
        errors,
        "spec.progressDeadlineSeconds",
        deployment.progress_deadline_seconds,
    );
    if let (Some(min_ready), Some(deadline)) = (min_ready, deadline) {
        update.min_ready = min_ready.unwrap_or(update.min_ready);
        update.progress_deadline = deadline.unwrap_or(update.progress_deadline);
        // Kubernetes' rule, which also holds for the default deadline.
        if update.progress_deadline <= update.min_ready {
            errors.push(
                "spec.progressDeadlineSeconds",
                format!(
                    "progressDeadlineSeconds {}{} must be greater than minReadySeconds {}",
                    update.progress_deadline.as_secs(),
                    if deadline.is_none() {
                        " (the default)"
                    } else {
                        ""
                    },
                    update.min_ready.as_secs()
                ),
            );
        }
    }
    if let Some(limit) = deployment.revision_history_limit {
        if let Some(limit) = errors.check("spec.revisionHistoryLimit", count_at_least(limit, 0)) {
            update.revision_history_limit = limit;
        }
    }
    update.paused = deployment.paused;
    update
}

fn convert_strategy(
    errors: &mut Errors,
    update: &mut UpdateStrategy,
    strategy: &DeploymentStrategy,
) {
    match strategy.kind.as_deref() {
        None | Some("RollingUpdate") => {}
        Some("Recreate") => update.kind = UpdateKind::Recreate,
        Some(other) => errors.push(
            "spec.strategy.type",
            format!("unknown strategy type \"{other}\" (RollingUpdate or Recreate)"),
        ),
    }
    let Some(rolling) = &strategy.rolling_update else {
        return;
    };
    let base = "spec.strategy.rollingUpdate";
    if update.kind == UpdateKind::Recreate {
        errors.push(
            base,
            "rollingUpdate may only be set with type RollingUpdate, not Recreate",
        );
        return;
    }
    let mut count = |field: &str,
                     value: &Option<CountOrPercent>,
                     in_range: fn(ReplicaCount) -> Result<(), String>,
                     target: &mut ReplicaCount| {
        let Some(value) = value else {
            return;
        };
        let converted = replica_count(value).and_then(|count| in_range(count).map(|()| count));
        if let Some(count) = errors.check(at(base, field), converted) {
            *target = count;
        }
    };
    count(
        "maxSurge",
        &rolling.max_surge,
        validate::max_surge,
        &mut update.max_surge,
    );
    count(
        "maxUnavailable",
        &rolling.max_unavailable,
        validate::max_unavailable,
        &mut update.max_unavailable,
    );
    errors.check(base, validate::update(update));
}
