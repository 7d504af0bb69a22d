//! The behaviour every [`ContainerRuntime`] shares, as checks that run against any of them:
//! the fake in its unit tests, Docker in `agent/tests/docker.rs`, Podman in
//! `agent/tests/podman.rs`. Test support, not API.
//!
//! Each check creates containers named after and labelled with the fixture's node, returns
//! what went wrong as an error, and removes its containers whether it passed or not.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use drover_proto::model::Resources;

use super::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ContainerState, PortBinding, RuntimeError,
    labels,
};

/// The port the fixture's image serves HTTP on.
pub const CONTAINER_PORT: u16 = 8080;

const GRACE: Duration = Duration::from_secs(5);
const EXEC_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the checks run.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The node id the checks' containers are labelled with, and the prefix of their names.
    /// Lowercase letters, digits and '-', unique to one test: checks see every container of
    /// this node.
    pub node: String,
    /// An image present on the engine whose default command runs until stopped, serves
    /// [`CONTAINER_PORT`], and which has `true` and `false` (drover-test-busybox).
    pub image: String,
    /// Whether the engine can change a running container's limits. Podman's
    /// Docker-compatible API cannot before Podman 5.1: [`update_resources_in_place`] then
    /// expects [`RuntimeError::Unsupported`] and the container left as it was.
    pub updates_limits: bool,
}

impl Fixture {
    /// A fixture for `node` and `image`.
    pub fn new(node: &str, image: &str) -> Fixture {
        Fixture {
            node: node.to_owned(),
            image: image.to_owned(),
            updates_limits: true,
        }
    }

    /// This fixture on an engine that cannot change a running container's limits.
    pub fn without_limit_updates(self) -> Fixture {
        Fixture {
            updates_limits: false,
            ..self
        }
    }

    /// A container of this fixture's node, named `<node>-<suffix>`, publishing
    /// [`CONTAINER_PORT`] on 127.0.0.1 at a port the engine picks.
    pub fn spec(&self, suffix: &str) -> ContainerSpec {
        self.spec_on(&self.node, suffix)
    }

    /// Like [`Fixture::spec`] but labelled with another node (still named after this
    /// fixture's node, so that tests can find it by name).
    pub fn spec_on(&self, node: &str, suffix: &str) -> ContainerSpec {
        let name = format!("{}-{suffix}", self.node);
        ContainerSpec {
            name: name.clone(),
            image: self.image.clone(),
            command: Vec::new(),
            args: Vec::new(),
            env: BTreeMap::from([("DROVER_TEST".to_owned(), "1".to_owned())]),
            labels: BTreeMap::from([
                (labels::NODE.to_owned(), node.to_owned()),
                (labels::ALLOC.to_owned(), name),
                (labels::SERVICE.to_owned(), "conformance".to_owned()),
                (labels::REVISION.to_owned(), "1".to_owned()),
            ]),
            cpu_millis: 0,
            memory_bytes: 0,
            ports: vec![PortBinding {
                container_port: CONTAINER_PORT,
                host_port: None,
                host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            }],
            dns: None,
        }
    }
}

/// Runs every check in turn.
pub async fn run_all(runtime: &dyn ContainerRuntime, fixture: &Fixture) -> anyhow::Result<()> {
    create_start_list(runtime, fixture)
        .await
        .context("create_start_list")?;
    stop_then_start_again(runtime, fixture)
        .await
        .context("stop_then_start_again")?;
    remove(runtime, fixture).await.context("remove")?;
    list_filters_by_node(runtime, fixture)
        .await
        .context("list_filters_by_node")?;
    missing_image(runtime, fixture)
        .await
        .context("missing_image")?;
    duplicate_name(runtime, fixture)
        .await
        .context("duplicate_name")?;
    missing_container(runtime, fixture)
        .await
        .context("missing_container")?;
    exec_exit_codes(runtime, fixture)
        .await
        .context("exec_exit_codes")?;
    usage(runtime, fixture).await.context("usage")?;
    fixed_host_port(runtime, fixture)
        .await
        .context("fixed_host_port")?;
    update_resources_in_place(runtime, fixture)
        .await
        .context("update_resources_in_place")?;
    Ok(())
}

