//! [`ContainerRuntime`] on Docker, or Podman's Docker-compatible API, through bollard.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum,
    ContainerStatsResponse, ContainerUpdateBody, HostConfig, PortBinding as DockerPortBinding,
    PortMap, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StatsOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::{ClientVersion, Docker};
use drover_proto::model::Resources;
use futures_util::StreamExt;
use tracing::{debug, info};

use super::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ContainerState, LogEntry, LogOptions,
    LogStream, RuntimeError, labels,
};

/// The newest Engine API version Drover needs: Docker 20.10's. `connect` negotiates down from
/// it when the engine is older; a newer engine serves it too (bollard's own default, 1.53, is
/// refused by Docker 20.10).
const API_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// Where Docker listens unless `DOCKER_HOST` says otherwise.
const DEFAULT_ENDPOINT: &str = "unix:///var/run/docker.sock";

/// Seconds any one request may take, unless the operation says otherwise (`stop` waits for
/// its grace period on top).
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// Containers `list` inspects at once.
const LIST_CONCURRENCY: usize = 8;

/// How often `exec` polls the engine for an exit code once the command's output has ended.
const EXEC_POLL: Duration = Duration::from_millis(20);

/// Bytes of an exec's output kept for the debug log.
const EXEC_OUTPUT_KEPT: usize = 2048;

/// The label holding the image reference as Drover gave it. Podman reports the reference it
/// resolved instead ("user-service" becomes "localhost/user-service:latest"), Docker the one
/// it was given; the label makes both report the latter.
const IMAGE_LABEL: &str = "drover.image";

/// What [`ContainerRuntime::update_resources`] is called in errors.
const UPDATE_OPERATION: &str = "update limits of container";

/// A container engine reached over the Docker Engine API.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    endpoint: String,
    /// The last inspection of each running container, with what the list said of it then:
    /// while the list says the same, the inspection still holds (see [`Fingerprint`]).
    inspected: Arc<Mutex<HashMap<String, (Fingerprint, ContainerInfo)>>>,
}

/// What the container list says of a running container that could change its inspection:
/// its state and published ports. While both stay the same its labels, image and ports are
/// as inspected, so a pass lists 50 containers with one request, not 51 (the list lacks
/// start times and exit codes, which only change with the state).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    state: String,
    ports: Vec<(u16, Option<u16>)>,
}

impl Fingerprint {
    /// `None` for a container that does not run: its exit code is read afresh every time.
    fn of(summary: &bollard::models::ContainerSummary) -> Option<Fingerprint> {
        let state = summary.state.as_ref()?.to_string();
        if state != "running" {
            return None;
        }
        let mut ports: Vec<(u16, Option<u16>)> = summary
            .ports
            .iter()
            .flatten()
            .map(|p| (p.private_port, p.public_port))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        Some(Fingerprint { state, ports })
    }
}

/// Whether an engine's start error says the container's command cannot run (missing or not
/// executable), as runc, crun and Podman word it: no retry fixes that.
fn is_exec_failure(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    let exec = m.contains("exec:") || m.contains("executable") || m.contains("oci runtime");
    exec && (m.contains("no such file or directory")
        || m.contains("executable file not found")
        || m.contains("not found in $path")
        || m.contains("permission denied"))
}

/// Whether an engine's error (other than a 404) says the container is gone: Podman answers
/// 500 "container … does not exist in database: no such container" when it is removed while
/// the request runs (e.g. inspected between a list and its removal).
fn is_vanished_container(message: &str) -> bool {
    message.to_ascii_lowercase().contains("no such container")
}

