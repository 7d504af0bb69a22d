//! Keeping the service proxy's sockets across an agent restart, so that an established
//! connection through a service address (or a node port) survives `systemctl restart
//! drover-agent` or a package upgrade, and a connection opened meanwhile waits in the
//! listener's backlog instead of being refused.
//!
//! The agent that stops pauses every copy where no byte is held in the proxy
//! ([`crate::proxy::ProxyManager::shutdown`]) and hands its listening sockets and open
//! connections to a **keeper**: a fresh process of its own binary (`/proc/self/exe`, so the
//! old version even after the package replaced the file) started with
//! [`KEEPER_FLAG`], over a seqpacket socket pair on its stdin. The keeper carries the
//! connections on (copying, not accepting) and waits for the next agent on a Unix socket
//! in the data dir ([`SOCKET`]); that agent's [`take`] receives everything, at start,
//! before it talks to anyone, and carries on. A keeper nobody takes from within its wait
//! closes the listeners and carries the connections for at most the drain timeout, then
//! exits. Under systemd the unit's `KillMode=process` lets the keeper outlive the main
//! process, as Docker's own unit does for its containers' shims.
//!
//! Only a process of the same user may take the sockets (the socket is mode 0600 in the
//! agent's own directory, and the keeper checks the peer's credentials).

pub mod keeper;
pub mod wire;

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio_seqpacket::UnixSeqpacket;
use tracing::{info, warn};

use crate::proxy::balancer::Endpoint;
use crate::proxy::forward::HeldConnection;
use crate::proxy::listeners::Handover;
use wire::{ConnectionRecord, HeldEndpoint, ListenerRecord, Message, PROTOCOL};

/// The argument that makes `drover-agent` a keeper.
pub const KEEPER_FLAG: &str = "--keep-connections";

/// Name of the keeper's socket in the agent's data dir.
pub const SOCKET: &str = "handoff.sock";

/// Longest wait, when an agent stops, for connections still connecting or awaiting a first
/// answer to reach a point where they can be paused.
pub const PAUSE_WITHIN: Duration = Duration::from_secs(5);

/// Longest wait for one message once a hand-off has begun.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of a hand-off; each says which step failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: String,
        /// The failure.
        source: io::Error,
    },
    /// The other side speaks another version of the messages.
    #[error("the other side speaks hand-off protocol {theirs}, this agent {PROTOCOL}")]
    Protocol {
        /// Its version.
        theirs: u32,
    },
    /// A message out of order.
    #[error("unexpected {got} while waiting for {expected}")]
    Unexpected {
        /// What came.
        got: String,
        /// What should have.
        expected: &'static str,
    },
}

/// The step `what` failed with an I/O error.
fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> HandoffError {
    let what = what.into();
    move |source| HandoffError::Io { what, source }
}

/// A handover as it travels: the records and their descriptors.
#[derive(Debug, Default)]
pub struct Parcel {
    /// Listening sockets.
    pub listeners: Vec<(ListenerRecord, OwnedFd)>,
    /// Open connections: the client's socket, then the replica's.
    pub connections: Vec<(ConnectionRecord, OwnedFd, OwnedFd)>,
}

impl Parcel {
    /// Sends every listener and connection, then `End`.
    async fn send(&self, socket: &UnixSeqpacket) -> Result<(), HandoffError> {
        for (record, fd) in &self.listeners {
            let message = Message::Listener(record.clone());
            wire::send(socket, &message, &wire::borrowed(std::slice::from_ref(fd)))
                .await
                .map_err(io_error(format!(
                    "sending the listener on {}",
                    record.address
                )))?;
        }
        for (record, client, upstream) in &self.connections {
            let message = Message::Connection(record.clone());
            wire::send(socket, &message, &wire::borrowed(&[client, upstream]))
                .await
                .map_err(io_error(format!(
                    "sending a connection of {}:{}",
                    record.service, record.port
                )))?;
        }
        wire::send(socket, &Message::End, &[])
            .await
            .map_err(io_error("sending the end of the hand-off"))
    }

