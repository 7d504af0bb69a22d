//! Service proxy throughput and latency: a direct connection, Drover's proxy
//! ([`ProxyManager`] with a single-thread tokio runtime, in a process of its own: this
//! binary run with `--drover-proxy-child`), HAProxy and nginx's stream proxy (separate
//! processes, one worker thread each), all forwarding TCP to the same backends, on loopback
//! or (`veth`, as root) across network namespaces joined by veth pairs ([`network`]).
//!
//! Run with `cargo bench -p drover-agent --bench proxy [-- quick] [veth]`; `quick`
//! measures 3 rounds of 0.5 s instead of 12 rounds of 1 s. HAProxy and nginx are taken from
//! `PATH` (Debian: `apt-get install haproxy nginx libnginx-mod-stream`); when one is missing
//! or does not start, the benchmark says so and goes on with the others.
//!
//! Workloads, each run against every target in turn and reported as a ratio to direct:
//! 1. bulk, 1 stream: the client writes to a backend sink and reads from a backend source at
//!    the same time, 64 KiB writes; MB/s counts the bytes delivered in both directions;
//! 2. bulk, 8 such streams in parallel, aggregate MB/s;
//! 3. short connections, 1 client: connect, send 64 bytes, read the 64-byte answer until the
//!    backend closes, close; connections/s and latency per connection;
//! 4. the same with 4 concurrent clients.
//!
//! The load generator and the backends share one current-thread tokio runtime on the main
//! thread, so on a 2-core machine the load side gets one core and the proxy under test the
//! other.
//!
//! On two or more cores the load thread is pinned to CPU 0 (`sched_setaffinity`) and every
//! proxy under test to CPU 1 (`taskset`). Left alone, the scheduler can place a proxy on the
//! load's core for part of a window (a woken thread goes next to its waker), which cuts that
//! window's throughput whichever proxy it is.
//!
//! A second baseline, `direct-busy`, is the direct connection while a process on the
//! proxies' core copies memory in a loop: every proxy keeps that core busy, and on a VM
//! whose vCPUs share a physical core or its caches that alone slows the load's core. The
//! goals are judged against plain `direct`; `direct-busy` tells how much of a gap is that.
//!
//! Each workload is measured in rounds: every round runs every target once, starting at a
//! different target each round, and a target's ratio to direct is the median of its
//! per-round ratios. A shared VM's speed can halve or double within minutes; pairing each
//! run with a direct run of the same round keeps that drift out of the ratios.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use drover_agent::proxy::balancer::Endpoint;
use drover_agent::proxy::{ProxyConfig, ProxyManager, ServiceRoute};
use drover_proto::model::Strategy;
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod network;
use network::Network;

/// Size of each write (and read buffer) of the bulk streams on the load side.
const CHUNK: usize = 64 * 1024;
const REQUEST: usize = 64;
const RESPONSE: usize = 64;
const BULK_STREAMS: usize = 8;
const SHORT_CLIENTS: usize = 4;
/// Longest a short exchange may take before it counts as an error.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);
/// Drover's goal for bulk transfer, as a share of direct.
const BULK_GOAL: f64 = 0.90;

static SOURCE: [u8; CHUNK] = [0x5a; CHUNK];
static REQUEST_BYTES: [u8; REQUEST] = [b'q'; REQUEST];
static RESPONSE_BYTES: [u8; RESPONSE] = [b'a'; RESPONSE];

type BoxError = Box<dyn std::error::Error>;

/// Cores of the load side and of the proxies under test, when the machine has two.
#[derive(Debug, Clone, Copy)]
struct Pinning {
    load: usize,
    proxy: usize,
}

impl Pinning {
    fn choose(cpus: usize) -> Option<Pinning> {
        (cpus >= 2).then_some(Pinning { load: 0, proxy: 1 })
    }
}

/// Pin the calling thread to `cpu`.
fn pin_current_thread(cpu: usize) -> Result<(), String> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|e| format!("cpu {cpu}: {e}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| format!("pin to cpu {cpu}: {e}"))
}

/// `program` run on the proxies' side: through `taskset` onto their core (unless there is
/// only one), in their network namespace (if they have one), and told to stop when this
/// benchmark dies ([`parent_death_prefix`]).
fn pinned_command(program: &str, pinning: Option<Pinning>, network: &Network) -> Command {
    let mut prefix = parent_death_prefix().to_vec();
    if let Some(pin) = pinning {
        prefix.extend(["taskset".to_owned(), "-c".to_owned(), pin.proxy.to_string()]);
    }
    network.proxy_command(&prefix, program)
}

/// The host's TCP settings that move bulk figures most, as read in the calling thread's
/// network namespace: the congestion control (BBR paces each connection with a timer, on
/// loopback too) and the receive buffer's largest size (how far a sender may run ahead).
fn tcp_settings() -> String {
    let read = |name: &str| {
        let path = format!("/proc/sys/net/ipv4/{name}");
        match std::fs::read_to_string(&path) {
            Ok(text) => text.split_whitespace().collect::<Vec<_>>().join(" "),
            Err(e) => format!("(cannot read {path}: {e})"),
        }
    };
    format!(
        "tcp_congestion_control {}, tcp_rmem {}",
        read("tcp_congestion_control"),
        read("tcp_rmem")
    )
}

