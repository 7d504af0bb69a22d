//! Hostile and careless input to a real coordinator on a loopback port: forged agent
//! sessions and out-of-range requests. Each test ends with the coordinator answering and
//! the real replicas where they were.

mod common;

use std::time::Duration;

use common::{FakeAgent, Server, control, eventually, start, web};
use drover_proto::pb;

/// Applies `web` with `replicas` over agents `a` and `b`, reports every replica healthy,
/// and returns the agents with the running allocation ids of each.
async fn two_nodes_serving(server: &Server, replicas: u32) -> [(FakeAgent, Vec<String>); 2] {
    let mut client = control(server).await;
    let mut a = FakeAgent::connect(server, "a", &[]).await;
    let mut b = FakeAgent::connect(server, "b", &[]).await;
    client
        .apply(pb::ApplyRequest {
            cause: String::new(),
            services: Vec::new(),
            autoscalers: Vec::new(),
            workloads: vec![web(replicas)],
            dry_run: false,
        })
        .await
        .expect("apply");
    let half = replicas as usize / 2;
    a.until("a's replicas", |a| a.running_ids().len() == half)
        .await;
    b.until("b's replicas", |b| b.running_ids().len() == half)
        .await;
    let (on_a, on_b) = (a.running_ids(), b.running_ids());
    a.report(&on_a, pb::AllocState::Healthy, 3001).await;
    b.report(&on_b, pb::AllocState::Healthy, 3002).await;
    let total = replicas as usize;
    eventually("every replica healthy", async || {
        let healthy = healthy_ids(&mut client).await;
        (healthy.len() == total).then_some(())
    })
    .await;
    [(a, on_a), (b, on_b)]
}

async fn service(client: &mut common::Control) -> pb::ServiceStatus {
    client
        .get_service(pb::GetServiceRequest { name: "web".into() })
        .await
        .expect("get service")
        .into_inner()
}

async fn healthy_ids(client: &mut common::Control) -> Vec<String> {
    service(client)
        .await
        .allocations
        .into_iter()
        .filter(|v| v.status.as_ref().map(|s| s.state) == Some(pb::AllocState::Healthy as i32))
        .filter_map(|v| v.allocation.map(|a| a.id))
        .collect()
}

fn failed(ids: &[String]) -> Vec<pb::RunningAllocation> {
    ids.iter()
        .map(|id| pb::RunningAllocation {
            id: id.clone(),
            status: Some(pb::AllocStatus {
                state: pb::AllocState::Failed as i32,
                message: "forged".into(),
                ..Default::default()
            }),
        })
        .collect()
}

#[tokio::test]
async fn an_agent_speaks_only_for_its_own_node() {
    let server = start().await;
    let mut client = control(&server).await;
    let [(_a, on_a), (_b, on_b)] = two_nodes_serving(&server, 4).await;
    let mut before = [on_a.clone(), on_b.clone()].concat();
    before.sort();

    // A new node id whose hello and status updates claim the real replicas failed.
    let forged = [on_a.clone(), on_b.clone()].concat();
    let mut rogue = FakeAgent::hello(&server, FakeAgent::node("rogue", &[]), failed(&forged))
        .await
        .expect("a new node may join");
    rogue
        .tx
        .send(pb::AgentMessage {
            body: Some(pb::agent_message::Body::Status(pb::StatusUpdate {
                allocations: failed(&forged),
                node_usage: None,
                usage: Vec::new(),
                traffic: Vec::new(),
                replica_traffic: Vec::new(),
            })),
        })
        .await
        .expect("send forged status");
    rogue.until("the rogue's desired set", |_| true).await;

    // Several reconcile passes (200 ms apart) later, nothing moved.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut healthy = healthy_ids(&mut client).await;
    healthy.sort();
    assert_eq!(
        healthy, before,
        "the real replicas are healthy and in place"
    );
    let placed: Vec<String> = service(&mut client)
        .await
        .allocations
        .into_iter()
        .filter_map(|v| v.allocation)
        .filter(|a| a.node == "rogue")
        .map(|a| a.id)
        .collect();
    assert!(
        placed.is_empty(),
        "nothing was placed on the rogue node: {placed:?}"
    );
    server.shutdown.cancel();
}

#[tokio::test]
async fn an_older_generation_does_not_replace_a_live_session() {
    let server = start().await;
    let mut client = control(&server).await;
    let mut live = FakeAgent::node("a", &[]);
    live.generation = 5;
    let mut agent = FakeAgent::hello(&server, live.clone(), vec![])
        .await
        .expect("first session");
    agent.until("the first desired set", |_| true).await;

    let mut older = live.clone();
    older.generation = 4;
    older.address = "127.0.0.99".into();
    let refused = FakeAgent::hello(&server, older, vec![])
        .await
        .err()
        .expect("an older generation is refused while the newer one is connected");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("generation 5") && refused.message().contains("generation 4"),
        "{}",
        refused.message()
    );
    let nodes = client
        .list_nodes(pb::ListNodesRequest {})
        .await
        .expect("nodes")
        .into_inner()
        .nodes;
    let info = nodes[0].info.as_ref().expect("info");
    assert_eq!((info.address.as_str(), info.generation), ("127.0.0.1", 5));

    // The live session still gets its orders.
    client
        .apply(pb::ApplyRequest {
            cause: String::new(),
            services: Vec::new(),
            autoscalers: Vec::new(),
            workloads: vec![web(1)],
            dry_run: false,
        })
        .await
        .expect("apply");
    agent
        .until("the replica", |a| a.running_ids().len() == 1)
        .await;

    // A newer generation (the agent restarted) takes over.
    let mut newer = live;
    newer.generation = 6;
    let mut restarted = FakeAgent::hello(&server, newer, vec![])
        .await
        .expect("a newer generation replaces the session");
    restarted
        .until("the replica, again", |a| a.running_ids().len() == 1)
        .await;
    server.shutdown.cancel();
}