    /// Receives listeners and connections until `End`.
    async fn receive(socket: &UnixSeqpacket) -> Result<Parcel, HandoffError> {
        let mut parcel = Parcel::default();
        loop {
            let (message, fds) = wire::recv(socket, STEP_TIMEOUT)
                .await
                .map_err(io_error("receiving the hand-off"))?;
            let mut fds = fds.into_iter();
            match (message, fds.next(), fds.next(), fds.next()) {
                (Message::Listener(record), Some(fd), None, None) => {
                    parcel.listeners.push((record, fd));
                }
                (Message::Connection(record), Some(client), Some(upstream), None) => {
                    parcel.connections.push((record, client, upstream));
                }
                (Message::End, None, ..) => return Ok(parcel),
                (message, ..) => {
                    return Err(HandoffError::Unexpected {
                        got: format!("{message:?} with its descriptors"),
                        expected: "a listener, a connection or the end",
                    });
                }
            }
        }
    }

    /// The proxy's handover as descriptors.
    fn pack(handover: Handover) -> Result<Parcel, HandoffError> {
        let mut parcel = Parcel::default();
        for ((service, port), address, listener) in handover.listeners {
            parcel.listeners.push((
                ListenerRecord {
                    service,
                    port,
                    address,
                },
                OwnedFd::from(listener),
            ));
        }
        for ((service, port), held) in handover.connections {
            let client = held
                .client
                .into_std()
                .map_err(io_error("detaching a client socket"))?;
            let upstream = held
                .upstream
                .into_std()
                .map_err(io_error("detaching a replica socket"))?;
            let endpoint = held.endpoint;
            let record = ConnectionRecord {
                service,
                port,
                endpoint: HeldEndpoint {
                    id: endpoint.id,
                    address: endpoint.address,
                    pool: endpoint.pool,
                    weight: endpoint.weight,
                    workload: endpoint.workload.to_string(),
                    revision: endpoint.revision,
                },
                open: held.open,
            };
            parcel
                .connections
                .push((record, OwnedFd::from(client), OwnedFd::from(upstream)));
        }
        Ok(parcel)
    }

    /// The descriptors as the proxy's sockets (inside a Tokio runtime).
    fn unpack(self) -> Result<Handover, HandoffError> {
        let mut handover = Handover::default();
        for (record, fd) in self.listeners {
            let listener = std::net::TcpListener::from(fd);
            handover
                .listeners
                .push(((record.service, record.port), record.address, listener));
        }
        for (record, client, upstream) in self.connections {
            let endpoint = record.endpoint;
            let held = HeldConnection {
                client: tcp_stream(client).map_err(io_error("adopting a client socket"))?,
                upstream: tcp_stream(upstream).map_err(io_error("adopting a replica socket"))?,
                endpoint: Endpoint {
                    id: endpoint.id,
                    address: endpoint.address,
                    pool: endpoint.pool,
                    weight: endpoint.weight,
                    workload: endpoint.workload.into(),
                    revision: endpoint.revision,
                },
                open: record.open,
            };
            handover
                .connections
                .push(((record.service, record.port), held));
        }
        Ok(handover)
    }
}

/// A TCP socket received as a descriptor, for Tokio.
pub(crate) fn tcp_stream(fd: OwnedFd) -> io::Result<tokio::net::TcpStream> {
    let stream = std::net::TcpStream::from(fd);
    stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(stream)
}

/// Sends our `Hello` and checks the peer's.
async fn greet(socket: &UnixSeqpacket) -> Result<(), HandoffError> {
    wire::send(socket, &Message::Hello { protocol: PROTOCOL }, &[])
        .await
        .map_err(io_error("greeting"))?;
    expect_hello(socket).await
}

async fn expect_hello(socket: &UnixSeqpacket) -> Result<(), HandoffError> {
    match wire::recv(socket, STEP_TIMEOUT)
        .await
        .map_err(io_error("waiting for the other side's greeting"))?
    {
        (Message::Hello { protocol }, _) if protocol == PROTOCOL => Ok(()),
        (Message::Hello { protocol }, _) => Err(HandoffError::Protocol { theirs: protocol }),
        (message, _) => Err(HandoffError::Unexpected {
            got: format!("{message:?}"),
            expected: "a greeting",
        }),
    }
}

