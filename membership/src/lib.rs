//! Gossip membership on chitchat: who is alive, and the facts every member publishes about
//! itself (key schema in [`drover_proto::gossip`]). Used by the agent and by the coordinator.
//!
//! What a caller must know:
//! - **Liveness is a local opinion** from chitchat's phi-accrual failure detector. With the
//!   defaults (gossip every 250 ms, phi 8) a silent member is declared dead after about 1–1.5 s
//!   on a LAN, and so is any member stalled for longer than ~4–5 gossip intervals. Do not
//!   reschedule on the first live → dead edge: confirm with the AgentLink stream, add a grace,
//!   and guard against mass failure (the observer may be the one cut off).
//! - [`Membership::live_members`] is the view to drive decisions from. It includes this member,
//!   only lists members that published a `role` key, and shows one entry per node id: the
//!   highest live generation. A member announcing `state=leaving` stays listed until it goes
//!   silent; route away from it at once ([`MemberFacts::is_leaving`]).
//! - Every start must use a generation larger than any earlier one of the same node id
//!   ([`next_generation`]); reusing one makes peers hand back the old keys and drop the new.
//! - Gossip is **sealed** when [`MembershipConfig::keyring`] is set ([`seal`]): every datagram
//!   is encrypted and authenticated with the keyring's primary key (XChaCha20-Poly1305), and
//!   only datagrams that open with one of its keys, are fresh (±60 s) and are not replays
//!   reach chitchat. Keys rotate live through the [`KeyringHandle`]: install the new key on
//!   every member, then make it primary everywhere, then remove the old one. Without a
//!   keyring gossip is plain, unauthenticated UDP, for tests or an explicit insecure mode:
//!   anything that reaches the port can inject members and keys (a warning is logged at
//!   start).
//! - Either way gossip carries facts, never decisions, and what would crash or corrupt
//!   chitchat itself is dropped before it decodes a datagram ([`wire`]): deltas about this
//!   member, deltas chitchat would panic on, garbage; logged at most every
//!   [`guard::LOG_EVERY`]. [`Membership::counters`] counts datagrams in and out and every
//!   kind of refusal.
//! - If [`Membership::termination`] resolves with an error the gossip loop is gone for good:
//!   exit and let the supervisor restart the process.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::fs;
use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState, ProtocolVersion,
    spawn_chitchat,
};
use drover_proto::gossip::{self, AllocFact, GossipError, MemberFacts, MemberState};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod guard;
pub mod seal;
pub mod wire;

pub use guard::{CountersSnapshot, GossipCounters};
pub use seal::{GossipKey, KeyId, Keyring, KeyringError, KeyringHandle};

/// Name of the file, in the data directory, holding the last gossip generation.
pub const GENERATION_FILE: &str = "gossip-generation";

/// Failure detector: samples kept per peer (chitchat's default).
const SAMPLING_WINDOW_SIZE: usize = 1_000;
/// Failure detector: heartbeat intervals longer than this are discarded (chitchat's default).
const MAX_INTERVAL: Duration = Duration::from_secs(10);

/// Everything needed to join the gossip cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct MembershipConfig {
    /// Name of the cluster; peers with another name refuse our gossip (a guard against
    /// misconfiguration, not security).
    pub cluster_id: String,
    /// Stable id of this member (node id of an agent, or the coordinator's id).
    pub node_id: String,
    /// Incarnation of this member: strictly larger on every start ([`next_generation`]).
    pub generation: u64,
    /// UDP address gossip binds (`0.0.0.0:7402` is fine).
    pub listen: SocketAddr,
    /// UDP address peers reach us on; must be a concrete IP with a port.
    pub advertise: SocketAddr,
    /// Members to contact first: `ip:port` or `host:port` (re-resolved every 60 s).
    pub seeds: Vec<String>,
    /// One gossip round every this long (default 250 ms).
    pub gossip_interval: Duration,
    /// Failure detector threshold (default 8). Chitchat's phi is
    /// `time since last heartbeat / mean interval`, and heartbeats arrive about every half
    /// interval, so 8 means "silent for ~4 gossip intervals".
    pub phi_threshold: f64,
    /// How long a dead member is remembered (gossiped for half of it, then forgotten);
    /// default 1 h.
    pub dead_node_grace: Duration,
    /// How long deleted keys (tombstones) are kept before garbage collection; default 15 min.
    pub marked_for_deletion_grace: Duration,
    /// The keys gossip is sealed with ([`seal`]); `None` (the default of
    /// [`MembershipConfig::new`]) means plain, unauthenticated gossip, for tests or an
    /// explicit insecure mode only. The handle can be changed while the member runs (key
    /// rotation); members only hear each other when they share a key.
    pub keyring: Option<KeyringHandle>,
}

