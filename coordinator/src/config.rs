//! The coordinator's configuration: defaults, then the TOML file, then `DROVER_*` environment
//! variables, then command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::Serialized;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default path of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/drover/coordinator.toml";

/// Coordinator settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the gRPC API (operators and agents).
    pub listen: SocketAddr,
    /// Address of the HTTP side: /healthz, /readyz (no token) and /metrics (Prometheus;
    /// a token of the read role or above), over TLS with the API's certificate unless
    /// `insecure`; `None` serves none.
    pub http_listen: Option<SocketAddr>,
    /// Directory of the state file.
    pub data_dir: PathBuf,
    /// Name of the cluster; agents of another cluster are refused.
    pub cluster_id: String,
    /// Time between reconcile passes when nothing wakes the loop earlier.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub reconcile_interval: Duration,
    /// How long open requests get to finish on shutdown.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shutdown_grace: Duration,
    /// UDP address gossip listens on; `None` keeps the coordinator out of gossip.
    pub gossip_listen: Option<SocketAddr>,
    /// Address peers reach this member's gossip on; default: derived from the listen
    /// addresses.
    #[schemars(example = "10.0.0.2:7402")]
    pub gossip_advertise: Option<SocketAddr>,
    /// Gossip peers to join through (`host:port`).
    pub gossip_seeds: Vec<String>,
    /// Time between gossip rounds.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub gossip_interval: Duration,
    /// How long a down node still counts in the mass-failure guard (which holds back
    /// rescheduling when most nodes look down at once); a node down longer, or one that
    /// never joined gossip, no longer counts. `drover node rm` removes a down node for good.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub down_node_expiry: Duration,
    /// How often autoscalers decide (Kubernetes' HPA sync period is 15 s).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub autoscale_interval: Duration,
    /// IPv4 network services' cluster addresses come from: every node makes each service's
    /// address reachable on its ports (its 10th address is the cluster's DNS). A service
    /// keeps its address when this changes.
    #[schemars(with = "String", example = "10.43.0.0/16")]
    pub service_network: ServiceNetwork,
    /// DNS domain of services' names: every agent answers `NAME.NAMESPACE.svc.DOMAIN` (and
    /// the shorter forms) on the service network's 10th address, which containers get as
    /// their resolver.
    #[schemars(with = "String", example = "edge.internal")]
    pub cluster_domain: ClusterDomain,
    /// Bounds on what requests may ask for; set only the keys to change, e.g. `limits = {
    /// replicas_per_service = 50000 }`. replicas_per_service, services, allocations (the
    /// replicas of all services together), env_bytes (one service's environment, command and args: Linux passes at most 2 MiB to a program), args
    /// (command and args of one service), image_length, request_bytes (the largest gRPC
    /// request; an apply carries all its manifests).
    pub limits: Limits,
    /// Lifetime of the certificates nodes get when they join; agents renew theirs at a
    /// random point between 50 % and 80 % of it.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub node_cert_ttl: Duration,
    /// Lifetime of the certificates the drover command gets for an operator token.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub operator_cert_ttl: Duration,
    /// No TLS, no tokens: anyone who reaches the API may change the cluster. For tests only;
    /// a warning says so at start.
    pub insecure: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 7400)),
            http_listen: Some(SocketAddr::from(([0, 0, 0, 0], 7401))),
            data_dir: PathBuf::from("/var/lib/drover"),
            cluster_id: "drover".into(),
            reconcile_interval: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(5),
            gossip_listen: Some(SocketAddr::from(([0, 0, 0, 0], 7402))),
            gossip_advertise: None,
            gossip_seeds: Vec::new(),
            gossip_interval: Duration::from_millis(250),
            down_node_expiry: Duration::from_secs(600),
            autoscale_interval: Duration::from_secs(15),
            service_network: ServiceNetwork::default(),
            cluster_domain: ClusterDomain::default(),
            limits: Limits::default(),
            node_cert_ttl: Duration::from_secs(90 * 24 * 3600),
            operator_cert_ttl: Duration::from_secs(12 * 3600),
            insecure: false,
        }
    }
}

/// Keys that `DROVER_<KEY>` environment variables may set.
const ENV_KEYS: [&str; 14] = [
    "insecure",
    "http_listen",
    "autoscale_interval",
    "service_network",
    "cluster_domain",
    "listen",
    "data_dir",
    "cluster_id",
    "reconcile_interval",
    "shutdown_grace",
    "gossip_listen",
    "gossip_advertise",
    "gossip_seeds",
    "gossip_interval",
];

pub use drover_daemon::ConfigError;

use crate::cluster_ips::{ClusterDomain, ServiceNetwork};
use crate::limits::Limits;
use crate::state::Settings;
use crate::store::{RedbStore, SealedStore, SecretsKey, StoreError};

