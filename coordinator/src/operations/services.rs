//! Operator requests on services (names and ports over workloads' replicas): apply,
//! delete, per-workload weights, and the ports every node listens on for them. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use drover_proto::manifest::{self, NODE_PORTS};
use drover_proto::model::{ClusterIp, Service, ServiceType, WorkloadSpec};

use super::{ApplyChange, ApplyOutcome, ObjectKind, quoted};
use crate::changes::ChangeSet;
use crate::error::Error;
use crate::events;
use crate::state::ClusterState;
use crate::store::{ServiceRecord, Write};

/// Checks services about to be applied against each other and against those that stay:
/// names once, each valid, node ports free. Returns the services with the node ports
/// they get (kept from their stored record when they had one, else the lowest free one),
/// or every problem found.
pub(super) fn check(
    state: &ClusterState,
    services: &[Service],
    problems: &mut Vec<String>,
) -> Vec<Service> {
    let mut names = BTreeSet::new();
    for service in services {
        if !names.insert(service.name.as_str()) {
            problems.push(format!(
                "service {} appears more than once",
                quoted(&service.name)
            ));
        }
        for e in manifest::validate_service(service) {
            problems.push(format!("service {}: {e}", quoted(&service.name)));
        }
    }
    // Ports of the services that stay, then those of the apply; first come, first kept.
    let mut taken: BTreeMap<u16, String> = BTreeMap::new();
    for record in state.stored.services.values() {
        if names.contains(record.service.name.as_str()) {
            continue;
        }
        for port in &record.service.ports {
            if let Some(listen) = record.service.node_listen_port(port) {
                taken.insert(listen, record.service.name.clone());
            }
        }
    }
    let mut resolved: Vec<Service> = services.to_vec();
    for service in &resolved {
        for port in &service.ports {
            let Some(listen) = service.node_listen_port(port) else {
                continue;
            };
            match taken.get(&listen) {
                Some(other) if *other != service.name => problems.push(format!(
                    "port {listen} on every node is used by both service {} and service {}",
                    quoted(other),
                    quoted(&service.name)
                )),
                _ => {
                    taken.insert(listen, service.name.clone());
                }
            }
        }
    }
    // Node ports to pick: keep the stored one for the same port, else the lowest free.
    for service in &mut resolved {
        if service.kind != ServiceType::NodePort {
            continue;
        }
        let stored = state.stored.services.get(&service.name);
        for port in service.ports.iter_mut().filter(|p| p.node_port.is_none()) {
            let kept = stored
                .and_then(|r| r.service.ports.iter().find(|p| p.port == port.port))
                .and_then(|p| p.node_port)
                .filter(|p| taken.get(p).is_none_or(|owner| *owner == service.name));
            let picked = kept.or_else(|| NODE_PORTS.clone().find(|p| !taken.contains_key(p)));
            match picked {
                Some(node_port) => {
                    port.node_port = Some(node_port);
                    taken.insert(node_port, service.name.clone());
                }
                None => problems.push(format!(
                    "service {}: no node port is free in {}-{}",
                    quoted(&service.name),
                    NODE_PORTS.start(),
                    NODE_PORTS.end()
                )),
            }
        }
    }
    assign_addresses(state, &names, &mut resolved, problems);
    resolved
}

