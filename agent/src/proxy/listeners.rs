//! One balancer per port of a service and one listener per address it is reached on:
//! [`ProxyManager::apply`] reconciles the running listeners with the routes the agent
//! computed (endpoints = policy ∩ alive ∩ healthy).
//!
//! Across an agent restart ([`ProxyManager::shutdown`] with a [`crate::handoff::Keeper`]),
//! the listening sockets and the open connections go to the next agent instead of being
//! closed and drained: [`ProxyManager::adopt`] takes them, listeners are used for the same
//! address, connections carry on at once in their route's proxy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::model::{ReplicaTraffic, RevisionTraffic, Strategy};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::balancer::Endpoint;
use super::counters::{CountersSnapshot, RevisionOutcomes};
use super::forward::{HeldConnection, ProxyConfig, ServiceProxy, serve};
use crate::handoff::Keeper;

/// What the proxy should do for one port of a service.
#[derive(Debug, Clone)]
pub struct ServiceRoute {
    /// Service name.
    pub service: String,
    /// The service's port: with the name, what identifies the route.
    pub port: u16,
    /// Addresses to listen on for it: the node's address on its node port, its cluster
    /// address on `port`; none for a headless service.
    pub listen: Vec<SocketAddr>,
    /// Replica selection strategy.
    pub strategy: Strategy,
    /// Weight per pool (a workload's revision); empty means one pool of every endpoint.
    pub pool_weights: BTreeMap<u64, u32>,
    /// Replicas that may receive new connections (policy ∩ alive ∩ healthy), addressed at the
    /// port they serve this service port on.
    pub endpoints: Vec<Endpoint>,
}

/// The agent's service proxy: one [`ServiceProxy`] per port of a service, with a listener
/// task per address it is reached on.
#[derive(Debug)]
pub struct ProxyManager {
    config: ProxyConfig,
    seed: u64,
    routes: BTreeMap<RouteKey, Route>,
    /// Proxies whose route was removed and that still have connections draining.
    retired: Vec<Retired>,
    /// Listening sockets the agent before a restart handed over, by address, until a
    /// route listens there (or the first apply closes them).
    adopted: BTreeMap<SocketAddr, std::net::TcpListener>,
    /// Where the listeners and open connections go when the agent stops, if anywhere.
    keeper: Option<Keeper>,
    /// Revision outcomes of proxies dropped since (stopped and drained), kept so that
    /// [`ProxyManager::traffic`] never goes down while the agent runs.
    ended: TrafficTotals,
    /// Their counters, for the same reason ([`ProxyManager::totals`]).
    ended_services: BTreeMap<String, CountersSnapshot>,
    /// Addresses two routes want, already reported (once each while the clash lasts).
    clashes: BTreeSet<SocketAddr>,
}

/// What a node's proxies counted, as the link sends it: outcomes per revision (canary
/// analysis) and connections per replica (autoscaling), both cumulative.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeTraffic {
    /// [`ProxyManager::traffic`].
    pub revisions: Vec<RevisionTraffic>,
    /// [`ProxyManager::replica_traffic`].
    pub replicas: Vec<ReplicaTraffic>,
}

impl NodeTraffic {
    /// Nothing counted yet.
    pub fn is_empty(&self) -> bool {
        self.revisions.is_empty() && self.replicas.is_empty()
    }
}

/// A route's identity: service name and port.
pub type RouteKey = (String, u16);

/// What an agent that stops hands to the next one: its listening sockets and its open
/// connections, each with its route.
#[derive(Debug, Default)]
pub struct Handover {
    /// Listening sockets (not accepting meanwhile: new connections wait in the backlog).
    pub listeners: Vec<(RouteKey, SocketAddr, std::net::TcpListener)>,
    /// Connections paused with nothing held in the proxy.
    pub connections: Vec<(RouteKey, HeldConnection)>,
}

impl Handover {
    /// Nothing to hand over.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty() && self.connections.is_empty()
    }
}

/// A removed route's proxy while its connections drain.
#[derive(Debug)]
struct Retired {
    key: RouteKey,
    proxy: Arc<ServiceProxy>,
    /// The addresses it was reached on.
    addresses: Vec<SocketAddr>,
}

/// Outcomes per (service, workload, revision).
type TrafficTotals = BTreeMap<(String, String, u64), RevisionOutcomes>;

