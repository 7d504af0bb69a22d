//! Who may do what: the cluster CA at run time, tokens, the certificates nodes join with,
//! and the caller behind every request.
//!
//! Decisions here are pure over the state (tokens and certificate records live in the store,
//! [`crate::store::credentials`]); [`Authority`] holds the CA that signs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_proto::pb;
use drover_security::transport::ServerTls;
use drover_security::{ClusterCa, Peer, PeerCert, Role, Token};
use tracing::info;

use crate::changes::ChangeSet;
use crate::error::Error;
use crate::events;
use crate::state::ClusterState;
use crate::store::Write;
use crate::store::credentials::{self, CertRecord, Credential, TokenRecord};

/// File under the data dir holding the admin token made at first start (0600).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// File under the data dir holding an agent join token for the agents of this host (0600).
pub const AGENT_TOKEN_FILE: &str = "agent.token";
/// Name of the token that made the bootstrap tokens.
const BOOTSTRAP: &str = "bootstrap";

/// The one who makes a request, authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's id.
    pub token_id: String,
    /// The token's name, as events record it.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

impl Caller {
    /// The caller of an insecure coordinator (tests only): may do everything.
    pub fn insecure() -> Caller {
        Caller {
            token_id: String::new(),
            name: "insecure".into(),
            role: Role::Admin,
        }
    }

    /// Whether the caller sees secret values in specs (the admin role); others see their
    /// names only.
    pub fn sees_secrets(&self) -> bool {
        self.role.allows(Role::Admin)
    }

    /// Refuses unless the caller's role allows `needed`; the message names both.
    pub fn require(&self, needed: Role, what: &str) -> Result<(), Error> {
        if self.role.allows(needed) {
            return Ok(());
        }
        Err(Error::Forbidden(format!(
            "{what} needs the {needed} role; token {:?} has the {} role",
            self.name, self.role
        )))
    }
}

/// What a request carries to prove who sends it.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The verified client certificate, if one was presented.
    pub peer: Option<PeerCert>,
    /// The bearer token, if one was sent.
    pub bearer: Option<String>,
    /// Came over the HTTP side (the web UI), where the token alone proves the caller: a
    /// browser has no client certificate to bind it to.
    pub http: bool,
}

impl Credentials {
    /// The credentials of a gRPC request: its client certificate and `authorization` header.
    pub fn of<T>(request: &tonic::Request<T>) -> Credentials {
        let peer = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| PeerCert::from_der(c)))
            .and_then(Result::ok);
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string());
        Credentials {
            peer,
            bearer,
            http: false,
        }
    }

    /// The credentials of an HTTP request: its bearer token alone.
    pub fn http(bearer: Option<String>) -> Credentials {
        Credentials {
            peer: None,
            bearer,
            http: true,
        }
    }
}

/// The token record `token` proves, if it is stored, unexpired and its secret matches.
fn token_record<'a>(
    state: &'a ClusterState,
    token: &Token,
    now_unix_ms: u64,
) -> Result<&'a TokenRecord, Error> {
    let unknown = || Error::Unauthenticated(format!("token {} is unknown or revoked", token.id));
    let Some(Credential::Token(record)) = state
        .stored
        .credentials
        .get(&credentials::token_key(&token.id))
    else {
        return Err(unknown());
    };
    match token.check_stored(&record.secret_sha256, record.expires_unix_ms, now_unix_ms) {
        Ok(()) => Ok(record),
        Err(drover_security::StoredMismatch::Unknown) => Err(unknown()),
        Err(drover_security::StoredMismatch::Expired) => Err(Error::Unauthenticated(format!(
            "token {:?} ({}) has expired",
            record.name, record.id
        ))),
    }
}

fn parse_token(text: &str) -> Result<Token, Error> {
    text.parse::<Token>()
        .map_err(|e| Error::Unauthenticated(e.to_string()))
}

fn role_of(record: &TokenRecord) -> Result<Role, Error> {
    record
        .role
        .parse()
        .map_err(|e: String| Error::Internal(format!("token {}: {e}", record.id)))
}

