//! Tests of services: the one Drover's own document declares, Kubernetes Services and what
//! they select, and `validate_service`.

use std::net::Ipv4Addr;

use super::*;

/// A Drover document named `w` with `lines` added under its `spec` (after `image: w`).
fn drover(lines: &str) -> String {
    format!(
        "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {{name: w}}\nspec:\n  image: w\n{lines}"
    )
}

/// A Deployment `name` selecting its pods by all of `labels` (flow mapping), with the
/// container ports `ports` (flow sequence).
fn deployment(name: &str, labels: &str, ports: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  selector: {{matchLabels: {labels}}}
  template:
    metadata: {{labels: {labels}}}
    spec:
      containers:
        - {{name: web, image: web, ports: {ports}}}
"
    )
}

/// Documents joined into one file.
fn documents(list: &[&str]) -> String {
    list.join("---\n")
}

fn named(name: &str, port: ServicePort) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        ..port
    }
}

fn with_node_port(node_port: u16, port: ServicePort) -> ServicePort {
    ServicePort {
        node_port: Some(node_port),
        ..port
    }
}

#[test]
fn drover_document_publishes_a_load_balancer_service_of_its_name() {
    let manifest = applied(&[(
        "w.yaml",
        &drover(
            "  ports:\n    - {name: http, containerPort: 8080, servicePort: 80}\n    - {name: admin, containerPort: 9000}\n",
        ),
    )]);
    let w = workload(&manifest, "w");
    // The workload keeps every container port; only those with a servicePort are the
    // service's.
    assert_eq!(
        w.ports,
        [
            PortSpec {
                name: Some("http".into()),
                ..container_port(8080)
            },
            PortSpec {
                name: Some("admin".into()),
                ..container_port(9000)
            },
        ]
    );
    let mut expected = Service::for_workload("w", "w");
    expected.ports = vec![named("http", service_port(80, TargetPort::Number(8080)))];
    expected.kind = ServiceType::LoadBalancer;
    assert_eq!(manifest.services, [expected]);
    assert_eq!(
        manifest.services[0].selector,
        BTreeMap::from([(crate::model::WORKLOAD_LABEL.to_string(), "w".to_string())])
    );
    assert!(manifest.services[0].selects(w));
    assert_eq!(manifest.services[0].strategy, Strategy::RoundRobin);
    assert_eq!(manifest.services[0].cluster_ip, ClusterIp::Auto);
    // Without a servicePort there is no service.
    let manifest = applied(&[("w.yaml", &drover("  ports: [{containerPort: 8080}]\n"))]);
    assert_eq!(manifest.workloads.len(), 1);
    assert_eq!(manifest.services, []);
}

#[test]
fn drover_document_metadata_labels_are_its_pod_labels() {
    let text = "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {name: w, labels: {app: web}}\nspec: {image: w}\n";
    let spec = one(text);
    let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
    assert_eq!(spec.pod_labels, labels);
    assert_eq!(spec.labels, labels);
}

#[test]
fn drover_document_service_type_and_cluster_ip() {
    let ip = Ipv4Addr::new(10, 43, 0, 10);
    let cases = [
        ("{}", ServiceType::LoadBalancer, ClusterIp::Auto),
        (
            "{type: LoadBalancer}",
            ServiceType::LoadBalancer,
            ClusterIp::Auto,
        ),
        (
            "{clusterIP: ''}",
            ServiceType::LoadBalancer,
            ClusterIp::Auto,
        ),
        ("{type: ClusterIP}", ServiceType::ClusterIp, ClusterIp::Auto),
        (
            "{type: ClusterIP, clusterIP: None}",
            ServiceType::ClusterIp,
            ClusterIp::Headless,
        ),
        ("{type: NodePort}", ServiceType::NodePort, ClusterIp::Auto),
        (
            "{type: NodePort, clusterIP: 10.43.0.10}",
            ServiceType::NodePort,
            ClusterIp::Fixed(ip),
        ),
        (
            "{clusterIP: 10.43.0.10}",
            ServiceType::LoadBalancer,
            ClusterIp::Fixed(ip),
        ),
    ];
    for (service, kind, cluster_ip) in cases {
        let text = drover(&format!(
            "  ports: [{{containerPort: 8080, servicePort: 80}}]\n  service: {service}\n"
        ));
        let manifest = applied(&[("w.yaml", &text)]);
        assert_eq!(manifest.services.len(), 1, "{service}");
        let found = &manifest.services[0];
        assert_eq!(
            (found.kind, found.cluster_ip),
            (kind, cluster_ip),
            "{service}"
        );
        assert_eq!(
            found.ports,
            [service_port(80, TargetPort::Number(8080))],
            "{service}"
        );
    }
}