impl DockerRuntime {
    /// Connects to the engine at `endpoint` and checks that it answers.
    ///
    /// `None` uses `DOCKER_HOST`, else `unix:///var/run/docker.sock`. Accepted endpoints:
    /// `unix:///path/to/socket` (a Podman socket works too), a bare socket path,
    /// `tcp://host:port` and `http://host:port`. The API version is negotiated: 1.41 (Docker
    /// 20.10), or the engine's own if older.
    pub async fn connect(endpoint: Option<&str>) -> Result<DockerRuntime, RuntimeError> {
        let endpoint = match endpoint {
            Some(endpoint) => endpoint.to_owned(),
            None => std::env::var("DOCKER_HOST")
                .ok()
                .filter(|host| !host.is_empty())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned()),
        };
        let unreachable = |reason: String| RuntimeError::Unreachable {
            endpoint: endpoint.clone(),
            reason,
        };
        let docker = if endpoint.starts_with("unix://") || endpoint.starts_with('/') {
            Docker::connect_with_unix(&endpoint, REQUEST_TIMEOUT_SECS, &API_VERSION)
        } else if endpoint.starts_with("tcp://") || endpoint.starts_with("http://") {
            Docker::connect_with_http(&endpoint, REQUEST_TIMEOUT_SECS, &API_VERSION)
        } else {
            return Err(unreachable(
                "unsupported endpoint: use unix:///path/to/socket, tcp://host:port or \
                 http://host:port"
                    .to_owned(),
            ));
        }
        .map_err(|err| unreachable(err.to_string()))?;
        docker
            .ping()
            .await
            .map_err(|err| unreachable(format!("ping failed: {err}")))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|err| unreachable(format!("API version negotiation failed: {err}")))?;
        let runtime = DockerRuntime {
            docker,
            endpoint,
            inspected: Arc::new(Mutex::new(HashMap::new())),
        };
        debug!(
            endpoint = %runtime.endpoint,
            api_version = %runtime.api_version(),
            "connected to container engine"
        );
        Ok(runtime)
    }

    /// The endpoint this runtime talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The negotiated Engine API version, e.g. "1.41".
    pub fn api_version(&self) -> String {
        let version = self.docker.client_version();
        format!("{}.{}", version.major_version, version.minor_version)
    }

    /// Maps a bollard error: 404 → `NotFound`, transport failures → `Unreachable`, the rest →
    /// `Engine` with the engine's own message.
    fn error(&self, operation: &'static str, target: &str, err: BollardError) -> RuntimeError {
        match err {
            BollardError::DockerResponseServerError {
                status_code: 404, ..
            } => RuntimeError::NotFound(target.to_owned()),
            BollardError::DockerResponseServerError { message, .. }
                if is_vanished_container(&message) =>
            {
                RuntimeError::NotFound(target.to_owned())
            }
            BollardError::DockerResponseServerError { message, .. } => RuntimeError::Engine {
                operation,
                target: target.to_owned(),
                reason: message,
            },
            err if is_transport_error(&err) => RuntimeError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: format!("{operation} {target}: {err}"),
            },
            err => RuntimeError::Engine {
                operation,
                target: target.to_owned(),
                reason: err.to_string(),
            },
        }
    }

    /// Drops the list's last inspection of a container (by id or name): it shows what the
    /// container was, e.g. its limits before an update, while the list still says the same.
    fn forget_inspection(&self, id_or_name: &str) {
        let mut cache = self.inspected.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|id, (_, info)| id != id_or_name && info.name != id_or_name);
    }

    /// Pulls `image`, logging each layer's status changes.
    async fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        let unavailable = |reason: String| RuntimeError::ImageUnavailable {
            image: image.to_owned(),
            reason,
        };
        let mut options = CreateImageOptionsBuilder::default().from_image(image);
        if !is_tagged(image) {
            // An untagged pull would fetch every tag of the repository.
            options = options.tag("latest");
        }
        info!(image = %image, "pulling image");
        let mut progress =
            std::pin::pin!(self.docker.create_image(Some(options.build()), None, None));
        // Per layer (or "" for the image as a whole), the last status logged.
        let mut statuses: HashMap<String, String> = HashMap::new();
        while let Some(item) = progress.next().await {
            let update = match item {
                Ok(update) => update,
                Err(err) if is_transport_error(&err) => {
                    return Err(self.error("pull image", image, err));
                }
                Err(BollardError::DockerResponseServerError { message, .. }) => {
                    return Err(unavailable(message));
                }
                Err(BollardError::DockerStreamError { error }) => return Err(unavailable(error)),
                Err(err) => return Err(unavailable(err.to_string())),
            };
            let Some(status) = update.status else {
                continue;
            };
            let layer = update.id.unwrap_or_default();
            if statuses.get(&layer) != Some(&status) {
                info!(image = %image, layer = %layer, status = %status, "pulling image");
                statuses.insert(layer, status);
            }
        }
        match self.docker.inspect_image(image).await {
            Ok(_) => {
                info!(image = %image, "image pulled");
                Ok(())
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(unavailable(
                "the pull ended without error but the image is still missing".to_owned(),
            )),
            Err(err) => Err(self.error("inspect image", image, err)),
        }
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for DockerRuntime {
    async fn list(&self, node: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let selector = format!("{}={node}", labels::NODE);
        let filters = HashMap::from([("label", vec![selector.as_str()])]);
        // Podman's Docker API reports a container whose process it is cleaning up after as
        // `stopped`, a state bollard does not know, so the whole list fails to parse; the
        // state lasts milliseconds, and the list is read again a moment later.
        let mut attempts = 0;
        let summaries = loop {
            let options = ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build();
            match self.docker.list_containers(Some(options)).await {
                Ok(summaries) => break summaries,
                Err(err) if attempts < LIST_RETRIES && is_unknown_state(&err) => {
                    attempts += 1;
                    debug!(node, error = %err, attempts, "a container in a state bollard does not know; listing again");
                    tokio::time::sleep(LIST_RETRY_PAUSE).await;
                }
                Err(err) => {
                    return Err(self.error(
                        "list containers",
                        &format!("labelled {selector}"),
                        err,
                    ));
                }
            }
        };
        // The list lacks start times and exit codes (API 1.41): a container is inspected,
        // a few at a time, unless it runs as it did at its last inspection.
        let mut containers = Vec::with_capacity(summaries.len());
        let mut to_inspect = Vec::new();
        {
            let cache = self.inspected.lock().unwrap_or_else(|e| e.into_inner());
            for summary in &summaries {
                let Some(id) = summary.id.clone() else {
                    continue;
                };
                let fingerprint = Fingerprint::of(summary);
                match (cache.get(&id), &fingerprint) {
                    (Some((seen, info)), Some(now)) if seen == now => containers.push(info.clone()),
                    _ => to_inspect.push((id, fingerprint)),
                }
            }
        }
        let inspections: Vec<(Option<Fingerprint>, Result<ContainerInfo, RuntimeError>)> =
            futures_util::stream::iter(to_inspect)
                .map(
                    |(id, fingerprint): (String, Option<Fingerprint>)| async move {
                        (fingerprint, self.inspect(&id).await)
                    },
                )
                .buffer_unordered(LIST_CONCURRENCY)
                .collect()
                .await;
        let mut cache = self.inspected.lock().unwrap_or_else(|e| e.into_inner());
        for (fingerprint, inspection) in inspections {
            match inspection {
                Ok(info) => {
                    match fingerprint {
                        Some(f) if info.state == ContainerState::Running => {
                            cache.insert(info.id.clone(), (f, info.clone()));
                        }
                        _ => {
                            cache.remove(&info.id);
                        }
                    }
                    containers.push(info);
                }
                // Removed between the list and its inspection.
                Err(RuntimeError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        // Containers gone from the list are forgotten.
        let listed: BTreeSet<&str> = summaries.iter().filter_map(|s| s.id.as_deref()).collect();
        cache.retain(|id, _| listed.contains(id.as_str()));
        drop(cache);
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(containers)
    }

    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => self.pull(image).await,
            Err(err) => Err(self.error("inspect image", image, err)),
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        match self
            .docker
            .create_container(Some(options), create_body(spec))
            .await
        {
            Ok(created) => Ok(created.id),
            // The container does not exist yet, so a 404 is about its image.
            Err(BollardError::DockerResponseServerError {
                status_code: 404,
                message,
            }) => Err(RuntimeError::ImageUnavailable {
                image: spec.image.clone(),
                reason: format!("creating container {}: {message}", spec.name),
            }),
            Err(err) => Err(self.error("create container", &spec.name, err)),
        }
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        // A running container answers 304, which bollard reports as success.
        match self.docker.start_container(id, None).await {
            Err(BollardError::DockerResponseServerError { message, .. })
                if is_exec_failure(&message) =>
            {
                Err(RuntimeError::CannotExecute {
                    target: id.to_owned(),
                    reason: message,
                })
            }
            result => result.map_err(|err| self.error("start container", id, err)),
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let grace_secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let options = StopContainerOptionsBuilder::default()
            .t(i32::try_from(grace_secs).unwrap_or(i32::MAX))
            .build();
        // The engine answers after the grace period at worst; the request may take that long.
        let docker = self.docker.clone().with_timeout(Duration::from_secs(
            REQUEST_TIMEOUT_SECS.saturating_add(grace_secs),
        ));
        // A stopped container answers 304, which bollard reports as success.
        docker
            .stop_container(id, Some(options))
            .await
            .map_err(|err| self.error("stop container", id, err))
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(err) => match self.error("remove container", id, err) {
                RuntimeError::NotFound(_) => Ok(()),
                err => Err(err),
            },
        }
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let inspection = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|err| self.error("inspect container", id, err))?;
        Ok(container_info(inspection))
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<i64, RuntimeError> {
        let run = async {
            let exec = self
                .docker
                .create_exec(
                    id,
                    CreateExecOptions {
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        cmd: Some(command.to_vec()),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|err| self.error("exec in container", id, err))?;
            let started = self
                .docker
                .start_exec(&exec.id, None)
                .await
                .map_err(|err| self.error("exec in container", id, err))?;
            // The output ends when the command does; only its tail is kept, for the log.
            let mut output = Vec::new();
            if let StartExecResults::Attached {
                output: mut stream, ..
            } = started
            {
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|err| self.error("exec in container", id, err))?;
                    output.extend_from_slice(&chunk.into_bytes());
                    let excess = output.len().saturating_sub(EXEC_OUTPUT_KEPT);
                    output.drain(..excess);
                }
            }
            loop {
                let state = self
                    .docker
                    .inspect_exec(&exec.id)
                    .await
                    .map_err(|err| self.error("exec in container", id, err))?;
                if state.running != Some(true) {
                    let code = state.exit_code.ok_or_else(|| RuntimeError::Engine {
                        operation: "exec in container",
                        target: id.to_owned(),
                        reason: "the engine reported no exit code".to_owned(),
                    })?;
                    debug!(
                        container = %id,
                        command = ?command,
                        exit_code = code,
                        output = %String::from_utf8_lossy(&output),
                        "exec finished"
                    );
                    return Ok(code);
                }
                tokio::time::sleep(EXEC_POLL).await;
            }
        };
        // On timeout the command may go on running in the container: the Engine API cannot
        // kill an exec.
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| RuntimeError::Engine {
                operation: "exec in container",
                target: id.to_owned(),
                reason: format!("exec timed out after {timeout:?} (command {command:?})"),
            })?
    }

    async fn usage(&self, id: &str) -> Result<Resources, RuntimeError> {
        // One sample (`stream: false`): the engine fills `precpu_stats` with the sample taken a
        // moment earlier. `one-shot` would skip that and needs API 1.41+ anyway.
        let options = StatsOptionsBuilder::default().stream(false).build();
        let mut samples = std::pin::pin!(self.docker.stats(id, Some(options)));
        let stats = samples
            .next()
            .await
            .ok_or_else(|| RuntimeError::Engine {
                operation: "read usage of container",
                target: id.to_owned(),
                reason: "the engine returned no sample".to_owned(),
            })?
            .map_err(|err| self.error("read usage of container", id, err))?;
        Ok(resources(&stats))
    }

    async fn update_resources(&self, id: &str, limits: Resources) -> Result<(), RuntimeError> {
        match self.docker.update_container(id, update_body(limits)).await {
            Ok(()) => {
                self.forget_inspection(id);
                debug!(container = %id, cpu_millis = limits.cpu_millis, memory_bytes = limits.memory_bytes, "container limits updated");
                Ok(())
            }
            // A 404 is a missing container, or an engine without the endpoint: Podman's
            // Docker-compatible API before 5.1 answers a plain "Not Found" for any container.
            Err(BollardError::DockerResponseServerError {
                status_code: 404,
                message,
            }) => match self.inspect(id).await {
                Ok(_) => Err(RuntimeError::Unsupported {
                    operation: UPDATE_OPERATION,
                    target: id.to_owned(),
                    reason: format!(
                        "{} has no container update endpoint (404 {message:?} for a container \
                         it has); Podman's Docker-compatible API has one from Podman 5.1 on",
                        self.endpoint
                    ),
                }),
                Err(err) => Err(err),
            },
            Err(err) => Err(self.error(UPDATE_OPERATION, id, err)),
        }
    }

    fn logs(&self, id: &str, options: LogOptions) -> LogStream {
        let mut builder = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .follow(options.follow)
            .since(i32::try_from(options.since_unix_s).unwrap_or(i32::MAX));
        if let Some(tail) = options.tail {
            builder = builder.tail(&tail.to_string());
        }
        let this = self.clone();
        let target = id.to_owned();
        let lines = self.docker.logs(id, Some(builder.build()));
        Box::pin(lines.map(move |output| match output {
            Ok(output) => Ok(log_entry(&output)),
            Err(err) => Err(this.error("read the output of container", &target, err)),
        }))
    }
}

/// Lists read again when one failed to parse for a state bollard does not know.
const LIST_RETRIES: u32 = 20;
/// Pause between those reads.
const LIST_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Whether the engine's answer named a state bollard does not know (Podman's `stopped`).
fn is_unknown_state(err: &BollardError) -> bool {
    matches!(err, BollardError::JsonDataError { message, .. } if message.contains("unknown variant"))
}

