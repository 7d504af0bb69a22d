//! `drover-coordinator`: the cluster's brain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use drover_coordinator::Config;
use drover_coordinator::store::RedbStore;
use figment::providers::Serialized;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Drover coordinator: stores desired state, places services on nodes, serves the gRPC API.
#[derive(Debug, Parser, Serialize)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML). Default: /etc/drover/coordinator.toml, when it exists.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Print the default configuration file (every option, commented out) and exit.
    #[arg(long)]
    #[serde(skip)]
    print_default_config: bool,
    /// Directory of the state file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Address of the gRPC API.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// UDP address gossip listens on.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    gossip_listen: Option<SocketAddr>,
    /// Gossip seed peer (host:port); repeatable.
    #[arg(long = "gossip-seed")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    gossip_seeds: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    drover_daemon::init_logs();
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", Config::default_file()?);
        return Ok(());
    }
    let config = Config::load(args.config.as_deref(), Serialized::globals(&args))?;
    info!(version = env!("CARGO_PKG_VERSION"), listen = %config.listen, data_dir = %config.data_dir.display(), "starting coordinator");

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let store = RedbStore::open(&config.store_path())
        .with_context(|| format!("opening store {}", config.store_path().display()))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding gRPC listener on {}", config.listen))?;

    drover_daemon::raise_open_files_limit();
    let shutdown = CancellationToken::new();
    tokio::spawn(drover_daemon::watch_signals(shutdown.clone()));
    drover_coordinator::run(config, Arc::new(store), listener, shutdown).await?;
    Ok(())
}
