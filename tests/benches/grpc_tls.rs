//! The cost of mutual TLS on the coordinator's API: one coordinator started secure (the
//! default: mTLS, tokens) and one with `insecure = true`, both as processes (release
//! build). Measures a small unary call (`ListNodes`) on an open connection, and the setup
//! of a new session the way the `drover` command makes one (secure: TLS pinned to the CA,
//! a join for a client certificate, then a second mTLS connection; insecure: one plain
//! connection). Prints figures; it is not a test.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! cargo bench -p drover-tests --bench grpc_tls          # -- N calls per case (default 2000)
//! ```

use std::time::{Duration, Instant};

use drover_proto::pb;
use drover_security::client::{self, OperatorAuth};
use drover_tests::DroverProcess;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let p50 = percentile(&samples, 0.5);
    println!(
        "  {name:<34} n {:>5}  p50 {:>8.1} µs  p90 {:>8.1} µs  p99 {:>8.1} µs",
        samples.len(),
        p50.as_secs_f64() * 1e6,
        percentile(&samples, 0.9).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
    );
    p50
}

fn main() {
    let calls: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    let sessions = (calls / 10).max(20);
    drover_security::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let secure_dir = dir.path().join("secure");
    let insecure_dir = dir.path().join("insecure");
    for d in [&secure_dir, &insecure_dir] {
        std::fs::create_dir_all(d).expect("dir");
    }
    let secure = DroverProcess::coordinator(&secure_dir);
    let insecure = DroverProcess::coordinator_insecure(&insecure_dir);
    let token: drover_security::Token = std::fs::read_to_string(secure.admin_token_file())
        .expect("admin token")
        .parse()
        .expect("token");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let address = |p: &DroverProcess| format!("{}:{}", p.host, p.port);

    println!("gRPC with mTLS vs without: two coordinators as processes, release build");
    println!(
        "call: ListNodes (empty cluster) on one open connection; session: what `drover` does per run"
    );
    let cases = [
        ("insecure", address(&insecure), OperatorAuth::Insecure),
        ("mTLS + token", address(&secure), OperatorAuth::Token(token)),
    ];
    let mut medians = Vec::new();
    for (name, address, auth) in &cases {
        let (call, session) = runtime.block_on(async {
            let mut control = client::operator(address, auth).await.expect("session");
            // Warm up the connection and the server's code paths.
            for _ in 0..100 {
                control
                    .list_nodes(pb::ListNodesRequest {})
                    .await
                    .expect("call");
            }
            let mut call = Vec::with_capacity(calls);
            for _ in 0..calls {
                let start = Instant::now();
                control
                    .list_nodes(pb::ListNodesRequest {})
                    .await
                    .expect("call");
                call.push(start.elapsed());
            }
            let mut session = Vec::with_capacity(sessions);
            for _ in 0..sessions {
                let start = Instant::now();
                let mut control = client::operator(address, auth).await.expect("session");
                control
                    .list_nodes(pb::ListNodesRequest {})
                    .await
                    .expect("call");
                session.push(start.elapsed());
            }
            (call, session)
        });
        let c = summary(&format!("{name}: call"), call);
        let s = summary(&format!("{name}: new session + call"), session);
        medians.push((c, s));
    }
    let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64();
    println!(
        "ratios (mTLS / insecure, p50): call {:.2}x, new session {:.2}x",
        ratio(medians[0].0, medians[1].0),
        ratio(medians[0].1, medians[1].1)
    );
    for (p, name) in [(&secure, "secure"), (&insecure, "insecure")] {
        if let Some(pid) = p.pid() {
            let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
                })
                .unwrap_or_else(|| "?".into());
            println!("coordinator RSS ({name}): {rss} kB");
        }
    }
}
