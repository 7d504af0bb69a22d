//! Drover's coordinator: stores desired state, places allocations on nodes, serves the
//! operator's `Control` API and the agents' `AgentLink` streams.

pub mod scheduler;
