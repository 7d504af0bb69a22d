//! Manifest parsing: Drover's own service spec and the Kubernetes Deployment/Service subset.
//!
//! `drover apply -f` takes YAML files of several documents each (`---` separated). A document
//! is one of:
//! - `apiVersion: drover.dev/v1`, `kind: Service`: Drover's own spec (see `examples/web.yaml`);
//! - `autoscaling/v2` (or `v1`) `HorizontalPodAutoscaler` and `autoscaling.k8s.io/v1`
//!   `VerticalPodAutoscaler`, each joined with the Deployment of the same apply it targets;
//! - `apiVersion: apps/v1`, `kind: Deployment`, and `apiVersion: v1`, `kind: Service`: the
//!   Kubernetes subset. A Deployment is a [`WorkloadSpec`] (its pod template labels are the
//!   replicas' labels); a Service is a [`Service`] of its own name that selects, by labels,
//!   any number of workloads, in this apply or already in the cluster. For a Deployment of
//!   the apply that a Service selects, a numeric `targetPort` it does not declare is added
//!   to its container ports, and a named one it lacks is an error.
//!
//! The result is a [`Manifest`]: workloads and services. Any field Drover does not support
//! is an error naming its path, never dropped. What the Kubernetes subset accepts and
//! ignores: `metadata.annotations` (but a Deployment's `drover.dev/auto-revert: "true"`
//! turns automatic revert on; Kubernetes has none, so it is off otherwise),
//! `metadata.creationTimestamp`, `status`, and `imagePullPolicy` (the agent pulls an image
//! it does not have). Service types `ClusterIP`, `NodePort` and `LoadBalancer` are read.
//! `restartPolicy` other than `Always` is refused. A Deployment's rollout settings
//! (`strategy` with `RollingUpdate` counts or percentages, or `Recreate`,
//! `minReadySeconds`, `progressDeadlineSeconds`, `revisionHistoryLimit`, `paused`) map onto
//! [`crate::model::UpdateStrategy`] with Kubernetes' defaults and rules.
//!
//! Parsing is all-or-nothing: every problem of every document is collected, and nothing is
//! returned unless there are none.

mod autoscale;
mod constraint;
mod deployment;
mod drover;
mod error;
mod input;
mod join;
mod kube;
mod quantity;
mod validate;
mod vertical;

#[cfg(test)]
mod tests;

use std::collections::HashMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

pub use autoscale::{unrequested, utilization_needs_request};
pub use constraint::parse_constraint;
pub use error::{FieldError, ManifestError, Problem, Source, ValueError};
pub use quantity::{parse_cpu, parse_memory};
pub use validate::{
    NODE_PORTS, dns_label, excerpt, node_info as validate_node, service as validate_service,
    validate,
};

use crate::model::{Autoscaler, AutoscalerKind, Service, WorkloadSpec};

/// Parses every YAML document of one file. Empty documents are skipped but still counted
/// in [`Source::document`]. Kubernetes Deployments and Services are joined within the file.
pub fn parse_str(file: &str, text: &str) -> Result<Manifest, ManifestError> {
    parse_set(&[(file, text)])
}

/// What an apply declares: workloads (placed, scaled, rolled out) and services (names,
/// addresses and ports over the replicas of the workloads they select).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifest {
    /// Workloads: Drover's own documents and Kubernetes Deployments.
    pub workloads: Vec<WorkloadSpec>,
    /// Services: those of Drover's documents that publish a port, and Kubernetes Services.
    pub services: Vec<Service>,
    /// HorizontalPodAutoscalers and VerticalPodAutoscalers whose Deployment is not in the
    /// apply: for workloads already in the cluster.
    pub autoscalers: Vec<Autoscaler>,
}

/// Parses several files, `(name, text)`, as one apply: Kubernetes Deployments and Services
/// are joined across all of them, a service name may appear only once in the whole set,
/// and every spec is validated. All or nothing.
pub fn parse_files(files: &[(String, String)]) -> Result<Manifest, ManifestError> {
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(name, text)| (name.as_str(), text.as_str()))
        .collect();
    parse_set(&files)
}

