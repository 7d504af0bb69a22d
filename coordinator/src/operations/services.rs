//! Operator requests on services (names and ports over workloads' replicas): apply,
//! delete, per-workload weights, and the ports every node listens on for them. Pure.

use std::collections::{BTreeMap, BTreeSet};

use drover_proto::manifest::{self, NODE_PORTS};
use drover_proto::model::{Service, ServiceType, WorkloadSpec};

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
    resolved
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
    format!(
        "{what}: {}, ports {}",
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
