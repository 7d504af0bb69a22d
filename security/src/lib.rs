//! Drover's security: the cluster CA and the certificates it issues (rcgen), join and
//! operator tokens that pin that CA, the identity a peer's certificate proves, and the one
//! place every gRPC transport is set up (rustls through tonic on the server, tokio-rustls in
//! a connector on the client side).
//!
//! Trust works as in Swarm and k3s: a token carries the SHA-256 digest of the cluster CA, so
//! a newcomer that has only the token verifies on first contact that it talks to its own
//! cluster's coordinator (the TLS chain must contain a CA with that digest), then proves the
//! token's secret and sends a CSR; its private key never leaves the host. From then on every
//! connection is mutual TLS against the CA bundle.

pub mod ca;
pub mod client;
pub mod files;
pub mod identity;
pub mod token;
pub mod transport;

pub use ca::{CaDigest, ClusterCa, IssuedCert};
pub use identity::{KeyAndCsr, Peer, PeerCert};
pub use token::{Role, StoredMismatch, Token};
pub use transport::{ClientIdentity, ClientTls, Trust};

/// The DNS name every coordinator certificate carries and every client verifies, whatever
/// address it dialled: trust comes from the cluster CA, which gives that name to
/// coordinators only (node and operator names end in other suffixes).
pub const COORDINATOR_NAME: &str = "coordinator.drover";
/// The name every node certificate also carries, which agents serve their HTTP side
/// (health, metrics) under: a scraper verifies every agent as this name.
pub const AGENT_NAME: &str = "agent.drover";
/// Suffix of a node certificate's DNS name: `<node id>.node.drover`.
pub const NODE_SUFFIX: &str = ".node.drover";
/// Suffix of an operator certificate's DNS name: `<token id>.operator.drover`.
pub const OPERATOR_SUFFIX: &str = ".operator.drover";

/// Installs rustls' ring provider as the process default. Call once at start, before any
/// TLS: with more than one provider in the dependency graph rustls cannot pick one and
/// tonic's server would panic. Calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Errors of the security layer; each names what failed and with which input.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A file could not be read, created or written.
    #[error("{path}: cannot {action}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed, e.g. "write the CA key".
        action: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A certificate, key or CSR could not be made or parsed.
    #[error("{what}: {reason}")]
    Certificate {
        /// Which object, e.g. "the CSR of node web-1".
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A token is not of the form `DRV1-<CA digest>-<id>.<secret>`.
    #[error("malformed token: {0}")]
    Token(String),
    /// TLS could not be set up.
    #[error("TLS setup: {0}")]
    Tls(String),
}

impl SecurityError {
    pub(crate) fn cert(what: impl Into<String>, reason: impl std::fmt::Display) -> SecurityError {
        SecurityError::Certificate {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
