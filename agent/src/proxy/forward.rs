//! The data path of one service port: accept a client, pick a replica with the
//! [`Balancer`], connect (retrying a refused or timed-out connect on another replica), then
//! copy bytes both ways until either side is done.
//!
//! Draining: [`ServiceProxy::update`] hands the balancer the new endpoint set, so a removed
//! endpoint gets no new connection at once; connections already open to it keep copying until
//! they end or until [`ProxyConfig::drain_timeout`] after the removal, when they are closed.
//! Each endpoint with open connections has a deadline in a `watch` channel that its connection
//! tasks wait on; a removal sets it, a re-add clears it.
//!
//! Outcomes are counted per revision of the replica tried ([`ServiceProxy::revision_traffic`]):
//! every connect attempt is a connection, and it failed when the connect failed or the replica
//! closed or reset it before answering (the case retried on another replica).
//!
//! Pausing ([`ServiceProxy::pause`]): copies stop where no byte is held in the proxy and their
//! connections ([`HeldConnection`]) are handed to a sink, to go on in another process (an
//! agent restart, `crate::handoff`); [`ServiceProxy::adopt`] carries on with one.
//!
//! Both sockets get `TCP_NODELAY`. Bytes are copied through a buffer per direction that
//! grows to [`ProxyConfig::buffer_size`] ([`super::copy`]); with [`ProxyConfig::splice`] on
//! Linux they move with `splice(2)` through pooled pipes instead ([`super::splice`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use drover_proto::model::Strategy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::balancer::{Balancer, BalancerConfig, Endpoint, EndpointState};
use super::copy::{Buffers, Open};
use super::counters::{CountersSnapshot, RevisionCounters, RevisionOutcomes, ServiceCounters};

/// Most client bytes kept for a replay on another replica; a client that sends more before
/// the first answer is forwarded without the retry.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// Tuning of the data path, shared by every service proxy of an agent.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Longest wait for one connect to a replica.
    pub connect_timeout: Duration,
    /// Connect attempts per client connection, each on a different replica.
    pub attempts: u32,
    /// A replica that closes or resets the connection within this long of the connect,
    /// before answering a single byte, is treated like a failed connect: the client's bytes
    /// so far (up to [`REPLAY_LIMIT`]) are sent to another replica, within `attempts`. This
    /// covers a request caught by a replica's death. Zero turns it off.
    pub retry_unanswered_within: Duration,
    /// Move bytes with `splice(2)` (Linux) instead of copying them through user space: a
    /// half to two-thirds of the proxy CPU per byte, but lower throughput on loopback
    /// (docs/benchmarks.md).
    pub splice: bool,
    /// Largest copy buffer per direction (they start at 8 KiB and grow while reads fill
    /// them), so at most twice this per bulk connection.
    pub buffer_size: usize,
    /// How long connections to a removed endpoint may stay open before they are closed.
    pub drain_timeout: Duration,
    /// Settings of each service's balancer (ejection, slow start).
    pub balancer: BalancerConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout: Duration::from_secs(1),
            attempts: 3,
            retry_unanswered_within: Duration::from_secs(1),
            splice: false,
            // Measured best for bulk on loopback among 64, 128, 256 KiB and 1 MiB
            // (docs/benchmarks.md): fewer wake-ups per byte on both sides of the proxy.
            buffer_size: 256 * 1024,
            drain_timeout: Duration::from_secs(30),
            balancer: BalancerConfig::default(),
        }
    }
}

/// The proxy of one service port: its balancer, counters and open connections.
pub struct ServiceProxy {
    service: String,
    balancer: Arc<Mutex<Balancer>>,
    counters: Arc<ServiceCounters>,
    /// Connection outcomes per revision of the replica tried.
    revisions: RevisionCounters,
    config: ProxyConfig,
    /// Open upstream connections per endpoint id, and the current endpoint ids.
    connections: Mutex<Connections>,
    /// Client connections being handled (connecting or copying).
    handling: AtomicUsize,
    /// Notified when `handling` drops to zero, for `closed`. A plain counter rather than a
    /// `watch`: a watch notifies on every change, twice per connection.
    idle: Notify,
    /// Idle pipes for the splice path.
    #[cfg(target_os = "linux")]
    pipes: super::splice::PipePool,
    /// Cancelled by [`ServiceProxy::pause`]: copies stop and hand their connection on.
    pausing: CancellationToken,
    /// Where paused connections go.
    held: Mutex<Option<mpsc::UnboundedSender<HeldConnection>>>,
}

