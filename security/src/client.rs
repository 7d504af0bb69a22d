//! Clients of the coordinator: an operator's session from a token (join for a short-lived
//! certificate, then mutual TLS with the token as bearer), and a node's first join.

use std::time::Duration;

use drover_proto::pb;
use drover_proto::pb::bootstrap_client::BootstrapClient;
use drover_proto::pb::control_client::ControlClient;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::identity::{KeyAndCsr, Peer};
use crate::transport::{self, ClientIdentity, ClientTls, Trust};
use crate::{SecurityError, Token};

/// How long dialling a coordinator may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a client could not get a session.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Bad input: an address or token that cannot work.
    #[error(transparent)]
    Invalid(#[from] SecurityError),
    /// The coordinator could not be reached, or the TLS handshake failed.
    #[error("cannot reach the coordinator at {address}: {cause}")]
    Unreachable {
        /// The address dialled.
        address: String,
        /// Why, as deep as the cause goes.
        cause: String,
    },
    /// The coordinator refused the join.
    #[error("the coordinator at {address} refused to join: {message}")]
    Refused {
        /// The address dialled.
        address: String,
        /// The coordinator's words.
        message: String,
        /// The gRPC code.
        code: tonic::Code,
    },
}

/// Adds the operator's token to every request.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(..)")
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The operator API, with the token on every call.
pub type Control = ControlClient<InterceptedService<Channel, Bearer>>;

/// What proves an operator: a token, or nothing against an insecure coordinator (tests).
#[derive(Debug, Clone)]
pub enum OperatorAuth {
    /// A token (admin, operator or read).
    Token(Token),
    /// No TLS at all: only an insecure coordinator answers.
    Insecure,
}

fn deepest(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    cause
}

async fn dial(address: &str, tls: Option<&ClientTls>) -> Result<Channel, ConnectError> {
    let endpoint = transport::endpoint(address)?.connect_timeout(CONNECT_TIMEOUT);
    let connected = match tls {
        Some(tls) => tls.connect(endpoint).await,
        None => endpoint.connect().await,
    };
    connected.map_err(|e| ConnectError::Unreachable {
        address: address.to_string(),
        cause: deepest(&e),
    })
}

/// The certificate a join gave, with what came with it.
#[derive(Debug, Clone)]
pub struct Joined {
    /// This client's certificate and key.
    pub identity: ClientIdentity,
    /// The cluster's CA bundle.
    pub ca_bundle_pem: String,
    /// The gossip keyring (agents only), base64, the key in use first.
    pub gossip_keys: Vec<String>,
}

/// Joins with `token` as `peer` (for an agent token, `Peer::Node(id)`): pins the CA the token
/// names, sends a CSR for a key made here, and returns the certificate.
pub async fn join(
    address: &str,
    token: &Token,
    node_id: Option<&str>,
) -> Result<Joined, ConnectError> {
    let peer = match node_id {
        Some(id) => Peer::Node(id.to_string()),
        None => Peer::Operator(token.id.clone()),
    };
    let key = KeyAndCsr::generate(&peer)?;
    let tls = ClientTls::new(&Trust::Pinned(token.digest), None)?;
    let channel = dial(address, Some(&tls)).await?;
    let response = BootstrapClient::new(channel)
        .join(pb::JoinRequest {
            token: token.reveal(),
            csr_pem: key.csr_pem,
            node_id: node_id.unwrap_or_default().to_string(),
        })
        .await
        .map_err(|status| ConnectError::Refused {
            address: address.to_string(),
            message: status.message().to_string(),
            code: status.code(),
        })?
        .into_inner();
    Ok(Joined {
        identity: ClientIdentity {
            cert_pem: response.certificate_pem,
            key_pem: key.key_pem,
        },
        ca_bundle_pem: response.ca_bundle_pem,
        gossip_keys: response.gossip_keys,
    })
}

/// An operator session on the coordinator at `address`.
pub async fn operator(address: &str, auth: &OperatorAuth) -> Result<Control, ConnectError> {
    let (channel, bearer) = match auth {
        OperatorAuth::Insecure => (dial(address, None).await?, Bearer(None)),
        OperatorAuth::Token(token) => {
            let joined = join(address, token, None).await?;
            let tls = ClientTls::new(&Trust::Bundle(joined.ca_bundle_pem), Some(&joined.identity))?;
            let value = format!("Bearer {}", token.reveal())
                .parse()
                .map_err(|_| SecurityError::Token("the token is not valid header text".into()))?;
            (dial(address, Some(&tls)).await?, Bearer(Some(value)))
        }
    };
    Ok(ControlClient::with_interceptor(channel, bearer))
}
