//! Drover's agent: runs the containers the coordinator assigns to this host, checks their
//! health, restarts them, and gossips node and service health to its peers.
//!
//! [`supervisor`] is the reconcile loop over a [`runtime::ContainerRuntime`]; [`link`] is the
//! stream to the coordinator; [`health`] probes replicas; [`routes`] keeps the [`proxy`] and
//! the cluster DNS ([`dns`]) in step with the route policy and gossip; [`saved_routing`]
//! keeps the last policy on disk for a restart without the coordinator; [`server::run`]
//! wires them.

pub mod cluster_ips;
pub mod config;
pub mod credentials;
pub mod dns;
pub mod error;
pub mod gossip;
pub mod handoff;
pub mod health;
pub mod host;
pub mod http;
pub mod link;
pub mod logs;
pub mod metrics;
pub mod proxy;
pub mod read_tokens;
pub mod routes;
pub mod runtime;
pub mod saved_routing;
pub mod server;
pub mod supervisor;
pub mod usage;

pub use config::Config;
pub use error::Error;
pub use server::run;
