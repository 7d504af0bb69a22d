//! Starting and stopping a coordinator: the injectable `run` that the binary, `drover dev`
//! and tests share.

use std::sync::Arc;

use drover_daemon::Tasks;
use drover_proto::pb::agent_link_server::AgentLinkServer;
use drover_proto::pb::bootstrap_server::BootstrapServer;
use drover_proto::pb::control_server::ControlServer;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::agent_link::AgentLinkService;
use crate::bootstrap::BootstrapService;
use crate::config::Config;
use crate::control::ControlService;
use crate::coordinator::{Coordinator, now_unix_ms};
use crate::error::Error;
use crate::gossip;
use crate::security::{self, Authority, BootstrapToken};
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
    drover_security::install_crypto_provider();
    let authority = if config.insecure {
        warn!(
            "insecure = true: no TLS, no tokens, no certificates; anyone who reaches {} may change the cluster. For tests only",
            config.listen
        );
        None
    } else {
        let (authority, created) = Authority::load_or_create(
            &config.data_dir,
            &config.cluster_id,
            config.node_cert_ttl,
            config.operator_cert_ttl,
        )?;
        if created {
            info!(digest = %authority.ca().digest(), dir = %config.data_dir.display(), "cluster CA created");
        }
        Some(Arc::new(authority))
    };
    let coordinator = Coordinator::start(
        store,
        &config.cluster_id,
        config.settings(),
        authority.clone(),
        shutdown.clone(),
    )
    .await?;
    let tls = match &authority {
        Some(authority) => {
            write_bootstrap_tokens(&coordinator, authority, &config.data_dir).await?;
            Some(authority.server_tls().clone())
        }
        None => None,
    };
    let address = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("listener address: {e}")))?;

    let keyring = match &authority {
        Some(_) => Some(gossip_keyring(&coordinator).await?),
        None => None,
    };
    let membership = gossip::join(&config, address, keyring).await?;

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
    if let Some(http_listen) = config.http_listen {
        serve_http(
            &mut tasks,
            http_listen,
            tls.clone(),
            crate::http::router(
                coordinator.clone(),
                tls.is_some(),
                config.reconcile_interval,
                config.gossip_listen.is_some(),
            ),
            shutdown.clone(),
        )
        .await?;
    }
    let router = tonic::transport::Server::builder()
        // A partitioned agent's stream must end in seconds, not at the TCP timeout.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(2)))
        .layer(crate::http::CountRequests::new(coordinator.metrics.clone()))
        .add_service(
            ControlServer::new(ControlService::new(coordinator.clone()))
                .max_decoding_message_size(request_bytes),
        )
        .add_service(
            AgentLinkServer::new(AgentLinkService::new(coordinator.clone()))
                .max_decoding_message_size(request_bytes),
        )
        .add_service(BootstrapServer::new(BootstrapService::new(coordinator)));
    let stopped = async move {
        signal.cancelled().await;
        closing.close_sessions().await;
    };
    // TLS through the authority's acceptor, whose certificate a CA rotation replaces.
    let server: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match tls {
        Some(tls) => Box::pin(router.serve_with_incoming_shutdown(tls.incoming(listener), stopped)),
        None => {
            // No Nagle, as the TLS acceptor does.
            let incoming = TcpListenerStream::new(listener).map(|accepted| {
                if let Ok(stream) = &accepted {
                    let _ = stream.set_nodelay(true);
                }
                accepted
            });
            Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
        }
    };
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

/// Binds `address` and serves the HTTP side there, over TLS with `tls` when given.
async fn serve_http(
    tasks: &mut Tasks,
    address: std::net::SocketAddr,
    tls: Option<drover_security::transport::ServerTls>,
    router: axum::Router,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| Error::Internal(format!("binding the HTTP address {address}: {e}")))?;
    let bound = listener.local_addr().unwrap_or(address);
    info!(address = %bound, tls = tls.is_some(), "serving http (healthz, readyz, metrics)");
    tasks.spawn("http-server", async move {
        let served = match tls {
            Some(tls) => {
                let incoming =
                    drover_daemon::http::StreamListener::new(tls.incoming(listener), bound);
                drover_daemon::http::serve(incoming, router, shutdown).await
            }
            None => drover_daemon::http::serve(listener, router, shutdown).await,
        };
        served.map_err(|e| format!("http server on {bound}: {e}"))
    });
    Ok(())
}

/// Makes the admin token and this host's agent join token on first start (or when their
/// file was removed) and writes each to its 0600 file under the data dir.
async fn write_bootstrap_tokens(
    coordinator: &Coordinator,
    authority: &Authority,
    data_dir: &std::path::Path,
) -> Result<(), Error> {
    for which in [BootstrapToken::Admin, BootstrapToken::Agent] {
        let (file, name, role) = which.parts();
        let path = data_dir.join(file);
        let in_file = drover_security::files::read_optional(&path)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let mut inner = coordinator.lock().await;
        let mut changes = crate::changes::ChangeSet::new(&inner.state, now_unix_ms());
        let made = security::bootstrap_token(
            &inner.state,
            authority.ca().digest(),
            which,
            in_file.as_deref(),
            &mut changes,
        )?;
        let Some(token) = made else { continue };
        // The file first: a token committed but never written would be lost to everyone.
        drover_security::files::write_atomic(
            &path,
            format!("{}\n", token.reveal()).as_bytes(),
            true,
        )
        .map_err(|e| Error::Internal(e.to_string()))?;
        coordinator.commit(&mut inner, changes).await?;
        info!(token = name, %role, file = %path.display(), "token written");
    }
    info!(
        admin = %data_dir.join(security::ADMIN_TOKEN_FILE).display(),
        agents = %data_dir.join(security::AGENT_TOKEN_FILE).display(),
        "tokens: the drover command on this host reads the admin token from its file; join an agent with the agent token (agent.toml: token = \"...\"), or make others with `drover-coordinator token create --role agent|operator|read`"
    );
    Ok(())
}

/// The stored gossip keyring (made on first start), as the handle this coordinator's gossip
/// seals with.
async fn gossip_keyring(
    coordinator: &Coordinator,
) -> Result<drover_membership::KeyringHandle, Error> {
    let mut inner = coordinator.lock().await;
    let mut changes = crate::changes::ChangeSet::new(&inner.state, now_unix_ms());
    security::ensure_gossip_keys(&inner.state, &mut changes)?;
    coordinator.commit(&mut inner, changes).await?;
    let keyring = security::keyring(&inner.state)?
        .ok_or_else(|| Error::Internal("no gossip keyring after making one".into()))?;
    let handle = drover_membership::KeyringHandle::new(keyring);
    coordinator.set_keyring(handle.clone());
    Ok(handle)
}
