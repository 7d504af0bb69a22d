//! The agent's HTTP side (config `http_listen`, 7404 by default): `/healthz` and `/readyz`
//! for anyone (systemd, load balancers), `/metrics` for Prometheus with a token of the
//! read role or above — the cluster's own tokens, which the coordinator sends
//! ([`crate::read_tokens`]). Served over TLS with the node's certificate, which names every
//! agent [`drover_security::AGENT_NAME`] as well as itself and chains to the cluster CA,
//! renewed as the certificate is; plain HTTP without a token when the agent runs insecure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use drover_proto::gossip::MemberFacts;
use drover_proto::model::RoutePolicy;
use drover_security::transport::ServerTls;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::credentials::NodeCredentials;
use crate::error::Error;
use crate::metrics::Sources;
use crate::read_tokens::{ReadTokens, Refused};

/// What the handlers share.
#[derive(Clone)]
struct Http {
    sources: Sources,
    /// `None` when the agent runs insecure: no token is asked.
    tokens: Option<watch::Receiver<Arc<ReadTokens>>>,
}

/// What `/readyz` looks at.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// This node's id, as gossip names it.
    pub node: String,
    /// The route policy the proxy follows (the coordinator's, or the one kept on disk).
    pub policy: watch::Receiver<Option<RoutePolicy>>,
    /// Gossip's live members.
    pub members: watch::Receiver<BTreeMap<String, MemberFacts>>,
}

impl Readiness {
    /// Ready once the proxy has a route policy to follow and gossip counts this node alive;
    /// an unreachable coordinator is not a reason (the node keeps routing without it).
    fn checks(&self) -> Vec<drover_daemon::http::Check> {
        let routing = if self.policy.borrow().is_some() {
            Ok(())
        } else {
            Err("no route policy yet (none kept, none from a coordinator)".to_string())
        };
        let gossip = if self.members.borrow().contains_key(&self.node) {
            Ok(())
        } else {
            Err("this node is not among gossip's live members yet".to_string())
        };
        vec![("routing", routing), ("gossip", gossip)]
    }
}

/// The router: health, readiness and metrics.
pub fn router(
    sources: Sources,
    readiness: Readiness,
    tokens: Option<watch::Receiver<Arc<ReadTokens>>>,
) -> Router {
    let ready: drover_daemon::http::Readiness = Arc::new(move || readiness.checks());
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(Http { sources, tokens })
        .merge(drover_daemon::http::health_routes(ready))
}

async fn metrics(State(http): State<Http>, headers: HeaderMap) -> Response {
    if let Some(tokens) = &http.tokens {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let checked = tokens
            .borrow()
            .check(bearer, "reading the metrics", now_unix_ms());
        if let Err(refused) = checked {
            let status = match refused {
                Refused::Forbidden(_) => StatusCode::FORBIDDEN,
                Refused::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            };
            return (status, format!("{refused}\n")).into_response();
        }
    }
    let registry = http.sources.registry();
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    drover_daemon::http::metrics(&registry, accept)
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Binds `address`, before anything else starts, so that a port in use is a clear error.
pub async fn bind(address: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| Error::Config(format!("http_listen {address}: {e}")))
}

/// Serves `router` on `listener` until `shutdown`: over TLS with the node's certificate
/// when `credentials` are given (following its renewals), else plain.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    credentials: Option<watch::Receiver<Arc<NodeCredentials>>>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let address = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("the HTTP listener's address: {e}")))?;
    let Some(mut credentials) = credentials else {
        return drover_daemon::http::serve(listener, router, shutdown)
            .await
            .map_err(|e| Error::Internal(format!("serving HTTP on {address}: {e}")));
    };
    let tls = {
        let current = credentials.borrow_and_update();
        server_tls(&current)?
    };
    let incoming = drover_daemon::http::StreamListener::new(tls.incoming(listener), address);
    // Connections accepted after a renewal get the new certificate.
    let follow = async {
        while credentials.changed().await.is_ok() {
            let current = credentials.borrow_and_update().clone();
            let identity = &current.identity;
            if let Err(e) = tls.replace(
                &identity.cert_pem,
                &identity.key_pem,
                &current.ca_bundle_pem,
            ) {
                warn!(error = %e, "the renewed certificate cannot serve HTTPS; keeping the previous one");
            }
        }
        // Renewal has stopped (the agent is stopping): serve on with the last one.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        served = drover_daemon::http::serve(incoming, router, shutdown) => {
            served.map_err(|e| Error::Internal(format!("serving HTTPS on {address}: {e}")))
        }
        () = follow => Ok(()),
    }
}

fn server_tls(credentials: &NodeCredentials) -> Result<ServerTls, Error> {
    let identity = &credentials.identity;
    ServerTls::new(
        &identity.cert_pem,
        &identity.key_pem,
        &credentials.ca_bundle_pem,
    )
    .map_err(|e| Error::Credentials(format!("serving HTTPS with the node certificate: {e}")))
}
