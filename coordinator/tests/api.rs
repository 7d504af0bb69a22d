//! The Control and AgentLink APIs through a real tonic server on a loopback port, with
//! agents played by the generated client.

mod common;

use common::{FakeAgent, control, eventually, start, web, web_service};
use drover_proto::pb;
use tokio_stream::StreamExt;

#[tokio::test]
async fn apply_place_report_scale_delete() {
    let server = start().await;
    let mut client = control(&server).await;

    let applied = client
        .apply(pb::ApplyRequest {
            cause: String::new(),
            services: vec![web_service()],
            autoscalers: Vec::new(),
            workloads: vec![web(3)],
            dry_run: false,
        })
        .await
        .expect("apply")
        .into_inner();
    assert_eq!(applied.results[0].revision, 1);
    assert_eq!(applied.results[0].change, pb::ApplyChange::Created as i32);

    // Nothing can be placed without nodes, and the reason is recorded.
    let summary = eventually("placement failure", async || {
        let s = client
            .get_service(pb::GetServiceRequest { name: "web".into() })
            .await
            .expect("get")
            .into_inner()
            .summary
            .expect("summary");
        (!s.placement_failure.is_empty()).then_some(s)
    })
    .await;
    assert!(
        summary.placement_failure.contains("placed 0 of 3"),
        "{}",
        summary.placement_failure
    );

    // Nodes joining one by one would each take what fits; scale to 0 until all three are
    // in, so the spread across them is visible.
    client
        .scale(pb::ScaleRequest {
            name: "web".into(),
            replicas: 0,
        })
        .await
        .expect("scale to 0");
    let mut agents = Vec::new();
    for id in ["n1", "n2", "n3"] {
        agents.push(FakeAgent::connect(&server, id, &[("zone", "a")]).await);
    }
    eventually("3 ready nodes", async || {
        let nodes = client
            .list_nodes(pb::ListNodesRequest {})
            .await
            .expect("nodes")
            .into_inner()
            .nodes;
        let ready = nodes
            .iter()
            .filter(|n| n.health == pb::NodeHealth::Ready as i32)
            .count();
        (ready == 3).then_some(())
    })
    .await;
    client
        .scale(pb::ScaleRequest {
            name: "web".into(),
            replicas: 3,
        })
        .await
        .expect("scale to 3");
    // Spread: one replica on each node.
    for agent in &mut agents {
        agent
            .until("one allocation", |a| a.running_ids().len() == 1)
            .await;
    }
    for (i, agent) in agents.iter().enumerate() {
        agent
            .report(
                &agent.running_ids(),
                pb::AllocState::Healthy,
                30000 + i as u32,
            )
            .await;
    }
    let status = eventually("3 healthy", async || {
        let s = client
            .get_service(pb::GetServiceRequest { name: "web".into() })
            .await
            .expect("get")
            .into_inner();
        (s.summary.as_ref().expect("summary").healthy == 3).then_some(s)
    })
    .await;
    assert_eq!(status.allocations.len(), 3);
    assert!(
        status
            .summary
            .expect("summary")
            .placement_failure
            .is_empty()
    );

    // Route policy lists the three endpoints with their host ports.
    agents[0]
        .until("3 endpoints with addresses", |a| {
            a.routes.first().is_some_and(|r| {
                r.endpoints.len() == 3 && r.endpoints.iter().all(|e| !e.address.is_empty())
            })
        })
        .await;
    let route = &agents[0].routes[0];
    assert_eq!(
        (route.port, route.node_port, route.cluster_ip.as_str()),
        (80, 80, "10.96.0.1")
    );
    let mut addresses: Vec<_> = route.endpoints.iter().map(|e| e.address.clone()).collect();
    addresses.sort();
    assert_eq!(
        addresses,
        vec!["127.0.0.1:30000", "127.0.0.1:30001", "127.0.0.1:30002"]
    );

    // Scale up: 6 replicas spread 2 per node.
    client
        .scale(pb::ScaleRequest {
            name: "web".into(),
            replicas: 6,
        })
        .await
        .expect("scale");
    for agent in &mut agents {
        agent
            .until("two allocations", |a| a.running_ids().len() == 2)
            .await;
    }

    // Scale down to 1: surplus told to stop.
    client
        .scale(pb::ScaleRequest {
            name: "web".into(),
            replicas: 1,
        })
        .await
        .expect("scale down");
    let placed = eventually("1 placed", async || {
        let s = client
            .list_services(pb::ListServicesRequest {})
            .await
            .expect("list")
            .into_inner();
        (s.services[0].placed == 1).then_some(s.services[0].placed)
    })
    .await;
    assert_eq!(placed, 1);

    // Delete: every allocation leaves the desired sets.
    let deleted = client
        .delete_service(pb::DeleteServiceRequest {
            name: "web".into(),
            kind: String::new(),
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.stopped_allocations, 1);
    for agent in &mut agents {
        agent
            .until("nothing to run", |a| a.running_ids().is_empty())
            .await;
    }
    let err = client
        .get_service(pb::GetServiceRequest { name: "web".into() })
        .await
        .expect_err("deleted");
    assert_eq!(err.code(), tonic::Code::NotFound);

    let events: Vec<pb::Event> = client
        .watch_events(pb::WatchEventsRequest {
            since: 0,
            follow: false,
        })
        .await
        .expect("events")
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .expect("event stream");
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    for kind in [
        "service_created",
        "placement_failed",
        "node_connected",
        "allocation_placed",
        "allocation_stopped",
        "service_deleted",
    ] {
        assert!(kinds.contains(&kind), "no {kind} event in {kinds:?}");
    }
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));

    server.shutdown.cancel();
    server.task.await.expect("join").expect("clean shutdown");
}

