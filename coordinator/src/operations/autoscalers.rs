//! Autoscalers applied on their own: a HorizontalPodAutoscaler or VerticalPodAutoscaler
//! whose Deployment is already in the cluster (`kubectl apply -f hpa.yaml` after the
//! Deployment). Drover keeps an autoscaler on its workload's record, so these are applied to
//! the stored record; like Kubernetes' own objects they outlive later applies of the
//! Deployment (see [`kept`]) until they are deleted by name ([`delete`]).

use std::collections::BTreeMap;

use drover_proto::manifest::{self, Manifest};
use drover_proto::model::{Autoscale, Autoscaler, AutoscalerKind, VerticalAutoscale};

use super::{ApplyChange, ApplyOutcome, ObjectKind, quoted};
use crate::changes::ChangeSet;
use crate::events;
use crate::state::ClusterState;
use crate::store::{WorkloadRecord, Write};

/// Problems with the apply's standalone autoscalers, before anything is written.
pub(super) fn check(state: &ClusterState, manifest: &Manifest, problems: &mut Vec<String>) {
    for autoscaler in &manifest.autoscalers {
        let what = format!("{} {}", autoscaler.kind_name(), quoted(autoscaler.name()));
        let target = &autoscaler.target;
        if manifest.workloads.iter().any(|w| w.name == *target) {
            problems.push(format!(
                "{what}: workload {} is in this apply: give it the autoscaler there",
                quoted(target)
            ));
            continue;
        }
        let Some((record, spec)) = state.service(target) else {
            problems.push(format!(
                "{what}: workload {} does not exist: apply its Deployment first, or together with it",
                quoted(target)
            ));
            continue;
        };
        if let Some(holder) = holder(record, autoscaler)
            && holder != autoscaler.name()
        {
            problems.push(format!(
                "{what}: workload {} is already autoscaled by {holder}: delete that one first",
                quoted(target)
            ));
        }
        if let AutoscalerKind::Horizontal(a) = &autoscaler.kind {
            for name in manifest::unrequested(&a.metrics, spec.resources) {
                problems.push(format!(
                    "{what}: {}",
                    manifest::utilization_needs_request(name)
                ));
            }
        }
    }
}

/// Who autoscales `record` the way `autoscaler` would: the name of a HorizontalPodAutoscaler
/// or VerticalPodAutoscaler, or the workload's own spec.
fn holder(record: &WorkloadRecord, autoscaler: &Autoscaler) -> Option<String> {
    let source = match &autoscaler.kind {
        AutoscalerKind::Horizontal(_) => record.autoscale.as_ref().map(|a| &a.source),
        AutoscalerKind::Vertical(_) => record.vertical_autoscale.as_ref().map(|v| &v.source),
    }?;
    Some(match source {
        Some(name) => name.clone(),
        None => format!(
            "its own spec ({})",
            match autoscaler.kind {
                AutoscalerKind::Horizontal(_) => "spec.autoscale",
                AutoscalerKind::Vertical(_) => "spec.verticalAutoscale",
            }
        ),
    })
}

/// Applies checked standalone autoscalers to their workloads' records.
pub(super) fn apply(
    state: &ClusterState,
    autoscalers: &[Autoscaler],
    changes: &mut ChangeSet,
) -> Vec<ApplyOutcome> {
    let now = changes.now_unix_ms();
    let mut records: BTreeMap<&str, WorkloadRecord> = BTreeMap::new();
    let mut outcomes = Vec::new();
    for autoscaler in autoscalers {
        let target = autoscaler.target.as_str();
        let Some(stored) = state.stored.workloads.get(target) else {
            continue;
        };
        let record = records.entry(target).or_insert_with(|| stored.clone());
        let before = record.clone();
        match &autoscaler.kind {
            AutoscalerKind::Horizontal(a) => {
                record.autoscale = Some(a.clone());
                record.replicas = record.replicas.clamp(a.min_replicas, a.max_replicas);
            }
            AutoscalerKind::Vertical(v) => record.vertical_autoscale = Some(v.clone()),
        }
        let change = match (&autoscaler.kind, &before) {
            (AutoscalerKind::Horizontal(_), r) if r.autoscale.is_none() => ApplyChange::Created,
            (AutoscalerKind::Vertical(_), r) if r.vertical_autoscale.is_none() => {
                ApplyChange::Created
            }
            _ if *record == before => ApplyChange::Unchanged,
            _ => ApplyChange::Updated,
        };
        outcomes.push(ApplyOutcome {
            kind: ObjectKind::Autoscaler,
            name: autoscaler.name().to_string(),
            revision: 0,
            change,
        });
        if change != ApplyChange::Unchanged {
            record.updated_unix_ms = now;
            let verb = if change == ApplyChange::Created {
                "applied"
            } else {
                "changed"
            };
            changes.event(
                events::AUTOSCALER_CHANGED,
                target,
                format!(
                    "{} {} {verb} for {target}{}",
                    autoscaler.kind_name(),
                    autoscaler.name(),
                    match &autoscaler.kind {
                        AutoscalerKind::Horizontal(a) => format!(
                            ": {}..{} replicas, now {}",
                            a.min_replicas, a.max_replicas, record.replicas
                        ),
                        AutoscalerKind::Vertical(v) => format!(": {}", v.mode.as_str()),
                    }
                ),
            );
        }
    }
    for (_, record) in records {
        if state.stored.workloads.get(&record.name) != Some(&record) {
            changes.push(Write::PutWorkload(record));
        }
    }
    outcomes
}

/// The autoscalers a workload's apply keeps: those applied on their own (with a name),
/// which an apply of the Deployment alone does not remove, unless the apply brings its own.
pub(super) fn kept(
    existing: Option<&WorkloadRecord>,
    autoscale: &Option<Autoscale>,
    vertical: &Option<VerticalAutoscale>,
) -> (Option<Autoscale>, Option<VerticalAutoscale>) {
    let named = |source: &Option<String>| source.is_some();
    (
        autoscale.clone().or_else(|| {
            existing
                .and_then(|r| r.autoscale.clone())
                .filter(|a| named(&a.source))
        }),
        vertical.clone().or_else(|| {
            existing
                .and_then(|r| r.vertical_autoscale.clone())
                .filter(|v| named(&v.source))
        }),
    )
}

/// Removes the autoscalers named `name` from the workloads they scale; their kinds. The
/// replica count and resources stay as the autoscalers left them.
pub(super) fn delete(
    state: &ClusterState,
    name: &str,
    changes: &mut ChangeSet,
) -> Vec<&'static str> {
    let named = |source: &Option<String>| source.as_deref() == Some(name);
    let mut kinds = Vec::new();
    for record in state.stored.workloads.values() {
        let mut updated = record.clone();
        let mut removed = Vec::new();
        if updated.autoscale.as_ref().is_some_and(|a| named(&a.source)) {
            updated.autoscale = None;
            removed.push("HorizontalPodAutoscaler");
        }
        if updated
            .vertical_autoscale
            .as_ref()
            .is_some_and(|v| named(&v.source))
        {
            updated.vertical_autoscale = None;
            removed.push("VerticalPodAutoscaler");
        }
        if removed.is_empty() {
            continue;
        }
        updated.updated_unix_ms = changes.now_unix_ms();
        changes.push(Write::PutWorkload(updated));
        for kind in &removed {
            changes.event(
                events::AUTOSCALER_CHANGED,
                &record.name,
                format!(
                    "{kind} {name} deleted; {} keeps its {} replicas and their resources",
                    record.name, record.replicas
                ),
            );
        }
        kinds.extend(removed);
    }
    kinds
}

#[cfg(test)]
mod tests;
