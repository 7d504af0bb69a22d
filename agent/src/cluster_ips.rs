//! Services' cluster addresses on this host: each is put on the loopback interface as a
//! /32, labelled [`LABEL`], so that the proxy can listen on it and every container on the
//! host reaches it through its default route (Docker's bridge delivers it to the host,
//! which owns the address) with its own source address preserved.
//!
//! Why addresses and not nftables redirection: the proxy already is the data path (its
//! balancing, retries, replay, weights and drains), and an address is one kernel object per
//! service with no rule set to keep consistent; the kernel here has no `dummy` link or
//! IPVS, and `lo` needs neither. The addresses outlive the agent: a restarted agent finds
//! them by their label and keeps those still wanted, so a restart never takes a service's
//! address away; an address is removed only once no route and no draining connection uses
//! it.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use async_trait::async_trait;
use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use tracing::{debug, info, warn};

/// Label of the addresses Drover owns on `lo` (`ip addr show label lo:drover`).
pub const LABEL: &str = "lo:drover";

/// What failed when changing an address.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel refused a request.
    #[error("{action} {address} on lo: {source}")]
    Request {
        /// What was asked.
        action: &'static str,
        /// Which address (or `lo` itself).
        address: String,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
}

/// The host's loopback addresses, behind a trait so the bookkeeping is tested without
/// privileges.
#[async_trait]
pub trait LoopbackAddresses: Send {
    /// The addresses carrying [`LABEL`].
    async fn owned(&mut self) -> Result<BTreeSet<Ipv4Addr>, AddressError>;
    /// Adds `ip/32` with [`LABEL`]; an address already there is no error.
    async fn add(&mut self, ip: Ipv4Addr) -> Result<(), AddressError>;
    /// Removes `ip/32`; an address already gone is no error.
    async fn remove(&mut self, ip: Ipv4Addr) -> Result<(), AddressError>;
}

/// [`LoopbackAddresses`] through rtnetlink.
#[derive(Debug)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    /// Index of `lo`, looked up on first use.
    lo: Option<u32>,
}

impl Netlink {
    /// Opens a route netlink socket; its connection task runs on the current runtime.
    pub fn open() -> Result<Netlink, AddressError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(AddressError::Socket)?;
        tokio::spawn(connection);
        Ok(Netlink { handle, lo: None })
    }

    async fn lo(&mut self) -> Result<u32, AddressError> {
        if let Some(index) = self.lo {
            return Ok(index);
        }
        let link = self
            .handle
            .link()
            .get()
            .match_name("lo".to_string())
            .execute()
            .try_next()
            .await
            .map_err(|e| request("look up", "lo", e))?
            .ok_or_else(|| AddressError::Request {
                action: "look up",
                address: "lo".into(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such link"),
            })?;
        self.lo = Some(link.header.index);
        Ok(link.header.index)
    }
}

fn request(action: &'static str, address: impl ToString, e: rtnetlink::Error) -> AddressError {
    let source = match e {
        rtnetlink::Error::NetlinkError(message) => message.to_io(),
        other => std::io::Error::other(other.to_string()),
    };
    AddressError::Request {
        action,
        address: address.to_string(),
        source,
    }
}

fn is_errno(e: &AddressError, errno: i32) -> bool {
    matches!(e, AddressError::Request { source, .. } if source.raw_os_error() == Some(errno))
}

/// The IPv4 address of an address message that carries [`LABEL`].
fn labelled_v4(message: &AddressMessage) -> Option<Ipv4Addr> {
    let labelled = message
        .attributes
        .iter()
        .any(|a| matches!(a, AddressAttribute::Label(l) if l == LABEL));
    if !labelled {
        return None;
    }
    message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    })
}

#[async_trait]
impl LoopbackAddresses for Netlink {
    async fn owned(&mut self) -> Result<BTreeSet<Ipv4Addr>, AddressError> {
        let lo = self.lo().await?;
        let mut messages = self
            .handle
            .address()
            .get()
            .set_link_index_filter(lo)
            .execute();
        let mut owned = BTreeSet::new();
        while let Some(message) = messages
            .try_next()
            .await
            .map_err(|e| request("list addresses of", "lo", e))?
        {
            owned.extend(labelled_v4(&message));
        }
        Ok(owned)
    }

