//! `drover rollout …` and `drover apply --wait`: follow, steer and look back on rollouts.

use crate::output::say;
use std::time::{Duration, Instant};

use anyhow::Context;
use drover_proto::pb;
use serde::Serialize;

use crate::client::{connect, refused, service_status};
use crate::output::{Format, age, now_unix_ms, print_json, print_table, table};

pub use drover_coordinator::operations::RolloutAction as Action;

/// A rollout as `rollout status -o json` shows it.
#[derive(Debug, Serialize)]
pub struct RolloutView {
    service: String,
    revision: u64,
    from_revision: Option<u64>,
    stable_revision: Option<u64>,
    phase: &'static str,
    paused: bool,
    desired: u32,
    updated: u32,
    ready: u32,
    available: u32,
    total: u32,
    step: Option<u32>,
    steps: u32,
    weight: Option<u32>,
    message: String,
    cause: Option<String>,
    started_by: String,
    started_unix_ms: u64,
    canary: Option<(u64, u64)>,
    stable: Option<(u64, u64)>,
}

fn phase(status: &pb::RolloutStatus) -> &'static str {
    match pb::RolloutPhase::try_from(status.phase) {
        Ok(pb::RolloutPhase::Progressing) => "progressing",
        Ok(pb::RolloutPhase::Complete) => "complete",
        Ok(pb::RolloutPhase::Failed) => "failed",
        _ => "unknown",
    }
}

/// The JSON view of a rollout.
pub fn view(s: &pb::RolloutStatus) -> RolloutView {
    let in_step = s.step > 0;
    RolloutView {
        service: s.service.clone(),
        revision: s.revision,
        from_revision: (s.from_revision > 0).then_some(s.from_revision),
        stable_revision: (s.stable_revision > 0).then_some(s.stable_revision),
        phase: phase(s),
        paused: s.paused,
        desired: s.desired,
        updated: s.updated,
        ready: s.ready,
        available: s.available,
        total: s.total,
        step: in_step.then_some(s.step),
        steps: s.steps,
        weight: in_step.then_some(s.weight),
        message: s.message.clone(),
        cause: Some(s.cause.clone()).filter(|c| !c.is_empty()),
        started_by: s.started_by.clone(),
        started_unix_ms: s.started_unix_ms,
        canary: in_step.then_some((s.canary_connections, s.canary_failed)),
        stable: in_step.then_some((s.stable_connections, s.stable_failed)),
    }
}

/// One line of progress: counts, then what the rollout waits for.
pub fn line(s: &pb::RolloutStatus) -> String {
    let paused = if s.paused { ", paused" } else { "" };
    format!(
        "revision {} ({}{paused}): {} desired, {} updated, {} ready, {} available, {} placed in all — {}",
        s.revision,
        phase(s),
        s.desired,
        s.updated,
        s.ready,
        s.available,
        s.total,
        s.message
    )
}

async fn get(
    client: &mut crate::client::Control,
    service: &str,
) -> anyhow::Result<pb::RolloutStatus> {
    Ok(client
        .get_rollout(pb::GetServiceRequest {
            name: service.to_string(),
        })
        .await
        .map_err(|s| refused(&format!("rollout of {service}"), s))?
        .into_inner())
}

/// Why `revision` of `service` failed, from its revision history.
async fn failure_of(
    client: &mut crate::client::Control,
    service: &str,
    revision: u64,
) -> anyhow::Result<String> {
    let status = service_status(client, service, "status").await?;
    Ok(status
        .revisions
        .iter()
        .find(|r| r.revision == revision)
        .map(|r| r.failure.clone())
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| "no cause recorded".to_string()))
}

/// The revision a rollout went back from (an auto-revert or an abort), if it did.
fn reverted_from(status: &pb::RolloutStatus) -> Option<u64> {
    let by = status.started_by.as_str();
    by.strip_prefix("auto-revert from revision ")
        .or_else(|| by.strip_prefix("abort of revision "))
        .and_then(|n| n.parse().ok())
}

