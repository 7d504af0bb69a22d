//! A standalone agent under a separate coordinator: SIGKILL of the agent alone and a new
//! start adopt the running containers — no container restarts, the coordinator's view of
//! the allocations stays the same.

use std::time::Duration;

use drover_tests::{
    DroverProcess, allocations, build_images, healthy_containers, node_containers, success,
    unique_node, wait_for, workspace_root,
};

const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn agent_sigkill_and_restart_restarts_no_workload() {
    build_images();
    let dir = tempfile::tempdir().expect("tempdir");
    let coordinator_dir = dir.path().join("coordinator");
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&coordinator_dir).expect("coordinator dir");
    std::fs::create_dir_all(&agent_dir).expect("agent dir");
    let coordinator = DroverProcess::coordinator(&coordinator_dir);
    let node = unique_node("agent");
    let mut agent = DroverProcess::agent(&agent_dir, &node, &coordinator);

    let seed = workspace_root().join("examples/seed/user-service.yaml");
    success(
        &coordinator.cli(&["apply", "-f", seed.to_str().expect("utf-8 path")]),
        "drover apply",
    );
    wait_for("3 healthy replicas", DEADLINE, || {
        healthy_containers(&coordinator, "user-service").len() == 3
    });
    let containers = healthy_containers(&coordinator, "user-service");
    let ids = |c: &DroverProcess| {
        let mut ids: Vec<String> = allocations(c, "user-service")
            .iter()
            .filter_map(|a| a["id"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids
    };
    let before = ids(&coordinator);
    let started = started_at(&containers);
    let generation = |c: &DroverProcess| {
        c.try_cli_json(&["nodes"])
            .and_then(|nodes| nodes.as_array().cloned())
            .and_then(|nodes| {
                nodes
                    .iter()
                    .find(|n| n["id"] == node.as_str() && n["health"] == "ready")
                    .and_then(|n| n["generation"].as_u64())
            })
    };
    let first = generation(&coordinator).expect("agent connected");

    agent.kill_and_restart();
    // The new agent process says hello with what it runs: wait until the coordinator sees
    // its new generation, then check that nothing moved.
    wait_for("the restarted agent connected", DEADLINE, || {
        generation(&coordinator).is_some_and(|g| g > first)
    });
    wait_for(
        "3 healthy replicas after the agent restart",
        DEADLINE,
        || healthy_containers(&coordinator, "user-service") == containers,
    );
    assert_eq!(ids(&coordinator), before, "same allocations");
    let mut running = node_containers(&node, false);
    running.sort();
    assert_eq!(running, containers, "same containers, none restarted");
    assert_eq!(
        started_at(&containers),
        started,
        "no container was restarted"
    );
    drop(agent);
    drop(coordinator);
}

/// `State.StartedAt` of each container: it changes when a container restarts.
fn started_at(containers: &[String]) -> Vec<String> {
    containers
        .iter()
        .map(|id| {
            let out = std::process::Command::new("docker")
                .args(["inspect", "-f", "{{.State.StartedAt}}", id])
                .output()
                .expect("docker inspect");
            success(&out, "docker inspect").trim().to_string()
        })
        .collect()
}