#[test]
fn drover_document_node_ports() {
    let ports = "  ports:
    - {name: http, containerPort: 8080, servicePort: 80, nodePort: 30080}
    - {name: metrics, containerPort: 9090, servicePort: 9090}
";
    for kind in ["NodePort", "LoadBalancer"] {
        let text = drover(&format!("{ports}  service: {{type: {kind}}}\n"));
        let manifest = applied(&[("w.yaml", &text)]);
        assert_eq!(
            manifest.services[0].ports,
            [
                named(
                    "http",
                    with_node_port(30080, service_port(80, TargetPort::Number(8080)))
                ),
                named("metrics", service_port(9090, TargetPort::Number(9090))),
            ],
            "{kind}"
        );
        assert_eq!(manifest.services[0].kind.as_str(), kind);
        // The node port is the service's, not the workload's.
        let host_ports: Vec<u16> = manifest.workloads[0].host_ports().collect();
        assert_eq!(host_ports, Vec::<u16>::new(), "{kind}");
    }
}

#[test]
fn drover_document_strategy_is_its_services() {
    let ports = "  ports: [{containerPort: 8080, servicePort: 80}]\n";
    for (written, strategy) in [
        ("round_robin", Strategy::RoundRobin),
        ("random", Strategy::Random),
        ("least_conn", Strategy::LeastConn),
    ] {
        let text = drover(&format!(
            "{ports}  traffic: {{strategy: {written}, weights: {{1: 3}}}}\n"
        ));
        let manifest = applied(&[("w.yaml", &text)]);
        assert_eq!(manifest.services[0].strategy, strategy, "{written}");
        // The revision weights stay the workload's.
        assert_eq!(
            manifest.workloads[0].traffic.revision_weights,
            BTreeMap::from([(1, 3)])
        );
        assert_eq!(manifest.services[0].workload_weights, BTreeMap::new());
    }
}

