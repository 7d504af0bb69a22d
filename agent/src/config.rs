//! The agent's configuration: defaults, then the TOML file, then `DROVER_*` environment
//! variables, then command-line flags.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::Serialized;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default path of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/drover/agent.toml";

/// Agent settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Stable node id; default: the host's machine-id.
    #[schemars(example = "web-3")]
    pub node_id: Option<String>,
    /// Address other nodes and clients reach this node on; published ports bind to it.
    pub advertise: IpAddr,
    /// Coordinator gRPC URLs, tried in turn.
    pub coordinators: Vec<String>,
    /// Name of the cluster to join.
    pub cluster_id: String,
    /// UDP address gossip listens on (7403 by default, so that it never meets a
    /// coordinator's 7402 on the same host).
    pub gossip_listen: SocketAddr,
    /// Gossip peers to join through (`host:port`).
    pub gossip_seeds: Vec<String>,
    /// Time between gossip rounds; failure detection takes about 5–8 of them.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub gossip_interval: Duration,
    /// Node labels, matched by placement constraints, e.g. `{ zone = "eu-1", disk = "ssd" }`.
    pub labels: BTreeMap<String, String>,
    /// CPU kept for the host, e.g. "500m".
    pub reserved_cpu: String,
    /// Memory kept for the host, e.g. "512Mi".
    pub reserved_memory: String,
    /// Directory of the agent's own state (gossip generation).
    pub data_dir: PathBuf,
    /// Container engine endpoint, e.g. `unix:///run/podman/podman.sock`; default: Docker's
    /// (`DOCKER_HOST`, else `unix:///var/run/docker.sock`).
    #[schemars(example = "unix:///run/podman/podman.sock")]
    pub engine: Option<String>,
    /// Time between reconcile passes when nothing wakes the loop earlier.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub reconcile_interval: Duration,
    /// Time between two samples of every container's CPU and memory (read from its cgroup)
    /// and the node's, which the coordinator gets for autoscaling; not 0.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub usage_interval: Duration,
    /// How long a replica being removed keeps serving its open connections (while getting
    /// no new ones) before its container is stopped.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub drain_delay: Duration,
    /// Address of the HTTP side: /healthz, /readyz (no token) and /metrics (Prometheus; a
    /// token of the read role or above), over TLS with the node's certificate (verified as
    /// `agent.drover` against the cluster CA) unless `insecure`; `None` serves none.
    pub http_listen: Option<SocketAddr>,
    /// Source address of the connection to the coordinator; default: the kernel's choice.
    #[schemars(example = "10.0.0.13")]
    pub link_source: Option<IpAddr>,
    /// Address the service proxy listens on (each service's published port); default: the
    /// advertise address.
    #[schemars(example = "0.0.0.0")]
    pub proxy_bind: Option<IpAddr>,
    /// Make every service's cluster address reachable on this host: each is added to `lo`
    /// (labelled `lo:drover`; needs CAP_NET_ADMIN) and the proxy listens on it. Turn off
    /// only where another agent on the same host already does it.
    pub cluster_ips: bool,
    /// Also listen on the proxy address on each ClusterIP service's own port, as `drover
    /// dev` does so that the host reaches the seed's service at 127.0.0.1:80. A ClusterIP
    /// service is otherwise not on node addresses.
    pub cluster_services_on_node: bool,
    /// Move proxied bytes with splice(2) instead of copying them: a half to two-thirds of
    /// the proxy's CPU per byte, but lower throughput on loopback and two pipes per
    /// connection (docs/benchmarks.md).
    pub proxy_splice: bool,
    /// Largest copy buffer of the service proxy per connection and direction, in bytes (at
    /// least 8192). Buffers start at 8 KiB and grow only while reads fill them, so only bulk
    /// transfers reach it; smaller saves memory per bulk connection, larger saves CPU per
    /// byte (docs/benchmarks.md).
    pub proxy_buffer_size: usize,
    /// How long a stopping agent's keeper waits for the next agent to take the proxy's
    /// listeners and open connections, so that a restart or an upgrade keeps established
    /// connections and queues new ones instead of refusing them. Without a next agent, the
    /// listeners close then and open connections go on for at most 30 s. 0 turns the
    /// hand-off off: a stopping agent drains its connections itself.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub handoff_wait: Duration,
    /// Join token (`DRV1-…`, from `drover-coordinator token create --role agent`), used once
    /// to get this node's certificate; later starts use the certificate kept in data_dir.
    #[schemars(example = "DRV1-<CA digest>-<id>.<secret>")]
    pub token: Option<String>,
    /// File holding the join token; default: the coordinator's agent.token on this host
    /// (/var/lib/drover/agent.token), when it exists.
    #[schemars(example = "/etc/drover/agent.token")]
    pub token_file: Option<PathBuf>,
    /// No TLS, no certificate: only an insecure coordinator answers. For tests only; a
    /// warning says so at start.
    pub insecure: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: None,
            advertise: IpAddr::from([127, 0, 0, 1]),
            coordinators: vec!["http://127.0.0.1:7400".into()],
            cluster_id: "drover".into(),
            gossip_listen: SocketAddr::from(([0, 0, 0, 0], 7403)),
            gossip_seeds: Vec::new(),
            gossip_interval: Duration::from_millis(250),
            labels: BTreeMap::new(),
            reserved_cpu: "250m".into(),
            reserved_memory: "256Mi".into(),
            data_dir: PathBuf::from("/var/lib/drover/agent"),
            engine: None,
            reconcile_interval: Duration::from_secs(1),
            usage_interval: crate::usage::DEFAULT_INTERVAL,
            proxy_bind: None,
            proxy_splice: false,
            cluster_ips: true,
            cluster_services_on_node: false,
            proxy_buffer_size: crate::proxy::ProxyConfig::default().buffer_size,
            link_source: None,
            http_listen: Some(SocketAddr::from(([0, 0, 0, 0], 7404))),
            drain_delay: Duration::from_secs(3),
            handoff_wait: Duration::from_secs(10),
            token: None,
            token_file: None,
            insecure: false,
        }
    }
}

