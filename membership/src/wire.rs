//! Checks a gossip datagram before chitchat decodes it: the same wire format chitchat 0.13
//! reads (`message_serialize.rs`, `digest.rs`, `delta.rs`, `serialize.rs` in its source),
//! parsed at least as strictly, plus what chitchat trusts and must not:
//!
//! - a node delta about this member itself (same node id, this generation or a later one):
//!   chitchat applies it to its own state, so one datagram could rewrite our keys or set
//!   `max_version = u64::MAX`, after which our next `set` panics (`version > max_version`);
//! - a node delta whose `max_version` is below one of its own key versions (a
//!   `SetMaxVersion` after the keys): applying it fails chitchat's
//!   `assert!(node_delta.max_version >= self.max_version)` and kills the gossip loop;
//! - compressed blocks that inflate past [`MAX_INFLATED`] bytes (chitchat inflates a whole
//!   datagram before parsing it, up to 64 KiB per 3-byte block header).
//!
//! A correct peer never sends any of these: Scuttlebutt only sends a member's state to a peer
//! whose digest is behind on it, and nobody is ahead of a member on its own state; chitchat's
//! serializer writes `SetMaxVersion` only for a node delta without keys. So a datagram with
//! one is dropped whole: whatever else it carries comes from the same forger.
//!
//! Pure: bytes in, verdict out.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Chitchat's magic number, the first two bytes of every datagram (little endian).
const MAGIC: u16 = 45_139;
/// Chitchat inflates each compressed block into a buffer of this size; a bigger block fails.
const BLOCK_CAPACITY: usize = u16::MAX as usize;
/// Most bytes a datagram may inflate to, all blocks of its digest and delta together. A
/// correct peer stays far below: its datagram is at most 64 KiB compressed, written in
/// blocks of 16 KiB before compression.
pub const MAX_INFLATED: usize = 4 << 20;

/// The member datagrams are checked for: deltas about this node id, at this generation or a
/// later one, are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfId {
    /// Node id of this member.
    pub node_id: String,
    /// Generation of this incarnation.
    pub generation: u64,
}

/// Why a datagram does not reach chitchat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a chitchat datagram, or a damaged one: chitchat would refuse it too (and log it).
    #[error("malformed gossip datagram ({len} bytes): {why}")]
    Malformed {
        /// Size of the datagram.
        len: usize,
        /// What does not parse.
        why: String,
    },
    /// A delta about this member, which only this member may write.
    #[error(
        "gossip datagram carries a delta about this member itself (node {node_id}, generation \
         {generation}, max_version {max_version})"
    )]
    AboutSelf {
        /// Node id the delta names.
        node_id: String,
        /// Generation the delta names.
        generation: u64,
        /// The `max_version` it would set.
        max_version: u64,
    },
    /// A node delta chitchat would apply and then panic on.
    #[error(
        "gossip datagram carries a delta about node {node_id} (generation {generation}) whose \
         max_version {max_version} is below its key version {key_version}"
    )]
    MaxVersionBelowKeys {
        /// Node id the delta names.
        node_id: String,
        /// Generation the delta names.
        generation: u64,
        /// The `max_version` it sets.
        max_version: u64,
        /// Its highest key version.
        key_version: u64,
    },
    /// Compressed blocks that inflate too much.
    #[error("gossip datagram ({len} bytes) inflates to more than {MAX_INFLATED} bytes")]
    Inflates {
        /// Size of the datagram.
        len: usize,
    },
}

impl Refusal {
    /// A short, fixed name of the reason, for counters and log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Malformed { .. } => "malformed",
            Refusal::AboutSelf { .. } => "about_self",
            Refusal::MaxVersionBelowKeys { .. } => "max_version_below_keys",
            Refusal::Inflates { .. } => "inflates",
        }
    }
}

/// What went wrong inside the parser, before the datagram size is attached.
enum Fault {
    Malformed(String),
    Refused(Refusal),
}

impl From<&str> for Fault {
    fn from(why: &str) -> Fault {
        Fault::Malformed(why.to_string())
    }
}

type Parsed<T> = Result<T, Fault>;

/// Checks one datagram: `Ok` if chitchat may decode and apply it.
pub fn inspect(datagram: &[u8], me: &SelfId) -> Result<(), Refusal> {
    let len = datagram.len();
    let mut budget = MAX_INFLATED;
    check_envelope(datagram, me, &mut budget).map_err(|fault| match fault {
        Fault::Malformed(why) => Refusal::Malformed { len, why },
        Fault::Refused(Refusal::Inflates { .. }) => Refusal::Inflates { len },
        Fault::Refused(refusal) => refusal,
    })
}

