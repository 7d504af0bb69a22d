//! The agents' `AgentLink` gRPC service: one stream per agent, opened by the agent.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_proto::model::{AllocStatus, NodeInfo};
use drover_proto::pb;
use drover_proto::pb::agent_link_server::AgentLink;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use crate::changes::ChangeSet;
use crate::coordinator::{Coordinator, now_unix_ms};
use crate::security::Credentials;

/// Implementation of `drover.v1.AgentLink`.
#[derive(Debug, Clone)]
pub struct AgentLinkService {
    coordinator: Arc<Coordinator>,
}

impl AgentLinkService {
    /// The service over a running coordinator.
    pub fn new(coordinator: Arc<Coordinator>) -> AgentLinkService {
        AgentLinkService { coordinator }
    }
}

/// At most one log line per [`Throttle::PERIOD`] for a kind of misbehaviour of one session,
/// so a hostile agent cannot flood the log; the line says how many were not logged.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    const PERIOD: Duration = Duration::from_secs(10);

    /// `Some(suppressed since the last line)` when a line may be logged at `now`.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Self::PERIOD)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Longest status message kept from an agent, in bytes.
const MAX_STATUS_MESSAGE: usize = 2048;

/// Cuts `text` to at most `max` bytes, at a character boundary, marking the cut.
fn truncate(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push('…');
}

type CoordinatorStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

fn running(list: Vec<pb::RunningAllocation>) -> Result<Vec<(String, AllocStatus)>, Status> {
    list.into_iter()
        .enumerate()
        .map(|(i, r)| {
            if r.id.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "allocations[{i}].id is missing"
                )));
            }
            let status = r.status.ok_or_else(|| {
                Status::invalid_argument(format!("allocations[{i}] ({}): status is missing", r.id))
            })?;
            let mut status = AllocStatus::try_from(status).map_err(|e| {
                Status::invalid_argument(format!("allocations[{i}] ({}): {e}", r.id))
            })?;
            // An agent's words are kept for operators, bounded: a hostile one cannot grow the
            // coordinator with them.
            truncate(&mut status.message, MAX_STATUS_MESSAGE);
            truncate(&mut status.container_id, MAX_STATUS_MESSAGE);
            Ok((r.id, status))
        })
        .collect()
}

#[tonic::async_trait]
impl AgentLink for AgentLinkService {
    type SessionStream = CoordinatorStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let credentials = Credentials::of(&request);
        let mut inbound = request.into_inner();
        let first = inbound
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("stream ended before hello"))??;
        let Some(pb::agent_message::Body::Hello(hello)) = first.body else {
            return Err(Status::invalid_argument(
                "the first message of a session must be hello",
            ));
        };
        let info = hello
            .node
            .ok_or_else(|| Status::invalid_argument("hello.node is missing"))?;
        let info = NodeInfo::try_from(info)
            .map_err(|e| Status::invalid_argument(format!("hello: {e}")))?;
        drover_proto::manifest::validate_node(&info)
            .map_err(|e| Status::invalid_argument(format!("hello: {e}")))?;
        if hello.cluster_id != self.coordinator.cluster_id() {
            return Err(Status::failed_precondition(format!(
                "agent {} belongs to cluster {:?}, this coordinator runs cluster {:?}",
                info.id,
                hello.cluster_id,
                self.coordinator.cluster_id()
            )));
        }
        let allocations = running(hello.allocations)?;
        let node = info.id.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let serial = self
            .coordinator
            .agent_connected(info, credentials.peer.as_ref(), allocations, tx)
            .await?;

        let coordinator = self.coordinator.clone();
        tokio::spawn(async move {
            let mut refused = Throttle::default();
            let cause = loop {
                match inbound.next().await {
                    None => break "stream closed by agent".to_string(),
                    Some(Err(status)) => break format!("stream error: {}", status.message()),
                    Some(Ok(message)) => match message.body {
                        Some(pb::agent_message::Body::Status(update)) => {
                            let updates = match running(update.allocations) {
                                Ok(u) => u,
                                Err(status) => {
                                    warn!(node = %node, error = %status.message(), "invalid status update ignored");
                                    continue;
                                }
                            };
                            let usage = update.node_usage.map(Into::into);
                            let traffic = update.traffic.into_iter().map(Into::into).collect();
                            let samples = update.usage.into_iter().map(Into::into).collect();
                            let replicas =
                                update.replica_traffic.into_iter().map(Into::into).collect();
                            match coordinator
                                .agent_status(&node, updates, usage, (traffic, replicas), samples)
                                .await
                            {
                                Ok(reported) if reported.foreign > 0 => {
                                    if let Some(suppressed) = refused.allow(Instant::now()) {
                                        warn!(node = %node, refused = reported.foreign, suppressed, "statuses for allocations of other nodes refused: an agent speaks only for its own node");
                                    }
                                }
                                Ok(reported) if reported.unknown > 0 => {
                                    debug!(node = %node, dropped = reported.unknown, "statuses for unknown allocations dropped");
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    warn!(node = %node, error = %e, "cannot record status update");
                                }
                            }
                        }
                        Some(pb::agent_message::Body::Logs(chunk)) => {
                            if !coordinator.logs.deliver(&node, chunk)
                                && let Some(suppressed) = refused.allow(Instant::now())
                            {
                                debug!(node = %node, suppressed, "output for a log request that is closed or not this node's dropped");
                            }
                        }
                        Some(pb::agent_message::Body::Hello(_)) => {
                            warn!(node = %node, "second hello on one session ignored");
                        }
                        None => {}
                    },
                }
            };
            coordinator.agent_disconnected(&node, serial, &cause).await;
            // The agent stopped its followers with the session: their clients are told.
            coordinator.logs.node_gone(&node, &cause);
        });

        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn renew_certificate(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let credentials = Credentials::of(&request);
        let csr = request.into_inner().csr_pem;
        let Some(authority) = self.coordinator.authority() else {
            return Err(Status::failed_precondition(
                "this coordinator runs insecure: it issues no certificates",
            ));
        };
        let mut inner = self.coordinator.lock().await;
        let mut changes = ChangeSet::new(&inner.state, now_unix_ms());
        let certificate_pem =
            authority.renew(&inner.state, credentials.peer.as_ref(), &csr, &mut changes)?;
        self.coordinator.commit(&mut inner, changes).await?;
        Ok(Response::new(pb::RenewResponse {
            certificate_pem,
            ca_bundle_pem: authority.ca().bundle_pem().to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_status_messages_are_cut_at_a_character_boundary() {
        let mut text = "é".repeat(2000);
        truncate(&mut text, MAX_STATUS_MESSAGE);
        assert!(text.len() <= MAX_STATUS_MESSAGE + '…'.len_utf8());
        assert!(text.ends_with('…'));
        let mut short = "ok".to_string();
        truncate(&mut short, MAX_STATUS_MESSAGE);
        assert_eq!(short, "ok");
    }

    #[test]
    fn throttle_logs_once_per_period_and_counts_the_rest() {
        let mut throttle = Throttle::default();
        let start = Instant::now();
        assert_eq!(throttle.allow(start), Some(0));
        assert_eq!(throttle.allow(start + Duration::from_secs(1)), None);
        assert_eq!(throttle.allow(start + Duration::from_secs(9)), None);
        assert_eq!(throttle.allow(start + Throttle::PERIOD), Some(2));
        assert_eq!(throttle.allow(start + Throttle::PERIOD), None);
    }
}