#[tokio::test]
async fn a_hello_with_an_invalid_node_id_or_address_is_refused() {
    let server = start().await;
    let mut client = control(&server).await;
    let long = "n".repeat(10_000);
    for (id, address, expected) in [
        ("Node_1", "127.0.0.1", "is not a DNS-1123 label"),
        ("a.b", "127.0.0.1", "is not a DNS-1123 label"),
        (long.as_str(), "127.0.0.1", "(10000 characters)"),
        ("n1", "example.com", "is not an IP address"),
        ("n1", "127.0.0.1:7400", "is not an IP address"),
    ] {
        let mut node = FakeAgent::node(id, &[]);
        node.address = address.into();
        let refused = FakeAgent::hello(&server, node, vec![])
            .await
            .err()
            .unwrap_or_else(|| panic!("node {id:.20} at {address} is refused"));
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains(expected) && refused.message().len() < 400,
            "{id:.20} {address}: {}",
            refused.message()
        );
    }
    let nodes = client
        .list_nodes(pb::ListNodesRequest {})
        .await
        .expect("nodes")
        .into_inner()
        .nodes;
    assert!(nodes.is_empty(), "no node was registered: {nodes:?}");
    server.shutdown.cancel();
}

#[tokio::test]
async fn requests_over_a_limit_are_refused_naming_it_and_change_nothing() {
    let server = start().await;
    let mut client = control(&server).await;
    let mut huge = web(100_000_000);
    huge.name = "huge".into();
    let refused = client
        .apply(pb::ApplyRequest {
            cause: String::new(),
            services: Vec::new(),
            autoscalers: Vec::new(),
            workloads: vec![huge],
            dry_run: false,
        })
        .await
        .expect_err("100,000,000 replicas are refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("limits.replicas_per_service"),
        "{}",
        refused.message()
    );

    // A 10 KB name gets the name's error, short.
    let mut long = web(1);
    long.name = "n".repeat(10_000);
    let refused = client
        .apply(pb::ApplyRequest {
            cause: String::new(),
            services: Vec::new(),
            autoscalers: Vec::new(),
            workloads: vec![long],
            dry_run: false,
        })
        .await
        .expect_err("a 10 KB name is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("is not a DNS-1123 label") && refused.message().len() < 600,
        "{}",
        refused.message()
    );
    let services = client
        .list_services(pb::ListServicesRequest {})
        .await
        .expect("list")
        .into_inner()
        .services;
    assert!(services.is_empty(), "nothing was applied: {services:?}");

    // Scaling past the limit is refused too; scaling within it works.
    client
        .apply(pb::ApplyRequest {
            cause: String::new(),
            services: Vec::new(),
            autoscalers: Vec::new(),
            workloads: vec![web(1)],
            dry_run: false,
        })
        .await
        .expect("apply");
    let refused = client
        .scale(pb::ScaleRequest {
            name: "web".into(),
            replicas: 100_000_000,
        })
        .await
        .expect_err("refused");
    assert!(
        refused.message().contains("limits.replicas_per_service"),
        "{}",
        refused.message()
    );
    client
        .scale(pb::ScaleRequest {
            name: "web".into(),
            replicas: 2,
        })
        .await
        .expect("scale within the limit");

    // A request over the size limit is refused by the server before it is decoded.
    let mut big = web(1);
    big.env.insert("BIG".into(), "x".repeat(17 << 20));
    let refused = client
        .apply(pb::ApplyRequest {
            cause: String::new(),
            services: Vec::new(),
            autoscalers: Vec::new(),
            workloads: vec![big],
            dry_run: false,
        })
        .await
        .expect_err("a 17 MiB request is refused");
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    server.shutdown.cancel();
}

#[tokio::test]
async fn node_rm_refuses_a_node_that_is_connected_or_not_down() {
    let server = start().await;
    let mut client = control(&server).await;
    let agent = FakeAgent::connect(&server, "a", &[]).await;
    let rm = async |client: &mut common::Control| {
        client
            .remove_node(pb::NodeRequest { node: "a".into() })
            .await
    };
    let refused = rm(&mut client).await.expect_err("connected");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("is connected"),
        "{}",
        refused.message()
    );
    drop(agent);
    eventually("the node disconnected", async || {
        let nodes = client
            .list_nodes(pb::ListNodesRequest {})
            .await
            .expect("nodes")
            .into_inner()
            .nodes;
        (nodes[0].health == pb::NodeHealth::Disconnected as i32).then_some(())
    })
    .await;
    // Without gossip nothing is ever down, so it stays.
    let refused = rm(&mut client).await.expect_err("not down");
    assert!(
        refused.message().contains("not down"),
        "{}",
        refused.message()
    );
    let missing = client
        .remove_node(pb::NodeRequest {
            node: "nobody".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    server.shutdown.cancel();
}
