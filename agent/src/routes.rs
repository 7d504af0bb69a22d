//! What the service proxy routes to: the coordinator's route policy (which allocations
//! belong to a service, where they listen, with what weights) intersected with gossip (whose
//! node is alive and whose health key says healthy). Pure; the proxy keeps routing on the
//! last policy when the coordinator is unreachable, and still follows gossip.
//!
//! Gossip is unauthenticated: anyone who can send one UDP datagram to a member can publish
//! facts. So gossip decides nothing here, it can only take an endpoint out: the address is
//! always the policy's, an allocation the policy does not list is never routed, and only
//! the member the policy names as the endpoint's node vouches for its health.
//!
//! The same task publishes the proxy's connection outcomes per revision
//! ([`ProxyManager::traffic`]) for the link, every [`TRAFFIC_INTERVAL`] when they changed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use drover_proto::gossip::MemberFacts;
use drover_proto::model::{
    AllocState, ClusterDns, RouteEndpoint, RoutePolicy, ServiceRoute as PolicyRoute,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster_ips::{ClusterAddresses, LoopbackAddresses};
use crate::dns::Records;
use crate::proxy::balancer::Endpoint;
use crate::proxy::listeners::{NodeTraffic, ProxyManager, ProxyTotals, ServiceRoute};
use crate::supervisor::NAMESPACE;

/// How long after the agent starts a node gossip has not reported on yet is taken at the
/// policy's word: a restarted agent (its listeners and connections handed over, its policy
/// restored from disk) routes at once instead of refusing connections until gossip has
/// heard from every node. A replica that is in fact gone costs a connect, retried on
/// another one.
pub const STARTUP_GRACE: Duration = Duration::from_secs(5);

/// What the routes make of an endpoint on a node gossip has not reported on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownNodes {
    /// Not routed: the node is not known to be alive (after [`STARTUP_GRACE`]).
    Excluded,
    /// Routed by the policy alone (within [`STARTUP_GRACE`]).
    Routed,
}

/// How often the proxy's traffic totals are published (when they changed): the batching of
/// the link's traffic updates. Short, as a canary step may last only a few seconds.
pub const TRAFFIC_INTERVAL: Duration = Duration::from_secs(1);

/// Where this node listens for services: its proxy address (node ports) and, unless
/// turned off, every service's cluster address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addressing {
    /// The node's proxy address.
    pub node: IpAddr,
    /// Listen on services' cluster addresses.
    pub cluster_ips: bool,
    /// Also listen on the node's address on each ClusterIP service's own port (`drover
    /// dev`, so that the host reaches the seed's service at 127.0.0.1:80).
    pub cluster_services_on_node: bool,
}