/// Removes every container labelled with `node`.
pub async fn remove_all(runtime: &dyn ContainerRuntime, node: &str) -> anyhow::Result<()> {
    for container in runtime.list(node).await? {
        runtime
            .remove(&container.id)
            .await
            .with_context(|| format!("removing {}", container.name))?;
    }
    Ok(())
}

/// A created container is listed as created with its name, image and labels; once started,
/// as running with a start time, its main process and its published port; inspect agrees
/// with list.
pub async fn create_start_list(
    runtime: &dyn ContainerRuntime,
    fixture: &Fixture,
) -> anyhow::Result<()> {
    cleaning_up(runtime, &[&fixture.node], async {
        runtime.ensure_image(&fixture.image).await?;
        let spec = fixture.spec("web");
        let id = runtime.create(&spec).await?;
        let created = only(runtime.list(&fixture.node).await?)?;
        ensure!(
            created.id == id,
            "listed id {} is not the created {id}",
            created.id
        );
        ensure!(
            created.name == spec.name,
            "listed name {:?}, created {:?}",
            created.name,
            spec.name
        );
        ensure!(
            created.image == spec.image,
            "listed image {:?}, created {:?}",
            created.image,
            spec.image
        );
        ensure!(
            created.state == ContainerState::Created,
            "state {:?} before start",
            created.state
        );
        ensure!(created.started_at.is_none(), "a start time before start");
        ensure!(
            created.pid.is_none(),
            "a main process {:?} before start",
            created.pid
        );
        for (key, value) in &spec.labels {
            ensure!(
                created.labels.get(key) == Some(value),
                "label {key}={value} missing from {:?}",
                created.labels
            );
        }

        runtime.start(&id).await?;
        let running = only(runtime.list(&fixture.node).await?)?;
        ensure!(
            running.state == ContainerState::Running,
            "state {:?} after start",
            running.state
        );
        ensure!(running.started_at.is_some(), "no start time after start");
        ensure!(
            running.pid.is_some_and(|pid| pid > 0),
            "no main process after start: {:?}",
            running.pid
        );
        let host_port = running.host_ports.get(&CONTAINER_PORT).copied();
        ensure!(
            host_port.is_some_and(|port| port > 0),
            "port {CONTAINER_PORT} not published: {:?}",
            running.host_ports
        );
        let inspected = runtime.inspect(&id).await?;
        ensure!(
            inspected == running,
            "inspect {inspected:?} differs from list {running:?}"
        );
        // Starting a running container changes nothing.
        runtime.start(&id).await?;
        let again = runtime.inspect(&id).await?;
        ensure!(
            again.started_at == running.started_at,
            "a second start restarted it"
        );
        Ok(())
    })
    .await
}

/// Stop leaves an exited container with no published port and no main process; stopping it again, or stopping a
/// container never started, succeeds; exec in it fails; start runs it again.
pub async fn stop_then_start_again(
    runtime: &dyn ContainerRuntime,
    fixture: &Fixture,
) -> anyhow::Result<()> {
    cleaning_up(runtime, &[&fixture.node], async {
        let id = runtime.create(&fixture.spec("web")).await?;
        runtime
            .stop(&id, GRACE)
            .await
            .context("stopping a created container")?;
        let created = runtime.inspect(&id).await?;
        ensure!(
            created.state == ContainerState::Created,
            "state {:?} after stop before start",
            created.state
        );

        runtime.start(&id).await?;
        let first_start = runtime
            .inspect(&id)
            .await?
            .started_at
            .context("no start time")?;
        runtime.stop(&id, GRACE).await?;
        let stopped = runtime.inspect(&id).await?;
        ensure!(
            matches!(stopped.state, ContainerState::Exited { .. }),
            "state {:?} after stop",
            stopped.state
        );
        ensure!(
            stopped.host_ports.is_empty(),
            "ports {:?} after stop",
            stopped.host_ports
        );
        ensure!(
            stopped.pid.is_none(),
            "main process {:?} after stop",
            stopped.pid
        );
        runtime
            .stop(&id, GRACE)
            .await
            .context("stopping a stopped container")?;
        let exec = runtime.exec(&id, &["true".to_owned()], EXEC_TIMEOUT).await;
        ensure!(exec.is_err(), "exec in a stopped container: {exec:?}");

        runtime
            .start(&id)
            .await
            .context("starting an exited container")?;
        let restarted = runtime.inspect(&id).await?;
        ensure!(
            restarted.state == ContainerState::Running,
            "state {:?} after restart",
            restarted.state
        );
        let second_start = restarted
            .started_at
            .context("no start time after restart")?;
        ensure!(second_start >= first_start, "start time went backwards");
        ensure!(
            restarted.pid.is_some_and(|pid| pid > 0),
            "no main process after restart: {:?}",
            restarted.pid
        );
        Ok(())
    })
    .await
}

