//! Drover's agent: runs the containers the coordinator assigns to this host, checks their
//! health, restarts them, and gossips node and service health to its peers.

pub mod runtime;
