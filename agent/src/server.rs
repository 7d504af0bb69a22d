//! Starting and stopping an agent: the injectable `run` that the binary, `drover dev` and
//! tests share.

use std::collections::BTreeMap;
use std::sync::Arc;

use drover_daemon::Tasks;
use drover_membership::next_generation;
use drover_proto::model::NodeInfo;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster_ips::{self, ClusterAddresses};
use crate::config::Config;
use crate::credentials;
use crate::dns;
use crate::error::Error;
use crate::gossip;
use crate::handoff;
use crate::host;
use crate::link::Link;
use crate::proxy::{MIN_BUFFER_SIZE, ProxyConfig, ProxyManager};
use crate::routes;
use crate::runtime::ContainerRuntime;
use crate::saved_routing;
use crate::supervisor::{self, LinkState, Supervisor, SupervisorChannels};

/// How long the agent's tasks get to stop after shutdown (the proxy bounds its own drain
/// below this), inside systemd's `TimeoutStopSec=30s`.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(25);

/// Runs an agent with `runtime` until `shutdown` is cancelled. Containers keep running when
/// the agent stops: a restarted agent adopts them. The proxy's open connections drain when
/// it stops (see [`run_with_keeper`]); it takes over a keeper's at start, whichever way it
/// is run.
pub async fn run(
    config: Config,
    runtime: Arc<dyn ContainerRuntime>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    run_as(config, runtime, shutdown, None).await
}

/// [`run`], and when it stops, the proxy's listeners and open connections go to a keeper
/// started from `keeper` (the `drover-agent` binary) for the next agent
/// ([`crate::handoff`]), unless `handoff_wait` is 0.
pub async fn run_with_keeper(
    config: Config,
    runtime: Arc<dyn ContainerRuntime>,
    shutdown: CancellationToken,
    keeper: std::path::PathBuf,
) -> Result<(), Error> {
    run_as(config, runtime, shutdown, Some(keeper)).await
}

