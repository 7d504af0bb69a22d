//! Sealed gossip: every gossip datagram encrypted and authenticated with a shared key
//! (XChaCha20-Poly1305), with replay protection, so that only holders of a cluster key can
//! join, read or change gossip (notes/chitchat.md §4; the keyring model of Serf and Nomad).
//!
//! # Keys and the keyring
//!
//! A [`GossipKey`] is 32 random bytes, written in base64 (44 characters, like
//! `nomad operator gossip keyring generate`). Its [`KeyId`] is the first 4 bytes of the
//! SHA-256 of the key, shown as 8 hex digits: safe to log and list, useless to an attacker.
//!
//! A [`Keyring`] is an ordered, non-empty list of keys: the first, the **primary**, seals
//! every outgoing datagram; any key of the ring opens an incoming one (chosen by the key id
//! in the frame). A running member reads its keyring from a [`KeyringHandle`] on every
//! datagram, so keys change without a restart. Rotation without downtime, in three steps,
//! each done on every member before the next starts:
//!
//! 1. **install** the new key ([`KeyringHandle::install`]): everyone can open it;
//! 2. **use** it ([`KeyringHandle::use_key`]): everyone seals with it, and can still open
//!    the old one from members not switched yet;
//! 3. **remove** the old key ([`KeyringHandle::remove`]): datagrams sealed with it are
//!    refused from then on.
//!
//! # Frame format (version 1)
//!
//! ```text
//! offset  size  field
//! 0       1     version = 1
//! 1       4     key id of the sealing key (first 4 bytes of SHA-256 of the key)
//! 5       24    nonce, random per datagram (XChaCha20's 192-bit nonce: safe at random)
//! 29      n+26  ciphertext of:
//!                 0   8  sender instance id, u64 little endian (random per socket open)
//!                 8   8  sequence, u64 LE (per socket, +1 for every datagram, from 0)
//!                 16  8  unix time of sealing in milliseconds, u64 LE
//!                 24  1  fragment index (0-based)
//!                 25  1  fragment count (1 when the message is not fragmented)
//!                 26  n  payload: chitchat's datagram, or one fragment of it
//! 55+n    16    Poly1305 tag
//! ```
//!
//! The associated data is the first 5 bytes (version and key id), so neither can be changed
//! without the tag failing. The overhead is [`OVERHEAD`] = 71 bytes per datagram.
//!
//! # Replay protection
//!
//! An opened frame is refused when its timestamp is more than [`MAX_CLOCK_SKEW`] (±60 s)
//! away from the receiver's clock (members need roughly synchronised clocks: NTP), and when
//! its (instance, sequence) was already received: per sender instance the receiver keeps
//! the highest sequence seen and a bitmap of the [`REPLAY_WINDOW`] (1024) sequences below
//! it, so reordered but new datagrams pass while duplicates and anything older than the
//! window are dropped. An instance not heard from for [`FORGET_AFTER`] (150 s) is
//! forgotten: every frame it sent is by then outside the timestamp window, which is at most
//! 2 × 60 s wide as seen from the receiver. At most [`MAX_SENDERS`] (4096) instances are
//! tracked; past that the one heard from least recently is forgotten first. What remains
//! possible: a frame replayed within 60 s to a member that restarted since (it lost its
//! windows), or to one that tracked more than 4096 senders (only key holders create
//! senders). Chitchat shrugs both off: its state merges are idempotent and versioned.
//!
//! # Datagram size: fragments
//!
//! Chitchat fills datagrams up to 65,507 bytes (the IPv4 UDP maximum), so a sealed one can
//! be 71 bytes too large. A message whose sealed frame would not fit is split into
//! fragments of (nearly) equal size, each a full sealed frame with its own sequence; the
//! fragments of one message carry consecutive sequences, so `sequence − index` names the
//! message. With chitchat's limit that is always exactly 2 fragments ([`MAX_FRAGMENTS`]).
//! The receiver keeps incomplete messages for at most [`REASSEMBLY_TIMEOUT`] (2 s), and at
//! most [`MAX_PARTIAL`] (16) of them (about 1 MiB); what is dropped is counted
//! ([`Opener::take_dropped_messages`]). Chitchat sends a fresh state the next round, so a
//! lost fragment costs one gossip exchange. Alternatives rejected: keeping states far below
//! 64 KiB cannot be enforced (chitchat decides what a delta holds), and returning an error
//! for big datagrams silently stalls catch-up (notes/chitchat.md §4).
//!
//! Pure apart from randomness: time is passed in, so tests can move it.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::AeadInPlace as _;
use chacha20poly1305::{KeyInit as _, Tag, XChaCha20Poly1305, XNonce};
use data_encoding::BASE64;
use rand::TryRng as _;
use sha2::{Digest as _, Sha256};

/// Size of a gossip key.
pub const KEY_LEN: usize = 32;
/// Size of a key id.
pub const KEY_ID_LEN: usize = 4;
/// The frame version this code writes and reads.
pub const VERSION: u8 = 1;
/// Size of the nonce (XChaCha20-Poly1305).
pub const NONCE_LEN: usize = 24;
/// Size of the authentication tag.
pub const TAG_LEN: usize = 16;
/// Version and key id: the associated data, authenticated but not encrypted.
pub const AAD_LEN: usize = 1 + KEY_ID_LEN;
/// Version, key id, nonce: the part in clear.
pub const HEADER_LEN: usize = AAD_LEN + NONCE_LEN;
/// Instance, sequence, timestamp, fragment index and count: sealed in front of the payload.
pub const INNER_LEN: usize = 8 + 8 + 8 + 1 + 1;
/// Bytes a sealed frame adds to its payload.
pub const OVERHEAD: usize = HEADER_LEN + INNER_LEN + TAG_LEN;
/// Largest datagram sent or accepted: chitchat's `MAX_UDP_DATAGRAM_PAYLOAD_SIZE`, the IPv4
/// UDP maximum.
pub const MAX_DATAGRAM: usize = 65_507;
/// Largest message (chitchat datagram) that can be sealed: what chitchat itself sends.
pub const MAX_MESSAGE: usize = MAX_DATAGRAM;
/// Most payload bytes one sealed frame carries.
pub const MAX_FRAGMENT_PAYLOAD: usize = MAX_DATAGRAM - OVERHEAD;
/// Most fragments of one message: enough for [`MAX_MESSAGE`] bytes (2).
pub const MAX_FRAGMENTS: usize = MAX_MESSAGE.div_ceil(MAX_FRAGMENT_PAYLOAD);
/// How far a frame's timestamp may be from the receiver's clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Sequences below the highest one seen, per sender, that are still told apart.
pub const REPLAY_WINDOW: u64 = 1024;
/// A sender instance not heard from for this long is forgotten. Longer than
/// 2 × [`MAX_CLOCK_SKEW`]: by then its frames are all stale.
pub const FORGET_AFTER: Duration = Duration::from_secs(150);
/// Most sender instances tracked at once.
pub const MAX_SENDERS: usize = 4096;
/// How long the fragments of an incomplete message are kept.
pub const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Most incomplete messages kept at once.
pub const MAX_PARTIAL: usize = 16;

