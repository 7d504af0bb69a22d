//! Validation of a [`WorkloadSpec`], whatever it was parsed from; errors use Drover manifest paths.

use std::collections::BTreeMap;

use super::constraint;
use super::error::{Errors, FieldError, at};
use crate::model::{
    ClusterIp, HealthCheck, NodeInfo, ProbeAction, ReplicaCount, Service, ServiceType, TargetPort,
    UpdateKind, UpdateStrategy, WorkloadSpec,
};

/// Validates one spec. Errors name the field as Drover's own manifest spells it
/// (`metadata.name`, `spec.ports[1].containerPort`, `spec.health.timeout`).
pub fn validate(spec: &WorkloadSpec) -> Result<(), Vec<FieldError>> {
    let mut errors = Errors::default();
    errors.check("metadata.name", dns_label(&spec.name));
    errors.check("spec.image", image(&spec.image));
    check_ports(&mut errors, spec);
    for key in spec.env.keys().chain(spec.secret_env.keys()) {
        errors.check(format!("spec.env.{key}"), env_name(key));
    }
    for key in spec.secret_env.keys().filter(|k| spec.env.contains_key(*k)) {
        errors.push(
            format!("spec.env.{key}"),
            format!("environment variable {key} is set both plain and as a secret"),
        );
    }
    if let Some(check) = &spec.health {
        check_probe(&mut errors, "spec.health", check);
    }
    if let Some(check) = &spec.liveness {
        check_probe(&mut errors, "spec.liveness", check);
    }
    let restart = &spec.restart;
    if restart.initial_backoff > restart.max_backoff {
        errors.push(
            "spec.restart.initialBackoff",
            format!(
                "initial backoff {} is longer than maxBackoff {}",
                humantime::format_duration(restart.initial_backoff),
                humantime::format_duration(restart.max_backoff)
            ),
        );
    }
    for (index, constraint) in spec.placement.constraints.iter().enumerate() {
        let checked = constraint::check(constraint)
            .map_err(|why| format!("constraint \"{constraint}\": {why}"));
        errors.check(format!("spec.placement.constraints[{index}]"), checked);
    }
    check_update(&mut errors, &spec.update);
    let weights = &spec.traffic.revision_weights;
    if !weights.is_empty() && weights.values().all(|w| *w == 0) {
        errors.push(
            "spec.traffic.weights",
            "every weight is 0: at least one revision must receive traffic",
        );
    }
    if !weights.is_empty() && !spec.update.canary.is_empty() {
        errors.push(
            "spec.traffic.weights",
            "fixed revision weights and canary steps cannot go together: the canary steps set the weights (leave traffic.weights out)",
        );
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.0)
    }
}

fn check_ports(errors: &mut Errors, spec: &WorkloadSpec) {
    let mut container_ports = BTreeMap::new();
    let mut host_ports = BTreeMap::new();
    let mut names = BTreeMap::new();
    for (index, port) in spec.ports.iter().enumerate() {
        let base = format!("spec.ports[{index}]");
        let container = at(&base, "containerPort");
        if errors
            .check(&container, nonzero(port.container_port))
            .is_some()
        {
            errors.check(
                &container,
                unique(
                    &mut container_ports,
                    port.container_port,
                    "container port",
                    index,
                ),
            );
        }
        if let Some(host_port) = port.host_port {
            let path = at(&base, "hostPort");
            if errors.check(&path, nonzero(host_port)).is_some() {
                errors.check(
                    &path,
                    unique(&mut host_ports, host_port, "host port", index),
                );
            }
        }
        if let Some(name) = &port.name {
            let path = at(&base, "name");
            if errors.check(&path, port_name(name)).is_some() {
                errors.check(&path, unique(&mut names, name.clone(), "port name", index));
            }
        }
    }
}

/// Records `value` as seen at port `index`; an error names the earlier port that has it.
fn unique<T: Ord + std::fmt::Display>(
    seen: &mut BTreeMap<T, usize>,
    value: T,
    what: &str,
    index: usize,
) -> Result<(), String> {
    if let Some(first) = seen.get(&value) {
        return Err(format!(
            "{what} {value} is already used by spec.ports[{first}]"
        ));
    }
    seen.insert(value, index);
    Ok(())
}

fn nonzero(port: u16) -> Result<(), String> {
    if port == 0 {
        Err("port 0 is out of range 1..=65535".into())
    } else {
        Ok(())
    }
}

fn check_probe(errors: &mut Errors, base: &str, check: &HealthCheck) {
    match &check.action {
        ProbeAction::Tcp { port } => {
            errors.check(format!("{base}.tcp.port"), nonzero(*port));
        }
        ProbeAction::Http { port, path } => {
            errors.check(format!("{base}.http.port"), nonzero(*port));
            errors.check(format!("{base}.http.path"), http_path(path));
        }
        ProbeAction::Exec { command } => {
            errors.check(format!("{base}.exec.command"), exec_command(command));
        }
    }
    if check.interval.is_zero() {
        errors.push(at(base, "interval"), "must be longer than 0s");
    }
    if check.timeout.is_zero() {
        errors.push(at(base, "timeout"), "must be longer than 0s");
    }
    errors.check(
        at(base, "successThreshold"),
        threshold(check.success_threshold),
    );
    errors.check(
        at(base, "failureThreshold"),
        threshold(check.failure_threshold),
    );
}

