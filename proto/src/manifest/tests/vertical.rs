//! Vertical autoscaling from Drover's `spec.verticalAutoscale` and from
//! VerticalPodAutoscalers.

use super::*;
use crate::model::{Resources, VerticalAutoscale, VerticalMode};

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: web:1
          resources: {requests: {cpu: 200m, memory: 64Mi}}
";

/// As the VPA documentation's examples write one.
const VPA: &str = "apiVersion: autoscaling.k8s.io/v1
kind: VerticalPodAutoscaler
metadata: {name: web-vpa}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  updatePolicy: {updateMode: InPlaceOrRecreate, minReplicas: 1}
  resourcePolicy:
    containerPolicies:
      - containerName: '*'
        minAllowed: {cpu: 100m, memory: 50Mi}
        maxAllowed: {cpu: 1, memory: 500Mi}
        controlledResources: [cpu, memory]
";

fn vertical_of(text: &str) -> Option<VerticalAutoscale> {
    let manifest = parse_files(&files(&[("app.yaml", text)])).expect("parses");
    manifest.workloads[0].vertical_autoscale.clone()
}

#[test]
fn a_vertical_pod_autoscaler_gives_its_deployment_vertical_autoscaling() {
    let vertical = vertical_of(&format!("{DEPLOYMENT}---\n{VPA}")).expect("autoscaled");
    assert_eq!(
        vertical,
        VerticalAutoscale {
            mode: VerticalMode::InPlace,
            min_allowed: Resources {
                cpu_millis: 100,
                memory_bytes: 50 << 20,
            },
            max_allowed: Resources {
                cpu_millis: 1000,
                memory_bytes: 500 << 20,
            },
            controls_cpu: true,
            controls_memory: true,
            source: Some("web-vpa".into()),
        }
    );
}

#[test]
fn the_modes_and_the_defaults_are_vpas() {
    let bare = "apiVersion: autoscaling.k8s.io/v1\nkind: VerticalPodAutoscaler\nmetadata: {name: v}\n\
                spec:\n  targetRef: {kind: Deployment, name: web}\n";
    let vertical = vertical_of(&format!("{DEPLOYMENT}---\n{bare}")).expect("autoscaled");
    // No updatePolicy: VPA's Auto, which Drover does in place.
    assert_eq!(vertical.mode, VerticalMode::InPlace);
    assert_eq!(vertical.min_allowed, Resources::default());
    assert_eq!(vertical.max_allowed, Resources::default());
    assert!(vertical.controls_cpu && vertical.controls_memory);
    for (written, mode) in [
        ("\"Off\"", VerticalMode::Off),
        ("Initial", VerticalMode::Initial),
        ("Recreate", VerticalMode::Recreate),
        ("Auto", VerticalMode::InPlace),
        ("InPlace", VerticalMode::InPlace),
    ] {
        let text = format!("{bare}  updatePolicy: {{updateMode: {written}}}\n");
        let vertical = vertical_of(&format!("{DEPLOYMENT}---\n{text}")).expect("autoscaled");
        assert_eq!(vertical.mode, mode, "{written}");
    }
    // A container policy that is Off turns the one container's autoscaling off.
    let off = format!(
        "{bare}  resourcePolicy:\n    containerPolicies:\n      - {{containerName: web, mode: \"Off\"}}\n      - {{containerName: '*', controlledResources: [memory]}}\n"
    );
    let vertical = vertical_of(&format!("{DEPLOYMENT}---\n{off}")).expect("autoscaled");
    assert_eq!(vertical.mode, VerticalMode::Off);
    assert!(vertical.controls_cpu && vertical.controls_memory);
}

