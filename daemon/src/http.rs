//! The daemons' HTTP side — liveness, readiness and Prometheus metrics on both, and the
//! coordinator's UI — as an axum router served on connections the daemon accepts itself:
//! plain TCP, or TLS connections accepted by the daemon's own acceptor ([`StreamListener`]),
//! so that the one place TLS is set up stays in the security crate.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{Stream, StreamExt};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// The Content-Type of [`metrics`]' answer.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A listener over a stream of accepted connections (e.g. TLS handshakes done elsewhere).
#[derive(Debug)]
pub struct StreamListener<S> {
    stream: S,
    addr: SocketAddr,
}

impl<S> StreamListener<S> {
    /// Connections from `stream`, accepted on `addr`.
    pub fn new(stream: S, addr: SocketAddr) -> StreamListener<S> {
        StreamListener { stream, addr }
    }
}

impl<S, I> axum::serve::Listener for StreamListener<S>
where
    S: Stream<Item = io::Result<I>> + Send + Unpin + 'static,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Io = I;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (I, SocketAddr) {
        loop {
            match self.stream.next().await {
                Some(Ok(io)) => return (io, self.addr),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, addr = %self.addr, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // The acceptor is gone (the daemon is stopping): nothing more comes.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// One readiness check: its name, and `Err(why)` while it fails.
pub type Check = (&'static str, Result<(), String>);

/// What `/readyz` asks: every check, each time.
pub type Readiness = Arc<dyn Fn() -> Vec<Check> + Send + Sync>;

/// `/healthz` (the process answers: 200 `ok`) and `/readyz` (200 `ok` while every check
/// passes, else 503 with a line per check), for systemd watchdogs and load balancers.
/// Neither needs a token.
pub fn health_routes(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let checks = readiness();
                async move { ready_answer(&checks) }
            }),
        )
}

/// The `/readyz` answer for `checks`.
fn ready_answer(checks: &[Check]) -> Response {
    if checks.iter().all(|(_, r)| r.is_ok()) {
        return (StatusCode::OK, "ok\n").into_response();
    }
    let lines: String = checks
        .iter()
        .map(|(name, result)| match result {
            Ok(()) => format!("{name}: ok\n"),
            Err(why) => format!("{name}: {why}\n"),
        })
        .collect();
    (StatusCode::SERVICE_UNAVAILABLE, lines).into_response()
}

/// The Content-Type of the Prometheus text format (0.0.4).
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `registry` as the scraper asks for it: OpenMetrics text when its `Accept` names it (as
/// Prometheus' does), else the Prometheus text format that older tools and `promtool
/// check metrics` read.
pub fn metrics(registry: &Registry, accept: Option<&str>) -> Response {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the metrics failed: {e}\n"),
        )
            .into_response();
    }
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            prometheus_text(&text),
        )
            .into_response()
    }
}

/// OpenMetrics text as the Prometheus text format: a counter family is named with its
/// `_total` (OpenMetrics names the family without it), and the `# UNIT` and `# EOF` lines,
/// which that format does not have, are dropped. Samples are the same in both.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let header = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| line.strip_prefix(prefix).map(|rest| (prefix, rest)));
        match header {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Serves `router` on `listener` until `shutdown`; open requests finish first.
pub async fn serve<L>(listener: L, router: Router, shutdown: CancellationToken) -> io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_with_their_total_in_the_prometheus_format() {
        let openmetrics = "# HELP drover_x_placements Replicas placed.\n# TYPE drover_x_placements counter\n\
                           drover_x_placements_total 2\n# HELP drover_x_commit Commit time.\n\
                           # TYPE drover_x_commit histogram\n# UNIT drover_x_commit seconds\n\
                           drover_x_commit_count 1\n# EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP drover_x_placements_total Replicas placed.\n# TYPE drover_x_placements_total counter\n\
             drover_x_placements_total 2\n# HELP drover_x_commit Commit time.\n\
             # TYPE drover_x_commit histogram\ndrover_x_commit_count 1\n"
        );
    }

    #[test]
    fn readiness_names_every_failing_check() {
        let ok = ready_answer(&[("store", Ok(())), ("gossip", Ok(()))]);
        assert_eq!(ok.status(), StatusCode::OK);
        let failing = ready_answer(&[("store", Ok(())), ("gossip", Err("not joined yet".into()))]);
        assert_eq!(failing.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