/// The range node ports are taken from, as Kubernetes' default `--service-node-port-range`.
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Validates a service. Errors name the field as a Kubernetes Service spells it
/// (`spec.ports[0].nodePort`).
pub fn service(service: &Service) -> Vec<FieldError> {
    let mut errors = Errors::default();
    errors.check("metadata.name", dns_label(&service.name));
    if service.selector.is_empty() {
        errors.push(
            "spec.selector",
            "a selector is required: a service routes to the replicas of the workloads it selects",
        );
    }
    for (key, value) in &service.selector {
        errors.check(format!("spec.selector.{key}"), constraint::check_key(key));
        errors.check(
            format!("spec.selector.{key}"),
            constraint::check_value(value),
        );
    }
    if service.ports.is_empty() {
        errors.push("spec.ports", "at least one port is required");
    }
    let several = service.ports.len() > 1;
    let mut numbers = BTreeMap::new();
    let mut names = BTreeMap::new();
    let mut node_ports = BTreeMap::new();
    for (index, port) in service.ports.iter().enumerate() {
        let base = format!("spec.ports[{index}]");
        let path = at(&base, "port");
        if errors.check(&path, nonzero(port.port)).is_some() {
            errors.check(&path, unique(&mut numbers, port.port, "port", index));
        }
        if let TargetPort::Number(target) = port.target {
            errors.check(at(&base, "targetPort"), nonzero(target));
        }
        match &port.name {
            Some(name) => {
                let path = at(&base, "name");
                if errors.check(&path, port_name(name)).is_some() {
                    errors.check(&path, unique(&mut names, name.clone(), "port name", index));
                }
            }
            None if several => errors.push(
                at(&base, "name"),
                "a service with several ports must name each of them",
            ),
            None => {}
        }
        if let Some(node_port) = port.node_port {
            let path = at(&base, "nodePort");
            if service.kind == ServiceType::ClusterIp {
                errors.push(
                    &path,
                    "a ClusterIP service has no node port (type NodePort or LoadBalancer has)",
                );
            } else if !NODE_PORTS.contains(&node_port) {
                errors.push(
                    &path,
                    format!(
                        "{node_port} is outside the node port range {}-{}",
                        NODE_PORTS.start(),
                        NODE_PORTS.end()
                    ),
                );
            } else {
                errors.check(
                    &path,
                    unique(&mut node_ports, node_port, "node port", index),
                );
            }
        }
    }
    if service.cluster_ip == ClusterIp::Headless && service.kind != ServiceType::ClusterIp {
        errors.push(
            "spec.clusterIP",
            format!(
                "a headless service (clusterIP: None) cannot be of type {}",
                service.kind.as_str()
            ),
        );
    }
    for (workload, weight) in &service.workload_weights {
        errors.check(format!("weights.{workload}"), dns_label(workload));
        if *weight > 1_000_000 {
            errors.push(format!("weights.{workload}"), "must be at most 1000000");
        }
    }
    if !service.workload_weights.is_empty() && service.workload_weights.values().all(|w| *w == 0) {
        errors.push(
            "weights",
            "every weight is 0: at least one workload must receive traffic",
        );
    }
    errors.0
}

/// Checks what an agent says about itself: its id is a DNS-1123 label (as a machine id or a
/// short host name is) and its address an IP address.
pub fn node_info(info: &NodeInfo) -> Result<(), String> {
    dns_label(&info.id).map_err(|e| format!("node id: {e}"))?;
    info.address.parse::<std::net::IpAddr>().map_err(|_| {
        format!(
            "node {}: address \"{}\" is not an IP address",
            info.id,
            excerpt(&info.address)
        )
    })?;
    Ok(())
}

/// At most the first 64 characters of `text`, with its length when it was longer: error
/// messages echo what they refuse without growing with it.
pub fn excerpt(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}… ({} characters)", &text[..cut], text.chars().count()),
    }
}

/// A DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or
/// digit, at most 63 characters.
pub fn dns_label(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "name \"{}\" is not a DNS-1123 label (at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)",
            excerpt(name)
        ))
    }
}

/// A non-empty image reference without whitespace.
pub(crate) fn image(image: &str) -> Result<(), String> {
    if image.trim().is_empty() {
        Err("image must not be empty".into())
    } else if image.chars().any(char::is_whitespace) {
        Err(format!("image \"{image}\" contains whitespace"))
    } else {
        Ok(())
    }
}

