//! The agent's end of `AgentLink`: opens the stream, says hello with what runs, streams
//! status changes, applies each newer desired set, reconnects with backoff and jitter.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_proto::model::{Allocation, NodeInfo, ServiceSpec};
use drover_proto::pb;
use drover_proto::pb::agent_link_client::AgentLinkClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::{info, warn};

use crate::supervisor::{AllocReport, DesiredAlloc, DesiredUpdate, LinkState};

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
    /// Route policy for the service proxy.
    pub routes: watch::Sender<Option<pb::RoutePolicy>>,
    /// Source address of the connection to the coordinator; `None` lets the kernel choose.
    pub source: Option<std::net::IpAddr>,
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
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("coordinator URL {url:?}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            // A coordinator cut off must show as a dead session in seconds.
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true)
            .local_address(self.source);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connect {url}: {}", source_text(&e)))?;
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
            .map_err(|s| format!("open session on {url}: {}", s.message()))?
            .into_inner();
        info!(coordinator = %url, session, "connected to coordinator");
        self.link.send_replace(LinkState {
            session,
            connected: true,
        });

        loop {
            tokio::select! {
                message = inbound.next() => match message {
                    None => return Ok(()),
                    Some(Err(status)) => return Err(format!("session on {url}: {}", status.message())),
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
                        })),
                    };
                    if tx.send(update).await.is_err() {
                        return Ok(());
                    }
                    sent = now;
                }
            }
        }
    }

    fn on_message(&mut self, message: pb::CoordinatorMessage, session: u64) {
        match message.body {
            Some(pb::coordinator_message::Body::Desired(set)) => {
                let current = self.desired.borrow().as_ref().map(|d| d.version);
                if current.is_some_and(|v| set.version <= v) {
                    warn!(
                        version = set.version,
                        "ignoring a desired set older than the applied one"
                    );
                    return;
                }
                match desired_update(set, session) {
                    Ok(update) => {
                        info!(
                            version = update.version,
                            allocations = update.allocations.len(),
                            "desired set received"
                        );
                        self.desired.send_replace(Some(update));
                    }
                    Err(e) => warn!(error = %e, "invalid desired set ignored"),
                }
            }
            Some(pb::coordinator_message::Body::Routes(routes)) => {
                self.routes.send_replace(Some(routes));
            }
            None => {}
        }
    }
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

fn desired_update(set: pb::DesiredSet, session: u64) -> Result<DesiredUpdate, String> {
    let mut allocations = BTreeMap::new();
    for (i, d) in set.allocations.into_iter().enumerate() {
        let allocation = Allocation::try_from(
            d.allocation
                .ok_or_else(|| format!("allocations[{i}].allocation is missing"))?,
        )
        .map_err(|e| format!("allocations[{i}]: {e}"))?;
        let spec = ServiceSpec::try_from(
            d.spec
                .ok_or_else(|| format!("allocations[{i}].spec is missing"))?,
        )
        .map_err(|e| format!("allocations[{i}] ({}): {e}", allocation.id))?;
        allocations.insert(allocation.id.clone(), DesiredAlloc { allocation, spec });
    }
    Ok(DesiredUpdate {
        version: set.version,
        session,
        allocations,
    })
}

fn source_text(e: &dyn std::error::Error) -> String {
    match e.source() {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}
