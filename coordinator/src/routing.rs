//! The route policy every proxy follows (pure): for each port of each service, the
//! replicas of the workloads it selects, where they listen, and the weights of their pools.
//!
//! A pool is one revision of one workload. When a service selects one workload and sets no
//! workload weights, a pool is the revision number and its weight the workload's revision
//! weights (a canary split, `drover weights web 1=90 2=10`), as before services and
//! workloads were apart. Otherwise a pool is `workload index << 32 | revision` and its
//! weight the workload's share (its `workload_weights`, or else its number of replicas)
//! split over its revisions by their weights (or else their replica counts).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use drover_proto::model::{DesiredState, RouteEndpoint, Service, ServiceRoute, WorkloadSpec};

use crate::rollout;
use crate::state::ClusterState;

/// Weight units a workload's share is split into across its revisions.
const SPLIT: u64 = 1000;

/// Route policy: for each port of each service (headless ones too: the agents' DNS
/// answers with their endpoints), its cluster address and node port, its endpoints (allocations
/// that should run, with their address once known: the node's address and the host port
/// its agent last reported, so a restarted container's new port is in the next push) and
/// the pool weights. Proxies take addresses from here only; gossip can only take an
/// endpoint out of rotation.
pub fn route_policy(state: &ClusterState) -> Vec<ServiceRoute> {
    let mut routes = Vec::new();
    for record in state.stored.services.values() {
        let service = &record.service;
        let workloads = state.selected_workloads(service);
        let (pool_of, pool_weights) = pools(state, service, &workloads);
        for port in &service.ports {
            let mut endpoints = Vec::new();
            for (index, workload) in workloads.iter().enumerate() {
                endpoints.extend(endpoints_of(state, workload, index, port, &pool_of));
            }
            routes.push(ServiceRoute {
                service: service.name.clone(),
                port: port.port,
                port_name: port.name.clone(),
                cluster_ip: service.cluster_address(),
                node_port: service.node_listen_port(port),
                strategy: service.strategy,
                pool_weights: pool_weights.clone(),
                endpoints,
            });
        }
    }
    routes
}

/// How a workload's revision maps to a pool: `(workload index, revision) → pool`.
type PoolOf = fn(usize, u64) -> u64;

fn by_revision(_: usize, revision: u64) -> u64 {
    revision
}

fn by_workload(index: usize, revision: u64) -> u64 {
    ((index as u64) << 32) | (revision & 0xffff_ffff)
}

/// The pool mapping and the pool weights of a service (empty weights: one pool).
fn pools(
    state: &ClusterState,
    service: &Service,
    workloads: &[WorkloadSpec],
) -> (PoolOf, BTreeMap<u64, u32>) {
    if workloads.len() == 1 && service.workload_weights.is_empty() {
        return (
            by_revision,
            rollout::route_weights(state, &workloads[0].name),
        );
    }
    let revision_weights: Vec<BTreeMap<u64, u32>> = workloads
        .iter()
        .map(|w| rollout::route_weights(state, &w.name))
        .collect();
    if service.workload_weights.is_empty() && revision_weights.iter().all(BTreeMap::is_empty) {
        return (by_workload, BTreeMap::new());
    }
    let mut weights = BTreeMap::new();
    for (index, workload) in workloads.iter().enumerate() {
        let live = live_by_revision(state, &workload.name);
        let share = if service.workload_weights.is_empty() {
            live.values().map(|n| u64::from(*n)).sum()
        } else {
            u64::from(
                service
                    .workload_weights
                    .get(&workload.name)
                    .copied()
                    .unwrap_or(0),
            )
        };
        let split = if revision_weights[index].is_empty() {
            &live
        } else {
            &revision_weights[index]
        };
        let total: u64 = split.values().map(|w| u64::from(*w)).sum();
        for (revision, part) in split {
            let weight = (share * SPLIT * u64::from(*part))
                .checked_div(total)
                .unwrap_or(0);
            weights.insert(
                by_workload(index, *revision),
                u32::try_from(weight).unwrap_or(u32::MAX),
            );
        }
    }
    (by_workload, weights)
}

