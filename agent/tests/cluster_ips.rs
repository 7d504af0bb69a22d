//! The agent's cluster addresses on the real `lo` through netlink (needs root or
//! CAP_NET_ADMIN, as the agent does): added with Drover's label, found again by a new
//! handle as a restarted agent finds them, listened on, and removed.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};

use drover_agent::cluster_ips::{ClusterAddresses, LoopbackAddresses, Netlink};

#[tokio::test]
async fn addresses_are_added_found_again_listened_on_and_removed() {
    // An address of its own for this test process.
    let ip = Ipv4Addr::new(10, 239, (std::process::id() % 250) as u8, 7);
    let mut lo = Netlink::open().expect("netlink socket");
    lo.add(ip)
        .await
        .expect("add an address to lo (the test runs as root, like the agent)");
    lo.add(ip).await.expect("adding it again is no error");

    // A second handle (a restarted agent) finds it by its label.
    let again = ClusterAddresses::start(Netlink::open().expect("netlink socket")).await;
    assert!(again.present().contains(&ip), "{:?}", again.present());
    let shown = std::process::Command::new("ip")
        .args([
            "-4",
            "-o",
            "addr",
            "show",
            "dev",
            "lo",
            "label",
            "lo:drover",
        ])
        .output()
        .expect("ip addr");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains(&format!("{ip}/32")), "{shown}");

    // The proxy can listen on it, and the host reaches it.
    let listener = std::net::TcpListener::bind(SocketAddr::from((ip, 0))).expect("bind");
    let address = listener.local_addr().expect("local address");
    std::net::TcpStream::connect(address).expect("connect to the cluster address");
    drop(listener);

    // Releasing removes only addresses of the network given.
    let mut addresses = again;
    let network = ipnet::Ipv4Net::new(ip, 32).expect("a /32");
    addresses.release(&BTreeSet::new(), network).await;
    assert!(!addresses.present().contains(&ip));
    assert!(!lo.owned().await.expect("list").contains(&ip));
    lo.remove(ip).await.expect("removing it again is no error");
}
