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

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

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
pub(super) struct Buffers {
    pub(super) inbound: Vec<u8>,
    pub(super) outbound: Vec<u8>,
}

impl Buffers {
    pub(super) fn new() -> Buffers {
        Buffers {
            inbound: Vec::with_capacity(START),
            outbound: Vec::with_capacity(START),
        }
    }
}

/// Whether one of a connection's two directions has ended; shared by its two pumps (one
/// task, but the task moves between threads, hence an atomic).
#[derive(Debug, Default)]
pub(super) struct Ends(AtomicBool);

impl Ends {
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

/// Forward both directions between `client` and `upstream` until both have ended, or until
/// either fails, then close both; `buffers` grow up to `max_buffer`. Returns the bytes
/// moved (client → upstream, upstream → client).
pub(super) async fn copy_bidirectional(
    mut client: TcpStream,
    mut upstream: TcpStream,
    buffers: Buffers,
    max_buffer: usize,
    counters: &ServiceCounters,
) -> io::Result<(u64, u64)> {
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    let ends = Ends::default();
    tokio::try_join!(
        pump(
            (client_read, upstream_write),
            (buffers.inbound, max_buffer),
            (counters, Direction::In),
            &ends
        ),
        pump(
            (upstream_read, client_write),
            (buffers.outbound, max_buffer),
            (counters, Direction::Out),
            &ends
        ),
    )
    // Both sockets close here; the last FIN goes with the close.
}

async fn pump(
    (mut from, mut to): (ReadHalf<'_>, WriteHalf<'_>),
    (mut buf, max_buffer): (Vec<u8>, usize),
    (counters, direction): (&ServiceCounters, Direction),
    ends: &Ends,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        buf.clear();
        // Into the spare capacity (never zero, so never a 0 that is not an end of stream).
        let n = from.read_buf(&mut buf).await?;
        if n == 0 {
            break;
        }
        to.write_all(&buf).await?;
        direction.count(counters, n);
        total += n as u64;
        if n == buf.capacity() && n < max_buffer {
            // A full read: more is coming than the buffer holds.
            buf.reserve_exact((n * 4).min(max_buffer) - n);
        }
    }
    ends.direction_ended(&mut to).await?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::super::test_sockets::{exchange, pair};
    use super::*;

    #[tokio::test]
    async fn forwards_both_ways_with_half_close() {
        let (mut client_end, proxy_client) = pair().await;
        let (proxy_upstream, mut server_end) = pair().await;
        let counters = ServiceCounters::default();
        let request: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let answer = vec![9u8; 1_000_000];
        let proxy = copy_bidirectional(
            proxy_client,
            proxy_upstream,
            Buffers::new(),
            64 * 1024,
            &counters,
        );
        let ends = exchange(&mut client_end, &mut server_end, &request, &answer);
        let (moved, (got_answer, got_request)) = tokio::join!(proxy, ends);
        assert_eq!(moved.expect("proxy"), (300_000, 1_000_000));
        assert_eq!(got_request, request);
        assert_eq!(got_answer, answer);
        let snapshot = counters.snapshot();
        assert_eq!(
            (snapshot.bytes_in, snapshot.bytes_out),
            (300_000, 1_000_000)
        );
    }
}
