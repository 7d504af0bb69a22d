//! The operator's `Control` gRPC service.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::manifest::Manifest;
use drover_proto::model::{Service, WorkloadSpec};
use drover_proto::pb;
use drover_proto::pb::control_server::Control;
use drover_security::Role;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::{Command, Outcome};
use crate::coordinator::{Coordinator, now_unix_ms};
use crate::error::Error;
use crate::operations::{ApplyChange, NodeAction, ObjectKind, RolloutAction};
use crate::security::{self, CaAction, Credentials, KeyAction};
use crate::store::credentials::TokenRecord;
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

    async fn node_command(
        &self,
        request: Request<pb::NodeRequest>,
        action: NodeAction,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let credentials = Credentials::of(&request);
        let node = request.into_inner().node;
        let status = self
            .coordinator
            .execute(
                &credentials,
                Command::Node { node, action },
                |state, outcome| {
                    let Outcome::Node(node) = outcome else {
                        return Err(unexpected(outcome));
                    };
                    let allocated = state
                        .allocated_by_node()
                        .get(node.as_str())
                        .copied()
                        .unwrap_or_default();
                    Ok(views::node_status(state, node, allocated))
                },
            )
            .await?;
        Ok(Response::new(status))
    }

    /// Runs a command that changes one service and answers with its summary.
    async fn service_command(
        &self,
        credentials: Credentials,
        command: Command,
    ) -> Result<Response<pb::ServiceSummary>, Status> {
        let summary = self
            .coordinator
            .execute(&credentials, command, |state, outcome| {
                let Outcome::Service(name) = outcome else {
                    return Err(unexpected(outcome));
                };
                // A service of several workloads has no workload summary: its name alone.
                Ok(
                    views::service_summary(state, name).unwrap_or_else(|| pb::ServiceSummary {
                        name: name.clone(),
                        ..Default::default()
                    }),
                )
            })
            .await?;
        Ok(Response::new(summary))
    }
}

fn unexpected(outcome: &Outcome) -> Error {
    Error::Internal(format!("unexpected outcome {outcome:?}"))
}

fn not_found(name: &str) -> Error {
    Error::NotFound {
        kind: "service",
        name: name.to_string(),
    }
}

