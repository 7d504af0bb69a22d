//! The keeper process (`drover-agent --keep-connections`): holds a stopped agent's proxy
//! sockets until the next agent takes them (see the module above).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::task::JoinSet;
use tokio_seqpacket::{UnixSeqpacket, UnixSeqpacketListener};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::wire::{self, ConnectionRecord, Message};
use super::{HandoffError, Parcel, STEP_TIMEOUT, expect_held, greet, io_error, tcp_stream};
use crate::proxy::ServiceCounters;
use crate::proxy::copy::{Buffers, copy_bidirectional};

/// Largest copy buffer per direction in the keeper: it only bridges a short gap.
const BUFFER: usize = 64 * 1024;

/// Runs the keeper on the socket pair its agent left on stdin, until the next agent took
/// everything or nobody came and the connections ended.
pub async fn run() -> Result<(), HandoffError> {
    let giver = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(io_error("taking the agent's socket from stdin"))?;
    keep(giver).await
}

/// A connection being carried: ends with nothing (it ended) or with its sockets (paused).
type Carried = Option<(ConnectionRecord, OwnedFd, OwnedFd)>;

/// Keeps what the agent on `giver` hands over (see [`run`]).
pub(super) async fn keep(giver: OwnedFd) -> Result<(), HandoffError> {
    let giver = UnixSeqpacket::try_from(giver).map_err(io_error("using the agent's socket"))?;
    greet(&giver).await?;
    let (socket, wait, drain) = match wire::recv(&giver, STEP_TIMEOUT)
        .await
        .map_err(io_error("waiting for the agent's instructions"))?
    {
        (
            Message::Hold {
                socket,
                wait,
                drain,
            },
            _,
        ) => (socket, wait, drain),
        (message, _) => {
            return Err(HandoffError::Unexpected {
                got: format!("{message:?}"),
                expected: "where to wait",
            });
        }
    };
    let parcel = Parcel::receive(&giver).await?;
    // Bound before the receipt, so the next agent finds it however fast it starts.
    let mut next = bind(&socket)?;
    wire::send(&giver, &Message::Held, &[])
        .await
        .map_err(io_error("acknowledging the hand-off"))?;
    drop(giver);

    let Parcel {
        listeners,
        connections,
    } = parcel;
    info!(listeners = listeners.len(), connections = connections.len(), socket = %socket.display(),
        wait = ?wait, "keeping the proxy's sockets for the next agent");
    let pause = CancellationToken::new();
    let mut carried = JoinSet::new();
    for (record, client, upstream) in connections {
        carried.spawn(carry(record, client, upstream, pause.clone()));
    }

    let taken = tokio::time::timeout(wait, accept_agent(&mut next)).await;
    if let Err(e) = std::fs::remove_file(&socket) {
        warn!(socket = %socket.display(), error = %e, "cannot remove the hand-off socket");
    }
    match taken {
        Ok(Ok(agent)) => match greet(&agent).await {
            Ok(()) => {
                pause.cancel();
                let mut parcel = Parcel {
                    listeners,
                    connections: Vec::new(),
                };
                while let Some(joined) = carried.join_next().await {
                    if let Ok(Some(connection)) = joined {
                        parcel.connections.push(connection);
                    }
                }
                parcel.send(&agent).await?;
                expect_held(&agent).await?;
                info!(
                    listeners = parcel.listeners.len(),
                    connections = parcel.connections.len(),
                    "the next agent took the proxy's sockets"
                );
                return Ok(());
            }
            Err(e) => warn!(error = %e, "the next agent cannot take the proxy's sockets"),
        },
        Ok(Err(e)) => warn!(error = %e, "waiting for the next agent failed"),
        Err(_) => info!(wait = ?wait, "no agent came; closing the listeners"),
    }
    // Nobody takes them: new connections are refused from now on (the next agent binds
    // anew), open ones are carried until they end, at most `drain`.
    drop(listeners);
    drop(next);
    let left = carried.len();
    if tokio::time::timeout(drain, async {
        while carried.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        warn!(
            left = carried.len(),
            of = left,
            "closing the connections still open after the drain timeout"
        );
    }
    Ok(())
}

/// The socket the next agent connects to, only for this user.
fn bind(socket: &Path) -> Result<UnixSeqpacketListener, HandoffError> {
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(format!("removing {}", socket.display()))(e)),
    }
    let listener = UnixSeqpacketListener::bind(socket)
        .map_err(io_error(format!("listening on {}", socket.display())))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io_error(format!("restricting {}", socket.display())))?;
    Ok(listener)
}

/// The next agent: the first connection from a process of this user.
async fn accept_agent(listener: &mut UnixSeqpacketListener) -> Result<UnixSeqpacket, HandoffError> {
    let me = nix::unistd::geteuid().as_raw();
    let mut refused = 0u32;
    loop {
        let agent = listener
            .accept()
            .await
            .map_err(io_error("accepting the next agent"))?;
        match agent.peer_cred() {
            Ok(cred) if cred.uid() == me => return Ok(agent),
            Ok(cred) => {
                refused += 1;
                if refused == 1 {
                    warn!(
                        uid = cred.uid(),
                        "refused a hand-off to another user's process"
                    );
                }
            }
            Err(e) => warn!(error = %e, "cannot read a hand-off peer's credentials"),
        }
    }
}

/// Copies one connection until it ends or `pause`; then returns its sockets.
async fn carry(
    mut record: ConnectionRecord,
    client: OwnedFd,
    upstream: OwnedFd,
    pause: CancellationToken,
) -> Carried {
    let (mut client, mut upstream) = match (tcp_stream(client), tcp_stream(upstream)) {
        (Ok(client), Ok(upstream)) => (client, upstream),
        (Err(e), _) | (_, Err(e)) => {
            warn!(service = %record.service, error = %e, "cannot carry a connection");
            return None;
        }
    };
    let counters = ServiceCounters::default();
    let open = match copy_bidirectional(
        (&mut client, &mut upstream),
        Buffers::new(),
        (BUFFER, &counters),
        record.open,
        &pause,
    )
    .await
    {
        Ok(open) if open.any() => open,
        Ok(_) | Err(_) => return None,
    };
    record.open = open;
    match (client.into_std(), upstream.into_std()) {
        (Ok(client), Ok(upstream)) => Some((record, client.into(), upstream.into())),
        (Err(e), _) | (_, Err(e)) => {
            warn!(service = %record.service, error = %e, "cannot hand a connection on");
            None
        }
    }
}