fn check_envelope(datagram: &[u8], me: &SelfId, budget: &mut usize) -> Parsed<()> {
    let mut buf = datagram;
    let magic = u16::from_le_bytes(take::<2>(&mut buf, "shorter than the header")?);
    if magic != MAGIC {
        return Err("not a chitchat datagram (bad magic number)".into());
    }
    let [version] = take::<1>(&mut buf, "shorter than the header")?;
    if version > 1 {
        return Err(Fault::Malformed(format!(
            "unknown protocol version {version}"
        )));
    }
    let compressed_digest = version == 1;
    let [kind] = take::<1>(&mut buf, "no message type")?;
    match kind {
        // Syn: digest, cluster id.
        0 => {
            check_digest(&mut buf, compressed_digest, budget)?;
            string(&mut buf)?;
        }
        // SynAck: digest, delta.
        1 => {
            check_digest(&mut buf, compressed_digest, budget)?;
            check_delta(&mut buf, me, budget)?;
        }
        // Ack: delta.
        2 => check_delta(&mut buf, me, budget)?,
        // BadCluster: nothing.
        3 => {}
        other => return Err(Fault::Malformed(format!("unknown message type {other}"))),
    }
    // Like chitchat, trailing bytes are ignored.
    Ok(())
}

fn check_digest(buf: &mut &[u8], compressed: bool, budget: &mut usize) -> Parsed<()> {
    if compressed {
        let items = inflate_stream(buf, budget)?;
        let mut cursor = items.as_slice();
        while !cursor.is_empty() {
            chitchat_id(&mut cursor)?;
            node_digest(&mut cursor)?;
        }
    } else {
        let count = u16::from_le_bytes(take::<2>(buf, "digest truncated")?);
        for _ in 0..count {
            chitchat_id(buf)?;
            node_digest(buf)?;
        }
    }
    Ok(())
}

/// One node delta as chitchat's `DeltaBuilder` assembles it.
struct NodeDelta {
    node_id: String,
    generation: u64,
    max_version: u64,
    last_key_version: Option<u64>,
}

fn check_delta(buf: &mut &[u8], me: &SelfId, budget: &mut usize) -> Parsed<()> {
    let ops = inflate_stream(buf, budget)?;
    let mut cursor = ops.as_slice();
    let mut seen: HashSet<(String, u64, SocketAddr)> = HashSet::new();
    let mut current: Option<NodeDelta> = None;
    // Chitchat parses every op before applying any: a malformed op anywhere refuses the whole
    // datagram, so parse all of them first too, then judge the node deltas.
    let mut nodes = Vec::new();
    while !cursor.is_empty() {
        let [tag] = take::<1>(&mut cursor, "delta op truncated")?;
        match tag {
            0 => {
                let (node_id, generation, address) = chitchat_id(&mut cursor)?;
                let _last_gc_version = u64_le(&mut cursor)?;
                let _from_version_excluded = u64_le(&mut cursor)?;
                if !seen.insert((node_id.clone(), generation, address)) {
                    return Err("a node appears twice in the delta".into());
                }
                nodes.extend(current.take());
                current = Some(NodeDelta {
                    node_id,
                    generation,
                    max_version: 0,
                    last_key_version: None,
                });
            }
            1 => {
                string(&mut cursor)?;
                string(&mut cursor)?;
                let version = u64_le(&mut cursor)?;
                let [status] = take::<1>(&mut cursor, "key status truncated")?;
                if status > 2 {
                    return Err(Fault::Malformed(format!(
                        "invalid deletion status {status}"
                    )));
                }
                let node = current
                    .as_mut()
                    .ok_or("a key-value op without a node op before it")?;
                if node.max_version >= version {
                    return Err("key versions are not strictly increasing".into());
                }
                node.max_version = version;
                node.last_key_version = Some(version);
            }
            2 => {
                let max_version = u64_le(&mut cursor)?;
                let node = current
                    .as_mut()
                    .ok_or("a max-version op without a node op before it")?;
                node.max_version = max_version;
            }
            other => return Err(Fault::Malformed(format!("unknown delta op {other}"))),
        }
    }
    nodes.extend(current.take());
    for node in nodes {
        if node.node_id == me.node_id && node.generation >= me.generation {
            return Err(Fault::Refused(Refusal::AboutSelf {
                node_id: node.node_id,
                generation: node.generation,
                max_version: node.max_version,
            }));
        }
        if let Some(key_version) = node.last_key_version
            && node.max_version < key_version
        {
            return Err(Fault::Refused(Refusal::MaxVersionBelowKeys {
                node_id: excerpt(&node.node_id),
                generation: node.generation,
                max_version: node.max_version,
                key_version,
            }));
        }
    }
    Ok(())
}

