//! Tests of the Kubernetes subset and the join of Services onto Deployments.

use super::*;
use crate::model::{ReplicaCount, UpdateKind, UpdateStrategy};

/// [`DEPLOYMENT`] with `line` added at the top of the Deployment's `spec`.
fn deployment_spec_with(line: &str) -> String {
    DEPLOYMENT.replace(
        "spec:\n  selector:",
        &format!("spec:\n  {line}\n  selector:"),
    )
}

/// What a Deployment's rollout settings are unless it says otherwise: Kubernetes' defaults,
/// so no automatic revert.
fn kubernetes_defaults() -> UpdateStrategy {
    UpdateStrategy {
        auto_revert: false,
        ..UpdateStrategy::default()
    }
}

#[test]
fn seed_parses_to_a_workload_and_a_service() {
    let manifest = parse_str("examples/seed/user-service.yaml", SEED).expect("seed parses");
    let mut expected = WorkloadSpec::new("user-service", "user-service");
    expected.replicas = 3;
    expected.update = kubernetes_defaults();
    expected.ports = vec![container_port(8080)];
    expected.pod_labels = BTreeMap::from([("app".into(), "user-service".into())]);
    let service = Service {
        name: "user-service".into(),
        selector: BTreeMap::from([("app".into(), "user-service".into())]),
        ports: vec![service_port(80, TargetPort::Number(8080))],
        kind: ServiceType::ClusterIp,
        cluster_ip: ClusterIp::Auto,
        strategy: Strategy::RoundRobin,
        workload_weights: BTreeMap::new(),
        labels: BTreeMap::new(),
    };
    assert!(service.selects(&expected));
    assert_eq!(
        manifest,
        Manifest {
            workloads: vec![expected],
            services: vec![service],
            autoscalers: Vec::new(),
        }
    );
}

#[test]
fn unsupported_kubernetes_fields_are_refused_with_their_path() {
    let cases = [
        (
            deployment_with("    spec:", "volumes: [{name: data, emptyDir: {}}]"),
            "spec.template.spec.volumes: field not supported by Drover",
        ),
        (
            deployment_with(
                "    spec:",
                "initContainers: [{name: init, image: busybox}]",
            ),
            "spec.template.spec.initContainers: field not supported by Drover",
        ),
        (
            deployment_with(
                "image: nginx",
                "env:\n  - name: SECRET\n    valueFrom: {secretKeyRef: {name: s, key: k}}",
            ),
            "spec.template.spec.containers[0].env[0].valueFrom: field not supported by Drover",
        ),
        (
            deployment_with(
                "image: nginx",
                "volumeMounts: [{name: data, mountPath: /data}]",
            ),
            "spec.template.spec.containers[0].volumeMounts: field not supported by Drover",
        ),
        (
            deployment_with("    spec:", "affinity: {}"),
            "spec.template.spec.affinity: field not supported by Drover",
        ),
    ];
    for (text, expected) in &cases {
        let message = refused(&[("bad.yaml", text)]);
        assert_contains(&message, "bad.yaml, document 1 (Deployment web): ");
        assert_contains(&message, expected);
    }
    // The reworded message lists what is supported, to help with typos.
    let message = refused(&[("bad.yaml", &cases[0].0)]);
    assert_contains(&message, "(supported here: containers, restartPolicy");
}

#[test]
fn kubernetes_deployment_fields_map_onto_the_spec() {
    let text = "
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  namespace: default
  labels: {team: core}
  annotations: {note: kept out}
spec:
  replicas: 2
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 2, maxUnavailable: 1}}
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api, tier: back}, annotations: {a: b}}
    spec:
      restartPolicy: Always
      terminationGracePeriodSeconds: 45
      nodeSelector: {disk: ssd}
      containers:
        - name: api
          image: api:2
          imagePullPolicy: IfNotPresent
          command: [/api]
          args: [serve]
          env: [{name: MODE, value: prod}, {name: EMPTY}]
          ports: [{containerPort: 9000, name: grpc, hostPort: 19000, protocol: TCP}]
          resources:
            requests: {cpu: 250m, memory: 64Mi}
            limits: {cpu: 1, memory: 128Mi}
          readinessProbe:
            httpGet: {path: /ready, port: grpc}
            initialDelaySeconds: 5
            periodSeconds: 2
            timeoutSeconds: 3
            successThreshold: 2
            failureThreshold: 4
          livenessProbe:
            exec: {command: [/bin/true]}
