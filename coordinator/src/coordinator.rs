//! The running coordinator: state behind one lock, durable commits, the reconcile loop, and
//! the push of desired sets and route policy to connected agents.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drover_proto::model::{AllocState, AllocStatus, NodeHealth, NodeInfo, RevisionTraffic};
use drover_proto::pb;
use tokio::sync::{Mutex, MutexGuard, Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::changes::ChangeSet;
use crate::error::Error;
use crate::events;
use crate::failure;
use crate::reconcile;
use crate::rollout;
use crate::security::Authority;
use crate::state::{ClusterState, NodeEntry, Settings};
use crate::store::{EventRecord, RolloutPhase, Store, Write, counters};

/// Messages queued to one agent's stream.
pub type AgentSender = mpsc::Sender<Result<pb::CoordinatorMessage, tonic::Status>>;

#[derive(Debug)]
struct AgentSession {
    generation: u64,
    /// Serial number of the session, unique within this coordinator's run: a session's end
    /// removes only itself, not a newer one of the same node and generation.
    serial: u64,
    tx: AgentSender,
    /// Last desired set sent, to send only changes.
    sent_desired: Option<Vec<drover_proto::model::DesiredAllocation>>,
    /// Last gossip keyring sent.
    sent_gossip_keys: Option<Vec<String>>,
    /// Last CA bundle sent.
    sent_ca_bundle: Option<String>,
    /// Last read-capable token digests sent.
    sent_read_tokens: Option<Vec<pb::ReadToken>>,
    /// Last route policy sent (its services), to send only changes.
    sent_routes: Option<Vec<drover_proto::model::ServiceRoute>>,
}

/// State plus the sessions of connected agents, guarded together.
#[derive(Debug)]
pub struct Inner {
    /// Desired state and observations.
    pub state: ClusterState,
    agents: HashMap<String, AgentSession>,
    /// The last session serial number given out.
    sessions: u64,
    version: u64,
    /// Why rescheduling is held back, while it is (reported once).
    held_back: Option<String>,
    /// The autoscalers' windows and when they decide next.
    autoscalers: crate::autoscale::Autoscalers,
}

impl Inner {
    /// Sends `message` to `node`'s agent if it has a session and room in its queue.
    pub(crate) fn send_to_agent(&self, node: &str, message: pb::CoordinatorMessage) -> bool {
        self.agents
            .get(node)
            .is_some_and(|session| session.tx.try_send(Ok(message)).is_ok())
    }
}

impl Coordinator {
    /// The metrics registry now: the counters, and the gauges of the state.
    pub async fn metrics_registry(&self) -> prometheus_client::registry::Registry {
        let inner = self.inner.lock().await;
        self.metrics.registry(&inner.state, inner.agents.len())
    }
}

/// The coordinator shared by the gRPC services and the reconcile loop.
#[derive(Debug)]
pub struct Coordinator {
    inner: Mutex<Inner>,
    cluster_id: String,
    shutdown: CancellationToken,
    store: Arc<dyn Store>,
    events: broadcast::Sender<EventRecord>,
    wake: Notify,
    /// The CA and its policy; `None` only when the coordinator runs insecure (tests).
    authority: Option<Arc<Authority>>,
    /// The keyring this coordinator's gossip seals with, kept equal to the stored one.
    keyring: std::sync::OnceLock<drover_membership::KeyringHandle>,
    /// What Prometheus scrapes.
    pub metrics: crate::metrics::Metrics,
    /// What `/readyz` reports.
    pub health: Health,
    /// Open `drover logs` requests.
    pub logs: crate::logs::LogRouter,
}

/// The coordinator's readiness, kept as it works (read without the state's lock).
#[derive(Debug, Default)]
pub struct Health {
    /// The last store commit failed (with why), if it did.
    store_error: std::sync::Mutex<Option<String>>,
    /// When the last reconcile round finished, ms since the Unix epoch (0: none yet).
    reconciled_ms: std::sync::atomic::AtomicU64,
    /// Gossip has reported its members at least once.
    gossip_seen: std::sync::atomic::AtomicBool,
}

impl Health {
    /// The readiness checks: the store commits, reconcile rounds run (one within
    /// `reconcile_interval` × 3 and 10 s), and gossip has joined (when `in_gossip`).
    pub fn checks(
        &self,
        reconcile_interval: Duration,
        in_gossip: bool,
    ) -> Vec<drover_daemon::http::Check> {
        use std::sync::atomic::Ordering;
        let store = match &*self.store_error.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(why) => Err(format!("the last commit failed: {why}")),
            None => Ok(()),
        };
        let last = self.reconciled_ms.load(Ordering::Relaxed);
        let limit = u64::try_from((reconcile_interval * 3).as_millis())
            .unwrap_or(u64::MAX)
            .max(10_000);
        let now = now_unix_ms();
        let reconcile = if last == 0 {
            Err("no reconcile round has finished yet".to_string())
        } else if now.saturating_sub(last) > limit {
            Err(format!(
                "no reconcile round for {} ms",
                now.saturating_sub(last)
            ))
        } else {
            Ok(())
        };
        let gossip = if !in_gossip || self.gossip_seen.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("gossip has not reported its members yet".to_string())
        };
        vec![
            ("store", store),
            ("reconcile", reconcile),
            ("gossip", gossip),
        ]
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Coordinator {
    /// Loads the state from `store` and records the start.
    pub async fn start(
        store: Arc<dyn Store>,
        cluster_id: &str,
        settings: Settings,
        authority: Option<Arc<Authority>>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Coordinator>, Error> {
        let loaded = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.load())
                .await
                .map_err(|e| Error::Internal(format!("loading the store: {e}")))??
        };
        let boots = loaded.counter(counters::BOOTS) + 1;
        let mut state = ClusterState::from_stored(loaded);
        state.boot = boots;
        state.settings = settings;
        info!(
            workloads = state.stored.workloads.len(),
            allocations = state.stored.allocations.len(),
            boot = boots,
            "state loaded"
        );
        let (events, _) = broadcast::channel(1024);
        let coordinator = Arc::new(Coordinator {
            inner: Mutex::new(Inner {
                state,
                agents: HashMap::new(),
                sessions: 0,
                // Versions of desired sets and routes start above any earlier boot's.
                version: boots << 32,
                held_back: None,
                autoscalers: crate::autoscale::Autoscalers::default(),
            }),
            cluster_id: cluster_id.to_string(),
            shutdown,
            store,
            events,
            wake: Notify::new(),
            authority,
            keyring: std::sync::OnceLock::new(),
            metrics: crate::metrics::Metrics::default(),
            health: Health::default(),
            logs: crate::logs::LogRouter::default(),
        });
        let mut inner = coordinator.inner.lock().await;
        let mut changes = ChangeSet::new(&inner.state, now_unix_ms());
        changes.push(Write::PutCounter(counters::BOOTS, boots));
        changes.event(
            events::COORDINATOR_STARTED,
            "coordinator",
            format!("coordinator started (boot {boots})"),
        );
        for record in rollout::resumed_after_restart(&inner.state.stored, now_unix_ms()) {
            info!(service = %record.name, revision = record.revision, "rollout resumes");
            changes.push(Write::PutWorkload(record));
        }
        let full = crate::operations::assign_missing_addresses(&inner.state, &mut changes);
        if !full.is_empty() {
            warn!(services = ?full, network = %inner.state.settings.service_network,
                "no cluster address is free for these services; they are reached on node ports only");
        }
        coordinator.commit(&mut inner, changes).await?;
        drop(inner);
        Ok(coordinator)
    }

    /// The CA and its policy; `None` when the coordinator runs insecure.
    pub fn authority(&self) -> Option<&Authority> {
        self.authority.as_deref()
    }

    /// Sets the keyring of this coordinator's gossip; later commits that change the stored
    /// keyring change it too.
    pub fn set_keyring(&self, keyring: drover_membership::KeyringHandle) {
        let _ = self.keyring.set(keyring);
    }

    /// Locks the state.
    pub async fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().await
    }

    /// New events as they are committed.
    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.events.subscribe()
    }

    /// The store, for reading the event log.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Name of the cluster this coordinator runs; agents of another are refused.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Cancelled when the coordinator shuts down; long streams end on it.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Records which members gossip says are alive.
    pub async fn set_gossip_live(&self, live: std::collections::BTreeSet<String>) {
        self.health
            .gossip_seen
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut inner = self.inner.lock().await;
        let changed = inner.state.gossip_live.as_ref() != Some(&live);
        for (id, entry) in inner.state.nodes.iter_mut() {
            entry.gossip_seen |= live.contains(id);
        }
        inner.state.gossip_live = Some(live);
        drop(inner);
        if changed {
            // A member gone from gossip may make a disconnected node down.
            self.wake();
        }
    }

    /// Ends every agent session (their streams close), for shutdown.
    pub async fn close_sessions(&self) {
        let mut inner = self.inner.lock().await;
        let count = inner.agents.len();
        inner.agents.clear();
        info!(sessions = count, "agent sessions closed");
    }

    /// Asks the reconcile loop to run soon.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Makes `changes` durable, then applies them to the state and publishes their events.
    pub async fn commit(&self, inner: &mut Inner, changes: ChangeSet) -> Result<(), Error> {
        if changes.is_empty() {
            return Ok(());
        }
        let (writes, events) = changes.finish();
        let store = self.store.clone();
        let started = std::time::Instant::now();
        let committed = tokio::task::spawn_blocking(move || store.commit(&writes).map(|()| writes))
            .await
            .map_err(|e| Error::Internal(format!("store commit task: {e}")))?;
        *self
            .health
            .store_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = committed.as_ref().err().map(|e| e.to_string());
        let writes = committed?;
        self.metrics.committed(started.elapsed());
        self.metrics.observe_events(&events);
        inner.state.apply(&writes);
        let keys_changed = writes.iter().any(|w| {
            matches!(
                w,
                Write::PutCredential(crate::store::credentials::Credential::GossipKeys { .. })
            )
        });
        if keys_changed && let Some(handle) = self.keyring.get() {
            match crate::security::keyring(&inner.state) {
                Ok(Some(keyring)) => handle.set(keyring),
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "the stored gossip keyring is unusable; gossip keeps the old one")
                }
            }
        }
        for event in events {
            debug!(seq = event.seq, kind = %event.kind, subject = %event.subject, "event");
            // No subscribers is fine.
            let _ = self.events.send(event);
        }
        Ok(())
    }

    /// Runs reconcile passes until the state is stable (bounded), then pushes to agents.
    /// Returns how soon a failure deadline (a link grace ending, replicas of a down node
    /// counting as lost) calls for the next pass, if one is pending.
    pub async fn reconcile(&self) -> Result<Option<Duration>, Error> {
        let mut inner = self.inner.lock().await;
        self.detect_down(&mut inner).await?;
        self.autoscale(&mut inner).await?;
        let mut wake_at = None;
        for _ in 0..8 {
            let plan = reconcile::plan(&inner.state, now_unix_ms());
            inner.state.placement_failures = plan.placement_failures;
            wake_at = plan.wake_at_ms;
            if plan.changes.is_empty() {
                break;
            }
            self.commit(&mut inner, plan.changes).await?;
        }
        self.push(&mut inner).await;
        let now = now_unix_ms();
        let autoscaled = inner
            .state
            .stored
            .workloads
            .values()
            .any(|r| r.autoscale.is_some() || r.vertical_autoscale.is_some());
        let autoscale_at = autoscaled.then_some(inner.autoscalers.next_ms);
        let next = [
            failure::next_deadline(&inner.state, now),
            wake_at,
            autoscale_at,
        ]
        .into_iter()
        .flatten()
        .filter(|at| *at > now)
        .min();
        Ok(next.map(|at| Duration::from_millis(at - now)))
    }

    /// Lets the autoscalers decide, when a period has passed.
    async fn autoscale(&self, inner: &mut Inner) -> Result<(), Error> {
        let now = now_unix_ms();
        let mut changes = ChangeSet::new(&inner.state, now);
        if let Some(recommendations) = inner.autoscalers.run(&inner.state, now, &mut changes) {
            inner.state.recommendations = recommendations;
        }
        self.commit(inner, changes).await
    }

    /// Marks nodes down that the link and gossip both lost; their allocations become `lost`
    /// (and are replaced by the reconcile pass that follows).
    async fn detect_down(&self, inner: &mut Inner) -> Result<(), Error> {
        let now = now_unix_ms();
        let verdict = failure::check(&inner.state, now);
        let mut changes = ChangeSet::new(&inner.state, now);
        if let Some(why) = verdict.held_back {
            if inner.held_back.as_deref() != Some(why.as_str()) {
                warn!(reason = %why, "not rescheduling");
                changes.event(events::RESCHEDULE_HELD, "coordinator", why.clone());
            }
            inner.held_back = Some(why);
        } else {
            inner.held_back = None;
        }
        for (node, reason) in verdict.down {
            warn!(node = %node, reason = %reason, "node down");
            if let Some(entry) = inner.state.nodes.get_mut(&node) {
                entry.health = NodeHealth::Down;
                entry.reason = reason.clone();
                entry.flaps.went_down(now);
            }
            changes.event(events::NODE_DOWN, &node, reason);
        }
        for (id, node) in failure::lost_allocations(&inner.state, now) {
            let status = inner.state.status.entry(id.clone()).or_default();
            status.state = AllocState::Lost;
            status.message = format!("node {node} is down");
            changes.event(
                events::ALLOCATION_LOST,
                &id,
                format!("lost with node {node}"),
            );
        }
        self.commit(inner, changes).await
    }

    /// Runs the reconcile loop until `shutdown`: on every wake-up and every `interval`.
    pub async fn run_reconcile_loop(
        self: Arc<Self>,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(100);
        let mut next = interval;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(next) => {}
            }
            let started = std::time::Instant::now();
            match self.reconcile().await {
                Ok(deadline) => {
                    self.metrics.reconciled(started.elapsed());
                    self.health
                        .reconciled_ms
                        .store(now_unix_ms(), std::sync::atomic::Ordering::Relaxed);
                    backoff = Duration::from_millis(100);
                    // Wake early when a failure deadline (a link grace ending) falls in the
                    // interval.
                    next = deadline.map_or(interval, |wait| wait.min(interval));
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?backoff, "reconcile failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    self.wake();
                }
            }
        }
    }

    /// Sends each connected agent its desired set and the route policy, when they changed.
    async fn push(&self, inner: &mut Inner) {
        // Versions count within one store; agents reset theirs when this changes.
        let store_id = inner.state.stored.store_id.clone();
        let settings = &inner.state.settings;
        let cluster_dns = drover_proto::model::ClusterDns {
            address: settings.service_network.dns_address(),
            domain: settings.cluster_domain.as_str().to_string(),
            service_network: settings.service_network.to_string(),
        };
        let routes = crate::routing::route_policy(&inner.state);
        let gossip_keys = crate::security::gossip_keys(&inner.state);
        let ca_bundle = self.authority().map(|a| a.ca().bundle_pem().to_string());
        // Only with security on: an insecure agent's HTTP side takes no token.
        let read_tokens = ca_bundle
            .is_some()
            .then(|| crate::security::read_tokens(&inner.state));
        let nodes: Vec<String> = inner.agents.keys().cloned().collect();
        for node in nodes {
            // Who may read the agent's metrics.
            if let Some(session) = inner.agents.get_mut(&node)
                && let Some(tokens) = &read_tokens
                && session.sent_read_tokens.as_ref() != Some(tokens)
            {
                let message = pb::CoordinatorMessage {
                    body: Some(pb::coordinator_message::Body::ReadTokens(pb::ReadTokens {
                        tokens: tokens.clone(),
                    })),
                };
                if session.tx.try_send(Ok(message)).is_ok() {
                    session.sent_read_tokens = Some(tokens.clone());
                }
            }
            // The CAs trusted, so that an agent renews at once after a rotation's step.
            if let Some(session) = inner.agents.get_mut(&node)
                && let Some(bundle) = &ca_bundle
                && session.sent_ca_bundle.as_ref() != Some(bundle)
            {
                let message = pb::CoordinatorMessage {
                    body: Some(pb::coordinator_message::Body::CaBundle(pb::CaBundle {
                        bundle_pem: bundle.clone(),
                    })),
                };
                if session.tx.try_send(Ok(message)).is_ok() {
                    session.sent_ca_bundle = Some(bundle.clone());
                }
            }
            // The keyring first: a key in use must reach every agent before it seals.
            if let Some(session) = inner.agents.get_mut(&node)
                && !gossip_keys.is_empty()
                && session.sent_gossip_keys.as_ref() != Some(&gossip_keys)
            {
                let message = pb::CoordinatorMessage {
                    body: Some(pb::coordinator_message::Body::GossipKeys(pb::GossipKeys {
                        keys: gossip_keys.clone(),
                    })),
                };
                if session.tx.try_send(Ok(message)).is_ok() {
                    session.sent_gossip_keys = Some(gossip_keys.clone());
                }
            }
            let desired = desired_set(&inner.state, &node);
            let Some(session) = inner.agents.get(&node) else {
                continue;
            };
            let send_desired = session.sent_desired.as_ref() != Some(&desired);
            let send_routes = session.sent_routes.as_ref() != Some(&routes);
            if !send_desired && !send_routes {
                continue;
            }
            inner.version += 1;
            let version = inner.version;
            let Some(session) = inner.agents.get_mut(&node) else {
                continue;
            };
            let mut ok = true;
            if send_desired {
                // Domain types up to here; the wire type only to send.
                let set = drover_proto::model::DesiredSet {
                    version,
                    allocations: desired,
                    store_id: store_id.clone(),
                    cluster_dns: Some(cluster_dns.clone()),
                };
                let message = pb::CoordinatorMessage {
                    body: Some(pb::coordinator_message::Body::Desired((&set).into())),
                };
                ok &= session.tx.try_send(Ok(message)).is_ok();
                if ok {
                    session.sent_desired = Some(set.allocations);
                }
            }
            if send_routes && ok {
                let policy = drover_proto::model::RoutePolicy {
                    version,
                    services: routes.clone(),
                    store_id: store_id.clone(),
                };
                let message = pb::CoordinatorMessage {
                    body: Some(pb::coordinator_message::Body::Routes((&policy).into())),
                };
                ok &= session.tx.try_send(Ok(message)).is_ok();
                if ok {
                    session.sent_routes = Some(routes.clone());
                }
            }
            if !ok {
                // A full queue means a slow agent; the next pass retries with the full set.
                warn!(node = %node, "agent stream is backed up; will resend");
            }
        }
    }

    /// Registers an agent's session from its hello; returns the session's serial number for
    /// [`Coordinator::agent_disconnected`]. A session is refused while a newer generation of
    /// the same node is connected; statuses of allocations not placed on the node are not
    /// taken.
    pub async fn agent_connected(
        &self,
        info: NodeInfo,
        peer: Option<&drover_security::PeerCert>,
        running: Vec<(String, AllocStatus)>,
        tx: AgentSender,
    ) -> Result<u64, Error> {
        let mut inner = self.inner.lock().await;
        let node = info.id.clone();
        // A node is who its certificate says, never what its hello claims.
        if self.authority.is_some() {
            crate::security::check_node_certificate(&inner.state, peer, &node, now_unix_ms())?;
        }
        let generation = info.generation;
        if let Some(live) = inner.agents.get(&node)
            && live.generation > generation
            && !live.tx.is_closed()
        {
            warn!(node = %node, generation, live_generation = live.generation, address = %info.address, "session refused: a newer agent of this node is connected");
            return Err(Error::Refused(format!(
                "node {node} is connected with generation {}; a session of the older generation {generation} is refused",
                live.generation
            )));
        }
        let (running, reported) = own_statuses(&inner.state, &node, running);
        info!(node = %node, generation, address = %info.address, allocations = running.len(), unknown = reported.unknown, "agent connected");
        if reported.foreign > 0 {
            warn!(node = %node, foreign = reported.foreign, "hello listed allocations of other nodes; their statuses are refused");
        }
        let now = now_unix_ms();
        let mut changes = ChangeSet::new(&inner.state, now);
        changes.event(
            events::NODE_CONNECTED,
            &node,
            format!(
                "agent connected from {} (generation {generation}, {} allocations running)",
                info.address,
                running.len()
            ),
        );
        let previous = inner.state.nodes.get(&node);
        let mut flaps = previous.map(|e| e.flaps).unwrap_or_default();
        let gossip_seen = previous.is_some_and(|e| e.gossip_seen)
            || inner
                .state
                .gossip_live
                .as_ref()
                .is_some_and(|live| live.contains(&node));
        if previous.is_some_and(|e| e.health == NodeHealth::Down) {
            // Hysteresis: a node back from down loses placement ties for a while.
            let probation = flaps.came_back(now);
            let message = format!(
                "back after being down ({} time(s) within {} min): placements prefer other nodes for {}s",
                flaps.downs,
                failure::FLAP_WINDOW_MS / 60_000,
                probation.as_secs()
            );
            info!(node = %node, downs = flaps.downs, probation_ms = probation.as_millis() as u64, "node on probation");
            changes.event(events::NODE_PROBATION, &node, message);
        }
        inner.state.nodes.insert(
            node.clone(),
            NodeEntry {
                info,
                health: NodeHealth::Ready,
                reason: String::new(),
                usage: Default::default(),
                disconnected_since_ms: None,
                gossip_seen,
                flaps,
            },
        );
        for (id, status) in running {
            inner.state.observe(id, status, now);
        }
        inner.sessions += 1;
        let serial = inner.sessions;
        inner.agents.insert(
            node,
            AgentSession {
                generation,
                serial,
                tx,
                sent_desired: None,
                sent_routes: None,
                sent_gossip_keys: None,
                sent_ca_bundle: None,
                sent_read_tokens: None,
            },
        );
        self.commit(&mut inner, changes).await?;
        drop(inner);
        self.wake();
        Ok(serial)
    }

    /// Records allocation status and proxy traffic reported by an agent. `traffic` is the
    /// node's proxy counts per revision and per replica, a full list in a traffic update
    /// (never empty then) and empty in the others.
    pub async fn agent_status(
        &self,
        node: &str,
        updates: Vec<(String, AllocStatus)>,
        usage: Option<drover_proto::model::Resources>,
        traffic: (
            Vec<RevisionTraffic>,
            Vec<drover_proto::model::ReplicaTraffic>,
        ),
        samples: Vec<drover_proto::model::AllocUsage>,
    ) -> Result<Reported, Error> {
        let mut inner = self.inner.lock().await;
        let (updates, mut reported) = own_statuses(&inner.state, node, updates);
        let now = now_unix_ms();
        if !samples.is_empty() {
            let state = &mut inner.state;
            let allocations = &state.stored.allocations;
            reported.foreign += state.usage.observe(
                node,
                samples,
                |id| allocations.get(id).map(|a| a.node.as_str()),
                now,
            );
        }
        let (traffic, replicas) = traffic;
        if !traffic.is_empty() {
            let state = &mut inner.state;
            let allocations = &state.stored.allocations;
            reported.unknown += state.usage.observe_connections(
                node,
                replicas,
                |id| allocations.contains_key(id),
                now,
            );
        }
        let mut changes = ChangeSet::new(&inner.state, now);
        let mut wake = false;
        if !traffic.is_empty() {
            inner.state.observe_traffic(node, &traffic);
            // A canary step may be judged on the new counts.
            wake |= inner.state.stored.workloads.values().any(|r| {
                r.rollout.as_ref().is_some_and(|ro| {
                    ro.phase == RolloutPhase::Progressing
                        && (ro.step as usize) < r.update.canary.len()
                })
            });
        }
        for (id, status) in updates {
            let observed = status.state;
            let failed_message = status.message.clone();
            // A new host port (a restarted container) goes into the next route policy now,
            // not a reconcile interval later.
            let ports_moved = inner
                .state
                .status
                .get(&id)
                .is_some_and(|s| s.host_ports != status.host_ports);
            wake |= ports_moved;
            let previous = inner.state.observe(id.clone(), status, now);
            if observed != previous {
                wake = true;
                if observed == AllocState::Failed {
                    changes.event(
                        events::ALLOCATION_FAILED,
                        &id,
                        format!("failed on node {node}: {failed_message}"),
                    );
                }
            }
        }
        if let (Some(usage), Some(entry)) = (usage, inner.state.nodes.get_mut(node)) {
            entry.usage = usage;
        }
        self.commit(&mut inner, changes).await?;
        drop(inner);
        if wake {
            self.wake();
        }
        Ok(reported)
    }

    /// Ends an agent's session (by its serial number), unless a newer one replaced it.
    pub async fn agent_disconnected(&self, node: &str, serial: u64, cause: &str) {
        let mut inner = self.inner.lock().await;
        let Some(generation) = inner
            .agents
            .get(node)
            .filter(|s| s.serial == serial)
            .map(|s| s.generation)
        else {
            return;
        };
        inner.agents.remove(node);
        inner.state.usage.forget_node(node);
        if let Some(entry) = inner.state.nodes.get_mut(node) {
            entry.health = NodeHealth::Disconnected;
            entry.reason = format!("agent stream ended: {cause}");
            entry.disconnected_since_ms = Some(now_unix_ms());
        }
        info!(node = %node, generation, cause, "agent disconnected");
        let mut changes = ChangeSet::new(&inner.state, now_unix_ms());
        changes.event(
            events::NODE_DISCONNECTED,
            node,
            format!("agent stream ended: {cause}"),
        );
        if let Err(e) = self.commit(&mut inner, changes).await {
            warn!(node = %node, error = %e, "cannot record disconnect event");
        }
        drop(inner);
        self.wake();
    }
}