#[test]
fn drover_document_service_errors() {
    let published = "  ports: [{containerPort: 8080, servicePort: 80}]\n";
    let cases = [
        (
            "  traffic: {strategy: random}\n".to_string(),
            "spec.traffic.strategy: the strategy is the service's, and no port has a servicePort",
        ),
        (
            "  ports: [{containerPort: 80}]\n  traffic: {strategy: least_conn}\n".into(),
            "spec.traffic.strategy: the strategy is the service's, and no port has a servicePort",
        ),
        (
            "  ports: [{containerPort: 80}]\n  service: {type: ClusterIP}\n".into(),
            "spec.service: no port has a servicePort, so there is no service to configure",
        ),
        (
            "  ports: [{containerPort: 80, nodePort: 30080}]\n".into(),
            "spec.ports[0].nodePort: a nodePort needs a servicePort",
        ),
        (
            format!("{published}  service: {{type: External}}\n"),
            "spec.service.type: type \"External\" is not one of ClusterIP, NodePort, LoadBalancer",
        ),
        (
            format!("{published}  service: {{type: clusterip}}\n"),
            "spec.service.type: type \"clusterip\" is not one of ClusterIP, NodePort, LoadBalancer",
        ),
        (
            format!("{published}  service: {{clusterIP: 10.0.0}}\n"),
            "spec.service.clusterIP: \"10.0.0\" is not an IPv4 address nor \"None\"",
        ),
        (
            format!("{published}  service: {{clusterIP: None}}\n"),
            "spec.service.clusterIP: a headless service (clusterIP: None) cannot be of type LoadBalancer",
        ),
        (
            "  ports: [{containerPort: 80, servicePort: 80, nodePort: 30080}]\n  service: {type: ClusterIP}\n".into(),
            "spec.ports[0].nodePort: a ClusterIP service has no node port (type NodePort or LoadBalancer has)",
        ),
        (
            "  ports: [{containerPort: 80, servicePort: 80, nodePort: 8080}]\n  service: {type: NodePort}\n".into(),
            "spec.ports[0].nodePort: 8080 is outside the node port range 30000-32767",
        ),
        (
            format!("{published}  service: {{type: ClusterIP, ports: []}}\n"),
            "spec.service.ports: field not supported by Drover",
        ),
    ];
    for (lines, expected) in &cases {
        let message = refused(&[("w.yaml", &drover(lines))]);
        assert_eq!(message.lines().count(), 1, "{message}");
        assert_contains(
            &message,
            &format!("w.yaml, document 1 (Service w): {expected}"),
        );
    }
    // Several unnamed published ports are named after their port, as SRV records need.
    let manifest = applied(&[(
        "w.yaml",
        &drover(
            "  ports: [{containerPort: 80, servicePort: 80}, {name: admin, containerPort: 81, servicePort: 81}]\n",
        ),
    )]);
    let names: Vec<Option<&str>> = manifest.services[0]
        .ports
        .iter()
        .map(|p| p.name.as_deref())
        .collect();
    assert_eq!(names, [Some("port-80"), Some("admin")]);
}

#[test]
fn a_kubernetes_service_may_select_several_deployments() {
    // The v1/v2 canary layout: one Service over both versions, and one over v2 alone.
    let v1_doc = deployment(
        "web-v1",
        "{app: web, version: v1}",
        "[{containerPort: 8080, name: http}]",
    );
    let v2_doc = deployment(
        "web-v2",
        "{app: web, version: v2}",
        "[{containerPort: 8080, name: http}, {containerPort: 9100, name: metrics}]",
    );
    let web = kube_service(
        "web",
        "{app: web}",
        "  ports: [{name: http, port: 80, targetPort: http}, {name: metrics, port: 9100}]\n",
    );
    let canary = kube_service(
        "web-canary",
        "{app: web, version: v2}",
        "  type: NodePort\n  ports: [{port: 80, targetPort: http, nodePort: 30080}]\n",
    );
    let manifest = applied(&[("c.yaml", &documents(&[&v1_doc, &v2_doc, &web, &canary]))]);
    assert_eq!(manifest.workloads.len(), 2);
    assert_eq!(manifest.services.len(), 2);
    let (v1, v2) = (workload(&manifest, "web-v1"), workload(&manifest, "web-v2"));
    let web = service(&manifest, "web");
    let canary = service(&manifest, "web-canary");
    assert!(web.selects(v1) && web.selects(v2));
    assert!(canary.selects(v2) && !canary.selects(v1));
    assert_eq!(
        web.ports,
        [
            named("http", service_port(80, TargetPort::Name("http".into()))),
            named("metrics", service_port(9100, TargetPort::Number(9100))),
        ]
    );
    assert_eq!(web.kind, ServiceType::ClusterIp);
    assert_eq!(
        canary.ports,
        [with_node_port(
            30080,
            service_port(80, TargetPort::Name("http".into()))
        )]
    );
    assert_eq!(canary.kind, ServiceType::NodePort);
    // Each selected Deployment resolves the named target itself and gets the numeric
    // target it lacks; v2 declares 9100 already.
    assert_eq!(Service::target_port(&web.ports[0], v1), Some(8080));
    assert_eq!(Service::target_port(&web.ports[0], v2), Some(8080));
    let numbers = |w: &WorkloadSpec| -> Vec<(u16, Option<String>)> {
        w.ports
            .iter()
            .map(|p| (p.container_port, p.name.clone()))
            .collect()
    };
    assert_eq!(
        numbers(v1),
        [(8080, Some("http".to_string())), (9100, None)]
    );
    assert_eq!(
        numbers(v2),
        [
            (8080, Some("http".to_string())),
            (9100, Some("metrics".to_string()))
        ]
    );
    // A named target one of the selected Deployments lacks is an error against the
    // Service, naming that Deployment.
    let v2_unnamed = deployment(
        "web-v2",
        "{app: web, version: v2}",
        "[{containerPort: 8080}]",
    );
    let message = refused(&[(
        "c.yaml",
        &documents(&[
            &v1_doc,
            &v2_unnamed,
            &kube_service(
                "web",
                "{app: web}",
                "  ports: [{port: 80, targetPort: http}]\n",
            ),
        ]),
    )]);
    assert_eq!(
        message,
        "c.yaml, document 3 (Service web): spec.ports[0].targetPort: targetPort \"http\" names no container port of Deployment web-v2 (named ports: none)"
    );
    // A workload of Drover's own format is called a workload.
    let drover = "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {name: api, labels: {app: api}}\n\
                  spec:\n  image: api\n  ports: [{containerPort: 8080}]\n";
    let message = refused(&[(
        "d.yaml",
        &documents(&[
            drover,
            &kube_service(
                "front",
                "{app: api}",
                "  ports: [{port: 80, targetPort: http}]\n",
            ),
        ]),
    )]);
    assert!(
        message.ends_with("names no container port of workload api (named ports: none)"),
        "{message}"
    );
}

