//! Vertical autoscaling as manifests write it: Drover's `spec.verticalAutoscale` and the
//! spec of an `autoscaling.k8s.io/v1` VerticalPodAutoscaler share VPA's shape
//! (`updatePolicy.updateMode`, `resourcePolicy.containerPolicies` with `minAllowed`,
//! `maxAllowed` and `controlledResources`), with VPA's defaults (mode `Auto`, both
//! resources controlled, no bounds).
//!
//! VPA's modes map onto Drover's: `Off`, `Initial` and `Recreate` as they are; `InPlace`,
//! `InPlaceOrRecreate` and `Auto` (which VPA leaves to the autoscaler to choose) are
//! Drover's `InPlace`, which resizes a running container without a restart and replaces a
//! replica only where its node cannot hold the increase. A workload runs one container, so
//! at most one container policy applies: the one naming a container, else the `"*"` one.

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::error::{Errors, at};
use super::kube::ResourceList;
use crate::model::{Resources, VerticalAutoscale, VerticalMode};

/// `apiVersion` and `kind` of a VerticalPodAutoscaler.
pub(crate) const VPA: (&str, &str) = ("autoscaling.k8s.io/v1", "VerticalPodAutoscaler");

/// `spec.verticalAutoscale` of Drover's document (`mode` and the policy's fields at the
/// top), or the spec of a VerticalPodAutoscaler (with its `targetRef`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct VerticalInput {
    pub(crate) target_ref: Option<super::autoscale::TargetRef>,
    update_policy: Option<UpdatePolicyInput>,
    resource_policy: Option<ResourcePolicyInput>,
    recommenders: Option<Vec<RecommenderInput>>,
    // Drover's own document: the mode and the policy inline.
    mode: Option<String>,
    min_allowed: Option<ResourceList>,
    max_allowed: Option<ResourceList>,
    controlled_resources: Option<Vec<String>>,
    controlled_values: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpdatePolicyInput {
    update_mode: Option<String>,
    /// VPA's floor of replicas for evictions; Drover's replacements keep every replica
    /// serving (one at a time, the new one ready first), so any value is accepted.
    #[serde(rename = "minReplicas")]
    _min_replicas: Option<i64>,
    eviction_requirements: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ResourcePolicyInput {
    #[serde(default)]
    container_policies: Vec<ContainerPolicyInput>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ContainerPolicyInput {
    container_name: Option<String>,
    mode: Option<String>,
    min_allowed: Option<ResourceList>,
    max_allowed: Option<ResourceList>,
    controlled_resources: Option<Vec<String>>,
    controlled_values: Option<String>,
}

/// The bounds and resources of the policy that applies.
#[derive(Debug, Default)]
struct PolicyFields {
    min_allowed: Option<ResourceList>,
    max_allowed: Option<ResourceList>,
    controlled_resources: Option<Vec<String>>,
    controlled_values: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecommenderInput {
    name: String,
}

impl VerticalInput {
    /// The vertical autoscaler, its problems recorded under `base`. `source`: the
    /// VerticalPodAutoscaler.
    pub(crate) fn convert(
        self,
        errors: &mut Errors,
        base: &str,
        source: Option<String>,
    ) -> Option<VerticalAutoscale> {
        let before = errors.0.len();
        for (index, recommender) in self.recommenders.iter().flatten().enumerate() {
            if recommender.name != "default" {
                errors.push(
                    format!("{}[{index}].name", at(base, "recommenders")),
                    format!(
                        "recommender {:?}: Drover has its own recommender only (\"default\")",
                        recommender.name
                    ),
                );
            }
        }
        let (mode_text, mode_path) = match (&self.mode, &self.update_policy) {
            (Some(mode), _) => (Some(mode.as_str()), at(base, "mode")),
            (None, Some(policy)) => (
                policy.update_mode.as_deref(),
                at(&at(base, "updatePolicy"), "updateMode"),
            ),
            (None, None) => (None, at(base, "mode")),
        };
        if self
            .update_policy
            .as_ref()
            .is_some_and(|p| p.eviction_requirements.is_some())
        {
            errors.push(
                at(&at(base, "updatePolicy"), "evictionRequirements"),
                "not supported: Drover resizes in place or replaces one replica at a time",
            );
        }
        let mut mode = match mode_text.unwrap_or("Auto") {
            "Off" => VerticalMode::Off,
            "Initial" => VerticalMode::Initial,
            "Recreate" => VerticalMode::Recreate,
            "InPlace" | "InPlaceOrRecreate" | "Auto" => VerticalMode::InPlace,
            other => {
                errors.push(
                    mode_path,
                    format!(
                        "{other:?}: the modes are Off, Initial, InPlace (also written InPlaceOrRecreate or Auto) and Recreate"
                    ),
                );
                VerticalMode::Off
            }
        };
        let policies = self
            .resource_policy
            .map(|p| p.container_policies)
            .unwrap_or_default();
        let inline = PolicyFields {
            min_allowed: self.min_allowed,
            max_allowed: self.max_allowed,
            controlled_resources: self.controlled_resources,
            controlled_values: self.controlled_values,
        };
        let (fields, fields_path) = if policies.is_empty() {
            (inline, base.to_string())
        } else {
            if inline.min_allowed.is_some()
                || inline.max_allowed.is_some()
                || inline.controlled_resources.is_some()
                || inline.controlled_values.is_some()
            {
                errors.push(
                    at(base, "resourcePolicy"),
                    "give the bounds either inline or in resourcePolicy, not both",
                );
            }
            let base_policies = at(&at(base, "resourcePolicy"), "containerPolicies");
            match pick_policy(errors, &base_policies, policies) {
                Some((index, policy)) => {
                    let path = format!("{base_policies}[{index}]");
                    match policy.mode.as_deref() {
                        None | Some("Auto") => {}
                        Some("Off") => mode = VerticalMode::Off,
                        Some(other) => errors.push(
                            at(&path, "mode"),
                            format!("{other:?}: a container policy's mode is Auto or Off"),
                        ),
                    }
                    let fields = PolicyFields {
                        min_allowed: policy.min_allowed,
                        max_allowed: policy.max_allowed,
                        controlled_resources: policy.controlled_resources,
                        controlled_values: policy.controlled_values,
                    };
                    (fields, path)
                }
                None => (PolicyFields::default(), base.to_string()),
            }
        };
        let (controls_cpu, controls_memory) = controlled(errors, &fields_path, &fields);
        let bound = |list: Option<ResourceList>| {
            list.map(|l| Resources {
                cpu_millis: l.cpu.map_or(0, |c| c.0),
                memory_bytes: l.memory.map_or(0, |m| m.0),
            })
            .unwrap_or_default()
        };
        let min_allowed = bound(fields.min_allowed);
        let max_allowed = bound(fields.max_allowed);
        for (name, min, max) in [
            ("cpu", min_allowed.cpu_millis, max_allowed.cpu_millis),
            ("memory", min_allowed.memory_bytes, max_allowed.memory_bytes),
        ] {
            if max != 0 && min > max {
                errors.push(
                    at(&at(&fields_path, "minAllowed"), name),
                    format!("minAllowed.{name} is above maxAllowed.{name}"),
                );
            }
        }
        (errors.0.len() == before).then_some(VerticalAutoscale {
            mode,
            min_allowed,
            max_allowed,
            controls_cpu,
            controls_memory,
            source,
        })
    }
}

/// The container policy that applies to the workload's one container: the one naming a
/// container over the `"*"` one; two of either kind are refused.
fn pick_policy(
    errors: &mut Errors,
    base: &str,
    policies: Vec<ContainerPolicyInput>,
) -> Option<(usize, ContainerPolicyInput)> {
    let named: Vec<usize> = policies
        .iter()
        .enumerate()
        .filter(|(_, p)| p.container_name.as_deref().is_some_and(|n| n != "*"))
        .map(|(i, _)| i)
        .collect();
    if named.len() > 1 {
        errors.push(
            format!("{base}[{}].containerName", named[1]),
            "a Drover workload runs one container: give one container policy (or one for \"*\")",
        );
        return None;
    }
    let wildcards = policies
        .iter()
        .filter(|p| p.container_name.as_deref().is_none_or(|n| n == "*"))
        .count();
    if wildcards > 1 {
        errors.push(base, "more than one container policy for \"*\"");
        return None;
    }
    let index = named.first().copied().unwrap_or(0);
    policies.into_iter().enumerate().nth(index)
}

/// Which resources the policy sets: `controlledResources` (default both); only
/// `RequestsAndLimits` values, since a Drover replica's reservation is its limit.
fn controlled(errors: &mut Errors, base: &str, fields: &PolicyFields) -> (bool, bool) {
    if let Some(values) = fields.controlled_values.as_deref() {
        if values != "RequestsAndLimits" {
            errors.push(
                at(base, "controlledValues"),
                format!(
                    "{values:?}: a Drover replica's reservation is its limit, so both change together (RequestsAndLimits)"
                ),
            );
        }
    }
    let Some(names) = &fields.controlled_resources else {
        return (true, true);
    };
    let (mut cpu, mut memory) = (false, false);
    for (index, name) in names.iter().enumerate() {
        match name.as_str() {
            "cpu" => cpu = true,
            "memory" => memory = true,
            other => errors.push(
                format!("{}[{index}]", at(base, "controlledResources")),
                format!("{other:?}: the resources are cpu and memory"),
            ),
        }
    }
    if !cpu && !memory {
        errors.push(
            at(base, "controlledResources"),
            "names no resource: give cpu, memory or both",
        );
    }
    (cpu, memory)
}
