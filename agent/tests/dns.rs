//! The cluster DNS through real sockets on loopback: clients send raw hickory-proto
//! messages over UDP and TCP; the upstream is a small server that knows one name,
//! `example.test.`, and reports the bytes it received.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_agent::dns::{DnsListener, Records};
use drover_proto::model::{RouteEndpoint, RoutePolicy, ServiceRoute, Strategy};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The forward timeout of the servers under test: short, so SERVFAIL comes quickly.
const TIMEOUT: Duration = Duration::from_millis(300);

/// The upstream's one address, for `example.test.`.
const EXAMPLE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

fn endpoint(id: &str, address: &str) -> RouteEndpoint {
    RouteEndpoint {
        allocation_id: id.into(),
        node: "n1".into(),
        revision: 1,
        address: Some(address.parse().expect("endpoint address")),
        weight: 1,
        workload: "w".into(),
        pool: 1,
        container_port: 8080,
    }
}

fn route(
    service: &str,
    port: u16,
    port_name: &str,
    cluster_ip: Option<Ipv4Addr>,
    endpoints: Vec<RouteEndpoint>,
) -> ServiceRoute {
    ServiceRoute {
        service: service.into(),
        port,
        port_name: Some(port_name.into()),
        cluster_ip,
        node_port: None,
        strategy: Strategy::RoundRobin,
        pool_weights: BTreeMap::new(),
        endpoints,
    }
}

/// `web` at `web_ip`; headless `db` with db.1 and db.2 ready and db.3 not.
fn records(web_ip: Ipv4Addr) -> Arc<Records> {
    let policy = RoutePolicy {
        version: 1,
        store_id: "s".into(),
        services: vec![
            route("web", 80, "http", Some(web_ip), vec![]),
            route(
                "db",
                5432,
                "pg",
                None,
                vec![
                    endpoint("db.1", "192.168.1.10:31001"),
                    endpoint("db.2", "192.168.1.11:31002"),
                    endpoint("db.3", "192.168.1.12:31003"),
                ],
            ),
        ],
    };
    let ready = |e: &RouteEndpoint| e.allocation_id != "db.3";
    Arc::new(Records::build(&policy, ready, "cluster.local", "default"))
}

const WEB_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);

