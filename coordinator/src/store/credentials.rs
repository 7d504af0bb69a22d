//! Credential records: tokens (only the hash of their secret), the node certificates the CA
//! issued (so an unknown or revoked one is refused), and the gossip keyring. One table,
//! `credentials`, keyed by [`Credential::key`].

use serde::{Deserialize, Serialize};

/// A token as stored: its secret only as a SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id (the part before the '.' of the token's last field).
    pub id: String,
    /// Operator-given name, unique.
    pub name: String,
    /// admin, operator, read or agent.
    pub role: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// When it was made, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// When it stops working; 0: never.
    pub expires_unix_ms: u64,
    /// Name of the token that made it ("bootstrap" for the ones made at first start).
    pub created_by: String,
}

/// A node certificate the CA issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// Serial number, hex.
    pub serial: String,
    /// The node it names.
    pub node: String,
    /// End of validity, ms since the Unix epoch.
    pub not_after_unix_ms: u64,
    /// Revoked certificates are refused though valid.
    pub revoked: bool,
    /// Digest of the CA that issued it; empty in records from before CA rotation existed
    /// (the cluster's first CA issued those).
    #[serde(default)]
    pub ca: String,
}

/// One record of the `credentials` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Credential {
    /// An operator or agent token.
    Token(TokenRecord),
    /// A node certificate.
    Certificate(CertRecord),
    /// The gossip keyring: base64 keys, the one to seal with first.
    GossipKeys {
        /// The keys.
        keys: Vec<String>,
    },
}

/// Key of the gossip keyring record.
pub const GOSSIP_KEYS: &str = "gossip_keys";

impl Credential {
    /// The record's key: `token/<id>`, `cert/<serial>` or [`GOSSIP_KEYS`].
    pub fn key(&self) -> String {
        match self {
            Credential::Token(t) => token_key(&t.id),
            Credential::Certificate(c) => cert_key(&c.serial),
            Credential::GossipKeys { .. } => GOSSIP_KEYS.to_string(),
        }
    }
}

/// Key of a token's record.
pub fn token_key(id: &str) -> String {
    format!("token/{id}")
}

/// Key of a certificate's record.
pub fn cert_key(serial: &str) -> String {
    format!("cert/{serial}")
}

// Debug of a keyring would print the keys: tracing of writes must not.
impl Credential {
    /// What the record is, for logs: never a secret.
    pub fn describe(&self) -> String {
        match self {
            Credential::Token(t) => format!("token {} ({}, {})", t.id, t.name, t.role),
            Credential::Certificate(c) => format!("certificate {} of node {}", c.serial, c.node),
            Credential::GossipKeys { keys } => format!("gossip keyring of {} keys", keys.len()),
        }
    }
}