impl MembershipConfig {
    /// A configuration with defaults tuned to detect a dead member in about a second on a LAN:
    /// gossip every 250 ms, phi 8, dead members remembered 1 h, tombstones kept 15 min, no
    /// seeds, and `advertise = listen` (set `advertise` when `listen` is a wildcard address).
    pub fn new(
        cluster_id: impl Into<String>,
        node_id: impl Into<String>,
        generation: u64,
        listen: SocketAddr,
    ) -> MembershipConfig {
        MembershipConfig {
            cluster_id: cluster_id.into(),
            node_id: node_id.into(),
            generation,
            listen,
            advertise: listen,
            seeds: Vec::new(),
            gossip_interval: Duration::from_millis(250),
            phi_threshold: 8.0,
            dead_node_grace: Duration::from_secs(60 * 60),
            marked_for_deletion_grace: Duration::from_secs(15 * 60),
            keyring: None,
        }
    }

    /// The same configuration, gossip sealed with `keyring`.
    pub fn with_keyring(mut self, keyring: KeyringHandle) -> MembershipConfig {
        self.keyring = Some(keyring);
        self
    }

    fn validate(&self) -> Result<(), MembershipError> {
        let bad = |why: String| Err(MembershipError::Config(why));
        if self.cluster_id.is_empty() {
            return bad("cluster_id is empty".into());
        }
        if self.node_id.is_empty() || self.node_id.chars().any(char::is_whitespace) {
            return bad(format!(
                "node_id {:?} must be non-empty, without whitespace",
                self.node_id
            ));
        }
        if self.advertise.ip().is_unspecified() || self.advertise.port() == 0 {
            return bad(format!(
                "gossip advertise address {} must be a concrete IP and port that peers can reach \
                 (listen address {})",
                self.advertise, self.listen
            ));
        }
        if self.gossip_interval.is_zero() {
            return bad("gossip_interval is zero".into());
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 0.0) {
            return bad(format!(
                "phi_threshold {} must be a positive number",
                self.phi_threshold
            ));
        }
        if self.dead_node_grace.is_zero() || self.marked_for_deletion_grace.is_zero() {
            return bad("dead_node_grace and marked_for_deletion_grace must not be zero".into());
        }
        Ok(())
    }

    /// The full chitchat configuration (every field set on purpose; chitchat has no default).
    fn chitchat_config(&self) -> ChitchatConfig {
        ChitchatConfig {
            chitchat_id: ChitchatId::new(self.node_id.as_str(), self.generation, self.advertise),
            cluster_id: self.cluster_id.clone(),
            gossip_interval: self.gossip_interval,
            listen_addr: self.listen,
            seed_nodes: self.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: self.phi_threshold,
                sampling_window_size: SAMPLING_WINDOW_SIZE,
                max_interval: MAX_INTERVAL,
                // Not chitchat's 5 s default, which would slow detection for ~100 samples.
                initial_interval: self.gossip_interval,
                dead_node_grace_period: self.dead_node_grace,
            },
            marked_for_deletion_grace_period: self.marked_for_deletion_grace,
            // Drover's durable truth is the coordinator; gossip repopulates after a reset.
            catchup_callback: None,
            // A member is listed once its role is known, so readers never see an empty shell.
            extra_liveness_predicate: Some(Box::new(|state: &NodeState| {
                state.contains_key(gossip::ROLE)
            })),
            // A fresh cluster has no V0-only member; V1 compresses the digest.
            protocol_version: ProtocolVersion::V1,
        }
    }
}

/// The gossip transport of the member `config` describes, the one place it is chosen
/// ([`guard::GuardedTransport`]): sealed with `config.keyring` when there is one ([`seal`]),
/// plain UDP otherwise; either way each datagram is checked ([`wire`]) before chitchat
/// decodes it (a key holder can still be buggy or compromised). Its
/// [`counters`](guard::GuardedTransport::counters) count what the socket does.
pub fn transport(config: &MembershipConfig) -> guard::GuardedTransport {
    let me = wire::SelfId {
        node_id: config.node_id.clone(),
        generation: config.generation,
    };
    match &config.keyring {
        Some(keyring) => guard::GuardedTransport::sealed(me, keyring.clone()),
        None => guard::GuardedTransport::new(me),
    }
}

