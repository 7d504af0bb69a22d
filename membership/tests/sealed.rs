//! Sealed gossip over real UDP on loopback (127.0.0.171–179, addresses no other test of this
//! crate uses): sealed members converge; a member with another key, or none, never joins;
//! a captured datagram replayed changes nothing; keys rotate live on a 3-member cluster with
//! no member ever seen dead; datagrams sealed with a removed key, tampered with or stale are
//! dropped, counted and logged a few times, not once each; a state too big for one datagram
//! arrives in fragments.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use drover_membership::seal::{self, Opened, Opener, Sealer};
use drover_membership::{
    GossipKey, Keyring, KeyringHandle, Membership, MembershipConfig, MembershipError,
};
use drover_proto::gossip::{self, AllocFact, MemberFacts, Role};
use drover_proto::model::AllocState;
use rand::RngExt as _;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

const CLUSTER: &str = "drover-sealed";
/// Generous: the box has two shared cores and other builds may run beside the tests.
const CONVERGE: Duration = Duration::from_secs(10);
const REPLY: Duration = Duration::from_secs(5);

type Members = BTreeMap<String, MemberFacts>;

/// The `listen` field of every warning logged in this test binary (empty when absent).
static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct RecordWarnings;

#[derive(Default)]
struct ListenField(String);

impl Visit for ListenField {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "listen" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: Subscriber> Layer<S> for RecordWarnings {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() <= Level::WARN {
            let mut listen = ListenField::default();
            event.record(&mut listen);
            WARNINGS.lock().unwrap().push(listen.0);
        }
    }
}

fn record_warnings() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::registry()
            .with(RecordWarnings)
            .try_init();
    });
}

/// Warnings logged so far by the socket listening on `addr`.
fn warnings_of(addr: SocketAddr) -> usize {
    let addr = addr.to_string();
    WARNINGS
        .lock()
        .unwrap()
        .iter()
        .filter(|listen| listen.contains(&addr))
        .count()
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// A UDP address on `ip` that was free a moment ago.
fn free_udp_addr(ip: Ipv4Addr) -> SocketAddr {
    StdUdpSocket::bind((ip, 0)).unwrap().local_addr().unwrap()
}

fn new_key() -> GossipKey {
    GossipKey::generate().unwrap()
}

fn handle(keys: &[&GossipKey]) -> KeyringHandle {
    KeyringHandle::new(Keyring::from_keys(keys.iter().map(|&k| k.clone())).unwrap())
}

/// Starts an agent member on `ip`, sealed with `keyring` unless `None`; retries while the
/// port is taken.
async fn start_member(
    node_id: &str,
    ip: Ipv4Addr,
    keyring: Option<&KeyringHandle>,
    seeds: &[SocketAddr],
) -> Membership {
    let initial = vec![
        (gossip::ROLE.to_string(), Role::Agent.as_str().to_string()),
        (gossip::ADDR.to_string(), ip.to_string()),
    ];
    let mut last = None;
    for _ in 0..50 {
        let mut config = MembershipConfig::new(CLUSTER, node_id, 1, free_udp_addr(ip));
        if let Some(keyring) = keyring {
            config = config.with_keyring(keyring.clone());
        }
        config.seeds = seeds.iter().map(ToString::to_string).collect();
        match Membership::start(config, initial.clone()).await {
            Ok(m) => return m,
            Err(e @ MembershipError::Start { .. }) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("starting {node_id}: {e}"),
        }
    }
    panic!("starting {node_id}: {}", last.unwrap());
}

async fn wait_until(
    what: &str,
    rx: &mut watch::Receiver<Members>,
    mut pred: impl FnMut(&Members) -> bool,
) {
    let outcome = tokio::time::timeout(CONVERGE, rx.wait_for(|m| pred(m)))
        .await
        .map(|r| r.is_ok());
    match outcome {
        Ok(true) => {}
        Ok(false) => panic!("{what}: the membership channel closed"),
        Err(_) => panic!(
            "{what}: not true after {CONVERGE:?}; members: {:#?}",
            *rx.borrow()
        ),
    }
}

fn ids(m: &Members) -> BTreeSet<&str> {
    m.keys().map(String::as_str).collect()
}

async fn wait_for_ids(member: &Membership, expected: &[&str]) {
    let expected: BTreeSet<&str> = expected.iter().copied().collect();
    let mut rx = member.live_members();
    let what = format!("{} sees {expected:?}", member.config().node_id);
    wait_until(&what, &mut rx, |m| ids(m) == expected).await;
}

fn web_fact(port: u16) -> AllocFact {
    AllocFact {
        service: "web".into(),
        revision: 1,
        endpoint: Some(SocketAddr::from(([127, 0, 0, 171], port))),
        health: AllocState::Healthy,
    }
}

/// A chitchat Syn with an empty digest (V0): a member answers it with a SynAck.
fn syn() -> Vec<u8> {
    let mut out = 45_139u16.to_le_bytes().to_vec();
    out.extend([0, 0]); // protocol V0, Syn
    out.extend(0u16.to_le_bytes()); // no digest entries
    out.extend((CLUSTER.len() as u16).to_le_bytes());
    out.extend(CLUSTER.as_bytes());
    out
}

fn seal_with(keyring: &Keyring, message: &[u8], unix_ms: u64) -> Vec<u8> {
    let mut frames = Sealer::new().seal(keyring, message, unix_ms).unwrap();
    assert_eq!(frames.len(), 1);
    frames.pop().unwrap()
}

/// The next sealed reply on `raw` within `wait`, opened with `keyring`.
async fn sealed_reply(raw: &UdpSocket, keyring: &Keyring, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0; 70_000];
    let mut opener = Opener::new();
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (len, _) = tokio::time::timeout(left, raw.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        let opened = opener.open(keyring, &buf[..len], seal::unix_ms_now(), Instant::now());
        match opened {
            Ok(Opened::Message { payload, .. }) => return Some(payload),
            Ok(Opened::Fragment) => continue,
            Err(e) => panic!("a reply that does not open: {e}"),
        }
    }
}

