//! One function per command: call the coordinator, print the answer.

use crate::output::say;
use anyhow::Context;
use drover_proto::convert::node_health_from_pb;
use drover_proto::manifest;
use drover_proto::model::{
    AllocStatus, Allocation, NodeHealth, PortSpec, Resources, format_bytes, format_cpu,
};
use drover_proto::pb;
use serde::Serialize;
use tokio_stream::StreamExt;

use crate::client::{connect, refused};
use crate::files::read_manifests;
use crate::output::{Format, age, now_unix_ms, print_json, print_table, table};

/// Parses `KEY=WEIGHT`: a revision number (a workload's revisions) or a workload name (the
/// workloads a service selects).
pub fn parse_weight(text: &str) -> Result<(String, u32), String> {
    let (key, weight) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not REVISION=WEIGHT or WORKLOAD=WEIGHT"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("{text:?} names no revision or workload"));
    }
    let weight = weight
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("weight {weight:?} in {text:?} is not a non-negative integer"))?;
    Ok((key.to_string(), weight))
}

/// `drover apply`; with `wait` (`Some(timeout)`), follows every changed service's rollout.
pub async fn apply(
    target: &str,
    paths: &[String],
    dry_run: bool,
    cause: &str,
    wait: Option<Option<std::time::Duration>>,
) -> anyhow::Result<()> {
    let files = read_manifests(paths)?;
    // Parsed and validated here first, so errors name files and documents; nothing is
    // sent unless every document is valid.
    let manifest = manifest::parse_files(&files)?;
    if manifest.workloads.is_empty()
        && manifest.services.is_empty()
        && manifest.autoscalers.is_empty()
    {
        anyhow::bail!(
            "no workloads, services or autoscalers found in {}",
            paths.join(", ")
        );
    }
    let mut client = connect(target).await?;
    let response = client
        .apply(pb::ApplyRequest {
            workloads: manifest.workloads.iter().map(Into::into).collect(),
            services: manifest.services.iter().map(Into::into).collect(),
            autoscalers: manifest.autoscalers.iter().map(Into::into).collect(),
            dry_run,
            cause: cause.to_string(),
        })
        .await
        .map_err(|s| refused("apply refused", s))?
        .into_inner();
    let suffix = if dry_run { " (dry run)" } else { "" };
    let mut changed = Vec::new();
    for result in response.results {
        let change = match pb::ApplyChange::try_from(result.change) {
            Ok(pb::ApplyChange::Created) => "created",
            Ok(pb::ApplyChange::Updated) => "updated",
            Ok(pb::ApplyChange::Unchanged) => "unchanged",
            _ => "applied",
        };
        if result.kind == "service" {
            say!("service/{} {change}{suffix}", result.name);
            continue;
        }
        if result.kind == "autoscaler" {
            say!("autoscaler/{} {change}{suffix}", result.name);
            continue;
        }
        say!(
            "workload/{} {change} (revision {}){suffix}",
            result.name,
            result.revision
        );
        if change != "unchanged" {
            changed.push((result.name, result.revision));
        }
    }
    let Some(timeout) = wait else {
        return Ok(());
    };
    let mut failures = Vec::new();
    for (service, revision) in changed {
        if let Err(e) = crate::rollout::follow(&mut client, &service, Some(revision), timeout).await
        {
            eprintln!("{e:#}");
            failures.push(service);
        }
    }
    if !failures.is_empty() {
        anyhow::bail!("rollout failed for {}", failures.join(", "));
    }
    Ok(())
}

