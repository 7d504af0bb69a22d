//! The web UI on the coordinator's HTTP side: the page and its script and style, embedded
//! in the binary (`coordinator/ui/`: no framework, no CDN, no build step), under `/ui/`;
//! and the JSON it reads under `/api/v1/`, with the same tokens as the API, sent as
//! `Authorization: Bearer` by the page (which keeps the token for the tab only):
//!
//! - `GET /api/v1/overview` (read): nodes with capacity, allocation and their replicas,
//!   workloads with counts and revision weights, services;
//! - `GET /api/v1/events` (read): the event log from now on as server-sent events
//!   (`text/event-stream`), which the page follows to redraw without a reload;
//! - `GET /api/v1/allocations/{id}` (read): one replica's record and status, and its
//!   recent output (the last 50 lines, read by its agent);
//! - `POST /api/v1/workloads/{name}/scale` `{"replicas": N}`, `POST
//!   /api/v1/workloads/{name}/weights` `{"weights": {"1": 90, "2": 10}}` and `POST
//!   /api/v1/nodes/{node}/{cordon|uncordon|drain}` (operator): through the same door as
//!   the `drover` commands, and recorded with the token's name.
//!
//! Over HTTP the token alone proves the caller, as on `/metrics`: a browser has no client
//! certificate to bind it to.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{Command, Outcome};
use crate::coordinator::Coordinator;
use crate::error::Error;
use crate::security::Credentials;
use crate::state::ClusterState;

const INDEX: &str = include_str!("../ui/index.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/style.css");

