//! One listener per published service port: [`ProxyManager::apply`] reconciles the running
//! listeners with the routes the agent computed (endpoints = policy ∩ alive ∩ healthy).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::net::{IpAddr, SocketAddr};
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

/// What the proxy should do for one published port of a service.
#[derive(Debug, Clone)]
pub struct ServiceRoute {
    /// Service name.
    pub service: String,
    /// Published port, listened on at the manager's bind address.
    pub port: u16,
    /// Replica selection strategy.
    pub strategy: Strategy,
    /// Weight per pool (a workload's revision); empty means one pool of every endpoint.
    pub pool_weights: BTreeMap<u64, u32>,
    /// Replicas that may receive new connections (policy ∩ alive ∩ healthy), addressed at the
    /// port they serve this service port on.
    pub endpoints: Vec<Endpoint>,
}

/// The agent's service proxy: one listener task and one [`ServiceProxy`] per published port.
#[derive(Debug)]
pub struct ProxyManager {
    bind_ip: IpAddr,
    config: ProxyConfig,
    seed: u64,
    ports: BTreeMap<u16, Port>,
    /// Proxies whose port was stopped and that still have connections draining.
    retired: Vec<Arc<ServiceProxy>>,
    /// Revision outcomes of proxies dropped since (stopped and drained), kept so that
    /// [`ProxyManager::traffic`] never goes down while the agent runs.
    ended: TrafficTotals,
}

/// Outcomes per (service, revision).
type TrafficTotals = BTreeMap<(String, u64), RevisionOutcomes>;

#[derive(Debug)]
struct Port {
    proxy: Arc<ServiceProxy>,
    /// `None` when the last bind failed; retried on the next apply.
    listener: Option<Listening>,
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
    /// A manager with no listener; every port is bound at `bind_ip` (the agent's advertise
    /// address). `seed` seeds the balancers, mixed with each service name and port.
    pub fn new(bind_ip: IpAddr, config: ProxyConfig, seed: u64) -> ProxyManager {
        ProxyManager {
            bind_ip,
            config,
            seed,
            ports: BTreeMap::new(),
            retired: Vec::new(),
            ended: TrafficTotals::new(),
        }
    }

    /// Make the listeners match `routes`: start listeners for new ports, update the balancers
    /// of existing ones, stop those of ports no longer listed (their open connections drain).
    /// A port that cannot be bound is logged and retried on the next call; a port listed twice
    /// keeps its first route.
    pub async fn apply(&mut self, routes: Vec<ServiceRoute>) {
        let mut wanted: BTreeMap<u16, ServiceRoute> = BTreeMap::new();
        for route in routes {
            match wanted.entry(route.port) {
                Entry::Vacant(slot) => {
                    slot.insert(route);
                }
                Entry::Occupied(kept) => {
                    error!(port = route.port, service = %route.service, kept = %kept.get().service,
                        "two services publish the same port; ignoring the second");
                }
            }
        }

        let stale: Vec<u16> = self
            .ports
            .iter()
            .filter(|(port, state)| {
                wanted
                    .get(port)
                    .is_none_or(|route| route.service != state.proxy.service())
            })
            .map(|(port, _)| *port)
            .collect();
        for port in stale {
            if let Some(state) = self.ports.remove(&port) {
                if let Some(listening) = state.listener {
                    info!(service = %state.proxy.service(), address = %listening.address,
                        "stopping service listener");
                    listening.stop().await;
                }
                state.proxy.drain_all();
                self.retired.push(state.proxy);
            }
        }

        for (port, route) in wanted {
            let state = self.ports.entry(port).or_insert_with(|| Port {
                proxy: Arc::new(ServiceProxy::new(
                    route.service.clone(),
                    route.strategy,
                    self.config.clone(),
                    service_seed(self.seed, &route.service, port),
                )),
                listener: None,
            });
            state
                .proxy
                .update(route.endpoints, &route.pool_weights, route.strategy);
            if state.listener.is_none() {
                state.listener = listen(SocketAddr::new(self.bind_ip, port), &state.proxy).await;
            }
        }

        let (drained, draining) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|proxy| proxy.open_connections() == 0);
        self.retired = draining;
        for proxy in drained {
            add_traffic(&mut self.ended, proxy.revision_traffic());
        }
    }

    /// Counters per service, summed over its ports (stopped ports are no longer counted).
    pub fn counters(&self) -> BTreeMap<String, CountersSnapshot> {
        let mut all: BTreeMap<String, CountersSnapshot> = BTreeMap::new();
        for state in self.ports.values() {
            *all.entry(state.proxy.service().to_owned()).or_default() += state.proxy.snapshot();
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
        let proxies = self.ports.values().map(|state| &state.proxy);
        for proxy in proxies.chain(&self.retired) {
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

    /// Ports being listened on now (a port whose bind failed is not among them).
    pub fn listening_ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .filter(|(_, state)| state.listener.is_some())
            .map(|(port, _)| *port)
            .collect()
    }

    /// The proxy of a port, for inspection.
    pub fn proxy(&self, port: u16) -> Option<&Arc<ServiceProxy>> {
        self.ports.get(&port).map(|state| &state.proxy)
    }

    /// Stop every listener, drain every open connection (closed at the latest after the drain
    /// timeout) and wait for them to end.
    pub async fn shutdown(mut self) {
        let ports = std::mem::take(&mut self.ports);
        for state in ports.into_values() {
            if let Some(listening) = state.listener {
                listening.stop().await;
            }
            state.proxy.drain_all();
            self.retired.push(state.proxy);
        }
        // A connection still connecting when the drain started gets its deadline when it
        // registers, at most `attempts` connect timeouts later; allow a second of slack.
        let bound = self.config.drain_timeout
            + self.config.connect_timeout * self.config.attempts.max(1)
            + Duration::from_secs(1);
        let all_closed = async {
            for proxy in &self.retired {
                proxy.closed().await;
            }
        };
        if tokio::time::timeout(bound, all_closed).await.is_err() {
            warn!("service proxy connections still open after the drain timeout; abandoning them");
        }
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