    async fn add(&mut self, ip: Ipv4Addr) -> Result<(), AddressError> {
        let lo = self.lo().await?;
        let mut add = self.handle.address().add(lo, IpAddr::V4(ip), 32);
        add.message_mut()
            .attributes
            .push(AddressAttribute::Label(LABEL.to_string()));
        match add.execute().await.map_err(|e| request("add", ip, e)) {
            Err(e) if is_errno(&e, nix::libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    async fn remove(&mut self, ip: Ipv4Addr) -> Result<(), AddressError> {
        let lo = self.lo().await?;
        let mut message = AddressMessage::default();
        message.header.family = rtnetlink::packet_route::AddressFamily::Inet;
        message.header.prefix_len = 32;
        message.header.index = lo;
        message
            .attributes
            .push(AddressAttribute::Local(IpAddr::V4(ip)));
        message
            .attributes
            .push(AddressAttribute::Address(IpAddr::V4(ip)));
        let result = self
            .handle
            .address()
            .del(message)
            .execute()
            .await
            .map_err(|e| request("remove", ip, e));
        match result {
            Err(e) if is_errno(&e, nix::libc::EADDRNOTAVAIL) => Ok(()),
            other => other,
        }
    }
}

/// The cluster addresses this agent keeps on `lo`: adds those routes need before their
/// listeners bind, removes those nothing uses any more.
#[derive(Debug)]
pub struct ClusterAddresses<L> {
    lo: L,
    /// Labelled addresses on `lo`, as far as this agent knows.
    present: BTreeSet<Ipv4Addr>,
    /// Addresses whose last add failed (reported once, retried quietly).
    failing: BTreeSet<Ipv4Addr>,
}

impl<L: LoopbackAddresses> ClusterAddresses<L> {
    /// Starts from the labelled addresses `lo` already has (an earlier agent's).
    pub async fn start(mut lo: L) -> ClusterAddresses<L> {
        let present = match lo.owned().await {
            Ok(present) => present,
            Err(e) => {
                warn!(error = %e, "cannot list the cluster addresses on lo; starting from none");
                BTreeSet::new()
            }
        };
        if !present.is_empty() {
            info!(
                addresses = present.len(),
                "cluster addresses kept from before"
            );
        }
        ClusterAddresses {
            lo,
            present,
            failing: BTreeSet::new(),
        }
    }

    /// Adds every address of `wanted` not on `lo` yet (looked up afresh: someone may have
    /// removed one). A failure (typically EPERM: the agent lacks CAP_NET_ADMIN) is logged
    /// once per address; that service is then not reachable on its cluster address here,
    /// and the add is retried on the next call.
    pub async fn ensure(&mut self, wanted: &BTreeSet<Ipv4Addr>) {
        if wanted.is_empty() {
            return;
        }
        match self.lo.owned().await {
            Ok(present) => self.present = present,
            Err(e) => debug!(error = %e, "cannot list the cluster addresses on lo"),
        }
        for ip in wanted.difference(&self.present.clone()) {
            match self.lo.add(*ip).await {
                Ok(()) => {
                    self.present.insert(*ip);
                    if self.failing.remove(ip) {
                        info!(address = %ip, "cluster address added after all");
                    } else {
                        debug!(address = %ip, "cluster address added to lo");
                    }
                }
                Err(e) => {
                    if self.failing.insert(*ip) {
                        warn!(address = %ip, error = %e,
                            "cannot add the service's cluster address to lo (the agent needs \
                             CAP_NET_ADMIN); retrying on the next route change");
                    }
                }
            }
        }
        self.failing.retain(|ip| wanted.contains(ip));
    }

    /// Removes every labelled address of `network` (this cluster's service network) not in
    /// `keep`; addresses outside it are another cluster's, or an agent's of an earlier
    /// network, and stay.
    pub async fn release(&mut self, keep: &BTreeSet<Ipv4Addr>, network: Ipv4Net) {
        let unused: Vec<Ipv4Addr> = self
            .present
            .difference(keep)
            .filter(|ip| network.contains(*ip))
            .copied()
            .collect();
        for ip in unused {
            match self.lo.remove(ip).await {
                Ok(()) => {
                    self.present.remove(&ip);
                    info!(address = %ip, "cluster address removed from lo");
                }
                Err(e) => warn!(address = %ip, error = %e, "cannot remove a cluster address"),
            }
        }
    }

    /// The addresses on `lo`, as far as this agent knows.
    pub fn present(&self) -> &BTreeSet<Ipv4Addr> {
        &self.present
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `lo` in memory; adds of `refused` fail with EPERM.
    #[derive(Debug, Default)]
    struct FakeLo {
        addresses: BTreeSet<Ipv4Addr>,
        refused: BTreeSet<Ipv4Addr>,
        calls: Vec<String>,
    }

    #[async_trait]
    impl LoopbackAddresses for FakeLo {
        async fn owned(&mut self) -> Result<BTreeSet<Ipv4Addr>, AddressError> {
            Ok(self.addresses.clone())
        }
        async fn add(&mut self, ip: Ipv4Addr) -> Result<(), AddressError> {
            self.calls.push(format!("add {ip}"));
            if self.refused.contains(&ip) {
                return Err(AddressError::Request {
                    action: "add",
                    address: ip.to_string(),
                    source: std::io::Error::from_raw_os_error(nix::libc::EPERM),
                });
            }
            self.addresses.insert(ip);
            Ok(())
        }
        async fn remove(&mut self, ip: Ipv4Addr) -> Result<(), AddressError> {
            self.calls.push(format!("remove {ip}"));
            self.addresses.remove(&ip);
            Ok(())
        }
    }

    fn ips(last: &[u8]) -> BTreeSet<Ipv4Addr> {
        last.iter().map(|n| Ipv4Addr::new(10, 96, 0, *n)).collect()
    }

    #[tokio::test]
    async fn addresses_from_before_are_kept_while_wanted_and_removed_once_unused() {
        let lo = FakeLo {
            addresses: ips(&[1, 2]),
            ..FakeLo::default()
        };
        let mut addresses = ClusterAddresses::start(lo).await;
        addresses.ensure(&ips(&[2, 3])).await;
        assert_eq!(addresses.present(), &ips(&[1, 2, 3]));
        // Only .3 was missing: .2, from the earlier agent, is not added again.
        assert_eq!(addresses.lo.calls, ["add 10.96.0.3"]);
        addresses.lo.calls.clear();
        // .1 is still in use by draining connections.
        let network: Ipv4Net = "10.96.0.0/24".parse().expect("network");
        addresses.release(&ips(&[1, 2, 3]), network).await;
        assert_eq!(addresses.present(), &ips(&[1, 2, 3]));
        addresses.release(&ips(&[2, 3]), network).await;
        assert_eq!(addresses.present(), &ips(&[2, 3]));
        assert_eq!(addresses.lo.addresses, ips(&[2, 3]));
        // Another cluster's address on the same host is not this agent's to remove.
        addresses.lo.addresses.insert(Ipv4Addr::new(10, 97, 0, 1));
        addresses.ensure(&ips(&[2])).await;
        addresses.release(&ips(&[2]), network).await;
        assert_eq!(
            addresses.lo.addresses,
            BTreeSet::from([Ipv4Addr::new(10, 96, 0, 2), Ipv4Addr::new(10, 97, 0, 1)])
        );
        // One removed behind the agent's back is added again.
        addresses.lo.addresses.remove(&Ipv4Addr::new(10, 96, 0, 2));
        addresses.ensure(&ips(&[2])).await;
        assert!(
            addresses
                .lo
                .addresses
                .contains(&Ipv4Addr::new(10, 96, 0, 2))
        );
    }

    #[tokio::test]
    async fn a_refused_address_is_retried_and_never_counted_present() {
        let lo = FakeLo {
            refused: ips(&[7]),
            ..FakeLo::default()
        };
        let mut addresses = ClusterAddresses::start(lo).await;
        addresses.ensure(&ips(&[7, 8])).await;
        assert_eq!(addresses.present(), &ips(&[8]));
        assert_eq!(addresses.failing, ips(&[7]));
        addresses.lo.refused.clear();
        addresses.ensure(&ips(&[7, 8])).await;
        assert_eq!(addresses.present(), &ips(&[7, 8]));
        assert!(addresses.failing.is_empty());
    }
}
