//! Harness for end-to-end tests: runs Drover's real binaries as child processes, waits on
//! conditions with deadlines, and prints each process's log when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// Path of one of the workspace's binaries, built next to the test executable by
/// `cargo test --workspace`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// Exits with a message naming what to build when a benchmark's binaries (Drover's three)
/// are not next to it: `cargo bench` runs release programs, which it does not build.
pub fn require_binaries(program: &str) {
    let exe = std::env::current_exe().expect("bench executable path");
    let Some(dir) = exe.parent().and_then(Path::parent) else {
        return;
    };
    let missing: Vec<&str> = ["drover", "drover-coordinator", "drover-agent"]
        .into_iter()
        .filter(|b| !dir.join(b).exists())
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "{program}: {} not built in {}; run `cargo build --release --workspace --bins` first",
            missing.join(", "),
            dir.display()
        );
        std::process::exit(2);
    }
}

/// Whether this run's processes are all insecure (`DROVER_INSECURE=true`, which the
/// coordinator, the agents and the CLI all read): benchmarks use it for their anchor.
pub fn insecure_run() -> bool {
    std::env::var("DROVER_INSECURE").is_ok_and(|v| v == "true" || v == "1")
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A free UDP port on loopback (bound, then released).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free udp port")
}

/// One of Drover's binaries running as a child process, with its log in a file that is
/// printed when the test fails, and its gRPC port for the CLI.
#[derive(Debug)]
pub struct DroverProcess {
    child: Option<Child>,
    binary: &'static str,
    args: Vec<String>,
    /// Address the coordinator's gRPC API listens on.
    pub host: String,
    /// gRPC port of the coordinator it runs (or is).
    pub port: u16,
    log: PathBuf,
    /// Node id whose containers are removed when the process is dropped.
    cleanup_node: Option<String>,
    /// Data dir of the coordinator it runs (or is): where its admin and agent tokens are.
    pub coordinator_dir: PathBuf,
    /// The service network of the coordinator it runs (or is): each coordinator gets one
    /// of its own, so that clusters of tests side by side never share an address.
    pub service_network: String,
    /// Whether it puts cluster addresses on `lo` (removed when it is dropped).
    serves_cluster_ips: bool,
    /// The HTTP port (healthz, readyz, metrics) of a coordinator, an agent or `drover dev`'s
    /// coordinator (its agent's is [`DroverProcess::agent_http_port`]); 0 for others.
    pub http_port: u16,
    /// The HTTP port of `drover dev`'s agent; 0 for others.
    pub agent_http_port: u16,
}

/// A service network no other coordinator of this test run has: 10.(240 + pid % 16).n.0/24.
pub fn unique_service_network() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 256;
    format!("10.{}.{n}.0/24", 240 + std::process::id() % 16)
}

impl DroverProcess {
    /// Starts `drover-coordinator` on free ports with `data_dir`.
    pub fn coordinator(data_dir: &Path) -> DroverProcess {
        DroverProcess::coordinator_with(data_dir, "")
    }

    /// A coordinator with `insecure = true`: plain gRPC, no tokens (benchmark anchors only).
    pub fn coordinator_insecure(data_dir: &Path) -> DroverProcess {
        DroverProcess::start_coordinator(data_dir, "insecure = true\n")
    }

    /// [`DroverProcess::coordinator`] with `config` (TOML) as its configuration file.
    pub fn coordinator_with(data_dir: &Path, config: &str) -> DroverProcess {
        let process = DroverProcess::start_coordinator(data_dir, config);
        process.wait_for_tokens();
        process
    }

