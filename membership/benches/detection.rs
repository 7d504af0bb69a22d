//! Does sealing gossip delay the detection of a dead member?
//!
//! For each mode (plain, sealed; alternated trial by trial, in ABBA order, so that drift on
//! the shared machine hits both), 4 members gossip over real UDP on 127.0.0.181–184 with the
//! agent's production settings (`MembershipConfig::new` defaults, which `agent/src/gossip.rs`
//! keeps except for `gossip_interval`, whose agent default is the same 250 ms). Once every
//! member sees all 4 live and ~3 s of steady gossip have passed (plus 0–1 gossip interval, so
//! the kill does not always land just after a round), member m4 is stopped without
//! a leave (`Membership::stop`: the gossip loop ends and the socket closes, nothing is sent,
//! as after a SIGKILL). The time from the kill until each of the 3 survivors no longer lists
//! m4 in `live_members` is measured; the first and the last survivor are reported.
//!
//! Run: `cargo bench -p drover-membership --bench detection [-- N]` (N trials per mode,
//! default 10).

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::time::{Duration, Instant};

use drover_membership::{
    CountersSnapshot, GossipKey, Keyring, KeyringHandle, Membership, MembershipConfig,
    MembershipError,
};
use drover_proto::gossip::{self, MemberFacts, Role};
use drover_proto::model::Resources;
use tokio::sync::watch;

const DEFAULT_TRIALS: usize = 10;
const MEMBERS: [(&str, u8); 4] = [("m1", 181), ("m2", 182), ("m3", 183), ("m4", 184)];
/// The member killed in every trial (not the seed).
const VICTIM: &str = "m4";
const STEADY: Duration = Duration::from_secs(3);
/// Kill phases relative to the gossip rounds are spread over one interval: round `r` waits
/// `frac(r * GOLDEN) * gossip_interval` more after the steady window (the same in both modes
/// of a round). Without it the kill always lands just after a round (convergence is seen at
/// a round, and 3 s is a whole number of rounds), which a real crash does not.
const GOLDEN: f64 = 0.618_033_988_749_895;
/// Generous: two cores shared with a compiling neighbour.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(15);
const DETECT_TIMEOUT: Duration = Duration::from_secs(20);
/// `sysconf(_SC_CLK_TCK)` on Linux (checked with `getconf CLK_TCK` on this machine).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

type Members = BTreeMap<String, MemberFacts>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Sealed,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Sealed => "sealed",
        }
    }
}

/// What one trial measured.
#[derive(Debug)]
struct Trial {
    converge: Duration,
    /// Extra wait after the steady window, to spread the kill's phase (see [`GOLDEN`]).
    phase: Duration,
    /// Time `stop()` took (the kill itself).
    stop: Duration,
    /// Per survivor: time from the kill until m4 left its `live_members`.
    detected: Vec<(&'static str, Duration)>,
    /// Process CPU time (user + system) over the steady window, if /proc was readable.
    steady_cpu: Option<Duration>,
    /// Datagrams sent by all 4 members over the steady window.
    steady_datagrams_out: u64,
    /// Some member's view changed during the steady window (a false suspicion or flap).
    steady_view_changed: bool,
    /// Datagrams dropped by the survivors' guards (sealed or wire refusals) over the trial.
    dropped: u64,
    /// m4 is in every survivor's `dead_members` after detection.
    listed_dead: bool,
}

impl Trial {
    fn first(&self) -> Duration {
        self.detected
            .iter()
            .map(|(_, d)| *d)
            .min()
            .unwrap_or_default()
    }

