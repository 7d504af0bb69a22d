//! The agent's configuration: defaults, then the TOML file, then `DROVER_*` environment
//! variables, then command-line flags.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::Serialized;
use serde::{Deserialize, Serialize};

/// Default path of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/drover/agent.toml";

/// Agent settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Stable node id; default: the host's machine-id.
    pub node_id: Option<String>,
    /// Address other nodes and clients reach this node on; published ports bind to it.
    pub advertise: IpAddr,
    /// Coordinator gRPC URLs, tried in turn.
    pub coordinators: Vec<String>,
    /// Name of the cluster to join.
    pub cluster_id: String,
    /// UDP address gossip listens on.
    pub gossip_listen: SocketAddr,
    /// Gossip peers to join through (`host:port`).
    pub gossip_seeds: Vec<String>,
    /// Time between gossip rounds; failure detection takes about 5–8 of them.
    #[serde(with = "humantime_serde")]
    pub gossip_interval: Duration,
    /// Node labels, matched by placement constraints.
    pub labels: BTreeMap<String, String>,
    /// CPU kept for the host, e.g. "500m".
    pub reserved_cpu: String,
    /// Memory kept for the host, e.g. "512Mi".
    pub reserved_memory: String,
    /// Directory of the agent's own state (gossip generation).
    pub data_dir: PathBuf,
    /// Container engine endpoint, e.g. `unix:///run/podman/podman.sock`; default: Docker's.
    pub engine: Option<String>,
    /// Time between reconcile passes when nothing wakes the loop earlier.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// How long a replica being removed keeps serving its open connections (while getting
    /// no new ones) before its container is stopped.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Source address of the connection to the coordinator; default: the kernel's choice.
    pub link_source: Option<IpAddr>,
    /// Address the service proxy listens on (each service's published port); default: the
    /// advertise address.
    pub proxy_bind: Option<IpAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: None,
            advertise: IpAddr::from([127, 0, 0, 1]),
            coordinators: vec!["http://127.0.0.1:7400".into()],
            cluster_id: "drover".into(),
            gossip_listen: SocketAddr::from(([0, 0, 0, 0], 7402)),
            gossip_seeds: Vec::new(),
            gossip_interval: Duration::from_millis(250),
            labels: BTreeMap::new(),
            reserved_cpu: "250m".into(),
            reserved_memory: "256Mi".into(),
            data_dir: PathBuf::from("/var/lib/drover/agent"),
            engine: None,
            reconcile_interval: Duration::from_secs(1),
            proxy_bind: None,
            link_source: None,
            drain_delay: Duration::from_secs(3),
        }
    }
}

const ENV_KEYS: [&str; 16] = [
    "link_source",
    "drain_delay",
    "proxy_bind",
    "node_id",
    "advertise",
    "coordinators",
    "cluster_id",
    "gossip_listen",
    "gossip_seeds",
    "gossip_interval",
    "labels",
    "reserved_cpu",
    "reserved_memory",
    "data_dir",
    "engine",
    "reconcile_interval",
];

pub use drover_daemon::ConfigError;

/// The node id could not be found.
#[derive(Debug, thiserror::Error)]
#[error("no node_id configured and /etc/machine-id is unreadable: {0}")]
pub struct NodeIdError(std::io::Error);

impl Config {
    /// Loads the configuration. `path` is the file named on the command line, if any;
    /// without one the default path is read when it exists. `overrides` holds the flags.
    pub fn load(
        path: Option<&Path>,
        overrides: Serialized<impl Serialize>,
    ) -> Result<Config, ConfigError> {
        drover_daemon::load_config(DEFAULT_CONFIG_PATH, path, &ENV_KEYS, overrides)
    }

    /// The node id: configured, or the host's machine-id.
    pub fn resolve_node_id(&self) -> Result<String, NodeIdError> {
        if let Some(id) = &self.node_id {
            return Ok(id.clone());
        }
        std::fs::read_to_string("/etc/machine-id")
            .map(|s| s.trim().to_string())
            .map_err(NodeIdError)
    }
}