#[test]
fn several_services_may_select_one_deployment() {
    let text = format!(
        "{DEPLOYMENT}            - {{containerPort: 9090, name: metrics}}
---
{}---
{}",
        kube_service(
            "web",
            "{app: web}",
            "  ports: [{port: 80, targetPort: http}]\n"
        ),
        kube_service(
            "web-metrics",
            "{app: web}",
            "  type: ClusterIP\n  ports: [{port: 9100, targetPort: 9090, name: m}, {port: 8081, name: extra}]\n"
        ),
    );
    let manifest = applied(&[("m.yaml", &text)]);
    let web = workload(&manifest, "web");
    assert_eq!(manifest.services.len(), 2);
    assert!(manifest.services.iter().all(|s| s.selects(web)));
    // 8081 has no targetPort: Kubernetes targets the same number, which the Deployment
    // does not declare, so the port is added to the workload.
    let ports: Vec<(u16, Option<&str>)> = web
        .ports
        .iter()
        .map(|p| (p.container_port, p.name.as_deref()))
        .collect();
    assert_eq!(
        ports,
        [(8080, Some("http")), (9090, Some("metrics")), (8081, None)]
    );
    assert_eq!(
        service(&manifest, "web-metrics").ports,
        [
            named("m", service_port(9100, TargetPort::Number(9090))),
            named("extra", service_port(8081, TargetPort::Number(8081))),
        ]
    );
    // Parsing does not check the ports of services against each other: the coordinator
    // does, at apply, against the services of the cluster too.
    let same_port = text.replace("port: 9100", "port: 80");
    let manifest = applied(&[("m.yaml", &same_port)]);
    let ports: Vec<u16> = manifest.services.iter().map(|s| s.ports[0].port).collect();
    assert_eq!(ports, [80, 80]);
    // Two numeric targets of the same number add the port once.
    let twice = format!(
        "{DEPLOYMENT}---\n{}---\n{}",
        kube_service(
            "a",
            "{app: web}",
            "  ports: [{port: 80, targetPort: 7000}]\n"
        ),
        kube_service(
            "b",
            "{app: web}",
            "  ports: [{port: 81, targetPort: 7000}]\n"
        ),
    );
    let manifest = applied(&[("m.yaml", &twice)]);
    let numbers: Vec<u16> = manifest.workloads[0]
        .ports
        .iter()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(numbers, [8080, 7000]);
}