/// Replicas of a workload that should run and have not ended, by revision.
fn live_by_revision(state: &ClusterState, workload: &str) -> BTreeMap<u64, u32> {
    let mut live = BTreeMap::new();
    for alloc in state.allocations_of(workload) {
        if alloc.desired == DesiredState::Run && !state.alloc_state(&alloc.id).is_terminal() {
            *live.entry(alloc.revision).or_default() += 1;
        }
    }
    live
}

fn endpoints_of(
    state: &ClusterState,
    workload: &WorkloadSpec,
    index: usize,
    port: &drover_proto::model::ServicePort,
    pool_of: &PoolOf,
) -> Vec<RouteEndpoint> {
    let mut endpoints = Vec::new();
    for alloc in state.allocations_of(&workload.name) {
        if alloc.desired != DesiredState::Run {
            continue;
        }
        // A named target resolves in the revision the replica runs.
        let spec = state
            .revision_spec(&workload.name, alloc.revision)
            .unwrap_or(workload);
        let Some(container_port) = Service::target_port(port, spec) else {
            continue;
        };
        // Every member is listed; proxies route only to those gossip says are alive and
        // healthy.
        let host_port = state
            .status
            .get(&alloc.id)
            .and_then(|s| s.host_ports.get(&container_port).copied());
        // A node address that is not an IP gets no routed endpoint.
        let ip = state
            .nodes
            .get(&alloc.node)
            .and_then(|n| n.info.address.parse::<IpAddr>().ok());
        endpoints.push(RouteEndpoint {
            allocation_id: alloc.id.clone(),
            node: alloc.node.clone(),
            revision: alloc.revision,
            address: ip.zip(host_port).map(|(ip, p)| SocketAddr::new(ip, p)),
            weight: 1,
            workload: workload.name.clone(),
            pool: pool_of(index, alloc.revision),
            container_port,
        });
    }
    endpoints
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use drover_proto::model::{
        Allocation, ClusterIp, DesiredState, PortSpec, Protocol, Resources, Service, ServicePort,
        ServiceType, TargetPort, Traffic, WorkloadSpec,
    };

    use super::*;
    use crate::store::{RevisionRecord, ServiceRecord, WorkloadRecord};

    /// A workload `name` labelled app=hello, listening on 8080 named "http", with
    /// `replicas` allocations of revision 1.
    fn workload(state: &mut ClusterState, name: &str, replicas: u32) {
        let mut spec = WorkloadSpec::new(name, "img");
        spec.pod_labels = BTreeMap::from([("app".into(), "hello".into())]);
        spec.ports.push(PortSpec {
            name: Some("http".into()),
            container_port: 8080,
            host_port: None,
            protocol: Protocol::Tcp,
        });
        state.stored.workloads.insert(
            name.into(),
            WorkloadRecord::new(name, 1, replicas, Traffic::default(), 0),
        );
        state.stored.revisions.insert(
            (name.into(), 1),
            RevisionRecord {
                service: name.into(),
                revision: 1,
                spec,
                created_unix_ms: 0,
                cause: String::new(),
            },
        );
        for i in 0..replicas {
            let id = format!("{name}.{i}");
            state.stored.allocations.insert(
                id.clone(),
                Allocation {
                    id,
                    service: name.into(),
                    revision: 1,
                    node: "n1".into(),
                    resources: Resources::default(),
                    desired: DesiredState::Run,
                    created_unix_ms: 0,
                },
            );
        }
    }

    fn service(state: &mut ClusterState, name: &str, weights: &[(&str, u32)]) {
        let mut service = Service::for_workload(name, "unused");
        service.selector = BTreeMap::from([("app".into(), "hello".into())]);
        service.kind = ServiceType::LoadBalancer;
        service.ports.push(ServicePort {
            name: None,
            port: 80,
            target: TargetPort::Name("http".into()),
            node_port: None,
            protocol: Protocol::Tcp,
        });
        service.workload_weights = weights.iter().map(|(w, n)| (w.to_string(), *n)).collect();
        state.stored.services.insert(
            name.into(),
            ServiceRecord {
                service,
                created_unix_ms: 0,
                updated_unix_ms: 0,
            },
        );
    }

    #[test]
    fn one_service_over_two_workloads_splits_by_workload_weights() {
        let mut state = ClusterState::default();
        workload(&mut state, "v1", 2);
        workload(&mut state, "v2", 1);
        service(&mut state, "front", &[("v1", 90), ("v2", 10)]);
        let routes = route_policy(&state);
        assert_eq!(routes.len(), 1);
        let route = &routes[0];
        assert_eq!(
            (route.service.as_str(), route.port, route.node_port),
            ("front", 80, Some(80))
        );
        assert_eq!(route.endpoints.len(), 3);
        assert!(route.endpoints.iter().all(|e| e.container_port == 8080));
        let pools: BTreeMap<&str, u64> = route
            .endpoints
            .iter()
            .map(|e| (e.workload.as_str(), e.pool))
            .collect();
        assert_eq!(pools, BTreeMap::from([("v1", 1), ("v2", (1 << 32) | 1)]));
        // The workloads' shares, whatever their replica counts.
        assert_eq!(
            route.pool_weights,
            BTreeMap::from([(1, 90 * SPLIT as u32), ((1 << 32) | 1, 10 * SPLIT as u32)])
        );
    }

    #[test]
    fn without_weights_every_replica_counts_alike_and_one_workload_keeps_revision_pools() {
        let mut state = ClusterState::default();
        workload(&mut state, "v1", 2);
        workload(&mut state, "v2", 1);
        service(&mut state, "front", &[]);
        let route = &route_policy(&state)[0];
        assert!(
            route.pool_weights.is_empty(),
            "one pool of all three replicas"
        );
        assert_eq!(route.endpoints.len(), 3);

        let mut state = ClusterState::default();
        workload(&mut state, "v1", 2);
        service(&mut state, "front", &[]);
        let route = &route_policy(&state)[0];
        assert!(route.endpoints.iter().all(|e| e.pool == e.revision));
    }

    #[test]
    fn addresses_follow_the_service_type_and_a_missing_target_routes_nothing() {
        let mut state = ClusterState::default();
        workload(&mut state, "v1", 1);
        service(&mut state, "front", &[]);
        let record = state.stored.services.get_mut("front").expect("front");
        record.service.cluster_ip = ClusterIp::Fixed(std::net::Ipv4Addr::new(10, 96, 0, 3));
        record.service.ports[0].target = TargetPort::Name("grpc".into());
        let route = &route_policy(&state)[0];
        assert!(route.endpoints.is_empty());
        assert_eq!(
            (route.cluster_ip, route.node_port),
            (Some(std::net::Ipv4Addr::new(10, 96, 0, 3)), Some(80))
        );

        let record = state.stored.services.get_mut("front").expect("front");
        record.service.kind = ServiceType::ClusterIp;
        record.service.ports[0].target = TargetPort::Number(8080);
        let route = &route_policy(&state)[0];
        assert_eq!(route.node_port, None, "a ClusterIP service is not on nodes");
        assert_eq!(route.endpoints.len(), 1);

        // Headless: no address of its own, but its endpoints (for DNS).
        let record = state.stored.services.get_mut("front").expect("front");
        record.service.cluster_ip = ClusterIp::Headless;
        let route = &route_policy(&state)[0];
        assert_eq!((route.cluster_ip, route.node_port), (None, None));
        assert_eq!(route.endpoints.len(), 1);
    }
}
