//! Zero-copy forwarding with `splice(2)`, opt-in ([`super::ProxyConfig::splice`]): each
//! direction moves bytes socket → pipe → socket inside the kernel, so they are never copied
//! into the proxy's memory. Pipes are reused across connections through a small pool, so a
//! short connection costs no more system calls than `read`/`write` would, but each
//! connection holds two pipes (four more file descriptors).
//!
//! Measured (docs/benchmarks.md): a half to two-thirds of the copy path's proxy CPU per byte,
//! but lower throughput on loopback, because the receiving side then works harder on the
//! spliced pages, and no more over veth; hence off by default.
//!
//! Half-close as in [`super::copy`]: when one side ends its stream, the other side's write
//! half is shut down and the opposite direction goes on; the last FIN goes with the close.
//! A pause stops each direction where its pipe is empty, as the copy path's does.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, PoisonError};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::unistd::pipe2;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio_util::sync::CancellationToken;

use super::copy::{Direction, Ends, Open};
use super::counters::ServiceCounters;

/// Capacity asked for each pipe: fewer system calls per megabyte than the 64 KiB default.
/// The kernel only holds pages for bytes in flight, so an idle pipe costs no more.
const PIPE_SIZE: usize = 256 * 1024;
/// Idle pipes kept for reuse; more are closed when their connection ends.
const POOL_MAX: usize = 64;

/// A pipe: the kernel-side buffer between the two sockets of one direction.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // A smaller pipe still works (the limit may be lowered by fs.pipe-max-size).
        let capacity = match fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32)) {
            Ok(size) => usize::try_from(size).unwrap_or(64 * 1024),
            Err(_) => 64 * 1024,
        };
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }
}

/// Idle, empty pipes of one service proxy.
#[derive(Debug, Default)]
pub(super) struct PipePool {
    idle: Mutex<Vec<Pipe>>,
}

impl PipePool {
    fn take(&self) -> io::Result<Pipe> {
        let reused = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match reused {
            Some(pipe) => Ok(pipe),
            None => Pipe::new(),
        }
    }

    /// Keep `pipe` for the next connection; only empty pipes come back here.
    fn give(&self, pipe: Pipe) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < POOL_MAX {
            idle.push(pipe);
        }
    }

    /// Two pipes for a connection, or an error when no pipe can be made (file limit), in
    /// which case the caller copies through user space instead.
    pub(super) fn take_pair(&self) -> io::Result<(PipeLease<'_>, PipeLease<'_>)> {
        let first = self.take()?;
        let second = match self.take() {
            Ok(pipe) => pipe,
            Err(e) => {
                self.give(first);
                return Err(e);
            }
        };
        Ok((
            PipeLease {
                pool: self,
                pipe: Some(first),
            },
            PipeLease {
                pool: self,
                pipe: Some(second),
            },
        ))
    }
}

/// A pipe borrowed from the pool; it goes back only once its direction ended cleanly (empty).
#[derive(Debug)]
pub(super) struct PipeLease<'a> {
    pool: &'a PipePool,
    pipe: Option<Pipe>,
}

impl PipeLease<'_> {
    fn pipe(&self) -> io::Result<&Pipe> {
        self.pipe
            .as_ref()
            .ok_or_else(|| io::Error::other("pipe already returned to the pool"))
    }

    /// Return the (empty) pipe to the pool.
    fn release(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            self.pool.give(pipe);
        }
    }
}

/// Forward the `open` directions between `client` and `upstream` until both have ended, or
/// until either fails, or until `pause` is cancelled and each has stopped with its pipe
/// empty. Returns the directions still open (none when the connection ended); the caller
/// closes both sockets or hands them on.
pub(super) async fn copy_bidirectional(
    (client, upstream): (&mut TcpStream, &mut TcpStream),
    pipes: (PipeLease<'_>, PipeLease<'_>),
    counters: &ServiceCounters,
    open: Open,
    pause: &CancellationToken,
) -> io::Result<Open> {
    let (mut inbound, mut outbound) = pipes;
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    let ends = Ends::new(open);
    let (inbound, outbound) = tokio::try_join!(
        pump(
            (client_read, upstream_write),
            &mut inbound,
            (counters, Direction::In),
            (open.inbound, &ends, pause)
        ),
        pump(
            (upstream_read, client_write),
            &mut outbound,
            (counters, Direction::Out),
            (open.outbound, &ends, pause)
        ),
    )?;
    Ok(Open { inbound, outbound })
}