/// Authenticates an operator: a certificate issued for its token and the token itself.
pub fn authenticate(
    state: &ClusterState,
    credentials: &Credentials,
    now_unix_ms: u64,
) -> Result<Caller, Error> {
    let Some(bearer) = &credentials.bearer else {
        return Err(Error::Unauthenticated(
            "no token: pass --token, set DROVER_TOKEN, or run `drover login`".into(),
        ));
    };
    let token = parse_token(bearer)?;
    match &credentials.peer {
        Some(PeerCert {
            peer: Peer::Operator(id),
            ..
        }) if *id == token.id => {}
        Some(PeerCert { peer, .. }) => {
            return Err(Error::Unauthenticated(format!(
                "the client certificate is for {peer}, not for token {}",
                token.id
            )));
        }
        None => {
            return Err(Error::Unauthenticated(
                "no client certificate: operators connect with a certificate they get for \
                 their token (the drover command does this itself)"
                    .into(),
            ));
        }
    }
    let record = token_record(state, &token, now_unix_ms)?;
    let role = role_of(record)?;
    if role == Role::Agent {
        return Err(Error::Forbidden(format!(
            "token {:?} is an agent join token; the operator API needs an admin, operator or \
             read token",
            record.name
        )));
    }
    Ok(Caller {
        token_id: record.id.clone(),
        name: record.name.clone(),
        role,
    })
}

/// Authenticates a bearer token alone (the HTTP side: Prometheus and browsers present no
/// client certificate), for a caller of `needed` role or above; `what` names the request.
pub fn authenticate_bearer(
    state: &ClusterState,
    bearer: Option<&str>,
    needed: Role,
    what: &str,
    now_unix_ms: u64,
) -> Result<Caller, Error> {
    let Some(bearer) = bearer else {
        return Err(Error::Unauthenticated(format!(
            "{what} needs a token: send `Authorization: Bearer TOKEN` (a read token will do)"
        )));
    };
    let token = parse_token(bearer.trim())?;
    let record = token_record(state, &token, now_unix_ms)?;
    let role = role_of(record)?;
    if role == Role::Agent {
        return Err(Error::Forbidden(format!(
            "token {:?} is an agent join token; {what} needs an admin, operator or read token",
            record.name
        )));
    }
    let caller = Caller {
        token_id: record.id.clone(),
        name: record.name.clone(),
        role,
    };
    caller.require(needed, what)?;
    Ok(caller)
}

/// Checks that a node's session comes with a certificate the CA issued for that node and
/// that is neither revoked nor expired.
pub fn check_node_certificate(
    state: &ClusterState,
    peer: Option<&PeerCert>,
    node: &str,
    now_unix_ms: u64,
) -> Result<(), Error> {
    let Some(cert) = peer else {
        return Err(Error::Unauthenticated(format!(
            "node {node:?} connected without a certificate: join with a token first"
        )));
    };
    match &cert.peer {
        Peer::Node(id) if id == node => {}
        other => {
            return Err(Error::Unauthenticated(format!(
                "a session for node {node:?} presented a certificate for {other}"
            )));
        }
    }
    match state
        .stored
        .credentials
        .get(&credentials::cert_key(&cert.serial))
    {
        Some(Credential::Certificate(record)) if record.node == node && !record.revoked => {}
        Some(Credential::Certificate(record)) if record.revoked => {
            return Err(Error::Unauthenticated(format!(
                "the certificate {} of node {node:?} is revoked",
                cert.serial
            )));
        }
        _ => {
            return Err(Error::Unauthenticated(format!(
                "the certificate {} of node {node:?} is unknown to this cluster",
                cert.serial
            )));
        }
    }
    if cert.not_after_unix_ms <= now_unix_ms {
        return Err(Error::Unauthenticated(format!(
            "the certificate of node {node:?} has expired: join again with a token"
        )));
    }
    Ok(())
}

