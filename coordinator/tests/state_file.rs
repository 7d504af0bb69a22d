//! The state file under the real binary: a lost store file is refused instead of starting an
//! empty cluster, a changed record stops the start naming it, a corrupted event does not break
//! the event listing, and the file is private to its owner.

mod common;

use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use drover_proto::model::WorkloadSpec;
use drover_proto::pb;
use tokio_stream::StreamExt as _;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn command(data_dir: &Path, port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_drover-coordinator"));
    command
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        // Gossip on the same port number over UDP: free while the TCP port is ours.
        .arg("--gossip-listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--http-listen")
        .arg("127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    command
}

fn spawn(data_dir: &Path, port: u16) -> Child {
    command(data_dir, port)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn drover-coordinator")
}

/// Runs the coordinator expecting it to refuse to start: its exit status and what it wrote
/// to stderr. Panics if it is still running after 20 s (it started).
fn refused_start(data_dir: &Path) -> (ExitStatus, String) {
    let mut child = command(data_dir, free_port())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn drover-coordinator");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the coordinator started on {}: {}",
                data_dir.display(),
                reader.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, reader.join().expect("stderr reader"))
}

/// SIGTERM, then waits: the store is closed cleanly, as by systemd.
fn stop(mut child: Child) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill -TERM");
    assert!(status.success(), "kill -TERM failed");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the coordinator did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn connect(port: u16, data_dir: &Path) -> common::Control {
    common::admin_when_up(&format!("127.0.0.1:{port}"), data_dir).await
}

/// Starts a coordinator on `data_dir`, applies `web` (3 replicas of `nginx:1.25`), stops it.
async fn cluster_with_web(data_dir: &Path) {
    let port = free_port();
    let child = spawn(data_dir, port);
    let mut client = connect(port, data_dir).await;
    let mut spec = WorkloadSpec::new("web", "nginx:1.25");
    spec.replicas = 3;
    client
        .apply(pb::ApplyRequest {
            cause: String::new(),
            services: Vec::new(),
            autoscalers: Vec::new(),
            workloads: vec![(&spec).into()],
            dry_run: false,
        })
        .await
        .expect("apply");
    stop(child);
}

/// XORs `mask` into the byte `offset` past every occurrence of `needle` in the file.
fn flip(path: &Path, needle: &[u8], offset: usize, mask: u8) {
    let mut bytes = std::fs::read(path).expect("read the store file");
    let at: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i + offset)
        .collect();
    assert!(!at.is_empty(), "{:?} not in the store file", needle);
    for i in at {
        bytes[i] ^= mask;
    }
    std::fs::write(path, bytes).expect("write the store file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_store_file_is_refused_until_started_fresh_on_purpose() {
    let dir = tempfile::tempdir().expect("tempdir");
    cluster_with_web(dir.path()).await;
    let store = dir.path().join("coordinator.redb");
    let marker = dir.path().join("coordinator.id");
    assert!(marker.exists(), "the marker is written with the store");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&store)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the store file holds env values");
    }

    std::fs::remove_file(&store).expect("lose the store file");
    let (status, stderr) = refused_start(dir.path());
    assert!(!status.success());
    assert!(
        stderr.contains("coordinator.redb is missing")
            && stderr.contains(&format!("remove {}", marker.display()))
            && stderr.contains("to start a new, empty cluster on purpose"),
        "{stderr}"
    );
    assert!(!store.exists(), "a refused start creates no store file");

    // Starting fresh on purpose: remove the marker.
    std::fs::remove_file(&marker).expect("remove the marker");
    let port = free_port();
    let child = spawn(dir.path(), port);
    let services = connect(port, dir.path())
        .await
        .list_services(pb::ListServicesRequest {})
        .await
        .expect("list")
        .into_inner()
        .services;
    assert!(services.is_empty(), "a new, empty cluster");
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_in_a_service_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    cluster_with_web(dir.path()).await;
    let store = dir.path().join("coordinator.redb");
    // replicas 3 → 7, in the service record and the revision's spec.
    flip(&store, br#"replicas\":3"#, 11, 0x04);
    let (status, stderr) = refused_start(dir.path());
    assert!(!status.success());
    assert!(
        stderr.contains("services/web") && stderr.contains("corrupted"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_listed_around_a_corrupted_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    cluster_with_web(dir.path()).await;
    // Event 1 is "coordinator started (boot 1)": boot → Boot.
    flip(
        &dir.path().join("coordinator.redb"),
        b"started (boot 1)",
        9,
        0x20,
    );

    let port = free_port();
    let child = spawn(dir.path(), port);
    let mut stream = connect(port, dir.path())
        .await
        .watch_events(pb::WatchEventsRequest {
            since: 0,
            follow: false,
        })
        .await
        .expect("watch events")
        .into_inner();
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        events.push(item.expect("one corrupted event must not break the listing"));
    }
    stop(child);
    assert_eq!(events[0].seq, 1);
    assert_eq!(events[0].kind, "store_event_corrupted");
    assert!(
        events[0].message.contains("event 1 is corrupted"),
        "{:?}",
        events[0]
    );
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.contains(&"service_created"), "{kinds:?}");
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("coordinator started (boot 2)")),
        "{events:?}"
    );
}
