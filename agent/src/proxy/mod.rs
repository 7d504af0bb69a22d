//! The agent's L4 service proxy: every agent listens on each service's published port and
//! forwards each TCP connection to a healthy replica anywhere in the cluster (DESIGN.md §5).
//!
//! - [`balancer`]: the pure, synchronous replica picker (strategies, weights, ejection);
//! - [`forward`]: the data path of one port ([`ServiceProxy`], [`serve`]): connect with retry
//!   on another replica, copy both ways, drain removed replicas;
//! - [`listeners`]: [`ProxyManager`], one listener per published port, reconciled from
//!   [`ServiceRoute`]s;
//! - [`counters`]: per-service atomics and their [`CountersSnapshot`]; per-revision
//!   connection outcomes ([`RevisionOutcomes`]) that [`ProxyManager::traffic`] sums per node;
//! - `copy`: the default data path, buffers that grow while reads fill them;
//! - `splice` (Linux, opt-in): the zero-copy data path through pooled pipes.

pub mod balancer;
pub(crate) mod copy;
pub mod counters;
pub mod forward;
pub mod listeners;
#[cfg(target_os = "linux")]
mod splice;
#[cfg(test)]
mod test_sockets;

pub use copy::START as MIN_BUFFER_SIZE;
pub use counters::{
    CountersSnapshot, LATENCY_BOUNDS, LatencySnapshot, RevisionCounters, RevisionOutcomes,
    ServiceCounters,
};
pub use forward::{ProxyConfig, ServiceProxy, serve};
pub use listeners::{NodeTraffic, ProxyManager, ProxyTotals, ServiceRoute};
