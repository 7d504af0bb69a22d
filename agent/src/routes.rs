//! What the service proxy routes to: the coordinator's route policy (which allocations
//! belong to a service, with what weights) intersected with gossip (whose node is alive and
//! whose health key says healthy). Pure; the proxy keeps routing on the last policy when the
//! coordinator is unreachable, and still follows gossip.
//!
//! The same task publishes the proxy's connection outcomes per revision
//! ([`ProxyManager::traffic`]) for the link, every [`TRAFFIC_INTERVAL`] when they changed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use drover_proto::convert::strategy_from_pb;
use drover_proto::gossip::MemberFacts;
use drover_proto::model::{AllocState, RevisionTraffic, Strategy};
use drover_proto::pb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::proxy::balancer::Endpoint;
use crate::proxy::listeners::{ProxyManager, ServiceRoute};

/// How often the proxy's traffic totals are published (when they changed): the batching of
/// the link's traffic updates. Short, as a canary step may last only a few seconds.
pub const TRAFFIC_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps the proxy's listeners and balancers in step with the policy and gossip until
/// `shutdown`; then stops the listeners (open connections drain). Meanwhile publishes the
/// node's cumulative traffic totals to `traffic` every [`TRAFFIC_INTERVAL`], when they changed.
pub async fn run(
    mut manager: ProxyManager,
    mut policy: watch::Receiver<Option<pb::RoutePolicy>>,
    mut live: watch::Receiver<BTreeMap<String, MemberFacts>>,
    traffic: watch::Sender<Vec<RevisionTraffic>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(TRAFFIC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'routes: loop {
        let routes = {
            let policy = policy.borrow_and_update();
            let live = live.borrow_and_update();
            service_routes(policy.as_ref(), &live)
        };
        manager.apply(routes).await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break 'routes,
                changed = policy.changed() => match changed {
                    Ok(()) => continue 'routes,
                    Err(_) => break 'routes,
                },
                changed = live.changed() => match changed {
                    Ok(()) => continue 'routes,
                    Err(_) => break 'routes,
                },
                _ = tick.tick() => {
                    publish_traffic(&traffic, manager.traffic());
                }
            }
        }
    }
    manager.shutdown().await;
}

/// Replaces the published totals with `totals` if they differ, so receivers wake only on a
/// change. Returns whether they did.
fn publish_traffic(
    traffic: &watch::Sender<Vec<RevisionTraffic>>,
    totals: Vec<RevisionTraffic>,
) -> bool {
    traffic.send_if_modified(|published| {
        let changed = *published != totals;
        if changed {
            *published = totals;
        }
        changed
    })
}

/// Routes for the proxy from the last policy and the live gossip members.
pub fn service_routes(
    policy: Option<&pb::RoutePolicy>,
    live: &BTreeMap<String, MemberFacts>,
) -> Vec<ServiceRoute> {
    let Some(policy) = policy else {
        return Vec::new();
    };
    let mut routes = Vec::new();
    for service in &policy.services {
        let Ok(port) = u16::try_from(service.service_port) else {
            warn!(service = %service.service, port = service.service_port, "service port out of range; not routed");
            continue;
        };
        let strategy = strategy_from_pb(service.strategy).unwrap_or(Strategy::RoundRobin);
        let endpoints = service
            .endpoints
            .iter()
            .filter_map(|e| endpoint(e, live))
            .collect();
        routes.push(ServiceRoute {
            service: service.service.clone(),
            port,
            strategy,
            revision_weights: service.revision_weights.clone().into_iter().collect(),
            endpoints,
        });
    }
    routes
}

