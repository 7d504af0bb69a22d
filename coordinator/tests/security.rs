//! Who may talk to the coordinator: real TLS on a loopback port, certificates from real
//! joins, tokens from the coordinator's own files.

mod common;

use common::{FakeAgent, control, operator, start};
use drover_proto::pb;
use drover_security::client::{self, ConnectError, OperatorAuth};
use drover_security::transport::{ClientTls, Trust};
use drover_security::{ClusterCa, Token};

#[tokio::test]
async fn an_agent_without_a_certificate_or_with_another_nodes_is_refused() {
    let server = start().await;

    // TLS to the right coordinator, but no client certificate.
    let tls = ClientTls::new(&Trust::Pinned(server.agent_token().digest), None).expect("tls");
    let endpoint = drover_security::transport::endpoint(&server.url).expect("endpoint");
    let channel = tls.connect(endpoint).await.expect("connect");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(pb::Hello {
            node: Some(FakeAgent::node("a", &[])),
            allocations: vec![],
            desired_version: 0,
            cluster_id: "drover".into(),
        })),
    })
    .await
    .expect("queue");
    let refused = pb::agent_link_client::AgentLinkClient::new(channel)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect_err("no certificate");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("without a certificate"),
        "{refused:?}"
    );

    // A certificate for node a, a hello for node b.
    let refused = FakeAgent::hello_as(&server, "a", FakeAgent::node("b", &[]), vec![])
        .await
        .err()
        .expect("another node's certificate");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(
        refused
            .message()
            .contains("presented a certificate for node a"),
        "{refused:?}"
    );

    // Its own certificate works.
    FakeAgent::hello(&server, FakeAgent::node("b", &[]), vec![])
        .await
        .expect("own certificate");
}