/// A new token record for `name` with `role`, and the token itself.
pub fn new_token(
    state: &ClusterState,
    digest: drover_security::CaDigest,
    name: &str,
    role: Role,
    ttl: Option<Duration>,
    created_by: &str,
    changes: &mut ChangeSet,
) -> Result<(Token, TokenRecord), Error> {
    drover_proto::manifest::dns_label(name).map_err(|e| {
        Error::InvalidArgument(format!(
            "token name {:?}: {e}",
            drover_proto::manifest::excerpt(name)
        ))
    })?;
    // A token this change revokes no longer holds its name.
    let revoked = |t: &TokenRecord| {
        changes
            .writes()
            .contains(&Write::DeleteCredential(credentials::token_key(&t.id)))
    };
    if tokens(state).any(|t| t.name == name && !revoked(t)) {
        return Err(Error::InvalidArgument(format!(
            "a token named {name:?} exists; revoke it first or choose another name"
        )));
    }
    let token = Token::generate(digest);
    let now = changes.now_unix_ms();
    let record = TokenRecord {
        id: token.id.clone(),
        name: name.to_string(),
        role: role.as_str().to_string(),
        secret_sha256: data_encoding::HEXLOWER.encode(&token.secret_hash()),
        created_unix_ms: now,
        expires_unix_ms: ttl
            .map(|ttl| now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)))
            .unwrap_or(0),
        created_by: created_by.to_string(),
    };
    changes.push(Write::PutCredential(Credential::Token(record.clone())));
    changes.event(
        events::TOKEN_CHANGED,
        name,
        format!(
            "{role} token {name:?} ({}) created by {created_by:?}",
            token.id
        ),
    );
    Ok((token, record))
}

/// Every stored token.
pub fn tokens(state: &ClusterState) -> impl Iterator<Item = &TokenRecord> {
    state.stored.credentials.values().filter_map(|c| match c {
        Credential::Token(t) => Some(t),
        _ => None,
    })
}

/// Revokes the token with `id_or_name`; it stops working with the commit.
pub fn revoke_token(
    state: &ClusterState,
    id_or_name: &str,
    by: &str,
    changes: &mut ChangeSet,
) -> Result<TokenRecord, Error> {
    let record = tokens(state)
        .find(|t| t.id == id_or_name || t.name == id_or_name)
        .cloned()
        .ok_or_else(|| Error::NotFound {
            kind: "token",
            name: id_or_name.to_string(),
        })?;
    changes.push(Write::DeleteCredential(credentials::token_key(&record.id)));
    changes.event(
        events::TOKEN_CHANGED,
        &record.name,
        format!("token {:?} ({}) revoked by {by:?}", record.name, record.id),
    );
    Ok(record)
}

/// Revokes every certificate of `node` (a removed node must not come back with one).
pub fn revoke_node_certificates(state: &ClusterState, node: &str, changes: &mut ChangeSet) {
    for credential in state.stored.credentials.values() {
        if let Credential::Certificate(c) = credential
            && c.node == node
            && !c.revoked
        {
            changes.push(Write::PutCredential(Credential::Certificate(CertRecord {
                revoked: true,
                ..c.clone()
            })));
        }
    }
}

/// The coordinator's signing side: the CA and the lifetimes it gives.
pub struct Authority {
    /// The CA in force: replaced whole by a rotation's steps.
    ca: std::sync::RwLock<Arc<ClusterCa>>,
    /// The server TLS the gRPC listener accepts with; follows the CA.
    tls: ServerTls,
    data_dir: PathBuf,
    cluster_id: String,
    /// Lifetime of node certificates.
    pub node_cert_ttl: Duration,
    /// Lifetime of operator certificates.
    pub operator_cert_ttl: Duration,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("ca", &self.ca())
            .finish_non_exhaustive()
    }
}

/// What a join gives the joiner.
#[derive(Debug)]
pub struct Joined {
    /// Its certificate, PEM.
    pub certificate_pem: String,
    /// The role of the token it joined with.
    pub role: Role,
    /// The token's id.
    pub token_id: String,
}

/// A step of a CA rotation, or a look at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaAction {
    /// Shows the CA.
    Status,
    /// A new CA signs; both are trusted.
    Rotate,
    /// Only the new CA is trusted; `force`: even with nodes not renewed yet.
    Finish {
        /// Finish though some nodes have no certificate of the new CA.
        force: bool,
    },
}