/// Follows the rollout of `revision` (the service's current one when `None`), printing a
/// line whenever it changes, until it completes (Ok) or fails (Err naming the cause), or
/// `timeout` passes.
pub async fn follow(
    client: &mut crate::client::Control,
    service: &str,
    revision: Option<u64>,
    timeout: Option<Duration>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut progress = crate::progress::Progress::new();
    let mut watched = revision;
    loop {
        let status = get(client, service).await?;
        // Asked for the service as it is: a rollout that went back by itself is the one
        // the operator made, and it failed.
        let revision =
            *watched.get_or_insert_with(|| reverted_from(&status).unwrap_or(status.revision));
        if status.revision != revision {
            let back = status
                .started_by
                .ends_with(&format!("from revision {revision}"))
                || status.started_by == format!("abort of revision {revision}");
            if back {
                let cause = failure_of(client, service, revision).await?;
                anyhow::bail!(
                    "rollout of {service} to revision {revision} failed: {cause}; going back to revision {} ({})",
                    status.revision,
                    status.started_by
                );
            }
            anyhow::bail!(
                "rollout of {service} to revision {revision} was replaced by revision {} ({})",
                status.revision,
                status.started_by
            );
        }
        progress.update(&format!("{service}: {}", line(&status)));
        match pb::RolloutPhase::try_from(status.phase) {
            Ok(pb::RolloutPhase::Complete) => {
                progress.finish(&format!(
                    "rollout of {service} to revision {revision} complete"
                ));
                return Ok(());
            }
            Ok(pb::RolloutPhase::Failed) => {
                anyhow::bail!(
                    "rollout of {service} to revision {revision} failed: {}",
                    status.cause
                );
            }
            _ => {}
        }
        if let Some(limit) = timeout
            && started.elapsed() >= limit
        {
            anyhow::bail!(
                "rollout of {service} to revision {revision} not done after {}: {}",
                humantime::format_duration(limit),
                status.message
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `drover rollout status SERVICE`: follows it (exit 0 on success, 1 on failure), or with
/// `--watch=false` or `-o json` shows it once.
pub async fn status(
    target: &str,
    service: &str,
    watch: bool,
    timeout: Option<Duration>,
    format: Format,
) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    if format == Format::Json {
        return print_json(&view(&get(&mut client, service).await?));
    }
    if !watch {
        say!("{service}: {}", line(&get(&mut client, service).await?));
        return Ok(());
    }
    follow(&mut client, service, None, timeout).await
}

/// `drover rollout pause|resume|promote|abort|restart|undo SERVICE`.
pub async fn act(target: &str, service: &str, action: Action) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let (kind, to_revision, verb) = match action {
        Action::Pause => (pb::RolloutActionKind::Pause, 0, "paused"),
        Action::Resume => (pb::RolloutActionKind::Resume, 0, "resumed"),
        Action::Promote => (pb::RolloutActionKind::Promote, 0, "promoted"),
        Action::Abort => (pb::RolloutActionKind::Abort, 0, "aborted"),
        Action::Restart => (pb::RolloutActionKind::Restart, 0, "restarted"),
        Action::Undo(to) => (pb::RolloutActionKind::Undo, to.unwrap_or(0), "rolled back"),
    };
    let status = client
        .rollout_action(pb::RolloutActionRequest {
            name: service.to_string(),
            action: kind.into(),
            to_revision,
        })
        .await
        .map_err(|s| refused(&format!("rollout {verb} of {service}"), s))?
        .into_inner();
    say!("service/{service} {verb}: {}", line(&status));
    Ok(())
}

/// A revision as `rollout history` shows it.
#[derive(Debug, Serialize)]
struct HistoryRow {
    revision: u64,
    image: String,
    created_unix_ms: u64,
    cause: String,
    current: bool,
    stable: bool,
    failure: Option<String>,
}

/// `drover rollout history SERVICE`: every revision kept, what made it, how it went.
pub async fn history(target: &str, service: &str, format: Format) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let status = service_status(&mut client, service, "history").await?;
    let current = status
        .summary
        .as_ref()
        .context("coordinator answered without a summary")?
        .revision;
    let rows: Vec<HistoryRow> = status
        .revisions
        .iter()
        .map(|r| HistoryRow {
            revision: r.revision,
            image: r.spec.as_ref().map(|s| s.image.clone()).unwrap_or_default(),
            created_unix_ms: r.created_unix_ms,
            cause: r.cause.clone(),
            current: r.revision == current,
            stable: r.revision == status.stable_revision,
            failure: Some(r.failure.clone()).filter(|f| !f.is_empty()),
        })
        .collect();
    if format == Format::Json {
        return print_json(&rows);
    }
    let now = now_unix_ms();
    let mut t = table(&["REVISION", "IMAGE", "AGE", "CAUSE", "STATUS"]);
    for row in &rows {
        let mut marks = Vec::new();
        if row.current {
            marks.push("current".to_string());
        }
        if row.stable {
            marks.push("stable".to_string());
        }
        if let Some(failure) = &row.failure {
            marks.push(format!("failed: {failure}"));
        }
        t.add_row(vec![
            row.revision.to_string(),
            row.image.clone(),
            age(row.created_unix_ms, now),
            row.cause.clone(),
            marks.join(", "),
        ]);
    }
    print_table(&t);
    Ok(())
}
