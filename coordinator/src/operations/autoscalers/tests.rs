//! Autoscalers applied on their own, through the operations an apply and a delete run.

use super::super::{apply as apply_manifest, delete as delete_named};
use super::*;

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
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
  minReplicas: 5
  maxReplicas: 8
";

const VPA: &str = "apiVersion: autoscaling.k8s.io/v1
kind: VerticalPodAutoscaler
metadata: {name: web-vpa}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  updatePolicy: {updateMode: \"Off\"}
";

/// Applies `text` to `state` as `drover apply` would; the outcomes, or the refusal.
fn apply(state: &mut ClusterState, text: &str) -> Result<Vec<ApplyOutcome>, String> {
    let manifest =
        drover_proto::manifest::parse_str("app.yaml", text).map_err(|e| e.to_string())?;
    let mut changes = ChangeSet::new(state, 1_000);
    let outcomes = apply_manifest(state, &manifest, "", &mut changes).map_err(|e| e.to_string())?;
    let (writes, _) = changes.finish();
    state.apply(&writes);
    Ok(outcomes)
}

fn record(state: &ClusterState) -> &WorkloadRecord {
    &state.stored.workloads["web"]
}

#[test]
fn an_autoscaler_applied_alone_scales_a_stored_workload_and_stays_through_its_applies() {
    let mut state = ClusterState::default();
    apply(&mut state, DEPLOYMENT).expect("deployment");
    let outcomes = apply(&mut state, &format!("{HPA}---\n{VPA}")).expect("autoscalers");
    assert_eq!(
        outcomes
            .iter()
            .map(|o| (o.kind, o.name.as_str(), o.change))
            .collect::<Vec<_>>(),
        [
            (ObjectKind::Autoscaler, "web-hpa", ApplyChange::Created),
            (ObjectKind::Autoscaler, "web-vpa", ApplyChange::Created),
        ]
    );
    // Within the new bounds at once.
    assert_eq!(record(&state).replicas, 5);
    assert_eq!(
        record(&state)
            .autoscale
            .as_ref()
            .and_then(|a| a.source.as_deref()),
        Some("web-hpa")
    );
    assert!(record(&state).vertical_autoscale.is_some());
    // Again: unchanged.
    let outcomes = apply(&mut state, HPA).expect("again");
    assert_eq!(outcomes[0].change, ApplyChange::Unchanged);

    // The Deployment applied again without them: they stay, and so does the count.
    let outcomes = apply(&mut state, &DEPLOYMENT.replace("web:1", "web:2")).expect("update");
    assert_eq!(outcomes[0].change, ApplyChange::Updated);
    assert!(record(&state).autoscale.is_some());
    assert!(record(&state).vertical_autoscale.is_some());
    assert_eq!(record(&state).replicas, 5);

    // Deleted by name: the workload keeps what the autoscaler left.
    let mut changes = ChangeSet::new(&state, 2_000);
    let deleted = delete_named(
        &state,
        "web-hpa",
        Some(ObjectKind::Autoscaler),
        &mut changes,
    )
    .expect("delete");
    assert_eq!(deleted.autoscalers, ["HorizontalPodAutoscaler"]);
    assert!(!deleted.workload);
    let (writes, events) = changes.finish();
    state.apply(&writes);
    assert!(record(&state).autoscale.is_none());
    assert!(record(&state).vertical_autoscale.is_some());
    assert_eq!(record(&state).replicas, 5);
    assert!(
        events[0]
            .message
            .contains("HorizontalPodAutoscaler web-hpa deleted; web keeps its 5 replicas"),
        "{events:?}"
    );
    let mut changes = ChangeSet::new(&state, 3_000);
    let missing = delete_named(
        &state,
        "web-hpa",
        Some(ObjectKind::Autoscaler),
        &mut changes,
    );
    assert!(missing.is_err());
}

#[test]
fn an_autoscaler_alone_for_a_missing_workload_a_held_one_or_without_a_request_is_refused() {
    let mut state = ClusterState::default();
    let refused = apply(&mut state, HPA).expect_err("no workload");
    assert!(
        refused.contains(
            "HorizontalPodAutoscaler \"web-hpa\": workload \"web\" does not exist: apply its Deployment first, or together with it"
        ),
        "{refused}"
    );
    apply(&mut state, DEPLOYMENT).expect("deployment");
    apply(&mut state, HPA).expect("hpa");
    let other = HPA.replace("name: web-hpa", "name: other");
    let refused = apply(&mut state, &other).expect_err("held");
    assert!(
        refused
            .contains("workload \"web\" is already autoscaled by web-hpa: delete that one first"),
        "{refused}"
    );
    let mut bare = ClusterState::default();
    apply(
        &mut bare,
        &DEPLOYMENT.replace(
            "          resources: {requests: {cpu: 200m, memory: 64Mi}}\n",
            "",
        ),
    )
    .expect("deployment");
    let refused = apply(&mut bare, HPA).expect_err("no request");
    assert!(
        refused.contains("a cpu utilization target needs the workload to request cpu"),
        "{refused}"
    );
    // Nothing was written by the refusals.
    assert!(record(&bare).autoscale.is_none());
}

#[test]
fn a_drover_document_that_drops_its_own_autoscale_loses_it() {
    let doc = "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  image: web:1\n  \
               resources: {cpu: 100m}\n  autoscale: {maxReplicas: 4}\n";
    let mut state = ClusterState::default();
    apply(&mut state, doc).expect("doc");
    assert!(record(&state).autoscale.is_some());
    let refused = apply(&mut state, HPA).expect_err("held by the spec");
    assert!(
        refused.contains("is already autoscaled by its own spec (spec.autoscale)"),
        "{refused}"
    );
    apply(
        &mut state,
        &doc.replace("  autoscale: {maxReplicas: 4}\n", ""),
    )
    .expect("doc");
    assert!(record(&state).autoscale.is_none());
}