    fn start_coordinator(data_dir: &Path, config: &str) -> DroverProcess {
        let port = free_port();
        let http_port = free_port();
        let file = data_dir.join("coordinator.toml");
        let network = unique_service_network();
        let config = if config.contains("service_network") {
            config.to_string()
        } else {
            format!("service_network = \"{network}\"\n{config}")
        };
        std::fs::write(&file, config).expect("write the coordinator's config");
        let args = vec![
            "--config".to_string(),
            file.display().to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--gossip-listen".into(),
            format!("127.0.0.1:{}", free_udp_port()),
            "--http-listen".into(),
            format!("127.0.0.1:{http_port}"),
        ];
        let mut process = DroverProcess::prepare("drover-coordinator", args, port, data_dir, None);
        process.service_network = network;
        process.http_port = http_port;
        process.spawn();
        process
    }

    /// Waits until the coordinator has written its bootstrap tokens; with `DROVER_INSECURE`
    /// set (a benchmark's insecure anchor: every process inherits it) there are none.
    fn wait_for_tokens(&self) {
        if insecure_run() {
            return;
        }
        let dir = self.coordinator_dir.clone();
        wait_for("the coordinator's tokens", Duration::from_secs(30), || {
            dir.join("admin.token").exists() && dir.join("agent.token").exists()
        });
    }

    /// The admin token file of the coordinator.
    pub fn admin_token_file(&self) -> PathBuf {
        self.coordinator_dir.join("admin.token")
    }

    /// The agent join token file of the coordinator.
    pub fn agent_token_file(&self) -> PathBuf {
        self.coordinator_dir.join("agent.token")
    }

    /// Starts `drover dev` for node `node` on free ports with `data_dir`, applying `apply`.
    /// Containers of `node` are removed when the process is dropped.
    ///
    /// `ip` is a loopback address of its own (127.0.0.x), so that the service proxies of
    /// tests running side by side (all on port 80 for the seed) never meet.
    pub fn dev(data_dir: &Path, ip: &str, node: &str, apply: &[&Path]) -> DroverProcess {
        let port = free_port();
        let http_port = free_port();
        let agent_http_port = free_port();
        let mut args = vec![
            "dev".to_string(),
            "--coordinator-http".into(),
            format!("{ip}:{http_port}"),
            "--agent-http".into(),
            format!("{ip}:{agent_http_port}"),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen".into(),
            format!("{ip}:{port}"),
            "--node-id".into(),
            node.into(),
            "--coordinator-gossip".into(),
            format!("{ip}:{}", free_udp_port()),
            "--agent-gossip".into(),
            format!("{ip}:{}", free_udp_port()),
        ];
        let network = unique_service_network();
        args.push("--service-network".into());
        args.push(network.clone());
        for path in apply {
            args.push("--apply".into());
            args.push(path.display().to_string());
        }
        let mut process =
            DroverProcess::prepare("drover", args, port, data_dir, Some(node.to_string()));
        process.host = ip.to_string();
        process.service_network = network;
        process.serves_cluster_ips = true;
        process.http_port = http_port;
        process.agent_http_port = agent_http_port;
        process.spawn();
        process.wait_for_tokens();
        process
    }

    /// Starts `drover-agent` for node `node` with `data_dir`, advertising 127.0.0.1, on a free
    /// gossip port, joining `coordinator` (its gRPC URL, and its gossip address as the seed).
    /// Containers of `node` are removed when the process is dropped.
    pub fn agent(data_dir: &Path, node: &str, coordinator: &DroverProcess) -> DroverProcess {
        DroverProcess::agent_on(data_dir, "127.0.0.1", node, coordinator)
    }

    /// [`DroverProcess::agent`] advertising (and proxying on) loopback address `ip`. It does
    /// not serve cluster addresses: agents of a test share one host, where one agent
    /// does ([`DroverProcess::agent_with`] with `cluster_ips = true`).
    pub fn agent_on(
        data_dir: &Path,
        ip: &str,
        node: &str,
        coordinator: &DroverProcess,
    ) -> DroverProcess {
        DroverProcess::agent_with(data_dir, ip, node, coordinator, "cluster_ips = false\n")
    }

