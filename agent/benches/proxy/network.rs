//! Where the benchmark's three parties live. On loopback (the default) the clients, the
//! proxies and the backends all use 127.0.0.1. With `veth`, each party gets a network
//! namespace of its own, joined by veth pairs the way hosts are joined by a network:
//!
//! ```text
//! clients 10.213.1.2 ──veth── 10.213.1.1 proxies 10.213.2.1 ──veth── 10.213.2.2 backends
//! ```
//!
//! A direct connection is routed through the proxies' namespace (plain IP forwarding there),
//! so direct and proxied bytes cross the same two veth hops, and every packet pays a device
//! hop as it would on a NIC. Loopback makes the direct path as cheap as it gets, so the
//! proxy's own cost (a second TCP connection, a second core) weighs more there.
//!
//! The namespaces are new and empty (no firewall rules of the host apply in them) and are
//! deleted when the benchmark ends; setting them up needs root and iproute2's `ip`.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};

use nix::sched::{CloneFlags, setns};

/// Prefix of the namespaces' names; the benchmark's pid follows, so a crashed run's
/// namespaces can be told from a running one's and removed.
const PREFIX: &str = "drover-bench-";
/// First of the ports handed out in the proxies' namespace, which is new and so has them all.
const FIRST_PROXY_PORT: u16 = 20000;

/// The parties' addresses, and their namespaces when they have their own.
#[derive(Debug)]
pub struct Network {
    /// Address the proxies under test listen on.
    pub proxy_ip: IpAddr,
    /// Address the backends listen on.
    pub backend_ip: IpAddr,
    namespaces: Option<Namespaces>,
    /// Next port to hand out in the proxies' namespace.
    next_port: AtomicU16,
}

/// The namespaces of a veth run; those made so far are deleted on drop.
#[derive(Debug)]
struct Namespaces {
    clients: String,
    proxies: String,
    backends: String,
    made: Vec<String>,
}

impl Network {
    /// Everything on 127.0.0.1 in the benchmark's own namespace.
    pub fn loopback() -> Network {
        Network {
            proxy_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            backend_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            namespaces: None,
            next_port: AtomicU16::new(FIRST_PROXY_PORT),
        }
    }

    /// Three namespaces joined by veth pairs; the error says which step failed.
    pub fn veth() -> Result<Network, String> {
        remove_stale();
        let pid = std::process::id();
        let mut namespaces = Namespaces {
            clients: format!("{PREFIX}{pid}-clients"),
            proxies: format!("{PREFIX}{pid}-proxies"),
            backends: format!("{PREFIX}{pid}-backends"),
            made: Vec::new(),
        };
        for ns in [
            namespaces.clients.clone(),
            namespaces.proxies.clone(),
            namespaces.backends.clone(),
        ] {
            ip(&["netns", "add", &ns])?;
            namespaces.made.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let (c, p, b) = (
            namespaces.clients.as_str(),
            namespaces.proxies.as_str(),
            namespaces.backends.as_str(),
        );
        // Made right in their namespaces, so the short names never meet the host's.
        ip(&[
            "link", "add", "c0", "netns", c, "type", "veth", "peer", "name", "p0", "netns", p,
        ])?;
        ip(&[
            "link", "add", "b0", "netns", b, "type", "veth", "peer", "name", "p1", "netns", p,
        ])?;
        for (ns, dev, addr) in [
            (c, "c0", "10.213.1.2/24"),
            (p, "p0", "10.213.1.1/24"),
            (p, "p1", "10.213.2.1/24"),
            (b, "b0", "10.213.2.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        ip(&["-n", c, "route", "add", "default", "via", "10.213.1.1"])?;
        ip(&["-n", b, "route", "add", "default", "via", "10.213.2.1"])?;
        enable_forwarding(p)?;
        Ok(Network {
            proxy_ip: IpAddr::V4(Ipv4Addr::new(10, 213, 1, 1)),
            backend_ip: IpAddr::V4(Ipv4Addr::new(10, 213, 2, 2)),
            namespaces: Some(namespaces),
            next_port: AtomicU16::new(FIRST_PROXY_PORT),
        })
    }

    /// One line for the report.
    pub fn describe(&self) -> &'static str {
        match self.namespaces {
            None => "loopback (127.0.0.1)",
            Some(_) => {
                "veth: clients, proxies and backends in three network namespaces, joined by \
                 veth pairs; direct connections are routed through the proxies' namespace"
            }
        }
    }

    /// A port no proxy listens on yet, at the proxies' address. On loopback the kernel
    /// picks it; the proxies' own namespace is new, so there the ports are handed out in turn
    /// (a probe from the benchmark's thread would look in another namespace).
    pub fn free_proxy_port(&self) -> io::Result<SocketAddr> {
        let port = match self.namespaces {
            None => std::net::TcpListener::bind((self.proxy_ip, 0))?
                .local_addr()?
                .port(),
            Some(_) => self.next_port.fetch_add(1, Ordering::Relaxed),
        };
        Ok(SocketAddr::new(self.proxy_ip, port))
    }

    /// Move the calling thread into the backends' namespace: sockets it makes from now on
    /// (the backends' listeners) live there.
    pub fn enter_backends(&self) -> Result<(), String> {
        match &self.namespaces {
            Some(namespaces) => enter(&namespaces.backends),
            None => Ok(()),
        }
    }

    /// Move the calling thread into the clients' namespace, where the load connects from.
    pub fn enter_clients(&self) -> Result<(), String> {
        match &self.namespaces {
            Some(namespaces) => enter(&namespaces.clients),
            None => Ok(()),
        }
    }

    /// `program` made to run in the proxies' namespace (through `ip netns exec`, which execs
    /// it: the pid stays the proxy's), with `prefix` (such as `taskset -c 1`) before it.
    pub fn proxy_command(&self, prefix: &[String], program: &str) -> Command {
        let mut words: Vec<String> = Vec::new();
        if let Some(namespaces) = &self.namespaces {
            words.extend(["ip", "netns", "exec", &namespaces.proxies].map(str::to_owned));
        }
        words.extend(prefix.iter().cloned());
        words.push(program.to_owned());
        let mut command = Command::new(&words[0]);
        command.args(&words[1..]);
        command
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.made {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("could not remove network namespace {ns}: {e}");
            }
        }
    }
}

/// Move the calling thread into network namespace `name`.
fn enter(name: &str) -> Result<(), String> {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| format!("enter namespace {name}: {e}"))
}

/// Turn on IPv4 forwarding in namespace `name` (it routes the direct connections): from
/// inside it, since /proc/sys/net shows the namespace of the thread that opens it, then back.
fn enable_forwarding(name: &str) -> Result<(), String> {
    let own = File::open("/proc/thread-self/ns/net")
        .map_err(|e| format!("open /proc/thread-self/ns/net: {e}"))?;
    enter(name)?;
    let written = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| format!("turn on ip_forward in {name}: {e}"));
    setns(&own, CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("back to the benchmark's namespace: {e}"))?;
    written
}

/// Remove the namespaces of earlier runs whose process is gone (a run that was killed), or
/// that carry this process's pid (left by a run that had it before).
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    let own = std::process::id().to_string();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid == own || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let mut command = Command::new("ip");
    command.args(args).stdin(Stdio::null());
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
