//! Harness for end-to-end tests: runs Drover's real binaries as child processes, waits on
//! conditions with deadlines, and prints each process's log when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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

/// A coordinator process with its own data dir and port; its log goes to a file that is
/// printed when the test fails.
#[derive(Debug)]
pub struct CoordinatorProcess {
    child: Option<Child>,
    /// Data directory (kept across restarts).
    pub data_dir: PathBuf,
    /// gRPC port.
    pub port: u16,
    /// Gossip (UDP) port.
    pub gossip_port: u16,
    log: PathBuf,
}

impl CoordinatorProcess {
    /// Starts `drover-coordinator` on a free port with `data_dir`.
    pub fn start(data_dir: &Path) -> CoordinatorProcess {
        let mut process = CoordinatorProcess {
            child: None,
            data_dir: data_dir.to_path_buf(),
            port: free_port(),
            gossip_port: free_udp_port(),
            log: data_dir.join("coordinator.log"),
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open coordinator log");
        let child = Command::new(binary("drover-coordinator"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--gossip-listen")
            .arg(format!("127.0.0.1:{}", self.gossip_port))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn drover-coordinator");
        self.child = Some(child);
        wait_for(
            &format!("coordinator on port {}", self.port),
            Duration::from_secs(20),
            || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
        );
    }

    /// The URL the CLI takes with `--coordinator`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then start again on the same port and data dir.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.spawn();
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
            .output()
            .expect("run drover")
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("---- coordinator log ({}) ----\n{log}", self.log.display());
        }
    }
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
