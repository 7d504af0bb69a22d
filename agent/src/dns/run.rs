//! The agent's DNS task: serves the cluster's names on the cluster DNS address the
//! coordinator names (in every desired set; at start, the saved one), from the records the
//! routing task keeps current, rebinding when the address changes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use drover_proto::model::ClusterDns;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{DnsListener, FORWARD_TIMEOUT, Records, host_upstreams};

/// Wait between attempts to bind: the address appears on `lo` once the routing task has
/// added it, usually within one route pass.
const RETRY: Duration = Duration::from_secs(1);
/// Failing to bind for this long is worth a warning (before, it is the usual start race).
const WARN_AFTER: Duration = Duration::from_secs(10);

/// The address of the current cluster DNS.
fn dns_address(cluster_dns: &watch::Receiver<Option<ClusterDns>>) -> Option<Ipv4Addr> {
    cluster_dns.borrow().as_ref().map(|dns| dns.address)
}

/// Serves DNS on the address of `cluster_dns` (port 53, UDP and TCP) until `shutdown`; the
/// answers come from `records`.
pub async fn run(
    mut cluster_dns: watch::Receiver<Option<ClusterDns>>,
    records: watch::Receiver<Arc<Records>>,
    shutdown: CancellationToken,
) {
    // Since when binding has failed without a break, and whether that was reported.
    let mut failing_since: Option<Instant> = None;
    let mut warned = false;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let Some(address) = dns_address(&cluster_dns) else {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = cluster_dns.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => return,
                },
            }
        };
        let listen = SocketAddr::new(IpAddr::V4(address), 53);
        match DnsListener::bind(listen).await {
            Ok(listener) => {
                if warned {
                    info!(address = %listen, "the cluster DNS serves after all");
                }
                (failing_since, warned) = (None, false);
                let stop = shutdown.child_token();
                let upstreams = host_upstreams(IpAddr::V4(address));
                let serving =
                    listener.serve(records.clone(), upstreams, FORWARD_TIMEOUT, stop.clone());
                tokio::pin!(serving);
                let ended = loop {
                    tokio::select! {
                        result = &mut serving => break Some(result),
                        changed = cluster_dns.changed() => {
                            // The link is gone: the agent is stopping. (Taken as a change, it
                            // rebound at once, over and over, until the shutdown reached the
                            // server: a busy loop and a log line per turn.)
                            if changed.is_err() {
                                stop.cancel();
                                let _ = (&mut serving).await;
                                return;
                            }
                            if dns_address(&cluster_dns) != Some(address) {
                                stop.cancel();
                                let _ = (&mut serving).await;
                                break None;
                            }
                        }
                    }
                };
                match ended {
                    // The address changed: serve the new one.
                    None => continue,
                    Some(Ok(())) => return,
                    Some(Err(e)) => {
                        warn!(address = %listen, error = %e, "the cluster DNS stopped; restarting it")
                    }
                }
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if !warned && since.elapsed() >= WARN_AFTER {
                    warn!(address = %listen, error = %e,
                        "the cluster DNS cannot listen (is the address on lo? the agent needs \
                         CAP_NET_ADMIN and CAP_NET_BIND_SERVICE); retrying every second");
                    warned = true;
                } else {
                    debug!(address = %listen, error = %e, "the cluster DNS cannot listen yet");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}
