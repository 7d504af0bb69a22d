//! Who may read the agent's HTTP side: the cluster's admin, operator and read tokens, as the
//! coordinator sends them over the link (every token's digest and role, [`pb::ReadTokens`];
//! a join token is refused for its role), checked here as
//! the coordinator checks them, so that Prometheus scrapes every node with the token it
//! scrapes the coordinator with. The last set is kept in `<data_dir>/read_tokens.pb`
//! (atomic, durable, readable by the agent only), so that a restarted agent checks tokens
//! while the coordinator is unreachable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use drover_proto::pb;
use drover_security::{Role, StoredMismatch, Token};
use prost::Message as _;
use tracing::warn;

/// The file in the data dir.
pub const FILE: &str = "read_tokens.pb";

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No token, or one that is malformed, unknown, revoked or expired (HTTP 401).
    #[error("{0}")]
    Unauthenticated(String),
    /// A token whose role may not read (an agent join token; HTTP 403).
    #[error("{0}")]
    Forbidden(String),
}

/// The tokens the coordinator last sent, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadTokens {
    by_id: BTreeMap<String, pb::ReadToken>,
}

impl From<pb::ReadTokens> for ReadTokens {
    fn from(tokens: pb::ReadTokens) -> ReadTokens {
        ReadTokens {
            by_id: tokens
                .tokens
                .into_iter()
                .map(|t| (t.id.clone(), t))
                .collect(),
        }
    }
}

impl ReadTokens {
    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// None at all (the agent has not heard from a coordinator yet).
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Checks `bearer` (the `Authorization: Bearer` value) for `what` at `now_unix_ms`.
    pub fn check(&self, bearer: Option<&str>, what: &str, now_unix_ms: u64) -> Result<(), Refused> {
        let Some(bearer) = bearer else {
            return Err(Refused::Unauthenticated(format!(
                "{what} needs a token: send `Authorization: Bearer TOKEN` (a read token will do)"
            )));
        };
        let token: Token = bearer
            .trim()
            .parse()
            .map_err(|e: drover_security::SecurityError| Refused::Unauthenticated(e.to_string()))?;
        let unknown = || {
            let mut why = format!("token {} is unknown or revoked", token.id);
            if self.is_empty() {
                why.push_str(
                    " (this agent has not had the cluster's tokens from a coordinator yet)",
                );
            }
            Refused::Unauthenticated(why)
        };
        let record = self.by_id.get(&token.id).ok_or_else(unknown)?;
        match token.check_stored(&record.secret_sha256, record.expires_unix_ms, now_unix_ms) {
            Ok(()) => {}
            Err(StoredMismatch::Unknown) => return Err(unknown()),
            Err(StoredMismatch::Expired) => {
                return Err(Refused::Unauthenticated(format!(
                    "token {:?} ({}) has expired",
                    record.name, record.id
                )));
            }
        }
        let role: Role = record
            .role
            .parse()
            .map_err(|e: String| Refused::Forbidden(format!("token {:?}: {e}", record.name)))?;
        if !role.allows(Role::Read) {
            return Err(Refused::Forbidden(format!(
                "token {:?} is an {} token; {what} needs an admin, operator or read token",
                record.name,
                role.as_str()
            )));
        }
        Ok(())
    }
}

/// Where the tokens are kept in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Keeps `tokens` in `dir`, replacing what was kept.
pub fn save(dir: &Path, tokens: &pb::ReadTokens) -> Result<(), drover_security::SecurityError> {
    drover_security::files::write_atomic(&path(dir), &tokens.encode_to_vec(), true)
}

/// The tokens kept in `dir`: none when there is no file, or when it is unusable (logged).
pub fn load(dir: &Path) -> ReadTokens {
    let path = path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return ReadTokens::default(),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read the kept read tokens; none until the coordinator sends them");
            return ReadTokens::default();
        }
    };
    match pb::ReadTokens::decode(bytes.as_slice()) {
        Ok(tokens) => tokens.into(),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "the kept read tokens do not decode; none until the coordinator sends them");
            ReadTokens::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(token: &Token, name: &str, role: &str, expires_unix_ms: u64) -> pb::ReadToken {
        pb::ReadToken {
            id: token.id.clone(),
            name: name.into(),
            role: role.into(),
            secret_sha256: data_encoding::HEXLOWER.encode(&token.secret_hash()),
            expires_unix_ms,
        }
    }

    #[test]
    fn read_operator_and_admin_tokens_read_and_nothing_else_does() {
        let digest = drover_security::ClusterCa::generate("test")
            .expect("ca")
            .digest();
        let [read, operator, agent, expired, revoked] =
            std::array::from_fn(|_| Token::generate(digest));
        let tokens = ReadTokens::from(pb::ReadTokens {
            tokens: vec![
                record(&read, "prometheus", "read", 0),
                record(&operator, "ops", "operator", 0),
                record(&agent, "join", "agent", 0),
                record(&expired, "old", "read", 1_000),
            ],
        });
        let check = |t: &Token| tokens.check(Some(&t.reveal()), "reading the metrics", 2_000);
        assert_eq!(check(&read), Ok(()));
        assert_eq!(check(&operator), Ok(()));
        assert!(
            matches!(check(&agent), Err(Refused::Forbidden(why)) if why.contains("agent token"))
        );
        assert!(
            matches!(check(&expired), Err(Refused::Unauthenticated(why)) if why.contains("expired"))
        );
        assert!(
            matches!(check(&revoked), Err(Refused::Unauthenticated(why)) if why.contains("unknown or revoked"))
        );
        // The right id with another secret.
        let forged = format!("{}x", read.reveal().trim_end_matches(|c: char| c != '.'));
        assert!(tokens.check(Some(&forged), "reading", 0).is_err());
        assert!(matches!(
            tokens.check(None, "reading the metrics", 0),
            Err(Refused::Unauthenticated(why)) if why.contains("Authorization: Bearer")
        ));
    }

    #[test]
    fn tokens_kept_on_disk_come_back_and_a_broken_file_gives_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load(dir.path()).is_empty());
        let digest = drover_security::ClusterCa::generate("test")
            .expect("ca")
            .digest();
        let token = Token::generate(digest);
        let sent = pb::ReadTokens {
            tokens: vec![record(&token, "prometheus", "read", 0)],
        };
        save(dir.path(), &sent).expect("save");
        let loaded = load(dir.path());
        assert_eq!(loaded, ReadTokens::from(sent));
        assert_eq!(loaded.check(Some(&token.reveal()), "reading", 0), Ok(()));
        std::fs::write(path(dir.path()), b"\xff\xff\xff").expect("write");
        assert!(load(dir.path()).is_empty());
    }
}
