//! `drover top [NAME]`: what nodes and replicas use, as their agents last measured (cgroup
//! samples every few seconds), beside what they request, and the connections every node's
//! proxy makes to each replica.

use drover_proto::model::{format_bytes, format_cpu};
use drover_proto::pb;
use serde::Serialize;

use crate::client::{connect, refused};
use crate::output::{Format, print_json, print_table, say, table};

/// A node as `top` shows it.
#[derive(Debug, Serialize)]
struct NodeRow {
    node: String,
    cpu_used_millis: u64,
    cpu_capacity_millis: u64,
    memory_used_bytes: u64,
    memory_capacity_bytes: u64,
    cpu_requested_millis: u64,
    memory_requested_bytes: u64,
}

/// A replica as `top` shows it; no usage until its agent's first sample arrived.
#[derive(Debug, Serialize)]
struct ReplicaRow {
    replica: String,
    workload: String,
    node: String,
    cpu_millis: Option<u64>,
    cpu_request_millis: u64,
    memory_working_set_bytes: Option<u64>,
    memory_limit_bytes: Option<u64>,
    memory_request_bytes: u64,
    oom_kills: Option<u64>,
    sample_age_ms: Option<u64>,
    /// New connections per second through the proxies, in thousandths.
    connections_per_second_milli: Option<u64>,
    active_connections: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Top {
    nodes: Vec<NodeRow>,
    replicas: Vec<ReplicaRow>,
}

/// `drover top [NAME]`.
pub async fn top(target: &str, name: Option<&str>, format: Format) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let what = name.map_or_else(
        || "read usage".to_string(),
        |n| format!("read usage of {n}"),
    );
    let response = client
        .top(pb::TopRequest {
            name: name.unwrap_or_default().to_string(),
        })
        .await
        .map_err(|s| refused(&what, s))?
        .into_inner();
    let top = rows(response);
    if format == Format::Json {
        return print_json(&top);
    }
    let mut nodes = table(&["NODE", "CPU", "CPU%", "MEMORY", "MEMORY%", "REQUESTED"]);
    for n in &top.nodes {
        nodes.add_row(vec![
            n.node.clone(),
            format!(
                "{}/{}",
                format_cpu(n.cpu_used_millis),
                format_cpu(n.cpu_capacity_millis)
            ),
            percent(n.cpu_used_millis, n.cpu_capacity_millis),
            format!(
                "{}/{}",
                format_bytes(n.memory_used_bytes),
                format_bytes(n.memory_capacity_bytes)
            ),
            percent(n.memory_used_bytes, n.memory_capacity_bytes),
            format!(
                "{} cpu, {}",
                format_cpu(n.cpu_requested_millis),
                format_bytes(n.memory_requested_bytes)
            ),
        ]);
    }
    print_table(&nodes);
    if top.replicas.is_empty() {
        say!("\nNo replicas.");
        return Ok(());
    }
    let mut replicas = table(&[
        "REPLICA", "WORKLOAD", "NODE", "CPU", "CPU/REQ", "MEMORY", "LIMIT", "OOM", "CONN/S",
        "ACTIVE", "AGE",
    ]);
    let mut waiting = 0;
    for r in &top.replicas {
        let dash = || "-".to_string();
        if r.cpu_millis.is_none() {
            waiting += 1;
        }
        replicas.add_row(vec![
            r.replica.clone(),
            r.workload.clone(),
            r.node.clone(),
            r.cpu_millis.map_or_else(dash, format_cpu),
            r.cpu_millis
                .map_or_else(dash, |c| percent(c, r.cpu_request_millis)),
            r.memory_working_set_bytes.map_or_else(dash, format_bytes),
            r.memory_limit_bytes.map_or_else(dash, format_bytes),
            r.oom_kills.map_or_else(dash, |k| k.to_string()),
            r.connections_per_second_milli
                .map_or_else(dash, |c| format!("{:.1}", c as f64 / 1000.0)),
            r.active_connections.map_or_else(dash, |a| a.to_string()),
            r.sample_age_ms
                .map_or_else(dash, |ms| format!("{:.0}s", ms as f64 / 1000.0)),
        ]);
    }
    say!("");
    print_table(&replicas);
    if waiting > 0 {
        say!("{waiting} replica(s) without a sample yet: agents sample every few seconds.");
    }
    Ok(())
}

fn rows(response: pb::TopResponse) -> Top {
    let resources = |r: Option<pb::Resources>| r.unwrap_or_default();
    Top {
        nodes: response
            .nodes
            .into_iter()
            .map(|n| {
                let (capacity, used, requested) = (
                    resources(n.capacity),
                    resources(n.used),
                    resources(n.requested),
                );
                NodeRow {
                    node: n.node,
                    cpu_used_millis: used.cpu_millis,
                    cpu_capacity_millis: capacity.cpu_millis,
                    memory_used_bytes: used.memory_bytes,
                    memory_capacity_bytes: capacity.memory_bytes,
                    cpu_requested_millis: requested.cpu_millis,
                    memory_requested_bytes: requested.memory_bytes,
                }
            })
            .collect(),
        replicas: response
            .replicas
            .into_iter()
            .map(|r| {
                let requests = resources(r.requests);
                let usage = r.usage;
                ReplicaRow {
                    replica: r.allocation_id,
                    workload: r.workload,
                    node: r.node,
                    cpu_millis: usage.as_ref().map(|u| u.cpu_millis),
                    cpu_request_millis: requests.cpu_millis,
                    memory_working_set_bytes: usage.as_ref().map(|u| u.memory_working_set_bytes),
                    memory_limit_bytes: usage
                        .as_ref()
                        .and_then(|u| Some(u.memory_limit_bytes).filter(|&b| b > 0)),
                    memory_request_bytes: requests.memory_bytes,
                    oom_kills: usage.as_ref().map(|u| u.oom_kills),
                    sample_age_ms: usage.as_ref().map(|_| r.age_ms),
                    connections_per_second_milli: r.connections.map(|c| c.per_second_milli),
                    active_connections: r.connections.map(|c| c.active),
                }
            })
            .collect(),
    }
}

/// `part` of `whole` as a whole percent; "-" when `whole` is 0 (no request, no capacity).
fn percent(part: u64, whole: u64) -> String {
    (part * 100)
        .checked_div(whole)
        .map_or_else(|| "-".to_string(), |p| format!("{p}%"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_of_nothing_is_a_dash() {
        assert_eq!(percent(250, 1000), "25%");
        assert_eq!(percent(1500, 1000), "150%");
        assert_eq!(percent(5, 0), "-");
    }

    #[test]
    fn a_replica_without_a_sample_has_no_usage() {
        let top = rows(pb::TopResponse {
            nodes: vec![],
            replicas: vec![pb::ReplicaTop {
                allocation_id: "web.1".into(),
                workload: "web".into(),
                node: "n1".into(),
                usage: None,
                requests: Some(pb::Resources {
                    cpu_millis: 500,
                    memory_bytes: 1 << 28,
                }),
                age_ms: 0,
                connections: None,
            }],
        });
        let r = &top.replicas[0];
        assert_eq!((r.cpu_millis, r.sample_age_ms), (None, None));
        assert_eq!(r.cpu_request_millis, 500);
    }
}
