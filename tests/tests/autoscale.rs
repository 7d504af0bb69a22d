//! Autoscaling through the real binaries: a CPU-burning Deployment behind its service, a
//! HorizontalPodAutoscaler over it, a load generator; agents sample the replicas' cgroups,
//! the coordinator decides with the HPA algorithm (decisions every 3 s here, not 15 s). And
//! a service scaled on the connections its proxies hold open to each replica.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use drover_tests::{
    DroverProcess, build_images, healthy_nodes, success, try_http_get_path, unique_node, wait_for,
};

/// Two replicas of a CPU burner (the seed image's /cgi-bin/burn) requesting 100m each, a
/// LoadBalancer service on 8090, and an HPA keeping them at 50 % of their request, 2 to 5.
const MANIFEST: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: burn}
spec:
  replicas: 2
  selector: {matchLabels: {app: burn}}
  template:
    metadata: {labels: {app: burn}}
    spec:
      containers:
        - name: burn
          image: user-service:latest
          ports: [{name: http, containerPort: 8080}]
          resources: {requests: {cpu: 100m}}
---
apiVersion: v1
kind: Service
metadata: {name: burn}
spec:
  type: LoadBalancer
  selector: {app: burn}
  ports: [{port: 8090, targetPort: http}]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: burn}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: burn}
  minReplicas: 2
  maxReplicas: 5
  metrics:
    - type: Resource
      resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 10}
";

/// The replica count of `burn` the coordinator wants.
fn desired(coordinator: &DroverProcess) -> u64 {
    desired_of(coordinator, "burn")
}

/// The replica count of `name` the coordinator wants.
fn desired_of(coordinator: &DroverProcess, name: &str) -> u64 {
    let out = success(
        &coordinator.cli(&["status", name, "-o", "json"]),
        &format!("drover status {name}"),
    );
    let status: serde_json::Value = serde_json::from_str(&out).expect("status json");
    status["desired"]
        .as_u64()
        .unwrap_or_else(|| panic!("no replica count in {out}"))
}

/// The autoscaler's events, oldest first.
fn scalings(coordinator: &DroverProcess) -> Vec<String> {
    success(&coordinator.cli(&["events"]), "drover events")
        .lines()
        .filter(|l| l.contains("scaled burn"))
        .map(str::to_string)
        .collect()
}

/// `(from, to, utilization, target)` of an event `scaled burn A → B: cpu X% of target Y%…`.
fn parse_scaling(line: &str) -> (u64, u64, u64, u64) {
    let rest = &line[line.find("scaled burn ").expect("event") + "scaled burn ".len()..];
    let numbers: Vec<u64> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(4)
        .map(|s| s.parse().expect("number"))
        .collect();
    (numbers[0], numbers[1], numbers[2], numbers[3])
}

/// A client requesting `path` from `address` every `pause` until `stop`; returns the
/// answers containing `expect` and the failures, described.
fn client(
    address: String,
    path: &'static str,
    pause: Duration,
    expect: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut ok, mut failures) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            match try_http_get_path(&address, path) {
                Ok(body) if body.contains(expect) => ok += 1,
                other => failures.push(format!("{other:?}")),
            }
            std::thread::sleep(pause);
        }
        (ok, failures)
    })
}

/// A coordinator deciding every `interval` and one agent per address of `ips` (nodes named
/// `prefix0`, `prefix1`, …, each with `agent_config`), all under `dir`.
fn cluster(
    dir: &std::path::Path,
    interval: &str,
    ips: &[&str],
    prefix: &str,
    agent_config: &str,
) -> (DroverProcess, Vec<DroverProcess>) {
    let coordinator_dir = dir.join("coordinator");
    std::fs::create_dir_all(&coordinator_dir).expect("dir");
    let coordinator = DroverProcess::coordinator_with(
        &coordinator_dir,
        &format!("autoscale_interval = \"{interval}\"\n"),
    );
    let agents = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let agent_dir = dir.join(format!("agent{i}"));
            std::fs::create_dir_all(&agent_dir).expect("dir");
            DroverProcess::agent_with(
                &agent_dir,
                ip,
                &unique_node(&format!("{prefix}{i}")),
                &coordinator,
                agent_config,
            )
        })
        .collect();
    (coordinator, agents)
}