/// A removed container (running or not) is gone; removing it again succeeds.
pub async fn remove(runtime: &dyn ContainerRuntime, fixture: &Fixture) -> anyhow::Result<()> {
    cleaning_up(runtime, &[&fixture.node], async {
        let running = runtime.create(&fixture.spec("running")).await?;
        runtime.start(&running).await?;
        let created = runtime.create(&fixture.spec("created")).await?;
        runtime
            .remove(&running)
            .await
            .context("removing a running container")?;
        runtime
            .remove(&created)
            .await
            .context("removing a created container")?;
        let left = runtime.list(&fixture.node).await?;
        ensure!(left.is_empty(), "listed after removal: {left:?}");
        let inspected = runtime.inspect(&running).await;
        ensure!(
            matches!(inspected, Err(RuntimeError::NotFound(_))),
            "inspect after removal: {inspected:?}"
        );
        runtime
            .remove(&running)
            .await
            .context("removing a removed container")?;
        Ok(())
    })
    .await
}

/// `list` returns the containers of the node asked for, and only those.
pub async fn list_filters_by_node(
    runtime: &dyn ContainerRuntime,
    fixture: &Fixture,
) -> anyhow::Result<()> {
    let other = format!("{}-other", fixture.node);
    cleaning_up(runtime, &[&fixture.node, &other], async {
        let mut mine = vec![
            runtime.create(&fixture.spec("mine-1")).await?,
            runtime.create(&fixture.spec("mine-2")).await?,
        ];
        mine.sort();
        let theirs = runtime.create(&fixture.spec_on(&other, "theirs")).await?;
        let ids = |containers: Vec<ContainerInfo>| {
            let mut ids: Vec<String> = containers.into_iter().map(|c| c.id).collect();
            ids.sort();
            ids
        };
        ensure!(
            ids(runtime.list(&fixture.node).await?) == mine,
            "list of {}",
            fixture.node
        );
        ensure!(
            ids(runtime.list(&other).await?) == vec![theirs],
            "list of {other}"
        );
        let nobody = runtime.list(&format!("{}-nobody", fixture.node)).await?;
        ensure!(
            nobody.is_empty(),
            "a node without containers lists {nobody:?}"
        );
        Ok(())
    })
    .await
}

/// An image that is absent and cannot be pulled is `ImageUnavailable`, naming it, for
/// `ensure_image` and for `create`.
pub async fn missing_image(
    runtime: &dyn ContainerRuntime,
    fixture: &Fixture,
) -> anyhow::Result<()> {
    cleaning_up(runtime, &[&fixture.node], async {
        let image = format!("drover-missing-{}:latest", fixture.node);
        let err = runtime
            .ensure_image(&image)
            .await
            .err()
            .context("ensure_image of a missing image succeeded")?;
        let message = err.to_string();
        let RuntimeError::ImageUnavailable {
            image: named,
            reason,
        } = err
        else {
            bail!("ensure_image of a missing image: {message}");
        };
        ensure!(named == image, "error names {named:?}, not {image:?}");
        ensure!(!reason.is_empty(), "no reason given");
        ensure!(
            message.contains(&image),
            "message {message} does not name the image"
        );
        let spec = ContainerSpec {
            image: image.clone(),
            ..fixture.spec("web")
        };
        match runtime.create(&spec).await {
            Err(RuntimeError::ImageUnavailable { image: named, .. }) => {
                ensure!(named == image, "error names {named:?}, not {image:?}");
            }
            other => bail!("create from a missing image: {other:?}"),
        }
        Ok(())
    })
    .await
}

