//! `drover-coordinator`: the cluster's brain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use drover_coordinator::Config;
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
    /// Address of the HTTP side (healthz, readyz, metrics).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    http_listen: Option<SocketAddr>,
    /// UDP address gossip listens on.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    gossip_listen: Option<SocketAddr>,
    /// Gossip seed peer (host:port); repeatable.
    #[arg(long = "gossip-seed")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    gossip_seeds: Vec<String>,
    #[command(subcommand)]
    #[serde(skip)]
    command: Option<Sub>,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Tokens, made by the coordinator running on this host with its admin token.
    Token {
        #[command(subcommand)]
        command: TokenSub,
    },
}

#[derive(Debug, clap::Subcommand)]
enum TokenSub {
    /// Make a token and print it (once): `--role agent` joins nodes.
    Create {
        /// A unique name (default: the role and the time).
        #[arg(long)]
        name: Option<String>,
        /// agent, operator, read or admin.
        #[arg(long, default_value = "agent")]
        role: String,
        /// Lifetime, e.g. 24h; default: no end.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
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
    if let Some(Sub::Token {
        command: TokenSub::Create { name, role, ttl },
    }) = args.command
    {
        return create_token(&config, name, &role, ttl).await;
    }
    info!(version = env!("CARGO_PKG_VERSION"), listen = %config.listen, data_dir = %config.data_dir.display(), "starting coordinator");

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let store = config
        .open_store()
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

/// `drover-coordinator token create`: asks the coordinator running with `config` for a
/// token, authenticated by the admin token in its data dir.
async fn create_token(
    config: &Config,
    name: Option<String>,
    role: &str,
    ttl: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    drover_security::install_crypto_provider();
    let path = config
        .data_dir
        .join(drover_coordinator::security::ADMIN_TOKEN_FILE);
    let admin: drover_security::Token = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the admin token {} (run as root or as the drover user, after the coordinator's first start)", path.display()))?
        .parse()
        .with_context(|| format!("the admin token in {}", path.display()))?;
    let ip = if config.listen.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        config.listen.ip()
    };
    let address = SocketAddr::new(ip, config.listen.port()).to_string();
    let mut client = drover_security::client::operator(
        &address,
        &drover_security::client::OperatorAuth::Token(admin),
    )
    .await?;
    let name = name.unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!("{role}-{now}")
    });
    let made = client
        .create_token(drover_proto::pb::CreateTokenRequest {
            name: name.clone(),
            role: role.to_string(),
            ttl_seconds: ttl.map(|t| t.as_secs().max(1)).unwrap_or(0),
        })
        .await
        .map_err(|s| anyhow::anyhow!("create token {name:?}: {}", s.message()))?
        .into_inner();
    println!("{}", made.token);
    eprintln!("{role} token {name:?} created; it is shown only now");
    Ok(())
}
