//! The Docker runtime against a real Podman, through Podman's Docker-compatible API (what
//! `--engine unix:///run/podman/podman.sock` uses): the shared conformance checks, what only
//! a real engine shows (signals, limits, a command that cannot run, the seed images on a
//! published port), and the supervisor running a checked replica reachable over HTTP.
//!
//! Every test starts its own `podman system service` on a socket in a temporary directory
//! and stops it when it ends, even by a panic. The services share the host's Podman storage,
//! where `DOCKER=podman examples/seed/build-images.sh` builds the images. Needs Debian's
//! `podman` (.ci/run installs it) and busybox-static; run as root.

mod engine;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use drover_agent::runtime::conformance::{self, CONTAINER_PORT, Fixture};
use drover_agent::runtime::{
    ContainerRuntime, ContainerSpec, ContainerState, DockerRuntime, RuntimeError,
};
use drover_proto::model::{
    AllocState, DesiredState, HealthCheck, PortSpec, ProbeAction, Protocol, WorkloadSpec,
};

use engine::{Agent, Cleanup, unique_node};

/// The image the checks run: busybox httpd on port 8080 answering "drover-test-busybox <id>".
const TEST_IMAGE: &str = "drover-test-busybox";

/// How long a fresh `podman system service` may take to answer on its socket.
const SERVICE_START: Duration = Duration::from_secs(30);

/// Panics, saying how to get Podman, unless the `podman` command runs.
fn require_podman() {
    let version = Command::new("podman").arg("--version").output();
    match version {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "`podman --version` failed ({}): {}; these tests need a working Podman \
             (apt-get install -y podman; .ci/run installs it)",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(err) => panic!(
            "podman is not installed ({err}): these tests run the agent against a real \
             Podman; install it with `apt-get install -y podman` (.ci/run installs it)"
        ),
    }
}

/// Whether this Podman's Docker-compatible API can change a running container's limits:
/// its container update endpoint came with Podman 5.1.
fn podman_updates_limits() -> bool {
    let output = Command::new("podman")
        .args(["version", "--format", "{{.Client.Version}}"])
        .output()
        .expect("podman version");
    let version = String::from_utf8_lossy(&output.stdout);
    let mut parts = version.trim().split(['.', '-']);
    let mut number = || parts.next().and_then(|part| part.parse::<u32>().ok());
    let (major, minor) = (number(), number());
    let (Some(major), Some(minor)) = (major, minor) else {
        panic!("podman version {:?}: not MAJOR.MINOR…", version.trim());
    };
    eprintln!(
        "podman {major}.{minor}: container updates {}",
        if (major, minor) >= (5, 1) {
            "expected to work"
        } else {
            "expected unsupported"
        }
    );
    (major, minor) >= (5, 1)
}

