//! The gossip key schema: the keys every cluster member (agents and the coordinator) publishes
//! about itself through chitchat, and how their values are encoded.
//!
//! Gossip carries *facts* (who is alive, which endpoint is healthy, how loaded a node is), never
//! decisions: desired state travels over gRPC. Each member owns one flat string → string map;
//! this module is the contract for that map and has no chitchat dependency, so the coordinator,
//! the agent and tools can all read it.
//!
//! | key            | value                                                   | published by |
//! |----------------|---------------------------------------------------------|--------------|
//! | `role`         | `agent` \| `coordinator`                                | every member |
//! | `grpc`         | advertise address of the member's gRPC API, `host:port` | coordinator  |
//! | `addr`         | the node's advertise address (an IP or host name)       | agents       |
//! | `capacity`     | `"<cpu_millis>,<memory_bytes>"` offered to workloads    | agents       |
//! | `load`         | `"<cpu_millis_used>,<memory_bytes_used>"`               | agents       |
//! | `labels`       | compact JSON object of strings, e.g. `{"zone":"a"}`     | agents       |
//! | `state`        | `alive` \| `leaving`                                    | every member |
//! | `alloc:<id>`   | [`AllocFact`] as compact JSON, one key per allocation   | agents       |
//!
//! Rules:
//! - Values are small: [`check_entry`] refuses any value over [`MAX_VALUE_BYTES`] (4 KiB) and any
//!   key over [`MAX_KEY_BYTES`]. Chitchat cannot replicate a value near 64 KB, and one such value
//!   stops replication of the whole node, so the limit is far below that.
//! - Readers ignore keys they do not know (newer members may publish more) and tolerate missing
//!   keys (a member that just joined may not have published everything yet). A malformed value is
//!   reported as a [`GossipError::Malformed`] naming the key and the value, and the rest of the
//!   member's facts are still used ([`MemberFacts::parse`]).
//! - `load` is meant to be quantized by the publisher (e.g. to 50 millicores / 16 MiB) so that
//!   it does not change, and gossip, on every sample.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::{AllocState, Resources};

/// Key: the member's [`Role`].
pub const ROLE: &str = "role";
/// Key: advertise address of the member's gRPC API (`host:port`); the coordinator publishes it.
pub const GRPC: &str = "grpc";
/// Key: the node's advertise address, the one its published ports and proxies listen on.
pub const ADDR: &str = "addr";
/// Key: resources the node offers to workloads, `"<cpu_millis>,<memory_bytes>"`.
pub const CAPACITY: &str = "capacity";
/// Key: resources in use on the node, `"<cpu_millis_used>,<memory_bytes_used>"`.
pub const LOAD: &str = "load";
/// Key: node labels as a compact JSON object of strings.
pub const LABELS: &str = "labels";
/// Key: the member's [`MemberState`].
pub const STATE: &str = "state";
/// Key prefix: `alloc:<allocation id>` → [`AllocFact`], one key per local allocation.
pub const ALLOC_PREFIX: &str = "alloc:";

/// Largest value a member may publish, in bytes (chitchat's hard limit is ~64 KB per datagram).
pub const MAX_VALUE_BYTES: usize = 4096;
/// Largest key a member may publish, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// Longest excerpt of a bad value quoted in an error message.
const QUOTE_CHARS: usize = 120;

