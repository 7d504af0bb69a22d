//! The daemons' HTTP side through the real binaries: `/healthz` and `/readyz` without a
//! token, `/metrics` over TLS (the coordinator's with the API's certificate, each agent's
//! with its node certificate as `agent.drover`, checked against the cluster CA in the data
//! dir) and a read token, refused without one; the text passes Prometheus' own linter
//! (`promtool check metrics`, from Debian's prometheus package), carries the cluster's
//! state and counts every proxied connection, and a real Prometheus server scrapes the
//! coordinator and a three-node cluster as the README says to.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use drover_tests::{DroverProcess, build_images, success, unique_node, wait_for};

/// `curl` of `path` on the coordinator's HTTP port, verifying its certificate against the
/// cluster CA: (HTTP status, body).
fn get(coordinator: &DroverProcess, path: &str, token: Option<&str>) -> (u16, String) {
    curl(coordinator, "coordinator.drover", "127.0.0.1", path, token)
}

/// `curl` of `path` on the HTTP port of `daemon` (a coordinator or an agent) at `ip`,
/// verifying its certificate as `name` against the cluster CA: (HTTP status, body).
fn curl(
    daemon: &DroverProcess,
    name: &str,
    ip: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let port = daemon.http_port;
    let ca = daemon.coordinator_dir.join("ca.crt");
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
        &format!("{name}:{port}:{ip}"),
        &format!("https://{name}:{port}{path}"),
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
    drover_tests::apply_web(&coordinator, dir.path(), 2, "");

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
    let job = Job {
        name: "drover-coordinator",
        server_name: "coordinator.drover",
        targets: vec![format!("127.0.0.1:{}", coordinator.http_port)],
    };
    let prometheus = Prometheus::start(dir.path(), &coordinator, &read, &[job]);
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

/// One scrape job: HTTPS targets verified as `server_name`.
struct Job {
    name: &'static str,
    server_name: &'static str,
    targets: Vec<String>,
}

/// A Prometheus server (Debian's package) on a free port, scraping `jobs` every second over
/// TLS (the CA of `coordinator`'s cluster) with `token`; stopped when dropped.
struct Prometheus {
    child: std::process::Child,
    port: u16,
}

impl Prometheus {
    fn start(
        dir: &std::path::Path,
        coordinator: &DroverProcess,
        token: &str,
        jobs: &[Job],
    ) -> Prometheus {
        let port = drover_tests::free_port();
        let token_file = dir.join("prometheus.token");
        std::fs::write(&token_file, token).expect("write token");
        let config = dir.join("prometheus.yml");
        let mut text = "global: {scrape_interval: 1s}\nscrape_configs:\n".to_string();
        for job in jobs {
            let targets: Vec<String> = job.targets.iter().map(|t| format!("'{t}'")).collect();
            text.push_str(&format!(
                "  - job_name: {name}\n    scheme: https\n    \
                 tls_config: {{ca_file: {ca}, server_name: {server}}}\n    \
                 authorization: {{credentials_file: {token}}}\n    \
                 static_configs: [{{targets: [{targets}]}}]\n",
                name = job.name,
                server = job.server_name,
                ca = coordinator.coordinator_dir.join("ca.crt").display(),
                token = token_file.display(),
                targets = targets.join(", "),
            ));
        }
        std::fs::write(&config, text).expect("write prometheus.yml");
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
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", "-G", "--data-urlencode"])
            .arg(format!("query={query}"))
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the sample `series` (name and labels, exactly as exposed) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split(' ').next()?.parse().ok()
    })
}