";
    let spec = one(text);
    let mut expected = WorkloadSpec::new("api", "api:2");
    expected.labels = BTreeMap::from([("team".into(), "core".into())]);
    expected.pod_labels =
        BTreeMap::from([("app".into(), "api".into()), ("tier".into(), "back".into())]);
    expected.replicas = 2;
    expected.update = UpdateStrategy {
        max_surge: ReplicaCount::Count(2),
        max_unavailable: ReplicaCount::Count(1),
        ..kubernetes_defaults()
    };
    expected.stop_grace_period = Duration::from_secs(45);
    expected.placement.constraints = vec![LabelConstraint {
        key: "disk".into(),
        op: ConstraintOp::Eq,
        values: vec!["ssd".into()],
    }];
    expected.command = vec!["/api".into()];
    expected.args = vec!["serve".into()];
    expected.env = BTreeMap::from([
        ("MODE".into(), "prod".into()),
        ("EMPTY".into(), String::new()),
    ]);
    expected.ports = vec![PortSpec {
        name: Some("grpc".into()),
        container_port: 9000,
        host_port: Some(19000),
        protocol: Protocol::Tcp,
    }];
    expected.resources = Resources {
        cpu_millis: 250,
        memory_bytes: 64 << 20,
    };
    expected.health = Some(HealthCheck {
        action: ProbeAction::Http {
            port: 9000,
            path: "/ready".into(),
        },
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(3),
        success_threshold: 2,
        failure_threshold: 4,
        start_period: Duration::from_secs(5),
    });
    expected.liveness = Some(HealthCheck::with_defaults(ProbeAction::Exec {
        command: vec!["/bin/true".into()],
    }));
    assert_eq!(spec, expected);
}

#[test]
fn resources_fall_back_to_limits() {
    let text = deployment_with(
        "image: nginx",
        "resources: {limits: {cpu: 500m, memory: 1G}}",
    );
    let spec = one(&text);
    assert_eq!(spec.resources.cpu_millis, 500);
    assert_eq!(spec.resources.memory_bytes, 1_000_000_000);
    let text = deployment_with(
        "image: nginx",
        "resources: {requests: {cpu: 2}, limits: {cpu: 1}}",
    );
    let message = refused(&[("r.yaml", &text)]);
    assert_contains(
        &message,
        "spec.template.spec.containers[0].resources.requests.cpu: request 2000 exceeds the limit 1000",
    );
}

#[test]
fn kubectl_dry_run_output_is_accepted() {
    // What `kubectl create deployment web --image=nginx --dry-run=client -o yaml` prints.
    let text = "
apiVersion: apps/v1
kind: Deployment
metadata:
  creationTimestamp: null
  labels:
    app: web
  name: web
spec:
  replicas: 1
  selector:
    matchLabels:
      app: web
  strategy: {}
  template:
    metadata:
      creationTimestamp: null
      labels:
        app: web
    spec:
      containers:
      - image: nginx
        name: nginx
        resources: {}
status: {}
";
    let spec = one(text);
    assert_eq!(spec.image, "nginx");
    assert_eq!(spec.replicas, 1);
}

#[test]
fn deployments_and_services_join_across_files() {
    let (service, deployment) = SEED.split_once("---").expect("two documents");
    let manifest = applied(&[("svc.yaml", service), ("deploy.yaml", deployment)]);
    assert_eq!(manifest.workloads.len(), 1);
    assert_eq!(manifest.services.len(), 1);
    assert!(manifest.services[0].selects(&manifest.workloads[0]));
    assert_eq!(manifest.workloads[0].ports, [container_port(8080)]);
    // The Service alone selects no Deployment of the apply: it is accepted, for workloads
    // already in the cluster or to come.
    let alone = applied(&[("svc.yaml", service)]);
    assert_eq!(alone.workloads, []);
    assert_eq!(alone.services, manifest.services);
    // The Deployment alone has no service.
    let alone = applied(&[("deploy.yaml", deployment)]);
    assert_eq!(alone.workloads, manifest.workloads);
    assert_eq!(alone.services, []);
}

