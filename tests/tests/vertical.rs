//! Vertical autoscaling through the real binaries: a replica whose memory grows under a
//! VerticalPodAutoscaler in place mode gets a higher memory limit from the engine's update
//! call, in the same container that keeps running; a replica whose processes are
//! OOM-killed under an `Off` autoscaler (applied on its own, after its Deployment) gets a
//! higher recommendation and nothing else.
//! Decisions every 2 s here, samples every second.

use std::process::Command;
use std::time::Duration;

use drover_tests::{DroverProcess, allocations, build_images, success, unique_node, wait_for};

const MIB: u64 = 1 << 20;

/// `grow` writes 1 MiB into its /dev/shm (tmpfs, charged to its memory cgroup and not
/// reclaimable) every 0.7 s up to 72 MiB under a 48 MiB limit, in place mode; `oom` runs a
/// child that asks for 40 MB under a 32 MiB limit, again and again (the kernel kills the
/// child, the container lives on), under an autoscaler that only recommends.
const MANIFEST: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: grow}
spec:
  selector: {matchLabels: {app: grow}}
  template:
    metadata: {labels: {app: grow}}
    spec:
      containers:
        - name: grow
          image: drover-test-busybox:latest
          command: ["/bin/sh", "-c", "i=0; while [ $i -lt 72 ]; do dd if=/dev/zero of=/dev/shm/f$i bs=1M count=1 2>/dev/null; i=$((i+1)); sleep 0.7; done; exec sleep 3600"]
          resources: {limits: {cpu: 100m, memory: 48Mi}}
---
apiVersion: autoscaling.k8s.io/v1
kind: VerticalPodAutoscaler
metadata: {name: grow-vpa}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: grow}
  updatePolicy: {updateMode: InPlaceOrRecreate}
  resourcePolicy:
    containerPolicies:
      - {containerName: '*', controlledResources: [memory], maxAllowed: {memory: 256Mi}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: oom}
spec:
  selector: {matchLabels: {app: oom}}
  template:
    metadata: {labels: {app: oom}}
    spec:
      containers:
        - name: oom
          image: drover-test-busybox:latest
          command: ["/bin/sh", "-c", "while :; do sh -c 'x=$(head -c 40000000 /dev/zero | tr \"\\0\" a)'; sleep 2; done"]
          resources: {limits: {cpu: 100m, memory: 32Mi}}
"#;

/// `oom`'s autoscaler, applied on its own once the Deployment runs.
const OOM_VPA: &str = r#"apiVersion: autoscaling.k8s.io/v1
kind: VerticalPodAutoscaler
metadata: {name: oom-vpa}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: oom}
  updatePolicy: {updateMode: "Off"}
"#;

/// The engine's view of a container: (StartedAt, memory limit, running).
fn inspect(container: &str) -> (String, u64, bool) {
    let out = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{.State.StartedAt}} {{.HostConfig.Memory}} {{.State.Running}}",
            container,
        ])
        .output()
        .expect("docker inspect");
    let text = success(&out, "docker inspect");
    let mut fields = text.split_whitespace();
    let started = fields.next().unwrap_or_default().to_string();
    let memory = fields.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    (started, memory, fields.next() == Some("true"))
}

/// The one replica of `name`: (container id, its allocation's memory, restarts).
fn replica(coordinator: &DroverProcess, name: &str) -> Option<(String, u64, u64)> {
    let all = allocations(coordinator, name);
    let a = all.first()?;
    let id = a["container_id"].as_str().filter(|id| !id.is_empty())?;
    Some((
        id.to_string(),
        a["resources"]["memory_bytes"].as_u64().unwrap_or(0),
        a["restarts"].as_u64().unwrap_or(0),
    ))
}

/// The recommended memory target of `name`, once there is one.
fn recommended_memory(coordinator: &DroverProcess, name: &str) -> Option<u64> {
    let status = coordinator.try_cli_json(&["status", name])?;
    status["recommendation"]["target"]["memory_bytes"].as_u64()
}

