//! The one door into the coordinator's state for operators' requests: authenticate the
//! caller, check its role, decide (pure, over the state), commit, record who did it, wake
//! the reconcile loop. The gRPC handlers in `control.rs` only translate to and from it.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_proto::manifest::Manifest;
use drover_security::Role;
use tracing::info;

use crate::changes::ChangeSet;
use crate::coordinator::{Coordinator, now_unix_ms};
use crate::error::Error;
use crate::events;
use crate::operations::{self, ApplyOutcome, Deleted, NodeAction, ObjectKind, RolloutAction};
use crate::security::{self, CaAction, Caller, Credentials};
use crate::state::ClusterState;
use crate::store::credentials::TokenRecord;

/// A request that changes the cluster.
#[derive(Debug, Clone)]
pub enum Command {
    /// Create or update workloads and services; with `dry_run`, only validate.
    Apply {
        /// The workloads and services.
        manifest: Manifest,
        /// Why, for the rollout history.
        cause: String,
        /// Validate without storing.
        dry_run: bool,
    },
    /// Delete the workload or the service of a name, or (no kind) both.
    Delete {
        /// Name.
        name: String,
        /// Which one; `None`: whichever exist.
        kind: Option<ObjectKind>,
    },
    /// Set a service's replica count.
    Scale {
        /// Service.
        name: String,
        /// Replicas.
        replicas: u32,
    },
    /// Set a workload's per-revision weights.
    SetWeights {
        /// Workload.
        name: String,
        /// Weight per revision.
        weights: BTreeMap<u64, u32>,
    },
    /// Set a service's per-workload weights.
    SetWorkloadWeights {
        /// Service.
        name: String,
        /// Weight per workload.
        weights: BTreeMap<String, u32>,
    },
    /// Cordon, uncordon or drain a node.
    Node {
        /// Node id.
        node: String,
        /// What to do.
        action: NodeAction,
    },
    /// Forget a down node.
    RemoveNode(String),
    /// Act on a service's rollout.
    Rollout {
        /// Service.
        name: String,
        /// What to do.
        action: RolloutAction,
    },
    /// Make a token.
    CreateToken {
        /// Its name.
        name: String,
        /// Its role.
        role: Role,
        /// Its lifetime; `None`: no end.
        ttl: Option<Duration>,
    },
    /// Revoke a token by id or name.
    RevokeToken(String),
    /// List or change the gossip keyring.
    GossipKey(security::KeyAction),
    /// Show the cluster CA, or start or finish its rotation.
    Ca(CaAction),
}

impl Command {
    /// The role the command needs.
    pub fn role(&self) -> Role {
        match self {
            Command::Ca(CaAction::Status) => Role::Read,
            Command::CreateToken { .. }
            | Command::RevokeToken(_)
            | Command::GossipKey(_)
            | Command::Ca(_) => Role::Admin,
            _ => Role::Operator,
        }
    }

    /// What the command does, for errors and the event log; never a secret.
    pub fn describe(&self) -> String {
        match self {
            Command::Apply {
                manifest, dry_run, ..
            } => {
                let all: Vec<&str> = manifest
                    .workloads
                    .iter()
                    .map(|s| s.name.as_str())
                    .chain(manifest.services.iter().map(|s| s.name.as_str()))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let names: Vec<&str> = all.iter().copied().take(5).collect();
                let more = all.len().saturating_sub(names.len());
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                let verb = if *dry_run { "dry-run apply" } else { "apply" };
                format!("{verb} {}{more}", names.join(", "))
            }
            Command::Delete { name, kind } => {
                format!("delete {} {name}", kind.map_or("", ObjectKind::as_str)).replace("  ", " ")
            }
            Command::Scale { name, replicas } => format!("scale {name} to {replicas}"),
            Command::SetWeights { name, weights } => {
                let split: Vec<String> = weights.iter().map(|(r, w)| format!("{r}={w}")).collect();
                format!("weights of {name}: {}", split.join(" "))
            }
            Command::SetWorkloadWeights { name, weights } => {
                let split: Vec<String> = weights.iter().map(|(r, w)| format!("{r}={w}")).collect();
                format!("workload weights of service {name}: {}", split.join(" "))
            }
            Command::Node { node, action } => format!("{} node {node}", action.verb()),
            Command::RemoveNode(node) => format!("remove node {node}"),
            Command::Rollout { name, action } => format!("rollout {} of {name}", action.verb()),
            Command::CreateToken { name, role, .. } => format!("create {role} token {name}"),
            Command::RevokeToken(token) => format!("revoke token {token}"),
            Command::GossipKey(action) => match action {
                security::KeyAction::List => "list gossip keys".into(),
                security::KeyAction::Install(_) => "install a gossip key".into(),
                security::KeyAction::Use(id) => format!("use gossip key {id}"),
                security::KeyAction::Remove(id) => format!("remove gossip key {id}"),
            },
            Command::Ca(CaAction::Status) => "show the cluster CA".into(),
            Command::Ca(CaAction::Rotate) => "start a CA rotation".into(),
            Command::Ca(CaAction::Finish { force: false }) => "finish the CA rotation".into(),
            Command::Ca(CaAction::Finish { force: true }) => {
                "finish the CA rotation (forced)".into()
            }
        }
    }
}