#[test]
fn service_errors() {
    let named = SEED.replace("targetPort: 8080", "targetPort: http");
    assert_contains(
        &refused(&[("s.yaml", &named)]),
        "spec.ports[0].targetPort: targetPort \"http\" names no container port of Deployment user-service (named ports: none)",
    );
    let udp = SEED.replace("protocol: TCP", "protocol: UDP");
    assert_contains(
        &refused(&[("s.yaml", &udp)]),
        "s.yaml, document 1 (Service user-service): spec.ports[0].protocol: protocol \"UDP\" is not supported: Drover routes TCP only",
    );
    let external = SEED.replace(
        "spec:\n  selector:",
        "spec:\n  type: ExternalName\n  selector:",
    );
    assert_eq!(
        refused(&[("s.yaml", &external)]),
        "s.yaml, document 1 (Service user-service): spec.type: type \"ExternalName\" is not supported: use ClusterIP, NodePort or LoadBalancer",
    );
    let namespaced = SEED.replace(
        "name: user-service\nspec:\n  selector",
        "name: user-service\n  namespace: prod\nspec:\n  selector",
    );
    assert_contains(
        &refused(&[("s.yaml", &namespaced)]),
        "metadata.namespace: namespace \"prod\" is not supported: Drover has no namespaces",
    );
    let twice = format!(
        "{SEED}\n---\n{}",
        SEED.split_once("---").map(|(s, _)| s).unwrap_or_default()
    );
    assert_eq!(
        refused(&[("s.yaml", &twice)]),
        "s.yaml, document 3 (Service user-service): metadata.name: service \"user-service\" is already declared in s.yaml, document 1 (Service user-service)",
    );
}

#[test]
fn deployment_errors() {
    let two = DEPLOYMENT.replace(
        "      containers:\n",
        "      containers:\n        - {name: sidecar, image: envoy}\n",
    );
    assert_contains(
        &refused(&[("d.yaml", &two)]),
        "spec.template.spec.containers[1]: Drover runs exactly one container per service, found 2",
    );
    let mismatch = DEPLOYMENT.replace("matchLabels: {app: web}", "matchLabels: {app: api}");
    assert_contains(
        &refused(&[("d.yaml", &mismatch)]),
        "spec.selector.matchLabels.app: selector app=api does not match the template's labels (app=web)",
    );
    let on_failure = deployment_with("    spec:", "restartPolicy: OnFailure");
    assert_contains(
        &refused(&[("d.yaml", &on_failure)]),
        "spec.template.spec.restartPolicy: restartPolicy \"OnFailure\" is not supported",
    );
    let probe = deployment_with(
        "image: nginx",
        "readinessProbe: {tcpSocket: {port: admin}, periodSeconds: 0}",
    );
    let message = refused(&[("d.yaml", &probe)]);
    assert_contains(
        &message,
        "spec.template.spec.containers[0].readinessProbe.tcpSocket.port: port name \"admin\" matches no named containerPort (named ports: http)",
    );
    assert_contains(
        &message,
        "spec.template.spec.containers[0].readinessProbe.periodSeconds: must be >= 1, got 0",
    );
}

#[test]
fn duplicate_container_ports_are_refused() {
    let ports = "            - {containerPort: 8080, name: http}\n";
    let cases = [
        (
            "            - {containerPort: 8080}\n",
            "ports[1].containerPort: containerPort 8080 is already declared by ports[0]",
        ),
        (
            "            - {containerPort: 9090, name: http}\n",
            "ports[1].name: port name http is already declared by ports[0]",
        ),
    ];
    for (added, expected) in cases {
        let text = DEPLOYMENT.replace(ports, &format!("{ports}{added}"));
        let message = refused(&[("d.yaml", &text)]);
        assert_contains(
            &message,
            &format!("spec.template.spec.containers[0].{expected}"),
        );
    }
    let host = DEPLOYMENT.replace(
        ports,
        "            - {containerPort: 80, hostPort: 8000}\n            - {containerPort: 81, hostPort: 8000}\n",
    );
    assert_contains(
        &refused(&[("d.yaml", &host)]),
        "containers[0].ports[1].hostPort: hostPort 8000 is already declared by ports[0]",
    );
}

