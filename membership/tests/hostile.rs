//! Hostile gossip datagrams over real UDP on loopback: a forged delta about the receiver
//! itself, garbage, truncations, a delta chitchat would panic on, a decompression bomb. The
//! member must keep working, keep its own keys, and log a few lines, not one per datagram.
//!
//! The forged messages are built with chitchat's own types (its `Delta` parser, envelope and
//! UDP socket), so they are what chitchat itself would decode.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chitchat::transport::{Socket, UdpSocket as ChitchatSocket};
use chitchat::{
    ChitchatEnvelope, ChitchatId, ChitchatMessage, Deserializable, ProtocolVersion, Serializable,
};
use drover_membership::{Membership, MembershipConfig, MembershipError};
use drover_proto::gossip::{self, AllocFact, MemberFacts, Role};
use drover_proto::model::AllocState;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

const CLUSTER: &str = "drover-hostile";
const CONVERGE: Duration = Duration::from_secs(10);
const REPLY: Duration = Duration::from_secs(5);

type Members = BTreeMap<String, MemberFacts>;

/// Counts warnings and errors logged anywhere in this test binary.
static WARNINGS: AtomicUsize = AtomicUsize::new(0);

struct CountWarnings;

impl<S: Subscriber> Layer<S> for CountWarnings {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() <= Level::WARN {
            WARNINGS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn count_warnings() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::registry()
            .with(CountWarnings)
            .try_init();
    });
}

