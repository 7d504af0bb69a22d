//! The routing an agent keeps on disk: the last route policy it accepted and the cluster DNS
//! of the last desired set, in `<data_dir>/routing.pb` (a `drover.v1.SavedRouting`). An
//! agent restarted while the coordinator is unreachable starts from them, as kube-proxy
//! keeps its rules: the proxy listens and routes at once (gossip still says which replicas
//! are alive and healthy) and the cluster DNS answers. The coordinator's next policy replaces
//! the saved one as any newer policy would.
//!
//! Writes are atomic and durable, so a crash leaves the old file or the new one. A file that
//! cannot be read or decoded is reported and ignored: the agent then starts without it, as
//! on its first start.

use std::path::{Path, PathBuf};

use drover_proto::model::{ClusterDns, RoutePolicy};
use drover_proto::pb;
use prost::Message as _;
use tracing::{info, warn};

/// The file in the data dir.
pub const FILE: &str = "routing.pb";

/// What [`load`] restores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// The last route policy the agent accepted.
    pub policy: RoutePolicy,
    /// The cluster DNS of the last desired set, if it named one.
    pub cluster_dns: Option<ClusterDns>,
}

/// The routing could not be kept; the agent goes on with it in memory.
#[derive(Debug, thiserror::Error)]
#[error("cannot keep the routing: {0}")]
pub struct SaveError(#[from] drover_security::SecurityError);

/// Where the routing is kept in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Keeps `policy` and `cluster_dns` in `dir`, replacing what was kept.
pub fn save(
    dir: &Path,
    policy: &RoutePolicy,
    cluster_dns: Option<&ClusterDns>,
) -> Result<(), SaveError> {
    let saved = pb::SavedRouting {
        policy: Some(policy.into()),
        cluster_dns: cluster_dns.map(Into::into),
    };
    // Only the agent reads it.
    drover_security::files::write_atomic(&path(dir), &saved.encode_to_vec(), true)?;
    Ok(())
}

/// The routing kept in `dir`; `None` when there is none, or when it is unusable (logged: the
/// agent starts as without it).
pub fn load(dir: &Path) -> Option<Routing> {
    let path = path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(
                path = %path.display(),
                error = %e,
                "cannot read the saved routing; starting without it"
            );
            return None;
        }
    };
    match decode(&bytes) {
        Ok(routing) => Some(routing),
        Err(e) => {
            warn!(
                path = %path.display(),
                error = %e,
                "the saved routing is unusable; starting without it"
            );
            None
        }
    }
}

/// What an agent starts its route policy and cluster DNS channels with: what `dir` keeps
/// (logged), so that the routing and DNS tasks serve before the coordinator answers; none
/// of either without a usable file.
pub fn restore(dir: &Path) -> (Option<RoutePolicy>, Option<ClusterDns>) {
    match load(dir) {
        Some(Routing {
            policy,
            cluster_dns,
        }) => {
            info!(
                version = policy.version,
                store = %policy.store_id,
                services = policy.services.len(),
                cluster_dns = ?cluster_dns.as_ref().map(|d| d.address),
                "routing restored from the last policy"
            );
            (Some(policy), cluster_dns)
        }
        None => (None, None),
    }
}

/// The domain form of a kept file, checked as a policy from the coordinator would be.
fn decode(bytes: &[u8]) -> Result<Routing, String> {
    let saved = pb::SavedRouting::decode(bytes).map_err(|e| e.to_string())?;
    let policy = saved.policy.ok_or("it holds no route policy")?;
    let policy = RoutePolicy::try_from(policy).map_err(|e| e.to_string())?;
    let cluster_dns = saved
        .cluster_dns
        .map(ClusterDns::try_from)
        .transpose()
        .map_err(|e| e.to_string())?;
    Ok(Routing {
        policy,
        cluster_dns,
    })
}

#[cfg(test)]
mod tests {
    use drover_proto::model::{RouteEndpoint, ServiceRoute, Strategy};

    use super::*;