/// An endpoint of the policy, if its node is alive and gossip says the allocation is healthy.
/// The address comes from gossip when it has one (a restarted container may have a new host
/// port before the coordinator's next policy says so).
fn endpoint(e: &pb::RouteEndpoint, live: &BTreeMap<String, MemberFacts>) -> Option<Endpoint> {
    let member = live.get(&e.node)?;
    if member.is_leaving() {
        return None;
    }
    let fact = member.allocations.get(&e.allocation_id)?;
    if fact.health != AllocState::Healthy {
        return None;
    }
    let address = fact
        .endpoint
        .or_else(|| e.address.parse::<SocketAddr>().ok())?;
    Some(Endpoint {
        id: e.allocation_id.clone(),
        address,
        revision: e.revision,
        weight: e.weight.max(1),
    })
}

#[cfg(test)]
mod tests {
    use drover_proto::gossip::AllocFact;

    use super::*;

    fn member(allocs: &[(&str, &str, AllocState)]) -> MemberFacts {
        let mut facts = MemberFacts::default();
        for (id, addr, health) in allocs {
            facts.allocations.insert(
                id.to_string(),
                AllocFact {
                    service: "web".into(),
                    revision: 1,
                    endpoint: addr.parse().ok(),
                    health: *health,
                },
            );
        }
        facts
    }

    fn policy(endpoints: &[(&str, &str)]) -> pb::RoutePolicy {
        pb::RoutePolicy {
            version: 1,
            services: vec![pb::ServiceRoute {
                service: "web".into(),
                service_port: 80,
                container_port: 8080,
                strategy: pb::Strategy::Random as i32,
                revision_weights: [(1, 100)].into_iter().collect(),
                endpoints: endpoints
                    .iter()
                    .map(|(id, node)| pb::RouteEndpoint {
                        allocation_id: id.to_string(),
                        node: node.to_string(),
                        revision: 1,
                        address: "10.0.0.1:1".into(),
                        weight: 1,
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn policy_intersected_with_alive_and_healthy() {
        let live: BTreeMap<String, MemberFacts> = [
            (
                "a".to_string(),
                member(&[
                    ("web.1", "127.0.0.2:3001", AllocState::Healthy),
                    ("web.2", "127.0.0.2:3002", AllocState::Unhealthy),
                ]),
            ),
            (
                "b".to_string(),
                member(&[("web.3", "", AllocState::Healthy)]),
            ),
        ]
        .into_iter()
        .collect();
        let p = policy(&[
            ("web.1", "a"),
            ("web.2", "a"),
            ("web.3", "b"),
            ("web.4", "dead"),
        ]);
        let routes = service_routes(Some(&p), &live);
        assert_eq!(routes.len(), 1);
        let route = &routes[0];
        assert_eq!((route.port, route.strategy), (80, Strategy::Random));
        let got: Vec<(String, String)> = route
            .endpoints
            .iter()
            .map(|e| (e.id.clone(), e.address.to_string()))
            .collect();
        // web.2 unhealthy, web.4's node not alive; web.3 has no gossip endpoint: the
        // policy's address is used.
        assert_eq!(
            got,
            vec![
                ("web.1".to_string(), "127.0.0.2:3001".to_string()),
                ("web.3".to_string(), "10.0.0.1:1".to_string()),
            ]
        );
    }

    #[test]
    fn traffic_is_published_only_when_it_changed() {
        let (tx, mut rx) = watch::channel(Vec::new());
        let web = |connections, failed| RevisionTraffic {
            service: "web".into(),
            revision: 2,
            connections,
            failed,
        };
        assert!(!publish_traffic(&tx, Vec::new()));
        assert!(!rx.has_changed().expect("open"));
        assert!(publish_traffic(&tx, vec![web(5, 1)]));
        assert_eq!(*rx.borrow_and_update(), vec![web(5, 1)]);
        assert!(!publish_traffic(&tx, vec![web(5, 1)]));
        assert!(!rx.has_changed().expect("open"));
        assert!(publish_traffic(&tx, vec![web(6, 1)]));
        assert!(rx.has_changed().expect("open"));
    }

    #[test]
    fn no_policy_no_routes() {
        assert!(service_routes(None, &BTreeMap::new()).is_empty());
    }
}
