//! The node's credentials: its certificate and key, the cluster's CA bundle and the gossip
//! keyring, kept in the data dir (`node.crt`, `node.key` 0600, `ca.crt`, `gossip.keys`
//! 0600). The first start joins with a token (the key is made here and never sent); later
//! starts use what is kept, so an agent restarts without its coordinator. The certificate
//! is renewed over mTLS at a random point between 50 % and 80 % of its validity, so a fleet
//! does not renew at once; a renewal changes nothing for running sessions and routes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_membership::seal::unix_ms_now as now_unix_ms;
use drover_proto::pb;
use drover_proto::pb::agent_link_client::AgentLinkClient;
use drover_security::client::{self, ConnectError};
use drover_security::files::{read_optional, write_atomic};
use drover_security::transport::{self, ClientIdentity, ClientTls, Trust};
use drover_security::{KeyAndCsr, Peer, PeerCert, Token};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::Error;

const CERT_FILE: &str = "node.crt";
const KEY_FILE: &str = "node.key";
const CA_FILE: &str = "ca.crt";
const GOSSIP_KEYS_FILE: &str = "gossip.keys";

/// What the node proves itself with.
#[derive(Debug, Clone)]
pub struct NodeCredentials {
    /// Certificate and key.
    pub identity: ClientIdentity,
    /// The cluster's CA bundle.
    pub ca_bundle_pem: String,
    /// The certificate's validity.
    pub cert: PeerCert,
    /// The gossip keyring, base64, the key in use first.
    pub gossip_keys: Vec<String>,
}

impl NodeCredentials {
    /// TLS for connecting to the coordinator as this node.
    pub fn tls(&self, source: Option<std::net::IpAddr>) -> Result<ClientTls, Error> {
        ClientTls::new(
            &Trust::Bundle(self.ca_bundle_pem.clone()),
            Some(&self.identity),
        )
        .map(|tls| tls.with_source(source))
        .map_err(|e| Error::Credentials(e.to_string()))
    }

    /// When to renew: a random point between 50 % and 80 % of the validity.
    pub fn renew_at_unix_ms(&self) -> u64 {
        let start = self.cert.not_before_unix_ms;
        let life = self.cert.not_after_unix_ms.saturating_sub(start);
        let share: f64 = rand::random_range(0.5..0.8);
        start + (life as f64 * share) as u64
    }
}

fn path(dir: &Path, file: &str) -> PathBuf {
    dir.join(file)
}

fn credentials_error(e: impl std::fmt::Display) -> Error {
    Error::Credentials(e.to_string())
}

