//! Tests of Drover's own format.

use super::*;

#[test]
fn drover_example_parses_every_field() {
    let specs = parse_str("examples/web.yaml", WEB).expect("example parses");
    assert_eq!(specs.len(), 1);
    let (origin, spec) = &specs[0];
    assert_eq!(origin.document, 0);
    let secs = Duration::from_secs;
    let mut expected = ServiceSpec::new("web", "web:1.2");
    expected.labels = BTreeMap::from([("tier".into(), "front".into())]);
    expected.command = vec!["/bin/web".into()];
    expected.args = vec!["--port".into(), "8080".into()];
    expected.env = BTreeMap::from([("RUST_LOG".into(), "info".into())]);
    expected.replicas = 3;
    expected.resources = Resources {
        cpu_millis: 500,
        memory_bytes: 256 << 20,
    };
    expected.ports = vec![PortSpec {
        name: Some("http".into()),
        container_port: 8080,
        service_port: Some(80),
        host_port: Some(18080),
        protocol: Protocol::Tcp,
    }];
    expected.health = Some(HealthCheck {
        action: ProbeAction::Http {
            port: 8080,
            path: "/healthz".into(),
        },
        interval: secs(5),
        timeout: secs(1),
        success_threshold: 1,
        failure_threshold: 3,
        start_period: secs(10),
    });
    expected.liveness = Some(HealthCheck {
        interval: secs(10),
        ..HealthCheck::with_defaults(ProbeAction::Tcp { port: 8080 })
    });
    expected.restart.mode = RestartMode::OnFailure;
    expected.restart.max_attempts = 10;
    expected.restart.initial_backoff = secs(1);
    expected.restart.max_backoff = secs(60);
    expected.restart.reset_after = secs(300);
    let constraint = |key: &str, op, values: &[&str]| LabelConstraint {
        key: key.into(),
        op,
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    expected.placement.constraints = vec![
        constraint("zone", ConstraintOp::Eq, &["a"]),
        constraint("disk", ConstraintOp::In, &["ssd", "nvme"]),
        constraint("spot", ConstraintOp::DoesNotExist, &[]),
    ];
    expected.placement.spread = SpreadMode::Spread;
    expected.update.max_surge = 1;
    expected.update.max_unavailable = 0;
    expected.traffic.strategy = Strategy::LeastConn;
    expected.traffic.revision_weights = BTreeMap::from([(1, 90), (2, 10)]);
    expected.stop_grace_period = secs(10);
    expected.stop_after_disconnect = Some(secs(30));
    assert_eq!(spec, &expected);
}

#[test]
fn drover_spec_defaults_and_quantity_forms() {
    let spec = one("
apiVersion: drover.dev/v1
kind: Service
metadata: {name: api}
spec:
  image: api
  env: {PORT: 8080, DEBUG: true}
  resources: {cpu: 2, memory: 1.5Gi}
  ports: [{containerPort: 80, protocol: TCP}]
  placement: {constraints: [gpu, 'env!=dev', 'arch notin (arm)'], spread: bin_pack}
");
    assert_eq!(spec.replicas, 1);
    assert_eq!(spec.env.get("PORT").map(String::as_str), Some("8080"));
    assert_eq!(spec.env.get("DEBUG").map(String::as_str), Some("true"));
    assert_eq!(spec.resources.cpu_millis, 2000);
    assert_eq!(spec.resources.memory_bytes, 1536 << 20);
    assert_eq!(spec.ports[0].service_port, None);
    assert_eq!(spec.placement.spread, SpreadMode::BinPack);
    let ops: Vec<ConstraintOp> = spec.placement.constraints.iter().map(|c| c.op).collect();
    assert_eq!(
        ops,
        [
            ConstraintOp::Exists,
            ConstraintOp::NotEq,
            ConstraintOp::NotIn
        ]
    );
    assert_eq!(spec.restart, crate::model::RestartPolicy::default());
    assert_eq!(spec.health, None);
}

#[test]
fn drover_format_errors() {
    let base = "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {name: w}\nspec:\n  image: w\n";
    let cases = [
        (
            "  replica: 2\n",
            "spec.replica: field not supported by Drover (supported here: image, command",
        ),
        (
            "  stopGracePeriod: 10\n",
            "spec.stopGracePeriod: duration 10 has no unit: write \"10s\" for seconds",
        ),
        (
            "  resources: {memory: 128m}\n",
            "spec.resources.memory: invalid memory quantity \"128m\"",
        ),
        (
            "  restart: {policy: sometimes}\n",
            "spec.restart.policy: unknown variant `sometimes`, expected one of `always`, `on_failure`, `never`",
        ),
        (
            "  health: {interval: 5s}\n",
            "spec.health: exactly one of http, tcp, exec is required, found 0",
        ),
        (
            "  health: {tcp: {port: 80}, timeout: 0s}\n",
            "spec.health.timeout: must be longer than 0s",
        ),
        (
            "  health: {tcp: {port: 80}, failureThreshold: 0}\n",
            "spec.health.failureThreshold: must be >= 1, got 0",
        ),
        (
            "  liveness: {http: {port: 80, path: healthz}}\n",
            "spec.liveness.http.path: path \"healthz\" must start with '/'",
        ),
        (
            "  restart: {initialBackoff: 2m, maxBackoff: 1m}\n",
            "spec.restart.initialBackoff: initial backoff 2m is longer than maxBackoff 1m",
        ),
        (
            "  traffic: {weights: {1: 0, 2: 0}}\n",
            "spec.traffic.weights: every weight is 0",
        ),
        (
            "  placement: {constraints: ['zone in ssd']}\n",
            "spec.placement.constraints[0]: constraint \"zone in ssd\": expected a list in parentheses",
        ),
        (
            "  update: {maxSurge: 0}\n",
            "spec.update: maxSurge and maxUnavailable are both 0",
        ),
        (
            "  env: {'A=B': x}\n",
            "spec.env.A=B: environment variable name \"A=B\" contains '='",
        ),
        (
            "  ports: [{containerPort: 80}, {containerPort: 80}]\n",
            "spec.ports[1].containerPort: container port 80 is already used by spec.ports[0]",
        ),
        (
            "  ports: [{containerPort: 80, name: a}, {containerPort: 81, name: a}]\n",
            "spec.ports[1].name: port name a is already used by spec.ports[0]",
        ),
        (
            "  ports: [{containerPort: 80, servicePort: 1}, {containerPort: 81, servicePort: 1}]\n",
            "spec.ports[1].servicePort: service port 1 is already used by spec.ports[0]",
        ),
    ];
    for (line, expected) in cases {
        let message = refused(&[("w.yaml", &format!("{base}{line}"))]);
        assert_contains(
            &message,
            &format!("w.yaml, document 1 (Service w): {expected}"),
        );
    }
}
