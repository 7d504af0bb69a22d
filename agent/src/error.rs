//! The agent's error type.

/// Errors that stop the agent from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The host's resources could not be read.
    #[error("{0}")]
    Host(String),
    /// The container engine is unusable.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// Gossip could not start or stopped.
    #[error("gossip: {0}")]
    Gossip(String),
    /// The node's credentials could not be loaded, obtained or kept.
    #[error("credentials: {0}")]
    Credentials(String),
    /// The services' cluster addresses cannot be managed.
    #[error("cluster addresses: {0}")]
    ClusterAddresses(#[from] crate::cluster_ips::AddressError),
    /// A background task failed unexpectedly.
    #[error("internal: {0}")]
    Internal(String),
}