    fn last(&self) -> Duration {
        self.detected
            .iter()
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default()
    }
}

fn addr_of(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// A UDP address on `ip` that was free a moment ago.
fn free_udp_addr(ip: Ipv4Addr) -> SocketAddr {
    StdUdpSocket::bind((ip, 0))
        .and_then(|s| s.local_addr())
        .unwrap_or_else(|e| panic!("cannot bind a UDP socket on {ip} (loopback alias): {e}"))
}

/// The initial keys an agent publishes (`agent/src/gossip.rs::join`), so datagrams have
/// production size.
fn agent_keys(ip: Ipv4Addr) -> Vec<(String, String)> {
    let labels: BTreeMap<String, String> = [("zone".to_string(), "bench".to_string())].into();
    vec![
        (gossip::ROLE.to_string(), Role::Agent.as_str().to_string()),
        (gossip::ADDR.to_string(), ip.to_string()),
        (
            gossip::CAPACITY.to_string(),
            gossip::encode_resources(Resources {
                cpu_millis: 2_000,
                memory_bytes: 4 << 30,
            }),
        ),
        (
            gossip::LABELS.to_string(),
            gossip::encode_labels(&labels).expect("encoding the bench labels"),
        ),
    ]
}

/// Starts member `node_id` on `ip` with the agent's settings; retries while the port is taken.
async fn start_member(
    cluster: &str,
    node_id: &str,
    ip: Ipv4Addr,
    keyring: Option<KeyringHandle>,
    seeds: &[SocketAddr],
) -> Membership {
    let mut last = None;
    for _ in 0..50 {
        // What the agent does: `MembershipConfig::new` plus seeds and gossip_interval (whose
        // agent default, 250 ms, is MembershipConfig's default too).
        let mut config = MembershipConfig::new(cluster, node_id, 1, free_udp_addr(ip));
        config.seeds = seeds.iter().map(ToString::to_string).collect();
        if let Some(keyring) = &keyring {
            config = config.with_keyring(keyring.clone());
        }
        match Membership::start(config, agent_keys(ip)).await {
            Ok(m) => return m,
            Err(e @ MembershipError::Start { .. }) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("starting {node_id}: {e}"),
        }
    }
    panic!("starting {node_id}: port always taken: {last:?}");
}

/// User + system CPU time of this process so far, from /proc/self/stat (10 ms resolution).
fn process_cpu() -> Option<Duration> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces), starting at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / CLOCK_TICKS_PER_SEC,
    ))
}

fn dropped(c: &CountersSnapshot) -> u64 {
    c.sealed_rejected + c.replayed + c.stale + c.fragments_dropped + c.refused + c.undecoded
}

