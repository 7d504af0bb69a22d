//! Drover's coordinator: stores desired state, places allocations on nodes, serves the
//! operator's `Control` API and the agents' `AgentLink` streams.
//!
//! Decisions ([`scheduler`], [`reconcile`], [`operations`]) are pure functions of the state;
//! [`coordinator`] owns the state, commits changes through the [`store`] before acting on
//! them, and pushes results to agents.

pub mod agent_link;
pub mod api;
pub mod autoscale;
pub mod bootstrap;
pub mod changes;
pub mod cluster_ips;
pub mod config;
pub mod control;
pub mod coordinator;
pub mod error;
pub mod events;
pub mod failure;
pub mod gossip;
pub mod http;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod operations;
pub mod reconcile;
pub mod rollout;
pub mod routing;
pub mod scheduler;
pub mod security;
pub mod server;
pub mod state;
pub mod store;
pub mod ui;
pub mod usage;
pub mod views;

pub use config::Config;
pub use error::Error;
pub use server::run;
