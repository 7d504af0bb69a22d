//! Secrets sealed at rest: a [`Store`] wrapper that encrypts the secret environment values of
//! every revision it writes and opens them when it loads, so the store file (and its
//! backups) hold no secret in the clear.
//!
//! The key is 32 random bytes in a file of its own under the data dir (`secrets.key`, mode
//! 0600), made at the first start: a copy of the store file alone reveals nothing, and the
//! key is backed up apart from it. Each value is sealed with XChaCha20-Poly1305 under a
//! random 24-byte nonce, with the record and variable it belongs to as associated data, so
//! a sealed value moved into another record does not open. A sealed value reads
//! `sealed:1:<key id>:<base64 of nonce and ciphertext>`; the key id (8 hex digits of the
//! key's SHA-256) tells which key a store needs when the wrong one is in place.

use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use data_encoding::BASE64;
use drover_membership::GossipKey;
use drover_proto::model::Secret;
use drover_security::files::{read_optional, write_atomic};
use tracing::info;

use super::{EventRecord, RevisionRecord, Store, StoreError, StoredState, Write};

const PREFIX: &str = "sealed:1:";
const NONCE_LEN: usize = 24;

/// The key secret values are sealed with. Its `Debug` shows the key id only.
#[derive(Clone)]
pub struct SecretsKey {
    // The same kind of key as a gossip key (32 random bytes, base64, an id from its
    // SHA-256); a different key, used for nothing else.
    key: GossipKey,
    path: PathBuf,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SecretsKey({} at {})",
            self.key.id(),
            self.path.display()
        )
    }
}

impl SecretsKey {
    /// Reads the key at `path`, or makes one there (mode 0600) when the file is absent.
    pub fn load_or_create(path: &Path) -> Result<SecretsKey, StoreError> {
        let failed = |reason: String| StoreError::SecretsKey {
            path: path.display().to_string(),
            reason,
        };
        let key = match read_optional(path).map_err(|e| failed(e.to_string()))? {
            Some(text) => GossipKey::from_base64(&text).map_err(|_| {
                failed("not a key: it must hold 32 bytes in base64 (44 characters)".into())
            })?,
            None => {
                let key = GossipKey::generate().map_err(|e| failed(e.to_string()))?;
                let text = format!("{}\n", key.to_base64());
                write_atomic(path, text.as_bytes(), true).map_err(|e| failed(e.to_string()))?;
                info!(path = %path.display(), key = %key.id(), "made the key that seals secrets at rest");
                key
            }
        };
        Ok(SecretsKey {
            key,
            path: path.to_path_buf(),
        })
    }

    /// A key that lives in memory only (tests).
    pub fn ephemeral() -> SecretsKey {
        SecretsKey {
            key: GossipKey::generate().expect("the system's random generator works"),
            path: PathBuf::from("(in memory)"),
        }
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.key.as_bytes().into())
    }

    /// Seals `value`, bound to `context` (where it is stored).
    fn seal(&self, context: &str, value: &str) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let payload = Payload {
            msg: value.as_bytes(),
            aad: context.as_bytes(),
        };
        let sealed = self
            .cipher()
            .encrypt(XNonce::from_slice(&nonce), payload)
            .expect("XChaCha20-Poly1305 seals any message shorter than 256 GiB");
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!("{PREFIX}{}:{}", self.key.id(), BASE64.encode(&bytes))
    }

    /// Opens what [`SecretsKey::seal`] made for `context`; the error says why not.
    fn open(&self, context: &str, sealed: &str) -> Result<String, String> {
        let rest = sealed
            .strip_prefix(PREFIX)
            .ok_or("the value is not sealed (the store holds a secret in the clear)")?;
        let (key_id, text) = rest
            .split_once(':')
            .ok_or("the sealed value has no key id")?;
        let ours = self.key.id().to_string();
        if key_id != ours {
            return Err(format!(
                "it was sealed with key {key_id}, but {} holds key {ours}: put back the key \
                 file this store was written with",
                self.path.display()
            ));
        }
        let bytes = BASE64
            .decode(text.as_bytes())
            .map_err(|e| format!("the sealed value is not base64: {e}"))?;
        if bytes.len() < NONCE_LEN {
            return Err("the sealed value is too short".into());
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad: context.as_bytes(),
        };
        let plain = self
            .cipher()
            .decrypt(XNonce::from_slice(nonce), payload)
            .map_err(|_| "the sealed value does not open: it was changed or moved".to_string())?;
        String::from_utf8(plain).map_err(|_| "the opened value is not UTF-8".into())
    }
}

/// A store whose revisions' secret values are sealed with a [`SecretsKey`].
#[derive(Debug)]
pub struct SealedStore<S> {
    inner: S,
    key: SecretsKey,
}

impl<S: Store> SealedStore<S> {
    /// Wraps `inner`, sealing with `key`.
    pub fn new(inner: S, key: SecretsKey) -> SealedStore<S> {
        SealedStore { inner, key }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

/// Where a secret is stored: what its sealing is bound to.
fn context(record: &RevisionRecord, name: &str) -> String {
    let (service, revision) = (&record.service, record.revision);
    format!("revisions/{service}/{revision}/secret_env/{name}")
}

impl SecretsKey {
    /// Seals every secret value of `record` in place.
    fn seal_record(&self, record: &mut RevisionRecord) {
        let names: Vec<String> = record.spec.secret_env.keys().cloned().collect();
        for name in names {
            let sealed = self.seal(
                &context(record, &name),
                record.spec.secret_env[&name].expose(),
            );
            record.spec.secret_env.insert(name, Secret::new(sealed));
        }
    }

    /// Opens every secret value of `record` in place; the error names the first that does
    /// not open and says why.
    fn open_record(&self, record: &mut RevisionRecord) -> Result<(), StoreError> {
        let names: Vec<String> = record.spec.secret_env.keys().cloned().collect();
        for name in names {
            let sealed = record.spec.secret_env[&name].expose();
            let value = self
                .open(&context(record, &name), sealed)
                .map_err(|reason| StoreError::Record {
                    table: "revisions",
                    key: format!("{}/{}", record.service, record.revision),
                    reason: format!("secret env {name} cannot be opened: {reason}"),
                })?;
            record.spec.secret_env.insert(name, Secret::new(value));
        }
        Ok(())
    }
}

impl<S: Store> Store for SealedStore<S> {
    fn load(&self) -> Result<StoredState, StoreError> {
        let mut state = self.inner.load()?;
        for record in state.revisions.values_mut() {
            self.key.open_record(record)?;
        }
        Ok(state)
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        let has_secrets = writes
            .iter()
            .any(|w| matches!(w, Write::PutRevision(r) if !r.spec.secret_env.is_empty()));
        if !has_secrets {
            return self.inner.commit(writes);
        }
        let sealed: Vec<Write> = writes
            .iter()
            .map(|write| match write {
                Write::PutRevision(record) => {
                    let mut record = record.clone();
                    self.key.seal_record(&mut record);
                    Write::PutRevision(record)
                }
                other => other.clone(),
            })
            .collect();
        self.inner.commit(&sealed)
    }

    fn events(&self, since: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        self.inner.events(since, limit)
    }
}