const ENV_KEYS: [&str; 26] = [
    "insecure",
    "http_listen",
    "handoff_wait",
    "cluster_ips",
    "cluster_services_on_node",
    "token",
    "token_file",
    "link_source",
    "proxy_buffer_size",
    "drain_delay",
    "proxy_bind",
    "proxy_splice",
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
    "usage_interval",
];

pub use drover_daemon::ConfigError;

/// The node id could not be found.
#[derive(Debug, thiserror::Error)]
#[error("no node_id configured and /etc/machine-id is unreadable: {0}")]
pub struct NodeIdError(std::io::Error);

/// Where a coordinator installed on this host keeps the join token for its agents.
pub const LOCAL_AGENT_TOKEN_FILE: &str = "/var/lib/drover/agent.token";

impl Config {
    /// The join token: `token`, else the one in `token_file`, else the local coordinator's.
    pub fn join_token(&self) -> Result<Option<drover_security::Token>, String> {
        let (text, from) = if let Some(token) = &self.token {
            (token.clone(), "token".to_string())
        } else {
            let path = self
                .token_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(LOCAL_AGENT_TOKEN_FILE));
            match std::fs::read_to_string(&path) {
                Ok(text) => (text, path.display().to_string()),
                // The local coordinator's file is only a convenience: absent or not ours to
                // read (it belongs to the coordinator's user) means no token from there.
                Err(_) if self.token_file.is_none() => return Ok(None),
                Err(e) => return Err(format!("token_file {}: {e}", path.display())),
            }
        };
        text.parse()
            .map(Some)
            .map_err(|e| format!("the join token from {from}: {e}"))
    }

    /// The default config file the package installs at [`DEFAULT_CONFIG_PATH`]: every option
    /// with its doc comment and default, commented out.
    pub fn default_file() -> Result<String, drover_daemon::RenderError> {
        drover_daemon::render_default_config::<Config>("drover-agent", DEFAULT_CONFIG_PATH)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct NoFlags {}

    /// The file the packages install must be exactly what the code renders.
    #[test]
    fn packaged_config_file_is_the_generated_one() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config/agent.toml");
        let committed = std::fs::read_to_string(&path).expect("read packaging/config/agent.toml");
        let generated = Config::default_file().expect("render the default config");
        assert!(
            committed == generated,
            "{} differs from the config structs; regenerate it with \
             `cargo run -p drover-agent -- --print-default-config > packaging/config/agent.toml`",
            path.display()
        );
    }

    /// Uncommenting every option yields a valid file holding the defaults and the examples.
    #[test]
    fn uncommented_default_file_loads() {
        let text = Config::default_file().expect("render");
        let uncommented = drover_daemon::uncomment_options(&text);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, uncommented).expect("write");
        let mut loaded = Config::load(Some(&path), Serialized::globals(NoFlags {})).expect("load");
        assert_eq!(loaded.node_id.take().as_deref(), Some("web-3"));
        assert!(loaded.engine.take().is_some());
        assert!(loaded.link_source.take().is_some());
        assert!(loaded.proxy_bind.take().is_some());
        assert!(loaded.token.take().is_some());
        assert!(loaded.token_file.take().is_some());
        assert_eq!(loaded, Config::default());
    }
}