/// A workload declared by a document: Drover's own, or a Kubernetes Deployment.
#[derive(Debug)]
pub(crate) struct Declared {
    origin: Source,
    object: String,
    spec: WorkloadSpec,
    /// Whether it is a Deployment (its errors say they are about the Drover spec made of it).
    deployment: bool,
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
    autoscalers: Vec<AutoscalerEntry>,
    vertical: Vec<VerticalEntry>,
}

/// A HorizontalPodAutoscaler, joined with its target workload once every document is read.
#[derive(Debug)]
struct AutoscalerEntry {
    origin: Source,
    object: String,
    name: String,
    spec: autoscale::AutoscaleInput,
}

/// A VerticalPodAutoscaler, joined with its target workload once every document is read.
#[derive(Debug)]
struct VerticalEntry {
    origin: Source,
    object: String,
    name: String,
    spec: vertical::VerticalInput,
}

/// A VerticalPodAutoscaler document.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VerticalPodAutoscaler {
    #[serde(rename = "apiVersion")]
    _api_version: serde::de::IgnoredAny,
    #[serde(rename = "kind")]
    _kind: serde::de::IgnoredAny,
    metadata: kube::ObjectMeta,
    spec: vertical::VerticalInput,
    #[serde(rename = "status")]
    _status: Option<serde::de::IgnoredAny>,
}

/// A HorizontalPodAutoscaler document.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HorizontalPodAutoscaler {
    #[serde(rename = "apiVersion")]
    _api_version: serde::de::IgnoredAny,
    #[serde(rename = "kind")]
    _kind: serde::de::IgnoredAny,
    metadata: kube::ObjectMeta,
    spec: autoscale::AutoscaleInput,
    #[serde(rename = "status")]
    _status: Option<serde::de::IgnoredAny>,
}

fn parse_set(files: &[(&str, &str)]) -> Result<Manifest, ManifestError> {
    let mut collected = Collected::default();
    for (file, text) in files {
        collected.read_file(file, text);
    }
    let Collected {
        mut problems,
        mut declared,
        services,
        autoscalers,
        vertical,
    } = collected;
    let mut standalone = Vec::new();
    for entry in autoscalers {
        standalone.extend(join_autoscaler(entry, &mut declared, &mut problems));
    }
    for entry in vertical {
        standalone.extend(join_vertical(entry, &mut declared, &mut problems));
    }
    let objects: HashMap<Source, String> = services
        .iter()
        .map(|s| (s.origin.clone(), s.object.clone()))
        .collect();
    for (origin, error) in join::join(&mut declared, &services) {
        let object = objects.get(&origin).cloned();
        problems.push(Problem {
            origin,
            object,
            error,
        });
    }
    let workloads = declared
        .iter()
        .map(|d| (d.spec.name.as_str(), &d.origin, &d.object));
    check_unique("workload", workloads, &mut problems);
    let named = services
        .iter()
        .map(|s| (s.service.name.as_str(), &s.origin, &s.object));
    check_unique("service", named, &mut problems);
    for entry in &declared {
        validate_declared(entry, &mut problems);
    }
    if problems.is_empty() {
        return Ok(Manifest {
            workloads: declared.into_iter().map(|d| d.spec).collect(),
            services: services.into_iter().map(|s| s.service).collect(),
            autoscalers: standalone,
        });
    }
    let file_position = |file: &str| files.iter().position(|(name, _)| *name == file);
    problems.sort_by_key(|p| (file_position(&p.origin.file), p.origin.document));
    Err(ManifestError { problems })
}

