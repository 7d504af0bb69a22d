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
//! hop as it would on a NIC. On loopback the direct path skips the proxy's second TCP
//! connection and nothing else, which favours it more than a real network does.
//!
//! The namespaces are new and empty (no firewall rules of the host apply in them) and are
//! deleted when the benchmark ends; setting them up needs root and iproute2's `ip`.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, setns};

/// Prefix of the namespaces' names; the benchmark's pid follows, so a crashed run's
/// namespaces can be told from a running one's and removed.
const PREFIX: &str = "drover-bench-";

/// The parties' addresses, and their namespaces when they have their own.
#[derive(Debug)]
pub struct Network {
    /// Address the proxies under test listen on.
    pub proxy_ip: IpAddr,
    /// Address the backends listen on.
    pub backend_ip: IpAddr,
    namespaces: Option<Namespaces>,
}

/// The three namespaces of a veth run, deleted on drop.
#[derive(Debug)]
struct Namespaces {
    clients: String,
    proxies: String,
    backends: String,
}

impl Network {
    /// Everything on 127.0.0.1 in the benchmark's own namespace.
    pub fn loopback() -> Network {
        Network {
            proxy_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            backend_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            namespaces: None,
        }
    }

    /// Three namespaces joined by veth pairs; the error says which step failed.
    pub fn veth() -> Result<Network, String> {
        remove_stale();
        let pid = std::process::id();
        let namespaces = Namespaces {
            clients: format!("{PREFIX}{pid}-clients"),
            proxies: format!("{PREFIX}{pid}-proxies"),
            backends: format!("{PREFIX}{pid}-backends"),
        };
        let (c, p, b) = (
            namespaces.clients.as_str(),
            namespaces.proxies.as_str(),
            namespaces.backends.as_str(),
        );
        for ns in [c, p, b] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // Created right in their namespaces, so the short names never meet the host's.
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
        run(Command::new("ip").args([
            "netns",
            "exec",
            p,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]))?;
        Ok(Network {
            proxy_ip: IpAddr::V4(Ipv4Addr::new(10, 213, 1, 1)),
            backend_ip: IpAddr::V4(Ipv4Addr::new(10, 213, 2, 2)),
            namespaces: Some(namespaces),
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

    /// Move the calling thread into the backends' namespace: sockets it makes from now on
    /// (the backends' listeners) live there.
    pub fn enter_backends(&self) -> Result<(), String> {
        self.enter(|ns| &ns.backends)
    }

    /// Move the calling thread into the clients' namespace, where the load connects from.
    pub fn enter_clients(&self) -> Result<(), String> {
        self.enter(|ns| &ns.clients)
    }

    fn enter(&self, which: impl Fn(&Namespaces) -> &String) -> Result<(), String> {
        let Some(namespaces) = &self.namespaces else {
            return Ok(());
        };
        let name = which(namespaces);
        let path = format!("/run/netns/{name}");
        let file = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| format!("enter namespace {name}: {e}"))
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
        for ns in [&self.clients, &self.proxies, &self.backends] {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("could not remove network namespace {ns}: {e}");
            }
        }
    }
}

/// Remove the namespaces of earlier runs whose process is gone (a run that was killed).
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run(Command::new("ip").args(args))
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{shown}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{shown}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