#[test]
fn numeric_targets_the_deployment_lacks_are_added_unnamed() {
    let text = format!(
        "{DEPLOYMENT}---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 9000}}, {{name: admin, port: 81, targetPort: 9001}}, {{name: main, port: 82, targetPort: 8080}}]
"
    );
    let manifest = applied(&[("t.yaml", &text)]);
    let names: Vec<(u16, Option<&str>)> = manifest.workloads[0]
        .ports
        .iter()
        .map(|p| (p.container_port, p.name.as_deref()))
        .collect();
    // A service port's name names the service port, never a container port; 8080 is
    // declared already.
    assert_eq!(names, [(8080, Some("http")), (9000, None), (9001, None)]);
    let ports: Vec<(Option<&str>, u16, &TargetPort)> = manifest.services[0]
        .ports
        .iter()
        .map(|p| (p.name.as_deref(), p.port, &p.target))
        .collect();
    assert_eq!(
        ports,
        [
            (Some("http"), 80, &TargetPort::Number(9000)),
            (Some("admin"), 81, &TargetPort::Number(9001)),
            (Some("main"), 82, &TargetPort::Number(8080)),
        ]
    );
}

#[test]
fn kubernetes_rollout_fields_map_onto_the_update_strategy() {
    assert_eq!(one(DEPLOYMENT).update, kubernetes_defaults());
    // The settings of podinfo's Deployment, plus a percentage and a pause.
    let text = DEPLOYMENT.replace(
        "spec:\n  selector:",
        "spec:
  minReadySeconds: 3
  revisionHistoryLimit: 5
  progressDeadlineSeconds: 60
  paused: true
  strategy:
    rollingUpdate:
      maxSurge: 50%
      maxUnavailable: 0
    type: RollingUpdate
  selector:",
    );
    let expected = UpdateStrategy {
        max_surge: ReplicaCount::Percent(50),
        max_unavailable: ReplicaCount::Count(0),
        min_ready: Duration::from_secs(3),
        progress_deadline: Duration::from_secs(60),
        revision_history_limit: 5,
        paused: Some(true),
        ..kubernetes_defaults()
    };
    assert_eq!(one(&text).update, expected);
    let update = |line: &str| one(&deployment_spec_with(line)).update;
    assert_eq!(update("paused: false").paused, Some(false));
    assert_eq!(update("revisionHistoryLimit: 0").revision_history_limit, 0);
    let percentages = update("strategy: {rollingUpdate: {maxSurge: 1000%, maxUnavailable: 100%}}");
    assert_eq!(percentages.max_surge, ReplicaCount::Percent(1000));
    assert_eq!(percentages.max_unavailable, ReplicaCount::Percent(100));
    let recreate = update("strategy: {type: Recreate}");
    assert_eq!(
        recreate,
        UpdateStrategy {
            kind: UpdateKind::Recreate,
            ..kubernetes_defaults()
        }
    );
    // An empty strategy, as kubectl writes it, is a rolling update.
    assert_eq!(update("strategy: {}"), kubernetes_defaults());
}

#[test]
fn auto_revert_annotation_turns_drovers_revert_on() {
    let annotated = |value: &str| {
        DEPLOYMENT.replace(
            "  name: web\nspec:",
            &format!(
                "  name: web\n  annotations: {{drover.dev/auto-revert: {value}, other: x}}\nspec:"
            ),
        )
    };
    assert!(one(&annotated("'true'")).update.auto_revert);
    assert!(!one(&annotated("'false'")).update.auto_revert);
    // The pod template's annotations do not count.
    let template = DEPLOYMENT.replace(
        "      labels: {app: web}",
        "      labels: {app: web}\n      annotations: {drover.dev/auto-revert: 'true'}",
    );
    assert!(!one(&template).update.auto_revert);
    let message = refused(&[("a.yaml", &annotated("'yes'"))]);
    assert_eq!(
        message,
        "a.yaml, document 1 (Deployment web): metadata.annotations.drover.dev/auto-revert: annotation drover.dev/auto-revert must be \"true\" or \"false\", got \"yes\""
    );
    // Annotation values are strings in Kubernetes too.
    assert_contains(
        &refused(&[("a.yaml", &annotated("true"))]),
        "metadata.annotations.drover.dev/auto-revert: invalid type: boolean `true`, expected a string",
    );
}