/// The credentials kept in `dir`, if any, for `node_id`.
pub fn load(dir: &Path, node_id: &str) -> Result<Option<NodeCredentials>, Error> {
    let read = |file| read_optional(&path(dir, file)).map_err(credentials_error);
    let (Some(cert_pem), Some(key_pem), Some(ca_bundle_pem)) =
        (read(CERT_FILE)?, read(KEY_FILE)?, read(CA_FILE)?)
    else {
        return Ok(None);
    };
    let cert = PeerCert::from_pem(&cert_pem).map_err(credentials_error)?;
    if cert.peer != Peer::Node(node_id.to_string()) {
        return Err(Error::Credentials(format!(
            "{} is the certificate of {}, but this agent is node {node_id:?}: remove {CERT_FILE}, \
             {KEY_FILE} and {CA_FILE} from {} and join again with a token",
            path(dir, CERT_FILE).display(),
            cert.peer,
            dir.display()
        )));
    }
    let gossip_keys = read(GOSSIP_KEYS_FILE)?
        .map(|text| {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(NodeCredentials {
        identity: ClientIdentity { cert_pem, key_pem },
        ca_bundle_pem,
        cert,
        gossip_keys,
    }))
}

/// Keeps `credentials` in `dir`: the key first, so a crash never leaves a certificate
/// without its key.
pub fn save(dir: &Path, credentials: &NodeCredentials) -> Result<(), Error> {
    let write = |file, text: &str, secret| {
        write_atomic(&path(dir, file), text.as_bytes(), secret).map_err(credentials_error)
    };
    write(KEY_FILE, &credentials.identity.key_pem, true)?;
    write(CERT_FILE, &credentials.identity.cert_pem, false)?;
    write(CA_FILE, &credentials.ca_bundle_pem, false)?;
    save_gossip_keys(dir, &credentials.gossip_keys)
}

/// Keeps the gossip keyring in `dir`.
pub fn save_gossip_keys(dir: &Path, keys: &[String]) -> Result<(), Error> {
    let mut text = keys.join("\n");
    text.push('\n');
    write_atomic(&path(dir, GOSSIP_KEYS_FILE), text.as_bytes(), true).map_err(credentials_error)
}

/// The kept credentials, or new ones from a join with `token` (retried, with a log line
/// each time, until a coordinator answers or `shutdown`). A refused token is an error:
/// retrying would not change the answer.
pub async fn obtain(
    dir: &Path,
    node_id: &str,
    token: Option<&Token>,
    coordinators: &[String],
    shutdown: &CancellationToken,
) -> Result<NodeCredentials, Error> {
    if let Some(kept) = load(dir, node_id)? {
        let now = now_unix_ms();
        if kept.cert.not_after_unix_ms > now {
            return Ok(kept);
        }
        warn!(node = %node_id, "the node certificate has expired; joining again");
    }
    let Some(token) = token else {
        return Err(Error::Credentials(format!(
            "node {node_id:?} has no certificate yet: give the agent a join token (token = \"DRV1-...\" \
             in agent.toml, --token, or token_file), made with `drover-coordinator token create --role agent`"
        )));
    };
    let mut attempt = 0usize;
    loop {
        let address = &coordinators[attempt % coordinators.len()];
        attempt += 1;
        match client::join(address, token, Some(node_id)).await {
            Ok(joined) => {
                let cert =
                    PeerCert::from_pem(&joined.identity.cert_pem).map_err(credentials_error)?;
                let credentials = NodeCredentials {
                    identity: joined.identity,
                    ca_bundle_pem: joined.ca_bundle_pem,
                    cert,
                    gossip_keys: joined.gossip_keys,
                };
                save(dir, &credentials)?;
                info!(node = %node_id, coordinator = %address, serial = %credentials.cert.serial, "joined the cluster");
                return Ok(credentials);
            }
            Err(ConnectError::Refused { message, .. }) => {
                return Err(Error::Credentials(format!(
                    "the coordinator at {address} refused node {node_id:?}: {message}"
                )));
            }
            Err(e) => {
                warn!(node = %node_id, error = %e, "cannot join yet; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Err(Error::Credentials("stopped before joining".into())),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Keeps the gossip keyring equal to what the coordinator last sent, and kept in `dir` so
/// a restart without the coordinator still gossips, until `shutdown`.
pub async fn follow_gossip_keys(
    handle: drover_membership::KeyringHandle,
    mut sent: watch::Receiver<Vec<String>>,
    dir: PathBuf,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = sent.changed() => if changed.is_err() { return },
        }
        let keys = sent.borrow_and_update().clone();
        match drover_membership::Keyring::from_base64(&keys) {
            Ok(keyring) if *handle.get() != keyring => {
                handle.set(keyring);
                if let Err(e) = save_gossip_keys(&dir, &keys) {
                    warn!(error = %e, "cannot keep the new gossip keyring; using it until restart");
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "an unusable gossip keyring from the coordinator ignored"),
        }
    }
}

/// Renews the certificate before it ends, for as long as the agent runs; each new one is
/// kept and published on `current` (new sessions use it; open ones go on). A CA bundle
/// from the coordinator that differs from the kept one (a CA rotation's step) makes it
/// renew at once, so that its certificate is signed by the CA in force.
pub async fn renew_forever(
    dir: PathBuf,
    coordinators: Vec<String>,
    source: Option<std::net::IpAddr>,
    current: watch::Sender<Arc<NodeCredentials>>,
    bundles: watch::Receiver<Option<String>>,
    shutdown: CancellationToken,
) {
    let mut attempt = 0usize;
    let mut bundles = Some(bundles);
    loop {
        let credentials = current.borrow().clone();
        let changed_ca = bundles
            .as_ref()
            .and_then(|b| b.borrow().clone())
            .is_some_and(|bundle| bundle != credentials.ca_bundle_pem);
        if changed_ca {
            info!("the cluster's CA changed: renewing the node certificate now");
        } else {
            let wait = credentials.renew_at_unix_ms().saturating_sub(now_unix_ms());
            let bundle_changed = async {
                match bundles.as_mut() {
                    Some(b) => b.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(wait)) => {}
                open = bundle_changed => {
                    if !open {
                        // The link is gone (shutting down): renew on time only.
                        bundles = None;
                    }
                    continue;
                }
            }
        }
        let address = &coordinators[attempt % coordinators.len()];
        attempt += 1;
        match renew(address, &credentials, source).await {
            Ok(renewed) => {
                if let Err(e) = save(&dir, &renewed) {
                    warn!(error = %e, "cannot keep the renewed certificate; using it until restart");
                }
                info!(serial = %renewed.cert.serial, coordinator = %address, "node certificate renewed");
                current.send_replace(Arc::new(renewed));
            }
            Err(e) => {
                warn!(coordinator = %address, error = %e, "certificate renewal failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    }
}

async fn renew(
    address: &str,
    credentials: &NodeCredentials,
    source: Option<std::net::IpAddr>,
) -> Result<NodeCredentials, Error> {
    let Peer::Node(node) = &credentials.cert.peer else {
        return Err(Error::Credentials(
            "the kept certificate is not a node's".into(),
        ));
    };
    let key = KeyAndCsr::generate(&credentials.cert.peer).map_err(credentials_error)?;
    let endpoint = transport::endpoint(address)
        .map_err(credentials_error)?
        .connect_timeout(client::CONNECT_TIMEOUT);
    let channel = credentials
        .tls(source)?
        .connect(endpoint)
        .await
        .map_err(|e| Error::Credentials(format!("connect {address}: {e}")))?;
    let response = AgentLinkClient::new(channel)
        .renew_certificate(pb::RenewRequest {
            csr_pem: key.csr_pem,
        })
        .await
        .map_err(|s| {
            Error::Credentials(format!("renewal of node {node:?} refused: {}", s.message()))
        })?
        .into_inner();
    let cert = PeerCert::from_pem(&response.certificate_pem).map_err(credentials_error)?;
    Ok(NodeCredentials {
        identity: ClientIdentity {
            cert_pem: response.certificate_pem,
            key_pem: key.key_pem,
        },
        ca_bundle_pem: response.ca_bundle_pem,
        cert,
        gossip_keys: credentials.gossip_keys.clone(),
    })
}

/// Joins again with the token when the coordinator refuses the node's certificate as
/// unknown (its state was reset or restored from before the node joined).
#[derive(Debug)]
pub struct Rejoin {
    /// The agent's data dir.
    pub dir: PathBuf,
    /// This node.
    pub node_id: String,
    /// Where the join token comes from (read again on every attempt: a coordinator whose
    /// state was reset made new tokens, and its file on this host has the new one).
    pub config: crate::config::Config,
    /// Where new credentials go (the link dials with the newest).
    pub current: watch::Sender<Arc<NodeCredentials>>,
}

impl Rejoin {
    /// One attempt at `address`; failures are logged, the link retries later.
    pub async fn run(&self, address: &str) {
        let token = match self.config.join_token() {
            Ok(Some(token)) => token,
            Ok(None) => {
                warn!(node = %self.node_id, "the coordinator does not know this node's certificate and no join token is configured: give the agent a new token");
                return;
            }
            Err(e) => {
                warn!(node = %self.node_id, error = %e, "cannot read the join token");
                return;
            }
        };
        match client::join(address, &token, Some(&self.node_id)).await {
            Ok(joined) => match PeerCert::from_pem(&joined.identity.cert_pem) {
                Ok(cert) => {
                    let credentials = NodeCredentials {
                        identity: joined.identity,
                        ca_bundle_pem: joined.ca_bundle_pem,
                        cert,
                        gossip_keys: joined.gossip_keys,
                    };
                    if let Err(e) = save(&self.dir, &credentials) {
                        warn!(error = %e, "cannot keep the new certificate; using it until restart");
                    }
                    info!(node = %self.node_id, coordinator = %address, "the coordinator did not know this node's certificate: joined again with the token");
                    self.current.send_replace(Arc::new(credentials));
                }
                Err(e) => warn!(error = %e, "the coordinator sent an unreadable certificate"),
            },
            Err(e) => warn!(node = %self.node_id, error = %e, "joining again failed"),
        }
    }
}
