//! Services by name, through the real binaries: a three-tier application written as
//! Kubernetes manifests (a front end that calls its back end by name, a back end that calls
//! its cache by name) on a three-node harness, with every container resolving names through
//! the agents' DNS; a node's death and the coordinator's absence cost no call.

use std::time::Duration;

use drover_tests::{
    Cluster, DroverProcess, LoopingClient, allocations, debian_image, failure, healthy_containers,
    healthy_nodes, http_get, http_get_in_container, nodes_cluster_with_cluster_ips,
    remove_node_containers, success, wait_for,
};

const DEADLINE: Duration = Duration::from_secs(90);

/// A tier: answers every request with "NAME -> " and what its upstream (host:port, by
/// name) answers, calling it afresh each time. Perl from the Debian image, whose glibc
/// resolves names with the resolver and search path Drover gives the container.
const TIER: &str = r#"use strict; use IO::Socket::INET; $| = 1;
my $server = IO::Socket::INET->new(LocalPort => 8080, Listen => 128, ReuseAddr => 1) or die "listen: $!";
while (my $client = $server->accept) {
  my $line = <$client> // '';
  while (my $header = <$client>) { last if $header =~ /^\r?$/ }
  my $answer;
  my $upstream = IO::Socket::INET->new(PeerAddr => $ENV{UPSTREAM}, Timeout => 5);
  if ($upstream) {
    print $upstream "GET / HTTP/1.0\r\nHost: upstream\r\n\r\n";
    my $response = do { local $/; <$upstream> } // '';
    ($answer) = $response =~ /\r\n\r\n(.*)/s;
    $answer //= "no answer\n";
  } else {
    $answer = "cannot reach $ENV{UPSTREAM}: $@\n";
  }
  print $client "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n$ENV{NAME} -> $answer";
  close $client;
}
"#;

/// A Deployment `name` of `replicas` running [`TIER`] in `image`, calling `upstream`.
fn tier(name: &str, replicas: u32, image: &str, upstream: &str) -> String {
    let script: String = TIER
        .lines()
        .map(|l| format!("              {l}\n"))
        .collect();
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  \
         replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    \
         metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers:\n        \
         - name: {name}\n          image: {image}\n          command: [perl, -e]\n          \
         args:\n            - |\n{script}          env:\n            \
         - {{name: NAME, value: {name}}}\n            - {{name: UPSTREAM, value: \"{upstream}\"}}\n          \
         ports: [{{containerPort: 8080}}]\n"
    )
}

/// A Service `name` over app=`app` on `port` → 8080, with `extra` spec lines and
/// `port_extra` fields of its port.
fn service(name: &str, app: &str, port: u16, extra: &str, port_extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n{extra}  \
         selector: {{app: {app}}}\n  ports: [{{name: http, port: {port}, targetPort: 8080{port_extra}}}]\n"
    )
}

/// The application: frontend (NodePort 30081, port 80) → backend (port 80) → cache (port
/// 6379, the seed's user-service image answering its name and container), every tier
/// three replicas but the front end's one; and a headless service over the back end.
fn application(debian: &str) -> String {
    [
        tier("frontend", 1, debian, "backend:80"),
        service("frontend", "frontend", 80, "  type: NodePort\n", ", nodePort: 30081"),
        tier("backend", 3, debian, "cache:6379"),
        service("backend", "backend", 80, "", ""),
        service("backend-pods", "backend", 80, "  clusterIP: None\n", ""),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: cache}\nspec:\n  replicas: 3\n  \
         selector: {matchLabels: {app: cache}}\n  template:\n    metadata: {labels: {app: cache}}\n    \
         spec:\n      containers:\n        - name: cache\n          image: user-service\n          \
         ports: [{containerPort: 8080}]\n"
            .to_string(),
        service("cache", "cache", 6379, "", ""),
    ]
    .join("---\n")
}

fn answered_by_all_tiers(body: &str) -> bool {
    body.contains("frontend -> backend -> user-service ")
}

/// The node of the one healthy frontend replica and its container.
fn frontend(coordinator: &DroverProcess) -> (String, String) {
    let nodes = healthy_nodes(coordinator, "frontend");
    let containers = healthy_containers(coordinator, "frontend");
    (nodes[0].clone(), containers[0].clone())
}

