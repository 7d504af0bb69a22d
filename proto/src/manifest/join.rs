//! Kubernetes Services: their conversion, and their join onto the Deployments they select.

use std::collections::BTreeMap;

use super::Declared;
use super::deployment::{self, show_labels};
use super::error::{Errors, FieldError, Source, at};
use super::input::{IntOrName, port_number};
use super::kube::Service;
use crate::model::{PortSpec, Protocol, WorkloadSpec};

/// A converted Service: the ports it publishes for the Deployment its selector matches.
#[derive(Debug)]
pub(crate) struct Converted {
    /// The Service's own name (not the name of the resulting Drover service).
    pub(crate) name: String,
    /// Labels a Deployment's pod template must carry, all of them.
    pub(crate) selector: BTreeMap<String, String>,
    /// Published ports, with the index of their entry in `spec.ports`.
    pub(crate) ports: Vec<ServicePort>,
}

/// One entry of a Service's `spec.ports`.
#[derive(Debug)]
pub(crate) struct ServicePort {
    index: usize,
    name: Option<String>,
    port: u16,
    target: Target,
}

#[derive(Debug)]
enum Target {
    Number(u16),
    Name(String),
}

/// Converts a Service; one with errors joins nothing.
pub(crate) fn convert(doc: Service) -> Result<Converted, Vec<FieldError>> {
    let mut errors = Errors::default();
    deployment::check_metadata(&mut errors, &doc.metadata);
    let spec = doc.spec;
    if let Some(kind) = spec.kind.filter(|k| k != "ClusterIP") {
        errors.push(
            "spec.type",
            format!(
                "type \"{kind}\" is not supported: Drover publishes every service port on every node already; use ClusterIP or leave type out"
            ),
        );
    }
    if spec.selector.is_empty() {
        errors.push(
            "spec.selector",
            "a selector is required: Drover joins a Service to the Deployment it selects",
        );
    }
    if spec.ports.is_empty() {
        errors.push("spec.ports", "at least one port is required");
    }
    let mut ports = Vec::new();
    for (index, input) in spec.ports.into_iter().enumerate() {
        let base = format!("spec.ports[{index}]");
        let port = errors.check(at(&base, "port"), port_number(input.port));
        let target = match input.target_port {
            None => port.map(Target::Number),
            Some(IntOrName::Int(value)) => errors
                .check(at(&base, "targetPort"), port_number(value))
                .map(Target::Number),
            Some(IntOrName::Name(name)) if name.is_empty() => {
                errors.push(at(&base, "targetPort"), "must not be empty");
                None
            }
            Some(IntOrName::Name(name)) => Some(Target::Name(name)),
        };
        if let (Some(port), Some(target)) = (port, target) {
            ports.push(ServicePort {
                index,
                name: input.name,
                port,
                target,
            });
        }
    }
    if !errors.is_empty() {
        return Err(errors.0);
    }
    Ok(Converted {
        name: doc.metadata.name,
        selector: spec.selector,
        ports,
    })
}

/// A Service to join, with where it came from.
#[derive(Debug)]
pub(crate) struct ServiceEntry {
    pub(crate) origin: Source,
    pub(crate) converted: Converted,
}

/// Which Service published a port of a Deployment, to name it in errors.
#[derive(Debug)]
struct Publisher {
    service: String,
    origin: Source,
    index: usize,
}

