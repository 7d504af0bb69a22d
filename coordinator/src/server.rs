//! Starting and stopping a coordinator: the injectable `run` that the binary, `drover dev`
//! and tests share.

use std::sync::Arc;

use drover_proto::pb::agent_link_server::AgentLinkServer;
use drover_proto::pb::control_server::ControlServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
    let coordinator = Coordinator::start(store, &config.cluster_id, shutdown.clone()).await?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("listener address: {e}")))?;

    let membership = gossip::join(&config, address).await?;

    let reconcile = tokio::spawn(
        coordinator
            .clone()
            .run_reconcile_loop(config.reconcile_interval, shutdown.clone()),
    );
    coordinator.wake();

    let gossip_watch = membership.map(|membership| {
        let coordinator = coordinator.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            gossip::watch_members(&membership, coordinator, shutdown).await;
            membership.leave(std::time::Duration::from_secs(1)).await;
        })
    });

    info!(%address, "serving grpc");
    let closing = coordinator.clone();
    let signal = shutdown.clone();
    let mut server = tokio::spawn(
        tonic::transport::Server::builder()
            // A partitioned agent's stream must end in seconds, not at the TCP timeout.
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(1)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(2)))
            .add_service(ControlServer::new(ControlService::new(coordinator.clone())))
            .add_service(AgentLinkServer::new(AgentLinkService::new(coordinator)))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                signal.cancelled().await;
                closing.close_sessions().await;
            }),
    );

    let served = tokio::select! {
        result = &mut server => Some(result),
        _ = shutdown.cancelled() => None,
    };
    let served = match served {
        Some(result) => result,
        None => match tokio::time::timeout(config.shutdown_grace, &mut server).await {
            Ok(result) => result,
            Err(_) => {
                warn!(grace = ?config.shutdown_grace, "open requests did not finish in time; closing them");
                server.abort();
                Ok(Ok(()))
            }
        },
    };
    shutdown.cancel();
    if let Err(e) = reconcile.await {
        return Err(Error::Internal(format!("reconcile loop task: {e}")));
    }
    if let Some(task) = gossip_watch {
        if let Err(e) = task.await {
            return Err(Error::Internal(format!("gossip task: {e}")));
        }
    }
    info!("coordinator stopped");
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::Internal(format!("grpc server on {address}: {e}"))),
        Err(e) => Err(Error::Internal(format!(
            "grpc server task on {address}: {e}"
        ))),
    }
}
