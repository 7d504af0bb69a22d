//! The hand-off's messages: one JSON document per seqpacket datagram, with the sockets it
//! names attached as `SCM_RIGHTS` (a datagram keeps its descriptors with it, which a stream
//! socket would not).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_seqpacket::UnixSeqpacket;
use tokio_seqpacket::ancillary::{AncillaryMessageWriter, OwnedAncillaryMessage};

use crate::proxy::copy::Open;

/// Version of these messages; both sides must speak the same one.
pub const PROTOCOL: u32 = 1;

/// Largest message: a connection's record is a few hundred bytes.
const MAX_MESSAGE: usize = 16 * 1024;

/// One message of the hand-off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// First message each way: the protocol spoken.
    Hello {
        /// [`PROTOCOL`] of the sender.
        protocol: u32,
    },
    /// From the agent to its keeper: where to wait for the next agent, and how long.
    Hold {
        /// The Unix socket the next agent connects to.
        socket: PathBuf,
        /// How long to wait for the next agent before closing the listeners.
        #[serde(with = "humantime_serde")]
        wait: Duration,
        /// How long open connections are carried with no next agent.
        #[serde(with = "humantime_serde")]
        drain: Duration,
    },
    /// A listening socket (one attached) of a route.
    Listener(ListenerRecord),
    /// An open connection of a route (two attached: the client's, then the replica's).
    Connection(ConnectionRecord),
    /// Nothing more follows.
    End,
    /// The receiver holds everything sent (the sender may close its copies).
    Held,
}

/// A listening socket's route and address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerRecord {
    /// Service name.
    pub service: String,
    /// Service port.
    pub port: u16,
    /// Address it listens on.
    pub address: SocketAddr,
}

/// An open connection's route, replica and state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionRecord {
    /// Service name.
    pub service: String,
    /// Service port.
    pub port: u16,
    /// The replica it goes to.
    pub endpoint: HeldEndpoint,
    /// Directions still carrying bytes.
    pub open: Open,
}

/// The replica of a connection handed over, as the balancer knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldEndpoint {
    /// Allocation id.
    pub id: String,
    /// Where the replica listens.
    pub address: SocketAddr,
    /// Traffic pool.
    pub pool: u64,
    /// Weight within the pool.
    pub weight: u32,
    /// Workload of the replica.
    pub workload: String,
    /// Revision of the workload.
    pub revision: u64,
}

/// Sends `message` with `fds` attached.
pub async fn send(
    socket: &UnixSeqpacket,
    message: &Message,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    let mut control = [0u8; 64];
    let mut ancillary = AncillaryMessageWriter::new(&mut control);
    if !fds.is_empty() {
        ancillary
            .add_fds(fds)
            .map_err(|_| io::Error::other("too many descriptors for one message"))?;
    }
    let sent = socket
        .send_vectored_with_ancillary(&[IoSlice::new(&body)], &mut ancillary)
        .await?;
    if sent != body.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", body.len()),
        ));
    }
    Ok(())
}

/// Receives one message and the descriptors attached to it, within `timeout`. The peer
/// closing the socket is `UnexpectedEof`.
pub async fn recv(
    socket: &UnixSeqpacket,
    timeout: Duration,
) -> io::Result<(Message, Vec<OwnedFd>)> {
    let mut body = vec![0u8; MAX_MESSAGE];
    let mut control = [0u8; 64];
    let received = tokio::time::timeout(
        timeout,
        socket.recv_vectored_with_ancillary(&mut [IoSliceMut::new(&mut body)], &mut control),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no message in time"))?;
    let (n, ancillary) = received?;
    let truncated = ancillary.is_truncated();
    let mut fds = Vec::new();
    for message in ancillary.into_messages() {
        if let OwnedAncillaryMessage::FileDescriptors(received) = message {
            fds.extend(received);
        }
    }
    if truncated {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "descriptors truncated",
        ));
    }
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let message = serde_json::from_slice(&body[..n])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((message, fds))
}

/// Borrows each of `fds`, for [`send`].
pub fn borrowed<T: AsFd>(fds: &[T]) -> Vec<std::os::fd::BorrowedFd<'_>> {
    fds.iter().map(AsFd::as_fd).collect()
}