impl Config {
    /// The default config file the package installs at [`DEFAULT_CONFIG_PATH`]: every option
    /// with its doc comment and default, commented out.
    pub fn default_file() -> Result<String, drover_daemon::RenderError> {
        drover_daemon::render_default_config::<Config>("drover-coordinator", DEFAULT_CONFIG_PATH)
    }

    /// Loads the configuration. `path` is the file named on the command line, if any;
    /// without one the default path is read when it exists. `overrides` holds the flags.
    pub fn load(
        path: Option<&Path>,
        overrides: Serialized<impl Serialize>,
    ) -> Result<Config, ConfigError> {
        drover_daemon::load_config(DEFAULT_CONFIG_PATH, path, &ENV_KEYS, overrides)
    }

    /// The gossip address peers are told: configured, or the gossip or gRPC listen IP when
    /// specific, or loopback (single-host use only).
    pub fn gossip_advertise(&self, listen: SocketAddr) -> SocketAddr {
        if let Some(addr) = self.gossip_advertise {
            return addr;
        }
        let ip = [listen.ip(), self.listen.ip()]
            .into_iter()
            .find(|ip| !ip.is_unspecified())
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        SocketAddr::new(ip, listen.port())
    }

    /// The settings the coordinator's decisions follow.
    pub fn settings(&self) -> Settings {
        Settings {
            limits: self.limits,
            down_node_expiry_ms: u64::try_from(self.down_node_expiry.as_millis())
                .unwrap_or(u64::MAX),
            service_network: self.service_network,
            cluster_domain: self.cluster_domain.clone(),
            autoscale_interval_ms: u64::try_from(self.autoscale_interval.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        }
    }

    /// Path of the store file.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("coordinator.redb")
    }

    /// Path of the key that seals secret values in the store (back it up apart from it).
    pub fn secrets_key_path(&self) -> PathBuf {
        self.data_dir.join("secrets.key")
    }

    /// The store this configuration places: the redb file under the data dir, its secret
    /// values sealed with the data dir's key. Every way of running a coordinator opens it
    /// here.
    pub fn open_store(&self) -> Result<SealedStore<RedbStore>, StoreError> {
        let store = RedbStore::open(&self.store_path())?;
        Ok(SealedStore::new(
            store,
            SecretsKey::load_or_create(&self.secrets_key_path())?,
        ))
    }
}

#[cfg(test)]
// figment's Jail closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct NoFlags {}

    #[test]
    fn file_then_env_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "listen = \"127.0.0.1:9000\"\ndata_dir = \"/tmp/a\"\nreconcile_interval = \"5s\"\n",
            )?;
            jail.set_env("DROVER_DATA_DIR", "/tmp/b");
            #[derive(Serialize)]
            struct Flags {
                cluster_id: String,
            }
            let config = Config::load(
                Some(Path::new("c.toml")),
                Serialized::globals(Flags {
                    cluster_id: "edge".into(),
                }),
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(config.listen, "127.0.0.1:9000".parse().expect("addr"));
            assert_eq!(config.data_dir, PathBuf::from("/tmp/b"));
            assert_eq!(config.cluster_id, "edge");
            assert_eq!(config.reconcile_interval, Duration::from_secs(5));
            Ok(())
        });
    }

    /// The file the packages install must be exactly what the code renders.
    #[test]
    fn packaged_config_file_is_the_generated_one() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config/coordinator.toml");
        let committed =
            std::fs::read_to_string(&path).expect("read packaging/config/coordinator.toml");
        let generated = Config::default_file().expect("render the default config");
        assert!(
            committed == generated,
            "{} differs from the config structs; regenerate it with `cargo run -p \
             drover-coordinator -- --print-default-config > packaging/config/coordinator.toml`",
            path.display()
        );
    }

    /// Uncommenting every option yields a valid file holding the defaults and the example.
    #[test]
    fn uncommented_default_file_loads() {
        let text = Config::default_file().expect("render");
        let uncommented = drover_daemon::uncomment_options(&text);
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", &uncommented)?;
            let mut loaded =
                Config::load(Some(Path::new("c.toml")), Serialized::globals(NoFlags {}))
                    .map_err(|e| e.to_string())?;
            assert!(loaded.gossip_advertise.take().is_some());
            assert_eq!(loaded, Config::default());
            Ok(())
        });
    }

    #[test]
    fn unknown_key_and_missing_file_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "lisen = \"127.0.0.1:9000\"\n")?;
            let err = Config::load(Some(Path::new("c.toml")), Serialized::globals(NoFlags {}))
                .expect_err("typo in key");
            assert!(err.to_string().contains("lisen"), "{err}");
            let err = Config::load(
                Some(Path::new("nope.toml")),
                Serialized::globals(NoFlags {}),
            )
            .expect_err("missing file");
            assert!(err.to_string().contains("nope.toml"), "{err}");
            Ok(())
        });
    }
}
