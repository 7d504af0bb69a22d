//! `drover-agent`: runs on every host; manages its containers for the coordinator.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use drover_agent::Config;
use drover_agent::runtime::DockerRuntime;
use figment::providers::Serialized;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Drover agent: runs and watches the containers the coordinator assigns to this host.
#[derive(Debug, Parser, Serialize)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML). Default: /etc/drover/agent.toml, when it exists.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Print the default configuration file (every option, commented out) and exit.
    #[arg(long)]
    #[serde(skip)]
    print_default_config: bool,
    /// Stable node id (default: the host's machine-id).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<String>,
    /// Address other nodes and clients reach this node on.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise: Option<IpAddr>,
    /// Coordinator gRPC URL; repeat for several.
    #[arg(long = "coordinator")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    coordinators: Vec<String>,
    /// UDP address gossip listens on.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    gossip_listen: Option<SocketAddr>,
    /// Gossip seed peer (host:port); repeatable.
    #[arg(long = "gossip-seed")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    gossip_seeds: Vec<String>,
    /// Directory of the agent's state.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Address of the HTTP side (health, readiness, metrics).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    http_listen: Option<SocketAddr>,
    /// Source address of the connection to the coordinator.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    link_source: Option<IpAddr>,
    /// Container engine endpoint, e.g. unix:///run/podman/podman.sock.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    engine: Option<String>,
    /// Join token (used once, to get this node's certificate).
    #[arg(long, env = "DROVER_AGENT_TOKEN", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    /// File holding the join token.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    token_file: Option<PathBuf>,
    /// Run as the keeper of a stopped agent's proxy sockets (started by the agent itself).
    #[arg(long, hide = true)]
    #[serde(skip)]
    keep_connections: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    drover_daemon::init_logs();
    let args = Args::parse();
    if args.keep_connections {
        return drover_agent::handoff::keeper::run()
            .await
            .context("keeping the proxy's sockets");
    }
    if args.print_default_config {
        print!("{}", Config::default_file()?);
        return Ok(());
    }
    let config = Config::load(args.config.as_deref(), Serialized::globals(&args))?;
    info!(version = env!("CARGO_PKG_VERSION"), "starting drover-agent");
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let runtime = DockerRuntime::connect(config.engine.as_deref())
        .await
        .context("connecting to the container engine")?;

    drover_daemon::raise_open_files_limit();
    let shutdown = CancellationToken::new();
    tokio::spawn(drover_daemon::watch_signals(shutdown.clone()));
    // The running binary, even once a package upgrade replaced the file.
    let keeper = PathBuf::from("/proc/self/exe");
    drover_agent::server::run_with_keeper(config, Arc::new(runtime), shutdown, keeper).await?;
    Ok(())
}
