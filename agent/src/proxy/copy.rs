//! The default data path: each direction copies through its own buffer, which starts small
//! and grows to [`super::ProxyConfig::buffer_size`] once a read fills it. A short request and
//! answer never pay for two large buffers (about a tenth of a short connection's cost with
//! 64 KiB zeroed ones); a bulk transfer reaches full-size reads within a few round trips.
//! Buffers are never zeroed: reads go into their spare capacity ([`Buffers`]).
//!
//! Half-close is kept as `tokio::io::copy_bidirectional` keeps it: when one side ends its
//! stream, the other side's write half is shut down and the opposite direction goes on. The
//! direction that ends last skips its `shutdown`: both sockets are closed right after, and
//! closing a socket with nothing left unread sends the same FIN ([`Ends`]).
//!
//! A copy can be paused ([`copy_bidirectional`]'s `pause`): each direction stops where its
//! buffer is empty, waiting for a read, so nothing is held in the proxy and the two sockets
//! can be handed to another process that carries on (an agent restart, `crate::handoff`).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio_util::sync::CancellationToken;

use super::counters::ServiceCounters;

/// First buffer of each direction, and the smallest `buffer_size` an agent accepts.
pub const START: usize = 8 * 1024;

/// Which counter a direction feeds.
#[derive(Debug, Clone, Copy)]
pub(super) enum Direction {
    /// Client to replica: bytes in.
    In,
    /// Replica to client: bytes out.
    Out,
}

/// A connection's two buffers, client → replica and replica → client. Made once per
/// connection, used for the first answer, then handed to the copy. They live on the heap:
/// as arrays they made each connection's task 8 KiB larger, and moving the task into the
/// runtime copied them several times (a profile showed those copies as most of the proxy's
/// own instructions per short connection).
#[derive(Debug)]
pub(crate) struct Buffers {
    pub(super) inbound: Vec<u8>,
    pub(super) outbound: Vec<u8>,
}

impl Buffers {
    pub(crate) fn new() -> Buffers {
        Buffers {
            inbound: Vec::with_capacity(START),
            outbound: Vec::with_capacity(START),
        }
    }
}

/// Which directions of a connection still carry bytes: both for a new connection, one
/// after a half-close, none once it has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Open {
    /// Client to replica.
    pub inbound: bool,
    /// Replica to client.
    pub outbound: bool,
}

impl Open {
    /// A connection whose two directions both carry bytes.
    pub const BOTH: Open = Open {
        inbound: true,
        outbound: true,
    };

    /// Whether either direction is still open.
    pub fn any(self) -> bool {
        self.inbound || self.outbound
    }
}

/// Whether one of a connection's two directions has ended; shared by its two pumps (one
/// task, but the task moves between threads, hence an atomic).
#[derive(Debug, Default)]
pub(super) struct Ends(AtomicBool);

impl Ends {
    /// For a connection with `open` directions: one that ended before (a half-closed
    /// connection taken over) already passed its end on.
    pub(super) fn new(open: Open) -> Ends {
        Ends(AtomicBool::new(!(open.inbound && open.outbound)))
    }

    /// A direction read the end of its stream: pass it on by shutting down `to`'s write
    /// half, unless the other direction already ended. Then both sockets close right after
    /// and the close sends the same FIN, one system call fewer per connection.
    pub(super) async fn direction_ended(&self, to: &mut WriteHalf<'_>) -> io::Result<()> {
        if !self.0.swap(true, Ordering::Relaxed) {
            to.shutdown().await?;
        }
        Ok(())
    }
}

impl Direction {
    pub(super) fn count(self, counters: &ServiceCounters, bytes: usize) {
        match self {
            Direction::In => counters.add_bytes_in(bytes),
            Direction::Out => counters.add_bytes_out(bytes),
        }
    }
}

/// Forward the `open` directions between `client` and `upstream` until both have ended, or
/// until either fails, or until `pause` is cancelled and each has stopped where its buffer
/// is empty; `buffers` grow up to `max_buffer`. Returns the directions still open: none when
/// the connection ended, the ones to carry on with when it was paused. The caller closes both
/// sockets (the last FIN goes with the close) or hands them on.
pub(crate) async fn copy_bidirectional(
    (client, upstream): (&mut TcpStream, &mut TcpStream),
    buffers: Buffers,
    (max_buffer, counters): (usize, &ServiceCounters),
    open: Open,
    pause: &CancellationToken,
) -> io::Result<Open> {
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    let ends = Ends::new(open);
    let (inbound, outbound) = tokio::try_join!(
        pump(
            (client_read, upstream_write),
            (buffers.inbound, max_buffer),
            (counters, Direction::In),
            (open.inbound, &ends, pause)
        ),
        pump(
            (upstream_read, client_write),
            (buffers.outbound, max_buffer),
            (counters, Direction::Out),
            (open.outbound, &ends, pause)
        ),
    )?;
    Ok(Open { inbound, outbound })
}

