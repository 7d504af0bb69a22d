//! Security with real processes: the CLI's tokens and roles, a node certificate renewed
//! under load with no request lost (lifetimes shortened), and secret env values sealed at
//! rest and withheld from every view.

use std::time::Duration;

use drover_tests::{
    DroverProcess, LoopingClient, build_images, failure, healthy_containers, success, unique_node,
    web_manifest,
};

const DEADLINE: Duration = Duration::from_secs(60);

/// `drover` with `token` as DROVER_TOKEN (and no token file).
fn cli_with(
    coordinator: &DroverProcess,
    token: Option<&str>,
    args: &[&str],
) -> std::process::Output {
    let mut command = std::process::Command::new(drover_tests::binary("drover"));
    command
        .args(args)
        .env("DROVER_COORDINATOR", coordinator.url())
        .env_remove("DROVER_TOKEN_FILE")
        .env("HOME", "/nonexistent")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME");
    match token {
        Some(token) => command.env("DROVER_TOKEN", token),
        None => command.env_remove("DROVER_TOKEN"),
    };
    command.output().expect("run drover")
}

#[test]
fn the_cli_needs_a_token_and_the_role_for_what_it_asks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let coordinator = DroverProcess::coordinator(dir.path());

    // No token anywhere: refused before anything is sent, saying where tokens come from
    // (unless this host runs a packaged coordinator whose admin token root may read).
    if !std::path::Path::new("/var/lib/drover/admin.token").exists() {
        let out = cli_with(&coordinator, None, &["nodes"]);
        let err = failure(&out, "drover nodes without a token");
        assert!(
            err.contains("no token: pass --token or set DROVER_TOKEN"),
            "{err}"
        );
    }

    // A read-only token reads, and a write names the role it needs.
    let viewer = success(
        &coordinator.cli(&["token", "create", "viewer", "--role", "read"]),
        "token create",
    );
    let viewer = viewer.trim();
    assert!(viewer.starts_with("DRV1-"), "{viewer}");
    success(
        &cli_with(&coordinator, Some(viewer), &["get", "services"]),
        "read with read",
    );
    let err = failure(
        &cli_with(&coordinator, Some(viewer), &["scale", "web", "3"]),
        "scale with a read token",
    );
    assert!(
        err.contains("needs the operator role") && err.contains("has the read role"),
        "{err}"
    );
    let who = success(&cli_with(&coordinator, Some(viewer), &["whoami"]), "whoami");
    assert!(who.contains("viewer (read role"), "{who}");

    // Revoked: the next call fails.
    success(
        &coordinator.cli(&["token", "revoke", "viewer"]),
        "token revoke",
    );
    let err = failure(
        &cli_with(&coordinator, Some(viewer), &["get", "services"]),
        "a revoked token",
    );
    assert!(err.contains("unknown or revoked"), "{err}");
    let list = success(&coordinator.cli(&["token", "list"]), "token list");
    assert!(!list.contains("viewer"), "{list}");
    assert!(list.contains("bootstrap-admin"), "{list}");

    // Every change is in the event log with the token that made it.
    let events = success(&coordinator.cli(&["events"]), "events");
    assert!(
        events.contains("revoked by \"bootstrap-admin\""),
        "{events}"
    );
}

