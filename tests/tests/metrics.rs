//! The coordinator's HTTP side through the real binaries: `/healthz` and `/readyz` without
//! a token, `/metrics` over TLS with the API's certificate (checked against the cluster CA
//! in the data dir) and a read token, refused without one; the text passes Prometheus'
//! own linter (`promtool check metrics`, from Debian's prometheus package), carries the
//! cluster's state, and a real Prometheus server scrapes it as the README says to.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use drover_tests::{DroverProcess, build_images, healthy_nodes, success, unique_node, wait_for};

/// `curl` of `path` on the coordinator's HTTP port, verifying its certificate against the
/// cluster CA: (HTTP status, body).
fn get(coordinator: &DroverProcess, path: &str, token: Option<&str>) -> (u16, String) {
    let port = coordinator.http_port;
    let ca = coordinator.coordinator_dir.join("ca.crt");
    let mut command = Command::new("curl");
    command.args([
        "-s",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "--cacert",
        &ca.display().to_string(),
        "--resolve",
        &format!("coordinator.drover:{port}:127.0.0.1"),
        &format!("https://coordinator.drover:{port}{path}"),
    ]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = command.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `promtool check metrics` of `text`: its verdict and what it said.
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian's prometheus package; .ci/run installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn the_coordinator_serves_health_and_metrics_that_prometheus_accepts() {
    build_images();
    let dir = tempfile::tempdir().expect("tempdir");
    let coordinator_dir = dir.path().join("coordinator");
    std::fs::create_dir_all(&coordinator_dir).expect("dir");
    let coordinator = DroverProcess::coordinator(&coordinator_dir);
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).expect("dir");
    let agent = DroverProcess::agent_on(
        &agent_dir,
        "127.0.0.204",
        &unique_node("metrics"),
        &coordinator,
    );
    let manifest = dir.path().join("web.yaml");
    std::fs::write(
        &manifest,
        drover_tests::web_manifest("user-service:latest", 2, ""),
    )
    .expect("write manifest");
    coordinator.apply(&manifest);
    wait_for("two healthy replicas", Duration::from_secs(60), || {
        healthy_nodes(&coordinator, "web").len() == 2
    });

    assert_eq!(
        get(&coordinator, "/healthz", None),
        (200, "ok\n".to_string())
    );
    wait_for("the coordinator ready", Duration::from_secs(30), || {
        get(&coordinator, "/readyz", None).0 == 200
    });

    let (status, refusal) = get(&coordinator, "/metrics", None);
    assert_eq!(status, 401, "{refusal}");
    assert!(refusal.contains("needs a token"), "{refusal}");
    let (status, refusal) = get(&coordinator, "/metrics", Some("DRV1-nothing-here.at-all"));
    assert_eq!(status, 401, "{refusal}");

    let token = std::fs::read_to_string(coordinator.admin_token_file()).expect("admin token");
    let token = token.trim();
    let mut text = String::new();
    wait_for(
        "metrics with both replicas healthy",
        Duration::from_secs(30),
        || {
            let (status, body) = get(&coordinator, "/metrics", Some(token));
            text = body;
            status == 200
                && text.lines().any(|l| {
                    l == "drover_coordinator_workload_healthy_replicas{workload=\"web\"} 2"
                })
        },
    );
    for line in [
        "drover_coordinator_workloads 1",
        "drover_coordinator_connected_agents 1",
        "drover_coordinator_allocations{state=\"healthy\"} 2",
        "drover_coordinator_nodes{state=\"ready\"} 1",
        "drover_coordinator_workload_desired_replicas{workload=\"web\"} 2",
        "drover_coordinator_placements_total 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
    }
    assert!(
        text.contains(
            "drover_coordinator_api_requests_total{method=\"Control/Apply\",code=\"Ok\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("drover_coordinator_reconcile_duration_seconds_bucket"),
        "{text}"
    );
    let (ok, said) = promtool(&text);
    assert!(ok, "promtool check metrics: {said}\n{text}");

    // A token of the read role is enough.
    let out = coordinator.cli(&["token", "create", "scraper", "--role", "read"]);
    let read = success(&out, "drover token create scraper");
    let read = read.trim().to_string();
    assert!(read.starts_with("DRV1-"), "{read}");
    assert_eq!(get(&coordinator, "/metrics", Some(&read)).0, 200);

    // A real Prometheus server scrapes it as the README's job does, and answers a query.
    let prometheus = Prometheus::start(dir.path(), &coordinator, &read);
    let mut answer = String::new();
    wait_for(
        "Prometheus to have scraped the coordinator",
        Duration::from_secs(60),
        || {
            answer = prometheus.query("drover_coordinator_workload_healthy_replicas");
            answer.contains("\"workload\":\"web\"") && answer.contains(",\"2\"]")
        },
    );
    let targets = prometheus.get("/api/v1/targets");
    assert!(targets.contains("\"health\":\"up\""), "{targets}");
    drop(prometheus);
    drop(agent);
}

/// A Prometheus server (Debian's package) on a free port, scraping `coordinator` every
/// second over TLS with `token`; stopped when dropped.
struct Prometheus {
    child: std::process::Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &std::path::Path, coordinator: &DroverProcess, token: &str) -> Prometheus {
        let port = drover_tests::free_port();
        let token_file = dir.join("prometheus.token");
        std::fs::write(&token_file, token).expect("write token");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: drover-coordinator\n    scheme: https\n    \
                 tls_config: {{ca_file: {ca}, server_name: coordinator.drover}}\n    \
                 authorization: {{credentials_file: {token}}}\n    \
                 static_configs: [{{targets: ['127.0.0.1:{http}']}}]\n",
                ca = coordinator.coordinator_dir.join("ca.crt").display(),
                token = token_file.display(),
                http = coordinator.http_port,
            ),
        )
        .expect("write prometheus.yml");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run prometheus (Debian's prometheus package; .ci/run installs it)");
        Prometheus { child, port }
    }

    fn get(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{}{path}", self.port))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn query(&self, query: &str) -> String {
        self.get(&format!("/api/v1/query?query={query}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