fn free_udp_addr() -> SocketAddr {
    StdUdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn start_member(node_id: &str, generation: u64, seeds: &[SocketAddr]) -> Membership {
    let keys = vec![
        (gossip::ROLE.to_string(), Role::Agent.as_str().to_string()),
        (gossip::ADDR.to_string(), "127.0.0.10".to_string()),
    ];
    for _ in 0..50 {
        let mut config = MembershipConfig::new(CLUSTER, node_id, generation, free_udp_addr());
        config.seeds = seeds.iter().map(ToString::to_string).collect();
        match Membership::start(config, keys.clone()).await {
            Ok(m) => return m,
            Err(MembershipError::Start { .. }) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("starting {node_id}: {e}"),
        }
    }
    panic!("starting {node_id}: no free port");
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

/// Two members that see each other.
async fn pair() -> (Membership, Membership) {
    let victim = start_member("v", 7, &[]).await;
    let peer = start_member("p", 3, &[victim.config().advertise]).await;
    for m in [&victim, &peer] {
        let mut rx = m.live_members();
        wait_until("v and p see each other", &mut rx, |m| {
            m.contains_key("v") && m.contains_key("p")
        })
        .await;
    }
    (victim, peer)
}

fn chitchat_id(m: &Membership) -> ChitchatId {
    let config = m.config();
    ChitchatId::new(config.node_id.as_str(), config.generation, config.advertise)
}

/// Delta ops in chitchat's encoding (`delta.rs`: tag 0 node, 1 key-value, 2 max version).
#[derive(Default)]
struct Ops(Vec<u8>);

impl Ops {
    fn node(mut self, id: &ChitchatId) -> Ops {
        self.0.push(0);
        id.serialize(&mut self.0);
        0u64.serialize(&mut self.0); // last GC version
        0u64.serialize(&mut self.0); // from version (excluded)
        self
    }

    fn key(mut self, key: &str, value: &str, version: u64) -> Ops {
        self.0.push(1);
        key.to_string().serialize(&mut self.0);
        value.to_string().serialize(&mut self.0);
        version.serialize(&mut self.0);
        self.0.push(0); // set, not deleted
        self
    }

    fn max_version(mut self, version: u64) -> Ops {
        self.0.push(2);
        version.serialize(&mut self.0);
        self
    }

    /// The ops as a delta stream, one block then the end tag, compressed as chitchat's
    /// writer does (its serializer checks that it would write the same length).
    fn stream(&self) -> Vec<u8> {
        assert!(self.0.len() <= 16_384, "one block only");
        let mut compressed = vec![0; self.0.len()];
        let mut out = Vec::new();
        if self.0.is_empty() {
            out.push(0);
            return out;
        }
        match zstd::bulk::compress_to_buffer(&self.0, &mut compressed, 0) {
            Ok(len) => {
                out.push(1);
                (len as u16).serialize(&mut out);
                out.extend(&compressed[..len]);
            }
            Err(_) => {
                out.push(2);
                (self.0.len() as u16).serialize(&mut out);
                out.extend(&self.0);
            }
        }
        out.push(0);
        out
    }

    /// A SynAck with an empty digest, its delta decoded by chitchat's own parser.
    fn syn_ack(&self) -> ChitchatEnvelope {
        let stream = self.stream();
        ChitchatEnvelope {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::SynAck {
                digest: Default::default(),
                delta: Deserializable::deserialize(&mut &stream[..])
                    .expect("chitchat reads the forged delta"),
            },
        }
    }

    /// The same as raw Ack bytes.
    fn ack_bytes(&self) -> Vec<u8> {
        let mut out = header(0, 2);
        out.extend(self.stream());
        out
    }
}

fn header(version: u8, kind: u8) -> Vec<u8> {
    let mut out = 45_139u16.to_le_bytes().to_vec();
    out.extend([version, kind]);
    out
}

/// A Syn with an empty digest (V0): the member answers with a SynAck carrying its state.
fn syn() -> Vec<u8> {
    let mut out = header(0, 0);
    0u16.serialize(&mut out);
    CLUSTER.to_string().serialize(&mut out);
    out
}

fn web_fact(port: u16) -> AllocFact {
    AllocFact {
        service: "web".into(),
        revision: 1,
        endpoint: Some(SocketAddr::from(([127, 0, 0, 10], port))),
        health: AllocState::Healthy,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_delta_about_the_receiver_is_dropped_and_it_keeps_working() {
    count_warnings();
    let (victim, peer) = pair().await;
    let target = victim.config().advertise;

    // The forgery: the victim's own id, its `addr` moved and an allocation added, at
    // versions up to u64::MAX. Chitchat would apply it to the victim's own state, and the
    // victim's next `set` would panic (`version > self.max_version`).
    let forged_alloc = gossip::alloc_key("forged").unwrap();
    let forged = Ops::default()
        .node(&chitchat_id(&victim))
        .key(gossip::ADDR, "6.6.6.6", u64::MAX - 1)
        .key(&forged_alloc, &web_fact(6666).encode().unwrap(), u64::MAX);
    // The same about a later incarnation of the victim: refused as well.
    let later = ChitchatId::new("v", u64::MAX, target);
    let forged_later = Ops::default().node(&later).key(gossip::ADDR, "6.6.6.7", 1);
    let mut forger = ChitchatSocket::open("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    forger.send(target, forged.syn_ack()).await.unwrap();
    forger.send(target, forged_later.syn_ack()).await.unwrap();
    // A harmless SynAck last: its answer shows the victim has handled the forged ones.
    forger.send(target, Ops::default().syn_ack()).await.unwrap();
    let reply = tokio::time::timeout(REPLY, forger.recv())
        .await
        .expect("the victim answers")
        .unwrap();
    assert!(matches!(
        reply.envelope.message,
        ChitchatMessage::Ack { .. }
    ));

    // It keeps working: it sets keys and its peer sees them.
    victim.set_allocation("v-1", &web_fact(3001)).await.unwrap();
    let mut on_peer = peer.live_members();
    wait_until("p sees v-1", &mut on_peer, |m| {
        m.get("v")
            .is_some_and(|v| v.allocations.contains_key("v-1"))
    })
    .await;
    // And the forged values reached no one, itself included.
    let mut on_victim = victim.live_members();
    wait_until("v sees v-1 itself", &mut on_victim, |m| {
        m.get("v")
            .is_some_and(|v| v.allocations.contains_key("v-1"))
    })
    .await;
    for (who, rx) in [("victim", &on_victim), ("peer", &on_peer)] {
        let members = rx.borrow();
        let v = &members["v"];
        assert_eq!(v.addr.as_deref(), Some("127.0.0.10"), "{who}: {v:#?}");
        assert!(!v.allocations.contains_key("forged"), "{who}: {v:#?}");
        assert_eq!(members.len(), 2, "{who}: {members:#?}");
    }
    victim.stop().await;
    peer.stop().await;
}

/// Tiny deterministic generator for garbage.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Sends a Syn from `raw` and waits for the SynAck: everything `raw` sent before has been
/// handled. Returns the SynAck's bytes.
async fn round_trip(raw: &UdpSocket, target: SocketAddr) -> Vec<u8> {
    raw.send_to(&syn(), target).await.unwrap();
    let mut buf = vec![0; 70_000];
    loop {
        let (len, _) = tokio::time::timeout(REPLY, raw.recv_from(&mut buf))
            .await
            .expect("the member answers a Syn")
            .unwrap();
        if buf.get(3) == Some(&1) {
            return buf[..len].to_vec();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_truncated_and_poisoned_datagrams_are_dropped_quietly() {
    count_warnings();
    let (victim, peer) = pair().await;
    let target = victim.config().advertise;
    let ended = victim.termination();
    let raw = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let real = round_trip(&raw, target).await;

    let mut hostile: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"x".to_vec(),
        b"junk".to_vec(),
        header(9, 0),
        header(0, 200),
    ];
    let mut rng = XorShift(0x5eed);
    for _ in 0..200 {
        let len = (rng.next() % 1500) as usize;
        hostile.push(rng.bytes(len));
    }
    // Every truncation of a real message.
    hostile.extend((1..real.len()).map(|cut| real[..cut].to_vec()));
    // A delta about the peer chitchat would apply and then panic on
    // (`node_delta.max_version >= self.max_version`).
    hostile.push(
        Ops::default()
            .node(&chitchat_id(&peer))
            .key("note", "x", 1_000_000)
            .max_version(999_999)
            .ack_bytes(),
    );
    // A decompression bomb: compressed blocks of 64 KiB of zeros.
    let block = zstd::bulk::compress(&[0u8; 65_535], 19).unwrap();
    let mut bomb = header(0, 2);
    while bomb.len() + block.len() + 4 < 60_000 {
        bomb.push(1);
        (block.len() as u16).serialize(&mut bomb);
        bomb.extend(&block);
    }
    bomb.push(0);
    hostile.push(bomb);

    let before = WARNINGS.load(Ordering::Relaxed);
    for chunk in hostile.chunks(50) {
        for datagram in chunk {
            raw.send_to(datagram, target).await.unwrap();
        }
        // Paced, so the socket buffer never overflows and everything is handled.
        round_trip(&raw, target).await;
    }
    let logged = WARNINGS.load(Ordering::Relaxed) - before;
    eprintln!(
        "{} hostile datagrams, {logged} warning lines",
        hostile.len()
    );
    // One line per kind of trouble and 10 s, plus slack for the other test's refusal.
    assert!(
        logged <= 4,
        "{logged} warning lines for {} datagrams",
        hostile.len()
    );

    // The gossip loop is alive and the member still works.
    assert!(
        tokio::time::timeout(Duration::from_millis(10), ended)
            .await
            .is_err(),
        "the gossip loop ended"
    );
    victim.set_allocation("v-2", &web_fact(3002)).await.unwrap();
    let mut on_peer = peer.live_members();
    wait_until("p sees v-2", &mut on_peer, |m| {
        m.get("v")
            .is_some_and(|v| v.allocations.contains_key("v-2"))
    })
    .await;
    victim.stop().await;
    peer.stop().await;
}
