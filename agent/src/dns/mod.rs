//! The cluster's DNS, served by every agent: services' names from the route policy, every
//! other name relayed to the host's resolvers.
//!
//! For namespace `default` and domain `cluster.local` ([`Records`]):
//!
//! - `NAME`, `NAME.default`, `NAME.default.svc` and `NAME.default.svc.cluster.local` have
//!   an A record: the service's cluster address, or for a headless service one per node
//!   address of its ready endpoints (the policy's endpoints that gossip says are alive and
//!   healthy, as the proxy routes).
//! - `_PORT._tcp.NAME.default.svc.cluster.local` has the SRV records of a named port: the
//!   service name and port, or for a headless service each ready endpoint,
//!   `ALLOC.NAME.default.svc.cluster.local` at its host port (`ALLOC` the allocation id
//!   with dashes for dots); the targets' A records go in the additional section, and a
//!   headless endpoint's name answers A itself.
//! - Another type for an existing name is NODATA; any other name in `cluster.local` is an
//!   authoritative NXDOMAIN, with the zone's SOA for negative caching.
//! - Anything else, including `X` and `X.default` when `X` is no service, is forwarded, so
//!   that `localhost`-like names and the search path's probing of external names resolve
//!   as on the host.
//!
//! Every TTL is 5 s ([`TTL`]), as CoreDNS's kubernetes plugin: replicas move and a headless
//! answer lists only ready endpoints, so clients must not cache an answer for long; the
//! agent answers locally, so a short TTL costs little.
//!
//! Forwarding is a relay, not a resolver: the query goes to the first upstream as the
//! client sent it (bytes, id and flags unchanged; over TCP if it came over TCP), then the
//! next after [`FORWARD_TIMEOUT`], and the response comes back as the upstream sent it
//! (hickory-server re-encodes it, sections and header unchanged). No cache and no
//! recursion of our own: the host's resolver already does both, and a relay cannot
//! answer differently from what the host itself would resolve. No upstream answering is
//! SERVFAIL.

mod forward;
mod records;
pub mod run;
mod server;

pub use records::{Answer, Records, TTL};
pub use server::{DnsError, DnsListener, FORWARD_TIMEOUT, host_upstreams, serve};