impl Authority {
    /// Loads the CA under `data_dir`, creating it on first start, and the server TLS the
    /// coordinator serves with. The flag says whether the CA was created.
    pub fn load_or_create(
        data_dir: &Path,
        cluster_id: &str,
        node_cert_ttl: Duration,
        operator_cert_ttl: Duration,
    ) -> Result<(Authority, bool), Error> {
        let (ca, created) = ClusterCa::load_or_create(data_dir, cluster_id)
            .map_err(|e| Error::Internal(format!("the cluster CA: {e}")))?;
        // A crash between a rotation's CA files and the token files' refresh is settled
        // here, as the CA's own files are settled by `load_or_create`.
        refresh_token_files(data_dir, ca.digest())?;
        let (chain, key) = server_identity(&ca)?;
        let tls = ServerTls::new(&chain, &key, ca.bundle_pem())
            .map_err(|e| Error::Internal(format!("the server TLS: {e}")))?;
        Ok((
            Authority {
                ca: std::sync::RwLock::new(Arc::new(ca)),
                tls,
                data_dir: data_dir.to_path_buf(),
                cluster_id: cluster_id.to_string(),
                node_cert_ttl,
                operator_cert_ttl,
            },
            created,
        ))
    }

    /// The CA in force.
    pub fn ca(&self) -> Arc<ClusterCa> {
        self.ca.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The server TLS to accept connections with.
    pub fn server_tls(&self) -> &ServerTls {
        &self.tls
    }

    /// Puts `ca` in force: signing, the server's chain, the bootstrap token files' digest.
    fn install(&self, ca: ClusterCa) -> Result<(), Error> {
        let (chain, key) = server_identity(&ca)?;
        self.tls
            .replace(&chain, &key, ca.bundle_pem())
            .map_err(|e| Error::Internal(format!("the server TLS: {e}")))?;
        refresh_token_files(&self.data_dir, ca.digest())?;
        *self.ca.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ca);
        Ok(())
    }

    /// Shows the CA, or takes a step of its rotation (files first, then what is served).
    pub fn ca_action(
        &self,
        state: &ClusterState,
        action: CaAction,
        changes: &mut ChangeSet,
    ) -> Result<pb::CaStatus, Error> {
        let ca = self.ca();
        let refused = |e: drover_security::SecurityError| Error::Refused(e.to_string());
        match action {
            CaAction::Status => {}
            CaAction::Rotate => {
                let new = ca
                    .rotate(&self.data_dir, &self.cluster_id)
                    .map_err(refused)?;
                let message = format!(
                    "CA rotation started: CA {} signs from now on, {} stays trusted until \
                     `drover ca finish`",
                    new.digest(),
                    ca.digest()
                );
                self.install(new)?;
                changes.event(events::CA_ROTATED, "ca", message.clone());
                info!(%message);
            }
            CaAction::Finish { force } => {
                let status = ca_status(state, &ca, changes.now_unix_ms());
                if ca.rotating() && !force && !status.nodes_waiting.is_empty() {
                    return Err(Error::Refused(format!(
                        "nodes {} have no certificate of the new CA yet (connected ones renew \
                         within seconds; the others when they reconnect); finishing now \
                         locks them out until they join again with a token: wait, or pass \
                         --force",
                        status.nodes_waiting.join(", ")
                    )));
                }
                let done = ca.finish_rotation(&self.data_dir).map_err(refused)?;
                let message = format!(
                    "CA rotation finished: only CA {} is trusted from now on",
                    done.digest()
                );
                self.install(done)?;
                changes.event(events::CA_ROTATED, "ca", message.clone());
                info!(%message);
            }
        }
        Ok(ca_status(state, &self.ca(), changes.now_unix_ms()))
    }