/// Keeps the proxy's listeners and balancers, and the cluster addresses on `lo`
/// (`addresses`, when this agent serves them), in step with the policy and gossip until
/// `shutdown`; then stops the listeners (open connections drain; the addresses stay for the
/// next agent). `cluster_dns` is the cluster DNS the desired sets name (or the saved one),
/// whose address this agent serves and whose network bounds what it removes. Meanwhile
/// publishes the node's cumulative traffic totals to `traffic` every [`TRAFFIC_INTERVAL`],
/// when they changed, and removes the addresses of routes whose last connection has
/// drained.
#[allow(clippy::too_many_arguments)]
pub async fn run<L: LoopbackAddresses>(
    mut manager: ProxyManager,
    addressing: Addressing,
    mut addresses: Option<ClusterAddresses<L>>,
    mut policy: watch::Receiver<Option<RoutePolicy>>,
    mut live: watch::Receiver<BTreeMap<String, MemberFacts>>,
    mut cluster_dns: watch::Receiver<Option<ClusterDns>>,
    records: Option<watch::Sender<Arc<Records>>>,
    published: Published,
    shutdown: CancellationToken,
) {
    let Published { traffic, totals } = published;
    let grace_ends = tokio::time::Instant::now() + STARTUP_GRACE;
    let mut tick = tokio::time::interval(TRAFFIC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'routes: loop {
        let in_grace = tokio::time::Instant::now() < grace_ends;
        let unknown = if in_grace {
            UnknownNodes::Routed
        } else {
            UnknownNodes::Excluded
        };
        let dns = cluster_dns.borrow_and_update().clone();
        let routes = {
            let policy = policy.borrow_and_update();
            let live = live.borrow_and_update();
            if let (Some(records), Some(dns)) = (&records, &dns) {
                records.send_replace(Arc::new(dns_records(policy.as_ref(), &live, dns, unknown)));
            }
            service_routes(policy.as_ref(), &live, addressing, unknown)
        };
        let mut wanted = cluster_addresses(&addressing, policy.borrow().as_ref());
        // The cluster DNS's address, where this agent serves it.
        wanted.extend(
            dns.as_ref()
                .filter(|_| records.is_some())
                .map(|d| d.address),
        );
        if let Some(addresses) = addresses.as_mut() {
            addresses.ensure(&wanted).await;
        }
        let has_policy = policy.borrow().is_some();
        // Before the first policy there is nothing to route, and listeners taken over from
        // the agent before a restart wait for it.
        if has_policy {
            manager.apply(routes).await;
        }
        release_unused(
            &manager,
            &wanted,
            dns.as_ref(),
            has_policy,
            addresses.as_mut(),
        )
        .await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break 'routes,
                () = tokio::time::sleep_until(grace_ends), if in_grace => continue 'routes,
                changed = policy.changed() => match changed {
                    Ok(()) => continue 'routes,
                    Err(_) => break 'routes,
                },
                changed = live.changed() => match changed {
                    Ok(()) => continue 'routes,
                    Err(_) => break 'routes,
                },
                // The link sends it only when it changed.
                changed = cluster_dns.changed() => match changed {
                    Ok(()) => continue 'routes,
                    Err(_) => break 'routes,
                },
                _ = tick.tick() => {
                    publish(&traffic, manager.node_traffic());
                    publish(&totals, manager.totals());
                    manager.reap();
                    release_unused(&manager, &wanted, dns.as_ref(), has_policy, addresses.as_mut()).await;
                }
            }
        }
    }
    manager.shutdown().await;
}

/// What the cluster DNS answers: the services of the policy, headless ones with the
/// endpoints the proxy would route to.
fn dns_records(
    policy: Option<&RoutePolicy>,
    live: &BTreeMap<String, MemberFacts>,
    dns: &ClusterDns,
    unknown: UnknownNodes,
) -> Records {
    match policy {
        Some(policy) => Records::build(
            policy,
            |e| endpoint(e, live, unknown).is_some(),
            &dns.domain,
            NAMESPACE,
        ),
        None => Records::empty(&dns.domain, NAMESPACE),
    }
}

/// The cluster addresses the routes listen on.
fn cluster_addresses(addressing: &Addressing, policy: Option<&RoutePolicy>) -> BTreeSet<Ipv4Addr> {
    match policy {
        // What `listen_addresses` listens on besides the node's address.
        Some(policy) if addressing.cluster_ips => policy
            .services
            .iter()
            .filter_map(|s| s.cluster_ip)
            .collect(),
        _ => BTreeSet::new(),
    }
}

/// Removes the cluster addresses that neither the routes nor a draining connection use.
async fn release_unused<L: LoopbackAddresses>(
    manager: &ProxyManager,
    wanted: &BTreeSet<Ipv4Addr>,
    dns: Option<&ClusterDns>,
    has_policy: bool,
    addresses: Option<&mut ClusterAddresses<L>>,
) {
    let Some(addresses) = addresses else {
        return;
    };
    // Until this agent has a policy and network (the coordinator's, or those an earlier
    // agent kept), the addresses an earlier agent left are kept (they are what the host's
    // containers use).
    let Some(network) = dns.and_then(|d| d.service_network.parse::<ipnet::Ipv4Net>().ok()) else {
        return;
    };
    if !has_policy {
        return;
    }
    let mut keep = wanted.clone();
    keep.extend(
        manager
            .addresses_in_use()
            .iter()
            .filter_map(|a| match a.ip() {
                IpAddr::V4(ip) => Some(ip),
                IpAddr::V6(_) => None,
            }),
    );
    if addresses.present().iter().any(|ip| !keep.contains(ip)) {
        addresses.release(&keep, network).await;
    }
}

/// Where the routing task publishes what the proxy counted, every [`TRAFFIC_INTERVAL`]
/// when it changed.
#[derive(Debug)]
pub struct Published {
    /// For the link: outcomes per revision, connections per replica.
    pub traffic: watch::Sender<NodeTraffic>,
    /// For the metrics: everything, per service and per revision.
    pub totals: watch::Sender<ProxyTotals>,
}

