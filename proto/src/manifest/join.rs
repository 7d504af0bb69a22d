//! Kubernetes Services: their conversion into [`Service`]s, and what they need from the
//! Deployments of the same apply that they select.
//!
//! A Service keeps its own name and selects by labels, so it may select several
//! Deployments (v1/v2 canaries), several Services one Deployment, or nothing in this apply
//! (a workload applied before, or one to come, as Kubernetes allows).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::Declared;
use super::deployment;
use super::error::{Errors, FieldError, Source, at};
use super::input::{IntOrName, port_number};
use super::kube;
use crate::model::{
    ClusterIp, PortSpec, Protocol, Service, ServicePort, ServiceType, Strategy, TargetPort,
};

/// Converts a Kubernetes Service; errors name the document's paths.
pub(crate) fn convert(doc: kube::Service) -> Result<Service, Vec<FieldError>> {
    let mut errors = Errors::default();
    deployment::check_metadata(&mut errors, &doc.metadata);
    let spec = doc.spec;
    let kind = match spec.kind.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some(other) => {
            errors.push(
                "spec.type",
                format!(
                    "type \"{other}\" is not supported: use ClusterIP, NodePort or LoadBalancer"
                ),
            );
            ServiceType::ClusterIp
        }
    };
    let cluster_ip = match spec.cluster_ip.as_deref() {
        None | Some("") => ClusterIp::Auto,
        Some("None") => ClusterIp::Headless,
        Some(text) => match text.parse::<Ipv4Addr>() {
            Ok(ip) => ClusterIp::Fixed(ip),
            Err(_) => {
                errors.push(
                    "spec.clusterIP",
                    format!("\"{text}\" is not an IPv4 address nor \"None\""),
                );
                ClusterIp::Auto
            }
        },
    };
    let mut ports = Vec::new();
    for (index, input) in spec.ports.into_iter().enumerate() {
        let base = format!("spec.ports[{index}]");
        let port = errors.check(at(&base, "port"), port_number(input.port));
        let target = match input.target_port {
            None => port.map(TargetPort::Number),
            Some(IntOrName::Int(value)) => errors
                .check(at(&base, "targetPort"), port_number(value))
                .map(TargetPort::Number),
            Some(IntOrName::Name(name)) if name.is_empty() => {
                errors.push(at(&base, "targetPort"), "must not be empty");
                None
            }
            Some(IntOrName::Name(name)) => Some(TargetPort::Name(name)),
        };
        let node_port = input
            .node_port
            .and_then(|p| errors.check(at(&base, "nodePort"), port_number(p)));
        // A value that did not convert (reported) stays as a placeholder 0, so the checks
        // below see every port at its own index.
        ports.push(ServicePort {
            name: input.name,
            port: port.unwrap_or(0),
            target: target.unwrap_or(TargetPort::Number(0)),
            node_port,
            protocol: Protocol::Tcp,
        });
    }
    let service = Service {
        name: doc.metadata.name,
        selector: spec.selector,
        ports,
        kind,
        cluster_ip,
        strategy: Strategy::default(),
        workload_weights: BTreeMap::new(),
        labels: doc.metadata.labels,
    };
    let converted = errors.is_empty();
    errors.0.extend(
        super::validate::service(&service)
            .into_iter()
            .filter(|e| converted || !e.message.starts_with("port 0 ")),
    );
    if errors.is_empty() {
        Ok(service)
    } else {
        Err(errors.0)
    }
}

/// A Service of the apply, with where it came from.
#[derive(Debug)]
pub(crate) struct ServiceEntry {
    pub(crate) origin: Source,
    pub(crate) object: String,
    pub(crate) service: Service,
}

/// For every Deployment of the apply a Service selects: a numeric target the Deployment
/// does not declare is added as a container port (Kubernetes needs no declaration; Drover
/// publishes declared ports only), and a named target it does not have is an error, reported
/// against the Service.
pub(crate) fn join(
    declared: &mut [Declared],
    services: &[ServiceEntry],
) -> Vec<(Source, FieldError)> {
    let mut errors = Vec::new();
    for entry in services {
        let service = &entry.service;
        for declared in declared.iter_mut() {
            if declared.broken {
                // Its own errors are reported; joining would only add confusing ones.
                continue;
            }
            if !service.selects(&declared.spec) {
                continue;
            }
            let spec = &mut declared.spec;
            for (index, port) in service.ports.iter().enumerate() {
                match &port.target {
                    TargetPort::Number(number) => {
                        if spec.ports.iter().all(|p| p.container_port != *number) {
                            spec.ports.push(PortSpec {
                                name: None,
                                container_port: *number,
                                host_port: None,
                                protocol: Protocol::Tcp,
                            });
                        }
                    }
                    TargetPort::Name(name) => {
                        if Service::target_port(port, spec).is_none() {
                            let base = format!("spec.ports[{index}]");
                            let kind = if declared.deployment {
                                "Deployment"
                            } else {
                                "workload"
                            };
                            errors.push((
                                entry.origin.clone(),
                                unknown_name(spec, kind, &base, name),
                            ));
                        }
                    }
                }
            }
        }
    }
    errors
}

fn unknown_name(
    spec: &crate::model::WorkloadSpec,
    kind: &str,
    base: &str,
    name: &str,
) -> FieldError {
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
            "targetPort \"{name}\" names no container port of {kind} {} (named ports: {names})",
            spec.name
        ),
    )
}
