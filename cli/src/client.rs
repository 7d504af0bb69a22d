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
    // A cluster's full status can be large; the coordinator bounds what it sends.
    Ok(ControlClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES))
}

/// Largest answer the CLI reads from the coordinator.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// Turns a gRPC error into one line naming what was asked. A request over the
/// coordinator's size limit says what is too big and how to raise the limit, not tonic's
/// "decoded message length too large".
pub fn refused(what: &str, status: tonic::Status) -> anyhow::Error {
    if let Some((found, limit)) = too_large(status.message()) {
        return anyhow::anyhow!(
            "{what}: the request is {found} bytes, over the coordinator's limit of {limit} bytes (send fewer manifests at once, or raise limits.request_bytes in the coordinator's config)"
        );
    }
    anyhow::anyhow!("{what}: {}", status.message())
}

/// The sizes in tonic's "decoded message length too large: found 20971529 bytes, the limit
/// is: 16777216 bytes".
fn too_large(message: &str) -> Option<(u64, u64)> {
    const PHRASE: &str = "decoded message length too large: found ";
    let rest = &message[message.find(PHRASE)? + PHRASE.len()..];
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some((found.parse().ok()?, limit.parse().ok()?))
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
        .map_err(|s| {
            let name = drover_proto::manifest::excerpt(service);
            refused(&format!("{what} of {name}"), s)
        })?
        .into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_over_the_size_limit_says_what_and_how_to_raise_it() {
        let status = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 20971529 bytes, the limit is: 16777216 bytes",
        );
        let message = refused("apply", status).to_string();
        assert_eq!(
            message,
            "apply: the request is 20971529 bytes, over the coordinator's limit of 16777216 bytes (send fewer manifests at once, or raise limits.request_bytes in the coordinator's config)"
        );
        let other = refused("apply", tonic::Status::invalid_argument("bad"));
        assert_eq!(other.to_string(), "apply: bad");
    }
}