#[test]
fn a_cpu_bound_service_scales_out_under_load_and_back_without_a_failed_connection() {
    build_images();
    let dir = tempfile::tempdir().expect("tempdir");
    let ips = ["127.0.0.185", "127.0.0.190"];
    let (coordinator, agents) = cluster(
        dir.path(),
        "3s",
        &ips,
        "hpa",
        "cluster_ips = false\nusage_interval = \"1s\"\n",
    );
    let manifest = dir.path().join("burn.yaml");
    std::fs::write(&manifest, MANIFEST).expect("write manifest");
    coordinator.apply(&manifest);
    wait_for("two burners healthy", Duration::from_secs(60), || {
        healthy_nodes(&coordinator, "burn").len() == 2
    });
    let status = success(&coordinator.cli(&["status", "burn"]), "drover status burn");
    assert!(
        status.contains(
            "Autoscale: 2..5 replicas on cpu 50% of request (HorizontalPodAutoscaler burn)"
        ),
        "{status}"
    );
    let front = format!("{}:8090", ips[0]);
    wait_for("burn through the service", Duration::from_secs(30), || {
        try_http_get_path(&front, "/").is_ok_and(|b| b.contains("user-service"))
    });
    // A replica's usage shows in `drover top` within a few samples.
    wait_for("usage in drover top", Duration::from_secs(20), || {
        let top = success(
            &coordinator.cli(&["top", "burn", "-o", "json"]),
            "drover top",
        );
        let top: serde_json::Value = serde_json::from_str(&top).expect("top json");
        top["replicas"]
            .as_array()
            .is_some_and(|r| r.len() == 2 && r.iter().all(|r| r["cpu_millis"].is_u64()))
    });

    // Load: every burner pinned at its 100m limit, i.e. 100 % of its request, twice the
    // target: ceil(2 × 100/50) = 4, within the first scale-up policy (max(+4, ×2)).
    let loaded = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..3)
        .map(|_| {
            client(
                front.clone(),
                "/cgi-bin/burn?5000",
                Duration::from_millis(5),
                "burned",
                loaded.clone(),
            )
        })
        .collect();
    let started = Instant::now();
    wait_for(
        "a scale-up decision",
        Duration::from_secs(3 * 3 + 10),
        || !scalings(&coordinator).is_empty(),
    );
    let first = scalings(&coordinator)[0].clone();
    let (from, to, utilization, target) = parse_scaling(&first);
    assert_eq!((from, target), (2, 50), "{first}");
    // Bounded by maxReplicas 5 (below the default scale-up policy's max(2 + 4, 2 × 2)).
    let formula = (2 * utilization).div_ceil(target).min(5);
    assert_eq!(to, formula, "the HPA formula for {utilization}%: {first}");
    assert!(to > 2, "{first}");
    println!("first decision after {:?}: {first}", started.elapsed());
    wait_for("the new replicas healthy", Duration::from_secs(60), || {
        healthy_nodes(&coordinator, "burn").len() as u64 >= to
    });
    loaded.store(true, Ordering::Relaxed);
    for client in load {
        let (ok, _) = client.join().expect("load client");
        assert!(ok > 0, "the load got answers");
    }

    // Light traffic only (the index page, no burn): back to 2 after the 10 s window, and
    // not one connection of the light client fails while replicas go.
    let stop = Arc::new(AtomicBool::new(false));
    let light = client(
        front.clone(),
        "/",
        Duration::from_millis(50),
        "user-service",
        stop.clone(),
    );
    wait_for("scaled back to 2", Duration::from_secs(90), || {
        desired(&coordinator) == 2
    });
    wait_for("two replicas left", Duration::from_secs(60), || {
        healthy_nodes(&coordinator, "burn").len() == 2
    });
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = light.join().expect("light client");
    assert!(ok > 50, "the light client ran: {ok} answers");
    assert!(
        failures.is_empty(),
        "failed connections during the scale-down: {failures:?}"
    );
    let down = scalings(&coordinator);
    assert!(
        down.iter().any(|l| l.contains("→ 2: cpu")),
        "a scale-down event: {down:?}"
    );

    // An operator's scale of an autoscaled workload is refused and changes nothing.
    let out = coordinator.cli(&["scale", "burn", "7"]);
    assert!(!out.status.success());
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("autoscaled between 2 and 5 replicas (by HorizontalPodAutoscaler burn)"),
        "{message}"
    );
    assert_eq!(desired(&coordinator), 2);

    // Its HPA deleted by name, and one made as `kubectl autoscale` makes one.
    let deleted = success(
        &coordinator.cli(&["delete", "burn", "--only", "autoscaler"]),
        "drover delete burn --only autoscaler",
    );
    assert!(
        deleted.contains("HorizontalPodAutoscaler/burn deleted"),
        "{deleted}"
    );
    let status = success(&coordinator.cli(&["status", "burn"]), "drover status burn");
    assert!(!status.contains("Autoscale:"), "{status}");
    let made = success(
        &coordinator.cli(&[
            "autoscale",
            "burn",
            "--min",
            "3",
            "--max",
            "4",
            "--cpu-percent",
            "70",
        ]),
        "drover autoscale burn",
    );
    assert!(made.contains("autoscaler/burn created"), "{made}");
    let status = success(&coordinator.cli(&["status", "burn"]), "drover status burn");
    assert!(
        status.contains(
            "Autoscale: 3..4 replicas on cpu 70% of request (HorizontalPodAutoscaler burn)"
        ),
        "{status}"
    );
    // Within its bounds at once.
    assert_eq!(desired(&coordinator), 3);
    drop(agents);
}