/// Copies one direction; returns whether it is still open (paused) rather than ended.
async fn pump(
    (mut from, mut to): (ReadHalf<'_>, WriteHalf<'_>),
    (mut buf, max_buffer): (Vec<u8>, usize),
    (counters, direction): (&ServiceCounters, Direction),
    (open, ends, pause): (bool, &Ends, &CancellationToken),
) -> io::Result<bool> {
    if !open {
        return Ok(false);
    }
    loop {
        buf.clear();
        // Into the spare capacity (never zero, so never a 0 that is not an end of stream).
        // Paused only here, with nothing read and not yet written.
        let n = tokio::select! {
            biased;
            () = pause.cancelled() => return Ok(true),
            n = from.read_buf(&mut buf) => n?,
        };
        if n == 0 {
            break;
        }
        to.write_all(&buf).await?;
        direction.count(counters, n);
        if n == buf.capacity() && n < max_buffer {
            // A full read: more is coming than the buffer holds.
            buf.reserve_exact((n * 4).min(max_buffer) - n);
        }
    }
    ends.direction_ended(&mut to).await?;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::super::test_sockets::{exchange, pair};
    use super::*;

    #[tokio::test]
    async fn forwards_both_ways_with_half_close() {
        let (mut client_end, proxy_client) = pair().await;
        let (proxy_upstream, mut server_end) = pair().await;
        let counters = ServiceCounters::default();
        let request: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let answer = vec![9u8; 1_000_000];
        let (mut proxy_client, mut proxy_upstream) = (proxy_client, proxy_upstream);
        let never = CancellationToken::new();
        let proxy = async {
            let open = copy_bidirectional(
                (&mut proxy_client, &mut proxy_upstream),
                Buffers::new(),
                (64 * 1024, &counters),
                Open::BOTH,
                &never,
            )
            .await;
            // The last FIN goes with the close.
            drop((proxy_client, proxy_upstream));
            open
        };
        let ends = exchange(&mut client_end, &mut server_end, &request, &answer);
        let (open, (got_answer, got_request)) = tokio::join!(proxy, ends);
        assert!(!open.expect("proxy").any());
        assert_eq!(got_request, request);
        assert_eq!(got_answer, answer);
        let snapshot = counters.snapshot();
        assert_eq!(
            (snapshot.bytes_in, snapshot.bytes_out),
            (300_000, 1_000_000)
        );
    }

    #[tokio::test]
    async fn a_paused_copy_holds_nothing_and_carries_on_with_the_same_sockets() {
        let (mut client_end, mut proxy_client) = pair().await;
        let (mut proxy_upstream, mut server_end) = pair().await;
        let counters = ServiceCounters::default();
        let pause = CancellationToken::new();
        let copy = copy_bidirectional(
            (&mut proxy_client, &mut proxy_upstream),
            Buffers::new(),
            (64 * 1024, &counters),
            Open::BOTH,
            &pause,
        );
        let ends = async {
            client_end.write_all(b"before").await.expect("write");
            let mut got = [0u8; 6];
            server_end.read_exact(&mut got).await.expect("read");
            assert_eq!(&got, b"before");
            // The client is done sending; the answer direction stays open.
            client_end.shutdown().await.expect("shutdown");
            let mut end = [0u8; 1];
            assert_eq!(server_end.read(&mut end).await.expect("eof"), 0);
            pause.cancel();
        };
        let (open, ()) = tokio::join!(copy, ends);
        let open = open.expect("paused");
        assert_eq!(
            open,
            Open {
                inbound: false,
                outbound: true
            }
        );
        // Sent while paused: waits in the socket, not lost.
        server_end.write_all(b"while paused").await.expect("write");
        let never = CancellationToken::new();
        let carry_on = async {
            let open = copy_bidirectional(
                (&mut proxy_client, &mut proxy_upstream),
                Buffers::new(),
                (64 * 1024, &counters),
                open,
                &never,
            )
            .await;
            drop((proxy_client, proxy_upstream));
            open
        };
        let ends = async {
            server_end.write_all(b" and after").await.expect("write");
            server_end.shutdown().await.expect("shutdown");
            let mut got = Vec::new();
            client_end.read_to_end(&mut got).await.expect("read");
            got
        };
        let (open, got) = tokio::join!(carry_on, ends);
        assert!(!open.expect("ended").any());
        assert_eq!(got, b"while paused and after");
    }
}
