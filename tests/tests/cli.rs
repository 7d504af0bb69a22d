//! The operator's path through the real binaries: start a coordinator, apply the seed
//! manifests with `drover`, read them back, restart the coordinator, read them again.

use drover_tests::{DroverProcess, failure, success, workspace_root};

#[test]
fn seed_manifests_survive_a_coordinator_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut coordinator = DroverProcess::coordinator(dir.path());
    let seed = workspace_root().join("examples/seed");
    let seed = seed.to_str().expect("utf-8 path");

    let out = success(&coordinator.cli(&["apply", "-f", seed]), "drover apply");
    assert!(
        out.contains("workload/user-service created (revision 1)"),
        "{out}"
    );
    assert!(out.contains("service/user-service created"), "{out}");

    let out = success(
        &coordinator.cli(&["get", "services"]),
        "drover get services",
    );
    assert!(out.contains("user-service"), "{out}");
    assert!(out.contains("ClusterIP"), "{out}");
    assert!(out.contains("80->8080/tcp"), "{out}");

    let json = success(
        &coordinator.cli(&["get", "services", "-o", "json"]),
        "drover get services -o json",
    );
    let services: Vec<serde_json::Value> = serde_json::from_str(&json).expect("json");
    let names: Vec<&str> = services.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, vec!["order-service", "user-service"]);
    assert_eq!(
        services[1]["workloads"],
        serde_json::json!(["user-service"])
    );
    assert_eq!(services[1]["type"], "ClusterIP");

    let json = success(
        &coordinator.cli(&["get", "workloads", "-o", "json"]),
        "drover get workloads -o json",
    );
    let workloads: Vec<serde_json::Value> = serde_json::from_str(&json).expect("json");
    let names: Vec<&str> = workloads
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, vec!["order-service", "user-service"]);
    let user = &workloads[1];
    assert_eq!(user["desired"], 3);
    assert_eq!(user["image"], "user-service");
    assert_eq!(user["services"], serde_json::json!(["user-service"]));

    let out = success(
        &coordinator.cli(&["status", "user-service"]),
        "drover status",
    );
    assert!(out.contains("3 desired"), "{out}");
    // No agent yet: the placement failure says why.
    assert!(out.contains("placed 0 of 3"), "{out}");

    // Applying again changes nothing.
    let out = success(&coordinator.cli(&["apply", "-f", seed]), "second apply");
    assert!(out.contains("unchanged"), "{out}");

    coordinator.kill_and_restart();
    let json = success(
        &coordinator.cli(&["status", "user-service", "-o", "json"]),
        "status after restart",
    );
    let status: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(status["desired"], 3);
    assert_eq!(status["revisions"], serde_json::json!([1]));

    let out = success(&coordinator.cli(&["events"]), "drover events");
    assert!(out.contains("service_created"), "{out}");
    assert!(out.contains("coordinator_started"), "{out}");

    let out = success(&coordinator.cli(&["scale", "user-service", "5"]), "scale");
    assert!(out.contains("5 replicas"), "{out}");
    let out = success(
        &coordinator.cli(&["delete", "user-service"]),
        "drover delete",
    );
    assert!(out.contains("deleted"), "{out}");
    let err = failure(
        &coordinator.cli(&["status", "user-service"]),
        "status of a deleted service",
    );
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn errors_name_the_problem_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let coordinator = DroverProcess::coordinator(dir.path());
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {name: ok}\nspec: {image: ok}\n---\n\
         apiVersion: drover.dev/v1\nkind: Service\nmetadata: {name: broken}\nspec: {image: x, replicas: -1}\n",
    )
    .expect("write manifest");
    let err = failure(
        &coordinator.cli(&["apply", "-f", bad.to_str().expect("path")]),
        "apply of an invalid manifest",
    );
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(err.contains("replicas"), "{err}");
    let out = success(&coordinator.cli(&["get", "workloads"]), "get workloads");
    assert!(out.contains("No workloads"), "nothing stored: {out}");

    let err = failure(
        &coordinator.cli(&["weights", "nope", "1=10"]),
        "weights for a missing service",
    );
    assert!(err.contains("nope") && err.contains("not found"), "{err}");

    let err = failure(
        &coordinator.cli(&["--coordinator", "http://127.0.0.1:1", "get", "services"]),
        "unreachable coordinator",
    );
    assert!(
        err.contains("cannot reach the coordinator at http://127.0.0.1:1"),
        "{err}"
    );
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().expect("tempdir");
    let coordinator = DroverProcess::coordinator(dir.path());
    let seed = workspace_root().join("examples/seed");
    coordinator.apply(&seed);
    // `drover events --follow | head -1`: the reader goes away after one line.
    let mut events = Command::new(drover_tests::binary("drover"))
        .args(["events", "--follow"])
        .env("DROVER_COORDINATOR", coordinator.url())
        .env("DROVER_TOKEN_FILE", coordinator.admin_token_file())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run drover events");
    let stdout = events.stdout.take().expect("stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("read a line");
    assert!(!first.is_empty(), "a first line");
    // The reader is dropped here; the next event written hits a closed pipe.
    coordinator.cli(&["scale", "user-service", "4"]);
    let out = events.wait_with_output().expect("drover events ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_manifest_over_the_request_limit_says_what_is_too_big() {
    let dir = tempfile::tempdir().expect("tempdir");
    let coordinator = DroverProcess::coordinator(dir.path());
    let big = dir.path().join("big.yaml");
    let value = "x".repeat(100_000);
    let mut text = String::new();
    // 200 services with a 100 KB environment each: 20 MB in one apply.
    for i in 0..200 {
        text.push_str(&format!(
            "---\napiVersion: drover.dev/v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec:\n  image: busybox\n  env: {{BIG: {value}}}\n"
        ));
    }
    std::fs::write(&big, text).expect("write manifest");
    let err = failure(
        &coordinator.cli(&["apply", "-f", big.to_str().expect("path")]),
        "apply of a 20 MB manifest",
    );
    assert!(
        err.contains("over the coordinator's limit of 16777216 bytes")
            && err.contains("limits.request_bytes"),
        "{err}"
    );
    let out = success(&coordinator.cli(&["get", "workloads"]), "get workloads");
    assert!(out.contains("No workloads"), "nothing stored: {out}");
}

/// A Kubernetes Service keeps its own name apart from the Deployment it selects, and is
/// shown, found and deleted by it.
#[test]
fn a_service_keeps_its_own_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut coordinator = DroverProcess::coordinator(dir.path());
    let manifest = dir.path().join("hello.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: backend}\nspec:\n  replicas: 2\n  \
         selector: {matchLabels: {app: hello, tier: backend}}\n  template:\n    metadata: {labels: \
         {app: hello, tier: backend}}\n    spec:\n      containers:\n        - name: hello\n          \
         image: hello\n          ports: [{name: http, containerPort: 80}]\n---\napiVersion: v1\nkind: \
         Service\nmetadata: {name: hello}\nspec:\n  selector: {app: hello}\n  ports: [{port: 80, \
         targetPort: http}]\n",
    )
    .expect("write manifest");
    let path = manifest.to_str().expect("utf-8 path");
    let out = success(&coordinator.cli(&["apply", "-f", path]), "apply");
    assert!(
        out.contains("workload/backend created (revision 1)"),
        "{out}"
    );
    assert!(out.contains("service/hello created"), "{out}");

    let out = success(
        &coordinator.cli(&["status", "hello"]),
        "status of the service",
    );
    assert!(out.contains("Service:   hello (ClusterIP)"), "{out}");
    assert!(out.contains("Workloads: backend"), "{out}");
    let out = success(
        &coordinator.cli(&["status", "backend"]),
        "status of the workload",
    );
    assert!(out.contains("Services:  hello"), "{out}");
    let out = success(&coordinator.cli(&["get", "services"]), "get services");
    assert!(out.contains("80->http/tcp"), "{out}");

    // Weights between workloads name workloads the service selects.
    let err = failure(
        &coordinator.cli(&["weights", "hello", "frontend=10"]),
        "weights for a workload the service does not select",
    );
    assert!(
        err.contains("does not select workload \"frontend\"") && err.contains("backend"),
        "{err}"
    );

    coordinator.kill_and_restart();
    let out = success(&coordinator.cli(&["delete", "hello"]), "delete the service");
    assert!(out.contains("service/hello deleted"), "{out}");
    assert!(!out.contains("workload/"), "the workload stays: {out}");
    let out = success(&coordinator.cli(&["get", "services"]), "get services");
    assert!(out.contains("No services"), "{out}");
    let out = success(&coordinator.cli(&["get", "workloads"]), "get workloads");
    assert!(out.contains("backend"), "{out}");
}