#[tokio::test]
async fn a_token_for_another_cluster_or_an_unknown_one_gets_nothing() {
    let server = start().await;
    let other = ClusterCa::generate("other").expect("ca");
    let foreign = Token::generate(other.digest());
    match client::join(&server.url, &foreign, Some("n1")).await {
        Err(ConnectError::Unreachable { cause, .. }) => {
            assert!(
                cause.contains("not the cluster the token was made for"),
                "{cause}"
            );
        }
        other => panic!("expected a pinning failure, got {other:?}"),
    }
    // The right CA, a made-up secret.
    let made_up = Token::generate(server.agent_token().digest);
    match client::join(&server.url, &made_up, Some("n1")).await {
        Err(ConnectError::Refused { code, message, .. }) => {
            assert_eq!(code, tonic::Code::Unauthenticated);
            assert!(message.contains("unknown or revoked"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // An agent token is no operator token.
    match client::operator(&server.url, &OperatorAuth::Token(server.agent_token())).await {
        Err(ConnectError::Refused { message, .. }) => {
            assert!(message.contains("agent join token"), "{message}");
        }
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("an agent token opened an operator session"),
    }
}

#[tokio::test]
async fn roles_are_enforced_and_a_revoked_token_stops_at_once() {
    let server = start().await;
    let mut admin = control(&server).await;
    let made = admin
        .create_token(pb::CreateTokenRequest {
            name: "viewer".into(),
            role: "read".into(),
            ttl_seconds: 0,
        })
        .await
        .expect("create")
        .into_inner();
    let viewer: Token = made.token.parse().expect("token");
    let mut reader = operator(&server.url, &viewer).await;
    reader
        .list_services(pb::ListServicesRequest {})
        .await
        .expect("a reader reads");
    let refused = reader
        .scale(pb::ScaleRequest {
            name: "web".into(),
            replicas: 3,
        })
        .await
        .expect_err("a reader cannot scale");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused
            .message()
            .contains("scale web to 3 needs the operator role; token \"viewer\" has the read role"),
        "{refused:?}"
    );

    // Revoked: the very next call on the open connection fails.
    admin
        .revoke_token(pb::RevokeTokenRequest {
            token: "viewer".into(),
        })
        .await
        .expect("revoke");
    let refused = reader
        .list_services(pb::ListServicesRequest {})
        .await
        .expect_err("revoked");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // No token at all: plain gRPC does not even reach the API.
    let plain = client::operator(&server.url, &OperatorAuth::Insecure).await;
    if let Ok(mut plain) = plain {
        plain
            .list_nodes(pb::ListNodesRequest {})
            .await
            .expect_err("plain gRPC to a TLS server");
    }

    // Every change names its token in the event log.
    let events: Vec<pb::Event> = {
        use tokio_stream::StreamExt as _;
        admin
            .watch_events(pb::WatchEventsRequest {
                since: 0,
                follow: false,
            })
            .await
            .expect("events")
            .into_inner()
            .filter_map(Result::ok)
            .collect()
            .await
    };
    assert!(
        events.iter().any(|e| e.kind == "token_changed"
            && e.message.contains("token \"viewer\"")
            && e.message.contains("revoked by \"bootstrap-admin\"")),
        "{events:?}"
    );
    let tokens = admin
        .list_tokens(pb::ListTokensRequest {})
        .await
        .expect("list")
        .into_inner()
        .tokens;
    let names: Vec<&str> = tokens.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"bootstrap-admin") && names.contains(&"bootstrap-agent"));
}

#[tokio::test]
async fn a_secret_reaches_only_the_node_that_runs_it_and_only_admins_see_its_value() {
    let server = start().await;
    let mut admin = control(&server).await;
    let mut db_node = FakeAgent::connect(&server, "n1", &[("role", "db")]).await;
    let mut other = FakeAgent::connect(&server, "n2", &[]).await;

    let mut spec = common::web(1);
    spec.secret_env
        .insert("DB_PASSWORD".into(), "hunter2".into());
    spec.placement = Some(pb::Placement {
        constraints: vec![pb::LabelConstraint {
            key: "role".into(),
            op: pb::ConstraintOp::Eq.into(),
            values: vec!["db".into()],
        }],
        ..Default::default()
    });
    admin
        .apply(pb::ApplyRequest {
            services: vec![common::web_service()],
            autoscalers: Vec::new(),
            workloads: vec![spec],
            dry_run: false,
            cause: String::new(),
        })
        .await
        .expect("apply");

    db_node
        .until("the replica with its secret", |a| !a.desired.is_empty())
        .await;
    let given = db_node.desired[0].spec.as_ref().expect("spec");
    assert_eq!(
        given.secret_env.get("DB_PASSWORD").map(String::as_str),
        Some("hunter2")
    );
    other
        .until("the route to web", |a| {
            a.routes.iter().any(|r| r.service == "web")
        })
        .await;
    assert!(
        other.desired.is_empty(),
        "n2 runs nothing: {:?}",
        other.desired
    );

    let made = admin
        .create_token(pb::CreateTokenRequest {
            name: "ops".into(),
            role: "operator".into(),
            ttl_seconds: 0,
        })
        .await
        .expect("create")
        .into_inner();
    let mut ops = operator(&server.url, &made.token.parse().expect("token")).await;
    let seen = ops
        .get_service(pb::GetServiceRequest { name: "web".into() })
        .await
        .expect("an operator reads the service")
        .into_inner();
    let specs = std::iter::once(seen.spec.as_ref().expect("spec"))
        .chain(seen.revisions.iter().filter_map(|r| r.spec.as_ref()));
    for spec in specs {
        assert!(spec.secret_env.is_empty(), "{:?}", spec.secret_env);
        assert_eq!(spec.withheld_secrets, ["DB_PASSWORD"]);
    }
    let seen = admin
        .get_service(pb::GetServiceRequest { name: "web".into() })
        .await
        .expect("the admin reads the service")
        .into_inner()
        .spec
        .expect("spec");
    assert_eq!(
        seen.secret_env.get("DB_PASSWORD").map(String::as_str),
        Some("hunter2")
    );
    assert!(seen.withheld_secrets.is_empty());

    // A withheld copy cannot be applied back as if it were the spec.
    let mut withheld = seen.clone();
    withheld.withhold_secrets();
    let refused = ops
        .apply(pb::ApplyRequest {
            services: Vec::new(),
            autoscalers: Vec::new(),
            workloads: vec![withheld],
            dry_run: false,
            cause: String::new(),
        })
        .await
        .expect_err("withheld values");
    assert!(refused.message().contains("were withheld"), "{refused:?}");
}

#[tokio::test]
async fn agents_get_the_digests_of_every_token_and_follow_their_changes() {
    let server = start().await;
    let mut admin = control(&server).await;
    let mut agent = FakeAgent::connect(&server, "n1", &[]).await;
    // The bootstrap admin and agent tokens, each with its role.
    agent
        .until("the first tokens", |a| !a.read_tokens.is_empty())
        .await;
    let roles: std::collections::BTreeSet<&str> =
        agent.read_tokens.iter().map(|t| t.role.as_str()).collect();
    assert_eq!(roles, ["admin", "agent"].into(), "{:?}", agent.read_tokens);
    let made = admin
        .create_token(pb::CreateTokenRequest {
            name: "prometheus".into(),
            role: "read".into(),
            ttl_seconds: 0,
        })
        .await
        .expect("create")
        .into_inner();
    let token: Token = made.token.parse().expect("token");
    agent
        .until("the new read token", |a| {
            a.read_tokens.iter().any(|t| t.id == token.id)
        })
        .await;
    let sent = agent
        .read_tokens
        .iter()
        .find(|t| t.id == token.id)
        .expect("sent");
    assert_eq!(
        (sent.name.as_str(), sent.role.as_str()),
        ("prometheus", "read")
    );
    // A digest, never the secret.
    let digest = data_encoding::HEXLOWER
        .decode(sent.secret_sha256.as_bytes())
        .expect("hex");
    assert!(token.matches(&digest));
    assert!(!made.token.contains(&sent.secret_sha256));
    admin
        .revoke_token(pb::RevokeTokenRequest {
            token: "prometheus".into(),
        })
        .await
        .expect("revoke");
    agent
        .until("the revoked token gone", |a| {
            a.read_tokens.iter().all(|t| t.id != token.id)
        })
        .await;
}