async fn run_as(
    config: Config,
    runtime: Arc<dyn ContainerRuntime>,
    shutdown: CancellationToken,
    keeper: Option<std::path::PathBuf>,
) -> Result<(), Error> {
    drover_security::install_crypto_provider();
    let node_id = config
        .resolve_node_id()
        .map_err(|e| Error::Config(e.to_string()))?;
    // The coordinator refuses any other id; say so before anything starts.
    drover_proto::manifest::dns_label(&node_id)
        .map_err(|e| Error::Config(format!("node_id: {e}")))?;
    if config.coordinators.is_empty() {
        return Err(Error::Config("no coordinator URL configured".into()));
    }
    let proxy_config = proxy_config(&config)?;
    let usage_interval = usage_interval(&config)?;
    let capacity = host::capacity(&config.reserved_cpu, &config.reserved_memory)?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        Error::Config(format!(
            "creating data dir {}: {e}",
            config.data_dir.display()
        ))
    })?;
    // Strictly larger on every start, so gossip peers take this incarnation's keys.
    let generation = next_generation(&config.data_dir).map_err(|e| {
        Error::Config(format!(
            "gossip generation in {}: {e}",
            config.data_dir.display()
        ))
    })?;
    info!(node = %node_id, generation, advertise = %config.advertise, cpu_millis = capacity.cpu_millis, memory_bytes = capacity.memory_bytes, "starting agent");

    // Credentials before anything talks to the cluster: the first start joins with a token.
    let credentials = if config.insecure {
        warn!(
            "insecure = true: plain gRPC, no certificate; only an insecure coordinator answers. For tests only"
        );
        None
    } else {
        let token = config.join_token().map_err(Error::Config)?;
        let kept = credentials::obtain(
            &config.data_dir,
            &node_id,
            token.as_ref(),
            &config.coordinators,
            &shutdown,
        )
        .await?;
        Some(watch::channel(Arc::new(kept)))
    };

    let (gossip_keys_tx, mut gossip_keys_rx) = watch::channel(
        credentials
            .as_ref()
            .map(|(_, rx)| rx.borrow().gossip_keys.clone())
            .unwrap_or_default(),
    );
    let (desired_tx, desired_rx) = watch::channel(None);
    // The routing and DNS tasks start from the routing the last agent kept, so that they
    // serve with the coordinator unreachable; then follow the route policies and the cluster
    // DNS the desired sets name.
    let (saved_policy, saved_dns) = saved_routing::restore(&config.data_dir);
    let (routes_tx, routes_rx) = watch::channel(saved_policy);
    let (cluster_dns_tx, cluster_dns_rx) = watch::channel(saved_dns);
    let (link_tx, link_rx) = watch::channel(LinkState::default());
    let link_rx_for_metrics = link_rx.clone();
    let (status_tx, status_rx) = watch::channel(BTreeMap::new());
    let (traffic_tx, traffic_rx) = watch::channel(crate::proxy::NodeTraffic::default());
    let (ca_bundle_tx, ca_bundle_rx) = watch::channel(None);
    let (read_tokens_tx, read_tokens_rx) =
        watch::channel(Arc::new(crate::read_tokens::load(&config.data_dir)));
    let (proxy_totals_tx, proxy_totals_rx) = watch::channel(crate::proxy::ProxyTotals::default());
    // Before anything runs, so that a port in use stops the start with a clear error.
    let http_listener = match config.http_listen {
        Some(address) => Some(crate::http::bind(address).await?),
        None => None,
    };

    // Gossip seals with the keyring the join gave (kept in the data dir); the coordinator
    // sends a new one over the link when an operator rotates keys.
    let keyring = match &credentials {
        Some(_) => {
            let keys = gossip_keys_rx.borrow_and_update().clone();
            let keyring = drover_membership::Keyring::from_base64(&keys).map_err(|e| {
                Error::Credentials(format!(
                    "the gossip keyring kept in {}: {e}",
                    config.data_dir.display()
                ))
            })?;
            Some(drover_membership::KeyringHandle::new(keyring))
        }
        None => None,
    };
    let membership = gossip::join(&config, &node_id, generation, capacity, keyring.clone()).await?;
    // The agent's long-lived tasks: one that ends before shutdown stops the agent (non-zero,
    // so systemd restarts it; containers keep running and are adopted).
    let mut tasks = Tasks::new(shutdown.clone());
    // Gossip gone for good will not come back on its own.
    let terminated = membership.termination();
    let stopping = shutdown.clone();
    tasks.spawn("gossip", async move {
        tokio::select! {
            () = stopping.cancelled() => Ok(()),
            ended = terminated => ended.map_err(|e| Error::Gossip(e.to_string())),
        }
    });
    info!(listen = %config.gossip_listen, seeds = ?config.gossip_seeds, sealed = keyring.is_some(), "joined gossip");
    if let Some(handle) = keyring {
        tasks.spawn_infallible(
            "gossip-keys",
            credentials::follow_gossip_keys(
                handle,
                gossip_keys_rx,
                config.data_dir.clone(),
                shutdown.clone(),
            ),
        );
    }

    let log_source = crate::logs::LogSource {
        runtime: runtime.clone(),
        statuses: status_rx.clone(),
    };
    let mut supervisor = Supervisor::new(
        node_id.clone(),
        config.advertise,
        runtime,
        SupervisorChannels {
            desired: desired_rx,
            link: link_rx,
            statuses: status_tx,
        },
        config.reconcile_interval,
        shutdown.clone(),
    );
    supervisor.set_drain(config.drain_delay);
    supervisor.set_usage_interval(usage_interval);
    let counters = crate::metrics::WorkCounters::default();
    supervisor.set_counters(counters.clone());
    let usage_rx = supervisor.usage_reports();
    tasks.spawn_infallible(
        "restart-counts",
        counters
            .clone()
            .follow_restarts(status_rx.clone(), shutdown.clone()),
    );
    tasks.spawn_infallible("supervisor", supervisor.run());

    let link = Link {
        coordinators: config.coordinators.clone(),
        cluster_id: config.cluster_id.clone(),
        node: NodeInfo {
            id: node_id.clone(),
            generation,
            address: config.advertise.to_string(),
            capacity,
            labels: config.labels.clone(),
        },
        statuses: status_rx.clone(),
        desired: desired_tx,
        link: link_tx,
        routes: routes_tx,
        cluster_dns: cluster_dns_tx,
        saved: Some(config.data_dir.clone()),
        traffic: traffic_rx,
        usage: usage_rx.clone(),
        source: config.link_source,
        desired_store: None,
        credentials: credentials.as_ref().map(|(_, rx)| rx.clone()),
        gossip_keys: gossip_keys_tx,
        ca_bundle: ca_bundle_tx,
        read_tokens: read_tokens_tx,
        logs: Some(log_source),
        rejoin: credentials
            .as_ref()
            .map(|(current, _)| credentials::Rejoin {
                dir: config.data_dir.clone(),
                node_id: node_id.clone(),
                config: config.clone(),
                current: current.clone(),
            }),
        refused_identity: false,
    };
    if let Some(listener) = http_listener {
        let sources = crate::metrics::Sources {
            proxy: proxy_totals_rx,
            statuses: status_rx.clone(),
            usage: usage_rx,
            members: membership.live_members(),
            gossip: membership.counters(),
            link: link_rx_for_metrics,
            counters,
        };
        let readiness = crate::http::Readiness {
            node: node_id.clone(),
            policy: routes_rx.clone(),
            members: membership.live_members(),
        };
        let secure = credentials.is_some();
        let router = crate::http::router(sources, readiness, secure.then_some(read_tokens_rx));
        info!(listen = %config.http_listen.map(|a| a.to_string()).unwrap_or_default(), tls = secure, "serving health and metrics over HTTP");
        tasks.spawn(
            "http",
            crate::http::serve(
                listener,
                router,
                credentials.as_ref().map(|(_, rx)| rx.clone()),
                shutdown.clone(),
            ),
        );
    }
    if let Some((current, _)) = credentials {
        tasks.spawn_infallible(
            "certificate-renewal",
            credentials::renew_forever(
                config.data_dir.clone(),
                config.coordinators.clone(),
                config.link_source,
                current,
                ca_bundle_rx,
                shutdown.clone(),
            ),
        );
    }
    tasks.spawn_infallible("link", link.run(shutdown.clone()));

    // Every node proxies each service's published port to healthy replicas anywhere:
    // policy from the coordinator, liveness and health from gossip.
    let proxy_bind = config.proxy_bind.unwrap_or(config.advertise);
    let drain_timeout = proxy_config.drain_timeout;
    let mut proxy = ProxyManager::new(proxy_config, generation);
    // Last: the keeper goes on copying until this takes its connections over.
    let handoff_socket = config.data_dir.join(handoff::SOCKET);
    match handoff::take(&handoff_socket).await {
        Ok(Some(handover)) => proxy.adopt(handover),
        Ok(None) => {}
        Err(e) => warn!(socket = %handoff_socket.display(), error = %e,
            "cannot take over the previous agent's proxy sockets; starting afresh"),
    }
    if let Some(program) = keeper.filter(|_| !config.handoff_wait.is_zero()) {
        proxy.hand_off_to(handoff::Keeper {
            program,
            socket: handoff_socket,
            pause_within: handoff::PAUSE_WITHIN,
            wait: config.handoff_wait,
            drain: drain_timeout,
        });
    }
    let addressing = routes::Addressing {
        node: proxy_bind,
        cluster_ips: config.cluster_ips,
        cluster_services_on_node: config.cluster_services_on_node,
    };
    // The agent that serves the cluster addresses on this host serves its DNS too (on one
    // of them).
    let (addresses, records) = if config.cluster_ips {
        let (records_tx, records_rx) = watch::channel(Arc::new(dns::Records::empty(
            "cluster.local",
            supervisor::NAMESPACE,
        )));
        tasks.spawn_infallible(
            "dns",
            dns::run::run(cluster_dns_rx.clone(), records_rx, shutdown.clone()),
        );
        let addresses = ClusterAddresses::start(cluster_ips::Netlink::open()?).await;
        (Some(addresses), Some(records_tx))
    } else {
        (None, None)
    };
    tasks.spawn_infallible(
        "routing",
        routes::run(
            proxy,
            addressing,
            addresses,
            routes_rx,
            membership.live_members(),
            cluster_dns_rx,
            records,
            routes::Published {
                traffic: traffic_tx,
                totals: proxy_totals_tx,
            },
            shutdown.clone(),
        ),
    );

    let membership = Arc::new(membership);
    let publisher = membership.clone();
    let advertise = config.advertise;
    let publishing = shutdown.clone();
    tasks.spawn_infallible("gossip-publish", async move {
        gossip::publish_allocations(&publisher, advertise, status_rx, publishing).await;
    });

    let failed = tasks.supervise().await;
    // Open proxied connections drain within the proxy's own bound; the rest end at once.
    let stopped = tasks.join(SHUTDOWN_GRACE).await;
    if let Err(e) = failed.and(stopped) {
        return Err(Error::Internal(e.to_string()));
    }
    if let Ok(membership) = Arc::try_unwrap(membership) {
        membership.leave(config.gossip_interval * 4).await;
    }
    info!("agent stopped");
    Ok(())
}