/// `setpriv --pdeathsig TERM` (util-linux), when it works here: the kernel then sends the
/// proxy SIGTERM if this benchmark dies, even by SIGKILL, so HAProxy and nginx (whose master
/// takes its worker down on SIGTERM) are not left running. Drover's child needs no help: it
/// exits when its stdin closes. Setting the signal ourselves between fork and exec would
/// take `unsafe` code, which the workspace forbids; `setpriv` sets it and execs the proxy,
/// so the proxy keeps its pid and this process stays its parent.
fn parent_death_prefix() -> &'static [String] {
    static PREFIX: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| {
        let words = ["setpriv", "--pdeathsig", "TERM"].map(str::to_owned);
        let works = Command::new(&words[0])
            .args(&words[1..])
            .arg("true")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if works {
            words.to_vec()
        } else {
            eprintln!(
                "setpriv --pdeathsig does not work here (util-linux); if this benchmark is \
                 killed, HAProxy and nginx are left running"
            );
            Vec::new()
        }
    })
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    warmup: Duration,
    measure: Duration,
    /// Runs of each target per workload, interleaved with the other targets' runs.
    rounds: usize,
    /// Parties in network namespaces joined by veth pairs instead of on loopback.
    veth: bool,
}

impl Settings {
    fn from_args() -> Settings {
        let given = |word: &str| {
            std::env::args()
                .skip(1)
                .any(|a| a == word || a.strip_prefix("--") == Some(word))
        };
        let veth = given("veth");
        if given("quick") {
            Settings {
                warmup: Duration::from_millis(200),
                measure: Duration::from_millis(500),
                rounds: 3,
                veth,
            }
        } else {
            Settings {
                warmup: Duration::from_millis(300),
                measure: Duration::from_secs(1),
                rounds: 12,
                veth,
            }
        }
    }
}

/// Where one target listens: a port for the bulk backend and one for the short backend.
#[derive(Debug, Clone, Copy)]
struct Ports {
    bulk: SocketAddr,
    short: SocketAddr,
}

/// Bytes delivered and backend connections open, shared by the backends and the clients.
#[derive(Debug, Default)]
struct Counters {
    client_rx: AtomicU64,
    backend_rx: AtomicU64,
    open: AtomicUsize,
}

impl Counters {
    fn delivered(&self) -> u64 {
        self.client_rx.load(Ordering::Relaxed) + self.backend_rx.load(Ordering::Relaxed)
    }
}

/// A backend connection counted while open.
struct OpenGuard(Arc<Counters>);

impl OpenGuard {
    fn new(counters: &Arc<Counters>) -> OpenGuard {
        counters.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(Arc::clone(counters))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------
// Backends (on the load runtime)

async fn start_backends(counters: &Arc<Counters>, ip: IpAddr) -> io::Result<Ports> {
    let bulk = TcpListener::bind((ip, 0)).await?;
    let short = TcpListener::bind((ip, 0)).await?;
    let ports = Ports {
        bulk: bulk.local_addr()?,
        short: short.local_addr()?,
    };
    let bulk_counters = Arc::clone(counters);
    tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = bulk.accept().await {
                tokio::spawn(bulk_backend(stream, Arc::clone(&bulk_counters)));
            }
        }
    });
    let short_counters = Arc::clone(counters);
    tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = short.accept().await {
                tokio::spawn(short_backend(stream, Arc::clone(&short_counters)));
            }
        }
    });
    Ok(ports)
}