/// A connection between a client and a replica whose copy was paused with nothing held in
/// the proxy: its two sockets and what routes it, to be carried on elsewhere.
#[derive(Debug)]
pub struct HeldConnection {
    /// The client's socket.
    pub client: TcpStream,
    /// The socket to the replica.
    pub upstream: TcpStream,
    /// The replica it goes to (its drain follows the endpoint's).
    pub endpoint: Endpoint,
    /// The directions still carrying bytes.
    pub open: Open,
}

impl fmt::Debug for ServiceProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceProxy")
            .field("service", &self.service)
            .field("config", &self.config)
            .field("counters", &self.counters.snapshot())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Connections {
    /// Ids of the endpoints of the last update.
    current: HashSet<String>,
    /// Endpoints with at least one open connection.
    open: HashMap<String, Tracked>,
    /// Connections handed to each endpoint since this proxy was created, for endpoints that
    /// are current or still have open connections (the autoscalers' per-replica traffic).
    handed: HashMap<String, u64>,
}

#[derive(Debug)]
struct Tracked {
    count: usize,
    /// When the open connections must be closed; `None` while the endpoint is current.
    deadline: watch::Sender<Option<Instant>>,
}

impl ServiceProxy {
    /// A proxy for `service` with no endpoints yet; `seed` seeds its balancer.
    pub fn new(
        service: impl Into<String>,
        strategy: Strategy,
        config: ProxyConfig,
        seed: u64,
    ) -> ServiceProxy {
        let balancer = Balancer::new(strategy, config.balancer.clone(), seed);
        ServiceProxy {
            service: service.into(),
            balancer: Arc::new(Mutex::new(balancer)),
            counters: Arc::new(ServiceCounters::default()),
            revisions: RevisionCounters::default(),
            config,
            connections: Mutex::new(Connections::default()),
            handling: AtomicUsize::new(0),
            idle: Notify::new(),
            #[cfg(target_os = "linux")]
            pipes: super::splice::PipePool::default(),
            pausing: CancellationToken::new(),
            held: Mutex::new(None),
        }
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The live counters.
    pub fn counters(&self) -> &Arc<ServiceCounters> {
        &self.counters
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> CountersSnapshot {
        self.counters.snapshot()
    }

    /// Connection outcomes per revision of the replica tried, since this proxy was created
    /// (see [`RevisionOutcomes`]).
    pub fn revision_traffic(&self) -> BTreeMap<(Arc<str>, u64), RevisionOutcomes> {
        self.revisions.snapshot()
    }

    /// Replace the endpoint set, the revision weights and the strategy. Endpoints no longer
    /// listed get no new connection; their open connections are closed after the drain
    /// timeout unless they end first or the endpoint comes back.
    pub fn update(
        &self,
        endpoints: Vec<Endpoint>,
        revision_weights: &BTreeMap<u64, u32>,
        strategy: Strategy,
    ) {
        let current: HashSet<String> = endpoints.iter().map(|e| e.id.clone()).collect();
        {
            let mut balancer = self.lock_balancer();
            balancer.set_strategy(strategy);
            balancer.update(endpoints, revision_weights, Instant::now());
        }
        self.set_current(current);
    }

    /// Remove every endpoint: no new connection is forwarded, open ones drain.
    pub fn drain_all(&self) {
        self.lock_balancer()
            .update(Vec::new(), &BTreeMap::new(), Instant::now());
        self.set_current(HashSet::new());
    }

    /// Pause every connection: each copy stops where no byte is held in the proxy and its
    /// connection goes to `sink`, now or as soon as it is copying (one still connecting or
    /// waiting for a first answer gets there first). Connections that end meanwhile just
    /// end; [`ServiceProxy::closed`] tells when none is left. For a proxy that no longer
    /// accepts.
    pub fn pause(&self, sink: mpsc::UnboundedSender<HeldConnection>) {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Some(sink);
        self.pausing.cancel();
    }

    /// Carry on with a connection paused by another proxy (another agent's, before a
    /// restart): it is counted as open, to its endpoint, and drains like the others.
    pub fn adopt(self: &Arc<Self>, held: HeldConnection) {
        let handling = Handling::adopted(self);
        tokio::spawn(async move {
            let proxy = &handling.0;
            proxy.lock_balancer().connection_opened(&held.endpoint.id);
            let lease = proxy.track(&held.endpoint.id);
            proxy.forward(held, lease, Buffers::new()).await;
            drop(handling);
        });
    }

    /// Client connections being handled now.
    pub fn open_connections(&self) -> usize {
        self.handling.load(Ordering::Acquire)
    }

    /// What the balancer knows of each endpoint (weights, active connections, ejection).
    pub fn endpoints(&self) -> Vec<EndpointState> {
        self.lock_balancer().endpoints_at(Instant::now())
    }

    /// Per endpoint id: connections handed to it since this proxy was created (each connect
    /// attempt that succeeded; adopted connections are not new) and how many are open now,
    /// for endpoints that are current or still have open connections.
    pub fn replica_traffic(&self) -> BTreeMap<String, (u64, u64)> {
        let connections = self.lock_connections();
        let mut all: BTreeMap<String, (u64, u64)> = connections
            .handed
            .iter()
            .map(|(id, &handed)| (id.clone(), (handed, 0)))
            .collect();
        for (id, tracked) in &connections.open {
            all.entry(id.clone()).or_default().1 = tracked.count as u64;
        }
        all
    }

    /// Open connections per endpoint id (only endpoints with at least one).
    pub fn open_by_endpoint(&self) -> BTreeMap<String, usize> {
        self.lock_connections()
            .open
            .iter()
            .map(|(id, t)| (id.clone(), t.count))
            .collect()
    }

    /// Wait until no client connection is being handled.
    pub async fn closed(&self) {
        loop {
            // Registered before the check, so a drop to zero in between still wakes us.
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.handling.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn set_current(&self, current: HashSet<String>) {
        let deadline = Instant::now() + self.config.drain_timeout;
        let mut connections = self.lock_connections();
        for (id, tracked) in &connections.open {
            let listed = current.contains(id);
            let mut started = false;
            tracked.deadline.send_if_modified(|d| match (listed, *d) {
                (true, Some(_)) => {
                    *d = None;
                    true
                }
                (false, None) => {
                    *d = Some(deadline);
                    started = true;
                    true
                }
                _ => false,
            });
            if started {
                debug!(service = %self.service, endpoint = %id, open = tracked.count,
                    "endpoint removed; draining its connections");
            }
        }
        connections.current = current;
        let Connections {
            current,
            open,
            handed,
        } = &mut *connections;
        handed.retain(|id, _| current.contains(id) || open.contains_key(id));
    }

    fn lock_balancer(&self) -> MutexGuard<'_, Balancer> {
        self.balancer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_connections(&self) -> MutexGuard<'_, Connections> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Connect to a replica not in `tried`, until `attempts` replicas have been tried.
    async fn connect_upstream(
        &self,
        peer: SocketAddr,
        tried: &mut Vec<String>,
    ) -> Option<(Endpoint, TcpStream)> {
        while tried.len() < self.config.attempts.max(1) as usize {
            let attempt = tried.len();
            let picked = {
                let exclude: Vec<&str> = tried.iter().map(String::as_str).collect();
                self.lock_balancer().pick(Instant::now(), &exclude)
            };
            let Some(endpoint) = picked else {
                debug!(service = %self.service, %peer, attempt, "no endpoint left to try");
                return None;
            };
            if attempt > 0 {
                self.counters.retry();
            }
            let started = Instant::now();
            let error = match tokio::time::timeout(
                self.config.connect_timeout,
                TcpStream::connect(endpoint.address),
            )
            .await
            {
                Ok(Ok(stream)) => {
                    self.counters.connected(started.elapsed());
                    self.revisions
                        .attempted(&endpoint.workload, endpoint.revision, false);
                    let mut balancer = self.lock_balancer();
                    let now = Instant::now();
                    balancer.connect_succeeded(&endpoint.id, now);
                    balancer.connection_opened(&endpoint.id);
                    tried.push(endpoint.id.clone());
                    return Some((endpoint, stream));
                }
                Ok(Err(e)) => e,
                Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
            };
            self.counters.connect_error(error.kind());
            self.revisions
                .attempted(&endpoint.workload, endpoint.revision, true);
            self.lock_balancer()
                .connect_failed(&endpoint.id, Instant::now());
            debug!(service = %self.service, %peer, endpoint = %endpoint.id,
                address = %endpoint.address, attempt, error = %error, "connect to replica failed");
            tried.push(endpoint.id);
        }
        None
    }

    /// Count an open connection to `id` (already reported to the balancer).
    fn track(&self, id: &str) -> Lease<'_> {
        let mut connections = self.lock_connections();
        let listed = connections.current.contains(id);
        let tracked = connections
            .open
            .entry(id.to_owned())
            .or_insert_with(|| Tracked {
                count: 0,
                deadline: watch::Sender::new(None),
            });
        tracked.count += 1;
        if !listed {
            // Removed while we were connecting: it drains from now on.
            let deadline = Instant::now() + self.config.drain_timeout;
            tracked.deadline.send_if_modified(|d| {
                let unset = d.is_none();
                if unset {
                    *d = Some(deadline);
                }
                unset
            });
        }
        let deadline = tracked.deadline.subscribe();
        Lease {
            proxy: self,
            id: id.to_owned(),
            deadline,
        }
    }

    async fn handle(&self, mut client: TcpStream, peer: SocketAddr) {
        if let Err(e) = client.set_nodelay(true) {
            debug!(service = %self.service, %peer, error = %e, "cannot set TCP_NODELAY on client");
        }
        let mut tried = Vec::new();
        // The client's bytes before the first answer, for a replay on another replica.
        let mut sent = Vec::new();
        let mut buffers = Buffers::new();
        loop {
            let Some((endpoint, mut upstream)) = self.connect_upstream(peer, &mut tried).await
            else {
                self.counters.client_failed();
                warn!(service = %self.service, %peer,
                    "no replica accepted a connection; closing the client");
                return;
            };
            let mut lease = self.track(&endpoint.id);
            *self
                .lock_connections()
                .handed
                .entry(endpoint.id.clone())
                .or_default() += 1;
            if let Err(e) = upstream.set_nodelay(true) {
                debug!(service = %self.service, endpoint = %endpoint.id, error = %e,
                    "cannot set TCP_NODELAY on upstream");
            }
            let first = tokio::select! {
                first = self.first_answer(&mut client, &mut upstream, &mut sent, &mut buffers) => {
                    first
                }
                () = lease.drain_deadline() => {
                    self.counters.connection_drained();
                    return;
                }
            };
            match first {
                Ok(FirstAnswer::Started) => {}
                Ok(FirstAnswer::Unanswered) => {
                    // The replica went away before answering: another one gets the request.
                    self.counters.replay();
                    self.revisions
                        .unanswered(&endpoint.workload, endpoint.revision);
                    self.lock_balancer()
                        .connect_failed(&endpoint.id, Instant::now());
                    debug!(service = %self.service, %peer, endpoint = %endpoint.id,
                        replay = sent.len(), "replica closed before answering; retrying");
                    continue;
                }
                Err(e) => {
                    debug!(service = %self.service, %peer, endpoint = %endpoint.id, error = %e,
                        "connection ended before the first answer");
                    return;
                }
            }
            let held = HeldConnection {
                client,
                upstream,
                endpoint,
                open: Open::BOTH,
            };
            self.forward(held, lease, buffers).await;
            return;
        }
    }

    /// Copy a connection until it ends, its endpoint's drain deadline passes (then it is
    /// closed) or the proxy is paused (then it goes to the sink).
    async fn forward(&self, mut held: HeldConnection, mut lease: Lease<'_>, buffers: Buffers) {
        let copied = tokio::select! {
            result = self.copy(&mut held.client, &mut held.upstream, buffers, held.open) => {
                Some(result)
            }
            () = lease.drain_deadline() => None,
        };
        let endpoint = &held.endpoint.id;
        match copied {
            Some(Ok(open)) if open.any() => {
                held.open = open;
                drop(lease);
                let sink = self
                    .held
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let endpoint = held.endpoint.id.clone();
                // Not taken: dropped, so closed.
                if sink.is_none_or(|sink| sink.send(held).is_err()) {
                    debug!(service = %self.service, %endpoint,
                        "paused connection not taken; closing it");
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                debug!(service = %self.service, %endpoint, error = %e,
                    "connection ended with an error");
            }
            None => {
                self.counters.connection_drained();
                debug!(service = %self.service, %endpoint,
                    "drain deadline passed; closing the connection");
            }
        }
    }

    /// Until the replica sends its first byte: forward the client's bytes, keeping a copy in
    /// `sent`, and tell whether the replica closed without answering (so the request can go
    /// to another one). On a new replica, `sent` is replayed first. Returns `Started` (plain
    /// forwarding from then on, never replayed) once the replica answers, the client closes
    /// its side, [`ProxyConfig::retry_unanswered_within`] passes or `sent` would exceed
    /// [`REPLAY_LIMIT`].
    async fn first_answer(
        &self,
        client: &mut TcpStream,
        upstream: &mut TcpStream,
        sent: &mut Vec<u8>,
        buffers: &mut Buffers,
    ) -> io::Result<FirstAnswer> {
        let window = self.config.retry_unanswered_within;
        if window.is_zero() {
            return Ok(FirstAnswer::Started);
        }
        if !sent.is_empty() && upstream.write_all(sent).await.is_err() {
            return Ok(FirstAnswer::Unanswered);
        }
        // Timed from the connect; no timer needed: the window is checked as events come.
        let connected = Instant::now();
        let within = |now: Instant| now.duration_since(connected) <= window;
        let Buffers {
            inbound: request,
            outbound: answer,
        } = buffers;
        loop {
            request.clear();
            answer.clear();
            tokio::select! {
                biased;
                read = upstream.read_buf(answer) => {
                    return match read {
                        Ok(0) if within(Instant::now()) => Ok(FirstAnswer::Unanswered),
                        Err(e) if is_gone(&e) && within(Instant::now()) => {
                            Ok(FirstAnswer::Unanswered)
                        }
                        // A late close: the copy passes it on to the client.
                        Ok(0) => Ok(FirstAnswer::Started),
                        Ok(n) => {
                            client.write_all(&answer[..n]).await?;
                            self.counters.add_bytes_out(n);
                            Ok(FirstAnswer::Started)
                        }
                        Err(e) => Err(e),
                    };
                }
                read = client.read_buf(request) => {
                    let n = read?;
                    if n == 0 {
                        // The client is done sending: the copy forwards its close (once) and
                        // this connection is not replayed.
                        return Ok(FirstAnswer::Started);
                    }
                    self.counters.add_bytes_in(n);
                    let chunk = &request[..n];
                    if upstream.write_all(chunk).await.is_err() {
                        sent.extend_from_slice(chunk);
                        return Ok(if sent.len() <= REPLAY_LIMIT && within(Instant::now()) {
                            FirstAnswer::Unanswered
                        } else {
                            FirstAnswer::Started
                        });
                    }
                    if sent.len() + n > REPLAY_LIMIT || !within(Instant::now()) {
                        return Ok(FirstAnswer::Started);
                    }
                    sent.extend_from_slice(chunk);
                }
            }
        }
    }

    /// Forward the `open` directions until both have ended or either fails, or until the
    /// proxy is paused; returns the directions still open (none when it ended).
    async fn copy(
        &self,
        client: &mut TcpStream,
        upstream: &mut TcpStream,
        buffers: Buffers,
        open: Open,
    ) -> io::Result<Open> {
        #[cfg(target_os = "linux")]
        if self.config.splice {
            match self.pipes.take_pair() {
                Ok(pipes) => {
                    return super::splice::copy_bidirectional(
                        (client, upstream),
                        pipes,
                        &self.counters,
                        open,
                        &self.pausing,
                    )
                    .await;
                }
                Err(e) => {
                    debug!(service = %self.service, error = %e,
                        "no pipe for splice; copying through user space");
                }
            }
        }
        super::copy::copy_bidirectional(
            (client, upstream),
            buffers,
            (self.config.buffer_size, &self.counters),
            open,
            &self.pausing,
        )
        .await
    }
}

/// How a replica met a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstAnswer {
    /// It answered (or the replay window is over): forward as usual.
    Started,
    /// It closed or reset the connection before sending a byte.
    Unanswered,
}

/// The peer closed or reset the connection.
fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// One open upstream connection, counted per endpoint until dropped.
struct Lease<'a> {
    proxy: &'a ServiceProxy,
    id: String,
    deadline: watch::Receiver<Option<Instant>>,
}

impl Lease<'_> {
    /// Resolves when the endpoint's drain deadline passes.
    async fn drain_deadline(&mut self) {
        loop {
            let deadline = *self.deadline.borrow_and_update();
            let changed = match deadline {
                Some(at) => tokio::select! {
                    () = tokio::time::sleep_until(at) => return,
                    changed = self.deadline.changed() => changed,
                },
                None => self.deadline.changed().await,
            };
            if changed.is_err() {
                // Only happens once the entry is gone, which the lease itself prevents.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        {
            let mut connections = self.proxy.lock_connections();
            if let Some(tracked) = connections.open.get_mut(&self.id) {
                tracked.count -= 1;
                if tracked.count == 0 {
                    connections.open.remove(&self.id);
                }
            }
        }
        self.proxy.lock_balancer().connection_closed(&self.id);
    }
}

/// A client connection counted from accept until it ends.
struct Handling(Arc<ServiceProxy>);

impl Handling {
    fn new(proxy: &Arc<ServiceProxy>) -> Handling {
        proxy.counters.connection_accepted();
        Handling::counted(proxy)
    }

    /// A connection accepted elsewhere (by the agent before a restart).
    fn adopted(proxy: &Arc<ServiceProxy>) -> Handling {
        proxy.counters.connection_adopted();
        Handling::counted(proxy)
    }

    fn counted(proxy: &Arc<ServiceProxy>) -> Handling {
        proxy.handling.fetch_add(1, Ordering::AcqRel);
        Handling(Arc::clone(proxy))
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.counters.connection_ended();
        if self.0.handling.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Accept clients on `listener` and forward each one through `proxy`, until `shutdown` is
/// cancelled; then returns the listener (dropping it closes it; kept, new connections wait
/// in its backlog). Connections already accepted keep running (see
/// [`ServiceProxy::drain_all`] and [`ServiceProxy::closed`]).
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<ServiceProxy>,
    shutdown: CancellationToken,
) -> TcpListener {
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                let handling = Handling::new(&proxy);
                tokio::spawn(async move {
                    let proxy = &handling.0;
                    proxy.handle(client, peer).await;
                    drop(handling);
                });
            }
            Err(e) if is_per_connection(&e) => {
                debug!(service = %proxy.service, error = %e, "accept failed for one connection");
            }
            Err(e) => {
                // Typically EMFILE/ENFILE: back off instead of spinning.
                warn!(service = %proxy.service, error = %e, "accept failed; pausing 100 ms");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
    listener
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