/// Move bytes from `from` to `to` through `lease`'s pipe until `from` ends, then shut
/// down `to`'s write half; or until `pause`. Returns whether it is still open (paused).
async fn pump(
    (from, mut to): (ReadHalf<'_>, WriteHalf<'_>),
    lease: &mut PipeLease<'_>,
    (counters, direction): (&ServiceCounters, Direction),
    (open, ends, pause): (bool, &Ends, &CancellationToken),
) -> io::Result<bool> {
    if !open {
        lease.release();
        return Ok(false);
    }
    let pipe = lease.pipe()?;
    let source = from.as_ref();
    let sink = to.as_ref();
    loop {
        // The pipe is empty here, so EAGAIN can only mean the socket has nothing to read.
        let filled = loop {
            tokio::select! {
                biased;
                () = pause.cancelled() => {
                    lease.release();
                    return Ok(true);
                }
                readable = source.readable() => readable?,
            }
            match source.try_io(Interest::READABLE, || {
                splice(
                    source,
                    None,
                    &pipe.write,
                    None,
                    pipe.capacity,
                    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
                )
                .map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if filled == 0 {
            break;
        }
        // The pipe holds data, so EAGAIN can only mean the socket's send buffer is full.
        let mut pending = filled;
        while pending > 0 {
            sink.writable().await?;
            match sink.try_io(Interest::WRITABLE, || {
                splice(
                    &pipe.read,
                    None,
                    sink,
                    None,
                    pending,
                    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
                )
                .map_err(io::Error::from)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => pending -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        direction.count(counters, filled);
    }
    lease.release();
    ends.direction_ended(&mut to).await?;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::super::test_sockets::{exchange, pair};
    use super::*;

    /// Copies both ways, never paused, then closes both sockets.
    async fn copy_to_the_end(
        mut client: TcpStream,
        mut upstream: TcpStream,
        pipes: (PipeLease<'_>, PipeLease<'_>),
        counters: &ServiceCounters,
    ) -> io::Result<Open> {
        let never = CancellationToken::new();
        copy_bidirectional(
            (&mut client, &mut upstream),
            pipes,
            counters,
            Open::BOTH,
            &never,
        )
        .await
    }

    #[tokio::test]
    async fn forwards_both_ways_with_half_close_and_reuses_pipes() {
        let pool = PipePool::default();
        for round in 0..3u8 {
            // client_end <-> proxy_client ... proxy_upstream <-> server_end
            let (mut client_end, proxy_client) = pair().await;
            let (proxy_upstream, mut server_end) = pair().await;
            let counters = ServiceCounters::default();
            let pipes = pool.take_pair().expect("pipes");
            let request: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8 + round).collect();
            let answer = vec![round; 1_000_000];

            let proxy = copy_to_the_end(proxy_client, proxy_upstream, pipes, &counters);
            let ends = exchange(&mut client_end, &mut server_end, &request, &answer);
            let (open, (got_answer, got_request)) = tokio::join!(proxy, ends);
            assert!(!open.expect("proxy").any());
            assert_eq!(got_request, request);
            assert_eq!(got_answer, answer);
            let snapshot = counters.snapshot();
            assert_eq!(snapshot.bytes_in, 300_000);
            assert_eq!(snapshot.bytes_out, 1_000_000);
            // Both pipes came back empty and are reused next round.
            assert_eq!(pool.idle.lock().expect("pool").len(), 2);
        }
    }

    #[tokio::test]
    async fn a_reset_side_ends_the_connection_and_drops_its_pipes() {
        let pool = PipePool::default();
        let (client_end, proxy_client) = pair().await;
        let (proxy_upstream, mut server_end) = pair().await;
        let counters = ServiceCounters::default();
        let pipes = pool.take_pair().expect("pipes");
        // The client goes away abruptly while the server keeps sending.
        client_end.set_zero_linger().expect("linger");
        drop(client_end);
        let server = tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            while server_end.write_all(&chunk).await.is_ok() {}
        });
        let result = copy_to_the_end(proxy_client, proxy_upstream, pipes, &counters).await;
        server.abort();
        assert!(
            result.is_err(),
            "a reset client must end the copy with an error"
        );
        assert!(pool.idle.lock().expect("pool").len() <= 1);
    }
}