/// The page, its assets and the JSON it reads.
pub fn router(coordinator: Arc<Coordinator>) -> Router {
    Router::new()
        .route("/", get(|| async { axum::response::Redirect::to("/ui/") }))
        .route(
            "/ui",
            get(|| async { axum::response::Redirect::to("/ui/") }),
        )
        .route(
            "/ui/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/events", get(events))
        .route("/api/v1/allocations/{id}", get(allocation))
        .route("/api/v1/workloads/{name}/scale", post(scale))
        .route("/api/v1/workloads/{name}/weights", post(weights))
        .route("/api/v1/nodes/{node}/{action}", post(node_action))
        .with_state(coordinator)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The page runs only its own script and style.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

fn credentials(headers: &HeaderMap) -> Credentials {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    Credentials::http(bearer)
}

/// An error as JSON with the status its kind calls for.
fn refusal(error: &Error) -> Response {
    let status = match error {
        Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        Error::Refused(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(json!({ "error": error.to_string() }))).into_response()
}

async fn overview(State(coordinator): State<Arc<Coordinator>>, headers: HeaderMap) -> Response {
    match coordinator
        .read(&credentials(&headers), |state, _| Ok(overview_of(state)))
        .await
    {
        Ok(view) => Json(view).into_response(),
        Err(e) => refusal(&e),
    }
}

/// What the overview page shows, from the state.
pub fn overview_of(state: &ClusterState) -> Value {
    let nodes: Vec<Value> = crate::views::nodes(state)
        .into_iter()
        .map(|n| {
            let info = n.info.unwrap_or_default();
            let capacity = info.capacity.unwrap_or_default();
            let allocated = n.allocated.unwrap_or_default();
            let replicas: Vec<Value> = state
                .stored
                .allocations
                .values()
                .filter(|a| a.node == info.id && !state.alloc_state(&a.id).is_terminal())
                .map(|a| {
                    json!({
                        "id": a.id,
                        "workload": a.service,
                        "revision": a.revision,
                        "state": state.alloc_state(&a.id).as_str(),
                    })
                })
                .collect();
            json!({
                "id": info.id,
                "address": info.address,
                "health": health_name(n.health),
                "cordoned": n.cordoned,
                "draining": n.draining,
                "reason": n.reason,
                "capacity": {"cpu_millis": capacity.cpu_millis, "memory_bytes": capacity.memory_bytes},
                "allocated": {"cpu_millis": allocated.cpu_millis, "memory_bytes": allocated.memory_bytes},
                "replicas": replicas,
            })
        })
        .collect();
    let workloads: Vec<Value> = state
        .stored
        .workloads
        .keys()
        .filter_map(|name| crate::views::service_summary(state, name))
        .map(|s| {
            let rollout = crate::views::rollout_status(state, &s.name, crate::coordinator::now_unix_ms())
                .filter(|r| r.phase == drover_proto::pb::RolloutPhase::Progressing as i32)
                .map(|r| json!({
                    "revision": r.revision,
                    "from_revision": r.from_revision,
                    "updated": r.updated,
                    "ready": r.ready,
                    "desired": r.desired,
                    "step": r.step,
                    "steps": r.steps,
                    "paused": r.paused,
                    "message": r.message,
                }));
            json!({
                "rollout": rollout,
                "name": s.name,
                "image": s.image,
                "revision": s.revision,
                "desired": s.desired_replicas,
                "running": s.running,
                "healthy": s.healthy,
                "weights": s.revision_weights.iter().map(|(r, w)| json!({"revision": r, "weight": w})).collect::<Vec<_>>(),
                "placement_failure": s.placement_failure,
                "services": s.services,
            })
        })
        .collect();
    let services: Vec<Value> = crate::views::services(state)
        .into_iter()
        .map(|v| {
            let service = v.service.unwrap_or_default();
            json!({
                "name": service.name,
                "cluster_ip": service.cluster_ip,
                "workloads": v.workloads,
                "endpoints": v.endpoints,
                "healthy": v.healthy,
            })
        })
        .collect();
    json!({ "nodes": nodes, "workloads": workloads, "services": services })
}

fn health_name(health: i32) -> &'static str {
    match drover_proto::pb::NodeHealth::try_from(health) {
        Ok(drover_proto::pb::NodeHealth::Ready) => "ready",
        Ok(drover_proto::pb::NodeHealth::Disconnected) => "disconnected",
        Ok(drover_proto::pb::NodeHealth::Down) => "down",
        _ => "unknown",
    }
}

async fn events(State(coordinator): State<Arc<Coordinator>>, headers: HeaderMap) -> Response {
    if let Err(e) = coordinator
        .read(&credentials(&headers), |_, _| Ok(()))
        .await
    {
        return refusal(&e);
    }
    let mut live = coordinator.subscribe();
    let shutdown = coordinator.shutdown_token().clone();
    let stream = async_stream(move |tx| async move {
        // A first comment, so the page knows it is following.
        if tx.send(": following\n\n".to_owned()).await.is_err() {
            return;
        }
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                event = live.recv() => event,
            };
            let text = match event {
                Ok(event) => {
                    let data = json!({
                        "seq": event.seq,
                        "kind": event.kind,
                        "subject": event.subject,
                        "message": event.message,
                    });
                    format!("id: {}\nevent: cluster\ndata: {data}\n\n", event.seq)
                }
                // Missed some: the page reads the overview again anyway.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    "event: lagged\ndata: {}\n\n".to_owned()
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(text).await.is_err() {
                return;
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// The texts `producer` sends, as a body stream.
fn async_stream<F, Fut>(
    producer: F,
) -> impl tokio_stream::Stream<Item = Result<String, std::convert::Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<String>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(producer(tx));
    tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}

/// A scale request's body.
#[derive(Debug, Deserialize)]
struct ScaleBody {
    replicas: u32,
}

async fn scale(
    State(coordinator): State<Arc<Coordinator>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Json<ScaleBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(e) => {
            let error = Error::InvalidArgument(format!(
                "scale {name}: the body must be {{\"replicas\": N}}: {e}"
            ));
            return refusal(&error);
        }
    };
    let command = Command::Scale {
        name,
        replicas: body.replicas,
    };
    act(&coordinator, &headers, command).await
}

/// A weights request's body: weight per revision.
#[derive(Debug, Deserialize)]
struct WeightsBody {
    weights: std::collections::BTreeMap<u64, u32>,
}

/// Runs `command` for the request's token and answers the overview after it.
async fn act(coordinator: &Coordinator, headers: &HeaderMap, command: Command) -> Response {
    let done = coordinator
        .execute(
            &credentials(headers),
            command,
            |state, outcome| match outcome {
                Outcome::Service(_) | Outcome::Node(_) => Ok(overview_of(state)),
                other => Err(Error::Internal(format!("the action answered {other:?}"))),
            },
        )
        .await;
    match done {
        Ok(view) => Json(view).into_response(),
        Err(e) => refusal(&e),
    }
}

async fn weights(
    State(coordinator): State<Arc<Coordinator>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Json<WeightsBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match body {
        Ok(Json(body)) => {
            let command = Command::SetWeights {
                name,
                weights: body.weights,
            };
            act(&coordinator, &headers, command).await
        }
        Err(e) => refusal(&Error::InvalidArgument(format!(
            "weights of {name}: the body must be {{\"weights\": {{\"REVISION\": WEIGHT}}}}: {e}"
        ))),
    }
}

async fn node_action(
    State(coordinator): State<Arc<Coordinator>>,
    Path((node, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    use crate::operations::NodeAction;
    let action = match action.as_str() {
        "cordon" => NodeAction::Cordon,
        "uncordon" => NodeAction::Uncordon,
        "drain" => NodeAction::Drain,
        other => {
            return refusal(&Error::InvalidArgument(format!(
                "node {node}: no action {other:?} (cordon, uncordon or drain)"
            )));
        }
    };
    act(&coordinator, &headers, Command::Node { node, action }).await
}

/// Lines of recent output an allocation's page shows.
const RECENT_LINES: u32 = 50;
/// How long the page waits for an agent's lines.
const LOG_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn allocation(
    State(coordinator): State<Arc<Coordinator>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let credentials = credentials(&headers);
    let found = coordinator
        .read(&credentials, |state, _| {
            let allocation = state
                .stored
                .allocations
                .get(&id)
                .ok_or_else(|| Error::NotFound {
                    kind: "allocation",
                    name: id.clone(),
                })?;
            let status = state.status.get(&id).cloned().unwrap_or_default();
            Ok(json!({
                "id": allocation.id,
                "workload": allocation.service,
                "revision": allocation.revision,
                "node": allocation.node,
                "desired": format!("{:?}", allocation.desired).to_lowercase(),
                "state": status.state.as_str(),
                "message": status.message,
                "container_id": status.container_id,
                "restarts": status.restarts,
                "cpu_millis": allocation.resources.cpu_millis,
                "memory_bytes": allocation.resources.memory_bytes,
            }))
        })
        .await;
    let mut view = match found {
        Ok(view) => view,
        Err(e) => return refusal(&e),
    };
    let request = drover_proto::pb::LogsRequest {
        name: id,
        follow: false,
        since_seconds: 0,
        tail: RECENT_LINES,
    };
    view["log"] = match recent_output(&coordinator, &credentials, &request).await {
        Ok(lines) => json!(lines),
        Err(why) => json!([format!("[drover: cannot read the output: {why}]")]),
    };
    Json(view).into_response()
}

/// The output `request` asks for (not following), as lines of text.
async fn recent_output(
    coordinator: &Coordinator,
    credentials: &Credentials,
    request: &drover_proto::pb::LogsRequest,
) -> Result<Vec<String>, String> {
    let opened = coordinator
        .open_logs(credentials, request)
        .await
        .map_err(|e| e.to_string())?;
    let mut lines = Vec::new();
    for replica in opened {
        let (id, mut chunks) = replica.outcome?;
        let deadline = tokio::time::Instant::now() + LOG_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, chunks.recv()).await {
                Ok(Some(chunk)) => {
                    lines.extend(chunk.lines.into_iter().map(|l| l.text));
                    if !chunk.error.is_empty() {
                        coordinator.logs.close(id);
                        return Err(chunk.error);
                    }
                    if chunk.end {
                        break;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    coordinator.cancel_logs(id).await;
                    lines.push("[drover: the agent sent no more within 5 s]".to_owned());
                    break;
                }
            }
        }
        coordinator.logs.close(id);
    }
    Ok(lines)
}
