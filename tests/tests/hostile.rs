//! Hostile input against a live cluster of real processes (a coordinator and two agents
//! running a real service on Docker): forged agent sessions, forged and malformed gossip
//! datagrams, oversized and out-of-range API requests. At the end every daemon is alive and
//! answering, and no real replica was moved.

use std::net::UdpSocket;
use std::time::Duration;

use drover_proto::gossip;
use drover_proto::model::AllocState;
use drover_proto::pb;
use drover_proto::pb::agent_link_client::AgentLinkClient;
use drover_tests::{
    DroverProcess, allocations, failure, healthy_containers, http_get, nodes_cluster, web_manifest,
};
use tokio_stream::StreamExt;

const DEADLINE: Duration = Duration::from_secs(60);

/// Sorted (id, node, container) of the service's allocations that should run.
fn placement(coordinator: &DroverProcess) -> Vec<(String, String, String)> {
    let mut rows: Vec<(String, String, String)> = allocations(coordinator, "web")
        .iter()
        .map(|a| {
            let field = |k: &str| a[k].as_str().unwrap_or_default().to_string();
            (field("id"), field("node"), field("container_id"))
        })
        .collect();
    rows.sort();
    rows
}

fn hello(node: &str, generation: u64, address: &str) -> pb::AgentMessage {
    pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(pb::Hello {
            node: Some(pb::NodeInfo {
                id: node.to_string(),
                generation,
                address: address.to_string(),
                capacity: Some(pb::Resources {
                    cpu_millis: 1_000_000,
                    memory_bytes: 1 << 40,
                }),
                labels: Default::default(),
            }),
            allocations: Vec::new(),
            desired_version: 0,
            cluster_id: "drover".into(),
        })),
    }
}

fn failed_statuses(ids: &[String]) -> pb::AgentMessage {
    pb::AgentMessage {
        body: Some(pb::agent_message::Body::Status(pb::StatusUpdate {
            allocations: ids
                .iter()
                .map(|id| pb::RunningAllocation {
                    id: id.clone(),
                    status: Some(pb::AllocStatus {
                        state: pb::AllocState::Failed as i32,
                        message: "forged".into(),
                        ..Default::default()
                    }),
                })
                .collect(),
            node_usage: None,
            traffic: Vec::new(),
        })),
    }
}

/// Opens an AgentLink session with `first` and then `rest`; the coordinator's answer to the
/// hello (its first message, or its refusal).
async fn forge_session(
    url: &str,
    first: pb::AgentMessage,
    rest: Vec<pb::AgentMessage>,
) -> Result<Option<pb::CoordinatorMessage>, tonic::Status> {
    let mut client = AgentLinkClient::connect(url.to_string())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tx.send(first).await.expect("queue hello");
    for message in rest {
        tx.send(message).await.expect("queue message");
    }
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), inbound.next())
        .await
        .ok()
        .flatten()
        .transpose()?;
    // Keep the session open a moment so the forged statuses are read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(tx);
    Ok(first)
}

