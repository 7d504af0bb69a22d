//! Cluster DNS throughput and latency: a coordinator and one agent as processes (release
//! build), the agent serving cluster addresses and the cluster DNS on the service network's
//! `.10` address, port 53, with 50 Kubernetes ClusterIP Services applied; against dnsmasq,
//! started by the benchmark, answering the same 50 names as A records from a hosts file.
//! dnsperf loads each server in alternating rounds (which server goes first alternates):
//!
//! - throughput: `dnsperf -c 4 -q 100 -l 5` over a data file of the 50 names
//!   `svc-N.default.svc.cluster.local A` in 20 shuffles (1,000 lines, looped), queries per
//!   second, answers by code, the server's CPU time per query from /proc;
//! - latency: `dnsperf -c 1 -q 1 -l 3 -v` (one query outstanding), p50 and p99 of the
//!   per-query latencies dnsperf prints;
//!
//! then one TCP throughput round per server, and a forwarded name (`localhost A`, which the
//! agent relays to the host's resolver) at one query outstanding and at most 500 a second,
//! through Drover and straight to that resolver.
//!
//! Run with `cargo build --release --workspace --bins && cargo bench -p drover-tests
//! --bench dns [-- ROUNDS]` (6 rounds by default); needs root (cluster addresses on `lo`),
//! Docker (the harness), and `dnsperf` and `dnsmasq` (`apt-get install dnsperf
//! dnsmasq-base`): without them it says so and exits.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use drover_tests::{free_udp_port, nodes_cluster_with_cluster_ips, wait_for};

const SERVICES: usize = 50;
const DOMAIN: &str = "default.svc.cluster.local";
const DNSMASQ_IP: &str = "127.0.0.199";
const AGENT_IP: &str = "127.0.0.198";
const DEFAULT_ROUNDS: usize = 6;
const LOAD: [&str; 6] = ["-c", "4", "-q", "100", "-l", "5"];
const LATENCY: [&str; 7] = ["-c", "1", "-q", "1", "-l", "3", "-v"];
/// The forwarded name's runs: one outstanding, at most 100 a second (the host's resolver is
/// not ours to load), a lost query given up after 1 s.
const FORWARDED: [&str; 11] = [
    "-c", "1", "-q", "1", "-l", "3", "-Q", "100", "-t", "1", "-v",
];

/// dnsmasq as a child process, killed when dropped (even on panic).
#[derive(Debug)]
struct Dnsmasq {
    child: Child,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one dnsperf run reported.
#[derive(Debug, Default, Clone)]
struct Run {
    sent: u64,
    completed: u64,
    lost: u64,
    noerror: u64,
    qps: f64,
    /// The response codes line, as dnsperf prints it.
    codes: String,
    /// How long the run took, seconds.
    seconds: f64,
    /// Average response size, bytes.
    response_bytes: u64,
    /// Per-query latencies (verbose runs), seconds.
    latencies: Vec<f64>,
    /// CPU time of the server process over the run, seconds.
    cpu: f64,
    /// CPU time of dnsperf, seconds.
    load_cpu: f64,
}

fn field<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .map(str::trim)
}

