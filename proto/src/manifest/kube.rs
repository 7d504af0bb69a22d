//! The Kubernetes subset Drover reads: the fields of `apps/v1 Deployment` and `v1 Service`
//! it supports. Every other field is refused by `deny_unknown_fields`, never dropped.
//!
//! Read-only fields that `kubectl ... -o yaml` writes (`status`, `metadata.creationTimestamp`)
//! are accepted and ignored, as is `imagePullPolicy` (the agent pulls an image it lacks).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::input::{CountOrPercent, Cpu, IntOrName, Memory, Proto, Text};

/// `apiVersion` and `kind` of a Deployment.
pub(crate) const DEPLOYMENT: (&str, &str) = ("apps/v1", "Deployment");
/// `apiVersion` and `kind` of a Service.
pub(crate) const SERVICE: (&str, &str) = ("v1", "Service");

/// An `apps/v1 Deployment` document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Deployment {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    pub(crate) metadata: ObjectMeta,
    pub(crate) spec: DeploymentSpec,
    #[serde(rename = "status")]
    _status: Option<IgnoredAny>,
}

/// Object metadata; Drover has no namespaces beyond `default`. Of the annotations, a
/// Deployment's `drover.dev/auto-revert` is read; the others are ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ObjectMeta {
    pub(crate) name: String,
    pub(crate) namespace: Option<String>,
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) annotations: BTreeMap<String, String>,
    #[serde(rename = "creationTimestamp")]
    _creation_timestamp: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct DeploymentSpec {
    pub(crate) replicas: Option<i64>,
    pub(crate) selector: LabelSelector,
    pub(crate) template: PodTemplate,
    pub(crate) strategy: Option<DeploymentStrategy>,
    pub(crate) min_ready_seconds: Option<i64>,
    pub(crate) progress_deadline_seconds: Option<i64>,
    pub(crate) revision_history_limit: Option<i64>,
    pub(crate) paused: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct LabelSelector {
    #[serde(default)]
    pub(crate) match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct DeploymentStrategy {
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    pub(crate) rolling_update: Option<RollingUpdate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RollingUpdate {
    pub(crate) max_surge: Option<CountOrPercent>,
    pub(crate) max_unavailable: Option<CountOrPercent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PodTemplate {
    #[serde(default)]
    pub(crate) metadata: TemplateMeta,
    pub(crate) spec: PodSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TemplateMeta {
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
    #[serde(default, rename = "annotations")]
    _annotations: BTreeMap<String, String>,
    #[serde(rename = "creationTimestamp")]
    _creation_timestamp: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct PodSpec {
    pub(crate) containers: Vec<Container>,
    pub(crate) restart_policy: Option<String>,
    pub(crate) termination_grace_period_seconds: Option<i64>,
    #[serde(default)]
    pub(crate) node_selector: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Container {
    #[serde(rename = "name")]
    _name: Option<String>,
    pub(crate) image: String,
    pub(crate) image_pull_policy: Option<String>,
    #[serde(default)]
    pub(crate) command: Vec<String>,
    #[serde(default)]
    pub(crate) args: Vec<String>,
    #[serde(default)]
    pub(crate) env: Vec<EnvVar>,
    #[serde(default)]
    pub(crate) ports: Vec<ContainerPort>,
    #[serde(default)]
    pub(crate) resources: ResourceRequirements,
    pub(crate) readiness_probe: Option<Probe>,
    pub(crate) liveness_probe: Option<Probe>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnvVar {
    pub(crate) name: String,
    pub(crate) value: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ContainerPort {
    pub(crate) container_port: i64,
    pub(crate) name: Option<String>,
    pub(crate) protocol: Option<Proto>,
    pub(crate) host_port: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResourceRequirements {
    #[serde(default)]
    pub(crate) requests: ResourceList,
    #[serde(default)]
    pub(crate) limits: ResourceList,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResourceList {
    pub(crate) cpu: Option<Cpu>,
    pub(crate) memory: Option<Memory>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Probe {
    pub(crate) http_get: Option<HttpGet>,
    pub(crate) tcp_socket: Option<TcpSocket>,
    pub(crate) exec: Option<ExecAction>,
    pub(crate) initial_delay_seconds: Option<i64>,
    pub(crate) period_seconds: Option<i64>,
    pub(crate) timeout_seconds: Option<i64>,
    pub(crate) success_threshold: Option<i64>,
    pub(crate) failure_threshold: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpGet {
    pub(crate) path: Option<String>,
    pub(crate) port: IntOrName,
    pub(crate) scheme: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TcpSocket {
    pub(crate) port: IntOrName,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecAction {
    pub(crate) command: Vec<String>,
}

/// A `v1 Service` document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Service {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    pub(crate) metadata: ObjectMeta,
    pub(crate) spec: ServiceSpec,
    #[serde(rename = "status")]
    _status: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceSpec {
    #[serde(default)]
    pub(crate) selector: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) ports: Vec<ServicePort>,
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    #[serde(rename = "clusterIP")]
    pub(crate) cluster_ip: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ServicePort {
    pub(crate) name: Option<String>,
    /// Only TCP deserializes; the published port is TCP.
    #[serde(rename = "protocol")]
    _protocol: Option<Proto>,
    pub(crate) port: i64,
    pub(crate) target_port: Option<IntOrName>,
    pub(crate) node_port: Option<i64>,
}