/// Whether bollard failed to reach the engine at all, rather than the engine refusing.
fn is_transport_error(err: &BollardError) -> bool {
    matches!(
        err,
        BollardError::IOError { .. }
            | BollardError::HyperLegacyError { .. }
            | BollardError::HyperResponseError { .. }
            | BollardError::RequestTimeoutError
            | BollardError::SocketNotFoundError(_)
    )
}

/// Whether an image reference names a tag or a digest.
fn is_tagged(image: &str) -> bool {
    let last_component = image.rsplit('/').next().unwrap_or(image);
    image.contains('@') || last_component.contains(':')
}

/// The create request for `spec`. No restart policy: restarts are the agent's decision.
fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let mut exposed = BTreeSet::new();
    let mut bindings = PortMap::new();
    for port in &spec.ports {
        let key = format!("{}/tcp", port.container_port);
        exposed.insert(key.clone());
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(DockerPortBinding {
                host_ip: Some(port.host_ip.to_string()),
                host_port: Some(port.host_port.map(|p| p.to_string()).unwrap_or_default()),
            });
    }
    let host_config = HostConfig {
        nano_cpus: positive_i64(spec.cpu_millis.saturating_mul(1_000_000)),
        memory: positive_i64(spec.memory_bytes),
        // No swap beyond the limit, as `update_body` sets it: left unset, Docker would allow
        // as much swap again, which a later update would take away.
        memory_swap: positive_i64(spec.memory_bytes),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        init: Some(false),
        dns: spec
            .dns
            .as_ref()
            .map(|d| d.servers.iter().map(ToString::to_string).collect()),
        dns_search: spec.dns.as_ref().map(|d| d.search.clone()),
        dns_options: spec.dns.as_ref().map(|d| d.options.clone()),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint: (!spec.command.is_empty()).then(|| spec.command.clone()),
        cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: (!spec.env.is_empty()).then(|| {
            spec.env
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect()
        }),
        labels: Some(
            spec.labels
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .chain([(IMAGE_LABEL.to_owned(), spec.image.clone())])
                .collect(),
        ),
        exposed_ports: (!exposed.is_empty()).then(|| exposed.into_iter().collect()),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// The update request for `limits`. CPU only as `NanoCpus`: the engine refuses it beside a
/// CPU period or quota. Memory always with an equal memory-and-swap limit (no swap):
/// alone, raising it above the memory-and-swap limit the container has fails. A dimension
/// that is 0 is left out, which the engine reads as "no change".
fn update_body(limits: Resources) -> ContainerUpdateBody {
    ContainerUpdateBody {
        nano_cpus: positive_i64(limits.cpu_millis.saturating_mul(1_000_000)),
        memory: positive_i64(limits.memory_bytes),
        memory_swap: positive_i64(limits.memory_bytes),
        ..Default::default()
    }
}

/// The limits an inspection reports: `NanoCpus` (or, for a container created with them, a
/// CPU quota over its period) in millicores, and `Memory`; 0 where there is none.
fn limits(host: Option<&HostConfig>) -> Resources {
    let Some(host) = host else {
        return Resources::default();
    };
    let positive = |value: Option<i64>| value.and_then(|v| u64::try_from(v).ok()).unwrap_or(0);
    let nano_cpus = positive(host.nano_cpus);
    let cpu_millis = if nano_cpus > 0 {
        nano_cpus.saturating_add(500_000) / 1_000_000
    } else {
        match (positive(host.cpu_quota), positive(host.cpu_period)) {
            (quota, period) if quota > 0 && period > 0 => {
                quota.saturating_mul(1000).saturating_add(period / 2) / period
            }
            _ => 0,
        }
    };
    Resources {
        cpu_millis,
        memory_bytes: positive(host.memory),
    }
}

/// `value` as the engine's i64, `None` for 0 (no limit).
fn positive_i64(value: u64) -> Option<i64> {
    (value > 0).then(|| i64::try_from(value).unwrap_or(i64::MAX))
}

fn container_info(inspection: ContainerInspectResponse) -> ContainerInfo {
    let limits = limits(inspection.host_config.as_ref());
    let config = inspection.config.unwrap_or_default();
    let engine_state = inspection.state.unwrap_or_default();
    let state = match engine_state.status {
        Some(ContainerStateStatusEnum::CREATED) => ContainerState::Created,
        Some(ContainerStateStatusEnum::RUNNING) => ContainerState::Running,
        Some(ContainerStateStatusEnum::EXITED) => ContainerState::Exited {
            code: engine_state.exit_code.unwrap_or_default(),
        },
        Some(other) => ContainerState::Other(other.to_string()),
        None => ContainerState::Other("unknown".to_owned()),
    };
    let mut host_ports = BTreeMap::new();
    // A container that does not run publishes nothing. Docker reports no ports then; Podman
    // still reports the mapping it will use, which nothing serves.
    let published = match state {
        ContainerState::Created | ContainerState::Exited { .. } => Default::default(),
        _ => inspection
            .network_settings
            .and_then(|settings| settings.ports)
            .unwrap_or_default(),
    };
    for (key, bindings) in published {
        let Some(container_port) = key
            .strip_suffix("/tcp")
            .and_then(|port| port.parse::<u16>().ok())
        else {
            continue;
        };
        let host_port = bindings
            .unwrap_or_default()
            .into_iter()
            .find_map(|binding| binding.host_port?.parse::<u16>().ok());
        if let Some(host_port) = host_port {
            host_ports.insert(container_port, host_port);
        }
    }
    let mut labels: BTreeMap<String, String> =
        config.labels.unwrap_or_default().into_iter().collect();
    // Containers created before the label existed report the engine's reference.
    let image = labels
        .remove(IMAGE_LABEL)
        .or(config.image)
        .unwrap_or_default();
    ContainerInfo {
        id: inspection.id.unwrap_or_default(),
        name: inspection
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        image,
        labels,
        state,
        // Never started: the engine reports year 1, before the epoch, so `None`.
        started_at: engine_state.started_at.as_deref().and_then(parse_rfc3339),
        host_ports,
        // 0 while it does not run.
        pid: engine_state
            .pid
            .and_then(|pid| u32::try_from(pid).ok())
            .filter(|&pid| pid > 0),
        limits,
    }
}

/// CPU in millicores between the engine's two samples, and memory in use not counting the
/// reclaimable page cache (as `docker stats` computes it).
fn resources(stats: &ContainerStatsResponse) -> Resources {
    let cpu = stats.cpu_stats.clone().unwrap_or_default();
    let precpu = stats.precpu_stats.clone().unwrap_or_default();
    let total = |s: &bollard::models::ContainerCpuStats| {
        s.cpu_usage
            .as_ref()
            .and_then(|usage| usage.total_usage)
            .unwrap_or(0)
    };
    let cpu_delta = total(&cpu).saturating_sub(total(&precpu));
    let system_delta = cpu
        .system_cpu_usage
        .unwrap_or(0)
        .saturating_sub(precpu.system_cpu_usage.unwrap_or(0));
    let online_cpus = cpu.online_cpus.map(u64::from).unwrap_or_else(|| {
        cpu.cpu_usage
            .as_ref()
            .and_then(|usage| usage.percpu_usage.as_ref())
            .map_or(1, |per_cpu| per_cpu.len().max(1) as u64)
    });
    let cpu_millis = if cpu_delta > 0 && system_delta > 0 {
        (cpu_delta as f64 / system_delta as f64 * online_cpus as f64 * 1000.0).round() as u64
    } else {
        0
    };

    let memory = stats.memory_stats.clone().unwrap_or_default();
    let usage = memory.usage.unwrap_or(0);
    let stat = |key: &str| {
        memory
            .stats
            .as_ref()
            .and_then(|stats| stats.get(key).copied())
    };
    // cgroup v1 reports total_inactive_file, v2 inactive_file; older engines only cache.
    let reclaimable = stat("total_inactive_file")
        .or_else(|| stat("inactive_file"))
        .or_else(|| stat("cache"))
        .unwrap_or(0);
    Resources {
        cpu_millis,
        memory_bytes: usage.saturating_sub(reclaimable),
    }
}

/// Parses an RFC 3339 timestamp (`2024-05-01T12:00:00.123456789Z`, or with an offset such as
/// `+02:00`, as Podman writes it). `None` if malformed or before the Unix epoch.
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = text.get(range)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    };
    if bytes.len() < 20
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't' | b' ')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let mut rest = &text[19..];
    let mut nanos = 0u32;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        for (i, digit) in fraction.bytes().take(digits).enumerate() {
            if i < 9 {
                nanos += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
            }
        }
        rest = &fraction[digits..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            sign * (number(text.len() - 5..text.len() - 3)? * 3600
                + number(text.len() - 2..text.len())? * 60)
        }
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year.div_euclid(400);
    let year_of_era = shifted_year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