#[test]
fn kubernetes_rollout_errors() {
    let cases = [
        (
            "strategy: {type: Recreate, rollingUpdate: {maxSurge: 1}}",
            "spec.strategy.rollingUpdate: rollingUpdate may only be set with type RollingUpdate, not Recreate",
        ),
        (
            "strategy: {type: BlueGreen}",
            "spec.strategy.type: unknown strategy type \"BlueGreen\" (RollingUpdate or Recreate)",
        ),
        (
            "strategy: {rollingUpdate: {maxSurge: '25'}}",
            "spec.strategy.rollingUpdate.maxSurge: \"25\" is neither a number of replicas nor a percentage (write e.g. 1 or \"25%\")",
        ),
        (
            "strategy: {rollingUpdate: {maxSurge: 'a%'}}",
            "spec.strategy.rollingUpdate.maxSurge: percentage \"a%\" must be a whole number followed by '%', such as \"25%\"",
        ),
        (
            "strategy: {rollingUpdate: {maxSurge: 1001%}}",
            "spec.strategy.rollingUpdate.maxSurge: maxSurge 1001% is out of range 0%..=1000%",
        ),
        (
            "strategy: {rollingUpdate: {maxUnavailable: 150%}}",
            "spec.strategy.rollingUpdate.maxUnavailable: maxUnavailable 150% is out of range 0%..=100%",
        ),
        (
            "strategy: {rollingUpdate: {maxUnavailable: -1}}",
            "spec.strategy.rollingUpdate.maxUnavailable: must be >= 0, got -1",
        ),
        (
            "strategy: {rollingUpdate: {maxSurge: 0%, maxUnavailable: 0}}",
            "spec.strategy.rollingUpdate: maxSurge and maxUnavailable are both 0: an update could never progress",
        ),
        (
            "minReadySeconds: 60\n  progressDeadlineSeconds: 30",
            "spec.progressDeadlineSeconds: progressDeadlineSeconds 30 must be greater than minReadySeconds 60",
        ),
        (
            "minReadySeconds: 600",
            "spec.progressDeadlineSeconds: progressDeadlineSeconds 600 (the default) must be greater than minReadySeconds 600",
        ),
        (
            "minReadySeconds: -1",
            "spec.minReadySeconds: must be >= 0, got -1",
        ),
        (
            "progressDeadlineSeconds: -5",
            "spec.progressDeadlineSeconds: must be >= 0, got -5",
        ),
        (
            "revisionHistoryLimit: -1",
            "spec.revisionHistoryLimit: must be >= 0, got -1",
        ),
        (
            "strategy: {rollingUpdate: {partition: 1}}",
            "spec.strategy.rollingUpdate.partition: field not supported by Drover (supported here: maxSurge or maxUnavailable)",
        ),
    ];
    for (line, expected) in cases {
        let message = refused(&[("d.yaml", &deployment_spec_with(line))]);
        assert_eq!(
            message,
            format!("d.yaml, document 1 (Deployment web): {expected}")
        );
    }
}

