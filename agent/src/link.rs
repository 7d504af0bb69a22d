//! The agent's end of `AgentLink`: opens the stream, says hello with what runs, streams
//! status changes, applies each newer desired set, reconnects with backoff and jitter.
//!
//! Traffic: the proxy's cumulative connection outcomes per (service, revision), as published
//! on [`Link::traffic`] (at most once per [`crate::routes::TRAFFIC_INTERVAL`], only when they
//! changed), go out in full in a `StatusUpdate` of their own: on each change, and at the start
//! of every session so a coordinator that reconnected has the current totals at once.
//!
//! Usage: each sampling round the supervisor publishes on [`Link::usage`] (every replica's
//! last sample and the node's usage) goes out once, in a `StatusUpdate` of its own; a round
//! published while the link was down goes out when it is back, statuses are not resent.
//!
//! Routing: each accepted route policy goes to [`Link::routes`], and the cluster DNS of each
//! accepted desired set to [`Link::cluster_dns`] when it changed; both are kept on disk
//! ([`crate::saved_routing`]), so that an agent restarted without a coordinator starts from
//! them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::model::{ClusterDns, DesiredSet, NodeInfo, RoutePolicy};
use drover_proto::pb;
use drover_proto::pb::agent_link_client::AgentLinkClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::credentials::NodeCredentials;
use crate::proxy::NodeTraffic;
use crate::saved_routing;
use crate::supervisor::{AllocReport, DesiredAlloc, DesiredUpdate, LinkState};
use crate::usage::UsageReport;

