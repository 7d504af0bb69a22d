//! The `Bootstrap` gRPC service: the one a caller reaches without a certificate. A token
//! and a CSR buy a certificate (see [`crate::security::Authority::join`]).

use std::sync::Arc;

use drover_proto::pb;
use drover_proto::pb::bootstrap_server::Bootstrap;
use tonic::{Request, Response, Status};

use crate::changes::ChangeSet;
use crate::coordinator::{Coordinator, now_unix_ms};

/// Implementation of `drover.v1.Bootstrap`.
#[derive(Debug, Clone)]
pub struct BootstrapService {
    coordinator: Arc<Coordinator>,
}

impl BootstrapService {
    /// The service over a running coordinator.
    pub fn new(coordinator: Arc<Coordinator>) -> BootstrapService {
        BootstrapService { coordinator }
    }
}

#[tonic::async_trait]
impl Bootstrap for BootstrapService {
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let request = request.into_inner();
        let Some(authority) = self.coordinator.authority() else {
            return Err(Status::failed_precondition(
                "this coordinator runs insecure: it issues no certificates",
            ));
        };
        let mut inner = self.coordinator.lock().await;
        let mut changes = ChangeSet::new(&inner.state, now_unix_ms());
        let joined = authority.join(
            &inner.state,
            &request.token,
            &request.csr_pem,
            &request.node_id,
            &mut changes,
        )?;
        let gossip_keys = if joined.role == drover_security::Role::Agent {
            crate::security::gossip_keys(&inner.state)
        } else {
            Vec::new()
        };
        self.coordinator.commit(&mut inner, changes).await?;
        Ok(Response::new(pb::JoinResponse {
            certificate_pem: joined.certificate_pem,
            ca_bundle_pem: authority.ca().bundle_pem().to_string(),
            gossip_keys,
            role: joined.role.to_string(),
            token_id: joined.token_id,
        }))
    }
}