    /// [`DroverProcess::agent_on`] with `config` (TOML) as its configuration file.
    pub fn agent_with(
        data_dir: &Path,
        ip: &str,
        node: &str,
        coordinator: &DroverProcess,
        config: &str,
    ) -> DroverProcess {
        let file = data_dir.join("agent.toml");
        std::fs::write(&file, config).expect("write the agent's config");
        let http_port = free_port();
        let mut args = vec![
            "--http-listen".to_string(),
            format!("{ip}:{http_port}"),
            "--config".into(),
            file.display().to_string(),
            "--node-id".into(),
            node.into(),
            "--advertise".into(),
            ip.into(),
            // Every packet of this node carries its own address, so a test can cut it off.
            "--link-source".into(),
            ip.into(),
            "--coordinator".into(),
            coordinator.url(),
            "--gossip-listen".into(),
            format!("{ip}:{}", free_udp_port()),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--token-file".into(),
            coordinator.agent_token_file().display().to_string(),
        ];
        if let Some(seed) = coordinator.gossip_listen() {
            args.push("--gossip-seed".into());
            args.push(seed.to_string());
        }
        // The agent serves no TCP port: `port` is its coordinator's, for the CLI.
        let mut process = DroverProcess::prepare(
            "drover-agent",
            args,
            coordinator.port,
            data_dir,
            Some(node.to_string()),
        );
        process.host = coordinator.host.clone();
        process.coordinator_dir = coordinator.coordinator_dir.clone();
        process.service_network = coordinator.service_network.clone();
        process.serves_cluster_ips = !config.contains("cluster_ips = false");
        process.http_port = http_port;
        process.spawn();
        process
    }

    fn prepare(
        binary: &'static str,
        args: Vec<String>,
        port: u16,
        data_dir: &Path,
        cleanup_node: Option<String>,
    ) -> DroverProcess {
        DroverProcess {
            child: None,
            binary,
            args,
            host: "127.0.0.1".to_string(),
            port,
            log: data_dir.join(format!("{binary}.log")),
            cleanup_node,
            coordinator_dir: data_dir.to_path_buf(),
            service_network: String::new(),
            serves_cluster_ips: false,
            http_port: 0,
            agent_http_port: 0,
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open process log");
        let stdout = log.try_clone().expect("clone log handle");
        let child = Command::new(binary(self.binary))
            .args(&self.args)
            .env(
                "RUST_LOG",
                "info,h2=warn,tower=warn,hyper=warn,hickory_server=warn",
            )
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary));
        self.child = Some(child);
        let address = format!("{}:{}", self.host, self.port);
        wait_for(
            &format!("{} on {address}", self.binary),
            Duration::from_secs(30),
            || std::net::TcpStream::connect(address.as_str()).is_ok(),
        );
    }

    /// Whether the process is still running (it did not exit on its own).
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().is_ok_and(|status| status.is_none()))
    }

    /// Process id of the running child, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The UDP address the process's gossip (its coordinator's, for `drover dev`) listens on.
    pub fn gossip_listen(&self) -> Option<&str> {
        let flag = if self.binary == "drover" {
            "--coordinator-gossip"
        } else {
            "--gossip-listen"
        };
        self.args
            .windows(2)
            .find(|pair| pair[0] == flag)
            .map(|pair| pair[1].as_str())
    }

    /// The URL the CLI takes with `--coordinator`.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// SIGKILL, then start again with the same arguments and data dir.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Start the process again after [`DroverProcess::stop`], with the same arguments and
    /// data dir.
    pub fn start(&mut self) {
        self.spawn();
    }

    /// SIGTERM the process (a graceful stop, as systemd's) and wait for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// What the process has logged so far (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs the `drover` CLI against this coordinator.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary("drover"))
            .args(args)
            .env("DROVER_COORDINATOR", self.url())
            .env("DROVER_TOKEN_FILE", self.admin_token_file())
            .env_remove("DROVER_TOKEN")
            .output()
            .expect("run drover")
    }

    /// `drover apply -f <manifest>`, which must succeed; returns its output.
    pub fn apply(&self, manifest: &Path) -> String {
        let path = manifest.to_str().expect("utf-8 manifest path");
        success(
            &self.cli(&["apply", "-f", path]),
            &format!("drover apply -f {path}"),
        )
    }

    /// `drover <args> -o json`, parsed; `None` when the command fails (e.g. not yet applied).
    pub fn try_cli_json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.cli(&all);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `drover <args> -o json`, parsed.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = success(&self.cli(&all), &format!("drover {}", all.join(" ")));
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("json from drover {all:?}: {e}\n{out}"))
    }
}

