//! Hostile input against a live cluster of real processes (a coordinator and two agents
//! running a real service on Docker): agent sessions without a certificate or with another
//! node's, forged gossip members (plain, sealed with a wrong key, sealed with a key removed
//! by a live rotation), malformed datagrams, oversized and out-of-range API requests. At the
//! end every daemon is alive and answering, and no real replica was moved.

use std::net::UdpSocket;
use std::time::Duration;

use drover_proto::gossip;
use drover_proto::model::AllocState;
use drover_proto::pb;
use drover_proto::pb::agent_link_client::AgentLinkClient;
use drover_tests::{
    DroverProcess, LoopingClient, allocations, failure, healthy_containers, http_get,
    nodes_cluster, success, web_manifest,
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
            usage: Vec::new(),
            traffic: Vec::new(),
            replica_traffic: Vec::new(),
        })),
    }
}

/// Opens an AgentLink session with `first` and then `rest`, over TLS to the cluster's CA
/// (`digest`) and with `identity` as the client certificate, if any; the coordinator's
/// answer to the hello (its first message, or its refusal).
async fn forge_session(
    url: &str,
    digest: drover_security::CaDigest,
    identity: Option<&drover_security::ClientIdentity>,
    first: pb::AgentMessage,
    rest: Vec<pb::AgentMessage>,
) -> Result<Option<pb::CoordinatorMessage>, tonic::Status> {
    let tls = drover_security::ClientTls::new(&drover_security::Trust::Pinned(digest), identity)
        .expect("client tls");
    let endpoint = drover_security::transport::endpoint(url).expect("endpoint");
    let channel = tls
        .connect(endpoint)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = AgentLinkClient::new(channel);
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

/// A gossip member on 127.0.0.159 saying every allocation of `before` is healthy at
/// `endpoint`; sealed with `keys` (base64, one per line) or plain.
fn forged_member(
    runtime: &tokio::runtime::Runtime,
    id: &str,
    seed: &str,
    keys: Option<&str>,
    before: &[(String, String, String)],
    endpoint: std::net::SocketAddr,
) -> drover_membership::Membership {
    let listen = std::net::SocketAddr::from(([127, 0, 0, 159], drover_tests::free_udp_port()));
    let mut config = drover_membership::MembershipConfig::new("drover", id, u64::MAX / 2, listen);
    config.seeds = vec![seed.to_string()];
    if let Some(keys) = keys {
        let ring = drover_membership::Keyring::parse(keys).expect("keyring");
        config = config.with_keyring(drover_membership::KeyringHandle::new(ring));
    }
    let mut facts = vec![(
        gossip::ROLE.to_string(),
        gossip::Role::Agent.as_str().to_string(),
    )];
    for (alloc, _, _) in before {
        let fact = gossip::AllocFact {
            service: "web".into(),
            revision: 1,
            endpoint: Some(endpoint),
            health: AllocState::Healthy,
        };
        facts.push((
            gossip::alloc_key(alloc).expect("key"),
            fact.encode().expect("fact"),
        ));
    }
    runtime
        .block_on(drover_membership::Membership::start(config, facts))
        .expect("forged member starts")
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

    let token: drover_security::Token = std::fs::read_to_string(coordinator.agent_token_file())
        .expect("agent token")
        .parse()
        .expect("token");
    let digest = token.digest;

    // No certificate: a hello under a real node's id (which used to get its desired set and
    // secrets), and a new node reporting the real replicas as failed.
    for (node, rest) in [
        (nodes[0].as_str(), Vec::new()),
        ("rogue", vec![failed_statuses(&ids)]),
    ] {
        let refused = runtime
            .block_on(forge_session(
                &url,
                digest,
                None,
                hello(node, u64::MAX / 2, "127.0.0.159"),
                rest,
            ))
            .expect_err("no certificate");
        assert_eq!(
            refused.code(),
            tonic::Code::Unauthenticated,
            "{node}: {refused:?}"
        );
    }

    // A holder of the join token joins as "rogue", then claims to be a real node.
    let rogue = runtime
        .block_on(drover_security::client::join(&url, &token, Some("rogue")))
        .expect("a token holder joins");
    let refused = runtime
        .block_on(forge_session(
            &url,
            digest,
            Some(&rogue.identity),
            hello(&nodes[0], u64::MAX / 2, "127.0.0.159"),
            vec![failed_statuses(&ids)],
        ))
        .expect_err("another node's certificate");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("certificate for node rogue"),
        "{refused:?}"
    );
    // As itself it speaks only for itself: the real replicas' statuses are not taken.
    runtime
        .block_on(forge_session(
            &url,
            digest,
            Some(&rogue.identity),
            hello("rogue", 1, "127.0.0.159"),
            vec![failed_statuses(&ids)],
        ))
        .expect("its own session");

    // Ids that are not DNS labels get no certificate.
    let refused = runtime
        .block_on(drover_security::client::join(
            &url,
            &token,
            Some("Not_A_Label"),
        ))
        .expect_err("not a label");
    assert!(refused.to_string().contains("DNS-1123"), "{refused}");

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

    // Forged gossip members saying the real replicas are healthy at the forger's own
    // server: a plain one, one impersonating a real node sealed with a key of its own, and
    // one sealed with the cluster's key as it was before a live rotation removed it.
    let forger = std::net::TcpListener::bind("127.0.0.159:0").expect("forger's server");
    forger.set_nonblocking(true).expect("nonblocking");
    let forged_endpoint = forger.local_addr().expect("address");
    let seed = coordinator
        .gossip_listen()
        .expect("coordinator gossip")
        .to_string();
    let stolen = std::fs::read_to_string(dir.path().join("agent0").join("gossip.keys"))
        .expect("the agent's gossip keyring");
    let own_key = drover_membership::GossipKey::generate()
        .expect("key")
        .to_base64();

    // Rotate while clients go through both proxies: install, use, remove.
    let clients: Vec<LoopingClient> = ips
        .iter()
        .map(|ip| LoopingClient::start(format!("{ip}:80"), |body| body.starts_with("user-service")))
        .collect();
    let installed = success(&coordinator.cli(&["gossip", "install"]), "gossip install");
    let new_id = installed
        .lines()
        .find(|l| !l.contains("in use"))
        .expect("the new key listed")
        .trim()
        .to_string();
    let old_id = installed
        .lines()
        .find(|l| l.contains("in use"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the old key")
        .to_string();
    std::thread::sleep(Duration::from_secs(2));
    success(&coordinator.cli(&["gossip", "use", &new_id]), "gossip use");
    std::thread::sleep(Duration::from_secs(2));
    success(
        &coordinator.cli(&["gossip", "remove", &old_id]),
        "gossip remove",
    );
    std::thread::sleep(Duration::from_secs(3));
    for client in clients {
        let (ok, failed, _) = client.finish();
        assert!(
            ok > 0 && failed == 0,
            "{failed} of {} requests failed during the key rotation",
            ok + failed
        );
    }
    let keys = success(&coordinator.cli(&["gossip", "keys"]), "gossip keys");
    assert_eq!(keys.lines().count(), 1, "{keys}");
    assert!(keys.contains(&new_id), "{keys}");
    let events = success(&coordinator.cli(&["events"]), "events");
    let real_down = events
        .lines()
        .any(|l| l.contains("node_down") && nodes.iter().any(|n| l.contains(n.as_str())));
    assert!(
        !real_down,
        "a real member was declared dead during the rotation: {events}"
    );

    let forgers = [
        forged_member(&runtime, "forger", &seed, None, &before, forged_endpoint),
        forged_member(
            &runtime,
            &nodes[0],
            &seed,
            Some(&own_key),
            &before,
            forged_endpoint,
        ),
        forged_member(
            &runtime,
            "stolen",
            &seed,
            Some(&stolen),
            &before,
            forged_endpoint,
        ),
    ];
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
