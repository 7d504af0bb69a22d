//! A standalone agent under a separate coordinator: SIGKILL of the agent alone and a new
//! start adopt the running containers — no container restarts, the coordinator's view of
//! the allocations stays the same.

use std::time::Duration;

use drover_tests::{
    DroverProcess, allocations, build_images, healthy_containers, healthy_nodes, http_get,
    node_containers, nodes_cluster, revision_split, seed_on_node_addresses, success, unique_node,
    wait_for, web_manifest,
};

const DEADLINE: Duration = Duration::from_secs(60);

/// Sorted ids of the user-service allocations that should run.
fn allocation_ids(coordinator: &DroverProcess) -> Vec<String> {
    let mut ids: Vec<String> = allocations(coordinator, "user-service")
        .iter()
        .filter_map(|a| a["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

/// A coordinator and one agent (proxying on `ip`) in a fresh temp dir, images built.
fn cluster(name: &str, ip: &str) -> (tempfile::TempDir, DroverProcess, DroverProcess, String) {
    build_images();
    let dir = tempfile::tempdir().expect("tempdir");
    let coordinator_dir = dir.path().join("coordinator");
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&coordinator_dir).expect("coordinator dir");
    std::fs::create_dir_all(&agent_dir).expect("agent dir");
    let coordinator = DroverProcess::coordinator(&coordinator_dir);
    let node = unique_node(name);
    let agent = DroverProcess::agent_on(&agent_dir, ip, &node, &coordinator);
    (dir, coordinator, agent, node)
}

#[test]
fn agent_sigkill_and_restart_restarts_no_workload() {
    let (_dir, coordinator, mut agent, node) = cluster("agent", "127.0.0.14");

    let seed = seed_on_node_addresses(&coordinator.coordinator_dir);
    coordinator.apply(&seed);
    wait_for("3 healthy replicas", DEADLINE, || {
        healthy_containers(&coordinator, "user-service").len() == 3
    });
    let containers = healthy_containers(&coordinator, "user-service");
    let before = allocation_ids(&coordinator);
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
    assert_eq!(allocation_ids(&coordinator), before, "same allocations");
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

/// Applies the seed's user-service and waits for its 3 replicas healthy on 3 nodes.
fn apply_seed_one_per_node(coordinator: &DroverProcess) {
    let seed = seed_on_node_addresses(&coordinator.coordinator_dir);
    coordinator.apply(&seed);
    wait_for("3 healthy replicas, one per node", DEADLINE, || {
        let on: std::collections::BTreeSet<String> = healthy_nodes(coordinator, "user-service")
            .into_iter()
            .collect();
        on.len() == 3
    });
}

/// Waits until connections through `proxy` have reached all 3 replicas.
fn wait_reaching_all_replicas(proxy: &str) {
    wait_for(
        &format!("{proxy} reaching all 3 replicas"),
        DEADLINE,
        || {
            let seen: std::collections::BTreeSet<String> = (0..9)
                .map(|_| http_get(proxy))
                .filter(|b| !b.is_empty())
                .collect();
            seen.len() == 3
        },
    );
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

#[test]
fn routing_goes_on_without_the_coordinator_and_avoids_a_dead_replica() {
    let ip = "127.0.0.15";
    let (_dir, mut coordinator, _agent, _node) = cluster("route", ip);
    let seed = seed_on_node_addresses(&coordinator.coordinator_dir);
    coordinator.apply(&seed);
    wait_for("3 healthy replicas", DEADLINE, || {
        healthy_containers(&coordinator, "user-service").len() == 3
    });
    let containers = healthy_containers(&coordinator, "user-service");
    let proxy = format!("{ip}:80");
    wait_for("the proxy reaching all 3 replicas", DEADLINE, || {
        let seen: std::collections::BTreeSet<String> = (0..9)
            .map(|_| http_get(&proxy))
            .filter(|b| !b.is_empty())
            .collect();
        seen.len() == 3
    });

    // The coordinator goes away: the proxy keeps routing on the last policy and on gossip.
    coordinator.kill();
    let mut failures = 0;
    let mut answers = 0;
    for i in 0..300 {
        if i == 50 {
            // One replica dies while the client keeps connecting.
            success(
                &std::process::Command::new("docker")
                    .args(["kill", &containers[0]])
                    .output()
                    .expect("docker kill"),
                "docker kill",
            );
        }
        let body = http_get(&proxy);
        if body.starts_with("user-service ") {
            answers += 1;
        } else {
            failures += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        failures, 0,
        "{failures} of 300 connections failed ({answers} answered)"
    );
}

/// Three nodes; one is SIGKILLed with its containers. Its replica is rescheduled on the
/// others, exactly 3 run, and a client connecting through a surviving node's proxy the whole
/// time sees no failure.
#[test]
fn a_dead_node_is_isolated_and_its_replicas_move() {
    let ips = ["127.0.0.21", "127.0.0.22", "127.0.0.23"];
    let (_dir, coordinator, mut agents, nodes) = nodes_cluster("n", &ips);
    apply_seed_one_per_node(&coordinator);
    let proxy = "127.0.0.21:80";
    wait_reaching_all_replicas(proxy);

    // Node 2 dies: agent SIGKILLed, its containers killed.
    let dead = nodes[2].clone();
    agents[2].kill();
    drover_tests::remove_node_containers(&dead);
    let mut failures = 0;
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        if !http_get(proxy).starts_with("user-service ") {
            failures += 1;
        }
        let allocs = allocations(&coordinator, "user-service");
        let healthy_elsewhere = allocs
            .iter()
            .filter(|a| a["state"] == "healthy" && a["node"] != dead.as_str())
            .count();
        if healthy_elsewhere == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replicas not rescheduled in time: {allocs:?}"
        );
    }
    let allocs = allocations(&coordinator, "user-service");
    assert_eq!(allocs.len(), 3, "exactly 3 should run: {allocs:?}");
    assert!(
        allocs.iter().all(|a| a["node"] != dead.as_str()),
        "{allocs:?}"
    );
    assert_eq!(failures, 0, "client connections failed during the failover");
    let nodes_view = coordinator.cli_json(&["nodes"]);
    let dead_view = nodes_view
        .as_array()
        .and_then(|n| n.iter().find(|x| x["id"] == dead.as_str()).cloned())
        .expect("dead node listed");
    assert_eq!(dead_view["health"], "down", "{dead_view}");
    let events = success(&coordinator.cli(&["events"]), "drover events");
    assert!(
        events.contains("node_down")
            && events.contains("allocation_lost")
            && events.contains("allocation_rescheduled"),
        "{events}"
    );
}

/// One node cut off by iptables: its replica is rescheduled on the others (the cut-off agent
/// keeps its copy running meanwhile); when the partition heals, the stale copy is stopped and
/// exactly 3 replicas run.
#[test]
fn a_partitioned_node_is_replaced_and_its_stale_copy_stopped_on_heal() {
    let ips = ["127.0.0.31", "127.0.0.32", "127.0.0.33"];
    let (_dir, coordinator, agents, nodes) = nodes_cluster("p", &ips);
    apply_seed_one_per_node(&coordinator);
    let cut = nodes[2].clone();
    let running = |node: &str| node_containers(node, false).len();

    let mut partition = drover_tests::Partition::isolate(ips[2]);
    wait_for(
        "the replica rescheduled away from the cut-off node",
        DEADLINE,
        || {
            let on = healthy_nodes(&coordinator, "user-service");
            on.len() == 3 && on.iter().all(|n| *n != cut)
        },
    );
    assert_eq!(running(&cut), 1, "the cut-off agent keeps its copy running");

    partition.heal();
    wait_for("the stale copy stopped after the heal", DEADLINE, || {
        running(&cut) == 0
    });
    let total: usize = nodes.iter().map(|n| running(n)).sum();
    assert_eq!(total, 3, "exactly 3 replicas run after the heal");
    assert_eq!(allocations(&coordinator, "user-service").len(), 3);
    // Back from down, the node is on probation (flap hysteresis) and the events say so.
    let events = success(&coordinator.cli(&["events"]), "drover events");
    assert!(events.contains("node_probation"), "{events}");
    drop(agents);
}

/// A `stop_after_disconnect` singleton whose node is cut off: the cut-off agent stops it,
/// the coordinator replaces it only after that, and at no moment do two copies run.
#[test]
fn a_stop_after_disconnect_singleton_never_runs_twice() {
    let ips = ["127.0.0.41", "127.0.0.42"];
    let (dir, coordinator, agents, nodes) = nodes_cluster("s", &ips);
    let manifest = dir.path().join("single.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {name: single}\nspec:\n  image: drover-test-busybox\n  replicas: 1\n  stopAfterDisconnect: 3s\n  stopGracePeriod: 1s\n",
    )
    .expect("write manifest");
    coordinator.apply(&manifest);
    wait_for("the singleton healthy", DEADLINE, || {
        healthy_nodes(&coordinator, "single").len() == 1
    });
    let first = healthy_nodes(&coordinator, "single")[0].clone();
    let first_index = nodes.iter().position(|n| *n == first).expect("known node");
    let running = || -> usize { nodes.iter().map(|n| node_containers(n, false).len()).sum() };

    let _partition = drover_tests::Partition::isolate(ips[first_index]);
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut max_running = 0;
    loop {
        max_running = max_running.max(running());
        let on = healthy_nodes(&coordinator, "single");
        if on.len() == 1 && on[0] != first {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "singleton not replaced in time"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    max_running = max_running.max(running());
    assert!(max_running <= 1, "two copies ran at once ({max_running})");
    assert_eq!(
        node_containers(&first, false).len(),
        0,
        "the cut-off copy stopped"
    );
    drop(agents);
}

/// The coordinator is SIGKILLed and started again: nothing acknowledged is lost, the agents
/// resync, and no workload restarts.
#[test]
fn coordinator_sigkill_and_restart_restarts_no_workload() {
    let ips = ["127.0.0.51", "127.0.0.52"];
    let (_dir, mut coordinator, _agents, _nodes) = nodes_cluster("c", &ips);
    let seed = seed_on_node_addresses(&coordinator.coordinator_dir);
    coordinator.apply(&seed);
    wait_for("3 healthy replicas", DEADLINE, || {
        healthy_containers(&coordinator, "user-service").len() == 3
    });
    let containers = healthy_containers(&coordinator, "user-service");
    let started = started_at(&containers);
    let before = allocation_ids(&coordinator);

    coordinator.kill_and_restart();
    wait_for("both agents back and 3 healthy replicas", DEADLINE, || {
        healthy_containers(&coordinator, "user-service") == containers
    });
    assert_eq!(
        allocation_ids(&coordinator),
        before,
        "same allocations after the restart"
    );
    assert_eq!(
        started_at(&containers),
        started,
        "no container was restarted"
    );
}

/// `drover drain` on one of three nodes: its replica moves, and at no sampled moment does the
/// service have fewer than its 3 healthy replicas (the coordinator's view of what should run)
/// or fewer than 3 running containers; a client looping through another node's proxy sees no
/// failure. The drained node ends cordoned, with nothing on it.
#[test]
fn drain_moves_replicas_without_dropping_below_the_minimum_healthy() {
    let ips = ["127.0.0.61", "127.0.0.62", "127.0.0.63"];
    let (_dir, coordinator, _agents, nodes) = nodes_cluster("d", &ips);
    apply_seed_one_per_node(&coordinator);
    let proxy = "127.0.0.61:80";
    wait_reaching_all_replicas(proxy);

    // A client loops through node 0's proxy for the whole drain.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0usize, 0usize);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if http_get(proxy).starts_with("user-service ") {
                    ok += 1;
                } else {
                    failed += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, failed)
        })
    };

    let drained = nodes[2].clone();
    let running = || -> usize { nodes.iter().map(|n| node_containers(n, false).len()).sum() };
    let mut fewest_healthy = usize::MAX;
    let mut fewest_running = usize::MAX;
    let deadline = std::time::Instant::now() + DEADLINE;
    // `drover drain` follows the drain to its end, saying what is left, while this thread
    // samples the service.
    std::thread::scope(|scope| {
        let follow = scope.spawn(|| coordinator.cli(&["drain", &drained]));
        loop {
            let healthy = healthy_nodes(&coordinator, "user-service");
            fewest_healthy = fewest_healthy.min(healthy.len());
            fewest_running = fewest_running.min(running());
            let allocs = allocations(&coordinator, "user-service");
            if healthy.len() == 3
                && allocs.len() == 3
                && allocs.iter().all(|a| a["node"] != drained.as_str())
                && node_containers(&drained, false).is_empty()
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "drain did not finish in time: {allocs:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = success(&follow.join().expect("drover drain"), "drover drain");
        assert!(
            out.contains(&format!("node/{drained} draining: user-service ×1")),
            "{out}"
        );
        assert!(
            out.trim_end().ends_with(&format!(
                "node/{drained} drained: cordoned, no replica left on it"
            )),
            "{out}"
        );
    });
    // The client keeps going a moment after the old replica is gone.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = client.join().expect("client thread");

    assert!(
        fewest_healthy >= 3,
        "healthy replicas dropped to {fewest_healthy}"
    );
    assert!(
        fewest_running >= 3,
        "running containers dropped to {fewest_running}"
    );
    assert_eq!(
        failed, 0,
        "{failed} client connections failed ({ok} answered)"
    );
    assert!(ok > 0, "the client made no connection");
    wait_for(
        "the drained node cordoned, drain complete",
        DEADLINE,
        || {
            coordinator
                .try_cli_json(&["nodes"])
                .and_then(|n| n.as_array().cloned())
                .and_then(|n| n.into_iter().find(|x| x["id"] == drained.as_str()))
                .is_some_and(|n| n["cordoned"] == true && n["draining"] == false)
        },
    );
    let events = success(&coordinator.cli(&["events"]), "drover events");
    assert!(events.contains("node_drained"), "{events}");
}

/// A canary across three real agents: revision 2 with 90/10 weights gets 10% of the
/// connections through every node's proxy; `drover weights` moves everything to revision 2
/// on every node, and revision 1's replicas stop.
#[test]
fn weights_split_and_move_traffic_on_every_node() {
    let ips = ["127.0.0.81", "127.0.0.82", "127.0.0.83"];
    let (dir, coordinator, _agents, _nodes) = nodes_cluster("w", &ips);
    let manifest = |image: &str, weights: &str| web_manifest(image, 3, weights);
    let v1 = dir.path().join("v1.yaml");
    std::fs::write(&v1, manifest("user-service", "")).expect("write v1");
    coordinator.apply(&v1);
    wait_for("revision 1 healthy", DEADLINE, || {
        healthy_nodes(&coordinator, "web").len() == 3
    });
    let v2 = dir.path().join("v2.yaml");
    std::fs::write(
        &v2,
        manifest(
            "order-service",
            "  traffic: {strategy: round_robin, weights: {1: 90, 2: 10}}\n",
        ),
    )
    .expect("write v2");
    coordinator.apply(&v2);
    wait_for("both revisions healthy", DEADLINE, || {
        healthy_nodes(&coordinator, "web").len() == 6
    });
    let split = |ip: &str| revision_split(&format!("{ip}:80"), 100);
    for ip in ips {
        // After the canary replicas' warm-up, each proxy's split is exact.
        wait_for(&format!("a 90/10 split through {ip}"), DEADLINE, || {
            split(ip) == (90, 10)
        });
    }

    success(
        &coordinator.cli(&["weights", "web", "1=0", "2=100"]),
        "drover weights",
    );
    for ip in ips {
        wait_for(
            &format!("everything on revision 2 through {ip}"),
            DEADLINE,
            || split(ip) == (0, 100),
        );
    }
    wait_for("revision 1 stopped", DEADLINE, || {
        let allocs = allocations(&coordinator, "web");
        allocs.len() == 3 && allocs.iter().all(|a| a["revision"] == 2)
    });
}
