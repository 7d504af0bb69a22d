//! Tests of manifest parsing through the public API, one per behaviour and error class.

mod autoscale;
mod drover;
mod kube;
mod services;
mod vertical;

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::model::{
    ClusterIp, ConstraintOp, HealthCheck, LabelConstraint, PortSpec, ProbeAction, Protocol,
    Resources, RestartMode, Service, ServicePort, ServiceType, SpreadMode, Strategy, TargetPort,
};

const SEED: &str = include_str!("../../../../examples/seed/user-service.yaml");
const WEB: &str = include_str!("../../../../examples/web.yaml");

fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(name, text)| (name.to_string(), text.to_string()))
        .collect()
}

/// The error text of an apply that must fail.
fn refused(list: &[(&str, &str)]) -> String {
    match parse_files(&files(list)) {
        Ok(specs) => panic!("expected an error, parsed {specs:?}"),
        Err(err) => err.to_string(),
    }
}

/// What an apply that must succeed declares.
fn applied(list: &[(&str, &str)]) -> Manifest {
    match parse_files(&files(list)) {
        Ok(manifest) => manifest,
        Err(err) => panic!("unexpected error:\n{err}"),
    }
}

/// The one workload of a one-file apply (whatever services it also declares).
fn one(text: &str) -> WorkloadSpec {
    let mut manifest = applied(&[("test.yaml", text)]);
    match manifest.workloads.len() {
        1 => manifest.workloads.remove(0),
        _ => panic!("expected one workload, got {manifest:?}"),
    }
}

/// The workload named `name` of `manifest`.
fn workload<'a>(manifest: &'a Manifest, name: &str) -> &'a WorkloadSpec {
    manifest
        .workloads
        .iter()
        .find(|w| w.name == name)
        .unwrap_or_else(|| panic!("no workload {name} in {manifest:?}"))
}

/// The service named `name` of `manifest`.
fn service<'a>(manifest: &'a Manifest, name: &str) -> &'a Service {
    manifest
        .services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name} in {manifest:?}"))
}

/// A service port without name nor node port.
fn service_port(port: u16, target: TargetPort) -> ServicePort {
    ServicePort {
        name: None,
        port,
        target,
        node_port: None,
        protocol: Protocol::Tcp,
    }
}

/// A container port without name nor host port.
fn container_port(port: u16) -> PortSpec {
    PortSpec {
        name: None,
        container_port: port,
        host_port: None,
        protocol: Protocol::Tcp,
    }
}

/// A Kubernetes Service selecting `selector` (flow mapping) with `spec` lines added.
fn kube_service(name: &str, selector: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {selector}\n{spec}"
    )
}

fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "expected {needle:?} in:\n{haystack}"
    );
}

const DEPLOYMENT: &str = "
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: nginx
          ports:
            - {containerPort: 8080, name: http}
";

/// [`DEPLOYMENT`] with `line` inserted under the line that contains `after`, indented like
/// the line below it.
fn deployment_with(after: &str, line: &str) -> String {
    let mut out = Vec::new();
    let lines: Vec<&str> = DEPLOYMENT.lines().collect();
    for (index, current) in lines.iter().enumerate() {
        out.push(current.to_string());
        if current.trim_end().ends_with(after) {
            let next = lines.get(index + 1).copied().unwrap_or_default();
            let indent = next.len() - next.trim_start().len();
            for added in line.lines() {
                out.push(format!("{}{added}", " ".repeat(indent)));
            }
        }
    }
    out.join("\n")
}

#[test]
fn negative_replicas_are_refused() {
    let text = DEPLOYMENT.replace("spec:\n  selector:", "spec:\n  replicas: -1\n  selector:");
    let message = refused(&[("r.yaml", &text)]);
    assert_contains(
        &message,
        "r.yaml, document 1 (Deployment web): spec.replicas: must be >= 0, got -1",
    );
    let drover = "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {name: w}\nspec: {image: w, replicas: -1}\n";
    let message = refused(&[("d.yaml", drover)]);
    assert_contains(
        &message,
        "d.yaml, document 1 (Service w): spec.replicas: must be >= 0, got -1",
    );
}