/// Adds each Service's ports to the one Deployment it selects. Errors are reported against the
/// Service document. `selectors_unknown` suppresses "selects nothing" when a Deployment of the
/// apply could not be read, so it may be the one meant.
pub(crate) fn join(
    declared: &mut [Declared],
    services: Vec<ServiceEntry>,
    selectors_unknown: bool,
) -> Vec<(Source, FieldError)> {
    let mut errors = Vec::new();
    let mut published: BTreeMap<(usize, u16), Publisher> = BTreeMap::new();
    for service in services {
        let selector = &service.converted.selector;
        let matches: Vec<usize> = declared
            .iter()
            .enumerate()
            .filter(|(_, d)| {
                d.template_labels
                    .as_ref()
                    .is_some_and(|l| selects(selector, l))
            })
            .map(|(index, _)| index)
            .collect();
        let target = match matches.as_slice() {
            [one] => *one,
            [] => {
                if !selectors_unknown {
                    let message = format!(
                        "selector {} matches no Deployment in this apply",
                        show_labels(selector)
                    );
                    errors.push((service.origin, FieldError::new("spec.selector", message)));
                }
                continue;
            }
            several => {
                let names: Vec<&str> = several
                    .iter()
                    .map(|i| declared[*i].spec.name.as_str())
                    .collect();
                let message = format!(
                    "selector {} matches several Deployments ({}): Drover joins a Service to exactly one",
                    show_labels(selector),
                    names.join(", ")
                );
                errors.push((service.origin, FieldError::new("spec.selector", message)));
                continue;
            }
        };
        if declared[target].broken {
            // Its own errors are reported; joining would only add confusing ones.
            continue;
        }
        let spec = &mut declared[target].spec;
        for port in &service.converted.ports {
            let publisher = Publisher {
                service: service.converted.name.clone(),
                origin: service.origin.clone(),
                index: port.index,
            };
            if let Err(error) = publish(spec, port, publisher, target, &mut published) {
                errors.push((service.origin.clone(), error));
            }
        }
    }
    errors
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Sets the service port of the container port `port` targets, adding that container port
/// when a numeric target names one the Deployment does not declare (as Kubernetes allows).
fn publish(
    spec: &mut WorkloadSpec,
    port: &ServicePort,
    publisher: Publisher,
    deployment: usize,
    published: &mut BTreeMap<(usize, u16), Publisher>,
) -> Result<(), FieldError> {
    let base = format!("spec.ports[{}]", port.index);
    if let Some(first) = published.get(&(deployment, port.port)) {
        return Err(FieldError::new(
            at(&base, "port"),
            format!(
                "port {} of Deployment {} is already published by Service {} ({}, spec.ports[{}])",
                port.port, spec.name, first.service, first.origin, first.index
            ),
        ));
    }
    let index = match &port.target {
        Target::Name(name) => spec
            .ports
            .iter()
            .position(|p| p.name.as_deref() == Some(name))
            .ok_or_else(|| unknown_name(spec, &base, name))?,
        Target::Number(number) => match spec.ports.iter().position(|p| p.container_port == *number)
        {
            Some(index) => index,
            None => {
                spec.ports.push(PortSpec {
                    name: None,
                    container_port: *number,
                    service_port: None,
                    host_port: None,
                    protocol: Protocol::Tcp,
                });
                spec.ports.len() - 1
            }
        },
    };
    // The Service's port name labels the port only where no other port has that name.
    let name_free = port
        .name
        .as_ref()
        .is_some_and(|name| spec.ports.iter().all(|p| p.name.as_ref() != Some(name)));
    let container = &mut spec.ports[index];
    if let Some(other) = container.service_port {
        return Err(FieldError::new(
            at(&base, "targetPort"),
            format!(
                "container port {} is already published as port {other}: Drover publishes a container port once",
                container.container_port
            ),
        ));
    }
    container.service_port = Some(port.port);
    if container.name.is_none() && name_free {
        container.name = port.name.clone();
    }
    published.insert((deployment, port.port), publisher);
    Ok(())
}

fn unknown_name(spec: &WorkloadSpec, base: &str, name: &str) -> FieldError {
    let names: Vec<&str> = spec
        .ports
        .iter()
        .filter_map(|p| p.name.as_deref())
        .collect();
    let names = if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    };
    FieldError::new(
        at(base, "targetPort"),
        format!(
            "targetPort \"{name}\" names no container port of Deployment {} (named ports: {names})",
            spec.name
        ),
    )
}
