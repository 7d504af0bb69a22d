//! Tokens: `DRV1-<CA digest>-<id>.<secret>`, as Swarm's `SWMTKN-1-<CA digest>-<secret>`.
//!
//! The digest pins the cluster CA on first contact; the id names the token in lists, events
//! and revocations; the secret (130 random bits) proves it. The coordinator stores only the
//! SHA-256 of the secret, so its state file does not hold usable tokens.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::SecurityError;
use crate::ca::CaDigest;

/// The token format's prefix and version.
pub const PREFIX: &str = "DRV1";
const ID_LEN: usize = 8;
const SECRET_LEN: usize = 26;

/// What a token allows. Admin ⊇ operator ⊇ read; agent tokens only join nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Reads: status, lists, events.
    Read,
    /// Reads, and changes workloads and nodes: apply, delete, scale, weights, rollouts,
    /// cordon, drain.
    Operator,
    /// Everything, tokens and keys included.
    Admin,
    /// Joins a node to the cluster (gets a node certificate); nothing else.
    Agent,
}

impl Role {
    /// Whether a holder of `self` may do what needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        match (self, needed) {
            (Role::Agent, Role::Agent) => true,
            (Role::Agent, _) | (_, Role::Agent) => false,
            (have, needed) => have >= needed,
        }
    }

    /// The role's name in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Agent => "agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "read" | "read-only" | "readonly" => Ok(Role::Read),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            "agent" => Ok(Role::Agent),
            other => Err(format!(
                "unknown role {other:?} (expected admin, operator, read or agent)"
            )),
        }
    }
}

/// A token: what a holder presents. Its `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// Digest of the cluster CA the token belongs to.
    pub digest: CaDigest,
    /// Public id: names the token in lists, events and revocation.
    pub id: String,
    secret: String,
}

impl Token {
    /// A new random token for the CA with `digest`.
    pub fn generate(digest: CaDigest) -> Token {
        let random: [u8; 22] = rand::random();
        let text = data_encoding::BASE32_NOPAD
            .encode(&random)
            .to_ascii_lowercase();
        Token {
            digest,
            id: text[..ID_LEN].to_string(),
            secret: text[ID_LEN..ID_LEN + SECRET_LEN].to_string(),
        }
    }

    /// SHA-256 of the secret: what the coordinator stores.
    pub fn secret_hash(&self) -> [u8; 32] {
        Sha256::digest(self.secret.as_bytes()).into()
    }

    /// Whether the secret matches a stored hash (constant time).
    pub fn matches(&self, stored_hash: &[u8]) -> bool {
        self.secret_hash().ct_eq(stored_hash).into()
    }

    /// Checks the token against what is stored of it: the SHA-256 of its secret, hex, and
    /// its expiry (ms since the Unix epoch; 0: never) at `now_unix_ms`.
    pub fn check_stored(
        &self,
        secret_sha256_hex: &str,
        expires_unix_ms: u64,
        now_unix_ms: u64,
    ) -> Result<(), StoredMismatch> {
        let hash = data_encoding::HEXLOWER
            .decode(secret_sha256_hex.as_bytes())
            .map_err(|_| StoredMismatch::Unknown)?;
        if !self.matches(&hash) {
            return Err(StoredMismatch::Unknown);
        }
        if expires_unix_ms != 0 && expires_unix_ms <= now_unix_ms {
            return Err(StoredMismatch::Expired);
        }
        Ok(())
    }

    /// The same token pinning the CA with `digest` (after a CA rotation: its id and secret
    /// stay, only what it pins changes).
    pub fn with_digest(&self, digest: CaDigest) -> Token {
        Token {
            digest,
            ..self.clone()
        }
    }

    /// The whole token, as given to its holder. This is the secret: do not log it.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}-{}-{}.{}", self.digest, self.id, self.secret)
    }
}

/// Why a token does not pass [`Token::check_stored`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredMismatch {
    /// Its secret is not the stored one (or the record is unreadable): as if unknown.
    Unknown,
    /// Past its expiry.
    Expired,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("digest", &self.digest)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl FromStr for Token {
    type Err = SecurityError;

    fn from_str(text: &str) -> Result<Token, SecurityError> {
        let text = text.trim();
        let malformed = |why: &str| {
            SecurityError::Token(format!(
                "{why} (expected {PREFIX}-<CA digest>-<id>.<secret>)"
            ))
        };
        let mut parts = text.splitn(3, '-');
        let (Some(prefix), Some(digest), Some(rest)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("not three parts separated by '-'"));
        };
        if prefix != PREFIX {
            let shown: String = prefix.chars().take(8).collect();
            return Err(malformed(&format!("unknown prefix {shown:?}")));
        }
        let digest = CaDigest::parse(digest)?;
        let Some((id, secret)) = rest.split_once('.') else {
            return Err(malformed("no '.' between the id and the secret"));
        };
        let valid = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
        };
        if !valid(id, ID_LEN) || !valid(secret, SECRET_LEN) {
            return Err(malformed(
                "the id or the secret is not of the right length or alphabet",
            ));
        }
        Ok(Token {
            digest,
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_and_matches_only_its_own_hash() {
        let digest = CaDigest::of(b"ca");
        let token = Token::generate(digest);
        let text = token.reveal();
        assert!(text.starts_with("DRV1-"), "{text}");
        let read: Token = text.parse().expect("parse");
        assert_eq!(read, token);
        assert!(read.matches(&token.secret_hash()));
        assert!(!Token::generate(digest).matches(&token.secret_hash()));
        assert!(!format!("{token:?}").contains(&token.secret));
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let good = Token::generate(CaDigest::of(b"ca")).reveal();
        for (bad, why) in [
            ("", "three parts"),
            ("K10abc::secret", "three parts"),
            (&good.replacen("DRV1", "DRV9", 1), "prefix"),
            (&good.replacen('.', "", 1), "'.'"),
            (&format!("{good}x"), "length"),
        ] {
            let error = bad.parse::<Token>().expect_err(bad).to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn roles_nest_and_agent_tokens_do_nothing_else() {
        assert!(Role::Admin.allows(Role::Operator));
        assert!(Role::Operator.allows(Role::Read));
        assert!(!Role::Read.allows(Role::Operator));
        assert!(!Role::Operator.allows(Role::Admin));
        assert!(!Role::Agent.allows(Role::Read));
        assert!(!Role::Admin.allows(Role::Agent));
        assert!(Role::Agent.allows(Role::Agent));
        assert_eq!("read-only".parse::<Role>(), Ok(Role::Read));
    }
}
