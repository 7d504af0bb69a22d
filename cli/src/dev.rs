//! `drover dev`: a coordinator and an agent in one process on loopback, for a laptop or a
//! single edge box.

use crate::output::say;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use drover_agent::runtime::DockerRuntime;
use drover_proto::pb;
use tokio_util::sync::CancellationToken;

use crate::client::connect;
use crate::commands;

/// Options of `drover dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// State directory. Default: the user's data dir (e.g. ~/.local/share/drover/dev).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the coordinator's gRPC API.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Node id of the local agent.
    #[arg(long, default_value = "dev")]
    node_id: String,
    /// Manifests to apply once the cluster is up (file, directory or -). Repeatable.
    #[arg(long = "apply")]
    apply: Vec<String>,
    /// Container engine endpoint (default: Docker's, or $DOCKER_HOST).
    #[arg(long)]
    engine: Option<String>,
    /// Address of the coordinator's HTTP side (healthz, readyz, metrics).
    #[arg(long, default_value = "127.0.0.1:7401")]
    coordinator_http: SocketAddr,
    /// Address of the agent's HTTP side (healthz, readyz, metrics).
    #[arg(long, default_value = "127.0.0.1:7404")]
    agent_http: SocketAddr,
    /// UDP address of the coordinator's gossip.
    #[arg(long, default_value = "127.0.0.1:7402")]
    coordinator_gossip: SocketAddr,
    /// UDP address of the agent's gossip.
    #[arg(long, default_value = "127.0.0.1:7405")]
    agent_gossip: SocketAddr,
    /// IPv4 network services' cluster addresses come from.
    #[arg(long, default_value_t = drover_coordinator::cluster_ips::ServiceNetwork::default())]
    service_network: drover_coordinator::cluster_ips::ServiceNetwork,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => dirs::data_dir()
            .context("no user data directory; pass --data-dir")?
            .join("drover")
            .join("dev"),
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    drover_daemon::raise_open_files_limit();
    let shutdown = CancellationToken::new();

    // Coordinator and agent each need their own gossip port on loopback.
    let coordinator_gossip = args.coordinator_gossip;
    let coordinator_config = drover_coordinator::Config {
        listen: args.listen,
        http_listen: Some(args.coordinator_http),
        data_dir: data_dir.clone(),
        gossip_listen: Some(coordinator_gossip),
        service_network: args.service_network,
        ..drover_coordinator::Config::default()
    };
    let store = coordinator_config.open_store().with_context(|| {
        format!(
            "opening {} (is another drover dev running?)",
            coordinator_config.store_path().display()
        )
    })?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the coordinator API on {}", args.listen))?;
    let url = args.listen.to_string();

    let runtime = DockerRuntime::connect(args.engine.as_deref())
        .await
        .context("connecting to the container engine")?;
    let agent_config = drover_agent::Config {
        node_id: Some(args.node_id.clone()),
        advertise: args.listen.ip(),
        coordinators: vec![url.clone()],
        data_dir: data_dir.join("agent"),
        gossip_listen: args.agent_gossip,
        http_listen: Some(args.agent_http),
        gossip_seeds: vec![coordinator_gossip.to_string()],
        token_file: Some(data_dir.join(drover_coordinator::security::AGENT_TOKEN_FILE)),
        // So that `curl 127.0.0.1:80` reaches the seed's (ClusterIP) service from the host.
        cluster_services_on_node: true,
        ..drover_agent::Config::default()
    };

    let mut coordinator = tokio::spawn(drover_coordinator::run(
        coordinator_config,
        Arc::new(store),
        listener,
        shutdown.clone(),
    ));
    // The coordinator writes its tokens at start: the agent joins with one, this process
    // (and the drover command in another terminal) uses the other.
    let admin_token = data_dir.join(drover_coordinator::security::ADMIN_TOKEN_FILE);
    tokio::select! {
        written = wait_for_tokens(&data_dir) => written?,
        ended = &mut coordinator => {
            shutdown.cancel();
            ended.context("coordinator task")?.context("coordinator")?;
            anyhow::bail!("the coordinator stopped during start-up");
        }
    }
    crate::client::set_auth(crate::client::resolve_auth(None, Some(&admin_token), false));
    let mut agent = tokio::spawn(drover_agent::run(
        agent_config,
        Arc::new(runtime),
        shutdown.clone(),
    ));
    tokio::spawn(drover_daemon::watch_signals(shutdown.clone()));

    // Either half failing to start ends `drover dev` with its error.
    tokio::select! {
        ready = wait_for_node(&url, &args.node_id) => ready?,
        ended = &mut coordinator => {
            shutdown.cancel();
            ended.context("coordinator task")?.context("coordinator")?;
            anyhow::bail!("the coordinator stopped during start-up");
        }
        ended = &mut agent => {
            shutdown.cancel();
            ended.context("agent task")?.context("agent")?;
            anyhow::bail!("the agent stopped during start-up");
        }
    }
    say!(
        "Drover dev is up: coordinator API at {url}, node {:?}, state in {}",
        args.node_id,
        data_dir.display()
    );
    say!("  export DROVER_COORDINATOR={url}");
    if Some(&admin_token) != crate::client::dev_token_file().as_ref() {
        say!("  export DROVER_TOKEN_FILE={}", admin_token.display());
    }
    if !args.apply.is_empty() {
        commands::apply(&url, &args.apply, false, "", None).await?;
        wait_and_show_endpoints(&url, args.listen.ip()).await?;
    }
    let http = args.coordinator_http;
    say!(
        "  curl --cacert {ca} --resolve coordinator.drover:{port}:{ip} -H \"Authorization: Bearer $(cat {token})\" https://coordinator.drover:{port}/metrics   # Prometheus metrics",
        ca = data_dir.join("ca.crt").display(),
        port = http.port(),
        ip = http.ip(),
        token = admin_token.display(),
    );
    let http = args.agent_http;
    say!(
        "  curl --cacert {ca} --resolve {agent}:{port}:{ip} -H \"Authorization: Bearer $(cat {token})\" https://{agent}:{port}/metrics   # the agent's",
        ca = data_dir.join("ca.crt").display(),
        agent = drover_security::AGENT_NAME,
        port = http.port(),
        ip = http.ip(),
        token = admin_token.display(),
    );
    say!(
        "  https://{ip}:{port}/ui/   # the web UI: give it the token in {token} (the certificate is coordinator.drover's, from {ca})",
        ip = args.coordinator_http.ip(),
        port = args.coordinator_http.port(),
        token = admin_token.display(),
        ca = data_dir.join("ca.crt").display(),
    );
    say!("Ctrl-C stops Drover; the containers keep running and are adopted on the next start.");

    let coordinator = coordinator.await.context("coordinator task")?;
    let agent = agent.await.context("agent task")?;
    coordinator.context("coordinator")?;
    agent.context("agent")?;
    Ok(())
}

