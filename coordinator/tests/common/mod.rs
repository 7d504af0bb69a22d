//! What the coordinator's API tests share: a real tonic server on a loopback port, with
//! agents played by the generated client.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use drover_coordinator::Config;
use drover_proto::model::{
    PortSpec, Protocol, Resources, Service, ServicePort, ServiceType, TargetPort, WorkloadSpec,
};
use drover_proto::pb;
use drover_proto::pb::agent_link_client::AgentLinkClient;
use drover_security::Token;
use drover_security::client::{self, ConnectError, OperatorAuth};
use drover_security::transport::{ClientTls, Trust};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

pub struct Server {
    /// host:port of the API.
    pub url: String,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), drover_coordinator::Error>>,
    pub _dir: tempfile::TempDir,
}

pub async fn start() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = listener.local_addr().expect("addr").to_string();
    let config = Config {
        reconcile_interval: Duration::from_millis(200),
        shutdown_grace: Duration::from_millis(500),
        gossip_listen: None,
        http_listen: Some("127.0.0.1:0".parse().expect("address")),
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let store = config.open_store().expect("store");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(drover_coordinator::run(
        config,
        Arc::new(store),
        listener,
        shutdown.clone(),
    ));
    let server = Server {
        url,
        shutdown,
        task,
        _dir: dir,
    };
    eventually_sync("the bootstrap tokens", || {
        server.dir().join("agent.token").exists() && server.dir().join("admin.token").exists()
    })
    .await;
    server
}

impl Server {
    /// The coordinator's data dir.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// The admin token the coordinator wrote at first start.
    pub fn admin_token(&self) -> Token {
        read_token(&self.dir().join("admin.token"))
    }

    /// The agent join token the coordinator wrote at first start.
    pub fn agent_token(&self) -> Token {
        read_token(&self.dir().join("agent.token"))
    }
}

pub fn read_token(path: &std::path::Path) -> Token {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .parse()
        .expect("a token")
}