#[test]
fn ports_out_of_range_are_refused() {
    for port in ["0", "70000", "-5"] {
        let text = DEPLOYMENT.replace("containerPort: 8080", &format!("containerPort: {port}"));
        let message = refused(&[("p.yaml", &text)]);
        assert_contains(
            &message,
            &format!(
                "spec.template.spec.containers[0].ports[0].containerPort: port {port} is out of range 1..=65535"
            ),
        );
        let drover = format!(
            "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {{name: w}}\nspec:\n  image: w\n  ports: [{{containerPort: 80, servicePort: {port}}}]\n"
        );
        let message = refused(&[("d.yaml", &drover)]);
        // First, though the placeholder is reported again against the service (see
        // `services::an_out_of_range_service_port_is_reported_once`).
        assert_eq!(
            message.lines().next(),
            Some(
                format!(
                    "d.yaml, document 1 (Service w): spec.ports[0].servicePort: port {port} is out of range 1..=65535"
                )
                .as_str()
            ),
            "{message}"
        );
        let container = drover.replace(
            "containerPort: 80, servicePort",
            "containerPort: 8080, hostPort",
        );
        let message = refused(&[("d.yaml", &container)]);
        assert_contains(
            &message,
            &format!("spec.ports[0].hostPort: port {port} is out of range 1..=65535"),
        );
        // Reported once, though `validate` also refuses the placeholder.
        assert_eq!(message.lines().count(), 1, "{message}");
    }
    let service = SEED.replace("port: 80", "port: 70000");
    let message = refused(&[("s.yaml", &service)]);
    assert_contains(
        &message,
        "s.yaml, document 1 (Service user-service): spec.ports[0].port: port 70000 is out of range 1..=65535",
    );
}

#[test]
fn missing_image_is_refused() {
    let text = DEPLOYMENT.replace("          image: nginx\n", "");
    let message = refused(&[("i.yaml", &text)]);
    assert_contains(
        &message,
        "i.yaml, document 1 (Deployment web): spec.template.spec.containers[0].image: required field is missing",
    );
    let text = DEPLOYMENT.replace("image: nginx", "image: ''");
    let message = refused(&[("i.yaml", &text)]);
    assert_contains(
        &message,
        "spec.template.spec.containers[0].image: image must not be empty",
    );
    let drover =
        "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {name: w}\nspec: {replicas: 2}\n";
    let message = refused(&[("d.yaml", drover)]);
    assert_contains(
        &message,
        "d.yaml, document 1 (Service w): spec.image: required field is missing",
    );
}

#[test]
fn names_must_be_dns_labels() {
    let text = SEED.replace(
        "name: user-service\nspec:\n  replicas",
        "name: User_Service\nspec:\n  replicas",
    );
    let message = refused(&[("n.yaml", &text)]);
    assert_contains(
        &message,
        "n.yaml, document 2 (Deployment User_Service): metadata.name: name \"User_Service\" is not a DNS-1123 label",
    );
    let drover = "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {name: User_Service}\nspec: {image: w}\n";
    let message = refused(&[("d.yaml", drover)]);
    assert_contains(
        &message,
        "metadata.name: name \"User_Service\" is not a DNS-1123 label",
    );
    // The Deployment is broken, so the Service selecting it reports nothing more.
    assert_eq!(refused(&[("n.yaml", &text)]).lines().count(), 1);
}

#[test]
fn duplicate_names_across_files_are_refused() {
    // A workload and a service may share a name (the seed's do); two workloads may not.
    let drover = "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {name: user-service}\nspec: {image: other}\n";
    let message = refused(&[("a.yaml", SEED), ("b.yaml", drover)]);
    assert_eq!(
        message,
        "b.yaml, document 1 (Service user-service): metadata.name: workload \"user-service\" is already declared in a.yaml, document 2 (Deployment user-service)"
    );
    // A document that publishes a port also declares a service of its name: both clash.
    let published = "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {name: user-service}\nspec: {image: other, ports: [{containerPort: 80, servicePort: 80}]}\n";
    let message = refused(&[("a.yaml", SEED), ("b.yaml", published)]);
    assert_eq!(
        message.lines().collect::<Vec<_>>(),
        [
            "b.yaml, document 1 (Service user-service): metadata.name: workload \"user-service\" is already declared in a.yaml, document 2 (Deployment user-service)",
            "b.yaml, document 1 (Service user-service): metadata.name: service \"user-service\" is already declared in a.yaml, document 1 (Service user-service)",
        ]
    );
    // Only the service clashes when the workloads have different names.
    let renamed = SEED.replace(
        "name: user-service\nspec:\n  replicas",
        "name: users\nspec:\n  replicas",
    );
    let message = refused(&[("a.yaml", &renamed), ("b.yaml", published)]);
    assert_eq!(
        message,
        "b.yaml, document 1 (Service user-service): metadata.name: service \"user-service\" is already declared in a.yaml, document 1 (Service user-service)"
    );
}