/// `drover autoscale WORKLOAD`: a HorizontalPodAutoscaler `name` on CPU for a workload of
/// the cluster, as `kubectl autoscale` makes one.
pub async fn autoscale(
    target: &str,
    workload: &str,
    name: &str,
    replicas: std::ops::RangeInclusive<u32>,
    cpu_percent: u32,
) -> anyhow::Result<()> {
    use drover_proto::model::{
        Autoscale, Autoscaler, AutoscalerKind, ScaleMetric, ScaleResource, ScaleRules, ScaleTarget,
    };
    let (min, max) = (*replicas.start(), *replicas.end());
    if min < 1 || max < min {
        anyhow::bail!("--min {min} --max {max}: need 1 <= min <= max");
    }
    if cpu_percent < 1 {
        anyhow::bail!("--cpu-percent {cpu_percent}: need at least 1");
    }
    if let Err(reason) = manifest::dns_label(name) {
        anyhow::bail!("autoscaler name {name:?}: {reason}");
    }
    let autoscaler = Autoscaler {
        target: workload.to_string(),
        kind: AutoscalerKind::Horizontal(Autoscale {
            min_replicas: min,
            max_replicas: max,
            metrics: vec![ScaleMetric {
                resource: ScaleResource::Cpu,
                target: ScaleTarget::Utilization(cpu_percent),
            }],
            scale_up: ScaleRules::default_up(),
            scale_down: ScaleRules::default_down(),
            source: Some(name.to_string()),
        }),
    };
    let mut client = connect(target).await?;
    let response = client
        .apply(pb::ApplyRequest {
            autoscalers: vec![(&autoscaler).into()],
            ..Default::default()
        })
        .await
        .map_err(|s| refused(&format!("autoscale {workload}"), s))?
        .into_inner();
    for result in response.results {
        let change = match pb::ApplyChange::try_from(result.change) {
            Ok(pb::ApplyChange::Created) => "created",
            Ok(pb::ApplyChange::Updated) => "updated",
            _ => "unchanged",
        };
        say!(
            "autoscaler/{} {change}: {workload} between {min} and {max} replicas at {cpu_percent}% of its CPU request",
            result.name
        );
    }
    Ok(())
}

/// `drover delete NAME`: the workload and the service of that name, or only `kind`'s.
pub async fn delete(target: &str, name: &str, kind: Option<&str>) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let response = client
        .delete_service(pb::DeleteServiceRequest {
            name: name.to_string(),
            kind: kind.unwrap_or_default().to_string(),
        })
        .await
        .map_err(|s| refused(&format!("delete {name}"), s))?
        .into_inner();
    if response.workload_deleted {
        say!(
            "workload/{name} deleted ({} replicas stopping)",
            response.stopped_allocations
        );
    }
    if response.service_deleted {
        say!("service/{name} deleted");
    }
    if !response.autoscaler_deleted.is_empty() {
        say!("{}/{name} deleted", response.autoscaler_deleted);
    }
    Ok(())
}

/// A workload as `get workloads` shows it.
#[derive(Debug, Serialize)]
struct ServiceRow {
    name: String,
    image: String,
    revision: u64,
    desired: u32,
    placed: u32,
    running: u32,
    healthy: u32,
    ports: Vec<String>,
    revision_weights: std::collections::BTreeMap<u64, u32>,
    services: Vec<String>,
    placement_failure: Option<String>,
}

fn port_text(port: &pb::PortSpec) -> String {
    let spec = PortSpec::try_from(port.clone());
    match spec {
        Ok(p) => format!("{}/tcp", p.container_port),
        Err(_) => format!("{}?", port.container_port),
    }
}

fn service_row(s: pb::ServiceSummary) -> ServiceRow {
    ServiceRow {
        ports: s.ports.iter().map(port_text).collect(),
        services: s.services,
        revision_weights: s.revision_weights.into_iter().collect(),
        placement_failure: Some(s.placement_failure).filter(|f| !f.is_empty()),
        name: s.name,
        image: s.image,
        revision: s.revision,
        desired: s.desired_replicas,
        placed: s.placed,
        running: s.running,
        healthy: s.healthy,
    }
}