#[test]
fn kubernetes_node_port_and_load_balancer_services() {
    let with_spec = |spec: &str| {
        format!(
            "{DEPLOYMENT}---\n{}",
            kube_service("web", "{app: web}", spec)
        )
    };
    let manifest = applied(&[(
        "n.yaml",
        &with_spec(
            "  type: NodePort\n  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}, {name: admin, port: 81, targetPort: http}]\n",
        ),
    )]);
    let web = &manifest.services[0];
    assert_eq!(web.kind, ServiceType::NodePort);
    assert_eq!(
        web.ports,
        [
            named(
                "http",
                with_node_port(30080, service_port(80, TargetPort::Number(8080)))
            ),
            // Without a nodePort the coordinator picks one.
            named("admin", service_port(81, TargetPort::Name("http".into()))),
        ]
    );
    // The node port range is inclusive at both ends.
    for node_port in [30000, 32767] {
        let manifest = applied(&[(
            "n.yaml",
            &with_spec(&format!(
                "  type: NodePort\n  ports: [{{port: 80, targetPort: 8080, nodePort: {node_port}}}]\n"
            )),
        )]);
        assert_eq!(manifest.services[0].ports[0].node_port, Some(node_port));
    }
    let manifest = applied(&[(
        "n.yaml",
        &with_spec(
            "  type: LoadBalancer\n  ports: [{port: 80, targetPort: 8080, nodePort: 31000}]\n",
        ),
    )]);
    assert_eq!(manifest.services[0].kind, ServiceType::LoadBalancer);
    assert_eq!(manifest.services[0].ports[0].node_port, Some(31000));
    let manifest = applied(&[(
        "n.yaml",
        &with_spec("  type: LoadBalancer\n  ports: [{port: 80, targetPort: 8080}]\n"),
    )]);
    assert_eq!(
        manifest.services[0].ports,
        [service_port(80, TargetPort::Number(8080))]
    );
    let cases = [
        (
            "  type: NodePort\n  ports: [{port: 80, nodePort: 80}]\n",
            "spec.ports[0].nodePort: 80 is outside the node port range 30000-32767",
        ),
        (
            "  type: NodePort\n  ports: [{port: 80, nodePort: 32768}]\n",
            "spec.ports[0].nodePort: 32768 is outside the node port range 30000-32767",
        ),
        (
            "  type: NodePort\n  ports: [{port: 80, nodePort: 70000}]\n",
            "spec.ports[0].nodePort: port 70000 is out of range 1..=65535",
        ),
        (
            "  ports: [{port: 80, nodePort: 30080}]\n",
            "spec.ports[0].nodePort: a ClusterIP service has no node port (type NodePort or LoadBalancer has)",
        ),
        (
            "  type: NodePort\n  ports: [{name: a, port: 80, nodePort: 30080}, {name: b, port: 81, nodePort: 30080}]\n",
            "spec.ports[1].nodePort: node port 30080 is already used by spec.ports[0]",
        ),
        (
            "  type: ExternalName\n  ports: [{port: 80}]\n",
            "spec.type: type \"ExternalName\" is not supported: use ClusterIP, NodePort or LoadBalancer",
        ),
    ];
    for (spec, expected) in cases {
        assert_eq!(
            refused(&[("n.yaml", &with_spec(spec))]),
            format!("n.yaml, document 2 (Service web): {expected}")
        );
    }
}