/// What a node's proxies counted since the agent started, for its metrics: every port of
/// a service summed, stopped ones included, so that no count goes down while it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyTotals {
    /// Per service.
    pub services: BTreeMap<String, CountersSnapshot>,
    /// Per (service, workload, revision).
    pub revisions: TrafficTotals,
}

#[derive(Debug)]
struct Route {
    proxy: Arc<ServiceProxy>,
    /// Per address: `None` when the last bind failed; retried on the next apply.
    listeners: BTreeMap<SocketAddr, Option<Listening>>,
}

#[derive(Debug)]
struct Listening {
    address: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<TcpListener>,
}

impl Listening {
    /// Stops accepting; returns the listening socket (dropping it frees the address).
    async fn stop(self) -> Option<TcpListener> {
        self.stop.cancel();
        match self.task.await {
            Ok(listener) => Some(listener),
            Err(e) => {
                if e.is_panic() {
                    error!(address = %self.address, "proxy listener task panicked");
                }
                None
            }
        }
    }
}

impl ProxyManager {
    /// A manager with no listener. `seed` seeds the balancers, mixed with each service name
    /// and port.
    pub fn new(config: ProxyConfig, seed: u64) -> ProxyManager {
        ProxyManager {
            config,
            seed,
            routes: BTreeMap::new(),
            retired: Vec::new(),
            adopted: BTreeMap::new(),
            keeper: None,
            ended: TrafficTotals::new(),
            ended_services: BTreeMap::new(),
            clashes: BTreeSet::new(),
        }
    }

    /// Hand the listeners and open connections to `keeper` when the agent stops, instead of
    /// draining them (see [`ProxyManager::shutdown`]).
    pub fn hand_off_to(&mut self, keeper: Keeper) {
        self.keeper = Some(keeper);
    }

    /// Take over what the agent before a restart handed over: its connections carry on at
    /// once, each in its route's proxy (one made for it when the route is not known yet:
    /// the first [`ProxyManager::apply`] drains it if the route is gone); its listeners wait
    /// for a route on their address.
    pub fn adopt(&mut self, handover: Handover) {
        for (key, address, listener) in handover.listeners {
            info!(service = %key.0, port = key.1, %address, "listener taken over");
            self.adopted.insert(address, listener);
        }
        let taken = handover.connections.len();
        for (key, held) in handover.connections {
            route_of(
                &mut self.routes,
                (&self.config, self.seed),
                &key,
                Strategy::default(),
            )
            .proxy
            .adopt(held);
        }
        if taken > 0 {
            info!(
                connections = taken,
                "open connections taken over from the previous agent"
            );
        }
    }

    /// Make the listeners match `routes`: start listeners on new addresses, update the
    /// balancers of existing routes, stop those of addresses and routes no longer listed
    /// (a removed route's open connections drain). An address that cannot be bound is
    /// logged and retried on the next call; an address listed by two routes keeps the
    /// first.
    pub async fn apply(&mut self, routes: Vec<ServiceRoute>) {
        let mut claimed: BTreeMap<SocketAddr, String> = BTreeMap::new();
        let mut wanted: BTreeMap<RouteKey, ServiceRoute> = BTreeMap::new();
        let mut clashes = BTreeSet::new();
        for mut route in routes {
            route.listen.retain(|address| match claimed.get(address) {
                Some(kept) => {
                    if !self.clashes.contains(address) {
                        error!(%address, service = %route.service, %kept,
                            "two services want the same address; ignoring the second");
                    }
                    clashes.insert(*address);
                    false
                }
                None => {
                    claimed.insert(*address, route.service.clone());
                    true
                }
            });
            wanted.insert((route.service.clone(), route.port), route);
        }
        self.clashes = clashes;

        let stale: Vec<RouteKey> = self
            .routes
            .keys()
            .filter(|key| !wanted.contains_key(*key))
            .cloned()
            .collect();
        for key in stale {
            if let Some(route) = self.routes.remove(&key) {
                let addresses: Vec<SocketAddr> = route.listeners.keys().copied().collect();
                stop_listeners(&route.proxy, route.listeners.into_values()).await;
                route.proxy.drain_all();
                self.retired.push(Retired {
                    key,
                    proxy: route.proxy,
                    addresses,
                });
            }
        }

        for (key, route) in wanted {
            let state = route_of(
                &mut self.routes,
                (&self.config, self.seed),
                &key,
                route.strategy,
            );
            state
                .proxy
                .update(route.endpoints, &route.pool_weights, route.strategy);
            let gone: Vec<SocketAddr> = state
                .listeners
                .keys()
                .filter(|address| !route.listen.contains(address))
                .copied()
                .collect();
            let mut stopped = Vec::with_capacity(gone.len());
            for address in &gone {
                stopped.extend(state.listeners.remove(address));
            }
            stop_listeners(&state.proxy, stopped).await;
            for address in route.listen {
                let slot = state.listeners.entry(address).or_insert(None);
                if slot.is_none() {
                    *slot = listen(address, &state.proxy, self.adopted.remove(&address)).await;
                }
            }
        }
        for (address, _) in std::mem::take(&mut self.adopted) {
            info!(%address, "a listener taken over is no longer routed; closed");
        }

        self.reap();
    }