/// What the link needs and feeds.
#[derive(Debug)]
pub struct Link {
    /// Coordinator URLs, tried in turn.
    pub coordinators: Vec<String>,
    /// Cluster to join.
    pub cluster_id: String,
    /// This node, as sent in hello (generation included).
    pub node: NodeInfo,
    /// Statuses published by the supervisor.
    pub statuses: watch::Receiver<BTreeMap<String, AllocReport>>,
    /// Desired sets for the supervisor.
    pub desired: watch::Sender<Option<DesiredUpdate>>,
    /// Link state for the supervisor.
    pub link: watch::Sender<LinkState>,
    /// Route policy for the service proxy: only valid ones, each newer than the last (start
    /// it with the saved one, which a policy must then be newer than, within its store).
    pub routes: watch::Sender<Option<RoutePolicy>>,
    /// The cluster DNS of the last desired set, for the routing and DNS tasks: sent only when
    /// it changes, as desired sets come often (start it with the saved one).
    pub cluster_dns: watch::Sender<Option<ClusterDns>>,
    /// Data dir where the routing is kept on every change, for a restart without the
    /// coordinator; `None` keeps nothing.
    pub saved: Option<PathBuf>,
    /// The proxy's cumulative connection outcomes per (service, revision), sent in full on
    /// every change (see the module docs).
    pub traffic: watch::Receiver<NodeTraffic>,
    /// The supervisor's last sampling round, sent once per round (see the module docs).
    pub usage: watch::Receiver<UsageReport>,
    /// Source address of the connection to the coordinator; `None` lets the kernel choose.
    pub source: Option<std::net::IpAddr>,
    /// The node's credentials, renewed while the agent runs; `None`: plain gRPC to an
    /// insecure coordinator (tests only).
    pub credentials: Option<watch::Receiver<Arc<NodeCredentials>>>,
    /// The gossip keyring the coordinator sends (base64, the key in use first).
    pub gossip_keys: watch::Sender<Vec<String>>,
    /// The CA bundle the coordinator sends (certificate renewal follows it).
    pub ca_bundle: watch::Sender<Option<String>>,
    /// Where replicas' output is read for the coordinator's log requests; `None` answers
    /// each request that this agent reads no output.
    pub logs: Option<crate::logs::LogSource>,
    /// The tokens that may read the agent's HTTP side, as the coordinator sends them (kept
    /// in `saved` too).
    pub read_tokens: watch::Sender<Arc<crate::read_tokens::ReadTokens>>,
    /// How to join again when the coordinator no longer knows the node's certificate (its
    /// state was reset or restored): `None` without a join token.
    pub rejoin: Option<crate::credentials::Rejoin>,
    /// The last session was refused for the node's certificate; start with `false`.
    pub refused_identity: bool,
    /// Identity of the coordinator store whose desired set was applied; start with `None`.
    /// A set from another store (the coordinator's state was reset or restored) is applied
    /// whatever its version: versions count within one store.
    pub desired_store: Option<String>,
}

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl Link {
    /// Keeps a session open until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        let mut session = 0u64;
        let mut target = 0usize;
        loop {
            let url = self.coordinators[target % self.coordinators.len()].clone();
            session += 1;
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = self.session(&url, session) => result,
            };
            self.link.send_replace(LinkState {
                session,
                connected: false,
            });
            match result {
                Ok(()) => {
                    info!(coordinator = %url, "session ended; reconnecting");
                    backoff = MIN_BACKOFF;
                }
                Err(e) => {
                    warn!(coordinator = %url, error = %e, retry_in = ?backoff, "coordinator unreachable");
                    target += 1;
                    if std::mem::take(&mut self.refused_identity)
                        && let Some(rejoin) = &self.rejoin
                    {
                        rejoin.run(&url).await;
                    }
                }
            }
            // Jitter spreads reconnects of a whole fleet after a coordinator restart.
            let jitter: f64 = rand::random_range(0.5..1.5);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn session(&mut self, url: &str, session: u64) -> Result<(), String> {
        let endpoint = drover_security::transport::endpoint(url)
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(5))
            // A coordinator cut off must show as a dead session in seconds.
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true)
            .local_address(self.source);
        // Each session dials with the newest certificate; a renewal leaves open ones be.
        let connected = match &self.credentials {
            Some(credentials) => {
                let tls = credentials
                    .borrow()
                    .tls(self.source)
                    .map_err(|e| e.to_string())?;
                tls.connect(endpoint).await
            }
            None => endpoint.connect().await,
        };
        let channel = connected.map_err(|e| format!("connect {url}: {}", source_text(&e)))?;
        let mut client = AgentLinkClient::new(channel);
        let (tx, rx) = mpsc::channel::<pb::AgentMessage>(64);
        let mut sent = self.statuses.borrow_and_update().clone();
        let applied = self
            .desired
            .borrow()
            .as_ref()
            .map(|d| d.version)
            .unwrap_or(0);
        let hello = pb::AgentMessage {
            body: Some(pb::agent_message::Body::Hello(pb::Hello {
                node: Some((&self.node).into()),
                allocations: running(&sent),
                desired_version: applied,
                cluster_id: self.cluster_id.clone(),
            })),
        };
        tx.send(hello)
            .await
            .map_err(|_| "session closed".to_string())?;
        let mut inbound = client
            .session(ReceiverStream::new(rx))
            .await
            .map_err(|s| {
                if s.code() == tonic::Code::Unauthenticated {
                    self.refused_identity = true;
                }
                format!("open session on {url}: {}", s.message())
            })?
            .into_inner();
        info!(coordinator = %url, session, "connected to coordinator");
        self.link.send_replace(LinkState {
            session,
            connected: true,
        });
        let totals = self.traffic.borrow_and_update().clone();
        if !totals.is_empty() && tx.send(traffic_update(&totals)).await.is_err() {
            return Ok(());
        }
        // Log requests of this session: each follower stops on its cancel, or with the
        // session.
        let session_logs = CancellationToken::new();
        let _stop_logs = session_logs.clone().drop_guard();
        let mut log_requests: HashMap<u64, CancellationToken> = HashMap::new();
        // The proxy's side may end first at shutdown; that must not end the session.
        let mut traffic_open = true;
        // So may the supervisor's.
        let mut usage_open = true;

        loop {
            tokio::select! {
                message = inbound.next() => match message {
                    None => return Ok(()),
                    Some(Err(status)) => return Err(format!("session on {url}: {}", status.message())),
                    Some(Ok(pb::CoordinatorMessage { body: Some(pb::coordinator_message::Body::LogRequest(request)) })) => {
                        log_requests.retain(|_, cancel| !cancel.is_cancelled());
                        let cancel = session_logs.child_token();
                        log_requests.insert(request.request_id, cancel.clone());
                        self.start_logs(request, tx.clone(), cancel);
                    }
                    Some(Ok(pb::CoordinatorMessage { body: Some(pb::coordinator_message::Body::LogCancel(cancel)) })) => {
                        if let Some(token) = log_requests.remove(&cancel.request_id) {
                            token.cancel();
                        }
                    }
                    Some(Ok(message)) => self.on_message(message, session),
                },
                changed = self.statuses.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let now = self.statuses.borrow_and_update().clone();
                    let changes: BTreeMap<String, AllocReport> = now
                        .iter()
                        .filter(|(id, s)| sent.get(*id) != Some(*s))
                        .map(|(id, s)| (id.clone(), s.clone()))
                        .collect();
                    if changes.is_empty() {
                        continue;
                    }
                    let update = pb::AgentMessage {
                        body: Some(pb::agent_message::Body::Status(pb::StatusUpdate {
                            allocations: running(&changes),
                            node_usage: None,
                            usage: Vec::new(),
                            traffic: Vec::new(),
                            replica_traffic: Vec::new(),
                        })),
                    };
                    if tx.send(update).await.is_err() {
                        return Ok(());
                    }
                    sent = now;
                }
                changed = self.traffic.changed(), if traffic_open => {
                    if changed.is_err() {
                        traffic_open = false;
                        continue;
                    }
                    let totals = self.traffic.borrow_and_update().clone();
                    if tx.send(traffic_update(&totals)).await.is_err() {
                        return Ok(());
                    }
                }
                changed = self.usage.changed(), if usage_open => {
                    if changed.is_err() {
                        usage_open = false;
                        continue;
                    }
                    let update = usage_update(&self.usage.borrow_and_update());
                    if tx.send(update).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Starts sending the output `request` asks for, until it ends or `cancel`.
    fn start_logs(
        &self,
        request: pb::LogRequest,
        tx: mpsc::Sender<pb::AgentMessage>,
        cancel: CancellationToken,
    ) {
        let Some(source) = self.logs.clone() else {
            let why = format!("node {} reads no container output", self.node.id);
            let _ = tx.try_send(crate::logs::end_chunk(request.request_id, why));
            return;
        };
        tokio::spawn(async move {
            let done = cancel.clone();
            crate::logs::follow(source, request, tx, cancel).await;
            done.cancel();
        });
    }

    /// Applies one message from the coordinator. Wire types stop here: a message that does
    /// not convert to its domain type is logged and dropped (the last valid one stays), and
    /// so is one older than what was applied.
    fn on_message(&mut self, message: pb::CoordinatorMessage, session: u64) {
        match message.body {
            Some(pb::coordinator_message::Body::Desired(set)) => {
                let version = set.version;
                let same_store = self.desired_store.as_deref() == Some(set.store_id.as_str());
                if !same_store && self.desired_store.is_some() {
                    info!(store = %set.store_id, version, "the coordinator's store is new (reset or restored): its versions start afresh");
                }
                let current = self
                    .desired
                    .borrow()
                    .as_ref()
                    .map(|d| d.version)
                    .filter(|_| same_store);
                if current.is_some_and(|v| version <= v) {
                    warn!(
                        version,
                        applied = current,
                        "ignoring a desired set older than the applied one"
                    );
                    return;
                }
                match DesiredSet::try_from(set) {
                    Ok(set) => {
                        self.desired_store = Some(set.store_id.clone());
                        let dns = set.cluster_dns.clone();
                        let update = desired_update(set, session);
                        info!(
                            version = update.version,
                            allocations = update.allocations.len(),
                            "desired set received"
                        );
                        self.desired.send_replace(Some(update));
                        let changed = self.cluster_dns.send_if_modified(|current| {
                            let changed = *current != dns;
                            if changed {
                                *current = dns;
                            }
                            changed
                        });
                        if changed {
                            self.save_routing();
                        }
                    }
                    Err(e) => warn!(version, error = %e, "invalid desired set ignored"),
                }
            }
            Some(pb::coordinator_message::Body::GossipKeys(keyring)) => {
                if keyring.keys.is_empty() {
                    warn!("an empty gossip keyring ignored");
                    return;
                }
                info!(keys = keyring.keys.len(), "gossip keyring received");
                self.gossip_keys.send_replace(keyring.keys);
            }
            Some(pb::coordinator_message::Body::ReadTokens(tokens)) => {
                if let Some(dir) = &self.saved
                    && let Err(e) = crate::read_tokens::save(dir, &tokens)
                {
                    warn!(error = %e, "cannot keep the read tokens; a restart without the coordinator refuses every token until it sends them");
                }
                let tokens = crate::read_tokens::ReadTokens::from(tokens);
                tracing::debug!(tokens = tokens.len(), "read tokens received");
                self.read_tokens.send_replace(Arc::new(tokens));
            }
            Some(pb::coordinator_message::Body::CaBundle(bundle)) => {
                if bundle.bundle_pem.is_empty() {
                    warn!("an empty CA bundle ignored");
                    return;
                }
                self.ca_bundle.send_replace(Some(bundle.bundle_pem));
            }
            Some(pb::coordinator_message::Body::Routes(policy)) => {
                let version = policy.version;
                let current = self
                    .routes
                    .borrow()
                    .as_ref()
                    .filter(|p| p.store_id == policy.store_id)
                    .map(|p| p.version);
                if current.is_some_and(|v| version <= v) {
                    warn!(
                        version,
                        applied = current,
                        "ignoring a route policy older than the applied one"
                    );
                    return;
                }
                match RoutePolicy::try_from(policy) {
                    Ok(mut policy) => {
                        let kept = keep_known_addresses(&mut policy, self.routes.borrow().as_ref());
                        info!(
                            version,
                            services = policy.services.len(),
                            kept_addresses = kept,
                            "route policy received"
                        );
                        self.routes.send_replace(Some(policy));
                        self.save_routing();
                    }
                    Err(e) => warn!(version, error = %e, "invalid route policy ignored"),
                }
            }
            // Handled by the session, which owns the followers.
            Some(
                pb::coordinator_message::Body::LogRequest(_)
                | pb::coordinator_message::Body::LogCancel(_),
            )
            | None => {}
        }
    }

    /// Keeps the applied policy and cluster DNS in the data dir, if there is a policy (the
    /// DNS alone restores nothing the agent could serve). Failing is not fatal: the agent
    /// goes on with them in memory, and the next change tries again.
    fn save_routing(&self) {
        let Some(dir) = &self.saved else {
            return;
        };
        let policy = self.routes.borrow();
        let Some(policy) = policy.as_ref() else {
            return;
        };
        let dns = self.cluster_dns.borrow();
        if let Err(e) = saved_routing::save(dir, policy, dns.as_ref()) {
            warn!(
                path = %saved_routing::path(dir).display(),
                error = %e,
                "the routing is not kept for a restart"
            );
        }
    }
}

/// Gives an endpoint the new policy lists without an address the address the previous
/// policy (of the same store) gave the same replica's port; returns how many. A coordinator
/// that has just started knows no host port of a node that has not reconnected yet: without
/// this, every proxy would stop routing to that node's replicas until it does, though
/// nothing moved. An address is still only the coordinator's; gossip still decides health.
fn keep_known_addresses(policy: &mut RoutePolicy, previous: Option<&RoutePolicy>) -> usize {
    let Some(previous) = previous.filter(|p| p.store_id == policy.store_id) else {
        return 0;
    };
    let known: BTreeMap<(&str, u16), std::net::SocketAddr> = previous
        .services
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter_map(|e| Some(((e.allocation_id.as_str(), e.container_port), e.address?)))
        .collect();
    let mut kept = 0;
    for endpoint in policy
        .services
        .iter_mut()
        .flat_map(|s| s.endpoints.iter_mut())
    {
        if endpoint.address.is_none() {
            let key = (endpoint.allocation_id.as_str(), endpoint.container_port);
            if let Some(address) = known.get(&key) {
                endpoint.address = Some(*address);
                kept += 1;
            }
        }
    }
    kept
}

fn running(reports: &BTreeMap<String, AllocReport>) -> Vec<pb::RunningAllocation> {
    reports
        .iter()
        .map(|(id, r)| pb::RunningAllocation {
            id: id.clone(),
            status: Some((&r.status).into()),
        })
        .collect()
}

/// A status update carrying only the traffic totals, in full.
fn traffic_update(totals: &NodeTraffic) -> pb::AgentMessage {
    pb::AgentMessage {
        body: Some(pb::agent_message::Body::Status(pb::StatusUpdate {
            allocations: Vec::new(),
            node_usage: None,
            usage: Vec::new(),
            traffic: totals
                .revisions
                .iter()
                .map(pb::RevisionTraffic::from)
                .collect(),
            replica_traffic: totals
                .replicas
                .iter()
                .map(pb::ReplicaTraffic::from)
                .collect(),
        })),
    }
}

/// A status update carrying only a sampling round: the replicas' samples and the node's
/// usage.
fn usage_update(report: &UsageReport) -> pb::AgentMessage {
    pb::AgentMessage {
        body: Some(pb::agent_message::Body::Status(pb::StatusUpdate {
            allocations: Vec::new(),
            node_usage: report.node.map(pb::Resources::from),
            usage: report
                .allocations
                .iter()
                .map(pb::AllocUsage::from)
                .collect(),
            traffic: Vec::new(),
            replica_traffic: Vec::new(),
        })),
    }
}

/// The supervisor's view of a desired set received on link session `session`.
fn desired_update(set: DesiredSet, session: u64) -> DesiredUpdate {
    let allocations = set
        .allocations
        .into_iter()
        .map(|d| {
            let alloc = DesiredAlloc {
                allocation: d.allocation,
                spec: d.spec,
            };
            (alloc.allocation.id.clone(), alloc)
        })
        .collect();
    DesiredUpdate {
        version: set.version,
        session,
        allocations,
        store_id: set.store_id,
        cluster_dns: set.cluster_dns,
    }
}

fn source_text(e: &dyn std::error::Error) -> String {
    match e.source() {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use drover_proto::model::{
        Allocation, ReplicaTraffic, Resources, RevisionTraffic, WorkloadSpec,
    };
    use drover_proto::pb::agent_link_server::{AgentLink, AgentLinkServer};
    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response, Status, Streaming};

    use super::*;

    type Outbound = mpsc::Sender<Result<pb::CoordinatorMessage, Status>>;

    /// A coordinator that passes on every message with its session number and keeps each
    /// session open until its sender in `open` is dropped.
    struct FakeCoordinator {
        received: mpsc::UnboundedSender<(u64, pb::AgentMessage)>,
        open: Arc<Mutex<Vec<Outbound>>>,
        sessions: AtomicU64,
    }

    #[tonic::async_trait]
    impl AgentLink for FakeCoordinator {
        type SessionStream = ReceiverStream<Result<pb::CoordinatorMessage, Status>>;

        async fn session(
            &self,
            request: Request<Streaming<pb::AgentMessage>>,
        ) -> Result<Response<Self::SessionStream>, Status> {
            let (tx, rx) = mpsc::channel(1);
            let session = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
            self.open.lock().expect("lock").push(tx);
            let mut inbound = request.into_inner();
            let received = self.received.clone();
            tokio::spawn(async move {
                while let Some(Ok(message)) = inbound.next().await {
                    if received.send((session, message)).is_err() {
                        break;
                    }
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        }

        async fn renew_certificate(
            &self,
            _request: Request<pb::RenewRequest>,
        ) -> Result<Response<pb::RenewResponse>, Status> {
            Err(Status::unimplemented(
                "the fake coordinator issues no certificates",
            ))
        }
    }

    fn web(revision: u64, connections: u64, failed: u64) -> RevisionTraffic {
        RevisionTraffic {
            service: "web".into(),
            revision,
            connections,
            failed,
        }
    }

    /// Totals with `revisions` and one replica counted as often as their connections.
    fn totals(revisions: Vec<RevisionTraffic>) -> NodeTraffic {
        let connections = revisions.iter().map(|r| r.connections).sum();
        NodeTraffic {
            revisions,
            replicas: vec![ReplicaTraffic {
                allocation_id: "web.1".into(),
                connections,
                active: 1,
            }],
        }
    }

    /// The next message the fake coordinator got, with its session.
    async fn next_message(
        received: &mut mpsc::UnboundedReceiver<(u64, pb::AgentMessage)>,
    ) -> (u64, pb::AgentMessage) {
        tokio::time::timeout(Duration::from_secs(5), received.recv())
            .await
            .expect("a message within 5 s")
            .expect("the fake is running")
    }

    /// The next message: its session and, for a traffic update, the totals it carries.
    async fn next(
        received: &mut mpsc::UnboundedReceiver<(u64, pb::AgentMessage)>,
    ) -> (u64, Option<NodeTraffic>) {
        let (session, message) = next_message(received).await;
        let traffic = match message.body {
            Some(pb::agent_message::Body::Status(s)) => Some(NodeTraffic {
                revisions: s.traffic.into_iter().map(RevisionTraffic::from).collect(),
                replicas: s
                    .replica_traffic
                    .into_iter()
                    .map(ReplicaTraffic::from)
                    .collect(),
            }),
            Some(pb::agent_message::Body::Hello(_) | pb::agent_message::Body::Logs(_)) => None,
            None => panic!("empty message"),
        };
        (session, traffic)
    }

    /// A link with no coordinator, for feeding it messages; the receivers of what it applies.
    fn idle_link() -> (
        Link,
        watch::Receiver<Option<RoutePolicy>>,
        watch::Receiver<Option<DesiredUpdate>>,
    ) {
        let (link, receivers) = link_keeping(None);
        (link, receivers.routes, receivers.desired)
    }

    /// The receivers of what a link applies.
    struct Applied {
        routes: watch::Receiver<Option<RoutePolicy>>,
        desired: watch::Receiver<Option<DesiredUpdate>>,
        cluster_dns: watch::Receiver<Option<ClusterDns>>,
    }

    /// A link with no coordinator that keeps its routing in `saved`, and starts from what is
    /// kept there, as the agent does.
    fn link_keeping(saved: Option<&std::path::Path>) -> (Link, Applied) {
        let (policy, dns) = saved.map(saved_routing::restore).unwrap_or_default();
        let (_statuses_tx, statuses) = watch::channel(BTreeMap::new());
        let (desired, desired_rx) = watch::channel(None);
        let (link, _link_rx) = watch::channel(LinkState::default());
        let (routes, routes_rx) = watch::channel(policy);
        let (cluster_dns, cluster_dns_rx) = watch::channel(dns);
        let (_traffic_tx, traffic) = watch::channel(NodeTraffic::default());
        let (_usage_tx, usage) = watch::channel(UsageReport::default());
        let link = Link {
            coordinators: Vec::new(),
            cluster_id: "test".into(),
            node: NodeInfo {
                id: "n1".into(),
                generation: 1,
                address: "127.0.0.1".into(),
                capacity: Resources::default(),
                labels: BTreeMap::new(),
            },
            statuses,
            desired,
            link,
            routes,
            cluster_dns,
            saved: saved.map(std::path::Path::to_path_buf),
            traffic,
            usage,
            source: None,
            desired_store: None,
            credentials: None,
            gossip_keys: watch::channel(Vec::new()).0,
            read_tokens: watch::channel(Arc::default()).0,
            logs: None,
            ca_bundle: watch::channel(None).0,
            rejoin: None,
            refused_identity: false,
        };
        let applied = Applied {
            routes: routes_rx,
            desired: desired_rx,
            cluster_dns: cluster_dns_rx,
        };
        (link, applied)
    }

    fn routes_message(version: u64, service_port: u32, address: &str) -> pb::CoordinatorMessage {
        routes_of_store("s1", version, service_port, address)
    }

    fn routes_of_store(
        store: &str,
        version: u64,
        port: u32,
        address: &str,
    ) -> pb::CoordinatorMessage {
        pb::CoordinatorMessage {
            body: Some(pb::coordinator_message::Body::Routes(pb::RoutePolicy {
                store_id: store.into(),
                version,
                services: vec![pb::ServiceRoute {
                    service: "web".into(),
                    port,
                    cluster_ip: "10.96.0.1".into(),
                    node_port: 0,
                    service_port: 0,
                    port_name: None,
                    strategy: pb::Strategy::RoundRobin as i32,
                    pool_weights: Default::default(),
                    endpoints: vec![pb::RouteEndpoint {
                        allocation_id: "web.1".into(),
                        node: "n1".into(),
                        revision: 1,
                        address: address.into(),
                        weight: 1,
                        workload: "web".into(),
                        pool: 1,
                        container_port: 8080,
                    }],
                }],
            })),
        }
    }

    #[test]
    fn invalid_or_older_route_policies_are_dropped() {
        let (mut link, routes, _desired) = idle_link();
        let applied = |routes: &watch::Receiver<Option<RoutePolicy>>| {
            routes.borrow().as_ref().map(|p| {
                let e = &p.services[0].endpoints[0];
                (p.version, p.services[0].port, e.address)
            })
        };
        let address = Some("10.0.0.1:31000".parse().expect("address"));
        link.on_message(routes_message(5, 80, "10.0.0.1:31000"), 1);
        assert_eq!(applied(&routes), Some((5, 80, address)));
        // Out of range, or an address that is not ip:port: dropped, the last one stays.
        link.on_message(routes_message(6, 70_000, "10.0.0.1:31000"), 1);
        link.on_message(routes_message(7, 81, "somewhere:31000"), 1);
        assert_eq!(applied(&routes), Some((5, 80, address)));
        // Older or replayed: dropped.
        link.on_message(routes_message(5, 82, ""), 1);
        link.on_message(routes_message(4, 82, ""), 1);
        assert_eq!(applied(&routes), Some((5, 80, address)));
        // Newer and valid; an endpoint without an address is kept, with none.
        link.on_message(routes_of_store("s2", 8, 82, ""), 1);
        assert_eq!(applied(&routes), Some((8, 82, None)));
    }

    #[test]
    fn an_endpoint_listed_without_an_address_keeps_the_one_it_had() {
        let (mut link, routes, _desired) = idle_link();
        let address = |routes: &watch::Receiver<Option<RoutePolicy>>| {
            routes
                .borrow()
                .as_ref()
                .map(|p| p.services[0].endpoints[0].address)
        };
        let known = Some("10.0.0.1:31000".parse().expect("address"));
        link.on_message(routes_message(5, 80, "10.0.0.1:31000"), 1);
        // A coordinator that just started has not heard from the replica's node yet.
        link.on_message(routes_message(6, 80, ""), 1);
        assert_eq!(address(&routes), Some(known));
        // A new address replaces it.
        link.on_message(routes_message(7, 80, "10.0.0.1:31001"), 1);
        assert_eq!(
            address(&routes),
            Some(Some("10.0.0.1:31001".parse().expect("address")))
        );
        // Another store's replica of that id is another replica.
        link.on_message(routes_of_store("s2", 1, 80, ""), 1);
        assert_eq!(address(&routes), Some(None));
    }

    /// A desired set of `store` at `version` with one replica of `image`.
    fn desired_message(store: &str, version: u64, image: &str) -> pb::CoordinatorMessage {
        desired_with_dns(store, version, image, None)
    }

    /// The cluster DNS at `address`.
    fn dns(address: [u8; 4]) -> ClusterDns {
        ClusterDns {
            address: address.into(),
            domain: "cluster.local".into(),
            service_network: "10.96.0.0/16".into(),
        }
    }

    /// [`desired_message`] naming `cluster_dns`.
    fn desired_with_dns(
        store: &str,
        version: u64,
        image: &str,
        cluster_dns: Option<ClusterDns>,
    ) -> pb::CoordinatorMessage {
        let mut spec = WorkloadSpec::new("web", "web:1");
        spec.image = image.into();
        let allocation = Allocation {
            id: "web.1".into(),
            service: "web".into(),
            revision: 1,
            node: "n1".into(),
            resources: spec.resources,
            desired: drover_proto::model::DesiredState::Run,
            created_unix_ms: 0,
        };
        pb::CoordinatorMessage {
            body: Some(pb::coordinator_message::Body::Desired(
                (&DesiredSet {
                    version,
                    allocations: vec![drover_proto::model::DesiredAllocation { allocation, spec }],
                    store_id: store.into(),
                    cluster_dns,
                })
                    .into(),
            )),
        }
    }

    #[test]
    fn a_new_coordinator_store_starts_versions_afresh() {
        let (mut link, routes, desired) = idle_link();
        let version =
            |d: &watch::Receiver<Option<DesiredUpdate>>| d.borrow().as_ref().map(|d| d.version);
        let route_version =
            |r: &watch::Receiver<Option<RoutePolicy>>| r.borrow().as_ref().map(|p| p.version);
        link.on_message(desired_message("s1", 9 << 32, "web:1"), 1);
        link.on_message(routes_of_store("s1", 9 << 32, 80, "10.0.0.1:31000"), 1);
        // The same store's older versions are still refused.
        link.on_message(desired_message("s1", 1 << 32, "web:2"), 1);
        link.on_message(routes_of_store("s1", 1 << 32, 81, ""), 1);
        assert_eq!(version(&desired), Some(9 << 32));
        assert_eq!(route_version(&routes), Some(9 << 32));
        // The coordinator's state was reset: its versions start low again, and count.
        link.on_message(desired_message("s2", (1 << 32) + 1, "web:2"), 2);
        link.on_message(routes_of_store("s2", (1 << 32) + 1, 81, ""), 2);
        assert_eq!(version(&desired), Some((1 << 32) + 1));
        assert_eq!(route_version(&routes), Some((1 << 32) + 1));
        link.on_message(desired_message("s2", 1 << 32, "web:3"), 2);
        assert_eq!(
            version(&desired),
            Some((1 << 32) + 1),
            "older within the new store"
        );
    }

    #[test]
    fn an_invalid_desired_set_is_dropped() {
        let (mut link, _routes, desired) = idle_link();
        let applied = |desired: &watch::Receiver<Option<DesiredUpdate>>| {
            desired.borrow().as_ref().map(|d| {
                (
                    d.version,
                    d.session,
                    d.allocations.get("web.1").map(|a| a.spec.image.clone()),
                )
            })
        };
        link.on_message(desired_message("s1", 3, "web:1"), 2);
        assert_eq!(applied(&desired), Some((3, 2, Some("web:1".into()))));
        // No image: invalid, dropped.
        link.on_message(desired_message("s1", 4, ""), 2);
        assert_eq!(applied(&desired), Some((3, 2, Some("web:1".into()))));
        link.on_message(desired_message("s1", 5, "web:2"), 3);
        assert_eq!(applied(&desired), Some((5, 3, Some("web:2".into()))));
    }

    #[test]
    fn the_routing_is_kept_and_a_new_link_starts_from_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kept = || saved_routing::load(dir.path()).map(|r| (r.policy.version, r.cluster_dns));
        let (mut link, mut applied) = link_keeping(Some(dir.path()));
        // A cluster DNS without a policy restores nothing: not kept yet.
        link.on_message(
            desired_with_dns("s1", 3, "web:1", Some(dns([10, 96, 0, 10]))),
            1,
        );
        assert_eq!(kept(), None);
        link.on_message(routes_message(5, 80, "10.0.0.1:31000"), 1);
        assert_eq!(kept(), Some((5, Some(dns([10, 96, 0, 10])))));
        // The same cluster DNS again is no change: the tasks are not woken.
        applied.cluster_dns.borrow_and_update();
        link.on_message(
            desired_with_dns("s1", 4, "web:1", Some(dns([10, 96, 0, 10]))),
            1,
        );
        assert!(!applied.cluster_dns.has_changed().expect("open"));
        // A new one is sent and kept.
        link.on_message(
            desired_with_dns("s1", 5, "web:1", Some(dns([10, 96, 0, 53]))),
            1,
        );
        assert!(applied.cluster_dns.has_changed().expect("open"));
        assert_eq!(kept(), Some((5, Some(dns([10, 96, 0, 53])))));
        // An invalid policy is neither applied nor kept.
        link.on_message(routes_message(6, 70_000, "10.0.0.1:31000"), 1);
        assert_eq!(kept(), Some((5, Some(dns([10, 96, 0, 53])))));
        drop((link, applied));

        // The agent restarts with the coordinator away: it starts from what was kept.
        let (mut link, applied) = link_keeping(Some(dir.path()));
        let version =
            |r: &watch::Receiver<Option<RoutePolicy>>| r.borrow().as_ref().map(|p| p.version);
        assert_eq!(version(&applied.routes), Some(5));
        assert_eq!(*applied.cluster_dns.borrow(), Some(dns([10, 96, 0, 53])));
        assert_eq!(*applied.desired.borrow(), None, "no desired set is kept");
        // The coordinator is back: a replay of the kept policy is older than the applied one,
        // a newer one is applied and kept.
        link.on_message(routes_message(5, 81, "10.0.0.1:31000"), 2);
        assert_eq!(
            applied.routes.borrow().as_ref().map(|p| p.services[0].port),
            Some(80)
        );
        link.on_message(routes_message(7, 81, "10.0.0.1:31000"), 2);
        assert_eq!(version(&applied.routes), Some(7));
        assert_eq!(kept(), Some((7, Some(dns([10, 96, 0, 53])))));
    }

    /// A fake coordinator serving on a local port: its address, what it receives, and the
    /// senders of its open sessions (dropping one ends that session).
    async fn serve_fake_coordinator() -> (
        std::net::SocketAddr,
        mpsc::UnboundedReceiver<(u64, pb::AgentMessage)>,
        Arc<Mutex<Vec<Outbound>>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (received_tx, received) = mpsc::unbounded_channel();
        let open = Arc::new(Mutex::new(Vec::new()));
        let fake = FakeCoordinator {
            received: received_tx,
            open: Arc::clone(&open),
            sessions: AtomicU64::new(0),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentLinkServer::new(fake))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (address, received, open)
    }

    /// A link to the coordinator at `address`, fed `traffic` and `usage`; the receiver of
    /// its link state, and the sender of its statuses (the session ends when it is dropped).
    fn link_to(
        address: std::net::SocketAddr,
        traffic: watch::Receiver<NodeTraffic>,
        usage: watch::Receiver<UsageReport>,
    ) -> (
        Link,
        watch::Receiver<LinkState>,
        watch::Sender<BTreeMap<String, AllocReport>>,
    ) {
        let (statuses_tx, statuses_rx) = watch::channel(BTreeMap::new());
        let (desired_tx, _desired_rx) = watch::channel(None);
        let (link_tx, link_rx) = watch::channel(LinkState::default());
        let (routes_tx, _routes_rx) = watch::channel(None);
        let link = Link {
            coordinators: vec![format!("http://{address}")],
            cluster_id: "test".into(),
            node: NodeInfo {
                id: "n1".into(),
                generation: 1,
                address: "127.0.0.1".into(),
                capacity: Resources::default(),
                labels: BTreeMap::new(),
            },
            statuses: statuses_rx,
            desired: desired_tx,
            link: link_tx,
            routes: routes_tx,
            cluster_dns: watch::channel(None).0,
            saved: None,
            traffic,
            usage,
            source: None,
            desired_store: None,
            credentials: None,
            gossip_keys: watch::channel(Vec::new()).0,
            read_tokens: watch::channel(Arc::default()).0,
            logs: None,
            ca_bundle: watch::channel(None).0,
            rejoin: None,
            refused_identity: false,
        };
        (link, link_rx, statuses_tx)
    }

    #[tokio::test]
    async fn traffic_is_sent_on_change_and_in_full_at_every_session_start() {
        let (address, mut received, open) = serve_fake_coordinator().await;
        let (traffic_tx, traffic_rx) = watch::channel(totals(vec![web(1, 10, 1)]));
        let (_usage_tx, usage_rx) = watch::channel(UsageReport::default());
        let (link, mut link_rx, _statuses_tx) = link_to(address, traffic_rx, usage_rx);
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(link.run(shutdown.clone()));

        // Hello, then the totals at once.
        assert_eq!(next(&mut received).await, (1, None));
        assert_eq!(
            next(&mut received).await,
            (1, Some(totals(vec![web(1, 10, 1)])))
        );
        // A change goes out in full: every (service, revision), cumulative.
        let now = totals(vec![web(1, 12, 1), web(2, 3, 3)]);
        traffic_tx.send_replace(now.clone());
        assert_eq!(next(&mut received).await, (1, Some(now)));

        // The coordinator ends the session; totals change while the link is down.
        open.lock().expect("lock").clear();
        link_rx
            .wait_for(|state| state.session == 1 && !state.connected)
            .await
            .expect("link state");
        let now = totals(vec![web(1, 20, 1), web(2, 3, 3)]);
        traffic_tx.send_replace(now.clone());
        // The next session starts with the current totals, and sends them once.
        assert_eq!(next(&mut received).await, (2, None));
        assert_eq!(next(&mut received).await, (2, Some(now)));
        let quiet = tokio::time::timeout(Duration::from_millis(300), received.recv()).await;
        assert!(quiet.is_err(), "unexpected message: {quiet:?}");

        shutdown.cancel();
        running.await.expect("link task");
    }

    #[tokio::test]
    async fn a_published_sampling_round_becomes_one_status_update() {
        let (address, mut received, open) = serve_fake_coordinator().await;
        let (_traffic_tx, traffic_rx) = watch::channel(NodeTraffic::default());
        let (usage_tx, usage_rx) = watch::channel(UsageReport::default());
        let (link, mut link_rx, _statuses_tx) = link_to(address, traffic_rx, usage_rx);
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(link.run(shutdown.clone()));
        let (session, hello) = next_message(&mut received).await;
        assert!(
            matches!(hello.body, Some(pb::agent_message::Body::Hello(_))),
            "{hello:?}"
        );

        let sample = |id: &str, cpu_millis| drover_proto::model::AllocUsage {
            allocation_id: id.into(),
            cpu_millis,
            memory_working_set_bytes: 50 << 20,
            memory_limit_bytes: Some(256 << 20),
            oom_kills: 1,
            window_ms: 5000,
        };
        let node = Resources {
            cpu_millis: 1500,
            memory_bytes: 3 << 30,
        };
        let round = UsageReport {
            allocations: vec![sample("web.1", 250), sample("web.2", 40)],
            node: Some(node),
        };
        usage_tx.send_replace(round.clone());
        let (same_session, update) = next_message(&mut received).await;
        assert_eq!(same_session, session);
        let Some(pb::agent_message::Body::Status(status)) = update.body else {
            panic!("not a status update: {update:?}");
        };
        assert!(status.allocations.is_empty(), "statuses resent: {status:?}");
        assert!(status.traffic.is_empty(), "{status:?}");
        assert_eq!(status.node_usage, Some(pb::Resources::from(node)));
        let usage: Vec<drover_proto::model::AllocUsage> = status
            .usage
            .into_iter()
            .map(drover_proto::model::AllocUsage::from)
            .collect();
        assert_eq!(usage, round.allocations);
        // One update per round, nothing more.
        let quiet = tokio::time::timeout(Duration::from_millis(300), received.recv()).await;
        assert!(quiet.is_err(), "unexpected message: {quiet:?}");

        // A round published while the link is down goes out once it is back.
        open.lock().expect("lock").clear();
        link_rx
            .wait_for(|state| state.session == session && !state.connected)
            .await
            .expect("link state");
        let later = UsageReport {
            allocations: vec![sample("web.1", 300)],
            node: None,
        };
        usage_tx.send_replace(later.clone());
        let (next_session, hello) = next_message(&mut received).await;
        assert!(next_session > session);
        assert!(
            matches!(hello.body, Some(pb::agent_message::Body::Hello(_))),
            "{hello:?}"
        );
        let (_, update) = next_message(&mut received).await;
        let Some(pb::agent_message::Body::Status(status)) = update.body else {
            panic!("not a status update: {update:?}");
        };
        assert_eq!(status.node_usage, None);
        assert_eq!(
            status.usage,
            vec![pb::AllocUsage::from(&later.allocations[0])]
        );
        let quiet = tokio::time::timeout(Duration::from_millis(300), received.recv()).await;
        assert!(quiet.is_err(), "unexpected message: {quiet:?}");

        shutdown.cancel();
        running.await.expect("link task");
    }
}