/// Forgotten senders are looked for this often (a scan of at most [`MAX_SENDERS`]).
const SWEEP_EVERY: Duration = Duration::from_secs(10);
const WINDOW_WORDS: usize = (REPLAY_WINDOW / 64) as usize;
const _: () = assert!(MAX_FRAGMENTS <= u8::MAX as usize);
const _: () = assert!(REPLAY_WINDOW % 64 == 0);

/// Milliseconds since the Unix epoch on this machine's clock (0 before the epoch).
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A key that cannot be read or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not base64. The text itself is never shown: it may be a secret.
    #[error("a gossip key must be base64 (44 characters for 32 bytes): {0}")]
    Base64(String),
    /// The text decodes to the wrong number of bytes.
    #[error("a gossip key must be {KEY_LEN} bytes, this one decodes to {0} bytes")]
    Length(usize),
    /// The operating system's random generator failed.
    #[error("cannot generate a gossip key: {0}")]
    Random(String),
    /// A key id that is not 8 hex digits.
    #[error("a gossip key id is 8 hex digits, not {0:?}")]
    KeyId(String),
}

/// A 32-byte gossip key. Its `Debug` shows the key id only, never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct GossipKey([u8; KEY_LEN]);

impl GossipKey {
    /// A new key from the operating system's random generator.
    pub fn generate() -> Result<GossipKey, KeyError> {
        let mut bytes = [0; KEY_LEN];
        rand::rngs::SysRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(GossipKey(bytes))
    }

    /// The key made of these bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> GossipKey {
        GossipKey(bytes)
    }

    /// Reads a key written by [`GossipKey::to_base64`] (standard base64, padded; surrounding
    /// whitespace is ignored).
    pub fn from_base64(text: &str) -> Result<GossipKey, KeyError> {
        let bytes = BASE64
            .decode(text.trim().as_bytes())
            .map_err(|e| KeyError::Base64(e.to_string()))?;
        let bytes: [u8; KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Length(bytes.len()))?;
        Ok(GossipKey(bytes))
    }

    /// The key in standard base64 (44 characters). A secret: write it only where the
    /// operator asked for it.
    pub fn to_base64(&self) -> String {
        BASE64.encode(&self.0)
    }

    /// The key's bytes. A secret.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key's id: the first 4 bytes of its SHA-256.
    pub fn id(&self) -> KeyId {
        let digest = Sha256::digest(self.0);
        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        KeyId(id)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }
}

impl FromStr for GossipKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<GossipKey, KeyError> {
        GossipKey::from_base64(text)
    }
}

impl fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GossipKey({})", self.id())
    }
}

/// Short public name of a key (first 4 bytes of its SHA-256), shown as 8 hex digits and
/// parsed from them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<KeyId, KeyError> {
        let bad = || KeyError::KeyId(text.chars().take(20).collect());
        let text = text.trim();
        if text.len() != 2 * KEY_ID_LEN || !text.is_ascii() {
            return Err(bad());
        }
        let mut id = [0; KEY_ID_LEN];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(KeyId(id))
    }
}

/// A keyring change or a keyring that is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// A keyring needs a key to seal with.
    #[error("a gossip keyring needs at least one key")]
    Empty,
    /// Two different keys with the same id (1 chance in 4 billion): generate another key.
    #[error("another key of the gossip keyring has the id {0}: generate a new key")]
    IdCollision(KeyId),
    /// No key of the keyring has this id.
    #[error("no key {0} in the gossip keyring")]
    Unknown(KeyId),
    /// The primary key cannot be removed.
    #[error("key {0} is the primary gossip key: make another key primary first")]
    RemovePrimary(KeyId),
    /// A line of a keyring text is not a key.
    #[error("line {line} of the gossip keyring: {source}")]
    Key {
        /// 1-based line number.
        line: usize,
        /// Why it is not a key.
        source: KeyError,
    },
}

/// The keys a member seals and opens gossip with: the primary (first) seals, every key
/// opens. Never empty, no two keys with the same id. `Debug` shows key ids only.
#[derive(Clone, PartialEq, Eq)]
pub struct Keyring {
    keys: Vec<GossipKey>,
}

impl Keyring {
    /// A keyring of one key.
    pub fn new(primary: GossipKey) -> Keyring {
        Keyring {
            keys: vec![primary],
        }
    }

    /// A keyring of these keys, the first one primary. The same key given twice counts once.
    pub fn from_keys(keys: impl IntoIterator<Item = GossipKey>) -> Result<Keyring, KeyringError> {
        let mut keys = keys.into_iter();
        let mut keyring = Keyring::new(keys.next().ok_or(KeyringError::Empty)?);
        for key in keys {
            keyring.install(key)?;
        }
        Ok(keyring)
    }