impl Drop for DroverProcess {
    fn drop(&mut self) {
        self.kill();
        if let Some(node) = &self.cleanup_node {
            remove_node_containers(node);
        }
        if self.serves_cluster_ips && !self.service_network.is_empty() {
            let network = self.service_network.as_str();
            let _ = Command::new("ip")
                .args(["-4", "addr", "flush", "dev", "lo", "to", network])
                .args(["label", "lo:drover"])
                .output();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!(
                "---- {} log ({}) ----\n{log}",
                self.binary,
                self.log.display()
            );
        }
    }
}

/// Removes every container labelled with `drover.node = node`.
pub fn remove_node_containers(node: &str) {
    for id in node_containers(node, true) {
        let _ = Command::new("docker").args(["rm", "-f", &id]).output();
    }
}

/// Ids of containers labelled with `drover.node = node` (`all`: stopped ones too).
pub fn node_containers(node: &str, all: bool) -> Vec<String> {
    let filter = format!("label=drover.node={node}");
    let mut args = vec!["ps", "-q", "--no-trunc", "--filter", filter.as_str()];
    if all {
        args.push("-a");
    }
    let out = Command::new("docker")
        .args(&args)
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The seed's user-service manifest, written into `dir` as a `type: LoadBalancer` service:
/// the seed's ClusterIP service is reached on its cluster address only, while tests of
/// nodes' proxies reach it on every node's address, port 80.
pub fn seed_on_node_addresses(dir: &Path) -> PathBuf {
    let seed = workspace_root().join("examples/seed/user-service.yaml");
    let text = std::fs::read_to_string(&seed).expect("read the seed's user-service.yaml");
    let balanced = text.replacen("spec:\n", "spec:\n  type: LoadBalancer\n", 1);
    assert_ne!(balanced, text, "the seed's Service has a spec");
    let path = dir.join("user-service-lb.yaml");
    std::fs::write(&path, balanced).expect("write the seed as a LoadBalancer");
    path
}

/// Builds the seed and test images when missing (examples/seed/build-images.sh).
pub fn build_images() {
    let script = workspace_root().join("examples/seed/build-images.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("run build-images.sh");
    success(&out, "examples/seed/build-images.sh");
}

/// The debootstrapped Debian image the packaging tests build (packaging/tests/rootfs.sh,
/// cached outside the clone), imported into Docker when missing; its name. Its glibc
/// resolves names (the static busybox of the other test images cannot), and it has bash
/// and perl.
pub fn debian_image() -> String {
    let script = workspace_root().join("packaging/tests/rootfs.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("run rootfs.sh");
    let tarball = success(&out, "packaging/tests/rootfs.sh")
        .trim()
        .to_string();
    let key = Path::new(&tarball)
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.strip_prefix("debian-"))
        .unwrap_or_else(|| panic!("rootfs.sh printed {tarball:?}"))
        .to_string();
    // The same name as packaging/tests/install.sh gives it.
    let image = format!("drover-ci/debian:{key}");
    let present = Command::new("docker")
        .args(["image", "inspect", &image])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        let out = Command::new("docker")
            .args(["import", &tarball, &image])
            .output()
            .expect("docker import");
        success(&out, &format!("docker import {tarball}"));
    }
    image
}

/// A node id unique to this test run, so tests sharing one engine never meet.
pub fn unique_node(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{name}-{}-{nanos}", std::process::id())
}

/// Polls `condition` until it holds, panicking with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Standard output of a command that must succeed; panics with both streams otherwise.
pub fn success(output: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    stdout
}

/// Standard error of a command that must fail; panics otherwise.
pub fn failure(output: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "{what} should have failed:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stderr
}

/// The workspace root, for paths such as `examples/seed`.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_path_buf()
}

