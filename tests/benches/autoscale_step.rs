//! Time from a load step to new replicas taking traffic, with Drover's default intervals
//! (agents sample usage every 5 s, autoscalers decide every 15 s): a coordinator and two
//! agents as processes against the real Docker engine, one replica of the seed's CPU
//! burner (`/cgi-bin/burn`, 100m requested) behind a LoadBalancer service, and a
//! HorizontalPodAutoscaler keeping it at 50 % of the request, 1 to 4 replicas. Each trial
//! starts four clients looping on the service at once and records when the coordinator
//! decided (its `autoscaled` event), when the new replicas were healthy, and when the first
//! answer came from a replica other than the first one.
//!
//! Run with `cargo build --release --workspace --bins && cargo bench -p drover-tests --bench
//! autoscale_step [-- TRIALS]` (3 trials by default).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_tests::{
    DroverProcess, healthy_nodes, nodes_cluster, require_binaries, try_http_get_path, wait_for,
};

const IPS: [&str; 2] = ["127.0.0.211", "127.0.0.212"];
const CLIENTS: usize = 4;
const LIMIT: Duration = Duration::from_secs(180);
/// Drover's defaults, which this benchmark runs with.
const USAGE_INTERVAL: Duration = Duration::from_secs(5);
const AUTOSCALE_INTERVAL: Duration = Duration::from_secs(15);

const MANIFEST: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: burn}
spec:
  replicas: 1
  selector: {matchLabels: {app: burn}}
  template:
    metadata: {labels: {app: burn}}
    spec:
      containers:
        - name: burn
          image: user-service:latest
          ports: [{name: http, containerPort: 8080}]
          resources: {requests: {cpu: 100m}}
          readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: burn}
spec:
  type: LoadBalancer
  selector: {app: burn}
  ports: [{port: 8095, targetPort: http}]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: burn}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: burn}
  minReplicas: 1
  maxReplicas: 4
  metrics:
    - type: Resource
      resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
";

/// What one trial saw, from the load step.
struct Step {
    decided: Duration,
    healthy: Duration,
    traffic: Duration,
    replicas: usize,
    answered: usize,
    failed: usize,
}

/// The sequence number of the latest event, to read only later ones.
fn last_event(coordinator: &DroverProcess) -> u64 {
    coordinator
        .try_cli_json(&["events"])
        .and_then(|e| e.as_array().cloned())
        .and_then(|e| e.last().and_then(|e| e["seq"].as_u64()))
        .unwrap_or(0)
}

/// Whether an `autoscaled` event came after `since`.
fn autoscaled_after(coordinator: &DroverProcess, since: u64) -> bool {
    let since = (since + 1).to_string();
    coordinator
        .try_cli_json(&["events", "--since", &since])
        .and_then(|e| e.as_array().cloned())
        .is_some_and(|e| e.iter().any(|e| e["kind"] == "autoscaled"))
}

fn trial(coordinator: &DroverProcess, dir: &std::path::Path, n: usize) -> Step {
    let path = dir.join("burn.yaml");
    std::fs::write(&path, MANIFEST).expect("write manifest");
    coordinator.apply(&path);
    let front = format!("{}:8095", IPS[0]);
    wait_for("one healthy burner", LIMIT, || {
        healthy_nodes(coordinator, "burn").len() == 1
    });
    let mut first = BTreeSet::new();
    wait_for("the service answers", LIMIT, || {
        match try_http_get_path(&front, "/cgi-bin/burn?10") {
            Ok(body) => first.insert(host_of(&body)),
            Err(_) => false,
        }
    });
    // Let the autoscaler see the idle replica for a few periods first.
    std::thread::sleep(AUTOSCALE_INTERVAL * 2);
    let since = last_event(coordinator);

    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<(Duration, String)>>> = Arc::default();
    let failed = Arc::new(Mutex::new(0usize));
    let step = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, answers, failed, front) =
                (stop.clone(), answers.clone(), failed.clone(), front.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match try_http_get_path(&front, "/cgi-bin/burn?20000") {
                        Ok(body) => answers
                            .lock()
                            .expect("answers")
                            .push((step.elapsed(), host_of(&body))),
                        Err(_) => *failed.lock().expect("failed") += 1,
                    }
                }
            })
        })
        .collect();

    let (mut decided, mut healthy, mut traffic) = (None, None, None);
    while step.elapsed() < LIMIT && traffic.is_none() {
        if decided.is_none() && autoscaled_after(coordinator, since) {
            decided = Some(step.elapsed());
        }
        if healthy.is_none() && healthy_nodes(coordinator, "burn").len() > 1 {
            healthy = Some(step.elapsed());
        }
        traffic = answers
            .lock()
            .expect("answers")
            .iter()
            .find(|(_, host)| !first.contains(host))
            .map(|(at, _)| *at);
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.join();
    }
    let answers = answers.lock().expect("answers");
    let replicas = healthy_nodes(coordinator, "burn").len();
    let missing = |what: &str| panic!("trial {n}: no {what} within {} s", LIMIT.as_secs());
    let result = Step {
        decided: decided.unwrap_or_else(|| missing("autoscaled event")),
        healthy: healthy.unwrap_or_else(|| missing("second healthy replica")),
        traffic: traffic.unwrap_or_else(|| missing("answer from a new replica")),
        replicas,
        answered: answers.len(),
        failed: *failed.lock().expect("failed"),
    };
    let out = coordinator.cli(&["delete", "burn"]);
    assert!(out.status.success(), "drover delete burn failed");
    wait_for("burn gone", LIMIT, || {
        coordinator
            .try_cli_json(&["status", "burn"])
            .is_none_or(|s| s["allocations"].as_array().is_none_or(Vec::is_empty))
    });
    result
}

/// The replica's hostname in a burner's answer (`user-service <host> burned N`).
fn host_of(body: &str) -> String {
    body.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn main() {
    require_binaries("autoscale_step");
    let trials: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    println!(
        "autoscale step benchmark: {CLIENTS} clients start at once on 1 replica (100m, HPA 50%, 1..4), usage every {} s, decisions every {} s, {trials} trials",
        USAGE_INTERVAL.as_secs(),
        AUTOSCALE_INTERVAL.as_secs()
    );
    let (dir, coordinator, _agents, _nodes) = nodes_cluster("bench-hpa", &IPS);
    let mut steps = Vec::new();
    for n in 1..=trials {
        let s = trial(&coordinator, dir.path(), n);
        println!(
            "trial {n}: decided after {:.1} s, new replicas healthy after {:.1} s, first answer from one after {:.1} s; {} replicas; {} answered, {} failed",
            s.decided.as_secs_f64(),
            s.healthy.as_secs_f64(),
            s.traffic.as_secs_f64(),
            s.replicas,
            s.answered,
            s.failed
        );
        steps.push(s);
    }
    let decided = median(steps.iter().map(|s| s.decided).collect());
    let traffic = median(steps.iter().map(|s| s.traffic).collect());
    let periods = USAGE_INTERVAL + AUTOSCALE_INTERVAL;
    println!(
        "load step to new replicas taking traffic: median {:.1} s (decision at {:.1} s)",
        traffic.as_secs_f64(),
        decided.as_secs_f64()
    );
    println!(
        "vs one sampling plus one decision period ({} s), the longest a step can wait before a decision: {:.2}x",
        periods.as_secs(),
        traffic.as_secs_f64() / periods.as_secs_f64()
    );
    let failed: usize = steps.iter().map(|s| s.failed).sum();
    let answered: usize = steps.iter().map(|s| s.answered).sum();
    println!("clients: {answered} answered, {failed} failed");
}
