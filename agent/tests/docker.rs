//! The Docker runtime against the real engine: the shared conformance checks, then what only a
//! real engine can show (signals, limits, published ports, the seed images), and the
//! supervisor on it (a restart on a new host port, removing many replicas at once).
//!
//! Needs a Docker engine (20.10 or newer, or Podman via DOCKER_HOST) and busybox-static: the
//! images are built by examples/seed/build-images.sh. Every test labels its containers with
//! its own node id and removes them when it ends, even by a panic.

mod engine;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use drover_agent::runtime::conformance::{self, CONTAINER_PORT, Fixture};
use drover_agent::runtime::{ContainerRuntime, ContainerState, DockerRuntime, RuntimeError};
use drover_agent::supervisor::AllocReport;
use drover_proto::model::{
    AllocState, DesiredState, HealthCheck, PortSpec, ProbeAction, Protocol, WorkloadSpec,
};

use engine::{Agent, Cleanup, unique_node};

/// The image the checks run: busybox httpd on port 8080 answering "drover-test-busybox <id>".
const TEST_IMAGE: &str = "drover-test-busybox";

/// Builds the images once per test binary; the script itself is idempotent and locked.
fn build_images() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/seed/build-images.sh"
        );
        let output = Command::new(script)
            .output()
            .map_err(|err| format!("running {script}: {err}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{script} failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    });
    if let Err(err) = built {
        panic!("{err}");
    }
}

/// A connected runtime, a fixture with a fresh node id, and the guard that cleans up after it.
async fn setup() -> (DockerRuntime, Fixture, Cleanup) {
    build_images();
    let runtime = DockerRuntime::connect(None)
        .await
        .expect("connect to the Docker engine");
    let node = unique_node("test");
    let cleanup = Cleanup {
        cli: "docker",
        node: node.clone(),
    };
    (runtime, Fixture::new(&node, TEST_IMAGE), cleanup)
}

macro_rules! conformance_tests {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $check() {
            let (runtime, fixture, _cleanup) = setup().await;
            conformance::$check(&runtime, &fixture)
                .await
                .expect(concat!("conformance check ", stringify!($check)));
        }
    )*};
}

conformance_tests!(
    create_start_list,
    stop_then_start_again,
    remove,
    list_filters_by_node,
    missing_image,
    duplicate_name,
    missing_container,
    exec_exit_codes,
    usage,
    fixed_host_port,
    update_resources_in_place,
);

#[tokio::test]
async fn connects_with_a_negotiated_api_version() {
    let runtime = DockerRuntime::connect(Some("unix:///var/run/docker.sock"))
        .await
        .expect("connect to /var/run/docker.sock");
    let (major, minor) = runtime
        .api_version()
        .split_once('.')
        .and_then(|(major, minor)| Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?)))
        .expect("a numeric API version");
    assert!((major, minor) <= (1, 41), "API {major}.{minor}");
    assert_eq!(runtime.endpoint(), "unix:///var/run/docker.sock");
}

#[tokio::test]
async fn unreachable_endpoint_is_named() {
    let endpoint = "unix:///nonexistent/drover-test.sock";
    let err = DockerRuntime::connect(Some(endpoint))
        .await
        .expect_err("no engine listens there");
    assert!(
        matches!(&err, RuntimeError::Unreachable { endpoint: named, .. } if named == endpoint),
        "{err}"
    );
    assert!(err.to_string().contains(endpoint), "{err}");

    let err = DockerRuntime::connect(Some("ftp://example"))
        .await
        .expect_err("unsupported scheme");
    assert!(matches!(err, RuntimeError::Unreachable { .. }), "{err}");
}

#[tokio::test]
async fn missing_image_fails_promptly_with_the_engines_reason() {
    let (runtime, fixture, _cleanup) = setup().await;
    let image = format!("{}-nowhere/missing:1.0", fixture.node);
    let started = Instant::now();
    let err = runtime
        .ensure_image(&image)
        .await
        .expect_err("no registry is reachable");
    eprintln!(
        "ensure_image({image}) failed after {:?}: {err}",
        started.elapsed()
    );
    let RuntimeError::ImageUnavailable {
        image: named,
        reason,
    } = err
    else {
        panic!("expected ImageUnavailable, got {err}");
    };
    assert_eq!(named, image);
    assert!(!reason.is_empty());
}

