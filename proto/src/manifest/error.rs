//! Error types of manifest parsing and validation, and the rewording of serde's messages.

use std::fmt;

/// One document's source, for error messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source {
    /// Path of the file, or `-` for stdin.
    pub file: String,
    /// 0-based index of the document in the file (empty documents count).
    pub document: usize,
}

impl fmt::Display for Source {
    /// `file, document N` with N 1-based, as an editor counts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, document {}", self.file, self.document + 1)
    }
}

/// A problem with one field of a spec or manifest document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", join_path(.path, .message))]
pub struct FieldError {
    /// Dotted path of the field (`spec.ports[0].containerPort`); empty for the whole document.
    pub path: String,
    /// What is wrong, with the offending value.
    pub message: String,
}

impl FieldError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// One problem found in one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The document it was found in.
    pub origin: Source,
    /// The object the document declares, as `Kind name` (`Deployment web`), when known.
    pub object: Option<String>,
    /// The field and what is wrong with it.
    pub error: FieldError,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        write!(f, ": {}", self.error)
    }
}

/// Why a set of manifests was refused; nothing of the set is applied.
///
/// Displays one problem per line, in document order, e.g.
/// `app.yaml, document 2 (Deployment web): spec.template.spec.volumes: field not supported by Drover`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", display_lines(.problems))]
pub struct ManifestError {
    /// Every problem found; never empty.
    pub problems: Vec<Problem>,
}

/// A value that does not parse (a quantity, a constraint).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

fn join_path(path: &str, message: &str) -> String {
    if path.is_empty() {
        message.to_string()
    } else {
        format!("{path}: {message}")
    }
}

fn display_lines(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

/// Problems collected while converting or validating one document.
#[derive(Debug, Default)]
pub(crate) struct Errors(pub(crate) Vec<FieldError>);

impl Errors {
    /// Records a problem at `path`.
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }

    /// The value of `result`, or `None` after recording its error at `path`.
    pub(crate) fn check<T>(
        &mut self,
        path: impl Into<String>,
        result: Result<T, String>,
    ) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.push(path, message);
                None
            }
        }
    }

    /// Whether nothing was recorded.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `base.field`, or `field` when `base` is the document root.
pub(crate) fn at(base: &str, field: &str) -> String {
    if base.is_empty() {
        field.to_string()
    } else {
        format!("{base}.{field}")
    }
}

/// Turns a serde error into a field error, rewording serde's messages for manifest authors.
pub(crate) fn from_serde(err: serde_path_to_error::Error<serde_yaml_ng::Error>) -> FieldError {
    let path = match err.path().to_string() {
        root if root == "." => String::new(),
        path => path,
    };
    let message = err.into_inner().to_string();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        // The path already ends with the unknown key.
        let supported = rest
            .split_once(", expected ")
            .map(|(_, expected)| expected.trim_start_matches("one of "))
            .map(|list| format!(" (supported here: {})", list.replace('`', "")))
            .unwrap_or_default();
        return FieldError::new(path, format!("field not supported by Drover{supported}"));
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.trim_end_matches('`');
        return FieldError::new(at(&path, field), "required field is missing");
    }
    FieldError::new(path, plain_types(message))
}

/// Replaces Rust type names in serde's messages with what a manifest author writes.
fn plain_types(message: String) -> String {
    const TYPES: [(&str, &str); 4] = [
        ("expected i64", "expected an integer"),
        ("expected u64", "expected an integer >= 0"),
        ("expected u32", "expected an integer >= 0"),
        ("expected u16", "expected an integer >= 0"),
    ];
    TYPES
        .iter()
        .fold(message, |text, (rust, plain)| text.replace(rust, plain))
}