#[tokio::test]
async fn invalid_apply_changes_nothing() {
    let server = start().await;
    let mut client = control(&server).await;
    client
        .apply(pb::ApplyRequest {
            cause: String::new(),
            services: vec![web_service()],
            autoscalers: Vec::new(),
            workloads: vec![web(1)],
            dry_run: false,
        })
        .await
        .expect("apply");

    let mut bad = web(2);
    bad.name = "other".into();
    // Valid, but its port 80 on every node collides with web's.
    let mut other = web_service();
    other.name = "other".into();
    let mut worse = web(1);
    worse.name = "Bad_Name".into();
    let err = client
        .apply(pb::ApplyRequest {
            cause: String::new(),
            services: vec![other],
            autoscalers: Vec::new(),
            workloads: vec![bad.clone(), worse],
            dry_run: false,
        })
        .await
        .expect_err("invalid apply");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("Bad_Name"), "{}", err.message());
    assert!(
        err.message().contains(
            "port 80 on every node is used by both service \"web\" and service \"other\""
        ),
        "{}",
        err.message()
    );

    let missing_image = pb::WorkloadSpec {
        image: String::new(),
        ..web(1)
    };
    let err = client
        .apply(pb::ApplyRequest {
            cause: String::new(),
            services: Vec::new(),
            autoscalers: Vec::new(),
            workloads: vec![missing_image],
            dry_run: false,
        })
        .await
        .expect_err("no image");
    assert!(err.message().contains("image"), "{}", err.message());

    let names: Vec<String> = client
        .list_services(pb::ListServicesRequest {})
        .await
        .expect("list")
        .into_inner()
        .services
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, vec!["web"], "a refused apply stores nothing");

    // Dry run validates without storing.
    let mut new = web(1);
    new.name = "dry".into();
    new.ports.clear();
    client
        .apply(pb::ApplyRequest {
            cause: String::new(),
            services: Vec::new(),
            autoscalers: Vec::new(),
            workloads: vec![new],
            dry_run: true,
        })
        .await
        .expect("dry run");
    let count = client
        .list_services(pb::ListServicesRequest {})
        .await
        .expect("list")
        .into_inner()
        .services
        .len();
    assert_eq!(count, 1);

    server.shutdown.cancel();
    server.task.await.expect("join").expect("clean shutdown");
}