#[tokio::test]
async fn stop_sends_sigterm_then_sigkill_after_the_grace_period() {
    let (runtime, fixture, _cleanup) = setup().await;

    // The test image's shell traps SIGTERM and exits 0 at once, once it has set the trap:
    // it serves HTTP after that.
    let graceful = runtime
        .create(&fixture.spec("graceful"))
        .await
        .expect("create");
    runtime.start(&graceful).await.expect("start");
    let info = runtime.inspect(&graceful).await.expect("inspect");
    http_get(
        info.host_ports[&CONTAINER_PORT],
        "/",
        Duration::from_secs(10),
    );
    runtime
        .stop(&graceful, Duration::from_secs(30))
        .await
        .expect("stop");
    let state = runtime.inspect(&graceful).await.expect("inspect").state;
    assert_eq!(state, ContainerState::Exited { code: 0 });

    // sleep as PID 1 has no SIGTERM handler, so the kernel ignores the signal: only the
    // SIGKILL after the grace period ends it.
    let mut spec = fixture.spec("stubborn");
    spec.command = vec!["/bin/sleep".to_owned()];
    spec.args = vec!["600".to_owned()];
    let stubborn = runtime.create(&spec).await.expect("create");
    runtime.start(&stubborn).await.expect("start");
    runtime
        .stop(&stubborn, Duration::from_millis(500))
        .await
        .expect("stop");
    let state = runtime.inspect(&stubborn).await.expect("inspect").state;
    assert_eq!(state, ContainerState::Exited { code: 137 });
}

#[tokio::test]
async fn exec_sees_the_environment_and_times_out() {
    let (runtime, fixture, _cleanup) = setup().await;
    let mut spec = fixture.spec("web");
    spec.env = BTreeMap::from([("GREETING".to_owned(), "hello world".to_owned())]);
    let id = runtime.create(&spec).await.expect("create");
    runtime.start(&id).await.expect("start");
    let sh = |script: &str| vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
    let timeout = Duration::from_secs(10);

    let code = runtime
        .exec(&id, &sh(r#"test "$GREETING" = "hello world""#), timeout)
        .await
        .expect("exec");
    assert_eq!(code, 0);
    let code = runtime
        .exec(&id, &sh("exit 7"), timeout)
        .await
        .expect("exec");
    assert_eq!(code, 7);

    let err = runtime
        .exec(&id, &sh("sleep 30"), Duration::from_millis(300))
        .await
        .expect_err("times out");
    assert!(
        matches!(&err, RuntimeError::Engine { reason, .. } if reason.contains("exec timed out after 300ms")),
        "{err}"
    );
}

#[tokio::test]
async fn a_command_that_does_not_exist_cannot_execute() {
    let (runtime, fixture, _cleanup) = setup().await;
    let mut spec = fixture.spec("no-command");
    spec.command = vec!["/no/such/program".into()];
    let id = runtime.create(&spec).await.expect("create");
    match runtime.start(&id).await {
        Err(RuntimeError::CannotExecute { reason, .. }) => {
            assert!(reason.contains("/no/such/program"), "{reason}")
        }
        other => panic!("expected CannotExecute, got {other:?}"),
    }
}

#[tokio::test]
async fn limits_and_no_restart_policy_reach_the_engine() {
    let (runtime, fixture, _cleanup) = setup().await;
    let mut spec = fixture.spec("limited");
    spec.cpu_millis = 250;
    spec.memory_bytes = 64 << 20;
    let id = runtime.create(&spec).await.expect("create");
    let output = Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.RestartPolicy.Name}} {{.HostConfig.Init}}",
            &id,
        ])
        .output()
        .expect("docker inspect");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        // No swap beyond the memory limit, as an update in place sets it.
        "250000000 67108864 67108864 no false"
    );

    runtime.start(&id).await.expect("start");
    let used = runtime.usage(&id).await.expect("usage");
    assert!(
        used.memory_bytes > 0 && used.memory_bytes <= 64 << 20,
        "{used:?}"
    );
}

#[tokio::test]
async fn published_port_serves_the_seed_images() {
    let (runtime, fixture, _cleanup) = setup().await;
    for image in ["user-service", "order-service", TEST_IMAGE] {
        let spec = drover_agent::runtime::ContainerSpec {
            image: image.to_owned(),
            ..fixture.spec(image)
        };
        let id = runtime.create(&spec).await.expect("create");
        runtime.start(&id).await.expect("start");
        let info = runtime.inspect(&id).await.expect("inspect");
        let port = info.host_ports[&CONTAINER_PORT];
        let body = http_get(port, "/", Duration::from_secs(10));
        // The hostname of a Docker container is its short id.
        assert_eq!(body.trim(), format!("{image} {}", &id[..12]));
        assert_eq!(
            http_get(port, "/healthz", Duration::from_secs(10)).trim(),
            "ok"
        );
    }
}