async fn eventually_sync(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Control client.
pub type Control = client::Control;

/// An admin's Control client.
pub async fn control(server: &Server) -> Control {
    operator(&server.url, &server.admin_token()).await
}

/// A Control client with `token`.
pub async fn operator(address: &str, token: &Token) -> Control {
    client::operator(address, &OperatorAuth::Token(token.clone()))
        .await
        .expect("connect control")
}

/// Waits for a coordinator started on `data_dir` to answer at `address`, as its admin.
pub async fn admin_when_up(address: &str, data_dir: &std::path::Path) -> Control {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let token = std::fs::read_to_string(data_dir.join("admin.token"))
            .ok()
            .and_then(|t| t.parse::<Token>().ok());
        let attempt = match &token {
            Some(token) => client::operator(address, &OperatorAuth::Token(token.clone()))
                .await
                .map_err(|e| e.to_string()),
            None => Err("no admin token yet".to_string()),
        };
        match attempt {
            Ok(client) => return client,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "coordinator did not come up on {address}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// An agent played by the test: its outbound queue and the coordinator's messages.
pub struct FakeAgent {
    pub tx: mpsc::Sender<pb::AgentMessage>,
    pub inbound: tonic::Streaming<pb::CoordinatorMessage>,
    pub desired: Vec<pb::DesiredAllocation>,
    pub desired_version: u64,
    pub routes: Vec<pb::ServiceRoute>,
    /// The last read tokens sent.
    pub read_tokens: Vec<pb::ReadToken>,
    /// Log requests received, and their cancels.
    pub log_requests: Vec<pb::LogRequest>,
    pub log_cancels: Vec<u64>,
}

impl FakeAgent {
    /// A node with room for what the tests place, at 127.0.0.1, generation 1.
    pub fn node(id: &str, labels: &[(&str, &str)]) -> pb::NodeInfo {
        pb::NodeInfo {
            id: id.to_string(),
            generation: 1,
            address: "127.0.0.1".into(),
            capacity: Some(pb::Resources {
                cpu_millis: 4000,
                memory_bytes: 8 << 30,
            }),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    pub async fn connect(server: &Server, id: &str, labels: &[(&str, &str)]) -> FakeAgent {
        FakeAgent::hello(server, FakeAgent::node(id, labels), vec![])
            .await
            .expect("session")
    }

    /// Joins as `node.id` with the server's agent token, then opens a session with this
    /// hello; the coordinator's refusal when it refuses either.
    pub async fn hello(
        server: &Server,
        node: pb::NodeInfo,
        allocations: Vec<pb::RunningAllocation>,
    ) -> Result<FakeAgent, tonic::Status> {
        let certified = node.id.clone();
        FakeAgent::hello_as(server, &certified, node, allocations).await
    }

    /// Joins as node `certified`, then opens a session whose hello says `node`.
    pub async fn hello_as(
        server: &Server,
        certified: &str,
        node: pb::NodeInfo,
        allocations: Vec<pb::RunningAllocation>,
    ) -> Result<FakeAgent, tonic::Status> {
        let joined = match client::join(&server.url, &server.agent_token(), Some(certified)).await {
            Ok(joined) => joined,
            Err(ConnectError::Refused { message, code, .. }) => {
                return Err(tonic::Status::new(code, message));
            }
            Err(e) => panic!("join as {certified}: {e}"),
        };
        let tls = ClientTls::new(&Trust::Bundle(joined.ca_bundle_pem), Some(&joined.identity))
            .expect("client tls");
        let endpoint = drover_security::transport::endpoint(&server.url).expect("endpoint");
        let channel = tls.connect(endpoint).await.expect("connect agent link");
        let mut client = AgentLinkClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        let hello = pb::AgentMessage {
            body: Some(pb::agent_message::Body::Hello(pb::Hello {
                node: Some(node),
                allocations,
                desired_version: 0,
                cluster_id: "drover".into(),
            })),
        };
        tx.send(hello).await.expect("queue hello");
        let inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
        Ok(FakeAgent {
            tx,
            inbound,
            desired: vec![],
            desired_version: 0,
            routes: vec![],
            read_tokens: vec![],
            log_requests: vec![],
            log_cancels: vec![],
        })
    }

    /// Reads coordinator messages until `done` holds for this agent's view, or times out.
    pub async fn until(&mut self, what: &str, done: impl Fn(&FakeAgent) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done(self) {
            let message = tokio::time::timeout_at(deadline, self.inbound.next())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .expect("stream open")
                .expect("message");
            match message.body {
                Some(pb::coordinator_message::Body::Desired(set)) => {
                    assert!(set.version > self.desired_version, "versions increase");
                    self.desired_version = set.version;
                    self.desired = set.allocations;
                }
                Some(pb::coordinator_message::Body::Routes(r)) => self.routes = r.services,
                Some(pb::coordinator_message::Body::ReadTokens(t)) => self.read_tokens = t.tokens,
                Some(pb::coordinator_message::Body::LogRequest(r)) => self.log_requests.push(r),
                Some(pb::coordinator_message::Body::LogCancel(c)) => {
                    self.log_cancels.push(c.request_id)
                }
                Some(
                    pb::coordinator_message::Body::GossipKeys(_)
                    | pb::coordinator_message::Body::CaBundle(_),
                )
                | None => {}
            }
        }
    }

    pub fn running_ids(&self) -> Vec<String> {
        self.desired
            .iter()
            .filter_map(|d| d.allocation.as_ref())
            .filter(|a| a.desired == pb::DesiredState::Run as i32)
            .map(|a| a.id.clone())
            .collect()
    }

    pub async fn report(&self, ids: &[String], state: pb::AllocState, host_port: u32) {
        let allocations = ids
            .iter()
            .map(|id| pb::RunningAllocation {
                id: id.clone(),
                status: Some(pb::AllocStatus {
                    state: state as i32,
                    container_id: format!("c-{id}"),
                    host_ports: [(8080, host_port)].into_iter().collect(),
                    ..Default::default()
                }),
            })
            .collect();
        self.tx
            .send(pb::AgentMessage {
                body: Some(pb::agent_message::Body::Status(pb::StatusUpdate {
                    traffic: Vec::new(),
                    replica_traffic: Vec::new(),
                    allocations,
                    node_usage: None,
                    usage: Vec::new(),
                })),
            })
            .await
            .expect("send status");
    }
}

pub fn web(replicas: u32) -> pb::WorkloadSpec {
    let mut spec = WorkloadSpec::new("web", "web:1");
    spec.replicas = replicas;
    spec.resources = Resources {
        cpu_millis: 100,
        memory_bytes: 64 << 20,
    };
    spec.ports.push(PortSpec {
        name: None,
        container_port: 8080,
        host_port: None,
        protocol: Protocol::Tcp,
    });
    (&spec).into()
}

/// The service of `web`: port 80 on every node's address to its container port 8080.
pub fn web_service() -> pb::Service {
    let mut service = Service::for_workload("web", "web");
    service.kind = ServiceType::LoadBalancer;
    service.ports.push(ServicePort {
        name: None,
        port: 80,
        target: TargetPort::Number(8080),
        node_port: None,
        protocol: Protocol::Tcp,
    });
    (&service).into()
}

pub async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