async fn expect_held(socket: &UnixSeqpacket) -> Result<(), HandoffError> {
    match wire::recv(socket, STEP_TIMEOUT)
        .await
        .map_err(io_error("waiting for the receipt"))?
    {
        (Message::Held, _) => Ok(()),
        (message, _) => Err(HandoffError::Unexpected {
            got: format!("{message:?}"),
            expected: "the receipt",
        }),
    }
}

/// Where a stopping agent's proxy goes: a keeper process and its timings.
#[derive(Debug, Clone)]
pub struct Keeper {
    /// The program started as keeper, with [`KEEPER_FLAG`].
    pub program: PathBuf,
    /// The socket the keeper waits on for the next agent.
    pub socket: PathBuf,
    /// Longest wait for connections still connecting or awaiting a first answer to reach a
    /// point where they can be paused.
    pub pause_within: Duration,
    /// How long the keeper waits for the next agent before closing the listeners.
    pub wait: Duration,
    /// How long it carries open connections when no agent came.
    pub drain: Duration,
}

impl Keeper {
    /// Start the keeper and hand it `handover`; returns once it holds everything. On an
    /// error the keeper is stopped and the handover's sockets are closed.
    pub async fn hold(&self, handover: Handover) -> Result<(), HandoffError> {
        let parcel = Parcel::pack(handover)?;
        let (ours, theirs) =
            UnixSeqpacket::pair().map_err(io_error("making the keeper's socket pair"))?;
        let mut keeper = tokio::process::Command::new(&self.program)
            .arg(KEEPER_FLAG)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            // Its own group: a terminal's Ctrl-C for the next agent is not for it.
            .process_group(0)
            .spawn()
            .map_err(io_error(format!(
                "starting the keeper {}",
                self.program.display()
            )))?;
        let handed = self.hand(&ours, parcel).await;
        if handed.is_err() {
            if let Err(e) = keeper.start_kill() {
                warn!(error = %e, "cannot stop the keeper after a failed hand-off");
            }
        }
        handed
    }
}

impl Keeper {
    /// Hands `parcel` to the keeper on `keeper`.
    async fn hand(&self, keeper: &UnixSeqpacket, parcel: Parcel) -> Result<(), HandoffError> {
        greet(keeper).await?;
        let hold = Message::Hold {
            socket: self.socket.clone(),
            wait: self.wait,
            drain: self.drain,
        };
        wire::send(keeper, &hold, &[])
            .await
            .map_err(io_error("telling the keeper where to wait"))?;
        parcel.send(keeper).await?;
        expect_held(keeper).await
    }
}