/// Replaces what `sender` holds with `value` if they differ, so receivers wake only on a
/// change. Returns whether they did.
fn publish<T: PartialEq>(sender: &watch::Sender<T>, value: T) -> bool {
    sender.send_if_modified(|published| {
        let changed = *published != value;
        if changed {
            *published = value;
        }
        changed
    })
}

/// Routes for the proxy from the last policy and the live gossip members, listening
/// where `addressing` says.
pub fn service_routes(
    policy: Option<&RoutePolicy>,
    live: &BTreeMap<String, MemberFacts>,
    addressing: Addressing,
    unknown: UnknownNodes,
) -> Vec<ServiceRoute> {
    let Some(policy) = policy else {
        return Vec::new();
    };
    policy
        .services
        .iter()
        .map(|service| ServiceRoute {
            service: service.service.clone(),
            port: service.port,
            listen: listen_addresses(service, addressing),
            strategy: service.strategy,
            pool_weights: service.pool_weights.clone(),
            endpoints: service
                .endpoints
                .iter()
                .filter_map(|e| endpoint(e, live, unknown))
                .collect(),
        })
        .collect()
}

/// Where this node listens for one port of a service.
fn listen_addresses(route: &PolicyRoute, addressing: Addressing) -> Vec<SocketAddr> {
    let mut listen = Vec::new();
    if let Some(node_port) = route.node_port {
        listen.push(SocketAddr::new(addressing.node, node_port));
    } else if addressing.cluster_services_on_node && route.cluster_ip.is_some() {
        listen.push(SocketAddr::new(addressing.node, route.port));
    }
    if let Some(ip) = route.cluster_ip.filter(|_| addressing.cluster_ips) {
        listen.push(SocketAddr::new(IpAddr::V4(ip), route.port));
    }
    listen
}

/// An endpoint of the policy, at the policy's address, if gossip does not take it out: the
/// member the policy names as its node is live and not leaving, and that member's fact about
/// the allocation says healthy, for this workload and revision. A node gossip has not
/// reported on is as `unknown` says.
///
/// The fact's own endpoint is ignored: it neither moves traffic (that would let a forged
/// member send it anywhere) nor removes the endpoint, since it legitimately differs from the
/// policy's address (it names the replica's first published port, whatever the service
/// port; and the coordinator re-pushes the policy when a restarted replica reports a new
/// host port, before its health checks pass).
pub fn endpoint(
    e: &RouteEndpoint,
    live: &BTreeMap<String, MemberFacts>,
    unknown: UnknownNodes,
) -> Option<Endpoint> {
    let address = e.address?;
    match live.get(&e.node) {
        None if unknown == UnknownNodes::Routed => {}
        None => return None,
        Some(member) => {
            if member.is_leaving() {
                return None;
            }
            let fact = member.allocations.get(&e.allocation_id)?;
            // A fact about another workload or revision is not about this replica.
            if fact.health != AllocState::Healthy
                || fact.service != e.workload
                || fact.revision != e.revision
            {
                return None;
            }
        }
    }
    Some(Endpoint {
        id: e.allocation_id.clone(),
        address,
        pool: e.pool,
        weight: e.weight.max(1),
        workload: std::sync::Arc::from(e.workload.as_str()),
        revision: e.revision,
    })
}

#[cfg(test)]
mod tests {
    use drover_proto::gossip::AllocFact;
    use drover_proto::model::{RevisionTraffic, Strategy};

    use super::*;

    const NODE: Addressing = Addressing {
        node: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        cluster_ips: true,
        cluster_services_on_node: false,
    };

    /// A member publishing `(allocation, gossip endpoint, health)` facts for `web`, revision 1.
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

    fn live(members: Vec<(&str, MemberFacts)>) -> BTreeMap<String, MemberFacts> {
        members
            .into_iter()
            .map(|(id, facts)| (id.to_string(), facts))
            .collect()
    }

