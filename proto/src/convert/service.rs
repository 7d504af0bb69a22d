//! Services ([`Service`]) on the wire.

use std::net::Ipv4Addr;

use super::{ConvertError, port, strategy_from_pb, strategy_to_pb};
use crate::model::{ClusterIp, Protocol, Service, ServicePort, ServiceType, TargetPort};
use crate::pb;

/// The wire spelling of a headless service's cluster address, as Kubernetes writes it.
pub const HEADLESS: &str = "None";

impl From<&Service> for pb::Service {
    fn from(s: &Service) -> Self {
        pb::Service {
            name: s.name.clone(),
            selector: s.selector.clone().into_iter().collect(),
            ports: s.ports.iter().map(Into::into).collect(),
            r#type: match s.kind {
                ServiceType::ClusterIp => pb::ServiceType::ClusterIp,
                ServiceType::NodePort => pb::ServiceType::NodePort,
                ServiceType::LoadBalancer => pb::ServiceType::LoadBalancer,
            }
            .into(),
            cluster_ip: match s.cluster_ip {
                ClusterIp::Auto => String::new(),
                ClusterIp::Headless => HEADLESS.to_string(),
                ClusterIp::Fixed(ip) => ip.to_string(),
            },
            strategy: strategy_to_pb(s.strategy).into(),
            workload_weights: s.workload_weights.clone().into_iter().collect(),
            labels: s.labels.clone().into_iter().collect(),
        }
    }
}

impl From<&ServicePort> for pb::ServicePort {
    fn from(p: &ServicePort) -> Self {
        pb::ServicePort {
            name: p.name.clone(),
            port: p.port.into(),
            target: Some(match &p.target {
                TargetPort::Number(n) => pb::service_port::Target::TargetNumber((*n).into()),
                TargetPort::Name(name) => pb::service_port::Target::TargetName(name.clone()),
            }),
            node_port: p.node_port.map(u32::from),
            protocol: pb::Protocol::Tcp.into(),
        }
    }
}

impl TryFrom<pb::Service> for Service {
    type Error = ConvertError;

    fn try_from(s: pb::Service) -> Result<Self, ConvertError> {
        const M: &str = "Service";
        if s.name.is_empty() {
            return Err(ConvertError::missing(M, "name"));
        }
        let kind = match pb::ServiceType::try_from(s.r#type) {
            Ok(pb::ServiceType::ClusterIp | pb::ServiceType::Unspecified) => ServiceType::ClusterIp,
            Ok(pb::ServiceType::NodePort) => ServiceType::NodePort,
            Ok(pb::ServiceType::LoadBalancer) => ServiceType::LoadBalancer,
            Err(_) => {
                return Err(ConvertError::new(
                    M,
                    "type",
                    format!("unknown service type {}", s.r#type),
                ));
            }
        };
        let cluster_ip = match s.cluster_ip.as_str() {
            "" => ClusterIp::Auto,
            HEADLESS => ClusterIp::Headless,
            text => ClusterIp::Fixed(text.parse::<Ipv4Addr>().map_err(|e| {
                ConvertError::new(
                    M,
                    "cluster_ip",
                    format!("{text:?} is not an IPv4 address: {e}"),
                )
            })?),
        };
        let ports = s
            .ports
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                ServicePort::try_from(p).map_err(|e| e.in_field(M, &format!("ports[{i}]")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Service {
            name: s.name,
            selector: s.selector.into_iter().collect(),
            ports,
            kind,
            cluster_ip,
            strategy: strategy_from_pb(s.strategy).map_err(|e| e.in_field(M, "strategy"))?,
            workload_weights: s.workload_weights.into_iter().collect(),
            labels: s.labels.into_iter().collect(),
        })
    }
}

impl TryFrom<pb::ServicePort> for ServicePort {
    type Error = ConvertError;

    fn try_from(p: pb::ServicePort) -> Result<Self, ConvertError> {
        const M: &str = "ServicePort";
        let target = match p.target {
            Some(pb::service_port::Target::TargetNumber(n)) => {
                TargetPort::Number(port(M, "target_number", n)?)
            }
            Some(pb::service_port::Target::TargetName(name)) if !name.is_empty() => {
                TargetPort::Name(name)
            }
            Some(pb::service_port::Target::TargetName(_)) | None => {
                return Err(ConvertError::missing(M, "target"));
            }
        };
        Ok(ServicePort {
            name: p.name,
            port: port(M, "port", p.port)?,
            target,
            node_port: p.node_port.map(|v| port(M, "node_port", v)).transpose()?,
            protocol: Protocol::Tcp,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::Strategy;

    #[test]
    fn a_service_survives_the_wire() {
        let mut service = Service::for_workload("front", "web");
        service.kind = ServiceType::NodePort;
        service.cluster_ip = ClusterIp::Fixed(Ipv4Addr::new(10, 96, 0, 7));
        service.strategy = Strategy::LeastConn;
        service.workload_weights = BTreeMap::from([("v1".into(), 90), ("v2".into(), 10)]);
        service.ports.push(ServicePort {
            name: Some("http".into()),
            port: 80,
            target: TargetPort::Name("web".into()),
            node_port: Some(30080),
            protocol: Protocol::Tcp,
        });
        let back = Service::try_from(pb::Service::from(&service)).expect("converts");
        assert_eq!(back, service);
        service.cluster_ip = ClusterIp::Headless;
        let back = Service::try_from(pb::Service::from(&service)).expect("converts");
        assert_eq!(back.cluster_ip, ClusterIp::Headless);
    }

    #[test]
    fn a_bad_address_or_missing_target_is_named() {
        let mut wire = pb::Service::from(&Service::for_workload("front", "web"));
        wire.cluster_ip = "10.96.0.999".into();
        let err = Service::try_from(wire.clone()).expect_err("bad address");
        assert!(err.to_string().contains("cluster_ip"), "{err}");
        wire.cluster_ip.clear();
        wire.ports.push(pb::ServicePort {
            port: 80,
            ..Default::default()
        });
        let err = Service::try_from(wire).expect_err("no target");
        assert!(err.to_string().contains("ports[0].target"), "{err}");
    }
}