/// Why membership failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The configuration cannot work.
    #[error("invalid gossip configuration: {0}")]
    Config(String),
    /// The initial key-values lack a `role` key.
    #[error("the initial gossip keys must include `role` (agent or coordinator)")]
    MissingRole,
    /// Chitchat could not start (typically: the UDP port is taken).
    #[error("cannot start gossip on udp {listen}: {cause}")]
    Start {
        /// The listen address.
        listen: SocketAddr,
        /// Chitchat's error.
        cause: String,
    },
    /// A key or value breaks the gossip schema (too large, malformed).
    #[error(transparent)]
    Schema(#[from] GossipError),
    /// The gossip loop stopped with an error (or panicked, or was aborted).
    #[error("gossip on udp {listen} stopped: {cause}")]
    Terminated {
        /// The listen address.
        listen: SocketAddr,
        /// What chitchat reported.
        cause: String,
    },
}

/// This process's gossip membership: owns the chitchat server. Dropping it stops gossip
/// silently (peers see the member die); [`Membership::leave`] announces it first.
pub struct Membership {
    handle: ChitchatHandle,
    config: MembershipConfig,
    counters: Arc<GossipCounters>,
    members: watch::Receiver<BTreeMap<String, MemberFacts>>,
    _forwarder: AbortOnDrop,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("node_id", &self.config.node_id)
            .field("generation", &self.config.generation)
            .field("listen", &self.config.listen)
            .field("advertise", &self.config.advertise)
            .field("sealed", &self.config.keyring.is_some())
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// Binds the gossip socket and joins the cluster through `config.seeds`, publishing
    /// `initial` first. `initial` must hold a valid `role`; `state=alive` is added unless
    /// given. Every entry is checked against the schema ([`drover_proto::gossip`]).
    pub async fn start(
        config: MembershipConfig,
        initial: Vec<(String, String)>,
    ) -> Result<Membership, MembershipError> {
        config.validate()?;
        for (key, value) in &initial {
            check_entry(key, value)?;
        }
        if !initial.iter().any(|(key, _)| key == gossip::ROLE) {
            return Err(MembershipError::MissingRole);
        }
        let mut initial = initial;
        if !initial.iter().any(|(key, _)| key == gossip::STATE) {
            initial.push((gossip::STATE.into(), MemberState::Alive.as_str().into()));
        }

        let transport = transport(&config);
        let counters = transport.counters();
        let handle = spawn_chitchat(config.chitchat_config(), initial, &transport)
            .await
            .map_err(|e| MembershipError::Start {
                listen: config.listen,
                cause: format!("{e:#}"),
            })?;
        let live = handle.with_chitchat(|cc| cc.live_nodes_watcher()).await;
        let (tx, members) = watch::channel(BTreeMap::new());
        let forwarder = AbortOnDrop(tokio::spawn(forward_members(live, tx)));
        let keyring = config.keyring.as_ref().map(KeyringHandle::get);
        tracing::info!(
            node_id = %config.node_id,
            generation = config.generation,
            listen = %config.listen,
            advertise = %config.advertise,
            seeds = ?config.seeds,
            sealed = keyring.is_some(),
            primary_key = keyring.as_ref().map(|k| k.primary().id().to_string()),
            keys = keyring.as_ref().map(|k| k.keys().len()),
            "gossip started"
        );
        if keyring.is_none() {
            tracing::warn!(
                node_id = %config.node_id,
                listen = %config.listen,
                "gossip is NOT sealed (no gossip keyring): anyone who can reach this UDP port \
                 can read gossip and inject members and keys; use a keyring outside tests"
            );
        }
        Ok(Membership {
            handle,
            config,
            counters,
            members,
            _forwarder: forwarder,
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    /// The gossip socket's counters: datagrams in and out, messages delivered to chitchat,
    /// and every kind of refusal (wrong key, tampered, replayed, stale, wire checks). Shared:
    /// read them any time, e.g. for metrics.
    pub fn counters(&self) -> Arc<GossipCounters> {
        Arc::clone(&self.counters)
    }

    /// The keyring gossip is sealed with, `None` for plain gossip. Changes through it apply
    /// to the running member from its next datagram (rotation, see [`seal`]).
    pub fn keyring(&self) -> Option<&KeyringHandle> {
        self.config.keyring.as_ref()
    }

    /// Sets one of this member's keys. Refuses keys or values that break the schema: a value
    /// over 4 KiB, or a malformed value for a known key (e.g. `capacity=abc`). Setting the
    /// same value again costs nothing.
    pub async fn set(&self, key: &str, value: &str) -> Result<(), MembershipError> {
        check_entry(key, value)?;
        self.handle
            .with_chitchat(|cc| cc.self_node_state().set(key, value))
            .await;
        Ok(())
    }

    /// Deletes one of this member's keys: peers stop seeing it at their next exchange (a
    /// tombstone replicates, kept for `marked_for_deletion_grace`). A missing key is a no-op.
    /// Deleting `role` hides this member from every peer's [`Membership::live_members`].
    pub async fn delete(&self, key: &str) {
        self.handle
            .with_chitchat(|cc| {
                let me = cc.self_node_state();
                if me.contains_key(key) {
                    me.delete(key);
                }
            })
            .await;
    }

    /// Publishes (or updates) allocation `id` under `alloc:<id>`.
    pub async fn set_allocation(&self, id: &str, fact: &AllocFact) -> Result<(), MembershipError> {
        let key = gossip::alloc_key(id)?;
        let value = fact.encode()?;
        self.set(&key, &value).await
    }

    /// Removes allocation `id`'s key (no-op if absent).
    pub async fn remove_allocation(&self, id: &str) {
        if let Ok(key) = gossip::alloc_key(id) {
            self.delete(&key).await;
        }
    }

    /// Makes the published allocations exactly `allocations`: sets new and changed ones and
    /// deletes the `alloc:` keys not listed, in one step. Nothing changes if any fact is
    /// refused.
    pub async fn sync_allocations(
        &self,
        allocations: &BTreeMap<String, AllocFact>,
    ) -> Result<(), MembershipError> {
        let wanted = allocations
            .iter()
            .map(|(id, fact)| Ok((gossip::alloc_key(id)?, fact.encode()?)))
            .collect::<Result<BTreeMap<String, String>, GossipError>>()?;
        self.handle
            .with_chitchat(|cc| {
                let me = cc.self_node_state();
                let stale: Vec<String> = me
                    .iter_prefix(gossip::ALLOC_PREFIX)
                    .map(|(key, _)| key.to_string())
                    .filter(|key| !wanted.contains_key(key))
                    .collect();
                for key in stale {
                    me.delete(&key);
                }
                for (key, value) in &wanted {
                    me.set(key, value);
                }
            })
            .await;
        Ok(())
    }

    /// Live members by node id, this one included, with their decoded facts. Updated at most
    /// once per gossip round, when a member joins, dies or changes a key (not on heartbeats);
    /// intermediate states can be coalesced. Rules:
    /// - liveness is chitchat's failure detector (plus: the member has published `role`);
    /// - when two incarnations of a node id are live (a restart within the detection window),
    ///   the one with the highest generation is shown;
    /// - malformed values are left out of the facts and logged once (warn).
    ///
    /// Starts empty until the first gossip round has run. The channel closes when this
    /// `Membership` is dropped.
    pub fn live_members(&self) -> watch::Receiver<BTreeMap<String, MemberFacts>> {
        self.members.clone()
    }

    /// Node ids the failure detector holds dead and that have no live incarnation, sorted.
    /// A dead member is remembered for `dead_node_grace`.
    pub async fn dead_members(&self) -> Vec<String> {
        self.handle
            .with_chitchat(|cc| {
                let live: HashSet<&str> = cc.live_nodes().map(|id| &*id.node_id).collect();
                cc.dead_nodes()
                    .map(|id| &*id.node_id)
                    .filter(|node_id| !live.contains(node_id))
                    .map(str::to_string)
                    .collect::<BTreeSet<String>>()
            })
            .await
            .into_iter()
            .collect()
    }

    /// Leaves gracefully: publishes `state=leaving`, keeps gossiping for `wait` so peers learn
    /// it (use at least 3 gossip intervals, e.g. `config.gossip_interval * 4`), then stops.
    /// Chitchat has no leave message: peers still wait for the failure detector to drop us.
    pub async fn leave(self, wait: Duration) {
        let leaving = MemberState::Leaving.as_str();
        self.handle
            .with_chitchat(|cc| cc.self_node_state().set(gossip::STATE, leaving))
            .await;
        tokio::time::sleep(wait).await;
        self.stop().await;
    }

    /// Stops gossip without announcing anything (peers see a crash) and waits until the UDP
    /// socket is closed, so the same address can be bound again.
    pub async fn stop(self) {
        let listen = self.config.listen;
        if let Err(e) = self.handle.shutdown().await {
            tracing::warn!(%listen, "gossip did not stop cleanly: {e:#}");
        }
    }

    /// Resolves when the gossip loop ends: `Ok` after [`Membership::leave`] / [`Membership::stop`]
    /// / drop, `Err` if it died (fatal socket error, panic). On `Err`, exit the process and let
    /// systemd restart it: gossip will not come back on its own.
    pub fn termination(
        &self,
    ) -> impl Future<Output = Result<(), MembershipError>> + Send + 'static + use<> {
        let watcher = self.handle.termination_watcher();
        let listen = self.config.listen;
        async move {
            watcher.await.map_err(|e| MembershipError::Terminated {
                listen,
                cause: format!("{e:#}"),
            })
        }
    }
}

/// Schema check of an entry this member is about to publish: size limits plus the format of
/// known keys.
fn check_entry(key: &str, value: &str) -> Result<(), GossipError> {
    gossip::check_entry(key, value)?;
    MemberFacts::parse_strict([(key, value)])?;
    Ok(())
}

/// Turns chitchat's live-node watch into `node_id → facts`, published only on change.
async fn forward_members(
    mut live: watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
    tx: watch::Sender<BTreeMap<String, MemberFacts>>,
) {
    let mut reported: HashSet<String> = HashSet::new();
    loop {
        let (members, errors) = members_of(&live.borrow_and_update());
        let errors: HashSet<String> = errors.into_iter().collect();
        for error in errors.difference(&reported) {
            tracing::warn!("ignoring a gossip value: {error}");
        }
        reported = errors;
        tx.send_if_modified(|current| {
            if *current == members {
                return false;
            }
            *current = members;
            true
        });
        if live.changed().await.is_err() {
            return;
        }
    }
}

/// Facts of every live node id (highest generation wins), and the parse errors met.
fn members_of(
    live: &BTreeMap<ChitchatId, NodeState>,
) -> (BTreeMap<String, MemberFacts>, Vec<String>) {
    let mut newest: BTreeMap<&str, (&ChitchatId, &NodeState)> = BTreeMap::new();
    for (id, state) in live {
        let entry = newest.entry(&id.node_id).or_insert((id, state));
        if id.generation_id > entry.0.generation_id {
            *entry = (id, state);
        }
    }
    let mut errors = Vec::new();
    let members = newest
        .into_iter()
        .map(|(node_id, (id, state))| {
            let (facts, bad) = MemberFacts::parse(state.key_values());
            errors.extend(
                bad.into_iter()
                    .map(|e| format!("member {node_id} (generation {}): {e}", id.generation_id)),
            );
            (node_id.to_string(), facts)
        })
        .collect();
    (members, errors)
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The generation for this start of the member whose state lives in `data_dir`: greater than
/// any generation returned before from the same directory, and at least the current time in
/// milliseconds since the Unix epoch (so it also grows if the directory is wiped, as long as
/// the clock does). Persisted in [`GENERATION_FILE`] (temp file, fsync, rename) before it is
/// returned. Creates `data_dir` if needed.
///
/// A missing file starts a new sequence. A file that does not hold a number is an error that
/// names it (it is only ever written atomically, so something else damaged it; silently
/// restarting the sequence could reuse a generation if the clock went backwards): delete the
/// file to recover.
pub fn next_generation(data_dir: &Path) -> io::Result<u64> {
    let path = data_dir.join(GENERATION_FILE);
    let context = |what: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("{what} generation file {}: {e}", path.display()),
        )
    };
    fs::create_dir_all(data_dir).map_err(|e| context("cannot create the directory of", e))?;
    let previous = match fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().parse::<u64>().map_err(|_| {
            let excerpt: String = text.chars().take(40).collect();
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "generation file {} is corrupt (holds {excerpt:?}, not a number); delete it \
                     to start a new sequence",
                    path.display()
                ),
            )
        })?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(context("cannot read", e)),
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let next = match previous {
        Some(previous) => previous
            .checked_add(1)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("generation file {} is exhausted", path.display()),
                )
            })?
            .max(now_ms),
        None => now_ms.max(1),
    };

    let tmp = data_dir.join(format!("{GENERATION_FILE}.tmp"));
    let write = || -> io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(format!("{next}\n").as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        // Make the rename itself durable.
        fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|e| context("cannot write", e))?;
    Ok(next)
}