/// One frame of the engine's output with timestamps: `<RFC 3339 time> <line>\n`.
fn log_entry(output: &bollard::container::LogOutput) -> LogEntry {
    let stderr = matches!(output, bollard::container::LogOutput::StdErr { .. });
    let text = String::from_utf8_lossy(output.as_ref());
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    let (timestamp, line) = text.split_once(' ').unwrap_or((text, ""));
    LogEntry {
        timestamp: timestamp.to_owned(),
        stderr,
        text: line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::runtime::{ContainerDns, PortBinding};

    #[test]
    fn a_command_that_cannot_run_is_told_apart() {
        assert!(is_exec_failure(
            "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"/nope\": stat /nope: no such file or directory: unknown"
        ));
        assert!(is_exec_failure(
            "crun: executable file `nope` not found in $PATH: No such file or directory: OCI runtime attempted to invoke a command that was not found"
        ));
        assert!(!is_exec_failure(
            "driver failed programming external connectivity: port is already allocated"
        ));
        assert!(!is_exec_failure(
            "OCI runtime create failed: cgroup: no space left on device"
        ));
    }

    #[test]
    fn a_container_removed_under_podman_is_not_found() {
        assert!(is_vanished_container(
            "container 0123abcd does not exist in database: no such container"
        ));
        assert!(is_vanished_container("No such container: web.1"));
        assert!(!is_vanished_container("container name \"web.1\" is in use"));
    }

    /// A container as Podman 4.3's compatible API reports it: the resolved image
    /// reference, and the port mapping also while it does not run.
    fn podman_inspection(status: &str) -> ContainerInspectResponse {
        let json = serde_json::json!({
            "Id": "0123abcd",
            "Name": "/web.1",
            "State": {
                "Status": status,
                "ExitCode": 137,
                "StartedAt": "2024-02-29T14:34:56.5+02:00",
            },
            "Config": {
                "Image": "localhost/web:latest",
                "Labels": {"drover.node": "n1", "drover.image": "web"},
            },
            "NetworkSettings": {
                "Ports": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "37199"}]},
            },
        });
        serde_json::from_value(json).expect("a valid inspection")
    }

    #[test]
    fn podman_inspections_read_as_dockers() {
        let exited = container_info(podman_inspection("exited"));
        assert_eq!(exited.name, "web.1");
        assert_eq!(exited.state, ContainerState::Exited { code: 137 });
        assert_eq!(
            exited.image, "web",
            "the reference Drover gave, not Podman's"
        );
        assert_eq!(
            exited.labels,
            BTreeMap::from([(labels::NODE.to_owned(), "n1".to_owned())])
        );
        assert!(exited.host_ports.is_empty(), "{:?}", exited.host_ports);
        assert!(exited.started_at.is_some());

        let running = container_info(podman_inspection("running"));
        assert_eq!(running.host_ports, BTreeMap::from([(8080, 37199)]));

        // A container created before the label: the engine's reference.
        let mut old = podman_inspection("running");
        if let Some(labels) = old.config.as_mut().and_then(|c| c.labels.as_mut()) {
            labels.remove(IMAGE_LABEL);
        }
        assert_eq!(container_info(old).image, "localhost/web:latest");
    }

    #[test]
    fn the_main_process_is_known_only_while_it_runs() {
        let with_pid = |status: &str, pid: Option<i64>| {
            let mut inspection = podman_inspection(status);
            if let Some(state) = inspection.state.as_mut() {
                state.pid = pid;
            }
            container_info(inspection).pid
        };
        assert_eq!(with_pid("running", Some(4242)), Some(4242));
        // The engine writes 0 for a container that does not run; older ones write nothing.
        assert_eq!(with_pid("exited", Some(0)), None);
        assert_eq!(with_pid("running", None), None);
        assert_eq!(with_pid("running", Some(-1)), None);
    }

    #[test]
    fn parses_docker_and_podman_timestamps() {
        let at = |secs: u64, nanos: u32| Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), at(0, 0));
        assert_eq!(
            parse_rfc3339("2024-02-29T12:34:56.123456789Z"),
            at(1_709_210_096, 123_456_789)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T14:34:56.5+02:00"),
            at(1_709_210_096, 500_000_000)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T11:34:56-01:00"),
            at(1_709_210_096, 0)
        );
        // Docker's "never started".
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339(""), None);
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2024-01-01T00:00:00"), None);
        assert_eq!(parse_rfc3339("2024-01-01T00:00:00.Z"), None);
    }

    #[test]
    fn update_body_sets_nano_cpus_and_memory_with_an_equal_swap_limit() {
        let body = update_body(Resources {
            cpu_millis: 250,
            memory_bytes: 96 << 20,
        });
        assert_eq!(
            body,
            ContainerUpdateBody {
                nano_cpus: Some(250_000_000),
                memory: Some(96 << 20),
                memory_swap: Some(96 << 20),
                ..Default::default()
            }
        );
        // A 0 is left out: the engine reads that as "no change".
        let memory_only = update_body(Resources {
            cpu_millis: 0,
            memory_bytes: 64 << 20,
        });
        assert_eq!(memory_only.nano_cpus, None);
        assert_eq!(memory_only.cpu_quota, None);
        assert_eq!(memory_only.cpu_period, None);
        assert_eq!(
            update_body(Resources::default()),
            ContainerUpdateBody::default()
        );
    }

    #[test]
    fn inspected_limits_in_millicores_and_bytes() {
        let host = |nano_cpus, cpu_quota, cpu_period, memory| HostConfig {
            nano_cpus,
            cpu_quota,
            cpu_period,
            memory,
            ..Default::default()
        };
        let of = |h: HostConfig| limits(Some(&h));
        assert_eq!(
            of(host(Some(500_000_000), None, None, Some(64 << 20))),
            Resources {
                cpu_millis: 500,
                memory_bytes: 64 << 20,
            }
        );
        // Created with a quota (`--cpu-quota`), as Podman may also report it.
        assert_eq!(
            of(host(Some(0), Some(25_000), Some(100_000), Some(0))).cpu_millis,
            250
        );
        assert_eq!(of(host(None, None, None, Some(-1))), Resources::default());
        assert_eq!(limits(None), Resources::default());
        // The inspection's HostConfig reaches ContainerInfo.
        let mut inspection = podman_inspection("running");
        inspection.host_config = Some(host(Some(1_500_000_000), None, None, Some(1 << 30)));
        assert_eq!(
            container_info(inspection).limits,
            Resources {
                cpu_millis: 1500,
                memory_bytes: 1 << 30,
            }
        );
    }

    #[test]
    fn tagged_references() {
        assert!(!is_tagged("user-service"));
        assert!(!is_tagged("registry.local:5000/team/user-service"));
        assert!(is_tagged("user-service:1.2"));
        assert!(is_tagged("registry.local:5000/team/user-service:1.2"));
        assert!(is_tagged("user-service@sha256:abcd"));
    }

    #[test]
    fn create_body_maps_limits_ports_and_no_restart_policy() {
        let spec = ContainerSpec {
            name: "web.1".to_owned(),
            image: "web:1.2".to_owned(),
            command: vec!["/bin/web".to_owned()],
            args: vec![],
            env: BTreeMap::from([("A".to_owned(), "1".to_owned())]),
            labels: BTreeMap::from([(labels::NODE.to_owned(), "n1".to_owned())]),
            cpu_millis: 500,
            memory_bytes: 0,
            ports: vec![
                PortBinding {
                    container_port: 8080,
                    host_port: None,
                    host_ip: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
                },
                PortBinding {
                    container_port: 9090,
                    host_port: Some(19090),
                    host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                },
            ],
            dns: Some(ContainerDns {
                servers: vec![Ipv4Addr::new(10, 96, 0, 10)],
                search: vec!["default.svc.cluster.local".to_owned()],
                options: vec!["ndots:5".to_owned()],
            }),
        };
        let body = create_body(&spec);
        let host = body.host_config.as_ref().expect("host config");
        assert_eq!(host.dns, Some(vec!["10.96.0.10".to_owned()]));
        assert_eq!(
            host.dns_search,
            Some(vec!["default.svc.cluster.local".to_owned()])
        );
        assert_eq!(host.dns_options, Some(vec!["ndots:5".to_owned()]));
        assert_eq!(body.entrypoint, Some(vec!["/bin/web".to_owned()]));
        assert_eq!(body.cmd, None);
        assert_eq!(body.env, Some(vec!["A=1".to_owned()]));
        let labels = body.labels.clone().expect("labels");
        assert_eq!(labels[labels::NODE], "n1");
        assert_eq!(labels[IMAGE_LABEL], "web:1.2");
        assert_eq!(
            body.exposed_ports,
            Some(vec!["8080/tcp".to_owned(), "9090/tcp".to_owned()])
        );
        let host = body.host_config.expect("host config");
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.memory, None);
        assert_eq!(host.memory_swap, None);
        assert_eq!(host.init, Some(false));
        assert_eq!(
            host.restart_policy.and_then(|policy| policy.name),
            Some(RestartPolicyNameEnum::NO)
        );
        let bindings = host.port_bindings.expect("port bindings");
        assert_eq!(
            bindings["8080/tcp"],
            Some(vec![DockerPortBinding {
                host_ip: Some("127.0.0.2".to_owned()),
                host_port: Some(String::new()),
            }])
        );
        assert_eq!(
            bindings["9090/tcp"],
            Some(vec![DockerPortBinding {
                host_ip: Some("127.0.0.1".to_owned()),
                host_port: Some("19090".to_owned()),
            }])
        );
    }

    #[test]
    fn output_frames_become_lines_with_their_timestamp() {
        let frame = |message: &'static [u8], stderr: bool| {
            if stderr {
                bollard::container::LogOutput::StdErr {
                    message: message.into(),
                }
            } else {
                bollard::container::LogOutput::StdOut {
                    message: message.into(),
                }
            }
        };
        assert_eq!(
            log_entry(&frame(
                b"2026-12-04T20:10:11.123456789Z hello world\n",
                false
            )),
            LogEntry {
                timestamp: "2026-12-04T20:10:11.123456789Z".into(),
                stderr: false,
                text: "hello world".into(),
            }
        );
        let entry = log_entry(&frame(b"2026-12-04T20:10:12.5Z oops\r\n", true));
        assert!(entry.stderr);
        assert_eq!(entry.text, "oops");
        assert_eq!(
            log_entry(&frame(b"2026-12-04T20:10:13Z \n", false)).text,
            ""
        );
    }
}