    /// Exchanges a token and CSR for a certificate: an agent token certifies `node_id`,
    /// an operator token certifies the token.
    pub fn join(
        &self,
        state: &ClusterState,
        token: &str,
        csr_pem: &str,
        node_id: &str,
        changes: &mut ChangeSet,
    ) -> Result<Joined, Error> {
        let token = parse_token(token)?;
        let record = token_record(state, &token, changes.now_unix_ms())?;
        let role = role_of(record)?;
        let (peer, ttl) = if role == Role::Agent {
            if node_id.is_empty() {
                return Err(Error::Forbidden(format!(
                    "token {:?} is an agent join token: it joins nodes; the operator API needs \
                     an admin, operator or read token",
                    record.name
                )));
            }
            drover_proto::manifest::dns_label(node_id).map_err(|e| {
                Error::InvalidArgument(format!(
                    "node id {:?}: {e}",
                    drover_proto::manifest::excerpt(node_id)
                ))
            })?;
            (Peer::Node(node_id.to_string()), self.node_cert_ttl)
        } else {
            (Peer::Operator(record.id.clone()), self.operator_cert_ttl)
        };
        let issued = self.sign(state, &peer, csr_pem, ttl, changes)?;
        if let Peer::Node(node) = &peer {
            changes.event(
                events::NODE_CERTIFIED,
                node,
                format!("node {node} joined with token {:?}", record.name),
            );
            info!(node = %node, token = %record.name, "node joined");
        }
        Ok(Joined {
            certificate_pem: issued,
            role,
            token_id: record.id.clone(),
        })
    }

    /// A new certificate for a node that proved who it is with its current one.
    pub fn renew(
        &self,
        state: &ClusterState,
        peer: Option<&PeerCert>,
        csr_pem: &str,
        changes: &mut ChangeSet,
    ) -> Result<String, Error> {
        let Some(PeerCert {
            peer: Peer::Node(node),
            ..
        }) = peer
        else {
            return Err(Error::Unauthenticated(
                "renewal needs the node's current certificate".into(),
            ));
        };
        check_node_certificate(state, peer, node, changes.now_unix_ms())?;
        let node = node.clone();
        let pem = self.sign(
            state,
            &Peer::Node(node.clone()),
            csr_pem,
            self.node_cert_ttl,
            changes,
        )?;
        info!(node = %node, "node certificate renewed");
        Ok(pem)
    }

    fn sign(
        &self,
        state: &ClusterState,
        peer: &Peer,
        csr_pem: &str,
        ttl: Duration,
        changes: &mut ChangeSet,
    ) -> Result<String, Error> {
        let ca = self.ca();
        let issued = ca
            .sign(csr_pem, peer, ttl)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        if let Peer::Node(node) = peer {
            changes.push(Write::PutCredential(Credential::Certificate(CertRecord {
                serial: issued.serial.clone(),
                node: node.clone(),
                not_after_unix_ms: issued.not_after_unix_ms,
                revoked: false,
                ca: ca.digest().to_string(),
            })));
            // The node's expired records go: the table does not grow with every renewal.
            let now = changes.now_unix_ms();
            for credential in state.stored.credentials.values() {
                if let Credential::Certificate(c) = credential
                    && c.node == *node
                    && c.not_after_unix_ms <= now
                {
                    changes.push(Write::DeleteCredential(credentials::cert_key(&c.serial)));
                }
            }
        }
        Ok(issued.pem)
    }
}

/// A server certificate for this coordinator from `ca` (chain and key, PEM).
fn server_identity(ca: &ClusterCa) -> Result<(String, String), Error> {
    // Renewed on every start and every CA change; a coordinator that runs for a year
    // restarts before then.
    ca.server_identity(Duration::from_secs(400 * 24 * 3600))
        .map_err(|e| Error::Internal(format!("the coordinator certificate: {e}")))
}

/// The CA and which nodes hold a valid certificate of it (and which only of another CA).
pub fn ca_status(state: &ClusterState, ca: &ClusterCa, now_unix_ms: u64) -> pb::CaStatus {
    let signing = ca.digest().to_string();
    let mut current = std::collections::BTreeSet::new();
    let mut others = std::collections::BTreeSet::new();
    for credential in state.stored.credentials.values() {
        if let Credential::Certificate(c) = credential
            && !c.revoked
            && c.not_after_unix_ms > now_unix_ms
        {
            // Records from before CA rotation existed name no CA: the first one issued them.
            if c.ca == signing {
                current.insert(c.node.clone());
            } else {
                others.insert(c.node.clone());
            }
        }
    }
    let waiting = others.difference(&current).cloned().collect();
    pb::CaStatus {
        digest: signing,
        trusted: ca
            .trusted_digests()
            .iter()
            .map(ToString::to_string)
            .collect(),
        rotating: ca.rotating(),
        nodes_current: current.into_iter().collect(),
        nodes_waiting: waiting,
    }
}