/// Reports every object whose name an earlier one of the same `kind` has; `objects` are
/// `(name, origin, object)` in document order.
fn check_unique<'a>(
    kind: &str,
    objects: impl Iterator<Item = (&'a str, &'a Source, &'a String)>,
    problems: &mut Vec<Problem>,
) {
    let mut first: HashMap<&str, (&Source, &String)> = HashMap::new();
    for (name, origin, object) in objects.filter(|(name, _, _)| !name.is_empty()) {
        match first.get(name) {
            Some((earlier, earlier_object)) => problems.push(Problem {
                origin: origin.clone(),
                object: Some(object.clone()),
                error: FieldError::new(
                    "metadata.name",
                    format!(
                        "{kind} \"{name}\" is already declared in {earlier} ({earlier_object})"
                    ),
                ),
            }),
            None => {
                first.insert(name, (origin, object));
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
        let error = if entry.deployment {
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
            autoscale::HPA_V2 | autoscale::HPA_V1 => self.read_autoscaler(origin, object, value),
            vertical::VPA => self.read_vertical(origin, object, value),
            _ => {
                let error = FieldError::new(
                    "kind",
                    format!(
                        "kind {kind} of apiVersion {api_version} is not supported: Drover reads {} Service, {} {}, {} {}, {} {} and {} {}",
                        drover::API_VERSION,
                        kube::DEPLOYMENT.0,
                        kube::DEPLOYMENT.1,
                        kube::SERVICE.0,
                        kube::SERVICE.1,
                        autoscale::HPA_V2.0,
                        autoscale::HPA_V2.1,
                        vertical::VPA.0,
                        vertical::VPA.1
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
        let (spec, service, errors) = document.into_spec();
        let reported = errors.iter().map(|e| e.path.clone()).collect();
        self.problem(origin.clone(), Some(object.clone()), errors);
        if let Some(service) = service {
            self.services.push(join::ServiceEntry {
                origin: origin.clone(),
                object: object.clone(),
                service,
            });
        }
        self.declared.push(Declared {
            origin,
            object,
            spec,
            deployment: false,
            reported,
            broken: false,
        });
    }

    fn read_deployment(&mut self, origin: Source, object: String, name: String, value: Value) {
        let (spec, errors) = match typed::<kube::Deployment>(value) {
            Ok(document) => {
                let (converted, errors) = deployment::convert(document);
                (converted.spec, errors)
            }
            Err(error) => (WorkloadSpec::new(name, ""), vec![error]),
        };
        let broken = !errors.is_empty();
        self.problem(origin.clone(), Some(object.clone()), errors);
        self.declared.push(Declared {
            origin,
            object,
            spec,
            deployment: true,
            reported: Vec::new(),
            broken,
        });
    }

    fn read_service(&mut self, origin: Source, object: String, value: Value) {
        let converted = typed::<kube::Service>(value)
            .map_err(|error| vec![error])
            .and_then(join::convert);
        match converted {
            Ok(service) => self.services.push(join::ServiceEntry {
                origin,
                object,
                service,
            }),
            Err(errors) => self.problem(origin, Some(object), errors),
        }
    }

    fn read_autoscaler(&mut self, origin: Source, object: String, value: Value) {
        match typed::<HorizontalPodAutoscaler>(value) {
            Ok(hpa) => self.autoscalers.push(AutoscalerEntry {
                origin,
                object,
                name: hpa.metadata.name,
                spec: hpa.spec,
            }),
            Err(error) => self.problem(origin, Some(object), vec![error]),
        }
    }

    fn read_vertical(&mut self, origin: Source, object: String, value: Value) {
        match typed::<VerticalPodAutoscaler>(value) {
            Ok(vpa) => self.vertical.push(VerticalEntry {
                origin,
                object,
                name: vpa.metadata.name,
                spec: vpa.spec,
            }),
            Err(error) => self.problem(origin, Some(object), vec![error]),
        }
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

/// Gives a HorizontalPodAutoscaler's target, declared in the same set, its autoscaling;
/// one whose Deployment is not in the set is returned, for a workload of the cluster.
fn join_autoscaler(
    entry: AutoscalerEntry,
    declared: &mut [Declared],
    problems: &mut Vec<Problem>,
) -> Option<Autoscaler> {
    let mut errors = error::Errors::default();
    let problem = |error: FieldError| Problem {
        origin: entry.origin.clone(),
        object: Some(entry.object.clone()),
        error,
    };
    let name = entry.name.clone();
    let target = match target_of(
        entry.spec.scale_target_ref.as_ref(),
        "spec.scaleTargetRef",
        "spec.autoscale",
        declared,
    ) {
        Ok(target) => target,
        Err(error) => {
            problems.push(problem(error));
            return None;
        }
    };
    let standalone = match target {
        Target::Declared(workload) => {
            if workload.spec.autoscale.is_some() {
                let target = &workload.spec.name;
                problems.push(problem(FieldError::new(
                    "spec.scaleTargetRef.name",
                    format!("Deployment {target:?} already has an autoscaler in this apply"),
                )));
                return None;
            }
            let resources = workload.spec.resources;
            workload.spec.autoscale =
                entry
                    .spec
                    .convert(&mut errors, "spec", Some(resources), Some(name));
            None
        }
        Target::Elsewhere(target) => entry
            .spec
            .convert(&mut errors, "spec", None, Some(name))
            .map(|autoscale| Autoscaler {
                target,
                kind: AutoscalerKind::Horizontal(autoscale),
            }),
    };
    problems.extend(errors.0.into_iter().map(problem));
    standalone
}

/// A document's `apiVersion` or `kind`.
fn header(value: &Value, key: &str) -> Result<String, FieldError> {
    match value.get(key) {
        None => Err(FieldError::new(key, "required field is missing")),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(_) => Err(FieldError::new(key, "must be a string")),
    }
}

fn typed<T: DeserializeOwned>(value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(error::from_serde)
}

/// What an autoscaler's target names: a Deployment of this apply, or (by name) a workload
/// it is not in, which the coordinator looks for in the cluster.
enum Target<'a> {
    Declared(&'a mut Declared),
    Elsewhere(String),
}

/// The workload an autoscaler's `target` (at `path`) names. `own_field`: the field of
/// Drover's own document that does the same.
fn target_of<'a>(
    target: Option<&autoscale::TargetRef>,
    path: &str,
    own_field: &str,
    declared: &'a mut [Declared],
) -> Result<Target<'a>, FieldError> {
    let Some(target) = target else {
        return Err(FieldError::new(path, "required field is missing"));
    };
    if target.kind != "Deployment" {
        return Err(FieldError::new(
            format!("{path}.kind"),
            format!(
                "{}: Drover autoscales Deployments (and its own Services, through {own_field})",
                target.kind
            ),
        ));
    }
    if let Err(reason) = dns_label(&target.name) {
        return Err(FieldError::new(format!("{path}.name"), reason));
    }
    Ok(
        match declared
            .iter_mut()
            .find(|d| d.deployment && d.spec.name == target.name)
        {
            Some(workload) => Target::Declared(workload),
            None => Target::Elsewhere(target.name.clone()),
        },
    )
}

/// Gives a VerticalPodAutoscaler's target, declared in the same set, its vertical
/// autoscaling; one whose Deployment is not in the set is returned, for a workload of the
/// cluster.
fn join_vertical(
    entry: VerticalEntry,
    declared: &mut [Declared],
    problems: &mut Vec<Problem>,
) -> Option<Autoscaler> {
    let problem = |error: FieldError| Problem {
        origin: entry.origin.clone(),
        object: Some(entry.object.clone()),
        error,
    };
    let target = match target_of(
        entry.spec.target_ref.as_ref(),
        "spec.targetRef",
        "spec.verticalAutoscale",
        declared,
    ) {
        Ok(target) => target,
        Err(error) => {
            problems.push(problem(error));
            return None;
        }
    };
    if let Target::Declared(workload) = &target
        && workload.spec.vertical_autoscale.is_some()
    {
        let target = &workload.spec.name;
        problems.push(problem(FieldError::new(
            "spec.targetRef.name",
            format!("Deployment {target:?} already has a vertical autoscaler in this apply"),
        )));
        return None;
    }
    let mut errors = error::Errors::default();
    let name = entry.name.clone();
    let vertical = entry.spec.convert(&mut errors, "spec", Some(name));
    problems.extend(errors.0.into_iter().map(problem));
    match target {
        Target::Declared(workload) => {
            workload.spec.vertical_autoscale = vertical;
            None
        }
        Target::Elsewhere(target) => vertical.map(|v| Autoscaler {
            target,
            kind: AutoscalerKind::Vertical(v),
        }),
    }
}