/// Creating a second container with a taken name fails, naming it.
pub async fn duplicate_name(
    runtime: &dyn ContainerRuntime,
    fixture: &Fixture,
) -> anyhow::Result<()> {
    cleaning_up(runtime, &[&fixture.node], async {
        let spec = fixture.spec("web");
        runtime.create(&spec).await?;
        match runtime.create(&spec).await {
            Err(err @ RuntimeError::Engine { .. }) => {
                ensure!(
                    err.to_string().contains(&spec.name),
                    "message {err} does not name {}",
                    spec.name
                );
            }
            other => bail!("second create of {}: {other:?}", spec.name),
        }
        Ok(())
    })
    .await
}

/// Operations on a container that does not exist are `NotFound`; removing it succeeds.
pub async fn missing_container(
    runtime: &dyn ContainerRuntime,
    fixture: &Fixture,
) -> anyhow::Result<()> {
    let ghost = format!("{}-ghost", fixture.node);
    let not_found = |what: &str, result: Result<(), RuntimeError>| match result {
        Err(RuntimeError::NotFound(_)) => Ok(()),
        other => Err(anyhow::anyhow!("{what} of a missing container: {other:?}")),
    };
    not_found("inspect", runtime.inspect(&ghost).await.map(drop))?;
    not_found("start", runtime.start(&ghost).await)?;
    not_found("stop", runtime.stop(&ghost, GRACE).await)?;
    not_found(
        "exec",
        runtime
            .exec(&ghost, &["true".to_owned()], EXEC_TIMEOUT)
            .await
            .map(drop),
    )?;
    not_found("usage", runtime.usage(&ghost).await.map(drop))?;
    let limits = Resources {
        cpu_millis: 100,
        memory_bytes: 32 << 20,
    };
    not_found(
        "update_resources",
        runtime.update_resources(&ghost, limits).await,
    )?;
    runtime
        .remove(&ghost)
        .await
        .context("removing a missing container")?;
    Ok(())
}

/// `exec` returns the command's exit code.
pub async fn exec_exit_codes(
    runtime: &dyn ContainerRuntime,
    fixture: &Fixture,
) -> anyhow::Result<()> {
    cleaning_up(runtime, &[&fixture.node], async {
        let id = runtime.create(&fixture.spec("web")).await?;
        runtime.start(&id).await?;
        let code = runtime
            .exec(&id, &["true".to_owned()], EXEC_TIMEOUT)
            .await?;
        ensure!(code == 0, "`true` exited {code}");
        let code = runtime
            .exec(&id, &["false".to_owned()], EXEC_TIMEOUT)
            .await?;
        ensure!(code == 1, "`false` exited {code}");
        Ok(())
    })
    .await
}

/// A running container uses some memory.
pub async fn usage(runtime: &dyn ContainerRuntime, fixture: &Fixture) -> anyhow::Result<()> {
    cleaning_up(runtime, &[&fixture.node], async {
        let id = runtime.create(&fixture.spec("web")).await?;
        runtime.start(&id).await?;
        let used = runtime.usage(&id).await?;
        ensure!(used.memory_bytes > 0, "no memory in use: {used:?}");
        Ok(())
    })
    .await
}

/// A fixed host port is published as asked.
pub async fn fixed_host_port(
    runtime: &dyn ContainerRuntime,
    fixture: &Fixture,
) -> anyhow::Result<()> {
    cleaning_up(runtime, &[&fixture.node], async {
        let port = free_port()?;
        let mut spec = fixture.spec("web");
        spec.ports[0].host_port = Some(port);
        let id = runtime.create(&spec).await?;
        runtime.start(&id).await?;
        let running = runtime.inspect(&id).await?;
        ensure!(
            running.host_ports.get(&CONTAINER_PORT) == Some(&port),
            "asked for host port {port}, got {:?}",
            running.host_ports
        );
        Ok(())
    })
    .await
}