    /// Reads a keyring from text: one base64 key per line, the first one primary; blank
    /// lines and lines starting with `#` are skipped.
    pub fn parse(text: &str) -> Result<Keyring, KeyringError> {
        let keys = text
            .lines()
            .enumerate()
            .map(|(i, line)| (i + 1, line.trim()))
            .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
            .map(|(line, text)| {
                GossipKey::from_base64(text).map_err(|source| KeyringError::Key { line, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Keyring::from_keys(keys)
    }

    /// A keyring from base64 keys, the first one primary (as stored and sent over links).
    pub fn from_base64(keys: &[String]) -> Result<Keyring, KeyringError> {
        Keyring::parse(&keys.join("\n"))
    }

    /// The keys as base64, the primary first: what [`Keyring::from_base64`] reads.
    pub fn to_base64(&self) -> Vec<String> {
        self.keys.iter().map(GossipKey::to_base64).collect()
    }

    /// The key that seals.
    pub fn primary(&self) -> &GossipKey {
        // Never empty (every constructor and change keeps a key).
        &self.keys[0]
    }

    /// All keys, the primary first.
    pub fn keys(&self) -> &[GossipKey] {
        &self.keys
    }

    /// Ids of all keys, the primary first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(GossipKey::id).collect()
    }

    /// The key with this id.
    pub fn get(&self, id: KeyId) -> Option<&GossipKey> {
        self.keys.iter().find(|key| key.id() == id)
    }

    /// Adds a key that opens but does not seal (yet). Installing a key already there does
    /// nothing.
    pub fn install(&mut self, key: GossipKey) -> Result<(), KeyringError> {
        match self.get(key.id()) {
            Some(known) if *known == key => Ok(()),
            Some(_) => Err(KeyringError::IdCollision(key.id())),
            None => {
                self.keys.push(key);
                Ok(())
            }
        }
    }

    /// Makes the installed key `id` the primary one, the one that seals.
    pub fn use_key(&mut self, id: KeyId) -> Result<(), KeyringError> {
        let at = self
            .keys
            .iter()
            .position(|key| key.id() == id)
            .ok_or(KeyringError::Unknown(id))?;
        let key = self.keys.remove(at);
        self.keys.insert(0, key);
        Ok(())
    }

    /// Removes the key `id`, which must not be the primary one: datagrams sealed with it are
    /// refused from then on.
    pub fn remove(&mut self, id: KeyId) -> Result<(), KeyringError> {
        if self.primary().id() == id {
            return Err(KeyringError::RemovePrimary(id));
        }
        let before = self.keys.len();
        self.keys.retain(|key| key.id() != id);
        if self.keys.len() == before {
            return Err(KeyringError::Unknown(id));
        }
        Ok(())
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary().id())
            .field("keys", &self.ids())
            .finish()
    }
}

/// A shared, changeable keyring: what a running member seals and opens with, read on every
/// datagram. Clones share the same keyring; changes apply from the next datagram on. Two
/// handles are equal when they share the keyring.
#[derive(Clone)]
pub struct KeyringHandle {
    current: Arc<RwLock<Arc<Keyring>>>,
}

impl KeyringHandle {
    /// A handle on `keyring`.
    pub fn new(keyring: Keyring) -> KeyringHandle {
        KeyringHandle {
            current: Arc::new(RwLock::new(Arc::new(keyring))),
        }
    }

    /// The keyring now.
    pub fn get(&self) -> Arc<Keyring> {
        // The lock only ever guards a whole `Arc` swap: a panic elsewhere cannot leave a
        // half-changed keyring behind, so a poisoned lock is still good.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the keyring.
    pub fn set(&self, keyring: Keyring) {
        let mut current = self.write();
        replace(&mut current, "set", keyring);
    }

    /// Changes the keyring in one step: `change` edits a copy, which replaces the keyring if
    /// it returns `Ok` (nothing changes otherwise).
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut Keyring) -> Result<T, KeyringError>,
    ) -> Result<T, KeyringError> {
        self.change("update", change)
    }

    /// Installs a key on this member (rotation step 1, see the [module doc](self)).
    pub fn install(&self, key: GossipKey) -> Result<(), KeyringError> {
        self.change("install", |ring| ring.install(key))
    }

    /// Makes key `id` primary on this member (rotation step 2).
    pub fn use_key(&self, id: KeyId) -> Result<(), KeyringError> {
        self.change("use", |ring| ring.use_key(id))
    }

    /// Removes key `id` from this member (rotation step 3).
    pub fn remove(&self, id: KeyId) -> Result<(), KeyringError> {
        self.change("remove", |ring| ring.remove(id))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Arc<Keyring>> {
        // As in `get`: a poisoned lock still holds a whole keyring.
        self.current.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn change<T>(
        &self,
        what: &'static str,
        change: impl FnOnce(&mut Keyring) -> Result<T, KeyringError>,
    ) -> Result<T, KeyringError> {
        let mut current = self.write();
        let mut ring = Keyring::clone(&current);
        let outcome = change(&mut ring)?;
        replace(&mut current, what, ring);
        Ok(outcome)
    }
}

/// Puts `ring` in place of `current` if it differs, logging the ids.
fn replace(current: &mut Arc<Keyring>, what: &'static str, ring: Keyring) {
    if ring != **current {
        tracing::info!(
            change = what,
            primary = %ring.primary().id(),
            keys = ?ring.ids(),
            "gossip keyring changed"
        );
        *current = Arc::new(ring);
    }
}

impl PartialEq for KeyringHandle {
    fn eq(&self, other: &KeyringHandle) -> bool {
        Arc::ptr_eq(&self.current, &other.current)
    }
}

impl fmt::Debug for KeyringHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyringHandle").field(&*self.get()).finish()
    }
}

/// A message that cannot be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Larger than any datagram chitchat sends.
    #[error("a gossip message of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    /// The cipher refused (it cannot for these sizes).
    #[error("cannot seal a gossip message")]
    Cipher,
}

/// Seals the outgoing messages of one socket: its random instance id and its sequence.
#[derive(Debug)]
pub struct Sealer {
    instance: u64,
    next_sequence: u64,
}

impl Default for Sealer {
    fn default() -> Sealer {
        Sealer::new()
    }
}