    /// Forgets removed routes whose connections have all ended (their outcomes stay in the
    /// totals), so their addresses are no longer in use.
    pub fn reap(&mut self) {
        let (drained, draining) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|retired| retired.proxy.open_connections() == 0);
        self.retired = draining;
        for retired in drained {
            let service = retired.proxy.service();
            add_traffic(&mut self.ended, service, retired.proxy.revision_traffic());
            let mut counted = retired.proxy.snapshot();
            counted.active = 0;
            *self.ended_services.entry(service.to_owned()).or_default() += counted;
        }
    }

    /// Every address a listener is on or was on while its connections still drain: what
    /// must stay reachable.
    pub fn addresses_in_use(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = self
            .routes
            .values()
            .flat_map(|route| route.listeners.keys().copied())
            .chain(
                self.retired
                    .iter()
                    .flat_map(|r| r.addresses.iter().copied()),
            )
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Counters per service, summed over its ports (stopped ports are no longer counted).
    pub fn counters(&self) -> BTreeMap<String, CountersSnapshot> {
        let mut all: BTreeMap<String, CountersSnapshot> = BTreeMap::new();
        for route in self.routes.values() {
            *all.entry(route.proxy.service().to_owned()).or_default() += route.proxy.snapshot();
        }
        all
    }

    /// Both kinds of counts, for the link.
    pub fn node_traffic(&self) -> NodeTraffic {
        NodeTraffic {
            revisions: self.traffic(),
            replicas: self.replica_traffic(),
        }
    }

    /// What this node's proxies handed each replica, summed over every port of every
    /// service selecting it (routes and removed routes still draining), sorted by
    /// allocation id. A replica no proxy lists any more drops out, so its count may restart.
    pub fn replica_traffic(&self) -> Vec<ReplicaTraffic> {
        let mut totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let proxies = self.routes.values().map(|route| &route.proxy);
        for proxy in proxies.chain(self.retired.iter().map(|r| &r.proxy)) {
            for (id, (handed, open)) in proxy.replica_traffic() {
                let total = totals.entry(id).or_default();
                total.0 += handed;
                total.1 += open;
            }
        }
        totals
            .into_iter()
            .map(|(allocation_id, (connections, active))| ReplicaTraffic {
                allocation_id,
                connections,
                active,
            })
            .collect()
    }

    /// The node's connection outcomes per (workload, revision) since the manager was
    /// created, summed over every proxy it has had (every port of every service that sends
    /// the workload traffic, stopped ports still draining and stopped ports gone), so the
    /// totals never decrease. Sorted by workload, then revision; only revisions that had a
    /// connect attempt appear.
    pub fn traffic(&self) -> Vec<RevisionTraffic> {
        let mut totals: BTreeMap<(String, u64), RevisionOutcomes> = BTreeMap::new();
        for ((_, workload, revision), outcomes) in self.totals().revisions {
            *totals.entry((workload, revision)).or_default() += outcomes;
        }
        totals
            .into_iter()
            .map(|((service, revision), outcomes)| RevisionTraffic {
                service,
                revision,
                connections: outcomes.connections,
                failed: outcomes.failed,
            })
            .collect()
    }

    /// Everything counted since the manager was created, by service and by revision.
    pub fn totals(&self) -> ProxyTotals {
        let mut totals = ProxyTotals {
            services: self.ended_services.clone(),
            revisions: self.ended.clone(),
        };
        let proxies = self.routes.values().map(|route| &route.proxy);
        for proxy in proxies.chain(self.retired.iter().map(|r| &r.proxy)) {
            let service = proxy.service();
            *totals.services.entry(service.to_owned()).or_default() += proxy.snapshot();
            add_traffic(&mut totals.revisions, service, proxy.revision_traffic());
        }
        totals
    }

    /// Addresses being listened on now (one whose bind failed is not among them).
    pub fn listening(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = self
            .routes
            .values()
            .flat_map(|route| route.listeners.iter())
            .filter(|(_, listening)| listening.is_some())
            .map(|(address, _)| *address)
            .collect();
        all.sort();
        all
    }

    /// Ports being listened on now, on any address.
    pub fn listening_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.listening().iter().map(SocketAddr::port).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The proxy of the first route on service port `port`, for inspection.
    pub fn proxy(&self, port: u16) -> Option<&Arc<ServiceProxy>> {
        self.routes
            .iter()
            .find(|((_, p), _)| *p == port)
            .map(|(_, route)| &route.proxy)
    }

    /// Stop the proxy. With a keeper ([`ProxyManager::hand_off_to`]), the listeners and the
    /// open connections go to it, for the next agent; otherwise (or when the keeper cannot
    /// be started) every listener closes and every open connection drains (closed at the
    /// latest after the drain timeout) before this returns.
    pub async fn shutdown(mut self) {
        if let Some(keeper) = self.keeper.take() {
            let handover = self.hand_over(keeper.pause_within).await;
            if handover.is_empty() {
                return;
            }
            let (listeners, connections) = (handover.listeners.len(), handover.connections.len());
            match keeper.hold(handover).await {
                Ok(()) => {
                    info!(
                        listeners,
                        connections,
                        "listeners and open connections handed to the keeper for the next agent"
                    );
                    return;
                }
                Err(e) => {
                    // Dropped with the handover: closed, as without a keeper.
                    warn!(error = %e, listeners, connections,
                        "cannot hand the proxy over; its connections are closed");
                    return;
                }
            }
        }
        let routes = std::mem::take(&mut self.routes);
        for (key, route) in routes {
            stop_listeners(&route.proxy, route.listeners.into_values()).await;
            route.proxy.drain_all();
            self.retired.push(Retired {
                key,
                proxy: route.proxy,
                addresses: Vec::new(),
            });
        }
        // A connection still connecting when the drain started gets its deadline when it
        // registers, at most `attempts` connect timeouts later; allow a second of slack.
        let bound = self.config.drain_timeout
            + self.config.connect_timeout * self.config.attempts.max(1)
            + Duration::from_secs(1);
        if tokio::time::timeout(bound, self.all_closed())
            .await
            .is_err()
        {
            warn!("service proxy connections still open after the drain timeout; abandoning them");
        }
    }

    /// Stop accepting (keeping the listening sockets) and pause every connection, waiting at
    /// most `within` for those still connecting or copying a first answer; what is not
    /// paused by then is closed.
    async fn hand_over(&mut self, within: Duration) -> Handover {
        let mut handover = Handover::default();
        let mut sinks = Vec::new();
        for (key, route) in std::mem::take(&mut self.routes) {
            for listening in route.listeners.into_values().flatten() {
                let address = listening.address;
                if let Some(listener) = listening.stop().await {
                    match listener.into_std() {
                        Ok(listener) => handover.listeners.push((key.clone(), address, listener)),
                        Err(e) => warn!(%address, error = %e, "cannot hand a listener over"),
                    }
                }
            }
            self.retired.push(Retired {
                key,
                proxy: route.proxy,
                addresses: Vec::new(),
            });
        }
        for retired in &self.retired {
            let (sink, paused) = mpsc::unbounded_channel();
            retired.proxy.pause(sink);
            sinks.push((retired.key.clone(), paused));
        }
        if tokio::time::timeout(within, self.all_closed())
            .await
            .is_err()
        {
            let left: usize = self
                .retired
                .iter()
                .map(|r| r.proxy.open_connections())
                .sum();
            warn!(left, "connections not paused in time are closed");
        }
        for (key, mut paused) in sinks {
            while let Ok(held) = paused.try_recv() {
                handover.connections.push((key.clone(), held));
            }
        }
        handover
    }

    async fn all_closed(&self) {
        for retired in &self.retired {
            retired.proxy.closed().await;
        }
    }
}