/// How many statuses of an agent's report were kept, and why the others were not.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reported {
    /// Statuses of allocations placed on the reporting node, recorded.
    pub recorded: usize,
    /// Statuses of allocation ids the coordinator does not know (deleted, or never were):
    /// dropped, as nothing can use them.
    pub unknown: usize,
    /// Statuses of allocations placed on another node: refused, as an agent speaks only for
    /// itself.
    pub foreign: usize,
}

/// The statuses `node` may give: those of allocations placed on it.
fn own_statuses(
    state: &ClusterState,
    node: &str,
    updates: Vec<(String, AllocStatus)>,
) -> (Vec<(String, AllocStatus)>, Reported) {
    let mut reported = Reported::default();
    let own = updates
        .into_iter()
        .filter(|(id, _)| match state.stored.allocations.get(id) {
            None => {
                reported.unknown += 1;
                false
            }
            Some(a) if a.node != node => {
                reported.foreign += 1;
                false
            }
            Some(_) => true,
        })
        .collect::<Vec<_>>();
    reported.recorded = own.len();
    (own, reported)
}

/// The desired set of one node: every allocation placed there, with the spec it runs.
pub fn desired_set(
    state: &ClusterState,
    node: &str,
) -> Vec<drover_proto::model::DesiredAllocation> {
    state
        .stored
        .allocations
        .values()
        .filter(|a| a.node == node)
        .filter_map(|a| {
            let spec = state.revision_spec(&a.service, a.revision)?;
            Some(drover_proto::model::DesiredAllocation {
                allocation: a.clone(),
                spec: spec.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use drover_proto::model::{Allocation, DesiredState, Resources};

    use super::*;

    #[test]
    fn statuses_are_kept_only_for_the_reporting_nodes_own_allocations() {
        let mut state = ClusterState::default();
        for (id, node) in [("web.1", "a"), ("web.2", "b")] {
            state.stored.allocations.insert(
                id.to_string(),
                Allocation {
                    id: id.to_string(),
                    service: "web".into(),
                    revision: 1,
                    node: node.to_string(),
                    resources: Resources::default(),
                    desired: DesiredState::Run,
                    created_unix_ms: 0,
                },
            );
        }
        let failed = AllocStatus {
            state: AllocState::Failed,
            ..AllocStatus::default()
        };
        let mut report: Vec<(String, AllocStatus)> = ["web.1", "web.2"]
            .into_iter()
            .map(|id| (id.to_string(), failed.clone()))
            .collect();
        report.extend((0..1000).map(|i| (format!("ghost.{i}"), failed.clone())));
        let (own, reported) = own_statuses(&state, "a", report);
        let ids: Vec<&str> = own.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["web.1"]);
        assert_eq!(
            reported,
            Reported {
                recorded: 1,
                unknown: 1000,
                foreign: 1
            }
        );
    }
}