impl Sealer {
    /// A sealer with a new random instance id, sequences from 0.
    pub fn new() -> Sealer {
        Sealer {
            instance: rand::random(),
            next_sequence: 0,
        }
    }

    /// The instance id its frames carry.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// Seals `message` with the keyring's primary key, stamped `unix_ms`: one frame, or
    /// [`MAX_FRAGMENTS`] when one would exceed [`MAX_DATAGRAM`]; each is a datagram of its
    /// own, in any order.
    pub fn seal(
        &mut self,
        keyring: &Keyring,
        message: &[u8],
        unix_ms: u64,
    ) -> Result<Vec<Vec<u8>>, SealError> {
        if message.len() > MAX_MESSAGE {
            return Err(SealError::TooLarge(message.len()));
        }
        let count = message.len().div_ceil(MAX_FRAGMENT_PAYLOAD).max(1);
        let size = message.len().div_ceil(count).max(1);
        let key = keyring.primary();
        let cipher = key.cipher();
        let key_id = key.id();
        let mut frames = Vec::with_capacity(count);
        let mut parts: Vec<&[u8]> = message.chunks(size).collect();
        if parts.is_empty() {
            parts.push(&[]);
        }
        let count = u8::try_from(parts.len()).map_err(|_| SealError::TooLarge(message.len()))?;
        for (index, part) in (0..count).zip(parts) {
            let sequence = self.next_sequence;
            self.next_sequence += 1;
            let mut frame = Vec::with_capacity(OVERHEAD + part.len());
            frame.push(VERSION);
            frame.extend_from_slice(&key_id.0);
            let mut nonce = [0u8; NONCE_LEN];
            rand::fill(&mut nonce[..]);
            frame.extend_from_slice(&nonce);
            frame.extend_from_slice(&self.instance.to_le_bytes());
            frame.extend_from_slice(&sequence.to_le_bytes());
            frame.extend_from_slice(&unix_ms.to_le_bytes());
            frame.extend_from_slice(&[index, count]);
            frame.extend_from_slice(part);
            let (header, sealed) = frame.split_at_mut(HEADER_LEN);
            let tag = cipher
                .encrypt_in_place_detached(XNonce::from_slice(&nonce), &header[..AAD_LEN], sealed)
                .map_err(|_| SealError::Cipher)?;
            frame.extend_from_slice(&tag);
            frames.push(frame);
        }
        Ok(frames)
    }
}

/// Why a received frame is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not a sealed frame: too short, unknown version (a plaintext chitchat datagram lands
    /// here).
    #[error("not a sealed gossip frame ({len} bytes): {why}")]
    Malformed {
        /// Size of the datagram.
        len: usize,
        /// What is wrong.
        why: String,
    },
    /// Sealed with a key this member does not hold (never had, or removed).
    #[error("sealed with gossip key {key_id}, which is not in this member's keyring")]
    UnknownKey {
        /// The key id the frame names.
        key_id: KeyId,
    },
    /// The tag does not match: tampered with, or forged by someone without the key.
    #[error("does not authenticate with gossip key {key_id}: tampered with or forged")]
    Forged {
        /// The key id the frame names.
        key_id: KeyId,
    },
    /// Authentic, but its timestamp is too far from this member's clock (a replay, or a
    /// clock off by more than a minute: check NTP).
    #[error(
        "its timestamp is {skew_ms} ms off this member's clock, more than the {} s allowed \
         (replayed, or clocks not synchronised)",
        MAX_CLOCK_SKEW.as_secs()
    )]
    Stale {
        /// Sender's timestamp minus the receiver's clock.
        skew_ms: i64,
    },
    /// Authentic, but already received.
    #[error("sender {instance:016x} sequence {sequence} was already received (replayed)")]
    Replayed {
        /// Sender instance.
        instance: u64,
        /// Its sequence.
        sequence: u64,
    },
    /// Authentic, but older than the replay window: cannot be told from a replay.
    #[error(
        "sender {instance:016x} sequence {sequence} is more than {REPLAY_WINDOW} behind its \
         latest {highest}"
    )]
    TooOld {
        /// Sender instance.
        instance: u64,
        /// Its sequence.
        sequence: u64,
        /// The highest sequence received from it.
        highest: u64,
    },
    /// Authentic, but the fragment fields make no sense (a buggy sender).
    #[error("bad gossip fragment: {0}")]
    Fragment(String),
}

impl OpenError {
    /// A short, fixed name of the reason, for counters and log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            OpenError::Malformed { .. } => "malformed",
            OpenError::UnknownKey { .. } => "unknown_key",
            OpenError::Forged { .. } => "forged",
            OpenError::Stale { .. } => "stale",
            OpenError::Replayed { .. } => "replayed",
            OpenError::TooOld { .. } => "too_old",
            OpenError::Fragment(_) => "fragment",
        }
    }
}

/// What an accepted frame gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// A whole message (a chitchat datagram).
    Message {
        /// The message.
        payload: Vec<u8>,
        /// The sender's instance id.
        instance: u64,
        /// Wire bytes of all its frames.
        wire_bytes: usize,
    },
    /// A fragment, kept until the rest of its message arrives.
    Fragment,
}

/// Opens the frames one socket receives: the replay windows of its senders and the
/// fragments of incomplete messages.
#[derive(Debug, Default)]
pub struct Opener {
    senders: Senders,
    partial: Reassembly,
    scratch: Vec<u8>,
}

impl Opener {
    /// An opener that has seen nothing yet.
    pub fn new() -> Opener {
        Opener::default()
    }

