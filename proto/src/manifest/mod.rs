//! Manifest parsing: Drover's own service spec and the Kubernetes Deployment/Service subset.
//!
//! `drover apply -f` takes YAML files of several documents each (`---` separated). A document
//! is one of:
//! - `apiVersion: drover.dev/v1`, `kind: Service`: Drover's own spec (see `examples/web.yaml`);
//! - `apiVersion: apps/v1`, `kind: Deployment`, and `apiVersion: v1`, `kind: Service`: the
//!   Kubernetes subset. A Service joins the one Deployment whose pod template labels carry
//!   all of its selector's pairs, across every file of the apply; the pair makes one
//!   [`WorkloadSpec`] named after the Deployment. A Deployment without a Service has no
//!   published port; a Service that selects no Deployment is an error.
//!
//! Any field Drover does not support is an error naming its path, never dropped. What the
//! Kubernetes subset accepts and ignores: `metadata.annotations` (but a Deployment's
//! `drover.dev/auto-revert: "true"` turns automatic revert on; Kubernetes has none, so it is
//! off otherwise), a Service's `metadata.labels`, `metadata.creationTimestamp`, `status`,
//! and `imagePullPolicy` (the agent pulls an image it does not have). Service `type` may
//! only be `ClusterIP`: every service port is published on every node already.
//! `restartPolicy` other than `Always` is refused. A Deployment's rollout settings
//! (`strategy` with `RollingUpdate` counts or percentages, or `Recreate`,
//! `minReadySeconds`, `progressDeadlineSeconds`, `revisionHistoryLimit`, `paused`) map onto
//! [`crate::model::UpdateStrategy`] with Kubernetes' defaults and rules.
//!
//! Parsing is all-or-nothing: every problem of every document is collected, and nothing is
//! returned unless there are none.

mod constraint;
mod deployment;
mod drover;
mod error;
mod input;
mod join;
mod kube;
mod quantity;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

pub use constraint::parse_constraint;
pub use error::{FieldError, ManifestError, Problem, Source, ValueError};
pub use quantity::{parse_cpu, parse_memory};
pub use validate::{dns_label, excerpt, node_info as validate_node, validate};

use crate::model::WorkloadSpec;

/// Parses every YAML document of one file. Empty documents are skipped but still counted
/// in [`Source::document`]. Kubernetes Deployments and Services are joined within the file.
pub fn parse_str(file: &str, text: &str) -> Result<Vec<(Source, WorkloadSpec)>, ManifestError> {
    parse_set(&[(file, text)])
}

/// Parses several files, `(name, text)`, as one apply: Kubernetes Deployments and Services
/// are joined across all of them, a service name may appear only once in the whole set,
/// and every spec is validated. All or nothing.
pub fn parse_files(files: &[(String, String)]) -> Result<Vec<WorkloadSpec>, ManifestError> {
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(name, text)| (name.as_str(), text.as_str()))
        .collect();
    let specs = parse_set(&files)?;
    Ok(specs.into_iter().map(|(_, spec)| spec).collect())
}

/// A service declared by a document: Drover's own, or a Kubernetes Deployment.
#[derive(Debug)]
pub(crate) struct Declared {
    origin: Source,
    object: String,
    spec: WorkloadSpec,
    /// Pod template labels, for a Deployment.
    template_labels: Option<BTreeMap<String, String>>,
    /// Paths already reported for this document.
    reported: Vec<String>,
    /// A Deployment with errors of its own; not joined nor validated further.
    broken: bool,
}

#[derive(Debug, Default)]
struct Collected {
    problems: Vec<Problem>,
    declared: Vec<Declared>,
    services: Vec<join::ServiceEntry>,
    /// Kubernetes Service name → where it was first declared.
    service_names: HashMap<String, Source>,
    /// A Deployment could not be read far enough to know its labels.
    selectors_unknown: bool,
}

fn parse_set(files: &[(&str, &str)]) -> Result<Vec<(Source, WorkloadSpec)>, ManifestError> {
    let mut collected = Collected::default();
    for (file, text) in files {
        collected.read_file(file, text);
    }
    let Collected {
        mut problems,
        mut declared,
        services,
        selectors_unknown,
        ..
    } = collected;
    let objects: HashMap<Source, String> = declared
        .iter()
        .map(|d| (d.origin.clone(), d.object.clone()))
        .chain(
            services
                .iter()
                .map(|s| (s.origin.clone(), format!("Service {}", s.converted.name))),
        )
        .collect();
    for (origin, error) in join::join(&mut declared, services, selectors_unknown) {
        let object = objects.get(&origin).cloned();
        problems.push(Problem {
            origin,
            object,
            error,
        });
    }
    check_unique_names(&declared, &mut problems);
    for entry in &declared {
        validate_declared(entry, &mut problems);
    }
    if problems.is_empty() {
        return Ok(declared.into_iter().map(|d| (d.origin, d.spec)).collect());
    }
    let file_position = |file: &str| files.iter().position(|(name, _)| *name == file);
    problems.sort_by_key(|p| (file_position(&p.origin.file), p.origin.document));
    Err(ManifestError { problems })
}

fn check_unique_names(declared: &[Declared], problems: &mut Vec<Problem>) {
    let mut first: HashMap<&str, &Declared> = HashMap::new();
    for entry in declared {
        if entry.spec.name.is_empty() {
            continue;
        }
        match first.get(entry.spec.name.as_str()) {
            Some(earlier) => problems.push(Problem {
                origin: entry.origin.clone(),
                object: Some(entry.object.clone()),
                error: FieldError::new(
                    "metadata.name",
                    format!(
                        "service \"{}\" is already declared in {} ({})",
                        entry.spec.name, earlier.origin, earlier.object
                    ),
                ),
            }),
            None => {
                first.insert(&entry.spec.name, entry);
            }
        }
    }
}