/// At most 64 characters of a forger's string, for messages and logs.
fn excerpt(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Chitchat's compressed stream: blocks tagged 0 (end), 1 (zstd, u16 length) or 2 (raw, u16
/// length). Returns the concatenated items.
fn inflate_stream(buf: &mut &[u8], budget: &mut usize) -> Parsed<Vec<u8>> {
    let mut out = Vec::new();
    let mut block = vec![0u8; BLOCK_CAPACITY];
    loop {
        let [tag] = take::<1>(buf, "compressed stream truncated (no end tag)")?;
        match tag {
            0 => return Ok(out),
            1 | 2 => {
                let len = usize::from(u16::from_le_bytes(take::<2>(
                    buf,
                    "compressed stream truncated (block length)",
                )?));
                let bytes = buf
                    .get(..len)
                    .ok_or("compressed stream truncated (block shorter than its length)")?;
                *buf = &buf[len..];
                let inflated = if tag == 1 {
                    // The same call, into the same capacity, as chitchat's decoder.
                    let n = zstd::bulk::decompress_to_buffer(bytes, &mut block[..])
                        .map_err(|_| Fault::from("a compressed block does not decompress"))?;
                    &block[..n]
                } else {
                    bytes
                };
                *budget = budget
                    .checked_sub(inflated.len())
                    .ok_or(Fault::Refused(Refusal::Inflates { len: 0 }))?;
                out.extend_from_slice(inflated);
            }
            other => {
                return Err(Fault::Malformed(format!(
                    "invalid compressed block type {other}"
                )));
            }
        }
    }
}

fn take<const N: usize>(buf: &mut &[u8], why: &str) -> Parsed<[u8; N]> {
    let Some((head, rest)) = buf.split_first_chunk::<N>() else {
        return Err(why.into());
    };
    *buf = rest;
    Ok(*head)
}

fn u64_le(buf: &mut &[u8]) -> Parsed<u64> {
    Ok(u64::from_le_bytes(take::<8>(buf, "truncated number")?))
}

/// A u16-length-prefixed UTF-8 string.
fn string(buf: &mut &[u8]) -> Parsed<String> {
    let len = usize::from(u16::from_le_bytes(take::<2>(buf, "truncated string")?));
    let bytes = buf.get(..len).ok_or("truncated string")?;
    let text = std::str::from_utf8(bytes).map_err(|_| Fault::from("a string is not UTF-8"))?;
    *buf = &buf[len..];
    Ok(text.to_string())
}

/// Node id, generation, gossip address.
fn chitchat_id(buf: &mut &[u8]) -> Parsed<(String, u64, SocketAddr)> {
    let node_id = string(buf)?;
    let generation = u64_le(buf)?;
    let [family] = take::<1>(buf, "truncated address")?;
    let ip = match family {
        4 => IpAddr::V4(Ipv4Addr::from(take::<4>(buf, "truncated address")?)),
        6 => IpAddr::V6(Ipv6Addr::from(take::<16>(buf, "truncated address")?)),
        other => {
            return Err(Fault::Malformed(format!("invalid IP version byte {other}")));
        }
    };
    let port = u16::from_le_bytes(take::<2>(buf, "truncated address")?);
    Ok((node_id, generation, SocketAddr::new(ip, port)))
}

/// Heartbeat, last GC version, max version.
fn node_digest(buf: &mut &[u8]) -> Parsed<()> {
    take::<24>(buf, "truncated digest entry")?;
    Ok(())
}

/// Writes datagrams in chitchat's wire format, for tests (uncompressed V0 digests and raw
/// delta blocks, which chitchat reads as well as its own compressed ones).
#[cfg(test)]
pub(crate) mod encode {
    use std::net::SocketAddr;

    /// One delta op.
    #[derive(Debug, Clone)]
    pub enum Op {
        Node {
            node_id: String,
            generation: u64,
            address: SocketAddr,
            last_gc_version: u64,
            from_version: u64,
        },
        Key {
            key: String,
            value: String,
            version: u64,
            status: u8,
        },
        MaxVersion(u64),
    }

    pub fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u16).to_le_bytes());
        out.extend(s.as_bytes());
    }

    pub fn chitchat_id(out: &mut Vec<u8>, node_id: &str, generation: u64, address: SocketAddr) {
        string(out, node_id);
        out.extend(generation.to_le_bytes());
        match address {
            SocketAddr::V4(a) => {
                out.push(4);
                out.extend(a.ip().octets());
            }
            SocketAddr::V6(a) => {
                out.push(6);
                out.extend(a.ip().octets());
            }
        }
        out.extend(address.port().to_le_bytes());
    }

    pub fn ops(ops: &[Op]) -> Vec<u8> {
        let mut out = Vec::new();
        for op in ops {
            match op {
                Op::Node {
                    node_id,
                    generation,
                    address,
                    last_gc_version,
                    from_version,
                } => {
                    out.push(0);
                    chitchat_id(&mut out, node_id, *generation, *address);
                    out.extend(last_gc_version.to_le_bytes());
                    out.extend(from_version.to_le_bytes());
                }
                Op::Key {
                    key,
                    value,
                    version,
                    status,
                } => {
                    out.push(1);
                    string(&mut out, key);
                    string(&mut out, value);
                    out.extend(version.to_le_bytes());
                    out.push(*status);
                }
                Op::MaxVersion(v) => {
                    out.push(2);
                    out.extend(v.to_le_bytes());
                }
            }
        }
        out
    }

    /// A stream of raw blocks holding `items`.
    pub fn raw_stream(items: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in items.chunks(u16::MAX as usize) {
            out.push(2);
            out.extend((chunk.len() as u16).to_le_bytes());
            out.extend(chunk);
        }
        out.push(0);
        out
    }

    /// An Ack (V0) carrying `ops`.
    pub fn ack(ops: &[Op]) -> Vec<u8> {
        let mut out = header(0, 2);
        out.extend(raw_stream(&self::ops(ops)));
        out
    }

    /// A SynAck (V0) with a digest of `(node_id, generation, address, heartbeat,
    /// max_version)` entries and a delta of `ops`.
    pub fn syn_ack(digest: &[(&str, u64, SocketAddr, u64, u64)], ops: &[Op]) -> Vec<u8> {
        let mut out = header(0, 1);
        out.extend((digest.len() as u16).to_le_bytes());
        for (node_id, generation, address, heartbeat, max_version) in digest {
            chitchat_id(&mut out, node_id, *generation, *address);
            out.extend(heartbeat.to_le_bytes());
            out.extend(0u64.to_le_bytes());
            out.extend(max_version.to_le_bytes());
        }
        out.extend(raw_stream(&self::ops(ops)));
        out
    }

    /// A Syn (V0) with an empty digest.
    pub fn syn(cluster_id: &str) -> Vec<u8> {
        let mut out = header(0, 0);
        out.extend(0u16.to_le_bytes());
        string(&mut out, cluster_id);
        out
    }

    pub fn header(version: u8, kind: u8) -> Vec<u8> {
        let mut out = super::MAGIC.to_le_bytes().to_vec();
        out.push(version);
        out.push(kind);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::encode::{self, Op};
    use super::*;

    fn me() -> SelfId {
        SelfId {
            node_id: "me".into(),
            generation: 5,
        }
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:7000".parse().expect("address")
    }

    fn node(node_id: &str, generation: u64) -> Op {
        Op::Node {
            node_id: node_id.into(),
            generation,
            address: addr(),
            last_gc_version: 0,
            from_version: 0,
        }
    }

    fn key(version: u64) -> Op {
        Op::Key {
            key: "k".into(),
            value: "v".into(),
            version,
            status: 0,
        }
    }

    #[test]
    fn well_formed_messages_pass() {
        assert_eq!(inspect(&encode::syn("c"), &me()), Ok(()));
        assert_eq!(inspect(&encode::header(1, 3), &me()), Ok(()));
        let ops = [node("other", 1), key(1), key(7), node("me", 4), key(3)];
        assert_eq!(inspect(&encode::ack(&ops), &me()), Ok(()));
        let digest = [("me", 5, addr(), 9, u64::MAX), ("x", 1, addr(), 1, 2)];
        let ops = [node("x", 1), Op::MaxVersion(9)];
        assert_eq!(inspect(&encode::syn_ack(&digest, &ops), &me()), Ok(()));
        // A compressed block, as chitchat writes them.
        let items = encode::ops(&[node("x", 1), key(1)]);
        let compressed = zstd::bulk::compress(&items, 0).expect("compress");
        let mut datagram = encode::header(1, 2);
        datagram.push(1);
        datagram.extend((compressed.len() as u16).to_le_bytes());
        datagram.extend(&compressed);
        datagram.push(0);
        assert_eq!(inspect(&datagram, &me()), Ok(()));
    }

    #[test]
    fn a_delta_about_this_member_or_a_later_incarnation_is_refused() {
        for generation in [5, 6, u64::MAX] {
            let ops = [node("x", 1), key(1), node("me", generation), key(u64::MAX)];
            let refusal = inspect(&encode::ack(&ops), &me()).expect_err("about self");
            assert_eq!(
                refusal,
                Refusal::AboutSelf {
                    node_id: "me".into(),
                    generation,
                    max_version: u64::MAX
                }
            );
            assert!(refusal.to_string().contains("node me"), "{refusal}");
        }
        // Even without keys: setting max_version alone is enough to wedge our `set`.
        let ops = [node("me", 5), Op::MaxVersion(u64::MAX)];
        assert_eq!(
            inspect(&encode::ack(&ops), &me()).map_err(|r| r.kind()),
            Err("about_self")
        );
    }

    #[test]
    fn a_max_version_below_the_keys_is_refused() {
        let ops = [node("x", 1), key(10), Op::MaxVersion(5)];
        assert_eq!(
            inspect(&encode::ack(&ops), &me()),
            Err(Refusal::MaxVersionBelowKeys {
                node_id: "x".into(),
                generation: 1,
                max_version: 5,
                key_version: 10
            })
        );
        // Raising it is harmless.
        let ops = [node("x", 1), key(10), Op::MaxVersion(11)];
        assert_eq!(inspect(&encode::ack(&ops), &me()), Ok(()));
        // A forger's long node id is cut short in the message.
        let ops = [node(&"x".repeat(5000), 1), key(10), Op::MaxVersion(5)];
        let refusal = inspect(&encode::ack(&ops), &me()).expect_err("refused");
        assert!(refusal.to_string().len() < 300, "{refusal}");
    }

    #[test]
    fn garbage_and_every_truncation_are_malformed() {
        for garbage in [
            &b""[..],
            b"\x53",
            b"junk",
            b"\x53\xb0\x07\x00",
            &[0xff; 100],
        ] {
            assert_eq!(
                inspect(garbage, &me()).map_err(|r| r.kind()),
                Err("malformed"),
                "{garbage:?}"
            );
        }
        let digest = [("x", 1, addr(), 1, 2)];
        let full = encode::syn_ack(&digest, &[node("x", 1), key(1), key(2)]);
        assert_eq!(inspect(&full, &me()), Ok(()));
        for cut in 0..full.len() {
            let refusal = inspect(&full[..cut], &me()).expect_err("truncated");
            assert_eq!(refusal.kind(), "malformed", "cut at {cut}: {refusal}");
        }
    }

    #[test]
    fn what_chitchat_refuses_is_refused() {
        let bad = [
            // Key before any node.
            encode::ack(&[key(1)]),
            // Versions not increasing.
            encode::ack(&[node("x", 1), key(2), key(2)]),
            // Version 0.
            encode::ack(&[node("x", 1), key(0)]),
            // The same node twice.
            encode::ack(&[node("x", 1), node("x", 1)]),
            // Bad deletion status.
            encode::ack(&[
                node("x", 1),
                Op::Key {
                    key: "k".into(),
                    value: "v".into(),
                    version: 1,
                    status: 3,
                },
            ]),
            // Unknown version, message type, block type.
            encode::header(2, 2),
            encode::header(0, 9),
            [encode::header(0, 2), vec![7]].concat(),
        ];
        for datagram in bad {
            assert_eq!(
                inspect(&datagram, &me()).map_err(|r| r.kind()),
                Err("malformed"),
                "{datagram:?}"
            );
        }
        // A string that is not UTF-8.
        let mut datagram = encode::header(0, 0);
        datagram.extend(0u16.to_le_bytes());
        datagram.extend(2u16.to_le_bytes());
        datagram.extend([0xc3, 0x28]);
        assert_eq!(
            inspect(&datagram, &me()).map_err(|r| r.kind()),
            Err("malformed")
        );
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        let zeros = vec![0u8; BLOCK_CAPACITY];
        let block = zstd::bulk::compress(&zeros, 19).expect("compress");
        let mut datagram = encode::header(0, 2);
        while datagram.len() + block.len() + 4 < 65_000 {
            datagram.push(1);
            datagram.extend((block.len() as u16).to_le_bytes());
            datagram.extend(&block);
        }
        datagram.push(0);
        let len = datagram.len();
        assert_eq!(inspect(&datagram, &me()), Err(Refusal::Inflates { len }));
    }
}