/// Allocations of `service` that should run, as `drover status -o json` lists them; empty
/// while the service does not exist (yet).
pub fn allocations(process: &DroverProcess, service: &str) -> Vec<serde_json::Value> {
    let Some(status) = process.try_cli_json(&["status", service]) else {
        return Vec::new();
    };
    status["allocations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["desired"] == "run")
        .collect()
}

/// Sorted container ids of the healthy allocations of `service`.
pub fn healthy_containers(process: &DroverProcess, service: &str) -> Vec<String> {
    let mut ids: Vec<String> = allocations(process, service)
        .iter()
        .filter(|a| a["state"] == "healthy")
        .filter_map(|a| a["container_id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

/// Nodes of the healthy allocations of `service`.
pub fn healthy_nodes(coordinator: &DroverProcess, service: &str) -> Vec<String> {
    allocations(coordinator, service)
        .iter()
        .filter(|a| a["state"] == "healthy")
        .filter_map(|a| a["node"].as_str().map(str::to_string))
        .collect()
}

/// A test cluster: its temp dir (bind it first, so that it outlives the processes), the
/// coordinator, its agents and their node ids.
pub type Cluster = (
    tempfile::TempDir,
    DroverProcess,
    Vec<DroverProcess>,
    Vec<String>,
);

/// A coordinator and one agent per address in `ips` (node ids from `name`), each agent with
/// its own data dir under a fresh temp dir; returns once all are ready. Keep the temp dir
/// bound first so it outlives the processes (their logs are printed from it on failure).
pub fn nodes_cluster(name: &str, ips: &[&str]) -> Cluster {
    cluster(name, ips, false)
}

/// [`nodes_cluster`] whose first agent also serves the services' cluster addresses on this
/// host (as the one agent of a real host does).
pub fn nodes_cluster_with_cluster_ips(name: &str, ips: &[&str]) -> Cluster {
    cluster(name, ips, true)
}

fn cluster(name: &str, ips: &[&str], cluster_ips: bool) -> Cluster {
    build_images();
    let dir = tempfile::tempdir().expect("tempdir");
    let coordinator_dir = dir.path().join("coordinator");
    std::fs::create_dir_all(&coordinator_dir).expect("coordinator dir");
    let coordinator = DroverProcess::coordinator(&coordinator_dir);
    let mut agents = Vec::new();
    let mut nodes = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let agent_dir = dir.path().join(format!("agent{i}"));
        std::fs::create_dir_all(&agent_dir).expect("agent dir");
        let node = unique_node(&format!("{name}{i}"));
        let config = format!("cluster_ips = {}\n", cluster_ips && i == 0);
        agents.push(DroverProcess::agent_with(
            &agent_dir,
            ip,
            &node,
            &coordinator,
            &config,
        ));
        nodes.push(node);
    }
    wait_for(
        &format!("{} ready nodes", ips.len()),
        Duration::from_secs(60),
        || ready_nodes(&coordinator).len() == ips.len(),
    );
    (dir, coordinator, agents, nodes)
}

/// Ids of the nodes the coordinator lists as ready.
pub fn ready_nodes(coordinator: &DroverProcess) -> Vec<String> {
    coordinator
        .try_cli_json(&["nodes"])
        .and_then(|n| n.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|n| n["health"] == "ready")
        .filter_map(|n| n["id"].as_str().map(str::to_string))
        .collect()
}

/// One HTTP/1.0 GET to `address` (ip:port) from inside a fresh container on Docker's
/// default bridge (busybox's nc: its wget crashes when it resolves anything, even an
/// address); the whole response, or an empty string when there was none.
pub fn http_get_from_container(address: &str) -> String {
    let (ip, port) = address.rsplit_once(':').expect("ip:port");
    let request = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} {port}");
    let out = Command::new("docker")
        .args(["run", "--rm", "--entrypoint", "/bin/busybox"])
        .args(["drover-test-busybox:latest", "sh", "-c", &request])
        .output()
        .expect("docker run");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One HTTP/1.0 GET to `host:port` from inside the running container `container`, with
/// bash's /dev/tcp, so that `host` is resolved by the container's own resolver (glibc: the
/// container needs bash, as [`debian_image`]'s have); the whole response, or what failed.
pub fn http_get_in_container(container: &str, host: &str, port: u16) -> Result<String, String> {
    let script = format!(
        "exec 3<>/dev/tcp/{host}/{port} && printf 'GET / HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' >&3 && timeout 5 cat <&3"
    );
    let out = Command::new("docker")
        .args(["exec", container, "bash", "-c", &script])
        .output()
        .map_err(|e| format!("docker exec: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && text.contains("\r\n\r\n") {
        Ok(text)
    } else {
        Err(format!(
            "{host}:{port} from {container}: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            text
        ))
    }
}

/// One HTTP/1.0 GET to `address` (host:port); the body, or an empty string when the
/// connection failed or gave no answer within 5 s.
pub fn http_get(address: &str) -> String {
    try_http_get(address).unwrap_or_default()
}

/// One HTTP/1.0 GET to `address` (host:port): the body, or what went wrong.
pub fn try_http_get(address: &str) -> Result<String, String> {
    try_http_get_path(address, "/")
}

/// [`try_http_get`] of `path` (e.g. `/cgi-bin/call`).
pub fn try_http_get_path(address: &str, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    match response.split_once("\r\n\r\n") {
        Some((_, body)) => Ok(body.trim().to_string()),
        None if response.is_empty() => Err("closed without an answer".into()),
        None => Err(format!("not an HTTP answer: {response:?}")),
    }
}

/// A Drover manifest for service `web` on port 80 (container port 8080) running `image`
/// (`user-service` or `order-service`, which answer with their name), `replicas` of it,
/// with `extra` appended to its spec (e.g. a `traffic:` line, indented two spaces).
pub fn web_manifest(image: &str, replicas: u32, extra: &str) -> String {
    format!(
        "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  image: {image}\n  replicas: {replicas}\n  ports: [{{containerPort: 8080, servicePort: 80}}]\n{extra}"
    )
}

/// Applies [`web_manifest`] (`user-service:latest`, `replicas`, `extra`) through
/// `coordinator`, writing it in `dir`, and waits until `replicas` replicas are healthy.
pub fn apply_web(coordinator: &DroverProcess, dir: &Path, replicas: u32, extra: &str) {
    let manifest = dir.join("web.yaml");
    std::fs::write(
        &manifest,
        web_manifest("user-service:latest", replicas, extra),
    )
    .expect("write the web manifest");
    coordinator.apply(&manifest);
    wait_for(
        &format!("{replicas} healthy replicas of web"),
        Duration::from_secs(90),
        || healthy_nodes(coordinator, "web").len() == replicas as usize,
    );
}

/// A coordinator and one agent (on 127.0.0.1, node `unique_node(prefix)`) with their data
/// dirs in `dir`, for benchmarks.
pub fn single_node_cluster(dir: &Path, prefix: &str) -> (DroverProcess, DroverProcess) {
    let coordinator_dir = dir.join("coordinator");
    let agent_dir = dir.join("agent");
    for d in [&coordinator_dir, &agent_dir] {
        std::fs::create_dir_all(d).expect("create data dir");
    }
    let coordinator = DroverProcess::coordinator(&coordinator_dir);
    let agent = DroverProcess::agent(&agent_dir, &unique_node(prefix), &coordinator);
    (coordinator, agent)
}

/// The first argument a benchmark was given that parses as `T`, else `default`.
pub fn bench_arg<T: std::str::FromStr>(default: T) -> T {
    std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Answers over `connections` connections through `proxy`: (from `user-service`, from
/// `order-service`) — the stable and canary revisions of [`web_manifest`] tests.
pub fn revision_split(proxy: &str, connections: usize) -> (usize, usize) {
    let (mut stable, mut canary) = (0, 0);
    for _ in 0..connections {
        let body = http_get(proxy);
        if body.starts_with("order-service") {
            canary += 1;
        } else if body.starts_with("user-service") {
            stable += 1;
        }
    }
    (stable, canary)
}

/// A network partition of one loopback address from every other: iptables DROP rules in
/// both directions, removed by [`Partition::heal`] or when dropped (even on panic).
#[derive(Debug)]
pub struct Partition {
    rules: Vec<Vec<String>>,
}

impl Partition {
    /// Cuts `ip` (127.0.0.x) off from every other loopback address, both directions.
    pub fn isolate(ip: &str) -> Partition {
        let tag = format!("drover-test-{}-{ip}", std::process::id());
        let rule = |this: &str, other: &str| -> Vec<String> {
            let words = [
                "INPUT",
                "-i",
                "lo",
                this,
                ip,
                "!",
                other,
                ip,
                "-m",
                "comment",
                "--comment",
                &tag,
                "-j",
                "DROP",
            ];
            words.iter().map(|w| w.to_string()).collect()
        };
        let rules = vec![rule("-s", "-d"), rule("-d", "-s")];
        for r in &rules {
            let mut args = vec!["-I".to_string()];
            args.extend(r.iter().cloned());
            let out = Command::new("iptables")
                .args(&args)
                .output()
                .expect("run iptables");
            success(&out, &format!("iptables {}", args.join(" ")));
        }
        Partition { rules }
    }

    /// Removes the rules.
    pub fn heal(&mut self) {
        for r in self.rules.drain(..) {
            let mut args = vec!["-D".to_string()];
            args.extend(r);
            let _ = Command::new("iptables").args(&args).output();
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.heal();
    }
}

/// A client connecting in a loop through one proxy, counting answers (those `accept`
/// takes) and failures by kind; for benchmarks.
#[derive(Debug)]
pub struct LoopingClient {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    failed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Failures by what went wrong.
    errors: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoopingClient {
    /// Starts the loop through `proxy`.
    pub fn start(proxy: String, accept: fn(&str) -> bool) -> LoopingClient {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let errors = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let thread = {
            let (stop, ok, failed) = (
                std::sync::Arc::clone(&stop),
                std::sync::Arc::clone(&ok),
                std::sync::Arc::clone(&failed),
            );
            let errors = std::sync::Arc::clone(&errors);
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match try_http_get(&proxy) {
                        Ok(body) if accept(&body) => {
                            ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        outcome => {
                            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let what = match outcome {
                                Ok(body) => format!("answer without the service's name: {body:?}"),
                                Err(e) => e,
                            };
                            if let Ok(mut errors) = errors.lock() {
                                *errors.entry(what).or_default() += 1;
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        LoopingClient {
            stop,
            ok,
            failed,
            errors,
            thread: Some(thread),
        }
    }

    /// Stops the loop; returns (answered, failed, failures by kind).
    pub fn finish(mut self) -> (u64, u64, std::collections::BTreeMap<String, u64>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let errors = self.errors.lock().map(|e| e.clone()).unwrap_or_default();
        (
            self.ok.load(std::sync::atomic::Ordering::Relaxed),
            self.failed.load(std::sync::atomic::Ordering::Relaxed),
            errors,
        )
    }
}
