//! `drover logs` through the real binaries: a workload's replicas on two nodes write lines;
//! `drover logs -f` shows every replica's, each prefixed with its allocation, and goes on
//! with a replica whose container was killed and restarted, sending no line twice;
//! `--tail` and an allocation's own name do what they say; a name that is nothing is
//! refused.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_tests::{DroverProcess, allocations, build_images, unique_node, wait_for};

/// A replica that says it started, then counts.
const TICKER: &str = "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {name: ticker}\nspec:\n  \
    image: drover-test-busybox:latest\n  replicas: 2\n  \
    command: [/bin/busybox, sh, -c, 'echo started; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done']\n";

/// `drover logs ARGS` running, its standard output collected line by line.
struct Following {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Following {
    fn start(coordinator: &DroverProcess, args: &[&str]) -> Following {
        let mut child = Command::new(drover_tests::binary("drover"))
            .arg("logs")
            .args(args)
            .env("DROVER_COORDINATOR", coordinator.url())
            .env("DROVER_TOKEN_FILE", coordinator.admin_token_file())
            .env_remove("DROVER_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run drover logs");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                collected.lock().expect("lines").push(line);
            }
        });
        Following { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Lines of `alloc`, without their prefix.
    fn of(&self, alloc: &str) -> Vec<String> {
        let prefix = format!("[{alloc}] ");
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn logs_follow_every_replica_across_a_container_restart() {
    build_images();
    let dir = tempfile::tempdir().expect("tempdir");
    let coordinator_dir = dir.path().join("coordinator");
    std::fs::create_dir_all(&coordinator_dir).expect("dir");
    let coordinator = DroverProcess::coordinator(&coordinator_dir);
    let agents: Vec<DroverProcess> = ["127.0.0.208", "127.0.0.209"]
        .iter()
        .map(|ip| {
            let agent_dir = dir.path().join(ip);
            std::fs::create_dir_all(&agent_dir).expect("dir");
            DroverProcess::agent_on(&agent_dir, ip, &unique_node("logs"), &coordinator)
        })
        .collect();
    wait_for("both nodes ready", Duration::from_secs(30), || {
        drover_tests::ready_nodes(&coordinator).len() == 2
    });
    let manifest = dir.path().join("ticker.yaml");
    std::fs::write(&manifest, TICKER).expect("write");
    coordinator.apply(&manifest);
    let mut running = Vec::new();
    wait_for("two running replicas", Duration::from_secs(60), || {
        running = allocations(&coordinator, "ticker")
            .into_iter()
            .filter(|a| a["state"] == "running" || a["state"] == "healthy")
            .collect();
        running.len() == 2
    });
    let ids: Vec<String> = running
        .iter()
        .map(|a| a["id"].as_str().expect("id").to_owned())
        .collect();

    let follow = Following::start(&coordinator, &["ticker", "-f"]);
    wait_for("lines from both replicas", Duration::from_secs(30), || {
        ids.iter()
            .all(|id| follow.of(id).iter().any(|l| l.starts_with("tick ")))
    });
    for id in &ids {
        assert_eq!(
            follow.of(id).first().map(String::as_str),
            Some("started"),
            "{id}"
        );
    }

    // Kill one replica's process: its agent starts the container again, and the lines go on.
    let killed = &running[0];
    let (killed_id, container) = (
        killed["id"].as_str().expect("id").to_owned(),
        killed["container_id"]
            .as_str()
            .expect("container")
            .to_owned(),
    );
    let out = Command::new("docker")
        .args(["kill", &container])
        .output()
        .expect("docker kill");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the killed replica's second start in the followed output",
        Duration::from_secs(60),
        || {
            follow
                .of(&killed_id)
                .iter()
                .filter(|l| *l == "started")
                .count()
                == 2
        },
    );
    wait_for("ticks after the restart", Duration::from_secs(30), || {
        let lines = follow.of(&killed_id);
        let restart = lines.iter().rposition(|l| l == "started").unwrap_or(0);
        lines[restart..].iter().any(|l| l == "tick 2")
    });
    // Nothing sent twice: each run's ticks once, in order.
    let lines = follow.of(&killed_id);
    let restart = lines.iter().rposition(|l| l == "started").expect("restart");
    for run in [&lines[..restart], &lines[restart..]] {
        let ticks: Vec<&String> = run.iter().filter(|l| l.starts_with("tick ")).collect();
        for (i, tick) in ticks.iter().enumerate() {
            assert_eq!(**tick, format!("tick {i}"), "{lines:?}");
        }
    }
    // The other replica went on meanwhile.
    let other = &ids[1 - ids.iter().position(|i| *i == killed_id).expect("killed")];
    assert!(
        follow.of(other).iter().filter(|l| *l == "started").count() == 1,
        "{:?}",
        follow.of(other)
    );
    drop(follow);

    // --tail: the last lines of each replica, and the command ends.
    let out = coordinator.cli(&["logs", "ticker", "--tail", "2"]);
    let text = drover_tests::success(&out, "drover logs ticker --tail 2");
    for id in &ids {
        let of = text
            .lines()
            .filter(|l| l.starts_with(&format!("[{id}] ")))
            .count();
        assert_eq!(of, 2, "{id} in\n{text}");
    }
    // One allocation by its id: its lines alone, with no prefix.
    let out = coordinator.cli(&["logs", other, "--tail", "3"]);
    let text = drover_tests::success(&out, "drover logs ALLOC");
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().all(|l| l.starts_with("tick ")), "{text}");

    let out = coordinator.cli(&["logs", "nothing-here"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("service, workload or allocation \"nothing-here\" not found"),
        "{said}"
    );
    drop(agents);
}
