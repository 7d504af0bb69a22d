//! A coordinator killed with SIGKILL in the middle of a stream of applies loses none that it
//! acknowledged: the real binary, a real store file, real signals.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use drover_proto::model::WorkloadSpec;
use drover_proto::pb;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn spawn(data_dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_drover-coordinator"))
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
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn drover-coordinator")
}

async fn connect(port: u16, data_dir: &Path) -> common::Control {
    common::admin_when_up(&format!("127.0.0.1:{port}"), data_dir).await
}

fn spec(i: usize) -> pb::WorkloadSpec {
    let mut spec = WorkloadSpec::new(format!("svc-{i}"), format!("image-{i}"));
    spec.replicas = (i % 5) as u32;
    (&spec).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut acked: Vec<String> = Vec::new();
    let mut next = 0usize;
    // Kill at different moments of the apply stream.
    for (round, kill_after) in [150u64, 420, 75, 900].into_iter().enumerate() {
        let mut child = spawn(dir.path(), port);
        let mut client = connect(port, dir.path()).await;
        let applying = async {
            loop {
                let name = format!("svc-{next}");
                match client
                    .apply(pb::ApplyRequest {
                        cause: String::new(),
                        services: Vec::new(),
                        autoscalers: Vec::new(),
                        workloads: vec![spec(next)],
                        dry_run: false,
                    })
                    .await
                {
                    Ok(_) => acked.push(name),
                    Err(_) => return,
                }
                next += 1;
            }
        };
        tokio::select! {
            _ = applying => {}
            _ = tokio::time::sleep(Duration::from_millis(kill_after)) => {}
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        assert!(
            !acked.is_empty(),
            "round {round}: no apply was acknowledged"
        );
    }

    let mut child = spawn(dir.path(), port);
    let mut client = connect(port, dir.path()).await;
    let stored: std::collections::BTreeSet<String> = client
        .list_services(pb::ListServicesRequest {})
        .await
        .expect("list")
        .into_inner()
        .services
        .into_iter()
        .map(|s| s.name)
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|n| !stored.contains(*n)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged applies lost after SIGKILL: {lost:?}",
        lost.len(),
        acked.len()
    );
    // Spot-check content, not only names.
    let last = acked.last().expect("acked");
    let status = client
        .get_service(pb::GetServiceRequest { name: last.clone() })
        .await
        .expect("get last")
        .into_inner();
    let index: usize = last.trim_start_matches("svc-").parse().expect("index");
    assert_eq!(
        status.summary.expect("summary").image,
        format!("image-{index}")
    );
    child.kill().expect("kill");
    child.wait().expect("reap");
}
