//! The default data path: each direction copies through its own buffer, which starts small
//! and grows to [`super::ProxyConfig::buffer_size`] once a read fills it. A short request and
//! answer never pay for two large zeroed buffers (about a tenth of a short connection's cost
//! with 64 KiB ones); a bulk transfer reaches full-size reads within a few round trips.
//!
//! Half-close is kept as `tokio::io::copy_bidirectional` keeps it: when one side ends its
//! stream, the other side's write half is shut down and the opposite direction goes on.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

use super::counters::ServiceCounters;

/// First buffer of each direction.
const START: usize = 8 * 1024;

/// Which counter a direction feeds.
#[derive(Debug, Clone, Copy)]
pub(super) enum Direction {
    /// Client to replica: bytes in.
    In,
    /// Replica to client: bytes out.
    Out,
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
/// either fails; buffers grow up to `max_buffer`. Returns the bytes moved (client →
/// upstream, upstream → client).
pub(super) async fn copy_bidirectional(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    max_buffer: usize,
    counters: &ServiceCounters,
) -> io::Result<(u64, u64)> {
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    tokio::try_join!(
        pump(
            client_read,
            upstream_write,
            max_buffer,
            counters,
            Direction::In
        ),
        pump(
            upstream_read,
            client_write,
            max_buffer,
            counters,
            Direction::Out
        ),
    )
}

async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    max_buffer: usize,
    counters: &ServiceCounters,
    direction: Direction,
) -> io::Result<u64> {
    let max_buffer = max_buffer.max(1);
    let mut buf = vec![0u8; START.min(max_buffer)];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).await?;
        direction.count(counters, n);
        total += n as u64;
        if n == buf.len() && buf.len() < max_buffer {
            // A full read: more is coming than the buffer holds.
            buf.resize((buf.len() * 4).min(max_buffer), 0);
        }
    }
    to.shutdown().await?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::super::test_sockets::{exchange, pair};
    use super::*;

    #[tokio::test]
    async fn forwards_both_ways_with_half_close() {
        let (mut client_end, mut proxy_client) = pair().await;
        let (mut proxy_upstream, mut server_end) = pair().await;
        let counters = ServiceCounters::default();
        let request: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let answer = vec![9u8; 1_000_000];
        let proxy =
            copy_bidirectional(&mut proxy_client, &mut proxy_upstream, 64 * 1024, &counters);
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