/// The refusal of what needs the CA on a coordinator that runs without one.
fn insecure() -> Error {
    Error::Refused("this coordinator runs insecure: it has no CA and makes no tokens".into())
}

/// What a command did.
#[derive(Debug)]
pub enum Outcome {
    /// Workloads and services applied.
    Applied(Vec<ApplyOutcome>),
    /// What a delete removed.
    Deleted(Deleted),
    /// A workload or a service changed (scale, weights, rollout action).
    Service(String),
    /// A node's flags changed.
    Node(String),
    /// A node removed: how many allocation records went with it.
    NodeRemoved(u32),
    /// A token was made: the token (shown once) and its record.
    TokenCreated(String, TokenRecord),
    /// A token was revoked.
    TokenRevoked(TokenRecord),
    /// The gossip keyring's ids, the one in use first.
    Keyring(Vec<String>),
    /// The cluster CA as it stands after the command.
    Ca(drover_proto::pb::CaStatus),
}

impl Coordinator {
    /// Authenticates the caller against the current state (a revoked token fails at once).
    pub fn caller(&self, state: &ClusterState, credentials: &Credentials) -> Result<Caller, Error> {
        match self.authority() {
            None => Ok(Caller::insecure()),
            // Each request's role is checked where it is decided.
            Some(_) if credentials.http => security::authenticate_bearer(
                state,
                credentials.bearer.as_deref(),
                Role::Read,
                "the web UI",
                now_unix_ms(),
            ),
            Some(_) => security::authenticate(state, credentials, now_unix_ms()),
        }
    }

    /// Reads the state as an authenticated caller with at least the read role.
    pub async fn read<T>(
        &self,
        credentials: &Credentials,
        read: impl FnOnce(&ClusterState, &Caller) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let inner = self.lock().await;
        let caller = self.caller(&inner.state, credentials)?;
        caller.require(Role::Read, "reading the cluster")?;
        read(&inner.state, &caller)
    }

    /// Asks the agents of the replicas `request.name` means for their output (reading the
    /// cluster). Per replica, in id order: its id, and the open request (its id and where
    /// its chunks arrive) or why none could be made.
    pub async fn open_logs(
        &self,
        credentials: &Credentials,
        request: &drover_proto::pb::LogsRequest,
    ) -> Result<Vec<OpenedLog>, Error> {
        use drover_proto::pb;
        let inner = self.lock().await;
        let caller = self.caller(&inner.state, credentials)?;
        caller.require(Role::Read, "reading replicas' output")?;
        let replicas = crate::logs::replicas_named(&inner.state, &request.name)?;
        let mut opened = Vec::new();
        for replica in replicas {
            let (id, chunks) = self.logs.open(&replica.node);
            let message = pb::CoordinatorMessage {
                body: Some(pb::coordinator_message::Body::LogRequest(pb::LogRequest {
                    request_id: id,
                    allocation_id: replica.id.clone(),
                    follow: request.follow,
                    since_seconds: request.since_seconds,
                    tail: request.tail,
                })),
            };
            let outcome = if inner.send_to_agent(&replica.node, message) {
                Ok((id, chunks))
            } else {
                self.logs.close(id);
                Err(format!("node {} is not connected", replica.node))
            };
            opened.push(OpenedLog {
                allocation: replica.id,
                outcome,
            });
        }
        Ok(opened)
    }