/// `drover get workloads`.
pub async fn workloads(target: &str, format: Format) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let response = client
        .list_services(pb::ListServicesRequest {})
        .await
        .map_err(|s| refused("list workloads", s))?
        .into_inner();
    let rows: Vec<ServiceRow> = response.services.into_iter().map(service_row).collect();
    if format == Format::Json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        say!("No workloads.");
        return Ok(());
    }
    let mut t = table(&[
        "NAME", "IMAGE", "REV", "READY", "PLACED", "PORTS", "SERVICES",
    ]);
    for r in &rows {
        t.add_row(vec![
            r.name.clone(),
            r.image.clone(),
            r.revision.to_string(),
            ready(r),
            r.placed.to_string(),
            r.ports.join(","),
            r.services.join(","),
        ]);
    }
    print_table(&t);
    for r in rows.iter().filter(|r| r.placement_failure.is_some()) {
        say!(
            "\n{}: {}",
            r.name,
            r.placement_failure.as_deref().unwrap_or_default()
        );
    }
    Ok(())
}

/// An allocation as `status` shows it.
#[derive(Debug, Serialize)]
struct AllocationRow {
    #[serde(flatten)]
    allocation: Allocation,
    #[serde(flatten)]
    status: AllocStatus,
}

fn endpoint_text(status: &AllocStatus, address: Option<&String>) -> String {
    match (status.host_ports.values().next(), address) {
        (Some(port), Some(address)) => format!("{address}:{port}"),
        _ => "-".into(),
    }
}

/// A service as `status` shows it.
#[derive(Debug, Serialize)]
struct StatusView {
    #[serde(flatten)]
    summary: ServiceRow,
    revisions: Vec<u64>,
    /// Names of the secret environment variables; their values are never printed.
    secret_env: Vec<String>,
    allocations: Vec<AllocationRow>,
    rollout: Option<crate::rollout::RolloutView>,
    /// The autoscaler, in words (`2..10 replicas on cpu 60%`).
    autoscale: Option<String>,
    /// The vertical autoscaler, in words (`InPlace on cpu and memory (spec.verticalAutoscale)`).
    vertical_autoscale: Option<String>,
    /// Its recommendation per replica, once it has samples.
    recommendation: Option<RecommendationView>,
}

/// A vertical autoscaler's recommendation per replica.
#[derive(Debug, serde::Serialize)]
struct RecommendationView {
    target: Resources,
    lower: Resources,
    upper: Resources,
}

