//! What Drover's daemons (`drover-coordinator`, `drover-agent`, `drover dev`) share: layered
//! configuration (and the commented default config files rendered from it), logging to
//! stderr, signal handling, the supervised set of a daemon's long-lived tasks, and the HTTP
//! side (health, readiness, metrics).

mod default_config;
pub mod http;
mod tasks;

pub use default_config::{RenderError, render_default_config, uncomment_options};
pub use tasks::{TaskError, Tasks};

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Errors loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` does not exist.
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    /// A value is invalid or a key unknown.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
}

/// Loads a configuration: `T::default()`, then the TOML file, then `DROVER_<KEY>` variables
/// for `env_keys`, then `overrides` (the command-line flags). `path` is the file named on
/// the command line; without one, `default_path` is read when it exists.
pub fn load_config<T>(
    default_path: &str,
    path: Option<&Path>,
    env_keys: &[&str],
    overrides: Serialized<impl Serialize>,
) -> Result<T, ConfigError>
where
    T: Default + Serialize + DeserializeOwned,
{
    let file = match path {
        Some(p) if !p.exists() => return Err(ConfigError::Missing(p.to_path_buf())),
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from(default_path)).filter(|p| p.exists()),
    };
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(file) = file {
        figment = figment.merge(Toml::file_exact(file));
    }
    figment
        .merge(Env::prefixed("DROVER_").only(env_keys))
        .merge(overrides)
        .extract()
        .map_err(|e| ConfigError::Invalid(Box::new(e)))
}

/// Logs to stderr (the journal under systemd), plain when stderr is not a terminal.
/// `RUST_LOG` overrides the default filter.
pub fn init_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "info,h2=warn,tower=warn,hyper=warn,hickory_server=warn".into()
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Raises the soft limit on open files to the hard limit: every proxied connection holds
/// two sockets (and, on the splice path, two pipes), and systemd starts services with a soft
/// limit of 1024. Logs the outcome; a failure leaves the limit as it was.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "raised the open files limit"),
            Err(e) => warn!(soft, hard, error = %e, "cannot raise the open files limit"),
        },
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot read the open files limit"),
    }
}

/// First SIGINT or SIGTERM cancels `shutdown` (graceful, bounded by the daemon); a second
/// one exits at once.
pub async fn watch_signals(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot watch SIGTERM");
            return;
        }
    };
    for round in 0..2 {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        if round == 0 {
            info!("shutting down");
            shutdown.cancel();
        } else {
            warn!("second signal, exiting now");
            std::process::exit(130);
        }
    }
}
