//! Autoscaling from Drover's `spec.autoscale` and from HorizontalPodAutoscalers.

use super::*;
use crate::model::{Autoscale, ScaleMetric, ScaleResource, ScaleRules, ScaleSelect, ScaleTarget};

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: web:1
          resources: {requests: {cpu: 200m, memory: 64Mi}}
";

const HPA: &str = "apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web-hpa}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 2
  maxReplicas: 10
  metrics:
    - type: Resource
      resource: {name: cpu, target: {type: Utilization, averageUtilization: 60}}
    - type: Resource
      resource: {name: memory, target: {type: AverageValue, averageValue: 100Mi}}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 60
      policies: [{type: Pods, value: 1, periodSeconds: 30}]
";

fn autoscale_of(text: &str) -> Option<Autoscale> {
    let manifest = parse_files(&files(&[("app.yaml", text)])).expect("parses");
    manifest.workloads[0].autoscale.clone()
}

#[test]
fn a_horizontal_pod_autoscaler_gives_its_deployment_autoscaling() {
    let autoscale = autoscale_of(&format!("{DEPLOYMENT}---\n{HPA}")).expect("autoscaled");
    assert_eq!(autoscale.min_replicas, 2);
    assert_eq!(autoscale.max_replicas, 10);
    assert_eq!(
        autoscale.metrics,
        [
            ScaleMetric {
                resource: ScaleResource::Cpu,
                target: ScaleTarget::Utilization(60),
            },
            ScaleMetric {
                resource: ScaleResource::Memory,
                target: ScaleTarget::AverageValue(100 << 20),
            },
        ]
    );
    assert_eq!(autoscale.scale_up, ScaleRules::default_up());
    assert_eq!(autoscale.scale_down.stabilization_seconds, 60);
    assert_eq!(autoscale.scale_down.select, ScaleSelect::Max);
    assert_eq!(autoscale.scale_down.policies.len(), 1);
    assert_eq!(autoscale.source.as_deref(), Some("web-hpa"));
    // Either order.
    assert_eq!(
        autoscale_of(&format!("{HPA}---\n{DEPLOYMENT}")).map(|a| a.max_replicas),
        Some(10)
    );
}

#[test]
fn without_metrics_it_is_80_percent_cpu_and_v1_has_its_one_field() {
    let hpa = "apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata: {name: h}\nspec:\n  \
               scaleTargetRef: {kind: Deployment, name: web}\n  maxReplicas: 4\n  targetCPUUtilizationPercentage: 50\n";
    let autoscale = autoscale_of(&format!("{DEPLOYMENT}---\n{hpa}")).expect("autoscaled");
    assert_eq!(autoscale.min_replicas, 1);
    assert_eq!(autoscale.metrics[0].target, ScaleTarget::Utilization(50));
    let bare = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: h}\nspec:\n  \
                scaleTargetRef: {kind: Deployment, name: web}\n  maxReplicas: 4\n";
    let autoscale = autoscale_of(&format!("{DEPLOYMENT}---\n{bare}")).expect("autoscaled");
    assert_eq!(autoscale.metrics[0].target, ScaleTarget::Utilization(80));
}

#[test]
fn drovers_own_document_has_spec_autoscale() {
    let text = "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  image: web:1\n  \
                resources: {cpu: 500m}\n  autoscale:\n    minReplicas: 2\n    maxReplicas: 6\n    metrics:\n      \
                - type: Resource\n        resource: {name: cpu, target: {type: Utilization, averageUtilization: 70}}\n";
    let autoscale = autoscale_of(text).expect("autoscaled");
    assert_eq!((autoscale.min_replicas, autoscale.max_replicas), (2, 6));
    assert_eq!(autoscale.source, None);
}