/// Gives each service about to be applied its cluster address: the one it has (a service
/// keeps its address for life, as Kubernetes' `spec.clusterIP` is immutable), else the
/// one its manifest names if that is free and in the service network, else the lowest free
/// one. Headless services have none.
fn assign_addresses(
    state: &ClusterState,
    applying: &BTreeSet<&str>,
    services: &mut [Service],
    problems: &mut Vec<String>,
) {
    let network = state.settings.service_network;
    let mut taken: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for record in state.stored.services.values() {
        if let Some(ip) = record.service.cluster_address()
            && !applying.contains(record.service.name.as_str())
        {
            taken.insert(ip, record.service.name.clone());
        }
    }
    // Addresses kept and asked for first, so that a new service never takes one of them.
    let mut unassigned = Vec::new();
    for (index, service) in services.iter_mut().enumerate() {
        let name = quoted(&service.name);
        let stored = state.stored.services.get(&service.name);
        let had = stored.map(|r| r.service.cluster_ip);
        let wanted = match (had, service.cluster_ip) {
            (Some(ClusterIp::Fixed(ip)), ClusterIp::Auto) => ip,
            (Some(ClusterIp::Fixed(ip)), ClusterIp::Fixed(asked)) if asked == ip => ip,
            (Some(ClusterIp::Headless), ClusterIp::Headless) | (None, ClusterIp::Headless) => {
                continue;
            }
            (None | Some(ClusterIp::Auto), ClusterIp::Auto) => {
                unassigned.push(index);
                continue;
            }
            (None | Some(ClusterIp::Auto), ClusterIp::Fixed(asked)) => {
                if let Some(refusal) = network.refusal(asked) {
                    problems.push(format!("service {name}: clusterIP {refusal}"));
                    continue;
                }
                asked
            }
            (Some(had), asked) => {
                problems.push(format!(
                    "service {name}: its cluster address is {} and cannot become {} \
                     (delete the service and apply it again to change it)",
                    show(had),
                    show(asked)
                ));
                continue;
            }
        };
        match taken.get(&wanted) {
            Some(other) if *other != service.name => problems.push(format!(
                "service {name}: cluster address {wanted} is service {}'s",
                quoted(other)
            )),
            _ => {
                taken.insert(wanted, service.name.clone());
                service.cluster_ip = ClusterIp::Fixed(wanted);
            }
        }
    }
    for index in unassigned {
        let service = &mut services[index];
        match network.lowest_free(&taken) {
            Some(ip) => {
                taken.insert(ip, service.name.clone());
                service.cluster_ip = ClusterIp::Fixed(ip);
            }
            None => problems.push(format!(
                "service {}: no cluster address is free in the service network {network}",
                quoted(&service.name)
            )),
        }
    }
}

/// A cluster address as manifests write it.
fn show(ip: ClusterIp) -> String {
    match ip {
        ClusterIp::Auto => "one allocated".to_string(),
        ClusterIp::Headless => "None (headless)".to_string(),
        ClusterIp::Fixed(ip) => ip.to_string(),
    }
}

/// Cluster addresses for stored services that have none (those of a store written before
/// services had addresses): the lowest free ones. Returns the services left without one
/// because the network is full.
pub fn assign_missing_addresses(state: &ClusterState, changes: &mut ChangeSet) -> Vec<String> {
    let mut taken: BTreeMap<Ipv4Addr, String> = state
        .stored
        .services
        .values()
        .filter_map(|r| Some((r.service.cluster_address()?, r.service.name.clone())))
        .collect();
    let mut left = Vec::new();
    for record in state.stored.services.values() {
        if record.service.cluster_ip != ClusterIp::Auto {
            continue;
        }
        let Some(ip) = state.settings.service_network.lowest_free(&taken) else {
            left.push(record.service.name.clone());
            continue;
        };
        taken.insert(ip, record.service.name.clone());
        let mut updated = record.clone();
        updated.service.cluster_ip = ClusterIp::Fixed(ip);
        updated.updated_unix_ms = changes.now_unix_ms();
        changes.event(
            events::SERVICE_CHANGED,
            &record.service.name,
            format!("cluster address {ip}"),
        );
        changes.push(Write::PutService(updated));
    }
    left
}

/// Writes checked services (from [`check`]); returns what each apply did.
pub(super) fn apply(
    state: &ClusterState,
    services: Vec<Service>,
    changes: &mut ChangeSet,
) -> Vec<ApplyOutcome> {
    let now = changes.now_unix_ms();
    let mut outcomes = Vec::with_capacity(services.len());
    for mut service in services {
        let existing = state.stored.services.get(&service.name);
        if let Some(existing) = existing
            && service.workload_weights.is_empty()
        {
            // Weights set with `drover weights` stay until the manifest sets some.
            service.workload_weights = existing.service.workload_weights.clone();
        }
        let change = match existing {
            None => ApplyChange::Created,
            Some(r) if r.service == service => ApplyChange::Unchanged,
            Some(_) => ApplyChange::Updated,
        };
        outcomes.push(ApplyOutcome {
            kind: ObjectKind::Service,
            name: service.name.clone(),
            revision: 0,
            change,
        });
        let (kind, message) = match change {
            ApplyChange::Unchanged => continue,
            ApplyChange::Created => (events::SERVICE_PUBLISHED, describe(&service, "created")),
            ApplyChange::Updated => (events::SERVICE_CHANGED, describe(&service, "changed")),
        };
        changes.event(kind, &service.name, message);
        changes.push(Write::PutService(ServiceRecord {
            created_unix_ms: existing.map_or(now, |r| r.created_unix_ms),
            updated_unix_ms: now,
            service,
        }));
    }
    outcomes
}

