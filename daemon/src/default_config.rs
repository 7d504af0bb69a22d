//! Renders a configuration struct as the default config file the packages install: every
//! option, in declaration order, with its doc comment and its default value, commented out.

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::{DeserializeOwned, Visitor};

/// Longest line of the rendered comments.
const WIDTH: usize = 92;

/// Why a configuration struct cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The type does not deserialize as a struct with named fields.
    #[error("the configuration type is not a struct with named fields")]
    NotAStruct,
    /// The default value does not serialize as a TOML table.
    #[error("the default configuration is not a TOML table: {0}")]
    Toml(#[from] toml::ser::Error),
    /// A field has no doc comment to explain it.
    #[error("option {0} has no doc comment")]
    Undocumented(String),
    /// A field is unset by default and its schema gives no example to show.
    #[error("option {0} is unset by default and has no #[schemars(example = …)]")]
    NoExample(String),
}

/// The default config file of `binary`, installed at `path`: a header, then each option of
/// `T` with its doc comment and `#key = default`. Options unset by default show their first
/// schema example instead.
pub fn render_default_config<T>(binary: &str, path: &str) -> Result<String, RenderError>
where
    T: Default + Serialize + DeserializeOwned + JsonSchema,
{
    let fields = field_names::<T>().ok_or(RenderError::NotAStruct)?;
    let defaults = toml::Table::try_from(T::default())?;
    let schema = schemars::schema_for!(T);
    let properties = schema.get("properties").and_then(|p| p.as_object());

    let mut out = format!(
        "# {path}: configuration of {binary}.\n\
         #\n\
         # Every option is listed with its default value, commented out: uncomment a line to\n\
         # change it. DROVER_<KEY> environment variables (e.g. DROVER_DATA_DIR) and\n\
         # command-line flags override this file. Durations read like \"250ms\", \"2s\", \"1m\".\n\
         #\n\
         # Generated from the code by `{binary} --print-default-config`.\n"
    );
    for &field in fields {
        let property = properties.and_then(|p| p.get(field));
        let doc = property
            .and_then(|p| p.get("description"))
            .and_then(|d| d.as_str())
            .ok_or_else(|| RenderError::Undocumented(field.to_string()))?;
        out.push('\n');
        out.push_str(&wrap_comment(doc));
        let value = match defaults.get(field) {
            Some(value) => value.clone(),
            None => {
                let example = property
                    .and_then(|p| p.get("examples"))
                    .and_then(|e| e.as_array())
                    .and_then(|e| e.first())
                    .ok_or_else(|| RenderError::NoExample(field.to_string()))?;
                out.push_str("# Unset by default; for example:\n");
                toml::Value::try_from(example)?
            }
        };
        out.push_str(&format!("#{field} = {value}\n"));
    }
    Ok(out)
}

/// A rendered default config with every option uncommented (comments dropped): a file that
/// sets each option to its default or example, for tests that check those are valid values.
pub fn uncomment_options(rendered: &str) -> String {
    rendered
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .filter(|line| !line.is_empty() && !line.starts_with(' '))
        .map(|line| format!("{line}\n"))
        .collect()
}

/// `text` as `# `-prefixed lines of at most [`WIDTH`] characters.
fn wrap_comment(text: &str) -> String {
    let mut out = String::new();
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() > 1 && line.len() + 1 + word.len() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// The field names of struct `T` in declaration order, as serde's derive lists them: a
/// deserializer that only records what `deserialize_struct` is asked for. The schema cannot
/// give this order (its properties are a sorted map).
fn field_names<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
    struct Probe<'a>(&'a mut Option<&'static [&'static str]>);

    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = Some(fields);
            Err(serde::de::Error::custom("field names recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields = None;
    // The probe always fails: the error only says the names were recorded (or not).
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;

    /// Sample settings.
    #[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        /// Where to listen.
        listen: String,
        /// How long to wait between two passes of the loop; a long comment that has to be
        /// wrapped over more than one line of the rendered file, because it is long.
        #[serde(with = "humantime_serde")]
        #[schemars(with = "String")]
        interval: Duration,
        /// Peers.
        seeds: Vec<String>,
        /// Optional id.
        #[schemars(example = "web-3")]
        id: Option<String>,
    }

    impl Default for Sample {
        fn default() -> Self {
            Sample {
                listen: "0.0.0.0:1".into(),
                interval: Duration::from_millis(250),
                seeds: vec![],
                id: None,
            }
        }
    }

    #[test]
    fn renders_every_field_in_order_commented() {
        let text = render_default_config::<Sample>("sample", "/etc/sample.toml").expect("render");
        let body = text.split_once("\n\n").expect("header").1;
        let expected = "\
# Where to listen.
#listen = \"0.0.0.0:1\"

# How long to wait between two passes of the loop; a long comment that has to be wrapped
# over more than one line of the rendered file, because it is long.
#interval = \"250ms\"

# Peers.
#seeds = []

# Optional id.
# Unset by default; for example:
#id = \"web-3\"
";
        assert_eq!(body, expected);
        assert!(text.lines().all(|l| l.is_empty() || l.starts_with('#')));
    }

    #[test]
    fn uncommented_file_parses_back_to_the_defaults_plus_examples() {
        let text = render_default_config::<Sample>("sample", "/etc/sample.toml").expect("render");
        let parsed: Sample = toml::from_str(&uncomment_options(&text)).expect("parse");
        let expected = Sample {
            id: Some("web-3".into()),
            ..Sample::default()
        };
        assert_eq!(parsed, expected);
    }
}