fn is_syn_ack(message: &[u8]) -> bool {
    message.len() > 4 && message[..2] == 45_139u16.to_le_bytes() && message[3] == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_members_converge_and_share_facts() {
    record_warnings();
    let keyring = handle(&[&new_key()]);
    let a = start_member("a", ip(171), Some(&keyring), &[]).await;
    let seeds = [a.config().advertise];
    // Each member has its own handle on a keyring with the same key.
    let b = start_member(
        "b",
        ip(172),
        Some(&handle(&[keyring.get().primary()])),
        &seeds,
    )
    .await;
    let c = start_member(
        "c",
        ip(173),
        Some(&handle(&[keyring.get().primary()])),
        &seeds,
    )
    .await;
    for m in [&a, &b, &c] {
        wait_for_ids(m, &["a", "b", "c"]).await;
    }
    b.set_allocation("b-1", &web_fact(3001)).await.unwrap();
    for m in [&a, &c] {
        let mut rx = m.live_members();
        wait_until("b-1 seen", &mut rx, |m| {
            m.get("b")
                .is_some_and(|b| b.allocations.get("b-1") == Some(&web_fact(3001)))
        })
        .await;
    }
    for m in [&a, &b, &c] {
        let counts = m.counters().snapshot();
        assert!(counts.delivered > 0, "{counts:?}");
        assert!(counts.datagrams_out > 0, "{counts:?}");
        assert_eq!(counts.sealed_rejected, 0, "{counts:?}");
        assert_eq!(
            counts.replayed + counts.stale + counts.refused,
            0,
            "{counts:?}"
        );
        assert!(m.keyring().is_some());
    }
    for m in [a, b, c] {
        m.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_another_key_or_no_key_never_joins() {
    record_warnings();
    let key = new_key();
    let a = start_member("a", ip(174), Some(&handle(&[&key])), &[]).await;
    let seeds = [a.config().advertise];
    let b = start_member("b", ip(174), Some(&handle(&[&key])), &seeds).await;
    for m in [&a, &b] {
        wait_for_ids(m, &["a", "b"]).await;
    }
    // An intruder with its own key, and a plain member, both seeded with a and publishing
    // an allocation of b's.
    let intruder = start_member("x", ip(174), Some(&handle(&[&new_key()])), &seeds).await;
    let plain = start_member("p", ip(174), None, &seeds).await;
    for m in [&intruder, &plain] {
        m.set_allocation("b-1", &web_fact(6666)).await.unwrap();
    }
    let rejected_before = a.counters().snapshot().sealed_rejected;
    // Many gossip rounds (250 ms each).
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for m in [&a, &b] {
            assert_eq!(ids(&m.live_members().borrow()), BTreeSet::from(["a", "b"]));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for m in [&intruder, &plain] {
        let id = m.config().node_id.as_str();
        assert_eq!(ids(&m.live_members().borrow()), BTreeSet::from([id]));
        assert_eq!(m.counters().snapshot().delivered, 0, "{id}");
    }
    for m in [&a, &b] {
        let members = m.live_members().borrow().clone();
        assert!(members["b"].allocations.is_empty(), "{members:#?}");
        assert!(m.dead_members().await.is_empty());
    }
    // Both were dropped at a's door, and counted.
    let counts = a.counters().snapshot();
    assert!(
        counts.sealed_rejected >= rejected_before + 4,
        "{rejected_before} then {counts:?}"
    );
    for m in [a, b, intruder, plain] {
        m.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_datagram_is_dropped_and_changes_nothing() {
    record_warnings();
    let key = new_key();
    let keyring = Keyring::new(key.clone());
    let victim = start_member("v", ip(175), Some(&handle(&[&key])), &[]).await;
    let target = victim.config().advertise;
    wait_for_ids(&victim, &["v"]).await;

    // Capture a real sealed datagram: a member whose only seed is our socket sends it Syns.
    let capture = UdpSocket::bind((ip(175), 0)).await.unwrap();
    let sender = start_member(
        "s",
        ip(175),
        Some(&handle(&[&key])),
        &[capture.local_addr().unwrap()],
    )
    .await;
    let mut buf = vec![0; 70_000];
    let (len, _) = tokio::time::timeout(REPLY, capture.recv_from(&mut buf))
        .await
        .expect("the member gossips to its seed")
        .unwrap();
    let captured = buf[..len].to_vec();
    sender.stop().await;

    // Delivered once: the victim answers the Syn.
    let raw = UdpSocket::bind((ip(175), 0)).await.unwrap();
    raw.send_to(&captured, target).await.unwrap();
    let reply = sealed_reply(&raw, &keyring, REPLY)
        .await
        .expect("the victim answers the captured Syn");
    assert!(is_syn_ack(&reply));
    let before = victim.counters().snapshot();
    let members_before = victim.live_members().borrow().clone();

    // Replayed: dropped before chitchat, counted, no answer.
    for _ in 0..3 {
        raw.send_to(&captured, target).await.unwrap();
    }
    assert_eq!(
        sealed_reply(&raw, &keyring, Duration::from_secs(1)).await,
        None,
        "the victim answered a replay"
    );
    let after = victim.counters().snapshot();
    assert_eq!(after.replayed, before.replayed + 3, "{before:?} {after:?}");
    assert_eq!(after.delivered, before.delivered, "{before:?} {after:?}");
    assert_eq!(*victim.live_members().borrow(), members_before);
    victim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_with_a_removed_key_tampered_or_stale_is_dropped_counted_and_logged_rarely() {
    record_warnings();
    let (old, new) = (new_key(), new_key());
    let keys = handle(&[&new, &old]);
    let victim = start_member("v", ip(176), Some(&keys), &[]).await;
    let target = victim.config().advertise;
    wait_for_ids(&victim, &["v"]).await;
    let raw = UdpSocket::bind((ip(176), 0)).await.unwrap();
    let with_new = Keyring::new(new.clone());
    let with_old = Keyring::new(old.clone());

    // Sealed with the secondary key: accepted (the reply is sealed with the primary).
    raw.send_to(&seal_with(&with_old, &syn(), seal::unix_ms_now()), target)
        .await
        .unwrap();
    let reply = sealed_reply(&raw, &with_new, REPLY).await;
    assert!(reply.is_some_and(|r| is_syn_ack(&r)));

    // Removed: the same kind of datagram is dropped and counted.
    keys.remove(old.id()).unwrap();
    let before = victim.counters().snapshot();
    let warnings_before = warnings_of(target);
    raw.send_to(&seal_with(&with_old, &syn(), seal::unix_ms_now()), target)
        .await
        .unwrap();
    assert_eq!(
        sealed_reply(&raw, &with_new, Duration::from_secs(1)).await,
        None
    );
    assert_eq!(
        victim.counters().snapshot().sealed_rejected,
        before.sealed_rejected + 1
    );

    // A flood of bad datagrams: removed key, tampered, plain, stale.
    let mut bad = Vec::new();
    for i in 0..100usize {
        bad.push(seal_with(&with_old, &syn(), seal::unix_ms_now()));
        let mut tampered = seal_with(&with_new, &syn(), seal::unix_ms_now());
        let at = seal::HEADER_LEN + i % (tampered.len() - seal::HEADER_LEN);
        tampered[at] ^= 0x40;
        bad.push(tampered);
        bad.push(syn());
        bad.push(seal_with(&with_new, &syn(), seal::unix_ms_now() - 120_000));
    }
    for chunk in bad.chunks(50) {
        for datagram in chunk {
            raw.send_to(datagram, target).await.unwrap();
        }
        // Paced: a good Syn, answered once the bad ones before it are handled.
        raw.send_to(&seal_with(&with_new, &syn(), seal::unix_ms_now()), target)
            .await
            .unwrap();
        let reply = sealed_reply(&raw, &with_new, REPLY).await;
        assert!(reply.is_some_and(|r| is_syn_ack(&r)));
    }
    let after = victim.counters().snapshot();
    assert_eq!(
        after.sealed_rejected,
        before.sealed_rejected + 1 + 300,
        "{before:?} {after:?}"
    );
    assert_eq!(after.stale, before.stale + 100, "{before:?} {after:?}");
    assert_eq!(
        after.delivered,
        before.delivered + 8,
        "{before:?} {after:?}"
    );
    // One line per kind (unknown key, forged, malformed, stale) per 10 s.
    let logged = warnings_of(target) - warnings_before;
    eprintln!("{} bad datagrams, {logged} warning lines", bad.len() + 1);
    assert!(
        (1..=4).contains(&logged),
        "{logged} warning lines for {} datagrams",
        bad.len() + 1
    );
    // And the member still works.
    assert!(
        tokio::time::timeout(Duration::from_millis(10), victim.termination())
            .await
            .is_err(),
        "the gossip loop ended"
    );
    victim.stop().await;
}

/// Records every moment a member's live view lacked one of `expected`.
fn watch_for_losses(
    member: &Membership,
    expected: &'static [&'static str],
) -> Arc<Mutex<Vec<String>>> {
    let losses = Arc::new(Mutex::new(Vec::new()));
    let mut rx = member.live_members();
    let me = member.config().node_id.clone();
    let record = Arc::clone(&losses);
    tokio::spawn(async move {
        let start = Instant::now();
        loop {
            let seen: BTreeSet<String> = rx.borrow_and_update().keys().cloned().collect();
            for id in expected {
                if !seen.contains(*id) {
                    record
                        .lock()
                        .unwrap()
                        .push(format!("{me} lost {id} at {:?}", start.elapsed()));
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    losses
}

/// Polls all members for `period`: each must list all three as live and none as dead.
async fn hold(members: &[&Membership], period: Duration, step: &str) {
    let until = Instant::now() + period;
    while Instant::now() < until {
        for m in members {
            let live = ids(&m.live_members().borrow())
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>();
            assert_eq!(live, ["a", "b", "c"], "{step}: {}", m.config().node_id);
            let dead = m.dead_members().await;
            assert!(
                dead.is_empty(),
                "{step}: {} holds {dead:?} dead",
                m.config().node_id
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_live_on_three_members_and_no_member_is_ever_seen_dead() {
    record_warnings();
    const ALL: &[&str] = &["a", "b", "c"];
    let (old, new) = (new_key(), new_key());
    let rings = [handle(&[&old]), handle(&[&old]), handle(&[&old])];
    let a = start_member("a", ip(177), Some(&rings[0]), &[]).await;
    let seeds = [a.config().advertise];
    let b = start_member("b", ip(177), Some(&rings[1]), &seeds).await;
    let c = start_member("c", ip(177), Some(&rings[2]), &seeds).await;
    let members = [&a, &b, &c];
    for m in members {
        wait_for_ids(m, ALL).await;
    }
    let losses: Vec<_> = members.iter().map(|m| watch_for_losses(m, ALL)).collect();
    // Longer than the failure detector needs to declare a silent member dead (~1.5 s).
    let settle = Duration::from_secs(2);
    hold(&members, settle, "before").await;

    // 1. Install the new key everywhere.
    for ring in &rings {
        ring.install(new.clone()).unwrap();
    }
    hold(&members, settle, "installed").await;
    // 2. Use it: one member first (the others open it), then the rest.
    rings[0].use_key(new.id()).unwrap();
    hold(&members, settle, "a uses the new key").await;
    for ring in &rings[1..] {
        ring.use_key(new.id()).unwrap();
    }
    hold(&members, settle, "all use the new key").await;
    // 3. Remove the old key everywhere.
    for ring in &rings {
        ring.remove(old.id()).unwrap();
    }
    hold(&members, settle, "old key removed").await;

    for (m, losses) in members.iter().zip(&losses) {
        let losses = losses.lock().unwrap();
        assert!(losses.is_empty(), "{losses:?}");
        // Not one datagram was lost to a key mismatch.
        let counts = m.counters().snapshot();
        assert_eq!(
            counts.sealed_rejected,
            0,
            "{}: {counts:?}",
            m.config().node_id
        );
        assert!(counts.delivered > 0, "{counts:?}");
    }
    for ring in &rings {
        assert_eq!(ring.get().ids(), vec![new.id()]);
    }

    // A datagram sealed with the removed key is dropped and counted.
    let raw = UdpSocket::bind((ip(177), 0)).await.unwrap();
    let before = a.counters().snapshot().sealed_rejected;
    let with_old = Keyring::new(old.clone());
    raw.send_to(
        &seal_with(&with_old, &syn(), seal::unix_ms_now()),
        a.config().advertise,
    )
    .await
    .unwrap();
    let with_new = Keyring::new(new.clone());
    assert_eq!(
        sealed_reply(&raw, &with_new, Duration::from_secs(1)).await,
        None
    );
    assert_eq!(a.counters().snapshot().sealed_rejected, before + 1);

    // The watchers do see a loss: a member switched to a key nobody else has is cut off.
    rings[0].set(Keyring::new(new_key()));
    let mut on_b = b.live_members();
    wait_until("b loses a", &mut on_b, |m| !m.contains_key("a")).await;
    // The watcher task may run a moment after this one saw the change.
    let until = Instant::now() + REPLY;
    while losses[1].lock().unwrap().is_empty() {
        assert!(Instant::now() < until, "b's watcher saw no loss");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(b.counters().snapshot().sealed_rejected > 0);
    for m in [a, b, c] {
        m.stop().await;
    }
}

/// A chitchat server on the sealed transport of `config`, without Drover's key schema.
async fn raw_chitchat(
    config: &MembershipConfig,
    protocol_version: ProtocolVersion,
    initial: Vec<(String, String)>,
) -> (ChitchatHandle, Arc<drover_membership::GossipCounters>) {
    let transport = drover_membership::transport(config);
    assert!(transport.is_sealed());
    let chitchat_config = ChitchatConfig {
        chitchat_id: ChitchatId::new(config.node_id.as_str(), 1, config.advertise),
        cluster_id: CLUSTER.to_string(),
        gossip_interval: Duration::from_millis(100),
        listen_addr: config.listen,
        seed_nodes: config.seeds.clone(),
        failure_detector_config: FailureDetectorConfig {
            initial_interval: Duration::from_millis(100),
            dead_node_grace_period: Duration::from_secs(3600),
            ..FailureDetectorConfig::default()
        },
        marked_for_deletion_grace_period: Duration::from_secs(600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version,
    };
    let handle = spawn_chitchat(chitchat_config, initial, &transport)
        .await
        .unwrap();
    (handle, transport.counters())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_state_converges_over_sealed_gossip() {
    record_warnings();
    let keyring = handle(&[&new_key()]);
    // About 150 KB that zstd shrinks by a quarter only: catching up takes several
    // datagrams of tens of KB each.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let big: Vec<(String, String)> = {
        let mut rng = rand::rng();
        (0..150)
            .map(|i| {
                let value: String = (0..1000)
                    .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
                    .collect();
                (format!("big-{i:03}"), value)
            })
            .collect()
    };
    let source_config = MembershipConfig::new(CLUSTER, "source", 1, free_udp_addr(ip(178)))
        .with_keyring(keyring.clone());
    let (source, source_counters) =
        raw_chitchat(&source_config, ProtocolVersion::V1, big.clone()).await;
    let mut sink_config = MembershipConfig::new(CLUSTER, "sink", 1, free_udp_addr(ip(178)))
        .with_keyring(keyring.clone());
    sink_config.seeds = vec![source_config.advertise.to_string()];
    let (sink, sink_counters) = raw_chitchat(&sink_config, ProtocolVersion::V1, Vec::new()).await;

    let source_id = source.chitchat_id().clone();
    let want: BTreeMap<String, String> = big.into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got: BTreeMap<String, String> = sink
            .with_chitchat(|cc| {
                cc.node_state(&source_id)
                    .map(|state| {
                        state
                            .key_values()
                            .filter(|(k, _)| k.starts_with("big-"))
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .await;
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sink has {} of {} keys; source {:?}, sink {:?}",
            got.len(),
            want.len(),
            source_counters.snapshot(),
            sink_counters.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = source_counters.snapshot();
    let received = sink_counters.snapshot();
    assert!(sent.bytes_out > 100_000, "{sent:?}");
    assert_eq!(
        received.sealed_rejected + received.refused + received.undecoded,
        0,
        "{received:?}"
    );
    source.shutdown().await.unwrap();
    sink.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_big_for_one_datagram_goes_in_two_fragments_both_ways() {
    record_warnings();
    let key = new_key();
    let keyring = Keyring::new(key.clone());
    let victim = start_member("v", ip(179), Some(&handle(&[&key])), &[]).await;
    wait_for_ids(&victim, &["v"]).await;

    // A chitchat member whose state knows so many nodes that its Syn, which carries the full
    // digest (uncompressed in protocol V0), needs two sealed datagrams: 4 bytes of header, 2
    // of digest length, 41 + len(id) per node, 2 + len(cluster id).
    let capture = UdpSocket::bind((ip(179), 0)).await.unwrap();
    let mut config = MembershipConfig::new(CLUSTER, "source", 1, free_udp_addr(ip(179)))
        .with_keyring(handle(&[&key]));
    config.seeds = vec![capture.local_addr().unwrap().to_string()];
    let (source, counters) = raw_chitchat(&config, ProtocolVersion::V0, Vec::new()).await;
    let fakes = 1308;
    let syn_len =
        4 + 2 + (41 + "source".len()) + fakes * (41 + "fake-0000".len()) + 2 + CLUSTER.len();
    assert!(syn_len > seal::MAX_FRAGMENT_PAYLOAD && syn_len <= seal::MAX_DATAGRAM);
    // Nobody listens there (the discard port): gossip to these nodes goes nowhere.
    let nowhere = SocketAddr::from((ip(179), 9));
    source
        .with_chitchat(|cc| {
            for i in 0..fakes {
                let id = ChitchatId::new(format!("fake-{i:04}"), 1, nowhere);
                cc.reset_node_state_if_update(&id, std::iter::empty(), 1, 0);
            }
        })
        .await;

    // Sent: the big Syn arrives at the seed in two fragments, and reassembles.
    let mut buf = vec![0; 70_000];
    let mut opener = Opener::new();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let deadline = Instant::now() + CONVERGE;
    let syn = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (len, _) = tokio::time::timeout(left, capture.recv_from(&mut buf))
            .await
            .expect("the big Syn arrives")
            .unwrap();
        frames.push(buf[..len].to_vec());
        match opener
            .open(&keyring, &buf[..len], seal::unix_ms_now(), Instant::now())
            .unwrap()
        {
            Opened::Message { payload, .. } if payload.len() == syn_len => break payload,
            Opened::Message { .. } => frames.clear(),
            Opened::Fragment => {}
        }
    };
    assert_eq!(frames.len(), 2);
    assert!(frames.iter().all(|f| f.len() <= seal::MAX_DATAGRAM));
    assert_eq!(syn[3], 0, "a Syn");
    assert!(counters.snapshot().fragmented_out > 0);
    source.shutdown().await.unwrap();

    // Received: the fragments, even out of order, make the Syn whole again and chitchat
    // decodes it (`delivered`). It cannot answer: its SynAck would carry the 1,309 nodes the
    // Syn told it about, in an uncompressed V0 digest that leaves no room (a chitchat limit,
    // notes/chitchat.md §1.9), so the counters tell.
    let raw = UdpSocket::bind((ip(179), 0)).await.unwrap();
    let target = victim.config().advertise;
    raw.send_to(&frames[1], target).await.unwrap();
    raw.send_to(&frames[0], target).await.unwrap();
    let deadline = Instant::now() + REPLY;
    let counts = loop {
        let counts = victim.counters().snapshot();
        if counts.delivered > 0 || Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(counts.datagrams_in, 2, "{counts:?}");
    assert_eq!(counts.bytes_in, (frames[0].len() + frames[1].len()) as u64);
    assert_eq!(counts.delivered, 1, "{counts:?}");
    assert_eq!(
        counts.fragments_dropped + counts.sealed_rejected + counts.refused + counts.undecoded,
        0,
        "{counts:?}"
    );
    victim.stop().await;
}
