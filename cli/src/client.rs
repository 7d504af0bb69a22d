//! Connecting to the coordinator, with errors that say where and why.

use anyhow::Context;
use drover_proto::pb::control_client::ControlClient;
use tonic::transport::{Channel, Endpoint};

/// Connects to the coordinator's Control API at `target`.
pub async fn connect(target: &str) -> anyhow::Result<ControlClient<Channel>> {
    let endpoint = Endpoint::from_shared(target.to_string())
        .with_context(|| {
            format!("invalid coordinator address {target:?} (expected e.g. http://127.0.0.1:7400)")
        })?
        .connect_timeout(std::time::Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| {
        let cause = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_else(|| e.to_string());
        anyhow::anyhow!(
            "cannot reach the coordinator at {target}: {cause} (is drover-coordinator running? set --coordinator or DROVER_COORDINATOR)"
        )
    })?;
    Ok(ControlClient::new(channel))
}

/// Turns a gRPC error into one line naming what was asked.
pub fn refused(what: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", status.message())
}

/// One service's status from the coordinator; `what` names the request in errors.
pub async fn service_status(
    client: &mut drover_proto::pb::control_client::ControlClient<Channel>,
    service: &str,
    what: &str,
) -> anyhow::Result<drover_proto::pb::ServiceStatus> {
    Ok(client
        .get_service(drover_proto::pb::GetServiceRequest {
            name: service.to_string(),
        })
        .await
        .map_err(|s| refused(&format!("{what} of {service}"), s))?
        .into_inner())
}