fn first_number<T: std::str::FromStr>(text: Option<&str>) -> Option<T> {
    text.and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn parse(stdout: &str) -> Run {
    let noerror = field(stdout, "Response codes:")
        .and_then(|codes| {
            codes
                .split(',')
                .find_map(|c| c.trim().strip_prefix("NOERROR "))
                .and_then(|n| first_number(Some(n)))
        })
        .unwrap_or(0);
    let response_bytes = field(stdout, "Average packet size:")
        .and_then(|s| s.split_once("response "))
        .and_then(|(_, r)| first_number(Some(r)))
        .unwrap_or(0);
    let latencies = stdout
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    Run {
        sent: first_number(field(stdout, "Queries sent:")).unwrap_or(0),
        completed: first_number(field(stdout, "Queries completed:")).unwrap_or(0),
        lost: first_number(field(stdout, "Queries lost:")).unwrap_or(0),
        noerror,
        qps: first_number(field(stdout, "Queries per second:")).unwrap_or(0.0),
        codes: field(stdout, "Response codes:").unwrap_or("").to_string(),
        seconds: first_number(field(stdout, "Run time (s):")).unwrap_or(0.0),
        response_bytes,
        latencies,
        cpu: 0.0,
        load_cpu: 0.0,
    }
}

/// A DNS server under test: where it answers and which process to charge CPU to.
#[derive(Debug)]
struct Server {
    name: &'static str,
    address: String,
    port: u16,
    pid: u32,
}

fn dnsperf(server: &Server, data: &Path, args: &[&str]) -> Run {
    let port = server.port.to_string();
    let before = cpu_seconds(server.pid);
    let children_before = children_cpu_seconds();
    let out = Command::new("dnsperf")
        .args(["-s", &server.address, "-p", &port, "-d"])
        .arg(data)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .expect("run dnsperf");
    let mut run = parse(&String::from_utf8_lossy(&out.stdout));
    run.load_cpu = children_cpu_seconds() - children_before;
    // dnsmasq answers TCP in forked children: let it reap them, so they count.
    std::thread::sleep(Duration::from_millis(100));
    run.cpu = cpu_seconds(server.pid) - before;
    run
}

/// utime, stime, cutime and cstime of `pid` (its threads, and its children it has
/// reaped), seconds; 0 when there is no such process.
fn cpu_seconds(pid: u32) -> f64 {
    let [utime, stime, cutime, cstime] = stat_times(&pid.to_string());
    utime + stime + cutime + cstime
}

/// CPU time of this process's reaped children (the dnsperf runs), seconds.
fn children_cpu_seconds() -> f64 {
    let [_, _, cutime, cstime] = stat_times("self");
    cutime + cstime
}

fn stat_times(pid: &str) -> [f64; 4] {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14-17 of the line; `rest` starts at field 3.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
            / clock_ticks()
    };
    [ticks(11), ticks(12), ticks(13), ticks(14)]
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        command_line("getconf", &["CLK_TCK"])
            .parse()
            .unwrap_or(100.0)
    })
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Where `program` is: on PATH, or in /usr/sbin (dnsmasq, for users without it on PATH).
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn name(i: usize) -> String {
    format!("svc-{i}.{DOMAIN}")
}