#[test]
fn a_live_cluster_survives_forged_sessions_datagrams_and_oversized_requests() {
    let ips = ["127.0.0.151", "127.0.0.152"];
    let (dir, mut coordinator, mut agents, nodes) = nodes_cluster("hostile", &ips);
    let manifest = dir.path().join("web.yaml");
    std::fs::write(&manifest, web_manifest("user-service", 2, "")).expect("write manifest");
    coordinator.apply(&manifest);
    drover_tests::wait_for("2 healthy replicas", DEADLINE, || {
        healthy_containers(&coordinator, "web").len() == 2
    });
    let before = placement(&coordinator);
    let ids: Vec<String> = before.iter().map(|(id, _, _)| id.clone()).collect();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let url = coordinator.url();

    // A new node id whose session reports the real replicas as failed.
    let answered = runtime
        .block_on(forge_session(
            &url,
            hello("rogue", 1, "127.0.0.159"),
            vec![failed_statuses(&ids)],
        ))
        .expect("a new node may open a session");
    assert!(answered.is_some(), "the rogue got its (empty) desired set");

    // The real node's id with an older generation: refused while the real one is connected.
    let refused = runtime
        .block_on(forge_session(
            &url,
            hello(&nodes[0], 1, "127.0.0.159"),
            vec![failed_statuses(&ids)],
        ))
        .expect_err("an older generation of a live node is refused");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );

    // Ids and addresses that are not ones.
    for (id, address) in [("Not_A_Label", "127.0.0.159"), ("ok", "not-an-ip")] {
        let refused = runtime
            .block_on(forge_session(&url, hello(id, 1, address), Vec::new()))
            .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    }

    // Malformed gossip datagrams to every member.
    let socket = UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    let members: Vec<String> = std::iter::once(&coordinator)
        .chain(agents.iter())
        .filter_map(|p| p.gossip_listen().map(str::to_string))
        .collect();
    assert_eq!(members.len(), 3);
    for member in &members {
        for datagram in [
            &b""[..],
            &b"\x00"[..],
            &[0xff; 64][..],
            &[0x01; 1400][..],
            &b"SYN drover garbage"[..],
        ] {
            socket.send_to(datagram, member).expect("send datagram");
        }
    }

    // Forged gossip members: one new, one impersonating a real node with a newer
    // generation, both saying the real replicas are healthy at the forger's own server.
    let forger = std::net::TcpListener::bind("127.0.0.159:0").expect("forger's server");
    forger.set_nonblocking(true).expect("nonblocking");
    let forged_endpoint = forger.local_addr().expect("address");
    let seed = coordinator
        .gossip_listen()
        .expect("coordinator gossip")
        .to_string();
    let forgers: Vec<drover_membership::Membership> = ["forger", nodes[0].as_str()]
        .into_iter()
        .map(|id| {
            let listen =
                std::net::SocketAddr::from(([127, 0, 0, 159], drover_tests::free_udp_port()));
            let mut config =
                drover_membership::MembershipConfig::new("drover", id, u64::MAX / 2, listen);
            config.seeds = vec![seed.clone()];
            let mut keys = vec![(
                gossip::ROLE.to_string(),
                gossip::Role::Agent.as_str().to_string(),
            )];
            for (alloc, _, _) in &before {
                let fact = gossip::AllocFact {
                    service: "web".into(),
                    revision: 1,
                    endpoint: Some(forged_endpoint),
                    health: AllocState::Healthy,
                };
                keys.push((
                    gossip::alloc_key(alloc).expect("key"),
                    fact.encode().expect("fact"),
                ));
            }
            runtime
                .block_on(drover_membership::Membership::start(config, keys))
                .expect("forged member joins")
        })
        .collect();
    // Gossip spreads in a few rounds of 250 ms.
    std::thread::sleep(Duration::from_secs(3));
    for ip in ips {
        for _ in 0..20 {
            let body = http_get(&format!("{ip}:80"));
            assert!(body.starts_with("user-service"), "{ip}: {body}");
        }
    }
    assert!(
        forger.accept().is_err(),
        "no proxy sent a connection to the forged endpoint"
    );
    drop(forgers);

    // Out-of-range and oversized API requests.
    let big = dir.path().join("huge.yaml");
    std::fs::write(&big, web_manifest("user-service", 100_000_000, "")).expect("write");
    let err = failure(
        &coordinator.cli(&["apply", "-f", big.to_str().expect("path")]),
        "100,000,000 replicas",
    );
    assert!(err.contains("limits.replicas_per_service"), "{err}");
    let err = failure(
        &coordinator.cli(&["scale", "web", "100000000"]),
        "scale to 100,000,000",
    );
    assert!(err.contains("limits.replicas_per_service"), "{err}");
    let long = "n".repeat(10_000);
    let err = failure(&coordinator.cli(&["status", &long]), "a 10 KB name");
    assert!(
        err.contains("not found") && err.len() < 1_000,
        "{} bytes: {:.300}",
        err.len(),
        err
    );

    // Some reconcile passes later: every daemon alive and answering, nothing moved.
    std::thread::sleep(Duration::from_secs(2));
    assert!(coordinator.alive(), "the coordinator exited");
    for agent in agents.iter_mut() {
        assert!(agent.alive(), "an agent exited");
    }
    let nodes_json = coordinator.cli_json(&["nodes"]);
    let ready = nodes_json
        .as_array()
        .map(|n| n.iter().filter(|n| n["health"] == "ready").count())
        .unwrap_or(0);
    assert!(ready >= 2, "the real nodes are ready: {nodes_json}");
    assert_eq!(placement(&coordinator), before, "no real replica moved");
    assert_eq!(healthy_containers(&coordinator, "web").len(), 2);
    for ip in ips {
        let body = http_get(&format!("{ip}:80"));
        assert!(body.starts_with("user-service"), "{ip}: {body}");
    }
}

#[test]
fn agents_follow_a_coordinator_whose_state_was_reset() {
    let (dir, mut coordinator, _agents, _nodes) = nodes_cluster("reset", &["127.0.0.153"]);
    let manifest = dir.path().join("web.yaml");
    std::fs::write(&manifest, web_manifest("user-service", 1, "")).expect("write manifest");
    coordinator.apply(&manifest);
    drover_tests::wait_for("1 healthy replica", DEADLINE, || {
        healthy_containers(&coordinator, "web").len() == 1
    });
    // A few boots raise the versions the agent has applied.
    for _ in 0..3 {
        coordinator.kill_and_restart();
        drover_tests::wait_for("the agent back", DEADLINE, || {
            drover_tests::ready_nodes(&coordinator).len() == 1
        });
    }
    // The operator starts the coordinator afresh on purpose: its versions start low again.
    coordinator.kill();
    let data = dir.path().join("coordinator");
    for file in ["coordinator.redb", "coordinator.id"] {
        std::fs::remove_file(data.join(file)).expect("remove state file");
    }
    coordinator.kill_and_restart();
    drover_tests::wait_for("the agent connected to the new cluster", DEADLINE, || {
        drover_tests::ready_nodes(&coordinator).len() == 1
    });
    std::fs::write(&manifest, web_manifest("user-service", 2, "")).expect("write manifest");
    coordinator.apply(&manifest);
    drover_tests::wait_for(
        "2 healthy replicas from the new coordinator",
        DEADLINE,
        || healthy_containers(&coordinator, "web").len() == 2,
    );
}
