//! Horizontal autoscaling as manifests write it: Drover's `spec.autoscale` and the spec of
//! an `autoscaling/v2` (or `v1`) HorizontalPodAutoscaler share Kubernetes' shape
//! (`minReplicas`, `maxReplicas`, `metrics` of type `Resource`, `behavior`), with its
//! defaults (1 replica at least, 80 % CPU when no metric is given, the default behaviour).

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::error::{Errors, at};
use super::input::{QuantityText, count_at_least};
use super::quantity::{parse_cpu, parse_memory};
use crate::model::{
    Autoscale, Resources, ScaleMetric, ScalePolicy, ScaleResource, ScaleRules, ScaleSelect,
    ScaleTarget,
};

/// `apiVersion` and `kind` of a HorizontalPodAutoscaler.
pub(crate) const HPA_V2: (&str, &str) = ("autoscaling/v2", "HorizontalPodAutoscaler");
/// The older version, with only `targetCPUUtilizationPercentage`.
pub(crate) const HPA_V1: (&str, &str) = ("autoscaling/v1", "HorizontalPodAutoscaler");

/// The resources `metrics` target by utilization that `resources` does not request
/// (utilization is usage over request, so such a target cannot be measured).
pub fn unrequested(metrics: &[ScaleMetric], resources: Resources) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = metrics
        .iter()
        .filter(|m| matches!(m.target, ScaleTarget::Utilization(_)))
        .filter(|m| match m.resource {
            ScaleResource::Cpu => resources.cpu_millis == 0,
            ScaleResource::Memory => resources.memory_bytes == 0,
            ScaleResource::ConnectionsPerSecond | ScaleResource::ActiveConnections => false,
        })
        .map(|m| m.resource.as_str())
        .collect();
    names.dedup();
    names
}

/// Why a utilization target of `name` is refused on a workload that does not request it.
pub fn utilization_needs_request(name: &str) -> String {
    format!(
        "a {name} utilization target needs the workload to request {name} (resources.{name}, or the container's resources.requests.{name}): utilization is usage over request"
    )
}

/// Kubernetes' default when an autoscaler names no metric.
const DEFAULT_CPU_UTILIZATION: u32 = 80;

/// `spec.autoscale` of Drover's document, or the spec of a HorizontalPodAutoscaler (with
/// its `scaleTargetRef`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct AutoscaleInput {
    pub(crate) scale_target_ref: Option<TargetRef>,
    min_replicas: Option<i64>,
    max_replicas: i64,
    metrics: Option<Vec<MetricInput>>,
    behavior: Option<BehaviorInput>,
    #[serde(rename = "targetCPUUtilizationPercentage")]
    target_cpu_utilization_percentage: Option<i64>,
}