/// Real manifests from `../shared/k8s-corpus/` (next to the workspace; skipped where it is
/// absent). Those Drover accepted before workloads and services were apart still parse,
/// with their Services as services of their own (27-k8sdocs-hello-backend's keeps its name,
/// `hello`, apart from its Deployment's); those refused before only for a Service of type
/// NodePort or LoadBalancer, or one selecting several Deployments, parse now.
#[test]
fn kubernetes_corpus_still_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/k8s-corpus");
    if !dir.is_dir() {
        eprintln!("skipped: no corpus at {}", dir.display());
        return;
    }
    use ServiceType::{ClusterIp as C, LoadBalancer as L, NodePort as N};
    // File, its workloads, its services with their type and the workloads they select.
    type Expected = (
        &'static str,
        &'static [&'static str],
        &'static [(&'static str, ServiceType, &'static [&'static str])],
    );
    let accepted: [Expected; 15] = [
        (
            "01-guestbook-all-in-one.yaml",
            &["redis-master", "redis-replica", "frontend"],
            &[
                ("redis-master", C, &["redis-master"]),
                ("redis-replica", C, &["redis-replica"]),
                ("frontend", N, &["frontend"]),
            ],
        ),
        (
            "02-guestbook-frontend.yaml",
            &["frontend"],
            &[("frontend", N, &["frontend"])],
        ),
        (
            "03-guestbook-redis-master.yaml",
            &["redis-master"],
            &[("redis-master", C, &["redis-master"])],
        ),
        ("12-voting-vote.yaml", &["vote"], &[("vote", N, &["vote"])]),
        (
            "13-voting-result.yaml",
            &["result"],
            &[("result", N, &["result"])],
        ),
        ("16-voting-worker.yaml", &["worker"], &[]),
        (
            "18-istio-helloworld.yaml",
            &["helloworld-v1", "helloworld-v2"],
            &[("helloworld", C, &["helloworld-v1", "helloworld-v2"])],
        ),
        (
            "20-istio-tcp-echo.yaml",
            &["tcp-echo"],
            &[("tcp-echo", C, &["tcp-echo"])],
        ),
        (
            "24-k8sdocs-nginx-deployment.yaml",
            &["nginx-deployment"],
            &[],
        ),
        (
            "25-k8sdocs-nginx-app.yaml",
            &["my-nginx"],
            &[("my-nginx-svc", L, &["my-nginx"])],
        ),
        (
            "26-k8sdocs-php-apache.yaml",
            &["php-apache"],
            &[("php-apache", C, &["php-apache"])],
        ),
        (
            "27-k8sdocs-hello-backend.yaml",
            &["backend"],
            &[("hello", C, &["backend"])],
        ),
        (
            "28-k8sdocs-redis-leader.yaml",
            &["redis-leader"],
            &[("redis-leader", C, &["redis-leader"])],
        ),
        (
            "34-argocd-guestbook.yaml",
            &["guestbook-ui"],
            &[("guestbook-ui", C, &["guestbook-ui"])],
        ),
        (
            "36-traefik-whoami.yaml",
            &["whoami"],
            &[("whoami", C, &["whoami"])],
        ),
    ];
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("corpus file reads");
    for (name, workloads, services) in accepted {
        let manifest = match parse_files(&files(&[(name, &read(name))])) {
            Ok(manifest) => manifest,
            Err(err) => panic!("{name} no longer parses:\n{err}"),
        };
        let found: Vec<&str> = manifest.workloads.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(found, workloads, "{name}");
        let found: Vec<(&str, ServiceType, Vec<&str>)> = manifest
            .services
            .iter()
            .map(|s| {
                let selected = manifest.workloads.iter().filter(|w| s.selects(w));
                (
                    s.name.as_str(),
                    s.kind,
                    selected.map(|w| w.name.as_str()).collect(),
                )
            })
            .collect();
        let expected: Vec<(&str, ServiceType, Vec<&str>)> = services
            .iter()
            .map(|(service, kind, selected)| (*service, *kind, selected.to_vec()))
            .collect();
        assert_eq!(found, expected, "{name}");
    }
    assert_eq!(
        one(&read("34-argocd-guestbook.yaml"))
            .update
            .revision_history_limit,
        3
    );
    // The voting app's node ports are kept; helloworld's port is added to both versions.
    let vote = applied(&[("v.yaml", &read("12-voting-vote.yaml"))]);
    assert_eq!(
        vote.services[0].ports,
        [ServicePort {
            name: Some("vote-service".into()),
            node_port: Some(31000),
            ..service_port(8080, TargetPort::Number(80))
        }]
    );
    let hello = applied(&[("h.yaml", &read("18-istio-helloworld.yaml"))]);
    for workload in &hello.workloads {
        assert!(
            workload.ports.iter().any(|p| p.container_port == 5000),
            "{workload:?}"
        );
    }
    // Where a manifest is still refused, it is neither for its rollout settings nor for
    // what its Services are or select: of a Service, only a namespace is refused.
    let entries = std::fs::read_dir(&dir).expect("corpus lists");
    for path in entries.map(|entry| entry.expect("corpus entry").path()) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.ends_with(".yaml") {
            continue;
        }
        let Err(err) = parse_files(&files(&[(name, &read(name))])) else {
            continue;
        };
        for problem in &err.problems {
            let path = problem.error.path.as_str();
            let rollout = [
                "spec.strategy",
                "spec.minReadySeconds",
                "spec.progressDeadlineSeconds",
                "spec.revisionHistoryLimit",
                "spec.paused",
                "spec.update",
            ];
            assert!(
                !rollout.iter().any(|field| path.starts_with(field)),
                "{name}: {problem}"
            );
            let of_a_service = problem
                .object
                .as_deref()
                .is_some_and(|o| o.starts_with("Service "));
            assert!(
                !of_a_service || path == "metadata.namespace",
                "{name}: {problem}"
            );
        }
    }
}