#[test]
fn unknown_kinds_and_bad_documents_are_refused() {
    let config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {a: b}\n";
    assert_eq!(
        refused(&[("k.yaml", config_map)]),
        "k.yaml, document 1 (ConfigMap cfg): kind: kind ConfigMap of apiVersion v1 is not supported: Drover reads drover.dev/v1 Service, apps/v1 Deployment, v1 Service, autoscaling/v2 HorizontalPodAutoscaler and autoscaling.k8s.io/v1 VerticalPodAutoscaler"
    );
    let old = DEPLOYMENT.replace("apps/v1", "extensions/v1beta1");
    assert_contains(
        &refused(&[("k.yaml", &old)]),
        "kind Deployment of apiVersion extensions/v1beta1 is not supported",
    );
    assert_eq!(
        refused(&[("k.yaml", "kind: Service\n")]),
        "k.yaml, document 1: apiVersion: required field is missing"
    );
    assert_eq!(
        refused(&[("k.yaml", "- a\n- b\n")]),
        "k.yaml, document 1: a manifest document must be a mapping with apiVersion and kind"
    );
    let broken = format!("{DEPLOYMENT}\n---\nkey: [unclosed\n");
    let message = refused(&[("y.yaml", &broken)]);
    assert_contains(&message, "y.yaml, document 2: invalid YAML: ");
}

#[test]
fn errors_name_file_and_document_and_are_all_reported() {
    let text = format!(
        "# a comment before the first marker starts no document\n---\n# empty\n---\n{}\n---\n{}",
        DEPLOYMENT.replace("image: nginx", "image: nginx\n          workingDir: /srv"),
        "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {name: w}\nspec: {image: w, replicas: -2, ports: [{containerPort: 0}]}\n"
    );
    let err = parse_files(&files(&[("multi.yaml", &text)])).expect_err("two bad documents");
    assert_eq!(err.problems.len(), 3, "{err}");
    let lines: Vec<String> = err.to_string().lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        [
            "multi.yaml, document 2 (Deployment web): spec.template.spec.containers[0].workingDir: field not supported by Drover (supported here: name, image, imagePullPolicy, command, args, env, ports, resources, readinessProbe, livenessProbe)",
            "multi.yaml, document 3 (Service w): spec.replicas: must be >= 0, got -2",
            "multi.yaml, document 3 (Service w): spec.ports[0].containerPort: port 0 is out of range 1..=65535",
        ]
    );
    assert_eq!(
        err.problems[0].origin,
        Source {
            file: "multi.yaml".into(),
            document: 1
        }
    );
}

#[test]
fn empty_documents_are_skipped_but_counted() {
    // Documents: empty, empty, Service, Deployment.
    let text = format!("---\n# nothing\n---\n---\n{SEED}");
    let manifest = parse_str("e.yaml", &text).expect("parses");
    assert_eq!(manifest.workloads.len(), 1);
    assert_eq!(manifest.services.len(), 1);
    let broken = text.replace("replicas: 3", "replicas: -3");
    let err = parse_str("e.yaml", &broken).expect_err("negative replicas");
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!(err.problems[0].origin.document, 3);
    assert_contains(
        &err.to_string(),
        "e.yaml, document 4 (Deployment user-service): spec.replicas",
    );
    assert_eq!(parse_str("empty.yaml", ""), Ok(Manifest::default()));
}

#[test]
fn validate_reports_every_problem_by_field() {
    let mut spec = WorkloadSpec::new("ok", "");
    spec.env.insert(String::new(), "x".into());
    spec.ports.push(PortSpec {
        name: None,
        container_port: 0,
        host_port: Some(0),
        protocol: Protocol::Tcp,
    });
    spec.health = Some(HealthCheck {
        interval: Duration::ZERO,
        success_threshold: 0,
        ..HealthCheck::with_defaults(ProbeAction::Exec {
            command: Vec::new(),
        })
    });
    spec.placement.constraints.push(LabelConstraint {
        key: "zone".into(),
        op: ConstraintOp::Eq,
        values: Vec::new(),
    });
    let errors = validate(&spec).expect_err("invalid");
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.image",
            "spec.ports[0].containerPort",
            "spec.ports[0].hostPort",
            "spec.env.",
            "spec.health.exec.command",
            "spec.health.interval",
            "spec.health.successThreshold",
            "spec.placement.constraints[0]",
        ]
    );
    assert_contains(
        &errors[7].to_string(),
        "constraint \"zone=\": operator Eq does not take 0 value(s)",
    );
    assert_eq!(validate(&WorkloadSpec::new("fine", "nginx")), Ok(()));
}
