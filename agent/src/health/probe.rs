//! One probe of one container: a TCP connect, an HTTP GET or a command run in the container.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use drover_proto::model::ProbeAction;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::runtime::ContainerRuntime;

/// Longest HTTP status line read before giving up on the response.
const MAX_STATUS_LINE: u64 = 1024;

/// Where a container can be probed from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// Engine id of the container (for exec probes).
    pub container_id: String,
    /// Host address its ports are published on.
    pub host: IpAddr,
    /// Published ports: container port → host port.
    pub host_ports: BTreeMap<u16, u16>,
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// Whether the probe passed.
    pub ok: bool,
    /// What happened, for logs and events: "HTTP 503", "exit code 1",
    /// "connect 127.0.0.1:31000: connection refused", ….
    pub detail: String,
}

impl ProbeResult {
    fn pass(detail: impl Into<String>) -> ProbeResult {
        ProbeResult {
            ok: true,
            detail: detail.into(),
        }
    }

    fn fail(detail: impl Into<String>) -> ProbeResult {
        ProbeResult {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Runs `action` once against `target`, bounded by `timeout`. Never fails: every problem is
/// a failed probe with a detail saying what went wrong.
pub async fn probe_once(
    action: &ProbeAction,
    target: &ProbeTarget,
    runtime: &dyn ContainerRuntime,
    timeout: Duration,
) -> ProbeResult {
    match action {
        ProbeAction::Tcp { port } => {
            let addr = match published(target, *port) {
                Ok(addr) => addr,
                Err(result) => return result,
            };
            let what = format!("connect {addr}");
            bounded(&what, timeout, probe_tcp(addr)).await
        }
        ProbeAction::Http { port, path } => {
            let addr = match published(target, *port) {
                Ok(addr) => addr,
                Err(result) => return result,
            };
            let what = format!("GET http://{addr}{path}");
            bounded(&what, timeout, probe_http(addr, path)).await
        }
        ProbeAction::Exec { command } => {
            let what = format!("exec {command:?} in container {}", target.container_id);
            let exec = probe_exec(runtime, &target.container_id, command, timeout);
            bounded(&what, timeout, exec).await
        }
    }
}

/// The host address a container port is published on.
fn published(target: &ProbeTarget, container_port: u16) -> Result<SocketAddr, ProbeResult> {
    match target.host_ports.get(&container_port) {
        Some(&host_port) => Ok(SocketAddr::new(target.host, host_port)),
        None => Err(ProbeResult::fail(format!(
            "container port {container_port} is not published"
        ))),
    }
}

async fn bounded(
    what: &str,
    timeout: Duration,
    probe: impl Future<Output = ProbeResult>,
) -> ProbeResult {
    match tokio::time::timeout(timeout, probe).await {
        Ok(result) => result,
        Err(_) => ProbeResult::fail(format!(
            "{what}: timed out after {}",
            format_duration(timeout)
        )),
    }
}

async fn probe_tcp(addr: SocketAddr) -> ProbeResult {
    match TcpStream::connect(addr).await {
        Ok(_) => ProbeResult::pass(format!("connected to {addr}")),
        Err(err) => ProbeResult::fail(format!("connect {addr}: {}", describe(&err))),
    }
}

async fn probe_http(addr: SocketAddr, path: &str) -> ProbeResult {
    let mut stream = match TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(err) => return ProbeResult::fail(format!("connect {addr}: {}", describe(&err))),
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if let Err(err) = stream.write_all(request.as_bytes()).await {
        return ProbeResult::fail(format!(
            "GET http://{addr}{path}: sending the request: {}",
            describe(&err)
        ));
    }
    let mut status_line = String::new();
    let mut reader = BufReader::new(stream.take(MAX_STATUS_LINE));
    if let Err(err) = reader.read_line(&mut status_line).await {
        return ProbeResult::fail(format!(
            "GET http://{addr}{path}: reading the response: {}",
            describe(&err)
        ));
    }
    match parse_status(&status_line) {
        Some(code) if (200..400).contains(&code) => ProbeResult::pass(format!("HTTP {code}")),
        Some(code) => ProbeResult::fail(format!("HTTP {code}")),
        None if status_line.is_empty() => ProbeResult::fail(format!(
            "GET http://{addr}{path}: connection closed before a response"
        )),
        None => ProbeResult::fail(format!(
            "GET http://{addr}{path}: malformed status line {:?}",
            status_line.trim_end()
        )),
    }
}

/// The status code of an HTTP/1.x status line such as `HTTP/1.1 200 OK\r\n`.
fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/") || code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

async fn probe_exec(
    runtime: &dyn ContainerRuntime,
    container_id: &str,
    command: &[String],
    timeout: Duration,
) -> ProbeResult {
    // The runtime's error names the container already.
    match runtime.exec(container_id, command, timeout).await {
        Ok(0) => ProbeResult::pass("exit code 0"),
        Ok(code) => ProbeResult::fail(format!("exit code {code}")),
        Err(err) => ProbeResult::fail(format!("exec {command:?}: {err}")),
    }
}

/// An I/O error without the "(os error N)" suffix, starting lowercase:
/// "connection refused".
fn describe(err: &io::Error) -> String {
    let full = err.to_string();
    let message = match full.find(" (os error ") {
        Some(end) => &full[..end],
        None => &full,
    };
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// "1s", "250ms", or the debug form for anything finer.
fn format_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else if duration.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{duration:?}")
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::health::test_support::{LOOPBACK, exec_calls, running_container};
    use crate::runtime::FakeRuntime;

    const CONTAINER_PORT: u16 = 8080;
    const TIMEOUT: Duration = Duration::from_secs(5);

    fn target(host_port: u16) -> ProbeTarget {
        ProbeTarget {
            container_id: "c0ffee".to_owned(),
            host: LOOPBACK,
            host_ports: BTreeMap::from([(CONTAINER_PORT, host_port)]),
        }
    }

    fn http(path: &str) -> ProbeAction {
        ProbeAction::Http {
            port: CONTAINER_PORT,
            path: path.to_owned(),
        }
    }

    async fn probe(action: &ProbeAction, target: &ProbeTarget) -> ProbeResult {
        let runtime = FakeRuntime::new();
        let result = probe_once(action, target, &runtime, TIMEOUT).await;
        assert_eq!(exec_calls(&runtime), Vec::<String>::new());
        result
    }

    async fn listener() -> (TcpListener, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        (listener, port)
    }

    /// A port nothing listens on.
    async fn closed_port() -> u16 {
        let (_listener, port) = listener().await;
        port
    }

    /// Serves one connection: reads the request head, writes `response`, closes. Returns
    /// the request head it read.
    async fn serve_once(response: &'static str) -> (u16, JoinHandle<String>) {
        let (listener, port) = listener().await;
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            while !head.ends_with("\r\n\r\n") {
                let read = reader.read_line(&mut head).await.expect("read request");
                if read == 0 {
                    break;
                }
            }
            let mut stream = reader.into_inner();
            stream
                .write_all(response.as_bytes())
                .await
                .expect("write response");
            head
        });
        (port, server)
    }

    #[tokio::test]
    async fn tcp_passes_when_the_port_accepts() {
        let (_listener, port) = listener().await;
        let result = probe(
            &ProbeAction::Tcp {
                port: CONTAINER_PORT,
            },
            &target(port),
        )
        .await;
        assert_eq!(
            result,
            ProbeResult::pass(format!("connected to 127.0.0.1:{port}"))
        );
    }

    #[tokio::test]
    async fn tcp_fails_when_the_connection_is_refused() {
        let port = closed_port().await;
        let result = probe(
            &ProbeAction::Tcp {
                port: CONTAINER_PORT,
            },
            &target(port),
        )
        .await;
        assert_eq!(
            result,
            ProbeResult::fail(format!("connect 127.0.0.1:{port}: connection refused"))
        );
    }

    #[tokio::test]
    async fn tcp_fails_when_the_port_is_not_published() {
        let result = probe(&ProbeAction::Tcp { port: 9999 }, &target(1)).await;
        assert_eq!(
            result,
            ProbeResult::fail("container port 9999 is not published")
        );
    }

    #[tokio::test]
    async fn http_sends_a_minimal_get_and_passes_on_200() {
        let (port, server) = serve_once("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let result = probe(&http("/healthz?full=1"), &target(port)).await;
        assert_eq!(result, ProbeResult::pass("HTTP 200"));
        let request = server.await.expect("server");
        let expected = [
            "GET /healthz?full=1 HTTP/1.0\r\n".to_owned(),
            format!("Host: 127.0.0.1:{port}\r\n"),
            "Connection: close\r\n\r\n".to_owned(),
        ];
        assert_eq!(request, expected.concat());
    }

    #[tokio::test]
    async fn http_passes_on_a_redirect() {
        let (port, _server) =
            serve_once("HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\n\r\n").await;
        let result = probe(&http("/"), &target(port)).await;
        assert_eq!(result, ProbeResult::pass("HTTP 302"));
    }

    #[tokio::test]
    async fn http_fails_on_503() {
        let (port, _server) = serve_once("HTTP/1.0 503 Service Unavailable\r\n\r\n").await;
        let result = probe(&http("/"), &target(port)).await;
        assert_eq!(result, ProbeResult::fail("HTTP 503"));
    }

    #[tokio::test]
    async fn http_fails_on_404() {
        let (port, _server) = serve_once("HTTP/1.0 404 Not Found\r\n\r\n").await;
        let result = probe(&http("/"), &target(port)).await;
        assert_eq!(result, ProbeResult::fail("HTTP 404"));
    }

    #[tokio::test]
    async fn http_fails_on_a_response_that_is_not_http() {
        let (port, _server) = serve_once("SSH-2.0-OpenSSH_9.6\r\n").await;
        let result = probe(&http("/"), &target(port)).await;
        assert_eq!(
            result,
            ProbeResult::fail(format!(
                "GET http://127.0.0.1:{port}/: malformed status line \"SSH-2.0-OpenSSH_9.6\""
            ))
        );
    }

    #[tokio::test]
    async fn http_fails_when_the_server_closes_without_answering() {
        let (port, _server) = serve_once("").await;
        let result = probe(&http("/ready"), &target(port)).await;
        assert_eq!(
            result,
            ProbeResult::fail(format!(
                "GET http://127.0.0.1:{port}/ready: connection closed before a response"
            ))
        );
    }

    #[tokio::test]
    async fn http_fails_when_the_connection_is_refused() {
        let port = closed_port().await;
        let result = probe(&http("/"), &target(port)).await;
        assert!(!result.ok);
        assert!(result.detail.contains("refused"), "{}", result.detail);
    }

    // On paused time the clock may jump to the deadline while the connection is still being
    // set up; the probe reports a timeout either way.
    #[tokio::test(start_paused = true)]
    async fn http_times_out_when_the_server_never_answers() {
        let (listener, port) = listener().await;
        let _server = tokio::spawn(async move {
            let (_stream, _) = listener.accept().await.expect("accept");
            std::future::pending::<()>().await;
        });
        let runtime = FakeRuntime::new();
        let timeout = Duration::from_millis(200);
        let result = probe_once(&http("/slow"), &target(port), &runtime, timeout).await;
        assert_eq!(
            result,
            ProbeResult::fail(format!(
                "GET http://127.0.0.1:{port}/slow: timed out after 200ms"
            ))
        );
    }

    /// A fake engine with one running container, and a target for it.
    async fn container() -> (FakeRuntime, ProbeTarget) {
        let runtime = FakeRuntime::new();
        let id = running_container(&runtime).await;
        let target = ProbeTarget {
            container_id: id,
            host: LOOPBACK,
            host_ports: BTreeMap::new(),
        };
        (runtime, target)
    }

    fn exec(command: &[&str]) -> ProbeAction {
        ProbeAction::Exec {
            command: command.iter().map(|arg| (*arg).to_owned()).collect(),
        }
    }

    #[tokio::test]
    async fn exec_runs_the_command_in_the_container_and_passes_on_exit_0() {
        let (runtime, target) = container().await;
        let action = exec(&["pg_isready", "-q"]);
        let result = probe_once(&action, &target, &runtime, TIMEOUT).await;
        assert_eq!(result, ProbeResult::pass("exit code 0"));
        let id = &target.container_id;
        assert_eq!(
            exec_calls(&runtime),
            vec![format!("exec {id} pg_isready -q")]
        );
    }

    #[tokio::test]
    async fn exec_fails_on_a_non_zero_exit_code() {
        let (runtime, target) = container().await;
        runtime.set_exec_result(None, 3);
        let result = probe_once(&exec(&["check"]), &target, &runtime, TIMEOUT).await;
        assert_eq!(result, ProbeResult::fail("exit code 3"));
    }

    #[tokio::test]
    async fn exec_fails_when_the_container_is_not_running() {
        let (runtime, target) = container().await;
        runtime.kill(&target.container_id, 137);
        let result = probe_once(&exec(&["true"]), &target, &runtime, TIMEOUT).await;
        let id = &target.container_id;
        assert_eq!(
            result,
            ProbeResult::fail(format!(
                "exec [\"true\"]: exec in container {id}: container {id} is not running"
            ))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn exec_times_out_when_the_command_hangs() {
        let (runtime, target) = container().await;
        runtime.set_exec_hang(None);
        let timeout = Duration::from_millis(100);
        let result = probe_once(&exec(&["sleep", "infinity"]), &target, &runtime, timeout).await;
        // The fake engine and the probe give up at the same instant; either may say so.
        assert!(!result.ok);
        assert!(
            result.detail.contains("timed out after 100ms"),
            "{}",
            result.detail
        );
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status("HTTP/1.0 503\r\n"), Some(503));
        assert_eq!(parse_status("HTTP/1.1 200"), Some(200));
        assert_eq!(parse_status("HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(parse_status("HTTP/1.1 abc OK\r\n"), None);
        assert_eq!(parse_status("ICY 200 OK\r\n"), None);
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(Duration::from_secs(1)), "1s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_micros(10)), "10µs");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn io_errors_lose_the_os_error_number() {
        let refused = io::Error::from_raw_os_error(111);
        assert_eq!(describe(&refused), "connection refused");
        let custom = io::Error::other("Broken thing");
        assert_eq!(describe(&custom), "broken thing");
    }
}