    /// Tells the agent of log request `id` that its client is gone.
    pub async fn cancel_logs(&self, id: u64) {
        use drover_proto::pb;
        let Some(node) = self.logs.close(id) else {
            return;
        };
        let message = pb::CoordinatorMessage {
            body: Some(pb::coordinator_message::Body::LogCancel(pb::LogCancel {
                request_id: id,
            })),
        };
        self.lock().await.send_to_agent(&node, message);
    }

    /// Executes `command` for the caller `credentials` prove; then `view` reads the result
    /// under the same lock. Refused requests change nothing.
    pub async fn execute<T>(
        &self,
        credentials: &Credentials,
        command: Command,
        view: impl FnOnce(&ClusterState, &Outcome) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut inner = self.lock().await;
        let caller = self.caller(&inner.state, credentials)?;
        let what = command.describe();
        caller.require(command.role(), &what)?;
        let mut changes = ChangeSet::new(&inner.state, now_unix_ms());
        let state = &inner.state;
        let outcome = match &command {
            Command::Apply {
                manifest, cause, ..
            } => Outcome::Applied(operations::apply(state, manifest, cause, &mut changes)?),
            Command::Delete { name, kind } => {
                Outcome::Deleted(operations::delete(state, name, *kind, &mut changes)?)
            }
            Command::SetWorkloadWeights { name, weights } => {
                operations::set_workload_weights(state, name, weights.clone(), &mut changes)?;
                Outcome::Service(name.clone())
            }
            Command::Scale { name, replicas } => {
                operations::scale(state, name, *replicas, &mut changes)?;
                Outcome::Service(name.clone())
            }
            Command::SetWeights { name, weights } => {
                operations::set_weights(state, name, weights.clone(), &mut changes)?;
                Outcome::Service(name.clone())
            }
            Command::Node { node, action } => {
                operations::node_action(state, node, *action, &mut changes)?;
                Outcome::Node(node.clone())
            }
            Command::RemoveNode(node) => {
                let removed = operations::remove_node(state, node, &mut changes)?;
                security::revoke_node_certificates(state, node, &mut changes);
                Outcome::NodeRemoved(removed)
            }
            Command::Rollout { name, action } => {
                operations::rollout_action(state, name, *action, &mut changes)?;
                Outcome::Service(name.clone())
            }
            Command::CreateToken { name, role, ttl } => {
                let digest = self.authority().ok_or_else(insecure)?.ca().digest();
                let (token, record) = security::new_token(
                    state,
                    digest,
                    name,
                    *role,
                    *ttl,
                    &caller.name,
                    &mut changes,
                )?;
                Outcome::TokenCreated(token.reveal(), record)
            }
            Command::RevokeToken(token) => Outcome::TokenRevoked(security::revoke_token(
                state,
                token,
                &caller.name,
                &mut changes,
            )?),
            Command::GossipKey(action) => {
                Outcome::Keyring(security::gossip_key_action(state, action, &mut changes)?)
            }
            Command::Ca(action) => Outcome::Ca(self.authority().ok_or_else(insecure)?.ca_action(
                state,
                *action,
                &mut changes,
            )?),
        };
        // What changed nothing (an unchanged apply, listing keys) is not committed or logged.
        let dry_run = matches!(command, Command::Apply { dry_run: true, .. });
        let commit = !dry_run && !changes.is_empty();
        if commit {
            changes.event(
                events::API_REQUEST,
                &caller.name,
                format!("{what} (token {:?})", caller.name),
            );
            self.commit(&mut inner, changes).await?;
        }
        if let Command::RemoveNode(node) = &command {
            inner.state.nodes.remove(node);
        }
        let result = view(&inner.state, &outcome);
        drop(inner);
        if commit {
            info!(token = %caller.name, request = %what, "request done");
            self.wake();
        }
        result
    }
}

/// One replica's part of a log request ([`Coordinator::open_logs`]).
#[derive(Debug)]
pub struct OpenedLog {
    /// The allocation.
    pub allocation: String,
    /// The request's id and where its chunks arrive, or why it could not be made.
    pub outcome: Result<(u64, tokio::sync::mpsc::Receiver<drover_proto::pb::LogChunk>), String>,
}