#[test]
fn kubernetes_headless_and_fixed_cluster_ips() {
    let with_spec = |spec: &str| {
        format!(
            "{DEPLOYMENT}---\n{}",
            kube_service("web", "{app: web}", spec)
        )
    };
    let manifest = applied(&[(
        "h.yaml",
        &with_spec("  clusterIP: None\n  ports: [{port: 80, targetPort: http}]\n"),
    )]);
    assert_eq!(
        (manifest.services[0].kind, manifest.services[0].cluster_ip),
        (ServiceType::ClusterIp, ClusterIp::Headless)
    );
    let manifest = applied(&[(
        "h.yaml",
        &with_spec("  type: ClusterIP\n  clusterIP: 10.43.0.20\n  ports: [{port: 80}]\n"),
    )]);
    assert_eq!(
        manifest.services[0].cluster_ip,
        ClusterIp::Fixed(Ipv4Addr::new(10, 43, 0, 20))
    );
    let manifest = applied(&[(
        "h.yaml",
        &with_spec("  clusterIP: ''\n  ports: [{port: 80}]\n"),
    )]);
    assert_eq!(manifest.services[0].cluster_ip, ClusterIp::Auto);
    let cases = [
        (
            "  type: NodePort\n  clusterIP: None\n  ports: [{port: 80}]\n",
            "spec.clusterIP: a headless service (clusterIP: None) cannot be of type NodePort",
        ),
        (
            "  type: LoadBalancer\n  clusterIP: None\n  ports: [{port: 80}]\n",
            "spec.clusterIP: a headless service (clusterIP: None) cannot be of type LoadBalancer",
        ),
        (
            "  clusterIP: 10.43.0.300\n  ports: [{port: 80}]\n",
            "spec.clusterIP: \"10.43.0.300\" is not an IPv4 address nor \"None\"",
        ),
        (
            "  clusterIP: fd00::1\n  ports: [{port: 80}]\n",
            "spec.clusterIP: \"fd00::1\" is not an IPv4 address nor \"None\"",
        ),
    ];
    for (spec, expected) in cases {
        assert_eq!(
            refused(&[("h.yaml", &with_spec(spec))]),
            format!("h.yaml, document 2 (Service web): {expected}")
        );
    }
}

#[test]
fn kubernetes_service_shape_errors() {
    let cases = [
        (
            kube_service("web", "{}", "  ports: [{port: 80}]\n"),
            "spec.selector: a selector is required: a service routes to the replicas of the workloads it selects",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n"
                .to_string(),
            "spec.selector: a selector is required: a service routes to the replicas of the workloads it selects",
        ),
        (
            kube_service("web", "{app: web}", "  ports: []\n"),
            "spec.ports: at least one port is required",
        ),
        (
            kube_service(
                "web",
                "{app: web}",
                "  ports: [{port: 80}, {name: b, port: 81}]\n",
            ),
            "spec.ports[0].name: a service with several ports must name each of them",
        ),
        (
            kube_service(
                "web",
                "{app: web}",
                "  ports: [{name: a, port: 80}, {name: a, port: 81}]\n",
            ),
            "spec.ports[1].name: port name a is already used by spec.ports[0]",
        ),
        (
            kube_service(
                "web",
                "{app: web}",
                "  ports: [{name: a, port: 80}, {name: b, port: 80}]\n",
            ),
            "spec.ports[1].port: port 80 is already used by spec.ports[0]",
        ),
    ];
    for (text, expected) in &cases {
        assert_eq!(
            refused(&[("s.yaml", text)]),
            format!("s.yaml, document 1 (Service web): {expected}")
        );
    }
    // A port that does not convert is reported first (then again as missing, see
    // `a_port_that_does_not_convert_is_reported_once`).
    for (ports, expected) in [
        (
            "[{port: 80, targetPort: ''}]",
            "spec.ports[0].targetPort: must not be empty",
        ),
        (
            "[{port: 80, targetPort: 0}]",
            "spec.ports[0].targetPort: port 0 is out of range 1..=65535",
        ),
        (
            "[{port: 70000}]",
            "spec.ports[0].port: port 70000 is out of range 1..=65535",
        ),
    ] {
        let text = kube_service("web", "{app: web}", &format!("  ports: {ports}\n"));
        let message = refused(&[("s.yaml", &text)]);
        assert_eq!(
            message.lines().next(),
            Some(format!("s.yaml, document 1 (Service web): {expected}").as_str()),
            "{message}"
        );
    }
}