/// A gossip key or value that cannot be published or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GossipError {
    /// A value read from gossip does not follow the schema.
    #[error("gossip key `{key}` has a malformed value `{value}`: {reason}")]
    Malformed {
        /// The key.
        key: String,
        /// The value (an excerpt when long).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A value is larger than [`MAX_VALUE_BYTES`].
    #[error("gossip value of key `{key}` is {len} bytes, over the {max}-byte limit")]
    ValueTooLarge {
        /// The key.
        key: String,
        /// Size of the value in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A key is empty, too long, or holds characters the schema does not allow.
    #[error("invalid gossip key `{key}`: {reason}")]
    InvalidKey {
        /// The key (an excerpt when long).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl GossipError {
    fn malformed(key: &str, value: &str, reason: impl fmt::Display) -> GossipError {
        GossipError::Malformed {
            key: quote(key),
            value: quote(value),
            reason: reason.to_string(),
        }
    }
}

/// `s`, cut to [`QUOTE_CHARS`] characters with an ellipsis.
fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// Checks that a key and its value may be published: key non-empty, at most [`MAX_KEY_BYTES`],
/// printable without whitespace; value at most [`MAX_VALUE_BYTES`].
pub fn check_entry(key: &str, value: &str) -> Result<(), GossipError> {
    check_key(key)?;
    if value.len() > MAX_VALUE_BYTES {
        return Err(GossipError::ValueTooLarge {
            key: quote(key),
            len: value.len(),
            max: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// Checks a key alone (see [`check_entry`]).
pub fn check_key(key: &str) -> Result<(), GossipError> {
    let reason = if key.is_empty() {
        "it is empty".to_string()
    } else if key.len() > MAX_KEY_BYTES {
        format!(
            "it is {} bytes, over the {MAX_KEY_BYTES}-byte limit",
            key.len()
        )
    } else if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "it contains whitespace or control characters".to_string()
    } else if key == ALLOC_PREFIX {
        "the allocation id is empty".to_string()
    } else {
        return Ok(());
    };
    Err(GossipError::InvalidKey {
        key: quote(key),
        reason,
    })
}

/// The key of allocation `id`: `alloc:<id>`, checked with [`check_key`].
pub fn alloc_key(id: &str) -> Result<String, GossipError> {
    let key = format!("{ALLOC_PREFIX}{id}");
    check_key(&key)?;
    Ok(key)
}

/// What a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs workloads on its host.
    Agent,
    /// Decides what runs where.
    Coordinator,
}

impl Role {
    /// The value published under [`ROLE`].
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Coordinator => "coordinator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = GossipError;

    fn from_str(s: &str) -> Result<Role, GossipError> {
        match s {
            "agent" => Ok(Role::Agent),
            "coordinator" => Ok(Role::Coordinator),
            _ => Err(GossipError::malformed(
                ROLE,
                s,
                "expected `agent` or `coordinator`",
            )),
        }
    }
}

/// Whether a member intends to stay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Running normally.
    #[default]
    Alive,
    /// Shutting down on purpose: route away from it now, do not wait for the failure detector.
    Leaving,
}

impl MemberState {
    /// The value published under [`STATE`].
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Leaving => "leaving",
        }
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MemberState {
    type Err = GossipError;

    fn from_str(s: &str) -> Result<MemberState, GossipError> {
        match s {
            "alive" => Ok(MemberState::Alive),
            "leaving" => Ok(MemberState::Leaving),
            _ => Err(GossipError::malformed(
                STATE,
                s,
                "expected `alive` or `leaving`",
            )),
        }
    }
}

/// Encodes resources as `"<cpu_millis>,<memory_bytes>"` (the [`CAPACITY`] and [`LOAD`] values).
pub fn encode_resources(r: Resources) -> String {
    format!("{},{}", r.cpu_millis, r.memory_bytes)
}

/// Decodes a [`CAPACITY`] or [`LOAD`] value; `key` only names the key in the error.
pub fn decode_resources(key: &str, value: &str) -> Result<Resources, GossipError> {
    let bad = || GossipError::malformed(key, value, "expected `<cpu_millis>,<memory_bytes>`");
    let (cpu, mem) = value.split_once(',').ok_or_else(bad)?;
    Ok(Resources {
        cpu_millis: cpu.parse().map_err(|_| bad())?,
        memory_bytes: mem.parse().map_err(|_| bad())?,
    })
}

/// Encodes labels as a compact JSON object (the [`LABELS`] value), refusing more than
/// [`MAX_VALUE_BYTES`].
pub fn encode_labels(labels: &BTreeMap<String, String>) -> Result<String, GossipError> {
    // A map of strings always serializes.
    let value = serde_json::to_string(labels).unwrap_or_default();
    check_entry(LABELS, &value)?;
    Ok(value)
}

/// Decodes a [`LABELS`] value.
pub fn decode_labels(value: &str) -> Result<BTreeMap<String, String>, GossipError> {
    serde_json::from_str(value).map_err(|e| GossipError::malformed(LABELS, value, e))
}

/// What an agent publishes about one of its allocations, under `alloc:<id>`.
///
/// Encoded as compact JSON with one-letter fields, e.g.
/// `{"s":"web","r":2,"e":"10.0.0.5:31234","h":"healthy"}`. Unknown fields are ignored on
/// decode, so fields can be added later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocFact {
    /// Service name.
    #[serde(rename = "s")]
    pub service: String,
    /// Spec revision the allocation runs.
    #[serde(rename = "r")]
    pub revision: u64,
    /// Where the proxy reaches it (`ip:port`); `None` (encoded `""`) while it has none.
    #[serde(rename = "e", default, with = "endpoint_serde")]
    pub endpoint: Option<SocketAddr>,
    /// Observed state; a proxy only routes to [`AllocState::Healthy`].
    #[serde(rename = "h")]
    pub health: AllocState,
}

impl AllocFact {
    /// The compact JSON value; refuses values over [`MAX_VALUE_BYTES`] or an empty service.
    pub fn encode(&self) -> Result<String, GossipError> {
        let key = format!("{ALLOC_PREFIX}…");
        if self.service.is_empty() {
            return Err(GossipError::malformed(
                &key,
                "",
                "the service name is empty",
            ));
        }
        // A struct of strings and numbers always serializes.
        let value = serde_json::to_string(self).unwrap_or_default();
        check_entry(&key, &value)?;
        Ok(value)
    }

    /// Decodes a value produced by [`AllocFact::encode`]; errors name `alloc:…` as the key
    /// (see [`MemberFacts::parse`] for errors naming the full key).
    pub fn decode(value: &str) -> Result<AllocFact, GossipError> {
        decode_alloc(&format!("{ALLOC_PREFIX}…"), value)
    }

    /// Whether a proxy may send traffic to it: healthy with an endpoint.
    pub fn is_routable(&self) -> bool {
        self.health == AllocState::Healthy && self.endpoint.is_some()
    }
}

fn decode_alloc(key: &str, value: &str) -> Result<AllocFact, GossipError> {
    let fact: AllocFact =
        serde_json::from_str(value).map_err(|e| GossipError::malformed(key, value, e))?;
    if fact.service.is_empty() {
        return Err(GossipError::malformed(
            key,
            value,
            "the service name is empty",
        ));
    }
    Ok(fact)
}

mod endpoint_serde {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(e: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match e {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Ok(None);
        }
        s.parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("endpoint `{s}` is not `ip:port`")))
    }
}