    /// Opens `frame` with the keyring, checks its timestamp against `unix_ms` and its
    /// sequence against what was received; `now` drives forgetting and reassembly timeouts.
    pub fn open(
        &mut self,
        keyring: &Keyring,
        frame: &[u8],
        unix_ms: u64,
        now: Instant,
    ) -> Result<Opened, OpenError> {
        let malformed = |why: String| OpenError::Malformed {
            len: frame.len(),
            why,
        };
        if frame.len() < OVERHEAD {
            return Err(malformed(format!("shorter than {OVERHEAD} bytes")));
        }
        if frame.len() > MAX_DATAGRAM {
            return Err(malformed(format!("longer than {MAX_DATAGRAM} bytes")));
        }
        let (header, rest) = frame.split_at(HEADER_LEN);
        let (sealed, tag) = rest.split_at(rest.len() - TAG_LEN);
        if header[0] != VERSION {
            return Err(malformed(format!(
                "unknown version {} (a plaintext gossip datagram?)",
                header[0]
            )));
        }
        let mut key_id = KeyId([0; KEY_ID_LEN]);
        key_id.0.copy_from_slice(&header[1..1 + KEY_ID_LEN]);
        let key = keyring
            .get(key_id)
            .ok_or(OpenError::UnknownKey { key_id })?;
        self.scratch.clear();
        self.scratch.extend_from_slice(sealed);
        key.cipher()
            .decrypt_in_place_detached(
                XNonce::from_slice(&header[AAD_LEN..]),
                &header[..AAD_LEN],
                &mut self.scratch,
                Tag::from_slice(tag),
            )
            .map_err(|_| OpenError::Forged { key_id })?;

        let (inner, payload) = self.scratch.split_at(INNER_LEN);
        let word = |at: usize| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&inner[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        let (instance, sequence, sent_ms) = (word(0), word(8), word(16));
        let (index, count) = (usize::from(inner[24]), usize::from(inner[25]));

        let skew_ms = i128::from(sent_ms) - i128::from(unix_ms);
        if skew_ms.unsigned_abs() > MAX_CLOCK_SKEW.as_millis() {
            return Err(OpenError::Stale {
                skew_ms: i64::try_from(skew_ms).unwrap_or(if skew_ms < 0 {
                    i64::MIN
                } else {
                    i64::MAX
                }),
            });
        }
        if count == 0 || count > MAX_FRAGMENTS || index >= count {
            return Err(OpenError::Fragment(format!(
                "fragment {index} of {count} (at most {MAX_FRAGMENTS})"
            )));
        }
        let first = sequence.checked_sub(index as u64).ok_or_else(|| {
            OpenError::Fragment(format!("fragment {index} at sequence {sequence}"))
        })?;
        self.senders.accept(instance, sequence, now)?;
        if count == 1 {
            return Ok(Opened::Message {
                payload: payload.to_vec(),
                instance,
                wire_bytes: frame.len(),
            });
        }
        let piece = Piece {
            index,
            count,
            payload,
            wire_bytes: frame.len(),
        };
        Ok(match self.partial.add((instance, first), piece, now)? {
            Some((payload, wire_bytes)) => Opened::Message {
                payload,
                instance,
                wire_bytes,
            },
            None => Opened::Fragment,
        })
    }

    /// Incomplete messages dropped (timed out, or pushed out by newer ones) since the last
    /// call.
    pub fn take_dropped_messages(&mut self) -> u64 {
        std::mem::take(&mut self.partial.dropped)
    }

    /// Sender instances tracked now.
    pub fn tracked_senders(&self) -> usize {
        self.senders.windows.len()
    }
}

/// The replay windows of all senders.
#[derive(Debug, Default)]
struct Senders {
    windows: HashMap<u64, Window>,
    last_sweep: Option<Instant>,
}

impl Senders {
    fn accept(&mut self, instance: u64, sequence: u64, now: Instant) -> Result<(), OpenError> {
        if self
            .last_sweep
            .is_none_or(|last| now.saturating_duration_since(last) >= SWEEP_EVERY)
        {
            self.last_sweep = Some(now);
            self.windows
                .retain(|_, w| now.saturating_duration_since(w.last_heard) <= FORGET_AFTER);
        }
        if let Some(window) = self.windows.get_mut(&instance) {
            window.accept(instance, sequence)?;
            window.last_heard = now;
            return Ok(());
        }
        if self.windows.len() >= MAX_SENDERS {
            let oldest = self
                .windows
                .iter()
                .min_by_key(|(_, w)| w.last_heard)
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                self.windows.remove(&oldest);
            }
        }
        self.windows.insert(instance, Window::new(sequence, now));
        Ok(())
    }
}

/// One sender's sequences: the highest seen, and which of the [`REPLAY_WINDOW`] below it
/// were seen (a ring of bits indexed by `sequence % REPLAY_WINDOW`).
#[derive(Debug)]
struct Window {
    highest: u64,
    seen: [u64; WINDOW_WORDS],
    last_heard: Instant,
}

impl Window {
    fn new(sequence: u64, now: Instant) -> Window {
        let mut window = Window {
            highest: sequence,
            seen: [0; WINDOW_WORDS],
            last_heard: now,
        };
        window.mark(sequence, true);
        window
    }

    fn slot(sequence: u64) -> (usize, u64) {
        let bit = (sequence % REPLAY_WINDOW) as usize;
        (bit / 64, 1 << (bit % 64))
    }

    fn mark(&mut self, sequence: u64, seen: bool) {
        let (word, mask) = Window::slot(sequence);
        if seen {
            self.seen[word] |= mask;
        } else {
            self.seen[word] &= !mask;
        }
    }

    fn accept(&mut self, instance: u64, sequence: u64) -> Result<(), OpenError> {
        if sequence > self.highest {
            if sequence - self.highest >= REPLAY_WINDOW {
                self.seen = [0; WINDOW_WORDS];
            } else {
                for skipped in self.highest + 1..sequence {
                    self.mark(skipped, false);
                }
            }
            self.highest = sequence;
            self.mark(sequence, true);
            return Ok(());
        }
        if self.highest - sequence >= REPLAY_WINDOW {
            return Err(OpenError::TooOld {
                instance,
                sequence,
                highest: self.highest,
            });
        }
        let (word, mask) = Window::slot(sequence);
        if self.seen[word] & mask != 0 {
            return Err(OpenError::Replayed { instance, sequence });
        }
        self.seen[word] |= mask;
        Ok(())
    }
}

/// One accepted fragment.
struct Piece<'a> {
    index: usize,
    count: usize,
    payload: &'a [u8],
    wire_bytes: usize,
}