/// One trial: start 4 members, converge, steady gossip, kill m4, time detection, clean up.
async fn trial(mode: Mode, index: usize, phase: Duration) -> Result<Trial, String> {
    let cluster = format!("drover-bench-detection-{}-{index}", mode.name());
    let key = match mode {
        Mode::Plain => None,
        Mode::Sealed => Some(GossipKey::generate().expect("generating a gossip key")),
    };
    // Each member gets its own handle on the same key, as separate processes would.
    let keyring = || key.clone().map(|k| KeyringHandle::new(Keyring::new(k)));

    let started = Instant::now();
    let mut members: Vec<(&'static str, Membership)> = Vec::new();
    let mut seeds = Vec::new();
    for (node_id, last) in MEMBERS {
        let m = start_member(&cluster, node_id, addr_of(last), keyring(), &seeds).await;
        if seeds.is_empty() {
            seeds.push(m.config().advertise);
        }
        members.push((node_id, m));
    }

    let outcome = measure(&mut members, started, phase).await;

    for (_, m) in members {
        m.stop().await;
    }
    outcome
}

/// Everything between convergence and detection; stops the victim, leaves the survivors in
/// `members` for the caller to stop.
async fn measure(
    members: &mut Vec<(&'static str, Membership)>,
    started: Instant,
    phase: Duration,
) -> Result<Trial, String> {
    let all = |m: &Members| MEMBERS.iter().all(|(id, _)| m.contains_key(*id));
    let mut views: Vec<watch::Receiver<Members>> =
        members.iter().map(|(_, m)| m.live_members()).collect();
    for ((node_id, _), rx) in members.iter().zip(views.iter_mut()) {
        let outcome = tokio::time::timeout(CONVERGE_TIMEOUT, rx.wait_for(all))
            .await
            .map(|r| r.is_ok());
        match outcome {
            Ok(true) => {}
            Ok(false) => return Err(format!("{node_id}: membership channel closed")),
            Err(_) => {
                return Err(format!(
                    "{node_id} does not see all 4 after {CONVERGE_TIMEOUT:?}: {:?}",
                    rx.borrow().keys().collect::<Vec<_>>()
                ));
            }
        }
    }
    let converge = started.elapsed();

    // Steady gossip.
    for rx in &mut views {
        rx.mark_unchanged();
    }
    let before_out: u64 = members
        .iter()
        .map(|(_, m)| m.counters().snapshot().datagrams_out)
        .sum();
    let cpu_before = process_cpu();
    tokio::time::sleep(STEADY).await;
    let cpu_after = process_cpu();
    let after_out: u64 = members
        .iter()
        .map(|(_, m)| m.counters().snapshot().datagrams_out)
        .sum();
    let steady_cpu = cpu_before.zip(cpu_after).map(|(b, a)| a.saturating_sub(b));
    tokio::time::sleep(phase).await;
    let steady_view_changed = views.iter().any(|rx| rx.has_changed().unwrap_or(true));
    if let Some(((node_id, _), rx)) = members
        .iter()
        .zip(&views)
        .find(|(_, rx)| !all(&rx.borrow()))
    {
        return Err(format!(
            "{node_id} lost a member before the kill: {:?}",
            rx.borrow().keys().collect::<Vec<_>>()
        ));
    }

    // Kill m4: watchers first (they only wait), then the stop.
    let victim_index = members
        .iter()
        .position(|(id, _)| *id == VICTIM)
        .expect("the victim is a member");
    let killed = Instant::now();
    let watchers: Vec<_> = members
        .iter()
        .zip(&views)
        .filter(|((id, _), _)| *id != VICTIM)
        .map(|((id, _), rx)| {
            let mut rx = rx.clone();
            let id = *id;
            tokio::spawn(async move {
                let gone =
                    tokio::time::timeout(DETECT_TIMEOUT, rx.wait_for(|m| !m.contains_key(VICTIM)))
                        .await;
                match gone {
                    Ok(Ok(_)) => Ok((id, killed.elapsed())),
                    Ok(Err(_)) => Err(format!("{id}: membership channel closed")),
                    Err(_) => Err(format!(
                        "{id} still lists {VICTIM} after {DETECT_TIMEOUT:?}"
                    )),
                }
            })
        })
        .collect();
    // The closest thing to a SIGKILL in-process: `stop` ends the gossip loop and closes the
    // socket without publishing anything (no `state=leaving`; chitchat has no leave message).
    let (_, victim) = members.remove(victim_index);
    victim.stop().await;
    let stop = killed.elapsed();

    let mut detected = Vec::new();
    for watcher in watchers {
        detected.push(watcher.await.expect("a detection watcher panicked")?);
    }
    let mut listed_dead = true;
    let mut dropped_total = 0;
    for (id, m) in members.iter().filter(|(id, _)| *id != VICTIM) {
        let dead = m.dead_members().await;
        if !dead.iter().any(|d| d == VICTIM) {
            eprintln!("  note: {id} does not list {VICTIM} in dead_members: {dead:?}");
            listed_dead = false;
        }
        dropped_total += dropped(&m.counters().snapshot());
    }
    Ok(Trial {
        converge,
        phase,
        stop,
        detected,
        steady_cpu,
        steady_datagrams_out: after_out.saturating_sub(before_out),
        steady_view_changed,
        dropped: dropped_total,
        listed_dead,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Summary {
    p50_first: Duration,
    p50_last: Duration,
    mean_first: Duration,
    mean_last: Duration,
}

fn mean(v: &[Duration]) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.iter().sum::<Duration>() / u32::try_from(v.len()).unwrap_or(u32::MAX)
}

fn summarize(mode: Mode, trials: &[Trial], failures: usize) -> Summary {
    let mut first: Vec<Duration> = trials.iter().map(Trial::first).collect();
    let mut last: Vec<Duration> = trials.iter().map(Trial::last).collect();
    let mut each: Vec<Duration> = trials
        .iter()
        .flat_map(|t| t.detected.iter().map(|(_, d)| *d))
        .collect();
    first.sort();
    last.sort();
    each.sort();
    let line = |what: &str, v: &[Duration]| {
        println!(
            "  {:<6} {what:<15} n={:<3} p50={:>7.1} ms  p90={:>7.1} ms  max={:>7.1} ms  \
             (min={:>7.1} ms  mean={:>7.1} ms)",
            mode.name(),
            v.len(),
            ms(percentile(v, 50.0)),
            ms(percentile(v, 90.0)),
            ms(v.last().copied().unwrap_or_default()),
            ms(v.first().copied().unwrap_or_default()),
            ms(mean(v)),
        );
    };
    line("first survivor", &first);
    line("last survivor", &last);
    line("every survivor", &each);
    let cpu: Vec<Duration> = trials.iter().filter_map(|t| t.steady_cpu).collect();
    if !cpu.is_empty() {
        let total: Duration = cpu.iter().sum();
        let window = STEADY.as_secs_f64() * cpu.len() as f64;
        let datagrams: u64 = trials.iter().map(|t| t.steady_datagrams_out).sum();
        println!(
            "  {:<6} steady-window CPU: {:.0} ms per {:.0} s window (mean over {} trials, \
             {:.1}% of one core, 4 members); {:.0} datagrams out per window; {:.1} us CPU per \
             datagram",
            mode.name(),
            ms(total) / cpu.len() as f64,
            STEADY.as_secs_f64(),
            cpu.len(),
            100.0 * total.as_secs_f64() / window,
            datagrams as f64 / cpu.len() as f64,
            if datagrams == 0 {
                0.0
            } else {
                total.as_secs_f64() * 1e6 / datagrams as f64
            },
        );
    }
    let flaps = trials.iter().filter(|t| t.steady_view_changed).count();
    let not_dead = trials.iter().filter(|t| !t.listed_dead).count();
    let dropped: u64 = trials.iter().map(|t| t.dropped).sum();
    println!(
        "  {:<6} failed trials: {failures}; trials with a view change in the steady window: \
         {flaps}; trials where a survivor did not list {VICTIM} dead: {not_dead}; datagrams \
         dropped by survivors' guards: {dropped}",
        mode.name(),
    );
    Summary {
        p50_first: percentile(&first, 50.0),
        p50_last: percentile(&last, 50.0),
        mean_first: mean(&first),
        mean_last: mean(&last),
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` appends `--bench`; the first plain number is the trial count.
    let trials_per_mode = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| {
            a.parse::<usize>()
                .unwrap_or_else(|_| panic!("trial count {a:?} is not a number"))
        })
        .unwrap_or(DEFAULT_TRIALS);
    let probe = MembershipConfig::new("probe", "probe", 1, SocketAddr::from(([127, 0, 0, 181], 1)));
    println!(
        "detection: {trials_per_mode} trials per mode, 4 members on 127.0.0.181-184, kill \
         {VICTIM} after {STEADY:?} of steady gossip + a phase spread over one gossip interval; \
         times from the kill until a survivor's live_members drops {VICTIM}"
    );
    println!(
        "settings (MembershipConfig::new defaults, as used by agent/src/gossip.rs): \
         gossip_interval={:?} phi_threshold={} dead_node_grace={:?} \
         marked_for_deletion_grace={:?}; failure detector (lib.rs): sampling_window=1000, \
         max_interval=10s, initial_interval=gossip_interval",
        probe.gossip_interval,
        probe.phi_threshold,
        probe.dead_node_grace,
        probe.marked_for_deletion_grace,
    );
    println!(
        "tokio multi-thread runtime, {} worker threads",
        std::thread::available_parallelism().map_or(0, usize::from)
    );

    let bench_started = Instant::now();
    let mut results: BTreeMap<&'static str, (Vec<Trial>, usize)> = BTreeMap::new();
    for round in 0..trials_per_mode {
        // ABBA: plain first on even rounds, sealed first on odd ones.
        let order = if round % 2 == 0 {
            [Mode::Plain, Mode::Sealed]
        } else {
            [Mode::Sealed, Mode::Plain]
        };
        let phase = probe
            .gossip_interval
            .mul_f64((round as f64 * GOLDEN).fract());
        for mode in order {
            let outcome = trial(mode, round, phase).await;
            let entry = results.entry(mode.name()).or_default();
            match outcome {
                Ok(t) => {
                    let each: Vec<String> = t
                        .detected
                        .iter()
                        .map(|(id, d)| format!("{id}={:.0}", ms(*d)))
                        .collect();
                    println!(
                        "trial {:>2} {:<6} phase={:>3.0} ms first={:>7.1} ms last={:>7.1} ms [{}] \
                         converge={:>4.0} ms stop={:.2} ms steady_cpu={} out={} view_changed={} \
                         dropped={}",
                        round + 1,
                        mode.name(),
                        ms(t.phase),
                        ms(t.first()),
                        ms(t.last()),
                        each.join(" "),
                        ms(t.converge),
                        ms(t.stop),
                        t.steady_cpu
                            .map_or_else(|| "n/a".to_string(), |c| format!("{:.0}ms", ms(c))),
                        t.steady_datagrams_out,
                        t.steady_view_changed,
                        t.dropped,
                    );
                    entry.0.push(t);
                }
                Err(e) => {
                    println!("trial {:>2} {:<6} FAILED: {e}", round + 1, mode.name());
                    entry.1 += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    println!(
        "summary (nearest-rank percentiles; total run {:.0} s):",
        bench_started.elapsed().as_secs_f64()
    );
    let empty = (Vec::new(), 0);
    let (plain, plain_failed) = results.get("plain").unwrap_or(&empty);
    let (sealed, sealed_failed) = results.get("sealed").unwrap_or(&empty);
    let p = summarize(Mode::Plain, plain, *plain_failed);
    let s = summarize(Mode::Sealed, sealed, *sealed_failed);
    let ratio = |s: Duration, p: Duration| {
        if p.is_zero() {
            f64::NAN
        } else {
            s.as_secs_f64() / p.as_secs_f64()
        }
    };
    println!(
        "  ratio sealed/plain at p50: first survivor {:.3}, last survivor {:.3}",
        ratio(s.p50_first, p.p50_first),
        ratio(s.p50_last, p.p50_last),
    );
    println!(
        "  ratio sealed/plain of means: first survivor {:.3}, last survivor {:.3}",
        ratio(s.mean_first, p.mean_first),
        ratio(s.mean_last, p.mean_last),
    );
}