/// Everything a member publishes, decoded. Every field is optional or empty when the member has
/// not published the key (yet).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberFacts {
    /// [`ROLE`].
    pub role: Option<Role>,
    /// [`GRPC`]: `host:port` of its gRPC API.
    pub grpc: Option<String>,
    /// [`ADDR`]: the node's advertise address.
    pub addr: Option<String>,
    /// [`CAPACITY`].
    pub capacity: Option<Resources>,
    /// [`LOAD`].
    pub load: Option<Resources>,
    /// [`LABELS`]; empty when not published.
    pub labels: BTreeMap<String, String>,
    /// [`STATE`]; `None` when not published (treat as alive).
    pub state: Option<MemberState>,
    /// `alloc:<id>` keys, by allocation id.
    pub allocations: BTreeMap<String, AllocFact>,
}

impl MemberFacts {
    /// Decodes a member's key-value map, leniently: unknown keys are ignored, missing keys
    /// leave their field empty, and each malformed value is skipped and returned as an error
    /// naming the key and the value.
    pub fn parse<'a, I>(key_values: I) -> (MemberFacts, Vec<GossipError>)
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut facts = MemberFacts::default();
        let mut errors = Vec::new();
        for (key, value) in key_values {
            if let Err(e) = facts.apply(key, value) {
                errors.push(e);
            }
        }
        (facts, errors)
    }

    /// Like [`MemberFacts::parse`] but fails on the first malformed value.
    pub fn parse_strict<'a, I>(key_values: I) -> Result<MemberFacts, GossipError>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut facts = MemberFacts::default();
        for (key, value) in key_values {
            facts.apply(key, value)?;
        }
        Ok(facts)
    }

    /// Decodes one key into `self`; unknown keys are ignored.
    fn apply(&mut self, key: &str, value: &str) -> Result<(), GossipError> {
        match key {
            ROLE => self.role = Some(value.parse()?),
            GRPC => self.grpc = Some(decode_host_port(key, value)?),
            ADDR => self.addr = Some(decode_host(key, value)?),
            CAPACITY => self.capacity = Some(decode_resources(key, value)?),
            LOAD => self.load = Some(decode_resources(key, value)?),
            LABELS => self.labels = decode_labels(value)?,
            STATE => self.state = Some(value.parse()?),
            _ => {
                if let Some(id) = key.strip_prefix(ALLOC_PREFIX) {
                    if id.is_empty() {
                        return Err(GossipError::malformed(
                            key,
                            value,
                            "the allocation id is empty",
                        ));
                    }
                    self.allocations
                        .insert(id.to_string(), decode_alloc(key, value)?);
                }
            }
        }
        Ok(())
    }

    /// The key-value pairs that publish these facts (every present field), each checked with
    /// [`check_entry`]. Useful as the initial state of a member.
    pub fn to_key_values(&self) -> Result<Vec<(String, String)>, GossipError> {
        let mut out = Vec::new();
        let mut push = |key: String, value: String| -> Result<(), GossipError> {
            check_entry(&key, &value)?;
            out.push((key, value));
            Ok(())
        };
        if let Some(role) = self.role {
            push(ROLE.into(), role.as_str().into())?;
        }
        if let Some(grpc) = &self.grpc {
            decode_host_port(GRPC, grpc)?;
            push(GRPC.into(), grpc.clone())?;
        }
        if let Some(addr) = &self.addr {
            decode_host(ADDR, addr)?;
            push(ADDR.into(), addr.clone())?;
        }
        if let Some(capacity) = self.capacity {
            push(CAPACITY.into(), encode_resources(capacity))?;
        }
        if let Some(load) = self.load {
            push(LOAD.into(), encode_resources(load))?;
        }
        if !self.labels.is_empty() {
            push(LABELS.into(), encode_labels(&self.labels)?)?;
        }
        if let Some(state) = self.state {
            push(STATE.into(), state.as_str().into())?;
        }
        for (id, fact) in &self.allocations {
            push(alloc_key(id)?, fact.encode()?)?;
        }
        Ok(out)
    }

    /// Whether the member announced that it is leaving.
    pub fn is_leaving(&self) -> bool {
        self.state == Some(MemberState::Leaving)
    }

    /// Allocations of `service` a proxy may route to (healthy, with an endpoint), by id.
    pub fn routable<'a>(
        &'a self,
        service: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a AllocFact)> + 'a {
        self.allocations
            .iter()
            .filter(move |(_, f)| f.service == service && f.is_routable())
            .map(|(id, f)| (id.as_str(), f))
    }
}