#[test]
fn kubernetes_services_select_by_pod_labels_and_the_implicit_workload_label() {
    // A Service may select a workload of Drover's format by its metadata labels, or any
    // workload by its implicit label; a numeric target it lacks is added to it as well.
    let drover = "apiVersion: drover.dev/v1\nkind: Service\nmetadata: {name: api, labels: {tier: back}}\nspec: {image: api, ports: [{containerPort: 9000}]}\n";
    let by_label = kube_service(
        "back",
        "{tier: back}",
        "  ports: [{port: 80, targetPort: 9001}]\n",
    );
    let by_name = kube_service(
        "web-direct",
        "{drover.dev/workload: web}",
        "  ports: [{port: 80, targetPort: 8080}]\n",
    );
    let text = documents(&[drover, DEPLOYMENT.trim_start(), &by_label, &by_name]);
    let manifest = applied(&[("l.yaml", &text)]);
    let api = workload(&manifest, "api");
    let web = workload(&manifest, "web");
    let back = service(&manifest, "back");
    let direct = service(&manifest, "web-direct");
    assert!(back.selects(api) && !back.selects(web));
    assert!(direct.selects(web) && !direct.selects(api));
    let numbers: Vec<u16> = api.ports.iter().map(|p| p.container_port).collect();
    assert_eq!(numbers, [9000, 9001]);
    assert_eq!(web.ports.len(), 1);
    // Services that select nothing of the apply are accepted as they are.
    let manifest = applied(&[(
        "l.yaml",
        &kube_service("later", "{app: later}", "  ports: [{port: 80}]\n"),
    )]);
    assert_eq!(manifest.workloads, []);
    let later = Service {
        selector: BTreeMap::from([("app".into(), "later".into())]),
        ports: vec![service_port(80, TargetPort::Number(80))],
        ..Service::for_workload("later", "unused")
    };
    assert_eq!(manifest.services, [later]);
}