/// Waits until the coordinator has written its admin and agent tokens.
async fn wait_for_tokens(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let files = [
        drover_coordinator::security::ADMIN_TOKEN_FILE,
        drover_coordinator::security::AGENT_TOKEN_FILE,
    ];
    while !files.iter().all(|f| data_dir.join(f).exists()) {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the coordinator wrote no tokens to {} within 30 s",
                data_dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn wait_for_node(url: &str, node: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut client) = connect(url).await {
            if let Ok(nodes) = client.list_nodes(pb::ListNodesRequest {}).await {
                let ready = nodes.into_inner().nodes.iter().any(|n| {
                    n.health == pb::NodeHealth::Ready as i32
                        && n.info.as_ref().is_some_and(|i| i.id == node)
                });
                if ready {
                    return Ok(());
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the local agent did not join the coordinator at {url} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (with progress) until every service's replicas run, then prints what to curl.
async fn wait_and_show_endpoints(url: &str, proxy: std::net::IpAddr) -> anyhow::Result<()> {
    let mut client = connect(url).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    loop {
        let services = client
            .list_services(pb::ListServicesRequest {})
            .await
            .context("list services")?
            .into_inner()
            .services;
        let progress = services
            .iter()
            .map(|s| format!("{} {}/{}", s.name, s.healthy, s.desired_replicas))
            .collect::<Vec<_>>()
            .join(", ");
        if progress != last {
            say!("  waiting for replicas: {progress}");
            last = progress;
        }
        let failures: Vec<String> = services
            .iter()
            .filter(|s| !s.placement_failure.is_empty())
            .map(|s| format!("{}: {}", s.name, s.placement_failure))
            .collect();
        if services.iter().all(|s| s.healthy >= s.desired_replicas) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            say!("  not every replica is healthy after 2 minutes; see `drover status SERVICE`");
            for f in failures {
                say!("  {f}");
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (name, address, how) in crate::services::dev_addresses(&mut client, proxy).await? {
        say!("  curl http://{address}/      # service {name} {how}, through the service proxy");
    }
    for name in commands::service_names(&mut client).await? {
        let endpoints = commands::endpoints(&mut client, &name).await?;
        for endpoint in endpoints {
            say!("  curl http://{endpoint}/      # {name}, one replica directly");
        }
    }
    Ok(())
}