/// Builds the images into Podman's storage once per test binary; the script is idempotent
/// and locked.
fn build_images() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/seed/build-images.sh"
        );
        let output = Command::new(script)
            .env("DOCKER", "podman")
            .output()
            .map_err(|err| format!("running {script}: {err}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "DOCKER=podman {script} failed ({}):\n{}{}",
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

/// A `podman system service` of one test, on a socket in its own temporary directory.
/// Dropping it (also while unwinding from a panic) kills the service and waits for it.
struct PodmanService {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PodmanService {
    /// Starts the service and waits until its socket accepts connections.
    fn start() -> PodmanService {
        require_podman();
        let dir = tempfile::Builder::new()
            .prefix("drover-podman-")
            .tempdir()
            .expect("create a temporary directory for the podman socket");
        let socket = dir.path().join("podman.sock");
        let log = dir.path().join("service.log");
        // Rootful Podman raises every container's open-file and process limits (to 1048576
        // and 4194304), which fails ("error setting rlimit type 7") where the service may not
        // raise its own hard limits (no CAP_SYS_RESOURCE, as in CI's sandbox). Containers get
        // the test's limits instead, as Docker's inherit dockerd's.
        let conf = dir.path().join("containers.conf");
        std::fs::write(&conf, containers_conf()).expect("write containers.conf");
        let log_file = std::fs::File::create(&log).expect("create the service's log file");
        let stderr = log_file.try_clone().expect("clone the log file handle");
        // --time=0: the service never exits on its own while the test runs.
        let child = Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .env("CONTAINERS_CONF", &conf)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|err| panic!("starting `podman system service`: {err}"));
        let mut service = PodmanService {
            child,
            socket,
            log,
            _dir: dir,
        };
        let until = Instant::now() + SERVICE_START;
        while UnixStream::connect(&service.socket).is_err() {
            if let Ok(Some(status)) = service.child.try_wait() {
                panic!(
                    "`podman system service` exited ({status}) before listening on {}:\n{}",
                    service.socket.display(),
                    service.log_text()
                );
            }
            assert!(
                Instant::now() < until,
                "`podman system service` did not listen on {} within {SERVICE_START:?}:\n{}",
                service.socket.display(),
                service.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        service
    }

    /// The endpoint for `DockerRuntime::connect`.
    fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|err| format!("(no log: {err})"))
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        if let Err(err) = self.child.kill() {
            eprintln!("killing podman system service: {err}");
        }
        if let Err(err) = self.child.wait() {
            eprintln!("waiting for podman system service: {err}");
        }
    }
}

/// The service's containers.conf: default ulimits the service can grant. Podman keeps its
/// own open-file hard limit when it may not raise it, and lowers its process limit to
/// kernel.pid_max; rootful, it would ask 1048576 of both for every container.
fn containers_conf() -> String {
    use nix::sys::resource::{Resource, getrlimit};
    let hard = |name: &str, resource: Resource| {
        getrlimit(resource)
            .unwrap_or_else(|err| panic!("getrlimit {name}: {err}"))
            .1
    };
    let nofile = hard("RLIMIT_NOFILE", Resource::RLIMIT_NOFILE);
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    let nproc = hard("RLIMIT_NPROC", Resource::RLIMIT_NPROC).min(pid_max);
    format!(
        "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n"
    )
}

/// One test's Podman: its service, a runtime connected to it, a fixture with a fresh node
/// id. Fields drop in order: the containers go before the service.
struct Setup {
    runtime: DockerRuntime,
    fixture: Fixture,
    _cleanup: Cleanup,
    service: PodmanService,
}

async fn setup() -> Setup {
    let service = PodmanService::start();
    build_images();
    let runtime = DockerRuntime::connect(Some(&service.endpoint()))
        .await
        .unwrap_or_else(|err| panic!("connect to podman: {err}\n{}", service.log_text()));
    let node = unique_node("podman");
    let mut fixture = Fixture::new(&node, TEST_IMAGE);
    if !podman_updates_limits() {
        fixture = fixture.without_limit_updates();
    }
    Setup {
        runtime,
        fixture,
        _cleanup: Cleanup {
            cli: "podman",
            node,
        },
        service,
    }
}

macro_rules! conformance_tests {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $check() {
            let setup = setup().await;
            conformance::$check(&setup.runtime, &setup.fixture)
                .await
                .expect(concat!("conformance check ", stringify!($check), " on podman"));
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
    let setup = setup().await;
    let (major, minor) = setup
        .runtime
        .api_version()
        .split_once('.')
        .and_then(|(major, minor)| Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?)))
        .expect("a numeric API version");
    eprintln!("negotiated Engine API {major}.{minor} with podman");
    assert!((major, minor) <= (1, 41), "API {major}.{minor}");
    assert_eq!(setup.runtime.endpoint(), setup.service.endpoint());
}

#[tokio::test]
async fn missing_image_fails_promptly_with_the_engines_reason() {
    let Setup {
        runtime, fixture, ..
    } = &setup().await;
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
    let Setup {
        runtime, fixture, ..
    } = &setup().await;

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
    let started = Instant::now();
    runtime
        .stop(&graceful, Duration::from_secs(30))
        .await
        .expect("stop");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a graceful stop took {:?}",
        started.elapsed()
    );
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
    let Setup {
        runtime, fixture, ..
    } = &setup().await;
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
    let Setup {
        runtime, fixture, ..
    } = &setup().await;
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
    let Setup {
        runtime, fixture, ..
    } = &setup().await;
    let mut spec = fixture.spec("limited");
    spec.cpu_millis = 250;
    spec.memory_bytes = 64 << 20;
    let id = runtime.create(&spec).await.expect("create");
    let output = Command::new("podman")
        .args([
            "inspect",
            "--format",
            "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.RestartPolicy.Name}}",
            &id,
        ])
        .output()
        .expect("podman inspect");
    let inspected = String::from_utf8_lossy(&output.stdout);
    // Podman reports "no restart policy" as an empty name where Docker says "no".
    let fields: Vec<&str> = inspected.split_whitespace().collect();
    assert!(
        matches!(
            fields.as_slice(),
            ["250000000", "67108864"] | ["250000000", "67108864", "no"]
        ),
        "{inspected:?}"
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
    let Setup {
        runtime, fixture, ..
    } = &setup().await;
    for image in ["user-service", "order-service", TEST_IMAGE] {
        let spec = ContainerSpec {
            image: image.to_owned(),
            ..fixture.spec(image)
        };
        let id = runtime.create(&spec).await.expect("create");
        runtime.start(&id).await.expect("start");
        let info = runtime.inspect(&id).await.expect("inspect");
        let port = info.host_ports[&CONTAINER_PORT];
        let body = http_get(port, "/", Duration::from_secs(10));
        // As in Docker, a container's hostname is its short id.
        assert_eq!(body.trim(), format!("{image} {}", &id[..12]));
        assert_eq!(
            http_get(port, "/healthz", Duration::from_secs(10)).trim(),
            "ok"
        );
    }
}

/// The seed example's path on Podman: the supervisor creates and starts a replica with a
/// published port, its HTTP check passes, and the reported host port answers; killed while
/// its agent is away, it is adopted and started again by the next agent; it is removed once
/// it leaves the desired set.
#[tokio::test]
async fn the_supervisor_runs_a_checked_replica_reachable_over_http() {
    let Setup {
        runtime, fixture, ..
    } = &setup().await;
    let node = fixture.node.clone();
    let mut spec = WorkloadSpec::new("user-service", "user-service");
    spec.ports.push(PortSpec {
        name: None,
        container_port: CONTAINER_PORT,
        host_port: None,
        protocol: Protocol::Tcp,
    });
    spec.health = Some(HealthCheck {
        interval: Duration::from_secs(1),
        ..HealthCheck::with_defaults(ProbeAction::Http {
            port: CONTAINER_PORT,
            path: "/healthz".to_owned(),
        })
    });
    let ids = vec!["user-service.1".to_owned()];
    let mut agent = Agent::start(&node, runtime, Duration::ZERO);
    agent.want(&node, &spec, &ids, DesiredState::Run);
    agent
        .wait_for("healthy", Duration::from_secs(60), |statuses| {
            statuses
                .get(&ids[0])
                .is_some_and(|report| report.status.state == AllocState::Healthy)
        })
        .await;
    let status = agent.statuses.borrow()[&ids[0]].status.clone();
    let port = status.host_ports[&CONTAINER_PORT];
    let body = http_get(port, "/", Duration::from_secs(10));
    assert_eq!(
        body.trim(),
        format!("user-service {}", &status.container_id[..12])
    );
    agent.stop().await;

    // The agent is gone; its container dies too. A new agent adopts the exited container
    // and starts it again.
    let killed = Command::new("podman")
        .args(["kill", &status.container_id])
        .output()
        .expect("podman kill");
    assert!(killed.status.success(), "{killed:?}");
    let mut agent = Agent::start(&node, runtime, Duration::ZERO);
    agent.want(&node, &spec, &ids, DesiredState::Run);
    agent
        .wait_for("healthy again", Duration::from_secs(60), |statuses| {
            statuses.get(&ids[0]).is_some_and(|report| {
                report.status.state == AllocState::Healthy && report.status.restarts == 1
            })
        })
        .await;
    let after = agent.statuses.borrow()[&ids[0]].status.clone();
    assert_eq!(after.container_id, status.container_id);
    assert_eq!(
        http_get(
            after.host_ports[&CONTAINER_PORT],
            "/healthz",
            Duration::from_secs(10)
        )
        .trim(),
        "ok"
    );

    agent.want(&node, &spec, &[], DesiredState::Run);
    let until = Instant::now() + Duration::from_secs(60);
    while !runtime.list(&node).await.expect("list").is_empty() {
        assert!(
            Instant::now() < until,
            "the replica is still there after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.stop().await;
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
