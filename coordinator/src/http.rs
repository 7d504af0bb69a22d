//! The coordinator's HTTP side (config `http_listen`, 7401 by default): `/healthz` and
//! `/readyz` for anyone (systemd, load balancers), `/metrics` for Prometheus with a token
//! of the read role or above (`Authorization: Bearer TOKEN`; none in insecure mode), and
//! the web UI ([`crate::ui`]).
//! Served over TLS with the API's certificate (`drover-coordinator`, chained to the
//! cluster CA in the data dir's `ca.crt`) unless the coordinator runs insecure.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use drover_security::Role;

use crate::coordinator::{Coordinator, now_unix_ms};
use crate::error::Error;
use crate::metrics::RequestLabels;

/// What the handlers share.
#[derive(Clone)]
struct Http {
    coordinator: Arc<Coordinator>,
    /// Tokens are checked (`false` only when the coordinator runs insecure).
    secure: bool,
}

/// The router: health, readiness and metrics.
pub fn router(
    coordinator: Arc<Coordinator>,
    secure: bool,
    reconcile_interval: Duration,
    in_gossip: bool,
) -> Router {
    let health = coordinator.clone();
    let readiness: drover_daemon::http::Readiness =
        Arc::new(move || health.health.checks(reconcile_interval, in_gossip));
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(Http {
            coordinator: coordinator.clone(),
            secure,
        })
        .merge(drover_daemon::http::health_routes(readiness))
        .merge(crate::ui::router(coordinator))
}

async fn metrics(State(http): State<Http>, headers: HeaderMap) -> Response {
    if http.secure {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let inner = http.coordinator.lock().await;
        let checked = crate::security::authenticate_bearer(
            &inner.state,
            bearer,
            Role::Read,
            "reading the metrics",
            now_unix_ms(),
        );
        drop(inner);
        if let Err(e) = checked {
            let status = match e {
                Error::Forbidden(_) => StatusCode::FORBIDDEN,
                _ => StatusCode::UNAUTHORIZED,
            };
            return (status, format!("{e}\n")).into_response();
        }
    }
    let registry = http.coordinator.metrics_registry().await;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    drover_daemon::http::metrics(&registry, accept)
}

/// Counts every gRPC request by method and status code (a tower layer on the server).
#[derive(Debug, Clone)]
pub struct CountRequests {
    metrics: crate::metrics::Metrics,
}

impl CountRequests {
    /// Counting into `metrics`.
    pub fn new(metrics: crate::metrics::Metrics) -> CountRequests {
        CountRequests { metrics }
    }
}

impl<S> tower::Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service whose answers are counted.
#[derive(Debug, Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: crate::metrics::Metrics,
}

impl<S, B, R> tower::Service<axum::http::Request<B>> for Counted<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let method = method_of(request.uri().path());
        let future = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let answer = future.await;
            if let Ok(response) = &answer {
                metrics.request(&RequestLabels {
                    method,
                    code: code_of(response.headers()),
                });
            }
            answer
        })
    }
}

/// `Service/Method` of a gRPC path (`/drover.v1.Control/Apply` → `Control/Apply`); anything
/// else is `other`, so that no caller can make new series.
fn method_of(path: &str) -> String {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    match (parts.next(), parts.next()) {
        (Some(service), Some(method))
            if service.starts_with("drover.v1.")
                && !method.is_empty()
                && method.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            format!("{}/{method}", service.trim_start_matches("drover.v1."))
        }
        _ => "other".to_string(),
    }
}

/// The status code's name, as a failed call carries it in its headers (a call that answers
/// carries it in trailers, after the body, and is `Ok` here).
fn code_of(headers: &HeaderMap) -> String {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0);
    format!("{:?}", tonic::Code::from_i32(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_named_and_anything_else_is_other() {
        assert_eq!(method_of("/drover.v1.Control/Apply"), "Control/Apply");
        assert_eq!(
            method_of("/drover.v1.AgentLink/Connect"),
            "AgentLink/Connect"
        );
        assert_eq!(method_of("/x.Y/Z"), "other");
        assert_eq!(method_of("/drover.v1.Control/../../etc"), "other");
        assert_eq!(method_of("/"), "other");
    }

    #[test]
    fn codes_come_from_the_headers_of_failed_calls() {
        let mut headers = HeaderMap::new();
        assert_eq!(code_of(&headers), "Ok");
        headers.insert("grpc-status", "3".parse().expect("header"));
        assert_eq!(code_of(&headers), "InvalidArgument");
        headers.insert("grpc-status", "99".parse().expect("header"));
        assert_eq!(code_of(&headers), "Unknown");
    }
}
