//! The container engine behind a narrow trait: Docker (and Podman's Docker-compatible API)
//! through bollard in production, an in-memory fake for unit tests.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use drover_proto::model::Resources;

/// Labels every Drover container carries; the agent finds its containers by them.
pub mod labels {
    /// Allocation id.
    pub const ALLOC: &str = "drover.alloc";
    /// Service name.
    pub const SERVICE: &str = "drover.service";
    /// Spec revision.
    pub const REVISION: &str = "drover.revision";
    /// Node id of the agent that owns the container.
    pub const NODE: &str = "drover.node";
}

/// A published port: container port → host port on `host_ip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortBinding {
    /// Port inside the container.
    pub container_port: u16,
    /// Host port; `None` lets the engine pick a free one.
    pub host_port: Option<u16>,
    /// Host address the port is bound to (the node's advertise address).
    pub host_ip: IpAddr,
}

/// Everything needed to create a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Container name, unique on the engine.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Entrypoint override; empty keeps the image's.
    pub command: Vec<String>,
    /// Arguments override; empty keeps the image's.
    pub args: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Labels (see [`labels`]).
    pub labels: BTreeMap<String, String>,
    /// CPU limit in millicores; 0 = no limit.
    pub cpu_millis: u64,
    /// Memory limit in bytes; 0 = no limit.
    pub memory_bytes: u64,
    /// Published ports.
    pub ports: Vec<PortBinding>,
    /// Resolver settings; `None` keeps the engine's (the host's resolvers).
    pub dns: Option<ContainerDns>,
}

/// A container's resolver settings (its /etc/resolv.conf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerDns {
    /// Name servers.
    pub servers: Vec<std::net::Ipv4Addr>,
    /// Search domains, in order.
    pub search: Vec<String>,
    /// Resolver options, e.g. `ndots:5`.
    pub options: Vec<String>,
}

/// Lifecycle state of a container as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, never started.
    Created,
    /// Running.
    Running,
    /// Exited with this code (also after being killed: 137 for SIGKILL).
    Exited {
        /// Exit code.
        code: i64,
    },
    /// Any other engine state (paused, restarting, removing, dead), by its name.
    Other(String),
}

/// A container as observed on the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Engine id (full).
    pub id: String,
    /// Name, without a leading slash.
    pub name: String,
    /// Image reference it was created from.
    pub image: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Current state.
    pub state: ContainerState,
    /// When it last started, if ever.
    pub started_at: Option<SystemTime>,
    /// Published ports: container port → host port.
    pub host_ports: BTreeMap<u16, u16>,
    /// The container's main process (as seen from the host) while it runs: where its
    /// cgroup, and so its usage, is found. `None` when it does not run or the engine does
    /// not say.
    pub pid: Option<u32>,
    /// The limits it runs with, as the engine reports them: CPU in millicores, memory in
    /// bytes; 0 = no limit in that dimension.
    pub limits: Resources,
}

/// Errors of a container runtime. Messages name the container or image and the engine's
/// own words.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image is not on the node and could not be pulled.
    #[error("image {image:?} is not present on this node and could not be pulled: {reason}")]
    ImageUnavailable {
        /// Image reference.
        image: String,
        /// Why the pull failed (no registry reachable, not found, …).
        reason: String,
    },
    /// No such container.
    #[error("container {0} does not exist")]
    NotFound(String),
    /// The engine cannot be reached.
    #[error("container engine at {endpoint} is unreachable: {reason}")]
    Unreachable {
        /// Socket or URL.
        endpoint: String,
        /// Cause.
        reason: String,
    },
    /// The container's process cannot start: its command does not exist or may not be
    /// executed. Starting it again cannot help.
    #[error("start container {target}: its command cannot run: {reason}")]
    CannotExecute {
        /// Container id.
        target: String,
        /// The engine's message.
        reason: String,
    },
    /// The engine does not implement the operation at all (e.g. Podman's Docker-compatible
    /// API before 5.1 has no container update): asking again cannot help.
    #[error("{operation} {target}: the engine does not support it: {reason}")]
    Unsupported {
        /// What was attempted, e.g. "update limits of container".
        operation: &'static str,
        /// Container id.
        target: String,
        /// What the engine answered, and what would support it.
        reason: String,
    },
    /// The engine refused or failed an operation.
    #[error("{operation} {target}: {reason}")]
    Engine {
        /// What was attempted, e.g. "create container".
        operation: &'static str,
        /// Container name/id or image.
        target: String,
        /// The engine's message.
        reason: String,
    },
}

/// One line of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// When the engine took it: RFC 3339 with nanoseconds, UTC (so later lines sort after).
    pub timestamp: String,
    /// From standard error.
    pub stderr: bool,
    /// The line, without its newline.
    pub text: String,
}

/// Which of a container's output to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Go on with new lines until the container stops.
    pub follow: bool,
    /// Only lines from this Unix time on, in seconds; 0: from the start.
    pub since_unix_s: i64,
    /// Only the last this many lines (before following); `None`: all.
    pub tail: Option<u32>,
}

/// Lines of a container's output, as [`ContainerRuntime::logs`] reads them.
pub type LogStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<LogEntry, RuntimeError>> + Send>>;

/// A container engine. Every method acts on one container or image; the agent's reconcile
/// loop decides what to call.
#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync + std::fmt::Debug + 'static {
    /// Containers labelled with `drover.node = node`, in every state.
    async fn list(&self, node: &str) -> Result<Vec<ContainerInfo>, RuntimeError>;
    /// Makes sure `image` is present: nothing if it is, a pull (progress logged) if not.
    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError>;
    /// Creates a container; returns its id.
    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError>;
    /// Starts a created or exited container.
    async fn start(&self, id: &str) -> Result<(), RuntimeError>;
    /// Stops a container: SIGTERM, then SIGKILL after `grace`.
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;
    /// Removes a container (forcefully, if it still runs).
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// Current state of one container.
    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError>;
    /// Runs `command` in the container; returns its exit code. Bounded by `timeout`.
    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<i64, RuntimeError>;
    /// CPU (millicores, averaged since the previous sample) and memory in use.
    async fn usage(&self, id: &str) -> Result<Resources, RuntimeError>;
    /// Changes a container's CPU limit (millicores) and memory limit (bytes) in place,
    /// without restarting it; the new limits outlast later restarts.
    ///
    /// A dimension that is 0 in `limits` is left as it is: the engine's update reads 0 as
    /// "no change", so a limit cannot be removed this way (Drover never asks for that).
    /// Memory is limited without swap (the memory-and-swap limit is set to the same value).
    /// Lowering memory below what the container uses fails (cgroup v1) or has the kernel
    /// kill it (cgroup v2): the caller checks its usage first.
    async fn update_resources(&self, id: &str, limits: Resources) -> Result<(), RuntimeError>;
    /// The container's output (standard output and error, interleaved as written). An
    /// engine without one says so.
    fn logs(&self, id: &str, options: LogOptions) -> LogStream {
        let _ = options;
        let error = RuntimeError::Unsupported {
            operation: "read the output of container",
            target: id.to_owned(),
            reason: "this engine gives no container output".to_owned(),
        };
        Box::pin(futures_util::stream::once(async move { Err(error) }))
    }
}

#[doc(hidden)]
pub mod conformance;
mod docker;
mod fake;

pub use docker::DockerRuntime;
pub use fake::{FakeOp, FakeRuntime};
