//! Services' cluster addresses: the network they come from (`service_network` in the
//! config) and which of its addresses a service may have; and the cluster's DNS domain
//! (`cluster_domain`) that names them. Pure.
//!
//! Every service that is not headless gets one address, the lowest free one unless its
//! manifest names one, and keeps it until it is deleted: the address is written into the
//! stored service (as Kubernetes writes `spec.clusterIP`), so a restart, a re-apply or a
//! change of range never moves it. An address is free when no stored service has it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Offset in the network of the address the agents' DNS servers answer on (Kubernetes'
/// kube-dns is 10.96.0.10 in 10.96.0.0/12): never given to a service.
const DNS_OFFSET: u32 = 10;

/// Smallest network accepted: room for the DNS address and a few services.
const MAX_PREFIX: u8 = 28;

/// The IPv4 network services' cluster addresses come from, e.g. `10.96.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceNetwork(Ipv4Net);

/// Why a text is not a service network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    /// Not `a.b.c.d/len`.
    #[error("{text:?} is not an IPv4 network such as 10.96.0.0/16: {reason}")]
    Syntax {
        /// The text given.
        text: String,
        /// What the parser said.
        reason: String,
    },
    /// Host bits are set (`10.96.0.5/16`).
    #[error("{given} has host bits set; the network is {network}")]
    HostBits {
        /// The text given.
        given: Ipv4Net,
        /// The network it lies in.
        network: Ipv4Net,
    },
    /// Fewer than 16 addresses.
    #[error("{0} is too small for services: use a prefix of /{MAX_PREFIX} or shorter")]
    TooSmall(Ipv4Net),
}

impl ServiceNetwork {
    /// The network.
    pub fn net(&self) -> Ipv4Net {
        self.0
    }

    /// The address every agent's DNS server answers on (the network's 10th address).
    pub fn dns_address(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.0.network()) + DNS_OFFSET)
    }

    /// Why `ip` cannot be a service's address in this network, if it cannot.
    pub fn refusal(&self, ip: Ipv4Addr) -> Option<String> {
        if !self.0.contains(&ip) {
            Some(format!("{ip} is outside the service network {}", self.0))
        } else if ip == self.0.network() || ip == self.0.broadcast() {
            Some(format!(
                "{ip} is the service network {}'s own network or broadcast address",
                self.0
            ))
        } else if ip == self.dns_address() {
            Some(format!("{ip} is reserved for the cluster's DNS"))
        } else {
            None
        }
    }

    /// The lowest address a service may have that is not in `taken`.
    pub fn lowest_free(&self, taken: &BTreeMap<Ipv4Addr, String>) -> Option<Ipv4Addr> {
        self.0
            .hosts()
            .find(|ip| !taken.contains_key(ip) && self.refusal(*ip).is_none())
    }
}

impl Default for ServiceNetwork {
    /// `10.96.0.0/16`: inside kubeadm's default service range, so manifests and habits
    /// written for it fit.
    fn default() -> Self {
        ServiceNetwork(Ipv4Net::new_assert(Ipv4Addr::new(10, 96, 0, 0), 16))
    }
}

impl FromStr for ServiceNetwork {
    type Err = NetworkError;

    fn from_str(text: &str) -> Result<Self, NetworkError> {
        let given: Ipv4Net =
            text.trim()
                .parse()
                .map_err(|e: ipnet::AddrParseError| NetworkError::Syntax {
                    text: text.to_string(),
                    reason: e.to_string(),
                })?;
        if given.addr() != given.network() {
            return Err(NetworkError::HostBits {
                given,
                network: given.trunc(),
            });
        }
        if given.prefix_len() > MAX_PREFIX {
            return Err(NetworkError::TooSmall(given));
        }
        Ok(ServiceNetwork(given))
    }
}

impl TryFrom<String> for ServiceNetwork {
    type Error = NetworkError;

    fn try_from(text: String) -> Result<Self, NetworkError> {
        text.parse()
    }
}

impl From<ServiceNetwork> for String {
    fn from(network: ServiceNetwork) -> String {
        network.0.to_string()
    }
}

impl fmt::Display for ServiceNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The DNS domain of services' names (`NAME.NAMESPACE.svc.DOMAIN`), e.g. `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterDomain(String);

impl ClusterDomain {
    /// The domain, without a trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ClusterDomain {
    /// Kubernetes' `cluster.local`.
    fn default() -> Self {
        ClusterDomain("cluster.local".into())
    }
}

impl TryFrom<String> for ClusterDomain {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let domain = text.trim().trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() || domain.len() > 200 {
            return Err(format!(
                "cluster domain {text:?} must be a DNS name of at most 200 characters"
            ));
        }
        for label in domain.split('.') {
            drover_proto::manifest::dns_label(label)
                .map_err(|e| format!("cluster domain {text:?}: {e}"))?;
        }
        Ok(ClusterDomain(domain))
    }
}

impl From<ClusterDomain> for String {
    fn from(domain: ClusterDomain) -> String {
        domain.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> ServiceNetwork {
        text.parse().expect("network")
    }

    #[test]
    fn cluster_domains_are_dns_names() {
        let domain = |text: &str| ClusterDomain::try_from(text.to_string());
        assert_eq!(
            domain("Edge.Example.").map(String::from),
            Ok("edge.example".into())
        );
        assert!(domain("").is_err());
        assert!(domain("bad_label.local").is_err_and(|e| e.contains("bad_label")));
        assert_eq!(ClusterDomain::default().as_str(), "cluster.local");
    }

    #[test]
    fn bad_networks_are_refused_with_the_reason() {
        let err = |text: &str| text.parse::<ServiceNetwork>().expect_err(text).to_string();
        assert!(err("10.96.0.5/16").contains("host bits set; the network is 10.96.0.0/16"));
        assert!(err("10.96.0.0/29").contains("too small"));
        assert!(err("10.96.0.0").contains("not an IPv4 network"));
        assert!(err("fd00::/64").contains("not an IPv4 network"));
        assert_eq!(net(" 10.43.0.0/16 ").to_string(), "10.43.0.0/16");
        assert_eq!(ServiceNetwork::default().to_string(), "10.96.0.0/16");
    }

    #[test]
    fn the_lowest_free_address_skips_taken_and_reserved_ones() {
        let network = net("10.96.0.0/28");
        assert_eq!(network.dns_address(), Ipv4Addr::new(10, 96, 0, 10));
        let mut taken = BTreeMap::new();
        let mut got = Vec::new();
        while let Some(ip) = network.lowest_free(&taken) {
            taken.insert(ip, format!("s{}", got.len()));
            got.push(ip.octets()[3]);
        }
        // .0 is the network, .10 the DNS, .15 the broadcast address.
        assert_eq!(got, [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14]);
        taken.remove(&Ipv4Addr::new(10, 96, 0, 4));
        assert_eq!(
            network.lowest_free(&taken),
            Some(Ipv4Addr::new(10, 96, 0, 4))
        );
    }

    #[test]
    fn refusals_name_the_address_and_the_network() {
        let network = net("10.96.0.0/16");
        let refusal = |ip: [u8; 4]| network.refusal(Ipv4Addr::from(ip));
        assert_eq!(refusal([10, 96, 3, 7]), None);
        assert!(refusal([10, 97, 0, 1]).is_some_and(|r| r.contains("outside")));
        assert!(refusal([10, 96, 0, 10]).is_some_and(|r| r.contains("DNS")));
        assert!(refusal([10, 96, 255, 255]).is_some_and(|r| r.contains("broadcast")));
    }
}
