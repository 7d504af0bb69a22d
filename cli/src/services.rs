//! Services (names and ports over workloads' replicas) as `drover get services` and
//! `drover status` show them.

use drover_proto::model::{ClusterIp, Service, ServiceType};
use drover_proto::pb;
use serde::Serialize;

use crate::client::{Control, connect, refused};
use crate::output::{Format, print_json, print_table, say, table};

/// A service as `get services` shows it.
#[derive(Debug, Serialize)]
struct ServiceRow {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    cluster_ip: String,
    /// Where it is reached from outside the cluster: every node's address, for NodePort
    /// and LoadBalancer services.
    external: Vec<String>,
    ports: Vec<String>,
    selector: Vec<String>,
    workloads: Vec<String>,
    endpoints: u32,
    healthy: u32,
}

fn row(view: pb::ServiceView, nodes: &[String]) -> anyhow::Result<ServiceRow> {
    let wire = view
        .service
        .ok_or_else(|| anyhow::anyhow!("coordinator sent a service view without its service"))?;
    let service = Service::try_from(wire)
        .map_err(|e| anyhow::anyhow!("coordinator sent an invalid service: {e}"))?;
    let ports = service
        .ports
        .iter()
        .map(|p| match (service.kind, p.node_port) {
            (ServiceType::NodePort, Some(node)) => format!("{}:{node}->{}/tcp", p.port, p.target),
            _ => format!("{}->{}/tcp", p.port, p.target),
        })
        .collect();
    let external = match service.kind {
        ServiceType::ClusterIp => Vec::new(),
        ServiceType::NodePort | ServiceType::LoadBalancer => nodes.to_vec(),
    };
    Ok(ServiceRow {
        external,
        kind: service.kind.as_str(),
        cluster_ip: match service.cluster_ip {
            ClusterIp::Headless => "None".into(),
            ClusterIp::Fixed(ip) => ip.to_string(),
            ClusterIp::Auto => "-".into(),
        },
        ports,
        selector: service
            .selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        workloads: view.workloads,
        endpoints: view.endpoints,
        healthy: view.healthy,
        name: service.name,
    })
}

async fn list(client: &mut Control) -> anyhow::Result<Vec<pb::ServiceView>> {
    Ok(client
        .list_service_objects(pb::ListServiceObjectsRequest {})
        .await
        .map_err(|s| refused("list services", s))?
        .into_inner()
        .services)
}

/// Where `drover dev` reaches each service, as `(service, address, how)`: on the node's
/// address `node` (its node port, or for a ClusterIP service its own port, which `drover
/// dev`'s agent also listens on), and on its cluster address.
pub async fn dev_addresses(
    client: &mut Control,
    node: std::net::IpAddr,
) -> anyhow::Result<Vec<(String, std::net::SocketAddr, &'static str)>> {
    let mut addresses = Vec::new();
    for view in list(client).await? {
        let Some(wire) = view.service else { continue };
        let service = Service::try_from(wire)
            .map_err(|e| anyhow::anyhow!("coordinator sent an invalid service: {e}"))?;
        let cluster = service.cluster_address();
        for port in &service.ports {
            let on_node = match (service.node_listen_port(port), cluster) {
                (Some(listen), _) => Some((listen, "on the node's address")),
                (None, Some(_)) => Some((port.port, "on the node's address (drover dev only)")),
                (None, None) => None,
            };
            if let Some((listen, how)) = on_node {
                let address = std::net::SocketAddr::new(node, listen);
                addresses.push((service.name.clone(), address, how));
            }
            if let Some(ip) = cluster {
                let address = std::net::SocketAddr::new(ip.into(), port.port);
                addresses.push((service.name.clone(), address, "on its cluster address"));
            }
        }
    }
    Ok(addresses)
}

/// The service named `name`, if there is one.
pub async fn find(client: &mut Control, name: &str) -> anyhow::Result<Option<pb::ServiceView>> {
    Ok(list(client)
        .await?
        .into_iter()
        .find(|v| v.service.as_ref().is_some_and(|s| s.name == name)))
}

/// `drover get services`.
pub async fn services(target: &str, format: Format) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let nodes = node_list(&mut client).await?;
    let rows = list(&mut client)
        .await?
        .into_iter()
        .map(|view| row(view, &nodes))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if format == Format::Json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        say!("No services.");
        return Ok(());
    }
    let mut t = table(&[
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORTS",
        "WORKLOADS",
        "ENDPOINTS",
    ]);
    for r in &rows {
        t.add_row(vec![
            r.name.clone(),
            r.kind.to_string(),
            r.cluster_ip.clone(),
            external_text(&r.external),
            r.ports.join(","),
            if r.workloads.is_empty() {
                "<none>".into()
            } else {
                r.workloads.join(",")
            },
            format!("{}/{}", r.healthy, r.endpoints),
        ]);
    }
    print_table(&t);
    Ok(())
}

/// Every node's address, sorted and once each.
async fn node_list(client: &mut Control) -> anyhow::Result<Vec<String>> {
    let mut addresses: Vec<String> = crate::commands::node_addresses(client)
        .await?
        .into_values()
        .collect();
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}

/// External addresses as a column: all of them while few, else a count.
fn external_text(addresses: &[String]) -> String {
    match addresses.len() {
        0 => "<none>".into(),
        1..=3 => addresses.join(","),
        n => format!("{},… ({n} nodes)", addresses[..2].join(",")),
    }
}

/// `drover status NAME` for a service that no workload shares its name with.
pub async fn status(
    client: &mut Control,
    view: pb::ServiceView,
    format: Format,
) -> anyhow::Result<()> {
    let r = row(view, &node_list(client).await?)?;
    if format == Format::Json {
        return print_json(&r);
    }
    say!("Service:   {} ({})", r.name, r.kind);
    say!("Address:   {}", r.cluster_ip);
    if !r.external.is_empty() {
        say!("External:  {}", r.external.join(", "));
    }
    say!("Ports:     {}", r.ports.join(", "));
    say!("Selector:  {}", r.selector.join(", "));
    say!(
        "Workloads: {}",
        if r.workloads.is_empty() {
            "none selected".into()
        } else {
            r.workloads.join(", ")
        }
    );
    say!("Endpoints: {} healthy of {}", r.healthy, r.endpoints);
    Ok(())
}