#[test]
fn a_growing_replica_gets_more_memory_in_place_and_an_oom_kill_raises_the_recommendation() {
    build_images();
    let dir = tempfile::tempdir().expect("tempdir");
    let coordinator_dir = dir.path().join("coordinator");
    std::fs::create_dir_all(&coordinator_dir).expect("dir");
    let coordinator =
        DroverProcess::coordinator_with(&coordinator_dir, "autoscale_interval = \"2s\"\n");
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).expect("dir");
    let agent = DroverProcess::agent_with(
        &agent_dir,
        "127.0.0.203",
        &unique_node("vpa"),
        &coordinator,
        "cluster_ips = false\nusage_interval = \"1s\"\n",
    );
    let manifest = dir.path().join("vpa.yaml");
    std::fs::write(&manifest, MANIFEST).expect("write manifest");
    coordinator.apply(&manifest);

    let mut first = None;
    wait_for("both replicas running", Duration::from_secs(60), || {
        first = replica(&coordinator, "grow");
        first.is_some() && replica(&coordinator, "oom").is_some()
    });
    let (container, memory, _) = first.expect("grow replica");
    assert_eq!(memory, 48 * MIB);
    let (started, limit, running) = inspect(&container);
    assert_eq!(limit, 48 * MIB);
    assert!(running);
    let (oom_container, _, _) = replica(&coordinator, "oom").expect("oom replica");
    let vpa = dir.path().join("oom-vpa.yaml");
    std::fs::write(&vpa, OOM_VPA).expect("write vpa");
    let applied = coordinator.apply(&vpa);
    assert!(applied.contains("autoscaler/oom-vpa created"), "{applied}");

    // 72 MiB written under 48 MiB: only growing limits keep it alive to the end.
    wait_for(
        "the grower's limit to pass 72 MiB",
        Duration::from_secs(120),
        || inspect(&container).1 > 72 * MIB,
    );
    let (started_after, limit_after, running_after) = inspect(&container);
    assert_eq!(started_after, started, "the container was restarted");
    assert!(running_after);
    let (container_after, memory_after, restarts) =
        replica(&coordinator, "grow").expect("grow replica");
    assert_eq!(container_after, container, "the replica was replaced");
    assert_eq!(restarts, 0);
    assert_eq!(
        memory_after, limit_after,
        "the allocation holds what the engine has"
    );
    let status = success(&coordinator.cli(&["status", "grow"]), "drover status grow");
    assert!(
        status.contains(
            "Vertical:  InPlace on memory, memory at most 256 MiB (VerticalPodAutoscaler grow-vpa)"
        ),
        "{status}"
    );
    let events = success(&coordinator.cli(&["events"]), "drover events");
    assert!(
        events.contains("resized") && events.contains("in place on node"),
        "{events}"
    );

    // Off: the kernel's kills raise the recommendation far above 32 MiB (VPA's bump is
    // at least +100 MiB), and the replica keeps its limit and its container.
    wait_for(
        "an OOM-raised recommendation for oom",
        Duration::from_secs(60),
        || recommended_memory(&coordinator, "oom").is_some_and(|m| m > 132 * MIB),
    );
    let (oom_after, oom_memory, _) = replica(&coordinator, "oom").expect("oom replica");
    assert_eq!(oom_after, oom_container);
    assert_eq!(oom_memory, 32 * MIB);
    assert_eq!(inspect(&oom_container).1, 32 * MIB);
    let status = success(&coordinator.cli(&["status", "oom"]), "drover status oom");
    assert!(
        status.contains("Vertical:  Off (recommends only)"),
        "{status}"
    );
    assert!(status.contains("Recommend: cpu "), "{status}");
    let out = coordinator.cli(&["delete", "oom-vpa", "--only", "autoscaler"]);
    let deleted = success(&out, "drover delete oom-vpa");
    assert!(
        deleted.contains("VerticalPodAutoscaler/oom-vpa deleted"),
        "{deleted}"
    );
    let status = success(&coordinator.cli(&["status", "oom"]), "drover status oom");
    assert!(!status.contains("Vertical:"), "{status}");
    drop(agent);
}
