//! The agent's membership in the cluster's gossip: its node facts and one key per local
//! allocation (service, revision, endpoint, health), kept in step with the supervisor.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use drover_membership::{Membership, MembershipConfig};
use drover_proto::gossip::{self, AllocFact, Role};
use drover_proto::model::Resources;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::Config;
use crate::error::Error;
use crate::supervisor::AllocReport;

/// Joins the gossip cluster with this node's facts.
pub async fn join(
    config: &Config,
    node_id: &str,
    generation: u64,
    capacity: Resources,
    keyring: Option<drover_membership::KeyringHandle>,
) -> Result<Membership, Error> {
    let mut membership = MembershipConfig::new(
        config.cluster_id.clone(),
        node_id.to_string(),
        generation,
        config.gossip_listen,
    );
    membership.advertise = SocketAddr::new(config.advertise, config.gossip_listen.port());
    membership.seeds = config.gossip_seeds.clone();
    membership.gossip_interval = config.gossip_interval;
    if let Some(keyring) = keyring {
        membership = membership.with_keyring(keyring);
    }
    let labels =
        gossip::encode_labels(&config.labels).map_err(|e| Error::Config(format!("labels: {e}")))?;
    let initial = vec![
        (gossip::ROLE.to_string(), Role::Agent.as_str().to_string()),
        (gossip::ADDR.to_string(), config.advertise.to_string()),
        (
            gossip::CAPACITY.to_string(),
            gossip::encode_resources(capacity),
        ),
        (gossip::LABELS.to_string(), labels),
    ];
    Membership::start(membership, initial)
        .await
        .map_err(|e| Error::Gossip(e.to_string()))
}

/// Publishes the supervisor's reports as allocation keys until `shutdown`; keys of removed
/// allocations are deleted.
pub async fn publish_allocations(
    membership: &Membership,
    advertise: IpAddr,
    mut reports: watch::Receiver<BTreeMap<String, AllocReport>>,
    shutdown: CancellationToken,
) {
    loop {
        let facts: BTreeMap<String, AllocFact> = reports
            .borrow_and_update()
            .iter()
            .map(|(id, r)| (id.clone(), fact(advertise, r)))
            .collect();
        if let Err(e) = membership.sync_allocations(&facts).await {
            warn!(error = %e, "cannot publish allocations to gossip");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = reports.changed() => if changed.is_err() { return },
        }
    }
}

fn fact(advertise: IpAddr, report: &AllocReport) -> AllocFact {
    AllocFact {
        service: report.service.clone(),
        revision: report.revision,
        endpoint: report
            .status
            .host_ports
            .values()
            .next()
            .map(|port| SocketAddr::new(advertise, *port)),
        health: report.status.state,
    }
}