/// A coordinator (with `config`) and one agent on `ip`, each with its own data dir, and
/// `web` (from [`web_manifest`] with `extra`) applied; dropped, they stop and their
/// containers go.
struct OneNode {
    coordinator: DroverProcess,
    _agent: DroverProcess,
    node: String,
    agent_dir: std::path::PathBuf,
    coordinator_dir: std::path::PathBuf,
    manifest: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl OneNode {
    fn start(config: &str, ip: &str, name: &str, extra: &str) -> OneNode {
        build_images();
        let dir = tempfile::tempdir().expect("tempdir");
        let coordinator_dir = dir.path().join("coordinator");
        let agent_dir = dir.path().join("agent");
        for d in [&coordinator_dir, &agent_dir] {
            std::fs::create_dir_all(d).expect("dir");
        }
        let coordinator = DroverProcess::coordinator_with(&coordinator_dir, config);
        let node = unique_node(name);
        let agent = DroverProcess::agent_on(&agent_dir, ip, &node, &coordinator);
        let manifest = dir.path().join("web.yaml");
        std::fs::write(&manifest, web_manifest("user-service", 1, extra)).expect("write manifest");
        coordinator.apply(&manifest);
        OneNode {
            coordinator,
            _agent: agent,
            node,
            agent_dir,
            coordinator_dir,
            manifest,
            _dir: dir,
        }
    }
}

#[test]
fn a_certificate_renewal_interrupts_no_request() {
    // 20 s certificates: agents renew at 10–16 s of their life.
    let ip = "127.0.0.161";
    let cluster = OneNode::start("node_cert_ttl = \"20s\"\n", ip, "renew", "");
    let (coordinator, node, agent_dir) = (&cluster.coordinator, &cluster.node, &cluster.agent_dir);
    drover_tests::wait_for("1 healthy replica", DEADLINE, || {
        healthy_containers(coordinator, "web").len() == 1
    });
    // The proxy routes once gossip has the replica healthy too.
    drover_tests::wait_for("the proxy answers", DEADLINE, || {
        drover_tests::try_http_get(&format!("{ip}:80")).is_ok_and(|b| b.starts_with("user-service"))
    });
    let first = std::fs::read_to_string(agent_dir.join("node.crt")).expect("node.crt");

    let client = LoopingClient::start(format!("{ip}:80"), |body| body.starts_with("user-service"));
    let log = agent_dir.join("drover-agent.log");
    drover_tests::wait_for("two renewals", Duration::from_secs(45), || {
        std::fs::read_to_string(&log)
            .map(|l| l.matches("node certificate renewed").count() >= 2)
            .unwrap_or(false)
    });
    let (ok, failed, errors) = client.finish();
    assert!(ok > 0, "no request went through");
    assert_eq!(failed, 0, "requests failed across renewals: {errors:?}");
    let now = std::fs::read_to_string(agent_dir.join("node.crt")).expect("node.crt");
    assert_ne!(first, now, "the kept certificate is the renewed one");
    // The node stayed connected, ready, and its replica was never moved.
    assert_eq!(drover_tests::ready_nodes(coordinator), vec![node.clone()]);
    let events = success(&coordinator.cli(&["events"]), "events");
    assert!(
        !events.contains("node_disconnected") && !events.contains("node_down"),
        "{events}"
    );
    assert_eq!(healthy_containers(coordinator, "web").len(), 1);
}

#[test]
fn a_secret_is_sealed_at_rest_shown_nowhere_and_given_to_its_container() {
    let secret = "hunter2-e2e-7f3a";
    let env = format!("  env: {{MODE: test, DB_PASSWORD: {{secret: {secret}}}}}\n");
    let mut cluster = OneNode::start("", "127.0.0.162", "secret", &env);
    let (coordinator_dir, agent_dir) = (cluster.coordinator_dir.clone(), cluster.agent_dir.clone());
    let manifest = cluster.manifest.clone();
    let coordinator = &mut cluster.coordinator;
    drover_tests::wait_for("1 healthy replica", DEADLINE, || {
        healthy_containers(coordinator, "web").len() == 1
    });

    // The container has it, as a plain variable.
    let container = healthy_containers(coordinator, "web").remove(0);
    let env = success(
        &std::process::Command::new("docker")
            .args(["inspect", "--format", "{{json .Config.Env}}", &container])
            .output()
            .expect("docker inspect"),
        "docker inspect",
    );
    assert!(env.contains(&format!("DB_PASSWORD={secret}")), "{env}");
    assert!(env.contains("MODE=test"), "{env}");

    // No view shows it, whatever the role: names only.
    let viewer = success(
        &coordinator.cli(&["token", "create", "viewer", "--role", "read"]),
        "token create",
    );
    for token in [None, Some(viewer.trim())] {
        let text = match token {
            Some(token) => success(
                &cli_with(coordinator, Some(token), &["status", "web"]),
                "status",
            ),
            None => success(&coordinator.cli(&["status", "web"]), "status"),
        };
        assert!(
            text.contains("Secrets:   DB_PASSWORD (values not shown)"),
            "{text}"
        );
        assert!(!text.contains(secret), "{text}");
    }
    let json = coordinator.cli_json(&["status", "web"]);
    assert_eq!(json["secret_env"], serde_json::json!(["DB_PASSWORD"]));
    assert!(!json.to_string().contains(secret), "{json}");

    // Not in the store file, nor in any log.
    let needle = secret.as_bytes();
    let store = std::fs::read(coordinator_dir.join("coordinator.redb")).expect("store file");
    assert!(
        !store.windows(needle.len()).any(|w| w == needle),
        "the store file holds the secret in the clear"
    );
    for log in [
        coordinator_dir.join("drover-coordinator.log"),
        agent_dir.join("drover-agent.log"),
    ] {
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(!text.contains(secret), "{} shows the secret", log.display());
    }

    // After a restart the coordinator opens it again: the same manifest changes nothing,
    // and the replica is left alone.
    coordinator.kill_and_restart();
    let out = coordinator.apply(&manifest);
    assert!(out.contains("unchanged"), "{out}");
    drover_tests::wait_for("the replica still healthy", DEADLINE, || {
        healthy_containers(coordinator, "web") == vec![container.clone()]
    });
}

#[test]
fn a_ca_rotation_interrupts_no_request_and_its_end_retires_the_old_ca() {
    let ip = "127.0.0.163";
    let mut cluster = OneNode::start("", ip, "rotate", "");
    let (node, agent_dir) = (cluster.node.clone(), cluster.agent_dir.clone());
    let coordinator = &mut cluster.coordinator;
    drover_tests::wait_for("the proxy answers", DEADLINE, || {
        drover_tests::try_http_get(&format!("{ip}:80")).is_ok_and(|b| b.starts_with("user-service"))
    });
    let old_token = std::fs::read_to_string(coordinator.admin_token_file()).expect("admin token");
    let old_token = old_token.trim().to_string();
    let status =
        |coordinator: &DroverProcess| success(&coordinator.cli(&["ca", "status"]), "ca status");
    let digest_of = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("Signing CA:"))
            .map(|d| d.trim().to_string())
            .unwrap_or_else(|| panic!("no signing CA in {text}"))
    };
    let old_digest = digest_of(&status(coordinator));
    assert!(old_token.contains(&old_digest), "tokens pin the CA");

    let client = LoopingClient::start(format!("{ip}:80"), |body| body.starts_with("user-service"));
    let rotated = success(&coordinator.cli(&["ca", "rotate"]), "ca rotate");
    let new_digest = digest_of(&rotated);
    assert_ne!(new_digest, old_digest);
    assert!(
        rotated.contains(&format!("Also trusted: {old_digest}")),
        "{rotated}"
    );
    // The connected agent renews at once with the new CA.
    drover_tests::wait_for("the node on the new CA", DEADLINE, || {
        let text = status(coordinator);
        text.contains(&format!("Nodes on it: {node}")) && text.contains("Waiting:     none")
    });
    // An old token still works during the rotation (the chain carries the cross-signed CA).
    success(
        &cli_with(coordinator, Some(&old_token), &["nodes"]),
        "old token during the rotation",
    );
    let finished = success(&coordinator.cli(&["ca", "finish"]), "ca finish");
    assert!(!finished.contains("Also trusted"), "{finished}");
    drover_tests::wait_for("the agent trusting the new CA only", DEADLINE, || {
        std::fs::read_to_string(agent_dir.join("ca.crt"))
            .is_ok_and(|b| b.matches("BEGIN CERTIFICATE").count() == 1)
    });
    let (ok, failed, errors) = client.finish();
    assert!(ok > 0, "no request went through");
    assert_eq!(failed, 0, "requests failed across the rotation: {errors:?}");
    // Renewed because the CA changed (at the start and at the end), not on its timer.
    let log = std::fs::read_to_string(agent_dir.join("drover-agent.log")).expect("agent log");
    assert_eq!(
        log.matches("the cluster's CA changed: renewing the node certificate now")
            .count(),
        2,
        "{log}"
    );

    // The token files pin the new CA (same token); a copy pinning the old one is refused
    // with a message that says why.
    let admin = std::fs::read_to_string(coordinator.admin_token_file()).expect("admin token");
    assert!(admin.contains(&new_digest), "{admin}");
    let err = failure(
        &cli_with(coordinator, Some(&old_token), &["nodes"]),
        "old token after",
    );
    assert!(err.contains("rotated since"), "{err}");
    assert_eq!(drover_tests::ready_nodes(coordinator), vec![node.clone()]);
    let events = success(&coordinator.cli(&["events"]), "events");
    assert!(
        events.contains("CA rotation started") && events.contains("CA rotation finished"),
        "{events}"
    );
    assert!(!events.contains("node_disconnected"), "{events}");

    // A restarted coordinator serves the new CA, and the agent comes back.
    coordinator.kill_and_restart();
    drover_tests::wait_for("the node back", DEADLINE, || {
        drover_tests::ready_nodes(coordinator) == vec![node.clone()]
    });
    assert_eq!(digest_of(&status(coordinator)), new_digest);
}
