//! Services apart from workloads, as Kubernetes has them: a service is a name, an address,
//! ports and a label selector over the replicas of any workload; a workload
//! ([`WorkloadSpec`]) is what is placed, scaled and rolled out. One service may select
//! several workloads, several services one workload.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{Protocol, Strategy, WorkloadSpec};

/// Label every workload's replicas carry implicitly, `drover.dev/workload=<name>`: what the
/// service of Drover's one-document manifest selects.
pub const WORKLOAD_LABEL: &str = "drover.dev/workload";

/// How a service is reached (Kubernetes' Service types).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceType {
    /// Its cluster address only (Kubernetes' default).
    #[default]
    ClusterIp,
    /// Also every node's address on each port's node port.
    NodePort,
    /// Also every node's address on each port's own port (k3s's ServiceLB on bare metal;
    /// what Drover's own manifest gives a service port).
    LoadBalancer,
}

impl ServiceType {
    /// Kubernetes' spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIp => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// The cluster address a service asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterIp {
    /// One the coordinator allocates.
    #[default]
    Auto,
    /// None: a headless service (its name resolves to its ready replicas).
    Headless,
    /// This one, if it is free and in the coordinator's range.
    Fixed(Ipv4Addr),
}

/// The workload port a service port sends traffic to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetPort {
    /// A container port by number.
    Number(u16),
    /// A container port by its name in the workload (each workload resolves it itself).
    Name(String),
}

impl std::fmt::Display for TargetPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Name(name) => f.write_str(name),
        }
    }
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    /// Name, required when the service has several ports (SRV records use it).
    pub name: Option<String>,
    /// The service's port.
    pub port: u16,
    /// Where its traffic goes in each selected workload.
    pub target: TargetPort,
    /// For `NodePort`: the port on every node's address; `None` lets the coordinator pick.
    pub node_port: Option<u16>,
    /// Protocol.
    pub protocol: Protocol,
}

/// A service: what a name and an address route to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Service {
    /// DNS-1123 label, unique among services (a workload may have the same name).
    pub name: String,
    /// Labels a workload's replicas must all carry to be selected ([`WORKLOAD_LABEL`] is
    /// one of theirs). Never empty.
    pub selector: BTreeMap<String, String>,
    /// Ports; at least one.
    pub ports: Vec<ServicePort>,
    /// How it is reached.
    pub kind: ServiceType,
    /// The cluster address it asks for.
    pub cluster_ip: ClusterIp,
    /// How every proxy picks a replica.
    pub strategy: Strategy,
    /// Share of the traffic per selected workload (`drover weights SERVICE v1=90 v2=10`);
    /// empty: every ready replica alike, whichever workload it belongs to. A selected
    /// workload not listed gets none.
    pub workload_weights: BTreeMap<String, u32>,
    /// Free-form labels (the manifest's metadata).
    pub labels: BTreeMap<String, String>,
}

impl Service {
    /// A ClusterIP service selecting the workload `workload` by its implicit label, with
    /// no ports yet.
    pub fn for_workload(name: impl Into<String>, workload: &str) -> Service {
        Service {
            name: name.into(),
            selector: BTreeMap::from([(WORKLOAD_LABEL.to_string(), workload.to_string())]),
            ports: Vec::new(),
            kind: ServiceType::default(),
            cluster_ip: ClusterIp::default(),
            strategy: Strategy::default(),
            workload_weights: BTreeMap::new(),
            labels: BTreeMap::new(),
        }
    }

    /// Whether the replicas of `workload` are this service's.
    pub fn selects(&self, workload: &WorkloadSpec) -> bool {
        label_selects(&self.selector, &workload.name, &workload.pod_labels)
    }

    /// The port every node's address listens on for `port` of this service: its node port
    /// for `NodePort`, its own port for `LoadBalancer`; `None` for `ClusterIP` (reached on
    /// its cluster address only) and headless services.
    pub fn node_listen_port(&self, port: &ServicePort) -> Option<u16> {
        match (self.cluster_ip, self.kind) {
            (ClusterIp::Headless, _) | (_, ServiceType::ClusterIp) => None,
            (_, ServiceType::NodePort) => port.node_port,
            (_, ServiceType::LoadBalancer) => Some(port.port),
        }
    }

    /// Its cluster address, once it has one (the coordinator allocates one to every
    /// service that is not headless).
    pub fn cluster_address(&self) -> Option<Ipv4Addr> {
        match self.cluster_ip {
            ClusterIp::Fixed(ip) => Some(ip),
            ClusterIp::Auto | ClusterIp::Headless => None,
        }
    }

    /// The container port of `workload` that `port` sends traffic to, if it has one.
    pub fn target_port(port: &ServicePort, workload: &WorkloadSpec) -> Option<u16> {
        match &port.target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => workload
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port),
        }
    }
}

/// Whether `selector` (non-empty) matches the replicas of workload `name` with `labels`,
/// counting the implicit [`WORKLOAD_LABEL`].
pub fn label_selects(
    selector: &BTreeMap<String, String>,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty()
        && selector.iter().all(|(k, v)| {
            if k == WORKLOAD_LABEL {
                v == name
            } else {
                labels.get(k) == Some(v)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selector_matches_pod_labels_and_the_implicit_workload_label() {
        let mut web = WorkloadSpec::new("web", "img");
        web.pod_labels = BTreeMap::from([("app".into(), "web".into()), ("v".into(), "1".into())]);
        let by_app = BTreeMap::from([("app".to_string(), "web".to_string())]);
        assert!(label_selects(&by_app, "web", &web.pod_labels));
        assert!(Service::for_workload("front", "web").selects(&web));
        assert!(!Service::for_workload("front", "api").selects(&web));
        let both = BTreeMap::from([
            ("app".to_string(), "web".to_string()),
            ("v".to_string(), "2".to_string()),
        ]);
        assert!(!label_selects(&both, "web", &web.pod_labels));
        assert!(!label_selects(&BTreeMap::new(), "web", &web.pod_labels));
    }

    #[test]
    fn a_named_target_resolves_per_workload() {
        let mut web = WorkloadSpec::new("web", "img");
        web.ports.push(super::super::PortSpec {
            name: Some("http".into()),
            container_port: 8080,
            host_port: None,
            protocol: Protocol::Tcp,
        });
        let port = |target| ServicePort {
            name: None,
            port: 80,
            target,
            node_port: None,
            protocol: Protocol::Tcp,
        };
        assert_eq!(
            Service::target_port(&port(TargetPort::Name("http".into())), &web),
            Some(8080)
        );
        assert_eq!(
            Service::target_port(&port(TargetPort::Name("grpc".into())), &web),
            None
        );
        assert_eq!(
            Service::target_port(&port(TargetPort::Number(9000)), &web),
            Some(9000)
        );
    }
}