/// A vertical autoscaler in words: its mode, resources, bounds and source.
fn vertical_line(vertical: &pb::VerticalAutoscale) -> String {
    let mode = match pb::vertical_autoscale::Mode::try_from(vertical.mode) {
        Ok(pb::vertical_autoscale::Mode::Off) => "Off (recommends only)",
        Ok(pb::vertical_autoscale::Mode::Initial) => "Initial (new replicas)",
        Ok(pb::vertical_autoscale::Mode::InPlace) => "InPlace",
        Ok(pb::vertical_autoscale::Mode::Recreate) => "Recreate",
        Err(_) => "unknown mode",
    };
    let controls = match (vertical.controls_cpu, vertical.controls_memory) {
        (true, true) => "cpu and memory",
        (true, false) => "cpu",
        _ => "memory",
    };
    let (min, max) = (
        vertical.min_allowed.unwrap_or_default(),
        vertical.max_allowed.unwrap_or_default(),
    );
    let bound = |min: u64, max: u64, format: fn(u64) -> String| match (min, max) {
        (0, 0) => None,
        (min, 0) => Some(format!("at least {}", format(min))),
        (0, max) => Some(format!("at most {}", format(max))),
        (min, max) => Some(format!("{}..{}", format(min), format(max))),
    };
    let bounds: Vec<String> = [
        bound(min.cpu_millis, max.cpu_millis, format_cpu).map(|b| format!("cpu {b}")),
        bound(min.memory_bytes, max.memory_bytes, format_bytes).map(|b| format!("memory {b}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let bounds = if bounds.is_empty() {
        String::new()
    } else {
        format!(", {}", bounds.join(", "))
    };
    let source = if vertical.source.is_empty() {
        "spec.verticalAutoscale".to_string()
    } else {
        format!("VerticalPodAutoscaler {}", vertical.source)
    };
    format!("{mode} on {controls}{bounds} ({source})")
}

/// An upper bound: unbounded while the history is too short to trust.
fn upper_text(r: &Resources) -> String {
    if r.cpu_millis == u64::MAX || r.memory_bytes == u64::MAX {
        "none yet: the history is too short".to_string()
    } else {
        resources_text(r)
    }
}

/// `cpu 250m, memory 64Mi`.
fn resources_text(r: &Resources) -> String {
    format!(
        "cpu {}, memory {}",
        format_cpu(r.cpu_millis),
        format_bytes(r.memory_bytes)
    )
}

/// An autoscaler in words: its bounds, metrics and source.
fn autoscale_line(autoscale: &pb::Autoscale) -> String {
    let metrics: Vec<String> = autoscale
        .metrics
        .iter()
        .map(|m| {
            use pb::scale_metric::Resource;
            let resource = Resource::try_from(m.resource).unwrap_or(Resource::Unspecified);
            let name = match resource {
                Resource::Cpu => "cpu",
                Resource::Memory => "memory",
                Resource::ConnectionsPerSecond => "connections_per_second",
                Resource::ActiveConnections => "active_connections",
                Resource::Unspecified => "unknown metric",
            };
            let value = |v: u64| match resource {
                Resource::Cpu => format_cpu(v),
                Resource::Memory => format_bytes(v),
                // Thousandths of a connection, as Kubernetes quantities write them.
                _ => format_cpu(v),
            };
            match m.target {
                Some(pb::scale_metric::Target::Utilization(p)) => format!("{name} {p}% of request"),
                Some(pb::scale_metric::Target::AverageValue(v)) => {
                    format!("{name} {} per replica", value(v))
                }
                None => format!("{name} ?"),
            }
        })
        .collect();
    let source = if autoscale.source.is_empty() {
        "spec.autoscale".to_string()
    } else {
        format!("HorizontalPodAutoscaler {}", autoscale.source)
    };
    format!(
        "{}..{} replicas on {} ({source})",
        autoscale.min_replicas,
        autoscale.max_replicas,
        metrics.join(", ")
    )
}

/// `drover status NAME`: the workload of that name; or the service, when only a service
/// has it.
pub async fn status(target: &str, service: &str, format: Format) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let response = match crate::client::service_status(&mut client, service, "status").await {
        Ok(response) => response,
        Err(e) => match crate::services::find(&mut client, service).await? {
            Some(view) => return crate::services::status(&mut client, view, format).await,
            None => return Err(e),
        },
    };
    let summary = response
        .summary
        .context("coordinator answered without a summary")?;
    let mut allocations = Vec::new();
    for view in response.allocations {
        let allocation = Allocation::try_from(view.allocation.unwrap_or_default())
            .context("coordinator sent an invalid allocation")?;
        let status = match view.status {
            Some(s) if s.state != pb::AllocState::Unspecified as i32 => {
                AllocStatus::try_from(s).context("coordinator sent an invalid allocation status")?
            }
            _ => AllocStatus::default(),
        };
        allocations.push(AllocationRow { allocation, status });
    }
    let view = StatusView {
        summary: service_row(summary),
        revisions: response.revisions.iter().map(|r| r.revision).collect(),
        secret_env: response
            .spec
            .as_ref()
            .map(|spec| {
                let mut names: Vec<String> = spec.secret_env.keys().cloned().collect();
                names.extend(spec.withheld_secrets.iter().cloned());
                names.sort();
                names
            })
            .unwrap_or_default(),
        allocations,
        rollout: response.rollout.as_ref().map(crate::rollout::view),
        autoscale: response
            .spec
            .as_ref()
            .and_then(|spec| spec.autoscale.as_ref())
            .map(autoscale_line),
        vertical_autoscale: response
            .spec
            .as_ref()
            .and_then(|spec| spec.vertical_autoscale.as_ref())
            .map(vertical_line),
        recommendation: response
            .recommendation
            .as_ref()
            .map(|r| RecommendationView {
                target: r.target.unwrap_or_default().into(),
                lower: r.lower.unwrap_or_default().into(),
                upper: r.upper.unwrap_or_default().into(),
            }),
    };
    if format == Format::Json {
        return print_json(&view);
    }
    let s = &view.summary;
    say!("Workload:  {}", s.name);
    say!("Image:     {}", s.image);
    say!(
        "Revision:  {} (revisions: {})",
        s.revision,
        view.revisions
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    say!(
        "Replicas:  {} desired, {} placed, {} running, {} healthy",
        s.desired,
        s.placed,
        s.running,
        s.healthy
    );
    say!(
        "Ports:     {}",
        if s.ports.is_empty() {
            "-".into()
        } else {
            s.ports.join(", ")
        }
    );
    let weights = if s.revision_weights.is_empty() {
        "no revision weights: one pool of every running replica".to_string()
    } else {
        s.revision_weights
            .iter()
            .map(|(r, w)| format!("{r}={w}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    say!("Traffic:   {weights}");
    if let Some(autoscale) = &view.autoscale {
        say!("Autoscale: {autoscale}");
    }
    if let Some(vertical) = &view.vertical_autoscale {
        say!("Vertical:  {vertical}");
        match &view.recommendation {
            Some(r) => say!(
                "Recommend: {} per replica (lower bound {}; upper bound {})",
                resources_text(&r.target),
                resources_text(&r.lower),
                upper_text(&r.upper)
            ),
            None => say!("Recommend: none yet (no usage sample)"),
        }
    }
    if !s.services.is_empty() {
        say!("Services:  {}", s.services.join(", "));
    }
    if !view.secret_env.is_empty() {
        say!(
            "Secrets:   {} (values not shown)",
            view.secret_env.join(", ")
        );
    }
    if let Some(rollout) = &response.rollout {
        say!("Rollout:   {}", crate::rollout::line(rollout));
    }
    if let Some(failure) = &s.placement_failure {
        say!("Placement: {failure}");
    }
    say!();
    if view.allocations.is_empty() {
        say!("No allocations.");
        return Ok(());
    }
    let addresses = node_addresses(&mut client).await?;
    let now = now_unix_ms();
    let mut t = table(&[
        "ALLOCATION",
        "NODE",
        "REV",
        "DESIRED",
        "STATE",
        "RESTARTS",
        "CONTAINER",
        "ENDPOINT",
        "AGE",
        "MESSAGE",
    ]);
    for row in &view.allocations {
        let a = &row.allocation;
        t.add_row(vec![
            a.id.clone(),
            a.node.clone(),
            a.revision.to_string(),
            format!("{:?}", a.desired).to_lowercase(),
            row.status.state.to_string(),
            row.status.restarts.to_string(),
            row.status.container_id.chars().take(12).collect(),
            endpoint_text(&row.status, addresses.get(&a.node)),
            age(a.created_unix_ms, now),
            row.status.message.clone(),
        ]);
    }
    print_table(&t);
    Ok(())
}

/// Names of every service.
pub async fn service_names(client: &mut crate::client::Control) -> anyhow::Result<Vec<String>> {
    Ok(client
        .list_services(pb::ListServicesRequest {})
        .await
        .map_err(|s| refused("list services", s))?
        .into_inner()
        .services
        .into_iter()
        .map(|s| s.name)
        .collect())
}

/// `address:host_port` of each running replica's first published port.
pub async fn endpoints(
    client: &mut crate::client::Control,
    service: &str,
) -> anyhow::Result<Vec<String>> {
    let addresses = node_addresses(client).await?;
    let status = client
        .get_service(pb::GetServiceRequest {
            name: service.to_string(),
        })
        .await
        .map_err(|s| refused(&format!("status of {service}"), s))?
        .into_inner();
    let Some(port) = status
        .spec
        .as_ref()
        .and_then(|s| s.ports.first())
        .map(|p| p.container_port)
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for view in status.allocations {
        let (Some(a), Some(s)) = (view.allocation, view.status) else {
            continue;
        };
        if a.desired != pb::DesiredState::Run as i32 {
            continue;
        }
        if let (Some(host_port), Some(address)) = (s.host_ports.get(&port), addresses.get(&a.node))
        {
            out.push(format!("{address}:{host_port}"));
        }
    }
    Ok(out)
}

/// Every node's address, by node id.
pub async fn node_addresses(
    client: &mut crate::client::Control,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    Ok(client
        .list_nodes(pb::ListNodesRequest {})
        .await
        .map_err(|s| refused("list nodes", s))?
        .into_inner()
        .nodes
        .into_iter()
        .filter_map(|n| n.info)
        .map(|i| (i.id, i.address))
        .collect())
}

/// A node as `nodes` shows it.
#[derive(Debug, Serialize)]
struct NodeRow {
    id: String,
    generation: u64,
    address: String,
    health: &'static str,
    cordoned: bool,
    draining: bool,
    capacity: Resources,
    allocated: Resources,
    allocations: u32,
    labels: std::collections::BTreeMap<String, String>,
    reason: String,
}

pub async fn nodes(target: &str, format: Format) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let response = client
        .list_nodes(pb::ListNodesRequest {})
        .await
        .map_err(|s| refused("list nodes", s))?
        .into_inner();
    let rows: Vec<NodeRow> = response
        .nodes
        .into_iter()
        .map(|n| {
            let info = n.info.unwrap_or_default();
            NodeRow {
                health: node_health_from_pb(n.health)
                    .map(NodeHealth::as_str)
                    .unwrap_or("unknown"),
                id: info.id,
                generation: info.generation,
                address: info.address,
                cordoned: n.cordoned,
                draining: n.draining,
                capacity: info.capacity.map(Into::into).unwrap_or_default(),
                allocated: n.allocated.map(Into::into).unwrap_or_default(),
                allocations: n.allocations,
                labels: info.labels.into_iter().collect(),
                reason: n.reason,
            }
        })
        .collect();
    if format == Format::Json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        say!("No nodes. Start drover-agent on a host, pointed at this coordinator.");
        return Ok(());
    }
    let mut t = table(&[
        "NODE", "ADDRESS", "STATE", "ALLOCS", "CPU", "MEMORY", "LABELS", "REASON",
    ]);
    for r in &rows {
        let mut state = r.health.to_string();
        if r.draining {
            state.push_str(",draining");
        } else if r.cordoned {
            state.push_str(",cordoned");
        }
        t.add_row(vec![
            r.id.clone(),
            r.address.clone(),
            state,
            r.allocations.to_string(),
            format!(
                "{}/{}",
                format_cpu(r.allocated.cpu_millis),
                format_cpu(r.capacity.cpu_millis)
            ),
            format!(
                "{}/{}",
                format_bytes(r.allocated.memory_bytes),
                format_bytes(r.capacity.memory_bytes)
            ),
            r.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            r.reason.clone(),
        ]);
    }
    print_table(&t);
    Ok(())
}

pub async fn node_action(target: &str, node: &str, action: &str) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let request = pb::NodeRequest {
        node: node.to_string(),
    };
    let what = format!("{action} {node}");
    let status = match action {
        "cordon" => client.cordon(request).await,
        "uncordon" => client.uncordon(request).await,
        _ => client.drain(request).await,
    }
    .map_err(|s| refused(&what, s))?
    .into_inner();
    let state = if status.draining {
        "draining"
    } else if status.cordoned {
        "cordoned"
    } else {
        "schedulable"
    };
    say!("node/{node} {state}");
    Ok(())
}

/// Follows a drain of `node` until it is done: the node no longer draining and no replica
/// left on it. Shows what is left, by workload, and what each one's rollout waits for.
pub async fn follow_drain(
    target: &str,
    node: &str,
    timeout: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let mut progress = crate::progress::Progress::new();
    let started = std::time::Instant::now();
    loop {
        let nodes = client
            .list_nodes(pb::ListNodesRequest {})
            .await
            .map_err(|s| refused("list nodes", s))?
            .into_inner()
            .nodes;
        let Some(status) = nodes
            .iter()
            .find(|n| n.info.as_ref().is_some_and(|i| i.id == node))
        else {
            anyhow::bail!("node {node} is gone from the cluster's list while draining");
        };
        if !status.draining && status.allocations == 0 {
            progress.finish(&format!(
                "node/{node} drained: cordoned, no replica left on it"
            ));
            return Ok(());
        }
        let left = replicas_on(&mut client, node).await?;
        let status_line = if left.is_empty() {
            format!("node/{node} draining: its last replicas are stopping")
        } else {
            format!("node/{node} draining: {}", left.join("; "))
        };
        progress.update(&status_line);
        if let Some(limit) = timeout
            && started.elapsed() >= limit
        {
            anyhow::bail!(
                "node {node} not drained after {} (the drain goes on): {status_line}",
                humantime::format_duration(limit)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// The workloads with replicas that should run on `node`: `web ×2 (rollout: why it waits)`.
async fn replicas_on(
    client: &mut crate::client::Control,
    node: &str,
) -> anyhow::Result<Vec<String>> {
    let mut left = Vec::new();
    for name in service_names(client).await? {
        let Ok(status) = crate::client::service_status(client, &name, "status").await else {
            continue;
        };
        let count = status
            .allocations
            .iter()
            .filter_map(|v| v.allocation.as_ref())
            .filter(|a| a.node == node && a.desired == pb::DesiredState::Run as i32)
            .count();
        if count == 0 {
            continue;
        }
        let waits = status
            .rollout
            .as_ref()
            .map(|r| r.message.clone())
            .filter(|m| !m.is_empty())
            .map(|m| format!(" ({m})"))
            .unwrap_or_default();
        left.push(format!("{name} ×{count}{waits}"));
    }
    Ok(left)
}

/// `drover node rm NODE`.
pub async fn remove_node(target: &str, node: &str) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let removed = client
        .remove_node(pb::NodeRequest {
            node: node.to_string(),
        })
        .await
        .map_err(|s| refused(&format!("node rm {node}"), s))?
        .into_inner();
    say!(
        "node/{node} removed ({} allocation records with it)",
        removed.allocations
    );
    Ok(())
}

/// The READY column: healthy replicas of those desired, as `drover status` counts them (a
/// running replica that fails its checks is not ready).
fn ready(row: &ServiceRow) -> String {
    format!("{}/{}", row.healthy, row.desired)
}

pub async fn scale(target: &str, service: &str, replicas: u32) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    client
        .scale(pb::ScaleRequest {
            name: service.to_string(),
            replicas,
        })
        .await
        .map_err(|s| refused(&format!("scale {service}"), s))?;
    say!("service/{service} scaled to {replicas} replicas");
    Ok(())
}

/// `drover weights NAME KEY=WEIGHT…`: revision numbers set a workload's revision weights,
/// workload names a service's workload weights.
pub async fn weights(target: &str, name: &str, weights: Vec<(String, u32)>) -> anyhow::Result<()> {
    let text = weights
        .iter()
        .map(|(k, w)| format!("{k}={w}"))
        .collect::<Vec<_>>()
        .join(" ");
    let revisions: Vec<Option<u64>> = weights.iter().map(|(k, _)| k.parse().ok()).collect();
    let request = if revisions.iter().all(Option::is_some) {
        pb::SetWeightsRequest {
            name: name.to_string(),
            revision_weights: revisions
                .into_iter()
                .flatten()
                .zip(weights.iter().map(|(_, w)| *w))
                .collect(),
            workload_weights: Default::default(),
        }
    } else if revisions.iter().all(Option::is_none) {
        pb::SetWeightsRequest {
            name: name.to_string(),
            revision_weights: Default::default(),
            workload_weights: weights.into_iter().collect(),
        }
    } else {
        anyhow::bail!(
            "weights {text}: give revision numbers (a workload's revisions) or workload names (a service's workloads), not both"
        );
    };
    let (kind, what) = if request.workload_weights.is_empty() {
        ("workload", "revision weights")
    } else {
        ("service", "workload weights")
    };
    let mut client = connect(target).await?;
    client
        .set_weights(request)
        .await
        .map_err(|s| refused(&format!("weights for {name}"), s))?;
    say!("{kind}/{name} {what} set: {text}");
    Ok(())
}

/// An event as `events` shows it.
#[derive(Debug, Serialize)]
struct EventRow {
    seq: u64,
    unix_ms: u64,
    kind: String,
    subject: String,
    message: String,
}

/// `drover logs`: lines as they come (standard output and error together, as `kubectl
/// logs`), prefixed with their allocation when the name is not one; Drover's own notes
/// (no timestamp) go to standard error.
pub async fn logs(target: &str, request: pb::LogsRequest, timestamps: bool) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let name = request.name.clone();
    let mut stream = client
        .logs(request)
        .await
        .map_err(|s| refused(&format!("read the output of {name}"), s))?
        .into_inner();
    while let Some(item) = stream.next().await {
        let line = item.map_err(|s| refused("the output stream", s))?;
        let mut text = String::new();
        if line.allocation_id != name && !line.timestamp.is_empty() {
            text.push_str(&format!("[{}] ", line.allocation_id));
        }
        if timestamps && !line.timestamp.is_empty() {
            text.push_str(&line.timestamp);
            text.push(' ');
        }
        text.push_str(&line.text);
        if line.timestamp.is_empty() {
            eprintln!("{text}");
        } else {
            say!("{text}");
        }
    }
    Ok(())
}

pub async fn events(target: &str, since: u64, follow: bool, format: Format) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let mut stream = client
        .watch_events(pb::WatchEventsRequest { since, follow })
        .await
        .map_err(|s| refused("watch events", s))?
        .into_inner();
    let mut rows = Vec::new();
    let now = now_unix_ms();
    while let Some(item) = stream.next().await {
        let e = item.map_err(|s| refused("event stream", s))?;
        let row = EventRow {
            seq: e.seq,
            unix_ms: e.unix_ms,
            kind: e.kind,
            subject: e.subject,
            message: e.message,
        };
        if follow {
            // Print as they come; a table cannot be aligned ahead of time.
            match format {
                Format::Json => say!("{}", serde_json::to_string(&row)?),
                Format::Table => say!(
                    "{:>6}  {:<20} {:<24} {}",
                    row.seq,
                    row.kind,
                    row.subject,
                    row.message
                ),
            }
        } else {
            rows.push(row);
        }
    }
    if follow {
        return Ok(());
    }
    if format == Format::Json {
        return print_json(&rows);
    }
    let mut t = table(&["SEQ", "AGE", "KIND", "SUBJECT", "MESSAGE"]);
    for r in &rows {
        t.add_row(vec![
            r.seq.to_string(),
            age(r.unix_ms, now),
            r.kind.clone(),
            r.subject.clone(),
            r.message.clone(),
        ]);
    }
    print_table(&t);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_and_refuse() {
        assert_eq!(parse_weight("2=10"), Ok(("2".into(), 10)));
        assert_eq!(parse_weight("v1=90"), Ok(("v1".into(), 90)));
        assert!(parse_weight("2").is_err());
        assert!(parse_weight("=1").expect_err("no key").contains("\"=1\""));
        assert!(parse_weight("1=-5").expect_err("negative").contains("-5"));
    }

    #[test]
    fn ready_counts_healthy_replicas_not_running_ones() {
        let row = service_row(pb::ServiceSummary {
            name: "web".into(),
            desired_replicas: 3,
            placed: 3,
            running: 3,
            healthy: 0,
            ..Default::default()
        });
        assert_eq!(ready(&row), "0/3");
    }
}