/// A fake upstream on UDP and TCP (one port): answers `example.test.` A with [`EXAMPLE`]
/// and every other name NXDOMAIN, and sends each query's bytes to `received`.
struct Upstream {
    address: SocketAddr,
    received: mpsc::UnboundedReceiver<Vec<u8>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Upstream {
    async fn start() -> Upstream {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind upstream");
        let address = udp.local_addr().expect("upstream address");
        let tcp = TcpListener::bind(address).await.expect("bind upstream tcp");
        let (sender, received) = mpsc::unbounded_channel();
        let udp_sender = sender.clone();
        let udp_task = tokio::spawn(async move {
            let mut buffer = vec![0; 65535];
            while let Ok((length, from)) = udp.recv_from(&mut buffer).await {
                let query = buffer[..length].to_vec();
                let _ = udp_sender.send(query.clone());
                let _ = udp.send_to(&upstream_answer(&query), from).await;
            }
        });
        let tcp_task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let sender = sender.clone();
                tokio::spawn(async move {
                    while let Ok(query) = read_framed(&mut stream).await {
                        let _ = sender.send(query.clone());
                        if write_framed(&mut stream, &upstream_answer(&query))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Upstream {
            address,
            received,
            tasks: vec![udp_task, tcp_task],
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn upstream_answer(query: &[u8]) -> Vec<u8> {
    let query = Message::from_vec(query).expect("the relayed query decodes");
    let mut response = Message::response(query.metadata.id, OpCode::Query);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_queries(query.queries.clone());
    let asked = &query.queries[0];
    if asked.name() == &name("example.test.") {
        response.add_answer(Record::from_rdata(
            asked.name().clone(),
            60,
            RData::A(A(EXAMPLE)),
        ));
    } else {
        response.metadata.response_code = ResponseCode::NXDomain;
    }
    response.to_vec().expect("encode the upstream's answer")
}

async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let length = stream.read_u16().await?;
    let mut buffer = vec![0; usize::from(length)];
    stream.read_exact(&mut buffer).await?;
    Ok(buffer)
}

async fn write_framed(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let length = u16::try_from(message.len()).expect("a short message");
    let mut framed = length.to_be_bytes().to_vec();
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

/// A DNS server under test on a free loopback port.
struct Dns {
    address: SocketAddr,
    records: watch::Sender<Arc<Records>>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), drover_agent::dns::DnsError>>,
}

impl Dns {
    async fn start(upstreams: Vec<SocketAddr>) -> Dns {
        let listener = DnsListener::bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind the DNS server");
        let address = listener.local_addr();
        let (records, receiver) = watch::channel(records(WEB_IP));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(listener.serve(receiver, upstreams, TIMEOUT, shutdown.clone()));
        Dns {
            address,
            records,
            shutdown,
            task,
        }
    }
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("a name")
}

fn query(asked: &str, record_type: RecordType) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name(asked), record_type));
    message
}

/// Sends `message` over UDP and returns the response.
async fn udp(server: SocketAddr, message: &Message) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    let bytes = message.to_vec().expect("encode the query");
    socket.send_to(&bytes, server).await.expect("send");
    let mut buffer = vec![0; 65535];
    let (length, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buffer))
        .await
        .expect("an answer within 5 s")
        .expect("receive");
    let response = Message::from_vec(&buffer[..length]).expect("decode the response");
    assert_eq!(response.metadata.id, message.metadata.id);
    assert_eq!(response.metadata.message_type, MessageType::Response);
    response
}

/// Sends `message` over TCP and returns the response.
async fn tcp(server: SocketAddr, message: &Message) -> Message {
    let mut stream = TcpStream::connect(server).await.expect("connect");
    let bytes = message.to_vec().expect("encode the query");
    write_framed(&mut stream, &bytes).await.expect("send");
    let response = tokio::time::timeout(Duration::from_secs(5), read_framed(&mut stream))
        .await
        .expect("an answer within 5 s")
        .expect("receive");
    let response = Message::from_vec(&response).expect("decode the response");
    assert_eq!(response.metadata.id, message.metadata.id);
    response
}

/// Asks over UDP and over TCP, checks both give the same answer, and returns it.
async fn ask(server: SocketAddr, asked: &str, record_type: RecordType) -> Message {
    let over_udp = udp(server, &query(asked, record_type)).await;
    let over_tcp = tcp(server, &query(asked, record_type)).await;
    assert_eq!(
        over_udp.metadata.response_code,
        over_tcp.metadata.response_code
    );
    assert_eq!(over_udp.answers, over_tcp.answers, "{asked}");
    assert_eq!(over_udp.additionals, over_tcp.additionals, "{asked}");
    over_udp
}

fn addresses(records: &[Record]) -> Vec<Ipv4Addr> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(A(ip)) => Some(*ip),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_service_name_answers_its_cluster_address() {
    let dns = Dns::start(vec![]).await;
    for asked in ["web.default.svc.cluster.local.", "web.", "Web.Default."] {
        let response = ask(dns.address, asked, RecordType::A).await;
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert!(response.metadata.authoritative, "{asked}");
        assert_eq!(addresses(&response.answers), vec![WEB_IP], "{asked}");
        assert_eq!(response.answers[0].name, name(asked));
        assert_eq!(response.answers[0].ttl, 5);
    }
    let aaaa = ask(
        dns.address,
        "web.default.svc.cluster.local.",
        RecordType::AAAA,
    )
    .await;
    assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
    assert!(aaaa.answers.is_empty());
    assert_eq!(aaaa.authorities[0].record_type(), RecordType::SOA);
}

#[tokio::test]
async fn a_headless_service_answers_its_ready_endpoints_nodes() {
    let dns = Dns::start(vec![]).await;
    let response = ask(dns.address, "db.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(
        addresses(&response.answers),
        vec![
            Ipv4Addr::new(192, 168, 1, 10),
            Ipv4Addr::new(192, 168, 1, 11)
        ]
    );
    let endpoint = ask(
        dns.address,
        "db-2.db.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(
        addresses(&endpoint.answers),
        vec![Ipv4Addr::new(192, 168, 1, 11)]
    );
}

#[tokio::test]
async fn srv_records_come_with_their_targets_addresses() {
    let dns = Dns::start(vec![]).await;
    let response = ask(
        dns.address,
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    let srv: Vec<(u16, Name)> = response
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(SRV { port, target, .. }) => Some((*port, target.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        srv,
        vec![
            (31001, name("db-1.db.default.svc.cluster.local.")),
            (31002, name("db-2.db.default.svc.cluster.local.")),
        ]
    );
    assert_eq!(
        addresses(&response.additionals),
        vec![
            Ipv4Addr::new(192, 168, 1, 10),
            Ipv4Addr::new(192, 168, 1, 11)
        ]
    );
    assert_eq!(
        response.additionals[0].name,
        name("db-1.db.default.svc.cluster.local.")
    );

    let web = ask(
        dns.address,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    let RData::SRV(srv) = &web.answers[0].data else {
        panic!("an SRV record: {web:?}");
    };
    assert_eq!(
        (srv.priority, srv.weight, srv.port),
        (0, 100, 80),
        "{srv:?}"
    );
    assert_eq!(srv.target, name("web.default.svc.cluster.local."));
    assert_eq!(addresses(&web.additionals), vec![WEB_IP]);
}

#[tokio::test]
async fn other_names_in_the_zone_are_nxdomain() {
    let dns = Dns::start(vec![]).await;
    for asked in [
        "nope.default.svc.cluster.local.",
        "db-3.db.default.svc.cluster.local.",
        "example.test.cluster.local.",
    ] {
        let response = ask(dns.address, asked, RecordType::A).await;
        assert_eq!(
            response.metadata.response_code,
            ResponseCode::NXDomain,
            "{asked}"
        );
        assert!(response.metadata.authoritative);
        assert_eq!(response.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(response.authorities[0].name, name("cluster.local."));
    }
}

#[tokio::test]
async fn other_names_are_relayed_to_the_upstream_unchanged() {
    let mut upstream = Upstream::start().await;
    let dns = Dns::start(vec![upstream.address]).await;

    for over_tcp in [false, true] {
        let asked = query("example.test.", RecordType::A);
        let response = if over_tcp {
            tcp(dns.address, &asked).await
        } else {
            udp(dns.address, &asked).await
        };
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        // The upstream's answer and flags, not ours.
        assert!(!response.metadata.authoritative);
        assert_eq!(addresses(&response.answers), vec![EXAMPLE]);
        assert_eq!(response.answers[0].ttl, 60);
        let received = upstream.received.recv().await.expect("the upstream got it");
        assert_eq!(received, asked.to_vec().expect("encode"), "tcp: {over_tcp}");
    }

    // Not a service, so the short form is forwarded too, and the upstream's NXDOMAIN
    // comes back.
    let response = udp(dns.address, &query("nope.default.", RecordType::A)).await;
    assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
    assert!(!response.metadata.authoritative);
}

#[tokio::test]
async fn the_next_upstream_answers_when_the_first_is_silent() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let upstream = Upstream::start().await;
    let silent_address = silent.local_addr().expect("address");
    let dns = Dns::start(vec![silent_address, upstream.address]).await;
    let started = Instant::now();
    let response = udp(dns.address, &query("example.test.", RecordType::A)).await;
    assert_eq!(addresses(&response.answers), vec![EXAMPLE]);
    assert!(started.elapsed() >= TIMEOUT);
}

#[tokio::test]
async fn no_upstream_answering_is_servfail() {
    // A port nobody listens on, and a socket that never answers.
    let unused = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let unused_address = unused.local_addr().expect("address");
    drop(unused);
    let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for upstreams in [
        vec![unused_address],
        vec![silent.local_addr().expect("address")],
    ] {
        let dns = Dns::start(upstreams.clone()).await;
        let response = ask(dns.address, "example.test.", RecordType::A).await;
        assert_eq!(
            response.metadata.response_code,
            ResponseCode::ServFail,
            "{upstreams:?}"
        );
    }
    let none = Dns::start(vec![]).await;
    let response = udp(none.address, &query("example.test.", RecordType::A)).await;
    assert_eq!(response.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn a_new_policy_changes_the_answers() {
    let dns = Dns::start(vec![]).await;
    let before = ask(dns.address, "web.", RecordType::A).await;
    assert_eq!(addresses(&before.answers), vec![WEB_IP]);

    let moved = Ipv4Addr::new(10, 96, 0, 99);
    dns.records.send_replace(records(moved));
    let after = ask(dns.address, "web.", RecordType::A).await;
    assert_eq!(addresses(&after.answers), vec![moved]);

    dns.records
        .send_replace(Arc::new(Records::empty("cluster.local", "default")));
    let gone = ask(dns.address, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(gone.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn serve_returns_on_shutdown() {
    let dns = Dns::start(vec![]).await;
    dns.shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), dns.task)
        .await
        .expect("stops within 5 s")
        .expect("the task did not panic");
    assert!(result.is_ok(), "{result:?}");
    // The port is free again.
    UdpSocket::bind(dns.address).await.expect("rebind UDP");
    TcpListener::bind(dns.address).await.expect("rebind TCP");
}

#[tokio::test]
async fn a_bind_failure_names_the_address() {
    let taken = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let address = taken.local_addr().expect("address");
    let (_sender, receiver) = watch::channel(records(WEB_IP));
    let error = drover_agent::dns::serve(address, receiver, vec![], CancellationToken::new())
        .await
        .expect_err("the port is taken");
    assert!(error.to_string().contains(&address.to_string()), "{error}");
}

/// The DNS task serves the address the cluster DNS names, and ends once the link that
/// feeds it is gone (the agent stopping) instead of rebinding over and over.
#[tokio::test]
async fn the_dns_task_serves_its_address_and_ends_when_the_link_is_gone() {
    let address = Ipv4Addr::new(127, 0, 0, 249);
    let (cluster_dns, watched) = watch::channel(Some(drover_proto::model::ClusterDns {
        address,
        domain: "cluster.local".into(),
        service_network: "127.0.0.0/8".into(),
    }));
    let (_records, records_rx) = watch::channel(records(WEB_IP));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(drover_agent::dns::run::run(
        watched,
        records_rx,
        shutdown.clone(),
    ));
    let server = SocketAddr::from((address, 53));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(server).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the DNS task never listened on {server}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = ask(server, "web.", RecordType::A).await;
    assert_eq!(addresses(&response.answers), vec![WEB_IP]);
    drop(cluster_dns);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the DNS task ends once its link is gone")
        .expect("the DNS task did not panic");
    shutdown.cancel();
}
