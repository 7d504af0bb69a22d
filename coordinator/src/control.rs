//! The operator's `Control` gRPC service.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use drover_proto::model::ServiceSpec;
use drover_proto::pb;
use drover_proto::pb::control_server::Control;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::changes::ChangeSet;
use crate::coordinator::{Coordinator, now_unix_ms};
use crate::error::Error;
use crate::operations::{self, ApplyChange, NodeAction, RolloutAction};
use crate::views;

/// Implementation of `drover.v1.Control`.
#[derive(Debug, Clone)]
pub struct ControlService {
    coordinator: Arc<Coordinator>,
}

impl ControlService {
    /// The service over a running coordinator.
    pub fn new(coordinator: Arc<Coordinator>) -> ControlService {
        ControlService { coordinator }
    }

    async fn node_action(&self, node: String, action: NodeAction) -> Result<pb::NodeStatus, Error> {
        let mut inner = self.coordinator.lock().await;
        let mut changes = ChangeSet::new(&inner.state, now_unix_ms());
        operations::node_action(&inner.state, &node, action, &mut changes)?;
        self.coordinator.commit(&mut inner, changes).await?;
        let allocated = inner
            .state
            .allocated_by_node()
            .get(node.as_str())
            .copied()
            .unwrap_or_default();
        let status = views::node_status(&inner.state, &node, allocated);
        drop(inner);
        info!(node = %node, ?action, "node flags changed");
        self.coordinator.wake();
        Ok(status)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

fn event_to_pb(e: crate::store::EventRecord) -> pb::Event {
    pb::Event {
        seq: e.seq,
        unix_ms: e.unix_ms,
        kind: e.kind,
        subject: e.subject,
        message: e.message,
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let request = request.into_inner();
        let specs = request
            .services
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                ServiceSpec::try_from(s)
                    .map_err(|e| Status::invalid_argument(format!("services[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut inner = self.coordinator.lock().await;
        let mut changes = ChangeSet::new(&inner.state, now_unix_ms());
        let outcomes =
            operations::apply_services(&inner.state, &specs, &request.cause, &mut changes)?;
        if !request.dry_run {
            self.coordinator.commit(&mut inner, changes).await?;
        }
        drop(inner);
        let changed = outcomes
            .iter()
            .filter(|o| o.change != ApplyChange::Unchanged)
            .count();
        info!(
            services = outcomes.len(),
            changed,
            dry_run = request.dry_run,
            "apply"
        );
        if !request.dry_run && changed > 0 {
            self.coordinator.wake();
        }
        let results = outcomes
            .into_iter()
            .map(|o| pb::ApplyResult {
                name: o.name,
                revision: o.revision,
                change: match o.change {
                    ApplyChange::Created => pb::ApplyChange::Created,
                    ApplyChange::Updated => pb::ApplyChange::Updated,
                    ApplyChange::Unchanged => pb::ApplyChange::Unchanged,
                }
                .into(),
            })
            .collect();
        Ok(Response::new(pb::ApplyResponse { results }))
    }

    async fn delete_service(
        &self,
        request: Request<pb::DeleteServiceRequest>,
    ) -> Result<Response<pb::DeleteServiceResponse>, Status> {
        let name = request.into_inner().name;
        let mut inner = self.coordinator.lock().await;
        let mut changes = ChangeSet::new(&inner.state, now_unix_ms());
        let stopped = operations::delete_service(&inner.state, &name, &mut changes)?;
        self.coordinator.commit(&mut inner, changes).await?;
        drop(inner);
        info!(service = %name, stopped, "service deleted");
        self.coordinator.wake();
        Ok(Response::new(pb::DeleteServiceResponse {
            stopped_allocations: stopped,
        }))
    }

    async fn get_service(
        &self,
        request: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let name = request.into_inner().name;
        let inner = self.coordinator.lock().await;
        let status = views::service_status(&inner.state, &name).ok_or(Error::NotFound {
            kind: "service",
            name,
        })?;
        Ok(Response::new(status))
    }

    async fn list_services(
        &self,
        _request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let inner = self.coordinator.lock().await;
        let services = inner
            .state
            .stored
            .services
            .keys()
            .filter_map(|name| views::service_summary(&inner.state, name))
            .collect();
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn list_nodes(
        &self,
        _request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let inner = self.coordinator.lock().await;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: views::nodes(&inner.state),
        }))
    }

    async fn cordon(
        &self,
        request: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let node = request.into_inner().node;
        Ok(Response::new(
            self.node_action(node, NodeAction::Cordon).await?,
        ))
    }

    async fn uncordon(
        &self,
        request: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let node = request.into_inner().node;
        Ok(Response::new(
            self.node_action(node, NodeAction::Uncordon).await?,
        ))
    }

    async fn drain(
        &self,
        request: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let node = request.into_inner().node;
        Ok(Response::new(
            self.node_action(node, NodeAction::Drain).await?,
        ))
    }

    async fn remove_node(
        &self,
        request: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let node = request.into_inner().node;
        let mut inner = self.coordinator.lock().await;
        let mut changes = ChangeSet::new(&inner.state, now_unix_ms());
        let allocations = operations::remove_node(&inner.state, &node, &mut changes)?;
        self.coordinator.commit(&mut inner, changes).await?;
        inner.state.nodes.remove(&node);
        drop(inner);
        info!(node = %node, allocations, "node removed");
        self.coordinator.wake();
        Ok(Response::new(pb::RemoveNodeResponse { node, allocations }))
    }

    async fn scale(
        &self,
        request: Request<pb::ScaleRequest>,
    ) -> Result<Response<pb::ServiceSummary>, Status> {
        let request = request.into_inner();
        let mut inner = self.coordinator.lock().await;
        let mut changes = ChangeSet::new(&inner.state, now_unix_ms());
        operations::scale(&inner.state, &request.name, request.replicas, &mut changes)?;
        self.coordinator.commit(&mut inner, changes).await?;
        let summary =
            views::service_summary(&inner.state, &request.name).ok_or(Error::NotFound {
                kind: "service",
                name: request.name.clone(),
            })?;
        drop(inner);
        info!(service = %request.name, replicas = request.replicas, "service scaled");
        self.coordinator.wake();
        Ok(Response::new(summary))
    }

    async fn set_weights(
        &self,
        request: Request<pb::SetWeightsRequest>,
    ) -> Result<Response<pb::ServiceSummary>, Status> {
        let request = request.into_inner();
        let weights: BTreeMap<u64, u32> = request.revision_weights.into_iter().collect();
        let mut inner = self.coordinator.lock().await;
        let mut changes = ChangeSet::new(&inner.state, now_unix_ms());
        operations::set_weights(&inner.state, &request.name, weights, &mut changes)?;
        self.coordinator.commit(&mut inner, changes).await?;
        let summary =
            views::service_summary(&inner.state, &request.name).ok_or(Error::NotFound {
                kind: "service",
                name: request.name.clone(),
            })?;
        drop(inner);
        info!(service = %request.name, "traffic weights set");
        self.coordinator.wake();
        Ok(Response::new(summary))
    }

    async fn get_rollout(
        &self,
        request: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let name = request.into_inner().name;
        let inner = self.coordinator.lock().await;
        let status =
            views::rollout_status(&inner.state, &name, now_unix_ms()).ok_or(Error::NotFound {
                kind: "service",
                name,
            })?;
        Ok(Response::new(status))
    }

    async fn rollout_action(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let request = request.into_inner();
        let action = match pb::RolloutActionKind::try_from(request.action) {
            Ok(pb::RolloutActionKind::Pause) => RolloutAction::Pause,
            Ok(pb::RolloutActionKind::Resume) => RolloutAction::Resume,
            Ok(pb::RolloutActionKind::Promote) => RolloutAction::Promote,
            Ok(pb::RolloutActionKind::Abort) => RolloutAction::Abort,
            Ok(pb::RolloutActionKind::Restart) => RolloutAction::Restart,
            Ok(pb::RolloutActionKind::Undo) => {
                RolloutAction::Undo((request.to_revision > 0).then_some(request.to_revision))
            }
            Ok(pb::RolloutActionKind::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "RolloutActionRequest.action: unknown action {}",
                    request.action
                )));
            }
        };
        let mut inner = self.coordinator.lock().await;
        let now = now_unix_ms();
        let mut changes = ChangeSet::new(&inner.state, now);
        operations::rollout_action(&inner.state, &request.name, action, &mut changes)?;
        self.coordinator.commit(&mut inner, changes).await?;
        let status =
            views::rollout_status(&inner.state, &request.name, now).ok_or(Error::NotFound {
                kind: "service",
                name: request.name.clone(),
            })?;
        drop(inner);
        info!(service = %request.name, action = ?action, "rollout action");
        self.coordinator.wake();
        Ok(Response::new(status))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let request = request.into_inner();
        // Subscribe before reading the backlog so nothing falls between the two.
        let mut live = self.coordinator.subscribe();
        let store = self.coordinator.store();
        let follow = request.follow;
        let shutdown = self.coordinator.shutdown_token().clone();
        let mut next = request.since;
        let stream = async_stream_events(move |tx| async move {
            loop {
                let batch = {
                    let store = store.clone();
                    let since = next;
                    tokio::task::spawn_blocking(move || store.events(since, 1000))
                        .await
                        .map_err(|e| Status::internal(format!("event reader: {e}")))?
                        .map_err(|e| Status::unavailable(e.to_string()))?
                };
                let done = batch.len() < 1000;
                for event in batch {
                    next = event.seq + 1;
                    if tx.send(Ok(event_to_pb(event))).await.is_err() {
                        return Ok(());
                    }
                }
                if done {
                    break;
                }
            }
            if !follow {
                return Ok(());
            }
            loop {
                let received = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    received = live.recv() => received,
                };
                match received {
                    Ok(event) if event.seq < next => {}
                    Ok(event) => {
                        next = event.seq + 1;
                        if tx.send(Ok(event_to_pb(event))).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        // Catch up from the store, then continue live.
                        let store = store.clone();
                        let since = next;
                        let batch =
                            tokio::task::spawn_blocking(move || store.events(since, 10_000))
                                .await
                                .map_err(|e| Status::internal(format!("event reader: {e}")))?
                                .map_err(|e| Status::unavailable(e.to_string()))?;
                        for event in batch {
                            next = event.seq + 1;
                            if tx.send(Ok(event_to_pb(event))).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Err(RecvError::Closed) => return Ok(()),
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// Runs `producer` in a task that feeds a channel, and returns the channel as a stream.
/// An error the producer returns is sent as the stream's last item.
fn async_stream_events<F, Fut>(producer: F) -> EventStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::Event, Status>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Status>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let fut = producer(tx.clone());
    tokio::spawn(async move {
        if let Err(status) = fut.await {
            let _ = tx.send(Err(status)).await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
