//! The coordinator's membership in the cluster's gossip: it publishes its role and API
//! address, and keeps the set of members gossip says are alive.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use drover_membership::{Membership, MembershipConfig, next_generation};
use drover_proto::gossip::{self, Role};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::coordinator::Coordinator;
use crate::error::Error;

/// Joins gossip when configured; `None` when `gossip_listen` is unset.
pub async fn join(
    config: &Config,
    grpc: SocketAddr,
    keyring: Option<drover_membership::KeyringHandle>,
) -> Result<Option<Membership>, Error> {
    let Some(listen) = config.gossip_listen else {
        return Ok(None);
    };
    let generation = next_generation(&config.data_dir).map_err(|e| {
        Error::Internal(format!(
            "gossip generation in {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let mut membership = MembershipConfig::new(
        config.cluster_id.clone(),
        "coordinator".to_string(),
        generation,
        listen,
    );
    membership.advertise = config.gossip_advertise(listen);
    membership.seeds = config.gossip_seeds.clone();
    membership.gossip_interval = config.gossip_interval;
    if let Some(keyring) = keyring {
        membership = membership.with_keyring(keyring);
    }
    let grpc = SocketAddr::new(membership.advertise.ip(), grpc.port());
    let initial = vec![
        (
            gossip::ROLE.to_string(),
            Role::Coordinator.as_str().to_string(),
        ),
        (gossip::GRPC.to_string(), grpc.to_string()),
    ];
    let advertise = membership.advertise;
    let joined = Membership::start(membership, initial)
        .await
        .map_err(|e| Error::Internal(format!("gossip on {listen}: {e}")))?;
    info!(%listen, %advertise, "joined gossip");
    Ok(Some(joined))
}

/// Keeps the coordinator's view of who gossip says is alive, logging changes.
pub async fn watch_members(
    membership: &Membership,
    coordinator: Arc<Coordinator>,
    shutdown: CancellationToken,
) {
    let mut live = membership.live_members();
    let mut known: BTreeSet<String> = BTreeSet::new();
    loop {
        let now: BTreeSet<String> = live.borrow_and_update().keys().cloned().collect();
        for joined in now.difference(&known) {
            info!(member = %joined, "gossip member alive");
        }
        for gone in known.difference(&now) {
            warn!(member = %gone, "gossip member no longer alive");
        }
        coordinator.set_gossip_live(now.clone()).await;
        known = now;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = live.changed() => if changed.is_err() { return },
        }
    }
}
