//! Services apart from workloads, through the real binaries: one Kubernetes Service over two
//! Deployments split by `drover weights`, and a second Service over one of them, both
//! routed by every node's proxy; ClusterIP services on addresses of their own.

use std::time::Duration;

use drover_tests::{
    DroverProcess, healthy_nodes, http_get, http_get_from_container, nodes_cluster,
    nodes_cluster_with_cluster_ips, revision_split, success, try_http_get, wait_for,
};

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

/// Applies Deployments hello-v1 (user-service) and hello-v2 (order-service) with
/// `services`, and waits until both are healthy.
fn apply_two_deployments(coordinator: &DroverProcess, dir: &std::path::Path, services: &str) {
    let manifest = dir.join("hello.yaml");
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
        healthy_nodes(coordinator, "hello-v1").len() == 2
            && healthy_nodes(coordinator, "hello-v2").len() == 2
    });
}

#[test]
fn one_service_over_two_deployments_splits_by_weights_and_two_services_share_one() {
    let ips = ["127.0.0.191", "127.0.0.192"];
    let (dir, coordinator, _agents, _nodes) = nodes_cluster("svc", &ips);
    let services = "apiVersion: v1\nkind: Service\nmetadata: {name: hello}\nspec:\n  type: LoadBalancer\n  \
         selector: {app: hello}\n  ports: [{port: 80, targetPort: http}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: hello-v2}\nspec:\n  type: NodePort\n  \
         selector: {app: hello, version: v2}\n  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]\n";
    apply_two_deployments(&coordinator, dir.path(), services);

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
    // NodePort and LoadBalancer services are reached on every node's address.
    let services = coordinator.cli_json(&["get", "services"]);
    for service in services.as_array().expect("services") {
        assert_eq!(service["external"], serde_json::json!(ips), "{service}");
    }
    let table = success(&coordinator.cli(&["get", "services"]), "get services");
    assert!(table.contains("127.0.0.191,127.0.0.192"), "{table}");
}

/// The cluster address of service `name` as `drover get services` shows it.
fn cluster_ip(coordinator: &DroverProcess, name: &str) -> String {
    let services = coordinator.cli_json(&["get", "services"]);
    services
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == name))
        .and_then(|s| s["cluster_ip"].as_str())
        .unwrap_or_else(|| panic!("service {name} in {services}"))
        .to_string()
}

/// Addresses on `lo` that Drover put there.
fn drover_addresses() -> String {
    let out = std::process::Command::new("ip")
        .args([
            "-4",
            "-o",
            "addr",
            "show",
            "dev",
            "lo",
            "label",
            "lo:drover",
        ])
        .output()
        .expect("ip addr show");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// ClusterIP services get addresses of their own from the coordinator's network, reached
/// from the host and from containers but not on node addresses, so that two of them share
/// port 80; a coordinator restart keeps the addresses, a deleted service's goes away.
#[test]
fn cluster_ip_services_are_reached_on_their_own_addresses() {
    let ips = ["127.0.0.193", "127.0.0.194"];
    let (dir, mut coordinator, mut agents, _nodes) = nodes_cluster_with_cluster_ips("vip", &ips);
    let network = coordinator.service_network.clone();
    let prefix = network.trim_end_matches(".0/24");
    let fixed = format!("{prefix}.50");
    let services = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: front}}\nspec:\n  \
         selector: {{app: hello, version: v1}}\n  ports: [{{port: 80, targetPort: http}}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: back}}\nspec:\n  clusterIP: {fixed}\n  \
         selector: {{app: hello, version: v2}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
    );
    apply_two_deployments(&coordinator, dir.path(), &services);

    let front = format!("{}:80", cluster_ip(&coordinator, "front"));
    let back = format!("{}:80", cluster_ip(&coordinator, "back"));
    assert_eq!(front, format!("{prefix}.1:80"), "the lowest free address");
    assert_eq!(
        back,
        format!("{fixed}:80"),
        "the address the manifest asks for"
    );
    wait_for("both services on their addresses", DEADLINE, || {
        http_get(&front).starts_with("user-service") && http_get(&back).starts_with("order-service")
    });
    let inside = http_get_from_container(&front);
    assert!(
        inside.contains("user-service"),
        "from a container: {inside:?}"
    );
    let inside = http_get_from_container(&back);
    assert!(
        inside.contains("order-service"),
        "from a container: {inside:?}"
    );
    for ip in ips {
        let on_node = try_http_get(&format!("{ip}:80"));
        assert!(
            on_node.is_err(),
            "a ClusterIP service on {ip}:80: {on_node:?}"
        );
    }

    // The serving agent's restart keeps the addresses on lo, and it listens again.
    agents[0].kill_and_restart();
    assert!(drover_addresses().contains(&format!("{prefix}.1/32")));
    wait_for(
        "front through its address after an agent restart",
        DEADLINE,
        || http_get(&front).starts_with("user-service"),
    );

    coordinator.kill_and_restart();
    assert_eq!(format!("{}:80", cluster_ip(&coordinator, "front")), front);
    assert_eq!(format!("{}:80", cluster_ip(&coordinator, "back")), back);
    assert!(http_get(&front).starts_with("user-service"));

    success(
        &coordinator.cli(&["delete", "back", "--only", "service"]),
        "delete back",
    );
    // (Where the address leads once it is gone depends on the host's routes: no test of
    // refusal, only that the service no longer answers there.)
    wait_for("back's address gone", DEADLINE, || {
        !drover_addresses().contains(&format!("{fixed}/32"))
            && !http_get(&back).starts_with("order-service")
    });
    assert!(drover_addresses().contains(&format!("{prefix}.1/32")));
    assert!(http_get(&front).starts_with("user-service"));
}