/// Sink and source at once, until either direction ends.
async fn bulk_backend(mut stream: TcpStream, counters: Arc<Counters>) {
    let _open = OpenGuard::new(&counters);
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.split();
    let source = async { while wr.write_all(&SOURCE).await.is_ok() {} };
    let sink = async {
        let mut buf = vec![0u8; CHUNK];
        while let Ok(n @ 1..) = rd.read(&mut buf).await {
            counters.backend_rx.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    tokio::select! {
        () = source => {}
        () = sink => {}
    }
}

/// Read the request, write the answer, close (the backend ends the exchange).
async fn short_backend(mut stream: TcpStream, counters: Arc<Counters>) {
    let _open = OpenGuard::new(&counters);
    let _ = stream.set_nodelay(true);
    let mut request = [0u8; REQUEST];
    if stream.read_exact(&mut request).await.is_ok() {
        let _ = stream.write_all(&RESPONSE_BYTES).await;
    }
}

// ---------------------------------------------------------------------------------------
// Load generator

#[derive(Debug, Clone, Copy, Default)]
struct CpuUse {
    /// Share of one core used by the proxy under test during the window, if known.
    proxy: Option<f64>,
    /// Share of one core used by the load thread (clients and backends).
    load: Option<f64>,
    /// Cores busy on the whole machine (every process, interrupts included).
    host: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
struct BulkRun {
    mb_per_s: f64,
    errors: u64,
    cpu: CpuUse,
}

#[derive(Debug, Clone)]
struct ShortRun {
    per_s: f64,
    /// Latency of each exchange inside the window, in nanoseconds, sorted.
    latencies: Vec<u64>,
    errors: u64,
    cpu: CpuUse,
}

/// One bulk stream; true when it was still flowing at `stop`.
async fn bulk_client(addr: SocketAddr, counters: Arc<Counters>, stop: Instant) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.split();
    let source = async { while wr.write_all(&SOURCE).await.is_ok() {} };
    let sink = async {
        let mut buf = vec![0u8; CHUNK];
        while let Ok(n @ 1..) = rd.read(&mut buf).await {
            counters.client_rx.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    let flowing = async {
        tokio::select! {
            () = source => {}
            () = sink => {}
        }
    };
    tokio::time::timeout_at(stop.into(), flowing).await.is_err()
}

async fn run_bulk(
    addr: SocketAddr,
    streams: usize,
    settings: Settings,
    counters: &Arc<Counters>,
    cpu: &CpuProbe,
) -> BulkRun {
    let warm_end = Instant::now() + settings.warmup;
    let end = warm_end + settings.measure;
    // Streams outlive the window a little so the last sample is taken while they flow.
    let stop = end + Duration::from_millis(100);
    let tasks: Vec<_> = (0..streams)
        .map(|_| tokio::spawn(bulk_client(addr, Arc::clone(counters), stop)))
        .collect();
    tokio::time::sleep_until(warm_end.into()).await;
    let (bytes0, cpu0, t0) = (counters.delivered(), cpu.sample(), Instant::now());
    tokio::time::sleep_until(end.into()).await;
    let (bytes1, cpu1, t1) = (counters.delivered(), cpu.sample(), Instant::now());
    let mut errors = 0;
    for task in tasks {
        if !matches!(task.await, Ok(true)) {
            errors += 1;
        }
    }
    let seconds = (t1 - t0).as_secs_f64();
    BulkRun {
        mb_per_s: (bytes1 - bytes0) as f64 / 1e6 / seconds,
        errors,
        cpu: cpu0.until(&cpu1, seconds),
    }
}

async fn exchange(addr: SocketAddr) -> io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(&REQUEST_BYTES).await?;
    let mut response = Vec::with_capacity(2 * RESPONSE);
    stream.read_to_end(&mut response).await?;
    if response.len() != RESPONSE {
        return Err(io::Error::other(format!(
            "answer of {} bytes, expected {RESPONSE}",
            response.len()
        )));
    }
    Ok(())
}

/// One client looping over exchanges until `end`; latencies (ns) of the exchanges wholly
/// inside the window, and the errors of exchanges started in it.
async fn short_client(addr: SocketAddr, warm_end: Instant, end: Instant) -> (Vec<u64>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    while Instant::now() < end {
        let started = Instant::now();
        let outcome = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(addr)).await;
        let finished = Instant::now();
        match outcome {
            Ok(Ok(())) => {
                if started >= warm_end && finished <= end {
                    latencies.push((finished - started).as_nanos() as u64);
                }
            }
            _ => {
                if started >= warm_end {
                    errors += 1;
                }
                // Do not spin on a refused connect.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    (latencies, errors)
}

async fn run_short(
    addr: SocketAddr,
    clients: usize,
    settings: Settings,
    cpu: &CpuProbe,
) -> ShortRun {
    let warm_end = Instant::now() + settings.warmup;
    let end = warm_end + settings.measure;
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(short_client(addr, warm_end, end)))
        .collect();
    tokio::time::sleep_until(warm_end.into()).await;
    let (cpu0, t0) = (cpu.sample(), Instant::now());
    tokio::time::sleep_until(end.into()).await;
    let (cpu1, t1) = (cpu.sample(), Instant::now());
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        match task.await {
            Ok((mut l, e)) => {
                latencies.append(&mut l);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    latencies.sort_unstable();
    let seconds = (t1 - t0).as_secs_f64();
    ShortRun {
        per_s: latencies.len() as f64 / settings.measure.as_secs_f64(),
        latencies,
        errors,
        cpu: cpu0.until(&cpu1, seconds),
    }
}

fn percentile(sorted: &[u64], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Duration::from_nanos(sorted[rank - 1])
}

/// Wait until the backends have no connection left from the previous run, then settle.
async fn wait_idle(counters: &Counters) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while counters.open.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}

// ---------------------------------------------------------------------------------------
// CPU accounting from /proc

/// Whose CPU time to read.
#[derive(Debug, Clone)]
enum CpuSource {
    Unknown,
    /// A thread of this process.
    Thread(u32),
    /// A process and its direct children (nginx's master and worker).
    Process(u32),
}

#[derive(Debug)]
struct CpuProbe {
    proxy: CpuSource,
    load: CpuSource,
    tick: f64,
}

#[derive(Debug)]
struct CpuSample {
    proxy: Option<f64>,
    load: Option<f64>,
    host: Option<f64>,
}

impl CpuSample {
    fn until(&self, later: &CpuSample, seconds: f64) -> CpuUse {
        let share = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / seconds);
        CpuUse {
            proxy: share(self.proxy, later.proxy),
            load: share(self.load, later.load),
            host: share(self.host, later.host),
        }
    }
}

impl CpuProbe {
    fn sample(&self) -> CpuSample {
        CpuSample {
            proxy: self.seconds(&self.proxy),
            load: self.seconds(&self.load),
            host: host_busy_ticks().map(|ticks| ticks as f64 / self.tick),
        }
    }

    fn seconds(&self, source: &CpuSource) -> Option<f64> {
        let ticks = match source {
            CpuSource::Unknown => return None,
            CpuSource::Thread(tid) => stat_ticks(&format!("/proc/self/task/{tid}/stat"))?,
            CpuSource::Process(pid) => {
                let own = stat_ticks(&format!("/proc/{pid}/stat"))?;
                own + children_of(*pid)
                    .into_iter()
                    .filter_map(|child| stat_ticks(&format!("/proc/{child}/stat")))
                    .sum::<u64>()
            }
        };
        Some(ticks as f64 / self.tick)
    }
}

/// Busy time of all CPUs (everything but idle and iowait), in clock ticks.
fn host_busy_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    Some(ticks.iter().take(8).sum::<u64>() - ticks.get(3)? - ticks.get(4)?)
}

/// Fields of a /proc stat file after the command name: state, ppid, …
fn stat_fields(path: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime, in clock ticks.
fn stat_ticks(path: &str) -> Option<u64> {
    let fields = stat_fields(path)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|candidate| {
            stat_fields(&format!("/proc/{candidate}/stat"))
                .and_then(|f| f.get(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

fn clock_tick() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8(out.stdout)
                .ok()?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

// ---------------------------------------------------------------------------------------
// Proxies under test

/// Argument that makes this benchmark binary run as Drover's proxy under test, followed by
/// the data path (`copy` or `splice`) and four addresses: bulk and short listen addresses,
/// then bulk and short backends. A process of its own, like HAProxy and nginx: a proxy
/// thread inside the benchmark would share the load's file table and address space (fd
/// allocation, TLB shootdowns), which costs both sides.
const PROXY_CHILD: &str = "--drover-proxy-child";

fn route(service: &str, listen: SocketAddr, backend: SocketAddr) -> ServiceRoute {
    ServiceRoute {
        service: service.to_owned(),
        port: listen.port(),
        listen: vec![listen],
        strategy: Strategy::RoundRobin,
        pool_weights: Default::default(),
        endpoints: vec![Endpoint::new(format!("{service}-0"), backend, service, 1)],
    }
}

/// Command line of a Drover proxy child.
fn drover_child_args(splice: bool, listen: Ports, backends: Ports) -> Vec<String> {
    let path = if splice { "splice" } else { "copy" };
    [PROXY_CHILD, path]
        .into_iter()
        .map(str::to_owned)
        .chain(
            [listen.bulk, listen.short, backends.bulk, backends.short]
                .iter()
                .map(SocketAddr::to_string),
        )
        .collect()
}

/// The child's side: serve both routes with [`ProxyManager`] (default [`ProxyConfig`] but
/// for the data path) on a current-thread runtime until stdin closes, which it does when the
/// benchmark stops the child or dies.
fn run_proxy_child(args: &[String]) -> Result<(), BoxError> {
    let [path, listen_bulk, listen_short, backend_bulk, backend_short] = args else {
        return Err(format!("{PROXY_CHILD} takes 5 arguments, got {args:?}").into());
    };
    let splice = match path.as_str() {
        "copy" => false,
        "splice" => true,
        other => return Err(format!("data path {other:?}: expected copy or splice").into()),
    };
    let addr = |text: &String| {
        text.parse::<SocketAddr>()
            .map_err(|e| format!("address {text:?}: {e}"))
    };
    let (listen_bulk, listen_short) = (addr(listen_bulk)?, addr(listen_short)?);
    let routes = vec![
        route("bulk", listen_bulk, addr(backend_bulk)?),
        route("short", listen_short, addr(backend_short)?),
    ];
    exit_when_stdin_closes();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let config = ProxyConfig {
            splice,
            ..ProxyConfig::default()
        };
        let mut manager = ProxyManager::new(config, 7);
        manager.apply(routes).await;
        let listening = manager.listening_ports();
        for port in [listen_bulk.port(), listen_short.port()] {
            if !listening.contains(&port) {
                return Err(format!("could not listen on port {port}").into());
            }
        }
        std::future::pending::<Result<(), BoxError>>().await
    })
}

/// A child's way to end with the benchmark: the benchmark holds the child's stdin and
/// closes it when it stops the child or dies.
fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let _ = io::copy(&mut io::stdin(), &mut io::sink());
        std::process::exit(0);
    });
}

/// Argument that makes this benchmark binary a busy neighbour, followed by the core to run
/// on. It copies a buffer the size of Drover's largest copy buffer over and over while told
/// to (`1` on stdin; `0` makes it wait) and exits when stdin closes. It copies only during
/// the `direct-busy` runs, to show in the same run how much a busy second core slows the
/// load's core: on a VM whose two vCPUs share a physical core or its caches, every proxy
/// pays that on top of its own cost, while plain `direct` has the other core idle.
const NEIGHBOUR_CHILD: &str = "--busy-neighbour-child";

fn run_neighbour_child(args: &[String]) -> Result<(), BoxError> {
    let [cpu] = args else {
        return Err(format!("{NEIGHBOUR_CHILD} takes the core to run on, got {args:?}").into());
    };
    let cpu: usize = cpu.parse().map_err(|e| format!("core {cpu:?}: {e}"))?;
    pin_current_thread(cpu)?;
    let copying = Arc::new(AtomicBool::new(false));
    let worker = std::thread::current();
    let told = Arc::clone(&copying);
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut byte = [0u8; 1];
        // Until end of file: the benchmark closed stdin, or died.
        while let Ok(1) = io::Read::read(&mut stdin, &mut byte) {
            told.store(byte[0] == b'1', Ordering::Relaxed);
            worker.unpark();
        }
        std::process::exit(0);
    });
    let size = ProxyConfig::default().buffer_size;
    let source = vec![0x5au8; size];
    let mut copy = vec![0u8; size];
    loop {
        if copying.load(Ordering::Relaxed) {
            copy.copy_from_slice(std::hint::black_box(&source));
            std::hint::black_box(&mut copy);
        } else {
            std::thread::park();
        }
    }
}

/// A proxy run as a child process in the foreground: Drover (this binary), HAProxy or nginx.
#[derive(Debug)]
struct External {
    name: &'static str,
    child: Option<Child>,
}

impl External {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Write `byte` to the child's stdin (how the neighbour is told to copy or to wait).
    fn tell(&self, byte: u8) -> io::Result<()> {
        let mut stdin = self
            .child
            .as_ref()
            .and_then(|child| child.stdin.as_ref())
            .ok_or_else(|| io::Error::other("the child has no stdin"))?;
        io::Write::write_all(&mut stdin, &[byte])
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM, so nginx's master takes its worker down with it.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for External {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The first line a command prints (stdout, else stderr), if it runs.
fn command_output(program: &str, args: &[&str]) -> io::Result<String> {
    let out = Command::new(program).args(args).output()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    Ok(String::from_utf8_lossy(&text).into_owned())
}

fn haproxy_version() -> Result<String, String> {
    let text = command_output("haproxy", &["-v"])
        .map_err(|e| format!("not runnable ({e}); Debian: apt-get install haproxy"))?;
    // "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/"
    Ok(text
        .split_whitespace()
        .nth(2)
        .unwrap_or("(unknown version)")
        .to_owned())
}

fn nginx_version() -> Result<String, String> {
    let text = command_output("nginx", &["-v"])
        .map_err(|e| format!("not runnable ({e}); Debian: apt-get install nginx"))?;
    // "nginx version: nginx/1.22.1"
    Ok(text
        .trim()
        .rsplit('/')
        .next()
        .unwrap_or("(unknown version)")
        .to_owned())
}

fn haproxy_config(listen: Ports, backends: Ports) -> String {
    let mut cfg = String::from(
        "global\n    nbthread 1\n    maxconn 4096\n\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    \
         timeout server 30s\n",
    );
    for (name, front, back) in [
        ("bulk", listen.bulk, backends.bulk),
        ("short", listen.short, backends.short),
    ] {
        let _ = write!(
            cfg,
            "\nlisten {name}\n    bind {front}\n    server {name}-0 {back}\n"
        );
    }
    cfg
}

/// The `load_module` line for nginx's stream module, or an empty string when it is built in.
fn nginx_stream_module() -> Result<String, String> {
    for path in [
        "/usr/lib/nginx/modules/ngx_stream_module.so",
        "/usr/share/nginx/modules/ngx_stream_module.so",
        "/usr/lib64/nginx/modules/ngx_stream_module.so",
    ] {
        if Path::new(path).exists() {
            return Ok(format!("load_module {path};\n"));
        }
    }
    let configure = command_output("nginx", &["-V"]).unwrap_or_default();
    if configure
        .split_whitespace()
        .any(|arg| arg == "--with-stream")
    {
        Ok(String::new())
    } else {
        Err(
            "the stream module is not installed; Debian: apt-get install libnginx-mod-stream"
                .to_owned(),
        )
    }
}

fn nginx_config(dir: &Path, module: &str, listen: Ports, backends: Ports) -> String {
    let dir = dir.display();
    let mut cfg = format!(
        "{module}worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{\n    worker_connections 4096;\n}}\nstream {{\n"
    );
    for (front, back) in [(listen.bulk, backends.bulk), (listen.short, backends.short)] {
        let _ = writeln!(
            cfg,
            "    server {{\n        listen {front};\n        proxy_pass {back};\n    }}"
        );
    }
    cfg.push_str("}\n");
    cfg
}

/// Start a proxy process, its output in `dir`/`name`.log, and wait until both its ports
/// accept connections. Its stdin is a pipe the benchmark holds: Drover's child exits when it
/// closes; HAProxy and nginx never read it.
async fn start_external(
    name: &'static str,
    command: &mut Command,
    dir: &Path,
    listen: Ports,
) -> Result<External, String> {
    let log = &dir.join(format!("{name}.log"));
    let log_file = std::fs::File::create(log)
        .map_err(|e| format!("cannot create log {}: {e}", log.display()))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| format!("cannot create log {}: {e}", log.display()))?;
    let child = command
        .stdin(Stdio::piped())
        .stdout(log_file)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let mut external = External {
        name,
        child: Some(child),
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let exited = external
            .child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten());
        if let Some(status) = exited {
            external.child = None;
            let output = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("exited at start ({status}): {}", output.trim()));
        }
        if TcpStream::connect(listen.bulk).await.is_ok()
            && TcpStream::connect(listen.short).await.is_ok()
        {
            return Ok(external);
        }
        if Instant::now() > deadline {
            return Err("did not listen within 5 s".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two free ports for a proxy to listen on.
fn free_ports(network: &Network) -> io::Result<Ports> {
    Ok(Ports {
        bulk: network.free_proxy_port()?,
        short: network.free_proxy_port()?,
    })
}

/// One thing to measure: a direct connection or a proxy.
#[derive(Debug)]
struct Target {
    name: &'static str,
    description: String,
    /// `Err` says why the target is not measured.
    ports: Result<Ports, String>,
    cpu: CpuSource,
    running: Option<External>,
    /// `running` is the busy neighbour, which copies only during this target's runs.
    neighbour: bool,
}

impl Target {
    /// A target that is not measured, and why.
    fn not_run(name: &'static str, description: &str, why: String) -> Target {
        Target {
            name,
            description: description.to_owned(),
            ports: Err(why),
            cpu: CpuSource::Unknown,
            running: None,
            neighbour: false,
        }
    }

    /// A proxy under test, running and listening on `listen`.
    fn proxy(name: &'static str, description: String, listen: Ports, running: External) -> Target {
        Target {
            name,
            description,
            ports: Ok(listen),
            cpu: running.pid().map_or(CpuSource::Unknown, CpuSource::Process),
            running: Some(running),
            neighbour: false,
        }
    }

    /// Around each of this target's runs: set the neighbour copying, then waiting again.
    fn set_measuring(&self, measuring: bool) {
        if let (true, Some(running)) = (self.neighbour, &self.running) {
            if let Err(e) = running.tell(if measuring { b'1' } else { b'0' }) {
                eprintln!(
                    "{}: cannot tell the neighbour to copy or wait: {e}",
                    self.name
                );
            }
        }
    }
}

/// `direct` with the busy neighbour on the proxies' core (waiting until its runs).
fn start_direct_busy(dir: &Path, backends: Ports, pinning: Option<Pinning>) -> Target {
    const NAME: &str = "direct-busy";
    let neighbour = || {
        let pin = pinning.ok_or("needs two cpus")?;
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the benchmark binary: {e}"))?;
        let log = dir.join("neighbour.log");
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("cannot create log: {e}"))?;
        let child = Command::new(exe)
            .arg(NEIGHBOUR_CHILD)
            .arg(pin.proxy.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start the neighbour: {e}"))?;
        let mut running = External {
            name: NAME,
            child: Some(child),
        };
        // It pins itself first; a neighbour that cannot has exited by now.
        std::thread::sleep(Duration::from_millis(100));
        let exited = running
            .child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten());
        if let Some(status) = exited {
            running.child = None;
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!(
                "the neighbour exited at start ({status}): {}",
                output.trim()
            ));
        }
        Ok(running)
    };
    match neighbour() {
        Ok(running) => Target {
            name: NAME,
            description: format!(
                "direct, while a process on the proxies' core copies {} KiB buffers in a loop \
                 (this benchmark binary run with {NEIGHBOUR_CHILD}; its CPU is in 'proxy CPU')",
                ProxyConfig::default().buffer_size / 1024
            ),
            ports: Ok(backends),
            cpu: running.pid().map_or(CpuSource::Unknown, CpuSource::Process),
            running: Some(running),
            neighbour: true,
        },
        Err(e) => Target::not_run(NAME, "direct with a busy neighbour", e),
    }
}

async fn start_targets(
    dir: &Path,
    backends: Ports,
    pinning: Option<Pinning>,
    network: &Network,
) -> Vec<Target> {
    let mut targets = vec![Target {
        name: "direct",
        description: "client connects to the backend itself".to_owned(),
        ports: Ok(backends),
        cpu: CpuSource::Unknown,
        running: None,
        neighbour: false,
    }];
    targets.push(start_direct_busy(dir, backends, pinning));

    for (name, splice, path) in [
        (
            "drover",
            false,
            "copy, buffers growing to 256 KiB (the default)",
        ),
        (
            "drover-splice",
            true,
            "splice(2) through pooled pipes (proxy_splice = true)",
        ),
    ] {
        let drover = async {
            let exe = std::env::current_exe()
                .map_err(|e| format!("cannot find the benchmark binary: {e}"))?;
            let listen = free_ports(network).map_err(|e| format!("no free port: {e}"))?;
            let mut command = pinned_command(&exe.to_string_lossy(), pinning, network);
            command.args(drover_child_args(splice, listen, backends));
            let running = start_external(name, &mut command, dir, listen).await?;
            Ok::<_, String>((listen, running))
        };
        targets.push(match drover.await {
            Ok((listen, running)) => Target::proxy(
                name,
                format!(
                    "ProxyManager (release build), {path}, current-thread tokio runtime, \
                     separate process (this benchmark binary run with {PROXY_CHILD})"
                ),
                listen,
                running,
            ),
            Err(e) => Target::not_run(name, "ProxyManager", e),
        });
    }

    let haproxy = async {
        let version = haproxy_version()?;
        let listen = free_ports(network).map_err(|e| format!("no free port: {e}"))?;
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, haproxy_config(listen, backends))
            .map_err(|e| format!("cannot write its config: {e}"))?;
        let mut command = pinned_command("haproxy", pinning, network);
        command.arg("-f").arg(&cfg).arg("-db");
        let running = start_external("haproxy", &mut command, dir, listen)
            .await
            .map_err(|e| format!("HAProxy {version}: {e}"))?;
        Ok::<_, String>((version, listen, running))
    };
    targets.push(match haproxy.await {
        Ok((version, listen, running)) => Target::proxy(
            "haproxy",
            format!("HAProxy {version}, separate process, nbthread 1, mode tcp"),
            listen,
            running,
        ),
        Err(e) => Target::not_run("haproxy", "HAProxy", e),
    });

    let nginx = async {
        let version = nginx_version()?;
        let module = nginx_stream_module()?;
        let listen = free_ports(network).map_err(|e| format!("no free port: {e}"))?;
        let cfg = dir.join("nginx.conf");
        std::fs::write(&cfg, nginx_config(dir, &module, listen, backends))
            .map_err(|e| format!("cannot write its config: {e}"))?;
        let mut prefix = PathBuf::from(dir);
        prefix.push("");
        let mut command = pinned_command("nginx", pinning, network);
        command
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&cfg)
            .arg("-g")
            .arg("daemon off;");
        let running = start_external("nginx", &mut command, dir, listen)
            .await
            .map_err(|e| {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                format!("nginx {version}: {e} {}", log.trim())
                    .trim_end()
                    .to_owned()
            })?;
        Ok::<_, String>((version, listen, running))
    };
    targets.push(match nginx.await {
        Ok((version, listen, running)) => Target::proxy(
            "nginx",
            format!("nginx {version}, separate process, worker_processes 1, stream proxy_pass"),
            listen,
            running,
        ),
        Err(e) => Target::not_run("nginx", "nginx stream", e),
    });
    targets
}