fn token_info(record: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        id: record.id.clone(),
        name: record.name.clone(),
        role: record.role.clone(),
        created_unix_ms: record.created_unix_ms,
        expires_unix_ms: record.expires_unix_ms,
        created_by: record.created_by.clone(),
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
        let credentials = Credentials::of(&request);
        let request = request.into_inner();
        let workloads = request
            .workloads
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                WorkloadSpec::try_from(s)
                    .map_err(|e| Status::invalid_argument(format!("workloads[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let services = request
            .services
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                Service::try_from(s)
                    .map_err(|e| Status::invalid_argument(format!("services[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let autoscalers = request
            .autoscalers
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                drover_proto::model::Autoscaler::try_from(a)
                    .map_err(|e| Status::invalid_argument(format!("autoscalers[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let command = Command::Apply {
            manifest: Manifest {
                workloads,
                services,
                autoscalers,
            },
            cause: request.cause,
            dry_run: request.dry_run,
        };
        let outcomes = self
            .coordinator
            .execute(&credentials, command, |_, outcome| match outcome {
                Outcome::Applied(outcomes) => Ok(outcomes.clone()),
                other => Err(unexpected(other)),
            })
            .await?;
        let results = outcomes
            .into_iter()
            .map(|o| pb::ApplyResult {
                kind: o.kind.as_str().to_string(),
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
        let credentials = Credentials::of(&request);
        let request = request.into_inner();
        let kind = match request.kind.as_str() {
            "" => None,
            "workload" => Some(ObjectKind::Workload),
            "service" => Some(ObjectKind::Service),
            "autoscaler" => Some(ObjectKind::Autoscaler),
            other => {
                return Err(Status::invalid_argument(format!(
                    "kind {:?} is not \"workload\", \"service\" or \"autoscaler\"",
                    drover_proto::manifest::excerpt(other)
                )));
            }
        };
        let command = Command::Delete {
            name: request.name,
            kind,
        };
        let deleted = self
            .coordinator
            .execute(&credentials, command, |_, outcome| match outcome {
                Outcome::Deleted(deleted) => Ok(deleted.clone()),
                other => Err(unexpected(other)),
            })
            .await?;
        Ok(Response::new(pb::DeleteServiceResponse {
            stopped_allocations: deleted.stopped,
            workload_deleted: deleted.workload,
            service_deleted: deleted.service,
            autoscaler_deleted: deleted.autoscalers.join(", "),
        }))
    }

    async fn get_service(
        &self,
        request: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let credentials = Credentials::of(&request);
        let name = request.into_inner().name;
        let status = self
            .coordinator
            .read(&credentials, |state, caller| {
                views::service_status(state, &name, caller).ok_or_else(|| not_found(&name))
            })
            .await?;
        Ok(Response::new(status))
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let credentials = Credentials::of(&request);
        let services = self
            .coordinator
            .read(&credentials, |state, _| {
                Ok(state
                    .stored
                    .workloads
                    .keys()
                    .filter_map(|name| views::service_summary(state, name))
                    .collect())
            })
            .await?;
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let credentials = Credentials::of(&request);
        let nodes = self
            .coordinator
            .read(&credentials, |state, _| Ok(views::nodes(state)))
            .await?;
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn top(
        &self,
        request: Request<pb::TopRequest>,
    ) -> Result<Response<pb::TopResponse>, Status> {
        let credentials = Credentials::of(&request);
        let name = request.into_inner().name;
        let top = self
            .coordinator
            .read(&credentials, |state, _| {
                views::top(state, &name, now_unix_ms()).ok_or_else(|| not_found(&name))
            })
            .await?;
        Ok(Response::new(top))
    }

    async fn cordon(
        &self,
        request: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        self.node_command(request, NodeAction::Cordon).await
    }

    async fn uncordon(
        &self,
        request: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        self.node_command(request, NodeAction::Uncordon).await
    }

    async fn drain(
        &self,
        request: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        self.node_command(request, NodeAction::Drain).await
    }

    async fn remove_node(
        &self,
        request: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let credentials = Credentials::of(&request);
        let node = request.into_inner().node;
        let allocations = self
            .coordinator
            .execute(
                &credentials,
                Command::RemoveNode(node.clone()),
                |_, outcome| match outcome {
                    Outcome::NodeRemoved(n) => Ok(*n),
                    other => Err(unexpected(other)),
                },
            )
            .await?;
        Ok(Response::new(pb::RemoveNodeResponse { node, allocations }))
    }

    async fn scale(
        &self,
        request: Request<pb::ScaleRequest>,
    ) -> Result<Response<pb::ServiceSummary>, Status> {
        let credentials = Credentials::of(&request);
        let request = request.into_inner();
        let command = Command::Scale {
            name: request.name,
            replicas: request.replicas,
        };
        self.service_command(credentials, command).await
    }

    async fn set_weights(
        &self,
        request: Request<pb::SetWeightsRequest>,
    ) -> Result<Response<pb::ServiceSummary>, Status> {
        let credentials = Credentials::of(&request);
        let request = request.into_inner();
        let command = match (
            request.revision_weights.is_empty(),
            request.workload_weights.is_empty(),
        ) {
            (false, false) => {
                return Err(Status::invalid_argument(
                    "give revision weights (of a workload) or workload weights (of a service), not both",
                ));
            }
            (true, false) => Command::SetWorkloadWeights {
                name: request.name,
                weights: request.workload_weights.into_iter().collect(),
            },
            _ => Command::SetWeights {
                name: request.name,
                weights: request.revision_weights.into_iter().collect(),
            },
        };
        self.service_command(credentials, command).await
    }

    async fn list_service_objects(
        &self,
        request: Request<pb::ListServiceObjectsRequest>,
    ) -> Result<Response<pb::ListServiceObjectsResponse>, Status> {
        let credentials = Credentials::of(&request);
        let services = self
            .coordinator
            .read(&credentials, |state, _| Ok(views::services(state)))
            .await?;
        Ok(Response::new(pb::ListServiceObjectsResponse { services }))
    }

    async fn get_rollout(
        &self,
        request: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let credentials = Credentials::of(&request);
        let name = request.into_inner().name;
        let status = self
            .coordinator
            .read(&credentials, |state, _| {
                views::rollout_status(state, &name, now_unix_ms()).ok_or_else(|| not_found(&name))
            })
            .await?;
        Ok(Response::new(status))
    }

    async fn rollout_action(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let credentials = Credentials::of(&request);
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
        let command = Command::Rollout {
            name: request.name,
            action,
        };
        let status = self
            .coordinator
            .execute(&credentials, command, |state, outcome| {
                let Outcome::Service(name) = outcome else {
                    return Err(unexpected(outcome));
                };
                views::rollout_status(state, name, now_unix_ms()).ok_or_else(|| not_found(name))
            })
            .await?;
        Ok(Response::new(status))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let credentials = Credentials::of(&request);
        let request = request.into_inner();
        let role: Role = request.role.parse().map_err(|e: String| {
            Status::invalid_argument(format!("CreateTokenRequest.role: {e}"))
        })?;
        let command = Command::CreateToken {
            name: request.name,
            role,
            ttl: (request.ttl_seconds > 0).then(|| Duration::from_secs(request.ttl_seconds)),
        };
        let (token, info) = self
            .coordinator
            .execute(&credentials, command, |_, outcome| match outcome {
                Outcome::TokenCreated(token, record) => Ok((token.clone(), token_info(record))),
                other => Err(unexpected(other)),
            })
            .await?;
        Ok(Response::new(pb::CreateTokenResponse {
            token,
            info: Some(info),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let credentials = Credentials::of(&request);
        let tokens = self
            .coordinator
            .read(&credentials, |state, caller| {
                caller.require(Role::Admin, "listing tokens")?;
                Ok(security::tokens(state).map(token_info).collect())
            })
            .await?;
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        let credentials = Credentials::of(&request);
        let token = request.into_inner().token;
        let info = self
            .coordinator
            .execute(
                &credentials,
                Command::RevokeToken(token),
                |_, outcome| match outcome {
                    Outcome::TokenRevoked(record) => Ok(token_info(record)),
                    other => Err(unexpected(other)),
                },
            )
            .await?;
        Ok(Response::new(info))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        let credentials = Credentials::of(&request);
        let info = self
            .coordinator
            .read(&credentials, |state, caller| {
                Ok(security::tokens(state)
                    .find(|t| t.id == caller.token_id)
                    .map(token_info)
                    .unwrap_or_else(|| pb::TokenInfo {
                        name: caller.name.clone(),
                        role: caller.role.to_string(),
                        ..pb::TokenInfo::default()
                    }))
            })
            .await?;
        Ok(Response::new(info))
    }

    async fn certificate_authority(
        &self,
        request: Request<pb::CaRequest>,
    ) -> Result<Response<pb::CaStatus>, Status> {
        let credentials = Credentials::of(&request);
        let request = request.into_inner();
        let action = match pb::ca_request::Action::try_from(request.action) {
            Ok(pb::ca_request::Action::Status) => CaAction::Status,
            Ok(pb::ca_request::Action::Rotate) => CaAction::Rotate,
            Ok(pb::ca_request::Action::Finish) => CaAction::Finish {
                force: request.force,
            },
            Ok(pb::ca_request::Action::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "CaRequest.action: unknown action {}",
                    request.action
                )));
            }
        };
        let status = self
            .coordinator
            .execute(
                &credentials,
                Command::Ca(action),
                |_, outcome| match outcome {
                    Outcome::Ca(status) => Ok(status.clone()),
                    other => Err(unexpected(other)),
                },
            )
            .await?;
        Ok(Response::new(status))
    }

    async fn gossip_key(
        &self,
        request: Request<pb::GossipKeyRequest>,
    ) -> Result<Response<pb::GossipKeyring>, Status> {
        let credentials = Credentials::of(&request);
        let request = request.into_inner();
        let action = match pb::gossip_key_request::Action::try_from(request.action) {
            Ok(pb::gossip_key_request::Action::List) => KeyAction::List,
            Ok(pb::gossip_key_request::Action::Install) => {
                KeyAction::Install(Some(request.key).filter(|k| !k.is_empty()))
            }
            Ok(pb::gossip_key_request::Action::Use) => KeyAction::Use(request.key),
            Ok(pb::gossip_key_request::Action::Remove) => KeyAction::Remove(request.key),
            Ok(pb::gossip_key_request::Action::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "GossipKeyRequest.action: unknown action {}",
                    request.action
                )));
            }
        };
        let key_ids = self
            .coordinator
            .execute(
                &credentials,
                Command::GossipKey(action),
                |_, outcome| match outcome {
                    Outcome::Keyring(ids) => Ok(ids.clone()),
                    other => Err(unexpected(other)),
                },
            )
            .await?;
        Ok(Response::new(pb::GossipKeyring { key_ids }))
    }

    type LogsStream = Pin<Box<dyn Stream<Item = Result<pb::LogLine, Status>> + Send>>;

    async fn logs(
        &self,
        request: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let credentials = Credentials::of(&request);
        let request = request.into_inner();
        let opened = self.coordinator.open_logs(&credentials, &request).await?;
        if opened.is_empty() {
            return Err(Status::failed_precondition(format!(
                "{:?} has no replica that runs",
                request.name
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let mut streams = tokio_stream::StreamMap::new();
        let mut allocations = std::collections::HashMap::new();
        let mut notices = Vec::new();
        for replica in opened {
            match replica.outcome {
                Ok((id, chunks)) => {
                    allocations.insert(id, replica.allocation);
                    streams.insert(id, tokio_stream::wrappers::ReceiverStream::new(chunks));
                }
                Err(why) => notices.push(notice(&replica.allocation, &why)),
            }
        }
        let coordinator = self.coordinator.clone();
        let shutdown = coordinator.shutdown_token().clone();
        tokio::spawn(async move {
            use tokio_stream::StreamExt as _;
            let client = tx.clone();
            let forward = async {
                for line in notices {
                    tx.send(Ok(line)).await.ok()?;
                }
                while let Some((id, chunk)) = streams.next().await {
                    for line in chunk.lines {
                        tx.send(Ok(line)).await.ok()?;
                    }
                    if !chunk.error.is_empty() {
                        let alloc = allocations.get(&id).map_or("", String::as_str);
                        tx.send(Ok(notice(alloc, &chunk.error))).await.ok()?;
                    }
                    if chunk.end {
                        streams.remove(&id);
                        coordinator.logs.close(id);
                    }
                }
                Some(())
            };
            tokio::select! {
                _ = forward => {}
                () = client.closed() => {}
                () = shutdown.cancelled() => {}
            }
            // The client is gone, or everything ended: stop what still runs.
            for id in streams.keys().copied().collect::<Vec<_>>() {
                coordinator.cancel_logs(id).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let credentials = Credentials::of(&request);
        self.coordinator.read(&credentials, |_, _| Ok(())).await?;
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
/// A line of Drover's own about the output of `allocation` (no timestamp, on stderr).
fn notice(allocation: &str, what: &str) -> pb::LogLine {
    pb::LogLine {
        allocation_id: allocation.to_owned(),
        timestamp: String::new(),
        stderr: true,
        text: format!("[drover: cannot read the output of {allocation}: {what}]"),
    }
}

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
