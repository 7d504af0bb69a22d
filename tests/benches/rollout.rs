//! Rollout time on a real cluster: a coordinator and three agents as processes (each on its
//! own loopback address, against the real Docker engine), a service of 30 replicas with a
//! readiness check, Drover's defaults (maxSurge 25%, maxUnavailable 25%). Each trial
//! measures, from `drover apply` to the rollout's end as the coordinator reports it:
//!
//! - a rolling update to a good revision (the image alternates between the seed's two), and
//! - an automatic rollback: a revision whose image does not exist, from the apply until the
//!   service is back on the stable revision with all 30 replicas available;
//!
//! while a client loops through one node's proxy and counts failed connections.
//!
//! Run with `cargo build --release --workspace --bins && cargo bench -p drover-tests --bench
//! rollout [-- TRIALS]` (3 trials by default). Goal (issue 13): 0 client errors.

use std::time::{Duration, Instant};

use drover_tests::{DroverProcess, LoopingClient, nodes_cluster, try_http_get, wait_for};

const IPS: [&str; 3] = ["127.0.0.91", "127.0.0.92", "127.0.0.93"];
const REPLICAS: u32 = 30;
const LIMIT: Duration = Duration::from_secs(300);

fn manifest(image: &str) -> String {
    format!(
        "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  image: {image}\n  replicas: {REPLICAS}\n  ports: [{{containerPort: 8080, servicePort: 80}}]\n  health: {{http: {{port: 8080, path: /healthz}}, interval: 500ms}}\n"
    )
}

/// The rollout as `drover rollout status -o json` shows it.
fn rollout(coordinator: &DroverProcess) -> Option<serde_json::Value> {
    coordinator.try_cli_json(&["rollout", "status", "web"])
}

/// Applies `image` and waits until the service's rollout is complete at `revision` with
/// every replica available; returns the time from the apply.
fn roll(
    coordinator: &DroverProcess,
    dir: &std::path::Path,
    image: &str,
    revision: u64,
) -> Duration {
    let path = dir.join(format!("{image}.yaml").replace(':', "-"));
    std::fs::write(&path, manifest(image)).expect("write manifest");
    let started = Instant::now();
    coordinator.apply(&path);
    wait_for(
        &format!("revision {revision} complete after applying {image}"),
        LIMIT,
        || complete_at(coordinator, revision),
    );
    started.elapsed()
}

/// Whether the service's rollout is complete at `revision`, every replica available and
/// nothing else placed.
fn complete_at(coordinator: &DroverProcess, revision: u64) -> bool {
    rollout(coordinator).is_some_and(|r| {
        r["revision"] == revision
            && r["phase"] == "complete"
            && r["available"] == REPLICAS
            && r["total"] == REPLICAS
    })
}

fn main() {
    let trials: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    println!(
        "rollout benchmark: {REPLICAS} replicas on {} nodes, maxSurge 25%, maxUnavailable 25%, {trials} trials",
        IPS.len()
    );
    let (dir, coordinator, _agents, _nodes) = nodes_cluster("bench-rollout", &IPS);
    let mut revision = 1;
    let first = roll(&coordinator, dir.path(), "user-service", revision);
    println!(
        "first placement of {REPLICAS} replicas: {:.1} s",
        first.as_secs_f64()
    );
    let proxy = format!("{}:80", IPS[0]);
    wait_for("the proxy serving", LIMIT, || {
        (0..20).all(|_| try_http_get(&proxy).is_ok())
    });

    let mut updates = Vec::new();
    let mut rollbacks = Vec::new();
    let (mut answered, mut failed) = (0, 0);
    let mut kinds = std::collections::BTreeMap::new();
    let images = ["order-service", "user-service"];
    for trial in 1..=trials {
        // A good revision, then one whose image is missing (back to the good one).
        revision += 1;
        let stable = revision;
        let runs = [
            (images[trial % 2].to_string(), stable, "rolling update to"),
            (
                format!("user-service:missing-{}", revision + 1),
                stable,
                "missing image rolled back to",
            ),
        ];
        for (i, (image, expected, what)) in runs.into_iter().enumerate() {
            let client = LoopingClient::start(proxy.clone(), |body| !body.is_empty());
            let took = roll(&coordinator, dir.path(), &image, expected);
            let (ok, bad, why) = client.finish();
            println!(
                "trial {trial}: {what} revision {expected} in {:.1} s, {bad} of {} connections failed",
                took.as_secs_f64(),
                ok + bad
            );
            if i == 0 { &mut updates } else { &mut rollbacks }.push((took, bad));
            answered += ok;
            failed += bad;
            kinds.extend(why);
        }
        revision += 1;
    }
    let median = |v: &mut Vec<(Duration, u64)>| {
        v.sort();
        v.get(v.len() / 2).map_or(0.0, |(d, _)| d.as_secs_f64())
    };
    println!(
        "rolling update of {REPLICAS} replicas: median {:.1} s; automatic rollback: median {:.1} s",
        median(&mut updates),
        median(&mut rollbacks)
    );
    println!(
        "client: {answered} answered, {failed} failed{} (goal: 0 failed) {}",
        if kinds.is_empty() {
            String::new()
        } else {
            format!(" {kinds:?}")
        },
        if failed == 0 { "met" } else { "MISSED" }
    );
}