/// What a HorizontalPodAutoscaler scales.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct TargetRef {
    #[serde(rename = "apiVersion")]
    _api_version: Option<IgnoredAny>,
    pub(crate) kind: String,
    pub(crate) name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricInput {
    #[serde(rename = "type")]
    kind: String,
    resource: Option<ResourceMetricInput>,
    pods: Option<PodsMetricInput>,
    // Named so that a refusal can say what would be lost.
    object: Option<IgnoredAny>,
    external: Option<IgnoredAny>,
    #[serde(rename = "containerResource")]
    container_resource: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceMetricInput {
    name: String,
    target: TargetInput,
}

/// A `Pods` metric: an average over the replicas of a metric each one has; Drover's proxies
/// give every replica `connections_per_second` and `active_connections`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PodsMetricInput {
    metric: MetricIdentifier,
    target: TargetInput,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricIdentifier {
    name: String,
    selector: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TargetInput {
    #[serde(rename = "type")]
    kind: String,
    average_utilization: Option<i64>,
    average_value: Option<QuantityText>,
    value: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BehaviorInput {
    scale_up: Option<RulesInput>,
    scale_down: Option<RulesInput>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RulesInput {
    stabilization_window_seconds: Option<i64>,
    select_policy: Option<String>,
    policies: Option<Vec<PolicyInput>>,
    tolerance: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyInput {
    #[serde(rename = "type")]
    kind: String,
    value: i64,
    period_seconds: i64,
}

impl AutoscaleInput {
    /// The autoscaler, its problems recorded under `base`; `resources` are the workload's
    /// requests (a utilization target needs one), `None` when the workload is not in the
    /// apply (the coordinator checks them). `source`: the HorizontalPodAutoscaler.
    pub(crate) fn convert(
        self,
        errors: &mut Errors,
        base: &str,
        resources: Option<Resources>,
        source: Option<String>,
    ) -> Option<Autoscale> {
        let before = errors.0.len();
        let min_replicas = match self.min_replicas {
            None => 1,
            Some(n) => errors
                .check(at(base, "minReplicas"), count_at_least(n, 1))
                .unwrap_or(1),
        };
        let max_replicas = errors
            .check(
                at(base, "maxReplicas"),
                count_at_least(self.max_replicas, min_replicas.max(1)),
            )
            .unwrap_or(min_replicas);
        let mut metrics = Vec::new();
        if let Some(percent) = self.target_cpu_utilization_percentage {
            if let Some(p) = errors.check(
                at(base, "targetCPUUtilizationPercentage"),
                count_at_least(percent, 1),
            ) {
                metrics.push(ScaleMetric {
                    resource: ScaleResource::Cpu,
                    target: ScaleTarget::Utilization(p),
                });
            }
        }
        for (index, metric) in self.metrics.into_iter().flatten().enumerate() {
            let path = format!("{}[{index}]", at(base, "metrics"));
            if let Some(metric) = convert_metric(errors, &path, metric) {
                metrics.push(metric);
            }
        }
        if metrics.is_empty() {
            metrics.push(ScaleMetric {
                resource: ScaleResource::Cpu,
                target: ScaleTarget::Utilization(DEFAULT_CPU_UTILIZATION),
            });
        }
        if let Some(resources) = resources {
            for name in unrequested(&metrics, resources) {
                errors.push(at(base, "metrics"), utilization_needs_request(name));
            }
        }
        let (mut scale_up, mut scale_down) = (ScaleRules::default_up(), ScaleRules::default_down());
        if let Some(behavior) = self.behavior {
            let path = at(base, "behavior");
            if let Some(rules) = behavior.scale_up {
                convert_rules(errors, &at(&path, "scaleUp"), rules, &mut scale_up);
            }
            if let Some(rules) = behavior.scale_down {
                convert_rules(errors, &at(&path, "scaleDown"), rules, &mut scale_down);
            }
        }
        (errors.0.len() == before).then_some(Autoscale {
            min_replicas,
            max_replicas,
            metrics,
            scale_up,
            scale_down,
            source,
        })
    }
}

fn convert_metric(errors: &mut Errors, path: &str, metric: MetricInput) -> Option<ScaleMetric> {
    let others = |kind: &str| match kind {
        "Resource" => [
            metric.pods.is_some(),
            metric.object.is_some(),
            metric.external.is_some(),
            metric.container_resource.is_some(),
        ],
        _ => [
            metric.resource.is_some(),
            metric.object.is_some(),
            metric.external.is_some(),
            metric.container_resource.is_some(),
        ],
    };
    match metric.kind.as_str() {
        "Resource" | "Pods" if others(&metric.kind).contains(&true) => {
            let field = if metric.kind == "Pods" {
                "pods"
            } else {
                "resource"
            };
            errors.push(path, format!("a {} metric has only `{field}`", metric.kind));
            None
        }
        "Resource" => {
            let Some(resource) = metric.resource else {
                errors.push(at(path, "resource"), "a Resource metric needs `resource`");
                return None;
            };
            convert_resource_metric(errors, path, resource)
        }
        "Pods" => {
            let Some(pods) = metric.pods else {
                errors.push(at(path, "pods"), "a Pods metric needs `pods`");
                return None;
            };
            convert_pods_metric(errors, &at(path, "pods"), pods)
        }
        other => {
            errors.push(
                at(path, "type"),
                format!(
                    "metrics of type {other} are not supported: Drover measures each replica's cpu and memory itself (type: Resource) and its proxies count each replica's connections (type: Pods, connections_per_second or active_connections); no metrics pipeline feeds Object or External metrics"
                ),
            );
            None
        }
    }
}

/// A `Pods` metric, from the proxies' counts.
fn convert_pods_metric(
    errors: &mut Errors,
    path: &str,
    pods: PodsMetricInput,
) -> Option<ScaleMetric> {
    let metric_path = at(path, "metric");
    if pods.metric.selector.is_some() {
        errors.push(
            at(&metric_path, "selector"),
            "a metric selector is not supported: the proxies' metrics have no labels to select on",
        );
        return None;
    }
    let resource = match pods.metric.name.as_str() {
        "connections_per_second" => ScaleResource::ConnectionsPerSecond,
        "active_connections" => ScaleResource::ActiveConnections,
        other => {
            errors.push(
                at(&metric_path, "name"),
                format!(
                    "pod metric {other:?} is not measured: Drover's proxies count connections_per_second and active_connections"
                ),
            );
            return None;
        }
    };
    let path = at(path, "target");
    let target = pods.target;
    let (kind, Some(text), None, None) = (
        target.kind.as_str(),
        target.average_value,
        target.average_utilization,
        target.value,
    ) else {
        errors.push(
            &path,
            "a Pods metric's target is type AverageValue with averageValue (per replica), and only it",
        );
        return None;
    };
    if kind != "AverageValue" {
        errors.push(
            at(&path, "type"),
            format!("target type {kind:?}: a Pods metric takes AverageValue"),
        );
        return None;
    }
    // A plain quantity in thousandths: "10" is 10000, "500m" is 500 (as CPU is written).
    let value = errors.check(
        at(&path, "averageValue"),
        parse_cpu(&text.0).map_err(|e| e.to_string()),
    )?;
    if value == 0 {
        errors.push(at(&path, "averageValue"), "must be more than 0");
        return None;
    }
    Some(ScaleMetric {
        resource,
        target: ScaleTarget::AverageValue(value),
    })
}

/// A `Resource` metric: cpu or memory, from the cgroups.
fn convert_resource_metric(
    errors: &mut Errors,
    path: &str,
    resource: ResourceMetricInput,
) -> Option<ScaleMetric> {
    let path = at(path, "resource");
    let name = match resource.name.as_str() {
        "cpu" => ScaleResource::Cpu,
        "memory" => ScaleResource::Memory,
        other => {
            errors.push(
                at(&path, "name"),
                format!("resource {other:?} is not measured: cpu or memory"),
            );
            return None;
        }
    };
    let target = resource.target;
    let path = at(&path, "target");
    if target.value.is_some() {
        errors.push(
            at(&path, "value"),
            "a Resource metric's target is averageUtilization or averageValue (per replica), not value",
        );
        return None;
    }
    let target = match (
        target.kind.as_str(),
        target.average_utilization,
        target.average_value,
    ) {
        ("Utilization", Some(percent), None) => ScaleTarget::Utilization(
            errors.check(at(&path, "averageUtilization"), count_at_least(percent, 1))?,
        ),
        ("AverageValue", None, Some(text)) => {
            let parsed = match name {
                ScaleResource::Memory => parse_memory(&text.0),
                _ => parse_cpu(&text.0),
            };
            let value =
                errors.check(at(&path, "averageValue"), parsed.map_err(|e| e.to_string()))?;
            if value == 0 {
                errors.push(at(&path, "averageValue"), "must be more than 0");
                return None;
            }
            ScaleTarget::AverageValue(value)
        }
        ("Utilization", ..) => {
            errors.push(
                &path,
                "type Utilization takes averageUtilization (a percent of the request), and only it",
            );
            return None;
        }
        ("AverageValue", ..) => {
            errors.push(
                &path,
                "type AverageValue takes averageValue (per replica), and only it",
            );
            return None;
        }
        (other, ..) => {
            errors.push(
                at(&path, "type"),
                format!("target type {other:?}: Utilization or AverageValue"),
            );
            return None;
        }
    };
    Some(ScaleMetric {
        resource: name,
        target,
    })
}

fn convert_rules(errors: &mut Errors, path: &str, input: RulesInput, rules: &mut ScaleRules) {
    if input.tolerance.is_some() {
        errors.push(
            at(path, "tolerance"),
            "a per-autoscaler tolerance is not supported: Drover uses Kubernetes' 10 %",
        );
    }
    if let Some(seconds) = input.stabilization_window_seconds {
        match u32::try_from(seconds) {
            Ok(s) if s <= 3600 => rules.stabilization_seconds = s,
            _ => errors.push(
                at(path, "stabilizationWindowSeconds"),
                format!("must be 0 to 3600, got {seconds}"),
            ),
        }
    }
    if let Some(select) = input.select_policy {
        rules.select = match select.as_str() {
            "Max" => ScaleSelect::Max,
            "Min" => ScaleSelect::Min,
            "Disabled" => ScaleSelect::Disabled,
            other => {
                errors.push(
                    at(path, "selectPolicy"),
                    format!("{other:?}: Max, Min or Disabled"),
                );
                rules.select
            }
        };
    }
    if let Some(policies) = input.policies {
        rules.policies = Vec::with_capacity(policies.len());
        for (index, policy) in policies.into_iter().enumerate() {
            let path = format!("{}[{index}]", at(path, "policies"));
            let percent = match policy.kind.as_str() {
                "Pods" => false,
                "Percent" => true,
                other => {
                    errors.push(at(&path, "type"), format!("{other:?}: Pods or Percent"));
                    continue;
                }
            };
            let value = errors.check(at(&path, "value"), count_at_least(policy.value, 1));
            let period = match u32::try_from(policy.period_seconds) {
                Ok(p) if (1..=1800).contains(&p) => Some(p),
                _ => {
                    errors.push(
                        at(&path, "periodSeconds"),
                        format!("must be 1 to 1800, got {}", policy.period_seconds),
                    );
                    None
                }
            };
            if let (Some(value), Some(period_seconds)) = (value, period) {
                rules.policies.push(ScalePolicy {
                    percent,
                    value,
                    period_seconds,
                });
            }
        }
        if rules.policies.is_empty() && rules.select != ScaleSelect::Disabled {
            errors.push(
                at(path, "policies"),
                "at least one policy, or selectPolicy: Disabled",
            );
        }
    }
}