/// Take over what the agent before this one handed to its keeper on `socket`, if a keeper
/// waits there; `None` when none does (a first start, a crash, a keeper gone).
pub async fn take(socket: &Path) -> Result<Option<Handover>, HandoffError> {
    let keeper = match UnixSeqpacket::connect(socket).await {
        Ok(keeper) => keeper,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            // Left by a keeper that is gone.
            if let Err(e) = std::fs::remove_file(socket) {
                warn!(socket = %socket.display(), error = %e, "cannot remove a stale hand-off socket");
            }
            return Ok(None);
        }
        Err(e) => {
            return Err(io_error(format!(
                "connecting to the keeper at {}",
                socket.display()
            ))(e));
        }
    };
    greet(&keeper).await?;
    let parcel = Parcel::receive(&keeper).await?;
    wire::send(&keeper, &Message::Held, &[])
        .await
        .map_err(io_error("acknowledging the hand-off"))?;
    info!(
        listeners = parcel.listeners.len(),
        connections = parcel.connections.len(),
        "took over the previous agent's proxy sockets"
    );
    parcel.unpack().map(Some)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use drover_proto::model::Strategy;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::proxy::copy::Open;
    use crate::proxy::{ProxyConfig, ServiceProxy};

    /// A connected pair over loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (a, b) = tokio::join!(TcpStream::connect(address), listener.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    async fn round_trip(from: &mut TcpStream, to: &mut TcpStream, bytes: &[u8]) {
        from.write_all(bytes).await.expect("write");
        let mut got = vec![0u8; bytes.len()];
        to.read_exact(&mut got).await.expect("read");
        assert_eq!(got, bytes);
    }

    #[tokio::test]
    async fn a_connection_and_a_listener_go_through_a_keeper_to_the_next_proxy() {
        let dir = tempfile::tempdir().expect("tempdir");
        // client <-> (proxy) <-> server, as an agent's proxy holds a connection.
        let (mut client, proxy_client) = pair().await;
        let (proxy_upstream, mut server) = pair().await;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let listening = listener.local_addr().expect("address");
        let endpoint = Endpoint::new("a1", server.local_addr().expect("address"), "web", 3);
        let handover = Handover {
            listeners: vec![(("web".into(), 80), listening, listener)],
            connections: vec![(
                ("web".into(), 80),
                HeldConnection {
                    client: proxy_client,
                    upstream: proxy_upstream,
                    endpoint,
                    open: Open::BOTH,
                },
            )],
        };
        let keeper = Keeper {
            program: PathBuf::from("unused"),
            socket: dir.path().join(SOCKET),
            pause_within: PAUSE_WITHIN,
            wait: Duration::from_secs(20),
            drain: Duration::from_secs(20),
        };
        let (ours, theirs) = UnixSeqpacket::pair().expect("pair");
        let kept = tokio::spawn(keeper::keep(OwnedFd::from(theirs)));
        keeper
            .hand(&ours, Parcel::pack(handover).expect("pack"))
            .await
            .expect("the keeper holds it");
        drop(ours);

        // The keeper carries the connection, and a new one waits in the backlog.
        round_trip(&mut client, &mut server, b"while kept").await;
        round_trip(&mut server, &mut client, b"answer while kept").await;
        let mut queued = TcpStream::connect(listening).await.expect("queued connect");

        let taken = take(&keeper.socket)
            .await
            .expect("take")
            .expect("a keeper was there");
        kept.await.expect("keeper task").expect("keeper");
        assert!(!keeper.socket.exists(), "the keeper removed its socket");
        assert_eq!(taken.listeners.len(), 1);
        assert_eq!(taken.connections.len(), 1);
        let ((_, _), address, listener) = taken.listeners.into_iter().next().expect("listener");
        assert_eq!(address, listening);
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = TcpListener::from_std(listener).expect("listener");
        let (mut accepted, _) = listener.accept().await.expect("the queued connection");
        round_trip(&mut queued, &mut accepted, b"queued").await;

        // The next proxy carries on with the same connection.
        let proxy = Arc::new(ServiceProxy::new(
            "web",
            Strategy::default(),
            ProxyConfig::default(),
            1,
        ));
        let ((_, _), held) = taken.connections.into_iter().next().expect("connection");
        assert_eq!(held.endpoint.id, "a1");
        proxy.adopt(held);
        round_trip(&mut client, &mut server, b"after the restart").await;
        round_trip(&mut server, &mut client, b"answer after the restart").await;
        assert_eq!(proxy.open_connections(), 1);
        drop(client);
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.expect("end");
        assert!(rest.is_empty());
        drop(server);
        tokio::time::timeout(Duration::from_secs(5), proxy.closed())
            .await
            .expect("the adopted connection ended with its client");
    }

    #[tokio::test]
    async fn without_a_keeper_there_is_nothing_to_take() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join(SOCKET);
        assert!(take(&socket).await.expect("no socket").is_none());
        // A socket left by a keeper that is gone is removed.
        drop(tokio_seqpacket::UnixSeqpacketListener::bind(&socket).expect("bind"));
        assert!(take(&socket).await.expect("stale socket").is_none());
        assert!(!socket.exists());
    }
}