fn validate_declared(entry: &Declared, problems: &mut Vec<Problem>) {
    if entry.broken {
        return;
    }
    let Err(errors) = validate(&entry.spec) else {
        return;
    };
    for error in errors {
        if entry.reported.contains(&error.path) {
            continue;
        }
        let error = if entry.template_labels.is_some() {
            // Paths of `validate` are those of Drover's format; say so for a Deployment.
            FieldError::new(
                error.path.clone(),
                format!(
                    "{} (in the Drover spec made from this Deployment)",
                    error.message
                ),
            )
        } else {
            error
        };
        problems.push(Problem {
            origin: entry.origin.clone(),
            object: Some(entry.object.clone()),
            error,
        });
    }
}

impl Collected {
    fn read_file(&mut self, file: &str, text: &str) {
        for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let origin = Source {
                file: file.to_string(),
                document: index,
            };
            match Value::deserialize(document) {
                Ok(Value::Null) => {}
                Ok(value) => self.read_document(origin, value),
                Err(err) => {
                    let error = FieldError::new("", format!("invalid YAML: {err}"));
                    self.problem(origin, None, vec![error]);
                    // The parser cannot resynchronise: later documents are not read.
                    return;
                }
            }
        }
    }

    fn read_document(&mut self, origin: Source, value: Value) {
        if !value.is_mapping() {
            let error = FieldError::new(
                "",
                "a manifest document must be a mapping with apiVersion and kind",
            );
            return self.problem(origin, None, vec![error]);
        }
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let (api_version, kind) = match (header(&value, "apiVersion"), header(&value, "kind")) {
            (Ok(api_version), Ok(kind)) => (api_version, kind),
            (api_version, kind) => {
                let errors = [api_version.err(), kind.err()]
                    .into_iter()
                    .flatten()
                    .collect();
                return self.problem(origin, None, errors);
            }
        };
        let object = format!("{kind} {name}").trim_end().to_string();
        match (api_version.as_str(), kind.as_str()) {
            (drover::API_VERSION, "Service") => self.read_drover(origin, object, value),
            kube::DEPLOYMENT => self.read_deployment(origin, object, name, value),
            kube::SERVICE => self.read_service(origin, object, value),
            _ => {
                let error = FieldError::new(
                    "kind",
                    format!(
                        "kind {kind} of apiVersion {api_version} is not supported: Drover reads {} Service, {} {} and {} {}",
                        drover::API_VERSION,
                        kube::DEPLOYMENT.0,
                        kube::DEPLOYMENT.1,
                        kube::SERVICE.0,
                        kube::SERVICE.1
                    ),
                );
                self.problem(origin, Some(object), vec![error]);
            }
        }
    }

    fn read_drover(&mut self, origin: Source, object: String, value: Value) {
        let document: drover::Document = match typed(value) {
            Ok(document) => document,
            Err(error) => return self.problem(origin, Some(object), vec![error]),
        };
        let (spec, errors) = document.into_spec();
        let reported = errors.iter().map(|e| e.path.clone()).collect();
        self.problem(origin.clone(), Some(object.clone()), errors);
        self.declared.push(Declared {
            origin,
            object,
            spec,
            template_labels: None,
            reported,
            broken: false,
        });
    }

    fn read_deployment(&mut self, origin: Source, object: String, name: String, value: Value) {
        let raw_labels = template_labels(&value);
        let (spec, template_labels, errors) = match typed::<kube::Deployment>(value) {
            Ok(document) => {
                let (converted, errors) = deployment::convert(document);
                (converted.spec, Some(converted.template_labels), errors)
            }
            Err(error) => (WorkloadSpec::new(name, ""), raw_labels, vec![error]),
        };
        let broken = !errors.is_empty();
        self.selectors_unknown |= template_labels.is_none();
        self.problem(origin.clone(), Some(object.clone()), errors);
        self.declared.push(Declared {
            origin,
            object,
            spec,
            template_labels: Some(template_labels.unwrap_or_default()),
            reported: Vec::new(),
            broken,
        });
    }

    fn read_service(&mut self, origin: Source, object: String, value: Value) {
        let converted = typed::<kube::Service>(value)
            .map_err(|error| vec![error])
            .and_then(join::convert);
        let converted = match converted {
            Ok(converted) => converted,
            Err(errors) => return self.problem(origin, Some(object), errors),
        };
        if let Some(first) = self.service_names.get(&converted.name) {
            let error = FieldError::new(
                "metadata.name",
                format!("Service {} is already declared in {first}", converted.name),
            );
            return self.problem(origin, Some(object), vec![error]);
        }
        self.service_names
            .insert(converted.name.clone(), origin.clone());
        self.services.push(join::ServiceEntry { origin, converted });
    }

    fn problem(&mut self, origin: Source, object: Option<String>, errors: Vec<FieldError>) {
        self.problems
            .extend(errors.into_iter().map(|error| Problem {
                origin: origin.clone(),
                object: object.clone(),
                error,
            }));
    }
}

/// A document's `apiVersion` or `kind`.
fn header(value: &Value, key: &str) -> Result<String, FieldError> {
    match value.get(key) {
        None => Err(FieldError::new(key, "required field is missing")),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(_) => Err(FieldError::new(key, "must be a string")),
    }
}

/// A Deployment's pod template labels read from the raw document, for one that does not
/// deserialize; `None` when they cannot be read.
fn template_labels(value: &Value) -> Option<BTreeMap<String, String>> {
    let labels = value
        .get("spec")?
        .get("template")?
        .get("metadata")?
        .get("labels")?
        .as_mapping()?;
    labels
        .iter()
        .map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
        .collect()
}

fn typed<T: DeserializeOwned>(value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(error::from_serde)
}