/// The route of `key`, made with no endpoint and no listener if it is new.
fn route_of<'a>(
    routes: &'a mut BTreeMap<RouteKey, Route>,
    (config, seed): (&ProxyConfig, u64),
    key: &RouteKey,
    strategy: Strategy,
) -> &'a mut Route {
    routes.entry(key.clone()).or_insert_with(|| Route {
        proxy: Arc::new(ServiceProxy::new(
            key.0.clone(),
            strategy,
            config.clone(),
            service_seed(seed, &key.0, key.1),
        )),
        listeners: BTreeMap::new(),
    })
}

async fn stop_listeners(
    proxy: &ServiceProxy,
    listeners: impl IntoIterator<Item = Option<Listening>>,
) {
    for listening in listeners.into_iter().flatten() {
        info!(service = %proxy.service(), address = %listening.address,
            "stopping service listener");
        listening.stop().await;
    }
}

/// Listen on `address` for `proxy`, on the socket taken over for it if there is one.
async fn listen(
    address: SocketAddr,
    proxy: &Arc<ServiceProxy>,
    taken: Option<std::net::TcpListener>,
) -> Option<Listening> {
    let bound = match taken {
        Some(listener) => listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(listener)),
        None => TcpListener::bind(address).await,
    };
    match bound {
        Ok(listener) => {
            info!(service = %proxy.service(), %address, "service listener started");
            let stop = CancellationToken::new();
            let task = tokio::spawn(serve(listener, Arc::clone(proxy), stop.clone()));
            Some(Listening {
                address,
                stop,
                task,
            })
        }
        Err(e) => {
            warn!(service = %proxy.service(), %address, error = %e,
                "cannot listen on the service port; retrying on the next apply");
            None
        }
    }
}