/// An environment variable name: non-empty and without '='.
pub(crate) fn env_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("environment variable name must not be empty".into())
    } else if name.contains('=') || name.contains('\0') {
        Err(format!(
            "environment variable name \"{name}\" contains '=' or NUL"
        ))
    } else {
        Ok(())
    }
}

/// A port name: non-empty, without whitespace.
pub(crate) fn port_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        Err(format!(
            "port name \"{name}\" must be non-empty and without whitespace"
        ))
    } else {
        Ok(())
    }
}

/// An HTTP probe path, absolute.
pub(crate) fn http_path(path: &str) -> Result<(), String> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(format!("path \"{path}\" must start with '/'"))
    }
}

/// An exec probe command: at least the program.
pub(crate) fn exec_command(command: &[String]) -> Result<(), String> {
    match command.first() {
        Some(program) if !program.is_empty() => Ok(()),
        _ => Err("command must name a program".into()),
    }
}

fn threshold(value: u32) -> Result<(), String> {
    if value >= 1 {
        Ok(())
    } else {
        Err(format!("must be >= 1, got {value}"))
    }
}

/// The rollout settings: ranges, and settings that contradict each other.
fn check_update(errors: &mut Errors, settings: &UpdateStrategy) {
    let base = "spec.update";
    errors.check(at(base, "maxSurge"), max_surge(settings.max_surge));
    errors.check(
        at(base, "maxUnavailable"),
        max_unavailable(settings.max_unavailable),
    );
    errors.check(base, update(settings));
    if settings.progress_deadline <= settings.min_ready {
        errors.push(
            at(base, "progressDeadline"),
            format!(
                "progressDeadline {} must be longer than minReady {}",
                humantime::format_duration(settings.progress_deadline),
                humantime::format_duration(settings.min_ready)
            ),
        );
    }
    let canary = "spec.update.canary";
    if !settings.canary.is_empty() && settings.kind == UpdateKind::Recreate {
        errors.push(
            canary,
            "canary steps need strategy RollingUpdate, not Recreate (Recreate stops every old replica first)",
        );
    }
    for (index, step) in settings.canary.iter().enumerate() {
        errors.check(
            format!("{canary}.steps[{index}].weight"),
            canary_weight(step.weight),
        );
    }
    let analysis = "spec.update.canary.analysis";
    errors.check(
        at(analysis, "maxFailureRate"),
        failure_rate(settings.analysis.max_failure_bp),
    );
    if !settings.canary.is_empty() {
        errors.check(
            at(analysis, "minSample"),
            min_sample(settings.analysis.min_sample),
        );
    }
}

/// `maxSurge`: any count, or a percentage up to 1000%.
pub(crate) fn max_surge(value: ReplicaCount) -> Result<(), String> {
    match value {
        ReplicaCount::Percent(percent) if percent > 1000 => {
            Err(format!("maxSurge {value} is out of range 0%..=1000%"))
        }
        _ => Ok(()),
    }
}

/// `maxUnavailable`: any count, or a percentage up to 100%.
pub(crate) fn max_unavailable(value: ReplicaCount) -> Result<(), String> {
    match value {
        ReplicaCount::Percent(percent) if percent > 100 => {
            Err(format!("maxUnavailable {value} is out of range 0%..=100%"))
        }
        _ => Ok(()),
    }
}

/// A canary step's share of the connections: 1 to 99 percent.
pub(crate) fn canary_weight(weight: u32) -> Result<(), String> {
    if (1..=99).contains(&weight) {
        Ok(())
    } else {
        Err(format!("weight {weight} is out of range 1..=99"))
    }
}

/// A canary's failure rate, in basis points: 0% to 100%.
pub(crate) fn failure_rate(basis_points: u32) -> Result<(), String> {
    if basis_points <= 10_000 {
        Ok(())
    } else {
        Err(format!(
            "maxFailureRate {} is out of range 0%..=100%",
            show_basis_points(basis_points)
        ))
    }
}

/// Connections a canary step needs before it is judged: at least 1.
pub(crate) fn min_sample(value: u64) -> Result<(), String> {
    if value >= 1 {
        Ok(())
    } else {
        Err(format!("must be >= 1, got {value}"))
    }
}

/// Basis points as a percentage: 100 → `1%`, 50 → `0.5%`, 125 → `1.25%`.
pub(crate) fn show_basis_points(basis_points: u32) -> String {
    let (whole, fraction) = (basis_points / 100, basis_points % 100);
    if fraction == 0 {
        format!("{whole}%")
    } else if fraction % 10 == 0 {
        format!("{whole}.{}%", fraction / 10)
    } else {
        format!("{whole}.{fraction:02}%")
    }
}

/// An update strategy that can make progress.
pub(crate) fn update(update: &UpdateStrategy) -> Result<(), String> {
    let zero = |c: ReplicaCount| matches!(c, ReplicaCount::Count(0) | ReplicaCount::Percent(0));
    if zero(update.max_surge) && zero(update.max_unavailable) {
        Err("maxSurge and maxUnavailable are both 0: an update could never progress".into())
    } else {
        Ok(())
    }
}