/// One replica of the seed's web server behind a LoadBalancer service on 8091, autoscaled
/// 1 to 4 on the connections the proxies hold open to each replica (2 per replica).
const CONNECTIONS_MANIFEST: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: conns}
spec:
  replicas: 1
  selector: {matchLabels: {app: conns}}
  template:
    metadata: {labels: {app: conns}}
    spec:
      containers:
        - name: web
          image: user-service:latest
          ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: conns}
spec:
  type: LoadBalancer
  selector: {app: conns}
  ports: [{port: 8091, targetPort: http}]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: conns}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: conns}
  minReplicas: 1
  maxReplicas: 4
  metrics:
    - type: Pods
      pods:
        metric: {name: active_connections}
        target: {type: AverageValue, averageValue: 2}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 5}
";

/// The replicas of `conns` as `drover top -o json` lists them.
fn top_replicas(coordinator: &DroverProcess) -> Vec<serde_json::Value> {
    let top = success(
        &coordinator.cli(&["top", "conns", "-o", "json"]),
        "drover top conns",
    );
    let top: serde_json::Value = serde_json::from_str(&top).expect("top json");
    top["replicas"].as_array().cloned().unwrap_or_default()
}

#[test]
fn open_connections_counted_by_the_proxies_scale_a_service() {
    build_images();
    let dir = tempfile::tempdir().expect("tempdir");
    let ips = ["127.0.0.201", "127.0.0.202"];
    let (coordinator, agents) = cluster(dir.path(), "2s", &ips, "hpc", "cluster_ips = false\n");
    let manifest = dir.path().join("conns.yaml");
    std::fs::write(&manifest, CONNECTIONS_MANIFEST).expect("write manifest");
    coordinator.apply(&manifest);
    wait_for("one replica healthy", Duration::from_secs(60), || {
        healthy_nodes(&coordinator, "conns").len() == 1
    });
    let front = format!("{}:8091", ips[0]);
    wait_for("the service answers", Duration::from_secs(30), || {
        try_http_get_path(&front, "/").is_ok_and(|b| b.contains("user-service"))
    });

    // Six clients connect and send nothing yet: the proxy holds six connections to the one
    // replica (busybox httpd waits 60 s for a request), 3 per replica of the target 2 ...
    let idle: Vec<std::net::TcpStream> = (0..6)
        .map(|_| std::net::TcpStream::connect(&front).expect("connect"))
        .collect();
    wait_for(
        "six open connections in drover top",
        Duration::from_secs(20),
        || {
            top_replicas(&coordinator)
                .iter()
                .any(|r| r["active_connections"] == 6)
        },
    );
    // ... so ceil(1 × 6/2) = 3 replicas.
    wait_for("a scale-up to 3", Duration::from_secs(20), || {
        desired_of(&coordinator, "conns") == 3
    });
    let events = success(&coordinator.cli(&["events"]), "drover events");
    assert!(
        events.contains("scaled conns 1 → 3: active_connections 6 per replica, target 2"),
        "{events}"
    );
    wait_for("three replicas healthy", Duration::from_secs(60), || {
        healthy_nodes(&coordinator, "conns").len() == 3
    });
    // The six stay on the first replica: 2 per replica on average, on target.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(desired_of(&coordinator, "conns"), 3);

    // The clients finish their requests: nothing open, back to 1 after the 5 s window.
    for mut stream in idle {
        use std::io::{Read, Write};
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
            .expect("request");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("answer");
        assert!(answer.contains("user-service"), "{answer}");
    }
    wait_for("scaled back to 1", Duration::from_secs(60), || {
        desired_of(&coordinator, "conns") == 1
    });
    drop(agents);
}
