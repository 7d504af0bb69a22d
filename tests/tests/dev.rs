//! `drover dev` against the real Docker engine: the seed example runs, heals, survives a
//! restart of Drover without restarting its containers, and goes away on delete; a missing
//! image and a crash loop end as `failed` with the reason.

use std::path::Path;
use std::time::Duration;

use drover_tests::{
    DroverProcess, allocations, build_images, healthy_containers, http_get, node_containers,
    revision_split, success, try_http_get_path, unique_node, wait_for, web_manifest,
    workspace_root,
};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);
/// Loopback address of the seed test's node: its proxy serves user-service on port 80 here.
const SEED_IP: &str = "127.0.0.11";

/// The seed as the README runs it, both services: order-service calls user-service by
/// name (`http://user-service/`, through the cluster DNS and user-service's cluster
/// address), and both are on the node's address too, as `drover dev` puts them.
#[test]
fn the_seed_calls_itself_by_name() {
    build_images();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = unique_node("seedname");
    let ip = "127.0.0.189";
    let seed = workspace_root().join("examples/seed");
    let dev = DroverProcess::dev(dir.path(), ip, &node, &[seed.as_path()]);
    wait_for("the seed's replicas healthy", DEADLINE, || {
        healthy_containers(&dev, "user-service").len() == 3
            && healthy_containers(&dev, "order-service").len() == 2
    });
    let mut last = String::new();
    wait_for(
        "order-service calling user-service by name",
        DEADLINE,
        || {
            last = try_http_get_path(&format!("{ip}:8081"), "/cgi-bin/call").unwrap_or_default();
            last.starts_with("order-service ") && last.contains(" -> user-service ")
        },
    );
    assert!(http_get(&format!("{ip}:80")).starts_with("user-service "));
    // The same by its cluster address, and by the long name.
    let services = dev.cli_json(&["get", "services"]);
    let order = services
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == "order-service"))
        .and_then(|s| s["cluster_ip"].as_str())
        .expect("order-service's cluster address")
        .to_string();
    let long = try_http_get_path(
        &format!("{order}:8081"),
        "/cgi-bin/call?user-service.default.svc.cluster.local",
    )
    .expect("a call through the cluster address");
    assert!(long.contains(" -> user-service "), "{long}");
}

#[test]
fn seed_runs_heals_survives_restart_and_deletes() {
    build_images();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = unique_node("seed");
    let seed = workspace_root().join("examples/seed/user-service.yaml");
    let mut dev = DroverProcess::dev(dir.path(), SEED_IP, &node, &[seed.as_path()]);

    wait_for("3 healthy user-service replicas", DEADLINE, || {
        healthy_containers(&dev, "user-service").len() == 3
    });
    let before = healthy_containers(&dev, "user-service");
    let running = node_containers(&node, false);
    assert_eq!(running.len(), 3, "exactly 3 containers run: {running:?}");

    // Each replica answers over its published port with its name and container id.
    for a in allocations(&dev, "user-service") {
        let port = a["host_ports"]["8080"].as_u64().expect("published port");
        let body = http_get(&format!("{SEED_IP}:{port}"));
        let id = a["container_id"].as_str().expect("container id");
        assert!(body.starts_with("user-service "), "{body}");
        assert!(
            id.starts_with(body.trim().trim_start_matches("user-service ")),
            "{body} vs {id}"
        );
    }

    // The service proxy on port 80 spreads connections over the 3 replicas in turn.
    let short: Vec<String> = before.iter().map(|id| id[..12].to_string()).collect();
    let through_proxy = || http_get(&format!("{SEED_IP}:80"));
    let round = || {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..30 {
            let body = through_proxy();
            let id = body.trim().trim_start_matches("user-service ").to_string();
            *counts.entry(id).or_default() += 1;
        }
        counts
    };
    // New endpoints warm up (slow start) for a few seconds; then the schedule is exact.
    let mut last = Default::default();
    wait_for(
        "round robin over the 3 replicas through port 80",
        DEADLINE,
        || {
            last = round();
            last.values().all(|n| *n == 10) && last.keys().all(|id| short.contains(id))
        },
    );
    assert_eq!(last.len(), 3, "{last:?}");

    // docker kill → restarted in place, with a higher restart count.
    let victim = before[0].clone();
    success(
        &std::process::Command::new("docker")
            .args(["kill", &victim])
            .output()
            .expect("docker kill"),
        "docker kill",
    );
    wait_for(
        "the killed replica healthy again, restarted",
        DEADLINE,
        || {
            allocations(&dev, "user-service").iter().any(|a| {
                a["container_id"] == victim.as_str()
                    && a["state"] == "healthy"
                    && a["restarts"] == 1
            })
        },
    );
    assert_eq!(healthy_containers(&dev, "user-service").len(), 3);
    let allocs_before: Vec<Value> = allocations(&dev, "user-service")
        .iter()
        .map(|a| a["id"].clone())
        .collect();

    // SIGKILL Drover (coordinator and agent) and start it again: the same containers run,
    // nothing restarts, the coordinator's view is the same.
    dev.kill_and_restart();
    wait_for("3 healthy replicas after the restart", DEADLINE, || {
        healthy_containers(&dev, "user-service").len() == 3
    });
    assert_eq!(healthy_containers(&dev, "user-service"), before);
    let allocs_after: Vec<Value> = allocations(&dev, "user-service")
        .iter()
        .map(|a| a["id"].clone())
        .collect();
    assert_eq!(allocs_after, allocs_before);
    let mut still_running = node_containers(&node, false);
    still_running.sort();
    assert_eq!(still_running, before, "no container was replaced");

    success(&dev.cli(&["delete", "user-service"]), "drover delete");
    wait_for("user-service containers gone", DEADLINE, || {
        node_containers(&node, true).is_empty()
    });
}

