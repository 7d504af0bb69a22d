//! The service proxy through real sockets on loopback: backends are small TCP servers that
//! answer each connection with their name.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use drover_agent::proxy::balancer::{BalancerConfig, Endpoint};
use drover_agent::proxy::{ProxyConfig, ProxyManager, RevisionOutcomes, ServiceRoute};
use drover_proto::model::{RevisionTraffic, Strategy};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A replica: writes its name and a newline to every connection, then echoes what it receives
/// until the client closes. Clients close first (the backend never does), so TIME_WAIT lands on
/// the connecting side's ephemeral ports; a backend that closed first would leave thousands of
/// TIME_WAIT entries on its own side and a reused client port then meets a challenge ACK and a
/// one-second SYN retransmit, which skews the counts (retries) and slows the tests.
struct Backend {
    name: String,
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl Backend {
    async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind((LOCALHOST, 0))
            .await
            .expect("bind a backend");
        let address = listener.local_addr().expect("backend address");
        let greeting = format!("{name}\n");
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let greeting = greeting.clone();
                tokio::spawn(async move {
                    if stream.write_all(greeting.as_bytes()).await.is_err() {
                        return;
                    }
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        Backend {
            name: name.to_owned(),
            address,
            task,
        }
    }

    fn endpoint(&self, revision: u64) -> Endpoint {
        Endpoint::new(self.name.clone(), self.address, "web", revision)
    }

    /// Close the listening socket: later connects are refused.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind((LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind port 0")
        .port()
}

fn route(
    port: u16,
    strategy: Strategy,
    revision_weights: &[(u64, u32)],
    endpoints: Vec<Endpoint>,
) -> ServiceRoute {
    ServiceRoute {
        service: "web".to_owned(),
        port,
        listen: vec![std::net::SocketAddr::new(LOCALHOST, port)],
        strategy,
        pool_weights: revision_weights.iter().copied().collect(),
        endpoints,
    }
}

fn test_config() -> ProxyConfig {
    ProxyConfig {
        drain_timeout: Duration::from_secs(1),
        ..ProxyConfig::default()
    }
}

/// Connect through the proxy and read the backend's name up to its newline; `None` when the
/// proxy closed the connection without one.
async fn fetch(port: u16) -> Option<String> {
    let stream = TcpStream::connect((LOCALHOST, port)).await.ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.ok()?;
    line.strip_suffix('\n').map(str::to_owned)
}

/// `n` sequential connections; counts per backend name, failures under "".
async fn fetch_many(port: u16, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let name = fetch(port).await.unwrap_or_default();
        *counts.entry(name).or_default() += 1;
    }
    counts
}

fn count(counts: &BTreeMap<String, usize>, name: &str) -> usize {
    counts.get(name).copied().unwrap_or(0)
}

#[tokio::test]
async fn round_robin_splits_exactly_over_equal_backends() {
    // Both data paths: copy (the default) and splice.
    for splice in [false, true] {
        let backends = [
            Backend::start("a").await,
            Backend::start("b").await,
            Backend::start("c").await,
        ];
        let port = free_port();
        let config = ProxyConfig {
            splice,
            ..test_config()
        };
        let mut proxy = ProxyManager::new(config, 1);
        let endpoints = backends.iter().map(|b| b.endpoint(1)).collect();
        proxy
            .apply(vec![route(port, Strategy::RoundRobin, &[], endpoints)])
            .await;

        let counts = fetch_many(port, 3_000).await;
        assert_eq!(
            counts,
            BTreeMap::from([
                ("a".to_owned(), 1_000),
                ("b".to_owned(), 1_000),
                ("c".to_owned(), 1_000)
            ]),
            "splice={splice}"
        );
        let stats = proxy.counters()["web"];
        assert_eq!(stats.accepted, 3_000);
        assert_eq!(stats.failed, 0);
        assert_eq!(stats.bytes_out, 3_000 * 2);
        proxy.shutdown().await;
        for backend in backends {
            backend.kill().await;
        }
    }
}

#[tokio::test]
async fn revision_weights_split_ninety_ten() {
    let stable = [
        Backend::start("stable-1").await,
        Backend::start("stable-2").await,
    ];
    let canary = Backend::start("canary").await;
    let port = free_port();
    let mut proxy = ProxyManager::new(test_config(), 2);
    let mut endpoints: Vec<Endpoint> = stable.iter().map(|b| b.endpoint(1)).collect();
    endpoints.push(canary.endpoint(2));
    proxy
        .apply(vec![route(
            port,
            Strategy::RoundRobin,
            &[(1, 90), (2, 10)],
            endpoints,
        )])
        .await;

    let started = Instant::now();
    let counts = fetch_many(port, 10_000).await;
    let canary_share = count(&counts, "canary");
    let stable_share = count(&counts, "stable-1") + count(&counts, "stable-2");
    assert_eq!(count(&counts, ""), 0, "failed connections: {counts:?}");
    assert_eq!(stable_share + canary_share, 10_000);
    assert!(
        (800..=1_200).contains(&canary_share),
        "canary got {canary_share} of 10,000: {counts:?}"
    );
    eprintln!(
        "10,000 sequential connections in {:?}: {counts:?}",
        started.elapsed()
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn weight_change_applies_to_the_next_connections() {
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    let port = free_port();
    let mut proxy = ProxyManager::new(test_config(), 3);
    let endpoints = || vec![old.endpoint(1), new.endpoint(2)];
    proxy
        .apply(vec![route(
            port,
            Strategy::RoundRobin,
            &[(1, 90), (2, 10)],
            endpoints(),
        )])
        .await;
    let before = fetch_many(port, 100).await;
    assert!((85..=95).contains(&count(&before, "old")), "{before:?}");

    proxy
        .apply(vec![route(
            port,
            Strategy::RoundRobin,
            &[(1, 10), (2, 90)],
            endpoints(),
        )])
        .await;
    let after = fetch_many(port, 100).await;
    assert!((85..=95).contains(&count(&after, "new")), "{after:?}");

    proxy
        .apply(vec![route(
            port,
            Strategy::RoundRobin,
            &[(1, 0), (2, 100)],
            endpoints(),
        )])
        .await;
    let only_new = fetch_many(port, 50).await;
    assert_eq!(only_new, BTreeMap::from([("new".to_owned(), 50)]));
    proxy.shutdown().await;
}

#[tokio::test]
async fn killed_backend_costs_no_client_connection_and_is_ejected() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let port = free_port();
    let mut proxy = ProxyManager::new(test_config(), 4);
    proxy
        .apply(vec![route(
            port,
            Strategy::RoundRobin,
            &[],
            vec![a.endpoint(1), b.endpoint(1), c.endpoint(1)],
        )])
        .await;

    // 2,000 connections in a loop; `c` dies after the first 500.
    let before_kill = fetch_many(port, 500).await;
    c.kill().await;
    let mut after_kill = fetch_many(port, 30).await;
    // Ejected (for a second at first) after `eject_after` consecutive refused connects.
    let ejected: Vec<String> = proxy
        .proxy(port)
        .expect("proxy")
        .endpoints()
        .into_iter()
        .filter(|e| e.ejected_until.is_some())
        .map(|e| e.id)
        .collect();
    assert_eq!(ejected, vec!["c".to_owned()]);
    for (name, n) in fetch_many(port, 1_470).await {
        *after_kill.entry(name).or_default() += n;
    }
    let mut counts = before_kill;
    for (name, n) in &after_kill {
        *counts.entry(name.clone()).or_default() += n;
    }
    assert_eq!(
        count(&counts, ""),
        0,
        "failed client connections: {counts:?}"
    );
    assert_eq!(count(&after_kill, "c"), 0);
    assert!(count(&counts, "c") > 100, "{counts:?}");
    let stats = proxy.counters()["web"];
    assert_eq!(stats.failed, 0);
    assert_eq!(stats.retries, stats.connect_errors);
    // Without ejection every third of the 1,500 connections after the kill would try `c`.
    assert!(
        (1..=10).contains(&stats.connect_errors),
        "dead backend not ejected: {stats:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn removed_backend_drains_then_closes() {
    let x = Backend::start("x").await;
    let y = Backend::start("y").await;
    let port = free_port();
    let mut proxy = ProxyManager::new(test_config(), 5);
    proxy
        .apply(vec![route(
            port,
            Strategy::RoundRobin,
            &[],
            vec![x.endpoint(1), y.endpoint(1)],
        )])
        .await;

    // One long connection to each backend.
    let mut first = BufReader::new(
        TcpStream::connect((LOCALHOST, port))
            .await
            .expect("connect"),
    );
    let mut victim = String::new();
    first.read_line(&mut victim).await.expect("greeting");
    let victim = victim.trim_end().to_owned();
    let mut second = BufReader::new(
        TcpStream::connect((LOCALHOST, port))
            .await
            .expect("connect"),
    );
    let mut survivor = String::new();
    second.read_line(&mut survivor).await.expect("greeting");
    let survivor = survivor.trim_end().to_owned();
    assert_ne!(victim, survivor);
    let kept = if survivor == "x" { &x } else { &y };

    proxy
        .apply(vec![route(
            port,
            Strategy::RoundRobin,
            &[],
            vec![kept.endpoint(1)],
        )])
        .await;
    let removed_at = Instant::now();

    // New connections avoid the removed backend.
    let counts = fetch_many(port, 20).await;
    assert_eq!(counts, BTreeMap::from([(survivor.clone(), 20)]));

    // The open connection to it still works.
    let open = proxy.proxy(port).expect("proxy").open_by_endpoint();
    assert_eq!(open.get(&victim), Some(&1), "{open:?}");
    first
        .get_mut()
        .write_all(b"still there?\n")
        .await
        .expect("write");
    let mut echo = String::new();
    first.read_line(&mut echo).await.expect("echo");
    assert_eq!(echo, "still there?\n");

    // ... until the drain deadline closes it.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), first.read_to_end(&mut rest))
        .await
        .expect("closed within the drain timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let waited = removed_at.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );

    // The connection to the backend that stayed is untouched.
    second.get_mut().write_all(b"hello\n").await.expect("write");
    let mut echo = String::new();
    second.read_line(&mut echo).await.expect("echo");
    assert_eq!(echo, "hello\n");

    let stats = proxy.counters()["web"];
    assert_eq!(stats.drained, 1);
    drop(second);
    proxy.shutdown().await;
}

#[tokio::test]
async fn endpoint_back_before_the_deadline_keeps_its_connections() {
    let x = Backend::start("x").await;
    let port = free_port();
    let mut proxy = ProxyManager::new(test_config(), 9);
    let with_x = || vec![route(port, Strategy::RoundRobin, &[], vec![x.endpoint(1)])];
    proxy.apply(with_x()).await;
    let mut conn = BufReader::new(
        TcpStream::connect((LOCALHOST, port))
            .await
            .expect("connect"),
    );
    let mut greeting = String::new();
    conn.read_line(&mut greeting).await.expect("greeting");
    assert_eq!(greeting, "x\n");

    proxy
        .apply(vec![route(port, Strategy::RoundRobin, &[], Vec::new())])
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.apply(with_x()).await;
    // Past the drain deadline the removal would have set.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    conn.get_mut().write_all(b"ping\n").await.expect("write");
    let mut echo = String::new();
    conn.read_line(&mut echo).await.expect("echo");
    assert_eq!(echo, "ping\n");
    assert_eq!(proxy.counters()["web"].drained, 0);
    drop(conn);
    proxy.shutdown().await;
}

#[tokio::test]
async fn listener_stops_when_its_route_disappears() {
    let a = Backend::start("a").await;
    let port = free_port();
    let mut proxy = ProxyManager::new(test_config(), 6);
    proxy
        .apply(vec![route(
            port,
            Strategy::LeastConn,
            &[],
            vec![a.endpoint(1)],
        )])
        .await;
    assert_eq!(fetch(port).await.as_deref(), Some("a"));
    assert_eq!(proxy.listening_ports(), vec![port]);

    proxy.apply(Vec::new()).await;
    let refused = TcpStream::connect((LOCALHOST, port))
        .await
        .expect_err("nothing listens any more");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(proxy.listening_ports().is_empty());
    assert!(proxy.counters().is_empty());
    proxy.shutdown().await;
}

#[tokio::test]
async fn busy_port_is_retried_on_the_next_apply() {
    let a = Backend::start("a").await;
    let squatter = std::net::TcpListener::bind((LOCALHOST, 0)).expect("bind");
    let port = squatter.local_addr().expect("address").port();
    let mut proxy = ProxyManager::new(test_config(), 7);
    let routes = || vec![route(port, Strategy::Random, &[], vec![a.endpoint(1)])];

    proxy.apply(routes()).await;
    assert!(proxy.listening_ports().is_empty());

    drop(squatter);
    proxy.apply(routes()).await;
    assert_eq!(proxy.listening_ports(), vec![port]);
    assert_eq!(fetch(port).await.as_deref(), Some("a"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn no_endpoint_closes_the_client() {
    let port = free_port();
    let mut proxy = ProxyManager::new(test_config(), 8);
    proxy
        .apply(vec![route(port, Strategy::RoundRobin, &[], Vec::new())])
        .await;
    assert_eq!(fetch(port).await, None);
    let stats = proxy.counters()["web"];
    assert_eq!(stats.failed, 1);
    assert_eq!(stats.accepted, 1);
    proxy.shutdown().await;
}

/// A replica that accepts and closes at once without a byte, as Docker's port proxy does for a
/// container that just died; `read_first` makes it read the request before closing (a request
/// caught by the replica's death).
async fn mute_backend(read_first: bool) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind((LOCALHOST, 0))
        .await
        .expect("bind a backend");
    let address = listener.local_addr().expect("backend address");
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            if read_first {
                let mut buf = [0u8; 64];
                let _ = stream.read(&mut buf).await;
            }
            drop(stream);
        }
    });
    (address, task)
}

/// Connect, send a request line, read the answer line: `None` if none came.
async fn request(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect((LOCALHOST, port)).await.ok()?;
    stream.write_all(b"ping\n").await.ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.ok()?;
    line.strip_suffix('\n').map(str::to_owned)
}

#[tokio::test]
async fn a_replica_that_closes_before_answering_is_retried_elsewhere() {
    for read_first in [false, true] {
        let good = Backend::start("good").await;
        let (mute, mute_task) = mute_backend(read_first).await;
        let endpoints = || vec![good.endpoint(1), Endpoint::new("mute", mute, "web", 1)];
        let port = free_port();
        let mut with_retry = ProxyManager::new(test_config(), 1);
        with_retry
            .apply(vec![route(port, Strategy::RoundRobin, &[], endpoints())])
            .await;
        let mut failures = 0;
        for _ in 0..200 {
            match request(port).await.as_deref() {
                Some("good") => {}
                _ => failures += 1,
            }
        }
        assert_eq!(
            failures, 0,
            "read_first={read_first}: every request answered"
        );
        with_retry.shutdown().await;

        // The same without the retry: the client sees the replica's close.
        let port = free_port();
        let config = ProxyConfig {
            retry_unanswered_within: Duration::ZERO,
            ..test_config()
        };
        let mut without = ProxyManager::new(config, 1);
        without
            .apply(vec![route(port, Strategy::RoundRobin, &[], endpoints())])
            .await;
        let mut failures = 0;
        for _ in 0..20 {
            if request(port).await.as_deref() != Some("good") {
                failures += 1;
            }
        }
        assert!(
            failures > 0,
            "read_first={read_first}: without the retry some fail"
        );
        without.shutdown().await;
        mute_task.abort();
        good.kill().await;
    }
}

/// The proxy's totals for `service`, by revision.
fn traffic_of(proxy: &ProxyManager, service: &str) -> BTreeMap<u64, (u64, u64)> {
    proxy
        .traffic()
        .into_iter()
        .filter(|t| t.service == service)
        .map(|t| (t.revision, (t.connections, t.failed)))
        .collect()
}

#[tokio::test]
async fn connection_outcomes_are_counted_per_revision() {
    // Revision 1 answers, revision 2 closes without answering, revision 3 refuses. Without
    // ejection every replica keeps its turn, so all three revisions get attempts.
    let good = Backend::start("good").await;
    let (mute, mute_task) = mute_backend(false).await;
    let refusing = SocketAddr::new(LOCALHOST, free_port());
    let replica = |id: &str, address, revision| Endpoint::new(id, address, "web", revision);
    let config = ProxyConfig {
        balancer: BalancerConfig {
            eject_after: 0,
            ..BalancerConfig::default()
        },
        ..test_config()
    };
    let port = free_port();
    let mut proxy = ProxyManager::new(config, 11);
    proxy
        .apply(vec![route(
            port,
            Strategy::RoundRobin,
            &[],
            vec![
                good.endpoint(1),
                replica("mute", mute, 2),
                replica("refusing", refusing, 3),
            ],
        )])
        .await;

    for _ in 0..60 {
        assert_eq!(request(port).await.as_deref(), Some("good"));
    }
    let by_revision = proxy.proxy(port).expect("proxy").revision_traffic();
    let outcomes = |revision: u64| {
        by_revision
            .get(&(std::sync::Arc::from("web"), revision))
            .copied()
            .unwrap_or_default()
    };
    // Every client connection ended on revision 1, answered: 60 connections, none failed.
    assert_eq!(
        outcomes(1),
        RevisionOutcomes {
            connections: 60,
            failed: 0
        }
    );
    // Every attempt on revisions 2 and 3 failed (closed unanswered, refused) and was retried.
    let (mute, refused) = (outcomes(2), outcomes(3));
    assert_eq!(mute.failed, mute.connections);
    assert_eq!(refused.failed, refused.connections);
    assert!(
        mute.connections >= 10 && refused.connections >= 10,
        "{by_revision:?}"
    );
    let stats = proxy.counters()["web"];
    assert_eq!(stats.retries, mute.connections + refused.connections);
    assert_eq!(stats.connect_errors, refused.connections);
    assert_eq!(stats.failed, 0);
    // The node's view has the same numbers.
    assert_eq!(
        proxy.traffic(),
        [(1, outcomes(1)), (2, mute), (3, refused)]
            .map(|(revision, o)| RevisionTraffic {
                service: "web".into(),
                revision,
                connections: o.connections,
                failed: o.failed,
            })
            .to_vec()
    );
    // Per replica: every connection that reached it, none open once the last one's task
    // is done; a refused connect never reached its replica.
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.replica_traffic().iter().any(|r| r.active > 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let replicas: BTreeMap<String, (u64, u64)> = proxy
        .replica_traffic()
        .into_iter()
        .map(|r| (r.allocation_id, (r.connections, r.active)))
        .collect();
    assert_eq!(
        replicas,
        BTreeMap::from([
            ("good".to_string(), (60, 0)),
            ("mute".to_string(), (mute.connections, 0)),
        ])
    );
    proxy.shutdown().await;
    mute_task.abort();
    good.kill().await;
}

#[tokio::test]
async fn traffic_sums_a_services_ports_and_outlives_a_stopped_port() {
    let good = Backend::start("good").await;
    let (first, second) = (free_port(), free_port());
    let mut proxy = ProxyManager::new(test_config(), 12);
    let both = || {
        vec![
            route(first, Strategy::RoundRobin, &[], vec![good.endpoint(4)]),
            route(second, Strategy::RoundRobin, &[], vec![good.endpoint(4)]),
        ]
    };
    proxy.apply(both()).await;
    assert!(
        proxy.traffic().is_empty(),
        "nothing counted before a connection"
    );
    fetch_many(first, 3).await;
    fetch_many(second, 2).await;
    assert_eq!(traffic_of(&proxy, "web"), BTreeMap::from([(4, (5, 0))]));

    // The second port goes away; its connections still count, now and after it is dropped.
    proxy
        .apply(vec![route(
            first,
            Strategy::RoundRobin,
            &[],
            vec![good.endpoint(4)],
        )])
        .await;
    fetch_many(first, 1).await;
    proxy.apply(both()).await;
    fetch_many(second, 1).await;
    assert_eq!(traffic_of(&proxy, "web"), BTreeMap::from([(4, (7, 0))]));
    proxy.shutdown().await;
    good.kill().await;
}