/// An echo server (busybox nc, one process per connection) labelled app=echo, two replicas,
/// behind ClusterIP service `echo` on port 7000.
const ECHO: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: echo}\nspec:\n  \
    replicas: 2\n  selector: {matchLabels: {app: echo}}\n  template:\n    \
    metadata: {labels: {app: echo}}\n    spec:\n      containers:\n        \
    - name: echo\n          image: drover-test-busybox:latest\n          \
    command: [nc, -ll, -p, '8080', -e, cat]\n          ports: [{containerPort: 8080}]\n---\n\
    apiVersion: v1\nkind: Service\nmetadata: {name: echo}\nspec:\n  selector: {app: echo}\n  \
    ports: [{port: 7000, targetPort: 8080}]\n";

/// One line through `stream` and back.
fn echo_line(stream: &mut std::net::TcpStream, line: &str) -> std::io::Result<()> {
    use std::io::{BufRead, Write};
    stream.write_all(format!("{line}\n").as_bytes())?;
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut got = String::new();
    reader.read_line(&mut got)?;
    if got.trim_end() == line {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("sent {line:?}, got {got:?}")))
    }
}

/// A graceful restart of the agent that serves the service addresses (SIGTERM, then a new
/// process, as `systemctl restart` does) keeps the connections open through them: they go
/// on answering while the agent is down and after, and a connection opened while no agent
/// runs waits in the listener's backlog and is served by the next one.
#[test]
fn an_agent_restart_keeps_connections_through_a_service_address() {
    let ips = ["127.0.0.186", "127.0.0.187"];
    let (dir, coordinator, mut agents, _nodes) = nodes_cluster_with_cluster_ips("keep", &ips);
    let manifest = dir.path().join("echo.yaml");
    std::fs::write(&manifest, ECHO).expect("write manifest");
    coordinator.apply(&manifest);
    wait_for("echo healthy", DEADLINE, || {
        healthy_nodes(&coordinator, "echo").len() == 2
    });
    let address = format!("{}:7000", cluster_ip(&coordinator, "echo"));
    let connect = || {
        let stream = std::net::TcpStream::connect(&address)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok::<_, std::io::Error>(stream)
    };
    wait_for("echo through its address", DEADLINE, || {
        connect()
            .and_then(|mut s| echo_line(&mut s, "ready"))
            .is_ok()
    });

    // Clients that talk all the way through the restart.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|i| {
            let mut stream = connect().expect("connect");
            echo_line(&mut stream, &format!("{i} before")).expect("echo before the restart");
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut lines = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    echo_line(&mut stream, &format!("{i} line {lines}"))
                        .unwrap_or_else(|e| panic!("client {i}, line {lines}: {e}"));
                    lines += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                (stream, lines)
            })
        })
        .collect();

    agents[0].stop();
    // No agent runs: this one waits in the backlog of the listener the keeper holds.
    let mut queued = connect().expect("connect while no agent runs");
    std::thread::scope(|scope| {
        let agent = &mut agents[0];
        scope.spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            agent.start();
        });
        echo_line(&mut queued, "queued").expect("the queued connection is served");
    });

    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for (i, client) in clients.into_iter().enumerate() {
        let (mut stream, lines) = client.join().expect("a client failed during the restart");
        assert!(lines > 20, "client {i} sent only {lines} lines");
        echo_line(&mut stream, &format!("{i} after")).expect("echo after the restart");
    }
    let log = agents[0].log();
    assert!(
        log.contains("took over the previous agent's proxy sockets"),
        "the new agent took the sockets over: {log}"
    );
}