    fn routing() -> Routing {
        Routing {
            policy: RoutePolicy {
                version: 7 << 32,
                store_id: "s1".into(),
                services: vec![ServiceRoute {
                    service: "web".into(),
                    port: 80,
                    port_name: Some("http".into()),
                    cluster_ip: Some(std::net::Ipv4Addr::new(10, 96, 0, 11)),
                    node_port: None,
                    strategy: Strategy::RoundRobin,
                    pool_weights: [(1, 100)].into_iter().collect(),
                    endpoints: vec![RouteEndpoint {
                        allocation_id: "web.1".into(),
                        node: "n1".into(),
                        revision: 1,
                        address: Some("10.0.0.1:31000".parse().expect("address")),
                        weight: 1,
                        workload: "web".into(),
                        pool: 1,
                        container_port: 8080,
                    }],
                }],
            },
            cluster_dns: Some(ClusterDns {
                address: std::net::Ipv4Addr::new(10, 96, 0, 10),
                domain: "cluster.local".into(),
                service_network: "10.96.0.0/16".into(),
            }),
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn what_is_saved_is_loaded_and_only_the_file_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut kept = routing();
        save(dir.path(), &kept.policy, kept.cluster_dns.as_ref()).expect("save");
        assert_eq!(load(dir.path()), Some(kept.clone()));
        // Replaced whole, by one without a cluster DNS.
        kept.policy.version += 1;
        kept.cluster_dns = None;
        save(dir.path(), &kept.policy, None).expect("save again");
        assert_eq!(load(dir.path()), Some(kept));
        assert_eq!(files(dir.path()), [FILE], "no temporary file left behind");
    }

    #[test]
    fn no_file_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()), None);
        assert_eq!(load(&dir.path().join("absent")), None);
    }

    #[test]
    fn a_corrupt_or_invalid_file_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Not protobuf, or cut short (the policy's length says 100 bytes, 2 follow).
        for bytes in [&b"\xff\xff\xff\xff not a message"[..], &[0x0a, 100, 1, 2]] {
            std::fs::write(path(dir.path()), bytes).expect("write");
            assert_eq!(load(dir.path()), None);
        }
        // Protobuf, but no policy.
        std::fs::write(
            path(dir.path()),
            pb::SavedRouting::default().encode_to_vec(),
        )
        .expect("write");
        assert_eq!(load(dir.path()), None);
        // A policy the link would refuse: an endpoint address that is not ip:port.
        let mut policy = pb::RoutePolicy::from(&routing().policy);
        policy.services[0].endpoints[0].address = "somewhere:31000".into();
        let saved = pb::SavedRouting {
            policy: Some(policy),
            cluster_dns: None,
        };
        std::fs::write(path(dir.path()), saved.encode_to_vec()).expect("write");
        assert_eq!(load(dir.path()), None);
        // A cluster DNS address that is not IPv4.
        let saved = pb::SavedRouting {
            policy: Some((&routing().policy).into()),
            cluster_dns: Some(pb::ClusterDns {
                address: "ten".into(),
                ..Default::default()
            }),
        };
        std::fs::write(path(dir.path()), saved.encode_to_vec()).expect("write");
        assert_eq!(load(dir.path()), None);
        // A new save replaces any of them.
        let kept = routing();
        save(dir.path(), &kept.policy, kept.cluster_dns.as_ref()).expect("save");
        assert_eq!(load(dir.path()), Some(kept));
    }

    #[test]
    fn an_unreadable_path_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory where the file should be: reading fails, not with NotFound.
        std::fs::create_dir(path(dir.path())).expect("mkdir");
        assert_eq!(load(dir.path()), None);
    }

    #[test]
    fn a_failed_save_says_where() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(path(dir.path())).expect("mkdir");
        let kept = routing();
        let error = save(dir.path(), &kept.policy, None)
            .expect_err("a directory is in the way")
            .to_string();
        assert!(error.contains(FILE), "{error}");
    }

    #[test]
    fn fields_unknown_here_are_skipped() {
        // A newer agent's file (after a downgrade) with a field this agent does not know
        // still loads; fields missing from an older agent's file are simply absent.
        let dir = tempfile::tempdir().expect("tempdir");
        let kept = routing();
        let mut bytes = pb::SavedRouting {
            policy: Some((&kept.policy).into()),
            cluster_dns: kept.cluster_dns.as_ref().map(Into::into),
        }
        .encode_to_vec();
        // Field 15, varint 1.
        bytes.extend_from_slice(&[15 << 3, 1]);
        std::fs::write(path(dir.path()), bytes).expect("write");
        assert_eq!(load(dir.path()), Some(kept));
    }
}
