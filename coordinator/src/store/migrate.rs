//! Migrations of the store's contents between [`super::STORE_FORMAT`]s, as pure functions
//! over the records' JSON, so a store of any older format is read the same way by every
//! store implementation.

use std::collections::BTreeMap;

use drover_proto::model::{Protocol, Service, ServicePort, ServiceType, Strategy, TargetPort};
use serde_json::Value;

use super::ServiceRecord;

/// Format 3: each workload whose current revision published ports (`ports[].service_port`,
/// the only kind of service there was) gets a service of its own name over it, reached on
/// every node's address as before (`LoadBalancer`), with the workload's old
/// `traffic.strategy`. `workload` is the workload record's JSON, `revision` its current
/// revision record's JSON. `None` when it published nothing.
pub fn service_of_legacy_workload(workload: &Value, revision: &Value) -> Option<ServiceRecord> {
    let name = workload.get("name")?.as_str()?;
    let ports: Vec<ServicePort> = revision
        .get("spec")?
        .get("ports")?
        .as_array()?
        .iter()
        .filter_map(|port| {
            let published = port.get("service_port")?.as_u64()?;
            let container = port.get("container_port")?.as_u64()?;
            Some(ServicePort {
                name: port.get("name").and_then(Value::as_str).map(str::to_string),
                port: u16::try_from(published).ok()?,
                target: TargetPort::Number(u16::try_from(container).ok()?),
                node_port: None,
                protocol: Protocol::Tcp,
            })
        })
        .collect();
    if ports.is_empty() {
        return None;
    }
    let strategy = workload
        .get("traffic")
        .and_then(|t| t.get("strategy"))
        .cloned()
        .and_then(|s| serde_json::from_value::<Strategy>(s).ok())
        .unwrap_or_default();
    let mut service = Service::for_workload(name, name);
    service.ports = ports;
    service.kind = ServiceType::LoadBalancer;
    service.strategy = strategy;
    let at = |field: &str| workload.get(field).and_then(Value::as_u64).unwrap_or(0);
    Some(ServiceRecord {
        service,
        created_unix_ms: at("created_unix_ms"),
        updated_unix_ms: at("updated_unix_ms"),
    })
}

/// The services format 3 gives a store of format 2: `workloads` by name and `revisions`
/// by (workload, revision), as JSON.
pub fn services_of_legacy_store(
    workloads: &BTreeMap<String, Value>,
    revisions: &BTreeMap<(String, u64), Value>,
) -> Vec<ServiceRecord> {
    workloads
        .iter()
        .filter_map(|(name, workload)| {
            let current = workload.get("revision")?.as_u64()?;
            let revision = revisions.get(&(name.clone(), current))?;
            service_of_legacy_workload(workload, revision)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn published_ports_of_the_current_revision_become_a_service_of_the_same_name() {
        let workloads = BTreeMap::from([
            (
                "web".to_string(),
                json!({"name": "web", "revision": 2, "created_unix_ms": 5, "updated_unix_ms": 7,
                       "traffic": {"strategy": "least_conn", "revision_weights": {}}}),
            ),
            (
                "worker".to_string(),
                json!({"name": "worker", "revision": 1, "traffic": {"strategy": "round_robin"}}),
            ),
        ]);
        let port = |container: u16, published: Option<u16>| {
            json!({"name": "http", "container_port": container, "service_port": published,
                   "host_port": null, "protocol": "tcp"})
        };
        let revisions = BTreeMap::from([
            (
                ("web".to_string(), 1),
                json!({"spec": {"ports": [port(7000, Some(81))]}}),
            ),
            (
                ("web".to_string(), 2),
                json!({"spec": {"ports": [port(8080, Some(80)), port(9090, None)]}}),
            ),
            (
                ("worker".to_string(), 1),
                json!({"spec": {"ports": [port(8080, None)]}}),
            ),
        ]);
        let services = services_of_legacy_store(&workloads, &revisions);
        assert_eq!(services.len(), 1, "{services:?}");
        let web = &services[0];
        assert_eq!(web.service.name, "web");
        assert_eq!(web.service.kind, ServiceType::LoadBalancer);
        assert_eq!(web.service.strategy, Strategy::LeastConn);
        assert_eq!(
            web.service.ports,
            [ServicePort {
                name: Some("http".into()),
                port: 80,
                target: TargetPort::Number(8080),
                node_port: None,
                protocol: Protocol::Tcp,
            }]
        );
        assert_eq!((web.created_unix_ms, web.updated_unix_ms), (5, 7));
        let selected = drover_proto::model::WorkloadSpec::new("web", "img");
        assert!(web.service.selects(&selected));
    }
}
