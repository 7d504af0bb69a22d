//! Test helpers shared by the health check tests.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::runtime::{ContainerRuntime, ContainerSpec, FakeRuntime};

/// Creates and starts a container on `runtime`; returns its id.
pub(crate) async fn running_container(runtime: &FakeRuntime) -> String {
    let spec = ContainerSpec {
        name: "web.1".to_owned(),
        image: "web:1".to_owned(),
        command: Vec::new(),
        args: Vec::new(),
        env: BTreeMap::new(),
        labels: BTreeMap::new(),
        cpu_millis: 0,
        memory_bytes: 0,
        ports: Vec::new(),
        dns: None,
    };
    let id = runtime.create(&spec).await.expect("create container");
    runtime.start(&id).await.expect("start container");
    id
}

/// The `exec` calls `runtime` has seen, as "exec <id> <command…>".
pub(crate) fn exec_calls(runtime: &FakeRuntime) -> Vec<String> {
    runtime
        .calls()
        .into_iter()
        .filter(|call| call.starts_with("exec "))
        .collect()
}

/// Loopback, where the tests' servers listen.
pub(crate) const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
