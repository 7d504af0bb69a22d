//! Starting and stopping a coordinator: the injectable `run` that the binary, `drover dev`
//! and tests share.

use std::sync::Arc;

use drover_daemon::Tasks;
use drover_proto::pb::agent_link_server::AgentLinkServer;
use drover_proto::pb::control_server::ControlServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::agent_link::AgentLinkService;
use crate::config::Config;
use crate::control::ControlService;
use crate::coordinator::Coordinator;
use crate::error::Error;
use crate::gossip;
use crate::store::Store;

/// Runs a coordinator on `store`, serving gRPC on `listener`, until `shutdown` is cancelled.
///
/// Shutdown is bounded: agent sessions and event streams are closed, open requests get
/// `config.shutdown_grace` to finish, then the server is dropped.
pub async fn run(
    config: Config,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let coordinator = Coordinator::start(
        store,
        &config.cluster_id,
        config.settings(),
        shutdown.clone(),
    )
    .await?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("listener address: {e}")))?;

    let membership = gossip::join(&config, address).await?;

    // The daemon's long-lived tasks: one that ends before shutdown stops the coordinator
    // (non-zero, so systemd restarts it) rather than leave it answering while doing nothing.
    let mut tasks = Tasks::new(shutdown.clone());
    tasks.spawn_infallible(
        "reconcile",
        coordinator
            .clone()
            .run_reconcile_loop(config.reconcile_interval, shutdown.clone()),
    );
    coordinator.wake();

    if let Some(membership) = membership {
        // Gossip frozen means no node is ever declared down: it is fatal too.
        let terminated = membership.termination();
        let stopping = shutdown.clone();
        tasks.spawn("gossip", async move {
            tokio::select! {
                () = stopping.cancelled() => Ok(()),
                ended = terminated => ended,
            }
        });
        let coordinator = coordinator.clone();
        let shutdown = shutdown.clone();
        tasks.spawn_infallible("gossip-members", async move {
            gossip::watch_members(&membership, coordinator, shutdown).await;
            membership.leave(std::time::Duration::from_secs(1)).await;
        });
    }

    info!(%address, "serving grpc");
    let request_bytes = usize::try_from(config.limits.request_bytes).unwrap_or(usize::MAX);
    let closing = coordinator.clone();
    let signal = shutdown.clone();
    let server = tonic::transport::Server::builder()
        // A partitioned agent's stream must end in seconds, not at the TCP timeout.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(2)))
        .add_service(
            ControlServer::new(ControlService::new(coordinator.clone()))
                .max_decoding_message_size(request_bytes),
        )
        .add_service(
            AgentLinkServer::new(AgentLinkService::new(coordinator))
                .max_decoding_message_size(request_bytes),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            signal.cancelled().await;
            closing.close_sessions().await;
        });
    tasks.spawn("grpc-server", async move {
        server
            .await
            .map_err(|e| format!("grpc server on {address}: {e}"))
    });

    let failed = tasks.supervise().await;
    // Open requests get the grace to finish; the other tasks end at once.
    let stopped = tasks.join(config.shutdown_grace).await;
    info!("coordinator stopped");
    failed
        .and(stopped)
        .map_err(|e| Error::Internal(e.to_string()))
}