#[test]
fn every_problem_of_an_autoscaler_is_named() {
    let hpa = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: h}\nspec:\n  \
               scaleTargetRef: {kind: Deployment, name: web}\n  minReplicas: 5\n  maxReplicas: 3\n  metrics:\n    \
               - type: Object\n      object: {}\n    - type: Pods\n      pods: {metric: {name: qps}, target: {type: AverageValue, averageValue: 10}}\n    - type: Resource\n      resource: {name: gpu, target: {type: Utilization, averageUtilization: 5}}\n  \
               behavior:\n    scaleUp: {selectPolicy: Fastest, policies: [{type: Pods, value: 0, periodSeconds: 4000}]}\n";
    let message = refused(&[("app.yaml", &format!("{DEPLOYMENT}---\n{hpa}"))]);
    for expected in [
        "spec.maxReplicas",
        "metrics of type Object are not supported",
        "spec.metrics[1].pods.metric.name: pod metric \"qps\" is not measured",
        "resource \"gpu\" is not measured",
        "spec.behavior.scaleUp.selectPolicy",
        "spec.behavior.scaleUp.policies[0].value",
        "spec.behavior.scaleUp.policies[0].periodSeconds",
    ] {
        assert!(message.contains(expected), "{expected:?} in {message}");
    }
}

#[test]
fn an_autoscaler_alone_is_for_a_workload_of_the_cluster_and_one_without_a_request_is_refused() {
    let manifest = parse_files(&files(&[("hpa.yaml", HPA)])).expect("parses");
    assert!(manifest.workloads.is_empty());
    assert_eq!(manifest.autoscalers.len(), 1);
    let autoscaler = &manifest.autoscalers[0];
    assert_eq!(autoscaler.target, "web");
    assert_eq!(autoscaler.name(), "web-hpa");
    assert_eq!(autoscaler.kind_name(), "HorizontalPodAutoscaler");
    let crate::model::AutoscalerKind::Horizontal(autoscale) = &autoscaler.kind else {
        panic!("horizontal: {autoscaler:?}");
    };
    assert_eq!(autoscale.max_replicas, 10);
    let message = refused(&[("hpa.yaml", &HPA.replace("name: web}", "name: Web_1}"))]);
    assert!(message.contains("spec.scaleTargetRef.name"), "{message}");
    let no_request = DEPLOYMENT.replace(
        "          resources: {requests: {cpu: 200m, memory: 64Mi}}\n",
        "",
    );
    let message = refused(&[("app.yaml", &format!("{no_request}---\n{HPA}"))]);
    assert!(
        message.contains("a cpu utilization target needs the workload to request cpu"),
        "{message}"
    );
}

#[test]
fn pods_metrics_are_the_proxies_connection_counts() {
    let hpa = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: h}\nspec:\n  \
               scaleTargetRef: {kind: Deployment, name: web}\n  maxReplicas: 8\n  metrics:\n    \
               - type: Pods\n      pods: {metric: {name: connections_per_second}, target: {type: AverageValue, averageValue: 50}}\n    \
               - type: Pods\n      pods: {metric: {name: active_connections}, target: {type: AverageValue, averageValue: 2500m}}\n";
    let autoscale = autoscale_of(&format!("{DEPLOYMENT}---\n{hpa}")).expect("autoscaled");
    assert_eq!(
        autoscale.metrics,
        [
            ScaleMetric {
                resource: ScaleResource::ConnectionsPerSecond,
                target: ScaleTarget::AverageValue(50_000),
            },
            ScaleMetric {
                resource: ScaleResource::ActiveConnections,
                target: ScaleTarget::AverageValue(2_500),
            },
        ]
    );
    let utilization = hpa.replace(
        "{type: AverageValue, averageValue: 50}",
        "{type: Utilization, averageUtilization: 50}",
    );
    let message = refused(&[("app.yaml", &format!("{DEPLOYMENT}---\n{utilization}"))]);
    assert!(
        message
            .contains("spec.metrics[0].pods.target: a Pods metric's target is type AverageValue"),
        "{message}"
    );
}