    /// A policy for `web` (port 80, revision 1) with `(allocation, node, address)` endpoints;
    /// an empty address is one not known yet.
    fn policy(endpoints: &[(&str, &str, &str)]) -> RoutePolicy {
        RoutePolicy {
            version: 1,
            store_id: "s1".into(),
            services: vec![drover_proto::model::ServiceRoute {
                service: "web".into(),
                port: 80,
                port_name: None,
                cluster_ip: None,
                node_port: Some(80),
                strategy: Strategy::Random,
                pool_weights: [(1, 100)].into_iter().collect(),
                endpoints: endpoints
                    .iter()
                    .map(|(id, node, address)| RouteEndpoint {
                        allocation_id: id.to_string(),
                        node: node.to_string(),
                        revision: 1,
                        address: address.parse().ok(),
                        weight: 1,
                        workload: "web".into(),
                        pool: 1,
                        container_port: 8080,
                    })
                    .collect(),
            }],
        }
    }

    /// `(allocation, address)` of the one route's endpoints.
    fn routed(policy: &RoutePolicy, live: &BTreeMap<String, MemberFacts>) -> Vec<(String, String)> {
        let routes = service_routes(Some(policy), live, NODE, UnknownNodes::Excluded);
        assert_eq!(routes.len(), 1);
        routes[0]
            .endpoints
            .iter()
            .map(|e| (e.id.clone(), e.address.to_string()))
            .collect()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(id, addr)| (id.to_string(), addr.to_string()))
            .collect()
    }

    #[test]
    fn within_the_startup_grace_a_node_gossip_has_not_reported_on_is_routed() {
        let p = policy(&[
            ("web.1", "a", "10.0.0.1:3001"),
            ("web.2", "b", "10.0.0.2:3002"),
        ]);
        // Gossip has heard from a (web.1 unhealthy there) but not yet from b.
        let live = live(vec![(
            "a",
            member(&[("web.1", "10.0.0.1:3001", AllocState::Unhealthy)]),
        )]);
        let ids = |unknown| {
            service_routes(Some(&p), &live, NODE, unknown)[0]
                .endpoints
                .iter()
                .map(|e| e.id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(UnknownNodes::Routed), ["web.2"]);
        assert!(ids(UnknownNodes::Excluded).is_empty());
    }

    #[test]
    fn policy_intersected_with_alive_and_healthy() {
        let live = live(vec![
            (
                "a",
                member(&[
                    ("web.1", "10.0.0.1:3001", AllocState::Healthy),
                    ("web.2", "10.0.0.1:3002", AllocState::Unhealthy),
                ]),
            ),
            ("b", member(&[("web.3", "", AllocState::Healthy)])),
        ]);
        let p = policy(&[
            ("web.1", "a", "10.0.0.1:3001"),
            ("web.2", "a", "10.0.0.1:3002"),
            ("web.3", "b", "10.0.0.2:3003"),
            ("web.4", "dead", "10.0.0.3:3004"),
        ]);
        let routes = service_routes(Some(&p), &live, NODE, UnknownNodes::Excluded);
        assert_eq!(routes.len(), 1);
        assert_eq!((routes[0].port, routes[0].strategy), (80, Strategy::Random));
        // web.2 unhealthy, web.4's node not alive; web.3 has no gossip endpoint, which
        // changes nothing: the address is the policy's.
        assert_eq!(
            routed(&p, &live),
            pairs(&[("web.1", "10.0.0.1:3001"), ("web.3", "10.0.0.2:3003")])
        );
    }

    #[test]
    fn a_forged_endpoint_in_gossip_does_not_move_the_route() {
        let p = policy(&[("web.1", "a", "10.0.0.1:3001")]);
        // The member named "a" (the real node, or a forger with a higher generation, which
        // gossip shows in its place) claims web.1 listens elsewhere; another forged member
        // claims it too.
        let live = live(vec![
            (
                "a",
                member(&[("web.1", "6.6.6.6:6666", AllocState::Healthy)]),
            ),
            (
                "evil",
                member(&[("web.1", "6.6.6.6:6667", AllocState::Healthy)]),
            ),
        ]);
        assert_eq!(routed(&p, &live), pairs(&[("web.1", "10.0.0.1:3001")]));
    }

    #[test]
    fn gossip_adds_nothing_the_policy_does_not_list() {
        let p = policy(&[("web.1", "a", "10.0.0.1:3001")]);
        let live = live(vec![
            (
                "a",
                member(&[
                    ("web.1", "10.0.0.1:3001", AllocState::Healthy),
                    ("web.9", "6.6.6.6:6666", AllocState::Healthy),
                ]),
            ),
            (
                "evil",
                member(&[("web.8", "6.6.6.6:6667", AllocState::Healthy)]),
            ),
        ]);
        assert_eq!(routed(&p, &live), pairs(&[("web.1", "10.0.0.1:3001")]));
        // Nor does it fill in an address the policy does not have yet.
        let p = policy(&[("web.1", "a", "")]);
        assert_eq!(routed(&p, &live), pairs(&[]));
    }

    #[test]
    fn only_the_endpoints_own_node_vouches_for_it() {
        let p = policy(&[("web.1", "a", "10.0.0.1:3001")]);
        // Node a is live but says nothing about web.1; another member says it is healthy.
        let live = live(vec![
            ("a", member(&[])),
            (
                "evil",
                member(&[("web.1", "10.0.0.1:3001", AllocState::Healthy)]),
            ),
        ]);
        assert_eq!(routed(&p, &live), pairs(&[]));
    }

    #[test]
    fn gossip_removes_unhealthy_leaving_dead_and_mismatched_replicas() {
        let p = policy(&[
            ("web.1", "a", "10.0.0.1:3001"),
            ("web.2", "a", "10.0.0.1:3002"),
            ("web.3", "a", "10.0.0.1:3003"),
            ("web.4", "b", "10.0.0.2:3004"),
            ("web.5", "gone", "10.0.0.3:3005"),
        ]);
        let mut a = member(&[
            ("web.1", "10.0.0.1:3001", AllocState::Healthy),
            ("web.2", "10.0.0.1:3002", AllocState::Unhealthy),
            ("web.3", "10.0.0.1:3003", AllocState::Healthy),
        ]);
        // A fact about another revision of the allocation is no evidence for this one.
        if let Some(fact) = a.allocations.get_mut("web.3") {
            fact.revision = 2;
        }
        let mut b = member(&[("web.4", "10.0.0.2:3004", AllocState::Healthy)]);
        let all = live(vec![("a", a.clone()), ("b", b.clone())]);
        assert_eq!(
            routed(&p, &all),
            pairs(&[("web.1", "10.0.0.1:3001"), ("web.4", "10.0.0.2:3004")])
        );
        // A leaving member's replicas go at once.
        b.state = Some(drover_proto::gossip::MemberState::Leaving);
        let leaving = live(vec![("a", a), ("b", b)]);
        assert_eq!(routed(&p, &leaving), pairs(&[("web.1", "10.0.0.1:3001")]));
        // A fact for another service is no evidence either.
        let mut other = member(&[("web.1", "10.0.0.1:3001", AllocState::Healthy)]);
        if let Some(fact) = other.allocations.get_mut("web.1") {
            fact.service = "db".into();
        }
        assert_eq!(routed(&p, &live(vec![("a", other)])), pairs(&[]));
    }

    #[tokio::test]
    async fn a_restored_policy_is_served_without_the_coordinator() {
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

        // A replica on loopback that greets every connection.
        let backend = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind a backend");
        let backend_address = backend.local_addr().expect("backend address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = backend.accept().await {
                let _ = stream.write_all(b"web.1\n").await;
            }
        });
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut kept = policy(&[("web.1", "n1", &backend_address.to_string())]);
        kept.services[0].node_port = Some(port);
        let dir = tempfile::tempdir().expect("tempdir");
        crate::saved_routing::save(dir.path(), &kept, None).expect("save");

        // As the agent starts: the channels from what was kept, and no link at all.
        let (policy, dns) = crate::saved_routing::restore(dir.path());
        let (_policy_tx, policy) = watch::channel(policy);
        let (_dns_tx, dns) = watch::channel(dns);
        let healthy = member(&[("web.1", "", AllocState::Healthy)]);
        let (_live_tx, live) = watch::channel(live(vec![("n1", healthy)]));
        let (traffic, _traffic_rx) = watch::channel(NodeTraffic::default());
        let (totals, mut totals_rx) = watch::channel(ProxyTotals::default());
        let addressing = Addressing {
            node: IpAddr::V4(Ipv4Addr::LOCALHOST),
            cluster_ips: false,
            cluster_services_on_node: false,
        };
        let shutdown = CancellationToken::new();
        let routing = tokio::spawn(run(
            ProxyManager::new(crate::proxy::ProxyConfig::default(), 1),
            addressing,
            None::<ClusterAddresses<crate::cluster_ips::Netlink>>,
            policy,
            live,
            dns,
            None,
            Published { traffic, totals },
            shutdown.clone(),
        ));

        // The node port answers, through the proxy, with the replica's greeting.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let greeting = loop {
            let attempt = async {
                let stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
                let mut line = String::new();
                tokio::io::BufReader::new(stream)
                    .read_line(&mut line)
                    .await?;
                Ok::<_, std::io::Error>(line)
            };
            match attempt.await {
                Ok(line) if !line.is_empty() => break line,
                _ if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => panic!("the restored route does not answer: {other:?}"),
            }
        };
        assert_eq!(greeting, "web.1\n");
        // The metrics' totals count it within a publishing interval.
        let counted = tokio::time::timeout(
            TRAFFIC_INTERVAL * 3,
            totals_rx.wait_for(|t| t.services.values().any(|c| c.accepted >= 1)),
        )
        .await;
        let services = counted
            .expect("totals published")
            .expect("open")
            .services
            .clone();
        assert_eq!(services.len(), 1, "{services:?}");
        assert!(services.values().all(|c| c.connect_latency.count() >= 1));
        shutdown.cancel();
        routing.await.expect("the routing task");
    }

    #[test]
    fn traffic_is_published_only_when_it_changed() {
        let (tx, mut rx) = watch::channel(NodeTraffic::default());
        let web = |connections, failed, active| NodeTraffic {
            revisions: vec![RevisionTraffic {
                service: "web".into(),
                revision: 2,
                connections,
                failed,
            }],
            replicas: vec![drover_proto::model::ReplicaTraffic {
                allocation_id: "web.1".into(),
                connections,
                active,
            }],
        };
        assert!(!publish(&tx, NodeTraffic::default()));
        assert!(!rx.has_changed().expect("open"));
        assert!(publish(&tx, web(5, 1, 1)));
        assert_eq!(*rx.borrow_and_update(), web(5, 1, 1));
        assert!(!publish(&tx, web(5, 1, 1)));
        assert!(!rx.has_changed().expect("open"));
        assert!(publish(&tx, web(6, 1, 1)));
        assert!(rx.has_changed().expect("open"));
        rx.borrow_and_update();
        // A connection that ended is a change too (active goes down).
        assert!(publish(&tx, web(6, 1, 0)));
    }

    #[test]
    fn no_policy_no_routes() {
        assert!(service_routes(None, &BTreeMap::new(), NODE, UnknownNodes::Excluded).is_empty());
    }

    #[test]
    fn a_node_listens_where_the_service_type_says() {
        let mut p = policy(&[]);
        let vip = Ipv4Addr::new(10, 96, 0, 5);
        let listen = |p: &RoutePolicy, addressing: Addressing| -> Vec<String> {
            service_routes(
                Some(p),
                &BTreeMap::new(),
                addressing,
                UnknownNodes::Excluded,
            )[0]
            .listen
            .iter()
            .map(ToString::to_string)
            .collect()
        };
        // A LoadBalancer (node port = its port) with a cluster address.
        p.services[0].cluster_ip = Some(vip);
        assert_eq!(listen(&p, NODE), ["10.0.0.1:80", "10.96.0.5:80"]);
        let cluster_ips_off = Addressing {
            cluster_ips: false,
            ..NODE
        };
        assert_eq!(listen(&p, cluster_ips_off), ["10.0.0.1:80"]);
        // ClusterIP: its address only, unless the node is asked to listen too (drover dev).
        p.services[0].node_port = None;
        assert_eq!(listen(&p, NODE), ["10.96.0.5:80"]);
        let dev = Addressing {
            cluster_services_on_node: true,
            ..NODE
        };
        assert_eq!(listen(&p, dev), ["10.0.0.1:80", "10.96.0.5:80"]);
        assert_eq!(cluster_addresses(&NODE, Some(&p)), BTreeSet::from([vip]));
        assert!(cluster_addresses(&cluster_ips_off, Some(&p)).is_empty());
        // Headless: nowhere.
        p.services[0].cluster_ip = None;
        assert!(listen(&p, dev).is_empty());
    }
}
