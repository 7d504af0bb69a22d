//! Scalar field types shared by both manifest formats, each checked as it is deserialized.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::quantity::{parse_cpu, parse_memory};
use crate::model::{Protocol, ReplicaCount};

/// A string field that also takes a YAML number or boolean (`PORT: 8080`), kept as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Text(pub(crate) String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(TextVisitor)
    }
}

/// An environment variable's value in Drover's manifest: a scalar (`PORT: 8080`), or
/// `{secret: …}` for a value kept secret (sealed at rest, withheld from views).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EnvValue {
    /// A plain value.
    Plain(String),
    /// A secret value.
    Secret(String),
}

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnvVisitor;
        impl<'de> Visitor<'de> for EnvVisitor {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean, or {secret: <value>}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue::Plain(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue::Plain(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue::Plain(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue::Plain(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue::Plain(v.to_string()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<EnvValue, A::Error> {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct SecretInput {
                    secret: Text,
                }
                let input = SecretInput::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(EnvValue::Secret(input.secret.0))
            }
        }
        deserializer.deserialize_any(EnvVisitor)
    }
}

/// A duration written with units: `"10s"`, `"1m30s"`, `"500ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dur(pub(crate) Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurVisitor;
        impl Visitor<'_> for DurVisitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, such as \"10s\" or \"1m30s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                humantime::parse_duration(v.trim()).map(Dur).map_err(|err| {
                    E::custom(format!(
                        "invalid duration \"{v}\": {err} (write e.g. \"10s\", \"1m30s\", \"500ms\")"
                    ))
                })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "duration {v} has no unit: write \"{v}s\" for seconds"
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "duration {v} has no unit and is negative"
                )))
            }
        }
        deserializer.deserialize_any(DurVisitor)
    }
}

/// A quantity written as a string or a YAML number, kept as text for exact parsing.
#[derive(Debug)]
pub(crate) struct QuantityText(pub(crate) String);

impl<'de> Deserialize<'de> for QuantityText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QuantityVisitor;
        impl Visitor<'_> for QuantityVisitor {
            type Value = QuantityText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity such as \"500m\", 2, \"256Mi\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<QuantityText, E> {
                // Display of f64 is the shortest exact form and never uses an exponent.
                Ok(QuantityText(v.to_string()))
            }
        }
        deserializer.deserialize_any(QuantityVisitor)
    }
}

/// CPU in millicores, written `"500m"`, `0.5`, `2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cpu(pub(crate) u64);

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = QuantityText::deserialize(deserializer)?;
        parse_cpu(&text.0).map(Cpu).map_err(de::Error::custom)
    }
}

/// Memory in bytes, written `"256Mi"`, `"1G"`, `1000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Memory(pub(crate) u64);

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = QuantityText::deserialize(deserializer)?;
        parse_memory(&text.0).map(Memory).map_err(de::Error::custom)
    }
}

/// A port protocol; only TCP, in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proto(pub(crate) Protocol);

impl<'de> Deserialize<'de> for Proto {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.eq_ignore_ascii_case("tcp") {
            Ok(Proto(Protocol::Tcp))
        } else {
            Err(de::Error::custom(format!(
                "protocol \"{text}\" is not supported: Drover routes TCP only"
            )))
        }
    }
}

/// A Kubernetes int-or-string: a port number or a port name, a count or a percentage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IntOrName {
    /// A number as written (range checked by the user of the field).
    Int(i64),
    /// A name or a percentage.
    Name(String),
}

impl fmt::Display for IntOrName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrName::Int(value) => write!(f, "{value}"),
            IntOrName::Name(name) => write!(f, "\"{name}\""),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntOrNameVisitor;
        impl Visitor<'_> for IntOrNameVisitor {
            type Value = IntOrName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a name")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrName, E> {
                Ok(IntOrName::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrName, E> {
                i64::try_from(v)
                    .map(IntOrName::Int)
                    .map_err(|_| E::custom(format!("{v} is too large")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrName, E> {
                Ok(IntOrName::Name(v.to_string()))
            }
        }
        deserializer.deserialize_any(IntOrNameVisitor)
    }
}

/// A replica count as written: an integer (`1`) or a percentage string (`"25%"`), checked
/// by [`replica_count`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CountOrPercent {
    /// A number as written.
    Int(i64),
    /// A percentage, or anything else written as a string.
    Text(String),
}

impl<'de> Deserialize<'de> for CountOrPercent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountVisitor;
        impl Visitor<'_> for CountVisitor {
            type Value = CountOrPercent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of replicas or a percentage such as \"25%\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CountOrPercent, E> {
                Ok(CountOrPercent::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CountOrPercent, E> {
                i64::try_from(v)
                    .map(CountOrPercent::Int)
                    .map_err(|_| E::custom(format!("{v} is too large")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CountOrPercent, E> {
                Ok(CountOrPercent::Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(CountVisitor)
    }
}

/// A replica count: an integer >= 0, or a whole percentage `"N%"` (its range is checked by
/// the validation of the field, which differs between `maxSurge` and `maxUnavailable`).
pub(crate) fn replica_count(value: &CountOrPercent) -> Result<ReplicaCount, String> {
    let text = match value {
        CountOrPercent::Int(count) => return count_at_least(*count, 0).map(ReplicaCount::Count),
        CountOrPercent::Text(text) => text,
    };
    let Some(number) = text.strip_suffix('%') else {
        return Err(format!(
            "\"{text}\" is neither a number of replicas nor a percentage (write e.g. 1 or \"25%\")"
        ));
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "percentage \"{text}\" must be a whole number followed by '%', such as \"25%\""
        ));
    }
    number
        .parse()
        .map(ReplicaCount::Percent)
        .map_err(|_| format!("percentage \"{text}\" is too large"))
}

/// A port number written as an integer: 1..=65535.
pub(crate) fn port_number(value: i64) -> Result<u16, String> {
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("port {value} is out of range 1..=65535")),
    }
}

/// A count that must be at least `min`, written as an integer.
pub(crate) fn count_at_least(value: i64, min: u32) -> Result<u32, String> {
    match u32::try_from(value) {
        Ok(count) if count >= min => Ok(count),
        Ok(_) | Err(_) if value < i64::from(min) => Err(format!("must be >= {min}, got {value}")),
        _ => Err(format!("{value} is too large")),
    }
}

/// Whole seconds written as an integer, at least `min`.
pub(crate) fn seconds_at_least(value: i64, min: u32) -> Result<Duration, String> {
    count_at_least(value, min).map(|secs| Duration::from_secs(u64::from(secs)))
}
