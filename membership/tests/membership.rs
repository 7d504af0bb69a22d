//! Gossip membership over real UDP on loopback: join, facts, allocation keys, crash detection,
//! restart with a new generation, graceful leave, and the generation counter.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use drover_membership::{
    GENERATION_FILE, Membership, MembershipConfig, MembershipError, next_generation,
};
use drover_proto::gossip::{self, AllocFact, GossipError, MemberFacts, MemberState, Role};
use drover_proto::model::{AllocState, Resources};
use tokio::sync::watch;

const CLUSTER: &str = "drover-test";
/// Generous: the box has two shared cores and other builds may run beside the tests.
const CONVERGE: Duration = Duration::from_secs(10);

type Members = BTreeMap<String, MemberFacts>;

/// A loopback UDP address that was free a moment ago.
fn free_udp_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn agent_keys(addr: &str, cpu_millis: u64) -> Vec<(String, String)> {
    let capacity = Resources {
        cpu_millis,
        memory_bytes: 8 << 30,
    };
    vec![
        (gossip::ROLE.into(), Role::Agent.as_str().into()),
        (gossip::ADDR.into(), addr.into()),
        (gossip::CAPACITY.into(), gossip::encode_resources(capacity)),
        (gossip::LABELS.into(), r#"{"zone":"a"}"#.into()),
    ]
}

fn coordinator_keys() -> Vec<(String, String)> {
    vec![
        (gossip::ROLE.into(), Role::Coordinator.as_str().into()),
        (gossip::GRPC.into(), "127.0.0.1:7400".into()),
    ]
}

/// Starts a member, on `addr` or on a fresh port; retries while the port is taken (another
/// process grabbed it, or a stopped member's socket is not closed yet).
async fn start_member(
    node_id: &str,
    generation: u64,
    addr: Option<SocketAddr>,
    seeds: &[SocketAddr],
    initial: Vec<(String, String)>,
) -> Membership {
    let mut last = None;
    for _ in 0..50 {
        let listen = addr.unwrap_or_else(free_udp_addr);
        let mut config = MembershipConfig::new(CLUSTER, node_id, generation, listen);
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

/// Waits until `pred` holds on `rx`'s value; fails after `deadline` showing the last value.
async fn wait_until(
    what: &str,
    rx: &mut watch::Receiver<Members>,
    deadline: Duration,
    mut pred: impl FnMut(&Members) -> bool,
) -> Duration {
    let start = Instant::now();
    let outcome = tokio::time::timeout(deadline, rx.wait_for(|m| pred(m)))
        .await
        .map(|r| r.is_ok());
    match outcome {
        Ok(true) => start.elapsed(),
        Ok(false) => panic!("{what}: the membership channel closed"),
        Err(_) => panic!(
            "{what}: not true after {deadline:?}; members: {:#?}",
            *rx.borrow()
        ),
    }
}

fn has_all(m: &Members, ids: &[&str]) -> bool {
    ids.iter().all(|id| m.contains_key(*id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_share_facts_detect_a_crash_and_see_a_restart() {
    let data_c = tempfile::tempdir().unwrap();

    // 1. One coordinator and two agents, seeded from the coordinator.
    let a = start_member("a", 1, None, &[], coordinator_keys()).await;
    let seeds = [a.config().advertise];
    let b = start_member("b", 1, None, &seeds, agent_keys("127.0.0.2", 2000)).await;
    let gen_c1 = next_generation(data_c.path()).unwrap();
    let c = start_member("c", gen_c1, None, &seeds, agent_keys("127.0.0.3", 4000)).await;
    let c_addr = c.config().advertise;

    let all = ["a", "b", "c"];
    for (name, member) in [("a", &a), ("b", &b), ("c", &c)] {
        let mut rx = member.live_members();
        let took = wait_until(&format!("{name} sees a, b and c"), &mut rx, CONVERGE, |m| {
            has_all(m, &all)
        })
        .await;
        eprintln!("{name} saw all three members after {took:?}");
        let members = rx.borrow().clone();
        assert_eq!(members.len(), 3, "{members:#?}");
        let coord = &members["a"];
        assert_eq!(coord.role, Some(Role::Coordinator));
        assert_eq!(coord.grpc.as_deref(), Some("127.0.0.1:7400"));
        assert_eq!(coord.state, Some(MemberState::Alive));
        let agent_b = &members["b"];
        assert_eq!(agent_b.role, Some(Role::Agent));
        assert_eq!(agent_b.addr.as_deref(), Some("127.0.0.2"));
        assert_eq!(agent_b.capacity.map(|r| r.cpu_millis), Some(2000));
        assert_eq!(agent_b.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(members["c"].addr.as_deref(), Some("127.0.0.3"));
        assert_eq!(members["c"].capacity.map(|r| r.cpu_millis), Some(4000));
    }

    // 2. An allocation key set on B appears on A, follows updates, and goes away on removal.
    let mut on_a = a.live_members();
    let mut fact = AllocFact {
        service: "web".into(),
        revision: 2,
        endpoint: Some("127.0.0.2:31234".parse().unwrap()),
        health: AllocState::Starting,
    };
    b.set_allocation("b-1", &fact).await.unwrap();
    let took = wait_until("a sees b-1", &mut on_a, CONVERGE, |m| {
        m["b"].allocations.get("b-1") == Some(&fact)
    })
    .await;
    eprintln!("allocation b-1 reached a after {took:?}");
    fact.health = AllocState::Healthy;
    b.set_allocation("b-1", &fact).await.unwrap();
    wait_until("a sees b-1 healthy", &mut on_a, CONVERGE, |m| {
        m["b"].routable("web").count() == 1
    })
    .await;
    b.remove_allocation("b-1").await;
    let took = wait_until("a no longer sees b-1", &mut on_a, CONVERGE, |m| {
        m.get("b").is_some_and(|b| b.allocations.is_empty())
    })
    .await;
    eprintln!("removal of b-1 reached a after {took:?}");
    // sync_allocations sets the listed ones and deletes the rest.
    let web = |n: u64| AllocFact {
        endpoint: Some(SocketAddr::from(([127, 0, 0, 2], 31000 + n as u16))),
        ..fact.clone()
    };
    b.sync_allocations(&[("b-2".into(), web(2)), ("b-3".into(), web(3))].into())
        .await
        .unwrap();
    b.sync_allocations(&[("b-3".into(), web(3)), ("b-4".into(), web(4))].into())
        .await
        .unwrap();
    wait_until("a sees exactly b-3 and b-4", &mut on_a, CONVERGE, |m| {
        m["b"]
            .allocations
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            == ["b-3", "b-4"]
    })
    .await;

    // 3. C crashes (no leave): A and B notice within seconds.
    c.set_allocation("c-old", &web(9)).await.unwrap();
    wait_until("a sees c-old", &mut on_a, CONVERGE, |m| {
        m.get("c")
            .is_some_and(|c| c.allocations.contains_key("c-old"))
    })
    .await;
    let mut on_b = b.live_members();
    drop(c);
    let killed = Instant::now();
    let on_a_took = wait_until("a sees c dead", &mut on_a, Duration::from_secs(15), |m| {
        !m.contains_key("c")
    })
    .await;
    wait_until("b sees c dead", &mut on_b, Duration::from_secs(15), |m| {
        !m.contains_key("c")
    })
    .await;
    let on_b_took = killed.elapsed();
    eprintln!(
        "crash detection (gossip 250 ms, phi 8): a after {on_a_took:?}, b after {on_b_took:?}"
    );
    assert!(on_a_took < Duration::from_secs(15));
    assert_eq!(a.dead_members().await, ["c"]);
    assert!(has_all(&on_a.borrow(), &["a", "b"]));

    // 4. C restarts on the same address with a larger generation and new keys.
    let gen_c2 = next_generation(data_c.path()).unwrap();
    assert!(gen_c2 > gen_c1);
    let mut keys = agent_keys("127.0.0.3", 6000);
    keys.push((
        gossip::alloc_key("c-new").unwrap(),
        web(10).encode().unwrap(),
    ));
    let restarted = Instant::now();
    let c = start_member("c", gen_c2, Some(c_addr), &seeds, keys).await;
    let new_c = |m: &Members| {
        m.get("c").is_some_and(|c| {
            c.capacity.map(|r| r.cpu_millis) == Some(6000)
                && c.allocations.keys().map(String::as_str).collect::<Vec<_>>() == ["c-new"]
        })
    };
    let took = wait_until("a sees the new c", &mut on_a, CONVERGE, new_c).await;
    eprintln!(
        "restarted c (generation {gen_c2}) live on a after {took:?} ({:?} since start)",
        restarted.elapsed()
    );
    assert!(
        a.dead_members().await.is_empty(),
        "c has a live incarnation"
    );
    // The new incarnation sees everyone, and its own new keys only (not the old ones back).
    let mut on_c = c.live_members();
    wait_until("new c sees a, b and itself", &mut on_c, CONVERGE, |m| {
        has_all(m, &all) && new_c(m)
    })
    .await;
    // Some rounds later, still no trace of the old incarnation's keys anywhere.
    let mut on_b = b.live_members();
    wait_until("b sees the new c", &mut on_b, CONVERGE, new_c).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for rx in [&on_a, &on_b, &on_c] {
        let members = rx.borrow();
        assert!(new_c(&members), "{members:#?}");
    }

    // Stopping leaves the gossip loop with Ok.
    let ended = a.termination();
    a.stop().await;
    ended.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_member_announces_it_then_goes() {
    let x = start_member("x", 1, None, &[], coordinator_keys()).await;
    let y = start_member(
        "y",
        1,
        None,
        &[x.config().advertise],
        agent_keys("127.0.0.9", 1000),
    )
    .await;
    let mut on_x = x.live_members();
    wait_until("x sees y", &mut on_x, CONVERGE, |m| has_all(m, &["x", "y"])).await;

    let ended = y.termination();
    let wait = y.config().gossip_interval * 4;
    let leaving = tokio::spawn(y.leave(wait));
    let started = Instant::now();
    let announced = wait_until("x sees y leaving", &mut on_x, CONVERGE, |m| {
        m.get("y").is_some_and(MemberFacts::is_leaving)
    })
    .await;
    let gone = wait_until("x sees y gone", &mut on_x, Duration::from_secs(15), |m| {
        !m.contains_key("y")
    })
    .await;
    eprintln!(
        "leave: announced after {announced:?}, gone {gone:?} later ({:?} in all)",
        started.elapsed()
    );
    leaving.await.unwrap();
    ended.await.unwrap();
}

#[tokio::test]
async fn start_and_set_refuse_what_cannot_work() {
    let listen = free_udp_addr();
    let config = || MembershipConfig::new(CLUSTER, "n", 1, listen);

    let err = Membership::start(config(), vec![]).await.unwrap_err();
    assert!(matches!(err, MembershipError::MissingRole), "{err}");

    let big = vec![
        ("role".into(), "agent".into()),
        ("note".into(), "x".repeat(5000)),
    ];
    let err = Membership::start(config(), big).await.unwrap_err();
    assert!(
        matches!(
            err,
            MembershipError::Schema(GossipError::ValueTooLarge { .. })
        ),
        "{err}"
    );

    let bad_role = vec![("role".into(), "boss".into())];
    let err = Membership::start(config(), bad_role).await.unwrap_err();
    assert!(err.to_string().contains("`role`"), "{err}");

    let mut wildcard = MembershipConfig::new(CLUSTER, "n", 1, "0.0.0.0:7402".parse().unwrap());
    wildcard.seeds = vec![];
    let err = Membership::start(wildcard, coordinator_keys())
        .await
        .unwrap_err();
    assert!(matches!(err, MembershipError::Config(_)), "{err}");

    // The port is taken: the error names the address.
    let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let err = Membership::start(
        MembershipConfig::new(CLUSTER, "n", 1, taken),
        coordinator_keys(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, MembershipError::Start { .. })
            && err.to_string().contains(&taken.to_string()),
        "{err}"
    );

    let m = start_member("n", 1, None, &[], coordinator_keys()).await;
    let err = m.set("note", &"x".repeat(4097)).await.unwrap_err();
    assert!(err.to_string().contains("4096"), "{err}");
    let err = m.set(gossip::CAPACITY, "lots").await.unwrap_err();
    assert!(err.to_string().contains("`capacity`"), "{err}");
    let err = m
        .set_allocation(
            "",
            &AllocFact {
                service: "web".into(),
                revision: 1,
                endpoint: None,
                health: AllocState::Pending,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, MembershipError::Schema(GossipError::InvalidKey { .. })),
        "{err}"
    );
    m.set("note", "small").await.unwrap();
    m.delete("note").await;
    m.delete("never-set").await;
    m.remove_allocation("never-set").await;
    let mut rx = m.live_members();
    wait_until("n sees itself", &mut rx, CONVERGE, |m| m.contains_key("n")).await;
    m.stop().await;
}

#[test]
fn next_generation_strictly_increases_and_survives_a_missing_or_corrupt_file() {
    let dir = tempfile::tempdir().unwrap();
    // The directory is created when missing.
    let data = dir.path().join("state").join("agent");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;

    let mut previous = 0;
    for _ in 0..5 {
        let g = next_generation(&data).unwrap();
        assert!(g > previous, "{g} after {previous}");
        assert!(g >= now_ms);
        previous = g;
    }
    let file = data.join(GENERATION_FILE);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        previous.to_string()
    );
    assert!(!data.join(format!("{GENERATION_FILE}.tmp")).exists());

    // A counter ahead of the clock (clock went backwards) still grows by one.
    let ahead = now_ms + 1_000_000_000;
    std::fs::write(&file, format!("{ahead}\n")).unwrap();
    assert_eq!(next_generation(&data).unwrap(), ahead + 1);
    assert_eq!(next_generation(&data).unwrap(), ahead + 2);

    // Corrupt: an error that names the file; nothing is overwritten.
    std::fs::write(&file, "garbage").unwrap();
    let err = next_generation(&data).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "garbage");
    std::fs::write(&file, "").unwrap();
    assert!(
        next_generation(&data).is_err(),
        "an empty file is corrupt too"
    );

    // Missing (deleted by the operator): a fresh sequence from the clock.
    std::fs::remove_file(&file).unwrap();
    let fresh = next_generation(&data).unwrap();
    assert!(fresh >= now_ms);
    assert!(next_generation(&data).unwrap() > fresh);
}
