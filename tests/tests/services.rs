//! Services apart from workloads, through the real binaries: one Kubernetes Service over two
//! Deployments split by `drover weights`, and a second Service over one of them, both
//! routed by every node's proxy.

use std::time::Duration;

use drover_tests::{healthy_nodes, nodes_cluster, revision_split, success, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);

/// A Deployment `name` of `image` labelled app=hello, version=`version`, two replicas.
fn deployment(name: &str, image: &str, version: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: 2\n  \
         selector: {{matchLabels: {{app: hello, version: {version}}}}}\n  template:\n    \
         metadata: {{labels: {{app: hello, version: {version}}}}}\n    spec:\n      containers:\n        \
         - name: hello\n          image: {image}\n          ports: [{{name: http, containerPort: 8080}}]\n"
    )
}

#[test]
fn one_service_over_two_deployments_splits_by_weights_and_two_services_share_one() {
    let ips = ["127.0.0.191", "127.0.0.192"];
    let (dir, coordinator, _agents, _nodes) = nodes_cluster("svc", &ips);
    let manifest = dir.path().join("hello.yaml");
    let services = "apiVersion: v1\nkind: Service\nmetadata: {name: hello}\nspec:\n  type: LoadBalancer\n  \
         selector: {app: hello}\n  ports: [{port: 80, targetPort: http}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: hello-v2}\nspec:\n  type: NodePort\n  \
         selector: {app: hello, version: v2}\n  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]\n";
    std::fs::write(
        &manifest,
        format!(
            "{}---\n{}---\n{services}",
            deployment("hello-v1", "user-service", "v1"),
            deployment("hello-v2", "order-service", "v2")
        ),
    )
    .expect("write manifest");
    coordinator.apply(&manifest);
    wait_for("both deployments healthy", DEADLINE, || {
        healthy_nodes(&coordinator, "hello-v1").len() == 2
            && healthy_nodes(&coordinator, "hello-v2").len() == 2
    });

    // The second service routes to v2 only, on its node port of every node.
    for ip in ips {
        wait_for(&format!("hello-v2 through {ip}:30080"), DEADLINE, || {
            revision_split(&format!("{ip}:30080"), 20) == (0, 20)
        });
    }

    // Without weights, every replica alike: both deployments answer on port 80.
    wait_for("both deployments through hello", DEADLINE, || {
        let (v1, v2) = revision_split(&format!("{}:80", ips[0]), 40);
        v1 > 0 && v2 > 0 && v1 + v2 == 40
    });

    let out = success(
        &coordinator.cli(&["weights", "hello", "hello-v1=90", "hello-v2=10"]),
        "drover weights between workloads",
    );
    assert!(out.contains("service/hello workload weights set"), "{out}");
    for ip in ips {
        wait_for(&format!("a 90/10 split through {ip}"), DEADLINE, || {
            revision_split(&format!("{ip}:80"), 100) == (90, 10)
        });
    }
    let (v1, v2) = revision_split(&format!("{}:80", ips[1]), 2000);
    assert_eq!(v1 + v2, 2000, "every connection answered");
    assert!(
        (160..=240).contains(&v2),
        "v2 got {v2} of 2000 connections, not 10 % ± 2 points"
    );

    let status = success(&coordinator.cli(&["status", "hello"]), "status of hello");
    assert!(status.contains("Workloads: hello-v1, hello-v2"), "{status}");
}