/// Adds one proxy's outcomes per (workload, revision) to the totals.
fn add_traffic(
    totals: &mut TrafficTotals,
    service: &str,
    outcomes: BTreeMap<(Arc<str>, u64), RevisionOutcomes>,
) {
    for ((workload, revision), outcomes) in outcomes {
        *totals
            .entry((service.to_owned(), workload.to_string(), revision))
            .or_default() += outcomes;
    }
}

/// FNV-1a of the service name and port, mixed into the manager's seed, so services do not
/// share a pick sequence and the result is stable across Rust releases.
fn service_seed(seed: u64, service: &str, port: u16) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in service.bytes().chain(port.to_be_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    seed ^ hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(connections: u64, failed: u64) -> RevisionOutcomes {
        RevisionOutcomes {
            connections,
            failed,
        }
    }

    #[test]
    fn traffic_adds_up_per_service_and_revision() {
        let mut totals = TrafficTotals::new();
        let (web, api) = (Arc::<str>::from("web"), Arc::<str>::from("api"));
        add_traffic(
            &mut totals,
            "front",
            BTreeMap::from([
                ((web.clone(), 1), outcomes(10, 1)),
                ((web.clone(), 2), outcomes(3, 2)),
            ]),
        );
        // A second port of the same service, another service of the same workload, and
        // another workload with the same revision.
        add_traffic(
            &mut totals,
            "front",
            BTreeMap::from([((web.clone(), 2), outcomes(5, 0))]),
        );
        add_traffic(
            &mut totals,
            "internal",
            BTreeMap::from([((web, 2), outcomes(1, 0))]),
        );
        add_traffic(
            &mut totals,
            "front",
            BTreeMap::from([((api, 2), outcomes(7, 7))]),
        );
        let key = |s: &str, w: &str, r| (s.to_owned(), w.to_owned(), r);
        assert_eq!(
            totals,
            BTreeMap::from([
                (key("front", "api", 2), outcomes(7, 7)),
                (key("front", "web", 1), outcomes(10, 1)),
                (key("front", "web", 2), outcomes(8, 2)),
                (key("internal", "web", 2), outcomes(1, 0)),
            ])
        );
    }
}
