//! One balancer per port of a service and one listener per address it is reached on:
//! [`ProxyManager::apply`] reconciles the running listeners with the routes the agent
//! computed (endpoints = policy ∩ alive ∩ healthy).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::model::{RevisionTraffic, Strategy};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::balancer::Endpoint;
use super::counters::{CountersSnapshot, RevisionOutcomes};
use super::forward::{ProxyConfig, ServiceProxy, serve};

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
    /// Proxies whose route was removed and that still have connections draining, with the
    /// addresses they were reached on.
    retired: Vec<(Arc<ServiceProxy>, Vec<SocketAddr>)>,
    /// Revision outcomes of proxies dropped since (stopped and drained), kept so that
    /// [`ProxyManager::traffic`] never goes down while the agent runs.
    ended: TrafficTotals,
    /// Addresses two routes want, already reported (once each while the clash lasts).
    clashes: BTreeSet<SocketAddr>,
}

/// A route's identity: service name and port.
type RouteKey = (String, u16);

/// Outcomes per (service, revision).
type TrafficTotals = BTreeMap<(String, u64), RevisionOutcomes>;

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
    task: JoinHandle<()>,
}

impl Listening {
    async fn stop(self) {
        self.stop.cancel();
        // The task drops the listening socket as it returns; wait so the port is free again.
        if let Err(e) = self.task.await {
            if e.is_panic() {
                error!(address = %self.address, "proxy listener task panicked");
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
            ended: TrafficTotals::new(),
            clashes: BTreeSet::new(),
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
                self.retired.push((route.proxy, addresses));
            }
        }

        for (key, route) in wanted {
            let state = self.routes.entry(key).or_insert_with(|| Route {
                proxy: Arc::new(ServiceProxy::new(
                    route.service.clone(),
                    route.strategy,
                    self.config.clone(),
                    service_seed(self.seed, &route.service, route.port),
                )),
                listeners: BTreeMap::new(),
            });
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
                    *slot = listen(address, &state.proxy).await;
                }
            }
        }

        self.reap();
    }

    /// Forgets removed routes whose connections have all ended (their outcomes stay in the
    /// totals), so their addresses are no longer in use.
    pub fn reap(&mut self) {
        let (drained, draining) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|(proxy, _)| proxy.open_connections() == 0);
        self.retired = draining;
        for (proxy, _) in drained {
            add_traffic(&mut self.ended, proxy.revision_traffic());
        }
    }

    /// Every address a listener is on or was on while its connections still drain: what
    /// must stay reachable.
    pub fn addresses_in_use(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = self
            .routes
            .values()
            .flat_map(|route| route.listeners.keys().copied())
            .chain(self.retired.iter().flat_map(|(_, a)| a.iter().copied()))
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

    /// The node's connection outcomes per (workload, revision) since the manager was
    /// created, summed over every proxy it has had (every port of every service that sends
    /// the workload traffic, stopped ports still draining and stopped ports gone), so the
    /// totals never decrease. Sorted by workload, then revision; only revisions that had a
    /// connect attempt appear.
    pub fn traffic(&self) -> Vec<RevisionTraffic> {
        let mut totals = self.ended.clone();
        let proxies = self.routes.values().map(|route| &route.proxy);
        for proxy in proxies.chain(self.retired.iter().map(|(proxy, _)| proxy)) {
            add_traffic(&mut totals, proxy.revision_traffic());
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

    /// Stop every listener, drain every open connection (closed at the latest after the drain
    /// timeout) and wait for them to end.
    pub async fn shutdown(mut self) {
        let routes = std::mem::take(&mut self.routes);
        for route in routes.into_values() {
            stop_listeners(&route.proxy, route.listeners.into_values()).await;
            route.proxy.drain_all();
            self.retired.push((route.proxy, Vec::new()));
        }
        // A connection still connecting when the drain started gets its deadline when it
        // registers, at most `attempts` connect timeouts later; allow a second of slack.
        let bound = self.config.drain_timeout
            + self.config.connect_timeout * self.config.attempts.max(1)
            + Duration::from_secs(1);
        let all_closed = async {
            for (proxy, _) in &self.retired {
                proxy.closed().await;
            }
        };
        if tokio::time::timeout(bound, all_closed).await.is_err() {
            warn!("service proxy connections still open after the drain timeout; abandoning them");
        }
    }
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

async fn listen(address: SocketAddr, proxy: &Arc<ServiceProxy>) -> Option<Listening> {
    match TcpListener::bind(address).await {
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
fn add_traffic(totals: &mut TrafficTotals, outcomes: BTreeMap<(Arc<str>, u64), RevisionOutcomes>) {
    for ((workload, revision), outcomes) in outcomes {
        *totals.entry((workload.to_string(), revision)).or_default() += outcomes;
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
            BTreeMap::from([
                ((web.clone(), 1), outcomes(10, 1)),
                ((web.clone(), 2), outcomes(3, 2)),
            ]),
        );
        // A second port (or service) for the same workload, and another workload with the
        // same revision.
        add_traffic(&mut totals, BTreeMap::from([((web, 2), outcomes(5, 0))]));
        add_traffic(&mut totals, BTreeMap::from([((api, 2), outcomes(7, 7))]));
        assert_eq!(
            totals,
            BTreeMap::from([
                (("api".to_owned(), 2), outcomes(7, 7)),
                (("web".to_owned(), 1), outcomes(10, 1)),
                (("web".to_owned(), 2), outcomes(8, 2)),
            ])
        );
    }
}