/// The service proxy's settings from the agent's, checked before anything starts.
fn proxy_config(config: &Config) -> Result<ProxyConfig, Error> {
    if config.proxy_buffer_size < MIN_BUFFER_SIZE {
        return Err(Error::Config(format!(
            "proxy_buffer_size {}: must be at least {MIN_BUFFER_SIZE} bytes",
            config.proxy_buffer_size
        )));
    }
    Ok(ProxyConfig {
        splice: config.proxy_splice,
        buffer_size: config.proxy_buffer_size,
        ..ProxyConfig::default()
    })
}

/// The usage sampling interval, checked before anything starts: 0 would sample without a
/// pause, and no interval to average CPU over.
fn usage_interval(config: &Config) -> Result<std::time::Duration, Error> {
    if config.usage_interval.is_zero() {
        return Err(Error::Config(
            "usage_interval 0s: must be longer than zero (e.g. \"5s\")".into(),
        ));
    }
    Ok(config.usage_interval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::FakeRuntime;

    #[test]
    fn the_proxy_gets_the_agents_data_path_settings() {
        for (splice, buffer_size) in [(false, MIN_BUFFER_SIZE), (true, 1 << 20)] {
            let config = Config {
                proxy_splice: splice,
                proxy_buffer_size: buffer_size,
                ..Config::default()
            };
            let proxy = proxy_config(&config).expect("valid settings");
            assert_eq!((proxy.splice, proxy.buffer_size), (splice, buffer_size));
        }
    }

    #[tokio::test]
    async fn refuses_a_proxy_buffer_below_the_minimum_before_starting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("state");
        let config = Config {
            node_id: Some("n1".into()),
            data_dir: data_dir.clone(),
            proxy_buffer_size: 100,
            ..Config::default()
        };
        let result = run(
            config,
            Arc::new(FakeRuntime::new()),
            CancellationToken::new(),
        )
        .await;
        let message = result
            .expect_err("a 100-byte buffer is refused")
            .to_string();
        assert!(
            message.contains("proxy_buffer_size 100") && message.contains("8192"),
            "{message}"
        );
        // Nothing changed on disk: the check comes before the data dir is made.
        assert!(!data_dir.exists());
    }

    #[tokio::test]
    async fn refuses_a_zero_usage_interval_before_starting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("state");
        let config = Config {
            node_id: Some("n1".into()),
            data_dir: data_dir.clone(),
            usage_interval: std::time::Duration::ZERO,
            ..Config::default()
        };
        let result = run(
            config,
            Arc::new(FakeRuntime::new()),
            CancellationToken::new(),
        )
        .await;
        let message = result.expect_err("0 is refused").to_string();
        assert!(message.contains("usage_interval 0s"), "{message}");
        assert!(!data_dir.exists());
        let config = Config::default();
        assert_eq!(
            usage_interval(&config).expect("the default is valid"),
            crate::usage::DEFAULT_INTERVAL
        );
    }
}