/// The body of `GET path` on 127.0.0.1:`port`, retried until `deadline` elapses (the server
/// may still be starting).
fn http_get(port: u16, path: &str, deadline: Duration) -> String {
    let until = Instant::now() + deadline;
    loop {
        match try_http_get(port, path) {
            Ok(body) => return body,
            Err(err) if Instant::now() >= until => {
                panic!("GET http://127.0.0.1:{port}{path}: {err}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn try_http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("malformed response {response:?}")))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("response {head:?}")));
    }
    Ok(body.to_owned())
}

/// The test image with an HTTP readiness check on /healthz.
fn checked_service(every: Duration) -> WorkloadSpec {
    let mut spec = WorkloadSpec::new("web", TEST_IMAGE);
    spec.ports.push(PortSpec {
        name: None,
        container_port: CONTAINER_PORT,
        host_port: None,
        protocol: Protocol::Tcp,
    });
    spec.health = Some(HealthCheck {
        interval: every,
        ..HealthCheck::with_defaults(ProbeAction::Http {
            port: CONTAINER_PORT,
            path: "/healthz".to_owned(),
        })
    });
    spec
}

fn healthy(statuses: &BTreeMap<String, AllocReport>, ids: &[String]) -> bool {
    ids.iter().all(|id| {
        statuses
            .get(id)
            .is_some_and(|r| r.status.state == AllocState::Healthy)
    })
}

#[tokio::test]
async fn a_container_killed_with_its_agent_is_checked_on_its_new_port() {
    let (runtime, fixture, _cleanup) = setup().await;
    let node = fixture.node.clone();
    let spec = checked_service(Duration::from_secs(1));
    let ids = vec!["web.1".to_owned()];
    let mut first = Agent::start(&node, &runtime, Duration::ZERO);
    first.want(&node, &spec, &ids, DesiredState::Run);
    first
        .wait_for("healthy", Duration::from_secs(60), |s| healthy(s, &ids))
        .await;
    let before = first.statuses.borrow()["web.1"].status.clone();
    first.stop().await;

    // The agent is gone; its container dies too. A new agent adopts the exited container
    // and starts it again: the engine publishes 8080 afresh.
    let killed = Command::new("docker")
        .args(["kill", &before.container_id])
        .output()
        .expect("docker kill");
    assert!(killed.status.success(), "{killed:?}");
    let mut second = Agent::start(&node, &runtime, Duration::ZERO);
    second.want(&node, &spec, &ids, DesiredState::Run);
    second
        .wait_for("healthy again", Duration::from_secs(60), |s| {
            healthy(s, &ids) && s["web.1"].status.restarts == 1
        })
        .await;
    let after = second.statuses.borrow()["web.1"].status.clone();
    eprintln!(
        "host port of 8080: {:?} before, {:?} after the restart",
        before.host_ports, after.host_ports
    );
    assert_eq!(after.container_id, before.container_id);
    assert_eq!(
        http_get(
            after.host_ports[&CONTAINER_PORT],
            "/healthz",
            Duration::from_secs(10)
        )
        .trim(),
        "ok"
    );
    second.stop().await;
}

#[tokio::test]
async fn removing_twenty_replicas_takes_about_the_drain() {
    const REPLICAS: usize = 20;
    let (runtime, fixture, _cleanup) = setup().await;
    let node = fixture.node.clone();
    // As the benchmark's service: checked every 5 s.
    let spec = checked_service(Duration::from_secs(5));
    let ids: Vec<String> = (1..=REPLICAS).map(|i| format!("web.{i}")).collect();
    let drain = Duration::from_secs(3);
    let mut agent = Agent::start(&node, &runtime, drain);
    agent.want(&node, &spec, &ids, DesiredState::Run);
    agent
        .wait_for("all healthy", Duration::from_secs(300), |s| {
            healthy(s, &ids)
        })
        .await;
    // Past the first usage sample of every replica, as on a node that has been running.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let started = Instant::now();
    agent.want(&node, &spec, &[], DesiredState::Run);
    let until = started + Duration::from_secs(120);
    loop {
        let left = runtime.list(&node).await.expect("list").len();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < until, "{left} containers left after 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    eprintln!(
        "{REPLICAS} replicas removed {:.1} s after they left the desired set (drain {} s)",
        took.as_secs_f64(),
        drain.as_secs()
    );
    assert!(
        took < drain + Duration::from_secs(10),
        "{REPLICAS} replicas removed after {took:?}"
    );
    agent.stop().await;
}