#[test]
fn validate_service_reports_every_problem_by_field() {
    let base = || {
        let mut service = Service::for_workload("web", "web");
        service.ports = vec![service_port(80, TargetPort::Number(8080))];
        service
    };
    assert_eq!(validate_service(&base()), []);
    let paths = |service: &Service| -> Vec<String> {
        validate_service(service)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    };
    // Several ports without names.
    let mut service = base();
    service
        .ports
        .push(service_port(81, TargetPort::Name("admin".into())));
    assert_eq!(
        paths(&service),
        [
            "spec.ports[0].name: a service with several ports must name each of them",
            "spec.ports[1].name: a service with several ports must name each of them",
        ]
    );
    service.ports[0].name = Some("http".into());
    service.ports[1].name = Some("admin".into());
    assert_eq!(paths(&service), Vec::<String>::new());
    // Node ports: only outside ClusterIP, and within the range.
    for (kind, node_port, expected) in [
        (
            ServiceType::NodePort,
            29999,
            Some("spec.ports[0].nodePort: 29999 is outside the node port range 30000-32767"),
        ),
        (
            ServiceType::LoadBalancer,
            32768,
            Some("spec.ports[0].nodePort: 32768 is outside the node port range 30000-32767"),
        ),
        (
            ServiceType::ClusterIp,
            30080,
            Some(
                "spec.ports[0].nodePort: a ClusterIP service has no node port (type NodePort or LoadBalancer has)",
            ),
        ),
        (ServiceType::NodePort, 30000, None),
        (ServiceType::LoadBalancer, 32767, None),
    ] {
        let mut service = base();
        service.kind = kind;
        service.ports[0].node_port = Some(node_port);
        assert_eq!(
            paths(&service),
            expected.into_iter().collect::<Vec<_>>(),
            "{kind:?} {node_port}"
        );
    }
    assert_eq!(*NODE_PORTS.start(), 30000);
    assert_eq!(*NODE_PORTS.end(), 32767);
    // Headless only with ClusterIP.
    let mut service = base();
    service.cluster_ip = ClusterIp::Headless;
    assert_eq!(paths(&service), Vec::<String>::new());
    service.kind = ServiceType::NodePort;
    assert_eq!(
        paths(&service),
        ["spec.clusterIP: a headless service (clusterIP: None) cannot be of type NodePort"]
    );
    // Everything else at once.
    let mut service = base();
    service.name = "Web".into();
    service.selector.clear();
    service.ports = Vec::new();
    let errors = validate_service(&service);
    let fields: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(fields, ["metadata.name", "spec.selector", "spec.ports"]);
    let mut service = base();
    service.ports = vec![
        ServicePort {
            name: Some("a".into()),
            ..service_port(0, TargetPort::Number(0))
        },
        ServicePort {
            name: Some("a b".into()),
            ..service_port(80, TargetPort::Number(80))
        },
    ];
    assert_eq!(
        paths(&service),
        [
            "spec.ports[0].port: port 0 is out of range 1..=65535",
            "spec.ports[0].targetPort: port 0 is out of range 1..=65535",
            "spec.ports[1].name: port name \"a b\" must be non-empty and without whitespace",
        ]
    );
    // Workload weights.
    let mut service = base();
    service.workload_weights = BTreeMap::from([("v1".into(), 0), ("v2".into(), 0)]);
    assert_eq!(
        paths(&service),
        ["weights: every weight is 0: at least one workload must receive traffic"]
    );
    service.workload_weights = BTreeMap::from([("v1".into(), 1_000_001), ("V2".into(), 1)]);
    let errors = validate_service(&service);
    let fields: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(fields, ["weights.V2", "weights.v1"]);
    service.workload_weights = BTreeMap::from([("v1".into(), 90), ("v2".into(), 0)]);
    assert_eq!(paths(&service), Vec::<String>::new());
}

/// A placeholder must not be reported a second time: a servicePort out of range is one
/// problem, not also `spec.service (spec.ports[0].port): port 0 ...` (see the report of
/// the workload/service split: `drover::service` re-validates the placeholder port 0).
#[test]
fn an_out_of_range_service_port_is_reported_once() {
    for port in ["0", "70000", "-5"] {
        let message = refused(&[(
            "d.yaml",
            &drover(&format!(
                "  ports: [{{containerPort: 80, servicePort: {port}}}]\n"
            )),
        )]);
        assert_eq!(message.lines().count(), 1, "{message}");
    }
}

/// A Service port that does not convert is one problem at its own path: not also "at least
/// one port is required", and the ports after it keep their index (`join::convert` drops
/// the port before `validate::service` numbers the rest).
#[test]
fn a_port_that_does_not_convert_is_reported_once() {
    let one_port = kube_service(
        "web",
        "{app: web}",
        "  ports: [{port: 80, targetPort: 0}]\n",
    );
    assert_eq!(
        refused(&[("s.yaml", &one_port)]),
        "s.yaml, document 1 (Service web): spec.ports[0].targetPort: port 0 is out of range 1..=65535"
    );
    let shifted = kube_service(
        "web",
        "{app: web}",
        "  type: NodePort\n  ports: [{name: a, port: 0}, {name: b, port: 80, nodePort: 5}]\n",
    );
    assert_eq!(
        refused(&[("s.yaml", &shifted)]).lines().collect::<Vec<_>>(),
        [
            "s.yaml, document 1 (Service web): spec.ports[0].port: port 0 is out of range 1..=65535",
            "s.yaml, document 1 (Service web): spec.ports[1].nodePort: 5 is outside the node port range 30000-32767",
        ]
    );
}