/// A running container's limits change in place: inspect and list report the new ones, and
/// it is the same container, still running, not restarted. A 0 leaves that limit as it is.
/// On an engine that cannot ([`Fixture::updates_limits`]), the update fails as
/// [`RuntimeError::Unsupported`], naming the container, which keeps its limits and runs on.
pub async fn update_resources_in_place(
    runtime: &dyn ContainerRuntime,
    fixture: &Fixture,
) -> anyhow::Result<()> {
    cleaning_up(runtime, &[&fixture.node], async {
        let mut spec = fixture.spec("resized");
        spec.cpu_millis = 500;
        spec.memory_bytes = 64 << 20;
        let id = runtime.create(&spec).await?;
        runtime.start(&id).await?;
        let before = runtime.inspect(&id).await?;
        let created = Resources {
            cpu_millis: 500,
            memory_bytes: 64 << 20,
        };
        ensure!(
            before.limits == created,
            "created with {created:?}, inspect reports {:?}",
            before.limits
        );
        // Listed before the update as well: a list that reuses earlier inspections must not
        // report the old limits after it.
        let listed = only(runtime.list(&fixture.node).await?)?;
        ensure!(
            listed.limits == created,
            "created with {created:?}, list reports {:?}",
            listed.limits
        );

        let wanted = Resources {
            cpu_millis: 250,
            memory_bytes: 96 << 20,
        };
        let outcome = runtime.update_resources(&id, wanted).await;
        let expected = if fixture.updates_limits {
            outcome.with_context(|| format!("updating the limits of {id} to {wanted:?}"))?;
            wanted
        } else {
            match outcome {
                Err(RuntimeError::Unsupported { target, .. }) => {
                    ensure!(target == id, "the error names {target:?}, not {id}")
                }
                other => bail!("update on an engine that cannot: {other:?}"),
            }
            created
        };
        let after = runtime.inspect(&id).await?;
        ensure!(
            after.limits == expected,
            "inspect reports {:?} after the update, not {expected:?}",
            after.limits
        );
        ensure!(after.id == id, "inspected {} for {id}", after.id);
        ensure!(
            after.state == ContainerState::Running,
            "state {:?} after the update",
            after.state
        );
        ensure!(
            after.started_at == before.started_at && after.pid == before.pid,
            "restarted by the update: started {:?} (pid {:?}), then {:?} (pid {:?})",
            before.started_at,
            before.pid,
            after.started_at,
            after.pid
        );
        let listed = only(runtime.list(&fixture.node).await?)?;
        ensure!(
            listed.limits == expected,
            "list reports {:?} after the update, not {expected:?}",
            listed.limits
        );
        if !fixture.updates_limits {
            return Ok(());
        }

        // Memory only: the CPU limit stays.
        let more_memory = Resources {
            cpu_millis: 0,
            memory_bytes: 128 << 20,
        };
        runtime
            .update_resources(&id, more_memory)
            .await
            .context("updating the memory limit alone")?;
        let expected = Resources {
            cpu_millis: 250,
            memory_bytes: 128 << 20,
        };
        let again = runtime.inspect(&id).await?;
        ensure!(
            again.limits == expected,
            "inspect reports {:?} after a memory-only update, not {expected:?}",
            again.limits
        );
        ensure!(
            again.state == ContainerState::Running && again.started_at == before.started_at,
            "state {:?}, started {:?} after a memory-only update",
            again.state,
            again.started_at
        );
        Ok(())
    })
    .await
}

/// Runs `check`, then removes the containers of `nodes` whatever its outcome.
async fn cleaning_up(
    runtime: &dyn ContainerRuntime,
    nodes: &[&str],
    check: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let outcome = check.await;
    let mut cleanup = Ok(());
    for node in nodes {
        cleanup = cleanup.and(
            remove_all(runtime, node)
                .await
                .with_context(|| format!("cleaning up node {node}")),
        );
    }
    outcome.and(cleanup)
}

fn only(mut containers: Vec<ContainerInfo>) -> anyhow::Result<ContainerInfo> {
    ensure!(
        containers.len() == 1,
        "expected one container, listed {containers:?}"
    );
    containers.pop().context("no container")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}