#[test]
fn drovers_own_document_declares_it_inline() {
    let text = "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {name: api}\nspec:\n  image: api\n  \
                resources: {cpu: 250m, memory: 64Mi}\n  \
                verticalAutoscale: {mode: \"Off\", maxAllowed: {memory: 1Gi}, controlledResources: [memory]}\n";
    let vertical = vertical_of(text).expect("autoscaled");
    assert_eq!(vertical.mode, VerticalMode::Off);
    assert_eq!(vertical.max_allowed.memory_bytes, 1 << 30);
    assert!(!vertical.controls_cpu && vertical.controls_memory);
    assert_eq!(vertical.source, None);
    let message = refused(&[(
        "api.yaml",
        &text.replace(
            "mode: \"Off\"",
            "mode: Sometimes, targetRef: {kind: Deployment, name: x}",
        ),
    )]);
    for expected in [
        "spec.verticalAutoscale.targetRef",
        "spec.verticalAutoscale.mode: \"Sometimes\"",
    ] {
        assert!(message.contains(expected), "{expected:?} in {message}");
    }
}

#[test]
fn every_problem_is_named() {
    let vpa = "apiVersion: autoscaling.k8s.io/v1\nkind: VerticalPodAutoscaler\nmetadata: {name: v}\nspec:\n  \
               targetRef: {kind: Deployment, name: web}\n  updatePolicy: {updateMode: Sometimes}\n  \
               recommenders: [{name: fancy}]\n  resourcePolicy:\n    containerPolicies:\n      \
               - containerName: web\n        mode: Maybe\n        minAllowed: {memory: 1Gi}\n        maxAllowed: {memory: 1Mi}\n        \
               controlledResources: [gpu]\n        controlledValues: RequestsOnly\n";
    let message = refused(&[("app.yaml", &format!("{DEPLOYMENT}---\n{vpa}"))]);
    for expected in [
        "spec.updatePolicy.updateMode: \"Sometimes\"",
        "spec.recommenders[0].name: recommender \"fancy\"",
        "spec.resourcePolicy.containerPolicies[0].mode: \"Maybe\"",
        "containerPolicies[0].minAllowed.memory: minAllowed.memory is above maxAllowed.memory",
        "containerPolicies[0].controlledResources[0]: \"gpu\"",
        "containerPolicies[0].controlledValues: \"RequestsOnly\"",
    ] {
        assert!(message.contains(expected), "{expected:?} in {message}");
    }
    let two = "apiVersion: autoscaling.k8s.io/v1\nkind: VerticalPodAutoscaler\nmetadata: {name: v}\nspec:\n  \
               targetRef: {kind: Deployment, name: web}\n  resourcePolicy:\n    containerPolicies:\n      \
               - {containerName: web}\n      - {containerName: sidecar}\n";
    let message = refused(&[("app.yaml", &format!("{DEPLOYMENT}---\n{two}"))]);
    assert!(
        message
            .contains("containerPolicies[1].containerName: a Drover workload runs one container"),
        "{message}"
    );
}

#[test]
fn an_autoscaler_alone_is_for_a_workload_of_the_cluster_and_another_kind_is_refused() {
    let manifest = parse_files(&files(&[("vpa.yaml", VPA)])).expect("parses");
    assert_eq!(manifest.autoscalers.len(), 1);
    assert_eq!(manifest.autoscalers[0].target, "web");
    assert_eq!(manifest.autoscalers[0].name(), "web-vpa");
    assert!(matches!(
        &manifest.autoscalers[0].kind,
        crate::model::AutoscalerKind::Vertical(v) if v.mode == VerticalMode::InPlace
    ));
    let stateful = VPA.replace("kind: Deployment", "kind: StatefulSet");
    let message = refused(&[("app.yaml", &format!("{DEPLOYMENT}---\n{stateful}"))]);
    assert!(
        message.contains("spec.targetRef.kind: StatefulSet: Drover autoscales Deployments"),
        "{message}"
    );
    let twice = format!(
        "{DEPLOYMENT}---\n{VPA}---\n{}",
        VPA.replace("web-vpa", "again")
    );
    let message = refused(&[("app.yaml", &twice)]);
    assert!(
        message.contains("already has a vertical autoscaler in this apply"),
        "{message}"
    );
}