/// `getent ahostsv4 NAME` inside `container`: the addresses it resolves to, sorted.
fn resolve_in(container: &str, name: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["exec", container, "getent", "ahostsv4", name])
        .output()
        .expect("docker exec getent");
    let mut ips: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

#[test]
fn a_three_tier_application_calls_itself_by_name_through_failures() {
    let debian = debian_image();
    let ips = ["127.0.0.195", "127.0.0.196", "127.0.0.197"];
    let (dir, mut coordinator, mut agents, nodes): Cluster =
        nodes_cluster_with_cluster_ips("names", &ips);
    let manifest = dir.path().join("app.yaml");
    std::fs::write(&manifest, application(&debian)).expect("write manifest");
    coordinator.apply(&manifest);
    wait_for("every tier healthy", DEADLINE, || {
        healthy_nodes(&coordinator, "frontend").len() == 1
            && healthy_nodes(&coordinator, "backend").len() == 3
            && healthy_nodes(&coordinator, "cache").len() == 3
    });

    // The front end's node port on every node answers through all three tiers.
    for ip in ips {
        wait_for(
            &format!("the application through {ip}:30081"),
            DEADLINE,
            || answered_by_all_tiers(&http_get(&format!("{ip}:30081"))),
        );
    }

    // From inside a container, by every form of the name.
    let (frontend_node, container) = frontend(&coordinator);
    for name in [
        "backend",
        "backend.default",
        "backend.default.svc.cluster.local",
    ] {
        let answer = http_get_in_container(&container, name, 80).expect("call by name");
        assert!(
            answer.contains("backend -> user-service "),
            "{name}: {answer}"
        );
    }
    // A headless service resolves to its ready replicas' nodes.
    let mut backend_nodes: Vec<String> = allocations(&coordinator, "backend")
        .iter()
        .filter_map(|a| a["node"].as_str().map(str::to_string))
        .map(|node| ips[nodes.iter().position(|n| *n == node).expect("known node")].to_string())
        .collect();
    backend_nodes.sort();
    backend_nodes.dedup();
    assert_eq!(resolve_in(&container, "backend-pods"), backend_nodes);
    // The container's own /etc/hosts still comes first (relaying other names to the host's
    // resolvers is tested in agent/tests/dns.rs, against an upstream of its own).
    assert_eq!(resolve_in(&container, "localhost"), ["127.0.0.1"]);

    // SIGKILL of a node that runs a back-end and a cache replica (not the front end's, nor
    // the one serving this host's cluster addresses): calls by name keep answering.
    let victim = (1..3)
        .find(|i| nodes[*i] != frontend_node)
        .expect("a node without the front end");
    let client = LoopingClient::start(format!("{}:30081", ips[0]), answered_by_all_tiers);
    std::thread::sleep(Duration::from_secs(2));
    agents[victim].kill();
    remove_node_containers(&nodes[victim]);
    wait_for("the dead node's replicas moved", DEADLINE, || {
        let on_victim = |service: &str| {
            allocations(&coordinator, service)
                .iter()
                .any(|a| a["node"] == nodes[victim].as_str())
        };
        healthy_nodes(&coordinator, "backend").len() == 3
            && healthy_nodes(&coordinator, "cache").len() == 3
            && !on_victim("backend")
            && !on_victim("cache")
    });
    std::thread::sleep(Duration::from_secs(2));
    let (answered, failed, errors) = client.finish();
    assert!(answered > 50, "only {answered} calls answered");
    assert_eq!(
        failed, 0,
        "failed calls during the node's death: {errors:?}"
    );

    // With the coordinator gone, names still resolve and route.
    coordinator.kill();
    for name in ["backend", "cache.default.svc.cluster.local"] {
        let port = if name == "backend" { 80 } else { 6379 };
        let answer = http_get_in_container(&container, name, port).expect("call by name");
        assert!(answer.contains("user-service "), "{name}: {answer}");
    }

    // A deleted service's name is gone.
    coordinator.kill_and_restart();
    success(
        &coordinator.cli(&["delete", "backend-pods", "--only", "service"]),
        "delete backend-pods",
    );
    wait_for("backend-pods no longer resolves", DEADLINE, || {
        resolve_in(&container, "backend-pods").is_empty()
    });
    let out = failure(
        &coordinator.cli(&["status", "backend-pods"]),
        "status of a deleted service",
    );
    assert!(out.contains("not found"), "{out}");
}