/// Rewrites the bootstrap token files whose token names another CA digest with `digest`
/// (the same token: its id and secret do not change), so that what the files hold pins
/// the CA in force.
fn refresh_token_files(data_dir: &Path, digest: drover_security::CaDigest) -> Result<(), Error> {
    for which in [BootstrapToken::Admin, BootstrapToken::Agent] {
        let (file, _, _) = which.parts();
        let path = data_dir.join(file);
        let text = drover_security::files::read_optional(&path)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let Some(token) = text.and_then(|t| t.trim().parse::<Token>().ok()) else {
            continue;
        };
        if token.digest != digest {
            let token = token.with_digest(digest);
            drover_security::files::write_atomic(
                &path,
                format!("{}\n", token.reveal()).as_bytes(),
                true,
            )
            .map_err(|e| Error::Internal(e.to_string()))?;
        }
    }
    Ok(())
}

/// A bootstrap token the coordinator keeps in a file under its data dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapToken {
    /// The admin token (`admin.token`).
    Admin,
    /// The join token for this host's agents (`agent.token`).
    Agent,
}

impl BootstrapToken {
    /// The file, the token's name and its role.
    pub fn parts(self) -> (&'static str, &'static str, Role) {
        match self {
            BootstrapToken::Admin => (ADMIN_TOKEN_FILE, "bootstrap-admin", Role::Admin),
            BootstrapToken::Agent => (AGENT_TOKEN_FILE, "bootstrap-agent", Role::Agent),
        }
    }
}

/// Makes the bootstrap token `which` anew unless `in_file` (what its file holds) is a
/// working token: on first start, or when an operator deleted the file to get a new one
/// (whoever may read the data dir may do so). A token of the same name is revoked.
pub fn bootstrap_token(
    state: &ClusterState,
    digest: drover_security::CaDigest,
    which: BootstrapToken,
    in_file: Option<&str>,
    changes: &mut ChangeSet,
) -> Result<Option<Token>, Error> {
    let (_, name, role) = which.parts();
    let now = changes.now_unix_ms();
    let working = in_file
        .and_then(|text| text.trim().parse::<Token>().ok())
        .and_then(|t| token_record(state, &t, now).ok().map(|r| r.name == name))
        .unwrap_or(false);
    if working {
        return Ok(None);
    }
    if tokens(state).any(|t| t.name == name) {
        revoke_token(state, name, BOOTSTRAP, changes)?;
    }
    let (token, _) = new_token(state, digest, name, role, None, BOOTSTRAP, changes)?;
    Ok(Some(token))
}

/// The gossip keyring as stored (base64, the key in use first); empty when none is set.
pub fn gossip_keys(state: &ClusterState) -> Vec<String> {
    match state.stored.credentials.get(credentials::GOSSIP_KEYS) {
        Some(Credential::GossipKeys { keys }) => keys.clone(),
        _ => Vec::new(),
    }
}

/// Every token as agents check them on their HTTP side: digests only, sorted by id, with
/// their role and expiry (which agents check). Join tokens are among them, so that an agent
/// refuses one for its role, as the coordinator does, rather than as unknown.
pub fn read_tokens(state: &ClusterState) -> Vec<pb::ReadToken> {
    state
        .stored
        .credentials
        .values()
        .filter_map(|c| match c {
            Credential::Token(t) => Some(pb::ReadToken {
                id: t.id.clone(),
                name: t.name.clone(),
                role: t.role.clone(),
                secret_sha256: t.secret_sha256.clone(),
                expires_unix_ms: t.expires_unix_ms,
            }),
            _ => None,
        })
        .collect()
}

/// The stored gossip keyring, parsed; `None` when none is stored.
pub fn keyring(state: &ClusterState) -> Result<Option<drover_membership::Keyring>, Error> {
    let keys = gossip_keys(state);
    if keys.is_empty() {
        return Ok(None);
    }
    drover_membership::Keyring::from_base64(&keys)
        .map(Some)
        .map_err(|e| Error::Internal(format!("the stored gossip keyring: {e}")))
}