/// A host (IP or name): non-empty, no whitespace.
fn decode_host(key: &str, value: &str) -> Result<String, GossipError> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(GossipError::malformed(
            key,
            value,
            "expected an IP address or host name",
        ));
    }
    Ok(value.to_string())
}

/// `host:port`, port numeric.
fn decode_host_port(key: &str, value: &str) -> Result<String, GossipError> {
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| decode_host(key, host).is_ok() && port.parse::<u16>().is_ok());
    if !ok {
        return Err(GossipError::malformed(key, value, "expected `host:port`"));
    }
    Ok(value.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn web() -> AllocFact {
        AllocFact {
            service: "web".into(),
            revision: 2,
            endpoint: Some("10.0.0.5:31234".parse().unwrap()),
            health: AllocState::Healthy,
        }
    }

    #[test]
    fn gossip_alloc_fact_round_trip() {
        let value = web().encode().unwrap();
        assert_eq!(
            value,
            r#"{"s":"web","r":2,"e":"10.0.0.5:31234","h":"healthy"}"#
        );
        assert_eq!(AllocFact::decode(&value).unwrap(), web());

        let starting = AllocFact {
            endpoint: None,
            health: AllocState::Starting,
            ..web()
        };
        let value = starting.encode().unwrap();
        assert_eq!(value, r#"{"s":"web","r":2,"e":"","h":"starting"}"#);
        assert_eq!(AllocFact::decode(&value).unwrap(), starting);
        assert!(!starting.is_routable());
        assert!(web().is_routable());

        // IPv6 endpoints, missing endpoint and unknown fields are fine.
        let v6 =
            AllocFact::decode(r#"{"s":"web","r":1,"e":"[::1]:80","h":"unhealthy","x":1}"#).unwrap();
        assert_eq!(v6.endpoint, Some("[::1]:80".parse().unwrap()));
        let none = AllocFact::decode(r#"{"s":"web","r":1,"h":"failed"}"#).unwrap();
        assert_eq!(none.endpoint, None);
    }

    #[test]
    fn gossip_alloc_fact_rejects_bad_values() {
        for bad in [
            "",
            "{}",
            r#"{"s":"web","r":-1,"e":"","h":"healthy"}"#,
            r#"{"s":"web","r":1,"e":"nope","h":"healthy"}"#,
            r#"{"s":"web","r":1,"e":"","h":"sleepy"}"#,
            r#"{"s":"","r":1,"e":"","h":"healthy"}"#,
        ] {
            let err = AllocFact::decode(bad).unwrap_err();
            assert!(
                matches!(&err, GossipError::Malformed { value, .. } if value == bad),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn gossip_values_over_4k_are_refused() {
        let big = AllocFact {
            service: "s".repeat(MAX_VALUE_BYTES),
            ..web()
        };
        let err = big.encode().unwrap_err();
        assert!(
            matches!(err, GossipError::ValueTooLarge { max: 4096, .. }),
            "{err}"
        );

        let labels: BTreeMap<String, String> = (0..400)
            .map(|i| (format!("label-{i}"), "value".to_string()))
            .collect();
        let err = encode_labels(&labels).unwrap_err();
        assert!(err.to_string().contains("`labels`"), "{err}");

        assert!(check_entry("k", &"x".repeat(MAX_VALUE_BYTES)).is_ok());
        assert!(check_entry("k", &"x".repeat(MAX_VALUE_BYTES + 1)).is_err());
        assert!(check_entry("", "v").is_err());
        assert!(check_entry("a b", "v").is_err());
        assert!(check_entry(&"k".repeat(MAX_KEY_BYTES + 1), "v").is_err());
        assert!(alloc_key("").is_err());
        assert_eq!(alloc_key("a-1").unwrap(), "alloc:a-1");
    }

    #[test]
    fn gossip_member_facts_round_trip() {
        let facts = MemberFacts {
            role: Some(Role::Agent),
            grpc: None,
            addr: Some("10.0.0.5".into()),
            capacity: Some(Resources {
                cpu_millis: 4000,
                memory_bytes: 8 << 30,
            }),
            load: Some(Resources {
                cpu_millis: 250,
                memory_bytes: 512 << 20,
            }),
            labels: [("zone".to_string(), "a".to_string())].into(),
            state: Some(MemberState::Alive),
            allocations: [("a-1".to_string(), web())].into(),
        };
        let kvs = facts.to_key_values().unwrap();
        assert!(kvs.contains(&("capacity".into(), "4000,8589934592".into())));
        assert!(kvs.contains(&("labels".into(), r#"{"zone":"a"}"#.into())));
        let parsed =
            MemberFacts::parse_strict(kvs.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!(parsed, facts);
    }

    #[test]
    fn gossip_member_facts_tolerate_missing_and_unknown_keys() {
        let (facts, errors) = MemberFacts::parse([
            ("role", "coordinator"),
            ("grpc", "coord.example:7400"),
            ("future-key", "whatever"),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(facts.role, Some(Role::Coordinator));
        assert_eq!(facts.grpc.as_deref(), Some("coord.example:7400"));
        assert_eq!(facts.capacity, None);
        assert!(facts.labels.is_empty() && facts.allocations.is_empty());
        assert!(!facts.is_leaving());

        let (facts, errors) = MemberFacts::parse([]);
        assert_eq!(facts, MemberFacts::default());
        assert!(errors.is_empty());
    }

    #[test]
    fn gossip_member_facts_report_malformed_keys() {
        let good = web().encode().unwrap();
        let (facts, errors) = MemberFacts::parse([
            ("role", "overlord"),
            ("capacity", "4000"),
            ("load", "1,x"),
            ("labels", "[1]"),
            ("state", "leaving"),
            ("grpc", "no-port"),
            ("addr", ""),
            ("alloc:ok", good.as_str()),
            ("alloc:bad", "{"),
            ("alloc:", good.as_str()),
        ]);
        // Good keys survive bad neighbours.
        assert_eq!(facts.state, Some(MemberState::Leaving));
        assert!(facts.is_leaving());
        assert_eq!(facts.allocations.keys().collect::<Vec<_>>(), ["ok"]);
        assert_eq!(facts.routable("web").count(), 1);
        assert_eq!(facts.role, None);
        let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 8, "{messages:#?}");
        for (key, value) in [
            ("role", "overlord"),
            ("capacity", "4000"),
            ("load", "1,x"),
            ("labels", "[1]"),
            ("grpc", "no-port"),
            ("addr", ""),
            ("alloc:bad", "{"),
        ] {
            let needle = format!("`{key}` has a malformed value `{value}`");
            assert!(
                messages.iter().any(|m| m.contains(&needle)),
                "no error for {key}: {messages:#?}"
            );
        }

        let err = MemberFacts::parse_strict([("capacity", "x,1")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "gossip key `capacity` has a malformed value `x,1`: expected `<cpu_millis>,<memory_bytes>`"
        );
    }

    #[test]
    fn gossip_long_values_are_quoted_short() {
        let long = "x".repeat(10_000);
        let err = decode_resources(LOAD, &long).unwrap_err();
        assert!(err.to_string().len() < 300, "{err}");
    }
}