/// A small deterministic generator for the shuffles (xorshift64).
fn shuffled(rounds: usize) -> Vec<usize> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut all = Vec::new();
    for _ in 0..rounds {
        let mut order: Vec<usize> = (0..SERVICES).collect();
        for i in (1..order.len()).rev() {
            let j = (next() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        all.extend(order);
    }
    all
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// The cluster DNS address of a /24 service network: its `.10`.
fn cluster_dns(service_network: &str) -> String {
    let base = service_network
        .split('/')
        .next()
        .expect("a service network");
    let (prefix, _) = base.rsplit_once('.').expect("an IPv4 network");
    format!("{prefix}.10")
}

/// Latency summary of the pooled per-query latencies: (p50, p99) in µs.
fn p50_p99(runs: &[Run]) -> (f64, f64) {
    let mut all: Vec<f64> = runs.iter().flat_map(|r| r.latencies.clone()).collect();
    all.sort_by(f64::total_cmp);
    (percentile(&all, 0.50) * 1e6, percentile(&all, 0.99) * 1e6)
}

fn noerror_share(runs: &[Run]) -> f64 {
    let noerror: u64 = runs.iter().map(|r| r.noerror).sum();
    let sent: u64 = runs.iter().map(|r| r.sent).sum();
    if sent == 0 {
        return 0.0;
    }
    100.0 * noerror as f64 / sent as f64
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS)
        .max(1);
    let Some(_dnsperf) = find_program("dnsperf") else {
        println!("dns: skipped: dnsperf is not installed (apt-get install dnsperf)");
        return;
    };
    let Some(dnsmasq_bin) = find_program("dnsmasq") else {
        println!("dns: skipped: dnsmasq is not installed (apt-get install dnsmasq-base)");
        return;
    };
    drover_tests::require_binaries("dns");

    println!(
        "cluster DNS benchmark (release build): the agent's DNS against dnsmasq, dnsperf as the load"
    );
    println!(
        "machine: nproc {}, {}",
        command_line("nproc", &[]),
        command_line("uname", &["-srm"])
    );
    let dnsperf_version = command_line("sh", &["-c", "dnsperf -h 2>&1 | grep -i '^Version'"]);
    let dnsmasq_version = command_line(dnsmasq_bin.to_str().expect("utf-8 path"), &["--version"]);
    let dnsmasq_version = dnsmasq_version.lines().next().unwrap_or("").to_string();
    println!("dnsperf {dnsperf_version}; {dnsmasq_version}");

    let (dir, coordinator, agents, _nodes) = nodes_cluster_with_cluster_ips("dnsb", &[AGENT_IP]);
    let agent_pid = agents[0].pid().expect("the agent runs");
    let dns = cluster_dns(&coordinator.service_network);

    // 50 ClusterIP Services, no workloads: their names have the services' cluster addresses.
    let manifest: String = (0..SERVICES)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}}}\nspec:\n  selector: {{app: svc-{i}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n");
    let manifest_path = dir.path().join("services.yaml");
    std::fs::write(&manifest_path, manifest).expect("write the services");
    coordinator.apply(&manifest_path);

    // Data files: every name once (the readiness check), and the load: 20 shuffles.
    let once = dir.path().join("names-once.txt");
    let once_text: String = (0..SERVICES).map(|i| format!("{} A\n", name(i))).collect();
    std::fs::write(&once, once_text).expect("write data file");
    let data = dir.path().join("names.txt");
    let data_text: String = shuffled(20)
        .into_iter()
        .map(|i| format!("{} A\n", name(i)))
        .collect();
    std::fs::write(&data, data_text).expect("write data file");
    let forwarded = dir.path().join("forwarded.txt");
    std::fs::write(&forwarded, "localhost A\n").expect("write data file");

    let drover = Server {
        name: "drover",
        address: dns.clone(),
        port: 53,
        pid: agent_pid,
    };
    let check = ["-n", "1", "-t", "1"];
    wait_for(
        "the cluster DNS answering all 50 names",
        Duration::from_secs(120),
        || dnsperf(&drover, &once, &check).noerror == SERVICES as u64,
    );

    // The anchor: dnsmasq with the same names in a hosts file (addresses as Drover gave them
    // would do as well; any 50 distinct ones answer the same way).
    let hosts = dir.path().join("hosts");
    let hosts_text: String = (0..SERVICES)
        .map(|i| format!("10.199.{}.{} {}\n", i / 250, i % 250 + 1, name(i)))
        .collect();
    std::fs::write(&hosts, hosts_text).expect("write the hosts file");
    let dnsmasq_port = free_udp_port();
    let log = std::fs::File::create(dir.path().join("dnsmasq.log")).expect("dnsmasq log");
    let mut dnsmasq = Dnsmasq {
        child: Command::new(&dnsmasq_bin)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--cache-size=1000",
                "--log-facility=-",
                "--user=root",
            ])
            .arg(format!("--addn-hosts={}", hosts.display()))
            .arg(format!("--listen-address={DNSMASQ_IP}"))
            .arg(format!("--port={dnsmasq_port}"))
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start dnsmasq"),
    };
    let anchor = Server {
        name: "dnsmasq",
        address: DNSMASQ_IP.to_string(),
        port: dnsmasq_port,
        pid: dnsmasq.child.id(),
    };
    wait_for(
        "dnsmasq answering all 50 names",
        Duration::from_secs(30),
        || {
            if let Ok(Some(status)) = dnsmasq.child.try_wait() {
                panic!("dnsmasq exited: {status}");
            }
            dnsperf(&anchor, &once, &check).noerror == SERVICES as u64
        },
    );

    println!(
        "drover:  the agent's DNS on {dns}:53 (pid {agent_pid}), 50 ClusterIP services from the route policy"
    );
    println!(
        "dnsmasq: {DNSMASQ_IP}:{dnsmasq_port} (pid {}), the same 50 names from a hosts file, cache 1000",
        anchor.pid
    );
    println!(
        "throughput: dnsperf {} over {} queries (the 50 names, 20 shuffles, looped); {rounds} rounds, the first server alternating",
        LOAD.join(" "),
        SERVICES * 20
    );
    println!(
        "latency: dnsperf {} (one query outstanding), once per server per round; percentiles pool the rounds",
        LATENCY.join(" ")
    );
    println!(
        "nothing pinned; dnsperf and the server under test share the {} cores",
        command_line("nproc", &[])
    );
    println!();

    let servers = [&drover, &anchor];
    let mut load: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    let mut latency: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    println!("  round  drover q/s  dnsmasq q/s  drover/dnsmasq");
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for &s in &order {
            load[s].push(dnsperf(servers[s], &data, &LOAD));
        }
        for &s in &order {
            latency[s].push(dnsperf(servers[s], &data, &LATENCY));
        }
        let (d, m) = (load[0][round].qps, load[1][round].qps);
        println!("  {:>5}  {d:>10.0}  {m:>11.0}  {:>13.2}x", round + 1, d / m);
    }
    println!();

    println!(
        "  server   q/s median  (min-max)        NOERROR  lost  p50 µs  p99 µs  server CPU µs/query  dnsperf CPU  response B"
    );
    for s in 0..2 {
        let qps: Vec<f64> = load[s].iter().map(|r| r.qps).collect();
        let (lo, hi) = min_max(&qps);
        let (p50, p99) = p50_p99(&latency[s]);
        let lost: u64 = load[s].iter().map(|r| r.lost).sum();
        let completed: u64 = load[s].iter().map(|r| r.completed).sum();
        let cpu: f64 = load[s].iter().map(|r| r.cpu).sum();
        let load_cpu: f64 = load[s].iter().map(|r| r.load_cpu).sum();
        let seconds: f64 = load[s].iter().map(|r| r.seconds).sum();
        println!(
            "  {:<7}  {:>10.0}  ({lo:.0}-{hi:.0})  {:>6.2}%  {lost:>4}  {p50:>6.0}  {p99:>6.0}  {:>19.1}  {:>10.0}%  {:>10}",
            servers[s].name,
            median(&qps),
            noerror_share(&load[s]),
            cpu / completed.max(1) as f64 * 1e6,
            100.0 * load_cpu / seconds.max(1e-9),
            load[s].first().map(|r| r.response_bytes).unwrap_or(0),
        );
    }
    let ratios: Vec<f64> = (0..rounds)
        .map(|r| load[0][r].qps / load[1][r].qps)
        .collect();
    let (lo, hi) = min_max(&ratios);
    let (d50, d99) = p50_p99(&latency[0]);
    let (m50, m99) = p50_p99(&latency[1]);
    println!(
        "drover / dnsmasq queries/s, per round: median {:.2}x (range {lo:.2}-{hi:.2}); latency p50 {:.2}x, p99 {:.2}x",
        median(&ratios),
        d50 / m50,
        d99 / m99
    );
    let latency_noerror = [noerror_share(&latency[0]), noerror_share(&latency[1])];
    println!(
        "latency runs NOERROR: drover {:.2}%, dnsmasq {:.2}%; server CPU excludes dnsperf, 'dnsperf CPU' is % of one core",
        latency_noerror[0], latency_noerror[1]
    );
    println!();

    // TCP: one round per server, each dnsperf client on one connection.
    let tcp_args: Vec<&str> = ["-m", "tcp"].into_iter().chain(LOAD).collect();
    let tcp = [
        dnsperf(&drover, &data, &tcp_args),
        dnsperf(&anchor, &data, &tcp_args),
    ];
    println!(
        "TCP, one round (dnsperf -m tcp {}): drover {:.0} q/s ({:.2}% NOERROR, {:.1} µs CPU/query), dnsmasq {:.0} q/s ({:.2}% NOERROR, {:.1} µs CPU/query): {:.2}x",
        LOAD.join(" "),
        tcp[0].qps,
        noerror_share(&tcp[..1]),
        tcp[0].cpu / tcp[0].completed.max(1) as f64 * 1e6,
        tcp[1].qps,
        noerror_share(&tcp[1..]),
        tcp[1].cpu / tcp[1].completed.max(1) as f64 * 1e6,
        tcp[0].qps / tcp[1].qps
    );

    // A forwarded name: Drover relays it to the host's first resolver; the same resolver
    // asked directly is the reference (the relay's own cost is the difference).
    let upstream = std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("nameserver").map(|a| a.trim().to_string()));
    match upstream {
        Some(upstream) if upstream.parse::<std::net::Ipv4Addr>().is_ok() => {
            let direct = Server {
                name: "upstream",
                address: upstream.clone(),
                port: 53,
                pid: 0,
            };
            let via = [dnsperf(&drover, &forwarded, &FORWARDED)];
            let straight = [dnsperf(&direct, &forwarded, &FORWARDED)];
            let (v50, v99) = p50_p99(&via);
            let (s50, s99) = p50_p99(&straight);
            println!(
                "forwarded `localhost A` (dnsperf {}; measures the host's resolver too):",
                FORWARDED.join(" ")
            );
            for (what, run) in [
                (format!("through drover to {upstream}"), &via[0]),
                (format!("straight to {upstream}"), &straight[0]),
            ] {
                let (p50, p99) = p50_p99(std::slice::from_ref(run));
                println!(
                    "  {what:<32} p50 {p50:>6.0} µs, p99 {p99:>8.0} µs; {} of {} answered ({}), {} lost",
                    run.completed, run.sent, run.codes, run.lost
                );
            }
            println!(
                "  the relay adds p50 {:+.0} µs, p99 {:+.0} µs",
                v50 - s50,
                v99 - s99
            );
        }
        _ => println!("forwarded name: not run (no IPv4 nameserver in /etc/resolv.conf)"),
    }

    drop(dnsmasq);
    drop(agents);
    drop(coordinator);
}