fn store_keyring(keyring: &drover_membership::Keyring, changes: &mut ChangeSet) {
    changes.push(Write::PutCredential(Credential::GossipKeys {
        keys: keyring.to_base64(),
    }));
}

/// Makes the cluster's first gossip key when none is stored.
pub fn ensure_gossip_keys(state: &ClusterState, changes: &mut ChangeSet) -> Result<(), Error> {
    if keyring(state)?.is_some() {
        return Ok(());
    }
    let key = drover_membership::GossipKey::generate()
        .map_err(|e| Error::Internal(format!("a gossip key: {e}")))?;
    changes.event(
        events::TOKEN_CHANGED,
        "gossip",
        format!("gossip key {} made", key.id()),
    );
    store_keyring(&drover_membership::Keyring::new(key), changes);
    Ok(())
}

/// What an operator does with the gossip keyring.
#[derive(Debug, Clone)]
pub enum KeyAction {
    /// Show the key ids.
    List,
    /// Add a key (base64); `None`: make one.
    Install(Option<String>),
    /// Seal with the key of this id from now on.
    Use(String),
    /// Remove the key of this id.
    Remove(String),
}

/// Applies `action` to the stored keyring; returns the key ids after it, the one in use
/// first. Every member gets the new keyring over its link; rotate by installing a key,
/// then using it, then removing the old one, each once every member has the previous step.
pub fn gossip_key_action(
    state: &ClusterState,
    action: &KeyAction,
    changes: &mut ChangeSet,
) -> Result<Vec<String>, Error> {
    let mut ring = keyring(state)?.ok_or_else(|| {
        Error::Refused("this coordinator has no gossip keyring (it runs insecure)".into())
    })?;
    let invalid = |e: drover_membership::KeyringError| Error::InvalidArgument(e.to_string());
    let id = |text: &str| {
        text.parse::<drover_membership::KeyId>()
            .map_err(|e| Error::InvalidArgument(format!("gossip key id {text:?}: {e}")))
    };
    let what = match action {
        KeyAction::List => None,
        KeyAction::Install(key) => {
            let key = match key {
                Some(text) => drover_membership::GossipKey::from_base64(text)
                    .map_err(|e| Error::InvalidArgument(format!("gossip key: {e}")))?,
                None => drover_membership::GossipKey::generate()
                    .map_err(|e| Error::Internal(format!("a gossip key: {e}")))?,
            };
            let shown = key.id().to_string();
            ring.install(key).map_err(invalid)?;
            Some(format!("gossip key {shown} installed"))
        }
        KeyAction::Use(text) => {
            ring.use_key(id(text)?).map_err(invalid)?;
            Some(format!("gossip key {text} in use"))
        }
        KeyAction::Remove(text) => {
            ring.remove(id(text)?).map_err(invalid)?;
            Some(format!("gossip key {text} removed"))
        }
    };
    if let Some(what) = what {
        changes.event(events::TOKEN_CHANGED, "gossip", what);
        store_keyring(&ring, changes);
    }
    Ok(ring.ids().iter().map(ToString::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredState;

    fn state_with(certs: &[CertRecord]) -> ClusterState {
        let mut stored = StoredState::default();
        for c in certs {
            let credential = Credential::Certificate(c.clone());
            stored.credentials.insert(credential.key(), credential);
        }
        ClusterState::from_stored(stored)
    }

    fn record(serial: &str, node: &str, revoked: bool) -> CertRecord {
        CertRecord {
            serial: serial.into(),
            node: node.into(),
            not_after_unix_ms: 10_000,
            revoked,
            ca: String::new(),
        }
    }

    #[test]
    fn ca_status_names_the_nodes_not_renewed_by_the_signing_ca_yet() {
        let ca = ClusterCa::generate("test").expect("ca");
        let on = |serial: &str, node: &str, ca: &str| CertRecord {
            ca: ca.into(),
            ..record(serial, node, false)
        };
        let signing = ca.digest().to_string();
        let state = state_with(&[
            // n1: renewed (an old certificate too, still valid).
            on("a1", "n1", ""),
            on("a2", "n1", &signing),
            // n2: only the old CA's.
            on("b1", "n2", "old"),
            // n3: the new CA's, but revoked; n4: expired.
            CertRecord {
                revoked: true,
                ..on("c1", "n3", &signing)
            },
            CertRecord {
                not_after_unix_ms: 5,
                ..on("d1", "n4", "old")
            },
        ]);
        let status = ca_status(&state, &ca, 100);
        assert_eq!(status.digest, signing);
        assert_eq!(status.nodes_current, ["n1"]);
        assert_eq!(status.nodes_waiting, ["n2"]);
        assert!(!status.rotating);
    }

    fn presented(serial: &str, node: &str, not_after_unix_ms: u64) -> PeerCert {
        PeerCert {
            peer: Peer::Node(node.into()),
            serial: serial.into(),
            not_before_unix_ms: 0,
            not_after_unix_ms,
        }
    }

    #[test]
    fn a_node_needs_its_own_known_unrevoked_unexpired_certificate() {
        let state = state_with(&[record("aa", "n1", false), record("bb", "n1", true)]);
        let ok = presented("aa", "n1", 10_000);
        assert!(check_node_certificate(&state, Some(&ok), "n1", 5).is_ok());
        let cases = [
            (None, "without a certificate"),
            (
                Some(presented("aa", "n1", 10_000)),
                "presented a certificate for node n1",
            ),
            (Some(presented("bb", "n1", 10_000)), "is revoked"),
            (
                Some(presented("cc", "n1", 10_000)),
                "unknown to this cluster",
            ),
            (Some(presented("aa", "n1", 4)), "has expired"),
        ];
        for (i, (cert, why)) in cases.into_iter().enumerate() {
            let node = if i == 1 { "n2" } else { "n1" };
            let error = check_node_certificate(&state, cert.as_ref(), node, 5)
                .expect_err(why)
                .to_string();
            assert!(error.contains(why), "{why}: {error}");
        }
    }

    #[test]
    fn removing_a_node_revokes_every_certificate_it_has() {
        let state = state_with(&[
            record("aa", "n1", false),
            record("bb", "n1", false),
            record("cc", "n2", false),
        ]);
        let mut changes = ChangeSet::new(&state, 5);
        revoke_node_certificates(&state, "n1", &mut changes);
        let mut after = state.clone();
        after.apply(changes.writes());
        for (serial, node, refused) in [("aa", "n1", true), ("bb", "n1", true), ("cc", "n2", false)]
        {
            let result =
                check_node_certificate(&after, Some(&presented(serial, node, 10_000)), node, 5);
            assert_eq!(result.is_err(), refused, "{serial}");
        }
    }

    #[test]
    fn a_bootstrap_token_is_made_once_and_again_when_its_file_is_gone() {
        let digest = drover_security::CaDigest::of(b"ca");
        let state = state_with(&[]);
        let mut changes = ChangeSet::new(&state, 5);
        let made = bootstrap_token(&state, digest, BootstrapToken::Admin, None, &mut changes)
            .expect("make")
            .expect("made");
        let mut after = state.clone();
        after.apply(changes.writes());
        let text = made.reveal();
        let mut again = ChangeSet::new(&after, 6);
        let none = bootstrap_token(
            &after,
            digest,
            BootstrapToken::Admin,
            Some(&text),
            &mut again,
        )
        .expect("check");
        assert!(
            none.is_none() && again.is_empty(),
            "a working token is kept"
        );
        // The file is gone: a new token, and the old one revoked.
        let mut replaced = ChangeSet::new(&after, 7);
        let new = bootstrap_token(&after, digest, BootstrapToken::Admin, None, &mut replaced)
            .expect("remake")
            .expect("remade");
        after.apply(replaced.writes());
        assert_eq!(tokens(&after).count(), 1);
        assert!(
            token_record(&after, &made, 8).is_err(),
            "the old one no longer works"
        );
        assert!(token_record(&after, &new, 8).is_ok());
    }
}
