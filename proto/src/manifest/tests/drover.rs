//! Tests of Drover's own format.

use super::*;
use crate::model::{CanaryAnalysis, CanaryStep, ReplicaCount, Secret, UpdateKind, UpdateStrategy};

#[test]
fn drover_example_parses_every_field() {
    let manifest = parse_str("examples/web.yaml", WEB).expect("example parses");
    let secs = Duration::from_secs;
    let mut expected = WorkloadSpec::new("web", "web:1.2");
    expected.labels = BTreeMap::from([("tier".into(), "front".into())]);
    expected.pod_labels = expected.labels.clone();
    expected.command = vec!["/bin/web".into()];
    expected.args = vec!["--port".into(), "8080".into()];
    expected.env = BTreeMap::from([("RUST_LOG".into(), "info".into())]);
    expected.secret_env = BTreeMap::from([("API_KEY".into(), Secret::new("change-me"))]);
    expected.replicas = 3;
    expected.resources = Resources {
        cpu_millis: 500,
        memory_bytes: 256 << 20,
    };
    expected.ports = vec![PortSpec {
        name: Some("http".into()),
        container_port: 8080,
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
    expected.update.max_surge = ReplicaCount::Count(1);
    expected.update.max_unavailable = ReplicaCount::Count(0);
    expected.update.min_ready = secs(10);
    expected.traffic.revision_weights = BTreeMap::from([(1, 90), (2, 10)]);
    expected.stop_grace_period = secs(10);
    expected.stop_after_disconnect = Some(secs(30));
    // The servicePort makes the document's service: named like the workload, selecting it
    // by its implicit label, reached on every node's address, with the traffic strategy.
    let mut web = Service::for_workload("web", "web");
    web.ports = vec![ServicePort {
        name: Some("http".into()),
        ..service_port(80, TargetPort::Number(8080))
    }];
    web.kind = ServiceType::LoadBalancer;
    web.strategy = Strategy::LeastConn;
    assert_eq!(
        manifest,
        Manifest {
            workloads: vec![expected],
            services: vec![web],
            autoscalers: Vec::new(),
        }
    );
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
    assert_eq!(spec.ports, [container_port(80)]);
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
fn env_values_marked_secret_are_kept_apart_and_never_debug_printed() {
    let spec = one("
apiVersion: drover.dev/v1
kind: Service
metadata: {name: api}
spec:
  image: api
  env: {MODE: prod, DB_PASSWORD: {secret: hunter2}, PIN: {secret: 1234}}
");
    assert_eq!(spec.env.keys().collect::<Vec<_>>(), ["MODE"]);
    let secrets: Vec<(&str, &str)> = spec
        .secret_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose()))
        .collect();
    assert_eq!(secrets, [("DB_PASSWORD", "hunter2"), ("PIN", "1234")]);
    assert_eq!(
        spec.container_env().get("DB_PASSWORD").map(String::as_str),
        Some("hunter2")
    );
    let printed = format!("{spec:?}");
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(printed.contains("DB_PASSWORD"), "{printed}");
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
            "  traffic: {weights: {1: 90}}\n  update: {canary: {steps: [{weight: 10}]}}\n",
            "spec.traffic.weights: fixed revision weights and canary steps cannot go together",
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
            "  update: {maxSurge: 0, maxUnavailable: 0%}\n",
            "spec.update: maxSurge and maxUnavailable are both 0",
        ),
        (
            "  env: {TOKEN: {secrets: x}}\n",
            "spec.env.TOKEN.secrets: field not supported by Drover (supported here: secret)",
        ),
        (
            "  env: {TOKEN: {}}\n",
            "spec.env.TOKEN.secret: required field is missing",
        ),
        (
            "  env: {TOKEN: [a]}\n",
            "spec.env.TOKEN: invalid type: sequence, expected a string, number or boolean, or {secret: <value>}",
        ),
        (
            "  env: {'A=B': {secret: x}}\n",
            "spec.env.A=B: environment variable name \"A=B\" contains '='",
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
            "  ports: [{containerPort: 80, servicePort: 1, name: a}, {containerPort: 81, servicePort: 1, name: b}]\n",
            "spec.ports[1].servicePort: port 1 is already used by spec.ports[0]",
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

#[test]
fn drover_example_canary_block_parses() {
    // The example's canary block is commented out; it must parse once uncommented.
    // Canary steps set the weights themselves: the example's fixed weights go.
    let text: Vec<String> = WEB
        .lines()
        .filter(|line| !line.trim_start().starts_with("weights:"))
        .map(|line| match line.strip_prefix("    # ") {
            Some(rest) => format!("    {rest}"),
            None => line.to_string(),
        })
        .collect();
    let spec = one(&text.join("\n"));
    let minute = Duration::from_secs(60);
    assert_eq!(spec.update.paused, Some(true));
    assert_eq!(
        spec.update.canary,
        [
            CanaryStep {
                weight: 10,
                pause: minute
            },
            CanaryStep {
                weight: 50,
                pause: minute
            },
        ]
    );
    assert_eq!(spec.update.analysis, CanaryAnalysis::default());
}

#[test]
fn drover_update_defaults() {
    let spec =
        one("apiVersion: drover.dev/v1\nkind: Service\nmetadata: {name: w}\nspec: {image: w}\n");
    assert_eq!(spec.update, UpdateStrategy::drover_defaults());
    assert!(spec.update.auto_revert);
    assert_eq!(spec.update.max_surge, ReplicaCount::Percent(25));
    assert_eq!(spec.update.max_unavailable, ReplicaCount::Percent(25));
    assert_eq!(spec.update.progress_deadline, Duration::from_secs(600));
    assert_eq!(spec.update.revision_history_limit, 10);
    assert_eq!(spec.update.paused, None);
    // A canary without analysis judges with the defaults; a pause defaults to 0s.
    let spec = one(
        "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {name: w}\nspec:\n  image: w\n  update: {canary: {steps: [{weight: 5}]}}\n",
    );
    assert_eq!(
        spec.update.canary,
        [CanaryStep {
            weight: 5,
            pause: Duration::ZERO
        }]
    );
    assert_eq!(spec.update.analysis, CanaryAnalysis::default());
}

#[test]
fn drover_update_every_field() {
    let spec = one("
apiVersion: drover.dev/v1
kind: Service
metadata: {name: w}
spec:
  image: w
  update:
    strategy: RollingUpdate
    maxSurge: 150%
    maxUnavailable: 0%
    minReady: 30s
    progressDeadline: 5m
    autoRevert: false
    revisionHistoryLimit: 0
    paused: false
    canary:
      steps:
        - {weight: 1, pause: 90s}
        - {weight: 99}
      analysis: {maxFailureRate: 0.5%, minSample: 1}
");
    let expected = UpdateStrategy {
        kind: UpdateKind::RollingUpdate,
        max_surge: ReplicaCount::Percent(150),
        max_unavailable: ReplicaCount::Percent(0),
        min_ready: Duration::from_secs(30),
        progress_deadline: Duration::from_secs(300),
        auto_revert: false,
        canary: vec![
            CanaryStep {
                weight: 1,
                pause: Duration::from_secs(90),
            },
            CanaryStep {
                weight: 99,
                pause: Duration::ZERO,
            },
        ],
        analysis: CanaryAnalysis {
            max_failure_bp: 50,
            min_sample: 1,
        },
        revision_history_limit: 0,
        paused: Some(false),
    };
    assert_eq!(spec.update, expected);
    let update = |lines: &str| {
        let text = format!(
            "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {{name: w}}\nspec:\n  image: w\n  update:\n{lines}"
        );
        one(&text).update
    };
    let recreate = update("    strategy: Recreate\n    maxUnavailable: 1\n");
    assert_eq!(recreate.kind, UpdateKind::Recreate);
    assert_eq!(recreate.max_unavailable, ReplicaCount::Count(1));
    let edges = update(
        "    maxSurge: 1000%\n    maxUnavailable: 100%\n    canary:\n      steps: [{weight: 20}]\n      analysis: {maxFailureRate: 100%}\n",
    );
    assert_eq!(edges.max_surge, ReplicaCount::Percent(1000));
    assert_eq!(edges.max_unavailable, ReplicaCount::Percent(100));
    assert_eq!(edges.analysis.max_failure_bp, 10_000);
    for (rate, bp) in [
        ("0%", 0),
        ("1%", 100),
        ("2.5%", 250),
        ("0.05%", 5),
        ("12.34%", 1234),
    ] {
        let parsed = update(&format!(
            "    canary: {{steps: [{{weight: 10}}], analysis: {{maxFailureRate: {rate}}}}}\n"
        ));
        assert_eq!(parsed.analysis.max_failure_bp, bp, "{rate}");
    }
}

#[test]
fn drover_update_errors() {
    let base = "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {name: w}\nspec:\n  image: w\n  update:\n";
    let canary = "    canary:\n      steps: [{weight: 10}]\n";
    let cases = [
        (
            "    strategy: BlueGreen\n".to_string(),
            "spec.update.strategy: unknown variant `BlueGreen`, expected `RollingUpdate` or `Recreate`",
        ),
        (
            "    maxSurge: 1200%\n".into(),
            "spec.update.maxSurge: maxSurge 1200% is out of range 0%..=1000%",
        ),
        (
            "    maxUnavailable: 101%\n".into(),
            "spec.update.maxUnavailable: maxUnavailable 101% is out of range 0%..=100%",
        ),
        (
            "    maxSurge: many\n".into(),
            "spec.update.maxSurge: \"many\" is neither a number of replicas nor a percentage (write e.g. 1 or \"25%\")",
        ),
        (
            "    maxSurge: '2'\n".into(),
            "spec.update.maxSurge: \"2\" is neither a number of replicas nor a percentage",
        ),
        (
            "    maxUnavailable: 2.5%\n".into(),
            "spec.update.maxUnavailable: percentage \"2.5%\" must be a whole number followed by '%', such as \"25%\"",
        ),
        (
            "    maxUnavailable: -1\n".into(),
            "spec.update.maxUnavailable: must be >= 0, got -1",
        ),
        (
            "    maxSurge: 1.5\n".into(),
            "spec.update.maxSurge: invalid type: floating point `1.5`, expected a number of replicas or a percentage such as \"25%\"",
        ),
        (
            "    minReady: 1m\n    progressDeadline: 30s\n".into(),
            "spec.update.progressDeadline: progressDeadline 30s must be longer than minReady 1m",
        ),
        (
            "    minReady: 10m\n".into(),
            "spec.update.progressDeadline: progressDeadline 10m (the default) must be longer than minReady 10m",
        ),
        (
            "    revisionHistoryLimit: -1\n".into(),
            "spec.update.revisionHistoryLimit: must be >= 0, got -1",
        ),
        (
            "    paused: maybe\n".into(),
            "spec.update.paused: invalid type: string \"maybe\", expected a boolean",
        ),
        (
            format!("    strategy: Recreate\n{canary}"),
            "spec.update.canary: canary steps need strategy RollingUpdate, not Recreate",
        ),
        (
            "    canary: {steps: []}\n".into(),
            "spec.update.canary.steps: canary has no steps: give at least one step or leave canary out",
        ),
        (
            "    canary: {analysis: {minSample: 10}}\n".into(),
            "spec.update.canary.steps: canary has no steps: give at least one step or leave canary out",
        ),
        (
            "    canary: {steps: [{weight: 10}, {weight: 100}]}\n".into(),
            "spec.update.canary.steps[1].weight: weight 100 is out of range 1..=99",
        ),
        (
            "    canary: {steps: [{weight: 0}]}\n".into(),
            "spec.update.canary.steps[0].weight: weight 0 is out of range 1..=99",
        ),
        (
            "    canary: {steps: [{weight: -5}]}\n".into(),
            "spec.update.canary.steps[0].weight: weight -5 is out of range 1..=99",
        ),
        (
            "    canary: {steps: [{weight: 10, pause: 60}]}\n".into(),
            "spec.update.canary.steps[0].pause: duration 60 has no unit: write \"60s\" for seconds",
        ),
        (
            "    canary: {steps: [{pause: 1m}]}\n".into(),
            "spec.update.canary.steps[0].weight: required field is missing",
        ),
        (
            "    canary: {steps: [{weight: 10}], bake: 1m}\n".into(),
            "spec.update.canary.bake: field not supported by Drover (supported here: steps or analysis)",
        ),
        (
            format!("{canary}      analysis: {{maxFailureRate: 150%}}\n"),
            "spec.update.canary.analysis.maxFailureRate: maxFailureRate 150% is out of range 0%..=100%",
        ),
        (
            format!("{canary}      analysis: {{maxFailureRate: 0.125%}}\n"),
            "spec.update.canary.analysis.maxFailureRate: maxFailureRate \"0.125%\" has more than two decimals: the rate is kept in basis points (0.01%)",
        ),
        (
            format!("{canary}      analysis: {{maxFailureRate: 1}}\n"),
            "spec.update.canary.analysis.maxFailureRate: maxFailureRate \"1\" is not a percentage: write e.g. \"1%\" or \"0.5%\"",
        ),
        (
            format!("{canary}      analysis: {{maxFailureRate: .5%}}\n"),
            "spec.update.canary.analysis.maxFailureRate: maxFailureRate \".5%\" is not a percentage",
        ),
        (
            format!("{canary}      analysis: {{minSample: 0}}\n"),
            "spec.update.canary.analysis.minSample: must be >= 1, got 0",
        ),
        (
            format!("{canary}      analysis: {{minSample: -3}}\n"),
            "spec.update.canary.analysis.minSample: must be >= 1, got -3",
        ),
    ];
    for (lines, expected) in &cases {
        let message = refused(&[("u.yaml", &format!("{base}{lines}"))]);
        assert_contains(
            &message,
            &format!("u.yaml, document 1 (Service w): {expected}"),
        );
        // Each problem is reported once, though `validate` also checks most of them.
        assert_eq!(message.lines().count(), 1, "{message}");
    }
    // Problems of several fields are all reported.
    let message = refused(&[(
        "u.yaml",
        &format!(
            "{base}    maxSurge: x\n    minReady: 20m\n    canary: {{steps: [{{weight: 0}}, {{weight: 200}}]}}\n"
        ),
    )]);
    let paths: Vec<&str> = message
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .collect();
    assert_eq!(
        paths,
        [
            "spec.update.maxSurge",
            "spec.update.progressDeadline",
            "spec.update.canary.steps[0].weight",
            "spec.update.canary.steps[1].weight",
        ],
        "{message}"
    );
}

#[test]
fn validate_checks_rollout_settings_received_over_grpc() {
    let mut spec = WorkloadSpec::new("w", "w");
    spec.update = UpdateStrategy {
        kind: UpdateKind::Recreate,
        max_surge: ReplicaCount::Percent(1001),
        max_unavailable: ReplicaCount::Percent(101),
        min_ready: Duration::from_secs(60),
        progress_deadline: Duration::from_secs(60),
        canary: vec![
            CanaryStep {
                weight: 0,
                pause: Duration::ZERO,
            },
            CanaryStep {
                weight: 100,
                pause: Duration::ZERO,
            },
        ],
        analysis: CanaryAnalysis {
            max_failure_bp: 10_001,
            min_sample: 0,
        },
        ..UpdateStrategy::default()
    };
    let errors = validate(&spec).expect_err("invalid");
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "spec.update.maxSurge: maxSurge 1001% is out of range 0%..=1000%",
            "spec.update.maxUnavailable: maxUnavailable 101% is out of range 0%..=100%",
            "spec.update.progressDeadline: progressDeadline 1m must be longer than minReady 1m",
            "spec.update.canary: canary steps need strategy RollingUpdate, not Recreate (Recreate stops every old replica first)",
            "spec.update.canary.steps[0].weight: weight 0 is out of range 1..=99",
            "spec.update.canary.steps[1].weight: weight 100 is out of range 1..=99",
            "spec.update.canary.analysis.maxFailureRate: maxFailureRate 100.01% is out of range 0%..=100%",
            "spec.update.canary.analysis.minSample: must be >= 1, got 0",
        ]
    );
    // Both zero, whichever way each is written; without canary steps minSample is not judged.
    for (surge, unavailable) in [
        (ReplicaCount::Count(0), ReplicaCount::Count(0)),
        (ReplicaCount::Percent(0), ReplicaCount::Count(0)),
        (ReplicaCount::Count(0), ReplicaCount::Percent(0)),
    ] {
        let mut spec = WorkloadSpec::new("w", "w");
        spec.update.max_surge = surge;
        spec.update.max_unavailable = unavailable;
        spec.update.analysis.min_sample = 0;
        let errors = validate(&spec).expect_err("both zero");
        assert_eq!(
            errors,
            [FieldError::new(
                "spec.update",
                "maxSurge and maxUnavailable are both 0: an update could never progress"
            )]
        );
    }
    let mut spec = WorkloadSpec::new("w", "w");
    spec.update.max_surge = ReplicaCount::Count(0);
    spec.update.max_unavailable = ReplicaCount::Percent(1);
    assert_eq!(validate(&spec), Ok(()));
}