/// Incomplete fragmented messages, by (instance, sequence of the first fragment).
#[derive(Debug, Default)]
struct Reassembly {
    partial: HashMap<(u64, u64), Partial>,
    dropped: u64,
}

#[derive(Debug)]
struct Partial {
    parts: Vec<Option<Vec<u8>>>,
    wire_bytes: usize,
    started: Instant,
}

impl Reassembly {
    fn add(
        &mut self,
        message: (u64, u64),
        piece: Piece<'_>,
        now: Instant,
    ) -> Result<Option<(Vec<u8>, usize)>, OpenError> {
        let before = self.partial.len();
        self.partial
            .retain(|_, p| now.saturating_duration_since(p.started) < REASSEMBLY_TIMEOUT);
        self.dropped += (before - self.partial.len()) as u64;
        if !self.partial.contains_key(&message) && self.partial.len() >= MAX_PARTIAL {
            let oldest = self
                .partial
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(key, _)| *key);
            if let Some(oldest) = oldest {
                self.partial.remove(&oldest);
                self.dropped += 1;
            }
        }
        let partial = self.partial.entry(message).or_insert_with(|| Partial {
            parts: vec![None; piece.count],
            wire_bytes: 0,
            started: now,
        });
        let fits = partial.parts.len() == piece.count;
        match partial.parts.get_mut(piece.index) {
            Some(slot) if fits => *slot = Some(piece.payload.to_vec()),
            _ => {
                self.partial.remove(&message);
                self.dropped += 1;
                return Err(OpenError::Fragment(format!(
                    "fragment {} says {} fragments, an earlier one another count",
                    piece.index, piece.count
                )));
            }
        }
        partial.wire_bytes += piece.wire_bytes;
        if partial.parts.iter().any(Option::is_none) {
            return Ok(None);
        }
        let Some(done) = self.partial.remove(&message) else {
            return Ok(None);
        };
        let payload: Vec<u8> = done.parts.into_iter().flatten().flatten().collect();
        if payload.len() > MAX_MESSAGE {
            return Err(OpenError::Fragment(format!(
                "a reassembled message of {} bytes is over {MAX_MESSAGE}",
                payload.len()
            )));
        }
        Ok(Some((payload, done.wire_bytes)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn key(byte: u8) -> GossipKey {
        GossipKey::from_bytes([byte; KEY_LEN])
    }

    fn ring(keys: &[u8]) -> Keyring {
        Keyring::from_keys(keys.iter().map(|&b| key(b))).unwrap()
    }

    fn one(frames: Vec<Vec<u8>>) -> Vec<u8> {
        assert_eq!(frames.len(), 1);
        frames.into_iter().next().unwrap()
    }

    fn message(opened: Opened) -> Vec<u8> {
        match opened {
            Opened::Message { payload, .. } => payload,
            Opened::Fragment => panic!("a fragment, not a message"),
        }
    }

    #[test]
    fn keys_round_trip_through_base64_and_never_show_in_debug() {
        let k = GossipKey::generate().unwrap();
        let text = k.to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(text.parse::<GossipKey>().unwrap(), k);
        assert_eq!(GossipKey::from_base64(&format!("  {text}\n")).unwrap(), k);
        assert_ne!(GossipKey::generate().unwrap(), k);
        let debug = format!("{k:?} {:?}", Keyring::new(k.clone()));
        assert!(!debug.contains(&text), "{debug}");
        assert!(debug.contains(&k.id().to_string()), "{debug}");
        assert_eq!(k.id().to_string().len(), 8);
        assert_eq!(k.id().to_string().parse::<KeyId>().unwrap(), k.id());

        assert!(matches!(
            GossipKey::from_base64("not base64!"),
            Err(KeyError::Base64(_))
        ));
        assert_eq!(
            GossipKey::from_base64(&BASE64.encode(&[1; 16])),
            Err(KeyError::Length(16))
        );
        assert!("abc".parse::<KeyId>().is_err());
        assert!("zzzzzzzz".parse::<KeyId>().is_err());
        // The id is the start of the key's SHA-256.
        let digest = Sha256::digest([7u8; 32]);
        assert_eq!(key(7).id().0, digest[..4]);
    }

    #[test]
    fn a_keyring_parses_seals_with_the_first_and_rotates() {
        let text = format!(
            "# gossip keys\n{}\n\n  {}  \n",
            key(1).to_base64(),
            key(2).to_base64()
        );
        let mut keyring = Keyring::parse(&text).unwrap();
        assert_eq!(keyring.ids(), vec![key(1).id(), key(2).id()]);
        assert_eq!(keyring.primary(), &key(1));
        assert_eq!(Keyring::parse("# nothing\n"), Err(KeyringError::Empty));
        assert!(matches!(
            Keyring::parse("\nnope\n"),
            Err(KeyringError::Key { line: 2, .. })
        ));

        keyring.install(key(3)).unwrap();
        keyring.install(key(3)).unwrap();
        assert_eq!(keyring.keys().len(), 3);
        assert_eq!(
            keyring.remove(key(1).id()),
            Err(KeyringError::RemovePrimary(key(1).id()))
        );
        keyring.use_key(key(3).id()).unwrap();
        assert_eq!(keyring.primary(), &key(3));
        keyring.remove(key(1).id()).unwrap();
        assert_eq!(keyring.ids(), vec![key(3).id(), key(2).id()]);
        assert_eq!(
            keyring.remove(key(1).id()),
            Err(KeyringError::Unknown(key(1).id()))
        );
        assert_eq!(
            keyring.use_key(key(9).id()),
            Err(KeyringError::Unknown(key(9).id()))
        );
    }

    #[test]
    fn a_handle_changes_every_clone_and_refused_changes_change_nothing() {
        let handle = KeyringHandle::new(ring(&[1]));
        let other = handle.clone();
        assert_eq!(handle, other);
        assert_ne!(handle, KeyringHandle::new(ring(&[1])));
        other.install(key(2)).unwrap();
        other.use_key(key(2).id()).unwrap();
        assert_eq!(handle.get().primary(), &key(2));
        assert!(handle.remove(key(2).id()).is_err());
        assert!(
            handle
                .update(|ring| {
                    ring.install(key(5))?;
                    ring.use_key(key(9).id())
                })
                .is_err()
        );
        assert_eq!(handle.get().ids(), vec![key(2).id(), key(1).id()]);
        handle.set(ring(&[4]));
        assert_eq!(other.get().ids(), vec![key(4).id()]);
        assert!(!format!("{handle:?}").contains(&key(4).to_base64()));
    }

    #[test]
    fn a_sealed_message_opens_once_with_the_right_key() {
        let keyring = ring(&[1]);
        let mut sealer = Sealer::new();
        let mut opener = Opener::new();
        let t = Instant::now();
        let frame = one(sealer.seal(&keyring, b"hello chitchat", NOW).unwrap());
        assert_eq!(frame.len(), 14 + OVERHEAD);
        assert_eq!(frame[0], VERSION);
        assert_eq!(frame[1..5], key(1).id().0);
        assert!(!frame.windows(5).any(|w| w == b"hello"), "in clear");
        let opened = opener.open(&keyring, &frame, NOW + 5, t).unwrap();
        assert_eq!(
            opened,
            Opened::Message {
                payload: b"hello chitchat".to_vec(),
                instance: sealer.instance(),
                wire_bytes: frame.len(),
            }
        );
        // The same frame again: a replay.
        assert!(matches!(
            opener.open(&keyring, &frame, NOW + 5, t),
            Err(OpenError::Replayed { sequence: 0, .. })
        ));
        // Another keyring does not have the key; the key id alone is not enough.
        let mut fresh = Opener::new();
        assert_eq!(
            fresh.open(&ring(&[2]), &frame, NOW, t),
            Err(OpenError::UnknownKey {
                key_id: key(1).id()
            })
        );
        let mut spoofed = frame.clone();
        spoofed[1..5].copy_from_slice(&key(2).id().0);
        assert_eq!(
            fresh.open(&ring(&[2]), &spoofed, NOW, t),
            Err(OpenError::Forged {
                key_id: key(2).id()
            })
        );
    }

    #[test]
    fn any_tampered_byte_is_refused() {
        let keyring = ring(&[1]);
        let mut sealer = Sealer::new();
        let frame = one(sealer.seal(&keyring, b"a gossip datagram", NOW).unwrap());
        let t = Instant::now();
        for at in 0..frame.len() {
            let mut bad = frame.clone();
            bad[at] ^= 0x01;
            let outcome = Opener::new().open(&keyring, &bad, NOW, t);
            match at {
                0 => assert!(matches!(outcome, Err(OpenError::Malformed { .. }))),
                1..=4 => assert!(matches!(outcome, Err(OpenError::UnknownKey { .. }))),
                _ => assert_eq!(
                    outcome,
                    Err(OpenError::Forged {
                        key_id: key(1).id()
                    })
                ),
            }
        }
        for len in 0..frame.len() {
            assert!(Opener::new().open(&keyring, &frame[..len], NOW, t).is_err());
        }
        // A plaintext chitchat datagram (magic 45139, little endian).
        let mut plain = 45_139u16.to_le_bytes().to_vec();
        plain.resize(200, 0);
        assert!(matches!(
            Opener::new().open(&keyring, &plain, NOW, t),
            Err(OpenError::Malformed { .. })
        ));
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let keyring = ring(&[1]);
        let mut sealer = Sealer::new();
        let mut opener = Opener::new();
        let t = Instant::now();
        let skew = MAX_CLOCK_SKEW.as_millis() as u64;
        let old = one(sealer.seal(&keyring, b"m", NOW - skew - 1).unwrap());
        let future = one(sealer.seal(&keyring, b"m", NOW + skew + 1).unwrap());
        let edge = one(sealer.seal(&keyring, b"m", NOW - skew).unwrap());
        assert_eq!(
            opener.open(&keyring, &old, NOW, t),
            Err(OpenError::Stale {
                skew_ms: -(skew as i64) - 1
            })
        );
        assert_eq!(
            opener.open(&keyring, &future, NOW, t),
            Err(OpenError::Stale {
                skew_ms: skew as i64 + 1
            })
        );
        assert!(opener.open(&keyring, &edge, NOW, t).is_ok());
    }

    #[test]
    fn the_replay_window_takes_reordered_datagrams_and_refuses_duplicates_and_old_ones() {
        let keyring = ring(&[1]);
        let mut sealer = Sealer::new();
        let mut opener = Opener::new();
        let t = Instant::now();
        let frames: Vec<Vec<u8>> = (0..1100)
            .map(|i| {
                one(sealer
                    .seal(&keyring, format!("m{i}").as_bytes(), NOW)
                    .unwrap())
            })
            .collect();
        // Reordered: 5 before 1..4.
        for i in [0, 5, 2, 1, 4, 3] {
            assert!(opener.open(&keyring, &frames[i], NOW, t).is_ok(), "{i}");
        }
        for frame in &frames[..6] {
            assert!(matches!(
                opener.open(&keyring, frame, NOW, t),
                Err(OpenError::Replayed { .. })
            ));
        }
        // Jump ahead; 6 is now more than the window behind.
        assert!(opener.open(&keyring, &frames[1090], NOW, t).is_ok());
        assert!(matches!(
            opener.open(&keyring, &frames[6], NOW, t),
            Err(OpenError::TooOld { highest: 1090, .. })
        ));
        // Just inside the window, never seen: accepted once.
        assert!(opener.open(&keyring, &frames[1090 - 1023], NOW, t).is_ok());
        assert!(opener.open(&keyring, &frames[1090 - 1023], NOW, t).is_err());
        assert!(opener.open(&keyring, &frames[1089], NOW, t).is_ok());
        assert!(opener.open(&keyring, &frames[1099], NOW, t).is_ok());
        assert!(opener.open(&keyring, &frames[1095], NOW, t).is_ok());
        assert!(opener.open(&keyring, &frames[1090], NOW, t).is_err());
        // Another sender has its own window.
        let other = one(Sealer::new().seal(&keyring, b"x", NOW).unwrap());
        assert!(opener.open(&keyring, &other, NOW, t).is_ok());
        assert_eq!(opener.tracked_senders(), 2);
    }

    #[test]
    fn silent_senders_are_forgotten_and_their_number_is_bounded() {
        let keyring = ring(&[1]);
        let mut opener = Opener::new();
        let t = Instant::now();
        let frame = one(Sealer::new().seal(&keyring, b"m", NOW).unwrap());
        opener.open(&keyring, &frame, NOW, t).unwrap();
        let later = t + FORGET_AFTER + SWEEP_EVERY;
        let fresh = one(Sealer::new().seal(&keyring, b"m", NOW).unwrap());
        opener.open(&keyring, &fresh, NOW, later).unwrap();
        assert_eq!(opener.tracked_senders(), 1);
        for i in 0..MAX_SENDERS + 10 {
            let frame = one(Sealer::new().seal(&keyring, b"m", NOW).unwrap());
            let at = later + Duration::from_millis(i as u64);
            opener.open(&keyring, &frame, NOW, at).unwrap();
        }
        assert_eq!(opener.tracked_senders(), MAX_SENDERS);
    }

    #[test]
    fn rotation_opens_with_any_installed_key_and_refuses_a_removed_one() {
        let mut keyring = ring(&[1]);
        let mut sealer = Sealer::new();
        let mut opener = Opener::new();
        let t = Instant::now();
        let with_old = one(sealer.seal(&keyring, b"old", NOW).unwrap());
        keyring.install(key(2)).unwrap();
        let still_old = one(sealer.seal(&keyring, b"still old", NOW).unwrap());
        assert_eq!(still_old[1..5], key(1).id().0);
        keyring.use_key(key(2).id()).unwrap();
        let with_new = one(sealer.seal(&keyring, b"new", NOW).unwrap());
        assert_eq!(with_new[1..5], key(2).id().0);
        // A member holding both opens both.
        assert_eq!(
            message(opener.open(&keyring, &with_old, NOW, t).unwrap()),
            b"old"
        );
        assert_eq!(
            message(opener.open(&keyring, &with_new, NOW, t).unwrap()),
            b"new"
        );
        // A member that only has the old key cannot open the new.
        assert!(matches!(
            Opener::new().open(&ring(&[1]), &with_new, NOW, t),
            Err(OpenError::UnknownKey { .. })
        ));
        keyring.remove(key(1).id()).unwrap();
        assert_eq!(
            opener.open(&keyring, &still_old, NOW, t),
            Err(OpenError::UnknownKey {
                key_id: key(1).id()
            })
        );
    }

    #[test]
    fn a_message_too_big_for_one_datagram_goes_in_two_fragments() {
        let keyring = ring(&[1]);
        let mut sealer = Sealer::new();
        let t = Instant::now();
        let big: Vec<u8> = (0..MAX_MESSAGE).map(|i| (i * 7 % 251) as u8).collect();
        let frames = sealer.seal(&keyring, &big, NOW).unwrap();
        assert_eq!(frames.len(), 2);
        assert!(frames.iter().all(|f| f.len() <= MAX_DATAGRAM));
        // Just fits in one.
        let fits = sealer
            .seal(&keyring, &big[..MAX_FRAGMENT_PAYLOAD], NOW)
            .unwrap();
        assert_eq!(fits.len(), 1);
        assert_eq!(fits[0].len(), MAX_DATAGRAM);
        assert_eq!(
            sealer.seal(&keyring, &vec![0; MAX_MESSAGE + 1], NOW),
            Err(SealError::TooLarge(MAX_MESSAGE + 1))
        );

        // In order, out of order.
        for order in [[0, 1], [1, 0]] {
            let frames = sealer.seal(&keyring, &big, NOW).unwrap();
            let mut opener = Opener::new();
            assert_eq!(
                opener.open(&keyring, &frames[order[0]], NOW, t).unwrap(),
                Opened::Fragment
            );
            let whole = opener.open(&keyring, &frames[order[1]], NOW, t).unwrap();
            assert_eq!(
                whole,
                Opened::Message {
                    payload: big.clone(),
                    instance: sealer.instance(),
                    wire_bytes: frames[0].len() + frames[1].len(),
                }
            );
            // A replayed fragment is refused, it does not start a new message.
            assert!(matches!(
                opener.open(&keyring, &frames[0], NOW, t),
                Err(OpenError::Replayed { .. })
            ));
            assert_eq!(opener.take_dropped_messages(), 0);
        }

        // A lone fragment times out and is counted.
        let mut opener = Opener::new();
        let frames = sealer.seal(&keyring, &big, NOW).unwrap();
        assert_eq!(
            opener.open(&keyring, &frames[0], NOW, t).unwrap(),
            Opened::Fragment
        );
        let late = t + REASSEMBLY_TIMEOUT;
        assert_eq!(
            opener.open(&keyring, &frames[1], NOW, late).unwrap(),
            Opened::Fragment
        );
        assert_eq!(opener.take_dropped_messages(), 1);

        // Many incomplete messages: at most MAX_PARTIAL are kept.
        let mut opener = Opener::new();
        for _ in 0..MAX_PARTIAL + 3 {
            let frames = sealer.seal(&keyring, &big, NOW).unwrap();
            opener.open(&keyring, &frames[1], NOW, t).unwrap();
        }
        assert_eq!(opener.take_dropped_messages(), 3);
        assert!(opener.partial.partial.len() <= MAX_PARTIAL);
    }

    #[test]
    fn an_empty_message_seals_and_opens() {
        let keyring = ring(&[1]);
        let frame = one(Sealer::new().seal(&keyring, b"", NOW).unwrap());
        assert_eq!(frame.len(), OVERHEAD);
        let opened = Opener::new()
            .open(&keyring, &frame, NOW, Instant::now())
            .unwrap();
        assert_eq!(message(opened), b"");
    }
}