#[test]
fn agents_count_every_connection_and_prometheus_scrapes_the_cluster() {
    build_images();
    let dir = tempfile::tempdir().expect("tempdir");
    let coordinator_dir = dir.path().join("coordinator");
    std::fs::create_dir_all(&coordinator_dir).expect("dir");
    let coordinator = DroverProcess::coordinator(&coordinator_dir);
    let ips = ["127.0.0.205", "127.0.0.206", "127.0.0.207"];
    let agents: Vec<DroverProcess> = ips
        .iter()
        .map(|ip| {
            let agent_dir = dir.path().join(ip);
            std::fs::create_dir_all(&agent_dir).expect("dir");
            DroverProcess::agent_on(&agent_dir, ip, &unique_node("agentmetrics"), &coordinator)
        })
        .collect();
    let health = "  health: {http: {path: /, port: 8080}, interval: 1s}\n";
    drover_tests::apply_web(&coordinator, dir.path(), 3, health);
    let token = std::fs::read_to_string(coordinator.admin_token_file()).expect("admin token");
    let token = token.trim().to_string();
    let (agent, ip) = (&agents[0], ips[0]);
    let scrape =
        |token: Option<&str>| curl(agent, drover_security::AGENT_NAME, ip, "/metrics", token);

    assert_eq!(
        curl(agent, drover_security::AGENT_NAME, ip, "/healthz", None),
        (200, "ok\n".to_string())
    );
    wait_for("the agent ready", Duration::from_secs(30), || {
        curl(agent, drover_security::AGENT_NAME, ip, "/readyz", None).0 == 200
    });
    let (status, refusal) = scrape(None);
    assert_eq!(status, 401, "{refusal}");
    assert!(refusal.contains("needs a token"), "{refusal}");
    // The agent's join token is no reader.
    let join = std::fs::read_to_string(coordinator.agent_token_file()).expect("agent token");
    let (status, refusal) = scrape(Some(join.trim()));
    assert_eq!(status, 403, "{refusal}");
    // The cluster's tokens reach the agent over its link; a read token made now does too.
    let out = coordinator.cli(&["token", "create", "agent-scraper", "--role", "read"]);
    let read = success(&out, "drover token create agent-scraper")
        .trim()
        .to_string();
    let mut text = String::new();
    wait_for(
        "the agent's metrics with a read token",
        Duration::from_secs(30),
        || {
            let (status, body) = scrape(Some(&read));
            text = body;
            status == 200
        },
    );
    assert_eq!(scrape(Some(&token)).0, 200, "the admin token reads too");
    let (ok, said) = promtool(&text);
    assert!(ok, "promtool check metrics: {said}\n{text}");
    for wanted in [
        "drover_agent_gossip_members 4",
        "drover_agent_coordinator_connected 1",
        "drover_agent_proxy_connect_duration_seconds_bucket{le=\"+Inf\",service=\"web\"}",
        "drover_agent_gossip_datagrams_total{direction=\"in\"}",
    ] {
        assert!(text.contains(wanted), "{wanted:?} in\n{text}");
    }
    // Every replica is counted once, on its own node; probes pass.
    let mut healthy = 0.0;
    for (agent, ip) in agents.iter().zip(ips) {
        let (status, body) = curl(
            agent,
            drover_security::AGENT_NAME,
            ip,
            "/metrics",
            Some(&read),
        );
        assert_eq!(status, 200, "{body}");
        healthy += sample(
            &body,
            "drover_agent_replicas{workload=\"web\",state=\"healthy\"}",
        )
        .unwrap_or(0.0);
    }
    assert_eq!(healthy, 3.0, "healthy replicas over the three agents");
    // Probes are counted where the replicas run.
    wait_for("readiness probes counted", Duration::from_secs(30), || {
        agents.iter().zip(ips).any(|(agent, ip)| {
            let (_, body) = curl(agent, drover_security::AGENT_NAME, ip, "/metrics", Some(&read));
            sample(
                &body,
                "drover_agent_health_probes_total{workload=\"web\",check=\"readiness\",result=\"passed\"}",
            )
            .is_some_and(|n| n > 0.0)
        })
    });

    // Exactly N connections through this node's proxy move its counter by exactly N.
    let accepted = "drover_agent_proxy_connections_accepted_total{service=\"web\"}";
    let counted = |token: &str| {
        let (status, body) = scrape(Some(token));
        assert_eq!(status, 200, "{body}");
        (sample(&body, accepted).unwrap_or(0.0), body)
    };
    let (before, _) = counted(&read);
    const N: usize = 37;
    let proxy = format!("{ip}:80");
    for i in 0..N {
        let body =
            drover_tests::try_http_get(&proxy).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert!(body.starts_with("user-service"), "{body}");
    }
    let mut after = 0.0;
    wait_for("the counter to move by N", Duration::from_secs(10), || {
        after = counted(&read).0;
        after >= before + N as f64
    });
    // And no further: published totals settle at exactly that.
    std::thread::sleep(Duration::from_secs(2));
    let (settled, body) = counted(&read);
    assert_eq!(
        (after, settled),
        (before + N as f64, before + N as f64),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "drover_agent_proxy_connections_active{service=\"web\"}"
        ),
        Some(0.0),
        "{body}"
    );
    let connects = sample(
        &body,
        "drover_agent_proxy_connect_duration_seconds_count{service=\"web\"}",
    )
    .expect("connect latency count");
    assert!(connects >= before + N as f64, "{connects} connects\n{body}");
    let received = sample(
        &body,
        "drover_agent_proxy_received_bytes_total{service=\"web\"}",
    )
    .expect("bytes received");
    assert!(
        received >= (N * "GET / HTTP/1.0\r\n\r\n".len()) as f64,
        "{body}"
    );

    // A Prometheus server scrapes the three agents and answers the proxies' connection rate.
    let job = Job {
        name: "drover-agents",
        server_name: drover_security::AGENT_NAME,
        targets: agents
            .iter()
            .zip(ips)
            .map(|(a, ip)| format!("{ip}:{}", a.http_port))
            .collect(),
    };
    let prometheus = Prometheus::start(dir.path(), &coordinator, &read, &[job]);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Traffic through every node meanwhile, so that the rate is above zero.
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for ip in ips {
                    let _ = drover_tests::try_http_get(&format!("{ip}:80"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let mut answer = String::new();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(
                "Prometheus to answer the proxies' connection rate on every node",
                Duration::from_secs(60),
                || {
                    answer = prometheus.query(
                        "sum by (instance, service) (rate(drover_agent_proxy_connections_accepted_total[5s])) > 0",
                    );
                    ips.iter()
                        .all(|ip| answer.contains(&format!("\"instance\":\"{ip}:")))
                        && answer.contains("\"service\":\"web\"")
                },
            );
        }));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    });
    let targets = prometheus.get("/api/v1/targets");
    assert_eq!(targets.matches("\"health\":\"up\"").count(), 3, "{targets}");
    drop(prometheus);
    drop(agents);
}
