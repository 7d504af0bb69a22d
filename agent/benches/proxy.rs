//! Service proxy throughput and latency on loopback: a direct connection, Drover's proxy
//! ([`ProxyManager`] in this process, on its own single-thread tokio runtime in its own OS
//! thread), HAProxy and nginx's stream proxy (separate processes, one worker thread each),
//! all forwarding TCP to the same backends.
//!
//! Run with `cargo bench -p drover-agent --bench proxy [-- quick]`; `quick` measures 1 s per
//! run instead of 4 s. HAProxy and nginx are taken from `PATH` (Debian: `apt-get install
//! haproxy nginx libnginx-mod-stream`); when one is missing or does not start, the benchmark
//! says so and goes on with the others.
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

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use drover_agent::proxy::balancer::Endpoint;
use drover_agent::proxy::{ProxyConfig, ProxyManager, ServiceRoute};
use drover_proto::model::Strategy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
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

#[derive(Debug, Clone, Copy)]
struct Settings {
    warmup: Duration,
    measure: Duration,
}

impl Settings {
    fn from_args() -> Settings {
        let quick = std::env::args()
            .skip(1)
            .any(|a| a == "quick" || a == "--quick");
        if quick {
            Settings {
                warmup: Duration::from_millis(200),
                measure: Duration::from_secs(1),
            }
        } else {
            Settings {
                warmup: Duration::from_millis(500),
                measure: Duration::from_secs(4),
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

async fn start_backends(counters: &Arc<Counters>) -> io::Result<Ports> {
    let bulk = TcpListener::bind((LOCALHOST, 0)).await?;
    let short = TcpListener::bind((LOCALHOST, 0)).await?;
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

#[derive(Debug, Clone, Copy)]
struct ShortRun {
    per_s: f64,
    p50: Duration,
    p99: Duration,
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
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
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

fn thread_named(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
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

/// Drover's [`ProxyManager`] on a current-thread runtime in its own OS thread.
#[derive(Debug)]
struct DroverProxy {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Thread names of the two Drover targets: copy (the default) and splice(2).
const DROVER_THREAD: &str = "drover-proxy";
const DROVER_SPLICE_THREAD: &str = "drover-splice";

fn route(service: &str, port: u16, backend: SocketAddr) -> ServiceRoute {
    ServiceRoute {
        service: service.to_owned(),
        port,
        strategy: Strategy::RoundRobin,
        revision_weights: Default::default(),
        endpoints: vec![Endpoint {
            id: format!("{service}-0"),
            address: backend,
            revision: 1,
            weight: 1,
        }],
    }
}

fn start_drover(
    listen: Ports,
    backends: Ports,
    splice: bool,
    thread_name: &str,
) -> Result<DroverProxy, String> {
    let routes = vec![
        route("bulk", listen.bulk.port(), backends.bulk),
        route("short", listen.short.port(), backends.short),
    ];
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Vec<u16>, String>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(thread_name.to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot build its runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let config = ProxyConfig {
                    splice,
                    ..ProxyConfig::default()
                };
                let mut manager = ProxyManager::new(LOCALHOST, config, 7);
                manager.apply(routes).await;
                let _ = ready_tx.send(Ok(manager.listening_ports()));
                let _ = stop_rx.await;
                manager.shutdown().await;
            });
        })
        .map_err(|e| format!("cannot start its thread: {e}"))?;
    let mut proxy = DroverProxy {
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    let listening = ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "did not start within 10 s".to_owned())??;
    for port in [listen.bulk.port(), listen.short.port()] {
        if !listening.contains(&port) {
            proxy.stop();
            return Err(format!("could not listen on port {port}"));
        }
    }
    Ok(proxy)
}

impl DroverProxy {
    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for DroverProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// HAProxy or nginx, run as a child process in the foreground.
#[derive(Debug)]
struct External {
    name: &'static str,
    child: Option<Child>,
}

impl External {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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

/// Start a proxy process and wait until both its ports accept connections.
async fn start_external(
    name: &'static str,
    command: &mut Command,
    log: &Path,
    listen: Ports,
) -> Result<External, String> {
    let log_file = std::fs::File::create(log).map_err(|e| format!("cannot create log: {e}"))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| format!("cannot create log: {e}"))?;
    let child = command
        .stdin(Stdio::null())
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

fn free_ports() -> io::Result<Ports> {
    let free =
        || -> io::Result<SocketAddr> { std::net::TcpListener::bind((LOCALHOST, 0))?.local_addr() };
    Ok(Ports {
        bulk: free()?,
        short: free()?,
    })
}

#[derive(Debug)]
enum Running {
    Drover(DroverProxy),
    External(External),
}

/// One thing to measure: a direct connection or a proxy.
#[derive(Debug)]
struct Target {
    name: &'static str,
    description: String,
    /// `Err` says why the target is not measured.
    ports: Result<Ports, String>,
    cpu: CpuSource,
    running: Option<Running>,
}

async fn start_targets(dir: &Path, backends: Ports) -> Vec<Target> {
    let mut targets = vec![Target {
        name: "direct",
        description: "client connects to the backend itself".to_owned(),
        ports: Ok(backends),
        cpu: CpuSource::Unknown,
        running: None,
    }];

    for (name, splice, thread, path) in [
        (
            "drover",
            false,
            DROVER_THREAD,
            "copy, buffers growing to 64 KiB (the default)",
        ),
        (
            "drover-splice",
            true,
            DROVER_SPLICE_THREAD,
            "splice(2) through pooled pipes (proxy_splice = true)",
        ),
    ] {
        let drover = free_ports()
            .map_err(|e| format!("no free port: {e}"))
            .and_then(|listen| Ok((listen, start_drover(listen, backends, splice, thread)?)));
        targets.push(match drover {
            Ok((listen, proxy)) => Target {
                name,
                description: format!(
                    "ProxyManager (release build), {path}, own current-thread tokio \
                     runtime in its own OS thread of the benchmark process"
                ),
                ports: Ok(listen),
                cpu: thread_named(thread).map_or(CpuSource::Unknown, CpuSource::Thread),
                running: Some(Running::Drover(proxy)),
            },
            Err(e) => Target {
                name,
                description: "ProxyManager".to_owned(),
                ports: Err(e),
                cpu: CpuSource::Unknown,
                running: None,
            },
        });
    }

    let haproxy = async {
        let version = haproxy_version()?;
        let listen = free_ports().map_err(|e| format!("no free port: {e}"))?;
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, haproxy_config(listen, backends))
            .map_err(|e| format!("cannot write its config: {e}"))?;
        let mut command = Command::new("haproxy");
        command.arg("-f").arg(&cfg).arg("-db");
        let running = start_external("haproxy", &mut command, &dir.join("haproxy.log"), listen)
            .await
            .map_err(|e| format!("HAProxy {version}: {e}"))?;
        Ok::<_, String>((version, listen, running))
    };
    targets.push(match haproxy.await {
        Ok((version, listen, running)) => Target {
            name: "haproxy",
            description: format!("HAProxy {version}, separate process, nbthread 1, mode tcp"),
            ports: Ok(listen),
            cpu: running.pid().map_or(CpuSource::Unknown, CpuSource::Process),
            running: Some(Running::External(running)),
        },
        Err(e) => Target {
            name: "haproxy",
            description: "HAProxy".to_owned(),
            ports: Err(e),
            cpu: CpuSource::Unknown,
            running: None,
        },
    });

    let nginx = async {
        let version = nginx_version()?;
        let module = nginx_stream_module()?;
        let listen = free_ports().map_err(|e| format!("no free port: {e}"))?;
        let cfg = dir.join("nginx.conf");
        std::fs::write(&cfg, nginx_config(dir, &module, listen, backends))
            .map_err(|e| format!("cannot write its config: {e}"))?;
        let mut prefix = PathBuf::from(dir);
        prefix.push("");
        let mut command = Command::new("nginx");
        command
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&cfg)
            .arg("-g")
            .arg("daemon off;");
        let running = start_external("nginx", &mut command, &dir.join("nginx.log"), listen)
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
        Ok((version, listen, running)) => Target {
            name: "nginx",
            description: format!(
                "nginx {version}, separate process, worker_processes 1, stream proxy_pass"
            ),
            ports: Ok(listen),
            cpu: running.pid().map_or(CpuSource::Unknown, CpuSource::Process),
            running: Some(Running::External(running)),
        },
        Err(e) => Target {
            name: "nginx",
            description: "nginx stream".to_owned(),
            ports: Err(e),
            cpu: CpuSource::Unknown,
            running: None,
        },
    });
    targets
}

// ---------------------------------------------------------------------------------------
// Report

fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "-".to_owned(), |s| format!("{:.0}%", s * 100.0))
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn print_bulk(title: &str, runs: &[(&str, Option<BulkRun>)]) {
    println!("\n{title}");
    println!(
        "  {:<13} {:>10} {:>10} {:>10} {:>9} {:>9} {:>7}",
        "target", "MB/s", "vs direct", "proxy CPU", "load CPU", "host CPU", "errors"
    );
    let direct = runs.first().and_then(|(_, r)| *r).map(|r| r.mb_per_s);
    for (name, run) in runs {
        let Some(run) = run else {
            println!("  {name:<8} {:>10}", "not run");
            continue;
        };
        let ratio = direct.map_or_else(|| "-".to_owned(), |d| format!("{:.2}x", run.mb_per_s / d));
        println!(
            "  {:<13} {:>10.0} {:>10} {:>10} {:>9} {:>9} {:>7}",
            name,
            run.mb_per_s,
            ratio,
            percent(run.cpu.proxy),
            percent(run.cpu.load),
            percent(run.cpu.host),
            run.errors
        );
    }
}

fn print_short(title: &str, runs: &[(&str, Option<ShortRun>)]) {
    println!("\n{title}");
    println!(
        "  {:<13} {:>8} {:>10} {:>8} {:>8} {:>9} {:>9} {:>10} {:>9} {:>9} {:>7}",
        "target",
        "conn/s",
        "vs direct",
        "p50 µs",
        "p99 µs",
        "+p50 µs",
        "+p99 µs",
        "proxy CPU",
        "load CPU",
        "host CPU",
        "errors"
    );
    let direct = runs.first().and_then(|(_, r)| *r);
    for (name, run) in runs {
        let Some(run) = run else {
            println!("  {name:<8} {:>8}", "not run");
            continue;
        };
        let (ratio, added50, added99) = match direct {
            Some(d) => (
                format!("{:.2}x", run.per_s / d.per_s),
                format!("{:+.0}", micros(run.p50) - micros(d.p50)),
                format!("{:+.0}", micros(run.p99) - micros(d.p99)),
            ),
            None => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        println!(
            "  {:<13} {:>8.0} {:>10} {:>8.0} {:>8.0} {:>9} {:>9} {:>10} {:>9} {:>9} {:>7}",
            name,
            run.per_s,
            ratio,
            micros(run.p50),
            micros(run.p99),
            added50,
            added99,
            percent(run.cpu.proxy),
            percent(run.cpu.load),
            percent(run.cpu.host),
            run.errors
        );
    }
}

fn find<T: Copy>(runs: &[(&str, Option<T>)], name: &str) -> Option<T> {
    runs.iter().find(|(n, _)| *n == name).and_then(|(_, r)| *r)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn bulk_goal(label: &str, runs: &[(&str, Option<BulkRun>)]) {
    match (find(runs, "drover"), find(runs, "direct")) {
        (Some(d), Some(direct)) => {
            let ratio = d.mb_per_s / direct.mb_per_s;
            println!(
                "  {label}: drover {:.2}x of direct (goal >= {BULK_GOAL:.2}x): {}",
                ratio,
                verdict(ratio >= BULK_GOAL)
            );
        }
        _ => println!("  {label}: cannot judge (drover or direct not measured)"),
    }
}

fn short_goals(label: &str, runs: &[(&str, Option<ShortRun>)]) {
    let (Some(d), Some(h), Some(direct)) = (
        find(runs, "drover"),
        find(runs, "haproxy"),
        find(runs, "direct"),
    ) else {
        println!("  {label}: cannot judge (drover, haproxy or direct not measured)");
        return;
    };
    println!(
        "  {label}, rate: drover {:.0}/s vs haproxy {:.0}/s = {:.2}x (goal >= 1.00x): {}",
        d.per_s,
        h.per_s,
        d.per_s / h.per_s,
        verdict(d.per_s >= h.per_s)
    );
    let added_d = micros(d.p99) - micros(direct.p99);
    let added_h = micros(h.p99) - micros(direct.p99);
    println!(
        "  {label}, added p99: drover {added_d:+.0} µs vs haproxy {added_h:+.0} µs \
         (goal <= haproxy's): {}",
        verdict(added_d <= added_h)
    );
}

// ---------------------------------------------------------------------------------------

async fn run(settings: Settings) -> Result<(), BoxError> {
    let counters = Arc::new(Counters::default());
    let backends = start_backends(&counters).await?;
    let dir = tempfile::Builder::new()
        .prefix("drover-proxy-bench")
        .tempdir()?;
    let mut targets = start_targets(dir.path(), backends).await;
    let tick = clock_tick();
    let load = CpuSource::Thread(std::process::id());

    println!("service proxy benchmark (loopback, release build)");
    println!(
        "cpus: {}; window per run: {:.1} s warm-up + {:.1} s measured",
        std::thread::available_parallelism().map_or(0, usize::from),
        settings.warmup.as_secs_f64(),
        settings.measure.as_secs_f64()
    );
    println!(
        "load generator and backends: one current-thread tokio runtime on the main thread \
         (one core)"
    );
    for target in &targets {
        match &target.ports {
            Ok(_) => println!("  {:<13} {}", target.name, target.description),
            Err(e) => println!("  {:<13} NOT RUN: {e}", target.name),
        }
    }

    let mut bulk1 = Vec::new();
    let mut bulk8 = Vec::new();
    let mut short1 = Vec::new();
    let mut short4 = Vec::new();
    for (streams, runs) in [(1, &mut bulk1), (BULK_STREAMS, &mut bulk8)] {
        for target in &targets {
            let run = match target.ports {
                Ok(ports) => {
                    wait_idle(&counters).await;
                    let probe = CpuProbe {
                        proxy: target.cpu.clone(),
                        load: load.clone(),
                        tick,
                    };
                    Some(run_bulk(ports.bulk, streams, settings, &counters, &probe).await)
                }
                Err(_) => None,
            };
            runs.push((target.name, run));
        }
    }
    for (clients, runs) in [(1, &mut short1), (SHORT_CLIENTS, &mut short4)] {
        for target in &targets {
            let run = match target.ports {
                Ok(ports) => {
                    wait_idle(&counters).await;
                    let probe = CpuProbe {
                        proxy: target.cpu.clone(),
                        load: load.clone(),
                        tick,
                    };
                    Some(run_short(ports.short, clients, settings, &probe).await)
                }
                Err(_) => None,
            };
            runs.push((target.name, run));
        }
    }

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
        match target.running.take() {
            Some(Running::Drover(mut proxy)) => proxy.stop(),
            Some(Running::External(mut external)) => external.stop(),
            None => {}
        }
    }
    Ok(())
}

fn main() {
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