// ---------------------------------------------------------------------------------------
// Report

/// The median of per-round values, with the lowest and highest.
#[derive(Debug, Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(mut values: Vec<f64>) -> Option<Spread> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = match n {
        0 => return None,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    };
    Some(Spread {
        median,
        min: values[0],
        max: values[n - 1],
    })
}

/// `a / b` round by round (both run once per round, in the same rounds).
fn round_ratios<T>(a: &[T], b: &[T], value: impl Fn(&T) -> f64) -> Option<Spread> {
    spread(a.iter().zip(b).map(|(x, y)| value(x) / value(y)).collect())
}

fn ratio_text(ratio: Option<Spread>) -> (String, String) {
    ratio.map_or_else(
        || ("-".to_owned(), "-".to_owned()),
        |r| {
            (
                format!("{:.2}x", r.median),
                format!("{:.2}-{:.2}", r.min, r.max),
            )
        },
    )
}

/// Mean CPU use over the rounds that could read it.
fn mean_cpu(cpus: impl Iterator<Item = CpuUse>) -> CpuUse {
    let (mut sums, mut counts) = ([0.0f64; 3], [0u32; 3]);
    for cpu in cpus {
        for (i, share) in [cpu.proxy, cpu.load, cpu.host].into_iter().enumerate() {
            if let Some(share) = share {
                sums[i] += share;
                counts[i] += 1;
            }
        }
    }
    let mean = |i: usize| (counts[i] > 0).then(|| sums[i] / f64::from(counts[i]));
    CpuUse {
        proxy: mean(0),
        load: mean(1),
        host: mean(2),
    }
}

fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "-".to_owned(), |s| format!("{:.0}%", s * 100.0))
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One target's runs of one workload, one per round; empty when the target was not run.
struct Series<'a, T> {
    name: &'a str,
    runs: Vec<T>,
}

fn find<'a, T>(series: &'a [Series<'_, T>], name: &str) -> Option<&'a [T]> {
    series
        .iter()
        .find(|s| s.name == name && !s.runs.is_empty())
        .map(|s| s.runs.as_slice())
}

fn print_bulk(title: &str, series: &[Series<'_, BulkRun>]) {
    println!("\n{title}");
    println!(
        "  {:<13} {:>8} {:>10} {:>10} {:>10} {:>9} {:>9} {:>7}",
        "target", "MB/s", "vs direct", "range", "proxy CPU", "load CPU", "host CPU", "errors"
    );
    let direct = find(series, "direct");
    for target in series {
        let Some(median) = spread(target.runs.iter().map(|r| r.mb_per_s).collect()) else {
            println!("  {:<13} {:>8}", target.name, "not run");
            continue;
        };
        let ratio = direct.and_then(|d| round_ratios(&target.runs, d, |r| r.mb_per_s));
        let (ratio, range) = ratio_text(ratio);
        let cpu = mean_cpu(target.runs.iter().map(|r| r.cpu));
        println!(
            "  {:<13} {:>8.0} {:>10} {:>10} {:>10} {:>9} {:>9} {:>7}",
            target.name,
            median.median,
            ratio,
            range,
            percent(cpu.proxy),
            percent(cpu.load),
            percent(cpu.host),
            target.runs.iter().map(|r| r.errors).sum::<u64>()
        );
    }
}

/// Every exchange of every round, sorted.
fn pooled_latencies(runs: &[ShortRun]) -> Vec<u64> {
    let mut all: Vec<u64> = runs
        .iter()
        .flat_map(|r| r.latencies.iter().copied())
        .collect();
    all.sort_unstable();
    all
}

fn print_short(title: &str, series: &[Series<'_, ShortRun>]) {
    println!("\n{title}");
    println!(
        "  {:<13} {:>7} {:>9} {:>10} {:>7} {:>7} {:>8} {:>8} {:>10} {:>9} {:>9} {:>7}",
        "target",
        "conn/s",
        "vs direct",
        "range",
        "p50 µs",
        "p99 µs",
        "+p50 µs",
        "+p99 µs",
        "proxy CPU",
        "load CPU",
        "host CPU",
        "errors"
    );
    let direct = find(series, "direct");
    let direct_latencies = direct.map(pooled_latencies);
    for target in series {
        let Some(median) = spread(target.runs.iter().map(|r| r.per_s).collect()) else {
            println!("  {:<13} {:>7}", target.name, "not run");
            continue;
        };
        let ratio = direct.and_then(|d| round_ratios(&target.runs, d, |r| r.per_s));
        let (ratio, range) = ratio_text(ratio);
        let latencies = pooled_latencies(&target.runs);
        let (p50, p99) = (
            micros(percentile(&latencies, 0.50)),
            micros(percentile(&latencies, 0.99)),
        );
        let (added50, added99) = direct_latencies.as_ref().map_or_else(
            || ("-".to_owned(), "-".to_owned()),
            |d| {
                (
                    format!("{:+.0}", p50 - micros(percentile(d, 0.50))),
                    format!("{:+.0}", p99 - micros(percentile(d, 0.99))),
                )
            },
        );
        let cpu = mean_cpu(target.runs.iter().map(|r| r.cpu));
        println!(
            "  {:<13} {:>7.0} {:>9} {:>10} {:>7.0} {:>7.0} {:>8} {:>8} {:>10} {:>9} {:>9} {:>7}",
            target.name,
            median.median,
            ratio,
            range,
            p50,
            p99,
            added50,
            added99,
            percent(cpu.proxy),
            percent(cpu.load),
            percent(cpu.host),
            target.runs.iter().map(|r| r.errors).sum::<u64>()
        );
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn bulk_goal(label: &str, series: &[Series<'_, BulkRun>]) {
    let ratio = find(series, "drover")
        .zip(find(series, "direct"))
        .and_then(|(d, direct)| round_ratios(d, direct, |r| r.mb_per_s));
    match ratio {
        Some(r) => println!(
            "  {label}: drover {:.2}x of direct, median of rounds (range {:.2}-{:.2}; goal >= \
             {BULK_GOAL:.2}x): {}",
            r.median,
            r.min,
            r.max,
            verdict(r.median >= BULK_GOAL)
        ),
        None => println!("  {label}: cannot judge (drover or direct not measured)"),
    }
    let busy = find(series, "drover")
        .zip(find(series, "direct-busy"))
        .and_then(|(d, busy)| round_ratios(d, busy, |r| r.mb_per_s));
    if let Some(r) = busy {
        println!(
            "    for context: drover {:.2}x of direct-busy (range {:.2}-{:.2}), the same \
             connection with the proxies' core busy",
            r.median, r.min, r.max
        );
    }
}

fn short_goals(label: &str, series: &[Series<'_, ShortRun>]) {
    let (Some(d), Some(h), Some(direct)) = (
        find(series, "drover"),
        find(series, "haproxy"),
        find(series, "direct"),
    ) else {
        println!("  {label}: cannot judge (drover, haproxy or direct not measured)");
        return;
    };
    if let Some(r) = round_ratios(d, h, |r| r.per_s) {
        println!(
            "  {label}, rate: drover {:.2}x haproxy's, median of rounds (range {:.2}-{:.2}; \
             goal >= 1.00x): {}",
            r.median,
            r.min,
            r.max,
            verdict(r.median >= 1.0)
        );
    }
    let p99 = |runs: &[ShortRun]| micros(percentile(&pooled_latencies(runs), 0.99));
    let (added_d, added_h) = (p99(d) - p99(direct), p99(h) - p99(direct));
    println!(
        "  {label}, added p99: drover {added_d:+.0} µs vs haproxy {added_h:+.0} µs \
         (goal <= haproxy's): {}",
        verdict(added_d <= added_h)
    );
}

// ---------------------------------------------------------------------------------------

/// Target indexes in the order of `round`: each round starts one target later, so no target
/// always runs right after the same one.
fn round_order(targets: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..targets).map(move |k| (k + round) % targets)
}

/// Each target's runs of one workload, one per round; `run` measures a target once.
async fn measure_rounds<T>(
    label: &str,
    targets: &[Target],
    settings: Settings,
    (counters, load, tick): (&Counters, &CpuSource, f64),
    run: impl AsyncFn(Ports, &CpuProbe) -> T,
) -> Vec<Vec<T>> {
    let mut runs: Vec<Vec<T>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..settings.rounds {
        eprintln!("{label}: round {}/{}", round + 1, settings.rounds);
        for i in round_order(targets.len(), round) {
            let Ok(ports) = targets[i].ports else {
                continue;
            };
            wait_idle(counters).await;
            let probe = CpuProbe {
                proxy: targets[i].cpu.clone(),
                load: load.clone(),
                tick,
            };
            targets[i].set_measuring(true);
            runs[i].push(run(ports, &probe).await);
            targets[i].set_measuring(false);
        }
    }
    runs
}

fn named<'a, T>(targets: &'a [Target], runs: Vec<Vec<T>>) -> Vec<Series<'a, T>> {
    targets
        .iter()
        .zip(runs)
        .map(|(target, runs)| Series {
            name: target.name,
            runs,
        })
        .collect()
}

async fn run(settings: Settings) -> Result<(), BoxError> {
    let counters = Arc::new(Counters::default());
    // Declared before the targets, so the namespaces outlive the proxies in them.
    let network = if settings.veth {
        Network::veth().map_err(|e| format!("setting up the veth network (needs root): {e}"))?
    } else {
        Network::loopback()
    };
    network.enter_backends()?;
    let backends = start_backends(&counters, network.backend_ip).await?;
    network.enter_clients()?;
    let dir = tempfile::Builder::new()
        .prefix("drover-proxy-bench")
        .tempdir()?;
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let pinning = Pinning::choose(cpus);
    if let Some(pin) = pinning {
        pin_current_thread(pin.load)?;
    }
    let mut targets = start_targets(dir.path(), backends, pinning, &network).await;
    let tick = clock_tick();
    let load = CpuSource::Thread(std::process::id());

    println!("service proxy benchmark (release build)");
    println!("network: {}", network.describe());
    println!("tcp (load's namespace): {}", tcp_settings());
    println!(
        "cpus: {}; {} rounds per workload, each target once per round: {:.1} s warm-up + \
         {:.1} s measured",
        cpus,
        settings.rounds,
        settings.warmup.as_secs_f64(),
        settings.measure.as_secs_f64()
    );
    println!(
        "load generator and backends: one current-thread tokio runtime on the main thread \
         (one core)"
    );
    match pinning {
        Some(pin) => println!(
            "pinned: the load thread to cpu {}, every proxy under test to cpu {}",
            pin.load, pin.proxy
        ),
        None => println!("not pinned: fewer than two cpus"),
    }
    println!(
        "rates are medians of rounds; 'vs direct' is the median of per-round ratios to direct \
         (range: lowest-highest); latencies pool all rounds"
    );
    for target in &targets {
        match &target.ports {
            Ok(_) => println!("  {:<13} {}", target.name, target.description),
            Err(e) => println!("  {:<13} NOT RUN: {e}", target.name),
        }
    }

    let side = (counters.as_ref(), &load, tick);
    let bulk = async |streams: usize| {
        let label = format!("bulk, {streams} stream(s)");
        measure_rounds(&label, &targets, settings, side, async |ports, probe| {
            run_bulk(ports.bulk, streams, settings, &counters, probe).await
        })
        .await
    };
    let (bulk1, bulk8) = (bulk(1).await, bulk(BULK_STREAMS).await);
    let short = async |clients: usize| {
        let label = format!("short, {clients} client(s)");
        measure_rounds(&label, &targets, settings, side, async |ports, probe| {
            run_short(ports.short, clients, settings, probe).await
        })
        .await
    };
    let (short1, short4) = (short(1).await, short(SHORT_CLIENTS).await);
    let (bulk1, bulk8) = (named(&targets, bulk1), named(&targets, bulk8));
    let (short1, short4) = (named(&targets, short1), named(&targets, short4));

    print_bulk(
        "1. bulk, 1 stream (client <-> backend sink+source, both directions at once; MB = 10^6 B)",
        &bulk1,
    );
    print_bulk(
        &format!("2. bulk, {BULK_STREAMS} parallel streams (aggregate)"),
        &bulk8,
    );
    print_short(
        &format!(
            "3. short connections, 1 client (connect, {REQUEST} B request, {RESPONSE} B answer, \
             backend closes)"
        ),
        &short1,
    );
    print_short(
        &format!("4. short connections, {SHORT_CLIENTS} concurrent clients"),
        &short4,
    );

    println!("\ngoals");
    bulk_goal("bulk, 1 stream", &bulk1);
    bulk_goal(&format!("bulk, {BULK_STREAMS} streams"), &bulk8);
    short_goals("short, 1 client", &short1);
    short_goals(&format!("short, {SHORT_CLIENTS} clients"), &short4);

    for target in &mut targets {
        if let Some(mut child) = target.running.take() {
            child.stop();
        }
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(PROXY_CHILD) {
        if let Err(e) = run_proxy_child(&args[1..]) {
            eprintln!("drover proxy child: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) == Some(NEIGHBOUR_CHILD) {
        if let Err(e) = run_neighbour_child(&args[1..]) {
            eprintln!("busy neighbour: {e}");
            std::process::exit(1);
        }
        return;
    }
    let settings = Settings::from_args();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("proxy benchmark: cannot build the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(settings)) {
        eprintln!("proxy benchmark failed: {e}");
        std::process::exit(1);
    }
}
