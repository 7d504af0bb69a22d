//! Tests of the Kubernetes subset and the join of Services onto Deployments.

use super::*;

#[test]
fn seed_parses_to_one_service() {
    let specs = parse_str("examples/seed/user-service.yaml", SEED).expect("seed parses");
    let mut expected = ServiceSpec::new("user-service", "user-service");
    expected.replicas = 3;
    expected.ports = vec![PortSpec {
        name: None,
        container_port: 8080,
        service_port: Some(80),
        host_port: None,
        protocol: Protocol::Tcp,
    }];
    let origin = Source {
        file: "examples/seed/user-service.yaml".into(),
        document: 1,
    };
    assert_eq!(specs, vec![(origin, expected)]);
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
    let mut expected = ServiceSpec::new("api", "api:2");
    expected.labels = BTreeMap::from([("team".into(), "core".into())]);
    expected.replicas = 2;
    expected.update.max_surge = 2;
    expected.update.max_unavailable = 1;
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
        service_port: None,
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
    let specs = parse_files(&files(&[
        ("svc.yaml", service),
        ("deploy.yaml", deployment),
    ]))
    .expect("joined across files");
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].ports[0].service_port, Some(80));
    // Each file alone: the Service selects nothing; the Deployment alone is fine.
    let message = refused(&[("svc.yaml", service)]);
    assert_eq!(
        message,
        "svc.yaml, document 1 (Service user-service): spec.selector: selector app=user-service matches no Deployment in this apply"
    );
    let alone = one(deployment);
    assert_eq!(alone.ports[0].service_port, None);
}

#[test]
fn two_services_merge_their_ports() {
    let text = format!(
        "{DEPLOYMENT}            - {{containerPort: 9090, name: metrics}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-metrics}}
spec:
  type: ClusterIP
  selector: {{app: web}}
  ports: [{{port: 9100, targetPort: 9090, name: m}}, {{port: 8081}}]
"
    );
    let spec = one(&text);
    let published: Vec<(u16, Option<u16>)> = spec
        .ports
        .iter()
        .map(|p| (p.container_port, p.service_port))
        .collect();
    // 8081 has no targetPort: Kubernetes targets the same number, which the
    // Deployment does not declare, so the port is added.
    assert_eq!(
        published,
        [(8080, Some(80)), (9090, Some(9100)), (8081, Some(8081))]
    );
    let clash = text.replace("port: 9100", "port: 80");
    let message = refused(&[("m.yaml", &clash)]);
    assert_contains(
        &message,
        "m.yaml, document 3 (Service web-metrics): spec.ports[0].port: port 80 of Deployment web is already published by Service web (m.yaml, document 2, spec.ports[0])",
    );
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
    let node_port = SEED.replace("spec:\n  selector:", "spec:\n  type: NodePort\n  selector:");
    assert_contains(
        &refused(&[("s.yaml", &node_port)]),
        "spec.type: type \"NodePort\" is not supported",
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
    assert_contains(
        &refused(&[("s.yaml", &twice)]),
        "s.yaml, document 3 (Service user-service): metadata.name: Service user-service is already declared in s.yaml, document 1",
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
    let recreate = DEPLOYMENT.replace(
        "spec:\n  selector:",
        "spec:\n  strategy: {type: Recreate}\n  selector:",
    );
    assert_contains(
        &refused(&[("d.yaml", &recreate)]),
        "spec.strategy.type: strategy \"Recreate\" is not supported",
    );
    let percent = DEPLOYMENT.replace(
        "spec:\n  selector:",
        "spec:\n  strategy: {rollingUpdate: {maxSurge: 25%}}\n  selector:",
    );
    assert_contains(
        &refused(&[("d.yaml", &percent)]),
        "spec.strategy.rollingUpdate.maxSurge: \"25%\" is not supported: give a number of replicas",
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
fn service_port_names_label_only_free_ports() {
    let text = format!(
        "{DEPLOYMENT}---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 9000}}, {{name: admin, port: 81, targetPort: 9001}}]
"
    );
    let spec = one(&text);
    let names: Vec<(u16, Option<&str>)> = spec
        .ports
        .iter()
        .map(|p| (p.container_port, p.name.as_deref()))
        .collect();
    assert_eq!(
        names,
        [(8080, Some("http")), (9000, None), (9001, Some("admin"))]
    );
}