#[tokio::test]
async fn revisions_and_weights() {
    let server = start().await;
    let mut client = control(&server).await;
    client
        .apply(pb::ApplyRequest {
            cause: String::new(),
            services: Vec::new(),
            autoscalers: Vec::new(),
            workloads: vec![web(2)],
            dry_run: false,
        })
        .await
        .expect("apply v1");
    // Same spec: unchanged. Only replicas: same revision. New image: revision 2.
    let same = client
        .apply(pb::ApplyRequest {
            cause: String::new(),
            services: Vec::new(),
            autoscalers: Vec::new(),
            workloads: vec![web(2)],
            dry_run: false,
        })
        .await
        .expect("apply same")
        .into_inner();
    assert_eq!(same.results[0].change, pb::ApplyChange::Unchanged as i32);
    let scaled = client
        .apply(pb::ApplyRequest {
            cause: String::new(),
            services: Vec::new(),
            autoscalers: Vec::new(),
            workloads: vec![web(4)],
            dry_run: false,
        })
        .await
        .expect("apply replicas")
        .into_inner();
    assert_eq!(
        (scaled.results[0].revision, scaled.results[0].change),
        (1, pb::ApplyChange::Updated as i32)
    );
    let v2 = client
        .apply(pb::ApplyRequest {
            cause: String::new(),
            services: Vec::new(),
            autoscalers: Vec::new(),
            workloads: vec![pb::WorkloadSpec {
                image: "web:2".into(),
                ..web(4)
            }],
            dry_run: false,
        })
        .await
        .expect("apply v2")
        .into_inner();
    assert_eq!(v2.results[0].revision, 2);

    let err = client
        .set_weights(pb::SetWeightsRequest {
            name: "web".into(),
            revision_weights: [(1, 90), (3, 10)].into_iter().collect(),
            workload_weights: Default::default(),
        })
        .await
        .expect_err("revision 3 does not exist");
    assert!(err.message().contains("revision 3"), "{}", err.message());
    let err = client
        .set_weights(pb::SetWeightsRequest {
            name: "web".into(),
            revision_weights: [(1, 0), (2, 0)].into_iter().collect(),
            workload_weights: Default::default(),
        })
        .await
        .expect_err("all zero");
    assert!(err.message().contains("zero"), "{}", err.message());
    let summary = client
        .set_weights(pb::SetWeightsRequest {
            name: "web".into(),
            revision_weights: [(1, 90), (2, 10)].into_iter().collect(),
            workload_weights: Default::default(),
        })
        .await
        .expect("weights")
        .into_inner();
    assert_eq!(summary.revision_weights.get(&1), Some(&90));
    let status = client
        .get_service(pb::GetServiceRequest { name: "web".into() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(status.revisions.len(), 2);
    assert_eq!(status.summary.expect("summary").revision, 2);

    let err = client
        .cordon(pb::NodeRequest {
            node: "ghost".into(),
        })
        .await
        .expect_err("unknown node");
    assert_eq!(err.code(), tonic::Code::NotFound);

    server.shutdown.cancel();
    server.task.await.expect("join").expect("clean shutdown");
}

#[tokio::test]
async fn drain_moves_replicas_before_stopping_them() {
    let server = start().await;
    let mut client = control(&server).await;
    let mut a = FakeAgent::connect(&server, "a", &[]).await;
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
    a.until("allocation on a", |x| x.running_ids().len() == 1)
        .await;
    let first = a.running_ids();
    a.report(&first, pb::AllocState::Healthy, 31000).await;

    let mut b = FakeAgent::connect(&server, "b", &[]).await;
    let drained = client
        .drain(pb::NodeRequest { node: "a".into() })
        .await
        .expect("drain")
        .into_inner();
    assert!(drained.draining && drained.cordoned);

    // The replacement lands on b while a keeps its replica running.
    b.until("replacement on b", |x| x.running_ids().len() == 1)
        .await;
    assert_eq!(
        a.running_ids(),
        first,
        "old replica kept until the new one runs"
    );
    let second = b.running_ids();
    b.report(&second, pb::AllocState::Healthy, 31001).await;
    a.until("old replica stopped", |x| x.running_ids().is_empty())
        .await;

    let nodes = eventually("drain finished", async || {
        let nodes = client
            .list_nodes(pb::ListNodesRequest {})
            .await
            .expect("nodes")
            .into_inner()
            .nodes;
        let a = nodes
            .iter()
            .find(|n| n.info.as_ref().is_some_and(|i| i.id == "a"))?;
        (!a.draining).then_some(nodes)
    })
    .await;
    let node_a = nodes
        .iter()
        .find(|n| n.info.as_ref().is_some_and(|i| i.id == "a"))
        .expect("node a");
    assert!(node_a.cordoned, "a drained node stays cordoned");

    server.shutdown.cancel();
    server.task.await.expect("join").expect("clean shutdown");
}

/// One chunk of `request`'s output from `agent`.
async fn answer_logs(agent: &FakeAgent, request: &pb::LogRequest, lines: &[&str], end: bool) {
    let lines = lines
        .iter()
        .enumerate()
        .map(|(i, text)| pb::LogLine {
            allocation_id: request.allocation_id.clone(),
            timestamp: format!("2026-12-04T20:00:0{i}Z"),
            stderr: false,
            text: (*text).to_owned(),
        })
        .collect();
    agent
        .tx
        .send(pb::AgentMessage {
            body: Some(pb::agent_message::Body::Logs(pb::LogChunk {
                request_id: request.request_id,
                lines,
                end,
                error: String::new(),
            })),
        })
        .await
        .expect("send chunk");
}

#[tokio::test]
async fn logs_come_from_each_replicas_agent_and_stop_when_the_client_goes() {
    let server = start().await;
    let mut client = control(&server).await;
    let mut agents = vec![
        FakeAgent::connect(&server, "n1", &[]).await,
        FakeAgent::connect(&server, "n2", &[]).await,
    ];
    client
        .apply(pb::ApplyRequest {
            cause: String::new(),
            services: vec![web_service()],
            autoscalers: Vec::new(),
            workloads: vec![web(2)],
            dry_run: false,
        })
        .await
        .expect("apply");
    for agent in &mut agents {
        agent
            .until("a replica", |a| a.running_ids().len() == 1)
            .await;
    }
    let refused = client
        .logs(pb::LogsRequest {
            name: "nothing".into(),
            ..Default::default()
        })
        .await
        .expect_err("no such name");
    assert_eq!(refused.code(), tonic::Code::NotFound);

    // By the service's name: one request to each replica's node.
    let mut lines = client
        .logs(pb::LogsRequest {
            name: "web".into(),
            follow: true,
            since_seconds: 0,
            tail: 5,
        })
        .await
        .expect("logs")
        .into_inner();
    for agent in &mut agents {
        agent
            .until("a log request", |a| !a.log_requests.is_empty())
            .await;
        let request = &agent.log_requests[0];
        assert_eq!(
            agent.running_ids(),
            std::slice::from_ref(&request.allocation_id)
        );
        assert!(request.follow);
        assert_eq!(request.tail, 5);
    }
    // A node answering another node's request is not heard.
    let stolen = agents[1].log_requests[0].clone();
    answer_logs(&agents[0], &stolen, &["forged"], false).await;
    let first = agents[0].log_requests[0].clone();
    answer_logs(&agents[0], &first, &["one", "two"], false).await;
    let second = agents[1].log_requests[0].clone();
    answer_logs(&agents[1], &second, &["three"], true).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let line = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next())
            .await
            .expect("a line in time")
            .expect("open")
            .expect("line");
        got.push((line.allocation_id, line.text));
    }
    got.sort();
    let mut want = vec![
        (first.allocation_id.clone(), "one".to_owned()),
        (first.allocation_id.clone(), "two".to_owned()),
        (second.allocation_id.clone(), "three".to_owned()),
    ];
    want.sort();
    assert_eq!(got, want);

    // The client goes: the request still open is cancelled at its agent, the ended one not.
    drop(lines);
    agents[0]
        .until("the cancel", |a| a.log_cancels == [first.request_id])
        .await;
    assert!(agents[1].log_cancels.is_empty());
}