#[test]
fn missing_image_and_crash_loop_end_failed() {
    build_images();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = unique_node("fail");
    let manifest = dir.path().join("failing.yaml");
    std::fs::write(
        &manifest,
        r#"apiVersion: drover.dev/v1
kind: Service
metadata: {name: ghost}
spec:
  image: drover-no-such-image:1
---
apiVersion: drover.dev/v1
kind: Service
metadata: {name: crasher}
spec:
  image: drover-test-busybox
  command: ["/bin/sh", "-c", "exit 3"]
  restart: {policy: always, maxAttempts: 2, initialBackoff: 1s, maxBackoff: 2s}
"#,
    )
    .expect("write manifest");
    let dev = DroverProcess::dev(dir.path(), "127.0.0.12", &node, &[Path::new(&manifest)]);

    wait_for("ghost failed", DEADLINE, || {
        allocations(&dev, "ghost")
            .iter()
            .any(|a| a["state"] == "failed")
    });
    let ghost = allocations(&dev, "ghost");
    let message = ghost[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("drover-no-such-image:1"), "{message}");

    // The backoff shows in status before the allocation gives up.
    wait_for("crasher backing off", DEADLINE, || {
        allocations(&dev, "crasher").iter().any(|a| {
            a["message"]
                .as_str()
                .is_some_and(|m| m.contains("exited with code 3") && m.contains("back-off"))
        })
    });
    wait_for("crasher failed after its restarts", DEADLINE, || {
        allocations(&dev, "crasher").iter().any(|a| {
            a["state"] == "failed"
                && a["restarts"] == 2
                && a["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("gave up after 2 restarts"))
        })
    });
}

/// A canary: revision 2 gets 10% of the connections through port 80 while revision 1 keeps
/// serving the rest; `drover weights` then moves everything to revision 2.
#[test]
fn canary_split_by_revision_weights() {
    build_images();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = unique_node("canary");
    let ip = "127.0.0.16";
    let manifest = |image: &str, weights: &str| web_manifest(image, 1, weights);
    let v1 = dir.path().join("v1.yaml");
    std::fs::write(&v1, manifest("user-service", "")).expect("write v1");
    let dev = DroverProcess::dev(dir.path(), ip, &node, &[Path::new(&v1)]);
    wait_for("revision 1 healthy", DEADLINE, || {
        healthy_containers(&dev, "web").len() == 1
    });

    // Revision 2 (another image) with 90/10 weights: revision 1 keeps its replica.
    let v2 = dir.path().join("v2.yaml");
    std::fs::write(
        &v2,
        manifest(
            "order-service",
            "  traffic: {strategy: round_robin, weights: {1: 90, 2: 10}}\n",
        ),
    )
    .expect("write v2");
    dev.apply(&v2);
    wait_for("both revisions healthy", DEADLINE, || {
        healthy_containers(&dev, "web").len() == 2
    });
    let proxy = format!("{ip}:80");
    let split = || revision_split(&proxy, 100);
    // After the canary's warm-up, the split is exact.
    let mut last = (0, 0);
    wait_for("a 90/10 split through the proxy", DEADLINE, || {
        last = split();
        last == (90, 10)
    });

    success(
        &dev.cli(&["weights", "web", "1=0", "2=100"]),
        "drover weights",
    );
    wait_for("everything on revision 2", DEADLINE, || split() == (0, 100));
    wait_for("revision 1 stopped", DEADLINE, || {
        allocations(&dev, "web").iter().all(|a| a["revision"] == 2)
    });
}
