//! The datagram check ([`drover_membership::wire::inspect`]) against chitchat's own decoder:
//! on real messages (compressed digest and delta), every truncation and random corruptions,
//! whatever the check passes chitchat decodes, and whatever it calls malformed chitchat
//! refuses. (Chitchat logs a warning for each refused one: expect noise in this test's log.)

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use chitchat::Serializable;
use chitchat::transport::{Socket, UdpSocket as ChitchatSocket};
use drover_membership::wire::{self, Refusal, SelfId};
use drover_membership::{Membership, MembershipConfig};
use drover_proto::gossip::{self, AllocFact, Role};
use drover_proto::model::AllocState;
use tokio::net::UdpSocket;

const CLUSTER: &str = "drover-wire";

/// A V1 Syn with an empty (compressed) digest: the answer is a V1 SynAck.
fn syn_v1() -> Vec<u8> {
    let mut out = 45_139u16.to_le_bytes().to_vec();
    out.extend([1, 0]);
    out.push(0); // the digest stream's end tag
    CLUSTER.to_string().serialize(&mut out);
    out
}

/// Whether chitchat decodes `candidate`: it is sent from one socket, then a valid datagram
/// from another; chitchat's socket skips what it cannot decode, so the first envelope it
/// returns tells.
async fn chitchat_decodes(
    decoder: &mut ChitchatSocket,
    candidate_from: &UdpSocket,
    sentinel_from: &UdpSocket,
    candidate: &[u8],
) -> bool {
    let to = decoder.local_addr().unwrap();
    candidate_from.send_to(candidate, to).await.unwrap();
    sentinel_from.send_to(&syn_v1(), to).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), decoder.recv())
        .await
        .expect("the sentinel arrives")
        .unwrap();
    if first.from_addr == sentinel_from.local_addr().unwrap() {
        return false;
    }
    let second = tokio::time::timeout(Duration::from_secs(5), decoder.recv())
        .await
        .expect("the sentinel arrives")
        .unwrap();
    assert_eq!(second.from_addr, sentinel_from.local_addr().unwrap());
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_is_at_least_as_strict_as_chitchat_and_passes_what_it_sends() {
    // A member with some state, so its SynAck has a compressed digest and delta.
    let listen: SocketAddr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut keys = vec![
        (gossip::ROLE.to_string(), Role::Agent.as_str().to_string()),
        (gossip::ADDR.to_string(), "127.0.0.10".to_string()),
    ];
    for i in 0..20u16 {
        let fact = AllocFact {
            service: "web".into(),
            revision: 1,
            endpoint: Some(SocketAddr::from(([127, 0, 0, 10], 3000 + i))),
            health: AllocState::Healthy,
        };
        keys.push((
            gossip::alloc_key(&format!("web.{i}")).unwrap(),
            fact.encode().unwrap(),
        ));
    }
    let member = Membership::start(MembershipConfig::new(CLUSTER, "m", 1, listen), keys)
        .await
        .unwrap();
    let raw = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    raw.send_to(&syn_v1(), listen).await.unwrap();
    let mut buf = vec![0; 70_000];
    let (len, _) = tokio::time::timeout(Duration::from_secs(5), raw.recv_from(&mut buf))
        .await
        .expect("a SynAck")
        .unwrap();
    let real = buf[..len].to_vec();
    member.stop().await;

    let me = SelfId {
        node_id: "someone-else".into(),
        generation: u64::MAX,
    };
    assert_eq!(wire::inspect(&real, &me), Ok(()), "a real SynAck passes");

    let mut candidates: Vec<Vec<u8>> = vec![real.clone(), syn_v1()];
    candidates.extend((0..real.len()).map(|cut| real[..cut].to_vec()));
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..400 {
        let mut mutated = real.clone();
        for _ in 0..=(next() % 3) {
            let at = (next() as usize) % mutated.len();
            mutated[at] = next() as u8;
        }
        candidates.push(mutated);
    }

    let mut decoder = ChitchatSocket::open("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let candidate_from = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sentinel_from = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (mut passed, mut malformed) = (0, 0);
    for (i, candidate) in candidates.iter().enumerate() {
        let verdict = wire::inspect(candidate, &me);
        let decodes =
            chitchat_decodes(&mut decoder, &candidate_from, &sentinel_from, candidate).await;
        match verdict {
            Ok(()) => {
                passed += 1;
                assert!(
                    decodes,
                    "candidate {i} passed the check but chitchat refuses it"
                );
            }
            Err(Refusal::Malformed { .. }) => {
                malformed += 1;
                assert!(
                    !decodes,
                    "candidate {i} is called malformed but chitchat decodes it: {verdict:?}"
                );
            }
            // Refused for what chitchat trusts and must not: no comparison.
            Err(_) => {}
        }
    }
    eprintln!(
        "{} candidates: {passed} passed, {malformed} malformed",
        candidates.len()
    );
    assert!(passed >= 2 && malformed > real.len());
}