fn describe(service: &Service, what: &str) -> String {
    let ports: Vec<String> = service
        .ports
        .iter()
        .map(|p| match p.node_port {
            Some(node) if service.kind == ServiceType::NodePort => {
                format!("{}→{} (node port {node})", p.port, p.target)
            }
            _ => format!("{}→{}", p.port, p.target),
        })
        .collect();
    let address = match service.cluster_ip {
        ClusterIp::Headless => "headless".to_string(),
        ip => format!("address {}", show(ip)),
    };
    format!(
        "{what}: {}, {address}, ports {}",
        service.kind.as_str(),
        ports.join(", ")
    )
}

/// Deletes a service. `Ok(false)` when there is none of that name.
pub(super) fn delete(state: &ClusterState, name: &str, changes: &mut ChangeSet) -> bool {
    if !state.stored.services.contains_key(name) {
        return false;
    }
    changes.push(Write::DeleteService(name.to_string()));
    changes.event(events::SERVICE_REMOVED, name, "deleted".to_string());
    true
}

/// Sets the share of a service's traffic each workload it selects gets.
pub fn set_workload_weights(
    state: &ClusterState,
    name: &str,
    weights: BTreeMap<String, u32>,
    changes: &mut ChangeSet,
) -> Result<(), Error> {
    let record = state
        .stored
        .services
        .get(name)
        .ok_or_else(|| Error::NotFound {
            kind: "service",
            name: name.to_string(),
        })?;
    if weights.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "service {}: no weights given",
            quoted(name)
        )));
    }
    let selected: Vec<WorkloadSpec> = state.selected_workloads(&record.service);
    let names: BTreeSet<&str> = selected.iter().map(|w| w.name.as_str()).collect();
    if let Some(unknown) = weights.keys().find(|w| !names.contains(w.as_str())) {
        let known: Vec<&str> = names.iter().copied().collect();
        return Err(Error::InvalidArgument(format!(
            "service {}: it does not select workload {} (it selects: {})",
            quoted(name),
            quoted(unknown),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    }
    let mut updated = record.clone();
    updated.service.workload_weights = weights;
    if let Some(e) = manifest::validate_service(&updated.service)
        .into_iter()
        .next()
    {
        return Err(Error::InvalidArgument(format!(
            "service {}: {e}",
            quoted(name)
        )));
    }
    let text: Vec<String> = updated
        .service
        .workload_weights
        .iter()
        .map(|(w, n)| format!("{w}={n}"))
        .collect();
    updated.updated_unix_ms = changes.now_unix_ms();
    changes.push(Write::PutService(updated));
    changes.event(
        events::SERVICE_CHANGED,
        name,
        format!("workload weights {}", text.join(" ")),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use drover_proto::model::{Protocol, ServicePort, TargetPort};

    use super::*;

    fn service(name: &str, kind: ServiceType, cluster_ip: ClusterIp) -> Service {
        let mut service = Service::for_workload(name, name);
        service.kind = kind;
        service.cluster_ip = cluster_ip;
        service.ports.push(ServicePort {
            name: None,
            port: 80,
            target: TargetPort::Number(8080),
            node_port: None,
            protocol: Protocol::Tcp,
        });
        service
    }

    fn ip(last: u8) -> ClusterIp {
        ClusterIp::Fixed(Ipv4Addr::new(10, 96, 0, last))
    }

    fn store(state: &mut ClusterState, services: Vec<Service>) {
        for service in services {
            state.stored.services.insert(
                service.name.clone(),
                ServiceRecord {
                    service,
                    created_unix_ms: 0,
                    updated_unix_ms: 0,
                },
            );
        }
    }

    /// `check` of `services`: the addresses they get, or the problems.
    fn checked(state: &ClusterState, services: &[Service]) -> Result<Vec<ClusterIp>, String> {
        let mut problems = Vec::new();
        let resolved = check(state, services, &mut problems);
        if problems.is_empty() {
            Ok(resolved.iter().map(|s| s.cluster_ip).collect())
        } else {
            Err(problems.join("; "))
        }
    }

    #[test]
    fn new_services_get_the_lowest_free_addresses_after_those_asked_for() {
        let mut state = ClusterState::default();
        store(
            &mut state,
            vec![service("old", ServiceType::ClusterIp, ip(2))],
        );
        let services = [
            service("a", ServiceType::ClusterIp, ClusterIp::Auto),
            service("b", ServiceType::ClusterIp, ip(1)),
            service("c", ServiceType::ClusterIp, ClusterIp::Auto),
            service("h", ServiceType::ClusterIp, ClusterIp::Headless),
        ];
        // Two ClusterIP services on port 80 are no clash: neither is on node addresses.
        assert_eq!(
            checked(&state, &services),
            Ok(vec![ip(3), ip(1), ip(4), ClusterIp::Headless])
        );
    }

    #[test]
    fn a_service_keeps_its_address_and_cannot_change_it() {
        let mut state = ClusterState::default();
        store(
            &mut state,
            vec![
                service("web", ServiceType::ClusterIp, ip(7)),
                service("db", ServiceType::ClusterIp, ClusterIp::Headless),
            ],
        );
        let web = |cluster_ip| service("web", ServiceType::ClusterIp, cluster_ip);
        assert_eq!(checked(&state, &[web(ClusterIp::Auto)]), Ok(vec![ip(7)]));
        assert_eq!(checked(&state, &[web(ip(7))]), Ok(vec![ip(7)]));
        let err = checked(&state, &[web(ip(8))]).expect_err("moved");
        assert!(
            err.contains("its cluster address is 10.96.0.7 and cannot become 10.96.0.8"),
            "{err}"
        );
        let err = checked(&state, &[web(ClusterIp::Headless)]).expect_err("to headless");
        assert!(err.contains("cannot become None (headless)"), "{err}");
        let db = service("db", ServiceType::ClusterIp, ClusterIp::Auto);
        let err = checked(&state, &[db]).expect_err("headless to an address");
        assert!(
            err.contains("is None (headless) and cannot become"),
            "{err}"
        );
    }

    #[test]
    fn an_address_asked_for_must_be_free_and_in_the_network() {
        let mut state = ClusterState::default();
        store(
            &mut state,
            vec![service("web", ServiceType::ClusterIp, ip(7))],
        );
        let asking = |ip| [service("api", ServiceType::ClusterIp, ClusterIp::Fixed(ip))];
        for (asked, expected) in [
            (Ipv4Addr::new(10, 96, 0, 7), "is service \"web\"'s"),
            (
                Ipv4Addr::new(10, 96, 0, 10),
                "reserved for the cluster's DNS",
            ),
            (
                Ipv4Addr::new(192, 168, 0, 7),
                "outside the service network 10.96.0.0/16",
            ),
        ] {
            let err = checked(&state, &asking(asked)).expect_err("refused");
            assert!(err.contains(expected), "{asked}: {err}");
        }
        // Two services of one apply asking for the same address.
        let both = [
            service("a", ServiceType::ClusterIp, ip(9)),
            service("b", ServiceType::ClusterIp, ip(9)),
        ];
        let err = checked(&state, &both).expect_err("clash");
        assert!(
            err.contains("cluster address 10.96.0.9 is service \"a\"'s"),
            "{err}"
        );
    }

    #[test]
    fn services_of_an_older_store_get_addresses_once() {
        let mut state = ClusterState::default();
        store(
            &mut state,
            vec![
                service("a", ServiceType::LoadBalancer, ClusterIp::Auto),
                service("b", ServiceType::ClusterIp, ip(1)),
                service("c", ServiceType::ClusterIp, ClusterIp::Headless),
            ],
        );
        let mut changes = ChangeSet::new(&state, 5);
        assert!(assign_missing_addresses(&state, &mut changes).is_empty());
        let (writes, events) = changes.finish();
        assert_eq!(events.len(), 1);
        state.apply(&writes);
        let addresses: Vec<ClusterIp> = state
            .stored
            .services
            .values()
            .map(|r| r.service.cluster_ip)
            .collect();
        assert_eq!(addresses, [ip(2), ip(1), ClusterIp::Headless]);
        let mut again = ChangeSet::new(&state, 6);
        assign_missing_addresses(&state, &mut again);
        assert!(again.is_empty(), "nothing left to assign");
    }

    #[test]
    fn node_ports_are_kept_and_clashes_refused() {
        let mut state = ClusterState::default();
        let mut stored = service("web", ServiceType::NodePort, ip(1));
        stored.ports[0].node_port = Some(30007);
        store(&mut state, vec![stored]);
        let mut problems = Vec::new();
        let again = check(
            &state,
            &[service("web", ServiceType::NodePort, ClusterIp::Auto)],
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(again[0].ports[0].node_port, Some(30007), "kept");
        let mut other = service("api", ServiceType::NodePort, ClusterIp::Auto);
        other.ports[0].node_port = Some(30007);
        let err = checked(&state, &[other]).expect_err("clash");
        assert!(
            err.contains("port 30007 on every node is used by both"),
            "{err}"
        );
        let picked = check(
            &state,
            &[service("api", ServiceType::NodePort, ClusterIp::Auto)],
            &mut problems,
        );
        assert_eq!(picked[0].ports[0].node_port, Some(30000), "lowest free");
    }
}
