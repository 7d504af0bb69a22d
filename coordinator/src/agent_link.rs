//! The agents' `AgentLink` gRPC service: one stream per agent, opened by the agent.

use std::pin::Pin;
use std::sync::Arc;

use drover_proto::model::{AllocStatus, NodeInfo};
use drover_proto::pb;
use drover_proto::pb::agent_link_server::AgentLink;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

use crate::coordinator::Coordinator;

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
            let status = AllocStatus::try_from(status).map_err(|e| {
                Status::invalid_argument(format!("allocations[{i}] ({}): {e}", r.id))
            })?;
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
        let generation = info.generation;

        let (tx, rx) = tokio::sync::mpsc::channel(64);
        self.coordinator
            .agent_connected(info, allocations, tx)
            .await?;

        let coordinator = self.coordinator.clone();
        tokio::spawn(async move {
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
                            if let Err(e) = coordinator
                                .agent_status(&node, updates, usage, traffic)
                                .await
                            {
                                warn!(node = %node, error = %e, "cannot record status update");
                            }
                        }
                        Some(pb::agent_message::Body::Hello(_)) => {
                            warn!(node = %node, "second hello on one session ignored");
                        }
                        None => {}
                    },
                }
            };
            coordinator
                .agent_disconnected(&node, generation, &cause)
                .await;
        });

        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
